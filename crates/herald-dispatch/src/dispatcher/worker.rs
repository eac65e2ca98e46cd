//! One webhook's task: takes its deliveries in arrival order and runs up to its concurrency
//! limit at once. For a webhook with a batch window (Opal), deliveries that arrive within the
//! window after the first share one request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinSet;

use herald_core::WebhookId;
use herald_core::store::DueDelivery;
use herald_core::webhook::Webhook;

use super::breaker::{self, Gate, Move};
use super::health::past_schedule;
use super::limit::{Limit, Slot};

use super::{Dispatcher, Queued, Queues};

/// The most deliveries one batched request carries.
pub(crate) const MAX_DELIVERIES_PER_BATCH: usize = 100;
/// The most deliveries an open circuit defers with one write.
const MAX_DEFERRED: usize = 1_000;

impl Dispatcher {
    pub(super) async fn run_worker(
        self,
        webhook_id: WebhookId,
        mut queues: Queues<mpsc::UnboundedReceiver<Queued>>,
        slots: Arc<Limit>,
    ) {
        let mut in_flight = JoinSet::new();
        // The earliest time the next request may start, when the webhook has a rate limit.
        let mut next_slot = tokio::time::Instant::now();
        let mut stop = self.shared.stop.subscribe();
        while let Some(first) = self.next_queued(&webhook_id, &mut queues).await {
            if !self.is_current(&first) {
                // Left behind by an eviction or a resend: dropped before it takes a rate-limit slot.
                continue;
            }
            self.wait_while_paused(&mut stop).await;
            if self.shared.stopping.load(Ordering::SeqCst) {
                self.give_back(vec![first], &mut queues).await;
                continue;
            }
            let webhook = self.webhook_of(&first.delivery).await;
            let urgent = first.urgent;
            let batch = self
                .gather_batch(first, webhook.as_deref(), &mut queues.regular)
                .await;
            if let Some(rate) = webhook.as_ref().and_then(|w| w.rate_limit_per_second) {
                let at = next_slot.max(tokio::time::Instant::now());
                tokio::time::sleep_until(at).await;
                next_slot = at + Duration::from_secs(1) / rate.max(1);
            }
            let room = tokio::select! {
                biased;
                _ = stop.wait_for(|stopping| *stopping) => None,
                room = self.room_to_send(&slots) => Some(room),
            };
            let Some((attempt, permit)) = room else {
                // Shutting down while the attempts in flight hold every slot.
                self.give_back(batch, &mut queues).await;
                continue;
            };
            // The database may have gone away while this waited for room (behind an attempt
            // to a slow endpoint, say): the pause holds for it too.
            self.wait_while_paused(&mut stop).await;
            if self.shared.stopping.load(Ordering::SeqCst) {
                drop((attempt, permit));
                self.give_back(batch, &mut queues).await;
                continue;
            }
            let batch = self.start(batch);
            if batch.is_empty() {
                // Evicted while it waited: back in the store, to be pulled again.
                continue;
            }
            let probe_ms = webhook.as_ref().map_or(breaker::LONGEST_PROBE_MS, |w| {
                breaker::probe_ms(w.effective_timeout_ms())
            });
            let Some(probe) = self
                .pass_breaker(
                    &webhook_id,
                    webhook.as_deref(),
                    &batch,
                    probe_ms,
                    urgent,
                    &mut queues.regular,
                )
                .await
            else {
                continue;
            };
            if self.shared.stopping.load(Ordering::SeqCst) {
                // Shutting down: what has not started is given back rather than being sent and
                // cut off half-way.
                if let Some(first) = batch.first() {
                    let org = first.org_id.clone();
                    self.give_back_leases(&org, batch.iter().map(|d| &d.delivery_id))
                        .await;
                }
                continue;
            }
            let this = self.clone();
            in_flight.spawn(async move {
                // Boxed: the attempt's future is large (rendering, the HTTP exchange), and a task
                // copies its future when spawned and again when it finishes; this keeps the copy
                // to the few values captured here.
                Box::pin(this.attempt(batch, permit, probe)).await;
                drop(attempt);
            });
            while in_flight.try_join_next().is_some() {}
        }
        while in_flight.join_next().await.is_some() {}
        // Its attempts all settled: a breaker with nothing to remember goes with the task (kept,
        // every webhook that ever sent, deleted ones too, would hold one for good; a new task
        // makes another). An open one stays.
        let mut breakers = self.shared.breakers.lock().expect("breakers lock");
        if breakers
            .get(&webhook_id)
            .is_some_and(|b| b.is_at_rest(self.shared.clock.now()))
        {
            breakers.remove(&webhook_id);
        }
    }

    /// The next delivery for this webhook, the urgent queue first; `None` when the task should
    /// end: idle for `idle_worker` (it leaves the webhook's entry, unless something arrived
    /// while it decided), or the dispatcher is draining (both queues close together, and the
    /// regular queue's `None` ends the wait at once).
    async fn next_queued(
        &self,
        webhook_id: &WebhookId,
        queues: &mut Queues<mpsc::UnboundedReceiver<Queued>>,
    ) -> Option<Queued> {
        let next = tokio::select! {
            biased;
            Some(d) = queues.urgent.recv() => Some(d),
            d = queues.regular.recv() => d,
            _ = tokio::time::sleep(self.shared.settings.idle_worker) => None,
        };
        if next.is_some() {
            return next;
        }
        let mut workers = self.shared.workers.lock().expect("workers lock");
        let last = queues
            .urgent
            .try_recv()
            .or_else(|_| queues.regular.try_recv())
            .ok();
        if last.is_none() {
            workers.remove(webhook_id);
        }
        last
    }

    /// `first` and, for a webhook with a batch window (Opal), what arrives within the window
    /// after it, up to [`MAX_DELIVERIES_PER_BATCH`]. A test or a resend goes alone: what would share its
    /// request would pass an open circuit with it.
    async fn gather_batch(
        &self,
        first: Queued,
        webhook: Option<&Webhook>,
        queue: &mut mpsc::UnboundedReceiver<Queued>,
    ) -> Vec<Queued> {
        let window = webhook
            .and_then(|w| w.batch_window_ms())
            .map(|ms| Duration::from_millis(u64::from(ms)))
            .filter(|_| !first.urgent);
        let mut batch = vec![first];
        let Some(window) = window else {
            return batch;
        };
        let deadline = tokio::time::Instant::now() + window;
        while batch.len() < MAX_DELIVERIES_PER_BATCH {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(q)) if self.is_current(&q) => batch.push(q),
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        batch
    }

    /// While the database is away, waits for its return (or for the stop): an attempt's
    /// outcome could not be stored, and its delivery would be sent again after its lease.
    async fn wait_while_paused(&self, stop: &mut tokio::sync::watch::Receiver<bool>) {
        if self.shared.recorder.paused() {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopping| *stopping) => {}
                () = self.shared.recorder.storable() => {}
            }
        }
    }

    /// Room for one more attempt: one of the node's attempts (kept until its outcome is
    /// written), the node's room for one more request, and a slot of the webhook's limit, taken
    /// last: a slot taken while waiting for the others would look busy to the adaptive limit,
    /// which would then grow on the store's backpressure or on other webhooks' traffic.
    ///
    /// A webhook has no bound of its own on attempts whose outcome is being written: a bound of
    /// eight per slot (512 at 64 slots) held `batch` to about 20,000 deliveries/s while ingest
    /// was running, when a write of outcomes waits 25 ms or more behind large groups of events;
    /// the node's bound keeps memory flat, and its semaphore serves webhooks in turn.
    async fn room_to_send(&self, slots: &Arc<Limit>) -> (OwnedSemaphorePermit, Slot) {
        let shared = &self.shared;
        let attempt = shared
            .attempts
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        let outgoing = shared
            .outgoing
            .clone()
            .acquire_owned()
            .await
            .expect("never closed");
        (attempt, slots.acquire().await.with_outgoing(outgoing))
    }

    /// Shutting down: gives `taken` (taken off the queue, not started) and everything queued
    /// behind it back to the store.
    async fn give_back(
        &self,
        taken: Vec<Queued>,
        queues: &mut Queues<mpsc::UnboundedReceiver<Queued>>,
    ) {
        let Some(org) = taken.first().map(|q| q.delivery.org_id.clone()) else {
            return;
        };
        let mut ids: Vec<_> = taken.into_iter().map(|q| q.delivery.delivery_id).collect();
        // The senders are gone (the dispatcher is draining): this empties the queues.
        while let Ok(queued) = queues
            .urgent
            .try_recv()
            .or_else(|_| queues.regular.try_recv())
        {
            if self.is_current(&queued) {
                ids.push(queued.delivery.delivery_id);
            }
        }
        self.give_back_leases(&org, ids.iter()).await;
    }

    /// Gives these held deliveries back to the store, due now, so that another node (or this
    /// one, started again) takes them at once rather than when their leases end: with
    /// PostgreSQL, a rolling restart would otherwise hold each node's backlog up for a lease.
    async fn give_back_leases<'a>(
        &self,
        org: &herald_core::OrgId,
        ids: impl IntoIterator<Item = &'a herald_core::DeliveryId>,
    ) {
        let now = self.shared.clock.now();
        match self.defer_held(org, ids, now).await {
            Ok(0) => {}
            Ok(count) => {
                // Summed and logged once by `drain`.
                self.shared
                    .given_back_on_stop
                    .fetch_add(count as u64, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(
                error = %herald_core::error_chain(&e),
                "could not give deliveries back on shutdown; they come back when their leases end"
            ),
        }
    }

    /// The webhook as the directory has it now.
    async fn webhook_of(&self, due: &DueDelivery) -> Option<Arc<Webhook>> {
        let snapshot = self.shared.directory.snapshot(&due.org_id).await.ok()?;
        snapshot.webhook(&due.webhook_id).cloned()
    }

    /// Whether the webhook's circuit lets this batch through (`Some`, and whether it is the
    /// probe: an `urgent` batch is one as soon as no other probe is out); if not, the batch is
    /// deferred in the store to the end of the cool-down, of the probe that is out (`probe_ms`
    /// is how long one may take) or of the wait the endpoint asked for (`Retry-After`), and so
    /// is what is queued behind it, up to [`MAX_DEFERRED`] in all: a backlog is then put off a
    /// thousand at a time, where one write each, waited for in turn, took minutes for a large
    /// one. Those an open circuit's deferral would carry past the end of their retry schedule
    /// fail instead ([`past_schedule`]).
    async fn pass_breaker(
        &self,
        webhook: &WebhookId,
        hook: Option<&Webhook>,
        batch: &[DueDelivery],
        probe_ms: i64,
        urgent: bool,
        queue: &mut mpsc::UnboundedReceiver<Queued>,
    ) -> Option<bool> {
        let now = self.shared.clock.now();
        let (gate, outage, afresh) = {
            let mut breakers = self.shared.breakers.lock().expect("breakers lock");
            let breaker = breaker::of(&mut breakers, webhook);
            let afresh = hook.and_then(|w| breaker.start_afresh_if_changed(w, now));
            (
                breaker.gate(now, probe_ms, urgent),
                breaker.outage(),
                afresh,
            )
        };
        if let Some(waiting) = afresh {
            self.send_what_waited(webhook, waiting, now).await;
        }
        // Held at the endpoint's request rather than for its failures: nothing is failed for
        // its retry schedule, and a closed circuit is no reason to send them now.
        let (until, asked) = match gate {
            Gate::Pass => return Some(false),
            Gate::Probe => return Some(true),
            Gate::Defer(until) => (until, false),
            Gate::Hold(until) => (until, true),
        };
        let mut behind = Vec::new();
        while batch.len() + behind.len() < MAX_DEFERRED {
            match queue.try_recv() {
                Ok(queued) => behind.push(queued),
                Err(_) => break,
            }
        }
        let behind = self.start(behind);
        // One webhook's deliveries, so one organization's. Each under the lease this node
        // took: one that has ended may be another node's now.
        let org = &batch.first().or(behind.first())?.org_id;
        // An urgent batch (a test, a resend: someone is waiting for it) waits for the probe.
        let judged = if urgent { &[][..] } else { batch };
        let (ended, mut waiting): (Vec<&DueDelivery>, Vec<&DueDelivery>) =
            judged.iter().chain(&behind).partition(|d| {
                // A paused webhook's deliveries are parked when given back, not failed.
                !asked && hook.is_some_and(|w| w.active && past_schedule(d, w, until, outage))
            });
        if urgent {
            waiting.extend(batch);
        }
        if let Some(hook) = hook {
            self.fail_past_schedule(hook, &ended).await;
        }
        let ids = waiting.iter().map(|d| &d.delivery_id);
        if let Err(e) = self.defer_held(org, ids, until).await {
            tracing::error!(webhook = %webhook, error = %herald_core::error_chain(&e), "could not defer deliveries; they come back when their lease ends");
        }
        // A probe that succeeded while these were written moved what it found put off to
        // `until`, but not these: they would wait for the probe's deadline (up to a minute).
        // So did a wait the endpoint asked for that was ended meanwhile (someone retried what
        // waits, or changed the webhook), which could have had them wait up to an hour.
        let (closed, held) = {
            let now = self.shared.clock.now();
            let mut breakers = self.shared.breakers.lock().expect("breakers lock");
            let breaker = breaker::of(&mut breakers, webhook);
            (
                breaker.open_until().is_none(),
                breaker.held_until(now).is_some(),
            )
        };
        if closed && (!asked || !held) {
            let to = self.shared.clock.now();
            self.move_deferred(webhook, Move { from: until, to }).await;
        }
        self.wake_delivery_scheduler();
        None
    }
}
