//! What a request holds until it is over (its place in the in-flight
//! gauge, its slot in `--max-requests`), and when it lets go.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use prometheus::{Histogram, IntGauge};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

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
/// and lets go when both are done, or when the answer is given up.
#[derive(Debug)]
pub struct Occupancy {
    hold: Option<Hold>,
    /// Set once shared: the hold then lives here (and in the body).
    shared: Option<Arc<SharedHold>>,
}

#[derive(Debug)]
struct Hold {
    _in_flight: InFlight,
    _slot: Option<OwnedSemaphorePermit>,
}

/// The hold of a request whose body may outlast its response.
#[derive(Debug)]
pub struct SharedHold {
    _hold: Option<Hold>,
    abandoned: CancellationToken,
}

impl Occupancy {
    pub fn new(in_flight: InFlight, slot: Option<OwnedSemaphorePermit>) -> Self {
        Self {
            hold: Some(Hold {
                _in_flight: in_flight,
                _slot: slot,
            }),
            shared: None,
        }
    }

    /// The hold, for a request body that may outlast the response.
    pub fn share(&mut self) -> Arc<SharedHold> {
        if let Some(shared) = &self.shared {
            return shared.clone();
        }
        let shared = Arc::new(SharedHold {
            _hold: self.hold.take(),
            abandoned: CancellationToken::new(),
        });
        self.shared = Some(shared.clone());
        shared
    }

    /// The answer was given up before its end (the client left, or the
    /// proxy cut it off): a request body still being sent is ended too,
    /// and Bedrock's stream with it. The hold stays with the body until
    /// then: `--max-requests` bounds Bedrock's streams too, and one whose
    /// input Bedrock is not reading ends only when Bedrock asks for more
    /// (or ends it).
    pub fn abandon(&self) {
        if let Some(shared) = &self.shared {
            shared.abandoned.cancel();
        }
    }
}

impl SharedHold {
    /// Whether the response has let go of its share: only the request
    /// body holds it any more.
    pub fn only_the_body_holds(self: &Arc<Self>) -> bool {
        Arc::strong_count(self) == 1
    }

    /// Resolves once the answer is given up ([`Occupancy::abandon`]).
    pub async fn abandoned(&self) {
        self.abandoned.cancelled().await;
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
    occupancy: Occupancy,
}

impl Completion {
    pub fn new(started: Instant, duration: Histogram, occupancy: Occupancy) -> Self {
        Self {
            started,
            duration,
            occupancy,
        }
    }

    /// See [`Occupancy::abandon`].
    pub fn abandon(&self) {
        self.occupancy.abandon();
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

/// An answer the proxy made whole (a broker error, an error body cleaned
/// of secrets), holding its request's [`Completion`] until the client has
/// read it: an error left unread keeps its `--max-requests` slot, as an
/// unread success does.
pub struct HeldBody {
    body: Full<Bytes>,
    completion: Option<Completion>,
}

impl HeldBody {
    pub fn new(body: Full<Bytes>, completion: Option<Completion>) -> Self {
        Self { body, completion }
    }
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.completion = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
