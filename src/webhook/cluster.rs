//! What the admission shell reads from the cluster for one pod, and only
//! what the pod needs ([`inject::needs`]): its namespace's labels (when the
//! pod has no opt-in label), its ServiceAccount's annotations (the role
//! and token audience),
//! and, once it is opted in, its namespace's LimitRanges.

use k8s_openapi::api::core::v1::{LimitRange, Pod};

use super::inject::{self, types::RolePolicy, ClusterFacts, KubeVersion};
use super::lookup::{ClusterLookup, LookupError, StringMap};

/// What was read.
#[derive(Debug, Default)]
pub struct Read {
    pub namespace_labels: Option<StringMap>,
    pub service_account: Option<StringMap>,
    pub limit_ranges: Option<Vec<LimitRange>>,
}

impl Read {
    pub fn facts<'a>(
        &'a self,
        namespace: &'a str,
        kube_version: Option<KubeVersion>,
    ) -> ClusterFacts<'a> {
        ClusterFacts {
            namespace: Some(namespace),
            namespace_labels: self.namespace_labels.as_ref(),
            service_account_annotations: self.service_account.as_ref(),
            limit_ranges: self.limit_ranges.as_deref(),
            kube_version,
        }
    }
}

/// The API server's version, read once at start (`None` when it cannot be
/// read in time: injection then assumes a recent server, and says so).
pub async fn kube_version(
    client: &kube::Client,
    timeout: std::time::Duration,
) -> Option<KubeVersion> {
    match tokio::time::timeout(timeout, client.apiserver_version()).await {
        Ok(Ok(info)) => {
            let version = KubeVersion::parse(&info.major, &info.minor);
            match version {
                Some(v) if !v.has_native_sidecars() => tracing::warn!(
                    version = %info.git_version,
                    "this API server has no native sidecars (Kubernetes 1.29+): pods in native mode are refused; use --sidecar-mode classic"
                ),
                Some(_) => tracing::info!(version = %info.git_version, "Kubernetes API server"),
                None => {
                    tracing::warn!(major = %info.major, minor = %info.minor, "cannot read the API server's version; assuming native sidecars")
                }
            }
            version
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot read the API server's version; assuming native sidecars");
            None
        }
        Err(_) => {
            tracing::warn!(
                "the API server's version did not come in time; assuming native sidecars"
            );
            None
        }
    }
}

/// A read that failed; the lookup policy decides what the pod gets.
pub struct Failed {
    /// What could not be read, for the message.
    pub what: String,
    pub error: LookupError,
}

pub async fn read<L: ClusterLookup>(
    lookup: &L,
    role_policy: RolePolicy,
    pod: &Pod,
    namespace: &str,
) -> Result<Read, Failed> {
    let needs = inject::needs(pod, role_policy);
    let failed = |what: String| move |error| Failed { what, error };
    let mut read = Read::default();
    if needs.namespace_labels {
        match lookup.namespace_labels(namespace).await {
            Ok(labels) => read.namespace_labels = Some(labels.unwrap_or_default()),
            // The namespace is the only way in; without it we cannot tell,
            // and the policy decides.
            Err(e) if !inject::opted_in(pod, None) => {
                return Err(failed(format!("namespace {namespace:?}"))(e));
            }
            Err(_) => {}
        }
    }
    if !inject::opted_in(pod, read.namespace_labels.as_ref()) {
        return Ok(read);
    }
    if let Some(name) = &needs.service_account {
        let annotations = lookup
            .service_account_annotations(namespace, name)
            .await
            .map_err(failed(format!("ServiceAccount {namespace}/{name}")))?;
        read.service_account = Some(annotations.unwrap_or_default());
    }
    if needs.limit_ranges {
        let found = lookup
            .limit_ranges(namespace)
            .await
            .map_err(failed(format!(
                "the LimitRanges of namespace {namespace:?}"
            )))?;
        read.limit_ranges = Some(found);
    }
    Ok(read)
}
