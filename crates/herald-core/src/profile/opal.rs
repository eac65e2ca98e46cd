//! The `opal` body: `{"event_ts", "organization_id", "events": [{"event_type", ...data}]}`.

use serde_json::{Map, Value, json};

use super::{RenderInput, data_object, json_body};

/// One body for one or several events of one organization (Opal's batch window).
pub(super) fn body(inputs: &[RenderInput<'_>]) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let events: Vec<Value> = inputs.iter().map(|i| event(i)).collect();
    let input = &inputs[0];
    json_body(
        &json!({
            "event_ts": input.event.occurred_at.as_secs(),
            "organization_id": input.org.id.as_str(),
            "events": events,
        }),
        "application/json",
    )
}

fn event(input: &RenderInput<'_>) -> Value {
    let e = input.event;
    let mut event = Map::new();
    event.insert("event_type".into(), json!(e.event_type));
    for (k, v) in data_object(e) {
        // The type is Herald's to say; a data field of the same name does not replace it.
        if k != "event_type" {
            event.insert(k, v);
        }
    }
    Value::Object(event)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::profile::ProfileName;
    use crate::profile::fixtures::*;

    #[test]
    fn an_opal_body_is_signed_over_v0_timestamp_and_body() {
        let hook = webhook(ProfileName::Opal, "opal-signing-secret-0123456789");
        let data = json!({ "resource_type": "CUSTOM", "user_id": "alice@example.com", "resource_id": "0eb35db24007c8148", "access_level": "admin" });
        let (body, headers) = render_with(&hook, &event("USER_ADDED_TO_RESOURCE", data));
        assert_eq!(
            body,
            r#"{"event_ts":1700000000,"organization_id":"org_01jd0000000000000000000000","events":[{"event_type":"USER_ADDED_TO_RESOURCE","resource_type":"CUSTOM","user_id":"alice@example.com","resource_id":"0eb35db24007c8148","access_level":"admin"}]}"#
        );
        let ts = header(&headers, "x-opal-request-timestamp");
        assert_eq!(ts, "1700000001");
        herald_signature::opal::verify(
            "opal-signing-secret-0123456789",
            ts,
            header(&headers, "x-opal-signature"),
            body.as_bytes(),
            1_700_000_001,
            300,
        )
        .unwrap();
    }
}
