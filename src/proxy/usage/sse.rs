//! Usage in a `text/event-stream` response (the OpenAI-compatible and
//! Anthropic Messages APIs): OpenAI sends it in the last chunk; Anthropic
//! the input tokens in `message_start` and the output in `message_delta`.
//! So each `data:` line carrying a `"usage"` key updates the counts it has.

use std::sync::LazyLock;

use memchr::memmem::Finder;

use serde::Deserialize;

use super::eventstream::{Ending, STREAM_EXCEPTIONS};
use super::json::Envelope;
use super::json::Usage;

/// Longest partial line kept between frames: a usage line is short, and a
/// giant line is not worth holding.
const MAX_CARRY: usize = 64 * 1024;

/// Scans complete lines as frames arrive.
#[derive(Debug, Default)]
pub struct SseScanner {
    /// The unfinished last line of the previous frame.
    carry: Vec<u8>,
    /// The unfinished line outgrew the carry and was dropped: what comes
    /// up to its end is still that line, not one to read.
    dropping: bool,
    last: Option<Usage>,
    /// The event named by the current event's `event:` line, when it is
    /// one that reports a failure.
    failing: Option<FailureEvent>,
    /// The error the stream reported, as a label.
    error: Option<&'static str>,
    /// `data: [DONE]` was seen.
    done: bool,
}

/// The events that report a failure after the `200`: Anthropic's and the
/// Responses API's `error`, and the Responses API's `response.failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureEvent {
    Error,
    ResponseFailed,
}

impl SseScanner {
    pub fn observe(&mut self, data: &[u8]) {
        let mut rest = data;
        while let Some(pos) = memchr::memchr(b'\n', rest) {
            let (line, after) = rest.split_at(pos);
            rest = &after[1..];
            if std::mem::take(&mut self.dropping) {
                continue;
            }
            if self.carry.is_empty() {
                self.check_line(line);
            } else {
                self.carry.extend_from_slice(line);
                let joined = std::mem::take(&mut self.carry);
                self.check_line(&joined);
            }
        }
        if rest.is_empty() || self.dropping {
            return;
        }
        if self.carry.len() + rest.len() <= MAX_CARRY {
            self.carry.extend_from_slice(rest);
        } else {
            self.carry = Vec::new();
            self.dropping = true;
        }
    }

    /// Bytes held: the unfinished line's buffer.
    pub fn held(&self) -> usize {
        self.carry.capacity()
    }

    pub fn finish(self) -> Ending {
        Ending {
            usage: self.last,
            exception: self.error,
            complete: self.done,
        }
    }

    fn check_line(&mut self, line: &[u8]) {
        let Some(payload) = line.strip_prefix(b"data:") else {
            self.check_field(line);
            return;
        };
        // Only the data's first key is looked at unless an event line
        // named a failure: errors are rare, and every chunk passes here.
        let failing = self.failing.take();
        if failing.is_some() || opens_with_an_error(payload) {
            self.error = Some(failure_label(failing, payload.trim_ascii()));
        }
        let Some(at) = USAGE_FINDER.find(payload) else {
            self.done |= payload.trim_ascii() == b"[DONE]";
            return;
        };
        if only_null_usage(&payload[at + USAGE_KEY.len()..]) {
            return;
        }
        if let Some(u) = Envelope::usage(payload.trim_ascii()) {
            self.last = Some(self.last.map_or(u, |earlier| earlier.updated_by(u)));
        }
    }

    /// A line other than data: an `event:` line names the next data's
    /// event; a blank one ends the event.
    fn check_field(&mut self, line: &[u8]) {
        let Some(event) = line.strip_prefix(b"event:") else {
            if line.trim_ascii().is_empty() {
                self.failing = None;
            }
            return;
        };
        self.failing = match event.trim_ascii() {
            b"error" => Some(FailureEvent::Error),
            b"response.failed" => Some(FailureEvent::ResponseFailed),
            _ => None,
        };
    }
}

/// Whether the data is an object whose first member is an `"error"`
/// object or string: OpenAI's error chunk (`{"error": {...}}`; some
/// OpenAI-compatible servers send a string), where the SDK raises. An
/// `"error": null` among a chunk's members is no error.
fn opens_with_an_error(data: &[u8]) -> bool {
    let Some(rest) = data.trim_ascii_start().strip_prefix(b"{") else {
        return false;
    };
    let Some(rest) = rest.trim_ascii_start().strip_prefix(b"\"error\"") else {
        return false;
    };
    let Some(value) = rest.trim_ascii_start().strip_prefix(b":") else {
        return false;
    };
    matches!(value.trim_ascii_start().first(), Some(b'{' | b'"'))
}

/// The error types the OpenAI-compatible and Anthropic APIs report inside
/// a stream, each its own label value (with the names Bedrock's event
/// streams use); any other is `other`, so the label stays bounded.
const SSE_ERRORS: [&str; 9] = [
    "overloaded_error",
    "api_error",
    "rate_limit_error",
    "invalid_request_error",
    "server_error",
    "rate_limit_exceeded",
    "timeout_error",
    "internal_error",
    "service_unavailable",
];

/// What an error event says went wrong, as far as it is read: the
/// error's `type`, else its `code` (OpenAI's `{"error": {...}}`,
/// Anthropic's `{"type":"error","error":{...}}`, the Responses API's
/// `{"type":"error","code":...}`); a failed response is
/// `response_failed`.
fn failure_label(event: Option<FailureEvent>, data: &[u8]) -> &'static str {
    #[derive(Deserialize, Default)]
    struct Detail {
        #[serde(rename = "type", default)]
        kind: Option<String>,
        #[serde(default)]
        code: Option<serde_json::Value>,
    }
    #[derive(Deserialize, Default)]
    struct Reported {
        #[serde(default)]
        error: Option<Detail>,
        #[serde(default)]
        code: Option<serde_json::Value>,
    }
    if event == Some(FailureEvent::ResponseFailed) {
        return "response_failed";
    }
    let reported: Reported = serde_json::from_slice(data).unwrap_or_default();
    let detail = reported.error.unwrap_or_default();
    let code = |c: Option<serde_json::Value>| c.and_then(|v| v.as_str().map(str::to_owned));
    let names = [detail.kind, code(detail.code), code(reported.code)];
    names
        .iter()
        .flatten()
        .find_map(|name| {
            SSE_ERRORS
                .iter()
                .chain(STREAM_EXCEPTIONS.iter())
                .find(|known| **known == name.as_str())
                .copied()
        })
        .unwrap_or("other")
}

pub(super) const USAGE_KEY: &[u8] = b"\"usage\"";

/// Built once: `memmem::find` builds a full searcher on every call whose
/// text is 64 bytes or longer, as nearly every chunk's line is, and on such
/// lines that cost more than the search (docs/performance.md).
pub(super) static USAGE_FINDER: LazyLock<Finder<'static>> =
    LazyLock::new(|| Finder::new(USAGE_KEY));

/// Whether what follows the line's first `"usage"` is `: null` with no
/// other `"usage"` after it: a line parsing would find no usage in. OpenAI's
/// API sends one in every chunk but the last when a client asks for usage
/// (`stream_options.include_usage`), and parsing each made the tap five
/// to nine times slower on such streams (docs/performance.md).
fn only_null_usage(after_key: &[u8]) -> bool {
    let Some(value) = after_key.trim_ascii_start().strip_prefix(b":") else {
        return false;
    };
    let value = value.trim_ascii_start();
    value.starts_with(b"null") && USAGE_FINDER.find(value).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::usage::eventstream::tests::split;
    use crate::proxy::usage::json::Count;
    use proptest::prelude::*;

    /// What the scanner did before it skipped null usage: parse every line
    /// that names `"usage"`, each count the latest given.
    fn parsed_whenever_named(lines: &[String]) -> Option<Usage> {
        let mut last: Option<Usage> = None;
        for line in lines {
            let Some(payload) = line.as_bytes().strip_prefix(b"data:") else {
                continue;
            };
            if memchr::memmem::find(payload, USAGE_KEY).is_none() {
                continue;
            }
            if let Some(u) = Envelope::usage(payload.trim_ascii()) {
                let mut merged = last.unwrap_or_default();
                for count in Count::ALL {
                    if let Some(n) = u.get(count) {
                        *merged.slot(count) = Some(n);
                    }
                }
                last = Some(merged);
            }
        }
        last
    }

    /// The lines as one stream, cut where `cuts` say.
    fn scanned(lines: &[String], cuts: &[u16]) -> Option<Usage> {
        let stream: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let mut scanner = SseScanner::default();
        for piece in split(stream.as_bytes(), cuts) {
            scanner.observe(piece);
        }
        scanner.finish().usage
    }

    /// The error a stream of these lines reported.
    fn reported(lines: &[&str]) -> Option<&'static str> {
        let mut scanner = SseScanner::default();
        for line in lines {
            scanner.observe(format!("{line}\r\n").as_bytes());
        }
        scanner.finish().exception
    }

    #[test]
    fn errors_reported_inside_a_stream_are_recognised() {
        let chunk = r#"data: {"choices":[{"delta":{"content":"a"}}]}"#;
        assert_eq!(reported(&[chunk, "", "data: [DONE]"]), None);
        // OpenAI's chat completions.
        let openai = r#"data: {"error":{"message":"Too many tokens","type":"rate_limit_exceeded","code":null}}"#;
        assert_eq!(reported(&[chunk, "", openai]), Some("rate_limit_exceeded"));
        // Anthropic's Messages API.
        assert_eq!(
            reported(&[
                "event: error",
                r#"data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            ]),
            Some("overloaded_error")
        );
        // The Responses API: an error event, and a failed response.
        assert_eq!(
            reported(&[
                "event: error",
                r#"data: {"type":"error","code":"server_error","message":"x"}"#
            ]),
            Some("server_error")
        );
        assert_eq!(
            reported(&[
                "event: response.failed",
                r#"data: {"type":"response.failed","response":{"error":{"code":"server_error"}}}"#,
            ]),
            Some("response_failed")
        );
        // A name outside the list, or an error that is not JSON: bounded.
        let odd = r#"data: { "error" : {"type":"a-new-kind\u0000"}}"#;
        assert_eq!(reported(&[odd]), Some("other"));
        assert_eq!(reported(&["event: error", "data: not json"]), Some("other"));
        // The event name holds for its own data only.
        assert_eq!(reported(&["event: error", "", chunk]), None);
        assert_eq!(
            reported(&["event: message", r#"data: {"text":"{\"error\""}"#]),
            None
        );
        let text_error = r#"data: {"error":"Input validation error"}"#;
        assert_eq!(reported(&[text_error]), Some("other"));
        // A chunk with an `"error": null` member has none.
        assert_eq!(
            reported(&[r#"data: {"error":null,"choices":[{"delta":{"content":"a"}}]}"#]),
            None
        );
        // Text that mentions an error is not one.
        let text = r#"data: {"choices":[{"delta":{"content":"{\"error\":1}"}}]}"#;
        assert_eq!(reported(&[text]), None);
    }

    /// A `usage` member as servers write it, or as they might.
    fn usage_member() -> impl Strategy<Value = String> {
        let space = prop::sample::select(vec!["", " ", "\t", "  "]);
        let value = prop_oneof![
            Just("null".to_owned()),
            Just("nullx".to_owned()),
            Just("{}".to_owned()),
            (0u32..900, 0u32..900)
                .prop_map(|(p, c)| format!(r#"{{"prompt_tokens":{p},"completion_tokens":{c}}}"#)),
            (0u32..900).prop_map(|p| format!(r#"{{"inputTokens":{p}}}"#)),
            (0u32..900).prop_map(|c| format!(r#"{{"output_tokens":{c}}}"#)),
            Just(r#""usage""#.to_owned()),
        ];
        (space.clone(), space.clone(), space, value)
            .prop_map(|(a, b, c, v)| format!(r#""usage"{a}:{b}{v}{c}"#))
    }

    /// One SSE line: a chunk with zero, one or two `usage` members, a
    /// `"usage"` inside the text, or something else.
    fn line() -> impl Strategy<Value = String> {
        let chunk = r#""choices":[{"index":0,"delta":{"content":"hi"}}]"#;
        prop_oneof![
            Just(format!("data: {{{chunk}}}")),
            usage_member().prop_map(move |u| format!("data: {{{chunk},{u}}}")),
            usage_member().prop_map(move |u| format!("data: {{{u},{chunk}}}")),
            (usage_member(), usage_member()).prop_map(|(u, v)| format!("data: {{{u},{v}}}")),
            usage_member()
                .prop_map(|u| format!(r#"data: {{"choices":[],"x":{{{u}}},"usage":null}}"#)),
            Just(r#"data: {"choices":[{"delta":{"content":"\"usage\": null"}}]}"#.to_owned()),
            Just("data: [DONE]".to_owned()),
            Just(": keep-alive".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        // Also: where the frames cut the lines does not change the answer.
        #[test]
        fn skipping_null_usage_changes_no_answer(
            lines in prop::collection::vec(line(), 0..12),
            cuts in prop::collection::vec(any::<u16>(), 0..8),
        ) {
            prop_assert_eq!(scanned(&lines, &cuts), parsed_whenever_named(&lines));
        }
    }

    #[test]
    fn the_rest_of_a_line_too_long_to_keep_is_not_read_as_a_line() {
        // A comment line longer than the carry, cut by a frame just before
        // text that looks like a usage line: it is still the comment.
        let long = format!(": {}", "x".repeat(MAX_CARRY));
        let tail = r#"data: {"usage":{"prompt_tokens":5}}"#;
        let stream = format!("{long}{tail}\n");
        let mut whole = SseScanner::default();
        whole.observe(stream.as_bytes());
        let mut cut = SseScanner::default();
        cut.observe(long.as_bytes());
        cut.observe(format!("{tail}\n").as_bytes());
        assert_eq!(whole.finish().usage, None);
        assert_eq!(cut.finish().usage, None);
        // The line after it is read again.
        let mut next = SseScanner::default();
        next.observe(long.as_bytes());
        next.observe(format!("{tail}\n{tail}\n").as_bytes());
        assert_eq!(next.finish().usage.and_then(|u| u.input), Some(5));
    }

    #[test]
    fn an_anthropic_stream_gives_its_input_first_and_its_output_last() {
        let lines: Vec<String> = [
            "event: message_start",
            r#"data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":100,"cache_creation_input_tokens":500,"cache_read_input_tokens":1000,"output_tokens":1}}}"#,
            "event: content_block_delta",
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}"#,
            "event: message_delta",
            r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":20}}"#,
            "event: message_stop",
            r#"data: {"type":"message_stop"}"#,
        ]
        .map(str::to_owned)
        .to_vec();
        let usage = scanned(&lines, &[]).unwrap();
        assert_eq!(
            (
                usage.input,
                usage.output,
                usage.cache_read,
                usage.cache_write
            ),
            (Some(100), Some(20), Some(1000), Some(500))
        );
    }

    #[test]
    fn cached_tokens_leave_the_input_once_the_events_are_merged() {
        // Only the first usage chunk says how much of the prompt was
        // cached; the later one repeats the prompt's total.
        let lines: Vec<String> = [
            r#"data: {"usage":{"prompt_tokens":100,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":90}}}"#,
            r#"data: {"usage":{"prompt_tokens":100,"completion_tokens":7}}"#,
        ]
        .map(str::to_owned)
        .to_vec();
        let usage = scanned(&lines, &[]).unwrap().counted();
        assert_eq!(
            (usage.input, usage.cache_read, usage.output),
            (Some(10), Some(90), Some(7))
        );
    }

    #[test]
    fn a_null_usage_line_is_not_parsed_and_the_last_usage_counts() {
        assert!(only_null_usage(b" : null}"));
        assert!(only_null_usage(b":null,\"id\":1}"));
        assert!(!only_null_usage(b":{\"prompt_tokens\":1}}"));
        assert!(!only_null_usage(
            b":null,\"x\":{\"usage\":{\"prompt_tokens\":1}}}"
        ));
        let lines: Vec<String> = [
            r#"data: {"choices":[{"delta":{"content":"a"}}],"usage":null}"#,
            r#"data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}"#,
            "data: [DONE]",
        ]
        .map(str::to_owned)
        .to_vec();
        assert_eq!(scanned(&lines, &[]).and_then(|u| u.output), Some(3));
    }
}
