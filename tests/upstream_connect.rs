//! Connecting to Bedrock: directly or through a forward proxy.
//!
//! Through `HTTPS_PROXY`: one CONNECT tunnel per upstream connection, with
//! the proxy's credentials, TLS end to end inside it; loopback upstreams
//! reached directly; a refusing proxy answered 502 and a silent one 504,
//! both naming the proxy. (STS through the proxy, against botocore, is in
//! the e2e suite.) Either way `--connect-timeout` bounds the whole
//! connect: TCP, the proxy's CONNECT, and TLS.

// Test code: a failed setup is a failed test, and the real clock is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod sidecar_support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bedrock_broker::egress::EgressProxy;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sidecar_support::{credentials, post, proxy_to, text, tls_acceptor, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use bedrock_broker::credentials::CredentialCell;

/// What the forward proxy does with a CONNECT.
#[derive(Clone, Copy)]
enum Behaviour {
    /// 200, then relays to this address whatever host was asked for (as a
    /// proxy resolving the name would).
    Tunnel(SocketAddr),
    /// Answers this status and closes.
    Refuse(u16),
    /// Reads the CONNECT and never answers.
    Silent,
    /// Reads the CONNECT and closes.
    Close,
}

/// A CONNECT it received: the target and its `Proxy-Authorization`.
type Connect = (String, Option<String>);

struct ForwardProxy {
    addr: SocketAddr,
    connects: Arc<Mutex<Vec<Connect>>>,
}

impl ForwardProxy {
    fn connects(&self) -> Vec<Connect> {
        self.connects.lock().unwrap().clone()
    }

    /// `HTTPS_PROXY` for it, with `userinfo` (`user:password@`).
    fn url(&self, userinfo: &str) -> EgressProxy {
        EgressProxy::parse(&format!("http://{userinfo}{}", self.addr), None).unwrap()
    }
}

async fn forward_proxy(behaviour: Behaviour) -> ForwardProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connects = Arc::new(Mutex::new(Vec::new()));
    let seen = connects.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Some(connect) = read_connect(&mut client).await else {
                    return;
                };
                seen.lock().unwrap().push(connect);
                match behaviour {
                    Behaviour::Tunnel(to) => {
                        let mut upstream = TcpStream::connect(to).await.unwrap();
                        client
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .await
                            .unwrap();
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Behaviour::Refuse(status) => {
                        let head = format!("HTTP/1.1 {status} No\r\ncontent-length: 0\r\n\r\n");
                        let _ = client.write_all(head.as_bytes()).await;
                    }
                    Behaviour::Close => {}
                    Behaviour::Silent => {
                        let mut rest = Vec::new();
                        let _ = client.read_to_end(&mut rest).await;
                    }
                }
            });
        }
    });
    ForwardProxy { addr, connects }
}

/// The CONNECT request's target and `Proxy-Authorization`.
async fn read_connect(client: &mut TcpStream) -> Option<Connect> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(client.read_u8().await.ok()?);
    }
    let head = String::from_utf8(head).ok()?;
    let mut lines = head.lines();
    let target = lines.next()?.strip_prefix("CONNECT ")?.split(' ').next()?;
    let auth = lines.find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_owned())
    });
    Some((target.to_owned(), auth))
}

/// A TLS upstream (HTTP/2 or HTTP/1.1 by ALPN) for `names`, answering
/// every request with the host it was sent to and its signature scheme.
async fn upstream(names: &[&str]) -> (SocketAddr, Vec<u8>) {
    let (acceptor, ca) = tls_acceptor(names, &[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let answer =
                    service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                        let host = request
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .or_else(|| {
                                let host = request.headers().get("host")?;
                                Some(host.to_str().ok()?.to_owned())
                            })
                            .unwrap_or_default();
                        let scheme = request
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok()?.split(' ').next().map(str::to_owned))
                            .unwrap_or_default();
                        let body = format!("{host} {scheme}");
                        Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), answer)
                    .await;
            });
        }
    });
    (addr, ca)
}

fn signing_cell() -> Arc<CredentialCell> {
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKIDEGRESS"));
    cell
}

/// `count` converse calls to `url` through a sidecar proxy set up so.
async fn converse(url: &str, ca: &[u8], setup: Setup, count: usize) -> Vec<(u16, String)> {
    let (proxy, _metrics) = proxy_to(url, Some(ca), signing_cell(), setup);
    let mut answers = Vec::new();
    for _ in 0..count {
        let response = proxy
            .clone()
            .handle(post("/model/m/converse", "{}"))
            .await
            .unwrap();
        let (status, _, body) = text(response).await;
        answers.push((status, body));
    }
    answers
}

#[tokio::test]
async fn bedrock_is_reached_through_one_tunnel_with_the_proxy_credentials() {
    let (upstream, ca) = upstream(&["bedrock-runtime.us-east-1.amazonaws.com"]).await;
    let proxy = forward_proxy(Behaviour::Tunnel(upstream)).await;
    let setup = Setup {
        egress_proxy: Some(proxy.url("svc:s3cret@")),
        ..Setup::default()
    };
    let url = "https://bedrock-runtime.us-east-1.amazonaws.com";
    let answers = converse(url, &ca, setup, 2).await;
    let signed = (
        200,
        "bedrock-runtime.us-east-1.amazonaws.com AWS4-HMAC-SHA256".to_owned(),
    );
    assert_eq!(answers, vec![signed.clone(), signed]);
    // base64("svc:s3cret"); both requests on the one connection.
    assert_eq!(
        proxy.connects(),
        vec![(
            "bedrock-runtime.us-east-1.amazonaws.com:443".to_owned(),
            Some("Basic c3ZjOnMzY3JldA==".to_owned())
        )]
    );
}

#[tokio::test]
async fn a_loopback_upstream_is_reached_directly() {
    let (upstream, ca) = upstream(&["localhost"]).await;
    let proxy = forward_proxy(Behaviour::Refuse(403)).await;
    let setup = Setup {
        egress_proxy: Some(proxy.url("")),
        ..Setup::default()
    };
    let url = format!("https://localhost:{}", upstream.port());
    let answers = converse(&url, &ca, setup, 1).await;
    let host = format!("localhost:{} AWS4-HMAC-SHA256", upstream.port());
    assert_eq!(answers, vec![(200, host)]);
    assert_eq!(proxy.connects(), Vec::new());
}

#[tokio::test]
async fn a_refusing_proxy_is_a_502_saying_why() {
    // What each refusal means for the operator, not hyper-util's words.
    let cases = [
        (
            Behaviour::Refuse(407),
            "",
            "wants credentials for a tunnel to bedrock.example:443 (407)",
        ),
        (
            Behaviour::Refuse(407),
            "svc:wrong@",
            "refused the credentials in HTTPS_PROXY (407) for a tunnel to bedrock.example:443",
        ),
        (
            Behaviour::Refuse(403),
            "",
            "refused a tunnel to bedrock.example:443 (an answer other than 200)",
        ),
        (
            Behaviour::Close,
            "",
            "broke off while opening a tunnel to bedrock.example:443",
        ),
    ];
    for (behaviour, userinfo, why) in cases {
        let (_upstream, ca) = upstream(&["bedrock.example"]).await;
        let proxy = forward_proxy(behaviour).await;
        let setup = Setup {
            egress_proxy: Some(proxy.url(userinfo)),
            ..Setup::default()
        };
        let answers = converse("https://bedrock.example", &ca, setup, 1).await;
        let (answered, body) = &answers[0];
        assert_eq!(*answered, 502, "{why}: {body}");
        let expected = format!("the egress proxy {} {why}", proxy.addr);
        assert!(body.contains(&expected), "{body}");
        assert!(!body.contains("wrong"), "{body}");
    }
}

#[tokio::test]
async fn an_unreachable_proxy_is_a_502_naming_it() {
    let (_upstream, ca) = upstream(&["bedrock.example"]).await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let setup = Setup {
        egress_proxy: Some(EgressProxy::parse(&format!("http://{addr}"), None).unwrap()),
        ..Setup::default()
    };
    let answers = converse("https://bedrock.example", &ca, setup, 1).await;
    let (answered, body) = &answers[0];
    assert_eq!(*answered, 502, "{body}");
    let expected = format!(
        "could not connect to the egress proxy {addr} (for a tunnel to bedrock.example:443)"
    );
    assert!(body.contains(&expected), "{body}");
}

/// An upstream that accepts TCP and never answers the TLS handshake (a
/// stuck middlebox, a full accept queue behind a load balancer).
async fn stalled_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

#[tokio::test]
async fn a_stalled_tunnel_is_a_504_after_the_connect_timeout() {
    // A proxy silent after the CONNECT, or one relaying to an upstream
    // that never answers the TLS handshake inside the tunnel.
    for behaviour in [
        Behaviour::Silent,
        Behaviour::Tunnel(stalled_upstream().await),
    ] {
        let (_, ca) = tls_acceptor(&["bedrock.example"], &[]);
        let proxy = forward_proxy(behaviour).await;
        let setup = Setup {
            egress_proxy: Some(proxy.url("")),
            connect_timeout: Duration::from_millis(300),
            ..Setup::default()
        };
        let answers = converse("https://bedrock.example", &ca, setup, 1).await;
        let (answered, body) = &answers[0];
        assert_eq!(*answered, 504, "{body}");
        let named = format!(
            "connecting through the egress proxy {} to bedrock.example:443 timed out after 300ms",
            proxy.addr
        );
        assert!(body.contains(&named), "{body}");
        assert_eq!(proxy.connects().len(), 1);
    }
}

#[tokio::test]
async fn a_tls_handshake_that_never_ends_is_a_504_after_the_connect_timeout() {
    let upstream = stalled_upstream().await;
    let (_, ca) = tls_acceptor(&["bedrock.example"], &[]);
    let setup = Setup {
        connect_timeout: Duration::from_millis(300),
        ..Setup::default()
    };
    let url = format!("https://localhost:{}", upstream.port());
    let answers = converse(&url, &ca, setup, 1).await;
    let (answered, body) = &answers[0];
    assert_eq!(*answered, 504, "{body}");
    let expected = format!(
        "connecting to localhost:{} timed out after 300ms",
        upstream.port()
    );
    assert!(body.contains(&expected), "{body}");
}
