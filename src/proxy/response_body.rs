//! The response body: streamed from upstream frame by frame, measured, and
//! cut off (in the client's dialect) when the upstream goes quiet too long.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_smithy_types::event_stream::{Header, HeaderValue as EventHeaderValue, Message};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

pub use super::occupancy::{Completion, HeldBody, InFlight, Occupancy, SharedHold};
use super::pool::PooledBody;
use super::usage::UsageTap;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the response body is framed, which decides how an error is told
/// to the client once the status line has already gone out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// `text/event-stream` (OpenAI-compatible streaming).
    Sse,
    /// `application/vnd.amazon.eventstream` (ConverseStream, InvokeModelWithResponseStream).
    EventStream,
    /// Anything else (JSON).
    Plain,
}

impl StreamKind {
    pub fn of(headers: &HeaderMap) -> Self {
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if ct.starts_with("text/event-stream") {
            Self::Sse
        } else if ct.starts_with("application/vnd.amazon.eventstream") {
            Self::EventStream
        } else {
            Self::Plain
        }
    }

    /// The last bytes to send when the stream is cut off: an error event the
    /// client's SDK raises. `None` when the framing has no way to say it.
    fn error_tail(self, message: &str) -> Option<Bytes> {
        match self {
            Self::Sse => {
                // Named `error` with an `error` member: the Anthropic SDK
                // reads only named error events, the OpenAI SDKs raise on
                // any event whose data holds an `error`.
                let body = serde_json::json!({"type": "error", "error": {
                    "message": message, "type": "api_error", "code": "upstream_idle_timeout"}});
                Some(Bytes::from(format!("event: error\ndata: {body}\n\n")))
            }
            Self::EventStream => {
                let payload = serde_json::json!({ "message": message }).to_string();
                let msg = Message::new(Bytes::from(payload))
                    .add_header(Header::new(
                        ":message-type",
                        EventHeaderValue::String("exception".into()),
                    ))
                    .add_header(Header::new(
                        ":exception-type",
                        EventHeaderValue::String("modelStreamErrorException".into()),
                    ))
                    .add_header(Header::new(
                        ":content-type",
                        EventHeaderValue::String("application/json".into()),
                    ));
                let mut buf = Vec::new();
                aws_smithy_eventstream::frame::write_message_to(&msg, &mut buf).ok()?;
                Some(Bytes::from(buf))
            }
            Self::Plain => None,
        }
    }
}

/// Where the bytes sent so far end: between two events, where an error
/// event appended reads as one, or inside one, where it would garble it
/// (the client's SDK then fails on a JSON or checksum error instead).
#[derive(Debug, Clone, Copy)]
enum Boundary {
    /// SSE: the last (up to) four bytes sent, oldest first in the high
    /// bytes; an event ends with a blank line.
    Sse {
        last: u32,
        seen: u8,
    },
    /// Event stream: bytes still due of the current message, and the
    /// length prefix of the next one as far as it has arrived (each
    /// message starts with its total length, a big-endian u32).
    EventStream {
        due: u64,
        prefix: u32,
        have: u8,
    },
    Plain,
}

impl Boundary {
    fn of(kind: StreamKind) -> Self {
        match kind {
            StreamKind::Sse => Self::Sse { last: 0, seen: 0 },
            StreamKind::EventStream => Self::EventStream {
                due: 0,
                prefix: 0,
                have: 0,
            },
            StreamKind::Plain => Self::Plain,
        }
    }

    fn observe(&mut self, mut data: &[u8]) {
        match self {
            Self::Sse { last, seen } => {
                for &b in data.iter().rev().take(4).rev() {
                    *last = (*last << 8) | u32::from(b);
                    *seen = (*seen + 1).min(4);
                }
            }
            Self::EventStream { due, prefix, have } => {
                while !data.is_empty() {
                    if *due > 0 {
                        let n = data.len().min(usize::try_from(*due).unwrap_or(usize::MAX));
                        *due -= n as u64;
                        data = &data[n..];
                        continue;
                    }
                    *prefix = (*prefix << 8) | u32::from(data[0]);
                    *have += 1;
                    data = &data[1..];
                    if *have == 4 {
                        // The rest of the message after its length field.
                        *due = u64::from(*prefix).saturating_sub(4);
                        (*prefix, *have) = (0, 0);
                    }
                }
            }
            Self::Plain => {}
        }
    }

    fn between_events(&self) -> bool {
        match *self {
            Self::Sse { seen: 0, .. } => true,
            Self::Sse { last, seen } => {
                let two = last & 0xffff;
                two == u32::from_be_bytes([0, 0, b'\n', b'\n'])
                    || two == u32::from_be_bytes([0, 0, b'\r', b'\r'])
                    || (seen == 4 && last == u32::from_be_bytes(*b"\r\n\r\n"))
            }
            Self::EventStream { due, have, .. } => due == 0 && have == 0,
            Self::Plain => true,
        }
    }
}

/// Error returned when a stream stalls and no error event can be sent.
#[derive(Debug, thiserror::Error)]
#[error("Bedrock sent nothing for {0:?} (--stream-idle-timeout); stream cut off")]
pub struct IdleTimeout(Duration);

/// The upstream body, passed through without buffering: each frame is handed
/// to the client as soon as it arrives.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: PooledBody,
    completion: Option<Completion>,
    kind: StreamKind,
    /// Longest allowed gap between frames.
    idle: Option<Duration>,
    /// The timer enforcing it, set the first time the upstream keeps the
    /// proxy waiting: an answer already there when first polled (most
    /// buffered ones) never needs one.
    timer: Option<Pin<Box<Sleep>>>,
    /// Sent after a stall, before ending the stream.
    tail: Option<Bytes>,
    /// Whether a stall's error event may be appended now.
    boundary: Boundary,
    finished: bool,
    usage: Option<UsageTap>,
}

impl UpstreamBody {
    pub fn new(
        inner: PooledBody,
        completion: Completion,
        kind: StreamKind,
        idle_timeout: Option<Duration>,
        usage: Option<UsageTap>,
    ) -> Self {
        Self {
            inner,
            completion: Some(completion),
            kind,
            idle: idle_timeout,
            timer: None,
            tail: None,
            boundary: Boundary::of(kind),
            finished: false,
            usage,
        }
    }

    fn finish(&mut self) {
        self.finished = true;
        self.completion.take();
        if let Some(usage) = self.usage.take() {
            usage.finish();
        }
    }
}

/// A chunk shorter than this is copied before it is passed on. A chunk is
/// a view of the buffer it was read into and keeps all of it alive while
/// it waits for its client, and the connection reads on into a new one:
/// token events, each read alone, kept an 8 KiB buffer apiece, and 512
/// streams whose clients had stopped reading (with HTTP/2 windows open,
/// so 16 KiB queued each) took the sidecar to 141 MiB. Half the upstream
/// read buffer: a longer chunk keeps at most twice its size alive.
const COPY_BELOW: usize = super::pool::UPSTREAM_READ_BUFFER / 2;

fn unpinned(data: Bytes) -> Bytes {
    if data.len() < COPY_BELOW {
        Bytes::copy_from_slice(&data)
    } else {
        data
    }
}

/// The `type` of a stream the proxy cut off after `--stream-idle-timeout`
/// (the code of the error event it ends with).
const IDLE_TIMEOUT: &str = "upstream_idle_timeout";
/// The `type` of an answer whose connection broke before its end.
const BROKE_OFF: &str = "upstream_broke_off";

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A client that disconnects mid-stream still has its usage so far counted.
        if !self.finished {
            if let Some(completion) = &self.completion {
                completion.abandon();
            }
            if let Some(usage) = &mut self.usage {
                usage.client_left();
            }
            self.finish();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(tail) = this.tail.take() {
            return Poll::Ready(Some(Ok(Frame::data(tail))));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // Before the usage tap, which may keep a chunk to the end.
                let frame = frame.map_data(unpinned);
                if let (Some(d), Some(timer)) = (this.idle, &mut this.timer) {
                    timer.as_mut().reset(tokio::time::Instant::now() + d);
                }
                if let Some(data) = frame.data_ref() {
                    if let Some(usage) = &mut this.usage {
                        usage.observe(data);
                    }
                    if this.idle.is_some() {
                        this.boundary.observe(data);
                    }
                }
                // With a Content-Length body the server stops polling after
                // the last byte, so account for the end now, not on drop.
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The status line has gone out (its code is counted as
                // sent): only the log can say the answer broke off.
                tracing::warn!(
                    error = %crate::error_text::with_causes(&e),
                    "Bedrock's answer broke off before its end"
                );
                if let Some(usage) = &mut this.usage {
                    usage.cut_off(BROKE_OFF);
                }
                this.finish();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                let Some(d) = this.idle else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(d)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let mid_event = !this.boundary.between_events();
                tracing::warn!(
                    idle_s = d.as_secs_f64(),
                    mid_event,
                    "upstream stream stalled; cutting it off"
                );
                if let Some(usage) = &mut this.usage {
                    usage.cut_off(IDLE_TIMEOUT);
                }
                if let Some(completion) = &this.completion {
                    completion.abandon();
                }
                this.finish();
                let message = format!(
                    "bedrock-broker: Bedrock sent nothing for {}s (--stream-idle-timeout); stream cut off",
                    d.as_secs()
                );
                // Inside an event the error event would garble it: the
                // stream is aborted, which clients report as cut short.
                match this.kind.error_tail(&message).filter(|_| !mid_event) {
                    Some(tail) => Poll::Ready(Some(Ok(Frame::data(tail)))),
                    None => Poll::Ready(Some(Err(IdleTimeout(d).into()))),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.tail.is_none() && self.finished
    }

    fn size_hint(&self) -> SizeHint {
        if self.idle.is_some() && self.kind != StreamKind::Plain {
            // An error tail may be appended: the length is not known.
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_chunk_leaves_the_buffer_it_was_read_into() {
        // As hyper reads: chunks split off the front of one buffer.
        let mut read = bytes::BytesMut::with_capacity(16 * 1024);
        read.extend_from_slice(&[b'e'; 16 * 1024]);
        let event = read.split_to(300).freeze();
        let passed = unpinned(event.clone());
        assert_eq!(passed, event);
        assert_ne!(passed.as_ptr(), event.as_ptr(), "a copy of its own");
        let long = read.split_to(COPY_BELOW).freeze();
        let kept = unpinned(long.clone());
        assert_eq!(kept.as_ptr(), long.as_ptr(), "a long chunk passes as it is");
    }

    #[test]
    fn event_stream_error_tail_decodes_as_an_exception() {
        let tail = StreamKind::EventStream.error_tail("stalled").unwrap();
        let msg = aws_smithy_eventstream::frame::read_message_from(tail).unwrap();
        let header = |name: &str| {
            msg.headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| h.value().as_string().ok())
                .map(|s| s.as_str().to_owned())
        };
        assert_eq!(header(":message-type").as_deref(), Some("exception"));
        assert_eq!(
            header(":exception-type").as_deref(),
            Some("modelStreamErrorException")
        );
        assert_eq!(&msg.payload()[..], br#"{"message":"stalled"}"#);
    }

    fn after(kind: StreamKind, chunks: &[&[u8]]) -> bool {
        let mut b = Boundary::of(kind);
        for chunk in chunks {
            b.observe(chunk);
        }
        b.between_events()
    }

    #[test]
    fn an_sse_stream_is_between_events_only_after_a_blank_line() {
        use StreamKind::Sse;
        assert!(after(Sse, &[]));
        assert!(after(Sse, &[b"data: {\"a\":1}\n\n"]));
        assert!(after(Sse, &[b"data: {\"a\":1}\r\n\r\n"]));
        assert!(
            after(Sse, &[b"data: x\n", b"\n"]),
            "the blank line split across chunks"
        );
        assert!(after(Sse, &[b"data: x\r\n\r", b"\n"]));
        assert!(!after(Sse, &[b"data: {\"a\":1}\n\ndata: {\"con"]));
        assert!(!after(Sse, &[b"data: x\n"]));
        assert!(!after(Sse, &[b"data: x\r\n"]));
    }

    #[test]
    fn an_event_stream_is_between_events_only_after_a_whole_message() {
        use StreamKind::EventStream;
        let one = StreamKind::EventStream.error_tail("first").unwrap();
        let two = StreamKind::EventStream
            .error_tail("second message")
            .unwrap();
        let both = [&one[..], &two[..]].concat();
        assert!(after(EventStream, &[]));
        assert!(after(EventStream, &[&both]));
        // Split anywhere, even inside a length prefix: only the end counts.
        for cut in 1..both.len() {
            assert!(
                after(EventStream, &[&both[..cut], &both[cut..]]),
                "cut at {cut}"
            );
            assert_eq!(
                after(EventStream, &[&both[..cut]]),
                cut == one.len(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn sse_error_tail_is_an_error_event_both_sdks_raise() {
        let tail = StreamKind::Sse.error_tail("stalled").unwrap();
        let text = std::str::from_utf8(&tail).unwrap();
        let data = text.strip_prefix("event: error\ndata: ").unwrap();
        let json: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["code"], "upstream_idle_timeout");
        assert!(text.ends_with("\n\n"));
        assert!(StreamKind::Plain.error_tail("x").is_none());
    }
}
