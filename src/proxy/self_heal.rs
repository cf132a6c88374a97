//! Retry once when Bedrock says the credentials expired (or are unknown,
//! e.g. revoked): wait for fresher ones and send again. The body is already
//! buffered, so the retry is exact.

use http::{Request, Response, StatusCode, Version};
use http_body_util::Full;

use super::error::ProxyError;
use super::pool::PooledBody;
use super::request_body::ReadBody;
use super::signer::RequestSigner;
use super::{upstream, Proxy};

impl Proxy {
    /// Signs and sends; retries once with fresher credentials if Bedrock
    /// rejects the ones used. Signs before the caller awaits, so the
    /// future holds the send, not a second copy of the request's parts (see
    /// [`upstream::send`]); the unsigned method, URI and headers stay, for
    /// the retry.
    pub(super) fn send_signed<'a>(
        &'a self,
        signer: Option<&'a RequestSigner>,
        mut parts: http::request::Parts,
        body: ReadBody,
    ) -> impl std::future::Future<Output = Result<Response<PooledBody>, ProxyError>> + 'a {
        let unsigned = (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        );
        let first = self
            .sign(signer, &mut parts, &body)
            .map(|used| (used, self.send_pooled(parts, Full::new(body.bytes.clone()))));
        async move {
            let (used, sent) = first?;
            let response = sent.await?;
            if !rejects_credentials(&response) {
                return Ok(response);
            }
            if !self.fresher_credentials(used).await {
                self.metrics
                    .auth_retries
                    .with_label_values(&["gave_up"])
                    .inc();
                return Ok(response);
            }
            drop(response);
            let (mut retry, ()) = Request::new(()).into_parts();
            (retry.method, retry.uri, retry.headers) = unsigned;
            retry.version = Version::HTTP_11;
            self.sign(signer, &mut retry, &body)?;
            self.metrics
                .auth_retries
                .with_label_values(&["retried"])
                .inc();
            tracing::info!("bedrock rejected expired credentials; retried with refreshed ones");
            self.send_pooled(retry, Full::new(body.bytes)).await
        }
    }

    /// Not an `async fn`, for the reason [`upstream::send`] gives.
    pub(super) fn send_pooled(
        &self,
        parts: http::request::Parts,
        body: Full<bytes::Bytes>,
    ) -> impl std::future::Future<Output = Result<Response<PooledBody>, ProxyError>> + '_ {
        upstream::send(
            &self.clients.pooled,
            parts,
            body,
            self.response_header_timeout,
        )
    }

    /// Newer credentials than generation `used`, refreshing early if needed.
    pub(super) async fn fresher_credentials(&self, used: u64) -> bool {
        if self.cell.generation() > used {
            return true;
        }
        // Credentials without an expiry (static keys) are fetched once and
        // have no refresher to ask: waiting only delays Bedrock's answer.
        if self
            .cell
            .load()
            .as_ref()
            .is_some_and(|held| held.expiry().is_none())
        {
            return false;
        }
        self.cell.request_refresh();
        tokio::time::timeout(self.self_heal_wait, self.cell.wait_newer_than(used))
            .await
            .unwrap_or(false)
    }
}

/// Whether Bedrock refused the credentials themselves (expired, or unknown
/// such as revoked), which fresher credentials can fix. Signature mismatches
/// are not retried: new credentials would not change them.
pub(super) fn rejects_credentials<B>(response: &Response<B>) -> bool {
    if response.status() != StatusCode::FORBIDDEN {
        return false;
    }
    super::headers::aws_error_is(
        response.headers(),
        &[
            "ExpiredTokenException",
            "ExpiredToken",
            "UnrecognizedClientException",
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_credential_rejections_are_retried() {
        let resp = |status: u16, kind: Option<&str>| {
            let mut b = Response::builder().status(status);
            if let Some(k) = kind {
                b = b.header("x-amzn-errortype", k);
            }
            b.body(()).unwrap()
        };
        assert!(rejects_credentials(&resp(
            403,
            Some("ExpiredTokenException")
        )));
        assert!(rejects_credentials(&resp(
            403,
            Some("UnrecognizedClientException:http://internal.amazon.com/coral/")
        )));
        assert!(!rejects_credentials(&resp(
            403,
            Some("InvalidSignatureException")
        )));
        assert!(!rejects_credentials(&resp(
            403,
            Some("AccessDeniedException")
        )));
        assert!(!rejects_credentials(&resp(403, None)));
        assert!(!rejects_credentials(&resp(
            400,
            Some("ExpiredTokenException")
        )));
    }
}
