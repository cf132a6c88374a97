//! `bedrock-broker webhook`.

use super::{report, FAILED, OK};
use crate::cli::WebhookArgs;
use crate::config::settings::webhook as settings;
use crate::config::{ConfigErrors, Env};
use crate::server::signal::cancel_on_signal;
use crate::webhook::{WebhookConfig, WebhookError};

pub async fn run(args: &WebhookArgs, env: &Env) -> u8 {
    let config = match WebhookConfig::from_args(args, env) {
        Ok(config) => config,
        Err(errors) => return report(&errors),
    };
    match crate::webhook::run_webhook(config, cancel_on_signal()).await {
        Ok(()) => OK,
        // Read once before serving: files that cannot serve are a bad
        // configuration like any other (a reload keeps the pair in use).
        Err(WebhookError::Certificate(e)) => report(&ConfigErrors::one(
            format!(
                "{} and {}",
                settings::TLS_CERT_FILE.origin(),
                settings::TLS_KEY_FILE.origin()
            ),
            e,
        )),
        Err(e) => {
            tracing::error!(error = %e, "webhook failed");
            FAILED
        }
    }
}
