//! Role chaining: AssumeRole into a second role with the first credentials.

use std::sync::Arc;
use std::time::SystemTime;

use super::skew::ServerDate;
use super::source::{BoxFuture, CredentialSource, Fetched, TokenExpiry};
use super::{sts, SourceError};
use super::{ChainConfig, CredentialsConfig, SessionOptions};
use crate::config::aws::Region;

const OPERATION: &str = "AssumeRole";

/// Wraps a source: each fetch obtains base credentials, then exchanges them
/// for the chained role's. The refresher sees one source, so both hops are
/// refreshed together and the cell only ever holds the final credentials.
#[derive(Debug)]
pub struct ChainedSource {
    base: Arc<dyn CredentialSource>,
    chain: ChainConfig,
    session: SessionOptions,
    /// STS settings (endpoint, timeout, CA bundle) for the second hop.
    config: CredentialsConfig,
    region: Region,
    /// The `Date` of the last fetch's answers (either hop's).
    date: ServerDate,
}

impl ChainedSource {
    pub fn new(
        base: Arc<dyn CredentialSource>,
        chain: ChainConfig,
        session: SessionOptions,
        config: CredentialsConfig,
        region: Region,
    ) -> Self {
        Self {
            base,
            chain,
            session,
            config,
            region,
            date: ServerDate::default(),
        }
    }

    async fn assume(&self) -> Result<Fetched, SourceError> {
        self.date.set(None);
        let first = match self.base.fetch().await {
            Ok(first) => first,
            Err(e) => {
                self.date.set(self.base.last_answer_time());
                return Err(e);
            }
        };
        // STS never quotes the session token it was signed with, but a
        // relay in its place may: blanked in what this call's error says.
        let first_token = crate::secret::Secret::new(
            first
                .credentials
                .session_token()
                .unwrap_or_default()
                .to_owned(),
        );
        // A client per fetch: it is signed with this fetch's base credentials.
        let client = sts::client(&self.config, &self.region, Some(first.credentials));
        let date = ServerDate::default();
        let sent = client
            .assume_role()
            .role_arn(self.chain.role_arn.as_str())
            .role_session_name(self.chain.session_name.as_str())
            .set_external_id(
                self.chain
                    .external_id
                    .as_ref()
                    .map(|e| e.as_str().to_owned()),
            )
            .set_duration_seconds(self.session.duration.map(|d| d.as_secs() as i32))
            .set_policy(self.session.policy.clone())
            .set_policy_arns(sts::policy_descriptors(&self.session.policy_arns))
            .customize()
            .interceptor(date.clone())
            .send()
            .await
            .map_err(|e| sts::source_error(OPERATION, e).without_secrets(&[first_token.expose()]));
        // A refusal's own date (a clock off by minutes fails only the signed
        // second hop). Not the first hop's when the second got no answer:
        // read after a timeout, it would add the wait to the skew.
        self.date.set(match &sent {
            Ok(_) => date.get().or(first.server_time),
            Err(_) => date.get(),
        });
        let out = sent?;
        let mut fetched = sts::fetched(
            OPERATION,
            "assume-role",
            out.credentials,
            out.assumed_role_user.map(|u| u.arn),
            first.token_expiry,
        )?;
        fetched.server_time = date.get().or(first.server_time);
        Ok(fetched)
    }
}

impl CredentialSource for ChainedSource {
    fn kind(&self) -> &'static str {
        "chained"
    }

    fn fetch(&self) -> BoxFuture<'_, Result<Fetched, SourceError>> {
        Box::pin(self.assume())
    }

    fn last_answer_time(&self) -> Option<SystemTime> {
        self.date.get()
    }

    fn last_token_expiry(&self) -> TokenExpiry {
        self.base.last_token_expiry()
    }
}
