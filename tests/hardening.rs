//! What a neighbour pod, or a confused client inside the pod, can do to a
//! sidecar: each finding of the hardening review reproduced against the
//! real servers, with the limit that stops it.

// Test code: a failed setup is a failed test, and the real clock is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod sidecar_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bedrock_broker::clock::SystemClock;
use bedrock_broker::config::Env;
use bedrock_broker::credentials::CredentialCell;
use bedrock_broker::proxy::Gate;
use bedrock_broker::sidecar::{Sidecar, SidecarConfig};
use bytes::Bytes;
use http_body_util::StreamBody;
use sidecar_support::{
    counting_upstream, credentials, post, proxy, raw_upstream, text, Answer, FakeUpstream, Setup,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// A running sidecar (static keys, in front of `upstream`) with extra
/// variables; returns its proxy and admin addresses.
async fn sidecar(
    upstream: &FakeUpstream,
    extra: &[(&'static str, &'static str)],
) -> (SocketAddr, SocketAddr, CancellationToken) {
    let (proxy, admin, shutdown, _) = running_sidecar(upstream, extra).await;
    (proxy, admin, shutdown)
}

/// [`sidecar`], and the task that ends when it has stopped.
async fn running_sidecar(
    upstream: &FakeUpstream,
    extra: &[(&'static str, &'static str)],
) -> (
    SocketAddr,
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let url: &'static str = upstream.url().leak();
    let mut vars = vec![
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDSTATIC"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url),
        ("BEDROCK_BROKER_LISTEN", "127.0.0.1:0"),
        ("BEDROCK_BROKER_ADMIN_LISTEN", "127.0.0.1:0"),
    ];
    vars.extend_from_slice(extra);
    let config = SidecarConfig::from_args(&Default::default(), &Env::from_pairs(vars)).unwrap();
    let sidecar = Sidecar::bind(config, Arc::new(SystemClock)).await.unwrap();
    let (proxy, admin) = (sidecar.proxy_addr().unwrap(), sidecar.admin_addr().unwrap());
    let shutdown = CancellationToken::new();
    let run = sidecar.run(shutdown.clone());
    let stopped = tokio::spawn(async move {
        run.await.unwrap();
    });
    (proxy, admin, shutdown, stopped)
}

/// Reads until the server closes the connection, within `deadline`;
/// returns what it sent.
async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> Option<Vec<u8>> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(deadline, read)
        .await
        .ok()
        .map(|()| all)
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let upstream = FakeUpstream::start(vec![]).await;
    let (_, admin, stop) = sidecar(
        &upstream,
        &[("BEDROCK_BROKER_ADMIN_HEADER_READ_TIMEOUT", "300ms")],
    )
    .await;
    let mut slow = TcpStream::connect(admin).await.unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(5))
            .await
            .is_some(),
        "the admin server still waits for the headers"
    );
    stop.cancel();
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once_and_the_rest_still_serve() {
    let upstream = FakeUpstream::start(vec![]).await;
    let (_, admin, stop) = sidecar(
        &upstream,
        &[
            ("BEDROCK_BROKER_ADMIN_MAX_CONNECTIONS", "4"),
            ("BEDROCK_BROKER_ADMIN_MAX_CONNECTIONS_PER_PEER", "100"),
        ],
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(admin).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "a slot serves");
        held.push(c);
    }
    let mut extra = TcpStream::connect(admin).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answered = closed_within(&mut extra, Duration::from_secs(5)).await;
    assert_eq!(
        answered,
        Some(Vec::new()),
        "the fifth connection is closed unanswered"
    );
    drop(held);
    let ok = async {
        loop {
            let mut c = TcpStream::connect(admin).await.unwrap();
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            if closed_within(&mut c, Duration::from_secs(1))
                .await
                .is_some_and(|b| b.starts_with(b"HTTP/1.1 200"))
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), ok)
        .await
        .expect("slots are released");
    // The client saw a bare close; the operator sees it counted.
    let refused = admin_sample(
        admin,
        "bedrock_broker_connections_refused_total{listener=\"admin\"}",
    )
    .await;
    assert!(refused >= 1.0, "refused connections counted: {refused}");
    assert_eq!(proxy_connections(admin, "refused").await, 0.0);
    stop.cancel();
}

/// Sends a request (the fake upstream answers it) and reads the answer's
/// status line, leaving the connection kept alive.
async fn answered_on(c: &mut TcpStream) -> Vec<u8> {
    c.write_all(b"GET /not-a-route HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap_or(0);
    buf[..n].to_vec()
}

#[tokio::test]
async fn a_full_proxy_closes_an_idle_kept_alive_connection_for_a_new_one() {
    // An app whose connection pool is larger than --max-connections keeps
    // most of it idle; closing a newcomer while idle connections hold every
    // slot failed its request for nothing (nginx reuses idle keep-alive
    // connections the same way when it runs out).
    let upstream = FakeUpstream::start(vec![]).await;
    let (proxy, admin, stop) = sidecar(&upstream, &[("BEDROCK_BROKER_MAX_CONNECTIONS", "2")]).await;
    let mut oldest = TcpStream::connect(proxy).await.unwrap();
    assert!(answered_on(&mut oldest).await.starts_with(b"HTTP/1.1 200"));
    let mut newer = TcpStream::connect(proxy).await.unwrap();
    assert!(answered_on(&mut newer).await.starts_with(b"HTTP/1.1 200"));
    // Both just answered: their pool may use them again any moment.
    let mut early = TcpStream::connect(proxy).await.unwrap();
    let _ = early
        .write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(
        closed_within(&mut early, Duration::from_secs(5)).await,
        Some(Vec::new()),
        "nothing idle long enough: refused"
    );
    // Reclaiming waits for a connection idle a second: time itself is
    // what is tested, so it is slept, not polled.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(answered_on(&mut newer).await.starts_with(b"HTTP/1.1 200"));
    let mut third = TcpStream::connect(proxy).await.unwrap();
    let answer = answered_on(&mut third).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "the newcomer is served: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(
        closed_within(&mut oldest, Duration::from_secs(5)).await,
        Some(Vec::new()),
        "the longest idle connection made room, closed without a word"
    );
    assert!(answered_on(&mut newer).await.starts_with(b"HTTP/1.1 200"));
    assert_eq!(proxy_connections(admin, "reclaimed").await, 1.0);
    assert_eq!(proxy_connections(admin, "refused").await, 1.0);
    stop.cancel();
}

#[tokio::test]
async fn after_the_signal_the_proxy_serves_while_its_app_is_still_connected() {
    // A classic-mode pod's containers are told to stop at once: the app,
    // finishing its work, still called Bedrock and was refused.
    let upstream = FakeUpstream::start(vec![]).await;
    let (proxy, _, shutdown, stopped) =
        running_sidecar(&upstream, &[("BEDROCK_BROKER_SHUTDOWN_DELAY", "30s")]).await;
    let mut app = TcpStream::connect(proxy).await.unwrap();
    assert!(answered_on(&mut app).await.starts_with(b"HTTP/1.1 200"));
    shutdown.cancel();
    assert!(answered_on(&mut app).await.starts_with(b"HTTP/1.1 200"));
    let mut late = TcpStream::connect(proxy).await.expect("still accepting");
    assert!(answered_on(&mut late).await.starts_with(b"HTTP/1.1 200"));
    // The app exits: its connections close, and the sidecar stops then,
    // not at the end of the delay.
    drop((app, late));
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("stopped once its clients were gone")
        .unwrap();

    // Nobody connected (a native sidecar, stopped after its app): at once.
    let (_, _, shutdown, stopped) =
        running_sidecar(&upstream, &[("BEDROCK_BROKER_SHUTDOWN_DELAY", "30s")]).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .expect("stopped at once")
        .unwrap();
}

#[tokio::test]
async fn a_full_proxy_reclaims_an_idle_http2_connection_too() {
    // An HTTP/2 client's connection is never silent: it pings while idle
    // (gRPC-style clients), answers the server's PINGs, opens its window
    // after an answer. Those reads were taken for the next request on its
    // way, so an idle HTTP/2 connection could never make room.
    let upstream = FakeUpstream::start(vec![]).await;
    let (proxy, admin, stop) = sidecar(&upstream, &[("BEDROCK_BROKER_MAX_CONNECTIONS", "1")]).await;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(proxy).await.unwrap());
    // A client that pings while idle, as gRPC-style clients do.
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(200))
            .keep_alive_while_idle(true)
            .handshake(io)
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let request = http::Request::get("http://localhost/x")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let answer = send.send_request(request).await.unwrap();
    assert_eq!(answer.status(), 200);
    http_body_util::BodyExt::collect(answer.into_body())
        .await
        .unwrap();
    // Reclaiming waits for a connection idle a second: time itself is
    // what is tested, so it is slept, not polled.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut newcomer = TcpStream::connect(proxy).await.unwrap();
    let answer = answered_on(&mut newcomer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "the newcomer is served: {:?}",
        String::from_utf8_lossy(&answer)
    );
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the HTTP/2 connection was told to go, and went")
        .unwrap()
        .unwrap();
    assert_eq!(proxy_connections(admin, "reclaimed").await, 1.0);
    stop.cancel();
}

#[tokio::test]
async fn a_full_proxy_never_closes_a_connection_with_a_request_in_flight() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let upstream = FakeUpstream::start(vec![Answer::Held(gate.clone())]).await;
    let (proxy, admin, stop) = sidecar(&upstream, &[("BEDROCK_BROKER_MAX_CONNECTIONS", "1")]).await;
    let mut busy = TcpStream::connect(proxy).await.unwrap();
    busy.write_all(
        b"POST /model/m/converse HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await
    .unwrap();
    let upstream_saw = async {
        while upstream.seen().is_empty() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), upstream_saw)
        .await
        .expect("the request reaches the upstream");
    let mut newcomer = TcpStream::connect(proxy).await.unwrap();
    let _ = newcomer
        .write_all(b"GET /not-a-route HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    assert_eq!(
        closed_within(&mut newcomer, Duration::from_secs(5)).await,
        Some(Vec::new()),
        "no room: the newcomer is closed"
    );
    gate.notify_one();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), busy.read(&mut buf))
        .await
        .expect("the answer in time")
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "the request in flight is answered"
    );
    assert_eq!(proxy_connections(admin, "reclaimed").await, 0.0);
    assert_eq!(proxy_connections(admin, "refused").await, 1.0);
    stop.cancel();
}

/// `bedrock_broker_connections_{what}_total` of the proxy listener.
async fn proxy_connections(admin: SocketAddr, what: &str) -> f64 {
    let series = format!("bedrock_broker_connections_{what}_total{{listener=\"proxy\"}}");
    admin_sample(admin, &series).await
}

/// One sample of the admin port's `/metrics`, by its series name and labels.
async fn admin_sample(admin: SocketAddr, series: &str) -> f64 {
    let mut c = TcpStream::connect(admin).await.unwrap();
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut c, Duration::from_secs(5)).await.unwrap();
    let text = String::from_utf8(answer).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

#[tokio::test]
async fn one_peer_cannot_take_every_admin_slot() {
    let upstream = FakeUpstream::start(vec![]).await;
    let (_, admin, stop) = sidecar(
        &upstream,
        &[("BEDROCK_BROKER_ADMIN_MAX_CONNECTIONS_PER_PEER", "2")],
    )
    .await;
    let _a = TcpStream::connect(admin).await.unwrap();
    let _b = TcpStream::connect(admin).await.unwrap();
    // Let the server register both before the third arrives.
    let mut third = None;
    for _ in 0..50 {
        let mut c = TcpStream::connect(admin).await.unwrap();
        let _ = c
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        if closed_within(&mut c, Duration::from_millis(500)).await == Some(Vec::new()) {
            third = Some(());
            break;
        }
    }
    assert!(
        third.is_some(),
        "a third connection from the same peer is refused"
    );
    stop.cancel();
}

/// A TCP connection to `addr` from another loopback address, as another
/// pod's connections come from another IP.
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Opens a connection from `source` that sends half a request head and
/// stops, as a slowloris does.
async fn half_open_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let mut c = connect_from(source, addr).await;
    let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    c
}

/// The kubelet's liveness probe: its whole answer, once the sidecar closes
/// the connection (within 5 s).
async fn probe(admin: SocketAddr) -> Option<Vec<u8>> {
    let mut probe = TcpStream::connect(admin).await.unwrap();
    probe
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    closed_within(&mut probe, Duration::from_secs(5)).await
}

/// Whether the kubelet's probe got its `200` within 5 s.
async fn probe_passes(admin: SocketAddr) -> bool {
    probe(admin)
        .await
        .is_some_and(|a| a.starts_with(b"HTTP/1.1 200"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_filling_the_admin_port_cannot_starve_the_kubelets_probes() {
    let upstream = FakeUpstream::start(vec![]).await;
    // The defaults: 32 admin connections, 8 per peer address.
    let (_, admin, stop) = sidecar(&upstream, &[]).await;
    let pods: Vec<[u8; 4]> = (2..=5).map(|n| [127, 0, 0, n]).collect();
    let mut held = Vec::new();
    for pod in &pods {
        for _ in 0..8 {
            held.push(half_open_from(*pod, admin).await);
        }
    }
    for round in 0..3 {
        // The neighbours take back any slot they lost (a pod at its share
        // is turned away; one below it gets in and fills the port again).
        for pod in &pods {
            held.push(half_open_from(*pod, admin).await);
        }
        let answer = probe(admin).await.expect("the probe's connection ends");
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "probe {round} answered: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    drop(held);
    stop.cancel();
}

/// Opens a connection from `source` that asks for many answers and never
/// reads them, so the sidecar's writes stall with a request in flight.
async fn never_reading_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let mut c = connect_from(source, addr).await;
    let asks = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(20_000);
    // The write itself stalls once both sides' buffers are full.
    let _ = tokio::time::timeout(Duration::from_millis(300), c.write_all(&asks)).await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_that_never_read_cannot_starve_the_kubelets_probes() {
    let upstream = FakeUpstream::start(vec![]).await;
    // A short idle timeout, so the neighbours' stalled connections reach the
    // closing phase (where they once stayed for good) within the test.
    let (_, admin, stop) =
        sidecar(&upstream, &[("BEDROCK_BROKER_ADMIN_IDLE_TIMEOUT", "500ms")]).await;
    let mut held = Vec::new();
    for pod in 2..=5u8 {
        for _ in 0..8 {
            held.push(never_reading_from([127, 0, 0, pod], admin).await);
        }
    }
    // Probes every 200 ms for three seconds, the neighbours refilling what
    // they lose before each: every probe is answered, also once their
    // connections have idled out into a close that never completes.
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let mut round = 0;
    while std::time::Instant::now() < until {
        for pod in 2..=5u8 {
            held.push(never_reading_from([127, 0, 0, pod], admin).await);
        }
        assert!(probe_passes(admin).await, "probe {round} refused");
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(held);
    stop.cancel();
}

/// Opens a connection from `source` that keeps asking for `/metrics`,
/// pipelined, and reads every answer: a request is always in flight and
/// nothing ever stalls, so the connection is never idle. Ends when the
/// sidecar closes it.
async fn hammering_from(source: [u8; 4], addr: SocketAddr) -> tokio::task::JoinHandle<()> {
    let (mut reader, mut writer) = connect_from(source, addr).await.into_split();
    tokio::spawn(async move {
        let asks = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(4);
        let mut buf = vec![0u8; 64 * 1024];
        tokio::select! {
            () = async { while writer.write_all(&asks).await.is_ok() {} } => {}
            () = async { while reader.read(&mut buf).await.is_ok_and(|n| n > 0) {} } => {}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_hammering_the_admin_port_cannot_starve_the_kubelets_probes() {
    let upstream = FakeUpstream::start(vec![]).await;
    // The defaults: 32 admin connections, 8 per peer address.
    let (_, admin, stop) = sidecar(&upstream, &[]).await;
    let mut hammers = Vec::new();
    for pod in 2..=5u8 {
        for _ in 0..8 {
            hammers.push(hammering_from([127, 0, 0, pod], admin).await);
        }
    }
    for round in 0..5 {
        // The neighbours try to take back any slot they lost.
        for pod in 2..=5u8 {
            hammers.push(hammering_from([127, 0, 0, pod], admin).await);
        }
        assert!(probe_passes(admin).await, "probe {round} refused");
    }
    for hammer in hammers {
        hammer.abort();
    }
    stop.cancel();
}

/// Opens a connection from `source` that asks once, reads the whole
/// answer, then starts the next request's head and stops: a request on its
/// way on a kept-alive connection, never idle, nothing in flight.
async fn dripping_a_next_head_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let mut c = connect_from(source, addr).await;
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok\n") {
        let n = c.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    c.write_all(b"GET /hea").await.unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbours_dripping_their_next_request_cannot_starve_the_kubelets_probes() {
    let upstream = FakeUpstream::start(vec![]).await;
    // The defaults: 32 admin connections, 8 per peer address. 32 pods of
    // one connection each: none holds two more than the kubelet's none,
    // and none is quiet (a head is on its way).
    let (_, admin, stop) = sidecar(&upstream, &[]).await;
    let mut held = Vec::new();
    for pod in 10..42u8 {
        held.push(dripping_a_next_head_from([127, 0, 0, pod], admin).await);
    }
    // A head the API server or a scrape sends arrives whole within
    // milliseconds; one still arriving after a second is a neighbour's.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for round in 0..3 {
        let answer = probe(admin).await.expect("the probe's connection ends");
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "probe {round} answered: {:?}",
            String::from_utf8_lossy(&answer)
        );
        // The neighbours fill the port again (from another pod: which one
        // lost its connection is the sidecar's choice).
        held.push(dripping_a_next_head_from([127, 0, 0, 50 + round], admin).await);
    }
    drop(held);
    stop.cancel();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let upstream = FakeUpstream::start(vec![]).await;
    let (_, admin, stop) =
        sidecar(&upstream, &[("BEDROCK_BROKER_ADMIN_IDLE_TIMEOUT", "300ms")]).await;
    let mut c = TcpStream::connect(admin).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = closed_within(&mut c, Duration::from_secs(2))
        .await
        .expect("closed when idle");
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    stop.cancel();
}

/// An HTTP/2 connection without TLS: the preface, empty SETTINGS, then
/// `frames`.
async fn h2c(addr: SocketAddr, frames: &[u8]) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(frames);
    c.write_all(&hello).await.unwrap();
    c
}

#[tokio::test]
async fn an_http2_connection_with_only_pings_on_it_is_closed_when_idle() {
    // HTTP/2 keeps connections alive with PINGs (hyper sends its own every
    // 30 s, and any client library answers them): counted as traffic, they
    // kept connections without a request open for good, and 256 of them
    // held every slot of the proxy.
    let upstream = FakeUpstream::start(vec![]).await;
    let (proxy, _, stop) = sidecar(&upstream, &[("BEDROCK_BROKER_IDLE_TIMEOUT", "1s")]).await;
    let mut c = h2c(proxy, &[]).await;
    // As a client library does: PINGs of its own every 100 ms, and every
    // PING of the server's answered (the close begins with one).
    let client = async {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        let mut head = [0u8; 9];
        let mut n = 0u8;
        loop {
            tokio::select! {
                _ = ticks.tick() => {
                    n = n.wrapping_add(1);
                    let ping = [0, 0, 8, 0x6, 0, 0, 0, 0, 0, n, 0, 0, 0, 0, 0, 0, 0];
                    if c.write_all(&ping).await.is_err() {
                        return;
                    }
                }
                read = c.read_exact(&mut head) => {
                    if read.is_err() {
                        return;
                    }
                    let len = usize::from(head[0]) << 16
                        | usize::from(head[1]) << 8
                        | usize::from(head[2]);
                    let mut payload = vec![0u8; len];
                    if c.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    if head[3] == 0x6 && head[4] & 0x1 == 0 {
                        let mut ack = vec![0, 0, 8, 0x6, 0x1, 0, 0, 0, 0];
                        ack.extend_from_slice(&payload);
                        if c.write_all(&ack).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(5), client).await;
    assert!(closed.is_ok(), "still open after 5 s of PINGs only");
    stop.cancel();
}

#[tokio::test]
async fn an_http2_header_block_sent_a_piece_at_a_time_is_cut_off() {
    // `--header-read-timeout` is HTTP/1's: hyper has no header timer for
    // HTTP/2. A header block sent a frame at a time is bounded by the
    // frames it may take instead (h2 allows five CONTINUATIONs at the
    // proxy's header size), with the default timeouts. The client answers
    // none of the server's PINGs: in the middle of a header block it may
    // send nothing else.
    let upstream = FakeUpstream::start(vec![]).await;
    let (proxy, _, stop) = sidecar(&upstream, &[]).await;
    // HEADERS on stream 1 without END_HEADERS: GET http /.
    let c = h2c(proxy, &[0, 0, 3, 0x1, 0, 0, 0, 0, 1, 0x82, 0x86, 0x84]).await;
    let (mut read, mut write) = c.into_split();
    let drip = async move {
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        loop {
            ticks.tick().await;
            // CONTINUATION on stream 1, one literal header `x-a: v`.
            let piece = [0, 0, 7, 0x9, 0, 0, 0, 0, 1, 0, 3, b'x', b'-', b'a', 1, b'v'];
            if write.write_all(&piece).await.is_err() {
                return;
            }
        }
    };
    let drain = async move {
        let mut buf = [0u8; 4096];
        while matches!(read.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! { () = drip => {}, () = drain => {} }
    })
    .await;
    assert!(closed.is_ok(), "still open after 10 s of header pieces");
    stop.cancel();
}

#[tokio::test]
async fn a_head_over_the_limit_is_refused_without_being_buffered() {
    let upstream = FakeUpstream::start(vec![]).await;
    let (_, admin, stop) = sidecar(&upstream, &[]).await;
    let mut c = TcpStream::connect(admin).await.unwrap();
    let mut head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let _ = c.write_all(&head).await;
    let answer = closed_within(&mut c, Duration::from_secs(5))
        .await
        .expect("closed");
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    stop.cancel();
}

#[tokio::test]
async fn the_proxy_answers_only_its_own_pod() {
    let upstream = FakeUpstream::start(vec![]).await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let (proxy, _) = proxy(&upstream, cell, Setup::default());
    let mut rebound = post("/model/m/converse", "{}");
    rebound
        .headers_mut()
        .insert("host", "rebind.attacker.example:9787".parse().unwrap());
    let (status, headers, _) = text(proxy.clone().handle(rebound).await.unwrap()).await;
    assert_eq!(status, 403);
    assert_eq!(headers["x-bedrock-broker-error"], "host_not_allowed");
    assert!(
        upstream.seen().is_empty(),
        "nothing was signed for the rebound host"
    );
    let (status, _, _) = text(proxy.handle(post("/model/m/converse", "{}")).await.unwrap()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_web_page_in_the_pods_browser_cannot_spend_bedrock() {
    // An agent's headless browser opens a hostile page; the page POSTs a
    // prompt to 127.0.0.1 as text/plain, which needs no CORS preflight.
    // It cannot read the answer, but Bedrock runs, and bills, its prompt.
    // Browsers name the page's origin; SDKs and curl send no Origin.
    let upstream = FakeUpstream::start(vec![]).await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let (proxy, _) = proxy(&upstream, cell, Setup::default());
    for origin in [
        "https://attacker.example",
        "null",
        "http://127.0.0.1.attacker.example",
    ] {
        let mut page = post("/model/m/converse", "{}");
        page.headers_mut().insert("origin", origin.parse().unwrap());
        page.headers_mut()
            .insert("content-type", "text/plain;charset=UTF-8".parse().unwrap());
        let (status, headers, body) = text(proxy.clone().handle(page).await.unwrap()).await;
        assert_eq!(status, 403, "{origin}");
        assert_eq!(headers["x-bedrock-broker-error"], "host_not_allowed");
        assert!(body.contains("Origin"), "{body}");
    }
    assert!(upstream.seen().is_empty(), "nothing was signed for a page");
    // The app's own page, served from the pod, may call it.
    for origin in [
        "http://localhost:3000",
        "http://[::1]:8080",
        "http://127.0.0.1",
    ] {
        let mut own = post("/model/m/converse", "{}");
        own.headers_mut().insert("origin", origin.parse().unwrap());
        let (status, _, _) = text(proxy.clone().handle(own).await.unwrap()).await;
        assert_eq!(status, 200, "{origin}");
    }
}

#[tokio::test]
async fn the_proxy_token_is_checked_and_never_forwarded() {
    let upstream = FakeUpstream::start(vec![]).await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let mut setup = Setup::default();
    setup.gate.token = Some(bedrock_broker::secret::Secret::new(
        "0123456789abcdef-token",
    ));
    let (proxy, _) = proxy(&upstream, cell, setup);
    let (status, headers, _) = text(
        proxy
            .clone()
            .handle(post("/model/m/converse", "{}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, &headers["x-bedrock-broker-error"]),
        (
            401,
            &"proxy_token_required".parse::<http::HeaderValue>().unwrap()
        )
    );
    let mut with = post("/model/m/converse", "{}");
    with.headers_mut().insert(
        "x-bedrock-broker-token",
        "0123456789abcdef-token".parse().unwrap(),
    );
    assert_eq!(text(proxy.handle(with).await.unwrap()).await.0, 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].headers.get("x-bedrock-broker-token").is_none());
}

#[tokio::test]
async fn bodies_beyond_the_memory_budget_wait_then_get_503_with_retry_after() {
    let gate_open = Arc::new(tokio::sync::Notify::new());
    let upstream = FakeUpstream::start(vec![Answer::Held(gate_open.clone())]).await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let mut setup = Setup::default();
    setup.gate.body_budget = 20;
    setup.gate.body_budget_wait = Duration::from_millis(100);
    let (proxy, _) = proxy(&upstream, cell, setup);
    // Holds 15 bytes of the budget until its answer comes.
    let first = tokio::spawn(
        proxy
            .clone()
            .handle(post("/model/m/converse", "{\"a\":\"0123456\"}")),
    );
    // Wait until it reached the upstream (its body is then reserved).
    for _ in 0..200 {
        if !upstream.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(upstream.seen().len(), 1);
    let (status, headers, _) = text(
        proxy
            .clone()
            .handle(post("/model/m/converse", "{\"b\":\"0123456\"}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-bedrock-broker-error"], "overloaded");
    assert_eq!(headers["retry-after"], "1");
    gate_open.notify_one();
    assert_eq!(text(first.await.unwrap().unwrap()).await.0, 200);
    let (status, _, _) = text(
        proxy
            .handle(post("/model/m/converse", "{\"c\":\"0123456\"}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "the budget is returned when a request ends");
}

#[tokio::test]
async fn requests_beyond_max_requests_get_503_at_once() {
    let gate_open = Arc::new(tokio::sync::Notify::new());
    let upstream = FakeUpstream::start(vec![Answer::Held(gate_open.clone())]).await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let mut setup = Setup::default();
    setup.gate.max_requests = 1;
    let (proxy, _) = proxy(&upstream, cell, setup);
    let first = tokio::spawn(proxy.clone().handle(post("/model/m/converse", "{}")));
    for _ in 0..200 {
        if !upstream.seen().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, headers, _) = text(
        proxy
            .clone()
            .handle(post("/model/m/converse", "{}"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, headers["x-bedrock-broker-error"].to_str().unwrap()),
        (503, "overloaded")
    );
    gate_open.notify_one();
    assert_eq!(text(first.await.unwrap().unwrap()).await.0, 200);
}

#[tokio::test]
async fn a_stalled_upload_gets_408() {
    let upstream = FakeUpstream::start(vec![]).await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let mut setup = Setup::default();
    setup.gate = Gate {
        body_read_timeout: Duration::from_millis(200),
        ..setup.gate
    };
    let (proxy, _) = proxy(&upstream, cell, setup);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    tx.send(Ok(http_body::Frame::data(Bytes::from_static(
        b"{\"partial\":",
    ))))
    .await
    .unwrap();
    let body = StreamBody::new(tokio_stream_from(rx));
    let request = http::Request::builder()
        .method("POST")
        .uri("/model/m/converse")
        .header("host", "127.0.0.1")
        .body(body)
        .unwrap();
    let (status, headers, _) = text(proxy.handle(request).await.unwrap()).await;
    assert_eq!(
        (status, headers["x-bedrock-broker-error"].to_str().unwrap()),
        (408, "body_read_timeout")
    );
    assert!(upstream.seen().is_empty());
    drop(tx);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Unpin {
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

#[tokio::test]
async fn a_stale_content_length_next_to_chunked_is_dropped() {
    let upstream = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\nb\r\n{\"ok\":true}\r\n0\r\n\r\n",
    )
    .await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let (proxy, _) = proxy(&upstream, cell, Setup::default());
    let answer = proxy.handle(post("/model/m/converse", "{}")).await.unwrap();
    assert!(
        answer.headers().get("content-length").is_none(),
        "{:?}",
        answer.headers()
    );
    let (status, _, body) = tokio::time::timeout(Duration::from_secs(5), text(answer))
        .await
        .expect("the body ends");
    assert_eq!((status, body.as_str()), (200, "{\"ok\":true}"));
}

#[tokio::test]
async fn answers_without_a_body_carry_no_length_and_our_version() {
    // A 204 (or 304) with a Content-Length went to the client as is: a
    // 204 must not have one (RFC 9110 §8.6), and hyper's server panics in
    // a debug build on a length its empty body contradicts. The upstream's
    // HTTP/1.0 went back as the client's version too (§6.2: each hop
    // sends its own).
    let answers: [(&'static [u8], u16); 3] = [
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", 204),
        (
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\n\r\n",
            304,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}", 200),
    ];
    for (raw, want) in answers {
        let upstream = raw_upstream(raw).await;
        let cell = Arc::new(CredentialCell::new());
        cell.store(credentials("AKID"));
        let (proxy, _) = proxy(&upstream, cell, Setup::default());
        let answer = proxy.handle(post("/model/m/converse", "{}")).await.unwrap();
        assert_eq!(answer.version(), http::Version::HTTP_11, "{want}");
        let length = answer.headers().get("content-length").cloned();
        let (status, _, body) = text(answer).await;
        assert_eq!(status, want);
        match want {
            200 => assert_eq!((length, body.as_str()), (Some("2".parse().unwrap()), "{}")),
            _ => assert_eq!((length, body.as_str()), (None, ""), "{want}"),
        }
    }
}

#[tokio::test]
async fn an_upstream_protocol_switch_is_not_forwarded() {
    let upstream = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    )
    .await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let (proxy, _) = proxy(&upstream, cell, Setup::default());
    let answer = proxy.handle(post("/model/m/converse", "{}")).await.unwrap();
    let (status, headers, _) = text(answer).await;
    assert_eq!(
        (status, headers["x-bedrock-broker-error"].to_str().unwrap()),
        (502, "upstream_protocol_error")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_leaves_no_more_idle_upstream_connections_than_the_pool_keeps() {
    let (upstream, open) = counting_upstream(Duration::from_millis(300)).await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let (proxy, _) = proxy(&upstream, cell, Setup::default());
    let burst: Vec<_> = (0..100)
        .map(|_| tokio::spawn(proxy.clone().handle(post("/model/m/converse", "{}"))))
        .collect();
    for request in burst {
        assert_eq!(text(request.await.unwrap().unwrap()).await.0, 200);
    }
    let peak_was_a_burst = open.peak.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        peak_was_a_burst > 32,
        "the burst opened {peak_was_a_burst} connections"
    );
    let settled = async {
        while open.open.load(std::sync::atomic::Ordering::SeqCst) > 32 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), settled)
        .await
        .expect("idle upstream connections beyond --upstream-max-idle are closed");
}

#[tokio::test]
async fn an_idle_http2_connection_is_told_goaway_before_it_closes() {
    // A client reusing a connection the proxy simply dropped gets a broken
    // pipe on a request it cannot tell was unprocessed; a GOAWAY says no
    // new stream will be taken, so it opens another connection instead.
    let upstream = FakeUpstream::start(vec![]).await;
    let (proxy, _, stop) = sidecar(&upstream, &[("BEDROCK_BROKER_IDLE_TIMEOUT", "1s")]).await;
    let mut c = h2c(proxy, &[]).await;
    let mut frames = Vec::new();
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if c.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if c.read_exact(&mut payload).await.is_err() {
                return;
            }
            frames.push(head[3]);
            // Answer the server's PINGs, as any client library does.
            if head[3] == 0x6 && head[4] & 0x1 == 0 {
                let mut ack = vec![0, 0, 8, 0x6, 0x1, 0, 0, 0, 0];
                ack.extend_from_slice(&payload);
                let _ = c.write_all(&ack).await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("closed when idle");
    assert!(frames.contains(&0x7), "frames before the close: {frames:?}");
    stop.cancel();
}

/// An answer the client has not read keeps its `--max-requests` slot
/// (security.md), an error too: read whole to blank the session token,
/// it gave the slot back before the client read a byte.
#[tokio::test]
async fn an_unread_answer_keeps_its_slot_error_or_not() {
    for status in [200u16, 500] {
        let upstream = FakeUpstream::start(vec![Answer::Whole(
            status,
            vec![("content-type", "application/json")],
            r#"{"message":"x"}"#,
        )])
        .await;
        let cell = Arc::new(CredentialCell::new());
        cell.store(credentials("AKID"));
        let mut setup = Setup::default();
        setup.gate.max_requests = 1;
        let (proxy, _) = proxy(&upstream, cell, setup);
        // The first answer is kept, its body not read.
        let first = proxy
            .clone()
            .handle(post("/model/m/converse", "{}"))
            .await
            .unwrap();
        assert_eq!(first.status().as_u16(), status);
        let (second, _, _) = text(
            proxy
                .clone()
                .handle(post("/model/m/converse", "{}"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            second, 503,
            "first answered {status}: its slot was given back unread"
        );
        drop(first);
    }
}
