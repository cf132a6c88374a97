//! The options of the STS sessions the sidecar makes (duration, inline
//! and managed session policies), and the rule that they are refused where
//! no such session is made.

use super::aws;
use super::parse::{self, ParseError};
use super::setting::Errors;
use super::settings::aws as s;
use super::Env;
use crate::cli::AwsArgs;
use crate::credentials::{CredentialMode, SessionOptions, SigV4Source};

/// What STS is asked to put in the session: duration (1 h at most when
/// `chained`), inline policy, managed policy ARNs.
pub(super) fn options(
    args: &AwsArgs,
    env: &Env,
    chained: bool,
    errors: &mut Errors,
) -> SessionOptions {
    SessionOptions {
        duration: errors.read(
            &s::SESSION_DURATION,
            args.session_duration.as_deref(),
            env,
            |raw| session_duration(raw, chained),
        ),
        policy: errors.read(
            &s::SESSION_POLICY,
            args.session_policy.as_deref(),
            env,
            session_policy,
        ),
        policy_arns: errors
            .read(
                &s::SESSION_POLICY_ARNS,
                args.session_policy_arns.as_deref(),
                env,
                aws::policy_arns,
            )
            .unwrap_or_default(),
    }
}

/// Session options apply to the sessions the sidecar makes itself: with
/// web identity, or with a chained role. Otherwise they would be ignored,
/// and a session policy meant to narrow what the pod may do would not.
pub(super) fn unused(
    mode: &CredentialMode,
    chained: bool,
    session: &SessionOptions,
    errors: &mut Errors,
) {
    // An API key signs nothing: a chained role is dropped with it.
    let (source, cure) = match mode {
        CredentialMode::ApiKey(_) => ("API key", "remove it"),
        CredentialMode::SigV4(SigV4Source::WebIdentity(_)) => return,
        CredentialMode::SigV4(_) if chained => return,
        CredentialMode::SigV4(source) => (source.kind(), "remove it, or chain a role"),
    };
    for (setting, given) in [
        (&s::SESSION_DURATION, session.duration.is_some()),
        (&s::SESSION_POLICY, session.policy.is_some()),
        (&s::SESSION_POLICY_ARNS, !session.policy_arns.is_empty()),
    ] {
        if given {
            errors.push(
                setting.origin(),
                format!(
                    "has no effect with the {source} credentials: only web identity, or a role chained with --{}, makes an STS session of the sidecar's; {cure}",
                    s::CHAIN_ROLE_ARN.flag
                ),
            );
        }
    }
}

/// STS accepts whole seconds from 15 minutes to 12 hours (1 hour when the
/// credentials come from another AssumeRole).
fn session_duration(raw: &str, chained: bool) -> Result<std::time::Duration, ParseError> {
    let d = parse::duration(raw)?;
    let max = if chained { 3600 } else { 43_200 };
    if d.as_secs() < 900 || d.as_secs() > max || d.subsec_nanos() != 0 {
        return Err(ParseError::refused(format!(
            "{raw:?} is outside what STS accepts: whole seconds from 15m to {}",
            if chained {
                "1h (role chaining limit)"
            } else {
                "12h"
            }
        )));
    }
    Ok(d)
}

/// Most characters STS accepts in an inline session policy.
const MAX_POLICY_CHARS: usize = 2048;

/// An inline policy (JSON, or `@FILE`), checked to be a JSON object STS
/// will accept by size.
fn session_policy(raw: &str) -> Result<String, ParseError> {
    let text = match raw.strip_prefix('@') {
        Some(path) => crate::files::read_small_text(std::path::Path::new(path), 64 * 1024)
            .map_err(|e| ParseError::refused(format!("cannot read the policy file {path}: {e}")))?,
        None => raw.to_owned(),
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_)) => {}
        Ok(_) => {
            return Err(ParseError::refused(
                "the session policy must be a JSON object",
            ))
        }
        Err(e) => {
            return Err(ParseError::refused(format!(
                "the session policy is not valid JSON: {e}"
            )))
        }
    }
    if text.len() > MAX_POLICY_CHARS {
        return Err(ParseError::refused(format!(
            "the session policy is {} characters; STS accepts at most {MAX_POLICY_CHARS}",
            text.len()
        )));
    }
    Ok(text)
}
