//! Events as producers post them, and as Herald keeps them.

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::{Invalid, OrgId, Timestamp};

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

/// An event as posted, checked for shape but not yet against the organization's types.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// The producer's idempotency key, or a generated `evt_…`.
    pub id: String,
    pub event_type: String,
    pub occurred_at: Option<Timestamp>,
    pub correlation_id: Option<String>,
    pub data: Value,
}

impl NewEvent {
    /// Parses one event object of a request body.
    pub fn parse(raw: Value) -> Result<Self, Invalid> {
        let Value::Object(mut obj) = raw else {
            return Err(Invalid::new(
                "",
                "each event must be a JSON object like {\"type\": \"user.created\", \"data\": {…}}",
            ));
        };
        if let Some(unknown) = obj.keys().find(|k| {
            !matches!(
                k.as_str(),
                "type" | "data" | "id" | "occurred_at" | "correlation_id"
            )
        }) {
            return Err(Invalid::new(
                crate::truncate_for_message(unknown),
                "is not an event field; use type, data, id, occurred_at and correlation_id",
            ));
        }
        let event_type = match obj.remove("type") {
            Some(Value::String(t)) => crate::event_type::parse_type_name(&t, "type")?,
            Some(_) => return Err(Invalid::new("type", "must be a string")),
            None => return Err(Invalid::new("type", "is required, e.g. \"user.created\"")),
        };
        let data = match obj.remove("data") {
            Some(d @ Value::Object(_)) => d,
            Some(_) => return Err(Invalid::new("data", "must be a JSON object")),
            None => {
                return Err(Invalid::new(
                    "data",
                    "is required (a JSON object; {} if empty)",
                ));
            }
        };
        if depth(&data) > MAX_DATA_DEPTH {
            return Err(Invalid::new(
                "data",
                format!("is nested deeper than {MAX_DATA_DEPTH} levels"),
            ));
        }
        let id = match obj.remove("id") {
            Some(Value::String(id)) => parse_event_id(&id)?,
            Some(Value::Null) | None => {
                format!("evt_{}", ulid::Ulid::new().to_string().to_lowercase())
            }
            Some(_) => return Err(Invalid::new("id", "must be a string")),
        };
        let occurred_at = match obj.remove("occurred_at") {
            Some(Value::String(t)) => Some(Timestamp::parse_rfc3339(&t, "occurred_at")?),
            Some(Value::Null) | None => None,
            Some(_) => return Err(Invalid::new("occurred_at", "must be an RFC 3339 string")),
        };
        let correlation_id = match obj.remove("correlation_id") {
            Some(Value::String(c)) => Some(parse_correlation_id(&c)?),
            Some(Value::Null) | None => None,
            Some(_) => return Err(Invalid::new("correlation_id", "must be a string")),
        };
        Ok(Self {
            id,
            event_type,
            occurred_at,
            correlation_id,
            data,
        })
    }

    /// Turns the checked input into the stored form.
    pub fn into_event(self, org_id: OrgId, received_at: Timestamp) -> Event {
        // Stored exactly as JavaScript would write it, so every profile can embed it as it is.
        let text = crate::js_json::to_string(&self.data);
        Event {
            id: self.id,
            org_id,
            event_type: self.event_type,
            occurred_at: self.occurred_at.unwrap_or(received_at),
            received_at,
            correlation_id: self.correlation_id,
            data: RawValue::from_string(text).expect("serde_json output is valid JSON"),
        }
    }
}

/// An idempotency key: 1 to 255 visible ASCII characters.
pub fn parse_event_id(raw: &str) -> Result<String, Invalid> {
    if raw.is_empty() || raw.len() > 255 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Invalid::new(
            "id",
            "must be 1 to 255 visible ASCII characters (no spaces)",
        ));
    }
    Ok(raw.to_owned())
}

fn parse_correlation_id(raw: &str) -> Result<String, Invalid> {
    if raw.is_empty() || raw.len() > 255 || raw.chars().any(char::is_control) {
        return Err(Invalid::new(
            "correlation_id",
            "must be 1 to 255 characters without control characters",
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
