//! Delivery history: a webhook's deliveries with filters and cursor pages, one delivery with
//! every attempt and its request, resend one, and recover every failed one since a time.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;

use herald_core::delivery::{Attempt, Delivery, DeliveryState};
use herald_core::store::DeliveryFilter;
use herald_core::{DeliveryId, Invalid, OrgId, PageRequest, Timestamp};

use super::confirm;
use super::error::{DashError, DashResult, describe};
use super::forms::{QueryForm, path_id};
use super::orgs::org_id;
use super::session::{Flash, Post, Signed};
use super::templates::{self, Layout, when, when_opt};
use super::webhooks::webhook_id;
use crate::app::AppState;
use crate::service::deliveries::RequestPreview;
use crate::service::{ServiceError, deliveries, event_types, orgs, webhooks};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/webhooks/{id}/deliveries", get(list_deliveries))
        .route(
            "/orgs/{org}/webhooks/{id}/recover",
            post(recover_deliveries),
        )
        .route("/orgs/{org}/webhooks/{id}/retry", post(retry_waiting))
        .route("/orgs/{org}/deliveries/{id}", get(show_delivery))
        .route("/orgs/{org}/events", get(show_event))
        .route("/orgs/{org}/deliveries/{id}/resend", post(resend_delivery))
}

const STATES: &[&str] = &["pending", "succeeded", "failed", "cancelled", "skipped"];

/// One line of a history table.
#[derive(Serialize)]
pub struct DeliveryRow {
    id: String,
    webhook_id: String,
    event_id: String,
    event_type: String,
    state: &'static str,
    attempts: u32,
    last_status: Option<u16>,
    last_error: Option<String>,
    /// What `last_error` means, when no attempt explains it.
    why: Option<&'static str>,
    created: String,
    next_attempt: Option<String>,
    /// The next attempt's time has come: it is under way, or waiting for its turn (the
    /// endpoint's other requests, its circuit).
    due: bool,
}

impl DeliveryRow {
    /// The row of `d` as seen at `now`.
    pub fn of(d: &Delivery, now: Timestamp) -> Self {
        let pending = d.state == DeliveryState::Pending;
        Self {
            id: d.id.to_string(),
            webhook_id: d.webhook_id.to_string(),
            event_id: d.event_id.clone(),
            event_type: d.event_type.clone(),
            state: d.state.as_str(),
            attempts: d.attempt_count,
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            why: d
                .last_error
                .as_deref()
                .and_then(herald_core::delivery::explain_last_error),
            created: when(d.created_at),
            next_attempt: when_opt(d.next_attempt_at).filter(|_| pending),
            due: pending && d.next_attempt_at.is_some_and(|at| at <= now),
        }
    }
}

#[derive(Serialize)]
struct HistoryPage {
    org_id: String,
    webhook_id: String,
    webhook_name: String,
    rows: Vec<DeliveryRow>,
    state: String,
    event_type: String,
    states: &'static [&'static str],
    event_types: Vec<String>,
    /// The next page's URL, with the filters kept.
    next_href: Option<String>,
    /// Back to the newest deliveries, past the first page.
    first_href: Option<String>,
    /// A default for the recover form: a day ago, as `datetime-local` wants it.
    recover_since: String,
    /// Whether its deliveries are sent (an inactive webhook's wait, parked).
    active: bool,
    /// It verifies its intent (WebSub): the recover form offers the skipped deliveries too.
    websub: bool,
}

async fn list_deliveries(
    State(state): State<AppState>,
    signed: Signed,
    Path((org, id)): Path<(String, String)>,
    QueryForm(q): QueryForm,
) -> DashResult<Response> {
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let w = webhooks::get(&state, &signed.scope, &org.id, &webhook_id(&id)?).await?;
    let (state_filter, type_filter) = (q.text("state"), q.text("event_type"));
    let filter = DeliveryFilter {
        state: Some(state_filter.as_str())
            .filter(|s| !s.is_empty())
            .map(DeliveryState::parse)
            .transpose()
            .map_err(ServiceError::from)?,
        // Checked as the API checks it: PostgreSQL refuses some bytes (NUL) outright.
        event_type: Some(type_filter.as_str())
            .filter(|t| !t.is_empty())
            .map(|t| herald_core::event_type::parse_type_name(t, "event_type"))
            .transpose()
            .map_err(ServiceError::from)?,
    };
    let cursor = Some(q.text("cursor")).filter(|c| !c.is_empty());
    // Past the first page, a way back to the newest (cursors lead only to older ones).
    let first_href = cursor.is_some().then(|| {
        let query = serde_urlencoded::to_string([
            ("state", state_filter.as_str()),
            ("event_type", type_filter.as_str()),
        ])
        .unwrap_or_default();
        format!("/orgs/{}/webhooks/{}/deliveries?{query}", org.id, w.id)
    });
    let page =
        PageRequest::of_ids(Some(50), cursor, DeliveryId::parse).map_err(ServiceError::from)?;
    let list = deliveries::list(&state, &signed.scope, &org.id, &w.id, filter, page).await?;
    let next_href = list.next_cursor.map(|cursor| {
        let query = serde_urlencoded::to_string([
            ("state", state_filter.as_str()),
            ("event_type", type_filter.as_str()),
            ("cursor", cursor.as_str()),
        ])
        .unwrap_or_default();
        format!("/orgs/{}/webhooks/{}/deliveries?{query}", org.id, w.id)
    });
    let event_types = stored_types(&state, &signed, &org.id).await?;
    // A day ago, unless a refused recover sent back what was typed.
    let typed: String = q.text("since").chars().take(64).collect();
    let recover_since = Some(typed).filter(|t| !t.is_empty()).unwrap_or_else(|| {
        (state.clock.now().plus_secs(-86_400).to_datetime())
            .format("%Y-%m-%dT%H:%M")
            .to_string()
    });
    let page = HistoryPage {
        org_id: org.id.to_string(),
        webhook_id: w.id.to_string(),
        webhook_name: w.name.clone(),
        rows: list
            .data
            .iter()
            .map(|d| DeliveryRow::of(d, state.clock.now()))
            .collect(),
        state: state_filter,
        event_type: type_filter,
        states: STATES,
        event_types,
        next_href,
        first_href,
        recover_since,
        active: w.active,
        websub: w.verification == herald_core::subscription::Verification::Websub,
    };
    let layout = Layout::new(
        &state,
        &signed,
        format!("History of {}", w.name),
        Some(&org),
    )
    .await;
    Ok(templates::render(
        StatusCode::OK,
        "deliveries.html",
        &layout,
        page,
    ))
}

/// The types a filter offers: the organization's, and what Herald stores of its own (test
/// events, and its news: `webhook.disabled`…), sorted.
async fn stored_types(state: &AppState, signed: &Signed, org: &OrgId) -> DashResult<Vec<String>> {
    let mut types: Vec<String> = event_types::list_for_org(state, &signed.scope, org)
        .await?
        .into_iter()
        .map(|t| t.name)
        .chain([herald_core::event_type::TEST_EVENT_TYPE.to_owned()])
        .chain(herald_core::event_type::OPERATIONAL_TYPES.map(str::to_owned))
        .collect();
    types.sort();
    types.dedup();
    Ok(types)
}

/// A time typed in the recover form: RFC 3339, or a browser's `datetime-local`
/// (`2026-05-01T12:00`), read as UTC.
fn parse_since(raw: &str) -> Result<Timestamp, Invalid> {
    if let Ok(t) = Timestamp::parse_rfc3339(raw, "since") {
        return Ok(t);
    }
    chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M")
        .or_else(|_| chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S"))
        .map(|t| Timestamp::from_millis(t.and_utc().timestamp_millis()))
        .map_err(|_| {
            Invalid::new(
                "since",
                "must be a date and time, e.g. 2026-05-01T12:00 (UTC)",
            )
        })
}

async fn retry_waiting(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    post: Post,
) -> DashResult<Response> {
    let (org, id) = (org_id(&org)?, webhook_id(&id)?);
    let flash = match deliveries::retry_waiting(&state, &post.signed.scope, &org, &id).await {
        Ok(done) => Flash::ok(done.summary().unwrap_or_else(|| {
            "No delivery is waiting for a retry: any pending ones are queued or under way. \
             Failed ones are sent again from the form below."
                .to_owned()
        })),
        Err(ServiceError::NotFound(_)) => return Err(DashError::not_found()),
        Err(e) => Flash::error(describe(e).1),
    };
    Ok(post
        .signed
        .flash_then_go(
            &state,
            flash,
            &format!("/orgs/{org}/webhooks/{id}/deliveries"),
        )
        .await)
}

async fn recover_deliveries(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    post: Post,
) -> DashResult<Response> {
    let (org, id) = (org_id(&org)?, webhook_id(&id)?);
    let Post { signed, form } = post;
    // A mistyped time is refused before anything is asked.
    let since = parse_since(&form.text("since"));
    if since.is_ok() && !confirm::confirmed(&form) {
        confirm::webhook_seen(&state, &signed, &org, &id).await?;
        let back = format!("/orgs/{org}/webhooks/{id}/deliveries");
        let which = if form.checked("skipped") {
            "failed or skipped"
        } else {
            "failed"
        };
        let consequence = format!(
            "Every {which} delivery created since {} (UTC) goes to the endpoint again.",
            form.text("since").replace('T', " ")
        );
        let question = confirm::Question {
            title: "Send the failed deliveries again?",
            consequence: &consequence,
            go: "Send again",
            back: &back,
        };
        let action = format!("/orgs/{org}/webhooks/{id}/recover");
        return confirm::ask(&state, &signed, &org, &form, &action, question).await;
    }
    // Skipped too: those a WebSub channel not verified then kept from being sent.
    let skipped = form.checked("skipped");
    let recovered_since_refused = since.is_err().then(|| form.text("since"));
    let recovered = match since {
        Ok(since) => deliveries::recover(&state, &signed.scope, &org, &id, since, skipped).await,
        Err(invalid) => Err(invalid.into()),
    };
    let which = if skipped {
        "failed or skipped"
    } else {
        "failed"
    };
    let flash = match recovered {
        Ok(r) if r.recovered == 0 => Flash::ok(format!(
            "No {which} deliveries since then; nothing to recover."
        )),
        Ok(r) => {
            let n = r.recovered;
            let (them, are) = if n == 1 {
                (format!("1 {which} delivery"), "is")
            } else {
                (format!("{n} {which} deliveries"), "are")
            };
            match r.circuit_open_until {
                None => Flash::ok(format!("{them} {are} being sent again.")),
                // Its latest requests failed: what was recovered waits for a probe.
                Some(until) => Flash::ok(format!(
                    "{them} {are} scheduled again, but its endpoint's latest requests failed: \
                     they wait until {} for a probe. Fixed it? Attempt waiting deliveries now: \
                     the first goes at once, and the rest follow if it succeeds.",
                    super::templates::when(until)
                )),
            }
        }
        Err(ServiceError::NotFound(_)) => return Err(DashError::not_found()),
        Err(e) => Flash::error(describe(e).1),
    };
    // A time refused goes back to its field, as typed, beside the message.
    let history = format!("/orgs/{org}/webhooks/{id}/deliveries");
    let back = match recovered_since_refused {
        Some(typed) => format!(
            "{history}?{}",
            serde_urlencoded::to_string([("since", typed.as_str())]).unwrap_or_default()
        ),
        None => history,
    };
    Ok(signed.flash_then_go(&state, flash, &back).await)
}

#[derive(Serialize)]
struct AttemptRow {
    number: u32,
    started: String,
    duration_ms: u32,
    status: Option<u16>,
    ok: bool,
    error: Option<String>,
    error_message: Option<String>,
    response_body: String,
}

impl From<&Attempt> for AttemptRow {
    fn from(a: &Attempt) -> Self {
        Self {
            number: a.number,
            started: when(a.started_at),
            duration_ms: a.duration_ms,
            status: a.status,
            ok: a.error.is_none(),
            error: a.error.clone(),
            error_message: a.error_message.clone(),
            response_body: herald_core::shown_safely(&a.response_body),
        }
    }
}

#[derive(Serialize)]
struct DeliveryPage {
    org_id: String,
    delivery: DeliveryRow,
    webhook_name: Option<String>,
    /// Its webhook is deleted (no page to link to, nothing to resend to) or disabled (enabled
    /// again, it may resend): a resend is not offered, and the page says why.
    webhook_deleted: bool,
    webhook_disabled: bool,
    attempts: Vec<AttemptRow>,
    request: Option<RequestPreview>,
    /// The body, pretty-printed when it is JSON.
    request_body: Option<String>,
    /// The body as sent, byte for byte (what the signature covers), where the pretty one
    /// differs from it.
    request_body_sent: Option<String>,
    /// Pending: its next attempt can be made now (unless one is already under way).
    pending: bool,
}

fn pretty(body: &str) -> String {
    let laid_out = serde_json::from_str::<serde_json::Value>(body)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .unwrap_or_else(|_| body.to_owned());
    herald_core::shown_safely(&laid_out)
}

async fn show_delivery(
    State(state): State<AppState>,
    signed: Signed,
    Path((org, id)): Path<(String, String)>,
) -> DashResult<Response> {
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let id = path_id(&id, DeliveryId::parse)?;
    let detail = deliveries::get(&state, &signed.scope, &org.id, &id).await?;
    let request =
        deliveries::preview_request(&state, &signed.scope, &org.id, &detail.delivery).await?;
    let webhook =
        match webhooks::get(&state, &signed.scope, &org.id, &detail.delivery.webhook_id).await {
            Ok(webhook) => Some(webhook),
            Err(crate::service::ServiceError::NotFound(_)) => None,
            Err(other) => return Err(other.into()),
        };
    let request_body = request.as_ref().map(|r| pretty(&r.body));
    let request_body_sent = request
        .as_ref()
        .map(|r| herald_core::shown_safely(&r.body))
        .filter(|sent| Some(sent) != request_body.as_ref());
    let page = DeliveryPage {
        org_id: org.id.to_string(),
        delivery: DeliveryRow::of(&detail.delivery, state.clock.now()),
        webhook_deleted: webhook.is_none(),
        webhook_disabled: webhook.as_ref().is_some_and(|w| !w.active),
        webhook_name: webhook.map(|w| w.name),
        attempts: detail.attempts.iter().map(AttemptRow::from).collect(),
        request_body,
        request_body_sent,
        request,
        pending: detail.delivery.state == DeliveryState::Pending,
    };
    let layout = Layout::new(&state, &signed, format!("Delivery {id}"), Some(&org)).await;
    Ok(templates::render(
        StatusCode::OK,
        "delivery.html",
        &layout,
        page,
    ))
}

/// One event and its delivery to each webhook; without an id asked for, the organization's
/// events, newest first.
#[derive(Serialize)]
struct EventPage {
    org_id: String,
    /// The id asked for, as typed (shown back in the search box).
    asked: String,
    event: Option<EventView>,
    rows: Vec<EventDeliveryRow>,
    /// It went to more webhooks than shown.
    truncated: bool,
    /// The list, when no id is asked for.
    recent: Option<RecentEvents>,
    /// How long events are kept (0: for ever), for an id not found.
    retention_days: u64,
}

#[derive(Serialize)]
struct RecentEvents {
    rows: Vec<RecentEvent>,
    /// The type the list is filtered by (empty: any), and the types to choose from.
    event_type: String,
    event_types: Vec<String>,
    next_href: Option<String>,
    first_href: Option<String>,
}

#[derive(Serialize)]
struct RecentEvent {
    id: String,
    event_type: String,
    received: String,
    correlation_id: Option<String>,
}

#[derive(Serialize)]
struct EventView {
    id: String,
    event_type: String,
    occurred: String,
    received: String,
    correlation_id: Option<String>,
    data: String,
}

/// A delivery of the event, with the name of the webhook it went to.
#[derive(Serialize)]
struct EventDeliveryRow {
    #[serde(flatten)]
    delivery: DeliveryRow,
    /// `None` for a webhook since deleted (only its id is left to show).
    webhook_name: Option<String>,
}

/// `/orgs/{org}/events?id=…`: where an event went, found by the id its producer gave it (a
/// query parameter, since event ids may hold `/` or `?`).
async fn show_event(
    State(state): State<AppState>,
    signed: Signed,
    Path(org): Path<String>,
    QueryForm(form): QueryForm,
) -> DashResult<Response> {
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let asked = form.text("id").trim().to_owned();
    let mut page = EventPage {
        org_id: org.id.to_string(),
        asked: asked.clone(),
        event: None,
        rows: Vec::new(),
        truncated: false,
        recent: None,
        retention_days: state.settings.delivery.retention_days,
    };
    let mut status = StatusCode::OK;
    if asked.is_empty() {
        page.recent = Some(recent_events(&state, &signed, &org.id, &form).await?);
    } else if herald_core::event::parse_event_id(&asked).is_err() {
        // What no event id can be (a space, over 255 characters) is not looked up.
        status = StatusCode::NOT_FOUND;
    } else {
        match crate::service::events::of_event(&state, &signed.scope, &org.id, &asked).await {
            Ok(found) => {
                let snapshot = crate::service::org_snapshot(&state, &signed.scope, &org.id).await?;
                page.rows = found
                    .deliveries
                    .iter()
                    .map(|d| EventDeliveryRow {
                        delivery: DeliveryRow::of(d, state.clock.now()),
                        webhook_name: snapshot.webhook(&d.webhook_id).map(|w| w.name.clone()),
                    })
                    .collect();
                page.truncated = found.truncated;
                let e = found.event;
                page.event = Some(EventView {
                    id: e.id,
                    event_type: e.event_type,
                    occurred: when(e.occurred_at),
                    received: when(e.received_at),
                    correlation_id: e.correlation_id,
                    data: pretty(e.data.get()),
                });
            }
            Err(ServiceError::NotFound(_)) => status = StatusCode::NOT_FOUND,
            Err(e) => return Err(e.into()),
        }
    }
    let title = if asked.is_empty() {
        "Events".to_owned()
    } else {
        format!("Event {}", herald_core::truncate_for_message(&asked))
    };
    let layout = Layout::new(&state, &signed, title, Some(&org)).await;
    Ok(templates::render(status, "event.html", &layout, page))
}

/// A page of the organization's events, newest first, of the type the form asks for.
async fn recent_events(
    state: &AppState,
    signed: &Signed,
    org: &OrgId,
    form: &super::forms::Form,
) -> DashResult<RecentEvents> {
    let type_filter = form.text("type");
    let event_type = Some(type_filter.as_str())
        .filter(|t| !t.is_empty())
        .map(|t| herald_core::event_type::parse_type_name(t, "type"))
        .transpose()
        .map_err(ServiceError::from)?;
    let cursor = Some(form.text("cursor")).filter(|c| !c.is_empty());
    let href = |cursor: Option<&str>| {
        let mut query = vec![("type", type_filter.as_str())];
        query.extend(cursor.map(|c| ("cursor", c)));
        let query = serde_urlencoded::to_string(query).unwrap_or_default();
        format!("/orgs/{org}/events?{query}")
    };
    // Past the first page, a way back to the newest (cursors lead only to older ones).
    let first_href = cursor.is_some().then(|| href(None));
    let page = PageRequest::of_ids(Some(50), cursor, herald_core::event::EventCursor::parse)
        .map_err(ServiceError::from)?;
    let filter = herald_core::store::EventFilter {
        event_type,
        since: None,
    };
    let list = crate::service::events::list_events(state, &signed.scope, org, filter, page).await?;
    let event_types = stored_types(state, signed, org).await?;
    Ok(RecentEvents {
        rows: list
            .data
            .into_iter()
            .map(|e| RecentEvent {
                id: e.id,
                event_type: e.event_type,
                received: when(e.received_at),
                correlation_id: e.correlation_id,
            })
            .collect(),
        event_type: type_filter.clone(),
        event_types,
        next_href: list.next_cursor.as_deref().map(|c| href(Some(c))),
        first_href,
    })
}

async fn resend_delivery(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    post: Post,
) -> DashResult<Response> {
    let org = org_id(&org)?;
    let id = path_id(&id, DeliveryId::parse)?;
    let Post { signed, .. } = post;
    let flash = match deliveries::resend(&state, &signed.scope, &org, &id).await {
        Ok(sent) => resend_flash(&state, &signed, &org, &id, sent.attempts.len()).await,
        Err(ServiceError::NotFound(_)) => return Err(DashError::not_found()),
        Err(e) => Flash::error(describe(e).1),
    };
    Ok(signed
        .flash_then_go(&state, flash, &format!("/orgs/{org}/deliveries/{id}"))
        .await)
}

/// What became of a delivery just sent again: the endpoint's answer if it came within
/// [`super::webhooks::ANSWER_WAIT`], so that the page shows the attempt.
async fn resend_flash(
    state: &AppState,
    signed: &Signed,
    org: &OrgId,
    id: &DeliveryId,
    made: usize,
) -> Flash {
    let Some(answered) =
        super::webhooks::answer_to_attempt(state, &signed.scope, org, id, made).await
    else {
        return Flash::ok(
            "Sent; no answer yet: the attempt shows below once it is made (behind an open \
             circuit, at its next attempt time).",
        );
    };
    let (answer, took) = (&answered.answer, answered.took_ms);
    match answered.after {
        DeliveryState::Succeeded => Flash::ok(format!("Delivered: {answer} in {took} ms.")),
        DeliveryState::Pending => Flash::error(format!(
            "Not delivered: {answer} after {took} ms; {}.",
            answered.what_next()
        )),
        _ => Flash::error(format!(
            "Not delivered: {answer} after {took} ms, and no attempt is left."
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_cannot_rearrange_what_is_shown() {
        assert_eq!(
            pretty(r#"{"name":"Acme\u202etxt"}"#),
            "{\n  \"name\": \"Acme\\u{202e}txt\"\n}"
        );
    }

    #[test]
    fn a_browser_datetime_is_read_as_utc() {
        let t = parse_since("2026-05-01T12:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-05-01T12:00:00.000Z");
        assert!(parse_since("2026-05-01T12:00:00+02:00").is_ok());
        assert!(parse_since("yesterday").is_err());
    }
}
