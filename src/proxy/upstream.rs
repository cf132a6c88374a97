//! The pooled HTTPS client to Bedrock.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{Either, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// What is sent upstream: a buffered body (every operation but one), or
/// the re-signed event stream of a bidirectional stream.
pub type RequestBody = Either<Full<Bytes>, UnsyncBoxBody<Bytes, super::event_stream::StreamError>>;

/// Keep-alive pool, rustls, HTTP/2 when the upstream offers it by ALPN.
pub type UpstreamClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// Idle pooled connections are closed after this; below the idle timeouts
/// of AWS front ends, so we never reuse a connection they are closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

pub fn client(tls: rustls::ClientConfig, connect_timeout: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(30)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(https)
}
