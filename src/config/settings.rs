//! Every flag and variable the binary reads, each defined once: the CLI's
//! help, the parsers and `docs/configuration.md` all come from here.
//!
//! A default's doc comment says why it is what it is.

use super::setting::{Setting, WhenUnset::*};

/// An environment variable with no flag: standard AWS and Kubernetes
/// variables keep the meaning they have everywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    pub help: &'static str,
}

/// Settings of every subcommand that talks to AWS (`sidecar`, `credentials`).
pub mod aws {
    use super::*;

    pub const REGION: Setting = Setting {
        flag: "region",
        env: &["AWS_REGION", "AWS_DEFAULT_REGION"],
        default: Nothing,
        help: "AWS region for signing and default endpoints; required for SigV4",
    };
    /// STS answers in well under a second; 10 s absorbs a slow IdP lookup.
    pub const STS_TIMEOUT: Setting = Setting {
        flag: "sts-timeout",
        env: &["BEDROCK_BROKER_STS_TIMEOUT"],
        default: Value("10s"),
        help: "Timeout of one STS call",
    };
    pub const CREDENTIAL_SOURCE: Setting = Setting {
        flag: "credential-source",
        env: &["BEDROCK_BROKER_CREDENTIAL_SOURCE"],
        default: Value("auto"),
        help: "Where SigV4 credentials come from: auto, web-identity, static, profile, container, imds",
    };
    pub const SESSION_DURATION: Setting = Setting {
        flag: "session-duration",
        env: &["BEDROCK_BROKER_SESSION_DURATION"],
        default: Computed("the role's setting, normally 1h"),
        help: "Requested lifetime of STS sessions, 15m to 12h (1h at most when chaining)",
    };
    pub const SESSION_POLICY: Setting = Setting {
        flag: "session-policy",
        env: &["BEDROCK_BROKER_SESSION_POLICY"],
        default: Nothing,
        help: "Inline session policy (JSON, or @FILE) narrowing what the session may do",
    };
    pub const SESSION_POLICY_ARNS: Setting = Setting {
        flag: "session-policy-arns",
        env: &["BEDROCK_BROKER_SESSION_POLICY_ARNS"],
        default: Nothing,
        help: "Comma-separated managed policy ARNs narrowing the session (at most 10)",
    };
    pub const CHAIN_ROLE_ARN: Setting = Setting {
        flag: "chain-role-arn",
        env: &["BEDROCK_BROKER_CHAIN_ROLE_ARN"],
        default: Nothing,
        help: "Second hop: AssumeRole into this role with the first credentials",
    };
    pub const CHAIN_EXTERNAL_ID: Setting = Setting {
        flag: "chain-external-id",
        env: &["BEDROCK_BROKER_CHAIN_EXTERNAL_ID"],
        default: Nothing,
        help: "ExternalId for the chained AssumeRole",
    };

    pub const ALL: &[Setting] = &[
        REGION,
        STS_TIMEOUT,
        CREDENTIAL_SOURCE,
        SESSION_DURATION,
        SESSION_POLICY,
        SESSION_POLICY_ARNS,
        CHAIN_ROLE_ARN,
        CHAIN_EXTERNAL_ID,
    ];
}

/// Logging, for the long-running subcommands.
pub mod log {
    use super::*;

    pub const FORMAT: Setting = Setting {
        flag: "log-format",
        env: &["BEDROCK_BROKER_LOG_FORMAT"],
        default: Value("text"),
        help: "Log format: text or json",
    };
}

/// `bedrock-broker sidecar`.
pub mod sidecar {
    use super::*;

    /// Loopback only: the proxy signs whatever reaches it, so nothing
    /// outside the pod may reach it.
    pub const LISTEN: Setting = Setting {
        flag: "listen",
        env: &["BEDROCK_BROKER_LISTEN"],
        default: Value("127.0.0.1:9787"),
        help: "Proxy listen address",
    };
    /// All interfaces: Prometheus and the kubelet's probes come from outside the pod.
    pub const ADMIN_LISTEN: Setting = Setting {
        flag: "admin-listen",
        env: &["BEDROCK_BROKER_ADMIN_LISTEN"],
        default: Value("0.0.0.0:9788"),
        help: "Admin (metrics, health) listen address",
    };
    pub const UPSTREAM: Setting = Setting {
        flag: "upstream",
        env: &["AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_ENDPOINT_URL"],
        default: Computed("https://bedrock-runtime.<region>.amazonaws.com"),
        help: "Bedrock base URL",
    };
    pub const SIGNING_NAME: Setting = Setting {
        flag: "signing-name",
        env: &["BEDROCK_BROKER_SIGNING_NAME"],
        default: Computed("bedrock-mantle for bedrock-mantle.* hosts, else bedrock"),
        help: "SigV4 signing name, overriding the one derived from the upstream host",
    };
    pub const AGENT_RUNTIME_UPSTREAM: Setting = Setting {
        flag: "agent-runtime-upstream",
        env: &["AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"],
        default: Computed("https://bedrock-agent-runtime.<region>.amazonaws.com"),
        help: "Bedrock Agents runtime base URL, served under /agent-runtime/",
    };
    /// Mantle is only published as a dual-stack api.aws endpoint.
    pub const MANTLE_UPSTREAM: Setting = Setting {
        flag: "mantle-upstream",
        env: &["BEDROCK_BROKER_MANTLE_UPSTREAM"],
        default: Computed("https://bedrock-mantle.<region>.api.aws"),
        help: "Bedrock Mantle base URL, served under /mantle/",
    };
    pub const USE_FIPS: Setting = Setting {
        flag: "use-fips",
        env: &["AWS_USE_FIPS_ENDPOINT"],
        default: Value("false"),
        help: "Use FIPS endpoints by default: true or false",
    };
    pub const USE_DUALSTACK: Setting = Setting {
        flag: "use-dualstack",
        env: &["AWS_USE_DUALSTACK_ENDPOINT"],
        default: Value("false"),
        help: "Use dual-stack (IPv6) endpoints by default: true or false",
    };
    /// Bedrock's largest request (InvokeModel with images or documents) is 25 MB.
    pub const MAX_BODY_BYTES: Setting = Setting {
        flag: "max-body-bytes",
        env: &["BEDROCK_BROKER_MAX_BODY_BYTES"],
        default: Value("26214400"),
        help: "Largest request body accepted, in bytes",
    };
    /// Below Kubernetes' default 30 s termination grace, so we exit before SIGKILL.
    pub const SHUTDOWN_GRACE_PERIOD: Setting = Setting {
        flag: "shutdown-grace-period",
        env: &["BEDROCK_BROKER_SHUTDOWN_GRACE_PERIOD"],
        default: Value("25s"),
        help: "How long in-flight requests may finish after SIGTERM",
    };
    /// Long enough for a cross-region TLS handshake, short enough to fail fast.
    pub const CONNECT_TIMEOUT: Setting = Setting {
        flag: "connect-timeout",
        env: &["BEDROCK_BROKER_CONNECT_TIMEOUT"],
        default: Value("5s"),
        help: "Timeout of a TCP+TLS connect to the upstream",
    };
    /// Generous: a long non-streaming generation can take many minutes, but
    /// a connection that never answers must not hold a client forever.
    pub const RESPONSE_HEADER_TIMEOUT: Setting = Setting {
        flag: "response-header-timeout",
        env: &["BEDROCK_BROKER_RESPONSE_HEADER_TIMEOUT"],
        default: Value("15m"),
        help: "Longest wait for Bedrock's response headers; 0s disables",
    };
    /// Models pause between tokens for seconds, not minutes.
    pub const STREAM_IDLE_TIMEOUT: Setting = Setting {
        flag: "stream-idle-timeout",
        env: &["BEDROCK_BROKER_STREAM_IDLE_TIMEOUT"],
        default: Value("5m"),
        help: "Longest silence inside a streamed response before it is cut off; 0s disables",
    };
    pub const USAGE_METRICS: Setting = Setting {
        flag: "usage-metrics",
        env: &["BEDROCK_BROKER_USAGE_METRICS"],
        default: Value("true"),
        help: "Token usage metrics per model: true or false",
    };
    pub const USAGE_MODELS: Setting = Setting {
        flag: "usage-models",
        env: &["BEDROCK_BROKER_USAGE_MODELS"],
        default: Computed("the first 20 models seen"),
        help: "Comma-separated model ids allowed as the `model` label (others become `other`)",
    };
    pub const REFRESH_FRACTION: Setting = Setting {
        flag: "refresh-fraction",
        env: &["BEDROCK_BROKER_REFRESH_FRACTION"],
        default: Value("0.5"),
        help: "Fraction of the credential lifetime after which they are refreshed",
    };
    pub const REFRESH_MAX_BACKOFF: Setting = Setting {
        flag: "refresh-max-backoff",
        env: &["BEDROCK_BROKER_REFRESH_MAX_BACKOFF"],
        default: Value("30s"),
        help: "Longest wait between failed refresh attempts",
    };
    /// A `stat` a second is free, and a rotated token is exchanged within a second.
    pub const TOKEN_WATCH_INTERVAL: Setting = Setting {
        flag: "token-watch-interval",
        env: &["BEDROCK_BROKER_TOKEN_WATCH_INTERVAL"],
        default: Value("1s"),
        help: "How often to check the web identity token file for a kubelet rotation; 0s disables",
    };
    pub const CREDENTIALS_LISTEN: Setting = Setting {
        flag: "credentials-listen",
        env: &["BEDROCK_BROKER_CREDENTIALS_LISTEN"],
        default: Computed("off"),
        help: "Serve the AWS container-credentials protocol on this loopback address so other AWS SDKs in the pod share the credentials",
    };
    pub const CREDENTIALS_TOKEN_FILE: Setting = Setting {
        flag: "credentials-token-file",
        env: &["BEDROCK_BROKER_CREDENTIALS_TOKEN_FILE"],
        default: Nothing,
        help: "File holding the authorization token for --credentials-listen; created with a random token if missing",
    };

    pub const ALL: &[Setting] = &[
        LISTEN,
        ADMIN_LISTEN,
        UPSTREAM,
        SIGNING_NAME,
        AGENT_RUNTIME_UPSTREAM,
        MANTLE_UPSTREAM,
        USE_FIPS,
        USE_DUALSTACK,
        MAX_BODY_BYTES,
        SHUTDOWN_GRACE_PERIOD,
        CONNECT_TIMEOUT,
        RESPONSE_HEADER_TIMEOUT,
        STREAM_IDLE_TIMEOUT,
        USAGE_METRICS,
        USAGE_MODELS,
        REFRESH_FRACTION,
        REFRESH_MAX_BACKOFF,
        TOKEN_WATCH_INTERVAL,
        CREDENTIALS_LISTEN,
        CREDENTIALS_TOKEN_FILE,
    ];
}

/// Variables without a flag, read by `sidecar` and `credentials`.
pub mod vars {
    use super::Variable;

    pub const AWS_ROLE_ARN: Variable = Variable {
        name: "AWS_ROLE_ARN",
        help: "web identity: the IAM role to assume (with the token file)",
    };
    pub const AWS_WEB_IDENTITY_TOKEN_FILE: Variable = Variable {
        name: "AWS_WEB_IDENTITY_TOKEN_FILE",
        help: "web identity: the projected service-account token, re-read on every refresh",
    };
    pub const AWS_ROLE_SESSION_NAME: Variable = Variable {
        name: "AWS_ROLE_SESSION_NAME",
        help: "STS session name; default `<namespace>.<pod>` from POD_NAMESPACE and POD_NAME, else `bedrock-broker-<hostname>`",
    };
    pub const AWS_ENDPOINT_URL_STS: Variable = Variable {
        name: "AWS_ENDPOINT_URL_STS",
        help: "STS endpoint override; default the regional STS endpoint",
    };
    pub const AWS_CA_BUNDLE: Variable = Variable {
        name: "AWS_CA_BUNDLE",
        help: "extra PEM trust anchors for STS and Bedrock, checked at start",
    };
    pub const AWS_ACCESS_KEY_ID: Variable = Variable {
        name: "AWS_ACCESS_KEY_ID",
        help: "static credentials, for local development (with AWS_SECRET_ACCESS_KEY)",
    };
    pub const AWS_SECRET_ACCESS_KEY: Variable = Variable {
        name: "AWS_SECRET_ACCESS_KEY",
        help: "static credentials: the secret key",
    };
    pub const AWS_SESSION_TOKEN: Variable = Variable {
        name: "AWS_SESSION_TOKEN",
        help: "static credentials: the session token of temporary keys",
    };
    pub const AWS_BEARER_TOKEN_BEDROCK: Variable = Variable {
        name: "AWS_BEARER_TOKEN_BEDROCK",
        help: "a Bedrock API key: every request is sent with it instead of SigV4",
    };
    pub const AWS_PROFILE: Variable = Variable {
        name: "AWS_PROFILE",
        help: "a profile of the shared config files (`--credential-source profile`, or auto when nothing else is set)",
    };
    pub const AWS_CONTAINER_CREDENTIALS_FULL_URI: Variable = Variable {
        name: "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        help: "container credentials (ECS, EKS Pod Identity), read by aws-config",
    };
    pub const AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: Variable = Variable {
        name: "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        help: "container credentials (ECS), read by aws-config",
    };
    pub const POD_NAMESPACE: Variable = Variable {
        name: "POD_NAMESPACE",
        help: "the pod's namespace (downward API), for the default session name",
    };
    pub const POD_NAME: Variable = Variable {
        name: "POD_NAME",
        help: "the pod's name (downward API), for the default session name",
    };
    pub const HOSTNAME: Variable = Variable {
        name: "HOSTNAME",
        help: "set by Kubernetes to the pod name; the session name falls back to it",
    };
    pub const RUST_LOG: Variable = Variable {
        name: "RUST_LOG",
        help: "log levels, e.g. `info` or `info,bedrock_broker=debug`; crates that could log request details stay capped at `info`",
    };

    pub const ALL: &[Variable] = &[
        AWS_ROLE_ARN,
        AWS_WEB_IDENTITY_TOKEN_FILE,
        AWS_ROLE_SESSION_NAME,
        AWS_ENDPOINT_URL_STS,
        AWS_CA_BUNDLE,
        AWS_ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY,
        AWS_SESSION_TOKEN,
        AWS_BEARER_TOKEN_BEDROCK,
        AWS_PROFILE,
        AWS_CONTAINER_CREDENTIALS_FULL_URI,
        AWS_CONTAINER_CREDENTIALS_RELATIVE_URI,
        POD_NAMESPACE,
        POD_NAME,
        HOSTNAME,
        RUST_LOG,
    ];
}

/// `bedrock-broker webhook`.
pub mod webhook {
    use super::*;

    /// 8443: unprivileged, and what webhook Services conventionally target.
    pub const LISTEN: Setting = Setting {
        flag: "listen",
        env: &["BEDROCK_BROKER_WEBHOOK_LISTEN"],
        default: Value("0.0.0.0:8443"),
        help: "HTTPS listen address for AdmissionReviews",
    };
    /// Next to the sidecar's 9788 so the two never clash on one host.
    pub const ADMIN_LISTEN: Setting = Setting {
        flag: "admin-listen",
        env: &["BEDROCK_BROKER_WEBHOOK_ADMIN_LISTEN"],
        default: Value("0.0.0.0:9789"),
        help: "Metrics and health listen address (plain HTTP)",
    };
    /// Where the chart mounts the cert-manager (or chart-generated) Secret.
    pub const TLS_CERT_FILE: Setting = Setting {
        flag: "tls-cert-file",
        env: &["BEDROCK_BROKER_WEBHOOK_TLS_CERT_FILE"],
        default: Value("/etc/bedrock-broker/tls/tls.crt"),
        help: "PEM certificate chain",
    };
    pub const TLS_KEY_FILE: Setting = Setting {
        flag: "tls-key-file",
        env: &["BEDROCK_BROKER_WEBHOOK_TLS_KEY_FILE"],
        default: Value("/etc/bedrock-broker/tls/tls.key"),
        help: "PEM private key",
    };
    /// The kubelet takes up to a minute to publish a rotated Secret anyway;
    /// reading two small files every 10 s costs nothing.
    pub const TLS_RELOAD_INTERVAL: Setting = Setting {
        flag: "tls-reload-interval",
        env: &["BEDROCK_BROKER_WEBHOOK_TLS_RELOAD_INTERVAL"],
        default: Value("10s"),
        help: "How often the certificate files are checked for changes",
    };
    pub const ON_LOOKUP_ERROR: Setting = Setting {
        flag: "on-lookup-error",
        env: &["BEDROCK_BROKER_WEBHOOK_ON_LOOKUP_ERROR"],
        default: Value("deny"),
        help: "What to do with an opted-in pod when its namespace or ServiceAccount cannot be read: deny or skip",
    };
    /// Well inside the API server's webhook timeout (10 s by default), so a
    /// slow read ends in our own clear answer, not the API server's timeout.
    pub const LOOKUP_TIMEOUT: Setting = Setting {
        flag: "lookup-timeout",
        env: &["BEDROCK_BROKER_WEBHOOK_LOOKUP_TIMEOUT"],
        default: Value("3s"),
        help: "Timeout of a direct API read of a namespace or ServiceAccount",
    };
    /// Admission requests take milliseconds; 10 s covers a slow API read.
    pub const SHUTDOWN_GRACE_PERIOD: Setting = Setting {
        flag: "shutdown-grace-period",
        env: &["BEDROCK_BROKER_WEBHOOK_SHUTDOWN_GRACE_PERIOD"],
        default: Value("10s"),
        help: "How long open requests may finish after SIGTERM",
    };

    pub const ALL: &[Setting] = &[
        LISTEN,
        ADMIN_LISTEN,
        TLS_CERT_FILE,
        TLS_KEY_FILE,
        TLS_RELOAD_INTERVAL,
        ON_LOOKUP_ERROR,
        LOOKUP_TIMEOUT,
        SHUTDOWN_GRACE_PERIOD,
    ];
}

/// Defaults of the injected sidecar (`webhook` and `inject`); pod
/// annotations override them one by one.
pub mod injected {
    use super::*;

    /// The image of this very build, so webhook and sidecar versions match.
    pub const IMAGE: Setting = Setting {
        flag: "sidecar-image",
        env: &["BEDROCK_BROKER_SIDECAR_IMAGE"],
        default: Value(concat!(
            "ghcr.io/bedrock-broker/bedrock-broker:",
            env!("CARGO_PKG_VERSION")
        )),
        help: "Sidecar image",
    };
    pub const IMAGE_PULL_POLICY: Setting = Setting {
        flag: "sidecar-image-pull-policy",
        env: &["BEDROCK_BROKER_SIDECAR_IMAGE_PULL_POLICY"],
        default: Computed("unset, the cluster decides"),
        help: "Sidecar imagePullPolicy: Always, IfNotPresent or Never",
    };
    pub const REGION: Setting = Setting {
        flag: "sidecar-region",
        env: &["BEDROCK_BROKER_SIDECAR_REGION"],
        default: Nothing,
        help: "AWS region of the sidecar when the pod names none",
    };
    pub const MODE: Setting = Setting {
        flag: "sidecar-mode",
        env: &["BEDROCK_BROKER_SIDECAR_MODE"],
        default: Value("native"),
        help: "native (init container with restartPolicy Always) or classic (regular container)",
    };
    /// The audience STS expects for web identity federation.
    pub const AUDIENCE: Setting = Setting {
        flag: "sidecar-audience",
        env: &["BEDROCK_BROKER_SIDECAR_AUDIENCE"],
        default: Value("sts.amazonaws.com"),
        help: "Audience of the projected service-account token",
    };
    /// The kubelet refreshes the token at 80% of this; one day is what the
    /// EKS Pod Identity Webhook uses.
    pub const TOKEN_EXPIRATION: Setting = Setting {
        flag: "sidecar-token-expiration",
        env: &["BEDROCK_BROKER_SIDECAR_TOKEN_EXPIRATION"],
        default: Value("86400"),
        help: "Lifetime of the projected token in seconds (at least 600)",
    };
    /// Idle sidecar: a few millicores.
    pub const CPU_REQUEST: Setting = Setting {
        flag: "sidecar-cpu-request",
        env: &["BEDROCK_BROKER_SIDECAR_CPU_REQUEST"],
        default: Value("10m"),
        help: "Sidecar CPU request",
    };
    /// Idle sidecar: about 10 MiB resident.
    pub const MEMORY_REQUEST: Setting = Setting {
        flag: "sidecar-memory-request",
        env: &["BEDROCK_BROKER_SIDECAR_MEMORY_REQUEST"],
        default: Value("32Mi"),
        help: "Sidecar memory request",
    };
    pub const CPU_LIMIT: Setting = Setting {
        flag: "sidecar-cpu-limit",
        env: &["BEDROCK_BROKER_SIDECAR_CPU_LIMIT"],
        default: Value("none"),
        help: "Sidecar CPU limit, or none",
    };
    /// Bodies are held in memory for signing (25 MiB at most per request),
    /// so a few concurrent large requests fit.
    pub const MEMORY_LIMIT: Setting = Setting {
        flag: "sidecar-memory-limit",
        env: &["BEDROCK_BROKER_SIDECAR_MEMORY_LIMIT"],
        default: Value("128Mi"),
        help: "Sidecar memory limit, or none",
    };
    pub const LOG_LEVEL: Setting = Setting {
        flag: "sidecar-log-level",
        env: &["BEDROCK_BROKER_SIDECAR_LOG_LEVEL"],
        default: Value("info"),
        help: "Sidecar log level (RUST_LOG): error, warn, info, debug or trace",
    };
    /// JSON: injected sidecars log into a cluster's log pipeline.
    pub const LOG_FORMAT: Setting = Setting {
        flag: "sidecar-log-format",
        env: &["BEDROCK_BROKER_SIDECAR_LOG_FORMAT"],
        default: Value("json"),
        help: "Sidecar log format: text or json",
    };
    /// The distroless "nonroot" user.
    pub const RUN_AS_USER: Setting = Setting {
        flag: "sidecar-run-as-user",
        env: &["BEDROCK_BROKER_SIDECAR_RUN_AS_USER"],
        default: Value("65532"),
        help: "UID the sidecar runs as when the pod does not dictate one",
    };

    pub const ALL: &[Setting] = &[
        IMAGE,
        IMAGE_PULL_POLICY,
        REGION,
        MODE,
        AUDIENCE,
        TOKEN_EXPIRATION,
        CPU_REQUEST,
        MEMORY_REQUEST,
        CPU_LIMIT,
        MEMORY_LIMIT,
        LOG_LEVEL,
        LOG_FORMAT,
        RUN_AS_USER,
    ];
}

/// `bedrock-broker inject` (flags only: it runs by hand or in CI).
pub mod inject {
    use super::*;

    /// What `kubectl apply` assumes for objects that name none.
    pub const NAMESPACE: Setting = Setting {
        flag: "namespace",
        env: &[],
        default: Value("default"),
        help: "Namespace of objects that name none",
    };
    pub const NAMESPACE_LABEL: Setting = Setting {
        flag: "namespace-label",
        env: &[],
        default: Nothing,
        help: "KEY=VALUE label of every namespace, as the webhook would read it from the cluster (e.g. bedrock-broker.io/inject=true); repeatable. Namespace documents in the input are used too",
    };
    pub const SERVICE_ACCOUNT_ANNOTATION: Setting = Setting {
        flag: "service-account-annotation",
        env: &[],
        default: Nothing,
        help: "KEY=VALUE annotation of every ServiceAccount not in the input (e.g. eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/app); repeatable. ServiceAccount documents in the input are used too",
    };

    pub const ALL: &[Setting] = &[NAMESPACE, NAMESPACE_LABEL, SERVICE_ACCOUNT_ANNOTATION];
}
