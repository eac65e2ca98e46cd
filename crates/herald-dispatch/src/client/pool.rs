//! Keep-alive connections, per origin (scheme, host and port), and opening new ones.
//!
//! Herald's own pool rather than hyper-util's general one: every webhook URL is resolved once
//! (see `Targets`), so its origin's pool is found through the URL's entry, with no key to hash
//! per request, and a connection goes back to its pool inline once its response has been read,
//! with no task spawned to wait for it. Together those were about a sixth of an attempt's
//! instructions (8,300 of 48,300 in `batch`; BENCHMARKS.md).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

/// Idle connections a client made with `HttpClient::new` keeps across all origins at most (a
/// server's client is given what its open-file limit leaves): each holds a file descriptor, and
/// a fan-out to a thousand origins would otherwise keep up to `MAX_IDLE` of each. Past it, a
/// connection whose response has been read is closed rather than kept.
pub(super) const MAX_IDLE_TOTAL: usize = 1024;

/// How many idle connections a client keeps across its origins, and how many it may.
pub(super) struct IdleCount {
    kept: AtomicUsize,
    /// Origins holding at least one idle connection.
    origins: AtomicUsize,
    cap: usize,
}

impl Default for IdleCount {
    fn default() -> Self {
        Self::capped(MAX_IDLE_TOTAL)
    }
}

impl IdleCount {
    pub(super) fn capped(cap: usize) -> Self {
        Self {
            kept: AtomicUsize::new(0),
            origins: AtomicUsize::new(0),
            cap,
        }
    }

    fn changed(&self, before: usize, after: usize) {
        if after > before {
            self.kept.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.kept.fetch_sub(before - after, Ordering::Relaxed);
        }
        if before == 0 && after > 0 {
            self.origins.fetch_add(1, Ordering::Relaxed);
        } else if before > 0 && after == 0 {
            self.origins.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// An origin's fair share of the cap: the cap divided between the origins holding idle
    /// connections (`holding` says whether the asking one is among them already). 0 once there
    /// are more origins than the cap allows connections.
    fn share(&self, holding: bool) -> usize {
        let origins = self.origins.load(Ordering::Relaxed) + usize::from(!holding);
        self.cap / origins.max(1)
    }

    /// Idle connections kept now, across origins.
    pub(super) fn get(&self) -> usize {
        self.kept.load(Ordering::Relaxed)
    }
}

/// One origin's idle connections, the most recently used last.
#[derive(Default)]
pub(super) struct Origin {
    idle: Mutex<Vec<Idle>>,
    /// The client's count across its origins, kept in step with `idle`'s length.
    total: Arc<IdleCount>,
    /// Its connections write header names in Title-Case
    /// (`OutgoingRequest::title_case_headers`): requests that want lower case go to the same
    /// host through an `Origin` of their own.
    pub(super) title_case_headers: bool,
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
    /// An origin's pool, counted in `total` with the client's others.
    pub(super) fn counted_in(total: Arc<IdleCount>, title_case_headers: bool) -> Self {
        Self {
            idle: Mutex::default(),
            total,
            title_case_headers,
        }
    }

    /// An idle connection still open, if there is one. The most recently used comes first, so
    /// that when fewer are needed the others age out.
    pub(super) fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().expect("idle connections lock");
        let before = idle.len();
        let now = Instant::now();
        let mut found = None;
        while let Some(candidate) = idle.pop() {
            if !candidate.connection.is_closed() && !candidate.stale(now) {
                found = Some(candidate.connection);
                break;
            }
        }
        self.total.changed(before, idle.len());
        found
    }

    /// Keeps `connection` for the next request. Only for a connection whose last response was
    /// read to its end: one with a response still coming in cannot carry another request.
    pub(super) fn checkin(&self, connection: Connection) {
        if connection.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("idle connections lock");
        let before = idle.len();
        // The oldest are first: drop those idle too long, and make room.
        let stale = idle.iter().take_while(|c| c.stale(now)).count();
        idle.drain(..stale);
        if idle.len() >= MAX_IDLE {
            idle.remove(0);
        }
        // Past the client's total, the connection closes (dropped) rather than wait here,
        // unless this origin holds less than its share: then it is kept, a little over the
        // total for as long as origins holding more than theirs take to give up their excess
        // (here, at their next request, or once they have waited too long). Without that, a
        // few busy origins held every idle place in a fan-out to a thousand, and the rest
        // opened a new connection for most requests (BENCHMARKS.md).
        let share = self.total.share(before > 0);
        let elsewhere = self.total.get().saturating_sub(before);
        let full = elsewhere + idle.len() >= self.total.cap;
        if full && share > 0 && idle.len() >= share {
            // Over its share of a full pool: down to it, this connection included.
            let excess = idle.len() + 1 - share;
            idle.drain(..excess);
        }
        if !full || idle.len() < share {
            idle.push(Idle {
                connection,
                since: now,
            });
        }
        self.total.changed(before, idle.len());
    }

    /// Closes the idle connections that the server closed or that have waited `IDLE_TIMEOUT`
    /// by `now`. Checking in and out does this for the connections it passes; this reaches an
    /// origin nothing is sent to any more, whose connections would otherwise stay open for as
    /// long as its server allows.
    pub(super) fn close_stale(&self, now: Instant) {
        let mut idle = self.idle.lock().expect("idle connections lock");
        let before = idle.len();
        idle.retain(|c| !c.connection.is_closed() && !c.stale(now));
        self.total.changed(before, idle.len());
    }

    /// Idle connections still open.
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        let idle = self.idle.lock().expect("idle connections lock");
        idle.iter().filter(|c| !c.connection.is_closed()).count()
    }
}

impl Drop for Origin {
    /// A forgotten origin's idle connections close with it.
    fn drop(&mut self) {
        let idle = self.idle.get_mut().map_or(0, |idle| idle.len());
        self.total.changed(idle, 0);
    }
}

/// Opens a connection to `uri`'s origin and starts driving it, writing header names in
/// Title-Case if asked. The connection's task ends when the connection closes, or when its
/// last `Connection` handle is dropped.
pub(super) async fn connect(
    connector: &Connector,
    uri: &http::Uri,
    title_case_headers: bool,
) -> Result<Connection, ConnectError> {
    let mut connector = connector.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
    let io = connector.call(uri.clone()).await?;
    let (connection, driver) = http1::Builder::new()
        .title_case_headers(title_case_headers)
        .handshake(io)
        .await?;
    tokio::spawn(async move {
        // A broken connection fails the request on it; nothing more to say here.
        let _ = driver.await;
    });
    Ok(connection)
}
