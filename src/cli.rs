//! Subcommands and flags.
//!
//! Flags are kept as raw strings; [`crate::config`] turns them (and the
//! environment variables behind them) into typed values, so every problem
//! names its flag or variable. Names, help and defaults come from
//! [`crate::config::settings`], where each is written once.

use clap::{Args, Parser, Subcommand};

use crate::config::settings::limits::{self, ServerLimits};
use crate::config::settings::{aws, inject, injected, log, policy, sidecar, webhook};

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

/// Declares the flags of one listener's limits.
macro_rules! limit_args {
    ($(#[$doc:meta])* $name:ident, $limits:path) => {
        $(#[$doc])*
        #[derive(Debug, Args, Default, Clone)]
        pub struct $name {
            #[arg(id = LIMITS.header_read_timeout.flag, long = LIMITS.header_read_timeout.flag, value_name = "DURATION", help = LIMITS.header_read_timeout.help_text())]
            pub header_read_timeout: Option<String>,
            #[arg(id = LIMITS.idle_timeout.flag, long = LIMITS.idle_timeout.flag, value_name = "DURATION", help = LIMITS.idle_timeout.help_text())]
            pub idle_timeout: Option<String>,
            #[arg(id = LIMITS.max_connections.flag, long = LIMITS.max_connections.flag, value_name = "COUNT", help = LIMITS.max_connections.help_text())]
            pub max_connections: Option<String>,
            #[arg(id = LIMITS.max_header_bytes.flag, long = LIMITS.max_header_bytes.flag, value_name = "BYTES", help = LIMITS.max_header_bytes.help_text())]
            pub max_header_bytes: Option<String>,
        }

        impl $name {
            /// The settings these flags stand for.
            pub const SETTINGS: ServerLimits = $limits;

            /// The flag values, in the order of [`ServerLimits::all`].
            pub fn values(&self) -> [Option<&str>; 4] {
                [
                    self.header_read_timeout.as_deref(),
                    self.idle_timeout.as_deref(),
                    self.max_connections.as_deref(),
                    self.max_header_bytes.as_deref(),
                ]
            }
        }
    };
}

// Each macro call needs its own `LIMITS` in scope for the attributes.
mod proxy_limits {
    use super::*;
    const LIMITS: ServerLimits = limits::PROXY;
    limit_args!(
        /// Limits of the proxy listener.
        ProxyLimitArgs,
        limits::PROXY
    );
}
mod admin_limits {
    use super::*;
    const LIMITS: ServerLimits = limits::ADMIN;
    limit_args!(
        /// Limits of the sidecar's admin listener.
        AdminLimitArgs,
        limits::ADMIN
    );
}
mod credentials_limits {
    use super::*;
    const LIMITS: ServerLimits = limits::CREDENTIALS;
    limit_args!(
        /// Limits of the container-credentials listener.
        CredentialsLimitArgs,
        limits::CREDENTIALS
    );
}
mod webhook_limits {
    use super::*;
    const LIMITS: ServerLimits = limits::WEBHOOK;
    limit_args!(
        /// Limits of the webhook's HTTPS listener.
        WebhookLimitArgs,
        limits::WEBHOOK
    );
}
mod webhook_admin_limits {
    use super::*;
    const LIMITS: ServerLimits = limits::WEBHOOK_ADMIN;
    limit_args!(
        /// Limits of the webhook's admin listener.
        WebhookAdminLimitArgs,
        limits::WEBHOOK_ADMIN
    );
}
pub use admin_limits::AdminLimitArgs;
pub use credentials_limits::CredentialsLimitArgs;
pub use proxy_limits::ProxyLimitArgs;
pub use webhook_admin_limits::WebhookAdminLimitArgs;
pub use webhook_limits::WebhookLimitArgs;

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
    #[arg(long = aws::HTTPS_PROXY.flag, help = aws::HTTPS_PROXY.help_text())]
    pub https_proxy: Option<String>,
    #[arg(long = aws::NO_PROXY.flag, help = aws::NO_PROXY.help_text())]
    pub no_proxy: Option<String>,
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
    #[arg(long = sidecar::SHUTDOWN_DELAY.flag, help = sidecar::SHUTDOWN_DELAY.help_text())]
    pub shutdown_delay: Option<String>,
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
    #[arg(long = sidecar::BODY_READ_TIMEOUT.flag, help = sidecar::BODY_READ_TIMEOUT.help_text())]
    pub body_read_timeout: Option<String>,
    #[arg(long = sidecar::BODY_MIN_RATE.flag, help = sidecar::BODY_MIN_RATE.help_text())]
    pub body_min_rate: Option<String>,
    #[arg(long = sidecar::BODY_MIN_RATE_GRACE.flag, help = sidecar::BODY_MIN_RATE_GRACE.help_text())]
    pub body_min_rate_grace: Option<String>,
    #[arg(long = sidecar::REQUEST_BODY_BUDGET.flag, help = sidecar::REQUEST_BODY_BUDGET.help_text())]
    pub request_body_budget: Option<String>,
    #[arg(long = sidecar::BODY_BUDGET_WAIT.flag, help = sidecar::BODY_BUDGET_WAIT.help_text())]
    pub body_budget_wait: Option<String>,
    #[arg(long = sidecar::MAX_REQUESTS.flag, help = sidecar::MAX_REQUESTS.help_text())]
    pub max_requests: Option<String>,
    #[arg(long = sidecar::UPSTREAM_MAX_IDLE.flag, help = sidecar::UPSTREAM_MAX_IDLE.help_text())]
    pub upstream_max_idle: Option<String>,
    #[arg(long = sidecar::ALLOWED_HOSTS.flag, help = sidecar::ALLOWED_HOSTS.help_text())]
    pub allowed_hosts: Option<String>,
    #[arg(long = sidecar::PROXY_TOKEN.flag, help = sidecar::PROXY_TOKEN.help_text())]
    pub proxy_token: Option<String>,
    #[arg(long = sidecar::ALLOW_NON_LOOPBACK_LISTEN.flag, help = sidecar::ALLOW_NON_LOOPBACK_LISTEN.help_text())]
    pub allow_non_loopback_listen: Option<String>,
    #[arg(long = sidecar::ALLOW_PLAINTEXT_UPSTREAM.flag, help = sidecar::ALLOW_PLAINTEXT_UPSTREAM.help_text())]
    pub allow_plaintext_upstream: Option<String>,
    #[command(flatten)]
    pub proxy_limits: ProxyLimitArgs,
    #[command(flatten)]
    pub admin_limits: AdminLimitArgs,
    #[arg(long = limits::ADMIN_PER_PEER.flag, help = limits::ADMIN_PER_PEER.help_text())]
    pub admin_max_connections_per_peer: Option<String>,
    #[command(flatten)]
    pub credentials_limits: CredentialsLimitArgs,
}

#[derive(Debug, Args, Default, Clone)]
pub struct CredentialsArgs {
    #[command(flatten)]
    pub aws: AwsArgs,
    #[arg(long = sidecar::ALLOW_PLAINTEXT_UPSTREAM.flag, help = sidecar::ALLOW_PLAINTEXT_UPSTREAM.help_text())]
    pub allow_plaintext_upstream: Option<String>,
    /// STS's FIPS endpoint, as the sidecar's `--use-fips` chooses it.
    #[arg(long = sidecar::USE_FIPS.flag, help = sidecar::USE_FIPS.help_text())]
    pub use_fips: Option<String>,
    /// STS's dual-stack endpoint, as the sidecar's `--use-dualstack`
    /// chooses it.
    #[arg(long = sidecar::USE_DUALSTACK.flag, help = sidecar::USE_DUALSTACK.help_text())]
    pub use_dualstack: Option<String>,
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
    #[arg(long = injected::USE_FIPS.flag, help = injected::USE_FIPS.help_text())]
    pub sidecar_use_fips: Option<String>,
    #[arg(long = injected::USE_DUALSTACK.flag, help = injected::USE_DUALSTACK.help_text())]
    pub sidecar_use_dualstack: Option<String>,
    #[arg(long = injected::HTTPS_PROXY.flag, help = injected::HTTPS_PROXY.help_text())]
    pub sidecar_https_proxy: Option<String>,
    #[arg(long = injected::NO_PROXY.flag, help = injected::NO_PROXY.help_text())]
    pub sidecar_no_proxy: Option<String>,
    #[arg(long = injected::CA_BUNDLE.flag, help = injected::CA_BUNDLE.help_text())]
    pub sidecar_ca_bundle: Option<String>,
    #[arg(long = injected::RUN_AS_USER.flag, help = injected::RUN_AS_USER.help_text())]
    pub sidecar_run_as_user: Option<String>,
    #[arg(long = policy::ROLE_POLICY.flag, help = policy::ROLE_POLICY.help_text())]
    pub role_policy: Option<String>,
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
    #[arg(long = webhook::SHUTDOWN_DELAY.flag, help = webhook::SHUTDOWN_DELAY.help_text())]
    pub shutdown_delay: Option<String>,
    #[arg(long = webhook::BODY_READ_TIMEOUT.flag, help = webhook::BODY_READ_TIMEOUT.help_text())]
    pub body_read_timeout: Option<String>,
    #[arg(long = webhook::BODY_READ_DEADLINE.flag, help = webhook::BODY_READ_DEADLINE.help_text())]
    pub body_read_deadline: Option<String>,
    #[arg(long = webhook::REVIEW_BUDGET.flag, help = webhook::REVIEW_BUDGET.help_text())]
    pub review_budget: Option<String>,
    #[arg(long = limits::WEBHOOK_TLS_HANDSHAKE_TIMEOUT.flag, help = limits::WEBHOOK_TLS_HANDSHAKE_TIMEOUT.help_text())]
    pub tls_handshake_timeout: Option<String>,
    #[command(flatten)]
    pub limits: WebhookLimitArgs,
    #[arg(long = limits::WEBHOOK_PER_PEER.flag, help = limits::WEBHOOK_PER_PEER.help_text())]
    pub max_connections_per_peer: Option<String>,
    #[command(flatten)]
    pub admin_limits: WebhookAdminLimitArgs,
    #[arg(long = limits::WEBHOOK_ADMIN_PER_PEER.flag, help = limits::WEBHOOK_ADMIN_PER_PEER.help_text())]
    pub admin_max_connections_per_peer: Option<String>,
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
    #[arg(long = inject::EXCLUDE_NAMESPACES.flag, value_name = "NS,NS", help = inject::EXCLUDE_NAMESPACES.help_text())]
    pub exclude_namespaces: Option<String>,
    #[command(flatten)]
    pub sidecar: SidecarDefaultsArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::setting::Setting;
    use clap::CommandFactory;

    /// `--flag <VALUE>`, in capitals everywhere (clap names a value after
    /// the argument's id, which the limit flags set to the flag itself).
    #[test]
    fn every_value_name_is_in_capitals() {
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let name = arg
                    .get_value_names()
                    .and_then(|names| names.first().map(|n| n.to_string()))
                    .unwrap_or_else(|| arg.get_id().as_str().to_ascii_uppercase());
                assert_eq!(
                    name,
                    name.to_ascii_uppercase(),
                    "{} --{:?}",
                    sub.get_name(),
                    arg.get_long()
                );
            }
        }
    }

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
        check("sidecar", &limits::PROXY.all());
        check("sidecar", &limits::ADMIN.all());
        check("sidecar", &limits::CREDENTIALS.all());
        check("sidecar", &[limits::ADMIN_PER_PEER]);
        check("webhook", &limits::WEBHOOK.all());
        check("webhook", &limits::WEBHOOK_ADMIN.all());
        check(
            "webhook",
            &[
                limits::WEBHOOK_PER_PEER,
                limits::WEBHOOK_ADMIN_PER_PEER,
                limits::WEBHOOK_TLS_HANDSHAKE_TIMEOUT,
            ],
        );
        check("sidecar", aws::ALL);
        check("sidecar", &log);
        check("credentials", aws::ALL);
        check("webhook", webhook::ALL);
        check("webhook", injected::ALL);
        check("webhook", &log);
        check("inject", inject::ALL);
        check("inject", injected::ALL);
        check("webhook", policy::ALL);
        check("inject", policy::ALL);
        Cli::command().debug_assert();
    }
}
