//! Extractors for what a request's path and query string carry: typed ids (`404` for
//! anything that cannot be one, naming the kind of id it looks like), path parameters and query
//! parameters with JSON errors, and lists that take no query. Who is calling is read in
//! `caller.rs`, bodies in `body.rs`.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::app::AppState;

/// Parses a path id, answering 404 for anything that is not one (an id of the wrong shape
/// cannot exist). The message says what an id looks like, since the usual mistake is another
/// name for the thing (an organization's handle, a webhook's name).
pub fn path_id<T>(
    raw: &str,
    what: &str,
    prefix: &str,
    parse: impl Fn(&str) -> Result<T, herald_core::Invalid>,
) -> Result<T, ApiError> {
    parse(raw).map_err(|_| {
        // The CLI takes an organization's handle; the API does not, and says where ids are.
        let instead = if prefix == "org" {
            "the API takes the id, not the handle: GET /v1/orgs lists both"
        } else {
            "the API takes the id: list them to find it"
        };
        let is = match other_kind_of_id(raw) {
            Some(kind) => {
                let article =
                    if what.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) {
                        "an"
                    } else {
                        "a"
                    };
                format!("is {kind}'s id, not {article} {what}'s")
            }
            None => "is not an id".to_owned(),
        };
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no such {what}: '{}' {is}; ids here are {prefix}_ followed by 26 letters or \
                 digits ({instead})",
                herald_core::truncate_for_message(raw)
            ),
        )
    })
}

/// What `raw` is the id of, when it has the shape of one of Herald's ids (a delivery's id
/// where a webhook's belongs is the usual mix-up): "a delivery", "an attempt"…
fn other_kind_of_id(raw: &str) -> Option<&'static str> {
    const KINDS: &[(&str, &str)] = &[
        ("org", "an organization"),
        ("wh", "a webhook"),
        ("dlv", "a delivery"),
        ("att", "an attempt"),
        ("key", "an API key"),
        ("evt", "an event"),
        ("et", "an event type"),
    ];
    let (prefix, rest) = raw.split_once('_')?;
    let ulid = rest.len() == 26 && rest.bytes().all(|b| b.is_ascii_alphanumeric());
    KINDS
        .iter()
        .find(|(p, _)| ulid && *p == prefix)
        .map(|(_, kind)| *kind)
}

/// Path parameters with a JSON error when they do not decode (percent-encoded bytes that are
/// not UTF-8), like every other bad input; axum's own rejection is plain text.
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| PathParams(v))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    format!("the path is not valid: {}", e.body_text()),
                )
            })
    }
}

/// Query parameters with a JSON error when they do not parse.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let params = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        // The path names the parameter, which the parser's own message does not.
        serde_path_to_error::deserialize(params)
            .map(QueryParams)
            .map_err(|e| {
                let message = match e.path().to_string() {
                    path if path == "." => format!("the query string is not valid: {}", e.inner()),
                    path => format!("the query parameter `{path}` is not valid: {}", e.inner()),
                };
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", message)
            })
    }
}

/// For a list that comes whole in one answer: any query parameter (`limit`, `cursor`) is
/// refused, rather than ignored as if it had been applied.
pub struct WholeList;

impl FromRequestParts<AppState> for WholeList {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        match form_urlencoded::parse(query.as_bytes()).next() {
            None => Ok(WholeList),
            Some((name, _)) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!(
                    "this list comes whole in one answer and takes no query parameters (`{}`)",
                    herald_core::truncate_for_message(&name)
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_kind_of_id_in_a_path_is_named() {
        let message = |raw: &str, what: &str, prefix: &str| {
            path_id(raw, what, prefix, |_| {
                Err::<(), _>(herald_core::Invalid::new("id", "not this kind's"))
            })
            .err()
            .unwrap()
            .message
        };
        let delivery = "dlv_01m95nkyeg077s282cs2yvkf2s";
        assert!(
            message(delivery, "webhook", "wh").starts_with(&format!(
                "no such webhook: '{delivery}' is a delivery's id, not a webhook's; ids here are wh_"
            )),
            "{}",
            message(delivery, "webhook", "wh")
        );
        assert!(
            message("wh_01m95nkyeg077s282cs2yvkf2s", "API key", "key")
                .contains("is a webhook's id, not an API key's"),
        );
        for not_an_id in ["crm", "dlv_short", "xyz_01m95nkyeg077s282cs2yvkf2s"] {
            assert!(
                message(not_an_id, "webhook", "wh").contains("' is not an id; ids here are wh_"),
                "{not_an_id}"
            );
        }
    }
}
