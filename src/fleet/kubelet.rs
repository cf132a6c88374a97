//! The kubelet's side of a pod's projected service account token: issue it
//! at start, rotate it on the kubelet's schedule, and let the sidecar's
//! rotation trigger (`token_watch::on_rotation`) see each rotation.
//!
//! The kubelet's token manager refreshes a token once it is older than 80 %
//! of its lifetime or older than 24 h, less up to 10 s of jitter; the new
//! token reaches the volume when the kubelet next syncs the pod (every
//! minute, plus up to half a minute of jitter). The sidecar's watch polls
//! the file, so it notices within one poll interval.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use base64::Engine;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, TokioClock};
use crate::credentials::token_watch;
use crate::credentials::{BoxFuture, CredentialCell, SourceError, TokenRead};
use crate::secret::Secret;

/// The kubelet refreshes tokens older than this regardless of their lifetime.
const MAX_TOKEN_AGE: Duration = Duration::from_secs(24 * 3600);
/// The token manager's jitter.
const REFRESH_JITTER: Duration = Duration::from_secs(10);
/// Pod sync period plus its jitter: when a refreshed token reaches the volume.
const SYNC_DELAY: Duration = Duration::from_secs(90);

/// One pod's projected token, as the sidecar reads it.
#[derive(Debug)]
pub struct ProjectedToken {
    current: ArcSwap<Secret>,
}

impl TokenRead for ProjectedToken {
    fn read(&self) -> BoxFuture<'_, Result<Secret, SourceError>> {
        let token = (**self.current.load()).clone();
        Box::pin(async move { Ok(token) })
    }
}

/// How the kubelet treats one pod's token.
#[derive(Debug, Clone)]
pub struct Kubelet {
    /// `expirationSeconds` of the projected volume.
    pub token_ttl: Duration,
    /// The sidecar's `--token-watch-interval`.
    pub watch_interval: Duration,
}

/// A JWT whose payload carries what the sidecar and the STS model read.
fn jwt(pod: u32, issued: SystemTime, ttl: Duration) -> Secret {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let iat = issued
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let payload = format!(
        "{{\"aud\":[\"sts.amazonaws.com\"],\"exp\":{},\"iat\":{iat},\
         \"iss\":\"https://oidc.fleet.example\",\"sub\":\"system:serviceaccount:fleet:pod-{pod}\"}}",
        iat + ttl.as_secs()
    );
    let header = b64.encode("{\"alg\":\"RS256\",\"kid\":\"fleet\"}");
    Secret::new(format!("{header}.{}.simulated", b64.encode(payload)))
}

impl Kubelet {
    /// The token a pod starts with.
    pub fn issue(&self, pod: u32, now: SystemTime) -> Arc<ProjectedToken> {
        Arc::new(ProjectedToken {
            current: ArcSwap::from_pointee(jwt(pod, now, self.token_ttl)),
        })
    }

    /// When the kubelet puts a new token in place, counted from the last one.
    fn next_rotation(&self, rng: &mut fastrand::Rng) -> Duration {
        let due = self.token_ttl.mul_f64(0.8).min(MAX_TOKEN_AGE);
        due.saturating_sub(REFRESH_JITTER.mul_f64(rng.f64())) + SYNC_DELAY.mul_f64(rng.f64())
    }

    /// Rotates `token` until `shutdown`; each rotation is noticed by the
    /// watch within a poll interval and handed to the sidecar's trigger.
    pub async fn run(
        self,
        pod: u32,
        token: Arc<ProjectedToken>,
        cell: Arc<CredentialCell>,
        clock: TokioClock,
        mut rng: fastrand::Rng,
        shutdown: CancellationToken,
    ) {
        let mut issued = tokio::time::Instant::now();
        loop {
            let due = issued + self.next_rotation(&mut rng);
            let noticed = self.watch_interval.mul_f64(rng.f64());
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = shutdown.cancelled() => return,
            }
            issued = tokio::time::Instant::now();
            token
                .current
                .store(Arc::new(jwt(pod, clock.now(), self.token_ttl)));
            tokio::select! {
                _ = tokio::time::sleep(noticed) => {}
                _ = shutdown.cancelled() => return,
            }
            token_watch::on_rotation(&cell);
        }
    }
}
