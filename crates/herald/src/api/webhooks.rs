//! `/v1/orgs/{org}/webhooks`: create, list, read, change, delete, bulk delete, activate,
//! deactivate, rotate the secret, send a test event.

use std::collections::BTreeMap;

use super::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use herald_core::subscription::Subscription;
use herald_core::webhook::Webhook;
use herald_core::{DeliveryId, Invalid, Page, Timestamp, WebhookId};

use super::body::{JsonBody, NoBody, OptionalJsonBody};
use super::caller::Caller;
use super::extract::{PathParams, QueryParams, WholeList, path_id};
use super::openapi::{OrgItemPath, OrgPath};
use super::orgs::org_id;
use super::{ApiError, ApiResult, PageQuery};
use crate::app::AppState;
use crate::service::subscriptions;
use crate::service::webhooks::{self, WebhookInput};
use crate::service::{Scope, ServiceError};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(bulk_delete_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(activate_webhook))
        .routes(routes!(deactivate_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(send_test_event))
        .routes(routes!(list_subscriptions))
        .routes(routes!(resend_verification))
}

pub(crate) fn webhook_id(raw: &str) -> ApiResult<WebhookId> {
    path_id(raw, "webhook", WebhookId::PREFIX, WebhookId::parse)
}

/// Tells "absent" (leave as is) from `null` (clear) for optional fields of a PATCH.
pub(super) fn present<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// `headers`, present or `null`, as [`present`] reads it, but refusing a name given twice:
/// serde would keep the second value and silently drop the first.
fn present_headers<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<BTreeMap<String, String>>>, D::Error> {
    struct Unique(BTreeMap<String, String>);
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Names;
            impl<'de> serde::de::Visitor<'de> for Names {
                type Value = Unique;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object of header names and values")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<Unique, A::Error> {
                    let mut headers = BTreeMap::new();
                    while let Some((name, value)) = map.next_entry::<String, String>()? {
                        if headers.contains_key(&name) {
                            return Err(serde::de::Error::custom(format!(
                                "the header '{}' is given twice; keep one",
                                herald_core::truncate_for_message(&name)
                            )));
                        }
                        headers.insert(name, value);
                    }
                    Ok(Unique(headers))
                }
            }
            d.deserialize_map(Names)
        }
    }
    Option::<Unique>::deserialize(d).map(|h| Some(h.map(|h| h.0)))
}

/// A webhook's settings. On creation `name` and `url` are required; on a change, absent fields
/// stay as they are and `null` clears an optional one (`description`, `headers`, `options`,
/// `timeout_ms`, `retry_schedule`, `signature`, `rate_limit_per_second`). `null` for any other
/// field is refused: it has nothing to clear to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = Option<String>, example = "Directory sync")]
    name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = Option<String>, example = "https://example.com/webhooks/herald")]
    url: Option<Option<String>>,
    /// Event type names, or `*` for every type (Herald's operational events excepted). With
    /// `channels`, both left out means every type; an empty list, with nothing named in the
    /// other, is refused (`422`) rather than read as every type.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = Option<Vec<String>>, example = json!(["user.created", "user.deleted"]))]
    events: Option<Option<Vec<String>>>,
    /// Channel names: a type matches if its channel is listed.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = Option<Vec<String>>)]
    channels: Option<Option<Vec<String>>>,
    /// The wire format: standard (default), opal, optare, parallelworks, permit, asgardeo,
    /// cloudevents.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = Option<herald_core::profile::ProfileName>, example = "standard")]
    profile: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    description: Option<Option<String>>,
    /// The signing secret; generated in the profile's format when absent.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = Option<String>)]
    secret: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = Option<bool>)]
    active: Option<Option<bool>>,
    /// Extra headers sent with every request.
    #[serde(default, deserialize_with = "present_headers")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    headers: Option<Option<BTreeMap<String, String>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, example = 10000, minimum = 100, maximum = 60000)]
    timeout_ms: Option<Option<u64>>,
    /// Delays in seconds before each attempt (1 to 20, each at most 7 days).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<herald_core::retry::RetrySchedule>)]
    retry_schedule: Option<Option<Vec<u64>>>,
    /// Overrides the profile's signature scheme: standard, optare, hub or opal.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<herald_core::profile::SignatureScheme>)]
    signature: Option<Option<String>>,
    /// Profile options: `content_mode` (cloudevents), `batch_window_ms` (opal).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Object>)]
    options: Option<Option<Value>>,
    /// `websub` to require verification of intent before events are sent, or `none`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, value_type = Option<herald_core::subscription::Verification>)]
    verification: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 10000)]
    rate_limit_per_second: Option<Option<u64>>,
}

impl WebhookBody {
    /// The settings of a new webhook or the changes to one. On a change `null` clears an
    /// optional field and is refused for the rest, which have nothing to clear to; on creation
    /// it is the same as leaving the field out (clients generated from the OpenAPI document
    /// often send every field).
    fn input(self, creating: bool) -> Result<WebhookInput, Invalid> {
        if creating {
            every_event_by_an_empty_list(&self.events, &self.channels)?;
        }
        Ok(WebhookInput {
            name: not_null(self.name, "name", creating)?,
            url: not_null(self.url, "url", creating)?,
            events: not_null(self.events, "events", creating)?,
            channels: not_null(self.channels, "channels", creating)?,
            profile: not_null(self.profile, "profile", creating)?,
            secret: not_null(self.secret, "secret", creating)?,
            active: not_null(self.active, "active", creating)?,
            verification: not_null(self.verification, "verification", creating)?,
            description: self.description,
            // `null` clears these: no custom headers, the profile's default options.
            headers: self.headers.map(Option::unwrap_or_default),
            options: self
                .options
                .map(|o| o.unwrap_or_else(|| Value::Object(Default::default()))),
            timeout_ms: self.timeout_ms,
            retry_schedule: self.retry_schedule,
            signature: self.signature,
            rate_limit_per_second: self.rate_limit_per_second,
            unchanged_since: None,
        })
    }
}

/// A new webhook with neither event types nor channels gets every event, but only when both
/// are left out: an empty list sent for either (`"events": []`, "none yet") would give it the
/// opposite of what was asked, as emptying them in a change would (refused there too).
fn every_event_by_an_empty_list(
    events: &Option<Option<Vec<String>>>,
    channels: &Option<Option<Vec<String>>>,
) -> Result<(), Invalid> {
    let empty = |list: &Option<Option<Vec<String>>>| matches!(list, Some(Some(l)) if l.is_empty());
    let names = |list: &Option<Option<Vec<String>>>| matches!(list, Some(Some(l)) if !l.is_empty());
    if names(events) || names(channels) || !(empty(events) || empty(channels)) {
        return Ok(());
    }
    Err(Invalid::new(
        if empty(events) { "events" } else { "channels" },
        "with no event types and no channels the webhook would get every event; name what it \
         should get, or give [\"*\"] (or leave out both fields) for every event",
    ))
}

/// A field with no empty value: left out (or `null` on creation) it stays as it is.
pub(super) fn not_null<T>(
    value: Option<Option<T>>,
    field: &str,
    creating: bool,
) -> Result<Option<T>, Invalid> {
    match value {
        Some(None) if !creating => Err(Invalid::new(
            field,
            "must not be null; leave the field out to keep its value",
        )),
        other => Ok(other.flatten()),
    }
}

/// The webhook with its secret: only in the answers to creation and rotation.
// No `Debug`: it holds the secret.
#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookWithSecret {
    #[serde(flatten)]
    webhook: Webhook,
    /// The signing secret, shown only now.
    secret: String,
    /// Created active with WebSub verification: each channel's state once it answered (or
    /// timed out), as activating it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    subscriptions: Option<Vec<Subscription>>,
}

impl From<Webhook> for WebhookWithSecret {
    fn from(w: Webhook) -> Self {
        Self {
            secret: w.secret.clone(),
            webhook: w,
            subscriptions: None,
        }
    }
}

/// Creates a webhook. With `verification: websub`, or with the `asgardeo` profile, it starts
/// inactive unless `active: true` asks for it to be enabled (and its WebSub channels verified) at
/// once.
#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks", tag = "webhooks",
    params(OrgPath),
    request_body = WebhookBody,
    responses(
        (status = 201, description = "Created; the secret is shown once", body = WebhookWithSecret,
            headers(("ETag" = String, description = "The webhook's version, for `If-Match` on a change"))),
        (status = 404, description = "No such organization visible to the caller", body = super::ErrorBody),
        (status = 409, description = "The profile allows one webhook per organization, or the organization has HERALD_MAX_WEBHOOKS_PER_ORG webhooks already", body = super::ErrorBody),
        (status = 422, description = "A field is not valid (`field` names it), e.g. an address Herald may not reach", body = super::ErrorBody),
    ))]
async fn create_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
    JsonBody(body): JsonBody<WebhookBody>,
) -> ApiResult<(
    StatusCode,
    [(header::HeaderName, HeaderValue); 1],
    Json<WebhookWithSecret>,
)> {
    let input = body.input(true).map_err(ServiceError::from)?;
    let (w, subscriptions) = webhooks::create(&state, &scope, &org_id(&path.org)?, input).await?;
    let etag = etag(&w);
    let mut created = WebhookWithSecret::from(w);
    created.subscriptions = subscriptions;
    Ok((StatusCode::CREATED, [(header::ETAG, etag)], Json(created)))
}

/// Lists the organization's webhooks, newest first.
#[utoipa::path(get, path = "/v1/orgs/{org}/webhooks", tag = "webhooks",
    params(OrgPath, PageQuery),
    responses(
        (status = 200, description = "A page of webhooks", body = Page<Webhook>),
        (status = 400, description = "The query string is not valid", body = super::ErrorBody),
        (status = 404, description = "No such organization visible to the caller", body = super::ErrorBody),
        (status = 422, description = "`limit` or `cursor` is out of range", body = super::ErrorBody),
    ))]
async fn list_webhooks(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Json<Page<Webhook>>> {
    let page = q.into_page(WebhookId::parse)?;
    let page = webhooks::list(&state, &scope, &org_id(&path.org)?, page).await?;
    Ok(Json(page))
}

/// A webhook as one is read by itself: with what this node knows of its endpoint now.
#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookView {
    #[serde(flatten)]
    webhook: Webhook,
    /// Set while this node's circuit breaker holds deliveries to the endpoint back (it kept
    /// failing): until then only a probe goes, and deliveries whose retry schedule runs out
    /// meanwhile fail unsent. Each node has its own; absent when this one's is closed.
    #[serde(skip_serializing_if = "Option::is_none")]
    circuit_open_until: Option<Timestamp>,
    /// Set while this node holds deliveries to the endpoint back because it answered `429` or
    /// `503` with `Retry-After` (at most an hour): tests and resends still go; retrying what
    /// waits, enabling the webhook again or a change to what reaches the endpoint ends it. Each
    /// node has its own; absent when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_until: Option<Timestamp>,
}

#[utoipa::path(get, path = "/v1/orgs/{org}/webhooks/{id}", tag = "webhooks",
    params(OrgItemPath),
    responses(
        (status = 200, description = "The webhook (without its secret)", body = WebhookView,
            headers(("ETag" = String, description = "The webhook's version, for `If-Match` on a change"))),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
    ))]
async fn get_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
) -> ApiResult<([(header::HeaderName, HeaderValue); 1], Json<WebhookView>)> {
    let w = webhooks::get(&state, &scope, &org_id(&path.org)?, &webhook_id(&path.id)?).await?;
    let circuit_open_until = state.dispatcher.circuit_open_until(&w);
    let retry_after_until = state.dispatcher.retry_after_until(&w);
    Ok((
        [(header::ETAG, etag(&w))],
        Json(WebhookView {
            webhook: w,
            circuit_open_until,
            retry_after_until,
        }),
    ))
}

/// A webhook's version as an entity tag: its `updated_at` in milliseconds. Every change moves
/// `updated_at` on by at least a millisecond, so two versions never share a tag.
fn etag(w: &Webhook) -> HeaderValue {
    HeaderValue::try_from(format!("\"{}\"", w.updated_at.as_millis()))
        .expect("digits in quotes are a valid header value")
}

/// The version a change was made on, from `If-Match` (an entity tag as `etag` writes it);
/// none without the header or with `*`. Proxies that compress answers may weaken the tag
/// (`W/"…"`); it names the same version.
fn if_match(headers: &HeaderMap) -> Result<Option<Timestamp>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text == "*" {
        return Ok(None);
    }
    let tag = text.strip_prefix("W/").unwrap_or(text);
    tag.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|t| t.parse::<i64>().ok())
        .map(|ms| Some(Timestamp::from_millis(ms)))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_header",
                "If-Match: send one entity tag as the webhook's ETag header gave it, quotes \
                 included (e.g. \"1733356800000\"), or * for any version, or leave the header \
                 out",
            )
        })
}

/// Changes a webhook: absent fields stay, `null` clears an optional one.
#[utoipa::path(patch, path = "/v1/orgs/{org}/webhooks/{id}", tag = "webhooks",
    params(OrgItemPath,
        ("If-Match" = Option<String>, Header, nullable = false, description = "The `ETag` of the version the change was made on: the change is refused (`412`) if the webhook changed since, instead of undoing that change")),
    request_body = WebhookBody,
    responses(
        (status = 200, description = "The changed webhook; `subscriptions` when the change sent WebSub verification (a new URL, new channels, switched on or off)", body = WebhookChanged,
            headers(("ETag" = String, description = "The webhook's new version"))),
        (status = 400, description = "`invalid_header`: `If-Match` is not one of the webhook's entity tags", body = super::ErrorBody),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
        (status = 409, description = "The change conflicts with the webhook's state or profile, or the webhook changed while it was made (Herald disabled it, or another request changed it): read it again and send the change again", body = super::ErrorBody),
        (status = 412, description = "`changed`: the webhook changed since the version `If-Match` names; read it again and send the change again", body = super::ErrorBody),
        (status = 422, description = "A field is not valid; `field` names it", body = super::ErrorBody),
    ))]
async fn update_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<WebhookBody>,
) -> ApiResult<([(header::HeaderName, HeaderValue); 1], Json<WebhookChanged>)> {
    let (org, id) = (org_id(&path.org)?, webhook_id(&path.id)?);
    let mut input = body.input(false).map_err(ServiceError::from)?;
    input.unchanged_since = if_match(&headers)?;
    let (webhook, subscriptions) = webhooks::update(&state, &scope, &org, &id, input).await?;
    Ok((
        [(header::ETAG, etag(&webhook))],
        Json(WebhookChanged {
            webhook,
            subscriptions,
        }),
    ))
}

/// Deletes a webhook; its pending deliveries are cancelled, its history kept.
#[utoipa::path(delete, path = "/v1/orgs/{org}/webhooks/{id}", tag = "webhooks",
    params(OrgItemPath,
        ("If-Match" = Option<String>, Header, nullable = false, description = "The `ETag` of the version to delete: refused (`412`) if the webhook changed since")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`If-Match` is not an entity tag as the `ETag` header gives it", body = super::ErrorBody),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
        (status = 409, description = "An active WebSub webhook must be deactivated first", body = super::ErrorBody),
        (status = 412, description = "`If-Match` names a version the webhook no longer has: nothing was deleted", body = super::ErrorBody),
    ))]
async fn delete_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    headers: HeaderMap,
    _: NoBody,
) -> ApiResult<StatusCode> {
    let id = webhook_id(&path.id)?;
    let deleted = webhooks::delete(
        &state,
        &scope,
        &org_id(&path.org)?,
        std::slice::from_ref(&id),
        if_match(&headers)?,
    )
    .await?;
    if deleted.is_empty() {
        return Err(ServiceError::NotFound("webhook").into());
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BulkDeleteBody {
    ids: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct BulkDeleted {
    deleted: Vec<WebhookId>,
    /// The ids that name no webhook of the organization, each once, in the order sent.
    not_found: Vec<String>,
}

/// Deletes several webhooks at once.
#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks/bulk-delete", tag = "webhooks",
    params(OrgPath),
    request_body = BulkDeleteBody,
    responses(
        (status = 200, description = "What was deleted and what was not found", body = BulkDeleted),
        (status = 404, description = "No such organization visible to the caller", body = super::ErrorBody),
        (status = 409, description = "An active WebSub webhook must be deactivated first", body = super::ErrorBody),
        (status = 422, description = "`ids` is missing or null, or has more than 1,000 ids", body = super::ErrorBody),
    ))]
async fn bulk_delete_webhooks(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
    JsonBody(body): JsonBody<BulkDeleteBody>,
) -> ApiResult<Json<BulkDeleted>> {
    let org = org_id(&path.org)?;
    webhooks::check_bulk_size(body.ids.len())?;
    // Each id once, in the order sent: `not_found` lists them so.
    let mut sent: Vec<String> = Vec::with_capacity(body.ids.len());
    for raw in body.ids {
        if !sent.contains(&raw) {
            sent.push(raw);
        }
    }
    let ids: Vec<WebhookId> = sent
        .iter()
        .filter_map(|raw| WebhookId::parse(raw).ok())
        .collect();
    let deleted = webhooks::delete(&state, &scope, &org, &ids, None).await?;
    let not_found = sent
        .into_iter()
        .filter(|raw| WebhookId::parse(raw).map_or(true, |id| !deleted.contains(&id)))
        .collect();
    Ok(Json(BulkDeleted { deleted, not_found }))
}

/// A webhook after a change, with the WebSub verification requests the change sent.
#[derive(Debug, Serialize, ToSchema)]
struct WebhookChanged {
    #[serde(flatten)]
    webhook: Webhook,
    /// Each channel the change asked its endpoint to confirm (subscribe or unsubscribe), with
    /// the endpoint's answer: present when it asked any.
    #[serde(skip_serializing_if = "Option::is_none")]
    subscriptions: Option<Vec<Subscription>>,
}

async fn set_active(
    state: &AppState,
    scope: &Scope,
    path: OrgItemPath,
    headers: &HeaderMap,
    active: bool,
) -> ApiResult<([(header::HeaderName, HeaderValue); 1], Json<WebhookChanged>)> {
    let (org, id) = (org_id(&path.org)?, webhook_id(&path.id)?);
    let unchanged_since = if_match(headers)?;
    let (webhook, subscriptions) =
        webhooks::set_active(state, scope, &org, &id, active, unchanged_since).await?;
    Ok((
        [(header::ETAG, etag(&webhook))],
        Json(WebhookChanged {
            webhook,
            subscriptions,
        }),
    ))
}

/// `If-Match` on a change other than PATCH: the same as on PATCH.
const IF_MATCH_TOO: &str = "The `ETag` of the version the change was made on: refused (`412`) if the webhook changed since";

/// Enables a webhook. A WebSub webhook verifies each channel first (one GET per channel).
#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks/{id}/activate", tag = "webhooks",
    params(OrgItemPath, ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH_TOO)),
    responses(
        (status = 200, description = "The webhook, with its channels' verification states", body = WebhookChanged,
            headers(("ETag" = String, description = "The webhook's new version"))),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
        (status = 409, description = "The webhook changed while this change was made (Herald disabled it, or another request changed it): read it again and send the change again", body = super::ErrorBody),
        (status = 412, description = "`changed`: the webhook changed since the version `If-Match` names", body = super::ErrorBody),
    ))]
async fn activate_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    headers: HeaderMap,
    _: NoBody,
) -> ApiResult<([(header::HeaderName, HeaderValue); 1], Json<WebhookChanged>)> {
    set_active(&state, &scope, path, &headers, true).await
}

/// Disables a webhook: what it has pending waits, parked, until it is activated; events that
/// arrive meanwhile are not delivered to it. A WebSub webhook unsubscribes its channels.
#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks/{id}/deactivate", tag = "webhooks",
    params(OrgItemPath, ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH_TOO)),
    responses(
        (status = 200, description = "The webhook", body = WebhookChanged,
            headers(("ETag" = String, description = "The webhook's new version"))),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
        (status = 409, description = "The webhook changed while this change was made (Herald disabled it, or another request changed it): read it again and send the change again", body = super::ErrorBody),
        (status = 412, description = "`changed`: the webhook changed since the version `If-Match` names", body = super::ErrorBody),
    ))]
async fn deactivate_webhook(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    headers: HeaderMap,
    _: NoBody,
) -> ApiResult<([(header::HeaderName, HeaderValue); 1], Json<WebhookChanged>)> {
    set_active(&state, &scope, path, &headers, false).await
}

// No `Debug`: it holds the secret.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// The new secret; generated when absent.
    secret: Option<String>,
}

/// Replaces the secret. Where the profile's signature header carries several signatures
/// (Standard Webhooks), the previous secret keeps signing beside it for 24 hours
/// (`previous_secret_expires_at`); the others sign with the new one at once.
#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(OrgItemPath, ("If-Match" = Option<String>, Header, nullable = false, description = IF_MATCH_TOO)),
    request_body(content = Option<RotateBody>, description = "Optional"),
    responses(
        (status = 200, description = "The webhook with its new secret, shown once", body = WebhookWithSecret,
            headers(("ETag" = String, description = "The webhook's new version"))),
        (status = 412, description = "`changed`: the webhook changed since the version `If-Match` names", body = super::ErrorBody),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
        (status = 409, description = "The webhook changed while this change was made (Herald disabled it, or another request changed it): read it again and send the change again", body = super::ErrorBody),
        (status = 422, description = "The secret is not valid for the profile", body = super::ErrorBody),
    ))]
async fn rotate_secret(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<RotateBody>,
) -> ApiResult<(
    [(header::HeaderName, HeaderValue); 1],
    Json<WebhookWithSecret>,
)> {
    let (org, id) = (org_id(&path.org)?, webhook_id(&path.id)?);
    let secret = body.and_then(|b| b.secret);
    let unchanged_since = if_match(&headers)?;
    let w = webhooks::rotate_secret(&state, &scope, &org, &id, secret, unchanged_since).await?;
    Ok(([(header::ETAG, etag(&w))], Json(w.into())))
}

#[derive(Debug, Serialize, ToSchema)]
struct TestSent {
    event_id: String,
    delivery_id: DeliveryId,
}

/// Sends a test event (`herald.test`) to this webhook only.
#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks/{id}/test", tag = "webhooks",
    params(OrgItemPath),
    responses(
        (status = 202, description = "Stored; the delivery follows", body = TestSent),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
        (status = 409, description = "The webhook is not active", body = super::ErrorBody),
    ))]
async fn send_test_event(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    _: NoBody,
) -> ApiResult<(StatusCode, Json<TestSent>)> {
    let (org, id) = (org_id(&path.org)?, webhook_id(&path.id)?);
    let (event_id, delivery_id) = webhooks::send_test(&state, &scope, &org, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TestSent {
            event_id,
            delivery_id,
        }),
    ))
}

/// Lists a WebSub webhook's channels and where each one's verification stands.
#[utoipa::path(get, path = "/v1/orgs/{org}/webhooks/{id}/subscriptions", tag = "webhooks",
    params(OrgItemPath),
    responses(
        (status = 400, description = "A query parameter was given: the list comes whole", body = super::ErrorBody),
        (status = 200, description = "One subscription per channel", body = Page<Subscription>),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
    ))]
async fn list_subscriptions(
    State(state): State<AppState>,
    Caller(scope): Caller,
    _: WholeList,
    PathParams(path): PathParams<OrgItemPath>,
) -> ApiResult<Json<Page<Subscription>>> {
    let (org, id) = (org_id(&path.org)?, webhook_id(&path.id)?);
    let subs = subscriptions::list(&state, &scope, &org, &id).await?;
    Ok(Json(Page {
        data: subs,
        next_cursor: None,
    }))
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    /// One channel; every channel when absent.
    channel: Option<String>,
}

/// Resends the WebSub verification for one channel or all.
#[utoipa::path(post, path = "/v1/orgs/{org}/webhooks/{id}/verify", tag = "webhooks",
    params(OrgItemPath),
    request_body(content = Option<VerifyBody>, description = "Optional"),
    responses(
        (status = 200, description = "The channels after verification", body = Page<Subscription>),
        (status = 404, description = "No such webhook visible to the caller", body = super::ErrorBody),
        (status = 409, description = "The webhook does not verify intent, or it is disabled and never subscribed (nothing to unsubscribe)", body = super::ErrorBody),
        (status = 422, description = "The channel is not one of the webhook's", body = super::ErrorBody),
    ))]
async fn resend_verification(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    OptionalJsonBody(body): OptionalJsonBody<VerifyBody>,
) -> ApiResult<Json<Page<Subscription>>> {
    let (org, id) = (org_id(&path.org)?, webhook_id(&path.id)?);
    let channel = body.and_then(|b| b.channel);
    let subs = subscriptions::resend(&state, &scope, &org, &id, channel).await?;
    Ok(Json(Page {
        data: subs,
        next_cursor: None,
    }))
}
