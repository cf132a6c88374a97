//! Fills the configuration of `webhook` and `inject`, and the injected
//! sidecar's defaults they share.

use super::aws::Region;
use super::parse::{self, ParseError};
use super::setting::{ConfigErrors, Errors};
use super::settings::{inject as i, injected as d, policy, webhook as w};
use super::{limits, settings, Env};
use crate::cli::{
    InjectArgs, SidecarDefaultsArgs, WebhookAdminLimitArgs, WebhookArgs, WebhookLimitArgs,
};
use crate::egress::{self, EgressProxy};
use crate::server::tls::HandshakeLimits;
use crate::server::Limits;
use crate::telemetry::LogFormat;
use crate::webhook::types::{
    parse_limit, Audience, ImageRef, LogLevel, PullPolicy, Quantity, RolePolicy, SidecarMode,
    TokenExpiration,
};
use crate::webhook::{InjectConfig, Resources, SidecarDefaults};
use crate::webhook::{LookupErrorPolicy, ReviewTiming, TlsFiles, WebhookConfig};

impl SidecarDefaults {
    pub fn from_args(args: &SidecarDefaultsArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut errors = Errors::default();
        let value = sidecar_defaults(args, env, &mut errors);
        errors.finish(|| value)
    }
}

fn sidecar_defaults(a: &SidecarDefaultsArgs, env: &Env, e: &mut Errors) -> Option<SidecarDefaults> {
    let image = e.read(&d::IMAGE, a.sidecar_image.as_deref(), env, ImageRef::parse);
    let image_pull_policy = e.read_optional(
        &d::IMAGE_PULL_POLICY,
        a.sidecar_image_pull_policy.as_deref(),
        env,
        PullPolicy::parse,
    );
    let region = e.read_optional(&d::REGION, a.sidecar_region.as_deref(), env, Region::parse);
    let mode = e.read(&d::MODE, a.sidecar_mode.as_deref(), env, SidecarMode::parse);
    let audience = e.read(
        &d::AUDIENCE,
        a.sidecar_audience.as_deref(),
        env,
        Audience::parse,
    );
    let token_expiration = e.read(
        &d::TOKEN_EXPIRATION,
        a.sidecar_token_expiration.as_deref(),
        env,
        TokenExpiration::parse,
    );
    let resources = resources(a, env, e);
    let log_level = e.read(
        &d::LOG_LEVEL,
        a.sidecar_log_level.as_deref(),
        env,
        LogLevel::parse,
    );
    let log_format = e.read(
        &d::LOG_FORMAT,
        a.sidecar_log_format.as_deref(),
        env,
        LogFormat::parse,
    );
    let use_fips = e.read(
        &d::USE_FIPS,
        a.sidecar_use_fips.as_deref(),
        env,
        parse::bool,
    );
    let use_dualstack = e.read(
        &d::USE_DUALSTACK,
        a.sidecar_use_dualstack.as_deref(),
        env,
        parse::bool,
    );
    let no_proxy = d::NO_PROXY.find(a.sidecar_no_proxy.as_deref(), env);
    let egress_proxy = e.read_optional(
        &d::HTTPS_PROXY,
        a.sidecar_https_proxy.as_deref(),
        env,
        |raw| {
            EgressProxy::parse_injected(raw, no_proxy.map(|n| n.value))
                .map_err(|err| ParseError::Refused(err.to_string().into()))
        },
    );
    // Refused: the flag is only ours, and each injected sidecar would send
    // the host it meant through the proxy.
    if let (Some(raw), Some(Some(proxy))) = (no_proxy, &egress_proxy) {
        for entry in proxy.unmatchable_entries() {
            e.push(raw.origin, egress::unmatchable_entry_message(entry));
        }
    }
    // Said, not ignored: a bypass list alone does nothing.
    if let (Some(raw), Some(None)) = (no_proxy, &egress_proxy) {
        e.push(
            raw.origin,
            format!(
                "has no effect without --{}: sidecars go direct",
                d::HTTPS_PROXY.flag
            ),
        );
    }
    let ca_bundle = e.read_optional(&d::CA_BUNDLE, a.sidecar_ca_bundle.as_deref(), env, |path| {
        crate::webhook::ca_bundle::read(path).map(Into::into)
    });
    let run_as_user = e.read(
        &d::RUN_AS_USER,
        a.sidecar_run_as_user.as_deref(),
        env,
        parse::uid,
    );
    let role_policy = e.read(
        &policy::ROLE_POLICY,
        a.role_policy.as_deref(),
        env,
        RolePolicy::parse,
    );
    Some(SidecarDefaults {
        role_policy: role_policy?,
        image: image?,
        image_pull_policy: image_pull_policy?,
        region: region?,
        mode: mode?,
        audience: audience?,
        token_expiration: token_expiration?,
        resources: resources?,
        log_level: log_level?,
        log_format: log_format?,
        use_fips: use_fips?,
        use_dualstack: use_dualstack?,
        egress_proxy: egress_proxy?,
        ca_bundle: ca_bundle?,
        run_as_user: run_as_user?,
    })
}

/// Requests and limits; a request above its limit is a problem of both flags.
fn resources(a: &SidecarDefaultsArgs, env: &Env, e: &mut Errors) -> Option<Resources> {
    let cpu_request = e.read(
        &d::CPU_REQUEST,
        a.sidecar_cpu_request.as_deref(),
        env,
        Quantity::parse,
    );
    let memory_request = e.read(
        &d::MEMORY_REQUEST,
        a.sidecar_memory_request.as_deref(),
        env,
        Quantity::parse,
    );
    let cpu_limit = e.read(
        &d::CPU_LIMIT,
        a.sidecar_cpu_limit.as_deref(),
        env,
        parse_limit,
    );
    let memory_limit = e.read(
        &d::MEMORY_LIMIT,
        a.sidecar_memory_limit.as_deref(),
        env,
        parse_limit,
    );
    let resources = Resources {
        cpu_request: cpu_request.clone(),
        memory_request: memory_request.clone(),
        cpu_limit: cpu_limit.clone().flatten(),
        memory_limit: memory_limit.clone().flatten(),
    };
    for problem in resources.problems() {
        e.push(
            format!(
                "--sidecar-{0}-request / --sidecar-{0}-limit",
                problem.resource
            ),
            format!(
                "the {} request {} is above the limit {}",
                problem.resource, problem.request, problem.limit
            ),
        );
    }
    if let Some(limit) = resources.memory_limit_below_floor() {
        e.push(
            d::MEMORY_LIMIT.origin(),
            format!("{limit} is below the 32Mi the sidecar runs in (about 10 MiB idle, 18 MiB busy, and room for request bodies): every pod would be refused"),
        );
    }
    // Both requests have defaults: `None` means one was invalid.
    Some(Resources {
        cpu_request: Some(cpu_request?),
        memory_request: Some(memory_request?),
        cpu_limit: cpu_limit?,
        memory_limit: memory_limit?,
    })
}

impl WebhookConfig {
    pub fn from_args(args: &WebhookArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut e = Errors::reading(env);
        let listen = e.read(&w::LISTEN, args.listen.as_deref(), env, parse::addr);
        let admin_listen = e.read(
            &w::ADMIN_LISTEN,
            args.admin_listen.as_deref(),
            env,
            parse::addr,
        );
        let tls = tls_files(args, env, &mut e);
        let serving = serving(args, env, &mut e);
        let on_lookup_error = e.read(
            &w::ON_LOOKUP_ERROR,
            args.on_lookup_error.as_deref(),
            env,
            LookupErrorPolicy::parse,
        );
        let lookup_timeout = e.read(
            &w::LOOKUP_TIMEOUT,
            args.lookup_timeout.as_deref(),
            env,
            parse::positive_duration,
        );
        let shutdown_grace = e.read(
            &w::SHUTDOWN_GRACE_PERIOD,
            args.shutdown_grace_period.as_deref(),
            env,
            parse::positive_duration,
        );
        let shutdown_delay = e.read(
            &w::SHUTDOWN_DELAY,
            args.shutdown_delay.as_deref(),
            env,
            parse::duration,
        );
        let sidecar = sidecar_defaults(&args.sidecar, env, &mut e);
        if let (Some(l), Some(a)) = (listen, admin_listen) {
            if l.port() != 0 && l.port() == a.port() {
                e.push(
                    "--listen / --admin-listen",
                    format!(
                        "both use port {}; the webhook and its admin server need different ports",
                        l.port()
                    ),
                );
            }
        }
        e.finish(|| {
            let serving = serving?;
            Some(Self {
                listen: listen?,
                admin_listen: admin_listen?,
                tls: tls?,
                limits: serving.limits,
                handshake: serving.handshake,
                admin_limits: serving.admin_limits,
                review_timing: serving.review_timing,
                review_budget: serving.review_budget,
                on_lookup_error: on_lookup_error?,
                lookup_timeout: lookup_timeout?,
                shutdown_grace: shutdown_grace?,
                shutdown_delay: shutdown_delay?,
                sidecar: sidecar?,
            })
        })
    }
}

fn tls_files(args: &WebhookArgs, env: &Env, e: &mut Errors) -> Option<TlsFiles> {
    let cert = e.read(
        &w::TLS_CERT_FILE,
        args.tls_cert_file.as_deref(),
        env,
        parse::path,
    );
    let key = e.read(
        &w::TLS_KEY_FILE,
        args.tls_key_file.as_deref(),
        env,
        parse::path,
    );
    let reload_interval = e.read(
        &w::TLS_RELOAD_INTERVAL,
        args.tls_reload_interval.as_deref(),
        env,
        parse::interval(std::time::Duration::from_secs(1)),
    );
    Some(TlsFiles {
        cert: cert?,
        key: key?,
        reload_interval: reload_interval?,
    })
}

/// How the webhook's two listeners bound their clients.
struct Serving {
    limits: Limits,
    handshake: HandshakeLimits,
    admin_limits: Limits,
    review_timing: ReviewTiming,
    review_budget: usize,
}

/// Handshakes in progress at once: one per connection slot is the most that
/// can ever be useful.
fn serving(args: &WebhookArgs, env: &Env, e: &mut Errors) -> Option<Serving> {
    let limits = limits::limits(
        limits::Listener {
            settings: &WebhookLimitArgs::SETTINGS,
            flags: args.limits.values(),
            per_peer: None,
            http2: false,
        },
        env,
        e,
    );
    let per_peer = e.read(
        &settings::limits::WEBHOOK_PER_PEER,
        args.max_connections_per_peer.as_deref(),
        env,
        parse::positive_count,
    );
    let handshake_timeout = e.read(
        &settings::limits::WEBHOOK_TLS_HANDSHAKE_TIMEOUT,
        args.tls_handshake_timeout.as_deref(),
        env,
        parse::positive_duration,
    );
    let admin_limits = limits::limits(
        limits::Listener {
            settings: &WebhookAdminLimitArgs::SETTINGS,
            flags: args.admin_limits.values(),
            per_peer: Some((
                &settings::limits::WEBHOOK_ADMIN_PER_PEER,
                args.admin_max_connections_per_peer.as_deref(),
            )),
            http2: false,
        },
        env,
        e,
    );
    let body_read_timeout = e.read(
        &w::BODY_READ_TIMEOUT,
        args.body_read_timeout.as_deref(),
        env,
        parse::positive_duration,
    );
    let body_read_deadline = e.read(
        &w::BODY_READ_DEADLINE,
        args.body_read_deadline.as_deref(),
        env,
        parse::positive_duration,
    );
    let review_budget = e.read(
        &w::REVIEW_BUDGET,
        args.review_budget.as_deref(),
        env,
        review_budget,
    );
    let per_peer = per_peer?;
    // Counted twice: by the TLS listener from the first byte (handshakes
    // included), and by the server once the handshake is done, where a
    // full listener makes room for a peer below its share, as on the admin
    // ports: pods each within their share can together fill every slot,
    // and the API server needs one.
    let limits = Limits {
        max_connections_per_peer: Some(per_peer),
        ..limits?
    };
    Some(Serving {
        handshake: HandshakeLimits {
            timeout: handshake_timeout?,
            max_pending: limits.max_connections,
            per_peer: Some(per_peer),
        },
        limits,
        admin_limits: admin_limits?,
        review_timing: ReviewTiming {
            silence: body_read_timeout?,
            deadline: body_read_deadline?,
        },
        review_budget: review_budget?,
    })
}

impl InjectConfig {
    pub fn from_args(args: &InjectArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut e = Errors::reading(env);
        let namespace = e.read(&i::NAMESPACE, args.namespace.as_deref(), env, |raw| {
            parse::path(raw).map(|_| raw.to_owned())
        });
        let namespace_labels = parse::pairs(&args.namespace_labels)
            .map_err(|err| e.push(format!("--{}", i::NAMESPACE_LABEL.flag), err))
            .ok();
        let service_account_annotations = parse::pairs(&args.service_account_annotations)
            .map_err(|err| e.push(format!("--{}", i::SERVICE_ACCOUNT_ANNOTATION.flag), err))
            .ok();
        let exclude_namespaces = e.read(
            &i::EXCLUDE_NAMESPACES,
            args.exclude_namespaces.as_deref(),
            env,
            |raw| Ok(parse::list(raw)),
        );
        let sidecar = sidecar_defaults(&args.sidecar, env, &mut e);
        e.finish(|| {
            Some(Self {
                exclude_namespaces: exclude_namespaces?,
                namespace: namespace?,
                namespace_labels: namespace_labels?,
                service_account_annotations: service_account_annotations?,
                sidecar: sidecar?,
            })
        })
    }
}

/// At least one review of the largest size: a smaller budget would refuse
/// the largest pods the API server sends.
fn review_budget(raw: &str) -> Result<usize, ParseError> {
    let bytes = parse::positive_count(raw)?;
    let least = crate::webhook::MAX_REVIEW_BYTES;
    if bytes < least {
        return Err(ParseError::Refused(
            format!(
                "{bytes} bytes is less than one review of the largest size ({least} bytes, 8 MiB)"
            )
            .into(),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;

    fn webhook(args: WebhookArgs, env: &[(&str, &str)]) -> Result<WebhookConfig, ConfigErrors> {
        WebhookConfig::from_args(&args, &Env::from_pairs(env.iter().copied()))
    }

    #[test]
    fn defaults_are_complete_and_the_documented_values() {
        let c = webhook(WebhookArgs::default(), &[]).expect("defaults parse");
        assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9789");
        assert_eq!(c.tls.cert, PathBuf::from("/etc/bedrock-broker/tls/tls.crt"));
        assert_eq!(c.tls.reload_interval, Duration::from_secs(10));
        assert_eq!(c.on_lookup_error, LookupErrorPolicy::Deny);
        assert_eq!(c.shutdown_delay, Duration::from_secs(5));
        assert_eq!(c.handshake.per_peer, Some(128));
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
            s.resources.cpu_request.as_ref().map(Quantity::as_str),
            Some("10m")
        );
        assert_eq!(
            s.resources.memory_limit.as_ref().map(Quantity::as_str),
            Some("128Mi")
        );
        assert_eq!(s.resources.cpu_limit, None);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.run_as_user, 65532);
        assert_eq!(s.role_policy, RolePolicy::Any);
    }

    #[test]
    fn a_review_budget_below_one_review_is_refused() {
        // It was raised to 8 MiB without a word: the configuration said
        // one thing and the webhook did another.
        let err = webhook(
            WebhookArgs::default(),
            &[("BEDROCK_BROKER_WEBHOOK_REVIEW_BUDGET", "1048576")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("REVIEW_BUDGET") && err.contains("8 MiB"),
            "{err}"
        );
        let c = webhook(
            WebhookArgs::default(),
            &[("BEDROCK_BROKER_WEBHOOK_REVIEW_BUDGET", "8388608")],
        )
        .expect("one review fits");
        assert_eq!(c.review_budget, 8388608);
    }

    #[test]
    fn the_role_policy_is_read_and_checked() {
        let c = webhook(
            WebhookArgs::default(),
            &[(policy::ROLE_POLICY.var(), "service-account")],
        )
        .expect("parses");
        assert_eq!(c.sidecar.role_policy, RolePolicy::ServiceAccount);
        let err = webhook(
            WebhookArgs::default(),
            &[(policy::ROLE_POLICY.var(), "pod")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("service-account or any"), "{err}");
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
                (w::LISTEN.var(), "127.0.0.1:2"),
                (d::REGION.var(), "us-east-1"),
                (d::MODE.var(), "classic"),
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
                (w::ON_LOOKUP_ERROR.var(), "maybe"),
                (w::TLS_RELOAD_INTERVAL.var(), "0s"),
                (d::TOKEN_EXPIRATION.var(), "60"),
                (d::MEMORY_REQUEST.var(), "1Gi"),
                (d::RUN_AS_USER.var(), "0"),
                (d::USE_FIPS.var(), "maybe"),
                (d::HTTPS_PROXY.var(), "http://u:hunter2@proxy.corp:3128"),
                (d::IMAGE.var(), "bad image"),
            ],
        )
        .unwrap_err();
        let origins: Vec<_> = err.0.iter().map(|e| e.origin.as_str()).collect();
        assert_eq!(
            origins,
            [
                "--admin-listen",
                w::TLS_RELOAD_INTERVAL.var(),
                w::ON_LOOKUP_ERROR.var(),
                d::IMAGE.var(),
                d::TOKEN_EXPIRATION.var(),
                "--sidecar-memory-request / --sidecar-memory-limit",
                d::USE_FIPS.var(),
                d::HTTPS_PROXY.var(),
                d::RUN_AS_USER.var(),
            ],
            "{err}"
        );
        assert!(err.to_string().contains("deny or skip"), "{err}");
    }

    #[test]
    fn the_sidecars_trust_bundle_must_fit_in_their_environment() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["proxy.corp".to_owned()]).unwrap();
        let one = cert.cert.pem();
        let write = |name: &str, copies: usize| {
            let path = dir.path().join(name);
            std::fs::write(&path, one.repeat(copies)).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let small = write("small.pem", 2);
        let c = webhook(WebhookArgs::default(), &[(d::CA_BUNDLE.var(), &small)]).unwrap();
        assert_eq!(
            c.sidecar.ca_bundle.map(|b| b.current().pem.len()),
            Some(2 * one.len())
        );
        // A whole public root store is ~200 KiB: past Linux's 128 KiB a
        // variable, no injected container could start.
        let large = write("large.pem", 64 * 1024 / one.len() + 1);
        let err = webhook(WebhookArgs::default(), &[(d::CA_BUNDLE.var(), &large)]).unwrap_err();
        assert!(err.to_string().contains("at most 65536"), "{err}");
        // Only the certificates travel: a key given by mistake stops the
        // webhook rather than reach every pod spec; comments and CRLF go.
        let key = cert.signing_key.serialize_pem();
        let path = dir.path().join("with-key.pem");
        std::fs::write(&path, format!("{one}{key}")).unwrap();
        let with_key = path.to_str().unwrap();
        let err = webhook(WebhookArgs::default(), &[(d::CA_BUNDLE.var(), with_key)]).unwrap_err();
        assert!(err.to_string().contains("holds a private key"), "{err}");
        assert!(!err.to_string().contains("PRIVATE KEY-----"), "{err}");
        let path = dir.path().join("annotated.pem");
        let annotated = format!(
            "# corporate proxy CA\r\n{}\r\nsubject=...\r\n",
            one.replace('\n', "\r\n")
        );
        std::fs::write(&path, annotated).unwrap();
        let c = webhook(
            WebhookArgs::default(),
            &[(d::CA_BUNDLE.var(), path.to_str().unwrap())],
        );
        let pem = c.unwrap().sidecar.ca_bundle.unwrap().current().pem.clone();
        assert_eq!(String::from_utf8(pem).unwrap(), one);
        let path = dir.path().join("bom.pem");
        std::fs::write(&path, format!("\u{feff}{one}")).unwrap();
        let c = webhook(
            WebhookArgs::default(),
            &[(d::CA_BUNDLE.var(), path.to_str().unwrap())],
        );
        assert_eq!(
            c.unwrap().sidecar.ca_bundle.unwrap().current().pem,
            one.as_bytes()
        );
        let path = dir.path().join("crl-only.pem");
        std::fs::write(
            &path,
            "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n",
        )
        .unwrap();
        let crl = path.to_str().unwrap();
        let err = webhook(WebhookArgs::default(), &[(d::CA_BUNDLE.var(), crl)]).unwrap_err();
        let expected = format!("{crl} holds no PEM certificate (only CERTIFICATE blocks are used)");
        assert!(err.to_string().contains(&expected), "{err}");
        // Every injected sidecar would refuse it (and panicked on it).
        let path = dir.path().join("torn.pem");
        std::fs::write(
            &path,
            format!("{one}-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"),
        )
        .unwrap();
        let torn = path.to_str().unwrap();
        let err = webhook(WebhookArgs::default(), &[(d::CA_BUNDLE.var(), torn)]).unwrap_err();
        assert!(
            err.to_string()
                .contains("certificate 2 of 2 cannot be read"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().unwrap();
        let err = webhook(WebhookArgs::default(), &[(d::CA_BUNDLE.var(), missing)]).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn a_bypass_list_without_a_proxy_is_refused() {
        let err = webhook(WebhookArgs::default(), &[(d::NO_PROXY.var(), ".internal")]).unwrap_err();
        assert_eq!(
            err.0.iter().map(|e| e.origin.as_str()).collect::<Vec<_>>(),
            [d::NO_PROXY.var()]
        );
        assert!(err
            .to_string()
            .contains("has no effect without --sidecar-https-proxy"));
        let both = [
            (d::NO_PROXY.var(), ".internal"),
            (d::HTTPS_PROXY.var(), "proxy:3128"),
        ];
        assert!(webhook(WebhookArgs::default(), &both).is_ok());
    }

    #[test]
    fn a_bypass_entry_that_matches_no_host_is_refused() {
        let given = [
            (d::NO_PROXY.var(), ".internal, https://bedrock.internal"),
            (d::HTTPS_PROXY.var(), "proxy:3128"),
        ];
        let err = webhook(WebhookArgs::default(), &given).unwrap_err();
        assert_eq!(
            err.0.iter().map(|e| e.origin.as_str()).collect::<Vec<_>>(),
            [d::NO_PROXY.var()]
        );
        assert!(
            err.to_string()
                .contains("\"https://bedrock.internal\" matches no host"),
            "{err}"
        );
    }

    #[test]
    fn certificates_are_not_reread_in_a_busy_loop() {
        // Every nanosecond kept the webhook at 80 % of a core.
        for (interval, refused) in [("1ns", true), ("999ms", true), ("1s", false)] {
            let result = webhook(
                WebhookArgs::default(),
                &[(w::TLS_RELOAD_INTERVAL.var(), interval)],
            );
            match result {
                Err(e) if refused => assert!(e.to_string().contains("must be at least 1s"), "{e}"),
                Ok(_) if !refused => {}
                other => panic!("{interval}: {:?}", other.err()),
            }
        }
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
        let c =
            webhook(WebhookArgs::default(), &[(d::MEMORY_LIMIT.var(), "none")]).expect("parses");
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
        assert_eq!(c.exclude_namespaces, ["kube-system", "bedrock-broker"]);
        assert_eq!(
            c.namespace_labels
                .get("bedrock-broker.io/inject")
                .map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn a_default_memory_limit_no_sidecar_runs_in_stops_the_start() {
        let err = webhook(
            WebhookArgs::default(),
            &[
                (d::MEMORY_REQUEST.var(), "16Mi"),
                (d::MEMORY_LIMIT.var(), "24Mi"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(d::MEMORY_LIMIT.var()) && err.contains("24Mi is below the 32Mi"),
            "{err}"
        );
        assert!(webhook(WebhookArgs::default(), &[(d::MEMORY_LIMIT.var(), "32Mi")]).is_ok());
        assert!(webhook(WebhookArgs::default(), &[(d::MEMORY_LIMIT.var(), "none")]).is_ok());
    }
}
