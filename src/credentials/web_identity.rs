//! Web identity: projected service account token -> STS AssumeRoleWithWebIdentity.

use super::source::{BoxFuture, CredentialSource, Fetched};
use super::token::{self, Claims};
use super::{sts, SourceError};
use super::{SessionOptions, WebIdentityConfig};

const OPERATION: &str = "AssumeRoleWithWebIdentity";

/// Exchanges the pod's service account token for role credentials.
#[derive(Debug)]
pub struct WebIdentitySource {
    config: WebIdentityConfig,
    /// Session options, when this is the last hop (no role chaining).
    session: SessionOptions,
    sts: aws_sdk_sts::Client,
}

impl WebIdentitySource {
    pub fn new(
        config: WebIdentityConfig,
        session: SessionOptions,
        sts: aws_sdk_sts::Client,
    ) -> Self {
        Self {
            config,
            session,
            sts,
        }
    }

    async fn assume(&self) -> Result<Fetched, SourceError> {
        let token = token::read(&self.config.token_file).await?;
        let token_expiry = Claims::decode(token.expose()).and_then(|c| c.expiry());
        let out = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(self.config.role_arn.as_str())
            .role_session_name(self.config.session_name.as_str())
            .web_identity_token(token.expose())
            .set_duration_seconds(self.session.duration.map(|d| d.as_secs() as i32))
            .set_policy(self.session.policy.clone())
            .set_policy_arns(sts::policy_descriptors(&self.session.policy_arns))
            .send()
            .await
            .map_err(|e| sts::source_error(OPERATION, e))?;
        sts::fetched(
            OPERATION,
            "web-identity",
            out.credentials,
            out.assumed_role_user.map(|u| u.arn),
            token_expiry,
        )
    }
}

impl CredentialSource for WebIdentitySource {
    fn kind(&self) -> &'static str {
        "web-identity"
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(self.assume())
    }
}
