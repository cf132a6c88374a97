//! Opening an InvokeModelWithBidirectionalStream: the one request whose body
//! is never buffered, signed once and then re-signed message by message
//! ([`super::event_stream`]). There is no retry with fresher credentials:
//! the messages already sent are gone.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response};
use http_body::Body;
use http_body_util::Either;

use super::error::ProxyError;
use super::event_stream::{self, ChainSigner};
use super::headers;
use super::pool::PooledBody;
use super::refusals::StreamRejection;
use super::response_body::SharedHold;
use super::self_heal::rejects_credentials;
use super::sigv4::{BodyDigest, Signer};
use super::{redact, upstream, BoxError, Proxy};
use crate::credentials::Unusable;

/// Least lifetime credentials must have left to open a bidirectional
/// stream with: above the longest Bedrock session (8 minutes for Nova Sonic).
const STREAM_MIN_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(10 * 60);

impl Proxy {
    /// Signs the request that opens a bidirectional stream, then forwards
    /// the client's messages re-signed in a chain seeded by that signature.
    pub(super) async fn send_event_stream<B>(
        &self,
        signer: Option<&Signer>,
        mut parts: http::request::Parts,
        body: B,
        occupancy: Arc<SharedHold>,
    ) -> Result<Response<PooledBody>, ProxyError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        parts.headers.insert(
            headers::X_AMZ_CONTENT_SHA256,
            HeaderValue::from_static(event_stream::STREAMING_PAYLOAD),
        );
        // Bedrock requires it; a client without AWS code may not know that.
        parts
            .headers
            .entry(http::header::CONTENT_TYPE)
            .or_insert(HeaderValue::from_static(
                "application/vnd.amazon.eventstream",
            ));
        self.fresh_enough_for_a_stream().await;
        let digest = BodyDigest::new(&[], Some(event_stream::STREAMING_PAYLOAD));
        let (chain, used) = self.sign_with(signer, &mut parts, digest, |signer, held, seed| {
            let chain = ChainSigner::new(
                held.identity().clone(),
                signer.region(),
                signer.name(),
                self.clock.clone(),
                seed,
            );
            (chain, held.generation())
        })?;
        let token = super::sign::token_of(&parts);
        let (body, aborted) = event_stream::resigned(
            body,
            chain,
            self.max_body_bytes,
            self.gate.body_budget(),
            occupancy,
            self.gate.body_read_timeout,
        );
        let sent = upstream::send_stream(
            &self.clients.streams,
            parts,
            Either::Right(body),
            self.response_header_timeout,
        )
        .await;
        match sent {
            Ok(response) => {
                // The signing time stays inside the chain signer: the
                // refusal's clock is judged by the skew alone.
                self.note_signature_refusal(
                    signer.map(|s| (s.region(), s.name())),
                    None,
                    &response,
                );
                // Not retried, but the next stream should not meet the same
                // answer, unless refreshing does not help.
                let Some(error) = rejects_credentials(&response) else {
                    self.refusals.accepted(used);
                    return Ok(redact::carrying(response, token));
                };
                self.metrics
                    .auth_retries
                    .with_label_values(&["gave_up"])
                    .inc();
                match self.refusals.stream_rejected(used) {
                    StreamRejection::Known => {}
                    // Newer credentials held already need no STS call.
                    StreamRejection::Refresh if self.cell.generation() > used => {}
                    StreamRejection::Refresh => self.cell.request_refresh(),
                    StreamRejection::RefreshedInVain => self.rejected_as_fresh(used, error),
                }
                Ok(redact::carrying(response, token))
            }
            // A client that broke its stream (or hung up) before Bedrock
            // answered is the client's fault, not an unreachable Bedrock.
            Err(err) => Err(aborted.reason().unwrap_or(err)),
        }
    }

    /// A stream signs every message with the credentials that opened it,
    /// for as long as it lasts. Credentials close to their expiry are
    /// refreshed first (waiting at most the self-heal wait), so a session
    /// does not outlive the credentials it is signed with.
    async fn fresh_enough_for_a_stream(&self) {
        let now = self.clock.now();
        // Read first: credentials that land while the held ones are found
        // expired are then newer, and nothing is asked of STS for them.
        let seen = self.cell.generation();
        let held = self.cell.with_usable(now, |held| {
            held.expiry().map(|expiry| (held.generation(), expiry))
        });
        let Ok(Some((generation, expiry))) = held else {
            match held {
                Err(Unusable::NotYetObtained) => {
                    self.first_credentials().await;
                }
                // An attempt under way may bring fresh ones in a moment, as
                // for credentials about to expire.
                Err(Unusable::Expired) => {
                    self.fresher_credentials(seen).await;
                }
                Ok(_) => {}
            }
            return;
        };
        if crate::clock::saturating_sub(expiry, now) >= STREAM_MIN_CREDENTIAL_LIFETIME {
            return;
        }
        // Refreshing keeps failing: the refresher retries on its backoff
        // (shortened as expiry nears), and waiting would only delay the
        // stream, as `fresher_credentials` knows.
        self.fresher_credentials(generation).await;
    }
}
