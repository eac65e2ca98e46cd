//! Organizations: the list (the admin sees all and can create one; an organization key sees
//! its own) and one organization's page with its webhooks (and bulk delete) and API keys.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;

use herald_core::org::Organization;
use herald_core::subscription::Verification;
use herald_core::webhook::Webhook;
use herald_core::{OrgId, PageRequest, WebhookId};

use super::confirm;
use super::error::{DashResult, describe};
use super::forms::{QueryForm, path_id};
use super::keys::KeyRow;
use super::session::{Flash, Post, Signed};
use super::templates::{self, Layout, when};
use crate::app::AppState;
use crate::service::orgs::OrgInput;
use crate::service::{Scope, ServiceError, auth, event_types, orgs, subscriptions, webhooks};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs", get(list_orgs).post(create_org))
        .route("/orgs/{org}", get(show_org))
        .route("/orgs/{org}/webhooks/bulk-delete", post(bulk_delete))
}

pub fn org_id(raw: &str) -> DashResult<OrgId> {
    path_id(raw, OrgId::parse)
}

#[derive(Serialize)]
pub struct OrgRow {
    id: String,
    name: String,
    handle: String,
    catalogs: String,
    created: String,
}

impl From<&Organization> for OrgRow {
    fn from(o: &Organization) -> Self {
        Self {
            id: o.id.to_string(),
            name: o.name.clone(),
            handle: o.handle.as_str().to_owned(),
            catalogs: catalogs_named(o),
            created: when(o.created_at),
        }
    }
}

/// The new-organization form as typed, kept when it is refused.
#[derive(Serialize, Default)]
struct OrgForm {
    name: String,
    handle: String,
    error: Option<String>,
    /// The field the refusal is about, marked on the form.
    error_field: Option<String>,
}

#[derive(Serialize)]
pub struct CatalogChoice {
    name: String,
    description: String,
    checked: bool,
}

/// A checkbox for each built-in catalog, checked if it is in `chosen`.
pub fn catalog_choices(chosen: &[String]) -> Vec<CatalogChoice> {
    event_types::catalogs()
        .iter()
        .map(|c| CatalogChoice {
            checked: chosen.contains(&c.name),
            name: c.name.clone(),
            description: c.description.clone(),
        })
        .collect()
}

#[derive(Serialize)]
struct OrgsPage {
    orgs: Vec<OrgRow>,
    next_cursor: Option<String>,
    /// Past the first page: it gets a link back to the first.
    paged: bool,
    can_create: bool,
    form: OrgForm,
    catalogs: Vec<CatalogChoice>,
}

async fn list_orgs(
    State(state): State<AppState>,
    signed: Signed,
    QueryForm(q): QueryForm,
) -> DashResult<Response> {
    let cursor = q.get("cursor").map(str::to_owned);
    orgs_page(
        &state,
        &signed,
        cursor,
        OrgForm::default(),
        None,
        StatusCode::OK,
    )
    .await
}

async fn orgs_page(
    state: &AppState,
    signed: &Signed,
    cursor: Option<String>,
    form: OrgForm,
    chosen: Option<Vec<String>>,
    status: StatusCode,
) -> DashResult<Response> {
    let paged = cursor.as_deref().is_some_and(|c| !c.is_empty());
    let page = PageRequest::of_ids(Some(100), cursor, OrgId::parse)
        .map_err(crate::service::ServiceError::from)?;
    let list = orgs::list(state, &signed.scope, page).await?;
    let chosen = chosen.unwrap_or_else(|| vec![herald_core::catalog::CatalogName::DEFAULT.into()]);
    let page = OrgsPage {
        orgs: list.data.iter().map(OrgRow::from).collect(),
        next_cursor: list.next_cursor,
        paged,
        can_create: signed.scope == Scope::Admin,
        form,
        catalogs: catalog_choices(&chosen),
    };
    let layout = Layout::new(state, signed, "Organizations", None).await;
    Ok(templates::render(status, "orgs.html", &layout, page))
}

async fn create_org(State(state): State<AppState>, post: Post) -> DashResult<Response> {
    let Post { signed, form } = post;
    let input = OrgInput {
        name: Some(form.text("name")),
        handle: Some(form.text("handle")).filter(|h| !h.is_empty()),
        catalogs: Some(form.all("catalogs")),
    };
    let derived = input.handle.is_none();
    match orgs::create(&state, &signed.scope, input).await {
        Ok(org) => {
            // A derived handle is numbered when taken (often: another organization of the same
            // name), and topics and issuer URLs name it: said rather than left to be noticed.
            let wanted = herald_core::org::OrgHandle::from_name(&org.name);
            let note = if derived && org.handle != wanted {
                format!(
                    " Its handle is {} ({} was taken); its settings can change it.",
                    org.handle.as_str(),
                    wanted.as_str()
                )
            } else {
                String::new()
            };
            let flash = Flash::ok(format!("Organization {} created.{note}", org.name));
            Ok(signed
                .flash_then_go(&state, flash, &format!("/orgs/{}", org.id))
                .await)
        }
        Err(e) => {
            let error_field = refused_field(&e);
            let (status, message) = describe(e);
            let kept = OrgForm {
                name: form.text("name"),
                handle: form.text("handle"),
                error: Some(message),
                error_field,
            };
            let chosen = Some(form.all("catalogs"));
            orgs_page(&state, &signed, None, kept, chosen, status).await
        }
    }
}

/// The field of an organization's form that a refusal is about, to mark it: a conflict is a
/// taken handle or catalogs that webhooks still use.
pub(super) fn refused_field(e: &ServiceError) -> Option<String> {
    match e {
        ServiceError::Invalid(i) => Some(i.field.clone()),
        // The stores' words for a taken handle; other conflicts may quote names with "handle".
        ServiceError::Conflict(m) if m.starts_with("the handle '") => Some("handle".to_owned()),
        ServiceError::Conflict(_) => Some("catalogs".to_owned()),
        _ => None,
    }
}

/// One line of the webhook table.
#[derive(Serialize)]
pub struct WebhookRow {
    id: String,
    name: String,
    url: String,
    profile: &'static str,
    active: bool,
    wants: String,
    disabled_reason: Option<String>,
    /// An active webhook that verifies its intent: how many of its channels deliver now, as
    /// "1 of 2 channels verified" (enabled, it gets only those channels' events).
    channels_verified: Option<String>,
    /// None of them does: it gets nothing.
    no_channel_verified: bool,
}

impl From<&Webhook> for WebhookRow {
    fn from(w: &Webhook) -> Self {
        let mut wants: Vec<String> = w.events.clone();
        wants.extend(w.channels.iter().map(|c| format!("channel {c}")));
        Self {
            id: w.id.to_string(),
            name: w.name.clone(),
            url: w.url.as_str().to_owned(),
            profile: w.profile.as_str(),
            active: w.active,
            wants: wants.join(", "),
            disabled_reason: w.disabled_reason.clone(),
            channels_verified: None,
            no_channel_verified: false,
        }
    }
}

/// Fills in how many channels each active WebSub webhook of the page delivers to, so that one
/// whose verification failed does not look like every other enabled webhook.
async fn count_verified_channels(
    state: &AppState,
    scope: &Scope,
    org: &OrgId,
    webhooks: &[Webhook],
    rows: &mut [WebhookRow],
) -> DashResult<()> {
    let now = state.clock.now();
    for (w, row) in webhooks.iter().zip(rows.iter_mut()) {
        if !(w.active && w.verification == Verification::Websub) {
            continue;
        }
        let subs = subscriptions::list(state, scope, org, &w.id).await?;
        let verified = subs.iter().filter(|s| s.delivers(now)).count();
        row.channels_verified = Some(format!(
            "{verified} of {} verified",
            crate::counted(subs.len() as u64, "channel", "channels")
        ));
        row.no_channel_verified = verified == 0;
    }
    Ok(())
}

#[derive(Serialize)]
struct OrgPage {
    org: OrgRow,
    webhooks: Vec<WebhookRow>,
    next_cursor: Option<String>,
    /// Past the first page: it gets a link back to the first.
    paged: bool,
    keys: Vec<KeyRow>,
    key_form: KeyForm,
}

/// The new-key form as typed, and why it was refused (empty: a new form).
#[derive(Serialize, Default)]
pub(super) struct KeyForm {
    pub name: String,
    pub role: String,
    pub error: String,
}

async fn show_org(
    State(state): State<AppState>,
    signed: Signed,
    Path(org): Path<String>,
    QueryForm(q): QueryForm,
) -> DashResult<Response> {
    let org = org_id(&org)?;
    let cursor = q.get("cursor").map(str::to_owned);
    org_page(&state, &signed, &org, cursor, KeyForm::default()).await
}

/// The organization's page; with a refused new-key form (`key_form.error`), a `422` that keeps
/// what was typed, marked, as the other forms do.
pub(super) async fn org_page(
    state: &AppState,
    signed: &Signed,
    org: &OrgId,
    cursor: Option<String>,
    key_form: KeyForm,
) -> DashResult<Response> {
    let org = orgs::get(state, &signed.scope, org).await?;
    let paged = cursor.as_deref().is_some_and(|c| !c.is_empty());
    let page = PageRequest::of_ids(Some(100), cursor, WebhookId::parse)
        .map_err(crate::service::ServiceError::from)?;
    let list = webhooks::list(state, &signed.scope, &org.id, page).await?;
    let keys = auth::list_api_keys(state, &signed.scope, &org.id).await?;
    let mut rows: Vec<WebhookRow> = list.data.iter().map(WebhookRow::from).collect();
    count_verified_channels(state, &signed.scope, &org.id, &list.data, &mut rows).await?;
    let status = if key_form.error.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let page = OrgPage {
        org: OrgRow::from(&org),
        webhooks: rows,
        next_cursor: list.next_cursor,
        paged,
        keys: keys.iter().map(|k| KeyRow::of(k, signed)).collect(),
        key_form,
    };
    let layout = Layout::new(state, signed, org.name.clone(), Some(&org)).await;
    Ok(templates::render(status, "org.html", &layout, page))
}

async fn bulk_delete(
    State(state): State<AppState>,
    Path(org): Path<String>,
    post: Post,
) -> DashResult<Response> {
    let org = org_id(&org)?;
    let Post { signed, form } = post;
    let ids: Vec<WebhookId> = form
        .all("ids")
        .iter()
        .filter_map(|raw| WebhookId::parse(raw).ok())
        .collect();
    let back = format!("/orgs/{org}");
    // Named, as the page before showed them (the id beside a name another may share); those
    // deleted meanwhile (a second click, another tab) are not asked about, and if none is
    // left the deletion says that nothing was deleted.
    let snapshot = crate::service::org_snapshot(&state, &signed.scope, &org).await?;
    let found: Vec<_> = ids.iter().filter_map(|id| snapshot.webhook(id)).collect();
    if !found.is_empty() && !confirm::confirmed(&form) {
        let their = if found.len() == 1 { "Its" } else { "Their" };
        let question = confirm::Question {
            title: "Delete the selected webhooks?",
            consequence: &format!(
                "{} selected: {}. {their} pending deliveries are cancelled, for good; {} \
                 history stays readable.",
                crate::counted(found.len() as u64, "webhook is", "webhooks are"),
                crate::service::name_webhooks(found.iter().map(|w| (w.as_ref(), None))),
                their.to_lowercase(),
            ),
            go: "Delete",
            back: &back,
        };
        let action = format!("{back}/webhooks/bulk-delete");
        return confirm::ask(&state, &signed, &org, &form, &action, question).await;
    }
    let flash = if ids.is_empty() {
        Flash::error("Select the webhooks to delete first.")
    } else {
        match webhooks::delete(&state, &signed.scope, &org, &ids, None).await {
            // Deleted meanwhile (another tab, a second click): nothing to report as done.
            Ok(deleted) if deleted.is_empty() => Flash::error(
                "Nothing deleted: the selected webhooks no longer exist (deleted meanwhile?).",
            ),
            Ok(deleted) if deleted.len() < ids.len() => Flash::ok(format!(
                "Deleted {}; their pending deliveries are cancelled. The other {} no longer existed.",
                crate::counted(deleted.len() as u64, "webhook", "webhooks"),
                ids.len() - deleted.len()
            )),
            Ok(deleted) => Flash::ok(format!(
                "Deleted {}; their pending deliveries are cancelled.",
                crate::counted(deleted.len() as u64, "webhook", "webhooks")
            )),
            Err(crate::service::ServiceError::NotFound(_)) => {
                return Err(super::error::DashError::not_found());
            }
            Err(e) => Flash::error(describe(e).1),
        }
    };
    Ok(signed.flash_then_go(&state, flash, &back).await)
}

/// The organization's catalogs, comma-separated, or "none" (it sends only its own types).
pub(super) fn catalogs_named(org: &herald_core::org::Organization) -> String {
    if org.catalogs.is_empty() {
        return "none".to_owned();
    }
    org.catalogs
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
