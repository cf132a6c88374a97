//! Reading a request body whole: SigV4 signs its hash, and a rejected
//! request is retried exactly. Bounded by `--max-body-bytes`, and hashed
//! frame by frame while it arrives rather than in a second pass.

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use super::error::ProxyError;
use super::BoxError;

/// A request body read in full, with its SHA-256 when SigV4 needs it.
pub struct ReadBody {
    pub bytes: Bytes,
    pub sha256: Option<String>,
}

/// Reads the whole body, hashing it when `hash` is set. A one-frame body is
/// kept as is; larger ones are gathered into one buffer sized from
/// `Content-Length`.
pub async fn read<B>(
    headers: &http::HeaderMap,
    mut body: B,
    limit: usize,
    hash: bool,
) -> Result<ReadBody, ProxyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let mut hasher = hash.then(Sha256::new);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ProxyError::BodyRead(e.into().to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(ProxyError::BodyTooLarge { limit });
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
        sha256: hasher.map(|h| hex::encode(h.finalize())),
    })
}
