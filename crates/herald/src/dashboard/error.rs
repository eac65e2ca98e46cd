//! What the dashboard shows when a page cannot: an HTML page with the status and a message
//! that says what to do. Service errors get the same status and words as in the JSON API
//! (`api::ApiError` is the one place that maps them, and logs 5xx causes once).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::session::Signed;
use super::templates::{self, ErrorShown, Layout, OrgNav};
use crate::api::ApiError;
use crate::app::AppState;
use crate::service::ServiceError;
use herald_core::OrgId;

#[derive(Debug)]
pub enum DashError {
    Service(ServiceError),
    Status(StatusCode, &'static str),
}

impl DashError {
    pub fn not_found() -> Self {
        Self::Status(
            StatusCode::NOT_FOUND,
            "There is nothing here. It may have been deleted, or it belongs to an organization you cannot see.",
        )
    }
}

impl From<ServiceError> for DashError {
    fn from(e: ServiceError) -> Self {
        Self::Service(e)
    }
}

/// The status and message a person sees for an error.
pub fn describe(e: ServiceError) -> (StatusCode, String) {
    if let ServiceError::NotFound(what) = &e {
        let whose = if *what == "organization" {
            "or it is not one you can see"
        } else {
            "or it belongs to an organization you cannot see"
        };
        return (
            StatusCode::NOT_FOUND,
            format!("No such {what} here. It may have been deleted, {whose}."),
        );
    }
    if let ServiceError::Invalid(i) = &e
        && !i.field.is_empty()
    {
        // Named as the form names it, not as the API does (`timeout_ms`, `headers.x-team`).
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("{}: {}", field_label(&i.field), i.message),
        );
    }
    let api = ApiError::from(e);
    (api.status, in_dashboard_terms(&api.message))
}

/// The service's wording where the dashboard has a button for it: the API route a message
/// names in parentheses (`(POST /v1/orgs/…/deactivate)`) is dropped, and the webhook's
/// "activate"/"deactivate" are the buttons' Enable and Disable.
fn in_dashboard_terms(message: &str) -> String {
    let mut text = message.to_owned();
    while let Some(start) = text.find(" (") {
        let inside = &text[start + 2..];
        let names_a_route = inside.split_once(' ').is_some_and(|(method, rest)| {
            method.chars().all(|c| c.is_ascii_uppercase()) && rest.starts_with("/v1/")
        });
        let Some(end) = inside.find(')').filter(|_| names_a_route) else {
            break;
        };
        text.replace_range(start..start + 2 + end + 1, "");
    }
    // The routes' words, once the routes are left out: the dashboard's buttons say these.
    text.replace("deactivate it first", "disable it first")
        .replace("activate it before", "enable it before")
        .replace("activate it, then", "enable it, then")
        .replace("disabled; activate it first", "disabled; enable it first")
}

/// The form's name for an API field (`events[2]` is one of the event types).
fn field_label(field: &str) -> String {
    let (head, rest) = match field.split_once(['.', '[']) {
        Some((head, _)) => (head, &field[head.len()..]),
        None => (field, ""),
    };
    let label = match head {
        "url" => "URL",
        "name" => "Name",
        "description" => "Description",
        "secret" => "Secret",
        "timeout_ms" => "Timeout",
        "retry_schedule" => "Retry schedule",
        "events" => "Event types",
        "channels" => "Channels",
        "channel" => "Channel",
        "profile" => "Profile",
        "handle" => "Handle",
        "catalogs" => "Catalogs",
        "schema" => "JSON Schema",
        "example" => "Example",
        "options" => "Profile settings",
        "headers" => "Custom headers",
        _ => return field.to_owned(),
    };
    match (head, rest.strip_prefix('.')) {
        ("headers", Some(name)) => format!("Custom header {name}"),
        _ => label.to_owned(),
    }
}

impl IntoResponse for DashError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            DashError::Service(e) => describe(e),
            DashError::Status(status, message) => (status, message.to_owned()),
        };
        templates::error_page(status, &message)
    }
}

pub type DashResult<T> = Result<T, DashError>;

/// Shows an error page with the navigation of whoever is signed in, as the other pages have
/// it: the page itself is made where the error is known, without the session. Only error
/// pages look the session up again; what is not signed in keeps the page as it is.
pub async fn with_navigation(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let asked = who_asked(&request);
    let response = next.run(request).await;
    shown_with_navigation(&state, asked, response).await
}

/// What finding the session of `request` needs again after its answer: its method, address
/// and cookies (no other header is copied).
pub fn who_asked(request: &Request) -> Parts {
    let mut asked = axum::http::Request::builder()
        .method(request.method().clone())
        .uri(request.uri().clone())
        .body(())
        .expect("a method and a URI make a request")
        .into_parts()
        .0;
    for cookie in request.headers().get_all(header::COOKIE) {
        asked.headers.append(header::COOKIE, cookie.clone());
    }
    asked
}

/// `response`, if it is an error page, shown again within the navigation of whoever `asked`
/// (see [`with_navigation`]); also for the pages answered outside the dashboard's router (an
/// unknown address). Not for a fault of the server's (5xx): looking the session up would wait
/// on the database again, which may be what failed.
pub async fn shown_with_navigation(
    state: &AppState,
    mut asked: Parts,
    response: Response,
) -> Response {
    let Some(shown) = response.extensions().get::<ErrorShown>().cloned() else {
        return response;
    };
    if shown.status.is_server_error() {
        return response;
    }
    let Ok(signed) = Signed::from_request_parts(&mut asked, state).await else {
        return response;
    };
    let mut layout =
        Layout::without_messages(&signed, shown.status.canonical_reason().unwrap_or("Error"));
    layout.org = organization_asked_of(state, &signed, asked.uri.path()).await;
    let mut shown_again = templates::error_page_in(shown.status, &shown.message, &layout);
    // Headers the error's answer set (an `Allow`, the pages' own) go with it.
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shown_again
                .headers_mut()
                .append(name.clone(), value.clone());
        }
    }
    shown_again
}

/// The organization whose pages `path` is one of (`/orgs/{org}/…`), for an error page's
/// navigation, if whoever is signed in may see it.
async fn organization_asked_of(state: &AppState, signed: &Signed, path: &str) -> Option<OrgNav> {
    let id = path.strip_prefix("/orgs/")?.split('/').next()?;
    let id = OrgId::parse(id).ok()?;
    let org = crate::service::orgs::get(state, &signed.scope, &id)
        .await
        .ok()?;
    Some(OrgNav::of(&org))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_organization_is_not_said_to_belong_to_another() {
        use crate::service::ServiceError;
        let (_, said) = super::describe(ServiceError::NotFound("organization"));
        assert_eq!(
            said,
            "No such organization here. It may have been deleted, or it is not one you can see."
        );
        let (_, said) = super::describe(ServiceError::NotFound("webhook"));
        assert!(
            said.ends_with("belongs to an organization you cannot see."),
            "{said}"
        );
    }

    #[test]
    fn api_routes_in_messages_become_the_dashboard_buttons() {
        assert_eq!(
            super::in_dashboard_terms(
                "the webhook wh_1 is active; deactivate it first (POST /v1/orgs/org_1/webhooks/wh_1/deactivate): a webhook with WebSub verification is deleted only when inactive"
            ),
            "the webhook wh_1 is active; disable it first: a webhook with WebSub verification is deleted only when inactive"
        );
        assert_eq!(
            super::in_dashboard_terms(
                "the webhook is disabled; activate it (POST /v1/orgs/org_1/webhooks/wh_1/activate) before sending a test event"
            ),
            "the webhook is disabled; enable it before sending a test event"
        );
        assert_eq!(
            super::in_dashboard_terms(
                "the webhook is inactive: …; activate it (POST /v1/orgs/org_1/webhooks/wh_1/activate), then retry what waits"
            ),
            "the webhook is inactive: …; enable it, then retry what waits"
        );
        assert_eq!(
            super::in_dashboard_terms("the delivery's webhook is disabled; activate it first"),
            "the delivery's webhook is disabled; enable it first"
        );
        assert_eq!(
            super::in_dashboard_terms("a name (one word) stays"),
            "a name (one word) stays"
        );
    }

    use super::field_label;

    #[test]
    fn fields_are_named_as_the_form_names_them() {
        assert_eq!(field_label("timeout_ms"), "Timeout");
        assert_eq!(field_label("events[2]"), "Event types");
        assert_eq!(field_label("headers.x-team"), "Custom header x-team");
        assert_eq!(field_label("headers"), "Custom headers");
        assert_eq!(field_label("data/user/id"), "data/user/id");
    }
}
