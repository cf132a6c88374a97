//! Usage in a JSON document: the keys each of Bedrock's answer shapes
//! counts tokens under, and a shortcut to the usage object at the end of
//! a large answer.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::metrics::labels::DIRECTIONS;

/// Usage counts in any of the shapes Bedrock answers with (Converse,
/// OpenAI-compatible, Anthropic InvokeModel, invocation metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: Option<u64>,
    pub output: Option<u64>,
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
    /// OpenAI's `cached_tokens` (of `prompt_tokens_details`, or
    /// `input_tokens_details` in Responses): tokens the prompt cache
    /// served, which `input` holds too as the answer gives it. Kept apart
    /// until [`Usage::counted`], so that a stream's events merge first.
    pub cached_in_input: Option<u64>,
}

impl Usage {
    pub(super) fn get(&self, count: Count) -> Option<u64> {
        match count {
            Count::Input => self.input,
            Count::Output => self.output,
            Count::CacheRead => self.cache_read,
            Count::CacheWrite => self.cache_write,
        }
    }

    /// These counts, with each one `newer` gives replacing its own: an
    /// Anthropic stream sends the input tokens in its first event and the
    /// output in a later one.
    pub(super) fn updated_by(self, newer: Usage) -> Usage {
        Usage {
            input: newer.input.or(self.input),
            output: newer.output.or(self.output),
            cache_read: newer.cache_read.or(self.cache_read),
            cache_write: newer.cache_write.or(self.cache_write),
            cached_in_input: newer.cached_in_input.or(self.cached_in_input),
        }
    }

    /// The counts as the metrics give them, the same for every API: the
    /// directions never overlap, and `input` is the prompt's tokens read
    /// fresh. OpenAI's shape counts the tokens its prompt cache served
    /// inside `prompt_tokens` (and says how many in `cached_tokens`);
    /// LiteLLM's, the tokens written to the cache too (which it gives as
    /// `cache_creation_input_tokens`). Converse and Anthropic count both
    /// apart already. So in an OpenAI-shaped answer they move out of the
    /// input, the cached ones to `cache_read` (unless the answer gives
    /// that count itself, as LiteLLM's does).
    pub(super) fn counted(self) -> Usage {
        let Some(cached) = self.cached_in_input else {
            return self;
        };
        let cached_or_written = cached.saturating_add(self.cache_write.unwrap_or(0));
        Usage {
            input: self.input.map(|n| n.saturating_sub(cached_or_written)),
            cache_read: self.cache_read.or(Some(cached)),
            cached_in_input: None,
            ..self
        }
    }

    pub(super) fn slot(&mut self, count: Count) -> &mut Option<u64> {
        match count {
            Count::Input => &mut self.input,
            Count::Output => &mut self.output,
            Count::CacheRead => &mut self.cache_read,
            Count::CacheWrite => &mut self.cache_write,
        }
    }
}

/// Which count a key of a usage object (or a usage header) holds; as an
/// index, its position in the metrics' [`DIRECTIONS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Count {
    Input,
    Output,
    CacheRead,
    CacheWrite,
}

impl Count {
    pub(super) const ALL: [Self; 4] =
        [Self::Input, Self::Output, Self::CacheRead, Self::CacheWrite];

    /// The keys a count goes by: Converse, OpenAI-compatible, Anthropic
    /// and invocation-metrics spellings, and the field's own name.
    fn of(key: &[u8]) -> Option<Self> {
        Some(match key {
            b"input" | b"inputTokens" | b"prompt_tokens" | b"input_tokens" | b"inputTokenCount" => {
                Self::Input
            }
            b"output" | b"outputTokens" | b"completion_tokens" | b"output_tokens"
            | b"outputTokenCount" => Self::Output,
            b"cache_read"
            | b"cacheReadInputTokens"
            | b"cache_read_input_tokens"
            | b"cacheReadInputTokenCount" => Self::CacheRead,
            b"cache_write"
            | b"cacheWriteInputTokens"
            | b"cache_creation_input_tokens"
            | b"cacheWriteInputTokenCount" => Self::CacheWrite,
            _ => return None,
        })
    }
}

/// A key of a usage object, asked for as bytes: serde_json then hands it
/// over (escapes undone) without checking that it is UTF-8 or free of
/// control characters and lone surrogate escapes; those checks were about
/// 480 of the 3,660 instructions reading usage cost a converse answer. The
/// keys that count are ASCII; any other key is skipped with its value,
/// valid or not.
enum Key {
    Count(Count),
    /// OpenAI's breakdown of the input: `prompt_tokens_details` (Chat
    /// Completions) or `input_tokens_details` (Responses).
    InputDetails,
    Other,
}

/// The part of OpenAI's input breakdown that counts: `cached_tokens` were
/// served from the prompt cache, and are counted in `prompt_tokens` too.
#[derive(Deserialize)]
struct InputDetails {
    #[serde(default, deserialize_with = "count_or_nothing")]
    cached_tokens: Option<u64>,
}

/// A count, or nothing for any other value: a breakdown an upstream
/// fills oddly (a string, a fraction) costs the answer its cache-read
/// count, not its whole usage.
fn count_or_nothing<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Ok(serde_json::Value::deserialize(deserializer)?.as_u64())
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key of a usage object")
            }
            fn visit_bytes<E: de::Error>(self, key: &[u8]) -> Result<Key, E> {
                Ok(match key {
                    b"prompt_tokens_details" | b"input_tokens_details" => Key::InputDetails,
                    _ => Count::of(key).map_or(Key::Other, Key::Count),
                })
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                self.visit_bytes(key.as_bytes())
            }
        }
        deserializer.deserialize_bytes(KeyVisitor)
    }
}

/// Written out rather than derived so that keys are read as bytes (see
/// [`Key`]); otherwise what the derive did: unknown keys skipped, a count
/// given twice (under any of its names) an error, `null` as absent. Two
/// differences: a key that is not valid UTF-8 (or has a raw control
/// character or a lone surrogate escape) is skipped where the derive
/// failed the object, and only an object is usage (the derive also took
/// an array, by position).
/// OpenAI's input details give `cached_in_input` (see [`Usage::counted`]).
impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UsageVisitor;
        impl<'de> Visitor<'de> for UsageVisitor {
            type Value = Usage;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a usage object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Usage, A::Error> {
                let mut usage = Usage::default();
                let mut seen = [false; 4];
                let mut details: Option<Option<InputDetails>> = None;
                while let Some(key) = map.next_key()? {
                    let count = match key {
                        Key::Count(count) => count,
                        Key::InputDetails => {
                            if details.is_some() {
                                return Err(de::Error::duplicate_field("input_tokens_details"));
                            }
                            details = Some(map.next_value()?);
                            continue;
                        }
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if std::mem::replace(&mut seen[count as usize], true) {
                        return Err(de::Error::duplicate_field(DIRECTIONS[count as usize]));
                    }
                    *usage.slot(count) = map.next_value()?;
                }
                usage.cached_in_input = details.flatten().and_then(|d| d.cached_tokens);
                Ok(usage)
            }
        }
        deserializer.deserialize_map(UsageVisitor)
    }
}

/// Where usage sits in a JSON document.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Envelope {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default, rename = "amazon-bedrock-invocationMetrics")]
    invocation_metrics: Option<Usage>,
}

impl Envelope {
    /// Usage in a JSON document. Bedrock puts it at the end, so the last
    /// `"usage"` (or invocation-metrics) key is located by a byte search
    /// and only its object is parsed; the whole document is parsed only
    /// when that shortcut finds no token counts. An object without any is
    /// most likely not the answer's: a guardrail's trace, written after
    /// the answer's usage, has a `"usage"` of its own (policy units).
    pub(super) fn usage(slice: &[u8]) -> Option<Usage> {
        for key in [
            &b"\"usage\""[..],
            &b"\"amazon-bedrock-invocationMetrics\""[..],
        ] {
            match usage_after_last_key(slice, key) {
                Some(u) if u != Usage::default() => return Some(u),
                _ => {}
            }
        }
        let e: Envelope = serde_json::from_slice(slice).ok()?;
        e.usage.or(e.invocation_metrics)
    }
}

impl Envelope {
    /// Usage in the end of a JSON document too large to keep whole: the
    /// last usage object (or invocation metrics) with token counts, found
    /// as [`Envelope::usage`] finds it. A guardrail's trace after the
    /// answer's usage has a `"usage"` of its own, without tokens: the one
    /// before it is read then. Without the document's beginning there is
    /// nothing to fall back on.
    pub(super) fn usage_near_end(tail: &[u8]) -> Option<Usage> {
        for key in [
            &b"\"usage\""[..],
            &b"\"amazon-bedrock-invocationMetrics\""[..],
        ] {
            let mut end = tail.len();
            while let Some(value) = after_last_key(&tail[..end], key) {
                match usage_at(tail, value) {
                    Some(u) if u != Usage::default() => return Some(u),
                    // Before this key's colon: its key no longer matches.
                    _ => end = value - 1,
                }
            }
        }
        None
    }
}

/// Deserializes the value of the last `key` (a quoted JSON key) in `doc`.
fn usage_after_last_key(doc: &[u8], key: &[u8]) -> Option<Usage> {
    usage_at(doc, after_last_key(doc, key)?)
}

/// Deserializes the usage object starting at `value` in `doc`. What follows
/// it is the rest of the document: not checked.
fn usage_at(doc: &[u8], value: usize) -> Option<Usage> {
    Usage::deserialize(&mut serde_json::Deserializer::from_slice(&doc[value..])).ok()
}

/// Where the value of the last `key` in `doc` starts: just past the `:`
/// after it. `key` is a quoted JSON key; an occurrence preceded by a
/// backslash is text inside a string, and one without a `:` after it is a
/// value, not a key.
///
/// Walks the `:` bytes from the end (a vectorised `memrchr`) and compares
/// the key before each: an answer has half as many colons as quotes after
/// its usage key. A reverse substring search costs more here: it builds
/// its searcher on every call and scans byte by byte, more than parsing the
/// usage object itself on a typical answer (the key is near the end).
fn after_last_key(doc: &[u8], key: &[u8]) -> Option<usize> {
    // The key's last letter, checked first: most colons follow other keys,
    // and this spares them a call to `memcmp`.
    let last_letter = key.len().checked_sub(2).map(|i| key[i])?;
    memchr::memrchr_iter(b':', doc).find_map(|colon| {
        let before = doc[..colon].trim_ascii_end();
        let start = before.len().checked_sub(key.len())?;
        let found = before[before.len() - 2] == last_letter
            && &before[start..] == key
            && (start == 0 || before[start - 1] != b'\\');
        found.then_some(colon + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_usage_shortcut_ignores_quoted_text_and_falls_back() {
        // The reply text mentions "usage" (escaped inside a string).
        let doc = br#"{"output":{"text":"the \"usage\": {\"inputTokens\": 999}"},"usage":{"inputTokens":3,"outputTokens":4}}"#;
        assert_eq!(Envelope::usage(doc).unwrap().input, Some(3));
        let only_text = br#"{"output":{"text":"\"usage\": {\"inputTokens\": 999}"}}"#;
        assert_eq!(Envelope::usage(only_text), None);
        let spaced = br#"{"usage" :  {"prompt_tokens": 5}}"#;
        assert_eq!(Envelope::usage(spaced).unwrap().input, Some(5));
        assert_eq!(Envelope::usage(br#"{"usage": null}"#), None);
    }

    #[test]
    fn a_guardrail_trace_after_the_usage_does_not_hide_it() {
        // With a guardrail's trace, Bedrock writes another "usage" (policy
        // units, none of them tokens) after the answer's own.
        let trace = r#""trace":{"guardrail":{"inputAssessment":{"g1":{"invocationMetrics":{"usage":{"topicPolicyUnits":1,"contentPolicyUnits":1}}}}}}"#;
        let converse = format!(
            r#"{{"output":{{}},"usage":{{"inputTokens":3,"outputTokens":4,"totalTokens":7}},"metrics":{{"latencyMs":1}},{trace}}}"#
        );
        let usage = Envelope::usage(converse.as_bytes()).unwrap();
        assert_eq!((usage.input, usage.output), (Some(3), Some(4)));
        let anthropic = format!(
            r#"{{"content":[],"usage":{{"input_tokens":5,"output_tokens":6}},"amazon-bedrock-trace":{{"guardrail":{{{trace}}}}}}}"#
        );
        assert_eq!(
            Envelope::usage(anthropic.as_bytes()).unwrap().input,
            Some(5)
        );
    }

    #[test]
    fn the_end_of_a_large_answer_gives_its_usage_past_a_trace() {
        let trace =
            r#""trace":{"guardrail":{"x":{"invocationMetrics":{"usage":{"topicPolicyUnits":1}}}}}"#;
        let end = format!(
            r#"xt"}}]}}}},"usage":{{"inputTokens":3,"outputTokens":4}},"metrics":{{"latencyMs":1}},{trace}}}"#
        );
        let usage = Envelope::usage_near_end(end.as_bytes()).unwrap();
        assert_eq!((usage.input, usage.output), (Some(3), Some(4)));
        let metrics =
            br#"..."amazon-bedrock-invocationMetrics":{"inputTokenCount":5,"outputTokenCount":6}}"#;
        assert_eq!(Envelope::usage_near_end(metrics).unwrap().input, Some(5));
        assert_eq!(Envelope::usage_near_end(br#"text "usage": "#), None);
        assert_eq!(Envelope::usage_near_end(br#"{"usage":{}}"#), None);
        assert_eq!(Envelope::usage_near_end(b""), None);
    }

    #[test]
    fn the_shortcut_reads_usage_the_whole_document_would_not() {
        // Only the usage object is parsed: whatever follows it is not checked.
        let cut = br#"{"usage":{"inputTokens":3}}, and then not JSON"#;
        assert!(serde_json::from_slice::<serde_json::Value>(cut).is_err());
        assert_eq!(Envelope::usage(cut).unwrap().input, Some(3));
    }

    #[test]
    fn usage_objects_in_each_shape() {
        let read = |doc: &[u8]| serde_json::from_slice::<Usage>(doc).ok();
        let converse = br#"{"inputTokens":212,"outputTokens":196,"totalTokens":408,"cacheReadInputTokens":5,"cacheWriteInputTokens":6}"#;
        let expected = Usage {
            input: Some(212),
            output: Some(196),
            cache_read: Some(5),
            cache_write: Some(6),
            cached_in_input: None,
        };
        assert_eq!(read(converse), Some(expected));
        let anthropic = br#"{"input_tokens":212,"cache_creation_input_tokens":6,"cache_read_input_tokens":5,"output_tokens":196}"#;
        assert_eq!(read(anthropic), Some(expected));
        let openai = br#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"prompt_tokens_details":{"cached_tokens":0}}"#;
        assert_eq!(read(openai).unwrap().input, Some(1));
        assert_eq!(read(openai).unwrap().output, Some(2));
        // OpenAI counts cached tokens inside the prompt's: they move over.
        let counted = |doc: &[u8]| read(doc).map(Usage::counted);
        let cached = Usage {
            input: Some(6),
            output: Some(2),
            cache_read: Some(4),
            ..Usage::default()
        };
        let chat = br#"{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0}}"#;
        assert_eq!(read(chat).unwrap().cached_in_input, Some(4));
        assert_eq!(counted(chat), Some(cached));
        let responses = br#"{"input_tokens":10,"input_tokens_details":{"cached_tokens":4},"output_tokens":2,"output_tokens_details":{"reasoning_tokens":1},"total_tokens":12}"#;
        assert_eq!(counted(responses), Some(cached));
        // LiteLLM's shape says it twice; the direct count is kept.
        let both = br#"{"prompt_tokens":10,"completion_tokens":2,"cache_read_input_tokens":4,"prompt_tokens_details":{"cached_tokens":4}}"#;
        assert_eq!(counted(both), Some(cached));
        // LiteLLM's prompt holds what it wrote to the cache too.
        let written = br#"{"prompt_tokens":1510,"completion_tokens":2,"cache_creation_input_tokens":500,"cache_read_input_tokens":1000,"prompt_tokens_details":{"cached_tokens":1000}}"#;
        let usage = counted(written).unwrap();
        assert_eq!(
            (usage.input, usage.cache_read, usage.cache_write),
            (Some(10), Some(1000), Some(500))
        );
        // More cached than the prompt held (a broken upstream): no wrap.
        let over = br#"{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":4}}"#;
        assert_eq!(counted(over).unwrap().input, Some(0));
        for plain in [
            &br#"{"prompt_tokens":10,"prompt_tokens_details":null}"#[..],
            br#"{"prompt_tokens":10,"prompt_tokens_details":{"audio_tokens":3}}"#,
            br#"{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":null}}"#,
            br#"{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":"4"}}"#,
            br#"{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":1.5}}"#,
        ] {
            let usage = counted(plain).unwrap();
            assert_eq!((usage.input, usage.cache_read), (Some(10), None));
        }
        // Counts that are not OpenAI's stay as given.
        assert_eq!(counted(converse), Some(expected));
        let twice = br#"{"prompt_tokens_details":{"cached_tokens":1},"input_tokens_details":{"cached_tokens":1}}"#;
        assert_eq!(read(twice), None);
        // A key spelt with an escape is the same key.
        assert_eq!(read(br#"{"input\u0054okens":7}"#).unwrap().input, Some(7));
        // Keys that are not valid strings are skipped, not fatal.
        for bad in [&b"\xff"[..], b"\x01", br"\ud800"] {
            let doc = [&b"{\""[..], bad, br#"":1,"outputTokens":2}"#].concat();
            assert_eq!(read(&doc).unwrap().output, Some(2));
            assert!(serde_json::from_slice::<serde_json::Value>(&doc).is_err());
        }
        assert_eq!(read(br#"{"inputTokens":1,"input_tokens":2}"#), None);
        assert_eq!(read(br#"{"inputTokens":-1}"#), None);
        assert_eq!(read(br#"[1,2]"#), None);
        assert_eq!(read(br#"{"inputTokens":null}"#), Some(Usage::default()));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// What reading usage was before it was written out: the derive,
        /// with every spelling an alias.
        #[derive(Debug, Deserialize)]
        struct Derived {
            #[serde(
                default,
                alias = "inputTokens",
                alias = "prompt_tokens",
                alias = "input_tokens",
                alias = "inputTokenCount"
            )]
            input: Option<u64>,
            #[serde(
                default,
                alias = "outputTokens",
                alias = "completion_tokens",
                alias = "output_tokens",
                alias = "outputTokenCount"
            )]
            output: Option<u64>,
            #[serde(
                default,
                alias = "cacheReadInputTokens",
                alias = "cache_read_input_tokens",
                alias = "cacheReadInputTokenCount"
            )]
            cache_read: Option<u64>,
            #[serde(
                default,
                alias = "cacheWriteInputTokens",
                alias = "cache_creation_input_tokens",
                alias = "cacheWriteInputTokenCount"
            )]
            cache_write: Option<u64>,
            #[serde(default, alias = "input_tokens_details")]
            prompt_tokens_details: Option<DerivedDetails>,
        }

        #[derive(Debug, Deserialize)]
        struct DerivedDetails {
            #[serde(default, deserialize_with = "count_or_nothing")]
            cached_tokens: Option<u64>,
        }

        impl Derived {
            fn usage(self) -> Usage {
                Usage {
                    input: self.input,
                    output: self.output,
                    cache_read: self.cache_read,
                    cache_write: self.cache_write,
                    cached_in_input: self.prompt_tokens_details.and_then(|d| d.cached_tokens),
                }
            }
        }

        fn key() -> impl Strategy<Value = String> {
            let known = [
                "input",
                "inputTokens",
                "prompt_tokens",
                "input_tokens",
                "inputTokenCount",
                "output",
                "outputTokens",
                "completion_tokens",
                "output_tokens",
                "outputTokenCount",
                "cache_read",
                "cacheReadInputTokens",
                "cache_read_input_tokens",
                "cacheReadInputTokenCount",
                "cache_write",
                "cacheWriteInputTokens",
                "cache_creation_input_tokens",
                "cacheWriteInputTokenCount",
                "prompt_tokens_details",
                "input_tokens_details",
            ]
            .map(|k| format!("\"{k}\""));
            prop_oneof![
                4 => prop::sample::select(known.to_vec()),
                1 => Just(r#""input\u0054okens""#.to_owned()),
                1 => Just(r#""totalTokens""#.to_owned()),
                1 => Just(r#""InputTokens""#.to_owned()),
                1 => Just(r#""""#.to_owned()),
                1 => any::<String>().prop_map(|k| serde_json::to_string(&k).unwrap()),
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => any::<u64>().prop_map(|n| n.to_string()),
                1 => Just("null".to_owned()),
                1 => Just("-1".to_owned()),
                1 => Just("1.5".to_owned()),
                1 => Just("18446744073709551616".to_owned()),
                1 => Just(r#""12""#.to_owned()),
                1 => Just(r#"{"cached_tokens":3,"x":[1,{"y":null}]}"#.to_owned()),
                1 => Just(r#"{"audio_tokens":3}"#.to_owned()),
                1 => any::<u64>().prop_map(|n| format!(r#"{{"cached_tokens":{n}}}"#)),
                1 => Just("[true,false]".to_owned()),
            ]
        }

        fn object() -> impl Strategy<Value = String> {
            let ws = prop::sample::select(vec!["", " ", "\n\t "]);
            prop::collection::vec((key(), value(), ws), 0..7).prop_map(|pairs| {
                let fields: Vec<String> = pairs
                    .into_iter()
                    .map(|(k, v, w)| format!("{w}{k}{w}:{w}{v}{w}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            })
        }

        /// JSON-ish bytes dense in the characters the key search cares
        /// about, with the real keys spliced in.
        fn doc() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                Just(&b"\"usage\""[..]),
                Just(&b"\"amazon-bedrock-invocationMetrics\""[..]),
                Just(&b"\\"[..]),
                Just(&b"\""[..]),
                Just(&b"usage"[..]),
                Just(&b":{}, e"[..]),
                Just(&b" \n:"[..]),
            ];
            prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn usage_reads_as_the_derive_did(doc in object()) {
                let ours = serde_json::from_slice::<Usage>(doc.as_bytes()).ok();
                let derived = serde_json::from_slice::<Derived>(doc.as_bytes()).ok().map(Derived::usage);
                prop_assert_eq!(ours, derived, "{}", doc);
            }

            #[test]
            fn key_search_matches_a_reverse_substring_search(doc in doc()) {
                for key in [&b"\"usage\""[..], &b"\"amazon-bedrock-invocationMetrics\""[..]] {
                    let expected = memchr::memmem::rfind_iter(&doc, key)
                        .filter(|p| *p == 0 || doc[p - 1] != b'\\')
                        .find_map(|p| {
                            let after = &doc[p + key.len()..];
                            let ws = after.iter().take_while(|b| b.is_ascii_whitespace()).count();
                            (after.get(ws) == Some(&b':')).then_some(p + key.len() + ws + 1)
                        });
                    prop_assert_eq!(after_last_key(&doc, key), expected);
                }
            }
        }
    }
}
