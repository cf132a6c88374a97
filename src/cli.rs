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
    Credentials(Box<CredentialsArgs>),
    /// Serve the mutating admission webhook that injects the sidecar into pods.
    Webhook(Box<WebhookArgs>),
    /// Inject the sidecar offline: Kubernetes YAML on stdin, mutated YAML on stdout.
    Inject(Box<InjectArgs>),
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

    /// Where SigV4 credentials come from: auto, web-identity, static, profile, container, imds
    /// [env: BEDROCK_BROKER_CREDENTIAL_SOURCE] [default: auto]
    #[arg(long)]
    pub credential_source: Option<String>,

    /// Requested lifetime of STS sessions, 15m to 12h (1h at most when chaining)
    /// [env: BEDROCK_BROKER_SESSION_DURATION] [default: the role's setting, normally 1h]
    #[arg(long)]
    pub session_duration: Option<String>,

    /// Inline session policy (JSON, or @FILE) narrowing what the session may do
    /// [env: BEDROCK_BROKER_SESSION_POLICY]
    #[arg(long)]
    pub session_policy: Option<String>,

    /// Comma-separated managed policy ARNs narrowing the session (at most 10)
    /// [env: BEDROCK_BROKER_SESSION_POLICY_ARNS]
    #[arg(long)]
    pub session_policy_arns: Option<String>,

    /// Second hop: AssumeRole into this role with the first credentials
    /// [env: BEDROCK_BROKER_CHAIN_ROLE_ARN]
    #[arg(long)]
    pub chain_role_arn: Option<String>,

    /// ExternalId for the chained AssumeRole [env: BEDROCK_BROKER_CHAIN_EXTERNAL_ID]
    #[arg(long)]
    pub chain_external_id: Option<String>,
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

    /// Bedrock Agents runtime base URL, served under /agent-runtime/
    /// [env: AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME]
    /// [default: https://bedrock-agent-runtime.<region>.amazonaws.com]
    #[arg(long)]
    pub agent_runtime_upstream: Option<String>,

    /// Bedrock Mantle base URL, served under /mantle/ [env: BEDROCK_BROKER_MANTLE_UPSTREAM]
    /// [default: https://bedrock-mantle.<region>.api.aws]
    #[arg(long)]
    pub mantle_upstream: Option<String>,

    /// Use FIPS endpoints by default: true or false [env: AWS_USE_FIPS_ENDPOINT] [default: false]
    #[arg(long)]
    pub use_fips: Option<String>,

    /// Use dual-stack (IPv6) endpoints by default: true or false
    /// [env: AWS_USE_DUALSTACK_ENDPOINT] [default: false]
    #[arg(long)]
    pub use_dualstack: Option<String>,

    /// Largest request body accepted, in bytes [env: BEDROCK_BROKER_MAX_BODY_BYTES] [default: 26214400]
    #[arg(long)]
    pub max_body_bytes: Option<String>,

    /// How long in-flight requests may finish after SIGTERM [env: BEDROCK_BROKER_SHUTDOWN_GRACE_PERIOD] [default: 25s]
    #[arg(long)]
    pub shutdown_grace_period: Option<String>,

    /// Timeout of a TCP+TLS connect to the upstream [env: BEDROCK_BROKER_CONNECT_TIMEOUT] [default: 5s]
    #[arg(long)]
    pub connect_timeout: Option<String>,

    /// Longest wait for Bedrock's response headers; 0s disables
    /// [env: BEDROCK_BROKER_RESPONSE_HEADER_TIMEOUT] [default: 15m]
    #[arg(long)]
    pub response_header_timeout: Option<String>,

    /// Longest silence inside a streamed response before it is cut off; 0s disables
    /// [env: BEDROCK_BROKER_STREAM_IDLE_TIMEOUT] [default: 5m]
    #[arg(long)]
    pub stream_idle_timeout: Option<String>,

    /// Token usage metrics per model: true or false [env: BEDROCK_BROKER_USAGE_METRICS] [default: true]
    #[arg(long)]
    pub usage_metrics: Option<String>,

    /// Comma-separated model ids allowed as the `model` label (others become `other`)
    /// [env: BEDROCK_BROKER_USAGE_MODELS] [default: the first 20 models seen]
    #[arg(long)]
    pub usage_models: Option<String>,

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

    /// Serve the AWS container-credentials protocol on this loopback address so
    /// other AWS SDKs in the pod share the credentials [env: BEDROCK_BROKER_CREDENTIALS_LISTEN]
    /// [default: off]
    #[arg(long)]
    pub credentials_listen: Option<String>,

    /// File holding the authorization token for --credentials-listen; created with a
    /// random token if missing [env: BEDROCK_BROKER_CREDENTIALS_TOKEN_FILE]
    #[arg(long)]
    pub credentials_token_file: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct CredentialsArgs {
    #[command(flatten)]
    pub aws: AwsArgs,
}

/// Defaults of the injected sidecar, shared by `webhook` and `inject`; pod
/// annotations override them one by one.
#[derive(Debug, Args, Default, Clone)]
pub struct SidecarDefaultsArgs {
    /// Sidecar image [env: BEDROCK_BROKER_SIDECAR_IMAGE]
    /// [default: ghcr.io/bedrock-broker/bedrock-broker:<this version>]
    #[arg(long)]
    pub sidecar_image: Option<String>,

    /// Sidecar imagePullPolicy: Always, IfNotPresent or Never
    /// [env: BEDROCK_BROKER_SIDECAR_IMAGE_PULL_POLICY] [default: unset, the cluster decides]
    #[arg(long)]
    pub sidecar_image_pull_policy: Option<String>,

    /// AWS region of the sidecar when the pod names none [env: BEDROCK_BROKER_SIDECAR_REGION]
    #[arg(long)]
    pub sidecar_region: Option<String>,

    /// native (init container with restartPolicy Always) or classic (regular container)
    /// [env: BEDROCK_BROKER_SIDECAR_MODE] [default: native]
    #[arg(long)]
    pub sidecar_mode: Option<String>,

    /// Audience of the projected service-account token [env: BEDROCK_BROKER_SIDECAR_AUDIENCE]
    /// [default: sts.amazonaws.com]
    #[arg(long)]
    pub sidecar_audience: Option<String>,

    /// Lifetime of the projected token in seconds (at least 600)
    /// [env: BEDROCK_BROKER_SIDECAR_TOKEN_EXPIRATION] [default: 86400]
    #[arg(long)]
    pub sidecar_token_expiration: Option<String>,

    /// Sidecar CPU request [env: BEDROCK_BROKER_SIDECAR_CPU_REQUEST] [default: 10m]
    #[arg(long)]
    pub sidecar_cpu_request: Option<String>,

    /// Sidecar memory request [env: BEDROCK_BROKER_SIDECAR_MEMORY_REQUEST] [default: 32Mi]
    #[arg(long)]
    pub sidecar_memory_request: Option<String>,

    /// Sidecar CPU limit, or none [env: BEDROCK_BROKER_SIDECAR_CPU_LIMIT] [default: none]
    #[arg(long)]
    pub sidecar_cpu_limit: Option<String>,

    /// Sidecar memory limit, or none [env: BEDROCK_BROKER_SIDECAR_MEMORY_LIMIT] [default: 128Mi]
    #[arg(long)]
    pub sidecar_memory_limit: Option<String>,

    /// Sidecar log level (RUST_LOG): error, warn, info, debug or trace
    /// [env: BEDROCK_BROKER_SIDECAR_LOG_LEVEL] [default: info]
    #[arg(long)]
    pub sidecar_log_level: Option<String>,

    /// Sidecar log format: text or json [env: BEDROCK_BROKER_SIDECAR_LOG_FORMAT] [default: json]
    #[arg(long)]
    pub sidecar_log_format: Option<String>,

    /// UID the sidecar runs as when the pod does not dictate one
    /// [env: BEDROCK_BROKER_SIDECAR_RUN_AS_USER] [default: 65532]
    #[arg(long)]
    pub sidecar_run_as_user: Option<String>,
}

#[derive(Debug, Args, Default, Clone)]
pub struct WebhookArgs {
    /// HTTPS listen address for AdmissionReviews [env: BEDROCK_BROKER_WEBHOOK_LISTEN] [default: 0.0.0.0:8443]
    #[arg(long)]
    pub listen: Option<String>,

    /// Metrics and health listen address (plain HTTP) [env: BEDROCK_BROKER_WEBHOOK_ADMIN_LISTEN]
    /// [default: 0.0.0.0:9789]
    #[arg(long)]
    pub admin_listen: Option<String>,

    /// PEM certificate chain [env: BEDROCK_BROKER_WEBHOOK_TLS_CERT_FILE]
    /// [default: /etc/bedrock-broker/tls/tls.crt]
    #[arg(long)]
    pub tls_cert_file: Option<String>,

    /// PEM private key [env: BEDROCK_BROKER_WEBHOOK_TLS_KEY_FILE]
    /// [default: /etc/bedrock-broker/tls/tls.key]
    #[arg(long)]
    pub tls_key_file: Option<String>,

    /// How often the certificate files are checked for changes
    /// [env: BEDROCK_BROKER_WEBHOOK_TLS_RELOAD_INTERVAL] [default: 10s]
    #[arg(long)]
    pub tls_reload_interval: Option<String>,

    /// What to do with an opted-in pod when its namespace or ServiceAccount cannot be read:
    /// deny or skip [env: BEDROCK_BROKER_WEBHOOK_ON_LOOKUP_ERROR] [default: deny]
    #[arg(long)]
    pub on_lookup_error: Option<String>,

    /// Timeout of a direct API read of a namespace or ServiceAccount
    /// [env: BEDROCK_BROKER_WEBHOOK_LOOKUP_TIMEOUT] [default: 3s]
    #[arg(long)]
    pub lookup_timeout: Option<String>,

    /// How long open requests may finish after SIGTERM
    /// [env: BEDROCK_BROKER_WEBHOOK_SHUTDOWN_GRACE_PERIOD] [default: 10s]
    #[arg(long)]
    pub shutdown_grace_period: Option<String>,

    /// Log format: text or json [env: BEDROCK_BROKER_LOG_FORMAT] [default: text]
    #[arg(long)]
    pub log_format: Option<String>,

    #[command(flatten)]
    pub sidecar: SidecarDefaultsArgs,
}

#[derive(Debug, Args, Default, Clone)]
pub struct InjectArgs {
    /// Namespace of objects that name none [default: default]
    #[arg(long)]
    pub namespace: Option<String>,

    /// KEY=VALUE label of every namespace, as the webhook would read it from the cluster
    /// (e.g. bedrock-broker.io/inject=true); repeatable. Namespace documents in the input
    /// are used too.
    #[arg(long = "namespace-label", value_name = "KEY=VALUE")]
    pub namespace_labels: Vec<String>,

    /// KEY=VALUE annotation of every ServiceAccount not in the input
    /// (e.g. eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/app); repeatable.
    /// ServiceAccount documents in the input are used too.
    #[arg(long = "service-account-annotation", value_name = "KEY=VALUE")]
    pub service_account_annotations: Vec<String>,

    #[command(flatten)]
    pub sidecar: SidecarDefaultsArgs,
}
