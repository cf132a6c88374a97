//! Keeps the cell full of fresh credentials.
//!
//! Policy: after a success, refresh once `fraction` of the remaining lifetime
//! has passed (default half), minus up to `jitter` of the lifetime at random
//! so pods started together spread their STS calls, and in any case at least
//! `min_remaining` before expiry (capped at half the lifetime, so short test
//! lifetimes still work). After a failure, retry with capped exponential
//! backoff and full jitter; the old credentials stay in use meanwhile, and
//! the wait never exceeds a quarter of their remaining life, so several
//! attempts fit before they expire.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{CredentialCell, CredentialSource, ErrorClass, HeldCredentials, SourceError};
use crate::clock::{saturating_sub, unix_seconds, SharedClock};
use crate::metrics::CredentialMetrics;

/// When to refresh and how to back off.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshPolicy {
    /// Refresh after this fraction of the lifetime has passed.
    pub fraction: f64,
    /// Up to this fraction of the lifetime is taken off at random.
    pub jitter: f64,
    /// Refresh at the latest this long before expiry (at most half the lifetime).
    pub min_remaining: Duration,
    /// First retry delay after a failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Full jitter on retry delays; off only in tests that check exact timings.
    pub backoff_jitter: bool,
}

/// Never schedule closer than this, so a source returning nearly expired
/// credentials cannot make the refresher spin.
const MIN_DELAY: Duration = Duration::from_millis(50);

/// Forced (early) refreshes are at least this far apart.
const MIN_FORCED_INTERVAL: Duration = Duration::from_secs(1);

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            fraction: 0.5,
            jitter: 0.1,
            min_remaining: Duration::from_secs(5 * 60),
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(30),
            backoff_jitter: true,
        }
    }
}

impl RefreshPolicy {
    /// How long after obtaining credentials valid for `lifetime` to refresh.
    /// `rand` is uniform in [0, 1).
    pub fn refresh_after(&self, lifetime: Duration, rand: f64) -> Duration {
        let fraction = (self.fraction - self.jitter * rand).max(0.0);
        let target = lifetime.mul_f64(fraction);
        let latest = lifetime.saturating_sub(self.min_remaining.min(lifetime / 2));
        target.min(latest).max(MIN_DELAY)
    }

    /// How long to wait after the `failures`-th consecutive failure.
    /// `remaining` is the life left in the held credentials, if any.
    pub fn backoff(&self, failures: u32, rand: f64, remaining: Option<Duration>) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let mut delay = self
            .backoff_base
            .saturating_mul(1u32 << exponent)
            .min(self.backoff_cap);
        if self.backoff_jitter {
            delay = delay.mul_f64(rand);
        }
        if let Some(remaining) = remaining.filter(|r| !r.is_zero()) {
            delay = delay.min(remaining / 4);
        }
        delay.max(MIN_DELAY)
    }
}

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
mod tests {
    use super::*;
    use crate::clock::{Clock, TokioClock};
    use crate::credentials::{BoxFuture, Fetched};
    use crate::metrics::Metrics;
    use aws_credential_types::Credentials;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::SystemTime;

    fn policy() -> RefreshPolicy {
        RefreshPolicy {
            jitter: 0.0,
            backoff_jitter: false,
            ..RefreshPolicy::default()
        }
    }

    #[test]
    fn refreshes_at_half_the_lifetime_and_at_least_five_minutes_before_expiry() {
        let p = policy();
        let hour = Duration::from_secs(3600);
        assert_eq!(p.refresh_after(hour, 0.0), Duration::from_secs(1800));
        let late = RefreshPolicy {
            fraction: 0.99,
            ..policy()
        };
        assert_eq!(late.refresh_after(hour, 0.0), Duration::from_secs(3300));
        // Short lifetimes: the minimum margin shrinks to half the lifetime.
        assert_eq!(
            late.refresh_after(Duration::from_secs(4), 0.0),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn jitter_only_ever_refreshes_earlier() {
        let p = RefreshPolicy::default();
        let hour = Duration::from_secs(3600);
        for r in [0.0, 0.3, 0.999] {
            let d = p.refresh_after(hour, r);
            assert!(d <= Duration::from_secs(1800), "{d:?}");
            assert!(d >= Duration::from_secs(1440), "{d:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = policy();
        let ms = |n| p.backoff(n, 0.0, None).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4)], [200, 400, 800, 1600]);
        assert_eq!(p.backoff(30, 0.0, None), Duration::from_secs(30));
        assert_eq!(p.backoff(u32::MAX, 0.0, None), Duration::from_secs(30));
    }

    #[test]
    fn backoff_with_full_jitter_stays_within_bounds_and_before_expiry() {
        let p = RefreshPolicy::default();
        assert_eq!(p.backoff(6, 0.0, None), MIN_DELAY);
        assert_eq!(p.backoff(6, 0.5, None), Duration::from_millis(3200));
        assert_eq!(
            p.backoff(10, 0.99, Some(Duration::from_secs(8))),
            Duration::from_secs(2)
        );
    }

    /// A source that plays back a script of results and records call times.
    #[derive(Debug)]
    struct Scripted {
        clock: TokioClock,
        script: Mutex<VecDeque<Result<Duration, &'static str>>>,
        calls: Mutex<Vec<SystemTime>>,
    }

    impl CredentialSource for Scripted {
        fn kind(&self) -> &'static str {
            "scripted"
        }
        fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
            let now = self.clock.now();
            self.calls.lock().unwrap().push(now);
            let next = self
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Err("script exhausted"));
            Box::pin(async move {
                match next {
                    Ok(lifetime) => Ok(Fetched {
                        credentials: Credentials::new(
                            format!("AKID{}", lifetime.as_secs()),
                            "secret",
                            Some("token".into()),
                            Some(now + lifetime),
                            "scripted",
                        ),
                        principal: None,
                        token_expiry: None,
                    }),
                    Err(code) => Err(SourceError::Service {
                        operation: "AssumeRoleWithWebIdentity",
                        code: code.into(),
                        message: "scripted".into(),
                        status: 400,
                        class: ErrorClass::Transient,
                    }),
                }
            })
        }
    }

    struct Harness {
        source: Arc<Scripted>,
        cell: Arc<CredentialCell>,
        metrics: Metrics,
        clock: TokioClock,
        start: SystemTime,
        shutdown: CancellationToken,
    }

    fn start(script: Vec<Result<Duration, &'static str>>) -> Harness {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = TokioClock::starting_at(start);
        let source = Arc::new(Scripted {
            clock: clock.clone(),
            script: Mutex::new(script.into()),
            calls: Mutex::new(Vec::new()),
        });
        let cell = Arc::new(CredentialCell::new());
        let metrics = Metrics::new();
        let shutdown = CancellationToken::new();
        let refresher = Refresher::new(
            source.clone(),
            cell.clone(),
            policy(),
            Arc::new(clock.clone()),
            metrics.credentials.clone(),
        );
        tokio::spawn(refresher.run(shutdown.clone()));
        Harness {
            source,
            cell,
            metrics,
            clock,
            start,
            shutdown,
        }
    }

    impl Harness {
        fn call_offsets(&self) -> Vec<Duration> {
            self.source
                .calls
                .lock()
                .unwrap()
                .iter()
                .map(|t| saturating_sub(*t, self.start))
                .collect()
        }
        fn key(&self) -> Option<String> {
            self.cell
                .load()
                .as_ref()
                .map(|h| h.credentials().access_key_id().to_owned())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_at_half_life_while_credentials_keep_arriving() {
        let h = start(vec![
            Ok(Duration::from_secs(3600)),
            Ok(Duration::from_secs(10)),
            Ok(Duration::from_secs(3600)),
        ]);
        tokio::time::sleep(Duration::from_secs(1805)).await;
        assert_eq!(h.key().as_deref(), Some("AKID10"));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(h.key().as_deref(), Some("AKID3600"));
        assert_eq!(
            h.call_offsets(),
            [0, 1800, 1805].map(Duration::from_secs).to_vec()
        );
        let m = &h.metrics.credentials;
        assert_eq!(m.refreshes.with_label_values(&["success"]).get(), 3);
        assert_eq!(
            m.expiry_timestamp.get(),
            unix_seconds(h.clock.now()) - 10.0 + 3600.0
        );
        h.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_old_credentials_while_sts_fails_then_recovers() {
        let h = start(vec![
            Ok(Duration::from_secs(40)),
            Err("IDPCommunicationError"),
            Err("IDPCommunicationError"),
            Err("Throttling"),
            Ok(Duration::from_secs(40)),
        ]);
        // First refresh due at 20 s; failures retry after 0.2, 0.4, 0.8 s.
        tokio::time::sleep(Duration::from_millis(20_700)).await;
        assert_eq!(h.call_offsets().len(), 4);
        let now = h.clock.now();
        assert!(
            h.cell.usable(now).is_ok(),
            "old credentials must stay usable"
        );
        assert!(h.cell.last_error().is_some());
        assert_eq!(h.metrics.credentials.consecutive_failures.get(), 3);
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            h.call_offsets(),
            [0, 20_000, 20_200, 20_600, 21_400].map(Duration::from_millis)
        );
        assert_eq!(h.metrics.credentials.consecutive_failures.get(), 0);
        assert!(h.cell.last_error().is_none());
        assert_eq!(
            h.metrics
                .credentials
                .refresh_errors
                .with_label_values(&["transient"])
                .get(),
            3
        );
        h.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn cold_start_failures_leave_the_cell_empty_until_the_first_success() {
        let h = start(vec![
            Err("IDPCommunicationError"),
            Ok(Duration::from_secs(60)),
        ]);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(h.cell.usable(h.clock.now()).is_err());
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(h.cell.usable(h.clock.now()).is_ok());
        h.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_refresh_request_is_honoured_but_rate_limited() {
        let h = start(vec![
            Ok(Duration::from_secs(3600)),
            Ok(Duration::from_secs(3600)),
            Ok(Duration::from_secs(3600)),
        ]);
        tokio::time::sleep(Duration::from_millis(10)).await;
        h.cell.request_refresh();
        let seen = h.cell.generation();
        assert!(h.cell.wait_newer_than(seen).await);
        // Requested 10 ms after the first fetch: held back to 1 s after it.
        assert_eq!(h.call_offsets(), [0, 1000].map(Duration::from_millis));
        tokio::time::sleep(Duration::from_secs(5)).await;
        h.cell.request_refresh();
        assert!(h.cell.wait_newer_than(seen + 1).await);
        assert_eq!(h.call_offsets(), [0, 1000, 6000].map(Duration::from_millis));
        h.shutdown.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn retries_several_times_before_held_credentials_expire() {
        // 8 s credentials: refresh at 4 s; with 4 s left, waits are capped at 1 s.
        let mut script = vec![Ok(Duration::from_secs(8))];
        script.extend(std::iter::repeat_n(Err("InternalFailure"), 20));
        let h = start(script);
        tokio::time::sleep(Duration::from_secs(8)).await;
        let calls = h.call_offsets();
        let before_expiry = calls
            .iter()
            .filter(|t| **t > Duration::from_secs(4) && **t < Duration::from_secs(8))
            .count();
        assert!(before_expiry >= 3, "{calls:?}");
        assert!(h.cell.usable(h.clock.now()).is_err());
        h.shutdown.cancel();
    }
}
