//! Shared helpers of the sidecar integration tests: a minimal in-process
//! upstream that records what reached it and answers from a script, and a
//! proxy wired to it. These tests cover the sidecar's lifecycle; whether a
//! signature is right is proven against botocore in the Python e2e suite.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::Router;
use bedrock_broker::clock::SystemClock;
use bedrock_broker::config::aws::Region;
use bedrock_broker::config::endpoints::base_url;
use bedrock_broker::credentials::{CredentialCell, HeldCredentials};
use bedrock_broker::egress::EgressProxy;
use bedrock_broker::metrics::Metrics;
use bedrock_broker::proxy::{self, Gate, Proxy, RouteTable, Upstream, UsageLabels};
use http_body_util::BodyExt;

/// One scripted answer of the upstream.
pub enum Answer {
    /// Status, headers and body, sent at once.
    Whole(u16, Vec<(&'static str, &'static str)>, &'static str),
    /// Headers, then the chunks, then silence (the connection stays open).
    Stall(Vec<(&'static str, &'static str)>, Vec<&'static str>),
    /// Headers and the first chunk, then the second once `gate` is notified.
    Gated(&'static str, Arc<tokio::sync::Notify>, &'static str),
    /// Nothing until `gate` is notified, then a 200.
    Held(Arc<tokio::sync::Notify>),
}

/// What reached the upstream.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

#[derive(Clone, Default)]
pub struct Script {
    script: Arc<Mutex<VecDeque<Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// The in-process upstream.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    state: Script,
}

impl FakeUpstream {
    pub async fn start(script: Vec<Answer>) -> Self {
        let state = Script {
            script: Arc::new(Mutex::new(script.into())),
            seen: Arc::default(),
        };
        let app = Router::new().fallback(answer).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, state }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

async fn answer(State(state): State<Script>, request: Request<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    state.seen.lock().unwrap().push(Seen {
        path: parts.uri.path().to_owned(),
        headers: parts.headers,
        body,
    });
    let next = state.script.lock().unwrap().pop_front();
    match next {
        None => Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(r#"{"ok":true}"#))
            .unwrap(),
        Some(Answer::Whole(status, headers, body)) => {
            let mut r = Response::builder().status(status);
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.body(Body::from(body)).unwrap()
        }
        Some(Answer::Gated(first, gate, last)) => {
            let rest = futures::stream::once(async move {
                gate.notified().await;
                Ok::<_, std::io::Error>(bytes::Bytes::from(last))
            });
            let stream = futures::stream::iter([Ok(bytes::Bytes::from(first))]).chain(rest);
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap()
        }
        Some(Answer::Held(gate)) => {
            gate.notified().await;
            Response::builder()
                .status(200)
                .body(Body::from(r#"{"ok":true}"#))
                .unwrap()
        }
        Some(Answer::Stall(headers, chunks)) => {
            let stream = async_stream(chunks);
            let mut r = Response::builder().status(StatusCode::OK);
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.body(Body::from_stream(stream)).unwrap()
        }
    }
}

fn async_stream(
    chunks: Vec<&'static str>,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(bytes::Bytes::from(c))))
        .chain(futures::stream::pending())
}

use futures::StreamExt;

/// An upstream that answers every connection with these raw bytes, for
/// answers no well-behaved HTTP server would give.
pub async fn raw_upstream(answer: &'static [u8]) -> FakeUpstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = socket.write_all(answer).await;
                // Hold the connection open: the client decides when it has it all.
                let _ = socket.read(&mut buf).await;
            });
        }
    });
    FakeUpstream {
        addr,
        state: Script::default(),
    }
}

/// Connections to a `counting_upstream`: open now, and the most at once.
#[derive(Default)]
pub struct Connections {
    pub open: std::sync::atomic::AtomicUsize,
    pub peak: std::sync::atomic::AtomicUsize,
}

/// An HTTP/1.1 upstream that answers every request after `delay` and
/// counts the connections open to it.
pub async fn counting_upstream(delay: Duration) -> (FakeUpstream, Arc<Connections>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let open = Arc::new(Connections::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = open.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let open = counter.clone();
            let now = open.open.fetch_add(1, Ordering::SeqCst) + 1;
            open.peak.fetch_max(now, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                loop {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    // One small request at a time: its head and a short body.
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if seen.len() < end + 4 + length {
                            continue;
                        }
                        seen.drain(..end + 4 + length);
                        tokio::time::sleep(delay).await;
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                        if socket.write_all(answer).await.is_err() {
                            break;
                        }
                    }
                }
                open.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (
        FakeUpstream {
            addr,
            state: Script::default(),
        },
        open,
    )
}

/// Temporary credentials valid for an hour from now.
pub fn credentials(key: &str) -> HeldCredentials {
    let now = SystemTime::now();
    HeldCredentials::new(
        Credentials::new(
            key,
            "secret",
            Some("token".into()),
            Some(now + Duration::from_secs(3600)),
            "test",
        ),
        now,
        "test",
    )
}

/// How the proxy under test is set up.
pub struct Setup {
    pub max_body_bytes: usize,
    pub stream_idle_timeout: Option<Duration>,
    pub self_heal_wait: Duration,
    pub gate: Gate,
    /// HTTP/2 PING interval upstream; `None`: the product's.
    pub h2_ping: Option<Duration>,
    /// HTTPS through this forward proxy.
    pub egress_proxy: Option<EgressProxy>,
    pub connect_timeout: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            stream_idle_timeout: None,
            self_heal_wait: Duration::from_secs(5),
            gate: Gate {
                allowed_hosts: Vec::new(),
                token: None,
                body_read_timeout: Duration::from_secs(30),
                body_min_rate: None,
                body_budget: 64 * 1024 * 1024,
                body_budget_wait: Duration::from_secs(5),
                max_requests: 512,
            },
            h2_ping: None,
            egress_proxy: None,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A proxy in front of `upstream`, signing with `cell`.
pub fn proxy(
    upstream: &FakeUpstream,
    cell: Arc<CredentialCell>,
    setup: Setup,
) -> (Arc<Proxy>, Metrics) {
    proxy_to(&upstream.url(), None, cell, setup)
}

/// A proxy in front of the upstream at `url`, trusting `ca` (PEM) too.
pub fn proxy_to(
    url: &str,
    ca: Option<&[u8]>,
    cell: Arc<CredentialCell>,
    setup: Setup,
) -> (Arc<Proxy>, Metrics) {
    let (scheme, authority, base_path) = base_url(url).unwrap();
    let config = proxy::Config {
        routes: RouteTable {
            runtime: Upstream {
                scheme,
                authority,
                base_path,
                signing_name: "bedrock".into(),
            },
            agent_runtime: None,
            mantle: None,
        },
        region: Region::parse("us-east-1").ok(),
        api_key: None,
        max_body_bytes: setup.max_body_bytes,
        connect_timeout: setup.connect_timeout,
        response_header_timeout: Some(Duration::from_secs(30)),
        stream_idle_timeout: setup.stream_idle_timeout,
        self_heal_wait: setup.self_heal_wait,
        usage: UsageLabels::FirstSeen(20),
        gate: setup.gate,
        upstream_max_idle: 32,
    };
    let metrics = Metrics::new();
    let tls = bedrock_broker::tls::client_config(ca).unwrap();
    let ping = setup.h2_ping.unwrap_or(proxy::H2_PING);
    let clients = proxy::upstream_clients_pinging(
        tls,
        config.connect_timeout,
        setup.egress_proxy.clone(),
        config.upstream_max_idle,
        ping,
    );
    let proxy = Proxy::new(
        config,
        cell,
        clients,
        Arc::new(SystemClock),
        metrics.proxy.clone(),
    );
    (Arc::new(proxy), metrics)
}

/// A TLS acceptor with a self-signed certificate for `names`, offering
/// `alpn`; and the certificate as PEM, for the proxy to trust.
pub fn tls_acceptor(names: &[&str], alpn: &[&[u8]]) -> (tokio_rustls::TlsAcceptor, Vec<u8>) {
    let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let provider = bedrock_broker::tls::provider();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        cert.pem().into_bytes(),
    )
}

/// A JSON POST to `path`, as an app in the pod sends it.
pub fn post(path: &str, body: &'static str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "127.0.0.1:9787")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            body.as_bytes(),
        )))
        .unwrap()
}

/// The whole body of a proxy answer, as text.
pub async fn text<B>(response: http::Response<B>) -> (u16, HeaderMap, String)
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}
