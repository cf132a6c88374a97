//! Blanking the secrets a request carried out of an error body that
//! quotes them back, whole or a piece of them, however the body escapes
//! them.
//!
//! A body may write a character of a secret as itself or as an escape:
//! JSON's `\uXXXX` and `\/`, HTML's `&#43;`, `&#x2B;` and `&plus;`, a
//! URL's `%2B`, in any mix, and nested (a JSON string quoted inside
//! another: `\\u002B`). The body is decoded layer by layer into a view
//! that remembers which bytes of the body each character came from; the
//! secret, and every run of 8 bytes or more taken from it (a relay's log
//! line cut to a width quotes a piece, without the header's name), is
//! searched for in each view, and the bytes it came from are blanked.
//! Nothing is parsed, so a body that is not what it says it is (text
//! labelled JSON, JSON cut short) is cleaned the same.

use memchr::memmem;

use crate::credentials::without_public_prefix;
use crate::secret::{escape_at, Pieces, REDACTED};

/// Layers of escaping undone: a quoted JSON string inside an HTML page
/// inside a JSON error is three. Each layer is a pass over the body.
const MAX_LAYERS: usize = 4;

/// The body as a reader of one more layer of escapes sees it.
struct View {
    /// One byte per character.
    bytes: Vec<u8>,
    /// Where in the body each character's bytes start; they end where the
    /// next one's start (or at the body's end).
    starts: Vec<u32>,
}

impl View {
    /// The body with one layer of escapes undone; `None` when it has none
    /// (the usual error body: no copy is made then).
    fn first(body: &[u8]) -> Option<Self> {
        Self::decode(body, |i| i as u32)
    }

    /// The view with one more layer of escapes undone; `None` when there
    /// was none to undo.
    fn decoded(&self) -> Option<Self> {
        Self::decode(&self.bytes, |i| self.starts[i])
    }

    fn decode(bytes: &[u8], start: impl Fn(usize) -> u32) -> Option<Self> {
        // Every escape starts with one of these.
        memchr::memchr3(b'\\', b'&', b'%', bytes)?;
        let mut next = Self {
            bytes: Vec::with_capacity(bytes.len()),
            starts: Vec::with_capacity(bytes.len()),
        };
        let mut i = 0;
        let mut changed = false;
        while i < bytes.len() {
            let (byte, len) = escape_at(&bytes[i..]).unwrap_or((bytes[i], 1));
            changed |= len > 1;
            next.bytes.push(byte);
            next.starts.push(start(i));
            i += len;
        }
        changed.then_some(next)
    }

    /// Where in the body (`start..end`) each occurrence of `secret` in
    /// this view came from.
    fn find(&self, secret: &[u8], body_len: usize, spans: &mut Vec<(usize, usize)>) {
        for at in memmem::find_iter(&self.bytes, secret) {
            spans.push(self.in_body(at, at + secret.len(), body_len));
        }
    }

    /// Where in the body each run of `pieces` in this view came from.
    fn find_pieces(&self, pieces: &Pieces, body_len: usize, spans: &mut Vec<(usize, usize)>) {
        for (start, end) in pieces.runs(&self.bytes) {
            spans.push(self.in_body(start, end, body_len));
        }
    }

    /// The body's bytes that this view's `start..end` came from.
    fn in_body(&self, start: usize, end: usize, body_len: usize) -> (usize, usize) {
        let end = self.starts.get(end).map_or(body_len, |&s| s as usize);
        (self.starts[start] as usize, end)
    }
}

/// `body` with every occurrence of each of `secrets`, and of every run of
/// 8 bytes or more taken from one, blanked, written plainly or escaped;
/// `None` when there was none. Empty secrets are skipped (they would
/// match everywhere).
pub fn blank(body: &[u8], secrets: &[&[u8]]) -> Option<Vec<u8>> {
    Blanker::new(secrets)?.blank(body)
}

/// The secrets a request carried, and the pieces of them, ready to blank
/// out of several texts (an error answer's body and its header values)
/// with the pieces found once.
pub struct Blanker<'a> {
    secrets: Vec<&'a [u8]>,
    pieces: Pieces,
}

impl<'a> Blanker<'a> {
    /// `None` when no secret is left once the empty ones are skipped.
    pub fn new(secrets: &[&'a [u8]]) -> Option<Self> {
        let secrets: Vec<&[u8]> = secrets.iter().copied().filter(|s| !s.is_empty()).collect();
        if secrets.is_empty() {
            return None;
        }
        // A short-term key's public prefix is blanked with the whole key,
        // not as a piece.
        let pieces = Pieces::of(secrets.iter().map(|s| without_public_prefix(s)));
        Some(Self { secrets, pieces })
    }

    /// `body` with the secrets blanked (see [`blank`]); `None` when it
    /// held none.
    pub fn blank(&self, body: &[u8]) -> Option<Vec<u8>> {
        // Offsets are kept as u32: error bodies are read up to 64 KiB.
        if u32::try_from(body.len()).is_err() {
            return None;
        }
        let mut spans = self.pieces.runs(body);
        for secret in &self.secrets {
            spans.extend(memmem::find_iter(body, secret).map(|at| (at, at + secret.len())));
        }
        let mut next = View::first(body);
        for layer in 1..=MAX_LAYERS {
            let Some(view) = next else { break };
            for secret in &self.secrets {
                view.find(secret, body.len(), &mut spans);
            }
            view.find_pieces(&self.pieces, body.len(), &mut spans);
            next = (layer < MAX_LAYERS).then(|| view.decoded()).flatten();
        }
        if spans.is_empty() {
            return None;
        }
        spans.sort_unstable();
        let mut out = Vec::with_capacity(body.len());
        let mut done = 0;
        for (i, (start, end)) in spans.into_iter().enumerate() {
            // Overlapping and touching finds (the same secret in two
            // layers, pieces found in different ones) merge into one blank.
            if i == 0 || start > done {
                out.extend_from_slice(&body[done..start]);
                out.extend_from_slice(REDACTED.as_bytes());
            }
            done = done.max(end);
        }
        out.extend_from_slice(&body[done..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_layers_of_escapes_are_undone_and_no_more() {
        const TOKEN: &str = "IQoJb3JpZ2luX2Vj+ab/cd+ef/gh==";
        for (layers, plus, blanked) in [
            (3, "%25252B", "token: ** redacted **"),
            (4, "%2525252B", "token: ** redacted **"),
            // Only the pieces between the escapes are found: the first
            // one is long enough.
            (
                5,
                "%252525252B",
                "token: ** redacted **%252525252Bab/cd%252525252Bef/gh==",
            ),
        ] {
            let body = format!("token: {}", TOKEN.replace('+', plus));
            let out = blank(body.as_bytes(), &[TOKEN.as_bytes()]).unwrap();
            assert_eq!(String::from_utf8(out).unwrap(), blanked, "{layers} layers");
        }
    }

    const TOKEN: &str = "IQoJb3JpZ2luX2Vj+ab/cd+ef/gh==";

    fn blanked(body: &str) -> String {
        let out = blank(body.as_bytes(), &[TOKEN.as_bytes()]);
        String::from_utf8(out.unwrap_or_else(|| body.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn every_escaping_of_the_secret_is_blanked_and_nothing_else() {
        let escaped = [
            TOKEN.to_owned(),
            TOKEN.replace('+', "\\u002B").replace('/', "\\u002F"),
            TOKEN.replace('+', "\\u002b").replace('/', "\\/"),
            TOKEN.replace('=', "\\u003D"),
            TOKEN.replace('+', "&#43;").replace('/', "&#47;"),
            TOKEN.replace('+', "&#x2B;").replace('/', "&#X2f;"),
            TOKEN
                .replace('+', "&plus;")
                .replace('/', "&sol;")
                .replace('=', "&equals;"),
            TOKEN
                .replace('+', "%2B")
                .replace('/', "%2f")
                .replace('=', "%3D"),
            // Nested: a JSON string quoted in JSON, twice percent-encoded,
            // entities escaped again.
            TOKEN.replace('+', "\\\\u002B").replace('/', "\\\\\\/"),
            TOKEN.replace('+', "%252B").replace('/', "%252F"),
            TOKEN.replace('+', "&amp;#43;").replace('/', "\\u0026#47;"),
        ];
        for form in escaped {
            let body = format!(r#"{{"message":"token: {form}\nhost: b","code":"X"}}"#);
            assert_eq!(
                blanked(&body),
                r#"{"message":"token: ** redacted **\nhost: b","code":"X"}"#,
                "{form}"
            );
        }
    }

    #[test]
    fn bodies_without_the_secret_are_left_alone() {
        for body in [
            "",
            "%",
            "&#",
            "\\u00",
            "&#99999999;",
            "\\uD83D",
            // Seven bytes of it: no piece.
            "IQoJb3J",
            "x IQoJb3J ab/cd+e",
        ] {
            assert_eq!(blank(body.as_bytes(), &[TOKEN.as_bytes()]), None, "{body}");
        }
        assert_eq!(blank(b"anything", &[b""]), None);
        assert_eq!(blank(b"anything", &[]), None);
    }

    #[test]
    fn every_occurrence_of_every_secret_goes() {
        let body = format!("a {TOKEN} b KEY-1 c {} d", TOKEN.replace('+', "%2B"));
        let out = blank(body.as_bytes(), &[TOKEN.as_bytes(), b"KEY-1"]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a ** redacted ** b ** redacted ** c ** redacted ** d"
        );
    }

    const LONG_TOKEN: &str = "IQoJb3JpZ2luX2Vj+ab/cd+ef/gh0123456789ZYXWVU==";

    #[test]
    fn pieces_of_the_secret_are_blanked_however_written() {
        const LONG: &str = LONG_TOKEN;
        for (start, end) in [(0, 8), (0, 20), (5, 13), (10, LONG.len()), (3, 40)] {
            let piece = &LONG[start..end];
            for form in [
                piece.to_owned(),
                piece.replace('+', "\\u002B").replace('/', "\\/"),
                piece.replace('+', "&#43;").replace('/', "%2F"),
                piece.replace('+', "%252B").replace('=', "\\u003d"),
            ] {
                let body = format!(r#"{{"message":"saw [{form}] and [{form}]","code":"X"}}"#);
                let out = blank(body.as_bytes(), &[LONG.as_bytes()]).unwrap();
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    r#"{"message":"saw [** redacted **] and [** redacted **]","code":"X"}"#,
                    "{form}"
                );
            }
        }
        // Seven bytes are not told from a word.
        assert_eq!(blank(b"saw [IQoJb3J]", &[LONG.as_bytes()]), None);
    }

    /// AWS's documented example of a session token: real ones hold a run
    /// of slashes too.
    const EXAMPLE: &str = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQW\
        LWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2w\
        UE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVq\
        r7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==";

    #[test]
    fn runs_of_a_repeated_character_are_no_piece() {
        for body in [
            "<html><!-- //////////////////////// --></html>",
            r#"{"message":"bad path \/\/\/\/\/\/\/\/\/\/"}"#,
            "AAAAAAAAAAAAAAAA ========",
        ] {
            let secret = format!("{EXAMPLE}AAAAAAAAAAAA==========");
            assert_eq!(blank(body.as_bytes(), &[secret.as_bytes()]), None, "{body}");
        }
        // A piece across the run is blanked whole, escaped or not.
        for quoted in [
            "EPT//////////wEXAM",
            "EPT\\/\\/\\/\\/\\/\\/\\/\\/\\/\\/wEXAM",
        ] {
            let body = format!("saw [{quoted}] there");
            let out = blank(body.as_bytes(), &[EXAMPLE.as_bytes()]).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "saw [** redacted **] there"
            );
        }
    }

    #[test]
    fn a_long_run_of_slashes_in_a_piece_is_blanked_with_it() {
        // Pieces reach five slashes into a run from either side: a longer
        // run quoted inside a piece left its middle between two blanks.
        let token =
            "IQoJb3JpZ2luX2VjEabcdefghij0123456789//////////////wEaCXVzLWVhc3QtMSJGMEQCIG==";
        let piece = &token[30..60];
        for quoted in [piece.to_owned(), piece.replace('/', "\\/")] {
            let body = format!("saw [{quoted}] there");
            let out = blank(body.as_bytes(), &[token.as_bytes()]).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "saw [** redacted **] there",
                "{quoted}"
            );
        }
    }

    #[test]
    fn finds_side_by_side_make_one_blank() {
        let out = blank(b"[abcabc]", &[b"abc"]).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "[** redacted **]");
    }

    #[test]
    fn a_short_term_keys_public_prefix_is_no_piece_of_it() {
        const KEY: &str = "bedrock-api-key-YmVkcm9jay5hbWF6b25hd3MuY29tLz9BY3Rpb249Q2FsbA==";
        let body = "bedrock-runtime refused: bedrock-api-key-x";
        assert_eq!(blank(body.as_bytes(), &[KEY.as_bytes()]), None);
        let body = format!("saw {} and {KEY}.", &KEY[..30]);
        let out = blank(body.as_bytes(), &[KEY.as_bytes()]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "saw bedrock-api-key-** redacted ** and ** redacted **."
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// One character written as itself or as one of the escapes an
        /// encoder may choose for it.
        fn written(c: u8) -> impl Strategy<Value = String> {
            let code = u32::from(c);
            let forms = vec![
                (c as char).to_string(),
                format!("\\u{code:04X}"),
                format!("\\u{code:04x}"),
                format!("&#{code};"),
                format!("&#x{code:X};"),
                format!("%{code:02X}"),
                format!("%{code:02x}"),
                format!("%25{code:02X}"),
                format!("\\\\u{code:04x}"),
            ];
            proptest::sample::select(forms)
        }

        fn base64_token() -> impl Strategy<Value = String> {
            "[A-Za-z0-9+/]{16,200}={0,2}"
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Whatever the token and however each of its characters is
            /// written, it is blanked and the text around it kept.
            #[test]
            fn any_mix_of_escapes_is_blanked(
                (token, forms) in base64_token().prop_flat_map(|t| {
                    let forms: Vec<_> = t.bytes().map(written).collect();
                    (Just(t), forms)
                }),
                before in "[a-zA-Z0-9 :\\n\"{}]{0,40}",
                after in "[ \\n\"{},;]{0,40}",
            ) {
                let body = format!("{before}{}{after}", forms.concat());
                let out = blank(body.as_bytes(), &[token.as_bytes()]).unwrap();
                let out = String::from_utf8(out).unwrap();
                prop_assert_eq!(out, format!("{before}** redacted **{after}"));
            }

            /// Any piece of 8 bytes or more, however written, is blanked and
            /// the text around it kept (unless some 8 bytes of it repeat a
            /// few characters: see `runs_of_a_repeated_character_are_no_piece`).
            #[test]
            fn any_piece_in_any_mix_of_escapes_is_blanked(
                (token, start, len, forms) in base64_token().prop_flat_map(|t| {
                    let n = t.len();
                    (Just(t), 0..n - 8).prop_flat_map(move |(t, start)| {
                        (Just(t), Just(start), 8..=n - start)
                    }).prop_flat_map(|(t, start, len)| {
                        let forms: Vec<_> = t.bytes().skip(start).take(len).map(written).collect();
                        (Just(t), Just(start), Just(len), forms)
                    })
                }),
                before in "[ :\\n\"{}]{0,40}",
                after in "[ \\n\"{},;]{0,40}",
            ) {
                let piece = &token.as_bytes()[start..start + len];
                prop_assume!(piece.windows(8).all(|w| {
                    w.iter().collect::<std::collections::HashSet<_>>().len() >= 4
                }));
                let body = format!("{before}{}{after}", forms.concat());
                let out = blank(body.as_bytes(), &[token.as_bytes()]);
                let out = String::from_utf8(out.unwrap_or_default()).unwrap();
                prop_assert_eq!(out, format!("{before}** redacted **{after}"), "{}..{}", start, start + len);
            }

            /// Arbitrary bytes never panic, and what comes back does not
            /// hold the secret as it is. (Secrets of characters not in
            /// the blank's own text.)
            #[test]
            fn arbitrary_bodies_never_panic(
                body in prop::collection::vec(any::<u8>(), 0..256),
                secret in "[A-Z0-9+/=]{1,8}",
            ) {
                if let Some(out) = blank(&body, &[secret.as_bytes()]) {
                    prop_assert!(memmem::find(&out, secret.as_bytes()).is_none());
                }
            }
        }
    }
}
