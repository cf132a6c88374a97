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
/// Where Anthropic's clients (and AWS's examples for Mantle) put a key.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// Carries the proxy token for clients that cannot set `Authorization`.
pub const PROXY_TOKEN: HeaderName = super::gate::PROXY_TOKEN_HEADER;
/// Marks errors the broker generated, with a short code.
pub const BROKER_ERROR: HeaderName = HeaderName::from_static("x-bedrock-broker-error");

const X_AMZ_DATE: HeaderName = HeaderName::from_static("x-amz-date");
pub const X_AMZ_SECURITY_TOKEN: HeaderName = HeaderName::from_static("x-amz-security-token");
pub const X_AMZ_CONTENT_SHA256: HeaderName = HeaderName::from_static("x-amz-content-sha256");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The AWS error code an upstream answer carries, if any.
pub const X_AMZN_ERRORTYPE: HeaderName = HeaderName::from_static("x-amzn-errortype");

/// AWS's codes for a request whose signature it refused (its answer
/// quotes the canonical request it expected).
pub const SIGNATURE_ERRORS: &[&str] = &[
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "IncompleteSignatureException",
];

/// Whether the upstream's `x-amzn-errortype` names one of `codes`.
pub fn aws_error_is(headers: &HeaderMap, codes: &[&'static str]) -> bool {
    aws_error_among(headers, codes).is_some()
}

/// Which of `codes` the upstream's `x-amzn-errortype` names, if any. AWS
/// appends `:<namespace>` to the code, so a code matches only whole.
pub fn aws_error_among(headers: &HeaderMap, codes: &[&'static str]) -> Option<&'static str> {
    let kind = headers.get(X_AMZN_ERRORTYPE)?.to_str().ok()?;
    codes.iter().copied().find(|code| {
        kind.strip_prefix(code)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'))
    })
}

const HOP_BY_HOP_COUNT: usize = 9;
/// The bits of [`present`] that mark [`HOP_BY_HOP`] names.
const HOP_BY_HOP_BITS: u32 = (1 << HOP_BY_HOP_COUNT) - 1;
/// `Connection`'s and `Transfer-Encoding`'s places in [`HOP_BY_HOP`].
const CONNECTION_AT: usize = 0;
const TRANSFER_ENCODING_AT: usize = 7;

/// Headers that describe one connection, not the message.
///
/// `static`, not `const`: `HeaderName` has drop glue, so a `const` array
/// is not promoted and every `&HOP_BY_HOP` would build the nine names on
/// the stack and drop them again, on every request.
static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
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

/// What else never goes upstream: the client's `Host`, its authentication
/// (`Authorization`, Anthropic's `x-api-key`) and SigV4 headers, the
/// provider data (it may hold a token), `Content-Length` (the body is
/// re-framed) and `Expect` (hyper already answered `100-continue`).
/// `static` for the reason given at [`HOP_BY_HOP`].
static NOT_FORWARDED: [HeaderName; 10] = [
    header::HOST,
    header::AUTHORIZATION,
    X_AMZ_DATE,
    X_AMZ_SECURITY_TOKEN,
    X_AMZ_CONTENT_SHA256,
    PROVIDER_DATA,
    PROXY_TOKEN,
    header::CONTENT_LENGTH,
    header::EXPECT,
    X_API_KEY,
];

/// Which of [`HOP_BY_HOP`] (bits 0–8) and [`NOT_FORWARDED`] (bits 9–18)
/// `headers` holds.
///
/// One pass over the few keys a message has instead of a hashed lookup
/// per name (most of the names are never there), and one `match` per key
/// instead of comparing it with each name. With `keep-alive` skipped in
/// [`remove_connection_listed`] this saved about 4,700 of the 85,000
/// instructions a request takes outside SHA-256 (callgrind).
fn present(headers: &HeaderMap) -> u32 {
    headers
        .keys()
        .fold(0, |found, key| found | bit(key.as_str()))
}

/// A name's bit for [`present`], 0 for every other name. The tests check
/// it against the two tables.
fn bit(name: &str) -> u32 {
    let place = match name {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => 8,
        "host" => 9,
        "authorization" => 10,
        "x-amz-date" => 11,
        "x-amz-security-token" => 12,
        "x-amz-content-sha256" => 13,
        "x-llamastack-provider-data" => 14,
        "x-bedrock-broker-token" => 15,
        "content-length" => 16,
        "expect" => 17,
        "x-api-key" => 18,
        _ => return 0,
    };
    1 << place
}

/// Removes the headers of `names` that `found` marks, bit 0 for the first.
fn remove_found(headers: &mut HeaderMap, names: &[HeaderName], found: u32) {
    if found == 0 {
        return;
    }
    for (i, name) in names.iter().enumerate() {
        if found & (1 << i) != 0 {
            headers.remove(name);
        }
    }
}

/// The trimmed items of a comma-separated list header, over all its
/// values, as bytes: one item with a byte past ASCII (obs-text, which
/// field values may hold) must not hide the others in its value.
fn list_items(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Removes the headers a `Connection` header names (RFC 9110 §7.6.1).
fn remove_connection_listed(headers: &mut HeaderMap) {
    // Hop-by-hop names (`keep-alive`, what it nearly always lists) go with
    // the table anyway: no name to parse, nothing to collect.
    let named: Vec<HeaderName> = list_items(headers, header::CONNECTION)
        .filter(|n| {
            !HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(n))
        })
        .filter_map(|n| HeaderName::from_bytes(n).ok())
        .collect();
    for name in &named {
        headers.remove(name);
    }
}

/// Removes the hop-by-hop headers `found` (from [`present`]) marks, and
/// any the `Connection` header names.
fn remove_hop_by_hop(headers: &mut HeaderMap, found: u32) {
    if found & (1 << CONNECTION_AT) != 0 {
        remove_connection_listed(headers);
    }
    remove_found(headers, &HOP_BY_HOP, found & HOP_BY_HOP_BITS);
}

/// Prepares upstream response headers for the client: hop-by-hop headers
/// go, and with `Transfer-Encoding` so does `Content-Length`. hyper decoded
/// the body by its transfer coding (RFC 9112 §6.3: it wins over the
/// length), and the body goes back with framing of its own; a stale length
/// next to it would leave the client waiting for bytes that never come.
///
/// An answer that has no body by its status (1xx, 204, 304) loses its
/// `Content-Length` too: a 204 must not carry one, and hyper's server
/// panics in a debug build on a length its empty body contradicts.
pub fn prepare_response_headers(status: http::StatusCode, headers: &mut HeaderMap) {
    let found = present(headers);
    let bodiless = status.is_informational()
        || status == http::StatusCode::NO_CONTENT
        || status == http::StatusCode::NOT_MODIFIED;
    if bodiless || found & (1 << TRANSFER_ENCODING_AT) != 0 {
        headers.remove(header::CONTENT_LENGTH);
    }
    remove_hop_by_hop(headers, found);
}

/// Content codings the usage tap decodes (`usage/decode.rs`).
const READABLE_CODINGS: [&str; 4] = ["gzip", "x-gzip", "deflate", "identity"];

/// Narrows `Accept-Encoding` to the codings the usage tap can read, so
/// Bedrock never answers in one (br, zstd) that would hide token usage.
/// Only ever removes: the client still gets a coding it asked for, or
/// `identity`, which every client accepts.
fn limit_accept_encoding(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::ACCEPT_ENCODING).iter();
    let (Some(first), second) = (values.next(), values.next()) else {
        return;
    };
    // What clients usually send ("gzip, deflate") is checked and kept as
    // it is, not rebuilt.
    if second.is_none()
        && first
            .to_str()
            .is_ok_and(|v| v.split(',').all(|item| readable(item.trim())))
    {
        return;
    }
    let kept: Vec<String> = list_items(headers, header::ACCEPT_ENCODING)
        .filter_map(|item| std::str::from_utf8(item).ok())
        .filter(|item| readable(item))
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

/// Whether an `Accept-Encoding` item (`coding[;q=...]`, trimmed) names a
/// coding the usage tap reads.
fn readable(item: &str) -> bool {
    let coding = item.split(';').next().unwrap_or("").trim();
    READABLE_CODINGS
        .iter()
        .any(|c| c.eq_ignore_ascii_case(coding))
}

/// Prepares client request headers for the upstream: removes hop-by-hop
/// headers, `Host`, the client's `Authorization`, `x-api-key` and SigV4
/// headers, the provider-data header (it may hold a token), `Content-Length` (the body is
/// re-framed) and `Expect` (hyper already answered `100-continue` to the
/// client; the upstream gets the body without asking), and narrows
/// `Accept-Encoding` to what the usage tap reads.
pub fn prepare_request_headers(headers: &mut HeaderMap) {
    let found = present(headers);
    remove_hop_by_hop(headers, found);
    remove_found(headers, &NOT_FORWARDED, found >> HOP_BY_HOP_COUNT);
    limit_accept_encoding(headers);
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
        prepare_response_headers(http::StatusCode::OK, &mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("5"));
        prepare_response_headers(http::StatusCode::OK, &mut h);
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
            ("gzip, deflate", Some("gzip, deflate")),
            // Kept byte for byte: rebuilding would have added a space.
            ("gzip,deflate", Some("gzip,deflate")),
            (
                "gzip;q=1.0, identity;q=0.5",
                Some("gzip;q=1.0, identity;q=0.5"),
            ),
            ("gzip, ", Some("gzip")),
            ("", Some("identity")),
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

    #[test]
    fn each_tabled_name_has_its_own_bit_and_no_other_name_has_one() {
        assert_eq!(HOP_BY_HOP[CONNECTION_AT], header::CONNECTION);
        assert_eq!(HOP_BY_HOP[TRANSFER_ENCODING_AT], header::TRANSFER_ENCODING);
        for (i, name) in HOP_BY_HOP.iter().chain(&NOT_FORWARDED).enumerate() {
            assert_eq!(bit(name.as_str()), 1 << i, "{name}");
        }
        for other in [
            "content-type",
            "accept",
            "x-amz-target",
            "hosts",
            "",
            "Host",
        ] {
            assert_eq!(bit(other), 0, "{other}");
        }
    }

    /// The one-pass removal leaves exactly what a lookup per name did.
    #[test]
    fn each_stripped_name_goes_with_all_its_values_and_nothing_else_does() {
        let kept = [("content-type", "application/json"), ("x-custom", "1")];
        for stripped in HOP_BY_HOP.iter().chain(&NOT_FORWARDED) {
            let mut h = HeaderMap::new();
            for (k, v) in kept {
                h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
            }
            h.append(stripped.clone(), HeaderValue::from_static("a"));
            h.append(stripped.clone(), HeaderValue::from_static("b"));
            let mut response = h.clone();
            prepare_request_headers(&mut h);
            let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, ["content-type", "x-custom"], "request, {stripped}");
            prepare_response_headers(http::StatusCode::OK, &mut response);
            let hop_by_hop = HOP_BY_HOP.contains(stripped);
            assert_eq!(
                response.contains_key(stripped),
                !hop_by_hop,
                "response, {stripped}"
            );
            assert_eq!(response.len(), kept.len() + 2 * usize::from(!hop_by_hop));
        }
    }

    /// The names left of `h` once prepared as a request and as a response.
    fn assert_both_ways_leave(h: HeaderMap, expected: &[&str]) {
        let mut request = h.clone();
        let mut response = h;
        prepare_request_headers(&mut request);
        prepare_response_headers(http::StatusCode::OK, &mut response);
        for h in [request, response] {
            let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, expected);
        }
    }

    #[test]
    fn a_connection_header_takes_the_headers_it_names_with_it() {
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_static("close, Keep-Alive, X-Private"),
        );
        h.append("connection", HeaderValue::from_static("x-other"));
        h.append("keep-alive", HeaderValue::from_static("timeout=5"));
        h.append("x-private", HeaderValue::from_static("1"));
        h.append("x-other", HeaderValue::from_static("1"));
        h.append("x-public", HeaderValue::from_static("1"));
        assert_both_ways_leave(h, &["x-public"]);
        // A name the proxy would keep goes when Connection lists it.
        let mut response = HeaderMap::new();
        response.append("connection", HeaderValue::from_static("content-length"));
        response.append("content-length", HeaderValue::from_static("2"));
        prepare_response_headers(http::StatusCode::OK, &mut response);
        assert!(response.is_empty(), "{response:?}");
    }

    #[test]
    fn one_odd_byte_in_a_connection_header_does_not_keep_what_it_names() {
        // RFC 9110 allows obs-text in field values; the value was skipped
        // whole, and the header it named went upstream, signed.
        let mut h = HeaderMap::new();
        h.append(
            "connection",
            HeaderValue::from_bytes(b"x-secret, caf\xe9").unwrap(),
        );
        h.append("x-secret", HeaderValue::from_static("s3cr3t"));
        h.append("x-public", HeaderValue::from_static("1"));
        assert_both_ways_leave(h, &["x-public"]);
    }
}
