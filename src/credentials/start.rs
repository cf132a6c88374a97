//! Starting the credential machinery of a sidecar: the refresher and the
//! token watch as background tasks, and the readiness they make true.

use std::sync::Arc;
use std::time::Duration;

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
) -> Result<Readiness, StartError> {
    let source = match &config.mode {
        CredentialMode::SigV4(source) => source,
        CredentialMode::ApiKey(_) => {
            // An API key never expires as far as we can tell.
            metrics.expiry_timestamp.set(f64::INFINITY);
            metrics
                .last_refresh_timestamp
                .set(unix_seconds(clock.now()));
            return Ok(Readiness::ApiKey);
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
    tokio::spawn(refresher.run(shutdown.clone()));
    if let (SigV4Source::WebIdentity(w), Some(interval)) = (source, token_watch_interval) {
        let watch = TokenWatch::start(w.token_file.clone()).await;
        tokio::spawn(watch.run(cell.clone(), interval, shutdown));
    }
    Ok(Readiness::Credentials { cell, clock })
}
