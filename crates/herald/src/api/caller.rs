//! Who is calling, from `Authorization: Bearer <token>` ([`Caller`]), and what their token
//! lets them do: an admin everything, an organization's manager key its organization, a
//! producer key only posting events, reading event types and finding its organization
//! ([`producer_may`]), whatever the route; organizations are created and deleted by the admin
//! alone.

use std::time::Duration;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::app::AppState;
use crate::service::Scope;
use crate::service::auth::API_KEY_PREFIX;
use herald_core::org::KeyRole;
use herald_core::throttle::Throttle;

/// The authenticated caller's scope, from `Authorization: Bearer <token>`.
pub struct Caller(pub Scope);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        super::no_query_unless_taken(parts)?;
        let token = bearer_token(&parts.headers);
        if token.is_empty() {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send 'Authorization: Bearer <token>' with the admin token or an organization API key",
            ));
        }
        let client = crate::http_server::client_address(
            &parts.extensions,
            &parts.headers,
            &state.settings.security.trusted_proxies,
        );
        let presented = state
            .auth
            .present(client, token)
            .map_err(|held| ApiError::held_back(&held))?;
        match presented.resolve().await? {
            Some((scope, role)) => {
                if role == KeyRole::Producer && !producer_may(&parts.method, parts.uri.path()) {
                    // Another organization's data is "not found" to every key: a producer's
                    // key learns nothing more from a 403.
                    if let Some(org) = path_org(parts.uri.path()) {
                        // Read as the route reads it (`org_01ABC…` is `org_01abc…`), so that the key's
                        // own organization, however spelt, gets the 403.
                        let org = super::orgs::org_id(org)
                            .unwrap_or_else(|_| herald_core::OrgId::from_trusted(org.to_owned()));
                        scope.check_org(&org)?;
                    }
                    let instead = if admin_only(&parts.method, parts.uri.path()) {
                        "this operation needs the admin token"
                    } else {
                        "use a manager key (or the admin token) for this"
                    };
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        format!(
                            "this API key is a producer's: it may post events and read its \
                             organization, event types and the catalogs, nothing else; {instead}"
                        ),
                    ));
                }
                // For the body extractors, which count an API key's bodies against its own
                // organization (`admission`); the admin's count against the path's.
                if let Scope::Org(_) = &scope {
                    parts.extensions.insert(scope.clone());
                }
                Ok(Caller(scope))
            }
            None => {
                log_refused_token(parts, token);
                Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the bearer token is not valid (neither the admin token nor a current API key)",
                ))
            }
        }
    }
}

/// Says who sent a token that is not valid: a producer still using a deleted key, or someone
/// guessing. At most one line per 10 s, with how many were refused meanwhile (those refused
/// after a line are said once the 10 s are over, should no refusal come after them). Of the
/// token only an API key's prefix (`hk_` and six characters, as the key list shows it, which
/// cannot be used) is logged.
fn log_refused_token(parts: &Parts, token: &str) {
    static REFUSED: Throttle = Throttle::new(Duration::from_secs(10));
    let said_later = |refused: u64| {
        tracing::warn!(
            refused,
            "refused more bearer tokens that are neither the admin token nor a current API key in the last 10 s"
        );
    };
    let Some(held_back) = REFUSED.admit_or_later(1, said_later) else {
        return;
    };
    let (client, forwarded_for) = crate::http_server::client_of(&parts.extensions, &parts.headers);
    let key_prefix = key_prefix(token);
    tracing::warn!(
        client,
        forwarded_for,
        key_prefix,
        method = %parts.method,
        path = parts.uri.path(),
        refused_since_last_line = held_back,
        "refused a bearer token that is neither the admin token nor a current API key"
    );
}

/// An API key's public prefix (`hk_` and six characters, as the key list shows it), the part
/// of a token that may be logged; `None` for any other token.
pub(crate) fn key_prefix(token: &str) -> Option<&str> {
    token
        .starts_with(API_KEY_PREFIX)
        .then(|| token.get(..API_KEY_PREFIX.len() + 6))
        .flatten()
}

/// What a producer's key may do: post its organization's events, read its event types and
/// the catalogs, and find its organization (the CLI looks it up by handle).
pub(crate) fn producer_may(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    // HEAD is answered by the GET handlers.
    let reads = method == Method::GET || method == Method::HEAD;
    match segments(path).as_slice() {
        ["", "v1", "orgs", _, "events"] => method == Method::POST,
        ["", "v1", "orgs", _, "event-types"]
        | ["", "v1", "event-types"]
        | ["", "v1", "orgs"]
        | ["", "v1", "orgs", _] => reads,
        _ => false,
    }
}

/// A path's segments, a trailing slash aside, for matching routes by shape.
fn segments(path: &str) -> Vec<&str> {
    path.trim_end_matches('/').split('/').collect()
}

/// Creating and deleting organizations: no organization's key may (`Scope::require_admin`).
fn admin_only(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    match segments(path).as_slice() {
        ["", "v1", "orgs"] => method == Method::POST,
        ["", "v1", "orgs", _] => method == Method::DELETE,
        _ => false,
    }
}

/// The organization `path` is under (`/v1/orgs/{org}/…`), if any.
fn path_org(path: &str) -> Option<&str> {
    let org = path.strip_prefix("/v1/orgs/")?.split('/').next()?;
    (!org.is_empty()).then_some(org)
}

/// The token of `Authorization: Bearer <token>`, or `""`. The scheme is matched without
/// regard to case (RFC 9110 §11.1: `BEARER` is `Bearer`).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> &str {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match header.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        let token = |value: &str| {
            let mut headers = axum::http::HeaderMap::new();
            headers.insert(axum::http::header::AUTHORIZATION, value.parse().unwrap());
            bearer_token(&headers).to_owned()
        };
        for value in ["Bearer hk_1", "bearer hk_1", "BEARER hk_1", "bEaReR  hk_1 "] {
            assert_eq!(token(value), "hk_1", "{value}");
        }
        for value in ["Basic aGs6MQ==", "Bearerhk_1", "hk_1", "Bearer"] {
            assert_eq!(token(value), "", "{value}");
        }
    }
}
