//! [`Pool::send`]'s future: a request handed to a connection, its answer
//! to come, or sent again on another when the connection had closed.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::client::conn::TrySendError;

use super::hosts::Target;
use super::{Failure, Pool, PooledBody, H1};
use crate::proxy::error::ProxyError;

/// A connection's answer to a request handed to it, or the request back.
pub(super) type Answer =
    Result<Response<hyper::body::Incoming>, TrySendError<Request<Full<Bytes>>>>;

pin_project_lite::pin_project! {
    /// [`Pool::send`]'s future. Written out, not an `async` block: rustc
    /// keeps what an async block captures beside the locals it is moved
    /// into, which doubled this future's size (904 bytes), and every byte
    /// of it is written once per request.
    pub struct Sending<'a, A1, A2> {
        pub(super) pool: &'a Pool,
        #[pin]
        pub(super) state: Sent<'a, A1, A2>,
    }
}

pin_project_lite::pin_project! {
    /// Where a request is.
    #[project = SentProj]
    #[project_replace = SentOwn]
    pub(super) enum Sent<'a, A1, A2> {
        /// Handed to a free HTTP/1.1 connection: its answer to come.
        H1 {
            #[pin]
            answer: A1,
            sender: H1,
            target: Target,
            // The request's absolute URI, should it have to go again.
            uri: Uri,
        },
        /// Handed to the host's HTTP/2 connection.
        H2 {
            #[pin]
            answer: A2,
            id: Option<u64>,
            target: Target,
        },
        /// Connecting, waiting for a busy connection, or sending again.
        Later {
            rest: BoxFuture<'a, Result<Response<PooledBody>, ProxyError>>,
        },
        Failed {
            error: ProxyError,
        },
        /// Answered.
        Done,
    }
}

impl<A1, A2> Future for Sending<'_, A1, A2>
where
    A1: Future<Output = Answer>,
    A2: Future<Output = Answer>,
{
    type Output = Result<Response<PooledBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let pool = *this.pool;
        let (failure, target) = match this.state.as_mut().project() {
            SentProj::H1 { answer, .. } => {
                let answer = ready!(answer.poll(cx));
                let SentOwn::H1 {
                    sender,
                    target,
                    uri,
                    ..
                } = this.state.as_mut().project_replace(Sent::Done)
                else {
                    return Poll::Ready(Err(answered()));
                };
                match pool.answered_h1(&target, sender, answer, uri) {
                    Ok(response) => return Poll::Ready(Ok(response)),
                    Err(failure) => (failure, target),
                }
            }
            SentProj::H2 { answer, .. } => {
                let answer = ready!(answer.poll(cx));
                let SentOwn::H2 { id, target, .. } =
                    this.state.as_mut().project_replace(Sent::Done)
                else {
                    return Poll::Ready(Err(answered()));
                };
                match pool.answered_h2(&target, id, answer) {
                    Ok(response) => return Poll::Ready(Ok(response)),
                    Err(failure) => (failure, target),
                }
            }
            SentProj::Later { rest } => {
                let answer = ready!(rest.as_mut().poll(cx));
                this.state.set(Sent::Done);
                return Poll::Ready(answer);
            }
            SentProj::Failed { .. } => {
                return Poll::Ready(Err(match this.state.as_mut().project_replace(Sent::Done) {
                    SentOwn::Failed { error } => error,
                    _ => answered(),
                }))
            }
            SentProj::Done => return Poll::Ready(Err(answered())),
        };
        match failure {
            Failure::Unsent(unsent) => {
                tracing::trace!("pooled connection closed before use; trying another");
                let free = pool.hosts.checkout(target.index);
                let mut rest = Box::pin(pool.send_later(*unsent, target, free));
                let polled = rest.as_mut().poll(cx);
                this.state.set(match polled {
                    Poll::Ready(_) => Sent::Done,
                    Poll::Pending => Sent::Later { rest },
                });
                polled
            }
            Failure::Failed(e) => Poll::Ready(Err(e)),
        }
    }
}

/// What a [`Sending`] polled after its answer gets (a caller's bug, told
/// as an error rather than a panic).
fn answered() -> ProxyError {
    ProxyError::UpstreamProtocol("the upstream send was polled after it was answered".into())
}
