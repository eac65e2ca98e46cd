//! Event type names, channels, and an organization's own registered types.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{EventTypeId, Invalid, OrgId, Timestamp};

/// The type every webhook receives from "send test event", whatever it subscribed to.
pub const TEST_EVENT_TYPE: &str = "herald.test";

/// The channel of Herald's own operational events.
pub const OPERATIONS_CHANNEL: &str = "operations";
/// A webhook was disabled (its endpoint answered 410 Gone, or failed for too long).
pub const WEBHOOK_DISABLED: &str = "webhook.disabled";
/// A webhook was enabled.
pub const WEBHOOK_ENABLED: &str = "webhook.enabled";
/// A delivery failed its last attempt.
pub const DELIVERY_EXHAUSTED: &str = "delivery.exhausted";
/// Herald's operational events, all in [`OPERATIONS_CHANNEL`].
pub const OPERATIONAL_TYPES: [&str; 3] = [WEBHOOK_DISABLED, WEBHOOK_ENABLED, DELIVERY_EXHAUSTED];

/// Whether a type is one of Herald's own: every organization has them, producers cannot post
/// them, and no catalog or organization may define them.
pub fn is_reserved(name: &str) -> bool {
    name.starts_with("herald.") || is_operational(name)
}

/// Whether a type is an operational event, which an organization's own webhooks may subscribe to.
pub fn is_operational(name: &str) -> bool {
    OPERATIONAL_TYPES.contains(&name)
}

/// Checks an event type name: 1 to 128 characters from letters, digits and `. _ - : /`.
/// That covers every catalog's style (`user.created`, `USER_CREATED`, `loginSuccess`).
pub fn parse_type_name(raw: &str, field: &str) -> Result<String, Invalid> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "'{}' is not a valid event type name (1 to 128 letters, digits, '.', '_', '-', ':' or '/')",
                crate::truncate_for_message(raw)
            ),
        ))
    }
}

/// Checks the name of a type being registered: as [`parse_type_name`], but not `.` or `..`,
/// which URLs read as a step in their path (its `DELETE …/event-types/{name}` could not name it).
pub fn parse_new_type_name(raw: &str, field: &str) -> Result<String, Invalid> {
    if matches!(raw, "." | "..") {
        return Err(Invalid::new(
            field,
            "cannot be '.' or '..', which URLs read as a step in their path: the type could not \
             be deleted by its name",
        ));
    }
    parse_type_name(raw, field)
}

/// Checks a channel name: 1 to 64 lower-case letters, digits, `_` or `-`.
pub fn parse_channel(raw: &str, field: &str) -> Result<String, Invalid> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "'{}' is not a valid channel name (1 to 64 lower-case letters, digits, '_' or '-')",
                crate::truncate_for_message(raw)
            ),
        ))
    }
}

/// An event type registered by an organization, with an optional JSON Schema for its data.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CustomEventType {
    pub id: EventTypeId,
    #[serde(skip)]
    pub org_id: OrgId,
    pub name: String,
    pub channel: Option<String>,
    pub description: Option<String>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub schema: Option<JsonText>,
    #[schema(value_type = Option<serde_json::Value>)]
    pub example: Option<JsonText>,
    pub created_at: Timestamp,
}

/// A JSON value kept as its text. A type's schema and example are shown as they are and the
/// schema compiled once; as a parsed tree they weighed about ten times their text, and every
/// node holds each organization's types (a thousand types with 16 KiB schemas: 180 MB a node,
/// twice that while a change reloaded them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(Box<RawValue>);

impl JsonText {
    /// `value` written as compact JSON.
    pub fn of(value: &serde_json::Value) -> Self {
        Self(serde_json::value::to_raw_value(value).expect("a JSON value always serialises"))
    }

    /// `value` written as JavaScript writes it (`1.0` as `1`, integers past 2^53 rounded),
    /// as an event's data is stored: a type's schema and example are kept, shown and checked
    /// in that form, so that they say what events hold (a schema's `const` past 2^53 kept
    /// exact would match no event).
    pub fn as_javascript_writes(value: &serde_json::Value) -> Self {
        Self(
            RawValue::from_string(crate::js_json::to_string(value))
                .expect("JavaScript's JSON is JSON"),
        )
    }

    /// The value, parsed. Text Herald wrote always parses; text written by hand into the
    /// database may be valid JSON that a parsed value cannot hold (a number past `f64`,
    /// nesting deeper than 128), and a type whose schema cannot be read is taken as having
    /// none, as one that no longer compiles is.
    pub fn value(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(self.0.get())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

/// Compiles a JSON Schema, refusing one that is not valid itself.
///
/// Its `pattern`s match in time linear in the string (the `regex` engine): a backtracking
/// engine takes time growing with the square of the string, or worse, on patterns such as
/// `(?=a*)(a+)+b`, so one tenant's event of a megabyte would hold a core for hours. A pattern
/// that needs backtracking (a look-around, a back-reference) is refused, saying so.
pub fn compile_schema(schema: &serde_json::Value) -> Result<jsonschema::Validator, Invalid> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err(Invalid::new("schema", "must be a JSON Schema object"));
    }
    // An event's data is an object: a schema for anything else would refuse every event.
    if let Some(wanted) = schema.get("type")
        && !names_object(wanted)
    {
        return Err(Invalid::new(
            "schema.type",
            format!(
                "is {wanted}, but an event's data is always a JSON object: use \"type\": \"object\" \
                 (or leave it out)"
            ),
        ));
    }
    linear_time_patterns().build(schema).map_err(|e| {
        let text = e.to_string();
        if let Some(pattern) = needs_backtracking(&e, schema) {
            Invalid::new(
                "schema",
                format!(
                    "has a pattern Herald cannot match in linear time ({pattern}): a look-around \
                     ((?=, (?!, (?<=, (?<!) or a back-reference (\\1, \\k<name>) would let one \
                     event hold the server's CPU. Write the pattern without it"
                ),
            )
        } else if text.contains("resolve-http") || text.contains("resolve-file") {
            // Herald never fetches a schema (a request it would make on a tenant's behalf).
            Invalid::new(
                "schema",
                "refers ($ref) to a schema elsewhere, which Herald does not fetch: put it in \
                 this schema under \"$defs\" and refer to it as \"#/$defs/…\"",
            )
        } else {
            Invalid::new("schema", format!("is not a valid JSON Schema: {text}"))
        }
    })
}

/// A schema stored before patterns were held to linear time: compiled as [`compile_schema`]
/// does, or, if one of its patterns needs backtracking, with the backtracking engine as it was
/// then (its events are still checked against it). None if it does not compile at all.
pub fn compile_stored_schema(schema: &serde_json::Value) -> Option<jsonschema::Validator> {
    compile_schema(schema).ok().or_else(|| {
        jsonschema::options()
            .with_pattern_options(jsonschema::PatternOptions::fancy_regex())
            .build(schema)
            .ok()
    })
}

fn linear_time_patterns() -> jsonschema::ValidationOptions<'static> {
    jsonschema::options().with_pattern_options(jsonschema::PatternOptions::regex())
}

/// The pattern the linear engine refused, when the schema is otherwise valid: the backtracking
/// engine compiles it.
fn needs_backtracking(
    error: &jsonschema::ValidationError<'_>,
    schema: &serde_json::Value,
) -> Option<String> {
    let backtracking = jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::fancy_regex())
        .build(schema);
    if backtracking.is_err() {
        return None;
    }
    match &**error.instance() {
        serde_json::Value::String(pattern) => Some(format!("\"{pattern}\"")),
        _ => Some(format!("at {}", error.schema_path())),
    }
}

/// Whether a schema's `type` lets the value be an object.
fn names_object(wanted: &serde_json::Value) -> bool {
    match wanted {
        serde_json::Value::String(t) => t == "object",
        serde_json::Value::Array(ts) => ts.iter().any(|t| t == "object"),
        _ => true, // Not a valid `type`: the compiler says so.
    }
}

/// Checks `data` against a compiled schema; the error names the first failing location.
pub fn check_against_schema(
    validator: &jsonschema::Validator,
    type_name: &str,
    data: &serde_json::Value,
) -> Result<(), Invalid> {
    match validator.validate(data) {
        Ok(()) => Ok(()),
        Err(e) => {
            let path = e.instance_path().to_string();
            let at = if path.is_empty() {
                "data".to_owned()
            } else {
                format!("data{path}")
            };
            // The value is quoted back only while short: a megabyte string is not echoed.
            let mut reason = e.to_string();
            if reason.chars().count() > 300 {
                let value = e.instance().to_string();
                reason = e
                    .masked_with(crate::truncate_for_message(&value))
                    .to_string();
            }
            Err(Invalid::new(
                at,
                format!("does not match the schema of '{type_name}': {reason}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_every_catalog_style_are_accepted() {
        for name in [
            "user.created",
            "USER_ADDED_TO_GROUP",
            "loginSuccess",
            "2fa.enabled",
        ] {
            assert!(parse_type_name(name, "type").is_ok(), "{name}");
        }
        assert!(parse_type_name("user created", "type").is_err());
        assert!(parse_type_name("", "type").is_err());
        for name in [".", ".."] {
            assert!(parse_new_type_name(name, "name").is_err(), "{name}");
        }
        assert!(parse_new_type_name("...", "name").is_ok());
        assert!(parse_new_type_name("user.created", "name").is_ok());
    }

    #[test]
    fn data_that_breaks_the_schema_names_the_field() {
        let schema = serde_json::json!({"type":"object","required":["user"],"properties":{"user":{"type":"object","properties":{"id":{"type":"string"}}}}});
        let v = compile_schema(&schema).unwrap();
        assert!(check_against_schema(&v, "t", &serde_json::json!({"user":{"id":"u1"}})).is_ok());
        let err = check_against_schema(&v, "t", &serde_json::json!({"user":{"id":7}})).unwrap_err();
        assert_eq!(err.field, "data/user/id");
    }

    #[test]
    fn an_invalid_schema_is_refused() {
        assert!(compile_schema(&serde_json::json!({"type": 12})).is_err());
        assert!(compile_schema(&serde_json::json!("x")).is_err());
    }

    #[test]
    fn a_schema_no_event_could_match_is_refused() {
        let err = compile_schema(&serde_json::json!({"type": "string"})).unwrap_err();
        assert_eq!(err.field, "schema.type");
        assert!(
            err.message.contains("always a JSON object"),
            "{}",
            err.message
        );
        assert!(compile_schema(&serde_json::json!({"type": ["null", "array"]})).is_err());
        assert!(compile_schema(&serde_json::json!({"type": ["object", "null"]})).is_ok());
        assert!(compile_schema(&serde_json::json!({"properties": {}})).is_ok());
    }

    #[test]
    fn a_pattern_that_needs_backtracking_is_refused_by_name_and_a_stored_one_still_checks() {
        for pattern in ["(?=a*)(a+)+b", "^(a)\\1$", "(?<!x)y"] {
            let schema = serde_json::json!({"properties": {"s": {"pattern": pattern}}});
            let err = compile_schema(&schema).unwrap_err();
            assert_eq!(err.field, "schema");
            assert!(err.message.contains(pattern), "{}", err.message);
            assert!(err.message.contains("linear time"), "{}", err.message);
            // Stored before the rule: its events are still checked against it.
            let stored = compile_stored_schema(&schema).expect("compiles as before");
            assert!(stored.validate(&serde_json::json!({"s": 7})).is_ok());
        }
        let stored = compile_stored_schema(
            &serde_json::json!({"properties": {"s": {"pattern": "^(a)\\1$"}}}),
        )
        .unwrap();
        assert!(stored.is_valid(&serde_json::json!({"s": "aa"})));
        assert!(!stored.is_valid(&serde_json::json!({"s": "ab"})));
        // A schema invalid for another reason says that, not look-arounds.
        let err = compile_schema(&serde_json::json!({"properties": {"s": {"pattern": "(("}}}))
            .unwrap_err();
        assert!(!err.message.contains("linear time"), "{}", err.message);
        assert!(compile_stored_schema(&serde_json::json!({"type": 12})).is_none());
    }

    #[test]
    fn a_pattern_that_backtracks_badly_elsewhere_matches_here() {
        // Nested quantifiers: exponential in a backtracking engine, linear in this one.
        let v = compile_schema(&serde_json::json!({"properties": {"s": {"pattern": "^(a+)+b$"}}}))
            .unwrap();
        let long = "a".repeat(100_000);
        assert!(check_against_schema(&v, "t", &serde_json::json!({ "s": long })).is_err());
        assert!(check_against_schema(&v, "t", &serde_json::json!({ "s": "aab" })).is_ok());
    }

    #[test]
    fn a_schema_elsewhere_is_not_fetched_and_the_message_says_what_to_do() {
        for target in ["http://127.0.0.1:9/s.json", "file:///etc/passwd"] {
            let err = compile_schema(&serde_json::json!({"$ref": target})).unwrap_err();
            assert!(err.message.contains("\"$defs\""), "{}", err.message);
        }
    }

    #[test]
    fn a_huge_value_is_not_quoted_back_whole() {
        let v =
            compile_schema(&serde_json::json!({"properties": {"s": {"maxLength": 3}}})).unwrap();
        let long = "a".repeat(100_000);
        let err = check_against_schema(&v, "t", &serde_json::json!({ "s": long })).unwrap_err();
        assert!(err.message.len() < 400, "{}", err.message);
        assert!(
            err.message.contains("is longer than 3 characters"),
            "{}",
            err.message
        );
        // A short one is quoted whole.
        let err = check_against_schema(&v, "t", &serde_json::json!({ "s": "abcd" })).unwrap_err();
        assert!(
            err.message.contains("\"abcd\" is longer"),
            "{}",
            err.message
        );
    }
}
