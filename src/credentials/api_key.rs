//! Bedrock API keys: the bearer tokens Bedrock accepts instead of SigV4.

use std::fmt;
use std::time::{Duration, SystemTime};

use base64::Engine;
use http::HeaderValue;

use crate::config::parse::ParseError;
use crate::secret::Secret;

const SHORT_TERM_PREFIX: &str = "bedrock-api-key-";

/// `token` without the prefix every short-term key starts with: its words
/// are no secret, and ordinary error messages say them (`bedrock-runtime`).
pub fn without_public_prefix(token: &[u8]) -> &[u8] {
    token
        .strip_prefix(SHORT_TERM_PREFIX.as_bytes())
        .unwrap_or(token)
}

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
        } else if token.starts_with(SHORT_TERM_PREFIX) {
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
    expiry: Option<KeyExpiry>,
}

/// When a short-term key stops working at the latest, as the key itself
/// says: it is a presigned request (AWS's token generators, the console),
/// valid from its `X-Amz-Date` for `X-Amz-Expires` seconds. A key minted
/// from temporary credentials stops working with them, which may be
/// sooner; the key does not say when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyExpiry {
    pub at: SystemTime,
    /// `X-Amz-Expires`: the lifetime it was minted with.
    pub lifetime: Duration,
}

impl KeyExpiry {
    /// Reads a short-term key's expiry; `None` for any other key, or one
    /// not shaped as AWS mints them. Nothing read here is secret (the
    /// signature and any session token are skipped), but none of it is
    /// logged either.
    fn of(token: &str) -> Option<Self> {
        let encoded = token.strip_prefix(SHORT_TERM_PREFIX)?;
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let url = engine.decode(encoded).ok()?;
        let query = url.splitn(2, |&b| b == b'?').nth(1)?;
        let (mut date, mut expires) = (None, None);
        for (name, value) in form_urlencoded::parse(query) {
            match &*name {
                "X-Amz-Date" => date = Some(value),
                "X-Amz-Expires" => expires = Some(value),
                _ => {}
            }
        }
        let signed = amz_date(&date?)?;
        let lifetime = Duration::from_secs(expires?.parse().ok()?);
        let at = signed.checked_add(lifetime)?;
        // RFC 3339 (the logs', the metrics' readers') ends at year 9999;
        // a time past it is no expiry a key could mean.
        let last = std::time::UNIX_EPOCH + Duration::from_secs(super::token::LAST_RFC3339_SECOND);
        (at <= last).then_some(Self { at, lifetime })
    }
}

/// SigV4's basic ISO 8601 time (`20261206T160000Z`), read by reshaping it
/// into RFC 3339 for humantime.
fn amz_date(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if b.len() != 16 || !digits(0..8) || b[8] != b'T' || !digits(9..15) || b[15] != b'Z' {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

impl ApiKey {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let token = raw.trim();
        if token.is_empty() {
            return Err(ParseError::refused("is blank"));
        }
        // Copied from a curl line or a header: it would go out as
        // `Bearer Bearer …`, which Bedrock refuses as an invalid key.
        let mut words = token.splitn(2, char::is_whitespace);
        if words
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("bearer"))
            && words.next().is_some()
        {
            return Err(ParseError::refused(
                "starts with `Bearer `: set the key alone (the sidecar sends it as `Bearer <key>`)",
            ));
        }
        let header = bearer_header(token).ok_or_else(|| {
            ParseError::refused("contains characters not allowed in an HTTP header")
        })?;
        Ok(Self {
            token: Secret::new(token),
            header,
            expiry: KeyExpiry::of(token),
        })
    }

    pub fn kind(&self) -> ApiKeyKind {
        ApiKeyKind::of(self.token.expose())
    }

    /// A short-term key's expiry, when the key says it.
    pub fn expiry(&self) -> Option<KeyExpiry> {
        self.expiry
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
            .field("expiry", &self.expiry)
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
        for pasted in [
            "Bearer ABSKxyz",
            "bearer bedrock-api-key-abc",
            " BEARER  ABSKxyz",
        ] {
            let e = ApiKey::parse(pasted).unwrap_err().to_string();
            assert!(
                e.contains("set the key alone") && !e.contains("xyz") && !e.contains("abc"),
                "{e}"
            );
        }
        assert!(ApiKey::parse("Bearerish-key").is_ok());
    }

    /// A short-term key as AWS's token generators mint them: the presigned
    /// URL without its scheme, then `&Version=1`, in standard base64.
    fn short_term(query: &str) -> String {
        let url = format!("bedrock.amazonaws.com/?{query}&Version=1");
        format!(
            "bedrock-api-key-{}",
            base64::engine::general_purpose::STANDARD.encode(url)
        )
    }

    const PRESIGNED: &str = "Action=CallWithBearerToken&X-Amz-Algorithm=AWS4-HMAC-SHA256\
        &X-Amz-Credential=ASIAEXAMPLE%2F20261206%2Fus-east-1%2Fbedrock%2Faws4_request\
        &X-Amz-Date=20261206T235500Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
        &X-Amz-Security-Token=session%2Btoken%3D&X-Amz-Signature=0123abcd";

    #[test]
    fn a_short_term_key_says_when_it_expires() {
        let key = ApiKey::parse(&short_term(PRESIGNED)).unwrap();
        let expiry = key.expiry().unwrap();
        assert_eq!(
            expiry.at,
            humantime::parse_rfc3339("2026-12-07T00:10:00Z").unwrap()
        );
        assert_eq!(expiry.lifetime, Duration::from_secs(900));
        // Padding is optional: a key copied without its `=` still reads.
        let unpadded = short_term(PRESIGNED).trim_end_matches('=').to_owned();
        assert_eq!(KeyExpiry::of(&unpadded), Some(expiry));
        let shown = format!("{key:?}");
        assert!(
            !shown.contains("0123abcd") && !shown.contains("session"),
            "{shown}"
        );
    }

    #[test]
    fn keys_that_do_not_say_have_no_expiry() {
        let without = |param: &str| {
            let query: Vec<&str> = PRESIGNED
                .split('&')
                .filter(|p| !p.starts_with(param))
                .collect();
            KeyExpiry::of(&short_term(&query.join("&")))
        };
        assert_eq!(without("X-Amz-Date"), None);
        assert_eq!(without("X-Amz-Expires"), None);
        for odd in [
            PRESIGNED.replace("20261206T235500Z", "2026-12-06T23:55:00Z"),
            PRESIGNED.replace("20261206T235500Z", "20261306T235500Z"),
            PRESIGNED.replace("20261206T235500Z", "20261206T2355000"),
            PRESIGNED.replace("X-Amz-Expires=900", "X-Amz-Expires=-1"),
            PRESIGNED.replace("X-Amz-Expires=900", "X-Amz-Expires=18446744073709551615"),
            // Past year 9999, which RFC 3339 cannot write (a panic in the
            // JSON log's formatter once).
            PRESIGNED.replace("X-Amz-Expires=900", "X-Amz-Expires=999999999999"),
            PRESIGNED.replace("20261206T235500Z", "99991231T235959Z"),
        ] {
            assert_eq!(KeyExpiry::of(&short_term(&odd)), None, "{odd}");
        }
        assert_eq!(KeyExpiry::of("bedrock-api-key-not*base64"), None);
        assert_eq!(KeyExpiry::of("bedrock-api-key-"), None);
        let long_term = format!("ABSK{}", &short_term(PRESIGNED)["bedrock-api-key-".len()..]);
        assert_eq!(ApiKey::parse(&long_term).unwrap().expiry(), None);
    }
}
