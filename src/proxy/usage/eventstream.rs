//! Usage in an `application/vnd.amazon.eventstream` response: the
//! `metadata` event of ConverseStream, or the last `chunk` of
//! InvokeModelWithResponseStream. Both are among the last messages of a
//! stream, so messages are only split apart as they arrive (by their
//! length prefix, with tokio-util's codec) and the last few are decoded,
//! by aws-smithy-eventstream, when the stream ends. Decoding every message
//! as it came cost more than all the rest of the proxy's work on a
//! streamed answer (docs/performance.md, "Streamed answers").

use std::collections::VecDeque;

use aws_smithy_eventstream::frame::read_message_from;
use aws_smithy_types::event_stream::Message;
use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

use super::json::{Envelope, Usage};

/// Longest message read; a longer one ends the reading (Bedrock's events
/// are a few KiB; only the usage metrics of such a stream are lost). Up to
/// [`KEPT`] messages are held besides the unfinished one, so a stream's tap
/// holds at most about four times this, and all taps together what their
/// shared budget allows ([`super::room`]).
const MAX_MESSAGE: usize = 256 * 1024;

/// The shortest message: a prelude (two lengths and their CRC) and the
/// message's CRC. The splitter hands back whatever length a message
/// declares, and a length of 0 would be taken, forever, from the same place.
const MIN_MESSAGE: usize = 16;

/// Messages kept for decoding at the end. Bedrock ends a ConverseStream
/// with `messageStop` and `metadata`, and an InvokeModelWithResponseStream
/// with the chunk carrying its metrics; three leaves a margin.
pub(super) const KEPT: usize = 3;

/// Room a buffer may keep beyond what it holds: an ordinary stream's
/// buffers stay allocated from frame to frame, and a large message's are
/// given back once it has passed. Small, as every stream in flight keeps
/// this much out of the taps' shared budget.
const SPARE: usize = 4 * 1024;

/// Splits messages as frames arrive and keeps the last [`KEPT`].
#[derive(Debug)]
pub struct EventScanner {
    splitter: LengthDelimitedCodec,
    pending: BytesMut,
    /// Bytes split off the front of `pending` since it was allocated:
    /// they stay in its allocation, behind what `capacity()` reports,
    /// until `BytesMut` reuses them or the buffer is replaced. (At most
    /// that much: `BytesMut` may have reused some already.)
    behind: usize,
    /// The stream stopped making sense (or grew too large): ignore the rest.
    broken: bool,
    /// Copies, the newest last: a message split off `pending` would keep
    /// the whole buffer it was read into alive, out of the count of what
    /// the tap holds. Their buffers are reused for the next messages.
    recent: VecDeque<Vec<u8>>,
}

impl Default for EventScanner {
    fn default() -> Self {
        Self {
            // A message's first four bytes are its whole length, their own
            // included (with nothing skipped, the codec reads the length as
            // the frame's, head and all); the frame is the whole message.
            splitter: LengthDelimitedCodec::builder()
                .length_field_offset(0)
                .length_field_length(4)
                .length_adjustment(0)
                .num_skip(0)
                .big_endian()
                .max_frame_length(MAX_MESSAGE)
                .new_codec(),
            pending: BytesMut::new(),
            behind: 0,
            broken: false,
            recent: VecDeque::with_capacity(KEPT),
        }
    }
}

impl EventScanner {
    pub fn observe(&mut self, data: &[u8]) {
        if self.broken {
            return;
        }
        self.pending.extend_from_slice(data);
        loop {
            match self.splitter.decode(&mut self.pending) {
                Ok(Some(message)) if message.len() < MIN_MESSAGE => {
                    self.stop();
                    return;
                }
                Ok(Some(message)) => {
                    self.behind += message.len();
                    self.keep(&message);
                }
                Ok(None) => break,
                Err(_) => {
                    self.stop();
                    return;
                }
            }
        }
        // Moving what is left to the front of the allocation (nothing to
        // move, when the frame ended with a message) lets the buffer be
        // reused for the next frame with nothing behind: bytes does so
        // without allocating whenever that front is at least as long.
        let reuse = self.pending.capacity() - self.pending.len() + 1;
        if self.behind > 0 && self.pending.try_reclaim(reuse) {
            self.behind = 0;
        }
        // Else, once the bytes behind outweigh the unfinished message, a
        // fresh buffer with only that message costs less than the old one.
        if self.behind > SPARE && self.behind >= self.pending.len() {
            self.pending = BytesMut::from(&self.pending[..]);
            self.behind = 0;
        }
    }

    /// Bytes this scanner holds, its buffers' spare room included.
    pub fn held(&self) -> usize {
        self.pending.capacity() + self.behind + self.recent.iter().map(Vec::capacity).sum::<usize>()
    }

    fn keep(&mut self, message: &[u8]) {
        let mut slot = match self.recent.len() {
            KEPT => self.recent.pop_front().unwrap_or_default(),
            _ => Vec::new(),
        };
        if slot.capacity() > message.len() + SPARE {
            slot = Vec::new();
        }
        slot.clear();
        slot.extend_from_slice(message);
        self.recent.push_back(slot);
    }

    /// Decodes the kept messages, oldest first, up to the first that does
    /// not decode: the newest `metadata` usage wins, else the newest
    /// `chunk`'s. Messages before them are never decoded, so one of those
    /// that would not decode no longer hides the usage after it: Bedrock
    /// billed those tokens, and the client got the answer.
    pub fn finish(self) -> Ending {
        let mut found = Found::default();
        for raw in &self.recent {
            let Ok(message) = read_message_from(raw.as_slice()) else {
                break;
            };
            found.read(&message);
        }
        let exception = found.exception;
        Ending {
            usage: found.usage(),
            exception,
            complete: false,
        }
    }

    fn stop(&mut self) {
        self.broken = true;
        self.pending = BytesMut::new();
        self.behind = 0;
    }
}

/// What the end of a stream said.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ending {
    pub usage: Option<Usage>,
    /// The exception Bedrock ended the stream with, as a label.
    pub exception: Option<&'static str>,
    /// The stream's own last event was seen (OpenAI's `data: [DONE]`): a
    /// client that leaves after it, before the proxy has read the body's
    /// end from Bedrock, left a whole answer, not one cut off.
    pub complete: bool,
}

/// The exceptions Bedrock's runtime ends a stream with (botocore's model
/// of ConverseStream and InvokeModelWithResponseStream), each its own
/// label value; any other name is `other`, so the label stays bounded.
pub const STREAM_EXCEPTIONS: [&str; 6] = [
    "throttlingException",
    "serviceUnavailableException",
    "modelStreamErrorException",
    "internalServerException",
    "validationException",
    "modelTimeoutException",
];

/// What decoded messages said, oldest first.
#[derive(Default)]
struct Found {
    usage: Option<Usage>,
    last_chunk: Option<Bytes>,
    exception: Option<&'static str>,
}

impl Found {
    fn read(&mut self, message: &Message) {
        if let Some(kind) = exception_type(message) {
            self.exception = Some(
                STREAM_EXCEPTIONS
                    .iter()
                    .find(|e| **e == kind)
                    .copied()
                    .unwrap_or("other"),
            );
            return;
        }
        match event_type(message) {
            // ConverseStream: {"usage": {...}, "metrics": {...}}
            Some("metadata") => {
                if let Some(u) = Envelope::usage(message.payload()) {
                    self.usage = Some(u);
                }
            }
            // InvokeModelWithResponseStream: {"bytes": base64(model JSON)}.
            Some("chunk") => self.last_chunk = Some(message.payload().clone()),
            _ => {}
        }
    }

    /// The newest `metadata` usage, else the newest `chunk`'s.
    fn usage(self) -> Option<Usage> {
        self.usage
            .or_else(|| self.last_chunk.and_then(|c| chunk_usage(&c)))
    }
}

fn event_type(message: &Message) -> Option<&str> {
    string_header(message, ":event-type")
}

/// The `:exception-type` of an exception message (an `error` message
/// has an `:error-code` instead: `other`).
fn exception_type(message: &Message) -> Option<&str> {
    match string_header(message, ":message-type")? {
        "exception" => Some(string_header(message, ":exception-type").unwrap_or("other")),
        "error" => Some("other"),
        _ => None,
    }
}

fn string_header<'m>(message: &'m Message, name: &str) -> Option<&'m str> {
    message
        .headers()
        .iter()
        .find(|h| h.name().as_str() == name)
        .and_then(|h| h.value().as_string().ok())
        .map(|s| s.as_str())
}

/// Usage in an InvokeModelWithResponseStream chunk's decoded bytes.
fn chunk_usage(payload: &[u8]) -> Option<Usage> {
    use base64::Engine;
    #[derive(Deserialize)]
    struct Chunk {
        bytes: String,
    }
    let chunk: Chunk = serde_json::from_slice(payload).ok()?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(chunk.bytes)
        .ok()?;
    Envelope::usage(&decoded)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use aws_smithy_eventstream::frame::{write_message_to, DecodedFrame, MessageFrameDecoder};
    use aws_smithy_types::event_stream::{Header, HeaderValue};
    use proptest::prelude::*;

    /// An event message as Bedrock frames it, by aws-smithy-eventstream
    /// (the usage tap's tests use it too).
    pub(in crate::proxy::usage) fn message(kind: &str, payload: &str) -> Vec<u8> {
        framed(
            &[(":message-type", "event"), (":event-type", kind)],
            payload,
        )
    }

    /// An exception message as Bedrock ends a stream with one after its 200.
    pub(in crate::proxy::usage) fn exception(kind: &str, payload: &str) -> Vec<u8> {
        framed(
            &[(":message-type", "exception"), (":exception-type", kind)],
            payload,
        )
    }

    /// A JSON message with `headers` (string-valued) before its content type.
    fn framed(headers: &[(&str, &str)], payload: &str) -> Vec<u8> {
        let msg = headers
            .iter()
            .chain(&[(":content-type", "application/json")])
            .fold(
                Message::new(Bytes::from(payload.to_owned())),
                |m, (name, value)| {
                    m.add_header(Header::new(
                        name.to_string(),
                        HeaderValue::String(value.to_string().into()),
                    ))
                },
            );
        let mut buf = Vec::new();
        write_message_to(&msg, &mut buf).unwrap();
        buf
    }

    /// What the scanner did before it kept only the last messages: decode
    /// every message as it arrives, with aws-smithy-eventstream's streaming
    /// decoder, and stop at the first that does not decode.
    fn every_message_decoded(pieces: &[&[u8]]) -> Option<Usage> {
        let mut decoder = MessageFrameDecoder::new();
        let mut pending = BytesMut::new();
        let mut found = Found::default();
        'feed: for piece in pieces {
            pending.extend_from_slice(piece);
            loop {
                match decoder.decode_frame(&mut pending) {
                    Ok(DecodedFrame::Complete(m)) => found.read(&m),
                    Ok(DecodedFrame::Incomplete) => break,
                    Err(_) => break 'feed,
                }
            }
        }
        found.usage()
    }

    fn scanned(pieces: &[&[u8]]) -> Option<Usage> {
        let mut scanner = EventScanner::default();
        for piece in pieces {
            scanner.observe(piece);
        }
        scanner.finish().usage
    }

    fn chunk(inner: &str) -> String {
        use base64::Engine;
        format!(
            r#"{{"bytes":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(inner)
        )
    }

    /// One message of the kinds Bedrock sends, usage-bearing or not.
    fn any_message() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            body_message(),
            Just(message("messageStop", r#"{"stopReason":"end_turn"}"#)),
            (0u32..5000, 0u32..5000).prop_map(|(i, o)| message(
                "metadata",
                &format!(r#"{{"usage":{{"inputTokens":{i},"outputTokens":{o}}},"metrics":{{"latencyMs":1}}}}"#)
            )),
            Just(message("metadata", r#"{"metrics":{"latencyMs":1}}"#)),
            (0u32..5000, 0u32..5000).prop_map(|(i, o)| message(
                "chunk",
                &chunk(&format!(
                    r#"{{"type":"message_stop","amazon-bedrock-invocationMetrics":{{"inputTokenCount":{i},"outputTokenCount":{o}}}}}"#
                ))
            )),
            Just(message("chunk", &chunk(r#"{"type":"content_block_delta"}"#))),
        ]
    }

    /// Messages that carry no usage: what a stream holds before its end.
    fn body_message() -> impl Strategy<Value = Vec<u8>> {
        "[a-z ]{0,40}".prop_map(|t| {
            message(
                "contentBlockDelta",
                &format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"{t}"}}}}"#),
            )
        })
    }

    /// Flips a payload or CRC byte: the length prefix stays, so the message
    /// is still split where it ends.
    fn corrupt(message: &mut [u8], at: prop::sample::Index) {
        let at = 12 + at.index(message.len() - 12);
        message[at] ^= 0x5a;
    }

    /// A metadata event with usage 3 in, 4 out.
    fn metadata_3_4() -> Vec<u8> {
        message(
            "metadata",
            r#"{"usage":{"inputTokens":3,"outputTokens":4}}"#,
        )
    }

    /// `bytes` cut where `cuts` say (each a fraction of the length, in
    /// 65,535ths), as a response's frames might arrive.
    pub(in crate::proxy::usage) fn split<'a>(bytes: &'a [u8], cuts: &[u16]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts
            .iter()
            .map(|c| bytes.len() * usize::from(*c) / usize::from(u16::MAX))
            .collect();
        at.push(0);
        at.push(bytes.len());
        at.sort_unstable();
        at.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        // Usage where Bedrock puts it, at the end: the same answer as
        // decoding every message, however the bytes are cut.
        #[test]
        fn finds_what_decoding_every_message_finds(
            body in prop::collection::vec(body_message(), 0..40),
            tail in prop::collection::vec(any_message(), 0..=KEPT),
            cuts in prop::collection::vec(any::<u16>(), 0..12),
        ) {
            let stream: Vec<u8> = body.into_iter().chain(tail).flatten().collect();
            let pieces = split(&stream, &cuts);
            prop_assert_eq!(scanned(&pieces), every_message_decoded(&pieces));
        }

        // A message that does not decode ends the reading, before and now.
        #[test]
        fn a_corrupt_message_near_the_end_stops_the_reading(
            tail in prop::collection::vec(any_message(), 1..=KEPT),
            bad in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            cuts in prop::collection::vec(any::<u16>(), 0..6),
        ) {
            let mut tail = tail;
            let victim = bad.index(tail.len());
            corrupt(&mut tail[victim], flip);
            let stream: Vec<u8> = tail.into_iter().flatten().collect();
            let pieces = split(&stream, &cuts);
            prop_assert_eq!(scanned(&pieces), every_message_decoded(&pieces));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        // Whatever Bedrock (or something in its place) sends, the scanner
        // returns, and where the bytes are cut does not change its answer;
        // valid messages mixed with raw bytes.
        #[test]
        fn any_bytes_end_the_scan_with_one_answer(
            parts in prop::collection::vec(prop_oneof![
                any_message(),
                prop::collection::vec(any::<u8>(), 0..24),
                prop::collection::vec(Just(0u8), 4..8),
            ], 0..8),
            cuts in prop::collection::vec(any::<u16>(), 0..8),
        ) {
            let stream: Vec<u8> = parts.into_iter().flatten().collect();
            prop_assert_eq!(scanned(&split(&stream, &cuts)), scanned(&[&stream]));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        // Before the last messages nothing is decoded, so what is there,
        // corrupt or not, does not change the answer: it is the tail's.
        #[test]
        fn what_comes_before_the_last_messages_does_not_count(
            body in prop::collection::vec((any_message(), any::<Option<prop::sample::Index>>()), 0..20),
            tail in prop::collection::vec(any_message(), KEPT..=KEPT),
            cuts in prop::collection::vec(any::<u16>(), 0..12),
        ) {
            let body: Vec<u8> = body
                .into_iter()
                .flat_map(|(mut m, corrupt_at)| {
                    if let Some(at) = corrupt_at {
                        corrupt(&mut m, at);
                    }
                    m
                })
                .collect();
            let tail: Vec<u8> = tail.into_iter().flatten().collect();
            let stream: Vec<u8> = body.iter().chain(&tail).copied().collect();
            prop_assert_eq!(
                scanned(&split(&stream, &cuts)),
                every_message_decoded(&[&tail])
            );
        }
    }

    #[test]
    fn usage_two_messages_from_the_end_is_read() {
        // KEPT is three: the margin past the last message holds.
        let mut stream = metadata_3_4();
        stream.extend(message("messageStop", "{}"));
        stream.extend(message("messageStop", "{}"));
        assert_eq!(scanned(&[&stream]).and_then(|u| u.output), Some(4));
    }

    #[test]
    fn usage_before_the_last_messages_is_not_looked_for() {
        // The trade: a metadata event followed by more than KEPT others
        // (Bedrock sends it last) is not read.
        let mut stream = metadata_3_4();
        for _ in 0..KEPT {
            stream.extend(message("messageStop", "{}"));
        }
        assert_eq!(scanned(&[&stream]), None);
        assert!(every_message_decoded(&[&stream]).is_some());
    }

    #[test]
    fn lengths_too_short_for_a_message_stop_the_reading() {
        // A length of 0 would be a frame of nothing, taken forever from
        // the same place; 4 to 15 cannot hold a prelude and its CRC.
        for declared in [0u32, 1, 3, 4, 15] {
            let mut stream = metadata_3_4();
            stream.extend(declared.to_be_bytes());
            stream.extend([0u8; 40]);
            let mut scanner = EventScanner::default();
            scanner.observe(&stream);
            assert!(scanner.broken, "{declared}");
            assert_eq!(
                scanner.finish().usage.and_then(|u| u.input),
                Some(3),
                "{declared}"
            );
        }
    }

    #[test]
    fn a_declared_length_past_the_limit_stops_the_reading() {
        let mut stream = metadata_3_4();
        stream.extend(((MAX_MESSAGE + 1) as u32).to_be_bytes());
        stream.extend([0u8; 64]);
        let mut scanner = EventScanner::default();
        scanner.observe(&stream);
        assert!(scanner.broken);
        assert!(scanner.pending.is_empty());
        // What was complete before it still counts.
        assert_eq!(scanner.finish().usage.and_then(|u| u.input), Some(3));
    }

    /// A content event of about `n` bytes.
    fn large(n: usize) -> Vec<u8> {
        message(
            "contentBlockDelta",
            &format!(
                r#"{{"contentBlockIndex":0,"delta":{{"text":"{}"}}}}"#,
                "x".repeat(n)
            ),
        )
    }

    #[test]
    fn what_a_stream_holds_does_not_grow_with_its_length() {
        // 200 messages of 100 KB in 16 KiB frames: the bytes split off the
        // buffer's front are counted until the buffer is replaced, and old
        // copies are reused, so neither piles up.
        let one = large(100_000);
        let mut stream: Vec<u8> = std::iter::repeat_n(&one, 200).flatten().copied().collect();
        stream.extend(metadata_3_4());
        let mut scanner = EventScanner::default();
        let mut most = 0;
        for frame in stream.chunks(16 * 1024) {
            scanner.observe(frame);
            most = most.max(scanner.held());
        }
        // The unfinished message's buffer (grown by doubling), what lies
        // behind it, and three copies.
        assert!(most <= 7 * one.len(), "held {most} bytes");
        assert_eq!(scanner.finish().usage.and_then(|u| u.output), Some(4));
    }

    #[test]
    fn a_large_message_leaves_no_large_buffer_behind() {
        // What a stream holds falls back once ordinary events follow a
        // large one, so it does not keep the taps' shared room.
        let mut scanner = EventScanner::default();
        for frame in large(200_000).chunks(16 * 1024) {
            scanner.observe(frame);
        }
        assert!(scanner.held() >= 200_000);
        for _ in 0..KEPT {
            scanner.observe(&message("messageStop", "{}"));
        }
        assert!(scanner.held() <= 2 * SPARE, "held {}", scanner.held());
        scanner.observe(&metadata_3_4());
        assert_eq!(scanner.finish().usage.and_then(|u| u.input), Some(3));
    }

    #[test]
    fn an_ordinary_stream_holds_a_few_kib() {
        // Bedrock's events, a few hundred bytes each, one to a frame or
        // many to an HTTP/2 frame of 16 KiB.
        let events: Vec<Vec<u8>> = (0..1_000)
            .map(|i| {
                message(
                    "contentBlockDelta",
                    &format!(r#"{{"delta":{{"text":"{i:0>200}"}}}}"#),
                )
            })
            .collect();
        let mut one_a_frame = EventScanner::default();
        let mut most = 0;
        for e in &events {
            one_a_frame.observe(e);
            most = most.max(one_a_frame.held());
        }
        assert!(most <= 2 * SPARE, "one to a frame: held {most} bytes");
        let all: Vec<u8> = events.concat();
        let mut packed = EventScanner::default();
        let mut most = 0;
        for frame in all.chunks(16 * 1024) {
            packed.observe(frame);
            most = most.max(packed.held());
        }
        assert!(
            most <= 2 * 16 * 1024 + 2 * SPARE,
            "packed: held {most} bytes"
        );
    }
}
