//! Profiles: how a delivery looks on the wire. A profile fixes a body format, a default
//! signature scheme, a secret policy and default timeout; a webhook may override the scheme and
//! the timeout. Formats and schemes are independent: any event renders in any profile.
//!
//! Every body is compact JSON written the way JavaScript writes it (see [`crate::js_json`]), so a
//! receiver that verifies over `JSON.stringify(JSON.parse(body))` sees the very bytes signed.

mod asgardeo;
mod cloudevents;
mod opal;
mod optare;
mod parallelworks;
mod permit;
mod secret;
mod signature;
mod standard;

use serde::{Serialize, Serializer};

use crate::event::Event;
use crate::org::Organization;
use crate::retry::RetrySchedule;
use crate::webhook::Webhook;
use crate::{DeliveryId, Invalid, Timestamp};

pub use secret::{ENCRYPTED_MARK, SecretPolicy};
pub use signature::SignatureScheme;

/// What a profile needs to render one attempt.
#[derive(Debug, Clone, Copy)]
pub struct RenderInput<'a> {
    pub event: &'a Event,
    pub webhook: &'a Webhook,
    pub org: &'a Organization,
    pub delivery_id: &'a DeliveryId,
    /// When this attempt is made: signatures carry it, so a replayed request can be refused.
    pub now: Timestamp,
    /// This server's public base URL (issuers and sources are built from it).
    pub public_url: &'a str,
    /// The event type's channel, if it has one.
    pub channel: Option<&'a str>,
    /// The event type's URI in its catalog, if it has one (Asgardeo's event URIs).
    pub type_uri: Option<&'a str>,
}

/// A rendered request: the exact bytes to send and the headers that go with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRequest {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
    /// Header names go out in Title-Case (`X-Opal-Signature`) rather than lower case
    /// ([`SignatureScheme::title_case_headers`]).
    pub title_case_headers: bool,
}

/// Renders the body in the webhook's profile and signs it with its scheme.
pub fn render(input: &RenderInput<'_>) -> OutgoingRequest {
    render_batch(std::slice::from_ref(input))
}

/// Renders several deliveries of one webhook into one request. Only a profile whose body
/// carries a list of events (Opal) puts them all in; any other renders the first alone, so
/// callers batch only for webhooks with a batch window, which only Opal allows. The delivery
/// ids are joined with commas in the id header.
pub fn render_batch(inputs: &[RenderInput<'_>]) -> OutgoingRequest {
    let input = &inputs[0];
    let webhook = input.webhook;
    let (body, mut headers) = match webhook.profile {
        ProfileName::Opal => opal::body(inputs),
        ProfileName::Standard => standard::body(input),
        ProfileName::Optare => optare::body(input),
        ProfileName::ParallelWorks => parallelworks::body(input),
        ProfileName::Permit => permit::body(input),
        ProfileName::Asgardeo => asgardeo::body(input),
        ProfileName::CloudEvents => cloudevents::body(input),
    };
    // The message id signed: the delivery's id, or a batch's ids joined by commas.
    let joined;
    let msg_id = match inputs {
        [one] => one.delivery_id.as_str(),
        _ => {
            let ids: Vec<&str> = inputs.iter().map(|i| i.delivery_id.as_str()).collect();
            joined = ids.join(",");
            &joined
        }
    };
    let scheme = webhook.effective_signature();
    headers.extend(scheme.sign(
        &webhook.signing_secrets(input.now),
        msg_id,
        input.now,
        &body,
    ));
    OutgoingRequest {
        body,
        headers,
        title_case_headers: scheme.title_case_headers(),
    }
}

/// The built-in profiles by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfileName {
    Standard,
    Opal,
    Optare,
    ParallelWorks,
    Permit,
    Asgardeo,
    CloudEvents,
}

impl ProfileName {
    pub const ALL: &'static [ProfileName] = &[
        ProfileName::Standard,
        ProfileName::Opal,
        ProfileName::Optare,
        ProfileName::ParallelWorks,
        ProfileName::Permit,
        ProfileName::Asgardeo,
        ProfileName::CloudEvents,
    ];

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        Self::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == raw)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|p| p.as_str()).collect();
                Invalid::new(
                    "profile",
                    format!(
                        "'{}' is not a profile{}; choose from: {}",
                        crate::truncate_for_message(raw),
                        crate::suggest::did_you_mean(crate::suggest::closest(
                            raw,
                            names.iter().copied()
                        )),
                        names.join(", ")
                    ),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Opal => "opal",
            Self::Optare => "optare",
            Self::ParallelWorks => "parallelworks",
            Self::Permit => "permit",
            Self::Asgardeo => "asgardeo",
            Self::CloudEvents => "cloudevents",
        }
    }

    /// The signature scheme a webhook of this profile uses unless it overrides it.
    pub fn default_signature(self) -> SignatureScheme {
        match self {
            Self::Standard | Self::ParallelWorks | Self::Permit | Self::CloudEvents => {
                SignatureScheme::Standard
            }
            Self::Opal => SignatureScheme::Opal,
            Self::Optare => SignatureScheme::Optare,
            Self::Asgardeo => SignatureScheme::Hub,
        }
    }

    pub fn default_timeout_ms(self) -> u32 {
        match self {
            Self::Opal => 3_000,
            Self::Optare => 30_000,
            _ => 15_000,
        }
    }

    pub fn default_retry_schedule(self) -> RetrySchedule {
        RetrySchedule::standard()
    }

    /// How secrets are made and checked for this profile.
    pub fn secret_policy(self) -> SecretPolicy {
        match self {
            Self::Standard | Self::ParallelWorks | Self::CloudEvents => SecretPolicy::StandardKey,
            Self::Optare | Self::Opal | Self::Asgardeo => SecretPolicy::Hex,
            Self::Permit => SecretPolicy::UserSupplied,
        }
    }

    /// Whether a new webhook of this profile starts active (Asgardeo's start inactive, to be
    /// verified and switched on).
    pub fn active_on_creation(self) -> bool {
        self != Self::Asgardeo
    }

    /// Whether a webhook of this profile verifies its intent (WebSub) unless told otherwise.
    pub fn default_verification(self) -> crate::subscription::Verification {
        match self {
            Self::Asgardeo => crate::subscription::Verification::Websub,
            _ => crate::subscription::Verification::None,
        }
    }

    /// Whether this profile refuses plain `http://` URLs unless the server allows them.
    pub fn requires_https(self) -> bool {
        self == Self::Asgardeo
    }

    /// Whether one request may carry several events (Opal's `events` list).
    pub fn batches_events(self) -> bool {
        self == Self::Opal
    }

    /// Whether a webhook of this profile must be the only one of its organization.
    pub fn one_per_organization(self) -> bool {
        self == Self::Opal
    }
}

/// A string naming one of [`ProfileName::ALL`].
impl utoipa::PartialSchema for ProfileName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::string_enum(Self::ALL.iter().map(|p| p.as_str()))
    }
}

impl utoipa::ToSchema for ProfileName {}

impl Serialize for ProfileName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The event's data as a JSON object (it was checked to be one at ingest).
fn data_object(event: &Event) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::from_str(event.data.get()) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    }
}

/// `(body, headers)` for a body already written.
fn written(body: String, content_type: &str) -> (Vec<u8>, Vec<(&'static str, String)>) {
    // Room for the signature's headers (at most three), which are added next.
    let mut headers = Vec::with_capacity(4);
    headers.push(("content-type", content_type.to_owned()));
    (body.into_bytes(), headers)
}

/// `(body, headers)` for a JSON body with the given media type.
fn json_body(
    value: &serde_json::Value,
    content_type: &str,
) -> (Vec<u8>, Vec<(&'static str, String)>) {
    (
        crate::js_json::to_string(value).into_bytes(),
        vec![("content-type", content_type.to_owned())],
    )
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::event::NewEvent;
    use crate::org::OrgHandle;
    use crate::webhook::{WebhookOptions, WebhookUrl};
    use crate::{OrgId, WebhookId};

    pub fn org() -> Organization {
        Organization {
            id: OrgId::from_trusted("org_01jd0000000000000000000000".into()),
            name: "Acme Inc".into(),
            handle: OrgHandle::from_name("Acme Inc"),
            catalogs: vec![],
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
        }
    }

    pub fn webhook(profile: ProfileName, secret: &str) -> Webhook {
        Webhook {
            id: WebhookId::from_trusted("wh_01jd0000000000000000000000".into()),
            org_id: org().id,
            name: "crm".into(),
            description: None,
            url: WebhookUrl::parse("https://example.com/h").unwrap(),
            events: vec!["*".into()],
            channels: vec![],
            profile,
            signature: None,
            options: WebhookOptions::default(),
            verification: Default::default(),
            secret: secret.into(),
            previous_secret: None,
            previous_secret_expires_at: None,
            active: true,
            headers: Default::default(),
            timeout_ms: None,
            retry_schedule: None,
            rate_limit_per_second: None,
            created_at: Timestamp::from_millis(0),
            updated_at: Timestamp::from_millis(0),
            failing_since: None,
            disabled_reason: None,
        }
    }

    pub fn event(event_type: &str, data: serde_json::Value) -> Event {
        let mut e = NewEvent::parse(serde_json::json!({ "type": event_type, "id": "evt_1", "data": data, "correlation_id": "req-9" }))
            .unwrap()
            .into_event(org().id, Timestamp::from_millis(1_700_000_000_000));
        e.occurred_at = Timestamp::from_millis(1_700_000_000_000);
        e
    }

    /// Renders with fixed ids and time; returns the body as text and a header lookup.
    pub fn render_with(webhook: &Webhook, event: &Event) -> (String, Vec<(&'static str, String)>) {
        let org = org();
        let delivery_id = DeliveryId::from_trusted("dlv_01jd0000000000000000000000".into());
        let out = render(&RenderInput {
            event,
            webhook,
            org: &org,
            delivery_id: &delivery_id,
            now: Timestamp::from_millis(1_700_000_001_000),
            public_url: "https://herald.example.com",
            channel: Some("user"),
            type_uri: None,
        });
        (String::from_utf8(out.body).unwrap(), out.headers)
    }

    pub fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> &'a str {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header"))
    }
}
