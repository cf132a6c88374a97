//! What the proxy is configured with: filled by [`crate::config`].

use std::fmt;
use std::num::NonZeroU64;
use std::time::Duration;

use http::uri::{Authority, Scheme};

use crate::config::aws::Region;
use crate::credentials::ApiKey;
use crate::secret::Secret;

/// Everything [`super::Proxy`] needs besides its collaborators.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where each request goes, and how it is signed there.
    pub routes: RouteTable,
    /// Signing region; `None` only in API-key mode with an explicit upstream.
    pub region: Option<Region>,
    /// The configured API key, which replaces SigV4 for every request.
    pub api_key: Option<ApiKey>,
    /// Largest request body; SigV4 hashes the body, so it is held in memory.
    pub max_body_bytes: usize,
    /// Opening a connection to an upstream: DNS, TCP, a proxy's CONNECT, TLS.
    pub connect_timeout: Duration,
    /// Longest wait for Bedrock's response headers; `None`: no limit.
    pub response_header_timeout: Option<Duration>,
    /// Longest silence inside a streamed response; `None`: no limit.
    pub stream_idle_timeout: Option<Duration>,
    /// How long a request Bedrock rejected waits for refreshed credentials.
    pub self_heal_wait: Duration,
    /// Token usage metrics and their `model` label policy.
    pub usage: UsageLabels,
    /// What a request must pass before it is read or forwarded.
    pub gate: Gate,
    /// Idle connections kept per upstream host.
    pub upstream_max_idle: usize,
}

/// What a request must pass before the proxy spends memory or an upstream
/// connection on it: the proxy serves only its own pod, within a budget.
#[derive(Debug, Clone)]
pub struct Gate {
    /// `Host` names answered besides loopback names and addresses.
    pub allowed_hosts: Vec<String>,
    /// A token every request must present, when configured.
    pub token: Option<Secret>,
    /// Longest silence while a request body is received.
    pub body_read_timeout: Duration,
    /// The least a request body must average, when enforced.
    pub body_min_rate: Option<MinRate>,
    /// Bytes of request bodies held at once, across requests.
    pub body_budget: usize,
    /// How long a request waits for room in the budget.
    pub body_budget_wait: Duration,
    /// Requests served at once.
    pub max_requests: usize,
}

/// The least average rate a request body must keep once its grace has
/// passed. A body that trickles is never silent long enough for the read
/// timeout, yet holds its share of the body budget until it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinRate {
    pub bytes_per_second: NonZeroU64,
    pub grace: Duration,
}

impl MinRate {
    /// How long after a body began it may take to deliver `received`
    /// bytes: the grace, then one second per `bytes_per_second`.
    pub fn allowance(&self, received: u64) -> Duration {
        let nanos = u128::from(received) * 1_000_000_000 / u128::from(self.bytes_per_second.get());
        let earned = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.grace.saturating_add(earned)
    }
}

/// The upstreams of the three route prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    /// The Bedrock runtime: every path without a known prefix.
    pub runtime: Upstream,
    /// The Agents runtime, under `/agent-runtime/`.
    pub agent_runtime: Option<Upstream>,
    /// Bedrock Mantle, under `/mantle/`.
    pub mantle: Option<Upstream>,
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub scheme: Scheme,
    /// Host and non-default port; default ports are dropped so the signed
    /// host matches the `Host` header the HTTP client sends.
    pub authority: Authority,
    /// Path prefix of the base URL, without trailing slash (usually empty).
    pub base_path: String,
    /// The SigV4 service name.
    pub signing_name: String,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// Token usage metrics, and which models get their own `model` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageLabels {
    /// No usage metrics.
    Off,
    /// The first this many models seen; the rest are `other`.
    FirstSeen(usize),
    /// These models; the rest are `other`.
    AllowList(Vec<String>),
}
