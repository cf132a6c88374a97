//! What the injected sidecar costs and how it fits the pod's budget:
//! pod-level resources, the namespace's LimitRanges, the body budget
//! derived from the memory limit.

// Test code: a failed setup is a failed test.
#![allow(clippy::unwrap_used)]

mod webhook_support;

use bedrock_broker::egress::EgressProxy;
use bedrock_broker::tls::CaBundle;
use bedrock_broker::webhook::{self, ClusterFacts, Outcome, SidecarDefaults};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use webhook_support::defaults;
use webhook_support::pods::{app_facts, env_of, inject, mutated, opted_in, sidecar};

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
    // the pod is told. Small limits keep 24 MiB for the process itself,
    // so the budget is less than half (16 MiB of 40).
    let (v, warnings) = with_limit(Some("40Mi"));
    let c = sidecar(&v);
    for var in [
        "BEDROCK_BROKER_REQUEST_BODY_BUDGET",
        "BEDROCK_BROKER_MAX_BODY_BYTES",
    ] {
        assert_eq!(
            env_of(&c, var).map(|e| e["value"].clone()),
            Some(json!("16777216")),
            "{var}"
        );
    }
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("request bodies above 16 MiB")),
        "{warnings:?}"
    );
}

#[test]
fn the_sidecar_accepts_the_settings_it_is_given() {
    // What the injector writes must pass the sidecar's own configuration
    // checks (a budget below one body would stop it at start).
    // A limit past 2 TiB once gave a budget the sidecar refuses: it could
    // never start.
    for limit in ["128Mi", "40Mi", "32Mi", "1Gi", "4Ti", "1e30"] {
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
fn a_memory_limit_the_sidecar_cannot_run_in_is_refused() {
    // `memory-limit: "1"` gave a body budget of 0 bytes, which the sidecar
    // refuses at start: a crash loop (a pod that never starts, natively).
    // An annotation in bytes, mebibytes below the floor, or a LimitRange
    // maximum that forces the limit down: each is refused, saying why.
    let refused = |p: &Pod, facts: &ClusterFacts| match webhook::inject(p, facts, &defaults()) {
        Err(webhook::Denial { problems }) => problems.join("; "),
        other => panic!("{other:?}"),
    };
    for limit in ["1", "1Mi", "31Mi"] {
        let mut p = opted_in(json!({}));
        let notes = p.metadata.annotations.get_or_insert_with(Default::default);
        notes.insert("bedrock-broker.io/memory-limit".into(), limit.into());
        notes.insert("bedrock-broker.io/memory-request".into(), limit.into());
        let why = refused(&p, &app_facts());
        assert!(
            why.contains("bedrock-broker.io/memory-limit") && why.contains("32Mi"),
            "{limit}: {why}"
        );
    }
    let lr = vec![limit_range(
        json!({"type": "Container", "max": {"memory": "16Mi"}}),
    )];
    let facts = ClusterFacts {
        limit_ranges: Some(&lr),
        ..app_facts()
    };
    let why = refused(&opted_in(json!({})), &facts);
    assert!(why.contains("LimitRange") && why.contains("32Mi"), "{why}");
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
        // A ratio alone: LimitRanger wants a limit to check it against, and
        // the sidecar has no CPU limit by default ("no limit is specified").
        json!({"type": "Container", "maxLimitRequestRatio": {"cpu": "4"}}),
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
fn the_platforms_egress_proxy_reaches_the_sidecar_only() {
    let mut d = defaults();
    let proxy = EgressProxy::parse_injected("proxy.corp:3128", Some(".internal,10.0.0.0/8"));
    d.egress_proxy = Some(proxy.unwrap());
    let p = opted_in(json!({}));
    let Ok(Outcome::Injected(i)) = webhook::inject(&p, &app_facts(), &d) else {
        panic!("not injected");
    };
    let v = mutated(&p, &i);
    let value = |c: &Value, name: &str| env_of(c, name).map(|e| e["value"].clone());
    let c = sidecar(&v);
    assert_eq!(
        value(&c, "HTTPS_PROXY"),
        Some(json!("http://proxy.corp:3128"))
    );
    assert_eq!(value(&c, "NO_PROXY"), Some(json!(".internal,10.0.0.0/8")));
    // The app's own traffic is the app's business.
    let app = &v["spec"]["containers"][0];
    assert_eq!(
        (env_of(app, "HTTPS_PROXY"), env_of(app, "NO_PROXY")),
        (None, None)
    );
    // The sidecar reads them as the webhook did.
    let parsed =
        bedrock_broker::sidecar::SidecarConfig::from_args(&Default::default(), &sidecar_env(&v));
    let egress = parsed.expect("parses").credentials.egress_proxy;
    assert_eq!(egress, d.egress_proxy);

    let Ok(Outcome::Injected(i)) = webhook::inject(&p, &app_facts(), &defaults()) else {
        panic!("not injected");
    };
    let c = sidecar(&mutated(&p, &i));
    assert_eq!(
        (env_of(&c, "HTTPS_PROXY"), env_of(&c, "NO_PROXY")),
        (None, None)
    );
}

/// An opted-in pod annotated `bedrock-broker.io/https-proxy-secret: value`.
fn with_proxy_secret(value: &str) -> Pod {
    let mut p = opted_in(json!({}));
    p.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            "bedrock-broker.io/https-proxy-secret".to_owned(),
            value.to_owned(),
        );
    p
}

#[test]
fn a_pods_own_proxy_url_with_credentials_comes_from_its_secret() {
    let mut d = defaults();
    let proxy = EgressProxy::parse_injected("proxy.corp:3128", Some(".internal"));
    d.egress_proxy = Some(proxy.unwrap());
    let p = with_proxy_secret("corp-proxy/url");
    for (defaults, no_proxy) in [(d, Some(json!(".internal"))), (defaults(), None)] {
        let Ok(Outcome::Injected(i)) = webhook::inject(&p, &app_facts(), &defaults) else {
            panic!("not injected");
        };
        let v = mutated(&p, &i);
        let c = sidecar(&v);
        let named = |name: &str| {
            c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["name"] == name)
                .cloned()
                .collect::<Vec<_>>()
        };
        // One HTTPS_PROXY, from the Secret, never a literal: the pod's
        // URL replaces the webhook's, whose NO_PROXY still applies.
        assert_eq!(
            named("HTTPS_PROXY"),
            vec![
                json!({"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {
                "name": "corp-proxy", "key": "url", "optional": false}}})
            ]
        );
        assert_eq!(env_of(&c, "NO_PROXY").map(|e| e["value"].clone()), no_proxy);
        // The app's containers never see the proxy's credentials.
        let app = &v["spec"]["containers"][0];
        assert_eq!(env_of(app, "HTTPS_PROXY"), None);

        // What the kubelet resolves the Secret to, the sidecar reads, and
        // keeps out of its Debug output.
        let url = "http://svc:s3cret@proxy.corp:3128";
        let mut pairs: Vec<(String, String)> = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect();
        pairs.push(("HTTPS_PROXY".to_owned(), url.to_owned()));
        let env = bedrock_broker::config::Env::from_pairs(
            pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let parsed = bedrock_broker::sidecar::SidecarConfig::from_args(&Default::default(), &env)
            .expect("parses");
        let wanted = no_proxy.as_ref().and_then(Value::as_str);
        assert_eq!(
            parsed.credentials.egress_proxy,
            Some(EgressProxy::parse(url, wanted).unwrap())
        );
        assert!(!format!("{parsed:?}").contains("s3cret"));
    }
}

#[test]
fn an_https_proxy_secret_must_name_a_secret_and_key() {
    let p = with_proxy_secret("http://svc:s3cret@proxy.corp:3128");
    let Err(problems) = webhook::inject(&p, &app_facts(), &defaults()) else {
        panic!("a URL is not a Secret reference");
    };
    let text = format!("{problems:?}");
    assert!(
        text.contains("bedrock-broker.io/https-proxy-secret"),
        "{text}"
    );
    assert!(!text.contains("s3cret"), "{text}");
}

#[test]
fn the_platforms_trust_anchors_reach_the_sidecar_as_text() {
    let cert = rcgen::generate_simple_self_signed(vec!["proxy.corp".to_owned()]).unwrap();
    let pem = cert.cert.pem();
    let mut d = defaults();
    d.ca_bundle = Some(
        CaBundle::from_pem("test", pem.clone().into_bytes())
            .unwrap()
            .into(),
    );
    let p = opted_in(json!({}));
    let Ok(Outcome::Injected(i)) = webhook::inject(&p, &app_facts(), &d) else {
        panic!("not injected");
    };
    let v = mutated(&p, &i);
    let c = sidecar(&v);
    assert_eq!(
        env_of(&c, "BEDROCK_BROKER_CA_BUNDLE_PEM").map(|e| e["value"].clone()),
        Some(json!(pem))
    );
    assert_eq!(
        env_of(&v["spec"]["containers"][0], "BEDROCK_BROKER_CA_BUNDLE_PEM"),
        None
    );
    // The sidecar trusts exactly that.
    let parsed =
        bedrock_broker::sidecar::SidecarConfig::from_args(&Default::default(), &sidecar_env(&v));
    let bundle = parsed
        .expect("parses")
        .credentials
        .ca_bundle
        .expect("a bundle");
    assert_eq!(bundle.pem, pem.into_bytes());
}

#[test]
fn fips_and_dualstack_are_the_platforms_choice_and_the_app_is_told() {
    // A platform's policy: an app's own AWS_USE_FIPS_ENDPOINT (or
    // AWS_USE_DUALSTACK_ENDPOINT) serves its other AWS calls (and most
    // regions have no FIPS Bedrock host), so it is not followed, but the
    // app is told its Bedrock calls do not use it.
    type Set = fn(&mut SidecarDefaults, bool);
    let set_fips: Set = |d, on| d.use_fips = on;
    let set_dualstack: Set = |d, on| d.use_dualstack = on;
    for (var, flag, set) in [
        ("AWS_USE_FIPS_ENDPOINT", "--sidecar-use-fips", set_fips),
        (
            "AWS_USE_DUALSTACK_ENDPOINT",
            "--sidecar-use-dualstack",
            set_dualstack,
        ),
    ] {
        let with = |on: bool, app: Option<&str>| {
            let mut d = defaults();
            set(&mut d, on);
            let spec = match app {
                None => json!({}),
                Some(v) => json!({"containers": [{"name": "app", "image": "app:1",
                    "env": [{"name": var, "value": v}]}]}),
            };
            let p = opted_in(spec);
            let i = match webhook::inject(&p, &app_facts(), &d) {
                Ok(Outcome::Injected(i)) => i,
                other => panic!("{other:?}"),
            };
            (mutated(&p, &i), i.warnings.clone())
        };
        let (v, warnings) = with(true, None);
        assert_eq!(
            env_of(&sidecar(&v), var).map(|e| e["value"].clone()),
            Some(json!("true")),
            "{var}"
        );
        // The sidecar reads it as meant, for STS too.
        let parsed = bedrock_broker::sidecar::SidecarConfig::from_args(
            &Default::default(),
            &sidecar_env(&v),
        )
        .expect("parses");
        let sts = &parsed.credentials.sts;
        assert_eq!(
            (sts.use_fips, sts.use_dualstack),
            (var.contains("FIPS"), var.contains("DUALSTACK"))
        );
        assert!(warnings.is_empty(), "{warnings:?}");

        let (v, warnings) = with(false, Some("TRUE"));
        assert_eq!(env_of(&sidecar(&v), var), None);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains(&format!("sets {var}")) && w.contains(flag)),
            "{warnings:?}"
        );
        for (on, app) in [(true, "true"), (false, "false")] {
            assert!(with(on, Some(app)).1.is_empty(), "{var} {on} {app}");
        }
    }
}
