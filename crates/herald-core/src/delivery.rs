//! Deliveries (one event for one webhook) and attempts (one HTTP request of a delivery).
//! A failed attempt is data, not an error: its [`AttemptError`] is stored with a stable code.

use serde::Serialize;

use crate::{AttemptId, DeliveryId, Invalid, OrgId, Timestamp, WebhookId};

/// How many bytes of a response body an attempt keeps.
pub const RESPONSE_BODY_KEEP: usize = 1024;

/// A delivery's `last_error` when it failed without another attempt: its endpoint's circuit
/// stayed open past the end of its retry schedule.
pub const CIRCUIT_OPEN: &str = "circuit_open";

/// What a delivery's `last_error` means and what to do, for a code that no attempt explains
/// (an attempt's own error has its message).
pub fn explain_last_error(code: &str) -> Option<&'static str> {
    (code == CIRCUIT_OPEN).then_some(
        "Herald stopped sending to this endpoint after its last requests failed (its circuit \
         is open), and the delivery's retry schedule ran out while it waited. Fix the endpoint, \
         send a test event (it goes through at once and closes the circuit), then resend or \
         recover the delivery.",
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting for its next attempt (or being attempted).
    Pending,
    Succeeded,
    /// Every attempt of its schedule failed.
    Failed,
    /// Its webhook was deleted before it could succeed.
    Cancelled,
    /// Never attempted, for the reason in `last_error` (e.g. its WebSub channel is not verified).
    Skipped,
}

/// Why a delivery in `state` (as stored), of a webhook `active` or not and `deleted` or not,
/// `leased` by a node or not, may not be sent now (`None`: it may). A finished delivery is sent
/// again; a pending one that waits for its next attempt has that attempt now; a pending one
/// that a node holds is already queued or being attempted. Both stores check it under the
/// row's lock.
pub fn resend_refusal(
    state: &str,
    active: bool,
    deleted: bool,
    leased: bool,
) -> Option<&'static str> {
    if deleted {
        Some("the delivery's webhook was deleted; it cannot be resent")
    } else if !active {
        Some("the delivery's webhook is disabled; activate it first")
    } else if state == DeliveryState::Pending.as_str() && leased {
        Some(
            "an attempt of the delivery is already queued or under way; its outcome shows in \
             its attempts once it is made (if the node holding it stopped, it is free again \
             when that node's lease ends)",
        )
    } else {
        None
    }
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Skipped => "skipped",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        match raw {
            "pending" => Ok(Self::Pending),
            "succeeded" => Ok(Self::Succeeded),
            "failed" => Ok(Self::Failed),
            "cancelled" => Ok(Self::Cancelled),
            "skipped" => Ok(Self::Skipped),
            _ => Err(Invalid::new(
                "state",
                format!(
                    "'{}' is not a delivery state{}; use pending, succeeded, failed, cancelled or skipped",
                    crate::truncate_for_message(raw),
                    crate::suggest::did_you_mean(crate::suggest::closest(
                        raw,
                        ["pending", "succeeded", "failed", "cancelled", "skipped"]
                    ))
                ),
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: DeliveryId,
    pub org_id: OrgId,
    pub webhook_id: WebhookId,
    pub event_id: String,
    pub event_type: String,
    pub state: DeliveryState,
    pub attempt_count: u32,
    pub next_attempt_at: Option<Timestamp>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// One recorded HTTP request of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Attempt {
    pub id: AttemptId,
    pub delivery_id: DeliveryId,
    /// 1 for the first attempt.
    #[schema(minimum = 1)]
    pub number: u32,
    pub started_at: Timestamp,
    pub duration_ms: u32,
    pub status: Option<u16>,
    /// A stable code when the attempt failed (`timeout`, `connect`, `http_status`…).
    pub error: Option<String>,
    pub error_message: Option<String>,
    /// The first KiB of the response body.
    pub response_body: String,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    Timeout,
    Dns(String),
    Connect(String),
    Tls(String),
    /// The endpoint answered, but not with a 2xx.
    Status(u16),
    /// The address is not one Herald may reach.
    Blocked(String),
    /// Anything else that kept the request from completing.
    Request(String),
    /// This node could not send it (it ran out of file descriptors): nothing about the
    /// endpoint, so the attempt is not counted against it.
    Local(String),
    /// Unanswered after a second while this node already had as many slow requests as it
    /// allows: given up then, so that endpoints that hang do not hold up the others' requests
    /// until their timeout. Stored as a timeout and retried on schedule; the circuit breaker
    /// and the endpoint's concurrency limit hear it as a timeout (they protect this node too),
    /// the failing streak that disables a webhook does not.
    CutShort,
    /// The request was out when Herald stopped and the stop's grace ran out: the endpoint may
    /// have received it. Sent again (at the next start, or at once by another node) without
    /// spending a retry.
    Interrupted,
}

impl AttemptError {
    /// A stable code, stored and shown in the API.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Timeout | Self::CutShort => "timeout",
            Self::Dns(_) => "dns",
            Self::Connect(_) => "connect",
            Self::Tls(_) => "tls",
            Self::Status(s) if (300..400).contains(s) => "redirect",
            Self::Status(_) => "http_status",
            Self::Blocked(_) => "blocked",
            Self::Request(_) => "request",
            Self::Local(_) => "local",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::Timeout => "the endpoint did not answer within the timeout".to_owned(),
            Self::CutShort => "the endpoint did not answer within 1 s while this node was already waiting on as many slow requests as it allows (HERALD_MAX_REQUESTS_IN_FLIGHT): given up early so that other endpoints are not held up; retried on schedule".to_owned(),
            Self::Dns(m) => format!("could not resolve the host: {m}"),
            Self::Connect(m) => format!("could not connect: {m}"),
            Self::Tls(m) => format!("TLS failed: {m}"),
            Self::Status(s) if (300..400).contains(s) => {
                format!(
                    "the endpoint answered {s}; redirects are not followed, register the final URL"
                )
            }
            Self::Status(s) => format!("the endpoint answered {s}"),
            Self::Blocked(m) => format!("the address is not allowed: {m}"),
            Self::Request(m) => format!("the request failed: {m}"),
            Self::Local(m) => format!("Herald could not send it: {m}"),
            Self::Interrupted => "Herald stopped before the endpoint answered (the stop's grace, HERALD_STOP_GRACE_SECONDS, ran out); the endpoint may have received it, and it is sent again without spending a retry".to_owned(),
        }
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub status: Option<u16>,
    pub duration_ms: u32,
    pub response_body: String,
    pub error: Option<AttemptError>,
    /// A `Retry-After` (in seconds) sent with a 429 or 503.
    pub retry_after_secs: Option<u64>,
}

impl AttemptOutcome {
    pub fn succeeded(status: u16, duration_ms: u32, response_body: String) -> Self {
        Self {
            status: Some(status),
            duration_ms,
            response_body,
            error: None,
            retry_after_secs: None,
        }
    }

    pub fn failed(
        error: AttemptError,
        status: Option<u16>,
        duration_ms: u32,
        response_body: String,
        retry_after_secs: Option<u64>,
    ) -> Self {
        Self {
            status,
            duration_ms,
            response_body,
            error: Some(error),
            retry_after_secs,
        }
    }

    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }

    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after_secs
    }
}

/// Keeps at most [`RESPONSE_BODY_KEEP`] bytes of a response body, as text: each invalid UTF-8
/// sequence becomes U+FFFD (within the same bytes), and a character the cut splits is left out.
/// A NUL byte becomes U+FFFD too: PostgreSQL cannot store it in text, and an attempt that
/// cannot be recorded would be sent again and again.
pub fn keep_response_prefix(body: &[u8]) -> String {
    let truncated = body.len() > RESPONSE_BODY_KEEP;
    let cut = &body[..body.len().min(RESPONSE_BODY_KEEP)];
    let mut kept = String::with_capacity(cut.len());
    let mut chunks = cut.utf8_chunks().peekable();
    while let Some(chunk) = chunks.next() {
        for c in chunk.valid().chars() {
            if !push_within(&mut kept, if c == '\0' { '\u{fffd}' } else { c }) {
                return kept;
            }
        }
        let invalid = chunk.invalid();
        let split_by_cut = truncated && chunks.peek().is_none() && is_unfinished(invalid);
        if !invalid.is_empty() && !split_by_cut && !push_within(&mut kept, '\u{fffd}') {
            return kept;
        }
    }
    kept
}

/// Adds `c` if the kept text stays within [`RESPONSE_BODY_KEEP`] bytes; `false` if it is full.
fn push_within(kept: &mut String, c: char) -> bool {
    let fits = kept.len() + c.len_utf8() <= RESPONSE_BODY_KEEP;
    if fits {
        kept.push(c);
    }
    fits
}

/// Whether `bytes` begin a UTF-8 character that the input ended before finishing.
fn is_unfinished(bytes: &[u8]) -> bool {
    matches!(std::str::from_utf8(bytes), Err(e) if e.error_len().is_none())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_state_gets_the_one_it_most_likely_meant() {
        let refused = |raw| DeliveryState::parse(raw).unwrap_err().message;
        assert_eq!(
            refused("faild"),
            "'faild' is not a delivery state (did you mean 'failed'?); use pending, succeeded, \
             failed, cancelled or skipped"
        );
        assert!(refused("Pending").contains("(did you mean 'pending'?)"));
        assert!(!refused("gone").contains("did you mean"));
    }

    #[test]
    fn a_redirect_is_reported_as_such() {
        assert_eq!(AttemptError::Status(301).code(), "redirect");
        assert_eq!(AttemptError::Status(500).code(), "http_status");
    }

    #[test]
    fn only_the_first_kib_of_a_response_is_kept() {
        let body = "é".repeat(1000);
        let kept = keep_response_prefix(body.as_bytes());
        assert!(kept.len() <= RESPONSE_BODY_KEEP);
        assert!(kept.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_response_that_is_not_utf8_is_kept_within_the_kib_and_not_emptied() {
        let keep = |body: &[u8]| keep_response_prefix(body);
        // Binary: a replacement character for each invalid byte, as long as they fit.
        let binary = keep(&b"\xff\xfe".repeat(1000));
        assert_eq!(binary, "\u{fffd}".repeat(RESPONSE_BODY_KEEP / 3));
        assert_eq!(keep(b"ok\xff"), "ok\u{fffd}");
        for body in [b"a\xff".repeat(600), [&b"ok"[..], &[0xff; 2000]].concat()] {
            let kept = keep(&body);
            assert!(
                kept.len() <= RESPONSE_BODY_KEEP,
                "{} bytes kept",
                kept.len()
            );
            assert!(
                kept.len() > RESPONSE_BODY_KEEP - 3,
                "{} bytes kept",
                kept.len()
            );
        }
        // A three-byte character split by the cut is left out, not replaced.
        let euros = keep("€".repeat(1000).as_bytes());
        assert_eq!(euros, "€".repeat(RESPONSE_BODY_KEEP / 3));
        // An unfinished character at the very end of a body that was not cut is invalid.
        assert_eq!(keep(b"ok\xe2\x82"), "ok\u{fffd}");
    }

    #[test]
    fn a_nul_in_a_response_is_kept_as_a_replacement_character() {
        assert_eq!(keep_response_prefix(b"ok\0done"), "ok\u{fffd}done");
    }
}
