//! The parse-cost estimate against what parsing a pod really allocates:
//! the webhook draws room for a review's parsed pod from that estimate
//! before parsing it, so an estimate below the real cost is memory nobody
//! counted. dhat's counting allocator measures the real peak.

// Test code: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

use bedrock_broker::webhook::parse_cost::estimate;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Peak bytes allocated while parsing `object` as a pod, by a profiler of
/// its own (the one test of this binary, so nothing else allocates
/// meanwhile).
fn parsed_peak(object: &str) -> usize {
    let profiler = dhat::Profiler::builder().testing().build();
    let pod: Pod = serde_json::from_str(object).unwrap();
    let peak = dhat::HeapStats::get().max_bytes;
    drop(pod);
    drop(profiler);
    peak
}

fn review(pod: &Value) -> (Vec<u8>, String) {
    let object = serde_json::to_string(pod).unwrap();
    let text = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","operation":"CREATE","object":{object}}}}}"#
    );
    (text.into_bytes(), object)
}

fn managed(fields: Value) -> Value {
    json!({"metadata": {"name": "p", "managedFields": [
        {"manager": "m", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": fields}
    ]}, "spec": {"containers": [{"name": "app"}]}})
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!({}), |inner, _| json!({"a": inner}))
}

#[test]
fn the_estimate_covers_what_parsing_allocates() {
    let wide: serde_json::Map<String, Value> =
        (0..5000).map(|i| (format!("f:k{i}"), json!(1))).collect();
    let flat: serde_json::Map<String, Value> = (0..5000)
        .map(|i| (format!("f:k{i}"), json!({"a": 1})))
        .collect();
    let chains: Vec<Value> = (0..200).map(|_| nested(100)).collect();
    // Inside fieldsV1 a key means nothing to the pod: objects in an array
    // under `env` or `containers` are JSON value maps there, not structs.
    let wide_element = |key: &str| {
        let entries: serde_json::Map<String, Value> =
            (0..5000).map(|i| (format!("k{i}"), json!(1))).collect();
        managed(json!({ key: [Value::Object(entries)] }))
    };
    let labels: serde_json::Map<String, Value> =
        (0..5000).map(|i| (format!("l{i}"), json!("v"))).collect();
    let cases = [
        // managedFields' fieldsV1 is a JSON value: every object in it a
        // map of its own (a 7.5 MiB review of these took 557 MiB).
        (
            "fieldsV1 chains of one-entry objects",
            managed(json!({"f:c": chains})),
        ),
        (
            "fieldsV1 one-entry objects side by side",
            managed(Value::Object(flat)),
        ),
        ("fieldsV1 one wide object", managed(Value::Object(wide))),
        ("fieldsV1 a wide object under env", wide_element("env")),
        (
            "fieldsV1 a wide object under containers",
            wide_element("containers"),
        ),
        (
            "labels",
            json!({"metadata": {"name": "p", "labels": labels}, "spec": {"containers": []}}),
        ),
        (
            "tiny volumes",
            json!({"spec": {"containers": [], "volumes": vec![json!({"name": ""}); 2000]}}),
        ),
        (
            "tiny containers",
            json!({"spec": {"containers": vec![json!({"name": ""}); 500]}}),
        ),
    ];
    for (name, pod) in cases {
        let (text, object) = review(&pod);
        let estimated = estimate(&text).unwrap();
        let allocated = parsed_peak(&object);
        assert!(
            estimated >= allocated,
            "{name}: estimated {estimated} bytes, parsing took {allocated} ({} bytes of text)",
            text.len()
        );
    }
}
