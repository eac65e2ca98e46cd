//! WebSub verification of intent for webhooks that ask for it: subscribe every channel on
//! activation, unsubscribe on deactivation, resend on demand, and show where each stands.

use std::time::Duration;

use futures::StreamExt;
use herald_core::directory::OrgSnapshot;
use herald_core::subscription::{self, AsRead, Mode, State, Subscription, Verification};
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

/// How long a channel may stay pending before it counts as never asked: far longer than any
/// verification takes (a webhook's timeout is at most a minute).
const STUCK_AFTER_SECS: i64 = 600;

/// How many webhooks' channels are asked for at once after a change to their organization.
const WEBHOOKS_AT_ONCE: usize = 8;

/// Subscribes, on each enabled WebSub webhook of the organization, the channels that have no
/// live subscription under their current topic: a channel new to the webhook (a type
/// registered on a new channel, or a catalog enabled, under `*`), one whose lease lapsed while
/// it was not the webhook's, or every channel once the organization's handle changed (the
/// topics name it). Run after such a change is stored, in a task of its own, so that the
/// change's answer does not wait for endpoints.
///
/// A channel whose lease still holds keeps it while the new topic is asked for (as a resend
/// does): an endpoint down at that moment keeps getting events, and its renewal is tried again
/// within the hour. A new channel refused waits for a resend, as one refused at activation
/// does. Answers are kept only where the webhook and the channel's subscription are still as
/// they were read: a webhook disabled, deleted or given a new URL meanwhile is left to that
/// change. One check runs per organization at a time; changes meanwhile make it run once more.
pub fn subscribe_new_topics_soon(state: &AppState, org: &OrgId) {
    let (state, org) = (state.clone(), org.clone());
    tokio::spawn(async move { check_org_topics(&state, &org).await });
}

/// Runs the organization's topic check now or, if one is running, has it run once more when
/// done: a burst of changes (types registered one after another) asks each channel once, not
/// once per change, and two renames are checked in order.
async fn check_org_topics(state: &AppState, org: &OrgId) {
    {
        let mut running = state.topic_checks.lock().expect("topic checks lock");
        if let Some(again) = running.get_mut(org) {
            *again = true;
            return;
        }
        running.insert(org.clone(), false);
    }
    // Taken out of the map however the check ends, so that a failed one does not stop the
    // organization's next.
    let _running = CheckRunning { state, org };
    loop {
        subscribe_new_topics(state, org).await;
        let mut running = state.topic_checks.lock().expect("topic checks lock");
        match running.get_mut(org) {
            Some(again) if *again => *again = false,
            _ => return,
        }
    }
}

/// The organization's entry in `topic_checks` while its check runs.
struct CheckRunning<'a> {
    state: &'a AppState,
    org: &'a OrgId,
}

impl Drop for CheckRunning<'_> {
    fn drop(&mut self) {
        if let Ok(mut running) = self.state.topic_checks.lock() {
            running.remove(self.org);
        }
    }
}

/// [`subscribe_new_topics_soon`] for every organization with an enabled WebSub webhook, in a
/// task of its own (none if the last is still running): what a change's own task did not do
/// (the node stopped first) is done at the next start, and within ten minutes after. Quiet
/// where every channel is subscribed under its topic.
pub fn subscribe_all_new_topics(state: &AppState) {
    use std::sync::atomic::Ordering;
    if state.checking_topics.swap(true, Ordering::AcqRel) {
        return;
    }
    let state = state.clone();
    tokio::spawn(async move {
        // Cleared however the sweep ends, so that the next run is not skipped for good.
        struct Sweeping<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Sweeping<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _sweeping = Sweeping(&state.checking_topics);
        match state.store.orgs_with_websub_webhooks().await {
            Ok(orgs) => {
                for org in orgs {
                    check_org_topics(&state, &org).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %herald_core::error_chain(&e), "could not list the organizations with WebSub webhooks to check their topics; trying again at the next retention run")
            }
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
    let now = state.clock.now();
    // A channel pending since before this moment was asked by a verification that was cut
    // short (its node stopped): it is asked again.
    let mut stuck_before = now.plus_secs(-STUCK_AFTER_SECS);
    if state.settings.storage.database_url.is_none() {
        // The embedded database has one node, this one: nothing it did not start since it
        // started is under way.
        stuck_before = stuck_before.max(state.started_at);
    }
    let work: Vec<(&Webhook, Vec<String>, Vec<String>)> = snapshot
        .webhooks()
        .iter()
        .filter(|w| w.active && w.verification == Verification::Websub)
        .filter_map(|webhook| {
            let (fresh, renewed) = channels_to_subscribe(&snapshot, webhook, now, stuck_before);
            (!fresh.is_empty() || !renewed.is_empty()).then_some((&**webhook, fresh, renewed))
        })
        .collect();
    futures::stream::iter(work)
        .for_each_concurrent(WEBHOOKS_AT_ONCE, |(webhook, fresh, renewed)| {
            let snapshot = &snapshot;
            async move {
                let mut asked =
                    ask_channels(state, snapshot, webhook, Mode::Subscribe, fresh, Request::New)
                        .await;
                asked.extend(
                    ask_channels(
                        state,
                        snapshot,
                        webhook,
                        Mode::Subscribe,
                        renewed,
                        Request::Repeat,
                    )
                    .await,
                );
                log_answers(webhook, Mode::Subscribe, &asked);
                if let Err(e) = save_unless_changed(state, snapshot, webhook, asked).await {
                    tracing::warn!(org = %webhook.org_id, webhook = %webhook.id, error = %e, "could not store the answers to a WebSub webhook's new channels; resend them with POST …/verify");
                }
            }
        })
        .await;
}

/// The webhook's channels without a live subscription under their current topic: those to ask
/// afresh, and those whose lease still holds (under an older topic, or no longer renewed), to
/// ask again keeping it.
fn channels_to_subscribe(
    snapshot: &OrgSnapshot,
    webhook: &Webhook,
    now: herald_core::Timestamp,
    stuck_before: herald_core::Timestamp,
) -> (Vec<String>, Vec<String>) {
    let stored = snapshot.subscriptions_of(&webhook.id);
    let (mut fresh, mut renewed) = (Vec::new(), Vec::new());
    for channel in snapshot.channels_of(webhook) {
        let topic = subscription::topic(&snapshot.org, webhook.profile, &channel);
        match stored.iter().find(|s| s.channel == channel) {
            None => fresh.push(channel),
            Some(s) if s.delivers(now) => {
                if s.topic != topic || s.renew_at.is_none() {
                    renewed.push(channel);
                }
            }
            // A lease that ran out while renewals failed: they go on asking, every hour, under
            // the topic as it is then.
            Some(s) if s.mode == Mode::Subscribe && s.renew_at.is_some() => {}
            // Refused: a resend's to repeat.
            Some(s)
                if s.topic == topic && s.mode == Mode::Subscribe && s.state == State::Failed => {}
            // A verification under way (a change to the webhook stores its channels pending,
            // then asks); one left pending since `stuck_before` (longer than any answer takes,
            // or from before this node started on the embedded database) was cut short.
            Some(s)
                if s.topic == topic
                    && s.mode == Mode::Subscribe
                    && s.state == State::Pending
                    && s.last_attempt_at
                        .unwrap_or(webhook.updated_at)
                        .max(webhook.updated_at)
                        > stuck_before => {}
            Some(_) => fresh.push(channel),
        }
    }
    (fresh, renewed)
}

/// Stores what the endpoint answered for each channel, unless the webhook changed since
/// `snapshot` was read (disabled, deleted, another URL or profile) or the channel's subscription
/// did (a deactivation or resend meanwhile): that change stands.
async fn save_unless_changed(
    state: &AppState,
    snapshot: &OrgSnapshot,
    webhook: &Webhook,
    asked: Vec<Subscription>,
) -> ServiceResult<()> {
    let org = webhook.org_id.clone();
    let current = match state.store.get_webhook(&org, &webhook.id).await {
        Ok(current) => current,
        Err(herald_core::store::StoreError::NotFound) => return Ok(()),
        Err(e) => return Err(ServiceError::from_store("webhook")(e)),
    };
    if !current.active
        || current.verification != Verification::Websub
        || current.url != webhook.url
        || current.profile != webhook.profile
    {
        tracing::debug!(webhook = %webhook.id, "webhook changed while its new channels were asked for; the change stands");
        return Ok(());
    }
    let read = snapshot.subscriptions_of(&webhook.id);
    let answered = asked.clone();
    let as_read: Vec<(Subscription, Option<AsRead>)> = asked
        .into_iter()
        .map(|sub| {
            let then = read
                .iter()
                .find(|s| s.channel == sub.channel)
                .map(|s| s.as_read());
            (sub, then)
        })
        .collect();
    let saved = write_then_forget(state, &org, "webhook", {
        let org = org.clone();
        |store| async move { store.save_subscriptions_as_read(&org, &as_read).await }
    })
    .await?;
    // A channel asked again after a stop (a verification cut short), or a new one: what waited
    // for it goes now. (Each delivery is still checked against what is stored.)
    if saved > 0 {
        send_what_waited(state, snapshot, webhook, &answered);
    }
    Ok(())
}

/// Where an organization's enabled WebSub webhooks are subscribed (a lease that holds), to tell
/// them when the organization is deleted.
pub fn subscribed_channels(
    snapshot: &OrgSnapshot,
    now: herald_core::Timestamp,
) -> Vec<(Webhook, Subscription)> {
    snapshot
        .webhooks()
        .iter()
        .filter(|w| w.active && w.verification == Verification::Websub)
        .flat_map(|w| {
            snapshot
                .subscriptions_of(&w.id)
                .into_iter()
                .filter(move |s| s.delivers(now))
                .map(move |s| ((**w).clone(), s.clone()))
        })
        .collect()
}

/// Sends `hub.mode=unsubscribe` for each of these subscriptions, in a task of its own, as
/// disabling their webhooks would: their organization was deleted (SPEC 4: a WebSub webhook
/// is deleted only once it unsubscribed), or their channels are no longer their webhooks'.
/// Nothing is stored; the answers are logged.
pub fn unsubscribe_soon(state: &AppState, org: &OrgId, subscribed: Vec<(Webhook, Subscription)>) {
    if subscribed.is_empty() {
        return;
    }
    let (state, org) = (state.clone(), org.clone());
    tokio::spawn(async move {
        let client = state.dispatcher.client();
        let asked = futures::stream::iter(subscribed)
            .map(|(webhook, sub)| async move {
                let timeout = Duration::from_millis(u64::from(webhook.effective_timeout_ms()));
                let answer = websub::verify_intent(
                    client,
                    webhook.url.as_str(),
                    &webhook.headers,
                    Mode::Unsubscribe,
                    &sub.topic,
                    sub.lease_seconds,
                    timeout,
                )
                .await;
                (webhook.id, sub.channel, answer)
            })
            .buffer_unordered(VERIFICATIONS_AT_ONCE)
            .collect::<Vec<_>>()
            .await;
        let refused: Vec<_> = asked
            .iter()
            .filter_map(|(webhook, channel, answer)| {
                Some((webhook, channel, answer.as_ref().err()?))
            })
            .collect();
        match refused.first() {
            None => {
                tracing::info!(org = %org, channels = asked.len(), "WebSub unsubscribe sent for channels no longer subscribed; every one confirmed");
            }
            // One refusal's channel and reason stand for the rest: usually one endpoint, told
            // of a new URL.
            Some((_, channel, reason)) => {
                let mut webhooks: Vec<String> =
                    refused.iter().map(|(w, _, _)| w.to_string()).collect();
                webhooks.sort();
                webhooks.dedup();
                tracing::info!(
                    org = %org,
                    channels = asked.len(),
                    refused = refused.len(),
                    webhooks = %webhooks.join(","),
                    channel = %channel,
                    reason = %reason,
                    "WebSub unsubscribe sent for channels no longer subscribed; the endpoint did not confirm some (it gets no more events on them all the same)"
                );
            }
        }
    });
}

/// [`verify`] for these channels of the webhook.
pub async fn verify_channels(
    state: &AppState,
    snapshot: &OrgSnapshot,
    webhook: &Webhook,
    mode: Mode,
    channels: Vec<String>,
    request: Request,
) -> ServiceResult<Vec<Subscription>> {
    let subs = ask_channels(state, snapshot, webhook, mode, channels, request).await;
    log_answers(webhook, mode, &subs);
    // Kept only for the webhook as it was asked for: an answer from a URL the webhook has left
    // meanwhile (another request moved it on while this one waited) must not verify the new
    // URL's channels, whose own verification decides.
    let org = webhook.org_id.clone();
    let current = match state.store.get_webhook(&org, &webhook.id).await {
        Ok(current) => Some(current),
        Err(herald_core::store::StoreError::NotFound) => None,
        Err(e) => return Err(ServiceError::from_store("webhook")(e)),
    };
    let still_asked = current.is_some_and(|c| {
        c.url == webhook.url
            && c.profile == webhook.profile
            && c.verification == webhook.verification
            && c.active == webhook.active
    });
    if !still_asked {
        tracing::info!(webhook = %webhook.id, "the webhook changed while its endpoint was asked; that answer is not kept (the change's own verification decides)");
        return Ok(subs);
    }
    let subs = write_then_forget(state, &webhook.org_id, "webhook", |store| async move {
        store.save_subscriptions(&org, &subs).await.map(|()| subs)
    })
    .await?;
    send_what_waited(state, snapshot, webhook, &subs);
    Ok(subs)
}

/// Once a channel that was not verified is, the deliveries that waited for it (events that
/// arrived while its verification was under way, say) go now rather than at their next look,
/// up to a minute later: the webhook's waiting deliveries are made due, as `retry-waiting`
/// makes them (the endpoint has just answered).
fn send_what_waited(
    state: &AppState,
    snapshot: &OrgSnapshot,
    webhook: &Webhook,
    subs: &[Subscription],
) {
    let now = state.clock.now();
    let before = snapshot.subscriptions_of(&webhook.id);
    let newly_verified = subs.iter().any(|s| {
        s.delivers(now)
            && !before
                .iter()
                .any(|b| b.channel == s.channel && b.delivers(now))
    });
    if !newly_verified {
        return;
    }
    // In a task of its own: a large backlog is walked in steps, and the answer need not wait.
    let (state, org, id) = (state.clone(), webhook.org_id.clone(), webhook.id.clone());
    tokio::spawn(async move {
        match state.store.retry_waiting(&org, &id, now).await {
            Ok(0) => {}
            Ok(count) => {
                tracing::debug!(webhook = %id, count, "deliveries that waited for a WebSub verification go now");
                state.dispatcher.wake_delivery_scheduler();
            }
            Err(e) => {
                tracing::warn!(webhook = %id, error = %herald_core::error_chain(&e), "could not send now the deliveries that waited for a WebSub verification; they go within a minute");
            }
        }
    });
}

/// Sends `mode` for these channels of the webhook, [`VERIFICATIONS_AT_ONCE`] at a time, and
/// answers each channel's subscription with what its endpoint answered (not stored yet).
async fn ask_channels(
    state: &AppState,
    snapshot: &OrgSnapshot,
    webhook: &Webhook,
    mode: Mode,
    channels: Vec<String>,
    request: Request,
) -> Vec<Subscription> {
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
                &webhook.headers,
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
    futures::stream::iter(checks)
        .buffered(VERIFICATIONS_AT_ONCE)
        .collect()
        .await
}

/// Logs where a verification left the webhook's channels: one line for them all.
fn log_answers(webhook: &Webhook, mode: Mode, subs: &[Subscription]) {
    if subs.is_empty() {
        return;
    }
    // Refused, whether the channel failed or kept a lease that still holds.
    let failed: Vec<&Subscription> = subs.iter().filter(|s| s.reason.is_some()).collect();
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
    // Only the webhook's channels: one dropped from it was unsubscribed, and has nothing left
    // to show or resend.
    let channels = snapshot.channels_of(webhook);
    let existing = snapshot.subscriptions_of(id);
    let now = state.clock.now();
    let mut out: Vec<Subscription> = existing
        .iter()
        .filter(|s| channels.contains(&s.channel))
        .map(|s| s.as_seen(now))
        .collect();
    for channel in channels {
        if !out.iter().any(|s| s.channel == channel) {
            // Never sent: what enabling sends (there is nothing to unsubscribe from).
            let topic = subscription::topic(&snapshot.org, webhook.profile, &channel);
            let mut sub = Subscription::pending(id.clone(), channel, topic, Mode::Subscribe);
            sub.reason = Some(if webhook.active {
                "no answer stored yet: its verification is under way (events that arrive \
                 meanwhile wait for it), or resend it"
                    .into()
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
                    "'{}' is not one of this webhook's channels ({}){}",
                    herald_core::truncate_for_message(c),
                    channels.join(", "),
                    herald_core::suggest::did_you_mean(herald_core::suggest::closest(
                        c,
                        channels.iter().map(String::as_str)
                    )),
                ),
            )
            .into());
        }
    }
    let never_asked = snapshot
        .subscriptions_of(&webhook.id)
        .iter()
        .all(|s| s.last_attempt_at.is_none());
    if !webhook.active && never_asked {
        // Disabled, a resend is an unsubscribe: from a webhook never enabled, that would
        // only puzzle its endpoint (and its owner, who meant to check the subscribe).
        return Err(ServiceError::Conflict(format!(
            "this webhook is disabled and has never subscribed, so there is nothing to \
             unsubscribe; activate it (POST /v1/orgs/{org}/webhooks/{id}/activate) to send each \
             channel the subscribe verification"
        )));
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
