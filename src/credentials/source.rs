//! The credential source abstraction and the static source.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;

use super::{ChainedSource, SourceError, WebIdentitySource};
use super::{CredentialsConfig, SessionOptions, SigV4Source, StaticKeys};
use crate::config::aws::Region;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the web identity token a fetch exchanged said of its own expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenExpiry {
    /// The source exchanges no token (static keys, the SDK's providers).
    NoToken,
    /// A token without a readable `exp` claim (not a JWT, or no claim).
    Unknown,
    At(SystemTime),
}

/// What one successful fetch produced.
#[derive(Debug)]
pub struct Fetched {
    pub credentials: Credentials,
    /// The assumed-role ARN, when the source knows it (for logs and diagnosis).
    pub principal: Option<String>,
    /// `exp` of the web identity token that was exchanged.
    pub token_expiry: TokenExpiry,
    /// The `Date` of the server's answer, when it had one (clock skew).
    pub server_time: Option<SystemTime>,
}

/// Something that can produce credentials. Knows nothing about caching or
/// refresh timing: that is the refresher's job.
pub trait CredentialSource: Send + Sync + fmt::Debug {
    /// Short name for logs and output (`web-identity`, `static`).
    fn kind(&self) -> &'static str;

    /// Obtains credentials once.
    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>>;

    /// The `Date` of the answers to the last fetch, failed ones included:
    /// a clock far enough off to break signing fails the signed calls (a
    /// chained role's), and the skew is worth knowing exactly then.
    fn last_answer_time(&self) -> Option<SystemTime> {
        None
    }

    /// What the token the last fetch read said of its expiry, failed
    /// exchanges included: in an STS outage, whether the kubelet still
    /// rotates the token is the first thing to rule out.
    fn last_token_expiry(&self) -> TokenExpiry {
        TokenExpiry::NoToken
    }
}

/// Keys from the environment; they never expire and are never refreshed.
#[derive(Debug)]
pub struct StaticSource {
    keys: StaticKeys,
}

impl StaticSource {
    pub fn new(keys: StaticKeys) -> Self {
        Self { keys }
    }
}

impl CredentialSource for StaticSource {
    fn kind(&self) -> &'static str {
        "static"
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        let credentials = Credentials::new(
            self.keys.access_key_id.clone(),
            self.keys.secret_access_key.expose().to_owned(),
            self.keys
                .session_token
                .as_ref()
                .map(|t| t.expose().to_owned()),
            None,
            "static",
        );
        Box::pin(async move {
            Ok(Fetched {
                credentials,
                principal: None,
                token_expiry: TokenExpiry::NoToken,
                server_time: None,
            })
        })
    }
}

/// Builds the source a configuration describes: the base source, wrapped in
/// a second AssumeRole hop when role chaining is configured. Session options
/// go to whichever hop issues the credentials that sign requests.
pub fn source_for(
    source: &SigV4Source,
    config: &CredentialsConfig,
    region: &Region,
) -> Arc<dyn CredentialSource> {
    let last_hop_session = |is_last: bool| {
        if is_last {
            config.session.clone()
        } else {
            SessionOptions::default()
        }
    };
    let base: Arc<dyn CredentialSource> = match source {
        SigV4Source::Static(keys) => Arc::new(StaticSource::new(keys.clone())),
        SigV4Source::Sdk(sdk) => Arc::new(super::SdkProviderSource::new(sdk, config, region)),
        SigV4Source::WebIdentity(w) => {
            let sts = super::sts::client(config, region, None);
            Arc::new(WebIdentitySource::new(
                w.clone(),
                last_hop_session(config.chain.is_none()),
                sts,
            ))
        }
    };
    match &config.chain {
        None => base,
        Some(chain) => Arc::new(ChainedSource::new(
            base,
            chain.clone(),
            last_hop_session(true),
            config.clone(),
            region.clone(),
        )),
    }
}
