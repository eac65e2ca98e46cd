//! Signature schemes, independent of body formats.

use serde::{Serialize, Serializer};

use herald_signature::{hex, hub, opal, standard};

use crate::{Invalid, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureScheme {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>` (Standard Webhooks).
    Standard,
    /// `X-Optare-Signature: <hex HMAC of the body>`.
    Optare,
    /// `x-hub-signature: sha256=<hex HMAC of the body>`.
    Hub,
    /// `X-Opal-Request-Timestamp` and `X-Opal-Signature: <hex HMAC of v0:ts:body>`.
    Opal,
}

impl SignatureScheme {
    pub const ALL: &'static [SignatureScheme] =
        &[Self::Standard, Self::Optare, Self::Hub, Self::Opal];

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        Self::ALL
            .iter()
            .copied()
            .find(|s| s.as_str() == raw)
            .ok_or_else(|| {
                let names = Self::ALL.iter().map(|s| s.as_str());
                Invalid::new(
                    "signature",
                    format!(
                        "'{}' is not a signature scheme{}; choose from: {}",
                        crate::truncate_for_message(raw),
                        crate::suggest::did_you_mean(crate::suggest::closest(raw, names.clone())),
                        names.collect::<Vec<_>>().join(", ")
                    ),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Optare => "optare",
            Self::Hub => "hub",
            Self::Opal => "opal",
        }
    }

    /// Whether the product's docs write its header names in Title-Case (`X-Opal-Signature`,
    /// `X-Optare-Signature`), as its servers send them: a receiver handed the names as sent
    /// (an AWS API Gateway REST API's `event.headers`) looks them up as written there.
    /// Standard Webhooks and Asgardeo write theirs in lower case (`webhook-id`,
    /// `x-hub-signature`), which is how they go out.
    pub fn title_case_headers(self) -> bool {
        matches!(self, Self::Optare | Self::Opal)
    }

    /// The headers that sign `body`. `secrets` holds the current secret first, then the
    /// previous one while a rotation overlaps; only Standard Webhooks can carry both, the other
    /// schemes sign with the current secret.
    pub fn sign(
        self,
        secrets: &[&str],
        msg_id: &str,
        now: Timestamp,
        body: &[u8],
    ) -> Vec<(&'static str, String)> {
        let current = secrets.first().copied().unwrap_or_default();
        let ts = now.as_secs();
        match self {
            Self::Standard => {
                // Stored secrets were checked; one that does not make a key signs nothing
                // rather than stopping the dispatcher.
                let keys: Vec<standard::SigningKey> = secrets
                    .iter()
                    .filter_map(|s| standard::SigningKey::for_secret(s).ok())
                    .collect();
                let refs: Vec<&standard::SigningKey> = keys.iter().collect();
                vec![
                    (standard::HEADER_ID, msg_id.to_owned()),
                    (standard::HEADER_TIMESTAMP, ts.to_string()),
                    (
                        standard::HEADER_SIGNATURE,
                        standard::signature_header(&refs, msg_id, ts, body),
                    ),
                ]
            }
            Self::Optare => vec![
                ("x-optare-signature", hex::sign(current, body)),
                ("x-herald-delivery-id", msg_id.to_owned()),
            ],
            Self::Hub => vec![
                ("x-hub-signature", hub::sign(current, body)),
                ("x-herald-delivery-id", msg_id.to_owned()),
            ],
            Self::Opal => vec![
                ("x-opal-request-timestamp", ts.to_string()),
                ("x-opal-signature", opal::sign(current, ts, body)),
                ("x-herald-delivery-id", msg_id.to_owned()),
            ],
        }
    }
}

/// A string naming one of [`SignatureScheme::ALL`].
impl utoipa::PartialSchema for SignatureScheme {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::string_enum(Self::ALL.iter().map(|s| s.as_str()))
    }
}

impl utoipa::ToSchema for SignatureScheme {}

impl Serialize for SignatureScheme {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}
