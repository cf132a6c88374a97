//! Which IAM role the sidecar assumes, under the webhook's `--role-policy`
//! (see docs/security.md for the trust boundary this draws).

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use super::annotations::names;
use super::resolve::container_env_value;
use super::resolve::SidecarAuth;
use super::spec::{Origin, SidecarSpec, Sourced};
use super::types::{Audience, RolePolicy};
use super::{service_account_name, ClusterFacts};
use crate::config::aws::RoleArn;
use crate::config::settings::vars;

/// Where the role ARN was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleSource {
    PodAnnotation,
    ServiceAccount,
    /// `AWS_ROLE_ARN` already set in a container (the EKS Pod Identity Webhook's).
    ContainerEnv,
}

/// The role under the webhook's `--role-policy`: with `service-account`
/// (the default), the ServiceAccount's; with `any`, the pod's own
/// annotation first, then the ServiceAccount's IRSA annotation (so a
/// ServiceAccount set up for the EKS Pod Identity Webhook needs nothing
/// else), last a role that webhook already put into a container.
pub fn resolve_role(
    pod: &Pod,
    spec: &PodSpec,
    sidecar: &SidecarSpec,
    facts: &ClusterFacts<'_>,
    problems: &mut Vec<String>,
) -> Option<(RoleArn, RoleSource)> {
    let sa = service_account_name(pod);
    match sidecar.role_policy {
        RolePolicy::ServiceAccount => {
            let sa_role = service_account_role(sa, facts, problems)?;
            only_service_account_role(sa, sidecar, sa_role, facts, problems)
        }
        RolePolicy::Any => {
            if let Some(role) = &sidecar.role_arn {
                return Some((role.clone(), RoleSource::PodAnnotation));
            }
            if let Some(role) = service_account_role(sa, facts, problems)? {
                return Some((role, RoleSource::ServiceAccount));
            }
            if let Some(role) = container_env_value(spec, vars::AWS_ROLE_ARN.name)
                .and_then(|raw| RoleArn::parse(raw.trim()).ok())
            {
                return Some((role, RoleSource::ContainerEnv));
            }
            problems.push(no_role(sa, facts, true));
            None
        }
    }
}

/// The token audience the EKS Pod Identity Webhook would project for the
/// pod's ServiceAccount (`eks.amazonaws.com/audience`), over the webhook's
/// default: a role whose trust policy names that audience refuses any
/// other. The pod's own `bedrock-broker.io/audience` still wins.
pub fn service_account_audience(
    pod: &Pod,
    sidecar: &mut SidecarSpec,
    facts: &ClusterFacts<'_>,
    problems: &mut Vec<String>,
) {
    if sidecar.audience.origin == Origin::Annotation || sidecar.api_key_secret.is_some() {
        return;
    }
    let Some(raw) = facts
        .service_account_annotations
        .and_then(|a| a.get(names::EKS_AUDIENCE))
    else {
        return;
    };
    match Audience::parse(raw.trim()) {
        Ok(audience) => {
            sidecar.audience = Sourced {
                value: audience,
                origin: Origin::ServiceAccount,
            }
        }
        Err(m) => problems.push(format!(
            "ServiceAccount {:?} annotation {}: {m}; fix the ServiceAccount or set {} on the pod",
            service_account_name(pod),
            names::EKS_AUDIENCE,
            names::AUDIENCE
        )),
    }
}

/// The ServiceAccount's `eks.amazonaws.com/role-arn`: `Some(None)` when it
/// has none, `None` (and a problem) when it is not a role ARN.
fn service_account_role(
    sa: &str,
    facts: &ClusterFacts<'_>,
    problems: &mut Vec<String>,
) -> Option<Option<RoleArn>> {
    let Some(raw) = facts
        .service_account_annotations
        .and_then(|a| a.get(names::EKS_ROLE_ARN))
    else {
        return Some(None);
    };
    match RoleArn::parse(raw.trim()) {
        Ok(role) => Some(Some(role)),
        Err(m) => {
            problems.push(format!(
                "ServiceAccount {sa:?} annotation {}: {m}; fix the ServiceAccount or set {} on the pod",
                names::EKS_ROLE_ARN,
                names::ROLE_ARN
            ));
            None
        }
    }
}

/// `--role-policy service-account`: the ServiceAccount's role, which the
/// pod may repeat but not replace.
fn only_service_account_role(
    sa: &str,
    sidecar: &SidecarSpec,
    sa_role: Option<RoleArn>,
    facts: &ClusterFacts<'_>,
    problems: &mut Vec<String>,
) -> Option<(RoleArn, RoleSource)> {
    let policy =
        "the webhook's --role-policy service-account lets a pod use only its ServiceAccount's role";
    match (&sidecar.role_arn, sa_role) {
        (Some(asked), Some(role)) if *asked == role => Some((role, RoleSource::ServiceAccount)),
        (Some(asked), Some(role)) => {
            problems.push(format!(
                "{}: {} is not the role of ServiceAccount {sa:?} ({}); {policy}: remove the annotation, or run the pod as a ServiceAccount annotated with {} {}",
                names::ROLE_ARN,
                asked.as_str(),
                role.as_str(),
                names::EKS_ROLE_ARN,
                asked.as_str(),
            ));
            None
        }
        (Some(asked), None) => {
            problems.push(format!(
                "{}: ServiceAccount {sa:?} carries no {}; {policy}: annotate the ServiceAccount with {} {} instead",
                names::ROLE_ARN,
                names::EKS_ROLE_ARN,
                names::EKS_ROLE_ARN,
                asked.as_str(),
            ));
            None
        }
        (None, Some(role)) => Some((role, RoleSource::ServiceAccount)),
        (None, None) => {
            problems.push(no_role(sa, facts, false));
            None
        }
    }
}

fn no_role(sa: &str, facts: &ClusterFacts<'_>, pod_may_name_one: bool) -> String {
    let ns = facts
        .namespace
        .map(|n| format!(" in namespace {n:?}"))
        .unwrap_or_default();
    let sa_note = if facts.service_account_annotations.is_none() {
        " (it could not be read)"
    } else {
        ""
    };
    let pod_annotation = if pod_may_name_one {
        format!(
            "set the pod annotation {} to a role ARN, or ",
            names::ROLE_ARN
        )
    } else {
        String::new()
    };
    format!(
        "no IAM role: {pod_annotation}annotate ServiceAccount {sa:?}{ns}{sa_note} with {}, or use a Bedrock API key with {}: <secret-name>/<key>",
        names::EKS_ROLE_ARN,
        names::API_KEY_SECRET
    )
}

/// An admission warning when the role is not the ServiceAccount's (only
/// possible under `--role-policy any`): the pod chose it, and only the
/// role's IAM trust policy decided that it may.
pub fn warning(auth: &SidecarAuth, facts: &ClusterFacts<'_>) -> Option<String> {
    let SidecarAuth::WebIdentity { role, source, .. } = auth else {
        return None;
    };
    let from = match source {
        RoleSource::ServiceAccount => return None,
        RoleSource::PodAnnotation => format!("the pod annotation {}", names::ROLE_ARN),
        RoleSource::ContainerEnv => "a container's AWS_ROLE_ARN".to_owned(),
    };
    let trust = "only the role's IAM trust policy allows this (--role-policy any";
    // Not read (a pod naming its role needs no ServiceAccount under
    // `any`): which role that ServiceAccount carries is not known, nor
    // whether `service-account` would refuse the pod.
    let Some(sa) = facts.service_account_annotations else {
        return Some(format!(
            "the sidecar assumes {} from {from}, whatever role its ServiceAccount carries (not read); {trust}; under --role-policy service-account, the chart's default, a pod may use only its ServiceAccount's role)",
            role.as_str()
        ));
    };
    let sa_role = sa.get(names::EKS_ROLE_ARN);
    if sa_role.is_some_and(|r| r.trim() == role.as_str()) {
        return None;
    }
    let theirs = sa_role.map_or("none", |r| r.trim());
    Some(format!(
        "the sidecar assumes {} from {from}, not its ServiceAccount's role ({theirs}); {trust}; under --role-policy service-account, the chart's default, this pod is refused)",
        role.as_str()
    ))
}
