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

use std::io::Write;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use http::{StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::measure::{Clock, Seen, Span};

/// The producers' HTTP client: hyper's pooled client, nothing more (TLS only for a `--server`
/// given as `https://`). The load shares the cores with the server it measures, so it must cost
/// as little as it can.
pub type LoadClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client keeping up to `pool` connections open (one per producer).
pub fn load_client(pool: usize) -> anyhow::Result<LoadClient> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.enforce_http(false);
    let connector = HttpsConnectorBuilder::new()
        .try_with_platform_verifier()
        .context("could not set up TLS for the producers")?
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool)
        .build(connector))
}

/// How long one request may take before it counts as failed (and is sent again).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how to post events.
pub struct Producer {
    client: LoadClient,
    /// `…/v1/orgs/{org}/events`; replaced when the server restarts on another port.
    events_url: RwLock<Uri>,
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
            events_url: RwLock::new(events_url(base, org)?),
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
        let url = events_url(base, org)?;
        if let Ok(mut current) = self.events_url.write() {
            *current = url;
        }
        Ok(())
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
    /// requests in flight (an open loop: a slow answer does not delay the next event).
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
        for seq in 0..total {
            ticker.tick().await;
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
            match self.post(body.clone()).await {
                Ok((StatusCode::ACCEPTED, _)) => {
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

    async fn post(&self, body: Bytes) -> anyhow::Result<(StatusCode, String)> {
        let url = match self.events_url.read() {
            Ok(url) => url.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let request = http::Request::post(url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(Full::new(body))?;
        let exchange = async {
            let resp = self.client.request(request).await?;
            let status = resp.status();
            // Read the answer to the end so the connection goes back to the pool.
            let text = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, text))
        };
        let (status, text) = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await??;
        if status == StatusCode::ACCEPTED {
            return Ok((status, String::new()));
        }
        Ok((status, String::from_utf8_lossy(&text).into_owned()))
    }
}

/// Worth sending again: the server is restarting, overloaded, or briefly unavailable.
fn retryable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
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
