//! Delivery history: `/v1/orgs/{org}/webhooks/{id}/deliveries`, `/v1/orgs/{org}/deliveries/{id}`,
//! resend, retrying what waits, and recover.

use super::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use herald_core::delivery::{Delivery, DeliveryState};
use herald_core::store::{DeliveryFilter, PurgeCount};
use herald_core::{DeliveryId, Page, Timestamp};

use super::ApiResult;
use super::body::{JsonBody, NoBody};
use super::caller::Caller;
use super::extract::{PathParams, QueryParams, path_id};
use super::openapi::{OrgEventPath, OrgItemPath, OrgPath};
use super::orgs::org_id;
use super::webhooks::webhook_id;
use crate::app::AppState;
use crate::service::deliveries::{DeliveryDetail, RetriedWaiting};
use crate::service::events::EventDeliveries;
use crate::service::{ServiceError, deliveries, retention};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_deliveries))
        .routes(routes!(recover_deliveries))
        .routes(routes!(retry_waiting))
        .routes(routes!(get_delivery))
        .routes(routes!(get_event_deliveries))
        .routes(routes!(retry_delivery))
        .routes(routes!(purge_history))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// At most this many (1 to 200, 50 by default).
    #[param(minimum = 1, maximum = 200)]
    #[serde(default, deserialize_with = "super::whole_number")]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only deliveries in this state: pending, succeeded, failed, cancelled or skipped.
    #[param(value_type = Option<herald_core::delivery::DeliveryState>)]
    state: Option<String>,
    /// Only deliveries of this event type.
    event_type: Option<String>,
}

/// Lists a webhook's deliveries, newest first.
#[utoipa::path(get, path = "/v1/orgs/{org}/webhooks/{id}/deliveries", tag = "deliveries",
    params(OrgItemPath, ListQuery),
    responses(
        (status = 200, description = "A page of deliveries", body = Page<Delivery>),
        (status = 400, description = "The query string is not valid", body = super::ErrorBody),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
        (status = 422, description = "A filter, `limit` or `cursor` is not valid", body = super::ErrorBody),
    ))]
async fn list_deliveries(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<Delivery>>> {
    let page = super::page_request(q.limit, q.cursor, DeliveryId::parse)?;
    let filter = DeliveryFilter {
        state: q
            .state
            .as_deref()
            .map(DeliveryState::parse)
            .transpose()
            .map_err(ServiceError::from)?,
        event_type: q
            .event_type
            .map(|t| herald_core::event_type::parse_type_name(&t, "event_type"))
            .transpose()
            .map_err(ServiceError::from)?,
    };
    let (org, webhook) = (org_id(&path.org)?, webhook_id(&path.id)?);
    let list = deliveries::list(&state, &scope, &org, &webhook, filter, page).await?;
    Ok(Json(list))
}

fn delivery_id(raw: &str) -> ApiResult<DeliveryId> {
    path_id(raw, "delivery", DeliveryId::PREFIX, DeliveryId::parse)
}

/// Reads a delivery with every attempt.
#[utoipa::path(get, path = "/v1/orgs/{org}/deliveries/{id}", tag = "deliveries",
    params(OrgItemPath),
    responses(
        (status = 200, description = "The delivery and its attempts, oldest first", body = DeliveryDetail),
        (status = 404, description = "No such delivery visible to the caller", body = super::ErrorBody),
    ))]
async fn get_delivery(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
) -> ApiResult<Json<DeliveryDetail>> {
    let (org, id) = (org_id(&path.org)?, delivery_id(&path.id)?);
    Ok(Json(deliveries::get(&state, &scope, &org, &id).await?))
}

/// Reads an event and its deliveries: where it went, one delivery per webhook, without
/// knowing which webhook to look in.
#[utoipa::path(get, path = "/v1/orgs/{org}/events/{id}", tag = "deliveries",
    params(OrgEventPath),
    responses(
        (status = 200, description = "The event and its deliveries, oldest first (the first 1,000; `truncated` says whether there are more)", body = EventDeliveries),
        (status = 404, description = "No such event kept for the organization (events are kept for HERALD_RETENTION_DAYS)", body = super::ErrorBody),
    ))]
async fn get_event_deliveries(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgEventPath>,
) -> ApiResult<Json<EventDeliveries>> {
    let org = org_id(&path.org)?;
    // An id no event can have (a space, over 255 characters) names nothing.
    let id = herald_core::event::parse_event_id(&path.id)
        .map_err(|_| ServiceError::NotFound("event"))?;
    Ok(Json(
        crate::service::events::of_event(&state, &scope, &org, &id).await?,
    ))
}

/// Sends a delivery now. A finished one (succeeded, failed, cancelled, skipped) is sent again
/// with a fresh retry schedule. A pending one waiting for its next attempt (a retry, or its
/// endpoint's cool-down) has an attempt now, which its schedule does not count (if it fails,
/// the step it waited for comes again, from then): for an endpoint just fixed. Either way the attempt goes ahead of the webhook's backlog, and through
/// an open circuit as its probe, unless a probe is already out: it then waits for that one's
/// answer and, if it fails, for the next cool-down's end.
#[utoipa::path(post, path = "/v1/orgs/{org}/deliveries/{id}/retry", tag = "deliveries",
    params(OrgItemPath),
    responses(
        (status = 200, description = "The delivery as sent: pending, with the attempts made before this one", body = DeliveryDetail),
        (status = 404, description = "No such delivery visible to the caller", body = super::ErrorBody),
        (status = 409, description = "An attempt of the delivery is already queued or under way, or its webhook is gone or inactive", body = super::ErrorBody),
    ))]
async fn retry_delivery(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    _: NoBody,
) -> ApiResult<Json<DeliveryDetail>> {
    let (org, id) = (org_id(&path.org)?, delivery_id(&path.id)?);
    Ok(Json(deliveries::resend(&state, &scope, &org, &id).await?))
}

/// Attempts now every pending delivery of the webhook that waits for its next attempt (a
/// retry, or its endpoint's cool-down): for an endpoint just fixed. Their schedules do not count
/// that attempt (one that fails waits for the step it waited for again, from then), so pressing
/// while the endpoint still fails ends no delivery early. Behind this node's open circuit, one
/// of them goes first as its probe and the rest follow it once it succeeds. Deliveries already
/// queued or under way go on as they are; failed ones are sent again by `recover`.
#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks/{id}/retry", tag = "deliveries",
    params(OrgItemPath),
    responses(
        (status = 200, description = "How many were made due now, and whether this node's circuit holds them for a probe", body = RetriedWaiting),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
        (status = 409, description = "The webhook is inactive: its deliveries wait, parked, until it is activated", body = super::ErrorBody),
    ))]
async fn retry_waiting(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    _: NoBody,
) -> ApiResult<Json<RetriedWaiting>> {
    let (org, webhook) = (org_id(&path.org)?, webhook_id(&path.id)?);
    Ok(Json(
        deliveries::retry_waiting(&state, &scope, &org, &webhook).await?,
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RecoverBody {
    /// An RFC 3339 time: failed deliveries created since then are sent again.
    #[schema(example = "2026-01-31T00:00:00Z", format = DateTime)]
    since: String,
    /// The skipped ones too (never sent: their WebSub channel was not verified), once the
    /// endpoint has confirmed its channels. Default `false`.
    #[serde(default)]
    include_skipped: bool,
}

#[derive(Debug, Serialize, ToSchema)]
struct Recovered {
    /// How many failed deliveries were scheduled again.
    recovered: u64,
    /// Set while this node's circuit for the endpoint is open (its latest requests failed):
    /// they go once a probe succeeds, at this time, or now with `POST …/webhooks/{id}/retry`.
    #[serde(skip_serializing_if = "Option::is_none")]
    circuit_open_until: Option<Timestamp>,
}

/// Sends again every failed delivery of the webhook created since a time.
#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks/{id}/recover", tag = "deliveries",
    params(OrgItemPath),
    request_body = RecoverBody,
    responses(
        (status = 200, description = "How many were scheduled again", body = Recovered),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
        (status = 422, description = "`since` is missing, null or not an RFC 3339 time", body = super::ErrorBody),
    ))]
async fn recover_deliveries(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    JsonBody(body): JsonBody<RecoverBody>,
) -> ApiResult<Json<Recovered>> {
    let since = Timestamp::parse_rfc3339(&body.since, "since").map_err(ServiceError::from)?;
    let (org, webhook) = (org_id(&path.org)?, webhook_id(&path.id)?);
    let recovery =
        deliveries::recover(&state, &scope, &org, &webhook, since, body.include_skipped).await?;
    Ok(Json(Recovered {
        recovered: recovery.recovered,
        circuit_open_until: recovery.circuit_open_until,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    /// An RFC 3339 time: finished history received before it is deleted.
    #[schema(example = "2026-01-01T00:00:00Z", format = DateTime)]
    before: String,
}

#[derive(Debug, Serialize, ToSchema)]
struct Purged {
    /// What was deleted.
    purged: PurgeCount,
}

/// Deletes the organization's finished history received before a time. Pending work is kept.
#[utoipa::path(post, path = "/v1/orgs/{org}/purge", tag = "deliveries",
    params(OrgPath),
    request_body = PurgeBody,
    responses(
        (status = 200, description = "How much was deleted", body = Purged),
        (status = 404, description = "No such organization visible to the caller", body = super::ErrorBody),
        (status = 422, description = "`before` is missing, null or not an RFC 3339 time", body = super::ErrorBody),
    ))]
async fn purge_history(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
    JsonBody(body): JsonBody<PurgeBody>,
) -> ApiResult<Json<Purged>> {
    let before = Timestamp::parse_rfc3339(&body.before, "before").map_err(ServiceError::from)?;
    let purged = retention::purge_org(&state, &scope, &org_id(&path.org)?, before).await?;
    Ok(Json(Purged { purged }))
}
