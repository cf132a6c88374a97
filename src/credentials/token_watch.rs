//! Notices kubelet token rotations; a failing refresh is retried at once.
//!
//! The kubelet writes a new token into a fresh timestamped directory and
//! swaps the `..data` symlink, so the resolved path (and usually the mtime)
//! of the token file changes. Polling that once a second costs one
//! `readlink`/`stat` and needs no inotify handles, which some node images
//! limit tightly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::CredentialCell;

/// What identifies one version of the token file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    resolved: PathBuf,
    modified: Option<SystemTime>,
    len: u64,
}

async fn fingerprint(path: &Path) -> Option<Fingerprint> {
    let resolved = tokio::fs::canonicalize(path).await.ok()?;
    let meta = tokio::fs::metadata(&resolved).await.ok()?;
    Some(Fingerprint {
        resolved,
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

/// What a token rotation triggers; `true` when it asked for a refresh. The
/// watch calls it on every change it sees; the fleet simulation's kubelet
/// calls it directly, so thousands of simulated pods need no file polling.
///
/// A new token changes nothing about credentials already issued, and the
/// next scheduled refresh reads it anyway. Refreshing at every rotation
/// brought back the waves the refresh jitter spreads: pods started
/// together have their tokens rotated together (at 80 % of the same
/// lifetime), and 10,000 of them called STS 100 times a second
/// (docs/fleet.md). So only a failing refresh is hurried: the new token may
/// be what it was missing. Not a throttled one: its backoff is waited out
/// whatever asks (and the log line would promise a retry that does not
/// come).
pub fn on_rotation(cell: &CredentialCell) -> bool {
    let failing = cell.last_error().is_some() && !cell.is_throttled();
    if failing {
        cell.request_retry();
    }
    failing
}

/// A watch on one token file, holding the version seen last.
#[derive(Debug)]
pub struct TokenWatch {
    path: PathBuf,
    last: Option<Fingerprint>,
}

impl TokenWatch {
    /// Records the token's current version.
    pub async fn start(path: PathBuf) -> Self {
        let last = fingerprint(&path).await;
        Self { path, last }
    }

    /// Polls every `interval` until `shutdown`; on a change, requests an
    /// early refresh so the new token is exchanged promptly.
    pub async fn run(
        mut self,
        cell: Arc<CredentialCell>,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
            let current = fingerprint(&self.path).await;
            // A token that appears after the start is news too: the
            // volume was not projected yet, and the refresher is backing
            // off from "cannot read the token file" meanwhile.
            if current.is_some() && current != self.last {
                let retrying = on_rotation(&cell);
                tracing::info!(
                    path = %self.path.display(),
                    retrying,
                    appeared = self.last.is_none(),
                    "web identity token rotated; the next refresh exchanges it (at once if refreshes are failing, unless STS is throttling)"
                );
                self.last = current;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_hurries_only_a_failing_refresh() {
        let cell = CredentialCell::new();
        assert!(!on_rotation(&cell));
        cell.record_failure("InvalidIdentityToken".into());
        assert!(on_rotation(&cell));
        // STS throttling: its backoff stands, and the rotation says so.
        cell.set_throttled(true);
        assert!(!on_rotation(&cell));
    }

    #[tokio::test]
    async fn a_symlink_swap_retries_a_failing_refresh() {
        let dir = std::env::temp_dir().join(format!("bb-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..v1")).unwrap();
        std::fs::create_dir_all(dir.join("..v2")).unwrap();
        std::fs::write(dir.join("..v1/token"), "one").unwrap();
        std::fs::write(dir.join("..v2/token"), "two!").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();

        let cell = Arc::new(CredentialCell::new());
        cell.record_failure("ExpiredTokenException".into());
        let shutdown = CancellationToken::new();
        let watch = TokenWatch::start(dir.join("token")).await;
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        let task =
            tokio::spawn(watch.run(cell.clone(), Duration::from_millis(10), shutdown.clone()));
        tokio::time::timeout(Duration::from_secs(5), cell.retry_requested())
            .await
            .expect("rotation noticed");
        shutdown.cancel();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_token_written_after_the_start_retries_a_failing_refresh() {
        let dir = std::env::temp_dir().join(format!("bb-watch-late-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cell = Arc::new(CredentialCell::new());
        cell.record_failure("cannot read the web identity token file".into());
        let shutdown = CancellationToken::new();
        let watch = TokenWatch::start(dir.join("token")).await;
        std::fs::write(dir.join("token"), "late").unwrap();
        let task =
            tokio::spawn(watch.run(cell.clone(), Duration::from_millis(10), shutdown.clone()));
        tokio::time::timeout(Duration::from_secs(5), cell.retry_requested())
            .await
            .expect("the token's appearance noticed");
        shutdown.cancel();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
