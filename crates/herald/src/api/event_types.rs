//! `/v1/event-types` (the built-in catalogs) and `/v1/orgs/{org}/event-types`.

use super::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use herald_core::Page;
use herald_core::catalog::Catalog;
use herald_core::event_type::CustomEventType;

use super::ApiResult;
use super::body::{JsonBody, NoBody};
use super::caller::Caller;
use super::extract::{PathParams, WholeList};
use super::openapi::OrgPath;
use super::orgs::org_id;
use crate::app::AppState;
use crate::service::event_types::{self, AvailableType};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_catalogs))
        .routes(routes!(list_org_types, register_type))
        .routes(routes!(unregister_type))
}

#[derive(Debug, Serialize, ToSchema)]
struct CatalogList {
    catalogs: &'static [Catalog],
}

/// Lists the built-in catalogs with every event type's channel, description, example and schema.
#[utoipa::path(get, path = "/v1/event-types", tag = "event types",
    responses(
        (status = 200, description = "The built-in catalogs", body = CatalogList),
        (status = 400, description = "A query parameter was given: the list comes whole", body = super::ErrorBody),
    ))]
async fn list_catalogs(Caller(_): Caller, _: WholeList) -> Json<CatalogList> {
    Json(CatalogList {
        catalogs: event_types::catalogs(),
    })
}

/// Lists every type the organization can post: its catalogs' and its own.
#[utoipa::path(get, path = "/v1/orgs/{org}/event-types", tag = "event types",
    params(OrgPath),
    responses(
        (status = 400, description = "A query parameter was given: the list comes whole", body = super::ErrorBody),
        (status = 200, description = "The organization's event types", body = Page<AvailableType>),
        (status = 404, description = "No such organization visible to the caller", body = super::ErrorBody),
    ))]
async fn list_org_types(
    State(state): State<AppState>,
    Caller(scope): Caller,
    _: WholeList,
    PathParams(path): PathParams<OrgPath>,
) -> ApiResult<Json<Page<AvailableType>>> {
    let types = event_types::list_for_org(&state, &scope, &org_id(&path.org)?).await?;
    Ok(Json(Page {
        data: types,
        next_cursor: None,
    }))
}

/// An organization's own event type.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EventTypeBody {
    #[schema(example = "invoice.paid")]
    name: String,
    #[schema(example = "billing")]
    channel: Option<String>,
    description: Option<String>,
    /// A JSON Schema that every event's `data` must match.
    schema: Option<Value>,
    /// Example data, checked against `schema`.
    example: Option<Value>,
}

/// Registers an event type of the organization's own, optionally with a JSON Schema.
#[utoipa::path(post, path = "/v1/orgs/{org}/event-types", tag = "event types",
    params(OrgPath),
    request_body = EventTypeBody,
    responses(
        (status = 201, description = "Registered", body = CustomEventType),
        (status = 404, description = "No such organization visible to the caller", body = super::ErrorBody),
        (status = 409, description = "The name is taken by a catalog type or an earlier registration, or the organization has HERALD_MAX_EVENT_TYPES_PER_ORG types of its own already", body = super::ErrorBody),
        (status = 422, description = "A field is missing, null or not valid (the name, the schema, or an example that breaks it); `field` names it", body = super::ErrorBody),
    ))]
async fn register_type(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
    JsonBody(b): JsonBody<EventTypeBody>,
) -> ApiResult<(StatusCode, Json<CustomEventType>)> {
    let input = event_types::EventTypeInput {
        name: b.name,
        channel: b.channel,
        description: b.description,
        schema: b.schema,
        example: b.example,
    };
    let created = event_types::register(&state, &scope, &org_id(&path.org)?, input).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// `{org}` and an event type's `{name}` in a path.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
struct TypePath {
    /// The organization's id (`org_…`).
    org: String,
    /// The name of one of the organization's own event types.
    name: String,
}

/// Deletes one of the organization's own event types. Events already stored keep their type.
#[utoipa::path(delete, path = "/v1/orgs/{org}/event-types/{name}", tag = "event types",
    params(TypePath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such organization visible to the caller, or no type of its own by that name", body = super::ErrorBody),
        (status = 409, description = "A catalog's type (change the catalogs instead), or webhooks still depend on it: they name it, or its channel of which it is the last type, or verify their intent (WebSub) on its channel", body = super::ErrorBody),
    ))]
async fn unregister_type(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<TypePath>,
    _: NoBody,
) -> ApiResult<StatusCode> {
    event_types::unregister(&state, &scope, &org_id(&path.org)?, &path.name).await?;
    Ok(StatusCode::NO_CONTENT)
}
