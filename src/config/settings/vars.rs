//! Variables without a flag, read by `sidecar` and `credentials`.

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
    help: "STS session name; default `<namespace>.<pod>` from POD_NAMESPACE and POD_NAME (past 64 characters the namespace cut to 20 and the pod's name in its middle, its end kept), else `bedrock-broker-<POD_NAME or hostname>`, else `bedrock-broker`",
};
pub const AWS_ENDPOINT_URL_STS: Variable = Variable {
    name: "AWS_ENDPOINT_URL_STS",
    help: "STS endpoint override; default the regional STS endpoint. Plain http:// only to loopback, unless --allow-plaintext-upstream",
};
pub const AWS_CA_BUNDLE: Variable = Variable {
    name: "AWS_CA_BUNDLE",
    help: "extra PEM trust anchors for STS and Bedrock, checked at start (each certificate must parse)",
};
pub const CA_BUNDLE_PEM: Variable = Variable {
    name: "BEDROCK_BROKER_CA_BUNDLE_PEM",
    help: "extra PEM trust anchors as text, as the webhook injects them (its --sidecar-ca-bundle), added to AWS_CA_BUNDLE's",
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
    help: "log levels, e.g. `info` or `info,bedrock_broker=debug`; crates that could log request details stay capped at `info` (aws-config at `error`: its warnings quote STS's error bodies), and without a level for the rest (only targets named) the rest is at `warn`",
};

/// Read by the runtime set-up (checked there, not by tokio: it panics on
/// a bad value); documented with the libraries' variables.
pub const TOKIO_WORKER_THREADS: Variable = Variable {
    name: "TOKIO_WORKER_THREADS",
    help: "worker threads",
};

pub const ALL: &[Variable] = &[
    AWS_ROLE_ARN,
    AWS_WEB_IDENTITY_TOKEN_FILE,
    AWS_ROLE_SESSION_NAME,
    AWS_ENDPOINT_URL_STS,
    AWS_CA_BUNDLE,
    CA_BUNDLE_PEM,
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
