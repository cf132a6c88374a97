//! `bedrock-broker sidecar`.

use std::sync::Arc;

use super::{report, FAILED, OK};
use crate::cli::SidecarArgs;
use crate::clock::SystemClock;
use crate::config::Env;
use crate::server::signal::cancel_on_signal;
use crate::sidecar::{Sidecar, SidecarConfig};

pub async fn run(args: &SidecarArgs, env: &Env) -> u8 {
    let config = match SidecarConfig::from_args(args, env) {
        Ok(config) => config,
        Err(errors) => return report(&errors),
    };
    let sidecar = match Sidecar::bind(config, Arc::new(SystemClock)).await {
        Ok(sidecar) => sidecar,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return FAILED;
        }
    };
    match sidecar.run(cancel_on_signal()).await {
        Ok(()) => OK,
        Err(e) => {
            tracing::error!(error = %e, "sidecar failed");
            FAILED
        }
    }
}
