//! Webhooks: where to send, what they want, how to sign, and their per-webhook overrides.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::profile::{ProfileName, SignatureScheme};
use crate::retry::RetrySchedule;
use crate::subscription::Verification;
use crate::{Invalid, OrgId, Timestamp, WebhookId};

/// How long the previous secret keeps signing after a rotation, so receivers can switch over.
pub const ROTATION_OVERLAP_MS: i64 = 24 * 60 * 60 * 1000;

#[derive(Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Webhook {
    pub id: WebhookId,
    pub org_id: OrgId,
    pub name: String,
    pub description: Option<String>,
    pub url: WebhookUrl,
    pub events: Vec<String>,
    pub channels: Vec<String>,
    pub profile: ProfileName,
    /// Overrides the profile's signature scheme.
    pub signature: Option<SignatureScheme>,
    pub options: WebhookOptions,
    /// Whether the endpoint must verify its intent (WebSub) before it gets events.
    pub verification: Verification,
    #[serde(skip)]
    pub secret: String,
    #[serde(skip)]
    pub previous_secret: Option<String>,
    /// Until when the previous secret also signs (24 hours after a rotation).
    pub previous_secret_expires_at: Option<Timestamp>,
    pub active: bool,
    pub headers: BTreeMap<String, String>,
    pub timeout_ms: Option<u32>,
    pub retry_schedule: Option<RetrySchedule>,
    /// At most this many requests per second to this webhook.
    pub rate_limit_per_second: Option<u32>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// Since when every attempt has failed (none since it last succeeded).
    pub failing_since: Option<Timestamp>,
    /// Why Herald disabled it, if it did.
    pub disabled_reason: Option<String>,
}

/// Everything but the secrets and the custom headers' values (which often hold credentials), so
/// that a webhook logged or shown in a failed assertion gives none of them away.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("name", &self.name)
            .field("description", &self.description)
            // A query string may carry a token the receiver checks.
            .field("url", &redact_query(self.url.as_str()))
            .field("events", &self.events)
            .field("channels", &self.channels)
            .field("profile", &self.profile)
            .field("signature", &self.signature)
            .field("options", &self.options)
            .field("verification", &self.verification)
            .field("secret", &"[redacted]")
            .field(
                "previous_secret",
                &self.previous_secret.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "previous_secret_expires_at",
                &self.previous_secret_expires_at,
            )
            .field("active", &self.active)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("retry_schedule", &self.retry_schedule)
            .field("rate_limit_per_second", &self.rate_limit_per_second)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("failing_since", &self.failing_since)
            .field("disabled_reason", &self.disabled_reason)
            .finish()
    }
}

/// `url` with its query string, if any, replaced by `[redacted]`.
fn redact_query(url: &str) -> std::borrow::Cow<'_, str> {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?[redacted]").into(),
        None => url.into(),
    }
}

impl Webhook {
    /// Whether this webhook wants events of `type_name` (in `channel`): a type matches if the
    /// webhook names it, names `*`, or names its channel. Herald's operational events are sent
    /// only to webhooks that name them or the `operations` channel, never through `*`: a
    /// catch-all endpoint that fails must not be sent the news of its own failures.
    pub fn wants(&self, type_name: &str, channel: Option<&str>) -> bool {
        if crate::event_type::is_operational(type_name) {
            return self.events.iter().any(|e| e == type_name)
                || self
                    .channels
                    .iter()
                    .any(|c| c == crate::event_type::OPERATIONS_CHANNEL);
        }
        self.events.iter().any(|e| e == "*" || e == type_name)
            || channel.is_some_and(|c| self.channels.iter().any(|w| w == "*" || w == c))
    }

    /// The request timeout: the webhook's override, else its profile's default.
    pub fn effective_timeout_ms(&self) -> u32 {
        self.timeout_ms
            .unwrap_or_else(|| self.profile.default_timeout_ms())
    }

    /// The batch window, for a profile that batches.
    pub fn batch_window_ms(&self) -> Option<u32> {
        self.options
            .batch_window_ms
            .filter(|_| self.profile.batches_events())
    }

    /// The signature scheme: the webhook's override, else its profile's default.
    pub fn effective_signature(&self) -> SignatureScheme {
        self.signature
            .unwrap_or_else(|| self.profile.default_signature())
    }

    /// Whether a rotation's previous secret signs beside the new one: only Standard Webhooks'
    /// header carries two signatures; the other schemes sign with the current secret alone.
    pub fn rotation_overlaps(&self) -> bool {
        self.effective_signature() == SignatureScheme::Standard
    }

    /// The retry schedule: the webhook's override, else its profile's default.
    /// How long the retry schedule puts off the first attempt, counted from ingest (0: at once).
    /// Read on every delivery made, so it does not build the profile's default schedule: every
    /// default starts at once (a test holds the profiles to that).
    pub fn first_delay_secs(&self) -> u32 {
        self.retry_schedule
            .as_ref()
            .and_then(|s| s.delays().first().copied())
            .unwrap_or(0)
    }

    pub fn effective_retry_schedule(&self) -> RetrySchedule {
        self.retry_schedule
            .clone()
            .unwrap_or_else(|| self.profile.default_retry_schedule())
    }

    /// The secrets that sign right now: the current one, and the previous one while it overlaps.
    pub fn signing_secrets(&self, now: Timestamp) -> Vec<&str> {
        let mut secrets = vec![self.secret.as_str()];
        if let (Some(prev), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at)
            && now < until
        {
            secrets.push(prev.as_str());
        }
        secrets
    }
}

/// Profile-specific settings of a webhook.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookOptions {
    /// CloudEvents content mode (`structured`, the default, or `binary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_mode: Option<ContentMode>,
    /// Opal: events that arrive within this many milliseconds of the first share one body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_window_ms: Option<u32>,
}

impl WebhookOptions {
    /// The longest batch window accepted.
    pub const MAX_BATCH_WINDOW_MS: u32 = 10_000;

    /// The options that still apply after a change to `profile` (a batch window only to
    /// opal, a content mode only to cloudevents); the rest are dropped.
    pub fn kept_for(&self, profile: ProfileName) -> Self {
        Self {
            content_mode: self
                .content_mode
                .filter(|_| profile == ProfileName::CloudEvents),
            batch_window_ms: self.batch_window_ms.filter(|_| profile.batches_events()),
        }
    }

    /// Checks the options against the webhook's profile.
    pub fn check(&self, profile: ProfileName) -> Result<(), Invalid> {
        if let Some(ms) = self.batch_window_ms {
            if !profile.batches_events() {
                return Err(Invalid::new(
                    "options.batch_window_ms",
                    format!(
                        "the {} profile sends one event per request; only opal batches",
                        profile.as_str()
                    ),
                ));
            }
            if ms == 0 || ms > Self::MAX_BATCH_WINDOW_MS {
                return Err(Invalid::new(
                    "options.batch_window_ms",
                    "must be between 1 and 10000 milliseconds",
                ));
            }
        }
        if self.content_mode.is_some() && profile != ProfileName::CloudEvents {
            return Err(Invalid::new(
                "options.content_mode",
                "applies to the cloudevents profile only",
            ));
        }
        Ok(())
    }
}

/// How a CloudEvent travels over HTTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// The whole event as `application/cloudevents+json`.
    #[default]
    Structured,
    /// Attributes as `ce-*` headers, the data as the body.
    Binary,
}

/// An absolute `http` or `https` URL with a host, at most 2,048 characters, no credentials and no
/// fragment. Whether its address may be reached is the dispatcher's SSRF guard's call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "https://example.com/webhooks")]
pub struct WebhookUrl(String);

/// Whether a (lower-cased, IDNA-encoded) host name is one DNS can hold: labels of 1 to 63
/// letters, digits, `-` or `_` (some services name hosts with it), neither starting nor ending
/// with `-`, a trailing dot allowed.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl WebhookUrl {
    pub const MAX_LEN: usize = 2048;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let raw = raw.trim();
        if raw.len() > Self::MAX_LEN {
            return Err(Invalid::new("url", "must be at most 2048 characters"));
        }
        if raw.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(Invalid::new(
                "url",
                "must not contain spaces or control characters; percent-encode them (%20)",
            ));
        }
        // The URL parser would read `http:///path` and `http:host` as `http://path/` and
        // `http://host/`: a URL stored other than as given could go somewhere else.
        match raw.split_once("://") {
            None => {
                return Err(Invalid::new(
                    "url",
                    format!(
                        "'{}' must start with https:// (or http://) and a host, e.g. https://example.com/webhooks",
                        crate::truncate_for_message(raw)
                    ),
                ));
            }
            Some((_, rest)) if rest.is_empty() || rest.starts_with('/') => {
                return Err(Invalid::new(
                    "url",
                    format!(
                        "'{}' does not name a host after its scheme; use e.g. https://example.com/webhooks",
                        crate::truncate_for_message(raw)
                    ),
                ));
            }
            Some(_) => {}
        }
        let url = url::Url::parse(raw).map_err(|e| {
            Invalid::new(
                "url",
                format!(
                    "'{}' is not an absolute URL ({e}); use e.g. https://example.com/webhooks",
                    crate::truncate_for_message(raw)
                ),
            )
        })?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(Invalid::new("url", "must use https:// (or http://)"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(Invalid::new("url", "must have a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Invalid::new(
                "url",
                "must not contain credentials; use custom headers for authentication",
            ));
        }
        if url.fragment().is_some() {
            return Err(Invalid::new("url", "must not contain a #fragment"));
        }
        if url.port() == Some(0) {
            return Err(Invalid::new("url", "port 0 cannot be connected to"));
        }
        if let Some(url::Host::Domain(name)) = url.host()
            && !is_dns_name(name)
        {
            // `a..b` or `-a.com` parse as URLs, but no resolver finds them: every attempt
            // would fail with a DNS error, after the webhook was accepted.
            return Err(Invalid::new(
                "url",
                format!(
                    "'{}' is not a valid host name (labels of letters, digits and '-', not \
                     starting or ending with '-', separated by single dots)",
                    crate::truncate_for_message(name)
                ),
            ));
        }
        // Percent-encoding (of a non-ASCII path, say) can make the URL longer than given.
        let url = url.to_string();
        if url.len() > Self::MAX_LEN {
            return Err(Invalid::new(
                "url",
                "must be at most 2048 characters once percent-encoded",
            ));
        }
        Ok(Self(url))
    }

    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_https(&self) -> bool {
        self.0.starts_with("https://")
    }
}

/// Parses what a webhook subscribes to. Both lists empty means everything (`events: ["*"]`).
pub fn parse_subscription(
    events: Option<Vec<String>>,
    channels: Option<Vec<String>>,
) -> Result<(Vec<String>, Vec<String>), Invalid> {
    let mut parsed_events = unique(events.unwrap_or_default(), "events", 500, |i, e| {
        if e != "*" {
            crate::event_type::parse_type_name(e, &format!("events[{i}]"))?;
        }
        Ok(())
    })?;
    let parsed_channels = unique(channels.unwrap_or_default(), "channels", 100, |i, c| {
        if c != "*" {
            crate::event_type::parse_channel(c, &format!("channels[{i}]"))?;
        }
        Ok(())
    })?;
    if parsed_events.is_empty() && parsed_channels.is_empty() {
        parsed_events.push("*".to_owned());
    }
    Ok((parsed_events, parsed_channels))
}

/// The distinct names of `raw` in their first order, each checked by `check` (with its index).
/// More than `max` are refused as soon as the one too many is read, without reading the rest.
fn unique(
    raw: Vec<String>,
    field: &str,
    max: usize,
    check: impl Fn(usize, &str) -> Result<(), Invalid>,
) -> Result<Vec<String>, Invalid> {
    let mut seen = std::collections::HashSet::new();
    let mut kept = Vec::new();
    for (i, name) in raw.into_iter().enumerate() {
        check(i, &name)?;
        if seen.insert(name.clone()) {
            if kept.len() == max {
                return Err(Invalid::new(
                    field,
                    format!(
                        "at most {max} distinct {field}; subscribe to {} instead",
                        if field == "events" {
                            "a channel or '*'"
                        } else {
                            "'*'"
                        }
                    ),
                ));
            }
            kept.push(name);
        }
    }
    Ok(kept)
}

/// Why a webhook may not set a header (its lower-cased name), if it may not: Herald sets it,
/// HTTP itself does, it speaks for a proxy on the way (which a receiver behind one would
/// believe), or it has frameworks take the POST for another method.
fn reserved_header(lower: &str) -> Option<&'static str> {
    const HTTP: &[&str] = &[
        "host",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "range",
        "http2-settings",
    ];
    const HERALD: &[&str] = &["user-agent", "date"];
    // The client's address, or the path it asked for, as a proxy reports them.
    const PROXY: &[&str] = &[
        "via",
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-original-url",
        "x-rewrite-url",
    ];
    const METHOD: &[&str] = &[
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x-original-method",
    ];
    let herald_prefixes = [
        "content-",
        "webhook-",
        "herald-",
        "x-herald-",
        "x-opal-",
        "ce-",
    ];
    if HTTP.contains(&lower) {
        Some("is HTTP's own")
    } else if HERALD.contains(&lower)
        || herald_prefixes.iter().any(|p| lower.starts_with(p))
        || lower.contains("signature")
    {
        Some("is set by Herald")
    } else if PROXY.contains(&lower)
        || lower.starts_with("proxy-")
        || lower.starts_with("x-forwarded-")
    {
        Some("speaks for a proxy on the way, which a receiver behind one would believe")
    } else if METHOD.contains(&lower) {
        Some("has frameworks that honour it take the POST for another method")
    } else {
        None
    }
}

/// Parses custom headers: at most 20, RFC 9110 token names, visible ASCII values, none that
/// would override what Herald sets (host, content, signatures, ids).
pub fn parse_headers(raw: BTreeMap<String, String>) -> Result<BTreeMap<String, String>, Invalid> {
    if raw.len() > 20 {
        return Err(Invalid::new("headers", "at most 20 custom headers"));
    }
    let mut out = BTreeMap::new();
    for (name, value) in raw {
        let field = format!("headers.{}", crate::truncate_for_message(&name));
        let lower = name.to_ascii_lowercase();
        let token = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !token {
            return Err(Invalid::new(
                field,
                "is not a valid header name: 1 to 64 letters, digits and any of \
                 !#$%&'*+-.^_`|~ (no spaces, no colon)",
            ));
        }
        if let Some(because) = reserved_header(&lower) {
            return Err(Invalid::new(
                field,
                format!("{because}, and cannot be a custom header"),
            ));
        }
        if let Some(b) = value
            .bytes()
            .find(|&b| b != b'\t' && !(0x20..0x7f).contains(&b))
        {
            let what = match b {
                b'\r' | b'\n' => "a line break",
                0x80.. => "a character outside ASCII",
                _ => "a control character",
            };
            return Err(Invalid::new(
                field,
                format!(
                    "value holds {what} (byte 0x{b:02x}): a header value is one line of visible \
                     ASCII characters, spaces and tabs"
                ),
            ));
        }
        if value.len() > 1024 {
            return Err(Invalid::new(
                field,
                format!(
                    "value is {} characters long; at most 1024 are sent",
                    value.len()
                ),
            ));
        }
        if out.insert(lower, value).is_some() {
            return Err(Invalid::new(
                field,
                "is given twice (header names are not case-sensitive); keep one",
            ));
        }
    }
    Ok(out)
}

/// The longest timeout a webhook may have.
pub const MAX_TIMEOUT_MS: u32 = 60_000;

/// Parses a timeout override: 100 ms to 60 s.
pub fn parse_timeout_ms(raw: u64) -> Result<u32, Invalid> {
    if (100..=u64::from(MAX_TIMEOUT_MS)).contains(&raw) {
        Ok(raw as u32)
    } else {
        Err(Invalid::new(
            "timeout_ms",
            "must be between 100 and 60000 milliseconds",
        ))
    }
}

/// Parses a rate limit: 1 to 10,000 requests per second.
pub fn parse_rate_limit(raw: u64) -> Result<u32, Invalid> {
    if (1..=10_000).contains(&raw) {
        Ok(raw as u32)
    } else {
        Err(Invalid::new(
            "rate_limit_per_second",
            "must be between 1 and 10000 requests per second",
        ))
    }
}

/// Parses an optional description: at most 1,000 characters, lines and tabs allowed but no
/// other control character (PostgreSQL cannot store a NUL, and none belongs in a description).
pub fn parse_description(raw: Option<String>) -> Result<Option<String>, Invalid> {
    match raw.map(|d| d.trim().to_owned()) {
        Some(d) if d.chars().count() > 1000 => Err(Invalid::new(
            "description",
            "must be at most 1000 characters",
        )),
        Some(d)
            if d.chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            Err(Invalid::new(
                "description",
                "must not contain control characters other than line breaks and tabs",
            ))
        }
        Some(d) if d.is_empty() => Ok(None),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_at_most_2048_characters_as_stored() {
        let emoji = format!("https://example.com/{}", "😀".repeat(400));
        assert!(emoji.len() < WebhookUrl::MAX_LEN, "short as given");
        let err = WebhookUrl::parse(&emoji).unwrap_err();
        assert!(err.message.contains("percent-encoded"), "{err:?}");
        assert!(WebhookUrl::parse(&format!("https://example.com/{}", "😀".repeat(100))).is_ok());
    }

    #[test]
    fn a_url_without_a_scheme_or_with_credentials_is_rejected() {
        assert!(WebhookUrl::parse("example.com/hook").is_err());
        assert!(WebhookUrl::parse("ftp://example.com/hook").is_err());
        assert!(WebhookUrl::parse("https://user:pw@example.com/hook").is_err());
        assert!(WebhookUrl::parse("https://example.com/hook?a=1").is_ok());
        // Nothing is stored other than as given: a URL the parser would rewrite is refused.
        for rewritten in [
            "https://example.com/\r\nX-Injected: 1",
            "https://example.com/a b",
            "https://example.com/\0",
            "http:///path",
            "http:example.com/hook",
            "https://example.com:0/",
        ] {
            assert!(WebhookUrl::parse(rewritten).is_err(), "{rewritten:?}");
        }
        assert!(WebhookUrl::parse("  https://example.com/hook  ").is_ok());
        // Host names DNS cannot hold are refused; names it can, IDNs and IPs pass.
        for bad in [
            "http://a..b/",
            "http://-a.com/",
            "http://a-.com/",
            "https://.example.com/",
        ] {
            let err = WebhookUrl::parse(bad).unwrap_err();
            assert!(
                err.message.contains("not a valid host name"),
                "{bad}: {err:?}"
            );
        }
        for good in [
            "https://hooks.example.com./x",
            "https://my_service.internal.example/x",
            "https://bücher.example/x",
            "http://127.0.0.1:8080/x",
            "http://[::1]/x",
            "http://localhost/x",
        ] {
            assert!(WebhookUrl::parse(good).is_ok(), "{good}");
        }
        let no_scheme = WebhookUrl::parse("example.com/hook").unwrap_err();
        assert!(
            no_scheme.message.contains("must start with https://"),
            "{no_scheme:?}"
        );
    }

    #[test]
    fn debug_output_gives_away_no_secret_or_header_value() {
        use crate::profile::ProfileName;
        let mut hook =
            crate::profile::fixtures::webhook(ProfileName::Standard, "s3cret-s3cret-s3cret");
        hook.previous_secret = Some("old-s3cret-old-s3cret".into());
        hook.headers
            .insert("authorization".into(), "Bearer tok-123456".into());
        hook.url = WebhookUrl::parse("https://example.com/hook?token=q-tok-7890").unwrap();
        let shown = format!("{hook:?}");
        for secret in [
            "s3cret-s3cret-s3cret",
            "old-s3cret-old-s3cret",
            "tok-123456",
            "q-tok-7890",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("authorization") && shown.contains(hook.id.as_str()));
        assert!(
            shown.contains("https://example.com/hook?[redacted]"),
            "{shown}"
        );
    }

    #[test]
    fn no_subscription_means_every_event() {
        let (events, channels) = parse_subscription(None, None).unwrap();
        assert_eq!(events, vec!["*"]);
        assert!(channels.is_empty());
    }

    #[test]
    fn a_custom_header_may_not_override_signatures_or_host() {
        // Each refused for its own reason.
        for (name, because) in [
            ("Host", "is HTTP's own"),
            ("webhook-signature", "is set by Herald"),
            ("X-Optare-Signature", "is set by Herald"),
            ("Content-Type", "is set by Herald"),
            ("Content-Disposition", "is set by Herald"),
            ("Proxy-Authorization", "speaks for a proxy"),
            ("X-Forwarded-For", "speaks for a proxy"),
            ("Forwarded", "speaks for a proxy"),
            ("Date", "is set by Herald"),
            ("X-Real-IP", "speaks for a proxy"),
            ("X-HTTP-Method-Override", "take the POST for another method"),
            ("X-Original-URL", "speaks for a proxy"),
        ] {
            let raw = BTreeMap::from([(name.to_owned(), "x".to_owned())]);
            let refused = parse_headers(raw).unwrap_err();
            assert!(
                refused.message.contains(because)
                    && refused.message.ends_with("and cannot be a custom header"),
                "{name}: {refused}"
            );
        }
        let ok = BTreeMap::from([("X-Team".to_owned(), "identity".to_owned())]);
        assert_eq!(parse_headers(ok).unwrap()["x-team"], "identity");
    }

    #[test]
    fn a_custom_header_value_says_what_is_wrong_with_it() {
        for (value, said) in [
            ("a\r\nX-Evil: 1", "a line break (byte 0x0d)"),
            ("caf\u{e9}", "a character outside ASCII"),
            ("a\u{1}", "a control character (byte 0x01)"),
            (&"x".repeat(1025), "1025 characters long"),
        ] {
            let raw = BTreeMap::from([("X-Team".to_owned(), value.to_owned())]);
            let err = parse_headers(raw).unwrap_err();
            assert!(err.message.contains(said), "{value:?}: {err:?}");
        }
        let raw = BTreeMap::from([("X-Team".to_owned(), "a\tb c".to_owned())]);
        assert!(parse_headers(raw).is_ok());
    }

    #[test]
    fn a_header_name_that_is_not_one_says_what_one_is() {
        for name in ["X Team", "X-Team:", "", &"x".repeat(65)] {
            let raw = BTreeMap::from([(name.to_owned(), "v".to_owned())]);
            let err = parse_headers(raw).unwrap_err();
            assert!(
                err.message.contains("1 to 64 letters, digits"),
                "{name:?}: {err:?}"
            );
        }
        let raw = BTreeMap::from([("x".repeat(64), "v".to_owned())]);
        assert!(parse_headers(raw).is_ok());
    }

    #[test]
    fn a_header_named_twice_in_different_cases_is_rejected() {
        let raw = BTreeMap::from([
            ("X-Team".to_owned(), "a".to_owned()),
            ("x-team".to_owned(), "b".to_owned()),
        ]);
        let err = parse_headers(raw).unwrap_err();
        assert!(err.message.contains("twice"), "{err:?}");
    }

    #[test]
    fn a_subscription_keeps_each_name_once_and_refuses_a_long_list_early() {
        let events = ["user.created", "user.deleted", "user.created"].map(str::to_owned);
        let (events, _) = parse_subscription(Some(events.to_vec()), None).unwrap();
        assert_eq!(events, ["user.created", "user.deleted"]);

        // Refused at the 501st distinct name, before the rest is read (or checked).
        let mut many: Vec<String> = (0..100_000).map(|i| format!("t{i:06}")).collect();
        many.push("not a type name!".into());
        let err = parse_subscription(Some(many), None).unwrap_err();
        assert_eq!(err.field, "events");
        assert!(err.message.contains("at most 500"), "{err:?}");

        let channels: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
        let err = parse_subscription(None, Some(channels)).unwrap_err();
        assert_eq!(err.field, "channels");
        assert!(
            err.message.contains("at most 100 distinct channels"),
            "{err:?}"
        );
    }

    #[test]
    fn a_description_keeps_line_breaks_but_no_other_control_character() {
        let kept = parse_description(Some("line one\nline two\tend".into())).unwrap();
        assert_eq!(kept.as_deref(), Some("line one\nline two\tend"));
        for bad in ["a\u{0}b", "bell\u{7}"] {
            let err = parse_description(Some(bad.into())).unwrap_err();
            assert_eq!(err.field, "description", "{bad:?}");
        }
    }

    #[test]
    fn every_profile_s_default_schedule_starts_at_once() {
        for profile in ProfileName::ALL {
            assert_eq!(
                profile.default_retry_schedule().delays()[0],
                0,
                "{profile:?}"
            );
        }
    }
}
