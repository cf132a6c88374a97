//! Web identity: projected service account token -> STS AssumeRoleWithWebIdentity.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use super::skew::ServerDate;
use super::source::{BoxFuture, CredentialSource, Fetched, TokenExpiry};
use super::token::{self, Claims};
use super::{sts, SourceError};
use super::{SessionOptions, WebIdentityConfig};
use crate::secret::Secret;

const OPERATION: &str = super::error::WEB_IDENTITY_OPERATION;

/// Where each attempt reads the web identity token: the projected file in
/// the sidecar; memory in the fleet simulation, so ten thousand simulated
/// pods need no ten thousand files (and stay deterministic).
pub trait TokenRead: Send + Sync + fmt::Debug {
    fn read(&self) -> BoxFuture<'_, Result<Secret, SourceError>>;
}

/// The token file, re-read on every attempt.
#[derive(Debug)]
struct TokenFile(PathBuf);

impl TokenRead for TokenFile {
    fn read(&self) -> BoxFuture<'_, Result<Secret, SourceError>> {
        Box::pin(token::read(&self.0))
    }
}

/// Exchanges the pod's service account token for role credentials.
#[derive(Debug)]
pub struct WebIdentitySource {
    config: WebIdentityConfig,
    token: Arc<dyn TokenRead>,
    /// Session options, when this is the last hop (no role chaining).
    session: SessionOptions,
    sts: aws_sdk_sts::Client,
    /// STS's `Date` of the last fetch, answered or refused.
    date: ServerDate,
    /// The last token read's expiry, exchanged or not.
    token_expiry: Mutex<TokenExpiry>,
}

impl WebIdentitySource {
    pub fn new(
        config: WebIdentityConfig,
        session: SessionOptions,
        sts: aws_sdk_sts::Client,
    ) -> Self {
        let token = Arc::new(TokenFile(config.token_file.clone()));
        Self {
            config,
            token,
            session,
            sts,
            date: ServerDate::default(),
            token_expiry: Mutex::new(TokenExpiry::NoToken),
        }
    }

    /// Reads the token from `token` instead of the configured file.
    pub fn with_token(mut self, token: Arc<dyn TokenRead>) -> Self {
        self.token = token;
        self
    }

    async fn assume(&self) -> Result<Fetched, SourceError> {
        // This attempt's date only: a failed token read must not leave the
        // last success's, read later as skew.
        self.date.set(None);
        let token = self.token.read().await?;
        let token_expiry = match Claims::decode(token.expose()).and_then(|c| c.expiry()) {
            Some(at) => TokenExpiry::At(at),
            None => TokenExpiry::Unknown,
        };
        *self
            .token_expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = token_expiry;
        let date = self.date.clone();
        let out = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(self.config.role_arn.as_str())
            .role_session_name(self.config.session_name.as_str())
            .web_identity_token(token.expose())
            .set_duration_seconds(self.session.duration.map(|d| d.as_secs() as i32))
            .set_policy(self.session.policy.clone())
            .set_policy_arns(sts::policy_descriptors(&self.session.policy_arns))
            .customize()
            .interceptor(date.clone())
            .send()
            .await
            .map_err(|e| sts::source_error(OPERATION, e).without_token(token.expose()))?;
        let mut fetched = sts::fetched(
            OPERATION,
            "web-identity",
            out.credentials,
            out.assumed_role_user.map(|u| u.arn),
            token_expiry,
        )?;
        fetched.server_time = date.get();
        Ok(fetched)
    }
}

impl CredentialSource for WebIdentitySource {
    fn kind(&self) -> &'static str {
        "web-identity"
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(self.assume())
    }

    fn last_answer_time(&self) -> Option<SystemTime> {
        self.date.get()
    }

    fn last_token_expiry(&self) -> TokenExpiry {
        *self
            .token_expiry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
