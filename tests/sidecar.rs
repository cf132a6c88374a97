//! The sidecar's lifecycle, driven in process: the proxy's request handler
//! without a client socket, in front of a scripted upstream. Whether the
//! signatures themselves are right is proven against botocore by the Python
//! end-to-end tests (tests/e2e); these check what happens around them.

// Test code: a failed setup is a failed test, and the real clock is fine.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod sidecar_support;

use std::sync::Arc;
use std::time::Duration;

use bedrock_broker::clock::SystemClock;
use bedrock_broker::config::Env;
use bedrock_broker::credentials::CredentialCell;
use bedrock_broker::proxy::Proxy;
use bedrock_broker::sidecar::{Sidecar, SidecarConfig};
use http_body_util::BodyExt;
use sidecar_support::{credentials, post, proxy, text, Answer, FakeUpstream, Setup};
use tokio_util::sync::CancellationToken;

fn credential_of(seen: &sidecar_support::Seen) -> String {
    let auth = seen.headers["authorization"].to_str().unwrap();
    let start = auth.find("Credential=").unwrap() + "Credential=".len();
    auth[start..].split('/').next().unwrap().to_owned()
}

#[tokio::test]
async fn serves_503_until_the_first_credentials_and_never_sends_unsigned() {
    let upstream = FakeUpstream::start(vec![]).await;
    let cell = Arc::new(CredentialCell::new());
    let (proxy, _) = proxy(&upstream, cell.clone(), Setup::default());

    let answer = proxy
        .clone()
        .handle(post("/model/m/converse", "{}"))
        .await
        .unwrap();
    let (status, headers, _) = text(answer).await;
    assert_eq!(status, 503);
    assert_eq!(headers["x-bedrock-broker-error"], "no_credentials");
    assert!(
        upstream.seen().is_empty(),
        "nothing reaches Bedrock unsigned"
    );

    cell.store(credentials("AKIDFIRST"));
    let answer = proxy.handle(post("/model/m/converse", "{}")).await.unwrap();
    assert_eq!(text(answer).await.0, 200);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(credential_of(&seen[0]), "AKIDFIRST");
    assert_eq!(seen[0].headers["x-amz-security-token"], "token");
}

#[tokio::test]
async fn retries_once_with_fresher_credentials_when_bedrock_says_they_expired() {
    let upstream = FakeUpstream::start(vec![Answer::Whole(
        403,
        vec![("x-amzn-errortype", "ExpiredTokenException")],
        r#"{"message":"The security token included in the request is expired"}"#,
    )])
    .await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKIDOLD"));
    // Stands in for the refresher: an early refresh stores new credentials.
    let refresher = {
        let cell = cell.clone();
        tokio::spawn(async move {
            cell.refresh_requested().await;
            cell.store(credentials("AKIDNEW"));
        })
    };
    let (proxy, metrics) = proxy(&upstream, cell, Setup::default());
    let answer = proxy
        .handle(post("/model/m/converse", r#"{"x":1}"#))
        .await
        .unwrap();
    assert_eq!(text(answer).await.0, 200);
    refresher.await.unwrap();
    let seen = upstream.seen();
    assert_eq!(
        seen.iter().map(credential_of).collect::<Vec<_>>(),
        ["AKIDOLD", "AKIDNEW"]
    );
    assert_eq!(seen[0].body, seen[1].body, "the retry sends the same body");
    let retries = &metrics.proxy.auth_retries;
    assert_eq!(retries.with_label_values(&["retried"]).get(), 1);
    assert_eq!(retries.with_label_values(&["gave_up"]).get(), 0);
}

/// An upstream that answers its first request as Bedrock answers expired
/// credentials (then 200s).
async fn expired_once() -> FakeUpstream {
    FakeUpstream::start(vec![Answer::Whole(
        403,
        vec![("x-amzn-errortype", "ExpiredTokenException")],
        r#"{"message":"expired"}"#,
    )])
    .await
}

#[tokio::test]
async fn a_rejection_waits_for_an_attempt_already_under_way_while_failing() {
    // Refreshes have failed (an error is held) and the next attempt is
    // under way: its credentials are moments off, so the request waits
    // for them instead of getting Bedrock's 403 at once.
    let upstream = expired_once().await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKIDOLD"));
    cell.record_failure("InternalFailure".into());
    cell.begin_attempt();
    let (proxy, metrics) = proxy(&upstream, cell.clone(), Setup::default());
    let request = tokio::spawn(async move {
        let answer = proxy.handle(post("/model/m/converse", "{}")).await.unwrap();
        text(answer).await.0
    });
    // The attempt succeeds once the request is waiting on it (it asks
    // first; the refresher, mid-attempt, need not listen).
    tokio::time::timeout(Duration::from_secs(10), cell.refresh_requested())
        .await
        .expect("the rejected request waits for the attempt");
    cell.store(credentials("AKIDNEW"));
    assert_eq!(request.await.unwrap(), 200);
    assert_eq!(
        metrics
            .proxy
            .auth_retries
            .with_label_values(&["retried"])
            .get(),
        1
    );
}

#[tokio::test]
async fn credentials_rejected_fresh_from_sts_are_not_refreshed_per_request() {
    // An account that may not use the region (an opt-in region not
    // enabled) rejects every key STS issues: a refresh cannot help, and
    // one per rejected request called STS every second from every pod.
    const UNRECOGNIZED: (&str, &str) = ("x-amzn-errortype", "UnrecognizedClientException");
    let rejection = || {
        Answer::Whole(
            403,
            vec![UNRECOGNIZED],
            r#"{"message":"The security token included in the request is invalid."}"#,
        )
    };
    let upstream = FakeUpstream::start((0..20).map(|_| rejection()).collect()).await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID0"));
    let refreshes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refresher = {
        let (cell, refreshes) = (cell.clone(), refreshes.clone());
        tokio::spawn(async move {
            loop {
                cell.refresh_requested().await;
                let n = refreshes.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                cell.store(credentials(&format!("AKIDEARLY{n}")));
            }
        })
    };
    let (proxy, metrics) = proxy(&upstream, cell.clone(), Setup::default());
    let send = || async {
        let answer = proxy
            .clone()
            .handle(post("/model/m/converse", "{}"))
            .await
            .unwrap();
        let (status, headers, _) = text(answer).await;
        assert_eq!(
            (status, &headers["x-amzn-errortype"]),
            (403, &UNRECOGNIZED.1.parse().unwrap())
        );
    };
    for _ in 0..5 {
        send().await;
    }
    let refreshed = || refreshes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        refreshed(),
        1,
        "one early refresh, then Bedrock's answer as it is"
    );
    assert_eq!(
        upstream.seen().len(),
        6,
        "the first request retried once, no other"
    );
    let retries = &metrics.proxy.auth_retries;
    assert_eq!(retries.with_label_values(&["retried"]).get(), 1);
    assert_eq!(retries.with_label_values(&["gave_up"]).get(), 4);
    // Credentials the schedule brings get their one chance again.
    cell.store(credentials("AKIDSCHEDULED"));
    send().await;
    assert_eq!(refreshed(), 2);
    assert_eq!(upstream.seen().len(), 8);
    refresher.abort();
}

#[tokio::test]
async fn passes_the_rejection_through_when_no_fresher_credentials_come() {
    let upstream = expired_once().await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKIDOLD"));
    let setup = Setup {
        self_heal_wait: Duration::from_millis(50),
        ..Setup::default()
    };
    let (proxy, metrics) = proxy(&upstream, cell, setup);
    let answer = proxy.handle(post("/model/m/converse", "{}")).await.unwrap();
    let (status, headers, body) = text(answer).await;
    assert_eq!(status, 403);
    assert_eq!(headers["x-amzn-errortype"], "ExpiredTokenException");
    assert!(
        headers.get("x-bedrock-broker-error").is_none(),
        "Bedrock's answer, unchanged"
    );
    assert_eq!(body, r#"{"message":"expired"}"#);
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(
        metrics
            .proxy
            .auth_retries
            .with_label_values(&["gave_up"])
            .get(),
        1
    );
}

#[tokio::test]
async fn answers_413_over_the_body_limit_without_reaching_bedrock() {
    let upstream = FakeUpstream::start(vec![]).await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let setup = Setup {
        max_body_bytes: 10,
        ..Setup::default()
    };
    let (proxy, _) = proxy(&upstream, cell, setup);
    let answer = proxy
        .handle(post("/model/m/converse", "01234567890"))
        .await
        .unwrap();
    let (status, headers, body) = text(answer).await;
    assert_eq!(status, 413);
    assert_eq!(headers["x-bedrock-broker-error"], "body_too_large");
    assert_eq!(headers["x-amzn-errortype"], "ValidationException");
    assert!(body.contains("--max-body-bytes"), "{body}");
    assert!(upstream.seen().is_empty());
}

#[tokio::test]
async fn answers_in_the_dialect_of_the_clients_sdk() {
    let upstream = FakeUpstream::start(vec![]).await;
    let (proxy, _) = proxy(&upstream, Arc::new(CredentialCell::new()), Setup::default());

    let answer = proxy
        .clone()
        .handle(post("/openai/v1/chat/completions", "{}"))
        .await
        .unwrap();
    let (status, headers, body) = text(answer).await;
    assert_eq!(status, 503);
    assert!(headers.get("x-amzn-errortype").is_none());
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "no_credentials");
    assert_eq!(json["error"]["type"], "api_error");

    let answer = proxy.handle(post("/model/m/converse", "{}")).await.unwrap();
    let (_, headers, body) = text(answer).await;
    assert_eq!(headers["x-amzn-errortype"], "ServiceUnavailableException");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["message"].as_str().unwrap().contains("no credentials"));
}

/// A proxy with credentials and a 200 ms stream idle timeout.
fn idle_timed_proxy(upstream: &FakeUpstream) -> Arc<Proxy> {
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let setup = Setup {
        stream_idle_timeout: Some(Duration::from_millis(200)),
        ..Setup::default()
    };
    proxy(upstream, cell, setup).0
}

/// An SSE answer that sends `events` and then stalls, through a proxy with
/// a 200 ms stream idle timeout: its status, the bytes the client got, and
/// the error the body ended with, if it did not end cleanly. The outer
/// limit turns a cut-off that never comes into a failure, not a hang.
async fn stalled_stream_read(events: Vec<&'static str>) -> (u16, Vec<u8>, Option<String>) {
    stalled_answer_read(vec![("content-type", "text/event-stream")], events).await
}

/// [`stalled_stream_read`] with the answer's headers.
async fn stalled_answer_read(
    headers: Vec<(&'static str, &'static str)>,
    events: Vec<&'static str>,
) -> (u16, Vec<u8>, Option<String>) {
    let upstream = FakeUpstream::start(vec![Answer::Stall(headers, events)]).await;
    let proxy = idle_timed_proxy(&upstream);
    let read = async {
        let answer = proxy
            .handle(post("/openai/v1/chat/completions", "{}"))
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let mut body = answer.into_body();
        let mut got = Vec::new();
        loop {
            match body.frame().await {
                Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap_or_default()),
                Some(Err(e)) => return (status, got, Some(e.to_string())),
                None => return (status, got, None),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the stalled stream was never cut off")
}

/// [`stalled_stream_read`] of a stream cut off cleanly: its status and body.
async fn stalled_stream(events: Vec<&'static str>) -> (u16, String) {
    let (status, got, error) = stalled_stream_read(events).await;
    assert_eq!(error, None, "the body ended in an error");
    (status, String::from_utf8_lossy(&got).into_owned())
}

/// The idle timer is set only once the upstream keeps the proxy waiting,
/// so a stream that stalls before its first event must be cut off too.
#[tokio::test]
async fn cuts_off_a_stream_that_stalls_before_its_first_event() {
    let (status, body) = stalled_stream(vec![]).await;
    assert_eq!(status, 200);
    assert!(
        body.starts_with("event: error\ndata: {\"type\":\"error\",\"error\""),
        "{body}"
    );
    assert!(
        body.contains("\"code\":\"upstream_idle_timeout\""),
        "{body}"
    );
}

#[tokio::test]
async fn cuts_off_a_stalled_stream_with_an_error_event() {
    let (status, body) = stalled_stream(vec!["data: {\"choices\":[]}\n\n"]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with("data: {\"choices\":[]}"), "{body}");
    assert!(
        body.contains("\"code\":\"upstream_idle_timeout\""),
        "{body}"
    );
}

#[tokio::test]
async fn a_streamed_answer_loses_a_length_its_error_tail_would_break() {
    // The error event appended when the stream stalls is not counted in
    // the upstream's Content-Length: framed by it, the client got the tail
    // inside the length (or cut off half-way), then a broken connection.
    let upstream = FakeUpstream::start(vec![Answer::Stall(
        vec![
            ("content-type", "text/event-stream"),
            ("content-length", "1000"),
        ],
        vec!["data: {\"choices\":[]}\n\n"],
    )])
    .await;
    let proxy = idle_timed_proxy(&upstream);
    let answer = proxy
        .handle(post("/openai/v1/chat/completions", "{}"))
        .await
        .unwrap();
    assert_eq!(answer.headers().get("content-length"), None);
    let (status, _, body) = text(answer).await;
    assert_eq!(status, 200);
    assert!(body.contains("upstream_idle_timeout"), "{body}");
}

#[tokio::test]
async fn a_stream_stalled_inside_an_event_is_aborted_not_garbled() {
    // An error event after half an event would be read as part of it: the
    // OpenAI SDK failed on JSON, boto3 on a checksum. Cut short instead.
    let (_, got, error) =
        stalled_stream_read(vec!["data: {\"choices\":[]}\n\n", "data: {\"choi"]).await;
    assert_eq!(
        String::from_utf8_lossy(&got),
        "data: {\"choices\":[]}\n\ndata: {\"choi",
        "nothing appended to the half event"
    );
    assert!(
        error.is_some_and(|e| e.contains("--stream-idle-timeout")),
        "the body ends in an error, not a clean end"
    );
}

#[tokio::test]
async fn a_compressed_stream_that_stalls_is_aborted_not_appended_to() {
    // The body is gzip (the OpenAI and Anthropic SDKs ask for it): its
    // bytes are no events, and a plain error event after them broke the
    // client's gunzip, or decoded as garbage the SDK failed on with a
    // bare JSON error. These bytes end as an event would, uncompressed.
    let (_, got, error) = stalled_answer_read(
        vec![
            ("content-type", "text/event-stream"),
            ("content-encoding", "gzip"),
        ],
        vec!["data: {\"choices\":[]}\n\n"],
    )
    .await;
    assert_eq!(got, b"data: {\"choices\":[]}\n\n", "nothing appended");
    assert!(
        error.is_some_and(|e| e.contains("--stream-idle-timeout")),
        "the body ends in an error, not a clean end"
    );
}

#[tokio::test]
async fn drains_open_streams_on_shutdown_and_accepts_no_new_connections() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let upstream = FakeUpstream::start(vec![Answer::Gated(
        "data: first\n\n",
        gate.clone(),
        "data: last\n\n",
    )])
    .await;
    let env = Env::from_pairs([
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDSTATIC"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", upstream.url().leak()),
        ("BEDROCK_BROKER_LISTEN", "127.0.0.1:0"),
        ("BEDROCK_BROKER_ADMIN_LISTEN", "127.0.0.1:0"),
    ]);
    let config = SidecarConfig::from_args(&Default::default(), &env).unwrap();
    let sidecar = Sidecar::bind(config, Arc::new(SystemClock)).await.unwrap();
    let addr = sidecar.proxy_addr().unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(sidecar.run(shutdown.clone()));

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    // Static keys are stored as soon as the refresher starts.
    let mut response = None;
    for _ in 0..100 {
        let request = post("/openai/v1/chat/completions", "{}");
        let (mut parts, body) = request.into_parts();
        parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
        let r = client
            .request(http::Request::from_parts(parts, body))
            .await
            .unwrap();
        if r.status() == 200 {
            response = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut body = response.expect("the sidecar answers").into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b"data: first\n\n");

    shutdown.cancel();
    let refused = async {
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .expect("the listener closes on shutdown");
    assert!(!running.is_finished(), "an open stream holds the drain");

    gate.notify_one();
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"data: last\n\n");
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the sidecar stops once drained")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_request_dropped_before_it_was_served_is_still_counted() {
    // hyper drops a request's future unpolled when its client hangs up
    // (or resets) right after sending it: the request reached the sidecar
    // and must show in `requests_total`, as a client that went away.
    let upstream = FakeUpstream::start(vec![]).await;
    let cell = Arc::new(CredentialCell::new());
    cell.store(credentials("AKID"));
    let (proxy, metrics) = proxy(&upstream, cell, Setup::default());
    let pending = proxy.clone().handle(post("/model/m/converse", "{}"));
    drop(pending);
    let requests = &metrics.proxy.requests;
    assert_eq!(
        requests
            .with_label_values(&["converse", "499", "none"])
            .get(),
        1
    );
    let durations = metrics
        .proxy
        .request_duration
        .with_label_values(&["converse"]);
    assert_eq!(durations.get_sample_count(), 1);
    assert!(upstream.seen().is_empty());
}
