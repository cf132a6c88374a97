//! Forwarding one authenticated request: its body read (bounded, hashed
//! for SigV4) or streamed (a bidirectional stream), then signed, or sent
//! with its bearer, to its route's upstream.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;

use super::auth::{self, AuthMode};
use super::classify::Classified;
use super::error::ProxyError;
use super::operation::Operation;
use super::response_body::Occupancy;
use super::{request_body, BoxError, Forwarded, Proxy};

impl Proxy {
    /// Signs (or carries the bearer of) one authenticated request and sends it.
    pub(super) async fn forward<B>(
        &self,
        request: Request<B>,
        decision: auth::Decision,
        class: &Classified,
        occupancy: &mut Occupancy,
    ) -> Result<Forwarded, (ProxyError, AuthMode)>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let mode = decision.mode();
        let with_mode = |e| (e, mode);

        let (mut parts, body) = request.into_parts();
        let route = self.routes.get(class.prefix).map_err(with_mode)?;
        auth::refuse_unsupported_api_key(class, mode).map_err(with_mode)?;
        self.refuse_expired_key(mode).map_err(with_mode)?;
        if class.operation == Operation::InvokeBidirectionalStream {
            // Never buffered: the client sends while it reads the answers.
            // SigV4 only: API keys were refused above.
            route.retarget(&mut parts).map_err(with_mode)?;
            return self
                .send_event_stream(route.signer(), parts, body, occupancy.share())
                .await
                .and_then(refuse_protocol_switch)
                .map(|r| (r, mode, None))
                .map_err(with_mode);
        }

        let sigv4 = matches!(decision, auth::Decision::SigV4);
        let limits = request_body::Limits {
            max_bytes: self.max_body_bytes,
            read_timeout: self.gate.body_read_timeout,
            min_rate: self.gate.body_min_rate,
            gate: &self.gate,
        };
        let body = request_body::read(&parts.headers, body, limits, sigv4)
            .await
            .map_err(with_mode)?;
        let model = self
            .usage
            .as_ref()
            .filter(|_| {
                class
                    .operation
                    .reports_usage(&parts.method, parts.uri.path())
            })
            .map(|u| u.model(parts.uri.path(), &body.bytes));
        route.retarget(&mut parts).map_err(with_mode)?;

        let response = match decision {
            auth::Decision::Bearer(_, value) => {
                parts.headers.insert(http::header::AUTHORIZATION, value);
                self.send_bearer(parts, body.bytes).await
            }
            auth::Decision::SigV4 => self.send_signed(route.request_signer(), parts, body).await,
        };
        response
            .and_then(refuse_protocol_switch)
            .map(|r| (r, mode, model))
            .map_err(with_mode)
    }
}

/// An upstream that answers `101 Switching Protocols` would hand the
/// client a raw connection to it; the proxy forwards HTTP requests only.
fn refuse_protocol_switch<B>(response: Response<B>) -> Result<Response<B>, ProxyError> {
    if response.status().is_informational() {
        return Err(ProxyError::UpstreamProtocol(format!(
            "the upstream answered {} and the proxy does not forward protocol switches",
            response.status()
        )));
    }
    Ok(response)
}
