//! `bedrock-broker inject`: YAML in, the webhook's mutation applied, YAML out.

// Test code: a failed setup is a failed test, and the real clock is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod webhook_support;

use bedrock_broker::cli::InjectArgs;
use bedrock_broker::config::Env;
use bedrock_broker::webhook::{parse_documents, run_inject, InjectConfig, InjectStatus};
use serde_json::{json, Value};
use webhook_support::{fixtures, preserved};

fn config(args: InjectArgs) -> InjectConfig {
    InjectConfig::from_args(&args, &Env::default()).expect("valid flags")
}

fn run(input: &str, args: InjectArgs) -> (InjectStatus, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let status = run_inject(&config(args), input.as_bytes(), &mut out, &mut err);
    (
        status,
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

fn manifest(name: &str) -> String {
    std::fs::read_to_string(fixtures().join("manifests").join(name)).expect("manifest")
}

/// The pod spec of each object that has one, by `Kind/name`.
fn pod_specs(docs: &[Value]) -> Vec<(String, Value)> {
    fn walk(v: &Value, out: &mut Vec<(String, Value)>) {
        if let Some(items) = v["items"].as_array() {
            for i in items {
                walk(i, out);
            }
            return;
        }
        let id = format!(
            "{}/{}",
            v["kind"].as_str().unwrap_or(""),
            v["metadata"]["name"].as_str().unwrap_or("")
        );
        for pointer in [
            "/spec",
            "/spec/template/spec",
            "/spec/jobTemplate/spec/template/spec",
        ] {
            if let Some(spec) = v.pointer(pointer).filter(|s| s.get("containers").is_some()) {
                out.push((id.clone(), spec.clone()));
            }
        }
    }
    let mut out = Vec::new();
    for d in docs {
        walk(d, &mut out);
    }
    out
}

fn has_sidecar(spec: &Value) -> bool {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|f| spec[f].as_array())
        .flatten()
        .any(|c| c["name"] == "bedrock-broker")
}

#[test]
fn injects_every_opted_in_workload_and_keeps_everything_else() {
    let input = manifest("workloads.yaml");
    let (status, out, err) = run(&input, InjectArgs::default());
    assert_eq!(status, InjectStatus::Ok, "{err}");
    let before = parse_documents(&input).expect("input parses");
    let after = parse_documents(&out).expect("output parses");
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        preserved(b, a, "").unwrap_or_else(|e| panic!("{e}"));
    }
    let injected: Vec<_> = pod_specs(&after)
        .into_iter()
        .map(|(id, spec)| (id, has_sidecar(&spec)))
        .collect();
    assert_eq!(
        injected,
        [
            ("Deployment/chat".to_owned(), true),
            ("StatefulSet/indexer".to_owned(), true),
            ("DaemonSet/node-agent".to_owned(), false),
            ("CronJob/nightly-summary".to_owned(), true),
            ("Job/backfill".to_owned(), true),
            ("Pod/debug-shell".to_owned(), true),
            ("ReplicaSet/plain-web".to_owned(), false),
        ]
    );
    assert!(err.contains("Deployment default/chat: injected"), "{err}");
    assert!(
        err.contains("ReplicaSet default/plain-web: unchanged (not opted in)"),
        "{err}"
    );
}

#[test]
fn reads_yaml_as_kubectl_does_and_writes_it_unambiguously() {
    let (_, out, _) = run(&manifest("workloads.yaml"), InjectArgs::default());
    let docs = parse_documents(&out).expect("parses");
    let chat = docs
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("deployment");
    let spec = &chat["spec"]["template"]["spec"];
    // `defaultMode: 0644` is octal, as kubectl reads it.
    assert_eq!(spec["volumes"][0]["configMap"]["defaultMode"], 0o644);
    // Strings that look like other types stay strings.
    assert_eq!(spec["containers"][0]["env"][0]["value"], "yes");
    assert_eq!(spec["containers"][0]["env"][1]["value"], "0644");
    assert!(out.contains("value: \"yes\""), "{out}");
    assert!(
        out.contains("bedrock-broker.io/injected: \"0.1.0\""),
        "{out}"
    );
}

#[test]
fn running_twice_changes_nothing() {
    let (_, once, _) = run(&manifest("workloads.yaml"), InjectArgs::default());
    let (status, twice, err) = run(&once, InjectArgs::default());
    assert_eq!(status, InjectStatus::Ok);
    assert_eq!(once, twice);
    assert!(!err.contains(": injected"), "{err}");
}

#[test]
fn refusals_print_nothing_and_name_every_problem() {
    let (status, out, err) = run(&manifest("denied.yaml"), InjectArgs::default());
    assert_eq!(status, InjectStatus::Denied);
    assert!(out.is_empty());
    for needle in [
        "Deployment default/typo",
        "bedrock-broker.io/token-expiration: \"300\"",
        "bedrock-broker.io/sidecar-mode: \"sidecar\"",
        "Pod default/no-role",
        "no IAM role",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in {err}");
    }
}

#[test]
fn flags_stand_in_for_the_cluster() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: app\n    image: app:1\n";
    let (status, out, _) = run(pod, InjectArgs::default());
    assert_eq!(status, InjectStatus::Ok);
    assert!(!out.contains("bedrock-broker"), "not opted in: {out}");

    let args = InjectArgs {
        namespace: Some("apps".into()),
        namespace_labels: vec!["bedrock-broker.io/inject=true".into()],
        service_account_annotations: vec![
            "eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/apps".into(),
        ],
        sidecar: bedrock_broker::cli::SidecarDefaultsArgs {
            sidecar_region: Some("us-east-2".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let (status, out, err) = run(pod, args);
    assert_eq!(status, InjectStatus::Ok, "{err}");
    let docs = parse_documents(&out).expect("parses");
    let sidecar = &docs[0]["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "bedrock-broker");
    let env = sidecar["env"].as_array().cloned().unwrap_or_default();
    assert!(env.contains(
        &json!({"name": "AWS_ROLE_ARN", "value": "arn:aws:iam::123456789012:role/apps"})
    ));
    assert!(env.contains(&json!({"name": "AWS_REGION", "value": "us-east-2"})));
    assert!(err.contains("Pod apps/p: injected"), "{err}");
}

#[test]
fn bad_yaml_and_empty_input() {
    let (status, out, err) = run("kind: Pod\n  bad: [indent\n", InjectArgs::default());
    assert_eq!(status, InjectStatus::BadInput);
    assert!(out.is_empty());
    assert!(err.contains("not valid YAML"), "{err}");

    let (status, out, _) = run("", InjectArgs::default());
    assert_eq!(status, InjectStatus::Ok);
    assert!(out.trim().is_empty());
}

#[test]
fn a_large_stream_is_read_and_an_alias_bomb_refused() {
    // `helm template` of a chart with large CRDs: many documents, more
    // nodes in all than the YAML reader's per-input default (250,000)
    // allowed, each document well within it.
    let mut input = String::new();
    for d in 0..60 {
        input.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm{d}}}\ndata:\n"
        ));
        for k in 0..2500 {
            input.push_str(&format!("  k{k}: v{k}\n"));
        }
    }
    let (status, out, err) = run(&input, InjectArgs::default());
    assert_eq!(status, InjectStatus::Ok, "{err}");
    assert_eq!(parse_documents(&out).expect("parses").len(), 60);

    // Nine levels of nine aliases: 9^9 leaves from a kilobyte.
    let mut bomb = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bomb}\ndata:\n  a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 9].join(", ");
        bomb.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
    }
    let (status, out, err) = run(&bomb, InjectArgs::default());
    assert_eq!(status, InjectStatus::BadInput);
    assert!(out.is_empty());
    assert!(
        err.contains("too large") && err.contains("past a limit of the YAML reader"),
        "{err}"
    );

    // Smaller bombs, each within one document's limits: together they
    // expand past what the input's bytes can hold without aliases.
    let mut bombs = String::new();
    for d in 0..17 {
        bombs.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb{d}}}\ndata:\n  a0: &a0 [{}]\n",
            vec!["lol"; 40].join(", ")
        ));
        for i in 1..3 {
            let refs = vec![format!("*a{}", i - 1); 40].join(", ");
            bombs.push_str(&format!("  a{i}: &a{i} [{refs}]\n"));
        }
    }
    let (status, out, err) = run(&bombs, InjectArgs::default());
    assert_eq!(status, InjectStatus::BadInput);
    assert!(out.is_empty());
    assert!(
        err.contains("aliases expand past what inject reads"),
        "{err}"
    );
}

/// A ConfigMap whose data holds a value nested `depth` levels deep below
/// the document's root (which is level 1): block mappings, or flow
/// sequences on one line.
fn nested(depth: usize, flow: bool) -> String {
    let mut doc = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: deep}\ndata:\n");
    // Root and `data` are two levels; the value adds the rest.
    let inner = depth - 2;
    if flow {
        doc.push_str(&format!(
            "  v: {}{}\n",
            "[".repeat(inner),
            "]".repeat(inner)
        ));
    } else {
        for level in 0..inner {
            doc.push_str(&format!("{}k{level}:\n", "  ".repeat(level + 1)));
        }
        doc.push_str(&format!("{}leaf: x\n", "  ".repeat(inner + 1)));
    }
    doc
}

#[test]
fn deep_documents_are_read_to_a_stated_depth() {
    // A CRD's schema nests two levels a field: real ones reach past the
    // YAML reader's default of 64. Read to 127, as JSON is.
    for flow in [false, true] {
        let (status, out, err) = run(&nested(127, flow), InjectArgs::default());
        assert_eq!(status, InjectStatus::Ok, "flow {flow}: {err}");
        assert!(out.contains("deep"), "flow {flow}: {out}");

        let (status, out, err) = run(&nested(128, flow), InjectArgs::default());
        assert_eq!(status, InjectStatus::BadInput, "flow {flow}");
        assert!(out.is_empty());
        assert!(
            err.contains("nests too deeply") && err.contains("deeper than 127 levels"),
            "flow {flow}: {err}"
        );
    }
    // Past the scanner's own limit for flow collections, read ahead.
    let flow = format!("x: {}{}\n", "[".repeat(300), "]".repeat(300));
    let (status, _, err) = run(&flow, InjectArgs::default());
    assert_eq!(status, InjectStatus::BadInput);
    assert!(err.contains("deeper than 127 levels"), "{err}");
    let json = format!(
        "{{\"kind\": \"ConfigMap\", \"data\": {{\"v\": {}{}}}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let (status, _, err) = run(&json, InjectArgs::default());
    assert_eq!(status, InjectStatus::BadInput);
    assert!(
        err.contains("nests too deeply") && err.contains("deeper than 127 levels"),
        "{err}"
    );
}

#[test]
fn a_pod_that_is_no_pod_is_refused_naming_the_field_and_document() {
    let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: chat}\nspec:\n  template:\n    metadata:\n      labels: {bedrock-broker.io/inject: true}\n    spec:\n      containers: [{name: a, image: x}]\n---\napiVersion: v1\nkind: Pod\nspec:\n  containers: {name: a}\n";
    let (status, out, err) = run(input, InjectArgs::default());
    assert_eq!(status, InjectStatus::Denied);
    assert!(out.is_empty());
    // The unquoted opt-in: YAML's boolean, where Kubernetes takes strings.
    assert!(
        err.contains("Deployment default/chat: not a valid pod (template): spec.template.metadata.labels.bedrock-broker.io/inject: invalid type: boolean `true`")
            && err.contains("quote it"),
        "{err}"
    );
    assert!(
        err.contains("Pod default/(no name, document 2): not a valid pod (template): spec.containers: invalid type: map"),
        "{err}"
    );
    // Items of a List are told apart by their place in it.
    let list = "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Pod, spec: {containers: {name: a}}}\n- {apiVersion: v1, kind: Pod, spec: {containers: {name: b}}}\n";
    let (status, _, err) = run(list, InjectArgs::default());
    assert_eq!(status, InjectStatus::Denied);
    for i in 0..2 {
        assert!(
            err.contains(&format!("Pod default/(no name, document 1, items[{i}])")),
            "{err}"
        );
    }
}

#[test]
fn a_stream_of_json_objects_is_read_as_kubectl_reads_it() {
    // As `jq -c '.items[]'` prints them: one object after another.
    let pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": {"bedrock-broker.io/inject": "true"},
                            "annotations": {"bedrock-broker.io/role-arn": "arn:aws:iam::123456789012:role/r", "bedrock-broker.io/region": "us-east-1"}},
               "spec": {"containers": [{"name": "app", "image": "app:1"}]}})
    };
    let input = format!("{}\n{}\n", pod("a"), pod("b"));
    let (status, out, err) = run(&input, InjectArgs::default());
    assert_eq!(status, InjectStatus::Ok, "{err}");
    let docs = parse_documents(&out).expect("parses");
    assert_eq!(docs.len(), 2);
    assert!(
        pod_specs(&docs).iter().all(|(_, spec)| has_sidecar(spec)),
        "{out}"
    );

    let (status, _, err) = run(&format!("{input} {{"), InjectArgs::default());
    assert_eq!(status, InjectStatus::BadInput);
    assert!(err.contains("not valid JSON"), "{err}");

    // YAML that begins with `{`, as kubectl reads it too: a flow mapping,
    // and JSON objects separated as YAML documents.
    for yaml in [
        "{apiVersion: v1, kind: ConfigMap, metadata: {name: a}}\n".to_owned(),
        format!("{}\n---\n{}\n", pod("a"), pod("b")),
        format!(
            "{}\n---\nkind: ConfigMap\nmetadata: {{name: c}}\n",
            pod("a")
        ),
    ] {
        let (status, out, err) = run(&yaml, InjectArgs::default());
        assert_eq!(status, InjectStatus::Ok, "{yaml}: {err}");
        assert_eq!(
            parse_documents(&out).expect("parses").len(),
            parse_documents(&yaml).expect("parses").len()
        );
        assert!(!parse_documents(&yaml).expect("parses").is_empty());
    }
}

#[test]
fn a_workload_without_a_template_is_reported() {
    let (status, _, err) = run(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec: {}\n",
        InjectArgs::default(),
    );
    assert_eq!(status, InjectStatus::Denied);
    assert!(
        err.contains("Deployment default/d: has no pod template"),
        "{err}"
    );
}

#[test]
fn the_opt_in_written_as_an_annotation_is_reported() {
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    bedrock-broker.io/inject: \"true\"\nspec:\n  containers:\n  - name: app\n    image: app:1\n";
    let (status, out, err) = run(pod, InjectArgs::default());
    // Refused, as the webhook refuses it: `inject` and the webhook agree.
    assert_eq!(status, InjectStatus::Denied, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("Pod default/p: ")
            && err.contains("bedrock-broker.io/inject: \"true\" is set as an annotation"),
        "{err}"
    );
}

#[test]
fn limit_range_documents_stand_in_for_the_namespaces() {
    let input = "apiVersion: v1\nkind: LimitRange\nmetadata:\n  name: l\n  namespace: apps\nspec:\n  limits:\n  - type: Container\n    min:\n      cpu: 50m\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: apps\n  labels:\n    bedrock-broker.io/inject: \"true\"\nspec:\n  containers:\n  - name: app\n    image: app:1\n";
    let args = InjectArgs {
        service_account_annotations: vec![
            "eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/apps".into(),
        ],
        sidecar: bedrock_broker::cli::SidecarDefaultsArgs {
            sidecar_region: Some("us-east-2".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let (status, out, err) = run(input, args);
    assert_eq!(status, InjectStatus::Ok, "{err}");
    let docs = parse_documents(&out).expect("parses");
    let sidecar = &docs[1]["spec"]["initContainers"][0];
    assert_eq!(sidecar["resources"]["requests"]["cpu"], "50m");
    assert!(
        err.contains("Pod apps/p: warning: bedrock-broker fitted its sidecar to the namespace's LimitRange: cpu request 10m -> 50m (min)"),
        "{err}"
    );
}

#[test]
fn namespaces_the_webhook_never_sees_are_left_alone() {
    let pod = |ns: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: {ns}\n  labels:\n    bedrock-broker.io/inject: \"true\"\n  annotations:\n    bedrock-broker.io/api-key-secret: k/token\nspec:\n  containers:\n  - name: app\n    image: app:1\n")
    };
    let region = || bedrock_broker::cli::SidecarDefaultsArgs {
        sidecar_region: Some("us-east-2".into()),
        ..Default::default()
    };
    // kube-system and the webhook's own namespace are excluded by the
    // chart's selectors: the webhook never sees their pods.
    for ns in ["kube-system", "bedrock-broker"] {
        let args = InjectArgs {
            sidecar: region(),
            ..Default::default()
        };
        let (status, out, err) = run(&pod(ns), args);
        assert_eq!(status, InjectStatus::Ok, "{err}");
        assert!(!out.contains("initContainers"), "{ns}: {out}");
        assert!(
            err.contains(&format!(
                "Pod {ns}/p: unchanged (namespace {ns} is excluded"
            )),
            "{err}"
        );
    }
    // The same list as the chart's, when it differs from the defaults.
    let args = InjectArgs {
        exclude_namespaces: Some("platform".into()),
        sidecar: region(),
        ..Default::default()
    };
    let (_, out, err) = run(&pod("kube-system"), args.clone());
    assert!(out.contains("initContainers"), "{err}");
    let (_, out, _) = run(&pod("platform"), args);
    assert!(!out.contains("initContainers"), "{out}");
}

#[test]
fn custom_resources_named_like_workloads_pass_through() {
    // Volcano's Job and a CRD's Deployment: their own schemas, no pod
    // template where the built-in kinds keep theirs.
    let input = "apiVersion: batch.volcano.sh/v1alpha1\nkind: Job\nmetadata:\n  name: tf-training\nspec:\n  minAvailable: 1\n  tasks:\n  - replicas: 2\n    name: worker\n    template:\n      spec:\n        containers: [{name: w, image: tensorflow}]\n---\napiVersion: example.com/v1\nkind: Deployment\nmetadata: {name: not-apps}\nspec:\n  template: \"a string, in some other schema\"\n---\napiVersion: example.com/v1\nkind: Pod\nmetadata:\n  name: not-core\n  labels: {bedrock-broker.io/inject: \"true\"}\nspec:\n  containers: [{name: a, image: b}]\n";
    let args = InjectArgs {
        service_account_annotations: vec![
            "eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/apps".into(),
        ],
        sidecar: bedrock_broker::cli::SidecarDefaultsArgs {
            sidecar_region: Some("us-east-2".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let (status, out, err) = run(input, args.clone());
    assert_eq!(status, InjectStatus::Ok, "{err}");
    assert_eq!(
        parse_documents(&out).expect("output parses"),
        parse_documents(input).expect("input parses")
    );
    assert!(err.is_empty(), "{err}");

    // The built-in kinds, in every group that ever served them.
    for api_version in ["apps/v1", "extensions/v1beta1"] {
        let deployment = format!("apiVersion: {api_version}\nkind: Deployment\nmetadata: {{name: d}}\nspec:\n  template:\n    metadata:\n      labels: {{bedrock-broker.io/inject: \"true\"}}\n    spec:\n      containers: [{{name: a, image: b}}]\n");
        let (status, out, err) = run(&deployment, args.clone());
        assert_eq!(status, InjectStatus::Ok, "{api_version}: {err}");
        assert!(out.contains("initContainers"), "{api_version}: {out}");
    }
}

#[test]
fn a_pod_naming_its_role_is_judged_without_its_service_account() {
    // Under --role-policy any the webhook reads no ServiceAccount for a
    // pod naming its own role: neither may inject, for the audience.
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {bedrock-broker.io/inject: \"true\"}\n  annotations: {bedrock-broker.io/role-arn: \"arn:aws:iam::123456789012:role/pod-own\"}\nspec:\n  serviceAccountName: app\n  containers: [{name: app, image: busybox}]\n";
    let sa = |audience: &str| {
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n  annotations:\n    eks.amazonaws.com/role-arn: arn:aws:iam::123456789012:role/sa-role\n    eks.amazonaws.com/audience: {audience}\n---\n{pod}")
    };
    let args = |policy: &str| InjectArgs {
        sidecar: bedrock_broker::cli::SidecarDefaultsArgs {
            sidecar_region: Some("us-east-1".into()),
            role_policy: Some(policy.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let audience = |out: &str| {
        let docs = parse_documents(out).expect("parses");
        docs[1]["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|v| {
                v["projected"]["sources"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find_map(|s| {
                s["serviceAccountToken"]["audience"]
                    .as_str()
                    .map(str::to_owned)
            })
    };
    let (status, out, err) = run(&sa("custom-aud"), args("any"));
    assert_eq!(status, InjectStatus::Ok, "{err}");
    assert_eq!(
        audience(&out).as_deref(),
        Some("sts.amazonaws.com"),
        "{out}"
    );
    // An audience the webhook never reads refuses nothing.
    let (status, _, err) = run(&sa("\"bad audience\""), args("any"));
    assert_eq!(status, InjectStatus::Ok, "{err}");

    // Where the webhook reads the ServiceAccount, its audience counts.
    let own_sa = sa("custom-aud").replace("role/pod-own", "role/sa-role");
    let (status, out, err) = run(&own_sa, args("service-account"));
    assert_eq!(status, InjectStatus::Ok, "{err}");
    assert_eq!(audience(&out).as_deref(), Some("custom-aud"), "{out}");
}

#[test]
fn an_empty_namespace_is_no_namespace() {
    // As kubectl and the API server read `namespace: ""`: --namespace.
    let sa = |ns: &str| {
        format!("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n  namespace: {ns}\n  annotations: {{eks.amazonaws.com/role-arn: \"arn:aws:iam::123456789012:role/app\"}}\n")
    };
    let pod = |ns: &str| {
        format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: {ns}\n  labels: {{bedrock-broker.io/inject: \"true\"}}\nspec:\n  serviceAccountName: app\n  containers: [{{name: app, image: busybox}}]\n")
    };
    for (sa_ns, pod_ns) in [("\"\"", "default"), ("default", "\"\""), ("\"\"", "\"\"")] {
        let input = format!("{}---\n{}", sa(sa_ns), pod(pod_ns));
        let args = InjectArgs {
            sidecar: bedrock_broker::cli::SidecarDefaultsArgs {
                sidecar_region: Some("us-east-1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let (status, _, err) = run(&input, args);
        assert_eq!(status, InjectStatus::Ok, "{sa_ns}/{pod_ns}: {err}");
        assert!(
            err.contains("Pod default/p: injected"),
            "{sa_ns}/{pod_ns}: {err}"
        );
    }
}

#[test]
fn an_unquoted_namespace_label_is_refused_as_on_a_pod() {
    let input = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: apps\n  labels: {bedrock-broker.io/inject: true}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: apps}\nspec: {containers: [{name: a, image: b}]}\n";
    let (status, out, err) = run(input, InjectArgs::default());
    assert_eq!(status, InjectStatus::Denied, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("Namespace apps: metadata.labels.bedrock-broker.io/inject: invalid type: boolean `true`")
            && err.contains("quote it"),
        "{err}"
    );
}

#[test]
fn settings_on_a_workloads_own_metadata_are_reported() {
    let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: chat\n  labels: {bedrock-broker.io/inject: \"true\"}\n  annotations: {bedrock-broker.io/role-arn: \"arn:aws:iam::123456789012:role/app\", bedrock-broker.io/rol-arn: typo}\nspec:\n  selector: {matchLabels: {app: chat}}\n  template:\n    metadata: {labels: {app: chat}}\n    spec: {containers: [{name: app, image: busybox}]}\n";
    let (status, out, err) = run(input, InjectArgs::default());
    assert_eq!(status, InjectStatus::Ok, "{err}");
    // What is injected does not change: nothing.
    assert_eq!(
        parse_documents(&out).expect("parses"),
        parse_documents(input).expect("parses")
    );
    assert!(
        err.contains("Deployment default/chat: unchanged (not opted in)"),
        "{err}"
    );
    assert!(
        err.contains("Deployment default/chat: warning: the label bedrock-broker.io/inject is on the Deployment's own metadata")
            && err.contains("spec.template.metadata.labels"),
        "{err}"
    );
    assert!(
        err.contains("bedrock-broker.io/role-arn, bedrock-broker.io/rol-arn")
            && err.contains("spec.template.metadata.annotations"),
        "{err}"
    );

    // The same label on both (kustomize's commonLabels): nothing to say.
    let both = input
        .replace("bedrock-broker.io/rol-arn: typo", "x: y")
        .replace(
            "metadata: {labels: {app: chat}}",
            "metadata: {labels: {app: chat, bedrock-broker.io/inject: \"true\"}, annotations: {bedrock-broker.io/role-arn: \"arn:aws:iam::123456789012:role/app\", bedrock-broker.io/region: us-east-1}}",
        );
    let (status, _, err) = run(&both, InjectArgs::default());
    assert_eq!(status, InjectStatus::Ok, "{err}");
    assert!(err.contains("Deployment default/chat: injected"), "{err}");
    assert!(!err.contains("own metadata"), "{err}");

    // `"false"` there meant to keep the pods out: the advice says so.
    let out_of = input.replace(
        "labels: {bedrock-broker.io/inject: \"true\"}",
        "labels: {bedrock-broker.io/inject: \"false\"}",
    );
    let (_, _, err) = run(&out_of, InjectArgs::default());
    assert!(
        err.contains("to opt its pods out, put it on the pod template")
            && !err.contains("opt its pods in"),
        "{err}"
    );
}

#[test]
fn a_key_written_twice_takes_the_last_as_kubectl() {
    let input =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  a: first\n  a: last\n";
    let (status, out, err) = run(input, InjectArgs::default());
    assert_eq!(status, InjectStatus::Ok, "{err}");
    let docs = parse_documents(&out).expect("parses");
    assert_eq!(docs[0]["data"], json!({"a": "last"}));
}
