//! The serving side of TLS (the webhook): a listener whose handshakes run
//! apart from the accept loop, and a certificate reloaded from disk
//! without a restart.
//!
//! cert-manager renews the Secret and the kubelet swaps the mounted files
//! atomically; we re-read both files every `--tls-reload-interval` and swap
//! the certificate in when their content changed and they form a valid
//! pair. A bad or half-written pair is logged and skipped: the server keeps
//! the certificate it has, and the next poll tries again.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::conn::Activity;
use super::peers::{PeerSlot, Peers};
use crate::tls::pem::{self, PemError};

/// Why a certificate/key pair cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("the key in {key} does not belong to the certificate in {cert}: {detail}")]
    Mismatch {
        cert: String,
        key: String,
        detail: String,
    },
    #[error("cannot build the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
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
    let chain = pem::certificates(cert_pem, cert_path)?;
    let key = pem::private_key(key_pem, key_path)?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| CertError::Mismatch {
        cert: cert_path.display().to_string(),
        key: key_path.display().to_string(),
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
    seen: Mutex<Seen>,
}

struct Seen {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    /// The files hold a pair that could not be loaded.
    broken: bool,
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
    /// The files still hold the pair that failed: the certificate served
    /// is still the previous one.
    StillBroken,
}

impl ReloadingCert {
    /// Loads the pair once; failing here stops start-up.
    pub fn load(
        cert_path: &Path,
        key_path: &Path,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CertError> {
        let cert_pem = pem::read(cert_path)?;
        let key_pem = pem::read(key_path)?;
        let key = certified_key(&cert_pem, &key_pem, cert_path, key_path, &provider)?;
        Ok(Self {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            provider,
            current: ArcSwap::from_pointee(key),
            seen: Mutex::new(Seen {
                cert_pem,
                key_pem,
                broken: false,
            }),
        })
    }

    /// Re-reads both files and swaps the certificate in if they changed and
    /// are valid. On error the current certificate stays.
    pub fn reload_if_changed(&self) -> Result<Reload, CertError> {
        let cert_pem = pem::read(&self.cert_path)?;
        let key_pem = pem::read(&self.key_path)?;
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.cert_pem == cert_pem && seen.key_pem == key_pem {
            return Ok(if seen.broken {
                Reload::StillBroken
            } else {
                Reload::Unchanged
            });
        }
        // Remember the attempt even if it fails: a broken pair is parsed
        // (and logged) once, and retried when the files change again.
        *seen = Seen {
            cert_pem,
            key_pem,
            broken: true,
        };
        let key = certified_key(
            &seen.cert_pem,
            &seen.key_pem,
            &self.cert_path,
            &self.key_path,
            &self.provider,
        )?;
        self.current.store(Arc::new(key));
        seen.broken = false;
        Ok(Reload::Reloaded)
    }

    /// Polls the files every `interval` until `shutdown`, counting reloads
    /// in `reloads` by `result`.
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        reloads: IntCounterVec,
        shutdown: CancellationToken,
    ) {
        let mut every = super::poll::Every::new(interval, shutdown);
        while every.tick().await {
            let this = self.clone();
            let result = tokio::task::spawn_blocking(move || this.reload_if_changed()).await;
            match result {
                Ok(Ok(Reload::Unchanged)) => {}
                // Counted on every poll, as a missing file is, so that an
                // alert on failures holds for as long as the pair is broken
                // (the certificate served meanwhile ages towards expiry).
                Ok(Ok(Reload::StillBroken)) => {
                    reloads.with_label_values(&["failure"]).inc();
                }
                Ok(Ok(Reload::Reloaded)) => {
                    reloads.with_label_values(&["success"]).inc();
                    tracing::info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                }
                Ok(Err(e)) => {
                    reloads.with_label_values(&["failure"]).inc();
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

/// How the TLS listener treats clients before and during their handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// A client that has not finished its handshake by then is dropped.
    pub timeout: Duration,
    /// Handshakes in progress at once; more wait in the accept queue.
    pub max_pending: usize,
    /// Connections (handshakes included) per peer address.
    pub per_peer: Option<usize>,
}

/// A connection whose handshake completed, holding its peer's slot.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    _slot: Option<PeerSlot>,
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// TLS connections whose handshake completed, fed by a background accept
/// loop so one slow client never holds up the others.
pub struct TlsListener {
    connections: mpsc::Receiver<(TlsConn, SocketAddr)>,
}

impl TlsListener {
    /// Accepts on `listener` and runs handshakes within `limits` until
    /// `shutdown`. A peer over its limit is closed before its handshake, so
    /// one pod cannot occupy every handshake slot; those closed are counted
    /// in `refused`, as the server counts its own.
    pub fn spawn(
        listener: TcpListener,
        acceptor: TlsAcceptor,
        limits: HandshakeLimits,
        shutdown: CancellationToken,
        refused: prometheus::IntCounter,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_pending));
        // Every connection a peer holds, handshakes included.
        let peers = Arc::new(Peers::default());
        // Handshakes in progress, each holding its permit: when they are
        // all taken, a peer with fewer of them takes the busiest peer's
        // oldest (as the servers do with connections). Waiting for a
        // permit instead left the newcomer in the kernel's accept queue,
        // which pods reconnecting faster than the handshake timeout kept
        // full, and the API server's connections were dropped there.
        let pending = Arc::new(Peers::default());
        tokio::spawn(async move {
            let mut listener = listener;
            loop {
                let accepted = tokio::select! {
                    a = super::Accept::accept(&mut listener) => a,
                    _ = shutdown.cancelled() => break,
                };
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Usually EMFILE: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let slot = match limits.per_peer {
                    None => None,
                    // Counted only: a connection is not evicted here for
                    // its share, only for its handshake permit below.
                    Some(limit) => match peers.claim(peer.ip(), limit, Activity::new(), None) {
                        Some(slot) => Some(slot),
                        None => {
                            refused.inc();
                            tracing::debug!(%peer, "per-peer connection limit reached; closing");
                            continue;
                        }
                    },
                };
                let share = limits.per_peer.unwrap_or(limits.max_pending);
                let permit = match permits.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => pending.evict_for(peer.ip(), share),
                };
                let Some(handshake) =
                    permit.and_then(|p| pending.claim(peer.ip(), share, Activity::new(), Some(p)))
                else {
                    refused.inc();
                    tracing::debug!(%peer, "every handshake slot is taken; closing");
                    continue;
                };
                let (acceptor, tx, timeout) = (acceptor.clone(), tx.clone(), limits.timeout);
                tokio::spawn(async move {
                    let evicted = handshake.evicted.clone();
                    let done = tokio::select! {
                        done = tokio::time::timeout(timeout, acceptor.accept(stream)) => done,
                        () = evicted.cancelled_owned() => {
                            tracing::debug!(%peer, "dropping a TLS handshake to make room for another peer");
                            return;
                        }
                    };
                    // The permit goes back before the connection is served.
                    drop(handshake);
                    match done {
                        Ok(Ok(stream)) => {
                            let _ = tx
                                .send((
                                    TlsConn {
                                        stream,
                                        _slot: slot,
                                    },
                                    peer,
                                ))
                                .await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Self { connections: rx }
    }
}

impl super::Accept for TlsListener {
    type Io = TlsConn;

    async fn accept(&mut self) -> std::io::Result<(Self::Io, SocketAddr)> {
        match self.connections.recv().await {
            Some(conn) => Ok(conn),
            // The accept loop stopped (shutdown): wait for the server to notice.
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (String, String) {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (cert.cert.pem(), cert.signing_key.serialize_pem())
    }

    #[test]
    fn a_broken_pair_is_reported_on_every_poll_until_mended() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let (cert, key) = pair();
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let provider = crate::tls::provider();
        let reloading = ReloadingCert::load(&cert_path, &key_path, provider).unwrap();
        assert_eq!(reloading.reload_if_changed().unwrap(), Reload::Unchanged);

        // Another pair's key: parsed (and logged) once, then still broken.
        std::fs::write(&key_path, pair().1).unwrap();
        assert!(reloading.reload_if_changed().is_err());
        for _ in 0..2 {
            assert_eq!(reloading.reload_if_changed().unwrap(), Reload::StillBroken);
        }
        let (cert, key) = pair();
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        assert_eq!(reloading.reload_if_changed().unwrap(), Reload::Reloaded);
        assert_eq!(reloading.reload_if_changed().unwrap(), Reload::Unchanged);
    }
}
