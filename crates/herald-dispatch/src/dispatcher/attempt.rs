//! One request: render the delivery (or batch) in its webhook's profile, send it, and record
//! an attempt per delivery with its next state.

use std::sync::Arc;
use std::time::Duration;

use herald_core::Timestamp;
use herald_core::delivery::{Attempt, AttemptError, AttemptOutcome, DeliveryState};
use herald_core::directory::OrgSnapshot;
use herald_core::profile::{self, RenderInput};
use herald_core::retry::NextStep;
use herald_core::store::{AttemptRecord, DueDelivery, StoreError};
use herald_core::webhook::Webhook;
use herald_core::{AttemptId, DeliveryId, WebhookId};

use super::Dispatcher;
use super::breaker::{self, Held, Move, Ticket};
use super::cut_off::Sending;
use super::health::past_schedule;
use super::limit::{Signal, Slot};

/// Attempts whose outcome could not be stored (the database is away): one line per 10 s.
static UNRECORDED: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(Duration::from_secs(10));
/// Deliveries that failed their last attempt: one line per 10 s, however many endpoints fail
/// (an endpoint failing one request in two never opens its circuit, which would group them).
static EXHAUSTED: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(Duration::from_secs(10));
/// Endpoints that asked to wait (`Retry-After`): one line per 10 s, however many endpoints ask
/// (one that rate-limits with `Retry-After: 1` would otherwise say so every second).
static ASKED_TO_WAIT: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(Duration::from_secs(10));
/// Requests this node could not send (out of file descriptors): one line per 10 s.
static UNSENT: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(Duration::from_secs(10));
/// How long an endpoint that answered `429` without `Retry-After` is held.
const UNSAID_429_WAIT_SECS: u64 = 1;
/// How soon a batch this node could not send comes due again.
const LOCAL_RETRY: Duration = Duration::from_secs(2);

/// How long the deliveries of a webhook whose WebSub verification is not in place wait before
/// they are looked at again.
const UNVERIFIED_WAIT: Duration = Duration::from_secs(60);

/// Why the batch may not be sent to a webhook that verifies its intent, if it may not: one of
/// its channels is not verified now. A test event, which a user sends on purpose, always goes.
/// Also answers whether that channel's verification is under way (its answer is awaited).
fn unverified(
    snapshot: &OrgSnapshot,
    webhook: &Webhook,
    batch: &[DueDelivery],
    now: herald_core::Timestamp,
) -> Option<(String, bool)> {
    if webhook.verification == herald_core::subscription::Verification::None {
        return None;
    }
    batch.iter().find_map(|d| {
        if d.event.event_type == herald_core::event_type::TEST_EVENT_TYPE {
            return None;
        }
        let channel = snapshot
            .resolve_type(&d.event.event_type)
            .and_then(|t| t.channel);
        let reason = snapshot.withheld_because(webhook, channel, now)?;
        Some((
            reason,
            snapshot.skipped_because(webhook, channel, now).is_none(),
        ))
    })
}

impl Dispatcher {
    /// Attempts a batch of deliveries of one webhook (usually a batch of one).
    /// `slot` is the webhook's concurrency slot: it is given back as soon as the endpoint has
    /// answered (with what the answer says about the endpoint's capacity), so that writing the
    /// outcome (which waits for a group commit) does not keep the endpoint's next request waiting.
    /// `probe` tells whether the webhook's circuit breaker let it through as its probe.
    pub(super) async fn attempt(&self, batch: Vec<DueDelivery>, slot: Slot, probe: bool) {
        let ticket = Ticket::new(
            &self.shared.breakers,
            &batch[0].webhook_id,
            &batch[0].org_id,
            probe,
        );
        if let Err(e) = self.try_attempt(&batch, slot, ticket).await {
            self.shared.recorder.saw(&e);
            // The leases stay; the deliveries come back when they run out.
            self.release_held_leases(batch.iter().map(|d| &d.delivery_id));
            if let Some(held_back) = UNRECORDED.admit() {
                tracing::error!(deliveries = batch.len(), first = %batch[0].delivery_id, error = %herald_core::error_chain(&e), held_back, "the database failed a step of an attempt (renewing its leases before it was sent, or recording its outcome): its deliveries go again once their leases end (said once per 10 s; held_back counts the others)");
            }
        }
    }

    /// Moves what the breaker deferred: due now if the circuit closed or the endpoint's wait
    /// ended, to the next cool-down's end if its probe failed, to the wait's new end if it was
    /// put off. One store call, whatever the backlog; if it fails, they come due at their old
    /// time and are deferred again.
    pub(super) async fn move_deferred(&self, webhook: &WebhookId, moved: Move) {
        let Move { from, to } = moved;
        match self.shared.store.move_deferred(webhook, from, to).await {
            Ok(0) => {}
            Ok(count) => {
                tracing::debug!(webhook = %webhook, count, to = %to.to_rfc3339(), "deferred deliveries moved (a probe answered, or the endpoint's wait changed)");
                self.wake_delivery_scheduler();
            }
            Err(e) => {
                tracing::warn!(webhook = %webhook, error = %herald_core::error_chain(&e), until = %from.to_rfc3339(), "could not move deferred deliveries; they come due then");
            }
        }
    }

    async fn try_attempt(
        &self,
        batch: &[DueDelivery],
        slot: Slot,
        ticket: Ticket<'_>,
    ) -> Result<(), StoreError> {
        let shared = &self.shared;
        let Some((snapshot, webhook)) = self.webhook_to_send_to(batch).await? else {
            return Ok(());
        };
        if let Some((reason, under_way)) =
            unverified(&snapshot, &webhook, batch, shared.clock.now())
        {
            return self
                .wait_for_verification(batch, &webhook, &reason, under_way)
                .await;
        }
        let started_at = shared.clock.now();
        let Ok(ends) = self.lease_for_attempt(batch, &webhook, started_at).await? else {
            return Ok(());
        };
        let Some(timeout) = Self::timeout_within_lease(ends, &webhook, started_at) else {
            // Too little of the lease is left for an attempt: leave the deliveries to whichever
            // node takes them when the lease ends (this one, most likely).
            tracing::debug!(deliveries = batch.len(), first = %batch[0].delivery_id, "lease nearly over; not starting an attempt");
            self.release_held_leases(batch.iter().map(|d| &d.delivery_id));
            return Ok(());
        };
        let request = render(
            &snapshot,
            &webhook,
            batch,
            started_at,
            &shared.settings.public_url,
        );
        let headers: Vec<(String, String)> = webhook
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Boxed, and so freed once the endpoint answered: the exchange's future is four fifths
        // of this one's size, which an attempt would otherwise keep while its outcome waits for
        // the database (thousands of them, when the writer is behind).
        let mut slot = slot;
        let sending = Sending::new(&shared.cut_off_requests, batch, started_at);
        let outcome = Box::pin(shared.client.send_noting_slow(
            webhook.url.as_str(),
            request,
            &headers,
            timeout,
            || slot.slow(&shared.slow),
        ))
        .await;
        sending.ended();
        if let Some(AttemptError::Local(why)) = &outcome.error {
            drop((slot, ticket));
            return self.put_off_unsent(batch, why).await;
        }
        self.hear_answer(&webhook, &outcome, timeout, slot, ticket)
            .await;

        let metrics = &shared.metrics;
        metrics
            .attempt_latency
            .observe_ms(u64::from(outcome.duration_ms));
        match outcome.error {
            Some(AttemptError::Blocked(_)) => metrics.blocked.add(batch.len() as u64),
            Some(AttemptError::CutShort) => metrics.cut_short.add(1),
            _ => {}
        }
        // Each outcome moves its delivery on only under the lease it was sent under: if that
        // ended first (a slow write of outcomes), another node may be sending it now.
        let leases = self.release_held_leases(batch.iter().map(|d| &d.delivery_id));
        let outcomes = Outcomes::of(
            batch,
            &webhook,
            &outcome,
            &leases,
            started_at,
            shared.clock.now(),
        );
        let failed = outcomes
            .steps
            .iter()
            .filter(|s| !matches!(s, NextStep::Succeeded));
        metrics.failed_attempts.add(failed.count() as u64);
        let moved = shared.recorder.record(outcomes.records).await?;
        self.after_recorded(
            &webhook,
            &outcome,
            &outcomes.steps,
            outcomes.exhausted,
            &moved,
        );
        self.track_health(&webhook, &outcome).await
    }

    /// The organization's snapshot and the webhook the batch goes to, if it is to be sent:
    /// not if the organization or the webhook was deleted (their pending deliveries went with
    /// them), nor if the webhook is paused (the batch is given back, parked).
    async fn webhook_to_send_to(
        &self,
        batch: &[DueDelivery],
    ) -> Result<Option<(Arc<OrgSnapshot>, Arc<Webhook>)>, StoreError> {
        let shared = &self.shared;
        let first = &batch[0];
        let ids = || batch.iter().map(|d| &d.delivery_id);
        let snapshot = match shared.directory.snapshot(&first.org_id).await {
            Ok(s) => s,
            Err(StoreError::NotFound) => {
                self.release_held_leases(ids());
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let Some(webhook) = snapshot.webhook(&first.webhook_id).cloned() else {
            self.release_held_leases(ids());
            return Ok(None);
        };
        if !webhook.active {
            for (id, lease_until) in self.release_held_leases(ids()) {
                shared.store.release_lease(&id, lease_until).await?;
            }
            return Ok(None);
        }
        Ok(Some((snapshot, webhook)))
    }

    /// The webhook's WebSub verification is pending or was refused (it was switched on again,
    /// say, and the subscriber said no, as `reason` tells): its deliveries wait for it rather
    /// than go to an endpoint that has not confirmed. Those that would wait past the end of
    /// their retry schedule are skipped instead, as the events that arrive while the channel is
    /// not verified are: they would otherwise be looked at every minute for as long as nobody
    /// verifies it again. While the channel's verification is under way (`under_way`: it takes
    /// the webhook's timeout at most) every one waits for its answer, whatever is left of its
    /// schedule: a webhook with no retries would otherwise lose each event that arrives then.
    async fn wait_for_verification(
        &self,
        batch: &[DueDelivery],
        webhook: &Webhook,
        reason: &str,
        under_way: bool,
    ) -> Result<(), StoreError> {
        let shared = &self.shared;
        let org = &batch[0].org_id;
        let until = shared
            .clock
            .now()
            .plus_millis(UNVERIFIED_WAIT.as_millis() as i64);
        let (ended, waiting): (Vec<&DueDelivery>, Vec<&DueDelivery>) = batch
            .iter()
            .partition(|d| !under_way && past_schedule(d, webhook, until, None));
        if !ended.is_empty() {
            let leases = self.release_held_leases(ended.iter().map(|d| &d.delivery_id));
            let why = format!("{reason}; it waited until its retry schedule ran out");
            let now = shared.clock.now();
            let skipped = shared
                .store
                .end_unsent(org, &leases, DeliveryState::Skipped, &why, now)
                .await?;
            tracing::info!(webhook = %webhook.id, deliveries = skipped.len(), reason, "deliveries skipped: their WebSub channel stayed unverified past their retry schedule");
        }
        let count = self
            .defer_held(org, waiting.iter().map(|d| &d.delivery_id), until)
            .await?;
        tracing::debug!(webhook = %webhook.id, deliveries = count, reason, "webhook not verified; deliveries wait");
        Ok(())
    }

    /// This node could not send the batch (out of file descriptors): nothing the endpoint did,
    /// so no attempt is counted against it, its circuit and its limit hear nothing, and the
    /// batch comes due again in a moment.
    async fn put_off_unsent(&self, batch: &[DueDelivery], why: &str) -> Result<(), StoreError> {
        if let Some(held_back) = UNSENT.admit() {
            tracing::error!(webhook = %batch[0].webhook_id, held_back, "could not send a request: {why} (said once per 10 s; held_back counts the others)");
        }
        let until = self
            .shared
            .clock
            .now()
            .plus_millis(LOCAL_RETRY.as_millis() as i64);
        self.defer_held(
            &batch[0].org_id,
            batch.iter().map(|d| &d.delivery_id),
            until,
        )
        .await?;
        self.wake_delivery_scheduler();
        Ok(())
    }

    /// What the endpoint's answer says about it, heard before the outcome is written (a
    /// failure to write it says nothing about the endpoint): its concurrency slot goes back
    /// with the answer's signal, and its circuit breaker hears whether it succeeded.
    async fn hear_answer(
        &self,
        webhook: &Webhook,
        outcome: &AttemptOutcome,
        timeout: Duration,
        slot: Slot,
        ticket: Ticket<'_>,
    ) {
        // A timeout cut short to fit the lease says nothing about the endpoint's capacity.
        let shortened = timeout < Duration::from_millis(u64::from(webhook.effective_timeout_ms()));
        let cut = slot.finish(match Signal::of(outcome) {
            Signal::Strained
                if shortened && matches!(outcome.error, Some(AttemptError::Timeout)) =>
            {
                Signal::Unknown
            }
            signal => signal,
        });
        let now = self.shared.clock.now();
        // The endpoint's wait first, so that what the circuit's change sends on goes no
        // sooner than the wait's end. A 429 that does not say how long asks to slow down all
        // the same: held for a moment, the backlog behind it does not run into the same
        // refusal again and again until the circuit opens (a fast endpoint limiting itself to
        // 50 requests a second got 50 deliveries every 30 s so, the circuit's cool-down).
        let asked = outcome
            .retry_after_secs()
            .filter(|secs| *secs > 0)
            .or_else(|| (outcome.status == Some(429)).then_some(UNSAID_429_WAIT_SECS));
        let (held, held_until) = {
            let mut breakers = self.shared.breakers.lock().expect("breakers lock");
            let breaker = breaker::of(&mut breakers, &webhook.id);
            let held = asked.map_or(Held::Unchanged, |secs| breaker.hold(secs, now));
            (held, breaker.held_until(now))
        };
        match held {
            Held::Began(until) => {
                if let Some(held_back) = ASKED_TO_WAIT.admit() {
                    tracing::info!(webhook = %webhook.id, org = %webhook.org_id, status = outcome.status, until = %until.to_rfc3339(), held_back, "endpoint asked to wait (Retry-After, or a 429 without it: a second); holding its deliveries until then, but for tests and resends (said once per 10 s; held_back counts the others)");
                }
            }
            Held::PutOff(moved) => self.move_deferred(&webhook.id, moved).await,
            Held::Unchanged => {}
        }
        // The circuit protects this node too: a request given up for want of room here counts
        // as a failure (a probe cut short backs off as a failed one does). The failing streak
        // that disables the webhook does not hear of it (`track_health`). An answer that says
        // when to come back (or a bare 429) is the endpoint at work, not down: its wait holds
        // what follows, and the circuit hears an answer, not a failure. Counted as one, the
        // requests in flight, refused together, opened the circuit, whose cool-down (30 s) then
        // outlasted a shorter wait.
        for moved in ticket.settle(outcome.is_success() || asked.is_some(), now) {
            let to = held_until.map_or(moved.to, |until| moved.to.max(until));
            self.move_deferred(&webhook.id, Move { to, ..moved }).await;
        }
        if let (Some(limit), Some(error)) = (cut, &outcome.error) {
            // One line when it is down to one request at a time; the steps there are details.
            let why = match error {
                AttemptError::Connect(_) => "cannot be reached",
                AttemptError::Timeout | AttemptError::CutShort => "does not answer in time",
                _ => "answers that it is overloaded",
            };
            if limit == 1 {
                tracing::info!(webhook = %webhook.id, org = %webhook.org_id, error = error.code(), status = outcome.status, "endpoint {why}; sending it one request at a time until it answers again");
            } else {
                tracing::debug!(webhook = %webhook.id, error = error.code(), status = outcome.status, limit, "endpoint {why}; sending fewer requests to it at once");
            }
        }
    }

    /// Counts what the stored outcomes did (`moved`: which were their deliveries'), wakes the
    /// scheduler for retries, and reports the deliveries that failed their last attempt.
    fn after_recorded(
        &self,
        webhook: &Webhook,
        outcome: &AttemptOutcome,
        steps: &[NextStep],
        mut exhausted: Vec<Exhausted<'_>>,
        moved: &[bool],
    ) {
        let metrics = &self.shared.metrics;
        for (step, moved) in steps.iter().zip(moved) {
            match (step, moved) {
                (_, false) => {}
                (NextStep::Succeeded, true) => metrics.delivered.add(1),
                (NextStep::RetryAt(_), true) => metrics.retries_scheduled.add(1),
                (NextStep::Failed, true) => metrics.exhausted.add(1),
            }
        }
        if steps.iter().any(|s| matches!(s, NextStep::RetryAt(_))) {
            self.wake_delivery_scheduler();
        }
        // Only where the outcome was the delivery's: not where its lease had passed to another
        // node meanwhile (this one stalled), which may have delivered it.
        exhausted.retain(|e| moved.get(e.record).copied().unwrap_or(false));
        // One line per 10 s: each delivery's history is in the API, its count in `/metrics`.
        // Those held back are counted on the next line, or said on their own once the 10 s
        // are over.
        if let (Some(first), Some(error)) = (exhausted.first(), &outcome.error) {
            let said_later = |held: u64| {
                let webhooks = exhausted_webhooks::take();
                tracing::warn!(
                    deliveries = held,
                    webhooks,
                    "more deliveries failed after their last attempt in the last 10 s (each is in its webhook's history; herald_deliveries_exhausted_total counts them)"
                );
            };
            match EXHAUSTED.admit_or_later(exhausted.len() as u64, said_later) {
                Some(held_back) => {
                    let held_back_webhooks = exhausted_webhooks::take();
                    tracing::warn!(delivery = %first.due.delivery_id, deliveries = exhausted.len(), webhook = %webhook.id, org = %webhook.org_id, attempts = first.attempts, error = error.code(), held_back, held_back_webhooks, "delivery failed after its last attempt (said once per 10 s; held_back counts the deliveries since, held_back_webhooks names their webhooks)");
                }
                None => exhausted_webhooks::note(&webhook.id, exhausted.len() as u64),
            }
        }
        for e in exhausted {
            self.report_exhausted(e.due, webhook, e.attempts, &e.error);
        }
    }
}

/// Renders the batch in its webhook's profile, as at `now`.
fn render(
    snapshot: &OrgSnapshot,
    webhook: &Webhook,
    batch: &[DueDelivery],
    now: Timestamp,
    public_url: &str,
) -> profile::OutgoingRequest {
    let resolved: Vec<_> = batch
        .iter()
        .map(|d| snapshot.resolve_type(&d.event.event_type))
        .collect();
    let inputs: Vec<RenderInput<'_>> = batch
        .iter()
        .zip(&resolved)
        .map(|(d, t)| RenderInput {
            event: &d.event,
            webhook,
            org: &snapshot.org,
            delivery_id: &d.delivery_id,
            now,
            public_url,
            channel: t.as_ref().and_then(|t| t.channel),
            type_uri: t.as_ref().and_then(|t| t.uri),
        })
        .collect();
    profile::render_batch(&inputs)
}

/// A delivery whose last attempt failed, to report once its outcome is stored.
struct Exhausted<'a> {
    /// Its outcome's place among the records.
    record: usize,
    due: &'a DueDelivery,
    attempts: u32,
    error: String,
}

/// An attempt's outcome for each delivery of its batch: the records to store, and what each
/// does to its delivery.
struct Outcomes<'a> {
    records: Vec<AttemptRecord>,
    steps: Vec<NextStep>,
    exhausted: Vec<Exhausted<'a>>,
}

impl<'a> Outcomes<'a> {
    /// Each delivery's next step by its webhook's retry schedule, recorded under the lease it
    /// was sent under (`leases`).
    fn of(
        batch: &'a [DueDelivery],
        webhook: &Webhook,
        outcome: &AttemptOutcome,
        leases: &[(DeliveryId, Timestamp)],
        started_at: Timestamp,
        finished_at: Timestamp,
    ) -> Self {
        let schedule = webhook.effective_retry_schedule();
        let mut records = Vec::with_capacity(batch.len());
        let mut steps = Vec::with_capacity(batch.len());
        let mut exhausted = Vec::new();
        // One jitter for the whole batch: its deliveries come due together again and go out
        // as one batch, rather than as pieces spread over the jitter's tenth of the delay.
        let jitter = rand::random();
        let lease_of = |id| leases.iter().find(|(held, _)| held == id).map(|(_, l)| *l);
        for due in batch {
            let number = due.attempt_count + 1;
            let next = schedule.next_step(
                number.saturating_sub(due.schedule_base),
                outcome,
                finished_at,
                jitter,
            );
            steps.push(next);
            if let (NextStep::Failed, Some(error)) = (&next, &outcome.error) {
                exhausted.push(Exhausted {
                    record: records.len(),
                    due,
                    attempts: number,
                    error: error.message(),
                });
            }
            records.push(AttemptRecord {
                org_id: due.org_id.clone(),
                attempt: Attempt {
                    id: AttemptId::generate(),
                    delivery_id: due.delivery_id.clone(),
                    number,
                    started_at,
                    duration_ms: outcome.duration_ms,
                    status: outcome.status,
                    error: outcome.error.as_ref().map(|e| e.code().to_owned()),
                    error_message: outcome.error.as_ref().map(|e| e.message()),
                    response_body: outcome.response_body.clone(),
                },
                next,
                lease_until: lease_of(&due.delivery_id),
            });
        }
        Self {
            records,
            steps,
            exhausted,
        }
    }
}

/// The webhooks whose exhausted deliveries the log held back, with how many, for the line that
/// says them: an operator reading "more deliveries failed" needs to know where to look.
mod exhausted_webhooks {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// Webhooks named at most in one line; past it, how many others.
    const NAMED: usize = 10;

    type Held = Mutex<BTreeMap<String, u64>>;

    static HELD: Held = Mutex::new(BTreeMap::new());

    pub(super) fn note(webhook: &herald_core::WebhookId, deliveries: u64) {
        note_in(&HELD, webhook, deliveries);
    }

    pub(super) fn take() -> String {
        take_from(&HELD)
    }

    fn note_in(held: &Held, webhook: &herald_core::WebhookId, deliveries: u64) {
        let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: past a thousand webhooks, the rest are only counted by the line.
        if held.len() < 1_000 || held.contains_key(webhook.as_str()) {
            *held.entry(webhook.to_string()).or_default() += deliveries;
        }
    }

    /// `wh_a (3), wh_b (1)`, the most first, and how many other webhooks; empty if none.
    fn take_from(held: &Held) -> String {
        let held = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
        let mut by_count: Vec<(String, u64)> = held.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let others = by_count.len().saturating_sub(NAMED);
        let mut said: Vec<String> = by_count
            .into_iter()
            .take(NAMED)
            .map(|(webhook, n)| format!("{webhook} ({n})"))
            .collect();
        if others > 0 {
            said.push(format!("and {others} more"));
        }
        said.join(", ")
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_webhooks_held_back_are_named_the_most_first() {
            let held = super::Held::default();
            let id = |s: &str| herald_core::WebhookId::parse(s).unwrap();
            super::note_in(&held, &id("wh_01aaaaaaaaaaaaaaaaaaaaaaaa"), 1);
            super::note_in(&held, &id("wh_01bbbbbbbbbbbbbbbbbbbbbbbb"), 2);
            super::note_in(&held, &id("wh_01aaaaaaaaaaaaaaaaaaaaaaaa"), 2);
            assert_eq!(
                super::take_from(&held),
                "wh_01aaaaaaaaaaaaaaaaaaaaaaaa (3), wh_01bbbbbbbbbbbbbbbbbbbbbbbb (2)"
            );
            assert_eq!(super::take_from(&held), "", "taken");
            for i in 0..12 {
                super::note_in(&held, &id(&format!("wh_01aaaaaaaaaaaaaaaaaaaaaa{i:02}")), 1);
            }
            assert!(super::take_from(&held).ends_with(", and 2 more"));
        }
    }
}
