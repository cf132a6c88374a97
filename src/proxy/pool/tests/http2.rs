//! HTTP/2 by ALPN over TLS.
//!
//! One connection shared by concurrent requests, closed when idle.

use super::*;

fn tls_acceptor_and_ca() -> (tokio_rustls::TlsAcceptor, Vec<u8>) {
    tls_acceptor_and_ca_agreeing(None)
}

/// `only`: the one key-exchange group the server will agree to.
fn tls_acceptor_and_ca_agreeing(
    only: Option<rustls::NamedGroup>,
) -> (tokio_rustls::TlsAcceptor, Vec<u8>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(group) = only {
        provider.kx_groups.retain(|g| g.name() == group);
    }
    let provider = Arc::new(provider);
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
async fn bedrock_gets_a_post_quantum_key_exchange_and_a_classical_one_still_works() {
    // Each server agrees to one group only, so a handshake succeeds only
    // if the pool offers it (the hybrid one, and the X25519 share sent
    // beside it) or falls back to it (P-256, after a retry).
    use rustls::NamedGroup;
    for group in [
        NamedGroup::X25519MLKEM768,
        NamedGroup::X25519,
        NamedGroup::secp256r1,
    ] {
        let (acceptor, ca) = tls_acceptor_and_ca_agreeing(Some(group));
        let up = upstream(Some(acceptor)).await;
        let pool = pool_trusting(Some(&ca), 8, Duration::from_secs(60));
        let response = pool.send(request("https", up.addr, "/")).await;
        let response = response.unwrap_or_else(|e| panic!("{group:?}: {e}"));
        assert_eq!(read_all(response).await, "ok", "{group:?}");
    }
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
async fn answers_nobody_reads_leave_the_shared_connection_to_the_others() {
    // Every request to a host shares one HTTP/2 connection: with hyper's
    // 2 MiB stream and 5 MiB connection windows, three answers whose
    // clients stopped reading took the whole connection's window, and
    // every other answer on it stalled.
    let (up, pool) = tls_upstream_and_pool(Duration::from_secs(60)).await;
    let mut unread = Vec::new();
    for _ in 0..3 {
        let response = pool.send(request("https", up.addr, "/big")).await.unwrap();
        assert_eq!(response.version(), http::Version::HTTP_2);
        unread.push(response);
    }
    let read = pool.send(request("https", up.addr, "/big")).await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(10), read_all(read))
        .await
        .expect("an answer read while three others are not");
    assert_eq!(body.len(), BIG);
    assert_eq!(up.accepted(), 1);
    drop(unread);
}

/// An HTTP/2 upstream (the h2 crate, to reset streams at will) that
/// refuses each connection's first stream with REFUSED_STREAM and answers
/// "ok" to the rest; counts its connections.
async fn refusing_upstream() -> (SocketAddr, Arc<AtomicUsize>, Vec<u8>) {
    let (acceptor, ca) = tls_acceptor_and_ca();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut connection) = h2::server::handshake(tls).await else {
                    return;
                };
                let mut streams = 0;
                while let Some(Ok((_, mut respond))) = connection.accept().await {
                    streams += 1;
                    if streams == 1 {
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        continue;
                    }
                    let Ok(mut body) = respond.send_response(http::Response::new(()), false) else {
                        continue;
                    };
                    let _ = body.send_data(Bytes::from_static(b"ok"), true);
                }
            });
        }
    });
    (addr, accepted, ca)
}

#[tokio::test]
async fn a_refused_stream_leaves_the_shared_connection_in_use() {
    // REFUSED_STREAM concerns one stream (RFC 9113 §8.7): the connection
    // was dropped for it, and the retry, and a pod of requests being
    // refused under load, each dialed one of their own.
    let (addr, accepted, ca) = refusing_upstream().await;
    let pool = pool_trusting(Some(&ca), 8, Duration::from_secs(60));
    match pool.send(request("https", addr, "/")).await {
        Err(ProxyError::UpstreamRefused(_)) => {}
        Err(other) => panic!("expected a refusal, got {other:?}"),
        Ok(response) => panic!("expected a refusal, got {}", response.status()),
    }
    for _ in 0..3 {
        let response = pool.send(request("https", addr, "/")).await.unwrap();
        assert_eq!(read_all(response).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn requests_that_start_together_open_one_http2_connection() {
    // A burst at start (or right after a GOAWAY) found no connection and
    // each request dialed its own: 100 TLS handshakes for 200 requests.
    let (up, pool) = tls_upstream_and_pool(Duration::from_secs(60)).await;
    let sends = (0..20).map(|_| pool.send(request("https", up.addr, "/")));
    for response in futures::future::join_all(sends).await {
        assert_eq!(read_all(response.unwrap()).await, "ok");
    }
    assert_eq!(up.accepted(), 1);
}

#[tokio::test]
async fn an_answer_head_past_16_kib_is_taken_over_http2() {
    // hyper's HTTP/2 client takes 16 KiB of header list (each field
    // counted with 32 bytes more); the proxy takes 64 KiB, as a head it
    // refuses breaks the shared connection's header compression. 600
    // short fields make about 26 KiB.
    let (up, pool) = tls_upstream_and_pool(Duration::from_secs(60)).await;
    let response = pool
        .send(request("https", up.addr, "/headers/600"))
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let lines = response
        .headers()
        .keys()
        .filter(|n| n.as_str().starts_with("x-line-"));
    assert_eq!(lines.count(), 600);
    assert_eq!(read_all(response).await, "ok");
}

#[tokio::test]
async fn requests_waiting_for_a_connection_that_fails_get_its_error_at_once() {
    // An upstream that takes TCP and never answers TLS: the request
    // opening the connection times out, and those waiting for it must not
    // then each try (and wait) in turn, nor dial all at once.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut silent = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            silent.push(tcp);
        }
    });
    let tls = crate::tls::client_config(None).unwrap();
    let dial = Dial::new(Duration::from_millis(300), None);
    let pool = Pool::new(Connector::new(tls, dial, false), 8, Duration::from_secs(60));
    let sends = (0..5).map(|_| pool.send(request("https", addr, "/")));
    for answer in within_5s(futures::future::join_all(sends)).await {
        assert!(
            matches!(answer, Err(ProxyError::UpstreamTimeout(_))),
            "{:?}",
            answer.err()
        );
    }
    // One connection tried for all: none dialed again after it failed.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
