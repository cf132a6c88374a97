//! When the refresher calls STS.
//!
//! After a success, refresh once `fraction` of the remaining lifetime has
//! passed (default half), minus up to `jitter` of the lifetime at random so
//! pods started together spread their STS calls, and in any case at least
//! `min_remaining` before expiry (capped at half the lifetime, so short test
//! lifetimes still work). After a failure, retry with capped exponential
//! backoff and full jitter; the old credentials stay in use meanwhile, and
//! the wait never exceeds a quarter of their remaining life, so several
//! attempts fit before they expire.

use std::time::Duration;

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
    /// First retry delay after a failure.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Full jitter on retry delays; off only in tests that check exact timings.
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
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(30),
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

    /// How long to wait after the `failures`-th consecutive failure.
    /// `remaining` is the life left in the held credentials, if any.
    pub fn backoff(&self, failures: u32, rand: f64, remaining: Option<Duration>) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        let mut delay = self
            .backoff_base
            .saturating_mul(1u32 << exponent)
            .min(self.backoff_cap);
        if self.backoff_jitter {
            delay = delay.mul_f64(rand);
        }
        if let Some(remaining) = remaining.filter(|r| !r.is_zero()) {
            delay = delay.min(remaining / 4);
        }
        delay.max(self.min_interval)
    }
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
    fn backoff_doubles_up_to_the_cap_and_never_undercuts_the_minimum_interval() {
        let p = RefreshPolicy {
            min_interval: Duration::from_millis(100),
            ..policy()
        };
        let ms = |n| p.backoff(n, 0.0, None).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4)], [200, 400, 800, 1600]);
        let floored = policy();
        assert_eq!(floored.backoff(1, 0.0, None), Duration::from_secs(1));
        assert_eq!(p.backoff(30, 0.0, None), Duration::from_secs(30));
        assert_eq!(p.backoff(u32::MAX, 0.0, None), Duration::from_secs(30));
    }

    #[test]
    fn backoff_with_full_jitter_stays_within_bounds_and_before_expiry() {
        let p = RefreshPolicy::default();
        assert_eq!(p.backoff(6, 0.0, None), p.min_interval);
        assert_eq!(p.backoff(6, 0.5, None), Duration::from_millis(3200));
        assert_eq!(
            p.backoff(10, 0.99, Some(Duration::from_secs(8))),
            Duration::from_secs(2)
        );
    }
}
