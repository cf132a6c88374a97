//! Keeps the cell full of fresh credentials, on the schedule
//! [`RefreshPolicy`] sets.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

use super::policy::Failure;
use super::skew::SkewReport;
use super::{
    CredentialCell, CredentialSource, ErrorClass, Fetched, HeldCredentials, RefreshPolicy,
    SourceError, TokenExpiry,
};
use crate::clock::{saturating_sub, unix_seconds, SharedClock};
use crate::metrics::CredentialMetrics;

/// How often a wait also looks at the wall clock: after a suspend (a VM,
/// a laptop running kind) the monotonic clock has stood still while
/// credentials expired by the wall clock.
pub const WALL_CLOCK_CHECK: Duration = Duration::from_secs(10);

/// The background task that fills the cell.
pub struct Refresher {
    source: Arc<dyn CredentialSource>,
    cell: Arc<CredentialCell>,
    policy: RefreshPolicy,
    clock: SharedClock,
    metrics: CredentialMetrics,
    rng: fastrand::Rng,
    last_attempt: Option<tokio::time::Instant>,
    skew: SkewReport,
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
            last_attempt: None,
            skew: SkewReport::default(),
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
            if !self.hold_back(&shutdown).await {
                return;
            }
            let mut throttled = false;
            let mut failed = false;
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
                    failed = true;
                    failures = failures.saturating_add(1);
                    let now = self.clock.now();
                    // The life left in usable credentials; none once expired.
                    let held = self.cell.load();
                    let remaining = held
                        .as_ref()
                        .and_then(|h| h.expiry())
                        .map(|e| saturating_sub(e, now))
                        .filter(|r| !r.is_zero());
                    let lifetime = held
                        .as_ref()
                        .and_then(|h| Some(saturating_sub(h.expiry()?, h.obtained)));
                    drop(held);
                    throttled = err.is_throttling();
                    self.cell.set_throttled(throttled);
                    let failure = Failure {
                        count: failures,
                        class: err.class(),
                        throttled,
                        remaining,
                        lifetime,
                    };
                    let delay = self.policy.backoff(&failure, self.rng.f64());
                    self.report_failure(&err, failures, delay);
                    delay
                }
            };
            // STS throttling the account is not hurried by anyone: a
            // rejected request or a token rotation asking for a refresh
            // would only add to the rate the backoff waits out. A failure's
            // backoff is cut by a new token only: requests Bedrock rejects
            // would each ask, and call a failing STS every second.
            let early = async {
                if throttled {
                    std::future::pending().await
                } else if failed {
                    self.cell.retry_requested().await
                } else {
                    self.cell.refresh_requested().await
                }
            };
            tokio::select! {
                () = self.sleep(delay) => {}
                () = early => tracing::debug!("early refresh requested"),
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Sleeps `delay` by the monotonic clock or by the wall clock,
    /// whichever ends it first (the wall clock looked at every
    /// [`WALL_CLOCK_CHECK`]): a clock stepped back by NTP cannot stretch a
    /// wait, and a suspend cannot make it outlive the credentials.
    async fn sleep(&self, delay: Duration) {
        let due = self.clock.now() + delay;
        let end = tokio::time::Instant::now() + delay;
        loop {
            let left = saturating_sub(due, self.clock.now());
            if left.is_zero() {
                return;
            }
            let until = end.min(tokio::time::Instant::now() + left.min(WALL_CLOCK_CHECK));
            tokio::time::sleep_until(until).await;
            if until >= end {
                return;
            }
        }
    }

    /// Waits out what is left of the minimum interval since the last STS
    /// call, whatever woke the refresher (its schedule, a backoff, a forced
    /// refresh), so neither a misbehaving upstream nor credentials that
    /// arrive expired can turn it into a loop. `false` on shutdown.
    async fn hold_back(&self, shutdown: &CancellationToken) -> bool {
        let Some(last) = self.last_attempt else {
            return true;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(last + self.policy.min_interval) => true,
            _ = shutdown.cancelled() => false,
        }
    }

    /// One fetch. Returns the lifetime of the new credentials (`None` if they
    /// never expire).
    async fn attempt(&mut self) -> Result<Option<Duration>, SourceError> {
        let started = Instant::now();
        self.last_attempt = Some(tokio::time::Instant::now());
        self.cell.begin_attempt();
        let result = self.source.fetch().await;
        // The histogram is STS's round trip: an attempt that stopped at
        // the token file made no call, and its microseconds would drag the
        // round trip down just while the mount is broken.
        if !matches!(
            result,
            Err(SourceError::TokenFile { .. } | SourceError::EmptyToken { .. })
        ) {
            self.metrics
                .refresh_duration
                .observe(started.elapsed().as_secs_f64());
        }
        let now = self.clock.now();
        let server = match &result {
            Ok(fetched) => fetched.server_time,
            Err(_) => self.source.last_answer_time(),
        };
        if let Some(server) = server {
            self.skew.observe(now, server, &self.metrics.clock_skew);
        }
        let fetched = match result.and_then(|f| unexpired(f, now)) {
            Ok(f) => f,
            Err(e) => {
                self.record_token_expiry(self.source.last_token_expiry());
                self.metrics.refreshes.with_label_values(&["failure"]).inc();
                self.metrics
                    .refresh_errors
                    .with_label_values(&[e.class().as_str()])
                    .inc();
                if e.is_throttling() {
                    self.metrics.refresh_throttled.inc();
                }
                self.metrics.consecutive_failures.inc();
                return Err(e);
            }
        };

        self.cell.set_throttled(false);
        let expiry = fetched.credentials.expiry();
        self.record_token_expiry(fetched.token_expiry);
        self.metrics
            .expiry_timestamp
            .set(expiry.map_or(f64::INFINITY, unix_seconds));
        // The same credentials again (IMDS and container endpoints hand
        // them out until shortly before they expire) keep their lifetime.
        let same = self.cell.load().as_ref().is_some_and(|held| {
            held.credentials().access_key_id() == fetched.credentials.access_key_id()
        });
        if !same {
            self.metrics
                .lifetime
                .set(expiry.map_or(f64::INFINITY, |e| saturating_sub(e, now).as_secs_f64()));
        }
        self.metrics.last_refresh_timestamp.set(unix_seconds(now));
        self.metrics.refreshes.with_label_values(&["success"]).inc();
        self.metrics.consecutive_failures.set(0);

        let lifetime = expiry.map(|e| saturating_sub(e, now));
        tracing::info!(
            source = self.source.kind(),
            principal = fetched.principal.as_deref().unwrap_or("-"),
            expires_in_s = lifetime.map(|l| l.as_secs()),
            "credentials refreshed"
        );
        // Asked for while this fetch ran, or during a throttled wait that
        // did not listen: about the credentials about to be replaced.
        // Before the store, so a request about the new ones is never lost
        // (one about the old ones slipping in between costs one refresh).
        self.cell.discard_refresh_request();
        self.cell.discard_retry_request();
        self.cell.store(HeldCredentials::new(
            fetched.credentials,
            now,
            self.source.kind(),
        ));
        Ok(lifetime)
    }

    /// The token just read: a rotation to one without `exp` must not leave
    /// the previous token's time behind.
    fn record_token_expiry(&self, token: TokenExpiry) {
        let gauge = &self.metrics.web_identity_token_expiry_timestamp;
        match token {
            TokenExpiry::At(exp) => gauge.set(unix_seconds(exp)),
            TokenExpiry::Unknown => gauge.clear(),
            TokenExpiry::NoToken => {}
        }
    }

    fn report_failure(&self, err: &SourceError, failures: u32, retry_in: Duration) {
        let usable = self.cell.usable(self.clock.now()).is_ok();
        let summary = format!("{err}");
        // Recorded only when there is one: `hint=""` read as a blank hint.
        let hint = err.hint();
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
        // A request that asked while this attempt ran is answered by its
        // failure (it stops waiting when it is recorded). A new token that
        // came during it is kept: the attempt may have read the old one.
        self.cell.discard_refresh_request();
        self.cell.record_failure(summary);
    }
}

/// Credentials already expired by this node's clock are a failure, not a
/// success: storing them would replace usable ones with unusable ones, and
/// scheduling the next refresh from a zero lifetime is how the refresher
/// used to spin.
pub(super) fn unexpired(fetched: Fetched, now: SystemTime) -> Result<Fetched, SourceError> {
    match fetched.credentials.expiry() {
        Some(expiry) if expiry <= now => Err(SourceError::ExpiredOnArrival {
            expired_s: saturating_sub(now, expiry).as_secs(),
        }),
        _ => Ok(fetched),
    }
}

#[cfg(test)]
mod tests;
