//! Request bodies: the extractors handlers take ([`JsonBody`], [`RawJsonBody`], [`NoBody`]),
//! and reading a body against the admission budget (`admission.rs`): within its deadline
//! (`408`), size (`413`) and media type (`415`), and refused with `503` when the budget has no
//! room in time.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::admission::{Admitted, BodyBudget, TenantRoom};
use super::error::ApiError;
use super::json_errors::{invalid_json, not_utf8, parse_json};
use crate::app::AppState;
use crate::service::Scope;

/// A JSON body whose errors say what is wrong (and where), as `400 invalid_json`, or `413` when
/// it is over the size limit.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        match read_json(req, state, false).await? {
            Some(v) => Ok(JsonBody(v)),
            None => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the request body is empty; send a JSON object",
            )),
        }
    }
}

/// Like [`JsonBody`], but an empty body is `None` (for operations whose body is optional).
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<T: DeserializeOwned> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_json(req, state, true).await.map(OptionalJsonBody)
    }
}

/// The body of an operation that takes none: nothing, `null` or `{}` (as clients that always
/// send an object send it). Anything else is refused as any body of the wrong shape is (a
/// field is unknown, text is not JSON), and one too large or compressed as every body is.
pub struct NoBody;

/// No fields at all.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoFields {}

impl FromRequest<AppState> for NoBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        read_json::<NoFields>(req, state, true)
            .await
            .map(|_| NoBody)
    }
}

/// A JSON body left as bytes, for a handler that parses it borrowing from it: read under the
/// size limit, with the errors of [`JsonBody`], and not empty. The body's share of the bodies
/// in flight ([`Admitted`]) comes with it: hold it until the answer.
pub struct RawJsonBody(pub Bytes, pub Admitted);

impl FromRequest<AppState> for RawJsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (bytes, admitted) = read_body(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the request body is empty; send an event (a JSON object) or an array of events",
            ));
        }
        Ok(RawJsonBody(bytes, admitted))
    }
}

async fn read_json<T: DeserializeOwned>(
    req: Request,
    state: &AppState,
    optional: bool,
) -> Result<Option<T>, ApiError> {
    // The body's share of the budget is given back once it is parsed: what a handler keeps of
    // an (administrative) body is small beside the body itself.
    let (bytes, _admitted) = read_body(req, state).await?;
    let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) else {
        return Ok(None);
    };
    // JSON's `null` is no body where the body is optional, as the OpenAPI document says.
    if optional && bytes.trim_ascii() == b"null" {
        return Ok(None);
    }
    // Every such body is an object; serde would also take an array of its fields in order.
    if *first != b'{' {
        // UTF-16 with its byte-order mark, say: named as such.
        if let Some(encoding) = not_utf8(&bytes) {
            return Err(invalid_json(encoding));
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object ({…})",
        ));
    }
    parse_json(&bytes).map(Some)
}

/// The slowest a body may arrive once admitted, after the time every body has
/// (`--body-timeout-ms`): a client trickling its body would otherwise hold its share of the
/// budget, and with a few connections all of it.
const BODY_MIN_BYTES_PER_SEC: u64 = 64 * 1024;

/// How long a body expected to bring `bytes` may take to arrive: `grace` and a second per
/// 64 KiB (26 s for 1 MiB, or for a chunked body under the default limit).
fn body_deadline(grace: Duration, bytes: usize) -> Duration {
    grace + Duration::from_millis(bytes as u64 * 1000 / BODY_MIN_BYTES_PER_SEC)
}

/// A body that did not arrive within its [`body_deadline`].
pub struct BodyTimedOut {
    deadline: Duration,
    grace: Duration,
}

impl BodyTimedOut {
    /// What the client should do about it.
    pub fn message(&self) -> String {
        format!(
            "the request body did not arrive within {:.1} s (after the first {:.1} s, bodies must \
             come at {} KiB/s at least); send it faster or in smaller requests",
            self.deadline.as_secs_f64(),
            self.grace.as_secs_f64(),
            BODY_MIN_BYTES_PER_SEC / 1024
        )
    }
}

impl From<BodyTimedOut> for ApiError {
    fn from(e: BodyTimedOut) -> Self {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", e.message())
    }
}

/// Reads a request's body as [`Bytes`] within its [`body_deadline`], for every body, counted
/// by admission or not (the dashboard's forms).
pub async fn read_within_deadline(
    req: Request,
    state: &AppState,
) -> Result<Result<Bytes, BytesRejection>, BodyTimedOut> {
    let expected = state.admission.expected_bytes(&req);
    read_by_deadline(req, state, expected).await
}

/// [`read_within_deadline`] for a body expected to bring `expected` bytes.
async fn read_by_deadline(
    req: Request,
    state: &AppState,
    expected: usize,
) -> Result<Result<Bytes, BytesRejection>, BodyTimedOut> {
    let grace = Duration::from_millis(state.settings.server.body_timeout_ms);
    let deadline = body_deadline(grace, expected);
    tokio::time::timeout(deadline, Bytes::from_request(req, state))
        .await
        .map_err(|_| BodyTimedOut { deadline, grace })
}

/// The organization a request's body counts against (`admission`): an API key's own, whatever
/// path it names, else the one in the path (`/v1/orgs/{org}/…`), as for the admin. `None` for
/// requests about no organization in particular.
fn tenant_of(req: &Request, budget: &BodyBudget) -> Option<TenantRoom> {
    if let Some(Scope::Org(org)) = req.extensions().get::<Scope>() {
        return Some(budget.tenant_room(org.as_str()));
    }
    let rest = req.uri().path().strip_prefix("/v1/orgs/")?;
    let org = rest.split('/').next().filter(|org| !org.is_empty())?;
    // As the router will read it: `org%5F…` is the same organization as `org_…`.
    let org = percent_encoding::percent_decode_str(org).decode_utf8_lossy();
    Some(budget.tenant_room(&org))
}

/// Reads a body under the size limit, once there is room for it among the bodies in flight
/// (`admission`), and within [`body_deadline`].
async fn read_body(req: Request, state: &AppState) -> Result<(Bytes, Admitted), ApiError> {
    let limit = state.settings.server.max_body_bytes;
    if super::admission::declared_length(&req).is_some_and(|declared| declared > limit) {
        // Said at once, rather than after waiting for a body that would be refused anyway.
        discard_body(req, limit).await;
        return Err(too_large(limit));
    }
    if let Some(encoding) = req
        .headers()
        .get(axum::http::header::CONTENT_ENCODING)
        // Empty, as some clients send it, or `identity`: not compressed.
        .filter(|e| {
            let named = e.as_bytes().trim_ascii();
            !named.is_empty() && !named.eq_ignore_ascii_case(b"identity")
        })
    {
        // Read as it is, a compressed body would be "not JSON", which misleads.
        let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
        discard_body(req, limit).await;
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
            format!(
                "the body is sent with Content-Encoding: {}, and Herald reads bodies \
                 uncompressed; send it without compression",
                herald_core::truncate_for_message(&encoding)
            ),
        ));
    }
    let expected = state.admission.expected_bytes(&req);
    let units = state.admission.charge(expected);
    let tenant = tenant_of(&req, &state.admission);
    let admitted = match state.admission.admit(units, tenant, &state.metrics).await {
        Ok(admitted) => admitted,
        Err(overloaded) => {
            discard_body(req, limit).await;
            return Err(overloaded);
        }
    };
    let read = read_by_deadline(req, state, expected).await?;
    let bytes = read.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("could not read the request body: {e}"),
            )
        }
    })?;
    // A byte-order mark is no part of JSON's text (RFC 8259 lets a reader ignore it).
    let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => bytes.slice(bytes.len() - rest.len()..),
        None => bytes,
    };
    Ok((bytes, admitted))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the request body is larger than {limit} bytes (the server's \
             HERALD_MAX_BODY_BYTES): send less in one request (fewer events), or have the \
             limit raised for a single event this large"
        ),
    )
}

/// Reads and drops what the client still sends of a body that will not be used (at most
/// `limit` bytes, for at most a second), a chunk at a time. Answered before its body is read,
/// a client still sending it would often see the connection reset instead of the answer.
async fn discard_body(req: Request, limit: usize) {
    // A client that waits for `100 Continue` before sending gets the answer instead: reading
    // would first invite it to send what is refused.
    if req
        .headers()
        .get(axum::http::header::EXPECT)
        .is_some_and(|e| e.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        return;
    }
    let mut body = req.into_body();
    let drain = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |data| data.len());
            if seen > limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_counts_against_the_api_keys_organization_else_the_paths() {
        let budget = BodyBudget::new(64 * 1024, 4 * 1024, Duration::from_secs(1));
        let request = |path: &str, scope: Option<Scope>| {
            let mut req = axum::http::Request::builder()
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap();
            if let Some(scope) = scope {
                req.extensions_mut().insert(scope);
            }
            req
        };
        let acme = "org_01jd0000000000000000000000";
        let room = Some(budget.tenant_room(acme));
        for path in [
            format!("/v1/orgs/{acme}/events"),
            "/v1/orgs/org%5F01JD0000000000000000000000/events".to_owned(),
        ] {
            assert_eq!(tenant_of(&request(&path, None), &budget), room, "{path}");
        }
        let key = Scope::Org(herald_core::OrgId::from_trusted(acme.to_owned()));
        let elsewhere = "/v1/orgs/org_01jd1111111111111111111111/events";
        assert_eq!(tenant_of(&request(elsewhere, Some(key)), &budget), room);
        assert_eq!(tenant_of(&request("/v1/orgs", None), &budget), None);
    }
}
