//! Pod injection: the mutating admission webhook (`webhook`) and the same
//! mutation offline (`inject`).
//!
//! Layout: [`mutate`] is the pure function from a Pod (plus its namespace's
//! labels and its ServiceAccount's annotations) to a typed JSON patch, with
//! [`options`] reading the `bedrock-broker.io/*` annotations; [`server`] is
//! the HTTPS shell around it, with [`certs`] reloading the certificate and
//! [`lookup`] reading the cluster; [`inject`] is the offline shell over YAML.

pub mod certs;
mod defaults;
pub mod inject;
pub mod lookup;
pub mod mutate;
pub mod options;
pub mod server;
pub mod values;

use std::io::{Read, Write};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use self::defaults::{RequestAboveLimit, Resources, SidecarDefaults};
pub use self::inject::{parse_documents, InjectConfig};
pub use self::lookup::{ClusterLookup, KubeLookup, LookupError, StaticLookup, StringMap};
pub use self::mutate::{
    apply, mutate as inject, needs, opted_in, service_account_name, ClusterFacts, Credentials,
    Denial, Injection, Needs, Outcome, RoleSource, Skip, TokenAccess, CONTAINER_NAME,
};
pub use self::server::{review, AdmissionState, LookupErrorPolicy, WebhookConfig, WebhookServer};
use crate::metrics::webhook::WebhookMetrics;

/// Runs `bedrock-broker webhook` until `shutdown`.
pub async fn run_webhook(config: WebhookConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let server = WebhookServer::bind(&config).await?;
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot create a Kubernetes client (in-cluster service account, or KUBECONFIG): {e}"
        )
    })?;
    let metrics = WebhookMetrics::new();
    let lookup = KubeLookup::start(
        client,
        config.lookup_timeout,
        metrics.clone(),
        shutdown.clone(),
    );
    let state = AdmissionState {
        defaults: config.sidecar.clone(),
        lookup: Arc::new(lookup),
        on_lookup_error: config.on_lookup_error,
        metrics,
    };
    server.run(state, shutdown).await
}

/// How `bedrock-broker inject` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectStatus {
    Ok,
    /// At least one pod was refused (exit status 1).
    Denied,
    /// The input could not be read (exit status 2).
    BadInput,
}

/// Runs `bedrock-broker inject`: YAML from `input` to `output`, reports and
/// errors to `errors`.
pub fn run_inject(
    config: &InjectConfig,
    mut input: impl Read,
    mut output: impl Write,
    mut errors: impl Write,
) -> InjectStatus {
    let mut text = String::new();
    if let Err(e) = input.read_to_string(&mut text) {
        let _ = writeln!(errors, "bedrock-broker inject: cannot read the input: {e}");
        return InjectStatus::BadInput;
    }
    match inject::inject(&text, config) {
        Ok((yaml, reports)) => {
            for r in &reports {
                let _ = writeln!(errors, "bedrock-broker inject: {r}");
            }
            if let Err(e) = output
                .write_all(yaml.as_bytes())
                .and_then(|()| output.flush())
            {
                let _ = writeln!(
                    errors,
                    "bedrock-broker inject: cannot write the output: {e}"
                );
                return InjectStatus::BadInput;
            }
            InjectStatus::Ok
        }
        Err(e @ inject::InjectError::Yaml(_)) => {
            let _ = writeln!(errors, "bedrock-broker inject: {e}");
            InjectStatus::BadInput
        }
        Err(inject::InjectError::Denied(problems)) => {
            for p in problems {
                let _ = writeln!(errors, "bedrock-broker inject: {p}");
            }
            InjectStatus::Denied
        }
    }
}
