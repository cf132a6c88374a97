//! Telling the operator why Bedrock refused a signature the sidecar made.
//!
//! The app gets the 403 as it came, but the cause is on the sidecar's
//! side: this node's clock (AWS refuses signatures more than five minutes
//! off its own), a custom endpoint's signing name, or a hop that rewrites
//! signed headers. The clock is told apart by the refusal's `Date`. Where
//! the sidecar calls STS, each refresh measures the clock already; with
//! keys from the container endpoint (EKS Pod Identity), IMDS or the
//! environment, nothing else does, and the refusal was the only sign.

use std::time::{Duration, SystemTime};

use aws_smithy_types::date_time::{DateTime, Format};
use http::{HeaderMap, Response, StatusCode};

use super::Proxy;
use crate::credentials::skew;

/// At most one line a minute about refused signatures: every request
/// meets the same refusal, and the app sees each one anyway.
const SIGNATURE_LOG_INTERVAL_S: u64 = 60;

/// A refusal measured this far off is the clock's: AWS's five minutes,
/// less the `Date` header's one-second resolution and a slow round trip.
const CLOCK_REFUSED: Duration = Duration::from_secs(290);

impl Proxy {
    /// Looks at each of Bedrock's answers to a signed request; costs a
    /// status compare and one load unless Bedrock refused the signature.
    /// `signer` is the (region, signing name) signed for.
    pub(super) fn note_signature_refusal<B>(
        &self,
        signer: Option<(&str, &str)>,
        response: &Response<B>,
    ) {
        let headers = response.headers();
        if response.status() != StatusCode::FORBIDDEN {
            if self.refusals.clock_refused() {
                // The first answer since: does the clock still disagree?
                if let Some(ahead) = self.measure_clock(headers) {
                    self.refusals
                        .set_clock_refused(ahead.abs() >= CLOCK_REFUSED.as_secs_f64());
                }
            }
            return;
        }
        let Some(error) =
            super::headers::aws_error_among(headers, super::headers::SIGNATURE_ERRORS)
        else {
            return;
        };
        let ahead = self
            .measure_clock(headers)
            .filter(|s| s.abs() >= CLOCK_REFUSED.as_secs_f64());
        self.refusals.set_clock_refused(ahead.is_some());
        let now = crate::clock::unix_seconds(self.clock.now()) as u64;
        if !self
            .refusals
            .signature_log_due(now, SIGNATURE_LOG_INTERVAL_S)
        {
            return;
        }
        let (region, signing_name) = signer.unwrap_or(("-", "-"));
        match ahead {
            Some(ahead) => tracing::warn!(
                error,
                region,
                signing_name,
                skew_s = ahead.round(),
                "Bedrock refused the sidecar's signature because this node's clock is more than \
                 5 minutes off AWS's (skew_s, positive: the node is ahead, measured from the \
                 refusal's Date; bedrock_broker_clock_skew_seconds follows it): check the node's \
                 NTP synchronisation; the 403 goes to the app as it came (at most one such line \
                 a minute)"
            ),
            None => tracing::warn!(
                error,
                region,
                signing_name,
                "Bedrock refused the sidecar's signature: a custom endpoint may need \
                 --signing-name, or something between the sidecar and Bedrock rewrites signed \
                 headers; the 403 goes to the app as it came (at most one such line a minute)"
            ),
        }
    }

    /// This node's clock minus the answer's `Date`, in seconds, exported
    /// as `clock_skew_seconds`; `None` without a valid `Date`.
    fn measure_clock(&self, headers: &HeaderMap) -> Option<f64> {
        let server = server_date(headers)?;
        let ahead = skew::seconds(self.clock.now(), server);
        self.metrics.clock_skew.set(ahead);
        Some(ahead)
    }
}

/// The time an answer's `Date` header gives, if it is a valid HTTP date.
fn server_date(headers: &HeaderMap) -> Option<SystemTime> {
    let date = headers.get(http::header::DATE)?.to_str().ok()?;
    let date = DateTime::from_str(date, Format::HttpDate).ok()?;
    SystemTime::try_from(date).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_date_is_read_only_when_it_is_one() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::DATE, v.parse().unwrap());
            server_date(&h)
        };
        assert_eq!(
            with("Mon, 07 Dec 2026 18:30:57 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_668_257))
        );
        assert_eq!(with("yesterday"), None);
        assert_eq!(with(""), None);
        assert_eq!(server_date(&HeaderMap::new()), None);
    }
}
