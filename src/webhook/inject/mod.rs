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
mod resolve;
mod spec;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Pod, PodSpec,
    Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::config::aws::Region;
use crate::config::settings::{aws as aws_settings, log, sidecar as sidecar_settings, vars};

use self::annotations::names;
use self::decide::Decision;
use self::resolve::{Resolved, TOKEN_FILE};
use self::spec::SidecarSpec;
use self::types::{Quantity, SidecarMode};

pub use self::decide::{needs, opted_in, service_account_name, Needs, Skip};
pub use self::resolve::{RoleSource, SidecarAuth, TokenAccess, TokenVolume};
pub use self::spec::{RequestAboveLimit, Resources, SidecarDefaults};

/// Name of the injected container.
pub const CONTAINER_NAME: &str = "bedrock-broker";
/// Name of the admin port, for PodMonitors and probes.
pub const ADMIN_PORT_NAME: &str = "bb-admin";
/// `defaultMode` of our token volume: readable by the sidecar whatever UID
/// it runs as, when the kubelet does not set an owner (see [`TokenAccess`]).
/// The volume is mounted into the sidecar only.
pub const TOKEN_DEFAULT_MODE: i32 = 0o444;

/// Variables the app containers get (when they do not set them already).
pub mod app_vars {
    /// The proxy's base URL, for clients configured by hand.
    pub const BEDROCK_BROKER_URL: &str = "BEDROCK_BROKER_URL";
    /// The OpenAI SDKs' base URL variable.
    pub const OPENAI_BASE_URL: &str = "OPENAI_BASE_URL";
    /// The AWS SDKs' service-specific endpoint variable for bedrock-runtime.
    pub const AWS_ENDPOINT_URL_BEDROCK_RUNTIME: &str = "AWS_ENDPOINT_URL_BEDROCK_RUNTIME";
}

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
    let Resolved {
        auth,
        region,
        token_access,
    } = resolved;
    let options = sidecar;

    let plan = Plan {
        pod,
        spec,
        sidecar: &options,
        region: &region,
        token_access,
    };
    plan.build(auth)
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
    sidecar: &'a SidecarSpec,
    region: &'a Region,
    /// Decides the sidecar's UID.
    token_access: TokenAccess,
}

/// An environment variable from the downward API.
fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                api_version: None,
                field_path: field_path.to_owned(),
            }),
            ..Default::default()
        }),
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
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

fn quantity(q: &Quantity) -> K8sQuantity {
    K8sQuantity(q.as_str().to_owned())
}

impl Plan<'_> {
    fn build(&self, auth: SidecarAuth) -> Result<Outcome, Denial> {
        let token = auth.token();
        let sidecar = self.sidecar(&auth);

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
        if let Some(TokenVolume::Own(name)) = token {
            let value = to_value(&self.own_token_volume(name))?;
            match &self.spec.volumes {
                None => ops.push(add(pointer(["spec", "volumes"]), Value::Array(vec![value]))),
                Some(_) => ops.push(add(pointer(["spec", "volumes", "-"]), value)),
            }
        }
        // App env first: these paths use the original container indexes,
        // which the insertion of the native sidecar below shifts.
        let app_env = self.app_env();
        let mut lists: Vec<(&str, &[Container])> = vec![("containers", &self.spec.containers)];
        if self.sidecar.mode.value == SidecarMode::Native {
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
        let sidecar = name_first(to_value(&sidecar)?);
        match (self.sidecar.mode.value, &self.spec.init_containers) {
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
        Ok(Outcome::Injected(Box::new(Injection {
            patch: Patch(ops),
            mode: self.sidecar.mode.value,
            auth,
            token_access: self.token_access,
        })))
    }

    fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.sidecar.port)
    }

    fn app_env(&self) -> Vec<EnvVar> {
        let base = self.proxy_url();
        vec![
            env(app_vars::BEDROCK_BROKER_URL, base.clone()),
            env(app_vars::OPENAI_BASE_URL, format!("{base}/openai/v1")),
            env(app_vars::AWS_ENDPOINT_URL_BEDROCK_RUNTIME, base),
        ]
    }

    /// Our projected token volume, under the free `name`.
    fn own_token_volume(&self, name: &str) -> Volume {
        Volume {
            name: name.to_owned(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(TOKEN_DEFAULT_MODE),
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(self.sidecar.audience.value.as_str().to_owned()),
                        expiration_seconds: Some(self.sidecar.token_expiration.value.seconds()),
                        path: TOKEN_FILE.to_owned(),
                    }),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        }
    }

    fn sidecar(&self, auth: &SidecarAuth) -> Container {
        let o = self.sidecar;
        let mut sidecar_env = vec![env(aws_settings::REGION.var(), self.region.as_str())];
        match auth {
            SidecarAuth::WebIdentity { role, token, .. } => {
                sidecar_env.push(env(vars::AWS_ROLE_ARN.name, role.as_str()));
                sidecar_env.push(env(
                    vars::AWS_WEB_IDENTITY_TOKEN_FILE.name,
                    token.token_file(),
                ));
                match &o.session_name {
                    Some(name) => {
                        sidecar_env.push(env(vars::AWS_ROLE_SESSION_NAME.name, name.as_str()))
                    }
                    // The sidecar names its STS session <namespace>.<pod>,
                    // so CloudTrail shows which pod called.
                    None => {
                        sidecar_env.push(field_env(vars::POD_NAMESPACE.name, "metadata.namespace"));
                        sidecar_env.push(field_env(vars::POD_NAME.name, "metadata.name"));
                    }
                }
            }
            SidecarAuth::ApiKey(secret) => {
                sidecar_env.push(EnvVar {
                    name: vars::AWS_BEARER_TOKEN_BEDROCK.name.to_owned(),
                    value: None,
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: secret.name.clone(),
                            key: secret.key.clone(),
                            optional: Some(false),
                        }),
                        ..Default::default()
                    }),
                });
            }
        }
        sidecar_env.push(env(
            sidecar_settings::LISTEN.var(),
            format!("127.0.0.1:{}", o.port),
        ));
        sidecar_env.push(env(
            sidecar_settings::ADMIN_LISTEN.var(),
            format!("0.0.0.0:{}", o.admin_port),
        ));
        sidecar_env.push(env(log::FORMAT.var(), o.log_format.as_str()));
        sidecar_env.push(env(vars::RUST_LOG.name, o.log_level.as_str()));

        let r = &o.resources;
        let quantities = |cpu: &Option<Quantity>, memory: &Option<Quantity>| {
            [("cpu", cpu), ("memory", memory)]
                .into_iter()
                .filter_map(|(k, q)| Some((k.to_owned(), quantity(q.as_ref()?))))
                .collect::<BTreeMap<_, _>>()
        };
        let requests = quantities(&r.cpu_request, &r.memory_request);
        let limits = quantities(&r.cpu_limit, &r.memory_limit);
        let resources =
            (!requests.is_empty() || !limits.is_empty()).then(|| ResourceRequirements {
                requests: (!requests.is_empty()).then_some(requests),
                limits: (!limits.is_empty()).then_some(limits),
                ..Default::default()
            });

        let probe = |path: &str, period: i32, failures: i32| Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.to_owned()),
                port: IntOrString::String(ADMIN_PORT_NAME.to_owned()),
                ..Default::default()
            }),
            period_seconds: Some(period),
            failure_threshold: Some(failures),
            timeout_seconds: Some(2),
            ..Default::default()
        };

        let run_as_user = match self.token_access {
            TokenAccess::SharedUser(uid) => uid,
            TokenAccess::FsGroup(_) | TokenAccess::DefaultMode => o.run_as_user,
        };

        Container {
            name: CONTAINER_NAME.to_owned(),
            image: Some(o.image.as_str().to_owned()),
            image_pull_policy: o.pull_policy.map(|p| p.as_str().to_owned()),
            args: Some(vec!["sidecar".to_owned()]),
            env: Some(sidecar_env),
            ports: Some(vec![ContainerPort {
                name: Some(ADMIN_PORT_NAME.to_owned()),
                container_port: i32::from(o.admin_port.get()),
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            resources,
            // Gates the app (native mode): it starts once credentials are
            // usable. Two minutes before the kubelet restarts the sidecar.
            startup_probe: Some(probe("/readyz", 1, 120)),
            readiness_probe: Some(probe("/readyz", 5, 2)),
            liveness_probe: Some(probe("/healthz", 10, 3)),
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(run_as_user),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    add: None,
                }),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    localhost_profile: None,
                }),
                ..Default::default()
            }),
            volume_mounts: auth.token().map(|t| {
                vec![VolumeMount {
                    name: t.name().to_owned(),
                    mount_path: t.mount_path().to_owned(),
                    read_only: Some(true),
                    ..Default::default()
                }]
            }),
            restart_policy: (o.mode.value == SidecarMode::Native).then(|| "Always".to_owned()),
            termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
            ..Default::default()
        }
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
