//! Typed configuration of `webhook` and `inject`: every flag, its
//! environment variable and its default, parsed once with every problem
//! collected before failing (the same rules as [`crate::config`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::cli::{InjectArgs, SidecarDefaultsArgs, WebhookArgs};
use crate::config::{
    parse_addr, parse_positive_duration, ConfigErrors, Env, Errors, LogFormat, Region,
};

use super::values::{
    parse_limit, Audience, ImageRef, LogLevel, PullPolicy, Quantity, SidecarMode, TokenExpiration,
};

/// Names of the environment variables behind the flags.
pub mod vars {
    pub const LISTEN: &str = "BEDROCK_BROKER_WEBHOOK_LISTEN";
    pub const ADMIN_LISTEN: &str = "BEDROCK_BROKER_WEBHOOK_ADMIN_LISTEN";
    pub const TLS_CERT_FILE: &str = "BEDROCK_BROKER_WEBHOOK_TLS_CERT_FILE";
    pub const TLS_KEY_FILE: &str = "BEDROCK_BROKER_WEBHOOK_TLS_KEY_FILE";
    pub const TLS_RELOAD_INTERVAL: &str = "BEDROCK_BROKER_WEBHOOK_TLS_RELOAD_INTERVAL";
    pub const ON_LOOKUP_ERROR: &str = "BEDROCK_BROKER_WEBHOOK_ON_LOOKUP_ERROR";
    pub const LOOKUP_TIMEOUT: &str = "BEDROCK_BROKER_WEBHOOK_LOOKUP_TIMEOUT";
    pub const SHUTDOWN_GRACE_PERIOD: &str = "BEDROCK_BROKER_WEBHOOK_SHUTDOWN_GRACE_PERIOD";

    pub const SIDECAR_IMAGE: &str = "BEDROCK_BROKER_SIDECAR_IMAGE";
    pub const SIDECAR_IMAGE_PULL_POLICY: &str = "BEDROCK_BROKER_SIDECAR_IMAGE_PULL_POLICY";
    pub const SIDECAR_REGION: &str = "BEDROCK_BROKER_SIDECAR_REGION";
    pub const SIDECAR_MODE: &str = "BEDROCK_BROKER_SIDECAR_MODE";
    pub const SIDECAR_AUDIENCE: &str = "BEDROCK_BROKER_SIDECAR_AUDIENCE";
    pub const SIDECAR_TOKEN_EXPIRATION: &str = "BEDROCK_BROKER_SIDECAR_TOKEN_EXPIRATION";
    pub const SIDECAR_CPU_REQUEST: &str = "BEDROCK_BROKER_SIDECAR_CPU_REQUEST";
    pub const SIDECAR_MEMORY_REQUEST: &str = "BEDROCK_BROKER_SIDECAR_MEMORY_REQUEST";
    pub const SIDECAR_CPU_LIMIT: &str = "BEDROCK_BROKER_SIDECAR_CPU_LIMIT";
    pub const SIDECAR_MEMORY_LIMIT: &str = "BEDROCK_BROKER_SIDECAR_MEMORY_LIMIT";
    pub const SIDECAR_LOG_LEVEL: &str = "BEDROCK_BROKER_SIDECAR_LOG_LEVEL";
    pub const SIDECAR_LOG_FORMAT: &str = "BEDROCK_BROKER_SIDECAR_LOG_FORMAT";
    pub const SIDECAR_RUN_AS_USER: &str = "BEDROCK_BROKER_SIDECAR_RUN_AS_USER";
}

/// Defaults, each with the reason it is what it is.
pub mod defaults {
    use std::time::Duration;

    /// 8443: unprivileged, and what webhook Services conventionally target.
    pub const LISTEN: &str = "0.0.0.0:8443";
    /// Next to the sidecar's 9788 so the two never clash when both run on one host.
    pub const ADMIN_LISTEN: &str = "0.0.0.0:9789";
    /// Where the chart mounts the cert-manager (or chart-generated) Secret.
    pub const TLS_CERT_FILE: &str = "/etc/bedrock-broker/tls/tls.crt";
    pub const TLS_KEY_FILE: &str = "/etc/bedrock-broker/tls/tls.key";
    /// The kubelet takes up to a minute to publish a rotated Secret anyway;
    /// reading two small files every 10 s costs nothing.
    pub const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(10);
    /// Well inside the API server's webhook timeout (10 s by default), so a
    /// slow API read ends in our own clear answer, not the API server's timeout.
    pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);
    /// Admission requests take milliseconds; 10 s covers a slow API read.
    pub const SHUTDOWN_GRACE_PERIOD: Duration = Duration::from_secs(10);

    /// The image of this very build, so webhook and sidecar versions match.
    pub const SIDECAR_IMAGE: &str = concat!(
        "ghcr.io/bedrock-broker/bedrock-broker:",
        env!("CARGO_PKG_VERSION")
    );
    /// The audience STS expects for web identity federation.
    pub const SIDECAR_AUDIENCE: &str = "sts.amazonaws.com";
    /// Idle sidecar: a few millicores and ~10 MiB resident.
    pub const SIDECAR_CPU_REQUEST: &str = "10m";
    pub const SIDECAR_MEMORY_REQUEST: &str = "32Mi";
    /// Bodies are held in memory for signing (25 MiB at most per request),
    /// so a few concurrent large requests fit in 128 MiB.
    pub const SIDECAR_MEMORY_LIMIT: &str = "128Mi";
    /// The distroless "nonroot" user.
    pub const SIDECAR_RUN_AS_USER: i64 = 65532;
    /// JSON: injected sidecars log into a cluster's log pipeline.
    pub const SIDECAR_LOG_FORMAT: &str = "json";
    /// Same as the sidecar's own default.
    pub const NAMESPACE: &str = "default";
}

/// What the webhook does with an opted-in pod when it cannot read the
/// namespace or ServiceAccount it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LookupErrorPolicy {
    /// Refuse the pod with a message saying what could not be read; its
    /// controller retries, so the pod is created once the API answers. A pod
    /// never starts without the proxy it expects.
    #[default]
    Deny,
    /// Admit the pod unchanged (with a warning): availability first.
    Skip,
}

impl LookupErrorPolicy {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw {
            "deny" => Ok(Self::Deny),
            "skip" => Ok(Self::Skip),
            other => Err(format!(
                "{other:?} is not a policy; accepted values: deny or skip"
            )),
        }
    }
}

/// Resource requests and limits of the sidecar.
#[derive(Debug, Clone, PartialEq)]
pub struct Resources {
    pub cpu_request: Option<Quantity>,
    pub memory_request: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
}

/// Webhook-wide defaults of the injected sidecar (the chart sets them);
/// every one can be overridden per pod by an annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarDefaults {
    pub image: ImageRef,
    /// `None` leaves `imagePullPolicy` to the API server's defaulting.
    pub image_pull_policy: Option<PullPolicy>,
    /// `None`: pods must name their region by annotation.
    pub region: Option<Region>,
    pub mode: SidecarMode,
    pub audience: Audience,
    pub token_expiration: TokenExpiration,
    pub resources: Resources,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// UID for the sidecar unless the pod's containers share another non-root UID.
    pub run_as_user: i64,
}

impl Default for SidecarDefaults {
    /// The documented defaults, as `webhook` uses them with no flag or variable set.
    fn default() -> Self {
        Self {
            image: ImageRef::trusted(defaults::SIDECAR_IMAGE),
            image_pull_policy: None,
            region: None,
            mode: SidecarMode::Native,
            audience: Audience::trusted(defaults::SIDECAR_AUDIENCE),
            token_expiration: TokenExpiration::DEFAULT,
            resources: Resources {
                cpu_request: Quantity::parse(defaults::SIDECAR_CPU_REQUEST).ok(),
                memory_request: Quantity::parse(defaults::SIDECAR_MEMORY_REQUEST).ok(),
                cpu_limit: None,
                memory_limit: Quantity::parse(defaults::SIDECAR_MEMORY_LIMIT).ok(),
            },
            log_level: LogLevel::Info,
            log_format: LogFormat::Json,
            run_as_user: defaults::SIDECAR_RUN_AS_USER,
        }
    }
}

/// The TLS material of the webhook server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often both files are re-read; a change is applied without restart.
    pub reload_interval: Duration,
}

/// Configuration of `bedrock-broker webhook`.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: TlsFiles,
    pub on_lookup_error: LookupErrorPolicy,
    pub lookup_timeout: Duration,
    pub shutdown_grace: Duration,
    pub sidecar: SidecarDefaults,
}

/// Configuration of `bedrock-broker inject`.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectConfig {
    /// Namespace of documents that name none.
    pub namespace: String,
    /// Labels assumed for every namespace (merged under Namespace documents' own).
    pub namespace_labels: BTreeMap<String, String>,
    /// Annotations assumed for ServiceAccounts not in the input.
    pub service_account_annotations: BTreeMap<String, String>,
    pub sidecar: SidecarDefaults,
}

fn parse_path(raw: &str) -> Result<PathBuf, String> {
    if raw.is_empty() {
        Err("is empty".to_owned())
    } else {
        Ok(PathBuf::from(raw))
    }
}

fn parse_log_format(raw: &str) -> Result<LogFormat, String> {
    match raw {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        other => Err(format!(
            "unknown log format {other:?}; accepted values: text or json"
        )),
    }
}

fn parse_uid(raw: &str) -> Result<i64, String> {
    match raw.parse::<i64>() {
        Ok(uid) if (1..=i64::from(i32::MAX)).contains(&uid) => Ok(uid),
        _ => Err(format!(
            "{raw:?} is not a non-root UID; accepted values: a whole number from 1 to 2147483647"
        )),
    }
}

/// Parses `KEY=VALUE` pairs of a repeatable flag.
fn parse_pairs(items: &[String], flag_name: &str, errors: &mut Errors) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_owned(), v.to_owned());
            }
            _ => errors.push(
                format!("--{flag_name}"),
                format!("{item:?} is not KEY=VALUE"),
            ),
        }
    }
    out
}

impl SidecarDefaults {
    pub fn from_args(args: &SidecarDefaultsArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut errors = Errors::default();
        let value = Self::parse(args, env, &mut errors);
        errors.finish(value)
    }

    fn parse(a: &SidecarDefaultsArgs, env: &Env, e: &mut Errors) -> Self {
        let d = Self::default();
        let image = e.value(
            a.sidecar_image.as_deref(),
            "sidecar-image",
            env,
            vars::SIDECAR_IMAGE,
            d.image,
            ImageRef::parse,
        );
        let image_pull_policy = e.value(
            a.sidecar_image_pull_policy.as_deref(),
            "sidecar-image-pull-policy",
            env,
            vars::SIDECAR_IMAGE_PULL_POLICY,
            None,
            |raw| PullPolicy::parse(raw).map(Some),
        );
        let region = e.value(
            a.sidecar_region.as_deref(),
            "sidecar-region",
            env,
            vars::SIDECAR_REGION,
            None,
            |raw| Region::parse(raw).map(Some),
        );
        let mode = e.value(
            a.sidecar_mode.as_deref(),
            "sidecar-mode",
            env,
            vars::SIDECAR_MODE,
            SidecarMode::Native,
            SidecarMode::parse,
        );
        let audience = e.value(
            a.sidecar_audience.as_deref(),
            "sidecar-audience",
            env,
            vars::SIDECAR_AUDIENCE,
            d.audience,
            Audience::parse,
        );
        let token_expiration = e.value(
            a.sidecar_token_expiration.as_deref(),
            "sidecar-token-expiration",
            env,
            vars::SIDECAR_TOKEN_EXPIRATION,
            TokenExpiration::DEFAULT,
            TokenExpiration::parse,
        );
        let cpu_request = e.value(
            a.sidecar_cpu_request.as_deref(),
            "sidecar-cpu-request",
            env,
            vars::SIDECAR_CPU_REQUEST,
            d.resources.cpu_request,
            |raw| Quantity::parse(raw).map(Some),
        );
        let memory_request = e.value(
            a.sidecar_memory_request.as_deref(),
            "sidecar-memory-request",
            env,
            vars::SIDECAR_MEMORY_REQUEST,
            d.resources.memory_request,
            |raw| Quantity::parse(raw).map(Some),
        );
        let cpu_limit = e.value(
            a.sidecar_cpu_limit.as_deref(),
            "sidecar-cpu-limit",
            env,
            vars::SIDECAR_CPU_LIMIT,
            None,
            parse_limit,
        );
        let memory_limit = e.value(
            a.sidecar_memory_limit.as_deref(),
            "sidecar-memory-limit",
            env,
            vars::SIDECAR_MEMORY_LIMIT,
            d.resources.memory_limit,
            parse_limit,
        );
        for (what, request, limit) in [
            ("cpu", &cpu_request, &cpu_limit),
            ("memory", &memory_request, &memory_limit),
        ] {
            if let (Some(r), Some(l)) = (request, limit) {
                if r.value() > l.value() {
                    e.push(
                        format!("--sidecar-{what}-request / --sidecar-{what}-limit"),
                        format!(
                            "the {what} request {} is above the limit {}",
                            r.as_str(),
                            l.as_str()
                        ),
                    );
                }
            }
        }
        let log_level = e.value(
            a.sidecar_log_level.as_deref(),
            "sidecar-log-level",
            env,
            vars::SIDECAR_LOG_LEVEL,
            LogLevel::Info,
            LogLevel::parse,
        );
        let log_format = e.value(
            a.sidecar_log_format.as_deref(),
            "sidecar-log-format",
            env,
            vars::SIDECAR_LOG_FORMAT,
            LogFormat::Json,
            parse_log_format,
        );
        let run_as_user = e.value(
            a.sidecar_run_as_user.as_deref(),
            "sidecar-run-as-user",
            env,
            vars::SIDECAR_RUN_AS_USER,
            defaults::SIDECAR_RUN_AS_USER,
            parse_uid,
        );
        Self {
            image,
            image_pull_policy,
            region,
            mode,
            audience,
            token_expiration,
            resources: Resources {
                cpu_request,
                memory_request,
                cpu_limit,
                memory_limit,
            },
            log_level,
            log_format,
            run_as_user,
        }
    }
}

impl WebhookConfig {
    pub fn from_args(args: &WebhookArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut e = Errors::default();
        let fallback_addr = |raw: &str| raw.parse::<SocketAddr>().ok();
        let listen = e.value(
            args.listen.as_deref(),
            "listen",
            env,
            vars::LISTEN,
            fallback_addr(defaults::LISTEN),
            |raw| parse_addr(raw).map(Some),
        );
        let admin_listen = e.value(
            args.admin_listen.as_deref(),
            "admin-listen",
            env,
            vars::ADMIN_LISTEN,
            fallback_addr(defaults::ADMIN_LISTEN),
            |raw| parse_addr(raw).map(Some),
        );
        let cert = e.value(
            args.tls_cert_file.as_deref(),
            "tls-cert-file",
            env,
            vars::TLS_CERT_FILE,
            PathBuf::from(defaults::TLS_CERT_FILE),
            parse_path,
        );
        let key = e.value(
            args.tls_key_file.as_deref(),
            "tls-key-file",
            env,
            vars::TLS_KEY_FILE,
            PathBuf::from(defaults::TLS_KEY_FILE),
            parse_path,
        );
        let reload_interval = e.value(
            args.tls_reload_interval.as_deref(),
            "tls-reload-interval",
            env,
            vars::TLS_RELOAD_INTERVAL,
            defaults::TLS_RELOAD_INTERVAL,
            parse_positive_duration,
        );
        let on_lookup_error = e.value(
            args.on_lookup_error.as_deref(),
            "on-lookup-error",
            env,
            vars::ON_LOOKUP_ERROR,
            LookupErrorPolicy::Deny,
            LookupErrorPolicy::parse,
        );
        let lookup_timeout = e.value(
            args.lookup_timeout.as_deref(),
            "lookup-timeout",
            env,
            vars::LOOKUP_TIMEOUT,
            defaults::LOOKUP_TIMEOUT,
            parse_positive_duration,
        );
        let shutdown_grace = e.value(
            args.shutdown_grace_period.as_deref(),
            "shutdown-grace-period",
            env,
            vars::SHUTDOWN_GRACE_PERIOD,
            defaults::SHUTDOWN_GRACE_PERIOD,
            parse_positive_duration,
        );
        let sidecar = SidecarDefaults::parse(&args.sidecar, env, &mut e);
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let listen = listen.unwrap_or(unspecified);
        let admin_listen = admin_listen.unwrap_or(unspecified);
        if listen.port() != 0 && listen.port() == admin_listen.port() {
            e.push(
                "--listen / --admin-listen",
                format!(
                    "both use port {}; the webhook and its admin server need different ports",
                    listen.port()
                ),
            );
        }
        e.finish(Self {
            listen,
            admin_listen,
            tls: TlsFiles {
                cert,
                key,
                reload_interval,
            },
            on_lookup_error,
            lookup_timeout,
            shutdown_grace,
            sidecar,
        })
    }
}

impl InjectConfig {
    pub fn from_args(args: &InjectArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut e = Errors::default();
        let namespace = match args.namespace.as_deref().map(str::trim) {
            None => defaults::NAMESPACE.to_owned(),
            Some("") => {
                e.push("--namespace", "is empty");
                defaults::NAMESPACE.to_owned()
            }
            Some(ns) => ns.to_owned(),
        };
        let namespace_labels = parse_pairs(&args.namespace_labels, "namespace-label", &mut e);
        let service_account_annotations = parse_pairs(
            &args.service_account_annotations,
            "service-account-annotation",
            &mut e,
        );
        let sidecar = SidecarDefaults::parse(&args.sidecar, env, &mut e);
        e.finish(Self {
            namespace,
            namespace_labels,
            service_account_annotations,
            sidecar,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(args: WebhookArgs, env: &[(&str, &str)]) -> Result<WebhookConfig, ConfigErrors> {
        WebhookConfig::from_args(&args, &Env::from_pairs(env.iter().copied()))
    }

    #[test]
    fn defaults_are_complete_and_documented_values() {
        let c = webhook(WebhookArgs::default(), &[]).expect("defaults parse");
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9789");
        assert_eq!(c.tls.cert, PathBuf::from("/etc/bedrock-broker/tls/tls.crt"));
        assert_eq!(c.tls.reload_interval, Duration::from_secs(10));
        assert_eq!(c.on_lookup_error, LookupErrorPolicy::Deny);
        let s = &c.sidecar;
        assert_eq!(
            s.image.as_str(),
            format!(
                "ghcr.io/bedrock-broker/bedrock-broker:{}",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert_eq!(s.audience.as_str(), "sts.amazonaws.com");
        assert_eq!(s.token_expiration.seconds(), 86400);
        assert_eq!(s.mode, SidecarMode::Native);
        assert_eq!(s.region, None);
        assert_eq!(
            s.resources.memory_limit.as_ref().map(Quantity::as_str),
            Some("128Mi")
        );
        assert_eq!(s.resources.cpu_limit, None);
        assert_eq!(s.run_as_user, 65532);
        assert_eq!(s, &SidecarDefaults::default());
    }

    #[test]
    fn trusted_constants_are_valid() {
        assert!(ImageRef::parse(defaults::SIDECAR_IMAGE).is_ok());
        assert!(Audience::parse(defaults::SIDECAR_AUDIENCE).is_ok());
        let r = SidecarDefaults::default().resources;
        assert!(r.cpu_request.is_some() && r.memory_request.is_some() && r.memory_limit.is_some());
    }

    #[test]
    fn flags_win_over_environment() {
        let args = WebhookArgs {
            listen: Some("127.0.0.1:1".into()),
            sidecar: SidecarDefaultsArgs {
                sidecar_region: Some("eu-west-1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let c = webhook(
            args,
            &[
                (vars::LISTEN, "127.0.0.1:2"),
                (vars::SIDECAR_REGION, "us-east-1"),
                (vars::SIDECAR_MODE, "classic"),
            ],
        )
        .expect("parses");
        assert_eq!(c.listen.port(), 1);
        assert_eq!(
            c.sidecar.region.as_ref().map(Region::as_str),
            Some("eu-west-1")
        );
        assert_eq!(c.sidecar.mode, SidecarMode::Classic);
    }

    #[test]
    fn every_bad_value_is_reported_at_once_naming_its_origin() {
        let err = webhook(
            WebhookArgs {
                admin_listen: Some("nope".into()),
                ..Default::default()
            },
            &[
                (vars::ON_LOOKUP_ERROR, "maybe"),
                (vars::TLS_RELOAD_INTERVAL, "0s"),
                (vars::SIDECAR_TOKEN_EXPIRATION, "60"),
                (vars::SIDECAR_MEMORY_REQUEST, "1Gi"),
                (vars::SIDECAR_RUN_AS_USER, "0"),
                (vars::SIDECAR_IMAGE, "bad image"),
            ],
        )
        .unwrap_err();
        let origins: Vec<_> = err.0.iter().map(|e| e.origin.as_str()).collect();
        assert_eq!(
            origins,
            [
                "--admin-listen",
                vars::TLS_RELOAD_INTERVAL,
                vars::ON_LOOKUP_ERROR,
                vars::SIDECAR_IMAGE,
                vars::SIDECAR_TOKEN_EXPIRATION,
                "--sidecar-memory-request / --sidecar-memory-limit",
                vars::SIDECAR_RUN_AS_USER,
            ],
            "{err}"
        );
        assert!(err.to_string().contains("deny or skip"), "{err}");
    }

    #[test]
    fn listen_and_admin_on_one_port_is_refused() {
        let err = webhook(
            WebhookArgs {
                listen: Some("0.0.0.0:9789".into()),
                ..Default::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("different ports"), "{err}");
    }

    #[test]
    fn limits_can_be_removed_with_none() {
        let c = webhook(
            WebhookArgs::default(),
            &[(vars::SIDECAR_MEMORY_LIMIT, "none")],
        )
        .expect("parses");
        assert_eq!(c.sidecar.resources.memory_limit, None);
    }

    #[test]
    fn inject_pairs_must_be_key_value() {
        let args = InjectArgs {
            namespace_labels: vec!["bedrock-broker.io/inject=true".into(), "oops".into()],
            ..Default::default()
        };
        let err = InjectConfig::from_args(&args, &Env::default()).unwrap_err();
        assert_eq!(err.0[0].origin, "--namespace-label");
        let args = InjectArgs {
            namespace_labels: vec!["bedrock-broker.io/inject=true".into()],
            ..Default::default()
        };
        let c = InjectConfig::from_args(&args, &Env::default()).expect("parses");
        assert_eq!(c.namespace, "default");
        assert_eq!(
            c.namespace_labels
                .get("bedrock-broker.io/inject")
                .map(String::as_str),
            Some("true")
        );
    }
}
