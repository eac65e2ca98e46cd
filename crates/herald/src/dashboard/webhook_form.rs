//! The webhook create and edit forms. What was typed is kept when the service refuses it, and
//! the error is shown next to the field it is about; a new webhook's secret is shown once, on
//! the page after creating it.

use std::collections::BTreeMap;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;

use herald_core::org::Organization;
use herald_core::profile::ProfileName;
use herald_core::subscription::Subscription;
use herald_core::webhook::Webhook;
use herald_core::{Invalid, Timestamp, WebhookId};

use super::error::{DashError, DashResult, describe};
use super::forms::Form;
use super::orgs::org_id;
use super::session::{Flash, Post, Signed};
use super::templates::{self, Layout};
use super::webhooks::{join_numbers, secret_flash, verification_flash, webhook_id, webhook_path};
use crate::app::AppState;
use crate::service::webhooks::{self, WebhookInput};
use crate::service::{ServiceError, event_types, orgs};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/webhooks/new", get(new_webhook))
        .route("/orgs/{org}/webhooks", post(create_webhook))
        .route("/orgs/{org}/webhooks/{id}", post(update_webhook))
        .route("/orgs/{org}/webhooks/{id}/edit", get(edit_webhook))
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
    /// When the webhook being edited was last changed, as the form was opened (milliseconds):
    /// a save over a change made since (another tab, Herald disabling it) is refused.
    read_at: String,
}

impl WebhookForm {
    fn read(form: &Form) -> Self {
        Self {
            name: form.text("name"),
            url: form.text("url"),
            description: form.text("description"),
            profile: form.text("profile"),
            secret: form.as_typed("secret"),
            events: form.all("events"),
            channels: form.all("channels"),
            headers: form.get("headers").unwrap_or_default().to_owned(),
            timeout_ms: form.text("timeout_ms"),
            retry_schedule: form.text("retry_schedule"),
            active: form.checked("active"),
            read_at: form.text("read_at"),
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
            read_at: w.updated_at.as_millis().to_string(),
        }
    }

    /// The edit form's fields whose values differ from `other`'s, by their labels: not the
    /// secret, which a form never shows, nor whether the webhook is enabled, which only the
    /// creation form asks (saving an edit leaves it as it is).
    fn differs_from(&self, other: &Self) -> Vec<&'static str> {
        // Header names are stored lower-case and in order: `X-Team: a` typed is `x-team: a`.
        let lines = |text: &str| -> Vec<String> {
            let mut lines: Vec<String> = text
                .lines()
                .map(|l| match l.split_once(':') {
                    Some((name, value)) => {
                        format!("{}:{}", name.trim().to_ascii_lowercase(), value.trim())
                    }
                    None => l.trim().to_owned(),
                })
                .filter(|l| !l.is_empty())
                .collect();
            lines.sort();
            lines
        };
        [
            ("Name", self.name.trim() != other.name.trim()),
            ("URL", self.url.trim() != other.url.trim()),
            (
                "Description",
                self.description.trim() != other.description.trim(),
            ),
            ("Profile", self.profile != other.profile),
            ("Event types", self.events != other.events),
            ("Channels", self.channels != other.channels),
            (
                "Custom headers",
                lines(&self.headers) != lines(&other.headers),
            ),
            ("Timeout", self.timeout_ms.trim() != other.timeout_ms.trim()),
            (
                "Retry schedule",
                self.retry_schedule.trim() != other.retry_schedule.trim(),
            ),
        ]
        .into_iter()
        .filter_map(|(label, differs)| differs.then_some(label))
        .collect()
    }

    /// What the service gets. Empty optional fields clear the override.
    fn input(&self, creating: bool) -> Result<WebhookInput, Invalid> {
        // Nothing ticked creates a webhook for every event; a change to that is refused (it
        // must not widen what a webhook gets unseen), said here in the form's words.
        if !creating && self.events.is_empty() && self.channels.is_empty() {
            return Err(Invalid::new(
                "events",
                "nothing is ticked: tick All event types for every event, or the types and \
                 channels it should get (to send it nothing for a while, disable it)",
            ));
        }
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
            if headers
                .insert(name.trim().to_owned(), value.trim().to_owned())
                .is_some()
            {
                return Err(Invalid::new(
                    "headers",
                    format!("line {}: '{}' is given twice; keep one", i + 1, name.trim()),
                ));
            }
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
    use herald_core::event_type::{OPERATIONAL_TYPES, OPERATIONS_CHANNEL};
    // What the organization posts, and Herald's own news, which webhooks may subscribe to too
    // (left off the form, a subscription to them made through the API would be lost on save).
    let mut types: Vec<(String, Option<String>)> =
        event_types::list_for_org(state, &signed.scope, &org.id)
            .await?
            .into_iter()
            .map(|t| (t.name, t.channel))
            .chain(
                OPERATIONAL_TYPES
                    .map(|name| (name.to_owned(), Some(OPERATIONS_CHANNEL.to_owned()))),
            )
            .collect();
    // Whatever else the webhook subscribes to (herald.test, through the API) stays offered,
    // checked: a save from here keeps what the form does not otherwise show.
    let others: Vec<String> = form
        .events
        .iter()
        .filter(|e| *e != "*" && !types.iter().any(|(name, _)| name == *e))
        .cloned()
        .collect();
    types.extend(others.into_iter().map(|name| (name, None)));
    let mut channels: Vec<String> = types.iter().filter_map(|(_, c)| c.clone()).collect();
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
            .map(|(name, channel)| Choice {
                checked: form.events.contains(name),
                value: name.clone(),
                label: name.clone(),
                hint: channel.clone().unwrap_or_default(),
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
    // Tabs and history entries say which webhook (by its stored name: the typed one may be
    // what was refused), and for which organization.
    let title = match editing {
        Some(id) => match webhooks::get(state, &signed.scope, &org.id, id).await {
            Ok(w) => format!("Edit {}", w.name),
            Err(_) => "Edit webhook".to_owned(),
        },
        None => format!("New webhook for {}", org.name),
    };
    let layout = Layout::new(state, signed, title, Some(org)).await;
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
        // The webhook's page shows its channels' verification states.
        Ok(input) => webhooks::create(&state, &signed.scope, &org.id, input)
            .await
            .map(|(w, _)| w),
        Err(invalid) => Err(invalid.into()),
    };
    match created {
        Ok(w) => {
            let flash = secret_flash(&w, "Webhook created.");
            Ok(signed
                .flash_then_go(&state, flash, &webhook_path(&org.id, &w.id))
                .await)
        }
        Err(ServiceError::NotFound(_)) => Err(DashError::not_found()),
        Err(e) => form_page(&state, &signed, &org, None, typed, Some(form_error(e))).await,
    }
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

/// "Webhook saved.", and what became of the WebSub verification the change sent (a new URL,
/// new channels or a profile that verifies its intent are verified again before they get
/// events), as enabling the webhook says it.
fn saved_flash(w: &Webhook, asked: Option<&[Subscription]>) -> Flash {
    use herald_core::subscription::Verification;
    match asked {
        Some(sent) if w.active && w.verification == Verification::Websub => {
            let verified = verification_flash(sent, None);
            Flash {
                message: format!("Webhook saved. {}", verified.message),
                ..verified
            }
        }
        _ => Flash::ok("Webhook saved."),
    }
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
        Ok(mut input) => {
            // Saved over a change made since the form was opened, the form would undo it
            // unseen: the service refuses it.
            input.unchanged_since = typed.read_at.parse().ok().map(Timestamp::from_millis);
            webhooks::update(&state, &signed.scope, &org.id, &id, input).await
        }
        Err(invalid) => Err(invalid.into()),
    };
    match updated {
        Ok((w, asked)) => {
            let flash = saved_flash(&w, asked.as_deref());
            Ok(signed
                .flash_then_go(&state, flash, &webhook_path(&org.id, &w.id))
                .await)
        }
        Err(ServiceError::Changed { now }) => {
            // Saving again puts every field of this form back: say which of them differ from
            // the webhook as it is now, the other change among them.
            let differing = match webhooks::get(&state, &signed.scope, &org.id, &id).await {
                Ok(current) => typed.differs_from(&WebhookForm::of(&current)),
                Err(_) => Vec::new(),
            };
            let mut again = typed;
            again.read_at = now.as_millis().to_string();
            let differ = if differing.is_empty() {
                String::new()
            } else {
                format!(
                    " This form differs from the webhook as it is now in: {}; saving again \
                     keeps this form's value for each.",
                    differing.join(", ")
                )
            };
            let message = format!(
                "This webhook was changed since this form was opened (in another tab, or by \
                 Herald). Your changes are below and were not saved: compare them with the \
                 webhook's page, then save again.{differ}"
            );
            let error = (StatusCode::CONFLICT, message, None);
            form_page(&state, &signed, &org, Some(&id), again, Some(error)).await
        }
        Err(ServiceError::NotFound(_)) => Err(DashError::not_found()),
        Err(e) => form_page(&state, &signed, &org, Some(&id), typed, Some(form_error(e))).await,
    }
}
