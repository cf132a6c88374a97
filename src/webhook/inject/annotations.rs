//! The per-pod options: `bedrock-broker.io/*` annotations over the
//! webhook-wide defaults, each validated with a message that names the
//! annotation and the accepted values.

use std::collections::BTreeMap;

use crate::config::aws::{Region, RoleArn, SessionName};
use crate::config::parse::ParseError;

use super::spec::{Resources, SidecarDefaults};
use super::types::{
    parse_limit, Audience, ImageRef, LogLevel, Port, Quantity, SecretKeyRef, SidecarMode,
    TokenExpiration,
};

/// Label and annotation names: part of the product's interface.
pub mod names {
    /// Every annotation of ours starts with this.
    pub const PREFIX: &str = "bedrock-broker.io/";
    /// Opt-in label on a pod or its namespace: `"true"` or `"false"`.
    pub const INJECT_LABEL: &str = "bedrock-broker.io/inject";
    /// Set on injected pods (value: the injector's version); an injected pod
    /// is never changed again.
    pub const INJECTED: &str = "bedrock-broker.io/injected";

    pub const ROLE_ARN: &str = "bedrock-broker.io/role-arn";
    pub const REGION: &str = "bedrock-broker.io/region";
    pub const PORT: &str = "bedrock-broker.io/port";
    pub const ADMIN_PORT: &str = "bedrock-broker.io/admin-port";
    pub const AUDIENCE: &str = "bedrock-broker.io/audience";
    pub const TOKEN_EXPIRATION: &str = "bedrock-broker.io/token-expiration";
    pub const SESSION_NAME: &str = "bedrock-broker.io/session-name";
    pub const CPU_REQUEST: &str = "bedrock-broker.io/cpu-request";
    pub const MEMORY_REQUEST: &str = "bedrock-broker.io/memory-request";
    pub const CPU_LIMIT: &str = "bedrock-broker.io/cpu-limit";
    pub const MEMORY_LIMIT: &str = "bedrock-broker.io/memory-limit";
    pub const IMAGE: &str = "bedrock-broker.io/image";
    pub const LOG_LEVEL: &str = "bedrock-broker.io/log-level";
    pub const SIDECAR_MODE: &str = "bedrock-broker.io/sidecar-mode";
    pub const API_KEY_SECRET: &str = "bedrock-broker.io/api-key-secret";

    /// Every annotation we read (anything else under our prefix is a typo).
    pub const KNOWN: [&str; 16] = [
        INJECTED,
        ROLE_ARN,
        REGION,
        PORT,
        ADMIN_PORT,
        AUDIENCE,
        TOKEN_EXPIRATION,
        SESSION_NAME,
        CPU_REQUEST,
        MEMORY_REQUEST,
        CPU_LIMIT,
        MEMORY_LIMIT,
        IMAGE,
        LOG_LEVEL,
        SIDECAR_MODE,
        API_KEY_SECRET,
    ];

    /// The IRSA role annotation of a ServiceAccount (EKS Pod Identity Webhook).
    pub const EKS_ROLE_ARN: &str = "eks.amazonaws.com/role-arn";
}

/// The contract's proxy port.
pub const DEFAULT_PORT: Port = Port::new_unchecked(9787);
/// The contract's admin port.
pub const DEFAULT_ADMIN_PORT: Port = Port::new_unchecked(9788);

/// The sidecar settings for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodOptions {
    /// From the pod annotation only; the ServiceAccount is consulted later.
    pub role_arn: Option<RoleArn>,
    /// Annotation, else the webhook default.
    pub region: Option<Region>,
    pub port: Port,
    pub admin_port: Port,
    pub audience: Audience,
    /// Whether audience or lifetime were set on the pod (an existing EKS
    /// token volume is reused only when the pod asked for nothing else).
    pub token_overridden: bool,
    pub token_expiration: TokenExpiration,
    /// `None`: the sidecar derives one from the pod name.
    pub session_name: Option<SessionName>,
    pub resources: Resources,
    pub image: ImageRef,
    pub log_level: LogLevel,
    pub mode: SidecarMode,
    /// Whether the mode came from the pod (for messages).
    pub mode_from_annotation: bool,
    /// Bearer mode: a Bedrock API key from this Secret key.
    pub api_key_secret: Option<SecretKeyRef>,
}

/// Reads one annotation: absent gives `default`, a bad value records a
/// problem naming the annotation.
fn read<T>(
    annotations: &BTreeMap<String, String>,
    name: &str,
    default: T,
    problems: &mut Vec<String>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> T {
    match annotations.get(name) {
        None => default,
        Some(raw) => match parse(raw.trim()) {
            Ok(v) => v,
            Err(message) => {
                problems.push(format!("{name}: {message}"));
                default
            }
        },
    }
}

impl PodOptions {
    /// Parses every `bedrock-broker.io/*` annotation; all problems are
    /// returned together.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
        defaults: &SidecarDefaults,
    ) -> Result<Self, Vec<String>> {
        let mut p = Vec::new();
        for key in annotations.keys() {
            if key.starts_with(names::PREFIX) && !names::KNOWN.contains(&key.as_str()) {
                if key == names::INJECT_LABEL {
                    p.push(format!(
                        "{key} is a label, not an annotation: move it to metadata.labels"
                    ));
                } else {
                    p.push(format!(
                        "{key} is not an annotation bedrock-broker knows; known annotations: {}",
                        names::KNOWN[1..].join(", ")
                    ));
                }
            }
        }
        let a = annotations;
        let role_arn = read(a, names::ROLE_ARN, None, &mut p, |r| {
            RoleArn::parse(r).map(Some)
        });
        let region = read(a, names::REGION, defaults.region.clone(), &mut p, |r| {
            Region::parse(r).map(Some)
        });
        let port = read(a, names::PORT, DEFAULT_PORT, &mut p, Port::parse);
        let admin_port = read(
            a,
            names::ADMIN_PORT,
            DEFAULT_ADMIN_PORT,
            &mut p,
            Port::parse,
        );
        if port == admin_port {
            p.push(format!(
                "{} and {}: both are {port}; the proxy and the admin server need different ports",
                names::PORT,
                names::ADMIN_PORT
            ));
        }
        let audience = read(
            a,
            names::AUDIENCE,
            defaults.audience.clone(),
            &mut p,
            Audience::parse,
        );
        let token_expiration = read(
            a,
            names::TOKEN_EXPIRATION,
            defaults.token_expiration,
            &mut p,
            TokenExpiration::parse,
        );
        let token_overridden =
            a.contains_key(names::AUDIENCE) || a.contains_key(names::TOKEN_EXPIRATION);
        let session_name = read(a, names::SESSION_NAME, None, &mut p, |r| {
            SessionName::parse(r).map(Some)
        });
        let d = &defaults.resources;
        let resources = Resources {
            cpu_request: read(a, names::CPU_REQUEST, d.cpu_request.clone(), &mut p, |r| {
                Quantity::parse(r).map(Some)
            }),
            memory_request: read(
                a,
                names::MEMORY_REQUEST,
                d.memory_request.clone(),
                &mut p,
                |r| Quantity::parse(r).map(Some),
            ),
            cpu_limit: read(
                a,
                names::CPU_LIMIT,
                d.cpu_limit.clone(),
                &mut p,
                parse_limit,
            ),
            memory_limit: read(
                a,
                names::MEMORY_LIMIT,
                d.memory_limit.clone(),
                &mut p,
                parse_limit,
            ),
        };
        for problem in resources.problems() {
            p.push(format!(
                "{PREFIX}{0}-request / {PREFIX}{0}-limit: the request {1} is above the limit {2}; a request must not exceed its limit",
                problem.resource,
                problem.request,
                problem.limit,
                PREFIX = names::PREFIX,
            ));
        }
        let image = read(
            a,
            names::IMAGE,
            defaults.image.clone(),
            &mut p,
            ImageRef::parse,
        );
        let log_level = read(
            a,
            names::LOG_LEVEL,
            defaults.log_level,
            &mut p,
            LogLevel::parse,
        );
        let mode = read(
            a,
            names::SIDECAR_MODE,
            defaults.mode,
            &mut p,
            SidecarMode::parse,
        );
        let api_key_secret = read(a, names::API_KEY_SECRET, None, &mut p, |r| {
            SecretKeyRef::parse(r).map(Some)
        });
        if a.contains_key(names::ROLE_ARN) && a.contains_key(names::API_KEY_SECRET) {
            p.push(format!(
                "{} and {}: both are set; choose one: a role for SigV4, or a Bedrock API key (bearer mode)",
                names::ROLE_ARN,
                names::API_KEY_SECRET
            ));
        }
        if !p.is_empty() {
            return Err(p);
        }
        Ok(Self {
            role_arn,
            region,
            port,
            admin_port,
            audience,
            token_overridden,
            token_expiration,
            session_name,
            resources,
            image,
            log_level,
            mode,
            mode_from_annotation: a.contains_key(names::SIDECAR_MODE),
            api_key_secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<PodOptions, Vec<String>> {
        let a = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let defaults =
            SidecarDefaults::from_args(&Default::default(), &crate::config::Env::default())
                .expect("the documented defaults parse");
        PodOptions::from_annotations(&a, &defaults)
    }

    #[test]
    fn no_annotations_gives_the_defaults() {
        let o = parse(&[]).expect("parses");
        assert_eq!(o.port.get(), 9787);
        assert_eq!(o.admin_port.get(), 9788);
        assert_eq!(o.audience.as_str(), "sts.amazonaws.com");
        assert_eq!(o.token_expiration.seconds(), 86400);
        assert_eq!(o.mode, SidecarMode::Native);
        assert!(!o.token_overridden);
        assert!(o.role_arn.is_none() && o.api_key_secret.is_none());
    }

    #[test]
    fn every_annotation_is_read() {
        let o = parse(&[
            (names::ROLE_ARN, "arn:aws:iam::123456789012:role/app"),
            (names::REGION, " eu-central-1 "),
            (names::PORT, "8080"),
            (names::ADMIN_PORT, "8081"),
            (names::AUDIENCE, "sts.example"),
            (names::TOKEN_EXPIRATION, "3600"),
            (names::SESSION_NAME, "chat"),
            (names::CPU_REQUEST, "50m"),
            (names::MEMORY_REQUEST, "64Mi"),
            (names::CPU_LIMIT, "1"),
            (names::MEMORY_LIMIT, "none"),
            (names::IMAGE, "registry.local/bb:dev"),
            (names::LOG_LEVEL, "debug"),
            (names::SIDECAR_MODE, "classic"),
        ])
        .expect("parses");
        assert_eq!(o.region.as_ref().map(Region::as_str), Some("eu-central-1"));
        assert_eq!((o.port.get(), o.admin_port.get()), (8080, 8081));
        assert!(o.token_overridden);
        assert_eq!(o.resources.memory_limit, None);
        assert_eq!(o.mode, SidecarMode::Classic);
        assert!(o.mode_from_annotation);
        assert_eq!(o.log_level, LogLevel::Debug);
    }

    #[test]
    fn every_bad_annotation_is_named_with_its_accepted_values() {
        let problems = parse(&[
            (names::PORT, "80"),
            (names::TOKEN_EXPIRATION, "60"),
            (names::SIDECAR_MODE, "sidecar"),
            (names::LOG_LEVEL, "loud"),
            (names::ROLE_ARN, "app-role"),
            (names::CPU_REQUEST, "2"),
            (names::CPU_LIMIT, "1"),
        ])
        .unwrap_err();
        let all = problems.join("\n");
        for needle in [
            "bedrock-broker.io/port: \"80\"",
            "1024 to 65535",
            "bedrock-broker.io/token-expiration: \"60\"",
            "from 600",
            "bedrock-broker.io/sidecar-mode: \"sidecar\"",
            "native or classic",
            "bedrock-broker.io/log-level",
            "error, warn, info, debug or trace",
            "bedrock-broker.io/role-arn",
            "arn:aws:iam::123456789012:role/NAME",
            "bedrock-broker.io/cpu-request / bedrock-broker.io/cpu-limit",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn typos_and_the_label_as_annotation_are_refused() {
        let problems = parse(&[
            ("bedrock-broker.io/rol-arn", "x"),
            ("bedrock-broker.io/inject", "true"),
            ("other.io/ignored", "x"),
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("is a label, not an annotation"));
        assert!(problems[1].contains("bedrock-broker.io/rol-arn is not an annotation"));
        assert!(problems[1].contains("bedrock-broker.io/role-arn"));
    }

    #[test]
    fn role_and_api_key_together_are_refused() {
        let problems = parse(&[
            (names::ROLE_ARN, "arn:aws:iam::123456789012:role/app"),
            (names::API_KEY_SECRET, "bedrock/key"),
        ])
        .unwrap_err();
        assert!(problems[0].contains("choose one"), "{problems:?}");
    }

    #[test]
    fn same_port_twice_is_refused() {
        let problems = parse(&[(names::PORT, "9788")]).unwrap_err();
        assert!(problems[0].contains("different ports"), "{problems:?}");
    }
}
