//! The JSON API under `/v1`, with the dashboard's pages merged in. Each resource module exports
//! `router()`; handlers extract, call the service, and map the answer. Errors become HTTP in `error.rs` only. Every route is
//! registered through `utoipa_axum::routes!`, which also puts it in the OpenAPI document served
//! at `/openapi.json` (`openapi.rs`).

mod admission;
pub(crate) mod body;
pub(crate) mod caller;
mod deliveries;
mod error;
mod event_types;
mod events;
pub(crate) mod extract;
mod health;
mod json;
pub(crate) mod json_errors;
mod openapi;
mod orgs;
mod webhooks;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::routing::get;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use admission::{BodyBudget, TenantRoom};
pub use error::{ApiError, ApiResult, ErrorBody};
pub use json::Json;
pub use openapi::ApiDoc;

use crate::app::AppState;

/// Query parameters of every list.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// At most this many items (1 to 200, 50 by default).
    #[param(minimum = 1, maximum = 200)]
    #[serde(default, deserialize_with = "whole_number")]
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl PageQuery {
    /// The page asked for, in a list of items whose ids `parse` reads: a cursor is the id of
    /// the last item of the previous page, so anything else is refused rather than answered
    /// with an empty or a first page.
    pub fn into_page<T: std::fmt::Display>(
        self,
        parse: impl Fn(&str) -> Result<T, herald_core::Invalid>,
    ) -> ApiResult<herald_core::PageRequest> {
        page_request(self.limit, self.cursor, parse)
    }
}

/// A `limit` in a query string: any whole number reads, so that one out of range (`-1`,
/// `99999999999`) is refused with the range, as `201` is, rather than with the parser's words.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u32>, D::Error> {
    use serde::Deserialize;
    let Some(raw) = Option::<String>::deserialize(d)? else {
        return Ok(None);
    };
    let digits = raw.strip_prefix('-').unwrap_or(&raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(serde::de::Error::custom(format!(
            "expected a whole number, not '{}'",
            herald_core::truncate_for_message(&raw)
        )));
    }
    // Out of range either way (0 included): the page's own check names the range.
    let negative = raw.starts_with('-');
    Ok(Some(if negative {
        0
    } else {
        raw.parse().unwrap_or(u32::MAX)
    }))
}

/// A page request whose cursor, if any, must be an id that `parse` accepts.
pub(crate) fn page_request<T: std::fmt::Display>(
    limit: Option<u32>,
    cursor: Option<String>,
    parse: impl Fn(&str) -> Result<T, herald_core::Invalid>,
) -> ApiResult<herald_core::PageRequest> {
    herald_core::PageRequest::of_ids(limit, cursor, parse)
        .map_err(|invalid| crate::service::ServiceError::from(invalid).into())
}

/// An unknown route: a JSON error, except for a browser asking for a page outside `/v1`,
/// which gets the dashboard's HTML page.
async fn not_found(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    // Under /v1 already, the path is what is wrong, not its prefix.
    let message = if request.uri().path().starts_with("/v1/") {
        "no such route; the API's routes are listed at GET /openapi.json and in docs/api.md"
    } else {
        "no such route; every route of the API is under /v1, listed at GET /openapi.json and in docs/api.md"
    };
    page_or(
        &state,
        browsing(&request).map(|asked| (asked, crate::dashboard::not_found_page())),
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
    )
    .await
}

/// A route that does not take the method: a JSON error, except for a browser opening a
/// dashboard address that only takes a form (the address bar after a form was refused, say),
/// which is sent to the form's page (or gets the dashboard's not-found page, not raw JSON).
async fn method_not_allowed(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
) -> axum::response::Response {
    if is_browsing(&request)
        && request.method().is_safe()
        && let Some(page) = crate::dashboard::form_address_page(request.uri().path())
    {
        return page;
    }
    let page = |asked| {
        (
            asked,
            crate::dashboard::method_not_allowed_page(request.method()),
        )
    };
    page_or(
        &state,
        browsing(&request).map(page),
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method; the answer's Allow header lists those it takes",
        ),
    )
    .await
}

/// A dashboard error page for a browser outside the API (`browsing`: who asked, see
/// [`browsing`], and the page), with the navigation of whoever is signed in; else `error` as
/// JSON.
async fn page_or(
    state: &AppState,
    browsing: Option<(axum::http::request::Parts, axum::response::Response)>,
    error: ApiError,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match browsing {
        Some((asked, page)) => crate::dashboard::shown_with_navigation(state, asked, page).await,
        None => error.into_response(),
    }
}

/// Who asked, to find their session again, if a browser asked for a page outside the API.
fn browsing(request: &axum::extract::Request) -> Option<axum::http::request::Parts> {
    is_browsing(request).then(|| crate::dashboard::who_asked(request))
}

/// A browser asking for a page outside the API.
fn is_browsing(request: &axum::extract::Request) -> bool {
    let wants_html = request
        .headers()
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    wants_html && !request.uri().path().starts_with("/v1")
}

/// The API's routes and the OpenAPI document that describes them, built together.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(orgs::router())
        .merge(event_types::router())
        .merge(webhooks::router())
        .merge(events::router())
        .merge(deliveries::router())
        .split_for_parts();
    openapi::complete(&mut doc);
    TAKES_QUERY.get_or_init(|| operations_with_query(&doc));
    (routes, doc)
}

/// The operations (method and route) that take query parameters, read from the OpenAPI
/// document when the routes are built, so that the two cannot part: the paged lists.
static TAKES_QUERY: std::sync::OnceLock<std::collections::HashSet<(axum::http::Method, String)>> =
    std::sync::OnceLock::new();

/// The operations (method and route) whose documentation names query parameters: the lists.
fn operations_with_query(
    doc: &utoipa::openapi::OpenApi,
) -> std::collections::HashSet<(axum::http::Method, String)> {
    use axum::http::Method;
    use utoipa::openapi::RefOr;
    use utoipa::openapi::path::ParameterIn;
    let mut taken = std::collections::HashSet::new();
    for (path, item) in &doc.paths.paths {
        for (method, operation) in [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
        ] {
            let names_query = operation
                .iter()
                .flat_map(|o| o.parameters.iter().flatten())
                .any(|p| matches!(p, RefOr::T(p) if p.parameter_in == ParameterIn::Query));
            if names_query {
                taken.insert((method, path.clone()));
            }
        }
    }
    taken
}

/// Refuses a query string sent to an operation that takes none (`POST …/test?dry_run=true`),
/// rather than carrying the operation out as if what it asked for had been applied. Asked by
/// [`caller::Caller`], which every operation under `/v1` takes: a request without a query
/// string (ingest's) pays one check of its URI.
pub(crate) fn no_query_unless_taken(parts: &axum::http::request::Parts) -> ApiResult<()> {
    use axum::http::Method;
    let Some(query) = parts.uri.query() else {
        return Ok(());
    };
    let Some((name, _)) = url::form_urlencoded::parse(query.as_bytes()).next() else {
        return Ok(());
    };
    let Some(matched) = parts.extensions.get::<axum::extract::MatchedPath>() else {
        return Ok(());
    };
    // HEAD is answered as GET is, with the same parameters.
    let method = match &parts.method {
        &Method::HEAD => Method::GET,
        other => other.clone(),
    };
    let key = (method, matched.as_str().to_owned());
    // The probes and `/metrics` are left to what monitoring tools add to their URLs.
    if !key.1.starts_with("/v1/") || TAKES_QUERY.get().is_none_or(|t| t.contains(&key)) {
        return Ok(());
    }
    let done = if parts.method.is_safe() {
        ""
    } else {
        "; nothing was done"
    };
    Err(ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_query",
        format!(
            "this operation takes no query parameters (`{}`){done}",
            herald_core::truncate_for_message(&name)
        ),
    ))
}

/// The JSON API, its OpenAPI document and the dashboard.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.server.max_body_bytes;
    let (routes, doc) = routes();
    // Rendered once: the document does not change while the server runs, and each answer
    // shares these bytes instead of copying them.
    let mut doc = doc.to_json().expect("the OpenAPI document serializes");
    doc.push('\n');
    let doc = Bytes::from(doc);
    routes
        .layer(axum::middleware::map_response(kept_by_no_cache))
        .route(
            "/openapi.json",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
        )
        .merge(crate::dashboard::router(state.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::map_response_with_state(
            state.clone(),
            count_response,
        ))
        .with_state(state)
}

/// API answers may carry a secret shown once (a webhook's, a new API key): no cache on the way
/// keeps them (the dashboard's pages say so too).
async fn kept_by_no_cache(mut response: axum::response::Response) -> axum::response::Response {
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(axum::http::HeaderValue::from_static("no-store"));
    response
}

/// Counts every response by its status class, for `/metrics`; not the probes' answers.
async fn count_response(
    axum::extract::State(state): axum::extract::State<AppState>,
    response: axum::response::Response,
) -> axum::response::Response {
    if response
        .extensions()
        .get::<crate::metrics::Probe>()
        .is_none()
    {
        state.metrics.responded(response.status().as_u16());
    }
    response
}
