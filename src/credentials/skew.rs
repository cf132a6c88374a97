//! Clock skew between this node and AWS, read from the `Date` header of
//! STS's answers (Bedrock's refusals of a signature measure it too, in
//! the proxy). Credentials expire by this node's clock and AWS refuses
//! signatures more than five minutes off, so a skewed node clock breaks
//! signing in ways that look like STS or Bedrock faults.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::{DateTime, Format};
use prometheus::Gauge;

/// Skew worth a warning: well beyond the `Date` header's one-second
/// resolution plus a round trip.
pub const NOTABLE: Duration = Duration::from_secs(10);

/// Captures the `Date` of one SDK call's answer (`.customize().interceptor(..)`).
#[derive(Debug, Clone, Default)]
pub struct ServerDate(Arc<Mutex<Option<SystemTime>>>);

impl ServerDate {
    /// The server's time of the last answer seen, if it had a valid `Date`.
    pub fn get(&self) -> Option<SystemTime> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `date` (or forgets the last one, with `None`).
    pub fn set(&self, date: Option<SystemTime>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = date;
    }
}

impl Intercept for ServerDate {
    fn name(&self) -> &'static str {
        "ServerDate"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let date = context.response().headers().get("date").and_then(http_date);
        if date.is_some() {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) = date;
        }
        Ok(())
    }
}

/// The time an HTTP `Date` value gives, if it is a valid HTTP date.
pub fn http_date(value: &str) -> Option<SystemTime> {
    let date = DateTime::from_str(value, Format::HttpDate).ok()?;
    SystemTime::try_from(date).ok()
}

/// This node's clock minus the server's, in seconds: positive when the
/// node is ahead.
pub fn seconds(local: SystemTime, server: SystemTime) -> f64 {
    match local.duration_since(server) {
        Ok(ahead) => ahead.as_secs_f64(),
        Err(behind) => -behind.duration().as_secs_f64(),
    }
}

/// Exports every measurement and warns when the skew becomes notable:
/// once while it stays so, again after it has been fixed and comes back
/// (a clock can drift weeks into a pod's life).
#[derive(Debug, Default)]
pub struct SkewReport {
    warned: bool,
}

impl SkewReport {
    /// Returns whether this measurement was warned about, so the rule can be
    /// tested without capturing logs (tracing's callsite interest is cached
    /// process-wide, and a parallel test thread without a subscriber can
    /// disable a scoped capture's callsite).
    pub fn observe(&mut self, local: SystemTime, server: SystemTime, gauge: &Gauge) -> bool {
        let skew = seconds(local, server);
        gauge.set(skew);
        let notable = skew.abs() >= NOTABLE.as_secs_f64();
        if !notable {
            self.warned = false;
            false
        } else if self.warned {
            false
        } else {
            self.warned = true;
            tracing::warn!(
                skew_s = skew.round(),
                hint = "check the node's NTP synchronisation: credentials expire by this clock, and AWS refuses signatures more than 5 minutes off",
                "this node's clock differs from STS's (positive: the node is ahead); bedrock_broker_clock_skew_seconds follows it"
            );
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // What the warning says is checked on the real process's log by the
    // end-to-end clock tests; here, when it is said.
    #[test]
    fn exports_every_skew_and_warns_each_time_it_becomes_notable() {
        let gauge = Gauge::new("skew", "test").unwrap();
        let server = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut report = SkewReport::default();
        let mut warned = |ahead: i64| {
            let local = if ahead >= 0 {
                server + Duration::from_secs(ahead.unsigned_abs())
            } else {
                server - Duration::from_secs(ahead.unsigned_abs())
            };
            let said = report.observe(local, server, &gauge);
            assert_eq!(gauge.get(), ahead as f64);
            said
        };
        assert!(!warned(2));
        assert!(warned(-90));
        // Still notable, either way: not said again.
        assert!(!warned(7200));
        assert!(!warned(-10));
        // Fixed, then drifting again later: said again, once.
        assert!(!warned(1));
        assert!(warned(400));
        assert!(!warned(401));
        // Exactly the threshold counts as notable.
        assert!(!warned(0));
        assert!(warned(NOTABLE.as_secs() as i64));
    }
}
