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
use tokio::time::Instant;

use super::config::MinRate;
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
    /// The least average rate once its grace has passed.
    pub min_rate: Option<MinRate>,
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
    let mut started = Instant::now();
    let mut hasher = hash.then(Sha256::new);
    let mut first: Option<Bytes> = None;
    let mut rest: Option<BytesMut> = None;
    let mut total = 0usize;
    loop {
        // A frame hyper already holds needs no clock reading or timer.
        let next = match body.frame().now_or_never() {
            Some(next) => next,
            None => {
                let (wait, stalled) = patience(&limits, started, total);
                tokio::time::timeout(wait, body.frame())
                    .await
                    .map_err(|_| stalled)?
            }
        };
        let Some(frame) = next else {
            break;
        };
        let frame = frame.map_err(|e| unreadable(e.into()))?;
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
            let waiting = Instant::now();
            let more = limits.gate.reserve(extra).await?;
            // Waiting for room is the proxy's doing, not the client's.
            started += waiting.elapsed();
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

/// Why a body could not be read: the client went away (its connection
/// closed or reset mid-body, or it cancelled its HTTP/2 stream), counted
/// as `499` like a client that leaves while Bedrock works; or it sent
/// something that is not a body (a malformed chunk), a bad request.
fn unreadable(error: BoxError) -> ProxyError {
    let message = error.to_string();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*error);
    while let Some(e) = cause {
        if client_went_away(e) {
            return ProxyError::ClientClosed(format!(
                "the client went away in the middle of the body: {message}"
            ));
        }
        cause = e.source();
    }
    ProxyError::BodyRead(message)
}

fn client_went_away(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind;
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        return matches!(
            io.kind(),
            ErrorKind::UnexpectedEof
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        );
    }
    if let Some(h2) = e.downcast_ref::<h2::Error>() {
        // Whatever the code (curl abandons a transfer with STREAM_CLOSED),
        // a reset from the client mid-body is the client leaving; one of
        // our own making (a protocol error it caused) is not.
        return h2.is_io() || ((h2.is_reset() || h2.is_go_away()) && h2.is_remote());
    }
    false
}

/// How long to wait for the next piece of a body that began at `started`
/// and has brought `received` bytes, and the error if it does not come:
/// the silence allowed, or less when the minimum rate runs out first.
fn patience(limits: &Limits<'_>, started: Instant, received: usize) -> (Duration, ProxyError) {
    let silent = (
        limits.read_timeout,
        ProxyError::BodyReadTimeout(limits.read_timeout),
    );
    let Some(rate) = limits.min_rate else {
        return silent;
    };
    let allowance = rate.allowance(received as u64);
    let left = allowance.saturating_sub(started.elapsed());
    if left < limits.read_timeout {
        let slow = ProxyError::BodyTooSlow {
            bytes_per_second: rate.bytes_per_second.get(),
            received: received as u64,
            // Said to the millisecond: the nanoseconds the rate earns
            // read as noise ("10s 30us 517ns").
            within: Duration::from_millis(u64::try_from(allowance.as_millis()).unwrap_or(u64::MAX)),
        };
        (left, slow)
    } else {
        silent
    }
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
    use crate::proxy::config::Gate;
    use http_body::Frame;
    use std::convert::Infallible;
    use std::num::NonZeroU64;

    type Sender = tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>;

    fn gate() -> GateState {
        GateState::new(Gate {
            allowed_hosts: Vec::new(),
            token: None,
            body_read_timeout: Duration::from_secs(30),
            body_min_rate: None,
            body_budget: 1_000_000,
            body_budget_wait: Duration::ZERO,
            max_requests: 4,
        })
    }

    /// 1,000 bytes a second after ten seconds; silences of 30 s.
    fn limits(gate: &GateState, min_rate: bool) -> Limits<'_> {
        Limits {
            max_bytes: 1_000_000,
            read_timeout: Duration::from_secs(30),
            min_rate: min_rate.then_some(MinRate {
                bytes_per_second: NonZeroU64::new(1000).unwrap(),
                grace: Duration::from_secs(10),
            }),
            gate,
        }
    }

    /// A body declaring `declared` bytes, fed through the returned sender.
    fn channel_body(
        declared: usize,
    ) -> (
        Sender,
        http::HeaderMap,
        impl Body<Data = Bytes, Error = Infallible> + Unpin,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let stream = Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::CONTENT_LENGTH, declared.into());
        (tx, headers, http_body_util::StreamBody::new(stream))
    }

    /// Sends `size` bytes every `every`, `times` times, then ends the body.
    fn drip(tx: Sender, size: usize, every: Duration, times: usize) {
        tokio::spawn(async move {
            for _ in 0..times {
                let piece = Frame::data(Bytes::from(vec![b'x'; size]));
                if tx.send(Ok(piece)).await.is_err() {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_is_cut_off_once_its_grace_has_passed() {
        let gate = gate();
        let (tx, headers, body) = channel_body(500_000);
        // A byte every five seconds: never silent for the 30 s allowed.
        drip(tx, 1, Duration::from_secs(5), 1000);
        let started = Instant::now();
        let Err(error) = read(&headers, body, limits(&gate, true), true).await else {
            panic!("a trickle was read whole");
        };
        assert_eq!(error.code().name, "body_too_slow", "{error}");
        // What came, and in how long: a body that stopped reads as such,
        // not as a rate the client cannot relate to a few bytes.
        assert!(
            error
                .to_string()
                .starts_with("the request body brought 3 bytes in 10s 3ms"),
            "{error}"
        );
        // Three bytes (at 0, 5 and 10 s) earn 3 ms beyond the grace.
        assert_eq!(started.elapsed(), Duration::from_millis(10_003));
        // Its share of the budget came back with the error.
        assert!(gate.reserve(1_000_000).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_keeping_the_rate_is_read_whole_however_long_it_takes() {
        let gate = gate();
        let (tx, headers, body) = channel_body(40_000);
        // 1,000 bytes a second, the least allowed, and late by the grace.
        let (late_tx, late) = (tx.clone(), Duration::from_secs(9));
        drop(tx);
        tokio::spawn(async move {
            tokio::time::sleep(late).await;
            drip(late_tx, 1000, Duration::from_secs(1), 40);
        });
        let read = read(&headers, body, limits(&gate, true), true).await;
        assert_eq!(read.map(|b| b.bytes.len()).ok(), Some(40_000));
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_waiting_for_budget_room_is_not_the_clients() {
        let gate = GateState::new(Gate {
            allowed_hosts: Vec::new(),
            token: None,
            body_read_timeout: Duration::from_secs(30),
            body_min_rate: None,
            body_budget: 1000,
            body_budget_wait: Duration::from_secs(20),
            max_requests: 4,
        });
        let everything = gate.reserve(1000).await.unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(15)).await;
            drop(everything);
        });
        // No declared length: room is drawn as the pieces come.
        let (tx, mut headers, body) = channel_body(0);
        headers.clear();
        tokio::spawn(async move {
            for (at, size) in [(0, 1), (16, 10)] {
                tokio::time::sleep_until(Instant::now() + Duration::from_secs(at)).await;
                let piece = Frame::data(Bytes::from(vec![b'x'; size]));
                tx.send(Ok(piece)).await.unwrap();
            }
        });
        let read = read(&headers, body, limits(&gate, true), true).await;
        assert_eq!(
            read.map(|b| b.bytes.len()).map_err(|e| e.to_string()),
            Ok(11)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn silence_is_still_its_own_error_within_the_grace() {
        let gate = gate();
        let (tx, headers, body) = channel_body(10);
        let mut limits = limits(&gate, true);
        limits.read_timeout = Duration::from_secs(2);
        let Err(error) = read(&headers, body, limits, true).await else {
            panic!("a silent body was read");
        };
        assert_eq!(error.code().name, "body_read_timeout", "{error}");
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_minimum_rate_a_trickle_is_read_whole() {
        let gate = gate();
        let (tx, headers, body) = channel_body(20);
        drip(tx, 1, Duration::from_secs(5), 20);
        let read = read(&headers, body, limits(&gate, false), true).await;
        assert_eq!(read.map(|b| b.bytes.len()).ok(), Some(20));
    }

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
    fn a_hang_up_is_the_client_leaving_and_a_bad_chunk_a_bad_request() {
        use std::io::{Error, ErrorKind};
        let code = |e: BoxError| unreadable(e).code().name;
        // hyper's body error wraps the connection's cause.
        #[derive(Debug, thiserror::Error)]
        #[error("error reading a body from connection")]
        struct Wrapped(#[source] Error);
        for kind in [ErrorKind::UnexpectedEof, ErrorKind::ConnectionReset] {
            assert_eq!(code(Box::new(Wrapped(Error::from(kind)))), "client_closed");
        }
        let bad_chunk = Error::new(ErrorKind::InvalidData, "invalid chunk size line");
        assert_eq!(code(Box::new(Wrapped(bad_chunk))), "body_read_failed");
        // A reset of our own making (not the client's) is no hang-up.
        let ours = h2::Error::from(h2::Reason::CANCEL);
        assert!(!ours.is_remote());
        assert_eq!(code(Box::new(ours)), "body_read_failed");
        assert_eq!(code("connection error".into()), "body_read_failed");
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
