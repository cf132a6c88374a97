//! Who holds the review budget, so that a peer short of room can take it
//! from one holding more.
//!
//! Bytes of review text are drawn as they arrive, and a pod sending reviews
//! as fast as it likes (each within the body deadline) could hold the whole
//! budget for as long as it kept sending, or by never reading large
//! answers: every review of the API server's then waited its second and got
//! 503. So when the budget is short, the connections of the peer holding
//! the most are closed, its largest hold first, for as long as that peer
//! would still hold more than the one asking: max-min fairness, as the
//! listener shares its connection slots among peers (`server::peers`). The
//! API server's reviews are small and answered in milliseconds, so against
//! any number of pods it holds less than each of them and is never the one
//! closed; unless it holds more than a newcomer, which only a budget it
//! fills itself allows.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::server::Connection;

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
    bytes: usize,
    connection: Connection,
}

/// One request's entry in [`Holders`], removed on drop.
#[derive(Debug)]
pub struct Holder {
    holders: Arc<Holders>,
    peer: IpAddr,
    id: u64,
}

/// Bytes held by the holds of one peer not closing already: a closing
/// connection gives its bytes back as soon as its task runs.
fn live(list: &[Hold]) -> usize {
    list.iter()
        .filter(|h| !h.connection.is_closing())
        .map(|h| h.bytes)
        .sum()
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
            bytes: 0,
            connection: connection.clone(),
        });
        Holder {
            holders: self.clone(),
            peer,
            id,
        }
    }

    /// `peer` wants `want` more bytes and the budget is `short` of them:
    /// closes connections of busier peers, the busiest first and its
    /// largest hold first, until `short` bytes are on their way back or no
    /// other peer would hold more than `peer` once it has what it wants.
    /// Returns the bytes on their way back.
    pub fn make_room(&self, peer: IpAddr, want: usize, short: usize) -> usize {
        let table = self.table();
        let after = table
            .peers
            .get(&peer)
            .map_or(0, |list| live(list))
            .saturating_add(want);
        let mut freed = 0;
        while freed < short {
            let busiest = table
                .peers
                .iter()
                .filter(|(ip, _)| **ip != peer)
                .map(|(_, list)| (live(list), list))
                .filter(|(held, _)| *held > after)
                .max_by_key(|(held, _)| *held);
            let Some(victim) = busiest.and_then(|(_, list)| {
                list.iter()
                    .filter(|h| h.bytes > 0 && !h.connection.is_closing())
                    .max_by_key(|h| h.bytes)
            }) else {
                break;
            };
            tracing::debug!(
                peer = %victim.connection.peer(),
                bytes = victim.bytes,
                "review budget full; closing a connection of the peer holding the most"
            );
            victim.connection.close();
            freed += victim.bytes;
        }
        freed
    }
}

impl Holder {
    /// The peer the request came from.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// The request now holds `bytes` of the budget.
    pub fn set(&self, bytes: usize) {
        let mut table = self.holders.table();
        if let Some(hold) = table
            .peers
            .get_mut(&self.peer)
            .and_then(|list| list.iter_mut().find(|h| h.id == self.id))
        {
            hold.bytes = bytes;
        }
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
    use tokio_util::sync::CancellationToken;

    fn connection(peer: [u8; 4]) -> Connection {
        Connection::new(IpAddr::from(peer), CancellationToken::new())
    }

    fn holding(holders: &Arc<Holders>, conn: &Connection, bytes: usize) -> Holder {
        let holder = holders.enter(conn);
        holder.set(bytes);
        holder
    }

    #[test]
    fn the_busiest_peer_loses_its_largest_hold_first() {
        let holders = Arc::new(Holders::default());
        let (small, large, other) = (
            connection([10, 0, 0, 1]),
            connection([10, 0, 0, 1]),
            connection([10, 0, 0, 2]),
        );
        let _a = holding(&holders, &small, 1000);
        let _b = holding(&holders, &large, 5000);
        let _c = holding(&holders, &other, 3000);
        assert_eq!(
            holders.make_room(IpAddr::from([10, 0, 0, 9]), 100, 100),
            5000
        );
        assert!(large.is_closing());
        assert!(!small.is_closing() && !other.is_closing());
    }

    #[test]
    fn closes_as_many_as_the_shortfall_needs_while_others_hold_more() {
        let holders = Arc::new(Holders::default());
        let conns: Vec<_> = (0..4).map(|_| connection([10, 0, 0, 1])).collect();
        let _held: Vec<_> = conns.iter().map(|c| holding(&holders, c, 1000)).collect();
        // 2,500 short: three of the four go; the last would leave the pod
        // with 1,000, still more than the asker's 100 after, but the
        // shortfall is covered.
        assert_eq!(
            holders.make_room(IpAddr::from([10, 0, 0, 9]), 100, 2500),
            3000
        );
        assert_eq!(conns.iter().filter(|c| c.is_closing()).count(), 3);
    }

    #[test]
    fn a_peer_holding_no_more_than_the_asker_keeps_its_hold() {
        let holders = Arc::new(Holders::default());
        let (pod, api) = (connection([10, 0, 0, 1]), connection([10, 0, 0, 2]));
        let _pod = holding(&holders, &pod, 4000);
        let _api = holding(&holders, &api, 1000);
        // The API server asking for 100 more: the pod holds more, it goes.
        // The pod asking for 100 more: the API server holds less, it stays.
        assert_eq!(holders.make_room(IpAddr::from([10, 0, 0, 1]), 100, 100), 0);
        assert!(!api.is_closing());
        // Its own holds are never closed for it.
        assert!(!pod.is_closing());
        assert_eq!(
            holders.make_room(IpAddr::from([10, 0, 0, 2]), 100, 100),
            4000
        );
        assert!(pod.is_closing());
    }

    #[test]
    fn a_peer_that_would_be_left_with_less_than_the_asker_keeps_its_hold() {
        let holders = Arc::new(Holders::default());
        let pod = connection([10, 0, 0, 1]);
        let _pod = holding(&holders, &pod, 4000);
        // Wanting 5,000: the pod holds less than the asker would.
        assert_eq!(
            holders.make_room(IpAddr::from([10, 0, 0, 2]), 5000, 5000),
            0
        );
        assert!(!pod.is_closing());
    }

    #[test]
    fn holds_leave_the_table_when_dropped() {
        let holders = Arc::new(Holders::default());
        let pod = connection([10, 0, 0, 1]);
        drop(holding(&holders, &pod, 4000));
        assert!(holders.table().peers.is_empty());
        assert_eq!(holders.make_room(IpAddr::from([10, 0, 0, 2]), 1, 1), 0);
        assert!(!pod.is_closing());
    }
}
