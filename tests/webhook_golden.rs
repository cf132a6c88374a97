//! Golden tests: real AdmissionReview bodies through the admission handler.
//!
//! For every `tests/fixtures/admission/<name>.json` the answer (allowed,
//! message, warnings, the JSON patch and the patched pod) must equal
//! `expected/<name>.json`. Regenerate after an intended change with
//! `UPDATE_GOLDEN=1 cargo test --test webhook_golden` and review the diff.
//!
//! Beyond the goldens, every injected pod must: parse as a Pod, keep
//! everything the original had (same values, containers in the same order;
//! pod-level resources may only grow), pass the API server's cross-field
//! rules (`webhook_support::apiserver`), contain exactly one sidecar, come
//! from add operations, and be left alone when reviewed again
//! (reinvocation).

// Test code: a failed setup is a failed test, and the real clock is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod webhook_support;

use std::path::Path;

use bedrock_broker::webhook::{self, review};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use webhook_support::{apiserver, cluster, fixtures, patch_of, preserved_pod, state};

async fn answer(body: &Value) -> (u16, Value) {
    // The webhook as the chart installs it.
    let mut st = state(cluster());
    st.defaults.role_policy = webhook::RolePolicy::ServiceAccount;
    let bytes = serde_json::to_vec(body).expect("serializes");
    let (status, review) = review(&st, &bytes).await;
    let review = serde_json::to_value(review).expect("serializes");
    (status.as_u16(), review)
}

fn sidecar_of(pod: &Value) -> Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|f| pod["spec"][f].as_array())
        .flatten()
        .find(|c| c["name"] == webhook::CONTAINER_NAME)
        .cloned()
        .unwrap_or_default()
}

fn sidecars(pod: &Value) -> usize {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|f| pod["spec"][f].as_array())
        .flatten()
        .filter(|c| c["name"] == webhook::CONTAINER_NAME)
        .count()
}

async fn check(path: &Path) -> Result<(), String> {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("?");
    let body: Value =
        serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{name}: fixture is not JSON: {e}"))?;
    let original = body["request"]["object"].clone();
    let invalid = apiserver::violations(&original);
    if !invalid.is_empty() {
        return Err(format!(
            "{name}: the fixture itself is invalid: {invalid:?}"
        ));
    }
    let (status, review) = answer(&body).await;
    let response = &review["response"];
    if status != 200 {
        return Err(format!("{name}: HTTP {status}"));
    }
    if response["uid"] != body["request"]["uid"] {
        return Err(format!("{name}: uid not echoed"));
    }
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err(format!("{name}: wrong envelope {review}"));
    }
    let patch = patch_of(response);
    let mutated = match &patch {
        None => None,
        Some(p) => {
            let patch: json_patch::Patch =
                serde_json::from_value(p.clone()).map_err(|e| format!("{name}: bad patch: {e}"))?;
            if patch
                .iter()
                .any(|op| !matches!(op, json_patch::PatchOperation::Add(_)))
            {
                return Err(format!("{name}: the patch does more than add"));
            }
            Some(
                webhook::apply(&original, &patch)
                    .map_err(|e| format!("{name}: patch does not apply: {e}"))?,
            )
        }
    };
    let actual = json!({
        "allowed": response["allowed"],
        "message": if response["allowed"] == true { Value::Null } else { response["status"]["message"].clone() },
        "warnings": response.get("warnings").cloned().unwrap_or(Value::Null),
        "patch": patch.clone().unwrap_or(Value::Null),
        "pod": mutated.clone().unwrap_or(Value::Null),
    });

    let golden = fixtures().join("expected").join(format!("{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text = serde_json::to_string_pretty(&actual).map_err(|e| e.to_string())? + "\n";
        std::fs::create_dir_all(golden.parent().unwrap_or(Path::new(".")))
            .map_err(|e| e.to_string())?;
        std::fs::write(&golden, text).map_err(|e| e.to_string())?;
    } else {
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(&golden)
                .map_err(|e| format!("{name}: no golden ({e}); run with UPDATE_GOLDEN=1"))?,
        )
        .map_err(|e| format!("{name}: golden is not JSON: {e}"))?;
        if expected != actual {
            return Err(format!(
                "{name}: differs from {}:\n{}",
                golden.display(),
                serde_json::to_string_pretty(&actual).unwrap_or_default()
            ));
        }
    }

    if let Some(mutated) = mutated {
        serde_json::from_value::<Pod>(mutated.clone())
            .map_err(|e| format!("{name}: mutated pod does not parse: {e}"))?;
        preserved_pod(&original, &mutated).map_err(|e| format!("{name}: {e}"))?;
        let invalid = apiserver::violations(&mutated);
        if !invalid.is_empty() {
            return Err(format!(
                "{name}: the API server would refuse the injected pod: {invalid:#?}"
            ));
        }
        // The namespace's LimitRanges, for the sidecar (the fixtures' apps
        // set no requests of their own).
        let namespace = body["request"]["namespace"].as_str().unwrap_or("default");
        let limit_ranges: Vec<Value> = cluster()
            .limit_ranges
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|lr| serde_json::to_value(lr).unwrap_or_default())
            .collect();
        let only_sidecar = json!({"spec": {"containers": [sidecar_of(&mutated)]}});
        let invalid = apiserver::limit_range_violations(&only_sidecar, &limit_ranges);
        if !invalid.is_empty() {
            return Err(format!(
                "{name}: LimitRanger would refuse the sidecar: {invalid:#?}"
            ));
        }
        if sidecars(&mutated) != 1 {
            return Err(format!("{name}: expected exactly one sidecar"));
        }
        // Reinvocation: the API server sends the mutated pod again.
        let mut again = body.clone();
        again["request"]["object"] = mutated;
        let (_, review) = answer(&again).await;
        if review["response"]["allowed"] != true || patch_of(&review["response"]).is_some() {
            return Err(format!(
                "{name}: reinvocation changed the pod again: {review}"
            ));
        }
    }
    Ok(())
}

#[tokio::test]
async fn every_fixture_matches_its_golden_answer() {
    let mut paths: Vec<_> = std::fs::read_dir(fixtures())
        .expect("fixtures dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 20, "fixtures missing: {paths:?}");
    let mut failures = Vec::new();
    for path in &paths {
        if let Err(e) = check(path).await {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[tokio::test]
async fn fixtures_cover_every_kind_of_answer() {
    let mut allowed_changed = 0;
    let mut allowed_unchanged = 0;
    let mut denied = 0;
    for entry in std::fs::read_dir(fixtures().join("expected")).expect("goldens") {
        let golden: Value = serde_json::from_str(
            &std::fs::read_to_string(entry.expect("entry").path()).expect("read"),
        )
        .expect("json");
        match (golden["allowed"].as_bool(), golden["pod"].is_null()) {
            (Some(true), false) => allowed_changed += 1,
            (Some(true), true) => allowed_unchanged += 1,
            _ => denied += 1,
        }
    }
    assert!(allowed_changed >= 12, "{allowed_changed}");
    assert!(allowed_unchanged >= 4, "{allowed_unchanged}");
    assert!(denied >= 5, "{denied}");
}
