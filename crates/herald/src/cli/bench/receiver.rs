//! The built-in receiver: an HTTP endpoint on 127.0.0.1 that stands in for customers' servers.
//! Each webhook of a scenario gets its own path (`/h/<n>`) and behaviour (accept, fail, be down,
//! answer too late). It counts requests, marks which events arrived (so duplicates and losses are
//! exact), and takes each event's latency from the send time the producer wrote into it.
//!
//! It must stay cheap, since it shares the cores with the server it measures: it serves each
//! connection in one task with the bench's own HTTP/1.1 (`wire.rs`; axum on hyper cost it 1.6
//! times the CPU per request), reads two numbers out of the body with a byte search instead of
//! parsing the JSON, records into atomics, and can run on a runtime of its own
//! (`--receiver-threads`) or on the load generator's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use super::measure::{Clock, Histogram, Seen, Span};
use super::wire::Connection;

/// How one webhook's endpoint answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// 200 at once.
    Accept,
    /// 500 at once.
    Fail,
    /// 503 at once, as a load balancer with no backend does.
    Down,
    /// 200, but only after this long (longer than the webhook's timeout).
    Slow(Duration),
}

impl Behaviour {
    fn code(self) -> u8 {
        match self {
            Self::Accept => 0,
            Self::Fail => 1,
            Self::Down => 2,
            Self::Slow(_) => 3,
        }
    }
}

/// What one endpoint saw.
pub struct Endpoint {
    behaviour: AtomicU8,
    slow: Duration,
    /// Every request, whatever the answer.
    pub requests: AtomicU64,
    /// Requests whose event had already been accepted once.
    pub duplicates: AtomicU64,
    /// Requests without the benchmark's fields (not counted as deliveries).
    pub unrecognised: AtomicU64,
    delivered: AtomicU64,
    seen: Seen,
    /// Distinct events that reached the endpoint at all, whatever it answered.
    attempted: Seen,
    first_attempts: AtomicU64,
    /// From the send time written in each event to its (first) receipt.
    pub latency: Histogram,
    /// When the first and the last new event arrived.
    pub arrivals: Span,
}

impl Endpoint {
    fn new(behaviour: Behaviour, capacity: u64) -> Self {
        Self {
            behaviour: AtomicU8::new(behaviour.code()),
            slow: match behaviour {
                Behaviour::Slow(d) => d,
                _ => Duration::ZERO,
            },
            requests: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            unrecognised: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            seen: Seen::new(capacity),
            attempted: Seen::new(capacity),
            first_attempts: AtomicU64::new(0),
            latency: Histogram::default(),
            arrivals: Span::default(),
        }
    }

    /// Distinct events accepted (answered 200).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn seen(&self) -> &Seen {
        &self.seen
    }

    /// Distinct events that reached the endpoint, accepted or not: requests beyond these were
    /// retries.
    pub fn first_attempts(&self) -> u64 {
        self.first_attempts.load(Ordering::Relaxed)
    }

    /// Notes the request's event; answers it if it is the benchmark's.
    fn attempt(&self, body: &[u8]) -> Option<(u64, u64)> {
        let (Some(seq), Some(sent)) = (
            number_after(body, b"\"bench_seq\":"),
            number_after(body, b"\"bench_t\":"),
        ) else {
            self.unrecognised.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        if self.attempted.insert(seq) {
            self.first_attempts.fetch_add(1, Ordering::Relaxed);
        }
        Some((seq, sent))
    }

    fn accept(&self, seq: u64, sent: u64, now_us: u64) {
        if self.seen.insert(seq) {
            self.delivered.fetch_add(1, Ordering::Relaxed);
            self.latency.record(now_us.saturating_sub(sent));
            self.arrivals.mark(now_us);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The endpoints, shared by the server and whoever watches them.
pub struct Endpoints {
    clock: Clock,
    list: Vec<Endpoint>,
}

impl Endpoints {
    pub fn get(&self, i: usize) -> &Endpoint {
        &self.list[i]
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Distinct events accepted by the endpoints `which`.
    pub fn delivered(&self, which: &[usize]) -> u64 {
        which.iter().map(|i| self.list[*i].delivered()).sum()
    }

    pub fn set(&self, i: usize, behaviour: Behaviour) {
        self.list[i]
            .behaviour
            .store(behaviour.code(), Ordering::Relaxed);
    }
}

/// A running receiver. Stop it with [`Receiver::stop`].
pub struct Receiver {
    addr: SocketAddr,
    endpoints: Arc<Endpoints>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts one endpoint per entry of `behaviours`, each able to tell apart events numbered
    /// `0..capacity`. With `threads` > 0 it gets a runtime of its own with that many threads;
    /// with 0 it runs on the caller's.
    pub async fn start(
        clock: Clock,
        behaviours: &[Behaviour],
        capacity: u64,
        threads: usize,
    ) -> anyhow::Result<Self> {
        let endpoints = Arc::new(Endpoints {
            clock,
            list: behaviours
                .iter()
                .map(|b| Endpoint::new(*b, capacity))
                .collect(),
        });
        let runtime = match threads {
            0 => None,
            n => Some(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(n)
                    .thread_name("bench-receiver")
                    .enable_all()
                    .build()
                    .context("could not start the receiver's runtime")?,
            ),
        };
        // The listener belongs to the runtime that serves it. A runtime may not be dropped inside
        // another one, so on failure it is shut down without waiting.
        let listener = {
            let _in = runtime.as_ref().map(tokio::runtime::Runtime::enter);
            loopback_listener().and_then(|l| Ok((l.local_addr()?, l)))
        };
        let (addr, listener) = match listener {
            Ok(l) => l,
            Err(e) => {
                if let Some(rt) = runtime {
                    rt.shutdown_background();
                }
                return Err(e).context("the receiver could not listen on 127.0.0.1");
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let serve = serve_until(listener, endpoints.clone(), stopped);
        let task = match &runtime {
            Some(rt) => rt.spawn(serve),
            None => tokio::spawn(serve),
        };
        Ok(Self {
            addr,
            endpoints,
            stop: Some(stop),
            task: Some(task),
            runtime,
        })
    }

    /// The URL of endpoint `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}/h/{i}", self.addr)
    }

    pub fn endpoints(&self) -> &Arc<Endpoints> {
        &self.endpoints
    }

    /// Stops listening. Requests still held (slow endpoints) are dropped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // The serving task cuts its connections as it ends; bounded in case its runtime is
            // too busy to run it at once.
            let _ = tokio::time::timeout(Duration::from_millis(200), task).await;
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Serves the endpoints until `stopped` fires (or its sender is dropped), then cuts every
/// connection still open: Herald keeps its idle ones, and a slow endpoint's request may be held.
async fn serve_until(
    listener: TcpListener,
    endpoints: Arc<Endpoints>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, endpoints.clone()));
                }
                // Out of file descriptors, or a connection reset before it was taken: the next
                // accept may work, so wait a moment rather than spin or stop.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers one connection's requests in turn until the client closes it.
async fn serve_connection(stream: TcpStream, endpoints: Arc<Endpoints>) {
    let _ = stream.set_nodelay(true);
    let mut conn = Connection::new(stream);
    loop {
        let request = match conn.read_request().await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(_) => {
                let _ = conn.send(answer(400), b"").await;
                return;
            }
        };
        let status = endpoints.receive(&request.path, &request.body).await;
        if conn.send(answer(status), b"").await.is_err() || request.close {
            return;
        }
    }
}

/// The whole answer with `status` and no body.
fn answer(status: u16) -> &'static [u8] {
    match status {
        200 => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        404 => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
        500 => b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
        503 => b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        _ => b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    }
}

impl Endpoints {
    /// Takes one delivery to `path`; the status to answer.
    async fn receive(&self, path: &str, body: &[u8]) -> u16 {
        let now = self.clock.now_us();
        let Some(endpoint) = endpoint_index(path).and_then(|i| self.list.get(i)) else {
            return 404;
        };
        endpoint.requests.fetch_add(1, Ordering::Relaxed);
        let event = endpoint.attempt(body);
        match endpoint.behaviour.load(Ordering::Relaxed) {
            0 => {
                if let Some((seq, sent)) = event {
                    endpoint.accept(seq, sent, now);
                }
                200
            }
            1 => 500,
            2 => 503,
            _ => {
                // Herald has given up by the time this answers; it is not a delivery.
                tokio::time::sleep(endpoint.slow).await;
                200
            }
        }
    }
}

/// A listener on 127.0.0.1 whose queue of new connections is as long as the kernel allows.
/// Herald opens up to `--endpoint-concurrency` connections per webhook at once (640 in `fanout`);
/// past std's queue of 128 the kernel dropped their SYNs, each sent again only a second later,
/// which was the one-second maximum latency of `fanout`, `slow-endpoint` and `failing-endpoint`.
fn loopback_listener() -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    socket.listen(4096)
}

fn endpoint_index(path: &str) -> Option<usize> {
    path.strip_prefix("/h/")?.parse().ok()
}

/// The unsigned integer that follows `key` in `body` (spaces allowed in between).
fn number_after(body: &[u8], key: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(body, key)? + key.len();
    let rest = &body[at..];
    let start = rest.iter().position(|b| *b != b' ')?;
    let digits = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .take(19);
    let mut value: Option<u64> = None;
    for d in digits {
        value = Some(value.unwrap_or(0) * 10 + u64::from(d - b'0'));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Posts an event of the bench's to `path` on `conn`; the answer's status.
    async fn post(conn: &mut Connection<TcpStream>, path: &str) -> u16 {
        let body = br#"{"data":{"bench_seq":3,"bench_t":1}}"#;
        let head = format!(
            "POST {path} HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        conn.send(head.as_bytes(), body).await.unwrap();
        conn.read_response().await.unwrap().status
    }

    #[tokio::test]
    async fn each_endpoint_answers_as_told_on_one_kept_connection() {
        let behaviours = [Behaviour::Accept, Behaviour::Fail];
        let receiver = Receiver::start(Clock::start(), &behaviours, 10, 0)
            .await
            .unwrap();
        let stream = TcpStream::connect(receiver.addr).await.unwrap();
        let mut conn = Connection::new(stream);
        assert_eq!(post(&mut conn, "/h/0").await, 200);
        assert_eq!(post(&mut conn, "/h/1").await, 500);
        assert_eq!(post(&mut conn, "/h/7").await, 404);
        assert_eq!(post(&mut conn, "/h/0").await, 200);
        let accepted = receiver.endpoints().get(0);
        assert_eq!((accepted.requests(), accepted.delivered()), (2, 1));
        assert_eq!(accepted.duplicates.load(Ordering::Relaxed), 1);
        assert_eq!(receiver.endpoints().get(1).first_attempts(), 1);

        let mut garbage = Connection::new(TcpStream::connect(receiver.addr).await.unwrap());
        garbage.send(b"not http\r\n\r\n", b"").await.unwrap();
        let refused = garbage.read_response().await.unwrap();
        assert_eq!((refused.status, refused.close), (400, true));
        receiver.stop().await;
    }

    #[test]
    fn reads_the_benchmark_fields_from_a_delivered_body() {
        let body = br#"{"type":"user.created","timestamp":"2026-01-01T00:00:00.000Z","data":{"user":{"id":"u7"},"bench_seq":7,"bench_t": 123456}}"#;
        assert_eq!(number_after(body, b"\"bench_seq\":"), Some(7));
        assert_eq!(number_after(body, b"\"bench_t\":"), Some(123_456));
        assert_eq!(number_after(body, b"\"missing\":"), None);
        assert_eq!(
            number_after(b"\"bench_seq\":\"x\"", b"\"bench_seq\":"),
            None
        );
    }

    #[test]
    fn endpoints_are_numbered_by_path() {
        assert_eq!(endpoint_index("/h/12"), Some(12));
        assert_eq!(endpoint_index("/x/1"), None);
    }
}
