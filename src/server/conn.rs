//! One accepted connection's bookkeeping: the bytes that cross it and the
//! requests in flight on it, so it can be closed when idle (the slots it
//! holds per peer are in `peers`; the service that counts its requests,
//! in `counted`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Activity of one connection.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    /// Milliseconds after `started` of the last byte read or written.
    last: AtomicU64,
    /// Whether a request may be on its way: none has ended yet (a new
    /// connection is a client about to send, not a spare in a pool), or,
    /// on HTTP/1, a byte has been read since the last one ended
    /// (milliseconds could not tell, a fast request reads and ends within
    /// one).
    request_coming: AtomicBool,
    /// Milliseconds after `started` `request_coming` last turned true: when
    /// the head of a next request began to arrive.
    coming_since: AtomicU64,
    /// The client spoke HTTP/2 (its preface): control frames cross an idle
    /// connection (PING replies, WINDOW_UPDATE, SETTINGS acknowledgements),
    /// and a request is dispatched only once its headers are whole, so
    /// reads say nothing of a request on its way.
    http2: AtomicBool,
    /// Milliseconds after `started` a request last ended. Bytes
    /// alone do not keep a connection open: HTTP/2 PINGs cross an idle one.
    last_request: AtomicU64,
    /// A request has ended on it: a client's pooled connection, not one
    /// yet to send.
    served: AtomicBool,
    in_flight: AtomicUsize,
    /// Requests in flight whose response is made: the rest are still being
    /// worked on (a webhook review waits on API reads for seconds).
    answering: AtomicUsize,
    /// Requests in flight whose body is still arriving, as far as their
    /// handler tells ([`super::Connection::receiving_body`]).
    receiving: AtomicUsize,
    /// Milliseconds after `started` the body arriving now began to.
    receiving_since: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            last: AtomicU64::new(0),
            request_coming: AtomicBool::new(true),
            coming_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            last_request: AtomicU64::new(0),
            served: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            answering: AtomicUsize::new(0),
            receiving: AtomicUsize::new(0),
            receiving_since: AtomicU64::new(0),
        })
    }

    /// Whether a request's body is still arriving on it: a request the
    /// server has not got whole yet, nothing of it worked on.
    fn is_receiving(&self) -> bool {
        self.receiving.load(Ordering::Relaxed) > 0
    }

    /// Whether a request has been arriving on it for `long` or more (any
    /// time at all for `Duration::ZERO`): its body, or, on HTTP/1, the
    /// head of a next one on a connection that served one. The API
    /// server, a kubelet or a scrape sends either whole at once; a pod
    /// dripping one to hold the connection does not.
    pub fn is_arriving_for(&self, long: Duration) -> bool {
        let since = |ms: &AtomicU64| Instant::now().saturating_duration_since(self.at(ms)) >= long;
        (self.is_receiving() && since(&self.receiving_since))
            || (self.is_head_arriving() && since(&self.coming_since))
    }

    /// Counts a body as arriving until the guard is dropped.
    pub fn receiving(self: &Arc<Self>) -> Receiving {
        if self.receiving.fetch_add(1, Ordering::Relaxed) == 0 {
            self.receiving_since.store(self.now_ms(), Ordering::Relaxed);
        }
        Receiving(self.clone())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub(super) fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    pub(super) fn touch_read(&self) {
        let ms = self.now_ms();
        self.last.store(ms, Ordering::Relaxed);
        // A load first: on the proxy's hot path most reads find a request
        // already coming, and a store is cheaper than a swap. Only the
        // connection's own task reads, so nothing turns the flag meanwhile.
        if !self.http2.load(Ordering::Relaxed) && !self.request_coming.load(Ordering::Relaxed) {
            // The time before the flag, so an eviction that sees the flag
            // sees this head's start, not an older one.
            self.coming_since.store(ms, Ordering::Relaxed);
            self.request_coming.store(true, Ordering::Release);
        }
    }

    /// A request ended: traffic, and the start of idleness.
    fn touch_request(&self) {
        let ms = self.now_ms();
        self.last.store(ms, Ordering::Relaxed);
        self.last_request.store(ms, Ordering::Relaxed);
        // Whatever `coming_since` a racing eviction reads is then no older
        // than this end: a connection it would take for a dripped head has
        // been quiet as long.
        self.coming_since.store(ms, Ordering::Relaxed);
        self.request_coming.store(false, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
    }

    /// Since when it has waited for its next request, if it is a kept-alive
    /// connection doing nothing: every request it carried has ended, and,
    /// on HTTP/1, nothing has been read since (hyper counts a request in
    /// flight only once its head is whole, so bytes read are the next one on
    /// its way; a pipelined head read with the previous answer is not seen).
    /// One yet to send its first is a client on its way, not a spare in a
    /// pool.
    pub fn kept_alive_since(&self) -> Option<Instant> {
        let waiting = self.in_flight.load(Ordering::Relaxed) == 0
            && !self.request_coming.load(Ordering::Relaxed);
        waiting.then(|| self.at(&self.last_request))
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.started + Duration::from_millis(ms.load(Ordering::Relaxed))
    }

    fn last(&self) -> Instant {
        self.at(&self.last)
    }

    /// Nothing in flight and nothing lost by closing it: no request sent
    /// yet, or kept alive with none coming for `stalled` (a client's
    /// pooled connection is picked again within milliseconds: the API
    /// server sends its next review on one back to back, and closing it
    /// then failed that review, which Go's client does not retry: an
    /// outside check saw hundreds). Or every request answered and its
    /// answer not moving for `stalled` (answers on the ports other pods
    /// reach are written at once; a peer that does not read one keeps its
    /// slot). A request still being worked on is silent too, and is not
    /// stalled.
    pub fn is_quiet(&self, stalled: Duration) -> bool {
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        if in_flight == 0 {
            return !self.served.load(Ordering::Relaxed)
                || self.kept_alive_since().is_some_and(|since| {
                    Instant::now().saturating_duration_since(since) >= stalled
                });
        }
        self.answering.load(Ordering::Relaxed) >= in_flight && self.silent_for() >= stalled
    }

    /// On HTTP/1, the head of a next request is arriving on a connection
    /// that served one: as good as a body still arriving.
    fn is_head_arriving(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0
            && self.served.load(Ordering::Relaxed)
            && self.request_coming.load(Ordering::Acquire)
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
    /// Whether the first bytes have been looked at for HTTP/2's preface.
    sniffed: bool,
}

impl<T> Watched<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            sniffed: false,
        }
    }
}

/// How an HTTP/2 connection begins (RFC 9113, 3.4); no HTTP/1 method is
/// `PRI`. Its first three bytes tell, and arrive in the first read.
const HTTP2_PREFACE_START: &[u8] = b"PRI";

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if !self.sniffed {
                self.sniffed = true;
                if buf.filled()[before..].starts_with(HTTP2_PREFACE_START) {
                    self.activity.http2.store(true, Ordering::Relaxed);
                }
            }
            self.activity.touch_read();
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
    pub(super) fn new(activity: Arc<Activity>) -> Self {
        // While it is in flight its bytes count; its end is noted on drop.
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            activity,
            answering: false,
        }
    }

    /// Its response is made and handed to hyper.
    pub(super) fn answering(mut self) -> Self {
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

/// A request body counted as arriving on its connection; see
/// [`Activity::receiving`].
#[derive(Debug)]
pub struct Receiving(Arc<Activity>);

impl Drop for Receiving {
    fn drop(&mut self) {
        self.0.receiving.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    /// Resolves `future` or says it is still pending after `wait`.
    async fn done_within(wait: Duration, future: impl Future<Output = ()>) -> bool {
        tokio::time::timeout(wait, future).await.is_ok()
    }

    #[tokio::test]
    async fn a_read_after_an_answer_is_the_next_request_on_http1_only() {
        // A fast request reads its head and ends within one millisecond:
        // stamps could not tell that read from one after the end.
        let activity = Activity::new();
        activity.touch_read();
        drop(InFlight::new(activity.clone()));
        assert!(
            activity.kept_alive_since().is_some(),
            "waiting for the next"
        );
        activity.touch_read();
        assert!(
            activity.kept_alive_since().is_none(),
            "the next is on its way"
        );

        // HTTP/2, told by its preface: reads are control frames.
        let h2 = Activity::new();
        let (client, server) = tokio::io::duplex(64);
        let mut watched = Watched::new(server, h2.clone());
        let mut client = client;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"PRI * HTTP/2.0\r\n")
            .await
            .unwrap_or_default();
        let mut buf = [0u8; 64];
        let n = tokio::io::AsyncReadExt::read(&mut watched, &mut buf)
            .await
            .unwrap_or_default();
        assert!(n > 0);
        drop(InFlight::new(h2.clone()));
        h2.touch_read();
        assert!(h2.kept_alive_since().is_some(), "a PING is not a request");
    }

    #[tokio::test(start_paused = true)]
    async fn a_next_head_arrives_since_its_first_byte_not_its_last() {
        // One byte every 600 ms: stamped at each read, the head would
        // never look a second old.
        let stalled = Duration::from_secs(1);
        let activity = Activity::new();
        activity.touch_read();
        drop(InFlight::new(activity.clone()));
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.touch_read();
        assert!(!activity.is_arriving_for(stalled), "just begun");
        tokio::time::advance(Duration::from_millis(600)).await;
        activity.touch_read();
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(activity.is_arriving_for(stalled), "begun 1.2 s ago");
        // Once that request has ended, the next head is timed afresh.
        drop(InFlight::new(activity.clone()));
        activity.touch_read();
        assert!(!activity.is_arriving_for(stalled));
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
}
