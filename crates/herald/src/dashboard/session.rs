//! Dashboard sessions, kept in the store so that they outlive a restart and every node of a
//! cluster knows them. The `herald_session` cookie (HttpOnly, SameSite=Lax: a link followed from
//! another site, a chat or an e-mail opens its page signed in, and a browser still sends no
//! session with a form another site posts; every form also carries a CSRF token) holds a random
//! 256-bit id; the store keeps only its SHA-256, with what the person signed in with (in a form
//! checked again on every request, so deleting an organization key ends its sessions at once)
//! and one-time messages sealed with a key derived from the cookie. The CSRF token is derived
//! from the cookie too, so the store holds nothing that acts for a session.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use herald_core::Clock;
use herald_core::org::KeyRole;
use herald_core::store::{DashboardSession, SessionLimits, Store, StoreResult};
use herald_core::time::SystemClock;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::DashError;
use super::forms::Form;
use crate::app::AppState;
use crate::service::auth::{Authenticator, TokenDigest};
use crate::service::{Scope, ServiceError};

pub const COOKIE: &str = "herald_session";
/// How long a session lasts after signing in.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (past that the ones closest to expiry go first), and of one
/// organization (whichever of its keys signed in) or of the admin token (past that its own
/// oldest goes). Only people holding a valid token can create sessions, so these only bound
/// the table against a runaway script: one signing in with an organization's keys in a loop,
/// creating and deleting keys as it goes, holds at most `per_owner` and never signs anyone else
/// out, while a team sharing the admin token still has room for everyone's browsers.
const LIMITS: SessionLimits = SessionLimits {
    per_owner: 64,
    total: 10_000,
};

/// A message shown once on the next page: the outcome of an action, or a new secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Flash {
    /// `ok`, `error` or `secret`.
    pub kind: String,
    pub message: String,
    /// A secret shown this once (after creation or rotation).
    pub secret: Option<String>,
}

impl Flash {
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            kind: "ok".to_owned(),
            message: message.into(),
            secret: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            kind: "error".to_owned(),
            message: message.into(),
            secret: None,
        }
    }
}

/// The most messages a session keeps waiting; past it the oldest go.
const MAX_FLASHES: usize = 16;

/// The path of a link (`/orgs/x#api-keys` → `/orgs/x`), as the page it leads to sees its own.
fn page_path(link: &str) -> &str {
    link.split(['#', '?']).next().unwrap_or(link)
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// How the store finds a session: the SHA-256 of its id, so that a copy of the database signs
/// no one in.
fn id_hash(id: &str) -> String {
    hex::encode(Sha256::digest(id.as_bytes()))
}

/// The session's CSRF token: derived from its id, which only the browser holds.
fn csrf_of(id: &str) -> String {
    hex::encode(
        Sha256::new()
            .chain_update(b"herald dashboard csrf\0")
            .chain_update(id.as_bytes())
            .finalize(),
    )
}

/// The key a session's messages are sealed with: derived from its id, which the store does not
/// keep, so a new API key waiting there to be shown cannot be read from the database.
fn flash_cipher(id: &str) -> XChaCha20Poly1305 {
    let key = Sha256::new()
        .chain_update(b"herald dashboard flash\0")
        .chain_update(id.as_bytes())
        .finalize();
    XChaCha20Poly1305::new(&key)
}

fn seal(id: &str, page: &str, flash: &Flash) -> String {
    let mut nonce = [0u8; 24];
    rand::rng().fill_bytes(&mut nonce);
    let plain = serde_json::to_vec(flash).expect("a flash serialises");
    let sealed = flash_cipher(id)
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: page.as_bytes(),
            },
        )
        .expect("sealing cannot fail for a message this size");
    hex::encode([nonce.as_slice(), &sealed].concat())
}

fn open(id: &str, page: &str, sealed: &str) -> Option<Flash> {
    let raw = hex::decode(sealed).ok()?;
    if raw.len() < 24 {
        return None;
    }
    let (nonce, sealed) = raw.split_at(24);
    let plain = flash_cipher(id)
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: sealed,
                aad: page.as_bytes(),
            },
        )
        .ok()?;
    serde_json::from_slice(&plain).ok()
}

/// Every session, as the store keeps them; times are the system's (a session's 12 hours are
/// real ones, whatever a test does to Herald's clock).
pub struct Sessions {
    store: Arc<dyn Store>,
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Starts a session for the token with `digest`, which resolved to `owner`; answers its id
    /// (for the cookie).
    pub async fn create(
        &self,
        auth: &Authenticator,
        digest: &TokenDigest,
        owner: &Scope,
    ) -> StoreResult<String> {
        let id = random_hex();
        let now = SystemClock.now();
        let session = DashboardSession {
            id_hash: id_hash(&id),
            owner: match owner {
                Scope::Admin => "admin".to_owned(),
                Scope::Org(org) => org.to_string(),
            },
            credential: auth.session_credential(&id, digest, owner),
            expires_at: now.plus_millis(LIFETIME.as_millis() as i64),
        };
        self.store.create_session(&session, now, LIMITS).await?;
        Ok(id)
    }

    /// What signed the session in (to check again), if it exists and has not expired.
    async fn credential(&self, id: &str) -> StoreResult<Option<String>> {
        Ok(self
            .store
            .get_session(&id_hash(id), SystemClock.now())
            .await?
            .map(|s| s.credential))
    }

    /// Deletes the sessions that have expired (the retention run's): refused already, but
    /// each keeps what identifies the token that signed it in. Answers how many.
    pub async fn delete_expired(&self) -> StoreResult<u64> {
        self.store.delete_expired_sessions(SystemClock.now()).await
    }

    pub async fn remove(&self, id: &str) -> StoreResult<()> {
        self.store.delete_session(&id_hash(id)).await
    }

    /// Keeps `flash` for the next time the session shows the page at `link`.
    pub async fn flash(&self, id: &str, link: &str, flash: &Flash) -> StoreResult<()> {
        let page = page_path(link);
        self.store
            .add_flash(&id_hash(id), page, &seal(id, page, flash), MAX_FLASHES)
            .await
    }

    /// The messages waiting for the page at `path`, which are then gone.
    pub async fn take_flashes(&self, id: &str, path: &str) -> StoreResult<Vec<Flash>> {
        let sealed = self.store.take_flashes(&id_hash(id), path).await?;
        Ok(sealed.iter().filter_map(|s| open(id, path, s)).collect())
    }
}

/// The most session cookies one request has looked up: a browser sends more than one when
/// cookies of that name were set for several paths or domains (another Herald on a parent
/// domain, say), and the live one need not come first.
const MOST_SESSION_COOKIES: usize = 4;

/// The well-formed session ids among the request's cookies, in the order sent.
fn session_cookies(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, value)| {
            *name == COOKIE && value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|(_, value)| value.to_owned())
        .take(MOST_SESSION_COOKIES)
        .collect()
}

/// Whether the person reached us over https (directly or through a proxy that says so), so
/// that the cookie is marked `Secure`.
fn over_https(state: &AppState, headers: &HeaderMap) -> bool {
    state.settings.public_url().starts_with("https://")
        || headers
            .get("x-forwarded-proto")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(state: &AppState, headers: &HeaderMap, id: &str) -> String {
    let secure = if over_https(state, headers) {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that ends one.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// A signed-in person: their scope, session and CSRF token. Pages that take it send everyone
/// else to the sign-in page.
pub struct Signed {
    pub scope: Scope,
    pub session: String,
    pub csrf: String,
    /// The hash of the API key the person signed in with (`None` for the admin token), so
    /// that pages can say which key is theirs.
    pub key_hash: Option<String>,
    /// The path of the page asked for by a GET, whose messages the page shows (a form's
    /// answer goes on to a page, which shows them).
    pub page: Option<String>,
}

/// The error page for a store that failed under a session's step.
pub(super) fn store_failed(e: herald_core::store::StoreError) -> Response {
    DashError::from(ServiceError::from_store("session")(e)).into_response()
}

impl Signed {
    /// Goes to `link`, where `flash` is shown.
    pub async fn flash_then_go(&self, state: &AppState, flash: Flash, link: &str) -> Response {
        match state.sessions.flash(&self.session, link, &flash).await {
            Ok(()) => Redirect::to(link).into_response(),
            Err(e) => store_failed(e),
        }
    }
}

/// Where to go to sign in, coming back to the page asked for afterwards. A form posted without
/// a session (it expired, or was signed out elsewhere) was not saved, and the sign-in page
/// must say so, then lead back to the form's page: the browser's `Referer` (sent within this
/// site, whose pages say `Referrer-Policy: same-origin`).
fn to_sign_in(parts: &Parts) -> Response {
    if parts.method.is_safe() {
        return Redirect::to(&format!("/login?{}", next_query(parts))).into_response();
    }
    if parts.uri.path() == "/logout" {
        // Signing out of a session that already ended: done, nothing was lost.
        return Redirect::to("/login").into_response();
    }
    // A browser sends no session with a form another site posts here (SameSite): that form
    // is refused as what it is, not as one sent after the session ended.
    let sent_from = parts.headers.get("sec-fetch-site");
    if sent_from.is_some_and(|site| site == "cross-site") {
        return DashError::Status(
            StatusCode::FORBIDDEN,
            "This form was sent from another site, so it was not accepted and nothing was changed. To make this change, use the dashboard itself.",
        )
        .into_response();
    }
    let back = parts
        .headers
        .get(header::REFERER)
        .and_then(|r| url::Url::parse(r.to_str().ok()?).ok())
        .map(|r| match (form_page(r.path()), r.query()) {
            (Some(page), _) => page,
            (None, Some(query)) => format!("{}?{query}", r.path()),
            (None, None) => r.path().to_owned(),
        })
        .unwrap_or_else(|| "/".to_owned());
    let query = serde_urlencoded::to_string([("ended", "unsaved"), ("next", &back)]);
    Redirect::to(&format!("/login?{}", query.unwrap_or_default())).into_response()
}

/// The page of a form whose refusal was shown at the address it posts to, which has no page of
/// its own: coming back there after signing in would find nothing.
fn form_page(path: &str) -> Option<String> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["orgs", org, posted] = segments.as_slice() else {
        return None;
    };
    let page = match *posted {
        "webhooks" => "/webhooks/new",
        "event-types" => "/catalog",
        "delete" => "/settings",
        "api-keys" => "",
        _ => return None,
    };
    Some(format!("/orgs/{org}{page}"))
}

/// The page a browser opening the address of a form goes to (it takes only the form's post:
/// the address bar after a refusal shows it, and Enter there asks for it): the page the form
/// is on. Only for an address that takes no GET, which is why an action's last segment can be
/// dropped here though `/edit` and `/deliveries` have pages of their own.
pub(crate) fn page_of_form_address(path: &str) -> Option<String> {
    if let Some(page) = form_page(path) {
        return Some(page);
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    Some(match segments.as_slice() {
        ["logout"] => "/".to_owned(),
        ["orgs", org, "event-types", "delete"] => format!("/orgs/{org}/catalog"),
        ["orgs", org, "api-keys", _, "revoke"] | ["orgs", org, "webhooks", "bulk-delete"] => {
            format!("/orgs/{org}")
        }
        ["orgs", org, kind @ ("webhooks" | "deliveries"), id, _action] => {
            format!("/orgs/{org}/{kind}/{id}")
        }
        _ => return None,
    })
}

fn next_query(parts: &Parts) -> String {
    let back = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|_| parts.method == axum::http::Method::GET)
        .unwrap_or("/");
    serde_urlencoded::to_string([("next", back)]).unwrap_or_default()
}

/// Where a session whose token no longer resolves goes: the sign-in page, which says why,
/// with the dead cookie cleared if it is dead everywhere.
fn ended(parts: &Parts, clear: bool) -> Response {
    let to = Redirect::to(&format!("/login?ended=revoked&{}", next_query(parts)));
    if clear {
        ([(header::SET_COOKIE, clear_cookie())], to).into_response()
    } else {
        to.into_response()
    }
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // The first of the request's session cookies that names a live session.
        let mut live = None;
        for id in session_cookies(&parts.headers) {
            if let Some(credential) = state.sessions.credential(&id).await.map_err(store_failed)? {
                live = Some((id, credential));
                break;
            }
        }
        let Some((session, credential)) = live else {
            return Err(to_sign_in(parts));
        };
        match state.auth.resolve_session(&session, &credential).await {
            Ok(Some((scope, KeyRole::Manager))) => Ok(Signed {
                scope,
                csrf: csrf_of(&session),
                key_hash: crate::service::auth::session_key_hash(&credential).map(str::to_owned),
                session,
                page: (parts.method == Method::GET).then(|| parts.uri.path().to_owned()),
            }),
            Ok(None | Some((_, KeyRole::Producer))) => {
                // The key was revoked (or its organization deleted) since: the session ends
                // with it, on every node. (A producer's key never signs in.) One of an admin
                // token this node does not have is only refused here, its row and the cookie
                // kept: during a rolling change of the token, nodes still on the old one take it.
                let dead_everywhere = !crate::service::auth::is_admin_credential(&credential);
                if dead_everywhere {
                    state
                        .sessions
                        .remove(&session)
                        .await
                        .map_err(store_failed)?;
                }
                Err(ended(parts, dead_everywhere))
            }
            Err(e) => Err(DashError::from(e).into_response()),
        }
    }
}

/// Reads a posted form within the time an API body of its size has, as a page's answer when it
/// cannot: too large, cut off, or too slow.
pub async fn read_form(req: Request, state: &AppState) -> Result<Bytes, Box<Response>> {
    match crate::api::body::read_within_deadline(req, state).await {
        // Browsers send a UTF-8 page's forms as UTF-8; anything else would be stored with its
        // bytes replaced (the API refuses it too).
        Ok(Ok(bytes)) if !super::forms::is_utf8(&bytes) => Err(Box::new(
            DashError::Status(
                StatusCode::BAD_REQUEST,
                "The form was not sent as UTF-8 text, so nothing of it was saved. Send it again from the dashboard's own page.",
            )
            .into_response(),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(Box::new(
            DashError::Status(
                e.status(),
                "The form could not be read; it may be too large.",
            )
            .into_response(),
        )),
        Err(_) => {
            let mut page = DashError::Status(
                StatusCode::REQUEST_TIMEOUT,
                "The form took too long to arrive. Go back and send it again.",
            )
            .into_response();
            page.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Err(Box::new(page))
        }
    }
}

/// A form posted by a signed-in person, with its CSRF token checked (in constant time).
pub struct Post {
    pub signed: Signed,
    pub form: Form,
}

impl FromRequest<AppState> for Post {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let signed = Signed::from_request_parts(&mut parts, state).await?;
        let bytes = read_form(Request::from_parts(parts, body), state)
            .await
            .map_err(|page| *page)?;
        let form = Form::parse(&bytes);
        let sent = form.get("csrf").unwrap_or_default();
        if !bool::from(sent.as_bytes().ct_eq(signed.csrf.as_bytes())) {
            return Err(DashError::Status(
                StatusCode::FORBIDDEN,
                "This form did not come from your current dashboard session (its security token is missing or out of date). Go back, reload the page and try again.",
            )
            .into_response());
        }
        Ok(Post { signed, form })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_refused_at_its_posting_address_is_found_on_its_page() {
        for (posted, page) in [
            ("/orgs/org_1/webhooks", "/orgs/org_1/webhooks/new"),
            ("/orgs/org_1/event-types", "/orgs/org_1/catalog"),
            ("/orgs/org_1/delete", "/orgs/org_1/settings"),
            ("/orgs/org_1/api-keys", "/orgs/org_1"),
        ] {
            assert_eq!(form_page(posted).as_deref(), Some(page), "{posted}");
        }
        // Pages of their own stay as they are.
        assert_eq!(form_page("/orgs/org_1/webhooks/new"), None);
        assert_eq!(form_page("/orgs/org_1/settings"), None);
        assert_eq!(form_page("/orgs/org_1/webhooks/wh_1/edit"), None);
    }

    #[test]
    fn a_form_address_opened_in_the_browser_leads_to_the_form_s_page() {
        for (posted, page) in [
            ("/logout", "/"),
            ("/orgs/org_1/webhooks", "/orgs/org_1/webhooks/new"),
            ("/orgs/org_1/event-types/delete", "/orgs/org_1/catalog"),
            ("/orgs/org_1/api-keys/key_1/revoke", "/orgs/org_1"),
            ("/orgs/org_1/webhooks/bulk-delete", "/orgs/org_1"),
            (
                "/orgs/org_1/webhooks/wh_1/test",
                "/orgs/org_1/webhooks/wh_1",
            ),
            (
                "/orgs/org_1/webhooks/wh_1/recover",
                "/orgs/org_1/webhooks/wh_1",
            ),
            (
                "/orgs/org_1/deliveries/dlv_1/resend",
                "/orgs/org_1/deliveries/dlv_1",
            ),
        ] {
            assert_eq!(
                page_of_form_address(posted).as_deref(),
                Some(page),
                "{posted}"
            );
        }
        assert_eq!(page_of_form_address("/v1/orgs"), None);
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let id = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("theme=dark; {COOKIE}={id}; x=y").parse().unwrap(),
        );
        assert_eq!(
            session_cookies(&headers).as_slice(),
            std::slice::from_ref(&id)
        );
        headers.insert(header::COOKIE, format!("{COOKIE}=short").parse().unwrap());
        assert!(session_cookies(&headers).is_empty());
        // Several, as a browser sends cookies of one name set for several paths or domains:
        // each well-formed one, in order, up to a bound.
        let other = "cd".repeat(32);
        let many = format!("{COOKIE}={other}; {COOKIE}=short; {COOKIE}={id}")
            + &format!("; {COOKIE}={other}").repeat(5);
        headers.insert(header::COOKIE, many.parse().unwrap());
        let found = session_cookies(&headers);
        assert_eq!(found[..2], [other.clone(), id.clone()]);
        assert_eq!(found.len(), MOST_SESSION_COOKIES);
    }

    #[test]
    fn a_message_opens_with_its_sessions_id_for_its_page_only() {
        let (id, other) = (random_hex(), random_hex());
        let mut flash = Flash::ok("API key created");
        flash.secret = Some("hk_secret".to_owned());
        let sealed = seal(&id, "/orgs/a", &flash);
        assert!(!sealed.contains("hk_secret") && !sealed.contains(&hex::encode("hk_secret")));
        assert_eq!(open(&id, "/orgs/a", &sealed), Some(flash));
        assert_eq!(open(&other, "/orgs/a", &sealed), None, "another session");
        assert_eq!(open(&id, "/orgs/b", &sealed), None, "another page");
        assert_eq!(open(&id, "/orgs/a", "00ff"), None, "cut short");
        assert_eq!(open(&id, "/orgs/a", "not hex"), None);
    }
}
