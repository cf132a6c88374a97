//! Value parsers shared by every setting, each failing with a
//! [`ParseError`] that quotes the value and says what is accepted.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The value is not of the expected kind.
    #[error("{value:?} is not {what}; accepted values: {accepted}")]
    NotA {
        value: String,
        what: &'static str,
        accepted: Cow<'static, str>,
    },
    /// Well formed, but refused for a reason of its own.
    #[error("{0}")]
    Refused(Cow<'static, str>),
}

impl ParseError {
    pub fn not_a(value: &str, what: &'static str, accepted: impl Into<Cow<'static, str>>) -> Self {
        Self::NotA {
            value: value.to_owned(),
            what,
            accepted: accepted.into(),
        }
    }

    pub fn refused(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Refused(reason.into())
    }
}

/// Longest duration any setting takes. Every one is a timeout, an interval
/// or a grace period, none of which means anything past a year; and a
/// deadline computed from a far larger one overflows the clock (a panic in
/// every connection).
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Largest count or size any setting takes (1 TiB as bytes). "No limit"
/// spelled as the largest number made a semaphore too large to build.
pub const MAX_COUNT: usize = 1 << 40;

pub fn duration(raw: &str) -> Result<Duration, ParseError> {
    match humantime::parse_duration(raw) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        Ok(_) => Err(ParseError::refused("must be at most 365d")),
        Err(_) => Err(ParseError::not_a(
            raw,
            "a duration",
            "a number with a unit: 500ms, 10s, 2m, 1h",
        )),
    }
}

/// A duration above zero.
pub fn positive_duration(raw: &str) -> Result<Duration, ParseError> {
    match duration(raw)? {
        d if d.is_zero() => Err(ParseError::refused("must be greater than zero")),
        d => Ok(d),
    }
}

/// How often something is polled: at least `min`, since a tiny interval
/// turns a background check into a busy loop.
pub fn interval(min: Duration) -> impl Fn(&str) -> Result<Duration, ParseError> {
    move |raw| at_least(duration(raw)?, min)
}

/// Like [`interval`], where `0s` switches the polling off (`None`).
pub fn optional_interval(min: Duration) -> impl Fn(&str) -> Result<Option<Duration>, ParseError> {
    move |raw| match duration(raw)? {
        d if d.is_zero() => Ok(None),
        d => at_least(d, min).map(Some),
    }
}

fn at_least(d: Duration, min: Duration) -> Result<Duration, ParseError> {
    if d < min {
        return Err(ParseError::refused(format!(
            "must be at least {}",
            humantime::format_duration(min)
        )));
    }
    Ok(d)
}

/// A duration where `0s` switches the feature off (`None`).
pub fn optional_duration(raw: &str) -> Result<Option<Duration>, ParseError> {
    duration(raw).map(|d| (!d.is_zero()).then_some(d))
}

pub fn addr(raw: &str) -> Result<SocketAddr, ParseError> {
    raw.parse()
        .map_err(|_| ParseError::not_a(raw, "an address", "IP:PORT, e.g. 127.0.0.1:9787"))
}

/// `true`/`false` and their usual spellings, in any case (as the AWS SDKs
/// read `AWS_USE_FIPS_ENDPOINT`).
pub fn bool(raw: &str) -> Result<bool, ParseError> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ParseError::not_a(
            raw,
            "a boolean",
            "true or false (also yes/no, on/off, 1/0)",
        )),
    }
}

/// A whole number above zero.
pub fn positive_count(raw: &str) -> Result<usize, ParseError> {
    match count(raw) {
        Ok(0) | Err(ParseError::NotA { .. }) => Err(ParseError::not_a(
            raw,
            "a positive number",
            "a whole number above 0",
        )),
        other => other,
    }
}

/// A whole number, zero included, up to [`MAX_COUNT`].
pub fn count(raw: &str) -> Result<usize, ParseError> {
    match raw.parse::<u128>() {
        Ok(n) if n <= MAX_COUNT as u128 => Ok(n as usize),
        Ok(_) => Err(ParseError::refused(format!("must be at most {MAX_COUNT}"))),
        Err(_) => Err(ParseError::not_a(raw, "a number", "a whole number")),
    }
}

/// A fraction strictly between 0 and 1.
pub fn fraction(raw: &str) -> Result<f64, ParseError> {
    match raw.parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        _ => Err(ParseError::not_a(
            raw,
            "a fraction",
            "a number strictly between 0 and 1, e.g. 0.5",
        )),
    }
}

pub fn path(raw: &str) -> Result<PathBuf, ParseError> {
    if raw.is_empty() {
        Err(ParseError::refused("is empty"))
    } else {
        Ok(PathBuf::from(raw))
    }
}

/// A comma-separated list; blanks are dropped.
pub fn list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A non-root UID.
pub fn uid(raw: &str) -> Result<i64, ParseError> {
    match raw.parse::<i64>() {
        Ok(uid) if (1..=i64::from(i32::MAX)).contains(&uid) => Ok(uid),
        _ => Err(ParseError::not_a(
            raw,
            "a non-root UID",
            "a whole number from 1 to 2147483647",
        )),
    }
}

/// `KEY=VALUE` items of a repeatable flag.
pub fn pairs<'a>(
    items: impl IntoIterator<Item = &'a String>,
) -> Result<BTreeMap<String, String>, ParseError> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_owned(), v.to_owned());
            }
            _ => return Err(ParseError::not_a(item, "a pair", "KEY=VALUE")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_ignore_case() {
        for raw in ["true", "TRUE", "Yes", "on", "1"] {
            assert_eq!(bool(raw), Ok(true), "{raw}");
        }
        for raw in ["false", "False", "NO", "off", "0"] {
            assert_eq!(bool(raw), Ok(false), "{raw}");
        }
        assert_eq!(
            bool("maybe").unwrap_err().to_string(),
            "\"maybe\" is not a boolean; accepted values: true or false (also yes/no, on/off, 1/0)"
        );
    }

    #[test]
    fn numbers_and_durations_past_their_use_are_refused() {
        assert_eq!(count("1099511627776"), Ok(MAX_COUNT));
        assert_eq!(positive_count("7"), Ok(7));
        for raw in [
            "1099511627777",
            "18446744073709551615",
            "99999999999999999999999",
        ] {
            assert_eq!(
                positive_count(raw).unwrap_err().to_string(),
                "must be at most 1099511627776"
            );
        }
        assert!(positive_count("0")
            .unwrap_err()
            .to_string()
            .contains("above 0"));
        assert!(count("-1")
            .unwrap_err()
            .to_string()
            .contains("a whole number"));
        assert_eq!(duration("365d"), Ok(MAX_DURATION));
        for raw in ["366d", "18446744073709551615s", "1000years"] {
            assert_eq!(
                duration(raw).unwrap_err().to_string(),
                "must be at most 365d"
            );
        }
    }

    #[test]
    fn durations_zero_and_positive() {
        assert_eq!(optional_duration("0s"), Ok(None));
        assert_eq!(optional_duration("2m"), Ok(Some(Duration::from_secs(120))));
        assert!(positive_duration("0s").is_err());
        assert!(duration("soon").unwrap_err().to_string().contains("10s"));
    }

    #[test]
    fn pairs_need_a_key() {
        let ok = ["a=b".to_owned(), " c = d".to_owned()];
        let map = pairs(&ok).unwrap();
        assert_eq!(map.get("c").map(String::as_str), Some(" d"));
        assert!(pairs(&["=x".to_owned()]).is_err());
        assert!(pairs(&["nothing".to_owned()]).is_err());
    }
}
