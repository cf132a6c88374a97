//! The API-server rule checks of `webhook_support::apiserver` themselves:
//! each must catch what the API server refuses, with its message.

// Test code: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod webhook_support;

use serde_json::json;
use webhook_support::apiserver::violations;

#[test]
fn pod_level_requests_must_cover_every_container_and_sidecar() {
    // The refusal the issue reported: the app's 100m/64Mi plus a native
    // sidecar's 10m/32Mi against pod-level requests of 100m/64Mi.
    let pod = json!({"spec": {
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
        "initContainers": [{"name": "bedrock-broker", "restartPolicy": "Always",
            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}}}],
        "containers": [{"name": "app", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
    }});
    assert_eq!(
        violations(&pod),
        [
            "spec.resources.requests[cpu]: Invalid value: \"100m\": must be greater than or equal to aggregate container requests of 110m",
            "spec.resources.requests[memory]: Invalid value: \"64Mi\": must be greater than or equal to aggregate container requests of 96Mi",
        ]
    );
}

#[test]
fn a_container_limit_above_the_pod_limit_is_refused() {
    let pod = json!({"spec": {
        "resources": {"limits": {"memory": "100Mi"}},
        "containers": [{"name": "app"}, {"name": "bedrock-broker", "resources": {"limits": {"memory": "128Mi"}}}],
    }});
    assert_eq!(
        violations(&pod),
        ["spec.containers[1].resources.limits[memory]: Invalid value: \"128Mi\": must be less than or equal to pod limits of 100Mi"]
    );
}

#[test]
fn init_phase_counts_sidecars_started_before_each_init_container() {
    // Init phase: 10m (sidecar) + 500m (migrate) = 510m beats 10m + 100m running.
    let pod = json!({"spec": {
        "resources": {"requests": {"cpu": "200m"}},
        "initContainers": [
            {"name": "bedrock-broker", "restartPolicy": "Always", "resources": {"requests": {"cpu": "10m"}}},
            {"name": "migrate", "resources": {"requests": {"cpu": "500m"}}},
        ],
        "containers": [{"name": "app", "resources": {"requests": {"cpu": "100m"}}}],
    }});
    assert_eq!(
        violations(&pod),
        ["spec.resources.requests[cpu]: Invalid value: \"200m\": must be greater than or equal to aggregate container requests of 510m"]
    );
}

#[test]
fn native_sidecar_fields_follow_the_init_container_rules() {
    let pod = json!({"spec": {
        "initContainers": [
            {"name": "a", "restartPolicy": "OnFailure"},
            {"name": "b", "readinessProbe": {"exec": {"command": ["true"]}}},
            {"name": "c", "restartPolicy": "Always", "readinessProbe": {"httpGet": {"port": "admin"}}},
        ],
        "containers": [{"name": "a", "restartPolicy": "Always"}],
    }});
    let v = violations(&pod);
    for needle in [
        "spec.initContainers[0].restartPolicy: Unsupported value",
        "spec.initContainers[1].readinessProbe: Forbidden",
        "spec.initContainers[2].readinessProbe.httpGet.port: Invalid value: \"admin\"",
        "spec.containers[0].name: Duplicate value: \"a\"",
        "spec.containers[0].restartPolicy: Forbidden",
    ] {
        assert!(
            v.iter().any(|m| m.starts_with(needle)),
            "missing {needle:?} in {v:#?}"
        );
    }
    assert_eq!(v.len(), 5, "{v:#?}");
}

#[test]
fn volumes_mounts_ports_env_and_requests() {
    let pod = json!({"spec": {
        "volumes": [{"name": "v"}, {"name": "v"}],
        "containers": [{"name": "app",
            "volumeMounts": [{"name": "w", "mountPath": "/x"}, {"name": "v", "mountPath": "/x"}],
            "ports": [{"name": "far-too-long-port-name", "containerPort": 1}],
            "env": [{"name": "1BAD"}],
            "resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}],
    }});
    assert_eq!(violations(&pod).len(), 6, "{:#?}", violations(&pod));
}
