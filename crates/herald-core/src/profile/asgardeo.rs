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

/// Every token carries an `rci`. When the producer sent no `correlation_id`, one is derived from
/// the organization and the event id: a UUID (version 8, RFC 9562) that every attempt and every
/// node renders the same, with nothing more to store.
fn derived_rci(e: &crate::event::Event) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"herald rci\0")
        .chain_update(e.org_id.as_str())
        .chain_update(b"\0")
        .chain_update(&e.id)
        .finalize();
    let mut b: [u8; 16] = digest[..16].try_into().expect("16 of 32 bytes");
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    crate::ids::uuid_string(b)
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
    set = match &e.correlation_id {
        Some(rci) => set.string("rci", rci),
        None => set.string("rci", &derived_rci(e)),
    };
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

    #[test]
    fn without_a_correlation_id_the_rci_is_a_uuid_derived_from_the_event() {
        let hook = webhook(ProfileName::Asgardeo, "asgardeo-secret-0123456789");
        let mut e = event("loginSuccess", json!({}));
        e.correlation_id = None;
        let rci = |e: &crate::event::Event| {
            let (body, _) = render_with(&hook, e);
            let set: serde_json::Value = serde_json::from_str(&body).unwrap();
            set["rci"].as_str().unwrap().to_owned()
        };
        let first = rci(&e);
        // 8-4-4-4-12 hex digits, version 8, RFC 9562's variant.
        let groups: Vec<usize> = first.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{first}");
        assert!(first.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        assert_eq!(&first[14..15], "8", "{first}");
        assert!("89ab".contains(&first[19..20]), "{first}");
        // The same on every attempt; another event's is another.
        assert_eq!(rci(&e), first);
        e.id = "evt_2".into();
        assert_ne!(rci(&e), first);
    }
}
