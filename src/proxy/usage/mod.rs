//! Token usage, read from responses as they stream past.
//!
//! The tap ([`tap`]) sees each frame after it has been handed on (it never
//! delays the stream) and keeps as little as it can: a partial line of an
//! SSE stream ([`sse`]), the last few event-stream messages, decoded when
//! the stream ends ([`eventstream`]), and of a plain JSON body its first
//! frame as a handle and the rest copied (past 256 KiB, only its end),
//! parsed at the end. What all taps hold together is drawn from one
//! budget ([`room`]); a compressed body is decoded for the tap only
//! ([`decode`]). Usage is found in any of the shapes Bedrock answers with
//! ([`json`]); the model label comes from the request.

pub(super) mod decode;
mod eventstream;
mod json;
mod room;
mod sse;
mod tap;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use http::header::CONTENT_ENCODING;
use http::HeaderMap;
use prometheus::{Histogram, HistogramVec, IntCounterVec};
use serde::Deserialize;

use super::classify::model_in_path;
use super::operation::Operation;
use super::response_body::StreamKind;
use crate::metrics::labels::{ModelCounters, ModelLabels, ModelRef};
use decode::{Coding, Inflater};
use json::Count;
pub use json::Usage;
use room::{TapBudget, TAP_BUDGET};
use tap::Parser;
pub use tap::UsageTap;

/// The `model` field of an OpenAI-style request body (borrowed unless it
/// has escapes).
#[derive(Debug, Deserialize)]
struct ModelField<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
}

/// Bedrock's usage headers are `x-amzn-bedrock-{input,output}-token-count`
/// and `x-amzn-bedrock-cache-{read,write}-input-token-count`.
const USAGE_HEADER_PREFIX: &str = "x-amzn-bedrock-";

/// The usage metrics and the label policy, shared by all requests.
#[derive(Debug)]
pub struct UsageRecorder {
    /// Time to first token, one histogram per [`Operation`] (by index),
    /// resolved once.
    time_to_first_token: Vec<Histogram>,
    /// Streams Bedrock ended with an exception after its 200, by
    /// operation and exception.
    stream_errors: IntCounterVec,
    /// Answers whose tokens were not counted, by operation and why.
    without_usage: IntCounterVec,
    pub models: ModelLabels,
    /// What all taps may hold at once.
    budget: TapBudget,
}

/// More tokens than any answer has: the largest context windows hold a
/// few million.
const MAX_TOKENS: u64 = 1 << 32;

impl UsageRecorder {
    pub fn new(
        time_to_first_token: &HistogramVec,
        stream_errors: &IntCounterVec,
        without_usage: &IntCounterVec,
        models: ModelLabels,
    ) -> Self {
        Self {
            time_to_first_token: Operation::ALL
                .iter()
                .map(|op| time_to_first_token.with_label_values(&[op.as_str()]))
                .collect(),
            stream_errors: stream_errors.clone(),
            without_usage: without_usage.clone(),
            models,
            budget: TapBudget::new(TAP_BUDGET),
        }
    }

    /// What the taps hold, for the metrics to read.
    pub fn tap_budget(&self) -> TapBudget {
        self.budget.clone()
    }

    /// The same, its taps sharing `bytes` (tests).
    #[cfg(test)]
    fn with_tap_budget(mut self, bytes: usize) -> Self {
        self.budget = TapBudget::new(bytes);
        self
    }

    /// A stream ended with `exception` (a bounded label value).
    pub(super) fn stream_error(&self, operation: Operation, exception: &'static str) {
        self.stream_errors
            .with_label_values(&[operation.as_str(), exception])
            .inc();
    }

    /// An answer's tokens were not counted, for `why` (a bounded value).
    /// Not resolved in advance: one label lookup per such answer (never
    /// per chunk), and answers that carry usage pay nothing.
    pub(super) fn without_usage(&self, operation: Operation, why: &'static str) {
        self.without_usage
            .with_label_values(&[operation.as_str(), why])
            .inc();
    }

    pub(super) fn record(model: &ModelCounters, usage: Usage) {
        let usage = usage.counted();
        for count in Count::ALL {
            // A count no answer can have (a broken or hostile upstream)
            // would wrap the counter, which reads as a reset to `rate()`.
            if let Some(n) = usage.get(count).filter(|n| (1..=MAX_TOKENS).contains(n)) {
                model.tokens(count as usize).inc_by(n);
            }
        }
    }

    pub(super) fn first_token(&self, operation: Operation, started: Instant) {
        if let Some(h) = self.time_to_first_token.get(operation.index()) {
            h.observe(started.elapsed().as_secs_f64());
        }
    }

    /// The model a request is for: the `/model/{id}/` path segment, or the
    /// `model` field of an OpenAI-style body. A label only once the request
    /// succeeds ([`Self::tap`]).
    pub fn model(&self, path: &str, body: &[u8]) -> ModelRef {
        if let Some(id) = model_in_path(path) {
            // Most ids need no decoding; skip the byte-wise decoder then.
            if !id.as_bytes().contains(&b'%') {
                return self.models.lookup(id);
            }
            let decoded = percent_encoding::percent_decode_str(id).decode_utf8_lossy();
            return self.models.lookup(&decoded);
        }
        match serde_json::from_slice::<ModelField<'_>>(body) {
            Ok(ModelField { model: Some(m) }) => self.models.lookup(&m),
            _ => self.models.lookup("unknown"),
        }
    }

    /// Usage that Bedrock reports in headers (InvokeModel), and whether
    /// the body has a `content-encoding`. One walk over the (few) response
    /// headers instead of five hashed lookups of names that most answers
    /// do not carry; as with `HeaderMap::get`, the first value of a name is
    /// the one read.
    fn from_headers(headers: &HeaderMap) -> (Option<Usage>, bool) {
        let mut usage = Usage::default();
        let mut seen = [false; 4];
        let mut encoded = false;
        for (name, value) in headers {
            if name == CONTENT_ENCODING {
                encoded = true;
                continue;
            }
            let Some(rest) = name.as_str().strip_prefix(USAGE_HEADER_PREFIX) else {
                continue;
            };
            let count = match rest {
                "input-token-count" => Count::Input,
                "output-token-count" => Count::Output,
                "cache-read-input-token-count" => Count::CacheRead,
                "cache-write-input-token-count" => Count::CacheWrite,
                _ => continue,
            };
            if !std::mem::replace(&mut seen[count as usize], true) {
                *usage.slot(count) = value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
            }
        }
        ((usage != Usage::default()).then_some(usage), encoded)
    }

    /// Starts watching one successful response, whose model now counts.
    /// A body with nothing to learn from (usage already in the headers) or
    /// nothing the tap can read (a `content-encoding` other than gzip or
    /// deflate) is still watched for how it ends: a connection that broke
    /// before its end is an error whatever the headers said.
    pub fn tap(
        self: &Arc<Self>,
        model: ModelRef,
        operation: Operation,
        headers: &HeaderMap,
        kind: StreamKind,
        started: Instant,
    ) -> UsageTap {
        let model = self.models.resolve(model);
        let (usage, encoded) = Self::from_headers(headers);
        let coding = if let Some(usage) = usage {
            Self::record(&model, usage);
            None
        } else if encoded {
            let coding = Coding::of(headers);
            if coding.is_none() {
                tracing::debug!(
                    operation = operation.as_str(),
                    "no token usage: a content-encoding the proxy cannot read"
                );
            }
            coding
        } else {
            Some(Coding::Identity)
        };
        let (parser, inflater) = match coding {
            Some(coding) => (Parser::for_kind(kind), Inflater::new(coding)),
            None if usage.is_some() => (Parser::Counted, None),
            None => (Parser::Unreadable, None),
        };
        let mut tap = UsageTap {
            recorder: self.clone(),
            model,
            first_chunk: parser.is_stream().then_some((operation, started)),
            operation,
            cut: None,
            client_left: false,
            parser,
            inflater,
            share: self.budget.share(),
        };
        // A decoder is counted from the start: 512 compressed answers
        // opening at once hold 24 MiB before their first frames.
        tap.fit();
        tap
    }
}

/// Usage taps outside the proxy: for `cargo bench` (the cost of reading
/// usage) and for the test that holds what a tap says it holds to what it
/// really allocates (tests/usage_tap_memory.rs), not for the proxy.
#[doc(hidden)]
pub struct TapBench {
    recorder: Arc<UsageRecorder>,
    tokens: IntCounterVec,
}

impl TapBench {
    pub fn new() -> Option<Self> {
        let counter = |name: &str, labels: &[&str]| {
            IntCounterVec::new(prometheus::Opts::new(name, "bench"), labels).ok()
        };
        let tokens = counter("bench_tokens", &["model", "direction"])?;
        let errors = counter("bench_stream_errors", &["operation", "type"])?;
        let without = counter("bench_without_usage", &["operation", "reason"])?;
        let ttft = HistogramVec::new(
            prometheus::HistogramOpts::new("bench_ttft", "bench"),
            &["operation"],
        )
        .ok()?;
        let models = ModelLabels::new(&crate::proxy::UsageLabels::FirstSeen(1), &tokens)?;
        let recorder = Arc::new(UsageRecorder::new(&ttft, &errors, &without, models));
        Some(Self { recorder, tokens })
    }

    /// A tap on an answer with `headers`, as the proxy opens one.
    pub fn open(&self, headers: &HeaderMap) -> UsageTap {
        let model = self.recorder.models.lookup("m");
        let kind = StreamKind::of(headers);
        self.recorder
            .tap(model, Operation::Other, headers, kind, Instant::now())
    }

    /// The (input, output) tokens counted so far.
    pub fn tokens(&self) -> (u64, u64) {
        let count = |d: &str| self.tokens.with_label_values(&["m", d]).get();
        (count("input"), count("output"))
    }
}

/// Runs one response body through a fresh tap, as the proxy would, and
/// returns the (input, output) tokens it counted (for `cargo bench`).
#[doc(hidden)]
pub fn bench_tap(headers: &HeaderMap, frames: &[bytes::Bytes]) -> (u64, u64) {
    let Some(bench) = TapBench::new() else {
        return (0, 0);
    };
    let mut tap = bench.open(headers);
    for frame in frames {
        tap.observe(frame);
    }
    tap.finish();
    bench.tokens()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::UsageLabels;
    use bytes::{Bytes, BytesMut};
    use prometheus::{HistogramOpts, IntCounterVec, Opts};

    struct Recorder {
        r: Arc<UsageRecorder>,
        tokens: IntCounterVec,
        ttft: HistogramVec,
        stream_errors: IntCounterVec,
        without_usage: IntCounterVec,
    }

    impl std::ops::Deref for Recorder {
        type Target = Arc<UsageRecorder>;
        fn deref(&self) -> &Self::Target {
            &self.r
        }
    }

    fn recorder() -> Recorder {
        recorder_sharing(TAP_BUDGET)
    }

    /// A recorder whose taps share `budget` bytes.
    fn recorder_sharing(budget: usize) -> Recorder {
        let tokens = IntCounterVec::new(Opts::new("t", "t"), &["model", "direction"]).unwrap();
        let ttft = HistogramVec::new(HistogramOpts::new("h", "h"), &["operation"]).unwrap();
        let stream_errors =
            IntCounterVec::new(Opts::new("e", "e"), &["operation", "type"]).unwrap();
        let without_usage =
            IntCounterVec::new(Opts::new("w", "w"), &["operation", "reason"]).unwrap();
        let models = ModelLabels::new(&UsageLabels::FirstSeen(2), &tokens).unwrap();
        Recorder {
            r: Arc::new(
                UsageRecorder::new(&ttft, &stream_errors, &without_usage, models)
                    .with_tap_budget(budget),
            ),
            tokens,
            ttft,
            stream_errors,
            without_usage,
        }
    }

    /// Answers without usage, by operation and reason, as exported.
    fn without_usage(r: &Recorder, operation: &str, reason: &str) -> u64 {
        r.without_usage
            .with_label_values(&[operation, reason])
            .get()
    }

    /// Every answer without usage, whatever its labels.
    fn all_without_usage(r: &Recorder) -> u64 {
        use prometheus::core::Collector;
        r.without_usage
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    fn count(r: &Recorder, model: &str, direction: &str) -> u64 {
        r.tokens.with_label_values(&[model, direction]).get()
    }

    fn stream_errors(r: &Recorder, operation: &str, kind: &str) -> u64 {
        r.stream_errors.with_label_values(&[operation, kind]).get()
    }

    /// A tap on an answer for `model`, as the proxy opens one.
    fn open_tap(r: &Recorder, model: &str, operation: Operation, h: &HeaderMap) -> UsageTap {
        r.tap(
            known(r, model),
            operation,
            h,
            StreamKind::of(h),
            Instant::now(),
        )
    }

    fn known(r: &Recorder, model: &str) -> ModelRef {
        r.models.lookup(model)
    }

    fn label(r: &Recorder, path: &str, body: &[u8]) -> String {
        r.models.resolve(r.model(path, body)).label().to_owned()
    }

    fn headers(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("content-type", ct.parse().unwrap());
        h
    }

    fn event(kind: &str, payload: &str) -> Bytes {
        Bytes::from(eventstream::tests::message(kind, payload))
    }

    #[test]
    fn reads_usage_from_plain_json_split_over_frames() {
        let r = recorder();
        let body = br#"{"output":{},"usage":{"inputTokens":12,"outputTokens":34,"cacheReadInputTokens":5}}"#;
        let mut tap = open_tap(&r, "m", Operation::Converse, &headers("application/json"));
        tap.observe(&Bytes::copy_from_slice(&body[..20]));
        tap.observe(&Bytes::copy_from_slice(&body[20..]));
        tap.finish();
        assert_eq!(count(&r, "m", "input"), 12);
        assert_eq!(count(&r, "m", "output"), 34);
        assert_eq!(count(&r, "m", "cache_read"), 5);
        assert_eq!(all_without_usage(&r), 0);
    }

    #[test]
    fn an_answer_trickled_a_byte_at_a_time_pins_no_read_buffers() {
        // Each frame is a slice of the buffer hyper read it into: keeping a
        // handle per frame kept every buffer alive, about 4 KiB per byte of
        // a trickled body (one upstream answer took the sidecar from 31 to
        // 92 MiB).
        use std::sync::atomic::{AtomicUsize, Ordering};
        struct ReadBuffer(Vec<u8>, Arc<AtomicUsize>);
        impl AsRef<[u8]> for ReadBuffer {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl Drop for ReadBuffer {
            fn drop(&mut self) {
                self.1.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let live = Arc::new(AtomicUsize::new(0));
        let body = format!(
            r#"{{"output":{{"text":"{}"}},"usage":{{"inputTokens":12,"outputTokens":34}}}}"#,
            " ".repeat(2000)
        );
        let r = recorder();
        let mut tap = open_tap(&r, "m", Operation::Converse, &headers("application/json"));
        for byte in body.bytes() {
            let mut buffer = vec![0u8; 8192];
            buffer[0] = byte;
            live.fetch_add(1, Ordering::Relaxed);
            let frame = Bytes::from_owner(ReadBuffer(buffer, live.clone())).slice(0..1);
            tap.observe(&frame);
        }
        let pinned = live.load(Ordering::Relaxed);
        assert!(
            pinned <= 1,
            "{pinned} read buffers of 8 KiB kept for {} bytes",
            body.len()
        );
        tap.finish();
        assert_eq!(count(&r, "m", "input"), 12);
        assert_eq!(count(&r, "m", "output"), 34);
    }

    #[test]
    fn a_large_answer_is_not_kept_whole_and_its_usage_still_counts() {
        use std::io::Write;
        // A 4 MB answer (an image, say) with usage at its end, arriving in
        // 16 KB frames, plain and gzipped: the tap keeps its end only.
        let text = "x".repeat(4 * 1024 * 1024);
        let body = format!(
            r#"{{"output":{{"text":"{text}"}},"usage":{{"inputTokens":12,"outputTokens":34}}}}"#
        );
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(body.as_bytes()).unwrap();
        let gzipped = gz.finish().unwrap();
        for (encoding, bytes) in [(None, body.as_bytes().to_vec()), (Some("gzip"), gzipped)] {
            let r = recorder();
            let mut h = headers("application/json");
            if let Some(e) = encoding {
                h.insert(http::header::CONTENT_ENCODING, e.parse().unwrap());
            }
            let mut tap = open_tap(&r, "m", Operation::Converse, &h);
            let mut most = 0;
            for frame in bytes.chunks(16 * 1024) {
                tap.observe(&Bytes::copy_from_slice(frame));
                if let tap::Parser::Json(body) = &tap.parser {
                    most = most.max(body.held());
                }
            }
            assert!(
                most <= tap::WHOLE_JSON_BODY + 2 * tap::JSON_TAIL,
                "{encoding:?}: held {most} bytes"
            );
            tap.finish();
            assert_eq!(count(&r, "m", "input"), 12, "{encoding:?}");
            assert_eq!(count(&r, "m", "output"), 34, "{encoding:?}");
        }
    }

    #[test]
    fn counts_no_answer_can_have_are_not_added() {
        // Two answers claiming 2^63 tokens each wrapped the counter to 0,
        // which Prometheus reads as a restart.
        let r = recorder();
        let h = headers("application/json");
        for body in [
            r#"{"usage":{"inputTokens":12,"outputTokens":34}}"#,
            r#"{"usage":{"inputTokens":9223372036854775808,"outputTokens":9223372036854775808}}"#,
            r#"{"usage":{"inputTokens":9223372036854775808,"outputTokens":4294967297}}"#,
        ] {
            let mut tap = open_tap(&r, "m", Operation::Converse, &h);
            tap.observe(&Bytes::from_static(body.as_bytes()));
            tap.finish();
        }
        assert_eq!(count(&r, "m", "input"), 12);
        assert_eq!(count(&r, "m", "output"), 34);
    }

    #[test]
    fn a_body_repeating_the_usage_key_costs_a_bounded_copy_per_frame() {
        // A broken or hostile upstream writing `"usage"` every few bytes:
        // each key began a 2 KiB copy, ~256 bytes copied per byte read.
        // Only the last keys of a frame can outlive it.
        let filler = "x".repeat(tap::WHOLE_JSON_BODY);
        let keys = r#""usage":"#.repeat(128 * 1024);
        let body = format!(
            r#"{{"output":"{filler}","k":[{keys}0],"usage":{{"inputTokens":12,"outputTokens":34}}}}"#
        );
        let r = recorder();
        let h = headers("application/json");
        let mut tap = open_tap(&r, "m", Operation::Converse, &h);
        let frames = body.as_bytes().chunks(16 * 1024);
        let n = frames.len();
        let mut copied = 0;
        for frame in frames {
            tap.observe(&Bytes::copy_from_slice(frame));
            if let tap::Parser::Json(body) = &tap.parser {
                copied = body.copied();
            }
        }
        // Per frame: the snippets still filling plus the frame's last
        // keys, 2 KiB each at most.
        let bound = n * 2 * 16 * 2048;
        assert!(
            copied <= bound,
            "{copied} bytes copied for {} read (bound {bound})",
            body.len()
        );
        tap.finish();
        assert_eq!(count(&r, "m", "input"), 12);
        assert_eq!(count(&r, "m", "output"), 34);
    }

    #[test]
    fn a_long_answer_with_a_guardrail_trace_counts_its_usage() {
        // Converse writes metrics and the trace after usage, and the trace
        // copies the answer (`modelOutput`): 300 KB of it puts the usage
        // far from the end. The key falls across a frame boundary too.
        let text = "word ".repeat(60_000);
        let body = format!(
            r#"{{"output":{{"message":{{"content":[{{"text":"{text}"}}]}}}},"usage":{{"inputTokens":12,"outputTokens":34}},"metrics":{{"latencyMs":1}},"trace":{{"guardrail":{{"modelOutput":["{text}"],"outputAssessments":{{"g":[{{"invocationMetrics":{{"usage":{{"topicPolicyUnits":1}}}}}}]}}}}}}}}"#
        );
        let key = body.find(r#""usage":{"inputTokens""#).unwrap();
        let r = recorder();
        let h = headers("application/json");
        let mut tap = open_tap(&r, "m", Operation::Converse, &h);
        let (a, b) = body.as_bytes().split_at(key + 3);
        for frame in a.chunks(16 * 1024).chain(b.chunks(16 * 1024)) {
            tap.observe(&Bytes::copy_from_slice(frame));
        }
        tap.finish();
        assert_eq!(count(&r, "m", "input"), 12);
        assert_eq!(count(&r, "m", "output"), 34);
    }

    #[test]
    fn reads_openai_usage_from_the_last_sse_chunk_across_frame_boundaries() {
        let r = recorder();
        let stream = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        let mut tap = open_tap(
            &r,
            "gpt",
            Operation::ChatCompletions,
            &headers("text/event-stream"),
        );
        for piece in stream.as_bytes().chunks(9) {
            tap.observe(&Bytes::copy_from_slice(piece));
        }
        tap.finish();
        assert_eq!(count(&r, "gpt", "input"), 7);
        assert_eq!(count(&r, "gpt", "output"), 3);
        assert_eq!(
            r.ttft
                .with_label_values(&["chat_completions"])
                .get_sample_count(),
            1
        );
        assert_eq!(all_without_usage(&r), 0);
    }

    #[test]
    fn answers_whose_tokens_went_uncounted_are_counted_by_why() {
        // Without `stream_options.include_usage` an OpenAI-style stream
        // reports no usage: `tokens_total` misses it, and only this tells.
        let r = recorder();
        let sse = headers("text/event-stream");
        let no_usage = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
        let mut tap = open_tap(&r, "gpt", Operation::ChatCompletions, &sse);
        tap.observe(&Bytes::from_static(no_usage.as_bytes()));
        tap.finish();
        assert_eq!(without_usage(&r, "chat_completions", "not_reported"), 1);
        // The client may close as soon as it has read `[DONE]`, before
        // the proxy has read the body's end from Bedrock (a busy machine):
        // the answer was whole all the same.
        let mut tap = open_tap(&r, "gpt", Operation::ChatCompletions, &sse);
        tap.observe(&Bytes::from_static(no_usage.as_bytes()));
        tap.client_left();
        tap.finish();
        assert_eq!(without_usage(&r, "chat_completions", "not_reported"), 2);
        // One that did not reach its end: Bedrock's error, a break, a
        // client gone.
        let mut tap = open_tap(&r, "gpt", Operation::ChatCompletions, &sse);
        tap.observe(&Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{}}]}\n\ndata: {\"error\":{\"message\":\"x\"}}\n\n",
        ));
        tap.finish();
        let mut tap = open_tap(&r, "m", Operation::Converse, &headers("application/json"));
        tap.observe(&Bytes::from_static(b"{\"output\":"));
        tap.cut_off("upstream_broke_off");
        tap.finish();
        let mut tap = open_tap(&r, "gpt", Operation::ChatCompletions, &sse);
        tap.observe(&Bytes::from_static(b"data: {\"choices\":[]}\n\n"));
        tap.client_left();
        tap.finish();
        assert_eq!(without_usage(&r, "chat_completions", "cut_off"), 2);
        assert_eq!(without_usage(&r, "converse", "cut_off"), 1);
        // A stream cut off after its usage came counts that usage, and is
        // not an answer without usage.
        let mut tap = open_tap(&r, "gpt", Operation::ChatCompletions, &sse);
        tap.observe(&Bytes::from_static(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7}}\n\n",
        ));
        tap.client_left();
        tap.finish();
        assert_eq!(count(&r, "gpt", "input"), 7);
        assert_eq!(all_without_usage(&r), 5);
    }

    #[test]
    fn reads_converse_stream_metadata_and_invoke_stream_metrics() {
        let r = recorder();
        let mut all = BytesMut::new();
        all.extend_from_slice(&event("messageStart", r#"{"role":"assistant"}"#));
        all.extend_from_slice(&event(
            "metadata",
            r#"{"usage":{"inputTokens":9,"outputTokens":4,"totalTokens":13}}"#,
        ));
        let all = all.freeze();
        let mut tap = open_tap(
            &r,
            "c",
            Operation::ConverseStream,
            &headers("application/vnd.amazon.eventstream"),
        );
        for piece in all.chunks(7) {
            tap.observe(&Bytes::copy_from_slice(piece));
        }
        tap.finish();
        assert_eq!((count(&r, "c", "input"), count(&r, "c", "output")), (9, 4));

        use base64::Engine;
        let inner = r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":21,"outputTokenCount":8}}"#;
        let payload = format!(
            r#"{{"bytes":"{}"}}"#,
            base64::engine::general_purpose::STANDARD.encode(inner)
        );
        let mut tap = open_tap(
            &r,
            "i",
            Operation::InvokeStream,
            &headers("application/vnd.amazon.eventstream"),
        );
        tap.observe(&event("chunk", r#"{"bytes":"e30="}"#));
        tap.observe(&event("chunk", &payload));
        tap.finish();
        assert_eq!((count(&r, "i", "input"), count(&r, "i", "output")), (21, 8));
    }

    /// A ConverseStream event of about `n` bytes.
    fn large_event(n: usize) -> Bytes {
        event(
            "contentBlockDelta",
            &format!(
                r#"{{"contentBlockIndex":0,"delta":{{"text":"{}"}}}}"#,
                "x".repeat(n)
            ),
        )
    }

    #[test]
    fn taps_share_one_budget_and_an_answer_past_it_goes_uncounted() {
        // Four streams of 100 KB events, room for about two: what the taps
        // hold together stays within the budget; an answer that found none
        // left still ends, counted as over budget, and the room comes back
        // when the answers end.
        const BUDGET: usize = 1024 * 1024;
        let r = recorder_sharing(BUDGET);
        let es = headers("application/vnd.amazon.eventstream");
        let big = large_event(100_000);
        let mut taps: Vec<_> = (0..4)
            .map(|_| open_tap(&r, "c", Operation::ConverseStream, &es))
            .collect();
        for _ in 0..5 {
            for i in 0..taps.len() {
                for frame in big.chunks(16 * 1024) {
                    taps[i].observe(&Bytes::copy_from_slice(frame));
                    let held: usize = taps.iter().map(|t| t.parser.held()).sum();
                    assert!(held <= BUDGET, "the taps hold {held} bytes");
                }
            }
        }
        let metadata = event(
            "metadata",
            r#"{"usage":{"inputTokens":9,"outputTokens":4}}"#,
        );
        for tap in &mut taps {
            tap.observe(&metadata);
        }
        assert!(r.budget.held() > 0);
        for tap in taps {
            tap.finish();
        }
        let counted = count(&r, "c", "output") / 4;
        let over = without_usage(&r, "converse_stream", "over_budget");
        assert!(counted >= 1 && over >= 1, "{counted} counted, {over} over");
        assert_eq!(counted + over, 4);
        assert_eq!(all_without_usage(&r), over);
        assert_eq!(r.budget.held(), 0);
    }

    #[test]
    fn a_json_answer_past_the_budget_goes_uncounted_and_holds_nothing() {
        let r = recorder_sharing(64 * 1024);
        let json = headers("application/json");
        let body = format!(
            r#"{{"output":{{"text":"{}"}},"usage":{{"inputTokens":12,"outputTokens":34}}}}"#,
            "x".repeat(200_000)
        );
        let mut tap = open_tap(&r, "m", Operation::Converse, &json);
        let mut refused = None;
        for (i, frame) in body.as_bytes().chunks(16 * 1024).enumerate() {
            tap.observe(&Bytes::copy_from_slice(frame));
            if refused.is_none() && matches!(tap.parser, tap::Parser::NoRoom) {
                // Given back at once, not when a later frame comes.
                assert_eq!(r.budget.held(), 0, "frame {i}");
                refused = Some(i);
            }
        }
        // The first frame kept as it came and the next two copied fit in
        // 64 KiB; the fourth grows the copy's buffer to 64 KiB.
        assert_eq!(refused, Some(3));
        tap.finish();
        assert_eq!(count(&r, "m", "output"), 0);
        assert_eq!(without_usage(&r, "converse", "over_budget"), 1);
        // Cut off as well: that is what it is counted as.
        let mut tap = open_tap(&r, "m", Operation::Converse, &json);
        for frame in body.as_bytes()[..100_000].chunks(16 * 1024) {
            tap.observe(&Bytes::copy_from_slice(frame));
        }
        tap.cut_off("broken");
        tap.finish();
        assert_eq!(without_usage(&r, "converse", "cut_off"), 1);
        // Within the budget, the same answer counts as ever.
        let r = recorder_sharing(512 * 1024);
        let mut tap = open_tap(&r, "m", Operation::Converse, &json);
        for frame in body.as_bytes().chunks(16 * 1024) {
            tap.observe(&Bytes::copy_from_slice(frame));
        }
        tap.finish();
        assert_eq!(count(&r, "m", "output"), 34);
        assert_eq!((all_without_usage(&r), r.budget.held()), (0, 0));
    }

    #[test]
    fn a_compressed_answer_that_proves_corrupt_gives_its_room_back() {
        // Its decoder is counted from the start; once nothing more can be
        // read, it is let go, and the answer counts as unreadable.
        let r = recorder_sharing(TAP_BUDGET);
        let mut h = headers("application/json");
        h.insert(http::header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let mut tap = open_tap(&r, "m", Operation::Converse, &h);
        // At least its inflate state and window, about 47 KB.
        assert!(r.budget.held() >= 40 * 1024);
        tap.observe(&Bytes::from_static(b"this is not gzip at all"));
        assert_eq!((tap.held(), r.budget.held()), (0, 0));
        tap.finish();
        assert_eq!(without_usage(&r, "converse", "unreadable"), 1);
    }

    #[test]
    fn an_exception_ending_a_stream_is_counted_by_its_type() {
        // Bedrock reports throttling and model errors of a stream already
        // answered 200 as its last message: counted as a 200 and nothing
        // else, an alert on 429s or 5xx never saw streamed traffic.
        let r = recorder();
        let es = headers("application/vnd.amazon.eventstream");
        let mut tap = open_tap(&r, "c", Operation::ConverseStream, &es);
        tap.observe(&event("messageStart", r#"{"role":"assistant"}"#));
        tap.observe(&Bytes::from(eventstream::tests::exception(
            "throttlingException",
            r#"{"message":"Too many tokens"}"#,
        )));
        tap.finish();
        let errors = |op: &str, kind: &str| r.stream_errors.with_label_values(&[op, kind]).get();
        assert_eq!(errors("converse_stream", "throttlingException"), 1);
        // A name Bedrock may add later is `other`: the label stays bounded.
        let mut tap = open_tap(&r, "i", Operation::InvokeStream, &es);
        tap.observe(&Bytes::from(eventstream::tests::exception(
            "brandNewException",
            "{}",
        )));
        tap.finish();
        assert_eq!(errors("invoke_stream", "other"), 1);
        // A stream that ends well counts none.
        let mut tap = open_tap(&r, "c", Operation::ConverseStream, &es);
        tap.observe(&event("metadata", r#"{"usage":{"inputTokens":1}}"#));
        tap.finish();
        let all: u64 = ["throttlingException", "other"]
            .iter()
            .map(|k| errors("converse_stream", k))
            .sum();
        assert_eq!(all, 1);
        // The proxy's own cut counts under its reason, unless Bedrock said
        // why the stream ends.
        let mut tap = open_tap(&r, "c", Operation::ConverseStream, &es);
        tap.observe(&event("messageStart", r#"{"role":"assistant"}"#));
        tap.cut_off("upstream_idle_timeout");
        tap.finish();
        assert_eq!(errors("converse_stream", "upstream_idle_timeout"), 1);
        let mut tap = open_tap(&r, "c", Operation::ConverseStream, &es);
        tap.observe(&Bytes::from(eventstream::tests::exception(
            "modelStreamErrorException",
            "{}",
        )));
        tap.cut_off("upstream_broke_off");
        tap.finish();
        assert_eq!(errors("converse_stream", "modelStreamErrorException"), 1);
        assert_eq!(errors("converse_stream", "upstream_broke_off"), 0);
        // A compressed body that will not decode still says how it ended.
        let mut gz = es.clone();
        gz.insert("content-encoding", "gzip".parse().unwrap());
        let mut tap = open_tap(&r, "c", Operation::ConverseStream, &gz);
        tap.observe(&Bytes::from_static(b"not gzip at all"));
        tap.cut_off("upstream_broke_off");
        tap.finish();
        assert_eq!(errors("converse_stream", "upstream_broke_off"), 1);
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        decode::compress(Coding::Gzip, data)
    }

    #[test]
    fn reads_usage_from_gzip_bodies_frame_by_frame() {
        let r = recorder();
        let json = gzip(br#"{"output":{},"usage":{"inputTokens":12,"outputTokens":34}}"#);
        let sse = gzip(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n\
              data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n",
        );
        for (model, ct, body) in [
            ("j", "application/json", json),
            ("s", "text/event-stream", sse),
        ] {
            let mut h = headers(ct);
            h.insert("content-encoding", "gzip".parse().unwrap());
            let mut tap = open_tap(&r, model, Operation::Converse, &h);
            for piece in body.chunks(5) {
                tap.observe(&Bytes::copy_from_slice(piece));
            }
            tap.finish();
        }
        assert_eq!(
            (count(&r, "j", "input"), count(&r, "j", "output")),
            (12, 34)
        );
        assert_eq!((count(&r, "s", "input"), count(&r, "s", "output")), (7, 3));
    }

    #[test]
    fn gzipped_streams_of_as_many_clients_as_the_proxy_takes_are_all_counted() {
        // An HTTP/1.1 client holds a connection for each stream, and the
        // proxy takes 256 (--max-connections): that many gzipped chat
        // streams at once fit the shipped budget together.
        let r = recorder();
        let mut h = headers("text/event-stream");
        h.insert("content-encoding", "gzip".parse().unwrap());
        let mut text = Vec::new();
        for i in 0..400 {
            text.extend(
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"token {i}\"}}}}]}}\n\n")
                    .bytes(),
            );
        }
        text.extend(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n",
        );
        let body = gzip(&text);
        let mut taps: Vec<_> = (0..256)
            .map(|_| open_tap(&r, "s", Operation::ConverseStream, &h))
            .collect();
        for frame in body.chunks(200) {
            for tap in &mut taps {
                tap.observe(&Bytes::copy_from_slice(frame));
            }
        }
        let held = r.budget.held();
        for tap in taps {
            tap.finish();
        }
        assert_eq!(all_without_usage(&r), 0, "{held} bytes held at the end");
        assert_eq!(count(&r, "s", "output"), 256 * 3);
    }

    #[test]
    fn unreadable_or_corrupt_encodings_give_no_usage_and_never_panic() {
        let r = recorder();
        let mut h = headers("application/json");
        h.insert("content-encoding", "br".parse().unwrap());
        let mut tap = open_tap(&r, "b", Operation::Converse, &h);
        tap.observe(&Bytes::from_static(br#"{"usage":{"inputTokens":5}}"#));
        tap.finish();
        assert_eq!(count(&r, "b", "input"), 0);
        // Unread, but how it ended still counts.
        let mut tap = open_tap(&r, "b", Operation::Converse, &h);
        tap.cut_off("upstream_broke_off");
        tap.finish();
        assert_eq!(stream_errors(&r, "converse", "upstream_broke_off"), 1);
        h.insert("content-encoding", "gzip".parse().unwrap());
        let mut tap = open_tap(&r, "c", Operation::Converse, &h);
        // Plain JSON labelled gzip: undecodable, so nothing is counted.
        tap.observe(&Bytes::from_static(br#"{"usage":{"inputTokens":5}}"#));
        tap.observe(&Bytes::from_static(b"more"));
        tap.finish();
        assert_eq!(count(&r, "c", "input"), 0);
        assert_eq!(without_usage(&r, "converse", "unreadable"), 3);
        assert_eq!(all_without_usage(&r), 3);
    }

    #[test]
    fn invoke_usage_comes_from_headers() {
        let r = recorder();
        let mut h = headers("application/json");
        h.insert("x-amzn-bedrock-input-token-count", "11".parse().unwrap());
        h.insert("x-amzn-bedrock-output-token-count", "22".parse().unwrap());
        let mut tap = open_tap(&r, "x", Operation::Invoke, &h);
        assert_eq!(
            (count(&r, "x", "input"), count(&r, "x", "output")),
            (11, 22)
        );
        // The body's own usage is not counted a second time.
        tap.observe(&Bytes::from_static(
            br#"{"usage":{"input_tokens":11,"output_tokens":22}}"#,
        ));
        tap.finish();
        assert_eq!(count(&r, "x", "input"), 11);
        assert_eq!(stream_errors(&r, "invoke", "upstream_broke_off"), 0);
        // A body that broke off is an error, usage in the headers or not.
        let mut tap = open_tap(&r, "x", Operation::Invoke, &h);
        tap.cut_off("upstream_broke_off");
        tap.finish();
        assert_eq!(stream_errors(&r, "invoke", "upstream_broke_off"), 1);
        assert_eq!(count(&r, "x", "input"), 22);
        // Its tokens were counted from the headers.
        assert_eq!(all_without_usage(&r), 0);
    }

    #[test]
    fn model_labels_are_bounded_and_taken_on_success() {
        let r = recorder();
        assert_eq!(
            label(
                &r,
                "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
                b""
            ),
            "anthropic.claude-3-haiku-20240307-v1:0"
        );
        // Requested but never answered with success: no slot.
        assert!(matches!(
            r.model("/openai/v1/chat/completions", br#"{"model":"typo"}"#),
            ModelRef::Pending(_)
        ));
        assert_eq!(
            label(&r, "/openai/v1/chat/completions", br#"{"model":"gpt-oss"}"#),
            "gpt-oss"
        );
        assert_eq!(
            label(&r, "/openai/v1/chat/completions", br#"{"model":"third"}"#),
            "other"
        );
        assert_eq!(
            label(&r, "/openai/v1/chat/completions", br#"{"model":"gpt-oss"}"#),
            "gpt-oss"
        );
        let tokens = IntCounterVec::new(Opts::new("t", "t"), &["model", "direction"]).unwrap();
        let allow = ModelLabels::new(&UsageLabels::AllowList(vec!["a".into()]), &tokens).unwrap();
        assert_eq!(allow.resolve(allow.lookup("a")).label(), "a");
        assert_eq!(allow.resolve(allow.lookup("b")).label(), "other");
    }

    #[test]
    fn model_ids_with_and_without_escapes_get_the_same_label() {
        let r = recorder();
        let plain = label(&r, "/model/amazon.nova-lite-v1:0/converse", b"");
        assert_eq!(plain, "amazon.nova-lite-v1:0");
        let escaped = label(&r, "/model/amazon.nova-lite-v1%3A0/converse", b"");
        assert_eq!(escaped, plain);
    }

    mod properties {
        use super::*;
        use http::HeaderName;
        use proptest::prelude::*;

        /// The plain reading the one-walk version replaced: a lookup per
        /// header name.
        fn usage_by_lookup(headers: &HeaderMap) -> Option<Usage> {
            let get = |name: &str| {
                headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let usage = Usage {
                input: get("x-amzn-bedrock-input-token-count"),
                output: get("x-amzn-bedrock-output-token-count"),
                cache_read: get("x-amzn-bedrock-cache-read-input-token-count"),
                cache_write: get("x-amzn-bedrock-cache-write-input-token-count"),
                cached_in_input: None,
            };
            (usage != Usage::default()).then_some(usage)
        }

        fn header_name() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "x-amzn-bedrock-input-token-count",
                "x-amzn-bedrock-output-token-count",
                "x-amzn-bedrock-cache-read-input-token-count",
                "x-amzn-bedrock-cache-write-input-token-count",
                "x-amzn-bedrock-invocation-latency",
                "x-amzn-bedrock-input-token-count-extra",
                "x-amzn-bedrock-",
                "x-amzn-requestid",
                "content-type",
                "content-encoding",
            ])
        }

        fn header_value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                Just("0".to_owned()),
                Just(" 7".to_owned()),
                Just("18446744073709551616".to_owned()),
                "[0-9a-z -]{0,6}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn header_usage_matches_a_lookup_per_name(
                pairs in prop::collection::vec((header_name(), header_value()), 0..8)
            ) {
                let mut h = HeaderMap::new();
                for (name, value) in &pairs {
                    h.append(HeaderName::from_static(name), value.parse().unwrap());
                }
                let (usage, encoded) = UsageRecorder::from_headers(&h);
                prop_assert_eq!(usage, usage_by_lookup(&h));
                prop_assert_eq!(encoded, h.contains_key(CONTENT_ENCODING));
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let r = recorder();
        for ct in [
            "application/json",
            "text/event-stream",
            "application/vnd.amazon.eventstream",
        ] {
            let mut tap = open_tap(&r, "g", Operation::Other, &headers(ct));
            tap.observe(&Bytes::from_static(
                b"\x00\x00\x00\x20garbage\n\ndata: {\"usage\": 5}\n",
            ));
            tap.observe(&Bytes::from_static(&[0xff; 64]));
            tap.finish();
        }
    }
}
