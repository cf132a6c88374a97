//! `bedrock-broker sidecar`.

use crate::config::setting::{Setting, WhenUnset::*};

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
    help: "Admin (metrics, health) listen address; `[::]:<port>` is every IPv4 and IPv6 address (what the injector sets)",
};
pub const UPSTREAM: Setting = Setting {
    flag: "upstream",
    env: &["AWS_ENDPOINT_URL_BEDROCK_RUNTIME", "AWS_ENDPOINT_URL"],
    default: Computed("https://bedrock-runtime.<region>.amazonaws.com"),
    help: "Bedrock base URL; the default takes the region's partition's domain (amazonaws.com.cn in China, amazonaws.eu in the European Sovereign Cloud...) and FIPS/dual-stack names, as the AWS SDKs do",
};
pub const SIGNING_NAME: Setting = Setting {
    flag: "signing-name",
    env: &["BEDROCK_BROKER_SIGNING_NAME"],
    default: Computed("bedrock-mantle for bedrock-mantle.* hosts, else bedrock"),
    help: "SigV4 signing name for --upstream (the runtime API and /openai), overriding the one derived from its host; the Mantle and Agents runtime upstreams sign for their own services",
};
pub const AGENT_RUNTIME_UPSTREAM: Setting = Setting {
    flag: "agent-runtime-upstream",
    env: &["AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"],
    default: Computed(
        "https://bedrock-agent-runtime.<region>.amazonaws.com (the region's partition's domain)",
    ),
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
    help: "Use FIPS endpoints by default for Bedrock runtime, Agents runtime and STS (Mantle has none; an explicit endpoint wins): true or false",
};
pub const USE_DUALSTACK: Setting = Setting {
    flag: "use-dualstack",
    env: &["AWS_USE_DUALSTACK_ENDPOINT"],
    default: Value("false"),
    help: "Use dual-stack (IPv6) endpoints by default for Bedrock runtime, Agents runtime and STS (Mantle's is dual-stack anyway; an explicit endpoint wins): true or false",
};
/// Bedrock's largest request (InvokeModel with images or documents) is 25 MB.
pub const MAX_BODY_BYTES: Setting = Setting {
    flag: "max-body-bytes",
    env: &["BEDROCK_BROKER_MAX_BODY_BYTES"],
    default: Value("26214400"),
    help: "Largest request body accepted, in bytes (at most 4294967295)",
};
/// Below Kubernetes' default 30 s termination grace, so we exit before SIGKILL.
pub const SHUTDOWN_GRACE_PERIOD: Setting = Setting {
    flag: "shutdown-grace-period",
    env: &["BEDROCK_BROKER_SHUTDOWN_GRACE_PERIOD"],
    default: Value("25s"),
    help: "How long in-flight requests may finish after SIGTERM or SIGINT; a second signal ends the process at once",
};
/// Off by default: a native sidecar is stopped after the app, when nothing
/// is connected any more. The injector sets it for classic-mode pods, whose
/// containers are all told to stop at once.
pub const SHUTDOWN_DELAY: Setting = Setting {
    flag: "shutdown-delay",
    env: &["BEDROCK_BROKER_SHUTDOWN_DELAY"],
    default: Value("0s"),
    help: "After SIGTERM or SIGINT, keep accepting requests for up to this long while clients still hold connections to the proxy or the container-credentials endpoint (an app stopping at the same time may still call Bedrock), then drain",
};
/// Long enough for a cross-region TLS handshake, short enough to fail fast.
pub const CONNECT_TIMEOUT: Setting = Setting {
    flag: "connect-timeout",
    env: &["BEDROCK_BROKER_CONNECT_TIMEOUT"],
    default: Value("5s"),
    help:
        "Timeout of a connect to the upstream, all of it: DNS, TCP, an egress proxy's CONNECT, TLS",
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
    default: Computed("the first 20 models that answered"),
    help: "Comma-separated model ids allowed as the `model` label (others become `other`)",
};
pub const REFRESH_FRACTION: Setting = Setting {
    flag: "refresh-fraction",
    env: &["BEDROCK_BROKER_REFRESH_FRACTION"],
    default: Value("0.5"),
    help: "Fraction of the credential lifetime after which they are refreshed",
};
/// A fifth of the lifetime: docs/fleet.md shows a tenth lets a mass
/// restart's later refresh waves stay too synchronised.
pub const REFRESH_JITTER: Setting = Setting {
    flag: "refresh-jitter",
    env: &["BEDROCK_BROKER_REFRESH_JITTER"],
    default: Value("0.2"),
    help: "Up to this fraction of the credential lifetime is taken off each refresh at random, so pods started together spread their STS calls; below --refresh-fraction",
};
/// Long: 10,000 pods retrying up to 5 minutes apart call STS ~70 times a
/// second, far under its quota, while each still holds credentials
/// (docs/fleet.md).
pub const REFRESH_MAX_BACKOFF: Setting = Setting {
    flag: "refresh-max-backoff",
    env: &["BEDROCK_BROKER_REFRESH_MAX_BACKOFF"],
    default: Value("5m"),
    help: "Longest wait between failed refresh attempts while usable credentials are held (at most a quarter of their remaining life), and after fatal or token errors; STS is never called twice within a second, whatever this says",
};
/// Short, as the pod is not ready meanwhile; 10,000 such pods still stay
/// near STS's quota (docs/fleet.md).
pub const REFRESH_COLD_START_MAX_BACKOFF: Setting = Setting {
    flag: "refresh-cold-start-max-backoff",
    env: &["BEDROCK_BROKER_REFRESH_COLD_START_MAX_BACKOFF"],
    default: Value("30s"),
    help: "Longest wait between refresh attempts failing for transient reasons while no usable credentials are held (cold start, expired); the default follows a shorter --refresh-max-backoff, a longer value given is refused",
};
/// A `stat` a second is free, and a rotated token is exchanged within a second.
pub const TOKEN_WATCH_INTERVAL: Setting = Setting {
    flag: "token-watch-interval",
    env: &["BEDROCK_BROKER_TOKEN_WATCH_INTERVAL"],
    default: Value("1s"),
    help: "How often to check the web identity token file for a kubelet rotation (at least 100ms); 0s disables",
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

/// Large uploads over a slow link are legitimate, a body that stops is not:
/// this bounds the silence between two pieces of a body, not the whole.
pub const BODY_READ_TIMEOUT: Setting = Setting {
    flag: "body-read-timeout",
    env: &["BEDROCK_BROKER_BODY_READ_TIMEOUT"],
    default: Value("30s"),
    help: "Longest silence while a request body is being received; then 408",
};
/// A body that keeps trickling is never silent for --body-read-timeout,
/// yet holds its share of --request-body-budget (reserved from its
/// declared length) until it ends. In-pod clients send from memory over
/// loopback at many MB/s; 64 KiB/s is far below any of them and still
/// ends a 25 MB body's hold within seven minutes, a drip's within the grace.
pub const BODY_MIN_RATE: Setting = Setting {
    flag: "body-min-rate",
    env: &["BEDROCK_BROKER_BODY_MIN_RATE"],
    default: Value("65536"),
    help: "Least average rate, in bytes a second, at which a request body must arrive once --body-min-rate-grace has passed; then 408; 0 disables",
};
pub const BODY_MIN_RATE_GRACE: Setting = Setting {
    flag: "body-min-rate-grace",
    env: &["BEDROCK_BROKER_BODY_MIN_RATE_GRACE"],
    default: Value("10s"),
    help: "How long a request body may take before --body-min-rate applies",
};
/// Half of the injected 128Mi memory limit: two 25 MiB requests, or many
/// small ones, at once; the rest wait (see --body-budget-wait).
pub const REQUEST_BODY_BUDGET: Setting = Setting {
    flag: "request-body-budget",
    env: &["BEDROCK_BROKER_REQUEST_BODY_BUDGET"],
    default: Value("67108864"),
    help: "Bytes of request bodies held in memory at once, across all requests (SigV4 signs whole bodies)",
};
/// Long enough to ride out a burst, short enough that a client is not left
/// hanging: then 503 with Retry-After.
pub const BODY_BUDGET_WAIT: Setting = Setting {
    flag: "body-budget-wait",
    env: &["BEDROCK_BROKER_BODY_BUDGET_WAIT"],
    default: Value("5s"),
    help: "How long a request waits for room in --request-body-budget before a 503",
};
/// Bounds the upstream connections and tasks one pod can open.
pub const MAX_REQUESTS: Setting = Setting {
    flag: "max-requests",
    env: &["BEDROCK_BROKER_MAX_REQUESTS"],
    default: Value("512"),
    help: "Requests served at once (streams included); more get 503 with Retry-After",
};
/// Idle upstream connections kept per host for reuse.
/// Below the concurrency an app drives, connections churn: every request
/// beyond the cap opens a new TLS connection (at 64 concurrent requests a
/// cap of 32 cost two thirds of the throughput). Above it, idle
/// connections cost memory until the pool's idle timeout closes them.
pub const UPSTREAM_MAX_IDLE: Setting = Setting {
    flag: "upstream-max-idle",
    env: &["BEDROCK_BROKER_UPSTREAM_MAX_IDLE"],
    default: Value("128"),
    help: "Idle connections to each upstream kept for reuse; keep it at or above the concurrent requests the app makes, or connections churn",
};
pub const ALLOWED_HOSTS: Setting = Setting {
    flag: "allowed-hosts",
    env: &["BEDROCK_BROKER_ALLOWED_HOSTS"],
    default: Computed("loopback names and addresses only"),
    help: "Comma-separated extra Host names (or IP addresses) the proxy answers to, beside localhost and loopback addresses; compared without the port, so an entry names no port, scheme or wildcard",
};
pub const PROXY_TOKEN: Setting = Setting {
    flag: "proxy-token",
    env: &["BEDROCK_BROKER_PROXY_TOKEN"],
    default: Nothing,
    help: "A token every request must carry (Authorization: Bearer, or x-bedrock-broker-token), at least 16 printable characters; @FILE reads it from a file (given inline, the token shows in `ps`, which is warned about at start)",
};
pub const ALLOW_NON_LOOPBACK_LISTEN: Setting = Setting {
    flag: "allow-non-loopback-listen",
    env: &["BEDROCK_BROKER_ALLOW_NON_LOOPBACK_LISTEN"],
    default: Value("false"),
    help: "Let --listen be a non-loopback address (the proxy then signs for anyone who reaches it)",
};
pub const ALLOW_PLAINTEXT_UPSTREAM: Setting = Setting {
    flag: "allow-plaintext-upstream",
    env: &["BEDROCK_BROKER_ALLOW_PLAINTEXT_UPSTREAM"],
    default: Value("false"),
    help: "Let an upstream, or the STS endpoint, that is not on loopback use http:// (tokens and credentials then travel in clear)",
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
    SHUTDOWN_DELAY,
    CONNECT_TIMEOUT,
    RESPONSE_HEADER_TIMEOUT,
    STREAM_IDLE_TIMEOUT,
    USAGE_METRICS,
    USAGE_MODELS,
    REFRESH_FRACTION,
    REFRESH_JITTER,
    REFRESH_MAX_BACKOFF,
    REFRESH_COLD_START_MAX_BACKOFF,
    TOKEN_WATCH_INTERVAL,
    CREDENTIALS_LISTEN,
    CREDENTIALS_TOKEN_FILE,
    BODY_READ_TIMEOUT,
    BODY_MIN_RATE,
    BODY_MIN_RATE_GRACE,
    REQUEST_BODY_BUDGET,
    BODY_BUDGET_WAIT,
    MAX_REQUESTS,
    UPSTREAM_MAX_IDLE,
    ALLOWED_HOSTS,
    PROXY_TOKEN,
    ALLOW_NON_LOOPBACK_LISTEN,
    ALLOW_PLAINTEXT_UPSTREAM,
];
