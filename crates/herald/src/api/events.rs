//! `POST /v1/orgs/{org}/events`: the producer API.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::ApiResult;
use super::extract::{Caller, JsonBody};
use super::orgs::org_id;
use crate::app::AppState;
use crate::service::ingest;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/orgs/{org}/events", post(post_events))
}

/// Answers 202 only after the events and their deliveries are durably stored.
async fn post_events(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let report = ingest::ingest(&state, &scope, &org_id(&org)?, body).await?;
    Ok((StatusCode::ACCEPTED, Json(json!(report))))
}
