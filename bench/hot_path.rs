//! Micro-benchmarks of the hot-path pieces: signing a 1 KB request (the
//! buffered path's own signer, aws-sigv4 beside it, and the hashing any
//! signer needs) and reading the credentials cell; and what blanking the
//! secrets out of an error answer's body costs. Run with `cargo bench
//! --bench hot_path`.

// A benchmark panics on setup errors, and it reads the real clock.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use bedrock_broker::credentials::{CredentialCell, HeldCredentials};
use bedrock_broker::proxy::{bench_blank, BodyDigest, RequestSigner, Signer};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use sha2::Digest;

const URI: &str =
    "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-haiku-20240307-v1:0/converse";

fn held(session_token: bool) -> HeldCredentials {
    let creds = Credentials::new(
        "ASIABENCHEXAMPLE",
        "benchSecretKeyExampleNotRealAtAll000000",
        session_token.then(|| "IQoJb3JpZ2luX2VjE".repeat(40)),
        Some(UNIX_EPOCH + Duration::from_secs(4_000_000_000)),
        "bench",
    );
    HeldCredentials::new(creds, SystemTime::now(), "bench")
}

/// Headers a typical SDK request still carries after the proxy stripped
/// hop-by-hop and auth headers.
fn client_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("user-agent", "OpenAI/Python 1.99.0"),
        ("x-stainless-lang", "python"),
        ("x-stainless-retry-count", "0"),
    ] {
        h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    h
}

/// Credentials as the proxy holds them: stored in the cell (generation 1),
/// so the signer's key cache applies.
fn stored(session_token: bool) -> CredentialCell {
    let cell = CredentialCell::new();
    cell.store(held(session_token));
    cell
}

fn request_signer(c: &mut Criterion) {
    let signer = RequestSigner::new("us-east-1", "bedrock");
    let uri: Uri = URI.parse().unwrap();
    let body = vec![b'x'; 1024];
    let hash = hex::encode(sha2::Sha256::digest(&body));
    let now = SystemTime::now();
    let mut group = c.benchmark_group("request signer");
    group.throughput(Throughput::Elements(1));
    for (name, token, precomputed) in [
        ("1 KB, session token, body hashed while read", true, true),
        ("1 KB, static keys, body hashed while read", false, true),
        ("1 KB, session token, body hashed here", true, false),
    ] {
        let cell = stored(token);
        let held = cell.load();
        let held = held.as_deref().unwrap();
        let digest = BodyDigest::new(&body, precomputed.then_some(hash.as_str()));
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                client_headers,
                |headers| {
                    signer
                        .sign(&Method::POST, &uri, headers, black_box(digest), held, now)
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    // As in the proxy, where hyper has just written the header map: a warm
    // template cloned each time (subtract "clone headers only" below).
    let cell = stored(true);
    let held = cell.load();
    let held = held.as_deref().unwrap();
    let digest = BodyDigest::new(&body, Some(hash.as_str()));
    let template = client_headers();
    // Each thread reuses the hash of what a request shares with one of the
    // last few (all but the payload line). Sixteen signing times in turn,
    // more than it keeps, make every request differ from those: the cost
    // without that. They are seconds after noon UTC, so never two days.
    let day = now.duration_since(UNIX_EPOCH).unwrap().as_secs() / 86_400;
    let noon = UNIX_EPOCH + Duration::from_secs(day * 86_400 + 43_200);
    let seconds: Vec<SystemTime> = (0..16).map(|i| noon + Duration::from_secs(i)).collect();
    // An AWS SDK's calls carry a new `amz-sdk-invocation-id` each (forwarded
    // unsigned, so they share their prefix like any other client's).
    let ids: Vec<HeaderValue> = (0..64)
        .map(|i| HeaderValue::try_from(format!("3f1c2a9e-0000-4000-8000-{i:012}")).unwrap())
        .collect();
    // An application calling two models in turn (a chat and an embedding
    // model, say): each thread keeps a few recent prefixes, not only the last.
    let other: Uri = URI
        .replace(
            "anthropic.claude-3-haiku-20240307-v1:0",
            "amazon.titan-embed-text-v2:0",
        )
        .parse()
        .unwrap();
    let one = [&uri];
    let two = [&uri, &other];
    for (name, times, uris, sdk) in [
        (
            "1 KB, session token, warm headers (incl. clone)",
            &[now][..],
            &one[..],
            false,
        ),
        (
            "1 KB, session token, warm headers (incl. clone), never like the last",
            &seconds[..],
            &one[..],
            false,
        ),
        (
            "1 KB, session token, warm headers (incl. clone), two models in turn",
            &[now][..],
            &two[..],
            false,
        ),
        (
            "1 KB, session token, warm headers (incl. clone), AWS SDK invocation ids",
            &[now][..],
            &one[..],
            true,
        ),
    ] {
        let mut times = times.iter().cycle();
        let mut uris = uris.iter().cycle();
        let mut ids = ids.iter().cycle();
        group.bench_function(name, |b| {
            b.iter(|| {
                let time = times.next().copied().unwrap_or(now);
                let target = uris.next().copied().unwrap_or(&uri);
                let mut headers = template.clone();
                if sdk {
                    if let Some(id) = ids.next() {
                        headers.insert("amz-sdk-invocation-id", id.clone());
                    }
                }
                signer
                    .sign(
                        &Method::POST,
                        target,
                        &mut headers,
                        black_box(digest),
                        held,
                        time,
                    )
                    .unwrap();
                headers
            })
        });
    }
    group.finish();
}

fn signing(c: &mut Criterion) {
    let signer = Signer::new("us-east-1", "bedrock");
    let uri: Uri = URI.parse().unwrap();
    let body = vec![b'x'; 1024];
    let hash = hex::encode(sha2::Sha256::digest(&body));
    let now = SystemTime::now();
    let mut group = c.benchmark_group("aws-sigv4");
    group.throughput(Throughput::Elements(1));
    for (name, token, precomputed) in [
        ("1 KB, session token, body hashed while read", true, true),
        ("1 KB, static keys, body hashed while read", false, true),
        ("1 KB, session token, body hashed here", true, false),
    ] {
        let held = held(token);
        let digest = BodyDigest::new(&body, precomputed.then_some(hash.as_str()));
        group.bench_function(name, |b| {
            b.iter_batched_ref(
                client_headers,
                |headers| {
                    signer
                        .sign(
                            &Method::POST,
                            &uri,
                            headers,
                            black_box(digest),
                            held.identity(),
                            now,
                        )
                        .unwrap()
                },
                BatchSize::SmallInput,
            )
        });
    }
    // The part of the above that is only copying the header map.
    group.bench_function("clone headers only (baseline)", |b| {
        b.iter(|| black_box(client_headers()))
    });
    group.finish();
}

/// The hashing any SigV4 signature of the same request needs, with nothing
/// else: SHA-256 of the canonical request our signer hashes (same bytes,
/// same length: the session token is most of it), then the string to sign
/// through an HMAC already keyed with the cached signing key. What the
/// signer spends beyond this is its own.
fn hashing_floor(c: &mut Criterion) {
    use hmac::{Hmac, KeyInit, Mac};
    let body = vec![b'x'; 1024];
    let payload = hex::encode(sha2::Sha256::digest(&body));
    let mut group = c.benchmark_group("hashing floor");
    group.throughput(Throughput::Elements(1));
    for (name, token) in [
        ("1 KB, session token", Some("IQoJb3JpZ2luX2VjE".repeat(40))),
        ("1 KB, static keys", None),
    ] {
        let token_line = token
            .as_ref()
            .map(|t| format!("x-amz-security-token:{t}\n"))
            .unwrap_or_default();
        let token_name = if token.is_some() {
            "x-amz-security-token;"
        } else {
            ""
        };
        let canonical = format!(
            "POST\n/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse\n\n\
             accept:application/json\ncontent-type:application/json\n\
             host:bedrock-runtime.us-east-1.amazonaws.com\nx-amz-date:20261201T120000Z\n\
             {token_line}x-stainless-lang:python\nx-stainless-retry-count:0\n\n\
             accept;content-type;host;x-amz-date;{token_name}x-stainless-lang;x-stainless-retry-count\n\
             {payload}"
        );
        let keyed = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(&[7u8; 32]).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let hashed = hex::encode(sha2::Sha256::digest(black_box(canonical.as_bytes())));
                let mut mac = keyed.clone();
                mac.update(b"AWS4-HMAC-SHA256\n20261201T120000Z\n20261201/us-east-1/bedrock/aws4_request\n");
                mac.update(hashed.as_bytes());
                hex::encode(mac.finalize().into_bytes())
            })
        });
    }
    group.finish();
}

/// Blanking an error body of the secrets its request carried: every error
/// answer of a request the proxy signed or gave its API key is read whole
/// and searched, in each layer of escapes it has, for the secret and for
/// every 8-byte piece of it.
fn error_body(c: &mut Criterion) {
    let token = session_token();
    let aws = format!(
        r#"{{"message":"The security token included in the request is invalid. {}"}}"#,
        "Check your AWS credentials and try again. ".repeat(45)
    );
    let quoting = format!(
        r#"{{"message":"relay refused the request; it was sent with\nx-amz-security-token: {}\n{}"}}"#,
        token.replace('/', "\\/"),
        "x-header: value\n".repeat(60)
    );
    // 64 KiB (all the proxy reads) starting with one escape of each of
    // the four layers undone, so every view is as long as the body.
    let full_views = |unit: &str| {
        let mut body = String::from("%2525252541");
        while body.len() < 64 * 1024 - unit.len() {
            body.push_str(unit);
        }
        body
    };
    let plain = full_views("Check your AWS credentials and try again. ");
    // The worst: a piece of the token every 9 bytes, a blank each in
    // every view (the token's first bytes are every token's, so a relay
    // echoing the app's own text can make this).
    let pieces = full_views(&format!("{} ", &token[..8]));
    let mut group = c.benchmark_group("error body blanking");
    for (name, body) in [
        ("2 KiB AWS error, no secret in it", aws),
        ("2 KiB echo quoting the token", quoting),
        ("64 KiB in five views, no secret in it", plain),
        ("64 KiB in five views, a piece every 9 bytes", pieces),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| bench_blank(black_box(body.as_bytes()), &[token.as_bytes()]))
        });
    }
    group.finish();
}

/// A session token as STS writes them: about 1,000 base64 characters,
/// `IQoJb3JpZ2luX2Vj` first and a run of slashes in them; the rest drawn
/// from a fixed seed, so its 8-byte pieces are as many as a real one's.
fn session_token() -> String {
    const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        BASE64[(x % 64) as usize] as char
    };
    let mut token = String::from("IQoJb3JpZ2luX2Vj");
    token.extend((0..20).map(|_| next()));
    token.push_str("//////////");
    token.extend((0..950).map(|_| next()));
    token.push_str("==");
    token
}

fn cell(c: &mut Criterion) {
    let cell = CredentialCell::new();
    cell.store(held(true));
    let now = SystemTime::now();
    c.bench_function("credentials cell usable()", |b| {
        b.iter(|| cell.usable(black_box(now)).is_ok())
    });
}

criterion_group!(
    benches,
    request_signer,
    hashing_floor,
    signing,
    cell,
    error_body
);
criterion_main!(benches);
