//! Shared test helpers: [`TestApp`] runs the real server in-process on a loopback port with a
//! movable clock; [`TestReceiver`] is a real HTTP endpoint that records what it gets and answers
//! as scripted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

use herald::app::{self, AppState};
use herald::config::Settings;
use herald_core::ManualClock;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// Tests that run several processes (real nodes, PostgreSQL under load, a browser) take turns.
/// On two cores, two of them at once starve each other: a node descheduled for seconds can
/// outlive a lease the test keeps short, and then a delivery is repeated by design.
pub async fn heavy_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// An HTTP client for tests (after installing the TLS provider the process needs).
pub fn http_client() -> reqwest::Client {
    herald_dispatch::client::install_tls_provider();
    reqwest::Client::new()
}

/// The Herald server, in-process, on 127.0.0.1 with a port of its own.
pub struct TestApp {
    pub base: String,
    pub clock: ManualClock,
    pub state: AppState,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::for_data_dir(dir.path().to_path_buf());
        settings.security.admin_token = Some(ADMIN_TOKEN.into());
        // Test receivers listen on loopback, which Herald refuses by default.
        settings.security.allow_private_networks = vec!["127.0.0.0/8".into()];
        configure(&mut settings);
        let clock = ManualClock::new();
        let app = app::build(settings, Arc::new(clock.clone()))
            .await
            .expect("the app builds");
        let state = app.state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            app::run(app, listener, async {
                let _ = stopped.await;
            })
            .await
            .expect("the server runs");
        });
        Self {
            base,
            clock,
            state,
            http: http_client(),
            _dir: dir,
            stop: Some(stop),
        }
    }

    /// The server's data directory (its SQLite file, `herald.db`).
    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Moves the clock ahead and wakes the scheduler, as if that much time had passed.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
        self.state.dispatcher.wake_scheduler_and_renewals();
        self.state.maintenance.notify_one();
    }

    /// A request with the admin token and `body` sent as it is (not JSON-encoded): what a
    /// client that gets the body wrong sends.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .body(body)
            .send()
            .await
            .expect("the server answers")
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("the server answers");
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, ADMIN_TOKEN, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, ADMIN_TOKEN, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, ADMIN_TOKEN, Some(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, ADMIN_TOKEN, None).await
    }

    /// `/metrics` as text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of an unlabelled counter or gauge in `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }

    /// Creates an organization and returns its id.
    pub async fn create_org(&self, name: &str) -> String {
        let (status, org) = self.post("/v1/orgs", json!({ "name": name })).await;
        assert_eq!(status, StatusCode::CREATED, "{org}");
        org["id"].as_str().unwrap().to_owned()
    }

    /// Creates a webhook; `extra` fields are merged into the body. Returns the whole answer
    /// (with its secret).
    pub async fn create_webhook(&self, org: &str, url: &str, extra: Value) -> Value {
        let mut body = json!({ "name": "test hook", "url": url });
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                body[k] = v;
            }
        }
        let (status, webhook) = self.post(&format!("/v1/orgs/{org}/webhooks"), body).await;
        assert_eq!(status, StatusCode::CREATED, "{webhook}");
        webhook
    }

    /// Registers the organization's own type `group.synced` (channel `member`), whose schema
    /// asks for a string `group`.
    pub async fn register_group_synced(&self, org: &str) {
        let schema = json!({ "type": "object", "required": ["group"], "properties": { "group": { "type": "string" } } });
        let (status, t) = self
            .post(
                &format!("/v1/orgs/{org}/event-types"),
                json!({ "name": "group.synced", "channel": "member", "schema": schema }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
    }

    pub async fn send_event(&self, org: &str, event: Value) -> Value {
        let (status, answer) = self.post(&format!("/v1/orgs/{org}/events"), event).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        answer
    }

    /// Polls a delivery until `done` holds (bounded: 10 s).
    pub async fn wait_for_delivery(
        &self,
        org: &str,
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            let (_, d) = self.get(&format!("/v1/orgs/{org}/deliveries/{id}")).await;
            if done(&d) {
                return d;
            }
            last = d;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("delivery {id} never reached the expected state; last seen: {last}");
    }

    /// The ids of a webhook's deliveries, newest first.
    pub async fn delivery_ids(&self, org: &str, webhook: &str) -> Vec<String> {
        let (status, list) = self
            .get(&format!("/v1/orgs/{org}/webhooks/{webhook}/deliveries"))
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// The query string's parameters, decoded.
    pub query: Vec<(String, String)>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// A query parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// Checks the Standard Webhooks signature with the independent `standardwebhooks` crate.
    pub fn verify_standard(&self, secret: &str) -> Result<(), String> {
        let wh = standardwebhooks::Webhook::new(secret).map_err(|e| format!("{e:?}"))?;
        let mut headers = http::HeaderMap::new();
        for (name, value) in &self.headers {
            headers.insert(
                http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        wh.verify(&self.body, &headers)
            .map_err(|e| format!("{e:?}"))
    }
}

impl Received {
    /// Checks the Standard Webhooks signature at the request's own timestamp, for tests that
    /// moved Herald's clock past what a verifier reading the real clock tolerates.
    pub fn verify_standard_at_own_time(&self, secret: &str) -> Result<(), String> {
        let key =
            herald_signature::standard::SigningKey::parse(secret).map_err(|e| e.to_string())?;
        let ts = self.header("webhook-timestamp");
        herald_signature::standard::verify(
            &key,
            self.header("webhook-id"),
            ts,
            self.header("webhook-signature"),
            &self.body,
            ts.parse().map_err(|_| "no timestamp".to_owned())?,
            300,
        )
        .map_err(|e| e.to_string())
    }
}

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// How the receiver answers WebSub verification GETs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscriber {
    /// Echoes `hub.challenge` with 200, as the WebSub rules ask.
    Echo,
    /// Answers 200 with something else.
    WrongEcho,
    /// Refuses with this status.
    Refuse(u16),
    /// Echoes the challenge after this long.
    SlowEcho(Duration),
}

struct ReceiverState {
    received: Mutex<Vec<Received>>,
    subscriber: Mutex<Subscriber>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
    arrived: Notify,
    /// Requests (deliveries and verifications) being answered now, and the most there ever
    /// were at once.
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

/// Counts a request as in flight until it is answered (or its connection is dropped).
struct InFlight<'a>(&'a ReceiverState);

impl<'a> InFlight<'a> {
    fn enter(state: &'a ReceiverState) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.most_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A real HTTP endpoint on loopback that records requests and answers 200 unless scripted.
#[derive(Clone)]
pub struct TestReceiver {
    pub addr: SocketAddr,
    state: Arc<ReceiverState>,
}

impl TestReceiver {
    pub async fn start() -> Self {
        let state = Arc::new(ReceiverState {
            received: Mutex::new(Vec::new()),
            subscriber: Mutex::new(Subscriber::Echo),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Reply::status(200)),
            arrived: Notify::new(),
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next requests get these answers, in order; then the default.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.script.lock().unwrap().extend(replies);
    }

    pub fn subscriber(&self, behaviour: Subscriber) {
        *self.state.subscriber.lock().unwrap() = behaviour;
    }

    /// The WebSub verification requests received on `path`.
    pub fn verifications_on(&self, path: &str) -> Vec<Received> {
        self.received_on(path)
            .into_iter()
            .filter(|r| r.method == "GET")
            .collect()
    }

    pub fn answer_by_default(&self, reply: Reply) {
        *self.state.default.lock().unwrap() = reply;
    }

    /// The most requests this receiver was answering at once.
    pub fn most_in_flight(&self) -> usize {
        self.state.most_in_flight.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Waits until at least `n` deliveries (POSTs) arrived on `path` (bounded by `within`).
    pub async fn wait_for(&self, path: &str, n: usize, within: Duration) -> Vec<Received> {
        self.wait_for_method("POST", path, n, within).await
    }

    /// Waits until at least `n` WebSub verifications (GETs) arrived on `path`.
    pub async fn wait_for_verifications(
        &self,
        path: &str,
        n: usize,
        within: Duration,
    ) -> Vec<Received> {
        self.wait_for_method("GET", path, n, within).await
    }

    async fn wait_for_method(
        &self,
        method: &str,
        path: &str,
        n: usize,
        within: Duration,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.state.arrived.notified();
            let got: Vec<Received> = self
                .received_on(path)
                .into_iter()
                .filter(|r| r.method == method)
                .collect();
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "expected {n} {method} requests on {path} within {within:?}, got {}",
                    got.len()
                );
            }
        }
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query: Vec<(String, String)> = uri
        .query()
        .map(|q| serde_urlencoded::from_str(q).unwrap_or_default())
        .unwrap_or_default();
    let received = Received {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query,
        headers,
        body,
    };
    let _in_flight = InFlight::enter(&state);
    if method == axum::http::Method::GET {
        let behaviour = *state.subscriber.lock().unwrap();
        let answer = websub_answer(&received, behaviour);
        state.received.lock().unwrap().push(received);
        state.arrived.notify_waiters();
        if let Subscriber::SlowEcho(delay) = behaviour {
            tokio::time::sleep(delay).await;
        }
        return answer;
    }
    let reply = {
        let next = state.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| state.default.lock().unwrap().clone())
    };
    state.received.lock().unwrap().push(received);
    state.arrived.notify_waiters();
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (
        StatusCode::from_u16(reply.status).unwrap(),
        "receiver says hi",
    )
        .into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

/// A subscriber written from the WebSub rules (W3C WebSub §5.3): a verification request carries
/// hub.mode, hub.topic and hub.challenge (and hub.lease_seconds when subscribing); the
/// subscriber confirms by answering 2xx with the challenge as the whole body.
fn websub_answer(req: &Received, behaviour: Subscriber) -> Response {
    let mode = req.param("hub.mode");
    let well_formed = matches!(mode, Some("subscribe" | "unsubscribe"))
        && req.param("hub.topic").is_some_and(|t| !t.is_empty())
        && (mode == Some("unsubscribe")
            || req
                .param("hub.lease_seconds")
                .is_some_and(|l| l.parse::<u64>().is_ok()));
    let Some(challenge) = req.param("hub.challenge").filter(|_| well_formed) else {
        return (StatusCode::BAD_REQUEST, "not a WebSub verification").into_response();
    };
    match behaviour {
        Subscriber::Echo | Subscriber::SlowEcho(_) => {
            (StatusCode::OK, challenge.to_owned()).into_response()
        }
        Subscriber::WrongEcho => (StatusCode::OK, "sure, whatever").into_response(),
        Subscriber::Refuse(status) => (StatusCode::from_u16(status).unwrap(), "no").into_response(),
    }
}
