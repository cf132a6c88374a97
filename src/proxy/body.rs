//! The response body: streamed from upstream frame by frame, measured.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::{Histogram, IntGauge};

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

/// Records time-to-last-byte when the stream ends, fails, or is dropped
/// (client disconnect), whichever comes first.
#[derive(Debug)]
pub struct Completion {
    started: Instant,
    duration: Histogram,
    _in_flight: InFlight,
}

impl Completion {
    pub fn new(started: Instant, duration: Histogram, in_flight: InFlight) -> Self {
        Self {
            started,
            duration,
            _in_flight: in_flight,
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        self.duration.observe(self.started.elapsed().as_secs_f64());
    }
}

/// The upstream body, passed through without buffering: each frame is handed
/// to the client as soon as it arrives.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    completion: Option<Completion>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, completion: Completion) -> Self {
        Self {
            inner,
            completion: Some(completion),
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.completion.take();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
