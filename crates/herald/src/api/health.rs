//! Liveness, readiness and metrics.

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::Json;
use super::error::ApiError;
use crate::app::AppState;
use crate::metrics::Probe;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_health))
        .routes(routes!(get_ready))
        .routes(routes!(get_metrics))
}

#[derive(Debug, Serialize, ToSchema)]
struct Status {
    /// `ok`, `ready` or `unavailable`.
    status: &'static str,
    /// Why it is not ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<std::borrow::Cow<'static, str>>,
}

/// Alive: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Status)))]
async fn get_health() -> (Extension<Probe>, Json<Status>) {
    (
        Extension(Probe),
        Json(Status {
            status: "ok",
            reason: None,
        }),
    )
}

/// Ready when the store answers a read and can take writes.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready to take events", body = Status),
        (status = 503, description = "The database does not answer, or cannot store anything", body = Status),
    ))]
async fn get_ready(State(state): State<AppState>) -> (StatusCode, Extension<Probe>, Json<Status>) {
    let (status, body) = readiness(&state).await;
    (status, Extension(Probe), Json(body))
}

/// Whether the store can take events now, and if not, why.
async fn readiness(state: &AppState) -> (StatusCode, Status) {
    if let Some(trouble) = state
        .store
        .write_trouble()
        .or_else(|| state.store.serving_trouble())
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Status {
                status: "unavailable",
                reason: Some(trouble.into()),
            },
        );
    }
    // Bounded, so that a probe with a short timeout gets the answer rather than none: a
    // database cut off by the network would otherwise hold it for the pool's 10 s.
    match tokio::time::timeout(READY_READ_WITHIN, state.store.answers_reads()).await {
        Ok(Ok(_)) => (
            StatusCode::OK,
            Status {
                status: "ready",
                reason: None,
            },
        ),
        Err(_) => {
            if let Some(held_back) = super::error::STORE_UNAVAILABLE.admit() {
                tracing::warn!(
                    held_back,
                    within_secs = READY_READ_WITHIN.as_secs(),
                    "readiness check failed: the database did not answer a read in time"
                );
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Status {
                    status: "unavailable",
                    reason: Some(
                        format!(
                            "the database did not answer a read within {} s: is it reachable from \
                         here, and not overloaded?",
                            READY_READ_WITHIN.as_secs()
                        )
                        .into(),
                    ),
                },
            )
        }
        Ok(Err(e)) => {
            if let Some(held_back) = super::error::STORE_UNAVAILABLE.admit() {
                tracing::warn!(error = %herald_core::error_chain(&e), held_back, "readiness check failed: the database is unavailable");
            }
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Status {
                    status: "unavailable",
                    reason: Some("the database is unavailable (the log says why)".into()),
                },
            )
        }
    }
}

/// How long `/readyz` waits for the database's answer.
const READY_READ_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// How long `/metrics` waits for the database's backlog figures.
const METRICS_READ_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Prometheus metrics: events ingested, deliveries by outcome, retries, per-webhook backlog and
/// oldest pending age, attempt and commit latency histograms.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String),
        (status = 401, description = "HERALD_METRICS_TOKEN is set and the request does not carry it (or the admin token)", body = super::ErrorBody),
        (status = 429, description = "Too many tokens that are not valid came from the client's network; this one was not checked (see Retry-After)", body = super::ErrorBody),
    ))]
async fn get_metrics(
    State(state): State<AppState>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
) -> Response {
    let client = crate::http_server::client_address(
        &extensions,
        &headers,
        &state.settings.security.trusted_proxies,
    );
    let may = match &state.settings.security.metrics_token {
        Some(expected) => may_scrape(&state, client, &headers, expected).await,
        None => Ok(true),
    };
    let may = match may {
        Ok(may) => may,
        Err(held) => return ApiError::held_back(&held).into_response(),
    };
    if !may {
        // A scraper left with an old token shows up here, not only as a target down.
        static REFUSED: herald_core::throttle::Throttle =
            herald_core::throttle::Throttle::new(std::time::Duration::from_secs(10));
        if let Some(held_back) = REFUSED.admit() {
            let token_sent = !super::caller::bearer_token(&headers).is_empty();
            tracing::warn!(
                token_sent,
                held_back,
                "refused a /metrics scrape without HERALD_METRICS_TOKEN or the admin token (said once per 10 s; held_back counts the others)"
            );
        }
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "/metrics needs 'Authorization: Bearer <token>' with HERALD_METRICS_TOKEN or the admin token",
        )
        .into_response();
    }
    let pending = state.backlog.get(|| count_backlog(&state)).await;
    let snapshot = crate::metrics::Snapshot {
        ingest: &state.metrics,
        tokens: state.auth.failures(),
        dispatch: state.dispatcher.metrics(),
        commit_latency: state.store.commit_latency(),
        held_in_memory: state.dispatcher.held(),
        held_bytes: state.dispatcher.held_bytes(),
        requests_in_flight: state.dispatcher.requests_in_flight(),
        body_bytes_in_flight: state.admission.in_flight_bytes(),
        pending,
        concurrency: state.dispatcher.concurrency_limits(),
        attempts_paused: state.dispatcher.attempts_paused(),
        writes_failing: state.store.write_trouble().is_some(),
        now: state.clock.now(),
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        snapshot.render(),
    )
        .into_response()
}

/// Each webhook's backlog, as the database counts it now; `None` if it cannot. Within a
/// scraper's patience (Prometheus gives up after 10 s by default): a database that does not
/// answer is reported as down rather than holding the whole scrape.
async fn count_backlog(state: &AppState) -> Option<Vec<herald_core::store::PendingStat>> {
    let read = tokio::time::timeout(METRICS_READ_WITHIN, state.store.pending_by_webhook()).await;
    match read {
        Ok(Ok(p)) => Some(p),
        Ok(Err(e)) => {
            if let Some(held_back) = super::error::STORE_UNAVAILABLE.admit() {
                tracing::warn!(error = %e, held_back, "could not count pending deliveries for /metrics: herald_database_up is 0");
            }
            None
        }
        Err(_) => {
            if let Some(held_back) = super::error::STORE_UNAVAILABLE.admit() {
                tracing::warn!(
                    held_back,
                    "the database did not count pending deliveries for /metrics within 3 s: herald_database_up is 0"
                );
            }
            None
        }
    }
}

/// Whether the request carries the metrics token (compared by digest, in constant time) or
/// the admin token, within the client network's allowance for tokens that are not valid.
async fn may_scrape(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    expected: &str,
) -> Result<bool, crate::service::auth::HeldBack> {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let sent = super::caller::bearer_token(headers);
    if sent.is_empty() {
        return Ok(false);
    }
    let presented = state.auth.present(client, sent)?;
    let (sent_digest, expected_digest) = (Sha256::digest(sent), Sha256::digest(expected.trim()));
    if bool::from(sent_digest.ct_eq(&expected_digest)) {
        presented.admitted(crate::service::token_failures::Owner::Operator);
        return Ok(true);
    }
    Ok(matches!(
        presented.resolve().await,
        Ok(Some((crate::service::Scope::Admin, _)))
    ))
}
