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
    /// aws-config's profile provider keeps the error of its first build
    /// (a missing profile) and hands it out once: every later attempt
    /// failed with "initialization error already taken", and its
    /// `ProviderConfig` keeps its first read of the files, so a fixed file
    /// was never read again without a restart. After a failure the next
    /// attempt starts from the files again; a provider that worked is kept
    /// (the providers it chains to cache, an SSO token for one).
    Profile {
        name: Option<String>,
        settings: Settings,
        built: std::sync::Mutex<Option<SharedCredentialsProvider>>,
    },
    /// aws-config's IMDS provider answers any IMDS error with the
    /// credentials it fetched last: the refresher would count an outage as
    /// refreshes that worked, and then take the expired credentials for a
    /// clock problem. One without a past each time lets the error through
    /// (the refresher keeps serving what it holds, as that fallback would).
    ImdsEachTime(Box<ProviderConfig>),
}

impl SdkProviderSource {
    pub fn new(source: &SdkSource, config: &CredentialsConfig, region: &Region) -> Self {
        let settings = Settings {
            region: aws_config::Region::new(region.as_str().to_owned()),
            http: sts::http_client(config),
            timeouts: sts::timeouts(config),
        };
        let provider_config = settings.provider_config();
        let (kind, provider) = match source {
            SdkSource::Profile(name) => (
                "profile",
                Provider::Profile {
                    name: name.clone(),
                    settings,
                    built: std::sync::Mutex::new(None),
                },
            ),
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
            Provider::Profile {
                name,
                settings,
                built,
            } => {
                let lock = || {
                    built
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                };
                let provider = lock()
                    .get_or_insert_with(|| profile_provider(name.as_deref(), settings))
                    .clone();
                let loaded = provider.provide_credentials().await;
                if loaded.is_err() {
                    lock().take();
                }
                loaded
            }
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

/// What every aws-config provider here is configured with.
#[derive(Debug)]
struct Settings {
    region: aws_config::Region,
    http: aws_smithy_runtime_api::client::http::SharedHttpClient,
    timeouts: aws_smithy_types::timeout::TimeoutConfig,
}

impl Settings {
    /// A new `ProviderConfig`: one keeps what it parsed of the profile
    /// files for as long as it (or any clone of it) lives.
    fn provider_config(&self) -> ProviderConfig {
        // The STS clients a profile builds (its role, its web identity)
        // get the sidecar's own STS settings: without them a profile's STS
        // call had no timeout (a stalled STS stalled the refresher for
        // good, `--sts-timeout` or not) and retried inside one attempt,
        // which the refresher then counted as one. The refresher owns
        // retrying.
        ProviderConfig::default()
            .with_region(Some(self.region.clone()))
            .with_http_client(self.http.clone())
            .with_retry_config(aws_smithy_types::retry::RetryConfig::disabled())
            .with_timeout_config(self.timeouts.clone())
    }
}

/// A profile provider reading the files afresh.
fn profile_provider(name: Option<&str>, settings: &Settings) -> SharedCredentialsProvider {
    let config = settings.provider_config();
    let mut b = aws_config::profile::ProfileFileCredentialsProvider::builder().configure(&config);
    if let Some(name) = name {
        b = b.profile_name(name);
    }
    SharedCredentialsProvider::new(b.build())
}

fn provider_error(kind: &'static str, e: &CredentialsError) -> SourceError {
    let class = match e {
        // aws-config's IMDS provider says "not loaded" for a connection it
        // could not make as for a node without a role: a blip is not
        // something someone has to fix.
        _ if unreachable(e) => ErrorClass::Transient,
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

/// Whether the provider could not reach its endpoint at all.
fn unreachable(e: &CredentialsError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cause {
        if err
            .downcast_ref::<aws_smithy_runtime_api::client::result::ConnectorError>()
            .is_some()
        {
            return true;
        }
        cause = err.source();
    }
    false
}

impl CredentialSource for SdkProviderSource {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(self.load())
    }
}
