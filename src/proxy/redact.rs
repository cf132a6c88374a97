//! Signature errors answered by AWS quote the canonical request they
//! expected, `x-amz-security-token:<token>` line included. That body goes
//! back to the client, which must never see the sidecar's session token:
//! such (small) error bodies are read whole and the token values blanked.
//! Nothing else is buffered: successful and streaming answers pass as
//! they come.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};

/// Largest signature-error body read for redaction (AWS's are ~2 KiB).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// How long reading it may take when no idle timeout is configured.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

const TOKEN_NAME: &[u8] = b"x-amz-security-token";
const REDACTED: &[u8] = b"** redacted **";

/// Whether an AWS answer is a signature error (the kind that quotes the
/// canonical request).
pub fn is_signature_error<B>(response: &Response<B>) -> bool {
    if !matches!(
        response.status(),
        StatusCode::FORBIDDEN | StatusCode::BAD_REQUEST
    ) {
        return false;
    }
    super::headers::aws_error_is(
        response.headers(),
        &[
            "InvalidSignatureException",
            "SignatureDoesNotMatch",
            "IncompleteSignatureException",
        ],
    )
}

/// The same answer with every security-token value in its body blanked.
/// A body too large or too slow to read is replaced by a short notice.
pub async fn redacted(
    response: Response<super::pool::PooledBody>,
    timeout: Option<Duration>,
) -> Response<Full<Bytes>> {
    let (mut parts, body) = response.into_parts();
    let read = Limited::new(body, MAX_ERROR_BODY).collect();
    let body = match tokio::time::timeout(timeout.unwrap_or(DEFAULT_READ_TIMEOUT), read).await {
        Ok(Ok(collected)) => Bytes::from(redact_tokens(&collected.to_bytes())),
        _ => Bytes::from_static(
            br#"{"message":"bedrock-broker: Bedrock's signature error could not be read whole to remove credentials from it; it was withheld"}"#,
        ),
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    if let Ok(len) = HeaderValue::from_str(&body.len().to_string()) {
        parts.headers.insert(http::header::CONTENT_LENGTH, len);
    }
    Response::from_parts(parts, Full::new(body))
}

/// Whether `b` ends a token value: tokens are base64 (or its URL
/// encoding), so any quote, escape, separator or whitespace ends one.
fn ends_value(b: u8) -> bool {
    matches!(b, b'\\' | b'\'' | b'"' | b'&' | b',' | b';' | b'<') || b.is_ascii_whitespace()
}

/// Blanks the value after every `x-amz-security-token:` (or `=`), in any
/// letter case, whether it stands in a header line or a query string.
pub fn redact_tokens(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let rest = &body[i..];
        let is_name = rest.len() > TOKEN_NAME.len()
            && rest[..TOKEN_NAME.len()].eq_ignore_ascii_case(TOKEN_NAME);
        if !is_name {
            out.push(body[i]);
            i += 1;
            continue;
        }
        let mut j = TOKEN_NAME.len();
        out.extend_from_slice(&rest[..j]);
        if !matches!(rest[j], b':' | b'=') {
            i += j;
            continue;
        }
        out.push(rest[j]);
        j += 1;
        let value = rest[j..].iter().take_while(|b| !ends_value(**b)).count();
        if value > 0 {
            out.extend_from_slice(REDACTED);
        }
        i += j + value;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_values_are_blanked_wherever_they_are_quoted() {
        let body = br#"{"message":"The request signature we calculated does not match ...\n\nThe Canonical String for this request should have been\n'POST\n/model/m/converse\n\nhost:bedrock-runtime.us-east-1.amazonaws.com\nx-amz-date:20260101T000000Z\nx-amz-security-token:IQoJb3JpZ2luX2VjE/abc+def==\n\nhost;x-amz-date;x-amz-security-token\nabc'"}"#;
        let out = String::from_utf8(redact_tokens(body)).unwrap();
        assert!(!out.contains("IQoJ"), "{out}");
        assert!(
            out.contains(
                r"x-amz-security-token:** redacted **\n\nhost;x-amz-date;x-amz-security-token\n"
            ),
            "{out}"
        );
        let query = b"GET /?X-Amz-Security-Token=IQoJ%2Fabc&X-Amz-Date=1 x-amz-security-token";
        let out = String::from_utf8(redact_tokens(query)).unwrap();
        assert_eq!(
            out,
            "GET /?X-Amz-Security-Token=** redacted **&X-Amz-Date=1 x-amz-security-token"
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
}
