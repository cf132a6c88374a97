//! Subcommands and flags.
//!
//! Flags are kept as raw strings here; [`crate::config`] turns them (and the
//! environment variables behind them) into typed values, so every parse error
//! names both the flag and the variable.

use clap::{Args, Parser, Subcommand};

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
    Credentials(CredentialsArgs),
}

/// Flags shared by every subcommand that talks to AWS.
#[derive(Debug, Args, Default, Clone)]
pub struct AwsArgs {
    /// AWS region for signing and default endpoints [env: AWS_REGION, then AWS_DEFAULT_REGION]
    #[arg(long)]
    pub region: Option<String>,

    /// Log format: text or json [env: BEDROCK_BROKER_LOG_FORMAT] [default: text]
    #[arg(long)]
    pub log_format: Option<String>,

    /// Timeout of one STS call [env: BEDROCK_BROKER_STS_TIMEOUT] [default: 10s]
    #[arg(long)]
    pub sts_timeout: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct SidecarArgs {
    #[command(flatten)]
    pub aws: AwsArgs,

    /// Proxy listen address [env: BEDROCK_BROKER_LISTEN] [default: 127.0.0.1:9787]
    #[arg(long)]
    pub listen: Option<String>,

    /// Admin (metrics, health) listen address [env: BEDROCK_BROKER_ADMIN_LISTEN] [default: 0.0.0.0:9788]
    #[arg(long)]
    pub admin_listen: Option<String>,

    /// Bedrock base URL [env: AWS_ENDPOINT_URL_BEDROCK_RUNTIME, then AWS_ENDPOINT_URL]
    /// [default: https://bedrock-runtime.<region>.amazonaws.com]
    #[arg(long)]
    pub upstream: Option<String>,

    /// SigV4 signing name, overriding the one derived from the upstream host
    /// [env: BEDROCK_BROKER_SIGNING_NAME]
    #[arg(long)]
    pub signing_name: Option<String>,

    /// Largest request body accepted, in bytes [env: BEDROCK_BROKER_MAX_BODY_BYTES] [default: 26214400]
    #[arg(long)]
    pub max_body_bytes: Option<String>,

    /// How long in-flight requests may finish after SIGTERM [env: BEDROCK_BROKER_SHUTDOWN_GRACE_PERIOD] [default: 25s]
    #[arg(long)]
    pub shutdown_grace_period: Option<String>,

    /// Timeout of a TCP+TLS connect to the upstream [env: BEDROCK_BROKER_CONNECT_TIMEOUT] [default: 5s]
    #[arg(long)]
    pub connect_timeout: Option<String>,

    /// Fraction of the credential lifetime after which they are refreshed
    /// [env: BEDROCK_BROKER_REFRESH_FRACTION] [default: 0.5]
    #[arg(long)]
    pub refresh_fraction: Option<String>,

    /// Longest wait between failed refresh attempts [env: BEDROCK_BROKER_REFRESH_MAX_BACKOFF] [default: 30s]
    #[arg(long)]
    pub refresh_max_backoff: Option<String>,

    /// How often to check the web identity token file for a kubelet rotation; 0s disables
    /// [env: BEDROCK_BROKER_TOKEN_WATCH_INTERVAL] [default: 1s]
    #[arg(long)]
    pub token_watch_interval: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct CredentialsArgs {
    #[command(flatten)]
    pub aws: AwsArgs,
}
