//! `bedrock-broker sidecar`: wires the credential machinery, the proxy and
//! the admin server together, and shuts them down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::config::settings::sidecar as sidecar_settings;
use crate::container_credentials::{self, ContainerCredentialsConfig, TokenFileError};
use crate::credentials::{
    self, CredentialCell, CredentialMode, CredentialsConfig, RefreshPolicy, SigV4Source, StartError,
};
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy};
use crate::secret::Secret;
use crate::server::{self, Limits, ServeError};

/// Configuration of `bedrock-broker sidecar`.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The proxy's address: loopback, so only the pod reaches the signer.
    pub listen: SocketAddr,
    /// Metrics and probes, reachable from outside the pod.
    pub admin_listen: SocketAddr,
    pub proxy_limits: Limits,
    pub admin_limits: Limits,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace: Duration,
    /// After the signal, how long the proxy keeps accepting while clients
    /// still hold connections to it (see [`linger`]).
    pub shutdown_delay: Duration,
    pub credentials: CredentialsConfig,
    pub refresh: RefreshPolicy,
    /// `None` disables watching the token file for rotations.
    pub token_watch_interval: Option<Duration>,
    /// The optional loopback container-credentials endpoint for other SDKs.
    pub container_credentials: Option<ContainerCredentialsConfig>,
    pub proxy: proxy::Config,
    /// Settings that work but should change, said once at start (the
    /// credential sources' own are in `credentials.warnings`).
    pub warnings: Vec<String>,
}

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("--credentials-token-file: {0}")]
    TokenFile(#[from] TokenFileError),
    #[error(transparent)]
    Credentials(#[from] StartError),
    #[error("building the TLS client configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error(
        "the {0} panicked while the sidecar served (a bug); stopped so that the container restarts"
    )]
    BackgroundStopped(&'static str),
}

/// Stops the admin and credentials servers after the proxy drained: probes
/// and a last scrape still work while in-flight streams finish.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// A sidecar whose listeners are bound but which is not serving yet.
pub struct Sidecar {
    config: SidecarConfig,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    /// The container-credentials endpoint and its token, when enabled.
    credentials_endpoint: Option<(TcpListener, Secret, Limits)>,
    clock: SharedClock,
    metrics: Metrics,
}

/// The container-credentials endpoint, stopped with the admin server.
fn serve_credentials(
    listener: TcpListener,
    limits: Limits,
    token: Secret,
    cell: Arc<CredentialCell>,
    clock: SharedClock,
    stop: &CancellationToken,
    counters: server::LimitCounters,
) -> Result<tokio::task::JoinHandle<()>, ServeError> {
    let address = server::local_addr(&listener, "credentials endpoint")?;
    tracing::info!(%address, path = container_credentials::PATH, "container credentials endpoint listening");
    let router = container_credentials::router(cell, clock, token);
    Ok(tokio::spawn(server::serve(
        listener,
        server::router_service(router),
        limits,
        stop.clone(),
        ADMIN_GRACE,
        "credentials endpoint",
        counters,
    )))
}

/// The counters of a listener inside the pod (no per-peer limit).
fn limit_counters(metrics: &Metrics, listener: &str) -> server::LimitCounters {
    server::LimitCounters {
        refused: metrics.connections_refused.with_label_values(&[listener]),
        reclaimed: Some(metrics.connections_reclaimed.with_label_values(&[listener])),
        open: Some(metrics.connections_open.with_label_values(&[listener])),
        unread: Some(server::UnreadCounters {
            malformed: metrics
                .unread_requests
                .with_label_values(&[listener, "malformed"]),
            too_large: metrics
                .unread_requests
                .with_label_values(&[listener, "too_large"]),
        }),
    }
}

/// How often a lingering proxy looks whether its clients are gone.
const LINGER_POLL: Duration = Duration::from_millis(100);

/// Cancels `stop` once `shutdown` has fired and the clients of the proxy
/// and of the container-credentials endpoint (both `open`) hold no
/// connection any more, or `delay` has passed. In a classic-mode pod the
/// app is told to stop at the same moment as the sidecar and may still
/// call Bedrock while it winds down; its pool's connections close when it
/// exits. A native sidecar is stopped after the app has exited: nothing is
/// connected, and it stops at once.
async fn linger(
    shutdown: CancellationToken,
    stop: CancellationToken,
    open: [prometheus::IntGauge; 2],
    delay: Duration,
) {
    shutdown.cancelled().await;
    let connected = || open.iter().map(prometheus::IntGauge::get).sum::<i64>();
    if !delay.is_zero() && connected() > 0 {
        tracing::info!(
            open = connected(),
            delay_s = delay.as_secs_f64(),
            "still accepting while clients hold connections"
        );
        let deadline = tokio::time::Instant::now() + delay;
        while connected() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(LINGER_POLL).await;
        }
    }
    stop.cancel();
}

/// The HTTPS clients the proxy sends upstream with, trusting the configured
/// CA bundle (for a private endpoint) on top of the platform roots.
fn upstream_clients(config: &SidecarConfig) -> Result<proxy::UpstreamClients, SidecarError> {
    let ca_bundle = config.credentials.ca_bundle.as_ref();
    let tls = crate::tls::client_config(ca_bundle.map(|b| b.pem.as_slice()))?;
    Ok(proxy::upstream_clients(
        tls,
        config.proxy.connect_timeout,
        config.credentials.egress_proxy.clone(),
        config.proxy.upstream_max_idle,
    ))
}

/// Where the refresher's STS calls go, or `none` when it makes none
/// (static keys, an API key, aws-config providers, unless a role is
/// chained).
fn sts_endpoint(credentials: &CredentialsConfig) -> String {
    let web_identity = matches!(
        credentials.mode,
        CredentialMode::SigV4(SigV4Source::WebIdentity(_))
    );
    match &credentials.region {
        Some(region) if web_identity || credentials.chain.is_some() => {
            crate::credentials::sts::endpoint(credentials, region)
        }
        _ => "none".to_owned(),
    }
}

/// One start-up line that says where everything listens and what it signs
/// for: the first thing an operator looks for in the logs.
fn log_listening(
    config: &SidecarConfig,
    proxy: &TcpListener,
    admin: &TcpListener,
) -> Result<(), ServeError> {
    let runtime = &config.proxy.routes.runtime;
    let scheduler = tokio::runtime::Handle::current();
    tracing::info!(
        proxy = %server::local_addr(proxy, "proxy")?,
        admin = %server::local_addr(admin, "admin server")?,
        upstream = %runtime,
        signing_name = %runtime.signing_name,
        mode = config.credentials.mode.describe(),
        egress_proxy = config
            .credentials
            .egress_proxy
            .as_ref()
            .map_or("none", |p| p.address()),
        sts_endpoint = sts_endpoint(&config.credentials),
        version = env!("CARGO_PKG_VERSION"),
        scheduler = ?scheduler.runtime_flavor(),
        workers = scheduler.metrics().num_workers(),
        "bedrock-broker sidecar listening"
    );
    Ok(())
}

impl Sidecar {
    /// Binds every listener (port 0 picks a free port).
    pub async fn bind(config: SidecarConfig, clock: SharedClock) -> Result<Self, SidecarError> {
        let proxy_listener = server::bind(config.listen, "proxy")
            .await
            .map_err(|e| e.set_by(&sidecar_settings::LISTEN))?;
        let admin_listener = server::bind(config.admin_listen, "admin server")
            .await
            .map_err(|e| e.set_by(&sidecar_settings::ADMIN_LISTEN))?;
        let credentials_endpoint = match &config.container_credentials {
            None => None,
            Some(cc) => {
                let token = container_credentials::load_or_create_token(&cc.token_file)?;
                let listener = server::bind(cc.listen, "credentials endpoint")
                    .await
                    .map_err(|e| e.set_by(&sidecar_settings::CREDENTIALS_LISTEN))?;
                Some((listener, token, cc.limits.clone()))
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

    pub fn proxy_addr(&self) -> Result<SocketAddr, ServeError> {
        server::local_addr(&self.proxy_listener, "proxy")
    }

    pub fn admin_addr(&self) -> Result<SocketAddr, ServeError> {
        server::local_addr(&self.admin_listener, "admin server")
    }

    /// Runs until `shutdown` fires, then drains within the grace period.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), SidecarError> {
        let Self {
            config,
            proxy_listener,
            admin_listener,
            credentials_endpoint,
            clock,
            metrics,
        } = self;
        for warning in config.credentials.warnings.iter().chain(&config.warnings) {
            tracing::warn!("{warning}");
        }
        let background = CancellationToken::new();
        let cell = Arc::new(CredentialCell::new());
        let (readiness, mut credential_tasks) = credentials::start(
            &config.credentials,
            config.refresh.clone(),
            config.token_watch_interval,
            cell.clone(),
            clock.clone(),
            metrics.credentials.clone(),
            background.clone(),
        )
        .await?;

        let clients = upstream_clients(&config)?;
        log_listening(&config, &proxy_listener, &admin_listener)?;
        let proxy = Arc::new(Proxy::new(
            config.proxy.clone(),
            cell.clone(),
            clients,
            clock.clone(),
            metrics.proxy.clone(),
        ));

        let admin_stop = CancellationToken::new();
        let admin_router = crate::admin::router(metrics.registry.clone(), Arc::new(readiness));
        let mut side_servers = vec![tokio::spawn(server::serve(
            admin_listener,
            server::router_service(admin_router),
            config.admin_limits.clone(),
            admin_stop.clone(),
            ADMIN_GRACE,
            "admin",
            server::LimitCounters::refused(
                metrics.connections_refused.with_label_values(&["admin"]),
            ),
        ))];
        if let Some((listener, token, limits)) = credentials_endpoint {
            side_servers.push(serve_credentials(
                listener,
                limits,
                token,
                cell,
                clock,
                &admin_stop,
                limit_counters(&metrics, "credentials"),
            )?);
        }

        let service = service_fn(move |req| proxy.clone().handle(req));
        let stop = CancellationToken::new();
        let open =
            ["proxy", "credentials"].map(|l| metrics.connections_open.with_label_values(&[l]));
        tokio::spawn(linger(
            shutdown.clone(),
            stop.clone(),
            open,
            config.shutdown_delay,
        ));
        let serving = server::serve(
            proxy_listener,
            service,
            config.proxy_limits.clone(),
            stop.clone(),
            config.shutdown_grace,
            "proxy",
            limit_counters(&metrics, "proxy"),
        );
        tokio::pin!(serving);
        // A credential task that panicked leaves credentials that age out
        // unseen: drain and stop, so the kubelet restarts the container,
        // rather than serve 503s later for good.
        let failed = tokio::select! {
            () = &mut serving => None,
            task = credential_tasks.panicked() => {
                tracing::error!(task, "a credential task panicked while serving; shutting down");
                stop.cancel();
                serving.await;
                Some(task)
            }
        };

        background.cancel();
        admin_stop.cancel();
        for task in side_servers {
            let _ = task.await;
        }
        if let Some(task) = failed {
            return Err(SidecarError::BackgroundStopped(task));
        }
        tracing::info!("bedrock-broker sidecar stopped");
        Ok(())
    }
}
