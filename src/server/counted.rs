//! Requests counted on their connection, and the connection handed to them.
//!
//! Each request counts in flight until its answer ends ([`Counted`]); on the
//! listeners other pods reach, it also gets a handle on its connection
//! ([`Connection`]).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use tokio_util::sync::CancellationToken;

use super::conn::{Activity, InFlight, Receiving};

/// The connection a request came on, in the request's extensions on the
/// listeners other pods reach: who sent it, and a way to close it so a
/// peer holding more than its share of something gives it up.
#[derive(Debug, Clone)]
pub struct Connection {
    peer: IpAddr,
    close: CancellationToken,
    activity: Option<Arc<Activity>>,
}

impl Connection {
    pub fn new(peer: IpAddr, close: CancellationToken) -> Self {
        Self {
            peer,
            close,
            activity: None,
        }
    }

    /// The connection's activity, where a request's handler marks its
    /// body as arriving ([`Self::receiving_body`]).
    pub fn watching(mut self, activity: Arc<Activity>) -> Self {
        self.activity = Some(activity);
        self
    }

    /// Marks a request's body as arriving until the guard is dropped: a
    /// full listener may close such a connection for a peer with fewer
    /// (`Peers::evict_for`), never one whose request is whole.
    pub fn receiving_body(&self) -> Option<Receiving> {
        self.activity.as_ref().map(Activity::receiving)
    }

    /// The peer's address (IPv4 peers of a dual-stack socket as IPv4).
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// Closes the connection at once, whatever is in flight on it.
    pub fn close(&self) {
        self.close.cancel();
    }

    /// Whether [`Self::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.close.is_cancelled()
    }
}

/// A service whose requests count as in flight on their connection.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
    /// Handed to each request, where it is wanted (see [`Connection`]):
    /// not on the proxy's hot path, where the extension map it needs would
    /// be an allocation per request.
    connection: Option<Connection>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, activity: Arc<Activity>, connection: Option<Connection>) -> Self {
        Self {
            inner,
            activity,
            connection,
        }
    }
}

impl<S, B> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        if let Some(connection) = &self.connection {
            request.extensions_mut().insert(connection.clone());
        }
        CountedFuture {
            inner: self.inner.call(request),
            in_flight: Some(InFlight::new(self.activity.clone())),
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner service's future, its response's body counted. Not boxed:
    /// on HTTP/1.1 hyper keeps it in its connection's own allocation,
    /// reused by every request on the connection, where a box per request
    /// would be a fresh allocation each time, cold in the cache under many
    /// connections.
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CountedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        // Taken once (a future is not polled again after it is ready), and
        // released at once when there is no response to carry it.
        let in_flight = this.in_flight.take();
        Poll::Ready(result.map(|response| {
            let in_flight = in_flight.map(InFlight::answering);
            response.map(|inner| CountedBody {
                inner,
                _in_flight: in_flight,
            })
        }))
    }
}

/// A response body that keeps its request in flight until it ends.
pub struct CountedBody<B> {
    inner: B,
    /// Held for its `Drop`.
    _in_flight: Option<InFlight>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for CountedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
