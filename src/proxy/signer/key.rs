//! The derived signing key, cached.
//!
//! SigV4's signing key is four HMACs away from the secret, and depends only
//! on the secret, the UTC date, the region and the service. A signer is
//! made for one region and one service, so its cache is keyed by the rest:
//! the credentials' generation in the cell (each store of new credentials
//! gets a new one) and the UTC day. A credential swap or a new day derives
//! a new key; the old one is dropped (and zeroised) once no request holds
//! it. Credentials that never went through a cell have generation 0 and
//! are never cached: nothing would tell two of them apart.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use hmac::{Hmac, KeyInit, Mac};
use http::HeaderValue;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::time::AmzDate;
use super::SignError;
use crate::credentials::HeldCredentials;

pub type HmacSha256 = Hmac<Sha256>;

/// A signing key with everything else that only changes with it.
pub struct DerivedKey {
    generation: u64,
    day: u64,
    /// HMAC keyed with the signing key (its inner and outer states, which
    /// are as secret as the key; the `zeroize` features of `hmac` and `sha2`
    /// wipe them on drop).
    mac: HmacSha256,
    /// `20150830/us-east-1/bedrock/aws4_request`.
    pub scope: Box<str>,
    /// `AWS4-HMAC-SHA256 Credential=AKID/<scope>, SignedHeaders=`.
    pub authorization_prefix: Box<str>,
    /// `X-Amz-Security-Token`, parsed once and marked sensitive.
    pub token: Option<HeaderValue>,
}

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedKey")
            .field("generation", &self.generation)
            .field("day", &self.day)
            .field("scope", &self.scope)
            .field("key", &"** redacted **")
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 keyed with `key` over `data` (HMAC takes keys of any
/// length, so the error never happens).
fn mac(key: &[u8], data: &[u8]) -> Result<HmacSha256, SignError> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).map_err(|_| SignError::Key)?;
    mac.update(data);
    Ok(mac)
}

impl DerivedKey {
    fn derive(
        held: &HeldCredentials,
        date: &AmzDate,
        region: &str,
        service: &str,
    ) -> Result<Self, SignError> {
        let creds = held.credentials();
        let mut secret = Zeroizing::new(Vec::with_capacity(4 + creds.secret_access_key().len()));
        secret.extend_from_slice(b"AWS4");
        secret.extend_from_slice(creds.secret_access_key().as_bytes());
        // Each intermediate key is a `CtOutput`, wiped when dropped.
        let k_date = mac(&secret, date.date().as_bytes())?.finalize();
        let k_region = mac(k_date.as_bytes(), region.as_bytes())?.finalize();
        let k_service = mac(k_region.as_bytes(), service.as_bytes())?.finalize();
        let k_signing = mac(k_service.as_bytes(), b"aws4_request")?.finalize();
        let keyed = <HmacSha256 as KeyInit>::new_from_slice(k_signing.as_bytes())
            .map_err(|_| SignError::Key)?;
        let scope = format!("{}/{region}/{service}/aws4_request", date.date());
        let token = match creds.session_token() {
            Some(t) => {
                let mut v = HeaderValue::from_str(t).map_err(|_| SignError::SessionToken)?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            generation: held.generation(),
            day: date.day(),
            mac: keyed,
            authorization_prefix: format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders=",
                creds.access_key_id()
            )
            .into(),
            scope: scope.into(),
            token,
        })
    }

    /// HMAC-SHA256 under the signing key of the concatenated `parts`.
    pub fn sign(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        for part in parts {
            mac.update(part);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(mac.finalize().as_bytes());
        out
    }
}

/// The current derived key of one signer.
#[derive(Default)]
pub struct KeyCache {
    current: ArcSwapOption<DerivedKey>,
}

impl fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCache")
            .field("current", &self.current.load().as_deref())
            .finish()
    }
}

impl KeyCache {
    /// The key for `held` on the day of `date`: the cached one if it
    /// matches, else a freshly derived one (cached unless generation 0).
    pub fn get(
        &self,
        held: &HeldCredentials,
        date: &AmzDate,
        region: &str,
        service: &str,
    ) -> Result<Arc<DerivedKey>, SignError> {
        let generation = held.generation();
        if generation != 0 {
            if let Some(key) = self.current.load().as_ref() {
                if key.generation == generation && key.day == date.day() {
                    return Ok(Arc::clone(key));
                }
            }
        }
        let key = Arc::new(DerivedKey::derive(held, date, region, service)?);
        if generation != 0 {
            self.current.store(Some(Arc::clone(&key)));
        }
        Ok(key)
    }

    /// Which generation and day the cached key is for (tests).
    pub fn cached(&self) -> Option<(u64, u64)> {
        self.current.load().as_ref().map(|k| (k.generation, k.day))
    }
}
