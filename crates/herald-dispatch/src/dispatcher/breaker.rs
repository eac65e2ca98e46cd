//! A circuit breaker per webhook: after a run of failures Herald stops sending to the endpoint
//! for a cool-down, then lets one request through as a probe; success closes the circuit,
//! failure opens it again for twice as long (up to a ceiling). Deliveries that arrive while it is
//! open are deferred to the end of the cool-down in the store: they wait, they are not dropped.

use herald_core::Timestamp;

/// Consecutive failures that open the circuit.
pub(crate) const THRESHOLD: u32 = 10;
const FIRST_COOLDOWN_MS: i64 = 30_000;
const MAX_COOLDOWN_MS: i64 = 600_000;

#[derive(Debug, Default)]
pub(crate) struct Breaker {
    failures: u32,
    open_until: Option<Timestamp>,
    cooldown_ms: i64,
    probing: bool,
}

/// What to do with the next request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    Pass,
    /// The cool-down is over: this request is the probe.
    Probe,
    /// Open: try again at this time.
    Defer(Timestamp),
}

impl Breaker {
    pub(crate) fn gate(&mut self, now: Timestamp) -> Gate {
        match self.open_until {
            None => Gate::Pass,
            Some(until) if now < until || self.probing => {
                Gate::Defer(until.max(now.plus_millis(1000)))
            }
            Some(_) => {
                self.probing = true;
                Gate::Probe
            }
        }
    }

    /// Records an outcome; answers the time the circuit is now open until, if it just opened.
    pub(crate) fn record(&mut self, success: bool, now: Timestamp) -> Option<Timestamp> {
        if success {
            *self = Self::default();
            return None;
        }
        self.failures += 1;
        let was_probe = std::mem::take(&mut self.probing);
        if was_probe || (self.open_until.is_none() && self.failures >= THRESHOLD) {
            self.cooldown_ms = if was_probe {
                (self.cooldown_ms * 2).min(MAX_COOLDOWN_MS)
            } else {
                FIRST_COOLDOWN_MS
            };
            let until = now.plus_millis(self.cooldown_ms);
            self.open_until = Some(until);
            return Some(until);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_opens_after_a_run_of_failures_and_a_probe_closes_it() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        for _ in 0..THRESHOLD - 1 {
            assert_eq!(b.record(false, t), None);
            assert_eq!(b.gate(t), Gate::Pass);
        }
        let until = b.record(false, t).expect("opens");
        assert_eq!(until, t.plus_millis(30_000));
        assert!(matches!(b.gate(t.plus_millis(10)), Gate::Defer(_)));
        assert_eq!(b.gate(until), Gate::Probe);
        assert!(
            matches!(b.gate(until), Gate::Defer(_)),
            "one probe at a time"
        );
        assert_eq!(b.record(true, until), None);
        assert_eq!(b.gate(until), Gate::Pass);
    }

    #[test]
    fn a_failed_probe_doubles_the_cool_down() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        for _ in 0..THRESHOLD {
            b.record(false, t);
        }
        let first = t.plus_millis(30_000);
        assert_eq!(b.gate(first), Gate::Probe);
        assert_eq!(b.record(false, first), Some(first.plus_millis(60_000)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        for _ in 0..THRESHOLD - 1 {
            b.record(false, t);
        }
        b.record(true, t);
        assert_eq!(b.record(false, t), None);
    }
}
