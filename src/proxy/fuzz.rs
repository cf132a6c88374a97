//! Entry points for the fuzz targets (`fuzz/`, `cargo +nightly fuzz`):
//! the proxy's parsers of untrusted input, driven by arbitrary bytes. Each
//! must return (any answer) and never panic; `error_body` also asserts
//! what it promises. `cargo test` drives each with generated input too.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::identity::Identity;
use http::{HeaderMap, HeaderValue, Request};
use memchr::memmem;

use super::classify::classify;
use super::event_stream::{ChainSigner, Resigner};
use super::gate::GateState;
use super::{auth, headers, target, Gate};
use crate::clock::Clock;

#[derive(Debug)]
struct Fixed;

impl Clock for Fixed {
    fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }
}

/// A client's event stream, cut into pieces whose sizes the first byte
/// chooses: decoded, unwrapped and re-signed, or refused.
pub fn event_stream(data: &[u8]) {
    let Some((&step, rest)) = data.split_first() else {
        return;
    };
    let signer = ChainSigner::new(
        Identity::from(Credentials::new("AKID", "secret", None, None, "fuzz")),
        "us-east-1",
        "bedrock",
        Arc::new(Fixed),
        "seed".to_owned(),
    );
    let mut resigner = Resigner::new(signer, 64 * 1024);
    for piece in rest.chunks(usize::from(step).max(1)) {
        if resigner.push(piece).is_err() {
            return;
        }
    }
    let _ = resigner.finish();
}

/// The `x-llamastack-provider-data` header, as bytes.
pub fn provider_data(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut h = HeaderMap::new();
    h.insert(headers::PROVIDER_DATA, value);
    let _ = auth::decide(&h, None);
}

/// A request target and `Host`, split at the first newline: the checks
/// that keep the proxy from being an open proxy, and the classification.
pub fn request_target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (target, host) = text.split_once('\n').unwrap_or((&text, "127.0.0.1"));
    let Ok(request) = Request::builder()
        .uri(target)
        .header(http::header::HOST, host)
        .body(())
    else {
        return;
    };
    let _ = target::check(&request);
    let gate = GateState::new(Gate {
        allowed_hosts: vec!["bedrock-broker.internal".to_owned()],
        token: None,
        body_read_timeout: Duration::from_secs(1),
        body_min_rate: None,
        body_budget: 1,
        body_budget_wait: Duration::ZERO,
        max_requests: 1,
    });
    let _ = gate.check(&request);
    let _ = classify(request.uri().path());
}

/// An upstream's error body and a secret the request carried, which the
/// first byte sizes (16 to 63 bytes, as AWS writes keys: base64). After
/// blanking, neither the secret nor any 8-byte piece of it (one with 4 or
/// more different bytes, as `blank` promises) is left as written, and a
/// body left alone held none.
pub fn error_body(data: &[u8]) {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let size = 16 + usize::from(size % 48);
    if rest.len() < size {
        return;
    }
    let (secret, body) = rest.split_at(size);
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || b"+/=".contains(b);
    // The blank says "redacted": a secret holding that word would be
    // found in it.
    if !secret.iter().all(base64) || memmem::find(secret, b"redacted").is_some() {
        return;
    }
    let blanked = super::blank::blank(body, &[secret]);
    let written = blanked.as_deref().unwrap_or(body);
    assert!(
        memmem::find(written, secret).is_none(),
        "the secret stayed in {:?}",
        String::from_utf8_lossy(written)
    );
    for piece in secret.windows(8) {
        let distinct = piece
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert!(
            distinct < 4 || memmem::find(written, piece).is_none(),
            "{:?} of the secret stayed in {:?}",
            String::from_utf8_lossy(piece),
            String::from_utf8_lossy(written)
        );
    }
    if let Some(out) = &blanked {
        assert_ne!(out.as_slice(), body, "blanked, yet nothing changed");
    }
}

/// An answer's body read by a usage tap, as Bedrock's would be: the first
/// byte picks its content type and coding (a compressed body is decoded
/// for the tap by zlib-rs, code with `unsafe` fed by the upstream), the
/// second the size of the frames it arrives in.
pub fn usage_tap(data: &[u8]) {
    let [kind, step, body @ ..] = data else {
        return;
    };
    let content_type = [
        "application/json",
        "text/event-stream",
        "application/vnd.amazon.eventstream",
    ][usize::from(kind % 3)];
    let coding = [None, Some("gzip"), Some("deflate")][usize::from(kind / 3 % 3)];
    let _ = super::bench_tap(&answer_headers(content_type, coding), &frames(body, *step));
}

fn answer_headers(content_type: &'static str, coding: Option<&'static str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if let Some(coding) = coding {
        h.insert(
            http::header::CONTENT_ENCODING,
            HeaderValue::from_static(coding),
        );
    }
    h
}

fn frames(body: &[u8], step: u8) -> Vec<bytes::Bytes> {
    body.chunks(usize::from(step).max(1))
        .map(bytes::Bytes::copy_from_slice)
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::proxy::usage::decode::{compress, Coding};

    /// Bodies a fuzzer would need long to build: pieces of the secret cut
    /// anywhere, between escape starters, half escapes and other bytes.
    fn error_input() -> impl Strategy<Value = Vec<u8>> {
        "[A-Za-z0-9+/=]{16,63}".prop_flat_map(|secret| {
            let secret = secret.into_bytes();
            let n = secret.len();
            let part = prop_oneof![
                (0..n, 1..=n).prop_map({
                    let secret = secret.clone();
                    move |(at, len)| secret[at..(at + len).min(n)].to_vec()
                }),
                prop::sample::select(vec![
                    &b"\\"[..],
                    b"\\u00",
                    b"\\/",
                    b"%2",
                    b"%25",
                    b"&#",
                    b"&#x",
                    b";",
                    b"&plus;",
                    b"\\u002B",
                    b"** redacted **",
                    b"////////",
                ])
                .prop_map(<[u8]>::to_vec),
                prop::collection::vec(any::<u8>(), 0..4),
            ];
            prop::collection::vec(part, 0..12).prop_map(move |parts| {
                // `error_body` reads the secret's size from the first byte.
                let mut data = vec![u8::try_from(n - 16).unwrap_or(0)];
                data.extend_from_slice(&secret);
                data.extend(parts.concat());
                data
            })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn error_bodies_keep_nothing_of_the_secret(data in error_input()) {
            error_body(&data);
        }

        #[test]
        fn any_bytes_are_answered_without_a_panic(data in prop::collection::vec(any::<u8>(), 0..600)) {
            event_stream(&data);
            provider_data(&data);
            request_target(&data);
            error_body(&data);
            usage_tap(&data);
        }
    }

    proptest! {
        // Each case runs the tap six times over up to 12 KB.
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn a_compressed_answer_gives_the_usage_of_the_plain_one(
            chunks in prop::collection::vec("[a-z \\\\\"]{0,300}", 0..40),
            members in 1usize..4,
            step in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            // An OpenAI stream of arbitrary text, usage last: gzipped (in
            // one member or several, split anywhere) or deflated, in any
            // framing, the tap counts what it counts on the plain body;
            // cut short, it counts nothing it did not read, and never
            // panics.
            let mut plain = Vec::new();
            for text in &chunks {
                let text = text.replace('\\', "\\\\").replace('"', "\\\"");
                plain.extend(format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n").bytes());
            }
            plain.extend(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n");
            let sse = "text/event-stream";
            let want = crate::proxy::bench_tap(&answer_headers(sse, None), &frames(&plain, step));
            prop_assert_eq!(want, (7, 3));
            let mut gzipped = Vec::new();
            let size = plain.len().div_ceil(members).max(1);
            for member in plain.chunks(size) {
                gzipped.extend(compress(Coding::Gzip, member));
            }
            let deflated = compress(Coding::Deflate, &plain);
            for (coding, body) in [("gzip", &gzipped), ("deflate", &deflated)] {
                let got = crate::proxy::bench_tap(&answer_headers(sse, Some(coding)), &frames(body, step));
                prop_assert_eq!(got, want, "{}", coding);
                let short = &body[..cut.index(body.len())];
                let got = crate::proxy::bench_tap(&answer_headers(sse, Some(coding)), &frames(short, step));
                prop_assert!(got == (0, 0) || got == want, "{} cut: {:?}", coding, got);
            }
        }
    }
}
