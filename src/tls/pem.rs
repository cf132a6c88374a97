//! Reading PEM files: the one reader for trust bundles, serving
//! certificates and keys, with one error type naming the file.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a PEM file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds a malformed PEM certificate: {detail}")]
    MalformedCertificate { path: String, detail: String },
    #[error("{path} holds no usable PEM private key: {detail}")]
    Key { path: String, detail: String },
}

/// Largest PEM file read: a whole public root store is about 220 KiB.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// The file's bytes.
pub fn read(path: &Path) -> Result<Vec<u8>, PemError> {
    crate::files::read_small(path, MAX_PEM_FILE).map_err(|source| PemError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Every certificate in `pem` (read from `path`); at least one.
pub fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PemError::MalformedCertificate {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PemError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// Every certificate in `pem` (read from `path`), each one a trust anchor
/// rustls takes: a block that is PEM but no certificate (a line lost in a
/// paste) is refused here, naming it, rather than where the bundle is used
/// (the STS client's TLS layer panics on one).
pub fn trust_anchors(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = certificates(pem, path)?;
    let total = certs.len();
    for (n, cert) in certs.iter().enumerate() {
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| PemError::MalformedCertificate {
                path: path.display().to_string(),
                // rustls calls it a "peer certificate": here it is ours.
                detail: match e {
                    rustls::Error::InvalidCertificate(why) => {
                        format!("certificate {} of {total} cannot be read: {why:?}", n + 1)
                    }
                    other => format!("certificate {} of {total} cannot be read: {other}", n + 1),
                },
            })?;
    }
    Ok(certs)
}

/// The certificate blocks of a PEM text, one after another, with what
/// surrounds them dropped (a byte-order mark, comments, "Bag Attributes",
/// CRLF line ends); `None` when it holds a private key: a file given by
/// mistake, whose key must not travel further.
pub fn certificate_blocks(text: &str) -> Option<String> {
    if text.contains("PRIVATE KEY-----") {
        return None;
    }
    let mut blocks = String::new();
    let mut inside = false;
    for line in text
        .lines()
        .map(|l| l.trim_start_matches('\u{feff}').trim_end())
    {
        inside |= line == "-----BEGIN CERTIFICATE-----";
        if inside {
            blocks.push_str(line);
            blocks.push('\n');
        }
        inside &= line != "-----END CERTIFICATE-----";
    }
    Some(blocks)
}

/// The private key in `pem` (read from `path`).
pub fn private_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| PemError::Key {
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}
