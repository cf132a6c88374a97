//! The admin server: `/metrics`, `/healthz`, `/readyz`. Separate from the data
//! plane (its own port, reachable from outside the pod for probes and
//! Prometheus), and it never touches a secret.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::clock::SharedClock;
use crate::credentials::CredentialCell;
use crate::metrics::Metrics;

/// What readiness depends on.
#[derive(Clone)]
pub enum Readiness {
    /// SigV4: ready while the cell holds unexpired credentials.
    Credentials {
        cell: Arc<CredentialCell>,
        clock: SharedClock,
    },
    /// A configured API key: ready as soon as the process serves.
    ApiKey,
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The admin routes, without a socket (tests call it directly).
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(AdminState { metrics, readiness })
}

async fn metrics_handler(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
        .into_response()
}

async fn ready_handler(State(state): State<AdminState>) -> Response {
    match &state.readiness {
        Readiness::ApiKey => {
            Json(serde_json::json!({"ready": true, "mode": "api_key"})).into_response()
        }
        Readiness::Credentials { cell, clock } => match cell.usable(clock.now()) {
            Ok(_) => Json(serde_json::json!({"ready": true, "mode": "sigv4"})).into_response(),
            Err(why) => {
                let mut body = serde_json::json!({
                    "ready": false,
                    "reason": why.describe(),
                });
                if let Some(err) = cell.last_error() {
                    body["last_error"] = serde_json::Value::String(err.as_str().to_owned());
                }
                (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
            }
        },
    }
}
