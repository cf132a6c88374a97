//! The buffered path's own SigV4 signer against aws-sigv4, on generated
//! requests: both must produce the same signature and the same headers (names,
//! values and which are marked sensitive), or both refuse.
//!
//! `cargo test --test sigv4_differential` runs 20,000 cases. A million:
//!
//! ```sh
//! SIGV4_DIFF_CASES=1000000 cargo test --release --test sigv4_differential
//! ```
//!
//! Each case also signs again with the same signer, so the derived-key
//! cache and the reused prefix hash are exercised: the same request again
//! (a new credentials generation per case: a stale key would sign wrongly),
//! the same request with another body (the prefix reused, another payload
//! line), a second signing time that may fall on another UTC day, and a
//! rotated secret under the same key id.

// Test code: a failed setup is a failed test.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use bedrock_broker::credentials::{CredentialCell, HeldCredentials};
use bedrock_broker::proxy::{BodyDigest, RequestSigner, Signer};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sha2::Digest;

const DEFAULT_CASES: u32 = 20_000;

/// One generated request and what it is signed with.
#[derive(Debug, Clone)]
struct Case {
    method: Method,
    uri: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    precomputed: bool,
    access_key: String,
    secret: String,
    token: Option<String>,
    time: SystemTime,
    /// Seconds from `time` to the second signing (maybe another UTC day).
    later: u64,
    region: &'static str,
    service: &'static str,
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

/// One piece of a path segment or query component, by byte class.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9._~-]{1,8}",
        2 => pick(&["!", "$", "&", "'", "(", ")", "*", "+", ",", ";", "=", ":", "@"]).prop_map(String::from),
        2 => (any::<u8>()).prop_map(|b| format!("%{b:02X}")),
        1 => (any::<u8>()).prop_map(|b| format!("%{b:02x}")),
        1 => pick(&["%2F", "%2f", "%25", "%2E", "%20", "%3A", "%E1%88%B4", "%zz", "%4"]).prop_map(String::from),
        1 => pick(&["é", "ሴ", "🦀", "ü"]).prop_map(String::from),
        1 => pick(&[".", ".."]).prop_map(String::from),
    ]
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::collection::vec(piece(), 1..4).prop_map(|p| p.concat()),
        1 => Just(String::new()),
        1 => pick(&[".", ".."]).prop_map(String::from),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (pick(&["anthropic.claude-3-haiku-20240307-v1:0", "us.amazon.nova-pro-v1%3A0",
                      "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx"]),
              pick(&["converse", "converse-stream", "invoke", "invoke-with-response-stream"]))
            .prop_map(|(m, a)| format!("/model/{m}/{a}")),
        6 => (proptest::collection::vec(segment(), 0..6), any::<bool>())
            .prop_map(|(s, slash)| format!("/{}{}", s.join("/"), if slash { "/" } else { "" })),
    ]
}

fn query_component() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::collection::vec(piece(), 0..3).prop_map(|p| p.concat()),
        1 => pick(&["http://x:1/", "a+b", "a b", "?", "/", "=", "%2B", "Param", "param"]).prop_map(String::from),
    ]
}

fn query() -> impl Strategy<Value = Option<String>> {
    let pair = prop_oneof![
        6 => (query_component(), query_component()).prop_map(|(k, v)| format!("{k}={v}")),
        1 => query_component(),
        1 => Just(String::new()),
        1 => pick(&["a=1", "a=2", "a=", "=x"]).prop_map(String::from),
    ];
    proptest::option::weighted(
        0.6,
        proptest::collection::vec(pair, 0..6).prop_map(|p| p.join("&")),
    )
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => "[ ]{0,3}[!-~]{0,6}([ ]{1,4}[!-~\t]{1,6}){0,3}[ \t]{0,3}".prop_map(String::into_bytes),
        1 => Just(Vec::new()),
        1 => Just(b"   ".to_vec()),
        1 => proptest::collection::vec(prop_oneof![Just(b'a'), Just(b' '), 0x80u8..=0xff], 1..6),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => pick(&["content-type", "Content-Type", "accept", "X-Amzn-Bedrock-GuardrailIdentifier",
                    "x-amzn-bedrock-trace", "anthropic-beta", "X-Custom", "x-custom", "a", "zz", "x-amz-meta-Ü"
                        ]).prop_map(String::from),
        2 => pick(&["user-agent", "traceparent", "x-request-id", "x-amzn-trace-id", "b3", "transfer-encoding",
                    "amz-sdk-invocation-id", "Amz-Sdk-Request"])
            .prop_map(String::from),
        1 => pick(&["host", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "authorization"])
            .prop_map(String::from),
        2 => "[a-zA-Z][a-zA-Z0-9_-]{0,12}",
    ]
}

/// Seconds since the epoch: near a UTC midnight (either side), or anywhere.
fn time() -> impl Strategy<Value = SystemTime> {
    prop_oneof![
        1 => (10_957u64..47_482, -3i64..4).prop_map(|(day, off)| (day * 86_400).saturating_add_signed(off)),
        2 => 946_684_800u64..4_102_444_800,
    ]
    .prop_map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

fn case() -> impl Strategy<Value = Case> {
    let request = (
        pick(&[
            "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "PROPFIND",
        ])
        .prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
        pick(&[
            "https://bedrock-runtime.us-east-1.amazonaws.com",
            "https://bedrock-runtime.us-east-1.amazonaws.com:443",
            "https://bedrock-mantle.eu-west-1.api.aws:8443",
            "http://127.0.0.1:9000",
            "http://localhost:80",
            "http://[::1]:8080",
            "https://[::1]",
            "https://user@example.com",
        ]),
        path(),
        query(),
        proptest::collection::vec((header_name(), header_value()), 0..8),
    );
    let signing = (
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
        "(AKIA|ASIA)[A-Z0-9]{12,16}",
        "[A-Za-z0-9/+]{40}",
        proptest::option::of(prop_oneof![
            8 => "[A-Za-z0-9/+=]{16,600}",
            1 => "[A-Za-z0-9]{4}\n[A-Za-z]{4}",
        ]),
        time(),
        prop_oneof![Just(0u64), Just(1), 0u64..200_000],
        pick(&[
            ("us-east-1", "bedrock"),
            ("eu-west-1", "bedrock-mantle"),
            ("ap-southeast-2", "bedrock"),
        ]),
    );
    (request, signing).prop_map(
        |(
            (method, base, path, query, headers),
            (body, precomputed, access_key, secret, token, time, later, (region, service)),
        )| {
            let uri = match query {
                Some(q) => format!("{base}{path}?{q}"),
                None => format!("{base}{path}"),
            };
            Case {
                method,
                uri,
                headers,
                body,
                precomputed,
                access_key,
                secret,
                token,
                time,
                later,
                region,
                service,
            }
        },
    )
}

/// The request's headers, as hyper would hand them over (names lower-cased;
/// names or values it would refuse are left out).
fn header_map(case: &Case) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in &case.headers {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

type Signed = Result<(String, HeaderMap, Vec<(String, bool)>), ()>;

fn sensitivity(headers: &HeaderMap) -> Vec<(String, bool)> {
    let mut v: Vec<_> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.is_sensitive()))
        .collect();
    v.sort();
    v
}

fn check(case: &Case, signer: &RequestSigner, cell: &CredentialCell) -> Result<(), TestCaseError> {
    let Ok(uri) = case.uri.parse::<Uri>() else {
        return Err(TestCaseError::reject("not a URI hyper would accept"));
    };
    let hex = hex::encode(sha2::Sha256::digest(&case.body));
    let digest = || BodyDigest::new(&case.body, case.precomputed.then_some(hex.as_str()));
    let creds = Credentials::new(
        &case.access_key,
        &case.secret,
        case.token.clone(),
        None,
        "prop",
    );
    let oracle_with = |creds: &Credentials, time: SystemTime, digest: BodyDigest<'_>| -> Signed {
        let mut headers = header_map(case);
        let identity = creds.clone().into();
        Signer::new(case.region, case.service)
            .sign(&case.method, &uri, &mut headers, digest, &identity, time)
            .map(|sig| (sig, headers.clone(), sensitivity(&headers)))
            .map_err(|_| ())
    };
    let ours_with = |held: &HeldCredentials, time: SystemTime, digest: BodyDigest<'_>| -> Signed {
        let mut headers = header_map(case);
        signer
            .sign(&case.method, &uri, &mut headers, digest, held, time)
            .map(|signed| {
                // Handed back exactly when the credentials have one (a
                // caller's own header is left to the headers).
                match held.credentials().session_token() {
                    Some(_) => {
                        assert_eq!(signed.token.as_ref(), headers.get("x-amz-security-token"))
                    }
                    None => assert!(signed.token.is_none()),
                }
                (
                    signed.signature.as_str().to_owned(),
                    headers.clone(),
                    sensitivity(&headers),
                )
            })
            .map_err(|_| ())
    };
    let ours = |held: &HeldCredentials, time| ours_with(held, time, digest());
    let oracle = |time| oracle_with(&creds, time, digest());
    cell.store(HeldCredentials::new(creds.clone(), case.time, "prop"));
    let held = cell.load();
    let held = held.as_deref().unwrap();
    let later = case.time + Duration::from_secs(case.later);
    let expected = oracle(case.time);
    prop_assert_eq!(
        &ours(held, case.time),
        &expected,
        "first signing (new generation)"
    );
    prop_assert_eq!(&ours(held, case.time), &expected, "cached key");
    // The same request with another body: all of its canonical request but
    // the payload line is the one just hashed, so the signer reuses it.
    let mut body = case.body.clone();
    body.push(0x2a);
    let body_hex = hex::encode(sha2::Sha256::digest(&body));
    let another = BodyDigest::new(&body, case.precomputed.then_some(body_hex.as_str()));
    prop_assert_eq!(
        ours_with(held, case.time, another),
        oracle_with(&creds, case.time, another),
        "same request, another body"
    );
    prop_assert_eq!(
        ours(held, later),
        oracle(later),
        "second time, maybe another day"
    );

    // The same key id with a rotated secret, the same day: a new generation
    // must not reuse the key cached a moment ago.
    let rotated = Credentials::new(
        &case.access_key,
        format!("{}x", case.secret),
        case.token.clone(),
        None,
        "prop",
    );
    cell.store(HeldCredentials::new(rotated.clone(), case.time, "prop"));
    let held = cell.load();
    prop_assert_eq!(
        ours(held.as_deref().unwrap(), later),
        oracle_with(&rotated, later, digest()),
        "rotated secret"
    );
    Ok(())
}

#[test]
fn signs_exactly_like_aws_sigv4() {
    let cases = std::env::var("SIGV4_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_global_rejects: cases,
        ..Config::default()
    });
    let signer = RequestSigner::new("us-east-1", "bedrock");
    let cell = CredentialCell::new();
    let rejected = std::sync::atomic::AtomicU32::new(0);
    let result = runner.run(&case(), |case| {
        let signer = if case.region == signer.region() && case.service == signer.name() {
            &signer
        } else {
            &RequestSigner::new(case.region, case.service)
        };
        let r = check(&case, signer, &cell);
        if matches!(r, Err(TestCaseError::Reject(_))) {
            rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let rejected = rejected.into_inner();
    eprintln!("{cases} cases, {rejected} generated URIs refused by http (skipped)");
    // Most generated URIs must be usable, or the test proves little.
    assert!(
        rejected < cases / 4,
        "{rejected} of {cases} cases were not URIs"
    );
}
