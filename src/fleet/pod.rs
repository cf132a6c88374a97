//! One simulated sidecar: the production `WebIdentitySource`,
//! `CredentialCell` and `Refresher`, its kubelet, and a monitor that records
//! when the pod could sign a request.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::kubelet::Kubelet;
use crate::clock::{saturating_sub, Clock, TokioClock};
use crate::config::aws::SessionName;
use crate::credentials::{CredentialCell, RefreshPolicy, Refresher, SessionOptions};
use crate::credentials::{WebIdentityConfig, WebIdentitySource};
use crate::metrics::CredentialMetrics;

/// Whether a pod can sign requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    /// Started, no credentials yet: not ready, serves nothing.
    NotYet,
    Usable,
    /// Had credentials and lost them: requests fail.
    Expired,
}

/// A pod's signing state changed.
#[derive(Debug, Clone, Copy)]
pub struct Change {
    pub at_ms: u64,
    pub pod: u32,
    pub state: Signing,
}

/// Everything the pods of one run share.
#[derive(Debug)]
pub struct Fleet {
    pub clock: TokioClock,
    pub origin: Instant,
    pub web_identity: WebIdentityConfig,
    pub session: SessionOptions,
    pub sts: aws_sdk_sts::Client,
    pub policy: RefreshPolicy,
    pub metrics: CredentialMetrics,
    pub kubelet: Kubelet,
    pub seed: u64,
    pub shutdown: CancellationToken,
    changes: Mutex<Vec<Change>>,
}

impl Fleet {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        clock: TokioClock,
        web_identity: WebIdentityConfig,
        session: SessionOptions,
        sts: aws_sdk_sts::Client,
        policy: RefreshPolicy,
        metrics: CredentialMetrics,
        kubelet: Kubelet,
        seed: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            clock,
            origin: Instant::now(),
            web_identity,
            session,
            sts,
            policy,
            metrics,
            kubelet,
            seed,
            shutdown: CancellationToken::new(),
            changes: Mutex::new(Vec::new()),
        })
    }

    /// Every state change so far.
    pub fn changes(&self) -> Vec<Change> {
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn record(&self, pod: u32, state: Signing) {
        let at_ms = self.origin.elapsed().as_millis() as u64;
        self.changes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Change { at_ms, pod, state });
    }

    /// A generator for one purpose of one pod, so runs replay exactly.
    fn rng(&self, pod: u32, purpose: u64) -> fastrand::Rng {
        let mix = self.seed ^ (u64::from(pod) << 8) ^ purpose;
        fastrand::Rng::with_seed(mix.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Starts pod `pod` after `after`.
    pub fn spawn(self: &Arc<Self>, pod: u32, after: Duration) {
        let fleet = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(after) => fleet.start(pod),
                _ = fleet.shutdown.cancelled() => {}
            }
        });
    }

    fn start(self: &Arc<Self>, pod: u32) {
        let cell = Arc::new(CredentialCell::new());
        let token = self.kubelet.issue(pod, self.clock.now());
        let mut web_identity = self.web_identity.clone();
        web_identity.session_name =
            SessionName::for_pod(Some("fleet"), Some(&format!("pod-{pod}")));
        let source = WebIdentitySource::new(web_identity, self.session.clone(), self.sts.clone())
            .with_token(token.clone());
        let refresher = Refresher::new(
            Arc::new(source),
            cell.clone(),
            self.policy.clone(),
            Arc::new(self.clock.clone()),
            self.metrics.clone(),
        )
        .with_rng(self.rng(pod, 1));
        self.record(pod, Signing::NotYet);
        tokio::spawn(refresher.run(self.shutdown.clone()));
        let kubelet = self.kubelet.clone().run(
            pod,
            token,
            cell.clone(),
            self.clock.clone(),
            self.rng(pod, 2),
            self.shutdown.clone(),
        );
        tokio::spawn(kubelet);
        tokio::spawn(self.clone().monitor(pod, cell));
    }

    /// Records each change of whether the pod can sign: on every store and
    /// at every expiry.
    async fn monitor(self: Arc<Self>, pod: u32, cell: Arc<CredentialCell>) {
        let mut last = Signing::NotYet;
        loop {
            let seen = cell.generation();
            let now = self.clock.now();
            let (state, expires) = match cell.load().as_deref() {
                None => (Signing::NotYet, None),
                Some(held) if held.is_usable_at(now) => (Signing::Usable, held.expiry()),
                Some(_) => (Signing::Expired, None),
            };
            if state != last {
                self.record(pod, state);
                last = state;
            }
            let until_expiry = expires.map(|e| saturating_sub(e, now));
            tokio::select! {
                _ = cell.wait_newer_than(seen) => {}
                _ = tokio::time::sleep(until_expiry.unwrap_or_default()), if until_expiry.is_some() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}
