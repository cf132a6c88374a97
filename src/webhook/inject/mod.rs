//! The pod mutation: a pure function from a Pod (plus what the cluster says
//! about its namespace and ServiceAccount) to a JSON patch, in the stages
//! `docs/injection.md` walks through:
//!
//! 1. `decide`: opted in, not injected already, no sidecar added by hand;
//! 2. `spec`: the webhook's defaults with the pod's annotations over them
//!    (`annotations` knows their names);
//! 3. `resolve`: pod-shape refusals, role, region, token access;
//! 4. `fit`: the sidecar fitted to the namespace's LimitRanges, and its
//!    share added to the pod's own resource budget;
//! 5. `render`: the sidecar container, token volume and app variables
//!    (and `notices`: what the pod gets that its owner may not expect);
//! 6. `patch`: add operations placing them into the pod.
//!
//! Steps 2 to 4 report every problem together, so a refused pod is fixed
//! in one round.

pub(crate) mod annotations;
mod decide;
mod fit;
mod kube_version;
mod limit_range;
mod notices;
pub(crate) mod patch;
mod quantity;
mod render;
mod resolve;
mod role;
mod spec;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;

use json_patch::Patch;
use k8s_openapi::api::core::v1::{Container, LimitRange, Pod, PodSpec};

use self::decide::Decision;
use self::spec::SidecarSpec;
use self::types::SidecarMode;

pub use self::decide::{needs, opted_in, service_account_name, Needs, Skip};
pub use self::kube_version::KubeVersion;
pub use self::patch::{apply, rebase};
pub use self::render::CONTAINER_NAME;
pub use self::resolve::{SidecarAuth, TokenAccess, TokenVolume};
pub use self::role::RoleSource;
pub use self::spec::{RequestAboveLimit, Resources, SidecarDefaults};

/// What the cluster says about the pod's surroundings. `None` means "not
/// known" (not looked up, or the lookup failed under the `skip` policy).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterFacts<'a> {
    /// The pod's namespace, for messages.
    pub namespace: Option<&'a str>,
    pub namespace_labels: Option<&'a BTreeMap<String, String>>,
    pub service_account_annotations: Option<&'a BTreeMap<String, String>>,
    /// The namespace's LimitRanges (`None`: not read, as if none).
    pub limit_ranges: Option<&'a [LimitRange]>,
    /// The API server's version (`None`: not known, assumed recent).
    pub kube_version: Option<KubeVersion>,
}

/// A successful injection.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    pub patch: Patch,
    pub mode: SidecarMode,
    pub auth: SidecarAuth,
    pub token_access: TokenAccess,
    /// What the pod got beyond the sidecar, for the admission response's
    /// `warnings` (shown by kubectl) and `inject`'s report.
    pub warnings: Vec<String>,
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
    let mut warnings = Vec::new();
    decide::opt_in_annotation(pod, &mut warnings, &mut problems);
    decide::stale_marker(pod, &mut warnings);
    let sidecar = match SidecarSpec::from_defaults(defaults).overlay(annotations(pod)) {
        Ok(mut sidecar) => {
            role::service_account_audience(pod, &mut sidecar, facts, &mut problems);
            Some(sidecar)
        }
        Err(p) => {
            problems.extend(p);
            None
        }
    };
    let resolved = resolve::resolve(pod, spec, sidecar.as_ref(), facts, &mut problems);
    let fitted = sidecar
        .as_ref()
        .map(|s| fit::fit(spec, &s.resources, facts.limit_ranges, &mut problems));
    let (Some(sidecar), Some(resolved), Some(fitted), true) =
        (sidecar, resolved, fitted, problems.is_empty())
    else {
        return Err(Denial { problems });
    };
    warnings.extend(role::warning(&resolved.auth, facts));
    if !resolved.region.is_aws_shaped() {
        // Taken (a private endpoint may sign for a name of its own), but
        // an availability zone (us-east-1a) is the usual slip.
        warnings.push(format!(
            "region {:?} is not shaped like an AWS region (such as us-east-1): the sidecar would sign for it and call hosts named after it",
            resolved.region.as_str()
        ));
    }
    let rendered = render::render(&sidecar, &resolved, &fitted);
    warnings.extend(notices::notices(spec, &sidecar, &fitted, &rendered.app_env));
    let patch = patch::build(pod, spec, sidecar.mode.value, &rendered, &fitted)?;
    Ok(Outcome::Injected(Box::new(Injection {
        patch,
        mode: sidecar.mode.value,
        auth: resolved.auth,
        token_access: resolved.token_access,
        warnings: warnings.into_iter().chain(fitted.warnings).collect(),
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
