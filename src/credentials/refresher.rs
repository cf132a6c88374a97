//! Keeps the cell full of fresh credentials, on the schedule
//! [`RefreshPolicy`] sets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::policy::MIN_FORCED_INTERVAL;
use super::{
    CredentialCell, CredentialSource, ErrorClass, HeldCredentials, RefreshPolicy, SourceError,
};
use crate::clock::{saturating_sub, unix_seconds, SharedClock};
use crate::metrics::CredentialMetrics;

/// The background task that fills the cell.
pub struct Refresher {
    source: Arc<dyn CredentialSource>,
    cell: Arc<CredentialCell>,
    policy: RefreshPolicy,
    clock: SharedClock,
    metrics: CredentialMetrics,
    rng: fastrand::Rng,
    last_attempt: tokio::time::Instant,
}

impl Refresher {
    pub fn new(
        source: Arc<dyn CredentialSource>,
        cell: Arc<CredentialCell>,
        policy: RefreshPolicy,
        clock: SharedClock,
        metrics: CredentialMetrics,
    ) -> Self {
        Self {
            source,
            cell,
            policy,
            clock,
            metrics,
            rng: fastrand::Rng::new(),
            last_attempt: tokio::time::Instant::now(),
        }
    }

    /// Draws jitter from `rng` instead of a randomly seeded one, so a
    /// simulation of many refreshers can be replayed exactly.
    pub fn with_rng(mut self, rng: fastrand::Rng) -> Self {
        self.rng = rng;
        self
    }

    /// Runs until `shutdown` is cancelled, or after the first success for
    /// credentials that never expire.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let delay = match self.attempt().await {
                Ok(None) => {
                    tracing::debug!(
                        source = self.source.kind(),
                        "credentials never expire; refresher done"
                    );
                    return;
                }
                Ok(Some(lifetime)) => {
                    failures = 0;
                    self.policy.refresh_after(lifetime, self.rng.f64())
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let now = self.clock.now();
                    let remaining = self
                        .cell
                        .load()
                        .as_ref()
                        .and_then(|h| h.expiry())
                        .map(|e| saturating_sub(e, now));
                    let delay = self.policy.backoff(failures, self.rng.f64(), remaining);
                    self.report_failure(&err, failures, delay);
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.cell.refresh_requested() => {
                    // Rate-limit forced refreshes so a misbehaving upstream
                    // cannot turn every request into an STS call.
                    let since = self.last_attempt.elapsed();
                    if since < MIN_FORCED_INTERVAL {
                        tokio::select! {
                            _ = tokio::time::sleep(MIN_FORCED_INTERVAL - since) => {}
                            _ = shutdown.cancelled() => return,
                        }
                    }
                    tracing::debug!("early refresh requested");
                }
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One fetch. Returns the lifetime of the new credentials (`None` if they
    /// never expire).
    async fn attempt(&mut self) -> Result<Option<Duration>, SourceError> {
        let started = Instant::now();
        self.last_attempt = tokio::time::Instant::now();
        let result = self.source.fetch().await;
        self.metrics
            .refresh_duration
            .observe(started.elapsed().as_secs_f64());
        let fetched = match result {
            Ok(f) => f,
            Err(e) => {
                self.metrics.refreshes.with_label_values(&["failure"]).inc();
                self.metrics
                    .refresh_errors
                    .with_label_values(&[e.class().as_str()])
                    .inc();
                self.metrics.consecutive_failures.inc();
                return Err(e);
            }
        };

        let now = self.clock.now();
        let expiry = fetched.credentials.expiry();
        if let Some(exp) = fetched.token_expiry {
            self.metrics
                .web_identity_token_expiry_timestamp
                .set(unix_seconds(exp));
        }
        self.metrics
            .expiry_timestamp
            .set(expiry.map_or(f64::INFINITY, unix_seconds));
        self.metrics.last_refresh_timestamp.set(unix_seconds(now));
        self.metrics.refreshes.with_label_values(&["success"]).inc();
        self.metrics.consecutive_failures.set(0);

        let lifetime = expiry.map(|e| saturating_sub(e, now));
        match lifetime {
            Some(l) if l.is_zero() => tracing::warn!(
                source = self.source.kind(),
                "received credentials that are already expired; check the node's clock"
            ),
            _ => tracing::info!(
                source = self.source.kind(),
                principal = fetched.principal.as_deref().unwrap_or("-"),
                expires_in_s = lifetime.map(|l| l.as_secs()),
                "credentials refreshed"
            ),
        }
        self.cell.store(HeldCredentials::new(
            fetched.credentials,
            now,
            self.source.kind(),
        ));
        Ok(lifetime)
    }

    fn report_failure(&self, err: &SourceError, failures: u32, retry_in: Duration) {
        let usable = self.cell.usable(self.clock.now()).is_ok();
        let summary = format!("{err}");
        let hint = err.hint().unwrap_or("");
        let retry_in_ms = retry_in.as_millis() as u64;
        match err.class() {
            ErrorClass::Fatal => tracing::error!(
                error = %summary, class = err.class().as_str(), failures, retry_in_ms,
                still_serving = usable, hint, "credential refresh failed"
            ),
            _ if usable => tracing::warn!(
                error = %summary, class = err.class().as_str(), failures, retry_in_ms,
                still_serving = usable, hint, "credential refresh failed; keeping current credentials"
            ),
            _ => tracing::error!(
                error = %summary, class = err.class().as_str(), failures, retry_in_ms,
                still_serving = usable, hint, "credential refresh failed and no usable credentials are held"
            ),
        }
        self.cell.record_failure(summary);
    }
}

#[cfg(test)]
mod tests;
