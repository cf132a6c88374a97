//! The AWS container-credentials protocol on loopback, so any AWS SDK in the
//! pod (pointed at it with `AWS_CONTAINER_CREDENTIALS_FULL_URI` and
//! `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`) shares the sidecar's cached
//! credentials instead of calling STS itself.
//!
//! Off by default. It hands out the secret, so it listens on loopback only
//! and every request must present the authorization token.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::clock::SharedClock;
use crate::credentials::CredentialCell;
use crate::secret::Secret;

/// Serving the AWS container-credentials protocol to the rest of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCredentialsConfig {
    /// Loopback only: whoever reaches it gets the credentials.
    pub listen: SocketAddr,
    /// Shared with the app (`AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`).
    pub token_file: PathBuf,
    pub limits: crate::server::Limits,
}

/// The path SDKs are pointed at.
pub const PATH: &str = "/v1/credentials";

/// Credentials that never expire (static keys) are announced with this
/// lifetime, so SDKs come back periodically instead of caching forever.
const NON_EXPIRING_ANNOUNCED: Duration = Duration::from_secs(15 * 60);

/// Why the token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot create {path}: {source}")]
    Create {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is empty")]
    Empty { path: String },
    #[error("{path} holds whitespace around its token (a trailing newline?): AWS SDKs send the file's bytes as the Authorization header and refuse a newline in it (botocore: \"not a legal header value\"); write the token alone (printf '%s', not echo)")]
    Untrimmed { path: String },
}

/// Reads the authorization token, or creates the file with a random one
/// (shared volumes start empty; an operator may also pre-provision it). An
/// empty file is what a write cut short leaves (a full volume, a kill): it
/// is replaced, or the sidecar could never start again on that volume.
pub fn load_or_create_token(path: &Path) -> Result<Secret, TokenFileError> {
    match read_token(path)? {
        Found::Token(token) => Ok(token),
        Found::Empty => create_token(path, Publish::Replace),
        Found::Missing => create_token(path, Publish::IfAbsent),
    }
}

/// What the token file holds.
enum Found {
    Token(Secret),
    Empty,
    Missing,
}

fn read_token(path: &Path) -> Result<Found, TokenFileError> {
    match crate::files::read_small_text(path, 64 * 1024) {
        Ok(t) if t.trim().is_empty() => Ok(Found::Empty),
        // The sidecar compares it trimmed; the app's SDK would send it as
        // it is, and no SDK sends a newline.
        Ok(t) if t.trim() != t => Err(TokenFileError::Untrimmed {
            path: path.display().to_string(),
        }),
        Ok(t) => Ok(Found::Token(Secret::new(t))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Found::Missing),
        Err(source) => Err(TokenFileError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// The file is not there: never overwrite one that appears meanwhile.
    IfAbsent,
    /// The file is there and empty.
    Replace,
}

/// Writes a fresh token beside `path`, then moves it into place whole: the
/// file never exists half-written.
fn create_token(path: &Path, publish: Publish) -> Result<Secret, TokenFileError> {
    let shown = path.display().to_string();
    let failed = |source| TokenFileError::Create {
        path: shown.clone(),
        source,
    };
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(failed)?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let name = path
        .file_name()
        .map_or_else(|| "token".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    // World-readable inside the pod's own volume: the app container may
    // run as another user and must read it.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .and_then(|mut f| f.write_all(token.as_bytes()).and_then(|()| f.sync_all()));
    let placed = written.and_then(|()| match publish {
        Publish::IfAbsent => std::fs::hard_link(&tmp, path),
        Publish::Replace => std::fs::rename(&tmp, path),
    });
    let _ = std::fs::remove_file(&tmp);
    match placed {
        Ok(()) => Ok(Secret::new(token)),
        // Created meanwhile by someone else: theirs is the token.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match read_token(path)? {
            Found::Token(token) => Ok(token),
            Found::Empty => Err(TokenFileError::Empty { path: shown }),
            // ... and removed again.
            Found::Missing => Err(TokenFileError::Read {
                path: shown,
                source: std::io::ErrorKind::NotFound.into(),
            }),
        },
        Err(source) => Err(failed(source)),
    }
}

#[derive(Clone)]
struct EndpointState {
    cell: Arc<CredentialCell>,
    clock: SharedClock,
    token: Arc<Secret>,
}

/// The endpoint's routes.
pub fn router(cell: Arc<CredentialCell>, clock: SharedClock, token: Secret) -> Router {
    Router::new()
        .route(PATH, get(credentials))
        .with_state(EndpointState {
            cell,
            clock,
            token: Arc::new(token),
        })
}

/// Compares without an early exit, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"code": code, "message": message})),
    )
        .into_response()
}

async fn credentials(State(state): State<EndpointState>, headers: HeaderMap) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !same(presented, state.token.expose().as_bytes()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "missing or wrong authorization token (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
        );
    }
    let now = state.clock.now();
    let body = state.cell.with_usable(now, |held| {
        let c = held.credentials();
        let expiry = c.expiry().unwrap_or(now + NON_EXPIRING_ANNOUNCED);
        serde_json::json!({
            "AccessKeyId": c.access_key_id(),
            "SecretAccessKey": c.secret_access_key(),
            "Token": c.session_token(),
            "Expiration": humantime::format_rfc3339_seconds(expiry).to_string(),
        })
    });
    match body {
        Ok(body) => {
            let mut r = Json(body).into_response();
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            r
        }
        Err(why) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "CredentialsUnavailable",
            why.describe(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_is_created_once_then_reused() {
        let dir = std::env::temp_dir().join(format!("bb-cc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let first = load_or_create_token(&path).unwrap();
        assert_eq!(first.expose().len(), 64);
        let again = load_or_create_token(&path).unwrap();
        assert_eq!(first, again);
        // A write cut short left an empty file: replaced, not a crash loop.
        std::fs::write(&path, "").unwrap();
        let replaced = load_or_create_token(&path).unwrap();
        assert_eq!(replaced.expose().len(), 64);
        assert_ne!(replaced, first);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), replaced.expose());
        // Nothing but the token is left in the volume.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["token"]);
        // Pre-provisioned with a newline: every SDK would refuse to send it.
        std::fs::write(&path, "pre-provisioned-token\n").unwrap();
        let e = load_or_create_token(&path).unwrap_err().to_string();
        assert!(
            e.contains("trailing newline") && !e.contains("pre-provisioned"),
            "{e}"
        );
        std::fs::write(&path, "pre-provisioned-token").unwrap();
        assert_eq!(
            load_or_create_token(&path).unwrap().expose(),
            "pre-provisioned-token"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn comparison_needs_exact_equality() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(!same(b"", b"a"));
    }
}
