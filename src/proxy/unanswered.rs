//! The count a request still owes when its client goes away first.
//!
//! hyper drops a request's future when the client hangs up (a read
//! timeout in the SDK, a cancelled task) before Bedrock's response
//! headers arrive: the upstream request is cancelled with it, and nothing
//! after the pending await runs. Bedrock may still have done (and billed)
//! the work, and an SDK that retries on its timeout sends it again, so the
//! request is counted as `499` (nginx's "client closed request", already
//! the bidirectional streams' code) with its duration, not left out.

use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use prometheus::Histogram;

use super::{AuthMode, Operation, Proxy};
use crate::metrics::requests::RequestCounters;

/// nginx's "client closed request".
const CLIENT_CLOSED: u16 = 499;

/// Counts the request in `requests_total` exactly once: with its answer's
/// status through [`Unanswered::answer`], or as `499` when dropped first.
pub struct Unanswered<'a> {
    counters: &'a RequestCounters,
    operation: Operation,
    /// `none` until the request is authenticated.
    pub auth: AuthMode,
    started: Instant,
    /// Until the response's own [`super::Completion`] takes over timing.
    duration: Option<&'a Histogram>,
    answered: bool,
}

impl<'a> Unanswered<'a> {
    pub fn new(
        counters: &'a RequestCounters,
        operation: Operation,
        started: Instant,
        duration: &'a Histogram,
    ) -> Self {
        Self {
            counters,
            operation,
            auth: AuthMode::None,
            started,
            duration: Some(duration),
            answered: false,
        }
    }

    /// The duration is observed elsewhere from now on.
    pub fn timed(&mut self) {
        self.duration = None;
    }

    /// Counts the answer the client is about to get.
    pub fn answer(mut self, status: StatusCode) {
        self.count(status);
        self.answered = true;
    }

    fn count(&self, status: StatusCode) {
        self.counters.inc(
            (self.operation.index(), self.operation.as_str()),
            (self.auth.index(), self.auth.as_str()),
            status,
        );
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let Ok(status) = StatusCode::from_u16(CLIENT_CLOSED) else {
            return;
        };
        self.count(status);
        if let Some(duration) = self.duration.take() {
            duration.observe(self.started.elapsed().as_secs_f64());
        }
        tracing::debug!(
            operation = self.operation.as_str(),
            "the client went away before Bedrock answered"
        );
    }
}

/// A request from its arrival until it begins to be served: hyper drops a
/// request's future without polling it when its client hangs up (or
/// resets the connection) right after sending it, and nothing in the
/// future runs then. Counted as `499` if dropped so.
pub struct Arrived {
    proxy: Arc<Proxy>,
    operation: Operation,
    started: Instant,
    served: bool,
}

impl Arrived {
    pub fn new(proxy: Arc<Proxy>, operation: Operation, started: Instant) -> Self {
        Self {
            proxy,
            operation,
            started,
            served: false,
        }
    }

    /// Serving begins: [`Unanswered`] counts the request from here.
    pub fn served(&mut self) -> &Proxy {
        self.served = true;
        &self.proxy
    }
}

impl Drop for Arrived {
    fn drop(&mut self) {
        if self.served {
            return;
        }
        // Dropped at once: counted as a client that went away.
        drop(Unanswered::new(
            &self.proxy.requests,
            self.operation,
            self.started,
            &self.proxy.durations[self.operation.index()],
        ));
    }
}
