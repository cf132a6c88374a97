//! Trust anchors and the client configuration of outbound TLS (STS and Bedrock).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::RootCertStore;

use super::pem::{self, PemError};

/// Extra trust anchors (`AWS_CA_BUNDLE`), read and checked at start.
#[derive(Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl CaBundle {
    /// Reads and checks a PEM bundle.
    pub fn read(path: PathBuf) -> Result<Self, PemError> {
        let pem = pem::read(&path)?;
        pem::certificates(&pem, &path)?;
        Ok(Self { path, pem })
    }
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("path", &self.path)
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(root_store(extra_pem))
        .with_no_client_auth();
    Ok(config)
}
