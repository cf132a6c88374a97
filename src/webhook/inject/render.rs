//! The one place the injected sidecar is written down as Kubernetes
//! objects: its container (env, resources, probes, securityContext), its
//! projected token volume, and the variables the app containers get.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, ServiceAccountTokenProjection, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as K8sQuantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::fit::Fitted;
use super::resolve::{Resolved, SidecarAuth, TokenAccess, TokenVolume, TOKEN_FILE};
use super::spec::{Resources, SidecarSpec};
use super::types::{Quantity, SecretKeyRef, SidecarMode};
use crate::config::settings::{aws as aws_settings, log, sidecar as sidecar_settings, vars};

/// Name of the injected container.
pub const CONTAINER_NAME: &str = "bedrock-broker";
/// Name of the admin port, for PodMonitors and probes.
pub const ADMIN_PORT_NAME: &str = "bb-admin";
/// `defaultMode` of our token volume: readable by the sidecar whatever UID
/// it runs as, when the kubelet does not set an owner (see [`TokenAccess`]).
/// The volume is mounted into the sidecar only.
pub const TOKEN_DEFAULT_MODE: i32 = 0o444;

/// Variables the app containers get (when they do not set them already).
/// Each popular client reads its own; docs/clients.md says which reads which.
pub mod app_vars {
    /// The proxy's base URL, for clients configured by hand.
    pub const BEDROCK_BROKER_URL: &str = "BEDROCK_BROKER_URL";
    /// The OpenAI SDKs' base URL variable (also llama-stack's and
    /// pydantic-ai's OpenAI providers).
    pub const OPENAI_BASE_URL: &str = "OPENAI_BASE_URL";
    /// The OpenAI SDKs refuse to start without a key; the proxy strips it.
    pub const OPENAI_API_KEY: &str = "OPENAI_API_KEY";
    /// The AWS SDKs' service-specific endpoint variable for bedrock-runtime
    /// (boto3 and what builds on it, the AWS CLI, the JavaScript SDK).
    pub const AWS_ENDPOINT_URL_BEDROCK_RUNTIME: &str = "AWS_ENDPOINT_URL_BEDROCK_RUNTIME";
    /// The AWS SDKs' endpoint variable for bedrock-agent-runtime (agents,
    /// knowledge bases, flows), served under the proxy's `/agent-runtime`.
    pub const AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME: &str =
        "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME";
    /// LiteLLM's own endpoint variable (it ignores the AWS one).
    pub const AWS_BEDROCK_RUNTIME_ENDPOINT: &str = "AWS_BEDROCK_RUNTIME_ENDPOINT";
    /// The Anthropic SDKs' `AnthropicBedrock` base URL variable.
    pub const ANTHROPIC_BEDROCK_BASE_URL: &str = "ANTHROPIC_BEDROCK_BASE_URL";
    /// The proxy token, when the pod asks for one, for clients configured
    /// by hand (`Authorization: Bearer` or `x-bedrock-broker-token`).
    pub const BEDROCK_BROKER_PROXY_TOKEN: &str = "BEDROCK_BROKER_PROXY_TOKEN";
}

/// The placeholder `OPENAI_API_KEY`: not a Bedrock API key (those start
/// with `bedrock-api-key-` or `ABSK`), so the proxy strips it, and it says
/// where it came from to whoever finds it in the pod.
pub const OPENAI_API_KEY_PLACEHOLDER: &str = "bedrock-broker-placeholder";

/// One variable for the app containers.
#[derive(Debug, Clone, PartialEq)]
pub struct AppVar {
    pub var: EnvVar,
    /// Left out of a container that sets any of these itself (always
    /// including the variable's own name).
    pub unless_set: &'static [&'static str],
}

/// What the patch stage places into the pod.
pub struct Rendered {
    pub container: Container,
    /// Our own token volume, when one is added.
    pub volume: Option<Volume>,
    /// For every app container, each unless it sets the variable itself.
    pub app_env: Vec<AppVar>,
}

pub fn render(sidecar: &SidecarSpec, resolved: &Resolved, fitted: &Fitted) -> Rendered {
    let volume = match resolved.auth.token() {
        Some(TokenVolume::Own(name)) => Some(token_volume(sidecar, name)),
        _ => None,
    };
    Rendered {
        container: container(sidecar, resolved, fitted),
        volume,
        app_env: app_env(sidecar),
    }
}

/// Loopback only: nothing outside the pod may have requests signed with
/// its role.
fn proxy_addr(sidecar: &SidecarSpec) -> String {
    format!("127.0.0.1:{}", sidecar.port)
}

/// `BEDROCK_BROKER_URL` always; with `client-env` on (the default), also
/// the variable each popular client reads to find Bedrock. No AWS keys,
/// region or `AWS_BEARER_TOKEN_BEDROCK`: they would change the app's other
/// AWS calls (botocore would even refuse a bearer token over plain HTTP).
fn app_env(sidecar: &SidecarSpec) -> Vec<AppVar> {
    use app_vars::*;
    let base = format!("http://{}", proxy_addr(sidecar));
    let one = |name: &'static [&'static str], value: String| AppVar {
        var: env(name[0], value),
        unless_set: name,
    };
    let mut vars = vec![one(&[BEDROCK_BROKER_URL], base.clone())];
    if let Some(secret) = &sidecar.proxy_token_secret {
        vars.push(AppVar {
            var: secret_env(BEDROCK_BROKER_PROXY_TOKEN, secret),
            unless_set: &[BEDROCK_BROKER_PROXY_TOKEN],
        });
    }
    if sidecar.client_env {
        // The OpenAI SDKs send their key as `Authorization: Bearer`, which
        // is where the proxy looks for its token; without one the key is
        // a placeholder the proxy strips.
        let openai_key = match &sidecar.proxy_token_secret {
            Some(secret) => secret_env(OPENAI_API_KEY, secret),
            None => env(OPENAI_API_KEY, OPENAI_API_KEY_PLACEHOLDER),
        };
        vars.extend([
            one(&[OPENAI_BASE_URL], format!("{base}/openai/v1")),
            // Only beside our base URL: a container pointing the OpenAI SDK
            // elsewhere keeps the key it gets from there (even by envFrom,
            // which an explicit variable would override).
            AppVar {
                var: openai_key,
                unless_set: &[OPENAI_API_KEY, OPENAI_BASE_URL],
            },
            one(&[AWS_ENDPOINT_URL_BEDROCK_RUNTIME], base.clone()),
        ]);
        // The Agents runtime takes no API key: a sidecar in bearer mode
        // refuses every call there, which the app's own client (signing
        // with credentials of its own) would otherwise make directly.
        if sidecar.api_key_secret.is_none() {
            vars.push(one(
                &[AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME],
                format!("{base}/agent-runtime"),
            ));
        }
        vars.extend([
            one(&[AWS_BEDROCK_RUNTIME_ENDPOINT], base.clone()),
            one(&[ANTHROPIC_BEDROCK_BASE_URL], base),
        ]);
    }
    vars
}

/// Our projected token volume, under the free `name`.
fn token_volume(sidecar: &SidecarSpec, name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(TOKEN_DEFAULT_MODE),
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some(sidecar.audience.value.as_str().to_owned()),
                    expiration_seconds: Some(sidecar.token_expiration.value.seconds()),
                    path: TOKEN_FILE.to_owned(),
                }),
                ..Default::default()
            }]),
        }),
        ..Default::default()
    }
}

fn container(sidecar: &SidecarSpec, resolved: &Resolved, fitted: &Fitted) -> Container {
    let run_as_user = match resolved.token_access {
        TokenAccess::SharedUser(uid) => uid,
        TokenAccess::FsGroup(_) | TokenAccess::DefaultMode => sidecar.run_as_user,
    };
    Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(sidecar.image.as_str().to_owned()),
        image_pull_policy: sidecar.pull_policy.map(|p| p.as_str().to_owned()),
        args: Some(vec!["sidecar".to_owned()]),
        env: Some(sidecar_env(sidecar, resolved, fitted)),
        ports: Some(vec![ContainerPort {
            name: Some(ADMIN_PORT_NAME.to_owned()),
            container_port: i32::from(sidecar.admin_port.get()),
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        resources: resources(&fitted.resources),
        // Gates the app (native mode): it starts once credentials are
        // usable. A gate, not a watchdog: the refresher keeps retrying
        // through an STS outage at start, and a kill would only add
        // CrashLoopBackOff's growing delay to its recovery (Istio gives
        // its proxy the same ten minutes).
        startup_probe: Some(probe("/readyz", 1, STARTUP_FAILURES)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        security_context: Some(security_context(run_as_user)),
        volume_mounts: resolved.auth.token().map(|t| {
            vec![VolumeMount {
                name: t.name().to_owned(),
                mount_path: t.mount_path().to_owned(),
                read_only: Some(true),
                ..Default::default()
            }]
        }),
        restart_policy: (sidecar.mode.value == SidecarMode::Native).then(|| "Always".to_owned()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    }
}

/// A variable read from a Secret key. A missing Secret stops the pod with
/// a clear event, instead of a sidecar (or app) that cannot authenticate.
fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
    }
}

fn sidecar_env(sidecar: &SidecarSpec, resolved: &Resolved, fitted: &Fitted) -> Vec<EnvVar> {
    let mut env_vars = vec![env(aws_settings::REGION.var(), resolved.region.as_str())];
    match &resolved.auth {
        SidecarAuth::WebIdentity { role, token, .. } => {
            env_vars.push(env(vars::AWS_ROLE_ARN.name, role.as_str()));
            env_vars.push(env(
                vars::AWS_WEB_IDENTITY_TOKEN_FILE.name,
                token.token_file(),
            ));
            match &sidecar.session_name {
                Some(name) => env_vars.push(env(vars::AWS_ROLE_SESSION_NAME.name, name.as_str())),
                // The sidecar names its STS session <namespace>.<pod>,
                // so CloudTrail shows which pod called.
                None => {
                    env_vars.push(field_env(vars::POD_NAMESPACE.name, "metadata.namespace"));
                    env_vars.push(field_env(vars::POD_NAME.name, "metadata.name"));
                }
            }
        }
        SidecarAuth::ApiKey(secret) => {
            env_vars.push(secret_env(vars::AWS_BEARER_TOKEN_BEDROCK.name, secret));
        }
    }
    if let Some(secret) = &sidecar.proxy_token_secret {
        env_vars.push(secret_env(sidecar_settings::PROXY_TOKEN.var(), secret));
    }
    env_vars.extend([
        env(sidecar_settings::LISTEN.var(), proxy_addr(sidecar)),
        env(
            sidecar_settings::ADMIN_LISTEN.var(),
            format!("[::]:{}", sidecar.admin_port),
        ),
        env(log::FORMAT.var(), sidecar.log_format.as_str()),
        env(vars::RUST_LOG.name, sidecar.log_level.as_str()),
    ]);
    for (on, setting) in [
        (sidecar.use_fips, &sidecar_settings::USE_FIPS),
        (sidecar.use_dualstack, &sidecar_settings::USE_DUALSTACK),
    ] {
        if on {
            env_vars.push(env(setting.var(), "true"));
        }
    }
    if let Some(bundle) = &sidecar.ca_bundle {
        // Checked to be text when it was read.
        let bundle = bundle.current();
        let pem = String::from_utf8_lossy(&bundle.pem);
        env_vars.push(env(vars::CA_BUNDLE_PEM.name, pem.as_ref()));
    }
    // A pod's own proxy URL (credentials and all) stays in its Secret; the
    // webhook's NO_PROXY still applies to it.
    if let Some(secret) = &sidecar.https_proxy_secret {
        env_vars.push(secret_env(aws_settings::HTTPS_PROXY.var(), secret));
    }
    if let Some(proxy) = &sidecar.egress_proxy {
        if let Some(url) = proxy.injectable_url() {
            if sidecar.https_proxy_secret.is_none() {
                env_vars.push(env(aws_settings::HTTPS_PROXY.var(), url));
            }
            if !proxy.no_proxy().is_empty() {
                env_vars.push(env(aws_settings::NO_PROXY.var(), proxy.no_proxy()));
            }
        }
    }
    // A classic sidecar is told to stop with the app, which may still call
    // Bedrock while it winds down: it keeps serving while the app holds
    // connections, within the pod's own grace (the kubelet's SIGKILL ends
    // both then). A native one is stopped after the app has exited.
    if sidecar.mode.value == SidecarMode::Classic {
        // Kubernetes takes any grace; the sidecar's durations stop at a
        // year, and a value it refuses would stop it at every start.
        let most = crate::config::parse::MAX_DURATION.as_secs();
        let seconds = u64::try_from(resolved.termination_grace_seconds.max(0)).unwrap_or(0);
        env_vars.push(env(
            sidecar_settings::SHUTDOWN_DELAY.var(),
            format!("{}s", seconds.min(most)),
        ));
    }
    // Buffered request bodies stay within the memory the pod gives the
    // sidecar (see fit::BodyBudget).
    if let Some(budget) = fitted.body_budget {
        env_vars.push(env(
            sidecar_settings::REQUEST_BODY_BUDGET.var(),
            budget.bytes.to_string(),
        ));
        if let Some(max) = budget.max_body {
            env_vars.push(env(sidecar_settings::MAX_BODY_BYTES.var(), max.to_string()));
        }
    }
    env_vars
}

/// `None` when nothing is requested or limited, so the field is left out.
fn resources(r: &Resources) -> Option<ResourceRequirements> {
    let quantities = |cpu: &Option<Quantity>, memory: &Option<Quantity>| {
        [("cpu", cpu), ("memory", memory)]
            .into_iter()
            .filter_map(|(k, q)| Some((k.to_owned(), K8sQuantity(q.as_ref()?.as_str().to_owned()))))
            .collect::<BTreeMap<_, _>>()
    };
    let requests = quantities(&r.cpu_request, &r.memory_request);
    let limits = quantities(&r.cpu_limit, &r.memory_limit);
    (!requests.is_empty() || !limits.is_empty()).then(|| ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    })
}

/// Startup probe failures (one a second) before the kubelet restarts the
/// sidecar: ten minutes.
const STARTUP_FAILURES: i32 = 600;

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(ADMIN_PORT_NAME.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn security_context(run_as_user: i64) -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(run_as_user),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// An environment variable from the downward API.
fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: field_path.to_owned(),
            }),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::inject::spec::SidecarDefaults;

    fn names(client_env: bool) -> Vec<(String, Option<String>)> {
        let defaults = SidecarDefaults::from_args(&Default::default(), &Default::default())
            .expect("the documented defaults parse");
        let mut spec = SidecarSpec::from_defaults(&defaults);
        spec.client_env = client_env;
        app_env(&spec)
            .into_iter()
            .map(|v| (v.var.name, v.var.value))
            .collect()
    }

    #[test]
    fn every_popular_client_finds_the_proxy_and_no_aws_secret_is_set() {
        let all = names(true);
        let get = |n: &str| {
            all.iter()
                .find(|(k, _)| k == n)
                .and_then(|(_, v)| v.clone())
        };
        let base = "http://127.0.0.1:9787";
        assert_eq!(get("BEDROCK_BROKER_URL").as_deref(), Some(base));
        assert_eq!(
            get("AWS_ENDPOINT_URL_BEDROCK_RUNTIME").as_deref(),
            Some(base)
        );
        assert_eq!(
            get("AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME").as_deref(),
            Some("http://127.0.0.1:9787/agent-runtime")
        );
        // In bearer mode the sidecar refuses the Agents runtime: an app
        // signing its own agent calls keeps calling AWS directly.
        let defaults = SidecarDefaults::from_args(&Default::default(), &Default::default())
            .expect("the documented defaults parse");
        let mut bearer = SidecarSpec::from_defaults(&defaults);
        bearer.api_key_secret = Some(SecretKeyRef::parse("bedrock-key/api-key").expect("a ref"));
        let names: Vec<String> = app_env(&bearer).into_iter().map(|v| v.var.name).collect();
        assert!(names.contains(&"AWS_ENDPOINT_URL_BEDROCK_RUNTIME".to_owned()));
        assert!(!names.contains(&"AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME".to_owned()));
        assert_eq!(get("AWS_BEDROCK_RUNTIME_ENDPOINT").as_deref(), Some(base));
        assert_eq!(get("ANTHROPIC_BEDROCK_BASE_URL").as_deref(), Some(base));
        assert_eq!(
            get("OPENAI_BASE_URL").as_deref(),
            Some("http://127.0.0.1:9787/openai/v1")
        );
        let key = get("OPENAI_API_KEY").unwrap_or_default();
        // Not a Bedrock API key: the proxy strips it instead of passing it on.
        assert!(!key.starts_with("bedrock-api-key-") && !key.starts_with("ABSK"));
        for (name, _) in &all {
            assert!(
                !name.starts_with("AWS_ACCESS")
                    && !name.starts_with("AWS_SECRET")
                    && name != "AWS_BEARER_TOKEN_BEDROCK"
                    && !name.contains("REGION"),
                "{name} would change the app's other AWS calls"
            );
        }
    }

    #[test]
    fn client_env_off_leaves_only_the_broker_url() {
        assert_eq!(
            names(false),
            [(
                "BEDROCK_BROKER_URL".to_owned(),
                Some("http://127.0.0.1:9787".to_owned())
            )]
        );
    }
}
