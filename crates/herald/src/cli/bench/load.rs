//! The producers: post `user.created` events to Herald over keep-alive connections, either as
//! fast as they can (`burst`, `batch`) or at a steady rate (`latency`), and count what was sent
//! and acknowledged.
//!
//! Every event carries its sequence number and the time it was sent (`bench_seq`, `bench_t` in
//! its data), so the receiver can tell which arrived and how late. Bodies are written by hand
//! into one buffer per request: no JSON tree per event, since the producers share the cores with
//! the server. A request that fails for a reason that may pass (a connection refused while the
//! server restarts, a 503) is sent again, byte for byte, with the same event ids: Herald's
//! idempotency makes that safe, which is what a real producer relies on too.
//!
//! Requests go out over the bench's own HTTP/1.1 (`wire.rs`): each producer takes an idle
//! connection, writes the request and reads the answer in its own task. hyper's pooled client
//! handed every request to a task of the connection's and back: 1.6 times the CPU per request.

use std::io::{self, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::Uri;
use http::header::HeaderValue;
use hyper_rustls::ConfigBuilderExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;

use super::measure::{Clock, Seen, Span};
use super::wire::{Connection, Response};

/// How the producers connect: TCP, with TLS for a `--server` given as `https://`, verified as
/// the platform verifies certificates. The connections themselves are kept by each [`Producer`].
#[derive(Clone)]
pub struct LoadClient {
    tls: TlsConnector,
}

/// The producers' client, with its TLS set up once for every scenario.
pub fn load_client() -> anyhow::Result<LoadClient> {
    let config = ClientConfig::builder()
        .try_with_platform_verifier()
        .context("could not set up TLS for the producers")?
        .with_no_client_auth();
    Ok(LoadClient {
        tls: TlsConnector::from(Arc::new(config)),
    })
}

/// A plain or TLS stream, whichever the target needs.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Conn = Connection<Box<dyn Io>>;

impl LoadClient {
    async fn connect(&self, target: &Target) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .with_context(|| format!("could not connect to {}", target.authority))?;
        tcp.set_nodelay(true)?;
        let stream: Box<dyn Io> =
            if target.tls {
                let name = ServerName::try_from(target.host.clone())
                    .with_context(|| format!("'{}' is not a TLS server name", target.host))?;
                Box::new(self.tls.connect(name, tcp).await.with_context(|| {
                    format!("the TLS handshake with {} failed", target.authority)
                })?)
            } else {
                Box::new(tcp)
            };
        Ok(Connection::new(stream))
    }
}

/// Where the producers post, as a connection needs it.
struct Target {
    /// To connect to (an IPv6 address without its brackets).
    host: String,
    port: u16,
    tls: bool,
    /// `host[:port]`, as the `Host` header carries it.
    authority: String,
    /// The request's head up to the value of `Content-Length`.
    head: Vec<u8>,
    /// Which target this is: connections made for an earlier one are not reused.
    generation: u64,
}

impl Target {
    fn new(base: &str, org: &str, auth: &HeaderValue, generation: u64) -> anyhow::Result<Self> {
        let url = events_url(base, org)?;
        let tls = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => anyhow::bail!("'{url}' is neither http:// nor https://; check --server"),
        };
        let bracketed = url
            .host()
            .with_context(|| format!("'{url}' names no host; check --server"))?;
        let authority = match url.port_u16() {
            Some(port) => format!("{bracketed}:{port}"),
            None => bracketed.to_owned(),
        };
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let mut head =
            format!("POST {path} HTTP/1.1\r\nhost: {authority}\r\nauthorization: ").into_bytes();
        head.extend_from_slice(auth.as_bytes());
        head.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
        Ok(Self {
            host: bracketed
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: url.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            tls,
            authority,
            head,
            generation,
        })
    }

    /// The whole head of a request with a body of `len` bytes.
    fn head(&self, len: usize) -> Vec<u8> {
        let mut head = Vec::with_capacity(self.head.len() + 24);
        head.extend_from_slice(&self.head);
        // Writing into a Vec cannot fail.
        let _ = write!(head, "{len}\r\n\r\n");
        head
    }
}

/// How long one request may take before it counts as failed (and is sent again).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how to post events.
pub struct Producer {
    client: LoadClient,
    /// `…/v1/orgs/{org}/events`; replaced when the server restarts on another port.
    target: RwLock<Arc<Target>>,
    /// Open connections not in use, each with the generation of the target it was made for.
    idle: Mutex<Vec<(u64, Conn)>>,
    auth: HeaderValue,
    clock: Clock,
    /// What the events look like.
    shape: EventShape,
}

/// What the producers' events look like beyond their type and sequence number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventShape {
    /// Bytes of filler in every event's data.
    pub padding: usize,
    /// Ids in no particular order (as UUIDs are) instead of `e1`, `e2`, … in order. Storage
    /// keeps an index by event id, and where in it each new id lands changes what a commit
    /// writes.
    pub random_ids: bool,
}

/// What the producers did, read by the progress line and the report.
pub struct Counters {
    /// Events in requests sent (each counted once, retries aside).
    pub sent: AtomicU64,
    /// Events acknowledged with 202.
    pub acked: AtomicU64,
    /// Requests that were not answered 202 (connection errors included).
    pub failures: AtomicU64,
    /// Events given up on: refused for good, or never acknowledged before the deadline.
    pub abandoned: AtomicU64,
    /// When the first request went out and the last one went out.
    pub sends: Span,
    /// When the first and the last 202 came back.
    pub acks: Span,
    /// Which events were acknowledged.
    pub acked_set: Seen,
    /// The first refusal's status and body, to show the user.
    pub first_refusal: Mutex<Option<String>>,
}

impl Counters {
    pub fn new(capacity: u64) -> Self {
        Self {
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            abandoned: AtomicU64::new(0),
            sends: Span::default(),
            acks: Span::default(),
            acked_set: Seen::new(capacity),
            first_refusal: Mutex::new(None),
        }
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Relaxed)
    }

    pub fn refusal(&self) -> Option<String> {
        self.first_refusal.lock().ok()?.clone()
    }
}

/// How a burst is shaped.
#[derive(Debug, Clone, Copy)]
pub struct Burst {
    pub events: u64,
    /// Events per request: 1 posts single objects, more posts arrays.
    pub batch: usize,
    /// Producers, each with one request in flight at a time (so at most this many connections).
    pub connections: usize,
    /// How long one request may keep failing before its events are given up.
    pub patience: Duration,
}

impl Producer {
    pub fn new(
        client: LoadClient,
        base: &str,
        org: &str,
        auth: HeaderValue,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            client,
            target: RwLock::new(Arc::new(Target::new(base, org, &auth, 0)?)),
            idle: Mutex::new(Vec::new()),
            auth,
            clock,
            shape: EventShape::default(),
        })
    }

    /// Sends events of this shape.
    pub fn shaped(mut self, shape: EventShape) -> Self {
        self.shape = shape;
        self
    }

    /// Points the producers at a restarted server.
    pub fn retarget(&self, base: &str, org: &str) -> anyhow::Result<()> {
        let generation = self.target().generation + 1;
        let target = Target::new(base, org, &self.auth, generation)?;
        if let Ok(mut current) = self.target.write() {
            *current = Arc::new(target);
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        Ok(())
    }

    fn target(&self) -> Arc<Target> {
        match self.target.read() {
            Ok(target) => target.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Posts `plan.events` events as fast as the server takes them.
    pub async fn burst(self: &Arc<Self>, plan: Burst, counters: &Arc<Counters>) {
        let next = Arc::new(AtomicU64::new(0));
        let mut producers = JoinSet::new();
        for _ in 0..plan.connections.max(1) {
            let (this, next, counters) = (self.clone(), next.clone(), counters.clone());
            producers.spawn(async move {
                let batch = plan.batch.max(1) as u64;
                loop {
                    // Events given up on (refused for good, or unanswered for the whole
                    // patience) mean the server will not take the rest either: a server that
                    // died would otherwise be waited for, request after request, for hours.
                    if counters.abandoned.load(Ordering::Relaxed) > 0 {
                        break;
                    }
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= plan.events {
                        break;
                    }
                    let seqs = first..(first + batch).min(plan.events);
                    this.send(seqs, plan.batch > 1, plan.patience, &counters)
                        .await;
                }
            });
        }
        while producers.join_next().await.is_some() {}
    }

    /// Posts one event every `1/rate` seconds for `duration`, with at most `connections`
    /// requests in flight (an open loop: a slow answer does not delay the next event). It stops
    /// at `duration` even if fewer were sent (the server did not keep up: the caller says so).
    pub async fn steady(
        self: &Arc<Self>,
        rate: u32,
        duration: Duration,
        connections: usize,
        counters: &Arc<Counters>,
    ) {
        let total = (f64::from(rate) * duration.as_secs_f64()).round() as u64;
        let mut ticker =
            tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
        let slots = Arc::new(Semaphore::new(connections.max(1)));
        let mut in_flight = JoinSet::new();
        let started = Instant::now();
        for seq in 0..total {
            ticker.tick().await;
            if started.elapsed() >= duration {
                break;
            }
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let (this, counters) = (self.clone(), counters.clone());
            in_flight.spawn(async move {
                this.send(seq..seq + 1, false, Duration::from_secs(10), &counters)
                    .await;
                drop(permit);
            });
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// Sends one request with the events `seqs` until it is acknowledged, refused for good, or
    /// has failed for longer than `patience`.
    async fn send(&self, seqs: Range<u64>, array: bool, patience: Duration, counters: &Counters) {
        let count = seqs.end - seqs.start;
        let body = encode(seqs.clone(), array, self.clock.now_us(), self.shape);
        counters.sent.fetch_add(count, Ordering::Relaxed);
        counters.sends.mark(self.clock.now_us());
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.post(&body).await {
                Ok((202, _)) => {
                    counters.acks.mark(self.clock.now_us());
                    counters.acked.fetch_add(count, Ordering::Relaxed);
                    for seq in seqs {
                        counters.acked_set.insert(seq);
                    }
                    return;
                }
                Ok((status, text)) if !retryable(status) => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                    counters.abandoned.fetch_add(count, Ordering::Relaxed);
                    if let Ok(mut first) = counters.first_refusal.lock() {
                        first.get_or_insert_with(|| format!("{status}: {text}"));
                    }
                    return;
                }
                _ => {
                    counters.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
            if started.elapsed() > patience {
                counters.abandoned.fetch_add(count, Ordering::Relaxed);
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// Posts `body` on an idle connection, or a new one if there is none or the idle one turns
    /// out to have been closed by the server; the answer's status and text.
    async fn post(&self, body: &[u8]) -> anyhow::Result<(u16, String)> {
        let target = self.target();
        let head = target.head(body.len());
        let exchange = async {
            if let Some(mut conn) = self.take_idle(target.generation) {
                match exchange(&mut conn, &head, body).await {
                    Ok(answer) => return Ok(self.keep(target.generation, conn, answer)),
                    // Sent again whole on a new connection; the events' ids make that safe.
                    Err(e) if went_stale(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let mut conn = self.client.connect(&target).await?;
            let answer = exchange(&mut conn, &head, body).await?;
            anyhow::Ok(self.keep(target.generation, conn, answer))
        };
        let (status, text) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .context("no answer within 60 s")??;
        if status == 202 {
            return Ok((status, String::new()));
        }
        Ok((status, String::from_utf8_lossy(&text).into_owned()))
    }

    fn take_idle(&self, generation: u64) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((made_for, conn)) = idle.pop() {
            if made_for == generation {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request unless the server said it closes it.
    fn keep(&self, generation: u64, conn: Conn, answer: Response) -> (u16, Bytes) {
        if !answer.close
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push((generation, conn));
        }
        (answer.status, answer.body)
    }
}

async fn exchange(conn: &mut Conn, head: &[u8], body: &[u8]) -> io::Result<Response> {
    conn.send(head, body).await?;
    conn.read_response().await
}

/// A kept connection the server had closed in the meantime.
fn went_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// Worth sending again: the server is restarting, overloaded, or briefly unavailable.
fn retryable(status: u16) -> bool {
    status >= 500 || status == 429
}

fn events_url(base: &str, org: &str) -> anyhow::Result<Uri> {
    let url = format!("{}/v1/orgs/{org}/events", base.trim_end_matches('/'));
    url.parse()
        .map_err(|e| anyhow::anyhow!("'{url}' is not a valid URL ({e}); check --server"))
}

/// How many events of `padding` extra bytes one request may carry, at most `wanted`: a request
/// stays under Herald's default body limit (1 MiB).
pub fn events_per_request(wanted: usize, padding: u32) -> usize {
    const BODY_LIMIT: usize = 1024 * 1024;
    let per_event = 160 + padding as usize;
    wanted.min(BODY_LIMIT / per_event).max(1)
}

/// The request body for events `seqs`, sent at `sent_us`: one object, or an array of them, each
/// shaped as `shape` says.
pub fn encode(seqs: Range<u64>, array: bool, sent_us: u64, shape: EventShape) -> Bytes {
    let padding = shape.padding;
    let mut buf = Vec::with_capacity((124 + padding) * (seqs.end - seqs.start) as usize + 2);
    if array {
        buf.push(b'[');
    }
    for seq in seqs {
        if array && buf.len() > 1 {
            buf.push(b',');
        }
        // Writing into a Vec cannot fail.
        if shape.random_ids {
            // A bijection of the sequence number, so ids stay unique but land all over the index.
            let scrambled = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let _ = write!(buf, r#"{{"type":"user.created","id":"e{scrambled:016x}","#);
        } else {
            let _ = write!(buf, r#"{{"type":"user.created","id":"e{seq}","#);
        }
        let _ = write!(buf, r#""data":{{"user":{{"id":"u{seq}"}},"#);
        if padding > 0 {
            buf.extend_from_slice(br#""padding":""#);
            buf.resize(buf.len() + padding, b'x');
            buf.extend_from_slice(br#"","#);
        }
        let _ = write!(buf, r#""bench_seq":{seq},"bench_t":{sent_us}}}}}"#);
    }
    if array {
        buf.push(b']');
    }
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server on loopback that answers each request with the next of `answers` and closes
    /// every connection after one request (as a server whose keep-alive has expired does);
    /// what it was sent comes back through the handle.
    async fn closing_server(
        answers: &[&'static str],
    ) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let answers = answers.to_vec();
        let server = tokio::spawn(async move {
            let mut requests = Vec::new();
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0; 4096];
                while !String::from_utf8_lossy(&request).contains("\"bench_t\"") {
                    let n = stream.read(&mut buf).await.unwrap();
                    request.extend_from_slice(&buf[..n]);
                }
                stream.write_all(answer.as_bytes()).await.unwrap();
                requests.push(String::from_utf8(request).unwrap());
            }
            requests
        });
        (base, server)
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_and_a_503_sent_again() {
        let accepted = "HTTP/1.1 202 Accepted\r\ncontent-length: 2\r\n\r\n{}";
        let (base, server) = closing_server(&[
            accepted,
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy",
            accepted,
        ])
        .await;
        let auth = HeaderValue::from_static("Bearer k");
        let producer = Arc::new(
            Producer::new(load_client().unwrap(), &base, "org_1", auth, Clock::start()).unwrap(),
        );
        let counters = Arc::new(Counters::new(10));
        let plan = Burst {
            events: 2,
            batch: 1,
            connections: 1,
            patience: Duration::from_secs(5),
        };
        producer.burst(plan, &counters).await;
        assert_eq!(counters.acked(), 2);
        assert_eq!(
            counters.failures.load(Ordering::Relaxed),
            1,
            "only the 503 failed"
        );
        let requests = server.await.unwrap();
        assert_eq!(requests.len(), 3);
        assert!(requests[0].starts_with("POST /v1/orgs/org_1/events HTTP/1.1\r\n"));
        assert!(requests[0].contains("\r\nauthorization: Bearer k\r\n"));
        assert!(requests[0].contains("\"id\":\"e0\""));
        // The second event went out on a new connection, and again after the 503, unchanged.
        assert!(requests[1].contains("\"id\":\"e1\""));
        assert_eq!(requests[1], requests[2]);
    }

    fn padded(padding: usize) -> EventShape {
        EventShape {
            padding,
            random_ids: false,
        }
    }

    #[test]
    fn random_ids_are_unique_and_out_of_order() {
        let shape = EventShape {
            padding: 0,
            random_ids: true,
        };
        let many: serde_json::Value =
            serde_json::from_slice(&encode(0..1000, true, 1, shape)).unwrap();
        let ids: Vec<&str> = many
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap())
            .collect();
        let unique: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), 1000);
        assert!(
            ids.windows(2).filter(|w| w[0] > w[1]).count() > 300,
            "{ids:?}"
        );
        assert_eq!(many[999]["data"]["bench_seq"], 999);
    }

    #[test]
    fn bodies_are_valid_json_with_the_benchmark_fields() {
        let one: serde_json::Value =
            serde_json::from_slice(&encode(5..6, false, 42, EventShape::default())).unwrap();
        assert_eq!(one["id"], "e5");
        assert_eq!(one["data"]["bench_seq"], 5);
        assert_eq!(one["data"]["bench_t"], 42);
        let many: serde_json::Value =
            serde_json::from_slice(&encode(0..3, true, 1, EventShape::default())).unwrap();
        assert_eq!(many.as_array().unwrap().len(), 3);
        assert_eq!(many[2]["data"]["user"]["id"], "u2");
    }

    #[test]
    fn padded_events_carry_exactly_the_padding_asked_for() {
        let plain = encode(7..8, false, 1, EventShape::default());
        let padded = encode(7..8, false, 1, padded(1000));
        let event: serde_json::Value = serde_json::from_slice(&padded).unwrap();
        assert_eq!(event["data"]["padding"].as_str().unwrap().len(), 1000);
        assert_eq!(event["data"]["bench_seq"], 7);
        assert_eq!(padded.len() - plain.len(), 1000 + r#""padding":"","#.len());
    }

    #[test]
    fn a_request_of_padded_events_stays_under_the_body_limit() {
        assert_eq!(events_per_request(100, 0), 100);
        let n = events_per_request(1000, 4096);
        assert!(n < 1000);
        let body = encode(0..n as u64, true, u64::MAX, padded(4096));
        assert!(body.len() <= 1024 * 1024, "{} bytes", body.len());
        let n = events_per_request(1000, 500_000);
        assert_eq!(n, 2);
        assert!(encode(0..2, true, u64::MAX, padded(500_000)).len() <= 1024 * 1024);
    }
}
