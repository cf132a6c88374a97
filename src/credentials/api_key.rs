//! Bedrock API keys: the bearer tokens Bedrock accepts instead of SigV4.

use std::fmt;

use http::HeaderValue;

use crate::config::parse::ParseError;
use crate::secret::Secret;

/// Which kind of Bedrock API key a token looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKeyKind {
    /// `bedrock-api-key-…`: minted from SigV4 credentials, lives at most 12 h.
    ShortTerm,
    /// `ABSK…`: tied to an IAM user.
    LongTerm,
    /// Neither prefix: Bedrock decides.
    Unrecognised,
}

impl ApiKeyKind {
    pub fn of(token: &str) -> Self {
        if token.len() <= 4 {
            Self::Unrecognised
        } else if token.starts_with("bedrock-api-key-") {
            Self::ShortTerm
        } else if token.starts_with("ABSK") {
            Self::LongTerm
        } else {
            Self::Unrecognised
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::ShortTerm => "short-term",
            Self::LongTerm => "long-term",
            Self::Unrecognised => "unrecognised",
        }
    }
}

/// `Bearer <token>` as a header value marked sensitive, or `None` when the
/// token holds characters a header cannot carry.
pub fn bearer_header(token: &str) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    v.set_sensitive(true);
    Some(v)
}

/// A configured API key (`AWS_BEARER_TOKEN_BEDROCK`), checked at start so
/// a key that cannot be sent is a configuration error, not a failed request.
#[derive(Clone)]
pub struct ApiKey {
    token: Secret,
    header: HeaderValue,
}

impl ApiKey {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let token = raw.trim();
        if token.is_empty() {
            return Err(ParseError::refused("is blank"));
        }
        let header = bearer_header(token).ok_or_else(|| {
            ParseError::refused("contains characters not allowed in an HTTP header")
        })?;
        Ok(Self {
            token: Secret::new(token),
            header,
        })
    }

    pub fn kind(&self) -> ApiKeyKind {
        ApiKeyKind::of(self.token.expose())
    }

    /// The `Authorization` value, marked sensitive.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("kind", &self.kind())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_recognised_by_prefix_and_never_printed() {
        let key = ApiKey::parse(" bedrock-api-key-abc ").unwrap();
        assert_eq!(key.kind(), ApiKeyKind::ShortTerm);
        assert_eq!(key.header(), "Bearer bedrock-api-key-abc");
        assert!(key.header().is_sensitive());
        assert!(!format!("{key:?}").contains("abc"));
        assert_eq!(ApiKeyKind::of("ABSKxyz"), ApiKeyKind::LongTerm);
        assert_eq!(ApiKeyKind::of("ABSK"), ApiKeyKind::Unrecognised);
        assert!(ApiKey::parse("  ").is_err());
        assert!(ApiKey::parse("bad\nvalue").is_err());
    }
}
