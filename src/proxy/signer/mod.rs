//! SigV4 for the buffered request path, built for it: the signing key is
//! derived once per credentials and day ([`key`]), the canonical request
//! is written without intermediate strings ([`canonical`]), and each
//! thread reuses the hash of the part a request shares with a recent
//! one ([`prefix`]).
//!
//! aws-sigv4 ([`super::sigv4`]) still signs what this does not: the
//! bidirectional stream, whose signature seeds a chain of signed messages.
//! It is also this signer's judge: `tests/sigv4_differential.rs` signs
//! generated requests with both and requires the same bytes, and
//! `tests/sigv4_suite.rs` runs AWS's signing test suite.

mod canonical;
mod encode;
mod key;
mod prefix;
pub mod query;
mod time;

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use sha2::{Digest, Sha256};

use super::sigv4::BodyDigest;
use crate::credentials::HeldCredentials;
use canonical::{SignedHeaders, X_AMZ_DATE, X_AMZ_SECURITY_TOKEN};
use key::KeyCache;
use time::AmzDate;

pub use canonical::UNSIGNED_HEADERS;

/// Why a request could not be signed (aws-sigv4 refuses the same ones).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SignError {
    #[error("cannot sign the request: the signing time is outside 1970-9999")]
    Time,
    #[error("cannot sign the request: the upstream URI has no host")]
    NoHost,
    #[error("cannot sign the request: the session token is not a valid header value")]
    SessionToken,
    #[error("cannot sign the request: the signing key could not be used")]
    Key,
    #[error("cannot sign the request: the Authorization header would be invalid")]
    Header,
}

/// A signature, as lower-case hex.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

impl Signature {
    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`RequestSigner::sign`] gives back besides the headers it added.
pub struct SignOutput {
    pub signature: Signature,
    /// The session token header it added, for the proxy to blank in an
    /// error that quotes it (handed back rather than looked up again).
    pub token: Option<HeaderValue>,
}

/// `bytes` as lower-case hex (`M` is `2 * N`).
pub(crate) fn hex<const N: usize, const M: usize>(bytes: &[u8; N]) -> [u8; M] {
    let mut out = [0u8; M];
    // `M == 2 * N` at every call site, so this cannot fail.
    let _ = hex::encode_to_slice(bytes, &mut out);
    out
}

/// Signs buffered requests for one region and signing name.
#[derive(Debug)]
pub struct RequestSigner {
    region: String,
    service: String,
    keys: KeyCache,
}

impl RequestSigner {
    pub fn new(region: impl Into<String>, service: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            service: service.into(),
            keys: KeyCache::default(),
        }
    }

    /// Adds `X-Amz-Date`, `Authorization` and (for temporary credentials)
    /// `X-Amz-Security-Token` to `headers`, exactly as
    /// [`super::Signer::sign`] would. Every header in `headers` whose value
    /// is text is signed, except [`UNSIGNED_HEADERS`]; `host` comes from
    /// `uri` unless `headers` has one.
    pub fn sign(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &mut HeaderMap,
        body: BodyDigest<'_>,
        held: &HeldCredentials,
        time: SystemTime,
    ) -> Result<SignOutput, SignError> {
        let date = AmzDate::new(time).ok_or(SignError::Time)?;
        let key = self.keys.get(held, &date, &self.region, &self.service)?;
        let payload = Payload::of(body);
        let token = held.credentials().session_token();
        let (signature, authorization) = {
            let signed = SignedHeaders::new(headers, host(uri)?, date.as_str(), token);
            let creq = prefix::hash(&canonical::Request {
                method,
                uri,
                signed: &signed,
                payload_sha256_hex: payload.as_str(),
            });
            let creq_hex: [u8; 64] = hex(&creq);
            let string_to_sign = [
                &b"AWS4-HMAC-SHA256\n"[..],
                date.as_str().as_bytes(),
                b"\n",
                key.scope.as_bytes(),
                b"\n",
                &creq_hex,
            ];
            let signature = Signature(hex(&key.sign(&string_to_sign)));
            let mut authorization = Vec::with_capacity(key.authorization_prefix.len() + 200);
            authorization.extend_from_slice(key.authorization_prefix.as_bytes());
            signed.write_names(&mut authorization);
            authorization.extend_from_slice(b", Signature=");
            authorization.extend_from_slice(&signature.0);
            (signature, authorization)
        };
        let mut authorization = HeaderValue::from_maybe_shared(Bytes::from(authorization))
            .map_err(|_| SignError::Header)?;
        authorization.set_sensitive(true);
        let date =
            HeaderValue::from_bytes(date.as_str().as_bytes()).map_err(|_| SignError::Time)?;
        headers.insert(HeaderName::from_static(X_AMZ_DATE), date);
        headers.insert(http::header::AUTHORIZATION, authorization);
        if let Some(token) = &key.token {
            headers.insert(HeaderName::from_static(X_AMZ_SECURITY_TOKEN), token.clone());
        }
        Ok(SignOutput {
            signature,
            token: key.token.clone(),
        })
    }

    /// The canonical request [`Self::sign`] would sign, for tests and
    /// debugging. It holds the session token: never log it.
    #[doc(hidden)]
    pub fn canonical_request(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: BodyDigest<'_>,
        held: &HeldCredentials,
        time: SystemTime,
    ) -> Result<String, SignError> {
        let date = AmzDate::new(time).ok_or(SignError::Time)?;
        let payload = Payload::of(body);
        let token = held.credentials().session_token();
        let signed = SignedHeaders::new(headers, host(uri)?, date.as_str(), token);
        let mut out = Vec::new();
        canonical::Request {
            method,
            uri,
            signed: &signed,
            payload_sha256_hex: payload.as_str(),
        }
        .write(&mut out);
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// Which credentials generation and UTC day the cached key is for.
    #[doc(hidden)]
    pub fn cached_key(&self) -> Option<(u64, u64)> {
        self.keys.cached()
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn name(&self) -> &str {
        &self.service
    }
}

/// The `host` a request without one is signed with (the pool sends it).
pub(super) fn host(uri: &Uri) -> Result<&str, SignError> {
    canonical::host(uri).ok_or(SignError::NoHost)
}

/// A SHA-256 as lower-case hex, held inline (no allocation): a payload
/// hash, computed here or while the body was read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Sha256Hex([u8; 64]);

impl Sha256Hex {
    pub fn of(hasher: Sha256) -> Self {
        Self(hex(&hasher.finalize().into()))
    }

    pub fn as_str(&self) -> &str {
        // Only hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The payload hash as hex: the precomputed one, or the body's.
enum Payload<'a> {
    Given(&'a str),
    Computed(Sha256Hex),
}

impl<'a> Payload<'a> {
    fn of(body: BodyDigest<'a>) -> Self {
        match body.sha256_hex() {
            Some(hex) => Self::Given(hex),
            None => Self::Computed(Sha256Hex::of(Sha256::new_with_prefix(body.bytes()))),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Self::Given(s) => s,
            Self::Computed(h) => h.as_str(),
        }
    }
}
