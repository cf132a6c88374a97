//! What a request holds until it is over (its place in the in-flight
//! gauge, its slot in `--max-requests`), and when it lets go.

use std::sync::Arc;
use std::time::Instant;

use prometheus::{Histogram, IntGauge};
use tokio::sync::OwnedSemaphorePermit;

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a request holds until it is over: its place in the in-flight
/// gauge and its slot in `--max-requests`. The response ends a request,
/// except a bidirectional stream's: Bedrock may end its answer while the
/// client still sends, and the proxy goes on forwarding (and signing)
/// those messages. Such a request shares its hold with its request body,
/// and lets go when both are done.
#[derive(Debug)]
pub struct Occupancy {
    in_flight: Option<InFlight>,
    slot: Option<OwnedSemaphorePermit>,
    /// Set once shared: the hold then lives here (and in the body).
    shared: Option<Arc<Occupancy>>,
}

impl Occupancy {
    pub fn new(in_flight: InFlight, slot: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            in_flight: Some(in_flight),
            slot,
            shared: None,
        }
    }

    /// The hold, for a request body that may outlast the response.
    pub fn share(&mut self) -> Arc<Occupancy> {
        if let Some(shared) = &self.shared {
            return shared.clone();
        }
        let shared = Arc::new(Occupancy {
            in_flight: self.in_flight.take(),
            slot: self.slot.take(),
            shared: None,
        });
        self.shared = Some(shared.clone());
        shared
    }

    /// Whether the response has let go of its share of `body_share` (from
    /// [`Occupancy::share`]): only the request body holds it any more.
    pub fn only_the_body_holds(body_share: &Arc<Occupancy>) -> bool {
        Arc::strong_count(body_share) == 1
    }
}

/// Records time-to-last-byte when the stream ends, fails, or is dropped
/// (client disconnect), whichever comes first.
#[derive(Debug)]
pub struct Completion {
    started: Instant,
    duration: Histogram,
    /// Given back when the response ends (or, shared, when the request
    /// body has ended too).
    _occupancy: Occupancy,
}

impl Completion {
    pub fn new(started: Instant, duration: Histogram, occupancy: Occupancy) -> Self {
        Self {
            started,
            duration,
            _occupancy: occupancy,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.duration.observe(self.started.elapsed().as_secs_f64());
    }
}
