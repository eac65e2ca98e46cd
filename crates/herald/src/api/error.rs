//! The one place where errors become HTTP answers: `{"error": {"code", "message", "field"?}}`.
//! To add a case, add a `ServiceError` variant and give it a status and a stable code below.
//! 5xx answers never carry internal text; the cause is logged once here.

use super::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::ServiceError;

/// One line per 10 s for requests (and readiness probes) the database failed: an outage at
/// a thousand requests a second would otherwise be a thousand lines a second.
pub static STORE_UNAVAILABLE: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(std::time::Duration::from_secs(10));

/// The same for requests that met a secret sealed with a key this node is not given.
static MISSING_KEY: herald_core::throttle::Throttle =
    herald_core::throttle::Throttle::new(std::time::Duration::from_secs(10));

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds for `Retry-After` (a 503 says 1 without it).
    pub retry_after: Option<u64>,
    /// Each event of a batch refused, when more than one was.
    pub errors: Vec<ErrorItem>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            errors: Vec::new(),
        }
    }

    /// `429 too_many_invalid_tokens`: the client's network has sent too many tokens that
    /// were not valid, and this one was not checked.
    pub fn held_back(held: &crate::service::auth::HeldBack) -> Self {
        Self {
            retry_after: Some(held.retry_after_secs()),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_invalid_tokens",
                held.message(),
            )
        }
    }

    pub fn not_found(what: &str) -> Self {
        // An event is the one thing that goes by itself, with time: say so, and where to look.
        let why = if what == "event" {
            " kept for this organization: it was never received, or it is older than the \
             retention period (HERALD_RETENTION_DAYS, 30 days by default); list what is kept \
             with GET /v1/orgs/{org}/events"
        } else {
            ""
        };
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}{why}"),
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        use ServiceError as E;
        match e {
            E::Invalid(i) => Self {
                field: (!i.field.is_empty()).then(|| i.field.clone()),
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_field",
                    if i.field.is_empty() {
                        i.message
                    } else {
                        format!("{}: {}", i.field, i.message)
                    },
                )
            },
            E::UnknownEventType {
                name,
                org,
                field,
                because,
            } => Self {
                field: Some(field),
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_event_type",
                    format!(
                        "the event type '{name}' is not in this organization's catalogs nor registered by it{because}; list the known types with GET /v1/orgs/{org}/event-types or register it with POST /v1/orgs/{org}/event-types"
                    ),
                )
            },
            E::SchemaViolation(i) => Self {
                field: Some(i.field.clone()),
                ..Self::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "schema_violation",
                    format!("{}: {}", i.field, i.message),
                )
            },
            E::EventsRefused { listed, total } => {
                let errors: Vec<ErrorItem> = listed
                    .into_iter()
                    .map(|e| {
                        let one = Self::from(e);
                        ErrorItem {
                            code: one.code,
                            message: one.message,
                            field: one.field,
                        }
                    })
                    .collect();
                let first = errors.first().cloned().unwrap_or_else(|| ErrorItem {
                    code: "invalid_field",
                    message: "events are refused".into(),
                    field: None,
                });
                let which = if total > errors.len() {
                    format!("the first {}", errors.len())
                } else {
                    "each".to_owned()
                };
                Self {
                    status: StatusCode::UNPROCESSABLE_ENTITY,
                    code: first.code,
                    message: format!(
                        "{} (and {} more events of this batch are refused: `errors` lists {which}; \
                         nothing was stored)",
                        first.message,
                        total - 1
                    ),
                    field: first.field,
                    retry_after: None,
                    errors,
                }
            }
            E::NotFound(what) => Self::not_found(what),
            E::NoSuchName {
                what,
                name,
                suggestion,
            } => Self::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no such {what} '{}'{}",
                    herald_core::truncate_for_message(&name),
                    herald_core::suggest::did_you_mean(suggestion.as_deref())
                ),
            ),
            E::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            E::Changed { now } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "changed",
                format!(
                    "the webhook changed since the version If-Match names (its ETag is now \"{}\"); read it again and send the change again",
                    now.as_millis()
                ),
            ),
            E::Forbidden(message) => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            E::TooManyDeliveries(message) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "too_many_deliveries",
                message,
            ),
            E::TooManySearches => Self {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_searches",
                    format!(
                        "too many searches of the history run at once (lists filtered by state, \
                         event_type or type, which read the history until they find a page: {} \
                         at once for an organization, {} for this node), and this one waited {} s \
                         for its turn; try again once they are done, or page through the list \
                         unfiltered",
                        crate::service::searches::PER_ORG,
                        crate::service::searches::PER_NODE,
                        crate::service::searches::WAIT.as_secs(),
                    ),
                )
            },
            E::Unavailable(cause) => {
                if let Some(held_back) = STORE_UNAVAILABLE.admit() {
                    tracing::warn!(error = %herald_core::error_chain(&cause), held_back, "the database is unavailable: answering 503 (said once per 10 s while it lasts; held_back counts the answers since the last line)");
                }
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!(
                        "the database is unavailable{}; try again shortly",
                        unavailable_because(&cause)
                    ),
                )
            }
            // A node started without a key the others seal with: another node may serve it,
            // and the operator has a setting to fix (`/readyz` names the key meanwhile).
            E::Internal(cause) if herald_store::cipher::is_missing_key(&cause) => {
                if let Some(held_back) = MISSING_KEY.admit() {
                    tracing::error!(error = %herald_core::error_chain(&cause), held_back, "a stored secret was sealed with a key this node is not given: answering 503 (said once per 10 s while it lasts); give it every node's keys and restart it");
                }
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "this node cannot open the webhook secrets this needs (its operator has not \
                     given it the encryption key they were sealed with; its log says which); try \
                     again shortly: another node may answer",
                )
            }
            E::Internal(cause) => {
                tracing::error!(error = %herald_core::error_chain(&cause), "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "an internal error occurred; it has been logged",
                )
            }
        }
    }
}

/// Why the database is unavailable, where the reason is the operator's to act on and says
/// nothing of the deployment (a full disk); otherwise nothing, as PostgreSQL's own messages
/// may name hosts.
pub fn unavailable_because(cause: &herald_core::store::StoreError) -> &'static str {
    let mut reasons =
        std::iter::successors(Some(cause as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        });
    // SQLite's "database or disk is full"; PostgreSQL's "could not extend file …: No space
    // left on device" (SQLSTATE 53100).
    let full =
        |text: String| text.contains("disk is full") || text.contains("No space left on device");
    if reasons.any(|e| full(e.to_string())) {
        " (its disk is full: free some space where Herald keeps its data)"
    } else {
        ""
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable code to branch on, each in the error table of `docs/api.md`: `invalid_json`,
    /// `invalid_body`, `invalid_query`, `invalid_path`, `invalid_header`, `invalid_field`,
    /// `unknown_event_type`, `schema_violation`, `too_many_deliveries`, `unauthorized`, `too_many_invalid_tokens`,
    /// `too_many_searches`, `forbidden`, `not_found`, `method_not_allowed`, `request_timeout`,
    /// `conflict`, `changed`, `delivery_loop`, `payload_too_large`, `unsupported_encoding`,
    /// `unavailable`, `overloaded`, `internal`.
    #[schema(example = "invalid_field")]
    pub code: &'static str,
    /// What is wrong and what to do, in words.
    pub message: String,
    /// The input field at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// When more than one event of a posted batch is refused: each of them (the first 100),
    /// the first being the one `code`, `message` and `field` above tell. Nothing was stored.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ErrorItem>,
}

/// One refused event of a batch.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ErrorItem {
    #[schema(example = "unknown_event_type")]
    pub code: &'static str,
    pub message: String,
    /// The event's field at fault, from its place in the batch (`[3].type`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                field: self.field,
                errors: self.errors,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        let retry_after = self
            .retry_after
            .or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1));
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a late body may still be on its way: the connection cannot carry
            // another request, and the client is told so instead of finding it closed.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use herald_core::store::StoreError;

    #[test]
    fn a_full_disk_is_named_and_nothing_else_of_the_database_is() {
        let full = StoreError::Unavailable("database or disk is full".into());
        let message = ApiError::from(ServiceError::Unavailable(full)).message;
        assert!(message.contains("its disk is full"), "{message}");
        let postgres = StoreError::Unavailable(
            "could not extend file \"base/16384/16385\": No space left on device".into(),
        );
        let message = ApiError::from(ServiceError::Unavailable(postgres)).message;
        assert!(message.contains("its disk is full"), "{message}");
        let refused = StoreError::Unavailable("connection to 10.1.2.3:5432 refused".into());
        let message = ApiError::from(ServiceError::Unavailable(refused)).message;
        assert_eq!(message, "the database is unavailable; try again shortly");
    }

    /// A search refused for its turn is a `429` a client can act on: the code, when to come
    /// back, and what the limits are.
    #[tokio::test]
    async fn a_search_refused_its_turn_is_a_429_that_says_when_to_come_back() {
        let response = ApiError::from(ServiceError::TooManySearches).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers()[axum::http::header::RETRY_AFTER],
            "1",
            "a client is told when to try again"
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_searches");
        let message = body["error"]["message"].as_str().unwrap();
        let limits = format!(
            "{} at once for an organization, {} for this node",
            crate::service::searches::PER_ORG,
            crate::service::searches::PER_NODE
        );
        assert!(message.contains(&limits), "{message}");
    }
}
