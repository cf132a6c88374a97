//! The webhook's servers: HTTPS `POST /mutate` for the API server (see
//! [`super::admission`]) and a plain-HTTP admin port with `/metrics`,
//! `/healthz`, `/readyz`, both on the shared serving kit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::admission::{router, AdmissionState, LookupErrorPolicy};
use super::lookup::ClusterLookup;
use super::{ReviewTiming, SidecarDefaults};
use crate::admin::{Ready, Status};
use crate::config::settings::webhook as webhook_settings;
use crate::server::tls::{self, CertError, HandshakeLimits, ReloadingCert, TlsListener};
use crate::server::{self, Limits, ServeError};

/// The admin server stops this long after the webhook drained.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// The TLS material of the webhook server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// How often both files are re-read; a change is applied without restart.
    pub reload_interval: Duration,
}

/// Configuration of `bedrock-broker webhook`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    /// HTTPS for the API server.
    pub listen: SocketAddr,
    /// Plain HTTP for probes and Prometheus.
    pub admin_listen: SocketAddr,
    pub tls: TlsFiles,
    pub on_lookup_error: LookupErrorPolicy,
    /// Timeout of a direct API read when the watch cache misses.
    pub lookup_timeout: Duration,
    /// How long open requests may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// How long new connections are still accepted after SIGTERM, before
    /// the grace period starts.
    pub shutdown_delay: Duration,
    /// Limits of the HTTPS listener (per-peer counting happens at the TLS
    /// handshake, see `handshake`).
    pub limits: Limits,
    pub handshake: HandshakeLimits,
    pub admin_limits: Limits,
    /// How long receiving a review body may take.
    pub review_timing: ReviewTiming,
    /// Bytes of review bodies held at once.
    pub review_budget: usize,
    pub sidecar: SidecarDefaults,
}

/// Ready once the namespace, ServiceAccount and LimitRange caches have
/// synced.
struct LookupReady<L>(Arc<L>);

impl<L: ClusterLookup> Ready for LookupReady<L> {
    fn status(&self) -> Status {
        let synced = self.0.ready();
        Status::new(synced).with("caches_synced", synced)
    }
}

/// Why the webhook could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot load the serving certificate: {0}")]
    Certificate(#[from] CertError),
    #[error("cannot create a Kubernetes client (in-cluster service account, or KUBECONFIG): {0}")]
    Kube(#[from] kube::Error),
}

/// A webhook whose sockets are bound and certificate loaded, not serving yet.
pub struct WebhookServer {
    /// HTTPS for the API server.
    listener: TcpListener,
    /// Plain HTTP for probes and Prometheus.
    admin_listener: TcpListener,
    /// Loaded at bind time, so a bad certificate fails start-up.
    cert: Arc<ReloadingCert>,
    /// aws-lc-rs, the one crypto provider this binary is built with.
    provider: Arc<rustls::crypto::CryptoProvider>,
    config: WebhookConfig,
}

impl WebhookServer {
    /// Loads the certificate and binds both ports (port 0 picks a free one).
    pub async fn bind(config: &WebhookConfig) -> Result<Self, WebhookError> {
        let provider = crate::tls::provider();
        let cert = ReloadingCert::load(&config.tls.cert, &config.tls.key, provider.clone())?;
        let listener = server::bind(config.listen, "webhook")
            .await
            .map_err(|e| e.set_by(&webhook_settings::LISTEN))?;
        let admin_listener = server::bind(config.admin_listen, "webhook admin server")
            .await
            .map_err(|e| e.set_by(&webhook_settings::ADMIN_LISTEN))?;
        Ok(Self {
            listener,
            admin_listener,
            cert: Arc::new(cert),
            provider,
            config: config.clone(),
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        server::local_addr(&self.listener, "webhook")
    }

    pub fn admin_addr(&self) -> Result<SocketAddr, ServeError> {
        server::local_addr(&self.admin_listener, "webhook admin server")
    }

    /// Serves until `shutdown`, then drains for at most the grace period.
    /// `run_webhook` hands it a token that fires the shutdown delay after
    /// the signal ([`linger`]).
    pub async fn run<L: ClusterLookup>(
        self,
        state: AdmissionState<L>,
        shutdown: CancellationToken,
    ) -> Result<(), WebhookError> {
        let tls_config = tls::server_config(self.cert.clone(), self.provider.clone())
            .map_err(CertError::Config)?;
        let acceptor = TlsAcceptor::from(Arc::new(tls_config));
        let listen = self.local_addr()?;
        let admin = self.admin_addr()?;
        let config = self.config;
        tracing::info!(%listen, %admin, cert = %config.tls.cert.display(), "webhook serving");

        tokio::spawn(self.cert.clone().watch(
            config.tls.reload_interval,
            state.metrics.tls_reloads.clone(),
            shutdown.clone(),
        ));
        let admin_stop = CancellationToken::new();
        let admin_router = crate::admin::router(
            state.metrics.registry.clone(),
            Arc::new(LookupReady(state.lookup.clone())),
        );
        let admin_server = tokio::spawn(server::serve(
            self.admin_listener,
            server::router_service(admin_router),
            config.admin_limits.clone(),
            admin_stop.clone(),
            ADMIN_GRACE,
            "webhook admin",
            server::LimitCounters::refused(
                state
                    .metrics
                    .connections_refused
                    .with_label_values(&["admin"]),
            ),
        ));
        let refused = state
            .metrics
            .connections_refused
            .with_label_values(&["webhook"]);
        let tls_listener = TlsListener::spawn(
            self.listener,
            acceptor,
            config.handshake.clone(),
            shutdown.clone(),
            refused.clone(),
        );
        server::serve(
            tls_listener,
            server::router_service(router(state)),
            config.limits.clone(),
            shutdown,
            config.shutdown_grace,
            "webhook",
            server::LimitCounters::refused(refused),
        )
        .await;
        admin_stop.cancel();
        let _ = admin_server.await;
        Ok(())
    }
}

/// A token cancelled `delay` after `shutdown`: until then the listener
/// still accepts, for the API server's connections that reach the pod
/// while it leaves the Service's endpoints, and the caches and watches the
/// reviews read keep up. A second signal still ends the process at once.
pub fn linger(shutdown: CancellationToken, delay: Duration) -> CancellationToken {
    if delay.is_zero() {
        return shutdown;
    }
    let stop = CancellationToken::new();
    let done = stop.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        tracing::info!(
            delay_s = delay.as_secs_f64(),
            "still accepting reviews while the pod leaves the Service's endpoints"
        );
        tokio::time::sleep(delay).await;
        done.cancel();
    });
    stop
}
