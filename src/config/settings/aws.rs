//! Settings of every subcommand that talks to AWS (`sidecar`, `credentials`).

use crate::config::setting::{Setting, WhenUnset::*};

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

/// The standard variables, as curl, Go and the AWS SDKs read them.
pub const HTTPS_PROXY: Setting = Setting {
    flag: "https-proxy",
    env: &["HTTPS_PROXY", "https_proxy"],
    default: Nothing,
    help: "Forward proxy for STS and Bedrock, http://[user:password@]host[:port]: HTTPS is tunnelled through it with CONNECT; loopback and plain-HTTP destinations go direct",
};
pub const NO_PROXY: Setting = Setting {
    flag: "no-proxy",
    env: &["NO_PROXY", "no_proxy"],
    default: Nothing,
    help: "Hosts reached without the --https-proxy: comma-separated host suffixes, IP addresses, CIDR ranges, or * for all",
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
    HTTPS_PROXY,
    NO_PROXY,
];
