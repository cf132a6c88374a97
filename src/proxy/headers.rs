//! Which headers cross the proxy.
//!
//! Requests: hop-by-hop headers never cross (RFC 9110 §7.6.1); the client's
//! own authentication never reaches AWS unless it is a Bedrock API key we
//! were asked to pass through; `Host` is the upstream's; `Accept-Encoding`
//! keeps only the codings the usage tap can read. Everything else is
//! forwarded as received, and signed.

use http::header::{self, HeaderMap, HeaderName};

/// llama-stack's per-request provider data (may carry a bearer token).
pub const PROVIDER_DATA: HeaderName = HeaderName::from_static("x-llamastack-provider-data");
/// Carries the proxy token for clients that cannot set `Authorization`.
pub const PROXY_TOKEN: HeaderName = super::gate::PROXY_TOKEN_HEADER;
/// Marks errors the broker generated, with a short code.
pub const BROKER_ERROR: HeaderName = HeaderName::from_static("x-bedrock-broker-error");

const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
pub const X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The AWS error code an upstream answer carries, if any.
pub const X_AMZN_ERRORTYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");

/// Whether the upstream's `x-amzn-errortype` names one of `codes`. AWS
/// appends `:<namespace>` to the code, so a code matches only whole.
pub fn aws_error_is(headers: &HeaderMap, codes: &[&str]) -> bool {
    let Some(kind) = headers.get(X_AMZN_ERRORTYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    codes.iter().any(|code| {
        kind.strip_prefix(code)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
    })
}

/// Headers that describe one connection, not the message.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests have no Connection header: skip collecting its list.
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in &named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Prepares upstream response headers for the client: hop-by-hop headers
/// go, and with `Transfer-Encoding` so does `Content-Length`. hyper decoded
/// the body by its transfer coding (RFC 9112 §6.3: it wins over the
/// length), and the body goes back with framing of its own; a stale length
/// next to it would leave the client waiting for bytes that never come.
pub fn prepare_response_headers(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    remove_hop_by_hop(headers);
}

/// Content codings the usage tap decodes (`usage/decode.rs`).
const READABLE_CODINGS: [&str; 4] = ["gzip", "x-gzip", "deflate", "identity"];

/// Narrows `Accept-Encoding` to the codings the usage tap can read, so
/// Bedrock never answers in one (br, zstd) that would hide token usage.
/// Only ever removes: the client still gets a coding it asked for, or
/// `identity`, which every client accepts.
fn limit_accept_encoding(headers: &mut HeaderMap) {
    if !headers.contains_key(header::ACCEPT_ENCODING) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|item| {
            let coding = item.split(';').next().unwrap_or("").trim();
            READABLE_CODINGS
                .iter()
                .any(|c| c.eq_ignore_ascii_case(coding))
        })
        .map(str::to_owned)
        .collect();
    let value = if kept.is_empty() {
        "identity".to_owned()
    } else {
        kept.join(", ")
    };
    if let Ok(value) = http::HeaderValue::from_str(&value) {
        headers.insert(header::ACCEPT_ENCODING, value);
    }
}

/// Prepares client request headers for the upstream: removes hop-by-hop
/// headers, `Host`, the client's `Authorization` and SigV4 headers, the
/// provider-data header (it may hold a token), `Content-Length` (the body is
/// re-framed) and `Expect` (hyper already answered `100-continue` to the
/// client; the upstream gets the body without asking), and narrows
/// `Accept-Encoding` to what the usage tap reads.
pub fn prepare_request_headers(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    limit_accept_encoding(headers);
    for name in [
        header::HOST,
        header::AUTHORIZATION,
        X_AMZ_DATE,
        X_AMZ_SECURITY_TOKEN,
        X_AMZ_CONTENT_SHA256,
        PROVIDER_DATA,
        PROXY_TOKEN,
        header::CONTENT_LENGTH,
        header::EXPECT,
    ] {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn a_transfer_coding_drops_a_stale_content_length() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        prepare_response_headers(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("5"));
        prepare_response_headers(&mut h);
        assert_eq!(h["content-length"], "5");
    }

    #[test]
    fn accept_encoding_keeps_only_codings_the_usage_tap_reads() {
        for (sent, forwarded) in [
            ("gzip, deflate, br, zstd", Some("gzip, deflate")),
            ("br;q=1.0, GZIP;q=0.5", Some("GZIP;q=0.5")),
            ("br", Some("identity")),
            ("*", Some("identity")),
            ("identity", Some("identity")),
        ] {
            let mut h = HeaderMap::new();
            h.insert("accept-encoding", HeaderValue::from_static(sent));
            prepare_request_headers(&mut h);
            assert_eq!(
                h.get("accept-encoding").and_then(|v| v.to_str().ok()),
                forwarded,
                "{sent}"
            );
        }
        let mut h = HeaderMap::new();
        prepare_request_headers(&mut h);
        assert!(h.get("accept-encoding").is_none());
    }

    #[test]
    fn strips_auth_and_hop_by_hop_but_keeps_end_to_end_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("host", "127.0.0.1:9787"),
            ("authorization", "Bearer sk-dummy"),
            ("x-amz-date", "20260101T000000Z"),
            ("x-amz-security-token", "tok"),
            ("x-amz-content-sha256", "abc"),
            ("x-llamastack-provider-data", "{}"),
            ("x-bedrock-broker-token", "secret-proxy-token"),
            ("connection", "keep-alive, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("content-length", "10"),
            ("expect", "100-continue"),
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
            ("x-amzn-bedrock-guardrailidentifier", "gr"),
            ("user-agent", "openai/python"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        prepare_request_headers(&mut h);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(
            left,
            [
                "accept",
                "content-type",
                "user-agent",
                "x-amzn-bedrock-guardrailidentifier"
            ]
        );
    }
}
