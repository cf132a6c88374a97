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

#[cfg(test)]
mod tests {
    use super::*;

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
