//! Open connections per peer address. On the listeners other pods reach,
//! one peer cannot take more than its share, and a full listener makes room
//! for a peer holding fewer than another; on the ones inside the pod, a full
//! listener makes room by closing a kept-alive connection left idle.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::conn::Activity;

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
        Self::can_go(held) && held.activity.is_quiet(STALLED)
    }
}

/// See [`PeerTable::evictable`].
const STALLED: Duration = Duration::from_secs(1);

/// How long a kept-alive connection must have waited for its next request
/// before [`Peers::reclaim_idle`] may close it: a pool in use picks its
/// connections again within milliseconds, and closing one just as its
/// client reuses it fails the request sent on it.
pub const RECLAIM_AFTER: Duration = Duration::from_secs(1);

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
    /// come must not keep the port full; failing that, the busiest peer
    /// holding at least two more than `ip` loses its oldest connection
    /// whose request body is still arriving. Without that last rule, nine
    /// pods each just under their share, each dripping review bodies
    /// (requests in flight, never quiet), kept the API server out. It
    /// takes no request that has arrived whole: the first version took the
    /// busiest peer's reviews being worked on, and in a burst the API
    /// server is the busiest peer (an outside check: 60 reviews closed
    /// unanswered). Last, any peer holding more than `ip` loses a body
    /// that has been arriving for [`STALLED`]: 256 pods of one dripping
    /// connection each otherwise kept every review out (none holds two
    /// more than a newcomer), and a body the API server sends arrives whole
    /// within that. So does the head of a next request on a kept-alive
    /// connection (an outside check: 40 pods, each asking once and then
    /// dripping the next head, left the kubelet 12 probes in 60).
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
        let greedy = |share: &dyn Fn(usize) -> bool, victim: &dyn Fn(&Held) -> bool| {
            heavier
                .iter()
                .filter(|(n, _)| share(*n))
                .find_map(|(_, list)| {
                    list.iter()
                        .find(|h| PeerTable::can_go(h) && victim(h))
                        .map(|h| h.id)
                })
        };
        let victim = quiet
            .or_else(|| greedy(&|n| n >= limit, &|_| true))
            .or_else(|| {
                greedy(&|n| n > mine + 1, &|h| {
                    h.activity.is_arriving_for(Duration::ZERO)
                })
            })
            .or_else(|| greedy(&|n| n > mine, &|h| h.activity.is_arriving_for(STALLED)))?;
        let held = heavier
            .into_iter()
            .flat_map(|(_, list)| list.iter_mut())
            .find(|h| h.id == victim)?;
        held.evict.cancel();
        held.permit.take()
    }
}

impl Peers {
    /// The listener is full: the kept-alive connection idle the longest
    /// (nothing in flight or on its way, at least one request answered, and
    /// idle for [`RECLAIM_AFTER`] at least) is told to close
    /// and its slot returned for the newcomer. An app whose connection pool
    /// outgrows the limit keeps most of it idle, and refusing its new
    /// connections instead would fail requests while slots sit unused
    /// (nginx reuses idle keep-alive connections the same way). The one
    /// idle the longest is the one a pool is least likely to pick next.
    pub fn reclaim_idle(&self) -> Option<OwnedSemaphorePermit> {
        let mut table = self.table();
        let now = tokio::time::Instant::now();
        let held = table
            .peers
            .values_mut()
            .flat_map(|list| list.iter_mut())
            .filter(|h| PeerTable::can_go(h))
            .filter_map(|h| Some((h.activity.kept_alive_since()?, h)))
            .filter(|(since, _)| now.saturating_duration_since(*since) >= RECLAIM_AFTER)
            .min_by_key(|(since, _)| *since)
            .map(|(_, h)| h)?;
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
    use crate::server::conn::InFlight;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn listener(slots: usize) -> Arc<tokio::sync::Semaphore> {
        Arc::new(tokio::sync::Semaphore::new(slots))
    }

    fn slot(listener: &Arc<tokio::sync::Semaphore>) -> Option<OwnedSemaphorePermit> {
        Some(listener.clone().try_acquire_owned().expect("a free slot"))
    }

    /// A connection of `peer` serving a request, and that request.
    fn busy(
        peers: &Arc<Peers>,
        peer: IpAddr,
        limit: usize,
        listener: &Arc<tokio::sync::Semaphore>,
    ) -> (PeerSlot, InFlight) {
        let activity = Activity::new();
        let request = InFlight::new(activity.clone());
        let held = peers.claim(peer, limit, activity, slot(listener));
        (held.expect("a slot under the limit"), request)
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

    #[tokio::test(start_paused = true)]
    async fn a_full_pod_listener_reclaims_the_longest_idle_kept_alive_connection() {
        let peers = Arc::new(Peers::default());
        let slots = listener(4);
        let local = IpAddr::from([127, 0, 0, 1]);
        let claim = |activity: &Arc<Activity>| {
            peers
                .claim(local, usize::MAX, activity.clone(), slot(&slots))
                .expect("slot")
        };
        let slots5 = listener(1);
        let (fresh, busy, idle_long, idle_short, reading) = (
            Activity::new(),
            Activity::new(),
            Activity::new(),
            Activity::new(),
            Activity::new(),
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        drop(InFlight::new(idle_long.clone()));
        drop(InFlight::new(reading.clone()));
        tokio::time::advance(Duration::from_millis(10)).await;
        drop(InFlight::new(idle_short.clone()));
        drop(InFlight::new(busy.clone()));
        let _in_flight = InFlight::new(busy.clone());
        let mut held: Vec<_> = [&fresh, &busy, &idle_short, &idle_long]
            .into_iter()
            .map(claim)
            .collect();
        held.push(
            peers
                .claim(local, usize::MAX, reading.clone(), slot(&slots5))
                .expect("slot"),
        );
        // Just answered: its pool may pick it again any moment.
        assert!(peers.reclaim_idle().is_none(), "nothing idle long enough");
        tokio::time::advance(RECLAIM_AFTER).await;
        // The next request's head arriving, not yet whole.
        reading.touch_read();

        let room = peers.reclaim_idle().expect("an idle connection");
        assert_eq!(slots.available_permits(), 0, "the slot changed hands");
        drop(room);
        let gone: Vec<_> = held.iter().map(|h| h.evicted.is_cancelled()).collect();
        assert_eq!(
            gone,
            [false, false, false, true, false],
            "the longest idle went"
        );
        assert!(peers.reclaim_idle().is_some(), "then the next idle one");
        // What is left is a request in flight, one on its way, and a
        // connection yet to send its first: none is a spare.
        assert!(peers.reclaim_idle().is_none());
        assert!(!held[0].evicted.is_cancelled() && !held[1].evicted.is_cancelled());
        assert!(!held[4].evicted.is_cancelled());
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
        let (flood, _requests): (Vec<_>, Vec<_>) =
            (0..4).map(|_| busy(&peers, ip(1), 4, &slots)).unzip();
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
    async fn peers_below_their_share_cannot_keep_the_listener_full() {
        // Nine pods, each under its share of 32 and each connection a
        // review body still dripping in (in flight, never quiet), filled
        // the webhook's 256 slots: the API server was refused from then on
        // (outside audit). Here three peers of three fill ten slots, share
        // four.
        let peers = Arc::new(Peers::default());
        let slots = listener(10);
        let mut requests = Vec::new();
        let mut bodies = Vec::new();
        let mut busy = |peer, dripping: bool| {
            let activity = Activity::new();
            requests.push(InFlight::new(activity.clone()));
            if dripping {
                bodies.push(activity.receiving());
            }
            activity.touch();
            peers.claim(peer, 4, activity, slot(&slots)).expect("slot")
        };
        let flood: Vec<_> = (0..9).map(|i| busy(ip(1 + i / 3), true)).collect();
        let api = busy(ip(9), false);
        assert_eq!(slots.available_permits(), 0);

        let room = peers.evict_for(ip(9), 4).expect("room for the API server");
        let api2 = peers
            .claim(ip(9), 4, Activity::new(), Some(room))
            .expect("slot");
        assert_eq!(flood.iter().filter(|s| s.evicted.is_cancelled()).count(), 1);
        // Even now (the flooders 3, 3, 2; the API server 2): nobody's
        // connection goes for a peer holding as many as the busiest but one.
        assert!(peers.evict_for(ip(9), 4).is_none());
        assert!(peers.evict_for(ip(1), 4).is_none());
        // A flooder knocking again takes nothing from the API server.
        let evicted_one = flood.iter().position(|s| s.evicted.is_cancelled());
        let flooder = ip(1 + evicted_one.unwrap_or(0) as u8 / 3);
        assert!(peers.evict_for(flooder, 4).is_none());
        assert!(!api.evicted.is_cancelled() && !api2.evicted.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn pods_of_one_dripping_connection_each_make_room_too() {
        // 256 pods with one dripping review body each filled the webhook:
        // none held two more than the API server's none (an outside check:
        // 0 of 30 reviews in). A body arriving for a second goes.
        let peers = Arc::new(Peers::default());
        let slots = listener(3);
        let mut held = Vec::new();
        for pod in 1..=3 {
            let activity = Activity::new();
            let request = InFlight::new(activity.clone());
            let body = activity.receiving();
            let slot = peers
                .claim(ip(pod), 8, activity, slot(&slots))
                .expect("slot");
            held.push((slot, request, body));
        }
        assert!(
            peers.evict_for(ip(9), 8).is_none(),
            "a body just begun stays"
        );
        tokio::time::advance(STALLED).await;
        let room = peers.evict_for(ip(9), 8).expect("room for the API server");
        assert_eq!(
            held.iter()
                .filter(|(s, _, _)| s.evicted.is_cancelled())
                .count(),
            1
        );
        // The API server then holds one whole review, as many as each pod
        // holds: the pod that lost its connection knocking again takes
        // another pod's dripping body, never the review.
        let review = Activity::new();
        let _in_flight = InFlight::new(review.clone());
        let api = peers.claim(ip(9), 8, review, Some(room)).expect("slot");
        let lost = held.iter().position(|(s, _, _)| s.evicted.is_cancelled());
        let pod = ip(1 + lost.unwrap_or(0) as u8);
        assert!(peers.evict_for(pod, 8).is_some());
        assert_eq!(
            held.iter()
                .filter(|(s, _, _)| s.evicted.is_cancelled())
                .count(),
            2
        );
        assert!(!api.evicted.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_pooled_connection_between_two_reviews_is_not_taken_for_idle() {
        // The API server sends its reviews back to back on pooled HTTP/1.1
        // connections: one closed the instant after its answer lost the
        // next review sent on it (an outside check: over a thousand
        // `RemoteDisconnected` under a pod flood). Idle for a second, it
        // may go; one yet to send a request may go at once.
        let peers = Arc::new(Peers::default());
        let slots = listener(3);
        let pooled = Activity::new();
        drop(InFlight::new(pooled.clone()));
        let api = peers
            .claim(ip(9), 8, pooled.clone(), slot(&slots))
            .expect("slot");
        let api2 = peers
            .claim(ip(9), 8, Activity::new(), slot(&slots))
            .expect("slot");
        let busy = Activity::new();
        let _request = InFlight::new(busy.clone());
        let _pod = peers.claim(ip(1), 8, busy, slot(&slots)).expect("slot");
        assert!(peers.evict_for(ip(2), 8).is_some(), "one never used goes");
        assert!(api2.evicted.is_cancelled() && !api.evicted.is_cancelled());
        assert!(peers.evict_for(ip(2), 8).is_none(), "just answered");
        tokio::time::advance(STALLED).await;
        // Its next request's head arriving: kept while the peer holds no
        // two more than the newcomer's.
        pooled.touch_read();
        assert!(peers.evict_for(ip(2), 8).is_none());
        // Idle a second with nothing coming: a spare.
        drop(InFlight::new(pooled.clone()));
        tokio::time::advance(STALLED).await;
        assert!(peers.evict_for(ip(2), 8).is_some());
        assert!(api.evicted.is_cancelled());
    }

    #[tokio::test]
    async fn a_review_that_arrived_whole_is_never_taken_for_an_even_share() {
        // The API server mid-burst is the busiest peer: its reviews, whole
        // and waiting on API reads, were closed unanswered for pods
        // flooding the port (an outside check: 60 of 100). Only a body
        // still arriving goes for an even share.
        let peers = Arc::new(Peers::default());
        let slots = listener(6);
        let (reviews, mut requests): (Vec<_>, Vec<_>) =
            (0..5).map(|_| busy(&peers, ip(9), 8, &slots)).unzip();
        let dripping = Activity::new();
        requests.push(InFlight::new(dripping.clone()));
        let _body = dripping.receiving();
        let _pod = peers.claim(ip(1), 8, dripping, slot(&slots)).expect("slot");
        assert!(peers.evict_for(ip(2), 8).is_none());
        assert!(reviews.iter().all(|r| !r.evicted.is_cancelled()));
        // One of the API server's still arriving would go.
        let arriving = Activity::new();
        requests.push(InFlight::new(arriving.clone()));
        let _arriving = arriving.receiving();
        drop(_pod);
        let late = peers.claim(ip(9), 8, arriving, slot(&slots)).expect("slot");
        assert!(peers.evict_for(ip(2), 8).is_some());
        assert!(late.evicted.is_cancelled());
        assert!(reviews.iter().all(|r| !r.evicted.is_cancelled()));
    }

    #[tokio::test]
    async fn a_peer_at_its_share_evicts_nobody_for_itself() {
        let peers = Arc::new(Peers::default());
        let slots = listener(8);
        let mut first: Vec<_> = (0..4).map(|_| busy(&peers, ip(1), 4, &slots)).collect();
        let second: Vec<_> = (0..4).map(|_| busy(&peers, ip(2), 4, &slots)).collect();
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
