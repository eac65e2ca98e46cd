//! The `permit` body: the data fields flat, plus `"type"`.

use serde_json::{Value, json};

use super::{RenderInput, data_object, json_body};

pub(super) fn body(input: &RenderInput<'_>) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let mut fields = data_object(input.event);
    fields.insert("type".into(), json!(input.event.event_type));
    json_body(&Value::Object(fields), "application/json")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::profile::ProfileName;
    use crate::profile::fixtures::*;

    #[test]
    fn a_permit_body_is_flat_with_its_type() {
        let secret = "typed-in-by-the-user-42";
        let hook = webhook(ProfileName::Permit, secret);
        let (body, headers) = render_with(
            &hook,
            &event(
                "create_user",
                json!({ "email": "a@example.com", "tenant_key": "default" }),
            ),
        );
        assert_eq!(
            body,
            r#"{"email":"a@example.com","tenant_key":"default","type":"create_user"}"#
        );
        let key = herald_signature::standard::SigningKey::from_raw_secret(secret).unwrap();
        herald_signature::standard::verify(
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
