//! `/v1/orgs/{org}/events`: the producer API (`POST`), and the organization's events as they
//! arrived (`GET`).

use super::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiError;
use super::ApiResult;
use super::body::RawJsonBody;
use super::caller::Caller;
use super::extract::{PathParams, QueryParams};
use super::json_errors::parse_json;
use super::openapi::OrgPath;
use super::orgs::org_id;
use crate::app::AppState;
use crate::service::ServiceError;
use crate::service::ingest::{self, IngestReport};
use herald_core::Page;
use herald_core::event::EventSummary;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(post_events, list_events))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// At most this many (1 to 200, 50 by default).
    #[param(minimum = 1, maximum = 200)]
    #[serde(default, deserialize_with = "super::whole_number")]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    #[param(rename = "type")]
    event_type: Option<String>,
    /// Only events received at this time (RFC 3339) or later.
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
}

/// Lists the organization's events, newest first (by time received, then by id), without
/// their data: `GET /v1/orgs/{org}/events/{id}` reads one with its data and its deliveries.
#[utoipa::path(get, path = "/v1/orgs/{org}/events", tag = "events",
    params(OrgPath, ListQuery),
    responses(
        (status = 200, description = "A page of events", body = Page<EventSummary>),
        (status = 400, description = "The query string is not valid", body = super::ErrorBody),
        (status = 404, description = "No such organization visible to the caller", body = super::ErrorBody),
        (status = 422, description = "`type`, `since`, `limit` or `cursor` is not valid (a type the organization does not know, with what it may have meant)", body = super::ErrorBody),
    ))]
async fn list_events(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<EventSummary>>> {
    let page = super::page_request(q.limit, q.cursor, herald_core::event::EventCursor::parse)?;
    let event_type = q
        .event_type
        .map(|t| herald_core::event_type::parse_type_name(&t, "type"))
        .transpose()
        .map_err(ServiceError::from)?;
    let since = q
        .since
        .map(|t| {
            herald_core::Timestamp::parse_rfc3339(&t, "since").map_err(|mut e| {
                // `+01:00` unencoded arrives as ` 01:00`: a query string's `+` is a space.
                let offset = t.rsplit_once(' ').is_some_and(|(_, after)| {
                    let b = after.as_bytes();
                    b.len() == 5
                        && b[2] == b':'
                        && [0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit())
                });
                if offset {
                    e.message.push_str(
                        " (a '+' in a query string reads as a space: write the offset's + as %2B, or give the time in UTC with Z)",
                    );
                }
                e
            })
        })
        .transpose()
        .map_err(ServiceError::from)?;
    let filter = herald_core::store::EventFilter { event_type, since };
    let org = org_id(&path.org)?;
    Ok(Json(
        crate::service::events::list_events(&state, &scope, &org, filter, page).await?,
    ))
}

/// One event as a producer posts it.
// Parsed by `herald_core::event::NewEvent::parse_text`, which gives the precise errors; this
// type only describes it for the OpenAPI document (unknown fields are refused there too).
#[derive(serde::Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[expect(
    dead_code,
    reason = "describes the request body; the body is parsed as JSON"
)]
struct EventInput {
    /// The producer's idempotency key: an event posted again with the same id is stored once.
    /// Generated (`evt_…`) when absent. 1–255 visible ASCII characters, not `.` or `..`.
    #[schema(
        example = "evt_2f9c1b",
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]+$"
    )]
    id: Option<String>,
    /// A type of the organization's catalogs or its own.
    #[serde(rename = "type")]
    #[schema(example = "user.created")]
    event_type: String,
    /// When it happened; the time of receipt when absent.
    occurred_at: Option<herald_core::Timestamp>,
    /// The event's data: a JSON object, checked against the type's schema.
    #[schema(value_type = Object, example = json!({"user": {"id": "u_123", "email": "ada@example.com"}}))]
    data: Value,
    /// Ties events of one operation together; 1–255 visible ASCII characters.
    #[schema(min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    correlation_id: Option<String>,
}

/// One event, or an array of up to 1,000 stored all or nothing.
#[derive(serde::Deserialize, ToSchema)]
#[expect(
    dead_code,
    reason = "describes the request body; the body is parsed as JSON"
)]
#[serde(untagged)]
enum EventsBody {
    One(EventInput),
    Many(EventBatch),
}

/// Up to 1,000 events, stored all or nothing.
#[derive(serde::Deserialize, ToSchema)]
#[expect(
    dead_code,
    reason = "describes the request body; the body is parsed as JSON"
)]
#[schema(min_items = 1, max_items = 1000)]
struct EventBatch(Vec<EventInput>);

/// Posts events. Answers `202` only after the events and their deliveries are durably stored.
#[utoipa::path(post, path = "/v1/orgs/{org}/events", tag = "events",
    params(OrgPath),
    request_body = EventsBody,
    responses(
        (status = 202, description = "Stored; deliveries will follow", body = IngestReport),
        (status = 404, description = "No such organization visible to the caller", body = super::ErrorBody),
        (status = 410, description = "`delivery_loop`: the request is a Herald webhook delivery (a webhook pointed at an events API); the sending Herald disables that webhook", body = super::ErrorBody),
        (status = 422, description = "An event is not valid: `unknown_event_type`, `schema_violation` or `invalid_field` (`field` names the event and field, e.g. `[3].data`). Or `too_many_deliveries`: the events would become more deliveries than one request may create (`HERALD_MAX_DELIVERIES_PER_REQUEST`); send fewer per request. Nothing was stored", body = super::ErrorBody),
        (status = 503, description = "`overloaded`: nothing was stored. `unavailable`: the database did not answer, and the events may or may not have been stored: send them again with the same ids (one stored already is answered as a duplicate; an event sent without an `id` is given a new one, so give events ids of yours). Retry after `Retry-After` seconds", body = super::ErrorBody,
            headers(("Retry-After" = u32, description = "Seconds to wait before sending again"))),
    ))]
async fn post_events(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
    headers: HeaderMap,
    // Its share of the bodies in flight is held until the events are stored and answered.
    RawJsonBody(body, _admitted): RawJsonBody,
) -> ApiResult<(StatusCode, Json<IngestReport>)> {
    refuse_deliveries(&headers)?;
    let (events, batch) = posted_events(&body)?;
    let report = ingest::ingest(&state, &scope, &org_id(&path.org)?, events, batch)
        .await
        .map_err(|e| {
            let because = match &e {
                ServiceError::Unavailable(cause) => Some(super::error::unavailable_because(cause)),
                _ => None,
            };
            let mut answer = ApiError::from(e);
            if let Some(because) = because {
                // A commit cut off by a stalled database may still land.
                answer.message = format!(
                    "the database is unavailable{because}, and the events may or may not have \
                     been stored: send them again shortly with the same ids (an id already \
                     stored is answered as a duplicate, not stored twice; an event sent without \
                     an id is given a new one, so give such events ids of yours first)"
                );
            }
            answer
        })?;
    Ok((StatusCode::ACCEPTED, Json(report)))
}

/// Refuses a request sent by a Herald delivery (its `User-Agent`, which no webhook's custom
/// headers may set). A webhook pointed at an events API, this server's or another Herald's,
/// would post its deliveries back as events; with two such webhooks each event would come back
/// twice, and the events would multiply until the nesting limit. `410 Gone` makes the sending
/// Herald disable the webhook at once (and tell its organization), with this message in the
/// attempt, rather than retry it on schedule.
fn refuse_deliveries(headers: &HeaderMap) -> Result<(), ApiError> {
    let from_herald = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.starts_with("Herald/"));
    if from_herald {
        return Err(ApiError::new(
            StatusCode::GONE,
            "delivery_loop",
            "this request is a Herald webhook delivery (User-Agent Herald/…); events cannot be \
             posted by a webhook, which would feed its deliveries back as events. Point the \
             webhook at a receiver, not at an events API",
        ));
    }
    Ok(())
}

/// The body's events, each as its text (a tree is built only for data not written as Herald
/// stores it), and whether they came as an array.
fn posted_events(body: &[u8]) -> Result<(Vec<&RawValue>, bool), ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return Ok((parse_json(body)?, true));
    }
    let event: &RawValue = parse_json(body)?;
    // Valid JSON of another shape (`null`, `42`) is the body's shape, as every route says it.
    if !event.get().starts_with('{') {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body is JSON, but not of this operation's shape: send an event (a \
             JSON object like {\"type\": \"user.created\", \"data\": {…}}) or an array of them",
        ));
    }
    Ok((vec![event], false))
}
