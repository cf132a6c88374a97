//! A string that never shows itself in `Debug` or `Display`, and the
//! blanking of security tokens that AWS quotes back in signature errors.

use std::collections::HashSet;
use std::fmt;

/// Holds a secret (secret key, session token, bearer token, web identity
/// token). Formatting prints `** redacted **`; only [`Secret::expose`] gives
/// the value, so every place a secret leaves the type is greppable.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

const TOKEN_NAME: &[u8] = b"x-amz-security-token";
/// What stands where a secret was.
pub(crate) const REDACTED: &str = "** redacted **";

/// Whether `b` ends a token value: tokens are base64 (or its URL
/// encoding), so any quote, escape, separator or whitespace ends one.
fn ends_value(b: u8) -> bool {
    matches!(b, b'\\' | b'\'' | b'"' | b'&' | b',' | b';' | b'<') || b.is_ascii_whitespace()
}

/// Whether `c` may stand in a token (base64, base64url).
fn in_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_')
}

/// The length of the token value `rest` starts with. An escape of a
/// token's character (JSON's `\/` and `\u002B`, HTML's `&#43;`) is
/// still the token; any other escape ends it.
fn value_len(rest: &[u8]) -> usize {
    let mut n = 0;
    while n < rest.len() {
        match escape_at(&rest[n..]) {
            Some((c, len)) if in_token(c) => n += len,
            _ if ends_value(rest[n]) => break,
            _ => n += 1,
        }
    }
    n
}

/// The length of what separates a token's label from its value: `:` or
/// `=`, with blanks either side (`X-Amz-Security-Token : …`), and the
/// quotes of a JSON member (`"x-amz-security-token": "…"`, or `\"` in a
/// string); `None` when the label is not followed by one.
fn separator_len(s: &[u8]) -> Option<usize> {
    let blanks = |s: &[u8]| s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
    let quote = |s: &[u8]| match s {
        [b'\\', b'"', ..] => 2,
        [b'"' | b'\'', ..] => 1,
        _ => 0,
    };
    let mut n = quote(s);
    n += blanks(&s[n..]);
    if !matches!(s.get(n), Some(b':' | b'=')) {
        return None;
    }
    n += 1;
    n += blanks(&s[n..]);
    Some(n + quote(&s[n..]))
}

/// Blanks the value after every `x-amz-security-token:` (or `=`), in any
/// letter case, whether it stands in a header line, a query string or a
/// JSON object.
pub fn redact_tokens(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let rest = &body[i..];
        let is_name = rest.len() > TOKEN_NAME.len()
            && rest[..TOKEN_NAME.len()].eq_ignore_ascii_case(TOKEN_NAME);
        if !is_name {
            out.push(body[i]);
            i += 1;
            continue;
        }
        let name = TOKEN_NAME.len();
        let Some(separator) = separator_len(&rest[name..]) else {
            out.extend_from_slice(&rest[..name]);
            i += name;
            continue;
        };
        let j = name + separator;
        out.extend_from_slice(&rest[..j]);
        // Blanked already, by the exact token (`proxy::blank`).
        let value = match rest[j..].starts_with(REDACTED.as_bytes()) {
            true => 0,
            false => value_len(&rest[j..]),
        };
        if value > 0 {
            out.extend_from_slice(REDACTED.as_bytes());
        }
        i += j + value;
    }
    out
}

/// The ASCII character an escape at the start of `s` stands for, and the
/// escape's length: JSON's `\uXXXX`, `\/`, `\\` and `\"`, a URL's `%XX`,
/// and HTML's character references. Only ASCII: the secrets blanked are.
pub(crate) fn escape_at(s: &[u8]) -> Option<(u8, usize)> {
    let (value, len) = match s.first()? {
        b'\\' => match s.get(1)? {
            b'u' => (hex(s.get(2..6)?)?, 6),
            &c @ (b'/' | b'\\' | b'"') => (u32::from(c), 2),
            _ => return None,
        },
        b'%' => (hex(s.get(1..3)?)?, 3),
        b'&' => entity(s)?,
        _ => return None,
    };
    let byte = u8::try_from(value).ok().filter(u8::is_ascii)?;
    Some((byte, len))
}

/// An HTML character reference at the start of `s` (which starts `&`):
/// its code point and length. Named ones: those of characters a secret
/// (base64, base64url) holds, and of the escapes' own introducers.
fn entity(s: &[u8]) -> Option<(u32, usize)> {
    const NAMED: [(&[u8], u8); 8] = [
        (b"&plus;", b'+'),
        (b"&sol;", b'/'),
        (b"&equals;", b'='),
        (b"&lowbar;", b'_'),
        (b"&amp;", b'&'),
        (b"&bsol;", b'\\'),
        (b"&percnt;", b'%'),
        (b"&quot;", b'"'),
    ];
    if let Some((name, c)) = NAMED.iter().find(|(name, _)| s.starts_with(name)) {
        return Some((u32::from(*c), name.len()));
    }
    let rest = s.strip_prefix(b"&#")?;
    let (digits, radix, skip) = match rest.first()? {
        b'x' | b'X' => (&rest[1..], 16, 3),
        _ => (rest, 10, 2),
    };
    // Seven digits hold any code point; more are leading zeros at best.
    let n = digits
        .iter()
        .take(8)
        .take_while(|c| (**c as char).is_digit(radix))
        .count();
    if n == 0 || n > 7 || digits.get(n) != Some(&b';') {
        return None;
    }
    let text = std::str::from_utf8(&digits[..n]).ok()?;
    Some((u32::from_str_radix(text, radix).ok()?, skip + n + 1))
}

/// Two or four hex digits' value.
fn hex(digits: &[u8]) -> Option<u32> {
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// [`redact_tokens`] for text: a signature error's message from STS or
/// Bedrock, before it is logged, served on `/readyz` or printed.
pub fn redact_token_text(text: &str) -> String {
    // Only ASCII bytes end a blanked value, so the text stays UTF-8.
    String::from_utf8_lossy(&redact_tokens(text.as_bytes())).into_owned()
}

/// `text` with `secret` blanked wherever it occurs, and anything shaped
/// like a JWT too (a gateway may quote part of a token it was sent): for
/// errors of calls that presented a web identity token.
pub fn without_token(text: &str, secret: &str) -> String {
    // A token too short to be a real one would blank ordinary words.
    if secret.len() < 16 {
        without_jwts(text)
    } else {
        without_jwts(&text.replace(secret, REDACTED))
    }
}

/// Every run of 8 bytes or more taken from some secrets, found in a text:
/// a parser's or a relay's message may quote a piece of a secret, cut
/// anywhere and glued to anything (`token=<it>.`), where neither the
/// whole secret nor its label is there to find. Shorter pieces are not
/// told from ordinary words; a base64 run of eight is, unless it repeats
/// a few characters: real session tokens hold `//////////`, which a
/// page's or a path's text may too, so such a window is no piece on its
/// own. Between two pieces it is the secret's own run, and blanked with
/// them.
pub(crate) struct Pieces {
    /// Windows of 8 with [`DISTINCT`] different bytes or more.
    pieces: HashSet<u64, foldhash::fast::RandomState>,
    /// The others (a few, from runs of a repeated character).
    repeats: HashSet<u64, foldhash::fast::RandomState>,
}

/// How long a piece of a secret is blanked on its own.
const PIECE: usize = 8;

/// How many different bytes a piece has at least.
const DISTINCT: usize = 4;

impl Pieces {
    pub fn of<'a>(secrets: impl IntoIterator<Item = &'a [u8]> + Clone) -> Self {
        // foldhash, not SipHash: every error answer of a signed request
        // builds one (a session token's ~1,000 pieces) and looks up each
        // 8 bytes of the body in every layer of escapes; what it holds
        // is the secret's, not chosen by whoever wrote the body.
        let windows = secrets
            .clone()
            .into_iter()
            .map(|s| s.len().saturating_sub(PIECE - 1));
        let mut pieces = HashSet::with_capacity_and_hasher(windows.sum(), Default::default());
        let mut repeats = HashSet::default();
        for window in secrets.into_iter().flat_map(|s| s.windows(PIECE)) {
            let Some(word) = word(window) else { continue };
            match distinct(window) >= DISTINCT {
                true => pieces.insert(word),
                false => repeats.insert(word),
            };
        }
        Self { pieces, repeats }
    }

    /// Where in `bytes` (`start..end`) runs of pieces are: overlapping
    /// and touching pieces make one run, and so do two pieces with only
    /// windows of the secret's repeated characters between them.
    pub fn runs(&self, bytes: &[u8]) -> Vec<(usize, usize)> {
        let mut runs: Vec<(usize, usize)> = Vec::new();
        if self.pieces.is_empty() {
            return runs;
        }
        for (at, window) in bytes.windows(PIECE).enumerate() {
            if word(window).is_some_and(|w| self.pieces.contains(&w)) {
                match runs.last_mut() {
                    Some((_, end)) if *end >= at || self.bridged(bytes, *end, at) => {
                        *end = at + PIECE
                    }
                    _ => runs.push((at, at + PIECE)),
                }
            }
        }
        runs
    }

    /// Whether every window over `bytes[end..at]`, the gap between a run
    /// and the next piece, is one of the secret's repeats.
    fn bridged(&self, bytes: &[u8], end: usize, at: usize) -> bool {
        !self.repeats.is_empty()
            && (end + 1 - PIECE..at)
                .all(|p| word(&bytes[p..p + PIECE]).is_some_and(|w| self.repeats.contains(&w)))
    }
}

/// How many different bytes `piece` holds.
fn distinct(piece: &[u8]) -> usize {
    (0..piece.len())
        .filter(|&i| !piece[..i].contains(&piece[i]))
        .count()
}

/// A piece as one integer: looked up without hashing a slice.
fn word(piece: &[u8]) -> Option<u64> {
    piece.try_into().ok().map(u64::from_ne_bytes)
}

/// `text` with each of `secrets` of 8 bytes or more, and every piece of
/// 8 bytes or more that is also part of one ([`Pieces`]), blanked: for a
/// credential source's errors. (A shorter secret, a test setup's token,
/// would blank ordinary letters.)
pub fn without_fragments_of(text: &str, secrets: &[&str]) -> String {
    let mut spans = Pieces::of(secrets.iter().map(|s| s.as_bytes())).runs(text.as_bytes());
    for secret in secrets.iter().filter(|s| s.len() >= PIECE) {
        spans.extend(text.match_indices(secret).map(|(at, s)| (at, at + s.len())));
    }
    if spans.is_empty() {
        return text.to_owned();
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    for (i, (start, end)) in spans.into_iter().enumerate() {
        // A secret that is not ASCII may match inside a character: the
        // blank takes the whole character.
        let start = (0..=start)
            .rev()
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        let end = (end..=text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        // Overlapping or touching the blank before it: that blank grows
        // (as in the proxy's `blank`).
        if i > 0 && start <= done {
            done = done.max(end);
            continue;
        }
        out.push_str(&text[done..start]);
        out.push_str(REDACTED);
        done = end;
    }
    out.push_str(&text[done..]);
    out
}

/// The text of every `<tag>` element in an XML answer, found by its
/// tags (not parsed: the answer is one the SDK could not read): the
/// secrets a credentials answer carries, for [`without_fragments_of`].
pub fn xml_texts<'a>(answer: &'a [u8], tags: &[&str]) -> Vec<&'a str> {
    let mut found = Vec::new();
    for tag in tags {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let mut rest = answer;
        while let Some(start) = memchr::memmem::find(rest, open.as_bytes()) {
            let inner = &rest[start + open.len()..];
            let Some(end) = memchr::memmem::find(inner, close.as_bytes()) else {
                break;
            };
            if let Ok(text) = std::str::from_utf8(&inner[..end]) {
                found.push(text.trim());
            }
            rest = &inner[end..];
        }
    }
    found
}

/// `text` with anything shaped like a secret blanked: a URL's user
/// information, a JWT, a Bedrock API key. For messages that quote a
/// value given to the wrong setting (a key pasted into `--region`).
pub fn without_secret_shapes(text: &str) -> String {
    without_url_credentials(&without_api_keys(&without_jwts(text)))
}

/// `text` with every Bedrock API key (`ABSK...`, `bedrock-api-key-...`)
/// blanked, from its prefix to the end of its base64.
fn without_api_keys(text: &str) -> String {
    let key_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let at = [rest.find("ABSK"), rest.find("bedrock-api-key-")]
            .into_iter()
            .flatten()
            .min();
        let Some(at) = at else { break };
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let len = from.find(|c| !key_char(c)).unwrap_or(from.len());
        // `ABSK` alone, or in a short word, is no key; glued to what
        // precedes it, a long one still is.
        if len >= 20 {
            out.push_str(REDACTED);
        } else {
            out.push_str(&from[..len.max(1)]);
        }
        rest = &from[len.max(1)..];
    }
    out.push_str(rest);
    out
}

/// `text` with every run shaped like a JWT (a web identity token, whole
/// or from its header on) blanked.
pub fn without_jwts(text: &str) -> String {
    // A JWT's header is base64url of `{"`: it starts `eyJ`. A run of its
    // alphabet with a dot in it, long enough not to be a word, is one.
    let jwt_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("eyJ") {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let len = from.find(|c| !jwt_char(c)).unwrap_or(from.len());
        let run = &from[..len];
        // Inside a word (`monkeyJump.example`) it is not a token's start;
        // after `=`, `_`, `-` or `.` (`WebIdentityToken=eyJ...`) it is.
        let starts_word = !out.ends_with(|c: char| c.is_ascii_alphanumeric());
        if starts_word && len >= 16 && run.contains('.') {
            out.push_str(REDACTED);
        } else {
            out.push_str(run);
        }
        rest = &from[len..];
    }
    out.push_str(rest);
    out
}

/// `text` with the user information of every URL in it (`user:password@`)
/// blanked: a URL given with credentials is quoted back by parsers and
/// by aws-config's errors. Everything from `://` to the last `@` on the
/// same line goes: a password not percent-encoded may hold `/`, `#`, `?`,
/// quotes or spaces (an `@` later on the line blanks more, which is the
/// safe side).
pub fn without_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, from) = rest.split_at(at + 3);
        out.push_str(before);
        let end = from.find(['\n', '\r']).unwrap_or(from.len());
        let authority = &from[..end];
        match authority.rfind('@') {
            Some(user_end) => {
                out.push_str(REDACTED);
                out.push_str(&authority[user_end..]);
            }
            None => out.push_str(authority),
        }
        rest = &from[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_secrets_are_blanked_in_quoted_values() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl";
        let text = format!(
            "\"https://u:hunter2@h\" is a URL; \"ABSKQmVkcm9ja0FQSUtleS1hYmNkZWYxMjM0\" and \"bedrock-api-key-YmVkcm9jay5hbWF6b25hd3MuY29t\" and \"{jwt}\" are not regions; ABSK is short, FABSKxxxxxxxxxxxxxxxxxxxxx inside a word"
        );
        let out = without_secret_shapes(&text);
        for secret in ["hunter2", "QmVkcm9ja0FQ", "YmVkcm9jay5h", "c2lnbmF0dXJl"] {
            assert!(!out.contains(secret), "{out}");
        }
        assert!(
            out.contains("ABSK is short, F** redacted ** inside a word"),
            "{out}"
        );
        assert!(
            out.contains("is a URL") && out.contains("are not regions"),
            "{out}"
        );
    }

    #[test]
    fn pieces_of_a_secret_a_parser_quotes_are_blanked() {
        let answer = b"<Credentials><SecretAccessKey>&#xSECRETSECRETmarker0123;</SecretAccessKey>\
            <SessionToken> FwoGZXIvYXdzEBYaDH+abc/def </SessionToken></Credentials>";
        let secrets = xml_texts(answer, &["SecretAccessKey", "SessionToken"]);
        assert_eq!(
            secrets,
            ["&#xSECRETSECRETmarker0123;", "FwoGZXIvYXdzEBYaDH+abc/def"]
        );
        let message = "invalid XML escape: expected numeric escape in base 16; got: SECRETSECRETmarker0123 (at FwoGZXIvYXdz)";
        let out = without_fragments_of(message, &secrets);
        assert!(
            !out.contains("SECRETSECRET") && !out.contains("FwoGZXIv"),
            "{out}"
        );
        assert!(
            out.starts_with(
                "invalid XML escape: expected numeric escape in base 16; got: ** redacted **"
            ),
            "{out}"
        );
        // Words of the message itself stay, short pieces too.
        assert_eq!(
            without_fragments_of("got: Fwo escape", &secrets),
            "got: Fwo escape"
        );
        // Glued to punctuation or a label, a piece is blanked all the same.
        let token = "FwoGZXIvYXdzEBYaDH+abc/def0123456789xyz";
        for message in [
            format!("The security token included in the request is invalid: {token}."),
            format!("rejected token={token}"),
            format!("é{token}é"),
        ] {
            let out = without_fragments_of(&message, &[token]);
            assert!(
                !out.contains("FwoGZXIv") && !out.contains("56789xyz"),
                "{out}"
            );
            assert!(out.contains(REDACTED), "{out}");
        }
        assert_eq!(
            without_fragments_of("rejected token=FwoGZXIvYXdzEBYaDH.", &[token]),
            "rejected token=** redacted **."
        );
        // Secrets that are not ASCII: blanked whole, no character cut.
        let accented = "abcdefghé12345678";
        let out = without_fragments_of(
            "xx abcdefghé12345678 yy",
            &["abcdefgh\u{e9}", "\u{e9}12345678"],
        );
        assert_eq!(out, "xx ** redacted ** yy", "{accented}");
        assert_eq!(without_fragments_of("anything", &["short"]), "anything");
        // A run of slashes is in real tokens and in ordinary text.
        let real = "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQW";
        assert_eq!(
            without_fragments_of("no route: //////////////", &[real]),
            "no route: //////////////"
        );
        assert_eq!(
            without_fragments_of("got EPT//////////wEXAM.", &[real]),
            "got ** redacted **."
        );
        assert_eq!(
            xml_texts(b"<SessionToken>cut", &["SessionToken"]),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn a_long_run_of_slashes_in_the_token_is_blanked_with_it() {
        // Pieces reach five slashes into a run from either side, so a run
        // longer than ten (the character next to it a slash too), or one
        // beside repeated characters, left its middle between two blanks;
        // and a token ending in a few repeated characters kept them.
        for token in [
            "IQoJb3JpZ2luX2VjEabcdefghij0123456789////////////wEaCXVzLWVhc3QtMSJGMEQCIG==",
            "IQoJb3JpZ2luX2VjEabcdefghijxx//////////xxwEaCXVzLWVhc3QtMSJGMEQCIG==",
            "IQoJb3JpZ2luX2VjEabcdefghij0123456789//////////wEaCXVzLWVhc3AAAAAAAA==",
        ] {
            let said = format!("The security token '{token}' included in the request is invalid.");
            assert_eq!(
                without_fragments_of(&said, &[token]),
                "The security token '** redacted **' included in the request is invalid.",
                "{token}"
            );
        }
        // A piece across the run, cut from the token, is one blank too:
        // not found whole, the run between its pieces must be bridged.
        for token in [
            "IQoJb3JpZ2luX2VjEabcdefghij0123456789////////////wEaCXVzLWVhc3QtMSJGMEQCIG==",
            "IQoJb3JpZ2luX2VjEabcdefghijxx//////////xxwEaCXVzLWVhc3QtMSJGMEQCIG==",
            "IQoJb3JpZ2luX2VjEabcdefghij0123456789//////////////wEaCXVzLWVhc3QtMSJGMEQCIG==",
        ] {
            let piece = &token[24..token.len() - 10];
            assert_eq!(
                without_fragments_of(&format!("saw [{piece}]"), &[token]),
                "saw [** redacted **]",
                "{piece}"
            );
        }
        // A secret of repeats alone has no piece; found whole twice side
        // by side, it is one blank. One shorter than a piece is left.
        assert_eq!(
            without_fragments_of("got ab=ab=ab=ab=ab=ab=.", &["ab=ab=ab="]),
            "got ** redacted **."
        );
        assert_eq!(
            without_fragments_of("the key is k and k", &["k"]),
            "the key is k and k"
        );
    }

    #[test]
    fn user_information_in_urls_is_blanked() {
        assert_eq!(
            without_url_credentials(
                "invalid URI: http://u:s3cret@10.1.2.3/creds\nand \"https://a:b@c@h:1?x\", ftp://h/p"
            ),
            "invalid URI: http://** redacted **@10.1.2.3/creds\nand \"https://** redacted **@h:1?x\", ftp://h/p"
        );
        // Two on a line: blanked up to the last `@`, the safe side.
        assert_eq!(
            without_url_credentials("http://u:p@a and http://v:q@b"),
            "http://** redacted **@b"
        );
        for password in [
            "Top/S3cret",
            "Top#S3cret",
            "Top?S3cret",
            "Top\"S3cret",
            "Top S3\tcret",
        ] {
            let text = format!("\"https://user:{password}@h\" has a port that is not one");
            assert_eq!(
                without_url_credentials(&text),
                "\"https://** redacted **@h\" has a port that is not one"
            );
        }
        assert_eq!(without_url_credentials("no URL, a@b"), "no URL, a@b");
    }

    #[test]
    fn a_token_quoted_whole_or_in_part_is_blanked() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2ln";
        let out = without_token(&format!("rejected {jwt} and {}", &jwt[..30]), jwt);
        assert_eq!(out, "rejected ** redacted ** and ** redacted **");
        // Glued to what named it.
        for glue in ["WebIdentityToken=", "token_", "a-", "x."] {
            let out = without_token(&format!("{glue}{}", &jwt[..30]), "");
            assert_eq!(out, format!("{glue}** redacted **"));
        }
        // An opaque token is blanked where it stands whole.
        assert_eq!(
            without_token(
                "bad token opaque-token-0123456789 here",
                "opaque-token-0123456789"
            ),
            "bad token ** redacted ** here"
        );
        // Words that merely start alike stay, and so does text that only
        // holds a too-short "token".
        assert_eq!(without_token("eyJust a word.", "x"), "eyJust a word.");
        assert_eq!(
            without_token("see monkeyJump.example.com/eyJx", "abc"),
            "see monkeyJump.example.com/eyJx"
        );
    }

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("wJalrXUtnFEMI/K7MDENG");
        assert!(!format!("{s:?} {s}").contains("wJalr"));
        assert_eq!(s.expose(), "wJalrXUtnFEMI/K7MDENG");
    }

    #[test]
    fn token_values_are_blanked_wherever_they_are_quoted() {
        let body = br#"{"message":"The request signature we calculated does not match ...\n\nThe Canonical String for this request should have been\n'POST\n/model/m/converse\n\nhost:bedrock-runtime.us-east-1.amazonaws.com\nx-amz-date:20260101T000000Z\nx-amz-security-token:IQoJb3JpZ2luX2VjE/abc+def==\n\nhost;x-amz-date;x-amz-security-token\nabc'"}"#;
        let out = String::from_utf8(redact_tokens(body)).unwrap();
        assert!(!out.contains("IQoJ"), "{out}");
        assert!(
            out.contains(
                r"x-amz-security-token:** redacted **\n\nhost;x-amz-date;x-amz-security-token\n"
            ),
            "{out}"
        );
        let query = b"GET /?X-Amz-Security-Token=IQoJ%2Fabc&X-Amz-Date=1 x-amz-security-token";
        let out = String::from_utf8(redact_tokens(query)).unwrap();
        assert_eq!(
            out,
            "GET /?X-Amz-Security-Token=** redacted **&X-Amz-Date=1 x-amz-security-token"
        );
    }

    #[test]
    fn escaped_slashes_and_a_space_after_the_colon_do_not_end_the_blanking() {
        // JSON may escape `/` as `\/`, and a header line may put a space
        // after its colon: the rest of the token went out unblanked.
        let escaped = br#"{"message":"x-amz-security-token:IQoJabc\/def+ghi==\nhost:b"}"#;
        let out = String::from_utf8(redact_tokens(escaped)).unwrap();
        assert_eq!(
            out,
            r#"{"message":"x-amz-security-token:** redacted **\nhost:b"}"#
        );
        let spaced = b"x-amz-security-token: \tIQoJabc/def==\nhost:b";
        let out = String::from_utf8(redact_tokens(spaced)).unwrap();
        assert_eq!(out, "x-amz-security-token: \t** redacted **\nhost:b");
    }

    #[test]
    fn a_label_spaced_or_quoted_and_escaped_values_are_blanked_whole() {
        // Each once sent the client the token whole, or all of it after
        // its first escaped character.
        for body in [
            r"X-Amz-Security-Token : IQoJabc+def/ghi==\nhost:b",
            "x-amz-security-token\t=\tIQoJabc+def/ghi==\nhost:b",
            r#"{"x-amz-security-token": "IQoJabc+def/ghi==", "host": "b"}"#,
            r#"{"m":"{\"x-amz-security-token\":\"IQoJabc+def/ghi==\"}"}"#,
            r"x-amz-security-token:IQoJabc\u002Bdef\u002fghi\u003D\u003d\nhost:b",
            r"x-amz-security-token:IQoJabc&#43;def&#x2F;ghi&equals;&#61;\nhost:b",
            r"x-amz-security-token:IQoJabc&plus;def&sol;ghi%3D%3d\nhost:b",
        ] {
            let out = String::from_utf8(redact_tokens(body.as_bytes())).unwrap();
            assert!(!out.contains("IQoJ"), "{out}");
            assert!(!out.contains("ghi"), "{out}");
            assert!(out.contains("** redacted **"), "{out}");
            assert!(out.contains("host") || out.ends_with('}'), "{out}");
        }
        // Not a label: the name alone, or followed by other text.
        for body in [
            "x-amz-security-token",
            "x-amz-security-token;host",
            "x-amz-security-token  x",
        ] {
            assert_eq!(redact_tokens(body.as_bytes()), body.as_bytes());
        }
    }

    #[test]
    fn a_value_blanked_already_is_left_as_it_is() {
        let body = b"x-amz-security-token: ** redacted **\nhost:b";
        assert_eq!(redact_tokens(body), body);
    }

    #[test]
    fn messages_keep_their_text_around_the_blanked_token() {
        let message =
            "Signature expired … x-amz-security-token:IQoJ/Zé+1==\nhost:sts.amazonaws.com";
        assert_eq!(
            redact_token_text(message),
            "Signature expired … x-amz-security-token:** redacted **\nhost:sts.amazonaws.com"
        );
    }
}
