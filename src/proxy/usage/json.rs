//! Usage in a JSON document: the keys each of Bedrock's answer shapes
//! counts tokens under, and a shortcut to the usage object at the end of
//! a large answer.

use serde::Deserialize;

/// Usage counts in any of the shapes Bedrock answers with (Converse,
/// OpenAI-compatible, Anthropic InvokeModel, invocation metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(
        default,
        alias = "inputTokens",
        alias = "prompt_tokens",
        alias = "input_tokens",
        alias = "inputTokenCount"
    )]
    pub input: Option<u64>,
    #[serde(
        default,
        alias = "outputTokens",
        alias = "completion_tokens",
        alias = "output_tokens",
        alias = "outputTokenCount"
    )]
    pub output: Option<u64>,
    #[serde(
        default,
        alias = "cacheReadInputTokens",
        alias = "cache_read_input_tokens",
        alias = "cacheReadInputTokenCount"
    )]
    pub cache_read: Option<u64>,
    #[serde(
        default,
        alias = "cacheWriteInputTokens",
        alias = "cache_creation_input_tokens",
        alias = "cacheWriteInputTokenCount"
    )]
    pub cache_write: Option<u64>,
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
    /// when that shortcut finds nothing.
    pub(super) fn usage(slice: &[u8]) -> Option<Usage> {
        for key in [
            &b"\"usage\""[..],
            &b"\"amazon-bedrock-invocationMetrics\""[..],
        ] {
            if let Some(u) = value_after_last_key(slice, key) {
                return Some(u);
            }
        }
        let e: Envelope = serde_json::from_slice(slice).ok()?;
        e.usage.or(e.invocation_metrics)
    }
}

/// Deserializes the value that follows the last unescaped occurrence of
/// `key` (a quoted JSON key) in `doc`.
fn value_after_last_key<T: serde::de::DeserializeOwned>(doc: &[u8], key: &[u8]) -> Option<T> {
    let pos = last_unescaped_key(doc, key)?;
    let rest = &doc[pos + key.len()..];
    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
    if rest[colon] != b':' {
        return None;
    }
    let mut values = serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter::<T>();
    values.next()?.ok()
}

/// Where the last occurrence of `key` (a quoted JSON key, so it ends in
/// `"`) not preceded by a backslash starts in `doc`.
///
/// Walks the `"` bytes from the end (a vectorised `memrchr`) and compares
/// the key at each. A reverse substring search costs more here: it builds
/// its searcher on every call and scans byte by byte, more than parsing the
/// usage object itself on a typical answer (the key is near the end).
fn last_unescaped_key(doc: &[u8], key: &[u8]) -> Option<usize> {
    debug_assert_eq!(key.last(), Some(&b'"'));
    memchr::memrchr_iter(b'"', doc)
        .filter_map(|end| {
            let start = (end + 1).checked_sub(key.len())?;
            (&doc[start..=end] == key).then_some(start)
        })
        .find(|&start| start == 0 || doc[start - 1] != b'\\')
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

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
            ];
            prop::collection::vec(piece, 0..24).prop_map(|p| p.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn key_search_matches_a_reverse_substring_search(doc in doc()) {
                for key in [&b"\"usage\""[..], &b"\"amazon-bedrock-invocationMetrics\""[..]] {
                    let expected = memchr::memmem::rfind_iter(&doc, key)
                        .find(|p| *p == 0 || doc[p - 1] != b'\\');
                    prop_assert_eq!(last_unescaped_key(&doc, key), expected);
                }
            }
        }
    }
}
