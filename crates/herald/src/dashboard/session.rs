//! Dashboard sessions: an in-memory map from a random 256-bit session id (the `herald_session`
//! cookie, HttpOnly and SameSite=Strict) to what the person signed in with, a CSRF token and
//! one-time messages. The map keeps only a digest of the token, never the token, and resolves
//! it again on every request, so deleting an organization key ends its sessions at once.
//!
//! Sessions live in this node's memory: they end when it restarts, and behind a load balancer
//! a person stays on one node only if the balancer keeps them there (sign in again otherwise).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use herald_core::org::KeyRole;
use rand::RngCore;
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::error::DashError;
use super::forms::Form;
use crate::app::AppState;
use crate::service::Scope;
use crate::service::auth::TokenDigest;

pub const COOKIE: &str = "herald_session";
/// How long a session lasts after signing in.
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; past that the ones closest to expiry go first. Only people holding
/// a valid token can create sessions, so this only bounds memory against a runaway script.
const MAX_SESSIONS: usize = 10_000;
/// Sessions of one organization (whichever of its keys signed in) or of the admin token kept at
/// most; past that its own oldest goes. A script signing in with an organization's keys in a
/// loop, creating and deleting keys as it goes (a deleted key's sessions end, but stay in the
/// map until they expire), thus holds at most this many and never reaches [`MAX_SESSIONS`] to
/// sign anyone else out, while a team sharing the admin token still has room for everyone's
/// browsers.
const MAX_SESSIONS_PER_OWNER: usize = 64;

/// A message shown once on the next page: the outcome of an action, or a new secret.
#[derive(Debug, Clone, Serialize)]
pub struct Flash {
    /// `ok` or `error`.
    pub kind: &'static str,
    pub message: String,
    /// A secret shown this once (after creation or rotation).
    pub secret: Option<String>,
}

impl Flash {
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            kind: "ok",
            message: message.into(),
            secret: None,
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            kind: "error",
            message: message.into(),
            secret: None,
        }
    }
}

struct Session {
    digest: TokenDigest,
    /// Who signed in: the admin, or an organization (by any of its keys).
    owner: Scope,
    csrf: String,
    expires: Instant,
    /// Messages waiting for the page they are about, by its path: a second tab's page shows
    /// none of another's (a new secret least of all).
    flashes: Vec<(String, Flash)>,
}

/// The most messages a session keeps waiting; past it the oldest go.
const MAX_FLASHES: usize = 16;

/// The path of a link (`/orgs/x#api-keys` → `/orgs/x`), as the page it leads to sees its own.
fn page_path(link: &str) -> &str {
    link.split(['#', '?']).next().unwrap_or(link)
}

/// Every session of this node.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a session for the token with `digest`, which resolved to `owner`; answers its id
    /// (for the cookie).
    pub fn create(&self, digest: TokenDigest, owner: Scope) -> String {
        let id = random_hex();
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        let own: Vec<(&String, Instant)> = map
            .iter()
            .filter(|(_, s)| s.owner == owner)
            .map(|(k, s)| (k, s.expires))
            .collect();
        if own.len() >= MAX_SESSIONS_PER_OWNER
            && let Some(oldest) = own.iter().min_by_key(|(_, expires)| *expires)
        {
            let oldest = oldest.0.clone();
            map.remove(&oldest);
        }
        while map.len() >= MAX_SESSIONS {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(
            id.clone(),
            Session {
                digest,
                owner,
                csrf: random_hex(),
                expires: now + LIFETIME,
                flashes: Vec::new(),
            },
        );
        id
    }

    /// The session's token digest and CSRF token, if it exists and has not expired.
    fn get(&self, id: &str) -> Option<(TokenDigest, String)> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(s) if s.expires > Instant::now() => Some((s.digest.clone(), s.csrf.clone())),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Keeps `flash` for the next time the session shows the page at `link`.
    pub fn flash(&self, id: &str, link: &str, flash: Flash) {
        if let Some(s) = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(id)
        {
            if s.flashes.len() >= MAX_FLASHES {
                s.flashes.remove(0);
            }
            s.flashes.push((page_path(link).to_owned(), flash));
        }
    }

    /// The messages waiting for the page at `path`, which are then gone.
    pub fn take_flashes(&self, id: &str, path: &str) -> Vec<Flash> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = map.get_mut(id) else {
            return Vec::new();
        };
        let (here, elsewhere) = std::mem::take(&mut s.flashes)
            .into_iter()
            .partition(|(page, _)| page == path);
        s.flashes = elsewhere;
        here.into_iter().map(|(_, flash)| flash).collect()
    }
}

/// The session id from the request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
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
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that ends one.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// A signed-in person: their scope, session and CSRF token. Pages that take it send everyone
/// else to the sign-in page.
pub struct Signed {
    pub scope: Scope,
    pub session: String,
    pub csrf: String,
    /// The path of the page asked for: its messages are the ones shown.
    pub path: String,
}

impl Signed {
    /// Goes to `link`, where `flash` is shown.
    pub fn flash_then_go(&self, state: &AppState, flash: Flash, link: &str) -> Response {
        state.sessions.flash(&self.session, link, flash);
        Redirect::to(link).into_response()
    }
}

/// Where to go to sign in, coming back to the page asked for afterwards. A form posted without
/// a session (it ended when Herald restarted, or expired) was not saved, and the sign-in page
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
/// with the dead cookie cleared.
fn ended(parts: &Parts) -> Response {
    (
        [(header::SET_COOKIE, clear_cookie())],
        Redirect::to(&format!("/login?ended=revoked&{}", next_query(parts))),
    )
        .into_response()
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Some(session) = session_cookie(&parts.headers) else {
            return Err(to_sign_in(parts));
        };
        let Some((digest, csrf)) = state.sessions.get(&session) else {
            return Err(to_sign_in(parts));
        };
        match state.auth.resolve_digest(&digest).await {
            Ok(Some((scope, KeyRole::Manager))) => Ok(Signed {
                scope,
                session,
                csrf,
                path: parts.uri.path().to_owned(),
            }),
            Ok(None | Some((_, KeyRole::Producer))) => {
                // The key was revoked (or its organization deleted) since: the session ends
                // with it. (A producer's key never signs in.)
                state.sessions.remove(&session);
                Err(ended(parts))
            }
            Err(e) => Err(DashError::from(e).into_response()),
        }
    }
}

/// Reads a posted form within the time an API body of its size has, as a page's answer when it
/// cannot: too large, cut off, or too slow.
pub async fn read_form(req: Request, state: &AppState) -> Result<Bytes, Box<Response>> {
    match crate::api::extract::read_within_deadline(req, state).await {
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
    use herald_core::OrgId;

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
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let id = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("theme=dark; {COOKIE}={id}; x=y").parse().unwrap(),
        );
        assert_eq!(session_cookie(&headers), Some(id));
        headers.insert(header::COOKIE, format!("{COOKIE}=short").parse().unwrap());
        assert_eq!(session_cookie(&headers), None);
    }

    #[test]
    fn a_session_keeps_its_flashes_until_they_are_shown() {
        let sessions = Sessions::new();
        let id = sessions.create(TokenDigest::of("t"), Scope::Admin);
        sessions.flash(&id, "/orgs/a#api-keys", Flash::ok("saved"));
        sessions.flash(&id, "/orgs/b", Flash::ok("another tab's"));
        assert_eq!(sessions.take_flashes(&id, "/orgs/a").len(), 1);
        assert!(sessions.take_flashes(&id, "/orgs/a").is_empty());
        assert_eq!(sessions.take_flashes(&id, "/orgs/b").len(), 1);
        sessions.remove(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn signing_in_again_and_again_ends_only_the_same_organizations_sessions() {
        let sessions = Sessions::new();
        let acme = || Scope::Org(OrgId::from_trusted("org_acme".into()));
        let admin = sessions.create(TokenDigest::of("admin"), Scope::Admin);
        let other = sessions.create(
            TokenDigest::of("hk_other"),
            Scope::Org(OrgId::from_trusted("org_other".into())),
        );
        let first = sessions.create(TokenDigest::of("hk_first"), acme());
        let mut latest = first.clone();
        // A new key for every sign-in (as a script creating and deleting keys would).
        for i in 0..MAX_SESSIONS_PER_OWNER {
            latest = sessions.create(TokenDigest::of(&format!("hk_{i}")), acme());
        }
        assert!(sessions.get(&first).is_none(), "its own oldest went");
        assert!(sessions.get(&latest).is_some());
        assert!(sessions.get(&admin).is_some(), "the admin's stays");
        assert!(
            sessions.get(&other).is_some(),
            "another organization's stays"
        );
        let map = sessions.map.lock().unwrap();
        assert_eq!(map.len(), MAX_SESSIONS_PER_OWNER + 2);
    }
}
