//! Which SigV4 source to use: the one pinned by `--credential-source`, or
//! the first configured one in the "auto" order, after aws-config's default
//! chain: static keys, web identity, container credentials, a named
//! profile. Never IMDS on its own: in a pod it would yield the node's role.

use super::config::{SdkSource, SigV4Source, StaticKeys, WebIdentityConfig};
use crate::config::parse::ParseError;

/// Which credential source to use (`--credential-source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceChoice {
    Auto,
    WebIdentity,
    Static,
    Profile,
    Container,
    Imds,
}

impl SourceChoice {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        Ok(match raw {
            "auto" => Self::Auto,
            "web-identity" => Self::WebIdentity,
            "static" => Self::Static,
            "profile" => Self::Profile,
            "container" => Self::Container,
            "imds" => Self::Imds,
            _ => {
                return Err(ParseError::not_a(
                    raw,
                    "a credential source",
                    "auto, web-identity, static, profile, container or imds",
                ))
            }
        })
    }
}

/// What the environment configures, before choosing.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub web_identity: Option<WebIdentityConfig>,
    pub static_keys: Option<StaticKeys>,
    /// `AWS_CONTAINER_CREDENTIALS_FULL_URI` or `_RELATIVE_URI` is set.
    pub container_env: bool,
    /// `AWS_PROFILE`.
    pub profile: Option<String>,
}

/// Why no source could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("both web identity and static keys are set; keep only one (IRSA pods: unset the static keys) or pin one with --credential-source")]
    Ambiguous,
    #[error("the {0} source is chosen but not configured")]
    NotConfigured(&'static str),
}

/// The source to sign with; `Ok(None)` when auto finds nothing.
pub fn select(found: Found, choice: SourceChoice) -> Result<Option<SigV4Source>, SelectError> {
    let require = |what, source: Option<SigV4Source>| {
        source.map(Some).ok_or(SelectError::NotConfigured(what))
    };
    match choice {
        SourceChoice::Auto => match (found.web_identity, found.static_keys) {
            (Some(_), Some(_)) => Err(SelectError::Ambiguous),
            (Some(w), None) => Ok(Some(SigV4Source::WebIdentity(w))),
            (None, Some(s)) => Ok(Some(SigV4Source::Static(s))),
            (None, None) if found.container_env => Ok(Some(SigV4Source::Sdk(SdkSource::Container))),
            (None, None) => Ok(found
                .profile
                .map(|p| SigV4Source::Sdk(SdkSource::Profile(Some(p))))),
        },
        SourceChoice::WebIdentity => require(
            "web-identity (AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE)",
            found.web_identity.map(SigV4Source::WebIdentity),
        ),
        SourceChoice::Static => require(
            "static (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)",
            found.static_keys.map(SigV4Source::Static),
        ),
        SourceChoice::Container => require(
            "container (AWS_CONTAINER_CREDENTIALS_FULL_URI or _RELATIVE_URI)",
            found
                .container_env
                .then_some(SigV4Source::Sdk(SdkSource::Container)),
        ),
        SourceChoice::Profile => Ok(Some(SigV4Source::Sdk(SdkSource::Profile(found.profile)))),
        SourceChoice::Imds => Ok(Some(SigV4Source::Sdk(SdkSource::Imds))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::aws::{RoleArn, SessionName};
    use crate::secret::Secret;

    #[test]
    fn a_pinned_source_not_configured_names_its_variables() {
        for (choice, names) in [
            (
                SourceChoice::WebIdentity,
                "AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE",
            ),
            (
                SourceChoice::Static,
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
            ),
            (
                SourceChoice::Container,
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            ),
        ] {
            let e = select(Found::default(), choice).unwrap_err().to_string();
            assert!(e.contains(names), "{e}");
        }
    }

    fn web_identity() -> WebIdentityConfig {
        WebIdentityConfig {
            role_arn: RoleArn::parse("arn:aws:iam::123456789012:role/app").unwrap(),
            token_file: "/t".into(),
            session_name: SessionName::derive(None),
        }
    }

    fn keys() -> StaticKeys {
        StaticKeys {
            access_key_id: "AKID".into(),
            secret_access_key: Secret::new("s"),
            session_token: None,
        }
    }

    fn kind(found: Found, choice: SourceChoice) -> String {
        match select(found, choice) {
            Ok(Some(s)) => s.kind().to_owned(),
            Ok(None) => "none".to_owned(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn auto_takes_the_first_configured_source_and_never_imds() {
        let all = Found {
            web_identity: None,
            static_keys: None,
            container_env: true,
            profile: Some("dev".into()),
        };
        assert_eq!(kind(all.clone(), SourceChoice::Auto), "container");
        let profile_only = Found {
            container_env: false,
            ..all
        };
        assert_eq!(kind(profile_only, SourceChoice::Auto), "profile");
        assert_eq!(kind(Found::default(), SourceChoice::Auto), "none");
        let irsa = Found {
            web_identity: Some(web_identity()),
            container_env: true,
            ..Found::default()
        };
        assert_eq!(kind(irsa, SourceChoice::Auto), "web-identity");
    }

    #[test]
    fn web_identity_and_static_keys_together_need_a_pin() {
        let both = Found {
            web_identity: Some(web_identity()),
            static_keys: Some(keys()),
            ..Found::default()
        };
        assert!(kind(both.clone(), SourceChoice::Auto).contains("pin one"));
        assert_eq!(kind(both.clone(), SourceChoice::Static), "static");
        assert_eq!(kind(both, SourceChoice::WebIdentity), "web-identity");
    }

    #[test]
    fn a_pinned_source_must_be_configured_except_imds_and_profile() {
        assert!(kind(Found::default(), SourceChoice::Container).contains("not configured"));
        assert!(kind(Found::default(), SourceChoice::Static).contains("not configured"));
        assert_eq!(kind(Found::default(), SourceChoice::Imds), "imds");
        assert_eq!(kind(Found::default(), SourceChoice::Profile), "profile");
    }
}
