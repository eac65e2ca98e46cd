//! Asking before an action that cannot be undone (deleting, revoking, rotating, resending in
//! bulk). With JavaScript, the browser's dialog asks and `herald.js` marks the form
//! `confirmed`; without it, the first post gets this page, which asks and posts the same form
//! again, marked. So no click deletes anything unasked, whatever the browser runs.

use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::error::{DashError, DashResult};
use super::forms::Form;
use super::session::Signed;
use super::templates::{self, Layout};
use crate::app::AppState;
use crate::service::{ServiceError, orgs, webhooks};
use herald_core::webhook::Webhook;
use herald_core::{OrgId, WebhookId};

/// The field `herald.js` (or this page's own form) sets once the user said yes.
const CONFIRMED: &str = "confirmed";

/// What to ask, and what the yes does.
pub struct Question<'a> {
    /// The page's title and heading: "Delete this webhook?".
    pub title: &'a str,
    /// What follows from it, in a sentence or two.
    pub consequence: &'a str,
    /// The button that goes ahead: "Delete".
    pub go: &'a str,
    /// Where "Cancel" leads: the page the form was on.
    pub back: &'a str,
}

#[derive(Serialize)]
struct ConfirmPage<'a> {
    title: &'a str,
    consequence: &'a str,
    go: &'a str,
    back: &'a str,
    action: &'a str,
    /// The form's other fields, posted again as they came (never a secret: a form with one
    /// typed into it is not asked about).
    fields: Vec<(&'a str, &'a str)>,
}

/// Whether the form says the user already answered yes.
pub fn confirmed(form: &Form) -> bool {
    form.get(CONFIRMED) == Some("yes")
}

/// The webhook, or not found unless it is one the signed-in person may see: asked about
/// another's, the page would say that it exists.
pub async fn webhook_seen(
    state: &AppState,
    signed: &Signed,
    org: &OrgId,
    id: &WebhookId,
) -> DashResult<Webhook> {
    match webhooks::get(state, &signed.scope, org, id).await {
        Ok(w) => Ok(w),
        Err(ServiceError::NotFound(_)) => Err(DashError::not_found()),
        Err(e) => Err(e.into()),
    }
}

/// The page that asks `question` and, on yes, posts `form` to `action` again: within `org`,
/// which must be one the signed-in person may see (another's is not found, as its pages are).
pub async fn ask(
    state: &AppState,
    signed: &Signed,
    org: &OrgId,
    form: &Form,
    action: &str,
    question: Question<'_>,
) -> DashResult<Response> {
    let org = match orgs::get(state, &signed.scope, org).await {
        Ok(org) => org,
        Err(ServiceError::NotFound(_)) => return Err(DashError::not_found()),
        Err(e) => return Err(e.into()),
    };
    let fields = form
        .pairs()
        .filter(|(name, _)| !matches!(*name, "csrf" | CONFIRMED | "secret"))
        .collect();
    let page = ConfirmPage {
        title: question.title,
        consequence: question.consequence,
        go: question.go,
        back: question.back,
        action,
        fields,
    };
    let layout = Layout::new(state, signed, question.title, Some(&org)).await;
    Ok(templates::render(
        StatusCode::OK,
        "confirm.html",
        &layout,
        page,
    ))
}
