//! Pods and answers for the tests of the pure mutation.

use bedrock_broker::webhook::{self, ClusterFacts, Outcome, StringMap};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::defaults;

pub const ROLE: &str = "arn:aws:iam::123456789012:role/app";

/// The ServiceAccount of the `opted_in` pods: it carries their role, as
/// the default `--role-policy service-account` requires.
pub static APP_SA: std::sync::LazyLock<StringMap> = std::sync::LazyLock::new(|| {
    [("eks.amazonaws.com/role-arn".to_owned(), ROLE.to_owned())].into()
});

pub fn app_facts() -> ClusterFacts<'static> {
    ClusterFacts {
        service_account_annotations: Some(&APP_SA),
        ..Default::default()
    }
}

pub fn pod(v: Value) -> Pod {
    serde_json::from_value(v).expect("a pod")
}

/// An opted-in pod naming its role, with `spec` merged in.
pub fn opted_in(spec: Value) -> Pod {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "p", "namespace": "default",
            "labels": {"bedrock-broker.io/inject": "true"},
            "annotations": {"bedrock-broker.io/role-arn": ROLE},
        },
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
    });
    if let (Some(base), Some(extra)) = (p["spec"].as_object_mut(), spec.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    pod(p)
}

pub fn inject(p: &Pod) -> Box<webhook::Injection> {
    match webhook::inject(p, &app_facts(), &defaults()) {
        Ok(Outcome::Injected(i)) => i,
        other => panic!("expected an injection, got {other:?}"),
    }
}

pub fn denial(p: &Pod, facts: &ClusterFacts<'_>) -> String {
    match webhook::inject(p, facts, &defaults()) {
        Err(d) => d.to_string(),
        other => panic!("expected a denial, got {other:?}"),
    }
}

pub fn mutated(p: &Pod, i: &webhook::Injection) -> Value {
    let original = serde_json::to_value(p).expect("serializes");
    webhook::apply(&original, &i.patch).expect("patch applies")
}

pub fn sidecar(v: &Value) -> Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|f| v["spec"][f].as_array())
        .flatten()
        .find(|c| c["name"] == "bedrock-broker")
        .cloned()
        .expect("sidecar present")
}

pub fn env_of(c: &Value, name: &str) -> Option<Value> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
}
