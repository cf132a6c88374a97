//! The rest of the standard AWS credential chain, from aws-config: shared
//! config/credentials profiles, container credentials (ECS, EKS Pod
//! Identity) and EC2 instance metadata (IMDSv2). Each feeds the same
//! refresher, cell, metrics and readiness as the web identity source.

use aws_config::imds::client::error::ImdsError;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};

use super::source::{BoxFuture, CredentialSource, Fetched};
use super::{sts, ErrorClass, SourceError};
use super::{ContainerToken, CredentialsConfig, SdkSource};
use crate::config::aws::Region;
use crate::secret::Secret;

/// An aws-config credentials provider seen as a [`CredentialSource`].
#[derive(Debug)]
pub struct SdkProviderSource {
    kind: &'static str,
    provider: Provider,
    /// The token a container endpoint is sent, blanked from its errors.
    token: ContainerToken,
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
        Self {
            kind,
            provider,
            token: config.container_token.clone(),
        }
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
            // Read only now: an error is rare, and the file turns.
            Err(e) => Err(provider_error(self.kind, &e, &self.token.current())),
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

/// `secrets`: what the provider sent that its endpoint may quote back.
fn provider_error(kind: &'static str, e: &CredentialsError, secrets: &[Secret]) -> SourceError {
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
        // (a password) and all, and the container endpoint's message,
        // which a relay in its place may fill with the token it was sent.
        message: super::sts::loggable(&without_fragments(
            &crate::secret::without_url_credentials(&crate::secret::without_jwts(&described(e))),
            secrets,
        )),
        class,
    }
}

/// `e` and its causes, as [`crate::error_text::with_causes`] joins them,
/// but what IMDS said only by its status or its error code: aws-config
/// writes an error answer whole into its message (headers, body,
/// connection details) and repeats the `Message` of an error in IMDS's
/// own shape, and a relay in IMDS's place may fill either with the
/// session token the request sent, which the sidecar never sees to
/// blank (aws-config fetches it).
fn described(e: &CredentialsError) -> String {
    crate::error_text::with_causes_described(e, |err| match err.downcast_ref::<ImdsError>() {
        Some(ImdsError::ErrorResponse(answer)) => format!(
            "error response from IMDS (code: {})",
            answer.response().status().as_u16()
        ),
        _ => without_imds_message(err.to_string()),
    })
}

/// How aws-config (1.x, `imds/credentials.rs`) words IMDS's
/// `{"Code","Message"}` errors: the text before the code, and what ends
/// the code.
const IMDS_MESSAGES: [(&str, &str); 2] = [
    ("Error retrieving credentials from IMDS: ", " "),
    ("Incorrect IMDS/IAM configuration: [", "] "),
];

/// `text` with the `Message` of an IMDS error cut off after its code.
fn without_imds_message(text: String) -> String {
    for (lead, code_end) in IMDS_MESSAGES {
        let Some(rest) = text.strip_prefix(lead) else {
            continue;
        };
        let code = rest.find(code_end).map_or(rest, |end| &rest[..end]);
        let close = if code_end.starts_with(']') { "]" } else { "" };
        return format!(
            "{lead}{code}{close} (IMDS's message not repeated: it may quote the request's token)"
        );
    }
    text
}

fn without_fragments(text: &str, secrets: &[Secret]) -> String {
    let secrets: Vec<&str> = secrets.iter().map(Secret::expose).collect();
    crate::secret::without_fragments_of(text, &secrets)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_endpoint_quoting_its_token_is_blanked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "file-token-Zq81Lx0pVv\n").unwrap();
        let token = ContainerToken {
            inline: Some(Secret::new("inline-token-Mw42Rt7kBb")),
            file: Some(file),
        };
        let secrets = token.current();
        assert_eq!(
            secrets.len(),
            2,
            "the file's token, trimmed, beside the inline one"
        );
        // Whole, and cut short as a relay may quote it.
        let e = CredentialsError::provider_error(
            "failed to load credentials [AccessDenied]: Authorization inline-token-Mw42Rt7kBb \
             and file-token-Zq81L... may not assume the role",
        );
        let SourceError::Provider { message, .. } = provider_error("container", &e, &secrets)
        else {
            panic!("a provider error");
        };
        assert!(message.contains("AccessDenied"), "{message}");
        for piece in ["Mw42Rt7k", "Zq81L", "token-Mw", "file-tok"] {
            assert!(!message.contains(piece), "{piece} in {message}");
        }
    }

    #[test]
    fn a_missing_token_file_leaves_the_inline_token() {
        let token = ContainerToken {
            inline: Some(Secret::new("inline")),
            file: Some("/nonexistent/token".into()),
        };
        assert_eq!(token.current(), vec![Secret::new("inline")]);
        assert!(ContainerToken::default().current().is_empty());
    }

    #[test]
    fn what_imds_says_is_cut_to_its_code() {
        for (said, kept) in [
            (
                "Error retrieving credentials from IMDS: Failure token AQAEA1234 refused",
                "Error retrieving credentials from IMDS: Failure (IMDS's",
            ),
            (
                "Incorrect IMDS/IAM configuration: [AssumeRoleUnauthorizedAccess] AQAEA1234. \
                 Hint: Does this role have a trust relationship with EC2?",
                "Incorrect IMDS/IAM configuration: [AssumeRoleUnauthorizedAccess] (IMDS's",
            ),
            (
                "Error retrieving credentials from IMDS: Failure",
                "Error retrieving credentials from IMDS: Failure (IMDS's",
            ),
        ] {
            let out = without_imds_message(said.to_owned());
            assert!(out.starts_with(kept), "{out}");
            assert!(!out.contains("AQAEA"), "{out}");
        }
        let other = "an error occurred while loading credentials";
        assert_eq!(without_imds_message(other.to_owned()), other);
    }
}
