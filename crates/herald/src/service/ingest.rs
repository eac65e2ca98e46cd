//! Ingest: check a producer's events against the organization's types, fan each out to the
//! active webhooks that want it, store events and deliveries durably in one transaction, and only
//! then hand the deliveries to the dispatcher in memory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

use herald_core::directory::OrgSnapshot;
use herald_core::event::{Event, NewEvent};
use herald_core::event_type::{self, check_against_schema};
use herald_core::store::{
    ConfigMark, DueDelivery, IngestItem, IngestResult, NewDelivery, Placement, StoreError,
};
use herald_core::{DeliveryId, Invalid, OrgId, Timestamp};

use super::cancel_safe::GiveBackIfDropped;
use super::{Scope, ServiceError, ServiceResult};
use crate::app::AppState;

/// The most events one request may carry.
pub const MAX_EVENTS_PER_REQUEST: usize = 1000;

/// What happened to one posted event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestedEvent {
    pub id: String,
    /// True when the id was already used: nothing was stored for it this time.
    pub duplicate: bool,
    /// Set on a duplicate whose content is not the stored event's: what differs. The id was
    /// likely reused for another event, which was not stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
    /// Deliveries created for it (to be attempted).
    pub deliveries: usize,
    /// Deliveries recorded as skipped, not attempted (a WebSub channel not verified).
    pub skipped: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestReport {
    pub events: Vec<IngestedEvent>,
    /// Deliveries created in all.
    pub deliveries: usize,
}

/// Ingests a request body's events, each as its text: one event object (`batch` false), or an
/// array of them. All or nothing.
pub async fn ingest(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    raw_events: Vec<&RawValue>,
    batch: bool,
) -> ServiceResult<IngestReport> {
    scope.check_org(org)?;
    if raw_events.is_empty() {
        return Err(Invalid::new("", "the batch is empty; send at least one event").into());
    }
    if raw_events.len() > MAX_EVENTS_PER_REQUEST {
        return Err(Invalid::new(
            "",
            format!("a batch holds at most {MAX_EVENTS_PER_REQUEST} events; split it"),
        )
        .into());
    }
    ingest_values(state, org, raw_events, batch, Origin::Producer, |raw| {
        NewEvent::parse_text(raw)
    })
    .await
}

/// The events of a request refused so far: the first few, and how many.
#[derive(Default)]
struct Refusals {
    listed: Vec<ServiceError>,
    total: usize,
}

impl Refusals {
    fn add(&mut self, e: ServiceError) {
        self.total += 1;
        if self.listed.len() < super::MAX_LISTED_REFUSALS {
            self.listed.push(e);
        }
    }

    /// The answer: one refusal as itself, several as a list.
    fn into_error(mut self) -> Option<ServiceError> {
        match self.total {
            0 => None,
            1 => self.listed.pop(),
            total => Some(ServiceError::EventsRefused {
                listed: self.listed,
                total,
            }),
        }
    }
}

/// Who posts an event: producers may not use Herald's reserved types; Herald itself may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Producer,
    Herald,
}

/// Ingests events posted as `T` (text or trees), each turned into a [`NewEvent`] by `parse`:
/// each checked and fanned out, all stored in one write, then handed to the dispatcher.
pub(crate) async fn ingest_values<T>(
    state: &AppState,
    org: &OrgId,
    raw_events: Vec<T>,
    batch: bool,
    origin: Origin,
    parse: impl Fn(T) -> Result<NewEvent, Invalid>,
) -> ServiceResult<IngestReport> {
    let mut snapshot = state
        .directory
        .snapshot(org)
        .await
        .map_err(ServiceError::from_store("organization"))?;
    let now = state.clock.now();
    let mut items = Vec::with_capacity(raw_events.len());
    // Which events said when they occurred (only then does a duplicate's time count).
    let mut occurred_given = Vec::with_capacity(raw_events.len());
    let mut read_again = false;
    // Every event of a batch is checked, and every one refused is told (up to a limit): a
    // producer mends them all in one go rather than one per request.
    let mut refused = Refusals::default();
    for (i, raw) in raw_events.into_iter().enumerate() {
        let position = batch.then_some(i);
        let new = match parse(raw) {
            Ok(new) => new,
            Err(e) => {
                refused.add(at(position, e).into());
                continue;
            }
        };
        let checked = check(&snapshot, org, &new.event_type, &new.data, origin, position);
        let checked = match checked {
            // A type another node registered (or a schema it changed) a moment ago, its
            // notice not here yet: refused only as the store has the organization now.
            Err(ServiceError::UnknownEventType { .. } | ServiceError::SchemaViolation(_))
                if !read_again && changed_since(state, org, &snapshot).await? =>
            {
                read_again = true;
                snapshot = read_afresh(state, org).await?;
                fan_out_again(&snapshot, org, &mut items, batch, origin, now)?;
                check(&snapshot, org, &new.event_type, &new.data, origin, position)
            }
            checked => checked,
        };
        let channel = match checked {
            Ok(channel) => channel,
            Err(
                e @ (ServiceError::Invalid(_)
                | ServiceError::UnknownEventType { .. }
                | ServiceError::SchemaViolation(_)),
            ) => {
                refused.add(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if refused.total > 0 {
            // Nothing is stored: the rest are only checked.
            continue;
        }
        occurred_given.push(new.occurred_at.is_some());
        let event = Arc::new(new.into_event(org.clone(), now));
        let deliveries = fan_out(&snapshot, &event, channel.as_deref(), now);
        items.push(IngestItem { event, deliveries });
    }
    if let Some(refusal) = refused.into_error() {
        return Err(refusal);
    }
    let stored = match store(state, org, &mut items, snapshot.config_mark.as_ref(), now).await? {
        Some(stored) => stored,
        None => {
            // Another node changed the organization after this node's copy was read, and its
            // notice had not come yet: what the fan-out used may miss a webhook created or
            // switched on before this request was sent. Read again (after this request began,
            // so with every change answered before it) and fan out again; stored without the
            // check, as any change committed from now on is one made while this request runs.
            let snapshot = read_afresh(state, org).await?;
            fan_out_again(&snapshot, org, &mut items, batch, origin, now)?;
            store(state, org, &mut items, None, now)
                .await?
                .ok_or(ServiceError::Internal(StoreError::DirectoryChanged))?
        }
    };
    let Stored {
        results,
        overrun,
        lease_until,
    } = stored;

    // Only noted now: what the answer says of duplicates is read after the handoff below, so
    // that a client gone meanwhile cannot strand the new deliveries (nothing may wait between
    // the store's answer and the handoff).
    let duplicates: Vec<Duplicate> = items
        .iter()
        .zip(&results)
        .zip(&occurred_given)
        .enumerate()
        .filter(|(_, ((_, r), _))| **r == IngestResult::Duplicate)
        .map(|(i, ((item, _), given))| (i, item.event.clone(), *given))
        .collect();
    let mut report = hand_off(state, org, items, &results, now, lease_until, overrun);
    for (i, mismatch) in mismatches(state, org, duplicates).await {
        report.events[i].mismatch = Some(mismatch);
    }
    state.metrics.events_stored(
        origin == Origin::Herald,
        report.events.iter().filter(|e| !e.duplicate).count(),
        report.deliveries,
    );
    Ok(report)
}

/// Whether the organization's configuration changed after `snapshot` was read, as far as the
/// store knows (where processes share it; never where one owns it).
async fn changed_since(
    state: &AppState,
    org: &OrgId,
    snapshot: &OrgSnapshot,
) -> ServiceResult<bool> {
    match &snapshot.config_mark {
        Some(seen) => state
            .store
            .changed_since(org, seen)
            .await
            .map_err(ServiceError::from_store("organization")),
        None => Ok(false),
    }
}

/// The organization as the store has it now, read past this node's copy.
async fn read_afresh(state: &AppState, org: &OrgId) -> ServiceResult<Arc<OrgSnapshot>> {
    state.directory.invalidate(org);
    state
        .directory
        .snapshot(org)
        .await
        .map_err(ServiceError::from_store("organization"))
}

/// Checks the events of `items` again and fans them out anew, from `snapshot`.
fn fan_out_again(
    snapshot: &OrgSnapshot,
    org: &OrgId,
    items: &mut [IngestItem],
    batch: bool,
    origin: Origin,
    now: Timestamp,
) -> ServiceResult<()> {
    for (i, item) in items.iter_mut().enumerate() {
        let (event, position) = (&item.event, batch.then_some(i));
        let channel = check(
            snapshot,
            org,
            &event.event_type,
            &event.data,
            origin,
            position,
        )?;
        item.deliveries = fan_out(snapshot, event, channel.as_deref(), now);
    }
    Ok(())
}

/// What [`store`] stored.
struct Stored {
    results: Vec<IngestResult>,
    /// A webhook within its share was let past the memory budget ([`hand_off`]).
    overrun: bool,
    lease_until: Timestamp,
}

/// Places the fanned-out events' deliveries (held in memory, or spilled to the store if the
/// webhook has more than its share there) and stores them, if the organization has not changed
/// since `seen` ([`herald_core::store::Store::insert_events_unless_changed`]): `None` if it has, with
/// nothing stored.
async fn store(
    state: &AppState,
    org: &OrgId,
    items: &mut [IngestItem],
    seen: Option<&ConfigMark>,
    now: Timestamp,
) -> ServiceResult<Option<Stored>> {
    check_fan_out(state, org, items).await?;
    let overrun = state.dispatcher.place(items);
    let lease_until = state.lease_until(now);
    let handing_off = GiveBackIfDropped::items(state, org, items, now, lease_until);
    let stored = state
        .store
        .insert_events_unless_changed(org, seen, items, now, lease_until)
        .await;
    handing_off.disarm();
    match stored {
        Ok(results) => Ok(Some(Stored {
            results,
            overrun,
            lease_until,
        })),
        Err(StoreError::DirectoryChanged) => Ok(None),
        Err(e) => Err(ServiceError::from_store("organization")(e)),
    }
}

/// Refuses a request whose events would become more deliveries than one request may create
/// (`HERALD_MAX_DELIVERIES_PER_REQUEST`). Events stored already create none and do not count:
/// a batch sent again after its answer was lost is answered, not refused because the
/// organization has gained a webhook since. They are looked up only when the count is over.
async fn check_fan_out(state: &AppState, org: &OrgId, items: &[IngestItem]) -> ServiceResult<()> {
    let most = state.settings.limits.max_deliveries_per_request as usize;
    let total: usize = items.iter().map(|i| i.deliveries.len()).sum();
    if total <= most || items.len() < 2 {
        return Ok(());
    }
    let ids: Vec<String> = items.iter().map(|i| i.event.id.clone()).collect();
    let stored: HashSet<String> = state
        .store
        .get_events(org, &ids)
        .await
        .map_err(ServiceError::from_store("organization"))?
        .into_iter()
        .map(|e| e.id)
        .collect();
    let mut fanned_out = 0usize;
    let mut first_new = true;
    for (i, item) in items.iter().enumerate() {
        if stored.contains(&item.event.id) {
            continue;
        }
        fanned_out += item.deliveries.len();
        // The first event always goes, whatever its fan-out: sending fewer must be possible.
        if fanned_out > most && !first_new {
            let not_counted = if stored.is_empty() {
                ""
            } else {
                " (not counting those stored already)"
            };
            return Err(ServiceError::TooManyDeliveries(format!(
                "the events of this request would become more than {most} deliveries, the \
                 most one request may create (HERALD_MAX_DELIVERIES_PER_REQUEST): each event \
                 becomes a delivery for every webhook subscribed to it, and the first {} \
                 events alone make {fanned_out}{not_counted}; send fewer events per request",
                i + 1
            )));
        }
        first_new = false;
    }
    Ok(())
}

/// An error about the event at `position` in a batch (`None`: the request's only event).
fn at(position: Option<usize>, e: Invalid) -> Invalid {
    match position {
        Some(i) => e.within(&format!("[{i}]")),
        None => e,
    }
}

/// Checks that the organization may send the event: its type is known and not reserved for
/// Herald (unless Herald sends it), and its data fits the type's schema. Answers the type's
/// channel.
fn check(
    snapshot: &OrgSnapshot,
    org: &OrgId,
    type_name: &str,
    data: &RawValue,
    origin: Origin,
    position: Option<usize>,
) -> ServiceResult<Option<String>> {
    if origin == Origin::Producer && event_type::is_reserved(type_name) {
        return Err(at(
            position,
            Invalid::new(
                "type",
                format!("'{type_name}' is reserved for Herald's own events"),
            ),
        )
        .into());
    }
    let Some(resolved) = snapshot.resolve_type(type_name) else {
        return Err(ServiceError::UnknownEventType {
            because: snapshot.not_a_type_because(type_name, false),
            name: type_name.to_owned(),
            org: org.clone(),
            field: match position {
                Some(i) => format!("[{i}].type"),
                None => "type".into(),
            },
        });
    };
    if let Some(validator) = resolved.validator {
        // The stored form is what is checked: what every receiver gets.
        let data: Value = serde_json::from_str(data.get()).map_err(|e| {
            at(
                position,
                Invalid::new("data", format!("could not be read back: {e}")),
            )
        })?;
        check_against_schema(validator, type_name, &data)
            .map_err(|e| ServiceError::SchemaViolation(at(position, e)))?;
    }
    Ok(resolved.channel.map(str::to_owned))
}

/// A new delivery of `event` for each active webhook that wants it (on `channel`), held in
/// memory unless its webhook's WebSub channel is not verified (recorded skipped) or its
/// schedule's first delay is not zero (left to the scheduler).
fn fan_out(
    snapshot: &OrgSnapshot,
    event: &Event,
    channel: Option<&str>,
    now: Timestamp,
) -> Vec<NewDelivery> {
    snapshot
        .subscribers(&event.event_type, channel)
        .map(|w| {
            let skip = snapshot.skipped_because(w, channel, now);
            // The schedule's first delay counts from ingest.
            let not_before = match w.first_delay_secs() {
                0 => None,
                secs => Some(now.plus_secs(i64::from(secs))),
            };
            NewDelivery {
                id: DeliveryId::generate(),
                webhook_id: w.id.clone(),
                placement: Placement::Leased,
                skip,
                not_before,
            }
        })
        .collect()
}

/// Hands the stored events' deliveries over: those held go to the dispatcher's queues, those
/// spilled are noted for their webhooks, and the scheduler is woken for delayed ones (and if
/// `overrun`: a webhook within its share was let past the memory budget, and others give room
/// back). Answers what became of each event. Nothing here waits: see the caller.
fn hand_off(
    state: &AppState,
    org: &OrgId,
    items: Vec<IngestItem>,
    results: &[IngestResult],
    now: Timestamp,
    lease_until: Timestamp,
    overrun: bool,
) -> IngestReport {
    let mut report = IngestReport {
        events: Vec::with_capacity(items.len()),
        deliveries: 0,
    };
    let mut due = Vec::with_capacity(items.iter().map(|i| i.deliveries.len()).sum());
    let mut spilled = Vec::new();
    let mut delayed_total = 0;
    for (item, result) in items.into_iter().zip(results) {
        let stored = *result == IngestResult::Stored;
        let before = due.len() + spilled.len();
        let (mut skipped, mut delayed) = (0, 0);
        if stored {
            for d in item.deliveries {
                if d.skip.is_some() {
                    skipped += 1;
                    continue;
                }
                if d.not_before.is_some() {
                    delayed += 1;
                    continue;
                }
                if d.placement == Placement::Spilled {
                    spilled.push((d.webhook_id, d.id));
                    continue;
                }
                due.push(DueDelivery::new(
                    d.id,
                    org.clone(),
                    d.webhook_id,
                    item.event.clone(),
                    now,
                ));
            }
        }
        let sent = due.len() + spilled.len() - before + delayed;
        delayed_total += delayed;
        report.deliveries += sent;
        report.events.push(IngestedEvent {
            id: item.event.id.clone(),
            duplicate: !stored,
            mismatch: None,
            deliveries: sent,
            skipped,
        });
    }
    if !due.is_empty() {
        state.dispatcher.enqueue(due, lease_until);
    }
    if !spilled.is_empty() {
        state.dispatcher.note_new_spilled(&spilled);
    }
    if overrun || delayed_total > 0 {
        // Delayed deliveries: the scheduler sleeps until the earliest due time it knows of.
        state.dispatcher.wake_delivery_scheduler();
    }
    report
}

/// A duplicate event: its place in the request, the event as posted, and whether it said when
/// it occurred.
type Duplicate = (usize, Arc<Event>, bool);

/// What differs between each duplicate and the event stored under its id, by the duplicate's
/// place in the request (those that match are absent). A producer retrying sends the same event
/// again; one that reuses an id for another event would otherwise see that event silently
/// dropped, so the answer and the log say so. Only duplicates are read back, after the commit:
/// the usual path pays nothing.
async fn mismatches(
    state: &AppState,
    org: &OrgId,
    duplicates: Vec<Duplicate>,
) -> HashMap<usize, String> {
    if duplicates.is_empty() {
        return HashMap::new();
    }
    let ids: Vec<String> = duplicates.iter().map(|(_, e, _)| e.id.clone()).collect();
    let stored = match state.store.get_events(org, &ids).await {
        Ok(stored) => stored,
        Err(e) => {
            // The events are stored; only the comparison is lost.
            tracing::warn!(org = %org, error = %e, "could not read back duplicate events to compare them");
            return HashMap::new();
        }
    };
    let stored: HashMap<&str, &Event> = stored.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut found = HashMap::new();
    let mut example = None;
    for (i, posted, occurred_given) in &duplicates {
        let Some(kept) = stored.get(posted.id.as_str()) else {
            continue;
        };
        let differs = differences(kept, posted, *occurred_given);
        if !differs.is_empty() {
            example.get_or_insert_with(|| posted.id.clone());
            found.insert(
                *i,
                format!(
                    "the event already stored under this id differs in its {}; nothing was \
                     stored for this one (if it is another event, give it an id of its own)",
                    in_words(&differs)
                ),
            );
        }
    }
    if let Some(example) = example {
        tracing::warn!(
            org = %org,
            count = found.len(),
            example = %example,
            "events were posted with the ids of stored events but other content; they were not stored (duplicates)"
        );
    }
    found
}

/// The fields of `posted` that are not those of `kept`, the event stored under the same id.
fn differences(kept: &Event, posted: &Event, occurred_given: bool) -> Vec<&'static str> {
    let mut differs = Vec::new();
    if kept.event_type != posted.event_type {
        differs.push("type");
    }
    if kept.data.get() != posted.data.get() && !same_json(kept.data.get(), posted.data.get()) {
        differs.push("data");
    }
    if kept.correlation_id != posted.correlation_id {
        differs.push("correlation_id");
    }
    // Stored to the millisecond.
    if occurred_given && kept.occurred_at.as_millis() != posted.occurred_at.as_millis() {
        differs.push("occurred_at");
    }
    differs
}

/// `a`, `a and b`, `a, b and c`.
fn in_words(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// Whether two JSON texts hold the same value (objects' keys in any order).
fn same_json(a: &str, b: &str) -> bool {
    match (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}
