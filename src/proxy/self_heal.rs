//! Retry once when Bedrock says the credentials expired (or are unknown,
//! e.g. revoked): wait for fresher ones and send again; and once when it
//! refused the request unprocessed (HTTP/2 REFUSED_STREAM, or a GOAWAY
//! that left it out, as when a front end recycles the shared connection).
//! The body is already buffered, so a retry is exact.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
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
            let (mut used, sent) = match first {
                Err(ProxyError::NotYetObtained) if self.first_credentials().await => {
                    let mut parts = rebuild(&unsigned);
                    let used = self.sign(signer, &mut parts, &body)?;
                    (used, self.send_pooled(parts, Full::new(body.bytes.clone())))
                }
                first => first?,
            };
            let response = match sent.await {
                Err(ProxyError::UpstreamRefused(why)) => {
                    tracing::debug!(%why, "Bedrock refused the request unprocessed; sending it once more");
                    let mut again = rebuild(&unsigned);
                    used = self.sign(signer, &mut again, &body)?;
                    self.send_pooled(again, Full::new(body.bytes.clone()))
                        .await
                        .map_err(refused_twice)?
                }
                sent => sent?,
            };
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
            let mut retry = rebuild(&unsigned);
            self.sign(signer, &mut retry, &body)?;
            self.metrics
                .auth_retries
                .with_label_values(&["retried"])
                .inc();
            tracing::info!("bedrock rejected expired credentials; retried with refreshed ones");
            self.send_pooled(retry, Full::new(body.bytes)).await
        }
    }

    /// Sends a request carrying a bearer token (an API key); once more if
    /// Bedrock refused it unprocessed.
    pub(super) async fn send_bearer(
        &self,
        parts: http::request::Parts,
        body: Bytes,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let again = (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        );
        match self.send_pooled(parts, Full::new(body.clone())).await {
            Err(ProxyError::UpstreamRefused(why)) => {
                tracing::debug!(%why, "Bedrock refused the request unprocessed; sending it once more");
                self.send_pooled(rebuild(&again), Full::new(body))
                    .await
                    .map_err(refused_twice)
            }
            sent => sent,
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

    /// No credentials yet: in a pod whose containers start together the
    /// app's first call can beat STS's first answer. Until a refresh has
    /// failed, the first credentials are on their way, so the request
    /// waits for them (at most the self-heal wait) rather than fail at
    /// once; after a failure, the answer is at once, with `Retry-After`.
    /// `true` if credentials arrived.
    pub(super) async fn first_credentials(&self) -> bool {
        let arrived = async {
            tokio::select! {
                newer = self.cell.wait_newer_than(0) => newer,
                () = self.cell.failed_once() => false,
            }
        };
        tokio::time::timeout(self.self_heal_wait, arrived)
            .await
            .unwrap_or(false)
    }

    /// Newer credentials than generation `used`, refreshing early if needed.
    pub(super) async fn fresher_credentials(&self, used: u64) -> bool {
        if self.cell.generation() > used {
            return true;
        }
        // Credentials without an expiry (static keys) are fetched once and
        // have no refresher to ask, and a throttled refresher waits its
        // backoff out: waiting only delays Bedrock's answer.
        if self.cell.is_throttled()
            || self
                .cell
                .load()
                .as_ref()
                .is_some_and(|held| held.expiry().is_none())
        {
            return false;
        }
        self.cell.request_refresh();
        // The refresh this asked for may be the one STS throttles: then
        // nothing comes sooner than its backoff, so stop waiting there too.
        let fresher = async {
            tokio::select! {
                newer = self.cell.wait_newer_than(used) => newer,
                () = self.cell.throttled() => false,
            }
        };
        tokio::time::timeout(self.self_heal_wait, fresher)
            .await
            .unwrap_or(false)
    }
}

/// A request to send again, from the method, URI and headers it had
/// before it was signed.
fn rebuild((method, uri, headers): &(Method, Uri, HeaderMap)) -> http::request::Parts {
    let (mut parts, ()) = Request::new(()).into_parts();
    (parts.method, parts.uri, parts.headers) = (method.clone(), uri.clone(), headers.clone());
    parts.version = Version::HTTP_11;
    parts
}

/// The second refusal of a request sent twice says so.
fn refused_twice(e: ProxyError) -> ProxyError {
    match e {
        ProxyError::UpstreamRefused(why) => {
            ProxyError::UpstreamRefused(format!("{why} (twice: it was sent once more)"))
        }
        other => other,
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
