//! What one listener allows: how long a client may take, how many
//! connections it may hold, and how much each may make us buffer. Every
//! server has all of them, so a neighbour pod cannot exhaust the process
//! through any port.

use std::time::Duration;

/// The limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Time to receive a request's headers. For HTTP/1 hyper also applies
    /// it while a kept-alive connection waits for its next request, so it
    /// bounds HTTP/1 idleness too.
    pub header_read_timeout: Duration,
    /// A connection that has had no request in flight for this long is
    /// closed, whatever control frames (HTTP/2 PINGs) cross it.
    pub idle_timeout: Duration,
    /// Open connections at most. A newcomer beyond it takes the slot of an
    /// idle connection (see `Peers`), or is accepted and closed at once,
    /// costing a file descriptor for an instant and no memory.
    pub max_connections: usize,
    /// Open connections per peer address, when the listener is reachable
    /// from other pods: one noisy neighbour cannot take every slot.
    pub max_connections_per_peer: Option<usize>,
    /// Largest request head (request line and headers) read into memory.
    pub max_header_bytes: usize,
    /// Whether HTTP/2 is served (prior knowledge, or ALPN over TLS).
    pub http2: bool,
}

/// hyper reads at least this much per read: the smallest head limit it accepts.
pub const MIN_HEADER_BYTES: usize = 8192;

impl Limits {
    /// The head limit as hyper's buffer size (which it requires to be at
    /// least 8 KiB).
    pub fn read_buffer(&self) -> usize {
        self.max_header_bytes.max(MIN_HEADER_BYTES)
    }
}
