//! Defaults of the injected sidecar (`webhook` and `inject`); pod
//! annotations override them one by one.

use crate::config::setting::{Setting, WhenUnset::*};

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
/// Bodies are held in memory for signing (25 MiB at most per request);
/// the injector gives the sidecar half of this as its request-body budget
/// (BEDROCK_BROKER_REQUEST_BODY_BUDGET), so two large requests fit at once.
pub const MEMORY_LIMIT: Setting = Setting {
    flag: "sidecar-memory-limit",
    env: &["BEDROCK_BROKER_SIDECAR_MEMORY_LIMIT"],
    default: Value("128Mi"),
    help: "Sidecar memory limit (at least 32Mi), or none; half of it (at most the limit less 24 MiB, and at most 1 TiB) becomes the sidecar's --request-body-budget",
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
/// A platform's policy, not a pod's: the app's own AWS_USE_FIPS_ENDPOINT
/// serves its other AWS calls, and many regions have no FIPS Bedrock host.
pub const USE_FIPS: Setting = Setting {
    flag: "sidecar-use-fips",
    env: &["BEDROCK_BROKER_SIDECAR_USE_FIPS"],
    default: Value("false"),
    help: "Injected sidecars call the FIPS endpoints of Bedrock runtime, Agents runtime and STS (AWS_USE_FIPS_ENDPOINT): true or false",
};
/// Like FIPS, a platform's policy: dual-stack hosts exist only for some
/// services and regions, and an app's own setting serves its other calls.
pub const USE_DUALSTACK: Setting = Setting {
    flag: "sidecar-use-dualstack",
    env: &["BEDROCK_BROKER_SIDECAR_USE_DUALSTACK"],
    default: Value("false"),
    help: "Injected sidecars call the dual-stack (IPv4 and IPv6) endpoints of Bedrock runtime, Agents runtime and STS (AWS_USE_DUALSTACK_ENDPOINT): true or false",
};
/// A platform's egress, not a pod's: the app's own HTTPS_PROXY may be for
/// other traffic. No credentials: they would sit in every pod spec.
pub const HTTPS_PROXY: Setting = Setting {
    flag: "sidecar-https-proxy",
    env: &["BEDROCK_BROKER_SIDECAR_HTTPS_PROXY"],
    default: Nothing,
    help: "Injected sidecars reach STS and Bedrock through this forward proxy (HTTPS_PROXY), http://host[:port], without credentials",
};
pub const NO_PROXY: Setting = Setting {
    flag: "sidecar-no-proxy",
    env: &["BEDROCK_BROKER_SIDECAR_NO_PROXY"],
    default: Nothing,
    help: "Hosts injected sidecars reach without the --sidecar-https-proxy (NO_PROXY): host suffixes, IP addresses, CIDR ranges",
};
/// Injected as text (as linkerd injects its trust anchors): no ConfigMap
/// needs to exist in every namespace.
pub const CA_BUNDLE: Setting = Setting {
    flag: "sidecar-ca-bundle",
    env: &["BEDROCK_BROKER_SIDECAR_CA_BUNDLE"],
    default: Nothing,
    help: "PEM file of extra trust anchors for injected sidecars (a TLS-inspecting proxy's CA, a private endpoint's), re-read every --tls-reload-interval; its certificates at most 64 KiB",
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
    USE_FIPS,
    USE_DUALSTACK,
    HTTPS_PROXY,
    NO_PROXY,
    CA_BUNDLE,
    RUN_AS_USER,
];
