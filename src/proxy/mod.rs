//! The data plane: a plain-HTTP proxy on loopback that authenticates every
//! request (SigV4 or a Bedrock API key) and forwards it to Bedrock,
//! streaming the response back as it arrives.
//!
//! A request, in order:
//! 1. [`classify`]: upstream, operation and error dialect, from the path, once;
//! 2. [`target`]: refuse targets that would let the client pick the host;
//! 3. [`auth`]: which credentials it goes out with;
//! 4. [`request_body`]: read whole (bounded, hashed while read), except a
//!    bidirectional stream ([`bidi`]), re-signed message by message
//!    ([`event_stream`]);
//! 5. [`sign`] and [`self_heal`]: sign with the cell's credentials
//!    ([`sigv4`]), retry once when Bedrock says they expired;
//! 6. [`upstream`]: send, within the response-header timeout (steps 4 to
//!    6 are [`forward`]'s);
//! 7. [`response_body`]: stream the answer back, measured ([`usage`]), cut
//!    off when it goes quiet.
//!
//! Every refusal is a [`ProxyError`], answered in the client's dialect.

mod auth;
mod bidi;
mod blank;
mod classify;
mod config;
mod dial;
mod error;
mod event_stream;
mod forward;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
mod gate;
mod headers;
mod occupancy;
mod operation;
mod pool;
mod redact;
mod refusals;
mod request_body;
mod resigner;
mod response_body;
mod route;
mod self_heal;
mod sign;
mod signature_refusal;
pub mod signer;
pub(crate) mod sigv4;
mod target;
mod unanswered;
mod upstream;
mod usage;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{Either, Full};
use prometheus::Histogram;

pub use auth::AuthMode;
/// The error-body blanking, for `cargo bench` (its worst case: 64 KiB
/// in five views, a piece of the secret in each every few bytes), not
/// for callers.
#[doc(hidden)]
pub use blank::blank as bench_blank;
pub use config::{Config, Gate, MinRate, RouteTable, Upstream, UsageLabels};
pub use error::{reference_table as error_reference_table, Code, Dialect, ProxyError, CODES};
pub use gate::{bracketed_ipv6, is_loopback_host};
pub use operation::Operation;
pub use signer::{RequestSigner, SignError as RequestSignError, SignOutput, Signature};
pub use sigv4::{BodyDigest, Signer};
pub use target::has_dot_segment;
pub use upstream::{
    clients as upstream_clients, clients_pinging as upstream_clients_pinging, RequestBody,
    UpstreamClient, UpstreamClients, H2_PING,
};
#[doc(hidden)]
pub use usage::{bench_tap, TapBench};

use crate::clock::SharedClock;
use crate::credentials::CredentialCell;
use crate::metrics::labels::{ModelLabels, ModelRef};
use crate::metrics::requests::RequestCounters;
use crate::metrics::ProxyMetrics;
use classify::Classified;
use pool::PooledBody;
use response_body::{Completion, HeldBody, InFlight, Occupancy, StreamKind, UpstreamBody};
use unanswered::{Arrived, Unanswered};
use usage::decode::Coding;
use usage::UsageRecorder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the proxy answers with: a broker-made body or the upstream stream.
///
/// The upstream stream is boxed: every response is moved several times on
/// its way out and finally into hyper's connection, whose slot for it is
/// cold by the time the connection comes round again under many
/// connections. Boxed, those moves carry a pointer; and as a buffered
/// answer's body lives only from the answer to its last byte written
/// (mostly one poll), the allocator hands back the block the previous one
/// freed, still warm. A stream keeps its box for as long as it runs, the
/// same bytes it held in hyper's slot before. A held answer (an error the
/// proxy made or cleaned) is boxed too: it carries its request's
/// [`Completion`], which unboxed made every response, success included,
/// about 80 bytes larger to move.
pub type ProxyBody = Either<Box<HeldBody>, Box<UpstreamBody>>;

/// A forwarded request: Bedrock's answer, how the request was
/// authenticated, and the model usage is counted for if it succeeds.
type Forwarded = (Response<PooledBody>, AuthMode, Option<ModelRef>);

/// Everything request handling needs; built once, shared by all connections.
pub struct Proxy {
    cell: Arc<CredentialCell>,
    clients: UpstreamClients,
    /// Where each request goes, and how it is signed there.
    routes: route::Routes,
    /// `Bearer <AWS_BEARER_TOKEN_BEDROCK>`, built once.
    configured_bearer: Option<HeaderValue>,
    /// When that key stops working, if it says (a short-term key).
    configured_key_expiry: Option<SystemTime>,
    max_body_bytes: usize,
    /// How long a rejected request waits for refreshed credentials.
    self_heal_wait: Duration,
    /// What Bedrock's refusals of credentials and signatures taught.
    refusals: refusals::Refusals,
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
    /// What a request must pass before it is read or forwarded.
    gate: gate::GateState,
    /// `requests_total` by operation × auth mode × status, resolved once.
    requests: RequestCounters,
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
        let region = config.region.as_ref().map(|r| r.as_str());
        let gate = gate::GateState::new(config.gate);
        metrics
            .budgets
            .watch("request_bodies", Arc::new(gate.body_budget()));
        let usage = ModelLabels::new(&config.usage, &metrics.tokens).map(|models| {
            let recorder = UsageRecorder::new(
                &metrics.time_to_first_token,
                &metrics.stream_errors,
                &metrics.answers_without_usage,
                models,
            );
            metrics
                .budgets
                .watch("usage_taps", Arc::new(recorder.tap_budget()));
            Arc::new(recorder)
        });
        Self {
            cell,
            clients,
            routes: route::Routes::new(config.routes, region),
            configured_key_expiry: config
                .api_key
                .as_ref()
                .and_then(|k| k.expiry())
                .map(|e| e.at),
            configured_bearer: config.api_key.map(|key| key.header().clone()),
            max_body_bytes: config.max_body_bytes,
            self_heal_wait: config.self_heal_wait,
            refusals: refusals::Refusals::default(),
            response_header_timeout: config.response_header_timeout,
            stream_idle_timeout: config.stream_idle_timeout,
            usage,
            requests: RequestCounters::new(
                &metrics.requests,
                Operation::ALL.len(),
                AuthMode::COUNT,
            ),
            clock,
            metrics,
            durations,
            gate,
        }
    }

    /// Serves one request. Never fails: errors become broker error responses.
    ///
    /// The request counts from the moment it arrives: hyper drops the
    /// returned future without polling it when the client hangs up right
    /// after sending, and such a request is still one the client sent
    /// (counted as `499`, see [`unanswered::Arrived`]).
    pub fn handle<B>(
        self: Arc<Self>,
        request: Request<B>,
    ) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let class = classify::classify(request.uri().path());
        let mut arrived = Arrived::new(self, class.operation, started);
        async move { arrived.served().serve(request, class, started).await }
    }

    async fn serve<B>(
        &self,
        mut request: Request<B>,
        class: Classified,
        started: Instant,
    ) -> Result<Response<ProxyBody>, Infallible>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let in_flight = InFlight::new(&self.metrics.in_flight);
        let operation = class.operation;
        let duration = self.durations[operation.index()].clone();

        let mut unanswered = Unanswered::new(
            &self.requests,
            operation,
            started,
            &self.durations[operation.index()],
        );
        let (slot, refused) = match self.gate.admit() {
            Ok(slot) => (Some(slot), None),
            Err(e) => (None, Some(e)),
        };
        let mut occupancy = Occupancy::new(in_flight, slot);
        let forwarded = match refused {
            None => match self.authenticate(&mut request) {
                Ok(decision) => {
                    unanswered.auth = decision.mode();
                    self.forward(request, decision, &class, &mut occupancy)
                        .await
                }
                Err(e) => Err((e, AuthMode::None)),
            },
            Some(e) => Err((e, AuthMode::None)),
        };
        unanswered.timed();
        let response = match forwarded {
            Ok((response, auth, model)) => {
                unanswered.auth = auth;
                let completion = Completion::new(started, duration, occupancy);
                self.respond(response, auth, model, &class, completion, started)
                    .await
            }
            Err((err, auth)) => {
                unanswered.auth = auth;
                let status = err.status();
                // Missing credentials are logged once by the refresher, not per request.
                if status.is_server_error() && status.as_u16() != 503 {
                    tracing::warn!(code = err.code().name, status = status.as_u16(), operation = operation.as_str(), error = %err, "request failed");
                } else {
                    tracing::debug!(code = err.code().name, status = status.as_u16(), operation = operation.as_str(), error = %err, "request refused");
                }
                drop(Completion::new(started, duration, occupancy));
                err.into_response::<Full<Bytes>>(class.dialect)
                    .map(|body| Either::Left(Box::new(HeldBody::new(body, None))))
            }
        };
        unanswered.answer(response.status());
        Ok(response)
    }

    /// Bedrock's answer, on its way back: streamed and measured, its usage
    /// read if it succeeded; an error's body cleaned of the session token
    /// or configured API key it may quote.
    async fn respond(
        &self,
        mut response: Response<PooledBody>,
        auth: AuthMode,
        model: Option<ModelRef>,
        class: &classify::Classified,
        completion: Completion,
        started: Instant,
    ) -> Response<ProxyBody> {
        let operation = class.operation;
        headers::prepare_response_headers(response.status(), response.headers_mut());
        // Each hop speaks its own HTTP version to its client (RFC 9110
        // §6.2), whatever the upstream's was.
        *response.version_mut() = http::Version::HTTP_11;
        // The secrets this request carried that the client did not send.
        let token = redact::signed_with(&mut response);
        let carried = match auth {
            AuthMode::SigV4 => token.as_ref().map(HeaderValue::as_bytes),
            AuthMode::ConfiguredApiKey => self.configured_key(),
            _ => None,
        };
        let signature = auth == AuthMode::SigV4 && redact::is_signature_error(&response);
        if signature || (carried.is_some() && redact::is_held(&response)) {
            let secrets = redact::Secrets {
                exact: carried,
                labelled: auth == AuthMode::SigV4,
            };
            let timeout = self.stream_idle_timeout;
            return redact::redacted(response, secrets, timeout, class.dialect)
                .await
                .map(|body| Either::Left(Box::new(HeldBody::new(body, Some(completion)))));
        }
        let kind = StreamKind::of(response.headers());
        // A compressed body's bytes are no events: a stall can neither be
        // placed between two of them nor told in a plain error event
        // after them, so it is cut off as a plain answer is (the usage tap
        // reads a decoded copy, by the content type).
        let framing = if kind != StreamKind::Plain && Coding::encoded(response.headers()) {
            StreamKind::Plain
        } else {
            kind
        };
        if framing != StreamKind::Plain && self.stream_idle_timeout.is_some() {
            // An error tail may be appended to a stalled stream (see
            // `UpstreamBody::size_hint`): a length would frame it wrongly.
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
        }
        let tap = match (&self.usage, model) {
            (Some(usage), Some(model)) if response.status().is_success() => {
                Some(usage.tap(model, operation, response.headers(), kind, started))
            }
            _ => None,
        };
        let idle = self.stream_idle_timeout;
        response.map(|body| {
            Either::Right(Box::new(UpstreamBody::new(
                body, completion, framing, idle, tap,
            )))
        })
    }

    /// The configured API key, as the request's `Authorization` carries it.
    fn configured_key(&self) -> Option<&[u8]> {
        self.configured_bearer
            .as_ref()
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    }

    /// Checks a request and decides how it is authenticated upstream.
    fn authenticate<B>(&self, request: &mut Request<B>) -> Result<auth::Decision, ProxyError> {
        target::check(request)?;
        if self.gate.check(request)? == gate::Admitted::BearerIsProxyToken {
            request.headers_mut().remove(http::header::AUTHORIZATION);
        }
        auth::decide(request.headers(), self.configured_bearer.as_ref())
    }

    /// Refuses to send the configured API key past the expiry it carries,
    /// so the client reads what to do instead of Bedrock's refusal.
    fn refuse_expired_key(&self, mode: AuthMode) -> Result<(), ProxyError> {
        match self.configured_key_expiry {
            Some(at) if mode == AuthMode::ConfiguredApiKey && self.clock.now() >= at => {
                Err(ProxyError::ApiKeyExpired(at))
            }
            _ => Ok(()),
        }
    }
}
