//! Webhooks: create, read, change, enable/disable, rotate the secret, send a test event, delete.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_core::directory::OrgSnapshot;
use herald_core::event::NewEvent;
use herald_core::profile::{ProfileName, SignatureScheme};
use herald_core::retry::RetrySchedule;
use herald_core::store::{DueDelivery, IngestItem, NewDelivery, Placement};
use herald_core::subscription::{Mode, Subscription, Verification};
use herald_core::suggest::{closest, did_you_mean};
use herald_core::webhook::{
    ROTATION_OVERLAP_MS, Webhook, WebhookOptions, WebhookUrl, parse_description, parse_headers,
    parse_rate_limit, parse_subscription, parse_timeout_ms,
};
use herald_core::{
    DeliveryId, Invalid, OrgId, Page, PageRequest, Timestamp, WebhookId, event_type, org,
};

use super::cancel_safe::{GiveBackIfDropped, to_the_end, write_then_forget};
use super::{Scope, ServiceError, ServiceResult};
use crate::app::AppState;

/// Fields of a create or change request; `None` leaves a field as it is (or at its default).
/// For clearable fields, `Some(None)` clears it. No `Debug`: it may hold a secret.
#[derive(Default)]
pub struct WebhookInput {
    pub name: Option<String>,
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    pub profile: Option<String>,
    pub description: Option<Option<String>>,
    pub secret: Option<String>,
    pub active: Option<bool>,
    pub headers: Option<BTreeMap<String, String>>,
    pub timeout_ms: Option<Option<u64>>,
    pub retry_schedule: Option<Option<Vec<u64>>>,
    pub signature: Option<Option<String>>,
    pub options: Option<serde_json::Value>,
    pub verification: Option<String>,
    pub rate_limit_per_second: Option<Option<u64>>,
    /// The version (`updated_at`) the caller's change was made on: refused with
    /// [`ServiceError::Changed`] if the webhook changed since, rather than undoing that change.
    pub unchanged_since: Option<Timestamp>,
}

impl WebhookInput {
    /// The names of the fields given, for the log (never their values: a secret, headers).
    fn given(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("url", self.url.is_some()),
            ("events", self.events.is_some()),
            ("channels", self.channels.is_some()),
            ("profile", self.profile.is_some()),
            ("description", self.description.is_some()),
            ("secret", self.secret.is_some()),
            ("active", self.active.is_some()),
            ("headers", self.headers.is_some()),
            ("timeout_ms", self.timeout_ms.is_some()),
            ("retry_schedule", self.retry_schedule.is_some()),
            ("signature", self.signature.is_some()),
            ("options", self.options.is_some()),
            ("verification", self.verification.is_some()),
            (
                "rate_limit_per_second",
                self.rate_limit_per_second.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(name, given)| given.then_some(name))
        .collect()
    }
}

fn parse_options(raw: serde_json::Value) -> ServiceResult<WebhookOptions> {
    // serde would read an array as the struct's fields in order (`[]` as no options).
    if !raw.is_object() {
        return Err(Invalid::new(
            "options",
            "must be a JSON object, e.g. {\"batch_window_ms\": 500}",
        )
        .into());
    }
    let content_mode = raw["content_mode"].as_str().map(str::to_owned);
    serde_path_to_error::deserialize(raw).map_err(|e| {
        // The option at fault, as `422`s name fields elsewhere (`options.content_mode`).
        let (field, meant) = match e.path().iter().next() {
            None => ("options".to_owned(), None),
            Some(_) => {
                let path = e.path().to_string();
                let meant = content_mode
                    .as_deref()
                    .filter(|_| path == "content_mode")
                    .and_then(|typed| closest(typed, ["structured", "binary"]));
                (format!("options.{path}"), meant)
            }
        };
        // In JSON's terms, as the body's other fields are said: "expected u32" names Rust's type.
        let said = e.inner().to_string().replace(
            "expected u32",
            &format!(
                "expected a whole number from 0 to {}",
                WebhookOptions::MAX_BATCH_WINDOW_MS
            ),
        );
        Invalid::new(
            field,
            format!(
                "{said}{}; the options are content_mode (cloudevents: structured or binary) and \
                 batch_window_ms (opal)",
                did_you_mean(meant)
            ),
        )
        .into()
    })
}

fn new_secret(profile: ProfileName, given: Option<&str>) -> ServiceResult<String> {
    match given {
        Some(s) => Ok(profile.secret_policy().parse(s)?),
        None => profile.secret_policy().generate().ok_or_else(|| {
            Invalid::new(
                "secret",
                format!("the {} profile signs with a secret you choose; send one (16 to 256 characters)", profile.as_str()),
            )
            .into()
        }),
    }
}

/// How long creating or changing a webhook waits for its URL's host name to resolve.
const RESOLVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Refuses a URL whose host name resolves only to addresses Herald does not deliver to, as an
/// IP address of that kind is refused, so that the user learns it now rather than from the
/// first failed delivery. A name that does not resolve (yet), or not within `RESOLVE_WAIT`,
/// is accepted: DNS can change, and every delivery checks the addresses again anyway.
/// Runs before the organization's one change at a time, which must not wait on DNS.
async fn check_resolved_host(state: &AppState, url: Option<&str>) -> ServiceResult<()> {
    // A URL that is not valid is refused with its reason by the checks that follow.
    let Some(url) = url.and_then(|u| WebhookUrl::parse(u).ok()) else {
        return Ok(());
    };
    let Some(host) = url::Url::parse(url.as_str())
        .ok()
        .and_then(|u| match u.host()? {
            url::Host::Domain(name) => Some(name.to_owned()),
            url::Host::Ipv4(_) | url::Host::Ipv6(_) => None,
        })
    else {
        return Ok(());
    };
    // In the delivery resolver's turns: names that resolve slowly cannot take every thread.
    state
        .dispatcher
        .client()
        .check_name(&host, RESOLVE_WAIT)
        .await
        .map_err(|blocked| Invalid::new("url", blocked.0).into())
}

/// Profile rules that involve the URL or the organization's other webhooks.
fn check_profile_rules(state: &AppState, snapshot: &OrgSnapshot, w: &Webhook) -> ServiceResult<()> {
    w.options.check(w.profile)?;
    let host = url::Url::parse(w.url.as_str())
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_default();
    if let Err(why) = state.address_policy.check_host(&host) {
        return Err(Invalid::new("url", why).into());
    }
    if w.profile.one_per_organization()
        && let Some(other) = snapshot
            .webhooks()
            .iter()
            .find(|o| o.profile == w.profile && o.id != w.id)
    {
        return Err(ServiceError::Conflict(format!(
            "this organization already has an {} webhook, '{}' ({}); the {} profile allows one per organization: change or delete that one",
            w.profile.as_str(),
            other.name,
            other.id,
            w.profile.as_str()
        )));
    }
    if w.profile.requires_https()
        && !w.url.is_https()
        && !state.settings.security.allow_insecure_urls
    {
        return Err(Invalid::new(
            "url",
            format!(
                "the {} profile needs an https:// URL (the server's operator may allow http:// with HERALD_ALLOW_INSECURE_URLS)",
                w.profile.as_str()
            ),
        )
        .into());
    }
    Ok(())
}

/// Refuses a WebSub webhook's URL that carries `hub.*` parameters: the verification adds its
/// own, and the endpoint would read two of each.
fn check_websub_url(w: &Webhook) -> ServiceResult<()> {
    if w.verification != Verification::Websub {
        return Ok(());
    }
    if let Ok(url) = url::Url::parse(w.url.as_str())
        && let Some((name, _)) = url.query_pairs().find(|(name, _)| name.starts_with("hub."))
    {
        return Err(Invalid::new(
            "url",
            format!(
                "carries '{}' in its query: WebSub verification adds hub.mode, hub.topic, \
                 hub.challenge and hub.lease_seconds itself, and the endpoint would read two of \
                 one; leave hub.* parameters out of the URL",
                herald_core::truncate_for_message(&name)
            ),
        )
        .into());
    }
    Ok(())
}

/// Refuses a webhook with WebSub verification that names an event type without a channel: it
/// gets only the events of channels it verified, so every event of that type would be skipped.
fn check_websub_channels(snapshot: &OrgSnapshot, w: &Webhook) -> ServiceResult<()> {
    if w.verification != Verification::Websub {
        return Ok(());
    }
    for (i, e) in w.events.iter().enumerate() {
        // Herald's own (`herald.test`) are sent whatever the verification.
        let own = herald_core::event_type::is_reserved(e);
        if e != "*"
            && !own
            && snapshot
                .resolve_type(e)
                .is_some_and(|t| t.channel.is_none())
        {
            return Err(Invalid::new(
                format!("events[{i}]"),
                format!(
                    "'{e}' has no channel, and a webhook with WebSub verification gets only the \
                     events of channels it verified: every '{e}' would be skipped; register the \
                     type with a channel, or subscribe to it without WebSub verification"
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Checks that every named event type and channel exists for the organization, so that a typo
/// in a subscription is caught now rather than silently matching nothing.
fn check_subscription(
    snapshot: &OrgSnapshot,
    events: &[String],
    channels: &[String],
) -> ServiceResult<()> {
    for (i, e) in events.iter().enumerate() {
        if e != "*" && snapshot.resolve_type(e).is_none() {
            return Err(Invalid::new(
                format!("events[{i}]"),
                format!(
                    "'{e}' is not an event type of this organization{}; see GET /v1/orgs/{}/event-types",
                    snapshot.not_a_type_because(e, true),
                    snapshot.org.id
                ),
            )
            .into());
        }
    }
    for (i, c) in channels.iter().enumerate() {
        if c != "*" && !snapshot.knows_channel(c) {
            return Err(Invalid::new(
                format!("channels[{i}]"),
                format!(
                    "'{c}' is not a channel of any event type of this organization{}",
                    did_you_mean(snapshot.closest_channel(c).as_deref())
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Creates a webhook; one created active with WebSub verification comes with its channels'
/// verification states, as activating it would answer.
pub async fn create(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    input: WebhookInput,
) -> ServiceResult<(Webhook, Option<Vec<Subscription>>)> {
    check_resolved_host(state, input.url.as_deref()).await?;
    // Checked against the organization's other webhooks, then written: one change at a time.
    let (created, activate) = super::one_change_at_a_time(state, org, {
        let (scope, owner) = (scope.clone(), org.clone());
        move |state| async move { create_checked(&state, &scope, &owner, input).await }
    })
    .await?;
    if activate {
        return set_active(state, scope, org, &created.id, true, None).await;
    }
    Ok((created, None))
}

/// [`create`], in the organization's turn for changes. Answers the webhook and whether to
/// activate it now: a WebSub webhook asked to be active is stored inactive, and activating it
/// sends the verification.
async fn create_checked(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    input: WebhookInput,
) -> ServiceResult<(Webhook, bool)> {
    let snapshot = super::org_snapshot(state, scope, org).await?;
    let most = state.settings.limits.max_webhooks_per_org;
    if snapshot.webhooks().len() >= most as usize {
        return Err(ServiceError::Conflict(format!(
            "the organization already has {most} webhooks, the most one may have \
             (HERALD_MAX_WEBHOOKS_PER_ORG); delete the ones it no longer needs"
        )));
    }
    let name = new_webhook_name(org::parse_name(
        input
            .name
            .as_deref()
            .ok_or_else(|| Invalid::new("name", "is required"))?,
        "name",
    )?)?;
    let url = WebhookUrl::parse(
        input
            .url
            .as_deref()
            .ok_or_else(|| Invalid::new("url", "is required"))?,
    )?;
    let profile = match &input.profile {
        Some(p) => ProfileName::parse(p)?,
        None => ProfileName::Standard,
    };
    let (events, channels) = parse_subscription(input.events, input.channels)?;
    check_subscription(&snapshot, &events, &channels)?;
    let secret = new_secret(profile, input.secret.as_deref())?;
    let verification = match &input.verification {
        Some(v) => Verification::parse(v)?,
        None => profile.default_verification(),
    };
    // A webhook that verifies its intent starts inactive; activating it sends the verification.
    let wants_active = input.active.unwrap_or(profile.active_on_creation());
    let now = state.clock.now();
    let webhook = Webhook {
        id: WebhookId::generate(),
        org_id: org.clone(),
        name,
        description: parse_description(input.description.flatten())?,
        url,
        events,
        channels,
        profile,
        signature: input
            .signature
            .flatten()
            .map(|s| SignatureScheme::parse(&s))
            .transpose()?,
        options: input
            .options
            .map(parse_options)
            .transpose()?
            .unwrap_or_default(),
        verification,
        secret,
        previous_secret: None,
        previous_secret_expires_at: None,
        active: wants_active && verification == Verification::None,
        headers: parse_headers(input.headers.unwrap_or_default())?,
        timeout_ms: input
            .timeout_ms
            .flatten()
            .map(parse_timeout_ms)
            .transpose()?,
        retry_schedule: input
            .retry_schedule
            .flatten()
            .map(RetrySchedule::parse)
            .transpose()?,
        created_at: now,
        updated_at: now,
        failing_since: None,
        disabled_reason: None,
        rate_limit_per_second: input
            .rate_limit_per_second
            .flatten()
            .map(parse_rate_limit)
            .transpose()?,
    };
    check_profile_rules(state, &snapshot, &webhook)?;
    check_websub_channels(&snapshot, &webhook)?;
    check_websub_url(&webhook)?;
    let webhook = write_then_forget(state, org, "organization", |store| async move {
        store.create_webhook(&webhook).await.map(|()| webhook)
    })
    .await?;
    // Only the origin: a URL's path or query often carries a token.
    let origin = url::Url::parse(webhook.url.as_str())
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    tracing::info!(org = %org, webhook = %webhook.id, origin, "webhook created");
    let activate = verification == Verification::Websub && input.active == Some(true);
    Ok((webhook, activate))
}

pub async fn list(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    page: PageRequest,
) -> ServiceResult<Page<Webhook>> {
    super::org_snapshot(state, scope, org).await?;
    state
        .store
        .list_webhooks(org, &page)
        .await
        .map_err(ServiceError::from_store("organization"))
}

pub async fn get(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &WebhookId,
) -> ServiceResult<Webhook> {
    scope.check_org(org)?;
    state
        .store
        .get_webhook(org, id)
        .await
        .map_err(ServiceError::from_store("webhook"))
}

/// Changes a webhook. Answers it with the WebSub verification requests the change sent, if it
/// sent any (a new URL or channels, switching on or off), each with its endpoint's answer.
pub async fn update(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &WebhookId,
    input: WebhookInput,
) -> ServiceResult<(Webhook, Option<Vec<Subscription>>)> {
    check_resolved_host(state, input.url.as_deref()).await?;
    // Checked against the organization's other webhooks, then written: one change at a time.
    let (scope, owner, id) = (scope.clone(), org.clone(), id.clone());
    super::one_change_at_a_time(state, org, move |state| async move {
        update_checked(&state, &scope, &owner, &id, input).await
    })
    .await
}

async fn update_checked(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &WebhookId,
    input: WebhookInput,
) -> ServiceResult<(Webhook, Option<Vec<Subscription>>)> {
    let snapshot = super::org_snapshot(state, scope, org).await?;
    let fields = input.given();
    let mut w = state
        .store
        .get_webhook(org, id)
        .await
        .map_err(ServiceError::from_store("webhook"))?;
    // Compared with this read; `save` then refuses any change made after it.
    let unchanged_since = input.unchanged_since;
    if unchanged_since.is_some_and(|v| v != w.updated_at) {
        return Err(ServiceError::Changed { now: w.updated_at });
    }
    let as_read = w.clone();
    let applied = apply_input(&mut w, input, &snapshot)?;
    let Applied {
        old_verification,
        subscription_changed,
        was_active,
        ..
    } = applied;
    // Nothing changes (every field sent as it is, as a form or a reconciling client sends
    // them): nothing is stored, so its version (`ETag`, `updated_at`) stays and another
    // client's `If-Match` still holds.
    if w == as_read {
        return Ok((w, None));
    }
    check_profile_rules(state, &snapshot, &w)?;
    // Only when what it checks changes: a webhook stored so before must not stop other changes.
    if subscription_changed || w.verification != old_verification {
        check_websub_channels(&snapshot, &w)?;
    }
    if w.url != as_read.url || w.verification != old_verification {
        check_websub_url(&w)?;
    }
    let plan = plan_websub(&snapshot, &w, &applied, state.clock.now());
    // To the end once started: a change stored without the verification it calls for would
    // leave its deliveries waiting for one nobody sent.
    let saved = to_the_end(state, move |state| async move {
        save_change(&state, w, plan, fields, was_active).await
    })
    .await;
    match saved {
        // Changed between this read and the write: for a caller that named its version, that
        // is the same answer as a change before the read.
        Err(ServiceError::Conflict(m))
            if unchanged_since.is_some() && m == herald_core::store::WEBHOOK_CHANGED_MEANWHILE =>
        {
            let now = state
                .store
                .get_webhook(org, id)
                .await
                .map_err(ServiceError::from_store("webhook"))?;
            Err(ServiceError::Changed {
                now: now.updated_at,
            })
        }
        other => other,
    }
}

/// What applying a change found (the webhook as it was, and whether its subscription changed),
/// for the checks and WebSub steps that follow.
struct Applied {
    old_verification: Verification,
    was_active: bool,
    /// The subscription changed in value, not merely sent: the dashboard's form sends it with
    /// every change.
    subscription_changed: bool,
}

/// Applies the fields `input` gives to `w`, each parsed and checked on its own; answers what
/// `w` was before, where later steps need it.
fn apply_input(
    w: &mut Webhook,
    input: WebhookInput,
    snapshot: &OrgSnapshot,
) -> ServiceResult<Applied> {
    let old_profile = w.profile;
    let was_active = w.active;
    let old_verification = w.verification;
    if let Some(name) = input.name {
        // A name kept as it was passes, whatever its form (one given before such names were
        // refused): a form sends every field back.
        let name = org::parse_name(&name, "name")?;
        if name != w.name {
            w.name = new_webhook_name(name)?;
        }
    }
    if let Some(url) = input.url {
        w.url = WebhookUrl::parse(&url)?;
    }
    if let Some(profile) = input.profile {
        w.profile = ProfileName::parse(&profile)?;
    }
    if let Some(signature) = input.signature {
        w.signature = signature.map(|s| SignatureScheme::parse(&s)).transpose()?;
    }
    if !w.rotation_overlaps() {
        // Its scheme carries one signature: a rotation's previous secret signs nothing now,
        // and must not come back to life if the scheme is switched back.
        w.previous_secret = None;
        w.previous_secret_expires_at = None;
    }
    if let Some(options) = input.options {
        w.options = parse_options(options)?;
    } else if w.profile != old_profile {
        // Moved to another profile, the old one's settings go rather than block the move.
        w.options = w.options.kept_for(w.profile);
    }
    let mut subscription_changed = false;
    if input.events.is_some() || input.channels.is_some() {
        let emptied = if input.channels.is_some() {
            "channels"
        } else {
            "events"
        };
        let events = input.events.unwrap_or_else(|| w.events.clone());
        let channels = input.channels.unwrap_or_else(|| w.channels.clone());
        // Both empty is every event, as a webhook created without either: a change that
        // empties what was left (`--reset events`) must not widen it to that unseen.
        if events.is_empty() && channels.is_empty() {
            return Err(Invalid::new(
                emptied,
                "with no event types and no channels the webhook would get every event; \
                 name what it should get, give [\"*\"] for every event, or disable it",
            )
            .into());
        }
        let (events, channels) = parse_subscription(Some(events), Some(channels))?;
        check_subscription(snapshot, &events, &channels)?;
        subscription_changed = (&events, &channels) != (&w.events, &w.channels);
        w.events = events;
        w.channels = channels;
    }
    if let Some(description) = input.description {
        w.description = parse_description(description)?;
    }
    if let Some(secret) = input.secret {
        let secret = w.profile.secret_policy().parse(&secret)?;
        if secret != w.secret {
            // Set outright, it signs alone at once (`rotate_secret` is the way with an
            // overlap): the secret a rotation replaced must not go on signing beside it.
            w.secret = secret;
            w.previous_secret = None;
            w.previous_secret_expires_at = None;
        }
    }
    if let Some(active) = input.active {
        switch(w, active);
    }
    if let Some(headers) = input.headers {
        w.headers = parse_headers(headers)?;
    }
    if let Some(timeout) = input.timeout_ms {
        w.timeout_ms = timeout.map(parse_timeout_ms).transpose()?;
    }
    if let Some(schedule) = input.retry_schedule {
        w.retry_schedule = schedule.map(RetrySchedule::parse).transpose()?;
    }
    if let Some(limit) = input.rate_limit_per_second {
        w.rate_limit_per_second = limit.map(parse_rate_limit).transpose()?;
    }
    if let Some(v) = input.verification {
        w.verification = Verification::parse(&v)?;
    } else if w.profile != old_profile && w.verification == old_profile.default_verification() {
        // A new profile brings its own way (Asgardeo's receivers confirm their intent first),
        // unless the webhook's verification was chosen rather than its profile's default.
        w.verification = w.profile.default_verification();
    }
    Ok(Applied {
        old_verification,
        was_active,
        subscription_changed,
    })
}

/// What a change to a webhook asks of WebSub subscribers, worked out before it is stored.
struct WebSubPlan {
    /// Turned on, or a new URL or new channels: every channel verified again before events.
    reverify: bool,
    /// Turned off after it had subscribed: the subscriber is told.
    unsubscribe: bool,
    /// It stops verifying its intent while active: unsubscribed where it had subscribed.
    leaves_websub: Option<Webhook>,
    /// Only its channels changed: the new ones asked for…
    added: Vec<String>,
    /// …and the dropped ones unsubscribed.
    dropped: Vec<(Webhook, Subscription)>,
    /// A new URL or new topics: the old endpoint unsubscribed from what it had.
    left_behind: Vec<(Webhook, Subscription)>,
    /// Its subscriptions as they were, for `save_unverified`.
    previous: Vec<Subscription>,
}

/// Works out what the change from the webhook in `snapshot` to `w` asks of its subscribers.
fn plan_websub(
    snapshot: &OrgSnapshot,
    w: &Webhook,
    applied: &Applied,
    now: herald_core::Timestamp,
) -> WebSubPlan {
    let Applied {
        old_verification,
        was_active,
        ..
    } = *applied;
    let websub = w.verification == Verification::Websub;
    // An active webhook that stops verifying its intent unsubscribes where it had subscribed
    // (its old URL and channels), as deactivating it would.
    let leaves_websub = (old_verification == Verification::Websub && !websub && was_active)
        .then(|| snapshot.webhook(&w.id).map(|old| (**old).clone()))
        .flatten();
    let old = snapshot.webhook(&w.id).cloned();
    // A new endpoint, or new topics for every channel (they name the profile).
    let moved = old.as_ref().is_some_and(|old| {
        old.url != w.url || old.verification != w.verification || old.profile != w.profile
    });
    let reverify = websub && w.active && (!was_active || moved);
    // Only its channels changed, on an endpoint that stays: the new ones are asked for, the
    // dropped ones unsubscribed, and the others keep their leases (asking them again would
    // stop their events while it ran, and for good where the endpoint refused just then).
    let (added, dropped) = match &old {
        Some(old) if websub && w.active && was_active && !moved => {
            let (before, after) = (snapshot.channels_of(old), snapshot.channels_of(w));
            let dropped: Vec<(Webhook, Subscription)> = snapshot
                .subscriptions_of(&w.id)
                .into_iter()
                .filter(|s| !after.contains(&s.channel) && s.delivers(now))
                .map(|s| ((**old).clone(), s.clone()))
                .collect();
            let added: Vec<String> = after.into_iter().filter(|c| !before.contains(c)).collect();
            (added, dropped)
        }
        _ => (Vec::new(), Vec::new()),
    };
    // Only where it had subscribed: not a webhook that takes WebSub and is switched off at once.
    let unsubscribe = websub && old_verification == Verification::Websub && was_active && !w.active;
    // A new URL (or new topics, with a new profile) for a webhook that had subscribed: the old
    // endpoint is told to unsubscribe from what it had, as deactivating would tell it, rather
    // than wait for its leases to run out.
    let left_behind: Vec<(Webhook, Subscription)> = match &old {
        Some(old) if websub && old_verification == Verification::Websub && was_active && moved => {
            // Only the channels it had: one dropped before was unsubscribed then, though its
            // row keeps the lease it had.
            let had = snapshot.channels_of(old);
            snapshot
                .subscriptions_of(&w.id)
                .into_iter()
                .filter(|s| s.delivers(now) && had.contains(&s.channel))
                .map(|s| ((**old).clone(), s.clone()))
                .collect()
        }
        _ => Vec::new(),
    };
    let previous: Vec<Subscription> = snapshot
        .subscriptions_of(&w.id)
        .into_iter()
        .cloned()
        .collect();
    WebSubPlan {
        reverify,
        unsubscribe,
        leaves_websub,
        added,
        dropped,
        left_behind,
        previous,
    }
}

/// Stores the change and carries out its plan: the verifications it calls for, the
/// unsubscriptions it leaves. Answers the webhook as stored and what its endpoint was asked.
async fn save_change(
    state: &AppState,
    w: Webhook,
    plan: WebSubPlan,
    fields: Vec<&'static str>,
    was_active: bool,
) -> ServiceResult<(Webhook, Option<Vec<Subscription>>)> {
    let WebSubPlan {
        reverify,
        unsubscribe,
        leaves_websub,
        added,
        dropped,
        left_behind,
        previous,
    } = plan;
    let w = if reverify {
        // Turned on, or a new URL or new channels: verified again before they get events.
        save_unverified(state, w, previous, was_active).await?
    } else {
        save(state, w, was_active).await?
    };
    // Switching alone is said by `switched`, in its own words.
    if fields.iter().any(|f| *f != "active") {
        tracing::info!(org = %w.org_id, webhook = %w.id, fields = ?fields, "webhook changed");
    }
    // What the endpoint was asked, and answered, while the change waited: the answer
    // carries it, as enabling's does.
    let mut asked = Vec::new();
    if reverify || unsubscribe {
        // Turned off: the subscriber hears of it, as with `deactivate`.
        asked.extend(tell_subscriber(state, &w).await?);
    }
    if !added.is_empty() {
        let snapshot = state
            .directory
            .snapshot(&w.org_id)
            .await
            .map_err(ServiceError::from_store("organization"))?;
        asked.extend(
            super::subscriptions::verify_channels(
                state,
                &snapshot,
                &w,
                Mode::Subscribe,
                added,
                super::subscriptions::Request::New,
            )
            .await?,
        );
    }
    if !dropped.is_empty() {
        // Stored as unsubscribed before the endpoint is told: the lease it gave no longer
        // counts, and the channel, if added back, is asked for afresh before events flow.
        let gone: Vec<Subscription> = dropped
            .iter()
            .map(|(_, sub)| {
                let mut sub = sub.clone();
                sub.start_over(
                    Mode::Unsubscribe,
                    "dropped from the webhook: unsubscribe sent",
                );
                sub
            })
            .collect();
        let org = w.org_id.clone();
        write_then_forget(state, &w.org_id, "webhook", |store| async move {
            store.save_subscriptions(&org, &gone).await
        })
        .await?;
    }
    super::subscriptions::unsubscribe_soon(state, &w.org_id, dropped);
    super::subscriptions::unsubscribe_soon(state, &w.org_id, left_behind);
    if let Some(old) = leaves_websub {
        asked.extend(send_verification(state, &old, Mode::Unsubscribe).await?);
    }
    Ok((w, (!asked.is_empty()).then_some(asked)))
}

/// Saves a change after which the webhook's channels must be verified again (a new URL, say).
/// What they had verified stops counting before the change is stored, so that no delivery
/// goes to the new URL on the old verification; if the change is refused, whatever is stored
/// then is verified afresh.
async fn save_unverified(
    state: &AppState,
    w: Webhook,
    previous: Vec<Subscription>,
    was_active: bool,
) -> ServiceResult<Webhook> {
    let org = w.org_id.clone();
    let reset: Vec<Subscription> = previous
        .iter()
        .cloned()
        .map(|mut sub| {
            let mode = sub.mode;
            sub.start_over(mode, "to be verified again after a change to the webhook");
            sub
        })
        .collect();
    write_then_forget(state, &org, "webhook", {
        let org = org.clone();
        |store| async move { store.save_subscriptions(&org, &reset).await }
    })
    .await?;
    let id = w.id.clone();
    match save(state, w, was_active).await {
        Ok(w) => Ok(w),
        Err(refused) => {
            // Whatever is stored now (this change after all, the webhook as it was, or another
            // request's change) is verified afresh. Writing back what was read could hand a
            // URL that another request stored meanwhile the old URL's verification.
            if let Ok(current) = state.store.get_webhook(&org, &id).await
                && current.active
                && current.verification == Verification::Websub
                && let Err(e) = tell_subscriber(state, &current).await
            {
                tracing::warn!(webhook = %id, error = %e, "could not verify a webhook again after a change to it was refused; its channels wait for POST …/verify");
            }
            Err(refused)
        }
    }
}

/// Switches `w` on or off (not saved yet). Switching on is a fresh start: whatever made Herald
/// disable it is for the user to have fixed.
fn switch(w: &mut Webhook, active: bool) {
    if active && !w.active {
        w.disabled_reason = None;
        w.failing_since = None;
    }
    w.active = active;
}

/// After a switch was saved: the log line, and `webhook.enabled` for the organization. Enabled
/// again, a wait its endpoint asked for before ends on this node, as its failing streak did.
async fn switched(state: &AppState, w: &Webhook) {
    tracing::info!(org = %w.org_id, webhook = %w.id, active = w.active, "webhook {}", if w.active { "enabled" } else { "disabled" });
    state.dispatcher.look_again_after_switch(&w.id, w.active);
    if w.active {
        super::operations::webhook_enabled(state, w);
        state.dispatcher.lift_retry_after(&w.id).await;
    }
}

/// When, after deleting a webhook, what writes that raced the deletion left behind (pending
/// deliveries) is looked for again (after a switch: `Dispatcher::look_again_after_switch`).
const SWEEP_AGAIN_AFTER: [Duration; 2] = [Duration::from_secs(2), Duration::from_secs(30)];

/// Sends a webhook that verifies its intent a new subscribe (when active) or unsubscribe for
/// each of its channels, and answers where each stands.
async fn tell_subscriber(state: &AppState, w: &Webhook) -> ServiceResult<Vec<Subscription>> {
    let mode = if w.active {
        Mode::Subscribe
    } else {
        Mode::Unsubscribe
    };
    send_verification(state, w, mode).await
}

/// Sends `mode` for each of the webhook's channels (as `w` has them), afresh.
async fn send_verification(
    state: &AppState,
    w: &Webhook,
    mode: Mode,
) -> ServiceResult<Vec<Subscription>> {
    let snapshot = state
        .directory
        .snapshot(&w.org_id)
        .await
        .map_err(ServiceError::from_store("organization"))?;
    super::subscriptions::verify(
        state,
        &snapshot,
        w,
        mode,
        None,
        super::subscriptions::Request::New,
    )
    .await
}

/// Another node changed something of the organization: each of its webhooks whose endpoint
/// changed gets its fresh start on this node now (`Dispatcher::webhook_changed`), as on the
/// node that took the change, rather than at its next delivery here. Only while this node
/// holds something back (an open circuit, an endpoint's wait), and read from the store, not
/// through the directory: caching every changed organization on every node would widen the
/// moment in which a node that has not heard of a new webhook yet stores events without it.
pub async fn changed_elsewhere(state: &AppState, org: &OrgId) {
    if !state.dispatcher.holds_anything_back() {
        return;
    }
    let Ok(webhooks) = state.store.org_webhooks(org).await else {
        // Deleted, or the database is away: the next delivery looks again.
        return;
    };
    for webhook in webhooks.iter().filter(|w| w.active) {
        state.dispatcher.webhook_changed(webhook).await;
    }
}

/// Saves a user's change to `w`, as read (its `updated_at` not yet moved, its switch as
/// `was_active`): `409` if the webhook changed meanwhile, rather than undoing that (Herald
/// disabling it, say). What follows in this node's memory (the dispatcher's fresh start, and
/// after a switch [`switched`]'s looks again) goes with the write to the end: a client that
/// gave up on a pause, whose walk through a backlog takes seconds, left a delivery that raced it
/// due for the paused webhook until a restart.
async fn save(state: &AppState, mut w: Webhook, was_active: bool) -> ServiceResult<Webhook> {
    let read_at = w.updated_at;
    // Later than the version read even within its millisecond, so that the next change can
    // tell the two apart.
    w.updated_at = state.clock.now().max(read_at.plus_millis(1));
    to_the_end(state, move |state| async move {
        let org = w.org_id.clone();
        let written = state.store.save_webhook_change(&w, read_at).await;
        // Whatever the answer, as `write_then_forget`.
        state.directory.invalidate(&org);
        written.map_err(ServiceError::from_store("webhook"))?;
        if w.active {
            // What this node's circuit or the endpoint's wait held back goes now, if the
            // change gives the endpoint a fresh start; deliveries parked while it was disabled
            // are due again.
            state.dispatcher.webhook_changed(&w).await;
            state.dispatcher.wake_scheduler_and_renewals();
        }
        if w.active != was_active {
            switched(&state, &w).await;
        }
        Ok(w)
    })
    .await
}

/// Enables or disables a webhook. One that verifies its intent sends its WebSub subscribe (or
/// unsubscribe) for every channel; the answers come back with it. To the end once started, as
/// a change by PATCH: a switch stored without the verification it calls for would leave the
/// webhook's events waiting for one nobody sent.
pub async fn set_active(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &WebhookId,
    active: bool,
    unchanged_since: Option<Timestamp>,
) -> ServiceResult<(Webhook, Option<Vec<Subscription>>)> {
    let (scope, org, id) = (scope.clone(), org.clone(), id.clone());
    to_the_end(state, move |state| async move {
        switch_and_tell(&state, &scope, &org, &id, active, unchanged_since).await
    })
    .await
}

/// [`set_active`], in its task.
async fn switch_and_tell(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &WebhookId,
    active: bool,
    unchanged_since: Option<Timestamp>,
) -> ServiceResult<(Webhook, Option<Vec<Subscription>>)> {
    let mut w = get(state, scope, org, id).await?;
    // The caller's version (`If-Match`), as a change by PATCH is checked.
    if unchanged_since.is_some_and(|v| v != w.updated_at) {
        return Err(ServiceError::Changed { now: w.updated_at });
    }
    let mut looked_again = false;
    while w.active != active {
        let mut changed = w.clone();
        switch(&mut changed, active);
        match save(state, changed, w.active).await {
            Ok(saved) => w = saved,
            // Changed since the caller's version: that is its answer.
            Err(ServiceError::Conflict(_)) if unchanged_since.is_some() => {
                let now = get(state, scope, org, id).await?.updated_at;
                return Err(ServiceError::Changed { now });
            }
            // Changed meanwhile (Herald disabled it, say): as it is now, it may need nothing.
            Err(ServiceError::Conflict(_)) if !looked_again => {
                looked_again = true;
                w = get(state, scope, org, id).await?;
            }
            Err(e) => return Err(e),
        }
    }
    if w.verification != Verification::Websub {
        return Ok((w, None));
    }
    let subs = tell_subscriber(state, &w).await?;
    Ok((w, Some(subs)))
}

/// Replaces the secret. With Standard Webhooks signatures the old one keeps signing beside the
/// new one for 24 hours; the other schemes carry one signature, made with the new one at once.
pub async fn rotate_secret(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &WebhookId,
    secret: Option<String>,
    unchanged_since: Option<Timestamp>,
) -> ServiceResult<Webhook> {
    let mut w = get(state, scope, org, id).await?;
    if unchanged_since.is_some_and(|v| v != w.updated_at) {
        return Err(ServiceError::Changed { now: w.updated_at });
    }
    let new = new_secret(w.profile, secret.as_deref())?;
    let now = state.clock.now();
    let previous = std::mem::replace(&mut w.secret, new);
    // The answer must not promise an overlap the scheme does not have.
    let overlaps = w.rotation_overlaps();
    w.previous_secret = overlaps.then_some(previous);
    w.previous_secret_expires_at = overlaps.then(|| now.plus_millis(ROTATION_OVERLAP_MS));
    let was_active = w.active;
    let w = save(state, w, was_active).await?;
    if overlaps {
        tracing::info!(org = %w.org_id, webhook = %w.id, "webhook secret rotated; the previous one signs too for 24 hours");
    } else {
        tracing::info!(org = %w.org_id, webhook = %w.id, "webhook secret rotated; its scheme carries one signature, made with the new secret from now on");
    }
    Ok(w)
}

/// The most webhooks one bulk delete names.
const MAX_BULK_DELETE: usize = 1000;

/// Refuses a bulk delete of more than [`MAX_BULK_DELETE`] ids, well-formed or not: the answer
/// echoes every id it did not delete.
pub fn check_bulk_size(ids: usize) -> ServiceResult<()> {
    if ids > MAX_BULK_DELETE {
        return Err(Invalid::new("ids", format!("at most {MAX_BULK_DELETE} ids at once")).into());
    }
    Ok(())
}

/// Deletes webhooks; their pending deliveries are cancelled. Returns the ids deleted.
pub async fn delete(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    ids: &[WebhookId],
    unchanged_since: Option<Timestamp>,
) -> ServiceResult<Vec<WebhookId>> {
    scope.check_org(org)?;
    check_bulk_size(ids.len())?;
    let snapshot = super::org_snapshot(state, scope, org).await?;
    if let Some(active) = ids
        .iter()
        .filter_map(|id| snapshot.webhook(id))
        .find(|w| w.active && w.verification == Verification::Websub)
    {
        return Err(ServiceError::Conflict(format!(
            "the webhook {} is active; deactivate it first (POST /v1/orgs/{org}/webhooks/{}/deactivate): a webhook with WebSub verification is deleted only when inactive, after it was told to unsubscribe",
            active.id, active.id
        )));
    }
    let (owner, asked, now) = (org.clone(), ids.to_vec(), state.clock.now());
    let deleted = write_then_forget(state, org, "webhook", |store| async move {
        store
            .delete_webhooks(&owner, &asked, now, unchanged_since)
            .await
    })
    .await?;
    // Kept because it changed since the version named (`If-Match`): said so, with the
    // version it has now, rather than not found.
    if unchanged_since.is_some()
        && deleted.is_empty()
        && let [id] = ids
        && let Ok(w) = state.store.get_webhook(org, id).await
    {
        return Err(ServiceError::Changed { now: w.updated_at });
    }
    state.dispatcher.forget_webhooks(&deleted);
    for id in &deleted {
        tracing::info!(org = %org, webhook = %id, "webhook deleted; its pending deliveries are cancelled");
    }
    if !deleted.is_empty() {
        cancel_stragglers_later(state, now);
    }
    Ok(deleted)
}

/// An ingest that read the organization just before a deletion (on another node, say) can
/// store a delivery for the deleted webhook after it, which nothing would claim: deliveries
/// of webhooks deleted since `deleted_at` are cancelled again a little later, as well as by
/// the retention task every ten minutes.
fn cancel_stragglers_later(state: &AppState, deleted_at: Timestamp) {
    let clock = state.clock.clone();
    super::retention::sweep_later(state, &SWEEP_AGAIN_AFTER, move |store| {
        let now = clock.now();
        async move {
            // A little before: the deletion's time is this node's clock, and another's wrote.
            super::retention::cancel_orphaned_since(&*store, deleted_at.plus_secs(-60), now).await;
        }
    });
}

/// Sends a `herald.test` event to this one webhook, through the normal delivery path.
pub async fn send_test(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &WebhookId,
) -> ServiceResult<(String, DeliveryId)> {
    let w = get(state, scope, org, id).await?;
    if !w.active {
        return Err(ServiceError::Conflict(format!(
            "the webhook is disabled; activate it (POST /v1/orgs/{org}/webhooks/{id}/activate) \
                 before sending a test event"
        )));
    }
    let now = state.clock.now();
    let event = NewEvent::parse(serde_json::json!({
        "type": event_type::TEST_EVENT_TYPE,
        "data": {
            "message": "This is a test event sent by Herald.",
            "webhook_id": w.id.as_str(),
            "sent_at": now.to_rfc3339(),
        }
    }))?
    .into_event(org.clone(), now);
    let event = Arc::new(event);
    let delivery_id = DeliveryId::generate();
    let item = IngestItem {
        event: event.clone(),
        deliveries: vec![NewDelivery {
            id: delivery_id.clone(),
            webhook_id: w.id.clone(),
            // Held whatever memory is left, like a resend: someone is waiting to see it arrive,
            // and it goes ahead of the webhook's backlog (`enqueue_urgent`).
            placement: Placement::Leased,
            skip: None,
            // A test is sent now, whatever the schedule says.
            not_before: None,
        }],
    };
    let lease_until = state.lease_until(now);
    let items = [item];
    let handing_off = GiveBackIfDropped::items(state, org, &items, now, lease_until);
    let stored = state
        .store
        .insert_events(org, &items, now, lease_until)
        .await;
    handing_off.disarm();
    stored.map_err(ServiceError::from_store("organization"))?;
    state.dispatcher.enqueue_urgent(
        DueDelivery::new(
            delivery_id.clone(),
            org.clone(),
            w.id.clone(),
            event.clone(),
            now,
        ),
        lease_until,
    );
    Ok((event.id.clone(), delivery_id))
}

/// A new name for a webhook (already read by `org::parse_name`): not one in the form of an id.
fn new_webhook_name(name: String) -> ServiceResult<String> {
    let looks_like_id = WebhookId::parse(&name).is_ok();
    Ok(org::refuse_id_form(name, looks_like_id, "a webhook")?)
}
