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

use crate::config::aws::{Region, RoleArn};
use crate::config::settings::{aws as aws_settings, log, sidecar as sidecar_settings, vars};

use self::annotations::names;
use self::decide::Decision;
use self::spec::{Origin, SidecarSpec};
use self::types::{Quantity, SecretKeyRef, SidecarMode};

pub use self::decide::{needs, opted_in, service_account_name, Needs, Skip};
pub use self::spec::{RequestAboveLimit, Resources, SidecarDefaults};

/// Name of the injected container.
pub const CONTAINER_NAME: &str = "bedrock-broker";
/// Name of the admin port, for PodMonitors and probes.
pub const ADMIN_PORT_NAME: &str = "bb-admin";
/// Preferred name of our projected token volume (suffixed if taken).
pub const TOKEN_VOLUME: &str = "bedrock-broker-token";
/// Where our token volume is mounted (only into the sidecar).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/bedrock-broker/serviceaccount";
/// File name of the token inside the volume.
pub const TOKEN_FILE: &str = "token";
/// `defaultMode` of our token volume: readable by the sidecar whatever UID
/// it runs as, when the kubelet does not set an owner (see [`TokenAccess`]).
/// The volume is mounted into the sidecar only.
pub const TOKEN_DEFAULT_MODE: i32 = 0o444;

/// The EKS Pod Identity Webhook's token volume, reused when present.
pub const EKS_TOKEN_VOLUME: &str = "aws-iam-token";
/// Where the EKS Pod Identity Webhook mounts its token.
pub const EKS_TOKEN_MOUNT_PATH: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";

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

/// How the sidecar's non-root user can read the projected token. The kubelet
/// writes the token file `0600` owned by the pod's common `runAsUser` when
/// every container has the same one; adds group read for `fsGroup`; and
/// otherwise uses the volume's `defaultMode`, owned by root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAccess {
    /// The pod has an `fsGroup`: the file is group-readable and every
    /// container has the group.
    FsGroup(i64),
    /// Every container already runs as this non-root UID: the sidecar runs
    /// as it too, so the kubelet keeps giving the file to that user.
    SharedUser(i64),
    /// Neither: the sidecar runs as its own UID and the file is readable
    /// through the volume's `defaultMode`.
    DefaultMode,
}

/// How the sidecar authenticates its calls to Bedrock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SidecarAuth {
    /// SigV4, with credentials for `role` from the pod's projected token.
    WebIdentity {
        role: RoleArn,
        source: RoleSource,
        token: TokenVolume,
    },
    /// A Bedrock API key from this Secret key (bearer mode): no role, no token.
    ApiKey(SecretKeyRef),
}

impl SidecarAuth {
    /// The token volume the sidecar mounts (none with an API key).
    pub fn token(&self) -> Option<&TokenVolume> {
        match self {
            Self::WebIdentity { token, .. } => Some(token),
            Self::ApiKey(_) => None,
        }
    }
}

/// The volume the sidecar reads its web identity token from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenVolume {
    /// Our own projected volume, added under this name (the first free one).
    Own(String),
    /// The EKS Pod Identity Webhook's volume, already in the pod and carrying
    /// the token we would project: mounted at `mount_path` in the app,
    /// with the token in `file`.
    ReusedEks { mount_path: String, file: String },
}

impl TokenVolume {
    fn name(&self) -> &str {
        match self {
            Self::Own(name) => name,
            Self::ReusedEks { .. } => EKS_TOKEN_VOLUME,
        }
    }

    /// Where the sidecar mounts the volume.
    fn mount_path(&self) -> &str {
        match self {
            Self::Own(_) => TOKEN_MOUNT_PATH,
            Self::ReusedEks { mount_path, .. } => mount_path,
        }
    }

    /// `AWS_WEB_IDENTITY_TOKEN_FILE` of the sidecar.
    fn token_file(&self) -> String {
        let file = match self {
            Self::Own(_) => TOKEN_FILE,
            Self::ReusedEks { file, .. } => file,
        };
        format!("{}/{file}", self.mount_path().trim_end_matches('/'))
    }
}

/// Where the role ARN was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleSource {
    PodAnnotation,
    ServiceAccount,
    /// `AWS_ROLE_ARN` already set in a container (the EKS Pod Identity Webhook's).
    ContainerEnv,
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
    let options = match SidecarSpec::from_defaults(defaults).overlay(annotations(pod)) {
        Ok(o) => Some(o),
        Err(p) => {
            problems.extend(p);
            None
        }
    };
    check_pod_shape(spec, options.as_ref(), &mut problems);
    let token_access = token_access(spec);
    let auth = options
        .as_ref()
        .and_then(|o| resolve_auth(pod, spec, o, facts, token_access, &mut problems));
    let region = options
        .as_ref()
        .and_then(|o| resolve_region(spec, o, &mut problems));
    let (Some(options), Some(auth), Some(region), true) =
        (options, auth, region, problems.is_empty())
    else {
        return Err(Denial { problems });
    };

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

fn check_pod_shape(spec: &PodSpec, options: Option<&SidecarSpec>, problems: &mut Vec<String>) {
    if spec.host_network == Some(true) {
        problems.push(format!(
            "hostNetwork: true: the proxy on 127.0.0.1 would sign requests for every process on the node; run the pod without hostNetwork or opt it out with the label {}: \"false\"",
            names::INJECT_LABEL
        ));
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        problems.push(format!(
            "spec.os.name: windows: the sidecar runs on Linux only; opt the pod out with the label {}: \"false\"",
            names::INJECT_LABEL
        ));
    }
    let Some(o) = options else { return };
    let restart = spec.restart_policy.as_deref().unwrap_or("Always");
    if o.mode.value == SidecarMode::Classic && restart != "Always" {
        let from = if o.mode.origin == Origin::Annotation {
            names::SIDECAR_MODE.to_owned()
        } else {
            "the webhook's --sidecar-mode".to_owned()
        };
        problems.push(format!(
            "{from}: classic mode keeps a pod with restartPolicy {restart} running forever (a Job would never complete); use {}: native (Kubernetes 1.29+)",
            names::SIDECAR_MODE
        ));
    }
    for c in all_containers(spec) {
        for p in c.ports.iter().flatten() {
            for (name, port) in [(names::PORT, o.port), (names::ADMIN_PORT, o.admin_port)] {
                if i32::from(port.get()) == p.container_port {
                    problems.push(format!(
                        "{name}: port {port} is already used by container {:?}; choose another port with {name}",
                        c.name
                    ));
                }
            }
        }
    }
}

/// A literal value of `name` set in any container (not `valueFrom`).
fn container_env_value<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a str> {
    all_containers(spec)
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == name && e.value_from.is_none())
        .and_then(|e| e.value.as_deref())
        .filter(|v| !v.trim().is_empty())
}

fn resolve_auth(
    pod: &Pod,
    spec: &PodSpec,
    o: &SidecarSpec,
    facts: &ClusterFacts<'_>,
    token_access: TokenAccess,
    problems: &mut Vec<String>,
) -> Option<SidecarAuth> {
    if let Some(secret) = &o.api_key_secret {
        return Some(SidecarAuth::ApiKey(secret.clone()));
    }
    let (role, source) = resolve_role(pod, spec, o, facts, problems)?;
    Some(SidecarAuth::WebIdentity {
        role,
        source,
        token: token_volume(spec, o, token_access),
    })
}

fn resolve_role(
    pod: &Pod,
    spec: &PodSpec,
    o: &SidecarSpec,
    facts: &ClusterFacts<'_>,
    problems: &mut Vec<String>,
) -> Option<(RoleArn, RoleSource)> {
    if let Some(role) = &o.role_arn {
        return Some((role.clone(), RoleSource::PodAnnotation));
    }
    let sa = service_account_name(pod);
    if let Some(raw) = facts
        .service_account_annotations
        .and_then(|a| a.get(names::EKS_ROLE_ARN))
    {
        return match RoleArn::parse(raw.trim()) {
            Ok(role) => Some((role, RoleSource::ServiceAccount)),
            Err(m) => {
                problems.push(format!(
                    "ServiceAccount {sa:?} annotation {}: {m}; fix the ServiceAccount or set {} on the pod",
                    names::EKS_ROLE_ARN,
                    names::ROLE_ARN
                ));
                None
            }
        };
    }
    if let Some(role) = container_env_value(spec, vars::AWS_ROLE_ARN.name)
        .and_then(|raw| RoleArn::parse(raw.trim()).ok())
    {
        return Some((role, RoleSource::ContainerEnv));
    }
    let ns = facts
        .namespace
        .map(|n| format!(" in namespace {n:?}"))
        .unwrap_or_default();
    let sa_note = if facts.service_account_annotations.is_none() {
        " (it could not be read)"
    } else {
        ""
    };
    problems.push(format!(
        "no IAM role: set the pod annotation {} to a role ARN, or annotate ServiceAccount {sa:?}{ns}{sa_note} with {}, or use a Bedrock API key with {}: <secret-name>/<key>",
        names::ROLE_ARN,
        names::EKS_ROLE_ARN,
        names::API_KEY_SECRET
    ));
    None
}

fn resolve_region(spec: &PodSpec, o: &SidecarSpec, problems: &mut Vec<String>) -> Option<Region> {
    if let Some(r) = &o.region {
        return Some(r.clone());
    }
    let from_env = container_env_value(spec, aws_settings::REGION.env[0])
        .or_else(|| container_env_value(spec, aws_settings::REGION.env[1]))
        .and_then(|raw| Region::parse(raw.trim()).ok());
    if from_env.is_none() {
        problems.push(format!(
            "no AWS region: set the pod annotation {} (for example us-east-1), or give the webhook a default with --sidecar-region",
            names::REGION
        ));
    }
    from_env
}

fn token_access(spec: &PodSpec) -> TokenAccess {
    let pod_sc = spec.security_context.as_ref();
    if let Some(gid) = pod_sc.and_then(|s| s.fs_group) {
        return TokenAccess::FsGroup(gid);
    }
    let pod_uid = pod_sc.and_then(|s| s.run_as_user);
    let mut uids = all_containers(spec).map(|c| {
        c.security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_uid)
    });
    let first = uids.next().flatten();
    match first {
        Some(uid) if uid != 0 && uids.all(|u| u == Some(uid)) => TokenAccess::SharedUser(uid),
        _ => TokenAccess::DefaultMode,
    }
}

/// Reuses the EKS Pod Identity Webhook's token volume when it carries the
/// token we would project ourselves, and the sidecar can read it; else names
/// our own.
fn token_volume(spec: &PodSpec, o: &SidecarSpec, token_access: TokenAccess) -> TokenVolume {
    let volumes = spec.volumes.as_deref().unwrap_or(&[]);
    let eks = volumes
        .iter()
        .find(|v| v.name == EKS_TOKEN_VOLUME)
        .and_then(|v| {
            let projected = v.projected.as_ref()?;
            let sat = projected
                .sources
                .iter()
                .flatten()
                .find_map(|s| s.service_account_token.as_ref())?;
            Some((projected.default_mode, sat))
        });
    if let Some((default_mode, sat)) = eks {
        let audience_matches = sat.audience.as_deref().unwrap_or("") == o.audience.value.as_str();
        let readable = match token_access {
            TokenAccess::DefaultMode => default_mode.is_none_or(|m| m & 0o004 != 0),
            TokenAccess::FsGroup(_) | TokenAccess::SharedUser(_) => true,
        };
        if audience_matches && readable && !o.token_from_annotation() {
            let mount_path = all_containers(spec)
                .flat_map(|c| c.volume_mounts.iter().flatten())
                .find(|m| m.name == EKS_TOKEN_VOLUME)
                .map(|m| m.mount_path.clone())
                .unwrap_or_else(|| EKS_TOKEN_MOUNT_PATH.to_owned());
            return TokenVolume::ReusedEks {
                mount_path,
                file: sat.path.clone(),
            };
        }
    }
    let taken = |name: &str| volumes.iter().any(|v| v.name == name);
    let name = std::iter::once(TOKEN_VOLUME.to_owned())
        .chain((1..).map(|i| format!("{TOKEN_VOLUME}-{i}")))
        .find(|n| !taken(n))
        .unwrap_or_else(|| TOKEN_VOLUME.to_owned());
    TokenVolume::Own(name)
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
