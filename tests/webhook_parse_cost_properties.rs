//! The parse-cost estimate against what parsing really allocates, for
//! pods generated at random: JSON of every shape, under the keys a pod
//! has (so typed fields, maps and `fieldsV1` are all reached), with runs of
//! repeated elements so that per-element costs, not the fixed ones,
//! decide. A parse that fails counts too: what it allocated before
//! failing was memory nobody priced. `PARSE_COST_CASES` sets the number of
//! cases (256 by default; 5,000 take about six minutes in a debug build),
//! `PARSE_COST_SHOW=1` prints each case's text, estimate and allocation.
//! Halving the estimate's price of a map entry fails it within 256 cases.

// Test code: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]
// `PARSE_COST_SHOW` prints to stderr on purpose.
#![allow(clippy::print_stderr)]

use bedrock_broker::webhook::parse_cost::estimate;
use k8s_openapi::api::core::v1::Pod;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Map, Value};

#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// Keys a pod has, at any depth, and a few it does not.
const KEYS: &[&str] = &[
    "metadata",
    "spec",
    "status",
    "name",
    "labels",
    "annotations",
    "managedFields",
    "fieldsV1",
    "ownerReferences",
    "finalizers",
    "containers",
    "initContainers",
    "ephemeralContainers",
    "volumes",
    "env",
    "envFrom",
    "valueFrom",
    "resources",
    "limits",
    "requests",
    "ports",
    "volumeMounts",
    "projected",
    "sources",
    "configMap",
    "items",
    "affinity",
    "nodeAffinity",
    "podAffinity",
    "preferredDuringSchedulingIgnoredDuringExecution",
    "requiredDuringSchedulingIgnoredDuringExecution",
    "nodeSelectorTerms",
    "matchExpressions",
    "values",
    "tolerations",
    "topologySpreadConstraints",
    "conditions",
    "containerStatuses",
    "readinessGates",
    "hostAliases",
    "hostnames",
    "securityContext",
    "sysctls",
    "dnsConfig",
    "options",
    "nameservers",
    "args",
    "command",
    "resourceClaims",
    "schedulingGates",
    "overhead",
    "nodeSelector",
    "image",
    "key",
    "value",
    "operator",
    "f:x",
    "k:{}",
    ".",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(KEYS).prop_map(str::to_owned),
        1 => "[a-z:.]{0,6}",
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (0i64..100_000).prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z0-9]{0,12}".prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec((key(), inner.clone()), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            // Runs of one element: per-element costs decide.
            (inner.clone(), 1usize..1500)
                .prop_map(|(v, n)| Value::Array(vec![v.clone(); runs(&v, n)])),
            // Wide objects of one value.
            (inner, 1usize..800).prop_map(|(v, n)| {
                Value::Object(
                    (0..runs(&v, n))
                        .map(|i| (format!("k{i}"), v.clone()))
                        .collect(),
                )
            }),
        ]
    })
}

/// `n`, or fewer: as many copies of `v` as keep a run under 256 KiB of
/// text (runs nest, and unbounded they multiply past any memory).
fn runs(v: &Value, n: usize) -> usize {
    let size = serde_json::to_vec(v).map_or(1, |t| t.len().max(1));
    n.min((256 * 1024 / size).max(1))
}

/// A run of `n` copies of `element`, under 256 KiB of text.
fn run_of(element: Value, n: usize) -> Value {
    let n = runs(&element, n);
    Value::Array(vec![element; n])
}

/// An element of a typed list: the fields it needs, and keys it does not
/// know with any value (which parsing skips, and the estimate counts).
fn element(required: &'static [&'static str]) -> impl Strategy<Value = Value> {
    (
        "[a-z]{0,8}",
        proptest::collection::vec((key(), value()), 0..3),
    )
        .prop_map(move |(text, extra)| {
            let mut object: Map<String, Value> = extra
                .into_iter()
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (format!("x-{k}"), v))
                .collect();
            for field in required {
                object.insert((*field).to_owned(), Value::String(text.clone()));
            }
            Value::Object(object)
        })
}

/// One part of a pod, where it goes: generated so that most pods parse
/// (a parse that fails at the first wrong type allocates next to nothing,
/// and proves nothing about the estimate).
fn part() -> impl Strategy<Value = (&'static [&'static str], Value)> {
    let strings = |n| {
        proptest::collection::vec(("[a-z./-]{1,12}", "[a-z0-9]{0,40}"), 0..n).prop_map(|kv| {
            Value::Object(kv.into_iter().map(|(k, v)| (k, Value::String(v))).collect())
        })
    };
    prop_oneof![
        // The one JSON value a pod holds: any shape at all.
        value().prop_map(|v| {
            let entry = json!({"manager": "m", "operation": "Update",
                "fieldsType": "FieldsV1", "fieldsV1": v});
            (&["metadata", "managedFields"][..], json!([entry]))
        }),
        (value(), 1usize..400).prop_map(|(v, n)| {
            let entry = json!({"manager": "m", "fieldsType": "FieldsV1", "fieldsV1": v});
            (&["metadata", "managedFields"][..], run_of(entry, n))
        }),
        strings(3000).prop_map(|m| (&["metadata", "labels"][..], m)),
        strings(3000).prop_map(|m| (&["metadata", "annotations"][..], m)),
        (element(&["name"]), 1usize..2000)
            .prop_map(|(e, n)| (&["spec", "volumes"][..], run_of(e, n))),
        (element(&["name"]), 1usize..2000)
            .prop_map(|(e, n)| (&["spec", "containers"][..], run_of(e, n))),
        (element(&["name"]), 1usize..2000)
            .prop_map(|(e, n)| (&["spec", "initContainers"][..], run_of(e, n))),
        (element(&[]), 1usize..2000)
            .prop_map(|(e, n)| (&["spec", "tolerations"][..], run_of(e, n))),
        (
            element(&["apiVersion", "kind", "name", "uid"]),
            1usize..2000
        )
            .prop_map(|(e, n)| (&["metadata", "ownerReferences"][..], run_of(e, n))),
        (element(&["type", "status"]), 1usize..2000)
            .prop_map(|(e, n)| (&["status", "conditions"][..], run_of(e, n))),
        // Fields a pod does not have: skipped by the parse.
        value().prop_map(|v| (&["spec", "x-unknown"][..], v)),
        // Anything at all in a typed place (mostly refused by the parse).
        value().prop_map(|v| (&["spec", "affinity"][..], v)),
    ]
}

fn pod() -> impl Strategy<Value = Value> {
    proptest::collection::vec(part(), 1..4).prop_map(|parts| {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app"}]}});
        for (path, v) in parts {
            let mut at = &mut pod;
            for (i, step) in path.iter().enumerate() {
                if i + 1 == path.len() {
                    at[*step] = v.clone();
                } else {
                    at = &mut at[*step];
                }
            }
        }
        pod
    })
}

/// Peak bytes allocated while parsing `object` as a pod, whether or not
/// it is one.
fn parsed_peak(object: &str) -> usize {
    let profiler = dhat::Profiler::builder().testing().build();
    let parsed = serde_json::from_str::<Pod>(object);
    let peak = dhat::HeapStats::get().max_bytes;
    drop(parsed);
    drop(profiler);
    peak
}

#[test]
fn the_estimate_covers_what_parsing_allocates_for_any_pod() {
    let cases = std::env::var("PARSE_COST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    runner
        .run(&pod(), |pod| {
            let object = serde_json::to_string(&pod).unwrap();
            prop_assume!(object.len() < 2 << 20);
            let text = format!(
                r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","operation":"CREATE","object":{object}}}}}"#
            );
            let Ok(estimated) = estimate(text.as_bytes()) else {
                // Answered as unreadable, never parsed.
                return Ok(());
            };
            let allocated = parsed_peak(&object);
            if std::env::var_os("PARSE_COST_SHOW").is_some() {
                eprintln!("{} text, {estimated} estimated, {allocated} allocated", object.len());
            }
            prop_assert!(
                estimated >= allocated,
                "estimated {estimated} bytes, parsing took {allocated} ({} bytes of text)",
                object.len()
            );
            Ok(())
        })
        .unwrap();
}
