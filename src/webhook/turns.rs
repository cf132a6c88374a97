//! Room for parsed pods, handed out to peers in turn.
//!
//! A review holds this room while it is parsed and answered, cluster
//! lookups included, and a review estimated to parse large holds most of
//! it, so such reviews go one at a time. In a single line, a pod keeping
//! dozens of them queued put the API server's review behind all of them:
//! a reviewer's test (31 such reviews from one pod, 40 ms lookups) had 10
//! of 20 of the API server's reviews wait past their second and get 503.
//! Here each peer has a line of its own and the lines are served in turn,
//! one review each, as fair queueing does (the API server's own priority
//! and fairness works so): once room comes back, a review waits for at
//! most one review of each other peer.
//!
//! When the review whose turn it is does not fit yet, reviews of peers
//! holding less room than its peer may go before it (in turn among them):
//! the API server's small review is not kept waiting for a pod's large one
//! while there is room for it, and a large review of a peer holding
//! nothing is passed by nobody, so it is never passed over for ever.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// Room shared by peers in turn.
#[derive(Debug)]
pub struct Turns(Mutex<Lines>);

#[derive(Debug)]
struct Lines {
    free: usize,
    /// Peers with reviews waiting, the next in turn first. `None`: requests
    /// that came on no connection (tests, `inject`), one line for all.
    lines: VecDeque<(Option<IpAddr>, VecDeque<Waiting>)>,
    /// Room each peer holds now.
    held: HashMap<Option<IpAddr>, usize>,
}

impl Lines {
    fn grant(&mut self, peer: Option<IpAddr>, need: usize) {
        self.free -= need;
        *self.held.entry(peer).or_default() += need;
    }

    fn give_back(&mut self, peer: Option<IpAddr>, bytes: usize) {
        self.free += bytes;
        if let Some(held) = self.held.get_mut(&peer) {
            *held = held.saturating_sub(bytes);
            if *held == 0 {
                self.held.remove(&peer);
            }
        }
    }
}

#[derive(Debug)]
struct Waiting {
    need: usize,
    granted: oneshot::Sender<Room>,
}

/// Room granted, given back on drop.
#[derive(Debug)]
pub struct Room {
    turns: Arc<Turns>,
    peer: Option<IpAddr>,
    bytes: usize,
}

impl Turns {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self(Mutex::new(Lines {
            free: capacity,
            lines: VecDeque::new(),
            held: HashMap::new(),
        })))
    }

    /// Room nobody holds now.
    pub fn free(&self) -> usize {
        self.lines().free
    }

    fn lines(&self) -> MutexGuard<'_, Lines> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `need` bytes for a review from `peer`: at once when nobody waits and
    /// there is room, else when its turn comes (or never, if the returned
    /// receiver is dropped first: its room goes on to the next in turn).
    pub fn ask(self: &Arc<Self>, peer: Option<IpAddr>, need: usize) -> oneshot::Receiver<Room> {
        let (granted, receiver) = oneshot::channel();
        let mut lines = self.lines();
        if lines.lines.is_empty() && lines.free >= need {
            lines.grant(peer, need);
            drop(lines);
            // The receiver is ours: the send cannot fail.
            let _ = granted.send(Room {
                turns: self.clone(),
                peer,
                bytes: need,
            });
            return receiver;
        }
        let waiting = Waiting { need, granted };
        match lines.lines.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, line)) => line.push_back(waiting),
            None => lines.lines.push_back((peer, VecDeque::from([waiting]))),
        }
        self.serve(lines);
        receiver
    }

    /// A review stopped waiting (its receiver dropped): if its turn was
    /// next and it did not fit, those behind it may fit now, and no room
    /// given back would tell them.
    pub fn gave_up(self: &Arc<Self>) {
        self.serve(self.lines());
    }

    /// Grants room to the reviews whose turn it is, while it lasts (see the
    /// module's comment for who may go before whom).
    fn serve(self: &Arc<Self>, mut guard: MutexGuard<'_, Lines>) {
        let lines = &mut *guard;
        loop {
            // Reviews that stopped waiting hold no turn.
            for (_, line) in lines.lines.iter_mut() {
                while line.front().is_some_and(|w| w.granted.is_closed()) {
                    line.pop_front();
                }
            }
            lines.lines.retain(|(_, line)| !line.is_empty());
            // Peers must hold less than this to go before a review in turn
            // that does not fit.
            let mut less_than = usize::MAX;
            let mut chosen = None;
            for (i, (peer, line)) in lines.lines.iter().enumerate() {
                let held = lines.held.get(peer).copied().unwrap_or(0);
                if held >= less_than {
                    continue;
                }
                match line.front() {
                    Some(next) if next.need <= lines.free => {
                        chosen = Some(i);
                        break;
                    }
                    _ => less_than = held,
                }
            }
            let Some((peer, mut line)) = chosen.and_then(|i| lines.lines.remove(i)) else {
                break;
            };
            let Some(Waiting { need, granted }) = line.pop_front() else {
                continue;
            };
            if !line.is_empty() {
                lines.lines.push_back((peer, line));
            }
            lines.grant(peer, need);
            let room = Room {
                turns: self.clone(),
                peer,
                bytes: need,
            };
            // A review that stopped waiting just now gives it straight back
            // (emptied, so that dropping it does not lock again).
            if let Err(mut room) = granted.send(room) {
                lines.give_back(peer, need);
                room.bytes = 0;
            }
        }
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let turns = self.turns.clone();
        let mut lines = turns.lines();
        lines.give_back(self.peer, self.bytes);
        turns.serve(lines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));
    const API: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)));

    fn granted(receiver: &mut oneshot::Receiver<Room>) -> Option<Room> {
        receiver.try_recv().ok()
    }

    #[test]
    fn a_peer_waits_for_one_review_of_each_other_peer_not_for_their_lines() {
        let turns = Turns::new(100);
        let mut holding = turns.ask(POD, 90);
        let first = granted(&mut holding).expect("room at once");
        // The pod queues ten more large reviews, then the API server one.
        let mut pod: Vec<_> = (0..10).map(|_| turns.ask(POD, 90)).collect();
        // Not fitting beside one of the pod's.
        let mut api = turns.ask(API, 20);
        assert!(granted(&mut api).is_none(), "no room yet");
        drop(first);
        // The pod's next review had its turn first (it queued first)...
        let second = granted(&mut pod[0]).expect("the pod's turn");
        assert!(granted(&mut api).is_none());
        drop(second);
        // ...then the API server's, not the pod's nine others.
        let room = granted(&mut api);
        assert!(room.is_some());
        assert!(pod[1..].iter_mut().all(|r| granted(r).is_none()));
    }

    #[test]
    fn a_small_review_of_a_peer_holding_less_goes_before_a_large_one() {
        // The API server's review waited for the pod's room to come back
        // although there was room for it beside.
        let turns = Turns::new(100);
        let held = granted(&mut turns.ask(POD, 70)).expect("room");
        let mut large = turns.ask(POD, 70);
        let mut api = turns.ask(API, 10);
        let room = granted(&mut api);
        assert!(room.is_some(), "room for it beside the pod's");
        assert!(granted(&mut large).is_none());
        drop((held, room));
        assert!(granted(&mut large).is_some());
    }

    #[test]
    fn a_large_review_of_a_peer_holding_nothing_is_passed_by_nobody() {
        let turns = Turns::new(100);
        let pod = granted(&mut turns.ask(POD, 50)).expect("room");
        let mut large = turns.ask(API, 80);
        // Fits, but the pod holds more than the API server's nothing.
        let mut small = turns.ask(POD, 10);
        assert!(granted(&mut small).is_none());
        drop(pod);
        let room = granted(&mut large);
        assert!(room.is_some());
        assert!(granted(&mut small).is_some());
    }

    #[test]
    fn a_review_that_stopped_waiting_passes_its_room_on() {
        let turns = Turns::new(100);
        let first = granted(&mut turns.ask(POD, 100)).expect("room");
        let gave_up = turns.ask(POD, 60);
        let mut api = turns.ask(API, 60);
        drop(gave_up);
        drop(first);
        let room = granted(&mut api);
        assert!(room.is_some());
        assert_eq!(turns.lines().free, 40);
    }

    #[test]
    fn those_behind_a_review_that_gave_up_are_served() {
        let turns = Turns::new(100);
        let first = granted(&mut turns.ask(POD, 50)).expect("room");
        // The API server holds nothing: nobody goes before its review.
        let large = turns.ask(API, 80);
        let mut small = turns.ask(POD, 10);
        assert!(granted(&mut small).is_none(), "behind the large one");
        drop(large);
        turns.gave_up();
        let room = granted(&mut small);
        assert!(room.is_some());
        drop(first);
    }

    #[test]
    fn room_comes_back_whole() {
        let turns = Turns::new(100);
        let rooms: Vec<_> = (0..4)
            .filter_map(|_| granted(&mut turns.ask(API, 25)))
            .collect();
        assert_eq!(rooms.len(), 4);
        assert_eq!(turns.lines().free, 0);
        drop(rooms);
        assert_eq!(turns.lines().free, 100);
        assert!(turns.lines().lines.is_empty());
    }
}
