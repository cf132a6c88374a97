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
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
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

/// The largest patch answered: the API server stores objects up to 1.5
/// MiB, so a pod that needs more could not be created anyway.
pub const MAX_PATCH_BYTES: usize = 1024 * 1024;

/// The app variables a container does not set itself. Init containers get
/// them only in native mode: a classic sidecar starts after they have run.
///
/// Each container that already has an `env` list gets one operation per
/// variable, so a small review can ask for a large patch (30,000
/// containers with `env: []` in 0.8 MB of review: 33 MB of patch, and
/// ten times that held while building it). The operations' size is
/// counted as they are made, and the pod is refused once it passes
/// [`MAX_PATCH_BYTES`], before the rest is built.
fn add_app_env(
    spec: &PodSpec,
    mode: SidecarMode,
    app_env: &[AppVar],
) -> Result<Vec<PatchOperation>, Denial> {
    add_app_env_within(spec, mode, app_env, MAX_PATCH_BYTES).map(|(ops, _)| ops)
}

/// [`add_app_env`] refusing past `max` bytes; also returns the bytes
/// counted (at most what the operations take once encoded).
fn add_app_env_within(
    spec: &PodSpec,
    mode: SidecarMode,
    app_env: &[AppVar],
    max: usize,
) -> Result<(Vec<PatchOperation>, usize), Denial> {
    // Each list, and the first of its containers that can use the sidecar:
    // init containers that start before it cannot.
    let mut lists: Vec<(&str, &[Container], usize)> = vec![("containers", &spec.containers, 0)];
    if mode == SidecarMode::Native {
        if let Some(init) = &spec.init_containers {
            lists.push(("initContainers", init, sidecar_index(spec)));
        }
    }
    // Each variable's value once, and the bytes it takes in the patch.
    let values = app_env
        .iter()
        .map(|v| {
            let value = to_value(&v.var)?;
            let size = value.to_string().len();
            Ok((value, size))
        })
        .collect::<Result<Vec<_>, Denial>>()?;
    let containers: usize = lists
        .iter()
        .map(|(_, c, first)| c.len().saturating_sub(*first))
        .sum();
    let mut size = 0;
    let mut counted = |path: &PointerBuf, value: usize| {
        // `{"op":"add","path":…,"value":…},`: a lower bound of what the
        // operation takes once encoded.
        size += 30 + path.as_str().len() + value;
        if size > max {
            return Err(Denial::one(format!(
                "its patch is too large: more than {max} bytes (the client variables added to each of its {containers} containers), so the pod it made could not be stored (the API server keeps objects up to 1.5 MiB)"
            )));
        }
        Ok(())
    };
    let mut ops = Vec::new();
    for (field, containers, first) in lists {
        for (i, c) in containers.iter().enumerate().skip(first) {
            let sets = |name: &&str| c.env.iter().flatten().any(|e| e.name == *name);
            let missing: Vec<&(Value, usize)> = app_env
                .iter()
                .zip(&values)
                .filter(|(v, _)| !v.unless_set.iter().any(sets))
                .map(|(_, value)| value)
                .collect();
            if missing.is_empty() {
                continue;
            }
            let index = i.to_string();
            match &c.env {
                None => {
                    let path = pointer(["spec", field, &index, "env"]);
                    counted(&path, missing.iter().map(|(_, n)| n + 1).sum())?;
                    let list = missing.into_iter().map(|(v, _)| v.clone()).collect();
                    ops.push(add(path, Value::Array(list)));
                }
                Some(_) => {
                    for (value, n) in missing {
                        let path = pointer(["spec", field, &index, "env", "-"]);
                        counted(&path, *n)?;
                        ops.push(add(path, value.clone()));
                    }
                }
            }
        }
    }
    Ok((ops, size))
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::EnvVar;

    use super::*;

    fn var(name: &str, value: &str) -> AppVar {
        AppVar {
            var: EnvVar {
                name: name.to_owned(),
                value: Some(value.to_owned()),
                ..Default::default()
            },
            unless_set: &[],
        }
    }

    /// `n` containers of every shape: an `env` list empty (one operation
    /// per variable), one that sets `OPENAI_BASE_URL` itself, or none
    /// (one operation for the container).
    fn containers(prefix: &str, n: usize) -> Vec<Container> {
        (0..n)
            .map(|i| Container {
                name: format!("{prefix}{i}"),
                env: match i % 3 {
                    0 => Some(Vec::new()),
                    1 => Some(vec![EnvVar {
                        name: "OPENAI_BASE_URL".to_owned(),
                        value: Some("mine".to_owned()),
                        ..Default::default()
                    }]),
                    _ => None,
                },
                ..Default::default()
            })
            .collect()
    }

    fn pod_of(n: usize) -> PodSpec {
        PodSpec {
            containers: containers("c", n),
            ..Default::default()
        }
    }

    /// Native mode: a mesh's pair first (its setup and its native proxy
    /// start before the sidecar and get nothing), then `n` init containers
    /// that do.
    fn pod_with_init(n: usize) -> PodSpec {
        let mut init = vec![
            Container {
                name: "istio-init".to_owned(),
                env: Some(Vec::new()),
                ..Default::default()
            },
            Container {
                name: "istio-proxy".to_owned(),
                env: Some(Vec::new()),
                restart_policy: Some("Always".to_owned()),
                ..Default::default()
            },
        ];
        init.extend(containers("i", n));
        PodSpec {
            init_containers: Some(init),
            containers: containers("c", 1),
            ..Default::default()
        }
    }

    fn client_vars() -> [AppVar; 3] {
        let mut openai = var("OPENAI_BASE_URL", "http://127.0.0.1:9787/openai/v1");
        openai.unless_set = &["OPENAI_BASE_URL"];
        [
            var("BEDROCK_BROKER_URL", "http://127.0.0.1:9787"),
            openai,
            var("A\"quoted\u{e9}", "line\nbreak"),
        ]
    }

    #[test]
    fn what_is_counted_never_exceeds_the_encoded_patch() {
        // A lower bound: a pod refused for its count would have been
        // refused for its encoded patch too.
        let vars = client_vars();
        for n in [1, 2, 7, 100, 1000] {
            for (shape, pod) in [("containers", pod_of(n)), ("init", pod_with_init(n))] {
                let (ops, counted) =
                    add_app_env_within(&pod, SidecarMode::Native, &vars, usize::MAX)
                        .expect("no limit");
                let encoded = serde_json::to_vec(&Patch(ops)).expect("encodes").len();
                assert!(counted <= encoded, "{shape} {n}: {counted} > {encoded}");
                // And close to it, so the limit bites where the patch does.
                assert!(
                    counted * 10 >= encoded * 9,
                    "{shape} {n}: {counted} of {encoded}"
                );
            }
        }
    }

    #[test]
    fn a_patch_past_the_limit_is_refused_before_it_is_built() {
        let vars = client_vars();
        let (_, small) = add_app_env_within(&pod_of(10), SidecarMode::Native, &vars, usize::MAX)
            .expect("no limit");
        let refused = add_app_env_within(&pod_of(11), SidecarMode::Native, &vars, small)
            .expect_err("over the limit");
        let text = refused.to_string();
        assert!(
            text.contains(&format!("too large: more than {small} bytes"))
                && text.contains("its 11 containers"),
            "{text}"
        );
        assert!(add_app_env_within(&pod_of(10), SidecarMode::Native, &vars, small).is_ok());
        // 30,000 containers in a review of 0.8 MB; init containers too, of
        // which the mesh's two, starting before the sidecar, are not counted.
        for (pod, n) in [(pod_of(30_000), 30_000), (pod_with_init(30_000), 30_001)] {
            let text = add_app_env(&pod, SidecarMode::Native, &vars)
                .expect_err("a patch of megabytes")
                .to_string();
            assert!(
                text.contains(&format!("more than {MAX_PATCH_BYTES} bytes"))
                    && text.contains(&format!("its {n} containers")),
                "{text}"
            );
        }
    }
}
