//! The pool's table of upstream hosts: each host's idle HTTP/1.1
//! connections and its shared HTTP/2 connection, lent out and taken back
//! under one lock that is never held across an await, and closed when they
//! have been idle too long.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Uri};
use tokio::sync::watch;

use super::{H1, H2};
use crate::proxy::error::ProxyError;

pub(super) struct Hosts {
    /// One entry per upstream host ever used; never removed, so an index
    /// stays valid for the life of the pool.
    hosts: Mutex<Vec<Host>>,
    /// Idle HTTP/1.1 connections kept per host.
    max_idle: usize,
    /// An idle connection older than this is closed, not reused.
    idle_timeout: Duration,
}

struct Host {
    scheme: Scheme,
    authority: Authority,
    /// What an HTTP/1.1 request to it carries as `Host`, built once.
    host_header: Option<HeaderValue>,
    /// Most recently returned last: reused first, while its TLS state is warm.
    idle: Vec<Idle>,
    /// HTTP/2 (by ALPN) carries every request on one connection.
    shared_h2: Option<SharedH2>,
    /// Numbers the HTTP/2 connections shared, so a failed one is told apart
    /// from its successor.
    h2_shared_count: u64,
    /// Whether a task is closing this host's expired idle connections.
    reaping: bool,
    /// The connection a request is opening while others wait for it
    /// (numbered, so that only its own guard clears it).
    connecting: Option<(u64, Opening)>,
    connects: u64,
    /// The last connection opened spoke HTTP/1.1: requests then connect
    /// each on their own.
    speaks_h1: bool,
}

/// Tells the requests waiting for a connection being opened that it is
/// done: with the error it failed with, or `None` (up, or given up).
pub(super) type Opening = watch::Receiver<Option<ProxyError>>;

/// What a request that found no free connection does.
pub(super) enum Turn {
    /// Opens a connection; the others wait until the guard is dropped.
    Lead(Leading),
    /// Waits for the connection another request is opening (over HTTP/2
    /// it serves every request), then looks again.
    Wait(Opening),
    /// Opens one of its own: over HTTP/1.1 a connection carries one
    /// request at a time.
    Own,
}

/// Held by the request opening a connection: dropped (done, failed or
/// cancelled), it lets the waiting requests go.
pub(super) struct Leading {
    hosts: Arc<Hosts>,
    host: usize,
    number: u64,
    done: watch::Sender<Option<ProxyError>>,
}

impl Leading {
    /// The connection could not be opened: the waiting requests get the
    /// same answer at once, rather than each trying (and waiting) in turn.
    pub(super) fn failed(&self, error: &ProxyError) {
        self.done.send_replace(Some(error.clone()));
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        // Cleared before the sender goes: a waiter woken finds the way free.
        if let Some(host) = self.hosts.hosts().get_mut(self.host) {
            if host.connecting.as_ref().map(|(n, _)| *n) == Some(self.number) {
                host.connecting = None;
            }
        }
    }
}

struct SharedH2 {
    id: u64,
    sender: H2,
    last_used: Instant,
}

struct Idle {
    sender: H1,
    since: Instant,
}

/// A connection lent to one request.
pub(super) enum Sender {
    H1(H1),
    /// With the id it is shared under, if it is.
    H2(H2, Option<u64>),
}

/// Where a request goes: its host's place in the table, and its `Host` header.
pub(super) struct Target {
    pub index: usize,
    pub host_header: Option<HeaderValue>,
}

impl Host {
    fn new(uri: &Uri, scheme: &Scheme, authority: &Authority) -> Self {
        Self {
            scheme: scheme.clone(),
            authority: authority.clone(),
            host_header: crate::proxy::signer::host(uri)
                .ok()
                .and_then(|h| HeaderValue::from_str(h).ok()),
            idle: Vec::new(),
            shared_h2: None,
            h2_shared_count: 0,
            reaping: false,
            connecting: None,
            connects: 0,
            speaks_h1: false,
        }
    }

    /// The shared HTTP/2 connection, or the idle HTTP/1.1 connection
    /// returned last; expired and closed ones are dropped on the way.
    fn take(&mut self, idle_timeout: Duration) -> Option<Sender> {
        let now = Instant::now();
        if let Some(h2) = &mut self.shared_h2 {
            if !h2.sender.is_closed() && now.duration_since(h2.last_used) < idle_timeout {
                h2.last_used = now;
                return Some(Sender::H2(h2.sender.clone(), Some(h2.id)));
            }
            self.shared_h2 = None;
        }
        while let Some(idle) = self.idle.pop() {
            if !idle.sender.is_closed() && now.duration_since(idle.since) < idle_timeout {
                return Some(Sender::H1(idle.sender));
            }
        }
        None
    }
}

impl Hosts {
    fn hosts(&self) -> MutexGuard<'_, Vec<Host>> {
        // Every critical section leaves the list whole: a panic elsewhere
        // cannot have left it half-written.
        self.hosts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            hosts: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
        }
    }

    /// Where `uri` goes, and a connection to it if one is free; one lock,
    /// once per request.
    pub(super) fn checkout_for(&self, uri: &Uri) -> Result<(Target, Option<Sender>), ProxyError> {
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(ProxyError::UpstreamUnreachable(format!(
                "the upstream URI {uri} names no host"
            )));
        };
        let mut hosts = self.hosts();
        let index = match hosts
            .iter()
            .position(|h| &h.scheme == scheme && &h.authority == authority)
        {
            Some(i) => i,
            None => {
                hosts.push(Host::new(uri, scheme, authority));
                hosts.len() - 1
            }
        };
        let host = &mut hosts[index];
        let target = Target {
            index,
            host_header: host.host_header.clone(),
        };
        Ok((target, host.take(self.idle_timeout)))
    }

    /// A free connection to the host at `index`, if there is one.
    pub(super) fn checkout(&self, index: usize) -> Option<Sender> {
        self.hosts().get_mut(index)?.take(self.idle_timeout)
    }

    /// Whether a request without a free connection opens one, or waits for
    /// the one being opened. Until a host is known to speak HTTP/1.1, one
    /// request connects at a time: a burst at start, or after a GOAWAY,
    /// otherwise opens a connection per request of which HTTP/2 keeps one.
    pub(super) fn turn(self: &Arc<Self>, index: usize) -> Turn {
        let mut hosts = self.hosts();
        let Some(host) = hosts.get_mut(index) else {
            return Turn::Own;
        };
        if host.speaks_h1 {
            return Turn::Own;
        }
        if let Some((_, opening)) = &host.connecting {
            return Turn::Wait(opening.clone());
        }
        host.connects += 1;
        let (done, opening) = watch::channel(None);
        host.connecting = Some((host.connects, opening));
        Turn::Lead(Leading {
            hosts: Arc::clone(self),
            host: index,
            number: host.connects,
            done,
        })
    }

    /// The protocol the host's last new connection negotiated.
    pub(super) fn learned(&self, host: usize, h2: bool) {
        if let Some(host) = self.hosts().get_mut(host) {
            host.speaks_h1 = !h2;
        }
    }

    /// Shares a new HTTP/2 connection unless a live one is shared already;
    /// the id it is shared under.
    pub(super) fn share_h2(self: &Arc<Self>, host: usize, sender: &H2) -> Option<u64> {
        let mut hosts = self.hosts();
        let entry = hosts.get_mut(host)?;
        if entry
            .shared_h2
            .as_ref()
            .is_some_and(|h2| !h2.sender.is_closed())
        {
            return None;
        }
        entry.h2_shared_count += 1;
        let id = entry.h2_shared_count;
        entry.shared_h2 = Some(SharedH2 {
            id,
            sender: sender.clone(),
            last_used: Instant::now(),
        });
        let start = !std::mem::replace(&mut entry.reaping, true);
        drop(hosts);
        if start {
            self.start_reaper(host);
        }
        Some(id)
    }

    /// An HTTP/2 connection that could not take a request (closing, or
    /// going away) is shared no longer, so the retry opens a new one.
    pub(super) fn forget_h2(&self, host: usize, id: Option<u64>) {
        if let Some(host) = self.hosts().get_mut(host) {
            if id.is_some() && host.shared_h2.as_ref().map(|h2| h2.id) == id {
                host.shared_h2 = None;
            }
        }
    }

    pub(super) fn checkin(self: &Arc<Self>, host: usize, sender: H1) {
        if sender.is_closed() {
            return;
        }
        let mut hosts = self.hosts();
        let Some(entry) = hosts.get_mut(host) else {
            return;
        };
        if entry.idle.len() >= self.max_idle {
            return;
        }
        entry.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
        let start = !std::mem::replace(&mut entry.reaping, true);
        drop(hosts);
        if start {
            self.start_reaper(host);
        }
    }

    /// Closes `host`'s connections that have been idle longer than the idle
    /// timeout. Whether any remain to watch.
    fn reap(&self, host: usize) -> bool {
        let mut hosts = self.hosts();
        let Some(host) = hosts.get_mut(host) else {
            return false;
        };
        let now = Instant::now();
        let timeout = self.idle_timeout;
        host.idle
            .retain(|i| !i.sender.is_closed() && now.duration_since(i.since) < timeout);
        if host
            .shared_h2
            .as_ref()
            .is_some_and(|h2| h2.sender.is_closed() || now.duration_since(h2.last_used) >= timeout)
        {
            // Streams still open keep the connection until they end.
            host.shared_h2 = None;
        }
        host.reaping = !host.idle.is_empty() || host.shared_h2.is_some();
        host.reaping
    }

    /// Closes idle connections as they expire, so an idle sidecar holds no
    /// sockets; ends when the host has none left, or the pool is gone.
    /// Checks every half timeout: a connection is never reused after the
    /// timeout, and closed at most half of it later.
    fn start_reaper(self: &Arc<Self>, host: usize) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime to run it: the next checkin tries again.
            if let Some(entry) = self.hosts().get_mut(host) {
                entry.reaping = false;
            }
            return;
        };
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        let shared = Arc::downgrade(self);
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                if !shared.reap(host) {
                    return;
                }
            }
        });
    }
}
