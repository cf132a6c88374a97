//! Sending to Bedrock: the HTTPS connections, the response-header
//! timeout, and what a failed send means for the client.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{Either, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// What is sent upstream: a buffered body (every operation but one), or
/// the re-signed event stream of a bidirectional stream.
pub type RequestBody = Either<Full<Bytes>, UnsyncBoxBody<Bytes, super::event_stream::StreamError>>;

/// The bidirectional streams' client: HTTP/2 only, over rustls (see
/// [`UpstreamClients`]).
pub type UpstreamClient = Client<Connector, RequestBody>;

/// Idle connections are closed after this; below the idle timeouts
/// of AWS front ends, so we never reuse a connection they are closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// How often an HTTP/2 connection with requests in flight is PINGed, and
/// how long the answer may take. Every request to a host shares one
/// connection: one whose path died without a FIN or RST (NAT or conntrack
/// state lost, a front end gone) would otherwise hold all of them until
/// the response-header timeout (15 minutes), and stay in the pool. Only
/// while requests are in flight, as servers count idle PINGs as abuse.
pub const H2_PING: Duration = Duration::from_secs(20);

pub use super::dial::Connector;
pub(super) use super::dial::Dial;
use super::error::ProxyError;
use super::pool::{Pool, PooledBody};
use crate::egress::EgressProxy;

/// The two ways the proxy sends.
#[derive(Clone)]
pub struct UpstreamClients {
    /// Every operation but one: HTTP/2 or HTTP/1.1, whichever ALPN picks.
    pub pooled: Pool,
    /// Bidirectional streams only: HTTP/2 always (Bedrock accepts nothing
    /// else for them), on a connection apart from ordinary requests, so a
    /// long voice session read slowly by its client cannot hold up their
    /// flow-control window or stream slots. Sessions share that connection
    /// with each other; its window is sized for many stalled readers.
    pub streams: UpstreamClient,
}

/// Both clients; `max_idle` idle connections per host are kept for reuse;
/// HTTPS goes through `via` unless its `NO_PROXY` says otherwise.
pub fn clients(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    via: Option<EgressProxy>,
    max_idle: usize,
) -> UpstreamClients {
    clients_pinging(tls, connect_timeout, via, max_idle, H2_PING)
}

/// [`clients`], PINGing HTTP/2 connections every `ping` (and giving up on
/// one whose answer takes longer).
pub fn clients_pinging(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    via: Option<EgressProxy>,
    max_idle: usize,
    ping: Duration,
) -> UpstreamClients {
    let dial = Dial::new(connect_timeout, via);
    UpstreamClients {
        pooled: Pool::new(
            Connector::new(tls.clone(), dial.clone(), false),
            max_idle,
            POOL_IDLE_TIMEOUT,
        )
        .pinging(ping),
        streams: streams_client(Connector::new(tls, dial, true), max_idle, ping),
    }
}

/// Sends a buffered request on the pool, waiting at most `header_timeout`
/// for the response headers (the body then streams for as long as it takes).
///
/// Not an `async fn`: the request is built and its send boxed before the
/// caller awaits, so the caller's future holds a pointer and a timer, not
/// the request's parts (twice, as rustc lays out an `async fn`'s
/// arguments). Every byte of the request's future is copied into place
/// once per request, so its size costs cache misses at many connections.
pub fn send<'a>(
    pool: &'a Pool,
    parts: http::request::Parts,
    body: Full<Bytes>,
    header_timeout: Option<Duration>,
) -> impl std::future::Future<Output = Result<Response<PooledBody>, ProxyError>> + 'a {
    // Boxed, as hyper-util's client boxes its own: the send's state is
    // large, and every future around it (up to the connection's) would
    // carry it and copy it when moved.
    let sent = Box::pin(pool.send(Request::from_parts(parts, body)));
    within(header_timeout, sent)
}

/// Opens a bidirectional stream, waiting at most `header_timeout` for the
/// response headers.
pub async fn send_stream(
    client: &UpstreamClient,
    parts: http::request::Parts,
    body: RequestBody,
    header_timeout: Option<Duration>,
) -> Result<Response<PooledBody>, ProxyError> {
    let sent = async {
        client
            .request(Request::from_parts(parts, body))
            .await
            .map(|r| r.map(PooledBody::unpooled))
            .map_err(|e| {
                if e.is_connect() {
                    upstream_error(&e)
                } else {
                    answer_error(&e)
                }
            })
    };
    within(header_timeout, sent).await
}

async fn within<T>(
    limit: Option<Duration>,
    sent: impl std::future::Future<Output = Result<T, ProxyError>>,
) -> Result<T, ProxyError> {
    let Some(limit) = limit else {
        return sent.await;
    };
    match tokio::time::timeout(limit, sent).await {
        Ok(result) => result,
        Err(_) => Err(ProxyError::NoResponseHeaders(limit)),
    }
}

fn streams_client(https: Connector, max_idle: usize, ping: Duration) -> UpstreamClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(max_idle)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(true)
        .http2_keep_alive_interval(ping)
        .http2_keep_alive_timeout(ping)
        .http2_keep_alive_while_idle(false)
        // As the pooled connection's: hyper's 5 MiB would let three
        // sessions whose clients stop reading (2 MiB stream windows) stall
        // every other session; these take 16, and hold 16 MiB at most.
        .http2_initial_stream_window_size(super::pool::UPSTREAM_H2_STREAM_WINDOW)
        .http2_initial_connection_window_size(super::pool::UPSTREAM_H2_CONNECTION_WINDOW)
        .http2_max_header_list_size(super::pool::UPSTREAM_H2_MAX_HEADER_LIST)
        .build(https)
}

/// A failure of a request that was handed to a connection: the upstream
/// may have received it, unless HTTP/2 says it did not.
pub(super) fn answer_error(e: &(dyn std::error::Error + 'static)) -> ProxyError {
    let detail = crate::error_text::with_causes(e);
    // hyper's words for an answer head past its read buffer (checked
    // between reads: up to about twice it) or past 100 header lines.
    if detail.contains("message head is too large") {
        return ProxyError::UpstreamHeadTooLarge(detail);
    }
    // First: a GOAWAY's text is the peer's and may say anything ("idle
    // timed out").
    if refused_unprocessed(e) {
        ProxyError::UpstreamRefused(detail)
    } else if timed_out(&detail) {
        ProxyError::UpstreamTimeout(detail)
    } else {
        ProxyError::UpstreamLost(detail)
    }
}

/// Whether an HTTP/2 upstream said it did not process the request: its
/// stream reset with REFUSED_STREAM, or a GOAWAY whose last stream came
/// before it, whatever its error code. RFC 9113 §8.7 and §6.8: either may
/// be sent again, on another connection. (h2 gives a stream a remote
/// GOAWAY error only when the GOAWAY left it out, or when it was opened on
/// a connection already told to go away; streams it covered fail with the
/// connection's I/O error.)
fn refused_unprocessed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away()
                    || (h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM)));
        }
        cause = c.source();
    }
    false
}

/// Whether an HTTP/2 upstream sent a GOAWAY: the connection takes no
/// new streams.
pub(super) fn went_away(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            return h2.is_remote() && h2.is_go_away();
        }
        cause = c.source();
    }
    false
}

/// A connect failure (or one of a send not yet handed to a connection),
/// with its causes, as the client sees it.
pub(super) fn upstream_error(e: &(dyn std::error::Error + 'static)) -> ProxyError {
    let mut detail = crate::error_text::with_causes(e);
    if timed_out(&detail) {
        return ProxyError::UpstreamTimeout(detail);
    }
    if let Some(hint) = tls_hint(&detail) {
        detail = format!("{detail} ({hint})");
    }
    ProxyError::UpstreamUnreachable(detail)
}

/// What to look at when rustls refused Bedrock's certificate (its words,
/// 0.23), as the STS errors say it: behind a TLS-inspecting proxy the
/// bare "UnknownIssuer" names neither the proxy nor the fix.
fn tls_hint(detail: &str) -> Option<&'static str> {
    if detail.contains("not valid for name") {
        Some("the certificate does not list the host asked: check the endpoint URL")
    } else if detail.contains("certificate expired") || detail.contains("not valid yet") {
        Some("the certificate is outside its validity dates by this node's clock: check NTP, or the endpoint's certificate")
    } else if detail.contains("UnknownIssuer") {
        Some("the certificate is not trusted: behind a TLS-inspecting proxy, or with a private endpoint, its CA belongs in AWS_CA_BUNDLE or BEDROCK_BROKER_CA_BUNDLE_PEM (the webhook's --sidecar-ca-bundle for injected sidecars)")
    } else {
        None
    }
}

/// Whether an error's causes say a timer ran out (the connect timeout's,
/// hyper's), which only their text tells.
fn timed_out(detail: &str) -> bool {
    detail.contains("timed out") || detail.contains("deadline")
}

#[cfg(test)]
mod tests {
    use super::tls_hint;

    #[test]
    fn refused_certificates_name_what_to_look_at() {
        // rustls 0.23's words, as the connector reports them.
        for (detail, hint) in [
            ("invalid peer certificate: UnknownIssuer", Some("AWS_CA_BUNDLE")),
            (
                "invalid peer certificate: certificate not valid for name \"x\"; certificate is only valid for DnsName(\"y\")",
                Some("does not list the host"),
            ),
            (
                "invalid peer certificate: certificate expired: verification time 2, but certificate is not valid after 1",
                Some("validity dates"),
            ),
            // Nothing a CA bundle would mend: no hint rather than a wrong one.
            ("invalid peer certificate: BadSignature", None),
            ("tcp connect error: Connection refused", None),
        ] {
            let got = tls_hint(detail);
            match hint {
                Some(words) => assert!(got.is_some_and(|h| h.contains(words)), "{detail}: {got:?}"),
                None => assert_eq!(got, None, "{detail}"),
            }
        }
    }
}
