//! Upstreams that misbehave or cannot be reached.
//!
//! Connections closed while idle, refused, answers sent before the request
//! body was read, and a request naming no host.

use super::*;

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
async fn an_http1_answer_head_is_read_to_16_kib() {
    // The read buffer bounds the head: what a queued chunk keeps alive.
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    let fine = pool
        .send(request("http", up.addr, "/head-bytes/15000"))
        .await
        .unwrap();
    assert_eq!(fine.headers()["x-large"].len(), 15_000);
    assert_eq!(read_all(fine).await, "ok");
    match pool
        .send(request("http", up.addr, "/head-bytes/17000"))
        .await
    {
        Err(e @ ProxyError::UpstreamHeadTooLarge(_)) => {
            assert!(e.to_string().contains("over 16 KiB"), "{e}");
        }
        other => panic!("expected a head too large, got {other:?}"),
    }
}

#[tokio::test]
async fn an_answer_head_past_what_is_read_is_named_as_such() {
    // hyper's words, "message head is too large", for a head past the read
    // buffer or over 100 lines: Bedrock did answer, and nothing was lost.
    let up = upstream(None).await;
    let pool = plain_pool(8, Duration::from_secs(60));
    let fine = pool
        .send(request("http", up.addr, "/headers/90"))
        .await
        .unwrap();
    assert_eq!(read_all(fine).await, "ok");
    match pool.send(request("http", up.addr, "/headers/120")).await {
        Err(e @ ProxyError::UpstreamHeadTooLarge(_)) => {
            assert!(e.to_string().contains("over 100 header lines"), "{e}");
        }
        other => panic!("expected a head too large, got {other:?}"),
    }
}
