//! `bedrock-broker sidecar`: wires the refresher, the proxy and the admin
//! server together and shuts them down in order.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::clock::{unix_seconds, SharedClock};
use crate::config::{CredentialMode, SidecarConfig, SigV4Source};
use crate::credentials::token_watch::TokenWatch;
use crate::credentials::{source_for, CredentialCell, Refresher};
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy, ProxySettings};
use crate::secret::Secret;
use crate::{container_credentials, serve};

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
        let (readiness, configured_bearer) = match &creds.mode {
            CredentialMode::Bearer(token) => {
                // An API key never expires as far as we can tell.
                metrics.credentials.expiry_timestamp.set(f64::INFINITY);
                metrics
                    .credentials
                    .last_refresh_timestamp
                    .set(unix_seconds(clock.now()));
                let header = proxy::bearer_header(token.expose()).context(
                    "AWS_BEARER_TOKEN_BEDROCK contains characters not allowed in a header",
                )?;
                (Readiness::ApiKey, Some(header))
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
                (
                    Readiness::Credentials {
                        cell: cell.clone(),
                        clock: clock.clone(),
                    },
                    None,
                )
            }
        };

        let (cell_for_endpoint, clock_for_endpoint) = (cell.clone(), clock.clone());
        let tls = crate::tls::client_config(creds.ca_bundle.as_ref().map(|b| b.pem.as_slice()))
            .context("building the TLS client configuration")?;
        let clients = proxy::upstream_clients(tls, config.connect_timeout);
        let proxy = Arc::new(Proxy::new(
            ProxySettings {
                upstream: config.upstream.clone(),
                agent_runtime: config.agent_runtime.clone(),
                mantle: config.mantle.clone(),
                region: creds.region.as_ref().map(|r| r.as_str().to_owned()),
                configured_bearer,
                max_body_bytes: config.max_body_bytes,
                // One STS round trip plus the forced-refresh rate limit.
                self_heal_wait: creds.sts.timeout + std::time::Duration::from_secs(1),
                response_header_timeout: config.response_header_timeout,
                stream_idle_timeout: config.stream_idle_timeout,
                usage_models: config.usage_metrics.clone().map(|allow| {
                    proxy::ModelLabels::new(allow, crate::config::defaults::USAGE_MAX_MODELS)
                }),
            },
            cell,
            clients,
            clock,
            metrics.proxy.clone(),
        ));

        tracing::info!(
            proxy = %proxy_listener.local_addr()?,
            admin = %admin_listener.local_addr()?,
            upstream = %format!("{}://{}{}", config.upstream.scheme, config.upstream.authority, config.upstream.base_path),
            signing_name = %config.upstream.signing_name,
            mode = match &creds.mode { CredentialMode::Bearer(_) => "api-key", CredentialMode::SigV4(s) => s.kind() },
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
