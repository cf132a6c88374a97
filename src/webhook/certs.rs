//! The serving certificate, reloaded from disk without a restart.
//!
//! cert-manager renews the Secret and the kubelet swaps the mounted files
//! atomically; we re-read both files every `--tls-reload-interval` and swap
//! the certificate in when their content changed and they form a valid
//! pair. A bad or half-written pair is logged and skipped: the server keeps
//! the certificate it has, and the next poll tries again.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::metrics::webhook::WebhookMetrics;

/// Why a certificate/key pair cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
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
    #[error("the key in {key} does not belong to the certificate in {cert}: {detail}")]
    Mismatch {
        cert: String,
        key: String,
        detail: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|source| CertError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Builds a certified key from PEM bytes, checking that key and
/// certificate belong together.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertError> {
    let cert_shown = cert_path.display().to_string();
    let key_shown = key_path.display().to_string();
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::MalformedCertificate {
            path: cert_shown.clone(),
            detail: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(CertError::NoCertificate { path: cert_shown });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CertError::Key {
        path: key_shown.clone(),
        detail: e.to_string(),
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| CertError::Mismatch {
        cert: cert_shown,
        key: key_shown,
        detail: e.to_string(),
    })
}

/// The current serving certificate, swapped in place on reload.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
    /// The file contents the current certificate (or the last failed
    /// attempt) came from, so unchanged files are not parsed again.
    seen: Mutex<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

/// What one poll found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
}

impl ReloadingCert {
    /// Loads the pair once; failing here stops start-up.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CertError> {
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let key = certified_key(&cert_pem, &key_pem, cert_path, key_path, &provider)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new((cert_pem, key_pem)),
        })
    }

    /// Re-reads both files and swaps the certificate in if they changed and
    /// are valid. On error the current certificate stays.
    pub fn reload_if_changed(&self) -> Result<Reload, CertError> {
        let cert_pem = read(&self.cert_path)?;
        let key_pem = read(&self.key_path)?;
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.0 == cert_pem && seen.1 == key_pem {
            return Ok(Reload::Unchanged);
        }
        // Remember the attempt even if it fails: a broken pair is reported
        // once, not on every poll, and retried when the files change again.
        *seen = (cert_pem, key_pem);
        let key = certified_key(
            &seen.0,
            &seen.1,
            &self.cert_path,
            &self.key_path,
            &self.provider,
        )?;
        self.current.store(Arc::new(key));
        Ok(Reload::Reloaded)
    }

    /// Polls the files every `interval` until `shutdown`.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        metrics: WebhookMetrics,
        shutdown: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let this = self.clone();
            let result = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            match result {
                Ok(Ok(Reload::Unchanged)) => {}
                Ok(Ok(Reload::Reloaded)) => {
                    metrics.tls_reloads.with_label_values(&["success"]).inc();
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                }
                Ok(Err(e)) => {
                    metrics.tls_reloads.with_label_values(&["failure"]).inc();
                    tracing::warn!(error = %e, "serving certificate not reloaded; keeping the current one");
                }
                Err(e) => tracing::warn!(error = %e, "certificate reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// A rustls server configuration serving whatever `cert` currently holds.
pub fn server_config(
    cert: Arc<ReloadingCert>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    // The API server speaks HTTP/1.1 to webhooks just as well as h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
