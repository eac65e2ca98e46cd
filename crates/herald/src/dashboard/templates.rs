//! The dashboard's templates (`crates/herald/templates/`, embedded in the binary) and how a
//! page is rendered: MiniJinja with HTML auto-escaping (every template name ends in `.html`),
//! so values are escaped unless a template says otherwise, which none does.
//!
//! Each page gets two values: `layout` (title, navigation, CSRF token, one-time messages) and
//! `page` (what the handler prepared, already formatted for display).

use std::sync::LazyLock;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior, context};
use serde::Serialize;

use herald_core::Timestamp;
use herald_core::org::Organization;

use super::session::{Flash, Signed};
use crate::app::AppState;
use crate::service::Scope;

const SOURCES: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/base.html")),
    ("macros.html", include_str!("../../templates/macros.html")),
    ("error.html", include_str!("../../templates/error.html")),
    ("confirm.html", include_str!("../../templates/confirm.html")),
    ("login.html", include_str!("../../templates/login.html")),
    ("orgs.html", include_str!("../../templates/orgs.html")),
    ("org.html", include_str!("../../templates/org.html")),
    ("catalog.html", include_str!("../../templates/catalog.html")),
    (
        "settings.html",
        include_str!("../../templates/settings.html"),
    ),
    (
        "webhook_form.html",
        include_str!("../../templates/webhook_form.html"),
    ),
    ("webhook.html", include_str!("../../templates/webhook.html")),
    (
        "deliveries.html",
        include_str!("../../templates/deliveries.html"),
    ),
    (
        "delivery.html",
        include_str!("../../templates/delivery.html"),
    ),
    ("event.html", include_str!("../../templates/event.html")),
];

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // A misspelt name in a template fails the render (and the tests) instead of printing "".
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.add_global("css_path", super::assets::CSS_PATH.as_str());
    env.add_global("js_path", super::assets::JS_PATH.as_str());
    env.add_global("icon_path", super::assets::ICON_PATH.as_str());
    for (name, source) in SOURCES {
        if let Err(e) = env.add_template(name, source) {
            // Pages using it answer 500; the template tests fail on this.
            tracing::error!(template = name, error = %e, "a dashboard template does not parse");
        }
    }
    env
});

/// What every page shows around its content.
#[derive(Debug, Serialize)]
pub struct Layout {
    pub title: String,
    pub signed_in: bool,
    pub is_admin: bool,
    pub csrf: String,
    /// The organization being looked at, for the navigation.
    pub org: Option<OrgNav>,
    pub flashes: Vec<Flash>,
}

#[derive(Debug, Serialize)]
pub struct OrgNav {
    pub id: String,
    pub name: String,
}

impl OrgNav {
    pub fn of(org: &Organization) -> Self {
        Self {
            id: org.id.to_string(),
            name: org.name.clone(),
        }
    }
}

impl Layout {
    /// The layout of a signed-in page; takes the session's one-time messages.
    pub async fn new(
        state: &AppState,
        signed: &Signed,
        title: impl Into<String>,
        org: Option<&Organization>,
    ) -> Self {
        Self {
            title: title.into(),
            signed_in: true,
            is_admin: signed.scope == Scope::Admin,
            csrf: signed.csrf.clone(),
            org: org.map(OrgNav::of),
            flashes: match &signed.page {
                Some(page) => state
                    .sessions
                    .take_flashes(&signed.session, page)
                    .await
                    .unwrap_or_else(|e| {
                        // Still stored: the next view of the page shows them.
                        tracing::warn!(error = %e, "could not read the session's messages");
                        Vec::new()
                    }),
                None => Vec::new(),
            },
        }
    }

    /// The layout of a page that shows no one-time messages (an error page): the page they
    /// were left for shows them.
    pub fn without_messages(signed: &Signed, title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            signed_in: true,
            is_admin: signed.scope == Scope::Admin,
            csrf: signed.csrf.clone(),
            org: None,
            flashes: Vec::new(),
        }
    }

    /// The layout of a page seen without signing in.
    pub fn anonymous(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            signed_in: false,
            is_admin: false,
            csrf: String::new(),
            org: None,
            flashes: Vec::new(),
        }
    }
}

/// Renders `template` with `layout` and `page`.
pub fn render(
    status: StatusCode,
    template: &str,
    layout: &Layout,
    page: impl Serialize,
) -> Response {
    let rendered = ENV.get_template(template).and_then(|t| {
        t.render(context! {
            layout => Serde(layout),
            page => Serde(&page),
            // A refused form's page says so in its title, which screen readers read first.
            refused => status.is_client_error(),
        })
    });
    match rendered {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(template, error = %e, "a dashboard page could not be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "This page could not be shown because of an internal error; it has been logged.",
            )
                .into_response()
        }
    }
}

/// What an error page says, kept with its answer so that it can be shown again with the
/// navigation of whoever is signed in (`error::with_navigation`).
#[derive(Debug, Clone)]
pub struct ErrorShown {
    pub status: StatusCode,
    pub message: String,
}

/// A page that says what went wrong, as anyone may see it (no navigation).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let mut response = error_page_in(status, message, &Layout::anonymous(reason(status)));
    response.extensions_mut().insert(ErrorShown {
        status,
        message: message.to_owned(),
    });
    response
}

/// The error page within `layout`.
pub fn error_page_in(status: StatusCode, message: &str, layout: &Layout) -> Response {
    #[derive(Serialize)]
    struct ErrorPage<'a> {
        status: u16,
        reason: &'a str,
        message: &'a str,
    }
    let page = ErrorPage {
        status: status.as_u16(),
        reason: reason(status),
        message,
    };
    render(status, "error.html", layout, page)
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

/// A time for people: `2026-05-01 12:00:03 UTC`.
pub fn when(t: Timestamp) -> String {
    t.to_datetime().format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn when_opt(t: Option<Timestamp>) -> Option<String> {
    t.map(when)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for (name, _) in SOURCES {
            assert!(ENV.get_template(name).is_ok(), "{name} does not parse");
        }
    }

    #[test]
    fn values_are_escaped() {
        let html = ENV
            .render_named_str(
                "test.html",
                "{{ x }}",
                context! { x => "<script>alert(1)</script>" },
            )
            .unwrap();
        assert!(!html.contains("<script>"), "{html}");
    }
}
