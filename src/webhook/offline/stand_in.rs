//! The cluster `inject` stands in for: Namespace, ServiceAccount and
//! LimitRange documents of the input, completed by the flags, and read
//! for each pod as the webhook reads the real one.

use futures::FutureExt;
use k8s_openapi::api::core::v1::{LimitRange, Pod};
use serde::Deserialize;
use serde_json::Value;

use super::{objects_mut, str_at, InjectConfig, QUOTE_IT};
use crate::webhook::cluster;
use crate::webhook::inject::annotations::names;
use crate::webhook::inject::types::RolePolicy;
use crate::webhook::lookup::{StaticLookup, StringMap};

/// The namespace an object is in: its own, else `--namespace`. An empty
/// one is none, as kubectl and the API server read it.
pub fn namespace_of(obj: &Value, config: &InjectConfig) -> String {
    str_at(obj, "/metadata/namespace")
        .filter(|ns| !ns.is_empty())
        .unwrap_or(&config.namespace)
        .to_owned()
}

/// What the webhook would read for this pod, by the webhook's own
/// [`cluster::read`]: only what the pod needs (no ServiceAccount for a
/// pod naming its role under `--role-policy any`), so that `inject` never
/// decides on what the webhook does not see.
pub fn read(
    lookup: &StaticLookup,
    role_policy: RolePolicy,
    pod: &Pod,
    namespace: &str,
) -> Result<cluster::Read, String> {
    // The stand-in answers from memory: the read is done when first polled.
    match cluster::read(lookup, role_policy, pod, namespace).now_or_never() {
        Some(Ok(read)) => Ok(read),
        Some(Err(failed)) => Err(format!("cannot read {}: {}", failed.what, failed.error)),
        None => Err("the stand-in cluster did not answer".to_owned()),
    }
}

fn string_map(v: Option<&Value>) -> StringMap {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// A Namespace's labels. The opt-in written unquoted (`true`, YAML's
/// boolean) is no label value: dropped like any such, it would leave the
/// namespace's pods out without a word, so it is refused, as on a pod.
fn namespace_labels(obj: &Value, name: &str) -> Result<StringMap, String> {
    let labels = obj.pointer("/metadata/labels");
    let label = names::INJECT_LABEL;
    if let Some(Err(e)) = labels.and_then(|l| l.get(label)).map(String::deserialize) {
        return Err(format!(
            "Namespace {name}: metadata.labels.{label}: {e} ({QUOTE_IT})"
        ));
    }
    Ok(string_map(labels))
}

/// Builds the stand-in cluster from Namespace, ServiceAccount and
/// LimitRange documents; with a line per document it cannot take.
pub fn cluster(docs: &mut [Value], config: &InjectConfig) -> (StaticLookup, Vec<String>) {
    let mut problems = Vec::new();
    let mut lookup = StaticLookup {
        default_service_account: config.service_account_annotations.clone(),
        default_namespace: config.namespace_labels.clone(),
        ..Default::default()
    };
    for doc in docs.iter_mut() {
        for (_, obj) in objects_mut(doc) {
            let Some(name) = str_at(obj, "/metadata/name").map(str::to_owned) else {
                continue;
            };
            match str_at(obj, "/kind") {
                Some("Namespace") => match namespace_labels(obj, &name) {
                    Ok(labels) => {
                        lookup.namespaces.insert(name, labels);
                    }
                    Err(problem) => problems.push(problem),
                },
                Some("LimitRange") => {
                    let ns = namespace_of(obj, config);
                    // A LimitRange that does not parse is left to kubectl.
                    if let Ok(lr) = serde_json::from_value::<LimitRange>(obj.clone()) {
                        lookup.limit_ranges.entry(ns).or_default().push(lr);
                    }
                }
                Some("ServiceAccount") => {
                    let ns = namespace_of(obj, config);
                    lookup
                        .service_accounts
                        .insert((ns, name), string_map(obj.pointer("/metadata/annotations")));
                }
                _ => {}
            }
        }
    }
    (lookup, problems)
}
