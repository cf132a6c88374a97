//! What the sidecar depends on beyond its own settings: whether the pod's
//! shape allows it at all, the IAM role (`role`), the region, and how the
//! sidecar's user can read the projected token.

use k8s_openapi::api::core::v1::{ContainerPort, NodeSelectorTerm, Pod, PodSpec};

use super::annotations::names;
use super::role::{resolve_role, RoleSource};
use super::spec::{Origin, SidecarSpec};
use super::types::{SecretKeyRef, SidecarMode};
use super::{all_containers, ClusterFacts};
use crate::config::aws::{Region, RoleArn};
use crate::config::settings::aws as aws_settings;

/// Preferred name of our projected token volume (suffixed if taken).
pub const TOKEN_VOLUME: &str = "bedrock-broker-token";
/// Where our token volume is mounted (only into the sidecar).
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/bedrock-broker/serviceaccount";
/// File name of the token inside the volume.
pub const TOKEN_FILE: &str = "token";

/// Node labels a pod's `nodeSelector` sends it to Windows nodes with (the
/// beta one is still set by the kubelet).
const WINDOWS_NODE_LABELS: [&str; 2] = ["kubernetes.io/os", "beta.kubernetes.io/os"];

/// The EKS Pod Identity Webhook's token volume, reused when present.
pub const EKS_TOKEN_VOLUME: &str = "aws-iam-token";
/// Where the EKS Pod Identity Webhook mounts its token.
pub const EKS_TOKEN_MOUNT_PATH: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";

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
    /// the token we would project; the sidecar mounts it where the app has
    /// it (`mount_path`) and reads the token from `file`.
    ReusedEks { mount_path: String, file: String },
}

impl TokenVolume {
    pub fn name(&self) -> &str {
        match self {
            Self::Own(name) => name,
            Self::ReusedEks { .. } => EKS_TOKEN_VOLUME,
        }
    }

    /// Where the sidecar mounts the volume.
    pub fn mount_path(&self) -> &str {
        match self {
            Self::Own(_) => TOKEN_MOUNT_PATH,
            Self::ReusedEks { mount_path, .. } => mount_path,
        }
    }

    /// `AWS_WEB_IDENTITY_TOKEN_FILE` of the sidecar.
    pub fn token_file(&self) -> String {
        let file = match self {
            Self::Own(_) => TOKEN_FILE,
            Self::ReusedEks { file, .. } => file,
        };
        format!("{}/{file}", self.mount_path().trim_end_matches('/'))
    }
}

/// What [`resolve`] found, for the render stage.
pub struct Resolved {
    pub auth: SidecarAuth,
    pub region: Region,
    /// Decides the sidecar's UID.
    pub token_access: TokenAccess,
    /// The pod's `terminationGracePeriodSeconds` (Kubernetes' default, 30,
    /// when unset): how long a classic-mode sidecar may keep serving its
    /// app after both are told to stop.
    pub termination_grace_seconds: i64,
}

/// Checks that the pod can take the sidecar, then finds its role and
/// region. Problems are added in that order; without `sidecar` (its
/// annotations were refused) only the pod's shape is checked.
pub fn resolve(
    pod: &Pod,
    spec: &PodSpec,
    sidecar: Option<&SidecarSpec>,
    facts: &ClusterFacts<'_>,
    problems: &mut Vec<String>,
) -> Option<Resolved> {
    check_pod_shape(spec, sidecar, facts, problems);
    let sidecar = sidecar?;
    let token_access = token_access(spec);
    let auth = resolve_auth(pod, spec, sidecar, facts, token_access, problems);
    let region = resolve_region(spec, sidecar, problems);
    Some(Resolved {
        auth: auth?,
        region: region?,
        token_access,
        termination_grace_seconds: spec.termination_grace_period_seconds.unwrap_or(30),
    })
}

fn check_pod_shape(
    spec: &PodSpec,
    sidecar: Option<&SidecarSpec>,
    facts: &ClusterFacts<'_>,
    problems: &mut Vec<String>,
) {
    if spec.host_network == Some(true) {
        problems.push(format!(
            "hostNetwork: true: the proxy on 127.0.0.1 would sign requests for every process on the node; run the pod without hostNetwork or opt it out with the label {}: \"false\"",
            names::INJECT_LABEL
        ));
    }
    // A shared PID namespace lets every process in it that runs as the
    // sidecar's UID read the sidecar's environment, memory and mounted
    // token through /proc/<pid>/. A UID of its own would not prove safe:
    // a container without runAsUser runs as its image's user, which the
    // webhook cannot see. So these pods are refused, like hostNetwork.
    for (field, set, who) in [
        (
            "shareProcessNamespace",
            spec.share_process_namespace,
            "the pod's other containers",
        ),
        ("hostPID", spec.host_pid, "processes on the node"),
    ] {
        if set == Some(true) {
            problems.push(format!(
                "{field}: true: {who}, when they run as the sidecar's user, could read its credentials and token through /proc; run the pod without {field} or opt it out with the label {}: \"false\"",
                names::INJECT_LABEL
            ));
        }
    }
    if spec.os.as_ref().is_some_and(|os| os.name == "windows") {
        problems.push(format!(
            "spec.os.name: windows: the sidecar runs on Linux only; opt the pod out with the label {}: \"false\"",
            names::INJECT_LABEL
        ));
    }
    // The usual way to send a pod to Windows nodes; spec.os is newer.
    if let Some(key) = spec.node_selector.as_ref().and_then(|selector| {
        WINDOWS_NODE_LABELS
            .into_iter()
            .find(|key| selector.get(*key).is_some_and(|os| os == "windows"))
    }) {
        problems.push(format!(
            "spec.nodeSelector {key}: windows: the sidecar runs on Linux only; opt the pod out with the label {}: \"false\"",
            names::INJECT_LABEL
        ));
    }
    if let Some(key) = windows_only_affinity(spec) {
        problems.push(format!(
            "spec.affinity.nodeAffinity requires {key} In [windows]: the sidecar runs on Linux only; opt the pod out with the label {}: \"false\"",
            names::INJECT_LABEL
        ));
    }
    let Some(sidecar) = sidecar else { return };
    let mode_from = || {
        if sidecar.mode.origin == Origin::Annotation {
            names::SIDECAR_MODE.to_owned()
        } else {
            "the webhook's --sidecar-mode".to_owned()
        }
    };
    if let Some(v) = facts.kube_version.filter(|v| !v.has_native_sidecars()) {
        if sidecar.mode.value == SidecarMode::Native {
            problems.push(format!(
                "{}: native sidecars need Kubernetes 1.29 or later, and this API server is {v}: set the pod annotation {}: classic, or the webhook's --sidecar-mode classic (chart value sidecar.mode) for every pod",
                mode_from(),
                names::SIDECAR_MODE
            ));
        }
    }
    let restart = spec.restart_policy.as_deref().unwrap_or("Always");
    if sidecar.mode.value == SidecarMode::Classic && restart != "Always" {
        let from = mode_from();
        problems.push(format!(
            "{from}: classic mode keeps a pod with restartPolicy {restart} running forever (a Job would never complete); use {}: native (Kubernetes 1.29+)",
            names::SIDECAR_MODE
        ));
    }
    for c in all_containers(spec) {
        // The proxy and admin ports are TCP; a UDP port (statsd) of the
        // same number does not collide.
        let tcp = |p: &&ContainerPort| p.protocol.as_deref().is_none_or(|p| p == "TCP");
        for p in c.ports.iter().flatten().filter(tcp) {
            for (name, port) in [
                (names::PORT, sidecar.port),
                (names::ADMIN_PORT, sidecar.admin_port),
            ] {
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

/// The node label by which a pod's required node affinity sends it to
/// Windows nodes only: every term (terms are alternatives) requires the
/// label to be `windows` and nothing else.
fn windows_only_affinity(spec: &PodSpec) -> Option<&'static str> {
    let terms = &spec
        .affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms;
    // The label of a term sending its pods to Windows only, if it does.
    let windows_key = |term: &NodeSelectorTerm| {
        WINDOWS_NODE_LABELS.into_iter().find(|key| {
            term.match_expressions.iter().flatten().any(|e| {
                e.key == *key
                    && e.operator == "In"
                    && e.values
                        .as_ref()
                        .is_some_and(|v| !v.is_empty() && v.iter().all(|os| os == "windows"))
            })
        })
    };
    let mut keys = terms.iter().map(windows_key);
    let first = keys.next()??;
    keys.all(|k| k.is_some()).then_some(first)
}

/// A literal value of `name` set in any container (not `valueFrom`).
pub(super) fn container_env_value<'a>(spec: &'a PodSpec, name: &str) -> Option<&'a str> {
    all_containers(spec)
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == name && e.value_from.is_none())
        .and_then(|e| e.value.as_deref())
        .filter(|v| !v.trim().is_empty())
}

fn resolve_auth(
    pod: &Pod,
    spec: &PodSpec,
    sidecar: &SidecarSpec,
    facts: &ClusterFacts<'_>,
    token_access: TokenAccess,
    problems: &mut Vec<String>,
) -> Option<SidecarAuth> {
    if let Some(secret) = &sidecar.api_key_secret {
        return Some(SidecarAuth::ApiKey(secret.clone()));
    }
    let (role, source) = resolve_role(pod, spec, sidecar, facts, problems)?;
    Some(SidecarAuth::WebIdentity {
        role,
        source,
        token: token_volume(spec, sidecar, token_access),
    })
}

/// The webhook default beats the containers' `AWS_REGION` on purpose: on
/// EKS every pod carries the cluster's region, while the platform team sets
/// the Bedrock region.
fn resolve_region(
    spec: &PodSpec,
    sidecar: &SidecarSpec,
    problems: &mut Vec<String>,
) -> Option<Region> {
    if let Some(r) = &sidecar.region {
        return Some(r.clone());
    }
    let from_env = container_env_value(spec, aws_settings::REGION.env[0])
        .or_else(|| container_env_value(spec, aws_settings::REGION.env[1]))
        .and_then(|raw| Region::parse(raw.trim()).ok());
    if from_env.is_none() {
        problems.push(format!(
            "no AWS region: set the pod annotation {} (for example us-east-1), or set a default with --sidecar-region (a flag of webhook and inject)",
            names::REGION
        ));
    }
    from_env
}

/// A UID shared by every container comes first, even beside an `fsGroup`
/// (the kubelet then gives the file to both): where a policy assigns both,
/// as OpenShift's restricted SCC does from the namespace's range, a UID of
/// the sidecar's own would be outside the range and the pod refused.
fn token_access(spec: &PodSpec) -> TokenAccess {
    let pod_sc = spec.security_context.as_ref();
    let pod_uid = pod_sc.and_then(|s| s.run_as_user);
    let mut uids = all_containers(spec).map(|c| {
        c.security_context
            .as_ref()
            .and_then(|s| s.run_as_user)
            .or(pod_uid)
    });
    let first = uids.next().flatten();
    match (first, pod_sc.and_then(|s| s.fs_group)) {
        (Some(uid), _) if uid != 0 && uids.all(|u| u == Some(uid)) => TokenAccess::SharedUser(uid),
        (_, Some(gid)) => TokenAccess::FsGroup(gid),
        _ => TokenAccess::DefaultMode,
    }
}

/// Reuses the EKS Pod Identity Webhook's token volume when it carries the
/// token we would project ourselves, and the sidecar can read it; else names
/// our own.
fn token_volume(spec: &PodSpec, sidecar: &SidecarSpec, token_access: TokenAccess) -> TokenVolume {
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
        let audience_matches =
            sat.audience.as_deref().unwrap_or("") == sidecar.audience.value.as_str();
        let readable = match token_access {
            TokenAccess::DefaultMode => default_mode.is_none_or(|m| m & 0o004 != 0),
            TokenAccess::FsGroup(_) | TokenAccess::SharedUser(_) => true,
        };
        if audience_matches && readable && !sidecar.token_from_annotation() {
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
