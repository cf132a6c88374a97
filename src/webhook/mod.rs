//! Pod injection: the mutating admission webhook (`webhook`) and the same
//! mutation offline (`inject`).
//!
//! ```text
//! admission (HTTPS shell) ──> inject (pure) <── offline (YAML shell)
//! ```
//!
//! [`inject()`] is the pure function from a Pod (plus its namespace's labels
//! and its ServiceAccount's annotations) to a typed JSON patch: decide,
//! spec, resolve, render, patch. `admission` answers the API server's
//! AdmissionReviews with it, reading the cluster through [`lookup`];
//! [`server`] serves it on the shared serving kit; `offline` applies it to
//! YAML streams ([`run_inject`]).
//!
//! The re-exports below are the module's interface: the rest of the crate
//! and the tests name only them, so code can move between these files
//! without touching its users.

mod admission;
mod audit;
pub mod ca_bundle;
mod cluster;
mod fair_share;
mod inject;
mod intake;
pub mod lookup;
mod offline;
pub mod parse_cost;
mod review;
mod server;
mod turns;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use self::admission::{review, AdmissionState, LookupErrorPolicy, MUTATE_PATH};
pub use self::inject::types::RolePolicy;
pub use self::inject::{
    apply, inject, needs, opted_in, service_account_name, types, ClusterFacts, Denial, Injection,
    KubeVersion, Needs, Outcome, RequestAboveLimit, Resources, RoleSource, SidecarAuth,
    SidecarDefaults, Skip, TokenAccess, TokenVolume, CONTAINER_NAME,
};
pub use self::intake::{Intake, ReviewTiming, MAX_REVIEW_BYTES};
pub use self::lookup::{ClusterLookup, KubeLookup, LookupError, StaticLookup, StringMap};
pub use self::offline::{parse_documents, run_inject, InjectConfig, InjectStatus};
pub use self::server::{TlsFiles, WebhookConfig, WebhookError, WebhookServer};
use crate::metrics::webhook::WebhookMetrics;

/// Runs `bedrock-broker webhook` until `shutdown`.
pub async fn run_webhook(
    config: WebhookConfig,
    shutdown: CancellationToken,
) -> Result<(), WebhookError> {
    let server = WebhookServer::bind(&config).await?;
    // Everything the reviews need serves on through the shutdown delay.
    let shutdown = server::linger(shutdown, config.shutdown_delay);
    let client = kube::Client::try_default().await?;
    let kube_version = cluster::kube_version(&client, config.lookup_timeout).await;
    let metrics = WebhookMetrics::new();
    let lookup = KubeLookup::start(
        client,
        config.lookup_timeout,
        metrics.clone(),
        shutdown.clone(),
    );
    let intake = Intake::new(config.review_timing, config.review_budget).metered(&metrics);
    if let Some(bundle) = &config.sidecar.ca_bundle {
        tokio::spawn(bundle.clone().watch(
            config.tls.reload_interval,
            metrics.ca_bundle_reloads.clone(),
            shutdown.clone(),
        ));
    }
    let state = AdmissionState {
        defaults: config.sidecar.clone(),
        lookup: Arc::new(lookup),
        on_lookup_error: config.on_lookup_error,
        metrics,
        intake,
        kube_version,
    };
    server.run(state, shutdown).await
}
