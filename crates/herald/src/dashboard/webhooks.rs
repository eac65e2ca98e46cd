//! Webhooks: the create and edit forms, one webhook's page (settings, secret hidden, WebSub
//! state, health plots) and its actions: enable, disable, rotate the secret, send a test event,
//! resend the WebSub verification, delete.
//!
//! A secret appears once, as a one-time message on the page shown after creating or rotating;
//! every other page shows it masked.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::Serialize;

use herald_core::org::Organization;
use herald_core::profile::ProfileName;
use herald_core::subscription::Verification;
use herald_core::webhook::Webhook;
use herald_core::{Invalid, OrgId, WebhookId};

use super::error::{DashError, DashResult, describe};
use super::forms::{Form, path_id};
use super::health::{Chart, charts};
use super::orgs::org_id;
use super::session::{Flash, Post, Signed};
use super::templates::{self, Layout, when, when_opt};
use crate::app::AppState;
use crate::service::webhooks::{self, WebhookInput};
use crate::service::{ServiceError, deliveries, event_types, health, orgs, subscriptions};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/webhooks/new", get(new_webhook))
        .route("/orgs/{org}/webhooks", post(create_webhook))
        .route(
            "/orgs/{org}/webhooks/{id}",
            get(show_webhook).post(update_webhook),
        )
        .route("/orgs/{org}/webhooks/{id}/edit", get(edit_webhook))
        .route("/orgs/{org}/webhooks/{id}/{action}", post(webhook_action))
}

pub fn webhook_id(raw: &str) -> DashResult<WebhookId> {
    path_id(raw, WebhookId::parse)
}

/// The form as typed: kept when the service refuses it, so nothing has to be typed again.
#[derive(Debug, Serialize, Default)]
struct WebhookForm {
    name: String,
    url: String,
    description: String,
    profile: String,
    secret: String,
    events: Vec<String>,
    channels: Vec<String>,
    /// One `Name: value` a line.
    headers: String,
    timeout_ms: String,
    /// Seconds, separated by commas.
    retry_schedule: String,
    active: bool,
}

impl WebhookForm {
    fn read(form: &Form) -> Self {
        Self {
            name: form.text("name"),
            url: form.text("url"),
            description: form.text("description"),
            profile: form.text("profile"),
            secret: form.text("secret"),
            events: form.all("events"),
            channels: form.all("channels"),
            headers: form.get("headers").unwrap_or_default().to_owned(),
            timeout_ms: form.text("timeout_ms"),
            retry_schedule: form.text("retry_schedule"),
            active: form.checked("active"),
        }
    }

    fn of(w: &Webhook) -> Self {
        Self {
            name: w.name.clone(),
            url: w.url.as_str().to_owned(),
            description: w.description.clone().unwrap_or_default(),
            profile: w.profile.as_str().to_owned(),
            secret: String::new(),
            events: w.events.clone(),
            channels: w.channels.clone(),
            headers: w
                .headers
                .iter()
                .map(|(k, v)| format!("{k}: {v}\n"))
                .collect(),
            timeout_ms: w.timeout_ms.map(|t| t.to_string()).unwrap_or_default(),
            retry_schedule: w
                .retry_schedule
                .as_ref()
                .map(|s| join_numbers(s.delays().iter().map(|&d| u64::from(d))))
                .unwrap_or_default(),
            active: w.active,
        }
    }

    /// What the service gets. Empty optional fields clear the override.
    fn input(&self, creating: bool) -> Result<WebhookInput, Invalid> {
        let mut headers = BTreeMap::new();
        for (i, line) in self.headers.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (name, value) = line.split_once(':').ok_or_else(|| {
                Invalid::new(
                    "headers",
                    format!("line {}: write each header as Name: value", i + 1),
                )
            })?;
            headers.insert(name.trim().to_owned(), value.trim().to_owned());
        }
        let timeout_ms = match self.timeout_ms.as_str() {
            "" => None,
            t => Some(t.parse::<u64>().map_err(|_| {
                Invalid::new("timeout_ms", "must be a number of milliseconds, e.g. 5000")
            })?),
        };
        let retry_schedule = match self.retry_schedule.as_str() {
            "" => None,
            r => Some(
                r.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<u64>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| {
                        Invalid::new(
                            "retry_schedule",
                            "must be delays in seconds separated by commas, e.g. 0, 60, 300",
                        )
                    })?,
            ),
        };
        let optional = |s: &str| Some(s.to_owned()).filter(|s| !s.is_empty());
        Ok(WebhookInput {
            name: Some(self.name.clone()),
            url: Some(self.url.clone()),
            events: Some(self.events.clone()),
            channels: Some(self.channels.clone()),
            profile: optional(&self.profile),
            description: Some(optional(&self.description)),
            secret: optional(&self.secret).filter(|_| creating),
            active: creating.then_some(self.active),
            headers: Some(headers),
            timeout_ms: Some(timeout_ms),
            retry_schedule: Some(retry_schedule),
            ..WebhookInput::default()
        })
    }
}

fn join_numbers(values: impl IntoIterator<Item = u64>) -> String {
    values
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Serialize)]
struct Choice {
    value: String,
    label: String,
    hint: String,
    checked: bool,
}

#[derive(Serialize)]
struct FormPage {
    org_id: String,
    /// The webhook being edited; `None` on the create form.
    editing: Option<String>,
    form: WebhookForm,
    error: Option<String>,
    /// The field the error is about (`url`, `events`…), to show it there.
    error_field: Option<String>,
    all_events: bool,
    types: Vec<Choice>,
    channels: Vec<Choice>,
    profiles: Vec<Choice>,
}

async fn form_page(
    state: &AppState,
    signed: &Signed,
    org: &Organization,
    editing: Option<&WebhookId>,
    form: WebhookForm,
    error: Option<(StatusCode, String, Option<String>)>,
) -> DashResult<Response> {
    let types = event_types::list_for_org(state, &signed.scope, &org.id).await?;
    let mut channels: Vec<String> = types.iter().filter_map(|t| t.channel.clone()).collect();
    channels.sort();
    channels.dedup();
    let profile = if form.profile.is_empty() {
        "standard"
    } else {
        form.profile.as_str()
    };
    let page = FormPage {
        org_id: org.id.to_string(),
        editing: editing.map(|id| id.to_string()),
        all_events: form.events.iter().any(|e| e == "*"),
        types: types
            .iter()
            .map(|t| Choice {
                checked: form.events.contains(&t.name),
                value: t.name.clone(),
                label: t.name.clone(),
                hint: t.channel.clone().unwrap_or_default(),
            })
            .collect(),
        channels: channels
            .into_iter()
            .map(|c| Choice {
                checked: form.channels.contains(&c),
                label: c.clone(),
                value: c,
                hint: String::new(),
            })
            .collect(),
        profiles: ProfileName::ALL
            .iter()
            .map(|p| Choice {
                value: p.as_str().to_owned(),
                label: p.as_str().to_owned(),
                hint: String::new(),
                checked: p.as_str() == profile,
            })
            .collect(),
        form,
        error: error.as_ref().map(|(_, m, _)| m.clone()),
        error_field: error.as_ref().and_then(|(_, _, f)| f.clone()),
    };
    let status = error.map_or(StatusCode::OK, |(s, _, _)| s);
    let title = if editing.is_some() {
        "Edit webhook"
    } else {
        "New webhook"
    };
    let layout = Layout::new(state, signed, title, Some(org));
    Ok(templates::render(
        status,
        "webhook_form.html",
        &layout,
        page,
    ))
}

/// A refused form's status, message and field (its first part: `events[0]` → `events`).
fn form_error(e: ServiceError) -> (StatusCode, String, Option<String>) {
    let field = match &e {
        ServiceError::Invalid(i) => Some(
            i.field
                .split(['[', '.'])
                .next()
                .unwrap_or_default()
                .to_owned(),
        ),
        _ => None,
    };
    let (status, message) = describe(e);
    (status, message, field)
}

async fn new_webhook(
    State(state): State<AppState>,
    signed: Signed,
    Path(org): Path<String>,
) -> DashResult<Response> {
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let form = WebhookForm {
        active: true,
        profile: "standard".into(),
        ..WebhookForm::default()
    };
    form_page(&state, &signed, &org, None, form, None).await
}

async fn create_webhook(
    State(state): State<AppState>,
    Path(org): Path<String>,
    post: Post,
) -> DashResult<Response> {
    let Post { signed, form } = post;
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let typed = WebhookForm::read(&form);
    let created = match typed.input(true) {
        Ok(input) => webhooks::create(&state, &signed.scope, &org.id, input).await,
        Err(invalid) => Err(invalid.into()),
    };
    match created {
        Ok(w) => {
            signed.flash(&state, secret_flash(&w, "Webhook created."));
            Ok(Redirect::to(&webhook_path(&org.id, &w.id)).into_response())
        }
        Err(ServiceError::NotFound(_)) => Err(DashError::not_found()),
        Err(e) => form_page(&state, &signed, &org, None, typed, Some(form_error(e))).await,
    }
}

fn secret_flash(w: &Webhook, what: &str) -> Flash {
    Flash {
        kind: "secret",
        message: format!(
            "{what} This is its signing secret: copy it now, it will not be shown again."
        ),
        secret: Some(w.secret.clone()),
    }
}

fn webhook_path(org: &OrgId, id: &WebhookId) -> String {
    format!("/orgs/{org}/webhooks/{id}")
}

async fn edit_webhook(
    State(state): State<AppState>,
    signed: Signed,
    Path((org, id)): Path<(String, String)>,
) -> DashResult<Response> {
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let w = webhooks::get(&state, &signed.scope, &org.id, &webhook_id(&id)?).await?;
    form_page(
        &state,
        &signed,
        &org,
        Some(&w.id),
        WebhookForm::of(&w),
        None,
    )
    .await
}

async fn update_webhook(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    post: Post,
) -> DashResult<Response> {
    let Post { signed, form } = post;
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let id = webhook_id(&id)?;
    let typed = WebhookForm::read(&form);
    let updated = match typed.input(false) {
        Ok(input) => webhooks::update(&state, &signed.scope, &org.id, &id, input).await,
        Err(invalid) => Err(invalid.into()),
    };
    match updated {
        Ok(w) => {
            signed.flash(&state, Flash::ok("Webhook saved."));
            Ok(Redirect::to(&webhook_path(&org.id, &w.id)).into_response())
        }
        Err(ServiceError::NotFound(_)) => Err(DashError::not_found()),
        Err(e) => form_page(&state, &signed, &org, Some(&id), typed, Some(form_error(e))).await,
    }
}

/// One webhook's settings for display; the secret only masked.
#[derive(Serialize)]
struct WebhookView {
    id: String,
    name: String,
    description: Option<String>,
    url: String,
    profile: &'static str,
    signature: &'static str,
    active: bool,
    websub: bool,
    events: Vec<String>,
    channels: Vec<String>,
    secret_masked: String,
    previous_secret_until: Option<String>,
    headers: Vec<(String, String)>,
    timeout: String,
    retry_schedule: String,
    created: String,
    updated: String,
    failing_since: Option<String>,
    disabled_reason: Option<String>,
}

/// `whsec_••••••••` for Standard Webhooks keys; dots alone for others. Nothing of the secret
/// itself is shown.
fn mask(secret: &str) -> String {
    let prefix = if secret.starts_with("whsec_") {
        "whsec_"
    } else {
        ""
    };
    format!("{prefix}••••••••")
}

impl WebhookView {
    fn of(w: &Webhook, now: herald_core::Timestamp) -> Self {
        let overridden = |set: bool| if set { "" } else { " (profile default)" };
        Self {
            id: w.id.to_string(),
            name: w.name.clone(),
            description: w.description.clone(),
            url: w.url.as_str().to_owned(),
            profile: w.profile.as_str(),
            signature: w.effective_signature().as_str(),
            active: w.active,
            websub: w.verification == Verification::Websub,
            events: w.events.clone(),
            channels: w.channels.clone(),
            secret_masked: mask(&w.secret),
            previous_secret_until: w.previous_secret_expires_at.filter(|t| *t > now).map(when),
            headers: w
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            timeout: format!(
                "{} ms{}",
                w.effective_timeout_ms(),
                overridden(w.timeout_ms.is_some())
            ),
            retry_schedule: format!(
                "{} s{}",
                join_numbers(
                    w.effective_retry_schedule()
                        .delays()
                        .iter()
                        .map(|&d| u64::from(d))
                ),
                overridden(w.retry_schedule.is_some())
            ),
            created: when(w.created_at),
            updated: when(w.updated_at),
            failing_since: when_opt(w.failing_since),
            disabled_reason: w.disabled_reason.clone(),
        }
    }
}

#[derive(Serialize)]
struct SubscriptionRow {
    channel: String,
    topic: String,
    mode: &'static str,
    state: &'static str,
    reason: Option<String>,
    last_attempt: Option<String>,
    expires: Option<String>,
}

#[derive(Serialize)]
struct WebhookPage {
    org_id: String,
    webhook: WebhookView,
    subscriptions: Vec<SubscriptionRow>,
    charts: Vec<Chart>,
    recent: Vec<super::deliveries::DeliveryRow>,
}

async fn show_webhook(
    State(state): State<AppState>,
    signed: Signed,
    Path((org, id)): Path<(String, String)>,
) -> DashResult<Response> {
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let w = webhooks::get(&state, &signed.scope, &org.id, &webhook_id(&id)?).await?;
    let subscriptions = if w.verification == Verification::Websub {
        subscriptions::list(&state, &signed.scope, &org.id, &w.id).await?
    } else {
        Vec::new()
    };
    let series = health::webhook_health(&state, &signed.scope, &org.id, &w.id).await?;
    let page_request = herald_core::PageRequest::new(Some(10), None).map_err(ServiceError::from)?;
    let recent = deliveries::list(
        &state,
        &signed.scope,
        &org.id,
        &w.id,
        Default::default(),
        page_request,
    )
    .await?;
    let page = WebhookPage {
        org_id: org.id.to_string(),
        webhook: WebhookView::of(&w, state.clock.now()),
        subscriptions: subscriptions
            .into_iter()
            .map(|s| SubscriptionRow {
                channel: s.channel,
                topic: s.topic,
                mode: s.mode.as_str(),
                state: s.state.as_str(),
                reason: s.reason,
                last_attempt: when_opt(s.last_attempt_at),
                expires: when_opt(s.expires_at),
            })
            .collect(),
        charts: charts(&series),
        recent: recent
            .data
            .iter()
            .map(super::deliveries::DeliveryRow::from)
            .collect(),
    };
    let layout = Layout::new(&state, &signed, w.name.clone(), Some(&org));
    Ok(templates::render(
        StatusCode::OK,
        "webhook.html",
        &layout,
        page,
    ))
}

/// Enable, disable, rotate, test, verify or delete; then back to the webhook (or the
/// organization, after a delete) with a message saying how it went.
async fn webhook_action(
    State(state): State<AppState>,
    Path((org, id, action)): Path<(String, String, String)>,
    post: Post,
) -> DashResult<Response> {
    let (org, id) = (org_id(&org)?, webhook_id(&id)?);
    let Post { signed, form } = post;
    let scope = &signed.scope;
    let mut back = webhook_path(&org, &id);
    let outcome: Result<Flash, ServiceError> = match action.as_str() {
        "enable" | "disable" => {
            let active = action == "enable";
            webhooks::set_active(&state, scope, &org, &id, active)
                .await
                .map(|(_, subs)| active_flash(active, subs.as_deref()))
        }
        "rotate" => webhooks::rotate_secret(&state, scope, &org, &id, None)
            .await
            .map(|w| {
                secret_flash(
                    &w,
                    "Secret rotated; the previous one keeps signing beside it for 24 hours.",
                )
            }),
        "test" => webhooks::send_test(&state, scope, &org, &id)
            .await
            .map(|(_, delivery)| {
                Flash::ok(format!(
                    "Test event sent as delivery {delivery}; it shows in the history below."
                ))
            }),
        "verify" => {
            let channel = Some(form.text("channel")).filter(|c| !c.is_empty());
            subscriptions::resend(&state, scope, &org, &id, channel)
                .await
                .map(|subs| verification_flash(&subs))
        }
        "delete" => match webhooks::delete(&state, scope, &org, std::slice::from_ref(&id)).await {
            Ok(deleted) if deleted.is_empty() => Err(ServiceError::NotFound("webhook")),
            Ok(_) => {
                back = format!("/orgs/{org}");
                Ok(Flash::ok(
                    "Webhook deleted; its pending deliveries are cancelled.",
                ))
            }
            Err(e) => Err(e),
        },
        _ => return Err(DashError::not_found()),
    };
    match outcome {
        Ok(flash) => signed.flash(&state, flash),
        Err(ServiceError::NotFound(_)) => return Err(DashError::not_found()),
        Err(e) => signed.flash(&state, Flash::error(describe(e).1)),
    }
    Ok(Redirect::to(&back).into_response())
}

fn active_flash(active: bool, subs: Option<&[herald_core::subscription::Subscription]>) -> Flash {
    match (active, subs) {
        (true, Some(subs)) => verification_flash(subs),
        (true, None) => Flash::ok("Webhook enabled; deliveries resume."),
        (false, _) => Flash::ok("Webhook disabled; its deliveries wait until it is enabled."),
    }
}

fn verification_flash(subs: &[herald_core::subscription::Subscription]) -> Flash {
    use herald_core::subscription::State;
    let failed: Vec<&str> = subs
        .iter()
        .filter(|s| s.state == State::Failed)
        .map(|s| s.channel.as_str())
        .collect();
    if failed.is_empty() {
        Flash::ok(format!(
            "WebSub verification sent for {} channel(s).",
            subs.len()
        ))
    } else {
        Flash::error(format!(
            "WebSub verification failed for: {}. See each channel's reason below.",
            failed.join(", ")
        ))
    }
}
