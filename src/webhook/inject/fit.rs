//! Fitting the sidecar into the pod's own resource budget.
//!
//! A pod that sets pod-level resources (`spec.resources`, beta and on by
//! default since Kubernetes 1.34) must request at least what its
//! containers request together, and no container may be limited above the
//! pod's limit (`validatePodResourceConsistency` in the API server). Adding
//! a sidecar breaks both unless the pod's budget grows with it, so every
//! pod-level quantity the pod sets is raised by the sidecar's share: its
//! request for `requests`, its limit for `limits` (its request when it has
//! no limit, so pod requests stay within pod limits). Quantities the pod
//! does not set are left to the API server's defaulting. The app keeps
//! exactly the budget it had.

use k8s_openapi::api::core::v1::{LimitRange, PodSpec};

use super::limit_range;
use super::quantity::{Quantity, Resource};
use super::spec::Resources;

/// Requests or limits of `spec.resources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Requests,
    Limits,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Limits => "limits",
        }
    }
}

/// One pod-level quantity raised by the sidecar's share.
#[derive(Debug, Clone, PartialEq)]
pub struct Raise {
    pub kind: Kind,
    pub resource: Resource,
    pub from: String,
    pub to: Quantity,
}

/// The largest request body the sidecar accepts by default (Bedrock's
/// 25 MB request limit): its `--max-body-bytes`.
const MAX_BODY_BYTES: u64 = 25 * 1024 * 1024;

/// How much request-body memory the sidecar may hold, derived from its
/// memory limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyBudget {
    /// `BEDROCK_BROKER_REQUEST_BODY_BUDGET`: half the memory limit, and
    /// at most the limit less [`PROCESS_RESERVE`]. The other half is the
    /// process itself (about 10 MiB idle), connection
    /// and TLS buffers, streamed responses and allocator slack; the
    /// default 128Mi limit gives the sidecar's default 64 MiB.
    pub bytes: u64,
    /// `BEDROCK_BROKER_MAX_BODY_BYTES`, lowered to the budget when the
    /// budget cannot hold one body of the default size (the sidecar
    /// refuses to start with a budget below its largest body).
    pub max_body: Option<u64>,
}

/// What the process keeps for itself below its memory limit: about 10 MiB
/// idle and 18 MiB at 64 connections (`make bench`), with allocator slack.
const PROCESS_RESERVE: u64 = 24 * 1024 * 1024;

/// The least memory limit the sidecar runs in: its reserve and a body
/// budget of 8 MiB. Below it the budget is nothing (the sidecar refuses
/// to start with none) or the process itself outgrows the limit.
pub(super) const MIN_MEMORY_LIMIT: u64 = 32 * 1024 * 1024;

impl BodyBudget {
    /// `None` without a memory limit: the sidecar's own default applies.
    fn for_limit(limit: Option<&Quantity>) -> Option<Self> {
        let limit = limit?.units(Resource::Memory);
        // The sidecar refuses a budget above MAX_COUNT (a memory limit
        // past 2 TiB would otherwise leave it unable to start).
        let most = u64::try_from(crate::config::parse::MAX_COUNT).unwrap_or(u64::MAX);
        let bytes = (limit / 2)
            .min(limit.saturating_sub(PROCESS_RESERVE))
            .min(most);
        Some(Self {
            bytes,
            max_body: (bytes < MAX_BODY_BYTES).then_some(bytes),
        })
    }
}

/// What fitting decided.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fitted {
    /// The sidecar's resources, fitted to the namespace's LimitRanges.
    pub resources: Resources,
    pub pod_resources: Vec<Raise>,
    pub body_budget: Option<BodyBudget>,
    /// For the admission response: what was changed beyond adding the sidecar.
    pub warnings: Vec<String>,
}

impl Resources {
    pub fn request(&self, r: Resource) -> Option<&Quantity> {
        match r {
            Resource::Cpu => self.cpu_request.as_ref(),
            Resource::Memory => self.memory_request.as_ref(),
        }
    }

    pub fn limit(&self, r: Resource) -> Option<&Quantity> {
        match r {
            Resource::Cpu => self.cpu_limit.as_ref(),
            Resource::Memory => self.memory_limit.as_ref(),
        }
    }
}

/// Fits the sidecar to the namespace's LimitRanges (`limit_range`), derives
/// its body budget, and raises the pod-level resources the pod sets by its
/// share. A pod-level quantity that cannot be read is a problem (the API
/// server accepted it, so this does not happen with a pod it sent).
pub fn fit(
    spec: &PodSpec,
    sidecar: &Resources,
    limit_ranges: Option<&[LimitRange]>,
    problems: &mut Vec<String>,
) -> Fitted {
    let (resources, changes) = limit_range::fit(sidecar, limit_ranges.unwrap_or(&[]));
    if let Some(limit) = resources.memory_limit.as_ref() {
        if limit.units(Resource::Memory) < MIN_MEMORY_LIMIT {
            problems.push(if resources.memory_limit == sidecar.memory_limit {
                format!(
                    "the sidecar's memory limit {} is below the 32Mi it runs in (about 10 MiB idle, 18 MiB busy, and room for request bodies): raise bedrock-broker.io/memory-limit, or the webhook's --sidecar-memory-limit",
                    limit.as_str()
                )
            } else {
                format!(
                    "the namespace's LimitRange holds the sidecar's memory limit to {}, below the 32Mi it runs in: raise the LimitRange's maximum memory for containers",
                    limit.as_str()
                )
            });
        }
    }
    let mut fitted = Fitted {
        body_budget: BodyBudget::for_limit(resources.memory_limit.as_ref()),
        warnings: Vec::new(),
        pod_resources: Vec::new(),
        resources,
    };
    if !changes.is_empty() {
        fitted.warnings.push(format!(
            "bedrock-broker fitted its sidecar to the namespace's LimitRange: {}",
            changes.join(", ")
        ));
    }
    let sidecar = &fitted.resources.clone();
    if let Some(BodyBudget {
        max_body: Some(max),
        ..
    }) = fitted.body_budget
    {
        fitted.warnings.push(format!(
            "the sidecar's memory limit holds request bodies of {:.0} MiB at once: request bodies above {:.0} MiB are refused (413); raise the sidecar's memory limit (bedrock-broker.io/memory-limit) to at least 50Mi to hold one 25 MiB body",
            max as f64 / 1048576.0,
            max as f64 / 1048576.0
        ));
    }
    raise_pod_resources(spec, sidecar, &mut fitted, problems);
    fitted
}

fn raise_pod_resources(
    spec: &PodSpec,
    sidecar: &Resources,
    fitted: &mut Fitted,
    problems: &mut Vec<String>,
) {
    let Some(pod) = spec.resources.as_ref() else {
        return;
    };
    for (kind, list) in [(Kind::Requests, &pod.requests), (Kind::Limits, &pod.limits)] {
        for resource in Resource::BOTH {
            let Some(current) = list.as_ref().and_then(|l| l.get(resource.as_str())) else {
                continue;
            };
            let share = match kind {
                Kind::Requests => sidecar.request(resource),
                Kind::Limits => sidecar.limit(resource).or(sidecar.request(resource)),
            };
            let Some(share) = share else { continue };
            match Quantity::parse(current.0.trim()) {
                Ok(q) => fitted.pod_resources.push(Raise {
                    kind,
                    resource,
                    from: current.0.clone(),
                    to: q.plus(share, resource),
                }),
                Err(e) => problems.push(format!(
                    "spec.resources.{}[{}]: {e}",
                    kind.as_str(),
                    resource.as_str()
                )),
            }
        }
    }
    if !fitted.pod_resources.is_empty() {
        let changes: Vec<String> = fitted
            .pod_resources
            .iter()
            .map(|r| {
                format!(
                    "{}.{} {} -> {}",
                    r.kind.as_str(),
                    r.resource.as_str(),
                    r.from,
                    r.to.as_str()
                )
            })
            .collect();
        fitted.warnings.push(format!(
            "bedrock-broker raised the pod-level spec.resources by its sidecar's share, so the app keeps its budget: {}",
            changes.join(", ")
        ));
    }
}
