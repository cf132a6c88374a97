//! The admission shell around the pure injection ([`inject::inject`]):
//! parse the review, read what the pod needs from the cluster, call the
//! pure function, answer. As in kube-rs' admission example: an unparseable
//! review is answered `invalid`, a refusal `deny`, and the uid is always
//! echoed when it can be read.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionResponse, AdmissionReview};
use kube::core::DynamicObject;

use super::audit::{self, Subject};
use super::cluster;
use super::inject::{self, Injection, KubeVersion, Outcome};
use super::intake::Intake;
use super::lookup::{ClusterLookup, LookupError};
use super::review::{self, Request as Review, Unreadable};
use super::SidecarDefaults;
use crate::config::parse::ParseError;
use crate::metrics::webhook::WebhookMetrics;

/// The largest patch the webhook answers with. Each container of the pod
/// gets variables, so a pod of thousands of tiny containers asks for
/// megabytes: a pod that large could not be stored anyway (etcd keeps
/// objects up to 1.5 MiB), and the answer, its bytes written out as
/// numbers, would be three to four times the patch. Building the patch
/// already stops there (`inject::patch`); this catches what its count,
/// a lower bound, let through.
const MAX_PATCH_BYTES: usize = inject::patch::MAX_PATCH_BYTES;

/// The path the MutatingWebhookConfiguration points at.
pub const MUTATE_PATH: &str = "/mutate";

/// What the webhook does with an opted-in pod when it cannot read the
/// namespace, ServiceAccount or LimitRanges it needs.
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

/// What the admission handler works with.
pub struct AdmissionState<L> {
    /// Sidecar defaults the annotations override.
    pub defaults: SidecarDefaults,
    /// Namespace labels and ServiceAccount annotations.
    pub lookup: Arc<L>,
    /// What to do when the lookup fails.
    pub on_lookup_error: LookupErrorPolicy,
    pub metrics: WebhookMetrics,
    /// How review bodies are received (time and memory bounds).
    pub intake: Intake,
    /// The API server's version, read at start (`None`: unknown).
    pub kube_version: Option<KubeVersion>,
}

impl<L> Clone for AdmissionState<L> {
    fn clone(&self) -> Self {
        Self {
            defaults: self.defaults.clone(),
            lookup: self.lookup.clone(),
            on_lookup_error: self.on_lookup_error,
            metrics: self.metrics.clone(),
            intake: self.intake.clone(),
            kube_version: self.kube_version,
        }
    }
}

/// The admission routes, without a socket.
pub fn router<L: ClusterLookup>(state: AdmissionState<L>) -> Router {
    Router::new()
        .route(MUTATE_PATH, post(mutate_handler::<L>))
        .with_state(Arc::new(state))
}

async fn mutate_handler<L: ClusterLookup>(
    State(state): State<Arc<AdmissionState<L>>>,
    request: Request<Body>,
) -> Response {
    let received = match state.intake.receive(request).await {
        Ok(received) => received,
        Err(status) => return status.into_response(),
    };
    let (status, review) = answer_body(&state, &received.bytes, received.not_json.as_deref()).await;
    let Ok(answer) = serde_json::to_vec(&review) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    // The answer's bytes are counted in the review's place until the
    // connection has taken them.
    match state.intake.answer(received, answer).await {
        Ok(body) => (status, [(CONTENT_TYPE, "application/json")], body).into_response(),
        Err(status) => status.into_response(),
    }
}

/// The result label, the response of one review, and what the audit log
/// says about it.
struct Answer {
    result: &'static str,
    /// Why, for the log: never a value from the pod (see `audit`).
    reason: String,
    response: AdmissionResponse,
}

impl Answer {
    fn new(result: &'static str, reason: impl Into<String>, response: AdmissionResponse) -> Self {
        Self {
            result,
            reason: reason.into(),
            response,
        }
    }
}

/// Answers one AdmissionReview body: the HTTP status and the review to send.
pub async fn review<L: ClusterLookup>(
    state: &AdmissionState<L>,
    body: &[u8],
) -> (StatusCode, AdmissionReview<DynamicObject>) {
    answer_body(state, body, None).await
}

/// [`review`], or the answer to a body already found not to be JSON
/// (`not_json`, why): unreadable, never parsed.
async fn answer_body<L: ClusterLookup>(
    state: &AdmissionState<L>,
    body: &[u8],
    not_json: Option<&str>,
) -> (StatusCode, AdmissionReview<DynamicObject>) {
    let started = Instant::now();
    let parsed = match not_json {
        Some(detail) => Err(review::not_json(body, detail)),
        None => review::parse(body),
    };
    let (status, answer) = match parsed {
        Err(bad) => invalid(bad),
        Ok(req) if !req.is_pod_create() => {
            let subject = Subject {
                uid: &req.uid,
                namespace: req.namespace.as_deref().unwrap_or(""),
                pod: &req.name,
                owner: None,
                dry_run: req.dry_run,
            };
            audit::record(&subject, "skipped", "not_a_pod_create", &[]);
            let answer = Answer::new("skipped", "not_a_pod_create", req.response());
            (StatusCode::OK, answer)
        }
        Ok(req) => match review::pod(&req, body) {
            Err(bad) => invalid(bad),
            Ok(pod) => {
                let answer = admit(state, &req, &pod).await;
                let namespace = namespace_of(&req, &pod);
                let subject = Subject::of_pod(&req.uid, namespace, &pod, req.dry_run);
                let warnings = answer.response.warnings.as_deref().unwrap_or(&[]);
                audit::record(&subject, answer.result, &answer.reason, warnings);
                (StatusCode::OK, answer)
            }
        },
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

/// The answer to a review that could not be read: `invalid`, with the uid
/// when one could be read (else HTTP 400: nothing to echo).
fn invalid(bad: Unreadable) -> (StatusCode, Answer) {
    let mut response = AdmissionResponse::invalid(format!("{}: {}", bad.what, bad.detail));
    let status = match &bad.uid {
        Some(uid) => {
            response.uid = uid.clone();
            StatusCode::OK
        }
        None => StatusCode::BAD_REQUEST,
    };
    let subject = Subject {
        uid: bad.uid.as_deref().unwrap_or(""),
        ..Default::default()
    };
    audit::record(&subject, "invalid", bad.what, &[]);
    (status, Answer::new("invalid", bad.what, response))
}

/// A lookup that failed, and what the policy makes of it.
fn lookup_failed(
    state: &AdmissionState<impl ClusterLookup>,
    req: &Review<'_>,
    what: String,
    error: &LookupError,
) -> Answer {
    tracing::warn!(object = %what, error = %error, "cluster lookup failed");
    let message = format!("bedrock-broker cannot read {what}: {error}");
    let reason = format!("cannot read {what}");
    match state.on_lookup_error {
        LookupErrorPolicy::Deny => Answer::new(
            "denied",
            reason,
            req.response().deny(format!("{message}; the pod is refused so it never starts without its Bedrock proxy (retry, or check the webhook's RBAC)")),
        ),
        LookupErrorPolicy::Skip => {
            let mut response = req.response();
            response.warnings = Some(vec![format!("{message}; admitted without the bedrock-broker sidecar")]);
            Answer::new("skipped", reason, response)
        }
    }
}

/// The namespace a pod is created in (the review's, else the pod's).
fn namespace_of<'a>(req: &'a Review<'_>, pod: &'a Pod) -> &'a str {
    req.namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

async fn admit<L: ClusterLookup>(state: &AdmissionState<L>, req: &Review<'_>, pod: &Pod) -> Answer {
    let namespace = namespace_of(req, pod);
    let read = match cluster::read(&*state.lookup, state.defaults.role_policy, pod, namespace).await
    {
        Ok(read) => read,
        Err(failed) => return lookup_failed(state, req, failed.what, &failed.error),
    };
    answer(
        req,
        inject::inject(
            pod,
            &read.facts(namespace, state.kube_version),
            &state.defaults,
        ),
    )
}

/// The review's answer for an injection outcome.
fn answer(req: &Review<'_>, outcome: Result<Outcome, inject::Denial>) -> Answer {
    match outcome {
        Ok(Outcome::Skipped(skip)) => {
            let mut response = req.response();
            response.warnings = skip.warning().map(|w| vec![w]);
            Answer::new("skipped", skip.as_str(), response)
        }
        Ok(Outcome::Injected(injection)) => {
            let reason = audit::injected(&injection);
            let Injection {
                patch, warnings, ..
            } = *injection;
            match req.response().with_patch(patch) {
                Ok(mut response) => match response.patch.as_ref().map_or(0, Vec::len) {
                    size if size > MAX_PATCH_BYTES => Answer::new(
                        "denied",
                        "the patch is larger than a pod can be",
                        req.response().deny(format!(
                            "bedrock-broker's patch for this pod would be {size} bytes, more than the {MAX_PATCH_BYTES} it answers: the pod it made could not be stored (the API server keeps objects up to 1.5 MiB)"
                        )),
                    ),
                    _ => {
                        response.warnings = (!warnings.is_empty()).then_some(warnings);
                        Answer::new("injected", reason, response)
                    }
                },
                Err(e) => Answer::new(
                    "error",
                    "the patch could not be encoded",
                    req.response()
                        .deny(format!("bedrock-broker could not encode its patch: {e}")),
                ),
            }
        }
        Err(denial) => Answer::new(
            "denied",
            audit::denied(&denial),
            req.response().deny(denial.to_string()),
        ),
    }
}
