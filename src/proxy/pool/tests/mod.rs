//! The pool's tests against real upstreams on loopback, and their fixtures.
//!
//! Here, what every suite uses: a hyper upstream (plain HTTP/1.1, or TLS
//! offering h2 by ALPN) that counts its connections and can hold an answer
//! open, and the helpers to send and wait. The suites: [`reuse`] (HTTP/1.1
//! lending and idling), [`failures`] (upstreams that close, refuse or
//! answer early), [`http2`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
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

use super::super::upstream::Dial;
use super::*;

mod failures;
mod http2;
mod reuse;

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

/// Bytes of a `/big` answer.
const BIG: usize = 4 * 1024 * 1024;

/// `/hold` answers "a", then "b" once released; `/big`, [`BIG`] bytes;
/// `/headers/N`, N header lines; `/head-bytes/N`, a header of N bytes;
/// anything else "ok".
fn answer(path: &str, release: Arc<Semaphore>) -> Response<TestBody> {
    if path == "/big" {
        return Response::new(Either::Left(Full::new(Bytes::from(vec![b'x'; BIG]))));
    }
    if let Some(lines) = path.strip_prefix("/headers/") {
        let mut response = Response::new(Either::Left(Full::new(Bytes::from_static(b"ok"))));
        for i in 0..lines.parse::<usize>().unwrap_or(0) {
            let name = http::HeaderName::try_from(format!("x-line-{i}")).unwrap();
            response
                .headers_mut()
                .insert(name, http::HeaderValue::from_static("v"));
        }
        return response;
    }
    if let Some(bytes) = path.strip_prefix("/head-bytes/") {
        let value = "v".repeat(bytes.parse::<usize>().unwrap_or(0));
        let mut response = Response::new(Either::Left(Full::new(Bytes::from_static(b"ok"))));
        response
            .headers_mut()
            .insert("x-large", http::HeaderValue::from_str(&value).unwrap());
        return response;
    }
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
        Connector::new(tls, Dial::new(Duration::from_secs(5), None), false),
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

/// Fails, rather than hangs, when `work` does not finish in five seconds.
async fn within_5s<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .expect("did not finish within 5 s")
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
