//! The `asgardeo` body: a Security Event Token (RFC 8417) as JSON:
//! `{"iss", "jti", "iat" (ms), "rci", "events": {"<event URI>": data}}`.

use serde_json::json;

use super::{RenderInput, written};
use crate::js_json::ObjectWriter;

/// The event URI: the catalog's, or one built the same way under this server's URL.
fn event_uri(input: &RenderInput<'_>) -> String {
    match input.type_uri {
        Some(uri) => uri.to_owned(),
        None => format!(
            "{}/schemas/events/{}/event-type/{}",
            input.public_url.trim_end_matches('/'),
            input.channel.unwrap_or("custom"),
            input.event.event_type
        ),
    }
}

pub(super) fn body(input: &RenderInput<'_>) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let e = input.event;
    let iss = format!(
        "{}/t/{}",
        input.public_url.trim_end_matches('/'),
        input.org.handle.as_str()
    );
    let mut set = ObjectWriter::new()
        .string("iss", &iss)
        .string("jti", &e.id)
        .value("iat", &json!(e.occurred_at.as_millis()));
    if let Some(rci) = &e.correlation_id {
        set = set.string("rci", rci);
    }
    let events = ObjectWriter::new()
        .raw(&event_uri(input), e.data.get())
        .finish();
    written(set.raw("events", &events).finish(), "application/json")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::profile::ProfileName;
    use crate::profile::fixtures::*;

    #[test]
    fn an_asgardeo_body_is_a_security_event_token_signed_with_a_hub_signature() {
        let hook = webhook(ProfileName::Asgardeo, "asgardeo-secret-0123456789");
        let (body, headers) = render_with(
            &hook,
            &event("loginSuccess", json!({ "user": { "id": "d400" } })),
        );
        assert_eq!(
            body,
            r#"{"iss":"https://herald.example.com/t/acme-inc","jti":"evt_1","iat":1700000000000,"rci":"req-9","events":{"https://herald.example.com/schemas/events/user/event-type/loginSuccess":{"user":{"id":"d400"}}}}"#
        );
        herald_signature::hub::verify(
            "asgardeo-secret-0123456789",
            header(&headers, "x-hub-signature"),
            body.as_bytes(),
        )
        .unwrap();
    }
}
