//! The in-memory directory of organizations, their webhooks and their own event types, so that
//! the hot path (ingest fan-out, rendering) never reads them from the database. Any change to an
//! organization, its webhooks or its types must call [`Directory::invalidate`]. When several
//! nodes share the store, the store's signals carry other nodes' changes here too (see
//! `herald/src/service/cluster.rs`), a moment after their commit; ingest, which must not miss
//! one, checks each snapshot against the store as it stores events ([`OrgSnapshot::config_mark`]).

use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::catalog::CatalogEventType;
use crate::event_type::CustomEventType;
use crate::org::Organization;
use crate::store::{ConfigMark, OrgConfig, Store, StoreError, StoreResult};
use crate::subscription::{Mode, State, Subscription, Verification};
use crate::webhook::Webhook;
use crate::{EventTypeId, OrgId, WebhookId};

/// An organization as the hot path needs it.
pub struct OrgSnapshot {
    pub org: Organization,
    webhooks: Vec<Arc<Webhook>>,
    /// Where each webhook is in `webhooks`: every attempt looks its webhook up, and an
    /// organization may have thousands.
    webhook_at: HashMap<WebhookId, usize>,
    /// WebSub subscriptions by webhook and channel.
    subscriptions: HashMap<(WebhookId, String), Subscription>,
    /// The organization's own types, each with its schema's validator, compiled when the first
    /// event of the type needs it: a compiled schema can weigh hundreds of KiB, and an
    /// organization may have a thousand types. The snapshot is rebuilt on every change to the
    /// organization, and the validators go from one snapshot to the next ([`SchemaCells`]).
    custom_types: HashMap<String, (CustomEventType, Arc<SchemaCell>)>,
    /// Which configuration changes the store had when this was read, where processes share
    /// it: ingest stores events fanned out from this snapshot only if none came since
    /// ([`Store::insert_events_unless_changed`]).
    pub config_mark: Option<ConfigMark>,
}

/// What ingest needs to know of an event type.
pub struct ResolvedType<'a> {
    pub channel: Option<&'a str>,
    /// The catalog's URI for the type, where it has one.
    pub uri: Option<&'a str>,
    pub validator: Option<&'a jsonschema::Validator>,
}

/// A type's compiled schema, made when the first event of the type needs it (`None`: the
/// stored schema no longer compiles).
type SchemaCell = OnceLock<Option<jsonschema::Validator>>;

/// An organization's compiled schemas by type id, handed from one of its snapshots to the
/// next: a type's schema never changes (a new one is a new type, with a new id). Each change
/// to an organization used to compile its schemas again as events came (a thousand types with
/// 16 KiB schemas: about 260 MB compiled, 1.5 s of CPU after every change to a webhook).
type SchemaCells = HashMap<EventTypeId, Arc<SchemaCell>>;

impl OrgSnapshot {
    pub fn build(
        org: Organization,
        webhooks: Vec<Webhook>,
        custom: Vec<CustomEventType>,
        subscriptions: Vec<Subscription>,
    ) -> Self {
        Self::build_sharing(org, webhooks, custom, subscriptions, &SchemaCells::new())
    }

    /// [`OrgSnapshot::build`], taking over the schemas a previous snapshot compiled.
    fn build_sharing(
        org: Organization,
        webhooks: Vec<Webhook>,
        custom: Vec<CustomEventType>,
        subscriptions: Vec<Subscription>,
        compiled: &SchemaCells,
    ) -> Self {
        let custom_types = custom
            .into_iter()
            .map(|t| {
                let cell = compiled.get(&t.id).cloned().unwrap_or_default();
                (t.name.clone(), (t, cell))
            })
            .collect();
        let webhook_at = webhooks
            .iter()
            .enumerate()
            .map(|(at, w)| (w.id.clone(), at))
            .collect();
        Self {
            org,
            webhooks: webhooks.into_iter().map(Arc::new).collect(),
            webhook_at,
            subscriptions: subscriptions
                .into_iter()
                .map(|s| ((s.webhook_id.clone(), s.channel.clone()), s))
                .collect(),
            custom_types,
            config_mark: None,
        }
    }

    /// Finds an event type among the organization's catalogs and its own types.
    pub fn resolve_type(&self, name: &str) -> Option<ResolvedType<'_>> {
        if crate::event_type::is_operational(name) {
            return Some(ResolvedType {
                channel: Some(crate::event_type::OPERATIONS_CHANNEL),
                uri: None,
                validator: None,
            });
        }
        if name == crate::event_type::TEST_EVENT_TYPE {
            return Some(ResolvedType {
                channel: None,
                uri: None,
                validator: None,
            });
        }
        if let Some((t, v)) = self.custom_types.get(name) {
            // Schemas were compiled when registered; one that no longer compiles (a newer
            // library being stricter) is treated as absent rather than blocking ingest.
            let validator = v.get_or_init(|| {
                let schema = t.schema.as_ref()?.value().ok()?;
                crate::event_type::compile_stored_schema(&schema)
            });
            return Some(ResolvedType {
                channel: t.channel.as_deref(),
                uri: None,
                validator: validator.as_ref(),
            });
        }
        self.catalog_type(name).map(|(catalog, t)| ResolvedType {
            channel: Some(&t.channel),
            uri: t.uri.as_deref(),
            validator: catalog.validator(name),
        })
    }

    pub fn catalog_type(
        &self,
        name: &str,
    ) -> Option<(&'static crate::catalog::Catalog, &'static CatalogEventType)> {
        self.org
            .catalogs
            .iter()
            .filter_map(|c| c.catalog())
            .find_map(|c| c.event_type(name).map(|t| (c, t)))
    }

    /// Its types' schema cells, for the next snapshot.
    fn schema_cells(&self) -> SchemaCells {
        self.custom_types
            .values()
            .map(|(t, cell)| (t.id.clone(), cell.clone()))
            .collect()
    }

    /// How many event types the organization registered itself.
    pub fn custom_type_count(&self) -> usize {
        self.custom_types.len()
    }

    pub fn has_custom_type(&self, name: &str) -> bool {
        self.custom_types.contains_key(name)
    }

    /// One of the organization's own types.
    pub fn custom_type(&self, name: &str) -> Option<&CustomEventType> {
        self.custom_types.get(name).map(|(t, _)| t)
    }

    /// The organization's own type that `typed` most likely meant (only those can be
    /// unregistered).
    pub fn closest_custom_type(&self, typed: &str) -> Option<&str> {
        crate::suggest::closest(typed, self.custom_types.keys().map(String::as_str))
    }

    /// How many of the organization's types (catalog or own) belong to `channel`.
    pub fn types_in_channel(&self, channel: &str) -> usize {
        let own = self
            .custom_types
            .values()
            .filter(|(t, _)| t.channel.as_deref() == Some(channel))
            .count();
        let catalogs: usize = self
            .org
            .catalogs
            .iter()
            .filter_map(|c| c.catalog())
            .map(|c| c.types.iter().filter(|t| t.channel == channel).count())
            .sum();
        own + catalogs
    }

    /// Whether any type of the organization (catalog or own) belongs to `channel`.
    pub fn knows_channel(&self, channel: &str) -> bool {
        self.channel_defined(
            self.org.catalogs.iter().filter_map(|c| c.catalog()),
            channel,
        )
    }

    /// Whether `channel` is Herald's own, or a type of the organization's own or of one of
    /// `catalogs` belongs to it.
    fn channel_defined<'c>(
        &self,
        mut catalogs: impl Iterator<Item = &'c crate::catalog::Catalog>,
        channel: &str,
    ) -> bool {
        channel == crate::event_type::OPERATIONS_CHANNEL
            || self
                .custom_types
                .values()
                .any(|(t, _)| t.channel.as_deref() == Some(channel))
            || catalogs.any(|c| c.types.iter().any(|t| t.channel == channel))
    }

    /// The event type of the organization that `typed` most likely meant, for "did you mean
    /// …?". Herald's own operational types count only when asked for (`with_operational`:
    /// webhooks may subscribe to them, producers may not post them).
    pub fn closest_type(&self, typed: &str, with_operational: bool) -> Option<&str> {
        let catalog_types = self
            .org
            .catalogs
            .iter()
            .filter_map(|c| c.catalog())
            .flat_map(|c| c.types.iter().map(|t| t.name.as_str()));
        let operational = crate::event_type::OPERATIONAL_TYPES
            .into_iter()
            .filter(|_| with_operational);
        crate::suggest::closest(
            typed,
            catalog_types
                .chain(self.custom_types.keys().map(String::as_str))
                .chain(operational),
        )
    }

    /// Why `typed` is not one of the organization's types, for a message: the built-in catalog
    /// that defines it exactly, when the organization does not use that catalog (a producer
    /// sending another product's event names: a near name of this one's would mislead, since
    /// its data differs), else the type it most likely meant; empty when neither.
    pub fn not_a_type_because(&self, typed: &str, with_operational: bool) -> String {
        let elsewhere = crate::catalog::all().iter().find(|c| {
            !self.org.catalogs.iter().any(|o| o.as_str() == c.name)
                && c.types.iter().any(|t| t.name == typed)
        });
        match elsewhere {
            Some(catalog) => format!(
                " (it is a type of the {} catalog, which this organization does not use: add \
                 that catalog to the organization's, or use a type of its own catalogs)",
                catalog.name
            ),
            None => crate::suggest::did_you_mean(self.closest_type(typed, with_operational)),
        }
    }

    /// The channel of the organization that `typed` most likely meant.
    pub fn closest_channel(&self, typed: &str) -> Option<String> {
        let mut channels = self.all_channels();
        channels.push(crate::event_type::OPERATIONS_CHANNEL.to_owned());
        crate::suggest::closest(typed, channels.iter().map(String::as_str)).map(str::to_owned)
    }

    /// Every channel the organization's types belong to, sorted.
    pub fn all_channels(&self) -> Vec<String> {
        let mut channels: Vec<String> = self
            .custom_types
            .values()
            .filter_map(|(t, _)| t.channel.clone())
            .chain(
                self.org
                    .catalogs
                    .iter()
                    .filter_map(|c| c.catalog())
                    .flat_map(|c| c.types.iter().map(|t| t.channel.clone())),
            )
            .collect();
        channels.sort();
        channels.dedup();
        channels
    }

    /// The channels a webhook's subscription covers: those it names, and those of the types it
    /// names (`*` covers every channel).
    pub fn channels_of(&self, webhook: &Webhook) -> Vec<String> {
        if webhook.events.iter().any(|e| e == "*") || webhook.channels.iter().any(|c| c == "*") {
            return self.all_channels();
        }
        let mut channels: Vec<String> = webhook
            .channels
            .iter()
            .cloned()
            .chain(webhook.events.iter().filter_map(|e| {
                self.resolve_type(e)
                    .and_then(|t| t.channel.map(str::to_owned))
            }))
            .collect();
        channels.sort();
        channels.dedup();
        channels
    }

    /// The webhook's WebSub subscriptions, by channel.
    pub fn subscriptions_of(&self, webhook: &WebhookId) -> Vec<&Subscription> {
        let mut subs: Vec<&Subscription> = self
            .subscriptions
            .iter()
            .filter(|((w, _), _)| w == webhook)
            .map(|(_, s)| s)
            .collect();
        subs.sort_by(|a, b| a.channel.cmp(&b.channel));
        subs
    }

    /// Why an event of `channel` must not be sent to `webhook` now, if it must not: a webhook
    /// that verifies its intent gets events only on channels it verified.
    pub fn withheld_because(
        &self,
        webhook: &Webhook,
        channel: Option<&str>,
        now: crate::Timestamp,
    ) -> Option<String> {
        if webhook.verification == Verification::None {
            return None;
        }
        let Some(channel) = channel else {
            return Some("not sent: the event type has no channel, and this webhook receives only channels it verified (WebSub)".into());
        };
        match self
            .subscriptions
            .get(&(webhook.id.clone(), channel.to_owned()))
        {
            Some(s) if s.delivers(now) => None,
            Some(s) => {
                let s = s.as_seen(now);
                Some(format!(
                    "not sent: the channel '{channel}' is not verified (WebSub {} is {}{})",
                    s.mode.as_str(),
                    s.state.as_str(),
                    s.reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                ))
            }
            None => Some(format!(
                "not sent: the channel '{channel}' has no verification the endpoint answered \
                 (WebSub); one is sent when the webhook is enabled or given the channel, or \
                 resend it (POST /v1/orgs/{}/webhooks/{}/verify)",
                webhook.org_id, webhook.id
            )),
        }
    }

    /// Why an event of `channel` arriving at `now` is not to be sent to `webhook` at all
    /// (stored `skipped`), if it is not. A channel whose verification is under way (the
    /// webhook just enabled, moved to a new URL, or given the channel) does not skip it, as
    /// [`Self::withheld_because`] would: the delivery waits for that verification, as the ones
    /// pending when it began do, up to its retry schedule.
    pub fn skipped_because(
        &self,
        webhook: &Webhook,
        channel: Option<&str>,
        now: crate::Timestamp,
    ) -> Option<String> {
        let reason = self.withheld_because(webhook, channel, now)?;
        let under_way = channel.is_some_and(|channel| {
            match self
                .subscriptions
                .get(&(webhook.id.clone(), channel.to_owned()))
            {
                Some(s) => s.mode == Mode::Subscribe && s.state == State::Pending,
                // Enabling stores the channels' rows with the endpoint's answers.
                None => webhook.active,
            }
        });
        (!under_way).then_some(reason)
    }

    /// What each webhook names that would no longer exist with `catalogs` instead of the
    /// organization's: event types and channels that only the catalogs left out define. Only
    /// webhooks that would lose something are listed.
    pub fn lost_with_catalogs(
        &self,
        catalogs: &[crate::catalog::CatalogName],
    ) -> Vec<(WebhookId, Vec<String>)> {
        let kept: Vec<&crate::catalog::Catalog> =
            catalogs.iter().filter_map(|c| c.catalog()).collect();
        let type_stays = |name: &str| {
            crate::event_type::is_reserved(name)
                || self.custom_types.contains_key(name)
                || kept.iter().any(|c| c.event_type(name).is_some())
        };
        let channel_stays = |channel: &str| self.channel_defined(kept.iter().copied(), channel);
        self.webhooks
            .iter()
            .filter_map(|w| {
                let lost: Vec<String> = w
                    .events
                    .iter()
                    .filter(|e| *e != "*" && !type_stays(e))
                    .map(|e| format!("'{e}'"))
                    .chain(
                        w.channels
                            .iter()
                            .filter(|c| *c != "*" && !channel_stays(c))
                            .map(|c| format!("channel '{c}'")),
                    )
                    .collect();
                (!lost.is_empty()).then(|| (w.id.clone(), lost))
            })
            .collect()
    }

    /// The organization's webhooks.
    pub fn webhooks(&self) -> &[Arc<Webhook>] {
        &self.webhooks
    }

    pub fn webhook(&self, id: &WebhookId) -> Option<&Arc<Webhook>> {
        self.webhook_at.get(id).map(|&at| &self.webhooks[at])
    }

    /// The active webhooks that want an event of this type.
    pub fn subscribers<'a>(
        &'a self,
        type_name: &'a str,
        channel: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<Webhook>> + 'a {
        self.webhooks
            .iter()
            .filter(move |w| w.active && w.wants(type_name, channel))
    }
}

/// How many counters organizations share (by hash) to tell a load that raced with a change.
const GENERATION_STRIPES: usize = 64;

/// Which of the [`GENERATION_STRIPES`] an organization shares.
fn stripe_of(org: &OrgId) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(org.as_str());
    (hash % GENERATION_STRIPES as u64) as usize
}

/// Invalidation counters, so that a load which raced with an invalidation of its organization
/// is not cached. One counter for everything would let one tenant changing its webhooks in a
/// loop keep every other tenant's snapshot from being cached; organizations share one of
/// [`GENERATION_STRIPES`] counters instead, and a shared one only costs an extra load.
struct Generations {
    all: AtomicU64,
    stripes: [AtomicU64; GENERATION_STRIPES],
}

/// What [`Generations::before_load`] saw.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Seen(u64, u64);

impl Generations {
    fn new() -> Self {
        Self {
            all: AtomicU64::new(0),
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn stripe(&self, org: &OrgId) -> &AtomicU64 {
        &self.stripes[stripe_of(org)]
    }

    fn before_load(&self, org: &OrgId) -> Seen {
        Seen(
            self.all.load(Ordering::SeqCst),
            self.stripe(org).load(Ordering::SeqCst),
        )
    }

    /// Whether nothing invalidated `org` since `seen`.
    fn unchanged(&self, org: &OrgId, seen: Seen) -> bool {
        self.before_load(org) == seen
    }

    fn invalidate(&self, org: &OrgId) {
        self.stripe(org).fetch_add(1, Ordering::SeqCst);
    }

    fn invalidate_all(&self) {
        self.all.fetch_add(1, Ordering::SeqCst);
    }
}

/// One holder at a time for each key, the others waiting their turn in order. An entry lives
/// while someone holds the key or waits for it.
struct Turns<K> {
    waiting: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K: std::hash::Hash + Eq + Clone> Turns<K> {
    fn new() -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `work` when `key`'s turn comes.
    async fn take<T>(&self, key: &K, work: impl Future<Output = T>) -> T {
        let turn = self
            .waiting
            .lock()
            .expect("turns lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let done = {
            let _turn = turn.lock().await;
            work.await
        };
        let mut waiting = self.waiting.lock().expect("turns lock");
        // Ours and the map's: nobody else waits for this key.
        if Arc::strong_count(&turn) == 2 {
            waiting.remove(key);
        }
        done
    }
}

/// Caches one [`OrgSnapshot`] per organization, loaded on first use.
pub struct Directory {
    store: Arc<dyn Store>,
    orgs: RwLock<HashMap<OrgId, Arc<OrgSnapshot>>>,
    generations: Generations,
    /// One load at a time per organization: requests that miss the cache together (after a
    /// change, with hundreds of producers posting) wait for one load and share it, rather than
    /// each reading the organization and compiling its schemas again.
    loading: Turns<OrgId>,
    /// One change at a time per organization (see [`Directory::changing`]).
    changes: Turns<OrgId>,
    /// Each organization's compiled schemas, kept across its reloads (an organization found
    /// gone drops its own).
    schemas: Mutex<HashMap<OrgId, SchemaCells>>,
}

impl Directory {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            orgs: RwLock::new(HashMap::new()),
            generations: Generations::new(),
            loading: Turns::new(),
            changes: Turns::new(),
            schemas: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `change`, a change to the organization's webhooks or event types that checks the
    /// organization as it is and then writes, when no other change to it runs: on this node
    /// (its own turns, so that requests here queue without each holding a connection) or on
    /// another sharing the store ([`Store::org_change_turn`]). Two at once would each pass the
    /// check that the other's write then breaks: two webhooks of a profile that allows one per
    /// organization, or a type deleted while a new webhook subscribes to it. Fails only when
    /// the store cannot give the turn.
    pub async fn changing<T>(
        &self,
        org: &OrgId,
        change: impl Future<Output = T>,
    ) -> StoreResult<T> {
        self.changes
            .take(org, async {
                let _turn = self.store.org_change_turn(org).await?;
                // Another node's change may have committed just before, its notice not here
                // yet: the change checks the organization as the store has it now.
                self.invalidate(org);
                Ok(change.await)
            })
            .await
    }

    pub async fn snapshot(&self, org: &OrgId) -> StoreResult<Arc<OrgSnapshot>> {
        if let Some(s) = self.cached(org) {
            return Ok(s);
        }
        self.loading
            .take(org, async {
                // Whoever held the turn before may have loaded it.
                match self.cached(org) {
                    Some(s) => Ok(s),
                    None => self.load(org).await,
                }
            })
            .await
    }

    /// Reads the organization from the store and caches it, unless it changed meanwhile.
    async fn load(&self, org: &OrgId) -> StoreResult<Arc<OrgSnapshot>> {
        let generation = self.generations.before_load(org);
        // Marked before the reads: a change committed between the mark and a read is then
        // taken as unseen, which costs one reload, never a missed change.
        let seen = self.store.config_mark().await?;
        let OrgConfig {
            organization,
            webhooks,
            types,
            subscriptions,
        } = match self.store.org_config(org).await {
            Err(StoreError::NotFound) => {
                self.schemas.lock().expect("schemas lock").remove(org);
                return Err(StoreError::NotFound);
            }
            found => found?,
        };
        // One load at a time for an organization (`loading`): nobody else takes its cells.
        let compiled = (self.schemas.lock().expect("schemas lock"))
            .remove(org)
            .unwrap_or_default();
        let mut snapshot =
            OrgSnapshot::build_sharing(organization, webhooks, types, subscriptions, &compiled);
        (self.schemas.lock().expect("schemas lock")).insert(org.clone(), snapshot.schema_cells());
        snapshot.config_mark = seen;
        let snapshot = Arc::new(snapshot);
        let mut orgs = self.orgs.write().expect("directory lock");
        if self.generations.unchanged(org, generation) {
            orgs.insert(org.clone(), snapshot.clone());
        }
        Ok(snapshot)
    }

    fn cached(&self, org: &OrgId) -> Option<Arc<OrgSnapshot>> {
        self.orgs.read().expect("directory lock").get(org).cloned()
    }

    /// Forgets what is cached of `org`; the next use loads it again.
    pub fn invalidate(&self, org: &OrgId) {
        let mut orgs = self.orgs.write().expect("directory lock");
        self.generations.invalidate(org);
        orgs.remove(org);
    }

    /// Drops the compiled schemas of organizations with no snapshot cached: deleted ones (here
    /// or on another node, which only invalidates them here) and ones not used since a change.
    /// Run now and then; an organization whose reload comes after it compiles its schemas
    /// again as its events come.
    pub fn forget_unused_schemas(&self) {
        let orgs = self.orgs.read().expect("directory lock");
        (self.schemas.lock().expect("schemas lock")).retain(|org, _| orgs.contains_key(org));
    }

    /// Forgets every organization (another node may have changed any of them unheard).
    pub fn invalidate_all(&self) {
        let mut orgs = self.orgs.write().expect("directory lock");
        self.generations.invalidate_all();
        orgs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileName;
    use crate::profile::fixtures::{org, webhook};

    #[test]
    fn a_load_is_cached_unless_its_own_organization_changed_meanwhile() {
        let generations = Generations::new();
        let (ours, other) = (OrgId::generate(), OrgId::generate());
        let seen = generations.before_load(&ours);
        generations.invalidate(&other);
        // Another organization's change lands on our counter only if the two share a stripe.
        let shared = std::ptr::eq(generations.stripe(&ours), generations.stripe(&other));
        assert_eq!(generations.unchanged(&ours, seen), !shared);
        let seen = generations.before_load(&ours);
        generations.invalidate(&ours);
        assert!(!generations.unchanged(&ours, seen));
        let seen = generations.before_load(&ours);
        generations.invalidate_all();
        assert!(!generations.unchanged(&ours, seen));
        // Over many organizations, few share ours (one in 64 on average).
        let sharing = (0..640)
            .filter(|_| {
                let seen = generations.before_load(&ours);
                generations.invalidate(&OrgId::generate());
                !generations.unchanged(&ours, seen)
            })
            .count();
        assert!(
            sharing < 40,
            "{sharing} of 640 organizations share a counter"
        );
    }

    #[test]
    fn each_webhook_is_found_by_its_id() {
        let hooks: Vec<Webhook> = (0..50)
            .map(|_| Webhook {
                id: WebhookId::generate(),
                ..webhook(
                    ProfileName::Standard,
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                )
            })
            .collect();
        let snapshot = OrgSnapshot::build(org(), hooks.clone(), vec![], vec![]);
        assert_eq!(snapshot.webhooks().len(), 50);
        for hook in &hooks {
            assert_eq!(snapshot.webhook(&hook.id).map(|w| &w.id), Some(&hook.id));
        }
        assert!(snapshot.webhook(&WebhookId::generate()).is_none());
    }

    /// An event on a channel whose verification is under way (none answered yet while the
    /// webhook is enabled, or one asked again) waits for it; one refused, or never asked of a
    /// disabled webhook, skips it.
    #[test]
    fn only_a_channel_refused_or_never_asked_skips_an_event() {
        use crate::subscription::{Mode, State, Subscription, Verification};
        let mut hook = webhook(
            ProfileName::Standard,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        hook.verification = Verification::Websub;
        hook.active = true;
        let now = crate::Timestamp::from_millis(1_000_000);
        let skipped = |hook: &Webhook, state: Option<State>| {
            let subs = state
                .map(|state| Subscription {
                    state,
                    ..Subscription::pending(
                        hook.id.clone(),
                        "login".into(),
                        "t".into(),
                        Mode::Subscribe,
                    )
                })
                .into_iter()
                .collect();
            let snapshot = OrgSnapshot::build(org(), vec![hook.clone()], vec![], subs);
            assert!(
                snapshot
                    .withheld_because(hook, Some("login"), now)
                    .is_some()
            );
            snapshot.skipped_because(hook, Some("login"), now)
        };
        assert_eq!(skipped(&hook, None), None, "enabling: none answered yet");
        assert_eq!(skipped(&hook, Some(State::Pending)), None, "asked again");
        let refused = skipped(&hook, Some(State::Failed)).unwrap();
        assert!(refused.contains("WebSub subscribe is failed"), "{refused}");
        hook.active = false;
        let never = skipped(&hook, None).unwrap();
        assert!(
            never.contains("has no verification the endpoint answered"),
            "{never}"
        );
    }

    /// A snapshot is rebuilt on every change to its organization: its types' schemas are
    /// compiled only when an event of the type needs them, not each time for every type.
    #[test]
    fn a_schema_is_compiled_when_its_type_is_first_used() {
        let types: Vec<CustomEventType> = ["a.one", "a.two"]
            .into_iter()
            .map(|name| CustomEventType {
                id: crate::EventTypeId::generate(),
                org_id: OrgId::generate(),
                name: name.into(),
                channel: None,
                description: None,
                schema: Some(crate::event_type::JsonText::of(&serde_json::json!({
                    "type": "object",
                    "required": ["x"]
                }))),
                example: None,
                created_at: crate::Timestamp::from_millis(0),
            })
            .collect();
        let snapshot = OrgSnapshot::build(org(), vec![], types, vec![]);
        let compiled = |name: &str| snapshot.custom_types[name].1.get().is_some();
        assert!(!compiled("a.one") && !compiled("a.two"));
        let validator = snapshot.resolve_type("a.one").unwrap().validator.unwrap();
        assert!(!validator.is_valid(&serde_json::json!({})));
        assert!(compiled("a.one") && !compiled("a.two"));

        // The next snapshot takes over what this one compiled, and a type gone takes its own.
        let kept = snapshot.custom_types["a.one"].0.clone();
        let next =
            OrgSnapshot::build_sharing(org(), vec![], vec![kept], vec![], &snapshot.schema_cells());
        assert!(
            next.custom_types["a.one"].1.get().is_some(),
            "not compiled again"
        );
        assert_eq!(next.schema_cells().len(), 1);
    }
}
