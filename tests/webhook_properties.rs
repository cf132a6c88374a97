//! Properties of the admission handler over generated input: it never
//! panics on any body, always echoes the uid it can read, and every patch
//! it answers applies to the pod it was given and is injected only once.

// Test code: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod webhook_support;

use bedrock_broker::webhook::{apply, review};
use proptest::prelude::*;
use serde_json::{json, Value};
use webhook_support::{cluster, fixtures, patch_of, state};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn answer(body: &[u8]) -> (u16, Value) {
    let state = state(cluster());
    let (status, review) = runtime().block_on(review(&state, body));
    (status.as_u16(), serde_json::to_value(review).unwrap())
}

/// Values of the labels and annotations the injector reads: valid, invalid
/// and tricky ones.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "true",
            "false",
            "True",
            "yes",
            "",
            "native",
            "classic",
            "9787",
            "9788",
            "1023",
            "80",
            "10m",
            "64Mi",
            "none",
            "-1",
            "us-east-1",
            "debug",
            "arn:aws:iam::123456789012:role/app",
            "bedrock-api-key/token",
            "0600",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,12}",
    ]
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "bedrock-broker.io/inject",
        "bedrock-broker.io/role-arn",
        "bedrock-broker.io/region",
        "bedrock-broker.io/port",
        "bedrock-broker.io/admin-port",
        "bedrock-broker.io/sidecar-mode",
        "bedrock-broker.io/memory-limit",
        "bedrock-broker.io/cpu-request",
        "bedrock-broker.io/api-key-secret",
        "bedrock-broker.io/log-level",
        "bedrock-broker.io/token-expiration",
        "bedrock-broker.io/rol-arn",
        "app",
    ])
    .prop_map(str::to_owned)
}

fn pod_review(
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    fixture: &str,
) -> Value {
    let mut review: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join(fixture)).unwrap()).unwrap();
    let metadata = review.pointer_mut("/request/object/metadata").unwrap();
    let l = metadata
        .as_object_mut()
        .unwrap()
        .entry("labels")
        .or_insert(json!({}));
    for (k, v) in labels {
        l[k] = Value::String(v);
    }
    let a = metadata
        .as_object_mut()
        .unwrap()
        .entry("annotations")
        .or_insert(json!({}));
    for (k, v) in annotations {
        a[k] = Value::String(v);
    }
    review
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn any_body_gets_an_answer_never_a_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let (status, review) = answer(&body);
        prop_assert!(status == 200 || status == 400);
        prop_assert!(review["response"]["allowed"].is_boolean());
    }

    #[test]
    fn every_patch_applies_to_its_pod_and_injects_once(
        labels in prop::collection::vec((key(), value()), 0..3),
        annotations in prop::collection::vec((key(), value()), 0..5),
        fixture in prop::sample::select(vec![
            "plain.json", "init-containers.json", "security-context-shared-user.json",
            "env-already-set.json", "eks-pod-identity.json", "job-pod.json",
        ]),
    ) {
        let request = pod_review(labels, annotations, fixture);
        let uid = request["request"]["uid"].clone();
        let (status, review) = answer(request.to_string().as_bytes());
        prop_assert_eq!(status, 200);
        prop_assert_eq!(&review["response"]["uid"], &uid);
        let Some(patch) = patch_of(&review["response"]) else {
            return Ok(());
        };
        prop_assert_eq!(&review["response"]["allowed"], &Value::Bool(true));
        let patch: json_patch::Patch = serde_json::from_value(patch).unwrap();
        let original = request["request"]["object"].clone();
        let mutated = apply(&original, &patch);
        prop_assert!(mutated.is_ok(), "the patch applies: {:?}", mutated.err());
        // Reinvocation: the mutated pod is admitted unchanged.
        let mut again = request.clone();
        again["request"]["object"] = mutated.unwrap();
        let (_, second) = answer(again.to_string().as_bytes());
        prop_assert!(patch_of(&second["response"]).is_none(), "injected twice");
    }
}
