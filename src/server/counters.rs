//! What a listener counts: its open connections, the ones its limits
//! turned away, and the requests hyper refused before they were read.

/// One open connection in the `open` gauge, until dropped.
pub(super) struct Open(prometheus::IntGauge);

impl Open {
    pub(super) fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a listener's connection limit did, for its metrics.
#[derive(Clone)]
pub struct LimitCounters {
    /// Newcomers closed on arrival.
    pub refused: prometheus::IntCounter,
    /// Idle kept-alive connections closed to make room for a newcomer
    /// (only listeners without a per-peer limit do that).
    pub reclaimed: Option<prometheus::IntCounter>,
    /// Connections open now.
    pub open: Option<prometheus::IntGauge>,
    /// Requests hyper answered itself before they could be read.
    pub unread: Option<UnreadCounters>,
}

impl LimitCounters {
    /// For a listener with a per-peer limit, which never reclaims.
    pub fn refused(refused: prometheus::IntCounter) -> Self {
        Self {
            refused,
            reclaimed: None,
            open: None,
            unread: None,
        }
    }
}

/// Requests refused before they could be read as requests: hyper answers
/// them with a bare status and closes, and no request metric sees them.
#[derive(Clone)]
pub struct UnreadCounters {
    /// A head that is not HTTP/1.1 (400).
    pub malformed: prometheus::IntCounter,
    /// A head over the read buffer, or with too many header lines (431),
    /// or a request target too long (414).
    pub too_large: prometheus::IntCounter,
}

impl UnreadCounters {
    /// Counts the error a connection ended with, if it was one of those.
    pub(super) fn count(&self, error: &(dyn std::error::Error + 'static)) {
        let Some(e) = error.downcast_ref::<hyper::Error>() else {
            return;
        };
        if e.is_parse_too_large() {
            self.too_large.inc();
        } else if e.is_parse() {
            self.malformed.inc();
        }
    }
}
