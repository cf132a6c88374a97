//! Credentials: where they come from (sources), where they live (the cell),
//! and what keeps them fresh (the refresher).
//!
//! As in smithy-rs aws-config, a source knows nothing about caching and the
//! refresher knows nothing about STS: the refresher asks a
//! [`CredentialSource`] for credentials and swaps them into the
//! [`CredentialCell`] that request handling reads without locks.

mod api_key;
mod bounded_answers;
mod cell;
mod chained;
mod config;
pub mod diagnose;
mod error;
mod policy;
mod refresher;
mod sdk_provider;
pub mod select;
pub mod skew;
mod source;
mod start;
pub mod sts;
pub mod token;
pub mod token_watch;
mod web_identity;

pub use api_key::{bearer_header, without_public_prefix, ApiKey, ApiKeyKind, KeyExpiry};
pub use cell::{CredentialCell, HeldCredentials, Unusable};
pub use chained::ChainedSource;
pub use config::{
    ChainConfig, ContainerToken, CredentialMode, CredentialsConfig, SdkSource, SessionOptions,
    SigV4Source, StaticKeys, StsConfig, WebIdentityConfig,
};
pub use error::{ErrorClass, SourceError};
pub use policy::{Failure, RefreshPolicy};
pub use refresher::Refresher;
pub use sdk_provider::SdkProviderSource;
pub use source::{source_for, BoxFuture, CredentialSource, Fetched, StaticSource, TokenExpiry};
pub use start::{api_key_expired, start, Background, Readiness, StartError};
pub use web_identity::{TokenRead, WebIdentitySource};
