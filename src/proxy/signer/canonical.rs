//! The canonical request of SigV4 for every service but S3, written
//! piece by piece into one buffer: no intermediate strings for the common
//! request.
//!
//! What is signed is exactly what aws-sigv4 signs for the same request
//! (the differential test in `tests/sigv4_differential.rs` holds it to
//! that): the path with empty and dot segments removed, then encoded again
//! (so `%2F` is signed as `%252F`); the query decoded and strictly
//! re-encoded, pairs sorted; the headers lower-case (which `http` already
//! guarantees), sorted, each value's spaces trimmed and runs of spaces
//! collapsed, repeated headers joined with `,`.

use http::{HeaderMap, Method, Uri};

use super::encode::encode;
use super::query;

/// Headers forwarded but never signed: ones an egress proxy or tracing
/// middleware between us and AWS may add to or rewrite (a service mesh
/// sidecar creates a child span in `traceparent`, for example), since
/// signing them would turn harmless rewrites into signature failures; and
/// the AWS SDKs' per-attempt bookkeeping (`amz-sdk-invocation-id`, new on
/// every call, and `amz-sdk-request`, the attempt number). Those two sort
/// before the session token, so signing them made every SDK request
/// re-hash its whole canonical request (`prefix.rs`); AWS requires only
/// `host` and the `x-amz-*` headers to be signed.
pub const UNSIGNED_HEADERS: [&str; 17] = [
    "authorization",
    "user-agent",
    "x-amzn-trace-id",
    "transfer-encoding",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
    "x-forwarded-for",
    "amz-sdk-invocation-id",
    "amz-sdk-request",
];

/// Whether a header is one of [`UNSIGNED_HEADERS`] (a `match`, which the
/// compiler turns into a length switch, instead of one comparison each).
fn is_unsigned(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "user-agent"
            | "x-amzn-trace-id"
            | "transfer-encoding"
            | "traceparent"
            | "tracestate"
            | "baggage"
            | "b3"
            | "x-b3-traceid"
            | "x-b3-spanid"
            | "x-b3-parentspanid"
            | "x-b3-sampled"
            | "x-b3-flags"
            | "x-request-id"
            | "x-forwarded-for"
            | "amz-sdk-invocation-id"
            | "amz-sdk-request"
    )
}

pub const X_AMZ_DATE: &str = "x-amz-date";
pub const X_AMZ_SECURITY_TOKEN: &str = "x-amz-security-token";

/// The sorted signed headers of one request: one entry per signed value,
/// so a repeated header is several entries in a row.
///
/// The header map is walked once and never looked up by name: with a
/// dozen headers, hashing each name twice was a fifth of the signer's time.
#[derive(Debug)]
pub struct SignedHeaders<'a> {
    entries: Vec<(&'a str, &'a str)>,
}

/// A header value the signer signs, as for aws-sigv4 through
/// [`super::super::sigv4`]: others are forwarded but not signed, and
/// neither are the other values of their name.
fn signable(value: &http::HeaderValue) -> Option<&str> {
    crate::proxy::sigv4::signable_value(value)
}

impl<'a> SignedHeaders<'a> {
    /// The request's signable headers plus the ones signing adds; `host`
    /// from `uri` unless the request has its own.
    pub fn new(
        headers: &'a HeaderMap,
        host: &'a str,
        date: &'a str,
        token: Option<&'a str>,
    ) -> Self {
        let mut entries = Vec::with_capacity(headers.len() + 3);
        let mut has_host = false;
        let mut unsignable: Vec<&str> = Vec::new();
        // `iter` yields a name's values in their order; the stable sort
        // below keeps it, which is the order SigV4 joins them in.
        for (name, value) in headers {
            let n = name.as_str();
            let replaced = n == X_AMZ_DATE || (token.is_some() && n == X_AMZ_SECURITY_TOKEN);
            if replaced || is_unsigned(n) {
                continue;
            }
            let Some(value) = signable(value) else {
                unsignable.push(n);
                continue;
            };
            has_host |= n == "host";
            entries.push((n, value));
        }
        // A name is signed with all its values or not at all, as for
        // aws-sigv4 through [`super::super::sigv4`].
        if !unsignable.is_empty() {
            entries.retain(|(n, _)| !unsignable.contains(n));
            has_host = entries.iter().any(|(n, _)| *n == "host");
        }
        if !has_host {
            entries.push(("host", host));
        }
        entries.push((X_AMZ_DATE, date));
        if let Some(token) = token {
            entries.push((X_AMZ_SECURITY_TOKEN, token));
        }
        entries.sort_by(|a, b| a.0.cmp(b.0));
        Self { entries }
    }

    /// `content-type;host;x-amz-date`.
    pub fn write_names(&self, sink: &mut Vec<u8>) {
        let mut previous = None;
        for (name, _) in &self.entries {
            if previous == Some(name) {
                continue;
            }
            if previous.is_some() {
                sink.extend_from_slice(b";");
            }
            sink.extend_from_slice(name.as_bytes());
            previous = Some(name);
        }
    }

    /// One `name:value\n` line per header, repeated values joined by `,`.
    fn write_lines(&self, sink: &mut Vec<u8>) {
        let mut previous = None;
        for (name, value) in &self.entries {
            if previous == Some(name) {
                sink.extend_from_slice(b",");
            } else {
                if previous.is_some() {
                    sink.extend_from_slice(b"\n");
                }
                sink.extend_from_slice(name.as_bytes());
                sink.extend_from_slice(b":");
            }
            write_trimmed(sink, value.as_bytes());
            previous = Some(name);
        }
        sink.extend_from_slice(b"\n");
    }
}

/// A header value with leading and trailing spaces removed and runs of
/// spaces collapsed to one (values with a tab are not signed).
///
/// Spaces are found with `memchr`: a session token is most of the
/// canonical request, and a byte-at-a-time scan of it was a tenth of the
/// signer's time.
fn write_trimmed(sink: &mut Vec<u8>, value: &[u8]) {
    let ends = memchr::memchr_iter(b' ', value).chain(std::iter::once(value.len()));
    let mut start = 0;
    let mut first = true;
    for end in ends {
        let word = &value[start..end];
        start = end + 1;
        if word.is_empty() {
            continue;
        }
        if !first {
            sink.extend_from_slice(b" ");
        }
        sink.extend_from_slice(word);
        first = false;
    }
}

/// Writes the canonical path: `uri_path` with empty and `.` segments
/// removed and `..` applied (RFC 3986 §5.2.4), then percent-encoded again.
fn write_path(sink: &mut Vec<u8>, uri_path: &str) {
    let path = if uri_path.is_empty() { "/" } else { uri_path };
    if is_normal(path) {
        if !path.starts_with('/') {
            sink.extend_from_slice(b"/");
        }
        encode(sink, path.as_bytes(), true);
    } else {
        write_normalised(sink, path);
    }
}

/// The general case of [`write_path`]: segment by segment.
fn write_normalised(sink: &mut Vec<u8>, path: &str) {
    let segments = path.split('/').filter(|s| !s.is_empty() && *s != ".");
    let kept: Vec<&str> = if path.split('/').any(|s| s == "..") {
        let mut stack = Vec::new();
        for s in segments {
            if s == ".." {
                stack.pop();
            } else {
                stack.push(s);
            }
        }
        stack
    } else {
        segments.collect()
    };
    for s in &kept {
        sink.extend_from_slice(b"/");
        encode(sink, s.as_bytes(), false);
    }
    let ends_with_slash = ["/", "/.", "/./", "/..", "/../"]
        .iter()
        .any(|end| path.ends_with(end));
    if kept.is_empty() || ends_with_slash {
        sink.extend_from_slice(b"/");
    }
}

/// Whether `path` has no empty segment between two slashes and no `.` or
/// `..` segment: nothing to normalise. Model ids have dots (`anthropic.
/// claude-...`), so this looks at each dot rather than for any; slashes and
/// dots are found in one scan (a `memmem` search for `//` set up a searcher
/// on every request).
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    let segment_end = |rest: &[u8]| matches!(rest.first(), None | Some(b'/'));
    memchr::memchr2_iter(b'/', b'.', b).all(|i| {
        let rest = &b[i + 1..];
        if b[i] == b'/' {
            return rest.first() != Some(&b'/');
        }
        let starts_segment = i == 0 || b[i - 1] == b'/';
        let dot_segment =
            segment_end(rest) || (rest.first() == Some(&b'.') && segment_end(&rest[1..]));
        !(starts_segment && dot_segment)
    })
}

/// Everything the canonical request is made of.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub signed: &'a SignedHeaders<'a>,
    pub payload_sha256_hex: &'a str,
}

impl Request<'_> {
    /// Writes the whole canonical request (no trailing newline).
    pub fn write(&self, sink: &mut Vec<u8>) {
        self.write_prefix(sink);
        sink.extend_from_slice(self.payload_sha256_hex.as_bytes());
    }

    /// Writes all but the last line, the payload hash: the part that
    /// similar requests in the same second share.
    pub fn write_prefix(&self, sink: &mut Vec<u8>) {
        sink.extend_from_slice(self.method.as_str().as_bytes());
        sink.extend_from_slice(b"\n");
        write_path(sink, self.uri.path());
        sink.extend_from_slice(b"\n");
        query::write_canonical(sink, self.uri.query());
        sink.extend_from_slice(b"\n");
        self.signed.write_lines(sink);
        sink.extend_from_slice(b"\n");
        self.signed.write_names(sink);
        sink.extend_from_slice(b"\n");
    }
}

/// The `host` value signed when the request has none: the authority,
/// without the port when it is the scheme's default.
pub fn host(uri: &Uri) -> Option<&str> {
    let authority = uri.authority()?;
    let port = authority.port();
    let default_port = matches!(
        (uri.scheme_str(), port.as_ref().map(|p| p.as_str())),
        (Some("http"), Some("80")) | (Some("https"), Some("443"))
    );
    Some(if default_port {
        authority.host()
    } else {
        authority.as_str()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> String {
        let mut out = Vec::new();
        write_path(&mut out, p);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn paths_are_normalised_then_encoded_again() {
        assert_eq!(path("/model/a.b:0/converse"), "/model/a.b%3A0/converse");
        assert_eq!(path("/a//b/"), "/a/b/");
        assert_eq!(path("//"), "/");
        assert_eq!(path("/a/./b/../c/.."), "/a/");
        assert_eq!(path("/../.."), "/");
        assert_eq!(path("/x%2Fy%25"), "/x%252Fy%2525");
        assert_eq!(path(""), "/");
    }

    #[test]
    fn only_empty_and_dot_segments_need_normalising() {
        for normal in [
            "/",
            "/a",
            "/a/",
            "/model/a.b:0/converse",
            "/.a/b./a..b/...",
            "a/b",
            "a/",
            "*",
            "/a.",
            "/%2E/x",
            "/x%2F.%2E",
        ] {
            assert!(is_normal(normal), "{normal}");
            // What the shortcut writes is what normalising would.
            let mut slow = Vec::new();
            write_normalised(&mut slow, normal);
            assert_eq!(path(normal).as_bytes(), slow, "{normal}");
        }
        for not in [
            "//", "/a//b", "/.", "/./a", "/a/.", "/..", "/a/../b", "/a/..", "./a", "..",
        ] {
            assert!(!is_normal(not), "{not}");
        }
    }

    proptest::proptest! {
        /// The one-scan check against its definition, on paths made of the
        /// bytes it looks at.
        #[test]
        fn is_normal_means_no_double_slash_and_no_dot_segment(
            path in "[/.a%]{0,12}"
        ) {
            let defined =
                !path.contains("//") && path.split('/').all(|s| s != "." && s != "..");
            proptest::prop_assert_eq!(is_normal(&path), defined, "{}", path);
        }
    }

    #[test]
    fn the_unsigned_list_and_its_match_agree() {
        for name in UNSIGNED_HEADERS {
            assert!(is_unsigned(name), "{name}");
        }
        assert!(!is_unsigned("content-type"));
    }

    /// Two calls of one AWS SDK client differ only in the SDK's attempt
    /// headers: their canonical requests must share the prefix that
    /// `prefix.rs` reuses, or every SDK request re-hashes the session token.
    #[test]
    fn sdk_attempt_headers_leave_the_prefix_alike() {
        let uri: Uri = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse"
            .parse()
            .unwrap();
        let call = |id: &'static str, attempt: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(
                "content-type",
                http::HeaderValue::from_static("application/json"),
            );
            h.insert("amz-sdk-invocation-id", http::HeaderValue::from_static(id));
            h.insert("amz-sdk-request", http::HeaderValue::from_static(attempt));
            h
        };
        let token = "t".repeat(700);
        let prefix = |headers: &HeaderMap| {
            let signed = SignedHeaders::new(headers, "h", "20261201T000000Z", Some(&token));
            let mut out = Vec::new();
            Request {
                method: &Method::POST,
                uri: &uri,
                signed: &signed,
                payload_sha256_hex: "0",
            }
            .write_prefix(&mut out);
            String::from_utf8(out).unwrap()
        };
        let first = prefix(&call(
            "3f1c2a9e-0000-4000-8000-000000000001",
            "attempt=1; max=3",
        ));
        let next = prefix(&call(
            "b7d4e6f0-0000-4000-8000-000000000002",
            "attempt=2; max=3",
        ));
        assert_eq!(first, next);
        assert!(!first.contains("amz-sdk"), "{first}");
    }

    #[test]
    fn header_values_lose_only_spaces() {
        let mut out = Vec::new();
        write_trimmed(&mut out, b"  a   b\tc  ");
        assert_eq!(out, b"a b\tc");
        for (value, trimmed) in [
            (&b""[..], &b""[..]),
            (b"   ", b""),
            (b"x", b"x"),
            (b"x ", b"x"),
            (b" x", b"x"),
            (b"a b", b"a b"),
        ] {
            let mut out = Vec::new();
            write_trimmed(&mut out, value);
            assert_eq!(out, trimmed, "{value:?}");
        }
    }
}
