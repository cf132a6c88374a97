//! The memory every usage tap holds, bounded as a whole.
//!
//! A tap keeps little of an answer (an event stream's last messages, a
//! JSON body while it is small, a partial SSE line), but it keeps it per
//! answer, and `--max-requests` answers can be in flight: 240 event
//! streams of 240 KB events held 1 MiB each and took the sidecar to
//! 240 MiB. So the taps draw what they hold from one budget, and an
//! answer that finds none left stops reading its usage (the answer
//! itself streams on untouched). Bedrock's events are a few KiB, so
//! ordinary answers never come near it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Bytes all taps may hold at once: beside `--request-body-budget` (half
/// the injected limit), the sidecar's own few MiB and its connections'
/// windows, this leaves room within 128Mi.
pub const TAP_BUDGET: usize = 16 * 1024 * 1024;

/// Room is taken in steps of this much, and given back only when a share
/// holds less than half of what it has and at least two steps more than
/// it needs: an ordinary answer touches the shared count when it first
/// holds something, seldom in between, and when it ends.
const STEP: usize = 4 * 1024;

/// The budget the taps share. A count rather than a semaphore: a tap
/// never waits for room (it stops reading instead), so giving room back
/// needs no queue of waiters and no lock.
#[derive(Debug, Clone)]
pub struct TapBudget(Arc<Count>);

#[derive(Debug)]
struct Count {
    used: AtomicUsize,
    total: usize,
}

impl TapBudget {
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Count {
            used: AtomicUsize::new(0),
            total: bytes,
        }))
    }

    /// Bytes held by taps now.
    pub fn held(&self) -> usize {
        self.0.used.load(Ordering::Acquire)
    }

    /// An empty share for one answer's tap.
    pub fn share(&self) -> Share {
        Share {
            budget: self.0.clone(),
            granted: 0,
        }
    }
}

impl crate::metrics::budgets::Budget for TapBudget {
    fn held(&self) -> usize {
        TapBudget::held(self)
    }

    fn total(&self) -> usize {
        self.0.total
    }
}

/// One tap's part of the budget; given back when the tap is dropped.
#[derive(Debug)]
pub struct Share {
    budget: Arc<Count>,
    granted: usize,
}

impl Share {
    /// Makes the share cover `held` bytes, taking more room or giving
    /// back what it no longer needs. `false` when the budget has not
    /// enough left: the share is then unchanged.
    pub fn cover(&mut self, held: usize) -> bool {
        if held <= self.granted {
            // Given back only once far below, so a holding that moves
            // around a step boundary does not take and give each frame.
            let spare = self.granted - held.next_multiple_of(STEP);
            if held < self.granted / 2 && spare >= 2 * STEP {
                self.give_back(spare);
            }
            return true;
        }
        let want = held.saturating_add(STEP - 1) / STEP * STEP - self.granted;
        let total = self.budget.total;
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(want).filter(|n| *n <= total)
            });
        if taken.is_ok() {
            self.granted += want;
        }
        taken.is_ok()
    }

    /// Gives all of it back.
    pub fn clear(&mut self) {
        self.give_back(self.granted);
    }

    #[cfg(test)]
    pub fn granted(&self) -> usize {
        self.granted
    }

    fn give_back(&mut self, bytes: usize) {
        if bytes > 0 {
            self.budget.used.fetch_sub(bytes, Ordering::AcqRel);
            self.granted -= bytes;
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_takes_room_in_steps_and_gives_it_back_when_dropped() {
        let budget = TapBudget::new(10 * STEP);
        let mut share = budget.share();
        assert!(share.cover(1));
        assert_eq!((share.granted(), budget.held()), (STEP, STEP));
        assert!(share.cover(STEP + 1));
        assert_eq!(budget.held(), 2 * STEP);
        drop(share);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn past_the_budget_a_share_is_refused_and_keeps_what_it_had() {
        let budget = TapBudget::new(4 * STEP);
        let mut first = budget.share();
        let mut second = budget.share();
        assert!(first.cover(3 * STEP));
        assert!(!second.cover(2 * STEP));
        assert_eq!((second.granted(), budget.held()), (0, 3 * STEP));
        assert!(second.cover(STEP));
        assert!(!first.cover(3 * STEP + 1));
        assert_eq!(first.granted(), 3 * STEP);
        first.clear();
        assert!(second.cover(4 * STEP));
        assert_eq!(budget.held(), 4 * STEP);
    }

    #[test]
    fn room_no_longer_needed_is_given_back_once_well_below() {
        let budget = TapBudget::new(100 * STEP);
        let mut share = budget.share();
        assert!(share.cover(40 * STEP));
        // Within half of it: kept, so a holding that moves around does
        // not take and give each time.
        assert!(share.cover(25 * STEP));
        assert_eq!(budget.held(), 40 * STEP);
        assert!(share.cover(10 * STEP + 1));
        assert_eq!(budget.held(), 11 * STEP);
        assert!(share.cover(0));
        assert_eq!(budget.held(), 0);
        // A holding moving between one step and two keeps both: no
        // taking and giving back on every frame.
        assert!(share.cover(2 * STEP));
        for held in [1, 2 * STEP, 100, STEP + 1, 1] {
            assert!(share.cover(held));
            assert_eq!(budget.held(), 2 * STEP, "{held}");
        }
        assert!(share.cover(0));
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn shares_on_many_threads_give_back_all_they_took() {
        let budget = TapBudget::new(16 * STEP);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    let mut share = budget.share();
                    for i in 0..2_000usize {
                        let before = share.granted;
                        let held = (i * 997 + t * 4_099) % (12 * STEP);
                        if share.cover(held) {
                            assert!(share.granted >= held);
                        } else {
                            assert_eq!(share.granted, before);
                        }
                        assert!(budget.held() <= 16 * STEP);
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert_eq!(budget.held(), 0);
    }
}
