//! Starting the credential machinery of a sidecar: the refresher and the
//! token watch as background tasks, and the readiness they make true.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::token_watch::TokenWatch;
use super::{source_for, CredentialCell, CredentialMode, CredentialsConfig, RefreshPolicy};
use super::{Refresher, SigV4Source};
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
    /// A configured API key: ready as soon as the process serves.
    ApiKey,
}

impl Ready for Readiness {
    fn status(&self) -> Status {
        match self {
            Self::ApiKey => Status::new(true).with("mode", "api_key"),
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
        CredentialMode::ApiKey(_) => {
            // An API key never expires as far as we can tell.
            metrics.expiry_timestamp.set(f64::INFINITY);
            metrics.lifetime.set(f64::INFINITY);
            metrics
                .last_refresh_timestamp
                .set(unix_seconds(clock.now()));
            return Ok((Readiness::ApiKey, Background::default()));
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
}
