//! Storage conformance stories: what every [`Store`] backend must do, told as short stories and
//! run against a fresh store each. A backend joins by adding one line to the `stories!` calls at
//! the bottom; the stories themselves know nothing about SQL.
//!
//! Times are fixed (`T0` plus seconds), never the wall clock, so a story that says "not due before
//! the lease ends" checks the exact millisecond. Ids that must sort are generated and then sorted,
//! because two ULIDs made in the same millisecond come out in random order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

use serde_json::json;

use herald_core::catalog::CatalogName;
use herald_core::delivery::{Attempt, AttemptError, AttemptOutcome, Delivery, DeliveryState};
use herald_core::event::{Event, NewEvent};
use herald_core::event_type::{CustomEventType, JsonText};
use herald_core::health::{AttemptCounts, HealthRows, HealthSeries, HealthWindow, duration_class};
use herald_core::org::{ApiKey, KeyRole, OrgHandle, Organization};
use herald_core::profile::{ProfileName, SignatureScheme};
use herald_core::retry::{NextStep, RetrySchedule};
use herald_core::store::{
    AttemptRecord, DeliveryFilter, DueDelivery, EventFilter, IngestItem, IngestResult, NewDelivery,
    Placement, PurgeCount, PurgeFrom, Store, StoreError, StoreResult,
};
use herald_core::store::{DashboardSession, SessionLimits};
use herald_core::webhook::{ContentMode, Webhook, WebhookOptions, WebhookUrl};
use herald_core::{
    ApiKeyId, AttemptId, DeliveryId, EventTypeId, OrgId, PageRequest, Timestamp, WebhookId,
};
use herald_store::cipher::SecretCipher;
use herald_store::{PostgresOptions, PostgresStore, SqliteStore};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// The stories' "now": 2023-11-14T22:13:20Z.
const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);
/// How long a claim or an ingest leases a delivery for.
const LEASE_SECS: i64 = 30;
/// Far enough ahead that anything pending and unparked is due.
const FAR_FUTURE: Timestamp = Timestamp::from_millis(4_000_000_000_000);

fn at(secs: i64) -> Timestamp {
    T0.plus_secs(secs)
}

/// `n` fresh ids in creation order (ULIDs of one millisecond are not ordered by themselves).
fn sorted_ids<T: Ord>(n: usize, generate: fn() -> T) -> Vec<T> {
    let mut ids: Vec<T> = (0..n).map(|_| generate()).collect();
    ids.sort();
    ids
}

fn org(handle: &str) -> Organization {
    Organization {
        id: OrgId::generate(),
        name: format!("{handle} Inc."),
        handle: OrgHandle::parse(handle).unwrap(),
        catalogs: vec![CatalogName::parse(CatalogName::DEFAULT).unwrap()],
        created_at: T0,
        updated_at: T0,
    }
}

fn api_key(org: &OrgId, hash: &str) -> ApiKey {
    ApiKey {
        id: ApiKeyId::generate(),
        org_id: org.clone(),
        name: "deploy bot".into(),
        prefix: "hk_live_ab".into(),
        key_hash: hash.into(),
        role: KeyRole::Manager,
        created_at: T0,
    }
}

fn event_type(org: &OrgId, name: &str) -> CustomEventType {
    CustomEventType {
        id: EventTypeId::generate(),
        org_id: org.clone(),
        name: name.into(),
        channel: Some("billing".into()),
        description: Some("An invoice was paid".into()),
        schema: Some(JsonText::of(
            &json!({"type": "object", "required": ["invoice"]}),
        )),
        example: Some(JsonText::of(&json!({"invoice": {"id": "in_1"}}))),
        created_at: T0,
    }
}

fn webhook(org: &OrgId) -> Webhook {
    Webhook {
        id: WebhookId::generate(),
        org_id: org.clone(),
        name: "Billing".into(),
        description: None,
        url: WebhookUrl::parse("https://example.com/hooks").unwrap(),
        events: vec!["*".into()],
        channels: vec![],
        profile: ProfileName::Standard,
        signature: None,
        options: WebhookOptions::default(),
        verification: Default::default(),
        secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
        previous_secret: None,
        previous_secret_expires_at: None,
        active: true,
        headers: BTreeMap::new(),
        timeout_ms: None,
        retry_schedule: None,
        rate_limit_per_second: None,
        created_at: T0,
        updated_at: T0,
        failing_since: None,
        disabled_reason: None,
    }
}

/// An event as a producer would post it, with every optional field set and data whose key order
/// and non-ASCII text must survive storage.
fn event(org: &OrgId, id: &str, event_type: &str, received_at: Timestamp) -> Arc<Event> {
    let raw = json!({
        "id": id,
        "type": event_type,
        "occurred_at": "2023-11-14T22:00:00.250Z",
        "correlation_id": "req-42",
        "data": {"zeta": 1, "invoice": {"id": "in_1", "amount": 4200, "note": "réglé ✓"}, "alpha": null},
    });
    Arc::new(
        NewEvent::parse(raw)
            .unwrap()
            .into_event(org.clone(), received_at),
    )
}

/// An event with its deliveries, leased at ingest or due at once.
fn item(event: Arc<Event>, deliveries: &[(&DeliveryId, &WebhookId)], leased: bool) -> IngestItem {
    let placement = if leased {
        Placement::Leased
    } else {
        Placement::Due
    };
    placed_item(event, deliveries, placement)
}

fn placed_item(
    event: Arc<Event>,
    deliveries: &[(&DeliveryId, &WebhookId)],
    placement: Placement,
) -> IngestItem {
    IngestItem {
        event,
        deliveries: deliveries
            .iter()
            .map(|(id, webhook_id)| NewDelivery {
                id: (*id).clone(),
                webhook_id: (*webhook_id).clone(),
                placement,
                skip: None,
                not_before: None,
            })
            .collect(),
    }
}

/// Stores `n` events of one delivery each to `hook` at `T0`, placed as `placement` (leased
/// until `LEASE_SECS`); returns the deliveries' ids, in order.
async fn store_placed(
    store: &Arc<dyn Store>,
    hook: &Webhook,
    n: usize,
    placement: Placement,
) -> Vec<DeliveryId> {
    store_placed_at(store, hook, n, placement, T0).await
}

/// Like [`store_placed`], the events received at `received`.
async fn store_placed_at(
    store: &Arc<dyn Store>,
    hook: &Webhook,
    n: usize,
    placement: Placement,
    received: Timestamp,
) -> Vec<DeliveryId> {
    let ids: Vec<DeliveryId> = (0..n).map(|_| DeliveryId::generate()).collect();
    let items: Vec<IngestItem> = ids
        .iter()
        .map(|id| {
            let event = event(&hook.org_id, &format!("evt_{id}"), "user.created", received);
            placed_item(event, &[(id, &hook.id)], placement)
        })
        .collect();
    store
        .insert_events(&hook.org_id, &items, received, at(LEASE_SECS))
        .await
        .unwrap();
    ids
}

/// `ids` with the lease [`store_placed`] gives them, as a holder gives them back.
fn under_first_lease(ids: &[DeliveryId]) -> Vec<(DeliveryId, Timestamp)> {
    ids.iter().map(|id| (id.clone(), at(LEASE_SECS))).collect()
}

fn page(limit: u32, cursor: Option<String>) -> PageRequest {
    PageRequest::new(Some(limit), cursor).unwrap()
}

/// An organization with one active webhook, both stored.
async fn org_with_webhook(store: &Arc<dyn Store>, handle: &str) -> (Organization, Webhook) {
    let org = org(handle);
    store.create_org(&org).await.unwrap();
    let webhook = webhook(&org.id);
    store.create_webhook(&webhook).await.unwrap();
    (org, webhook)
}

/// Ingests one event of type `invoice.paid` with one delivery at `now`; returns the delivery id.
async fn deliver(
    store: &Arc<dyn Store>,
    webhook: &Webhook,
    event_id: &str,
    now: Timestamp,
    leased: bool,
) -> DeliveryId {
    deliver_as(
        store,
        webhook,
        DeliveryId::generate(),
        event_id,
        "invoice.paid",
        now,
        leased,
    )
    .await
}

async fn deliver_as(
    store: &Arc<dyn Store>,
    webhook: &Webhook,
    id: DeliveryId,
    event_id: &str,
    event_type: &str,
    now: Timestamp,
    leased: bool,
) -> DeliveryId {
    let event = event(&webhook.org_id, event_id, event_type, now);
    let items = [item(event, &[(&id, &webhook.id)], leased)];
    let results = store
        .insert_events(&webhook.org_id, &items, now, now.plus_secs(LEASE_SECS))
        .await
        .unwrap();
    assert_eq!(results, vec![IngestResult::Stored]);
    id
}

/// Claims everything due at `now`, leasing it for `LEASE_SECS`; returns the ids, sorted.
async fn claim(store: &Arc<dyn Store>, now: Timestamp) -> Vec<DeliveryId> {
    let due = store
        .claim_due(now, now.plus_secs(LEASE_SECS), 1000)
        .await
        .unwrap();
    let mut ids: Vec<DeliveryId> = due.into_iter().map(|d| d.delivery_id).collect();
    ids.sort();
    ids
}

fn attempt(
    id: AttemptId,
    delivery: &DeliveryId,
    number: u32,
    started_at: Timestamp,
    outcome: &AttemptOutcome,
) -> Attempt {
    Attempt {
        id,
        delivery_id: delivery.clone(),
        number,
        started_at,
        duration_ms: outcome.duration_ms,
        status: outcome.status,
        error: outcome.error.as_ref().map(|e| e.code().to_owned()),
        error_message: outcome.error.as_ref().map(AttemptError::message),
        response_body: outcome.response_body.clone(),
    }
}

fn server_error() -> AttemptOutcome {
    AttemptOutcome::failed(
        AttemptError::Status(500),
        Some(500),
        12,
        "oops".into(),
        None,
    )
}

/// Records a delivery's first attempt (started at `T0`) with its outcome and next step.
async fn record_first_attempt(
    store: &Arc<dyn Store>,
    org: &OrgId,
    delivery: &DeliveryId,
    outcome: &AttemptOutcome,
    next: NextStep,
) {
    let record = first_attempt(org, delivery, outcome, next);
    store.record_attempt(&record).await.unwrap();
}

/// A delivery's first attempt at `T0`, as the dispatcher records it.
fn first_attempt(
    org: &OrgId,
    delivery: &DeliveryId,
    outcome: &AttemptOutcome,
    next: NextStep,
) -> AttemptRecord {
    AttemptRecord {
        org_id: org.clone(),
        attempt: attempt(AttemptId::generate(), delivery, 1, T0, outcome),
        next,
        lease_until: None,
    }
}

async fn state_of(store: &Arc<dyn Store>, org: &OrgId, delivery: &DeliveryId) -> DeliveryState {
    store.get_delivery(org, delivery).await.unwrap().0.state
}

#[track_caller]
fn assert_not_found<T: Debug>(result: StoreResult<T>) {
    assert!(
        matches!(result, Err(StoreError::NotFound)),
        "expected NotFound, got {result:?}"
    );
}

#[track_caller]
fn assert_conflict<T: Debug>(result: StoreResult<T>) {
    assert!(
        matches!(result, Err(StoreError::Conflict(_))),
        "expected Conflict, got {result:?}"
    );
}

#[track_caller]
fn assert_same_event(got: &Event, want: &Event) {
    assert_eq!(got.id, want.id);
    assert_eq!(got.org_id, want.org_id);
    assert_eq!(got.event_type, want.event_type);
    assert_eq!(got.occurred_at, want.occurred_at);
    assert_eq!(got.received_at, want.received_at);
    assert_eq!(got.correlation_id, want.correlation_id);
    assert_eq!(
        got.data.get(),
        want.data.get(),
        "the data text must be kept byte for byte"
    );
}

// ---------------------------------------------------------------------------------------------
// Organizations, API keys and event types
// ---------------------------------------------------------------------------------------------

async fn organizations_are_listed_newest_first_a_page_at_a_time(store: Arc<dyn Store>) {
    let ids = sorted_ids(3, OrgId::generate);
    let mut orgs = Vec::new();
    for (i, (id, handle)) in ids.iter().zip(["alpha", "beta", "gamma"]).enumerate() {
        let org = Organization {
            id: id.clone(),
            created_at: at(i as i64),
            updated_at: at(i as i64),
            ..org(handle)
        };
        store.create_org(&org).await.unwrap();
        orgs.push(org);
    }

    let first = store.list_orgs(&page(2, None)).await.unwrap();
    assert_eq!(first.data, vec![orgs[2].clone(), orgs[1].clone()]);
    let cursor = first
        .next_cursor
        .expect("a first page of 2 out of 3 has a next cursor");

    let second = store.list_orgs(&page(2, Some(cursor))).await.unwrap();
    assert_eq!(second.data, vec![orgs[0].clone()]);
    assert_eq!(second.next_cursor, None);

    assert_eq!(store.get_org(&orgs[1].id).await.unwrap(), orgs[1]);
}

async fn an_organization_can_be_updated_and_deleted(store: Arc<dyn Store>) {
    let acme = org("acme");
    store.create_org(&acme).await.unwrap();

    let renamed = Organization {
        name: "Acme Corporation".into(),
        handle: OrgHandle::parse("acme-corp").unwrap(),
        catalogs: vec![],
        updated_at: at(60),
        ..acme.clone()
    };
    store.update_org(&renamed).await.unwrap();
    assert_eq!(store.get_org(&acme.id).await.unwrap(), renamed);

    store.delete_org(&acme.id).await.unwrap();
    assert_not_found(store.get_org(&acme.id).await);
    assert!(
        store
            .list_orgs(&page(10, None))
            .await
            .unwrap()
            .data
            .is_empty()
    );
    assert_not_found(store.delete_org(&acme.id).await);
    assert_not_found(store.update_org(&renamed).await);
}

/// The directory's read of an organization is whole or nothing: read while the organization is
/// deleted, it is either as it was or not found, never found without its webhooks or types.
async fn an_organizations_config_is_read_from_one_snapshot(store: Arc<dyn Store>) {
    assert_not_found(store.org_config(&org("nobody").id).await);
    for round in 0..20 {
        let (acme, hook) = org_with_webhook(&store, &format!("acme-{round}")).await;
        let paid = event_type(&acme.id, "invoice.paid");
        store.create_event_type(&paid).await.unwrap();
        let config = store.org_config(&acme.id).await.unwrap();
        assert_eq!(config.organization, acme);
        assert_eq!(config.webhooks, vec![hook.clone()]);
        assert_eq!(config.types, vec![paid.clone()]);

        // Reads race the deletion until one finds the organization gone (bounded: the
        // deletion ends long before).
        let deletion = tokio::spawn({
            let (store, id) = (store.clone(), acme.id.clone());
            async move { store.delete_org(&id).await }
        });
        for _ in 0..2_000 {
            match store.org_config(&acme.id).await {
                Ok(config) => {
                    assert_eq!(config.webhooks, vec![hook.clone()], "round {round}");
                    assert_eq!(config.types, vec![paid.clone()], "round {round}");
                }
                Err(StoreError::NotFound) => break,
                Err(other) => panic!("round {round}: {other}"),
            }
            tokio::task::yield_now().await;
        }
        deletion.await.unwrap().unwrap();
        assert_not_found(store.org_config(&acme.id).await);
    }
}

async fn a_second_org_with_the_same_handle_is_a_conflict(store: Arc<dyn Store>) {
    let first = org("acme");
    store.create_org(&first).await.unwrap();

    assert_conflict(store.create_org(&org("acme")).await);
    let listed = store.list_orgs(&page(10, None)).await.unwrap();
    assert_eq!(listed.data, vec![first.clone()]);

    let other = org("globex");
    store.create_org(&other).await.unwrap();
    let taking_the_handle = Organization {
        handle: first.handle.clone(),
        ..other.clone()
    };
    assert_conflict(store.update_org(&taking_the_handle).await);
    assert_eq!(store.get_org(&other.id).await.unwrap(), other);
}

async fn an_api_key_is_found_by_its_hash_until_it_is_deleted(store: Arc<dyn Store>) {
    let acme = org("acme");
    let globex = org("globex");
    store.create_org(&acme).await.unwrap();
    store.create_org(&globex).await.unwrap();
    let key = api_key(&acme.id, "sha256:aaaa");
    store.create_api_key(&key).await.unwrap();

    assert_eq!(
        store.find_api_key("sha256:aaaa").await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(store.find_api_key("sha256:bbbb").await.unwrap(), None);
    // A producer's key keeps its role.
    let producer = ApiKey {
        role: KeyRole::Producer,
        ..api_key(&acme.id, "sha256:cccc")
    };
    store.create_api_key(&producer).await.unwrap();
    assert_eq!(
        store.find_api_key("sha256:cccc").await.unwrap(),
        Some(producer.clone())
    );
    store.delete_api_key(&acme.id, &producer.id).await.unwrap();
    assert_eq!(
        store.list_api_keys(&acme.id).await.unwrap(),
        vec![key.clone()]
    );
    assert!(store.list_api_keys(&globex.id).await.unwrap().is_empty());
    // Another organization cannot delete the key.
    assert_not_found(store.delete_api_key(&globex.id, &key.id).await);
    assert!(store.find_api_key("sha256:aaaa").await.unwrap().is_some());

    store.delete_api_key(&acme.id, &key.id).await.unwrap();
    assert_eq!(store.find_api_key("sha256:aaaa").await.unwrap(), None);
    assert!(store.list_api_keys(&acme.id).await.unwrap().is_empty());
    assert_not_found(store.delete_api_key(&acme.id, &key.id).await);
}

async fn event_type_names_are_unique_within_an_organization(store: Arc<dyn Store>) {
    let acme = org("acme");
    let globex = org("globex");
    store.create_org(&acme).await.unwrap();
    store.create_org(&globex).await.unwrap();

    let paid = event_type(&acme.id, "invoice.paid");
    let voided = CustomEventType {
        channel: None,
        description: None,
        schema: None,
        example: None,
        ..event_type(&acme.id, "invoice.voided")
    };
    store.create_event_type(&paid).await.unwrap();
    store.create_event_type(&voided).await.unwrap();
    let mut listed = store.list_event_types(&acme.id).await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(listed, vec![paid.clone(), voided.clone()]);

    assert_conflict(
        store
            .create_event_type(&event_type(&acme.id, "invoice.paid"))
            .await,
    );
    assert_eq!(store.list_event_types(&acme.id).await.unwrap().len(), 2);

    let theirs = event_type(&globex.id, "invoice.paid");
    store.create_event_type(&theirs).await.unwrap();
    assert_eq!(
        store.list_event_types(&globex.id).await.unwrap(),
        vec![theirs.clone()]
    );

    // Deleted by name, within its organization only; the name is free again.
    store
        .delete_event_type(&acme.id, "invoice.paid")
        .await
        .unwrap();
    assert_eq!(
        store.list_event_types(&acme.id).await.unwrap(),
        vec![voided]
    );
    assert_eq!(
        store.list_event_types(&globex.id).await.unwrap(),
        vec![theirs]
    );
    assert!(matches!(
        store.delete_event_type(&acme.id, "invoice.paid").await,
        Err(StoreError::NotFound)
    ));
    store.create_event_type(&paid).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Webhooks
// ---------------------------------------------------------------------------------------------

async fn a_webhook_is_seen_only_by_its_own_organization(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let globex = org("globex");
    store.create_org(&globex).await.unwrap();

    assert_eq!(store.get_webhook(&acme.id, &hook.id).await.unwrap(), hook);
    assert_eq!(
        store.org_webhooks(&acme.id).await.unwrap(),
        vec![hook.clone()]
    );
    let listed = store
        .list_webhooks(&acme.id, &page(10, None))
        .await
        .unwrap();
    assert_eq!(listed.data, vec![hook.clone()]);
    assert_eq!(listed.next_cursor, None);

    assert_not_found(store.get_webhook(&globex.id, &hook.id).await);
    assert!(store.org_webhooks(&globex.id).await.unwrap().is_empty());
    let theirs = store
        .list_webhooks(&globex.id, &page(10, None))
        .await
        .unwrap();
    assert!(theirs.data.is_empty());
    // Nor can it overwrite the webhook by naming it.
    let hijack = Webhook {
        org_id: globex.id.clone(),
        url: WebhookUrl::parse("https://evil.example/steal").unwrap(),
        ..hook.clone()
    };
    assert_not_found(store.update_webhook(&hijack).await);
    assert_eq!(store.get_webhook(&acme.id, &hook.id).await.unwrap(), hook);
}

async fn webhooks_are_listed_newest_first_a_page_at_a_time(store: Arc<dyn Store>) {
    let acme = org("acme");
    store.create_org(&acme).await.unwrap();
    let mut hooks = Vec::new();
    for (i, id) in sorted_ids(3, WebhookId::generate).into_iter().enumerate() {
        let hook = Webhook {
            id,
            created_at: at(i as i64),
            ..webhook(&acme.id)
        };
        store.create_webhook(&hook).await.unwrap();
        hooks.push(hook);
    }

    let first = store.list_webhooks(&acme.id, &page(2, None)).await.unwrap();
    assert_eq!(first.data, vec![hooks[2].clone(), hooks[1].clone()]);
    let cursor = first.next_cursor.expect("more webhooks follow");
    let second = store
        .list_webhooks(&acme.id, &page(2, Some(cursor)))
        .await
        .unwrap();
    assert_eq!(second.data, vec![hooks[0].clone()]);
    assert_eq!(second.next_cursor, None);
}

async fn updating_a_webhook_saves_every_field(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let changed = Webhook {
        name: "Billing (EU)".into(),
        description: Some("Invoices for the EU entity".into()),
        url: WebhookUrl::parse("https://eu.example.com/hooks?v=2").unwrap(),
        profile: ProfileName::CloudEvents,
        signature: Some(SignatureScheme::Hub),
        options: WebhookOptions {
            content_mode: Some(ContentMode::Binary),
            batch_window_ms: Some(250),
        },
        events: vec!["invoice.paid".into(), "invoice.voided".into()],
        channels: vec!["billing".into()],
        secret: "whsec_bmV3IHNlY3JldCBmb3IgdGhlIHdlYmhvb2s=".into(),
        previous_secret: Some(hook.secret.clone()),
        previous_secret_expires_at: Some(at(86_400)),
        headers: BTreeMap::from([
            ("x-team".to_owned(), "identity".to_owned()),
            ("authorization".to_owned(), "Bearer t0k3n".to_owned()),
        ]),
        timeout_ms: Some(2500),
        retry_schedule: Some(RetrySchedule::parse(vec![0, 5, 3600]).unwrap()),
        updated_at: at(60),
        ..hook.clone()
    };
    store.update_webhook(&changed).await.unwrap();
    assert_eq!(
        store.get_webhook(&acme.id, &hook.id).await.unwrap(),
        changed
    );
    assert_eq!(
        store.org_webhooks(&acme.id).await.unwrap(),
        vec![changed.clone()]
    );

    // And back: optional fields can be cleared again.
    let cleared = Webhook {
        updated_at: at(120),
        ..hook.clone()
    };
    store.update_webhook(&cleared).await.unwrap();
    assert_eq!(
        store.get_webhook(&acme.id, &hook.id).await.unwrap(),
        cleared
    );
}

async fn deleting_webhooks_returns_only_what_it_deleted(store: Arc<dyn Store>) {
    let (acme, doomed) = org_with_webhook(&store, "acme").await;
    let kept = webhook(&acme.id);
    store.create_webhook(&kept).await.unwrap();
    let (globex, theirs) = org_with_webhook(&store, "globex").await;
    let pending = deliver(&store, &doomed, "evt_1", T0, false).await;
    let kept_delivery = deliver(&store, &kept, "evt_2", T0, false).await;

    let deleted = store
        .delete_webhooks(
            &acme.id,
            &[
                doomed.id.clone(),
                theirs.id.clone(),
                WebhookId::generate(),
                doomed.id.clone(),
            ],
            at(10),
            None,
        )
        .await
        .unwrap();
    assert_eq!(deleted, vec![doomed.id.clone()]);

    assert_not_found(store.get_webhook(&acme.id, &doomed.id).await);
    assert_eq!(
        store.org_webhooks(&acme.id).await.unwrap(),
        vec![kept.clone()]
    );
    let listed = store
        .list_webhooks(&acme.id, &page(10, None))
        .await
        .unwrap();
    assert_eq!(listed.data, vec![kept.clone()]);
    assert_eq!(
        store.get_webhook(&globex.id, &theirs.id).await.unwrap(),
        theirs
    );

    // Its pending delivery is cancelled and never attempted; the other webhook's is untouched.
    assert_eq!(
        state_of(&store, &acme.id, &pending).await,
        DeliveryState::Cancelled
    );
    assert_eq!(claim(&store, FAR_FUTURE).await, vec![kept_delivery.clone()]);

    // Deleting it again deletes nothing, and it cannot be brought back by an update.
    let again = store
        .delete_webhooks(&acme.id, std::slice::from_ref(&doomed.id), at(20), None)
        .await
        .unwrap();
    assert!(again.is_empty());
    assert_not_found(store.update_webhook(&doomed).await);
    // Even after the lease of the other webhook's delivery ran out, the cancelled one stays put.
    assert_eq!(
        claim(&store, FAR_FUTURE.plus_secs(LEASE_SECS)).await,
        vec![kept_delivery]
    );

    // Its history stays readable.
    let history = store
        .list_deliveries(
            &acme.id,
            &doomed.id,
            &DeliveryFilter::default(),
            &page(10, None),
        )
        .await
        .unwrap();
    let states: Vec<_> = history
        .data
        .iter()
        .map(|d| (d.id.clone(), d.state))
        .collect();
    assert_eq!(states, vec![(pending, DeliveryState::Cancelled)]);
}

// ---------------------------------------------------------------------------------------------
// Ingest
// ---------------------------------------------------------------------------------------------

/// A deletion made on a version the webhook no longer has (`If-Match`) deletes nothing; made on
/// the version it has, it deletes.
async fn a_webhook_changed_since_the_version_named_is_not_deleted(store: Arc<dyn Store>) {
    let (acme, mut hook) = org_with_webhook(&store, "acme").await;
    let read = hook.updated_at;
    hook.name = "Renamed".into();
    hook.updated_at = at(5);
    store.save_webhook_change(&hook, read).await.unwrap();
    let one = std::slice::from_ref(&hook.id);
    let kept = store
        .delete_webhooks(&acme.id, one, at(10), Some(read))
        .await
        .unwrap();
    assert!(kept.is_empty(), "deleted on an old version: {kept:?}");
    assert_eq!(store.get_webhook(&acme.id, &hook.id).await.unwrap(), hook);
    let deleted = store
        .delete_webhooks(&acme.id, one, at(11), Some(at(5)))
        .await
        .unwrap();
    assert_eq!(deleted, one.to_vec());
    assert_not_found(store.get_webhook(&acme.id, &hook.id).await);
}

async fn an_event_id_is_stored_once_per_organization(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let (globex, their_hook) = org_with_webhook(&store, "globex").await;
    let first = deliver(&store, &hook, "evt_order_1", T0, false).await;

    assert_eq!(
        store.get_delivery(&acme.id, &first).await.unwrap(),
        (
            Delivery {
                id: first.clone(),
                org_id: acme.id.clone(),
                webhook_id: hook.id.clone(),
                event_id: "evt_order_1".into(),
                event_type: "invoice.paid".into(),
                state: DeliveryState::Pending,
                attempt_count: 0,
                next_attempt_at: Some(T0),
                last_status: None,
                last_error: None,
                created_at: T0,
                updated_at: T0,
            },
            vec![]
        )
    );

    // The same id again, even with other content, is a duplicate and stores nothing.
    let repeat_delivery = DeliveryId::generate();
    let repeat = event(&acme.id, "evt_order_1", "invoice.voided", at(5));
    let results = store
        .insert_events(
            &acme.id,
            &[item(repeat, &[(&repeat_delivery, &hook.id)], false)],
            at(5),
            at(5 + LEASE_SECS),
        )
        .await
        .unwrap();
    assert_eq!(results, vec![IngestResult::Duplicate]);
    assert_not_found(store.get_delivery(&acme.id, &repeat_delivery).await);
    let stored = store.get_event(&acme.id, "evt_order_1").await.unwrap();
    assert_same_event(&stored, &event(&acme.id, "evt_order_1", "invoice.paid", T0));
    let history = store
        .list_deliveries(
            &acme.id,
            &hook.id,
            &DeliveryFilter::default(),
            &page(10, None),
        )
        .await
        .unwrap();
    assert_eq!(history.data.len(), 1);

    // Another organization has its own ids.
    let theirs = deliver(&store, &their_hook, "evt_order_1", at(6), false).await;
    assert_eq!(
        state_of(&store, &globex.id, &theirs).await,
        DeliveryState::Pending
    );
    assert_eq!(
        store
            .get_event(&globex.id, "evt_order_1")
            .await
            .unwrap()
            .received_at,
        at(6)
    );
    // Read back several at once: only the organization's own, only those kept.
    let ids = ["evt_order_1", "evt_missing"].map(String::from);
    let mine = store.get_events(&acme.id, &ids).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_same_event(&mine[0], &stored);
    let theirs = store.get_events(&globex.id, &ids).await.unwrap();
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].received_at, at(6));
    assert!(store.get_events(&globex.id, &[]).await.unwrap().is_empty());
}

async fn an_events_deliveries_are_found_by_its_id(store: Arc<dyn Store>) {
    let (acme, crm) = org_with_webhook(&store, "acme").await;
    let billing = webhook(&acme.id);
    store.create_webhook(&billing).await.unwrap();
    let (globex, theirs) = org_with_webhook(&store, "globex").await;
    // One event to two webhooks; another event; the same id in another organization.
    let (to_crm, to_billing) = (DeliveryId::generate(), DeliveryId::generate());
    let paid = event(&acme.id, "evt_paid", "invoice.paid", T0);
    store
        .insert_events(
            &acme.id,
            &[item(
                paid,
                &[(&to_crm, &crm.id), (&to_billing, &billing.id)],
                false,
            )],
            T0,
            at(LEASE_SECS),
        )
        .await
        .unwrap();
    deliver(&store, &crm, "evt_other", at(1), false).await;
    let foreign = deliver(&store, &theirs, "evt_paid", at(2), false).await;

    let (found, deliveries) = store
        .event_deliveries(&acme.id, "evt_paid", 10)
        .await
        .unwrap();
    assert_same_event(&found, &event(&acme.id, "evt_paid", "invoice.paid", T0));
    let mut expected = vec![to_crm.clone(), to_billing.clone()];
    expected.sort();
    let ids: Vec<DeliveryId> = deliveries.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids, expected, "oldest first, and only this event's");
    assert!(deliveries.iter().all(|d| d.event_id == "evt_paid"));

    // At most as many as asked for, the oldest.
    let (_, first) = store
        .event_deliveries(&acme.id, "evt_paid", 1)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|d| &d.id).collect::<Vec<_>>(),
        vec![&expected[0]]
    );
    let (_, theirs_found) = store
        .event_deliveries(&globex.id, "evt_paid", 10)
        .await
        .unwrap();
    assert_eq!(
        theirs_found.iter().map(|d| &d.id).collect::<Vec<_>>(),
        vec![&foreign]
    );
    assert_not_found(store.event_deliveries(&acme.id, "evt_unknown", 10).await);
    assert_not_found(
        store
            .event_deliveries(&OrgId::generate(), "evt_paid", 10)
            .await,
    );
}

/// An organization's events, newest first, read one page of one event at a time.
async fn walk_events(store: &Arc<dyn Store>, org: &OrgId) -> Vec<String> {
    let (mut walked, mut cursor) = (Vec::new(), None);
    loop {
        let one = store
            .list_events(org, &EventFilter::default(), &page(1, cursor))
            .await
            .unwrap();
        walked.extend(one.data.into_iter().map(|e| e.id));
        cursor = one.next_cursor;
        if cursor.is_none() {
            return walked;
        }
    }
}

async fn an_organizations_events_are_listed_newest_first(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let (globex, theirs) = org_with_webhook(&store, "globex").await;
    // Stored one after another, some in one batch, another organization's in between.
    for (i, id) in ["evt_a", "evt_b"].into_iter().enumerate() {
        deliver(&store, &hook, id, at(i as i64), false).await;
    }
    deliver(&store, &theirs, "evt_theirs", at(2), false).await;
    let voided = event(&acme.id, "evt_c", "invoice.voided", at(3));
    let d = event(&acme.id, "evt_d", "invoice.paid", at(3));
    store
        .insert_events(
            &acme.id,
            &[item(voided, &[], false), item(d, &[], false)],
            at(3),
            at(3 + LEASE_SECS),
        )
        .await
        .unwrap();

    let any = EventFilter::default();
    let of_type = |t: &str| EventFilter {
        event_type: Some(t.into()),
        since: None,
    };
    let ids = |page: &herald_core::Page<herald_core::event::EventSummary>| -> Vec<String> {
        page.data.iter().map(|e| e.id.clone()).collect()
    };
    let first = store
        .list_events(&acme.id, &any, &page(3, None))
        .await
        .unwrap();
    assert_eq!(
        ids(&first),
        ["evt_d", "evt_c", "evt_b"],
        "newest first, acme's only"
    );
    assert_eq!(first.data[1].event_type, "invoice.voided");
    assert_eq!(first.data[1].received_at, at(3));
    let rest = store
        .list_events(&acme.id, &any, &page(3, first.next_cursor.clone()))
        .await
        .unwrap();
    assert_eq!(
        (ids(&rest), rest.next_cursor),
        (vec!["evt_a".to_owned()], None)
    );
    // Of one type; and a page that ends exactly at the last one says there is no more.
    let paid = store
        .list_events(&acme.id, &of_type("invoice.paid"), &page(3, None))
        .await
        .unwrap();
    assert_eq!(
        (ids(&paid), paid.next_cursor),
        (vec!["evt_d".into(), "evt_b".into(), "evt_a".into()], None)
    );
    let voided = store
        .list_events(&acme.id, &of_type("invoice.voided"), &page(1, None))
        .await
        .unwrap();
    assert_eq!(ids(&voided), ["evt_c"]);
    // A page at a time, through the two events of one millisecond.
    let walked = walk_events(&store, &acme.id).await;
    assert_eq!(walked, ["evt_d", "evt_c", "evt_b", "evt_a"]);
    // Ids of one millisecond that differ in case and punctuation come in byte order, the same
    // on both backends, a page at a time.
    let initech = org("initech");
    store.create_org(&initech).await.unwrap();
    let odd: Vec<_> = ["B", "a", "_", "~"]
        .into_iter()
        .map(|id| item(event(&initech.id, id, "invoice.paid", at(5)), &[], false))
        .collect();
    store
        .insert_events(&initech.id, &odd, at(5), at(5 + LEASE_SECS))
        .await
        .unwrap();
    let walked = walk_events(&store, &initech.id).await;
    assert_eq!(walked, ["~", "a", "_", "B"]);
    let theirs = store
        .list_events(&globex.id, &any, &page(10, None))
        .await
        .unwrap();
    assert_eq!(ids(&theirs), ["evt_theirs"]);
    // Received at a time or later (`at(1)` keeps evt_b, not evt_a), with the type too.
    let since = |t, kind: Option<&str>| EventFilter {
        event_type: kind.map(str::to_owned),
        since: Some(t),
    };
    let recent = store
        .list_events(&acme.id, &since(at(1), None), &page(10, None))
        .await
        .unwrap();
    assert_eq!(ids(&recent), ["evt_d", "evt_c", "evt_b"]);
    let recent_paid = store
        .list_events(
            &acme.id,
            &since(at(1), Some("invoice.paid")),
            &page(1, None),
        )
        .await
        .unwrap();
    let rest = store
        .list_events(
            &acme.id,
            &since(at(1), Some("invoice.paid")),
            &page(1, recent_paid.next_cursor.clone()),
        )
        .await
        .unwrap();
    assert_eq!(
        (ids(&recent_paid), ids(&rest), rest.next_cursor),
        (vec!["evt_d".into()], vec!["evt_b".into()], None)
    );
    let none = store
        .list_events(&OrgId::generate(), &any, &page(10, None))
        .await
        .unwrap();
    assert!(none.data.is_empty() && none.next_cursor.is_none());
}

async fn a_repeated_id_within_one_batch_is_a_duplicate(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let (d1, d2) = (DeliveryId::generate(), DeliveryId::generate());
    let results = store
        .insert_events(
            &acme.id,
            &[
                item(
                    event(&acme.id, "evt_1", "invoice.paid", T0),
                    &[(&d1, &hook.id)],
                    false,
                ),
                item(
                    event(&acme.id, "evt_1", "invoice.paid", T0),
                    &[(&d2, &hook.id)],
                    false,
                ),
            ],
            T0,
            at(LEASE_SECS),
        )
        .await
        .unwrap();
    assert_eq!(results, vec![IngestResult::Stored, IngestResult::Duplicate]);
    assert!(store.get_delivery(&acme.id, &d1).await.is_ok());
    assert_not_found(store.get_delivery(&acme.id, &d2).await);
}

async fn a_batch_is_stored_all_or_nothing(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let existing = deliver(&store, &hook, "evt_0", T0, false).await;

    let fresh = DeliveryId::generate();
    let batch = [
        item(
            event(&acme.id, "evt_1", "invoice.paid", at(1)),
            &[(&fresh, &hook.id)],
            false,
        ),
        // A delivery id that is already taken: the whole batch must fail.
        item(
            event(&acme.id, "evt_2", "invoice.paid", at(1)),
            &[(&existing, &hook.id)],
            false,
        ),
    ];
    let result = store
        .insert_events(&acme.id, &batch, at(1), at(1 + LEASE_SECS))
        .await;
    assert!(
        result.is_err(),
        "a clashing delivery id must fail the batch, got {result:?}"
    );

    assert_not_found(store.get_event(&acme.id, "evt_1").await);
    assert_not_found(store.get_event(&acme.id, "evt_2").await);
    assert_not_found(store.get_delivery(&acme.id, &fresh).await);
    assert_eq!(claim(&store, FAR_FUTURE).await, vec![existing]);

    // The failure did not poison the store: the first event can be sent again and is new.
    deliver(&store, &hook, "evt_1", at(2), false).await;
    assert!(store.get_event(&acme.id, "evt_1").await.is_ok());
}

// ---------------------------------------------------------------------------------------------
// Claiming due work
// ---------------------------------------------------------------------------------------------

async fn an_unleased_delivery_is_claimed_once(store: Arc<dyn Store>) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let delivery = deliver(&store, &hook, "evt_1", T0, false).await;

    assert_eq!(claim(&store, T0).await, vec![delivery.clone()]);
    // Leased now: not again at the same time, nor before the lease ends.
    assert!(claim(&store, T0).await.is_empty());
    assert!(
        claim(&store, at(LEASE_SECS).plus_millis(-1))
            .await
            .is_empty()
    );
    // A lease that ran out (its dispatcher died) is claimed again.
    assert_eq!(claim(&store, at(LEASE_SECS)).await, vec![delivery]);
}

async fn a_delivery_leased_at_ingest_waits_for_its_lease_to_end(store: Arc<dyn Store>) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let delivery = deliver(&store, &hook, "evt_1", T0, true).await;

    assert!(claim(&store, T0).await.is_empty());
    assert!(
        claim(&store, at(LEASE_SECS).plus_millis(-1))
            .await
            .is_empty()
    );
    assert_eq!(
        claim(&store, at(LEASE_SECS).plus_millis(1)).await,
        vec![delivery]
    );
}

/// Deliveries spilled for lack of memory wait for their webhook to pull them, in id order; no
/// scheduler takes them before a lease taken then would have ended.
async fn spilled_deliveries_are_pulled_by_their_webhook_in_id_order(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let other = webhook(&org.id);
    store.create_webhook(&other).await.unwrap();
    let ids = store_placed(&store, &hook, 3, Placement::Spilled).await;
    let theirs = store_placed(&store, &other, 1, Placement::Spilled).await;

    assert!(
        claim(&store, at(1)).await.is_empty(),
        "no scheduler takes them"
    );
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(LEASE_SECS)));
    let pull = |from: DeliveryId, limit: u32| {
        let (store, hook) = (store.clone(), hook.id.clone());
        async move {
            let pulled = store
                .claim_spilled(&hook, &from, at(1), at(1 + LEASE_SECS), limit)
                .await
                .unwrap();
            pulled
                .into_iter()
                .map(|d| d.delivery_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(pull(ids[0].clone(), 2).await, ids[..2].to_vec());
    assert_eq!(
        pull(ids[0].clone(), 5).await,
        ids[2..].to_vec(),
        "leased now: the first two are passed over"
    );
    assert!(pull(ids[0].clone(), 5).await.is_empty());

    // Given back by a dispatcher short of memory: its webhook may pull it again, nobody else
    // may take it before its lease would have ended. A lease that is not the one given (it
    // ended, and another node took the delivery) is left alone.
    store
        .spill_deliveries(&[
            (ids[1].clone(), at(1 + LEASE_SECS)),
            (ids[0].clone(), at(LEASE_SECS)),
        ])
        .await
        .unwrap();
    assert!(claim(&store, at(2)).await.is_empty());
    assert_eq!(
        pull(ids[2].clone(), 5).await,
        Vec::<DeliveryId>::new(),
        "from a later id"
    );
    assert_eq!(
        pull(ids[0].clone(), 5).await,
        ids[1..2].to_vec(),
        "only the one given back"
    );

    // The other webhook's spilled delivery is its own, and due to anyone once a lease would
    // have ended (its dispatcher may have stopped before pulling it).
    assert_eq!(claim(&store, at(LEASE_SECS)).await, theirs);
}

async fn deliveries_deferred_during_a_probe_are_moved_when_it_ends(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let other = webhook(&org.id);
    store.create_webhook(&other).await.unwrap();
    let ids = store_placed(&store, &hook, 4, Placement::Leased).await;
    let theirs = store_placed(&store, &other, 1, Placement::Leased).await;
    // While the probe was out, two were put off to its end (40 s); one to a later cool-down;
    // another webhook's to the same time. The last waits for another probe (100 s).
    let org = &org.id;
    store
        .defer_deliveries(org, &under_first_lease(&ids[..2]), at(40))
        .await
        .unwrap();
    store
        .defer_deliveries(org, &under_first_lease(&ids[2..3]), at(90))
        .await
        .unwrap();
    store
        .defer_deliveries(org, &under_first_lease(&theirs), at(40))
        .await
        .unwrap();
    store
        .defer_deliveries(org, &under_first_lease(&ids[3..]), at(100))
        .await
        .unwrap();

    // The probe succeeded at 5 s. Claims here lease past the end of the story.
    let woken = store.move_deferred(&hook.id, at(40), at(5)).await.unwrap();
    assert_eq!(woken, 2);
    let claim = async |now: Timestamp| {
        let due = store.claim_due(now, at(500), 10).await.unwrap();
        let mut ids: Vec<DeliveryId> = due.into_iter().map(|d| d.delivery_id).collect();
        ids.sort();
        ids
    };
    let mut first_two = ids[..2].to_vec();
    first_two.sort();
    assert_eq!(claim(at(5)).await, first_two);
    assert_eq!(claim(at(39)).await, Vec::<DeliveryId>::new());
    assert_eq!(claim(at(40)).await, theirs, "another webhook's wait");
    assert_eq!(claim(at(90)).await, ids[2..3].to_vec(), "a later cool-down");
    assert_eq!(
        store.move_deferred(&hook.id, at(40), at(6)).await.unwrap(),
        0,
        "leased ones are not touched"
    );

    // That probe failed at 95 s: its deliveries go to the next cool-down's end at once.
    let moved = store
        .move_deferred(&hook.id, at(100), at(160))
        .await
        .unwrap();
    assert_eq!(moved, 1);
    assert_eq!(claim(at(159)).await, Vec::<DeliveryId>::new());
    assert_eq!(claim(at(160)).await, ids[3..].to_vec());
}

/// More than two steps of the SQLite store's changes to many deliveries (1,000 each).
const BACKLOG: usize = 2_500;

/// Claims up to 10,000 deliveries due at `now`; returns their ids, sorted.
async fn claim_many(store: &Arc<dyn Store>, now: Timestamp) -> Vec<DeliveryId> {
    let due = store.claim_due(now, at(500), 10_000).await.unwrap();
    let mut ids: Vec<DeliveryId> = due.into_iter().map(|d| d.delivery_id).collect();
    ids.sort();
    ids
}

async fn pausing_resuming_and_deleting_reach_every_delivery_of_a_backlog(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let other = webhook(&org.id);
    store.create_webhook(&other).await.unwrap();
    let mut ids = store_placed(&store, &hook, BACKLOG, Placement::Due).await;
    ids.sort();
    // Another webhook's, leased until LEASE_SECS: whatever is due before then is the backlog's.
    let theirs = store_placed(&store, &other, 3, Placement::Leased).await;
    let paused = Webhook {
        active: false,
        updated_at: at(1),
        ..hook.clone()
    };
    let resumed = Webhook {
        active: true,
        updated_at: at(2),
        ..hook.clone()
    };

    store.update_webhook(&paused).await.unwrap();
    assert_eq!(
        store.next_due_at().await.unwrap(),
        Some(at(LEASE_SECS)),
        "every delivery of the paused webhook is parked"
    );
    store.update_webhook(&resumed).await.unwrap();
    assert_eq!(store.next_due_at().await.unwrap(), Some(T0));
    assert_eq!(claim_many(&store, at(1)).await, ids, "every one is back");

    // Now leased; more come and are parked by the next pause, which leaves leased ones alone.
    let mut parked = store_placed(&store, &hook, BACKLOG / 2, Placement::Due).await;
    parked.sort();
    store.update_webhook(&paused).await.unwrap();
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(LEASE_SECS)));
    // The backlog's count says which wait parked, for /metrics.
    let mut pending = store.pending_by_webhook().await.unwrap();
    pending.sort_by_key(|p| p.webhook_id == hook.id);
    assert_eq!(
        pending
            .iter()
            .map(|p| (&p.webhook_id, &p.org_id, p.active))
            .collect::<Vec<_>>(),
        vec![
            (&other.id, &other.org_id, true),
            (&hook.id, &hook.org_id, false)
        ],
        "{pending:?}"
    );

    // Deleting cancels the parked and the leased alike, and nothing of the other webhook.
    let deleted = store
        .delete_webhooks(&org.id, std::slice::from_ref(&hook.id), at(3), None)
        .await
        .unwrap();
    assert_eq!(deleted, vec![hook.id.clone()]);
    let pending = store.pending_by_webhook().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!((&pending[0].webhook_id, pending[0].count), (&other.id, 3));
    for d in [
        &ids[0],
        &ids[BACKLOG - 1],
        &parked[0],
        &parked[BACKLOG / 2 - 1],
    ] {
        assert_eq!(state_of(&store, &org.id, d).await, DeliveryState::Cancelled);
    }
    assert_eq!(claim_many(&store, at(LEASE_SECS)).await.len(), theirs.len());
}

async fn a_probes_answer_moves_every_delivery_of_a_backlog(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let mut ids = store_placed(&store, &hook, BACKLOG, Placement::Leased).await;
    ids.sort();
    store
        .defer_deliveries(&org.id, &under_first_lease(&ids), at(40))
        .await
        .unwrap();
    let moved = store.move_deferred(&hook.id, at(40), at(5)).await.unwrap();
    assert_eq!(moved, BACKLOG as u64);
    assert_eq!(claim_many(&store, at(5)).await, ids);
}

/// A purge racing a recovery (and resends) keeps each event whole: purged with all its
/// deliveries and attempts, or kept with all of them. On PostgreSQL a purge chose its events
/// in one statement and deleted their finished deliveries in others, and an event recovered in
/// between was kept with its recovered delivery alone (a probe). The purge goes on to its end
/// meanwhile (it does not read again and again what a recovery holds).
async fn a_purge_racing_a_recovery_keeps_each_event_whole(store: Arc<dyn Store>) {
    const EVENTS: usize = 200;
    for round in 0..6 {
        let (org, failing) = org_with_webhook(&store, &format!("acme-{round}")).await;
        let healthy = webhook(&org.id);
        store.create_webhook(&healthy).await.unwrap();
        let pairs: Vec<(DeliveryId, DeliveryId)> = (0..EVENTS)
            .map(|_| (DeliveryId::generate(), DeliveryId::generate()))
            .collect();
        let items: Vec<IngestItem> = pairs
            .iter()
            .enumerate()
            .map(|(i, (to_failing, to_healthy))| {
                let event = event(&org.id, &format!("evt_{i}"), "user.created", T0);
                placed_item(
                    event,
                    &[(to_failing, &failing.id), (to_healthy, &healthy.id)],
                    Placement::Leased,
                )
            })
            .collect();
        store
            .insert_events(&org.id, &items, T0, at(LEASE_SECS))
            .await
            .unwrap();
        let records: Vec<AttemptRecord> = pairs
            .iter()
            .flat_map(|(to_failing, to_healthy)| {
                let failed = (to_failing, server_error(), NextStep::Failed);
                let ok = AttemptOutcome::succeeded(200, 5, String::new());
                [failed, (to_healthy, ok, NextStep::Succeeded)]
            })
            .map(|(d, outcome, next)| first_attempt(&org.id, d, &outcome, next))
            .collect();
        store.record_attempts(&records).await.unwrap();

        // Alternate rounds purge one organization's history and every one's (the retention
        // task's walk); a few resends race too.
        let org_only = (round % 2 == 0).then(|| org.id.clone());
        let purge = tokio::spawn({
            let store = store.clone();
            async move {
                let (mut purged, mut from) = (0, None);
                loop {
                    let (count, next) = store
                        .purge_before(org_only.as_ref(), at(100), 50, from)
                        .await
                        .unwrap();
                    purged += count.events;
                    match next {
                        Some(next) => from = Some(next),
                        None => return purged,
                    }
                }
            }
        });
        let resends = tokio::spawn({
            let (store, org, ids) = (store.clone(), org.id.clone(), pairs.clone());
            async move {
                for (_, to_healthy) in ids.iter().rev().take(20) {
                    let _ = store
                        .resend_delivery(&org, to_healthy, at(200), at(200 + LEASE_SECS))
                        .await;
                }
            }
        });
        store
            .recover_failed(&org.id, &failing.id, T0, at(200), false)
            .await
            .unwrap();
        purge.await.unwrap();
        resends.await.unwrap();

        for (i, (to_failing, to_healthy)) in pairs.iter().enumerate() {
            let id = format!("evt_{i}");
            match store.event_deliveries(&org.id, &id, 10).await {
                Ok((_, deliveries)) => {
                    let mut kept: Vec<&DeliveryId> = deliveries.iter().map(|d| &d.id).collect();
                    kept.sort();
                    let mut both = vec![to_failing, to_healthy];
                    both.sort();
                    assert_eq!(kept, both, "round {round}: {id} kept without all it had");
                    for d in [to_failing, to_healthy] {
                        let (delivery, attempts) = store.get_delivery(&org.id, d).await.unwrap();
                        assert_eq!(
                            attempts.len() as u32,
                            delivery.attempt_count,
                            "round {round}: {id}'s {d} kept without its attempts"
                        );
                    }
                }
                Err(StoreError::NotFound) => {
                    for d in [to_failing, to_healthy] {
                        assert_not_found(store.get_delivery(&org.id, d).await);
                    }
                }
                Err(other) => panic!("round {round}: {other}"),
            }
        }
    }
}

async fn recovering_reaches_every_failed_delivery_of_a_long_history(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    // Every other delivery failed: more than one read of the webhook's history (5,000 a step).
    let ids = store_placed(&store, &hook, 6_000, Placement::Leased).await;
    let records: Vec<AttemptRecord> = ids
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (outcome, next) = if i % 2 == 0 {
                (server_error(), NextStep::Failed)
            } else {
                (
                    AttemptOutcome::succeeded(200, 5, String::new()),
                    NextStep::Succeeded,
                )
            };
            first_attempt(&org.id, d, &outcome, next)
        })
        .collect();
    store.record_attempts(&records).await.unwrap();

    let recovered = store
        .recover_failed(&org.id, &hook.id, T0, at(200), false)
        .await
        .unwrap();
    assert_eq!(recovered, 3_000);
    let mut failed: Vec<DeliveryId> = ids.iter().step_by(2).cloned().collect();
    failed.sort();
    assert_eq!(claim_many(&store, at(200)).await, failed);

    // Skipped ones (their WebSub channel was not verified) come back only when asked for
    // (before the leases the failed ones were just claimed with end, at 230 s).
    let skipped = store_placed(&store, &hook, 3, Placement::Leased).await;
    store
        .end_unsent(
            &org.id,
            &under_first_lease(&skipped),
            DeliveryState::Skipped,
            "not sent: the channel 'login' is not verified",
            at(205),
        )
        .await
        .unwrap();
    let without = store
        .recover_failed(&org.id, &hook.id, T0, at(220), false)
        .await
        .unwrap();
    assert_eq!(without, 0, "the failed ones are pending already");
    let with = store
        .recover_failed(&org.id, &hook.id, T0, at(220), true)
        .await
        .unwrap();
    assert_eq!(with, 3);
    let mut skipped = skipped;
    skipped.sort();
    assert_eq!(claim_many(&store, at(220)).await, skipped);
}

async fn a_deferral_reaches_only_its_own_organizations_deliveries(store: Arc<dyn Store>) {
    let (acme, _) = org_with_webhook(&store, "acme").await;
    let (_, theirs) = org_with_webhook(&store, "globex").await;
    let leased = store_placed(&store, &theirs, 1, Placement::Leased).await;
    // Acme names globex's delivery (a resend of an id it does not own, whose client went
    // away): globex's lease stands, so its dispatcher is not raced by a second send.
    let deferred = store
        .defer_deliveries(&acme.id, &under_first_lease(&leased), at(5))
        .await
        .unwrap();
    assert_eq!(deferred, 0, "counted as given back");
    assert!(
        claim(&store, at(5)).await.is_empty(),
        "another org's lease was given back"
    );
    let deferred = store
        .defer_deliveries(&theirs.org_id, &under_first_lease(&leased), at(5))
        .await
        .unwrap();
    assert_eq!(deferred, 1);
    // Given back already: that lease is no longer held, and nothing more is counted.
    let again = store
        .defer_deliveries(&theirs.org_id, &under_first_lease(&leased), at(5))
        .await
        .unwrap();
    assert_eq!(again, 0);
    assert_eq!(claim(&store, at(5)).await, leased);
}

async fn a_deferred_or_parked_delivery_is_not_pulled_early(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let ids = store_placed(&store, &hook, 2, Placement::Leased).await;
    // A circuit breaker put the first off for a minute; the second is spilled.
    store
        .defer_deliveries(&org.id, &under_first_lease(&ids[..1]), at(60))
        .await
        .unwrap();
    store
        .spill_deliveries(&[(ids[1].clone(), at(LEASE_SECS))])
        .await
        .unwrap();
    let pulled = store
        .claim_spilled(&hook.id, &ids[0], at(1), at(31), 10)
        .await
        .unwrap();
    assert_eq!(pulled.len(), 1);
    assert_eq!(pulled[0].delivery_id, ids[1]);

    // Given back after its webhook was deactivated: parked, so neither pulled nor due until
    // the webhook is activated, and due at once then.
    let inactive = Webhook {
        active: false,
        updated_at: at(2),
        ..hook.clone()
    };
    store.update_webhook(&inactive).await.unwrap();
    store
        .spill_deliveries(&[(ids[1].clone(), at(31))])
        .await
        .unwrap();
    let pulled = store
        .claim_spilled(&hook.id, &ids[0], at(3), at(33), 10)
        .await
        .unwrap();
    assert!(pulled.is_empty());
    let active = Webhook {
        active: true,
        updated_at: at(3),
        ..hook.clone()
    };
    store.update_webhook(&active).await.unwrap();
    assert_eq!(claim(&store, at(3)).await, vec![ids[1].clone()]);
}

async fn spilled_deliveries_stay_spilled_over_a_restart_and_are_found_again(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let ids = store_placed(&store, &hook, 2, Placement::Spilled).await;
    assert_eq!(store.release_all_leases().await.unwrap(), 0);
    assert!(claim(&store, at(1)).await.is_empty());
    assert_eq!(
        store.spilled_starts().await.unwrap(),
        vec![(hook.id.clone(), ids[0].clone())]
    );

    // One stored spilled just after its webhook was deactivated is nobody's to pull.
    let inactive = Webhook {
        active: false,
        updated_at: at(2),
        ..hook.clone()
    };
    store.update_webhook(&inactive).await.unwrap();
    let late = DeliveryId::generate();
    let item = placed_item(
        event(&org.id, "evt_late", "user.created", at(3)),
        &[(&late, &hook.id)],
        Placement::Spilled,
    );
    store
        .insert_events(&org.id, &[item], at(3), at(3 + LEASE_SECS))
        .await
        .unwrap();
    assert!(store.spilled_starts().await.unwrap().is_empty());
}

/// A spilled delivery's fallback time comes; while its node still pulls for the webhook, it
/// is put off again, and other work due after it is claimed first.
async fn spilled_deliveries_come_due_as_a_fallback_unless_put_off_again(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let other = webhook(&org.id);
    store.create_webhook(&other).await.unwrap();
    let spilled = DeliveryId::generate();
    let item = placed_item(
        event(&org.id, "evt_1", "user.created", T0),
        &[(&spilled, &hook.id)],
        Placement::Spilled,
    );
    store
        .insert_events(&org.id, &[item], T0, at(LEASE_SECS))
        .await
        .unwrap();
    let plain = deliver(&store, &hook, "evt_2", at(LEASE_SECS), false).await;
    let theirs = deliver(&store, &other, "evt_3", at(LEASE_SECS + 1), false).await;

    let now = at(LEASE_SECS + 2);
    assert_eq!(
        store.earliest_due_webhook(now).await.unwrap(),
        Some(hook.id.clone())
    );
    // Before the claim below's leases end.
    let later = now.plus_secs(LEASE_SECS / 2);
    assert_eq!(
        store
            .rearm_spilled(&hook.id, &plain, now, later, 10)
            .await
            .unwrap(),
        0,
        "before the node's cursor: not one it will pull, so left due for anyone"
    );
    assert_eq!(
        store
            .rearm_spilled(&hook.id, &spilled, now, later, 10)
            .await
            .unwrap(),
        1,
        "only the spilled one; a plain due delivery is left due"
    );
    assert_eq!(claim(&store, now).await, vec![plain, theirs]);
    assert!(claim(&store, later.plus_millis(-1)).await.is_empty());
    assert_eq!(claim(&store, later).await, vec![spilled]);
}

async fn the_earliest_due_delivery_names_its_webhook(store: Arc<dyn Store>) {
    let (org, first) = org_with_webhook(&store, "acme").await;
    let second = webhook(&org.id);
    store.create_webhook(&second).await.unwrap();
    assert_eq!(store.earliest_due_webhook(at(100)).await.unwrap(), None);
    deliver(&store, &second, "evt_1", at(5), false).await;
    deliver(&store, &first, "evt_2", at(9), false).await;
    assert_eq!(
        store.earliest_due_webhook(at(1)).await.unwrap(),
        None,
        "none due yet"
    );
    assert_eq!(
        store.earliest_due_webhook(at(10)).await.unwrap(),
        Some(second.id.clone())
    );
}

async fn a_delivery_put_off_by_its_schedule_comes_due_then(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let id = DeliveryId::generate();
    let mut put_off = item(
        event(&org.id, "evt_1", "user.created", T0),
        &[(&id, &hook.id)],
        false,
    );
    put_off.deliveries[0].not_before = Some(at(300));
    store
        .insert_events(&org.id, &[put_off], T0, at(60))
        .await
        .unwrap();
    assert!(claim(&store, at(299)).await.is_empty());
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(300)));
    assert_eq!(claim(&store, at(300)).await, vec![id]);
}

async fn a_delivery_is_not_claimed_before_it_is_due(store: Arc<dyn Store>) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let delivery = deliver(&store, &hook, "evt_1", at(10), false).await;

    assert!(claim(&store, at(9)).await.is_empty());
    assert_eq!(claim(&store, at(10)).await, vec![delivery]);
}

async fn deliveries_of_an_inactive_webhook_are_not_claimed(store: Arc<dyn Store>) {
    let (acme, active) = org_with_webhook(&store, "acme").await;
    let inactive = Webhook {
        active: false,
        ..webhook(&acme.id)
    };
    store.create_webhook(&inactive).await.unwrap();
    let wanted = deliver(&store, &active, "evt_1", T0, false).await;
    deliver(&store, &inactive, "evt_2", T0, false).await;

    assert_eq!(claim(&store, FAR_FUTURE).await, vec![wanted.clone()]);
    // Even once that lease has run out, only the active webhook's delivery comes back.
    assert_eq!(
        claim(&store, FAR_FUTURE.plus_secs(LEASE_SECS)).await,
        vec![wanted]
    );
}

async fn a_claimed_delivery_carries_its_event_as_inserted(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let delivery = DeliveryId::generate();
    let sent = event(&acme.id, "evt_rich", "user.created", T0);
    store
        .insert_events(
            &acme.id,
            &[item(sent.clone(), &[(&delivery, &hook.id)], false)],
            T0,
            at(LEASE_SECS),
        )
        .await
        .unwrap();

    let due: Vec<DueDelivery> = store.claim_due(T0, at(LEASE_SECS), 10).await.unwrap();
    assert_eq!(due.len(), 1);
    let due = &due[0];
    assert_eq!(due.delivery_id, delivery);
    assert_eq!(due.org_id, acme.id);
    assert_eq!(due.webhook_id, hook.id);
    assert_eq!(due.attempt_count, 0);
    assert_eq!(due.schedule_base, 0);
    assert_same_event(&due.event, &sent);
    assert_same_event(&store.get_event(&acme.id, "evt_rich").await.unwrap(), &sent);
}

async fn claim_due_takes_no_more_than_its_limit(store: Arc<dyn Store>) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    for i in 0..5 {
        deliver(&store, &hook, &format!("evt_{i}"), T0, false).await;
    }
    let first = store.claim_due(T0, at(LEASE_SECS), 3).await.unwrap();
    assert_eq!(first.len(), 3);
    let rest = store.claim_due(T0, at(LEASE_SECS), 3).await.unwrap();
    assert_eq!(rest.len(), 2);
    let all: BTreeSet<DeliveryId> = first
        .iter()
        .chain(&rest)
        .map(|d| d.delivery_id.clone())
        .collect();
    assert_eq!(all.len(), 5, "no delivery is claimed twice");
}

async fn next_due_at_is_the_earliest_due_time(store: Arc<dyn Store>) {
    assert_eq!(store.next_due_at().await.unwrap(), None);
    let (_, hook) = org_with_webhook(&store, "acme").await;

    deliver(&store, &hook, "evt_leased", T0, true).await;
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(LEASE_SECS)));
    deliver(&store, &hook, "evt_later", at(20), false).await;
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(20)));
    deliver(&store, &hook, "evt_sooner", at(10), false).await;
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(10)));

    // Once the two unleased ones are claimed until 100 s, the leased one comes first again.
    let claimed = store.claim_due(at(20), at(100), 10).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert_eq!(store.next_due_at().await.unwrap(), Some(at(LEASE_SECS)));
}

async fn next_due_at_ignores_deliveries_of_an_inactive_webhook(store: Arc<dyn Store>) {
    let (acme, _) = org_with_webhook(&store, "acme").await;
    // Ingest can race a deactivation: the event was routed while the webhook was still active.
    let inactive = Webhook {
        active: false,
        ..webhook(&acme.id)
    };
    store.create_webhook(&inactive).await.unwrap();
    deliver(&store, &inactive, "evt_1", T0, false).await;

    assert!(claim(&store, FAR_FUTURE).await.is_empty());
    assert_eq!(
        store.next_due_at().await.unwrap(),
        None,
        "what claim_due will not return must not be reported as due"
    );
}

// ---------------------------------------------------------------------------------------------
// Attempts
// ---------------------------------------------------------------------------------------------

async fn a_failed_attempt_schedules_the_next_one(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let delivery = deliver(&store, &hook, "evt_1", T0, false).await;
    assert_eq!(claim(&store, T0).await, vec![delivery.clone()]);

    let retry_at = at(60);
    record_first_attempt(
        &store,
        &acme.id,
        &delivery,
        &server_error(),
        NextStep::RetryAt(retry_at),
    )
    .await;

    let (d, attempts) = store.get_delivery(&acme.id, &delivery).await.unwrap();
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.attempt_count, 1);
    assert_eq!(d.next_attempt_at, Some(retry_at));
    assert_eq!(d.last_status, Some(500));
    assert_eq!(d.last_error.as_deref(), Some("http_status"));
    assert_eq!(attempts.len(), 1);

    // The lease (until 30 s) is gone, but the delivery waits for its retry time.
    assert!(claim(&store, at(LEASE_SECS)).await.is_empty());
    assert!(claim(&store, retry_at.plus_millis(-1)).await.is_empty());
    let due = store
        .claim_due(retry_at, retry_at.plus_secs(LEASE_SECS), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].delivery_id, delivery);
    assert_eq!(due[0].attempt_count, 1);
}

async fn success_and_final_failure_end_a_delivery(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let succeeded = deliver(&store, &hook, "evt_1", T0, false).await;
    let failed = deliver(&store, &hook, "evt_2", T0, false).await;
    assert_eq!(claim(&store, T0).await.len(), 2);

    let ok = AttemptOutcome::succeeded(204, 8, String::new());
    record_first_attempt(&store, &acme.id, &succeeded, &ok, NextStep::Succeeded).await;
    record_first_attempt(&store, &acme.id, &failed, &server_error(), NextStep::Failed).await;

    assert!(claim(&store, FAR_FUTURE).await.is_empty());
    assert_eq!(store.next_due_at().await.unwrap(), None);

    let (s, _) = store.get_delivery(&acme.id, &succeeded).await.unwrap();
    assert_eq!(s.state, DeliveryState::Succeeded);
    assert_eq!(s.next_attempt_at, None);
    assert_eq!(s.last_status, Some(204));
    assert_eq!(s.last_error, None);
    let (f, _) = store.get_delivery(&acme.id, &failed).await.unwrap();
    assert_eq!(f.state, DeliveryState::Failed);
    assert_eq!(f.next_attempt_at, None);
    assert_eq!(f.attempt_count, 1);
    assert_eq!(f.last_error.as_deref(), Some("http_status"));
}

/// What `/metrics` shows per webhook: only deliveries still pending count, and the oldest of them
/// says how far behind the webhook is.
async fn pending_deliveries_are_counted_per_webhook_with_the_oldest(store: Arc<dyn Store>) {
    let (acme, busy) = org_with_webhook(&store, "acme").await;
    let quiet = webhook(&acme.id);
    store.create_webhook(&quiet).await.unwrap();
    let done = deliver(&store, &busy, "evt_1", T0, false).await;
    deliver(&store, &busy, "evt_2", at(10), false).await;
    deliver(&store, &busy, "evt_3", at(20), true).await;
    let failed = deliver(&store, &quiet, "evt_4", at(1), false).await;
    deliver(&store, &quiet, "evt_5", at(5), false).await;
    assert_eq!(claim(&store, at(30)).await.len(), 4);
    let ok = AttemptOutcome::succeeded(204, 8, String::new());
    record_first_attempt(&store, &acme.id, &done, &ok, NextStep::Succeeded).await;
    record_first_attempt(&store, &acme.id, &failed, &server_error(), NextStep::Failed).await;

    let mut stats = store.pending_by_webhook().await.unwrap();
    stats.sort_by(|a, b| a.webhook_id.as_str().cmp(b.webhook_id.as_str()));
    let mut want = vec![(busy.id.clone(), 2, at(10)), (quiet.id.clone(), 1, at(5))];
    want.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let got: Vec<_> = stats
        .into_iter()
        .map(|s| (s.webhook_id, s.count, s.oldest))
        .collect();
    assert_eq!(
        got, want,
        "a leased delivery is still pending; finished ones are not"
    );
}

async fn a_purge_batch_starts_where_the_last_one_ended(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let older = deliver(&store, &hook, "evt_1", at(10), false).await;
    let newer = deliver(&store, &hook, "evt_2", at(20), false).await;
    assert_eq!(claim(&store, at(500)).await.len(), 2);
    let ok = AttemptOutcome::succeeded(200, 5, String::new());
    for d in [&older, &newer] {
        record_first_attempt(&store, &acme.id, d, &ok, NextStep::Succeeded).await;
    }
    let (count, next) = store
        .purge_before(None, at(100), 10, Some(PurgeFrom::at(at(20))))
        .await
        .unwrap();
    assert_eq!((count.events, next), (1, None), "nothing left to look at");
    assert!(
        store.get_event(&acme.id, "evt_1").await.is_ok(),
        "received before `from`: not looked at"
    );
    assert_not_found(store.get_event(&acme.id, "evt_2").await);
}

/// Purging one organization leaves every other's events alone and passes over its own kept
/// back by a pending delivery, however many share one millisecond, and so does the retention
/// task's purge of every organization. Both go in several steps that each look at a bounded
/// number of events (on SQLite each step holds the writer of every tenant), except one
/// organization's purge on PostgreSQL, which asks for its first victims by the organization's
/// key in one statement.
async fn a_purge_passes_over_a_large_history_it_may_not_remove(store: Arc<dyn Store>) {
    let (acme, mine) = org_with_webhook(&store, "acme").await;
    let (_, theirs) = org_with_webhook(&store, "globex").await;
    // All received at T0, another organization's first, then acme's own that are still pending.
    store_placed(&store, &theirs, BACKLOG, Placement::Leased).await;
    store_placed(&store, &mine, BACKLOG, Placement::Leased).await;
    let done = deliver(&store, &mine, "evt_done", T0, true).await;
    let ok = AttemptOutcome::succeeded(200, 5, String::new());
    record_first_attempt(&store, &acme.id, &done, &ok, NextStep::Succeeded).await;

    for (org, want) in [(Some(&acme.id), 1), (None, 0)] {
        let (purged, steps) = purge_in_steps(&store, org, at(100), 500).await;
        assert_eq!(purged.events, want, "for {org:?}");
        // PostgreSQL asks for one organization's victims in one statement.
        if org.is_none() || !store.is_shared() {
            assert!(steps > 1, "over {BACKLOG} events looked at in one step");
        }
    }
    assert_not_found(store.get_event(&acme.id, "evt_done").await);
    assert_eq!(
        pending_counts(&store).await,
        [BACKLOG as u64, BACKLOG as u64],
        "nothing pending went"
    );
}

/// Purges step after step until the store says nothing is left to look at; answers what went
/// and in how many steps.
async fn purge_in_steps(
    store: &Arc<dyn Store>,
    org: Option<&OrgId>,
    cutoff: Timestamp,
    limit: u32,
) -> (PurgeCount, u32) {
    let (mut purged, mut steps, mut from) = (PurgeCount::default(), 0, None);
    loop {
        steps += 1;
        assert!(steps <= 100, "the purge never finished");
        let (count, next) = store.purge_before(org, cutoff, limit, from).await.unwrap();
        purged += count;
        match next {
            Some(next) => from = Some(next),
            None => return (purged, steps),
        }
    }
}

/// How many deliveries each webhook has pending, smallest first.
async fn pending_counts(store: &Arc<dyn Store>) -> Vec<u64> {
    let mut counts: Vec<u64> = store
        .pending_by_webhook()
        .await
        .unwrap()
        .iter()
        .map(|p| p.count)
        .collect();
    counts.sort();
    counts
}

/// The retention task's purge of every organization walks the whole history in bounded steps,
/// across milliseconds of different sizes and with `limit` reached on the way, and removes
/// every finished event whatever is kept back around it.
async fn the_retention_purge_walks_the_whole_history_in_steps(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let ok = AttemptOutcome::succeeded(200, 5, String::new());
    for ms in 0..5 {
        // 700 events still pending and a finished one, all received in one millisecond.
        let received = T0.plus_millis(ms * 10);
        store_placed_at(&store, &hook, 700, Placement::Leased, received).await;
        let done = format!("evt_done_{ms}");
        let d = deliver(&store, &hook, &done, received, true).await;
        record_first_attempt(&store, &org.id, &d, &ok, NextStep::Succeeded).await;
    }

    let (purged, steps) = purge_in_steps(&store, None, at(100), 2).await;
    assert_eq!(purged.events, 5, "every finished event, in {steps} steps");
    assert!(steps > 2, "3,505 events looked at in {steps} steps");
    for ms in 0..5 {
        assert_not_found(store.get_event(&org.id, &format!("evt_done_{ms}")).await);
    }
    assert_eq!(
        pending_counts(&store).await,
        [3_500],
        "nothing pending went"
    );
}

/// The retention task's purge reaches every organization's finished history, whichever
/// organization a step ends in, and with one of them holding a backlog it may not remove.
async fn the_retention_purge_reaches_every_organization(store: Arc<dyn Store>) {
    let ok = AttemptOutcome::succeeded(200, 5, String::new());
    let mut finished = Vec::new();
    for (i, name) in ["acme", "globex", "initech"].into_iter().enumerate() {
        let (org, hook) = org_with_webhook(&store, name).await;
        if name == "globex" {
            store_placed(&store, &hook, BACKLOG, Placement::Leased).await;
        }
        for n in 0..2 {
            let id = format!("evt_{name}_{n}");
            let d = deliver(&store, &hook, &id, at(i as i64 + n), true).await;
            record_first_attempt(&store, &org.id, &d, &ok, NextStep::Succeeded).await;
            finished.push((org.id.clone(), id));
        }
    }
    for limit in [1, 500] {
        let (purged, steps) = purge_in_steps(&store, None, at(100), limit).await;
        if limit == 1 {
            assert_eq!(purged.events, 6, "in {steps} steps");
        } else {
            assert_eq!(purged.events, 0, "nothing left");
        }
    }
    for (org, id) in &finished {
        assert_not_found(store.get_event(org, id).await);
    }
    assert_eq!(pending_counts(&store).await, [BACKLOG as u64]);
}

/// A purge of every organization reaches all of them when there are more than one step may
/// move between (each move counts in the step's bound on SQLite).
async fn the_retention_purge_reaches_many_organizations(store: Arc<dyn Store>) {
    let mut orgs = Vec::new();
    for n in 0..150 {
        let org = org(&format!("org-{n}"));
        store.create_org(&org).await.unwrap();
        let old = event(&org.id, "evt_old", "invoice.paid", T0);
        store
            .insert_events(&org.id, &[item(old, &[], false)], T0, at(LEASE_SECS))
            .await
            .unwrap();
        orgs.push(org.id);
    }
    let (purged, steps) = purge_in_steps(&store, None, at(100), 500).await;
    assert_eq!(purged.events, 150, "in {steps} steps");
    for org in &orgs {
        assert_not_found(store.get_event(org, "evt_old").await);
    }
}

async fn a_delivery_stored_for_a_webhook_just_deleted_is_cancelled(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let deleted = store
        .delete_webhooks(&org.id, std::slice::from_ref(&hook.id), at(10), None)
        .await
        .unwrap();
    assert_eq!(deleted, vec![hook.id.clone()]);
    // An ingest that read the organization before the deletion stores its delivery after it.
    let late = deliver(&store, &hook, "evt_late", at(11), false).await;
    assert!(claim(&store, FAR_FUTURE).await.is_empty(), "never claimed");

    assert_eq!(
        store.cancel_orphaned(at(20), at(30)).await.unwrap(),
        0,
        "deleted before `since`"
    );
    assert_eq!(store.cancel_orphaned(at(5), at(30)).await.unwrap(), 1);
    assert_eq!(
        state_of(&store, &org.id, &late).await,
        DeliveryState::Cancelled
    );
}

async fn purging_removes_old_finished_history_and_keeps_pending_work(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let (globex, other) = org_with_webhook(&store, "globex").await;
    let done = deliver(&store, &hook, "evt_done", T0, false).await;
    let waiting = deliver(&store, &hook, "evt_waiting", T0, false).await;
    let recent = deliver(&store, &hook, "evt_recent", at(500), false).await;
    let elsewhere = deliver(&store, &other, "evt_other", T0, false).await;
    assert_eq!(claim(&store, at(500)).await.len(), 4);
    let ok = AttemptOutcome::succeeded(200, 5, String::new());
    for (org, d) in [
        (&acme.id, &done),
        (&acme.id, &recent),
        (&globex.id, &elsewhere),
    ] {
        record_first_attempt(&store, org, d, &ok, NextStep::Succeeded).await;
    }
    record_first_attempt(
        &store,
        &acme.id,
        &waiting,
        &server_error(),
        NextStep::RetryAt(at(900)),
    )
    .await;

    // One organization, before t=100: only its finished, old event goes.
    let purged = store
        .purge_before(Some(&acme.id), at(100), 10, None)
        .await
        .unwrap()
        .0;
    assert_eq!(
        purged,
        PurgeCount {
            events: 1,
            deliveries: 1,
            attempts: 1
        }
    );
    assert_not_found(store.get_delivery(&acme.id, &done).await);
    assert_not_found(store.get_event(&acme.id, "evt_done").await);
    assert_eq!(
        state_of(&store, &acme.id, &waiting).await,
        DeliveryState::Pending
    );
    assert!(
        store.get_event(&acme.id, "evt_waiting").await.is_ok(),
        "pending work keeps its event"
    );
    assert_eq!(
        state_of(&store, &acme.id, &recent).await,
        DeliveryState::Succeeded
    );
    assert_eq!(
        state_of(&store, &globex.id, &elsewhere).await,
        DeliveryState::Succeeded
    );

    // Every organization, in batches of one.
    let (first, next) = store.purge_before(None, at(100), 1, None).await.unwrap();
    assert_eq!(first.events, 1);
    assert_not_found(store.get_delivery(&globex.id, &elsewhere).await);
    assert!(next.is_some(), "a full step may not be the last");
    let (second, next) = store.purge_before(None, at(100), 1, next).await.unwrap();
    assert_eq!((second.events, next), (0, None));
    // An id purged can be ingested again.
    deliver(&store, &hook, "evt_done", at(600), false).await;
}

async fn attempts_are_listed_in_order_with_their_outcome(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let delivery = deliver(&store, &hook, "evt_1", T0, false).await;
    // Attempt ids in reverse order, so that an answer sorted by id instead of number shows.
    let mut ids = sorted_ids(3, AttemptId::generate);
    ids.reverse();
    let outcomes = [
        AttemptOutcome::failed(AttemptError::Timeout, None, 10_000, String::new(), None),
        AttemptOutcome::failed(
            AttemptError::Status(503),
            Some(503),
            40,
            "busy, try later".into(),
            Some(30),
        ),
        AttemptOutcome::succeeded(200, 15, r#"{"ok":true}"#.into()),
    ];
    let nexts = [
        NextStep::RetryAt(at(60)),
        NextStep::RetryAt(at(360)),
        NextStep::Succeeded,
    ];
    let starts = [T0, at(60), at(360)];

    let mut expected = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let attempt = attempt(id, &delivery, i as u32 + 1, starts[i], &outcomes[i]);
        let record = AttemptRecord {
            org_id: acme.id.clone(),
            attempt: attempt.clone(),
            next: nexts[i],
            lease_until: None,
        };
        store.record_attempt(&record).await.unwrap();
        expected.push(attempt);
    }

    let (d, attempts) = store.get_delivery(&acme.id, &delivery).await.unwrap();
    assert_eq!(attempts, expected);
    assert_eq!(attempts[0].error.as_deref(), Some("timeout"));
    assert_eq!(attempts[0].status, None);
    assert_eq!(attempts[1].response_body, "busy, try later");
    assert_eq!(d.state, DeliveryState::Succeeded);
    assert_eq!(d.attempt_count, 3);
    assert_eq!(d.last_status, Some(200));
    assert_eq!(d.last_error, None);
}

/// One call with 21 outcomes, as the recorder groups them: each delivery gets exactly its own
/// attempt and next state.
async fn a_group_of_outcomes_is_recorded_whole(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let mut records = Vec::new();
    for i in 0..21u32 {
        let delivery = deliver(&store, &hook, &format!("evt_{i}"), T0, true).await;
        let (outcome, next) = if i % 3 == 0 {
            (server_error(), NextStep::RetryAt(at(60 + i64::from(i))))
        } else {
            (
                AttemptOutcome::succeeded(200, i, format!("ok {i}")),
                NextStep::Succeeded,
            )
        };
        records.push(AttemptRecord {
            org_id: acme.id.clone(),
            attempt: attempt(
                AttemptId::generate(),
                &delivery,
                1,
                at(i64::from(i)),
                &outcome,
            ),
            next,
            lease_until: None,
        });
    }
    store.record_attempts(&records).await.unwrap();

    for r in &records {
        let (d, attempts) = store
            .get_delivery(&acme.id, &r.attempt.delivery_id)
            .await
            .unwrap();
        assert_eq!(attempts, vec![r.attempt.clone()]);
        assert_eq!(d.attempt_count, 1);
        match r.next {
            NextStep::Succeeded => {
                assert_eq!(d.state, DeliveryState::Succeeded);
                assert_eq!(d.last_status, Some(200));
            }
            _ => {
                assert_eq!(d.state, DeliveryState::Pending);
                assert_eq!(d.last_status, Some(500));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Delivery health (the dashboard's plots)
// ---------------------------------------------------------------------------------------------

/// Records attempt `number` of `delivery`, started at `started` and lasting `outcome`'s duration.
async fn record_attempt_at(
    store: &Arc<dyn Store>,
    org: &OrgId,
    delivery: &DeliveryId,
    number: u32,
    started: Timestamp,
    outcome: &AttemptOutcome,
    next: NextStep,
) {
    let record = AttemptRecord {
        org_id: org.clone(),
        attempt: attempt(AttemptId::generate(), delivery, number, started, outcome),
        next,
        lease_until: None,
    };
    store.record_attempt(&record).await.unwrap();
}

async fn health_counts_attempts_and_deliveries_per_hour_of_one_webhook(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let (other, other_hook) = org_with_webhook(&store, "other").await;
    let ok = |ms| AttemptOutcome::succeeded(200, ms, String::new());
    let failed = server_error(); // 12 ms
    // Finished before the window: counted nowhere.
    let old = deliver(&store, &hook, "evt_old", at(-1000), false).await;
    record_attempt_at(
        &store,
        &acme.id,
        &old,
        1,
        at(-900),
        &ok(5),
        NextStep::Succeeded,
    )
    .await;
    // Created before the window, finished in its first hour.
    let a = deliver(&store, &hook, "evt_a", at(-600), false).await;
    record_attempt_at(
        &store,
        &acme.id,
        &a,
        1,
        at(100),
        &ok(15),
        NextStep::Succeeded,
    )
    .await;
    // Created in the second hour, failed once there, succeeded in the third.
    let b = deliver(&store, &hook, "evt_b", at(3700), false).await;
    let retry = NextStep::RetryAt(at(7300));
    record_attempt_at(&store, &acme.id, &b, 1, at(3700), &failed, retry).await;
    record_attempt_at(
        &store,
        &acme.id,
        &b,
        2,
        at(7300),
        &ok(150),
        NextStep::Succeeded,
    )
    .await;
    // Created in the third hour, still pending.
    deliver(&store, &hook, "evt_c", at(7400), false).await;
    // Another organization's traffic in the same hours.
    let x = deliver(&store, &other_hook, "evt_x", at(100), false).await;
    record_attempt_at(&store, &other.id, &x, 1, at(100), &failed, NextStep::Failed).await;

    let window = HealthWindow {
        since: T0,
        bucket_ms: 3_600_000,
        buckets: 3,
    };
    let mut rows = store
        .webhook_health(&acme.id, &hook.id, &window)
        .await
        .unwrap();
    rows.attempts.sort_by_key(|a| (a.bucket, a.class));
    rows.created.sort();
    rows.finished.sort();
    let class = |ms| duration_class(ms) as u32;
    assert_eq!(
        rows.attempts,
        vec![
            AttemptCounts {
                bucket: 0,
                class: class(15),
                succeeded: 1,
                failed: 0
            },
            AttemptCounts {
                bucket: 1,
                class: class(12),
                succeeded: 0,
                failed: 1
            },
            AttemptCounts {
                bucket: 2,
                class: class(150),
                succeeded: 1,
                failed: 0
            },
        ]
    );
    assert_eq!(rows.created, vec![(1, 1), (2, 1)]);
    assert_eq!(rows.finished, vec![(0, 1), (2, 1)]);
    assert_eq!(rows.backlog_at_start, 1);
    let series = HealthSeries::from_rows(&window, &rows);
    let backlog: Vec<u64> = series.points.iter().map(|p| p.backlog).collect();
    assert_eq!(backlog, vec![0, 1, 1]);

    // Tenant isolation: the webhook seen through another organization has nothing.
    let foreign = store
        .webhook_health(&other.id, &hook.id, &window)
        .await
        .unwrap();
    assert_eq!(foreign, HealthRows::default());
}

// ---------------------------------------------------------------------------------------------
// Leases and inactive webhooks
// ---------------------------------------------------------------------------------------------

async fn deactivating_a_webhook_parks_its_deliveries_until_it_is_activated(store: Arc<dyn Store>) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let waiting = deliver(&store, &hook, "evt_1", T0, false).await;

    let inactive = Webhook {
        active: false,
        updated_at: at(1),
        ..hook.clone()
    };
    store.update_webhook(&inactive).await.unwrap();
    assert!(claim(&store, FAR_FUTURE).await.is_empty());
    assert_eq!(
        store.next_due_at().await.unwrap(),
        None,
        "a parked delivery never comes due"
    );

    let active = Webhook {
        active: true,
        updated_at: at(2),
        ..hook.clone()
    };
    store.update_webhook(&active).await.unwrap();
    assert_eq!(store.next_due_at().await.unwrap(), Some(T0));
    assert_eq!(claim(&store, at(2)).await, vec![waiting]);
}

async fn disabling_a_webhook_parks_it_and_keeps_what_a_user_changed_meanwhile(
    store: Arc<dyn Store>,
) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let waiting = deliver(&store, &hook, "evt_1", T0, false).await;
    let (other, _) = org_with_webhook(&store, "other").await;
    // A user saves a new name and secret while an attempt still holds the old copy.
    let edited = Webhook {
        name: "renamed".into(),
        secret: "whsec_rotated".into(),
        updated_at: at(1),
        ..hook.clone()
    };
    store.update_webhook(&edited).await.unwrap();

    assert!(
        !store
            .disable_webhook(&other.id, &hook.id, "gone", at(2))
            .await
            .unwrap(),
        "not through another organization"
    );
    assert!(
        store
            .disable_webhook(&org.id, &hook.id, "gone", at(2))
            .await
            .unwrap()
    );
    let now = store.get_webhook(&org.id, &hook.id).await.unwrap();
    assert!(!now.active);
    assert_eq!(now.disabled_reason.as_deref(), Some("gone"));
    assert_eq!(now.updated_at, at(2));
    assert_eq!(
        (now.name.as_str(), now.secret.as_str()),
        ("renamed", "whsec_rotated")
    );
    assert!(
        claim(&store, FAR_FUTURE).await.is_empty(),
        "its delivery is parked"
    );
    assert!(
        !store
            .disable_webhook(&org.id, &hook.id, "again", at(3))
            .await
            .unwrap(),
        "already disabled"
    );

    store
        .update_webhook(&Webhook {
            active: true,
            disabled_reason: None,
            updated_at: at(4),
            ..now
        })
        .await
        .unwrap();
    assert_eq!(claim(&store, at(4)).await, vec![waiting]);
}

async fn a_lease_given_back_for_an_inactive_webhook_stays_parked(store: Arc<dyn Store>) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let delivery = deliver(&store, &hook, "evt_1", T0, true).await;
    let inactive = Webhook {
        active: false,
        ..hook.clone()
    };
    store.update_webhook(&inactive).await.unwrap();

    store
        .release_lease(&delivery, at(LEASE_SECS))
        .await
        .unwrap();
    assert!(claim(&store, FAR_FUTURE).await.is_empty());
    assert_eq!(store.next_due_at().await.unwrap(), None);

    store.update_webhook(&hook).await.unwrap();
    assert_eq!(claim(&store, at(1)).await, vec![delivery]);
}

async fn a_released_lease_makes_the_delivery_due_again(store: Arc<dyn Store>) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let delivery = deliver(&store, &hook, "evt_1", T0, true).await;
    assert!(claim(&store, at(1)).await.is_empty());

    store
        .release_lease(&delivery, at(LEASE_SECS))
        .await
        .unwrap();
    assert_eq!(claim(&store, at(1)).await, vec![delivery]);
}

async fn a_late_outcome_does_not_undo_the_next_holders_lease(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let id = store_placed(&store, &hook, 1, Placement::Leased)
        .await
        .remove(0);
    // The first lease ended before its attempt's outcome was written; another node took the
    // delivery (until 100 s) and is sending it.
    let taken = store.claim_due(at(LEASE_SECS), at(100), 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    let outcome = AttemptOutcome::succeeded(200, 5, String::new());
    let record = |number, lease| AttemptRecord {
        org_id: org.id.clone(),
        attempt: attempt(AttemptId::generate(), &id, number, at(29), &outcome),
        next: NextStep::Succeeded,
        lease_until: Some(lease),
    };
    // The late outcome is not the delivery's (the node that sent it stalled past its lease):
    // it is not kept, and leaves the delivery to its holder.
    let moved = store
        .record_attempts(&[record(1, at(LEASE_SECS))])
        .await
        .unwrap();
    assert_eq!(moved, vec![false]);
    let (delivery, attempts) = store.get_delivery(&org.id, &id).await.unwrap();
    assert_eq!(
        (delivery.state, attempts.len()),
        (DeliveryState::Pending, 0)
    );
    assert!(
        claim(&store, at(99)).await.is_empty(),
        "the holder's lease was cleared"
    );
    // The holder's own outcome moves it on.
    let holders = [record(1, at(100))];
    let moved = store.record_attempts(&holders).await.unwrap();
    assert_eq!(moved, vec![true]);
    let (delivery, attempts) = store.get_delivery(&org.id, &id).await.unwrap();
    assert_eq!(
        (delivery.state, attempts.len()),
        (DeliveryState::Succeeded, 1)
    );
    // Stored again (a try whose answer was lost, then retried): it was stored, once.
    let moved = store.record_attempts(&holders).await.unwrap();
    assert_eq!(moved, vec![true]);
    let (delivery, attempts) = store.get_delivery(&org.id, &id).await.unwrap();
    assert_eq!(
        (delivery.state, attempts.len()),
        (DeliveryState::Succeeded, 1)
    );
}

/// A request a stop cut off is kept as an attempt, and its delivery is due again at once with
/// its retry schedule where it was; a record under a lease the delivery no longer has is not
/// kept.
async fn an_attempt_cut_off_by_a_stop_spends_no_retry(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let ids = store_placed(&store, &hook, 2, Placement::Leased).await;
    let outcome =
        AttemptOutcome::failed(AttemptError::Interrupted, None, 9_000, String::new(), None);
    let record = |id: &DeliveryId, lease| AttemptRecord {
        org_id: org.id.clone(),
        attempt: attempt(AttemptId::generate(), id, 1, at(1), &outcome),
        next: NextStep::RetryAt(at(10)),
        lease_until: Some(lease),
    };
    let stored = store
        .record_cut_off(&[record(&ids[0], at(LEASE_SECS)), record(&ids[1], at(7))])
        .await
        .unwrap();
    assert_eq!(
        stored,
        vec![ids[0].clone()],
        "the second was not under that lease"
    );
    let (delivery, attempts) = store.get_delivery(&org.id, &ids[0]).await.unwrap();
    assert_eq!(delivery.state, DeliveryState::Pending);
    assert_eq!(delivery.attempt_count, 1);
    assert_eq!(delivery.last_error.as_deref(), Some("interrupted"));
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].error.as_deref(), Some("interrupted"));
    let (_, none) = store.get_delivery(&org.id, &ids[1]).await.unwrap();
    assert!(none.is_empty());
    // Under its lease, but numbered as if an attempt were missing: not its history either.
    let mut skipping = record(&ids[1], at(LEASE_SECS));
    skipping.attempt.number = 2;
    assert!(store.record_cut_off(&[skipping]).await.unwrap().is_empty());
    let (delivery, none) = store.get_delivery(&org.id, &ids[1]).await.unwrap();
    assert_eq!((delivery.attempt_count, none.len()), (0, 0));
    // Due at once, not at its lease's end, and its schedule counts no attempt made yet.
    let due = store.claim_due(at(11), at(100), 10).await.unwrap();
    let cut = due
        .iter()
        .find(|d| d.delivery_id == ids[0])
        .expect("due again");
    assert_eq!((cut.attempt_count, cut.schedule_base), (1, 1));
}

/// A webhook deleted while its deliveries were being sent: the one its endpoint accepted is
/// recorded as delivered (the receiver has it), the others stay cancelled, attempts kept.
async fn a_delivery_sent_while_its_webhook_was_deleted_keeps_its_success(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let ids = store_placed(&store, &hook, 3, Placement::Leased).await;
    let lease = at(LEASE_SECS);
    let deleted = store
        .delete_webhooks(&org.id, std::slice::from_ref(&hook.id), at(1), None)
        .await
        .unwrap();
    assert_eq!(deleted, vec![hook.id.clone()]);
    for id in &ids {
        assert_eq!(
            state_of(&store, &org.id, id).await,
            DeliveryState::Cancelled
        );
    }
    let ok = AttemptOutcome::succeeded(200, 5, String::new());
    let record = |id: &DeliveryId, outcome: &AttemptOutcome, next| AttemptRecord {
        org_id: org.id.clone(),
        attempt: attempt(AttemptId::generate(), id, 1, at(2), outcome),
        next,
        lease_until: Some(lease),
    };
    let moved = store
        .record_attempts(&[
            record(&ids[0], &ok, NextStep::Succeeded),
            record(&ids[1], &server_error(), NextStep::RetryAt(at(60))),
            record(&ids[2], &server_error(), NextStep::Failed),
        ])
        .await
        .unwrap();
    // Only the success moved its delivery on (to succeeded); the failures' attempts are kept.
    assert_eq!(moved, vec![true, false, false]);

    let (sent, attempts) = store.get_delivery(&org.id, &ids[0]).await.unwrap();
    assert_eq!(
        (
            sent.state,
            sent.attempt_count,
            sent.last_status,
            attempts.len()
        ),
        (DeliveryState::Succeeded, 1, Some(200), 1)
    );
    for id in &ids[1..] {
        let (d, attempts) = store.get_delivery(&org.id, id).await.unwrap();
        assert_eq!(
            (d.state, d.next_attempt_at, attempts.len()),
            (DeliveryState::Cancelled, None, 1)
        );
        // Its summary, as history lists show it, agrees with the attempt it kept.
        assert_eq!(
            (d.attempt_count, d.last_status, d.last_error.as_deref()),
            (1, Some(500), Some("http_status"))
        );
        let listed = store
            .list_deliveries(
                &org.id,
                &hook.id,
                &DeliveryFilter::default(),
                &page(10, None),
            )
            .await
            .unwrap();
        let row = listed.data.iter().find(|r| &r.id == id).unwrap();
        assert_eq!((row.attempt_count, row.last_status), (1, Some(500)));
    }
    assert!(claim(&store, FAR_FUTURE).await.is_empty());
}

/// A circuit that stayed open past deliveries' retry schedules ends them as failed, unsent:
/// only those still under the lease given, and only the organization's own.
async fn deliveries_past_their_schedule_end_unsent_under_their_lease(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let (_, theirs) = org_with_webhook(&store, "globex").await;
    let ids = store_placed(&store, &hook, 4, Placement::Leased).await;
    let their_ids = store_placed(&store, &theirs, 1, Placement::Leased).await;
    let mut leases = under_first_lease(&ids[..2]);
    leases.push((ids[2].clone(), at(LEASE_SECS + 1)));
    leases.extend(under_first_lease(&their_ids));

    let failed = store
        .end_unsent(
            &org.id,
            &leases,
            DeliveryState::Failed,
            "circuit_open",
            at(5),
        )
        .await
        .unwrap();
    assert_eq!(failed, ids[..2].to_vec());
    for id in &ids[..2] {
        let (d, attempts) = store.get_delivery(&org.id, id).await.unwrap();
        assert_eq!(
            (
                d.state,
                d.last_error.as_deref(),
                d.next_attempt_at,
                attempts.len()
            ),
            (DeliveryState::Failed, Some("circuit_open"), None, 0)
        );
    }
    assert_eq!(
        state_of(&store, &org.id, &ids[2]).await,
        DeliveryState::Pending
    );
    // A WebSub channel that stayed unverified skips them instead, the reason kept.
    let why = "not sent: the channel 'login' is not verified";
    let skipped = store
        .end_unsent(
            &org.id,
            &under_first_lease(&ids[3..]),
            DeliveryState::Skipped,
            why,
            at(5),
        )
        .await
        .unwrap();
    assert_eq!(skipped, ids[3..].to_vec());
    let (d, _) = store.get_delivery(&org.id, &ids[3]).await.unwrap();
    assert_eq!(
        (d.state, d.last_error.as_deref()),
        (DeliveryState::Skipped, Some(why))
    );
    let (globex_delivery, _) = store
        .get_delivery(&theirs.org_id, &their_ids[0])
        .await
        .unwrap();
    assert_eq!(globex_delivery.state, DeliveryState::Pending);
    // Once the leases end, only what was not ended comes due again.
    let mut due = claim(&store, at(LEASE_SECS)).await;
    let mut want = vec![ids[2].clone(), their_ids[0].clone()];
    due.sort();
    want.sort();
    assert_eq!(due, want);
}

async fn a_users_change_does_not_undo_what_happened_since_it_was_read(store: Arc<dyn Store>) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let read = store.get_webhook(&org.id, &hook.id).await.unwrap();
    let renamed = |name: &str, at_secs: i64| Webhook {
        name: name.into(),
        updated_at: at(at_secs),
        ..read.clone()
    };
    // Attempts failing since 3 s; a rename saved at 4 s keeps the streak it did not read.
    store
        .note_webhook_outcome(&hook.id, true, at(3))
        .await
        .unwrap();
    store
        .save_webhook_change(&renamed("crm", 4), read.updated_at)
        .await
        .unwrap();
    let now = store.get_webhook(&org.id, &hook.id).await.unwrap();
    assert_eq!((now.name.as_str(), now.failing_since), ("crm", Some(at(3))));

    // Herald disables it in the same millisecond; a change made from what was read before is
    // refused all the same, and the webhook stays disabled.
    assert!(
        store
            .disable_webhook(&org.id, &hook.id, "410 Gone", at(4))
            .await
            .unwrap()
    );
    let stale = store
        .save_webhook_change(&renamed("crm2", 6), now.updated_at)
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    let now = store.get_webhook(&org.id, &hook.id).await.unwrap();
    assert_eq!((now.name.as_str(), now.active), ("crm", false));

    // Read again, the user switches it on: a fresh start, streak and reason cleared.
    let on = Webhook {
        active: true,
        disabled_reason: None,
        failing_since: None,
        updated_at: at(7),
        ..now.clone()
    };
    store
        .save_webhook_change(&on, now.updated_at)
        .await
        .unwrap();
    let now = store.get_webhook(&org.id, &hook.id).await.unwrap();
    assert!(now.active && now.failing_since.is_none() && now.disabled_reason.is_none());
}

async fn a_delivery_another_holder_leased_is_not_given_back_under_an_old_lease(
    store: Arc<dyn Store>,
) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let ids = store_placed(&store, &hook, 3, Placement::Leased).await;
    // The first lease ended, and another node took all three (until 100 s); it is sending
    // them. The first holder still had them queued: its deferral, its release and its
    // give-back name the lease that ended, and must not make them due for a third sender.
    let taken = store.claim_due(at(LEASE_SECS), at(100), 10).await.unwrap();
    assert_eq!(taken.len(), 3);
    let stale = under_first_lease(&ids);
    store
        .defer_deliveries(&org.id, &stale[..2], at(LEASE_SECS + 1))
        .await
        .unwrap();
    store.release_lease(&ids[2], at(LEASE_SECS)).await.unwrap();
    assert!(
        claim(&store, at(99)).await.is_empty(),
        "a lease that had ended undid the current one"
    );
    // Under the current lease they are given back as before.
    let current: Vec<_> = ids[..2].iter().map(|id| (id.clone(), at(100))).collect();
    store
        .defer_deliveries(&org.id, &current, at(50))
        .await
        .unwrap();
    store.release_lease(&ids[2], at(100)).await.unwrap();
    let mut expected = ids;
    expected.sort();
    assert_eq!(claim(&store, at(50)).await, expected);
}

async fn a_lease_is_renewed_only_by_its_holder(store: Arc<dyn Store>) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let ids = store_placed(&store, &hook, 3, Placement::Leased).await;
    // The holder extends the first two leases to 200 s, as it was given them.
    let renewed = store
        .renew_leases(&under_first_lease(&ids[..2]), at(200))
        .await
        .unwrap();
    assert_eq!(renewed, ids[..2].to_vec());
    // The third one's lease ended and another node took it (until 100 s): the first holder's
    // renewal names the lease that ended and changes nothing.
    let taken = store.claim_due(at(LEASE_SECS), at(100), 10).await.unwrap();
    assert_eq!(taken.len(), 1, "only the one not renewed is due");
    let renewed = store
        .renew_leases(&under_first_lease(&ids[2..]), at(300))
        .await
        .unwrap();
    assert!(renewed.is_empty());
    assert_eq!(
        claim(&store, at(199)).await,
        vec![ids[2].clone()],
        "the other node's lease ended at 100 s; the renewed ones last until 200 s"
    );
    let mut first_two = ids[..2].to_vec();
    first_two.sort();
    assert_eq!(claim(&store, at(200)).await, first_two);
}

async fn releasing_all_leases_makes_leased_deliveries_claimable_at_once(store: Arc<dyn Store>) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let leased_at_ingest = deliver(&store, &hook, "evt_1", T0, true).await;
    let claimed = deliver(&store, &hook, "evt_2", T0, false).await;
    assert_eq!(claim(&store, T0).await, vec![claimed.clone()]);
    let unleased = deliver(&store, &hook, "evt_3", T0, false).await;

    assert_eq!(store.release_all_leases().await.unwrap(), 2);

    let mut expected = vec![leased_at_ingest, claimed, unleased];
    expected.sort();
    assert_eq!(claim(&store, at(1)).await, expected);
}

// ---------------------------------------------------------------------------------------------
// Resending and recovering
// ---------------------------------------------------------------------------------------------

fn session(id: &str, owner: &str, expires_at: Timestamp) -> DashboardSession {
    DashboardSession {
        id_hash: id.into(),
        owner: owner.into(),
        credential: format!("key:{id}"),
        expires_at,
    }
}

const LIMITS: SessionLimits = SessionLimits {
    per_owner: 3,
    total: 5,
};

async fn session_ids(store: &Arc<dyn Store>, ids: &[&str], now: Timestamp) -> Vec<String> {
    let mut found = Vec::new();
    for id in ids {
        if let Some(s) = store.get_session(id, now).await.unwrap() {
            found.push(s.id_hash);
        }
    }
    found
}

async fn organizations_with_enabled_websub_webhooks_are_listed(store: Arc<dyn Store>) {
    use herald_core::subscription::Verification;
    assert!(store.orgs_with_websub_webhooks().await.unwrap().is_empty());
    // Acme: one enabled WebSub webhook among others; Globex: one disabled, one without
    // WebSub, one deleted; Initech: none.
    let (acme, plain) = org_with_webhook(&store, "acme").await;
    let (globex, _) = org_with_webhook(&store, "globex").await;
    org_with_webhook(&store, "initech").await;
    let websub = |org: &OrgId, active: bool| Webhook {
        verification: Verification::Websub,
        active,
        ..webhook(org)
    };
    store.create_webhook(&websub(&acme.id, true)).await.unwrap();
    store.create_webhook(&websub(&acme.id, true)).await.unwrap();
    store
        .create_webhook(&websub(&globex.id, false))
        .await
        .unwrap();
    let deleted = websub(&globex.id, true);
    store.create_webhook(&deleted).await.unwrap();
    store
        .delete_webhooks(&globex.id, std::slice::from_ref(&deleted.id), T0, None)
        .await
        .unwrap();
    assert_eq!(plain.verification, Verification::None);
    assert_eq!(store.orgs_with_websub_webhooks().await.unwrap(), [acme.id]);
}

async fn a_subscription_is_saved_only_as_read_and_a_renewal_is_claimed_once(store: Arc<dyn Store>) {
    use herald_core::subscription::{Mode, State, Subscription, Verification};
    let (acme, _) = org_with_webhook(&store, "acme").await;
    let (globex, _) = org_with_webhook(&store, "globex").await;
    let hook = Webhook {
        verification: Verification::Websub,
        active: true,
        ..webhook(&acme.id)
    };
    store.create_webhook(&hook).await.unwrap();
    let save = |org: &OrgId, subs: Vec<(Subscription, _)>| {
        let (store, org) = (store.clone(), org.clone());
        async move { store.save_subscriptions_as_read(&org, &subs).await.unwrap() }
    };
    let stored = || async { store.org_subscriptions(&acme.id).await.unwrap() };

    // None stored: a new one is saved, and only once.
    let mut sub = Subscription::pending(
        hook.id.clone(),
        "login".into(),
        "t1".into(),
        Mode::Subscribe,
    );
    assert_eq!(save(&acme.id, vec![(sub.clone(), None)]).await, 1);
    let mut other = sub.clone();
    other.topic = "t2".into();
    assert_eq!(
        save(&acme.id, vec![(other, None)]).await,
        0,
        "one is stored"
    );
    assert_eq!(stored().await, [sub.clone()]);

    // Saved where it is as read; refused where it changed since (answered, reset to pending
    // after a new URL), or under another organization.
    let pending = sub.as_read();
    sub.record(at(0), Ok(()));
    assert_eq!(
        save(&globex.id, vec![(sub.clone(), Some(pending.clone()))]).await,
        0
    );
    assert_eq!(
        save(&acme.id, vec![(sub.clone(), Some(pending.clone()))]).await,
        1
    );
    let mut late = sub.clone();
    late.state = State::Failed;
    late.reason = Some("an answer read before the last one".into());
    assert_eq!(save(&acme.id, vec![(late, Some(pending))]).await, 0);
    let verified = sub.as_read();
    let mut reset = sub.clone();
    (reset.state, reset.expires_at, reset.renew_at) = (State::Pending, None, None);
    reset.reason = Some("to be verified again".into());
    store
        .save_subscriptions(&acme.id, &[reset.clone()])
        .await
        .unwrap();
    let mut renewed = sub.clone();
    renewed.record(at(10), Ok(()));
    assert_eq!(save(&acme.id, vec![(renewed, Some(verified))]).await, 0);
    assert_eq!(stored().await, [reset.clone()]);

    // A due renewal is claimed once, and not due again until the hold ends; the claim leaves
    // what a renewal's save compares as it was.
    sub.record(at(20), Ok(()));
    store
        .save_subscriptions(&acme.id, &[sub.clone()])
        .await
        .unwrap();
    let due_at = sub.renew_at.unwrap();
    let due = store.subscriptions_to_renew(due_at, 10).await.unwrap();
    assert_eq!(due, [(acme.id.clone(), sub.clone())]);
    let hold = due_at.plus_secs(75);
    assert!(!store.claim_renewal(&globex.id, &sub, hold).await.unwrap());
    assert!(store.claim_renewal(&acme.id, &sub, hold).await.unwrap());
    assert!(
        !store.claim_renewal(&acme.id, &sub, hold).await.unwrap(),
        "another node took it"
    );
    assert!(
        store
            .subscriptions_to_renew(due_at.plus_secs(74), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.subscriptions_to_renew(hold, 10).await.unwrap().len(),
        1
    );
    let read = sub.as_read();
    sub.record(due_at.plus_secs(1), Ok(()));
    assert_eq!(save(&acme.id, vec![(sub.clone(), Some(read))]).await, 1);
    assert_eq!(stored().await, [sub]);
}

async fn a_dashboard_session_is_kept_until_it_expires_or_ends(store: Arc<dyn Store>) {
    let s = session("s1", "admin", at(3600));
    store.create_session(&s, T0, LIMITS).await.unwrap();
    assert_eq!(store.get_session("s1", at(10)).await.unwrap(), Some(s));
    assert_eq!(store.get_session("s2", at(10)).await.unwrap(), None);
    assert_eq!(
        store.get_session("s1", at(3600)).await.unwrap(),
        None,
        "expired"
    );

    // Messages wait for their page, oldest first, and are taken once.
    store
        .create_session(&session("s2", "admin", at(3600)), T0, LIMITS)
        .await
        .unwrap();
    for (page, sealed) in [("/a", "one"), ("/b", "other page"), ("/a", "two")] {
        store.add_flash("s2", page, sealed, 16).await.unwrap();
    }
    store
        .add_flash("s1", "/a", "another session's", 16)
        .await
        .unwrap();
    assert_eq!(
        store.take_flashes("s2", "/a").await.unwrap(),
        ["one", "two"]
    );
    assert!(store.take_flashes("s2", "/a").await.unwrap().is_empty());
    assert_eq!(
        store.take_flashes("s2", "/b").await.unwrap(),
        ["other page"]
    );
    // Past `keep`, the oldest go.
    for i in 0..5 {
        store
            .add_flash("s2", "/c", &format!("m{i}"), 3)
            .await
            .unwrap();
    }
    assert_eq!(
        store.take_flashes("s2", "/c").await.unwrap(),
        ["m2", "m3", "m4"]
    );
    // None for a session that does not exist; an ended one's go with it.
    store.add_flash("nobody", "/a", "lost", 16).await.unwrap();
    assert!(store.take_flashes("nobody", "/a").await.unwrap().is_empty());
    store.add_flash("s2", "/d", "waiting", 16).await.unwrap();
    store.delete_session("s2").await.unwrap();
    assert_eq!(store.get_session("s2", at(10)).await.unwrap(), None);
    store
        .create_session(&session("s2", "admin", at(3600)), T0, LIMITS)
        .await
        .unwrap();
    assert!(
        store.take_flashes("s2", "/d").await.unwrap().is_empty(),
        "ended with its session"
    );
    assert_eq!(
        store.take_flashes("s1", "/a").await.unwrap(),
        ["another session's"]
    );

    // The retention run deletes the expired ones (refused already, but still holding their
    // credentials) and leaves the rest.
    store
        .create_session(&session("s3", "admin", at(7200)), T0, LIMITS)
        .await
        .unwrap();
    assert_eq!(store.delete_expired_sessions(at(3599)).await.unwrap(), 0);
    assert_eq!(store.delete_expired_sessions(at(3600)).await.unwrap(), 2);
    assert_eq!(store.delete_expired_sessions(at(3600)).await.unwrap(), 0);
    assert_eq!(
        session_ids(&store, &["s1", "s2", "s3"], at(10)).await,
        ["s3"]
    );
}

async fn dashboard_sessions_past_their_limits_end_oldest_first(store: Arc<dyn Store>) {
    let all = ["a1", "a2", "a3", "a4", "b1", "admin1", "x"];
    // An owner's fourth session ends its first.
    for (i, id) in ["a1", "a2", "a3", "a4"].iter().enumerate() {
        let s = session(id, "org_a", at(1000 + i as i64));
        store.create_session(&s, T0, LIMITS).await.unwrap();
    }
    assert_eq!(session_ids(&store, &all, T0).await, ["a2", "a3", "a4"]);
    // Another owner's are not touched by it; past the total, the closest to expiry go.
    store
        .create_session(&session("b1", "org_b", at(500)), T0, LIMITS)
        .await
        .unwrap();
    store
        .create_session(&session("admin1", "admin", at(2000)), T0, LIMITS)
        .await
        .unwrap();
    assert_eq!(
        session_ids(&store, &all, T0).await,
        ["a2", "a3", "a4", "b1", "admin1"]
    );
    store
        .create_session(&session("x", "org_x", at(3000)), T0, LIMITS)
        .await
        .unwrap();
    assert_eq!(
        session_ids(&store, &all, T0).await,
        ["a2", "a3", "a4", "admin1", "x"]
    );
    // Expired sessions go when the next one starts, with their messages.
    store.add_flash("a2", "/p", "gone", 16).await.unwrap();
    store
        .create_session(&session("a1", "org_a", at(5000)), at(1001), LIMITS)
        .await
        .unwrap();
    assert_eq!(
        session_ids(&store, &all, T0).await,
        ["a1", "a3", "a4", "admin1", "x"]
    );
    store
        .create_session(&session("a2", "org_y", at(5000)), at(1001), LIMITS)
        .await
        .unwrap();
    assert!(store.take_flashes("a2", "/p").await.unwrap().is_empty());
}

async fn concurrent_sign_ins_of_one_owner_keep_its_limit(store: Arc<dyn Store>) {
    // As nodes signing people in at once: none fails (on PostgreSQL, two trimming the same
    // owner's sessions deadlocked), and the owner keeps no more than its limit.
    let mut tasks = tokio::task::JoinSet::new();
    let ids: Vec<String> = (0..24).map(|i| format!("c{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let (store, s) = (store.clone(), session(id, "admin", at(1000 + i as i64)));
        tasks.spawn(async move { store.create_session(&s, T0, LIMITS).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let names: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(
        session_ids(&store, &names, T0).await.len(),
        LIMITS.per_owner
    );
}

async fn every_delivery_waiting_for_its_retry_is_made_due_now_when_asked(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let (globex, other_hook) = org_with_webhook(&store, "globex").await;
    // Three of the webhook's deliveries and one of another webhook failed their first attempt
    // and wait until 300 s.
    let mut waiting = Vec::new();
    for i in 0..3 {
        waiting.push(deliver(&store, &hook, &format!("evt_{i}"), T0, false).await);
    }
    let other = deliver(&store, &other_hook, "evt_other", T0, false).await;
    assert_eq!(claim(&store, T0).await.len(), 4);
    for (org, id) in waiting
        .iter()
        .map(|d| (&acme.id, d))
        .chain([(&globex.id, &other)])
    {
        record_first_attempt(&store, org, id, &server_error(), NextStep::RetryAt(at(300))).await;
    }
    // One more, held by a node (claimed until 80 s), one new, due already, and one spilled (its
    // node had no room for it: due already, marked due at 85 s for the node to pull in turn).
    let held = deliver(&store, &hook, "evt_held", at(50), false).await;
    assert_eq!(claim(&store, at(50)).await, vec![held.clone()]);
    let fresh = deliver(&store, &hook, "evt_fresh", at(55), false).await;
    let spilled = DeliveryId::generate();
    let item = placed_item(
        event(&acme.id, "evt_spilled", "user.created", at(55)),
        &[(&spilled, &hook.id)],
        Placement::Spilled,
    );
    store
        .insert_events(&acme.id, &[item], at(55), at(85))
        .await
        .unwrap();

    // Another organization cannot reach the webhook.
    assert_eq!(
        store
            .retry_waiting(&globex.id, &hook.id, at(60))
            .await
            .unwrap(),
        0
    );
    assert_eq!(claim(&store, at(60)).await, vec![fresh.clone()]);
    assert_eq!(
        store
            .retry_waiting(&acme.id, &hook.id, at(60))
            .await
            .unwrap(),
        3
    );
    let mut due_now = waiting.clone();
    due_now.sort();
    let claimed = store.claim_due(at(60), at(90), 100).await.unwrap();
    let mut ids: Vec<DeliveryId> = claimed.iter().map(|d| d.delivery_id.clone()).collect();
    ids.sort();
    assert_eq!(ids, due_now);
    for due in &claimed {
        assert_eq!(
            (due.attempt_count, due.schedule_base),
            (1, 1),
            "an attempt the schedule does not count"
        );
        let (d, _) = store
            .get_delivery(&acme.id, &due.delivery_id)
            .await
            .unwrap();
        assert_eq!(d.next_attempt_at, Some(at(60)));
    }
    let (d, _) = store.get_delivery(&globex.id, &other).await.unwrap();
    assert_eq!(d.next_attempt_at, Some(at(300)), "another webhook's waits");
    // Now claimed, they are under way: nothing is waiting.
    assert_eq!(
        store
            .retry_waiting(&acme.id, &hook.id, at(60))
            .await
            .unwrap(),
        0
    );
    // Put off again by an open circuit while a call of that time still walks: passed over by
    // it (or it would go round them for as long as the circuit stays open); a later call
    // makes them due again.
    let leases: Vec<_> = waiting.iter().map(|id| (id.clone(), at(90))).collect();
    assert_eq!(
        store
            .defer_deliveries(&acme.id, &leases, at(400))
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .retry_waiting(&acme.id, &hook.id, at(60))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .retry_waiting(&acme.id, &hook.id, at(61))
            .await
            .unwrap(),
        3
    );
    let (d, _) = store.get_delivery(&acme.id, &spilled).await.unwrap();
    assert_eq!(
        d.next_attempt_at,
        Some(at(55)),
        "the spilled one comes in its turn"
    );
    // Asked again before an attempt was made (put off by the circuit meanwhile): the schedule
    // still leaves out one attempt only, never more than were made.
    for due in store.claim_due(at(61), at(95), 100).await.unwrap() {
        if waiting.contains(&due.delivery_id) {
            assert_eq!((due.attempt_count, due.schedule_base), (1, 1));
        }
    }

    // One that no attempt of its schedule has reached yet (put off by the circuit before its
    // first): asked for, it has that first attempt now. One due already (the spilled one)
    // just has its attempt now. Neither is left out of its schedule.
    let leases = [(fresh.clone(), at(90))];
    assert_eq!(
        store
            .defer_deliveries(&acme.id, &leases, at(400))
            .await
            .unwrap(),
        1
    );
    for id in [&fresh, &spilled] {
        let due = store
            .resend_delivery(&acme.id, id, at(100), at(130))
            .await
            .unwrap();
        assert_eq!((due.attempt_count, due.schedule_base), (0, 0), "{id}");
    }
}

async fn a_delivery_written_before_the_clock_was_set_back_is_retried_when_asked(
    store: Arc<dyn Store>,
) {
    // Its first attempt, at `T0`, failed; then the system clock was set back.
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let waiting = deliver(&store, &hook, "evt_1", T0, false).await;
    assert_eq!(claim(&store, T0).await.len(), 1);
    record_first_attempt(
        &store,
        &acme.id,
        &waiting,
        &server_error(),
        NextStep::RetryAt(at(300)),
    )
    .await;
    // Within a minute of the call's time, a change is taken as made while the call ran.
    assert_eq!(
        store
            .retry_waiting(&acme.id, &hook.id, at(-30))
            .await
            .unwrap(),
        0
    );
    // An hour before it, the delivery was written before the step: it waits, and goes now
    // (it was passed over until the clock caught up).
    assert_eq!(
        store
            .retry_waiting(&acme.id, &hook.id, at(-3600))
            .await
            .unwrap(),
        1
    );
    let (d, _) = store.get_delivery(&acme.id, &waiting).await.unwrap();
    assert_eq!(d.next_attempt_at, Some(at(-3600)));
}

async fn a_delivery_is_sent_now_unless_a_node_holds_it(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let globex = org("globex");
    store.create_org(&globex).await.unwrap();
    let delivery = deliver(&store, &hook, "evt_1", T0, false).await;

    // Claimed by a node: its attempt is queued or under way.
    assert_eq!(claim(&store, T0).await, vec![delivery.clone()]);
    assert_conflict(
        store
            .resend_delivery(&acme.id, &delivery, at(1), at(31))
            .await,
    );

    // Its first attempt failed and the next waits until 300 s: one is made now, besides its
    // schedule, which does not count it (no fresh start either).
    record_first_attempt(
        &store,
        &acme.id,
        &delivery,
        &server_error(),
        NextStep::RetryAt(at(300)),
    )
    .await;
    assert_not_found(
        store
            .resend_delivery(&globex.id, &delivery, at(40), at(70))
            .await,
    );
    let due = store
        .resend_delivery(&acme.id, &delivery, at(40), at(70))
        .await
        .unwrap();
    assert_eq!(due.attempt_count, 1);
    assert_eq!(
        due.schedule_base, 1,
        "an attempt the schedule does not count"
    );
    assert_eq!(due.updated_at, at(40));
    let (d, _) = store.get_delivery(&acme.id, &delivery).await.unwrap();
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.next_attempt_at, Some(at(40)));
    // Leased to the caller until 70 s: a second press finds it under way.
    assert_conflict(
        store
            .resend_delivery(&acme.id, &delivery, at(41), at(71))
            .await,
    );
    assert!(claim(&store, at(69)).await.is_empty());
    assert_eq!(claim(&store, at(70)).await, vec![delivery.clone()]);
    store
        .record_attempt(&AttemptRecord {
            org_id: acme.id.clone(),
            attempt: attempt(AttemptId::generate(), &delivery, 2, at(70), &server_error()),
            next: NextStep::Failed,
            lease_until: Some(at(100)),
        })
        .await
        .unwrap();

    assert_not_found(
        store
            .resend_delivery(&acme.id, &DeliveryId::generate(), at(100), at(130))
            .await,
    );
    assert_eq!(
        state_of(&store, &acme.id, &delivery).await,
        DeliveryState::Failed
    );

    // Finished: sent again with a fresh schedule.
    let due = store
        .resend_delivery(&acme.id, &delivery, at(100), at(130))
        .await
        .unwrap();
    assert_eq!(due.delivery_id, delivery);
    assert_eq!(due.org_id, acme.id);
    assert_eq!(due.webhook_id, hook.id);
    assert_eq!(due.event.id, "evt_1");
    assert_eq!(due.attempt_count, 2);
    assert_eq!(due.schedule_base, 2, "a resend starts a fresh schedule");

    let (d, _) = store.get_delivery(&acme.id, &delivery).await.unwrap();
    assert_eq!(d.state, DeliveryState::Pending);
    assert_eq!(d.next_attempt_at, Some(at(100)));
    // Leased to the caller until 130 s, then claimable like any lost lease.
    assert!(claim(&store, at(129)).await.is_empty());
    assert_eq!(claim(&store, at(130)).await, vec![delivery.clone()]);
    assert_conflict(
        store
            .resend_delivery(&acme.id, &delivery, at(131), at(161))
            .await,
    );
    // A lease that ran out (its node stopped) no longer holds it back.
    store
        .resend_delivery(&acme.id, &delivery, at(160), at(190))
        .await
        .unwrap();
}

async fn recovering_brings_back_failed_deliveries_created_since_a_time(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let other_hook = webhook(&acme.id);
    store.create_webhook(&other_hook).await.unwrap();
    let (globex, _) = org_with_webhook(&store, "globex").await;

    let old_failure = deliver(&store, &hook, "evt_old", T0, false).await;
    let since = at(100);
    let new_failure = deliver(&store, &hook, "evt_new", since, false).await;
    let new_success = deliver(&store, &hook, "evt_ok", at(110), false).await;
    let other_failure = deliver(&store, &other_hook, "evt_other", at(120), false).await;
    let still_pending = deliver(&store, &hook, "evt_pending", at(130), false).await;
    assert_eq!(claim(&store, at(120)).await.len(), 4);
    let ok = AttemptOutcome::succeeded(200, 5, String::new());
    for d in [&old_failure, &new_failure, &other_failure] {
        record_first_attempt(&store, &acme.id, d, &server_error(), NextStep::Failed).await;
    }
    record_first_attempt(&store, &acme.id, &new_success, &ok, NextStep::Succeeded).await;

    assert_eq!(
        store
            .recover_failed(&globex.id, &hook.id, T0, at(200), false)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        state_of(&store, &acme.id, &new_failure).await,
        DeliveryState::Failed
    );

    assert_eq!(
        store
            .recover_failed(&acme.id, &hook.id, since, at(200), false)
            .await
            .unwrap(),
        1
    );
    let (recovered, _) = store.get_delivery(&acme.id, &new_failure).await.unwrap();
    assert_eq!(recovered.state, DeliveryState::Pending);
    assert_eq!(recovered.next_attempt_at, Some(at(200)));
    assert_eq!(
        state_of(&store, &acme.id, &old_failure).await,
        DeliveryState::Failed
    );
    assert_eq!(
        state_of(&store, &acme.id, &new_success).await,
        DeliveryState::Succeeded
    );
    assert_eq!(
        state_of(&store, &acme.id, &other_failure).await,
        DeliveryState::Failed
    );

    let mut expected = vec![new_failure, still_pending];
    expected.sort();
    assert_eq!(claim(&store, at(200)).await, expected);
}

async fn recovering_failed_deliveries_of_an_inactive_webhook_leaves_them_parked(
    store: Arc<dyn Store>,
) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let delivery = deliver(&store, &hook, "evt_1", T0, false).await;
    assert_eq!(claim(&store, T0).await, vec![delivery.clone()]);
    record_first_attempt(
        &store,
        &acme.id,
        &delivery,
        &server_error(),
        NextStep::Failed,
    )
    .await;
    let inactive = Webhook {
        active: false,
        ..hook.clone()
    };
    store.update_webhook(&inactive).await.unwrap();

    assert_eq!(
        store
            .recover_failed(&acme.id, &hook.id, T0, at(10), false)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        state_of(&store, &acme.id, &delivery).await,
        DeliveryState::Pending
    );
    // It cannot be claimed while the webhook is off, so it must not be reported as due either:
    // a scheduler told "due now" about work it cannot claim polls in a tight loop.
    assert!(claim(&store, FAR_FUTURE).await.is_empty());
    assert_eq!(store.next_due_at().await.unwrap(), None);

    store.update_webhook(&hook).await.unwrap();
    assert_eq!(claim(&store, at(20)).await, vec![delivery]);
}

async fn a_delivery_of_an_inactive_or_deleted_webhook_cannot_be_resent(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let delivery = deliver(&store, &hook, "evt_1", T0, false).await;
    claim(&store, T0).await;
    record_first_attempt(
        &store,
        &acme.id,
        &delivery,
        &server_error(),
        NextStep::Failed,
    )
    .await;

    let inactive = Webhook {
        active: false,
        ..hook.clone()
    };
    store.update_webhook(&inactive).await.unwrap();
    assert_conflict(
        store
            .resend_delivery(&acme.id, &delivery, at(10), at(40))
            .await,
    );

    store
        .delete_webhooks(&acme.id, std::slice::from_ref(&hook.id), at(20), None)
        .await
        .unwrap();
    assert_conflict(
        store
            .resend_delivery(&acme.id, &delivery, at(30), at(60))
            .await,
    );
    assert_eq!(
        state_of(&store, &acme.id, &delivery).await,
        DeliveryState::Failed
    );
    assert!(claim(&store, FAR_FUTURE).await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Delivery history
// ---------------------------------------------------------------------------------------------

async fn delivery_history_is_newest_first_and_filterable(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let other_hook = webhook(&acme.id);
    store.create_webhook(&other_hook).await.unwrap();
    let (globex, _) = org_with_webhook(&store, "globex").await;

    let ids = sorted_ids(5, DeliveryId::generate);
    let types = [
        "invoice.paid",
        "invoice.voided",
        "invoice.paid",
        "invoice.voided",
        "invoice.paid",
    ];
    for (i, (id, t)) in ids.iter().zip(types).enumerate() {
        deliver_as(
            &store,
            &hook,
            id.clone(),
            &format!("evt_{i}"),
            t,
            at(i as i64),
            false,
        )
        .await;
    }
    let elsewhere = deliver(&store, &other_hook, "evt_elsewhere", T0, false).await;
    // ids[1] and ids[2] succeed; the rest stay pending.
    claim(&store, at(10)).await;
    let ok = AttemptOutcome::succeeded(200, 5, String::new());
    for d in [&ids[1], &ids[2]] {
        record_first_attempt(&store, &acme.id, d, &ok, NextStep::Succeeded).await;
    }

    let list = |filter: DeliveryFilter, limit: u32, cursor: Option<String>| {
        let (store, org, hook) = (store.clone(), acme.id.clone(), hook.id.clone());
        async move {
            store
                .list_deliveries(&org, &hook, &filter, &page(limit, cursor))
                .await
                .unwrap()
        }
    };
    let ids_of = |p: &[Delivery]| p.iter().map(|d| d.id.clone()).collect::<Vec<_>>();

    let first = list(DeliveryFilter::default(), 2, None).await;
    assert_eq!(ids_of(&first.data), vec![ids[4].clone(), ids[3].clone()]);
    let second = list(DeliveryFilter::default(), 2, first.next_cursor.clone()).await;
    assert_eq!(ids_of(&second.data), vec![ids[2].clone(), ids[1].clone()]);
    let third = list(DeliveryFilter::default(), 2, second.next_cursor.clone()).await;
    assert_eq!(ids_of(&third.data), vec![ids[0].clone()]);
    assert_eq!(third.next_cursor, None);
    assert!(first.next_cursor.is_some() && second.next_cursor.is_some());

    let succeeded = DeliveryFilter {
        state: Some(DeliveryState::Succeeded),
        event_type: None,
    };
    let got = list(succeeded, 10, None).await;
    assert_eq!(ids_of(&got.data), vec![ids[2].clone(), ids[1].clone()]);
    assert!(got.data.iter().all(|d| d.state == DeliveryState::Succeeded));

    let voided = DeliveryFilter {
        state: None,
        event_type: Some("invoice.voided".into()),
    };
    let got = list(voided, 10, None).await;
    assert_eq!(ids_of(&got.data), vec![ids[3].clone(), ids[1].clone()]);
    assert!(got.data.iter().all(|d| d.event_type == "invoice.voided"));

    let pending_paid = DeliveryFilter {
        state: Some(DeliveryState::Pending),
        event_type: Some("invoice.paid".into()),
    };
    let got = list(pending_paid, 10, None).await;
    assert_eq!(ids_of(&got.data), vec![ids[4].clone(), ids[0].clone()]);

    // Another webhook of the same org has its own history.
    let other = store
        .list_deliveries(
            &acme.id,
            &other_hook.id,
            &DeliveryFilter::default(),
            &page(10, None),
        )
        .await
        .unwrap();
    assert_eq!(ids_of(&other.data), vec![elsewhere]);

    // Another organization naming this webhook sees nothing, and cannot read a delivery.
    let theirs = store
        .list_deliveries(
            &globex.id,
            &hook.id,
            &DeliveryFilter::default(),
            &page(10, None),
        )
        .await
        .unwrap();
    assert!(theirs.data.is_empty());
    assert_eq!(theirs.next_cursor, None);
    assert_not_found(store.get_delivery(&globex.id, &ids[0]).await);
    assert_not_found(store.get_event(&globex.id, "evt_0").await);
}

// ---------------------------------------------------------------------------------------------
// Deleting an organization
// ---------------------------------------------------------------------------------------------

/// An organization with something of every kind it can own.
struct Populated {
    org: Organization,
    hook: Webhook,
    key: ApiKey,
    /// Attempted once, due again at 600 s.
    attempted: DeliveryId,
    waiting: DeliveryId,
}

async fn populated_org(store: &Arc<dyn Store>, handle: &str) -> Populated {
    let (org, hook) = org_with_webhook(store, handle).await;
    let key = api_key(&org.id, &format!("sha256:{handle}"));
    store.create_api_key(&key).await.unwrap();
    let paid = event_type(&org.id, "invoice.paid");
    store.create_event_type(&paid).await.unwrap();
    let attempted = deliver(store, &hook, "evt_attempted", T0, false).await;
    assert_eq!(claim(store, T0).await, vec![attempted.clone()]);
    let retry = NextStep::RetryAt(at(600));
    record_first_attempt(store, &org.id, &attempted, &server_error(), retry).await;
    let waiting = deliver(store, &hook, "evt_waiting", at(1), false).await;
    Populated {
        org,
        hook,
        key,
        attempted,
        waiting,
    }
}

/// Writes that read an organization just before its deletion and arrive after it (an ingest,
/// a new webhook or key): SQLite's one writer refuses them; on PostgreSQL another node's may
/// commit, and the sweep removes what it stored. Either way nothing of the organization is
/// left, no delivery stays pending for it, and the other organization keeps everything.
async fn what_writes_racing_an_organizations_deletion_store_is_removed(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let (globex, other_hook) = org_with_webhook(&store, "globex").await;
    let kept = deliver(&store, &other_hook, "evt_kept", T0, false).await;
    store.delete_org(&acme.id).await.unwrap();

    let late = DeliveryId::generate();
    let items = [item(
        event(&acme.id, "evt_late", "invoice.paid", T0),
        &[(&late, &hook.id)],
        false,
    )];
    let ingested = store
        .insert_events(&acme.id, &items, T0, at(LEASE_SECS))
        .await;
    let created = [
        store.create_webhook(&webhook(&acme.id)).await,
        store.create_api_key(&api_key(&acme.id, "late-key")).await,
        store
            .create_event_type(&event_type(&acme.id, "invoice.late"))
            .await,
    ];
    for result in created
        .iter()
        .map(|r| r.as_ref().map(|_| ()))
        .chain([ingested.as_ref().map(|_| ())])
    {
        assert!(
            matches!(result, Ok(()) | Err(StoreError::NotFound)),
            "{result:?}"
        );
    }
    store.sweep_deleted_orgs().await.unwrap();

    assert_not_found(store.get_event(&acme.id, "evt_late").await);
    assert_not_found(store.get_delivery(&acme.id, &late).await);
    assert!(store.org_webhooks(&acme.id).await.unwrap().is_empty());
    assert_eq!(store.find_api_key("late-key").await.unwrap(), None);
    assert!(store.list_event_types(&acme.id).await.unwrap().is_empty());
    let pending = store.pending_by_webhook().await.unwrap();
    assert!(
        pending.iter().all(|p| p.webhook_id == other_hook.id),
        "{pending:?}"
    );
    // Nothing more to sweep; the other organization keeps its own.
    assert_eq!(store.sweep_deleted_orgs().await.unwrap(), 0);
    assert_eq!(
        state_of(&store, &globex.id, &kept).await,
        DeliveryState::Pending
    );
    assert_eq!(claim(&store, FAR_FUTURE).await, vec![kept]);
}

async fn deleting_an_organization_removes_everything_it_owns(store: Arc<dyn Store>) {
    let Populated {
        org: acme,
        hook: acme_hook,
        key: acme_key,
        attempted: acme_attempted,
        waiting: acme_waiting,
    } = populated_org(&store, "acme").await;
    let Populated {
        org: globex,
        hook: globex_hook,
        key: globex_key,
        attempted: globex_attempted,
        waiting: globex_waiting,
    } = populated_org(&store, "globex").await;

    store.delete_org(&acme.id).await.unwrap();

    assert_not_found(store.get_org(&acme.id).await);
    assert_not_found(store.get_webhook(&acme.id, &acme_hook.id).await);
    assert!(store.org_webhooks(&acme.id).await.unwrap().is_empty());
    assert_not_found(store.get_event(&acme.id, "evt_attempted").await);
    assert_not_found(store.get_delivery(&acme.id, &acme_attempted).await);
    assert_not_found(store.get_delivery(&acme.id, &acme_waiting).await);
    assert_eq!(store.find_api_key(&acme_key.key_hash).await.unwrap(), None);
    assert!(store.list_api_keys(&acme.id).await.unwrap().is_empty());
    assert!(store.list_event_types(&acme.id).await.unwrap().is_empty());
    let orgs = store.list_orgs(&page(10, None)).await.unwrap();
    assert_eq!(orgs.data, vec![globex.clone()]);

    // The other organization is untouched, and only its work is left to do.
    assert_eq!(store.get_org(&globex.id).await.unwrap(), globex);
    assert_eq!(
        store
            .get_webhook(&globex.id, &globex_hook.id)
            .await
            .unwrap(),
        globex_hook
    );
    assert!(store.get_event(&globex.id, "evt_attempted").await.is_ok());
    let (_, attempts) = store
        .get_delivery(&globex.id, &globex_attempted)
        .await
        .unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        store.find_api_key(&globex_key.key_hash).await.unwrap(),
        Some(globex_key)
    );
    assert_eq!(store.list_event_types(&globex.id).await.unwrap().len(), 1);
    let mut expected = vec![globex_attempted, globex_waiting];
    expected.sort();
    assert_eq!(claim(&store, FAR_FUTURE).await, expected);
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

async fn deleting_an_organization_with_a_backlog_removes_all_of_it(store: Arc<dyn Store>) {
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let (_, their_hook) = org_with_webhook(&store, "globex").await;
    let ids = store_placed(&store, &hook, BACKLOG, Placement::Leased).await;
    let failed: Vec<AttemptRecord> = ids[..BACKLOG / 2]
        .iter()
        .map(|d| AttemptRecord {
            org_id: acme.id.clone(),
            attempt: attempt(AttemptId::generate(), d, 1, T0, &server_error()),
            next: NextStep::Failed,
            lease_until: None,
        })
        .collect();
    store.record_attempts(&failed).await.unwrap();
    store_placed(&store, &their_hook, 3, Placement::Leased).await;

    store.delete_org(&acme.id).await.unwrap();

    assert_not_found(store.get_org(&acme.id).await);
    for d in [&ids[0], &ids[BACKLOG - 1]] {
        assert_not_found(store.get_delivery(&acme.id, d).await);
        assert_not_found(store.get_event(&acme.id, &format!("evt_{d}")).await);
    }
    let pending = store.pending_by_webhook().await.unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(
        (&pending[0].webhook_id, pending[0].count),
        (&their_hook.id, 3)
    );
}

/// Requests stored at the same time may share a statement (PostgreSQL groups them); each must
/// still get its own answer: an id is new for exactly one of the requests that send it in its
/// organization, and a request that fails takes no other request down with it.
async fn concurrent_requests_each_get_their_own_answer(store: Arc<dyn Store>) {
    const REQUESTS: usize = 24;
    let (acme, acme_hook) = org_with_webhook(&store, "acme").await;
    let (globex, globex_hook) = org_with_webhook(&store, "globex").await;
    let taken = deliver(&store, &acme_hook, "evt_taken", T0, false).await;

    // Request i goes to acme when i is even, globex when odd, with two events: `evt_{i / 4}`
    // (so every such id is sent by two requests of each organization) and one of its own.
    let hooks = [&acme_hook, &globex_hook];
    let request = |i: usize| {
        let hook = hooks[i % 2];
        let ids = vec![DeliveryId::generate(), DeliveryId::generate()];
        let items = vec![
            item(
                event(&hook.org_id, &format!("evt_{}", i / 4), "invoice.paid", T0),
                &[(&ids[0], &hook.id)],
                false,
            ),
            item(
                event(&hook.org_id, &format!("own_{i}"), "invoice.paid", T0),
                &[(&ids[1], &hook.id)],
                false,
            ),
        ];
        (hook.org_id.clone(), ids, items)
    };
    // All at once, then the last four beside one that must fail: its delivery id is taken.
    let first: Vec<_> = (0..REQUESTS).map(request).collect();
    let answers = store_all(&store, &first).await;
    let late: Vec<_> = (REQUESTS..REQUESTS + 4).map(request).collect();
    let failing = vec![item(
        event(&acme.id, "evt_clash", "invoice.paid", T0),
        &[(&taken, &acme_hook.id)],
        false,
    )];
    let (late_answers, failed) = tokio::join!(
        store_all(&store, &late),
        store.insert_events(&acme.id, &failing, T0, at(LEASE_SECS))
    );

    assert!(
        matches!(failed, Err(ref e) if !matches!(e, StoreError::Unavailable(_))),
        "the clashing request fails on its own account, got {failed:?}"
    );
    assert_not_found(store.get_event(&acme.id, "evt_clash").await);
    let mut new_ids: BTreeMap<(OrgId, String), usize> = BTreeMap::new();
    let all = first.iter().chain(&late);
    for ((org, deliveries, items), answer) in all.zip(answers.into_iter().chain(late_answers)) {
        let results = answer.expect("a request beside a failing one is stored");
        assert_eq!(results.len(), items.len());
        for ((item, delivery), result) in items.iter().zip(deliveries).zip(results) {
            let stored = store.get_delivery(org, delivery).await.is_ok();
            assert_eq!(
                stored,
                result == IngestResult::Stored,
                "{}: a delivery is stored exactly when its event is new",
                item.event.id
            );
            if result == IngestResult::Stored {
                *new_ids
                    .entry((org.clone(), item.event.id.clone()))
                    .or_default() += 1;
            }
        }
    }
    // Seven shared ids and fourteen own ids per organization, each new exactly once.
    for org in [&acme.id, &globex.id] {
        let ids: Vec<usize> = new_ids
            .iter()
            .filter(|((o, _), _)| o == org)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(ids, vec![1; 7 + 14], "{org}");
    }
}

/// Stores every request at once; answers in the same order.
async fn store_all(
    store: &Arc<dyn Store>,
    requests: &[(OrgId, Vec<DeliveryId>, Vec<IngestItem>)],
) -> Vec<StoreResult<Vec<IngestResult>>> {
    futures::future::join_all(
        requests
            .iter()
            .map(|(org, _, items)| store.insert_events(org, items, T0, at(LEASE_SECS))),
    )
    .await
}

async fn concurrent_ingests_are_all_committed(store: Arc<dyn Store>) {
    const N: usize = 200;
    let (acme, hook) = org_with_webhook(&store, "acme").await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..N {
        let (store, hook) = (store.clone(), hook.clone());
        tasks.spawn(async move {
            let id = DeliveryId::generate();
            let event = event(&hook.org_id, &format!("evt_{i}"), "invoice.paid", T0);
            let results = store
                .insert_events(
                    &hook.org_id,
                    &[item(event, &[(&id, &hook.id)], false)],
                    T0,
                    at(LEASE_SECS),
                )
                .await;
            (id, results)
        });
    }
    let mut inserted = BTreeSet::new();
    while let Some(joined) = tasks.join_next().await {
        let (id, results) = joined.unwrap();
        assert_eq!(results.unwrap(), vec![IngestResult::Stored]);
        inserted.insert(id);
    }
    assert_eq!(inserted.len(), N);

    let mut listed = BTreeSet::new();
    let mut cursor = None;
    loop {
        let p = store
            .list_deliveries(
                &acme.id,
                &hook.id,
                &DeliveryFilter::default(),
                &page(50, cursor),
            )
            .await
            .unwrap();
        for d in p.data {
            assert!(listed.insert(d.id.clone()), "{} listed twice", d.id);
        }
        cursor = p.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(listed, inserted);
}

/// Several nodes (here: tasks, each on its own connection where the backend has several) claim
/// at the same moment: each delivery is leased to exactly one of them.
async fn concurrent_claims_never_lease_a_delivery_twice(store: Arc<dyn Store>) {
    const N: usize = 300;
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let items: Vec<IngestItem> = (0..N)
        .map(|i| {
            let id = DeliveryId::generate();
            item(
                event(&hook.org_id, &format!("evt_{i}"), "invoice.paid", T0),
                &[(&id, &hook.id)],
                false,
            )
        })
        .collect();
    store
        .insert_events(&hook.org_id, &items, T0, at(LEASE_SECS))
        .await
        .unwrap();

    let mut claimers = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let store = store.clone();
        claimers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store.claim_due(T0, at(LEASE_SECS), 7).await.unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|d| d.delivery_id));
            }
        });
    }
    let mut seen = BTreeSet::new();
    while let Some(mine) = claimers.join_next().await {
        for id in mine.unwrap() {
            assert!(seen.insert(id.clone()), "{id} was leased twice");
        }
    }
    assert_eq!(seen.len(), N, "every due delivery was leased");
}

// ---------------------------------------------------------------------------------------------
// Running the stories against every backend
// ---------------------------------------------------------------------------------------------

/// A store under test, and whatever must outlive it (a temp dir, a scratch database).
struct Fresh {
    store: Arc<dyn Store>,
    _keep: Box<dyn std::any::Any + Send>,
}

/// A new SQLite store in its own temp dir.
async fn sqlite() -> Option<Fresh> {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = SqliteStore::open(dir.path().join("herald.db")).expect("opening SQLite");
    Some(Fresh {
        store: Arc::new(store),
        _keep: Box::new(dir),
    })
}

/// A new PostgreSQL store in a schema of its own (dropped afterwards), in the database
/// `HERALD_TEST_DATABASE_URL` names; `None` (the story is skipped, with a notice) when it is unset.
async fn postgres() -> Option<Fresh> {
    postgres_in_schema().await.map(|(fresh, _, _)| fresh)
}

/// A new PostgreSQL store, with the database's URL and the schema it lives in (for a story
/// that reaches its tables from another connection).
async fn postgres_in_schema() -> Option<(Fresh, String, String)> {
    static NOTICE: std::sync::Once = std::sync::Once::new();
    let Ok(url) = std::env::var("HERALD_TEST_DATABASE_URL") else {
        NOTICE.call_once(|| {
            eprintln!("HERALD_TEST_DATABASE_URL is not set: skipping the PostgreSQL stories (./scripts/test sets it)");
        });
        return None;
    };
    let schema = format!("herald_story_{:016x}", rand::random::<u64>());
    let admin = admin_client(&url).await;
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("creating the story's schema");
    let separator = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    let store = PostgresStore::new(
        &scoped,
        PostgresOptions { pool_size: 4 },
        SecretCipher::none(),
    )
    .expect("a valid database URL");
    store.migrate().await.expect("migrating the story's schema");
    let fresh = Fresh {
        store: Arc::new(store),
        _keep: Box::new(DropSchema {
            url: url.clone(),
            schema: schema.clone(),
        }),
    };
    Some((fresh, url, schema))
}

async fn admin_client(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connecting to HERALD_TEST_DATABASE_URL");
    tokio::spawn(connection);
    client
}

/// A connection that reads and writes `schema`'s tables behind the store's back.
async fn admin_in_schema(url: &str, schema: &str) -> tokio_postgres::Client {
    let admin = admin_client(url).await;
    admin
        .batch_execute(&format!("SET search_path = {schema}"))
        .await
        .unwrap();
    admin
}

/// Drops a story's schema when the story ends, pass or fail.
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Drop runs inside the test's runtime, which must not block on itself: use a thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                admin_client(&url)
                    .await
                    .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                    .await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop the story schema {}", self.schema);
        }
    }
}

/// Runs every story against `$backend`, a fn returning `Option<Fresh>` (`None` skips, e.g. when
/// `HERALD_TEST_DATABASE_URL` is not set). A story marked `#[ignore = "bug: …"]` shows a known
/// bug; remove the mark once it is fixed.
macro_rules! stories {
    ($backend:ident) => {
        stories!(@each $backend;
            organizations_are_listed_newest_first_a_page_at_a_time,
            an_organization_can_be_updated_and_deleted,
            an_organizations_config_is_read_from_one_snapshot,
            a_second_org_with_the_same_handle_is_a_conflict,
            an_api_key_is_found_by_its_hash_until_it_is_deleted,
            event_type_names_are_unique_within_an_organization,
            a_webhook_is_seen_only_by_its_own_organization,
            webhooks_are_listed_newest_first_a_page_at_a_time,
            updating_a_webhook_saves_every_field,
            deleting_webhooks_returns_only_what_it_deleted,
            a_webhook_changed_since_the_version_named_is_not_deleted,
            an_event_id_is_stored_once_per_organization,
            an_events_deliveries_are_found_by_its_id,
            an_organizations_events_are_listed_newest_first,
            a_repeated_id_within_one_batch_is_a_duplicate,
            a_batch_is_stored_all_or_nothing,
            an_unleased_delivery_is_claimed_once,
            a_delivery_leased_at_ingest_waits_for_its_lease_to_end,
            a_delivery_is_not_claimed_before_it_is_due,
            a_delivery_put_off_by_its_schedule_comes_due_then,
            spilled_deliveries_are_pulled_by_their_webhook_in_id_order,
            a_deferred_or_parked_delivery_is_not_pulled_early,
            a_deferral_reaches_only_its_own_organizations_deliveries,
            deliveries_deferred_during_a_probe_are_moved_when_it_ends,
            a_probes_answer_moves_every_delivery_of_a_backlog,
            pausing_resuming_and_deleting_reach_every_delivery_of_a_backlog,
            recovering_reaches_every_failed_delivery_of_a_long_history,
            a_purge_racing_a_recovery_keeps_each_event_whole,
            spilled_deliveries_stay_spilled_over_a_restart_and_are_found_again,
            spilled_deliveries_come_due_as_a_fallback_unless_put_off_again,
            the_earliest_due_delivery_names_its_webhook,
            deliveries_of_an_inactive_webhook_are_not_claimed,
            a_claimed_delivery_carries_its_event_as_inserted,
            claim_due_takes_no_more_than_its_limit,
            next_due_at_is_the_earliest_due_time,
            next_due_at_ignores_deliveries_of_an_inactive_webhook,
            a_failed_attempt_schedules_the_next_one,
            success_and_final_failure_end_a_delivery,
            pending_deliveries_are_counted_per_webhook_with_the_oldest,
            attempts_are_listed_in_order_with_their_outcome,
            a_group_of_outcomes_is_recorded_whole,
            health_counts_attempts_and_deliveries_per_hour_of_one_webhook,
            purging_removes_old_finished_history_and_keeps_pending_work,
            a_purge_batch_starts_where_the_last_one_ended,
            a_purge_passes_over_a_large_history_it_may_not_remove,
            the_retention_purge_walks_the_whole_history_in_steps,
            the_retention_purge_reaches_every_organization,
            the_retention_purge_reaches_many_organizations,
            a_delivery_stored_for_a_webhook_just_deleted_is_cancelled,
            deactivating_a_webhook_parks_its_deliveries_until_it_is_activated,
            disabling_a_webhook_parks_it_and_keeps_what_a_user_changed_meanwhile,
            a_lease_given_back_for_an_inactive_webhook_stays_parked,
            a_released_lease_makes_the_delivery_due_again,
            a_delivery_another_holder_leased_is_not_given_back_under_an_old_lease,
            a_lease_is_renewed_only_by_its_holder,
            a_delivery_sent_while_its_webhook_was_deleted_keeps_its_success,
            deliveries_past_their_schedule_end_unsent_under_their_lease,
            a_users_change_does_not_undo_what_happened_since_it_was_read,
            a_late_outcome_does_not_undo_the_next_holders_lease,
            an_attempt_cut_off_by_a_stop_spends_no_retry,
            releasing_all_leases_makes_leased_deliveries_claimable_at_once,
            a_delivery_is_sent_now_unless_a_node_holds_it,
            every_delivery_waiting_for_its_retry_is_made_due_now_when_asked,
            a_delivery_written_before_the_clock_was_set_back_is_retried_when_asked,
            concurrent_sign_ins_of_one_owner_keep_its_limit,
            a_dashboard_session_is_kept_until_it_expires_or_ends,
            organizations_with_enabled_websub_webhooks_are_listed,
            a_subscription_is_saved_only_as_read_and_a_renewal_is_claimed_once,
            dashboard_sessions_past_their_limits_end_oldest_first,
            recovering_brings_back_failed_deliveries_created_since_a_time,
            a_delivery_of_an_inactive_or_deleted_webhook_cannot_be_resent,
            recovering_failed_deliveries_of_an_inactive_webhook_leaves_them_parked,
            delivery_history_is_newest_first_and_filterable,
            deleting_an_organization_removes_everything_it_owns,
            what_writes_racing_an_organizations_deletion_store_is_removed,
            deleting_an_organization_with_a_backlog_removes_all_of_it,
            concurrent_ingests_are_all_committed,
            concurrent_requests_each_get_their_own_answer,
            concurrent_claims_never_lease_a_delivery_twice,
        );
    };
    (@each $backend:ident; $($(#[$meta:meta])* $story:ident),* $(,)?) => {
        mod $backend {
            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $story() {
                    let Some(fresh) = super::$backend().await else {
                        return;
                    };
                    super::$story(fresh.store.clone()).await;
                }
            )*
        }
    };
}

stories!(sqlite);
stories!(postgres);

/// A shared store tells its server's clock, for nodes to compare theirs with; a store only
/// this node uses has none to tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_store_tells_the_database_servers_clock() {
    use herald_core::Clock;
    let alone = sqlite().await.unwrap();
    assert_eq!(alone.store.database_time().await.unwrap(), None);
    let Some(shared) = postgres().await else {
        return;
    };
    let before = herald_core::SystemClock.now();
    let database = shared.store.database_time().await.unwrap().expect("a time");
    let after = herald_core::SystemClock.now();
    // The same machine's clock: between the two readings, give or take a millisecond.
    assert!(
        database.as_millis() >= before.as_millis() - 1
            && database.as_millis() <= after.as_millis() + 1,
        "{before:?} {database:?} {after:?}"
    );
}

/// PostgreSQL stores queued requests in a task of its own. A request whose caller goes away
/// after queueing it (hyper drops a request's future when its client disconnects) is still
/// stored, and its deliveries, leased to a dispatcher that will never hear of them, are made
/// due then, not when their lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gives_back_the_leases_of_a_request_nobody_waits_for() {
    let Some(fresh) = postgres().await else {
        return;
    };
    let store = fresh.store.clone();
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let id = DeliveryId::generate();
    let items = [item(
        event(&acme.id, "evt_1", "invoice.paid", T0),
        &[(&id, &hook.id)],
        true,
    )];
    {
        let queued = store.insert_events(&acme.id, &items, T0, at(LEASE_SECS));
        futures::pin_mut!(queued);
        assert!(
            futures::poll!(&mut queued).is_pending(),
            "a request waits for its commit"
        );
    }
    let mut claimed = vec![];
    for _ in 0..100 {
        claimed = claim(&store, at(1)).await;
        if !claimed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(claimed, vec![id], "due well before its lease ends");
}

/// A stop moves SQLite's write-ahead log into the database file, so that the file alone holds
/// everything; but not into a file put in its place while Herald ran (a restore), which the
/// log does not belong to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_moves_its_log_into_the_file_it_opened_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let wal_len = || std::fs::metadata(dir.path().join("herald.db-wal")).map_or(0, |m| m.len());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    org_with_webhook(&store, "acme").await;
    assert!(wal_len() > 0, "written to the log first");
    assert!(store.checkpoint_on_stop().await.unwrap());
    assert_eq!(wal_len(), 0);

    org_with_webhook(&store, "globex").await;
    let restored = b"not the file Herald opened";
    std::fs::rename(&path, dir.path().join("moved-away.db")).unwrap();
    std::fs::write(&path, restored).unwrap();
    let refused = herald_core::error_chain(&store.checkpoint_on_stop().await.unwrap_err());
    assert!(refused.contains("removed or replaced"), "{refused}");
    assert_eq!(std::fs::read(&path).unwrap(), restored);
}

/// Dropping the cached pages (every minute, `service/memory.rs`) while reads and writes go on
/// beside it loses nothing and leaves every connection working: the writer's part runs as a job
/// of a group commit, the readers' on those not in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_drops_its_cached_pages_while_reads_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("herald.db")).unwrap());
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let mut work = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (shared, hook) = (store.clone(), hook.clone());
        work.spawn(async move {
            deliver(&shared, &hook, &format!("e{i}"), at(1), false).await;
            shared
                .list_webhooks(&hook.org_id, &page(10, None))
                .await
                .unwrap();
        });
        if i % 20 == 0 {
            store.release_memory().await.unwrap();
        }
    }
    while let Some(done) = work.join_next().await {
        done.unwrap();
    }
    store.release_memory().await.unwrap();
    let mut listed = 0;
    let mut cursor = None;
    loop {
        let events = store
            .list_events(&acme.id, &EventFilter::default(), &page(200, cursor))
            .await
            .unwrap();
        listed += events.data.len();
        if events.next_cursor.is_none() {
            break;
        }
        cursor = events.next_cursor;
    }
    assert_eq!(listed, 200);
    assert_eq!(claim(&store, at(2)).await.len(), 200);
}

/// Recording outcomes that meets a deadlock (another transaction locking some of the same
/// deliveries in the other order: an organization's deletion on another node) is done again,
/// not answered as the database being away, which pauses every attempt of the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_records_outcomes_again_after_a_deadlock() {
    let Some((fresh, url, schema)) = postgres_in_schema().await else {
        return;
    };
    let store = fresh.store.clone();
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let first = deliver(&store, &hook, "evt_1", T0, false).await;
    let second = deliver(&store, &hook, "evt_2", T0, false).await;
    let records: Vec<AttemptRecord> = [&first, &second]
        .into_iter()
        .map(|d| first_attempt(&acme.id, d, &server_error(), NextStep::RetryAt(at(60))))
        .collect();
    // Another transaction holds the second delivery, and asks for the first once the recording
    // holds it and waits for the second: PostgreSQL ends the one that waited first.
    let other = admin_client(&url).await;
    let touch = |id: &DeliveryId| {
        format!("UPDATE {schema}.deliveries SET updated_at = updated_at WHERE id = '{id}'")
    };
    other
        .batch_execute(&format!("BEGIN; {}", touch(&second)))
        .await
        .unwrap();
    let recording = {
        let store = store.clone();
        tokio::spawn(async move { store.record_attempts(&records).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    other.batch_execute(&touch(&first)).await.unwrap();
    other.batch_execute("COMMIT").await.unwrap();
    let recorded = recording.await.unwrap();
    assert_eq!(recorded.expect("recorded after the deadlock"), [true, true]);
    for d in [&first, &second] {
        assert_eq!(store.get_delivery(&acme.id, d).await.unwrap().1.len(), 1);
    }
}

/// A purge step that meets a deadlock (an organization's deletion on another node holds an
/// attempt of an event the step holds, and then asks for that event) is taken again, not
/// answered as the database being away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_purges_again_after_a_deadlock() {
    let Some((fresh, url, schema)) = postgres_in_schema().await else {
        return;
    };
    let store = fresh.store.clone();
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    let delivered = deliver(&store, &hook, "evt_1", T0, false).await;
    let ok = AttemptOutcome::succeeded(200, 5, String::new());
    record_first_attempt(&store, &acme.id, &delivered, &ok, NextStep::Succeeded).await;
    let other = admin_client(&url).await;
    other
        .batch_execute(&format!(
            "BEGIN; UPDATE {schema}.attempts SET status = status WHERE delivery_id = '{delivered}'"
        ))
        .await
        .unwrap();
    let purging = {
        let (store, org) = (store.clone(), acme.id.clone());
        tokio::spawn(async move { store.purge_before(Some(&org), at(100), 10, None).await })
    };
    // The step holds the event and waits for the attempt; then the other asks for the event.
    // PostgreSQL ends the one that waited first: the step, unless a loaded machine had it
    // reach its wait later, when the other is ended instead (and the step goes on).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let asked = other
        .batch_execute(&format!(
            "UPDATE {schema}.events SET received_at = received_at WHERE id = 'evt_1'"
        ))
        .await;
    let end = if asked.is_ok() { "COMMIT" } else { "ROLLBACK" };
    other.batch_execute(end).await.unwrap();
    let (purged, _) = purging.await.unwrap().expect("purged after the deadlock");
    // Taken again while the other still held the event (skipped), or after (purged): whole.
    let kept = store.event_deliveries(&acme.id, "evt_1", 10).await;
    match purged.events {
        0 => assert_eq!(kept.unwrap().1.len(), 1),
        _ => assert_not_found(kept),
    }
}

/// Two nodes storing batches with the same event ids in opposite orders (a producer's retry
/// sent to another node, batches sent at once) both succeed, each id stored once: each
/// statement inserts in one order, so they wait for each other rather than deadlock (which
/// PostgreSQL ends by failing one of them, answered as unavailable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stores_the_same_ids_sent_in_opposite_orders_to_two_nodes() {
    let Some((fresh, url, schema)) = postgres_in_schema().await else {
        return;
    };
    let one = fresh.store.clone();
    let separator = if url.contains('?') { '&' } else { '?' };
    let other: Arc<dyn Store> = Arc::new(
        PostgresStore::new(
            &format!("{url}{separator}options=-c%20search_path%3D{schema}"),
            PostgresOptions { pool_size: 4 },
            SecretCipher::none(),
        )
        .unwrap(),
    );
    let (acme, hook) = org_with_webhook(&one, "acme").await;
    let batch = |round: usize, reversed: bool| {
        let mut items: Vec<IngestItem> = (0..100)
            .map(|i| {
                let id = DeliveryId::generate();
                let name = format!("evt_{round}_{i:03}");
                item(
                    event(&acme.id, &name, "invoice.paid", T0),
                    &[(&id, &hook.id)],
                    true,
                )
            })
            .collect();
        if reversed {
            items.reverse();
        }
        items
    };
    for round in 0..8 {
        let (forward, backward) = (batch(round, false), batch(round, true));
        let (a, b) = tokio::join!(
            one.insert_events(&acme.id, &forward, T0, at(LEASE_SECS)),
            other.insert_events(&acme.id, &backward, T0, at(LEASE_SECS)),
        );
        let (a, b) = (
            a.expect("the first node stores"),
            b.expect("the second node stores"),
        );
        let stored = a
            .iter()
            .chain(&b)
            .filter(|r| **r == IngestResult::Stored)
            .count();
        assert_eq!(stored, 100, "round {round}: each id stored once");
    }
}

/// A lock held on the events table (a migration by hand, a long report) makes storing events
/// wait, then time out: the store says so to the readiness check (which its own read would not
/// notice) while they wait and after they failed, until events are stored again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reports_a_locked_events_table_until_events_are_stored_again() {
    let Some((fresh, url, schema)) = postgres_in_schema().await else {
        return;
    };
    let store = fresh.store.clone();
    let (acme, hook) = org_with_webhook(&store, "acme").await;
    assert_eq!(store.write_trouble(), None);
    let locker = admin_client(&url).await;
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE {schema}.events IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .unwrap();
    let posted = |name: &str| {
        let id = DeliveryId::generate();
        [item(
            event(&acme.id, name, "invoice.paid", T0),
            &[(&id, &hook.id)],
            true,
        )]
    };
    let waiting = {
        let (store, org, items) = (store.clone(), acme.id.clone(), posted("evt_1"));
        tokio::spawn(async move { store.insert_events(&org, &items, T0, at(LEASE_SECS)).await })
    };
    // Said while the request still waits, well before it fails (10 s).
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let stalled = store.write_trouble().expect("a stalled store is reported");
    assert!(stalled.contains("have waited"), "{stalled}");
    let stored = waiting.await.unwrap();
    assert!(
        matches!(stored, Err(StoreError::Unavailable(_))),
        "{stored:?}"
    );
    let trouble = store.write_trouble().expect("the failed store is reported");
    assert!(trouble.contains("did not answer in time"), "{trouble}");
    locker.batch_execute("COMMIT").await.unwrap();
    store
        .insert_events(&acme.id, &posted("evt_2"), T0, at(LEASE_SECS))
        .await
        .unwrap();
    assert_eq!(store.write_trouble(), None);
}

/// `tests/fixtures/schema-6.db`: a database written through the API by Herald at commit
/// `eca6e5e` (2026-12-01, schema version 6) with this encryption key: two organizations, two
/// API keys, a custom event type, 12 webhooks (custom headers, a rotated secret, paused,
/// disabled by a 410, WebSub, the Optare, hub and Opal schemes, one deleted), 9 events, 37
/// deliveries (18 pending) and their attempts.
const SCHEMA_6_KEY: &str = "79c65e8234fb51ad742802db8182c78878dae072ce3264b58c562ff894db04e5";

/// Upgrading keeps everything: today's Herald migrates the older database (three migrations,
/// two of which rebuild tables), opens every secret the older one sealed and seals it for its
/// place, and carries on with what was pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_an_older_herald_wrote_is_migrated_with_everything_in_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-6.db");
    std::fs::copy(fixture, &path).unwrap();
    let pending_then: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT COUNT(*) FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.state = 'pending' AND w.active = 1 AND w.deleted_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(pending_then > 0);

    let cipher = SecretCipher::new(Some(SCHEMA_6_KEY), &[]).unwrap();
    let sqlite = SqliteStore::open_with_cipher(&path, cipher).unwrap();
    assert_eq!(sqlite.reencrypt_stale_secrets().await.unwrap(), 11);
    let store: Arc<dyn Store> = Arc::new(sqlite);

    let acme = OrgId::parse("org_01m9370kevxczmx8mhgwjzyh04").unwrap();
    assert_eq!(store.get_org(&acme).await.unwrap().name, "Acme Inc");
    assert_eq!(store.list_api_keys(&acme).await.unwrap().len(), 1);
    let hooks = store.org_webhooks(&acme).await.unwrap();
    let named = |name: &str| hooks.iter().find(|w| w.name == name).unwrap();
    // The secrets shown when they were created (and rotated), the headers as given.
    let ok = named("ok");
    assert_eq!(
        ok.secret,
        "whsec_/fTSuzkQO6Bt0vf0I1XpAmkL0c2LrvBKqISiZShL0y0="
    );
    assert_eq!(
        ok.previous_secret.as_deref(),
        Some("whsec_9T9me48hynCqj868ngVxkUD5M/wODaZav+IfCX8IC2Q=")
    );
    assert_eq!(ok.headers.get("x-custom").map(String::as_str), Some("v1"));
    assert_eq!(
        named("optare").secret,
        "8f01a9b2fff703f11086edb4a10aff89e598ce5ef9d4f7ec07b8c87aa4011a2f"
    );
    assert!(!named("paused").active);

    // Its events are there, and posting one again is still a duplicate.
    let first = store.get_event(&acme, "evt-1").await.unwrap();
    let again = item(Arc::new(first), &[], false);
    assert_eq!(
        store
            .insert_events(&acme, &[again], T0, at(LEASE_SECS))
            .await
            .unwrap(),
        vec![IngestResult::Duplicate]
    );
    // What was pending comes due, each delivery with its event.
    let now = Timestamp::from_millis(i64::MAX / 4);
    let due = store
        .claim_due(now, now.plus_secs(LEASE_SECS), 1000)
        .await
        .unwrap();
    assert_eq!(due.len() as i64, pending_then);
    assert!(due.iter().all(|d| !d.event.id.is_empty()));
}

/// The database behind a story's store, for what no store call can do or tell: a delivery's
/// due time, which says whether it is parked.
enum Backdoor {
    Sqlite(std::path::PathBuf),
    Postgres(tokio_postgres::Client),
}

impl Backdoor {
    /// Sets the delivery's `due_at` to `value` (SQL over its row: `NULL`, `next_attempt_at`).
    async fn set_due_at(&self, id: &DeliveryId, value: &str) {
        match self {
            Self::Sqlite(path) => {
                let sql = format!("UPDATE deliveries SET due_at = {value} WHERE id = ?1");
                rusqlite::Connection::open(path)
                    .unwrap()
                    .execute(&sql, [id.as_str()])
                    .unwrap();
            }
            Self::Postgres(admin) => {
                let sql = format!("UPDATE deliveries SET due_at = {value} WHERE id = $1");
                admin.execute(&sql, &[&id.as_str()]).await.unwrap();
            }
        };
    }

    /// The delivery's `due_at` (`None`: parked).
    async fn due_at(&self, id: &DeliveryId) -> Option<i64> {
        match self {
            Self::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .query_row(
                    "SELECT due_at FROM deliveries WHERE id = ?1",
                    [id.as_str()],
                    |r| r.get(0),
                )
                .unwrap(),
            Self::Postgres(admin) => admin
                .query_one(
                    "SELECT due_at FROM deliveries WHERE id = $1",
                    &[&id.as_str()],
                )
                .await
                .unwrap()
                .get(0),
        }
    }
}

/// Runs a story that reaches behind its store on each backend (PostgreSQL's skipped, with a
/// notice, without a test database).
macro_rules! backdoor_stories {
    ($($sqlite:ident, $postgres:ident => $story:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("herald.db");
            let store = Arc::new(SqliteStore::open(&path).unwrap());
            $story(store, Backdoor::Sqlite(path)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let Some((fresh, url, schema)) = postgres_in_schema().await else {
                return;
            };
            let admin = admin_in_schema(&url, &schema).await;
            $story(fresh.store.clone(), Backdoor::Postgres(admin)).await;
        }
    )*};
}

backdoor_stories! {
    sqlite_puts_back_a_delivery_parked_after_its_webhook_was_activated,
    postgresql_puts_back_a_delivery_parked_after_its_webhook_was_activated
        => a_delivery_parked_after_its_webhook_was_activated_is_put_back;
    sqlite_parks_a_delivery_deferred_after_its_webhook_was_paused,
    postgresql_parks_a_delivery_deferred_after_its_webhook_was_paused
        => a_delivery_deferred_after_its_webhook_was_paused_is_parked;
    sqlite_parks_a_delivery_left_due_after_its_webhook_was_paused,
    postgresql_parks_a_delivery_left_due_after_its_webhook_was_paused
        => a_delivery_left_due_after_its_webhook_was_paused_is_parked;
}

/// A write that raced a webhook's activation parked one of its deliveries after it (what
/// the backdoor does): `unpark_active` puts it back on its schedule, and
/// leaves an inactive webhook's deliveries parked.
async fn a_delivery_parked_after_its_webhook_was_activated_is_put_back(
    store: Arc<dyn Store>,
    backdoor: Backdoor,
) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let stranded = deliver(&store, &hook, "evt_1", T0, false).await;
    backdoor.set_due_at(&stranded, "NULL").await;
    assert!(claim(&store, FAR_FUTURE).await.is_empty(), "parked");
    assert_eq!(store.unpark_active(&hook.id).await.unwrap(), 1);
    assert_eq!(store.unpark_active(&hook.id).await.unwrap(), 0);
    assert_eq!(claim(&store, at(2)).await, vec![stranded]);

    let waiting = deliver(&store, &hook, "evt_2", T0, false).await;
    let inactive = Webhook {
        active: false,
        updated_at: at(3),
        ..hook.clone()
    };
    store.update_webhook(&inactive).await.unwrap();
    assert_eq!(store.unpark_active(&hook.id).await.unwrap(), 0);
    assert!(
        claim(&store, FAR_FUTURE).await.is_empty(),
        "inactive: parked"
    );
    let active = Webhook {
        active: true,
        updated_at: at(4),
        ..hook.clone()
    };
    store.update_webhook(&active).await.unwrap();
    assert_eq!(claim(&store, at(4)).await, vec![waiting]);
}

/// An open circuit gives back a delivery whose webhook was paused while it was held: parked,
/// as its holder would give it back, not due (the pause's walk may be past it, and a due
/// delivery of an inactive webhook is never claimed, only passed over by every look of the
/// scheduler).
async fn a_delivery_deferred_after_its_webhook_was_paused_is_parked(
    store: Arc<dyn Store>,
    backdoor: Backdoor,
) {
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let ids = store_placed(&store, &hook, 1, Placement::Leased).await;
    let paused = Webhook {
        active: false,
        ..hook.clone()
    };
    store.update_webhook(&paused).await.unwrap();
    let deferred = store
        .defer_deliveries(&org.id, &under_first_lease(&ids), at(60))
        .await
        .unwrap();
    assert_eq!(deferred, 1);
    assert_eq!(backdoor.due_at(&ids[0]).await, None, "parked");
    // Resumed: due at the time it was put off to.
    store.update_webhook(&hook).await.unwrap();
    assert_eq!(backdoor.due_at(&ids[0]).await, Some(at(60).as_millis()));
    assert_eq!(claim(&store, at(60)).await, ids);
}

/// A write that raced a webhook's deactivation left one of its deliveries due after it (what
/// the backdoor does): `park_inactive` parks it, and leaves an active webhook's deliveries,
/// and a leased one, alone.
async fn a_delivery_left_due_after_its_webhook_was_paused_is_parked(
    store: Arc<dyn Store>,
    backdoor: Backdoor,
) {
    let (_, hook) = org_with_webhook(&store, "acme").await;
    let stranded = deliver(&store, &hook, "evt_1", T0, false).await;
    let leased = deliver(&store, &hook, "evt_2", T0, true).await;
    assert_eq!(
        store.park_inactive(&hook.id, at(1)).await.unwrap(),
        0,
        "active"
    );
    let paused = Webhook {
        active: false,
        updated_at: at(1),
        ..hook.clone()
    };
    store.update_webhook(&paused).await.unwrap();
    assert_eq!(
        backdoor.due_at(&stranded).await,
        None,
        "parked by the pause"
    );
    backdoor.set_due_at(&stranded, "next_attempt_at").await;
    assert_eq!(store.park_inactive(&hook.id, at(2)).await.unwrap(), 1);
    assert_eq!(store.park_inactive(&hook.id, at(2)).await.unwrap(), 0);
    assert_eq!(backdoor.due_at(&stranded).await, None);
    assert_eq!(
        backdoor.due_at(&leased).await,
        Some(at(LEASE_SECS).as_millis()),
        "leased"
    );
    // Its lease run out (its node stopped): on a store several nodes share, parked too, as no
    // node takes over an inactive webhook's delivery; SQLite's one process gives its own back.
    let lapsed = store
        .park_inactive(&hook.id, at(LEASE_SECS + 1))
        .await
        .unwrap();
    let parked = backdoor.due_at(&leased).await.is_none();
    match backdoor {
        Backdoor::Postgres(_) => assert_eq!((lapsed, parked), (1, true)),
        Backdoor::Sqlite(_) => assert_eq!((lapsed, parked), (0, false)),
    }
    let active = Webhook {
        active: true,
        updated_at: at(2),
        ..hook.clone()
    };
    store.update_webhook(&active).await.unwrap();
    // Resumed, what was parked goes (the one given back too); what is leased waits.
    let mut claimed = claim(&store, at(2)).await;
    let mut expected = vec![stranded];
    expected.extend(parked.then_some(leased));
    claimed.sort();
    expected.sort();
    assert_eq!(claimed, expected);
}

/// The embedded store knows when its newest event was received (the last in sequence, not
/// the latest time: a clock set back stores older times after newer ones), for the start-up
/// check of the clock against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_knows_when_its_newest_event_was_received() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("herald.db")).unwrap());
    assert_eq!(store.newest_event_at().await.unwrap(), None);
    let (_, hook) = org_with_webhook(&store, "acme").await;
    deliver(&store, &hook, "e1", at(100), false).await;
    deliver(&store, &hook, "e2", at(50), false).await;
    assert_eq!(store.newest_event_at().await.unwrap(), Some(at(50)));
}

/// Nodes sharing PostgreSQL take turns to change one organization's configuration: a second
/// node waits while the first holds the turn and gets it once the first lets go; another
/// organization's turn is not held up. (SQLite's one process needs only its own turns.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_postgresql_take_turns_to_change_an_organization() {
    let Some((fresh, url, schema)) = postgres_in_schema().await else {
        return;
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    let other_node = PostgresStore::new(
        &scoped,
        PostgresOptions { pool_size: 1 },
        SecretCipher::none(),
    )
    .unwrap();
    let (acme, globex) = (OrgId::generate(), OrgId::generate());
    let bound = std::time::Duration::from_secs(5);

    let held = fresh.store.org_change_turn(&acme).await.unwrap();
    let mut waiting = std::pin::pin!(other_node.org_change_turn(&acme));
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), &mut waiting)
            .await
            .is_err(),
        "the turn was given twice"
    );
    let other_org = tokio::time::timeout(bound, other_node.org_change_turn(&globex))
        .await
        .expect("another organization's turn is free");
    drop(other_org.unwrap());
    drop(held);
    let taken = tokio::time::timeout(bound, waiting)
        .await
        .expect("the turn comes once the first node lets go");
    drop(taken.unwrap());
    // Let go however it ends: dropped (a request given up), the next one takes it at once.
    let held = other_node.org_change_turn(&acme).await.unwrap();
    drop(held);
    let again = tokio::time::timeout(bound, fresh.store.org_change_turn(&acme)).await;
    assert!(matches!(again, Ok(Ok(_))));
}

/// `herald copy`: the schema-6 database (written through Herald's API), upgraded and copied
/// into an empty PostgreSQL schema, reads the same there through the store, secrets included;
/// what was pending comes due, deliveries a stopped node had leased too; and a second copy
/// into it is refused without changing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_database_copied_into_postgresql_reads_the_same() {
    let Some((_fresh, url, schema)) = postgres_in_schema().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schema-6.db");
    std::fs::copy(fixture, &path).unwrap();
    let cipher = || SecretCipher::new(Some(SCHEMA_6_KEY), &[]).unwrap();
    let sqlite = SqliteStore::open_with_cipher(&path, cipher()).unwrap();
    sqlite.reencrypt_stale_secrets().await.unwrap();
    let sqlite: Arc<dyn Store> = Arc::new(sqlite);
    // A node stopped with three deliveries leased (attempts in flight).
    let now = Timestamp::from_millis(i64::MAX / 4);
    let leased = sqlite
        .claim_due(now, now.plus_secs(LEASE_SECS), 3)
        .await
        .unwrap();
    assert_eq!(leased.len(), 3);
    let ids = |sql: &str| -> Vec<(String, String)> {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut statement = conn.prepare(sql).unwrap();
        statement
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let deliveries = ids("SELECT org_id, id FROM deliveries");
    let events = ids("SELECT org_id, id FROM events");
    let orgs = ids("SELECT id, handle FROM organizations");
    let held =
        ids("SELECT id, id FROM deliveries WHERE state = 'pending' AND lease_until IS NOT NULL");
    assert!(deliveries.len() > 30 && events.len() > 5 && orgs.len() == 2);

    let separator = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{separator}options=-c%20search_path%3D{schema}");
    let target = PostgresStore::new(&scoped, PostgresOptions { pool_size: 2 }, cipher()).unwrap();
    // Without the key its secrets were sealed with: refused, nothing copied (the copy below
    // finds the database empty).
    let keyless = herald_store::copy::sqlite_to_postgres(
        &path,
        &target,
        Arc::new(SecretCipher::none()),
        async { Ok(()) },
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        herald_core::error_chain(&keyless).contains("not configured"),
        "{keyless:?}"
    );
    let mut progress = Vec::new();
    let copied = herald_store::copy::sqlite_to_postgres(
        &path,
        &target,
        Arc::new(cipher()),
        async { Ok(()) },
        |p| {
            progress.push((p.table.to_owned(), p.copied, p.total));
        },
    )
    .await
    .unwrap();
    assert!(held.len() >= 3);
    assert_eq!(copied.released, held.len() as u64);
    let rows = |table: &str| copied.rows.iter().find(|(t, _)| *t == table).unwrap().1;
    assert_eq!(rows("deliveries"), deliveries.len() as u64);
    assert_eq!(rows("events"), events.len() as u64);
    assert!(
        progress.contains(&(
            "deliveries".into(),
            deliveries.len() as u64,
            deliveries.len() as u64
        )),
        "{progress:?}"
    );
    assert_eq!(
        target.reencrypt_stale_secrets().await.unwrap(),
        0,
        "sealed as they were"
    );
    let estimated: f32 = admin_client(&url)
        .await
        .query_one(
            &format!("SELECT reltuples FROM pg_class WHERE oid = '{schema}.deliveries'::regclass"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(estimated as usize, deliveries.len(), "analyzed");
    let postgres: Arc<dyn Store> = Arc::new(target);

    // The same through the store on both sides.
    for (org, _) in &orgs {
        let org = OrgId::parse(org).unwrap();
        assert_eq!(
            postgres.get_org(&org).await.unwrap(),
            sqlite.get_org(&org).await.unwrap()
        );
        let keys = sqlite.list_api_keys(&org).await.unwrap();
        assert_eq!(postgres.list_api_keys(&org).await.unwrap(), keys);
        for key in &keys {
            assert_eq!(
                postgres.find_api_key(&key.key_hash).await.unwrap().as_ref(),
                Some(key)
            );
        }
        assert_eq!(
            postgres.list_event_types(&org).await.unwrap(),
            sqlite.list_event_types(&org).await.unwrap()
        );
        let hooks = sqlite.org_webhooks(&org).await.unwrap();
        assert!(
            postgres.org_webhooks(&org).await.unwrap() == hooks,
            "webhooks differ"
        );
        assert!(hooks.iter().all(|w| !w.secret.is_empty()));
        assert_eq!(
            postgres.org_subscriptions(&org).await.unwrap(),
            sqlite.org_subscriptions(&org).await.unwrap()
        );
    }
    for (org, id) in &events {
        let org = OrgId::parse(org).unwrap();
        let (a, b) = (
            sqlite.get_event(&org, id).await.unwrap(),
            postgres.get_event(&org, id).await.unwrap(),
        );
        assert_eq!(
            serde_json::to_value(&a).unwrap(),
            serde_json::to_value(&b).unwrap()
        );
        assert_eq!(a.data.get(), b.data.get(), "byte for byte");
    }
    for (org, id) in &deliveries {
        let (org, id) = (OrgId::parse(org).unwrap(), DeliveryId::parse(id).unwrap());
        // (The leased ones as put back on their schedule: the copy does what a start would.)
        let (here, attempts) = sqlite.get_delivery(&org, &id).await.unwrap();
        let (there, copied_attempts) = postgres.get_delivery(&org, &id).await.unwrap();
        assert_eq!(there, here);
        assert_eq!(copied_attempts, attempts);
    }
    // Everything pending comes due at once on PostgreSQL, the three leased ones too.
    let pending = sqlite
        .claim_due(now, now.plus_secs(LEASE_SECS), 1000)
        .await
        .unwrap()
        .len();
    let due = postgres
        .claim_due(now, now.plus_secs(LEASE_SECS), 1000)
        .await
        .unwrap();
    assert_eq!(due.len(), pending, "every pending delivery due");
    for d in &leased {
        assert!(due.iter().any(|x| x.delivery_id == d.delivery_id));
    }

    // Again into the same database: refused, and nothing changes.
    let again = PostgresStore::new(&scoped, PostgresOptions { pool_size: 2 }, cipher()).unwrap();
    // What the caller prepares the source with (a migration) does not run for a refused target.
    let prepared = std::sync::atomic::AtomicBool::new(false);
    let refused = herald_store::copy::sqlite_to_postgres(
        &path,
        &again,
        Arc::new(cipher()),
        async {
            prepared.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        },
        |_| {},
    )
    .await
    .unwrap_err();
    assert!(
        herald_core::error_chain(&refused).contains("already holds Herald data"),
        "{refused:?}"
    );
    assert!(!prepared.load(std::sync::atomic::Ordering::SeqCst));
    let still: i64 = admin_client(&url)
        .await
        .query_one(&format!("SELECT count(*) FROM {schema}.deliveries"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(still as usize, deliveries.len());
}

/// A Herald from before deliveries named their event by its sequence number (migration 8),
/// run again on an upgraded SQLite file, stores deliveries without that number: nothing finds
/// them until the next start links them to their events, or fails them where their event is
/// gone (retention purged it under them). Deliveries stored as they should be are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_an_older_herald_stored_unlinked_are_linked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("herald.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let (org, hook) = org_with_webhook(&store, "acme").await;
    let unlinked = deliver(&store, &hook, "evt_1", T0, false).await;
    let linked = deliver(&store, &hook, "evt_2", T0, false).await;
    let orphan = deliver(&store, &hook, "evt_3", T0, false).await;
    // As the older Herald's INSERT leaves them, one of them with its event purged since.
    let older = rusqlite::Connection::open(&path).unwrap();
    older
        .execute(
            "UPDATE deliveries SET event_seq = NULL WHERE event_id IN ('evt_1', 'evt_3')",
            [],
        )
        .unwrap();
    older
        .execute("DELETE FROM events WHERE id = 'evt_3'", [])
        .unwrap();
    assert_eq!(
        claim(&store, T0).await,
        vec![linked.clone()],
        "found by nothing"
    );

    // Restarted once that claim's lease has ended.
    let restarted: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
    let due = restarted
        .claim_due(at(LEASE_SECS), at(2 * LEASE_SECS), 10)
        .await
        .unwrap();
    let mut found: Vec<(DeliveryId, String)> = due
        .iter()
        .map(|d| (d.delivery_id.clone(), d.event.id.clone()))
        .collect();
    found.sort();
    let mut want = vec![(unlinked, "evt_1".to_owned()), (linked, "evt_2".to_owned())];
    want.sort();
    assert_eq!(found, want);
    // The one whose event is gone no longer holds the scheduler's earliest due time.
    let (delivery, _) = restarted.get_delivery(&org.id, &orphan).await.unwrap();
    assert_eq!(delivery.state, DeliveryState::Failed);
    assert_eq!(delivery.last_error.as_deref(), Some("event_missing"));
    // (It was due at T0; the two claimed are leased past that.)
    let next = restarted.next_due_at().await.unwrap();
    assert!(next.is_some_and(|t| t >= at(LEASE_SECS)), "{next:?}");
}

/// The directory's cache over a real store: requests that miss it together share one load of
/// their organization (they get the very same snapshot), each organization its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_miss_the_directory_together_share_one_load() {
    use herald_core::directory::Directory;
    let fresh = sqlite().await.unwrap();
    let store = fresh.store.clone();
    let (acme, _) = org_with_webhook(&store, "acme").await;
    let (globex, _) = org_with_webhook(&store, "globex").await;
    let directory = Arc::new(Directory::new(store));
    for _ in 0..3 {
        let loads = (0..32).map(|i| {
            let directory = directory.clone();
            let org = if i % 2 == 0 {
                acme.id.clone()
            } else {
                globex.id.clone()
            };
            tokio::spawn(async move { (org.clone(), directory.snapshot(&org).await.unwrap()) })
        });
        let loaded: Vec<_> = futures::future::join_all(loads)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        for org in [&acme.id, &globex.id] {
            let mine: Vec<_> = loaded.iter().filter(|(o, _)| o == org).collect();
            assert_eq!(mine.len(), 16);
            assert!(
                mine.iter().all(|(_, s)| Arc::ptr_eq(s, &mine[0].1)),
                "one load, shared"
            );
            assert_eq!(&mine[0].1.org.id, org);
        }
        directory.invalidate_all();
    }
}
