//! The admission shell around the pure injection ([`inject::inject`]):
//! parse the review, read what the pod needs from the cluster, call the
//! pure function, answer. As in kube-rs' admission example: an unparseable
//! review is answered `invalid`, a refusal `deny`, and the uid is always
//! echoed when it can be read.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde_json::Value;

use super::inject::{self, ClusterFacts, Outcome};
use super::intake::Intake;
use super::lookup::{ClusterLookup, LookupError, StringMap};
use super::SidecarDefaults;
use crate::config::parse::ParseError;
use crate::metrics::webhook::WebhookMetrics;

/// The path the MutatingWebhookConfiguration points at.
pub const MUTATE_PATH: &str = "/mutate";

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
}

impl<L> Clone for AdmissionState<L> {
    fn clone(&self) -> Self {
        Self {
            defaults: self.defaults.clone(),
            lookup: self.lookup.clone(),
            on_lookup_error: self.on_lookup_error,
            metrics: self.metrics.clone(),
            intake: self.intake.clone(),
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
    let (status, review) = review(&state, &received.bytes).await;
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
    let (namespace_labels, service_account) = match read_cluster(state, req, pod, namespace).await {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    let facts = ClusterFacts {
        namespace: Some(namespace),
        namespace_labels: namespace_labels.as_ref(),
        service_account_annotations: service_account.as_ref(),
    };
    let outcome = inject::inject(pod, &facts, &state.defaults);
    answer(req, pod, namespace, outcome)
}

/// What the pod needs from the cluster: its namespace's labels (when the
/// pod has no opt-in label) and its ServiceAccount's annotations (when the
/// pod names no role). A failed read is answered by the lookup policy.
async fn read_cluster<L: ClusterLookup>(
    state: &AdmissionState<L>,
    req: &AdmissionRequest<DynamicObject>,
    pod: &Pod,
    namespace: &str,
) -> Result<(Option<StringMap>, Option<StringMap>), Answer> {
    let needs = inject::needs(pod);
    let namespace_labels = if needs.namespace_labels {
        match state.lookup.namespace_labels(namespace).await {
            Ok(labels) => Some(labels.unwrap_or_default()),
            // The namespace is the only way in; without it we cannot tell,
            // and the policy decides.
            Err(e) if !inject::opted_in(pod, None) => {
                return Err(lookup_failed(
                    state,
                    req,
                    format!("namespace {namespace:?}"),
                    &e,
                ));
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let service_account = match &needs.service_account {
        Some(name) if inject::opted_in(pod, namespace_labels.as_ref()) => {
            match state
                .lookup
                .service_account_annotations(namespace, name)
                .await
            {
                Ok(annotations) => Some(annotations.unwrap_or_default()),
                Err(e) => {
                    let what = format!("ServiceAccount {namespace}/{name}");
                    return Err(lookup_failed(state, req, what, &e));
                }
            }
        }
        _ => None,
    };
    Ok((namespace_labels, service_account))
}

/// The review's answer for an injection outcome.
fn answer(
    req: &AdmissionRequest<DynamicObject>,
    pod: &Pod,
    namespace: &str,
    outcome: Result<Outcome, inject::Denial>,
) -> Answer {
    let pod_name = pod
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or("");
    match outcome {
        Ok(Outcome::Skipped(skip)) => {
            tracing::debug!(
                namespace,
                pod = pod_name,
                reason = skip.as_str(),
                "admitted unchanged"
            );
            let mut response = AdmissionResponse::from(req);
            response.warnings = skip.warning().map(|w| vec![w]);
            Answer {
                result: "skipped",
                response,
            }
        }
        Ok(Outcome::Injected(injection)) => {
            tracing::debug!(namespace, pod = pod_name, mode = ?injection.mode, "injected");
            let warnings = injection.warnings;
            match AdmissionResponse::from(req).with_patch(injection.patch) {
                Ok(mut response) => Answer {
                    response: {
                        if !warnings.is_empty() {
                            response.warnings = Some(warnings);
                        }
                        response
                    },
                    result: "injected",
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
