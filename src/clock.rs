//! Time as a parameter.
//!
//! Credential expiry is wall-clock time (STS says "expires at 17:42:10Z"), so the
//! refresher and the proxy ask a [`Clock`] for "now" instead of calling
//! `SystemTime::now()` themselves. Production uses [`SystemClock`], the one place
//! the real clock is read; tests use `TokioClock`, which follows tokio's
//! pausable time so a test can fast-forward through hours of credential
//! lifetimes without sleeping.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of wall-clock time.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    fn now(&self) -> SystemTime;
}

/// Shared handle to a clock.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    // The one place the real clock is read.
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A wall clock that advances with tokio's clock.
///
/// Under `tokio::time::pause()` both this clock and `tokio::time::sleep` move
/// together, so timer-driven code sees a consistent world. Test support:
/// not in the shipped binary (the `test-util` feature exposes it to
/// integration tests and simulations).
#[cfg(any(test, feature = "test-util"))]
#[derive(Debug, Clone)]
pub struct TokioClock {
    origin_wall: SystemTime,
    origin: tokio::time::Instant,
    /// Wall time gained without tokio's clock moving (a suspend).
    jumped: Arc<std::sync::Mutex<Duration>>,
}

#[cfg(any(test, feature = "test-util"))]
impl TokioClock {
    /// A clock reading `origin_wall` at the current tokio instant.
    pub fn starting_at(origin_wall: SystemTime) -> Self {
        Self {
            origin_wall,
            origin: tokio::time::Instant::now(),
            jumped: Arc::default(),
        }
    }

    /// Moves the wall clock on by `by` while the monotonic clock stands,
    /// as a suspended machine finds on resume.
    pub fn jump(&self, by: Duration) {
        *self
            .jumped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += by;
    }
}

#[cfg(any(test, feature = "test-util"))]
impl Clock for TokioClock {
    fn now(&self) -> SystemTime {
        let jumped = *self
            .jumped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.origin_wall + self.origin.elapsed() + jumped
    }
}

/// Seconds since the Unix epoch as a float, for Prometheus timestamp gauges.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// `later - earlier`, or zero when `later` is not after `earlier`.
pub fn saturating_sub(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or(Duration::ZERO)
}
