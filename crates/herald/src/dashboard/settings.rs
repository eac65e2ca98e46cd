//! An organization's settings page: change its name, handle and catalogs (whoever may see the
//! organization, as in the API), and delete it (the admin only, after typing its handle). A
//! refused form is shown again with what was typed and the reason beside it.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use serde::Serialize;

use herald_core::org::Organization;

use super::error::{DashError, DashResult, describe};
use super::orgs::{CatalogChoice, catalog_choices, org_id};
use super::session::{Flash, Post, Signed};
use super::templates::{self, Layout};
use crate::app::AppState;
use crate::service::orgs::OrgInput;
use crate::service::{Scope, ServiceError, orgs};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/orgs/{org}/settings",
            get(show_settings).post(save_settings),
        )
        .route("/orgs/{org}/delete", post(delete_org))
}

/// The edit form as typed (or as stored, at first).
#[derive(Serialize)]
struct SettingsForm {
    name: String,
    handle: String,
    catalogs: Vec<String>,
}

impl SettingsForm {
    fn of(org: &Organization) -> Self {
        Self {
            name: org.name.clone(),
            handle: org.handle.as_str().to_owned(),
            catalogs: org.catalogs.iter().map(|c| c.as_str().to_owned()).collect(),
        }
    }
}

#[derive(Serialize)]
struct SettingsPage {
    org_id: String,
    /// The stored handle, which the delete form asks to type.
    handle: String,
    form: SettingsForm,
    catalogs: Vec<CatalogChoice>,
    error: Option<String>,
    /// The field the error is about (`name`, `handle`, `catalogs`).
    error_field: Option<String>,
    can_delete: bool,
    /// Whether the handle can be changed here: with the admin token only (handles name
    /// organizations across the server).
    can_change_handle: bool,
    delete_error: Option<String>,
    /// What was typed in the delete form, when it was refused.
    confirm: String,
}

struct Refusal {
    status: StatusCode,
    error: Option<(String, Option<String>)>,
    delete_error: Option<(String, String)>,
}

async fn settings_page(
    state: &AppState,
    signed: &Signed,
    org: &Organization,
    form: SettingsForm,
    refusal: Option<Refusal>,
) -> Response {
    let (status, error, delete_error) = match refusal {
        Some(r) => (r.status, r.error, r.delete_error),
        None => (StatusCode::OK, None, None),
    };
    let page = SettingsPage {
        org_id: org.id.to_string(),
        handle: org.handle.as_str().to_owned(),
        catalogs: catalog_choices(&form.catalogs),
        form,
        error_field: error.as_ref().and_then(|(_, f)| f.clone()),
        error: error.map(|(m, _)| m),
        can_delete: signed.scope == Scope::Admin,
        can_change_handle: signed.scope == Scope::Admin,
        confirm: delete_error
            .as_ref()
            .map(|(_, typed)| typed.clone())
            .unwrap_or_default(),
        delete_error: delete_error.map(|(m, _)| m),
    };
    let layout = Layout::new(state, signed, format!("{} · settings", org.name), Some(org)).await;
    templates::render(status, "settings.html", &layout, page)
}

async fn show_settings(
    State(state): State<AppState>,
    signed: Signed,
    Path(org): Path<String>,
) -> DashResult<Response> {
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let form = SettingsForm::of(&org);
    Ok(settings_page(&state, &signed, &org, form, None).await)
}

async fn save_settings(
    State(state): State<AppState>,
    Path(org): Path<String>,
    post: Post,
) -> DashResult<Response> {
    let Post { signed, form } = post;
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let typed = SettingsForm {
        name: form.text("name"),
        handle: form.text("handle"),
        catalogs: form.all("catalogs"),
    };
    let input = OrgInput {
        name: Some(typed.name.clone()),
        handle: Some(typed.handle.clone()),
        catalogs: Some(typed.catalogs.clone()),
    };
    match orgs::update(&state, &signed.scope, &org.id, input).await {
        Ok(updated) => {
            let flash = Flash::ok("Organization settings saved.");
            Ok(signed
                .flash_then_go(&state, flash, &format!("/orgs/{}", updated.id))
                .await)
        }
        Err(ServiceError::NotFound(_)) => Err(DashError::not_found()),
        Err(e) => {
            let field = super::orgs::refused_field(&e);
            let (status, message) = describe(e);
            let refusal = Refusal {
                status,
                error: Some((message, field)),
                delete_error: None,
            };
            Ok(settings_page(&state, &signed, &org, typed, Some(refusal)).await)
        }
    }
}

async fn delete_org(
    State(state): State<AppState>,
    Path(org): Path<String>,
    post: Post,
) -> DashResult<Response> {
    let Post { signed, form } = post;
    // Only the admin deletes an organization: an organization key is told so, whatever it typed.
    signed.scope.require_admin()?;
    let org = orgs::get(&state, &signed.scope, &org_id(&org)?).await?;
    let typed = form.text("confirm");
    if typed != org.handle.as_str() {
        let refusal = Refusal {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error: None,
            delete_error: Some((
                format!(
                    "Not deleted: type the organization's handle, {}, exactly to confirm.",
                    org.handle.as_str()
                ),
                typed,
            )),
        };
        let form = SettingsForm::of(&org);
        return Ok(settings_page(&state, &signed, &org, form, Some(refusal)).await);
    }
    orgs::delete(&state, &signed.scope, &org.id).await?;
    let flash = Flash::ok(format!(
        "Organization {} deleted, with its webhooks, deliveries, event types and API keys.",
        org.name
    ));
    Ok(signed.flash_then_go(&state, flash, "/orgs").await)
}
