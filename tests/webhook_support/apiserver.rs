//! The API server's own pod checks that matter for an injected pod and that
//! a schema cannot express (kubernetes-validate checks the OpenAPI schema
//! only): the cross-field rules of `ValidatePodSpec` in
//! kubernetes/kubernetes `pkg/apis/core/validation/validation.go`, each
//! function below naming the upstream function it mirrors. Messages follow
//! upstream's `field: Invalid value: ...` shape so a failure reads like the
//! API server's refusal.

use std::collections::{BTreeMap, HashSet};

use bedrock_broker::webhook::types::{Quantity, Resource};
use serde_json::Value;

/// Every violation of the rules below in `pod` (empty: the API server
/// would accept it, as far as these rules go).
pub fn violations(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let mut out = Vec::new();
    container_names(spec, &mut out);
    restart_policies(spec, &mut out);
    volumes(spec, &mut out);
    for (field, c) in containers(spec) {
        ports_and_probes(&field, c, &mut out);
        env_names(&field, c, &mut out);
        requests_within_limits(&format!("{field}.resources"), &c["resources"], &mut out);
    }
    pod_level_resources(spec, &mut out);
    out
}

/// `(field path, container)` of every init container, then every container.
fn containers(spec: &Value) -> Vec<(String, &Value)> {
    ["initContainers", "containers"]
        .iter()
        .flat_map(|list| {
            spec[list]
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(move |(i, c)| (format!("spec.{list}[{i}]"), c))
        })
        .collect()
}

fn is_sidecar(init: &Value) -> bool {
    init["restartPolicy"] == "Always"
}

/// `validateInitContainers` + `validateContainers`: one name space for all
/// containers of a pod.
fn container_names(spec: &Value, out: &mut Vec<String>) {
    let mut seen = HashSet::new();
    for (field, c) in containers(spec) {
        let name = c["name"].as_str().unwrap_or_default();
        if !seen.insert(name.to_owned()) {
            out.push(format!("{field}.name: Duplicate value: {name:?}"));
        }
    }
}

/// `validateInitContainers` / `validateContainers` (native sidecars, KEP
/// 753): only `Always` on an init container; never on a regular one; an
/// init container that is not a sidecar may have no probes or lifecycle.
fn restart_policies(spec: &Value, out: &mut Vec<String>) {
    for (i, c) in spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let field = format!("spec.initContainers[{i}]");
        match &c["restartPolicy"] {
            Value::Null => {
                for probe in [
                    "lifecycle",
                    "livenessProbe",
                    "readinessProbe",
                    "startupProbe",
                ] {
                    if !c[probe].is_null() {
                        out.push(format!("{field}.{probe}: Forbidden: may not be set for init containers without restartPolicy=Always"));
                    }
                }
            }
            v if v == "Always" => {}
            v => out.push(format!(
                "{field}.restartPolicy: Unsupported value: {v}: supported values: \"Always\""
            )),
        }
    }
    for (i, c) in spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !c["restartPolicy"].is_null() {
            out.push(format!("spec.containers[{i}].restartPolicy: Forbidden: may not be set for non-init containers"));
        }
    }
}

/// `validateVolumes` (unique names) and `validateVolumeMounts` (a mount
/// names a volume of the pod; mount paths unique in a container).
fn volumes(spec: &Value, out: &mut Vec<String>) {
    let mut names = HashSet::new();
    for (i, v) in spec["volumes"].as_array().into_iter().flatten().enumerate() {
        let name = v["name"].as_str().unwrap_or_default();
        if !names.insert(name.to_owned()) {
            out.push(format!("spec.volumes[{i}].name: Duplicate value: {name:?}"));
        }
    }
    for (field, c) in containers(spec) {
        let mut paths = HashSet::new();
        for (j, m) in c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = m["name"].as_str().unwrap_or_default();
            if !names.contains(name) {
                out.push(format!(
                    "{field}.volumeMounts[{j}].name: Not found: {name:?}"
                ));
            }
            let path = m["mountPath"].as_str().unwrap_or_default();
            if !paths.insert(path.to_owned()) {
                out.push(format!(
                    "{field}.volumeMounts[{j}].mountPath: Invalid value: {path:?}: must be unique"
                ));
            }
        }
    }
}

/// `validateContainerPorts` (IANA_SVC_NAME, unique per container) and
/// `validatePortNumOrName` for probes; a named probe port must also be a
/// port of the container, or the kubelet cannot resolve it
/// (`kubelet/prober`: `findPortByName`).
fn ports_and_probes(field: &str, c: &Value, out: &mut Vec<String>) {
    let mut names = HashSet::new();
    for (j, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
        if let Some(name) = p["name"].as_str() {
            let svc_name = name.len() <= 15
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && name.bytes().any(|b| b.is_ascii_lowercase());
            if !svc_name {
                out.push(format!(
                    "{field}.ports[{j}].name: Invalid value: {name:?}: must be an IANA_SVC_NAME"
                ));
            }
            if !names.insert(name.to_owned()) {
                out.push(format!(
                    "{field}.ports[{j}].name: Duplicate value: {name:?}"
                ));
            }
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(port) = c[probe]["httpGet"]["port"].as_str() {
            if !names.contains(port) {
                out.push(format!("{field}.{probe}.httpGet.port: Invalid value: {port:?}: not a port of the container"));
            }
        }
    }
}

/// `validateEnv` with `IsEnvVarName` as it stood before 1.34 relaxed it.
fn env_names(field: &str, c: &Value, out: &mut Vec<String>) {
    for (j, e) in c["env"].as_array().into_iter().flatten().enumerate() {
        let name = e["name"].as_str().unwrap_or_default();
        let ok = name.bytes().enumerate().all(|(k, b)| {
            b.is_ascii_alphabetic() || b"-._".contains(&b) || (k > 0 && b.is_ascii_digit())
        }) && !name.is_empty();
        if !ok {
            out.push(format!(
                "{field}.env[{j}].name: Invalid value: {name:?}: a valid environment variable name"
            ));
        }
    }
}

/// cpu and memory of a `ResourceList`, in whole units.
fn list(v: &Value) -> BTreeMap<Resource, (u64, String)> {
    Resource::BOTH
        .into_iter()
        .filter_map(|r| {
            let raw = v[r.as_str()].as_str()?;
            let q = Quantity::parse(raw).ok()?;
            Some((r, (q.units(r), raw.to_owned())))
        })
        .collect()
}

/// `validateResourceRequirements`: a request above its limit.
fn requests_within_limits(field: &str, resources: &Value, out: &mut Vec<String>) {
    let limits = list(&resources["limits"]);
    for (r, (request, raw)) in list(&resources["requests"]) {
        if let Some((limit, limit_raw)) = limits.get(&r) {
            if request > *limit {
                out.push(format!(
                    "{field}.requests[{}]: Invalid value: {raw:?}: must be less than or equal to {} limit of {limit_raw}",
                    r.as_str(), r.as_str()
                ));
            }
        }
    }
}

/// `resource.AggregateContainerRequests` (k8s.io/component-helpers): the
/// larger of the running phase (containers plus sidecars) and the init
/// phase (each init container with the sidecars started before it), per
/// "Effective Pod requests and limits" in the Kubernetes docs.
fn aggregate_requests(spec: &Value) -> BTreeMap<Resource, u64> {
    let mut sidecars: BTreeMap<Resource, u64> = BTreeMap::new();
    let mut init_peak: BTreeMap<Resource, u64> = BTreeMap::new();
    for c in spec["initContainers"].as_array().into_iter().flatten() {
        let requests = list(&c["resources"]["requests"]);
        for r in Resource::BOTH {
            let own = requests.get(&r).map_or(0, |(u, _)| *u);
            let phase = if is_sidecar(c) {
                *sidecars.entry(r).or_default() += own;
                sidecars[&r]
            } else {
                own + sidecars.get(&r).copied().unwrap_or(0)
            };
            let peak = init_peak.entry(r).or_default();
            *peak = (*peak).max(phase);
        }
    }
    Resource::BOTH
        .into_iter()
        .map(|r| {
            let running: u64 = spec["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| list(&c["resources"]["requests"]).get(&r).map(|(u, _)| *u))
                .sum::<u64>()
                + sidecars.get(&r).copied().unwrap_or(0);
            (r, running.max(init_peak.get(&r).copied().unwrap_or(0)))
        })
        .collect()
}

/// `validatePodResourceConsistency` and `validateResourceRequirements` of
/// `spec.resources` (pod-level resources, KEP 2837, beta since 1.34).
fn pod_level_resources(spec: &Value, out: &mut Vec<String>) {
    let resources = &spec["resources"];
    if resources.is_null() {
        return;
    }
    requests_within_limits("spec.resources", resources, out);
    let requests = list(&resources["requests"]);
    for (r, aggregate) in aggregate_requests(spec) {
        if let Some((pod, raw)) = requests.get(&r) {
            if aggregate > *pod {
                let q = Quantity::from_units(r, aggregate);
                out.push(format!(
                    "spec.resources.requests[{}]: Invalid value: {raw:?}: must be greater than or equal to aggregate container requests of {}",
                    r.as_str(), q.as_str()
                ));
            }
        }
    }
    let limits = list(&resources["limits"]);
    for (i, c) in spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (r, (limit, raw)) in list(&c["resources"]["limits"]) {
            if let Some((pod, pod_raw)) = limits.get(&r) {
                if limit > *pod {
                    out.push(format!(
                        "spec.containers[{i}].resources.limits[{}]: Invalid value: {raw:?}: must be less than or equal to pod limits of {pod_raw}",
                        r.as_str()
                    ));
                }
            }
        }
    }
}

/// The LimitRanger admission plugin for `type: Container` items
/// (kubernetes `plugin/pkg/admission/limitranger/admission.go`): its
/// mutating pass fills unset requests and limits from `defaultRequest` and
/// `default` (re-run after a webhook changes the pod, `reinvocation.go`),
/// then `PodValidateLimitFunc` checks `min`, `max` (a limit is required
/// under a max) and `maxLimitRequestRatio` for every container.
pub fn limit_range_violations(pod: &Value, limit_ranges: &[Value]) -> Vec<String> {
    let mut out = Vec::new();
    let items: Vec<&Value> = limit_ranges
        .iter()
        .flat_map(|lr| lr["spec"]["limits"].as_array().into_iter().flatten())
        .filter(|i| i["type"] == "Container")
        .collect();
    for (field, c) in containers(&pod["spec"]) {
        let mut requests = list(&c["resources"]["requests"]);
        let mut limits = list(&c["resources"]["limits"]);
        for item in &items {
            for (r, v) in list(&item["default"]) {
                limits.entry(r).or_insert(v);
            }
            for (r, v) in list(&item["defaultRequest"]) {
                requests.entry(r).or_insert(v);
            }
        }
        // Upstream defaults a missing request to the limit.
        for (r, v) in &limits {
            requests.entry(*r).or_insert_with(|| v.clone());
        }
        for item in &items {
            for (r, (min, min_raw)) in list(&item["min"]) {
                let name = r.as_str();
                match requests.get(&r) {
                    Some((req, raw)) if req < &min => out.push(format!("{field}: minimum {name} usage per Container is {min_raw}, but request is {raw}")),
                    None => out.push(format!("{field}: minimum {name} usage per Container is {min_raw}.  No request is specified")),
                    _ => {}
                }
                if let Some((lim, raw)) = limits.get(&r) {
                    if lim < &min {
                        out.push(format!("{field}: minimum {name} usage per Container is {min_raw}, but limit is {raw}"));
                    }
                }
            }
            for (r, (max, max_raw)) in list(&item["max"]) {
                let name = r.as_str();
                match limits.get(&r) {
                    Some((lim, raw)) if lim > &max => out.push(format!("{field}: maximum {name} usage per Container is {max_raw}, but limit is {raw}")),
                    None => out.push(format!("{field}: maximum {name} usage per Container is {max_raw}.  No limit is specified")),
                    _ => {}
                }
            }
            for (r, (ratio, ratio_raw)) in list(&item["maxLimitRequestRatio"]) {
                // "the named resource must have a request and limit that
                // are both non-zero" (the API's LimitRangeItem).
                let (Some((lim, _)), Some((req, _))) = (limits.get(&r), requests.get(&r)) else {
                    let missing = if requests.contains_key(&r) {
                        "limit"
                    } else {
                        "request"
                    };
                    out.push(format!(
                        "{field}: {} max limit to request ratio per Container is {ratio_raw}, but no {missing} is specified or {missing} is 0",
                        r.as_str()
                    ));
                    continue;
                };
                // Ratios are plain numbers: compare in the resource's units.
                let ratio = ratio as f64 / if r == Resource::Cpu { 1000.0 } else { 1.0 };
                if *req == 0 || (*lim as f64) / (*req as f64) > ratio + 1e-9 {
                    out.push(format!(
                        "{field}: {} max limit to request ratio per Container is {ratio_raw}",
                        r.as_str()
                    ));
                }
            }
        }
    }
    out
}
