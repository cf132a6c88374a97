//! Receiving an AdmissionReview body: bounded in time (a body that stalls
//! is dropped) and in memory (all reviews in flight share one budget, so
//! a flood of the largest reviews cannot take the webhook over its memory
//! limit while the API server waits on it).

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, Request, StatusCode};
use bytes::BytesMut;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// AdmissionReviews are bounded by the API server's 3 MiB object limit
/// plus the review envelope (old and new object).
pub const MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;

/// How long a review waits for room in the budget: well inside the API
/// server's 10 s webhook timeout, so it gets our clear answer.
const BUDGET_WAIT: Duration = Duration::from_secs(1);

/// How reviews are received.
#[derive(Debug, Clone)]
pub struct Intake {
    /// Longest silence while a body is received.
    body_read_timeout: Duration,
    budget: Arc<Semaphore>,
}

/// A review body, holding its share of the budget until dropped.
pub struct Received {
    pub bytes: Bytes,
    _budget: OwnedSemaphorePermit,
}

impl Intake {
    /// `budget` is at least one review of the largest size.
    pub fn new(body_read_timeout: Duration, budget: usize) -> Self {
        let budget = budget.clamp(MAX_REVIEW_BYTES, Semaphore::MAX_PERMITS);
        Self {
            body_read_timeout,
            budget: Arc::new(Semaphore::new(budget)),
        }
    }

    /// Reads a review body, or the status to answer instead.
    pub async fn receive(&self, request: Request<Body>) -> Result<Received, StatusCode> {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n > MAX_REVIEW_BYTES) {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        // Without a length, assume the largest review.
        let want = declared.unwrap_or(MAX_REVIEW_BYTES).max(1);
        let permits = u32::try_from(want).map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)?;
        let acquire = self.budget.clone().acquire_many_owned(permits);
        let permit = match tokio::time::timeout(BUDGET_WAIT, acquire).await {
            Ok(Ok(permit)) => permit,
            _ => {
                tracing::warn!("review budget exhausted; answering 503");
                return Err(StatusCode::SERVICE_UNAVAILABLE);
            }
        };
        let mut body = request.into_body();
        let mut bytes = BytesMut::with_capacity(declared.unwrap_or(0));
        loop {
            let frame = tokio::time::timeout(self.body_read_timeout, body.frame())
                .await
                .map_err(|_| StatusCode::REQUEST_TIMEOUT)?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|_| StatusCode::BAD_REQUEST)?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > want {
                    return Err(StatusCode::PAYLOAD_TOO_LARGE);
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(Received {
            bytes: bytes.freeze(),
            _budget: permit,
        })
    }
}

impl Default for Intake {
    fn default() -> Self {
        Self::new(Duration::from_secs(5), 4 * MAX_REVIEW_BYTES)
    }
}
