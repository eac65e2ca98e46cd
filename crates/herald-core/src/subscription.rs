//! WebSub verification of intent (W3C WebSub §5.3): before a webhook that asks for it gets
//! events of a channel, its endpoint must echo a challenge for that channel's topic. One
//! [`Subscription`] per webhook and channel records where that stands.

use serde::{Deserialize, Serialize};

use crate::org::Organization;
use crate::profile::ProfileName;
use crate::{Invalid, Timestamp, WebhookId};

/// The lease Herald asks for by default: ten days.
pub const DEFAULT_LEASE_SECONDS: u32 = 864_000;

/// Whether a webhook must verify its intent before it gets events.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    #[default]
    None,
    /// WebSub verification of intent, one challenge per subscribed channel.
    Websub,
}

impl Verification {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        match raw {
            "none" => Ok(Self::None),
            "websub" => Ok(Self::Websub),
            _ => Err(Invalid::new(
                "verification",
                format!(
                    "'{}' is not a verification{}; choose from: websub, none",
                    crate::truncate_for_message(raw),
                    crate::suggest::did_you_mean(crate::suggest::closest(raw, ["websub", "none"]))
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Websub => "websub",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = SubscriptionMode)]
pub enum Mode {
    Subscribe,
    Unsubscribe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "subscribe" => Some(Self::Subscribe),
            "unsubscribe" => Some(Self::Unsubscribe),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = SubscriptionState)]
pub enum State {
    Pending,
    Verified,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Verified => "verified",
            Self::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(Self::Pending),
            "verified" => Some(Self::Verified),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One channel of one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Subscription {
    pub webhook_id: WebhookId,
    pub channel: String,
    pub topic: String,
    /// What was last asked: to subscribe (the webhook is active) or to unsubscribe.
    pub mode: Mode,
    pub state: State,
    /// Why the last verification failed, in words.
    pub reason: Option<String>,
    pub lease_seconds: u32,
    pub last_attempt_at: Option<Timestamp>,
    pub verified_at: Option<Timestamp>,
    /// When the verified lease runs out.
    pub expires_at: Option<Timestamp>,
    /// When Herald will next renew the lease (or retry a failed renewal).
    pub renew_at: Option<Timestamp>,
}

impl Subscription {
    /// A channel not verified yet, with the default lease.
    pub fn pending(webhook_id: WebhookId, channel: String, topic: String, mode: Mode) -> Self {
        Self {
            webhook_id,
            channel,
            topic,
            mode,
            state: State::Pending,
            reason: None,
            lease_seconds: DEFAULT_LEASE_SECONDS,
            last_attempt_at: None,
            verified_at: None,
            expires_at: None,
            renew_at: None,
        }
    }

    /// What a save that must not undo a change made meanwhile compares with the stored row.
    pub fn as_read(&self) -> AsRead {
        AsRead {
            mode: self.mode,
            state: self.state,
            reason: self.reason.clone(),
            last_attempt_at: self.last_attempt_at,
        }
    }

    /// Whether events of this channel may be delivered at `now`.
    pub fn delivers(&self, now: Timestamp) -> bool {
        self.mode == Mode::Subscribe
            && self.state == State::Verified
            && self.expires_at.is_none_or(|at| now < at)
    }

    /// Starts the subscription over in `mode`, unverified, for `why`: what was verified before
    /// (its lease) no longer counts.
    pub fn start_over(&mut self, mode: Mode, why: &str) {
        self.mode = mode;
        self.state = State::Pending;
        self.expires_at = None;
        self.renew_at = None;
        self.reason = Some(why.to_owned());
    }

    /// The subscription as it stands at `now`, to show and to explain: one whose lease ran out
    /// (its renewals refused or not answered) is `failed`, saying when it ended and why,
    /// though it is stored `verified` until a renewal answers.
    pub fn as_seen(&self, now: Timestamp) -> Self {
        let mut seen = self.clone();
        if let Some(ended) = self.expires_at.filter(|&at| {
            self.mode == Mode::Subscribe && self.state == State::Verified && now >= at
        }) {
            seen.state = State::Failed;
            seen.reason = Some(format!(
                "its lease ran out at {} without a renewal the endpoint confirmed{}; resend the \
                 verification",
                ended.to_rfc3339_secs(),
                self.reason
                    .as_deref()
                    .map(|r| format!(" (the last renewal: {r})"))
                    .unwrap_or_default()
            ));
        }
        seen
    }

    /// Records a verification answer at `now`.
    pub fn record(&mut self, now: Timestamp, outcome: Result<(), String>) {
        self.last_attempt_at = Some(now);
        match outcome {
            Ok(()) => {
                self.state = State::Verified;
                self.reason = None;
                self.verified_at = Some(now);
                if self.mode == Mode::Subscribe {
                    let lease_ms = i64::from(self.lease_seconds) * 1000;
                    self.expires_at = Some(now.plus_millis(lease_ms));
                    // Renew when nine tenths of the lease have passed.
                    self.renew_at = Some(now.plus_millis(lease_ms / 10 * 9));
                } else {
                    self.expires_at = None;
                    self.renew_at = None;
                }
            }
            Err(reason) => {
                self.reason = Some(reason);
                let still_leased = self.mode == Mode::Subscribe && self.delivers(now);
                if still_leased {
                    // A failed renewal: the current lease still holds; try again in an hour.
                    self.renew_at = Some(now.plus_secs(3600));
                } else {
                    self.state = State::Failed;
                    self.renew_at = None;
                }
            }
        }
    }
}

/// A subscription as it was read before its endpoint was asked, for a save that stands back
/// if it changed since ([`crate::store::Store::save_subscriptions_as_read`]). Every change but
/// a renewal's claim moves one of these: a new request (mode, or its time), an answer (state,
/// reason), a reset to pending after a new URL (state, reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsRead {
    pub mode: Mode,
    pub state: State,
    pub reason: Option<String>,
    pub last_attempt_at: Option<Timestamp>,
}

/// `{org handle}.{org id}.schema.{profile}.{version}.event.{channel}`; the asgardeo profile names
/// its schema `wso2`, as Asgardeo does.
pub fn topic(org: &Organization, profile: ProfileName, channel: &str) -> String {
    let schema = match profile {
        ProfileName::Asgardeo => "wso2",
        other => other.as_str(),
    };
    format!(
        "{}.{}.schema.{schema}.v1.event.{channel}",
        org.handle.as_str(),
        org.id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Subscription {
        Subscription {
            webhook_id: WebhookId::generate(),
            channel: "login".into(),
            topic: "t".into(),
            mode: Mode::Subscribe,
            state: State::Pending,
            reason: None,
            lease_seconds: 1000,
            last_attempt_at: None,
            verified_at: None,
            expires_at: None,
            renew_at: None,
        }
    }

    #[test]
    fn a_verified_subscription_delivers_until_its_lease_ends_and_renews_before() {
        let mut s = sub();
        let t0 = Timestamp::from_millis(0);
        s.record(t0, Ok(()));
        assert!(s.delivers(t0.plus_secs(999)));
        assert!(!s.delivers(t0.plus_secs(1000)));
        assert_eq!(s.renew_at, Some(t0.plus_secs(900)));
    }

    #[test]
    fn a_failed_renewal_keeps_the_lease_and_retries() {
        let mut s = sub();
        let t0 = Timestamp::from_millis(0);
        s.record(t0, Ok(()));
        s.record(t0.plus_secs(900), Err("404".into()));
        assert_eq!(s.state, State::Verified);
        assert_eq!(s.reason.as_deref(), Some("404"));
        assert_eq!(s.renew_at, Some(t0.plus_secs(900 + 3600)));
        s.record(t0.plus_secs(1000), Err("404".into()));
        assert_eq!(
            s.state,
            State::Failed,
            "once the lease is over, a failure fails it"
        );
    }

    /// Between the lease's end and the next renewal's answer, the subscription is stored
    /// `verified` but delivers nothing: it is shown failed, saying why.
    #[test]
    fn a_lease_that_ran_out_is_shown_failed() {
        let mut s = sub();
        let t0 = Timestamp::from_millis(0);
        s.record(t0, Ok(()));
        s.record(t0.plus_secs(900), Err("the endpoint answered 404".into()));
        assert_eq!(s.as_seen(t0.plus_secs(999)), s, "the lease still holds");
        let seen = s.as_seen(t0.plus_secs(1000));
        assert_eq!(seen.state, State::Failed);
        assert_eq!(
            seen.reason.as_deref(),
            Some(
                "its lease ran out at 1970-01-01T00:16:40Z without a renewal the endpoint \
                 confirmed (the last renewal: the endpoint answered 404); resend the verification"
            )
        );
        // An unsubscription's lease means nothing.
        s.mode = Mode::Unsubscribe;
        assert_eq!(s.as_seen(t0.plus_secs(1000)).state, State::Verified);
    }
}
