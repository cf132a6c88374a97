//! The JSON patch that places the rendered sidecar into the pod.
//!
//! The patch is built from typed operations on escaped JSON pointers, and
//! only ever *adds*: new entries are appended (or, for the native sidecar,
//! inserted among the init containers, first but for a service mesh's), so fields this build of
//! `k8s-openapi` does not know survive untouched, and containers the pod
//! already has are never removed or reordered. The one value it changes is
//! a pod-level resource quantity the sidecar must be counted in (an `add`
//! onto an existing member replaces it, RFC 6902 4.1; see `fit`).

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use serde_json::Value;

use super::annotations::names;
use super::fit::Fitted;
use super::render::{AppVar, Rendered};
use super::types::SidecarMode;
use super::Denial;

pub fn build(
    pod: &Pod,
    spec: &PodSpec,
    mode: SidecarMode,
    rendered: &Rendered,
    fitted: &Fitted,
) -> Result<Patch, Denial> {
    let mut ops = vec![mark_injected(pod)];
    ops.extend(fitted.pod_resources.iter().map(|raise| {
        add(
            pointer([
                "spec",
                "resources",
                raise.kind.as_str(),
                raise.resource.as_str(),
            ]),
            Value::String(raise.to.as_str().to_owned()),
        )
    }));
    if let Some(volume) = &rendered.volume {
        ops.push(add_volume(spec, to_value(volume)?));
    }
    // App env first: these paths use the original container indexes,
    // which the insertion of the native sidecar below shifts.
    ops.extend(add_app_env(spec, mode, &rendered.app_env)?);
    let sidecar = name_first(to_value(&rendered.container)?);
    ops.push(add_sidecar(spec, mode, sidecar));
    Ok(Patch(ops))
}

/// The mark that keeps a pod from being injected twice (webhook
/// reinvocation, `inject` run again over its own output).
fn mark_injected(pod: &Pod) -> PatchOperation {
    let version = env!("CARGO_PKG_VERSION");
    match &pod.metadata.annotations {
        None => add(
            pointer(["metadata", "annotations"]),
            serde_json::json!({ names::INJECTED: version }),
        ),
        Some(_) => add(
            pointer(["metadata", "annotations", names::INJECTED]),
            Value::String(version.to_owned()),
        ),
    }
}

fn add_volume(spec: &PodSpec, volume: Value) -> PatchOperation {
    match &spec.volumes {
        None => add(pointer(["spec", "volumes"]), Value::Array(vec![volume])),
        Some(_) => add(pointer(["spec", "volumes", "-"]), volume),
    }
}

/// The app variables a container does not set itself. Init containers get
/// them only in native mode: a classic sidecar starts after they have run.
fn add_app_env(
    spec: &PodSpec,
    mode: SidecarMode,
    app_env: &[AppVar],
) -> Result<Vec<PatchOperation>, Denial> {
    let mut lists: Vec<(&str, &[Container])> = vec![("containers", &spec.containers)];
    if mode == SidecarMode::Native {
        if let Some(init) = &spec.init_containers {
            lists.push(("initContainers", init));
        }
    }
    let mut ops = Vec::new();
    for (field, containers) in lists {
        // Init containers that start before the sidecar cannot use it.
        let first = match field {
            "initContainers" => sidecar_index(spec),
            _ => 0,
        };
        for (i, c) in containers.iter().enumerate().skip(first) {
            let sets = |name: &&str| c.env.iter().flatten().any(|e| e.name == *name);
            let missing: Vec<&EnvVar> = app_env
                .iter()
                .filter(|v| !v.unless_set.iter().any(sets))
                .map(|v| &v.var)
                .collect();
            if missing.is_empty() {
                continue;
            }
            let index = i.to_string();
            match &c.env {
                None => ops.push(add(
                    pointer(["spec", field, &index, "env"]),
                    to_value(&missing)?,
                )),
                Some(_) => {
                    for v in missing {
                        ops.push(add(
                            pointer(["spec", field, &index, "env", "-"]),
                            to_value(v)?,
                        ));
                    }
                }
            }
        }
    }
    Ok(ops)
}

/// Init containers of the service meshes that capture a pod's traffic
/// from its start (Istio, Linkerd): their proxy must run before anything
/// else in the pod can reach the network, the sidecar's STS calls too.
const MESH_INIT_CONTAINERS: [&str; 6] = [
    "istio-init",
    "istio-validation",
    "istio-proxy",
    "linkerd-init",
    "linkerd-network-validator",
    "linkerd-proxy",
];

/// The meshes' proxies, when they run as native sidecars.
const MESH_PROXIES: [&str; 2] = ["istio-proxy", "linkerd-proxy"];

/// Where a native sidecar goes among the init containers: first, so it is
/// ready before any other container of the pod starts, but after a mesh's
/// containers when their proxy runs as a native sidecar: those at the head
/// of the list (where the meshes put them, as Istio orders its own ahead
/// of the rest), or further down a mesh's own pair, its setup container
/// then its proxy (another webhook may have put a container ahead of
/// them, as Vault's agent does with agent-init-first). A container merely
/// named like a proxy further down moves nothing. A mesh whose proxy is an
/// ordinary container starts it after every init container: there the
/// sidecar stays first, and gets its credentials before the mesh's init
/// container captures the pod's traffic.
pub(super) fn sidecar_index(spec: &PodSpec) -> usize {
    let native_proxy = |c: &Container| {
        MESH_PROXIES.contains(&c.name.as_str()) && c.restart_policy.as_deref() == Some("Always")
    };
    let mesh = |c: &Container| MESH_INIT_CONTAINERS.contains(&c.name.as_str());
    let init: Vec<&Container> = spec.init_containers.iter().flatten().collect();
    let (head, native) = init
        .iter()
        .take_while(|c| mesh(c))
        .fold((0, false), |(n, native), c| {
            (n + 1, native || native_proxy(c))
        });
    let after_pair = init
        .windows(2)
        .rposition(|w| {
            mesh(w[0]) && !MESH_PROXIES.contains(&w[0].name.as_str()) && native_proxy(w[1])
        })
        .map_or(0, |i| i + 2);
    if native {
        head.max(after_pair)
    } else {
        after_pair
    }
}

fn add_sidecar(spec: &PodSpec, mode: SidecarMode, sidecar: Value) -> PatchOperation {
    match (mode, &spec.init_containers) {
        (SidecarMode::Native, None) => add(
            pointer(["spec", "initContainers"]),
            Value::Array(vec![sidecar]),
        ),
        (SidecarMode::Native, Some(_)) => add(
            pointer(["spec", "initContainers", &sidecar_index(spec).to_string()]),
            sidecar,
        ),
        (SidecarMode::Classic, _) => add(pointer(["spec", "containers", "-"]), sidecar),
    }
}

fn pointer<'t>(tokens: impl IntoIterator<Item = &'t str>) -> PointerBuf {
    PointerBuf::from_tokens(tokens)
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, Denial> {
    serde_json::to_value(v)
        .map_err(|e| Denial::one(format!("internal error building the patch: {e}")))
}

/// Puts `name` first in a container object (k8s-openapi serialises fields
/// alphabetically), so the injected container reads like a hand-written one.
fn name_first(value: Value) -> Value {
    match value {
        Value::Object(mut fields) => {
            let mut ordered = serde_json::Map::new();
            if let Some(name) = fields.remove("name") {
                ordered.insert("name".to_owned(), name);
            }
            ordered.extend(fields);
            Value::Object(ordered)
        }
        other => other,
    }
}

/// Re-roots a pod patch under the location of a pod template (`inject`
/// over workloads). Every operation is an `add`, so every path moves.
pub fn rebase(patch: Patch, prefix: &PointerBuf) -> Patch {
    Patch(
        patch
            .0
            .into_iter()
            .map(|op| match op {
                PatchOperation::Add(mut add) => {
                    add.path = prefix.concat(&add.path);
                    PatchOperation::Add(add)
                }
                other => other,
            })
            .collect(),
    )
}

/// Applies `patch` to a pod (or any object) given as JSON, as the API server would.
pub fn apply(object: &Value, patch: &Patch) -> Result<Value, json_patch::PatchError> {
    let mut out = object.clone();
    json_patch::patch(&mut out, patch)?;
    Ok(out)
}
