//! The admission server: HTTPS `POST /mutate` for the API server, and a
//! separate plain-HTTP admin port with `/metrics`, `/healthz`, `/readyz`.
//!
//! The handler is a thin shell around [`inject::inject`]: parse the review, read
//! what the pod needs from the cluster, call the pure function, answer.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::certs::{self, ReloadingCert};
use super::inject::{self, ClusterFacts, Outcome, Skip};
use super::lookup::{ClusterLookup, LookupError, StringMap};
use super::SidecarDefaults;
use crate::config::parse::ParseError;
use crate::metrics::webhook::WebhookMetrics;

/// The path the MutatingWebhookConfiguration points at.
pub const MUTATE_PATH: &str = "/mutate";
/// AdmissionReviews are bounded by the API server's 3 MiB object limit
/// plus the review envelope (old and new object).
const MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;
/// A client that has not finished the TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more wait in the accept queue.
const MAX_PENDING_HANDSHAKES: usize = 256;

/// What the webhook does with an opted-in pod when it cannot read the
/// namespace or ServiceAccount it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LookupErrorPolicy {
    /// Refuse the pod with a message saying what could not be read; its
    /// controller retries, so the pod is created once the API answers. A pod
    /// never starts without the proxy it expects.
    #[default]
    Deny,
    /// Admit the pod unchanged (with a warning): availability first.
    Skip,
}

impl LookupErrorPolicy {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "deny" => Ok(Self::Deny),
            "skip" => Ok(Self::Skip),
            other => Err(ParseError::not_a(other, "a policy", "deny or skip")),
        }
    }
}

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
    pub sidecar: SidecarDefaults,
}

/// What the admission handler works with.
pub struct AdmissionState<L> {
    /// Sidecar defaults the annotations override.
    pub defaults: SidecarDefaults,
    /// Namespace labels and ServiceAccount annotations.
    pub lookup: Arc<L>,
    /// What to do when the lookup fails.
    pub on_lookup_error: LookupErrorPolicy,
    pub metrics: WebhookMetrics,
}

impl<L> Clone for AdmissionState<L> {
    fn clone(&self) -> Self {
        Self {
            defaults: self.defaults.clone(),
            lookup: self.lookup.clone(),
            on_lookup_error: self.on_lookup_error,
            metrics: self.metrics.clone(),
        }
    }
}

/// The admission routes, without a socket.
pub fn router<L: ClusterLookup>(state: AdmissionState<L>) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate_handler::<L>))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(Arc::new(state))
}

async fn mutate_handler<L: ClusterLookup>(
    State(state): State<Arc<AdmissionState<L>>>,
    body: Bytes,
) -> Response {
    let (status, review) = review(&state, &body).await;
    (status, Json(review)).into_response()
}

/// The result label and the response of one review.
struct Answer {
    result: &'static str,
    response: AdmissionResponse,
}

/// Answers one AdmissionReview body: the HTTP status and the review to send.
pub async fn review<L: ClusterLookup>(
    state: &AdmissionState<L>,
    body: &[u8],
) -> (StatusCode, AdmissionReview<DynamicObject>) {
    let started = Instant::now();
    let (status, answer) = match parse(body) {
        Err((uid, reason)) => {
            let mut response = AdmissionResponse::invalid(reason);
            let status = match uid {
                Some(uid) => {
                    response.uid = uid;
                    StatusCode::OK
                }
                // Nothing to echo: tell the API server the request was bad.
                None => StatusCode::BAD_REQUEST,
            };
            let answer = Answer {
                result: "invalid",
                response,
            };
            (status, answer)
        }
        Ok(Parsed::NotAPod(req)) => (
            StatusCode::OK,
            Answer {
                result: "skipped",
                response: AdmissionResponse::from(&req),
            },
        ),
        Ok(Parsed::Pod(req, pod)) => (StatusCode::OK, admit(state, &req, &pod).await),
    };
    state
        .metrics
        .admissions
        .with_label_values(&[answer.result])
        .inc();
    state
        .metrics
        .admission_duration
        .with_label_values(&[answer.result])
        .observe(started.elapsed().as_secs_f64());
    (status, answer.response.into_review())
}

enum Parsed {
    /// Something this webhook does not mutate (not a pod creation).
    NotAPod(AdmissionRequest<DynamicObject>),
    Pod(AdmissionRequest<DynamicObject>, Box<Pod>),
}

/// Parses a review; on failure gives the uid if one could be read, and why.
fn parse(body: &[u8]) -> Result<Parsed, (Option<String>, String)> {
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| (None, format!("the body is not JSON: {e}")))?;
    let uid = raw
        .pointer("/request/uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_owned);
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(raw.clone())
        .map_err(|e| (uid.clone(), format!("not an AdmissionReview: {e}")))?;
    let req: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| (uid.clone(), "the AdmissionReview has no request".to_owned()))?;
    let is_pod = req.kind.group.is_empty() && req.kind.kind == "Pod";
    if !is_pod || req.operation != Operation::Create || req.sub_resource.is_some() {
        return Ok(Parsed::NotAPod(req));
    }
    let Some(mut object) = raw.pointer("/request/object").cloned() else {
        return Ok(Parsed::NotAPod(req));
    };
    if let Some(map) = object.as_object_mut() {
        // Typed Pod deserialization wants the type fields; some callers omit them.
        map.entry("apiVersion").or_insert_with(|| Value::from("v1"));
        map.entry("kind").or_insert_with(|| Value::from("Pod"));
    }
    let pod: Pod = serde_json::from_value(object)
        .map_err(|e| (uid, format!("request.object is not a valid Pod: {e}")))?;
    Ok(Parsed::Pod(req, Box::new(pod)))
}

/// A lookup that failed, and what the policy makes of it.
fn lookup_failed(
    state: &AdmissionState<impl ClusterLookup>,
    req: &AdmissionRequest<DynamicObject>,
    what: String,
    error: &LookupError,
) -> Answer {
    tracing::warn!(object = %what, error = %error, "cluster lookup failed");
    let message = format!("bedrock-broker cannot read {what}: {error}");
    match state.on_lookup_error {
        LookupErrorPolicy::Deny => Answer {
            result: "denied",
            response: AdmissionResponse::from(req)
                .deny(format!("{message}; the pod is refused so it never starts without its Bedrock proxy (retry, or check the webhook's RBAC)")),
        },
        LookupErrorPolicy::Skip => {
            let mut response = AdmissionResponse::from(req);
            response.warnings = Some(vec![format!("{message}; admitted without the bedrock-broker sidecar")]);
            Answer {
                result: "skipped",
                response,
            }
        }
    }
}

async fn admit<L: ClusterLookup>(
    state: &AdmissionState<L>,
    req: &AdmissionRequest<DynamicObject>,
    pod: &Pod,
) -> Answer {
    let namespace = req
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let needs = inject::needs(pod);

    let namespace_labels = if needs.namespace_labels {
        match state.lookup.namespace_labels(namespace).await {
            Ok(labels) => Some(labels.unwrap_or_default()),
            Err(e) => {
                if !inject::opted_in(pod, None) {
                    // The namespace is the only way in; without it we
                    // cannot tell, and the policy decides.
                    return lookup_failed(state, req, format!("namespace {namespace:?}"), &e);
                }
                None
            }
        }
    } else {
        None
    };

    let service_account: Option<StringMap> = match &needs.service_account {
        Some(name) if inject::opted_in(pod, namespace_labels.as_ref()) => {
            match state
                .lookup
                .service_account_annotations(namespace, name)
                .await
            {
                Ok(annotations) => Some(annotations.unwrap_or_default()),
                Err(e) => {
                    return lookup_failed(
                        state,
                        req,
                        format!("ServiceAccount {namespace}/{name}"),
                        &e,
                    )
                }
            }
        }
        _ => None,
    };

    let facts = ClusterFacts {
        namespace: Some(namespace),
        namespace_labels: namespace_labels.as_ref(),
        service_account_annotations: service_account.as_ref(),
    };
    let pod_name = pod
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or("");
    match inject::inject(pod, &facts, &state.defaults) {
        Ok(Outcome::Skipped(skip)) => {
            tracing::debug!(
                namespace,
                pod = pod_name,
                reason = skip.as_str(),
                "admitted unchanged"
            );
            let mut response = AdmissionResponse::from(req);
            if skip == Skip::HasBrokerContainer {
                response.warnings = Some(vec![format!(
                    "the pod already has a container named {}; bedrock-broker did not inject another",
                    inject::CONTAINER_NAME
                )]);
            }
            Answer {
                result: "skipped",
                response,
            }
        }
        Ok(Outcome::Injected(injection)) => {
            tracing::debug!(namespace, pod = pod_name, mode = ?injection.mode, "injected");
            match AdmissionResponse::from(req).with_patch(injection.patch) {
                Ok(response) => Answer {
                    result: "injected",
                    response,
                },
                Err(e) => Answer {
                    result: "error",
                    response: AdmissionResponse::from(req)
                        .deny(format!("bedrock-broker could not encode its patch: {e}")),
                },
            }
        }
        Err(denial) => {
            tracing::debug!(namespace, pod = pod_name, reason = %denial, "denied");
            Answer {
                result: "denied",
                response: AdmissionResponse::from(req).deny(denial.to_string()),
            }
        }
    }
}

/// The admin routes (plain HTTP, its own port).
pub fn admin_router<L: ClusterLookup>(metrics: WebhookMetrics, lookup: Arc<L>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        metrics.render(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let lookup = lookup.clone();
                async move {
                    let synced = lookup.ready();
                    let body = Json(serde_json::json!({
                        "ready": synced,
                        "caches_synced": synced,
                    }));
                    if synced {
                        (StatusCode::OK, body)
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, body)
                    }
                }
            }),
        )
}

/// TLS connections whose handshake completed, fed by a background accept
/// loop so one slow client never holds up the others.
struct TlsListener {
    connections: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(conn) => conn,
            // The accept loop stopped (shutdown): wait for axum to notice.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

fn spawn_tls_accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shutdown: CancellationToken,
) -> std::io::Result<TlsListener> {
    let local_addr = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = shutdown.cancelled() => break,
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send((tls, peer)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    Ok(TlsListener {
        connections: rx,
        local_addr,
    })
}

/// A webhook whose sockets are bound and certificate loaded, not serving yet.
pub struct WebhookServer {
    /// HTTPS for the API server.
    listener: TcpListener,
    /// Plain HTTP for probes and Prometheus.
    admin_listener: TcpListener,
    /// Loaded at bind time, so a bad certificate fails start-up.
    cert: Arc<ReloadingCert>,
    tls: TlsFiles,
    /// ring, the one crypto provider this binary is built with.
    provider: Arc<rustls::crypto::CryptoProvider>,
    shutdown_grace: Duration,
}

impl WebhookServer {
    /// Loads the certificate and binds both ports (port 0 picks a free one).
    pub async fn bind(config: &WebhookConfig) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = ReloadingCert::load(&config.tls.cert, &config.tls.key, provider.clone())
            .map_err(|e| anyhow::anyhow!("cannot load the serving certificate: {e}"))?;
        let listener = crate::serve::bind(config.listen, "webhook").await?;
        let admin_listener =
            crate::serve::bind(config.admin_listen, "webhook admin server").await?;
        Ok(Self {
            listener,
            admin_listener,
            cert: Arc::new(cert),
            tls: config.tls.clone(),
            provider,
            shutdown_grace: config.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn admin_addr(&self) -> std::io::Result<SocketAddr> {
        self.admin_listener.local_addr()
    }

    /// Serves until `shutdown`, then drains for at most the grace period.
    pub async fn run<L: ClusterLookup>(
        self,
        state: AdmissionState<L>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let metrics = state.metrics.clone();
        let lookup = state.lookup.clone();
        let tls_config = certs::server_config(self.cert.clone(), self.provider.clone())?;
        let acceptor = TlsAcceptor::from(Arc::new(tls_config));
        let listen = self.listener.local_addr()?;
        let admin = self.admin_listener.local_addr()?;
        tracing::info!(%listen, %admin, cert = %self.tls.cert.display(), "webhook serving");

        tokio::spawn(self.cert.clone().watch(
            self.tls.reload_interval,
            metrics.clone(),
            shutdown.clone(),
        ));
        let tls_listener = spawn_tls_accept(self.listener, acceptor, shutdown.clone())?;

        let admin_shutdown = CancellationToken::new();
        let admin_stop = admin_shutdown.clone();
        let admin_server = tokio::spawn(
            axum::serve(self.admin_listener, admin_router(metrics, lookup))
                .with_graceful_shutdown(async move { admin_stop.cancelled().await })
                .into_future(),
        );

        let stop = shutdown.clone();
        let server = axum::serve(tls_listener, router(state))
            .with_graceful_shutdown(async move { stop.cancelled().await });
        let grace = self.shutdown_grace;
        let served = tokio::spawn(server.into_future());
        shutdown.cancelled().await;
        tracing::info!(grace_s = grace.as_secs_f64(), "stopped accepting; draining");
        match tokio::time::timeout(grace, served).await {
            Ok(Ok(Ok(()))) => tracing::info!("drained"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "webhook server stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "webhook server task failed"),
            Err(_) => tracing::warn!("grace period over with requests still open; closing them"),
        }
        admin_shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), admin_server).await;
        Ok(())
    }
}
