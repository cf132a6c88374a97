//! The pod mutation: a pure function from a Pod (plus what the cluster says
//! about its namespace and ServiceAccount) to a JSON patch.
//!
//! The patch is built from typed operations on escaped JSON pointers, and
//! only ever *adds*: new entries are appended (or, for the native sidecar,
//! inserted first among the init containers), so fields this build of
//! `k8s-openapi` does not know survive untouched, and containers the pod
//! already has are never removed or reordered.

mod annotations;
mod decide;
mod render;
mod resolve;
mod spec;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec};
use serde_json::Value;

use self::annotations::names;
use self::decide::Decision;
use self::render::Rendered;
use self::spec::SidecarSpec;
use self::types::SidecarMode;

pub use self::decide::{needs, opted_in, service_account_name, Needs, Skip};
pub use self::render::CONTAINER_NAME;
pub use self::resolve::{RoleSource, SidecarAuth, TokenAccess, TokenVolume};
pub use self::spec::{RequestAboveLimit, Resources, SidecarDefaults};

/// What the cluster says about the pod's surroundings. `None` means "not
/// known" (not looked up, or the lookup failed under the `skip` policy).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterFacts<'a> {
    /// The pod's namespace, for messages.
    pub namespace: Option<&'a str>,
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    pub service_account_annotations: Option<&'a BTreeMap<String, String>>,
}

/// A successful injection.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub patch: Patch,
    pub mode: SidecarMode,
    pub auth: SidecarAuth,
    pub token_access: TokenAccess,
}

/// The result of [`inject()`] for an admitted pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Skipped(Skip),
    Injected(Box<Injection>),
}

/// Why an opted-in pod is refused: every problem found, each naming the
/// annotation (or label, or field) to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Denial {
    pub problems: Vec<String>,
}

impl Denial {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bedrock-broker cannot inject this pod: {}",
            self.problems.join("; ")
        )
    }
}

/// Decides and builds the injection for one pod.
pub fn inject(
    pod: &Pod,
    facts: &ClusterFacts<'_>,
    defaults: &SidecarDefaults,
) -> Result<Outcome, Denial> {
    let spec = match decide::decide(pod, facts)? {
        Decision::Skip(skip) => return Ok(Outcome::Skipped(skip)),
        Decision::Inject(spec) => spec,
    };

    let mut problems = Vec::new();
    let sidecar = match SidecarSpec::from_defaults(defaults).overlay(annotations(pod)) {
        Ok(sidecar) => Some(sidecar),
        Err(p) => {
            problems = p;
            None
        }
    };
    let resolved = resolve::resolve(pod, spec, sidecar.as_ref(), facts, &mut problems);
    let (Some(sidecar), Some(resolved), true) = (sidecar, resolved, problems.is_empty()) else {
        return Err(Denial { problems });
    };
    let rendered = render::render(&sidecar, &resolved);

    let plan = Plan {
        pod,
        spec,
        mode: sidecar.mode.value,
    };
    let patch = plan.build(&rendered)?;
    Ok(Outcome::Injected(Box::new(Injection {
        patch,
        mode: sidecar.mode.value,
        auth: resolved.auth,
        token_access: resolved.token_access,
    })))
}

/// The pod's annotations (none is the same as empty).
fn annotations(pod: &Pod) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    pod.metadata.annotations.as_ref().unwrap_or(&EMPTY)
}

/// Init containers, then containers.
fn all_containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
}

/// Everything decided about one pod, from which the patch is built.
struct Plan<'a> {
    /// The pod as received (its annotations decide the first operation).
    pod: &'a Pod,
    spec: &'a PodSpec,
    mode: SidecarMode,
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

impl Plan<'_> {
    fn build(&self, rendered: &Rendered) -> Result<Patch, Denial> {
        let mut ops = Vec::new();
        match &self.pod.metadata.annotations {
            None => ops.push(add(
                pointer(["metadata", "annotations"]),
                serde_json::json!({ names::INJECTED: env!("CARGO_PKG_VERSION") }),
            )),
            Some(_) => ops.push(add(
                pointer(["metadata", "annotations", names::INJECTED]),
                Value::String(env!("CARGO_PKG_VERSION").to_owned()),
            )),
        }
        if let Some(volume) = &rendered.volume {
            let value = to_value(volume)?;
            match &self.spec.volumes {
                None => ops.push(add(pointer(["spec", "volumes"]), Value::Array(vec![value]))),
                Some(_) => ops.push(add(pointer(["spec", "volumes", "-"]), value)),
            }
        }
        // App env first: these paths use the original container indexes,
        // which the insertion of the native sidecar below shifts.
        let app_env = &rendered.app_env;
        let mut lists: Vec<(&str, &[Container])> = vec![("containers", &self.spec.containers)];
        if self.mode == SidecarMode::Native {
            if let Some(init) = &self.spec.init_containers {
                lists.push(("initContainers", init));
            }
        }
        for (field, containers) in lists {
            for (i, c) in containers.iter().enumerate() {
                let missing: Vec<&EnvVar> = app_env
                    .iter()
                    .filter(|v| !c.env.iter().flatten().any(|e| e.name == v.name))
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
        let sidecar = name_first(to_value(&rendered.container)?);
        match (self.mode, &self.spec.init_containers) {
            (SidecarMode::Native, None) => ops.push(add(
                pointer(["spec", "initContainers"]),
                Value::Array(vec![sidecar]),
            )),
            (SidecarMode::Native, Some(_)) => {
                ops.push(add(pointer(["spec", "initContainers", "0"]), sidecar))
            }
            (SidecarMode::Classic, _) => {
                ops.push(add(pointer(["spec", "containers", "-"]), sidecar))
            }
        }
        Ok(Patch(ops))
    }
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

/// Applies `patch` to a pod (or any object) given as JSON, as the API server would.
pub fn apply(object: &Value, patch: &Patch) -> Result<Value, json_patch::PatchError> {
    let mut out = object.clone();
    json_patch::patch(&mut out, patch)?;
    Ok(out)
}
