//! Telling the operator why Bedrock refused a signature the sidecar made.
//!
//! The app gets the 403 as it came, but the cause is on the sidecar's
//! side: this node's clock (AWS refuses signatures more than five minutes
//! off its own), a custom endpoint's signing name, or a hop that rewrites
//! signed headers. The clock is told apart by the refusal's `Date`
//! against the signing time, which is what AWS judged. Where
//! the sidecar calls STS, each refresh measures the clock already; with
//! keys from the container endpoint (EKS Pod Identity), IMDS or the
//! environment, nothing else does, and the refusal was the only sign.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, Response, StatusCode};

use super::Proxy;
use crate::credentials::skew;

/// At most one line a minute about refused signatures: every request
/// meets the same refusal, and the app sees each one anyway.
const SIGNATURE_LOG_INTERVAL_S: u64 = 60;

/// AWS refuses a signature made more than five minutes from its time of
/// receipt; the refusal's `Date`, truncated to the second, is at most a
/// second before that.
const TIME_REFUSED: Duration = Duration::from_secs(299);

/// Without the signing time (a bidirectional stream's), the skew alone
/// judges: five minutes less the `Date`'s second and a slow round trip.
const CLOCK_REFUSED: Duration = Duration::from_secs(290);

impl Proxy {
    /// Looks at each of Bedrock's answers to a signed request, signed at
    /// `signed_at` when known; costs a status compare and one load unless
    /// Bedrock refused the signature. `signer` is the (region, signing
    /// name) signed for.
    pub(super) fn note_signature_refusal<B>(
        &self,
        signer: Option<(&str, &str)>,
        signed_at: Option<SystemTime>,
        response: &Response<B>,
    ) {
        let headers = response.headers();
        let refused = if response.status() == StatusCode::FORBIDDEN {
            super::headers::aws_error_among(headers, super::headers::SIGNATURE_ERRORS)
        } else {
            None
        };
        let Some(error) = refused else {
            if self.refusals.clock_refused() {
                // The first signature accepted since one was refused for
                // the time (a 403 for anything else accepted it too): the
                // clock is measured once more, so the gauge shows it
                // mended, and no answer after this one pays for it.
                self.refusals.set_clock_refused(false);
                if let Some(server) = server_date(headers) {
                    let ahead = skew::seconds(self.clock.now(), server);
                    self.metrics.clock_skew.set(ahead);
                }
            }
            return;
        };
        let now = self.clock.now();
        let server = server_date(headers);
        if let Some(server) = server {
            self.metrics.clock_skew.set(skew::seconds(now, server));
        }
        let ahead = server.and_then(|server| refused_for_the_time(now, signed_at, server));
        self.refusals.set_clock_refused(ahead.is_some());
        let now_s = crate::clock::unix_seconds(now) as u64;
        if !self
            .refusals
            .signature_log_due(now_s, SIGNATURE_LOG_INTERVAL_S)
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
                "Bedrock refused the sidecar's signature as made more than 5 minutes from \
                 AWS's time: this node's clock is skew_s seconds off AWS's (positive: the node \
                 is ahead; measured from the refusal's Date, bedrock_broker_clock_skew_seconds \
                 follows it): check the node's NTP synchronisation; the 403 goes to the app as \
                 it came (at most one such line a minute)"
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
}

/// This node's clock minus AWS's, in seconds, when a signature made at
/// `signed_at` and refused by an answer dated `server`, read at `now`,
/// was refused for its time rather than for the signature itself.
fn refused_for_the_time(
    now: SystemTime,
    signed_at: Option<SystemTime>,
    server: SystemTime,
) -> Option<f64> {
    let ahead = skew::seconds(now, server);
    let for_the_time = match signed_at {
        // What AWS judged: its time of receipt against the signing time.
        // A node behind measures less than that by the request's way
        // there and back, which a large body on a slow link makes long.
        Some(at) => skew::seconds(at, server).abs() >= TIME_REFUSED.as_secs_f64(),
        None => ahead.abs() >= CLOCK_REFUSED.as_secs_f64(),
    };
    for_the_time.then_some(ahead)
}

/// The time an answer's `Date` header gives, if it is a valid HTTP date.
fn server_date(headers: &HeaderMap) -> Option<SystemTime> {
    skew::http_date(headers.get(http::header::DATE)?.to_str().ok()?)
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

    #[test]
    fn a_refusal_is_the_clocks_when_the_signing_time_was_five_minutes_off() {
        let aws = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = Duration::from_secs;
        // The node 400 s ahead, answered at once: the clock's.
        assert_eq!(
            refused_for_the_time(aws + s(400), Some(aws + s(400)), aws),
            Some(400.0)
        );
        // 250 s behind, the request 60 s on its way: AWS saw 310 s. The
        // skew alone (250) would have blamed the signing name.
        let signed = aws - s(60) - s(250);
        assert_eq!(
            refused_for_the_time(aws - s(250), Some(signed), aws),
            Some(-250.0)
        );
        // A minute off: a signature refused for something else.
        assert_eq!(
            refused_for_the_time(aws + s(60), Some(aws + s(60)), aws),
            None
        );
        // Without the signing time, the skew judges, with room for the
        // way back.
        assert_eq!(refused_for_the_time(aws + s(295), None, aws), Some(295.0));
        assert_eq!(refused_for_the_time(aws - s(200), None, aws), None);
    }
}
