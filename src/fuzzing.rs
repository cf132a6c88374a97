//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`): every
//! parser of untrusted input, driven by arbitrary bytes. See
//! docs/development.md for how to run them.

pub use crate::proxy::fuzz::{error_body, event_stream, provider_data, request_target, usage_tap};

use std::sync::Arc;

use crate::config::Env;
use crate::metrics::WebhookMetrics;
use crate::webhook::{
    review, AdmissionState, Intake, LookupErrorPolicy, SidecarDefaults, StaticLookup,
};

/// An AdmissionReview body, answered as the webhook would.
pub fn admission_review(data: &[u8]) {
    let Ok(defaults) = SidecarDefaults::from_args(&Default::default(), &Env::default()) else {
        return;
    };
    let state = AdmissionState {
        defaults,
        lookup: Arc::new(StaticLookup::default()),
        on_lookup_error: LookupErrorPolicy::Deny,
        metrics: WebhookMetrics::new(),
        intake: Intake::default(),
        kube_version: None,
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    let _ = runtime.block_on(review(&state, data));
}
