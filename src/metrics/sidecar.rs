//! The sidecar's metrics.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry,
};

use super::budgets::BudgetGauges;
use super::{histogram_opts, opts, registered};

/// Everything the sidecar exports, registered in its own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub credentials: CredentialMetrics,
    pub proxy: ProxyMetrics,
    /// Connections turned away at a connection limit, by `listener`
    /// (`proxy`, `admin`, `credentials`).
    pub connections_refused: IntCounterVec,
    /// Idle kept-alive connections closed to make room for a new one at a
    /// connection limit, by `listener` (`proxy`, `credentials`).
    pub connections_reclaimed: IntCounterVec,
    /// Connections open now, by `listener` (`proxy`, `credentials`).
    pub connections_open: IntGaugeVec,
    /// Requests hyper refused before they could be read, by `listener`
    /// and `reason` (`malformed`, `too_large`).
    pub unread_requests: IntCounterVec,
}

/// Health of the credential refresher.
#[derive(Debug, Clone)]
pub struct CredentialMetrics {
    /// Unix time at which the held credentials expire (+Inf for keys that never do).
    pub expiry_timestamp: Gauge,
    /// Unix time of the last successful refresh.
    pub last_refresh_timestamp: Gauge,
    /// Lifetime the held credentials had when first obtained (+Inf when
    /// they never expire): unlike expiry minus last refresh, it does not
    /// shrink when a source hands out the same credentials again.
    pub lifetime: Gauge,
    /// Refresh attempts by `result` (`success`, `failure`).
    pub refreshes: IntCounterVec,
    /// Failed refresh attempts by `class` (`transient`, `token`, `fatal`).
    pub refresh_errors: IntCounterVec,
    /// Failed refresh attempts STS throttled: the account is over its
    /// request rate, which every pod in it shares.
    pub refresh_throttled: IntCounter,
    /// STS round trip of each attempt.
    pub refresh_duration: Histogram,
    /// Failures since the last success.
    pub consecutive_failures: IntGauge,
    /// `exp` claim of the projected service account token.
    pub web_identity_token_expiry_timestamp: LateGauge,
    /// This node's clock minus the `Date` of AWS's last answer measured,
    /// in seconds (positive: ahead).
    pub clock_skew: Gauge,
}

/// A gauge without labels that is exported only once it has a value: for
/// a time that may be unknown, where 0 would read as 1970.
#[derive(Debug, Clone)]
pub struct LateGauge(GaugeVec);

impl LateGauge {
    pub fn set(&self, value: f64) {
        self.0.with_label_values(&[] as &[&str]).set(value);
    }

    /// Unknown again: no longer exported.
    pub fn clear(&self) {
        self.0.reset();
    }
}

/// The data plane.
#[derive(Debug, Clone)]
pub struct ProxyMetrics {
    /// Proxied requests by `operation`, `code` and `auth`.
    pub requests: IntCounterVec,
    /// Time to the last byte of the response, by `operation`.
    pub request_duration: HistogramVec,
    /// Requests currently being served (including open streams).
    pub in_flight: IntGauge,
    /// Requests Bedrock rejected for expired or unknown credentials, by what
    /// the proxy did: `retried` with fresher credentials, or `gave_up`.
    pub auth_retries: IntCounterVec,
    /// Tokens by `model` and `direction` (input, output, cache_read, cache_write).
    pub tokens: IntCounterVec,
    /// Time from request to the first streamed chunk, by `operation`.
    pub time_to_first_token: HistogramVec,
    /// Answers that ended in an error after their 200, by `operation` and
    /// `type`.
    pub stream_errors: IntCounterVec,
    /// Answers whose tokens were not counted, by `operation` and `reason`.
    pub answers_without_usage: IntCounterVec,
    /// How full the memory budgets the proxy watches are.
    pub budgets: BudgetGauges,
    /// The credentials' `clock_skew_seconds`: a signature Bedrock refused
    /// measures it too, where no STS call does (keys from the container
    /// endpoint, IMDS or the environment).
    pub clock_skew: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        Self::try_new().expect("metric definitions are valid and unique")
    }

    fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let credentials = CredentialMetrics::register(&registry)?;
        let proxy = ProxyMetrics::register(&registry, credentials.clock_skew.clone())?;
        let connections_refused = registered(
            &registry,
            super::connections_refused("connections_refused_total")?,
        )?;
        let connections_reclaimed = registered(
            &registry,
            IntCounterVec::new(
                opts(
                    "connections_reclaimed_total",
                    "Idle kept-alive connections closed to make room for a new connection at the connection limit, by listener.",
                ),
                &["listener"],
            )?,
        )?;
        let unread_requests = registered(
            &registry,
            IntCounterVec::new(
                opts(
                    "unread_requests_total",
                    "Requests refused before they could be read, by listener and reason: malformed (a head that is not HTTP/1.1, answered 400) or too_large (a head over the read buffer or with more than 100 header lines, answered 431, a long request target included; 414 for one once --max-header-bytes is past 64 KiB). No other request metric sees them.",
                ),
                &["listener", "reason"],
            )?,
        )?;
        super::build_info(&registry)?;
        // Both results exist from the start so `rate()` and alerts see zeros.
        for result in ["success", "failure"] {
            credentials.refreshes.with_label_values(&[result]);
        }
        for result in ["retried", "gave_up"] {
            proxy.auth_retries.with_label_values(&[result]);
        }
        let connections_open = registered(
            &registry,
            IntGaugeVec::new(
                opts(
                    "connections_open",
                    "Client connections open now, by listener.",
                ),
                &["listener"],
            )?,
        )?;
        Ok(Self {
            registry,
            credentials,
            proxy,
            connections_refused,
            connections_reclaimed,
            connections_open,
            unread_requests,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        super::render(&self.registry)
    }
}

impl CredentialMetrics {
    fn register(r: &Registry) -> prometheus::Result<Self> {
        Ok(CredentialMetrics {
            lifetime: registered(
                r,
                Gauge::with_opts(opts(
                    "credentials_lifetime_seconds",
                    "Seconds the held credentials were valid for when first obtained (+Inf when they never expire).",
                ))?,
            )?,
            expiry_timestamp: registered(
                r,
                Gauge::with_opts(opts(
                    "credentials_expiry_timestamp_seconds",
                    "Unix time at which the held credentials expire (+Inf when they never do).",
                ))?,
            )?,
            last_refresh_timestamp: registered(
                r,
                Gauge::with_opts(opts(
                    "credentials_last_refresh_timestamp_seconds",
                    "Unix time of the last successful credential refresh.",
                ))?,
            )?,
            refreshes: registered(
                r,
                IntCounterVec::new(
                    opts(
                        "credential_refreshes_total",
                        "Credential refresh attempts by result.",
                    ),
                    &["result"],
                )?,
            )?,
            refresh_errors: registered(
                r,
                IntCounterVec::new(
                    opts(
                        "credential_refresh_errors_total",
                        "Failed credential refresh attempts by class: transient, token, fatal.",
                    ),
                    &["class"],
                )?,
            )?,
            refresh_throttled: registered(
                r,
                IntCounter::with_opts(opts(
                    "credential_refresh_throttled_total",
                    "Failed credential refresh attempts STS throttled (Throttling, 429): the account is over its STS request rate.",
                ))?,
            )?,
            refresh_duration: registered(
                r,
                Histogram::with_opts(histogram_opts(
                    "credential_refresh_duration_seconds",
                    "Duration of each credential refresh attempt (STS round trip).",
                    &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
                ))?,
            )?,
            consecutive_failures: registered(
                r,
                IntGauge::with_opts(opts(
                    "credential_refresh_consecutive_failures",
                    "Credential refresh failures since the last success.",
                ))?,
            )?,
            web_identity_token_expiry_timestamp: LateGauge(registered(
                r,
                GaugeVec::new(
                    opts(
                        "web_identity_token_expiry_timestamp_seconds",
                        "exp claim of the projected service account token last exchanged.",
                    ),
                    &[],
                )?,
            )?),
            clock_skew: registered(
                r,
                Gauge::with_opts(opts(
                    "clock_skew_seconds",
                    "This node's clock minus the Date of AWS's last answer measured (STS's at each refresh; Bedrock's when it refuses a signature, and after a refusal for the time, the first answer accepting one again), in seconds; positive when the node is ahead.",
                ))?,
            )?,
        })
    }
}

impl ProxyMetrics {
    fn register(r: &Registry, clock_skew: Gauge) -> prometheus::Result<Self> {
        Ok(ProxyMetrics {
            requests: registered(r, IntCounterVec::new(
                opts(
                    "requests_total",
                    "Proxied requests by operation, status code and auth mode.",
                ),
                &["operation", "code", "auth"],
            )?)?,
            request_duration: registered(r, HistogramVec::new(
                histogram_opts(
                    "request_duration_seconds",
                    "Time from request to the last byte of the response, by operation.",
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                        120.0, 300.0,
                    ],
                ),
                &["operation"],
            )?)?,
            in_flight: registered(r, IntGauge::with_opts(opts(
                "requests_in_flight",
                "Requests being served right now, open streams included.",
            ))?)?,
            auth_retries: registered(r, IntCounterVec::new(
                opts(
                    "upstream_auth_retries_total",
                    "Requests Bedrock rejected as expired/unknown credentials: retried with fresher ones, or gave_up.",
                ),
                &["result"],
            )?)?,
            tokens: registered(r, IntCounterVec::new(
                opts(
                    "tokens_total",
                    "Tokens reported by Bedrock, by model and direction (input, output, cache_read, cache_write).",
                ),
                &["model", "direction"],
            )?)?,
            time_to_first_token: registered(r, HistogramVec::new(
                histogram_opts(
                    "time_to_first_token_seconds",
                    "Time from request to the first streamed chunk of a streaming response, by operation.",
                    &[0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0],
                ),
                &["operation"],
            )?)?,
            stream_errors: registered(r, IntCounterVec::new(
                opts(
                    "stream_errors_total",
                    "Answers that ended in an error after their 200, which requests_total counts as that 200, by operation and type: the exception Bedrock ended an event stream with (throttlingException, modelStreamErrorException, ...; other for names not known), upstream_idle_timeout (a stream the sidecar cut off), upstream_broke_off (the connection broke before the end). For the operations whose tokens are read, with usage metrics on.",
                ),
                &["operation", "type"],
            )?)?,
            answers_without_usage: registered(r, IntCounterVec::new(
                opts(
                    "answers_without_usage_total",
                    "Successful answers of the operations whose tokens are read in which no token count was found, by operation and reason: not_reported (the answer ended without one, e.g. an OpenAI-style stream without stream_options.include_usage), cut_off (it did not reach its end), unreadable (a body the sidecar could not decode). tokens_total misses their tokens.",
                ),
                &["operation", "reason"],
            )?)?,
            budgets: BudgetGauges::register(
                r,
                opts(
                    "memory_budget_used_bytes",
                    "Bytes held now in a memory budget, by budget: request_bodies (--request-body-budget: request bodies from when they start to be read until Bedrock's answer begins, large bidirectional stream messages while signed, and room a body waiting for more has taken) or usage_taps (room the token-usage readers reserved for answers in flight). A full budget refuses: request bodies get a 503 to retry, answers go uncounted (answers_without_usage_total{reason=\"over_budget\"}).",
                ),
                opts(
                    "memory_budget_limit_bytes",
                    "Bytes a memory budget may hold at once, by budget (see memory_budget_used_bytes).",
                ),
            )?,
            clock_skew,
        })
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_expiry_is_absent_until_a_token_has_one() {
        // Static keys, API keys and a token not yet read have no `exp`: a
        // 0 read as a time made dashboards show the token 56 years gone.
        let m = Metrics::new();
        let name = "bedrock_broker_web_identity_token_expiry_timestamp_seconds";
        assert!(!m.render().contains(name), "{}", m.render());
        m.credentials.web_identity_token_expiry_timestamp.set(1.8e9);
        assert!(
            m.render().contains(&format!("{name} 1800000000")),
            "{}",
            m.render()
        );
        // A later token without `exp`: the old time is not left behind.
        m.credentials.web_identity_token_expiry_timestamp.clear();
        assert!(!m.render().contains(name), "{}", m.render());
    }

    #[test]
    fn exposes_the_contract_metric_names() {
        let m = Metrics::new();
        m.proxy
            .requests
            .with_label_values(&["converse", "200", "sigv4"])
            .inc();
        m.proxy
            .request_duration
            .with_label_values(&["converse"])
            .observe(0.1);
        m.credentials.refresh_duration.observe(0.1);
        m.credentials.web_identity_token_expiry_timestamp.set(1.8e9);
        let text = m.render();
        for name in [
            "bedrock_broker_credentials_expiry_timestamp_seconds",
            "bedrock_broker_credentials_last_refresh_timestamp_seconds",
            "bedrock_broker_credential_refreshes_total{result=\"success\"}",
            "bedrock_broker_credential_refreshes_total{result=\"failure\"}",
            "bedrock_broker_credential_refresh_duration_seconds_bucket",
            "bedrock_broker_credential_refresh_consecutive_failures",
            "bedrock_broker_web_identity_token_expiry_timestamp_seconds",
            "bedrock_broker_clock_skew_seconds",
            "bedrock_broker_requests_total{auth=\"sigv4\",code=\"200\",operation=\"converse\"}",
            "bedrock_broker_request_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        let info = format!(
            "bedrock_broker_build_info{{revision=\"{}\",version=\"{}\"}} 1",
            super::super::REVISION,
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&info), "{info} missing from\n{text}");
        assert!(!super::super::REVISION.is_empty());
    }
}
