//! Per-webhook queues. Each webhook with work gets its own task and its own concurrency limit,
//! so an endpoint that hangs until its timeout holds only its own slots; every other webhook's
//! deliveries go on at full speed. The node's bound on requests in flight is shared, so a
//! request unanswered after a second moves to a second bound of slow requests, giving its place
//! back, or is given up when that one is full: many endpoints hanging at once hold up the others
//! for a second, not their timeout.
//!
//! - `mod.rs`: the handle ingest and the scheduler use, and what is held in memory.
//! - `worker.rs`: one webhook's task (and Opal's batch window).
//! - `attempt.rs`: one request for one delivery (or one batch), and recording its outcome.
//! - `leases.rs`: keeping the leases of what this node holds, and attempts within them.
//! - `cut_off.rs`: attempts a stop cut off, recorded as `interrupted` and given back.
//! - `limit.rs`: how many requests a webhook may have in flight (adaptive).
//! - `breaker.rs`: each webhook's circuit breaker (cool-downs, the probe, what waited for it).
//! - `health.rs`: failing streaks, disabling a webhook that keeps failing, and which deliveries
//!   an outage carried past the end of their retry schedule.
//! - `held.rs`: the deliveries held in memory, and their budget, shared between webhooks.
//! - `spill.rs`: deliveries left in the store for lack of memory, and pulled back.
//! - `recorder.rs`: outcomes stored in groups; attempts paused while they cannot be.

mod attempt;
mod breaker;
mod cut_off;
mod health;
mod held;
mod leases;
mod limit;
mod recorder;
mod spill;
mod worker;

use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use herald_core::directory::Directory;
use herald_core::metrics::{Counter, Histogram};
use herald_core::store::{DueDelivery, Store};
use herald_core::{Clock, DeliveryId, OrgId, Timestamp, WebhookId};

use crate::client::HttpClient;
use crate::operations::Operations;

/// What the scheduler assumes an event weighs before it has seen any: the default body limit.
const FIRST_EVENT_ESTIMATE: usize = 1 << 20;

/// Tunables of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// The most requests in flight at once to one webhook. Each starts at 16 (or this, if
    /// lower) and adapts to what its endpoint can take (see `limit.rs`).
    pub per_webhook_concurrency: usize,
    /// The most requests in flight at once to all webhooks together (connections held open),
    /// and a quarter of the most attempts under way (sending, or writing their outcome): each
    /// holds memory, and a fan-out to many webhooks would otherwise hold it per webhook.
    /// Requests still unanswered after `client::SLOW_ANSWER` move to a second bound of this
    /// size (or are given up when it is full), so up to twice this many connections are open
    /// for requests.
    pub max_requests_in_flight: usize,
    /// Deliveries held in memory across all queues before new ones are left to the scheduler.
    pub max_in_memory: usize,
    /// Bytes of events those deliveries may hold (each delivery counts its event's size, so a
    /// fan-out counts it once per webhook). Past it, new deliveries wait in the store too: with
    /// large events the count alone would not bound memory.
    pub max_bytes_in_memory: usize,
    /// How long a lease lasts: a delivery leased by a node that died is retried after this.
    pub lease: Duration,
    /// A webhook's task ends after this long without work.
    pub idle_worker: Duration,
    /// This server's public base URL, for profiles that name their issuer or source.
    pub public_url: String,
    /// A webhook whose every attempt failed for this long is disabled.
    pub disable_after: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            per_webhook_concurrency: 64,
            max_requests_in_flight: 1024,
            max_in_memory: 100_000,
            max_bytes_in_memory: 64 << 20,
            lease: Duration::from_secs(300),
            idle_worker: Duration::from_secs(60),
            public_url: "http://127.0.0.1:7600".into(),
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// What the dispatcher counts, for `/metrics`.
#[derive(Debug, Default)]
pub struct DispatchMetrics {
    /// Deliveries that succeeded.
    pub delivered: Counter,
    /// Attempts that failed (each retry counts again).
    pub failed_attempts: Counter,
    /// Failed attempts after which a retry was scheduled.
    pub retries_scheduled: Counter,
    /// Deliveries that failed their last attempt.
    pub exhausted: Counter,
    /// Attempts refused by the address policy.
    pub blocked: Counter,
    /// Requests given up after a second unanswered, the node's slow requests being at their
    /// bound (`AttemptError::CutShort`).
    pub cut_short: Counter,
    /// New deliveries stored spilled: their webhook had its share of memory.
    pub spilled: Counter,
    /// Queued deliveries given back to the store to make room for other webhooks.
    pub given_back: Counter,
    /// How long attempts take, success or not.
    pub attempt_latency: Histogram,
}

/// A webhook's running task: where its deliveries go, and how many it may send at once.
struct Worker {
    /// Its queues: the urgent one (a test, a resend: someone is watching) is taken first.
    tx: Queues<mpsc::UnboundedSender<Queued>>,
    limit: Arc<limit::Limit>,
    /// The webhook's organization, for `/metrics`.
    org: OrgId,
}

/// A webhook's two queues.
struct Queues<T> {
    urgent: T,
    regular: T,
}

impl<T> Queues<T> {
    fn pick(&self, urgent: bool) -> &T {
        if urgent { &self.urgent } else { &self.regular }
    }
}

/// A delivery in its webhook's queue, with the number of the hold it was queued under (see
/// `held.rs`): a copy left behind by an eviction is recognised and dropped.
struct Queued {
    delivery: DueDelivery,
    hold: u64,
    /// Asked for by a person now (a test, a resend): it goes ahead of the webhook's backlog,
    /// and an open circuit lets it through as its probe rather than hold it to the cool-down's
    /// end.
    urgent: bool,
}

/// The handle that ingest, the API and the scheduler use. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

struct Shared {
    store: Arc<dyn Store>,
    directory: Arc<Directory>,
    clock: Arc<dyn Clock>,
    client: HttpClient,
    recorder: recorder::Recorder,
    settings: DispatchSettings,
    workers: Mutex<HashMap<WebhookId, Worker>>,
    /// Deliveries in memory (queued or in flight), so the scheduler never hands one out twice,
    /// with when their lease ends: no attempt may run past it (another node may take the
    /// delivery then).
    held: Mutex<held::HeldDeliveries>,
    /// The count and bytes of `held`, readable without its lock (ingest asks on every request).
    held_count: AtomicUsize,
    held_bytes: AtomicUsize,
    /// How many times queued copies were left behind: deliveries given back to the store, or
    /// queued anew as urgent (a resend). Until the first, no queue holds a stale copy (see
    /// `spill.rs`).
    stale_copies: AtomicUsize,
    /// What a recently held event weighed: how the scheduler sizes its claims. It starts at the
    /// default body limit and follows larger events at once, smaller ones slowly, so that a
    /// claim overshoots the byte budget at most once, by one batch of unexpectedly large events.
    typical_event_bytes: AtomicUsize,
    /// Wakes the scheduler: a retry was scheduled, a webhook was enabled, the clock moved.
    wake: Notify,
    wake_renewals: Notify,
    /// Deliveries the webhooks' tasks gave back to the store while stopping (see `drain`).
    given_back_on_stop: std::sync::atomic::AtomicU64,
    /// Requests that were out when the stop's grace ran out, to be recorded (see `drain`).
    cut_off_requests: cut_off::CutOffDeliveries,
    /// Each webhook's failing streak as this node last saved it, newer than the directory's.
    failing: Mutex<HashMap<WebhookId, health::Streak>>,
    /// When each webhook was last named in the log as arriving late (`leases.rs`).
    late_said: Mutex<HashMap<WebhookId, std::time::Instant>>,
    /// Set on shutdown: attempts in flight finish, queued ones are given back to the store.
    stopping: AtomicBool,
    /// The same, for a webhook's task waiting for room to send: it gives its queue back then
    /// rather than wait for an attempt in flight (which may take longer than the drain's grace).
    stop: watch::Sender<bool>,
    breakers: breaker::Breakers,
    /// Requests in flight to all webhooks together (`max_requests_in_flight`).
    outgoing: Arc<tokio::sync::Semaphore>,
    /// As many more for requests whose endpoint has not answered within a second: they give
    /// their room in `outgoing` back for one of these (or are given up when none is left), so
    /// that endpoints which hang until their timeout do not hold up every other webhook's
    /// requests for as long.
    slow: Arc<tokio::sync::Semaphore>,
    /// Attempts under way on this node, sending or writing their outcome (four times that).
    attempts: Arc<tokio::sync::Semaphore>,
    metrics: DispatchMetrics,
    operations: OnceLock<Arc<dyn Operations>>,
    /// The webhooks' tasks, for `drain` to wait for; finished ones are reaped as others start.
    tasks: Mutex<JoinSet<()>>,
}

/// How long a stopping node spends giving back the deliveries whose attempts it cut off.
const GIVE_BACK_WAIT: Duration = Duration::from_secs(5);

/// Spawns a webhook's task into `tasks`, first reaping those that ended. A finished task stays
/// in the set until it is joined, so without this each webhook that sends less than once a
/// minute (its task ends when idle, and its next delivery starts another) would keep about a
/// kilobyte for good.
fn spawn_reaping(tasks: &mut JoinSet<()>, task: impl Future<Output = ()> + Send + 'static) {
    while let Some(ended) = tasks.try_join_next() {
        if let Err(e) = ended
            && e.is_panic()
        {
            tracing::error!(error = %e, "a webhook's delivery task panicked; its next delivery starts another");
        }
    }
    tasks.spawn(task);
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        directory: Arc<Directory>,
        clock: Arc<dyn Clock>,
        client: HttpClient,
        settings: DispatchSettings,
    ) -> Self {
        let in_flight = settings.max_requests_in_flight.max(1);
        Self {
            shared: Arc::new(Shared {
                recorder: recorder::Recorder::start(store.clone(), clock.clone(), settings.lease),
                store,
                directory,
                clock,
                client,
                settings,
                workers: Mutex::new(HashMap::new()),
                held: Mutex::new(held::HeldDeliveries::default()),
                held_count: AtomicUsize::new(0),
                held_bytes: AtomicUsize::new(0),
                stale_copies: AtomicUsize::new(0),
                typical_event_bytes: AtomicUsize::new(FIRST_EVENT_ESTIMATE),
                wake: Notify::new(),
                wake_renewals: Notify::new(),
                given_back_on_stop: std::sync::atomic::AtomicU64::new(0),
                cut_off_requests: cut_off::CutOffDeliveries::default(),
                failing: Mutex::new(HashMap::new()),
                late_said: Mutex::new(HashMap::new()),
                stopping: AtomicBool::new(false),
                stop: watch::Sender::new(false),
                breakers: breaker::Breakers::default(),
                outgoing: Arc::new(tokio::sync::Semaphore::new(in_flight)),
                slow: Arc::new(tokio::sync::Semaphore::new(in_flight)),
                attempts: Arc::new(tokio::sync::Semaphore::new(in_flight * 4)),
                metrics: DispatchMetrics::default(),
                operations: OnceLock::new(),
                tasks: Mutex::new(JoinSet::new()),
            }),
        }
    }

    /// Connects the receiver of operational news; set once, after the app is built.
    pub fn set_operations(&self, operations: Arc<dyn Operations>) {
        let _ = self.shared.operations.set(operations);
    }

    pub fn metrics(&self) -> &DispatchMetrics {
        &self.shared.metrics
    }

    pub fn settings(&self) -> &DispatchSettings {
        &self.shared.settings
    }

    /// How many more deliveries the scheduler may claim from the due order, at the size of
    /// recent events: the room, less a headroom once several webhooks have work.
    pub fn claim_room(&self) -> usize {
        // A stopping node gives work back; it takes none.
        if self.shared.stopping.load(Ordering::SeqCst) {
            return 0;
        }
        self.shared
            .held
            .lock()
            .expect("held lock")
            .claim_room(self.budget(), self.typical_event_bytes())
    }

    /// What a recent event weighed, for sizing rooms in deliveries.
    fn typical_event_bytes(&self) -> usize {
        self.shared.typical_event_bytes.load(Ordering::Relaxed)
    }

    /// Whether attempts wait for the database to store outcomes again (`recorder.rs`).
    pub fn attempts_paused(&self) -> bool {
        self.shared.recorder.paused()
    }

    /// Notes a store error met outside an attempt (the scheduler's reads): a database that is
    /// away pauses attempts at once, rather than when an outcome first fails to be stored
    /// (an attempt waiting behind a slow one would start meanwhile, its outcome unstorable).
    pub(crate) fn saw_store_error(&self, error: &herald_core::store::StoreError) {
        self.shared.recorder.saw(error);
    }

    /// Deliveries currently held in memory.
    pub fn held(&self) -> usize {
        self.shared.held_count.load(Ordering::Relaxed)
    }

    /// Bytes of events the held deliveries carry (each counted once per delivery).
    pub fn held_bytes(&self) -> usize {
        self.shared.held_bytes.load(Ordering::Relaxed)
    }

    /// Requests in flight within the node's bound, and slow ones (unanswered after
    /// `client::SLOW_ANSWER`) within theirs; each bound is `max_requests_in_flight`. The first
    /// counts also a webhook's task holding its place while it waits for a slot of its own.
    pub fn requests_in_flight(&self) -> (usize, usize) {
        let bound = self.shared.settings.max_requests_in_flight.max(1);
        let taken = |s: &tokio::sync::Semaphore| bound.saturating_sub(s.available_permits());
        (taken(&self.shared.outgoing), taken(&self.shared.slow))
    }

    /// Wakes the scheduler (and the WebSub lease renewer) to look for due work now.
    pub fn wake_scheduler_and_renewals(&self) {
        self.shared.wake.notify_one();
        self.shared.wake_renewals.notify_one();
    }

    /// Wakes only the delivery scheduler: deliveries were stored for it or a retry was
    /// scheduled, which changes nothing for WebSub leases (and happens on every busy ingest).
    pub fn wake_delivery_scheduler(&self) {
        self.shared.wake.notify_one();
    }

    pub(crate) async fn scheduler_woken(&self) {
        self.shared.wake.notified().await;
    }

    pub(crate) async fn renewals_woken(&self) {
        self.shared.wake_renewals.notified().await;
    }

    /// The HTTP client, shared with WebSub verification.
    pub fn client(&self) -> &HttpClient {
        &self.shared.client
    }

    pub fn directory(&self) -> &Arc<Directory> {
        &self.shared.directory
    }

    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    /// Queues deliveries leased to this node until `lease_until` for their webhooks. A delivery
    /// already held is not queued again; its lease is known to last longer now.
    pub fn enqueue(&self, deliveries: Vec<DueDelivery>, lease_until: Timestamp) {
        self.queue(deliveries, lease_until, false);
    }

    /// Queues one delivery someone is waiting to see (a test, a resend) ahead of its webhook's
    /// backlog; an open circuit sends it as its probe.
    pub fn enqueue_urgent(&self, delivery: DueDelivery, lease_until: Timestamp) {
        self.queue(vec![delivery], lease_until, true);
    }

    fn queue(&self, deliveries: Vec<DueDelivery>, lease_until: Timestamp, urgent: bool) {
        let mut largest = 0;
        let fresh: Vec<Queued> = {
            let mut held = self.shared.held.lock().expect("held lock");
            let fresh: Vec<Queued> = deliveries
                .into_iter()
                .filter_map(|d| {
                    let bytes = d.event.approx_bytes();
                    let hold = if urgent {
                        if held.is_queued(&d.delivery_id) {
                            // Its regular copy stays in the queue, stale.
                            self.shared.stale_copies.fetch_add(1, Ordering::Relaxed);
                        }
                        held.hold_urgent(&d.delivery_id, &d.webhook_id, lease_until, bytes)?
                    } else {
                        held.hold(&d.delivery_id, &d.webhook_id, lease_until, bytes)?
                    };
                    largest = largest.max(bytes);
                    Some(Queued {
                        delivery: d,
                        hold,
                        urgent,
                    })
                })
                .collect();
            self.note_held(&held);
            fresh
        };
        if !fresh.is_empty() {
            let _ = self.shared.typical_event_bytes.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |before| Some(held::next_estimate(before, largest)),
            );
        }
        let mut workers = self.shared.workers.lock().expect("workers lock");
        for queued in fresh {
            let delivery = match workers.get(&queued.delivery.webhook_id) {
                Some(worker) => match worker.tx.pick(urgent).send(queued) {
                    Ok(()) => continue,
                    Err(mpsc::error::SendError(q)) => q,
                },
                None => queued,
            };
            let webhook_id = delivery.delivery.webhook_id.clone();
            let org = delivery.delivery.org_id.clone();
            let (urgent_tx, urgent_rx) = mpsc::unbounded_channel();
            let (regular_tx, regular_rx) = mpsc::unbounded_channel();
            let tx = Queues {
                urgent: urgent_tx,
                regular: regular_tx,
            };
            let rx = Queues {
                urgent: urgent_rx,
                regular: regular_rx,
            };
            tx.pick(urgent)
                .send(delivery)
                .expect("the receiver is alive");
            let limit = limit::Limit::new(self.shared.settings.per_webhook_concurrency);
            workers.insert(
                webhook_id.clone(),
                Worker {
                    tx,
                    limit: limit.clone(),
                    org,
                },
            );
            let this = self.clone();
            spawn_reaping(
                &mut self.shared.tasks.lock().expect("tasks lock"),
                async move { this.run_worker(webhook_id, rx, limit).await },
            );
        }
    }

    /// Each webhook with a running task on this node, its organization, and how many requests
    /// it may have in flight to it now (the adaptive limit), for `/metrics`.
    pub fn concurrency_limits(&self) -> Vec<(WebhookId, OrgId, usize)> {
        let workers = self.shared.workers.lock().expect("workers lock");
        let mut limits: Vec<_> = workers
            .iter()
            .map(|(id, worker)| (id.clone(), worker.org.clone(), worker.limit.current()))
            .collect();
        limits.sort_unstable_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        limits
    }

    /// Until when this node holds requests to the webhook back because its circuit is open
    /// (`None` while it is closed, or once a change gives its endpoint a fresh start), for the
    /// dashboard. Each node keeps its own circuit.
    pub fn circuit_open_until(&self, webhook: &herald_core::webhook::Webhook) -> Option<Timestamp> {
        // A disabled webhook's deliveries are parked, not held back by its circuit, and no
        // probe goes; enabling it again starts its circuit afresh.
        if !webhook.active {
            return None;
        }
        let breakers = self.shared.breakers.lock().expect("breakers lock");
        breakers
            .get(&webhook.id)
            .and_then(|b| b.open_until_for(webhook))
    }

    /// Until when this node holds deliveries to the webhook back because its endpoint asked
    /// to wait (a `429` or `503` with `Retry-After`), while it does: tests and resends still go.
    pub fn retry_after_until(&self, webhook: &herald_core::webhook::Webhook) -> Option<Timestamp> {
        if !webhook.active {
            return None;
        }
        let now = self.shared.clock.now();
        let breakers = self.shared.breakers.lock().expect("breakers lock");
        breakers
            .get(&webhook.id)
            .and_then(|b| b.held_until_for(webhook, now))
    }

    /// Whether this node holds back any webhook's deliveries: an open circuit, or a wait an
    /// endpoint asked for.
    pub fn holds_anything_back(&self) -> bool {
        let now = self.shared.clock.now();
        let breakers = self.shared.breakers.lock().expect("breakers lock");
        breakers
            .values()
            .any(|b| b.open_until().is_some() || b.held_until(now).is_some())
    }

    /// A person changed the webhook. If what reaches its endpoint changed, its circuit and any
    /// wait its endpoint asked for start afresh on this node now, not when its next delivery
    /// comes (which could be an hour off for a `Retry-After`), and what they deferred is due
    /// now; enabled again, its circuit does (its wait ends by `lift_retry_after`). Other nodes
    /// do so when they hear of the change (`service::webhooks::changed_elsewhere`).
    pub async fn webhook_changed(&self, webhook: &herald_core::webhook::Webhook) {
        let now = self.shared.clock.now();
        let afresh = {
            let mut breakers = self.shared.breakers.lock().expect("breakers lock");
            breakers
                .get_mut(&webhook.id)
                .and_then(|b| b.start_afresh_if_changed(webhook, now))
        };
        if let Some(waiting) = afresh {
            self.send_what_waited(&webhook.id, waiting, now).await;
        }
    }

    /// The webhook's breaker started afresh: what it deferred to `waiting` goes now.
    async fn send_what_waited(&self, webhook: &WebhookId, waiting: Vec<Timestamp>, now: Timestamp) {
        tracing::info!(webhook = %webhook, "webhook changed: its endpoint gets a fresh start (circuit closed, any wait it asked for ended), and what waited for it goes now");
        for from in waiting {
            self.move_deferred(webhook, breaker::Move { from, to: now })
                .await;
        }
    }

    /// Ends the wait the webhook's endpoint asked for on this node, and what it held goes now:
    /// someone asked for its waiting deliveries to go, or enabled it again.
    pub async fn lift_retry_after(&self, webhook: &WebhookId) {
        let now = self.shared.clock.now();
        let held = {
            let mut breakers = self.shared.breakers.lock().expect("breakers lock");
            breakers.get_mut(webhook).and_then(|b| b.lift_hold(now))
        };
        if let Some(from) = held {
            tracing::info!(webhook = %webhook, "the wait the endpoint asked for (Retry-After) is ended on this node; what it held goes now");
            self.move_deferred(webhook, breaker::Move { from, to: now })
                .await;
        }
    }

    /// Forgets what this node remembers of deleted webhooks' endpoints (their circuits and
    /// failing streaks), which nothing else would ever clear. Other nodes forget theirs when
    /// the webhooks' tasks end there, unless a circuit was open.
    pub fn forget_webhooks(&self, ids: &[WebhookId]) {
        let mut breakers = self.shared.breakers.lock().expect("breakers lock");
        for id in ids {
            breakers.remove(id);
        }
        drop(breakers);
        let mut failing = self.shared.failing.lock().expect("failing lock");
        for id in ids {
            failing.remove(id);
        }
    }

    /// Forgets a delivery once its attempt is made, *before* the outcome is written: from the
    /// moment the write commits, a resend or the scheduler may hand it out again, and must not
    /// find it still held. Until then its lease keeps the scheduler away.
    fn release_held(&self, id: &DeliveryId) -> Option<Timestamp> {
        let mut held = self.shared.held.lock().expect("held lock");
        let (pull, lease_until) = held.release(id, self.budget())?;
        self.note_held(&held);
        drop(held);
        if pull {
            // Its webhook has room again for what it spilled.
            self.wake_delivery_scheduler();
        }
        Some(lease_until)
    }

    /// Stops holding these deliveries; answers each one this node held with the lease it
    /// held it under, for giving it back to the store (which does so only under that lease).
    fn release_held_leases<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a DeliveryId>,
    ) -> Vec<(DeliveryId, Timestamp)> {
        ids.into_iter()
            .filter_map(|id| Some((id.clone(), self.release_held(id)?)))
            .collect()
    }

    /// Stops holding these deliveries and gives them back to the store, due at `until`, each
    /// only under the lease it was held with ([`Store::defer_deliveries`]); answers how many.
    async fn defer_held<'a>(
        &self,
        org: &herald_core::OrgId,
        ids: impl IntoIterator<Item = &'a DeliveryId>,
        until: Timestamp,
    ) -> Result<usize, herald_core::store::StoreError> {
        let leases = self.release_held_leases(ids);
        if leases.is_empty() {
            return Ok(0);
        }
        self.shared
            .store
            .defer_deliveries(org, &leases, until)
            .await
    }

    /// Publishes the held count and bytes (called with the lock held, so they stay in step).
    fn note_held(&self, held: &held::HeldDeliveries) {
        self.shared.held_count.store(held.len(), Ordering::Relaxed);
        self.shared
            .held_bytes
            .store(held.bytes(), Ordering::Relaxed);
    }

    /// When the first of these held deliveries' leases ends.
    fn lease_ends(&self, batch: &[DueDelivery]) -> Option<Timestamp> {
        let held = self.shared.held.lock().expect("held lock");
        held.lease_ends(batch.iter().map(|d| &d.delivery_id))
    }

    /// The grace ran out: stops the attempts still out, records those whose requests went
    /// unanswered (`cut_off.rs`), and gives what this node still holds back to the store, due
    /// now (each only under the lease it held), so that the next start, or another node, sends
    /// them at once rather than when their leases end (PostgreSQL; the embedded database
    /// releases every lease at start anyway). An answer that came meanwhile and was not
    /// recorded means the endpoint gets the delivery again: at least once.
    async fn give_back_cut_off(&self, mut tasks: JoinSet<()>) {
        tasks.abort_all();
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while tasks.join_next().await.is_some() {}
            // Each webhook's task, aborted, aborts its attempts' own tasks, which end when the
            // runtime next comes to them: once no request is out, every one cut off is in
            // `cut_off_requests`.
            while self.shared.cut_off_requests.any_out() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let mut cut_off = self.shared.held.lock().expect("held lock").all_leases();
        let recorded = self.record_unanswered(&cut_off).await;
        // Those recorded are given back already.
        cut_off.retain(|(id, _)| !recorded.contains(id));
        let mut given_back = 0usize;
        // Bounded: a store that does not answer must not keep the node from stopping.
        let _ = tokio::time::timeout(GIVE_BACK_WAIT, async {
            for (id, lease_until) in &cut_off {
                match self.shared.store.release_lease(id, *lease_until).await {
                    Ok(()) => given_back += 1,
                    Err(e) => {
                        tracing::warn!(error = %herald_core::error_chain(&e), "could not give back the deliveries cut off by the stop; they come back when their leases end");
                        break;
                    }
                }
            }
        })
        .await;
        if !cut_off.is_empty() {
            tracing::info!(
                deliveries = cut_off.len(),
                given_back,
                "gave the deliveries whose attempts the stop cut off back to the store, due now"
            );
        }
    }

    /// Records the requests the stop cut off before their endpoints answered, under the
    /// leases this node held them by (`leases`); answers the deliveries recorded (and so given
    /// back). Bounded, as giving back is.
    async fn record_unanswered(
        &self,
        leases: &[(DeliveryId, Timestamp)],
    ) -> std::collections::HashSet<DeliveryId> {
        let left = self.shared.cut_off_requests.take();
        let records = cut_off::records(left, leases, self.shared.clock.now());
        if records.is_empty() {
            return Default::default();
        }
        let store = self.shared.store.record_cut_off(&records);
        match tokio::time::timeout(GIVE_BACK_WAIT, store).await {
            Ok(Ok(recorded)) => {
                if !recorded.is_empty() {
                    tracing::info!(
                        deliveries = recorded.len(),
                        "recorded the requests the stop cut off before their endpoints answered (error interrupted): they may have arrived, and go again without spending a retry"
                    );
                }
                recorded.into_iter().collect()
            }
            Ok(Err(e)) => {
                tracing::warn!(deliveries = records.len(), error = %herald_core::error_chain(&e), "could not record the requests the stop cut off; they are given back without a record");
                Default::default()
            }
            Err(_) => {
                tracing::warn!(
                    deliveries = records.len(),
                    "the database did not record the requests the stop cut off in time; they are given back without a record"
                );
                Default::default()
            }
        }
    }

    /// Waits for every webhook task to finish its in-flight attempts (after the scheduler and
    /// ingest have stopped feeding it), up to `grace`; what is still out then is cut off and
    /// given back (`give_back_cut_off`).
    pub async fn drain(&self, grace: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.send_replace(true);
        self.shared.workers.lock().expect("workers lock").clear();
        let mut tasks = std::mem::take(&mut *self.shared.tasks.lock().expect("tasks lock"));
        let (requests, slow) = self.requests_in_flight();
        if requests + slow > 0 {
            tracing::info!(
                requests = requests + slow,
                "waiting up to {} s for the requests in flight to be answered and recorded (what is cut off is sent again later, at least once)",
                // What is left of the stop's grace: 1.99 s is "2 s".
                grace.as_millis().div_ceil(1000)
            );
        }
        let finished =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if finished.is_err() {
            self.give_back_cut_off(tasks).await;
        }
        let given_back = self.shared.given_back_on_stop.load(Ordering::Relaxed);
        if given_back > 0 {
            tracing::info!(
                deliveries = given_back,
                "gave the deliveries queued here back to the store, due now, for another node or the next start"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_that_ended_are_reaped_as_others_start() {
        let mut tasks = JoinSet::new();
        for _ in 0..100 {
            spawn_reaping(&mut tasks, async {});
            // Each ends at once, long before the next starts (as an idle webhook's task does).
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(tasks.len() <= 2, "{} tasks held", tasks.len());
        // One that has not ended stays, to be waited for when the node stops.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        spawn_reaping(&mut tasks, async move {
            let _ = stopped.await;
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        spawn_reaping(&mut tasks, async {});
        assert!(tasks.len() >= 2, "the running task is kept");
        drop(stop);
        while tasks.join_next().await.is_some() {}
    }
}
