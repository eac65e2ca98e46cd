//! Profiles: how a delivery looks on the wire. A profile renders an event into a body and headers
//! and signs them; formats and signature schemes are independent of the event's catalog, so any
//! event can go out in any profile.

use serde::{Serialize, Serializer};

use crate::event::Event;
use crate::org::Organization;
use crate::retry::RetrySchedule;
use crate::webhook::Webhook;
use crate::{DeliveryId, Invalid, Timestamp};

mod standard;

pub use standard::Standard;

/// What a profile needs to render one attempt.
#[derive(Debug, Clone, Copy)]
pub struct RenderInput<'a> {
    pub event: &'a Event,
    pub webhook: &'a Webhook,
    pub org: &'a Organization,
    pub delivery_id: &'a DeliveryId,
    /// When this attempt is made: signatures carry it, so a replayed request can be refused.
    pub now: Timestamp,
}

/// A rendered request: the exact bytes to send and the headers that go with them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingRequest {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// One wire format with its signature scheme and defaults.
pub trait Profile: Send + Sync {
    fn render(&self, input: &RenderInput<'_>) -> OutgoingRequest;
    /// A fresh secret in this profile's format, from a CSPRNG.
    fn generate_secret(&self) -> String;
    /// Checks a secret the user supplied.
    fn parse_secret(&self, raw: &str) -> Result<String, Invalid>;
    fn default_timeout_ms(&self) -> u32;
    fn default_retry_schedule(&self) -> RetrySchedule {
        RetrySchedule::standard()
    }
}

/// The built-in profiles by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProfileName {
    Standard,
}

impl ProfileName {
    pub const ALL: &'static [ProfileName] = &[ProfileName::Standard];

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
                        "'{}' is not a profile; choose from: {}",
                        crate::truncate_for_message(raw),
                        names.join(", ")
                    ),
                )
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
        }
    }

    pub fn profile(self) -> &'static dyn Profile {
        match self {
            Self::Standard => &Standard,
        }
    }

    pub fn default_timeout_ms(self) -> u32 {
        self.profile().default_timeout_ms()
    }

    pub fn default_retry_schedule(self) -> RetrySchedule {
        self.profile().default_retry_schedule()
    }
}

impl Serialize for ProfileName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Appends a JSON string literal (with quotes and escapes) to `out`.
pub(crate) fn push_json_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}
