//! The pure mutation and the admission handler's edge cases.

// Test code: a failed setup is a failed test, and the real clock is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod webhook_support;

use std::collections::BTreeMap;

use bedrock_broker::webhook::{
    self, review, ClusterFacts, ClusterLookup, LookupError, LookupErrorPolicy, Outcome, RoleSource,
    SidecarAuth, Skip, StringMap, TokenAccess, TokenVolume,
};
use json_patch::PatchOperation;
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};
use webhook_support::pods::{
    app_facts, denial, env_of, inject, mutated, opted_in, pod, sidecar, ROLE,
};
use webhook_support::{cluster, defaults, patch_of, state, CHAT_APP_ROLE};

#[test]
fn token_is_readable_through_fs_group() {
    let p = opted_in(json!({"securityContext": {"fsGroup": 2000}}));
    let i = inject(&p);
    assert_eq!(i.token_access, TokenAccess::FsGroup(2000));
    assert_eq!(
        sidecar(&mutated(&p, &i))["securityContext"]["runAsUser"],
        65532
    );
}

#[test]
fn a_shared_user_beside_an_fs_group_is_joined() {
    // As OpenShift's restricted SCC assigns them, from the namespace's
    // range: a UID of the sidecar's own would be outside it, and refused.
    let p = opted_in(json!({
        "securityContext": {"fsGroup": 1000650000},
        "containers": [{"name": "app", "image": "a", "securityContext": {"runAsUser": 1000650000}}],
    }));
    let i = inject(&p);
    assert_eq!(i.token_access, TokenAccess::SharedUser(1000650000));
    assert_eq!(
        sidecar(&mutated(&p, &i))["securityContext"]["runAsUser"],
        1000650000
    );
}

#[test]
fn sidecar_joins_a_shared_non_root_user() {
    let p = opted_in(json!({
        "securityContext": {"runAsUser": 1001},
        "initContainers": [{"name": "init", "image": "i:1", "securityContext": {"runAsUser": 1001}}],
    }));
    let i = inject(&p);
    assert_eq!(i.token_access, TokenAccess::SharedUser(1001));
    let v = mutated(&p, &i);
    assert_eq!(sidecar(&v)["securityContext"]["runAsUser"], 1001);
    assert_eq!(sidecar(&v)["securityContext"]["runAsNonRoot"], true);
}

#[test]
fn own_user_and_readable_default_mode_otherwise() {
    for spec in [
        json!({}),
        json!({"securityContext": {"runAsUser": 0}}),
        json!({"containers": [
            {"name": "a", "image": "a", "securityContext": {"runAsUser": 1000}},
            {"name": "b", "image": "b", "securityContext": {"runAsUser": 2000}},
        ]}),
    ] {
        let p = opted_in(spec.clone());
        let i = inject(&p);
        assert_eq!(i.token_access, TokenAccess::DefaultMode, "{spec}");
        let v = mutated(&p, &i);
        assert_eq!(sidecar(&v)["securityContext"]["runAsUser"], 65532, "{spec}");
        let volume = v["spec"]["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == "bedrock-broker-token"))
            .cloned()
            .expect("token volume");
        assert_eq!(volume["projected"]["defaultMode"], 0o444, "{spec}");
    }
}

#[test]
fn the_sidecar_is_locked_down_and_probed() {
    let p = opted_in(json!({}));
    let c = sidecar(&mutated(&p, &inject(&p)));
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["restartPolicy"], "Always");
    assert_eq!(c["args"], json!(["sidecar"]));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["startupProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["ports"][0]["name"], "bb-admin");
    assert_eq!(c["ports"][0]["containerPort"], 9788);
    assert_eq!(
        env_of(&c, "AWS_WEB_IDENTITY_TOKEN_FILE").map(|e| e["value"].clone()),
        Some(json!(
            "/var/run/secrets/bedrock-broker/serviceaccount/token"
        ))
    );
    assert_eq!(c["volumeMounts"][0]["readOnly"], true);
}

#[test]
fn native_sidecar_goes_first_and_keeps_the_order_of_the_rest() {
    let p = opted_in(json!({
        "initContainers": [{"name": "one", "image": "x"}, {"name": "two", "image": "x", "restartPolicy": "Always"}],
        "containers": [{"name": "app", "image": "x"}, {"name": "other", "image": "x"}],
    }));
    let v = mutated(&p, &inject(&p));
    let names = |f: &str| -> Vec<String> {
        v["spec"][f]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names("initContainers"), ["bedrock-broker", "one", "two"]);
    assert_eq!(names("containers"), ["app", "other"]);
    // Every existing container, init containers included, can reach the proxy.
    for f in ["initContainers", "containers"] {
        for c in v["spec"][f].as_array().into_iter().flatten() {
            if c["name"] != "bedrock-broker" {
                assert!(env_of(c, "BEDROCK_BROKER_URL").is_some(), "{c}");
            }
        }
    }
}

#[test]
fn classic_mode_appends_a_container_and_leaves_init_containers_alone() {
    let mut p = opted_in(json!({"initContainers": [{"name": "init", "image": "x"}]}));
    p.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("bedrock-broker.io/sidecar-mode".into(), "classic".into());
    let v = mutated(&p, &inject(&p));
    let containers = v["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        containers.last().map(|c| c["name"].clone()),
        Some(json!("bedrock-broker"))
    );
    assert!(containers
        .last()
        .is_some_and(|c| c.get("restartPolicy").is_none()));
    assert!(env_of(&v["spec"]["initContainers"][0], "BEDROCK_BROKER_URL").is_none());
}

#[test]
fn a_classic_sidecar_serves_its_app_through_the_pods_grace_period() {
    // Both containers are told to stop at once; the sidecar keeps serving
    // while the app holds connections, within the pod's own grace.
    let delay = |spec: Value| {
        let mut p = opted_in(spec);
        p.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert("bedrock-broker.io/sidecar-mode".into(), "classic".into());
        let v = mutated(&p, &inject(&p));
        let sidecar = v["spec"]["containers"]
            .as_array()
            .and_then(|c| c.last())
            .cloned();
        env_of(
            &sidecar.unwrap_or_default(),
            "BEDROCK_BROKER_SHUTDOWN_DELAY",
        )
        .map(|e| e["value"].clone())
    };
    assert_eq!(delay(json!({})), Some(json!("30s")), "Kubernetes' default");
    assert_eq!(
        delay(json!({"terminationGracePeriodSeconds": 120})),
        Some(json!("120s"))
    );
    // Kubernetes takes any grace; the sidecar's durations stop at a year,
    // and a value it refuses would stop it at every start.
    let huge = delay(json!({"terminationGracePeriodSeconds": 40_000_000}));
    assert_eq!(huge, Some(json!("31536000s")));
    let env = bedrock_broker::config::Env::from_pairs([
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "A"),
        ("AWS_SECRET_ACCESS_KEY", "s"),
        ("BEDROCK_BROKER_SHUTDOWN_DELAY", "31536000s"),
    ]);
    let parsed = bedrock_broker::sidecar::SidecarConfig::from_args(&Default::default(), &env);
    assert!(parsed.is_ok(), "{:?}", parsed.err());
    // A native sidecar is stopped after the app: nothing to wait for.
    let p = opted_in(json!({}));
    let v = mutated(&p, &inject(&p));
    assert!(env_of(
        &v["spec"]["initContainers"][0],
        "BEDROCK_BROKER_SHUTDOWN_DELAY"
    )
    .is_none());
}

#[test]
fn a_native_sidecar_starts_after_a_service_mesh_proxy() {
    // Istio (CNI) and Linkerd capture the pod's traffic before any of its
    // containers runs: a sidecar placed ahead of their proxy could never
    // reach STS, and the pod would never start.
    let names = |v: &Value| {
        v["spec"]["initContainers"]
            .as_array()
            .map(|c| c.iter().map(|c| c["name"].clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let init = |names: &[&str]| {
        let containers: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "image": "x", "restartPolicy": "Always"}))
            .collect();
        opted_in(json!({ "initContainers": containers }))
    };
    for (before, after) in [
        (
            vec!["istio-validation", "istio-proxy", "migrate"],
            vec![
                "istio-validation",
                "istio-proxy",
                "bedrock-broker",
                "migrate",
            ],
        ),
        (
            vec!["linkerd-init", "linkerd-proxy"],
            vec!["linkerd-init", "linkerd-proxy", "bedrock-broker"],
        ),
        // Only at the head: a pod's own container named like a mesh's
        // further down does not move the sidecar after the pod's others.
        (
            vec!["migrate", "istio-proxy"],
            vec!["bedrock-broker", "migrate", "istio-proxy"],
        ),
        // Unless it is a mesh's own pair, its setup then its proxy: another
        // webhook (Vault's agent-init-first) put a container ahead of it,
        // and a sidecar first would find no network until the proxy runs,
        // which waits for the sidecar to start.
        (
            vec![
                "vault-agent-init",
                "istio-validation",
                "istio-proxy",
                "migrate",
            ],
            vec![
                "vault-agent-init",
                "istio-validation",
                "istio-proxy",
                "bedrock-broker",
                "migrate",
            ],
        ),
        // A mesh whose proxy is an ordinary container (below) starts it
        // after every init container: the sidecar stays first, and gets
        // its credentials before istio-init captures the traffic.
        (
            vec!["istio-init", "migrate"],
            vec!["bedrock-broker", "istio-init", "migrate"],
        ),
    ] {
        let mut p = init(&before);
        if before.contains(&"istio-init") {
            let spec = p.spec.as_mut().unwrap();
            for c in spec.init_containers.iter_mut().flatten() {
                c.restart_policy = None;
            }
            let mut proxy = spec.containers[0].clone();
            proxy.name = "istio-proxy".into();
            spec.containers.push(proxy);
        }
        let v = mutated(&p, &inject(&p));
        let want: Vec<Value> = after.iter().map(|n| json!(n)).collect();
        assert_eq!(names(&v), want, "{before:?}");
        // Containers that start after the sidecar get the app's
        // variables; the mesh's, which start before it, do not.
        let containers = v["spec"]["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let at = after
            .iter()
            .position(|n| *n == "bedrock-broker")
            .unwrap_or_default();
        for (i, c) in containers.iter().enumerate().filter(|(i, _)| *i != at) {
            let has_url = env_of(c, "BEDROCK_BROKER_URL").is_some();
            assert_eq!(has_url, i > at, "{} in {after:?}", c["name"]);
        }
    }
}

#[test]
fn explicit_env_is_never_overridden() {
    let p = opted_in(json!({"containers": [{
        "name": "app", "image": "x",
        "env": [{"name": "OPENAI_BASE_URL", "value": "https://mine"}],
    }]}));
    let v = mutated(&p, &inject(&p));
    let env = v["spec"]["containers"][0]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<_> = env.iter().map(|e| e["name"].clone()).collect();
    assert_eq!(
        names,
        [
            json!("OPENAI_BASE_URL"),
            json!("BEDROCK_BROKER_URL"),
            // No OPENAI_API_KEY placeholder: the OpenAI SDK points elsewhere.
            json!("AWS_ENDPOINT_URL_BEDROCK_RUNTIME"),
            json!("AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"),
            json!("AWS_BEDROCK_RUNTIME_ENDPOINT"),
            json!("ANTHROPIC_BEDROCK_BASE_URL")
        ]
    );
    assert_eq!(env[0]["value"], "https://mine");
}

#[test]
fn patch_pointers_are_escaped() {
    let p = opted_in(json!({}));
    let i = inject(&p);
    let first = match &i.patch.0[0] {
        PatchOperation::Add(a) => a.path.to_string(),
        other => panic!("{other:?}"),
    };
    assert_eq!(first, "/metadata/annotations/bedrock-broker.io~1injected");
}

/// A ServiceAccount's annotations.
fn service_account(annotations: &[(&str, &str)]) -> StringMap {
    annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// What the webhook knows of a pod whose ServiceAccount has `sa`.
fn with_service_account(sa: &StringMap) -> ClusterFacts<'_> {
    ClusterFacts {
        service_account_annotations: Some(sa),
        ..Default::default()
    }
}

#[test]
fn role_comes_from_the_service_account_when_the_pod_names_none() {
    let mut p = opted_in(json!({"serviceAccountName": "chat-app"}));
    p.metadata.annotations = None;
    let sa = service_account(&[("eks.amazonaws.com/role-arn", CHAT_APP_ROLE)]);
    let Ok(Outcome::Injected(i)) = webhook::inject(&p, &with_service_account(&sa), &defaults())
    else {
        panic!("not injected");
    };
    assert!(matches!(
        &i.auth,
        SidecarAuth::WebIdentity { role, source: RoleSource::ServiceAccount, .. } if role.as_str() == CHAT_APP_ROLE
    ));
    // The annotation map did not exist: it is created whole.
    let v = mutated(&p, &i);
    assert_eq!(
        v["metadata"]["annotations"],
        json!({"bedrock-broker.io/injected": env!("CARGO_PKG_VERSION")})
    );
}

#[test]
fn a_bad_service_account_role_is_named() {
    let mut p = opted_in(json!({"serviceAccountName": "chat-app"}));
    p.metadata.annotations = None;
    let sa = service_account(&[("eks.amazonaws.com/role-arn", "chat-role")]);
    let msg = denial(&p, &with_service_account(&sa));
    assert!(
        msg.contains("ServiceAccount \"chat-app\" annotation eks.amazonaws.com/role-arn"),
        "{msg}"
    );
}

#[test]
fn the_service_accounts_audience_is_the_tokens_as_eks_reads_it() {
    // The EKS Pod Identity Webhook projects the audience its
    // ServiceAccount names; a role trusting only that one refused ours.
    let mut p = opted_in(json!({"serviceAccountName": "chat-app"}));
    p.metadata.annotations = None;
    let sa = service_account(&[
        ("eks.amazonaws.com/role-arn", CHAT_APP_ROLE),
        ("eks.amazonaws.com/audience", "my-oidc-client"),
    ]);
    let facts = with_service_account(&sa);
    let Ok(Outcome::Injected(i)) = webhook::inject(&p, &facts, &defaults()) else {
        panic!("not injected");
    };
    let audience_of = |i: &webhook::Injection, p: &Pod| {
        let v = mutated(p, i);
        let volumes = v["spec"]["volumes"].as_array().cloned().unwrap_or_default();
        volumes
            .iter()
            .find(|v| v["name"] == "bedrock-broker-token")
            .map(|v| v["projected"]["sources"][0]["serviceAccountToken"]["audience"].clone())
    };
    assert_eq!(audience_of(&i, &p), Some(json!("my-oidc-client")));

    // The EKS webhook's volume, carrying that audience, is reused.
    let mut eks = opted_in(json!({
        "serviceAccountName": "chat-app",
        "volumes": [{"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "my-oidc-client", "expirationSeconds": 86400, "path": "token"}}]}}],
    }));
    eks.metadata.annotations = None;
    let Ok(Outcome::Injected(i)) = webhook::inject(&eks, &facts, &defaults()) else {
        panic!("not injected");
    };
    assert!(matches!(
        i.auth,
        SidecarAuth::WebIdentity {
            token: TokenVolume::ReusedEks { .. },
            ..
        }
    ));

    // The pod's own annotation still wins; a bad value is named.
    p.metadata.annotations = Some(
        [(
            "bedrock-broker.io/audience".to_owned(),
            "pod-audience".to_owned(),
        )]
        .into(),
    );
    let Ok(Outcome::Injected(i)) = webhook::inject(&p, &facts, &defaults()) else {
        panic!("not injected");
    };
    assert_eq!(audience_of(&i, &p), Some(json!("pod-audience")));
    p.metadata.annotations = None;
    let bad = service_account(&[
        ("eks.amazonaws.com/role-arn", CHAT_APP_ROLE),
        ("eks.amazonaws.com/audience", "two words"),
    ]);
    let msg = denial(&p, &with_service_account(&bad));
    assert!(
        msg.contains("ServiceAccount \"chat-app\" annotation eks.amazonaws.com/audience"),
        "{msg}"
    );
}

#[test]
fn eks_token_volume_is_reused_unless_the_pod_asks_for_another_token() {
    let spec = json!({
        "volumes": [{"name": "aws-iam-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}}]}}],
        "containers": [{"name": "app", "image": "x", "volumeMounts": [
            {"name": "aws-iam-token", "mountPath": "/eks/token-dir", "readOnly": true}]}],
    });
    let p = opted_in(spec.clone());
    let i = inject(&p);
    assert!(matches!(
        i.auth,
        SidecarAuth::WebIdentity {
            token: TokenVolume::ReusedEks { .. },
            ..
        }
    ));
    let v = mutated(&p, &i);
    assert_eq!(v["spec"]["volumes"].as_array().map(Vec::len), Some(1));
    let c = sidecar(&v);
    assert_eq!(c["volumeMounts"][0]["name"], "aws-iam-token");
    assert_eq!(
        env_of(&c, "AWS_WEB_IDENTITY_TOKEN_FILE").map(|e| e["value"].clone()),
        Some(json!("/eks/token-dir/token"))
    );

    let mut p = opted_in(spec);
    p.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert("bedrock-broker.io/audience".into(), "other-audience".into());
    let i = inject(&p);
    assert!(matches!(
        i.auth,
        SidecarAuth::WebIdentity {
            token: TokenVolume::Own(_),
            ..
        }
    ));
    assert_eq!(
        mutated(&p, &i)["spec"]["volumes"].as_array().map(Vec::len),
        Some(2)
    );
}

#[test]
fn role_from_eks_container_env_is_a_last_resort_under_role_policy_any() {
    // Under the default --role-policy service-account a container's
    // AWS_ROLE_ARN is never used (roles_are_limited_... below).
    let mut p = opted_in(json!({"containers": [{"name": "app", "image": "x", "env": [
        {"name": "AWS_ROLE_ARN", "value": ROLE}]}]}));
    p.metadata.annotations = None;
    let mut d = defaults();
    d.role_policy = webhook::RolePolicy::Any;
    let Ok(Outcome::Injected(i)) = webhook::inject(
        &p,
        &ClusterFacts {
            service_account_annotations: Some(&BTreeMap::new()),
            ..Default::default()
        },
        &d,
    ) else {
        panic!("not injected");
    };
    assert!(matches!(
        i.auth,
        SidecarAuth::WebIdentity {
            source: RoleSource::ContainerEnv,
            ..
        }
    ));
}

#[test]
fn bearer_mode_needs_no_role_and_no_token() {
    let mut p = opted_in(json!({}));
    p.metadata.annotations = Some(
        [(
            "bedrock-broker.io/api-key-secret".to_owned(),
            "bedrock-key/token".to_owned(),
        )]
        .into(),
    );
    let i = inject(&p);
    assert!(matches!(i.auth, SidecarAuth::ApiKey(_)));
    let v = mutated(&p, &i);
    assert!(v["spec"].get("volumes").is_none());
    let c = sidecar(&v);
    assert_eq!(
        env_of(&c, "AWS_BEARER_TOKEN_BEDROCK").map(|e| e["valueFrom"].clone()),
        Some(json!({"secretKeyRef": {"name": "bedrock-key", "key": "token", "optional": false}}))
    );
    assert!(env_of(&c, "AWS_ROLE_ARN").is_none());
    assert!(c.get("volumeMounts").is_none());
}

#[test]
fn opt_in_and_opt_out_rules() {
    let base = |labels: Value| {
        pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": labels, "annotations": {"bedrock-broker.io/role-arn": ROLE}},
            "spec": {"containers": [{"name": "app", "image": "x"}]}}))
    };
    let ns_in: StringMap = [("bedrock-broker.io/inject".to_owned(), "true".to_owned())].into();
    let ns_in = ClusterFacts {
        namespace_labels: Some(&ns_in),
        ..app_facts()
    };
    let d = defaults();
    let outcome = |p: &Pod, f: &ClusterFacts<'_>| match webhook::inject(p, f, &d) {
        Ok(Outcome::Skipped(s)) => Some(s),
        Ok(Outcome::Injected(_)) => None,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        outcome(&base(json!({})), &app_facts()),
        Some(Skip::NotOptedIn)
    );
    assert_eq!(outcome(&base(json!({})), &ns_in), None);
    assert_eq!(
        outcome(&base(json!({"bedrock-broker.io/inject": "false"})), &ns_in),
        Some(Skip::OptedOut)
    );
    assert_eq!(
        outcome(
            &base(json!({"bedrock-broker.io/inject": "true"})),
            &app_facts()
        ),
        None
    );
    let msg = denial(&base(json!({"bedrock-broker.io/inject": "True"})), &ns_in);
    assert!(
        msg.contains("accepted values: \"true\" or \"false\""),
        "{msg}"
    );

    // A mirror pod (a static pod's copy): never injected, and told so only
    // when it is opted in; the opt-in rules apply to it as to any pod.
    let mirror = |labels: Value| {
        let mut p = base(labels);
        p.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert("kubernetes.io/config.mirror".into(), "3f1c2d".into());
        p
    };
    assert_eq!(outcome(&mirror(json!({})), &ns_in), Some(Skip::MirrorPod));
    assert_eq!(
        outcome(&mirror(json!({})), &app_facts()),
        Some(Skip::NotOptedIn)
    );
    assert_eq!(
        outcome(
            &mirror(json!({"bedrock-broker.io/inject": "false"})),
            &ns_in
        ),
        Some(Skip::OptedOut)
    );
    let msg = denial(&mirror(json!({"bedrock-broker.io/inject": "yes"})), &ns_in);
    assert!(msg.contains("accepted values"), "{msg}");
}

#[test]
fn needs_asks_only_for_what_decides() {
    use webhook::RolePolicy::{Any, ServiceAccount};
    // A pod naming its role needs no ServiceAccount read under `any`;
    // under `service-account` (the default) its role must be the
    // ServiceAccount's, so the read is needed.
    // An opted-in pod always needs its namespace's LimitRanges.
    let only_limits = webhook::Needs {
        limit_ranges: true,
        ..Default::default()
    };
    let p = opted_in(json!({}));
    assert_eq!(webhook::needs(&p, Any), only_limits);
    assert_eq!(
        webhook::needs(&p, ServiceAccount)
            .service_account
            .as_deref(),
        Some("default")
    );
    let mut p = opted_in(json!({"serviceAccountName": "chat-app"}));
    p.metadata.annotations = Some(
        [(
            "bedrock-broker.io/api-key-secret".to_owned(),
            "k/token".to_owned(),
        )]
        .into(),
    );
    for policy in [Any, ServiceAccount] {
        assert_eq!(webhook::needs(&p, policy), only_limits);
    }
    p.metadata.annotations = None;
    p.metadata.labels = None;
    let n = webhook::needs(&p, Any);
    assert!(n.namespace_labels);
    assert_eq!(n.service_account.as_deref(), Some("chat-app"));
    // Reinvoked after injecting: the marker and the sidecar, nothing to read.
    p.metadata.annotations =
        Some([("bedrock-broker.io/injected".to_owned(), "0.1.0".to_owned())].into());
    p.spec.as_mut().unwrap().init_containers = Some(vec![Container {
        name: "bedrock-broker".to_owned(),
        ..Default::default()
    }]);
    assert_eq!(
        webhook::needs(&p, ServiceAccount),
        webhook::Needs::default()
    );
}

#[test]
fn a_marker_copied_without_its_sidecar_is_injected_with_a_warning() {
    // A manifest exported from an injected pod, its containers cut back to
    // the app's, kept `bedrock-broker.io/injected`: the pod was admitted
    // "already injected", and ran without a sidecar, unsaid.
    let mut p = opted_in(json!({"serviceAccountName": "chat-app"}));
    p.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert("bedrock-broker.io/injected".to_owned(), "0.1.0".to_owned());
    let Outcome::Injected(injection) = webhook::inject(&p, &app_facts(), &defaults()).unwrap()
    else {
        panic!("not injected");
    };
    assert!(
        injection
            .warnings
            .iter()
            .any(|w| w.contains("bedrock-broker.io/injected")
                && w.contains("no bedrock-broker container")),
        "{:?}",
        injection.warnings
    );
    let patched = mutated(&p, &injection);
    assert_eq!(
        patched["metadata"]["annotations"]["bedrock-broker.io/injected"],
        env!("CARGO_PKG_VERSION")
    );
    assert!(patched["spec"]["initContainers"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["name"] == "bedrock-broker")));
}

#[test]
fn pods_that_cannot_be_injected_safely_are_refused() {
    let msg = denial(&opted_in(json!({"hostNetwork": true})), &app_facts());
    assert!(msg.contains("hostNetwork"), "{msg}");
    let msg = denial(&opted_in(json!({"os": {"name": "windows"}})), &app_facts());
    assert!(msg.contains("Linux only"), "{msg}");
    for key in ["kubernetes.io/os", "beta.kubernetes.io/os"] {
        let msg = denial(
            &opted_in(json!({"nodeSelector": {key: "windows"}})),
            &app_facts(),
        );
        assert!(msg.contains(&format!("{key}: windows")), "{msg}");
        assert!(msg.contains("Linux only"), "{msg}");
    }
    let linux = opted_in(json!({"nodeSelector": {"kubernetes.io/os": "linux"}}));
    assert!(webhook::inject(&linux, &app_facts(), &defaults()).is_ok());
    // Required node affinity sends a pod to Windows as surely as a
    // nodeSelector does, when every term (they are alternatives) asks for it.
    let affinity = |terms: Value| {
        opted_in(json!({"affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}))
    };
    let os = |key: &str, values: Value| json!({"matchExpressions": [{"key": key, "operator": "In", "values": values}]});
    for key in ["kubernetes.io/os", "beta.kubernetes.io/os"] {
        let msg = denial(
            &affinity(json!([os(key, json!(["windows"]))])),
            &app_facts(),
        );
        assert!(
            msg.contains(&format!("requires {key} In [windows]")),
            "{msg}"
        );
        assert!(msg.contains("Linux only"), "{msg}");
    }
    for may_run_on_linux in [
        json!([os("kubernetes.io/os", json!(["windows", "linux"]))]),
        json!([
            os("kubernetes.io/os", json!(["windows"])),
            os("kubernetes.io/arch", json!(["amd64"]))
        ]),
        json!([os("kubernetes.io/os", json!(["linux"]))]),
    ] {
        let p = affinity(may_run_on_linux.clone());
        assert!(
            matches!(
                webhook::inject(&p, &app_facts(), &defaults()),
                Ok(Outcome::Injected(_))
            ),
            "{may_run_on_linux}"
        );
    }
    let mut p = opted_in(json!({}));
    p.spec = None;
    assert!(denial(&p, &app_facts()).contains("no spec"));
}

#[test]
fn ports_collide_only_over_tcp() {
    let with_port = |protocol: Option<&str>| {
        let mut port = json!({"containerPort": 9787});
        if let Some(p) = protocol {
            port["protocol"] = json!(p);
        }
        opted_in(json!({"containers": [{"name": "app", "image": "app:1", "ports": [port]}]}))
    };
    for tcp in [None, Some("TCP")] {
        let msg = denial(&with_port(tcp), &app_facts());
        assert!(
            msg.contains("port 9787 is already used by container \"app\""),
            "{msg}"
        );
    }
    // A statsd exporter on UDP 9787 leaves the proxy's TCP port free.
    for other in ["UDP", "SCTP"] {
        let p = with_port(Some(other));
        assert!(
            matches!(
                webhook::inject(&p, &app_facts(), &defaults()),
                Ok(Outcome::Injected(_))
            ),
            "{other}"
        );
    }
}

#[test]
fn the_pod_is_told_what_it_may_not_expect() {
    // The API server may cut warnings past 256 characters.
    let warned = |p: &Pod, about: &str| {
        let warnings = inject(p).warnings;
        assert!(warnings.iter().all(|w| w.len() <= 256), "{warnings:?}");
        warnings.iter().any(|w| w.contains(about))
    };
    let annotated = |spec: Value, annotations: &[(&str, &str)]| {
        let mut p = opted_in(spec);
        let map = p.metadata.annotations.get_or_insert_with(BTreeMap::new);
        for (k, v) in annotations {
            map.insert((*k).to_owned(), (*v).to_owned());
        }
        p
    };
    // A Guaranteed pod turned Burstable by the sidecar (no CPU limit by
    // default): exclusive CPUs lost, evicted sooner, without a word.
    let guaranteed = json!({"containers": [{"name": "app", "image": "app:1", "resources": {
        "requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2000m", "memory": "4Gi"}}}]});
    assert!(warned(
        &annotated(guaranteed.clone(), &[]),
        "makes this Guaranteed pod Burstable"
    ));
    let kept = annotated(
        guaranteed,
        &[
            ("bedrock-broker.io/cpu-request", "100m"),
            ("bedrock-broker.io/cpu-limit", "0.1"),
            ("bedrock-broker.io/memory-request", "128Mi"),
            ("bedrock-broker.io/memory-limit", "128Mi"),
        ],
    );
    assert!(
        inject(&kept).warnings.is_empty(),
        "{:?}",
        inject(&kept).warnings
    );
    // Pod-level resources decide the class themselves: requests and limits
    // raised by the sidecar's unequal shares part them.
    let pod_level = |resources: Value| json!({"resources": resources, "containers": [{"name": "app", "image": "app:1"}]});
    let equal =
        json!({"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}});
    assert!(warned(
        &annotated(pod_level(equal), &[]),
        "makes this Guaranteed pod Burstable"
    ));
    // Only limits: the requests follow them (defaulting), raised or not.
    let limits_only = json!({"limits": {"cpu": "2", "memory": "4Gi"}});
    assert!(!warned(
        &annotated(pod_level(limits_only), &[]),
        "Guaranteed"
    ));
    let burstable = json!({"containers": [{"name": "app", "image": "app:1", "resources": {
        "requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}}]});
    assert!(!warned(&annotated(burstable, &[]), "Guaranteed"));

    // envFrom loses to explicit env: the injected client variables win.
    let env_from = json!({"containers": [{"name": "app", "image": "app:1",
        "envFrom": [{"secretRef": {"name": "openai-creds"}}]}]});
    let p = annotated(env_from.clone(), &[]);
    assert!(warned(&p, "container \"app\": injected OPENAI_BASE_URL, OPENAI_API_KEY, AWS_ENDPOINT_URL_BEDROCK_RUNTIME, AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME, AWS_BEDROCK_RUNTIME_ENDPOINT and 1 more win over envFrom"));
    // The longest container name still leaves a warning the API server
    // passes on whole (`warned` checks the length), naming fewer.
    let long_name = "a".repeat(63);
    let p = annotated(
        json!({"containers": [{"name": long_name, "image": "app:1",
            "envFrom": [{"secretRef": {"name": "openai-creds"}}]}]}),
        &[],
    );
    assert!(warned(&p, "more win over envFrom"));
    let p = annotated(env_from, &[("bedrock-broker.io/client-env", "false")]);
    assert!(!warned(&p, "envFrom"), "{:?}", inject(&p).warnings);
    // Init containers after the sidecar get the variables too; a mesh's
    // ahead of it do not.
    let init = json!({"initContainers": [
        {"name": "istio-proxy", "image": "x", "restartPolicy": "Always", "envFrom": [{"configMapRef": {"name": "m"}}]},
        {"name": "migrate", "image": "x", "envFrom": [{"configMapRef": {"name": "m"}}]},
    ]});
    let p = annotated(init, &[]);
    assert!(warned(&p, "container \"migrate\": injected"));
    assert!(!warned(&p, "container \"istio-proxy\""));

    // A Bedrock client pointed elsewhere keeps it, and bypasses the sidecar.
    let own = |url: &str| {
        annotated(
            json!({"containers": [{"name": "app", "image": "app:1",
            "env": [{"name": "AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "value": url}]}]}),
            &[],
        )
    };
    assert!(warned(
        &own("https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com"),
        "sets AWS_ENDPOINT_URL_BEDROCK_RUNTIME to another endpoint"
    ));
    for ours in [
        "http://127.0.0.1:9787",
        "http://localhost:9787/",
        "http://[::1]:9787",
    ] {
        assert!(inject(&own(ours)).warnings.is_empty(), "{ours}");
    }
    // The Agents runtime is served under /agent-runtime: at the sidecar's
    // root its calls reach the Bedrock runtime, which knows none of them.
    let agents = |url: &str| {
        annotated(
            json!({"containers": [{"name": "app", "image": "app:1",
            "env": [{"name": "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME", "value": url}]}]}),
            &[],
        )
    };
    assert!(warned(
        &agents("http://127.0.0.1:9787"),
        "sets AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME to the sidecar without /agent-runtime"
    ));
    assert!(warned(
        &agents("http://localhost:9787/agent-runtimex"),
        "without /agent-runtime"
    ));
    for fine in [
        "http://127.0.0.1:9787/agent-runtime",
        "http://127.0.0.1:9787/agent-runtime/",
    ] {
        assert!(inject(&agents(fine)).warnings.is_empty(), "{fine}");
    }
    // An HTTP proxy for the app's clients would take its calls to the
    // sidecar, unless NO_PROXY exempts the sidecar's address.
    let proxied = |env: Value| {
        annotated(
            json!({"containers": [{"name": "app", "image": "app:1", "env": env}]}),
            &[],
        )
    };
    let http_proxy = json!({"name": "http_proxy", "value": "http://egress.corp:3128"});
    assert!(warned(
        &proxied(json!([http_proxy])),
        "container \"app\" sets http_proxy and its NO_PROXY does not name 127.0.0.1"
    ));
    // What exempts 127.0.0.1 for botocore, httpx and requests alike
    // (each checked with them): the address as an entry, or `*` alone.
    for (no_proxy, warns) in [
        (".svc,localhost", true),
        ("127.0.0.2", true),
        ("127.0.0.0/8", true),
        ("127.0.0.1:9787", true),
        ("localhost,*", true),
        (".svc, 127.0.0.1", false),
        (" * ", false),
    ] {
        let p = proxied(json!([http_proxy, {"name": "NO_PROXY", "value": no_proxy}]));
        assert_eq!(warned(&p, "NO_PROXY does not name"), warns, "{no_proxy}");
    }
    // Lower case wins, as in Python.
    let both = json!([http_proxy, {"name": "NO_PROXY", "value": "127.0.0.1"},
        {"name": "no_proxy", "value": ".svc"}]);
    assert!(warned(&proxied(both), "NO_PROXY does not name"));
    // A NO_PROXY this review cannot read: nothing said.
    let from_secret = json!([http_proxy, {"name": "NO_PROXY",
        "valueFrom": {"configMapKeyRef": {"name": "proxy", "key": "no"}}}]);
    assert!(!warned(&proxied(from_secret), "NO_PROXY"));
    let maybe_in_env_from = annotated(
        json!({"containers": [{"name": "app", "image": "app:1",
        "env": [http_proxy], "envFrom": [{"configMapRef": {"name": "proxy"}}]}]}),
        &[],
    );
    assert!(!warned(&maybe_in_env_from, "NO_PROXY"));
    let all_proxy = json!([{"name": "ALL_PROXY", "value": "http://egress.corp:3128"}]);
    assert!(warned(&proxied(all_proxy), "sets ALL_PROXY and its NO_PROXY does not name 127.0.0.1: clients that honour it (requests, httpx and the OpenAI SDK do)"));
    // An API key of the app's own: botocore reads it and refuses to send
    // a bearer token to the sidecar's http:// endpoint.
    for key in [
        json!({"name": "AWS_BEARER_TOKEN_BEDROCK", "value": "ABSKexample"}),
        json!({"name": "AWS_BEARER_TOKEN_BEDROCK",
            "valueFrom": {"secretKeyRef": {"name": "bedrock", "key": "api-key"}}}),
    ] {
        assert!(
            warned(
                &proxied(json!([key])),
                "container \"app\" sets AWS_BEARER_TOKEN_BEDROCK: botocore"
            ),
            "{key}"
        );
    }
    // An availability zone given as the region: taken, and said.
    assert!(warned(
        &annotated(json!({}), &[("bedrock-broker.io/region", "us-east-1a")]),
        "region \"us-east-1a\" is not shaped like an AWS region"
    ));
    assert!(!warned(
        &annotated(json!({}), &[("bedrock-broker.io/region", "us-gov-west-1")]),
        "not shaped like"
    ));
    // In bearer mode the sidecar already has the pod's key.
    let mut bearer = annotated(
        json!({"containers": [{"name": "app", "image": "app:1",
            "env": [{"name": "AWS_BEARER_TOKEN_BEDROCK", "value": "ABSKexample"}]}]}),
        &[("bedrock-broker.io/api-key-secret", "bedrock/api-key")],
    );
    if let Some(a) = bearer.metadata.annotations.as_mut() {
        a.remove("bedrock-broker.io/role-arn");
    }
    assert!(warned(
        &bearer,
        "refuses the sidecar's http:// endpoint; remove it: the sidecar adds the pod's key"
    ));
    // HTTPS_PROXY does not apply to the sidecar's http:// URL.
    let https_only = json!([{"name": "HTTPS_PROXY", "value": "http://egress.corp:3128"}]);
    assert!(inject(&proxied(https_only)).warnings.is_empty());
    assert!(opted_in(json!({})).spec.is_some() && inject(&opted_in(json!({}))).warnings.is_empty());
}

#[test]
fn a_region_is_required() {
    let p = opted_in(json!({}));
    let mut d = defaults();
    d.region = None;
    let msg = match webhook::inject(&p, &app_facts(), &d) {
        Err(e) => e.to_string(),
        other => panic!("{other:?}"),
    };
    assert!(
        msg.contains("no AWS region: set the pod annotation bedrock-broker.io/region"),
        "{msg}"
    );
}

/// A cluster whose namespaces and ServiceAccounts cannot be read (and,
/// with `limit_ranges_too`, its LimitRanges).
#[derive(Default)]
struct Unreachable {
    limit_ranges_too: bool,
}

impl ClusterLookup for Unreachable {
    async fn service_account_annotations(
        &self,
        _: &str,
        _: &str,
    ) -> Result<Option<StringMap>, LookupError> {
        Err(LookupError::Api("forbidden".into()))
    }
    async fn namespace_labels(&self, _: &str) -> Result<Option<StringMap>, LookupError> {
        Err(LookupError::Timeout(std::time::Duration::from_secs(3)))
    }
    async fn limit_ranges(
        &self,
        _: &str,
    ) -> Result<Vec<k8s_openapi::api::core::v1::LimitRange>, LookupError> {
        if self.limit_ranges_too {
            return Err(LookupError::Api("forbidden".into()));
        }
        Ok(Vec::new())
    }
}

fn review_of(object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "7d5f1c1e-2b7a-4d8e-9f3a-0c1b2d3e4f5a",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default", "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": object,
        }
    }))
    .expect("serializes")
}

#[tokio::test]
async fn unreadable_cluster_follows_the_lookup_error_policy() {
    // Opted in by label, role from the ServiceAccount: the SA read fails.
    let body = review_of(
        json!({"metadata": {"name": "p", "labels": {"bedrock-broker.io/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "x"}]}}),
    );
    let mut st = state(Unreachable::default());
    let (status, r) = review(&st, &body).await;
    let r = serde_json::to_value(r).expect("json");
    assert_eq!(status, 200);
    assert_eq!(r["response"]["allowed"], false);
    let msg = r["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        msg.contains("cannot read ServiceAccount default/default"),
        "{msg}"
    );

    st.on_lookup_error = LookupErrorPolicy::Skip;
    let (_, r) = review(&st, &body).await;
    let r = serde_json::to_value(r).expect("json");
    assert_eq!(r["response"]["allowed"], true);
    assert!(patch_of(&r["response"]).is_none());
    assert!(r["response"]["warnings"][0]
        .as_str()
        .is_some_and(|w| w.contains("admitted without")));

    // A pod whose own annotations settle everything needs no lookup at
    // all: an API key always; its own role only under --role-policy any
    // (by default the role must be checked against the ServiceAccount's).
    let with = |annotations: Value| {
        review_of(json!({"metadata": {"name": "p",
            "labels": {"bedrock-broker.io/inject": "true"}, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "x"}]}}))
    };
    let api_key = with(json!({"bedrock-broker.io/api-key-secret": "k/token"}));
    let own_role = with(json!({"bedrock-broker.io/role-arn": ROLE}));
    st.on_lookup_error = LookupErrorPolicy::Deny;
    for (body, policy, allowed) in [
        (&api_key, webhook::RolePolicy::ServiceAccount, true),
        (&own_role, webhook::RolePolicy::Any, true),
        (&own_role, webhook::RolePolicy::ServiceAccount, false),
    ] {
        st.defaults.role_policy = policy;
        let (_, r) = review(&st, body).await;
        let r = serde_json::to_value(r).expect("json");
        assert_eq!(r["response"]["allowed"], allowed, "{policy:?}: {r}");
        assert_eq!(patch_of(&r["response"]).is_some(), allowed);
    }

    // The LimitRanges the sidecar must fit follow the same policy.
    let mut st = state(Unreachable {
        limit_ranges_too: true,
    });
    let (_, r) = review(&st, &api_key).await;
    let r = serde_json::to_value(r).expect("json");
    assert_eq!(r["response"]["allowed"], false);
    assert!(r["response"]["status"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("cannot read the LimitRanges of namespace \"default\"")));
    st.on_lookup_error = LookupErrorPolicy::Skip;
    let (_, r) = review(&st, &api_key).await;
    let r = serde_json::to_value(r).expect("json");
    assert_eq!(r["response"]["allowed"], true);
    assert!(patch_of(&r["response"]).is_none());
}

#[tokio::test]
async fn unparseable_reviews_answer_invalid() {
    let st = state(cluster());
    let (status, r) = review(&st, b"not json").await;
    let r = serde_json::to_value(r).expect("json");
    assert_eq!(status, 400);
    assert_eq!(r["response"]["allowed"], false);
    assert_eq!(r["response"]["uid"], "");

    // The uid is echoed whenever it can be read.
    let body = serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "abc", "kind": "nonsense"}}),
    )
    .expect("json");
    let (status, r) = review(&st, &body).await;
    let r = serde_json::to_value(r).expect("json");
    assert_eq!(status, 200);
    assert_eq!(r["response"]["uid"], "abc");
    assert_eq!(r["response"]["allowed"], false);
    assert_eq!(r["response"]["status"]["reason"], "InvalidRequest");

    // A pod object that is not a pod.
    let body = review_of(json!({"spec": {"containers": "many"}}));
    let (_, r) = review(&st, &body).await;
    let r = serde_json::to_value(r).expect("json");
    assert_eq!(r["response"]["allowed"], false);
    assert!(r["response"]["status"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("not a valid Pod")));
}

#[tokio::test]
async fn other_kinds_and_operations_pass_unchanged() {
    let st = state(cluster());
    let mut body: Value = serde_json::from_slice(&review_of(json!({
        "metadata": {"name": "p", "labels": {"bedrock-broker.io/inject": "true"}, "annotations": {"bedrock-broker.io/role-arn": ROLE}},
        "spec": {"containers": [{"name": "app", "image": "x"}]}})))
    .expect("json");
    body["request"]["operation"] = json!("UPDATE");
    let (_, r) = review(&st, &serde_json::to_vec(&body).expect("json")).await;
    let r = serde_json::to_value(r).expect("json");
    assert_eq!(r["response"]["allowed"], true);
    assert!(patch_of(&r["response"]).is_none());

    body["request"]["operation"] = json!("CREATE");
    body["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let (_, r) = review(&st, &serde_json::to_vec(&body).expect("json")).await;
    let r = serde_json::to_value(r).expect("json");
    assert_eq!(r["response"]["allowed"], true);
    assert!(patch_of(&r["response"]).is_none());
    let text = st.metrics.render();
    assert!(
        text.contains("bedrock_broker_webhook_admissions_total{result=\"skipped\"} 2"),
        "{text}"
    );
}

#[test]
fn a_proxy_token_secret_reaches_the_sidecar_and_the_apps() {
    let mut p = opted_in(json!({"containers": [
        {"name": "app", "image": "x"},
        {"name": "own-key", "image": "x",
         "env": [{"name": "OPENAI_API_KEY", "value": "sk-mine"}]},
    ]}));
    p.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "bedrock-broker.io/proxy-token-secret".to_owned(),
            "chat-proxy-token/token".to_owned(),
        );
    let v = mutated(&p, &inject(&p));
    let from_secret = json!({"secretKeyRef": {
        "name": "chat-proxy-token", "key": "token", "optional": false}});
    // The sidecar requires it...
    let sc = sidecar(&v);
    assert_eq!(
        env_of(&sc, "BEDROCK_BROKER_PROXY_TOKEN").expect("sidecar token")["valueFrom"],
        from_secret
    );
    // ...and every app container carries it, the OpenAI SDK's key too (it
    // sends it as `Authorization: Bearer`, where the proxy looks).
    let app = &v["spec"]["containers"][0];
    for name in ["BEDROCK_BROKER_PROXY_TOKEN", "OPENAI_API_KEY"] {
        let var = env_of(app, name).unwrap_or_else(|| panic!("{name} in the app"));
        assert_eq!(var["valueFrom"], from_secret, "{name}");
        assert!(var.get("value").is_none(), "{name}: never a literal");
    }
    // A container with its own key keeps it.
    let own = &v["spec"]["containers"][1];
    assert_eq!(
        env_of(own, "OPENAI_API_KEY").expect("own key")["value"],
        "sk-mine"
    );
    assert!(env_of(own, "BEDROCK_BROKER_PROXY_TOKEN").is_some());
}

#[test]
fn a_proxy_token_secret_must_name_a_secret_and_key() {
    let mut p = opted_in(json!({"containers": [{"name": "app", "image": "x"}]}));
    p.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "bedrock-broker.io/proxy-token-secret".to_owned(),
            "just-a-token-value".to_owned(),
        );
    let msg = denial(&p, &app_facts());
    assert!(
        msg.contains("bedrock-broker.io/proxy-token-secret"),
        "{msg}"
    );
    // What was given is likely the token itself: not echoed.
    assert!(!msg.contains("just-a-token-value"), "{msg}");
}

#[test]
fn a_service_account_not_read_is_not_said_to_have_no_role() {
    // Under --role-policy any the webhook reads no ServiceAccount for a
    // pod naming its role: what that ServiceAccount carries is unknown.
    let p = opted_in(json!({}));
    let mut d = defaults();
    d.role_policy = webhook::RolePolicy::Any;
    let Ok(Outcome::Injected(i)) = webhook::inject(&p, &ClusterFacts::default(), &d) else {
        panic!("not injected");
    };
    assert!(
        i.warnings.iter().all(|w| !w.contains("(none)")),
        "{:?}",
        i.warnings
    );
    // The pod still chose its role, and is told so.
    assert!(
        i.warnings
            .iter()
            .any(|w| w.contains("whatever role its ServiceAccount carries (not read)")),
        "{:?}",
        i.warnings
    );
    // Read, and carrying no role: that is said.
    let read = BTreeMap::new();
    let facts = ClusterFacts {
        service_account_annotations: Some(&read),
        ..Default::default()
    };
    let Ok(Outcome::Injected(i)) = webhook::inject(&p, &facts, &d) else {
        panic!("not injected");
    };
    assert!(
        i.warnings
            .iter()
            .any(|w| w.contains("not its ServiceAccount's role (none)")),
        "{:?}",
        i.warnings
    );
}
