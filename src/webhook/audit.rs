//! The audit trail of the webhook: one structured `info` line per
//! admission decision, so "why has my pod no sidecar?" is answered from the
//! logs: the review's uid, namespace, pod (or its `generateName`), the
//! controller that owns it, the decision, and the reason.
//!
//! Nothing from the pod's values reaches the log: a refusal is logged by
//! what is wrong (the annotation or field each problem names), never by the
//! value, since a user may paste a secret where a Secret's name belongs.
//! The full message goes to the requester through the API server.

use k8s_openapi::api::core::v1::Pod;

use super::inject::{Denial, Injection, RoleSource, SidecarAuth};

/// Who a review is about.
#[derive(Debug, Default)]
pub struct Subject<'a> {
    pub uid: &'a str,
    pub namespace: &'a str,
    /// The pod's name, else its `generateName` (pods of controllers).
    pub pod: &'a str,
    /// `Kind/name` of the controlling owner, for pods of controllers.
    pub owner: Option<String>,
    pub dry_run: bool,
}

impl<'a> Subject<'a> {
    pub fn of_pod(uid: &'a str, namespace: &'a str, pod: &'a Pod, dry_run: bool) -> Self {
        let meta = &pod.metadata;
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| format!("{}/{}", o.kind, o.name));
        Self {
            uid,
            namespace,
            pod: meta
                .name
                .as_deref()
                .or(meta.generate_name.as_deref())
                .unwrap_or(""),
            owner,
            dry_run,
        }
    }
}

/// Logs one decision. `decision` is the metric's result label.
pub fn record(subject: &Subject<'_>, decision: &str, reason: &str, warnings: &[String]) {
    tracing::info!(
        uid = subject.uid,
        namespace = subject.namespace,
        pod = subject.pod,
        owner = subject.owner.as_deref(),
        dry_run = subject.dry_run,
        decision,
        reason,
        warnings = (!warnings.is_empty()).then(|| warnings.join(" | ")),
        "admission"
    );
}

/// How an injected pod's sidecar was set up, for the reason field.
pub fn injected(injection: &Injection) -> String {
    let auth = match &injection.auth {
        SidecarAuth::ApiKey(_) => "Bedrock API key from a Secret",
        SidecarAuth::WebIdentity { source, .. } => match source {
            RoleSource::PodAnnotation => "role from the pod annotation",
            RoleSource::ServiceAccount => "role from the ServiceAccount",
            RoleSource::ContainerEnv => "role from a container's AWS_ROLE_ARN",
        },
    };
    format!("{} sidecar, {auth}", injection.mode.as_str())
}

/// What each problem of a refusal is about: the text before its first
/// `: `, which names an annotation, label or field, never its value.
pub fn denied(denial: &Denial) -> String {
    denial
        .problems
        .iter()
        .map(|p| p.split(": ").next().unwrap_or(p.as_str()))
        .collect::<Vec<_>>()
        .join("; ")
}
