//! Keep-alive connections to Bedrock for buffered requests.
//!
//! hyper-util's pooled client spawns a task per HTTP/1.1 request to wait
//! for its connection to be free again, and clones its connector and pool
//! key on every call. Here the response body carries its connection and
//! hands it back when the body ends; whether it is ready for the next
//! request is checked when it is next taken. Connecting (TCP, TLS, ALPN)
//! stays with hyper-rustls, and HTTP with hyper's connection-level client.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower_service::Service;

use super::error::ProxyError;

type H1 = http1::SendRequest<Full<Bytes>>;
type H2 = http2::SendRequest<Full<Bytes>>;

/// Open connections to each upstream host, shared by all requests.
#[derive(Clone)]
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    connector: HttpsConnector<HttpConnector>,
    /// One entry per upstream host ever used; never removed, so an index
    /// stays valid for the life of the pool.
    hosts: Mutex<Vec<Host>>,
    /// Idle HTTP/1.1 connections kept per host.
    max_idle: usize,
    /// An idle connection older than this is closed, not reused.
    idle_timeout: Duration,
}

struct Host {
    scheme: Scheme,
    authority: Authority,
    /// Most recently returned last: reused first, while its TLS state is warm.
    idle: Vec<Idle>,
    /// HTTP/2 (by ALPN) carries every request on one connection.
    shared_h2: Option<SharedH2>,
    /// Numbers the HTTP/2 connections shared, so a failed one is told apart
    /// from its successor.
    h2_shared_count: u64,
    /// Whether a task is closing this host's expired idle connections.
    reaping: bool,
}

struct SharedH2 {
    id: u64,
    sender: H2,
    last_used: Instant,
}

struct Idle {
    sender: H1,
    since: Instant,
}

enum Sender {
    H1(H1),
    /// With the id it is shared under, if it is.
    H2(H2, Option<u64>),
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
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                connector,
                hosts: Mutex::new(Vec::new()),
                max_idle,
                idle_timeout,
            }),
        }
    }

    /// Sends `request` (absolute URI) on an idle connection to its host, or
    /// a new one. A request that never left because a reused connection had
    /// closed meanwhile is sent again; anything else is answered as is.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let uri = request.uri().clone();
        let host = self.shared.host_index(&uri)?;
        loop {
            let (sender, reused) = match self.shared.checkout(host) {
                Some(sender) => (sender, true),
                // Boxed: connecting (TCP, TLS, HTTP/2 handshake) is rare and its
                // state is large; inline, every request's future would carry it.
                None => (Box::pin(self.connect(host, &uri)).await?, false),
            };
            match self.try_send(host, sender, request, &uri).await {
                Ok(response) => return Ok(response),
                Err(Failure::Unsent(unsent)) if reused => {
                    tracing::trace!("pooled connection closed before use; trying another");
                    request = *unsent;
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

    async fn try_send(
        &self,
        host: usize,
        sender: Sender,
        mut request: Request<Full<Bytes>>,
        uri: &Uri,
    ) -> Result<Response<PooledBody>, Failure> {
        match sender {
            Sender::H1(mut sender) => {
                let ready = sender.is_ready()
                    || matches!(
                        tokio::time::timeout(READY_WAIT, sender.ready()).await,
                        Ok(Ok(()))
                    );
                if !ready {
                    return Err(Failure::Unsent(Box::new(request)));
                }
                // HTTP/1.1 names the host in a header, the path alone on the line.
                let origin = uri.path_and_query().cloned().unwrap_or_else(root);
                *request.uri_mut() = Uri::from(origin);
                if let Some(value) = host_header(uri) {
                    request
                        .headers_mut()
                        .entry(http::header::HOST)
                        .or_insert(value);
                }
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        let lease = Lease {
                            shared: Arc::downgrade(&self.shared),
                            host,
                            sender,
                        };
                        Ok(response.map(|body| PooledBody::new(body, Some(lease))))
                    }
                    Err(mut e) => match e.take_message() {
                        Some(mut unsent) => {
                            *unsent.uri_mut() = uri.clone();
                            unsent.headers_mut().remove(http::header::HOST);
                            Err(Failure::Unsent(Box::new(unsent)))
                        }
                        None => Err(Failure::Failed(upstream_error(&e.into_error()))),
                    },
                }
            }
            Sender::H2(mut sender, id) => {
                let sent = match sender.ready().await {
                    Ok(()) => sender.try_send_request(request).await,
                    Err(_) => return Err(self.shared.unsent_on_h2(host, id, request)),
                };
                match sent {
                    Ok(response) => Ok(response.map(|body| PooledBody::new(body, None))),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => Err(self.shared.unsent_on_h2(host, id, unsent)),
                        None => Err(Failure::Failed(upstream_error(&e.into_error()))),
                    },
                }
            }
        }
    }

    /// A new connection to `uri`'s host: TCP, TLS, and HTTP/2 when ALPN
    /// picks it.
    async fn connect(&self, host: usize, uri: &Uri) -> Result<Sender, ProxyError> {
        let mut connector = self.shared.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| upstream_error(&*e))?;
        let io = connector
            .call(uri.clone())
            .await
            .map_err(|e| upstream_error(&*e))?;
        if io.connected().is_negotiated_h2() {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .map_err(|e| upstream_error(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
                }
            });
            let id = self.shared.share_h2(host, &sender);
            Ok(Sender::H2(sender, id))
        } else {
            let (sender, connection) =
                http1::handshake(io).await.map_err(|e| upstream_error(&e))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(Sender::H1(sender))
        }
    }
}

impl Shared {
    fn hosts(&self) -> MutexGuard<'_, Vec<Host>> {
        // Every critical section leaves the list whole: a panic elsewhere
        // cannot have left it half-written.
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn host_index(&self, uri: &Uri) -> Result<usize, ProxyError> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(ProxyError::UpstreamUnreachable(format!(
                "the upstream URI {uri} names no host"
            )));
        };
        let mut hosts = self.hosts();
        if let Some(i) = hosts
            .iter()
            .position(|h| &h.scheme == scheme && &h.authority == authority)
        {
            return Ok(i);
        }
        hosts.push(Host {
            scheme: scheme.clone(),
            authority: authority.clone(),
            idle: Vec::new(),
            shared_h2: None,
            h2_shared_count: 0,
            reaping: false,
        });
        Ok(hosts.len() - 1)
    }

    fn checkout(&self, host: usize) -> Option<Sender> {
        let mut hosts = self.hosts();
        let host = hosts.get_mut(host)?;
        let now = Instant::now();
        if let Some(h2) = &mut host.shared_h2 {
            if !h2.sender.is_closed() && now.duration_since(h2.last_used) < self.idle_timeout {
                h2.last_used = now;
                return Some(Sender::H2(h2.sender.clone(), Some(h2.id)));
            }
            host.shared_h2 = None;
        }
        while let Some(idle) = host.idle.pop() {
            if !idle.sender.is_closed() && now.duration_since(idle.since) < self.idle_timeout {
                return Some(Sender::H1(idle.sender));
            }
        }
        None
    }

    /// Shares a new HTTP/2 connection unless a live one is shared already;
    /// the id it is shared under.
    fn share_h2(self: &Arc<Self>, host: usize, sender: &H2) -> Option<u64> {
        let mut hosts = self.hosts();
        let entry = hosts.get_mut(host)?;
        if entry
            .shared_h2
            .as_ref()
            .is_some_and(|h2| !h2.sender.is_closed())
        {
            return None;
        }
        entry.h2_shared_count += 1;
        let id = entry.h2_shared_count;
        entry.shared_h2 = Some(SharedH2 {
            id,
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        let start = !std::mem::replace(&mut entry.reaping, true);
        drop(hosts);
        if start {
            self.start_reaper(host);
        }
        Some(id)
    }

    /// An HTTP/2 connection that could not take a request (closing, or
    /// going away) is shared no longer, so the retry opens a new one.
    fn unsent_on_h2(&self, host: usize, id: Option<u64>, request: Request<Full<Bytes>>) -> Failure {
        if let Some(host) = self.hosts().get_mut(host) {
            if id.is_some() && host.shared_h2.as_ref().map(|h2| h2.id) == id {
                host.shared_h2 = None;
            }
        }
        Failure::Unsent(Box::new(request))
    }

    fn checkin(self: &Arc<Self>, host: usize, sender: H1) {
        if sender.is_closed() {
            return;
        }
        let mut hosts = self.hosts();
        let Some(entry) = hosts.get_mut(host) else {
            return;
        };
        if entry.idle.len() >= self.max_idle {
            return;
        }
        entry.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        let start = !std::mem::replace(&mut entry.reaping, true);
        drop(hosts);
        if start {
            self.start_reaper(host);
        }
    }

    /// Closes `host`'s connections that have been idle longer than the idle
    /// timeout. Whether any remain to watch.
    fn reap(&self, host: usize) -> bool {
        let mut hosts = self.hosts();
        let Some(host) = hosts.get_mut(host) else {
            return false;
        };
        let now = Instant::now();
        let timeout = self.idle_timeout;
        host.idle
            .retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < timeout);
        if host
            .shared_h2
            .as_ref()
            .is_some_and(|h2| h2.sender.is_closed() || now.duration_since(h2.last_used) >= timeout)
        {
            // Streams still open keep the connection until they end.
            host.shared_h2 = None;
        }
        host.reaping = !host.idle.is_empty() || host.shared_h2.is_some();
        host.reaping
    }

    /// Closes idle connections as they expire, so an idle sidecar holds no
    /// sockets; ends when the host has none left, or the pool is gone.
    /// Checks every half timeout: a connection is never reused after the
    /// timeout, and closed at most half of it later.
    fn start_reaper(self: &Arc<Self>, host: usize) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to run it: the next checkin tries again.
            if let Some(entry) = self.hosts().get_mut(host) {
                entry.reaping = false;
            }
            return;
        };
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        let shared = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if !shared.reap(host) {
                    return;
                }
            }
        });
    }
}

/// An HTTP/1.1 connection lent to one response, handed back when its body ends.
struct Lease {
    shared: Weak<Shared>,
    host: usize,
    sender: H1,
}

impl Lease {
    fn give_back(self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        shared.checkin(self.host, self.sender);
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
    fn new(inner: Incoming, lease: Option<Lease>) -> Self {
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

fn root() -> PathAndQuery {
    PathAndQuery::from_static("/")
}

/// The `Host` header for `uri`: its authority, without the port when it is
/// the scheme's default (what the request was signed with).
fn host_header(uri: &Uri) -> Option<HeaderValue> {
    let host = super::signer::host(uri).ok()?;
    HeaderValue::from_str(host).ok()
}

/// A send or connect failure, with its causes, as the client sees it.
pub fn upstream_error(e: &(dyn std::error::Error + 'static)) -> ProxyError {
    let mut detail = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    if detail.contains("timed out") || detail.contains("deadline") {
        ProxyError::UpstreamTimeout(detail)
    } else {
        ProxyError::UpstreamUnreachable(detail)
    }
}

#[cfg(test)]
mod tests;
