//! A response body that carries its HTTP/1.1 connection and hands it back
//! to the pool when it ends.

use std::pin::Pin;
use std::sync::Weak;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::hosts::Hosts;
use super::H1;

/// An HTTP/1.1 connection lent to one response, handed back when its body ends.
pub(super) struct Lease {
    pub hosts: Weak<Hosts>,
    pub host: usize,
    pub sender: H1,
}

impl Lease {
    fn give_back(self) {
        if let Some(hosts) = self.hosts.upgrade() {
            hosts.checkin(self.host, self.sender);
        }
    }
}

/// A response body from the pool. When it ends, its connection goes back
/// for the next request; dropped unfinished, the connection closes with it.
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    lease: Option<Lease>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("host", &self.host).finish()
    }
}

impl PooledBody {
    pub(super) fn new(inner: Incoming, lease: Option<Lease>) -> Self {
        Self { inner, lease }
    }

    /// A body whose connection is not the pool's (bidirectional streams).
    pub fn unpooled(inner: Incoming) -> Self {
        Self::new(inner, None)
    }

    fn give_back(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.give_back();
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.give_back(),
            Poll::Ready(None) => this.give_back(),
            // The connection is broken: never lend it again.
            Poll::Ready(Some(Err(_))) => drop(this.lease.take()),
            _ => {}
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
