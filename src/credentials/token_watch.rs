//! Notices kubelet token rotations and asks for an early refresh.
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

/// What a token rotation triggers. The watch calls it on every change it
/// sees; the fleet simulation's kubelet calls it directly, so thousands of
/// simulated pods need no file polling.
pub fn on_rotation(cell: &CredentialCell) {
    cell.request_refresh();
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
            if current.is_some() && current != self.last {
                if self.last.is_some() {
                    tracing::info!(path = %self.path.display(), "web identity token rotated; refreshing early");
                    on_rotation(&cell);
                }
                self.last = current;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_symlink_swap_requests_a_refresh() {
        let dir = std::env::temp_dir().join(format!("bb-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("..v1")).unwrap();
        std::fs::create_dir_all(dir.join("..v2")).unwrap();
        std::fs::write(dir.join("..v1/token"), "one").unwrap();
        std::fs::write(dir.join("..v2/token"), "two!").unwrap();
        std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();

        let cell = Arc::new(CredentialCell::new());
        let shutdown = CancellationToken::new();
        let watch = TokenWatch::start(dir.join("token")).await;
        std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        let task =
            tokio::spawn(watch.run(cell.clone(), Duration::from_millis(10), shutdown.clone()));
        tokio::time::timeout(Duration::from_secs(5), cell.refresh_requested())
            .await
            .expect("rotation noticed");
        shutdown.cancel();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
