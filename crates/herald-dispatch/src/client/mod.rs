//! The outbound HTTP client: keep-alive connections, no redirects, a deadline over the whole
//! exchange, and at most a KiB of each response kept.
//!
//! It is hyper's HTTP/1.1 connection over a TLS connector (rustls, the platform's verifier)
//! over a TCP connector whose resolver is the SSRF guard, with a pool of its own (`pool.rs`).
//! A general-purpose client (reqwest, used before, then hyper-util's pooled client) wrapped
//! every request in layers Herald does not use; on the delivery path they cost more CPU than
//! the request itself.

mod classify;
mod pool;
mod targets;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HOST, HeaderName, HeaderValue, RETRY_AFTER};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::error::Elapsed;
use tokio::time::timeout_at;

use herald_core::address_policy::AddressPolicy;

use herald_core::delivery::{
    AttemptError, AttemptOutcome, RESPONSE_BODY_KEEP, keep_response_prefix,
};
use herald_core::profile::OutgoingRequest;

use crate::guard::{Blocked, GuardedResolver};
use classify::{Stage, classify, error_chain};
use pool::{Connection, Connector, Origin};
use targets::{Target, Targets, close_stale_connections, resolve_target};

/// Installs the TLS crypto provider (ring) for this process, once. Every TLS configuration
/// made in the process needs it first.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sends rendered requests. Clone it freely: clones share their connections.
#[derive(Clone)]
pub struct HttpClient {
    connector: Connector,
    /// The connector's resolver too, with its turns, for checking a name ahead of time.
    resolver: GuardedResolver,
    policy: Arc<AddressPolicy>,
    targets: Arc<Targets>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("policy", &self.policy)
            .finish()
    }
}

/// The `User-Agent` of every request Herald sends to an endpoint.
pub const USER_AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));

/// How long connecting (TCP and TLS) may take at most, whatever the webhook's timeout.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl HttpClient {
    /// A client that reaches only the addresses `policy` permits. Fails if the platform's
    /// certificate verifier cannot be set up.
    pub fn new(policy: AddressPolicy) -> Result<Self, rustls::Error> {
        Self::keeping_idle(policy, pool::MAX_IDLE_TOTAL)
    }

    /// [`Self::new`], keeping at most `idle` idle connections across origins (a server keeps as
    /// many as it may have requests in flight, so that both fit its open-file limit).
    pub fn keeping_idle(policy: AddressPolicy, idle: usize) -> Result<Self, rustls::Error> {
        let policy = Arc::new(policy);
        install_tls_provider();
        let resolver = GuardedResolver::new(policy.clone());
        let mut tcp = HttpConnector::new_with_resolver(resolver.clone());
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let connector = HttpsConnectorBuilder::new()
            .try_with_platform_verifier()?
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let targets = Arc::new(Targets::keeping_idle(idle));
        // Outside a runtime (a client made for a one-off command) connections are still closed
        // when an origin is next used; a server's client sweeps all of them now and then.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(close_stale_connections(Arc::downgrade(&targets)));
        }
        Ok(Self {
            connector,
            resolver,
            policy,
            targets,
        })
    }

    /// Refuses a host name that resolves only to addresses this client would not connect to,
    /// waiting `wait` at most. Lookups take the same turns as the connections' own, so that
    /// names checked ahead (a webhook being created) cannot take every blocking thread.
    pub async fn check_name(&self, host: &str, wait: Duration) -> Result<(), Blocked> {
        match self.resolver.refused_name(host, wait).await {
            Some(blocked) => Err(blocked),
            None => Ok(()),
        }
    }

    /// POSTs `request` to `url` with `extra_headers`, and says how it went.
    pub async fn send(
        &self,
        url: &str,
        request: OutgoingRequest,
        extra_headers: &[(String, String)],
        timeout: Duration,
    ) -> AttemptOutcome {
        self.send_noting_slow(url, request, extra_headers, timeout, || true)
            .await
    }

    /// [`HttpClient::send`], calling `on_slow` once if the endpoint has not answered (its
    /// status line and headers) within [`SLOW_ANSWER`] while the timeout runs on: the
    /// dispatcher then counts the request apart from those that take the node's room, or, if
    /// `on_slow` says `false`, the request is given up ([`AttemptError::CutShort`]).
    pub async fn send_noting_slow(
        &self,
        url: &str,
        request: OutgoingRequest,
        extra_headers: &[(String, String)],
        timeout: Duration,
        on_slow: impl FnOnce() -> bool,
    ) -> AttemptOutcome {
        let started = Instant::now();
        let mut deadline = Deadline::new(timeout);
        let built = self
            .targets
            .target(&self.policy, url, request.title_case_headers)
            .and_then(|target| post(&target, request, extra_headers).map(|req| (target, req)));
        let (target, req) = match built {
            Ok(built) => built,
            Err(error) => return failed(error, None, started, String::new(), None),
        };
        let exchange = std::pin::pin!(self.exchange(&target.origin, &target.uri, req, deadline.at));
        let Some(exchanged) = past_slow_mark(&mut deadline, exchange, on_slow).await else {
            return failed(AttemptError::CutShort, None, started, String::new(), None);
        };
        let (response, connection) = match exchanged {
            Ok(Ok(exchanged)) => exchanged,
            Ok(Err(error)) => return failed(error, None, started, String::new(), None),
            Err(_) => return failed(AttemptError::Timeout, None, started, String::new(), None),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        deadline.at = deadline.at.min(tokio::time::Instant::now() + BODY_WAIT);
        let (kept, end) =
            read_prefix(response.into_body(), RESPONSE_BODY_KEEP, &mut deadline).await;
        let kept = keep_response_prefix(&kept);
        match end {
            BodyEnd::Complete => target.origin.checkin(connection),
            // The status came in time: a body cut short, or still coming at the deadline, does
            // not change the verdict (a 2xx within the timeout is a success: sent again, it
            // would reach the endpoint twice). The connection is not reused.
            BodyEnd::Limit | BodyEnd::Broken(_) | BodyEnd::Deadline => {}
        }
        let duration_ms = elapsed_ms(started);
        if (200..300).contains(&status) {
            AttemptOutcome::succeeded(status, duration_ms, kept)
        } else {
            let retry_after = if status == 429 || status == 503 {
                retry_after
            } else {
                None
            };
            AttemptOutcome::failed(
                AttemptError::Status(status),
                Some(status),
                duration_ms,
                kept,
                retry_after,
            )
        }
    }

    /// Sends `req` on an idle connection of `origin`, or on a new one to `uri` if none is
    /// left; answers the response and the connection it came on. A pooled connection the
    /// server closed before the request went out is set aside and the next one tried, as a
    /// request that never left cannot have been received. Nothing is sent past `send_by`
    /// ([`too_late_to_send`]).
    async fn exchange(
        &self,
        origin: &Origin,
        uri: &http::Uri,
        mut req: http::Request<pool::Body>,
        send_by: tokio::time::Instant,
    ) -> Result<(hyper::Response<Incoming>, Connection), AttemptError> {
        let informational = Informational::watch(&mut req);
        let too_many = || {
            AttemptError::Request(format!(
                "the endpoint sent more than {MAX_INFORMATIONAL} informational (1xx) answers \
                 before its answer"
            ))
        };
        let exchanged = tokio::select! {
            exchanged = self.exchange_on_any(origin, uri, req, send_by) => exchanged,
            // Dropping the exchange drops its connection, whose task then ends.
            () = informational.too_many() => return Err(too_many()),
        };
        // The answer may have come in the same read as too many informational ones: the
        // same endpoint fails the same way however its bytes were split.
        if informational.exceeded() {
            return Err(too_many());
        }
        exchanged
    }

    /// `exchange`, without the limit on informational answers.
    async fn exchange_on_any(
        &self,
        origin: &Origin,
        uri: &http::Uri,
        mut req: http::Request<pool::Body>,
        send_by: tokio::time::Instant,
    ) -> Result<(hyper::Response<Incoming>, Connection), AttemptError> {
        while let Some(mut connection) = origin.checkout() {
            if connection.ready().await.is_err() {
                continue;
            }
            too_late_to_send(send_by)?;
            match connection.try_send_request(req).await {
                Ok(response) => return Ok((response, connection)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(classify(error.error(), Stage::Exchange)),
                },
            }
        }
        let mut connection = pool::connect(&self.connector, uri, origin.title_case_headers)
            .await
            .map_err(|e| classify(&*e, Stage::Connect))?;
        too_late_to_send(send_by)?;
        let response = connection
            .send_request(req)
            .await
            .map_err(|e| classify(&e, Stage::Exchange))?;
        Ok((response, connection))
    }
}

/// Informational (1xx) answers taken before a request's answer at most. hyper passes over
/// any number of them, so an endpoint streaming `102 Processing` heads would keep a core busy
/// parsing until the timeout (gigabytes in a minute); a real server sends one or two.
const MAX_INFORMATIONAL: u32 = 32;

/// Counts one request's informational answers, and says when there were too many.
#[derive(Default)]
struct Informational {
    seen: std::sync::atomic::AtomicU32,
    exceeded: tokio::sync::Notify,
}

impl Informational {
    /// Counts `req`'s informational answers from now on.
    fn watch<B>(req: &mut http::Request<B>) -> Arc<Self> {
        let watch = Arc::new(Self::default());
        let counter = watch.clone();
        hyper::ext::on_informational(req, move |_| {
            let seen = counter
                .seen
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if seen == MAX_INFORMATIONAL {
                // Kept as a permit if `too_many` is not waiting yet.
                counter.exceeded.notify_one();
            }
        });
        watch
    }

    /// Completes once more than `MAX_INFORMATIONAL` came.
    async fn too_many(&self) {
        self.exceeded.notified().await;
    }

    /// Whether more than `MAX_INFORMATIONAL` came.
    fn exceeded(&self) -> bool {
        self.seen.load(std::sync::atomic::Ordering::Relaxed) > MAX_INFORMATIONAL
    }
}

/// The POST request for a delivery. A header the webhook configured that HTTP cannot carry is
/// the request's failure, not a panic.
fn post(
    target: &Target,
    request: OutgoingRequest,
    extra_headers: &[(String, String)],
) -> Result<http::Request<pool::Body>, AttemptError> {
    let invalid = |e: &dyn std::fmt::Display| AttemptError::Request(e.to_string());
    let mut req = http::Request::new(Full::new(Bytes::from(request.body)));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = target.path.clone();
    // Room for every header at once, `Content-Length` (hyper's) included: a map that grew on the
    // last one moved all the others, once per attempt.
    let headers = req.headers_mut();
    headers.reserve(3 + extra_headers.len() + request.headers.len());
    headers.insert(HOST, target.host.clone());
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(USER_AGENT),
    );
    for (name, value) in extra_headers {
        let name = HeaderName::try_from(name.as_str()).map_err(|e| invalid(&e))?;
        let value = HeaderValue::try_from(value.as_str()).map_err(|e| invalid(&e))?;
        headers.append(name, value);
    }
    for (name, value) in request.headers {
        let name = profile_header_name(name).map_err(|e| invalid(&e))?;
        let value = HeaderValue::try_from(value).map_err(|e| invalid(&e))?;
        headers.insert(name, value);
    }
    Ok(req)
}

/// A profile's header name. Names in lower case made only of letters, digits and dashes (all
/// of them, today) are taken as they are, without the copy `try_from` allocates for each on
/// every request; any other is checked, since `from_static` would panic on it.
fn profile_header_name(name: &'static str) -> Result<HeaderName, http::header::InvalidHeaderName> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Ok(HeaderName::from_static(name))
    } else {
        HeaderName::try_from(name)
    }
}

impl HttpClient {
    /// GETs `url` and returns the status and at most `max_body` bytes of the body as text
    /// (WebSub verification of intent). Such URLs are one-off (they carry a challenge), so
    /// they are neither remembered nor sent on a pooled connection.
    pub async fn get_text(
        &self,
        url: &str,
        extra_headers: &std::collections::BTreeMap<String, String>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<(u16, String), AttemptError> {
        let mut deadline = Deadline::new(timeout);
        let (uri, path, host) = resolve_target(&self.policy, url)?;
        let mut req = http::Request::get(path)
            .header(HOST, host)
            .header(http::header::USER_AGENT, USER_AGENT);
        for (name, value) in extra_headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = req
            .body(Full::default())
            .map_err(|e| AttemptError::Request(e.to_string()))?;
        let send_by = deadline.at;
        let (response, _connection) = by_deadline(
            &mut deadline,
            std::pin::pin!(self.exchange(&Origin::default(), &uri, req, send_by)),
        )
        .await
        .map_err(|_| AttemptError::Timeout)??;
        let status = response.status().as_u16();
        let (mut text, end) = read_prefix(response.into_body(), max_body, &mut deadline).await;
        match end {
            BodyEnd::Deadline => return Err(AttemptError::Timeout),
            BodyEnd::Broken(e) => return Err(AttemptError::Request(error_chain(&e))),
            BodyEnd::Complete | BodyEnd::Limit => {}
        }
        text.truncate(max_body);
        Ok((status, String::from_utf8_lossy(&text).into_owned()))
    }
}

/// How reading a body ended.
enum BodyEnd {
    /// At its end: the connection can carry the next request.
    Complete,
    /// At the limit, with more to come (not our business).
    Limit,
    Deadline,
    Broken(hyper::Error),
}

/// Reads a response body by `deadline` until its end or until at least `max` bytes are in
/// (a short body is read to its end, so its connection can be used again). Answers what was
/// read, and how reading ended.
async fn read_prefix(
    mut body: Incoming,
    max: usize,
    deadline: &mut Deadline,
) -> (Vec<u8>, BodyEnd) {
    use hyper::body::Body as _;
    let mut read = Vec::new();
    while read.len() < max {
        match by_deadline(deadline, std::pin::pin!(body.frame())).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    read.extend_from_slice(&data);
                }
            }
            Ok(None) => return (read, BodyEnd::Complete),
            Ok(Some(Err(e))) => return (read, BodyEnd::Broken(e)),
            Err(_) => return (read, BodyEnd::Deadline),
        }
    }
    let end = if body.is_end_stream() {
        BodyEnd::Complete
    } else {
        BodyEnd::Limit
    };
    (read, end)
}

/// How long an endpoint may take to answer before its request counts as slow (see
/// [`HttpClient::send_noting_slow`]): most answer within milliseconds; one that takes a second
/// is likely to take its whole timeout.
pub const SLOW_ANSWER: Duration = Duration::from_secs(1);

/// How long the body of an answer may take once its status came. The verdict is known then,
/// and the body is only kept to be shown: an endpoint that sends `200` and then drips its body
/// would otherwise hold one of the node's requests in flight for the rest of its timeout, and
/// enough of them hold up every other endpoint's deliveries.
const BODY_WAIT: Duration = Duration::from_secs(1);

/// A timer this late fired after a stall of the whole process (suspended, frozen by its
/// hypervisor, starved of CPU), not because the endpoint was slow.
const STALLED: Duration = Duration::from_millis(500);
/// How long a stalled wait gets at most to take an answer that came meanwhile.
const STALL_GRACE: Duration = Duration::from_secs(2);

/// Refuses to send a request once its deadline has passed. Its timer would have ended the
/// exchange first, unless the whole process stalled (stopped, frozen by its hypervisor,
/// starved of CPU) while the connection was being made: then the connection comes ready in
/// the same wake-up as the timer, and the request would go out on it regardless. By then the
/// deliveries' leases, which the deadline keeps within, may have passed to another node that
/// has sent them: a node resumed after a stall sent its whole batch of attempts again. Said
/// as a fault of this node ([`AttemptError::Local`]: given back, no attempt counted); a
/// deadline only just passed is the timeout it would have been.
fn too_late_to_send(send_by: tokio::time::Instant) -> Result<(), AttemptError> {
    let late = tokio::time::Instant::now().saturating_duration_since(send_by);
    if late.is_zero() {
        Ok(())
    } else if late < STALLED {
        Err(AttemptError::Timeout)
    } else {
        Err(AttemptError::Local(format!(
            "this process did not run for a while (stopped, or starved of CPU) while it \
             connected, and the attempt's deadline passed {} ms before its request could go \
             out: not sent, as its deliveries' leases may be another node's by now",
            late.as_millis()
        )))
    }
}

/// A request's deadline, which a stall of the process may move once (see `by_deadline`).
struct Deadline {
    at: tokio::time::Instant,
    moved: bool,
}

impl Deadline {
    fn new(timeout: Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + timeout,
            moved: false,
        }
    }
}

/// Awaits `fut` until the deadline. After a stall every timer fires at once, often before the
/// connection's task has read the answer that came meanwhile and is waiting in the socket: the
/// attempt would be a timeout the endpoint did not cause (and, repeated, open its circuit). A
/// timer that fires `STALLED` late moves the deadline to give `fut` up to as long again
/// (`STALL_GRACE` at most) to finish; once per request, so that an endpoint dripping its body
/// cannot be given grace after grace.
///
/// `fut` comes pinned where its caller keeps it: moved in here, a large future (an exchange,
/// with its connection's handshake) would be stored twice in this one's state, and copied
/// with it into every attempt's box (a tenth of an attempt's instructions).
async fn by_deadline<F: Future>(
    deadline: &mut Deadline,
    mut fut: std::pin::Pin<&mut F>,
) -> Result<F::Output, Elapsed> {
    match timeout_at(deadline.at, fut.as_mut()).await {
        Ok(done) => Ok(done),
        Err(elapsed) => {
            let now = tokio::time::Instant::now();
            let late = now.saturating_duration_since(deadline.at);
            if late < STALLED || deadline.moved {
                return Err(elapsed);
            }
            deadline.moved = true;
            deadline.at = now + late.min(STALL_GRACE);
            timeout_at(deadline.at, fut).await
        }
    }
}

/// [`by_deadline`], asking `on_slow` whether to go on if `fut` is not done by the slow mark
/// ([`SLOW_ANSWER`], when the deadline is later): `None` when it says no. With one timer when
/// `fut` is done in time: it fires at the mark first. A mark passed during a stall of the whole
/// process (its timer `STALLED` late) gives nothing up: the answer may be waiting unread.
async fn past_slow_mark<F: Future>(
    deadline: &mut Deadline,
    mut fut: std::pin::Pin<&mut F>,
    on_slow: impl FnOnce() -> bool,
) -> Option<Result<F::Output, Elapsed>> {
    let slow_at = tokio::time::Instant::now() + SLOW_ANSWER;
    if slow_at < deadline.at {
        match timeout_at(slow_at, fut.as_mut()).await {
            Ok(done) => return Some(Ok(done)),
            Err(_) => {
                let late = tokio::time::Instant::now().saturating_duration_since(slow_at);
                if !on_slow() && late < STALLED {
                    return None;
                }
            }
        }
    }
    Some(by_deadline(deadline, fut).await)
}

/// `Retry-After` in seconds, given as seconds or as an HTTP date in any of its three forms
/// (RFC 9110 §10.2.3, §5.6.7). A number too large to hold is as long as can be: the retry
/// schedule caps it, as it caps any long one.
fn parse_retry_after(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        return Some(raw.parse::<u64>().unwrap_or(u64::MAX));
    }
    let at = httpdate::parse_http_date(raw).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .map_or(0, |ahead| ahead.as_secs()),
    )
}

fn failed(
    error: AttemptError,
    status: Option<u16>,
    started: Instant,
    body: String,
    retry_after: Option<u64>,
) -> AttemptOutcome {
    AttemptOutcome::failed(error, status, elapsed_ms(started), body, retry_after)
}

fn elapsed_ms(started: Instant) -> u32 {
    started.elapsed().as_millis().min(u32::MAX as u128) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[test]
    fn profile_header_names_are_taken_as_they_are_or_checked() {
        for name in ["webhook-id", "content-type", "x-opal-signature", "ce-id"] {
            assert_eq!(
                profile_header_name(name).unwrap(),
                HeaderName::try_from(name).unwrap()
            );
        }
        assert_eq!(profile_header_name("X-Upper").unwrap(), "x-upper");
        assert!(profile_header_name("no spaces").is_err());
        assert!(profile_header_name("").is_err());
    }

    /// What this node ran out of is not the endpoint's failure; a host that does not take the
    /// connection is a connection failure, not a late answer.
    #[test]
    fn local_failures_and_connect_timeouts_are_told_apart() {
        #[derive(Debug)]
        struct Wrapper(std::io::Error);
        impl std::fmt::Display for Wrapper {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let emfile = Wrapper(std::io::Error::from_raw_os_error(24));
        for stage in [Stage::Connect, Stage::Exchange] {
            assert!(matches!(
                classify(&emfile, stage),
                AttemptError::Local(m) if m.contains("open-file limit")
            ));
        }
        let late = Wrapper(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(
            classify(&late, Stage::Connect),
            AttemptError::Connect(m) if m.contains("no connection within 10 s")
        ));
        assert_eq!(classify(&late, Stage::Exchange), AttemptError::Timeout);
    }

    fn loopback_client() -> HttpClient {
        HttpClient::new(AddressPolicy::parse(&["127.0.0.0/8".into()]).unwrap()).unwrap()
    }

    fn request(body: &str) -> OutgoingRequest {
        OutgoingRequest {
            body: body.as_bytes().to_vec(),
            headers: vec![("content-type", "application/json".into())],
            title_case_headers: false,
        }
    }

    /// A server on loopback that reads one request (up to its body, or only its first bytes
    /// if it is not HTTP) and answers `answer` (or nothing, if `None`), handing back what it
    /// read.
    async fn one_shot(answer: Option<&'static str>) -> (String, tokio::task::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut read = Vec::new();
            let mut buf = [0u8; 4096];
            let complete = |read: &[u8]| {
                !read.is_empty() && (!read.starts_with(b"POST") || read.ends_with(b"}"))
            };
            while !complete(&read) {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => read.extend_from_slice(&buf[..n]),
                }
            }
            match answer {
                Some(answer) => socket.write_all(answer.as_bytes()).await.unwrap(),
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
            String::from_utf8_lossy(&read).into_owned()
        });
        (format!("127.0.0.1:{}", addr.port()), seen)
    }

    /// A server on loopback that reads one request, then writes `head` again and again until
    /// the connection is closed (or a million times); hands back how many it wrote.
    async fn streaming_heads(head: &'static str) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let mut written = 0;
            while written < 1_000_000 && socket.write_all(head.as_bytes()).await.is_ok() {
                written += 1;
            }
            written
        });
        (format!("127.0.0.1:{}", addr.port()), written)
    }

    /// hyper passes over informational answers without end: an endpoint streaming them is cut
    /// off after a few, its connection closed, not read until the timeout. One or two (Early
    /// Hints) before the answer are fine.
    #[tokio::test]
    async fn an_endless_stream_of_informational_answers_is_cut_off() {
        let send_to = |addr: String, within: u64| async move {
            loopback_client()
                .send(
                    &format!("http://{addr}/hook"),
                    request("{}"),
                    &[],
                    Duration::from_secs(within),
                )
                .await
        };
        let cut_off = |outcome: &AttemptOutcome| matches!(&outcome.error, Some(AttemptError::Request(m)) if m.contains("informational"));
        let (addr, written) = streaming_heads("HTTP/1.1 102 Processing\r\n\r\n").await;
        let outcome = send_to(addr, 20).await;
        assert!(cut_off(&outcome), "{outcome:?}");
        let written = tokio::time::timeout(Duration::from_secs(10), written)
            .await
            .expect("the connection is closed")
            .unwrap();
        assert!(written < 1_000_000, "{written} heads written");

        let (addr, _seen) = one_shot(Some(
            "HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ))
        .await;
        let outcome = send_to(addr, 5).await;
        assert_eq!(outcome.status, Some(204), "{outcome:?}");

        // Too many before the answer, all in one write (so often in one read): refused every
        // time, not only when the answer comes in a later read.
        let heads: &'static str = Box::leak(
            ("HTTP/1.1 100 Continue\r\n\r\n".repeat(40) + "HTTP/1.1 204 No Content\r\n\r\n")
                .into_boxed_str(),
        );
        for _ in 0..8 {
            let (addr, _seen) = one_shot(Some(heads)).await;
            let outcome = send_to(addr, 5).await;
            assert!(cut_off(&outcome), "{outcome:?}");
        }
    }

    /// A process stalled past an attempt's deadline (suspended, frozen by its hypervisor) finds
    /// the endpoint's answer waiting when it resumes: the attempt is that answer, not a timeout
    /// the endpoint did not cause. The server runs on a thread of its own, so it answers during
    /// the stall; the stall blocks the client's only runtime thread.
    #[test]
    fn an_answer_that_came_while_the_process_stalled_is_taken() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf);
            std::thread::sleep(Duration::from_millis(100));
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = runtime.block_on(async move {
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                // The stall: nothing on this runtime runs for two seconds.
                std::thread::sleep(Duration::from_millis(2000));
            });
            loopback_client()
                .send(
                    &format!("http://{addr}/hook"),
                    request("{}"),
                    &[],
                    Duration::from_millis(1000),
                )
                .await
        });
        server.join().unwrap();
        assert_eq!(outcome.status, Some(200), "{outcome:?}");
        assert!(outcome.is_success(), "{outcome:?}");
    }

    /// A stall moves a request's deadline once: a second late timer (an endpoint dripping its
    /// body after the first grace) ends it at once. The stalls block the test's only runtime
    /// thread; the bounds are loose, one from below and one from above.
    #[tokio::test]
    async fn a_stall_moves_the_deadline_once() {
        let stall = || std::thread::sleep(Duration::from_millis(800));
        let mut deadline = Deadline::new(Duration::from_millis(100));
        stall();
        let started = tokio::time::Instant::now();
        assert!(
            by_deadline(&mut deadline, std::pin::pin!(std::future::pending::<()>()))
                .await
                .is_err()
        );
        assert!(
            started.elapsed() >= Duration::from_millis(600),
            "waited the grace"
        );
        stall();
        let started = tokio::time::Instant::now();
        assert!(
            by_deadline(&mut deadline, std::pin::pin!(std::future::pending::<()>()))
                .await
                .is_err()
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "no second grace"
        );
    }

    /// Targets are remembered per URL: a refused URL stays refused on every attempt.
    #[tokio::test]
    async fn a_remembered_refusal_refuses_again() {
        let client = HttpClient::new(AddressPolicy::default()).unwrap();
        for _ in 0..2 {
            let outcome = client
                .send(
                    "http://127.0.0.1:9/hook",
                    request("{}"),
                    &[],
                    Duration::from_secs(5),
                )
                .await;
            assert!(
                matches!(outcome.error, Some(AttemptError::Blocked(_))),
                "{outcome:?}"
            );
            let outcome = client
                .send("not a url", request("{}"), &[], Duration::from_secs(5))
                .await;
            assert!(
                matches!(outcome.error, Some(AttemptError::Blocked(_))),
                "{outcome:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_delivery_carries_its_headers_and_keeps_the_answer() {
        let (addr, seen) = one_shot(Some("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
        let extra = [("x-tenant".to_owned(), "acme".to_owned())];
        let outcome = loopback_client()
            .send(
                &format!("http://{addr}/hook"),
                request("{}"),
                &extra,
                Duration::from_secs(5),
            )
            .await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(
            (outcome.status, outcome.response_body.as_str()),
            (Some(200), "ok")
        );
        let head = seen.await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with("post /hook http/1.1\r\n"), "{head}");
        for line in [
            &format!("host: {addr}"),
            "x-tenant: acme",
            "content-type: application/json",
            "content-length: 2",
            &format!("user-agent: {}", USER_AGENT.to_ascii_lowercase()),
        ] {
            assert!(head.contains(line), "{line} missing from {head}");
        }
    }

    /// Header names go out as the profile's product writes them: in Title-Case for Opal's and
    /// Optare's schemes (a receiver handed them as sent looks up `X-Opal-Signature`), in lower
    /// case otherwise, each on connections of its own to the same host (a kept-alive
    /// connection of one case is not used for the other).
    #[tokio::test]
    async fn header_names_go_out_in_the_case_asked_for() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let server = tokio::spawn({
            let (heads, connections) = (heads.clone(), connections.clone());
            async move {
                loop {
                    let (mut socket, _) = listener.accept().await.unwrap();
                    connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let heads = heads.clone();
                    tokio::spawn(async move {
                        let (mut read, mut buf) = (Vec::new(), [0u8; 4096]);
                        while let Ok(n @ 1..) = socket.read(&mut buf).await {
                            read.extend_from_slice(&buf[..n]);
                            if read.ends_with(b"}") {
                                let head = String::from_utf8_lossy(&read).into_owned();
                                heads.lock().unwrap().push(head);
                                read.clear();
                                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                                socket.write_all(ok).await.unwrap();
                            }
                        }
                    });
                }
            }
        });
        let client = loopback_client();
        let cases = [true, false, true, false];
        for title_case_headers in cases {
            let mut signed = request("{}");
            signed.headers.push(("x-opal-signature", "abc".into()));
            signed.title_case_headers = title_case_headers;
            let outcome = client.send(&url, signed, &[], Duration::from_secs(5)).await;
            assert!(outcome.is_success(), "{outcome:?}");
        }
        server.abort();
        let heads = heads.lock().unwrap().clone();
        assert_eq!(heads.len(), cases.len());
        for (head, title) in heads.iter().zip(cases) {
            let lines = if title {
                [
                    "X-Opal-Signature: abc",
                    "Content-Type: application/json",
                    "User-Agent: ",
                ]
            } else {
                [
                    "x-opal-signature: abc",
                    "content-type: application/json",
                    "user-agent: ",
                ]
            };
            for line in lines {
                assert!(head.contains(line), "{line} missing from {head}");
            }
        }
        // One kept-alive connection for each case.
        assert_eq!(connections.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    /// A server on loopback that reads one request's first bytes, writes `head` and holds the
    /// connection open for five seconds.
    async fn answer_then_hold(head: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            socket.write_all(head.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        format!("http://127.0.0.1:{}/hook", addr.port())
    }

    /// The status decides: a 2xx that came in time is a success though its body was still
    /// coming at the deadline (sent again, the event would reach the endpoint twice).
    #[tokio::test]
    async fn a_body_still_coming_at_the_deadline_keeps_the_status_verdict() {
        let client = loopback_client();
        let timeout = Duration::from_millis(300);
        let ok = answer_then_hold("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
        let outcome = client.send(&ok, request("{}"), &[], timeout).await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(
            (outcome.status, outcome.response_body.as_str()),
            (Some(200), "0123456789")
        );
        let failing = answer_then_hold("HTTP/1.1 500 Oops\r\ncontent-length: 100\r\n\r\nbro").await;
        let outcome = client.send(&failing, request("{}"), &[], timeout).await;
        assert!(
            matches!(outcome.error, Some(AttemptError::Status(500))),
            "{outcome:?}"
        );
        assert_eq!(outcome.response_body, "bro");
    }

    /// A body still coming a second after its status is given up, however long the timeout:
    /// the slot the request holds is another endpoint's to use.
    #[tokio::test]
    async fn a_body_is_waited_for_a_second_after_its_status_at_most() {
        let client = loopback_client();
        let ok = answer_then_hold("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
        let outcome = client
            .send(&ok, request("{}"), &[], Duration::from_secs(60))
            .await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(outcome.response_body, "0123456789");
        // The endpoint holds its connection for 5 s: without the limit the attempt ends then.
        assert!(
            outcome.duration_ms < 4_000,
            "ended after {} ms, not when the endpoint let go",
            outcome.duration_ms
        );
    }

    /// `on_slow` is called once the endpoint has taken `SLOW_ANSWER` without answering, and not
    /// for an answer in time; if it says `false`, the request is given up then.
    #[tokio::test]
    async fn a_slow_answer_is_noted_once_and_a_quick_one_not_at_all() {
        let client = loopback_client();
        let (quick, _) = one_shot(Some("HTTP/1.1 204 No Content\r\n\r\n")).await;
        let noted = std::cell::Cell::new(0);
        // Counts the notices and says to go on waiting.
        let noting = || {
            || {
                noted.set(noted.get() + 1);
                true
            }
        };
        let outcome = client
            .send_noting_slow(
                &format!("http://{quick}/hook"),
                request("{}"),
                &[],
                Duration::from_secs(5),
                noting(),
            )
            .await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(noted.get(), 0);
        let (hanging, _) = one_shot(None).await;
        let outcome = client
            .send_noting_slow(
                &format!("http://{hanging}/hook"),
                request("{}"),
                &[],
                SLOW_ANSWER + Duration::from_millis(300),
                noting(),
            )
            .await;
        assert!(
            matches!(outcome.error, Some(AttemptError::Timeout)),
            "{outcome:?}"
        );
        assert_eq!(noted.get(), 1);
        // Told to give up, it does so at once, not at the timeout.
        let (hanging, _) = one_shot(None).await;
        let started = Instant::now();
        let outcome = client
            .send_noting_slow(
                &format!("http://{hanging}/hook"),
                request("{}"),
                &[],
                Duration::from_secs(4),
                || false,
            )
            .await;
        assert!(
            matches!(outcome.error, Some(AttemptError::CutShort)),
            "{outcome:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Not when the mark is passed during a stall of the process (here a task blocking the
        // test's only runtime thread): the request runs to its timeout as before.
        let (hanging, _) = one_shot(None).await;
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            std::thread::sleep(SLOW_ANSWER + Duration::from_millis(800));
        });
        let outcome = client
            .send_noting_slow(
                &format!("http://{hanging}/hook"),
                request("{}"),
                &[],
                SLOW_ANSWER * 3,
                || false,
            )
            .await;
        assert!(
            matches!(outcome.error, Some(AttemptError::Timeout)),
            "{outcome:?}"
        );
    }

    /// A stall of the whole process while the connection is made (here a task blocking the
    /// test's only runtime thread) lets the connection come ready past the request's
    /// deadline: the request is not sent then, as the leases the deadline keeps within may be
    /// another node's (it went out, and was answered as a success).
    #[tokio::test]
    async fn no_request_goes_out_past_its_deadline_after_a_stall() {
        let client = loopback_client();
        let (endpoint, seen) = one_shot(Some("HTTP/1.1 204 No Content\r\n\r\n")).await;
        let timeout = Duration::from_millis(300);
        // Runs once the attempt waits for its connection, and holds the thread past the
        // deadline by more than `STALLED`.
        tokio::spawn(async move {
            std::thread::sleep(timeout + STALLED + Duration::from_millis(400));
        });
        let outcome = client
            .send(
                &format!("http://{endpoint}/hook"),
                request("{}"),
                &[],
                timeout,
            )
            .await;
        assert!(
            matches!(&outcome.error, Some(AttemptError::Local(why)) if why.contains("did not run for a while")),
            "{outcome:?}"
        );
        assert_eq!(seen.await.unwrap(), "", "nothing was sent");
    }

    /// The pool of `url`'s origin in `client`.
    fn origin_of(client: &HttpClient, url: &str) -> Arc<Origin> {
        client
            .targets
            .target(&client.policy, url, false)
            .unwrap()
            .origin
            .clone()
    }

    /// Waits up to five seconds for `done`, which another task makes true.
    async fn wait_until(done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Connections a test server accepted, and how many of them have ended.
    #[derive(Default)]
    struct Connections {
        accepted: AtomicUsize,
        ended: AtomicUsize,
    }

    /// A server on loopback that answers every request on a connection with `200 ok`, keeping
    /// the connection open unless `close_after_each` (then it closes it after answering,
    /// without saying so, as a server ending an idle connection does). Counts connections.
    async fn keep_alive_server(close_after_each: bool) -> (String, Arc<Connections>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(Connections::default());
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.accepted.fetch_add(1, Ordering::SeqCst);
                let ended = counted.clone();
                tokio::spawn(async move {
                    serve_connection(&mut socket, close_after_each).await;
                    ended.ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (
            format!("http://127.0.0.1:{}/hook", addr.port()),
            connections,
        )
    }

    /// Answers requests on `socket` until the client closes it (or after the first answer, if
    /// `close_after_each`).
    async fn serve_connection(socket: &mut tokio::net::TcpStream, close_after_each: bool) {
        let mut read = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // One request: its head, then as many bytes as its content-length says.
            let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read.extend_from_slice(&buf[..n]),
                }
                continue;
            };
            let head = String::from_utf8_lossy(&read[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse().unwrap());
            if read.len() < end + 4 + length {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => read.extend_from_slice(&buf[..n]),
                }
                continue;
            }
            read.drain(..end + 4 + length);
            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if socket.write_all(answer).await.is_err() || close_after_each {
                return;
            }
        }
    }

    #[tokio::test]
    async fn a_connection_is_kept_and_used_again() {
        let (url, connections) = keep_alive_server(false).await;
        let client = loopback_client();
        for _ in 0..5 {
            let outcome = client
                .send(&url, request("{}"), &[], Duration::from_secs(5))
                .await;
            assert!(outcome.is_success(), "{outcome:?}");
        }
        assert_eq!(connections.accepted.load(Ordering::SeqCst), 1);
        let origin = origin_of(&client, &url);
        assert_eq!(origin.idle(), 1);

        // Another path on the same origin shares its connections.
        let other = url.replace("/hook", "/other?x=1");
        let outcome = client
            .send(&other, request("{}"), &[], Duration::from_secs(5))
            .await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(connections.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_used_again() {
        let (url, connections) = keep_alive_server(true).await;
        let client = loopback_client();
        for attempt in 1..=3 {
            let outcome = client
                .send(&url, request("{}"), &[], Duration::from_secs(5))
                .await;
            assert!(outcome.is_success(), "attempt {attempt}: {outcome:?}");
            // The client sees the server's close before the next request.
            let origin = origin_of(&client, &url);
            wait_until(|| origin.idle() == 0).await;
            assert_eq!(origin.idle(), 0, "the closed connection still looks open");
        }
        assert_eq!(connections.accepted.load(Ordering::SeqCst), 3);
    }

    /// Idle connections are kept up to the client's total across origins, past which a
    /// connection is closed once its response is read: a fan-out to a thousand origins would
    /// otherwise keep dozens of descriptors each.
    #[tokio::test]
    async fn idle_connections_are_bounded_across_origins() {
        let client =
            HttpClient::keeping_idle(AddressPolicy::parse(&["127.0.0.0/8".into()]).unwrap(), 2)
                .unwrap();
        let mut servers = Vec::new();
        for _ in 0..4 {
            let (url, connections) = keep_alive_server(false).await;
            let outcome = client
                .send(&url, request("{}"), &[], Duration::from_secs(5))
                .await;
            assert!(outcome.is_success(), "{outcome:?}");
            servers.push((url, connections));
        }
        let kept: usize = servers
            .iter()
            .map(|(url, _)| origin_of(&client, url).idle())
            .sum();
        assert_eq!(kept, 2);
        assert_eq!(client.targets.idle.get(), 2);
        // The others were closed, and the servers saw it.
        wait_until(|| {
            servers
                .iter()
                .map(|(_, c)| c.ended.load(Ordering::SeqCst))
                .sum::<usize>()
                == 2
        })
        .await;
        // Reused, and given back, a kept connection stays counted once.
        let outcome = client
            .send(&servers[0].0, request("{}"), &[], Duration::from_secs(5))
            .await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert!(client.targets.idle.get() <= 2);
        client
            .targets
            .close_stale(Instant::now() + pool::IDLE_TIMEOUT);
        assert_eq!(client.targets.idle.get(), 0);
    }

    /// A full pool does not stay with the origins that filled it: one holding less than its
    /// share keeps its connection, and one holding more gives up its excess at its next
    /// request.
    #[tokio::test]
    async fn a_full_pool_is_shared_between_origins() {
        let client =
            HttpClient::keeping_idle(AddressPolicy::parse(&["127.0.0.0/8".into()]).unwrap(), 4)
                .unwrap();
        let (busy, _) = keep_alive_server(false).await;
        let send = || client.send(&busy, request("{}"), &[], Duration::from_secs(5));
        let (a, b, c, d) = tokio::join!(send(), send(), send(), send());
        for outcome in [a, b, c, d] {
            assert!(outcome.is_success(), "{outcome:?}");
        }
        assert_eq!(
            origin_of(&client, &busy).idle(),
            4,
            "the busy origin filled the pool"
        );

        let (quiet, _) = keep_alive_server(false).await;
        let outcome = client
            .send(&quiet, request("{}"), &[], Duration::from_secs(5))
            .await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(
            origin_of(&client, &quiet).idle(),
            1,
            "kept: under its share of two"
        );

        let outcome = client
            .send(&busy, request("{}"), &[], Duration::from_secs(5))
            .await;
        assert!(outcome.is_success(), "{outcome:?}");
        assert_eq!(origin_of(&client, &busy).idle(), 2, "down to its share");
        assert_eq!(client.targets.idle.get(), 3);
    }

    #[tokio::test]
    async fn idle_connections_are_closed_once_they_have_waited_too_long() {
        let (url, connections) = keep_alive_server(false).await;
        let client = loopback_client();
        let outcome = client
            .send(&url, request("{}"), &[], Duration::from_secs(5))
            .await;
        assert!(outcome.is_success(), "{outcome:?}");
        let origin = origin_of(&client, &url);
        client.targets.close_stale(Instant::now());
        assert_eq!(origin.idle(), 1, "a connection idle for a moment stays");

        client
            .targets
            .close_stale(Instant::now() + pool::IDLE_TIMEOUT);
        assert_eq!(origin.idle(), 0);
        wait_until(|| connections.ended.load(Ordering::SeqCst) == 1).await;
        assert_eq!(
            connections.ended.load(Ordering::SeqCst),
            1,
            "the server saw the connection closed"
        );
    }

    #[tokio::test]
    async fn refused_late_and_not_tls_are_told_apart() {
        let client = loopback_client();
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = format!("http://127.0.0.1:{port}/");
        let refused = client
            .send(&url, request("{}"), &[], Duration::from_secs(5))
            .await;
        assert_eq!(
            refused.error.as_ref().map(|e| e.code()),
            Some("connect"),
            "{refused:?}"
        );

        let (addr, _silent) = one_shot(None).await;
        let url = format!("http://{addr}/");
        let late = client
            .send(&url, request("{}"), &[], Duration::from_millis(300))
            .await;
        assert_eq!(
            late.error.as_ref().map(|e| e.code()),
            Some("timeout"),
            "{late:?}"
        );

        let (addr, _plain) = one_shot(Some("HTTP/1.1 200 OK\r\n\r\n")).await;
        let url = format!("https://{addr}/");
        let plain = client
            .send(&url, request("{}"), &[], Duration::from_secs(5))
            .await;
        assert_eq!(
            plain.error.as_ref().map(|e| e.code()),
            Some("tls"),
            "{plain:?}"
        );
    }

    #[tokio::test]
    async fn a_header_http_cannot_carry_fails_the_attempt_and_a_private_address_is_blocked() {
        let client = loopback_client();
        let bad = [("x-bad".to_owned(), "line\nbreak".to_owned())];
        let outcome = client
            .send(
                "http://127.0.0.1:9/",
                request("{}"),
                &bad,
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(
            outcome.error.as_ref().map(|e| e.code()),
            Some("request"),
            "{outcome:?}"
        );

        let strict = HttpClient::new(AddressPolicy::default()).unwrap();
        let outcome = strict
            .send(
                "http://127.0.0.1:9/",
                request("{}"),
                &[],
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(
            outcome.error.as_ref().map(|e| e.code()),
            Some("blocked"),
            "{outcome:?}"
        );
    }

    /// A certificate refused is told in words its endpoint's owner can act on, however deep
    /// in the transport's errors rustls's verdict sits.
    #[test]
    fn a_refused_certificate_says_what_to_do() {
        use rustls::CertificateError as Cert;
        let refused = |bad: Cert| {
            let io = std::io::Error::other(rustls::Error::InvalidCertificate(bad));
            classify(&io, Stage::Connect).message()
        };
        for (bad, said) in [
            (
                Cert::UnknownIssuer,
                "not signed by an authority Herald trusts",
            ),
            (Cert::Expired, "has expired: renew it"),
            (
                Cert::NotValidForName,
                "is not for the host in the webhook's URL",
            ),
        ] {
            let message = refused(bad);
            assert!(
                message.starts_with("TLS failed: the endpoint's certificate "),
                "{message}"
            );
            assert!(message.contains(said), "{message}");
        }
        // A self-signed certificate made as a CA, as the verifier names it.
        #[derive(Debug)]
        struct CaUsedAsEndEntity;
        impl std::fmt::Display for CaUsedAsEndEntity {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("CaUsedAsEndEntity")
            }
        }
        impl std::error::Error for CaUsedAsEndEntity {}
        let other = Cert::Other(rustls::OtherError(std::sync::Arc::new(CaUsedAsEndEntity)));
        assert!(refused(other).contains("is a CA's, not a server's"));
        // Others keep rustls's own words.
        assert!(refused(Cert::BadEncoding).contains("invalid peer certificate"));
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_an_http_date() {
        assert_eq!(parse_retry_after(" 120 "), Some(120));
        let in_a_minute = (chrono::Utc::now() + chrono::Duration::seconds(60))
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let secs = parse_retry_after(&in_a_minute).unwrap();
        assert!((58..=61).contains(&secs), "{secs}");
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(0),
            "a past date means now"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("-5"), None);
        assert_eq!(
            parse_retry_after("99999999999999999999999"),
            Some(u64::MAX),
            "too long to hold: as long as can be, which the schedule caps"
        );
        // The two older forms of an HTTP date, which a recipient must accept too.
        let ahead = std::time::SystemTime::now() + Duration::from_secs(120);
        let imf = httpdate::fmt_http_date(ahead);
        let at = chrono::DateTime::parse_from_rfc2822(&imf).unwrap();
        for older in [
            at.format("%A, %d-%b-%y %H:%M:%S GMT").to_string(),
            at.format("%a %b %e %H:%M:%S %Y").to_string(),
        ] {
            let secs = parse_retry_after(&older).unwrap_or(0);
            assert!((118..=121).contains(&secs), "{older}: {secs}");
        }
    }
}
