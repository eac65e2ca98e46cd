//! WebSub verification of intent for webhooks that ask for it: subscribe every channel on
//! activation, unsubscribe on deactivation, resend on demand, and show where each stands.

use std::time::Duration;

use futures::StreamExt;
use herald_core::directory::OrgSnapshot;
use herald_core::subscription::{self, Mode, State, Subscription, Verification};
use herald_core::webhook::Webhook;
use herald_core::{Invalid, OrgId, WebhookId};
use herald_dispatch::websub;

use super::cancel_safe::write_then_forget;
use super::{Scope, ServiceError, ServiceResult};
use crate::app::AppState;

/// Whether a verification asks anew or repeats the last request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Activation, or a new URL, channels or verification setting: what was verified before
    /// no longer counts, so a refusal stops deliveries at once.
    New,
    /// A resend of the same request: a refusal leaves a lease that still holds.
    Repeat,
}

/// How many channels' verification requests are out at once, per verification.
const VERIFICATIONS_AT_ONCE: usize = 32;

/// Sends `mode` for each of the webhook's channels (or just `only`), [`VERIFICATIONS_AT_ONCE`]
/// at a time, and stores what each endpoint answered.
pub async fn verify(
    state: &AppState,
    snapshot: &OrgSnapshot,
    webhook: &Webhook,
    mode: Mode,
    only: Option<&str>,
    request: Request,
) -> ServiceResult<Vec<Subscription>> {
    let channels: Vec<String> = match only {
        Some(c) => vec![c.to_owned()],
        None => snapshot.channels_of(webhook),
    };
    verify_channels(state, snapshot, webhook, mode, channels, request).await
}

/// Subscribes, on each enabled WebSub webhook of the organization, the channels that have no
/// subscription under their current topic: a channel new to the webhook (a type registered on
/// a new channel, or a catalog enabled, under `*`), or every channel once the organization's
/// handle changed (the topics name it). Run after such a change is stored, in a task of its
/// own: the change's answer does not wait for endpoints. It takes the organization's turn for
/// changes once the change that called it is done, so that a webhook changed meanwhile (a new
/// URL) is not verified as it was. Other channels are left as they are.
pub fn subscribe_new_topics_soon(state: &AppState, org: &OrgId) {
    let (state, org) = (state.clone(), org.clone());
    tokio::spawn(async move {
        let turn = org.clone();
        let done = super::one_change_at_a_time(&state, &turn, move |state| async move {
            subscribe_new_topics(&state, &org).await;
            Ok(())
        })
        .await;
        if let Err(e) = done {
            tracing::warn!(org = %turn, error = %e, "could not take the organization's turn to subscribe its WebSub webhooks' new channels; resend them with POST …/verify");
        }
    });
}

async fn subscribe_new_topics(state: &AppState, org: &OrgId) {
    let snapshot = match state.directory.snapshot(org).await {
        Ok(snapshot) => snapshot,
        Err(e) => {
            tracing::warn!(org = %org, error = %herald_core::error_chain(&e), "could not read the organization to subscribe its WebSub webhooks' new channels; resend them with POST …/verify");
            return;
        }
    };
    for webhook in snapshot.webhooks() {
        if !webhook.active || webhook.verification != Verification::Websub {
            continue;
        }
        let subscribed = snapshot.subscriptions_of(&webhook.id);
        let new: Vec<String> = snapshot
            .channels_of(webhook)
            .into_iter()
            .filter(|channel| {
                let topic = subscription::topic(&snapshot.org, webhook.profile, channel);
                !subscribed
                    .iter()
                    .any(|s| &s.channel == channel && s.topic == topic && s.mode == Mode::Subscribe)
            })
            .collect();
        if new.is_empty() {
            continue;
        }
        let sent = verify_channels(
            state,
            &snapshot,
            webhook,
            Mode::Subscribe,
            new,
            Request::New,
        )
        .await;
        if let Err(e) = sent {
            tracing::warn!(org = %org, webhook = %webhook.id, error = %e, "could not store the answers to a WebSub webhook's new channels; resend them with POST …/verify");
        }
    }
}

/// [`verify`] for these channels of the webhook.
async fn verify_channels(
    state: &AppState,
    snapshot: &OrgSnapshot,
    webhook: &Webhook,
    mode: Mode,
    channels: Vec<String>,
    request: Request,
) -> ServiceResult<Vec<Subscription>> {
    let existing = snapshot.subscriptions_of(&webhook.id);
    let timeout = Duration::from_millis(u64::from(webhook.effective_timeout_ms()));
    let client = state.dispatcher.client();
    // Each check owns its channel: a stream of futures borrowing from the iterator's items
    // would not be `Send` for every lifetime, as the caller's task needs.
    let checks = channels.into_iter().map(|channel| {
        let topic = subscription::topic(&snapshot.org, webhook.profile, &channel);
        let previous = existing
            .iter()
            .find(|s| s.channel == channel)
            .map(|s| (*s).clone());
        async move {
            let mut sub = previous.unwrap_or_else(|| {
                Subscription::pending(webhook.id.clone(), channel, topic.clone(), mode)
            });
            if sub.mode != mode || request == Request::New {
                // A new request: what was verified before (for the other mode, or another URL)
                // no longer counts.
                sub.state = State::Pending;
                sub.expires_at = None;
                sub.renew_at = None;
            }
            sub.mode = mode;
            sub.topic = topic;
            let outcome = websub::verify_intent(
                client,
                webhook.url.as_str(),
                mode,
                &sub.topic,
                sub.lease_seconds,
                timeout,
            )
            .await;
            sub.record(state.clock.now(), outcome);
            sub
        }
    });
    // A bounded number at a time: a webhook subscribed to everything may have a channel for
    // each of hundreds of the organization's own types, each a connection held up to the
    // timeout. The catalogs' channels (a dozen at most) all go at once, as before.
    let subs: Vec<Subscription> = futures::stream::iter(checks)
        .buffered(VERIFICATIONS_AT_ONCE)
        .collect()
        .await;
    let org = webhook.org_id.clone();
    let subs = write_then_forget(state, &webhook.org_id, "webhook", |store| async move {
        store.save_subscriptions(&org, &subs).await.map(|()| subs)
    })
    .await?;
    let failed: Vec<&Subscription> = subs.iter().filter(|s| s.state == State::Failed).collect();
    match failed.first() {
        None => {
            tracing::info!(webhook = %webhook.id, org = %webhook.org_id, mode = mode.as_str(), channels = subs.len(), "WebSub verification sent; every channel confirmed")
        }
        // One channel's reason stands for the rest: they went to the same endpoint.
        Some(first) => tracing::info!(
            webhook = %webhook.id,
            org = %webhook.org_id,
            mode = mode.as_str(),
            channels = subs.len(),
            failed = failed.len(),
            channel = first.channel,
            reason = first.reason.as_deref().unwrap_or("-"),
            "WebSub verification sent; the endpoint did not confirm some channels"
        ),
    }
    Ok(subs)
}

/// Each channel of the webhook with its state; channels never sent show as pending.
pub async fn list(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &WebhookId,
) -> ServiceResult<Vec<Subscription>> {
    let snapshot = super::org_snapshot(state, scope, org).await?;
    let webhook = snapshot
        .webhook(id)
        .ok_or(ServiceError::NotFound("webhook"))?;
    // A webhook that does not verify its intent has no subscription that counts, whatever
    // was kept from when it did.
    if webhook.verification == Verification::None {
        return Ok(Vec::new());
    }
    let existing = snapshot.subscriptions_of(id);
    let mut out: Vec<Subscription> = existing.iter().map(|s| (*s).clone()).collect();
    for channel in snapshot.channels_of(webhook) {
        if !out.iter().any(|s| s.channel == channel) {
            // Never sent: what enabling sends (there is nothing to unsubscribe from).
            let topic = subscription::topic(&snapshot.org, webhook.profile, &channel);
            let mut sub = Subscription::pending(id.clone(), channel, topic, Mode::Subscribe);
            sub.reason = Some(if webhook.active {
                "not sent yet".into()
            } else {
                "not sent yet: it is sent when the webhook is enabled".into()
            });
            out.push(sub);
        }
    }
    out.sort_by(|a, b| a.channel.cmp(&b.channel));
    Ok(out)
}

/// Resends the verification for one channel or all, in the webhook's current mode.
pub async fn resend(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &WebhookId,
    channel: Option<String>,
) -> ServiceResult<Vec<Subscription>> {
    let snapshot = super::org_snapshot(state, scope, org).await?;
    let webhook = snapshot
        .webhook(id)
        .ok_or(ServiceError::NotFound("webhook"))?
        .clone();
    if webhook.verification != Verification::Websub {
        return Err(ServiceError::Conflict(format!(
            "this webhook does not use WebSub verification; turn it on first (PATCH \
             /v1/orgs/{org}/webhooks/{id} with \"verification\": \"websub\")"
        )));
    }
    if let Some(c) = &channel {
        let channels = snapshot.channels_of(&webhook);
        if !channels.contains(c) {
            return Err(Invalid::new(
                "channel",
                format!(
                    "'{}' is not one of this webhook's channels ({})",
                    herald_core::truncate_for_message(c),
                    channels.join(", ")
                ),
            )
            .into());
        }
    }
    let mode = if webhook.active {
        Mode::Subscribe
    } else {
        Mode::Unsubscribe
    };
    verify(
        state,
        &snapshot,
        &webhook,
        mode,
        channel.as_deref(),
        Request::Repeat,
    )
    .await?;
    list(state, scope, org, id).await
}
