//! Herald's domain: what organizations, webhooks, events and deliveries are, how inputs become
//! those types, which webhook wants which event, how a delivery looks on the wire (profiles), and
//! what happens after each attempt.
//!
//! This crate must not know the web, SQL or any HTTP client: the server, the stores and the
//! dispatcher all depend on it, never the other way round. Storage is reached only through the
//! [`store::Store`] trait.

// The workspace denies unsafe code (one call in `herald` is allowed where it is written);
// this crate has none at all.
#![forbid(unsafe_code)]

pub mod address_policy;
pub mod catalog;
pub mod delivery;
pub mod directory;
pub mod event;
pub mod event_type;
pub mod health;
pub mod ids;
pub mod js_json;
pub mod metrics;
pub mod org;
pub mod profile;
pub mod retry;
pub mod store;
pub mod subscription;
pub mod suggest;
pub mod throttle;
pub mod time;
pub mod webhook;

pub use ids::{ApiKeyId, AttemptId, DeliveryId, EventTypeId, OrgId, WebhookId};
pub use time::{Clock, CorrectedClock, ManualClock, SystemClock, Timestamp};

/// An error and every cause under it, as one line: PostgreSQL's own reason ("database \"x\"
/// is not currently accepting connections", "Connection refused") is often the last, under a
/// "storage unavailable" and a "db error" that say nothing. Of each, only its first line:
/// PostgreSQL adds a `DETAIL` line that may quote a row's values (a webhook's secret among
/// them), which have no place in a log.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let first_line = |e: &dyn std::error::Error| {
        let text = e.to_string();
        text.lines().next().unwrap_or_default().to_owned()
    };
    let mut text = first_line(e);
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = first_line(c);
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("storage failed")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error(
        "ERROR: null value in column \"url\"\nDETAIL: Failing row contains (wh_1, whsec_secret)"
    )]
    struct Inner;

    /// Text from outside cannot play escape sequences or reorder what is around it.
    #[test]
    fn text_from_outside_is_shown_with_its_controls_escaped() {
        assert_eq!(
            super::shown_safely("ok\r\n\u{1b}[31mred\u{202e}txt.exe\tend\u{85}\u{7f}"),
            "ok\r\n\\u{1b}[31mred\\u{202e}txt.exe\tend\\u{85}\\u{7f}"
        );
    }

    #[test]
    fn an_error_chain_is_one_line_without_the_details_of_a_row() {
        assert_eq!(
            super::error_chain(&Outer(Inner)),
            "storage failed: ERROR: null value in column \"url\""
        );
    }
}

/// Herald's version, sent in `User-Agent` and shown by `herald --version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// An input that cannot become a domain value: which field, and what is wrong with it in words a
/// user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Prefixes the field path, e.g. `events[2]` inside `0.` for batches.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// Text from outside (an endpoint's answer, an event's data) made safe to show on a page or a
/// terminal: control characters (line breaks and tabs aside) and the characters that reorder
/// the text around them (bidirectional embeddings, overrides, isolates) are written as escapes
/// (`\u{1b}`), so that whoever sent the text cannot rewrite or rearrange what is read.
pub fn shown_safely(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '\n' | '\r' | '\t') || !(c.is_control() || org::is_bidi_control(c)) {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    out
}

/// Cuts user input quoted back in an error message, so that a huge value cannot make a huge error.
pub fn truncate_for_message(raw: &str) -> String {
    const MAX: usize = 64;
    if raw.chars().count() <= MAX {
        raw.to_owned()
    } else {
        let cut: String = raw.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// The OpenAPI schema of a string that takes one of `values`.
fn string_enum<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values))
        .into()
}

/// A page of a list, newest first, with the cursor for the next page.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

/// How a caller asked for a page: at most `limit` items older than `cursor`.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub limit: u32,
    pub cursor: Option<String>,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 200;
    /// An event list's cursor carries an event id (up to 255 characters, in base64).
    const MAX_CURSOR_LEN: usize = 400;

    pub fn new(limit: Option<u32>, cursor: Option<String>) -> Result<Self, Invalid> {
        let limit = limit.unwrap_or(Self::DEFAULT_LIMIT);
        if limit == 0 || limit > Self::MAX_LIMIT {
            return Err(Invalid::new(
                "limit",
                format!("must be between 1 and {}", Self::MAX_LIMIT),
            ));
        }
        let cursor = cursor.filter(|c| !c.is_empty());
        if let Some(c) = &cursor
            && (c.len() > Self::MAX_CURSOR_LEN || !c.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Invalid::new("cursor", "is not a cursor Herald gave out"));
        }
        Ok(Self { limit, cursor })
    }

    /// The page asked for, in a list of items whose ids `parse` reads: a cursor is the id of
    /// the last item of the previous page, so anything else is refused rather than answered
    /// with an empty or a first page.
    pub fn of_ids<T: std::fmt::Display>(
        limit: Option<u32>,
        cursor: Option<String>,
        parse: impl Fn(&str) -> Result<T, Invalid>,
    ) -> Result<Self, Invalid> {
        let mut page = Self::new(limit, cursor)?;
        if let Some(cursor) = &page.cursor {
            let Ok(id) = parse(cursor) else {
                return Err(Invalid::new(
                    "cursor",
                    "is not a cursor of this kind of list: pass the previous page's next_cursor as it was given, or none for the first page",
                ));
            };
            // As the id reads everywhere else (ids are case-insensitive): compared as given, an
            // upper-case cursor sorted before every stored id and ended the list early.
            page.cursor = Some(id.to_string());
        }
        Ok(page)
    }
}
