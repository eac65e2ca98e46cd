//! `/v1/orgs/{org}/webhooks`: create, list, read, change, delete, bulk delete, activate,
//! deactivate, rotate the secret, send a test event.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use herald_core::WebhookId;
use herald_core::webhook::Webhook;

use super::extract::{Caller, JsonBody, OptionalJsonBody, QueryParams, path_id};
use super::orgs::org_id;
use super::{ApiResult, PageQuery};
use crate::app::AppState;
use crate::service::subscriptions;
use crate::service::webhooks::{self, WebhookInput};
use crate::service::{Scope, ServiceError};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/orgs/{org}/webhooks",
            get(list_webhooks).post(create_webhook),
        )
        .route(
            "/v1/orgs/{org}/webhooks/bulk-delete",
            post(bulk_delete_webhooks),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}",
            get(get_webhook)
                .patch(update_webhook)
                .delete(delete_webhook),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}/activate",
            post(activate_webhook),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}/deactivate",
            post(deactivate_webhook),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}/rotate-secret",
            post(rotate_secret),
        )
        .route("/v1/orgs/{org}/webhooks/{id}/test", post(send_test_event))
        .route(
            "/v1/orgs/{org}/webhooks/{id}/subscriptions",
            get(list_subscriptions),
        )
        .route(
            "/v1/orgs/{org}/webhooks/{id}/verify",
            post(resend_verification),
        )
}

pub(crate) fn webhook_id(raw: &str) -> ApiResult<WebhookId> {
    path_id(raw, "webhook", WebhookId::parse)
}

/// Tells "absent" (leave as is) from `null` (clear) for optional fields of a PATCH.
fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    name: Option<String>,
    url: Option<String>,
    events: Option<Vec<String>>,
    channels: Option<Vec<String>>,
    profile: Option<String>,
    #[serde(default, deserialize_with = "present")]
    description: Option<Option<String>>,
    secret: Option<String>,
    active: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "present")]
    timeout_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    retry_schedule: Option<Option<Vec<u64>>>,
    #[serde(default, deserialize_with = "present")]
    signature: Option<Option<String>>,
    options: Option<Value>,
    verification: Option<String>,
    #[serde(default, deserialize_with = "present")]
    rate_limit_per_second: Option<Option<u64>>,
}

impl From<WebhookBody> for WebhookInput {
    fn from(b: WebhookBody) -> Self {
        Self {
            name: b.name,
            url: b.url,
            events: b.events,
            channels: b.channels,
            profile: b.profile,
            description: b.description,
            secret: b.secret,
            active: b.active,
            headers: b.headers,
            timeout_ms: b.timeout_ms,
            retry_schedule: b.retry_schedule,
            signature: b.signature,
            options: b.options,
            verification: b.verification,
            rate_limit_per_second: b.rate_limit_per_second,
        }
    }
}

/// The webhook with its secret: only on creation and rotation.
fn with_secret(w: &Webhook) -> Value {
    let mut out = json!(w);
    out["secret"] = json!(w.secret);
    out
}

async fn create_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<WebhookBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let w = webhooks::create(&state, &scope, &org_id(&org)?, body.into()).await?;
    Ok((StatusCode::CREATED, Json(with_secret(&w))))
}

async fn list_webhooks(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        webhooks::list(&state, &scope, &org_id(&org)?, q.into_page()?).await?
    )))
}

async fn get_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    Ok(Json(json!(
        webhooks::get(&state, &scope, &org_id(&org)?, &webhook_id(&id)?).await?
    )))
}

async fn update_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<WebhookBody>,
) -> ApiResult<Json<Value>> {
    let w = webhooks::update(
        &state,
        &scope,
        &org_id(&org)?,
        &webhook_id(&id)?,
        body.into(),
    )
    .await?;
    Ok(Json(json!(w)))
}

async fn delete_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let id = webhook_id(&id)?;
    let deleted =
        webhooks::delete(&state, &scope, &org_id(&org)?, std::slice::from_ref(&id)).await?;
    if deleted.is_empty() {
        return Err(ServiceError::NotFound("webhook").into());
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkDeleteBody {
    ids: Vec<String>,
}

async fn bulk_delete_webhooks(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path(org): Path<String>,
    JsonBody(body): JsonBody<BulkDeleteBody>,
) -> ApiResult<Json<Value>> {
    let org = org_id(&org)?;
    let mut ids = Vec::new();
    let mut not_found = Vec::new();
    for raw in body.ids {
        match WebhookId::parse(&raw) {
            Ok(id) => ids.push(id),
            Err(_) => not_found.push(raw),
        }
    }
    let deleted = webhooks::delete(&state, &scope, &org, &ids).await?;
    not_found.extend(
        ids.into_iter()
            .filter(|id| !deleted.contains(id))
            .map(|id| id.to_string()),
    );
    Ok(Json(json!({ "deleted": deleted, "not_found": not_found })))
}

async fn set_active(
    state: &AppState,
    scope: &Scope,
    org: &str,
    id: &str,
    active: bool,
) -> ApiResult<Json<Value>> {
    let (w, subscriptions) =
        webhooks::set_active(state, scope, &org_id(org)?, &webhook_id(id)?, active).await?;
    let mut out = json!(w);
    if let Some(subs) = subscriptions {
        out["subscriptions"] = json!(subs);
    }
    Ok(Json(out))
}

async fn activate_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    set_active(&state, &scope, &org, &id, true).await
}

async fn deactivate_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    set_active(&state, &scope, &org, &id, false).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    secret: Option<String>,
}

async fn rotate_secret(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
    OptionalJsonBody(body): OptionalJsonBody<RotateBody>,
) -> ApiResult<Json<Value>> {
    let secret = body.and_then(|b| b.secret);
    let w =
        webhooks::rotate_secret(&state, &scope, &org_id(&org)?, &webhook_id(&id)?, secret).await?;
    Ok(Json(with_secret(&w)))
}

async fn send_test_event(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let (event_id, delivery_id) =
        webhooks::send_test(&state, &scope, &org_id(&org)?, &webhook_id(&id)?).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "event_id": event_id, "delivery_id": delivery_id })),
    ))
}

async fn list_subscriptions(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let subs = subscriptions::list(&state, &scope, &org_id(&org)?, &webhook_id(&id)?).await?;
    Ok(Json(json!({ "data": subs, "next_cursor": null })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    channel: Option<String>,
}

/// Resends the WebSub verification for one channel or all.
async fn resend_verification(
    State(state): State<AppState>,
    Caller(scope): Caller,
    Path((org, id)): Path<(String, String)>,
    OptionalJsonBody(body): OptionalJsonBody<VerifyBody>,
) -> ApiResult<Json<Value>> {
    let channel = body.and_then(|b| b.channel);
    let subs =
        subscriptions::resend(&state, &scope, &org_id(&org)?, &webhook_id(&id)?, channel).await?;
    Ok(Json(json!({ "data": subs, "next_cursor": null })))
}
