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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

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
        }
    }
}
