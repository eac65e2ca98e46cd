//! The JSON API under `/v1` (the dashboard's pages are merged in here too). Each resource module exports `router()`; handlers extract, call
//! the service, and map the answer. Errors become HTTP in `error.rs` only.

mod deliveries;
mod error;
mod event_types;
mod events;
mod extract;
mod health;
mod orgs;
mod webhooks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;

pub use error::{ApiError, ApiResult};

use crate::app::AppState;

/// Query parameters of every list.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PageQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl PageQuery {
    pub fn into_page(self) -> ApiResult<herald_core::PageRequest> {
        herald_core::PageRequest::new(self.limit, self.cursor)
            .map_err(|e| crate::service::ServiceError::from(e).into())
    }
}

/// An unknown route: a JSON error, except for a browser asking for a page outside `/v1`,
/// which gets the dashboard's HTML page.
async fn not_found(request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let wants_html = request
        .headers()
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html && !request.uri().path().starts_with("/v1") {
        return crate::dashboard::not_found_page();
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; the API lives under /v1",
    )
    .into_response()
}

/// The JSON API and the dashboard.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.server.max_body_bytes;
    Router::new()
        .merge(health::router())
        .merge(orgs::router())
        .merge(event_types::router())
        .merge(webhooks::router())
        .merge(events::router())
        .merge(deliveries::router())
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}
