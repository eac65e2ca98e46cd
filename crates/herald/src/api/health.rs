//! Liveness, readiness and metrics.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::app::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { axum::Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(get_ready))
        .route("/metrics", get(get_metrics))
}

/// Ready when the store answers a read.
async fn get_ready(State(state): State<AppState>) -> impl IntoResponse {
    match state.store.next_due_at().await {
        Ok(_) => (StatusCode::OK, axum::Json(json!({ "status": "ready" }))),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(
                    json!({ "status": "unavailable", "reason": "the database does not answer" }),
                ),
            )
        }
    }
}

async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let pending = match state.store.pending_by_webhook().await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "could not count pending deliveries for /metrics");
            Vec::new()
        }
    };
    let snapshot = crate::metrics::Snapshot {
        ingest: &state.metrics,
        dispatch: state.dispatcher.metrics(),
        commit_latency: state.store.commit_latency(),
        held_in_memory: state.dispatcher.held(),
        pending,
        now: state.clock.now(),
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        snapshot.render(),
    )
}
