//! Trust anchors and the client configuration of outbound TLS (STS and Bedrock).

use std::fmt;
use std::path::PathBuf;

use rustls::RootCertStore;

use super::pem::{self, PemError};

/// Extra trust anchors (`AWS_CA_BUNDLE`, `BEDROCK_BROKER_CA_BUNDLE_PEM`),
/// read and checked at start.
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// The file, or the variable, the certificates came from.
    pub origin: String,
    pub pem: Vec<u8>,
}

impl CaBundle {
    /// Reads and checks a PEM bundle.
    pub fn read(path: PathBuf) -> Result<Self, PemError> {
        let pem = pem::read(&path)?;
        pem::trust_anchors(&pem, &path)?;
        Ok(Self {
            origin: path.display().to_string(),
            pem,
        })
    }

    /// Checks a PEM bundle given as text (`origin` names where from).
    pub fn from_pem(origin: &str, pem: Vec<u8>) -> Result<Self, PemError> {
        pem::trust_anchors(&pem, std::path::Path::new("its value"))?;
        Ok(Self {
            origin: origin.to_owned(),
            pem,
        })
    }

    /// Both bundles' certificates.
    pub fn and(mut self, other: &Self) -> Self {
        if !self.pem.ends_with(b"\n") {
            self.pem.push(b'\n');
        }
        self.pem.extend_from_slice(&other.pem);
        self.origin = format!("{} and {}", self.origin, other.origin);
        self
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("origin", &self.origin)
            .finish()
    }
}

/// Mozilla's roots, the system's roots, and the extra bundle if any.
pub fn root_store(extra_pem: Option<&[u8]>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    if !native.errors.is_empty() {
        tracing::debug!(
            errors = native.errors.len(),
            "some system certificates could not be loaded"
        );
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra_pem {
        if let Ok(certs) = pem::certificates(pem, std::path::Path::new("AWS_CA_BUNDLE")) {
            roots.add_parsable_certificates(certs);
        }
    }
    roots
}

/// A rustls client configuration (ALPN is set by the connector).
pub fn client_config(extra_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, rustls::Error> {
    let provider = crate::tls::provider();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(extra_pem))
        .with_no_client_auth();
    Ok(config)
}
