//! The serving kit every listener uses (proxy, admin, container
//! credentials, webhook): bind, one accept loop, one bounded drain.
//!
//! A server takes an already-bound listener and a shutdown token, as in
//! mini-redis: on shutdown it stops accepting, lets open connections finish
//! their in-flight requests and streams for at most the grace period, then
//! closes what is left.

mod conn;
mod counted;
mod counters;
pub mod limits;
mod peers;
pub mod poll;
pub mod signal;
pub mod tls;

use counters::Open;
pub use counters::{LimitCounters, UnreadCounters};
pub use limits::Limits;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use conn::{Activity, Watched};
pub use counted::Connection;
use counted::Counted;
use peers::Peers;

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} for the {what}{origin}: {source}")]
    Bind {
        addr: SocketAddr,
        what: &'static str,
        /// ` (setting:` the flag and variables that choose the address
        /// `)`, when known.
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the address of the {what}: {source}")]
    LocalAddr {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The error of a failed bind; its origin is added by [`ServeError::set_by`].
fn bind_error(addr: SocketAddr, what: &'static str) -> impl FnOnce(std::io::Error) -> ServeError {
    move |source| ServeError::Bind {
        addr,
        what,
        origin: String::new(),
        source,
    }
}

impl ServeError {
    /// Names where the address came from (a port in use is most often
    /// fixed there).
    pub fn set_by(mut self, setting: &crate::config::setting::Setting) -> Self {
        if let Self::Bind { origin, .. } = &mut self {
            // "setting", not "set by": the default address comes from it too.
            *origin = format!(" (setting: {})", setting.origin());
        }
        self
    }
}

/// Binds `addr`, naming the address and the server in the error.
///
/// `[::]` means every address of both families: the injector and the
/// chart listen there so kubelet probes, Prometheus and the API server
/// reach a pod on IPv4, IPv6-only and dual-stack clusters alike.
pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, ServeError> {
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        return bind_every_address(addr.port(), what, ipv6_socket);
    }
    TcpListener::bind(addr)
        .await
        .map_err(bind_error(addr, what))
}

/// `[::]:port` as one dual-stack socket, set explicitly rather than left
/// to `net.ipv6.bindv6only`. A node booted without IPv6 cannot make the
/// socket (or has no `::` to bind): the pod still starts, on `0.0.0.0`,
/// and says so, since an IPv4-only node has no IPv6 peers to miss.
fn bind_every_address(
    port: u16,
    what: &'static str,
    ipv6_socket: impl FnOnce() -> std::io::Result<Socket>,
) -> Result<TcpListener, ServeError> {
    let addr = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    let socket = match ipv6_socket() {
        Ok(socket) => socket,
        Err(e) if no_ipv6(&e) => return bind_ipv4_instead(port, what, &e),
        Err(source) => return Err(bind_error(addr, what)(source)),
    };
    let bound = socket
        .set_only_v6(false)
        .and_then(|()| socket.set_reuse_address(true))
        .and_then(|()| socket.set_nonblocking(true))
        .and_then(|()| socket.bind(&addr.into()));
    match bound {
        Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => {
            return bind_ipv4_instead(port, what, &e)
        }
        Err(source) => return Err(bind_error(addr, what)(source)),
        Ok(()) => {}
    }
    socket
        .listen(LISTEN_BACKLOG)
        .and_then(|()| TcpListener::from_std(socket.into()))
        .map_err(bind_error(addr, what))
}

fn bind_ipv4_instead(
    port: u16,
    what: &'static str,
    why: &std::io::Error,
) -> Result<TcpListener, ServeError> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    tracing::warn!(server = what, error = %why, %addr, "no IPv6 on this node: listening on IPv4 only");
    std::net::TcpListener::bind(addr)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            TcpListener::from_std(l)
        })
        .map_err(bind_error(addr, what))
}

/// `socket(AF_INET6, ..)` on a kernel booted without IPv6 (`ipv6.disable=1`).
fn no_ipv6(e: &std::io::Error) -> bool {
    /// EAFNOSUPPORT, "address family not supported by protocol".
    #[cfg(target_os = "linux")]
    const EAFNOSUPPORT: i32 = 97;
    #[cfg(not(target_os = "linux"))]
    const EAFNOSUPPORT: i32 = 47;
    e.raw_os_error() == Some(EAFNOSUPPORT)
}

fn ipv6_socket() -> std::io::Result<Socket> {
    Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))
}

/// tokio's own for `TcpListener::bind`.
const LISTEN_BACKLOG: i32 = 1024;

/// The bound address of a listener, for logs and tests.
pub fn local_addr(listener: &TcpListener, what: &'static str) -> Result<SocketAddr, ServeError> {
    listener
        .local_addr()
        .map_err(|source| ServeError::LocalAddr { what, source })
}

/// Where connections come from: a TCP listener, or the TLS listener that
/// hands over connections whose handshake completed.
pub trait Accept: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    fn accept(&mut self) -> impl Future<Output = std::io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;

    async fn accept(&mut self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        // On a dual-stack `[::]` socket IPv4 peers arrive as `::ffff:a.b.c.d`;
        // logs and the per-peer limits see the address the peer has.
        Ok((
            stream,
            SocketAddr::new(peer.ip().to_canonical(), peer.port()),
        ))
    }
}

/// Serves HTTP/1.1 (and HTTP/2 when `limits.http2`) on `listener` within
/// `limits` until `shutdown` fires, then stops accepting and drains for at
/// most `grace`. What it does at its connection limit is counted in
/// `counters`.
pub async fn serve<L, S, B>(
    mut listener: L,
    service: S,
    limits: Limits,
    shutdown: CancellationToken,
    grace: Duration,
    name: &'static str,
    counters: LimitCounters,
) where
    L: Accept,
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = Arc::new(builder(&limits));
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let peers = Arc::new(Peers::default());
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually EMFILE: back off briefly instead of spinning.
                tracing::warn!(server = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Over a limit: closed at once, before any read, so it costs nothing;
        // unless another peer holds more than its share (see `evict_for`),
        // or, inside the pod, a kept-alive connection sits idle (see
        // `reclaim_idle`).
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                let room = match limits.max_connections_per_peer {
                    Some(limit) => peers.evict_for(peer.ip(), limit),
                    None => peers.reclaim_idle().inspect(|_| {
                        counters.reclaimed.iter().for_each(|c| c.inc());
                        tracing::debug!(server = name, "closing an idle connection to make room");
                    }),
                };
                match room {
                    Some(slot) => slot,
                    None => {
                        counters.refused.inc();
                        tracing::debug!(server = name, %peer, "connection limit reached; closing");
                        continue;
                    }
                }
            }
        };
        let activity = Activity::new();
        // The listener slot lives in the peer table, where an eviction can
        // hand it on.
        let limit = limits.max_connections_per_peer.unwrap_or(usize::MAX);
        let Some(peer_slot) = peers.claim(peer.ip(), limit, activity.clone(), Some(slot)) else {
            counters.refused.inc();
            tracing::debug!(server = name, %peer, "per-peer connection limit reached; closing");
            continue;
        };
        let evicted_token = peer_slot.evicted.clone();
        let open = counters.open.clone().map(Open::new);
        let io = TokioIo::new(Watched::new(stream, activity.clone()));
        // Where other pods connect, requests may close their connection to
        // make room for another peer (the webhook's review budget).
        let connection = limits
            .max_connections_per_peer
            .map(|_| Connection::new(peer.ip(), evicted_token.clone()).watching(activity.clone()));
        let service = Counted::new(service.clone(), activity.clone(), connection);
        let (builder, shutdown, idle) = (builder.clone(), shutdown.clone(), limits.idle_timeout);
        let requests_keep_open = limits.max_connections_per_peer.is_none();
        let unread = counters.unread.clone();
        connections.spawn(async move {
            let _held = (peer_slot, open);
            let conn = builder.serve_connection(io, service);
            tokio::pin!(conn);
            let evicted = |token: CancellationToken| token.cancelled_owned();
            // The rare ends of a connection, polled only once one of them
            // has been woken: a connection wakes several times per request,
            // and polling them each time took two locks and a timer check.
            let mut rare = FuturesUnordered::new();
            rare.push({
                let (activity, eviction) = (activity.clone(), evicted(evicted_token.clone()));
                async move {
                    tokio::select! {
                        _ = shutdown.cancelled_owned() => Stop::Shutdown,
                        _ = activity.idle_for(idle, requests_keep_open) => Stop::Idle,
                        () = eviction => Stop::Evicted,
                    }
                }
            });
            let stop = tokio::select! {
                biased;
                done = conn.as_mut() => return log_end(name, done, unread.as_ref()),
                Some(stop) = rare.next() => stop,
            };
            // Its slot is already handed on. Evicted for another peer (see
            // `evict_for`): closed at once. Reclaimed while idle (see
            // `reclaim_idle`): closed like any idle connection, so an
            // HTTP/2 client gets its GOAWAY.
            let reclaimed = stop == Stop::Evicted && requests_keep_open;
            if stop == Stop::Evicted && !reclaimed {
                tracing::debug!(server = name, %peer, "closing a connection to make room for another peer");
                return;
            }
            tracing::trace!(server = name, reason = stop.as_str(), "closing connection");
            conn.as_mut().graceful_shutdown();
            // The silence that bounds the close starts now: an idle
            // connection has been silent for the whole idle timeout
            // already, and was dropped before HTTP/2's GOAWAY went out.
            activity.touch();
            // A peer that does not read its answers would hold the slot
            // here forever: the graceful close is bounded too, by silence
            // on the wire, so the end of an answer still being written to a
            // slow reader is not cut off.
            tokio::select! {
                done = conn.as_mut() => log_end(name, done, unread.as_ref()),
                () = evicted(evicted_token), if !reclaimed => {}
                _ = activity.quiet_for(idle, requests_keep_open) => {}
            }
        });
    }
    drop(listener);
    connections.close();
    tracing::info!(
        server = name,
        grace_s = grace.as_secs_f64(),
        open = connections.len(),
        "stopped accepting; draining"
    );
    tokio::select! {
        _ = connections.wait() => tracing::info!(server = name, "drained"),
        _ = tokio::time::sleep(grace) => tracing::warn!(server = name, "grace period over with requests still open; closing them"),
    }
}

/// Why a connection is closed before its peer closes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Shutdown,
    Idle,
    /// To make room for another peer.
    Evicted,
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Self::Shutdown => "shutdown",
            Self::Idle => "idle",
            Self::Evicted => "evicted",
        }
    }
}

fn log_end(
    name: &'static str,
    result: Result<(), Box<dyn std::error::Error + Send + Sync>>,
    unread: Option<&UnreadCounters>,
) {
    if let Err(e) = result {
        if let Some(unread) = unread {
            unread.count(&*e);
        }
        tracing::debug!(server = name, error = %e, "connection closed with error");
    }
}

/// A connection builder applying `limits`.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.read_buffer());
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(HTTP2_WINDOW)
        .initial_connection_window_size(HTTP2_WINDOW)
        .max_send_buf_size(HTTP2_SEND_QUEUE)
        .keep_alive_interval(HTTP2_KEEPALIVE)
        .keep_alive_timeout(HTTP2_KEEPALIVE);
    if limits.http2 {
        builder
    } else {
        builder.http1_only()
    }
}

/// Streams one HTTP/2 connection may have open: ample for one pod's
/// clients, small enough that one connection cannot hold everything.
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// What an HTTP/2 peer may send before the server reads it, per stream and
/// per connection: HTTP/2's own default. Unread request data sits in
/// hyper's buffers, outside every body budget; with hyper's defaults
/// (1 MiB a connection) 250 connections that never finished their bodies
/// held 278 MB. The proxy's clients are on loopback, where a small window
/// costs no throughput; the webhook's reviews (a few MB at most) take a
/// few more round trips.
const HTTP2_WINDOW: u32 = 65_535;
/// What is queued for an HTTP/2 stream before the connection writes it
/// out (plus the chunk that passes it). Each chunk keeps alive the upstream
/// read buffer it was read into (unless it is short and copied): with
/// 16 KiB reads, 512 streams of large events peaked at 121 MiB with 64 KiB
/// queued and 98 MiB with 16 KiB (debug builds). Together, the two cost
/// one answer to an HTTP/2 client over plain loopback about a third of its
/// rate (530 to 360 MB/s), far above what Bedrock sends.
const HTTP2_SEND_QUEUE: usize = 16 * 1024;
/// Ping an HTTP/2 peer this often, and drop it when a ping goes unanswered
/// this long: a vanished peer does not hold its connection.
const HTTP2_KEEPALIVE: Duration = Duration::from_secs(30);

/// An axum router as a hyper service, for [`serve`].
pub fn router_service(
    router: axum::Router,
) -> hyper_util::service::TowerToHyperService<axum::Router> {
    hyper_util::service::TowerToHyperService::new(router)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether this machine can reach anything over IPv6 loopback.
    fn has_ipv6_loopback() -> bool {
        std::net::TcpListener::bind("[::1]:0").is_ok()
    }

    #[tokio::test]
    async fn every_address_takes_both_families() {
        let listener = bind("[::]:0".parse().unwrap(), "test server")
            .await
            .unwrap();
        let port = local_addr(&listener, "test server").unwrap().port();
        let mut targets = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        // A machine without IPv6 loopback can only check the IPv4 half.
        if has_ipv6_loopback() {
            targets.push(SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
        }
        let mut listener = listener;
        for target in targets {
            let _client = TcpStream::connect(target).await.unwrap();
            let (_, peer) = Accept::accept(&mut listener).await.unwrap();
            // IPv4 peers are reported as themselves, not as `::ffff:…`.
            assert_eq!(peer.ip(), target.ip(), "connected to {target}");
        }
    }

    #[tokio::test]
    async fn a_node_without_ipv6_listens_on_ipv4() {
        // EAFNOSUPPORT, what a kernel booted with ipv6.disable=1 answers.
        let no_ipv6 = || Err(std::io::Error::from_raw_os_error(97));
        let listener = bind_every_address(0, "test server", no_ipv6).unwrap();
        let addr = local_addr(&listener, "test server").unwrap();
        assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        TcpStream::connect((Ipv4Addr::LOCALHOST, addr.port()))
            .await
            .unwrap();
        // Out of descriptors (EMFILE), say: an error, not "no IPv6".
        let exhausted = || Err(std::io::Error::from_raw_os_error(24));
        let err = bind_every_address(0, "test server", exhausted).unwrap_err();
        assert!(err.to_string().contains("[::]:0"), "{err}");
    }

    #[tokio::test]
    async fn a_port_in_use_is_an_error_not_a_fallback() {
        let taken = bind("[::]:0".parse().unwrap(), "first").await.unwrap();
        let port = local_addr(&taken, "first").unwrap().port();
        let err = bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)), "second")
            .await
            .unwrap_err();
        // `[::]`, or `0.0.0.0` on a machine without IPv6, where both fell back.
        assert!(
            err.to_string().contains(&format!(":{port} for the second")),
            "{err}"
        );
    }
}
