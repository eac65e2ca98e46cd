//! An organization's API keys, listed on its page: create one (the key is shown once, on the
//! page after creating it, like a webhook's secret) and revoke one. An organization key may
//! manage its own organization's keys, as in the API; revoking the key a person is signed in
//! with ends their session, and their next page is the sign-in page saying so.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::Response;
use axum::routing::post;
use serde::Serialize;

use herald_core::ApiKeyId;
use herald_core::org::{ApiKey, KeyRole};

use super::confirm;
use super::error::{DashError, DashResult, describe};
use super::forms::path_id;
use super::orgs::org_id;
use super::session::{Flash, Post, Signed};
use super::templates::when;
use crate::app::AppState;
use crate::service::{ServiceError, auth};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/api-keys", post(create_key))
        .route("/orgs/{org}/api-keys/{id}/revoke", post(revoke_key))
}

/// One line of the key table: never the key, only its first characters.
#[derive(Serialize)]
pub struct KeyRow {
    id: String,
    name: String,
    prefix: String,
    role: &'static str,
    created: String,
    /// The key the person is signed in with: revoking it signs them out.
    yours: bool,
}

impl KeyRow {
    pub fn of(k: &ApiKey, signed: &Signed) -> Self {
        Self {
            id: k.id.to_string(),
            name: k.name.clone(),
            prefix: k.prefix.clone(),
            role: k.role.as_str(),
            created: when(k.created_at),
            yours: is_yours(k, signed),
        }
    }
}

/// Whether `signed` is a session of the key `k`.
fn is_yours(k: &ApiKey, signed: &Signed) -> bool {
    signed.key_hash.as_deref() == Some(k.key_hash.as_str())
}

/// Where a key's creation lands: the top of the page, where the message shows the new key (or
/// why none was made); anchored at the keys, it sat above the view.
fn key_shown(org: &impl std::fmt::Display) -> String {
    format!("/orgs/{org}")
}

fn keys_section(org: &impl std::fmt::Display) -> String {
    format!("/orgs/{org}#api-keys")
}

async fn create_key(
    State(state): State<AppState>,
    Path(org): Path<String>,
    post: Post,
) -> DashResult<Response> {
    let org = org_id(&org)?;
    let Post { signed, form } = post;
    // Refused: the page again, with what was typed and why, at the form.
    let refused = |error: String| super::orgs::KeyForm {
        name: form.get("name").unwrap_or_default().to_owned(),
        role: form.text("role"),
        error: format!("No key created: {error}"),
    };
    // A form that names no role (an older page) gets what the API gives: a manager's.
    let role = match form.text("role").as_str() {
        "" => KeyRole::Manager,
        other => match KeyRole::parse(other) {
            Ok(role) => role,
            Err(invalid) => {
                let key_form = refused(describe(invalid.into()).1);
                return super::orgs::org_page(&state, &signed, &org, None, key_form).await;
            }
        },
    };
    let flash = match auth::create_api_key(&state, &signed.scope, &org, &form.text("name"), role)
        .await
    {
        Ok((record, key)) => Flash {
            kind: "secret".to_owned(),
            message: format!(
                "API key {} ({}) created. This is the key: copy it now, it will not be shown again.",
                record.name,
                record.role.as_str()
            ),
            secret: Some(key),
        },
        Err(ServiceError::NotFound(_)) => return Err(DashError::not_found()),
        Err(e) => {
            let key_form = refused(describe(e).1);
            return super::orgs::org_page(&state, &signed, &org, None, key_form).await;
        }
    };
    Ok(signed.flash_then_go(&state, flash, &key_shown(&org)).await)
}

async fn revoke_key(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    post: Post,
) -> DashResult<Response> {
    let org = org_id(&org)?;
    let id = path_id(&id, ApiKeyId::parse)?;
    let Post { signed, form } = post;
    if !confirm::confirmed(&form) {
        // Another organization's key is not found, asked about or not.
        let keys = auth::list_api_keys(&state, &signed.scope, &org).await?;
        let Some(key) = keys.iter().find(|k| k.id == id) else {
            return Err(DashError::not_found());
        };
        let back = keys_section(&org);
        let consequence = if is_yours(key, &signed) {
            "Programs and dashboard sessions using it stop working at once; this cannot be undone. \
             You are signed in with this key: revoking it signs you out."
        } else {
            "Programs and dashboard sessions using it stop working at once; this cannot be undone."
        };
        let question = confirm::Question {
            title: "Revoke this API key?",
            consequence,
            go: "Revoke",
            back: &back,
        };
        let action = format!("/orgs/{org}/api-keys/{id}/revoke");
        return confirm::ask(&state, &signed, &org, &form, &action, question).await;
    }
    auth::delete_api_key(&state, &signed.scope, &org, &id).await?;
    // If this was the key of this session, the next page (the organization's) finds it gone
    // and sends the person to sign in, saying why.
    let flash =
        Flash::ok("API key revoked: requests and sessions using it are refused from now on.");
    Ok(signed
        .flash_then_go(&state, flash, &keys_section(&org))
        .await)
}
