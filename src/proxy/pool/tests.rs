//! The pool against real upstreams on loopback: hyper servers over plain
//! HTTP/1.1 and over TLS with ALPN h2, and a raw socket that closes every
//! connection after one answer.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use http_body::Frame;
use http_body_util::{BodyExt, Either, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::*;

/// Connections a test upstream accepted, and how many are still open.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

struct Upstream {
    addr: SocketAddr,
    counts: Arc<Counts>,
    /// `/hold` answers send their last byte only after a permit is added here.
    release: Arc<Semaphore>,
}

impl Upstream {
    fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }
}

type TestBody = Either<
    Full<Bytes>,
    StreamBody<futures::stream::BoxStream<'static, Result<Frame<Bytes>, Infallible>>>,
>;

/// `/hold` answers "a", then "b" once released; anything else "ok".
fn answer(path: &str, release: Arc<Semaphore>) -> Response<TestBody> {
    if path != "/hold" {
        return Response::new(Either::Left(Full::new(Bytes::from_static(b"ok"))));
    }
    let chunks = futures::stream::unfold(0, move |step| {
        let release = release.clone();
        async move {
            match step {
                0 => Some((Ok(Frame::data(Bytes::from_static(b"a"))), 1)),
                1 => {
                    release.acquire().await.ok()?.forget();
                    Some((Ok(Frame::data(Bytes::from_static(b"b"))), 2))
                }
                _ => None,
            }
        }
    });
    Response::new(Either::Right(StreamBody::new(futures::StreamExt::boxed(
        chunks,
    ))))
}

async fn upstream(tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let release = Arc::new(Semaphore::new(0));
    let (c, r) = (counts.clone(), release.clone());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            c.accepted.fetch_add(1, Ordering::SeqCst);
            c.open.fetch_add(1, Ordering::SeqCst);
            let (c, r, tls) = (c.clone(), r.clone(), tls.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let r = r.clone();
                    async move { Ok::<_, Infallible>(answer(req.uri().path(), r)) }
                });
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = match tls {
                    Some(tls) => match tls.accept(stream).await {
                        Ok(s) => builder.serve_connection(TokioIo::new(s), service).await,
                        Err(_) => Ok(()),
                    },
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                };
                c.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Upstream {
        addr,
        counts,
        release,
    }
}

fn pool_trusting(ca: Option<&[u8]>, max_idle: usize, idle_timeout: Duration) -> Pool {
    let tls = crate::tls::client_config(ca).unwrap();
    Pool::new(
        super::super::upstream::connector(tls, Duration::from_secs(5), false),
        max_idle,
        idle_timeout,
    )
}

fn plain_pool(max_idle: usize, idle_timeout: Duration) -> Pool {
    pool_trusting(None, max_idle, idle_timeout)
}

fn request(scheme: &str, addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::post(format!("{scheme}://{addr}{path}"))
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

async fn read_all(response: Response<PooledBody>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

/// Polls `check` until it holds, for at most five seconds.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn one_connection_serves_requests_one_after_another() {
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    for _ in 0..5 {
        let response = pool.send(request("http", up.addr, "/")).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(read_all(response).await, "ok");
    }
    assert_eq!(up.accepted(), 1);
}

/// Fails, rather than hangs, when `work` does not finish in five seconds.
async fn within_5s<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .expect("did not finish within 5 s")
}

#[tokio::test]
async fn a_connection_is_lent_again_only_once_its_answer_has_ended() {
    within_5s(lent_again_only_once_its_answer_has_ended()).await;
}

async fn lent_again_only_once_its_answer_has_ended() {
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    let held = pool.send(request("http", up.addr, "/hold")).await.unwrap();
    let mut held = held.into_body();
    let first = held.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "a");

    // The first answer is still streaming: its connection is not lent.
    let second = pool.send(request("http", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(second).await, "ok");
    assert_eq!(up.accepted(), 2);

    up.release.add_permits(1);
    let rest = held.collect().await.unwrap().to_bytes();
    assert_eq!(rest, "b");
    for _ in 0..3 {
        let again = pool.send(request("http", up.addr, "/")).await.unwrap();
        assert_eq!(read_all(again).await, "ok");
    }
    assert_eq!(up.accepted(), 2, "no third connection was opened");
}

#[tokio::test]
async fn an_answer_dropped_unread_closes_its_connection_and_the_next_request_still_goes() {
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    let held = pool.send(request("http", up.addr, "/hold")).await.unwrap();
    drop(held);
    eventually("the abandoned connection is closed", || up.open() == 0).await;
    let next = pool.send(request("http", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(next).await, "ok");
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn no_more_than_max_idle_connections_stay_open() {
    let up = upstream(None).await;
    let pool = plain_pool(1, Duration::from_secs(60));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pool.send(request("http", up.addr, "/hold")).await.unwrap());
    }
    assert_eq!(up.accepted(), 3);
    up.release.add_permits(3);
    for response in held {
        assert_eq!(read_all(response).await, "ab");
    }
    eventually("two of three connections are closed", || up.open() == 1).await;
    let again = pool.send(request("http", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(again).await, "ok");
    assert_eq!(up.accepted(), 3, "the one kept open was reused");
}

#[tokio::test]
async fn idle_connections_are_closed_when_they_expire() {
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_millis(50));
    let response = pool.send(request("http", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(response).await, "ok");
    assert_eq!(up.open(), 1);
    // Nothing else is sent: the reaper alone closes it.
    eventually("the idle connection is closed", || up.open() == 0).await;
    let next = pool.send(request("http", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(next).await, "ok");
    assert_eq!(up.accepted(), 2);
}

/// Reads until `marker` has arrived; false if the peer closed first.
async fn read_until(stream: &mut TcpStream, marker: &[u8]) -> bool {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(marker.len()).any(|w| w == marker) {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An upstream that answers once per connection and closes it when told,
/// as a front end closes a connection it has kept idle long enough.
struct Closing {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    close: Arc<Semaphore>,
}

async fn closing_upstream() -> Closing {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let close = Arc::new(Semaphore::new(0));
    let (a, c, close_one) = (accepted.clone(), closed.clone(), close.clone());
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            a.fetch_add(1, Ordering::SeqCst);
            let (c, close_one) = (c.clone(), close_one.clone());
            tokio::spawn(async move {
                // The test's requests carry the body `{}`.
                if !read_until(&mut stream, b"\r\n\r\n{}").await {
                    return;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                let _ = stream.write_all(answer).await;
                if let Ok(permit) = close_one.acquire().await {
                    permit.forget();
                }
                drop(stream);
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    Closing {
        addr,
        accepted,
        closed,
        close,
    }
}

/// Depending on when hyper notices the close, the pool skips the closed
/// connection or gets the request back unsent and sends it on a new one;
/// either way the client sees no error.
#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_replaced_without_an_error() {
    let up = closing_upstream().await;
    let pool = plain_pool(8, Duration::from_secs(60));
    for i in 1..=5 {
        let response = pool.send(request("http", up.addr, "/")).await.unwrap();
        assert_eq!(read_all(response).await, "ok");
        assert_eq!(up.accepted.load(Ordering::SeqCst), i);
        // Back in the pool, idle; now the upstream closes it.
        up.close.add_permits(1);
        eventually("the upstream closed it", || {
            up.closed.load(Ordering::SeqCst) == i
        })
        .await;
    }
}

#[tokio::test]
async fn a_refused_connection_is_an_unreachable_upstream() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let pool = plain_pool(8, Duration::from_secs(60));
    match pool.send(request("http", addr, "/")).await {
        Err(ProxyError::UpstreamUnreachable(detail)) => {
            assert!(detail.contains("onnection refused"), "{detail}")
        }
        other => panic!("expected an unreachable upstream, got {other:?}"),
    }
}

fn tls_acceptor_and_ca() -> (tokio_rustls::TlsAcceptor, Vec<u8>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        cert.pem().into_bytes(),
    )
}

/// An upstream offering HTTP/2 by ALPN, and a pool that trusts it.
async fn tls_upstream_and_pool(idle_timeout: Duration) -> (Upstream, Pool) {
    let (acceptor, ca) = tls_acceptor_and_ca();
    let up = upstream(Some(acceptor)).await;
    (up, pool_trusting(Some(&ca), 8, idle_timeout))
}

#[tokio::test]
async fn over_http2_concurrent_requests_share_one_connection() {
    let (up, pool) = tls_upstream_and_pool(Duration::from_secs(60)).await;
    let first = pool.send(request("https", up.addr, "/hold")).await.unwrap();
    assert_eq!(first.version(), http::Version::HTTP_2);
    let mut more = Vec::new();
    for _ in 0..4 {
        more.push(pool.send(request("https", up.addr, "/")).await.unwrap());
    }
    for response in more {
        assert_eq!(read_all(response).await, "ok");
    }
    up.release.add_permits(1);
    assert_eq!(read_all(first).await, "ab");
    assert_eq!(up.accepted(), 1);
}

/// An upstream that answers as soon as it has a request head, then never
/// reads again: a large request body stays half-written on that connection.
async fn early_answering_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            read_until(&mut stream, b"\r\n\r\n").await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            held.push(stream);
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_connection_still_writing_a_request_body_is_not_waited_for() {
    let (addr, accepted) = early_answering_upstream().await;
    let pool = plain_pool(8, Duration::from_secs(60));
    // Far more than loopback socket buffers hold: the upload cannot finish.
    let big = Request::post(format!("http://{addr}/"))
        .body(Full::new(Bytes::from(vec![b'x'; 64 * 1024 * 1024])))
        .unwrap();
    let answer = within_5s(pool.send(big)).await.unwrap();
    assert_eq!(within_5s(read_all(answer)).await, "ok");
    // Its connection came back with the answer but cannot take another
    // request; the next one goes out on a new connection.
    let next = within_5s(pool.send(request("http", addr, "/")))
        .await
        .unwrap();
    assert_eq!(within_5s(read_all(next)).await, "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_when_it_expires() {
    let (up, pool) = tls_upstream_and_pool(Duration::from_millis(50)).await;
    let response = pool.send(request("https", up.addr, "/")).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(read_all(response).await, "ok");
    eventually("the idle HTTP/2 connection is closed", || up.open() == 0).await;
    let next = pool.send(request("https", up.addr, "/")).await.unwrap();
    assert_eq!(read_all(next).await, "ok");
    assert_eq!(up.accepted(), 2);
}

#[tokio::test]
async fn a_request_naming_no_host_is_refused_without_connecting() {
    let pool = plain_pool(8, Duration::from_secs(60));
    let relative = Request::post("/model/m/converse")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    match pool.send(relative).await {
        Err(ProxyError::UpstreamUnreachable(why)) => {
            assert!(why.contains("names no host"), "{why}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_send_polled_after_its_answer_is_an_error_not_a_panic() {
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    // The second request goes on the connection the first left free: the
    // ready path (`Sent::H1`); the first went by `Sent::Later`.
    for _ in 0..2 {
        let mut sending = std::pin::pin!(pool.send(request("http", up.addr, "/")));
        let response = within_5s(sending.as_mut()).await.unwrap();
        assert_eq!(read_all(response).await, "ok");
        match futures::poll!(sending.as_mut()) {
            Poll::Ready(Err(ProxyError::UpstreamProtocol(why))) => {
                assert!(why.contains("polled after it was answered"), "{why}")
            }
            other => panic!("expected an error, got {:?}", other.map(|r| r.map(|_| ()))),
        }
    }
    assert_eq!(up.accepted(), 1);
}
