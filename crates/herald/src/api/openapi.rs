//! The OpenAPI document served at `/openapi.json`.
//!
//! Nothing here lists routes by hand: each handler carries a `#[utoipa::path]` and is registered
//! with `routes!`, which adds it to the router and to the document in one step, so a route of
//! the JSON API cannot be served without being documented. Schemas come from the types the
//! handlers take and return (`utoipa::ToSchema` on the domain types in `herald-core`). The
//! integration test `openapi::*` calls every documented operation on a running server and checks
//! each answer against the documented schema.

use serde::Deserialize;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Ref, Schema};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi as Document, RefOr, Response, ResponseBuilder};
use utoipa::{IntoParams, Modify, OpenApi, PartialSchema, ToSchema};

use super::error::ErrorBody;
use crate::service::searches;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Herald",
        description = "Webhook delivery for identity and access events. Producers post events; \
            Herald stores them durably, fans them out to the subscribed webhooks, signs each \
            request in the receiver's format, delivers, retries, and keeps every attempt.\n\n\
            Authenticate with `Authorization: Bearer <token>`: the admin token, or an API key \
            of one organization (which sees only that organization).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    tags(
        (name = "organizations", description = "Tenants and their API keys"),
        (name = "event types", description = "The built-in catalogs and an organization's own types"),
        (name = "events", description = "The producer API, and the organization's events as they arrived"),
        (name = "webhooks", description = "Subscriptions: where to send what, and how to sign it"),
        (name = "deliveries", description = "Delivery history, attempts, resend and recovery"),
        (name = "operations", description = "Health, readiness and metrics"),
    ),
)]
pub struct ApiDoc;

/// `{org}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrgPath {
    /// The organization's id (`org_…`).
    pub org: String,
}

/// `{org}` and `{id}` in a path; what `id` names depends on the route.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrgItemPath {
    /// The organization's id (`org_…`).
    pub org: String,
    /// The id of the item under the organization (`wh_…`, `dlv_…`, `key_…`).
    pub id: String,
}

/// `{org}` and an event's `{id}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct OrgEventPath {
    /// The organization's id (`org_…`).
    pub org: String,
    /// The event's id as its producer gave it (1 to 255 visible ASCII characters),
    /// percent-encoded: `/`, `?`, `#` and `%` in it would otherwise be read as the path's own.
    pub id: String,
}

/// Completes the document once every route is in it (see [`Conventions`]).
pub fn complete(doc: &mut Document) {
    Conventions.modify(doc);
    require_on_create(doc);
}

/// The fields a creation needs, by route: its body shares a schema with the change (`PATCH`),
/// whose fields are all optional.
const REQUIRED_ON_CREATE: &[(&str, &str, &[&str])] = &[
    ("/v1/orgs", "OrgBody", &["name"]),
    ("/v1/orgs/{org}/webhooks", "WebhookBody", &["name", "url"]),
];

/// Marks what [`REQUIRED_ON_CREATE`] lists as required in those routes' bodies (the shared
/// schema and a list of required fields, both to hold), so that a generated client asks for
/// them.
fn require_on_create(doc: &mut Document) {
    for (path, schema, required) in REQUIRED_ON_CREATE {
        let Some(RefOr::T(body)) = doc
            .paths
            .paths
            .get_mut(*path)
            .and_then(|item| item.post.as_mut())
            .and_then(|post| post.request_body.as_mut())
        else {
            panic!("POST {path} takes a body");
        };
        for content in body.content.values_mut() {
            let RefOr::T(content) = content else { continue };
            let needed = required.iter().fold(ObjectBuilder::new(), |object, field| {
                object.required(*field)
            });
            let both = AllOfBuilder::new()
                .item(Ref::from_schema_name(*schema))
                .item(needed)
                .build();
            content.schema = Some(RefOr::T(Schema::AllOf(both)));
        }
    }
}

/// Adds what every operation shares, so the handlers' annotations list only their own answers:
/// the bearer scheme, and the errors any authenticated call may get.
struct Conventions;

impl Modify for Conventions {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token, or an organization's API key (hk_…)"))
                    .build(),
            ),
        );
        components
            .schemas
            .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for (method, op) in operations(item) {
                // A write without a body of its own still reads one (`NoBody`: none, `null` or
                // `{}`), and so may refuse it.
                let has_body = op.request_body.is_some()
                    || matches!(method, "post" | "patch" | "put" | "delete");
                let has_path = op
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Path));
                let responses = &mut op.responses.responses;
                let mut add = |status: &str, why: &str| {
                    responses
                        .entry(status.to_owned())
                        .or_insert_with(|| error_response(why, matches!(status, "429" | "503")));
                };
                add("401", "No bearer token, or one that is not valid");
                add(
                    "500",
                    "A fault of Herald's own (`internal`): nothing more is said, and the cause \
                     is in the server's log",
                );
                add(
                    "429",
                    &format!(
                        "`too_many_invalid_tokens`: the client's network sent more tokens that \
                         are not valid than `HERALD_TOKEN_FAILURES_PER_MINUTE` allows, and this \
                         one, not used from there before, was not checked; retry after \
                         `Retry-After` seconds with a valid token. `too_many_searches` (lists \
                         filtered by `state`, `event_type` or `type`): {} such searches of the \
                         history run for the organization ({} for the node), and this one waited \
                         {} s for its turn",
                        searches::PER_ORG,
                        searches::PER_NODE,
                        searches::WAIT.as_secs(),
                    ),
                );
                add(
                    "503",
                    if has_body {
                        "This node is handling as many request bodies as it may hold \
                         (`overloaded`): nothing was stored. Or the database did not answer \
                         (`unavailable`): the change may or may not have been stored, so read \
                         before sending it again. Retry after `Retry-After` seconds"
                    } else {
                        "The database is unavailable; retry after `Retry-After` seconds"
                    },
                );
                if has_body || has_path {
                    add(
                        "400",
                        "The body is not JSON of this operation's shape, or the path does not \
                         decode",
                    );
                }
                if has_body {
                    add(
                        "408",
                        "The body did not arrive in time (`request_timeout`); nothing was \
                         stored, send it again faster or in smaller requests",
                    );
                    add("413", "The body is larger than the server's limit");
                    add(
                        "415",
                        "The body is compressed (`unsupported_encoding`): Herald reads bodies \
                         without a `Content-Encoding`",
                    );
                }
                // What the server refuses a producer's key, by the rule it applies
                // (`caller::producer_may`; a template's `{org}` matches as an id would).
                let method = axum::http::Method::from_bytes(method.to_uppercase().as_bytes())
                    .expect("an HTTP method");
                if path.starts_with("/v1/orgs/{org}") && !super::caller::producer_may(&method, path)
                {
                    add(
                        "403",
                        "An organization's producer key (`forbidden`): it may only post events \
                         and read its organization and the event types",
                    );
                }
                op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
            }
        }
    }
}

/// Every operation of a path item, with its method as the document names it.
fn operations(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("post", item.post.as_mut()),
        ("patch", item.patch.as_mut()),
        ("put", item.put.as_mut()),
        ("delete", item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| Some((method, op?)))
}

/// An error answer of the document's shape; `retry_after` when it carries `Retry-After`.
fn error_response(description: &str, retry_after: bool) -> RefOr<Response> {
    let mut response = ResponseBuilder::new();
    if retry_after {
        response = response.header(
            "Retry-After",
            utoipa::openapi::header::HeaderBuilder::new()
                .schema(Some(
                    utoipa::openapi::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::Integer),
                ))
                .description(Some("Seconds to wait before sending again"))
                .build(),
        );
    }
    response
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .build()
        .into()
}
