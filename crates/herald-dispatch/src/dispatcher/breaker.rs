//! A circuit breaker per webhook: after a run of failures, from an endpoint that looks down
//! rather than flaky ([`QUIET_MS`]), Herald stops sending to it for a cool-down, then lets one
//! request through as a probe; success closes the circuit, failure opens it again for twice as
//! long (up to a ceiling). Only the probe decides: the answers of requests sent before the
//! circuit opened neither close it nor count as the probe's (a two-node soak against endpoints
//! failing part of the time had the first success of those close every circuit within moments
//! of its opening, and the next run of failures open it again, each time writing the webhook's
//! backlog to the store and back). Deliveries that arrive while it is open are deferred to the
//! end of the cool-down in the store: they wait, they are not dropped (unless that would carry
//! them past the end of their retry schedule: see `health.rs`).
//! While the probe is out they wait for its answer (at the latest, the end of its timeout): a
//! probe that succeeds wakes them at once, one that fails puts them off to the next cool-down's
//! end, both with one write to the store rather than one per delivery.
//!
//! The breaker also keeps the endpoint's own request to wait: a `429` or `503` with
//! `Retry-After` holds every delivery to it until then ([`Breaker::hold`]), not only the one
//! that was refused, which would otherwise be followed by the rest of the backlog at once.

use std::sync::Mutex;

use foldhash::HashMap;
use herald_core::retry::MAX_RETRY_AFTER_SECS;
use herald_core::webhook::Webhook;
use herald_core::{OrgId, Timestamp, WebhookId};

/// Consecutive failures that open the circuit...
pub(crate) const THRESHOLD: u32 = 10;
/// ...once no request has succeeded for this long either, or hardly any lately
/// ([`DOWN_FAILURE_SHARE`]). An endpoint that fails many requests but answers others is flaky,
/// not down: its deliveries go on, retried on their schedules. A two-node soak against endpoints
/// failing 65% of requests saw runs of ten failures every few seconds among the successes;
/// with only the probe closing the circuit, each run shut the endpoint out for a cool-down or
/// more, and most of its deliveries failed unsent.
const QUIET_MS: i64 = 5_000;
/// The share of recent requests that failed (a moving average over about the last fifty)
/// above which an endpoint is down even if one succeeded within [`QUIET_MS`]: under heavy
/// traffic, an endpoint answering one request in a hundred is never quiet for 5 s.
const DOWN_FAILURE_SHARE: f32 = 0.9;
/// How much each outcome weighs in that average. Over about the last twenty (0.05), a run of
/// 25 failures carried an endpoint failing 65% of requests past nine in ten: a two-node probe
/// saw such circuits open a few times in four minutes, and stay open while probes failed. From
/// its usual share, the run now needs to be over 60 long.
const SHARE_WEIGHT: f32 = 0.02;
const FIRST_COOLDOWN_MS: i64 = 30_000;
const MAX_COOLDOWN_MS: i64 = 600_000;
/// The shortest deferral: what comes back sooner would only be deferred again.
const MIN_DEFER_MS: i64 = 1_000;
/// Time allowed past a probe's timeout for its answer to be heard.
const PROBE_MARGIN_MS: i64 = 1_000;
/// How long a probe may take when its webhook is not known (the longest timeout a webhook has).
pub(crate) const LONGEST_PROBE_MS: i64 =
    herald_core::webhook::MAX_TIMEOUT_MS as i64 + PROBE_MARGIN_MS;

/// How long a probe may take, for a webhook with this timeout.
pub(crate) fn probe_ms(timeout_ms: u32) -> i64 {
    i64::from(timeout_ms) + PROBE_MARGIN_MS
}

#[derive(Debug, Default)]
pub(crate) struct Breaker {
    failures: u32,
    open_until: Option<Timestamp>,
    cooldown_ms: i64,
    /// While a probe is out: when its answer is due at the latest. Deliveries deferred meanwhile
    /// wait until then, and a successful probe wakes exactly those.
    probe_due: Option<Timestamp>,
    /// When the circuit opened after being closed: how long the endpoint has been down, for
    /// judging which deliveries it holds past their retry schedule.
    open_since: Option<Timestamp>,
    /// When the endpoint last failed a request (this run of failures'): a delivery is failed
    /// for the open circuit only if the endpoint failed after the delivery last moved on.
    last_failure: Option<Timestamp>,
    /// When a request last succeeded: closed, how long the endpoint has been failing (see
    /// [`QUIET_MS`]); open, whether a request sent before it opened succeeded after the last
    /// failure, when the endpoint may be back and nothing is failed before the probe says.
    last_success: Option<Timestamp>,
    /// The share of recent requests that failed (see [`DOWN_FAILURE_SHARE`]), from none.
    failure_share: f32,
    /// The version of the webhook this breaker has judged: a change to what reaches the
    /// endpoint, or enabling it again, gives the endpoint a fresh start.
    judged: Option<Judged>,
    /// Until when the endpoint asked to be sent nothing (a `429` or `503` with `Retry-After`,
    /// capped at [`MAX_RETRY_AFTER_SECS`]). Only time ends it: the answers to requests sent
    /// before it came say nothing of what the endpoint wants now.
    held_until: Option<Timestamp>,
}

/// A webhook as its breaker judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Judged {
    updated_at: Timestamp,
    /// What reaches the endpoint ([`endpoint_of`]).
    endpoint: u64,
}

/// A digest of what reaches the webhook's endpoint: where (its URL), how it is signed and what
/// its requests carry, and how long it is given. Its name or description are not the endpoint's.
fn endpoint_of(w: &Webhook) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut digest = std::hash::DefaultHasher::new();
    w.url.as_str().hash(&mut digest);
    w.headers.hash(&mut digest);
    w.secret.hash(&mut digest);
    w.signature.hash(&mut digest);
    w.profile.hash(&mut digest);
    format!("{:?}", w.options).hash(&mut digest);
    w.timeout_ms.hash(&mut digest);
    digest.finish()
}

/// What an open circuit knows of the endpoint's outage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outage {
    /// When the circuit opened.
    pub(crate) since: Timestamp,
    /// When the endpoint last failed a request.
    pub(crate) last_failure: Timestamp,
    /// When a request last succeeded, if one ever did: before the circuit opened, or (a
    /// request sent before it opened) since. Only one after `last_failure` says the endpoint
    /// may be back.
    pub(crate) last_success: Option<Timestamp>,
}

/// What to do with the next request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    Pass,
    /// The cool-down is over: this request is the probe.
    Probe,
    /// Open: try again at this time.
    Defer(Timestamp),
    /// Closed, but the endpoint asked to wait (`Retry-After`): try again at this time. Unlike
    /// an open circuit's deferral, this fails nothing for its retry schedule: the endpoint did
    /// not fail these deliveries, and answers once the time it named is up.
    Hold(Timestamp),
}

impl Breaker {
    /// `probe_ms` is how long a probe may take (the webhook's timeout and a margin): deliveries
    /// that come while it is out wait that long rather than come back every second, which for a
    /// large backlog would mean writing all of it again every second.
    ///
    /// An `urgent` request (a test, a resend: someone is waiting to see it) does not wait for
    /// the cool-down's end: it goes at once as the probe, unless a probe is already out. Nor
    /// does it wait for the end of the endpoint's [`Breaker::hold`].
    pub(crate) fn gate(&mut self, now: Timestamp, probe_ms: i64, urgent: bool) -> Gate {
        let soonest = now.plus_millis(MIN_DEFER_MS);
        if self.held_until.is_some_and(|until| until <= now) {
            self.held_until = None;
        }
        let held = self.held_until.filter(|_| !urgent);
        let or_held = |at: Timestamp| held.map_or(at, |until| at.max(until));
        match (self.open_until, self.probe_due) {
            (None, _) => held.map_or(Gate::Pass, |until| Gate::Hold(until.max(soonest))),
            (Some(_), Some(due)) => Gate::Defer(or_held(due.max(soonest))),
            (Some(until), None) if (now < until && !urgent) || held.is_some() => {
                Gate::Defer(or_held(until.max(soonest)))
            }
            (Some(_), None) => {
                self.probe_due = Some(now.plus_millis(probe_ms.max(MIN_DEFER_MS)));
                Gate::Probe
            }
        }
    }

    /// Starts afresh, closed, if the webhook changed since this breaker began judging it in what
    /// reaches its endpoint (another URL, headers, secret, timeout), or was enabled again (which
    /// clears its failing streak): what the endpoint did before is not what it does now. A
    /// change to its name or description changes nothing here. The endpoint's own request to
    /// wait ([`Breaker::hold`]) ends only with a change to what reaches it: a cleared failing
    /// streak is no sign of its being enabled again once a test has succeeded during the wait
    /// (enabling it again ends the wait through [`Breaker::lift_hold`], on the node that took
    /// the change). Answers, if the circuit was open or the wait ended, the times the
    /// deliveries deferred were put off to, to be due now, as a probe's success would have them.
    pub(crate) fn start_afresh_if_changed(
        &mut self,
        webhook: &Webhook,
        now: Timestamp,
    ) -> Option<Vec<Timestamp>> {
        // An older copy of the webhook (a snapshot not reloaded yet) changes nothing.
        if self
            .judged
            .is_some_and(|judged| webhook.updated_at <= judged.updated_at)
        {
            return None;
        }
        let fresh = self.judged_before(webhook);
        let elsewhere = self.endpoint_changed(webhook);
        self.judged = Some(Judged {
            updated_at: webhook.updated_at,
            endpoint: endpoint_of(webhook),
        });
        if !fresh {
            return None;
        }
        let held = self.held_until(now).filter(|_| !elsewhere);
        let ended = self.held_until(now).filter(|_| elsewhere);
        let waiting: Vec<Timestamp> = [self.probe_due, self.open_until, ended]
            .into_iter()
            .flatten()
            .filter(|at| *at > now)
            .collect();
        let was_open = self.open_until.is_some() || ended.is_some();
        *self = Self {
            judged: self.judged,
            held_until: held,
            ..Self::default()
        };
        was_open.then_some(waiting)
    }

    /// Whether `webhook` is a later version than the one judged, changed in what reaches the
    /// endpoint or enabled again (its failing streak cleared): one to start afresh for.
    fn judged_before(&self, webhook: &Webhook) -> bool {
        self.judged.is_some_and(|judged| {
            webhook.updated_at > judged.updated_at
                && (webhook.failing_since.is_none() || endpoint_of(webhook) != judged.endpoint)
        })
    }

    /// When the cool-down ends, as [`Breaker::open_until`], for this version of the webhook:
    /// none for a version it starts afresh for (at its next delivery), so that what is shown
    /// right after a change is what the change did.
    pub(crate) fn open_until_for(&self, webhook: &Webhook) -> Option<Timestamp> {
        if self.judged_before(webhook) {
            return None;
        }
        self.open_until
    }

    /// Closed with no failure counted and no wait the endpoint asked for still on (at `now`):
    /// what a new breaker would be, so it may be forgotten (but for when a request last succeeded, which a webhook's task, ending after a minute idle,
    /// has outlived by more than [`QUIET_MS`], and the share of recent requests that failed,
    /// which a success just lowered).
    pub(crate) fn is_at_rest(&self, now: Timestamp) -> bool {
        self.failures == 0
            && self.open_until.is_none()
            && self.probe_due.is_none()
            && self.held_until.is_none_or(|until| until <= now)
    }

    /// The endpoint answered `429` or `503` with `Retry-After: secs`: nothing more goes to it
    /// until then (at most [`MAX_RETRY_AFTER_SECS`] from `now`), but tests and resends. A
    /// later answer may put the end off, never bring it closer.
    pub(crate) fn hold(&mut self, secs: u64, now: Timestamp) -> Held {
        let secs = secs.min(MAX_RETRY_AFTER_SECS);
        if secs == 0 {
            return Held::Unchanged;
        }
        let until = now.plus_millis(secs as i64 * 1000);
        match self.held_until {
            // Put off by a second at least: the requests in flight when an endpoint starts
            // refusing come back together, each asking from its own moment, and each small
            // step would move the whole backlog the hold holds.
            Some(held) if held > now && until >= held.plus_millis(MIN_DEFER_MS) => {
                self.held_until = Some(until);
                Held::PutOff(Move {
                    from: held,
                    to: until,
                })
            }
            Some(held) if held > now => Held::Unchanged,
            _ => {
                self.held_until = Some(until);
                Held::Began(until)
            }
        }
    }

    /// Until when the endpoint asked to wait, while it does.
    pub(crate) fn held_until(&self, now: Timestamp) -> Option<Timestamp> {
        self.held_until.filter(|until| *until > now)
    }

    /// [`Breaker::held_until`] for this version of the webhook: none for one whose endpoint
    /// changed (whose fresh start ends the wait), as [`Breaker::open_until_for`].
    pub(crate) fn held_until_for(&self, webhook: &Webhook, now: Timestamp) -> Option<Timestamp> {
        if self.endpoint_changed(webhook) {
            return None;
        }
        self.held_until(now)
    }

    /// Whether `webhook` is a later version than the one judged that changed what reaches the
    /// endpoint.
    fn endpoint_changed(&self, webhook: &Webhook) -> bool {
        self.judged.is_some_and(|judged| {
            webhook.updated_at > judged.updated_at && endpoint_of(webhook) != judged.endpoint
        })
    }

    /// Ends the endpoint's hold: someone asked for what waits to go now. Answers when it would
    /// have ended, the time what it held waits for.
    pub(crate) fn lift_hold(&mut self, now: Timestamp) -> Option<Timestamp> {
        self.held_until.take().filter(|until| *until > now)
    }

    /// When the cool-down ends (or ended: the next request is the probe), while it is open.
    pub(crate) fn open_until(&self) -> Option<Timestamp> {
        self.open_until
    }

    /// The outage, while the circuit is open.
    pub(crate) fn outage(&self) -> Option<Outage> {
        self.open_until?;
        Some(Outage {
            since: self.open_since?,
            last_failure: self.last_failure?,
            last_success: self.last_success,
        })
    }

    /// Gives back the probe of an attempt that ended without an answer from the endpoint, so the
    /// next request probes instead.
    fn abandon_probe(&mut self) {
        self.probe_due = None;
    }

    /// Records an outcome: of the probe (`probe`), or of any other request.
    pub(crate) fn record(&mut self, success: bool, probe: bool, now: Timestamp) -> Settled {
        if self.open_until.is_some() && !probe {
            // Sent before the circuit opened (or as it did): the probe decides. The answer still
            // tells whether the endpoint was failing lately.
            let last = if success {
                &mut self.last_success
            } else {
                &mut self.last_failure
            };
            *last = Some(last.map_or(now, |last| last.max(now)));
            return Settled::Unchanged;
        }
        if success {
            // Deferred deliveries wait for the probe's answer (those put off to the cool-down's
            // end are due already).
            let mut waiting: Vec<Timestamp> =
                self.probe_due.or(self.open_until).into_iter().collect();
            // An urgent probe may come before the cool-down's end: what was put off to that end
            // waits no longer either.
            if let (Some(_), Some(until)) = (self.probe_due, self.open_until)
                && until > now
            {
                waiting.push(until);
            }
            let was_open = self.open_until.is_some();
            // Kept across a close: one probe's success is one request of the recent ones. Reset,
            // an endpoint answering one request in fifty took over a hundred requests to be shut
            // out again each time a lucky probe closed its circuit.
            let failure_share = self.failure_share * (1.0 - SHARE_WEIGHT);
            *self = Self {
                last_success: Some(now),
                failure_share,
                judged: self.judged,
                held_until: self.held_until,
                ..Self::default()
            };
            return if was_open {
                Settled::Closed { waiting }
            } else {
                Settled::Unchanged
            };
        }
        self.failures += 1;
        self.failure_share += (1.0 - self.failure_share) * SHARE_WEIGHT;
        self.last_failure = Some(self.last_failure.map_or(now, |last| last.max(now)));
        let probe_due = self.probe_due.take();
        let was_probe = probe_due.is_some();
        let down = self.failures >= THRESHOLD
            && (self.failure_share > DOWN_FAILURE_SHARE
                || self
                    .last_success
                    .is_none_or(|s| now.as_millis() - s.as_millis() >= QUIET_MS));
        if was_probe || (self.open_until.is_none() && down) {
            self.cooldown_ms = if was_probe {
                (self.cooldown_ms * 2).min(MAX_COOLDOWN_MS)
            } else {
                FIRST_COOLDOWN_MS
            };
            // After a failed probe, up to a fifth longer, at random: an endpoint down on a
            // schedule (up 30 s, down 30 s) met every probe in the same phase of its outage, as
            // the cool-downs are multiples of 30 s, and stayed shut out for as long as it
            // flapped. The first cool-down stays 30 s.
            let jitter = if was_probe {
                (rand::random::<f64>() * self.cooldown_ms as f64 / 5.0) as i64
            } else {
                0
            };
            let until = now.plus_millis(self.cooldown_ms + jitter);
            // What waits for the probe, and, if it came before the cool-down's end (urgent: a
            // test, a resend), what was put off to that end: all of it now waits for the new
            // end, the one a later probe's success moves. Left at the old end, it would still
            // wait for it after a success had closed the circuit: a two-node soak pressing
            // "attempt now" on a down endpoint's deliveries left 122 of them waiting up to
            // 12 minutes after it answered again.
            let mut waiting: Vec<Timestamp> = probe_due.into_iter().collect();
            waiting.extend(self.open_until.filter(|old| *old > now));
            self.open_until = Some(until);
            self.open_since.get_or_insert(now);
            return Settled::Opened { until, waiting };
        }
        Settled::Unchanged
    }
}

/// What an outcome did to the circuit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    Unchanged,
    /// Opened (or opened again) until this time; `waiting` is the times the deliveries deferred
    /// during the probe that failed were put off to (the end of the probe's time, and the old
    /// cool-down's end if the probe came before it).
    Opened {
        until: Timestamp,
        waiting: Vec<Timestamp>,
    },
    /// Closed by the probe's success; `waiting` is the times the deliveries deferred meanwhile
    /// were put off to: the end of the probe's time (and the cool-down's, if the probe came
    /// before it).
    Closed {
        waiting: Vec<Timestamp>,
    },
}

/// What an endpoint's `Retry-After` did to its hold.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Held {
    /// A hold began, until then: worth a line in the log.
    Began(Timestamp),
    /// The hold on was put off: what waits for its old end is to wait for the new one, so
    /// that every delivery it holds waits for one time, the one a change moves to now.
    PutOff(Move),
    Unchanged,
}

/// Deliveries the breaker put off to `from` that are to be due at `to` instead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Move {
    pub(crate) from: Timestamp,
    pub(crate) to: Timestamp,
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
    /// The webhook's organization, named in the lines the circuit's changes log.
    org: &'a OrgId,
    probe: bool,
}

impl<'a> Ticket<'a> {
    pub(crate) fn new(
        breakers: &'a Breakers,
        webhook: &'a WebhookId,
        org: &'a OrgId,
        probe: bool,
    ) -> Self {
        Self {
            breakers,
            webhook,
            org,
            probe,
        }
    }

    /// Records the endpoint's answer. Answers where the deliveries deferred meanwhile should go
    /// now: due at once if it closed the circuit, to the new cool-down's end if a probe failed.
    pub(crate) fn settle(mut self, success: bool, now: Timestamp) -> Vec<Move> {
        // Answered: not to be given back when dropped.
        let probe = std::mem::take(&mut self.probe);
        let settled = of(
            &mut self.breakers.lock().expect("breakers lock"),
            self.webhook,
        )
        .record(success, probe, now);
        match settled {
            Settled::Unchanged => Vec::new(),
            Settled::Opened { until, waiting } => {
                tracing::warn!(webhook = %self.webhook, org = %self.org, until = %until.to_rfc3339(), "endpoint keeps failing; pausing deliveries to it (circuit open) until a probe succeeds");
                waiting
                    .into_iter()
                    .map(|from| Move { from, to: until })
                    .collect()
            }
            Settled::Closed { waiting } => {
                tracing::info!(webhook = %self.webhook, org = %self.org, "endpoint answers again; resuming deliveries to it (circuit closed)");
                waiting
                    .into_iter()
                    .map(|from| Move { from, to: now })
                    .collect()
            }
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

    const PROBE_MS: i64 = 16_000;

    /// Records [`THRESHOLD`] failures in a row at `at`.
    fn fail_in_a_row(b: &mut Breaker, at: Timestamp) {
        for _ in 0..THRESHOLD {
            b.record(false, false, at);
        }
    }

    #[test]
    fn an_endpoint_that_asks_to_wait_is_held_until_then_but_for_urgent_requests() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        let until = t.plus_millis(120_000);
        assert_eq!(b.hold(120, t), Held::Began(until));
        // The other requests in flight, refused a moment later with the same answer, do not
        // move the wait (and what it holds) on by their moment each.
        assert_eq!(b.hold(120, t.plus_millis(500)), Held::Unchanged);
        assert_eq!(b.held_until(t.plus_millis(500)), Some(until));
        assert_eq!(
            b.gate(t.plus_millis(10), PROBE_MS, false),
            Gate::Hold(until)
        );
        assert_eq!(
            b.gate(t.plus_millis(10), PROBE_MS, true),
            Gate::Pass,
            "a test or a resend goes"
        );
        // Answers to requests sent before it (a success among them) do not end it, and a later
        // one may only put it off, taking what waits for its old end along.
        b.record(true, false, t.plus_millis(20));
        assert_eq!(b.hold(5, t.plus_millis(30)), Held::Unchanged, "already on");
        assert_eq!(b.held_until(t.plus_millis(30)), Some(until));
        assert!(!b.is_at_rest(t.plus_millis(30)), "a task ending keeps it");
        let later = t.plus_millis(300_040);
        assert_eq!(
            b.hold(300, t.plus_millis(40)),
            Held::PutOff(Move {
                from: until,
                to: later
            })
        );
        assert_eq!(b.gate(until, PROBE_MS, false), Gate::Hold(later));
        // It ends by itself.
        assert_eq!(b.gate(later, PROBE_MS, false), Gate::Pass);
        assert_eq!(b.held_until(later), None);
        assert!(b.is_at_rest(later));
        // At most an hour; none at all for zero seconds; lifted when asked.
        assert_eq!(
            b.hold(u64::MAX, later),
            Held::Began(later.plus_millis(3_600_000))
        );
        assert_eq!(
            b.lift_hold(later),
            Some(later.plus_millis(3_600_000)),
            "where what it held waits"
        );
        assert_eq!(b.gate(later, PROBE_MS, false), Gate::Pass);
        assert_eq!(b.lift_hold(later), None, "nothing to lift");
        assert_eq!(b.hold(0, later), Held::Unchanged);
        assert_eq!(b.gate(later, PROBE_MS, false), Gate::Pass);
    }

    #[test]
    fn a_hold_outlasting_a_cool_down_holds_the_probe_back_too() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        fail_in_a_row(&mut b, t);
        let open_until = b.open_until().expect("open");
        let held = t.plus_millis(600_000);
        assert_eq!(b.hold(600, t), Held::Began(held));
        assert!(held > open_until);
        // Past the cool-down, no probe goes while the endpoint asked to wait.
        assert_eq!(b.gate(open_until, PROBE_MS, false), Gate::Defer(held));
        // An urgent request still probes.
        assert_eq!(b.gate(open_until, PROBE_MS, true), Gate::Probe);
        // A hold shorter than the cool-down changes nothing.
        let mut b = Breaker::default();
        fail_in_a_row(&mut b, t);
        b.hold(5, t);
        assert_eq!(b.gate(t, PROBE_MS, false), Gate::Defer(open_until));
    }

    #[test]
    fn the_circuit_opens_after_a_run_of_failures_and_a_probe_closes_it() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        for _ in 0..THRESHOLD - 1 {
            assert_eq!(b.record(false, false, t), Settled::Unchanged);
            assert_eq!(b.gate(t, PROBE_MS, false), Gate::Pass);
        }
        let Settled::Opened { until, waiting } = b.record(false, false, t) else {
            panic!("opens")
        };
        assert!(waiting.is_empty(), "nothing waited for a probe");
        assert_eq!(until, t.plus_millis(30_000));
        assert!(matches!(
            b.gate(t.plus_millis(10), PROBE_MS, false),
            Gate::Defer(_)
        ));
        assert_eq!(b.gate(until, PROBE_MS, false), Gate::Probe);
        assert!(
            matches!(b.gate(until, PROBE_MS, false), Gate::Defer(_)),
            "one probe at a time"
        );
        assert_eq!(
            b.record(true, true, until),
            Settled::Closed {
                waiting: vec![until.plus_millis(PROBE_MS)]
            }
        );
        assert_eq!(b.gate(until, PROBE_MS, false), Gate::Pass);
    }

    #[test]
    fn an_urgent_request_goes_as_the_probe_without_waiting_for_the_cool_down() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        fail_in_a_row(&mut b, t);
        let early = t.plus_millis(10);
        assert!(matches!(b.gate(early, PROBE_MS, false), Gate::Defer(_)));
        assert_eq!(b.gate(early, PROBE_MS, true), Gate::Probe);
        // One probe at a time, urgent or not.
        assert!(matches!(b.gate(early, PROBE_MS, true), Gate::Defer(_)));
        assert_eq!(
            b.record(true, true, early),
            Settled::Closed {
                // The probe's deferrals, and those put off to the cool-down's end.
                waiting: vec![early.plus_millis(PROBE_MS), t.plus_millis(30_000)]
            }
        );
        assert_eq!(b.gate(early, PROBE_MS, false), Gate::Pass);
    }

    #[test]
    fn an_urgent_probe_that_fails_puts_off_what_waited_for_the_old_cool_down_too() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        fail_in_a_row(&mut b, t);
        let old_end = t.plus_millis(30_000);
        let early = t.plus_millis(10);
        assert_eq!(b.gate(early, PROBE_MS, true), Gate::Probe);
        let Settled::Opened { until, waiting } = b.record(false, true, early) else {
            panic!("opens again")
        };
        assert!(until > old_end, "{until:?}");
        assert_eq!(waiting, vec![early.plus_millis(PROBE_MS), old_end]);
        // The next probe's success then finds everything at the one end left.
        assert_eq!(b.gate(until, PROBE_MS, false), Gate::Probe);
        assert_eq!(
            b.record(true, true, until),
            Settled::Closed {
                waiting: vec![until.plus_millis(PROBE_MS)]
            }
        );
    }

    /// A breaker that opened at 0, whose first probe (30 s on) failed: what that answered.
    fn failed_probe(b: &mut Breaker) -> Settled {
        let t = Timestamp::from_millis(0);
        fail_in_a_row(b, t);
        let first = t.plus_millis(30_000);
        assert_eq!(b.gate(first, PROBE_MS, false), Gate::Probe);
        b.record(false, true, first)
    }

    #[test]
    fn a_failed_probe_doubles_the_cool_down() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        let first = t.plus_millis(30_000);
        let Settled::Opened { until, waiting } = failed_probe(&mut b) else {
            panic!("opens again")
        };
        assert_eq!(waiting, vec![first.plus_millis(PROBE_MS)]);
        // Twice the first cool-down, and up to a fifth more.
        let waited = until.as_millis() - first.as_millis();
        assert!((60_000..72_000).contains(&waited), "{waited}");
        assert_eq!(
            b.outage(),
            Some(Outage {
                since: t,
                last_failure: first,
                last_success: None,
            }),
            "the outage began when it first opened; the probe failed last"
        );
        assert_eq!(b.gate(until, PROBE_MS, false), Gate::Probe);
        b.record(true, true, until);
        assert_eq!(b.outage(), None);
    }

    /// Runs of failures among successes (an endpoint failing part of the time) leave the
    /// circuit closed; it opens once no request has succeeded for a while.
    #[test]
    fn a_flaky_endpoint_is_not_shut_out_a_silent_one_is() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        b.record(true, false, t);
        for i in 0..3 * THRESHOLD {
            let at = t.plus_millis(100 * i64::from(i));
            assert_eq!(
                b.record(false, false, at),
                Settled::Unchanged,
                "failure {i}"
            );
        }
        let silent = t.plus_millis(QUIET_MS);
        assert!(matches!(
            b.record(false, false, silent),
            Settled::Opened { .. }
        ));
        // A success resets the count: ten more failures open it only after as long again.
        let mut b = Breaker::default();
        b.record(true, false, silent);
        fail_in_a_row(&mut b, silent.plus_millis(QUIET_MS - 1));
        assert_eq!(b.open_until(), None);
        assert!(matches!(
            b.record(false, false, silent.plus_millis(QUIET_MS)),
            Settled::Opened { .. }
        ));
    }

    /// An endpoint that answers one request in fifty is down, though under heavy traffic it is
    /// never quiet for [`QUIET_MS`]; one failing two requests in three is not, however long
    /// that lasts.
    #[test]
    fn a_mostly_dead_endpoint_is_shut_out_though_it_answers_now_and_then() {
        let outcomes = |pattern: &[bool], count: usize| {
            let mut b = Breaker::default();
            let t = Timestamp::from_millis(0);
            b.record(true, false, t);
            for (i, success) in pattern.iter().cycle().take(count).enumerate() {
                let at = t.plus_millis(1 + i as i64);
                if let Settled::Opened { .. } = b.record(*success, false, at) {
                    return Some(at);
                }
            }
            None
        };
        let mut one_in_fifty = vec![false; 49];
        one_in_fifty.push(true);
        let opened = outcomes(&one_in_fifty, 1_000).expect("opens");
        assert!(opened.as_millis() < QUIET_MS, "{opened:?}");
        // A lucky probe closes it; ten more failures open it again, not a hundred.
        let mut b = Breaker::default();
        b.record(true, false, Timestamp::from_millis(0));
        let mut at = Timestamp::from_millis(1);
        while b.open_until().is_none() {
            b.record(false, false, at);
            at = at.plus_millis(1);
        }
        let probe = b.open_until().unwrap();
        assert_eq!(b.gate(probe, PROBE_MS, false), Gate::Probe);
        assert!(matches!(
            b.record(true, true, probe),
            Settled::Closed { .. }
        ));
        let failures = (1..=THRESHOLD)
            .take_while(|i| {
                b.record(false, false, probe.plus_millis(i64::from(*i))) == Settled::Unchanged
            })
            .count();
        assert_eq!(
            failures as u32,
            THRESHOLD - 1,
            "reopened by the tenth failure"
        );
        // Ten failures in a row now and then, but most requests answered.
        let mut flaky = vec![false; 10];
        flaky.extend([true; 6]);
        assert_eq!(outcomes(&flaky, 4_000), None);
        // Two in three failing for a while, then a rare run of forty failures.
        let mut unlucky: Vec<bool> = [false, false, true].repeat(200);
        unlucky.extend([false; 40]);
        assert_eq!(outcomes(&unlucky, unlucky.len()), None);
    }

    /// Answers to requests sent before the circuit opened leave it open, but are remembered:
    /// a success after the last failure keeps deliveries from being failed for the outage
    /// (`health::past_schedule`) until the probe says the endpoint is still down.
    #[test]
    fn answers_sent_before_the_circuit_opened_are_remembered_not_obeyed() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        fail_in_a_row(&mut b, t);
        let (failed, succeeded) = (t.plus_millis(1_000), t.plus_millis(2_000));
        assert_eq!(b.record(false, false, failed), Settled::Unchanged);
        assert_eq!(b.record(true, false, succeeded), Settled::Unchanged);
        assert_eq!(
            b.gate(succeeded, PROBE_MS, false),
            Gate::Defer(t.plus_millis(30_000))
        );
        assert_eq!(
            b.outage(),
            Some(Outage {
                since: t,
                last_failure: failed,
                last_success: Some(succeeded),
            })
        );
        // The probe fails: the endpoint is down after all.
        let probe = t.plus_millis(30_000);
        assert_eq!(b.gate(probe, PROBE_MS, false), Gate::Probe);
        b.record(false, true, probe);
        let outage = b.outage().expect("open again");
        assert_eq!(outage.last_failure, probe);
        assert!(outage.last_success < Some(outage.last_failure));
    }

    /// Cool-downs after a failed probe vary, so that probes to an endpoint down on a schedule
    /// do not all land in its outages.
    #[test]
    fn cool_downs_after_a_failed_probe_vary() {
        let untils: std::collections::BTreeSet<i64> = (0..20)
            .map(|_| match failed_probe(&mut Breaker::default()) {
                Settled::Opened { until, .. } => until.as_millis(),
                other => panic!("opens again: {other:?}"),
            })
            .collect();
        assert!(untils.len() > 10, "{untils:?}");
    }

    /// Only a breaker with nothing to remember is forgotten when its webhook's task ends.
    #[test]
    fn a_breaker_is_at_rest_only_with_nothing_to_remember() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        assert!(b.is_at_rest(t));
        b.record(false, false, t);
        assert!(!b.is_at_rest(t), "a failure counts towards opening it");
        b.record(true, false, t);
        assert!(b.is_at_rest(t));
        let down = t.plus_millis(QUIET_MS);
        fail_in_a_row(&mut b, down);
        assert!(b.open_until().is_some(), "open");
        assert!(!b.is_at_rest(t));
        let probe = down.plus_millis(30_000);
        assert_eq!(b.gate(probe, PROBE_MS, false), Gate::Probe);
        b.record(true, true, probe);
        assert!(b.is_at_rest(t), "closed by the probe's success");
    }

    /// A change to what reaches the endpoint (a new URL), or enabling the webhook again, closes
    /// an open circuit at once and has what it deferred come due now; a new name, the same
    /// version or an older copy change nothing.
    #[test]
    fn a_changed_webhook_gets_a_fresh_start() {
        use herald_core::webhook::{Webhook, WebhookUrl};
        let at = |secs: i64| Timestamp::from_millis(secs * 1000);
        let hook = |url: &str, updated: i64, failing: bool| Webhook {
            id: WebhookId::from_trusted("wh_01jd0000000000000000000000".into()),
            org_id: OrgId::from_trusted("org_01jd0000000000000000000000".into()),
            name: "crm".into(),
            description: None,
            url: WebhookUrl::parse(url).unwrap(),
            events: vec!["*".into()],
            channels: vec![],
            profile: herald_core::profile::ProfileName::Standard,
            signature: None,
            options: Default::default(),
            verification: Default::default(),
            secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            previous_secret: None,
            previous_secret_expires_at: None,
            active: true,
            headers: Default::default(),
            timeout_ms: None,
            retry_schedule: None,
            rate_limit_per_second: None,
            created_at: at(0),
            updated_at: at(updated),
            failing_since: failing.then(|| at(1)),
            disabled_reason: None,
        };
        let (down, fixed) = ("https://down.example/h", "https://fixed.example/h");
        let mut b = Breaker::default();
        assert_eq!(b.start_afresh_if_changed(&hook(down, 0, true), at(0)), None);
        fail_in_a_row(&mut b, at(10));
        let until = b.open_until().expect("open");
        assert_eq!(
            b.start_afresh_if_changed(&hook(down, 0, true), at(11)),
            None
        );
        // Renamed while it keeps failing: nothing that reaches the endpoint changed.
        let renamed = Webhook {
            name: "crm (old)".into(),
            ..hook(down, 5, true)
        };
        assert_eq!(b.start_afresh_if_changed(&renamed, at(11)), None);
        assert!(matches!(b.gate(at(11), 1_000, false), Gate::Defer(_)));
        // Pointed elsewhere: shown closed at once, a fresh start at its next delivery, and
        // what waited goes now.
        assert_eq!(b.open_until_for(&hook(fixed, 12, true)), None);
        assert_eq!(b.open_until_for(&renamed), Some(until));
        assert_eq!(
            b.start_afresh_if_changed(&hook(fixed, 12, true), at(12)),
            Some(vec![until])
        );
        assert_eq!(b.gate(at(12), 1_000, false), Gate::Pass);
        // An older copy, read before the change, does not undo it.
        assert_eq!(
            b.start_afresh_if_changed(&hook(down, 5, true), at(13)),
            None
        );
        // Enabled again (its failing streak cleared), same URL: a fresh start too. A wait the
        // endpoint asked for stays: a cleared streak is also what a success makes, and
        // enabling ends the wait by `lift_hold`.
        fail_in_a_row(&mut b, at(20));
        let held = at(20).plus_millis(600_000);
        assert_eq!(b.hold(600, at(20)), Held::Began(held));
        let until = b.open_until().expect("open again");
        assert_eq!(
            b.held_until_for(&hook(fixed, 30, false), at(30)),
            Some(held)
        );
        assert_eq!(
            b.start_afresh_if_changed(&hook(fixed, 30, false), at(30)),
            Some(vec![until])
        );
        assert_eq!(b.held_until(at(30)), Some(held));
        assert_eq!(b.gate(at(30), 1_000, false), Gate::Hold(held));
        assert_eq!(b.lift_hold(at(30)), Some(held));
        assert!(b.is_at_rest(at(30)));
        // Held with the circuit closed, then pointed elsewhere: what the hold deferred goes,
        // and the new version shows no wait before that.
        assert_eq!(
            b.hold(600, at(31)),
            Held::Began(at(31).plus_millis(600_000))
        );
        assert_eq!(b.held_until_for(&hook(down, 40, true), at(40)), None);
        assert_eq!(
            b.start_afresh_if_changed(&hook(down, 40, true), at(40)),
            Some(vec![at(31).plus_millis(600_000)])
        );
        assert!(b.is_at_rest(at(40)));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::default();
        let t = Timestamp::from_millis(0);
        for _ in 0..THRESHOLD - 1 {
            b.record(false, false, t);
        }
        b.record(true, false, t);
        assert_eq!(b.record(false, false, t), Settled::Unchanged);
    }

    /// One webhook's breaker, opened at 0; `until` is when its cool-down ends.
    struct Opened {
        breakers: Breakers,
        webhook: WebhookId,
        org: OrgId,
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
                    b.record(false, false, t);
                }
                match b.record(false, false, t) {
                    Settled::Opened { until, .. } => until,
                    other => panic!("opens: {other:?}"),
                }
            };
            Self {
                breakers,
                webhook,
                org: OrgId::generate(),
                until,
            }
        }

        fn gate(&self, at: Timestamp, probe_ms: i64, urgent: bool) -> Gate {
            of(&mut self.breakers.lock().unwrap(), &self.webhook).gate(at, probe_ms, urgent)
        }

        fn ticket(&self, probe: bool) -> Ticket<'_> {
            Ticket::new(&self.breakers, &self.webhook, &self.org, probe)
        }
    }

    #[test]
    fn a_probe_that_gets_no_answer_is_given_back() {
        let b = Opened::new();
        let until = b.until;
        assert_eq!(b.gate(until, PROBE_MS, false), Gate::Probe);
        drop(b.ticket(true));
        assert_eq!(
            b.gate(until, PROBE_MS, false),
            Gate::Probe,
            "the next request probes"
        );

        // A probe that got its answer is not given back: the answer decides.
        b.ticket(true).settle(false, until);
        assert!(
            matches!(b.gate(until, PROBE_MS, false), Gate::Defer(_)),
            "failed probe: open again"
        );
        // Twice the cool-down, and up to a fifth more.
        let later = until.plus_millis(72_000);
        assert_eq!(b.gate(later, PROBE_MS, false), Gate::Probe);
        b.ticket(true).settle(true, later);
        assert_eq!(
            b.gate(later, PROBE_MS, false),
            Gate::Pass,
            "successful probe: closed"
        );
    }

    #[test]
    fn an_ordinary_attempt_without_an_answer_leaves_a_probe_in_flight_alone() {
        let b = Opened::new();
        assert_eq!(b.gate(b.until, PROBE_MS, false), Gate::Probe);
        // An attempt let through before the circuit opened ends without an answer.
        drop(b.ticket(false));
        assert!(
            matches!(b.gate(b.until, PROBE_MS, false), Gate::Defer(_)),
            "still one probe at a time"
        );
    }

    #[test]
    fn deliveries_wait_for_the_probe_and_its_success_tells_until_when() {
        let b = Opened::new();
        assert_eq!(b.gate(b.until, PROBE_MS, false), Gate::Probe);
        let due = b.until.plus_millis(PROBE_MS);
        // Not every second: the whole backlog would be written again each time.
        let later = b.until.plus_millis(1_500);
        assert_eq!(b.gate(later, PROBE_MS, false), Gate::Defer(due));
        assert_eq!(
            b.gate(b.until, 5, false),
            Gate::Defer(due),
            "the probe's own window"
        );
        assert_eq!(
            b.ticket(true).settle(true, later),
            vec![Move {
                from: due,
                to: later
            }]
        );
        assert_eq!(b.gate(later, PROBE_MS, false), Gate::Pass);

        // A probe that fails opens the circuit again: they go to the end of the next cool-down
        // (twice as long) at once, rather than come due at the probe's deadline only to be
        // deferred again one by one.
        let b = Opened::new();
        assert_eq!(b.gate(b.until, PROBE_MS, false), Gate::Probe);
        let failed = b.until.plus_millis(2_000);
        let moved = b.ticket(true).settle(false, failed);
        let [Move { from, to }] = moved.as_slice() else {
            panic!("one move: {moved:?}")
        };
        assert_eq!(*from, b.until.plus_millis(PROBE_MS));
        let waited = to.as_millis() - failed.as_millis();
        assert!((60_000..72_000).contains(&waited), "{waited}");
        assert_eq!(b.gate(failed, PROBE_MS, false), Gate::Defer(*to));
        // A request let through before the circuit opened succeeds during the cool-down: the
        // probe still decides (on an endpoint failing part of the time, such successes closed
        // every circuit moments after it opened).
        let b = Opened::new();
        let early = b.until.plus_millis(-20_000);
        assert_eq!(b.gate(early, PROBE_MS, false), Gate::Defer(b.until));
        assert_eq!(b.ticket(false).settle(true, early), vec![]);
        assert_eq!(b.gate(early, PROBE_MS, false), Gate::Defer(b.until));
        assert_eq!(b.gate(b.until, PROBE_MS, false), Gate::Probe);
        // One that fails while the probe is out is not the probe's answer either.
        let later = b.until.plus_millis(1_000);
        assert_eq!(b.ticket(false).settle(false, later), vec![]);
        let due = b.until.plus_millis(PROBE_MS);
        assert_eq!(b.gate(later, PROBE_MS, false), Gate::Defer(due));
        assert_eq!(
            b.ticket(true).settle(true, later),
            vec![Move {
                from: due,
                to: later
            }]
        );
        assert_eq!(b.gate(later, PROBE_MS, false), Gate::Pass);
        // An overdue probe (no answer yet past its window) defers by the minimum.
        let b = Opened::new();
        assert_eq!(b.gate(b.until, 10, false), Gate::Probe);
        let past = b.until.plus_millis(5_000);
        assert_eq!(
            b.gate(past, PROBE_MS, false),
            Gate::Defer(past.plus_millis(1_000))
        );
    }
}
