//! What Bedrock's refusals of the sidecar's credentials and signatures have
//! taught: which credentials a refresh cannot fix, and when a refused
//! signature was last reported, and whether the last was refused for this
//! node's clock. Each answer reads two of its fields (the newest
//! generation accepted, and that flag); the rest is consulted only when
//! Bedrock has refused a request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Shared by all requests; every field is one atomic of its own, so no
/// ordering between them is needed.
#[derive(Debug, Default)]
pub struct Refusals {
    /// The newest credentials generation Bedrock rejected although it came
    /// from a refresh a rejection asked for (0: none).
    rejected_fresh: AtomicU64,
    /// The generation whose rejection (of a stream, never retried) last
    /// asked for a refresh; 0 once the outcome of that refresh is known.
    asked_after: AtomicU64,
    /// The newest generation Bedrock has accepted: credentials that worked
    /// and are rejected later expired or were revoked since, which a
    /// refresh does fix.
    accepted: AtomicU64,
    /// When a refused signature was last logged, in Unix seconds (0: never).
    signature_logged: AtomicU64,
    /// Bedrock refused a signature for its time (this node's clock off
    /// AWS's): the first answer accepting one again measures the skew
    /// once more, to see it end.
    clock_refused: AtomicBool,
}

/// What a stream's rejection should lead to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRejection {
    /// Those credentials are known to be refused even fresh: nothing to do.
    Known,
    /// Ask for a refresh, so that the next stream may fare better.
    Refresh,
    /// These credentials came after a refresh a rejection asked for, and
    /// are rejected too: refreshing does not help.
    RefreshedInVain,
}

impl Refusals {
    /// Bedrock accepted credentials of generation `used` (any answer but a
    /// credential rejection). Read first, written only when newer: every
    /// request calls it, and a store per request would bounce the cache
    /// line between cores.
    pub fn accepted(&self, used: u64) {
        if self.accepted.load(Ordering::Relaxed) < used {
            self.accepted.fetch_max(used, Ordering::Relaxed);
            // Credentials after the asking ones work: the refresh helped,
            // and is no longer the question.
            let _ = self
                .asked_after
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |asked| {
                    (asked != 0 && asked < used).then_some(0)
                });
        }
    }

    /// Whether a rejection of credentials of generation `used`, while the
    /// cell holds generation `held`, is one a refresh cannot fix: they
    /// were rejected fresh and never accepted. A newer generation held
    /// gets its chance: retrying with it costs no STS call.
    pub fn refresh_cannot_help(&self, used: u64, held: u64) -> bool {
        let rejected = self.rejected_fresh.load(Ordering::Relaxed);
        used <= rejected && held <= rejected && used > self.accepted.load(Ordering::Relaxed)
    }

    /// Records that generation `fresh`, obtained because of a rejection,
    /// was rejected too. `true` the first time for that generation (the
    /// time to tell the operator).
    pub fn rejected_fresh(&self, fresh: u64) -> bool {
        // Credentials the schedule brings later get one refresh again.
        self.asked_after.store(0, Ordering::Relaxed);
        self.rejected_fresh.fetch_max(fresh, Ordering::Relaxed) < fresh
    }

    /// A stream signed with generation `used` was rejected. Streams are not
    /// retried, so the refresh a rejection asks for is judged by the next
    /// stream: rejected with the credentials that refresh brought (the
    /// generation after the asking one), it shows that refreshing does not
    /// help. Later ones came from the schedule, long after: they are asked
    /// about afresh, not taken for that refresh's (one pod's single
    /// rejection once made every later set that was rejected before its
    /// first use count as refreshed in vain, and the sidecar stopped
    /// refreshing for rejections until the schedule's next).
    pub fn stream_rejected(&self, used: u64) -> StreamRejection {
        // Credentials that worked and no longer do expired or were revoked.
        let worked = used <= self.accepted.load(Ordering::Relaxed);
        if !worked && used <= self.rejected_fresh.load(Ordering::Relaxed) {
            return StreamRejection::Known;
        }
        let asked = self.asked_after.load(Ordering::Relaxed);
        if !worked && asked != 0 && used == asked + 1 {
            return StreamRejection::RefreshedInVain;
        }
        if used > asked {
            self.asked_after.fetch_max(used, Ordering::Relaxed);
        }
        StreamRejection::Refresh
    }

    /// Whether the last refused signature was refused for the clock.
    pub fn clock_refused(&self) -> bool {
        self.clock_refused.load(Ordering::Relaxed)
    }

    /// Records whether a refused signature was refused for the clock,
    /// or, with `false`, that a signature was accepted since.
    pub fn set_clock_refused(&self, refused: bool) {
        // Written only when it changes: every answer reads it.
        if self.clock_refused() != refused {
            self.clock_refused.store(refused, Ordering::Relaxed);
        }
    }

    /// Whether a refused signature seen at `now_s` (Unix seconds) is to be
    /// logged: the first, then at most one per `interval_s`. Of requests
    /// refused at the same moment, one logs.
    pub fn signature_log_due(&self, now_s: u64, interval_s: u64) -> bool {
        let last = self.signature_logged.load(Ordering::Relaxed);
        let due = last == 0 || now_s.saturating_sub(last) >= interval_s;
        due && self
            .signature_logged
            .compare_exchange(last, now_s.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_credentials_rejected_stop_the_refreshes_until_newer_ones_come() {
        let r = Refusals::default();
        // Generation 1 rejected: a refresh may help.
        assert!(!r.refresh_cannot_help(1, 1));
        // Generation 2, fetched for it, rejected too: told once.
        assert!(r.rejected_fresh(2));
        assert!(!r.rejected_fresh(2));
        assert!(r.refresh_cannot_help(1, 2) && r.refresh_cannot_help(2, 2));
        // A newer generation held (the schedule's) is tried at no cost,
        // and rejected gets its own chance.
        assert!(!r.refresh_cannot_help(2, 3));
        assert!(!r.refresh_cannot_help(3, 3));
    }

    #[test]
    fn a_stream_judges_the_refresh_the_one_before_asked_for() {
        use StreamRejection::*;
        let r = Refusals::default();
        assert_eq!(r.stream_rejected(1), Refresh);
        // Another stream signed before the refresh came: same question.
        assert_eq!(r.stream_rejected(1), Refresh);
        // The refreshed credentials rejected too.
        assert_eq!(r.stream_rejected(2), RefreshedInVain);
        assert!(r.rejected_fresh(2));
        assert_eq!(r.stream_rejected(2), Known);
        // Credentials the schedule brings get one refresh again.
        assert_eq!(r.stream_rejected(3), Refresh);
        assert_eq!(r.stream_rejected(4), RefreshedInVain);
    }

    #[test]
    fn a_rejection_long_ago_does_not_judge_the_schedules_credentials() {
        use StreamRejection::*;
        // One stream rejected (generation 1), the refresh it asked for
        // (2) worked; hours later the schedule's credentials (5) are
        // rejected before anything used them: that is a new question, not
        // the old refresh failing (an outside audit: every stream and
        // buffered request then got the 403 until the next schedule).
        let r = Refusals::default();
        assert_eq!(r.stream_rejected(1), Refresh);
        r.accepted(2);
        assert_eq!(r.stream_rejected(5), Refresh);
        assert!(!r.refresh_cannot_help(5, 5));
        // Likewise when the refresh's credentials were never used at all:
        // the schedule's next ones are not the refresh's.
        let r = Refusals::default();
        assert_eq!(r.stream_rejected(1), Refresh);
        assert_eq!(r.stream_rejected(3), Refresh);
        // The refresh those asked for, rejected too, is in vain.
        assert_eq!(r.stream_rejected(4), RefreshedInVain);
    }

    #[test]
    fn credentials_that_worked_and_are_rejected_later_get_a_refresh() {
        use StreamRejection::*;
        let r = Refusals::default();
        // Refused (the region off), refreshed, then the region enabled:
        // generation 2 works.
        assert_eq!(r.stream_rejected(1), Refresh);
        r.accepted(2);
        // Hours later generation 2 is revoked or expires early.
        assert_eq!(r.stream_rejected(2), Refresh);
        assert!(!r.refresh_cannot_help(2, 2));
        // Fresh credentials rejected at once, never accepted: in vain.
        assert!(r.rejected_fresh(3));
        assert!(r.refresh_cannot_help(3, 3));
        // Accepted later (the region enabled meanwhile): a refresh again.
        r.accepted(3);
        assert!(!r.refresh_cannot_help(3, 3));
        // Never moves back.
        r.accepted(1);
        assert!(!r.refresh_cannot_help(3, 3));
    }

    #[test]
    fn refused_signatures_are_logged_once_a_minute() {
        let r = Refusals::default();
        let t = 1_800_000_000;
        assert!(r.signature_log_due(t, 60));
        assert!(!r.signature_log_due(t, 60));
        assert!(!r.signature_log_due(t + 59, 60));
        assert!(r.signature_log_due(t + 60, 60));
        assert!(!r.signature_log_due(t + 61, 60));
        // A clock stepped back delays the next line, never repeats it.
        assert!(!r.signature_log_due(t, 60));
    }
}
