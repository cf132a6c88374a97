//! The one place metric names are defined: the sidecar's in [`sidecar`],
//! the webhook's (a different process, its own registry) in [`webhook`].
//!
//! Names and labels are part of the contract dashboards and alerts rely on:
//! prefix `bedrock_broker_`, base units in the name, `_total` on counters,
//! bounded label values only (never a raw path, model id or token). Each
//! process owns its registry; nothing registers in the global one.

pub mod budgets;
pub mod labels;
pub mod requests;
pub mod sidecar;
pub mod webhook;

use prometheus::{HistogramOpts, Opts, Registry};

pub use sidecar::{CredentialMetrics, Metrics, ProxyMetrics};
pub use webhook::WebhookMetrics;

/// The prefix of every metric name.
const PREFIX: &str = "bedrock_broker";

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(PREFIX)
}

fn histogram_opts(name: &str, help: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .namespace(PREFIX)
        .buckets(buckets.to_vec())
}

/// Registers `metric` in `registry` and gives it back.
fn registered<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> prometheus::Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// `…connections_refused_total{listener}`: connections a listener closed
/// at once at its connection limit (whole or per peer). Clients see a
/// reset or an empty answer, which nothing else records. `name` is spelled
/// out at each call, so every metric name is in the source as written (the
/// packaging tests check the dashboard's and alerts' names against it).
fn connections_refused(name: &str) -> prometheus::Result<prometheus::IntCounterVec> {
    prometheus::IntCounterVec::new(
        opts(
            name,
            "Connections closed on arrival because a connection limit (of the listener, or per peer) was reached, by listener.",
        ),
        &["listener"],
    )
}

/// The version of this build, from Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The source revision of this build (`build.rs`: git, the
/// `BEDROCK_BROKER_REVISION` build variable, or `unknown`).
pub const REVISION: &str = env!("BEDROCK_BROKER_REVISION");

/// `bedrock_broker_build_info{version,revision} 1`, the Prometheus
/// exporters' convention: `count by (version) (...)` finds the pods still
/// running an old image after an upgrade.
fn build_info(registry: &Registry) -> prometheus::Result<()> {
    let info = registered(
        registry,
        prometheus::IntGaugeVec::new(
            opts(
                "build_info",
                "Always 1; the version and source revision of this build as labels.",
            ),
            &["version", "revision"],
        )?,
    )?;
    info.with_label_values(&[VERSION, REVISION]).set(1);
    Ok(())
}

/// The Prometheus text exposition of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# encoding metrics failed: {e}\n"))
}
