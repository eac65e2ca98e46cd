//! A circuit breaker per webhook: after a run of failures Herald stops sending to the endpoint
//! for a cool-down, then lets one request through as a probe; success closes the circuit,
//! failure opens it again for twice as long (up to a ceiling). Deliveries that arrive while it is
//! open are deferred to the end of the cool-down in the store: they wait, they are not dropped.

use std::sync::Mutex;

use foldhash::HashMap;
use herald_core::{Timestamp, WebhookId};

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

    /// Gives back the probe of an attempt that ended without an answer from the endpoint, so the
    /// next request probes instead.
    fn abandon_probe(&mut self) {
        self.probing = false;
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

/// Every webhook's breaker, made on a webhook's first request.
pub(crate) type Breakers = Mutex<HashMap<WebhookId, Breaker>>;

/// The webhook's breaker, made on first use. The id is cloned only then: `entry` would clone it
/// on every attempt, twice.
pub(crate) fn of<'a>(
    breakers: &'a mut HashMap<WebhookId, Breaker>,
    webhook: &WebhookId,
) -> &'a mut Breaker {
    if !breakers.contains_key(webhook) {
        breakers.insert(webhook.clone(), Breaker::default());
    }
    breakers.get_mut(webhook).expect("just inserted")
}

/// One attempt's standing with its webhook's breaker: it reports what the endpoint answered.
/// If the attempt was the probe and ends without an answer (the webhook was paused or deleted
/// meanwhile, too little of its lease was left, the store failed, the task was cancelled), the
/// probe is given back when the ticket is dropped; otherwise the circuit would stay half-open,
/// deferring every delivery of the webhook until Herald restarts.
pub(crate) struct Ticket<'a> {
    breakers: &'a Breakers,
    webhook: &'a WebhookId,
    probe: bool,
}

impl<'a> Ticket<'a> {
    pub(crate) fn new(breakers: &'a Breakers, webhook: &'a WebhookId, probe: bool) -> Self {
        Self {
            breakers,
            webhook,
            probe,
        }
    }

    /// Records the endpoint's answer.
    pub(crate) fn settle(mut self, success: bool, now: Timestamp) {
        self.probe = false;
        let opened = of(
            &mut self.breakers.lock().expect("breakers lock"),
            self.webhook,
        )
        .record(success, now);
        if let Some(until) = opened {
            tracing::warn!(webhook = %self.webhook, until = %until.to_rfc3339(), "endpoint keeps failing; pausing deliveries to it (circuit open) until a probe succeeds");
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.probe {
            return;
        }
        // No `expect` here: a drop while a panic unwinds must not panic again.
        if let Ok(mut all) = self.breakers.lock()
            && let Some(b) = all.get_mut(self.webhook)
        {
            b.abandon_probe();
        }
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

    /// One webhook's breaker, opened at 0; `until` is when its cool-down ends.
    struct Opened {
        breakers: Breakers,
        webhook: WebhookId,
        until: Timestamp,
    }

    impl Opened {
        fn new() -> Self {
            let (breakers, webhook) = (Breakers::default(), WebhookId::generate());
            let t = Timestamp::from_millis(0);
            let until = {
                let mut all = breakers.lock().unwrap();
                let b = of(&mut all, &webhook);
                for _ in 0..THRESHOLD - 1 {
                    b.record(false, t);
                }
                b.record(false, t).expect("opens")
            };
            Self {
                breakers,
                webhook,
                until,
            }
        }

        fn gate(&self, at: Timestamp) -> Gate {
            of(&mut self.breakers.lock().unwrap(), &self.webhook).gate(at)
        }

        fn ticket(&self, probe: bool) -> Ticket<'_> {
            Ticket::new(&self.breakers, &self.webhook, probe)
        }
    }

    #[test]
    fn a_probe_that_gets_no_answer_is_given_back() {
        let b = Opened::new();
        let until = b.until;
        assert_eq!(b.gate(until), Gate::Probe);
        drop(b.ticket(true));
        assert_eq!(b.gate(until), Gate::Probe, "the next request probes");

        // A probe that got its answer is not given back: the answer decides.
        b.ticket(true).settle(false, until);
        assert!(
            matches!(b.gate(until), Gate::Defer(_)),
            "failed probe: open again"
        );
        let later = until.plus_millis(60_000);
        assert_eq!(b.gate(later), Gate::Probe);
        b.ticket(true).settle(true, later);
        assert_eq!(b.gate(later), Gate::Pass, "successful probe: closed");
    }

    #[test]
    fn an_ordinary_attempt_without_an_answer_leaves_a_probe_in_flight_alone() {
        let b = Opened::new();
        assert_eq!(b.gate(b.until), Gate::Probe);
        // An attempt let through before the circuit opened ends without an answer.
        drop(b.ticket(false));
        assert!(
            matches!(b.gate(b.until), Gate::Defer(_)),
            "still one probe at a time"
        );
    }
}
