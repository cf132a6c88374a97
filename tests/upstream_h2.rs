//! Bedrock over HTTP/2 (what ALPN picks against AWS): a request the
//! upstream says it never processed (REFUSED_STREAM, or a GOAWAY that
//! left it out, as when a front end recycles the connection all requests
//! share) is sent once more; one whose connection died after it was sent
//! is not, and the client is told it may have been processed.

// Test code: a failed setup is a failed test, and the real clock is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod sidecar_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bedrock_broker::credentials::CredentialCell;
use bytes::Bytes;
use sidecar_support::{credentials, post, proxy_to, text, tls_acceptor, Setup};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the upstream does with the first request it is sent; every later
/// request is answered `200 {}`.
#[derive(Clone, Copy, Debug)]
enum First {
    /// RST_STREAM(REFUSED_STREAM): not processed.
    RefuseStream,
    /// Every request refused so.
    RefuseAlways,
    /// GOAWAY(last stream 0, this error code) on the first connection: its
    /// requests were not processed.
    GoAwayBeforeIt(u32),
    /// GOAWAY(last stream 1, NO_ERROR), then a close: the request was
    /// covered, so it may have been processed.
    GoAwayCoveringIt,
    /// The first connection closes after the request arrived, without a
    /// GOAWAY: it may have been processed.
    CloseAfterIt,
    /// Every request answered.
    AnswerAll,
}

struct H2Upstream {
    url: String,
    ca: Vec<u8>,
    /// Requests that reached the upstream, refused ones included.
    seen: Arc<AtomicUsize>,
}

async fn h2_upstream(first: First) -> H2Upstream {
    let (acceptor, ca) = tls_acceptor(&["127.0.0.1"], &[b"h2"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counted = seen.clone();
    tokio::spawn(async move {
        let mut connection = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(tls) = acceptor.accept(tcp).await else {
                continue;
            };
            connection += 1;
            let seen = counted.clone();
            let raw = connection == 1
                && matches!(
                    first,
                    First::GoAwayBeforeIt(_) | First::GoAwayCoveringIt | First::CloseAfterIt
                );
            tokio::spawn(async move {
                if raw {
                    until_a_request(tls, first, &seen).await;
                } else {
                    serve(tls, first, &seen).await;
                }
            });
        }
    });
    H2Upstream {
        url: format!("https://127.0.0.1:{}", addr.port()),
        ca,
        seen,
    }
}

/// HTTP/2 with the h2 crate: refuses the very first request when told to.
async fn serve<T>(io: T, first: First, seen: &AtomicUsize)
where
    T: AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut connection) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        drop(request);
        if (n == 0 && matches!(first, First::RefuseStream)) || matches!(first, First::RefuseAlways)
        {
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        let response = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        if let Ok(mut body) = respond.send_response(response, false) {
            let _ = body.send_data(Bytes::from_static(b"{}"), true);
        }
    }
}

/// The first connection, by hand: HTTP/2 framing as far as the request's
/// HEADERS frame, then a GOAWAY that leaves it out, or a bare close.
async fn until_a_request<T>(mut io: T, first: First, seen: &AtomicUsize)
where
    T: AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;
    const GOAWAY: u8 = 0x7;
    let mut preface = [0u8; 24];
    if io.read_exact(&mut preface).await.is_err() {
        return;
    }
    // Our (empty) SETTINGS.
    let _ = io.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]).await;
    loop {
        let mut header = [0u8; 9];
        if io.read_exact(&mut header).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; len];
        if io.read_exact(&mut payload).await.is_err() {
            return;
        }
        match header[3] {
            // Acknowledge the client's SETTINGS (not an ACK itself).
            SETTINGS if header[4] & 0x1 == 0 => {
                let _ = io.write_all(&[0, 0, 0, SETTINGS, 0x1, 0, 0, 0, 0]).await;
            }
            HEADERS => break,
            _ => {}
        }
    }
    seen.fetch_add(1, Ordering::SeqCst);
    let goaway = |last: u32, code: u32, debug: &[u8]| {
        let len = u8::try_from(8 + debug.len()).unwrap();
        let mut frame = vec![0, 0, len, GOAWAY, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&last.to_be_bytes());
        frame.extend_from_slice(&code.to_be_bytes());
        frame.extend_from_slice(debug);
        frame
    };
    let frame = match first {
        // Last stream 0: no request of this connection was processed. The
        // debug text is the peer's: it is not taken for our timeout.
        First::GoAwayBeforeIt(code) => Some(goaway(0, code, b"idle timed out")),
        // Last stream 1, the request's: it was, or may have been.
        First::GoAwayCoveringIt => Some(goaway(1, 0, b"")),
        _ => None,
    };
    if let Some(frame) = frame {
        let _ = io.write_all(&frame).await;
        let _ = io.flush().await;
    }
    let _ = io.shutdown().await;
}

fn signing_cell() -> Arc<CredentialCell> {
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKIDH2"));
    cell
}

async fn converse(
    up: &H2Upstream,
    request: http::Request<http_body_util::Full<Bytes>>,
) -> (u16, String) {
    let (proxy, _metrics) = proxy_to(&up.url, Some(&up.ca), signing_cell(), Setup::default());
    let response = proxy.handle(request).await.unwrap();
    let (status, _, body) = text(response).await;
    (status, body)
}

#[tokio::test]
async fn a_refused_stream_is_sent_once_more() {
    let up = h2_upstream(First::RefuseStream).await;
    let (status, body) = converse(&up, post("/model/m/converse", "{}")).await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(
        up.seen.load(Ordering::SeqCst),
        2,
        "the refused request and its retry"
    );
}

#[tokio::test]
async fn a_request_a_goaway_left_out_is_sent_again_on_a_new_connection() {
    // NO_ERROR (a front end recycling the connection), and an error code:
    // either way a stream above the GOAWAY's last one was not processed.
    for code in [0x0, 0xb /* ENHANCE_YOUR_CALM */] {
        let up = h2_upstream(First::GoAwayBeforeIt(code)).await;
        let (status, body) = converse(&up, post("/model/m/converse", "{}")).await;
        assert_eq!((status, body.as_str()), (200, "{}"), "code {code}");
        assert_eq!(up.seen.load(Ordering::SeqCst), 2, "code {code}");
    }
}

#[tokio::test]
async fn a_request_a_goaway_covered_is_not_sent_again() {
    let up = h2_upstream(First::GoAwayCoveringIt).await;
    let (status, body) = converse(&up, post("/model/m/converse", "{}")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("may have processed"), "{body}");
    assert_eq!(up.seen.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_request_refused_twice_is_answered_502_saying_so() {
    let up = h2_upstream(First::RefuseAlways).await;
    let (status, body) = converse(&up, post("/model/m/converse", "{}")).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("refused the request before processing it"),
        "{body}"
    );
    assert!(body.contains("twice"), "{body}");
    assert_eq!(
        up.seen.load(Ordering::SeqCst),
        2,
        "sent once more, not again and again"
    );
}

#[tokio::test]
async fn an_api_key_request_is_sent_once_more_too() {
    let up = h2_upstream(First::RefuseStream).await;
    let mut request = post("/model/m/converse", "{}");
    request.headers_mut().insert(
        "authorization",
        "Bearer ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl".parse().unwrap(),
    );
    let (status, body) = converse(&up, request).await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(up.seen.load(Ordering::SeqCst), 2);
}

/// A TCP relay to `to` whose connections can be frozen: their bytes stop
/// flowing both ways and their sockets stay open, as when a path dies
/// without a FIN or RST (NAT state lost). Connections made later flow.
struct Relay {
    url: String,
    /// Connections numbered below this are frozen.
    frozen_below: Arc<AtomicUsize>,
    opened: Arc<AtomicUsize>,
}

impl Relay {
    fn freeze_all(&self) {
        self.frozen_below
            .store(self.opened.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

async fn relay(to: &str) -> Relay {
    let port = to.rsplit(':').next().unwrap().to_owned();
    let upstream = format!("127.0.0.1:{port}");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen_below = Arc::new(AtomicUsize::new(0));
    let opened = Arc::new(AtomicUsize::new(0));
    let (frozen, count) = (frozen_below.clone(), opened.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let id = count.fetch_add(1, Ordering::SeqCst);
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(cr) as Box<dyn AsyncRead + Send + Unpin>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(sr), Box::new(cw)),
            ] {
                let frozen = frozen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let Ok(n @ 1..) = from.read(&mut buf).await else {
                            let _ = to.shutdown().await;
                            return;
                        };
                        if id < frozen.load(Ordering::SeqCst) {
                            // Dead path: nothing arrives, nothing closes.
                            std::future::pending::<()>().await;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    Relay {
        url: format!("https://127.0.0.1:{}", addr.port()),
        frozen_below,
        opened,
    }
}

#[tokio::test]
async fn a_connection_whose_path_died_is_found_out_and_replaced() {
    // Every request to a host shares one HTTP/2 connection. Its path dying
    // without a FIN or RST held each request until the response-header
    // timeout (15 minutes by default), and the next ones after it: the
    // pool never replaced the connection. PINGs find it out.
    let up = h2_upstream(First::AnswerAll).await;
    let relay = relay(&up.url).await;
    let setup = Setup {
        h2_ping: Some(std::time::Duration::from_millis(200)),
        ..Setup::default()
    };
    let (proxy, _metrics) = proxy_to(&relay.url, Some(&up.ca), signing_cell(), setup);
    let ask = |proxy: Arc<bedrock_broker::proxy::Proxy>| async move {
        let response = proxy.handle(post("/model/m/converse", "{}")).await.unwrap();
        text(response).await
    };
    let (status, _, body) = ask(proxy.clone()).await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    relay.freeze_all();
    // Sent on the dead connection: the PINGs go unanswered, and the
    // request is answered 504 saying so (not the response-header
    // timeout's 504, 30 s here). It may have reached Bedrock, so it is
    // not sent again.
    let (status, _, body) = ask(proxy.clone()).await;
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("keep-alive timed out"), "{body}");
    // The next request goes out on a new connection.
    let (status, _, body) = ask(proxy.clone()).await;
    assert_eq!((status, body.as_str()), (200, "{}"));
    assert_eq!(relay.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_whose_connection_died_is_not_sent_again() {
    // Bedrock got it and may have run it: a second Converse could be a
    // second bill. The client decides, told what happened.
    let up = h2_upstream(First::CloseAfterIt).await;
    let (status, body) = converse(&up, post("/model/m/converse", "{}")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("may have processed"), "{body}");
    assert!(!body.contains("could not reach"), "{body}");
    assert_eq!(up.seen.load(Ordering::SeqCst), 1);
}
