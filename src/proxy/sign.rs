//! Signing a request with the cell's credentials: the glue between the
//! credential cell and the pure signer ([`super::sigv4`]), and what the
//! client is told when there is nothing usable to sign with.

use std::time::SystemTime;

use http::HeaderValue;

use super::error::ProxyError;
use super::headers::X_AMZ_SECURITY_TOKEN;
use super::request_body::ReadBody;
use super::signer::{RequestSigner, Sha256Hex};
use super::sigv4::{BodyDigest, Signer};
use super::Proxy;
use crate::credentials::{HeldCredentials, Unusable};

/// What a request was signed with.
pub(super) struct Signed {
    /// The credentials' generation, so a rejected request can wait for
    /// newer ones.
    pub generation: u64,
    /// The session token it carries, to blank in an error that quotes it.
    pub token: Option<HeaderValue>,
    /// When it was signed (its `X-Amz-Date`), to tell a refusal for the
    /// time from one for the signature.
    pub at: SystemTime,
}

/// The session token a signed request carries.
pub(super) fn token_of(parts: &http::request::Parts) -> Option<HeaderValue> {
    parts.headers.get(X_AMZ_SECURITY_TOKEN).cloned()
}

impl Proxy {
    /// Signs a buffered request with the cell's credentials.
    pub(super) fn sign(
        &self,
        signer: Option<&RequestSigner>,
        parts: &mut http::request::Parts,
        body: &ReadBody,
    ) -> Result<Signed, ProxyError> {
        let signer = signer.ok_or(ProxyError::NoSigV4)?;
        let digest = BodyDigest::new(&body.bytes, body.sha256.as_ref().map(Sha256Hex::as_str));
        let now = self.clock.now();
        let signed = self.cell.with_usable(now, |held| {
            signer
                .sign(
                    &parts.method,
                    &parts.uri,
                    &mut parts.headers,
                    digest,
                    held,
                    now,
                )
                .map(|signed| Signed {
                    generation: held.generation(),
                    token: signed.token,
                    at: now,
                })
        });
        unpack(signed)
    }

    /// Signs with aws-sigv4 (the bidirectional stream) and the cell's
    /// credentials; `keep` takes what it needs of the credentials that
    /// signed and of the signature.
    pub(super) fn sign_with<T>(
        &self,
        signer: Option<&Signer>,
        parts: &mut http::request::Parts,
        digest: BodyDigest<'_>,
        keep: impl FnOnce(&Signer, &HeldCredentials, String) -> T,
    ) -> Result<T, ProxyError> {
        let signer = signer.ok_or(ProxyError::NoSigV4)?;
        let now = self.clock.now();
        let signed = self.cell.with_usable(now, |held| {
            signer
                .sign(
                    &parts.method,
                    &parts.uri,
                    &mut parts.headers,
                    digest,
                    held.identity(),
                    now,
                )
                .map(|signature| keep(signer, held, signature))
        });
        unpack(signed)
    }
}

fn unpack<T, E: std::fmt::Display>(
    signed: Result<Result<T, E>, Unusable>,
) -> Result<T, ProxyError> {
    match signed {
        Ok(Ok(kept)) => Ok(kept),
        Ok(Err(e)) => Err(ProxyError::SigningFailed(e.to_string())),
        Err(Unusable::NotYetObtained) => Err(ProxyError::NotYetObtained),
        Err(Unusable::Expired) => Err(ProxyError::CredentialsExpired),
    }
}
