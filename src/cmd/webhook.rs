//! `bedrock-broker webhook`.

use super::{report, FAILED, OK};
use crate::cli::WebhookArgs;
use crate::config::Env;
use crate::server::signal::cancel_on_signal;
use crate::webhook::WebhookConfig;

pub async fn run(args: &WebhookArgs, env: &Env) -> u8 {
    let config = match WebhookConfig::from_args(args, env) {
        Ok(config) => config,
        Err(errors) => return report(&errors),
    };
    match crate::webhook::run_webhook(config, cancel_on_signal()).await {
        Ok(()) => OK,
        Err(e) => {
            tracing::error!(error = %e, "webhook failed");
            FAILED
        }
    }
}
