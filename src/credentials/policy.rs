//! When the refresher calls STS.
//!
//! After a success, refresh once `fraction` of the remaining lifetime has
//! passed (default half), minus up to `jitter` of the lifetime at random so
//! pods started together spread their STS calls, and in any case at least
//! `min_remaining` before expiry (capped at half the lifetime, so short test
//! lifetimes still work).
//!
//! After a failure, retry with capped exponential backoff, jittered between
//! the minimum interval and the exponential ceiling; the old credentials
//! stay in use meanwhile. The cap depends on what is at stake (the fleet
//! simulation in docs/fleet.md chose the values):
//! - usable credentials held: no hurry, a long cap (5 min), but never more
//!   than a quarter of their remaining life, so several attempts fit before
//!   they expire; that bound never goes below the cold-start cap, and the
//!   wait is drawn under it like any other, so pods sharing an expiry do
//!   not end in a call a second each;
//! - none held (cold start, or expired) and a transient error: the pod is
//!   not ready, so a short cap (30 s);
//! - fatal and token errors: retrying fast fixes neither IAM nor a clock,
//!   and a whole fleet doing so would throttle everyone in the account, so
//!   the long cap whatever is held (the first retries still come within
//!   seconds: IAM changes take seconds to propagate). A rotated token
//!   triggers its own retry.
//!
//! A throttled pod skips the ramp: the whole account is over its rate.

use std::time::Duration;

use super::ErrorClass;

/// When to refresh and how to back off.
#[derive(Debug, Clone, PartialEq)]
pub struct RefreshPolicy {
    /// Refresh after this fraction of the lifetime has passed.
    pub fraction: f64,
    /// Up to this fraction of the lifetime is taken off at random.
    pub jitter: f64,
    /// Refresh at the latest this long before expiry (at most half the lifetime).
    pub min_remaining: Duration,
    /// No two STS calls are closer than this, whatever the schedule, the
    /// backoff, a forced refresh or the credentials' lifetime says.
    pub min_interval: Duration,
    /// Ceiling of the first retry delay; it doubles with each failure.
    pub backoff_base: Duration,
    /// Longest retry delay while usable credentials are held, and after
    /// fatal or token errors.
    pub backoff_cap: Duration,
    /// Longest retry delay after transient errors while no usable
    /// credentials are held (at most `backoff_cap`).
    pub cold_start_backoff_cap: Duration,
    /// Jitter on retry delays; off only in tests that check exact timings.
    pub backoff_jitter: bool,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            fraction: 0.5,
            // Wide enough that pods started in the same second refresh over
            // a fifth of the lifetime (docs/fleet.md: a tenth let the
            // second refresh wave of a mass restart peak too high).
            jitter: 0.2,
            min_remaining: Duration::from_secs(5 * 60),
            // Short enough for credentials that live seconds (tests, fakes).
            min_interval: Duration::from_secs(1),
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(5 * 60),
            cold_start_backoff_cap: Duration::from_secs(30),
            backoff_jitter: true,
        }
    }
}

impl RefreshPolicy {
    /// How long after obtaining credentials valid for `lifetime` to refresh.
    /// `rand` is uniform in [0, 1).
    pub fn refresh_after(&self, lifetime: Duration, rand: f64) -> Duration {
        let fraction = (self.fraction - self.jitter * rand).max(0.0);
        let target = lifetime.mul_f64(fraction);
        let latest = lifetime.saturating_sub(self.min_remaining.min(lifetime / 2));
        target.min(latest).max(self.min_interval)
    }

    /// How long to wait after `failure`; `rand` is uniform in [0, 1).
    pub fn backoff(&self, failure: &Failure, rand: f64) -> Duration {
        let cold_cap = self.cold_start_backoff_cap.min(self.backoff_cap);
        let cap = match (failure.class, failure.remaining) {
            (ErrorClass::Transient, None) => cold_cap,
            _ => self.backoff_cap,
        };
        let exponent = failure.count.saturating_sub(1).min(16);
        let ramp = self.backoff_base.saturating_mul(1u32 << exponent);
        // Throttling means the whole account is over its rate: retrying in
        // a second or two cannot help, so skip the ramp.
        let mut ceiling = if failure.throttled {
            cap
        } else {
            ramp.min(cap)
        };
        // Hurry as expiry nears, so that several attempts fit before it: a
        // quarter of the life left, but no sooner than a pod holding
        // nothing would retry (or an eighth of the credentials' lifetime,
        // if less), and within the jitter like any delay. Pods
        // started together share their expiry: clamped after the jitter,
        // their retries came in the same seconds, a call a second each at
        // the end (4 times the quota for the account, as the fleet
        // expired). Fatal errors are not hurried: retrying sooner cannot
        // fix IAM or a clock.
        if let Some(remaining) = failure
            .remaining
            .filter(|_| failure.class != ErrorClass::Fatal)
        {
            // Credentials living minutes or less (a test's, a fake's) get
            // a floor to scale: 30 s would let 5 s credentials lapse.
            let floor = failure.lifetime.map_or(cold_cap, |l| cold_cap.min(l / 8));
            ceiling = ceiling.min((remaining / 4).max(floor));
        }
        let ceiling = ceiling.max(self.min_interval);
        let delay = if self.backoff_jitter {
            self.min_interval + (ceiling - self.min_interval).mul_f64(rand)
        } else {
            ceiling
        };
        delay.max(self.min_interval)
    }
}

/// What the refresher knows about a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Failure {
    /// Consecutive failures, this one included.
    pub count: u32,
    pub class: ErrorClass,
    /// STS answered that the account is over its request rate.
    pub throttled: bool,
    /// Life left in the held credentials while they are usable; `None`
    /// when none are (cold start, expired).
    pub remaining: Option<Duration>,
    /// How long those credentials were valid for when obtained.
    pub lifetime: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RefreshPolicy {
        RefreshPolicy {
            jitter: 0.0,
            backoff_jitter: false,
            ..RefreshPolicy::default()
        }
    }

    #[test]
    fn refreshes_at_half_the_lifetime_and_at_least_five_minutes_before_expiry() {
        let p = policy();
        let hour = Duration::from_secs(3600);
        assert_eq!(p.refresh_after(hour, 0.0), Duration::from_secs(1800));
        let late = RefreshPolicy {
            fraction: 0.99,
            ..policy()
        };
        assert_eq!(late.refresh_after(hour, 0.0), Duration::from_secs(3300));
        // Short lifetimes: the minimum margin shrinks to half the lifetime.
        assert_eq!(
            late.refresh_after(Duration::from_secs(4), 0.0),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn jitter_only_ever_refreshes_earlier() {
        let p = RefreshPolicy::default();
        let hour = Duration::from_secs(3600);
        for r in [0.0, 0.3, 0.999] {
            let d = p.refresh_after(hour, r);
            assert!(d <= Duration::from_secs(1800), "{d:?}");
            assert!(d >= Duration::from_secs(1080), "{d:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_for_what_is_at_stake() {
        use ErrorClass::*;
        let p = policy();
        let hour = Some(Duration::from_secs(3600));
        let secs = |count, class, remaining| {
            let f = Failure {
                count,
                class,
                throttled: false,
                remaining,
                lifetime: remaining.map(|_| Duration::from_secs(3600)),
            };
            p.backoff(&f, 0.0).as_secs()
        };
        // Cold: transient errors are retried up to 30 s apart.
        let cold: Vec<_> = (1..=6).map(|n| secs(n, Transient, None)).collect();
        assert_eq!(cold, [2, 4, 8, 16, 30, 30]);
        // Usable credentials held, or fatal/token errors: up to 5 min apart.
        let fatal: Vec<_> = (1..=10).map(|n| secs(n, Fatal, None)).collect();
        assert_eq!(fatal, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(secs(9, Token, None), 300);
        assert_eq!(secs(9, Transient, hour), 300);
        assert_eq!(secs(u32::MAX, Token, hour), 300);
        // A quarter of the remaining life bounds the wait, but no tighter
        // than the cold-start cap (a pod about to hold nothing retries no
        // faster than one holding nothing: the hurry once went down to a
        // call a second); fatal errors, which retrying sooner cannot fix,
        // are not hurried.
        let soon = Some(Duration::from_secs(400));
        assert_eq!(secs(9, Transient, soon), 100);
        let sooner = Some(Duration::from_secs(40));
        assert_eq!(secs(9, Transient, sooner), 30);
        assert_eq!(secs(9, Fatal, sooner), 300);
        // Credentials that live seconds (a test's, a fake's) are hurried
        // to scale, or one throttled refresh would let them lapse.
        let short = Failure {
            count: 1,
            class: Transient,
            throttled: true,
            remaining: Some(Duration::from_millis(2500)),
            lifetime: Some(Duration::from_secs(5)),
        };
        assert_eq!(p.backoff(&short, 0.0), p.min_interval);
        let minutes = Failure {
            remaining: Some(Duration::from_secs(40)),
            lifetime: Some(Duration::from_secs(160)),
            ..short
        };
        assert_eq!(p.backoff(&minutes, 0.0), Duration::from_secs(20));
    }

    #[test]
    fn backoff_never_undercuts_the_minimum_interval() {
        let p = RefreshPolicy {
            cold_start_backoff_cap: Duration::ZERO,
            ..policy()
        };
        let almost_expired = Some(Duration::from_millis(400));
        for class in [ErrorClass::Transient, ErrorClass::Token] {
            let f = Failure {
                class,
                ..transient(3, almost_expired)
            };
            assert_eq!(p.backoff(&f, 0.5), p.min_interval);
        }
        let tight = RefreshPolicy {
            backoff_base: Duration::from_millis(100),
            ..policy()
        };
        assert_eq!(tight.backoff(&transient(1, None), 0.0), p.min_interval);
    }

    #[test]
    fn jittered_backoff_lies_between_the_minimum_interval_and_the_ceiling() {
        let p = RefreshPolicy::default();
        assert_eq!(p.backoff(&transient(4, None), 0.0), p.min_interval);
        assert_eq!(
            p.backoff(&transient(4, None), 0.5),
            Duration::from_millis(8500)
        );
        assert_eq!(
            p.backoff(&transient(20, None), 0.999),
            Duration::from_millis(29_971)
        );
        // Hurried as expiry nears, still drawn over the whole range: pods
        // sharing an expiry must not retry in the same seconds.
        let two_hundred = Some(Duration::from_secs(200));
        assert_eq!(p.backoff(&transient(10, two_hundred), 0.0), p.min_interval);
        assert_eq!(
            p.backoff(&transient(10, two_hundred), 0.5),
            Duration::from_millis(25_500)
        );
    }

    #[test]
    fn throttling_spreads_retries_over_the_whole_cap_at_once() {
        let p = RefreshPolicy::default();
        let throttled = Failure {
            throttled: true,
            ..transient(1, None)
        };
        assert_eq!(p.backoff(&throttled, 0.5), Duration::from_millis(15_500));
        assert_eq!(
            p.backoff(&transient(1, None), 0.5),
            Duration::from_millis(1500)
        );
        // Near expiry, no sooner than a pod holding nothing.
        let near = Failure {
            remaining: Some(Duration::from_secs(60)),
            ..throttled
        };
        assert_eq!(p.backoff(&near, 0.5), Duration::from_millis(15_500));
    }

    fn transient(count: u32, remaining: Option<Duration>) -> Failure {
        Failure {
            count,
            class: ErrorClass::Transient,
            throttled: false,
            remaining,
            lifetime: remaining.map(|_| Duration::from_secs(3600)),
        }
    }
}
