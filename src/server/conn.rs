//! One accepted connection's bookkeeping: the bytes that cross it and the
//! requests in flight on it, so it can be closed when idle, and the slots
//! it holds (overall and per peer), released when it closes.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::Service;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Activity of one connection.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    /// Milliseconds after `started` of the last byte read or written.
    last: AtomicU64,
    /// Milliseconds after `started` a request last ended. Bytes
    /// alone do not keep a connection open: HTTP/2 PINGs cross an idle one.
    last_request: AtomicU64,
    in_flight: AtomicUsize,
    /// Requests in flight whose response is made: the rest are still being
    /// worked on (a webhook review waits on API reads for seconds).
    answering: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last: AtomicU64::new(0),
            last_request: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            answering: AtomicUsize::new(0),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    /// A request ended: traffic, and the start of idleness.
    fn touch_request(&self) {
        let ms = self.now_ms();
        self.last.store(ms, Ordering::Relaxed);
        self.last_request.store(ms, Ordering::Relaxed);
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.started + Duration::from_millis(ms.load(Ordering::Relaxed))
    }

    fn last(&self) -> Instant {
        self.at(&self.last)
    }

    /// How long since a byte last crossed the connection.
    pub fn silent_for(&self) -> Duration {
        Instant::now().saturating_duration_since(self.last())
    }

    /// Resolves once the connection has had no request in flight for
    /// `idle` (whatever control frames cross it), or, unless
    /// `requests_keep_open`, once a request in flight has moved no byte for
    /// `idle`: on the proxy a request waiting on a slow upstream keeps its
    /// connection. The ports other pods reach serve answers made at once,
    /// so there a request silent that long is a peer that stopped reading.
    pub async fn idle_for(&self, idle: Duration, requests_keep_open: bool) {
        self.quiet(idle, requests_keep_open, true).await;
    }

    /// Resolves once no byte has crossed the connection for `idle` with
    /// nothing in flight (or, unless `requests_keep_open`, with a request
    /// in flight): bounds closing a connection. A request's end is when
    /// hyper took the last of its answer, which may still sit in hyper's
    /// buffer for a slow reader; bytes moving mean it is being delivered.
    pub async fn quiet_for(&self, idle: Duration, requests_keep_open: bool) {
        self.quiet(idle, requests_keep_open, false).await;
    }

    async fn quiet(&self, idle: Duration, requests_keep_open: bool, by_requests: bool) {
        loop {
            let in_flight = self.in_flight.load(Ordering::Relaxed) > 0;
            let since = if in_flight || !by_requests {
                self.last()
            } else {
                self.at(&self.last_request)
            };
            let deadline = since + idle;
            let busy = requests_keep_open && in_flight;
            if Instant::now() >= deadline && !busy {
                return;
            }
            let next = if Instant::now() >= deadline {
                Instant::now() + idle
            } else {
                deadline
            };
            tokio::time::sleep_until(next).await;
        }
    }
}

/// The connection's IO, noting every byte that crosses it.
pub struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Counts a request in flight from the call until its response body ends
/// or is dropped, and as answering once its response is out.
#[derive(Debug)]
pub struct InFlight {
    activity: Arc<Activity>,
    answering: bool,
}

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        // While it is in flight its bytes count; its end is noted on drop.
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            activity,
            answering: false,
        }
    }

    /// Its response is made and handed to hyper.
    fn answering(mut self) -> Self {
        self.activity.answering.fetch_add(1, Ordering::Relaxed);
        self.answering = true;
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.answering {
            self.activity.answering.fetch_sub(1, Ordering::Relaxed);
        }
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.activity.touch_request();
    }
}

/// A service whose requests count as in flight on their connection.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
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

    fn call(&self, request: Request<Incoming>) -> Self::Future {
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
            response.map(|inner| CountedBody { inner, in_flight })
        }))
    }
}

/// A response body that keeps its request in flight until it ends.
pub struct CountedBody<B> {
    inner: B,
    #[allow(dead_code)] // held for its Drop
    in_flight: Option<InFlight>,
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

/// Open connections per peer address, and a way to make room for a peer
/// with fewer of them when the listener is full.
#[derive(Debug, Default)]
pub struct Peers(Mutex<PeerTable>);

#[derive(Debug, Default)]
struct PeerTable {
    peers: HashMap<IpAddr, Vec<Held>>,
    next_id: u64,
}

/// One open connection, oldest first in its peer's list.
#[derive(Debug)]
struct Held {
    id: u64,
    activity: Arc<Activity>,
    evict: CancellationToken,
    /// Its slot of the listener, kept here so an eviction can hand it to
    /// the newcomer at once (see [`Peers::evict_for`]).
    permit: Option<OwnedSemaphorePermit>,
}

impl PeerTable {
    fn live(list: &[Held]) -> usize {
        list.iter().filter(|h| !h.evict.is_cancelled()).count()
    }

    /// Not told to close yet, and holding a listener slot to give up.
    fn can_go(held: &Held) -> bool {
        !held.evict.is_cancelled() && held.permit.is_some()
    }

    /// Whether a connection may make room for another peer: nothing in
    /// flight, or every request answered and the answer not moving for
    /// [`STALLED`] (answers on these ports are written at once; a peer
    /// that does not read one would otherwise keep its slot). A request
    /// still being worked on is silent too, and is not stalled.
    fn evictable(held: &Held) -> bool {
        let activity = &held.activity;
        let in_flight = activity.in_flight.load(Ordering::Relaxed);
        Self::can_go(held)
            && (in_flight == 0
                || (activity.answering.load(Ordering::Relaxed) >= in_flight
                    && activity.silent_for() >= STALLED))
    }
}

/// See [`PeerTable::evictable`].
const STALLED: Duration = Duration::from_secs(1);

/// One connection's slot in [`Peers`], released on drop.
pub struct PeerSlot {
    peers: Arc<Peers>,
    ip: IpAddr,
    id: u64,
    /// Fires when the connection must close to make room for another peer.
    pub evicted: CancellationToken,
}

impl Peers {
    fn table(&self) -> std::sync::MutexGuard<'_, PeerTable> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for `ip`, unless it already holds `limit`. `permit`, the
    /// connection's slot of the whole listener, is kept with it for as long
    /// as the connection is open, unless an eviction hands it on.
    pub fn claim(
        self: &Arc<Self>,
        ip: IpAddr,
        limit: usize,
        activity: Arc<Activity>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Option<PeerSlot> {
        let mut table = self.table();
        table.next_id += 1;
        let id = table.next_id;
        let list = table.peers.entry(ip).or_default();
        // Connections told to close still count until they have: a peer
        // cannot exceed its share by getting itself evicted.
        if list.len() >= limit {
            return None;
        }
        let evicted = CancellationToken::new();
        list.push(Held {
            id,
            activity,
            evict: evicted.clone(),
            permit,
        });
        Some(PeerSlot {
            peers: self.clone(),
            ip,
            id,
            evicted,
        })
    }

    /// The listener is full and `ip` knocks: if another peer holds more
    /// connections than `ip` does, one of them is told to close and its
    /// listener slot is returned for the newcomer. So peers that flood the
    /// port cannot keep one that connects now and then (the kubelet's
    /// probes, a Prometheus scrape) out: the flooders lose their own
    /// connections first. The oldest connection with nothing moving goes
    /// first (see [`PeerTable::evictable`]); if there is none, a peer
    /// holding its whole share (`limit`) loses its oldest even with a
    /// request in flight, since answering its requests as fast as they
    /// come must not keep the port full.
    ///
    /// The slot changes hands here rather than when the evicted task gets
    /// round to closing: on a busy runtime that can take longer than a
    /// probe waits. Until its task runs again and closes it, the evicted
    /// connection is open beyond the limit, holding no slot.
    pub fn evict_for(&self, ip: IpAddr, limit: usize) -> Option<OwnedSemaphorePermit> {
        let mut table = self.table();
        let own = table.peers.get(&ip);
        // A newcomer whose peer is at its share, counting connections still
        // closing, would be refused by `claim` anyway: evicting for it
        // would close someone's connection for nothing.
        if own.is_some_and(|l| l.len() >= limit) {
            return None;
        }
        let mine = own.map_or(0, |l| PeerTable::live(l));
        // Busiest peers first.
        let mut heavier: Vec<_> = table
            .peers
            .values_mut()
            .map(|l| (PeerTable::live(l), l))
            .filter(|(n, _)| *n > mine)
            .collect();
        heavier.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
        let quiet = heavier
            .iter()
            .find_map(|(_, list)| list.iter().find(|h| PeerTable::evictable(h)).map(|h| h.id));
        let greedy = || {
            heavier
                .iter()
                .filter(|(n, _)| *n >= limit)
                .find_map(|(_, list)| list.iter().find(|h| PeerTable::can_go(h)).map(|h| h.id))
        };
        let victim = quiet.or_else(greedy)?;
        let held = heavier
            .into_iter()
            .flat_map(|(_, list)| list.iter_mut())
            .find(|h| h.id == victim)?;
        held.evict.cancel();
        held.permit.take()
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut table = self.peers.table();
        if let Some(list) = table.peers.get_mut(&self.ip) {
            list.retain(|h| h.id != self.id);
            if list.is_empty() {
                table.peers.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn listener(slots: usize) -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(slots))
    }

    fn slot(listener: &Arc<tokio::sync::Semaphore>) -> Option<OwnedSemaphorePermit> {
        Some(listener.clone().try_acquire_owned().expect("a free slot"))
    }

    #[tokio::test]
    async fn only_a_busier_peers_idle_connection_makes_room() {
        let peers = Arc::new(Peers::default());
        let slots = listener(4);
        let busy = Activity::new();
        let flood: Vec<_> = (0..3)
            .map(|i| {
                let activity = if i == 0 {
                    busy.clone()
                } else {
                    Activity::new()
                };
                peers
                    .claim(ip(1), 8, activity, slot(&slots))
                    .expect("under the limit")
            })
            .collect();
        let _busy_request = InFlight::new(busy);
        let other = peers
            .claim(ip(2), 8, Activity::new(), slot(&slots))
            .expect("slot");

        // The flooder knocking again makes no room for itself.
        assert!(peers.evict_for(ip(1), 8).is_none());
        // A peer with fewer connections does; the oldest idle one goes,
        // never the one serving a request.
        let handed_on = peers.evict_for(ip(3), 8).expect("room");
        assert_eq!(slots.available_permits(), 0, "the slot changed hands");
        drop(handed_on);
        assert_eq!(slots.available_permits(), 1);
        assert!(!flood[0].evicted.is_cancelled(), "a request is in flight");
        assert!(flood[1].evicted.is_cancelled());
        assert!(!other.evicted.is_cancelled());
        // An evicted connection no longer counts toward its peer's share.
        assert!(
            peers.evict_for(ip(2), 8).is_some(),
            "ip 1 still has more live ones"
        );
        assert!(flood[2].evicted.is_cancelled());
        assert!(
            peers.evict_for(ip(2), 8).is_none(),
            "now equal: nothing to take"
        );
        assert_eq!(slots.available_permits(), 2);
        drop(flood);
        assert_eq!(slots.available_permits(), 3, "the busy one's, on close");
        assert!(
            !peers.table().peers.contains_key(&ip(1)),
            "released on drop"
        );
    }

    /// Resolves `future` or says it is still pending after `wait`.
    async fn done_within(wait: Duration, future: impl Future<Output = ()>) -> bool {
        tokio::time::timeout(wait, future).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn control_frames_do_not_keep_a_connection_but_delivery_bounds_its_close() {
        let idle = Duration::from_secs(10);
        let activity = Activity::new();
        drop(InFlight::new(activity.clone()));
        // Bytes keep crossing (HTTP/2 PINGs, or the end of an answer
        // still being written) but no request comes.
        let ticking = {
            let activity = activity.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    activity.touch();
                }
            })
        };
        assert!(
            done_within(
                idle + Duration::from_millis(1),
                activity.idle_for(idle, true)
            )
            .await
        );
        assert!(!done_within(3 * idle, activity.quiet_for(idle, true)).await);
        ticking.abort();
        assert!(
            done_within(
                idle + Duration::from_millis(1),
                activity.quiet_for(idle, true)
            )
            .await
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_still_being_worked_on_is_not_taken_for_stalled() {
        // The API server's review waits on an API read, silent for more
        // than a second; two pods hold their whole share with requests
        // that move. It was the review that went (review finding).
        let peers = Arc::new(Peers::default());
        let slots = listener(9);
        let api = Activity::new();
        let _review = InFlight::new(api.clone());
        let api_slot = peers.claim(ip(9), 4, api, slot(&slots)).expect("slot");
        tokio::time::advance(2 * STALLED).await;
        let mut requests = Vec::new();
        let flood: Vec<_> = (0..8)
            .map(|i| {
                let activity = Activity::new();
                requests.push(InFlight::new(activity.clone()).answering());
                activity.touch();
                peers
                    .claim(ip(1 + i / 4), 4, activity, slot(&slots))
                    .expect("slot")
            })
            .collect();
        assert!(peers.evict_for(ip(3), 4).is_some());
        assert!(!api_slot.evicted.is_cancelled(), "the review stays");
        let gone: Vec<_> = flood.iter().map(|s| s.evicted.is_cancelled()).collect();
        // Either pod's oldest: both hold as many.
        assert!(gone[0] != gone[4], "{gone:?}");
        assert_eq!(gone.iter().filter(|g| **g).count(), 1, "{gone:?}");

        // Answered, and the answer not moving: a peer that stopped
        // reading, below its share, still makes room.
        let peers = Arc::new(Peers::default());
        let slots = listener(2);
        let (reader, working) = (Activity::new(), Activity::new());
        let _unread = InFlight::new(reader.clone()).answering();
        let _working = InFlight::new(working.clone());
        let working = peers.claim(ip(1), 4, working, slot(&slots)).expect("slot");
        let unread = peers.claim(ip(1), 4, reader, slot(&slots)).expect("slot");
        tokio::time::advance(2 * STALLED).await;
        assert!(peers.evict_for(ip(2), 4).is_some());
        assert!(unread.evicted.is_cancelled());
        assert!(!working.evicted.is_cancelled());
    }

    #[tokio::test]
    async fn a_peer_at_its_limit_gives_up_a_busy_connection() {
        // A neighbour holding its whole share, each connection serving a
        // request that keeps moving (it reads its answers): none is idle or
        // stalled, and the port must still make room for the kubelet.
        let peers = Arc::new(Peers::default());
        let slots = listener(5);
        let mut requests = Vec::new();
        let flood: Vec<_> = (0..4)
            .map(|_| {
                let activity = Activity::new();
                requests.push(InFlight::new(activity.clone()));
                peers
                    .claim(ip(1), 4, activity, slot(&slots))
                    .expect("under the limit")
            })
            .collect();
        let scraper = Activity::new();
        let _scrape = InFlight::new(scraper.clone());
        let prometheus = peers.claim(ip(2), 4, scraper, slot(&slots)).expect("slot");

        assert!(peers.evict_for(ip(3), 4).is_some());
        assert!(flood[0].evicted.is_cancelled(), "the oldest goes");
        assert!(flood[1..].iter().all(|s| !s.evicted.is_cancelled()));
        // Below its limit now: its busy connections stay, and so does a
        // lone scrape in flight.
        assert!(peers.evict_for(ip(3), 4).is_none());
        assert!(!prometheus.evicted.is_cancelled());
    }

    #[tokio::test]
    async fn a_peer_at_its_share_evicts_nobody_for_itself() {
        let peers = Arc::new(Peers::default());
        let slots = listener(8);
        let busy = |peer| {
            let activity = Activity::new();
            let request = InFlight::new(activity.clone());
            let held = peers.claim(peer, 4, activity, slot(&slots));
            (held.expect("under the limit"), request)
        };
        let mut first: Vec<_> = (0..4).map(|_| busy(ip(1))).collect();
        let second: Vec<_> = (0..4).map(|_| busy(ip(2))).collect();
        // ip 1's oldest is told to close but has not yet: it has fewer live
        // connections than ip 2, but its claim would still be refused, so
        // nobody's connection may go for it.
        first[0].0.evicted.cancel();
        assert!(peers.evict_for(ip(1), 4).is_none());
        assert!(second.iter().all(|(s, _)| !s.evicted.is_cancelled()));
        // Once that connection has closed, it may.
        drop(first.remove(0));
        assert!(peers.evict_for(ip(1), 4).is_some());
        assert!(second[0].0.evicted.is_cancelled());
    }
}
