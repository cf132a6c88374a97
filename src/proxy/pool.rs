//! Keep-alive connections to Bedrock for buffered requests.
//!
//! hyper-util's pooled client spawns a task per HTTP/1.1 request to wait
//! for its connection to be free again, and clones its connector and pool
//! key on every call. Here the response body carries its connection and
//! hands it back when the body ends; whether it is ready for the next
//! request is checked when it is next taken. Connecting (TCP, TLS, ALPN)
//! stays with hyper-rustls, and HTTP with hyper's connection-level client.

mod body;
mod hosts;
mod sending;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::error::ProxyError;
use super::upstream::{answer_error, upstream_error, went_away, Connector};
use body::Lease;
pub use body::PooledBody;
use hosts::{Hosts, Sender, Target, Turn};
pub use sending::Sending;
use sending::{Answer, Sent};

pub(super) type H1 = http1::SendRequest<Full<Bytes>>;
pub(super) type H2 = http2::SendRequest<Full<Bytes>>;

/// Most an HTTP/1.1 upstream connection reads ahead into its buffer.
/// hyper's default (about 400 KiB) grows to its full size on a fast answer,
/// and a client that reads slowly then keeps it all, through the chunks
/// still queued for it: 250 such streams held 100 MiB. Each queued chunk
/// (but a short one, copied) keeps its whole buffer alive while the
/// connection reads on into a new one, so a stream holds a few times this:
/// with 64 KiB, 512 streams of 240 KB events took the sidecar to 171 MiB
/// (78 MiB with 16 KiB; release builds). Smaller reads cost one large
/// answer over plain loopback about a quarter of its rate (650 to
/// 480 MB/s), far above what Bedrock sends.
/// It also bounds an answer's head over HTTP/1.1 (a few hundred bytes
/// from Bedrock; nginx reads 4 or 8 KiB of an upstream's head).
pub(super) const UPSTREAM_READ_BUFFER: usize = 16 * 1024;

/// HTTP/2 windows of the connection every request to a host shares. An
/// answer whose client stopped reading keeps its stream's window taken:
/// with hyper's 2 MiB a stream and 5 MiB a connection, three such answers
/// stalled every other one. 16 of them take this connection window (its
/// most held in memory); one answer still gets about a window per round
/// trip: a 5 MB answer took 0.35 s at 50 ms RTT (0.23 s with 2 MiB, 1.2 s
/// with 256 KiB).
pub(super) const UPSTREAM_H2_STREAM_WINDOW: u32 = 1024 * 1024;
/// Largest answer head taken over HTTP/2, where it holds no read buffer:
/// with hyper's 16 KiB, a head past about 32 KiB broke the shared
/// connection's header compression, and every other answer on it.
pub(super) const UPSTREAM_H2_MAX_HEADER_LIST: u32 = 64 * 1024;
pub(super) const UPSTREAM_H2_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Open connections to each upstream host, shared by all requests.
#[derive(Clone)]
pub struct Pool {
    /// TCP, TLS and ALPN; owns the connect timeout.
    connector: Connector,
    hosts: Arc<Hosts>,
    /// PING interval (and timeout) of HTTP/2 connections with requests in
    /// flight (see [`super::upstream::H2_PING`]); `None`: none.
    ping: Option<Duration>,
}

/// Longest wait for a reused HTTP/1.1 connection to take a request. It is
/// lent back when its answer ends, usually before hyper has marked it free;
/// one still writing a request body the upstream stopped reading (it
/// answered early) may never be, and is dropped.
const READY_WAIT: Duration = Duration::from_secs(1);

/// Why a send failed, and whether it may be tried again elsewhere.
enum Failure {
    /// The request never left: a reused connection had closed meanwhile.
    Unsent(Box<Request<Full<Bytes>>>),
    Failed(ProxyError),
}

impl Pool {
    /// A pool connecting through `connector` (which owns the connect
    /// timeout, TCP options and TLS).
    pub fn new(connector: Connector, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            connector,
            hosts: Arc::new(Hosts::new(max_idle, idle_timeout)),
            ping: None,
        }
    }

    /// PINGs HTTP/2 connections with requests in flight every `interval`,
    /// and closes one whose answer takes longer.
    pub fn pinging(mut self, interval: Duration) -> Self {
        self.ping = Some(interval);
        self
    }

    /// Sends `request` (absolute URI) on an idle connection to its host, or
    /// a new one. A request that never left because a reused connection had
    /// closed meanwhile is sent again; anything else is answered as is.
    ///
    /// A free connection that is ready takes the request here, at once, and
    /// the future returned then only waits for the answer. The rest
    /// (connecting, waiting for a connection to be ready, sending again) is
    /// boxed and taken only when needed: inline, its state would be copied
    /// into place for every request.
    pub fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Sending<'_, impl Future<Output = Answer>, impl Future<Output = Answer>> {
        Sending {
            pool: self,
            state: self.send_now(request),
        }
    }

    /// Hands `request` to a free connection that is ready for it, if there
    /// is one; otherwise starts the slower path.
    fn send_now(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Sent<'_, impl Future<Output = Answer>, impl Future<Output = Answer>> {
        let (target, free) = match self.hosts.checkout_for(request.uri()) {
            Ok(checked_out) => checked_out,
            Err(error) => return Sent::Failed { error },
        };
        match free {
            Some(Sender::H1(mut sender)) if sender.is_ready() => {
                let uri = to_origin_form(&target, &mut request);
                let answer = sender.try_send_request(request);
                Sent::H1 {
                    answer,
                    sender,
                    target,
                    uri,
                }
            }
            Some(Sender::H2(mut sender, id)) if sender.is_ready() => Sent::H2 {
                answer: sender.try_send_request(request),
                id,
                target,
            },
            free => Sent::Later {
                rest: Box::pin(self.send_later(request, target, free)),
            },
        }
    }

    /// The rest of [`Pool::send`]: waits for `free` to be ready, or for
    /// another connection, or opens one.
    async fn send_later(
        &self,
        mut request: Request<Full<Bytes>>,
        target: Target,
        mut free: Option<Sender>,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let uri = request.uri().clone();
        loop {
            let (sender, reused) = match free.take() {
                Some(sender) => (sender, true),
                // Boxed: connecting (TCP, TLS, HTTP/2 handshake) is rare and its
                // state is large; inline, every request's future would carry it.
                None => Box::pin(self.connection(target.index, &uri)).await?,
            };
            let sent = match sender {
                Sender::H1(sender) => self.send_h1(&target, sender, request).await,
                Sender::H2(sender, id) => self.send_h2(&target, sender, id, request).await,
            };
            match sent {
                Ok(response) => return Ok(response),
                Err(Failure::Unsent(unsent)) if reused => {
                    tracing::trace!("pooled connection closed before use; trying another");
                    request = *unsent;
                    free = self.hosts.checkout(target.index);
                }
                Err(Failure::Unsent(_)) => {
                    return Err(ProxyError::UpstreamUnreachable(
                        "a new connection to the upstream closed before the request was sent"
                            .into(),
                    ))
                }
                Err(Failure::Failed(e)) => return Err(e),
            }
        }
    }

    /// An HTTP/1.1 connection's answer, with the connection lent to its
    /// body until it ends; or the request back, with its absolute `uri`.
    fn answered_h1(
        &self,
        target: &Target,
        sender: H1,
        answer: Answer,
        uri: Uri,
    ) -> Result<Response<PooledBody>, Failure> {
        match answer {
            Ok(response) => {
                let lease = Lease {
                    hosts: Arc::downgrade(&self.hosts),
                    host: target.index,
                    sender,
                };
                Ok(response.map(|body| PooledBody::new(body, Some(lease))))
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => Err(Failure::Unsent(Box::new(absolute(unsent, uri)))),
                None => Err(Failure::Failed(answer_error(&e.into_error()))),
            },
        }
    }

    /// An HTTP/2 connection's answer; a connection that could not take the
    /// request is shared no longer.
    fn answered_h2(
        &self,
        target: &Target,
        id: Option<u64>,
        answer: Answer,
    ) -> Result<Response<PooledBody>, Failure> {
        match answer {
            Ok(response) => Ok(response.map(|body| PooledBody::new(body, None))),
            Err(mut e) => match e.take_message() {
                Some(unsent) => {
                    self.hosts.forget_h2(target.index, id);
                    Err(Failure::Unsent(Box::new(unsent)))
                }
                None => {
                    let e = e.into_error();
                    // A GOAWAY ends the connection for new streams too; a
                    // stream refused alone (REFUSED_STREAM) leaves it usable.
                    if went_away(&e) {
                        self.hosts.forget_h2(target.index, id);
                    }
                    Err(Failure::Failed(answer_error(&e)))
                }
            },
        }
    }

    async fn send_h1(
        &self,
        target: &Target,
        mut sender: H1,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, Failure> {
        let ready = sender.is_ready()
            || matches!(
                tokio::time::timeout(READY_WAIT, sender.ready()).await,
                Ok(Ok(()))
            );
        if !ready {
            return Err(Failure::Unsent(Box::new(request)));
        }
        let uri = to_origin_form(target, &mut request);
        let answer = sender.try_send_request(request).await;
        self.answered_h1(target, sender, answer, uri)
    }

    async fn send_h2(
        &self,
        target: &Target,
        mut sender: H2,
        id: Option<u64>,
        request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, Failure> {
        if sender.ready().await.is_err() {
            self.hosts.forget_h2(target.index, id);
            return Err(Failure::Unsent(Box::new(request)));
        }
        let answer = sender.try_send_request(request).await;
        self.answered_h2(target, id, answer)
    }

    /// A connection for a request that found none free: the one another
    /// request is opening, once it is up, or a new one; and whether it is
    /// shared (a request it could not take may try another).
    async fn connection(&self, host: usize, uri: &Uri) -> Result<(Sender, bool), ProxyError> {
        match self.hosts.turn(host) {
            Turn::Lead(leading) => {
                let opened = self.connect(host, uri).await;
                if let Err(e) = &opened {
                    leading.failed(e);
                }
                drop(leading);
                Ok((opened?, false))
            }
            Turn::Wait(mut opening) => {
                // Ends when the opener is done, whatever became of it.
                let _ = opening.changed().await;
                if let Some(error) = opening.borrow().clone() {
                    return Err(error);
                }
                match self.hosts.checkout(host) {
                    Some(sender) => Ok((sender, true)),
                    // The opener gave up (its client went away), or the
                    // host spoke HTTP/1.1: another turn.
                    None => Box::pin(self.connection(host, uri)).await,
                }
            }
            Turn::Own => Ok((self.connect(host, uri).await?, false)),
        }
    }

    /// A new connection to `uri`'s host: TCP, TLS, and HTTP/2 when ALPN
    /// picks it.
    async fn connect(&self, host: usize, uri: &Uri) -> Result<Sender, ProxyError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| upstream_error(&*e))?;
        let io = connector
            .call(uri.clone())
            .await
            .map_err(|e| upstream_error(&*e))?;
        let h2 = io.connected().is_negotiated_h2();
        self.hosts.learned(host, h2);
        if h2 {
            let mut builder = http2::Builder::new(TokioExecutor::new());
            builder
                .timer(TokioTimer::new())
                .initial_stream_window_size(UPSTREAM_H2_STREAM_WINDOW)
                .initial_connection_window_size(UPSTREAM_H2_CONNECTION_WINDOW)
                .max_header_list_size(UPSTREAM_H2_MAX_HEADER_LIST);
            if let Some(ping) = self.ping {
                builder
                    .keep_alive_interval(ping)
                    .keep_alive_timeout(ping)
                    .keep_alive_while_idle(false);
            }
            let (sender, connection) = builder
                .handshake(io)
                .await
                .map_err(|e| upstream_error(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            let id = self.hosts.share_h2(host, &sender);
            Ok(Sender::H2(sender, id))
        } else {
            let (sender, connection) = http1::Builder::new()
                .max_buf_size(UPSTREAM_READ_BUFFER)
                .handshake(io)
                .await
                .map_err(|e| upstream_error(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }
}

/// HTTP/1.1 names the host in a header, the path alone on the line: the
/// request made so, and its absolute URI as it was.
fn to_origin_form(target: &Target, request: &mut Request<Full<Bytes>>) -> Uri {
    let origin = request.uri().path_and_query().cloned().unwrap_or_else(root);
    let uri = std::mem::replace(request.uri_mut(), Uri::from(origin));
    if let Some(value) = &target.host_header {
        request
            .headers_mut()
            .entry(http::header::HOST)
            .or_insert_with(|| value.clone());
    }
    uri
}

/// A request that never left, as it was before [`to_origin_form`].
fn absolute(mut request: Request<Full<Bytes>>, uri: Uri) -> Request<Full<Bytes>> {
    *request.uri_mut() = uri;
    request.headers_mut().remove(http::header::HOST);
    request
}

fn root() -> PathAndQuery {
    PathAndQuery::from_static("/")
}

#[cfg(test)]
mod tests;
