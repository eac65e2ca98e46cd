//! Signing in and out, and the home page that sends each person where they belong: the admin
//! to the organizations, an organization key to its organization.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::forms::Form;
use super::session::{self, Post, Signed};
use super::templates::{self, Layout};
use crate::app::AppState;
use crate::service::Scope;
use herald_core::org::KeyRole;
use herald_core::throttle::Throttle;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route(
            "/login",
            get(show_login)
                .post(sign_in)
                .layer(DefaultBodyLimit::max(SIGN_IN_MAX_BODY)),
        )
        .route("/logout", post(sign_out))
}

/// The sign-in form is a token and a path. It is read before anything is known of who sends
/// it, so it is kept small: strangers must not hold much memory each.
const SIGN_IN_MAX_BODY: usize = 16 * 1024;

/// Where a scope starts.
pub fn home_of(scope: &Scope) -> String {
    match scope {
        Scope::Admin => "/orgs".into(),
        Scope::Org(org) => format!("/orgs/{org}"),
    }
}

async fn home(signed: Signed) -> Redirect {
    Redirect::to(&home_of(&signed.scope))
}

#[derive(Debug, Default, Deserialize)]
struct NextQuery {
    next: Option<String>,
    /// Why the person is asked to sign in again: `revoked` when the session's token stopped
    /// being valid, `unsaved` when a form came after the session had ended.
    ended: Option<String>,
}

/// Only paths of this site, so that the sign-in page cannot send anyone elsewhere. Browsers drop
/// tabs and line breaks from URLs, so `/\t/evil.example` would become `//evil.example`: no
/// whitespace or control character is let through. Other characters past ASCII are
/// percent-encoded: a `Location` header carries bytes that browsers read as Latin-1.
fn safe_next(next: Option<&str>) -> Option<String> {
    next.filter(|n| {
        n.starts_with('/')
            && !n.starts_with("//")
            && !n.contains('\\')
            && !n.chars().any(|c| c.is_control() || c.is_whitespace())
    })
    .map(|n| percent_encoding::utf8_percent_encode(n, percent_encoding::CONTROLS).to_string())
}

/// Whether a sign-in form was posted from this site. Without a session there is no CSRF token
/// to check, and another site could sign a visitor in to the attacker's organization (whose
/// webhooks the visitor would then set up). Browsers say where a request comes from in
/// `Sec-Fetch-Site`, which proxies leave alone: anything but `same-origin` or `none` (typed or
/// bookmarked) is refused. Browsers send it only to secure origins (https, localhost), so a
/// dashboard served over plain http on another name gets `Origin` alone: it must then be this
/// site as the request names it (`Host`, or `X-Forwarded-Host` from a proxy) or as
/// `public_url` does. A client that sends neither header (not a browser) is let through.
fn posted_from_here(headers: &HeaderMap, public_url: &str) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    // `null`: a sandboxed frame, a `data:` page, a redirect from elsewhere.
    let Some(origin) = origin
        .to_str()
        .ok()
        .and_then(|o| url::Url::parse(o).ok())
        .filter(|o| matches!(o.scheme(), "http" | "https"))
    else {
        return false;
    };
    let is_origin = |site: url::Url| {
        site.host() == origin.host()
            && site.port_or_known_default() == origin.port_or_known_default()
    };
    let header_names_it = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|authority| {
                url::Url::parse(&format!("{}://{}", origin.scheme(), authority.trim())).ok()
            })
            .is_some_and(is_origin)
    };
    header_names_it("host")
        || header_names_it("x-forwarded-host")
        || url::Url::parse(public_url).is_ok_and(is_origin)
}

/// Says why a sign-in was refused as posted from another site, at most once per 10 s: behind a
/// proxy that rewrites `Host` every sign-in over plain http would be refused, and the operator
/// must be able to tell why.
fn log_refused_origin(headers: &HeaderMap, client: &str) {
    static REFUSED: Throttle = Throttle::new(std::time::Duration::from_secs(10));
    let Some(held_back) = REFUSED.admit() else {
        return;
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.get(..200).unwrap_or(v))
            .unwrap_or_default()
    };
    tracing::warn!(
        client,
        origin = %header("origin"),
        host = %header("host"),
        forwarded_host = %header("x-forwarded-host"),
        sec_fetch_site = %header("sec-fetch-site"),
        refused_since_last_line = held_back,
        "dashboard sign-in refused: posted from another site (behind a proxy that rewrites Host, forward X-Forwarded-Host or set HERALD_PUBLIC_URL)"
    );
}

#[derive(Serialize)]
struct LoginPage {
    next: Option<String>,
    error: Option<String>,
    notice: Option<&'static str>,
}

/// The sign-in page again, saying why the token was not taken.
fn refused(status: StatusCode, next: Option<String>, why: impl Into<String>) -> Response {
    let page = LoginPage {
        next,
        error: Some(why.into()),
        notice: None,
    };
    templates::render(status, "login.html", &Layout::anonymous("Sign in"), page)
}

/// The sign-in form; someone already signed in goes on to where they were going (signing in as
/// another token starts with signing out).
async fn show_login(signed: Result<Signed, Response>, Query(q): Query<NextQuery>) -> Response {
    if let Ok(signed) = signed {
        let next = safe_next(q.next.as_deref()).unwrap_or_else(|| home_of(&signed.scope));
        return Redirect::to(&next).into_response();
    }
    let page = LoginPage {
        next: safe_next(q.next.as_deref()),
        error: None,
        notice: q.ended.as_deref().map(|why| match why {
            "unsaved" => "Your session had ended (it expires 12 hours after signing in, or you signed out in another tab), so the form you sent was not saved. Sign in to go back to its page, then send it again.",
            _ => "Your session has ended: the API key you signed in with was revoked (or its organization deleted), or the admin token was changed. Sign in again with a valid token.",
        }),
    };
    templates::render(
        StatusCode::OK,
        "login.html",
        &Layout::anonymous("Sign in"),
        page,
    )
}

async fn sign_in(State(state): State<AppState>, request: Request) -> Response {
    let headers = request.headers().clone();
    let (client, forwarded_for) = crate::http_server::client_of(request.extensions(), &headers);
    // Whose allowance for tokens that are not valid this sign-in counts against.
    let counted_as = crate::http_server::client_address(
        request.extensions(),
        &headers,
        &state.settings.security.trusted_proxies,
    );
    if !posted_from_here(&headers, &state.settings.public_url()) {
        log_refused_origin(&headers, &client);
        return (
            StatusCode::FORBIDDEN,
            "This sign-in form was posted from another site. Open the dashboard's own /login page and sign in there. (If you did, and Herald is behind a proxy that rewrites Host, the log says what it saw: forward X-Forwarded-Host or set HERALD_PUBLIC_URL.)",
        )
            .into_response();
    }
    let body = match session::read_form(request, &state).await {
        Ok(body) => body,
        Err(page) => return *page,
    };
    let form = Form::parse(&body);
    let token = form.text("token");
    let next = safe_next(form.get("next"));
    let presented = match state.auth.present(counted_as, &token) {
        Ok(presented) => presented,
        Err(held) => {
            let mut page = refused(
                StatusCode::TOO_MANY_REQUESTS,
                next,
                format!("{}.", held.message()),
            );
            page.headers_mut()
                .insert(header::RETRY_AFTER, held.retry_after_secs().into());
            return page;
        }
    };
    let digest = presented.digest().clone();
    let scope = match presented.resolve().await {
        Ok(Some((scope, KeyRole::Manager))) if !token.is_empty() => scope,
        Ok(Some((Scope::Org(org), KeyRole::Producer))) => {
            let key_prefix = crate::api::caller::key_prefix(&token);
            tracing::warn!(org = %org, key_prefix, client, forwarded_for, "dashboard sign-in refused: a producer's API key");
            return refused(
                StatusCode::FORBIDDEN,
                next,
                "That API key is a producer's: it may post events, not manage the organization. Sign in with a manager key or the admin token.",
            );
        }
        Ok(_) => {
            // One line per 10 s at most: a script guessing tokens would otherwise fill the log.
            static REFUSED: Throttle = Throttle::new(std::time::Duration::from_secs(10));
            let said_later = |refused: u64| {
                tracing::warn!(
                    refused,
                    "dashboard sign-ins refused in the last 10 s: the token was not valid"
                );
            };
            if let Some(held_back) = REFUSED.admit_or_later(1, said_later) {
                tracing::warn!(
                    client,
                    forwarded_for,
                    refused_since_last_line = held_back,
                    "dashboard sign-in refused: the token is not valid"
                );
            }
            return refused(
                StatusCode::UNAUTHORIZED,
                next,
                "That token is not valid. Use the admin token (printed on the first start and kept in the data directory as admin-token) or an organization API key (hk_…).",
            );
        }
        Err(e) => return super::error::DashError::from(e).into_response(),
    };
    let id = match state.sessions.create(&state.auth, &digest, &scope).await {
        Ok(id) => id,
        Err(e) => return session::store_failed(e),
    };
    // Said once the session is stored: a sign-in the database refused did not happen.
    match &scope {
        Scope::Admin => {
            tracing::info!(
                client,
                forwarded_for,
                "signed in to the dashboard with the admin token"
            );
        }
        Scope::Org(org) => {
            let key_prefix = crate::api::caller::key_prefix(&token);
            tracing::info!(org = %org, key_prefix, client, forwarded_for, "signed in to the dashboard with an API key");
        }
    }
    let target = next.unwrap_or_else(|| home_of(&scope));
    (
        [(
            header::SET_COOKIE,
            session::set_cookie(&state, &headers, &id),
        )],
        Redirect::to(&target),
    )
        .into_response()
}

async fn sign_out(State(state): State<AppState>, post: Post) -> Response {
    if let Err(e) = state.sessions.remove(&post.signed.session).await {
        // Signed out of this browser at least; the page says the rest failed.
        let mut page = session::store_failed(e);
        page.headers_mut().insert(
            header::SET_COOKIE,
            session::clear_cookie().parse().expect("a valid header"),
        );
        return page;
    }
    (
        [(header::SET_COOKIE, session::clear_cookie())],
        Redirect::to("/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_signing_in() {
        assert_eq!(safe_next(Some("/orgs/x")), Some("/orgs/x".into()));
        assert_eq!(safe_next(Some("//evil.example")), None);
        assert_eq!(safe_next(Some("https://evil.example")), None);
        assert_eq!(safe_next(Some("/\\evil.example")), None);
        // Browsers drop the tab and read `//evil.example`.
        assert_eq!(safe_next(Some("/\t/evil.example")), None);
        // Past ASCII, as a Location header must carry it; what is already encoded stays.
        assert_eq!(safe_next(Some("/orgs/xÿ")), Some("/orgs/x%C3%BF".into()));
        assert_eq!(safe_next(Some("/orgs/x%20y")), Some("/orgs/x%20y".into()));
        assert_eq!(safe_next(Some("/a b")), None);
    }

    #[test]
    fn a_sign_in_posted_from_another_site_is_refused() {
        let posted = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, header::HeaderValue::from_static(value));
            }
            posted_from_here(&h, "http://127.0.0.1:7600")
        };
        assert!(posted(&[]), "not a browser");
        assert!(posted(&[("sec-fetch-site", "same-origin")]));
        assert!(posted(&[("sec-fetch-site", "none")]));
        assert!(!posted(&[("sec-fetch-site", "cross-site")]));
        assert!(!posted(&[("sec-fetch-site", "same-site")]));
        // Over plain http to a name that is not localhost, browsers send only `Origin`.
        let lan = ("host", "herald.lan:7600");
        assert!(posted(&[lan, ("origin", "http://herald.lan:7600")]));
        assert!(!posted(&[lan, ("origin", "http://attacker.example:7600")]));
        assert!(!posted(&[lan, ("origin", "http://herald.lan:7601")]));
        assert!(!posted(&[
            lan,
            ("origin", "http://herald.lan:7600.evil.example")
        ]));
        assert!(!posted(&[lan, ("origin", "null")]));
        // The default port is implied on either side.
        let proxied = ("host", "herald.example");
        assert!(posted(&[proxied, ("origin", "http://herald.example:80")]));
        // A proxy that rewrote `Host` names the site in `X-Forwarded-Host`, or the public URL does.
        let rewritten = ("host", "10.0.0.5:7600");
        assert!(posted(&[
            rewritten,
            ("x-forwarded-host", "herald.example"),
            ("origin", "http://herald.example")
        ]));
        assert!(posted(&[rewritten, ("origin", "http://127.0.0.1:7600")]));
        assert!(!posted(&[rewritten, ("origin", "http://herald.example")]));
        // `Sec-Fetch-Site` decides when both are sent.
        assert!(!posted(&[
            lan,
            ("origin", "http://herald.lan:7600"),
            ("sec-fetch-site", "cross-site")
        ]));
    }
}
