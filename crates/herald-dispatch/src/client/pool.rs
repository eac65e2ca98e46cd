//! Keep-alive connections, per origin (scheme, host and port), and opening new ones.
//!
//! Herald's own pool rather than hyper-util's general one: every webhook URL is resolved once
//! (see `Targets`), so its origin's pool is found through the URL's entry, with no key to hash
//! per request, and a connection goes back to its pool inline once its response has been read,
//! with no task spawned to wait for it. Together those were about a sixth of an attempt's
//! instructions (8,300 of 48,300 in `batch`; BENCHMARKS.md).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::guard::GuardedResolver;

/// Every request's body: rendered in full before it is sent.
pub(super) type Body = Full<Bytes>;
/// One HTTP/1.1 connection, as the side that sends requests on it.
pub(super) type Connection = SendRequest<Body>;
/// TCP (through the SSRF guard's resolver), then TLS for `https`.
pub(super) type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;
/// What opening a connection can fail with (the guard's refusal, DNS, TCP or TLS).
pub(super) type ConnectError = Box<dyn std::error::Error + Send + Sync>;

/// Idle connections kept per origin at most; past it the oldest is closed.
const MAX_IDLE: usize = 64;
/// An idle connection unused for this long is closed rather than reused: servers close theirs
/// after a while, and a request sent just as they do fails (a reset, counted as a failed
/// attempt). Below the shortest keep-alive of common servers (Node.js, uvicorn and Apache close
/// after 5 s idle), so an endpoint sent to every few seconds never sees that race; one that
/// receives more often keeps its connections.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// One origin's idle connections, the most recently used last.
#[derive(Default)]
pub(super) struct Origin {
    idle: Mutex<Vec<Idle>>,
}

struct Idle {
    connection: Connection,
    since: Instant,
}

impl Idle {
    /// Idle for `IDLE_TIMEOUT` or longer by `now`: not to be used again.
    fn stale(&self, now: Instant) -> bool {
        now.duration_since(self.since) >= IDLE_TIMEOUT
    }
}

impl Origin {
    /// An idle connection still open, if there is one. The most recently used comes first, so
    /// that when fewer are needed the others age out.
    pub(super) fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("idle connections lock");
        let now = Instant::now();
        while let Some(candidate) = idle.pop() {
            if !candidate.connection.is_closed() && !candidate.stale(now) {
                return Some(candidate.connection);
            }
        }
        None
    }

    /// Keeps `connection` for the next request. Only for a connection whose last response was
    /// read to its end: one with a response still coming in cannot carry another request.
    pub(super) fn checkin(&self, connection: Connection) {
        if connection.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("idle connections lock");
        // The oldest are first: drop those idle too long, and make room.
        let stale = idle.iter().take_while(|c| c.stale(now)).count();
        idle.drain(..stale);
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        idle.push(Idle {
            connection,
            since: now,
        });
    }

    /// Closes the idle connections that the server closed or that have waited `IDLE_TIMEOUT`
    /// by `now`. Checking in and out does this for the connections it passes; this reaches an
    /// origin nothing is sent to any more, whose connections would otherwise stay open for as
    /// long as its server allows.
    pub(super) fn close_stale(&self, now: Instant) {
        let mut idle = self.idle.lock().expect("idle connections lock");
        idle.retain(|c| !c.connection.is_closed() && !c.stale(now));
    }

    /// Idle connections still open.
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        let idle = self.idle.lock().expect("idle connections lock");
        idle.iter().filter(|c| !c.connection.is_closed()).count()
    }
}

/// Opens a connection to `uri`'s origin and starts driving it. The connection's task ends
/// when the connection closes, or when its last `Connection` handle is dropped.
pub(super) async fn connect(
    connector: &Connector,
    uri: &http::Uri,
) -> Result<Connection, ConnectError> {
    let mut connector = connector.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
    let io = connector.call(uri.clone()).await?;
    let (connection, driver) = http1::handshake(io).await?;
    tokio::spawn(async move {
        // A broken connection fails the request on it; nothing more to say here.
        let _ = driver.await;
    });
    Ok(connection)
}
