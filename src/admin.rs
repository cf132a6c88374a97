//! The admin server of both processes: `/metrics`, `/healthz`, `/readyz`.
//! Separate from the data plane (its own port, reachable from outside the
//! pod for probes and Prometheus), and it never touches a secret.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::Registry;
use serde_json::{Map, Value};

/// Whether the process can do its work now, and why not.
pub trait Ready: Send + Sync + 'static {
    /// Ready or not, with details (the reason when not ready).
    fn status(&self) -> Status;
}

/// One `/readyz` answer: `{"ready": bool, ...details}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub ready: bool,
    /// Extra fields of the JSON body (`mode`, `reason`, `last_error`, ...).
    pub details: Map<String, Value>,
}

impl Status {
    pub fn new(ready: bool) -> Self {
        Self {
            ready,
            details: Map::new(),
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    ready: Arc<dyn Ready>,
}

/// The admin routes, without a socket (tests call it directly).
pub fn router(registry: Registry, ready: Arc<dyn Ready>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { registry, ready })
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        crate::metrics::render(&state.registry),
    )
        .into_response()
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let status = state.ready.status();
    let mut body = Map::new();
    body.insert("ready".to_owned(), Value::Bool(status.ready));
    body.extend(status.details);
    let code = if status.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(Value::Object(body))).into_response()
}
