//! Error answers may quote back what the request carried: AWS's
//! signature errors quote the canonical request they expected,
//! `x-amz-security-token:<token>` line included, and a relay or a
//! non-AWS upstream may echo the request's headers (the session token, or
//! `authorization: Bearer <the configured API key>`). The client must
//! never read either: an error body the proxy can hold is read whole and
//! those secrets blanked, whole or any piece of 8 bytes or more, however
//! it escapes them ([`super::blank`]), and so are the answer's header
//! values (a relay's debugging header may quote the request too).
//! Nothing else is buffered: successful and streaming answers, and errors
//! that say they are longer than [`MAX_ERROR_BODY`], pass as they come.

use std::time::Duration;

use bytes::Bytes;
use std::io::Read;

use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};

use super::blank::Blanker;
use super::error::{Dialect, ProxyError};
use super::headers::X_AMZN_ERRORTYPE;
use super::usage::decode::Coding;
use crate::secret::redact_tokens;

/// Bedrock's request id, kept on a withheld answer for support cases.
const X_AMZN_REQUESTID: HeaderName = HeaderName::from_static("x-amzn-requestid");

/// Largest error body read for redaction (AWS's are ~2 KiB).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// How long reading it may take when no idle timeout is configured.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The session token a request was signed with, on the error answer it
/// got (a response extension: successful answers carry none).
#[derive(Clone)]
pub struct SignedWith(HeaderValue);

/// `response`, marked with the session token its request carried if it
/// is an error.
pub fn carrying<B>(mut response: Response<B>, token: Option<HeaderValue>) -> Response<B> {
    if let Some(token) = token.filter(|_| is_error(response.status())) {
        response.extensions_mut().insert(SignedWith(token));
    }
    response
}

/// The session token [`carrying`] marked `response` with.
pub fn signed_with<B>(response: &mut Response<B>) -> Option<HeaderValue> {
    response
        .extensions_mut()
        .remove::<SignedWith>()
        .map(|t| t.0)
}

fn is_error(status: StatusCode) -> bool {
    status.is_client_error() || status.is_server_error()
}

/// Whether an AWS answer is a signature error (the kind that quotes the
/// canonical request).
pub fn is_signature_error<B>(response: &Response<B>) -> bool {
    if !matches!(
        response.status(),
        StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
    ) {
        return false;
    }
    super::headers::aws_error_is(response.headers(), super::headers::SIGNATURE_ERRORS)
}

/// Whether an error answer of a request that carried a secret is held
/// to blank it: every error. One that says it is longer than the proxy
/// holds is withheld unread ([`redacted`]): streamed, it could carry the
/// secret out, and the app can make a relay's echo of its request that
/// long.
pub fn is_held<B>(response: &Response<B>) -> bool {
    is_error(response.status())
}

/// What an error body is cleaned of.
pub struct Secrets<'a> {
    /// The secret the request carried, blanked wherever it is, whole or
    /// a piece of it.
    pub exact: Option<&'a [u8]>,
    /// Whether the request was signed: the value after every
    /// `x-amz-security-token` label is blanked too (a signature error's
    /// canonical request).
    pub labelled: bool,
}

/// The same answer with `secrets` blanked in its body, decompressed if
/// it came compressed (the secrets are in there too); as it came, bytes
/// and coding, when it held none of them. A body that cannot
/// be read whole (too large, too slow, corrupt, or in a coding the proxy
/// does not read) is withheld: a broker error in the client's dialect
/// takes its place, with the upstream's status and error type.
pub async fn redacted<B>(
    response: Response<B>,
    secrets: Secrets<'_>,
    timeout: Option<Duration>,
    dialect: Dialect,
) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let signature = is_signature_error(&response);
    let (mut parts, body) = response.into_parts();
    let blanker = Blanker::new(secrets.exact.as_slice());
    let clean = |text: &[u8]| cleaned(text, blanker.as_ref(), secrets.labelled);
    // A relay may quote the request's headers in its own as well.
    clean_headers(&mut parts.headers, clean);
    if body.size_hint().lower() > MAX_ERROR_BODY as u64 {
        return withheld(&parts, dialect, signature);
    }
    let read = Limited::new(body, MAX_ERROR_BODY).collect();
    let read = tokio::time::timeout(timeout.unwrap_or(DEFAULT_READ_TIMEOUT), read).await;
    let Ok(Ok(raw)) = read.map(|r| r.map(|c| c.to_bytes())) else {
        return withheld(&parts, dialect, signature);
    };
    let Some(plain) = decoded(&parts.headers, raw.clone()) else {
        return withheld(&parts, dialect, signature);
    };
    // Upstream errors pass through unchanged: only a body that held a
    // secret goes out rewritten (and so decompressed).
    let body = match clean(&plain) {
        None => raw,
        Some(cleaned) => {
            parts.headers.remove(CONTENT_ENCODING);
            Bytes::from(cleaned)
        }
    };
    parts.headers.remove(CONTENT_LENGTH);
    if let Ok(len) = HeaderValue::from_str(&body.len().to_string()) {
        parts.headers.insert(CONTENT_LENGTH, len);
    }
    Response::from_parts(parts, Full::new(body))
}

/// `text` without the secrets the request carried (and, when it was
/// signed, the value after every `x-amz-security-token` label); `None`
/// when it held none.
fn cleaned(text: &[u8], blanker: Option<&Blanker<'_>>, labelled: bool) -> Option<Vec<u8>> {
    let exact = blanker.and_then(|b| b.blank(text));
    let labelled = labelled
        .then(|| redact_tokens(exact.as_deref().unwrap_or(text)))
        .filter(|cleaned| cleaned[..] != text[..]);
    labelled.or(exact)
}

/// Each header value `clean` changes, replaced by what it gave; a header
/// whose cleaned value is no valid one (it cannot happen: a blank is
/// visible ASCII) is dropped rather than sent as it came.
fn clean_headers(headers: &mut HeaderMap, clean: impl Fn(&[u8]) -> Option<Vec<u8>>) {
    let mut invalid = Vec::new();
    for (name, value) in headers.iter_mut() {
        let Some(cleaned) = clean(value.as_bytes()) else {
            continue;
        };
        match HeaderValue::from_bytes(&cleaned) {
            Ok(cleaned) => *value = cleaned,
            Err(_) => invalid.push(name.clone()),
        }
    }
    for name in invalid {
        headers.remove(name);
    }
}

/// The body without its content coding, at most [`MAX_ERROR_BODY`] bytes
/// of it; `None` when that cannot be had. Out of line: a decoder's inflate
/// state passes through the stack, and inlined into the proxy's response
/// path it would enlarge that frame for every answer (as it once did the
/// usage tap's, docs/performance.md).
///
/// Every byte must be decoded: every gzip member (clients decode them
/// all), and nothing after the compressed data, since a body that held
/// no secret goes out as it came, whatever followed the part read.
#[inline(never)]
fn decoded(headers: &HeaderMap, body: Bytes) -> Option<Bytes> {
    let gzip = match Coding::of(headers)? {
        Coding::Identity => return Some(body),
        Coding::Gzip => true,
        Coding::Deflate => false,
    };
    let mut rest: &[u8] = &body[..];
    let mut out = Vec::new();
    {
        let mut reader: Box<dyn Read + '_> = match gzip {
            true => Box::new(flate2::bufread::MultiGzDecoder::new(&mut rest)),
            false => Box::new(flate2::bufread::ZlibDecoder::new(&mut rest)),
        };
        // One byte past the limit tells a body at the limit from a bomb.
        (&mut reader)
            .take(MAX_ERROR_BODY as u64 + 1)
            .read_to_end(&mut out)
            .ok()?;
    }
    if !rest.is_empty() {
        return None;
    }
    // `read_to_end` doubles its buffer: what is not used goes back.
    out.shrink_to_fit();
    (out.len() <= MAX_ERROR_BODY).then(|| Bytes::from(out))
}

fn withheld(
    upstream: &http::response::Parts,
    dialect: Dialect,
    signature: bool,
) -> Response<Full<Bytes>> {
    let error = match signature {
        true => ProxyError::SignatureErrorWithheld,
        false => ProxyError::ErrorBodyWithheld,
    };
    let mut response: Response<Full<Bytes>> = error.into_response(dialect);
    *response.status_mut() = upstream.status;
    let headers = response.headers_mut();
    for name in [X_AMZN_ERRORTYPE, X_AMZN_REQUESTID] {
        if let Some(value) = upstream.headers.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::io::Write;

    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use http_body::Frame;
    use http_body_util::StreamBody;

    use super::*;

    const TOKEN: &str = "IQoJb3JpZ2luX2VjEunit+token/value==";

    fn signed() -> Secrets<'static> {
        Secrets {
            exact: Some(TOKEN.as_bytes()),
            labelled: true,
        }
    }

    fn signature_error(coding: Option<&str>, body: Vec<u8>) -> Response<Full<Bytes>> {
        let mut r = Response::builder()
            .status(403)
            .header("x-amzn-errortype", "InvalidSignatureException")
            .header("x-amzn-requestid", "req-1")
            .header("content-length", body.len());
        if let Some(c) = coding {
            r = r.header("content-encoding", c);
        }
        r.body(Full::new(Bytes::from(body))).unwrap()
    }

    fn aws_message() -> Vec<u8> {
        format!(r#"{{"message":"mismatch\n'POST\nx-amz-security-token:{TOKEN}\n'"}}"#).into_bytes()
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn zlib(b: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    async fn text(r: Response<Full<Bytes>>) -> (http::response::Parts, String) {
        let (parts, body) = r.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (parts, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn compressed_signature_errors_are_decoded_then_cleaned() {
        for (coding, body) in [
            (None, aws_message()),
            (Some("gzip"), gzip(&aws_message())),
            (Some("deflate"), zlib(&aws_message())),
        ] {
            let r = redacted(signature_error(coding, body), signed(), None, Dialect::Aws).await;
            let (parts, text) = text(r).await;
            assert_eq!(parts.status, 403);
            assert!(!text.contains(TOKEN), "{coding:?}: {text}");
            assert!(
                text.contains("x-amz-security-token:** redacted **"),
                "{text}"
            );
            assert!(parts.headers.get("content-encoding").is_none());
            assert_eq!(
                parts.headers["content-length"],
                text.len().to_string().as_str()
            );
        }
    }

    #[tokio::test]
    async fn an_error_holding_no_secret_goes_out_as_it_came() {
        let message = br#"{"message":"Too many requests, please wait."}"#.to_vec();
        for (coding, body) in [
            (None, message.clone()),
            (Some("gzip"), gzip(&message)),
            (Some("deflate"), zlib(&message)),
        ] {
            let mut upstream = signature_error(coding, body.clone());
            *upstream.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            let r = redacted(upstream, signed(), None, Dialect::Aws).await;
            let (parts, got) = r.into_parts();
            let got = got.collect().await.unwrap().to_bytes();
            assert_eq!(got, body, "{coding:?}");
            assert_eq!(
                parts.headers.get("content-encoding").map(|v| v.as_bytes()),
                coding.map(str::as_bytes)
            );
            assert_eq!(
                parts.headers["content-length"],
                body.len().to_string().as_str()
            );
        }
    }

    #[tokio::test]
    async fn header_values_are_cleaned_as_the_body_is() {
        let piece = &TOKEN[6..20];
        let mut upstream = signature_error(None, aws_message());
        let headers = upstream.headers_mut();
        headers.insert(
            "x-relay-saw",
            HeaderValue::from_str(&format!("token={TOKEN}; ok")).unwrap(),
        );
        headers.insert(
            "x-relay-cut",
            HeaderValue::from_str(&format!("[{piece}]")).unwrap(),
        );
        headers.insert(
            "x-relay-label",
            HeaderValue::from_static("x-amz-security-token:OTHERTOKENVALUE"),
        );
        headers.insert(
            "x-relay-plain",
            HeaderValue::from_static("nothing here //////////"),
        );
        let (parts, body) = text(redacted(upstream, signed(), None, Dialect::Aws).await).await;
        assert!(!body.contains(TOKEN), "{body}");
        assert_eq!(parts.headers["x-relay-saw"], "token=** redacted **; ok");
        assert_eq!(parts.headers["x-relay-cut"], "[** redacted **]");
        assert_eq!(
            parts.headers["x-relay-label"],
            "x-amz-security-token:** redacted **"
        );
        assert_eq!(parts.headers["x-relay-plain"], "nothing here //////////");
        assert_eq!(parts.headers["x-amzn-requestid"], "req-1");
        // Withheld, the headers it keeps are the cleaned ones.
        let mut long = signature_error(None, vec![b'x'; MAX_ERROR_BODY + 1]);
        long.headers_mut().insert(
            "x-amzn-requestid",
            HeaderValue::from_str(&format!("req-{TOKEN}")).unwrap(),
        );
        let (parts, _) = text(redacted(long, signed(), None, Dialect::Aws).await).await;
        assert_eq!(parts.headers["x-amzn-requestid"], "req-** redacted **");
    }

    /// Only the first gzip member or zlib stream was decoded, and a body
    /// found clean there went out whole: what followed reached the client
    /// unread (found in review).
    #[tokio::test]
    async fn bytes_after_the_first_member_are_read_too() {
        let harmless = br#"{"message":"Too many requests, please wait."}"#.to_vec();
        let echo = format!("x-amz-security-token:{TOKEN}").into_bytes();
        let mut multi = gzip(&harmless);
        multi.extend(gzip(&echo));
        let mut gz_trailing = gzip(&harmless);
        gz_trailing.extend(&echo);
        let mut zlib_trailing = zlib(&harmless);
        zlib_trailing.extend(&echo);
        for (name, coding, body) in [
            ("two gzip members", "gzip", multi),
            ("gzip + plain tail", "gzip", gz_trailing),
            ("zlib + plain tail", "deflate", zlib_trailing),
        ] {
            let mut upstream = signature_error(Some(coding), body);
            *upstream.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            let r = redacted(upstream, signed(), None, Dialect::Aws).await;
            let (parts, got) = r.into_parts();
            let got = got.collect().await.unwrap().to_bytes();
            let mut all = Vec::new();
            let _ = flate2::read::MultiGzDecoder::new(&got[..]).read_to_end(&mut all);
            for seen in [&got[..], &all[..]] {
                assert!(
                    memchr::memmem::find(seen, TOKEN.as_bytes()).is_none(),
                    "{name}: {}",
                    String::from_utf8_lossy(seen)
                );
            }
            assert_eq!(parts.status, 429, "{name}");
            if name == "two gzip members" {
                // A well-formed body: cleaned, both members' text kept.
                let text = String::from_utf8_lossy(&got);
                assert!(text.contains("Too many requests"), "{text}");
                assert!(
                    text.contains("x-amz-security-token:** redacted **"),
                    "{text}"
                );
            } else {
                assert_eq!(
                    parts.headers["x-bedrock-broker-error"],
                    "error_body_withheld"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn what_cannot_be_cleaned_is_withheld_in_the_clients_dialect() {
        let big = vec![b'x'; MAX_ERROR_BODY + 1];
        let bomb = gzip(&vec![b'x'; MAX_ERROR_BODY + 1]);
        let mut corrupt = gzip(&aws_message());
        corrupt.truncate(corrupt.len() / 2);
        let cases = [
            (None, big),
            (Some("gzip"), bomb),
            (Some("gzip"), corrupt),
            (Some("br"), aws_message()),
            (Some("gzip, gzip"), gzip(&gzip(&aws_message()))),
        ];
        for (coding, body) in cases {
            let r = redacted(
                signature_error(coding, body),
                signed(),
                None,
                Dialect::OpenAi,
            )
            .await;
            let (parts, text) = text(r).await;
            assert_eq!(parts.status, 403, "{coding:?}");
            assert_eq!(
                parts.headers["x-bedrock-broker-error"],
                "signature_error_withheld"
            );
            assert_eq!(parts.headers["x-amzn-requestid"], "req-1");
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v["error"]["code"], "signature_error_withheld", "{coding:?}");
            assert!(parts.headers.get("content-encoding").is_none());
        }
        // A body that stalls, answered in the AWS dialect: Bedrock's error
        // type is kept for the SDK to raise.
        let first = futures::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(
            b"{\"message\":\"x-amz-security-token:IQoJ",
        )))]);
        let stalled = StreamBody::new(futures::StreamExt::chain(first, futures::stream::pending()));
        let upstream = Response::builder()
            .status(403)
            .header("x-amzn-errortype", "InvalidSignatureException")
            .body(stalled)
            .unwrap();
        let r = redacted(
            upstream,
            signed(),
            Some(Duration::from_secs(5)),
            Dialect::Aws,
        )
        .await;
        let (parts, text) = text(r).await;
        assert_eq!(
            parts.headers["x-amzn-errortype"],
            "InvalidSignatureException"
        );
        assert_eq!(
            parts.headers["x-bedrock-broker-error"],
            "signature_error_withheld"
        );
        assert!(!text.contains("IQoJ"));
        assert!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap()["message"]
                .as_str()
                .unwrap()
                .contains("withheld")
        );
    }

    #[test]
    fn only_signature_errors_are_read() {
        let resp = |status: u16, kind: &str| {
            Response::builder()
                .status(status)
                .header("x-amzn-errortype", kind)
                .body(())
                .unwrap()
        };
        assert!(is_signature_error(&resp(403, "InvalidSignatureException")));
        assert!(is_signature_error(&resp(
            403,
            "InvalidSignatureException:http://internal.amazon.com/coral/"
        )));
        assert!(!is_signature_error(&resp(403, "AccessDeniedException")));
        assert!(!is_signature_error(&resp(200, "InvalidSignatureException")));
    }

    #[tokio::test]
    async fn any_error_is_cleaned_of_the_exact_secret_however_escaped() {
        let key = "ABSKa2V5+d2l0aA/c2xhc2g=";
        let body = r#"{"message":"echo: authorization: Bearer ABSKa2V5\u002Bd2l0aA\/c2xhc2g\u003d, x-test: 1","code":"AccessDeniedException"}"#;
        let upstream = Response::builder()
            .status(403)
            .header("x-amzn-errortype", "AccessDeniedException")
            .header("content-length", body.len())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let secrets = Secrets {
            exact: Some(key.as_bytes()),
            labelled: false,
        };
        let (parts, text) = text(redacted(upstream, secrets, None, Dialect::Aws).await).await;
        assert_eq!(parts.status, 403);
        assert_eq!(parts.headers["x-amzn-errortype"], "AccessDeniedException");
        assert_eq!(
            text,
            r#"{"message":"echo: authorization: Bearer ** redacted **, x-test: 1","code":"AccessDeniedException"}"#
        );
    }

    #[tokio::test]
    async fn an_error_of_unknown_length_past_the_limit_is_withheld() {
        let chunks = [
            Bytes::from(vec![b'x'; MAX_ERROR_BODY]),
            Bytes::from(format!("x-amz-security-token: {TOKEN}")),
        ];
        let frames = chunks.map(|c| Ok::<_, Infallible>(Frame::data(c)));
        let upstream = Response::builder()
            .status(500)
            .body(StreamBody::new(futures::stream::iter(frames)))
            .unwrap();
        assert!(is_held(&upstream), "its length is unknown: it is read");
        let (parts, text) = text(redacted(upstream, signed(), None, Dialect::Aws).await).await;
        assert_eq!(parts.status, 500);
        assert_eq!(
            parts.headers["x-bedrock-broker-error"],
            "error_body_withheld"
        );
        assert!(!text.contains(TOKEN));
    }

    #[tokio::test]
    async fn every_error_is_held_and_one_said_to_be_too_long_is_withheld() {
        let answer = |status: u16, len: usize| {
            let mut body = vec![b'x'; len];
            body.extend_from_slice(format!("x-amz-security-token: {TOKEN}").as_bytes());
            Response::builder()
                .status(status)
                .body(Full::new(Bytes::from(body)))
                .unwrap()
        };
        assert!(is_held(&answer(403, MAX_ERROR_BODY)));
        assert!(is_held(&answer(500, 10)));
        assert!(!is_held(&answer(200, 10)));
        assert!(!is_held(&answer(304, 0)));
        // Streamed, the echo past 64 KiB carried the token out.
        let long = answer(500, MAX_ERROR_BODY + 1);
        assert!(is_held(&long));
        let (parts, text) = text(redacted(long, signed(), None, Dialect::Aws).await).await;
        assert_eq!(parts.status, 500);
        assert_eq!(
            parts.headers["x-bedrock-broker-error"],
            "error_body_withheld"
        );
        assert!(!text.contains(TOKEN));
    }

    #[test]
    fn only_error_answers_carry_the_token() {
        let token = HeaderValue::from_static("tok");
        let mut ok = carrying(answer_of(200), Some(token.clone()));
        assert!(signed_with(&mut ok).is_none());
        let mut refused = carrying(answer_of(403), Some(token));
        assert_eq!(signed_with(&mut refused).unwrap(), "tok");
        assert!(signed_with(&mut refused).is_none());
    }

    fn answer_of(status: u16) -> Response<()> {
        Response::builder().status(status).body(()).unwrap()
    }
}
