//! The web dashboard at `/`: server-rendered pages for people, beside the JSON API.
//!
//! - `auth`: signing in (admin token or organization key) and out; `session`: the sessions,
//!   the `Signed` extractor (everyone else goes to the sign-in page) and `Post` (a form with
//!   its CSRF token checked).
//! - `orgs` (with `keys`, its API keys, and `settings`, its edit and delete forms), `webhooks`
//!   (with `webhook_form`), `deliveries`, `catalog`: one file per page group. Handlers extract, call `crate::service` (which checks the scope: an organization key
//!   sees only its own organization) and render; they never touch the store or SQL.
//! - `health`: the geometry of the delivery-health plots; `templates`: the MiniJinja
//!   environment (auto-escaping) over `crates/herald/templates/`; `assets`: CSS and JS.
//!
//! Every page is sent with a strict Content-Security-Policy (no inline script or style, nothing
//! from elsewhere) and `Cache-Control: no-store`, since pages may show a secret once.

mod assets;
mod auth;
mod catalog;
mod confirm;
mod deliveries;
mod error;
mod forms;
mod health;
mod keys;
mod orgs;
pub mod session;
mod settings;
mod templates;
mod webhook_form;
mod webhooks;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::Response;

pub use error::{shown_with_navigation, who_asked};
pub use session::Sessions;

use crate::app::AppState;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(auth::router())
        .merge(orgs::router())
        .merge(keys::router())
        .merge(settings::router())
        .merge(webhooks::router())
        .merge(webhook_form::router())
        .merge(deliveries::router())
        .merge(catalog::router())
        .layer(axum::middleware::from_fn_with_state(
            state,
            error::with_navigation,
        ))
        .layer(axum::middleware::map_response(page_headers))
        .merge(assets::router())
}

async fn page_headers(response: Response) -> Response {
    with_page_headers(response)
}

/// Every page's headers: a strict Content-Security-Policy, never cached, framed or sniffed.
/// Also for the pages answered outside the dashboard's router (an unknown address).
pub fn with_page_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// The answer to an unknown path asked for by a browser (the JSON API keeps its JSON 404).
pub fn not_found_page() -> Response {
    with_page_headers(templates::error_page(
        axum::http::StatusCode::NOT_FOUND,
        "There is no page here. Start from the dashboard's home page.",
    ))
}

/// The answer to a browser sending a request of a method that the address does not take (a
/// form sent to a page that only shows).
pub fn method_not_allowed_page(method: &axum::http::Method) -> Response {
    with_page_headers(templates::error_page(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        &format!(
            "This address does not take a {method} request. Start from the dashboard's home page."
        ),
    ))
}

/// The answer to a browser asking for the address of a form (which takes only its post): the
/// form's page, where there is one.
pub fn form_address_page(path: &str) -> Option<Response> {
    use axum::response::IntoResponse;
    let page = session::page_of_form_address(path)?;
    Some(with_page_headers(
        axum::response::Redirect::to(&page).into_response(),
    ))
}
