//! What the credentials subsystem is configured with: filled by
//! [`crate::config`], read by the sources, the refresher and `credentials`.

use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use super::ApiKey;
use crate::config::aws::{ExternalId, PolicyArn, Region, RoleArn, SessionName};
use crate::egress::EgressProxy;
use crate::secret::Secret;
use crate::tls::CaBundle;

/// Everything needed to obtain credentials; shared by `sidecar` and `credentials`.
#[derive(Debug, Clone)]
pub struct CredentialsConfig {
    /// Signing region; `None` only in API-key mode with an explicit upstream.
    pub region: Option<Region>,
    pub mode: CredentialMode,
    pub sts: StsConfig,
    pub ca_bundle: Option<CaBundle>,
    /// The forward proxy HTTPS to STS and Bedrock goes through, if any.
    pub egress_proxy: Option<EgressProxy>,
    /// Applied by STS to the session whose credentials sign requests.
    pub session: SessionOptions,
    /// Role chaining, when configured.
    pub chain: Option<ChainConfig>,
    /// Non-fatal remarks about the configuration, logged at start.
    pub warnings: Vec<String>,
    /// The token aws-config sends to a container credentials endpoint.
    pub container_token: ContainerToken,
}

/// How the proxy authenticates requests that bring no credentials of their own.
#[derive(Debug, Clone)]
pub enum CredentialMode {
    /// A configured Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`): no SigV4.
    ApiKey(ApiKey),
    /// SigV4 with credentials from this source.
    SigV4(SigV4Source),
}

impl CredentialMode {
    /// For logs: `api-key` or the source's kind.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::ApiKey(_) => "api-key",
            Self::SigV4(source) => source.kind(),
        }
    }
}

/// Where SigV4 credentials come from.
#[derive(Debug, Clone)]
pub enum SigV4Source {
    WebIdentity(WebIdentityConfig),
    Static(StaticKeys),
    /// A provider from aws-config.
    Sdk(SdkSource),
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

/// Web identity (IRSA) settings.
#[derive(Debug, Clone)]
pub struct WebIdentityConfig {
    pub role_arn: RoleArn,
    /// Re-read on every attempt: the kubelet rotates the token in place.
    pub token_file: PathBuf,
    pub session_name: SessionName,
}

/// Long-lived or temporary keys from the environment, for local development.
#[derive(Debug, Clone)]
pub struct StaticKeys {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
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

/// Where aws-config reads the token it presents to the container
/// credentials endpoint: known here only to blank it out of an error that
/// quotes it (a relay in the agent's place may).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerToken {
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
    pub inline: Option<Secret>,
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`: read when an error needs
    /// it, as aws-config reads it for every call (the Pod Identity agent's
    /// token is rotated).
    pub file: Option<std::path::PathBuf>,
}

impl ContainerToken {
    /// The tokens aws-config may have sent, as they stand now.
    pub fn current(&self) -> Vec<Secret> {
        // A token file is small; one too long to be one is not read.
        const MAX_TOKEN_FILE: u64 = 64 * 1024;
        let from_file = self.file.as_deref().and_then(|path| {
            crate::files::read_small_text(path, MAX_TOKEN_FILE)
                .ok()
                .map(|text| Secret::new(text.trim()))
        });
        self.inline.iter().cloned().chain(from_file).collect()
    }
}

/// What STS is asked to put in the session it issues (on the last hop).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionOptions {
    /// `DurationSeconds`; `None` leaves the role's default (normally 1 h).
    pub duration: Option<Duration>,
    /// Inline session policy (validated JSON): the session may do at most this.
    pub policy: Option<String>,
    /// Managed policies narrowing the session.
    pub policy_arns: Vec<PolicyArn>,
}

/// An optional second hop: AssumeRole into another (often cross-account) role.
#[derive(Debug, Clone)]
pub struct ChainConfig {
    pub role_arn: RoleArn,
    pub external_id: Option<ExternalId>,
    pub session_name: SessionName,
}

/// STS client settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsConfig {
    /// `AWS_ENDPOINT_URL_STS`; `None` means the regional endpoint.
    pub endpoint: Option<Uri>,
    pub timeout: Duration,
    /// STS's FIPS endpoint (`AWS_USE_FIPS_ENDPOINT`); an `endpoint` wins.
    pub use_fips: bool,
    /// STS's dual-stack endpoint (`AWS_USE_DUALSTACK_ENDPOINT`); an
    /// `endpoint` wins.
    pub use_dualstack: bool,
}
