//! An in-process STS: latency, a per-account token-bucket quota answered
//! with `Throttling` as STS does, scripted faults, and credentials with the
//! requested lifetime. It sits where the SDK's HTTP client would, so the
//! SDK, `sts::source_error` and the refresher above it are production code.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use tokio::time::Instant;

use super::answers;
use crate::clock::{Clock, TokioClock};
use crate::credentials::token::Claims;

/// What STS did with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Issued,
    Throttled,
    /// 5xx during a scripted outage.
    Unavailable,
    /// Connection refused during a scripted outage.
    Refused,
    /// `AccessDenied` during a scripted IAM misconfiguration.
    Denied,
    /// The web identity token had expired.
    ExpiredToken,
    /// A parameter STS would refuse (`ValidationError`).
    Invalid,
}

/// One call as STS saw it.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// Milliseconds since the simulation started.
    pub at_ms: u64,
    pub pod: u32,
    pub outcome: Outcome,
}

/// What a scripted fault does to every call in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Refused,
    Unavailable,
    Denied,
}

/// A window (from the simulation's start) in which STS misbehaves.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub from: Duration,
    pub until: Duration,
    pub kind: FaultKind,
}

/// The account's request-rate quota: a token bucket.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub per_second: f64,
    pub burst: f64,
}

/// Round trip: `min` plus an exponentially distributed extra.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub min: Duration,
    pub mean_extra: Duration,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    refilled: Instant,
    rng: fastrand::Rng,
    calls: Vec<Call>,
    serial: u64,
}

/// The model; cheap to share.
#[derive(Debug)]
pub struct StsModel {
    clock: TokioClock,
    origin: Instant,
    quota: Quota,
    latency: Latency,
    faults: Vec<Fault>,
    state: Mutex<State>,
}

/// The fields of an AssumeRoleWithWebIdentity form the model looks at.
#[derive(Debug, Default)]
struct Form {
    session: String,
    token: String,
    duration: Option<u64>,
}

impl Form {
    fn parse(body: &[u8]) -> Self {
        let mut form = Form::default();
        for pair in String::from_utf8_lossy(body).split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8_lossy()
                .into_owned();
            match key {
                "RoleSessionName" => form.session = value,
                "WebIdentityToken" => form.token = value,
                "DurationSeconds" => form.duration = value.parse().ok(),
                _ => {}
            }
        }
        form
    }

    /// Pods are named `fleet.pod-<n>`.
    fn pod(&self) -> u32 {
        self.session
            .rsplit('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(u32::MAX)
    }
}

impl StsModel {
    pub fn new(
        clock: TokioClock,
        quota: Quota,
        latency: Latency,
        faults: Vec<Fault>,
        seed: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            clock,
            origin: Instant::now(),
            quota,
            latency,
            faults,
            state: Mutex::new(State {
                tokens: quota.burst,
                refilled: Instant::now(),
                rng: fastrand::Rng::with_seed(seed),
                calls: Vec::new(),
                serial: 0,
            }),
        })
    }

    /// An SDK HTTP client whose every request this model answers.
    pub fn http_client(self: &Arc<Self>) -> SharedHttpClient {
        let connector = SharedHttpConnector::new(Connector(self.clone()));
        http_client_fn(move |_, _| connector.clone())
    }

    /// Every call so far, in the order STS received them.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn round_trip(&self) -> Duration {
        let u = self.lock().rng.f64();
        // Exponential by inversion; 1 - u is in (0, 1], so ln is finite.
        self.latency.min + self.latency.mean_extra.mul_f64(-(1.0 - u).ln())
    }

    async fn answer(&self, body: Vec<u8>) -> Result<HttpResponse, ConnectorError> {
        let form = Form::parse(&body);
        let round_trip = self.round_trip();
        tokio::time::sleep(round_trip / 2).await;
        let decided = self.decide(&form);
        tokio::time::sleep(round_trip - round_trip / 2).await;
        decided
    }

    /// Decides the call at the moment it reaches STS, and records it.
    fn decide(&self, form: &Form) -> Result<HttpResponse, ConnectorError> {
        let since = self.origin.elapsed();
        let fault = self
            .faults
            .iter()
            .find(|f| f.from <= since && since < f.until)
            .map(|f| f.kind);
        let now = self.clock.now();
        let mut state = self.lock();
        state.serial += 1;
        let id = format!("{:016X}", state.serial);
        let (outcome, answer) = if fault == Some(FaultKind::Refused) {
            (Outcome::Refused, None)
        } else if !Self::take_token(&mut state, self.quota) {
            let r = answers::error(400, "Throttling", "Rate exceeded", now, &id);
            (Outcome::Throttled, Some(r))
        } else if fault == Some(FaultKind::Unavailable) {
            let r = answers::error(503, "ServiceUnavailable", "Service unavailable", now, &id);
            (Outcome::Unavailable, Some(r))
        } else if fault == Some(FaultKind::Denied) {
            let message = "Not authorized to perform sts:AssumeRoleWithWebIdentity";
            (
                Outcome::Denied,
                Some(answers::error(403, "AccessDenied", message, now, &id)),
            )
        } else {
            Self::validate(form, now, &id)
        };
        state.calls.push(Call {
            at_ms: since.as_millis() as u64,
            pod: form.pod(),
            outcome,
        });
        answer.ok_or_else(|| ConnectorError::io("connection refused".into()))
    }

    fn validate(
        form: &Form,
        now: std::time::SystemTime,
        id: &str,
    ) -> (Outcome, Option<HttpResponse>) {
        let lifetime = form.duration.unwrap_or(3600);
        if !(900..=43_200).contains(&lifetime) {
            let message = "1 validation error detected: Value at 'durationSeconds' failed to satisfy constraint";
            return (
                Outcome::Invalid,
                Some(answers::error(400, "ValidationError", message, now, id)),
            );
        }
        let token_expired = Claims::decode(&form.token)
            .and_then(|c| c.expiry())
            .is_none_or(|exp| exp <= now);
        if token_expired {
            let message = "Token expired: current date/time is after the token's exp";
            return (
                Outcome::ExpiredToken,
                Some(answers::error(
                    400,
                    "ExpiredTokenException",
                    message,
                    now,
                    id,
                )),
            );
        }
        let issued = answers::issued(&form.session, Duration::from_secs(lifetime), now, id);
        (Outcome::Issued, Some(issued))
    }

    /// Token bucket refilled continuously; a throttled call takes no token.
    fn take_token(state: &mut State, quota: Quota) -> bool {
        let elapsed = state.refilled.elapsed().as_secs_f64();
        state.refilled = Instant::now();
        state.tokens = (state.tokens + elapsed * quota.per_second).min(quota.burst);
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Connector(Arc<StsModel>);

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let model = self.0.clone();
        let body = request
            .body()
            .bytes()
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        HttpConnectorFuture::new(async move { model.answer(body).await })
    }
}
