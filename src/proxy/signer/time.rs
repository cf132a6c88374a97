//! The request time as SigV4 writes it (`YYYYMMDD'T'HHMMSS'Z'`, UTC),
//! formatted into a fixed buffer: no allocation, no time-zone database.

use std::time::{SystemTime, UNIX_EPOCH};

const SECONDS_PER_DAY: u64 = 86_400;

/// `X-Amz-Date` of one request, and the UTC day it falls on (the key scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmzDate {
    text: [u8; 16],
    day: u64,
}

impl AmzDate {
    /// `None` before 1970 or after 9999: no request is signed there, and
    /// the fixed-width format could not hold it.
    pub fn new(time: SystemTime) -> Option<Self> {
        let secs = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
        let day = secs / SECONDS_PER_DAY;
        let (year, month, date) = civil_from_days(day);
        if year > 9999 {
            return None;
        }
        let rest = secs % SECONDS_PER_DAY;
        let mut text = *b"00000000T000000Z";
        put(&mut text[0..4], year);
        put(&mut text[4..6], month);
        put(&mut text[6..8], date);
        put(&mut text[9..11], rest / 3600);
        put(&mut text[11..13], rest % 3600 / 60);
        put(&mut text[13..15], rest % 60);
        Some(Self { text, day })
    }

    /// `20150830T123600Z`.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits, `T` and `Z` are ever written.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    /// `20150830`: the date of the credential scope.
    pub fn date(&self) -> &str {
        &self.as_str()[..8]
    }

    /// Days since 1970-01-01, UTC.
    pub fn day(&self) -> u64 {
        self.day
    }
}

/// Writes `n` as zero-padded decimal digits filling `out`.
fn put(out: &mut [u8], mut n: u64) {
    for b in out.iter_mut().rev() {
        *b = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// (year, month, day) of a day count since 1970-01-01 in the proleptic
/// Gregorian calendar (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_like_rfc3339_for_every_kind_of_day() {
        // Leap days, century rules, month ends, the epoch and far future.
        let mut secs = 0u64;
        while secs < 253_402_300_799 {
            let t = UNIX_EPOCH + Duration::from_secs(secs);
            let rfc = humantime::format_rfc3339_seconds(t).to_string();
            let expected: String = rfc.chars().filter(|c| !matches!(c, '-' | ':')).collect();
            assert_eq!(AmzDate::new(t).unwrap().as_str(), expected, "{secs}");
            secs += 86_400 * 17 + 3_607;
        }
        let t = UNIX_EPOCH + Duration::from_secs(1_440_938_160);
        let d = AmzDate::new(t).unwrap();
        assert_eq!((d.as_str(), d.date()), ("20150830T123600Z", "20150830"));
        assert!(AmzDate::new(UNIX_EPOCH - Duration::from_secs(1)).is_none());
        assert!(AmzDate::new(UNIX_EPOCH + Duration::from_secs(253_402_300_800)).is_none());
    }
}
