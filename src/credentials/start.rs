//! Starting the credential machinery of a sidecar: the refresher and the
//! token watch as background tasks, and the readiness they make true.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::token_watch::TokenWatch;
use super::{source_for, CredentialCell, CredentialMode, CredentialsConfig, RefreshPolicy};
use super::{ApiKey, ApiKeyKind, Refresher, SigV4Source};
use crate::admin::{Ready, Status};
use crate::clock::{unix_seconds, SharedClock};
use crate::metrics::CredentialMetrics;

/// Whether the sidecar can authenticate requests now.
pub enum Readiness {
    /// SigV4: ready while the cell holds unexpired credentials, so a pod
    /// whose refreshes keep failing goes back to not ready.
    Credentials {
        cell: Arc<CredentialCell>,
        clock: SharedClock,
    },
    /// A configured API key: ready as soon as the process serves, until
    /// the key's own expiry when it says one (a short-term key), which
    /// nothing here can renew.
    ApiKey {
        expiry: Option<SystemTime>,
        clock: SharedClock,
    },
}

impl Ready for Readiness {
    fn status(&self) -> Status {
        match self {
            Self::ApiKey { expiry, clock } => match expiry {
                Some(at) if clock.now() >= *at => Status::new(false)
                    .with("reason", api_key_expired(*at))
                    .with("mode", "api_key"),
                _ => Status::new(true).with("mode", "api_key"),
            },
            Self::Credentials { cell, clock } => match cell.usable(clock.now()) {
                Ok(_) => Status::new(true).with("mode", "sigv4"),
                Err(why) => {
                    let status = Status::new(false).with("reason", why.describe());
                    match cell.last_error() {
                        Some(err) => status.with("last_error", err.as_str()),
                        None => status,
                    }
                }
            },
        }
    }
}

/// The credential machinery's background tasks (none for an API key). One
/// that panics (a bug) would leave the sidecar serving while its
/// credentials age out unseen, so the sidecar watches them and stops
/// ([`Background::panicked`]). Ending is normal: the refresher of
/// credentials that never expire (static keys) ends after its one fetch.
#[derive(Default)]
pub struct Background {
    tasks: JoinSet<(&'static str, bool)>,
}

impl Background {
    fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(async move {
            let panicked = AssertUnwindSafe(task).catch_unwind().await.is_err();
            (name, panicked)
        });
    }

    /// Resolves with a task's name when it panics; never, if none does.
    pub async fn panicked(&mut self) -> &'static str {
        loop {
            match self.tasks.join_next().await {
                Some(Ok((task, true))) => return task,
                Some(Ok((_, false))) => {}
                // Aborted: only the runtime's shutdown does that.
                Some(Err(_)) => {}
                None => return std::future::pending().await,
            }
        }
    }
}

/// Why requests cannot go out with the configured API key any more.
pub fn api_key_expired(at: SystemTime) -> String {
    format!(
        "the configured Bedrock API key (AWS_BEARER_TOKEN_BEDROCK) expired at {}: short-term keys \
         cannot be renewed here; set a fresh key and restart the pod, or give the sidecar a role \
         (web identity), whose credentials it refreshes",
        humantime::format_rfc3339_seconds(at)
    )
}

/// Says at start what the key's expiry means for this pod.
fn announce_api_key(key: &ApiKey, now: SystemTime) {
    match (key.kind(), key.expiry()) {
        (_, Some(e)) if e.at <= now => tracing::warn!("{}", api_key_expired(e.at)),
        (_, Some(e)) => tracing::info!(
            expires_at = %humantime::format_rfc3339_seconds(e.at),
            "the short-term Bedrock API key stops working by this time (sooner if the credentials \
             that minted it expire first); requests are refused with credentials_expired after it"
        ),
        (ApiKeyKind::ShortTerm, None) => tracing::warn!(
            "the short-term Bedrock API key does not say when it expires (it is not shaped as \
             AWS's token generators mint keys): its expiry is not tracked"
        ),
        _ => {}
    }
}

/// Why the credential machinery could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a region is required for SigV4")]
    NoRegion,
}

/// Starts filling `cell` (SigV4) or records that an API key needs no
/// refreshing; background tasks stop when `shutdown` is cancelled.
pub async fn start(
    config: &CredentialsConfig,
    policy: RefreshPolicy,
    token_watch_interval: Option<Duration>,
    cell: Arc<CredentialCell>,
    clock: SharedClock,
    metrics: CredentialMetrics,
    shutdown: CancellationToken,
) -> Result<(Readiness, Background), StartError> {
    let source = match &config.mode {
        CredentialMode::SigV4(source) => source,
        CredentialMode::ApiKey(key) => {
            let expiry = key.expiry();
            // A long-term key's expiry is IAM's to know, not the key's.
            metrics
                .expiry_timestamp
                .set(expiry.map_or(f64::INFINITY, |e| unix_seconds(e.at)));
            metrics
                .lifetime
                .set(expiry.map_or(f64::INFINITY, |e| e.lifetime.as_secs_f64()));
            metrics
                .last_refresh_timestamp
                .set(unix_seconds(clock.now()));
            announce_api_key(key, clock.now());
            let expiry = expiry.map(|e| e.at);
            return Ok((Readiness::ApiKey { expiry, clock }, Background::default()));
        }
    };
    let region = config.region.as_ref().ok_or(StartError::NoRegion)?;
    let refresher = Refresher::new(
        source_for(source, config, region),
        cell.clone(),
        policy,
        clock.clone(),
        metrics,
    );
    let mut background = Background::default();
    background.spawn("credential refresher", refresher.run(shutdown.clone()));
    if let (SigV4Source::WebIdentity(w), Some(interval)) = (source, token_watch_interval) {
        let watch = TokenWatch::start(w.token_file.clone()).await;
        background.spawn("token watch", watch.run(cell.clone(), interval, shutdown));
    }
    Ok((Readiness::Credentials { cell, clock }, background))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_reported_by_name() {
        let mut background = Background::default();
        background.spawn("refresher", async {});
        background.spawn("watch", async {
            tokio::task::yield_now().await;
            panic!("a bug")
        });
        assert_eq!(background.panicked().await, "watch");
        // Tasks that end (a static key's refresher) or never do are fine.
        let mut quiet = Background::default();
        quiet.spawn("refresher", async {});
        quiet.spawn("watch", std::future::pending());
        let mut waiting = Box::pin(quiet.panicked());
        for _ in 0..10 {
            assert!((&mut waiting).now_or_never().is_none());
            tokio::task::yield_now().await;
        }
        let mut none = Background::default();
        assert!(Box::pin(none.panicked()).now_or_never().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_key_is_ready_until_the_expiry_it_carries() {
        let start = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let clock = crate::clock::TokioClock::starting_at(start);
        let ready = Readiness::ApiKey {
            expiry: Some(start + Duration::from_secs(60)),
            clock: Arc::new(clock),
        };
        assert!(ready.status().ready);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(ready.status().ready);
        tokio::time::advance(Duration::from_secs(1)).await;
        let status = ready.status();
        assert!(!status.ready);
        let reason = status.details["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("expired at 2027-01-15T08:01:00Z"),
            "{reason}"
        );
        let forever = Readiness::ApiKey {
            expiry: None,
            clock: Arc::new(crate::clock::TokioClock::starting_at(start)),
        };
        tokio::time::advance(Duration::from_secs(1 << 40)).await;
        assert!(forever.status().ready);
    }
}
