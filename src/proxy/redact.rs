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

use crate::secret::redact_tokens;

/// Largest signature-error body read for redaction (AWS's are ~2 KiB).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// How long reading it may take when no idle timeout is configured.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);

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

#[cfg(test)]
mod tests {
    use super::*;

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
