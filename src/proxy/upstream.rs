//! Sending to Bedrock: the pooled HTTPS clients, the response-header
//! timeout, and what a failed send means for the client.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// What is sent upstream: a buffered body (every operation but one), or
/// the re-signed event stream of a bidirectional stream.
pub type RequestBody = Either<Full<Bytes>, UnsyncBoxBody<Bytes, super::event_stream::StreamError>>;

/// Keep-alive pool over rustls (HTTP/2 by ALPN, or HTTP/2 only: see
/// [`UpstreamClients`]).
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Connection-level HTTP/2 receive window of the streams client.
const STREAMS_CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Idle pooled connections are closed after this; below the idle timeouts
/// of AWS front ends, so we never reuse a connection they are closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

use super::error::ProxyError;

/// The two clients the proxy sends with.
#[derive(Clone)]
pub struct UpstreamClients {
    /// Every operation but one: HTTP/2 or HTTP/1.1, whichever ALPN picks.
    pub pooled: UpstreamClient,
    /// Bidirectional streams only: HTTP/2 always (Bedrock accepts nothing
    /// else for them), on a connection apart from ordinary requests, so a
    /// long voice session read slowly by its client cannot hold up their
    /// flow-control window or stream slots. Sessions share that connection
    /// with each other; its window is sized for many stalled readers.
    pub streams: UpstreamClient,
}

/// Both clients; `max_idle` idle connections per host are kept for reuse.
pub fn clients(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    max_idle: usize,
) -> UpstreamClients {
    UpstreamClients {
        pooled: build(tls.clone(), connect_timeout, max_idle, false),
        streams: build(tls, connect_timeout, max_idle, true),
    }
}

/// Sends on `client`, waiting at most `header_timeout` for the response
/// headers (the body then streams for as long as it takes).
pub async fn send(
    client: &UpstreamClient,
    parts: http::request::Parts,
    body: RequestBody,
    header_timeout: Option<Duration>,
) -> Result<Response<Incoming>, ProxyError> {
    let sent = client.request(Request::from_parts(parts, body));
    let Some(limit) = header_timeout else {
        return sent.await.map_err(|e| upstream_error(&e));
    };
    match tokio::time::timeout(limit, sent).await {
        Ok(result) => result.map_err(|e| upstream_error(&e)),
        Err(_) => Err(ProxyError::NoResponseHeaders(limit)),
    }
}

fn upstream_error(e: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    if detail.contains("timed out") || detail.contains("deadline") {
        ProxyError::UpstreamTimeout(detail)
    } else {
        ProxyError::UpstreamUnreachable(detail)
    }
}

fn build(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
    max_idle: usize,
    h2_only: bool,
) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(30)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = if h2_only {
        https.enable_http2().wrap_connector(http)
    } else {
        https.enable_http1().enable_http2().wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // HTTP/1.1 opens a connection per concurrent request; after a burst
        // only this many stay open.
        .pool_max_idle_per_host(max_idle)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .http2_only(h2_only)
        // hyper's default 5 MiB would let three sessions whose clients stop
        // reading (2 MiB stream windows) stall every other session.
        .http2_initial_connection_window_size(h2_only.then_some(STREAMS_CONNECTION_WINDOW))
        .build(https)
}
