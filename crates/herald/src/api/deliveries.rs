//! Delivery history: `/v1/orgs/{org}/webhooks/{id}/deliveries`, `/v1/orgs/{org}/deliveries/{id}`,
//! resend and recover.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use herald_core::delivery::DeliveryState;
use herald_core::store::DeliveryFilter;
use herald_core::{DeliveryId, PageRequest, Timestamp};

use super::ApiResult;
use super::extract::{Caller, JsonBody, QueryParams, path_id};
use super::orgs::org_id;
use super::webhooks::webhook_id;
use crate::app::AppState;
use crate::service::{ServiceError, deliveries, retention};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/orgs/{org}/webhooks/{id}/deliveries",
            get(list_deliveries),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}/recover",
            post(recover_deliveries),
        )
        .route("/v1/orgs/{org}/deliveries/{id}", get(get_delivery))
        .route("/v1/orgs/{org}/deliveries/{id}/retry", post(retry_delivery))
        .route("/v1/orgs/{org}/purge", post(purge_history))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<u32>,
    cursor: Option<String>,
    state: Option<String>,
    event_type: Option<String>,
}

async fn list_deliveries(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Value>> {
    let page = PageRequest::new(q.limit, q.cursor).map_err(ServiceError::from)?;
    let filter = DeliveryFilter {
        state: q
            .state
            .as_deref()
            .map(DeliveryState::parse)
            .transpose()
            .map_err(ServiceError::from)?,
        event_type: q.event_type,
    };
    let list = deliveries::list(
        &state,
        &scope,
        &org_id(&org)?,
        &webhook_id(&id)?,
        filter,
        page,
    )
    .await?;
    Ok(Json(json!(list)))
}

fn delivery_id(raw: &str) -> ApiResult<DeliveryId> {
    path_id(raw, "delivery", DeliveryId::parse)
}

async fn get_delivery(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        deliveries::get(&state, &scope, &org_id(&org)?, &delivery_id(&id)?).await?
    )))
}

async fn retry_delivery(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        deliveries::resend(&state, &scope, &org_id(&org)?, &delivery_id(&id)?).await?
    )))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverBody {
    since: String,
}

async fn recover_deliveries(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<RecoverBody>,
) -> ApiResult<Json<Value>> {
    let since = Timestamp::parse_rfc3339(&body.since, "since").map_err(ServiceError::from)?;
    let n = deliveries::recover(&state, &scope, &org_id(&org)?, &webhook_id(&id)?, since).await?;
    Ok(Json(json!({ "recovered": n })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    before: String,
}

/// Deletes the organization's finished history received before `before`.
async fn purge_history(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<PurgeBody>,
) -> ApiResult<Json<Value>> {
    let before = Timestamp::parse_rfc3339(&body.before, "before").map_err(ServiceError::from)?;
    let count = retention::purge_org(&state, &scope, &org_id(&org)?, before).await?;
    Ok(Json(json!({ "purged": count })))
}
