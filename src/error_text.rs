//! Errors as one line for the people who read them.

use std::error::Error;

/// `e` and each of its causes, outermost first, joined by `": "`. The
/// AWS SDK's `DisplayErrorContext` appends the error's `Debug` form as
/// well, a dump of nested structs that repeats the same causes.
pub fn with_causes(e: &(dyn Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
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

#[cfg(test)]
mod tests {
    use super::*;

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
