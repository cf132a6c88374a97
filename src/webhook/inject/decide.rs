//! Whether a pod is injected at all: the opt-in label on the pod or its
//! namespace, a pod injected already, a sidecar added by hand. Also what
//! the admission shell must read from the cluster to decide.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use super::annotations::names;
use super::render::CONTAINER_NAME;
use super::types::RolePolicy;
use super::{all_containers, annotations, ClusterFacts, Denial};

/// Why a pod was admitted unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Neither the pod nor its namespace carries the opt-in label.
    NotOptedIn,
    /// Not opted in, and the pod carries the opt-in *annotation* set to
    /// `"false"`: what it asks for happens, but the annotation decided
    /// nothing. (Any other value is an attempted opt-in, refused.)
    OptInAnnotation,
    /// The pod's label is `"false"`.
    OptedOut,
    /// The pod carries `bedrock-broker.io/injected`.
    AlreadyInjected,
    /// The pod already has a container named `bedrock-broker` (added by hand).
    HasBrokerContainer,
    /// A mirror pod: the API's copy of a static pod the kubelet runs from
    /// a manifest on its node. Changing it changes nothing that runs, and
    /// the API server refuses a mirror pod with a projected token anyway
    /// (the static pod then runs unseen by the API).
    MirrorPod,
}

impl Skip {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::NotOptedIn => "not_opted_in",
            Self::OptInAnnotation => "opt_in_annotation",
            Self::OptedOut => "opted_out",
            Self::AlreadyInjected => "already_injected",
            Self::HasBrokerContainer => "has_broker_container",
            Self::MirrorPod => "mirror_pod",
        }
    }

    /// What a user should be told about a pod admitted unchanged: the
    /// admission warning (shown by kubectl) and `inject`'s warning line.
    pub fn warning(&self) -> Option<String> {
        let label = names::INJECT_LABEL;
        match self {
            Self::OptInAnnotation => Some(format!(
                "the annotation {label}: \"false\" decides nothing (the pod is not opted in anyway); to opt out explicitly, set the label {label}: \"false\""
            )),
            Self::HasBrokerContainer => Some(format!(
                "the pod already has a container named {CONTAINER_NAME}; bedrock-broker did not inject another"
            )),
            Self::MirrorPod => Some(
                "a mirror pod (a static pod's copy) is never injected: add the sidecar to the static pod's manifest on its node".to_owned(),
            ),
            Self::NotOptedIn | Self::OptedOut | Self::AlreadyInjected => None,
        }
    }
}

/// What must be looked up in the cluster before calling [`super::inject()`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Needs {
    /// The namespace's labels decide the opt-in (the pod has no label).
    pub namespace_labels: bool,
    /// This ServiceAccount's annotations hold the role, or (under
    /// `--role-policy service-account`) the role the pod's own must match.
    /// Not needed with an API key, nor with `any` when the pod names its
    /// role. Only needed once the pod is opted in.
    pub service_account: Option<String>,
    /// The namespace's LimitRanges, which the sidecar must fit. Only
    /// needed once the pod is opted in.
    pub limit_ranges: bool,
}

/// Whether to go on with a pod, and with which spec.
pub enum Decision<'p> {
    Skip(Skip),
    Inject(&'p PodSpec),
}

fn inject_label(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(names::INJECT_LABEL))
        .map(String::as_str)
}

/// Injected already: the marker and the sidecar. The marker alone is a
/// copy (a manifest exported from an injected pod, with its containers
/// cut down to the app's): that pod is injected, with a warning.
fn already_injected(pod: &Pod) -> bool {
    annotations(pod).contains_key(names::INJECTED) && has_broker_container(pod)
}

fn has_broker_container(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .is_some_and(|spec| all_containers(spec).any(|c| c.name == CONTAINER_NAME))
}

/// The warning for a pod injected although it carried the marker.
pub fn stale_marker(pod: &Pod, warnings: &mut Vec<String>) {
    if annotations(pod).contains_key(names::INJECTED) {
        warnings.push(format!(
            "the pod carried the annotation {} but no {CONTAINER_NAME} container (copied from an injected pod's manifest?): it was injected; leave the annotation out of manifests, bedrock-broker sets it",
            names::INJECTED
        ));
    }
}

/// The annotation the kubelet puts on the mirror pods it creates.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

fn is_mirror(pod: &Pod) -> bool {
    annotations(pod).contains_key(MIRROR_ANNOTATION)
}

/// The ServiceAccount a pod runs as (`default` when it names none).
pub fn service_account_name(pod: &Pod) -> &str {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.service_account_name.as_deref())
        .or_else(|| spec.and_then(|s| s.service_account.as_deref()))
        .filter(|n| !n.is_empty())
        .unwrap_or("default")
}

/// Which cluster lookups [`super::inject()`] can use for this pod.
pub fn needs(pod: &Pod, role_policy: RolePolicy) -> Needs {
    if already_injected(pod) {
        return Needs::default();
    }
    let pod_label = inject_label(pod);
    if pod_label.is_some_and(|v| v != "true") {
        return Needs::default();
    }
    // Only whether it is opted in matters: it is never injected.
    if is_mirror(pod) {
        return Needs {
            namespace_labels: pod_label.is_none(),
            ..Needs::default()
        };
    }
    let a = annotations(pod);
    let names_credentials = a.contains_key(names::API_KEY_SECRET)
        || (role_policy == RolePolicy::Any && a.contains_key(names::ROLE_ARN));
    Needs {
        namespace_labels: pod_label.is_none(),
        service_account: (!names_credentials).then(|| service_account_name(pod).to_owned()),
        limit_ranges: true,
    }
}

/// Whether the pod is opted in, as far as the labels known can tell.
pub fn opted_in(pod: &Pod, namespace_labels: Option<&BTreeMap<String, String>>) -> bool {
    match inject_label(pod) {
        Some(v) => v == "true",
        None => namespace_labels
            .and_then(|l| l.get(names::INJECT_LABEL))
            .is_some_and(|v| v == "true"),
    }
}

/// The opt-in rules, then the cases where injecting again would be wrong.
pub fn decide<'p>(pod: &'p Pod, facts: &ClusterFacts<'_>) -> Result<Decision<'p>, Denial> {
    match inject_label(pod) {
        Some("true") => {}
        Some("false") => return Ok(Decision::Skip(Skip::OptedOut)),
        Some(other) => {
            return Err(Denial::one(format!(
                "label {}: {other:?} is not accepted; accepted values: \"true\" or \"false\"",
                names::INJECT_LABEL
            )))
        }
        None => {
            if !opted_in(pod, facts.namespace_labels) {
                // A reinvocation reads no namespace labels (see `needs`):
                // an injected pod is left alone, never judged again.
                if already_injected(pod) {
                    return Ok(Decision::Skip(Skip::AlreadyInjected));
                }
                return not_opted_in(pod, facts).map(Decision::Skip);
            }
        }
    }
    if already_injected(pod) {
        return Ok(Decision::Skip(Skip::AlreadyInjected));
    }
    // Opted in, but what runs is the static pod on its node.
    if is_mirror(pod) {
        return Ok(Decision::Skip(Skip::MirrorPod));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return Err(Denial::one("the pod has no spec"));
    };
    if all_containers(spec).any(|c| c.name == CONTAINER_NAME) {
        return Ok(Decision::Skip(Skip::HasBrokerContainer));
    }
    Ok(Decision::Inject(spec))
}

/// Why a pod is not opted in. A pod that tried to opt in and got it wrong
/// is refused, so the mistake is seen at once rather than as a pod running
/// without its sidecar: the opt-in written as an annotation (selectors read
/// only labels), or a namespace label other than `"true"`/`"false"`. Under
/// the chart's selectors such pods rarely reach the webhook; `inject` sees
/// them all.
fn not_opted_in(pod: &Pod, facts: &ClusterFacts<'_>) -> Result<Skip, Denial> {
    let label = names::INJECT_LABEL;
    match annotations(pod).get(label).map(|v| v.trim()) {
        Some("false") => return Ok(Skip::OptInAnnotation),
        Some(value) => {
            return Err(Denial::one(format!(
                "{label}: {value:?} is set as an annotation, and annotations opt nothing in: move it to metadata.labels (or label the namespace)"
            )))
        }
        None => {}
    }
    match facts.namespace_labels.and_then(|l| l.get(label)) {
        Some(v) if v != "true" && v != "false" => Err(Denial::one(format!(
            "the namespace's label {label}: {v:?} is not accepted; accepted values: \"true\" or \"false\""
        ))),
        _ => Ok(Skip::NotOptedIn),
    }
}

/// The opt-in annotation on a pod that is opted in anyway: `"true"` is
/// redundant (a warning); anything else reads as an attempt to opt out or
/// change something, which an annotation cannot do (a problem).
pub fn opt_in_annotation(pod: &Pod, warnings: &mut Vec<String>, problems: &mut Vec<String>) {
    let label = names::INJECT_LABEL;
    match annotations(pod).get(label).map(|v| v.trim()) {
        None => {}
        Some("true") => warnings.push(format!(
            "the annotation {label} is ignored (the label, on the pod or its namespace, decides); remove it"
        )),
        Some(other) => problems.push(format!(
            "{label}: {other:?} is set as an annotation, which decides nothing: to keep this pod out, set the label {label}: \"false\"; otherwise remove the annotation"
        )),
    }
}
