//! Who holds the review budget, so that a peer short of room can take it
//! from one holding more.
//!
//! Bytes of review text are drawn as they arrive, and a pod sending reviews
//! as fast as it likes (each within the body deadline), or never reading
//! large answers, could hold the whole budget for as long as it kept on:
//! every review of the API server's then waited its second and got 503. So
//! each request's room lives here, by peer, and a request short of room
//! takes it from peers holding more than the asker would with it, the one
//! holding the most first: a hold it takes is closed (its connection
//! dropped) and its room handed to the asker at once, not to whoever
//! queues first for the budget, which could be the same peer again. The listener shares its connection slots the same way
//! (`server::peers`).
//!
//! Only holds the webhook has been waiting on their peer for at least
//! [`TAKE_AFTER`] are taken: a review whose body is still arriving, or an
//! answer not read. Never one waiting for room, being parsed or looked up:
//! that wait is the webhook's, not the peer's. The API server sends its
//! bodies at once and reads its answers at once, so its reviews are not
//! taken however long the webhook keeps them; a hold that stays because
//! its peer keeps it is what shuts others out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::server::Connection;

/// How long the webhook must have been waiting on a hold's peer before
/// another peer may take the hold.
pub const TAKE_AFTER: Duration = Duration::from_millis(500);

/// What a request's room waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Its peer: the rest of the body.
    Receiving,
    /// The webhook: room in the budget, the parse, cluster lookups.
    Working,
    /// Its peer: reading the answer.
    Answering,
}

/// Every request holding part of the review budget, by peer.
#[derive(Debug, Default)]
pub struct Holders(Mutex<Table>);

#[derive(Debug, Default)]
struct Table {
    peers: HashMap<IpAddr, Vec<Hold>>,
    next_id: u64,
}

#[derive(Debug)]
struct Hold {
    id: u64,
    phase: Phase,
    /// When the phase began.
    since: Instant,
    /// Its room; gone once taken for another peer.
    room: Option<OwnedSemaphorePermit>,
    connection: Connection,
}

impl Hold {
    fn bytes(&self) -> usize {
        self.room
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Room the webhook has long been waiting on the peer to move.
    fn takeable(&self, now: Instant) -> bool {
        self.phase != Phase::Working
            && self.bytes() > 0
            && now.saturating_duration_since(self.since) >= TAKE_AFTER
    }
}

/// A hold's phase, and how long it had been in it, while the webhook makes
/// the request wait.
#[derive(Debug, Clone, Copy)]
pub struct Paused {
    phase: Phase,
    since: Instant,
    at: Instant,
}

/// One request's room in [`Holders`], given back on drop.
#[derive(Debug)]
pub struct Holder {
    holders: Arc<Holders>,
    peer: IpAddr,
    id: u64,
}

fn held(list: &[Hold]) -> usize {
    list.iter().map(Hold::bytes).sum()
}

impl Holders {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Enters a request arriving on `connection`, holding nothing yet.
    pub fn enter(self: &Arc<Self>, connection: &Connection) -> Holder {
        let mut table = self.table();
        table.next_id += 1;
        let id = table.next_id;
        let peer = connection.peer();
        table.peers.entry(peer).or_default().push(Hold {
            id,
            phase: Phase::Receiving,
            since: Instant::now(),
            room: None,
            connection: connection.clone(),
        });
        Holder {
            holders: self.clone(),
            peer,
            id,
        }
    }

    /// `peer` wants `want` bytes and is `short` of them: takes the room of
    /// holds its peer has kept for [`TAKE_AFTER`] or more (see
    /// [`Hold::takeable`]), from peers holding more than `peer` would once
    /// it has what it wants, the one holding the most and its largest hold
    /// first, closing their connections, until `short` bytes are taken.
    /// Returns what was taken (it may be less than `short`, or more), and
    /// how many holds it came from.
    pub fn take_for(
        &self,
        peer: IpAddr,
        want: usize,
        short: usize,
    ) -> (Option<OwnedSemaphorePermit>, usize) {
        let mut table = self.table();
        let after = table
            .peers
            .get(&peer)
            .map_or(0, |list| held(list))
            .saturating_add(want);
        let now = Instant::now();
        let mut taken: Option<OwnedSemaphorePermit> = None;
        let mut closed = 0;
        while taken.as_ref().map_or(0, |t| t.num_permits()) < short {
            // The busiest peer with a hold to take: one holding only holds
            // the webhook is working on does not stop the search.
            let victim = table
                .peers
                .iter_mut()
                .filter(|(ip, _)| **ip != peer)
                .map(|(_, list)| (held(list), list))
                .filter(|(bytes, list)| *bytes > after && list.iter().any(|h| h.takeable(now)))
                .max_by_key(|(bytes, _)| *bytes);
            let Some(hold) = victim.and_then(|(_, list)| {
                list.iter_mut()
                    .filter(|h| h.takeable(now))
                    .max_by_key(|h| h.bytes())
            }) else {
                break;
            };
            let Some(room) = hold.room.take() else { break };
            tracing::debug!(
                peer = %hold.connection.peer(),
                bytes = room.num_permits(),
                "review budget full; closing a connection of the peer holding the most"
            );
            hold.connection.close();
            closed += 1;
            match taken.as_mut() {
                Some(t) => t.merge(room),
                None => taken = Some(room),
            }
        }
        (taken, closed)
    }
}

impl Holder {
    /// The peer the request came from.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    fn with<T>(&self, f: impl FnOnce(&mut Hold) -> T) -> Option<T> {
        let mut table = self.holders.table();
        table
            .peers
            .get_mut(&self.peer)
            .and_then(|list| list.iter_mut().find(|h| h.id == self.id))
            .map(f)
    }

    /// The webhook makes the request wait (for room): until [`Self::resume`]
    /// the hold is not its peer's doing, and that time does not count
    /// towards [`TAKE_AFTER`] (restarting the count instead would let a
    /// pod whose every frame waits for room keep its holds untakeable).
    pub fn pause(&self) -> Option<Paused> {
        let now = Instant::now();
        self.with(|h| {
            let paused = Paused {
                phase: h.phase,
                since: h.since,
                at: now,
            };
            h.phase = Phase::Working;
            h.since = now;
            paused
        })
    }

    /// The wait [`Self::pause`] began is over.
    pub fn resume(&self, paused: Paused) {
        let waited = Instant::now().saturating_duration_since(paused.at);
        self.with(|h| {
            h.phase = paused.phase;
            h.since = paused.since + waited;
        });
    }

    /// The request now waits on `phase`.
    pub fn phase(&self, phase: Phase) {
        self.with(|h| {
            if h.phase != phase {
                h.phase = phase;
                h.since = Instant::now();
            }
        });
    }

    /// Bytes of room the request holds (none once taken for another peer).
    pub fn bytes(&self) -> usize {
        self.with(|h| h.bytes()).unwrap_or(0)
    }

    /// Adds `more` to the request's room.
    pub fn add(&self, more: OwnedSemaphorePermit) {
        self.with(|h| match h.room.as_mut() {
            Some(room) => room.merge(more),
            None => h.room = Some(more),
        });
    }

    /// Gives back all of the request's room but `bytes`.
    pub fn keep(&self, bytes: usize) {
        self.with(|h| {
            if let Some(room) = h.room.as_mut() {
                drop(room.split(room.num_permits().saturating_sub(bytes)));
            }
        });
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let mut table = self.holders.table();
        if let Some(list) = table.peers.get_mut(&self.peer) {
            list.retain(|h| h.id != self.id);
            if list.is_empty() {
                table.peers.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;

    fn connection(peer: [u8; 4]) -> Connection {
        Connection::new(IpAddr::from(peer), CancellationToken::new())
    }

    /// A request from `conn`'s peer holding `bytes` of `budget`.
    fn holding(
        holders: &Arc<Holders>,
        budget: &Arc<Semaphore>,
        conn: &Connection,
        bytes: usize,
    ) -> Holder {
        let holder = holders.enter(conn);
        let room = budget
            .clone()
            .try_acquire_many_owned(u32::try_from(bytes).expect("small"))
            .expect("room");
        holder.add(room);
        holder
    }

    fn taken(result: (Option<OwnedSemaphorePermit>, usize)) -> (usize, usize) {
        (result.0.map_or(0, |t| t.num_permits()), result.1)
    }

    const ASKER: [u8; 4] = [10, 0, 0, 9];

    #[tokio::test(start_paused = true)]
    async fn the_busiest_peer_loses_its_largest_hold_first_and_the_asker_gets_it() {
        let (holders, budget) = (Arc::default(), Arc::new(Semaphore::new(10_000)));
        let (small, large, other) = (
            connection([10, 0, 0, 1]),
            connection([10, 0, 0, 1]),
            connection([10, 0, 0, 2]),
        );
        let a = holding(&holders, &budget, &small, 1000);
        let b = holding(&holders, &budget, &large, 5000);
        let _c = holding(&holders, &budget, &other, 3000);
        tokio::time::advance(TAKE_AFTER).await;
        let (room, closed) = holders.take_for(IpAddr::from(ASKER), 100, 100);
        assert_eq!(
            (room.as_ref().map(|r| r.num_permits()), closed),
            (Some(5000), 1)
        );
        assert!(large.is_closing());
        assert!(!small.is_closing() && !other.is_closing());
        // Handed over, not given back: nobody queueing got it first.
        assert_eq!(budget.available_permits(), 1000);
        assert_eq!((a.bytes(), b.bytes()), (1000, 0));
        drop(b);
        assert_eq!(budget.available_permits(), 1000, "taken room stays taken");
    }

    #[tokio::test(start_paused = true)]
    async fn takes_as_many_holds_as_the_shortfall_needs() {
        let (holders, budget) = (Arc::default(), Arc::new(Semaphore::new(10_000)));
        let conns: Vec<_> = (0..4).map(|_| connection([10, 0, 0, 1])).collect();
        let _held: Vec<_> = conns
            .iter()
            .map(|c| holding(&holders, &budget, c, 1000))
            .collect();
        tokio::time::advance(TAKE_AFTER).await;
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 2500)),
            (3000, 3)
        );
        assert_eq!(conns.iter().filter(|c| c.is_closing()).count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn young_holds_are_not_taken() {
        // The API server's reviews in a burst: answered in milliseconds.
        let (holders, budget) = (Arc::default(), Arc::new(Semaphore::new(10_000)));
        let api = connection([10, 0, 0, 1]);
        let _api = holding(&holders, &budget, &api, 4000);
        tokio::time::advance(TAKE_AFTER / 2).await;
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 100)),
            (0, 0)
        );
        assert!(!api.is_closing());
        tokio::time::advance(TAKE_AFTER / 2).await;
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 100)),
            (4000, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn only_holds_waiting_on_their_peer_are_taken() {
        // A review the webhook keeps (waiting for room, parsing, looking
        // up) is not its peer's doing: the API server's slow reviews were
        // taken for a pod's.
        let (holders, budget) = (Arc::default(), Arc::new(Semaphore::new(10_000)));
        let (working, answering) = (connection([10, 0, 0, 1]), connection([10, 0, 0, 1]));
        let w = holding(&holders, &budget, &working, 4000);
        w.phase(Phase::Working);
        let a = holding(&holders, &budget, &answering, 1000);
        a.phase(Phase::Answering);
        tokio::time::advance(TAKE_AFTER).await;
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 100)),
            (1000, 1)
        );
        assert!(answering.is_closing() && !working.is_closing());
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 100)),
            (0, 0)
        );
        // Back to waiting on its peer, it is taken once it has waited long.
        w.phase(Phase::Receiving);
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 100)),
            (0, 0)
        );
        tokio::time::advance(TAKE_AFTER).await;
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 100)),
            (4000, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_webhook_makes_a_hold_wait_does_not_count() {
        let (holders, budget) = (Arc::default(), Arc::new(Semaphore::new(10_000)));
        let pod = connection([10, 0, 0, 1]);
        let hold = holding(&holders, &budget, &pod, 4000);
        tokio::time::advance(TAKE_AFTER * 3 / 5).await;
        let paused = hold.pause().expect("entered");
        tokio::time::advance(TAKE_AFTER * 2).await;
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 100)),
            (0, 0)
        );
        hold.resume(paused);
        // 300 ms of its own so far: 200 ms to go, not 500 again.
        tokio::time::advance(TAKE_AFTER * 2 / 5 - Duration::from_millis(1)).await;
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 100)),
            (0, 0)
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 100)),
            (4000, 1)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busiest_peer_with_nothing_to_take_does_not_stop_the_search() {
        let (holders, budget) = (Arc::default(), Arc::new(Semaphore::new(10_000)));
        let (busy, next) = (connection([10, 0, 0, 1]), connection([10, 0, 0, 2]));
        let b = holding(&holders, &budget, &busy, 5000);
        b.phase(Phase::Working);
        let _n = holding(&holders, &budget, &next, 3000);
        tokio::time::advance(TAKE_AFTER).await;
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 100, 100)),
            (3000, 1)
        );
        assert!(next.is_closing() && !busy.is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_holding_no_more_than_the_asker_keeps_its_hold() {
        let (holders, budget) = (Arc::default(), Arc::new(Semaphore::new(10_000)));
        let (pod, api) = (connection([10, 0, 0, 1]), connection([10, 0, 0, 2]));
        let _pod = holding(&holders, &budget, &pod, 4000);
        let _api = holding(&holders, &budget, &api, 1000);
        tokio::time::advance(TAKE_AFTER).await;
        // The pod asking: the API server holds less, and its own holds are
        // never taken for it.
        assert_eq!(
            taken(holders.take_for(IpAddr::from([10, 0, 0, 1]), 100, 100)),
            (0, 0)
        );
        assert!(!api.is_closing() && !pod.is_closing());
        // Wanting 5,000: the pod would hold less than the asker.
        assert_eq!(
            taken(holders.take_for(IpAddr::from(ASKER), 5000, 5000)),
            (0, 0)
        );
        // The API server asking for 100: the pod holds more.
        assert_eq!(
            taken(holders.take_for(IpAddr::from([10, 0, 0, 2]), 100, 100)),
            (4000, 1)
        );
        assert!(pod.is_closing());
    }

    #[tokio::test(start_paused = true)]
    async fn keep_gives_back_the_rest_and_drop_all_of_it() {
        let (holders, budget) = (Arc::default(), Arc::new(Semaphore::new(10_000)));
        let pod = connection([10, 0, 0, 1]);
        let hold = holding(&holders, &budget, &pod, 4000);
        hold.keep(1500);
        assert_eq!((hold.bytes(), budget.available_permits()), (1500, 8500));
        drop(hold);
        assert_eq!(budget.available_permits(), 10_000);
        assert!(holders.table().peers.is_empty());
        tokio::time::advance(TAKE_AFTER).await;
        assert_eq!(taken(holders.take_for(IpAddr::from(ASKER), 1, 1)), (0, 0));
        assert!(!pod.is_closing());
    }
}
