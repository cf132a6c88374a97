//! What the injected sidecar will be for one pod: the webhook-wide
//! defaults (flags and environment, which the chart sets) with the pod's
//! `bedrock-broker.io/*` annotations laid over them. Later stages read only
//! the [`SidecarSpec`], so none of them has to know which knob lives where.

use std::collections::BTreeMap;

use super::annotations::{names, Reader};
use super::types::{
    parse_limit, Audience, ImageRef, LogLevel, Port, PullPolicy, Quantity, RolePolicy,
    SecretKeyRef, SidecarMode, TokenExpiration,
};
use crate::config::aws::{Region, RoleArn, SessionName};
use crate::config::parse::{self, ParseError};
use crate::egress::EgressProxy;
use crate::telemetry::LogFormat;
use crate::webhook::ca_bundle::SidecarCaBundle;

/// The contract's proxy port.
pub const DEFAULT_PORT: Port = Port::new_unchecked(9787);
/// The contract's admin port.
pub const DEFAULT_ADMIN_PORT: Port = Port::new_unchecked(9788);

/// Resource requests and limits of the sidecar.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resources {
    pub cpu_request: Option<Quantity>,
    pub memory_request: Option<Quantity>,
    pub cpu_limit: Option<Quantity>,
    pub memory_limit: Option<Quantity>,
}

/// A request above its limit, which the API server would refuse.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAboveLimit<'a> {
    /// `cpu` or `memory`.
    pub resource: &'static str,
    pub request: &'a str,
    pub limit: &'a str,
}

impl Resources {
    /// Every request above its limit.
    pub fn problems(&self) -> Vec<RequestAboveLimit<'_>> {
        [
            ("cpu", &self.cpu_request, &self.cpu_limit),
            ("memory", &self.memory_request, &self.memory_limit),
        ]
        .into_iter()
        .filter_map(|(resource, request, limit)| match (request, limit) {
            (Some(r), Some(l)) if r.value() > l.value() => Some(RequestAboveLimit {
                resource,
                request: r.as_str(),
                limit: l.as_str(),
            }),
            _ => None,
        })
        .collect()
    }

    /// The memory limit, when it is below what the sidecar runs in (every
    /// pod would be refused with it).
    pub fn memory_limit_below_floor(&self) -> Option<&str> {
        self.memory_limit
            .as_ref()
            .filter(|l| l.units(super::quantity::Resource::Memory) < super::fit::MIN_MEMORY_LIMIT)
            .map(|l| l.as_str())
    }
}

/// Webhook-wide defaults of the injected sidecar.
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
    /// FIPS endpoints for Bedrock and STS.
    pub use_fips: bool,
    /// Dual-stack endpoints for Bedrock and STS.
    pub use_dualstack: bool,
    /// The forward proxy sidecars reach AWS through.
    pub egress_proxy: Option<EgressProxy>,
    /// Extra trust anchors every sidecar gets (re-read from their file).
    pub ca_bundle: Option<SidecarCaBundle>,
    /// UID for the sidecar unless the pod's containers share another non-root UID.
    pub run_as_user: i64,
    /// Which roles a pod may get (not a pod setting: pods cannot change it).
    pub role_policy: RolePolicy,
}

/// Where a setting of the sidecar came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The webhook's flag or environment variable, or its built-in default.
    Default,
    /// A `bedrock-broker.io/*` annotation on the pod.
    Annotation,
    /// An `eks.amazonaws.com/*` annotation of the pod's ServiceAccount.
    ServiceAccount,
}

/// A setting whose origin matters later: for a message that names what to
/// change, or for a decision that must respect what the pod asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Sourced<T> {
    fn from_default(value: T) -> Self {
        Self {
            value,
            origin: Origin::Default,
        }
    }
}

/// The sidecar settings for one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarSpec {
    pub image: ImageRef,
    /// `None` leaves `imagePullPolicy` to the API server's defaulting.
    pub pull_policy: Option<PullPolicy>,
    pub resources: Resources,
    pub log_level: LogLevel,
    pub log_format: LogFormat,
    /// FIPS endpoints for Bedrock and STS (the webhook's setting only).
    pub use_fips: bool,
    /// Dual-stack endpoints for Bedrock and STS (the webhook's setting only).
    pub use_dualstack: bool,
    /// The webhook's forward proxy, if any (no annotation).
    pub egress_proxy: Option<EgressProxy>,
    /// The webhook's extra trust anchors, if any (no annotation).
    pub ca_bundle: Option<SidecarCaBundle>,
    pub mode: Sourced<SidecarMode>,
    pub audience: Sourced<Audience>,
    pub token_expiration: Sourced<TokenExpiration>,
    pub port: Port,
    pub admin_port: Port,
    /// UID for the sidecar unless the pod's containers share another non-root UID.
    pub run_as_user: i64,
    /// Annotation, else the webhook default; `None` leaves the containers' env.
    pub region: Option<Region>,
    /// From the pod annotation only; the ServiceAccount is consulted later.
    pub role_arn: Option<RoleArn>,
    /// `None`: the sidecar derives one from the pod name.
    pub session_name: Option<SessionName>,
    /// Bearer mode: a Bedrock API key from this Secret key.
    pub api_key_secret: Option<SecretKeyRef>,
    /// The proxy token every request must carry, from this Secret key.
    pub proxy_token_secret: Option<SecretKeyRef>,
    /// The sidecar's forward proxy URL, credentials and all, from this
    /// Secret key; in place of the webhook's `egress_proxy` URL.
    pub https_proxy_secret: Option<SecretKeyRef>,
    /// Whether the app containers get each popular client's endpoint
    /// variable (and the OpenAI key placeholder), or `BEDROCK_BROKER_URL` only.
    pub client_env: bool,
    /// The webhook's `--role-policy`.
    pub role_policy: RolePolicy,
}

impl SidecarSpec {
    /// The sidecar a pod without annotations gets.
    pub fn from_defaults(d: &SidecarDefaults) -> Self {
        Self {
            image: d.image.clone(),
            pull_policy: d.image_pull_policy,
            resources: d.resources.clone(),
            log_level: d.log_level,
            log_format: d.log_format,
            use_fips: d.use_fips,
            use_dualstack: d.use_dualstack,
            egress_proxy: d.egress_proxy.clone(),
            ca_bundle: d.ca_bundle.clone(),
            mode: Sourced::from_default(d.mode),
            audience: Sourced::from_default(d.audience.clone()),
            token_expiration: Sourced::from_default(d.token_expiration),
            port: DEFAULT_PORT,
            admin_port: DEFAULT_ADMIN_PORT,
            run_as_user: d.run_as_user,
            region: d.region.clone(),
            role_arn: None,
            session_name: None,
            api_key_secret: None,
            proxy_token_secret: None,
            https_proxy_secret: None,
            client_env: true,
            role_policy: d.role_policy,
        }
    }

    /// Lays the pod's annotations over these settings; all problems are
    /// returned together.
    pub fn overlay(mut self, annotations: &BTreeMap<String, String>) -> Result<Self, Vec<String>> {
        let mut a = Reader::new(annotations);
        self.role_arn = a.read(names::ROLE_ARN, self.role_arn, |r| {
            RoleArn::parse(r).map(Some)
        });
        self.region = a.read(names::REGION, self.region, |r| Region::parse(r).map(Some));
        self.port = a.read(names::PORT, self.port, Port::parse);
        self.admin_port = a.read(names::ADMIN_PORT, self.admin_port, Port::parse);
        if self.port == self.admin_port {
            a.problem(format!(
                "{} and {}: both are {}; the proxy and the admin server need different ports",
                names::PORT,
                names::ADMIN_PORT,
                self.port
            ));
        }
        self.audience = sourced(&mut a, names::AUDIENCE, self.audience, Audience::parse);
        self.token_expiration = sourced(
            &mut a,
            names::TOKEN_EXPIRATION,
            self.token_expiration,
            TokenExpiration::parse,
        );
        self.session_name = a.read(names::SESSION_NAME, self.session_name, |r| {
            SessionName::parse(r).map(Some)
        });
        self.resources = overlay_resources(&mut a, self.resources);
        self.image = a.read(names::IMAGE, self.image, ImageRef::parse);
        self.log_level = a.read(names::LOG_LEVEL, self.log_level, LogLevel::parse);
        self.mode = sourced(&mut a, names::SIDECAR_MODE, self.mode, SidecarMode::parse);
        self.api_key_secret = a.read(names::API_KEY_SECRET, self.api_key_secret, |r| {
            SecretKeyRef::parse(r).map(Some)
        });
        self.proxy_token_secret = a.read(names::PROXY_TOKEN_SECRET, self.proxy_token_secret, |r| {
            SecretKeyRef::parse(r).map(Some)
        });
        self.https_proxy_secret = a.read(names::HTTPS_PROXY_SECRET, self.https_proxy_secret, |r| {
            SecretKeyRef::parse(r).map(Some)
        });
        self.client_env = a.read(names::CLIENT_ENV, self.client_env, parse::bool);
        if a.has(names::ROLE_ARN) && a.has(names::API_KEY_SECRET) {
            a.problem(format!(
                "{} and {}: both are set; choose one: a role for SigV4, or a Bedrock API key (bearer mode)",
                names::ROLE_ARN,
                names::API_KEY_SECRET
            ));
        }
        a.finish(self)
    }

    /// Whether the pod asked for its own token audience or lifetime (an
    /// existing EKS token volume is reused only when it asked for neither).
    pub fn token_from_annotation(&self) -> bool {
        self.audience.origin == Origin::Annotation
            || self.token_expiration.origin == Origin::Annotation
    }
}

/// [`Reader::read`], remembering that the pod set the value.
fn sourced<T>(
    a: &mut Reader<'_>,
    name: &str,
    current: Sourced<T>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Sourced<T> {
    if !a.has(name) {
        return current;
    }
    Sourced {
        value: a.read(name, current.value, parse),
        origin: Origin::Annotation,
    }
}

fn overlay_resources(a: &mut Reader<'_>, r: Resources) -> Resources {
    let quantity = |r: &str| Quantity::parse(r).map(Some);
    let resources = Resources {
        cpu_request: a.read(names::CPU_REQUEST, r.cpu_request, quantity),
        memory_request: a.read(names::MEMORY_REQUEST, r.memory_request, quantity),
        cpu_limit: a.read(names::CPU_LIMIT, r.cpu_limit, parse_limit),
        memory_limit: a.read(names::MEMORY_LIMIT, r.memory_limit, parse_limit),
    };
    for problem in resources.problems() {
        a.problem(format!(
            "{PREFIX}{0}-request / {PREFIX}{0}-limit: the request {1} is above the limit {2}; a request must not exceed its limit",
            problem.resource,
            problem.request,
            problem.limit,
            PREFIX = names::PREFIX,
        ));
    }
    resources
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<SidecarSpec, Vec<String>> {
        let a = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let defaults =
            SidecarDefaults::from_args(&Default::default(), &crate::config::Env::default())
                .expect("the documented defaults parse");
        SidecarSpec::from_defaults(&defaults).overlay(&a)
    }

    #[test]
    fn no_annotations_gives_the_defaults() {
        let o = parse(&[]).expect("parses");
        assert_eq!(o.port.get(), 9787);
        assert_eq!(o.admin_port.get(), 9788);
        assert_eq!(o.audience.value.as_str(), "sts.amazonaws.com");
        assert_eq!(o.token_expiration.value.seconds(), 86400);
        assert_eq!(o.mode.value, SidecarMode::Native);
        assert!(!o.token_from_annotation());
        assert!(o.role_arn.is_none() && o.api_key_secret.is_none());
        assert!(o.client_env);
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
            (names::CLIENT_ENV, "false"),
        ])
        .expect("parses");
        assert!(!o.client_env);
        assert_eq!(o.region.as_ref().map(Region::as_str), Some("eu-central-1"));
        assert_eq!((o.port.get(), o.admin_port.get()), (8080, 8081));
        assert!(o.token_from_annotation());
        assert_eq!(o.resources.memory_limit, None);
        assert_eq!(o.mode.value, SidecarMode::Classic);
        assert_eq!(o.mode.origin, Origin::Annotation);
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
            (names::CLIENT_ENV, "off please"),
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
            "bedrock-broker.io/client-env: \"off please\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn typos_are_refused_and_the_opt_in_is_left_to_decide() {
        // The opt-in written as an annotation is judged with the opt-in
        // (a warning or a refusal depending on its value, see decide.rs).
        let problems = parse(&[
            ("bedrock-broker.io/rol-arn", "x"),
            ("bedrock-broker.io/inject", "true"),
            ("other.io/ignored", "x"),
        ])
        .unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("bedrock-broker.io/rol-arn is not an annotation"));
        assert!(problems[0].contains("bedrock-broker.io/role-arn"));

        // Annotation names are case-sensitive: a capital left the default
        // in place without a word.
        let problems = parse(&[("Bedrock-Broker.io/Port", "9000")]).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("Bedrock-Broker.io/Port is not an annotation bedrock-broker knows: names are case-sensitive, write bedrock-broker.io/port"),
            "{problems:?}"
        );
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
