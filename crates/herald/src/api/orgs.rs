//! `/v1/orgs` and `/v1/orgs/{org}/api-keys`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use herald_core::{ApiKeyId, OrgId};

use super::extract::{Caller, JsonBody, QueryParams, path_id};
use super::{ApiResult, PageQuery};
use crate::app::AppState;
use crate::service::{auth, orgs};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orgs", get(list_orgs).post(create_org))
        .route(
            "/v1/orgs/{org}",
            get(get_org).patch(update_org).delete(delete_org),
        )
        .route(
            "/v1/orgs/{org}/api-keys",
            get(list_api_keys).post(create_api_key),
        )
        .route("/v1/orgs/{org}/api-keys/{id}", delete(delete_api_key))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgBody {
    name: Option<String>,
    handle: Option<String>,
    catalogs: Option<Vec<String>>,
}

impl From<OrgBody> for orgs::OrgInput {
    fn from(b: OrgBody) -> Self {
        Self {
            name: b.name,
            handle: b.handle,
            catalogs: b.catalogs,
        }
    }
}

pub(crate) fn org_id(raw: &str) -> ApiResult<OrgId> {
    path_id(raw, "organization", OrgId::parse)
}

async fn create_org(
    State(state): State<AppState>,
    Caller(scope): Caller,
    JsonBody(body): JsonBody<OrgBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let org = orgs::create(&state, &scope, body.into()).await?;
    Ok((StatusCode::CREATED, Json(json!(org))))
}

async fn list_orgs(
    State(state): State<AppState>,
    Caller(scope): Caller,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        orgs::list(&state, &scope, q.into_page()?).await?
    )))
}

async fn get_org(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        orgs::get(&state, &scope, &org_id(&org)?).await?
    )))
}

async fn update_org(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<OrgBody>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        orgs::update(&state, &scope, &org_id(&org)?, body.into()).await?
    )))
}

async fn delete_org(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
) -> ApiResult<StatusCode> {
    orgs::delete(&state, &scope, &org_id(&org)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyBody {
    name: String,
}

async fn create_api_key(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<ApiKeyBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (record, key) = auth::create_api_key(&state, &scope, &org_id(&org)?, &body.name).await?;
    let mut out = json!(record);
    out["key"] = json!(key);
    Ok((StatusCode::CREATED, Json(out)))
}

async fn list_api_keys(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
) -> ApiResult<Json<Value>> {
    let keys = auth::list_api_keys(&state, &scope, &org_id(&org)?).await?;
    Ok(Json(json!({ "data": keys, "next_cursor": null })))
}

async fn delete_api_key(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = path_id(&id, "api key", ApiKeyId::parse)?;
    auth::delete_api_key(&state, &scope, &org_id(&org)?, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
