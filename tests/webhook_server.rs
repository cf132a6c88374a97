//! The webhook served over real TLS on loopback: AdmissionReview POSTs, the
//! admin port, and certificate rotation on disk picked up while running.

// Test code: a failed setup is a failed test, and the real clock is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod webhook_support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bedrock_broker::cli::WebhookArgs;
use bedrock_broker::config::Env;
use bedrock_broker::webhook::{WebhookConfig, WebhookServer};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::NamedGroup;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use webhook_support::{cluster, fixtures, patch_of, state};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn ca() -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "bedrock-broker test CA");
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("CA cert");
    Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(params, key),
    }
}

/// A serving certificate for localhost/127.0.0.1: (cert PEM, key PEM, cert DER).
fn leaf(ca: &Ca, name: &str) -> (String, String, CertificateDer<'static>) {
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("params");
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
    (cert.pem(), key.serialize_pem(), cert.der().clone())
}

/// Replaces a file atomically, as the kubelet publishes a rotated Secret.
fn publish(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn client_config(ca: &Ca) -> Arc<rustls::ClientConfig> {
    client_config_offering(ca, None)
}

/// `only`: the one key-exchange group the client offers.
fn client_config_offering(ca: &Ca, only: Option<NamedGroup>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("trust the CA");
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if let Some(group) = only {
        provider.kx_groups.retain(|g| g.name() == group);
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    // A resumed session shows the certificate of the first handshake; every
    // connection here must show the one the server serves now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// One HTTPS request; returns the status, the body and the server's certificate.
async fn https(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Bytes, CertificateDer<'static>), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no peer certificate")?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes, peer))
}

/// One plain HTTP GET to the admin port.
async fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let tcp = TcpStream::connect(addr).await.expect("connect admin");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .uri(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("response");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Polls `check` until it is true or `deadline` passes.
async fn eventually<F, Fut>(what: &str, deadline: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while Instant::now() < end {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

fn config(dir: &Path) -> WebhookConfig {
    let args = WebhookArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        tls_cert_file: Some(dir.join("tls.crt").display().to_string()),
        tls_key_file: Some(dir.join("tls.key").display().to_string()),
        shutdown_grace_period: Some("2s".into()),
        // Stopping is immediate here; the delay has its own test (e2e).
        shutdown_delay: Some("0s".into()),
        ..Default::default()
    };
    let mut config = WebhookConfig::from_args(&args, &Env::default()).expect("valid config");
    // Faster than a user may set it (at least 1s), so rotations show at once.
    config.tls.reload_interval = Duration::from_millis(50);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_reviews_over_tls_and_picks_up_rotated_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (cert1, key1, der1) = leaf(&ca, "webhook-1");
    publish(&dir.path().join("tls.crt"), &cert1);
    publish(&dir.path().join("tls.key"), &key1);

    let server = WebhookServer::bind(&config(dir.path()))
        .await
        .expect("binds");
    let addr = server.local_addr().expect("addr");
    let admin = server.admin_addr().expect("admin addr");
    let shutdown = CancellationToken::new();
    let st = state(cluster());
    let metrics = st.metrics.clone();
    let running = tokio::spawn(server.run(st, shutdown.clone()));
    let tls = client_config(&ca);

    // A real review: answered with the uid and a patch, by certificate 1.
    let body = std::fs::read(fixtures().join("plain.json")).expect("fixture");
    let request: Value = serde_json::from_slice(&body).expect("json");
    let (status, answer, peer) = https(&tls, addr, "POST", "/mutate", body.clone())
        .await
        .expect("request");
    assert_eq!(status, 200);
    assert_eq!(peer, der1);
    let answer: Value = serde_json::from_slice(&answer).expect("json answer");
    assert_eq!(answer["response"]["uid"], request["request"]["uid"]);
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    assert!(patch_of(&answer["response"]).is_some());

    // Garbage is refused as a bad request.
    let (status, _, _) = https(&tls, addr, "POST", "/mutate", b"{".to_vec())
        .await
        .expect("request");
    assert_eq!(status, 400);

    // The admin port.
    assert_eq!(admin_get(admin, "/healthz").await.0, 200);
    assert_eq!(admin_get(admin, "/readyz").await.0, 200);
    let (_, text) = admin_get(admin, "/metrics").await;
    assert!(
        text.contains("bedrock_broker_webhook_admissions_total{result=\"injected\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("bedrock_broker_webhook_admissions_total{result=\"invalid\"} 1"),
        "{text}"
    );

    // cert-manager rotates the Secret: the running server serves the new pair.
    let (cert2, key2, der2) = leaf(&ca, "webhook-2");
    publish(&dir.path().join("tls.key"), &key2);
    publish(&dir.path().join("tls.crt"), &cert2);
    eventually("the rotated certificate", Duration::from_secs(10), || {
        let (tls, body, der2) = (tls.clone(), body.clone(), der2.clone());
        async move {
            matches!(https(&tls, addr, "POST", "/mutate", body).await, Ok((200, _, peer)) if peer == der2)
        }
    })
    .await;
    assert!(metrics.tls_reloads.with_label_values(&["success"]).get() >= 1);

    // A broken file is not swapped in: the server keeps serving the last good pair.
    publish(&dir.path().join("tls.crt"), "not a certificate");
    eventually(
        "the failed reload to be counted",
        Duration::from_secs(10),
        || {
            let m = metrics.clone();
            async move { m.tls_reloads.with_label_values(&["failure"]).get() >= 1 }
        },
    )
    .await;
    let (status, _, peer) = https(&tls, addr, "POST", "/mutate", body)
        .await
        .expect("still serving");
    assert_eq!((status, peer), (200, der2));

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("stops within the grace period")
        .expect("task")
        .expect("clean stop");
}

#[tokio::test]
async fn start_up_fails_clearly_without_a_usable_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = WebhookServer::bind(&config(dir.path()))
        .await
        .err()
        .expect("refuses to start")
        .to_string();
    assert!(err.contains("tls.crt"), "{err}");

    let ca = ca();
    let (cert, _, _) = leaf(&ca, "a");
    let (_, other_key, _) = leaf(&ca, "b");
    publish(&dir.path().join("tls.crt"), &cert);
    publish(&dir.path().join("tls.key"), &other_key);
    let err = WebhookServer::bind(&config(dir.path()))
        .await
        .err()
        .expect("refuses a mismatched pair")
        .to_string();
    assert!(err.contains("does not belong"), "{err}");
}

/// The key exchange a TLS handshake with `addr` agreed on.
async fn key_exchange(tls: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> Option<NamedGroup> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .expect("handshake");
    stream
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| g.name())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_server_offering_ml_kem_gets_it_and_an_older_one_x25519() {
    // API servers built with Go 1.24 or later offer the hybrid group
    // first, older ones X25519, and some clients only P-256. Each client
    // here offers one group, so the handshake shows what the webhook
    // agrees to, and the review is still answered over it.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |_| {}).await;
    let plain = std::fs::read(fixtures().join("plain.json")).expect("fixture");
    for group in [
        NamedGroup::X25519MLKEM768,
        NamedGroup::X25519,
        NamedGroup::secp256r1,
    ] {
        let tls = client_config_offering(&ca, Some(group));
        assert_eq!(key_exchange(&tls, addr).await, Some(group));
        let (status, _, _) = https(&tls, addr, "POST", "/mutate", plain.clone())
            .await
            .expect("review");
        assert_eq!(status, 200, "{group:?}");
    }
    // A client offering every group the provider has gets the hybrid one.
    let all = client_config_offering(&ca, None);
    assert_eq!(
        key_exchange(&all, addr).await,
        Some(NamedGroup::X25519MLKEM768)
    );
    stop.cancel();
}

/// A webhook running with default settings, a client that trusts it, and
/// the `plain` fixture's review to build on (the directory holds the
/// webhook's certificate while it runs).
async fn plain_review_to_a_webhook() -> (
    SocketAddr,
    CancellationToken,
    Arc<rustls::ClientConfig>,
    Value,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |_| {}).await;
    let tls = client_config(&ca);
    let plain = std::fs::read(fixtures().join("plain.json")).expect("fixture");
    let review = serde_json::from_slice(&plain).expect("json");
    (addr, stop, tls, review, dir)
}

/// A running webhook with `tweak` applied to its flags.
async fn running(
    dir: &Path,
    ca: &Ca,
    tweak: impl FnOnce(&mut WebhookArgs),
) -> (SocketAddr, CancellationToken) {
    let (addr, _, shutdown) = running_with_metrics(dir, ca, tweak).await;
    (addr, shutdown)
}

/// [`running`], with the webhook's metrics.
async fn running_with_metrics(
    dir: &Path,
    ca: &Ca,
    tweak: impl FnOnce(&mut WebhookArgs),
) -> (
    SocketAddr,
    bedrock_broker::metrics::WebhookMetrics,
    CancellationToken,
) {
    let (addr, metrics, _, shutdown) = running_with_intake(dir, ca, tweak).await;
    (addr, metrics, shutdown)
}

/// [`running_with_metrics`], with the webhook's review intake (to see what
/// of its budget is held).
async fn running_with_intake(
    dir: &Path,
    ca: &Ca,
    tweak: impl FnOnce(&mut WebhookArgs),
) -> (
    SocketAddr,
    bedrock_broker::metrics::WebhookMetrics,
    bedrock_broker::webhook::Intake,
    CancellationToken,
) {
    running_with_lookup(dir, ca, cluster(), tweak).await
}

/// [`running_with_intake`], reading the cluster through `lookup`.
async fn running_with_lookup<L: bedrock_broker::webhook::ClusterLookup>(
    dir: &Path,
    ca: &Ca,
    lookup: L,
    tweak: impl FnOnce(&mut WebhookArgs),
) -> (
    SocketAddr,
    bedrock_broker::metrics::WebhookMetrics,
    bedrock_broker::webhook::Intake,
    CancellationToken,
) {
    let (cert, key, _) = leaf(ca, "webhook");
    publish(&dir.join("tls.crt"), &cert);
    publish(&dir.join("tls.key"), &key);
    let mut args = WebhookArgs {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        tls_cert_file: Some(dir.join("tls.crt").display().to_string()),
        tls_key_file: Some(dir.join("tls.key").display().to_string()),
        ..Default::default()
    };
    tweak(&mut args);
    let config = WebhookConfig::from_args(&args, &Env::default()).expect("valid config");
    let mut state = state(lookup);
    state.intake = bedrock_broker::webhook::Intake::new(config.review_timing, config.review_budget)
        .metered(&state.metrics);
    let server = WebhookServer::bind(&config).await.expect("binds");
    let addr = server.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let (metrics, intake) = (state.metrics.clone(), state.intake.clone());
    tokio::spawn(server.run(state, shutdown.clone()));
    (addr, metrics, intake, shutdown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_a_pod_opens_past_its_share_are_counted() {
    // Closed before their TLS handshake, where the webhook's per-peer
    // limit applies: the operator sees them in the metric, not only the pod.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, metrics, stop) = running_with_metrics(dir.path(), &ca, |a| {
        a.max_connections_per_peer = Some("2".into());
        a.tls_handshake_timeout = Some("60s".into());
    })
    .await;
    let refused = metrics.connections_refused.with_label_values(&["webhook"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from([127, 0, 0, 2], addr).await);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while refused.get() == 0 && std::time::Instant::now() < deadline {
        // The server may not have counted the first two yet: try again.
        let _extra = connect_from([127, 0, 0, 2], addr).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused.get() >= 1,
        "a third connection from the pod counted"
    );
    drop(held);
    stop.cancel();
}

/// A TCP connection to `addr` from another loopback address, as another
/// pod's connections come from another IP.
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind a second loopback address");
    socket.connect(addr).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_pod_do_not_starve_the_api_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |_| {}).await;
    // Another pod opens 300 connections and never starts a handshake.
    let mut idle = Vec::new();
    for _ in 0..300 {
        idle.push(connect_from([127, 0, 0, 2], addr).await);
    }
    let body = std::fs::read(fixtures().join("plain.json")).expect("fixture");
    let answered = tokio::time::timeout(
        Duration::from_secs(5),
        https(&client_config(&ca), addr, "POST", "/mutate", body),
    )
    .await
    .expect("the API server's review is answered while the other pod waits")
    .expect("request");
    assert_eq!(answered.0, 200);
    drop(idle);
    stop.cancel();
}

/// Three reviews, as the API server sends them, each answered 200 within
/// 5 s (its own timeout is 10 s).
/// `n` of the API server's reviews in turn, each answered 200 (however
/// long that takes: the test's own deadline bounds it).
async fn each_answered(tls: &Arc<rustls::ClientConfig>, addr: SocketAddr, n: usize) {
    let body = std::fs::read(fixtures().join("plain.json")).expect("fixture");
    for _ in 0..n {
        let (status, _, _) = https(tls, addr, "POST", "/mutate", body.clone())
            .await
            .expect("request");
        assert_eq!(status, 200, "the API server's review is answered");
    }
}

async fn reviews_are_answered(tls: &Arc<rustls::ClientConfig>, addr: SocketAddr, when: &str) {
    let body = std::fs::read(fixtures().join("plain.json")).expect("fixture");
    for _ in 0..3 {
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            https(tls, addr, "POST", "/mutate", body.clone()),
        )
        .await
        .unwrap_or_else(|_| panic!("the API server's review is not answered {when}"))
        .expect("request");
        assert_eq!(answered.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_filling_every_slot_cannot_lock_the_api_server_out() {
    // Each pod within its per-peer share, together every slot: before, the
    // API server's connections were closed at once for as long as the
    // pods reconnected (eight pods kept a real build's 256 slots full).
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |a| {
        a.limits.max_connections = Some("8".into());
        a.max_connections_per_peer = Some("4".into());
    })
    .await;
    let tls = client_config(&ca);
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let mut held = Vec::new();
    for pod in [2, 3] {
        for _ in 0..4 {
            let tcp = connect_from([127, 0, 0, pod], addr).await;
            let name = ServerName::try_from("127.0.0.1").expect("name");
            held.push(connector.connect(name, tcp).await.expect("handshake"));
        }
    }
    // Handshakes done, nothing sent: every slot of the server is taken.
    reviews_are_answered(&tls, addr, "while the pods hold every slot").await;
    drop(held);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_holding_every_handshake_cannot_lock_the_api_server_out() {
    // Each pod within its share, together every handshake slot, and none
    // sends a ClientHello: the listener stopped accepting until one timed
    // out, and pods reconnecting faster than that kept the kernel's queue
    // full, where the API server's connections were dropped (an audit:
    // 2 of 37 reviews timed out).
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |a| {
        a.limits.max_connections = Some("8".into());
        a.max_connections_per_peer = Some("4".into());
        a.tls_handshake_timeout = Some("60s".into());
    })
    .await;
    let mut silent = Vec::new();
    for pod in [2, 3] {
        for _ in 0..4 {
            silent.push(connect_from([127, 0, 0, pod], addr).await);
        }
    }
    reviews_are_answered(&client_config(&ca), addr, "while pods hold every handshake").await;
    drop(silent);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_reviews_from_the_api_server_is_answered_whole() {
    // The webhook speaks HTTP/1.1, so the API server opens a connection
    // per review in flight; a scale-up of a large Deployment sends dozens
    // at once. With the defaults, 48 at once from one address all get
    // their answer (the share was 32: 16 were reset, and with
    // failurePolicy Fail their pods were refused).
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |_| {}).await;
    let tls = client_config(&ca);
    let body = std::fs::read(fixtures().join("plain.json")).expect("fixture");
    let mut open = Vec::new();
    for _ in 0..48 {
        let tcp = connect_from([127, 0, 0, 1], addr).await;
        open.push(
            review_head(tls.clone(), tcp, body.len())
                .await
                .expect("head sent"),
        );
    }
    let mut statuses = Vec::new();
    for (mut reader, mut writer) in open {
        let sent = writer.write_all(&body).await;
        statuses.push(match sent {
            Ok(()) => status_of(&mut reader).await,
            Err(_) => None,
        });
    }
    assert!(statuses.iter().all(|s| *s == Some(200)), "{statuses:?}");
    stop.cancel();
}

/// A webhook of `slots` connections (`per_peer` each), and three pods
/// filling them with `per_pod` reviews each whose bodies never finish
/// arriving (4000 bytes declared, none sent).
struct DrippingFlood {
    addr: SocketAddr,
    stop: CancellationToken,
    tls: Arc<rustls::ClientConfig>,
    /// The pods' connections, held open.
    _dripping: Vec<ReviewHalves>,
    _dir: tempfile::TempDir,
}

async fn dripping_flood(slots: usize, per_peer: usize, per_pod: usize) -> DrippingFlood {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |a| {
        a.limits.max_connections = Some(slots.to_string());
        a.max_connections_per_peer = Some(per_peer.to_string());
        a.body_read_timeout = Some("60s".into());
        a.body_read_deadline = Some("60s".into());
    })
    .await;
    let tls = client_config(&ca);
    let mut dripping = Vec::new();
    for pod in [2, 3, 4] {
        for _ in 0..per_pod {
            let tcp = connect_from([127, 0, 0, pod], addr).await;
            dripping.push(
                review_head(tls.clone(), tcp, 4000)
                    .await
                    .expect("head sent"),
            );
        }
    }
    DrippingFlood {
        addr,
        stop,
        tls,
        _dripping: dripping,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_below_their_share_dripping_bodies_cannot_lock_the_api_server_out() {
    // Each pod under its per-peer share, each connection a review whose
    // body is still coming (in flight, never quiet), together every slot:
    // nobody was evicted, and the API server was refused for as long as
    // the pods kept it up (an outside audit: nine pods of 30 against 256
    // slots and a share of 32; the API server got 8 of 30 reviews in).
    let flood = dripping_flood(9, 4, 3).await;
    reviews_are_answered(
        &flood.tls,
        flood.addr,
        "while pods below their share hold every slot",
    )
    .await;
    flood.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_one_dripping_body_each_cannot_lock_the_api_server_out() {
    // One dripping review body per pod, as many pods as slots: none held
    // two more connections than the API server's none, so none yielded (an
    // outside check: 256 pods let 0 of 30 reviews in). A body arriving for
    // a second yields to a peer holding fewer.
    let flood = dripping_flood(3, 128, 1).await;
    let body = std::fs::read(fixtures().join("plain.json")).expect("fixture");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answered = loop {
        // Refused while every body is younger than a second: asked again.
        if let Ok((status, _, _)) =
            https(&flood.tls, flood.addr, "POST", "/mutate", body.clone()).await
        {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API server's review never got in"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answered, 200);
    flood.stop.cancel();
}

/// A TLS connection from `source` that asks once, reads the whole answer,
/// then starts the next request's head and stops.
async fn dripping_a_next_head_from(
    tls: &Arc<rustls::ClientConfig>,
    source: [u8; 4],
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = connect_from(source, addr).await;
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut c = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .expect("handshake");
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("ask");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let whole = |a: &[u8]| {
        let text = String::from_utf8_lossy(a).to_lowercase();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|n| n.trim().parse::<usize>().ok());
        length.is_some_and(|n| body.len() >= n)
    };
    while !whole(&answer) {
        let n = c.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    c.write_all(b"POST /mu").await.expect("a head begun");
    c.flush().await.expect("flush");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_dripping_their_next_request_cannot_lock_the_api_server_out() {
    // As many pods as slots, each asking once and then dripping the next
    // request's head: nothing in flight, never quiet, no body arriving, so
    // none yielded (an outside check: 300 such pods let 1 review in 50).
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |a| {
        a.limits.max_connections = Some("3".into());
    })
    .await;
    let tls = client_config(&ca);
    let mut dripping = Vec::new();
    for pod in [2, 3, 4] {
        dripping.push(dripping_a_next_head_from(&tls, [127, 0, 0, pod], addr).await);
    }
    let body = std::fs::read(fixtures().join("plain.json")).expect("fixture");
    // Well inside the 10 s the header timeout would give the pods.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let answered = loop {
        // Refused while every head is younger than a second: asked again.
        if let Ok((status, _, _)) = https(&tls, addr, "POST", "/mutate", body.clone()).await {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API server's review never got in"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answered, 200);
    stop.cancel();
}

/// A review's connection, split so its body and its answer can flow at
/// once.
type ReviewHalves = (
    tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
);

/// A TLS connection over `tcp` with a review's head sent, declaring a body
/// of `declared` bytes.
async fn review_head(
    tls: Arc<rustls::ClientConfig>,
    tcp: TcpStream,
    declared: usize,
) -> Option<ReviewHalves> {
    use tokio::io::AsyncWriteExt;
    let connector = tokio_rustls::TlsConnector::from(tls);
    let name = ServerName::try_from("127.0.0.1").ok()?;
    let stream = connector.connect(name, tcp).await.ok()?;
    let (reader, mut writer) = tokio::io::split(stream);
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.ok()?;
    Some((reader, writer))
}

/// The status code of the answer's first line.
async fn status_of(
    reader: &mut tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>,
) -> Option<u16> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    let n = reader.read(&mut buf).await.ok()?;
    let line = String::from_utf8_lossy(&buf[..n]).into_owned();
    line.split(' ').nth(1)?.parse().ok()
}

/// Sends a review's headers over TLS, then only `sent` bytes of a body
/// declared as `declared` bytes; returns the status, if one comes. The body
/// is written while the answer is awaited: a webhook that refuses early
/// stops reading it.
async fn partial_review(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    declared: usize,
    sent: usize,
    wait: Duration,
) -> Option<u16> {
    use tokio::io::AsyncWriteExt;
    let tcp = TcpStream::connect(addr).await.ok()?;
    let (mut reader, mut writer) = review_head(tls.clone(), tcp, declared).await?;
    let write = tokio::spawn(async move {
        writer.write_all(&vec![b' '; sent]).await?;
        writer.flush().await?;
        // Held open (the body unfinished) until the answer is read.
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(writer)
    });
    let status = tokio::time::timeout(wait, status_of(&mut reader)).await;
    write.abort();
    status.ok()?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_body_that_stalls_is_answered_408() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |a| {
        a.body_read_timeout = Some("300ms".into());
    })
    .await;
    let status = partial_review(&client_config(&ca), addr, 1000, 10, Duration::from_secs(5)).await;
    assert_eq!(status, Some(408));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_beyond_the_memory_budget_are_refused_not_buffered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |a| {
        a.review_budget = Some((8 * 1024 * 1024).to_string());
        a.body_read_timeout = Some("10s".into());
    })
    .await;
    let tls = client_config(&ca);
    // One large review in flight, its bytes received, holds most of the
    // budget (if a second attempt below reserved first, this one is
    // refused and tries again, so one of them always holds it)...
    const BIG: usize = 6 * 1024 * 1024;
    let first = {
        let tls = tls.clone();
        tokio::spawn(async move {
            loop {
                let status =
                    partial_review(&tls, addr, BIG + 1024, BIG, Duration::from_secs(8)).await;
                if status != Some(503) {
                    return status;
                }
            }
        })
    };
    // ...so a second one cannot be held beside it (once the first has
    // reserved its share: poll until it has).
    let mut second = None;
    for _ in 0..5 {
        second = partial_review(&tls, addr, BIG + 1024, BIG, Duration::from_secs(3)).await;
        if second == Some(503) {
            break;
        }
    }
    assert_eq!(second, Some(503));
    first.abort();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_stay_small_whatever_the_review_asks() {
    // A neighbour that sends reviews and never reads the answers held
    // every answer in memory: 12,000 tiny containers in a third of a MiB
    // got a 17 MiB patch back, and an unreadable 7.9 MiB string was quoted
    // whole in the `invalid` answer.
    let (addr, stop, tls, mut review, _dir) = plain_review_to_a_webhook().await;
    let containers: Vec<Value> = (0..12_000)
        .map(|i| serde_json::json!({"name": format!("c{i}"), "image": "x"}))
        .collect();
    review["request"]["object"]["spec"]["containers"] = Value::Array(containers);
    let text = serde_json::to_vec(&review).expect("json");
    let (status, answer, _) = https(&tls, addr, "POST", "/mutate", text)
        .await
        .expect("request");
    assert_eq!(status, 200);
    assert!(answer.len() < 64 * 1024, "{} bytes", answer.len());
    let answer: Value = serde_json::from_slice(&answer).expect("json answer");
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("could not be stored"), "{message}");

    let junk = format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u1","kind":{},"operation":"CREATE"}}}}"#,
        serde_json::json!("x".repeat(4 << 20))
    );
    let (status, answer, _) = https(&tls, addr, "POST", "/mutate", junk.into_bytes())
        .await
        .expect("request");
    assert_eq!(status, 200, "answered with the uid");
    assert!(answer.len() < 4096, "{} bytes", answer.len());
    let answer: Value = serde_json::from_slice(&answer).expect("json answer");
    assert_eq!(answer["response"]["uid"], "u1");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_of_nested_managed_fields_is_priced_as_it_parses() {
    // managedFields' fieldsV1 is a JSON value: every `{"a":...}` in it a
    // map of its own, about 360 bytes parsed for 6 of text. A 7.5 MiB
    // review of such chains, priced at a quarter of that, was parsed and
    // took the webhook to 557 MiB: one neighbour's request, unauthenticated.
    let (addr, stop, tls, mut review, _dir) = plain_review_to_a_webhook().await;
    let chain = "{\"a\":".repeat(100) + "{}" + &"}".repeat(100);
    let chains = vec![chain.as_str(); 13_000].join(",");
    review["request"]["object"]["metadata"]["managedFields"] = serde_json::json!([
        {"manager": "m", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"f:x": "CHAINS"}}
    ]);
    let text = serde_json::to_string(&review)
        .expect("json")
        .replace("\"CHAINS\"", &format!("[{chains}]"));
    assert!((7 << 20..8 << 20).contains(&text.len()), "{}", text.len());
    let (status, _, _) = https(&tls, addr, "POST", "/mutate", text.into_bytes())
        .await
        .expect("request");
    assert_eq!(status, 413);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_that_parses_into_far_more_than_its_text_is_refused() {
    let (addr, stop, tls, mut review, _dir) = plain_review_to_a_webhook().await;
    // 30,000 `{"name":""}` volumes: 360 KB of text, each a 3 KB `Volume`
    // once parsed (about 100 MB, three times the default budget). Parsed
    // whole, a few such reviews took the webhook over its memory limit.
    review["request"]["object"]["spec"]["volumes"] =
        Value::Array(vec![serde_json::json!({"name": ""}); 30_000]);
    let bomb = serde_json::to_vec(&review).expect("json");
    assert!(bomb.len() < 512 * 1024);
    let (status, _, _) = https(&tls, addr, "POST", "/mutate", bomb)
        .await
        .expect("request");
    assert_eq!(status, 413);
    // A value the estimate cannot read, which the parse would skip (an
    // unknown field): refused, or the same pod would go through unpriced.
    review["request"]["object"]["spec"]["x"] = Value::Null;
    let unpriced = String::from_utf8(serde_json::to_vec(&review).expect("json"))
        .expect("utf-8")
        .replace(r#""x":null"#, r#""x":1e400"#);
    let (status, answer, _) = https(&tls, addr, "POST", "/mutate", unpriced.into_bytes())
        .await
        .expect("request");
    assert_eq!(status, 200, "answered with the review's uid");
    let answer: Value = serde_json::from_slice(&answer).expect("json answer");
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("not valid JSON"), "{answer}");
    // An ordinary review is answered as before: nothing was held.
    let plain = std::fs::read(fixtures().join("plain.json")).expect("fixture");
    let (status, answer, _) = https(&tls, addr, "POST", "/mutate", plain)
        .await
        .expect("request");
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).expect("json answer");
    assert_eq!(answer["response"]["allowed"], true);
    stop.cancel();
}

/// Another pod opens a review declaring `declared` bytes and then sends one
/// byte every `every`, never falling silent long enough to time out; it
/// says on `started` once its head and first byte are out. Returns the
/// status the webhook answers, once it does.
async fn dripping_review(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    declared: usize,
    every: Duration,
    started: tokio::sync::mpsc::Sender<()>,
) -> Option<u16> {
    use tokio::io::AsyncWriteExt;
    let tcp = connect_from([127, 0, 0, 3], addr).await;
    let (mut reader, mut writer) = review_head(tls, tcp, declared).await?;
    let drip = async move {
        loop {
            if writer.write_all(b" ").await.is_err() || writer.flush().await.is_err() {
                return;
            }
            let _ = started.try_send(());
            tokio::time::sleep(every).await;
        }
    };
    let answer = status_of(&mut reader);
    tokio::select! {
        status = answer => status,
        () = drip => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_dripping_large_reviews_cannot_hold_the_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |a| {
        a.body_read_timeout = Some("2s".into());
        a.review_budget = Some((16 * 1024 * 1024).to_string());
    })
    .await;
    let tls = client_config(&ca);
    // Reviews declaring the largest size, each kept alive by a byte every
    // half second: the whole budget, had it been reserved by what a client
    // declares rather than by what it sends.
    let (started, mut ready) = tokio::sync::mpsc::channel(4);
    let drips: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(dripping_review(
                tls.clone(),
                addr,
                8 * 1024 * 1024,
                Duration::from_millis(500),
                started.clone(),
            ))
        })
        .collect();
    for _ in 0..2 {
        ready.recv().await.expect("a drip started");
    }
    // Several reviews in turn, so the later ones surely find the drips'
    // heads read: every one is answered.
    each_answered(&tls, addr, 3).await;
    for d in drips {
        d.abort();
    }
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_review_body_that_never_ends_is_cut_off_at_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, stop) = running(dir.path(), &ca, |a| {
        a.body_read_timeout = Some("2s".into());
        a.body_read_deadline = Some("1s".into());
    })
    .await;
    let started = Instant::now();
    let status = tokio::time::timeout(
        Duration::from_secs(20),
        dripping_review(
            client_config(&ca),
            addr,
            1024 * 1024,
            Duration::from_millis(100),
            tokio::sync::mpsc::channel(1).0,
        ),
    )
    .await
    .expect("answered before the test gives up");
    assert_eq!(status, Some(408), "after {:?}", started.elapsed());
    stop.cancel();
}

/// A webhook with the smallest review budget (one review of the largest
/// size) and bodies allowed a minute: what holds the budget is the peer.
async fn patient_with_the_smallest_budget(
    dir: &Path,
    ca: &Ca,
) -> (
    SocketAddr,
    bedrock_broker::metrics::WebhookMetrics,
    bedrock_broker::webhook::Intake,
    CancellationToken,
) {
    running_with_intake(dir, ca, |a| {
        a.review_budget = Some((8 * 1024 * 1024).to_string());
        a.body_read_timeout = Some("30s".into());
        a.body_read_deadline = Some("60s".into());
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_filling_the_review_budget_cannot_shut_out_the_api_server() {
    // A pod sending reviews as fast as it likes holds the budget as long
    // as it keeps sending (each body within the deadline): every review
    // the API server sent meanwhile waited its second and got 503, and
    // with `failurePolicy: Fail` every opted-in pod was refused.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, metrics, intake, stop) = patient_with_the_smallest_budget(dir.path(), &ca).await;
    let tls = client_config(&ca);
    const ALL: usize = 8 * 1024 * 1024;
    let tcp = connect_from([127, 0, 0, 3], addr).await;
    let (mut reader, mut writer) = review_head(tls.clone(), tcp, ALL).await.expect("head");
    let fill = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        // All but the last byte: the review stays open, its text held.
        writer.write_all(&vec![b' '; ALL - 1]).await?;
        writer.flush().await?;
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(writer)
    });
    eventually(
        "the pod's review to hold the whole budget",
        Duration::from_secs(10),
        || {
            let held = intake.held();
            async move { held >= ALL - 1 }
        },
    )
    .await;
    // What an operator sees of it: the review budget full.
    assert!(budget_gauge(&metrics, "used", "review_text") >= (ALL - 1) as f64);
    assert_eq!(budget_gauge(&metrics, "limit", "review_text"), ALL as f64);
    reviews_are_answered(&tls, addr, "while a pod holds the whole budget").await;
    // The pod's review made room: its connection was closed, unanswered.
    let answer = tokio::time::timeout(Duration::from_secs(5), status_of(&mut reader))
        .await
        .expect("the pod's connection is closed");
    assert_eq!(answer, None);
    assert_eq!(metrics.reviews_closed_for_room.get(), 1);
    fill.abort();
    // Every review over, both budgets are empty again.
    eventually("the budgets to empty", Duration::from_secs(10), || {
        let empty = ["review_text", "parsed_reviews"]
            .iter()
            .all(|b| budget_gauge(&metrics, "used", b) == 0.0);
        async move { empty }
    })
    .await;
    stop.cancel();
}

/// `bedrock_broker_webhook_memory_budget_{used,limit}_bytes` of `budget`,
/// as a scrape reads it.
fn budget_gauge(
    metrics: &bedrock_broker::metrics::WebhookMetrics,
    which: &str,
    budget: &str,
) -> f64 {
    let series =
        format!("bedrock_broker_webhook_memory_budget_{which}_bytes{{budget=\"{budget}\"}} ");
    let text = metrics.render();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.parse().expect("a number")
}

/// A review from `source` declaring `declared` bytes with only `sent` of
/// them sent, held open; the reader of its answer.
async fn unfinished_review(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    source: [u8; 4],
    declared: usize,
    sent: usize,
) -> (
    tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::AsyncWriteExt;
    let tcp = connect_from(source, addr).await;
    let (reader, mut writer) = review_head(tls.clone(), tcp, declared).await.expect("head");
    let held = tokio::spawn(async move {
        if writer.write_all(&vec![b' '; sent]).await.is_ok() && writer.flush().await.is_ok() {
            std::future::pending::<()>().await;
        }
    });
    (reader, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_queueing_for_the_room_they_lose_cannot_shut_out_the_api_server() {
    // Room taken from a pod went back to the budget, where the first in
    // line got it: the pods' own queued reviews, not the API server's
    // (an audit: three pods, 15 reviews holding the budget each and 15
    // more waiting; the API server's review got 503 in 4 runs of 4). The
    // hand-over itself, rather than taking again while waiting, is what
    // `room_taken_from_a_pod_goes_to_the_asker_not_the_pods_queue` shows.
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let (addr, metrics, intake, stop) = patient_with_the_smallest_budget(dir.path(), &ca).await;
    let tls = client_config(&ca);
    const SHARE: usize = 182 * 1024;
    let mut held = Vec::new();
    for pod in 2..=4 {
        for _ in 0..15 {
            held.push(unfinished_review(&tls, addr, [127, 0, 0, pod], 1 << 20, SHARE).await);
        }
    }
    eventually(
        "the pods to hold the budget",
        Duration::from_secs(10),
        || {
            let full = intake.held() >= 45 * SHARE;
            async move { full }
        },
    )
    .await;
    for pod in 2..=4 {
        for _ in 0..15 {
            held.push(unfinished_review(&tls, addr, [127, 0, 0, pod], 1 << 20, 8000).await);
        }
    }
    reviews_are_answered(&tls, addr, "while pods hold the budget and queue for more").await;
    assert!(metrics.reviews_closed_for_room.get() >= 1);
    for (_, task) in held {
        task.abort();
    }
    stop.cancel();
}

/// The cluster as [`cluster`] has it, each ServiceAccount read taking
/// `delay`, as a direct read from a busy API server does.
struct SlowLookup {
    inner: bedrock_broker::webhook::StaticLookup,
    delay: Duration,
}

impl bedrock_broker::webhook::ClusterLookup for SlowLookup {
    async fn service_account_annotations(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<bedrock_broker::webhook::StringMap>, bedrock_broker::webhook::LookupError>
    {
        tokio::time::sleep(self.delay).await;
        self.inner
            .service_account_annotations(namespace, name)
            .await
    }

    async fn namespace_labels(
        &self,
        namespace: &str,
    ) -> Result<Option<bedrock_broker::webhook::StringMap>, bedrock_broker::webhook::LookupError>
    {
        self.inner.namespace_labels(namespace).await
    }

    async fn limit_ranges(
        &self,
        namespace: &str,
    ) -> Result<Vec<k8s_openapi::api::core::v1::LimitRange>, bedrock_broker::webhook::LookupError>
    {
        self.inner.limit_ranges(namespace).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_queueing_reviews_that_parse_large_cannot_delay_the_api_server() {
    // Reviews estimated to parse into most of the room for parsed pods go
    // one at a time, each holding it through its lookups; in one line, a
    // pod keeping 31 of them queued put the API server's review behind
    // all of them (a reviewer's test, 40 ms lookups: 10 of 20 got 503).
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ca();
    let slow = SlowLookup {
        inner: cluster(),
        delay: Duration::from_millis(40),
    };
    let (addr, _, _, stop) = running_with_lookup(dir.path(), &ca, slow, |_| {}).await;
    let tls = client_config(&ca);
    let plain: Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("plain.json")).expect("fixture"))
            .expect("json");
    // Volumes enough for 70 % of the room (4 times the 32 MiB budget).
    let with_volumes = |n: usize| {
        let mut review = plain.clone();
        review["request"]["object"]["spec"]["volumes"] =
            Value::Array(vec![serde_json::json!({"name": ""}); n]);
        serde_json::to_vec(&review).expect("json")
    };
    let cost =
        |n: usize| bedrock_broker::webhook::parse_cost::estimate(&with_volumes(n)).expect("priced");
    let per_volume = (cost(1001) - cost(1)) / 1000;
    let large = with_volumes(7 * 128 * 1024 * 1024 / 10 / per_volume);
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pod: Vec<_> = (0..31)
        .map(|_| {
            let (tls, large, answered) = (tls.clone(), large.clone(), answered.clone());
            tokio::spawn(async move {
                loop {
                    match large_review_from(&tls, addr, [127, 0, 0, 3], large.clone()).await {
                        Some(200) => {
                            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        // Refused (its connections at their limit): not in
                        // a tight loop.
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            })
        })
        .collect();
    eventually(
        "the pod's reviews to be answered",
        Duration::from_secs(10),
        || {
            let n = answered.load(std::sync::atomic::Ordering::Relaxed);
            async move { n >= 31 }
        },
    )
    .await;
    each_answered(&tls, addr, 10).await;
    for task in pod {
        task.abort();
    }
    stop.cancel();
}

/// One review from `source`; its status, if it is answered.
async fn large_review_from(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    source: [u8; 4],
    body: Vec<u8>,
) -> Option<u16> {
    use tokio::io::AsyncWriteExt;
    let tcp = connect_from(source, addr).await;
    let (mut reader, mut writer) = review_head(tls.clone(), tcp, body.len()).await?;
    writer.write_all(&body).await.ok()?;
    writer.flush().await.ok()?;
    let status = status_of(&mut reader).await;
    drop(writer);
    status
}
