//! The `standard` body: `{"type","timestamp","data"}`.

use super::{RenderInput, written};
use crate::js_json::ObjectWriter;

pub(super) fn body(input: &RenderInput<'_>) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let e = input.event;
    let data = e.data.get();
    // `{"type":"…","timestamp":"2023-11-14T22:13:20.000Z","data":…}`: 58 bytes around the two.
    let body = ObjectWriter::with_capacity(64 + e.event_type.len() + data.len())
        .string("type", &e.event_type)
        .string("timestamp", &e.occurred_at.to_rfc3339())
        .raw("data", data)
        .finish();
    written(body, "application/json")
}

#[cfg(test)]
mod tests {
    use herald_signature::standard::{SigningKey, verify};
    use serde_json::json;

    use crate::profile::ProfileName;
    use crate::profile::fixtures::*;

    #[test]
    fn the_body_is_compact_and_the_signature_verifies() {
        let secret = ProfileName::Standard.secret_policy().generate().unwrap();
        let hook = webhook(ProfileName::Standard, &secret);
        let (body, headers) = render_with(
            &hook,
            &event(
                "user.created",
                json!({ "user": { "id": "u1", "name": "Zoë \"Z\"" } }),
            ),
        );
        assert_eq!(
            body,
            r#"{"type":"user.created","timestamp":"2023-11-14T22:13:20.000Z","data":{"user":{"id":"u1","name":"Zoë \"Z\""}}}"#
        );
        assert_eq!(header(&headers, "content-type"), "application/json");
        assert_eq!(
            header(&headers, "webhook-id"),
            "dlv_01jd0000000000000000000000"
        );
        let key = SigningKey::parse(&secret).unwrap();
        verify(
            &key,
            header(&headers, "webhook-id"),
            header(&headers, "webhook-timestamp"),
            header(&headers, "webhook-signature"),
            body.as_bytes(),
            1_700_000_001,
            300,
        )
        .unwrap();
    }
}
