//! `/v1/event-types` (the built-in catalogs) and `/v1/orgs/{org}/event-types`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiResult;
use super::extract::{Caller, JsonBody};
use super::orgs::org_id;
use crate::app::AppState;
use crate::service::event_types;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/event-types", get(list_catalogs))
        .route(
            "/v1/orgs/{org}/event-types",
            get(list_org_types).post(register_type),
        )
}

async fn list_catalogs(Caller(_): Caller) -> Json<Value> {
    Json(json!({ "catalogs": event_types::catalogs() }))
}

async fn list_org_types(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
) -> ApiResult<Json<Value>> {
    let types = event_types::list_for_org(&state, &scope, &org_id(&org)?).await?;
    Ok(Json(json!({ "data": types, "next_cursor": null })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventTypeBody {
    name: String,
    channel: Option<String>,
    description: Option<String>,
    schema: Option<Value>,
    example: Option<Value>,
}

async fn register_type(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
    JsonBody(b): JsonBody<EventTypeBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let input = event_types::EventTypeInput {
        name: b.name,
        channel: b.channel,
        description: b.description,
        schema: b.schema,
        example: b.example,
    };
    let created = event_types::register(&state, &scope, &org_id(&org)?, input).await?;
    Ok((StatusCode::CREATED, Json(json!(created))))
}
