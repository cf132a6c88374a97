//! Typed configuration: every environment variable, every default, parsed once.
//!
//! Flags win over their environment variable; standard AWS variables keep the
//! meaning the AWS SDKs give them, so a pod already set up for IRSA needs
//! nothing else. Parsing collects every problem before failing, so one start
//! reports the whole bad configuration.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

use crate::cli::{AwsArgs, SidecarArgs};
use crate::credentials::RefreshPolicy;
use crate::secret::Secret;

/// Names of the environment variables we read.
pub mod vars {
    pub const LISTEN: &str = "BEDROCK_BROKER_LISTEN";
    pub const ADMIN_LISTEN: &str = "BEDROCK_BROKER_ADMIN_LISTEN";
    pub const LOG_FORMAT: &str = "BEDROCK_BROKER_LOG_FORMAT";
    pub const SIGNING_NAME: &str = "BEDROCK_BROKER_SIGNING_NAME";
    pub const MAX_BODY_BYTES: &str = "BEDROCK_BROKER_MAX_BODY_BYTES";
    pub const SHUTDOWN_GRACE_PERIOD: &str = "BEDROCK_BROKER_SHUTDOWN_GRACE_PERIOD";
    pub const CONNECT_TIMEOUT: &str = "BEDROCK_BROKER_CONNECT_TIMEOUT";
    pub const STS_TIMEOUT: &str = "BEDROCK_BROKER_STS_TIMEOUT";
    pub const REFRESH_FRACTION: &str = "BEDROCK_BROKER_REFRESH_FRACTION";
    pub const REFRESH_MAX_BACKOFF: &str = "BEDROCK_BROKER_REFRESH_MAX_BACKOFF";
    pub const TOKEN_WATCH_INTERVAL: &str = "BEDROCK_BROKER_TOKEN_WATCH_INTERVAL";
    pub const RESPONSE_HEADER_TIMEOUT: &str = "BEDROCK_BROKER_RESPONSE_HEADER_TIMEOUT";
    pub const STREAM_IDLE_TIMEOUT: &str = "BEDROCK_BROKER_STREAM_IDLE_TIMEOUT";
    pub const USAGE_METRICS: &str = "BEDROCK_BROKER_USAGE_METRICS";
    pub const USAGE_MODELS: &str = "BEDROCK_BROKER_USAGE_MODELS";
    pub const SESSION_DURATION: &str = "BEDROCK_BROKER_SESSION_DURATION";
    pub const SESSION_POLICY: &str = "BEDROCK_BROKER_SESSION_POLICY";
    pub const SESSION_POLICY_ARNS: &str = "BEDROCK_BROKER_SESSION_POLICY_ARNS";
    pub const CHAIN_ROLE_ARN: &str = "BEDROCK_BROKER_CHAIN_ROLE_ARN";
    pub const CHAIN_EXTERNAL_ID: &str = "BEDROCK_BROKER_CHAIN_EXTERNAL_ID";
    pub const CREDENTIALS_LISTEN: &str = "BEDROCK_BROKER_CREDENTIALS_LISTEN";
    pub const CREDENTIALS_TOKEN_FILE: &str = "BEDROCK_BROKER_CREDENTIALS_TOKEN_FILE";
    /// Downward API: the pod's namespace and name, for the default session name.
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    pub const POD_NAME: &str = "POD_NAME";

    pub const AWS_REGION: &str = "AWS_REGION";
    pub const AWS_DEFAULT_REGION: &str = "AWS_DEFAULT_REGION";
    pub const AWS_ENDPOINT_URL_BEDROCK_RUNTIME: &str = "AWS_ENDPOINT_URL_BEDROCK_RUNTIME";
    pub const AWS_ENDPOINT_URL: &str = "AWS_ENDPOINT_URL";
    pub const AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME: &str =
        "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME";
    pub const MANTLE_UPSTREAM: &str = "BEDROCK_BROKER_MANTLE_UPSTREAM";
    pub const AWS_USE_FIPS_ENDPOINT: &str = "AWS_USE_FIPS_ENDPOINT";
    pub const AWS_USE_DUALSTACK_ENDPOINT: &str = "AWS_USE_DUALSTACK_ENDPOINT";
    pub const AWS_ENDPOINT_URL_STS: &str = "AWS_ENDPOINT_URL_STS";
    pub const AWS_CA_BUNDLE: &str = "AWS_CA_BUNDLE";
    pub const AWS_ROLE_ARN: &str = "AWS_ROLE_ARN";
    pub const AWS_WEB_IDENTITY_TOKEN_FILE: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
    pub const AWS_ROLE_SESSION_NAME: &str = "AWS_ROLE_SESSION_NAME";
    pub const AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    pub const AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    pub const AWS_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    pub const AWS_BEARER_TOKEN_BEDROCK: &str = "AWS_BEARER_TOKEN_BEDROCK";
    pub const AWS_PROFILE: &str = "AWS_PROFILE";
    pub const AWS_CONTAINER_CREDENTIALS_FULL_URI: &str = "AWS_CONTAINER_CREDENTIALS_FULL_URI";
    pub const AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: &str =
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI";
    pub const CREDENTIAL_SOURCE: &str = "BEDROCK_BROKER_CREDENTIAL_SOURCE";
    /// Set by Kubernetes to the pod name; the default session name is built from it.
    pub const HOSTNAME: &str = "HOSTNAME";
}

/// Defaults, each with the reason it is what it is.
pub mod defaults {
    use std::time::Duration;

    /// Loopback only: the proxy signs whatever reaches it, so nothing outside
    /// the pod may reach it.
    pub const LISTEN: &str = "127.0.0.1:9787";
    /// All interfaces: Prometheus and the kubelet probes come from outside the pod.
    pub const ADMIN_LISTEN: &str = "0.0.0.0:9788";
    /// Bedrock's largest request (InvokeModel with images/documents) is 25 MB.
    pub const MAX_BODY_BYTES: usize = 25 * 1024 * 1024;
    /// Below Kubernetes' default 30 s termination grace, so we exit before SIGKILL.
    pub const SHUTDOWN_GRACE_PERIOD: Duration = Duration::from_secs(25);
    /// Long enough for a cross-region TLS handshake, short enough to fail fast.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// STS answers in well under a second; 10 s absorbs a slow IdP lookup.
    pub const STS_TIMEOUT: Duration = Duration::from_secs(10);
    /// Signing name for bedrock-runtime, bedrock-agent-runtime and custom endpoints.
    pub const SIGNING_NAME: &str = "bedrock";
    /// Generous: a long non-streaming generation can take many minutes, but
    /// a connection that never answers must not hold a client forever.
    pub const RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(15 * 60);
    /// Models pause between tokens for seconds, not minutes.
    pub const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
    /// Distinct `model` label values before the rest become `other`.
    pub const USAGE_MAX_MODELS: usize = 20;
    /// A `stat` a second is free, and a rotated token is exchanged within a second.
    pub const TOKEN_WATCH_INTERVAL: Duration = Duration::from_secs(1);
    /// Session name prefix, so CloudTrail shows the broker made the call.
    pub const SESSION_NAME_PREFIX: &str = "bedrock-broker";
}

/// A snapshot of the process environment, so parsing is a pure function.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// The current process environment (variables that are not UTF-8 are skipped).
    pub fn from_process() -> Self {
        Self(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// The variable's value; empty values count as unset, as in the AWS SDKs.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// One configuration problem, naming where the bad value came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ConfigError {
    pub origin: String,
    pub message: String,
}

impl ConfigError {
    fn new(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where a value came from: a flag, or the first environment variable set.
pub(crate) struct Lookup<'a> {
    pub(crate) value: Option<&'a str>,
    pub(crate) origin: String,
}

pub(crate) fn lookup<'a>(
    flag: Option<&'a str>,
    flag_name: &str,
    env: &'a Env,
    vars: &[&str],
) -> Lookup<'a> {
    if let Some(v) = flag {
        return Lookup {
            value: Some(v),
            origin: format!("--{flag_name}"),
        };
    }
    for var in vars {
        if let Some(v) = env.get(var) {
            return Lookup {
                value: Some(v),
                origin: (*var).to_owned(),
            };
        }
    }
    let origin = if flag_name.is_empty() {
        vars.join(" / ")
    } else {
        std::iter::once(format!("--{flag_name}"))
            .chain(vars.iter().map(|v| (*v).to_owned()))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    Lookup {
        value: None,
        origin,
    }
}

/// Collects errors while parsing, so all of them are reported at once.
#[derive(Default)]
pub(crate) struct Errors(Vec<ConfigError>);

impl Errors {
    pub(crate) fn push(&mut self, origin: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError::new(origin, message));
    }

    /// Parses `flag` (else the variable `var`), or gives `default` when unset.
    pub(crate) fn value<T: Clone>(
        &mut self,
        flag: Option<&str>,
        flag_name: &str,
        env: &Env,
        var: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        self.parse(&lookup(flag, flag_name, env, &[var]), default, parse)
    }

    /// Parse the value if present, record an error if it does not parse.
    pub(crate) fn parse<T>(
        &mut self,
        l: &Lookup<'_>,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T
    where
        T: Clone,
    {
        match l.value {
            None => default,
            Some(raw) => match parse(raw.trim()) {
                Ok(v) => v,
                Err(msg) => {
                    self.push(&l.origin, msg);
                    default
                }
            },
        }
    }

    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ConfigErrors(self.0))
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    /// Reads the log format early, before the rest of the configuration, so
    /// configuration errors are already logged in the chosen format.
    pub fn from_args(args: &AwsArgs, env: &Env) -> Result<Self, ConfigError> {
        let l = lookup(
            args.log_format.as_deref(),
            "log-format",
            env,
            &[vars::LOG_FORMAT],
        );
        match l.value.map(str::trim) {
            None | Some("text") => Ok(Self::Text),
            Some("json") => Ok(Self::Json),
            Some(other) => Err(ConfigError::new(
                l.origin,
                format!("unknown log format {other:?}; expected text or json"),
            )),
        }
    }
}

/// An AWS region name such as `us-east-1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region(String);

impl Region {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = !raw.is_empty()
            && raw.len() <= 32
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-')
            && !raw.ends_with('-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not a region name (expected something like us-east-1)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An IAM role ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn(String);

impl RoleArn {
    pub fn parse(raw: &str) -> Result<Self, String> {
        // arn:<partition>:iam::<12-digit account>:role/<path/name>
        let mut parts = raw.splitn(6, ':');
        let ok = parts.next() == Some("arn")
            && parts.next().is_some_and(|p| p.starts_with("aws"))
            && parts.next() == Some("iam")
            && parts.next() == Some("")
            && parts
                .next()
                .is_some_and(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
            && parts
                .next()
                .is_some_and(|r| r.strip_prefix("role/").is_some_and(|n| !n.is_empty()));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not an IAM role ARN (expected arn:aws:iam::123456789012:role/NAME)"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An STS role session name: 2 to 64 characters of `[\w+=,.@-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionName(String);

impl SessionName {
    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        if (2..=64).contains(&raw.len()) && raw.chars().all(Self::allowed) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!(
                "{raw:?} is not a valid role session name (2 to 64 characters of letters, digits and _+=,.@-)"
            ))
        }
    }

    /// A valid session name derived from any string (normally the pod name):
    /// invalid characters become `-`, the result is prefixed and cut to 64.
    pub fn derive(from: Option<&str>) -> Self {
        let cleaned = Self::clean(from.unwrap_or(""));
        let mut name = if cleaned.is_empty() {
            defaults::SESSION_NAME_PREFIX.to_owned()
        } else {
            format!("{}-{cleaned}", defaults::SESSION_NAME_PREFIX)
        };
        name.truncate(64);
        Self(name)
    }

    /// `<namespace>.<pod>`, so CloudTrail names the calling pod; falls back
    /// to [`SessionName::derive`] outside Kubernetes.
    pub fn for_pod(namespace: Option<&str>, pod: Option<&str>) -> Self {
        match (namespace, pod) {
            (Some(ns), Some(pod)) => {
                let mut name = format!("{}.{}", Self::clean(ns), Self::clean(pod));
                name.truncate(64);
                match Self::parse(&name) {
                    Ok(n) => n,
                    Err(_) => Self::derive(Some(pod)),
                }
            }
            (_, pod) => Self::derive(pod),
        }
    }

    fn clean(raw: &str) -> String {
        raw.chars()
            .map(|c| if Self::allowed(c) { c } else { '-' })
            .collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Web identity (IRSA) settings.
#[derive(Debug, Clone)]
pub struct WebIdentityConfig {
    pub role_arn: RoleArn,
    /// Re-read on every attempt: the kubelet rotates the token in place.
    pub token_file: PathBuf,
    pub session_name: SessionName,
}

/// What STS is asked to put in the session it issues (on the last hop).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// `DurationSeconds`; `None` leaves the role's default (normally 1 h).
    pub duration: Option<Duration>,
    /// Inline session policy (validated JSON): the session may do at most this.
    pub policy: Option<String>,
    /// Managed policies narrowing the session.
    pub policy_arns: Vec<String>,
}

impl SessionOptions {
    fn parse_duration(raw: &str, chained: bool) -> Result<Duration, String> {
        let d = parse_duration(raw)?;
        let max = if chained { 3600 } else { 43_200 };
        if d.as_secs() < 900 || d.as_secs() > max || d.subsec_nanos() != 0 {
            return Err(format!(
                "{raw:?} is outside what STS accepts: whole seconds from 15m to {}",
                if chained {
                    "1h (role chaining limit)"
                } else {
                    "12h"
                }
            ));
        }
        Ok(d)
    }

    fn parse_policy(raw: &str) -> Result<String, String> {
        let text = match raw.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read the policy file {path}: {e}"))?,
            None => raw.to_owned(),
        };
        match serde_json::from_str::<serde_json::Value>(&text) {
            Ok(serde_json::Value::Object(_)) => {}
            Ok(_) => return Err("the session policy must be a JSON object".to_owned()),
            Err(e) => return Err(format!("the session policy is not valid JSON: {e}")),
        }
        if text.len() > 2048 {
            return Err(format!(
                "the session policy is {} characters; STS accepts at most 2048",
                text.len()
            ));
        }
        Ok(text)
    }

    fn parse_policy_arns(raw: &str) -> Result<Vec<String>, String> {
        let arns: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if arns.len() > 10 {
            return Err(format!(
                "{} policy ARNs given; STS accepts at most 10",
                arns.len()
            ));
        }
        for arn in &arns {
            let parts: Vec<&str> = arn.splitn(6, ':').collect();
            let ok = parts.len() == 6
                && parts[0] == "arn"
                && parts[1].starts_with("aws")
                && parts[2] == "iam"
                && (parts[4] == "aws"
                    || (parts[4].len() == 12 && parts[4].bytes().all(|b| b.is_ascii_digit())))
                && parts[5]
                    .strip_prefix("policy/")
                    .is_some_and(|n| !n.is_empty());
            if !ok {
                return Err(format!(
                    "{arn:?} is not an IAM policy ARN (arn:aws:iam::123456789012:policy/NAME)"
                ));
            }
        }
        Ok(arns)
    }
}

/// An optional second hop: AssumeRole into another (often cross-account) role.
#[derive(Debug, Clone)]
pub struct ChainConfig {
    pub role_arn: RoleArn,
    pub external_id: Option<String>,
    pub session_name: SessionName,
}

/// Long-lived or temporary keys from the environment, for local development.
#[derive(Debug, Clone)]
pub struct StaticKeys {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
}

/// Where SigV4 credentials come from.
#[derive(Debug, Clone)]
pub enum SigV4Source {
    WebIdentity(WebIdentityConfig),
    Static(StaticKeys),
    /// A provider from aws-config.
    Sdk(SdkSource),
}

/// The aws-config providers of the standard chain we offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SdkSource {
    /// Shared config/credentials files; `None` is the default profile.
    Profile(Option<String>),
    /// ECS / EKS Pod Identity container credentials endpoint.
    Container,
    /// EC2 instance metadata (IMDSv2).
    Imds,
}

impl SigV4Source {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::WebIdentity(_) => "web-identity",
            Self::Static(_) => "static",
            Self::Sdk(SdkSource::Profile(_)) => "profile",
            Self::Sdk(SdkSource::Container) => "container",
            Self::Sdk(SdkSource::Imds) => "imds",
        }
    }
}

/// Which credential source to use (`--credential-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceChoice {
    /// Static keys, then web identity, then container credentials, then a
    /// named profile. Never IMDS: in a pod it yields the node's role.
    Auto,
    WebIdentity,
    Static,
    Profile,
    Container,
    Imds,
}

impl SourceChoice {
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(match raw {
            "auto" => Self::Auto,
            "web-identity" => Self::WebIdentity,
            "static" => Self::Static,
            "profile" => Self::Profile,
            "container" => Self::Container,
            "imds" => Self::Imds,
            _ => {
                return Err(format!(
                    "{raw:?} is not a credential source (auto, web-identity, static, profile, container, imds)"
                ))
            }
        })
    }
}

/// How the proxy authenticates requests that bring no credentials of their own.
#[derive(Debug, Clone)]
pub enum CredentialMode {
    /// A configured Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`): no SigV4.
    Bearer(Secret),
    /// SigV4 with credentials from `source`.
    SigV4(SigV4Source),
}

/// STS client settings.
#[derive(Debug, Clone)]
pub struct StsConfig {
    /// `AWS_ENDPOINT_URL_STS`; `None` means the regional endpoint.
    pub endpoint: Option<Uri>,
    pub timeout: Duration,
}

/// Extra trust anchors (`AWS_CA_BUNDLE`), read and checked at start.
#[derive(Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .finish()
    }
}

/// Everything needed to obtain credentials; shared by `sidecar` and `credentials`.
#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    pub region: Option<Region>,
    pub mode: CredentialMode,
    pub sts: StsConfig,
    pub ca_bundle: Option<CaBundle>,
    /// Applied by STS to the session whose credentials sign requests.
    pub session: SessionOptions,
    /// Role chaining, when configured.
    pub chain: Option<ChainConfig>,
    /// Non-fatal remarks about the configuration, logged at start.
    pub warnings: Vec<String>,
}

/// The upstream Bedrock endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub scheme: Scheme,
    /// Host and non-default port; default ports are dropped so the signed
    /// host matches the `Host` header the HTTP client sends.
    pub authority: Authority,
    /// Path prefix of the base URL, without trailing slash (usually empty).
    pub base_path: String,
    pub signing_name: String,
}

impl UpstreamConfig {
    /// Parses a base URL such as `https://bedrock-runtime.us-east-1.amazonaws.com`.
    pub fn parse_base_url(raw: &str) -> Result<(Scheme, Authority, String), String> {
        let uri: Uri = raw
            .parse()
            .map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| format!("{raw:?} has no scheme (expected https://HOST)"))?;
        if scheme != Scheme::HTTPS && scheme != Scheme::HTTP {
            return Err(format!("{raw:?}: scheme must be https or http"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{raw:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{raw:?} must not contain user information"));
        }
        if uri.query().is_some() {
            return Err(format!("{raw:?} must not have a query string"));
        }
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let authority: Authority = match authority.port_u16() {
            Some(p) if p == default_port => authority
                .host()
                .parse()
                .map_err(|e| format!("{raw:?}: {e}"))?,
            _ => authority.clone(),
        };
        let base_path = uri.path().trim_end_matches('/').to_owned();
        Ok((scheme, authority, base_path))
    }

    /// The SigV4 signing name for an upstream host: `bedrock-mantle` for
    /// Bedrock Mantle, `bedrock` for everything else (bedrock-runtime,
    /// bedrock-agent-runtime, VPC endpoints of those, custom endpoints).
    pub fn signing_name_for_host(host: &str) -> &'static str {
        let mantle = host
            .split('.')
            .any(|label| label == "bedrock-mantle" || label.starts_with("bedrock-mantle-"));
        if mantle {
            "bedrock-mantle"
        } else {
            defaults::SIGNING_NAME
        }
    }
}

/// Configuration of `bedrock-broker sidecar`.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub credentials: CredentialsConfig,
    pub upstream: UpstreamConfig,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    pub connect_timeout: Duration,
    pub refresh: RefreshPolicy,
    /// `None` disables watching the token file for rotations.
    pub token_watch_interval: Option<Duration>,
    /// The optional loopback container-credentials endpoint for other SDKs.
    pub container_credentials: Option<ContainerCredentialsConfig>,
    pub response_header_timeout: Option<Duration>,
    pub stream_idle_timeout: Option<Duration>,
    /// `None`: usage metrics off; `Some(None)`: first N models; `Some(Some(list))`: allow-list.
    pub usage_metrics: Option<Option<Vec<String>>>,
    /// Bedrock Agents runtime, served under `/agent-runtime/`.
    pub agent_runtime: Option<UpstreamConfig>,
    /// Bedrock Mantle, served under `/mantle/`.
    pub mantle: Option<UpstreamConfig>,
}

/// Serving the AWS container-credentials protocol to the rest of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCredentialsConfig {
    /// Loopback only: whoever reaches it gets the credentials.
    pub listen: SocketAddr,
    /// Shared with the app (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
    pub token_file: PathBuf,
}

pub(crate) fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{raw:?} is not a boolean (true or false)")),
    }
}

/// The default endpoint of a Bedrock service, honouring FIPS and dual-stack
/// the way the AWS endpoint rules name them.
fn default_endpoint(service: &str, region: &Region, fips: bool, dualstack: bool) -> String {
    let host = if fips {
        format!("{service}-fips")
    } else {
        service.to_owned()
    };
    let domain = if dualstack {
        "api.aws"
    } else {
        "amazonaws.com"
    };
    format!("https://{host}.{region}.{domain}")
}

pub(crate) fn parse_duration(raw: &str) -> Result<Duration, String> {
    humantime::parse_duration(raw)
        .map_err(|e| format!("{raw:?} is not a duration (examples: 500ms, 10s, 2m): {e}"))
}

pub(crate) fn parse_positive_duration(raw: &str) -> Result<Duration, String> {
    match parse_duration(raw)? {
        d if d.is_zero() => Err("must be greater than zero".to_owned()),
        d => Ok(d),
    }
}

pub(crate) fn parse_addr(raw: &str) -> Result<SocketAddr, String> {
    raw.parse()
        .map_err(|_| format!("{raw:?} is not an address (expected IP:PORT, e.g. 127.0.0.1:9787)"))
}

/// The session name used when none is configured: namespace and pod name
/// from the downward API, else the host name.
fn default_session_name(env: &Env) -> SessionName {
    SessionName::for_pod(
        env.get(vars::POD_NAMESPACE),
        env.get(vars::POD_NAME).or(env.get(vars::HOSTNAME)),
    )
}

impl CredentialsConfig {
    pub fn from_args(args: &AwsArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut errors = Errors::default();
        let config = Self::parse(args, env, &mut errors);
        errors.finish(config)
    }

    fn parse(args: &AwsArgs, env: &Env, errors: &mut Errors) -> Self {
        let mut warnings = Vec::new();
        let region_l = lookup(
            args.region.as_deref(),
            "region",
            env,
            &[vars::AWS_REGION, vars::AWS_DEFAULT_REGION],
        );
        let region = match region_l.value {
            None => None,
            Some(raw) => match Region::parse(raw.trim()) {
                Ok(r) => Some(r),
                Err(m) => {
                    errors.push(&region_l.origin, m);
                    None
                }
            },
        };

        let sts_endpoint_l = lookup(None, "", env, &[vars::AWS_ENDPOINT_URL_STS]);
        let sts_endpoint = errors.parse(&sts_endpoint_l, None, |raw| {
            UpstreamConfig::parse_base_url(raw)?;
            raw.parse::<Uri>().map(Some).map_err(|e| e.to_string())
        });
        let sts_timeout = errors.parse(
            &lookup(
                args.sts_timeout.as_deref(),
                "sts-timeout",
                env,
                &[vars::STS_TIMEOUT],
            ),
            defaults::STS_TIMEOUT,
            parse_positive_duration,
        );

        let ca_bundle = env.get(vars::AWS_CA_BUNDLE).and_then(|path| {
            match crate::tls::read_ca_bundle(path.as_ref()) {
                Ok(pem) => Some(CaBundle {
                    path: PathBuf::from(path),
                    pem,
                }),
                Err(e) => {
                    errors.push(vars::AWS_CA_BUNDLE, e.to_string());
                    None
                }
            }
        });

        let web_identity = Self::parse_web_identity(env, errors);
        let static_keys = Self::parse_static(env, errors);
        let bearer = match env.get(vars::AWS_BEARER_TOKEN_BEDROCK) {
            Some(t) if t.trim().is_empty() => {
                errors.push(vars::AWS_BEARER_TOKEN_BEDROCK, "is blank");
                None
            }
            Some(t) => Some(Secret::new(t.trim())),
            None => None,
        };

        let choice_l = lookup(
            args.credential_source.as_deref(),
            "credential-source",
            env,
            &[vars::CREDENTIAL_SOURCE],
        );
        let choice = errors.parse(&choice_l, SourceChoice::Auto, SourceChoice::parse);
        let container_env = env.get(vars::AWS_CONTAINER_CREDENTIALS_FULL_URI).is_some()
            || env
                .get(vars::AWS_CONTAINER_CREDENTIALS_RELATIVE_URI)
                .is_some();
        let profile = env.get(vars::AWS_PROFILE).map(str::to_owned);
        let mut require = |what: &str, found: Option<SigV4Source>| {
            if found.is_none() {
                errors.push(
                    &choice_l.origin,
                    format!("the {what} source is chosen but not configured"),
                );
            }
            found
        };
        let sigv4 = match choice {
            SourceChoice::Auto => match (web_identity, static_keys) {
                (Some(_), Some(_)) => {
                    errors.push(
                        format!(
                            "{} / {} and {} / {}",
                            vars::AWS_ROLE_ARN,
                            vars::AWS_WEB_IDENTITY_TOKEN_FILE,
                            vars::AWS_ACCESS_KEY_ID,
                            vars::AWS_SECRET_ACCESS_KEY
                        ),
                        "both web identity and static keys are set; keep only one (IRSA pods: unset the static keys) or pin one with --credential-source",
                    );
                    None
                }
                (Some(w), None) => Some(SigV4Source::WebIdentity(w)),
                (None, Some(s)) => Some(SigV4Source::Static(s)),
                (None, None) if container_env => Some(SigV4Source::Sdk(SdkSource::Container)),
                (None, None) => profile.map(|p| SigV4Source::Sdk(SdkSource::Profile(Some(p)))),
            },
            SourceChoice::WebIdentity => {
                require("web-identity", web_identity.map(SigV4Source::WebIdentity))
            }
            SourceChoice::Static => require("static", static_keys.map(SigV4Source::Static)),
            SourceChoice::Container => require(
                "container (AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI)",
                container_env.then_some(SigV4Source::Sdk(SdkSource::Container)),
            ),
            SourceChoice::Profile => Some(SigV4Source::Sdk(SdkSource::Profile(profile))),
            SourceChoice::Imds => Some(SigV4Source::Sdk(SdkSource::Imds)),
        };

        let mode = match (bearer, sigv4) {
            (Some(token), Some(source)) => {
                warnings.push(format!(
                    "{} is set, so every request uses that API key; the {} credentials are not used",
                    vars::AWS_BEARER_TOKEN_BEDROCK,
                    source.kind()
                ));
                CredentialMode::Bearer(token)
            }
            (Some(token), None) => CredentialMode::Bearer(token),
            (None, Some(source)) => CredentialMode::SigV4(source),
            (None, None) => {
                if !errors.0.iter().any(|e| {
                    e.origin.contains(vars::AWS_ROLE_ARN)
                        || e.origin.contains(vars::AWS_ACCESS_KEY_ID)
                        || e.origin.contains(vars::AWS_WEB_IDENTITY_TOKEN_FILE)
                        || e.origin.contains(vars::AWS_SECRET_ACCESS_KEY)
                        || e.origin.contains(vars::CREDENTIAL_SOURCE)
                }) {
                    errors.push(
                        format!(
                            "{} / {}, {} / {}, {}",
                            vars::AWS_ROLE_ARN,
                            vars::AWS_WEB_IDENTITY_TOKEN_FILE,
                            vars::AWS_ACCESS_KEY_ID,
                            vars::AWS_SECRET_ACCESS_KEY,
                            vars::AWS_BEARER_TOKEN_BEDROCK
                        ),
                        "no credentials configured: set the IRSA pair (role ARN and token file), or static keys for local development, or a Bedrock API key, or choose --credential-source profile, container or imds",
                    );
                }
                // Placeholder so parsing can go on collecting errors; never returned.
                CredentialMode::Bearer(Secret::new(""))
            }
        };

        if matches!(mode, CredentialMode::SigV4(_)) && region.is_none() {
            errors.push(
                region_l.origin.clone(),
                "a region is required for SigV4 signing (for example us-east-1)",
            );
        }

        let chain = Self::parse_chain(args, env, errors);
        if chain.is_some() && matches!(mode, CredentialMode::Bearer(_)) {
            warnings.push(format!(
                "{} is ignored: API-key mode does not use SigV4 credentials",
                vars::CHAIN_ROLE_ARN
            ));
        }
        let chained = chain.is_some();
        let session = SessionOptions {
            duration: errors.parse(
                &lookup(
                    args.session_duration.as_deref(),
                    "session-duration",
                    env,
                    &[vars::SESSION_DURATION],
                ),
                None,
                |raw| SessionOptions::parse_duration(raw, chained).map(Some),
            ),
            policy: errors.parse(
                &lookup(
                    args.session_policy.as_deref(),
                    "session-policy",
                    env,
                    &[vars::SESSION_POLICY],
                ),
                None,
                |raw| SessionOptions::parse_policy(raw).map(Some),
            ),
            policy_arns: errors.parse(
                &lookup(
                    args.session_policy_arns.as_deref(),
                    "session-policy-arns",
                    env,
                    &[vars::SESSION_POLICY_ARNS],
                ),
                Vec::new(),
                SessionOptions::parse_policy_arns,
            ),
        };

        Self {
            region,
            mode,
            sts: StsConfig {
                endpoint: sts_endpoint,
                timeout: sts_timeout,
            },
            ca_bundle,
            session,
            chain,
            warnings,
        }
    }

    fn parse_chain(args: &AwsArgs, env: &Env, errors: &mut Errors) -> Option<ChainConfig> {
        let role_l = lookup(
            args.chain_role_arn.as_deref(),
            "chain-role-arn",
            env,
            &[vars::CHAIN_ROLE_ARN],
        );
        let external_l = lookup(
            args.chain_external_id.as_deref(),
            "chain-external-id",
            env,
            &[vars::CHAIN_EXTERNAL_ID],
        );
        let external_id = errors.parse(&external_l, None, |raw| {
            let ok = (2..=1224).contains(&raw.len())
                && raw
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
            if ok {
                Ok(Some(raw.to_owned()))
            } else {
                Err(
                    "an ExternalId is 2 to 1224 characters of letters, digits and _+=,.@:/-"
                        .to_owned(),
                )
            }
        });
        let Some(raw_role) = role_l.value else {
            if external_l.value.is_some() {
                errors.push(
                    &external_l.origin,
                    format!("is set without {}", vars::CHAIN_ROLE_ARN),
                );
            }
            return None;
        };
        let role_arn = RoleArn::parse(raw_role.trim())
            .map_err(|m| errors.push(&role_l.origin, m))
            .ok()?;
        let session_name = match env.get(vars::AWS_ROLE_SESSION_NAME) {
            Some(raw) => SessionName::parse(raw.trim()).ok()?,
            None => default_session_name(env),
        };
        Some(ChainConfig {
            role_arn,
            external_id,
            session_name,
        })
    }

    fn parse_web_identity(env: &Env, errors: &mut Errors) -> Option<WebIdentityConfig> {
        let role = env.get(vars::AWS_ROLE_ARN);
        let token_file = env.get(vars::AWS_WEB_IDENTITY_TOKEN_FILE);
        match (role, token_file) {
            (None, None) => None,
            (Some(_), None) => {
                errors.push(
                    vars::AWS_WEB_IDENTITY_TOKEN_FILE,
                    format!(
                        "is not set but {} is; web identity needs both (the path of the projected service account token)",
                        vars::AWS_ROLE_ARN
                    ),
                );
                None
            }
            (None, Some(_)) => {
                errors.push(
                    vars::AWS_ROLE_ARN,
                    format!(
                        "is not set but {} is; web identity needs both (the IAM role to assume)",
                        vars::AWS_WEB_IDENTITY_TOKEN_FILE
                    ),
                );
                None
            }
            (Some(role), Some(token_file)) => {
                let role = RoleArn::parse(role.trim())
                    .map_err(|m| errors.push(vars::AWS_ROLE_ARN, m))
                    .ok();
                let session_name = match env.get(vars::AWS_ROLE_SESSION_NAME) {
                    Some(raw) => SessionName::parse(raw.trim())
                        .map_err(|m| errors.push(vars::AWS_ROLE_SESSION_NAME, m))
                        .ok(),
                    None => Some(default_session_name(env)),
                };
                Some(WebIdentityConfig {
                    role_arn: role?,
                    token_file: PathBuf::from(token_file),
                    session_name: session_name?,
                })
            }
        }
    }

    fn parse_static(env: &Env, errors: &mut Errors) -> Option<StaticKeys> {
        let id = env.get(vars::AWS_ACCESS_KEY_ID);
        let secret = env.get(vars::AWS_SECRET_ACCESS_KEY);
        match (id, secret) {
            (None, None) => {
                if env.get(vars::AWS_SESSION_TOKEN).is_some() {
                    errors.push(
                        vars::AWS_SESSION_TOKEN,
                        format!(
                            "is set without {} and {}",
                            vars::AWS_ACCESS_KEY_ID,
                            vars::AWS_SECRET_ACCESS_KEY
                        ),
                    );
                }
                None
            }
            (Some(_), None) => {
                errors.push(
                    vars::AWS_SECRET_ACCESS_KEY,
                    format!("is not set but {} is", vars::AWS_ACCESS_KEY_ID),
                );
                None
            }
            (None, Some(_)) => {
                errors.push(
                    vars::AWS_ACCESS_KEY_ID,
                    format!("is not set but {} is", vars::AWS_SECRET_ACCESS_KEY),
                );
                None
            }
            (Some(id), Some(secret)) => Some(StaticKeys {
                access_key_id: id.trim().to_owned(),
                secret_access_key: Secret::new(secret.trim()),
                session_token: env.get(vars::AWS_SESSION_TOKEN).map(Secret::new),
            }),
        }
    }
}

impl SidecarConfig {
    fn parse_container_credentials(
        args: &SidecarArgs,
        env: &Env,
        credentials: &CredentialsConfig,
        errors: &mut Errors,
    ) -> Option<ContainerCredentialsConfig> {
        let listen_l = lookup(
            args.credentials_listen.as_deref(),
            "credentials-listen",
            env,
            &[vars::CREDENTIALS_LISTEN],
        );
        let token_l = lookup(
            args.credentials_token_file.as_deref(),
            "credentials-token-file",
            env,
            &[vars::CREDENTIALS_TOKEN_FILE],
        );
        let listen = errors.parse(&listen_l, None, |raw| {
            let addr = parse_addr(raw)?;
            if addr.ip().is_loopback() {
                Ok(Some(addr))
            } else {
                Err(format!("{raw:?} is not a loopback address; the endpoint hands out credentials, so it must stay inside the pod"))
            }
        });
        match (listen, token_l.value) {
            (None, None) => None,
            (None, Some(_)) if listen_l.value.is_none() => {
                errors.push(
                    &token_l.origin,
                    format!("is set without {}", vars::CREDENTIALS_LISTEN),
                );
                None
            }
            (None, _) => None,
            (Some(_), None) => {
                errors.push(
                    &token_l.origin,
                    "is required with --credentials-listen: SDKs must present the token (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
                );
                None
            }
            (Some(_), Some(_)) if matches!(credentials.mode, CredentialMode::Bearer(_)) => {
                errors.push(
                    &listen_l.origin,
                    "needs SigV4 credentials; API-key mode has none to share",
                );
                None
            }
            (Some(listen), Some(file)) => Some(ContainerCredentialsConfig {
                listen,
                token_file: PathBuf::from(file),
            }),
        }
    }

    pub fn from_args(args: &SidecarArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut errors = Errors::default();
        let credentials = CredentialsConfig::parse(&args.aws, env, &mut errors);

        let listen = errors.parse(
            &lookup(args.listen.as_deref(), "listen", env, &[vars::LISTEN]),
            defaults::LISTEN.parse().expect("valid default"),
            parse_addr,
        );
        let admin_listen = errors.parse(
            &lookup(
                args.admin_listen.as_deref(),
                "admin-listen",
                env,
                &[vars::ADMIN_LISTEN],
            ),
            defaults::ADMIN_LISTEN.parse().expect("valid default"),
            parse_addr,
        );

        let upstream_l = lookup(
            args.upstream.as_deref(),
            "upstream",
            env,
            &[
                vars::AWS_ENDPOINT_URL_BEDROCK_RUNTIME,
                vars::AWS_ENDPOINT_URL,
            ],
        );
        let fips = errors.parse(
            &lookup(
                args.use_fips.as_deref(),
                "use-fips",
                env,
                &[vars::AWS_USE_FIPS_ENDPOINT],
            ),
            false,
            parse_bool,
        );
        let dualstack = errors.parse(
            &lookup(
                args.use_dualstack.as_deref(),
                "use-dualstack",
                env,
                &[vars::AWS_USE_DUALSTACK_ENDPOINT],
            ),
            false,
            parse_bool,
        );
        let base = match (upstream_l.value, &credentials.region) {
            (Some(raw), _) => UpstreamConfig::parse_base_url(raw.trim())
                .map_err(|m| errors.push(&upstream_l.origin, m))
                .ok(),
            (None, Some(region)) => UpstreamConfig::parse_base_url(&default_endpoint(
                "bedrock-runtime",
                region,
                fips,
                dualstack,
            ))
            .ok(),
            (None, None) => {
                // SigV4 mode already reported the missing region.
                if matches!(credentials.mode, CredentialMode::Bearer(_)) {
                    errors.push(
                        "--region / AWS_REGION / AWS_DEFAULT_REGION",
                        "a region (or an explicit --upstream) is required to know which Bedrock endpoint to call",
                    );
                }
                None
            }
        };
        let signing_name_l = lookup(
            args.signing_name.as_deref(),
            "signing-name",
            env,
            &[vars::SIGNING_NAME],
        );
        let signing_name_override = errors.parse(&signing_name_l, None, |raw| {
            if !raw.is_empty()
                && raw
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                Ok(Some(raw.to_owned()))
            } else {
                Err(format!(
                    "{raw:?} is not a signing name (lowercase letters, digits and -)"
                ))
            }
        });

        let max_body_bytes = errors.parse(
            &lookup(
                args.max_body_bytes.as_deref(),
                "max-body-bytes",
                env,
                &[vars::MAX_BODY_BYTES],
            ),
            defaults::MAX_BODY_BYTES,
            |raw| match raw.parse::<usize>() {
                Ok(0) | Err(_) => Err(format!("{raw:?} is not a positive number of bytes")),
                Ok(n) => Ok(n),
            },
        );
        let shutdown_grace = errors.parse(
            &lookup(
                args.shutdown_grace_period.as_deref(),
                "shutdown-grace-period",
                env,
                &[vars::SHUTDOWN_GRACE_PERIOD],
            ),
            defaults::SHUTDOWN_GRACE_PERIOD,
            parse_duration,
        );
        let connect_timeout = errors.parse(
            &lookup(
                args.connect_timeout.as_deref(),
                "connect-timeout",
                env,
                &[vars::CONNECT_TIMEOUT],
            ),
            defaults::CONNECT_TIMEOUT,
            parse_positive_duration,
        );

        let mut refresh = RefreshPolicy::default();
        refresh.fraction = errors.parse(
            &lookup(
                args.refresh_fraction.as_deref(),
                "refresh-fraction",
                env,
                &[vars::REFRESH_FRACTION],
            ),
            refresh.fraction,
            |raw| match raw.parse::<f64>() {
                Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
                _ => Err(format!(
                    "{raw:?} is not a fraction strictly between 0 and 1 (e.g. 0.5)"
                )),
            },
        );
        refresh.backoff_cap = errors.parse(
            &lookup(
                args.refresh_max_backoff.as_deref(),
                "refresh-max-backoff",
                env,
                &[vars::REFRESH_MAX_BACKOFF],
            ),
            refresh.backoff_cap,
            parse_positive_duration,
        );

        let token_watch_interval = errors.parse(
            &lookup(
                args.token_watch_interval.as_deref(),
                "token-watch-interval",
                env,
                &[vars::TOKEN_WATCH_INTERVAL],
            ),
            Some(defaults::TOKEN_WATCH_INTERVAL),
            |raw| parse_duration(raw).map(|d| (!d.is_zero()).then_some(d)),
        );

        let container_credentials =
            Self::parse_container_credentials(args, env, &credentials, &mut errors);
        let optional_duration =
            |raw: &str| parse_duration(raw).map(|d| (!d.is_zero()).then_some(d));
        let response_header_timeout = errors.parse(
            &lookup(
                args.response_header_timeout.as_deref(),
                "response-header-timeout",
                env,
                &[vars::RESPONSE_HEADER_TIMEOUT],
            ),
            Some(defaults::RESPONSE_HEADER_TIMEOUT),
            optional_duration,
        );
        let stream_idle_timeout = errors.parse(
            &lookup(
                args.stream_idle_timeout.as_deref(),
                "stream-idle-timeout",
                env,
                &[vars::STREAM_IDLE_TIMEOUT],
            ),
            Some(defaults::STREAM_IDLE_TIMEOUT),
            optional_duration,
        );
        let usage_on = errors.parse(
            &lookup(
                args.usage_metrics.as_deref(),
                "usage-metrics",
                env,
                &[vars::USAGE_METRICS],
            ),
            true,
            |raw| match raw {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(format!("{raw:?} is not a boolean (true or false)")),
            },
        );
        let usage_models = lookup(
            args.usage_models.as_deref(),
            "usage-models",
            env,
            &[vars::USAGE_MODELS],
        )
        .value
        .map(|raw| {
            raw.split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        let usage_metrics = usage_on.then_some(usage_models);

        let upstream = base.map(|(scheme, authority, base_path)| {
            let signing_name = signing_name_override.unwrap_or_else(|| {
                UpstreamConfig::signing_name_for_host(authority.host()).to_owned()
            });
            UpstreamConfig {
                scheme,
                authority,
                base_path,
                signing_name,
            }
        });

        // Extra routes: each has an explicit URL or a regional default.
        let mut extra_route =
            |flag: Option<&str>, name: &str, var: &str, default: Option<String>| {
                let l = lookup(flag, name, env, &[var]);
                let raw = l.value.map(|v| v.trim().to_owned()).or(default)?;
                let (scheme, authority, base_path) = UpstreamConfig::parse_base_url(&raw)
                    .map_err(|m| errors.push(&l.origin, m))
                    .ok()?;
                Some(UpstreamConfig {
                    signing_name: UpstreamConfig::signing_name_for_host(authority.host())
                        .to_owned(),
                    scheme,
                    authority,
                    base_path,
                })
            };
        let region = credentials.region.clone();
        let agent_runtime = extra_route(
            args.agent_runtime_upstream.as_deref(),
            "agent-runtime-upstream",
            vars::AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME,
            region
                .as_ref()
                .map(|r| default_endpoint("bedrock-agent-runtime", r, fips, dualstack)),
        );
        // Mantle is only published as a dual-stack api.aws endpoint.
        let mantle = extra_route(
            args.mantle_upstream.as_deref(),
            "mantle-upstream",
            vars::MANTLE_UPSTREAM,
            region
                .as_ref()
                .map(|r| format!("https://bedrock-mantle.{r}.api.aws")),
        )
        .map(|mut m| {
            // Mantle signs as bedrock-mantle whatever its (custom) host is.
            m.signing_name = "bedrock-mantle".to_owned();
            m
        });

        let config = upstream.map(|upstream| Self {
            listen,
            admin_listen,
            credentials,
            upstream,
            max_body_bytes,
            shutdown_grace,
            connect_timeout,
            refresh,
            token_watch_interval,
            container_credentials,
            response_header_timeout,
            stream_idle_timeout,
            usage_metrics,
            agent_runtime,
            mantle,
        });
        match errors.finish(()) {
            Ok(()) => Ok(config.expect("an upstream exists when no error was recorded")),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn irsa_environment_alone_is_a_complete_configuration() {
        let c = sidecar(&IRSA).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9787");
        assert_eq!(c.admin_listen.to_string(), "0.0.0.0:9788");
        assert_eq!(
            c.upstream.authority.as_str(),
            "bedrock-runtime.eu-west-1.amazonaws.com"
        );
        assert_eq!(c.upstream.scheme, Scheme::HTTPS);
        assert_eq!(c.upstream.signing_name, "bedrock");
        assert_eq!(c.max_body_bytes, 25 * 1024 * 1024);
        match &c.credentials.mode {
            CredentialMode::SigV4(SigV4Source::WebIdentity(w)) => {
                assert_eq!(w.role_arn.as_str(), "arn:aws:iam::123456789012:role/app");
                assert_eq!(w.session_name.as_str(), "bedrock-broker");
            }
            other => panic!("unexpected mode {other:?}"),
        }
    }

    #[test]
    fn session_name_is_derived_from_the_pod_name() {
        let mut env = IRSA.to_vec();
        env.push(("HOSTNAME", "chat-api-7d9f/x y"));
        let c = sidecar(&env).unwrap();
        let CredentialMode::SigV4(SigV4Source::WebIdentity(w)) = &c.credentials.mode else {
            panic!()
        };
        assert_eq!(w.session_name.as_str(), "bedrock-broker-chat-api-7d9f-x-y");
        let long = SessionName::derive(Some(&"p".repeat(200)));
        assert_eq!(long.as_str().len(), 64);
        assert!(SessionName::parse(long.as_str()).is_ok());
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
        ] {
            assert!(
                o.iter().any(|x| x == expected),
                "{expected} missing in {o:?}"
            );
        }
    }

    #[test]
    fn flags_win_over_environment_and_endpoint_url_variables_are_ordered() {
        let mut env = IRSA.to_vec();
        env.push(("AWS_ENDPOINT_URL", "http://generic:1"));
        env.push(("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "http://specific:2"));
        env.push(("BEDROCK_BROKER_LISTEN", "127.0.0.1:1"));
        let c = sidecar(&env).unwrap();
        assert_eq!(c.upstream.authority.as_str(), "specific:2");
        assert_eq!(c.listen.port(), 1);

        let args = SidecarArgs {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some("https://bedrock-mantle.us-east-1.api.aws:443/".into()),
            ..Default::default()
        };
        let c = SidecarConfig::from_args(&args, &Env::from_pairs(env.iter().copied())).unwrap();
        assert_eq!(c.listen.port(), 0);
        assert_eq!(
            c.upstream.authority.as_str(),
            "bedrock-mantle.us-east-1.api.aws"
        );
        assert_eq!(c.upstream.signing_name, "bedrock-mantle");
        assert_eq!(c.upstream.base_path, "");
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
    fn sigv4_without_region_is_refused_but_bearer_with_upstream_is_not() {
        let e = sidecar(&[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "s")]).unwrap_err();
        assert!(e.to_string().contains("region is required"), "{e}");
        let c = sidecar(&[
            ("AWS_BEARER_TOKEN_BEDROCK", "ABSKexample"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
        ])
        .unwrap();
        assert!(matches!(c.credentials.mode, CredentialMode::Bearer(_)));
    }

    #[test]
    fn bearer_token_takes_precedence_with_a_warning() {
        let mut env = IRSA.to_vec();
        env.push(("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key-abc"));
        let c = sidecar(&env).unwrap();
        assert!(matches!(c.credentials.mode, CredentialMode::Bearer(_)));
        assert_eq!(c.credentials.warnings.len(), 1);
        assert!(!format!("{c:?}").contains("bedrock-api-key-abc"));
    }

    #[test]
    fn session_name_defaults_to_namespace_and_pod() {
        let mut env = IRSA.to_vec();
        env.extend([("POD_NAMESPACE", "team-a"), ("POD_NAME", "chat-7d9f-x2")]);
        let c = sidecar(&env).unwrap();
        let CredentialMode::SigV4(SigV4Source::WebIdentity(w)) = &c.credentials.mode else {
            panic!()
        };
        assert_eq!(w.session_name.as_str(), "team-a.chat-7d9f-x2");
        let long = SessionName::for_pod(Some(&"n".repeat(40)), Some(&"p".repeat(40)));
        assert_eq!(long.as_str().len(), 64);
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
                Ok(CredentialMode::SigV4(s)) => s.kind().to_owned(),
                Ok(_) => "bearer".to_owned(),
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
    }

    #[test]
    fn extra_routes_and_fips_dualstack_endpoints() {
        let c = sidecar(&IRSA).unwrap();
        assert_eq!(
            c.agent_runtime.unwrap().authority.as_str(),
            "bedrock-agent-runtime.eu-west-1.amazonaws.com"
        );
        let mantle = c.mantle.unwrap();
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
        let c = sidecar(&env).unwrap();
        assert_eq!(
            c.upstream.authority.as_str(),
            "bedrock-runtime-fips.eu-west-1.api.aws"
        );
        assert_eq!(
            c.agent_runtime.unwrap().authority.as_str(),
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
    fn signing_name_follows_the_host() {
        for (host, name) in [
            ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock"),
            ("bedrock-runtime-fips.us-east-1.amazonaws.com", "bedrock"),
            ("bedrock-agent-runtime.us-east-1.amazonaws.com", "bedrock"),
            ("bedrock-mantle.us-east-1.api.aws", "bedrock-mantle"),
            (
                "vpce-0abc-xyz.bedrock-runtime.us-east-1.vpce.amazonaws.com",
                "bedrock",
            ),
            ("127.0.0.1", "bedrock"),
        ] {
            assert_eq!(UpstreamConfig::signing_name_for_host(host), name, "{host}");
        }
    }

    #[test]
    fn role_arns_are_checked() {
        assert!(RoleArn::parse("arn:aws:iam::123456789012:role/a/b").is_ok());
        assert!(RoleArn::parse("arn:aws-cn:iam::123456789012:role/x").is_ok());
        for bad in [
            "arn:aws:iam::1234:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam::123456789012:role/",
            "role",
        ] {
            assert!(RoleArn::parse(bad).is_err(), "{bad}");
        }
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
}
