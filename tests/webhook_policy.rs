//! Which pods are injected, and with what: the opt-in mistakes, pods that
//! cannot keep the sidecar's secrets, the role policy, the server version.

// Test code: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod webhook_support;

use std::collections::BTreeMap;

use bedrock_broker::webhook::{
    self, ClusterFacts, Outcome, RoleSource, SidecarAuth, Skip, StringMap,
};
use serde_json::{json, Value};
use webhook_support::defaults;
use webhook_support::pods::{app_facts, denial, inject, opted_in, pod, ROLE};

#[test]
fn the_opt_in_written_as_an_annotation_is_refused() {
    let annotated = |value: &str, labels: Value| {
        pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": labels,
                "annotations": {"bedrock-broker.io/inject": value, "bedrock-broker.io/role-arn": ROLE}},
            "spec": {"containers": [{"name": "app", "image": "x"}]}}))
    };
    let d = defaults();
    // Not opted in otherwise: a failed opt-in, refused where it is seen
    // (CONTRACT: "the opt-in written as an annotation is refused").
    for value in ["true", "True", "yes"] {
        let msg = denial(&annotated(value, json!({})), &app_facts());
        assert!(
            msg.contains("set as an annotation") && msg.contains("metadata.labels"),
            "{msg}"
        );
    }
    // "false" as an annotation asks for what happens anyway: admitted
    // unchanged, with a word that the annotation decided nothing.
    match webhook::inject(&annotated("false", json!({})), &app_facts(), &d) {
        Ok(Outcome::Skipped(skip)) => {
            assert_eq!(skip, Skip::OptInAnnotation);
            let w = skip.warning().expect("a warning");
            assert!(w.contains("decides nothing"), "{w}");
        }
        other => panic!("{other:?}"),
    }
    // Opted in by the label too: injected, the redundant annotation named.
    match webhook::inject(
        &annotated("true", json!({"bedrock-broker.io/inject": "true"})),
        &app_facts(),
        &d,
    ) {
        Ok(Outcome::Injected(i)) => assert!(
            i.warnings
                .iter()
                .any(|w| w.contains("annotation bedrock-broker.io/inject is ignored")),
            "{:?}",
            i.warnings
        ),
        other => panic!("{other:?}"),
    }
    // An annotation saying "false" on an opted-in pod is a mistaken opt-out.
    let msg = denial(
        &annotated("false", json!({"bedrock-broker.io/inject": "true"})),
        &app_facts(),
    );
    assert!(
        msg.contains("set the label bedrock-broker.io/inject: \"false\""),
        "{msg}"
    );
}

#[test]
fn a_namespace_label_other_than_true_or_false_is_refused() {
    let p = pod(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "x"}]}}),
    );
    let labels: StringMap = [("bedrock-broker.io/inject".to_owned(), "True".to_owned())].into();
    let facts = ClusterFacts {
        namespace_labels: Some(&labels),
        ..Default::default()
    };
    let msg = denial(&p, &facts);
    assert!(
        msg.contains("namespace's label bedrock-broker.io/inject: \"True\" is not accepted"),
        "{msg}"
    );
    // "false", or no label, on the namespace is simply not opted in.
    let labels: StringMap = [("bedrock-broker.io/inject".to_owned(), "false".to_owned())].into();
    for namespace_labels in [Some(&labels), None] {
        let facts = ClusterFacts {
            namespace_labels,
            ..Default::default()
        };
        match webhook::inject(&p, &facts, &defaults()) {
            Ok(Outcome::Skipped(Skip::NotOptedIn)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn pods_sharing_process_namespaces_are_refused() {
    // In a shared PID namespace another process with the sidecar's UID
    // (the pod's shared UID, which the sidecar would adopt, or an image's
    // default user the webhook cannot see) reads its environment and
    // token through /proc; with hostPID, so can the node's processes.
    for (spec, needle) in [
        (
            json!({"shareProcessNamespace": true}),
            "shareProcessNamespace: true",
        ),
        (
            json!({"shareProcessNamespace": true, "securityContext": {"runAsUser": 1000}}),
            "shareProcessNamespace: true",
        ),
        (json!({"hostPID": true}), "hostPID: true"),
    ] {
        let msg = denial(&opted_in(spec.clone()), &app_facts());
        assert!(msg.contains(needle), "{spec}: {msg}");
        assert!(msg.contains("/proc"), "{spec}: {msg}");
    }
    // false is the default and fine.
    inject(&opted_in(
        json!({"shareProcessNamespace": false, "hostPID": false}),
    ));
}

#[test]
fn roles_are_limited_to_the_service_accounts_under_that_policy() {
    // As the chart installs the webhook.
    let service_account = || {
        let mut d = defaults();
        d.role_policy = webhook::RolePolicy::ServiceAccount;
        d
    };
    let denial =
        |p: &k8s_openapi::api::core::v1::Pod, facts: &ClusterFacts<'_>| match webhook::inject(
            p,
            facts,
            &service_account(),
        ) {
            Err(d) => d.to_string(),
            other => panic!("expected a denial, got {other:?}"),
        };
    let sa_role = "arn:aws:iam::123456789012:role/chat-app";
    let sa: StringMap = [("eks.amazonaws.com/role-arn".to_owned(), sa_role.to_owned())].into();
    let none = StringMap::new();
    let facts = |annotations: &'static StringMap| ClusterFacts {
        namespace: Some("default"),
        service_account_annotations: Some(annotations),
        ..Default::default()
    };
    let sa: &'static StringMap = Box::leak(Box::new(sa));
    let none: &'static StringMap = Box::leak(Box::new(none));
    let with_role = |role: &str| {
        let mut p = opted_in(json!({"serviceAccountName": "chat-app"}));
        p.metadata.annotations =
            Some([("bedrock-broker.io/role-arn".to_owned(), role.to_owned())].into());
        p
    };
    // Another role than the ServiceAccount's: refused, naming both and the policy.
    let msg = denial(&with_role(ROLE), &facts(sa));
    for needle in [
        ROLE,
        sa_role,
        "ServiceAccount \"chat-app\"",
        "--role-policy",
    ] {
        assert!(msg.contains(needle), "missing {needle:?}: {msg}");
    }
    // No role on the ServiceAccount: a pod cannot bring its own.
    let msg = denial(&with_role(ROLE), &facts(none));
    assert!(msg.contains("--role-policy"), "{msg}");
    // Nor through a container's AWS_ROLE_ARN.
    let mut p = opted_in(
        json!({"serviceAccountName": "chat-app", "containers": [{"name": "app", "image": "x",
        "env": [{"name": "AWS_ROLE_ARN", "value": ROLE}]}]}),
    );
    p.metadata.annotations = None;
    assert!(denial(&p, &facts(none)).contains("no IAM role"));
    // The ServiceAccount's own role, named again on the pod, is fine.
    match webhook::inject(&with_role(sa_role), &facts(sa), &service_account()) {
        Ok(Outcome::Injected(i)) => assert!(matches!(
            i.auth,
            SidecarAuth::WebIdentity { ref role, .. } if role.as_str() == sa_role
        )),
        other => panic!("{other:?}"),
    }
    // --role-policy any (the binary's default): the pod's annotation wins.
    match webhook::inject(&with_role(ROLE), &facts(sa), &defaults()) {
        Ok(Outcome::Injected(i)) => {
            assert!(matches!(
                i.auth,
                SidecarAuth::WebIdentity { source: RoleSource::PodAnnotation, ref role, .. } if role.as_str() == ROLE
            ));
            // Surprising, so said: another role than the ServiceAccount's.
            assert!(
                i.warnings.iter().any(
                    |w| w.contains(ROLE) && w.contains(sa_role) && w.contains("trust policy")
                        // `inject` runs with `any` unless told: say what the chart's webhook does.
                        && w.contains("service-account, the chart's default, this pod is refused")
                ),
                "{:?}",
                i.warnings
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn native_sidecars_are_refused_on_servers_without_them() {
    // Before 1.29 an API server without the SidecarContainers gate drops
    // restartPolicy from init containers: the sidecar would run as an init
    // container that never ends, and the pod would never start.
    let old = webhook::KubeVersion::parse("1", "28+").expect("a version");
    let facts = ClusterFacts {
        kube_version: Some(old),
        ..app_facts()
    };
    let msg = denial(&opted_in(json!({})), &facts);
    for needle in ["Kubernetes 1.29", "v1.28", "classic", "--sidecar-mode"] {
        assert!(msg.contains(needle), "missing {needle:?}: {msg}");
    }
    // Classic mode works there.
    let mut p = opted_in(json!({}));
    p.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("bedrock-broker.io/sidecar-mode".into(), "classic".into());
    assert!(matches!(
        webhook::inject(&p, &facts, &defaults()),
        Ok(Outcome::Injected(_))
    ));
    // 1.29 and later (and an unknown version) inject native sidecars.
    for v in [Some(("1", "29")), Some(("1", "36")), None] {
        let facts = ClusterFacts {
            kube_version: v.map(|(a, b)| webhook::KubeVersion::parse(a, b).expect("v")),
            ..app_facts()
        };
        assert!(matches!(
            webhook::inject(&opted_in(json!({})), &facts, &defaults()),
            Ok(Outcome::Injected(_))
        ));
    }
    assert!(webhook::KubeVersion::parse("one", "x").is_none());
}
