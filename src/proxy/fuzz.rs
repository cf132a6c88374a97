//! Entry points for the fuzz targets (`fuzz/`, `cargo +nightly fuzz`):
//! the proxy's parsers of untrusted input, driven by arbitrary bytes. Each
//! must return (any answer) and never panic.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_smithy_runtime_api::client::identity::Identity;
use http::{HeaderMap, HeaderValue, Request};

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
