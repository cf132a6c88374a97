//! The trust bundle the webhook gives every injected sidecar: checked to
//! travel in a pod spec, and re-read from its file while the webhook runs,
//! so that a ConfigMap the platform updates (a proxy's CA rotated) reaches
//! the pods created after it without a webhook restart.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounterVec;
use tokio_util::sync::CancellationToken;

use crate::config::parse::ParseError;
use crate::server::poll::Every;
use crate::tls::{pem, CaBundle};

/// Most a sidecar's environment takes in one variable is 128 KiB (Linux's
/// MAX_ARG_STRLEN): past it the container cannot start at all.
pub const MAX_INJECTED: usize = 64 * 1024;

/// Reads and checks a bundle small enough to travel in every pod spec, as
/// text; only its certificates are kept.
pub fn read(path: &str) -> Result<CaBundle, ParseError> {
    let raw = pem::read(Path::new(path)).map_err(|e| refused(e.to_string()))?;
    check(path, &raw)
}

fn refused(reason: String) -> ParseError {
    ParseError::Refused(reason.into())
}

fn check(path: &str, raw: &[u8]) -> Result<CaBundle, ParseError> {
    let text =
        std::str::from_utf8(raw).map_err(|_| refused(format!("{path} is not text (PEM)")))?;
    // Only the certificates travel, into every pod spec.
    let blocks = pem::certificate_blocks(text).ok_or_else(|| {
        refused(format!(
            "{path} holds a private key; give the CA certificates only (they go into every pod spec)"
        ))
    })?;
    // Checked here, naming the file; only CERTIFICATE blocks are kept.
    pem::trust_anchors(blocks.as_bytes(), Path::new(path))
        .map_err(|e| refused(format!("{e} (only CERTIFICATE blocks are used)")))?;
    if blocks.len() > MAX_INJECTED {
        return Err(refused(format!(
            "{path} holds {} bytes of certificates; at most {MAX_INJECTED} go into each sidecar's environment: keep only the CAs the sidecars need",
            blocks.len()
        )));
    }
    Ok(CaBundle {
        origin: path.to_owned(),
        pem: blocks.into_bytes(),
    })
}

/// The bundle in use; clones share it, so the defaults every review
/// copies see a reload at once.
#[derive(Clone)]
pub struct SidecarCaBundle(Arc<ArcSwap<CaBundle>>);

impl SidecarCaBundle {
    pub fn new(bundle: CaBundle) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(bundle)))
    }

    /// The bundle new pods get.
    pub fn current(&self) -> Arc<CaBundle> {
        self.0.load_full()
    }

    /// Polls the file every `interval` until `shutdown`, counting reloads
    /// in `reloads` by `result`.
    pub async fn watch(
        self,
        interval: Duration,
        reloads: IntCounterVec,
        shutdown: CancellationToken,
    ) {
        let mut every = Every::new(interval, shutdown);
        let mut poller = Poller::default();
        while every.tick().await {
            let bundle = self.clone();
            let polled = tokio::task::spawn_blocking(move || {
                let outcome = poller.poll(&bundle);
                (outcome, poller)
            })
            .await;
            let outcome = match polled {
                Ok((outcome, kept)) => {
                    poller = kept;
                    outcome
                }
                Err(e) => {
                    tracing::warn!(error = %e, "trust bundle reload task failed");
                    poller = Poller::default();
                    continue;
                }
            };
            let file = self.current().origin.clone();
            match outcome {
                Poll::Unchanged | Poll::StillFailing => {}
                Poll::Recovered => {
                    tracing::info!(%file, "sidecars' trust bundle file is usable again; it holds the bundle in use");
                }
                Poll::Reloaded => {
                    reloads.with_label_values(&["success"]).inc();
                    tracing::info!(%file, "sidecars' trust bundle reloaded: pods created from now on get it");
                }
                Poll::Failed(reason) => {
                    reloads.with_label_values(&["failure"]).inc();
                    tracing::warn!(%file, error = %reason, "sidecars' trust bundle not reloaded; new pods keep getting the one in use");
                }
            }
        }
    }
}

/// What one look at the file found.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    Unchanged,
    /// Unchanged, after a failure reported: the file is usable again.
    Recovered,
    Reloaded,
    /// Not taken, for this reason (new: worth reporting).
    Failed(String),
    /// Not taken, for the reason already reported.
    StillFailing,
}

/// Remembers what the last look saw, so that a broken file (or one that
/// cannot be read) is reported once, not at every poll, and again when
/// it changes.
#[derive(Debug, Default)]
pub struct Poller {
    /// The bytes last read, and why they were refused (`None`: taken).
    seen: Option<(Vec<u8>, Option<String>)>,
    /// The failure last reported, until a look finds the file usable.
    failure: Option<String>,
}

impl Poller {
    /// Reads the file again and has `bundle` take its certificates if they
    /// changed and are valid; on error the current bundle stays.
    pub fn poll(&mut self, bundle: &SidecarCaBundle) -> Poll {
        let current = bundle.current();
        let path = current.origin.as_str();
        let raw = match pem::read(Path::new(path)) {
            Ok(raw) => raw,
            Err(e) => return self.failed(e.to_string()),
        };
        if let Some((bytes, refused)) = &self.seen {
            if *bytes == raw {
                // The same bytes as last time: the same verdict, and a
                // failure before (a read error, say) is over if they were
                // good.
                return match refused.clone() {
                    Some(reason) => self.failed(reason),
                    None => self.usable(Poll::Unchanged),
                };
            }
        }
        let checked = check(path, &raw);
        self.seen = Some((raw, checked.as_ref().err().map(ToString::to_string)));
        match checked {
            // A new version of the file: reported even if it fails as the
            // last one did.
            Err(e) => {
                self.failure = None;
                self.failed(e.to_string())
            }
            Ok(new) if new.pem == current.pem => self.usable(Poll::Unchanged),
            Ok(new) => {
                bundle.0.store(Arc::new(new));
                self.usable(Poll::Reloaded)
            }
        }
    }

    /// The file is usable: `Recovered` when a failure was reported and
    /// nothing new is taken, else `outcome`.
    fn usable(&mut self, outcome: Poll) -> Poll {
        let recovered = self.failure.take().is_some();
        if recovered && outcome == Poll::Unchanged {
            Poll::Recovered
        } else {
            outcome
        }
    }

    fn failed(&mut self, reason: String) -> Poll {
        if self.failure.as_deref() == Some(reason.as_str()) {
            return Poll::StillFailing;
        }
        self.failure = Some(reason.clone());
        Poll::Failed(reason)
    }
}

impl PartialEq for SidecarCaBundle {
    fn eq(&self, other: &Self) -> bool {
        *self.current() == *other.current()
    }
}

impl fmt::Debug for SidecarCaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.current().fmt(f)
    }
}

impl From<CaBundle> for SidecarCaBundle {
    fn from(bundle: CaBundle) -> Self {
        Self::new(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> String {
        rcgen::generate_simple_self_signed(vec!["proxy.corp".to_owned()])
            .unwrap()
            .cert
            .pem()
    }

    #[test]
    fn a_changed_valid_file_is_taken_and_a_broken_one_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crt");
        let publish = |text: &str| {
            let tmp = dir.path().join(".tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        };
        let (first, second) = (ca(), ca());
        publish(&first);
        let bundle = SidecarCaBundle::new(read(path.to_str().unwrap()).unwrap());
        let copy = bundle.clone();
        let mut poller = Poller::default();
        assert_eq!(poller.poll(&bundle), Poll::Unchanged);
        publish(&second);
        assert_eq!(poller.poll(&bundle), Poll::Reloaded);
        // Every clone (the defaults each review copies) sees it.
        assert_eq!(copy.current().pem, second.as_bytes());
        assert_eq!(poller.poll(&bundle), Poll::Unchanged);
        // The same certificates with a comment: nothing new for the pods.
        publish(&format!("# rotated by hand\n{second}"));
        assert_eq!(poller.poll(&bundle), Poll::Unchanged);

        publish("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n");
        assert!(matches!(poller.poll(&bundle), Poll::Failed(r) if r.contains("ca.crt")));
        assert_eq!(poller.poll(&bundle), Poll::StillFailing);
        assert_eq!(copy.current().pem, second.as_bytes());
        // A key is never taken into pod specs.
        let key = rcgen::generate_simple_self_signed(vec!["x".to_owned()])
            .unwrap()
            .signing_key
            .serialize_pem();
        publish(&format!("{first}{key}"));
        assert!(matches!(poller.poll(&bundle), Poll::Failed(r) if r.contains("private key")));
        assert_eq!(copy.current().pem, second.as_bytes());
        // Another version, broken the same way: a new file, reported.
        publish(&format!("{second}{key}"));
        assert!(matches!(poller.poll(&bundle), Poll::Failed(r) if r.contains("private key")));
        assert_eq!(poller.poll(&bundle), Poll::StillFailing);
        // A file gone: reported once too.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(poller.poll(&bundle), Poll::Failed(_)));
        assert_eq!(poller.poll(&bundle), Poll::StillFailing);
        publish(&first);
        assert_eq!(poller.poll(&bundle), Poll::Reloaded);
        assert_eq!(copy.current().pem, first.as_bytes());
        // Gone and back with the same bytes, twice: each outage reported,
        // and its end.
        for _ in 0..2 {
            std::fs::remove_file(&path).unwrap();
            assert!(matches!(poller.poll(&bundle), Poll::Failed(_)));
            publish(&first);
            assert_eq!(poller.poll(&bundle), Poll::Recovered);
            assert_eq!(poller.poll(&bundle), Poll::Unchanged);
        }
    }
}
