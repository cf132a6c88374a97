//! The data plane: a plain-HTTP proxy on loopback that authenticates every
//! request (SigV4 or a Bedrock API key) and forwards it to Bedrock,
//! streaming the response back as it arrives.

mod auth;
mod body;
mod config;
mod error;
mod event_stream;
mod headers;
mod operation;
mod route;
pub(crate) mod signing;
mod upstream;
mod usage;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use prometheus::Histogram;
use sha2::{Digest, Sha256};

pub use auth::AuthMode;
pub use config::{Config, RouteTable, Upstream, UsageLabels};
pub use error::{BrokerError, Dialect};
pub use operation::Operation;
pub use signing::Signer;
pub use upstream::{clients as upstream_clients, RequestBody, UpstreamClient, UpstreamClients};
pub use usage::{ModelLabels, UsageRecorder};

use crate::clock::SharedClock;
use crate::credentials::{CredentialCell, HeldCredentials};
use crate::metrics::ProxyMetrics;
use body::{Completion, InFlight, StreamKind, UpstreamBody};

/// Least lifetime credentials must have left to open a bidirectional
/// stream with: above the longest Bedrock session (8 minutes for Nova Sonic).
const STREAM_MIN_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// A request body read in full, with its SHA-256 when SigV4 needs it.
struct ReadBody {
    bytes: Bytes,
    sha256: Option<String>,
}

/// What the proxy answers with: a broker-made body or the upstream stream.
pub type ProxyBody = Either<Full<Bytes>, UpstreamBody>;

/// Everything request handling needs; built once, shared by all connections.
pub struct Proxy {
    cell: Arc<CredentialCell>,
    clients: UpstreamClients,
    /// Where each request goes, and how it is signed there.
    routes: route::Routes,
    /// `Bearer <AWS_BEARER_TOKEN_BEDROCK>`, built once.
    configured_bearer: Option<HeaderValue>,
    max_body_bytes: usize,
    /// How long a rejected request waits for refreshed credentials.
    self_heal_wait: Duration,
    /// Longest wait for Bedrock's response headers.
    response_header_timeout: Option<Duration>,
    /// Longest silence inside a streamed response.
    stream_idle_timeout: Option<Duration>,
    /// Token usage accounting, when enabled.
    usage: Option<Arc<UsageRecorder>>,
    clock: SharedClock,
    metrics: ProxyMetrics,
    /// Per-operation duration histograms, resolved once instead of per request.
    durations: Vec<Histogram>,
}

impl Proxy {
    pub fn new(
        config: Config,
        cell: Arc<CredentialCell>,
        clients: UpstreamClients,
        clock: SharedClock,
        metrics: ProxyMetrics,
    ) -> Self {
        let durations = Operation::ALL
            .iter()
            .map(|op| metrics.request_duration.with_label_values(&[op.as_str()]))
            .collect();
        let routes = route::Routes::new(config.routes, config.region.as_ref().map(|r| r.as_str()));
        Self {
            cell,
            clients,
            routes,
            configured_bearer: config.api_key.map(|key| key.header().clone()),
            max_body_bytes: config.max_body_bytes,
            self_heal_wait: config.self_heal_wait,
            response_header_timeout: config.response_header_timeout,
            stream_idle_timeout: config.stream_idle_timeout,
            usage: ModelLabels::new(&config.usage).map(|models| {
                Arc::new(UsageRecorder {
                    tokens: metrics.tokens.clone(),
                    time_to_first_token: metrics.time_to_first_token.clone(),
                    models,
                })
            }),
            clock,
            metrics,
            durations,
        }
    }

    /// Serves one request. Never fails: errors become broker error responses.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let started = Instant::now();
        let in_flight = InFlight::new(&self.metrics.in_flight);
        let path = request.uri().path();
        let dialect = Dialect::for_path(path);
        let operation = Operation::from_path(path);
        let duration = self.durations[operation.index()].clone();

        let (response, auth) = match self.forward(request, operation).await {
            Ok((mut response, auth, model)) => {
                headers::remove_hop_by_hop(response.headers_mut());
                let completion = Completion::new(started, duration, in_flight);
                let kind = StreamKind::of(response.headers());
                let tap = match (&self.usage, model) {
                    (Some(usage), Some(model)) if response.status().is_success() => {
                        usage.tap(model, operation, response.headers(), started)
                    }
                    _ => None,
                };
                let idle = self.stream_idle_timeout;
                let response = response.map(|body| {
                    Either::Right(UpstreamBody::new(body, completion, kind, idle, tap))
                });
                (response, auth)
            }
            Err((err, auth)) => {
                // Missing credentials are logged once by the refresher, not per request.
                if err.status.is_server_error() && err.status != StatusCode::SERVICE_UNAVAILABLE {
                    tracing::warn!(code = err.code, status = err.status.as_u16(), operation = operation.as_str(), error = %err.message, "request failed");
                } else {
                    tracing::debug!(code = err.code, status = err.status.as_u16(), operation = operation.as_str(), error = %err.message, "request refused");
                }
                drop(Completion::new(started, duration, in_flight));
                let response = err.into_response::<Full<Bytes>>(dialect).map(Either::Left);
                (response, auth)
            }
        };
        self.metrics
            .requests
            .with_label_values(&[
                operation.as_str(),
                response.status().as_str(),
                auth.as_str(),
            ])
            .inc();
        Ok(response)
    }

    /// Checks, authenticates, signs and sends one request.
    async fn forward(
        &self,
        request: Request<Incoming>,
        operation: Operation,
    ) -> Result<(Response<Incoming>, AuthMode, Option<Arc<str>>), (BrokerError, AuthMode)> {
        let refused = |e| (e, AuthMode::None);
        check_target(&request).map_err(refused)?;
        let decision =
            auth::decide(request.headers(), self.configured_bearer.as_ref()).map_err(refused)?;
        let mode = match &decision {
            auth::Decision::Bearer(mode, _) => *mode,
            auth::Decision::SigV4 => AuthMode::SigV4,
        };
        let with_mode = |e| (e, mode);

        let (mut parts, body) = request.into_parts();
        let route = self.routes.for_path(parts.uri.path()).map_err(with_mode)?;
        if let Some(what) = api_keys_unsupported(operation, route).filter(|_| mode.is_api_key()) {
            let fix = if mode == AuthMode::ConfiguredApiKey {
                "configure SigV4 credentials for bedrock-broker instead \
                 (web identity, static keys or the credential chain)"
            } else {
                "send the request without the API key, so bedrock-broker signs it with SigV4"
            };
            return Err(with_mode(BrokerError::new(
                StatusCode::BAD_REQUEST,
                "api_key_unsupported",
                format!("Amazon Bedrock API keys cannot be used with {what}; {fix}"),
            )));
        }
        if operation == Operation::InvokeBidirectionalStream {
            // Never buffered: the client sends while it reads the answers.
            // SigV4 only: API keys were refused above.
            retarget(&mut parts, route).map_err(with_mode)?;
            return self
                .send_event_stream(route.signer(), parts, body)
                .await
                .map(|r| (r, mode, None))
                .map_err(with_mode);
        }

        let sigv4 = matches!(decision, auth::Decision::SigV4);
        let body = self
            .read_body(&parts.headers, body, sigv4)
            .await
            .map_err(with_mode)?;
        let model = self
            .usage
            .as_ref()
            .map(|u| u.model_label(parts.uri.path(), &body.bytes));
        retarget(&mut parts, route).map_err(with_mode)?;

        let response = match decision {
            auth::Decision::Bearer(_, value) => {
                parts.headers.insert(http::header::AUTHORIZATION, value);
                let body = Either::Left(Full::new(body.bytes));
                self.send(&self.clients.pooled, parts, body).await
            }
            auth::Decision::SigV4 => self.send_signed(route.signer(), parts, body).await,
        };
        response.map(|r| (r, mode, model)).map_err(with_mode)
    }

    /// Signs the request that opens a bidirectional stream, then forwards
    /// the client's messages re-signed in a chain seeded by that signature.
    /// There is no retry with fresher credentials: the body is not kept.
    async fn send_event_stream(
        &self,
        signer: Option<&Signer>,
        mut parts: http::request::Parts,
        body: Incoming,
    ) -> Result<Response<Incoming>, BrokerError> {
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
        let digest = signing::BodyDigest::new(&[], Some(event_stream::STREAMING_PAYLOAD));
        let chain = self.sign_with(signer, &mut parts, digest, |signer, held, seed| {
            event_stream::ChainSigner::new(
                held.identity().clone(),
                signer.region(),
                signer.name(),
                self.clock.clone(),
                seed,
            )
        })?;
        let (body, aborted) = event_stream::resigned(body, chain, self.max_body_bytes);
        match self
            .send(&self.clients.streams, parts, Either::Right(body))
            .await
        {
            Ok(response) => {
                if rejects_credentials(&response) {
                    // Not retried (the messages already sent are gone), but
                    // the next stream should not meet the same answer.
                    self.cell.request_refresh();
                }
                Ok(response)
            }
            // A client that broke its stream (or hung up) before Bedrock
            // answered is the client's fault, not an unreachable Bedrock.
            Err(err) => Err(aborted.reason().unwrap_or(err)),
        }
    }

    async fn send(
        &self,
        client: &UpstreamClient,
        parts: http::request::Parts,
        body: RequestBody,
    ) -> Result<Response<Incoming>, BrokerError> {
        let sent = client.request(Request::from_parts(parts, body));
        let Some(limit) = self.response_header_timeout else {
            return sent.await.map_err(|e| upstream_error(&e));
        };
        match tokio::time::timeout(limit, sent).await {
            Ok(result) => result.map_err(|e| upstream_error(&e)),
            Err(_) => Err(BrokerError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "upstream_timeout",
                format!(
                    "Bedrock sent no response headers within {} (--response-header-timeout)",
                    humantime::format_duration(limit)
                ),
            )),
        }
    }

    /// Signs and sends; if Bedrock says the credentials expired (or are
    /// unknown, e.g. revoked), waits for fresher ones and retries once. The
    /// body is already buffered, so the retry is exact.
    async fn send_signed(
        &self,
        signer: Option<&Signer>,
        mut parts: http::request::Parts,
        body: ReadBody,
    ) -> Result<Response<Incoming>, BrokerError> {
        let unsigned = (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        );
        let used = self.sign(signer, &mut parts, &body)?;
        let response = self
            .send(
                &self.clients.pooled,
                parts,
                Either::Left(Full::new(body.bytes.clone())),
            )
            .await?;
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
        tracing::info!("Bedrock rejected expired credentials; retried with refreshed ones");
        self.send(
            &self.clients.pooled,
            retry,
            Either::Left(Full::new(body.bytes)),
        )
        .await
    }

    /// A stream signs every message with the credentials that opened it,
    /// for as long as it lasts. Credentials close to their expiry are
    /// refreshed first (waiting at most the self-heal wait), so a session
    /// does not outlive the credentials it is signed with.
    async fn fresh_enough_for_a_stream(&self) {
        let now = self.clock.now();
        let held = self.cell.with_usable(now, |held| {
            held.expiry().map(|expiry| (held.generation(), expiry))
        });
        let Ok(Some((generation, expiry))) = held else {
            return;
        };
        if crate::clock::saturating_sub(expiry, now) >= STREAM_MIN_CREDENTIAL_LIFETIME {
            return;
        }
        if self.cell.last_error().is_some() {
            // Refreshing keeps failing: waiting would only delay the stream.
            self.cell.request_refresh();
            return;
        }
        self.fresher_credentials(generation).await;
    }

    /// Newer credentials than generation `used`, refreshing early if needed.
    async fn fresher_credentials(&self, used: u64) -> bool {
        if self.cell.generation() > used {
            return true;
        }
        self.cell.request_refresh();
        tokio::time::timeout(self.self_heal_wait, self.cell.wait_newer_than(used))
            .await
            .unwrap_or(false)
    }

    /// Reads the whole body (SigV4 hashes it), hashing each frame as it
    /// arrives when `hash` is set. A one-frame body is kept as is; larger
    /// ones are gathered into one buffer sized from `Content-Length`.
    async fn read_body(
        &self,
        headers: &http::HeaderMap,
        mut body: Incoming,
        hash: bool,
    ) -> Result<ReadBody, BrokerError> {
        let too_large = || {
            BrokerError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request body exceeds the proxy's limit of {} bytes (--max-body-bytes)",
                    self.max_body_bytes
                ),
            )
        };
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Err(too_large());
        }
        let mut hasher = hash.then(Sha256::new);
        let mut first: Option<Bytes> = None;
        let mut rest: Option<bytes::BytesMut> = None;
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                BrokerError::new(
                    StatusCode::BAD_REQUEST,
                    "body_read_failed",
                    format!("could not read the request body: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len();
            if total > self.max_body_bytes {
                return Err(too_large());
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&data);
            }
            match (&mut first, &mut rest) {
                (None, _) => first = Some(data),
                (Some(f), None) => {
                    let capacity = declared.map_or(0, |n| n as usize).max(f.len() + data.len());
                    let mut buf = bytes::BytesMut::with_capacity(capacity);
                    buf.extend_from_slice(f);
                    buf.extend_from_slice(&data);
                    rest = Some(buf);
                }
                (Some(_), Some(buf)) => buf.extend_from_slice(&data),
            }
        }
        let bytes = match (first, rest) {
            (_, Some(buf)) => buf.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        };
        Ok(ReadBody {
            bytes,
            sha256: hasher.map(|h| hex::encode(h.finalize())),
        })
    }

    /// Signs with the cell's credentials; returns their generation.
    fn sign(
        &self,
        signer: Option<&Signer>,
        parts: &mut http::request::Parts,
        body: &ReadBody,
    ) -> Result<u64, BrokerError> {
        let digest = signing::BodyDigest::new(&body.bytes, body.sha256.as_deref());
        self.sign_with(signer, parts, digest, |_, held, _| held.generation())
    }

    /// Signs with the cell's credentials; `keep` takes what it needs of the
    /// credentials that signed and of the signature.
    fn sign_with<T>(
        &self,
        signer: Option<&Signer>,
        parts: &mut http::request::Parts,
        digest: signing::BodyDigest<'_>,
        keep: impl FnOnce(&Signer, &HeldCredentials, String) -> T,
    ) -> Result<T, BrokerError> {
        let Some(signer) = signer else {
            return Err(BrokerError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_credentials",
                "no SigV4 credentials are configured (API-key mode without a region)",
            ));
        };
        let now = self.clock.now();
        let signed = self.cell.with_usable(now, |held| {
            signer
                .sign(
                    &parts.method,
                    &parts.uri,
                    &mut parts.headers,
                    digest,
                    held.identity(),
                    now,
                )
                .map(|signature| keep(signer, held, signature))
        });
        match signed {
            Ok(Ok(kept)) => Ok(kept),
            Ok(Err(e)) => Err(BrokerError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "signing_failed",
                e.to_string(),
            )),
            Err(why) => {
                let code = match why {
                    crate::credentials::Unusable::NotYetObtained => "no_credentials",
                    crate::credentials::Unusable::Expired => "credentials_expired",
                };
                Err(BrokerError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    code,
                    format!("bedrock-broker cannot sign the request: {}", why.describe()),
                ))
            }
        }
    }
}

/// Points a client request at its upstream: the route's URI, HTTP/1.1 as
/// the request version (ALPN may still pick HTTP/2), headers prepared.
fn retarget(parts: &mut http::request::Parts, route: &route::Route) -> Result<(), BrokerError> {
    parts.uri = route.uri(parts.uri.path_and_query())?;
    parts.version = Version::HTTP_11;
    headers::prepare_request_headers(&mut parts.headers);
    Ok(())
}

/// Refuses request targets that would let the client choose the upstream or
/// would be signed differently from what they mean.
fn check_target<B>(request: &Request<B>) -> Result<(), BrokerError> {
    if request.method() == Method::CONNECT {
        return Err(BrokerError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "connect_refused",
            "CONNECT is not supported: bedrock-broker is not a forward proxy; send plain HTTP requests to it",
        ));
    }
    // HTTP/2 always carries scheme and authority; in HTTP/1 they mean an
    // absolute-form target, i.e. a client configured to use us as a proxy.
    if request.version() < Version::HTTP_2 && request.uri().authority().is_some() {
        return Err(BrokerError::new(
            StatusCode::BAD_REQUEST,
            "absolute_form_refused",
            "absolute-form request targets are refused: point the client's base URL at bedrock-broker instead of using it as an HTTP proxy",
        ));
    }
    let path = request.uri().path();
    if !path.starts_with('/') {
        return Err(BrokerError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "the request path must start with /",
        ));
    }
    if path.split('/').any(is_dot_segment) {
        return Err(BrokerError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            "paths with . or .. segments are refused",
        ));
    }
    Ok(())
}

/// What Bedrock does not accept API keys for (AWS's API keys reference:
/// InvokeModelWithBidirectionalStream and the Agents runtime), so the
/// client gets a clear answer instead of Bedrock's 403.
fn api_keys_unsupported(operation: Operation, route: &route::Route) -> Option<&'static str> {
    if operation == Operation::InvokeBidirectionalStream {
        Some("InvokeModelWithBidirectionalStream")
    } else if !route.accepts_api_keys() {
        Some("the Agents runtime (/agent-runtime/)")
    } else {
        None
    }
}

/// Whether Bedrock refused the credentials themselves (expired, or unknown
/// such as revoked), which fresher credentials can fix. Signature mismatches
/// are not retried: new credentials would not change them.
fn rejects_credentials<B>(response: &Response<B>) -> bool {
    if response.status() != StatusCode::FORBIDDEN {
        return false;
    }
    let Some(kind) = response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    [
        "ExpiredTokenException",
        "ExpiredToken",
        "UnrecognizedClientException",
    ]
    .iter()
    .any(|code| kind == *code || kind.starts_with(&format!("{code}:")))
}

/// `.` or `..`, also percent-encoded (`%2e`, `.%2E`, ...), without allocating.
fn is_dot_segment(segment: &str) -> bool {
    let mut rest = segment.as_bytes();
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

fn upstream_error(e: &hyper_util::client::legacy::Error) -> BrokerError {
    let mut detail = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        source = s.source();
    }
    let timed_out = detail.contains("timed out") || detail.contains("deadline");
    if timed_out {
        BrokerError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_timeout",
            format!("Bedrock did not answer in time: {detail}"),
        )
    } else {
        BrokerError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            format!("could not reach Bedrock: {detail}"),
        )
    }
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

    #[test]
    fn refuses_targets_the_client_could_use_to_pick_the_host() {
        let code = |m, t, v| {
            check_target(&req(m, t, v))
                .err()
                .map(|e| (e.status.as_u16(), e.code))
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
}
