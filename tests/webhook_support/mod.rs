//! Shared helpers of the webhook integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod apiserver;
pub mod pods;

use base64::Engine;
use bedrock_broker::cli::SidecarDefaultsArgs;
use bedrock_broker::config::Env;
use bedrock_broker::metrics::webhook::WebhookMetrics;
use bedrock_broker::webhook::types::{Quantity, Resource};
use bedrock_broker::webhook::{
    AdmissionState, Intake, LookupErrorPolicy, SidecarDefaults, StaticLookup, StringMap,
};
use serde_json::Value;

pub const CHAT_APP_ROLE: &str = "arn:aws:iam::123456789012:role/chat-app";
pub const TEAM_A_ROLE: &str = "arn:aws:iam::123456789012:role/team-a";
pub const LEGACY_IRSA_ROLE: &str = "arn:aws:iam::123456789012:role/legacy-irsa";
pub const QUOTA_ROLE: &str = "arn:aws:iam::123456789012:role/quota";

/// The LimitRange of namespace `quota`: a CPU minimum above the sidecar's
/// request, a default CPU limit (what a ResourceQuota on `limits.cpu`
/// needs) and a memory maximum below the sidecar's limit. The same object
/// as `QUOTA_LIMIT_RANGE` in tests/e2e/test_webhook_support.py.
pub fn quota_limit_range() -> Value {
    serde_json::json!({"apiVersion": "v1", "kind": "LimitRange",
        "metadata": {"name": "container-limits", "namespace": "quota"},
        "spec": {"limits": [{"type": "Container",
            "min": {"cpu": "50m", "memory": "16Mi"},
            "max": {"memory": "96Mi"},
            "default": {"cpu": "250m"},
            "defaultRequest": {"cpu": "100m"}}]}})
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission")
}

fn map(pairs: &[(&str, &str)]) -> StringMap {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The cluster every fixture is admitted into (see tests/fixtures/admission/README.md).
pub fn cluster() -> StaticLookup {
    let mut lookup = StaticLookup::default();
    lookup.namespaces.insert("default".into(), BTreeMap::new());
    lookup.namespaces.insert(
        "team-a".into(),
        map(&[("bedrock-broker.io/inject", "true")]),
    );
    lookup.service_accounts.insert(
        ("default".into(), "chat-app".into()),
        map(&[("eks.amazonaws.com/role-arn", CHAT_APP_ROLE)]),
    );
    lookup.service_accounts.insert(
        ("team-a".into(), "default".into()),
        map(&[("eks.amazonaws.com/role-arn", TEAM_A_ROLE)]),
    );
    // Set up for the EKS Pod Identity Webhook, which put this role into
    // the containers of the eks-pod-identity fixture.
    lookup.service_accounts.insert(
        ("default".into(), "legacy-irsa".into()),
        map(&[("eks.amazonaws.com/role-arn", LEGACY_IRSA_ROLE)]),
    );
    // A namespace with a quota-minded LimitRange the sidecar must fit.
    lookup
        .namespaces
        .insert("quota".into(), map(&[("bedrock-broker.io/inject", "true")]));
    lookup.service_accounts.insert(
        ("quota".into(), "default".into()),
        map(&[("eks.amazonaws.com/role-arn", QUOTA_ROLE)]),
    );
    lookup.limit_ranges.insert(
        "quota".into(),
        vec![serde_json::from_value(quota_limit_range()).expect("a LimitRange")],
    );
    lookup
}

/// The webhook defaults used with the fixtures: the documented defaults
/// plus a region, as the chart would set it.
pub fn defaults() -> SidecarDefaults {
    let flags = SidecarDefaultsArgs {
        sidecar_region: Some("us-east-1".into()),
        ..Default::default()
    };
    SidecarDefaults::from_args(&flags, &Env::default()).expect("the documented defaults parse")
}

pub fn state<L>(lookup: L) -> AdmissionState<L> {
    AdmissionState {
        defaults: defaults(),
        lookup: Arc::new(lookup),
        on_lookup_error: LookupErrorPolicy::Deny,
        metrics: WebhookMetrics::new(),
        intake: Intake::default(),
        kube_version: None,
    }
}

/// The patch bytes of a serialized AdmissionReview response (kube-rs sends
/// an array of bytes; the API server also accepts base64).
pub fn patch_of(response: &Value) -> Option<Value> {
    let bytes = match response.get("patch")? {
        Value::String(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("patch is base64"),
        Value::Array(items) => items
            .iter()
            .map(|b| {
                b.as_u64()
                    .and_then(|b| u8::try_from(b).ok())
                    .expect("patch byte")
            })
            .collect(),
        other => panic!("unexpected patch encoding: {other}"),
    };
    Some(serde_json::from_slice(&bytes).expect("patch is JSON"))
}

/// Whether everything in `original` is still in `mutated`: object keys
/// with preserved values, array elements preserved in order (new elements
/// may be inserted anywhere). Returns the first path that differs.
pub fn preserved(original: &Value, mutated: &Value, path: &str) -> Result<(), String> {
    match (original, mutated) {
        (Value::Object(o), Value::Object(m)) => {
            for (k, v) in o {
                let sub = format!("{path}/{k}");
                let Some(mv) = m.get(k) else {
                    return Err(format!("{sub} was removed"));
                };
                preserved(v, mv, &sub)?;
            }
            Ok(())
        }
        (Value::Array(o), Value::Array(m)) => {
            let mut rest = m.iter().enumerate();
            for (i, v) in o.iter().enumerate() {
                let sub = format!("{path}/{i}");
                if !rest.any(|(_, mv)| preserved(v, mv, &sub).is_ok()) {
                    return Err(format!("{sub} was removed, changed or reordered"));
                }
            }
            Ok(())
        }
        (o, m) if o == m => Ok(()),
        (o, m) => Err(format!("{path} changed from {o} to {m}")),
    }
}

/// [`preserved`] for a pod, where the one value injection may change is a
/// pod-level resource quantity, and only upwards (the sidecar's share).
pub fn preserved_pod(original: &Value, mutated: &Value) -> Result<(), String> {
    let mut mutated = mutated.clone();
    for kind in ["requests", "limits"] {
        for r in Resource::BOTH {
            let ptr = format!("/spec/resources/{kind}/{}", r.as_str());
            let (Some(before), Some(after)) = (original.pointer(&ptr), mutated.pointer_mut(&ptr))
            else {
                continue;
            };
            let units = |v: &Value| {
                v.as_str()
                    .and_then(|s| Quantity::parse(s).ok())
                    .map(|q| q.units(r))
            };
            if units(after) < units(before) {
                return Err(format!("{ptr} shrank from {before} to {after}"));
            }
            *after = before.clone();
        }
    }
    preserved(original, &mutated, "")
}
