//! Retry schedules and the decision taken after each attempt.

use serde::{Deserialize, Serialize};

use crate::delivery::AttemptOutcome;
use crate::{Invalid, Timestamp};

/// The delays in seconds before each attempt, the first counted from ingest and each later one
/// from the previous failure. `[0, 60, 300, 900, 3600]` means five attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RetrySchedule(Vec<u32>);

/// The longest single delay a schedule or a `Retry-After` may ask for: one week.
pub const MAX_DELAY_SECS: u32 = 7 * 24 * 3600;
/// The most delays a schedule lists.
pub const MAX_STEPS: usize = 20;

/// 1 to [`MAX_STEPS`] delays of 0 to [`MAX_DELAY_SECS`] seconds, as [`RetrySchedule::parse`]
/// takes them: so that a generated client knows the limits before the server refuses.
impl utoipa::PartialSchema for RetrySchedule {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
        let delay = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(MAX_DELAY_SECS));
        ArrayBuilder::new()
            .items(delay)
            .min_items(Some(1))
            .max_items(Some(MAX_STEPS))
            .description(Some(
                "Delays in seconds before each attempt: the first from ingest, each later one \
                 from the previous failure",
            ))
            .examples([serde_json::json!([0, 60, 300, 900, 3600])])
            .into()
    }
}

impl utoipa::ToSchema for RetrySchedule {}
/// A `Retry-After` longer than this is cut to it: a receiver cannot park deliveries for days.
pub const MAX_RETRY_AFTER_SECS: u64 = 3600;

/// The most a delay is lengthened by its jitter: a tenth of it.
const JITTER: f64 = 0.1;

/// A delay of `secs` lengthened by `jitter` (0 to 1) of [`JITTER`], in milliseconds.
fn jittered_ms(secs: u32, jitter: f64) -> i64 {
    let ms = i64::from(secs) * 1000;
    ms + (ms as f64 * JITTER * jitter.clamp(0.0, 1.0)) as i64
}

impl RetrySchedule {
    /// How long after a delivery's last move its last attempt is due at the latest (every delay
    /// at its full jitter), `made` of the schedule's attempts having been made; `asked_to_wait`:
    /// the last answer may have put the next attempt off by up to an hour (`Retry-After`).
    pub fn latest_span_ms(&self, made: usize, asked_to_wait: bool) -> i64 {
        self.0
            .iter()
            .skip(made)
            .enumerate()
            .map(|(i, &secs)| {
                let delay = jittered_ms(secs, 1.0);
                if i == 0 && asked_to_wait {
                    delay.max(MAX_RETRY_AFTER_SECS as i64 * 1000)
                } else {
                    delay
                }
            })
            .sum()
    }

    pub fn parse(raw: Vec<u64>) -> Result<Self, Invalid> {
        if raw.is_empty() || raw.len() > MAX_STEPS {
            return Err(Invalid::new(
                "retry_schedule",
                "must list between 1 and 20 delays in seconds, e.g. [0, 60, 300, 900, 3600]",
            ));
        }
        if let Some(bad) = raw.iter().find(|d| **d > MAX_DELAY_SECS as u64) {
            return Err(Invalid::new(
                "retry_schedule",
                format!(
                    "a delay of {bad} s is longer than the maximum of {MAX_DELAY_SECS} s (7 days)"
                ),
            ));
        }
        Ok(Self(raw.into_iter().map(|d| d as u32).collect()))
    }

    /// Five attempts: at once, then after 1 min, 5 min, 15 min and 1 h.
    pub fn standard() -> Self {
        Self(vec![0, 60, 300, 900, 3600])
    }

    pub fn attempts(&self) -> u32 {
        self.0.len() as u32
    }

    pub fn delays(&self) -> &[u32] {
        &self.0
    }

    /// What happens after attempt number `attempt` (1-based) ended with `outcome` at `now`.
    /// `jitter` is a fraction in `[0, 1)` from the caller's random source, so that this stays a
    /// pure function: it adds up to 10% to a retry delay to spread synchronized retries.
    pub fn next_step(
        &self,
        attempt: u32,
        outcome: &AttemptOutcome,
        now: Timestamp,
        jitter: f64,
    ) -> NextStep {
        if outcome.is_success() {
            return NextStep::Succeeded;
        }
        let Some(&delay) = self.0.get(attempt as usize) else {
            return NextStep::Failed;
        };
        let mut delay_ms = jittered_ms(delay, jitter);
        if let Some(after) = outcome.retry_after_secs() {
            let after_ms = after.min(MAX_RETRY_AFTER_SECS) as i64 * 1000;
            delay_ms = delay_ms.max(after_ms);
        }
        NextStep::RetryAt(now.plus_millis(delay_ms))
    }
}

/// The delivery's next state after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Succeeded,
    RetryAt(Timestamp),
    Failed,
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_latest_span_counts_what_is_left_at_full_jitter() {
        let standard = super::RetrySchedule::standard();
        assert_eq!(
            standard.latest_span_ms(0, false),
            (60 + 300 + 900 + 3600) * 1_100
        );
        assert_eq!(
            standard.latest_span_ms(3, false),
            (900 + 3600) * 1_100,
            "three attempts made: the fourth's delay and the fifth's are left"
        );
        let once = super::RetrySchedule::parse(vec![0]).unwrap();
        assert_eq!(once.latest_span_ms(0, false), 0);
        let short = super::RetrySchedule::parse(vec![0, 60, 300]).unwrap();
        assert_eq!(
            short.latest_span_ms(1, true),
            3_600_000 + 300 * 1_100,
            "a Retry-After may have put the next attempt off by up to an hour"
        );
    }

    use super::*;
    use crate::delivery::{AttemptError, AttemptOutcome};

    fn failure(status: u16, retry_after: Option<u64>) -> AttemptOutcome {
        AttemptOutcome::failed(
            AttemptError::Status(status),
            Some(status),
            5,
            String::new(),
            retry_after,
        )
    }

    #[test]
    fn the_second_attempt_comes_a_minute_after_the_first_failure() {
        let now = Timestamp::from_millis(1_000_000);
        let step = RetrySchedule::standard().next_step(1, &failure(500, None), now, 0.0);
        assert_eq!(step, NextStep::RetryAt(now.plus_secs(60)));
    }

    #[test]
    fn jitter_only_ever_delays_and_by_at_most_ten_percent() {
        let now = Timestamp::from_millis(0);
        let NextStep::RetryAt(at) =
            RetrySchedule::standard().next_step(1, &failure(500, None), now, 0.999)
        else {
            panic!("expected a retry")
        };
        assert!(at.as_millis() >= 60_000 && at.as_millis() < 66_000);
    }

    #[test]
    fn the_last_failure_ends_the_delivery() {
        let s = RetrySchedule::standard();
        assert_eq!(
            s.next_step(5, &failure(500, None), Timestamp::from_millis(0), 0.0),
            NextStep::Failed
        );
    }

    #[test]
    fn retry_after_is_honoured_but_bounded() {
        let now = Timestamp::from_millis(0);
        let s = RetrySchedule::standard();
        assert_eq!(
            s.next_step(1, &failure(429, Some(120)), now, 0.0),
            NextStep::RetryAt(now.plus_secs(120))
        );
        assert_eq!(
            s.next_step(1, &failure(503, Some(10)), now, 0.0),
            NextStep::RetryAt(now.plus_secs(60))
        );
        assert_eq!(
            s.next_step(1, &failure(503, Some(1_000_000)), now, 0.0),
            NextStep::RetryAt(now.plus_secs(3600))
        );
    }

    #[test]
    fn a_schedule_must_not_be_empty_or_absurd() {
        assert!(RetrySchedule::parse(vec![]).is_err());
        assert!(RetrySchedule::parse(vec![0, 99_999_999]).is_err());
        assert_eq!(RetrySchedule::parse(vec![0, 5]).unwrap().attempts(), 2);
    }
}
