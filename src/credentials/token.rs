//! Reading the projected service account token and its `exp` claim.
//!
//! The token is a JWT. We never verify it (STS does) and never log it; we
//! only decode the payload's `exp`, `iss`, `sub` and `aud` for metrics and
//! for the `credentials` diagnosis.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::SourceError;
use crate::secret::Secret;

/// Largest token file read: STS takes web identity tokens of up to 20,000
/// characters.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// Reads the token file afresh. The kubelet rotates the token by swapping a
/// symlink in its directory, so the file must be re-opened on every attempt.
pub async fn read(path: &Path) -> Result<Secret, SourceError> {
    let owned = path.to_owned();
    let raw =
        tokio::task::spawn_blocking(move || crate::files::read_small_text(&owned, MAX_TOKEN_FILE))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(|source| SourceError::TokenFile {
                path: path.to_owned(),
                source,
            })?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(SourceError::EmptyToken {
            path: path.to_owned(),
        });
    }
    Ok(Secret::new(token))
}

/// 9999-12-31T23:59:59Z in seconds since the Unix epoch.
pub const LAST_RFC3339_SECOND: u64 = 253_402_300_799;

/// The non-secret claims of a JWT, when its payload decodes.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    #[serde(default, deserialize_with = "audience")]
    pub aud: Vec<String>,
    pub exp: Option<u64>,
}

impl Claims {
    /// Decodes the payload of a compact JWT without verifying it.
    pub fn decode(token: &str) -> Option<Self> {
        let payload = token.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The `exp` claim as a time; none when it is past the last second an
    /// RFC 3339 timestamp can write (year 9999), which no issuer sets and
    /// which `SystemTime` may not even hold.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.exp
            .filter(|s| *s <= LAST_RFC3339_SECOND)
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
    }
}

/// `aud` is a string or an array of strings.
fn audience<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<Aud>::deserialize(d)? {
        None => Vec::new(),
        Some(Aud::One(a)) => vec![a],
        Some(Aud::Many(a)) => a,
    })
}

use serde::Deserialize;

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode("{\"alg\":\"RS256\"}"),
            e.encode(payload)
        )
    }

    #[test]
    fn decodes_kubernetes_service_account_claims() {
        let c = Claims::decode(&jwt(
            r#"{"aud":["sts.amazonaws.com"],"exp":1700000000,"iss":"https://oidc.example","sub":"system:serviceaccount:ns:sa"}"#,
        ))
        .unwrap();
        assert_eq!(c.aud, vec!["sts.amazonaws.com"]);
        assert_eq!(c.sub.as_deref(), Some("system:serviceaccount:ns:sa"));
        assert_eq!(
            c.expiry(),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        let single = Claims::decode(&jwt(r#"{"aud":"x"}"#)).unwrap();
        assert_eq!(single.aud, vec!["x"]);
    }

    #[test]
    fn an_exp_past_what_a_timestamp_can_say_is_no_expiry() {
        // Whatever the token file holds, reading its claims does not panic
        // (the refresher reads them on every attempt).
        for exp in [u64::MAX, 1 << 63, LAST_RFC3339_SECOND + 1] {
            let c = Claims::decode(&jwt(&format!(r#"{{"exp":{exp}}}"#))).unwrap();
            assert_eq!(c.expiry(), None, "exp {exp}");
        }
        let last = Claims::decode(&jwt(&format!(r#"{{"exp":{LAST_RFC3339_SECOND}}}"#))).unwrap();
        assert_eq!(
            last.expiry(),
            Some(UNIX_EPOCH + Duration::from_secs(LAST_RFC3339_SECOND))
        );
    }

    #[test]
    fn opaque_tokens_have_no_claims() {
        assert_eq!(Claims::decode("not-a-jwt"), None);
        assert_eq!(Claims::decode("a.%%%.c"), None);
    }

    #[tokio::test]
    async fn empty_or_missing_token_files_are_errors() {
        let dir = std::env::temp_dir().join(format!("bb-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("token");
        std::fs::write(&f, "  \n").unwrap();
        assert!(matches!(
            read(&f).await,
            Err(SourceError::EmptyToken { .. })
        ));
        std::fs::write(&f, "abc\n").unwrap();
        assert_eq!(read(&f).await.unwrap().expose(), "abc");
        assert!(matches!(
            read(&dir.join("missing")).await,
            Err(SourceError::TokenFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
