//! What an injected pod gets that its owner may not expect, for the
//! admission response's `warnings` (kubectl shows them) and `inject`'s
//! report: nothing here refuses a pod, each is a deliberate rule whose
//! effect on this pod is worth a line.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;

use super::annotations::names;
use super::render::{app_vars, AppVar};
use super::spec::{Resources, SidecarSpec};
use super::types::{Quantity, Resource};
use crate::config::parse;
use crate::config::settings::injected;

/// Every notice for this pod, in a stable order.
pub fn notices(
    spec: &PodSpec,
    sidecar: &SidecarSpec,
    resources: &Resources,
    app_env: &[AppVar],
) -> Vec<String> {
    let mut out = Vec::new();
    out.extend(qos_lost(spec, resources));
    for c in &spec.containers {
        out.extend(env_from_overridden(c, app_env));
        out.extend(own_bedrock_endpoint(c, sidecar.port.get()));
        out.extend(fips_not_followed(c, sidecar.use_fips));
    }
    out
}

/// The app's own `AWS_USE_FIPS_ENDPOINT` serves its other AWS calls; its
/// Bedrock calls now leave through the sidecar, which follows only the
/// webhook's setting (a platform policy: most regions have no FIPS host).
fn fips_not_followed(c: &Container, sidecar_fips: bool) -> Option<String> {
    let name = crate::config::settings::sidecar::USE_FIPS.var();
    let wants = literal(c, name).is_some_and(|v| parse::bool(v).unwrap_or(false));
    (wants && !sidecar_fips).then(|| {
        format!(
            "container {:?} sets {name}, but its Bedrock calls go through the sidecar, which uses FIPS endpoints only with the webhook's --{}",
            c.name,
            injected::USE_FIPS.flag
        )
    })
}

/// A Guaranteed pod stays Guaranteed only if every container, the sidecar
/// too, has CPU and memory limits its requests equal. Losing the class
/// costs exclusive CPUs under the static CPU manager and moves the pod up
/// the eviction order, silently.
fn qos_lost(spec: &PodSpec, sidecar: &Resources) -> Option<String> {
    // Pod-level resources decide the class themselves; `fit` raises them.
    if spec.resources.is_some() {
        return None;
    }
    let all = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    if !all.into_iter().all(guaranteed) {
        return None;
    }
    let equal = |request: &Option<Quantity>, limit: &Option<Quantity>, r: Resource| match limit {
        None => false,
        Some(l) => request.as_ref().is_none_or(|q| q.units(r) == l.units(r)),
    };
    if equal(&sidecar.cpu_request, &sidecar.cpu_limit, Resource::Cpu)
        && equal(
            &sidecar.memory_request,
            &sidecar.memory_limit,
            Resource::Memory,
        )
    {
        return None;
    }
    Some(format!(
        "the sidecar makes this Guaranteed pod Burstable (requests below limits, or no CPU limit); to keep it Guaranteed set {} = {} and {} = {}",
        names::CPU_REQUEST,
        names::CPU_LIMIT,
        names::MEMORY_REQUEST,
        names::MEMORY_LIMIT
    ))
}

/// CPU and memory limits, with requests unset (they default to the
/// limits) or equal to them.
fn guaranteed(c: &Container) -> bool {
    let Some(resources) = &c.resources else {
        return false;
    };
    let units = |map: Option<&BTreeMap<String, K8sQuantity>>, r: Resource| {
        Quantity::parse(&map?.get(r.as_str())?.0)
            .ok()
            .map(|q| q.units(r))
    };
    Resource::BOTH.into_iter().all(|r| {
        match (
            units(resources.requests.as_ref(), r),
            units(resources.limits.as_ref(), r),
        ) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(request), Some(limit)) => request == limit,
        }
    })
}

/// A literal value of `name` in `c` (not `valueFrom`).
fn literal<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name && e.value_from.is_none())
        .and_then(|e| e.value.as_deref())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Variables from `envFrom` lose to an explicit `env` entry of the same
/// name, so the injected client variables override any there.
fn env_from_overridden(c: &Container, app_env: &[AppVar]) -> Option<String> {
    if c.env_from.as_ref().is_none_or(Vec::is_empty) {
        return None;
    }
    let sets = |name: &&str| c.env.iter().flatten().any(|e| e.name == *name);
    let added: Vec<&str> = app_env
        .iter()
        .filter(|v| !v.unless_set.iter().any(sets))
        .map(|v| v.var.name.as_str())
        .filter(|n| {
            *n != app_vars::BEDROCK_BROKER_URL && *n != app_vars::BEDROCK_BROKER_PROXY_TOKEN
        })
        .collect();
    if added.is_empty() {
        return None;
    }
    Some(format!(
        "container {:?}: injected {} win over envFrom; keep yours under env or set {}: \"false\"",
        c.name,
        added.join(", "),
        names::CLIENT_ENV
    ))
}

/// A container pointing a Bedrock client elsewhere keeps it (explicit
/// variables are never overridden), and that client bypasses the sidecar.
fn own_bedrock_endpoint(c: &Container, proxy_port: u16) -> Vec<String> {
    let ours: [String; 3] = [
        format!("http://127.0.0.1:{proxy_port}"),
        format!("http://localhost:{proxy_port}"),
        format!("http://[::1]:{proxy_port}"),
    ];
    [
        app_vars::AWS_ENDPOINT_URL_BEDROCK_RUNTIME,
        app_vars::AWS_BEDROCK_RUNTIME_ENDPOINT,
        app_vars::ANTHROPIC_BEDROCK_BASE_URL,
    ]
    .into_iter()
    .filter_map(|name| {
        let value = literal(c, name)?;
        let to_us = ours
            .iter()
            .any(|o| value.strip_prefix(o.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')));
        (!to_us).then(|| {
            format!(
                "container {:?} sets {name} to another endpoint: clients reading it call Bedrock there, not through the sidecar",
                c.name
            )
        })
    })
    .collect()
}
