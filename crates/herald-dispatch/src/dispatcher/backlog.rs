//! Each webhook's share of the deliveries held in memory. The budget is shared by every webhook
//! of every organization, and the scheduler claims due deliveries in due order, so a webhook
//! whose endpoint answers slowly (in time, so its circuit stays closed) would otherwise fill the
//! budget with deliveries it takes hours to send, and every other webhook would wait behind it.
//!
//! A webhook may hold what it sends in [`HOLD_SECS`] at the rate it has been draining its queue
//! (at least a small floor, at most three quarters of the budget). What it is given beyond that
//! stays in the store, due when the webhook should have room for it: spaced at its drain rate,
//! so each delivery comes back about once, in order, rather than being claimed again and again.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald_core::Timestamp;

/// How many seconds of sending a webhook may hold in memory.
const HOLD_SECS: f64 = 30.0;
/// What every webhook may hold whatever its rate (capped at an eighth of the budget): enough
/// to keep its requests in flight busy.
const FLOOR: usize = 1_000;
/// How long a drain rate is measured over before it counts.
const WINDOW: Duration = Duration::from_secs(1);
/// When the rate is not known yet, how long an excess delivery waits before it is offered again.
const UNKNOWN_RATE_WAIT_MS: i64 = 1_000;

/// What a webhook holds, and how fast that drains.
#[derive(Debug)]
pub(crate) struct Backlog {
    /// Deliveries queued for the webhook or in flight to it.
    held: AtomicUsize,
    /// What it may always hold, and the most it may hold.
    floor: usize,
    ceiling: usize,
    meter: Mutex<Meter>,
}

#[derive(Debug, Default)]
struct Meter {
    /// Deliveries that left the queue (sent, deferred) since `since`.
    drained: u64,
    /// Start of the current measurement; `None` while the queue is short (an idle webhook's rate
    /// says nothing about its endpoint).
    since: Option<Instant>,
    /// Deliveries per second, while backed up.
    rate: Option<f64>,
    /// When the next delivery kept in the store should come due (in store time).
    next_due_ms: i64,
}

/// Whether a delivery may be held in memory now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Admission {
    Hold,
    /// Over the webhook's share: keep it in the store, due then.
    Defer(Timestamp),
}

impl Backlog {
    /// A webhook's backlog under a budget of `budget` deliveries for all webhooks.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            held: AtomicUsize::new(0),
            floor: FLOOR.min(budget / 8).max(1),
            ceiling: (budget / 4 * 3).max(1),
            meter: Mutex::default(),
        }
    }

    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// `n` deliveries joined the queue.
    pub(crate) fn add(&self, n: usize) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` deliveries left memory (attempted, deferred or dropped at shutdown).
    pub(crate) fn remove(&self, n: usize, at: Instant) {
        let held = self.held.fetch_sub(n, Ordering::Relaxed).saturating_sub(n);
        let mut meter = self.meter.lock().expect("backlog lock");
        meter.drained += n as u64;
        meter.sample(held, at, self.floor);
    }

    /// Whether one more delivery may be held, besides `pending` admitted a moment ago and not
    /// queued yet (`now` in store time, `at` for measuring).
    pub(crate) fn admit(&self, pending: usize, now: Timestamp, at: Instant) -> Admission {
        let held = self.held() + pending;
        if held < self.floor {
            return Admission::Hold;
        }
        let mut meter = self.meter.lock().expect("backlog lock");
        meter.sample(held, at, self.floor);
        let share = match meter.rate {
            Some(rate) => ((rate * HOLD_SECS) as usize).max(self.floor),
            None => usize::MAX,
        }
        .min(self.ceiling);
        if held < share {
            return Admission::Hold;
        }
        Admission::Defer(meter.next_due(held - share, now))
    }
}

impl Meter {
    /// Folds the time since the last sample into the rate, while the queue is backed up (at
    /// least `floor` held). A window cut short by the queue running down is dropped: the time
    /// after it says nothing about the endpoint.
    fn sample(&mut self, held: usize, at: Instant, floor: usize) {
        let Some(since) = self.since else {
            if held >= floor {
                self.since = Some(at);
                self.drained = 0;
            }
            return;
        };
        let elapsed = at.saturating_duration_since(since);
        if elapsed < WINDOW {
            if held < floor {
                self.since = None;
            }
            return;
        }
        let measured = self.drained as f64 / elapsed.as_secs_f64();
        // Recent windows weigh more: an endpoint that slows down is noticed within seconds.
        self.rate = Some(match self.rate {
            Some(rate) => rate * 0.5 + measured * 0.5,
            None => measured,
        });
        self.drained = 0;
        self.since = (held >= floor).then_some(at);
    }

    /// When a delivery `beyond` the webhook's share should come due: once the deliveries ahead
    /// of it are sent, and after the last one kept back.
    fn next_due(&mut self, beyond: usize, now: Timestamp) -> Timestamp {
        let Some(rate) = self.rate.filter(|r| *r > 0.0) else {
            return now.plus_millis(UNKNOWN_RATE_WAIT_MS);
        };
        let gap_ms = 1_000.0 / rate;
        let behind = (beyond as f64 * gap_ms) as i64;
        let due = self.next_due_ms.max(now.as_millis() + behind.max(1));
        // At most a day ahead: a webhook that sped up meanwhile should not wait for nothing.
        let due = due.min(now.as_millis() + 86_400_000);
        self.next_due_ms = due + (gap_ms as i64).max(1);
        Timestamp::from_millis(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUDGET: usize = 100_000;

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn a_short_queue_is_always_held() {
        let b = Backlog::new(BUDGET);
        b.add(FLOOR - 1);
        assert_eq!(b.admit(0, t(0), Instant::now()), Admission::Hold);
    }

    #[test]
    fn a_fast_webhook_may_hold_up_to_three_quarters_of_the_budget() {
        let b = Backlog::new(BUDGET);
        let start = Instant::now();
        b.add(FLOOR);
        assert_eq!(b.admit(0, t(0), start), Admission::Hold, "rate unknown");
        // It sends 40,000 a second: thirty seconds of that is more than the budget.
        b.add(40_000);
        let later = start + WINDOW;
        b.remove(40_000, later);
        b.add(BUDGET / 4 * 3 - b.held() - 1);
        assert_eq!(b.admit(0, t(0), later), Admission::Hold);
        b.add(1);
        assert!(matches!(b.admit(0, t(0), later), Admission::Defer(_)));
    }

    #[test]
    fn a_slow_webhook_keeps_its_excess_in_the_store_spaced_at_its_rate() {
        let b = Backlog::new(BUDGET);
        let start = Instant::now();
        b.add(FLOOR + 500);
        assert_eq!(b.admit(0, t(0), start), Admission::Hold, "rate unknown");
        // Ten a second over two seconds.
        let later = start + Duration::from_secs(2);
        b.remove(20, later);
        b.add(20);
        // 10/s for 30 s is 300, under the floor: it may hold the floor, 1,000.
        let first = match b.admit(0, t(10_000), later) {
            Admission::Defer(due) => due,
            other => panic!("{other:?}"),
        };
        // 500 beyond its share go first, 100 ms each.
        assert_eq!(first, t(10_000 + 50_000));
        let second = match b.admit(0, t(10_000), later) {
            Admission::Defer(due) => due,
            other => panic!("{other:?}"),
        };
        assert_eq!(second, t(10_000 + 50_100), "the next one a gap later");
    }

    #[test]
    fn an_idle_spell_does_not_count_as_a_slow_endpoint() {
        let b = Backlog::new(BUDGET);
        let start = Instant::now();
        b.add(FLOOR);
        assert_eq!(b.admit(0, t(0), start), Admission::Hold);
        // The queue drains at once, then nothing happens for a minute.
        b.remove(FLOOR, start + Duration::from_millis(10));
        let idle = start + Duration::from_secs(60);
        b.add(FLOOR + 10);
        assert_eq!(b.admit(0, t(0), idle), Admission::Hold, "measured afresh");
    }

    #[test]
    fn a_small_budget_has_a_small_floor_and_ceiling() {
        let b = Backlog::new(200);
        b.add(24);
        assert_eq!(b.admit(0, t(0), Instant::now()), Admission::Hold);
        b.add(200);
        assert_eq!(
            b.admit(0, t(0), Instant::now()),
            Admission::Defer(t(UNKNOWN_RATE_WAIT_MS))
        );
    }
}
