//! One webhook's page (settings with the secret masked, WebSub state, health plots, latest
//! deliveries) and its actions: enable, disable, rotate the secret, send a test event, resend
//! the WebSub verification, delete. The forms are in `webhook_form.rs`.
//!
//! A secret appears once, as a one-time message on the page shown after creating or rotating;
//! every other page shows it masked.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;

use herald_core::subscription::{Subscription, Verification};
use herald_core::webhook::Webhook;
use herald_core::{OrgId, PageRequest, WebhookId};

use super::confirm;
use super::deliveries::DeliveryRow;
use super::error::{DashError, DashResult, describe};
use super::forms::path_id;
use super::health::{Chart, charts};
use super::orgs::org_id;
use super::session::{Flash, Post, Signed};
use super::templates::{self, Layout, when, when_opt};
use crate::app::AppState;
use crate::service::{ServiceError, deliveries, health, orgs, subscriptions, webhooks};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/webhooks/{id}", get(show_webhook))
        .route("/orgs/{org}/webhooks/{id}/{action}", post(webhook_action))
}

pub fn webhook_id(raw: &str) -> DashResult<WebhookId> {
    path_id(raw, WebhookId::parse)
}

pub fn webhook_path(org: &OrgId, id: &WebhookId) -> String {
    format!("/orgs/{org}/webhooks/{id}")
}

pub fn secret_flash(w: &Webhook, what: &str) -> Flash {
    Flash {
        kind: "secret".to_owned(),
        message: format!(
            "{what} This is its signing secret: copy it now, it will not be shown again."
        ),
        secret: Some(w.secret.clone()),
    }
}

pub fn join_numbers(values: impl IntoIterator<Item = u64>) -> String {
    values
        .into_iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
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
    /// The profile takes a secret the user chooses (permit): rotating asks for the new one.
    secret_chosen: bool,
    /// Its signature carries the previous secret's too after a rotation (Standard Webhooks).
    rotation_overlaps: bool,
    previous_secret_until: Option<String>,
    headers: Vec<(String, String)>,
    timeout: String,
    retry_schedule: String,
    /// `none`, or the most requests a second it is sent.
    rate_limit: String,
    /// `none` or `websub`.
    verification: &'static str,
    /// The profile's settings (CloudEvents' content mode, Opal's batch window), if any is set.
    options: Option<String>,
    created: String,
    updated: String,
    failing_since: Option<String>,
    disabled_reason: Option<String>,
}

/// The profile settings set (`content_mode binary`, `batch_window_ms 200`), as the API names
/// them; `None` when none is.
fn profile_settings(options: &herald_core::webhook::WebhookOptions) -> Option<String> {
    let value = serde_json::to_value(options).ok()?;
    let set: Vec<String> = value
        .as_object()?
        .iter()
        .map(|(name, v)| match v.as_str() {
            Some(text) => format!("{name} {text}"),
            None => format!("{name} {v}"),
        })
        .collect();
    (!set.is_empty()).then(|| set.join(", "))
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
            secret_chosen: w.profile.secret_policy()
                == herald_core::profile::SecretPolicy::UserSupplied,
            rotation_overlaps: w.rotation_overlaps(),
            previous_secret_until: w.previous_secret_expires_at.filter(|t| *t > now).map(when),
            // Often the receiver's credentials: names only (the edit form has the values).
            headers: w
                .headers
                .keys()
                .map(|k| (k.clone(), "••••••••".to_owned()))
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
            rate_limit: w
                .rate_limit_per_second
                .map_or_else(|| "none".to_owned(), |n| format!("{n} requests a second")),
            verification: w.verification.as_str(),
            options: profile_settings(&w.options),
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
    /// The badge's colour: the state of the last request, whatever its mode.
    state: &'static str,
    /// Where the channel stands, in words ("unsubscribed", not "unsubscribe · verified").
    status: &'static str,
    reason: Option<String>,
    last_attempt: Option<String>,
    /// Only while subscribed: an unsubscribed channel's old lease means nothing.
    expires: Option<String>,
}

impl From<Subscription> for SubscriptionRow {
    fn from(s: Subscription) -> Self {
        use herald_core::subscription::{Mode, State};
        let status = match (s.mode, s.state) {
            (Mode::Subscribe, state) => state.as_str(),
            (Mode::Unsubscribe, State::Pending) => "unsubscribing",
            (Mode::Unsubscribe, State::Verified) => "unsubscribed",
            (Mode::Unsubscribe, State::Failed) => "unsubscribe failed",
        };
        Self {
            channel: s.channel,
            topic: s.topic,
            state: s.state.as_str(),
            status,
            reason: s.reason,
            last_attempt: when_opt(s.last_attempt_at),
            expires: when_opt(s.expires_at.filter(|_| s.mode == Mode::Subscribe)),
        }
    }
}

#[derive(Serialize)]
struct WebhookPage {
    org_id: String,
    webhook: WebhookView,
    /// Until when this node holds requests back (its circuit is open), if it does.
    circuit_open_until: Option<String>,
    /// Until when this node holds deliveries back because the endpoint asked it to, if it does.
    retry_after_until: Option<String>,
    subscriptions: Vec<SubscriptionRow>,
    charts: Vec<Chart>,
    recent: Vec<DeliveryRow>,
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
    let latest = PageRequest::new(Some(10), None).map_err(ServiceError::from)?;
    let filter = Default::default();
    let recent = deliveries::list(&state, &signed.scope, &org.id, &w.id, filter, latest).await?;
    let page = WebhookPage {
        org_id: org.id.to_string(),
        webhook: WebhookView::of(&w, state.clock.now()),
        circuit_open_until: state
            .dispatcher
            .circuit_open_until(&w)
            .map(super::templates::when),
        retry_after_until: state
            .dispatcher
            .retry_after_until(&w)
            .map(super::templates::when),
        subscriptions: subscriptions
            .into_iter()
            .map(SubscriptionRow::from)
            .collect(),
        charts: charts(&series),
        recent: recent
            .data
            .iter()
            .map(|d| DeliveryRow::of(d, state.clock.now()))
            .collect(),
    };
    let layout = Layout::new(&state, &signed, w.name.clone(), Some(&org)).await;
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
    // What cannot be undone is asked first; a secret typed for the rotation is answer enough.
    let asks = action == "delete" || (action == "rotate" && form.as_typed("secret").is_empty());
    if asks && !confirm::confirmed(&form) {
        let w = confirm::webhook_seen(&state, &signed, &org, &id).await?;
        let (title, consequence, go) = if action == "delete" {
            (
                "Delete this webhook?",
                "Its pending deliveries are cancelled, for good; its history stays readable.",
                "Delete",
            )
        } else if w.rotation_overlaps() {
            (
                "Rotate the secret?",
                "The new secret is shown once; the previous one keeps signing beside it for 24 hours.",
                "Rotate secret",
            )
        } else {
            (
                "Rotate the secret?",
                "The new secret is shown once. This profile's signature carries one secret: its receiver needs the new one at once.",
                "Rotate secret",
            )
        };
        let action = format!("{back}/{action}");
        let question = confirm::Question {
            title,
            consequence,
            go,
            back: &back,
        };
        return confirm::ask(&state, &signed, &org, &form, &action, question).await;
    }
    let outcome: Result<Flash, ServiceError> = match action.as_str() {
        "enable" | "disable" => {
            let active = action == "enable";
            webhooks::set_active(&state, scope, &org, &id, active, None)
                .await
                .map(|(_, subs)| active_flash(active, subs.as_deref()))
        }
        "rotate" => {
            let secret = Some(form.as_typed("secret")).filter(|s| !s.is_empty());
            webhooks::rotate_secret(&state, scope, &org, &id, secret, None)
                .await
                .map(|w| {
                    let what = if w.previous_secret_expires_at.is_some() {
                        "Secret rotated; the previous one keeps signing beside it for 24 hours."
                    } else {
                        "Secret rotated. This profile's signature carries one secret, made with the new one from now on: its receiver needs it now."
                    };
                    secret_flash(&w, what)
                })
        }
        "test" => match webhooks::send_test(&state, scope, &org, &id).await {
            Ok((_, delivery)) => test_flash(&state, scope, &org, &delivery).await,
            Err(e) => Err(e),
        },
        "verify" => {
            let channel = Some(form.text("channel")).filter(|c| !c.is_empty());
            subscriptions::resend(&state, scope, &org, &id, channel.clone())
                .await
                .map(|subs| verification_flash(&subs, channel.as_deref()))
        }
        "delete" => {
            match webhooks::delete(&state, scope, &org, std::slice::from_ref(&id), None).await {
                Ok(deleted) if deleted.is_empty() => Err(ServiceError::NotFound("webhook")),
                Ok(_) => {
                    back = format!("/orgs/{org}");
                    Ok(Flash::ok(
                        "Webhook deleted; its pending deliveries are cancelled.",
                    ))
                }
                Err(e) => Err(e),
            }
        }
        _ => return Err(DashError::not_found()),
    };
    let flash = match outcome {
        Ok(flash) => flash,
        Err(ServiceError::NotFound(_)) => return Err(DashError::not_found()),
        Err(e) => Flash::error(describe(e).1),
    };
    Ok(signed.flash_then_go(&state, flash, &back).await)
}

/// How long "Send test" and "Resend" wait for the endpoint's answer before the page comes back.
pub(super) const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the endpoint answered to an attempt, and where that left its delivery.
pub(super) struct Answered {
    /// The delivery's state after the attempt.
    pub after: herald_core::delivery::DeliveryState,
    /// The endpoint's answer, or what went wrong, in words.
    pub answer: String,
    pub took_ms: u32,
    /// That the delivery's webhook is disabled now, and by whom: a `410 Gone` disables it as
    /// the attempt is recorded (not before its page may read it), and so may a failing streak.
    pub disabled: Option<String>,
}

impl Answered {
    /// Where a delivery still pending after a failed attempt goes from here.
    pub(super) fn what_next(&self) -> String {
        match &self.disabled {
            Some(disabled) => {
                format!("{disabled}: it waits until the webhook is enabled again")
            }
            None => "it is retried on the webhook's schedule".to_owned(),
        }
    }
}

/// What the endpoint answered to a delivery's attempt after the `made` it had, if it came
/// within [`ANSWER_WAIT`]. A failure to read it counts as no answer yet: sent is sent.
pub(super) async fn answer_to_attempt(
    state: &AppState,
    scope: &crate::service::Scope,
    org: &OrgId,
    delivery: &herald_core::DeliveryId,
    made: usize,
) -> Option<Answered> {
    let detail = deliveries::next_attempt(state, scope, org, delivery, made, ANSWER_WAIT)
        .await
        .ok()??;
    // The latest attempt: a retry may already have followed a first one that failed.
    let attempt = detail.attempts.last()?;
    // The attempt's own words say more than its status (a redirect: register the final URL).
    let answer = match (&attempt.error_message, attempt.status) {
        (Some(message), _) => message.clone(),
        (None, Some(status)) => format!("the endpoint answered {status}"),
        (None, None) => attempt
            .error
            .clone()
            .unwrap_or_else(|| "it failed".to_owned()),
    };
    let disabled = if attempt.status == Some(410) {
        Some("Herald disabled the webhook (the endpoint answered 410 Gone)".to_owned())
    } else {
        webhooks::get(state, scope, org, &detail.delivery.webhook_id)
            .await
            .ok()
            .filter(|w| !w.active)
            .map(|w| match w.disabled_reason {
                Some(why) => format!("Herald disabled the webhook ({why})"),
                None => "the webhook is disabled".to_owned(),
            })
    };
    Some(Answered {
        after: detail.delivery.state,
        answer,
        took_ms: attempt.duration_ms,
        disabled,
    })
}

/// What became of a test just sent: the endpoint's answer if it came within [`ANSWER_WAIT`].
async fn test_flash(
    state: &AppState,
    scope: &crate::service::Scope,
    org: &OrgId,
    delivery: &herald_core::DeliveryId,
) -> Result<Flash, ServiceError> {
    use herald_core::delivery::DeliveryState;
    let Some(answered) = answer_to_attempt(state, scope, org, delivery, 0).await else {
        return Ok(Flash::ok(format!(
            "Test event sent as delivery {delivery}; no answer yet: it shows in the history \
             below when one comes."
        )));
    };
    let Answered {
        answer, took_ms, ..
    } = &answered;
    Ok(match answered.after {
        DeliveryState::Succeeded => Flash::ok(format!("Test delivered: {answer} in {took_ms} ms.")),
        DeliveryState::Pending => Flash::error(format!(
            "Test not delivered: {answer} after {took_ms} ms; {} (delivery {delivery} in the \
             history below).",
            answered.what_next()
        )),
        _ => Flash::error(format!(
            "Test not delivered: {answer} after {took_ms} ms, and no attempt is left (delivery \
             {delivery} in the history below)."
        )),
    })
}

fn active_flash(active: bool, subs: Option<&[Subscription]>) -> Flash {
    match (active, subs) {
        (true, Some(subs)) => verification_flash(subs, None),
        (true, None) => Flash::ok("Webhook enabled; deliveries resume."),
        (false, subs) => {
            let disabled = "Webhook disabled: what it has pending waits until it is enabled; \
                            events that arrive meanwhile are not delivered to it.";
            let unconfirmed: Vec<&str> = subs
                .unwrap_or_default()
                .iter()
                .filter(|s| s.state == herald_core::subscription::State::Failed)
                .map(|s| s.channel.as_str())
                .collect();
            if unconfirmed.is_empty() {
                Flash::ok(disabled)
            } else {
                // The CLI says so too: the endpoint may go on expecting events it will not get.
                Flash::ok(format!(
                    "{disabled} The endpoint did not confirm the unsubscribe for: {}; it is \
                     disabled all the same (Resend below tells the endpoint again).",
                    unconfirmed.join(", ")
                ))
            }
        }
    }
}

/// What became of the verification sent for `channel` (every channel when `None`): the
/// webhook's other channels keep what they were, and are not this message's.
pub(super) fn verification_flash(subs: &[Subscription], channel: Option<&str>) -> Flash {
    use herald_core::subscription::State;
    let sent: Vec<&Subscription> = subs
        .iter()
        .filter(|s| channel.is_none_or(|c| s.channel == c))
        .collect();
    let failed: Vec<&str> = sent
        .iter()
        .filter(|s| s.state == State::Failed)
        .map(|s| s.channel.as_str())
        .collect();
    // Refused, but a lease given before still holds (a resend or renewal the endpoint turned
    // down): events go on until it runs out, and this is no success either.
    let refused: Vec<&str> = sent
        .iter()
        .filter(|s| s.state == State::Verified && s.reason.is_some())
        .map(|s| s.channel.as_str())
        .collect();
    if failed.is_empty() && refused.is_empty() {
        Flash::ok(format!(
            "WebSub verification sent for {}.",
            crate::counted(sent.len() as u64, "channel", "channels")
        ))
    } else if failed.is_empty() {
        Flash::error(format!(
            "The endpoint refused the verification for: {}. The lease it gave before still \
             holds, so events go on until it runs out. See each channel's reason below.",
            refused.join(", ")
        ))
    } else {
        Flash::error(format!(
            "WebSub verification failed for: {}. See each channel's reason below.",
            failed.join(", ")
        ))
    }
}
