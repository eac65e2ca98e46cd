//! The outbound HTTP client: keep-alive pooling, no redirects, a timeout over the whole exchange,
//! and at most a KiB of each response kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_core::address_policy::AddressPolicy;

use herald_core::delivery::{
    AttemptError, AttemptOutcome, RESPONSE_BODY_KEEP, keep_response_prefix,
};
use herald_core::profile::OutgoingRequest;

use crate::guard::{Blocked, GuardedResolver, check_parsed_url, check_url};

/// Installs the TLS crypto provider (ring) for this process, once. reqwest is built without a
/// default one; every client made in the process needs it first.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Sends rendered requests. Clone it freely: clones share one connection pool.
#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    policy: Arc<AddressPolicy>,
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

impl HttpClient {
    /// A client that reaches only the addresses `policy` permits.
    pub fn new(policy: AddressPolicy) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        install_tls_provider();
        let inner = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                policy: policy.clone(),
            }))
            .build()?;
        Ok(Self { inner, policy })
    }

    /// POSTs `request` to `url` with `extra_headers`, and says how it went.
    pub async fn send(
        &self,
        url: &str,
        request: OutgoingRequest,
        extra_headers: &[(String, String)],
        timeout: Duration,
    ) -> AttemptOutcome {
        let started = Instant::now();
        let checked = url::Url::parse(url)
            .map_err(|_| Blocked("the URL does not parse".into()))
            .and_then(|parsed| check_parsed_url(&self.policy, &parsed).map(|()| parsed));
        let parsed = match checked {
            Ok(parsed) => parsed,
            Err(blocked) => {
                return failed(
                    AttemptError::Blocked(blocked.0),
                    None,
                    started,
                    String::new(),
                    None,
                );
            }
        };
        let mut builder = self.inner.post(parsed).timeout(timeout);
        for (name, value) in extra_headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let result = builder.body(request.body).send().await;
        let mut response = match result {
            Ok(r) => r,
            Err(e) => return failed(classify(&e), None, started, String::new(), None),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        // Read only what is kept; the rest of the body is not our business.
        let mut body = Vec::new();
        while body.len() < RESPONSE_BODY_KEEP {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) if e.is_timeout() => {
                    return failed(
                        AttemptError::Timeout,
                        Some(status),
                        started,
                        keep_response_prefix(&body),
                        None,
                    );
                }
                // A body cut short after a complete status line does not change the verdict.
                Err(_) => break,
            }
        }
        let kept = keep_response_prefix(&body);
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
}

impl HttpClient {
    /// GETs `url` and returns the status and at most `max_body` bytes of the body as text
    /// (WebSub verification of intent).
    pub async fn get_text(
        &self,
        url: &str,
        timeout: Duration,
        max_body: usize,
    ) -> Result<(u16, String), AttemptError> {
        check_url(&self.policy, url).map_err(|b| AttemptError::Blocked(b.0))?;
        let mut response = self
            .inner
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| classify(&e))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while body.len() < max_body {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Err(classify(&e)),
            }
        }
        body.truncate(max_body);
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// `Retry-After` in seconds, given as seconds or as an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    if let Ok(secs) = raw.parse::<u64>() {
        return Some(secs);
    }
    let at = chrono::DateTime::parse_from_rfc2822(raw).ok()?;
    Some((at.timestamp() - chrono::Utc::now().timestamp()).max(0) as u64)
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

/// Sorts a transport error by walking its cause chain.
fn classify(e: &reqwest::Error) -> AttemptError {
    if e.is_timeout() {
        return AttemptError::Timeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(blocked) = err.downcast_ref::<Blocked>() {
            return AttemptError::Blocked(blocked.0.clone());
        }
        source = err.source();
    }
    let chain = error_chain(e);
    let lower = chain.to_ascii_lowercase();
    if lower.contains("dns error") || lower.contains("failed to lookup address") {
        AttemptError::Dns(chain)
    } else if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake")
    {
        AttemptError::Tls(chain)
    } else if e.is_connect() {
        AttemptError::Connect(chain)
    } else {
        AttemptError::Request(chain)
    }
}

/// "outer: inner: innermost", without repeating the same text twice.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = err.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::parse_retry_after;

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
    }
}
