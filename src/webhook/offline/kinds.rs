//! Which objects hold a pod, and where: told by API group and kind, since
//! a custom resource may take a built-in kind's name (Volcano's
//! `batch.volcano.sh` Job, with pod templates of its own shape) and is
//! left to pass through like every other document.

/// Where the pod template sits inside an object of each kind we mutate
/// (`None`: not a pod or workload of the Kubernetes API).
pub fn template_pointer(api_version: Option<&str>, kind: &str) -> Option<&'static [&'static str]> {
    let (groups, pointer): (&[&str], &'static [&'static str]) = match kind {
        "Pod" => (&[""], &[]),
        "ReplicationController" => (&[""], &["spec", "template"]),
        "PodTemplate" => (&[""], &["template"]),
        // `extensions` served these until Kubernetes 1.16: old manifests
        // still name it.
        "Deployment" | "DaemonSet" | "ReplicaSet" => {
            (&["apps", "extensions"], &["spec", "template"])
        }
        "StatefulSet" => (&["apps"], &["spec", "template"]),
        "Job" => (&["batch"], &["spec", "template"]),
        "CronJob" => (&["batch"], &["spec", "jobTemplate", "spec", "template"]),
        _ => return None,
    };
    // Without an apiVersion (a fragment piped in) nothing says the object
    // is a custom resource: its kind decides, as it always did.
    api_version
        .is_none_or(|v| groups.contains(&group(v)))
        .then_some(pointer)
}

/// The group of an apiVersion: `apps` of `apps/v1`, empty for the core
/// group's `v1`.
fn group(api_version: &str) -> &str {
    api_version.split_once('/').map_or("", |(group, _)| group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_kinds_only_in_their_groups() {
        assert_eq!(template_pointer(Some("v1"), "Pod"), Some(&[][..]));
        assert_eq!(template_pointer(None, "Pod"), Some(&[][..]));
        assert!(template_pointer(Some("apps/v1"), "Pod").is_none());
        assert!(template_pointer(Some("batch/v1"), "Job").is_some());
        assert!(template_pointer(Some("batch.volcano.sh/v1alpha1"), "Job").is_none());
        assert!(template_pointer(Some("extensions/v1beta1"), "ReplicaSet").is_some());
        assert!(template_pointer(Some("extensions/v1beta1"), "StatefulSet").is_none());
        assert!(template_pointer(Some("example.com/v1"), "Deployment").is_none());
        assert!(template_pointer(Some("v1"), "ConfigMap").is_none());
    }
}
