//! The in-memory directory of organizations, their webhooks and their own event types, so that
//! the hot path (ingest fan-out, rendering) never reads them from the database. Any change to an
//! organization, its webhooks or its types must call [`Directory::invalidate`]. When several
//! nodes share the store, the store's signals carry other nodes' changes here too (see
//! `herald/src/service/cluster.rs`).

use foldhash::{HashMap, HashMapExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::catalog::CatalogEventType;
use crate::event_type::CustomEventType;
use crate::org::Organization;
use crate::store::{Store, StoreResult};
use crate::subscription::{Subscription, Verification};
use crate::webhook::Webhook;
use crate::{OrgId, WebhookId};

/// An organization as the hot path needs it.
pub struct OrgSnapshot {
    pub org: Organization,
    webhooks: Vec<Arc<Webhook>>,
    /// Where each webhook is in `webhooks`: every attempt looks its webhook up, and an
    /// organization may have thousands.
    webhook_at: HashMap<WebhookId, usize>,
    /// WebSub subscriptions by webhook and channel.
    subscriptions: HashMap<(WebhookId, String), Subscription>,
    custom_types: HashMap<String, (CustomEventType, Option<jsonschema::Validator>)>,
}

/// What ingest needs to know of an event type.
pub struct ResolvedType<'a> {
    pub channel: Option<&'a str>,
    /// The catalog's URI for the type, where it has one.
    pub uri: Option<&'a str>,
    pub validator: Option<&'a jsonschema::Validator>,
}

impl OrgSnapshot {
    pub fn build(
        org: Organization,
        webhooks: Vec<Webhook>,
        custom: Vec<CustomEventType>,
        subscriptions: Vec<Subscription>,
    ) -> Self {
        let custom_types = custom
            .into_iter()
            .map(|t| {
                // Schemas were compiled when registered; one that no longer compiles (a newer
                // library being stricter) is treated as absent rather than blocking ingest.
                let validator = t
                    .schema
                    .as_ref()
                    .and_then(|s| crate::event_type::compile_schema(s).ok());
                (t.name.clone(), (t, validator))
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
            return Some(ResolvedType {
                channel: t.channel.as_deref(),
                uri: None,
                validator: v.as_ref(),
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

    pub fn has_custom_type(&self, name: &str) -> bool {
        self.custom_types.contains_key(name)
    }

    /// Whether any type of the organization (catalog or own) belongs to `channel`.
    pub fn knows_channel(&self, channel: &str) -> bool {
        channel == crate::event_type::OPERATIONS_CHANNEL
            || self
                .custom_types
                .values()
                .any(|(t, _)| t.channel.as_deref() == Some(channel))
            || self
                .org
                .catalogs
                .iter()
                .filter_map(|c| c.catalog())
                .any(|c| c.types.iter().any(|t| t.channel == channel))
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
            Some(s) => Some(format!(
                "not sent: the channel '{channel}' is not verified (WebSub {} is {}{})",
                s.mode.as_str(),
                s.state.as_str(),
                s.reason
                    .as_deref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            )),
            None => Some(format!(
                "not sent: the channel '{channel}' was never verified (WebSub); activate the webhook or resend its verification"
            )),
        }
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

/// Caches one [`OrgSnapshot`] per organization, loaded on first use.
pub struct Directory {
    store: Arc<dyn Store>,
    orgs: RwLock<HashMap<OrgId, Arc<OrgSnapshot>>>,
    /// Bumped by every invalidation, so that a load which raced with one is not cached.
    generation: AtomicU64,
}

impl Directory {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            orgs: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    pub async fn snapshot(&self, org: &OrgId) -> StoreResult<Arc<OrgSnapshot>> {
        if let Some(s) = self.orgs.read().expect("directory lock").get(org) {
            return Ok(s.clone());
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let organization = self.store.get_org(org).await?;
        let webhooks = self.store.org_webhooks(org).await?;
        let types = self.store.list_event_types(org).await?;
        let subscriptions = self.store.org_subscriptions(org).await?;
        let snapshot = Arc::new(OrgSnapshot::build(
            organization,
            webhooks,
            types,
            subscriptions,
        ));
        let mut orgs = self.orgs.write().expect("directory lock");
        if self.generation.load(Ordering::SeqCst) == generation {
            orgs.insert(org.clone(), snapshot.clone());
        }
        Ok(snapshot)
    }

    /// Forgets what is cached of `org`; the next use loads it again.
    pub fn invalidate(&self, org: &OrgId) {
        let mut orgs = self.orgs.write().expect("directory lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        orgs.remove(org);
    }

    /// Forgets every organization (another node may have changed any of them unheard).
    pub fn invalidate_all(&self) {
        let mut orgs = self.orgs.write().expect("directory lock");
        self.generation.fetch_add(1, Ordering::SeqCst);
        orgs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::ProfileName;
    use crate::profile::fixtures::{org, webhook};

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
}
