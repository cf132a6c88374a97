//! The rest of the standard AWS credential chain, from aws-config: shared
//! config/credentials profiles, container credentials (ECS, EKS Pod
//! Identity) and EC2 instance metadata (IMDSv2). Each feeds the same
//! refresher, cell, metrics and readiness as the web identity source.

use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use super::source::{BoxFuture, CredentialSource, Fetched};
use super::{sts, ErrorClass, SourceError};
use super::{CredentialsConfig, SdkSource};
use crate::config::aws::Region;

/// An aws-config credentials provider seen as a [`CredentialSource`].
#[derive(Debug)]
pub struct SdkProviderSource {
    kind: &'static str,
    provider: Provider,
}

#[derive(Debug)]
enum Provider {
    Kept(SharedCredentialsProvider),
    /// aws-config's IMDS provider answers any IMDS error with the
    /// credentials it fetched last: the refresher would count an outage as
    /// refreshes that worked, and then take the expired credentials for a
    /// clock problem. One without a past each time lets the error through
    /// (the refresher keeps serving what it holds, as that fallback would).
    ImdsEachTime(Box<ProviderConfig>),
}

impl SdkProviderSource {
    pub fn new(source: &SdkSource, config: &CredentialsConfig, region: &Region) -> Self {
        // The STS clients a profile builds (its role, its web identity)
        // get the sidecar's own STS settings: without them a profile's STS
        // call had no timeout (a stalled STS stalled the refresher for good,
        // `--sts-timeout` or not) and retried inside one attempt, which the
        // refresher then counted as one. The refresher owns retrying.
        let provider_config = ProviderConfig::default()
            .with_region(Some(aws_config::Region::new(region.as_str().to_owned())))
            .with_http_client(sts::http_client(config))
            .with_retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .with_timeout_config(sts::timeouts(config));
        let (kind, provider) = match source {
            SdkSource::Profile(name) => {
                let mut b = aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .configure(&provider_config);
                if let Some(name) = name {
                    b = b.profile_name(name);
                }
                (
                    "profile",
                    Provider::Kept(SharedCredentialsProvider::new(b.build())),
                )
            }
            SdkSource::Container => (
                "container",
                Provider::Kept(SharedCredentialsProvider::new(
                    aws_config::ecs::EcsCredentialsProvider::builder()
                        .configure(&provider_config)
                        .build(),
                )),
            ),
            SdkSource::Imds => ("imds", Provider::ImdsEachTime(Box::new(provider_config))),
        };
        Self { kind, provider }
    }

    async fn load(&self) -> Result<Fetched, SourceError> {
        let loaded = match &self.provider {
            Provider::Kept(provider) => provider.provide_credentials().await,
            Provider::ImdsEachTime(config) => {
                aws_config::imds::credentials::ImdsCredentialsProvider::builder()
                    .configure(config)
                    .build()
                    .provide_credentials()
                    .await
            }
        };
        match loaded {
            Ok(credentials) => Ok(Fetched {
                credentials,
                principal: None,
                token_expiry: super::TokenExpiry::NoToken,
                server_time: None,
            }),
            Err(e) => Err(provider_error(self.kind, &e)),
        }
    }
}

fn provider_error(kind: &'static str, e: &CredentialsError) -> SourceError {
    let class = match e {
        // Nothing to load or a broken configuration: someone has to fix it.
        CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_) => {
            ErrorClass::Fatal
        }
        _ => ErrorClass::Transient,
    };
    let code = match e {
        CredentialsError::CredentialsNotLoaded(_) => "CredentialsNotLoaded",
        CredentialsError::ProviderTimedOut(_) => "ProviderTimedOut",
        CredentialsError::InvalidConfiguration(_) => "InvalidConfiguration",
        CredentialsError::ProviderError(_) => "ProviderError",
        _ => "Unhandled",
    };
    SourceError::Provider {
        kind,
        code: code.to_owned(),
        // Providers that call STS (a profile's role, its web identity)
        // carry its message: blanked and on one line as STS's own is.
        // aws-config quotes a container URL it refuses, user information
        // (a password) and all.
        message: super::sts::loggable(&crate::secret::without_url_credentials(
            &crate::secret::without_jwts(&crate::error_text::with_causes(e)),
        )),
        class,
    }
}

impl CredentialSource for SdkProviderSource {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(self.load())
    }
}
