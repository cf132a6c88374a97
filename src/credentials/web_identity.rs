//! Web identity: projected service account token -> STS AssumeRoleWithWebIdentity.

use std::time::SystemTime;

use aws_credential_types::Credentials;

use super::source::{BoxFuture, CredentialSource, Fetched};
use super::token::{self, Claims};
use super::{sts, SourceError};
use crate::config::{SessionOptions, WebIdentityConfig};

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
        let c = out.credentials.ok_or(SourceError::MissingCredentials {
            operation: OPERATION,
        })?;
        let expiry = SystemTime::try_from(c.expiration).map_err(|_| SourceError::Transport {
            operation: OPERATION,
            detail: "credential expiration is out of range".to_owned(),
        })?;
        Ok(Fetched {
            credentials: Credentials::new(
                c.access_key_id,
                c.secret_access_key,
                Some(c.session_token),
                Some(expiry),
                "web-identity",
            ),
            principal: out.assumed_role_user.map(|u| u.arn),
            token_expiry,
        })
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
