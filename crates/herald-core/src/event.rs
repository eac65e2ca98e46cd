//! Events as producers post them, and as Herald keeps them.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{Invalid, OrgId, Timestamp, js_json};

/// The deepest nesting accepted in event data; deeper data is almost always a mistake or an attack.
pub const MAX_DATA_DEPTH: usize = 32;

/// A stored event. `data` is kept as compact JSON text: it is rendered into bodies as it is,
/// without being parsed again for every delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: String,
    #[serde(skip)]
    pub org_id: OrgId,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
    pub correlation_id: Option<String>,
    pub data: Box<RawValue>,
}

impl Event {
    /// About how much memory the event takes: its text and its fixed part. Deliveries held in
    /// memory are budgeted by it, since events range from a few hundred bytes to the body limit.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.id.len()
            + self.org_id.as_str().len()
            + self.event_type.len()
            + self.correlation_id.as_ref().map_or(0, String::len)
            + self.data.get().len()
    }
}

/// An event in a list: what it is and when, without its data (which may be up to a megabyte
/// an event; reading one event gives it).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct EventSummary {
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub occurred_at: Timestamp,
    pub received_at: Timestamp,
    pub correlation_id: Option<String>,
}

impl EventSummary {
    /// Where the next page starts: after this event.
    pub fn cursor(&self) -> String {
        EventCursor {
            received_at: self.received_at,
            id: self.id.clone(),
        }
        .to_string()
    }
}

/// Where a page of an event list starts: after the event received at `received_at` with the
/// id `id`. Events are listed newest first by time received, then by id (byte order, the same
/// on both backends), so the order is total however many share a millisecond. Written
/// `<milliseconds>.<the id in unpadded base64url>`, which a query string carries as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    pub received_at: Timestamp,
    pub id: String,
}

impl EventCursor {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        use base64::Engine;
        let invalid = || Invalid::new("cursor", "not an event list's cursor");
        let (at, id) = text.split_once('.').ok_or_else(invalid)?;
        let at = at.parse::<i64>().map_err(|_| invalid())?;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id)
            .ok()
            .and_then(|id| String::from_utf8(id).ok())
            .and_then(|id| parse_event_id(&id).ok())
            .ok_or_else(invalid)?;
        Ok(Self {
            received_at: Timestamp::from_millis(at),
            id,
        })
    }
}

impl std::fmt::Display for EventCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use base64::Engine;
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.id);
        write!(f, "{}.{id}", self.received_at.as_millis())
    }
}

/// An event as posted, checked for shape but not yet against the organization's types.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// The producer's idempotency key, or a generated `evt_…`.
    pub id: String,
    pub event_type: String,
    pub occurred_at: Option<Timestamp>,
    pub correlation_id: Option<String>,
    /// The data object, written as Herald stores it: exactly as JavaScript writes it.
    pub data: Box<RawValue>,
}

/// The message for an event that is not a JSON object.
const NOT_AN_OBJECT: &str =
    "each event must be a JSON object like {\"type\": \"user.created\", \"data\": {…}}";

impl NewEvent {
    /// Parses one event object of a request body.
    pub fn parse(raw: Value) -> Result<Self, Invalid> {
        let Value::Object(obj) = raw else {
            return Err(Invalid::new("", NOT_AN_OBJECT));
        };
        let mut posted = Posted::default();
        for (key, value) in obj {
            let field = match value {
                Value::String(s) => Field::Text(s),
                Value::Null => Field::Null,
                other => Field::Other(other),
            };
            posted.set(key, field);
        }
        posted.check()
    }

    /// Parses one event object of a request body from its text, as [`NewEvent::parse`] does,
    /// without building a tree of its data when the data is already written as Herald stores
    /// it (the usual case): producers' JSON serialisers write compact JSON much as JavaScript
    /// does, and building the tree and writing it out again cost about 8% of the server's
    /// instructions per event.
    pub fn parse_text(raw: &RawValue) -> Result<Self, Invalid> {
        if !raw.get().starts_with('{') {
            return Err(Invalid::new("", NOT_AN_OBJECT));
        }
        // Splitting text into values checks its grammar but not everything a tree would (lone
        // surrogates in escapes, numbers out of range); what is read further says so itself.
        let fields: Fields<'_> = serde_json::from_str(raw.get())
            .map_err(|e| Invalid::new("", js_json::unreadable(&e, "the event")))?;
        let mut posted = Posted::default();
        for (key, value) in fields.0 {
            let text = value.get();
            let field = if text.starts_with('"') {
                match serde_json::from_str::<String>(text) {
                    Ok(s) => Field::Text(s),
                    Err(e) => {
                        return Err(Invalid::new(
                            crate::truncate_for_message(&key),
                            format!(
                                "is not a valid JSON string: {}",
                                js_json::syntax_error_said(&e, "its value")
                            ),
                        ));
                    }
                }
            } else if text == "null" {
                Field::Null
            } else {
                Field::Raw(value)
            };
            posted.set(key, field);
        }
        posted.check()
    }

    /// Turns the checked input into the stored form.
    pub fn into_event(self, org_id: OrgId, received_at: Timestamp) -> Event {
        Event {
            id: self.id,
            org_id,
            event_type: self.event_type,
            occurred_at: self.occurred_at.unwrap_or(received_at),
            received_at,
            correlation_id: self.correlation_id,
            data: self.data,
        }
    }
}

/// The fields of a posted event in the order written, each as the text of its value.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Fields<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Self::Value, M::Error> {
                let mut fields = Vec::with_capacity(5);
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// A field's value, from a tree or from text.
enum Field<'a> {
    Text(String),
    Null,
    Other(Value),
    Raw(&'a RawValue),
}

/// An event's fields as posted, before they are checked. A field given twice keeps its last
/// value, as a JSON object parsed into a tree does.
#[derive(Default)]
struct Posted<'a> {
    unknown: Option<String>,
    /// A field given twice: JSON leaves it undefined which one counts.
    repeated: Option<String>,
    event_type: Option<Field<'a>>,
    data: Option<Field<'a>>,
    id: Option<Field<'a>>,
    occurred_at: Option<Field<'a>>,
    correlation_id: Option<Field<'a>>,
}

impl<'a> Posted<'a> {
    fn set(&mut self, key: String, value: Field<'a>) {
        let slot = match key.as_str() {
            "type" => &mut self.event_type,
            "data" => &mut self.data,
            "id" => &mut self.id,
            "occurred_at" => &mut self.occurred_at,
            "correlation_id" => &mut self.correlation_id,
            _ => {
                self.unknown.get_or_insert(key);
                return;
            }
        };
        if slot.replace(value).is_some() {
            self.repeated.get_or_insert(key);
        }
    }

    fn check(self) -> Result<NewEvent, Invalid> {
        if let Some(unknown) = self.unknown {
            return Err(Invalid::new(
                crate::truncate_for_message(&unknown),
                "is not an event field; use type, data, id, occurred_at and correlation_id",
            ));
        }
        if let Some(repeated) = self.repeated {
            return Err(Invalid::new(
                repeated,
                "is given twice; send each field once",
            ));
        }
        let event_type = match self.event_type {
            Some(Field::Text(t)) => crate::event_type::parse_type_name(&t, "type")?,
            Some(_) => return Err(Invalid::new("type", "must be a string")),
            None => return Err(Invalid::new("type", "is required, e.g. \"user.created\"")),
        };
        let data = match self.data {
            Some(Field::Other(tree @ Value::Object(_))) => stored_data(&tree)?,
            Some(Field::Raw(text)) if text.get().starts_with('{') => data_from_text(text)?,
            Some(_) => return Err(Invalid::new("data", "must be a JSON object")),
            None => {
                return Err(Invalid::new(
                    "data",
                    "is required (a JSON object; {} if empty)",
                ));
            }
        };
        let id = match self.id {
            Some(Field::Text(id)) => parse_new_event_id(&id)?,
            Some(Field::Null) | None => generate_event_id(),
            Some(_) => return Err(Invalid::new("id", "must be a string")),
        };
        let occurred_at = match self.occurred_at {
            Some(Field::Text(t)) => Some(Timestamp::parse_rfc3339(&t, "occurred_at")?),
            Some(Field::Null) | None => None,
            Some(_) => return Err(Invalid::new("occurred_at", "must be an RFC 3339 string")),
        };
        let correlation_id = match self.correlation_id {
            Some(Field::Text(c)) => Some(parse_correlation_id(&c)?),
            Some(Field::Null) | None => None,
            Some(_) => return Err(Invalid::new("correlation_id", "must be a string")),
        };
        Ok(NewEvent {
            id,
            event_type,
            occurred_at,
            correlation_id,
            data,
        })
    }
}

/// Data posted as text: kept as it is when it is already the stored form, else parsed and
/// written as JavaScript writes it.
fn data_from_text(text: &RawValue) -> Result<Box<RawValue>, Invalid> {
    if crate::js_json::is_written_as_javascript_writes_it(text.get(), MAX_DATA_DEPTH) {
        return Ok(text.to_owned());
    }
    let tree: Value = serde_json::from_str(text.get()).map_err(|e| {
        // Past serde_json's own nesting limit, or what splitting the body let through.
        if nested_deeper_than(text.get(), MAX_DATA_DEPTH) {
            too_deep()
        } else {
            Invalid::new("data", js_json::unreadable(&e, "the data"))
        }
    })?;
    stored_data(&tree)
}

/// Whether JSON `text` opens more than `max` objects or arrays inside one another.
fn nested_deeper_than(text: &str, max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        match (in_string, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') => in_string = false,
            (true, false, _) => {}
            (false, _, b'"') => in_string = true,
            (false, _, b'{' | b'[') => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            (false, _, b'}' | b']') => depth = depth.saturating_sub(1),
            (false, _, _) => {}
        }
    }
    false
}

/// A data object checked for depth and written as Herald stores it.
fn stored_data(tree: &Value) -> Result<Box<RawValue>, Invalid> {
    if depth(tree) > MAX_DATA_DEPTH {
        return Err(too_deep());
    }
    // Stored exactly as JavaScript would write it, so every profile can embed it as it is.
    let text = crate::js_json::to_string(tree);
    Ok(RawValue::from_string(text).expect("serde_json output is valid JSON"))
}

fn too_deep() -> Invalid {
    Invalid::new(
        "data",
        format!("is nested deeper than {MAX_DATA_DEPTH} levels"),
    )
}

/// A new event id (`evt_` and a ULID), for an event posted without one.
pub fn generate_event_id() -> String {
    format!("evt_{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// An idempotency key: 1 to 255 visible ASCII characters.
pub fn parse_event_id(raw: &str) -> Result<String, Invalid> {
    visible_ascii("id", raw)
}

/// A new event's id: as [`parse_event_id`], but not `.` or `..`, which every URL reads as a
/// step in its path (encoded or not), so that the event could never be looked up by id. Ids
/// stored before are still found where they can be (the dashboard's search, list cursors).
fn parse_new_event_id(raw: &str) -> Result<String, Invalid> {
    if matches!(raw, "." | "..") {
        return Err(Invalid::new(
            "id",
            "cannot be '.' or '..', which URLs read as a step in their path: the event could \
             not be looked up by its id",
        ));
    }
    parse_event_id(raw)
}

/// A correlation id: 1 to 255 visible ASCII characters, as an event id. Profiles send it in
/// headers (CloudEvents' `ce-correlationid`), where anything else would arrive mangled.
fn parse_correlation_id(raw: &str) -> Result<String, Invalid> {
    visible_ascii("correlation_id", raw)
}

fn visible_ascii(field: &str, raw: &str) -> Result<String, Invalid> {
    if raw.is_empty() || raw.len() > 255 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid::new(
            field,
            "must be 1 to 255 visible ASCII characters (no spaces)",
        ));
    }
    Ok(raw.to_owned())
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_cursor_reads_back_what_it_wrote_and_nothing_else() {
        let cursor = EventCursor {
            received_at: Timestamp::from_millis(1_733_461_234_567),
            id: "tenant/42?x#1%&.".into(),
        };
        let written = cursor.to_string();
        // Safe in a query string as it is.
        assert!(
            written
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        );
        assert_eq!(EventCursor::parse(&written), Ok(cursor));
        let longest = EventCursor {
            received_at: Timestamp::from_millis(i64::MAX),
            id: "x".repeat(255),
        };
        let written = longest.to_string();
        assert!(crate::PageRequest::new(None, Some(written.clone())).is_ok());
        assert_eq!(EventCursor::parse(&written), Ok(longest));
        // What no cursor is: no time, no id, an id no event can have (a space), not base64.
        for bad in ["", "123", "x.ZQ", "123.", "123.ZSBl", "123.!!"] {
            assert!(EventCursor::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_correlation_id_is_visible_ascii_as_an_event_id() {
        let with = |c: &str| {
            NewEvent::parse(json!({"type": "user.created", "data": {}, "correlation_id": c}))
        };
        assert_eq!(
            with("req-9").unwrap().correlation_id.as_deref(),
            Some("req-9")
        );
        assert!(with(&"a".repeat(255)).is_ok());
        // Spaces, invisible and non-ASCII characters would reach receivers mangled in a header;
        // 128 two-byte characters are 256 bytes.
        for bad in [
            "",
            " ",
            "a b",
            "\u{200b}",
            "\u{feff}",
            "caf\u{e9}",
            "\u{1f600}",
            "\u{202e}x",
        ] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.field, "correlation_id", "{bad:?}");
            assert!(
                e.message.contains("visible ASCII"),
                "{bad:?}: {}",
                e.message
            );
        }
        assert!(with(&"a".repeat(256)).is_err());
        assert!(with(&"\u{e9}".repeat(128)).is_err());
    }

    #[test]
    fn a_new_event_id_cannot_be_a_dot_segment() {
        let with =
            |id: &str| NewEvent::parse(json!({"type": "user.created", "data": {}, "id": id}));
        for dots in [".", ".."] {
            let e = with(dots).unwrap_err();
            assert_eq!(e.field, "id");
            assert!(e.message.contains("looked up"), "{}", e.message);
            let raw: Box<RawValue> =
                serde_json::from_str(&json!({"type": "a", "data": {}, "id": dots}).to_string())
                    .unwrap();
            assert_eq!(NewEvent::parse_text(&raw).unwrap_err().field, "id");
            // One stored before is still looked up (the dashboard's search, a list's cursor).
            assert_eq!(parse_event_id(dots).as_deref(), Ok(dots));
        }
        for fine in ["...", ".a", "./", "a/..", "%2e"] {
            assert_eq!(with(fine).unwrap().id, fine);
        }
    }

    #[test]
    fn a_minimal_event_gets_a_generated_id() {
        let e = NewEvent::parse(json!({"type": "user.created", "data": {}})).unwrap();
        assert!(e.id.starts_with("evt_"));
        assert_eq!(e.occurred_at, None);
    }

    #[test]
    fn missing_or_mistyped_fields_are_named() {
        assert_eq!(
            NewEvent::parse(json!({"data": {}})).unwrap_err().field,
            "type"
        );
        assert_eq!(
            NewEvent::parse(json!({"type": "a"})).unwrap_err().field,
            "data"
        );
        assert_eq!(
            NewEvent::parse(json!({"type": "a", "data": []}))
                .unwrap_err()
                .field,
            "data"
        );
        assert_eq!(
            NewEvent::parse(json!({"type": "a", "data": {}, "typo": 1}))
                .unwrap_err()
                .field,
            "typo"
        );
        assert_eq!(
            NewEvent::parse(json!({"type": "a", "data": {}, "occurred_at": "soon"}))
                .unwrap_err()
                .field,
            "occurred_at"
        );
    }

    /// The producer API's path: data already in the stored form is kept byte for byte, and
    /// anything JavaScript would write differently is rewritten as the tree path writes it.
    #[test]
    fn data_posted_as_text_is_stored_as_javascript_writes_it() {
        let cases = [
            (
                r#"{"a":1,"b":[true,null,"x\"y\n"],"c":{}}"#,
                r#"{"a":1,"b":[true,null,"x\"y\n"],"c":{}}"#,
            ),
            (r#"{ "a": 1 }"#, r#"{"a":1}"#),
            (r#"{"n":1.0,"m":1e3,"z":-0}"#, r#"{"n":1,"m":1000,"z":0}"#),
            (r#"{"s":"\u0041\/"}"#, r#"{"s":"A/"}"#),
            (r#"{"b":1,"1":2}"#, r#"{"1":2,"b":1}"#),
            (r#"{"a":1,"a":2}"#, r#"{"a":2}"#),
            (
                r#"{"big":12345678901234567890}"#,
                r#"{"big":12345678901234567000}"#,
            ),
            (
                r#"{"safe":-999999999999999}"#,
                r#"{"safe":-999999999999999}"#,
            ),
        ];
        for (posted, stored) in cases {
            let text = format!(r#"{{"type":"a","data":{posted}}}"#);
            let raw: Box<RawValue> = serde_json::from_str(&text).unwrap();
            let e = NewEvent::parse_text(&raw).unwrap();
            assert_eq!(e.data.get(), stored, "{posted}");
        }
    }

    #[test]
    fn events_posted_as_text_are_checked_as_trees_are() {
        let fails = |text: &str| {
            let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
            NewEvent::parse_text(&raw).unwrap_err().field
        };
        assert_eq!(fails(r#"[1]"#), "");
        assert_eq!(fails(r#"{"type":1,"data":{}}"#), "type");
        assert_eq!(fails(r#"{"type":"a","data":[]}"#), "data");
        assert_eq!(fails(r#"{"type":"a","data":{},"typo":1}"#), "typo");
        assert_eq!(fails(r#"{"type":"a","data":{},"id":7}"#), "id");
        // JSON leaves a repeated key's meaning open; the schema check and the delivery must
        // not read different ones.
        assert_eq!(fails(r#"{"type":"a","data":{},"type":"b"}"#), "type");
        let deep = format!(
            r#"{{"type":"a","data":{}{{}}{}}}"#,
            r#"{"a":"#.repeat(40),
            "}".repeat(40)
        );
        assert_eq!(fails(&deep), "data");
        let surrogate = fails(r#"{"type":"a","data":{"s":"\ud800"}}"#);
        assert_eq!(surrogate, "data");
        let raw: Box<RawValue> =
            serde_json::from_str(r#"{"type":"a","data":{"n":1e400}}"#).unwrap();
        let message = NewEvent::parse_text(&raw).unwrap_err().message;
        assert!(
            message.contains("past the largest a double holds"),
            "{message}"
        );
        assert_eq!(fails(r#"{"type":"\ud800","data":{}}"#), "type");
        let deeper = format!(
            r#"{{"type":"a","data":{{"a":{}{}}}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(fails(&deeper), "data");
    }

    #[test]
    fn integral_floats_are_written_as_javascript_writes_them() {
        let e = NewEvent::parse(json!({"type": "a", "data": {"n": 1.0, "m": [2.5, 3.0]}})).unwrap();
        let stored = e.into_event(OrgId::generate(), Timestamp::from_millis(0));
        assert_eq!(stored.data.get(), r#"{"n":1,"m":[2.5,3]}"#);
    }

    #[test]
    fn key_order_is_kept() {
        let e =
            NewEvent::parse(serde_json::from_str(r#"{"type":"a","data":{"z":1,"a":2}}"#).unwrap())
                .unwrap();
        let stored = e.into_event(OrgId::generate(), Timestamp::from_millis(0));
        assert_eq!(stored.data.get(), r#"{"z":1,"a":2}"#);
    }

    #[test]
    fn absurdly_deep_data_is_refused() {
        let mut data = json!({});
        for _ in 0..40 {
            data = json!({ "a": data });
        }
        assert_eq!(
            NewEvent::parse(json!({"type": "a", "data": data}))
                .unwrap_err()
                .field,
            "data"
        );
    }
}
