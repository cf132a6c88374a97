//! What a request must pass before the proxy spends memory or an upstream
//! connection on it: it is for this pod (its `Host`, and the optional
//! proxy token), there is room for it (requests in flight), and its body
//! fits the memory budget of buffered bodies.

use std::sync::Arc;
use std::time::Duration;

use http::header::{AUTHORIZATION, HOST, ORIGIN};
use http::uri::Authority;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::{Gate, MinRate};
use super::error::ProxyError;
use crate::secret::Secret;

/// Where a client may present the proxy token when it cannot set
/// `Authorization` (an AWS SDK signs that header itself).
pub const PROXY_TOKEN_HEADER: HeaderName = HeaderName::from_static("x-bedrock-broker-token");

/// Whether `host` (a name or an address, IPv6 in brackets) is this machine.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The IPv6 address of a host written `[address]`, as in a `Host` header;
/// `[address]` of it is the one form allowed hosts are kept and compared in.
pub fn bracketed_ipv6(host: &str) -> Option<std::net::Ipv6Addr> {
    host.strip_prefix('[')?.strip_suffix(']')?.parse().ok()
}

/// The request's target host: HTTP/2's `:authority`, else the `Host` header.
fn host_of<B>(request: &Request<B>) -> Option<String> {
    if let Some(authority) = request.uri().authority() {
        return Some(authority.host().to_owned());
    }
    let value = request.headers().get(HOST)?.to_str().ok()?;
    let authority: Authority = value.parse().ok()?;
    Some(authority.host().to_owned())
}

/// An HTTP/1.1 request has exactly one `Host` (RFC 9112 §3.2), HTTP/1.0
/// at most one: with two, the gate read the first and whatever reads the
/// request next may read the other.
///
/// Returns the one `Host` of an HTTP/1 request (none under HTTP/2's
/// `:authority`), so the gate looks the header up once.
fn one_host<B>(request: &Request<B>) -> Result<Option<&HeaderValue>, ProxyError> {
    if request.uri().authority().is_some() {
        return Ok(None);
    }
    let mut hosts = request.headers().get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) => Ok(Some(host)),
        (Some(_), Some(_)) => Err(ProxyError::InvalidHost(
            "the request has more than one Host header",
        )),
        (None, _) if request.version() == http::Version::HTTP_11 => Err(ProxyError::InvalidHost(
            "an HTTP/1.1 request needs a Host header",
        )),
        (None, _) => Ok(None),
    }
}

/// An HTTP/1 request whose `Host` is `127.0.0.1` or `localhost` with or
/// without a port, or `[::1]` with one: what nearly every client sends,
/// recognised without parsing an `Authority` (a copy and two allocations a
/// request). Only ever `true` where [`host_of`] and [`is_loopback_host`]
/// would allow the request too; anything else takes that path.
#[cfg(test)]
fn plainly_loopback<B>(request: &Request<B>) -> bool {
    request.uri().authority().is_none()
        && request
            .headers()
            .get(HOST)
            .is_some_and(|v| plainly_loopback_host(v.as_bytes()))
}

/// [`plainly_loopback`] of an HTTP/1 request's `Host` value.
fn plainly_loopback_host(value: &[u8]) -> bool {
    let host = match value.iter().rposition(|&b| b == b':') {
        Some(colon) => {
            let port = &value[colon + 1..];
            if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
                return false;
            }
            &value[..colon]
        }
        None => value,
    };
    host == b"127.0.0.1" || host == b"[::1]" || host.eq_ignore_ascii_case(b"localhost")
}

/// The gate, built once.
#[derive(Debug)]
pub struct GateState {
    /// Lower-cased extra host names.
    allowed_hosts: Vec<String>,
    token: Option<Secret>,
    requests: Arc<Semaphore>,
    budget: Arc<Semaphore>,
    budget_total: usize,
    budget_wait: Duration,
    pub body_read_timeout: Duration,
    pub body_min_rate: Option<MinRate>,
}

/// How a request the gate let in is to be forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    AsIs,
    /// Its `Authorization: Bearer` is the proxy token: the broker's, never
    /// Bedrock's, whatever it looks like (any 16 printable characters may
    /// look like a long-term API key, `ABSK…`).
    BearerIsProxyToken,
}

impl GateState {
    pub fn new(gate: Gate) -> Self {
        // A budget larger than a semaphore can count is no limit at all.
        let budget = gate.body_budget.min(Semaphore::MAX_PERMITS);
        Self {
            allowed_hosts: gate
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            token: gate.token,
            requests: Arc::new(Semaphore::new(gate.max_requests)),
            budget: Arc::new(Semaphore::new(budget)),
            budget_total: budget,
            budget_wait: gate.body_budget_wait,
            body_read_timeout: gate.body_read_timeout,
            body_min_rate: gate.body_min_rate,
        }
    }

    /// A slot for one request, held until its response ends.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, ProxyError> {
        self.requests
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProxyError::Overloaded("too many requests in flight (--max-requests)"))
    }

    /// The request is for this pod: its host is loopback (or allowed), and
    /// it carries the proxy token when one is configured. A browser-like
    /// component tricked by DNS rebinding sends its attacker's name.
    pub fn check<B>(&self, request: &Request<B>) -> Result<Admitted, ProxyError> {
        let host_header = one_host(request)?;
        if !host_header.is_some_and(|v| plainly_loopback_host(v.as_bytes())) {
            let host = match host_of(request) {
                Some(host) => host,
                // A `Host` that names no host (empty, or a list).
                None if request.headers().contains_key(HOST) => {
                    return Err(ProxyError::InvalidHost(
                        "the Host header does not name a host",
                    ));
                }
                // HTTP/1.0 without one: "Host \"\" is not loopback; add it
                // to --allowed-hosts" was no help.
                None => {
                    return Err(ProxyError::InvalidHost(
                        "the request names no host: send a Host header",
                    ));
                }
            };
            if !self.host_allowed(&host) {
                return Err(ProxyError::HostNotAllowed(host));
            }
        }
        // A page open in a browser in the pod (an agent's headless one) can
        // POST here as text/plain without a CORS preflight: it cannot read
        // the answer, but Bedrock runs, and bills, the prompt it chose.
        // Browsers name the page in `Origin`; SDKs and curl send none.
        if let Some(origin) = request.headers().get(ORIGIN) {
            if !self.origin_allowed(origin) {
                let shown = String::from_utf8_lossy(origin.as_bytes()).into_owned();
                return Err(ProxyError::OriginNotAllowed(shown));
            }
        }
        let Some(token) = &self.token else {
            return Ok(Admitted::AsIs);
        };
        let headers = request.headers();
        if bearer_is(headers, token) {
            Ok(Admitted::BearerIsProxyToken)
        } else if header_is(headers, token) {
            Ok(Admitted::AsIs)
        } else if headers.contains_key(PROXY_TOKEN_HEADER) {
            // A bearer may be an SDK's placeholder key; the broker's own
            // header can only be meant as the token.
            Err(ProxyError::ProxyTokenMismatch)
        } else {
            Err(ProxyError::ProxyTokenRequired)
        }
    }

    /// A loopback name or address, or one of `--allowed-hosts`.
    fn host_allowed(&self, host: &str) -> bool {
        if is_loopback_host(host) {
            return true;
        }
        // An IPv6 address has many spellings; the list holds each in one.
        let canonical = bracketed_ipv6(host).map(|addr| format!("[{addr}]"));
        let host = canonical.as_deref().unwrap_or(host);
        self.allowed_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host))
    }

    /// A page served from this pod (loopback) or an allowed host; `null`
    /// (a sandboxed or local-file page) and anything unreadable are not.
    fn origin_allowed(&self, origin: &http::HeaderValue) -> bool {
        origin
            .to_str()
            .ok()
            .and_then(|o| o.parse::<http::Uri>().ok())
            .is_some_and(|u| u.host().is_some_and(|h| self.host_allowed(h)))
    }

    /// Reserves `bytes` of the body budget, waiting at most the budget wait.
    pub async fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ProxyError> {
        reserve(&self.budget, self.budget_wait, bytes).await
    }

    /// The body budget, for a body read after the request's handler has
    /// returned (a bidirectional stream's messages).
    pub fn body_budget(&self) -> BodyBudget {
        BodyBudget {
            budget: self.budget.clone(),
            total: self.budget_total,
            wait: self.budget_wait,
        }
    }
}

/// A handle on `--request-body-budget`.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    budget: Arc<Semaphore>,
    total: usize,
    wait: Duration,
}

impl BodyBudget {
    /// All of it, held by nobody.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Reserves `bytes`, waiting at most the budget wait.
    pub async fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ProxyError> {
        reserve(&self.budget, self.wait, bytes).await
    }
}

impl crate::metrics::budgets::Budget for BodyBudget {
    fn held(&self) -> usize {
        self.total.saturating_sub(self.budget.available_permits())
    }

    fn total(&self) -> usize {
        self.total
    }
}

async fn reserve(
    budget: &Arc<Semaphore>,
    wait: Duration,
    bytes: usize,
) -> Result<OwnedSemaphorePermit, ProxyError> {
    let busy = || ProxyError::Overloaded("no room for the body in --request-body-budget");
    let n = u32::try_from(bytes).map_err(|_| busy())?;
    let acquire = budget.clone().acquire_many_owned(n);
    // Nearly always there is room: `within` takes it without reading the
    // clock for a timeout that would not fire.
    match super::request_body::within(wait, acquire).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(busy()),
    }
}

/// `given` is `token`, compared in constant time.
fn same(given: &[u8], token: &Secret) -> bool {
    bool::from(given.ct_eq(token.expose().as_bytes()))
}

/// The broker's own header carries the token.
fn header_is(headers: &HeaderMap, token: &Secret) -> bool {
    headers
        .get(PROXY_TOKEN_HEADER)
        .is_some_and(|v| same(v.as_bytes(), token))
}

/// `Authorization: Bearer` carries the token.
fn bearer_is(headers: &HeaderMap, token: &Secret) -> bool {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, given)| {
            scheme.eq_ignore_ascii_case("bearer") && same(given.trim().as_bytes(), token)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(hosts: &[&str], token: Option<&str>) -> GateState {
        GateState::new(Gate {
            allowed_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            token: token.map(Secret::new),
            body_read_timeout: Duration::from_secs(1),
            body_min_rate: None,
            body_budget: 100,
            body_budget_wait: Duration::from_millis(10),
            max_requests: 1,
        })
    }

    fn request(host: Option<&str>, headers: &[(&'static str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/model/m/converse");
        if let Some(h) = host {
            b = b.header(HOST, h);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn answers_loopback_hosts_and_configured_names_only() {
        let g = gate(&["Bedrock.Local"], None);
        for ok in [
            "127.0.0.1:9787",
            "localhost",
            "LOCALHOST:1",
            "[::1]:9787",
            "127.9.9.9",
            "bedrock.local:9787",
        ] {
            assert!(g.check(&request(Some(ok), &[])).is_ok(), "{ok}");
        }
        for bad in [
            "rebind.attacker.example:9787",
            "10.0.0.5:9787",
            "bedrock-runtime.us-east-1.amazonaws.com",
        ] {
            let e = g.check(&request(Some(bad), &[])).unwrap_err();
            assert_eq!(e.code().name, "host_not_allowed", "{bad}");
        }
        assert!(g.check(&request(None, &[])).is_err(), "no Host at all");
        let h2 = Request::builder()
            .uri("http://127.0.0.1:9787/model/m/converse")
            .body(())
            .unwrap();
        assert!(g.check(&h2).is_ok(), "HTTP/2 :authority");
    }

    #[test]
    fn an_http11_request_has_exactly_one_host() {
        // RFC 9112 §3.2: two Host lines were answered by the first, so
        // `127.0.0.1` then `evil.example` passed the gate.
        let g = gate(&[], None);
        let two = request(Some("127.0.0.1"), &[("host", "evil.example")]);
        let e = g.check(&two).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code().name), (400, "invalid_host"));
        let none = request(None, &[]);
        let e = g.check(&none).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code().name), (400, "invalid_host"));
        // One that names no host (empty, or a list) is as bad as none.
        for odd in ["", "127.0.0.1, evil.example"] {
            let e = g.check(&request(Some(odd), &[])).unwrap_err();
            assert_eq!(e.code().name, "invalid_host", "{odd:?}");
        }
        // HTTP/1.0 needs none, but the gate cannot tell such a request is
        // for this pod: refused as naming no host (it was told to add the
        // empty name to --allowed-hosts).
        let old = Request::builder()
            .uri("/model/m/converse")
            .version(http::Version::HTTP_10)
            .body(())
            .unwrap();
        let e = g.check(&old).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code().name), (400, "invalid_host"));
        assert!(e.to_string().contains("send a Host header"), "{e}");
    }

    #[test]
    fn an_allowed_ipv6_address_matches_however_the_host_spells_it() {
        // The configuration keeps each address in its one written form.
        let g = gate(&["[fd00::3]"], None);
        for ok in ["[fd00::3]", "[fd00:0::3]:9787", "[FD00:0:0::3]"] {
            assert!(g.check(&request(Some(ok), &[])).is_ok(), "{ok}");
        }
        let e = g.check(&request(Some("[fd00::4]"), &[])).unwrap_err();
        assert_eq!(e.code().name, "host_not_allowed");
    }

    #[test]
    fn the_usual_loopback_hosts_take_the_shortcut() {
        for host in [
            "127.0.0.1:9787",
            "localhost",
            "LocalHost:80",
            "[::1]:9787",
            "127.0.0.1",
        ] {
            assert!(plainly_loopback(&request(Some(host), &[])), "{host}");
        }
        for host in [
            "127.0.0.2:1",
            "[::1]",
            "127.0.0.1:",
            "127.0.0.1:123456",
            "x@127.0.0.1:1",
        ] {
            assert!(!plainly_loopback(&request(Some(host), &[])), "{host}");
        }
        let h2 = Request::builder()
            .uri("http://127.0.0.1:9787/model/m/converse")
            .header(HOST, "127.0.0.1:9787")
            .body(())
            .unwrap();
        assert!(!plainly_loopback(&h2), ":authority is what counts there");
        let g = gate(&[], None);
        let rebound = Request::builder()
            .uri("http://rebind.attacker.example:9787/model/m/converse")
            .header(HOST, "127.0.0.1:9787")
            .body(())
            .unwrap();
        let e = g.check(&rebound).unwrap_err();
        assert_eq!(e.code().name, "host_not_allowed");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// The shortcut never lets in a request the full check would refuse.
        #[test]
        fn the_shortcut_allows_only_what_the_full_check_allows(
            host in "(127\\.0\\.0\\.1|localhost|LOCALhost|\\[::1\\]|::1|\\[::1|127\\.0\\.0\\.1\\.|[a-z0-9.:@%\\[\\]-]{0,12})(:[0-9]{0,7}|:[a-z0-9+ -]{0,3}|)",
        ) {
            let Ok(value) = http::HeaderValue::from_str(&host) else {
                return Ok(());
            };
            let mut request = request(None, &[]);
            request.headers_mut().insert(HOST, value);
            if plainly_loopback(&request) {
                let full = host_of(&request).unwrap_or_default();
                proptest::prop_assert!(is_loopback_host(&full), "{host}");
            }
        }
    }

    #[test]
    fn the_proxy_token_is_required_when_configured() {
        let g = gate(&[], Some("0123456789abcdef"));
        let host = Some("127.0.0.1:9787");
        assert!(g.check(&request(host, &[])).is_err());
        // A bearer that is the token is the broker's: it is removed.
        assert_eq!(
            g.check(&request(
                host,
                &[("authorization", "Bearer 0123456789abcdef")]
            ))
            .unwrap(),
            Admitted::BearerIsProxyToken
        );
        assert_eq!(
            g.check(&request(
                host,
                &[("x-bedrock-broker-token", "0123456789abcdef")]
            ))
            .unwrap(),
            Admitted::AsIs
        );
        let wrong = g
            .check(&request(
                host,
                &[("authorization", "Bearer 0123456789abcdeX")],
            ))
            .unwrap_err();
        assert_eq!(wrong.code().name, "proxy_token_required");
        assert!(!wrong.to_string().contains("0123456789"));
        // A bearer may be an SDK's placeholder key; the broker's own header
        // can only be a token, so a wrong one is said to be wrong.
        let mismatch = g
            .check(&request(
                host,
                &[("x-bedrock-broker-token", "0123456789abcdeX")],
            ))
            .unwrap_err();
        assert_eq!(mismatch.code().name, "proxy_token_required");
        assert!(
            mismatch.to_string().contains("does not match"),
            "{mismatch}"
        );
        assert!(!mismatch.to_string().contains("0123456789"));
        let missing = g.check(&request(host, &[])).unwrap_err();
        assert!(!missing.to_string().contains("does not match"), "{missing}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_for_the_budget_gets_it_when_freed() {
        let mut g = gate(&[], None);
        g.budget_wait = Duration::from_secs(5);
        let g = Arc::new(g);
        let held = g.reserve(80).await.unwrap();
        let waiting = tokio::spawn({
            let g = g.clone();
            async move { g.reserve(30).await.map(drop) }
        });
        // Let it queue (its first poll finds no room and takes what there
        // is), then free the room: the waiter must be woken, not left for
        // its timeout to refuse.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(g.budget.available_permits(), 0, "the waiter holds the rest");
        drop(held);
        assert!(waiting.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn the_body_budget_waits_then_refuses() {
        let g = gate(&[], None);
        let held = g.reserve(80).await.unwrap();
        let e = g.reserve(30).await.unwrap_err();
        assert_eq!(e.code().name, "overloaded");
        drop(held);
        assert!(g.reserve(30).await.is_ok());
        let slot = g.admit().unwrap();
        assert!(g.admit().is_err());
        drop(slot);
        assert!(g.admit().is_ok());
    }
}
