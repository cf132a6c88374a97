//! Trust anchors for outbound TLS (STS and Bedrock).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Why an `AWS_CA_BUNDLE` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaBundleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    Empty { path: String },
    #[error("{path} holds a malformed PEM certificate: {detail}")]
    Malformed { path: String, detail: String },
}

fn certificates(pem: &[u8], path: &str) -> Result<Vec<CertificateDer<'static>>, CaBundleError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaBundleError::Malformed {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaBundleError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Extra trust anchors (`AWS_CA_BUNDLE`), read and checked at start.
#[derive(Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    pub pem: Vec<u8>,
}

impl CaBundle {
    /// Reads and checks a PEM bundle.
    pub fn read(path: PathBuf) -> Result<Self, CaBundleError> {
        let pem = read_ca_bundle(&path)?;
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

/// Reads and checks a PEM bundle, returning its raw bytes.
pub fn read_ca_bundle(path: &Path) -> Result<Vec<u8>, CaBundleError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| CaBundleError::Read {
        path: shown.clone(),
        source,
    })?;
    certificates(&pem, &shown)?;
    Ok(pem)
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
        if let Ok(certs) = certificates(pem, "AWS_CA_BUNDLE") {
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
