//! The storage boundary. Each method is one domain verb and one transaction, so transactions never
//! leak out of a backend. How a backend batches writes or claims work is its own business; every
//! backend passes the same conformance stories.

use std::sync::Arc;

use async_trait::async_trait;

use crate::delivery::{Attempt, Delivery, DeliveryState};
use crate::event::Event;
use crate::event_type::CustomEventType;
use crate::health::{HealthRows, HealthWindow};
use crate::org::{ApiKey, Organization};
use crate::retry::NextStep;
use crate::subscription::{AsRead, Subscription};
use crate::webhook::Webhook;
use crate::{ApiKeyId, DeliveryId, OrgId, Page, PageRequest, Timestamp, WebhookId};

type Cause = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was broken; the text says which, in words for the user.
    #[error("{0}")]
    Conflict(String),
    /// The database cannot be reached or is busy; trying again later may work.
    #[error("storage unavailable")]
    Unavailable(#[source] Cause),
    #[error("storage failed")]
    Other(#[source] Cause),
    /// A database (or database server) Herald will not work on as it is: the text says why
    /// and what to do, and is the whole message (no "storage failed" before it).
    #[error("{0}")]
    Refused(String),
    /// The organization's configuration changed after the read its events were fanned out
    /// from ([`Store::insert_events_unless_changed`]): nothing was stored. Fan them out again from a
    /// fresh read.
    #[error("the organization changed while its events were being stored")]
    DirectoryChanged,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Why a user's change to a webhook was refused ([`Store::save_webhook_change`]).
pub const WEBHOOK_CHANGED_MEANWHILE: &str = "the webhook changed while this change was being made \
     (Herald may have disabled it, or another request changed it); read it again and send the \
     change again";

/// The failing streak (milliseconds) to save with `webhook`, found stored as `stored` under the
/// row's lock. A save of the webhook as Herald has it (`read_at` `None`) keeps its own; a
/// user's change read at `read_at` is refused with [`WEBHOOK_CHANGED_MEANWHILE`] if the webhook
/// changed since, keeps the stored streak (attempts move it without touching `updated_at`), and
/// starts none when it switches the webhook on. Both stores decide with this.
pub fn failing_since_to_save(
    webhook: &Webhook,
    read_at: Option<Timestamp>,
    stored: StoredVersion,
) -> StoreResult<Option<i64>> {
    match read_at {
        None => Ok(webhook.failing_since.map(Timestamp::as_millis)),
        Some(read_at) if read_at.as_millis() != stored.updated_at => {
            Err(StoreError::Conflict(WEBHOOK_CHANGED_MEANWHILE.to_owned()))
        }
        Some(_) if webhook.active && !stored.active => Ok(None),
        Some(_) => Ok(stored.failing_since),
    }
}

/// What a change to a webhook finds stored (milliseconds), for [`failing_since_to_save`].
#[derive(Debug, Clone, Copy)]
pub struct StoredVersion {
    pub active: bool,
    pub updated_at: i64,
    pub failing_since: Option<i64>,
}

/// A delivery to create along with its event.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub webhook_id: WebhookId,
    /// Where the delivery goes after the commit (ignored when `skip` or `not_before` is set).
    pub placement: Placement,
    /// Set when the delivery must not be attempted; it is stored as `skipped` with this reason.
    pub skip: Option<String>,
    /// Set when the webhook's retry schedule puts off the first attempt (a first delay above
    /// zero): the delivery is stored unleased and comes due then.
    pub not_before: Option<Timestamp>,
}

impl NewDelivery {
    /// A pending delivery's `next_attempt_at`, `due_at` and `lease_until` when stored at `now`.
    pub fn stored_times(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> (Timestamp, Timestamp, Option<Timestamp>) {
        if let Some(at) = self.not_before {
            return (at, at, None);
        }
        match self.placement {
            Placement::Leased => (now, lease_until, Some(lease_until)),
            Placement::Due => (now, now, None),
            Placement::Spilled => (now, lease_until, None),
        }
    }

    /// Whether it is stored leased to this node, to be handed to its dispatcher by the caller
    /// once the store answers.
    pub fn held_at_ingest(&self) -> bool {
        self.skip.is_none() && self.not_before.is_none() && self.placement == Placement::Leased
    }

    /// Whether the schedulers must hear of it: it is stored pending and nobody holds it.
    pub fn for_scheduler(&self) -> bool {
        self.skip.is_none() && (self.not_before.is_some() || self.placement == Placement::Due)
    }
}

/// Where a new pending delivery waits for its first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Leased to this node's dispatcher right away (it is handed over in memory after the
    /// commit), so that the retry scheduler does not pick it up as well.
    Leased,
    /// Due now, for the scheduler of any node to claim.
    Due,
    /// Its webhook already holds its share of this node's memory: it waits in the store for
    /// that webhook to pull it ([`Store::claim_spilled`]), and is due for any node only when a
    /// lease taken now would end (in case this node stops before pulling it).
    Spilled,
}

/// One event of an ingest request with its fan-out.
#[derive(Debug, Clone)]
pub struct IngestItem {
    pub event: Arc<Event>,
    pub deliveries: Vec<NewDelivery>,
}

/// Which changes to organizations' configuration (themselves, their event types, webhooks and
/// WebSub subscriptions) a read starting now would see, as the store marks it: an opaque
/// token ([`Store::config_mark`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMark(pub String);

/// Whether an ingested event was new or a repeat of an idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestResult {
    Stored,
    Duplicate,
}

/// A delivery that is ready for an attempt, with what rendering needs.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    pub delivery_id: DeliveryId,
    pub org_id: OrgId,
    pub webhook_id: WebhookId,
    pub event: Arc<Event>,
    /// Attempts made so far.
    pub attempt_count: u32,
    /// Attempts made before the current retry schedule started (a manual resend restarts it).
    pub schedule_base: u32,
    /// When the delivery last moved on: stored, its last attempt ended, or it was resent (a
    /// deferral does not count). Its remaining retry schedule runs from then.
    pub updated_at: Timestamp,
    /// The status its last attempt got, if any: a `429` or `503` may have put its next attempt
    /// off by up to [`crate::retry::MAX_RETRY_AFTER_SECS`].
    pub last_status: Option<u16>,
}

impl DueDelivery {
    /// A delivery just stored with its event at `now`, not attempted yet: what ingest hands
    /// the dispatcher without reading it back.
    pub fn new(
        id: DeliveryId,
        org_id: OrgId,
        webhook_id: WebhookId,
        event: Arc<Event>,
        now: Timestamp,
    ) -> Self {
        Self {
            delivery_id: id,
            org_id,
            webhook_id,
            event,
            attempt_count: 0,
            schedule_base: 0,
            updated_at: now,
            last_status: None,
        }
    }
}

/// The outcome of one attempt, to be stored with the delivery's next state.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub org_id: OrgId,
    pub attempt: Attempt,
    pub next: NextStep,
    /// The lease the attempt was made under. The attempt is stored in any case, but the
    /// delivery moves on only if it still has that lease: once it ended, another node may have
    /// taken the delivery over, and its attempt decides. `None`: whatever the lease.
    pub lease_until: Option<Timestamp>,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PurgeCount {
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
}

/// Where the next step of a purge starts: just after the last event the previous step looked
/// at, by time received and then by the store's own order of arrival (`seq`, SQLite's sequence
/// number; PostgreSQL ignores it and starts at the time itself). SQLite purges every
/// organization one after another, and `org` says which one the step reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeFrom {
    pub received_at: Timestamp,
    pub seq: i64,
    pub org: Option<OrgId>,
}

impl PurgeFrom {
    /// The first event received at `received_at` or later (on SQLite, of the first
    /// organization a purge of all looks at).
    pub fn at(received_at: Timestamp) -> Self {
        Self {
            received_at,
            seq: i64::MIN,
            org: None,
        }
    }
}

impl std::ops::AddAssign for PurgeCount {
    fn add_assign(&mut self, other: Self) {
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.attempts += other.attempts;
    }
}

/// A webhook's pending deliveries, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingStat {
    pub webhook_id: WebhookId,
    /// Its webhook's organization, so that an alert can go to whoever looks after it.
    pub org_id: OrgId,
    pub count: u64,
    /// When the oldest pending delivery was created.
    pub oldest: Timestamp,
    /// Whether its webhook is enabled: a disabled one's pending deliveries wait, parked, until
    /// it is enabled again (no endpoint is late).
    pub active: bool,
}

/// An organization's turn to change its configuration ([`Store::org_change_turn`]), held
/// until dropped.
pub struct ChangeTurn {
    /// What gives the turn back when dropped.
    _holder: Option<Box<dyn Send + Sync>>,
}

impl ChangeTurn {
    /// A turn with nothing to give back: the only process that writes holds it already.
    pub fn within_process() -> Self {
        Self { _holder: None }
    }

    /// A turn held by `holder`, which gives it back when dropped.
    pub fn held_by(holder: impl Send + Sync + 'static) -> Self {
        Self {
            _holder: Some(Box::new(holder)),
        }
    }
}

/// What the in-memory directory holds of one organization, read from one snapshot of the
/// store: read apart, an organization deleted between the reads showed with its webhooks or
/// types gone, and a change checked against it was refused for that (an event type "unknown")
/// rather than for the organization's being gone.
#[derive(Debug, Clone)]
pub struct OrgConfig {
    pub organization: Organization,
    /// Every webhook of the organization (not deleted).
    pub webhooks: Vec<Webhook>,
    /// Its own event types.
    pub types: Vec<CustomEventType>,
    pub subscriptions: Vec<Subscription>,
}

/// Filters for an organization's event list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub event_type: Option<String>,
    /// Only events received at this time or later.
    pub since: Option<Timestamp>,
}

/// Filters for a webhook's delivery history.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub state: Option<DeliveryState>,
    pub event_type: Option<String>,
}

/// News a shared backend passes on from the nodes using it (this one included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSignal {
    /// Work may be due sooner than a scheduler thought: a delivery was stored without a lease,
    /// a retry was scheduled, a lease was given back.
    WorkDue,
    /// Something cached of this organization (itself, its webhooks, types or subscriptions)
    /// changed.
    OrgChanged(OrgId),
    /// Signals may have been missed (the connection that carries them was lost and is back):
    /// anything cached may be stale and anything may be due.
    Resync,
}

/// How much later than a bulk call's `now` a delivery can have been changed while the call
/// ran. One dated later still was written before the system clock was set back (or by a node
/// whose clock runs ahead), not changed since the call began: `retry_waiting` takes it as
/// waiting, which after a step back is what it is asked for.
pub const LATER_THAN_A_CALL_MS: i64 = 60_000;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    // Organizations and keys.
    async fn create_org(&self, org: &Organization) -> StoreResult<()>;
    async fn list_orgs(&self, page: &PageRequest) -> StoreResult<Page<Organization>>;
    async fn get_org(&self, id: &OrgId) -> StoreResult<Organization>;
    async fn update_org(&self, org: &Organization) -> StoreResult<()>;
    /// The organization and what the directory holds of it ([`OrgConfig`]), as of one moment;
    /// `NotFound` if it does not exist.
    async fn org_config(&self, id: &OrgId) -> StoreResult<OrgConfig>;
    /// Deletes the organization and everything it owns.
    async fn delete_org(&self, id: &OrgId) -> StoreResult<()>;
    /// Waits for the organization's turn to change its configuration (webhooks, event types)
    /// among every process sharing this store, and holds it until the answer is dropped: a
    /// change checks the organization as it is and then writes, and two at once would each
    /// pass the check the other's write breaks. PostgreSQL's nodes take turns through the
    /// database; SQLite's one process needs nothing more than its own turns.
    async fn org_change_turn(&self, org: &OrgId) -> StoreResult<ChangeTurn>;
    /// Deletes what writes that raced an organization's deletion stored for it afterwards (an
    /// ingest or a new webhook on another node, which read the organization just before), so
    /// that no delivery stays pending for good for an organization that is gone. Answers how
    /// many rows it deleted. PostgreSQL's; SQLite's one writer refuses such writes instead.
    async fn sweep_deleted_orgs(&self) -> StoreResult<u64>;
    async fn create_api_key(&self, key: &ApiKey) -> StoreResult<()>;
    async fn list_api_keys(&self, org: &OrgId) -> StoreResult<Vec<ApiKey>>;
    async fn delete_api_key(&self, org: &OrgId, id: &ApiKeyId) -> StoreResult<()>;
    async fn find_api_key(&self, key_hash: &str) -> StoreResult<Option<ApiKey>>;

    // Event types.
    async fn create_event_type(&self, event_type: &CustomEventType) -> StoreResult<()>;
    async fn list_event_types(&self, org: &OrgId) -> StoreResult<Vec<CustomEventType>>;
    /// Deletes one of the organization's own types; `NotFound` if it has none of that name.
    async fn delete_event_type(&self, org: &OrgId, name: &str) -> StoreResult<()>;

    // Webhooks.
    async fn create_webhook(&self, webhook: &Webhook) -> StoreResult<()>;
    async fn list_webhooks(&self, org: &OrgId, page: &PageRequest) -> StoreResult<Page<Webhook>>;
    /// Every webhook of the organization (not deleted), for the in-memory directory.
    async fn org_webhooks(&self, org: &OrgId) -> StoreResult<Vec<Webhook>>;
    async fn get_webhook(&self, org: &OrgId, id: &WebhookId) -> StoreResult<Webhook>;
    /// Saves every field of the webhook as given, with no check for a change made since it was
    /// read. Herald's own changes go through [`Store::save_webhook_change`] (a user's) and
    /// [`Store::disable_webhook`]; this one sets up tests and tools.
    async fn update_webhook(&self, webhook: &Webhook) -> StoreResult<()>;
    /// Saves a user's change to a webhook read when its `updated_at` was `read_at`: `Conflict`
    /// if it changed since (Herald disabled it, or another request saved it), so that the
    /// change does not undo that. Its failing streak stays as the store has it (attempts
    /// move it without touching `updated_at`), unless the change switches the webhook on.
    /// A switch parks (or puts back) its pending deliveries; it is answered as made once the
    /// webhook is stored, even if moving them failed halfway (SQLite does it in steps after):
    /// the looks again after every switch ([`Store::park_inactive`], [`Store::unpark_active`])
    /// finish it.
    async fn save_webhook_change(&self, webhook: &Webhook, read_at: Timestamp) -> StoreResult<()>;
    /// Deletes the webhooks and cancels their pending deliveries; returns the ids it deleted.
    /// With `unchanged_since` (a user's `If-Match`), only a webhook whose `updated_at` is
    /// still that is deleted: one changed since stays.
    async fn delete_webhooks(
        &self,
        org: &OrgId,
        ids: &[WebhookId],
        now: Timestamp,
        unchanged_since: Option<Timestamp>,
    ) -> StoreResult<Vec<WebhookId>>;

    /// Disables an active webhook with a reason, changing nothing else of it (Herald does this
    /// while a user may be editing the webhook), and parks its pending deliveries (as
    /// [`Store::save_webhook_change`] does: answered once disabled). Answers `false` if it was
    /// already inactive or is gone.
    async fn disable_webhook(
        &self,
        org: &OrgId,
        id: &WebhookId,
        reason: &str,
        now: Timestamp,
    ) -> StoreResult<bool>;

    /// Puts back on their schedule the webhook's pending deliveries left parked (no due time)
    /// if it is active. Activating a webhook unparks what it has; this takes what writes that
    /// raced the activation parked after it (an attempt's outcome recorded as it committed, an
    /// ingest from a node that had not heard of it yet), which no node would ever claim.
    /// Answers how many.
    async fn unpark_active(&self, webhook: &WebhookId) -> StoreResult<u64>;

    /// Parks the webhook's due, unleased pending deliveries if it is inactive: the mirror of
    /// [`Store::unpark_active`]. Pausing a webhook parks what it has; an ingest or a deferral
    /// that raced the pause (another node's, say) can leave one due after it, never claimed
    /// and passed over by every look of the scheduler. Where several nodes share the store, a
    /// delivery whose lease ran out before `now` is parked too: a node that stopped while it
    /// held it never gives it back, and [`Store::claim_due`] takes over only an active
    /// webhook's. Answers how many.
    async fn park_inactive(&self, webhook: &WebhookId, now: Timestamp) -> StoreResult<u64>;

    /// Cancels pending deliveries of webhooks deleted since `since`. Deleting a webhook cancels
    /// what was pending, but an ingest that read the organization just before the deletion can
    /// still store a delivery for it afterwards, which nothing would ever claim. Answers how
    /// many it cancelled.
    async fn cancel_orphaned(&self, since: Timestamp, now: Timestamp) -> StoreResult<u64>;

    /// Notes a webhook's latest outcome: a success clears its failing streak, a failure starts
    /// one if none is running. Answers since when it has been failing (`None` after a success).
    async fn note_webhook_outcome(
        &self,
        id: &WebhookId,
        failed: bool,
        now: Timestamp,
    ) -> StoreResult<Option<Timestamp>>;

    // Events and deliveries.
    /// Stores events and their deliveries, all or nothing. An event whose id the organization
    /// already used is a duplicate: nothing of it is stored.
    async fn insert_events(
        &self,
        org: &OrgId,
        items: &[IngestItem],
        now: Timestamp,
        lease_until: Timestamp,
    ) -> StoreResult<Vec<IngestResult>>;
    /// Marks which configuration changes a read starting now sees, where processes share the
    /// store: another process's change reaches this one's cache a moment after its commit, so
    /// a fan-out computed from the cache must be checked against the store as the events are
    /// stored ([`Store::insert_events_unless_changed`]). `None` where one process owns the store
    /// (SQLite): its own changes leave its cache before they are answered.
    async fn config_mark(&self) -> StoreResult<Option<ConfigMark>> {
        Ok(None)
    }
    /// Whether a change to the organization's configuration was committed after `seen`
    /// ([`Store::config_mark`]); never where one process owns the store.
    async fn changed_since(&self, _org: &OrgId, _seen: &ConfigMark) -> StoreResult<bool> {
        Ok(false)
    }
    /// [`Store::insert_events`], fanned out from a read of the organization that `seen` marks
    /// (taken before that read): if a change to the organization's configuration has been
    /// committed since, nothing is stored and the answer is [`StoreError::DirectoryChanged`].
    /// Without `seen`, as `insert_events`.
    async fn insert_events_unless_changed(
        &self,
        org: &OrgId,
        seen: Option<&ConfigMark>,
        items: &[IngestItem],
        now: Timestamp,
        lease_until: Timestamp,
    ) -> StoreResult<Vec<IngestResult>> {
        // Only stores shared by several processes mark reads (`config_mark`).
        debug_assert!(seen.is_none(), "this store marks no reads");
        self.insert_events(org, items, now, lease_until).await
    }
    /// Leases up to `limit` pending deliveries that are due and not leased, of active webhooks.
    async fn claim_due(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// Leases up to `limit` of one webhook's spilled deliveries (pending, unleased, due by their
    /// schedule but put off because memory was short), in id order from `from` on. Plain due
    /// deliveries of the webhook in that range are taken too; those deferred or parked are not.
    async fn claim_spilled(
        &self,
        webhook: &WebhookId,
        from: &DeliveryId,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<DueDelivery>>;
    /// Gives leased deliveries back to wait for their webhook to pull them (this node needs
    /// the memory): unleased, but still not due for anyone before their lease would have ended
    /// (parked if their webhook was deactivated). Each only if its lease is still the one
    /// given with it: once that ended, another node may have leased it.
    async fn spill_deliveries(&self, leases: &[(DeliveryId, Timestamp)]) -> StoreResult<()>;
    /// Puts off again, to `until`, up to `limit` of one webhook's spilled deliveries from
    /// `from` on (those this node will pull) whose fallback time (the end of the lease they
    /// would have had) has passed: while this node still pulls them, they must not stand in
    /// the scheduler's due order before other webhooks' work. Answers how many it put off.
    async fn rearm_spilled(
        &self,
        webhook: &WebhookId,
        from: &DeliveryId,
        now: Timestamp,
        until: Timestamp,
        limit: u32,
    ) -> StoreResult<u64>;
    /// Each active webhook with spilled deliveries, with the smallest of their ids: where a
    /// node that is the only user of the store starts pulling them after a restart.
    async fn spilled_starts(&self) -> StoreResult<Vec<(WebhookId, DeliveryId)>>;
    /// The webhook of the delivery that came due first (by `now`), of those still unclaimed.
    async fn earliest_due_webhook(&self, now: Timestamp) -> StoreResult<Option<WebhookId>>;
    /// When the earliest pending, unleased delivery comes due.
    async fn next_due_at(&self) -> StoreResult<Option<Timestamp>>;
    /// Stores attempts and moves their deliveries on; releases their leases. All or nothing.
    /// Answers, for each record, whether it moved its delivery on. One that did not came under
    /// a lease that has passed to another node (this one stalled), or for a delivery finished
    /// meanwhile: its outcome is not the delivery's, and its attempt is not kept either,
    /// unless the delivery was cancelled (its webhook deleted while the attempt was out).
    async fn record_attempts(&self, records: &[AttemptRecord]) -> StoreResult<Vec<bool>>;
    /// Stores the attempts a stop cut off before their endpoints answered (the request went,
    /// and may have arrived), each with its delivery due again as it was (its time, now past)
    /// without spending a step of its retry schedule: Herald stopped, not the endpoint. Each
    /// only if its delivery is still pending under the record's lease (`next` is not read);
    /// answers the deliveries whose attempts were stored.
    async fn record_cut_off(&self, records: &[AttemptRecord]) -> StoreResult<Vec<DeliveryId>>;
    /// Stores one attempt.
    async fn record_attempt(&self, record: &AttemptRecord) -> StoreResult<()> {
        self.record_attempts(std::slice::from_ref(record))
            .await
            .map(|_| ())
    }
    /// Gives the organization's leased deliveries back to be attempted at `until` (a circuit
    /// breaker is open, or a client went away while they were stored), each only if it still
    /// has the lease given with it: once that ended, another node may have leased it and be
    /// sending it. Another organization's ids are left as they are. Answers how many it gave
    /// back.
    async fn defer_deliveries(
        &self,
        org: &OrgId,
        leases: &[(DeliveryId, Timestamp)],
        until: Timestamp,
    ) -> StoreResult<usize>;
    /// Ends the organization's leased deliveries without another attempt, as `state` (`failed`:
    /// their endpoint's circuit stayed open past the end of their retry schedule; `skipped`:
    /// their WebSub channel stayed unverified as long), `error` as their last error, each only if
    /// it still has the lease given with it (as [`Store::defer_deliveries`]). Answers the ids it
    /// ended.
    async fn end_unsent(
        &self,
        org: &OrgId,
        leases: &[(DeliveryId, Timestamp)],
        state: crate::delivery::DeliveryState,
        error: &str,
        now: Timestamp,
    ) -> StoreResult<Vec<DeliveryId>>;
    /// Extends the leases of deliveries this node holds to `until`, each only if it still has
    /// the lease given with it (as [`Store::defer_deliveries`]): a backlog held in memory can
    /// outlast the leases it was taken under. Answers the ids renewed; the others are another
    /// node's now, or no longer pending.
    async fn renew_leases(
        &self,
        leases: &[(DeliveryId, Timestamp)],
        until: Timestamp,
    ) -> StoreResult<Vec<DeliveryId>>;
    /// Moves the webhook's deliveries deferred to exactly `deferred_to` to `to`: to now when its
    /// circuit's probe succeeded before then, to the next cool-down's end when it failed.
    /// Answers how many.
    async fn move_deferred(
        &self,
        webhook: &WebhookId,
        deferred_to: Timestamp,
        to: Timestamp,
    ) -> StoreResult<u64>;
    /// Gives a leased delivery back without an attempt (its webhook was disabled meanwhile),
    /// only if it still has the lease `lease_until` (as [`Store::defer_deliveries`]).
    async fn release_lease(&self, id: &DeliveryId, lease_until: Timestamp) -> StoreResult<()>;
    /// Releases every lease: on start-up of a node that is the only one using the store.
    /// Spilled deliveries stay spilled ([`Store::spilled_starts`]).
    async fn release_all_leases(&self) -> StoreResult<u64>;
    async fn list_deliveries(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        filter: &DeliveryFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<Delivery>>;
    async fn get_delivery(
        &self,
        org: &OrgId,
        id: &DeliveryId,
    ) -> StoreResult<(Delivery, Vec<Attempt>)>;
    async fn get_event(&self, org: &OrgId, id: &str) -> StoreResult<Event>;
    /// An event with its deliveries, oldest first and at most `limit`, read together: where
    /// one event went (`NotFound` if the event is not kept).
    async fn event_deliveries(
        &self,
        org: &OrgId,
        event_id: &str,
        limit: u32,
    ) -> StoreResult<(Event, Vec<Delivery>)>;
    /// A page of the organization's events, newest first (by time received, then by id), as
    /// `filter` says. The cursor is an [`EventCursor`] after the last one.
    ///
    /// [`EventCursor`]: crate::event::EventCursor
    async fn list_events(
        &self,
        org: &OrgId,
        filter: &EventFilter,
        page: &PageRequest,
    ) -> StoreResult<Page<crate::event::EventSummary>>;
    /// The organization's events with these ids, those that are kept (in no particular order).
    async fn get_events(&self, org: &OrgId, ids: &[String]) -> StoreResult<Vec<Event>>;
    /// Leases a delivery for an immediate attempt: a finished one is pending again with a
    /// fresh retry schedule; a pending one waiting for its next attempt has an attempt now
    /// that its schedule does not count (failed, it waits for the same step again).
    /// `Conflict` while a node holds it (its lease has not ended)
    /// or its webhook is disabled or deleted ([`crate::delivery::resend_refusal`]).
    async fn resend_delivery(
        &self,
        org: &OrgId,
        id: &DeliveryId,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> StoreResult<DueDelivery>;
    /// One step of a purge: deletes up to `limit` events received before `cutoff` (of `org`,
    /// or of every organization) whose deliveries are all finished, with those deliveries and
    /// their attempts, oldest first (on SQLite, one organization after another) and starting
    /// at `from`. Answers what it removed and where
    /// the next step starts, `None` once every event before `cutoff` has been looked at:
    /// callers repeat it until then, so that events kept back by a pending delivery are passed
    /// over once per run, not once per step. A step may look at only so many events (SQLite's
    /// one writer is every tenant's), so it can remove nothing and still not be the last.
    async fn purge_before(
        &self,
        org: Option<&OrgId>,
        cutoff: Timestamp,
        limit: u32,
        from: Option<PurgeFrom>,
    ) -> StoreResult<(PurgeCount, Option<PurgeFrom>)>;

    /// Whether other nodes may use this store at the same time. A node of a shared store
    /// must not release leases it did not take ([`Store::release_all_leases`]); leases held by
    /// a node that died are simply due once they end.
    fn is_shared(&self) -> bool {
        false
    }
    /// Signals from every node using the store, for backends that several nodes share; `None`
    /// when this node is the only user (it then knows everything that happens).
    fn signals(&self) -> Option<tokio::sync::broadcast::Receiver<StoreSignal>> {
        None
    }

    /// Whether the database answers a read now, for `/readyz` and for telling that it is back
    /// after an outage. On PostgreSQL, a read whose cost does not grow with the deliveries
    /// written since the tables were last vacuumed or analyzed (without them, the scheduler's
    /// [`Store::next_due_at`] took over a second within minutes); elsewhere, that one.
    async fn answers_reads(&self) -> StoreResult<()> {
        self.next_due_at().await.map(|_| ())
    }

    /// The database server's clock, for a backend that several nodes share: leases are times
    /// that every node compares with its own clock, so a node whose clock is off by more than
    /// a lease's margin can take deliveries another node still holds. `None` when this node is
    /// the only user.
    async fn database_time(&self) -> StoreResult<Option<Timestamp>> {
        Ok(None)
    }

    /// When the newest event was received, for a backend whose times come from this node's
    /// clock alone: a start with the clock behind it (set back since) says so, as every retry
    /// scheduled then waits until the clock catches up. `None` where the database server's
    /// clock keeps the nodes' times ([`Store::database_time`]), or with no event.
    async fn newest_event_at(&self) -> StoreResult<Option<Timestamp>> {
        Ok(None)
    }

    /// Pending deliveries per webhook (for metrics).
    async fn pending_by_webhook(&self) -> StoreResult<Vec<PendingStat>>;
    /// Makes the store's files whole by themselves as the server stops: SQLite moves its
    /// write-ahead log into `herald.db` and empties it, so that a copy of that file alone, made
    /// while the server is stopped, holds everything. Answers whether everything was moved
    /// (false when a read or write that outlived the stop held some back); nothing to do on
    /// other backends.
    async fn checkpoint_on_stop(&self) -> StoreResult<bool> {
        Ok(true)
    }
    /// Drops what the store caches in this process's memory and does not need now (SQLite's
    /// page caches: up to 16 MiB a connection, filled by a backlog or a deep history read and
    /// otherwise kept for as long as the process runs). Called every minute; nothing to do
    /// on backends whose caches live in the database server.
    async fn release_memory(&self) -> StoreResult<()> {
        Ok(())
    }
    /// Why the store cannot take writes now, as far as it knows without trying (the SQLite
    /// store's writer thread stopped, its file was deleted, its last commit failed moments
    /// ago: a full disk); `None` when nothing says so. The readiness check asks.
    fn write_trouble(&self) -> Option<String> {
        None
    }
    /// Why this node cannot serve some requests although its database works (it lacks a key
    /// that stored secrets were sealed with); `None` when nothing says so. The readiness check
    /// asks; it lasts until the node is restarted.
    fn serving_trouble(&self) -> Option<String> {
        None
    }
    /// How long write transactions take to commit, if the backend measures it.
    fn commit_latency(&self) -> Option<&crate::metrics::Histogram> {
        None
    }

    // WebSub subscriptions.
    /// Every subscription of the organization's webhooks, for the directory.
    async fn org_subscriptions(&self, org: &OrgId) -> StoreResult<Vec<Subscription>>;
    /// The organizations with an enabled webhook that verifies its intent (WebSub), whose
    /// channels the retention run checks are subscribed under their current topics.
    async fn orgs_with_websub_webhooks(&self) -> StoreResult<Vec<OrgId>>;
    /// Inserts or replaces subscriptions (by webhook and channel).
    async fn save_subscriptions(
        &self,
        org: &OrgId,
        subscriptions: &[Subscription],
    ) -> StoreResult<()>;
    /// Saves each subscription only where the stored one is still as it was read (`None`:
    /// there was none), so that a change made while its endpoint was asked (a deactivation, a
    /// resend, a new URL's reset) stands; answers how many were saved.
    async fn save_subscriptions_as_read(
        &self,
        org: &OrgId,
        subscriptions: &[(Subscription, Option<AsRead>)],
    ) -> StoreResult<usize>;
    /// Holds a due renewal until `until`, so that no other node renews it meanwhile (and this
    /// one does again then, if its renewal was cut short): `false` if its `renew_at` is no
    /// longer the one read (another node took it, or a change reset it).
    async fn claim_renewal(
        &self,
        org: &OrgId,
        subscription: &Subscription,
        until: Timestamp,
    ) -> StoreResult<bool>;
    /// Subscriptions whose lease renewal is due, with their organization.
    async fn subscriptions_to_renew(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<(OrgId, Subscription)>>;

    /// Makes every pending delivery of the webhook waiting for its next attempt (a retry, or
    /// its endpoint's cool-down: its `next_attempt_at` after `now`) due at `now`, unless a node
    /// holds it (leased) or it changed at `now` or later (but not more than
    /// [`LATER_THAN_A_CALL_MS`] later), for an attempt besides their
    /// schedules (which do not count it: one that fails waits for the same step again).
    /// Parked ones (an inactive webhook's) stay parked. Answers how many.
    async fn retry_waiting(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        now: Timestamp,
    ) -> StoreResult<u64>;
    /// Makes every failed delivery of the webhook created since `since` pending again, due now;
    /// with `skipped`, every skipped one too (never sent: its WebSub channel was not verified).
    async fn recover_failed(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        since: Timestamp,
        now: Timestamp,
        skipped: bool,
    ) -> StoreResult<u64>;

    /// Counts for the webhook's delivery-health plots over `window` (see [`crate::health`]):
    /// its attempts per bucket and latency class, its deliveries created and finished per
    /// bucket, and how many were unfinished when the window started. Only the organization's
    /// own rows are counted.
    async fn webhook_health(
        &self,
        org: &OrgId,
        webhook: &WebhookId,
        window: &HealthWindow,
    ) -> StoreResult<HealthRows>;

    // Dashboard sessions, shared by every node so that a person stays signed in across
    // restarts and behind a load balancer.
    /// Stores a new session. Expired sessions go first; then, past `limits`, the owner's
    /// sessions closest to expiry, then anyone's.
    async fn create_session(
        &self,
        session: &DashboardSession,
        now: Timestamp,
        limits: SessionLimits,
    ) -> StoreResult<()>;
    /// The session with this id digest, unless it expired.
    async fn get_session(
        &self,
        id_hash: &str,
        now: Timestamp,
    ) -> StoreResult<Option<DashboardSession>>;
    /// Ends a session, with its waiting messages.
    async fn delete_session(&self, id_hash: &str) -> StoreResult<()>;
    /// Deletes the sessions expired by `now`, with their waiting messages (what they keep of
    /// the token that signed them in is gone with them); answers how many.
    async fn delete_expired_sessions(&self, now: Timestamp) -> StoreResult<u64>;
    /// Keeps a message (sealed by the caller) for the session's next view of `page`; past
    /// `keep` waiting messages, its oldest go.
    async fn add_flash(
        &self,
        id_hash: &str,
        page: &str,
        sealed: &str,
        keep: usize,
    ) -> StoreResult<()>;
    /// The messages waiting for `page`, oldest first, which are then gone.
    async fn take_flashes(&self, id_hash: &str, page: &str) -> StoreResult<Vec<String>>;
}

/// A dashboard session as stored. Its id (the cookie) is not: only its SHA-256, so that a copy
/// of the database signs no one in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DashboardSession {
    /// Hex SHA-256 of the session id.
    pub id_hash: String,
    /// Whose it is (`admin`, or an organization's id): the per-owner limit counts by it.
    pub owner: String,
    /// What signed in, in a form the dashboard checks again on every request.
    pub credential: String,
    pub expires_at: Timestamp,
}

/// How many sessions are kept: `per_owner` of one owner, `total` in all.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub per_owner: usize,
    pub total: usize,
}
