//! The `permit` body: the data fields flat, plus `"type"` where Permit's has one.

use serde_json::{Value, json};

use super::{RenderInput, data_object, json_body};

/// The catalog's types whose bodies carry no `type`: Permit's docs give the Access Request
/// and Operation Approval webhooks none (their schemas end without one, where the user
/// webhooks' end with `type: ElementsWebhookType`), so a receiver's model of them may refuse
/// one.
const WITHOUT_TYPE: [&str; 2] = ["access_request", "operation_approval"];

pub(super) fn body(input: &RenderInput<'_>) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let mut fields = data_object(input.event);
    let event_type = input.event.event_type.as_str();
    if !WITHOUT_TYPE.contains(&event_type) {
        fields.insert("type".into(), json!(event_type));
    }
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

    #[test]
    fn access_requests_and_operation_approvals_carry_no_type() {
        let hook = webhook(ProfileName::Permit, "typed-in-by-the-user-42");
        for event_type in ["access_request", "operation_approval"] {
            let (body, _) = render_with(
                &hook,
                &event(
                    event_type,
                    json!({ "requesting_user_id": "u1", "status": "pending" }),
                ),
            );
            assert_eq!(body, r#"{"requesting_user_id":"u1","status":"pending"}"#);
        }
    }
}
