//! Delivery history: list a webhook's deliveries, read one with its attempts, resend one,
//! attempt every one waiting for a retry now, and recover every failed delivery since a time.

use rand::seq::SliceRandom;
use serde::Serialize;

use herald_core::delivery::{Attempt, Delivery, DeliveryState};
use herald_core::profile::{self, RenderInput};
use herald_core::store::DeliveryFilter;
use herald_core::store::StoreError;
use herald_core::{DeliveryId, OrgId, Page, PageRequest, Timestamp, WebhookId};

use super::cancel_safe::GiveBackIfDropped;
use super::{Scope, ServiceError, ServiceResult};
use crate::app::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub attempts: Vec<Attempt>,
}

pub async fn list(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    webhook: &WebhookId,
    filter: DeliveryFilter,
    page: PageRequest,
) -> ServiceResult<Page<Delivery>> {
    scope.check_org(org)?;
    // A deleted webhook's history stays readable by its id: only an id nothing was ever
    // delivered to is unknown.
    let deleted = match super::webhooks::get(state, scope, org, webhook).await {
        Ok(_) => false,
        Err(ServiceError::NotFound(_)) => true,
        Err(e) => return Err(e),
    };
    let search = filter.state.is_some() || filter.event_type.is_some();
    let list = {
        let (store, org, webhook, filter, page) = (
            state.store.clone(),
            org.clone(),
            webhook.clone(),
            filter.clone(),
            page.clone(),
        );
        async move {
            store
                .list_deliveries(&org, &webhook, &filter, &page)
                .await
                .map_err(ServiceError::from_store("webhook"))
        }
    };
    let found = state.searches.run_if(search, org, list).await?;
    if deleted && found.data.is_empty() && !ever_delivered(state, org, webhook).await? {
        return Err(ServiceError::NotFound("webhook"));
    }
    // Nothing of a type the organization does not know: most likely a misspelling, which an
    // empty list would not reveal. (A type since unregistered still finds its deliveries; with
    // a state too, an empty list may just mean none is in that state, so nothing is said.)
    if let Some(wanted) = &filter.event_type
        && filter.state.is_none()
        && found.data.is_empty()
        && page.cursor.is_none()
    {
        let snapshot = super::org_snapshot(state, scope, org).await?;
        super::events::refuse_unknown_type(&snapshot, wanted, "event_type", "delivery")?;
    }
    Ok(found)
}

/// Whether the organization has any delivery to this webhook (a deleted one's history).
async fn ever_delivered(state: &AppState, org: &OrgId, webhook: &WebhookId) -> ServiceResult<bool> {
    let one = PageRequest {
        limit: 1,
        cursor: None,
    };
    let any = state
        .store
        .list_deliveries(org, webhook, &DeliveryFilter::default(), &one)
        .await
        .map_err(ServiceError::from_store("webhook"))?;
    Ok(!any.data.is_empty())
}

pub async fn get(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &DeliveryId,
) -> ServiceResult<DeliveryDetail> {
    scope.check_org(org)?;
    let (delivery, attempts) = state
        .store
        .get_delivery(org, id)
        .await
        .map_err(ServiceError::from_store("delivery"))?;
    Ok(DeliveryDetail { delivery, attempts })
}

/// The delivery once an attempt after the `made` it had is recorded, looked at every 100 ms
/// for at most `within`; `None` if none is recorded by then, or it ended without one
/// (cancelled, say). For a person who just sent a test, or a delivery again.
pub async fn next_attempt(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &DeliveryId,
    made: usize,
    within: std::time::Duration,
) -> ServiceResult<Option<DeliveryDetail>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let detail = get(state, scope, org, id).await?;
        if detail.attempts.len() > made {
            return Ok(Some(detail));
        }
        let pending = detail.delivery.state == herald_core::delivery::DeliveryState::Pending;
        if !pending || tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Sends a delivery now: a finished one again, with a fresh retry schedule; a pending one that
/// waits for its next attempt (a retry, or the end of its endpoint's cool-down) has an attempt
/// now that its schedule does not count (failed, it waits for the same step again).
pub async fn resend(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    id: &DeliveryId,
) -> ServiceResult<DeliveryDetail> {
    scope.check_org(org)?;
    let now = state.clock.now();
    let lease_until = state.lease_until(now);
    let handing_off = GiveBackIfDropped::one(state, org, id, now, lease_until);
    let due = match state.store.resend_delivery(org, id, now, lease_until).await {
        Ok(due) => due,
        Err(e) => {
            handing_off.disarm();
            return Err(ServiceError::from_store("delivery")(e));
        }
    };
    // As it was sent, before this attempt, which is then the first one after those shown: what
    // a caller waiting for the attempt's outcome needs (`herald deliveries retry`). Read while
    // the guard is armed: a caller gone meanwhile has the lease given back, due now.
    let sent = get(state, scope, org, id).await;
    handing_off.disarm();
    // Someone is waiting to see it: ahead of the webhook's backlog, and through an open
    // circuit as its probe.
    state.dispatcher.enqueue_urgent(due, lease_until);
    sent
}

/// Attempts now every delivery of the webhook waiting for its next attempt (a retry, or its
/// endpoint's cool-down), for an endpoint just fixed, which their schedules do not count. Behind
/// this node's open circuit, one of them goes first as its probe, as a resend does, so that the
/// circuit closes now rather than at the cool-down's end and the rest follow. A wait the
/// endpoint asked for (`Retry-After`) ends on this node. Answers how many.
pub async fn retry_waiting(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    webhook: &WebhookId,
) -> ServiceResult<RetriedWaiting> {
    let w = super::webhooks::get(state, scope, org, webhook).await?;
    if !w.active {
        return Err(ServiceError::Conflict(format!(
            "the webhook is inactive: its deliveries wait, parked, until it is activated (then \
             each goes at its next attempt time, at once if that has passed); activate it (POST \
             /v1/orgs/{org}/webhooks/{webhook}/activate), then retry what waits to send the rest \
             at once"
        )));
    }
    // One time for the whole call: the probe's resend comes after it, so what the probe
    // changes (its attempt, recorded at once if it fails fast) is not made due again below.
    let now = state.clock.now();
    let mut probed = false;
    if state.dispatcher.circuit_open_until(&w).is_some() {
        // A waiting delivery among the latest pending ones: one whose next attempt is later (a
        // new one is due already, and goes as the probe once the cool-down ends). Picked at
        // random, so that presses do not all fall on one delivery.
        let pending = state
            .store
            .list_deliveries(
                org,
                webhook,
                &DeliveryFilter {
                    state: Some(DeliveryState::Pending),
                    event_type: None,
                },
                &PageRequest {
                    limit: PROBE_CANDIDATES,
                    cursor: None,
                },
            )
            .await
            .map_err(ServiceError::from_store("webhook"))?;
        let mut waiting: Vec<&Delivery> = pending
            .data
            .iter()
            .filter(|d| d.next_attempt_at.is_some_and(|at| at > now))
            .collect();
        waiting.shuffle(&mut rand::rng());
        for candidate in waiting.into_iter().take(3) {
            // One a node took meanwhile (409) is under way, or goes as the probe anyway.
            match resend(state, scope, org, &candidate.id).await {
                Ok(_) => {
                    probed = true;
                    break;
                }
                Err(ServiceError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let n = state
        .store
        .retry_waiting(org, webhook, now)
        .await
        .map_err(ServiceError::from_store("webhook"))?;
    // Asked for by a person: the endpoint's own wait gives way, as it does to a resend (after
    // the count, which what it held is part of; what this node deferred meanwhile goes too).
    state.dispatcher.lift_retry_after(webhook).await;
    if n > 0 {
        state.dispatcher.wake_delivery_scheduler();
    }
    let retried = n + u64::from(probed);
    if retried > 0 {
        tracing::info!(webhook = %webhook, count = retried, probed, "attempting the webhook's waiting deliveries now");
    }
    Ok(RetriedWaiting {
        retried,
        probed,
        circuit_open_until: state.dispatcher.circuit_open_until(&w),
    })
}

/// What retrying a webhook's waiting deliveries did.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RetriedWaiting {
    /// How many deliveries waiting for their next attempt were made due now.
    pub retried: u64,
    /// Whether one of them was queued at once as the probe of this node's open circuit (behind
    /// a probe already out, it waits for that one's answer).
    #[serde(default)]
    #[schema(required = true)]
    pub probed: bool,
    /// Set while this node's circuit for the endpoint is open: what was made due goes once a
    /// probe succeeds (the one sent now, or the next, at this time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_open_until: Option<Timestamp>,
}

impl RetriedWaiting {
    /// What happened, in a sentence for a person (the dashboard's message, the CLI's answer);
    /// `None` when nothing was waiting.
    pub fn summary(&self) -> Option<String> {
        let n = self.retried;
        let deliveries = if n == 1 {
            "1 delivery waiting for a retry is".to_owned()
        } else {
            format!("{n} deliveries waiting for a retry are")
        };
        Some(match (n, self.circuit_open_until) {
            (0, _) => return None,
            (_, None) => format!("{deliveries} being attempted now."),
            (1, Some(_)) if self.probed => format!(
                "{deliveries} due now. The endpoint's circuit is open on this node: it goes \
                 ahead as its probe (after any probe already out)."
            ),
            (_, Some(_)) if self.probed => format!(
                "{deliveries} due now. The endpoint's circuit is open on this node: one of them \
                 goes ahead as its probe (after any probe already out), and the rest follow as \
                 soon as a probe succeeds."
            ),
            (_, Some(until)) => format!(
                "{deliveries} due now, behind the endpoint's open circuit on this node: they \
                 follow its next probe, at {}.",
                until.to_rfc3339_secs()
            ),
        })
    }
}

/// How many of a webhook's latest pending deliveries are looked through for one to send as the
/// probe of its open circuit.
const PROBE_CANDIDATES: u32 = 50;

/// Resends every failed delivery of the webhook created at or after `since` (and, with
/// `skipped`, those never sent because their WebSub channel was not verified).
/// What recovering a webhook's failed deliveries did.
#[derive(Debug)]
pub struct Recovery {
    /// How many were scheduled again.
    pub recovered: u64,
    /// Set while this node's circuit for the endpoint is open: they go once a probe succeeds
    /// (at this time, or now with [`retry_waiting`]).
    pub circuit_open_until: Option<Timestamp>,
}

pub async fn recover(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    webhook: &WebhookId,
    since: Timestamp,
    skipped: bool,
) -> ServiceResult<Recovery> {
    let w = super::webhooks::get(state, scope, org, webhook).await?;
    let n = state
        .store
        .recover_failed(org, webhook, since, state.clock.now(), skipped)
        .await
        .map_err(ServiceError::from_store("webhook"))?;
    if n > 0 {
        state.dispatcher.wake_delivery_scheduler();
        tracing::info!(webhook = %webhook, count = n, skipped, "recovering failed deliveries");
    }
    Ok(Recovery {
        recovered: n,
        circuit_open_until: state.dispatcher.circuit_open_until(&w),
    })
}

/// A delivery's request as its webhook's profile renders it now: the headers (custom ones,
/// `User-Agent`, the profile's, and signatures computed now) and the body.
/// What shows in place of a custom header's value.
pub const HIDDEN_HEADER_VALUE: &str = "•••••••• (custom header: its value is not shown)";

#[derive(Debug, Serialize)]
pub struct RequestPreview {
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Renders the delivery's request again, the way the dispatcher does for an attempt
/// (`herald-dispatch`'s `dispatcher/attempt.rs`). Attempts do not keep the bytes they sent, so
/// this is what an attempt made now would send: signatures and timestamps differ from the
/// earlier attempts'. `None` when the webhook was deleted or retention removed the event.
pub async fn preview_request(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    delivery: &Delivery,
) -> ServiceResult<Option<RequestPreview>> {
    let snapshot = super::org_snapshot(state, scope, org).await?;
    let Some(webhook) = snapshot.webhook(&delivery.webhook_id) else {
        return Ok(None);
    };
    let event = match state.store.get_event(org, &delivery.event_id).await {
        Ok(e) => e,
        Err(StoreError::NotFound) => return Ok(None),
        Err(e) => return Err(ServiceError::from_store("event")(e)),
    };
    let resolved = snapshot.resolve_type(&event.event_type);
    let public_url = state.settings.public_url();
    let request = profile::render(&RenderInput {
        event: &event,
        webhook,
        org: &snapshot.org,
        delivery_id: &delivery.id,
        now: state.clock.now(),
        public_url: &public_url,
        channel: resolved.as_ref().and_then(|t| t.channel),
        type_uri: resolved.as_ref().and_then(|t| t.uri),
    });
    // Custom headers often carry the receiver's credentials: their names only, as everywhere
    // a webhook is shown.
    let mut headers: Vec<(String, String)> = webhook
        .headers
        .keys()
        .map(|k| (k.clone(), HIDDEN_HEADER_VALUE.to_owned()))
        .collect();
    headers.push((
        "user-agent".into(),
        herald_dispatch::client::USER_AGENT.to_owned(),
    ));
    headers.extend(request.headers.into_iter().map(|(k, v)| (k.to_owned(), v)));
    Ok(Some(RequestPreview {
        headers,
        body: String::from_utf8_lossy(&request.body).into_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_was_retried_is_told_with_what_the_circuit_does_to_it() {
        let told = |retried, probed, open: Option<i64>| {
            RetriedWaiting {
                retried,
                probed,
                circuit_open_until: open.map(Timestamp::from_millis),
            }
            .summary()
        };
        assert_eq!(told(0, false, None), None);
        assert_eq!(
            told(1, false, None).unwrap(),
            "1 delivery waiting for a retry is being attempted now."
        );
        assert!(
            told(1, true, Some(1_700_000_000_000))
                .unwrap()
                .ends_with("it goes ahead as its probe (after any probe already out).")
        );
        let probed = told(12, true, Some(1_700_000_000_000)).unwrap();
        assert!(
            probed.starts_with("12 deliveries waiting for a retry are due now.")
                && probed.contains("one of them goes ahead as its probe"),
            "{probed}"
        );
        let held = told(3, false, Some(1_700_000_000_000)).unwrap();
        assert!(
            held.contains("behind the endpoint's open circuit on this node")
                && held.ends_with("at 2023-11-14T22:13:20Z."),
            "{held}"
        );
    }
}
