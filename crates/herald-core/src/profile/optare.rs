//! The `optare` body: `{"event", "timestamp", "id", "data", "organization": {"id", "name"}}`.

use serde_json::json;

use super::{RenderInput, written};
use crate::js_json::ObjectWriter;

pub(super) fn body(input: &RenderInput<'_>) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let e = input.event;
    let body = ObjectWriter::new()
        .string("event", &e.event_type)
        .string("timestamp", &e.occurred_at.to_rfc3339_secs())
        .string("id", &e.id)
        .raw("data", e.data.get())
        .value(
            "organization",
            &json!({ "id": input.org.id.as_str(), "name": input.org.name }),
        )
        .finish();
    written(body, "application/json")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::profile::ProfileName;
    use crate::profile::fixtures::*;

    #[test]
    fn an_optare_envelope_carries_the_event_id_and_organization() {
        let secret = ProfileName::Optare.secret_policy().generate().unwrap();
        let hook = webhook(ProfileName::Optare, &secret);
        let (body, headers) = render_with(
            &hook,
            &event("user.created", json!({ "user": { "id": "user_123" } })),
        );
        assert_eq!(
            body,
            r#"{"event":"user.created","timestamp":"2023-11-14T22:13:20Z","id":"evt_1","data":{"user":{"id":"user_123"}},"organization":{"id":"org_01jd0000000000000000000000","name":"Acme Inc"}}"#
        );
        herald_signature::hex::verify(
            &secret,
            header(&headers, "x-optare-signature"),
            body.as_bytes(),
        )
        .unwrap();
    }
}
