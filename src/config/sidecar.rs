//! Assembles `bedrock-broker sidecar`'s configuration from the parts.

use std::time::Duration;

use super::parse::{self, ParseError};
use super::setting::{ConfigErrors, Errors, Setting};
use super::settings::sidecar as s;
use super::{credentials, endpoints, gate, limits, listeners, Env};
use crate::cli::{CredentialsLimitArgs, SidecarArgs};
use crate::container_credentials::ContainerCredentialsConfig;
use crate::credentials::{CredentialMode, CredentialsConfig, RefreshPolicy};
use crate::proxy::{self, UsageLabels};
use crate::sidecar::SidecarConfig;

/// Distinct `model` label values before the rest become `other`.
const USAGE_MAX_MODELS: usize = 20;

/// How long a request waits for fresher (or the first) credentials: one
/// refresh, an STS round trip per hop (two with a chained role), plus the
/// refresher's limit on forced refreshes.
fn self_heal_wait(credentials: &CredentialsConfig) -> std::time::Duration {
    let hops = if credentials.chain.is_some() { 2 } else { 1 };
    credentials.sts.timeout * hops + std::time::Duration::from_secs(1)
}

impl CredentialsConfig {
    /// The configuration of `bedrock-broker credentials`.
    pub fn from_args(args: &crate::cli::CredentialsArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut errors = Errors::reading(env);
        let plaintext = endpoints::plaintext_allowed(
            args.allow_plaintext_upstream.as_deref(),
            env,
            &mut errors,
        );
        let (_, config) = credentials::parse(&args.aws, env, plaintext, &mut errors);
        let fips = errors.read(&s::USE_FIPS, args.use_fips.as_deref(), env, parse::bool);
        let dualstack = errors.read(
            &s::USE_DUALSTACK,
            args.use_dualstack.as_deref(),
            env,
            parse::bool,
        );
        errors.finish(|| {
            let mut config = config?;
            config.sts.use_fips = fips?;
            config.sts.use_dualstack = dualstack?;
            Some(config)
        })
    }
}

impl SidecarConfig {
    pub fn from_args(args: &SidecarArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut e = Errors::reading(env);
        let plaintext =
            endpoints::plaintext_allowed(args.allow_plaintext_upstream.as_deref(), env, &mut e);
        let (region, credentials) = credentials::parse(&args.aws, env, plaintext, &mut e);
        let listeners = listeners::listeners(args, env, &mut e);
        // SigV4 already said a region is required.
        let region_reported = matches!(
            credentials.as_ref().map(|c| &c.mode),
            Some(CredentialMode::SigV4(_))
        );
        let routes = endpoints::routes(
            args,
            env,
            region.as_ref(),
            region_reported,
            plaintext,
            &mut e,
        );
        let upstream = upstream(args, env, &mut e);
        let mut warnings = Vec::new();
        let gate = gate::gate(args, env, &mut e, &mut warnings);
        if let (Some(u), Some(g)) = (&upstream, &gate) {
            if g.body_budget < u.max_body_bytes {
                e.push(
                    s::REQUEST_BODY_BUDGET.origin(),
                    format!(
                        "{} bytes cannot hold one body of --max-body-bytes ({} bytes); raise it or lower --max-body-bytes",
                        g.body_budget, u.max_body_bytes
                    ),
                );
            }
        }
        let shutdown_grace = e.read(
            &s::SHUTDOWN_GRACE_PERIOD,
            args.shutdown_grace_period.as_deref(),
            env,
            parse::duration,
        );
        let shutdown_delay = e.read(
            &s::SHUTDOWN_DELAY,
            args.shutdown_delay.as_deref(),
            env,
            parse::duration,
        );
        let refresh = refresh_policy(args, env, &mut e);
        let token_watch_interval = e.read(
            &s::TOKEN_WATCH_INTERVAL,
            args.token_watch_interval.as_deref(),
            env,
            parse::optional_interval(Duration::from_millis(100)),
        );
        let usage = usage_labels(args, env, &mut e);
        let container_credentials = container_credentials(args, env, credentials.as_ref(), &mut e);
        listeners::shared_ports(
            &mut e,
            &[
                (&s::LISTEN, listeners.as_ref().map(|l| l.proxy)),
                (&s::ADMIN_LISTEN, listeners.as_ref().map(|l| l.admin)),
                (
                    &s::CREDENTIALS_LISTEN,
                    container_credentials
                        .as_ref()
                        .and_then(|c| c.as_ref().map(|c| c.listen)),
                ),
            ],
        );

        // FIPS and dual-stack hold for STS as for Bedrock, as in the AWS
        // SDKs; a bad value was reported with the routes.
        let on = |setting: &Setting, raw: Option<&str>| {
            setting
                .find(raw, env)
                .is_some_and(|raw| parse::bool(raw.value).unwrap_or(false))
        };
        let sts_fips = on(&s::USE_FIPS, args.use_fips.as_deref());
        let sts_dualstack = on(&s::USE_DUALSTACK, args.use_dualstack.as_deref());
        e.finish(|| {
            let mut credentials = credentials?;
            credentials.sts.use_fips = sts_fips;
            credentials.sts.use_dualstack = sts_dualstack;
            let listeners = listeners?;
            let upstream = upstream?;
            let proxy = proxy::Config {
                routes: routes?,
                region: credentials.region.clone(),
                api_key: match &credentials.mode {
                    CredentialMode::ApiKey(key) => Some(key.clone()),
                    CredentialMode::SigV4(_) => None,
                },
                max_body_bytes: upstream.max_body_bytes,
                connect_timeout: upstream.connect_timeout,
                response_header_timeout: upstream.response_header_timeout,
                stream_idle_timeout: upstream.stream_idle_timeout,
                self_heal_wait: self_heal_wait(&credentials),
                usage: usage?,
                gate: gate?,
                upstream_max_idle: upstream.max_idle,
            };
            Some(SidecarConfig {
                listen: listeners.proxy,
                admin_listen: listeners.admin,
                proxy_limits: listeners.proxy_limits,
                admin_limits: listeners.admin_limits,
                shutdown_grace: shutdown_grace?,
                shutdown_delay: shutdown_delay?,
                refresh: refresh?,
                token_watch_interval: token_watch_interval?,
                container_credentials: container_credentials?,
                credentials,
                proxy,
                warnings,
            })
        })
    }
}

/// How the proxy talks to Bedrock.
struct UpstreamSettings {
    max_body_bytes: usize,
    connect_timeout: Duration,
    response_header_timeout: Option<Duration>,
    stream_idle_timeout: Option<Duration>,
    max_idle: usize,
}

fn upstream(args: &SidecarArgs, env: &Env, e: &mut Errors) -> Option<UpstreamSettings> {
    let max_body_bytes = e.read(
        &s::MAX_BODY_BYTES,
        args.max_body_bytes.as_deref(),
        env,
        |raw| match parse::positive_count(raw) {
            Ok(n) if u32::try_from(n).is_ok() => Ok(n),
            // The body budget reserves a body in one go, at most u32::MAX
            // bytes: a larger one would be "busy" for ever, not 413. (A
            // count past any limit says the general one: this is lower.)
            Ok(_) | Err(ParseError::Refused(_)) => Err(ParseError::refused(format!(
                "must be at most {} (4 GiB; Bedrock takes 25 MB)",
                u32::MAX
            ))),
            Err(e) => Err(e),
        },
    );
    let connect_timeout = e.read(
        &s::CONNECT_TIMEOUT,
        args.connect_timeout.as_deref(),
        env,
        parse::positive_duration,
    );
    let response_header_timeout = e.read(
        &s::RESPONSE_HEADER_TIMEOUT,
        args.response_header_timeout.as_deref(),
        env,
        parse::optional_duration,
    );
    let stream_idle_timeout = e.read(
        &s::STREAM_IDLE_TIMEOUT,
        args.stream_idle_timeout.as_deref(),
        env,
        parse::optional_duration,
    );
    let max_idle = e.read(
        &s::UPSTREAM_MAX_IDLE,
        args.upstream_max_idle.as_deref(),
        env,
        parse::count,
    );
    Some(UpstreamSettings {
        max_body_bytes: max_body_bytes?,
        connect_timeout: connect_timeout?,
        response_header_timeout: response_header_timeout?,
        stream_idle_timeout: stream_idle_timeout?,
        max_idle: max_idle?,
    })
}

fn refresh_policy(args: &SidecarArgs, env: &Env, e: &mut Errors) -> Option<RefreshPolicy> {
    let fraction = e.read(
        &s::REFRESH_FRACTION,
        args.refresh_fraction.as_deref(),
        env,
        parse::fraction,
    );
    let jitter = e.read(
        &s::REFRESH_JITTER,
        args.refresh_jitter.as_deref(),
        env,
        jitter_fraction,
    );
    let backoff_cap = e.read(
        &s::REFRESH_MAX_BACKOFF,
        args.refresh_max_backoff.as_deref(),
        env,
        parse::positive_duration,
    );
    let cold_start_backoff_cap = e.read(
        &s::REFRESH_COLD_START_MAX_BACKOFF,
        args.refresh_cold_start_max_backoff.as_deref(),
        env,
        parse::positive_duration,
    );
    // Given, a cap above the other would be cut to it without a word; by
    // default it follows a lower --refresh-max-backoff, as documented.
    let cold_start_given =
        s::REFRESH_COLD_START_MAX_BACKOFF.find(args.refresh_cold_start_max_backoff.as_deref(), env);
    if let (Some(given), Some(cold), Some(cap)) =
        (cold_start_given, cold_start_backoff_cap, backoff_cap)
    {
        if cold > cap {
            e.push(
                given.origin,
                format!(
                    "{} is longer than --{} ({}): a pod holding no credentials would retry less often than one holding some",
                    humantime::format_duration(cold),
                    s::REFRESH_MAX_BACKOFF.flag,
                    humantime::format_duration(cap)
                ),
            );
        }
    }
    let (fraction, jitter) = (fraction?, jitter?);
    if jitter >= fraction {
        // Jitter past the fraction would schedule refreshes at once.
        e.push(
            s::REFRESH_JITTER.origin(),
            format!("{jitter} is not below the refresh fraction {fraction}"),
        );
        return None;
    }
    Some(RefreshPolicy {
        fraction,
        jitter,
        backoff_cap: backoff_cap?,
        cold_start_backoff_cap: cold_start_backoff_cap?,
        ..RefreshPolicy::default()
    })
}

/// A fraction in [0, 1): zero turns jitter off.
fn jitter_fraction(raw: &str) -> Result<f64, ParseError> {
    match raw.parse::<f64>() {
        Ok(f) if (0.0..1.0).contains(&f) => Ok(f),
        _ => Err(ParseError::not_a(
            raw,
            "a jitter fraction",
            "a number from 0 up to (not including) 1, e.g. 0.2",
        )),
    }
}

fn usage_labels(args: &SidecarArgs, env: &Env, e: &mut Errors) -> Option<UsageLabels> {
    let on = e.read(
        &s::USAGE_METRICS,
        args.usage_metrics.as_deref(),
        env,
        parse::bool,
    )?;
    let models = s::USAGE_MODELS
        .find(args.usage_models.as_deref(), env)
        .map(|raw| parse::list(raw.value));
    Some(match (on, models) {
        (false, _) => UsageLabels::Off,
        (true, Some(allow)) => UsageLabels::AllowList(allow),
        (true, None) => UsageLabels::FirstSeen(USAGE_MAX_MODELS),
    })
}

/// The optional container-credentials endpoint: `Some(None)` when off,
/// `None` when its settings are invalid.
fn container_credentials(
    args: &SidecarArgs,
    env: &Env,
    credentials: Option<&CredentialsConfig>,
    e: &mut Errors,
) -> Option<Option<ContainerCredentialsConfig>> {
    let listen_raw = s::CREDENTIALS_LISTEN.find(args.credentials_listen.as_deref(), env);
    let token_raw = s::CREDENTIALS_TOKEN_FILE.find(args.credentials_token_file.as_deref(), env);
    // Checked even while the endpoint is off: a bad value would otherwise
    // surface only the day someone turns it on.
    let limits = limits::limits(
        limits::Listener {
            settings: &CredentialsLimitArgs::SETTINGS,
            flags: args.credentials_limits.values(),
            per_peer: None,
            http2: false,
        },
        env,
        e,
    );
    let listen = match listen_raw {
        None => None,
        Some(raw) => Some(e.parse(raw, |value| {
            let addr = parse::addr(value)?;
            if addr.ip().is_loopback() {
                Ok(addr)
            } else {
                Err(ParseError::refused(format!(
                    "{value:?} is not a loopback address; the endpoint hands out credentials, so it must stay inside the pod"
                )))
            }
        })?),
    };
    match (listen, token_raw) {
        (None, None) => Some(None),
        (None, Some(token)) => {
            e.push(
                token.origin,
                format!("is set without {}", s::CREDENTIALS_LISTEN.origin()),
            );
            None
        }
        (Some(_), None) => {
            e.push(
                s::CREDENTIALS_TOKEN_FILE.origin(),
                "is required with --credentials-listen: SDKs must present the token (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
            );
            None
        }
        (Some(_), Some(_))
            if matches!(
                credentials.map(|c| &c.mode),
                Some(CredentialMode::ApiKey(_))
            ) =>
        {
            e.push(
                listen_raw.map_or_else(|| s::CREDENTIALS_LISTEN.origin(), |r| r.origin.to_string()),
                "needs SigV4 credentials; API-key mode has none to share",
            );
            None
        }
        (Some(listen), Some(token)) => Some(Some(ContainerCredentialsConfig {
            listen,
            token_file: token.value.into(),
            limits: limits?,
        })),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::uri::Scheme;

    use super::*;
    use crate::config::setting::ConfigErrors;
    use crate::credentials::SigV4Source;

    fn sidecar(env: &[(&str, &str)]) -> Result<SidecarConfig, ConfigErrors> {
        SidecarConfig::from_args(
            &SidecarArgs::default(),
            &Env::from_pairs(env.iter().copied()),
        )
    }

    const IRSA: [(&str, &str); 3] = [
        ("AWS_REGION", "eu-west-1"),
        ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "/var/run/secrets/eks.amazonaws.com/serviceaccount/token",
        ),
    ];

    fn origins(e: &ConfigErrors) -> Vec<String> {
        e.0.iter().map(|e| e.origin.clone()).collect()
    }

    #[test]
    fn trust_anchors_come_from_a_file_or_as_text_or_both() {
        let pem = |name: &str| {
            let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
            cert.cert.pem()
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, pem("a.example")).unwrap();
        let file = file.to_str().unwrap();
        let text = pem("b.example");
        let with = |extra: &[(&str, &str)]| {
            let mut env = IRSA.to_vec();
            env.extend_from_slice(extra);
            sidecar(&env)
        };
        let count = |c: SidecarConfig| {
            let bundle = c.credentials.ca_bundle.expect("a bundle");
            crate::tls::pem::certificates(&bundle.pem, std::path::Path::new("x"))
                .unwrap()
                .len()
        };
        assert_eq!(count(with(&[("AWS_CA_BUNDLE", file)]).unwrap()), 1);
        assert_eq!(
            count(with(&[("BEDROCK_BROKER_CA_BUNDLE_PEM", &text)]).unwrap()),
            1
        );
        let both = [
            ("AWS_CA_BUNDLE", file),
            ("BEDROCK_BROKER_CA_BUNDLE_PEM", &text),
        ];
        assert_eq!(count(with(&both).unwrap()), 2);
        let e = with(&[("BEDROCK_BROKER_CA_BUNDLE_PEM", "not a certificate")]).unwrap_err();
        assert_eq!(origins(&e), ["BEDROCK_BROKER_CA_BUNDLE_PEM"]);
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        // PEM, but no certificate: a line lost in a paste. The STS client's
        // TLS layer panicked on it.
        let torn =
            format!("{text}-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n");
        let e = with(&[("BEDROCK_BROKER_CA_BUNDLE_PEM", &torn)]).unwrap_err();
        assert_eq!(origins(&e), ["BEDROCK_BROKER_CA_BUNDLE_PEM"]);
        assert!(
            e.to_string()
                .contains("certificate 2 of 2 cannot be read: BadEncoding"),
            "{e}"
        );
        assert!(!e.to_string().contains("peer"), "{e}");
    }

    #[test]
    fn the_egress_proxy_comes_from_the_standard_variables() {
        let with = |extra: &[(&str, &str)]| {
            let mut env = IRSA.to_vec();
            env.extend_from_slice(extra);
            sidecar(&env)
        };
        assert!(with(&[]).unwrap().credentials.egress_proxy.is_none());
        let c = with(&[
            ("https_proxy", "http://u:hunter2@proxy.corp:3128"),
            ("NO_PROXY", " .internal "),
        ]);
        let p = c.unwrap().credentials.egress_proxy.unwrap();
        assert_eq!(
            (p.address(), p.no_proxy()),
            ("proxy.corp:3128", ".internal")
        );
        let c = with(&[("HTTPS_PROXY", "proxy.a:1"), ("https_proxy", "proxy.b:2")]);
        assert_eq!(
            c.unwrap().credentials.egress_proxy.unwrap().address(),
            "proxy.a:1"
        );
        let all_direct = with(&[("HTTPS_PROXY", "proxy.a:1"), ("NO_PROXY", "*")]);
        assert!(all_direct.unwrap().credentials.egress_proxy.is_none());
        let e = with(&[("HTTPS_PROXY", "https://u:hunter2@proxy.corp:3128")]).unwrap_err();
        assert_eq!(origins(&e), ["HTTPS_PROXY"]);
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn a_secret_given_to_the_wrong_setting_is_not_repeated() {
        let key = "ABSKQmVkcm9ja0FQSUtleS1hYmNkZWYxMjM0NTY3ODkw";
        let env = [
            ("AWS_REGION", key),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
            ("BEDROCK_BROKER_ALLOWED_HOSTS", "https://u:hunter2@h"),
        ];
        let e = sidecar(&env).unwrap_err().to_string();
        assert!(!e.contains(key) && !e.contains("hunter2"), "{e}");
        assert!(e.contains("is a URL") && e.contains("AWS_REGION"), "{e}");
    }

    #[test]
    fn a_cold_start_cap_above_the_backoff_cap_is_refused_when_given() {
        let with = |extra: &[(&str, &str)]| {
            let mut env = IRSA.to_vec();
            env.extend_from_slice(extra);
            sidecar(&env)
        };
        let e = with(&[
            ("BEDROCK_BROKER_REFRESH_COLD_START_MAX_BACKOFF", "10m"),
            ("BEDROCK_BROKER_REFRESH_MAX_BACKOFF", "5m"),
        ])
        .unwrap_err();
        assert_eq!(
            origins(&e),
            ["BEDROCK_BROKER_REFRESH_COLD_START_MAX_BACKOFF"]
        );
        assert!(
            e.to_string()
                .contains("10m is longer than --refresh-max-backoff (5m)"),
            "{e}"
        );
        // The default (30s) follows a shorter cap: a pod holding nothing
        // waits at most 10 s between transient failures, not 30 s.
        let c = with(&[("BEDROCK_BROKER_REFRESH_MAX_BACKOFF", "10s")]).unwrap();
        let cold = crate::credentials::Failure {
            count: 20,
            class: crate::credentials::ErrorClass::Transient,
            throttled: false,
            remaining: None,
            lifetime: None,
        };
        assert_eq!(
            c.refresh.backoff(&cold, 1.0),
            std::time::Duration::from_secs(10)
        );
        assert!(with(&[("BEDROCK_BROKER_REFRESH_COLD_START_MAX_BACKOFF", "5m")]).is_ok());
    }

    #[test]
    fn a_value_that_is_not_text_is_reported_with_the_other_problems() {
        let mut env = Env::from_pairs(
            IRSA.iter()
                .copied()
                .chain([("BEDROCK_BROKER_MAX_REQUESTS", "0")]),
        );
        env.not_text = vec!["BEDROCK_BROKER_PROXY_TOKEN".to_owned(), "LC_ALL".to_owned()];
        let e = SidecarConfig::from_args(&SidecarArgs::default(), &env).unwrap_err();
        assert_eq!(
            origins(&e),
            ["BEDROCK_BROKER_PROXY_TOKEN", "BEDROCK_BROKER_MAX_REQUESTS"]
        );
        assert!(e.to_string().contains("the value is not UTF-8 text"), "{e}");
    }

    #[test]
    fn a_no_proxy_entry_that_matches_no_host_is_warned_about() {
        let mut env = IRSA.to_vec();
        env.extend_from_slice(&[
            ("HTTPS_PROXY", "proxy.corp:3128"),
            ("no_proxy", ".internal,https://bedrock.internal"),
        ]);
        let c = sidecar(&env).unwrap();
        assert_eq!(
            c.credentials.warnings.len(),
            1,
            "{:?}",
            c.credentials.warnings
        );
        let warning = &c.credentials.warnings[0];
        assert!(
            warning.starts_with("no_proxy: \"https://bedrock.internal\" matches no host"),
            "{warning}"
        );
        // Without a proxy, NO_PROXY is read by nothing here.
        let env: Vec<_> = IRSA
            .iter()
            .copied()
            .chain([("NO_PROXY", "https://x")])
            .collect();
        assert!(sidecar(&env).unwrap().credentials.warnings.is_empty());
    }

    #[test]
    fn irsa_environment_alone_is_a_complete_configuration() {
        let c = sidecar(&IRSA).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9787");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9788");
        let runtime = &c.proxy.routes.runtime;
        assert_eq!(
            runtime.authority.as_str(),
            "bedrock-runtime.eu-west-1.amazonaws.com"
        );
        assert_eq!(runtime.scheme, Scheme::HTTPS);
        assert_eq!(runtime.signing_name, "bedrock");
        assert_eq!(c.proxy.max_body_bytes, 25 * 1024 * 1024);
        assert_eq!(c.shutdown_grace, Duration::from_secs(25));
        assert_eq!(c.shutdown_delay, Duration::ZERO);
        assert_eq!(c.proxy.connect_timeout, Duration::from_secs(5));
        assert_eq!(
            c.proxy.response_header_timeout,
            Some(Duration::from_secs(900))
        );
        assert_eq!(c.proxy.stream_idle_timeout, Some(Duration::from_secs(300)));
        assert_eq!(c.proxy.self_heal_wait, Duration::from_secs(11));
        assert_eq!(c.proxy.usage, UsageLabels::FirstSeen(20));
        assert_eq!(c.refresh, RefreshPolicy::default());
        assert_eq!(c.token_watch_interval, Some(Duration::from_secs(1)));
        assert!(c.container_credentials.is_none());
        match &c.credentials.mode {
            CredentialMode::SigV4(SigV4Source::WebIdentity(w)) => {
                assert_eq!(w.role_arn.as_str(), "arn:aws:iam::123456789012:role/app");
                assert_eq!(w.session_name.as_str(), "bedrock-broker");
            }
            other => panic!("unexpected mode {other:?}"),
        }
    }

    #[test]
    fn session_name_is_derived_from_the_pod() {
        let mut env = IRSA.to_vec();
        env.push(("HOSTNAME", "chat-api-7d9f/x y"));
        let c = sidecar(&env).unwrap();
        let CredentialMode::SigV4(SigV4Source::WebIdentity(w)) = &c.credentials.mode else {
            panic!()
        };
        assert_eq!(w.session_name.as_str(), "bedrock-broker-chat-api-7d9f-x-y");
        env.extend([("POD_NAMESPACE", "team-a"), ("POD_NAME", "chat-7d9f-x2")]);
        let c = sidecar(&env).unwrap();
        let CredentialMode::SigV4(SigV4Source::WebIdentity(w)) = &c.credentials.mode else {
            panic!()
        };
        assert_eq!(w.session_name.as_str(), "team-a.chat-7d9f-x2");
    }

    #[test]
    fn missing_everything_names_every_way_to_configure_credentials() {
        let e = sidecar(&[]).unwrap_err();
        let text = e.to_string();
        for var in [
            "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_ACCESS_KEY_ID",
            "AWS_BEARER_TOKEN_BEDROCK",
        ] {
            assert!(text.contains(var), "{text}");
        }
    }

    #[test]
    fn half_configured_sources_name_the_missing_variable() {
        let e = sidecar(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
        ])
        .unwrap_err();
        assert_eq!(origins(&e), vec!["AWS_WEB_IDENTITY_TOKEN_FILE"]);

        let e = sidecar(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
        ])
        .unwrap_err();
        assert_eq!(origins(&e), vec!["AWS_SECRET_ACCESS_KEY"]);
    }

    #[test]
    fn web_identity_and_static_keys_together_are_refused() {
        let mut env = IRSA.to_vec();
        env.extend([
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]);
        let e = sidecar(&env).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e.0[0].origin.contains("AWS_ROLE_ARN"));
        assert!(e.0[0].origin.contains("AWS_ACCESS_KEY_ID"));
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let e = SidecarConfig::from_args(
            &SidecarArgs {
                listen: Some("nope".into()),
                max_body_bytes: Some("-1".into()),
                ..Default::default()
            },
            &Env::from_pairs([
                ("AWS_REGION", "US_EAST"),
                ("AWS_ROLE_ARN", "role/app"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"),
                ("AWS_ROLE_SESSION_NAME", "x"),
                ("BEDROCK_BROKER_SHUTDOWN_GRACE_PERIOD", "soon"),
                ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "ftp://x"),
                ("BEDROCK_BROKER_USAGE_METRICS", "maybe"),
            ]),
        )
        .unwrap_err();
        let o = origins(&e);
        for expected in [
            "AWS_REGION",
            "AWS_ROLE_ARN",
            "AWS_ROLE_SESSION_NAME",
            "--listen",
            "--max-body-bytes",
            "BEDROCK_BROKER_SHUTDOWN_GRACE_PERIOD",
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
            "BEDROCK_BROKER_USAGE_METRICS",
        ] {
            assert!(
                o.iter().any(|x| x == expected),
                "{expected} missing in {o:?}"
            );
        }
    }

    #[test]
    fn values_too_large_to_use_are_refused_naming_their_flag() {
        // "Infinite" spelled as the largest number: accepted, they panicked
        // at start (a semaphore that large) or in every connection (a
        // deadline past what a clock can hold).
        let e = SidecarConfig::from_args(
            &SidecarArgs {
                max_requests: Some(u64::MAX.to_string()),
                stream_idle_timeout: Some(format!("{}s", u64::MAX)),
                ..Default::default()
            },
            &Env::from_pairs([
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", "AKID"),
                ("AWS_SECRET_ACCESS_KEY", "secret"),
                ("BEDROCK_BROKER_MAX_CONNECTIONS", "18446744073709551615"),
                ("BEDROCK_BROKER_IDLE_TIMEOUT", "1000years"),
            ]),
        )
        .unwrap_err();
        let o = origins(&e);
        for expected in [
            "--max-requests",
            "--stream-idle-timeout",
            "BEDROCK_BROKER_MAX_CONNECTIONS",
            "BEDROCK_BROKER_IDLE_TIMEOUT",
        ] {
            assert!(
                o.iter().any(|x| x == expected),
                "{expected} missing in {o:?}"
            );
        }
    }

    #[test]
    fn the_minimum_body_rate_is_on_by_default_and_zero_turns_it_off() {
        let c = sidecar(&IRSA).unwrap();
        let rate = c.proxy.gate.body_min_rate.unwrap();
        assert_eq!(rate.bytes_per_second.get(), 65_536);
        assert_eq!(rate.grace, Duration::from_secs(10));
        // Ten seconds, then one more for every 65,536 bytes.
        assert_eq!(rate.allowance(131_072), Duration::from_secs(12));

        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_BODY_MIN_RATE", "0"));
        assert_eq!(sidecar(&env).unwrap().proxy.gate.body_min_rate, None);

        let mut env = IRSA.to_vec();
        env.extend([
            ("BEDROCK_BROKER_BODY_MIN_RATE", "fast"),
            ("BEDROCK_BROKER_BODY_MIN_RATE_GRACE", "-1s"),
        ]);
        let o = origins(&sidecar(&env).unwrap_err());
        for expected in [
            "BEDROCK_BROKER_BODY_MIN_RATE",
            "BEDROCK_BROKER_BODY_MIN_RATE_GRACE",
        ] {
            assert!(
                o.iter().any(|x| x == expected),
                "{expected} missing in {o:?}"
            );
        }
    }

    #[test]
    fn booleans_are_read_alike_whatever_their_case() {
        let mut env = IRSA.to_vec();
        env.extend([
            ("BEDROCK_BROKER_USAGE_METRICS", "FALSE"),
            ("AWS_USE_FIPS_ENDPOINT", "TRUE"),
        ]);
        let c = sidecar(&env).unwrap();
        assert_eq!(c.proxy.usage, UsageLabels::Off);
        assert!(c
            .proxy
            .routes
            .runtime
            .authority
            .as_str()
            .starts_with("bedrock-runtime-fips."));
    }

    #[test]
    fn an_api_key_that_cannot_be_a_header_is_a_configuration_error() {
        let e = sidecar(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_BEARER_TOKEN_BEDROCK", "ABSK\u{7f}oops"),
        ])
        .unwrap_err();
        assert_eq!(origins(&e), ["AWS_BEARER_TOKEN_BEDROCK"]);
        assert!(!e.to_string().contains("oops"), "{e}");
    }

    #[test]
    fn flags_win_over_environment_and_endpoint_url_variables_are_ordered() {
        let mut env = IRSA.to_vec();
        env.push(("AWS_ENDPOINT_URL", "https://generic:1"));
        env.push(("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "https://specific:2"));
        env.push(("BEDROCK_BROKER_LISTEN", "127.0.0.1:1"));
        let c = sidecar(&env).unwrap();
        assert_eq!(c.proxy.routes.runtime.authority.as_str(), "specific:2");
        assert_eq!(c.listen.port(), 1);

        let args = SidecarArgs {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some("https://bedrock-mantle.us-east-1.api.aws:443/".into()),
            ..Default::default()
        };
        let c = SidecarConfig::from_args(&args, &Env::from_pairs(env.iter().copied())).unwrap();
        assert_eq!(c.listen.port(), 0);
        let runtime = &c.proxy.routes.runtime;
        assert_eq!(
            runtime.authority.as_str(),
            "bedrock-mantle.us-east-1.api.aws"
        );
        assert_eq!(runtime.signing_name, "bedrock-mantle");
        assert_eq!(runtime.base_path, "");
    }

    #[test]
    fn region_falls_back_to_aws_default_region() {
        let env = [
            ("AWS_DEFAULT_REGION", "ap-south-1"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ];
        let c = sidecar(&env).unwrap();
        assert_eq!(c.credentials.region.unwrap().as_str(), "ap-south-1");
    }

    #[test]
    fn sigv4_without_region_is_refused_but_an_api_key_with_upstream_is_not() {
        let e = sidecar(&[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "s")]).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert!(e.to_string().contains("region is required"), "{e}");
        let c = sidecar(&[
            ("AWS_BEARER_TOKEN_BEDROCK", "ABSKexample"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ])
        .unwrap();
        assert!(matches!(c.credentials.mode, CredentialMode::ApiKey(_)));
        let e = sidecar(&[("AWS_BEARER_TOKEN_BEDROCK", "ABSKexample")]).unwrap_err();
        assert!(e.to_string().contains("explicit --upstream"), "{e}");
    }

    #[test]
    fn a_region_not_shaped_like_aws_s_is_warned_about() {
        // `us-east1` passes as a name, then every STS and Bedrock host built
        // from it fails to resolve, far from the typo.
        for region in ["us-east1", "useast-1", "eu-west-1a"] {
            let mut env = IRSA.to_vec();
            env[0] = ("AWS_REGION", region);
            let c = sidecar(&env).unwrap();
            assert_eq!(c.credentials.warnings.len(), 1, "{region}");
            assert!(
                c.credentials.warnings[0].contains("AWS_REGION"),
                "{:?}",
                c.credentials.warnings
            );
        }
        for region in [
            "us-east-1",
            "us-gov-west-1",
            "us-isob-east-1",
            "eusc-de-east-1",
            "cn-northwest-1",
        ] {
            let mut env = IRSA.to_vec();
            env[0] = ("AWS_REGION", region);
            assert!(
                sidecar(&env).unwrap().credentials.warnings.is_empty(),
                "{region}"
            );
        }
    }

    #[test]
    fn an_api_key_takes_precedence_with_a_warning() {
        let mut env = IRSA.to_vec();
        env.push(("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-abc"));
        let c = sidecar(&env).unwrap();
        assert!(matches!(c.credentials.mode, CredentialMode::ApiKey(_)));
        assert!(c.proxy.api_key.is_some());
        assert_eq!(c.credentials.warnings.len(), 1);
        assert!(!format!("{c:?}").contains("bedrock-api-key-abc"));
    }

    #[test]
    fn a_chained_role_waits_for_both_hops() {
        // The first credentials of a chained role take two STS calls, each
        // up to --sts-timeout: a request waiting for them waited for one.
        let mut env = IRSA.to_vec();
        env.push((
            "BEDROCK_BROKER_CHAIN_ROLE_ARN",
            "arn:aws:iam::210987654321:role/bedrock",
        ));
        let c = sidecar(&env).unwrap();
        assert!(c.credentials.chain.is_some());
        assert_eq!(c.proxy.self_heal_wait, Duration::from_secs(21));
    }

    #[test]
    fn session_options_and_chaining_are_validated() {
        let mut env = IRSA.to_vec();
        env.extend([
            ("BEDROCK_BROKER_SESSION_DURATION", "2h"),
            (
                "BEDROCK_BROKER_SESSION_POLICY",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"bedrock:InvokeModel*","Resource":"*"}]}"#,
            ),
            (
                "BEDROCK_BROKER_SESSION_POLICY_ARNS",
                "arn:aws:iam::aws:policy/AmazonBedrockLimitedAccess, arn:aws:iam::123456789012:policy/x",
            ),
        ]);
        let c = sidecar(&env).unwrap();
        assert_eq!(
            c.credentials.session.duration,
            Some(Duration::from_secs(7200))
        );
        assert_eq!(c.credentials.session.policy_arns.len(), 2);
        assert!(c.credentials.chain.is_none());

        // Chaining caps the duration at 1 h and checks the external id.
        env.extend([
            (
                "BEDROCK_BROKER_CHAIN_ROLE_ARN",
                "arn:aws:iam::210987654321:role/bedrock",
            ),
            ("BEDROCK_BROKER_CHAIN_EXTERNAL_ID", "x"),
        ]);
        let o = origins(&sidecar(&env).unwrap_err());
        assert_eq!(
            o,
            [
                "BEDROCK_BROKER_CHAIN_EXTERNAL_ID",
                "BEDROCK_BROKER_SESSION_DURATION"
            ]
        );

        let e = sidecar(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "A"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("BEDROCK_BROKER_SESSION_POLICY", "[1]"),
            (
                "BEDROCK_BROKER_SESSION_POLICY_ARNS",
                "arn:aws:iam::1:role/x",
            ),
            ("BEDROCK_BROKER_CHAIN_EXTERNAL_ID", "ext-id"),
        ])
        .unwrap_err();
        assert_eq!(
            origins(&e),
            [
                "BEDROCK_BROKER_CHAIN_EXTERNAL_ID",
                "BEDROCK_BROKER_SESSION_POLICY",
                "BEDROCK_BROKER_SESSION_POLICY_ARNS"
            ]
        );
    }

    #[test]
    fn container_credentials_endpoint_is_loopback_only_and_needs_a_token() {
        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_CREDENTIALS_LISTEN", "0.0.0.0:9790"));
        let o = origins(&sidecar(&env).unwrap_err());
        assert_eq!(o, ["BEDROCK_BROKER_CREDENTIALS_LISTEN"]);
        let mut env = IRSA.to_vec();
        env.extend([
            ("BEDROCK_BROKER_CREDENTIALS_LISTEN", "127.0.0.1:9790"),
            ("BEDROCK_BROKER_CREDENTIALS_TOKEN_FILE", "/var/run/bb/token"),
        ]);
        let c = sidecar(&env).unwrap();
        assert_eq!(
            c.container_credentials.unwrap().listen.to_string(),
            "127.0.0.1:9790"
        );
        env.truncate(IRSA.len());
        env.push(("BEDROCK_BROKER_CREDENTIALS_LISTEN", "127.0.0.1:9790"));
        let o = origins(&sidecar(&env).unwrap_err());
        assert_eq!(
            o,
            ["--credentials-token-file / BEDROCK_BROKER_CREDENTIALS_TOKEN_FILE"]
        );
    }

    #[test]
    fn the_rest_of_the_chain_is_chosen_or_pinned() {
        let base = [("AWS_REGION", "us-east-1")];
        let source = |extra: &[(&'static str, &'static str)]| {
            let mut env = base.to_vec();
            env.extend_from_slice(extra);
            match sidecar(&env).map(|c| c.credentials.mode) {
                Ok(mode) => mode.describe().to_owned(),
                Err(e) => format!("error: {}", origins(&e).join(",")),
            }
        };
        assert_eq!(
            source(&[(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://169.254.170.23/v1/credentials"
            )]),
            "container"
        );
        assert_eq!(source(&[("AWS_PROFILE", "dev")]), "profile");
        assert_eq!(
            source(&[("BEDROCK_BROKER_CREDENTIAL_SOURCE", "imds")]),
            "imds"
        );
        assert_eq!(
            source(&[("BEDROCK_BROKER_CREDENTIAL_SOURCE", "profile")]),
            "profile"
        );
        assert_eq!(
            source(&[("BEDROCK_BROKER_CREDENTIAL_SOURCE", "container")]),
            "error: BEDROCK_BROKER_CREDENTIAL_SOURCE"
        );
        assert!(source(&[("BEDROCK_BROKER_CREDENTIAL_SOURCE", "nope")]).starts_with("error"));
        // Pinning resolves the web-identity/static contradiction.
        let mut both = IRSA.to_vec();
        both.extend([
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
            ("BEDROCK_BROKER_CREDENTIAL_SOURCE", "static"),
        ]);
        let c = sidecar(&both).unwrap();
        assert!(matches!(
            c.credentials.mode,
            CredentialMode::SigV4(SigV4Source::Static(_))
        ));
        // The container endpoint's token is known, to be blanked from its
        // errors, and never shown.
        let mut container = base.to_vec();
        container.extend([
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:1/v1/credentials",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "a-container-token"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "/var/run/token"),
        ]);
        let c = sidecar(&container).unwrap();
        assert_eq!(c.credentials.mode.describe(), "container");
        let token = &c.credentials.container_token;
        assert_eq!(
            token.inline,
            Some(crate::secret::Secret::new("a-container-token"))
        );
        assert_eq!(
            token.file.as_deref(),
            Some(std::path::Path::new("/var/run/token"))
        );
        assert!(!format!("{c:?}").contains("a-container-token"));
    }

    #[test]
    fn extra_routes_and_fips_dualstack_endpoints() {
        let c = sidecar(&IRSA).unwrap();
        let routes = c.proxy.routes;
        assert_eq!(
            routes.agent_runtime.unwrap().authority.as_str(),
            "bedrock-agent-runtime.eu-west-1.amazonaws.com"
        );
        let mantle = routes.mantle.unwrap();
        assert_eq!(
            mantle.authority.as_str(),
            "bedrock-mantle.eu-west-1.api.aws"
        );
        assert_eq!(mantle.signing_name, "bedrock-mantle");

        let mut env = IRSA.to_vec();
        env.extend([
            ("AWS_USE_FIPS_ENDPOINT", "true"),
            ("AWS_USE_DUALSTACK_ENDPOINT", "true"),
        ]);
        let routes = sidecar(&env).unwrap().proxy.routes;
        assert_eq!(
            routes.runtime.authority.as_str(),
            "bedrock-runtime-fips.eu-west-1.api.aws"
        );
        assert_eq!(
            routes.agent_runtime.unwrap().authority.as_str(),
            "bedrock-agent-runtime-fips.eu-west-1.api.aws"
        );

        env.extend([
            ("BEDROCK_BROKER_MANTLE_UPSTREAM", "http://127.0.0.1:9"),
            ("AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME", "nope"),
            ("AWS_USE_FIPS_ENDPOINT", "maybe"),
        ]);
        let o = origins(&sidecar(&env).unwrap_err());
        assert_eq!(
            o,
            [
                "AWS_USE_FIPS_ENDPOINT",
                "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"
            ]
        );
    }

    #[test]
    fn polling_and_body_sizes_stay_where_they_work() {
        // A token watch every nanosecond was a busy loop (13 % of a core
        // idle); a body over 4 GiB could never be reserved, and got 503
        // "busy, retry" for ever instead of 413.
        // (variable, value, refused with)
        for (var, value, refused) in [
            (
                "BEDROCK_BROKER_TOKEN_WATCH_INTERVAL",
                "1ns",
                Some("must be at least 100ms"),
            ),
            (
                "BEDROCK_BROKER_TOKEN_WATCH_INTERVAL",
                "99ms",
                Some("must be at least 100ms"),
            ),
            (
                "BEDROCK_BROKER_MAX_BODY_BYTES",
                "4294967296",
                Some("must be at most 4294967295"),
            ),
            ("BEDROCK_BROKER_TOKEN_WATCH_INTERVAL", "0s", None),
            ("BEDROCK_BROKER_TOKEN_WATCH_INTERVAL", "100ms", None),
            ("BEDROCK_BROKER_MAX_BODY_BYTES", "4294967295", None),
        ] {
            let mut env = IRSA.to_vec();
            env.extend([
                (var, value),
                ("BEDROCK_BROKER_REQUEST_BODY_BUDGET", "8589934592"),
            ]);
            match (sidecar(&env), refused) {
                (Ok(_), None) => {}
                (Err(e), Some(why)) => {
                    assert_eq!(origins(&e), [var], "{e}");
                    assert!(e.to_string().contains(why), "{e}");
                }
                (result, _) => panic!("{var}={value}: {:?}", result.err()),
            }
        }
    }

    #[test]
    fn the_proxy_stays_on_loopback_unless_told_otherwise() {
        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_LISTEN", "0.0.0.0:9787"));
        let e = sidecar(&env).unwrap_err();
        assert_eq!(origins(&e), ["BEDROCK_BROKER_LISTEN"]);
        assert!(e.to_string().contains("--allow-non-loopback-listen"), "{e}");
        env.push(("BEDROCK_BROKER_ALLOW_NON_LOOPBACK_LISTEN", "true"));
        assert_eq!(sidecar(&env).unwrap().listen.to_string(), "0.0.0.0:9787");

        let mut env = IRSA.to_vec();
        env.push((
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
            "http://bedrock.internal:8080",
        ));
        let e = sidecar(&env).unwrap_err();
        assert_eq!(origins(&e), ["AWS_ENDPOINT_URL_BEDROCK_RUNTIME"]);
        env.push(("BEDROCK_BROKER_ALLOW_PLAINTEXT_UPSTREAM", "yes"));
        assert!(sidecar(&env).is_ok());

        // STS receives the web-identity token and returns credentials.
        let mut env = IRSA.to_vec();
        env.push(("AWS_ENDPOINT_URL_STS", "http://sts.internal:8080"));
        let e = sidecar(&env).unwrap_err();
        assert_eq!(origins(&e), ["AWS_ENDPOINT_URL_STS"]);
        assert!(e.to_string().contains("--allow-plaintext-upstream"), "{e}");
        let mut local = IRSA.to_vec();
        local.push(("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:4566"));
        assert!(sidecar(&local).is_ok(), "loopback (a local fake) is fine");
        env.push(("BEDROCK_BROKER_ALLOW_PLAINTEXT_UPSTREAM", "true"));
        assert!(sidecar(&env).is_ok());
    }

    #[test]
    fn every_listener_has_documented_limits() {
        let c = sidecar(&IRSA).unwrap();
        assert_eq!(c.proxy_limits.header_read_timeout, Duration::from_secs(30));
        assert_eq!(c.proxy_limits.max_connections, 256);
        assert_eq!(c.proxy_limits.max_connections_per_peer, None);
        assert!(c.proxy_limits.http2, "bidirectional clients may speak h2c");
        assert_eq!(c.admin_limits.max_connections, 32);
        assert_eq!(c.admin_limits.max_connections_per_peer, Some(8));
        assert!(!c.admin_limits.http2);
        assert_eq!(c.proxy.gate.body_budget, 64 * 1024 * 1024);
        assert_eq!(c.proxy.gate.max_requests, 512);
        assert_eq!(c.proxy.upstream_max_idle, 128);

        let mut env = IRSA.to_vec();
        env.extend([
            ("BEDROCK_BROKER_ADMIN_MAX_HEADER_BYTES", "100"),
            ("BEDROCK_BROKER_MAX_CONNECTIONS", "0"),
            ("BEDROCK_BROKER_PROXY_TOKEN", "short"),
        ]);
        let o = origins(&sidecar(&env).unwrap_err());
        assert_eq!(
            o,
            [
                "BEDROCK_BROKER_MAX_CONNECTIONS",
                "BEDROCK_BROKER_ADMIN_MAX_HEADER_BYTES",
                "BEDROCK_BROKER_PROXY_TOKEN",
            ]
        );
        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_REQUEST_BODY_BUDGET", "1000"));
        let e = sidecar(&env).unwrap_err();
        assert_eq!(
            origins(&e),
            ["--request-body-budget / BEDROCK_BROKER_REQUEST_BODY_BUDGET"]
        );
    }

    #[test]
    fn refresh_knobs_are_read_and_jitter_stays_below_the_fraction() {
        let mut env = IRSA.to_vec();
        env.extend([
            ("BEDROCK_BROKER_REFRESH_FRACTION", "0.6"),
            ("BEDROCK_BROKER_REFRESH_JITTER", "0"),
        ]);
        let c = sidecar(&env).unwrap();
        assert_eq!((c.refresh.fraction, c.refresh.jitter), (0.6, 0.0));
        env.push(("BEDROCK_BROKER_REFRESH_JITTER", "0.6"));
        let e = sidecar(&env).unwrap_err();
        assert_eq!(
            origins(&e),
            ["--refresh-jitter / BEDROCK_BROKER_REFRESH_JITTER"]
        );
        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_REFRESH_JITTER", "1"));
        assert_eq!(
            origins(&sidecar(&env).unwrap_err()),
            ["BEDROCK_BROKER_REFRESH_JITTER"]
        );
    }

    #[test]
    fn a_proxy_token_can_come_from_a_file_and_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  a-proxy-token-of-32-characters!\n").unwrap();
        let arg = format!("@{}", file.display());
        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_PROXY_TOKEN", arg.as_str()));
        let c = sidecar(&env).unwrap();
        let token = c.proxy.gate.token.as_ref().unwrap();
        assert_eq!(token.expose(), "a-proxy-token-of-32-characters!");
        assert!(!format!("{c:?}").contains("a-proxy-token"));
    }

    #[test]
    fn a_proxy_token_on_the_command_line_is_warned_about_without_showing_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "a-proxy-token-of-32-characters!").unwrap();
        let from_file = format!("@{}", file.display());
        let with_flag = |value: &str, env: &[(&str, &str)]| {
            let args = SidecarArgs {
                proxy_token: Some(value.to_owned()),
                ..SidecarArgs::default()
            };
            SidecarConfig::from_args(&args, &Env::from_pairs(env.iter().copied())).unwrap()
        };
        let inline = with_flag("a-proxy-token-of-32-characters!", &IRSA);
        assert_eq!(inline.warnings.len(), 1, "{:?}", inline.warnings);
        let warning = &inline.warnings[0];
        assert!(
            warning.starts_with("--proxy-token was given on the command line")
                && warning.contains("--proxy-token @FILE")
                && warning.contains("BEDROCK_BROKER_PROXY_TOKEN"),
            "{warning}"
        );
        assert!(!warning.contains("a-proxy-token-of"), "{warning}");
        // A file named on the command line, or the variable: nothing to say.
        assert!(with_flag(&from_file, &IRSA).warnings.is_empty());
        assert!(with_flag(&format!(" {from_file}"), &IRSA)
            .warnings
            .is_empty());
        let mut env = IRSA.to_vec();
        env.push((
            "BEDROCK_BROKER_PROXY_TOKEN",
            "a-proxy-token-of-32-characters!",
        ));
        assert!(sidecar(&env).unwrap().warnings.is_empty());
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let c = sidecar(&[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "topsecretvalue"),
            ("AWS_SESSION_TOKEN", "sessiontokenvalue"),
        ])
        .unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("topsecretvalue"));
        assert!(!dbg.contains("sessiontokenvalue"));
    }

    #[test]
    fn static_keys_that_could_not_sign_stop_the_start_without_quoting_them() {
        let keys = |id: &str, secret: &str, token: &str| {
            sidecar(&[
                ("AWS_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", id),
                ("AWS_SECRET_ACCESS_KEY", secret),
                ("AWS_SESSION_TOKEN", token),
            ])
        };
        // A Secret written with `echo` ends with a newline: not the key's.
        let c = keys("AKIDEXAMPLE\n", "topsecretvalue\n", "sessiontokenvalue\n").unwrap();
        let crate::credentials::CredentialMode::SigV4(SigV4Source::Static(held)) =
            c.credentials.mode
        else {
            panic!("static keys");
        };
        assert_eq!(held.access_key_id, "AKIDEXAMPLE");
        assert_eq!(held.secret_access_key.expose(), "topsecretvalue");
        assert_eq!(
            held.session_token.as_ref().map(|t| t.expose()),
            Some("sessiontokenvalue")
        );
        for (id, token, origin) in [
            ("AKID EXAMPLE", "sessiontokenvalue", "AWS_ACCESS_KEY_ID"),
            ("AKIDEXAMPLE", "session\ntokenvalue", "AWS_SESSION_TOKEN"),
            (
                "AKIDEXAMPLE",
                "session\u{7f}tokenvalue",
                "AWS_SESSION_TOKEN",
            ),
            ("AKIDEXAMPLE", " \n", "AWS_SESSION_TOKEN"),
            (" ", "sessiontokenvalue", "AWS_ACCESS_KEY_ID"),
        ] {
            let e = keys(id, "topsecretvalue", token).unwrap_err().to_string();
            assert!(e.contains(origin), "{e}");
            assert!(!e.contains("tokenvalue") && !e.contains("EXAMPLE"), "{e}");
        }
    }

    #[test]
    fn the_credentials_endpoint_limits_are_checked_while_it_is_off() {
        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_CREDENTIALS_IDLE_TIMEOUT", "banana"));
        env.push(("BEDROCK_BROKER_CREDENTIALS_MAX_CONNECTIONS", "-5"));
        let e = sidecar(&env).unwrap_err().to_string();
        assert!(e.contains("BEDROCK_BROKER_CREDENTIALS_IDLE_TIMEOUT"), "{e}");
        assert!(
            e.contains("BEDROCK_BROKER_CREDENTIALS_MAX_CONNECTIONS"),
            "{e}"
        );
    }

    #[test]
    fn allowed_hosts_that_could_never_match_are_refused() {
        for (raw, why) in [
            ("app.local:9787", "has a port"),
            ("*", "wildcard"),
            ("*.svc", "wildcard"),
            ("http://x", "is a URL"),
            ("a b", "not a host name"),
            ("[fd00::1]:9787", "has a port"),
            ("[[::1", "has a port"),
            ("fd00::1", "write it in brackets"),
        ] {
            let mut env = IRSA.to_vec();
            env.push(("BEDROCK_BROKER_ALLOWED_HOSTS", raw));
            let e = sidecar(&env).unwrap_err().to_string();
            assert!(
                e.contains("BEDROCK_BROKER_ALLOWED_HOSTS") && e.contains(why),
                "{raw}: {e}"
            );
        }
        let mut env = IRSA.to_vec();
        env.push((
            "BEDROCK_BROKER_ALLOWED_HOSTS",
            "chat.my-app.svc, 10.0.0.5,[fd00:0::1],[FD00::2]",
        ));
        let c = sidecar(&env).unwrap();
        // IPv6 addresses in the one form the proxy compares.
        assert_eq!(
            c.proxy.gate.allowed_hosts,
            ["chat.my-app.svc", "10.0.0.5", "[fd00::1]", "[fd00::2]"]
        );
    }

    #[test]
    fn session_options_no_session_takes_are_refused_not_ignored() {
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"bedrock:InvokeModel","Resource":"*"}]}"#;
        let container = [
            ("AWS_REGION", "us-east-1"),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://127.0.0.1:9/creds",
            ),
        ];
        let mut env = container.to_vec();
        env.push(("BEDROCK_BROKER_SESSION_POLICY", policy));
        env.push(("BEDROCK_BROKER_SESSION_DURATION", "2h"));
        let e = sidecar(&env).unwrap_err().to_string();
        assert!(
            e.contains("BEDROCK_BROKER_SESSION_POLICY")
                && e.contains("has no effect with the container credentials"),
            "{e}"
        );
        assert!(e.contains("BEDROCK_BROKER_SESSION_DURATION"), "{e}");
        // A chained role makes the session they apply to; web identity too.
        env.push((
            "BEDROCK_BROKER_CHAIN_ROLE_ARN",
            "arn:aws:iam::123456789012:role/next",
        ));
        env.retain(|(k, _)| *k != "BEDROCK_BROKER_SESSION_DURATION");
        assert!(sidecar(&env).is_ok());
        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_SESSION_POLICY", policy));
        assert!(sidecar(&env).is_ok());
        // An API key drops the chained role, and the policy with it.
        env.push((
            "AWS_BEARER_TOKEN_BEDROCK",
            "ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl",
        ));
        env.push((
            "BEDROCK_BROKER_CHAIN_ROLE_ARN",
            "arn:aws:iam::123456789012:role/next",
        ));
        let e = sidecar(&env).unwrap_err().to_string();
        assert!(
            e.contains("has no effect with the API key credentials"),
            "{e}"
        );
        assert!(!e.contains("chain a role"), "{e}");
    }

    #[test]
    fn a_body_limit_past_its_ceiling_names_that_ceiling() {
        for raw in ["4294967296", "18446744073709551615"] {
            let mut env = IRSA.to_vec();
            env.push(("BEDROCK_BROKER_MAX_BODY_BYTES", raw));
            let e = sidecar(&env).unwrap_err().to_string();
            assert!(e.contains("must be at most 4294967295"), "{raw}: {e}");
        }
    }

    #[test]
    fn the_proxy_and_admin_server_on_one_port_is_a_configuration_error() {
        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_LISTEN", "127.0.0.1:9787"));
        env.push(("BEDROCK_BROKER_ADMIN_LISTEN", "0.0.0.0:9787"));
        let e = sidecar(&env).unwrap_err().to_string();
        assert!(e.contains("both use port 9787"), "{e}");
        let both = |listen: &str, admin: &str| {
            let mut env = IRSA.to_vec();
            env.push(("BEDROCK_BROKER_LISTEN", listen));
            env.push(("BEDROCK_BROKER_ADMIN_LISTEN", admin));
            sidecar(&env)
        };
        // `[::]` takes IPv4 too; `0.0.0.0` leaves IPv6 alone.
        assert!(both("127.0.0.1:9787", "[::]:9787").is_err());
        assert!(both("[::1]:9787", "0.0.0.0:9787").is_ok());
        // The container-credentials endpoint too.
        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_CREDENTIALS_LISTEN", "127.0.0.1:9788"));
        env.push(("BEDROCK_BROKER_CREDENTIALS_TOKEN_FILE", "/var/run/bb/token"));
        let e = sidecar(&env).unwrap_err().to_string();
        assert!(
            e.contains("--admin-listen / BEDROCK_BROKER_ADMIN_LISTEN / --credentials-listen"),
            "{e}"
        );
        // Any ports (0), or the same port on different addresses, can bind.
        for admin in [
            "127.0.0.1:0",
            "127.0.0.2:9787",
            "0.0.0.0:9788",
            "[::1]:9787",
        ] {
            let mut env = IRSA.to_vec();
            env.push(("BEDROCK_BROKER_LISTEN", "127.0.0.1:9787"));
            env.push(("BEDROCK_BROKER_ADMIN_LISTEN", admin));
            assert!(sidecar(&env).is_ok(), "{admin}");
        }
    }

    #[test]
    fn a_setting_missing_its_partner_names_the_partners_flag_too() {
        let mut env = IRSA.to_vec();
        env.push(("BEDROCK_BROKER_CREDENTIALS_TOKEN_FILE", "/var/run/bb/token"));
        env.push(("BEDROCK_BROKER_CHAIN_EXTERNAL_ID", "ext-1234"));
        let e = sidecar(&env).unwrap_err().to_string();
        assert!(
            e.contains("is set without --credentials-listen / BEDROCK_BROKER_CREDENTIALS_LISTEN"),
            "{e}"
        );
        assert!(
            e.contains("is set without --chain-role-arn / BEDROCK_BROKER_CHAIN_ROLE_ARN"),
            "{e}"
        );
    }

    #[test]
    fn credential_endpoints_with_user_information_are_refused_unrepeated() {
        for (name, value) in [
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "http://u:pass word@127.0.0.1:1/creds",
            ),
            (
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                "user:hunter2@169.254.169.254",
            ),
        ] {
            let e = sidecar(&[("AWS_REGION", "us-east-1"), (name, value)])
                .unwrap_err()
                .to_string();
            assert!(e.contains(name) && e.contains("user information"), "{e}");
            assert!(!e.contains("hunter2") && !e.contains("pass word"), "{e}");
        }
    }
}
