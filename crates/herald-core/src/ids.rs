//! Typed, prefixed identifiers (`org_…`, `wh_…`, `dlv_…`). A ULID after the prefix makes ids
//! sortable by creation time, which is what "newest first" pagination walks on.

use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::Invalid;

/// One generator for the process, so ids made within the same millisecond still sort in the
/// order they were made (a fresh `Ulid::new()` each time would order them at random, and two
/// webhooks created in one millisecond would list in either order).
static GENERATOR: Mutex<ulid::Generator> = Mutex::new(ulid::Generator::new());

fn next_ulid() -> ulid::Ulid {
    let mut generator = GENERATOR.lock().unwrap_or_else(PoisonError::into_inner);
    // It fails only when 2^80 ids were made in one millisecond.
    generator.generate().unwrap_or_else(|_| ulid::Ulid::new())
}

/// `prefix_` and the ULID in lower case, written into one allocation: ids are made for every
/// delivery and attempt, and formatting through temporary strings cost three allocations each.
fn prefixed_ulid(prefix: &str, ulid: ulid::Ulid) -> String {
    let mut encoded = [0u8; ulid::ULID_LEN];
    let encoded = ulid.array_to_str(&mut encoded);
    encoded.make_ascii_lowercase();
    let mut id = String::with_capacity(prefix.len() + 1 + ulid::ULID_LEN);
    id.push_str(prefix);
    id.push('_');
    id.push_str(encoded);
    id
}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        #[schema(value_type = String, example = json!(concat!($prefix, "_01jd8x4m2c9v7t5r3q1p0n8k6h")))]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A fresh id: prefix, underscore, lower-case ULID.
            pub fn generate() -> Self {
                Self(prefixed_ulid($prefix, next_ulid()))
            }

            /// Parses an id received from outside; the prefix and shape must be right.
            pub fn parse(raw: &str) -> Result<Self, Invalid> {
                let ok = raw
                    .strip_prefix(concat!($prefix, "_"))
                    .is_some_and(|rest| rest.len() == 26 && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
                if ok {
                    Ok(Self(raw.to_ascii_lowercase()))
                } else {
                    Err(Invalid::new("id", format!("'{}' is not a valid {} id (expected {}_ followed by 26 characters)", crate::truncate_for_message(raw), stringify!($name), $prefix)))
                }
            }

            /// Wraps a value that came from Herald's own storage.
            pub fn from_trusted(raw: String) -> Self {
                Self(raw)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// An organization (tenant).
    OrgId, "org"
);
prefixed_id!(
    /// A webhook (subscription).
    WebhookId, "wh"
);
prefixed_id!(
    /// An organization-scoped API key (the id, not the secret key).
    ApiKeyId, "key"
);
prefixed_id!(
    /// One event for one webhook. Sent as `webhook-id`, so it stays the same on every attempt.
    DeliveryId, "dlv"
);
prefixed_id!(
    /// One HTTP request of a delivery.
    AttemptId, "att"
);
prefixed_id!(
    /// An organization's own registered event type.
    EventTypeId, "et"
);

/// 16 bytes written as a UUID (`8-4-4-4-12` lower-case hex); the caller sets the version and
/// variant bits it needs.
pub fn uuid_string(bytes: [u8; 16]) -> String {
    let h = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_in_a_row_sort_in_the_order_they_were_made() {
        let ids: Vec<WebhookId> = (0..1000).map(|_| WebhookId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn an_id_is_the_prefix_and_the_ulid_in_lower_case() {
        let ulid = ulid::Ulid::from_parts(1_700_000_000_000, 0xDEAD_BEEF_0123_4567_89AB);
        assert_eq!(
            prefixed_ulid("dlv", ulid),
            format!("dlv_{}", ulid.to_string().to_lowercase())
        );
        assert_eq!(prefixed_ulid("dlv", ulid).len(), 30);
    }

    #[test]
    fn a_generated_id_parses_back() {
        let id = WebhookId::generate();
        assert!(id.as_str().starts_with("wh_"));
        assert_eq!(WebhookId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn an_id_with_the_wrong_prefix_is_rejected() {
        let id = OrgId::generate();
        assert!(WebhookId::parse(id.as_str()).is_err());
        assert!(WebhookId::parse("wh_short").is_err());
    }

    #[test]
    fn ids_sort_by_creation_time() {
        let a = DeliveryId::generate();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = DeliveryId::generate();
        assert!(a < b);
    }
}
