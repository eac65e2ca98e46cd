//! The accept loop: serves the router over HTTP/1.1 with hyper, one task per connection.
//!
//! `axum::serve` would do, but it gives hyper no timer and no way to set its buffers, so a
//! client could hold a connection by sending its headers a byte at a time, and every
//! connection kept a read buffer grown by its largest request (about half a MiB after a 1 MB
//! batch). Here each connection has a deadline for its request headers, which also closes a
//! keep-alive connection left idle that long, and a bounded read buffer; a client that takes
//! none of an answer for as long is cut off too ([`WriteDeadline`]). Every request carries its
//! connection's peer address (`ConnectInfo`), for the lines that must say who asked.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The most a connection buffers of what it reads. Larger bodies are read through it in
/// pieces; a request's headers must fit in it.
pub const MAX_READ_BUFFER: usize = 64 * 1024;
/// How long shutdown waits at most for requests in progress before it closes their
/// connections (less if the whole stop's grace is shorter). A request cut off here was never
/// answered, so its client sends it again: an event is only acknowledged once stored.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets the
/// requests in progress finish (up to `grace`), closes the connections still open and
/// returns. A client has
/// `header_timeout` to send a request's headers, counted from when the connection is ready for
/// them (so an idle keep-alive connection is closed after as long), and as long to take some
/// of an answer once the connection's buffers are full.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    header_timeout: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_READ_BUFFER);
    let graceful = GracefulShutdown::new();
    // Dropped at the end of shutdown, which cuts every connection still open.
    let (cut_tx, cut_rx) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if !is_connection_error(&e) {
                        // Out of file descriptors, say: accepting again at once would spin.
                        tracing::warn!(error = %e, "could not accept a connection; trying again in a second");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers go out as soon as they are written, not held back by Nagle's algorithm for
        // the client's acknowledgement of the last one: a producer waits for each `202`.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY on an accepted connection");
        }
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            },
        ));
        let stream = WriteDeadline::new(stream, header_timeout);
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        let mut cut = cut_rx.clone();
        tokio::spawn(async move {
            tokio::select! {
                // A client that goes away or breaks the protocol ends only its own connection.
                ended = connection => if let Err(e) = ended {
                    tracing::trace!(error = %e, "connection ended with an error");
                },
                // Shutdown's grace is over: dropping the connection closes it.
                _ = cut.changed() => {}
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(
            connections = open,
            "closing idle connections and waiting up to {} s for the requests in progress",
            grace.as_secs()
        );
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "requests still in progress after {} s of shutdown; closing their connections \
             (their clients get no answer, and send them again)",
            grace.as_secs()
        );
    }
    drop(cut_tx);
}

/// A connection whose writes fail once the client has taken none of what is sent for `limit`.
/// hyper waits for a socket to take an answer for as long as it takes: a client that sent
/// requests (pipelined, or one large read) and never read the answers held its connection,
/// and the answers queued in its buffers, for good.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    /// Since when the socket has taken nothing: set at the first write it could not take.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled: None,
        }
    }

    /// `result` of a write or flush, or an error once the socket has taken nothing for the
    /// limit. A write that went through ends the stall.
    fn watch<T>(
        &mut self,
        result: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took none of the answer in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(result, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(result, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(result, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(result, cx)
    }
}

/// The address of a request's connection's peer (`None` where it was served another way, as
/// in tests).
pub fn peer_of(extensions: &axum::http::Extensions) -> Option<std::net::IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
}

/// The client a request counts against: its connection's peer, or, when the peer is one of
/// `trusted` proxies, the last address in `X-Forwarded-For` that is not (each proxy appends
/// the address it was reached from, so what precedes the first untrusted hop may be forged).
/// `None` where the request was served another way, as in tests.
pub fn client_address(
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let mut client = peer_of(extensions)?;
    if trusted.is_empty() {
        return Some(client);
    }
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        if !trusted
            .iter()
            .any(|net| net.contains(&client.to_canonical()))
        {
            break;
        }
        match forwarded_address(hop) {
            Some(address) => client = address,
            // Not an address (`unknown`, a garbled header): the last trusted hop is the client.
            None => break,
        }
    }
    Some(client)
}

/// An address as proxies write it in `X-Forwarded-For`: bare, or with a port
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn forwarded_address(hop: &str) -> Option<std::net::IpAddr> {
    let hop = hop.trim();
    hop.parse()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip: std::net::IpAddr| ip.to_canonical())
}

/// Who sent a request, for a log line: its connection's peer address (`unknown` where it was
/// served another way, as in tests), and `X-Forwarded-For` as sent (so not to be trusted; cut
/// to 200 characters, visible ASCII, so any byte is a boundary).
pub fn client_of<'a>(
    extensions: &axum::http::Extensions,
    headers: &'a axum::http::HeaderMap,
) -> (String, Option<&'a str>) {
    let address = peer_of(extensions).map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let forwarded_for = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.get(..200).unwrap_or(v));
    (address, forwarded_for)
}

/// Errors that concern only the connection being accepted (it was reset before it was taken).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(peer: &str, forwarded: &[&str], trusted: &[&str]) -> Option<std::net::IpAddr> {
        let mut extensions = axum::http::Extensions::new();
        extensions.insert(ConnectInfo::<SocketAddr>(SocketAddr::new(
            peer.parse().unwrap(),
            4711,
        )));
        let mut headers = axum::http::HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        let trusted: Vec<ipnet::IpNet> = trusted.iter().map(|t| t.parse().unwrap()).collect();
        client_address(&extensions, &headers, &trusted)
    }

    fn ip(address: &str) -> Option<std::net::IpAddr> {
        Some(address.parse().unwrap())
    }

    #[test]
    fn the_client_is_the_last_forwarded_address_that_is_not_a_trusted_proxy() {
        // No trusted proxies: the peer, whatever the header says.
        assert_eq!(client("10.0.0.5", &["203.0.113.9"], &[]), ip("10.0.0.5"));
        // A peer that is not trusted cannot name another client.
        assert_eq!(
            client("198.51.100.7", &["203.0.113.9"], &["10.0.0.0/8"]),
            ip("198.51.100.7")
        );
        // Through a trusted proxy: the address it appended, not what the client wrote before.
        assert_eq!(
            client("10.0.0.5", &["192.0.2.66, 203.0.113.9"], &["10.0.0.0/8"]),
            ip("203.0.113.9")
        );
        // Through two trusted proxies, in one header or two, with ports and IPv6.
        assert_eq!(
            client(
                "10.0.0.5",
                &["192.0.2.66, 203.0.113.9:5000, 10.1.1.1"],
                &["10.0.0.0/8"]
            ),
            ip("203.0.113.9")
        );
        assert_eq!(
            client(
                "10.0.0.5",
                &["[2001:db8::1]:443", "10.1.1.1"],
                &["10.0.0.0/8"]
            ),
            ip("2001:db8::1")
        );
        // An IPv4 proxy reached over IPv6 (mapped) is still trusted.
        assert_eq!(
            client("::ffff:10.0.0.5", &["203.0.113.9"], &["10.0.0.0/8"]),
            ip("203.0.113.9")
        );
        // No header, or one that is not an address: the last trusted hop.
        assert_eq!(client("10.0.0.5", &[], &["10.0.0.0/8"]), ip("10.0.0.5"));
        assert_eq!(
            client("10.0.0.5", &["203.0.113.9, unknown"], &["10.0.0.0/8"]),
            ip("10.0.0.5")
        );
        // Every hop trusted: the first.
        assert_eq!(
            client("10.0.0.5", &["10.9.9.9, 10.1.1.1"], &["10.0.0.0/8"]),
            ip("10.9.9.9")
        );
    }
}
