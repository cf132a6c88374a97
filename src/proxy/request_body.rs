//! Reading a request body whole: SigV4 signs its hash, and a rejected
//! request is retried exactly. Bounded by `--max-body-bytes`, and hashed
//! frame by frame while it arrives rather than in a second pass.

use std::future::Future;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use http_body::Body;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::error::Elapsed;

use super::error::ProxyError;
use super::gate::GateState;
use super::signer::Sha256Hex;
use super::BoxError;

/// A request body read in full, with its SHA-256 when SigV4 needs it.
pub struct ReadBody {
    pub bytes: Bytes,
    pub sha256: Option<Sha256Hex>,
    /// Its share of `--request-body-budget`, returned when it is dropped.
    _budget: Option<OwnedSemaphorePermit>,
}

/// How much a body may be, and how slowly it may come.
pub struct Limits<'a> {
    pub max_bytes: usize,
    /// Longest silence between two pieces of the body.
    pub read_timeout: Duration,
    /// The budget every buffered body draws from.
    pub gate: &'a GateState,
}

/// Reads the whole body, hashing it when `hash` is set. A one-frame body is
/// kept as is; larger ones are gathered into one buffer sized from
/// `Content-Length`.
///
/// The budget is reserved before the bytes are held: the declared length at
/// once, or piece by piece for a body without one.
pub async fn read<B>(
    headers: &http::HeaderMap,
    mut body: B,
    limits: Limits<'_>,
    hash: bool,
) -> Result<ReadBody, ProxyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let limit = limits.max_bytes;
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let mut budget = match declared {
        Some(n) if n > 0 => Some(limits.gate.reserve(n as usize).await?),
        _ => None,
    };
    let reserved = declared.map_or(0, |n| n as usize);
    let mut hasher = hash.then(Sha256::new);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    loop {
        let next = within(limits.read_timeout, body.frame()).await;
        let Some(frame) = next.map_err(|_| ProxyError::BodyReadTimeout(limits.read_timeout))?
        else {
            break;
        };
        let frame = frame.map_err(|e| ProxyError::BodyRead(e.into().to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(ProxyError::BodyTooLarge { limit });
        }
        if total > reserved {
            // More than declared (or nothing declared): reserve what came.
            let extra = total - reserved.max(total - data.len());
            let more = limits.gate.reserve(extra).await?;
            match budget.as_mut() {
                Some(held) => held.merge(more),
                None => budget = Some(more),
            }
        }
        if let Some(h) = hasher.as_mut() {
            h.update(&data);
        }
        match (&mut first, &mut rest) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let capacity = declared.map_or(0, |n| n as usize).max(f.len() + data.len());
                let mut buf = BytesMut::with_capacity(capacity);
                buf.extend_from_slice(f);
                buf.extend_from_slice(&data);
                rest = Some(buf);
            }
            (Some(_), Some(buf)) => buf.extend_from_slice(&data),
        }
    }
    let bytes = match (first, rest) {
        (_, Some(buf)) => buf.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    };
    Ok(ReadBody {
        bytes,
        sha256: hasher.map(Sha256Hex::of),
        _budget: budget,
    })
}

/// `future`'s output, or `Elapsed` once `limit` passes without it. Polled
/// once before a timer exists: a frame hyper already holds (a small body's
/// nearly always) then costs no timer, which tokio would set up and take
/// down for every frame.
pub(super) async fn within<F: Future>(limit: Duration, future: F) -> Result<F::Output, Elapsed> {
    let mut future = std::pin::pin!(future);
    match future.as_mut().now_or_never() {
        Some(output) => Ok(output),
        None => tokio::time::timeout(limit, future).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_frame_needs_no_timer() {
        // No time driver: a timer would panic here.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let output = runtime.block_on(within(Duration::from_secs(1), async { 7 }));
        assert_eq!(output.ok(), Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_does_not_come_times_out() {
        let limit = Duration::from_secs(5);
        let never = within(limit, std::future::pending::<()>());
        assert!(never.await.is_err());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let later = tokio::spawn(within(limit, rx));
        tokio::time::sleep(Duration::from_secs(4)).await;
        tx.send(3).unwrap();
        assert_eq!(later.await.unwrap().unwrap().unwrap(), 3);
    }

    #[test]
    fn the_digest_is_lower_case_hex_of_the_hash() {
        for body in [&b""[..], b"x", &[0xffu8; 1000]] {
            let mut hasher = Sha256::new();
            hasher.update(body);
            assert_eq!(
                Sha256Hex::of(hasher).as_str(),
                hex::encode(Sha256::digest(body))
            );
        }
    }
}
