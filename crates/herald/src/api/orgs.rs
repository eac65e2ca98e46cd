//! `/v1/orgs` and `/v1/orgs/{org}/api-keys`.

use super::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use herald_core::org::{ApiKey, KeyRole, Organization};
use herald_core::{ApiKeyId, Invalid, OrgId, Page};

use super::body::{JsonBody, NoBody};
use super::caller::Caller;
use super::extract::{PathParams, QueryParams, WholeList, path_id};
use super::openapi::{OrgItemPath, OrgPath};
use super::{ApiResult, PageQuery};
use crate::app::AppState;
use crate::service::{ServiceError, auth, orgs};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_orgs, create_org))
        .routes(routes!(get_org, update_org, delete_org))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(delete_api_key))
}

/// An organization's settings; on creation `name` is required. In a PATCH, fields left out stay
/// as they are; `null` is refused (none of them can be cleared).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct OrgBody {
    #[serde(default, deserialize_with = "super::webhooks::present")]
    #[schema(nullable = false, value_type = Option<String>, example = "Acme")]
    name: Option<Option<String>>,
    /// Lower-case letters, digits, `-` and `.`; derived from the name when absent.
    #[serde(default, deserialize_with = "super::webhooks::present")]
    #[schema(nullable = false, value_type = Option<String>, example = "acme")]
    handle: Option<Option<String>>,
    /// Built-in catalogs to take event types from (`optare` by default).
    #[serde(default, deserialize_with = "super::webhooks::present")]
    #[schema(nullable = false, value_type = Option<Vec<String>>, example = json!(["optare"]))]
    catalogs: Option<Option<Vec<String>>>,
}

impl OrgBody {
    /// `null` means "absent" on creation (a default applies); in a change it is refused.
    fn into_input(self, creating: bool) -> Result<orgs::OrgInput, Invalid> {
        use super::webhooks::not_null;
        Ok(orgs::OrgInput {
            name: not_null(self.name, "name", creating)?,
            handle: not_null(self.handle, "handle", creating)?,
            catalogs: not_null(self.catalogs, "catalogs", creating)?,
        })
    }
}

pub(crate) fn org_id(raw: &str) -> ApiResult<OrgId> {
    path_id(raw, "organization", OrgId::PREFIX, OrgId::parse)
}

/// Creates an organization (admin token only).
#[utoipa::path(post, path = "/v1/orgs", tag = "organizations",
    request_body = OrgBody,
    responses(
        (status = 201, description = "Created", body = Organization),
        (status = 403, description = "Needs the admin token", body = super::ErrorBody),
        (status = 409, description = "The handle is taken, or two catalogs define the same type", body = super::ErrorBody),
        (status = 422, description = "A field is not valid; `field` names it", body = super::ErrorBody),
    ))]
async fn create_org(
    State(state): State<AppState>,
    Caller(scope): Caller,
    JsonBody(body): JsonBody<OrgBody>,
) -> ApiResult<(StatusCode, Json<Organization>)> {
    let org = orgs::create(
        &state,
        &scope,
        body.into_input(true).map_err(ServiceError::from)?,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(org)))
}

/// Lists organizations, newest first: all of them for the admin, its own for an API key.
#[utoipa::path(get, path = "/v1/orgs", tag = "organizations",
    params(PageQuery),
    responses(
        (status = 200, description = "A page of organizations", body = Page<Organization>),
        (status = 400, description = "The query string is not valid", body = super::ErrorBody),
        (status = 422, description = "`limit` or `cursor` is out of range", body = super::ErrorBody),
    ))]
async fn list_orgs(
    State(state): State<AppState>,
    Caller(scope): Caller,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Json<Page<Organization>>> {
    let page = q.into_page(herald_core::OrgId::parse)?;
    Ok(Json(orgs::list(&state, &scope, page).await?))
}

#[utoipa::path(get, path = "/v1/orgs/{org}", tag = "organizations",
    params(OrgPath),
    responses(
        (status = 200, description = "The organization", body = Organization),
        (status = 404, description = "No such organization visible to the caller", body = super::ErrorBody),
    ))]
async fn get_org(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
) -> ApiResult<Json<Organization>> {
    Ok(Json(orgs::get(&state, &scope, &org_id(&path.org)?).await?))
}

/// Changes an organization's name, handle or catalogs.
#[utoipa::path(patch, path = "/v1/orgs/{org}", tag = "organizations",
    params(OrgPath),
    request_body = OrgBody,
    responses(
        (status = 200, description = "The changed organization", body = Organization),
        (status = 403, description = "A new `handle` with an organization API key: only the admin token changes it (handles name organizations across the server)", body = super::ErrorBody),
        (status = 404, description = "No such organization visible to the caller", body = super::ErrorBody),
        (status = 409, description = "The handle is taken, or two catalogs define the same type", body = super::ErrorBody),
        (status = 422, description = "A field is not valid; `field` names it", body = super::ErrorBody),
    ))]
async fn update_org(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
    JsonBody(body): JsonBody<OrgBody>,
) -> ApiResult<Json<Organization>> {
    let org = orgs::update(
        &state,
        &scope,
        &org_id(&path.org)?,
        body.into_input(false).map_err(ServiceError::from)?,
    )
    .await?;
    Ok(Json(org))
}

/// Deletes an organization with everything it owns (admin token only).
#[utoipa::path(delete, path = "/v1/orgs/{org}", tag = "organizations",
    params(OrgPath),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Needs the admin token", body = super::ErrorBody),
        (status = 404, description = "No such organization", body = super::ErrorBody),
    ))]
async fn delete_org(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
    _: NoBody,
) -> ApiResult<StatusCode> {
    orgs::delete(&state, &scope, &org_id(&path.org)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ApiKeyBody {
    /// A name to tell keys apart.
    #[schema(example = "producer")]
    name: String,
    /// `manager` (default: everything of the organization) or `producer` (posts events and
    /// reads event types only). `null` is the default, as for the optional fields of the
    /// other creations (clients generated from the OpenAPI document often send every field).
    #[serde(default)]
    #[schema(value_type = Option<KeyRole>)]
    role: Option<String>,
}

/// A new API key: the key itself is shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CreatedApiKey {
    #[serde(flatten)]
    record: ApiKey,
    /// The key (`hk_…`); Herald keeps only its hash.
    key: String,
}

/// Creates an API key scoped to the organization.
#[utoipa::path(post, path = "/v1/orgs/{org}/api-keys", tag = "organizations",
    params(OrgPath),
    request_body = ApiKeyBody,
    responses(
        (status = 201, description = "Created; the key is shown once", body = CreatedApiKey),
        (status = 404, description = "No such organization", body = super::ErrorBody),
        (status = 409, description = "The organization already has 100 API keys, the most one may have", body = super::ErrorBody),
        (status = 422, description = "The name is missing, null or not valid, or the role is not one; `field` names it", body = super::ErrorBody),
    ))]
async fn create_api_key(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgPath>,
    JsonBody(body): JsonBody<ApiKeyBody>,
) -> ApiResult<(StatusCode, Json<CreatedApiKey>)> {
    let role = body
        .role
        .as_deref()
        .map(KeyRole::parse)
        .transpose()
        .map_err(ServiceError::from)?
        .unwrap_or_default();
    let (record, key) =
        auth::create_api_key(&state, &scope, &org_id(&path.org)?, &body.name, role).await?;
    Ok((StatusCode::CREATED, Json(CreatedApiKey { record, key })))
}

/// Lists the organization's API keys (their prefixes, never the keys).
#[utoipa::path(get, path = "/v1/orgs/{org}/api-keys", tag = "organizations",
    params(OrgPath),
    responses(
        (status = 400, description = "A query parameter was given: the list comes whole", body = super::ErrorBody),
        (status = 200, description = "Every key of the organization", body = Page<ApiKey>),
        (status = 404, description = "No such organization", body = super::ErrorBody),
    ))]
async fn list_api_keys(
    State(state): State<AppState>,
    Caller(scope): Caller,
    _: WholeList,
    PathParams(path): PathParams<OrgPath>,
) -> ApiResult<Json<Page<ApiKey>>> {
    let keys = auth::list_api_keys(&state, &scope, &org_id(&path.org)?).await?;
    Ok(Json(Page {
        data: keys,
        next_cursor: None,
    }))
}

/// Revokes an API key at once.
#[utoipa::path(delete, path = "/v1/orgs/{org}/api-keys/{id}", tag = "organizations",
    params(OrgItemPath),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such organization or key", body = super::ErrorBody),
    ))]
async fn delete_api_key(
    State(state): State<AppState>,
    Caller(scope): Caller,
    PathParams(path): PathParams<OrgItemPath>,
    _: NoBody,
) -> ApiResult<StatusCode> {
    let id = path_id(&path.id, "API key", ApiKeyId::PREFIX, ApiKeyId::parse)?;
    auth::delete_api_key(&state, &scope, &org_id(&path.org)?, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
