//! The `standard` profile: `{"type","timestamp","data"}` signed the Standard Webhooks way.

use herald_signature::standard::{self, SigningKey};
use rand::RngCore;

use super::{OutgoingRequest, Profile, RenderInput, push_json_str};
use crate::Invalid;

#[derive(Debug, Clone, Copy, Default)]
pub struct Standard;

impl Profile for Standard {
    fn render(&self, input: &RenderInput<'_>) -> OutgoingRequest {
        let event = input.event;
        let data = event.data.get();
        let mut body = Vec::with_capacity(data.len() + 96);
        body.extend_from_slice(b"{\"type\":");
        push_json_str(&mut body, &event.event_type);
        body.extend_from_slice(b",\"timestamp\":");
        push_json_str(&mut body, &event.occurred_at.to_rfc3339());
        body.extend_from_slice(b",\"data\":");
        body.extend_from_slice(data.as_bytes());
        body.push(b'}');

        let msg_id = input.delivery_id.as_str();
        let ts = input.now.as_secs();
        // Secrets were checked when they were stored; one that no longer parses signs nothing
        // rather than taking the dispatcher down.
        let keys: Vec<SigningKey> = input
            .webhook
            .signing_secrets(input.now)
            .into_iter()
            .filter_map(|s| SigningKey::parse(s).ok())
            .collect();
        let key_refs: Vec<&SigningKey> = keys.iter().collect();
        let signature = standard::signature_header(&key_refs, msg_id, ts, &body);
        OutgoingRequest {
            body,
            headers: vec![
                ("content-type", "application/json".to_owned()),
                (standard::HEADER_ID, msg_id.to_owned()),
                (standard::HEADER_TIMESTAMP, ts.to_string()),
                (standard::HEADER_SIGNATURE, signature),
            ],
        }
    }

    fn generate_secret(&self) -> String {
        let mut key = vec![0u8; 32];
        rand::rng().fill_bytes(&mut key);
        SigningKey::from_bytes(key)
            .expect("32 bytes is a valid key length")
            .to_secret_string()
    }

    fn parse_secret(&self, raw: &str) -> Result<String, Invalid> {
        let key = SigningKey::parse(raw.trim()).map_err(|e| {
            Invalid::new(
                "secret",
                format!("{e}; a standard secret is whsec_ followed by base64 of 24 to 64 random bytes (omit it to have one generated)"),
            )
        })?;
        Ok(key.to_secret_string())
    }

    fn default_timeout_ms(&self) -> u32 {
        15_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NewEvent;
    use crate::org::{OrgHandle, Organization};
    use crate::profile::ProfileName;
    use crate::webhook::{Webhook, WebhookUrl};
    use crate::{DeliveryId, OrgId, Timestamp, WebhookId};

    fn fixture(secret: String) -> (Organization, Webhook, crate::event::Event) {
        let org = Organization {
            id: OrgId::generate(),
            name: "Acme".into(),
            handle: OrgHandle::from_name("Acme"),
            catalogs: vec![],
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        };
        let webhook = Webhook {
            id: WebhookId::generate(),
            org_id: org.id.clone(),
            name: "w".into(),
            description: None,
            url: WebhookUrl::parse("https://example.com/h").unwrap(),
            events: vec!["*".into()],
            channels: vec![],
            profile: ProfileName::Standard,
            secret,
            previous_secret: None,
            previous_secret_expires_at: None,
            active: true,
            headers: Default::default(),
            timeout_ms: None,
            retry_schedule: None,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        };
        let event = NewEvent::parse(serde_json::json!({"type":"user.created","data":{"user":{"id":"u1","name":"Zoë \"Z\""}}}))
            .unwrap()
            .into_event(org.id.clone(), Timestamp::from_millis(1_700_000_000_000));
        (org, webhook, event)
    }

    #[test]
    fn the_body_is_compact_json_and_the_signature_verifies() {
        let secret = Standard.generate_secret();
        let (org, webhook, event) = fixture(secret.clone());
        let delivery_id = DeliveryId::generate();
        let now = Timestamp::from_millis(1_700_000_001_000);
        let out = Standard.render(&RenderInput {
            event: &event,
            webhook: &webhook,
            org: &org,
            delivery_id: &delivery_id,
            now,
        });
        let body = String::from_utf8(out.body.clone()).unwrap();
        assert_eq!(
            body,
            r#"{"type":"user.created","timestamp":"2023-11-14T22:13:20.000Z","data":{"user":{"id":"u1","name":"Zoë \"Z\""}}}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            serde_json::to_string(&parsed).unwrap(),
            body,
            "compact and stable"
        );
        let header = |n: &str| out.headers.iter().find(|(k, _)| *k == n).unwrap().1.clone();
        let key = SigningKey::parse(&secret).unwrap();
        standard::verify(
            &key,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &header("webhook-signature"),
            &out.body,
            now.as_secs(),
            300,
        )
        .unwrap();
    }

    #[test]
    fn a_user_secret_must_be_a_standard_webhooks_secret() {
        assert!(Standard.parse_secret("hunter2").is_err());
        let generated = Standard.generate_secret();
        assert_eq!(Standard.parse_secret(&generated).unwrap(), generated);
    }
}
