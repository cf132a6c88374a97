//! `bedrock-broker credentials`: obtain credentials exactly as the sidecar
//! would, ask STS who they belong to, and say so. Never prints a secret.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::{
    source_for, sts, token, ApiKeyKind, CredentialMode, CredentialsConfig, SdkSource, SigV4Source,
    SourceError,
};
use crate::clock::{saturating_sub, SharedClock};

/// A failed diagnosis, with what was found before the failure and what to
/// do about it.
#[derive(Debug, thiserror::Error)]
pub enum DiagnoseError {
    #[error("no region configured (set AWS_REGION)")]
    NoRegion,
    #[error("{found}{}", super::api_key_expired(*at))]
    ApiKeyExpired { found: String, at: SystemTime },
    #[error("{found}{step} failed: {source}{}", hint(source))]
    Failed {
        /// The report up to the failing step.
        found: String,
        step: &'static str,
        #[source]
        source: SourceError,
    },
}

fn hint(err: &SourceError) -> String {
    err.hint()
        .map(|h| format!("\n  hint: {h}"))
        .unwrap_or_default()
}

/// Runs the diagnosis and renders a report ending in its verdict; `Err`
/// carries an actionable message.
pub async fn run(config: &CredentialsConfig, clock: SharedClock) -> Result<String, DiagnoseError> {
    let mut report = String::new();
    let source = match &config.mode {
        CredentialMode::ApiKey(key) => {
            let _ = writeln!(
                report,
                "source:   api-key (AWS_BEARER_TOKEN_BEDROCK, {} Bedrock API key)",
                key.kind().describe()
            );
            let _ = writeln!(report, "note:     API keys are checked by Bedrock itself; STS cannot tell who they belong to");
            if config.region.is_none() {
                let _ = writeln!(report, "note:     no region (AWS_REGION): the sidecar needs one, or --upstream, to know which Bedrock endpoint to call");
            }
            match (key.kind(), key.expiry()) {
                (_, Some(expiry)) => {
                    let now = clock.now();
                    let _ = writeln!(report, "expires:  {}", describe_time(expiry.at, now));
                    if expiry.at <= now {
                        return Err(DiagnoseError::ApiKeyExpired {
                            found: report,
                            at: expiry.at,
                        });
                    }
                }
                // As the sidecar warns at start: nothing will refuse it
                // before Bedrock does.
                (ApiKeyKind::ShortTerm, None) => {
                    let _ = writeln!(report, "expires:  unknown (the key is not shaped as AWS's token generators mint short-term keys: the sidecar cannot track its expiry)");
                }
                (ApiKeyKind::LongTerm, None) => {
                    let _ = writeln!(report, "expires:  as set when it was created (an IAM service-specific credential: never, or after the days chosen; not in the key)");
                }
                (ApiKeyKind::Unrecognised, None) => {
                    let _ = writeln!(
                        report,
                        "expires:  unknown (not a key shape the sidecar knows: Bedrock decides)"
                    );
                }
            }
            let _ = writeln!(
                report,
                "ok: an API key is set (not checked: send a request through the sidecar to try it)"
            );
            return Ok(report);
        }
        CredentialMode::SigV4(source) => source,
    };
    let region = config.region.as_ref().ok_or(DiagnoseError::NoRegion)?;
    describe_source(&mut report, source, &clock).await;
    describe_session(&mut report, config);
    // A DNS error below names no host: this line does.
    let _ = writeln!(report, "sts:      {}", sts::endpoint(config, region));

    // Refused as the sidecar refuses them: it never stores credentials
    // already expired by this node's clock.
    let fetched = source_for(source, config, region)
        .fetch()
        .await
        .and_then(|fetched| super::refresher::unexpired(fetched, clock.now()))
        .map_err(|source| DiagnoseError::Failed {
            found: report.clone(),
            step: "obtaining credentials",
            source,
        })?;
    if let Some(server) = fetched.server_time {
        describe_skew(&mut report, clock.now(), server);
    }
    let expiry = fetched.credentials.expiry();
    let token = crate::secret::Secret::new(
        fetched
            .credentials
            .session_token()
            .unwrap_or_default()
            .to_owned(),
    );
    let client = sts::client(config, region, Some(fetched.credentials));
    let who = client
        .get_caller_identity()
        .send()
        .await
        .map_err(|e| DiagnoseError::Failed {
            found: report.clone(),
            step: "GetCallerIdentity with the obtained credentials",
            // As for role chaining: a relay may quote the session token.
            source: sts::source_error("GetCallerIdentity", e).without_secrets(&[token.expose()]),
        })?;
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    let _ = writeln!(report, "account:  {}", or_dash(who.account.as_deref()));
    let _ = writeln!(report, "arn:      {}", or_dash(who.arn.as_deref()));
    let _ = writeln!(report, "user id:  {}", or_dash(who.user_id.as_deref()));
    let _ = writeln!(
        report,
        "expires:  {}",
        expiry.map_or_else(
            || "never (static keys)".to_owned(),
            |e| describe_time(e, clock.now())
        )
    );
    let _ = writeln!(report, "ok: credentials work");
    Ok(report)
}

/// Where the credentials come from, and what the token says about itself.
async fn describe_source(report: &mut String, source: &SigV4Source, clock: &SharedClock) {
    match source {
        SigV4Source::WebIdentity(w) => {
            let _ = writeln!(report, "source:   web-identity");
            let _ = writeln!(report, "role:     {}", w.role_arn);
            let _ = writeln!(report, "session:  {}", w.session_name.as_str());
            let _ = writeln!(report, "token:    {}", w.token_file.display());
            let Ok(t) = token::read(&w.token_file).await else {
                return;
            };
            let Some(c) = token::Claims::decode(t.expose()) else {
                return;
            };
            let aud = if c.aud.is_empty() {
                "-".to_owned()
            } else {
                c.aud.join(",")
            };
            let _ = writeln!(
                report,
                "claims:   iss={} sub={} aud={aud}",
                c.iss.as_deref().unwrap_or("-"),
                c.sub.as_deref().unwrap_or("-"),
            );
            if let Some(exp) = c.expiry() {
                let _ = writeln!(report, "token expires: {}", describe_time(exp, clock.now()));
            }
        }
        SigV4Source::Sdk(sdk) => {
            let _ = writeln!(report, "source:   {} (aws-config provider)", source.kind());
            if let SdkSource::Profile(Some(name)) = sdk {
                let _ = writeln!(report, "profile:  {name}");
            }
        }
        SigV4Source::Static(keys) => {
            let _ = writeln!(
                report,
                "source:   static (AWS_ACCESS_KEY_ID {}…)",
                keys.access_key_id.chars().take(4).collect::<String>()
            );
        }
    }
}

/// Role chaining and session options, when configured.
fn describe_session(report: &mut String, config: &CredentialsConfig) {
    if let Some(chain) = &config.chain {
        let _ = writeln!(
            report,
            "chain:    AssumeRole into {} (session {}, external id {})",
            chain.role_arn,
            chain.session_name.as_str(),
            if chain.external_id.is_some() {
                "set"
            } else {
                "not set"
            }
        );
    }
    let s = &config.session;
    if s.duration.is_some() || s.policy.is_some() || !s.policy_arns.is_empty() {
        let _ = writeln!(
            report,
            "session:  duration {}, inline policy {}, {} policy ARN(s)",
            s.duration.map_or_else(
                || "role default".to_owned(),
                |d| humantime::format_duration(d).to_string()
            ),
            if s.policy.is_some() { "yes" } else { "no" },
            s.policy_arns.len()
        );
    }
}

/// `2026-11-25T18:00:00Z (in 59m 58s)`.
/// The sidecar warns about a skewed clock, which breaks signing in ways
/// that look like STS or Bedrock faults: so does the diagnosis.
fn describe_skew(report: &mut String, now: SystemTime, server: SystemTime) {
    let skew = super::skew::seconds(now, server);
    if skew.abs() < super::skew::NOTABLE.as_secs_f64() {
        return;
    }
    let way = if skew > 0.0 { "ahead of" } else { "behind" };
    let _ = writeln!(
        report,
        "clock:    this node is {}s {way} STS: check its NTP synchronisation (credentials expire by this clock, and AWS refuses signatures more than 5 minutes off)",
        skew.abs().round()
    );
}

fn describe_time(t: SystemTime, now: SystemTime) -> String {
    // humantime's timestamp fails to format past year 9999, and `format!`
    // would panic on that error.
    let mut stamp = String::new();
    if write!(stamp, "{}", humantime::format_rfc3339_seconds(t)).is_err() {
        stamp = "after 9999-12-31T23:59:59Z".to_owned();
    }
    if t >= now {
        let left = std::time::Duration::from_secs(saturating_sub(t, now).as_secs());
        format!("{stamp} (in {})", humantime::format_duration(left))
    } else {
        let ago = std::time::Duration::from_secs(saturating_sub(now, t).as_secs());
        format!("{stamp} (EXPIRED {} ago)", humantime::format_duration(ago))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn times_past_year_9999_are_described_not_panicked_on() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let far = UNIX_EPOCH + Duration::from_secs(token::LAST_RFC3339_SECOND + 1);
        assert!(describe_time(far, now).starts_with("after 9999-12-31T23:59:59Z (in "));
        let soon = now + Duration::from_secs(90);
        assert_eq!(describe_time(soon, now), "2023-11-14T22:14:50Z (in 1m 30s)");
    }
}
