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
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use webhook_support::{cluster, defaults, patch_of, state, CHAT_APP_ROLE};

const ROLE: &str = "arn:aws:iam::123456789012:role/app";

/// The ServiceAccount of the `opted_in` pods: it carries their role, as
/// the default `--role-policy service-account` requires.
static APP_SA: std::sync::LazyLock<StringMap> = std::sync::LazyLock::new(|| {
    [("eks.amazonaws.com/role-arn".to_owned(), ROLE.to_owned())].into()
});

fn app_facts() -> ClusterFacts<'static> {
    ClusterFacts {
        service_account_annotations: Some(&APP_SA),
        ..Default::default()
    }
}

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).expect("a pod")
}

/// An opted-in pod naming its role, with `spec` merged in.
fn opted_in(spec: Value) -> Pod {
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

fn inject(p: &Pod) -> Box<webhook::Injection> {
    match webhook::inject(p, &app_facts(), &defaults()) {
        Ok(Outcome::Injected(i)) => i,
        other => panic!("expected an injection, got {other:?}"),
    }
}

fn denial(p: &Pod, facts: &ClusterFacts<'_>) -> String {
    match webhook::inject(p, facts, &defaults()) {
        Err(d) => d.to_string(),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn mutated(p: &Pod, i: &webhook::Injection) -> Value {
    let original = serde_json::to_value(p).expect("serializes");
    webhook::apply(&original, &i.patch).expect("patch applies")
}

fn sidecar(v: &Value) -> Value {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|f| v["spec"][f].as_array())
        .flatten()
        .find(|c| c["name"] == "bedrock-broker")
        .cloned()
        .expect("sidecar present")
}

fn env_of(c: &Value, name: &str) -> Option<Value> {
    c["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
}

#[test]
fn token_is_readable_through_fs_group() {
    let p = opted_in(json!({"securityContext": {"runAsUser": 1000, "fsGroup": 2000}}));
    let i = inject(&p);
    assert_eq!(i.token_access, TokenAccess::FsGroup(2000));
    assert_eq!(
        sidecar(&mutated(&p, &i))["securityContext"]["runAsUser"],
        65532
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
            json!("AWS_ENDPOINT_URL_BEDROCK_RUNTIME")
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

#[test]
fn role_comes_from_the_service_account_when_the_pod_names_none() {
    let mut p = opted_in(json!({"serviceAccountName": "chat-app"}));
    p.metadata.annotations = None;
    let sa: StringMap = [(
        "eks.amazonaws.com/role-arn".to_owned(),
        CHAT_APP_ROLE.to_owned(),
    )]
    .into();
    let facts = ClusterFacts {
        service_account_annotations: Some(&sa),
        ..Default::default()
    };
    let Ok(Outcome::Injected(i)) = webhook::inject(&p, &facts, &defaults()) else {
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
    let sa: StringMap = [(
        "eks.amazonaws.com/role-arn".to_owned(),
        "chat-role".to_owned(),
    )]
    .into();
    let msg = denial(
        &p,
        &ClusterFacts {
            service_account_annotations: Some(&sa),
            ..Default::default()
        },
    );
    assert!(
        msg.contains("ServiceAccount \"chat-app\" annotation eks.amazonaws.com/role-arn"),
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
    p.metadata.annotations =
        Some([("bedrock-broker.io/injected".to_owned(), "0.1.0".to_owned())].into());
    assert_eq!(
        webhook::needs(&p, ServiceAccount),
        webhook::Needs::default()
    );
}

#[test]
fn pods_that_cannot_be_injected_safely_are_refused() {
    let msg = denial(&opted_in(json!({"hostNetwork": true})), &app_facts());
    assert!(msg.contains("hostNetwork"), "{msg}");
    let msg = denial(&opted_in(json!({"os": {"name": "windows"}})), &app_facts());
    assert!(msg.contains("Linux only"), "{msg}");
    let mut p = opted_in(json!({}));
    p.spec = None;
    assert!(denial(&p, &app_facts()).contains("no spec"));
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
fn pod_level_resources_grow_by_the_sidecars_share_only_where_set() {
    // Only a memory limit at pod level, and a sidecar without a memory
    // limit: the pod's limit grows by the sidecar's request, so the pod's
    // (defaulted) requests stay within it; nothing else is added.
    let p = opted_in(json!({"resources": {"limits": {"memory": "1Gi"}}}));
    let mut d = defaults();
    d.resources.memory_limit = None;
    let i = match webhook::inject(&p, &app_facts(), &d) {
        Ok(Outcome::Injected(i)) => i,
        other => panic!("{other:?}"),
    };
    let v = mutated(&p, &i);
    assert_eq!(
        v["spec"]["resources"],
        json!({"limits": {"memory": "1056Mi"}})
    );
    assert!(
        i.warnings[0].contains("limits.memory 1Gi -> 1056Mi"),
        "{:?}",
        i.warnings
    );
    // A pod without pod-level resources is not given any, and no warning.
    let i = inject(&opted_in(json!({})));
    assert!(i.warnings.is_empty(), "{:?}", i.warnings);
    assert!(!i
        .patch
        .iter()
        .any(|op| op.path().to_string().contains("resources")));
}

#[test]
fn the_opt_in_written_as_an_annotation_is_named() {
    let annotated = |value: &str, labels: Value| {
        pod(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": labels,
                "annotations": {"bedrock-broker.io/inject": value, "bedrock-broker.io/role-arn": ROLE}},
            "spec": {"containers": [{"name": "app", "image": "x"}]}}))
    };
    let d = defaults();
    // Not opted in otherwise: admitted unchanged, saying why.
    match webhook::inject(&annotated("true", json!({})), &app_facts(), &d) {
        Ok(Outcome::Skipped(skip)) => {
            assert_eq!(skip, Skip::OptInAnnotation);
            let w = skip.warning().expect("a warning");
            assert!(
                w.contains("is an annotation") && w.contains("metadata.labels"),
                "{w}"
            );
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
fn a_namespace_label_other_than_true_is_named() {
    let p = pod(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "app", "image": "x"}]}}),
    );
    let labels: StringMap = [("bedrock-broker.io/inject".to_owned(), "True".to_owned())].into();
    let facts = ClusterFacts {
        namespace_labels: Some(&labels),
        ..Default::default()
    };
    match webhook::inject(&p, &facts, &defaults()) {
        Ok(Outcome::Skipped(skip)) => {
            let w = skip.warning().expect("a warning");
            assert!(w.contains("\"True\"") && w.contains("only \"true\""), "{w}");
        }
        other => panic!("{other:?}"),
    }
}

/// The literal variables of the injected sidecar, as the sidecar reads them.
fn sidecar_env(v: &Value) -> bedrock_broker::config::Env {
    let c = sidecar(v);
    bedrock_broker::config::Env::from_pairs(
        c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?))),
    )
}

#[test]
fn the_body_budget_follows_the_memory_limit() {
    let with_limit = |limit: Option<&str>| {
        let mut d = defaults();
        d.resources.memory_limit = limit.map(|l| webhook::types::Quantity::parse(l).expect("q"));
        d.resources.memory_request = None;
        let p = opted_in(json!({}));
        let i = match webhook::inject(&p, &app_facts(), &d) {
            Ok(Outcome::Injected(i)) => i,
            other => panic!("{other:?}"),
        };
        (mutated(&p, &i), i.warnings.clone())
    };
    // Half the limit: the default 128Mi gives the sidecar's default 64 MiB.
    let (v, warnings) = with_limit(Some("128Mi"));
    let c = sidecar(&v);
    assert_eq!(
        env_of(&c, "BEDROCK_BROKER_REQUEST_BODY_BUDGET"),
        Some(json!({"name": "BEDROCK_BROKER_REQUEST_BODY_BUDGET", "value": "67108864"}))
    );
    assert_eq!(env_of(&c, "BEDROCK_BROKER_MAX_BODY_BYTES"), None);
    assert!(warnings.is_empty(), "{warnings:?}");
    let (v, _) = with_limit(Some("1Gi"));
    assert_eq!(
        env_of(&sidecar(&v), "BEDROCK_BROKER_REQUEST_BODY_BUDGET").map(|e| e["value"].clone()),
        Some(json!("536870912"))
    );
    // No limit, no variable: the sidecar's own default applies.
    let (v, _) = with_limit(None);
    assert_eq!(
        env_of(&sidecar(&v), "BEDROCK_BROKER_REQUEST_BODY_BUDGET"),
        None
    );
    // A limit whose half cannot hold one 25 MiB body: the largest body
    // shrinks with it (the sidecar refuses a budget below one body), and
    // the pod is told.
    let (v, warnings) = with_limit(Some("40Mi"));
    let c = sidecar(&v);
    for var in [
        "BEDROCK_BROKER_REQUEST_BODY_BUDGET",
        "BEDROCK_BROKER_MAX_BODY_BYTES",
    ] {
        assert_eq!(
            env_of(&c, var).map(|e| e["value"].clone()),
            Some(json!("20971520")),
            "{var}"
        );
    }
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("request bodies above 20 MiB")),
        "{warnings:?}"
    );
}

#[test]
fn the_sidecar_accepts_the_settings_it_is_given() {
    // What the injector writes must pass the sidecar's own configuration
    // checks (a budget below one body would stop it at start).
    for limit in ["128Mi", "40Mi", "1Gi"] {
        let mut d = defaults();
        d.resources.memory_limit = Some(webhook::types::Quantity::parse(limit).expect("q"));
        d.resources.memory_request = None;
        let p = opted_in(json!({}));
        let i = match webhook::inject(&p, &app_facts(), &d) {
            Ok(Outcome::Injected(i)) => i,
            other => panic!("{other:?}"),
        };
        let env = sidecar_env(&mutated(&p, &i));
        let parsed = bedrock_broker::sidecar::SidecarConfig::from_args(&Default::default(), &env);
        assert!(parsed.is_ok(), "{limit}: {:?}", parsed.err());
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
fn roles_are_limited_to_the_service_accounts_by_default() {
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
    match webhook::inject(&with_role(sa_role), &facts(sa), &defaults()) {
        Ok(Outcome::Injected(i)) => assert!(matches!(
            i.auth,
            SidecarAuth::WebIdentity { ref role, .. } if role.as_str() == sa_role
        )),
        other => panic!("{other:?}"),
    }
    // --role-policy any: the pod's annotation wins, as before.
    let mut d = defaults();
    d.role_policy = webhook::RolePolicy::Any;
    match webhook::inject(&with_role(ROLE), &facts(sa), &d) {
        Ok(Outcome::Injected(i)) => {
            assert!(matches!(
                i.auth,
                SidecarAuth::WebIdentity { source: RoleSource::PodAnnotation, ref role, .. } if role.as_str() == ROLE
            ));
            // Surprising, so said: another role than the ServiceAccount's.
            assert!(
                i.warnings
                    .iter()
                    .any(|w| w.contains(ROLE) && w.contains(sa_role) && w.contains("trust policy")),
                "{:?}",
                i.warnings
            );
        }
        other => panic!("{other:?}"),
    }
}

fn limit_range(item: Value) -> k8s_openapi::api::core::v1::LimitRange {
    serde_json::from_value(
        json!({"metadata": {"name": "limits", "namespace": "default"},
        "spec": {"limits": [item]}}),
    )
    .expect("a LimitRange")
}

#[test]
fn the_sidecar_fits_the_namespaces_limit_range() {
    use webhook_support::apiserver::limit_range_violations;
    let cases = [
        // A minimum above the sidecar's request: LimitRanger refused the pod
        // ("minimum cpu usage per Container is 50m, but request is 10m").
        json!({"type": "Container", "min": {"cpu": "50m", "memory": "64Mi"}}),
        // A maximum below the sidecar's memory limit, and a maximum CPU
        // without a default: the sidecar has no CPU limit at all.
        json!({"type": "Container", "max": {"cpu": "1", "memory": "100Mi"}}),
        // A default CPU limit (what a ResourceQuota on limits.cpu needs)
        // and a ratio the defaults break (128Mi / 32Mi = 4 > 2).
        json!({"type": "Container", "default": {"cpu": "200m"}, "maxLimitRequestRatio": {"memory": "2"}}),
    ];
    for item in cases {
        let lr = vec![limit_range(item.clone())];
        let facts = ClusterFacts {
            limit_ranges: Some(&lr),
            ..app_facts()
        };
        let p = opted_in(json!({}));
        let i = match webhook::inject(&p, &facts, &defaults()) {
            Ok(Outcome::Injected(i)) => i,
            other => panic!("{item}: {other:?}"),
        };
        // The sidecar alone: the app's own resources are the app's business.
        let only = json!({"spec": {"initContainers": [sidecar(&mutated(&p, &i))]}});
        let lr_json = vec![serde_json::to_value(&lr[0]).expect("json")];
        let violations = limit_range_violations(&only, &lr_json);
        assert!(violations.is_empty(), "{item}: {violations:#?}");
        assert!(
            i.warnings.iter().any(|w| w.contains("LimitRange")),
            "{item}: {:?}",
            i.warnings
        );
    }
}

#[test]
fn the_body_budget_follows_a_limit_range_default() {
    let lr = vec![limit_range(
        json!({"type": "Container", "max": {"memory": "100Mi"}}),
    )];
    let facts = ClusterFacts {
        limit_ranges: Some(&lr),
        ..app_facts()
    };
    let p = opted_in(json!({}));
    let Ok(Outcome::Injected(i)) = webhook::inject(&p, &facts, &defaults()) else {
        panic!("not injected");
    };
    let c = sidecar(&mutated(&p, &i));
    assert_eq!(c["resources"]["limits"]["memory"], "100Mi");
    assert_eq!(
        env_of(&c, "BEDROCK_BROKER_REQUEST_BODY_BUDGET").map(|e| e["value"].clone()),
        Some(json!("52428800"))
    );
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
