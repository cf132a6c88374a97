//! Errors as one line for the people who read them.

use std::error::Error;

/// `e` and each of its causes, outermost first, joined by `": "`. The
/// AWS SDK's `DisplayErrorContext` appends the error's `Debug` form as
/// well, a dump of nested structs that repeats the same causes.
pub fn with_causes(e: &(dyn Error + 'static)) -> String {
    with_causes_described(e, |err| err.to_string())
}

/// [`with_causes`], each error (`e` and each cause) written by `describe`:
/// for a library error whose own text says more than should be repeated.
pub fn with_causes_described(
    e: &(dyn Error + 'static),
    describe: impl Fn(&(dyn Error + 'static)) -> String,
) -> String {
    let mut text = describe(e);
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&describe(cause));
        source = cause.source();
    }
    text
}

/// `text` on one line: control characters (line breaks included) as
/// escapes, so that a message from elsewhere (an STS error, a gateway's
/// page) cannot start a line of its own in a text log, where collectors
/// read it as another record.
pub fn one_line(text: &str) -> String {
    // Unicode's line and paragraph separators end a line for some readers.
    let breaks = |c: char| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}');
    if !text.chars().any(breaks) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if breaks(c) {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A parser's message (`invalid type: string "...", expected ...`) with
/// any quoted string longer than a word described instead of repeated:
/// a value in the wrong place may be a secret (a key pasted where an
/// object goes), and the message reaches logs and the one who sent it.
pub fn without_long_strings(text: &str) -> String {
    const LONGEST_SHOWN: usize = 16;
    const OPEN: &str = "string \"";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(OPEN) {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let quoted = &from[OPEN.len()..];
        // Serde writes the string with `{:?}`: a `"` inside is escaped.
        let mut escaped = false;
        let end = quoted.char_indices().find_map(|(i, c)| {
            let closes = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            closes.then_some(i)
        });
        let Some(end) = end else {
            out.push_str(from);
            return out;
        };
        let chars = quoted[..end].chars().count();
        if chars > LONGEST_SHOWN {
            out.push_str(&format!("a string of {chars} characters"));
        } else {
            out.push_str(&from[..OPEN.len() + end + 1]);
        }
        rest = &quoted[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_strings_a_parser_quotes_are_described() {
        assert_eq!(
            without_long_strings(
                r#"env[0].valueFrom: invalid type: string "SECRET\"SECRETSECRET", expected EnvVarSource at line 1"#
            ),
            "env[0].valueFrom: invalid type: a string of 20 characters, expected EnvVarSource at line 1"
        );
        let short = r#"invalid value: string "Alwayz", expected one of Always"#;
        assert_eq!(without_long_strings(short), short);
        assert_eq!(without_long_strings(r#"string "cut"#), r#"string "cut"#);
    }

    #[test]
    fn control_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(one_line("a\nb\r\tc é"), "a\\nb\\r\\tc é");
        assert_eq!(one_line("\u{1b}[31m"), "\\u{1b}[31m");
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(one_line("a\u{2028}b"), "a\\u{2028}b");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("dispatch failure")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn every_cause_once_and_no_debug_form() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "tcp connect error",
        ));
        assert_eq!(with_causes(&e), "dispatch failure: tcp connect error");
    }
}
