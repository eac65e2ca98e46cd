//! An organization's events: what arrived (newest first), and where one went.

use serde::Serialize;

use herald_core::delivery::Delivery;
use herald_core::event::EventSummary;
use herald_core::store::EventFilter;
use herald_core::{Invalid, OrgId, Page, PageRequest};

use super::{Scope, ServiceError, ServiceResult};
use crate::app::AppState;

/// For a filter by type that found nothing: an error if the organization has no such type
/// (most likely a misspelling, with what it may have meant), `Ok` if the list is just empty.
pub(super) fn refuse_unknown_type(
    snapshot: &herald_core::directory::OrgSnapshot,
    wanted: &str,
    field: &'static str,
    listed: &str,
) -> ServiceResult<()> {
    if snapshot.resolve_type(wanted).is_some() {
        return Ok(());
    }
    Err(Invalid::new(
        field,
        format!(
            "'{}' is not an event type of this organization{}, and no {listed} has it",
            herald_core::truncate_for_message(wanted),
            snapshot.not_a_type_because(wanted, true)
        ),
    )
    .into())
}

/// The organization's events, newest first, as `filter` says: what arrived, for "did the
/// producer send it?", without knowing an event's id.
pub async fn list_events(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    filter: EventFilter,
    page: PageRequest,
) -> ServiceResult<Page<EventSummary>> {
    // The organization first (its cached copy): one deleted is not found, though another
    // node's writes that raced its deletion may leave events of it for a moment.
    let snapshot = super::org_snapshot(state, scope, org).await?;
    let search = filter.event_type.is_some();
    let list = {
        let (store, org, filter, page) = (
            state.store.clone(),
            org.clone(),
            filter.clone(),
            page.clone(),
        );
        async move {
            store
                .list_events(&org, &filter, &page)
                .await
                .map_err(ServiceError::from_store("organization"))
        }
    };
    let found = state.searches.run_if(search, org, list).await?;
    // An empty first page: the type may be misspelt.
    if found.data.is_empty()
        && page.cursor.is_none()
        && let Some(wanted) = &filter.event_type
    {
        refuse_unknown_type(&snapshot, wanted, "type", "event")?;
    }
    Ok(found)
}

/// An event and where it went: one delivery per webhook it was sent to.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventDeliveries {
    /// The event as stored: `id`, `type`, `occurred_at`, `received_at`, `correlation_id`,
    /// `data`.
    #[schema(value_type = Object)]
    pub event: herald_core::event::Event,
    /// Its deliveries, oldest first: the first 1,000.
    pub deliveries: Vec<Delivery>,
    /// Whether it has more deliveries than these (an organization with more webhooks on the
    /// type than 1,000; `HERALD_MAX_WEBHOOKS_PER_ORG` allows it).
    pub truncated: bool,
}

/// The most deliveries of one event shown at once.
pub const EVENT_DELIVERIES_SHOWN: u32 = 1_000;
const _: () = assert!(
    EVENT_DELIVERIES_SHOWN == 1_000,
    "EventDeliveries' descriptions in the OpenAPI document say 1,000"
);

/// Where an event went: for "did the customer's endpoint get it?", without knowing which
/// webhook to look in.
pub async fn of_event(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    event_id: &str,
) -> ServiceResult<EventDeliveries> {
    scope.check_org(org)?;
    let (event, mut deliveries) = state
        .store
        .event_deliveries(org, event_id, EVENT_DELIVERIES_SHOWN + 1)
        .await
        .map_err(ServiceError::from_store("event"))?;
    let truncated = deliveries.len() > EVENT_DELIVERIES_SHOWN as usize;
    deliveries.truncate(EVENT_DELIVERIES_SHOWN as usize);
    Ok(EventDeliveries {
        event,
        deliveries,
        truncated,
    })
}
