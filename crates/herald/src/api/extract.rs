//! Extractors: who is calling ([`Caller`]), JSON bodies with clear errors ([`JsonBody`]), and
//! typed ids from the path. Bodies are read here against the admission budget
//! (`admission.rs`): within their deadline (`408`), size (`413`) and media type (`415`), and
//! refused with `503` when the budget has no room in time.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::admission::{Admitted, BodyBudget, TenantRoom};
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
/// guessing. At most one line per 10 s, with how many were refused meanwhile. Of the token
/// only an API key's prefix (`hk_` and six characters, as the key list shows it, which cannot
/// be used) is logged.
fn log_refused_token(parts: &Parts, token: &str) {
    static REFUSED: Throttle = Throttle::new(Duration::from_secs(10));
    let Some(held_back) = REFUSED.admit() else {
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

/// Parses a JSON body, answering `400 invalid_json` with serde's account of what is wrong:
/// JSON that does not parse, or JSON of another shape than the operation takes. A required
/// field left out or given as `null` is `422 invalid_field` naming it, as a value out of range
/// is: the client mistook the field, not the format.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let said = e.to_string();
        if said.starts_with("recursion limit exceeded") {
            return invalid_json(
                "the request body nests arrays and objects more than 128 levels deep".to_owned(),
            );
        }
        // Parsed again, on this error path only: serde_json calls some wrong types a syntax
        // error (`null` for a field that takes one of several names), though the body is
        // valid JSON; a lone surrogate (`"\ud800"`) or invalid UTF-8 is not. And a body that
        // is not JSON is said so first, before a field found missing on the way (`{} x`).
        let parsed = serde_json::from_slice::<serde_json::Value>(bytes);
        if parsed.is_err()
            && let Some(encoding) = not_utf8(bytes)
        {
            return invalid_json(encoding);
        }
        if let Err(syntax) = &parsed {
            let why = if e.classify() == serde_json::error::Category::Data {
                syntax
            } else {
                &e
            };
            return invalid_json(format!(
                "the request body is not valid JSON: {}",
                herald_core::js_json::syntax_error_said(why)
            ));
        }
        let path = path_of::<T>(bytes);
        if let Some(field) = missing_field(&said) {
            let field = match &path {
                Some(p) => format!("{p}.{field}"),
                None => field.to_owned(),
            };
            return crate::service::ServiceError::from(herald_core::Invalid::new(
                field,
                "is required",
            ))
            .into();
        }
        // A null under a name the operation does not know is an unknown field (a misspelling,
        // as `400` says), not a value refused.
        if let (Ok(value), Some(p)) = (&parsed, &path)
            && !said.starts_with("unknown field")
            && value_at(value, p).is_some_and(serde_json::Value::is_null)
        {
            return crate::service::ServiceError::from(herald_core::Invalid::new(
                p.to_string(),
                "must not be null: give a value, or leave the field out where it may be",
            ))
            .into();
        }
        let field = path
            .as_ref()
            .map(|p| format!("`{p}`: "))
            .unwrap_or_default();
        let mut refused = invalid_json(format!(
            "the request body is JSON, but not of this operation's shape: {field}{}",
            in_json_terms(&without_type_names(&said))
        ));
        // Named for a client to branch on too, as a value refused with `422` is.
        refused.field = path.map(|p| p.to_string());
        refused
    })
}

/// What is wrong with a body that is not UTF-8, which JSON between systems is (RFC 8259):
/// UTF-16 (a byte-order mark, or the zero bytes of ASCII in it), or a byte of another
/// single-byte encoding (Latin-1's `é` is `0xE9`), named where it is.
fn not_utf8(bytes: &[u8]) -> Option<String> {
    // UTF-16 text of ASCII characters is valid UTF-8 with a zero byte in every pair, which
    // JSON never holds raw: told before the UTF-8 check, which would pass it.
    let utf16 = bytes.starts_with(&[0xFF, 0xFE])
        || bytes.starts_with(&[0xFE, 0xFF])
        || bytes.iter().take(64).any(|&b| b == 0);
    if utf16 {
        return Some(
            "the request body is not UTF-8 but UTF-16 (or holds zero bytes): send JSON encoded \
             as UTF-8"
                .to_owned(),
        );
    }
    let e = std::str::from_utf8(bytes).err()?;
    let at = e.valid_up_to();
    let line = bytes[..at].iter().filter(|&&b| b == b'\n').count() + 1;
    let column = at
        - bytes[..at]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |n| n + 1)
        + 1;
    Some(format!(
        "the request body is not UTF-8: byte 0x{:02X} at line {line} column {column} is not \
         UTF-8 (Latin-1 or Windows-1252 text, perhaps); send JSON encoded as UTF-8",
        bytes[at]
    ))
}

fn invalid_json(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
}

/// The field serde says is missing (`missing field `name``), if that is what it says.
fn missing_field(said: &str) -> Option<&str> {
    let rest = said.strip_prefix("missing field `")?;
    Some(&rest[..rest.find('`')?])
}

/// Where in the body `T` could not take the value: `None` when it is the body itself.
fn path_of<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Option<serde_path_to_error::Path> {
    let mut parser = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut parser) {
        Err(e) if e.path().iter().next().is_some() => Some(e.path().clone()),
        _ => None,
    }
}

/// The value at `path` in `value`, if there is one.
fn value_at<'v>(
    value: &'v serde_json::Value,
    path: &serde_path_to_error::Path,
) -> Option<&'v serde_json::Value> {
    use serde_path_to_error::Segment;
    path.iter().try_fold(value, |at, segment| match segment {
        Segment::Map { key } => at.get(key.as_str()),
        Segment::Seq { index } => at.get(*index),
        Segment::Enum { .. } | Segment::Unknown => None,
    })
}

/// serde names the Rust type it expected (`expected struct RotateBody`); the client knows it
/// as a JSON object.
fn without_type_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "struct ".len()..];
        let name_len = after
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .unwrap_or(after.len());
        out.push_str("a JSON object");
        rest = &after[name_len..];
    }
    out.push_str(rest);
    out
}

/// serde's words for what it expected, in JSON's: a client sends numbers, arrays and
/// objects, not `u64`s, sequences and maps, and picks a value, not a Rust enum's variant.
fn in_json_terms(message: &str) -> String {
    const WORDS: [(&str, &str); 12] = [
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected u32", "expected a whole number, 0 or more"),
        ("expected u16", "expected a whole number, 0 or more"),
        ("expected u8", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected a sequence", "expected an array"),
        ("expected a map", "expected a JSON object"),
        ("unknown variant", "unknown value"),
        (
            "expected variant identifier",
            "expected one of the values it takes",
        ),
    ];
    WORDS
        .iter()
        .fold(message.to_owned(), |text, (serde, json)| {
            text.replace(serde, json)
        })
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
    fn a_body_not_in_utf8_is_named_as_such() {
        let message = |body: &[u8]| parse_json::<serde_json::Value>(body).err().unwrap().message;
        let latin1 = b"{\"user\":\n  {\"id\": \"caf\xe9\"}}";
        assert_eq!(
            message(latin1),
            "the request body is not UTF-8: byte 0xE9 at line 2 column 14 is not UTF-8 (Latin-1 \
             or Windows-1252 text, perhaps); send JSON encoded as UTF-8"
        );
        let utf16: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("{\"a\": 1}".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert!(message(&utf16).contains("not UTF-8 but UTF-16"));
        // Without a byte-order mark, ASCII in UTF-16 is valid UTF-8: its zero bytes tell it.
        let bare: Vec<u8> = "{\"a\": 1}"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        assert!(message(&bare).contains("not UTF-8 but UTF-16"));
        // Valid UTF-8 that is not JSON is told as before.
        assert!(message(b"{\"a\": caf\xc3\xa9}").starts_with("the request body is not valid JSON"));
    }

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

    #[test]
    fn a_body_of_the_wrong_shape_is_told_in_json_terms() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            timeout_ms: Option<u64>,
            events: Option<Vec<String>>,
            role: Option<Role>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Role {
            Manager,
            Producer,
        }
        let said = |body: &str| parse_json::<Body>(body.as_bytes()).unwrap_err().message;
        let timeout = said(r#"{"timeout_ms": "5000"}"#);
        assert!(
            timeout.contains("`timeout_ms`")
                && timeout.contains("expected a whole number, 0 or more"),
            "{timeout}"
        );
        let events = said(r#"{"events": "user.created"}"#);
        assert!(events.contains("expected an array"), "{events}");
        let role = said(r#"{"role": "admin"}"#);
        assert!(
            role.contains("unknown value `admin`, expected `manager` or `producer`"),
            "{role}"
        );
        for text in [timeout, events, role] {
            assert!(
                !text.contains("u64") && !text.contains("sequence") && !text.contains("variant"),
                "{text}"
            );
        }
    }

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

    #[test]
    fn shape_errors_name_json_not_rust_types() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct RotateBody {
            secret: Option<String>,
        }
        let shape = parse_json::<RotateBody>(b"\"text\"").unwrap_err().message;
        assert!(shape.contains("not of this operation's shape"), "{shape}");
        assert!(shape.contains("expected a JSON object"), "{shape}");
        assert!(!shape.contains("RotateBody"), "{shape}");
        let syntax = parse_json::<RotateBody>(b"{\"secret\": ")
            .unwrap_err()
            .message;
        assert!(syntax.contains("not valid JSON"), "{syntax}");
    }

    /// A required field left out or given as null is the field's fault (422, named, nested
    /// too); text that is not JSON (a lone surrogate) is the format's (400).
    #[test]
    fn a_required_field_missing_or_null_is_named() {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Role {
            #[default]
            Manager,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Inner {
            name: String,
            #[serde(default)]
            role: Role,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            key: Inner,
        }
        let refused = |body: &str| parse_json::<Outer>(body.as_bytes()).unwrap_err();
        for (body, field, said) in [
            (r#"{}"#, "key", "is required"),
            (r#"{"key": {}}"#, "key.name", "is required"),
            (r#"{"key": {"name": null}}"#, "key.name", "must not be null"),
            (
                r#"{"key": {"name": "k", "role": null}}"#,
                "key.role",
                "must not be null",
            ),
        ] {
            let e = refused(body);
            assert_eq!(
                (e.status, e.code, e.field.as_deref()),
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    Some(field)
                ),
                "{body}: {}",
                e.message
            );
            assert!(e.message.contains(said), "{body}: {}", e.message);
        }
        // A misspelt field sent as null is an unknown field, not a null refused.
        let e = refused(r#"{"key": {"name": "k", "rol": null}}"#);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        assert!(e.message.contains("unknown field `rol`"), "{}", e.message);
        let e = refused(r#"{"key": {"name": "\ud800"}}"#);
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_json")
        );
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        // Not JSON, though a field is found missing before the parser reaches what is wrong:
        // said to be not JSON, as where nothing is missing.
        for body in [r#"{} x"#, r#"{}{}"#, r#"{"key": {}} x"#] {
            let e = refused(body);
            assert_eq!(
                (e.status, e.code),
                (StatusCode::BAD_REQUEST, "invalid_json"),
                "{body}: {}",
                e.message
            );
            assert!(
                e.message
                    .starts_with("the request body is not valid JSON: trailing characters"),
                "{body}: {}",
                e.message
            );
        }
    }

    #[test]
    fn valid_json_of_the_wrong_shape_is_not_called_invalid_json() {
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "lowercase")]
        enum Role {
            Manager,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct KeyBody {
            name: String,
            role: Option<Role>,
        }
        // serde_json reports these as syntax errors, though the JSON is valid.
        for body in [
            r#"{"name": "k", "role": 7}"#,
            r#"{"name": "k", "role": [1]}"#,
        ] {
            let message = parse_json::<KeyBody>(body.as_bytes()).unwrap_err().message;
            assert!(
                message.contains("not of this operation's shape"),
                "{body}: {message}"
            );
            assert!(message.contains("`role`: "), "{body}: {message}");
        }
        let message = parse_json::<KeyBody>(br#"{"name": 1}"#)
            .unwrap_err()
            .message;
        assert!(
            message.contains("`name`: invalid type: integer"),
            "{message}"
        );
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let message = parse_json::<Vec<serde_json::Value>>(deep.as_bytes())
            .unwrap_err()
            .message;
        assert!(message.contains("more than 128 levels deep"), "{message}");
        assert!(!message.contains("not valid JSON"), "{message}");
    }
}
