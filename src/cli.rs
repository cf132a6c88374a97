//! Subcommands and flags.
//!
//! Flags are kept as raw strings; [`crate::config`] turns them (and the
//! environment variables behind them) into typed values, so every problem
//! names its flag or variable. Names, help and defaults come from
//! [`crate::config::settings`], where each is written once.

use clap::{Args, Parser, Subcommand};

use crate::config::settings::{aws, inject, injected, log, sidecar, webhook};

#[derive(Debug, Parser)]
#[command(
    name = "bedrock-broker",
    version,
    about = "Holds AWS credentials for a pod and SigV4-signs its Amazon Bedrock calls"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the credential refresher, the signing proxy and the admin server.
    Sidecar(Box<SidecarArgs>),
    /// Resolve credentials exactly as the sidecar would and print who we are.
    Credentials(Box<CredentialsArgs>),
    /// Serve the mutating admission webhook that injects the sidecar into pods.
    Webhook(Box<WebhookArgs>),
    /// Inject the sidecar offline: Kubernetes YAML on stdin, mutated YAML on stdout.
    Inject(Box<InjectArgs>),
}

/// Logging.
#[derive(Debug, Args, Default, Clone)]
pub struct LogArgs {
    #[arg(long = log::FORMAT.flag, help = log::FORMAT.help_text())]
    pub log_format: Option<String>,
}

/// Flags shared by every subcommand that talks to AWS.
#[derive(Debug, Args, Default, Clone)]
pub struct AwsArgs {
    #[arg(long = aws::REGION.flag, help = aws::REGION.help_text())]
    pub region: Option<String>,
    #[arg(long = aws::STS_TIMEOUT.flag, help = aws::STS_TIMEOUT.help_text())]
    pub sts_timeout: Option<String>,
    #[arg(long = aws::CREDENTIAL_SOURCE.flag, help = aws::CREDENTIAL_SOURCE.help_text())]
    pub credential_source: Option<String>,
    #[arg(long = aws::SESSION_DURATION.flag, help = aws::SESSION_DURATION.help_text())]
    pub session_duration: Option<String>,
    #[arg(long = aws::SESSION_POLICY.flag, help = aws::SESSION_POLICY.help_text())]
    pub session_policy: Option<String>,
    #[arg(long = aws::SESSION_POLICY_ARNS.flag, help = aws::SESSION_POLICY_ARNS.help_text())]
    pub session_policy_arns: Option<String>,
    #[arg(long = aws::CHAIN_ROLE_ARN.flag, help = aws::CHAIN_ROLE_ARN.help_text())]
    pub chain_role_arn: Option<String>,
    #[arg(long = aws::CHAIN_EXTERNAL_ID.flag, help = aws::CHAIN_EXTERNAL_ID.help_text())]
    pub chain_external_id: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct SidecarArgs {
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[arg(long = sidecar::LISTEN.flag, help = sidecar::LISTEN.help_text())]
    pub listen: Option<String>,
    #[arg(long = sidecar::ADMIN_LISTEN.flag, help = sidecar::ADMIN_LISTEN.help_text())]
    pub admin_listen: Option<String>,
    #[arg(long = sidecar::UPSTREAM.flag, help = sidecar::UPSTREAM.help_text())]
    pub upstream: Option<String>,
    #[arg(long = sidecar::SIGNING_NAME.flag, help = sidecar::SIGNING_NAME.help_text())]
    pub signing_name: Option<String>,
    #[arg(long = sidecar::AGENT_RUNTIME_UPSTREAM.flag, help = sidecar::AGENT_RUNTIME_UPSTREAM.help_text())]
    pub agent_runtime_upstream: Option<String>,
    #[arg(long = sidecar::MANTLE_UPSTREAM.flag, help = sidecar::MANTLE_UPSTREAM.help_text())]
    pub mantle_upstream: Option<String>,
    #[arg(long = sidecar::USE_FIPS.flag, help = sidecar::USE_FIPS.help_text())]
    pub use_fips: Option<String>,
    #[arg(long = sidecar::USE_DUALSTACK.flag, help = sidecar::USE_DUALSTACK.help_text())]
    pub use_dualstack: Option<String>,
    #[arg(long = sidecar::MAX_BODY_BYTES.flag, help = sidecar::MAX_BODY_BYTES.help_text())]
    pub max_body_bytes: Option<String>,
    #[arg(long = sidecar::SHUTDOWN_GRACE_PERIOD.flag, help = sidecar::SHUTDOWN_GRACE_PERIOD.help_text())]
    pub shutdown_grace_period: Option<String>,
    #[arg(long = sidecar::CONNECT_TIMEOUT.flag, help = sidecar::CONNECT_TIMEOUT.help_text())]
    pub connect_timeout: Option<String>,
    #[arg(long = sidecar::RESPONSE_HEADER_TIMEOUT.flag, help = sidecar::RESPONSE_HEADER_TIMEOUT.help_text())]
    pub response_header_timeout: Option<String>,
    #[arg(long = sidecar::STREAM_IDLE_TIMEOUT.flag, help = sidecar::STREAM_IDLE_TIMEOUT.help_text())]
    pub stream_idle_timeout: Option<String>,
    #[arg(long = sidecar::USAGE_METRICS.flag, help = sidecar::USAGE_METRICS.help_text())]
    pub usage_metrics: Option<String>,
    #[arg(long = sidecar::USAGE_MODELS.flag, help = sidecar::USAGE_MODELS.help_text())]
    pub usage_models: Option<String>,
    #[arg(long = sidecar::REFRESH_FRACTION.flag, help = sidecar::REFRESH_FRACTION.help_text())]
    pub refresh_fraction: Option<String>,
    #[arg(long = sidecar::REFRESH_JITTER.flag, help = sidecar::REFRESH_JITTER.help_text())]
    pub refresh_jitter: Option<String>,
    #[arg(long = sidecar::REFRESH_MAX_BACKOFF.flag, help = sidecar::REFRESH_MAX_BACKOFF.help_text())]
    pub refresh_max_backoff: Option<String>,
    #[arg(long = sidecar::REFRESH_COLD_START_MAX_BACKOFF.flag, help = sidecar::REFRESH_COLD_START_MAX_BACKOFF.help_text())]
    pub refresh_cold_start_max_backoff: Option<String>,
    #[arg(long = sidecar::TOKEN_WATCH_INTERVAL.flag, help = sidecar::TOKEN_WATCH_INTERVAL.help_text())]
    pub token_watch_interval: Option<String>,
    #[arg(long = sidecar::CREDENTIALS_LISTEN.flag, help = sidecar::CREDENTIALS_LISTEN.help_text())]
    pub credentials_listen: Option<String>,
    #[arg(long = sidecar::CREDENTIALS_TOKEN_FILE.flag, help = sidecar::CREDENTIALS_TOKEN_FILE.help_text())]
    pub credentials_token_file: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct CredentialsArgs {
    #[command(flatten)]
    pub aws: AwsArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Defaults of the injected sidecar, shared by `webhook` and `inject`; pod
/// annotations override them one by one.
#[derive(Debug, Args, Default, Clone)]
pub struct SidecarDefaultsArgs {
    #[arg(long = injected::IMAGE.flag, help = injected::IMAGE.help_text())]
    pub sidecar_image: Option<String>,
    #[arg(long = injected::IMAGE_PULL_POLICY.flag, help = injected::IMAGE_PULL_POLICY.help_text())]
    pub sidecar_image_pull_policy: Option<String>,
    #[arg(long = injected::REGION.flag, help = injected::REGION.help_text())]
    pub sidecar_region: Option<String>,
    #[arg(long = injected::MODE.flag, help = injected::MODE.help_text())]
    pub sidecar_mode: Option<String>,
    #[arg(long = injected::AUDIENCE.flag, help = injected::AUDIENCE.help_text())]
    pub sidecar_audience: Option<String>,
    #[arg(long = injected::TOKEN_EXPIRATION.flag, help = injected::TOKEN_EXPIRATION.help_text())]
    pub sidecar_token_expiration: Option<String>,
    #[arg(long = injected::CPU_REQUEST.flag, help = injected::CPU_REQUEST.help_text())]
    pub sidecar_cpu_request: Option<String>,
    #[arg(long = injected::MEMORY_REQUEST.flag, help = injected::MEMORY_REQUEST.help_text())]
    pub sidecar_memory_request: Option<String>,
    #[arg(long = injected::CPU_LIMIT.flag, help = injected::CPU_LIMIT.help_text())]
    pub sidecar_cpu_limit: Option<String>,
    #[arg(long = injected::MEMORY_LIMIT.flag, help = injected::MEMORY_LIMIT.help_text())]
    pub sidecar_memory_limit: Option<String>,
    #[arg(long = injected::LOG_LEVEL.flag, help = injected::LOG_LEVEL.help_text())]
    pub sidecar_log_level: Option<String>,
    #[arg(long = injected::LOG_FORMAT.flag, help = injected::LOG_FORMAT.help_text())]
    pub sidecar_log_format: Option<String>,
    #[arg(long = injected::RUN_AS_USER.flag, help = injected::RUN_AS_USER.help_text())]
    pub sidecar_run_as_user: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct WebhookArgs {
    #[command(flatten)]
    pub log: LogArgs,
    #[arg(long = webhook::LISTEN.flag, help = webhook::LISTEN.help_text())]
    pub listen: Option<String>,
    #[arg(long = webhook::ADMIN_LISTEN.flag, help = webhook::ADMIN_LISTEN.help_text())]
    pub admin_listen: Option<String>,
    #[arg(long = webhook::TLS_CERT_FILE.flag, help = webhook::TLS_CERT_FILE.help_text())]
    pub tls_cert_file: Option<String>,
    #[arg(long = webhook::TLS_KEY_FILE.flag, help = webhook::TLS_KEY_FILE.help_text())]
    pub tls_key_file: Option<String>,
    #[arg(long = webhook::TLS_RELOAD_INTERVAL.flag, help = webhook::TLS_RELOAD_INTERVAL.help_text())]
    pub tls_reload_interval: Option<String>,
    #[arg(long = webhook::ON_LOOKUP_ERROR.flag, help = webhook::ON_LOOKUP_ERROR.help_text())]
    pub on_lookup_error: Option<String>,
    #[arg(long = webhook::LOOKUP_TIMEOUT.flag, help = webhook::LOOKUP_TIMEOUT.help_text())]
    pub lookup_timeout: Option<String>,
    #[arg(long = webhook::SHUTDOWN_GRACE_PERIOD.flag, help = webhook::SHUTDOWN_GRACE_PERIOD.help_text())]
    pub shutdown_grace_period: Option<String>,
    #[command(flatten)]
    pub sidecar: SidecarDefaultsArgs,
}

#[derive(Debug, Args, Default, Clone)]
pub struct InjectArgs {
    #[arg(long = inject::NAMESPACE.flag, help = inject::NAMESPACE.help_text())]
    pub namespace: Option<String>,
    #[arg(long = inject::NAMESPACE_LABEL.flag, value_name = "KEY=VALUE", help = inject::NAMESPACE_LABEL.help_text())]
    pub namespace_labels: Vec<String>,
    #[arg(long = inject::SERVICE_ACCOUNT_ANNOTATION.flag, value_name = "KEY=VALUE", help = inject::SERVICE_ACCOUNT_ANNOTATION.help_text())]
    pub service_account_annotations: Vec<String>,
    #[command(flatten)]
    pub sidecar: SidecarDefaultsArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::setting::Setting;
    use clap::CommandFactory;

    /// Every setting is a flag of the subcommands that read it, with its
    /// generated help, so `--help` and the reference cannot drift.
    #[test]
    fn every_setting_is_a_flag_with_its_help() {
        let cli = Cli::command();
        let check = |sub: &str, settings: &[Setting]| {
            let cmd = cli.find_subcommand(sub).unwrap();
            for s in settings {
                let arg = cmd
                    .get_arguments()
                    .find(|a| a.get_long() == Some(s.flag))
                    .unwrap_or_else(|| panic!("{sub} has no --{}", s.flag));
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                assert_eq!(help, s.help_text(), "{sub} --{}", s.flag);
            }
        };
        let log = [log::FORMAT];
        check("sidecar", sidecar::ALL);
        check("sidecar", aws::ALL);
        check("sidecar", &log);
        check("credentials", aws::ALL);
        check("webhook", webhook::ALL);
        check("webhook", injected::ALL);
        check("webhook", &log);
        check("inject", inject::ALL);
        check("inject", injected::ALL);
        Cli::command().debug_assert();
    }
}
