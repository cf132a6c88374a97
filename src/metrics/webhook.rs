//! The webhook's own metrics (its own registry: the webhook and the sidecar
//! are different processes). Same naming rules as [`super`].

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

const PREFIX: &str = "bedrock_broker";

/// Bounded values of the `result` label of admissions.
pub const RESULTS: [&str; 5] = ["injected", "skipped", "denied", "invalid", "error"];

/// Everything `bedrock-broker webhook` exports.
#[derive(Debug, Clone)]
pub struct WebhookMetrics {
    pub registry: Registry,
    /// Admission reviews answered, by `result` (see [`RESULTS`]).
    pub admissions: IntCounterVec,
    /// Time to answer one review (cluster lookups included), by `result`.
    pub admission_duration: HistogramVec,
    /// Namespace/ServiceAccount reads by `object` and `source`
    /// (`cache`, `api`, `not_found`, `error`): shows how often the cache misses.
    pub lookups: IntCounterVec,
    /// Certificate reloads from disk by `result` (`success`, `failure`).
    pub tls_reloads: IntCounterVec,
}

impl WebhookMetrics {
    pub fn new() -> Self {
        Self::try_new().expect("metric definitions are valid and unique")
    }

    fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let admissions = IntCounterVec::new(
            Opts::new(
                "webhook_admissions_total",
                "Admission reviews answered, by result: injected, skipped, denied, invalid, error.",
            )
            .namespace(PREFIX),
            &["result"],
        )?;
        let admission_duration = HistogramVec::new(
            HistogramOpts::new(
                "webhook_admission_duration_seconds",
                "Time to answer one admission review, cluster lookups included.",
            )
            .namespace(PREFIX)
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["result"],
        )?;
        let lookups = IntCounterVec::new(
            Opts::new(
                "webhook_lookups_total",
                "Namespace and ServiceAccount reads by object and source: cache, api, not_found, error.",
            )
            .namespace(PREFIX),
            &["object", "source"],
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "webhook_tls_reloads_total",
                "Serving certificate reloads from disk by result: success, failure.",
            )
            .namespace(PREFIX),
            &["result"],
        )?;
        registry.register(Box::new(admissions.clone()))?;
        registry.register(Box::new(admission_duration.clone()))?;
        registry.register(Box::new(lookups.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        // Every series exists from the start so rate() and alerts see zeros.
        for r in RESULTS {
            admissions.with_label_values(&[r]);
        }
        for r in ["success", "failure"] {
            tls_reloads.with_label_values(&[r]);
        }
        Ok(Self {
            registry,
            admissions,
            admission_duration,
            lookups,
            tls_reloads,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
    }
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self::new()
    }
}
