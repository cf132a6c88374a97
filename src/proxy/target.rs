//! Never an open proxy: the client never chooses the upstream host, and a
//! path is forwarded only if it is signed as what it means.

use http::header::TRANSFER_ENCODING;
use http::{Method, Request, Version};

use super::error::ProxyError;

/// Refuses request targets that would let the client choose the upstream
/// or would be signed differently from what they mean.
pub fn check<B>(request: &Request<B>) -> Result<(), ProxyError> {
    if request.method() == Method::CONNECT {
        return Err(ProxyError::Connect);
    }
    // HTTP/2 always carries scheme and authority; in HTTP/1 they mean an
    // absolute-form target, i.e. a client configured to use us as a proxy.
    if request.version() < Version::HTTP_2 && request.uri().authority().is_some() {
        return Err(ProxyError::AbsoluteForm);
    }
    // hyper undoes a final `chunked` whatever came before it: a coding
    // that changes the bytes (`gzip, chunked`) would go upstream as if
    // plain. Empty list members and `identity` change nothing.
    // Chunked twice is undone once: the body would keep one framing.
    let mut chunked = 0;
    for value in request.headers().get_all(TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|b| *b == b',') {
            let coding = coding.trim_ascii();
            if coding.eq_ignore_ascii_case(b"chunked") {
                chunked += 1;
            } else if !(coding.is_empty() || coding.eq_ignore_ascii_case(b"identity")) {
                return Err(ProxyError::TransferCoding);
            }
        }
    }
    if chunked > 1 {
        return Err(ProxyError::TransferCoding);
    }
    let path = request.uri().path();
    if !path.is_ascii() {
        return Err(ProxyError::InvalidPath(
            "the request path holds bytes past ASCII: percent-encode them (RFC 3986)".into(),
        ));
    }
    if !path.starts_with('/') {
        return Err(ProxyError::InvalidPath(
            "the request path must start with /".into(),
        ));
    }
    if has_dot_segment(path) {
        return Err(ProxyError::InvalidPath(
            "paths with . or .. segments are refused".into(),
        ));
    }
    Ok(())
}

/// Whether a segment of `path` means `.` or `..`: such a path is read by
/// servers as another one than the one signed.
pub fn has_dot_segment(path: &str) -> bool {
    // Split as bytes: `str::split` runs a `memchr` search per segment.
    path.as_bytes().split(|&b| b == b'/').any(is_dot_segment)
}

/// `.` or `..`, also percent-encoded (`%2e`, `.%2E`, ...), without allocating.
fn is_dot_segment(segment: &[u8]) -> bool {
    let mut rest = segment;
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, target: &str, version: Version) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(target)
            .version(version)
            .body(())
            .unwrap()
    }

    #[test]
    fn refuses_targets_the_client_could_use_to_pick_the_host() {
        let code = |m, t, v| {
            check(&req(m, t, v))
                .err()
                .map(|e| (e.status().as_u16(), e.code().name))
        };
        assert_eq!(
            code(Method::POST, "/model/a:0/converse", Version::HTTP_11),
            None
        );
        assert_eq!(
            code(
                Method::GET,
                "http://evil.example/openai/v1/models",
                Version::HTTP_11
            ),
            Some((400, "absolute_form_refused"))
        );
        assert_eq!(
            code(Method::CONNECT, "evil.example:443", Version::HTTP_11),
            Some((405, "connect_refused"))
        );
        assert_eq!(
            code(
                Method::GET,
                "http://127.0.0.1/openai/v1/models",
                Version::HTTP_2
            ),
            None
        );
        for bad in ["/model/../x", "/model/./x", "/a/%2E%2e/b", "/a/%2e", "/.."] {
            assert_eq!(
                code(Method::GET, bad, Version::HTTP_11),
                Some((400, "invalid_path")),
                "{bad}"
            );
        }
        assert_eq!(
            code(Method::GET, "/model/a.b..c/invoke", Version::HTTP_11),
            None
        );
    }

    #[test]
    fn a_transfer_coding_other_than_chunked_is_not_implemented() {
        // hyper takes any list ending in `chunked` and undoes that one: a
        // gzipped body went upstream as if plain, signed as such.
        let with = |te: &[&str]| {
            let mut b = Request::builder()
                .method(Method::POST)
                .uri("/model/m/converse");
            for v in te {
                b = b.header("transfer-encoding", *v);
            }
            check(&b.body(()).unwrap())
                .err()
                .map(|e| (e.status().as_u16(), e.code().name))
        };
        assert_eq!(with(&[]), None);
        assert_eq!(with(&["chunked"]), None);
        assert_eq!(with(&["Chunked"]), None);
        // Legal lists hyper reads as chunked: empty members, `identity`.
        for fine in [", chunked", " ,chunked", "identity, chunked"] {
            assert_eq!(with(&[fine]), None, "{fine}");
        }
        // Chunked twice: hyper undoes it once, and the body went upstream
        // still chunk-framed.
        for twice in [&["chunked, chunked"][..], &["chunked", "Chunked"]] {
            assert_eq!(
                with(twice),
                Some((501, "transfer_coding_unsupported")),
                "{twice:?}"
            );
        }
        for bad in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["x-custom , chunked"],
        ] {
            assert_eq!(
                with(bad),
                Some((501, "transfer_coding_unsupported")),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_path_with_bytes_past_ascii_is_refused() {
        // Forwarded raw, while the query's were percent-encoded: AWS's front
        // ends refuse such a target, and clients always encode them.
        let uri = http::Uri::try_from(&b"/model/caf\xc3\xa9/converse"[..]).unwrap();
        let request = Request::builder().uri(uri).body(()).unwrap();
        let e = check(&request).unwrap_err();
        assert_eq!((e.status().as_u16(), e.code().name), (400, "invalid_path"));
        assert!(e.to_string().contains("percent-encode"), "{e}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Path pieces that matter to the check: dots plain and encoded,
        /// separators plain and encoded, and ordinary text.
        fn piece() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                ".",
                "..",
                "%2e",
                "%2E",
                ".%2e",
                "%2e%2E",
                "/",
                "%2F",
                "%2f",
                "a",
                "model",
                ":0",
                "%25",
                "@",
                "~",
                "-",
                "_",
                "x.y",
                "...",
                "%2e%2e%2e",
            ])
        }

        fn decoded_segments(path: &str) -> Vec<String> {
            path.split('/')
                .map(|s| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8_lossy()
                        .into_owned()
                })
                .collect()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            /// A path passes exactly when none of its segments means `.` or
            /// `..` once decoded: what is signed is what it means.
            #[test]
            fn refuses_exactly_the_paths_with_dot_segments(pieces in prop::collection::vec(piece(), 0..12)) {
                let path = format!("/{}", pieces.concat());
                let Ok(request) = Request::builder().uri(path.as_str()).body(()) else {
                    return Ok(());
                };
                let dotted = decoded_segments(request.uri().path())
                    .iter()
                    .any(|s| s == "." || s == "..");
                prop_assert_eq!(check(&request).is_err(), dotted, "{}", path);
            }

            /// Nothing a client can put in the target makes the check panic.
            #[test]
            fn never_panics_on_any_target(target in "\\PC{0,64}") {
                if let Ok(request) = Request::builder().uri(target.as_str()).body(()) {
                    let _ = check(&request);
                }
            }
        }
    }
}
