//! The admission server: HTTPS `POST /mutate` for the API server, and a
//! separate plain-HTTP admin port with `/metrics`, `/healthz`, `/readyz`.
//!
//! The handler is a thin shell around [`inject::inject`]: parse the review, read
//! what the pod needs from the cluster, call the pure function, answer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::inject::{self, ClusterFacts, Outcome, Skip};
use super::lookup::{ClusterLookup, LookupError, StringMap};
use super::SidecarDefaults;
use crate::admin::{Ready, Status};
use crate::config::parse::ParseError;
use crate::metrics::webhook::WebhookMetrics;
use crate::server::tls::{self, CertError, ReloadingCert, TlsListener};
use crate::server::{self, ServeError};

/// The path the MutatingWebhookConfiguration points at.
pub const MUTATE_PATH: &str = "/mutate";
/// AdmissionReviews are bounded by the API server's 3 MiB object limit
/// plus the review envelope (old and new object).
const MAX_REVIEW_BYTES: usize = 8 * 1024 * 1024;
/// The admin server stops this long after the webhook drained.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

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

/// Ready once the namespace and ServiceAccount caches have synced.
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
    tls: TlsFiles,
    /// ring, the one crypto provider this binary is built with.
    provider: Arc<rustls::crypto::CryptoProvider>,
    shutdown_grace: Duration,
}

impl WebhookServer {
    /// Loads the certificate and binds both ports (port 0 picks a free one).
    pub async fn bind(config: &WebhookConfig) -> Result<Self, WebhookError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = ReloadingCert::load(&config.tls.cert, &config.tls.key, provider.clone())?;
        let listener = server::bind(config.listen, "webhook").await?;
        let admin_listener = server::bind(config.admin_listen, "webhook admin server").await?;
        Ok(Self {
            listener,
            admin_listener,
            cert: Arc::new(cert),
            tls: config.tls.clone(),
            provider,
            shutdown_grace: config.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        server::local_addr(&self.listener, "webhook")
    }

    pub fn admin_addr(&self) -> Result<SocketAddr, ServeError> {
        server::local_addr(&self.admin_listener, "webhook admin server")
    }

    /// Serves until `shutdown`, then drains for at most the grace period.
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
        tracing::info!(%listen, %admin, cert = %self.tls.cert.display(), "webhook serving");

        tokio::spawn(self.cert.clone().watch(
            self.tls.reload_interval,
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
            admin_stop.clone(),
            ADMIN_GRACE,
            "webhook admin",
        ));
        let tls_listener = TlsListener::spawn(self.listener, acceptor, shutdown.clone());
        server::serve(
            tls_listener,
            server::router_service(router(state)),
            shutdown,
            self.shutdown_grace,
            "webhook",
        )
        .await;
        admin_stop.cancel();
        let _ = admin_server.await;
        Ok(())
    }
}
