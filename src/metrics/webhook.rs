//! The webhook's own metrics (its own registry: the webhook and the sidecar
//! are different processes). Same naming rules as [`super`].

use prometheus::{HistogramVec, IntCounter, IntCounterVec, Registry};

use super::budgets::BudgetGauges;
use super::{histogram_opts, opts};

/// Bounded values of the `result` label of admissions.
pub const RESULTS: [&str; 5] = ["injected", "skipped", "denied", "invalid", "error"];
/// The `object` label of `webhook_lookups_total`, as the lookups record it.
pub const LOOKUP_OBJECTS: [&str; 3] = ["namespace", "service_account", "limit_range"];

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
    /// Reloads of the sidecars' trust bundle by `result`.
    pub ca_bundle_reloads: IntCounterVec,
    /// Connections turned away at a connection limit, by `listener`
    /// (`webhook`, `admin`).
    pub connections_refused: IntCounterVec,
    /// Reviews and unread answers whose connection was closed to hand
    /// their room in the review budget to a peer holding less.
    pub reviews_closed_for_room: IntCounter,
    /// How full the review budgets are.
    pub budgets: BudgetGauges,
}

impl WebhookMetrics {
    pub fn new() -> Self {
        Self::try_new().expect("metric definitions are valid and unique")
    }

    fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let admissions = IntCounterVec::new(
            opts(
                "webhook_admissions_total",
                "Admission reviews answered, by result: injected, skipped, denied, invalid, error.",
            ),
            &["result"],
        )?;
        let admission_duration = HistogramVec::new(
            histogram_opts(
                "webhook_admission_duration_seconds",
                "Time to answer one admission review, cluster lookups included.",
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            &["result"],
        )?;
        let lookups = IntCounterVec::new(
            opts(
                "webhook_lookups_total",
                "Namespace, ServiceAccount and LimitRange-list reads by object and source: cache, api, not_found, error.",
            ),
            &["object", "source"],
        )?;
        let tls_reloads = IntCounterVec::new(
            opts(
                "webhook_tls_reloads_total",
                "Serving certificate reloads from disk by result: success, failure.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(admissions.clone()))?;
        registry.register(Box::new(admission_duration.clone()))?;
        registry.register(Box::new(lookups.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        let ca_bundle_reloads = IntCounterVec::new(
            opts(
                "webhook_ca_bundle_reloads_total",
                "Reloads of the trust bundle given to injected sidecars (--sidecar-ca-bundle) by result: success, failure.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(ca_bundle_reloads.clone()))?;
        let reviews_closed_for_room = IntCounter::with_opts(opts(
            "webhook_reviews_closed_for_room_total",
            "Reviews and unread answers whose connection was closed to hand their room in the review budget to a peer holding less (a pod filling the budget; or, with several API server addresses, their own slow readers).",
        ))?;
        registry.register(Box::new(reviews_closed_for_room.clone()))?;
        let connections_refused = super::connections_refused("webhook_connections_refused_total")?;
        let budgets = BudgetGauges::register(
            &registry,
            opts(
                "webhook_memory_budget_used_bytes",
                "Bytes held now in a memory budget of the webhook, by budget: review_text (--review-budget: review bodies from their first bytes until answered, and answers until written out) or parsed_reviews (room for reviews being parsed and answered, by their estimated size). Full, reviews wait; a wait longer than a second gets 503.",
            ),
            opts(
                "webhook_memory_budget_limit_bytes",
                "Bytes a memory budget of the webhook may hold at once, by budget (see webhook_memory_budget_used_bytes).",
            ),
        )?;
        registry.register(Box::new(connections_refused.clone()))?;
        // The same build_info as the sidecar's: one query finds both.
        super::build_info(&registry)?;
        // Every series exists from the start so rate() and alerts see zeros.
        for r in RESULTS {
            admissions.with_label_values(&[r]);
        }
        for r in ["success", "failure"] {
            tls_reloads.with_label_values(&[r]);
            ca_bundle_reloads.with_label_values(&[r]);
        }
        // A failure series born at its first failure would be missed by
        // increase(), and so would the alert on the webhook's first one.
        for object in LOOKUP_OBJECTS {
            lookups.with_label_values(&[object, "error"]);
        }
        Ok(Self {
            registry,
            admissions,
            admission_duration,
            lookups,
            tls_reloads,
            ca_bundle_reloads,
            connections_refused,
            reviews_closed_for_room,
            budgets,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        super::render(&self.registry)
    }
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self::new()
    }
}
