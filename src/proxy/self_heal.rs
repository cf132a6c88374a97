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
use super::{redact, upstream, Proxy};

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
            let Some(error) = rejects_credentials(&response) else {
                self.refusals.accepted(used.generation);
                self.note_signature_refusal(
                    signer.map(|s| (s.region(), s.name())),
                    Some(used.at),
                    &response,
                );
                return Ok(redact::carrying(response, used.token));
            };
            // Credentials no newer than fresh ones Bedrock rejected too: a
            // refresh would bring more of the same, at an STS call each.
            if self
                .refusals
                .refresh_cannot_help(used.generation, self.cell.generation())
                || !self.fresher_credentials(used.generation).await
            {
                self.metrics
                    .auth_retries
                    .with_label_values(&["gave_up"])
                    .inc();
                return Ok(redact::carrying(response, used.token));
            }
            drop(response);
            let mut retry = rebuild(&unsigned);
            let fresh = self.sign(signer, &mut retry, &body)?;
            self.metrics
                .auth_retries
                .with_label_values(&["retried"])
                .inc();
            tracing::info!(
                error,
                "Bedrock rejected the credentials; retrying with refreshed ones"
            );
            let again = self.send_pooled(retry, Full::new(body.bytes)).await?;
            match rejects_credentials(&again) {
                Some(error) => self.rejected_as_fresh(fresh.generation, error),
                None => {
                    self.refusals.accepted(fresh.generation);
                    self.note_signature_refusal(
                        signer.map(|s| (s.region(), s.name())),
                        Some(fresh.at),
                        &again,
                    );
                }
            }
            Ok(redact::carrying(again, fresh.token))
        }
    }

    /// Bedrock rejected credentials of generation `fresh`, refreshed for
    /// that very reason: until credentials newer than those arrive on
    /// schedule, rejections are passed through without asking STS again.
    /// Logged once per generation.
    pub(super) fn rejected_as_fresh(&self, fresh: u64, error: &str) {
        if self.refusals.rejected_fresh(fresh) {
            tracing::warn!(
                error,
                "Bedrock rejected credentials just obtained, so refreshing cannot help: \
                 is the region enabled for the account (opt-in regions), and is it the region meant? \
                 Such answers pass through without a refresh until the next scheduled one"
            );
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
        // Read before the refresher's state: a failure recorded in between
        // then ends the wait below at once.
        let failures = self.cell.failures();
        // Credentials without an expiry (static keys) are fetched once and
        // have no refresher to ask, and a throttled refresher, or a failing
        // one between attempts, waits its backoff out whatever asks:
        // waiting only delays Bedrock's answer. An attempt under way may
        // bring credentials in a moment: its outcome is waited for.
        let failing_between_attempts =
            self.cell.last_error().is_some() && !self.cell.is_attempting();
        if failing_between_attempts
            || self.cell.is_throttled()
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
        // nothing comes sooner than its backoff, so stop waiting there too;
        // and once an attempt fails after the asking, the next one waits
        // out a backoff: Bedrock's answer is due now.
        let fresher = async {
            tokio::select! {
                newer = self.cell.wait_newer_than(used) => newer,
                () = self.cell.throttled() => false,
                () = self.cell.failed_since(failures) => false,
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

/// The error, when Bedrock refused the credentials themselves (expired,
/// or unknown such as revoked), which fresher credentials may fix.
/// Signature mismatches are not retried: new credentials would not change
/// them.
pub(super) fn rejects_credentials<B>(response: &Response<B>) -> Option<&'static str> {
    if response.status() != StatusCode::FORBIDDEN {
        return None;
    }
    super::headers::aws_error_among(
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
        assert_eq!(
            rejects_credentials(&resp(403, Some("ExpiredTokenException"))),
            Some("ExpiredTokenException")
        );
        assert_eq!(
            rejects_credentials(&resp(
                403,
                Some("UnrecognizedClientException:http://internal.amazon.com/coral/")
            )),
            Some("UnrecognizedClientException")
        );
        assert!(rejects_credentials(&resp(403, Some("InvalidSignatureException"))).is_none());
        assert!(rejects_credentials(&resp(403, Some("AccessDeniedException"))).is_none());
        assert!(rejects_credentials(&resp(403, None)).is_none());
        assert!(rejects_credentials(&resp(400, Some("ExpiredTokenException"))).is_none());
    }
}
