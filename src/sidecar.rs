//! `bedrock-broker sidecar`: wires the refresher, the proxy and the admin
//! server together and shuts them down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::clock::{unix_seconds, SharedClock};
use crate::container_credentials::ContainerCredentialsConfig;
use crate::credentials::token_watch::TokenWatch;
use crate::credentials::{
    source_for, CredentialCell, CredentialMode, CredentialsConfig, RefreshPolicy, Refresher,
    SigV4Source,
};
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy};
use crate::secret::Secret;
use crate::{container_credentials, serve};

/// Configuration of `bedrock-broker sidecar`.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The proxy's address: loopback, so only the pod reaches the signer.
    pub listen: SocketAddr,
    /// Metrics and probes, reachable from outside the pod.
    pub admin_listen: SocketAddr,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace: Duration,
    pub credentials: CredentialsConfig,
    pub refresh: RefreshPolicy,
    /// `None` disables watching the token file for rotations.
    pub token_watch_interval: Option<Duration>,
    /// The optional loopback container-credentials endpoint for other SDKs.
    pub container_credentials: Option<ContainerCredentialsConfig>,
    pub proxy: proxy::Config,
}

/// A sidecar whose listeners are bound but which is not serving yet.
pub struct Sidecar {
    config: SidecarConfig,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    /// The container-credentials endpoint and its token, when enabled.
    credentials_endpoint: Option<(TcpListener, Secret)>,
    clock: SharedClock,
    metrics: Metrics,
}

impl Sidecar {
    /// Binds both listeners (port 0 picks a free port).
    pub async fn bind(config: SidecarConfig, clock: SharedClock) -> anyhow::Result<Self> {
        let proxy_listener = serve::bind(config.listen, "proxy").await?;
        let admin_listener = serve::bind(config.admin_listen, "admin server").await?;
        let credentials_endpoint = match &config.container_credentials {
            None => None,
            Some(cc) => {
                let token = container_credentials::load_or_create_token(&cc.token_file)
                    .context("BEDROCK_BROKER_CREDENTIALS_TOKEN_FILE")?;
                Some((serve::bind(cc.listen, "credentials endpoint").await?, token))
            }
        };
        Ok(Self {
            config,
            proxy_listener,
            admin_listener,
            credentials_endpoint,
            clock,
            metrics: Metrics::new(),
        })
    }

    pub fn proxy_addr(&self) -> std::io::Result<SocketAddr> {
        self.proxy_listener.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Runs until `shutdown` fires, then drains within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self {
            config,
            proxy_listener,
            admin_listener,
            credentials_endpoint,
            clock,
            metrics,
        } = self;
        let creds = &config.credentials;
        for warning in &creds.warnings {
            tracing::warn!("{warning}");
        }

        let cell = Arc::new(CredentialCell::new());
        let background = CancellationToken::new();
        let readiness = match &creds.mode {
            CredentialMode::ApiKey(_) => {
                // An API key never expires as far as we can tell.
                metrics.credentials.expiry_timestamp.set(f64::INFINITY);
                metrics
                    .credentials
                    .last_refresh_timestamp
                    .set(unix_seconds(clock.now()));
                Readiness::ApiKey
            }
            CredentialMode::SigV4(source_config) => {
                let region = creds
                    .region
                    .as_ref()
                    .context("a region is required for SigV4")?;
                let source = source_for(source_config, creds, region);
                let refresher = Refresher::new(
                    source,
                    cell.clone(),
                    config.refresh.clone(),
                    clock.clone(),
                    metrics.credentials.clone(),
                );
                tokio::spawn(refresher.run(background.clone()));
                if let (SigV4Source::WebIdentity(w), Some(interval)) =
                    (source_config, config.token_watch_interval)
                {
                    let watch = TokenWatch::start(w.token_file.clone()).await;
                    tokio::spawn(watch.run(cell.clone(), interval, background.clone()));
                }
                Readiness::Credentials {
                    cell: cell.clone(),
                    clock: clock.clone(),
                }
            }
        };

        let (cell_for_endpoint, clock_for_endpoint) = (cell.clone(), clock.clone());
        let tls = crate::tls::client_config(creds.ca_bundle.as_ref().map(|b| b.pem.as_slice()))
            .context("building the TLS client configuration")?;
        let clients = proxy::upstream_clients(tls, config.proxy.connect_timeout);
        let runtime = config.proxy.routes.runtime.clone();
        let proxy = Arc::new(Proxy::new(
            config.proxy.clone(),
            cell,
            clients,
            clock,
            metrics.proxy.clone(),
        ));

        tracing::info!(
            proxy = %proxy_listener.local_addr()?,
            admin = %admin_listener.local_addr()?,
            upstream = %runtime,
            signing_name = %runtime.signing_name,
            mode = creds.mode.describe(),
            version = env!("CARGO_PKG_VERSION"),
            "bedrock-broker sidecar listening"
        );

        let admin_router = admin::router(metrics, readiness);
        // The admin server outlives the proxy's drain, so probes and a last
        // scrape still work while in-flight streams finish.
        let admin_stop = CancellationToken::new();
        let admin_shutdown = admin_stop.clone();
        let admin = tokio::spawn(async move {
            axum::serve(admin_listener, admin_router)
                .with_graceful_shutdown(async move { admin_shutdown.cancelled().await })
                .await
        });

        if let Some((listener, token)) = credentials_endpoint {
            tracing::info!(address = %listener.local_addr()?, path = container_credentials::PATH, "container credentials endpoint listening");
            let router = container_credentials::router(
                cell_for_endpoint.clone(),
                clock_for_endpoint.clone(),
                token,
            );
            let stop = admin_stop.clone();
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            });
        }

        let service = service_fn(move |req| proxy.clone().handle(req));
        serve::serve(
            proxy_listener,
            service,
            shutdown.clone(),
            config.shutdown_grace,
            "proxy",
        )
        .await;

        background.cancel();
        admin_stop.cancel();
        match tokio::time::timeout(std::time::Duration::from_secs(1), admin).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin server stopped with an error"),
            Ok(_) => {}
            Err(_) => tracing::warn!("admin server did not stop within 1s"),
        }
        tracing::info!("bedrock-broker sidecar stopped");
        Ok(())
    }
}
