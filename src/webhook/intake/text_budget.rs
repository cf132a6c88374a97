//! The budget for review text and answers, shared among peers: each
//! request's room lives with its entry among the budget's holders
//! ([`crate::webhook::fair_share`]), so that a request short of room can
//! take it from a peer holding more, or else waits in line for it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use prometheus::IntCounter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{exhausted, BUDGET_WAIT};
use crate::server::Connection;
use crate::webhook::fair_share::{Holder, Holders, Phase};

/// How often a review waiting for room looks again for holds to take.
const TAKE_AGAIN: Duration = Duration::from_millis(100);

/// Bytes of review text and answers held at once.
#[derive(Debug, Clone)]
pub(super) struct TextBudget {
    pub(super) budget: Arc<Semaphore>,
    capacity: usize,
    /// Who holds the budget, so a peer short of room can take it from one
    /// holding more.
    pub(super) holders: Arc<Holders>,
    /// Counts holds taken for another peer.
    closed: Option<IntCounter>,
}

impl TextBudget {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(capacity)),
            capacity,
            holders: Arc::default(),
            closed: None,
        }
    }

    pub(super) fn counting(&mut self, closed: IntCounter) {
        self.closed = Some(closed);
    }

    /// Bytes held now.
    pub(super) fn held(&self) -> usize {
        self.capacity - self.budget.available_permits()
    }

    /// Bytes it may hold at once.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// The room of a request that came on `connection` (none: a request
    /// from no connection of the listener's, whose room nobody can take).
    pub(super) fn room(&self, connection: Option<&Connection>) -> Room {
        Room::new(connection.map(|c| self.holders.enter(c)))
    }

    /// `n` more bytes of the text budget for the request `holder` stands
    /// for: when there is not enough room, it is taken from busier peers
    /// ([`Holders::take_for`]) or waited for. The wait is the webhook's,
    /// not the peer's (see [`Phase`]).
    pub(super) async fn reserve(
        &self,
        n: usize,
        deadline: Instant,
        holder: Option<&Holder>,
    ) -> Result<OwnedSemaphorePermit, StatusCode> {
        if let Ok(permit) = self.budget.clone().try_acquire_many_owned(permits(n)?) {
            return Ok(permit);
        }
        let Some(holder) = holder else {
            return wait_in_line(&self.budget, n, deadline).await;
        };
        let paused = holder.pause();
        let room = self.wait_or_take(n, deadline, holder).await;
        if let Some(paused) = paused {
            holder.resume(paused);
        }
        room
    }

    async fn wait_or_take(
        &self,
        n: usize,
        deadline: Instant,
        holder: &Holder,
    ) -> Result<OwnedSemaphorePermit, StatusCode> {
        let until = (Instant::now() + BUDGET_WAIT).min(deadline);
        let mut taken: Option<OwnedSemaphorePermit> = None;
        let mut queued_for = n;
        let mut acquire = Box::pin(self.budget.clone().acquire_many_owned(permits(n)?));
        loop {
            if let Some(room) = self.take_for(holder.peer(), n, &mut taken) {
                return Ok(room);
            }
            // In line for what is still missing only: room taken meanwhile
            // (handed over, outside the line) counts.
            let missing =
                n.saturating_sub(taken.as_ref().map_or(0, OwnedSemaphorePermit::num_permits));
            if missing != queued_for {
                acquire = Box::pin(self.budget.clone().acquire_many_owned(permits(missing)?));
                queued_for = missing;
            }
            // Holds not takeable now may be later: asked again while
            // waiting. A take costs the place in line (the line is asked
            // for what is still missing, anew), where the part of the room
            // the old place had been given goes back.
            let next = (Instant::now() + TAKE_AGAIN).min(until);
            match tokio::time::timeout_at(next, &mut acquire).await {
                Ok(Ok(mut permit)) => {
                    if let Some(taken) = taken {
                        permit.merge(taken);
                    }
                    return Ok(permit);
                }
                Err(_) if next < until => {}
                _ => return Err(exhausted()),
            }
        }
    }

    /// Adds to `taken` what busier peers hold ([`Holders::take_for`]) and
    /// what the budget has free, and returns `n` bytes of it once there are
    /// that many.
    fn take_for(
        &self,
        peer: IpAddr,
        n: usize,
        taken: &mut Option<OwnedSemaphorePermit>,
    ) -> Option<OwnedSemaphorePermit> {
        fn add(taken: &mut Option<OwnedSemaphorePermit>, room: OwnedSemaphorePermit) {
            match taken.as_mut() {
                Some(t) => t.merge(room),
                None => *taken = Some(room),
            }
        }
        let have = |t: &Option<OwnedSemaphorePermit>| t.as_ref().map_or(0, |t| t.num_permits());
        let short = n
            .saturating_sub(have(taken))
            .saturating_sub(self.budget.available_permits());
        let (more, closed) = self.holders.take_for(peer, n, short);
        if let Some(counter) = self.closed.as_ref().filter(|_| closed > 0) {
            counter.inc_by(closed as u64);
        }
        if let Some(more) = more {
            add(taken, more);
        }
        let rest = n.saturating_sub(have(taken));
        if rest > 0 {
            add(
                taken,
                self.budget
                    .clone()
                    .try_acquire_many_owned(permits(rest).ok()?)
                    .ok()?,
            );
        }
        let mut room = taken.take()?;
        let excess = room.num_permits().saturating_sub(n);
        if excess > 0 {
            drop(room.split(excess));
        }
        Some(room)
    }
}

/// A request's share of the text budget: among the budget's holders, where
/// a peer short of room can take it, when the request came on a
/// connection of the listener's; else its own.
pub(super) enum Room {
    Held(Holder),
    Own(Option<OwnedSemaphorePermit>),
}

impl Room {
    pub(super) fn new(holder: Option<Holder>) -> Self {
        holder.map_or(Self::Own(None), Self::Held)
    }

    pub(super) fn bytes(&self) -> usize {
        match self {
            Self::Held(holder) => holder.bytes(),
            Self::Own(permit) => permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits),
        }
    }

    pub(super) fn holder(&self) -> Option<&Holder> {
        match self {
            Self::Held(holder) => Some(holder),
            Self::Own(_) => None,
        }
    }

    pub(super) fn phase(&self, phase: Phase) {
        if let Self::Held(holder) = self {
            holder.phase(phase);
        }
    }

    pub(super) fn add(&mut self, more: OwnedSemaphorePermit) {
        match self {
            Self::Held(holder) => holder.add(more),
            Self::Own(Some(permit)) => permit.merge(more),
            Self::Own(none) => *none = Some(more),
        }
    }

    /// Gives back all but `bytes`.
    pub(super) fn keep(&mut self, bytes: usize) {
        match self {
            Self::Held(holder) => holder.keep(bytes),
            Self::Own(Some(permit)) => {
                drop(permit.split(permit.num_permits().saturating_sub(bytes)));
            }
            Self::Own(None) => {}
        }
    }
}

/// `n` as a number of permits; more than a semaphore holds is too large.
fn permits(n: usize) -> Result<u32, StatusCode> {
    u32::try_from(n).map_err(|_| StatusCode::PAYLOAD_TOO_LARGE)
}

/// `n` more bytes of `budget`, waiting briefly (never past `deadline`) for
/// room.
async fn wait_in_line(
    budget: &Arc<Semaphore>,
    n: usize,
    deadline: Instant,
) -> Result<OwnedSemaphorePermit, StatusCode> {
    let acquire = budget.clone().acquire_many_owned(permits(n)?);
    let until = (Instant::now() + BUDGET_WAIT).min(deadline);
    match tokio::time::timeout_at(until, acquire).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(exhausted()),
    }
}
