//! `bedrock-broker webhook`.

use crate::config::setting::{Setting, WhenUnset::*};

/// 8443: unprivileged, and what webhook Services conventionally target.
pub const LISTEN: Setting = Setting {
    flag: "listen",
    env: &["BEDROCK_BROKER_WEBHOOK_LISTEN"],
    default: Value("0.0.0.0:8443"),
    help: "HTTPS listen address for AdmissionReviews; `[::]:<port>` is every IPv4 and IPv6 address (what the chart sets)",
};
/// Next to the sidecar's 9788 so the two never clash on one host.
pub const ADMIN_LISTEN: Setting = Setting {
    flag: "admin-listen",
    env: &["BEDROCK_BROKER_WEBHOOK_ADMIN_LISTEN"],
    default: Value("0.0.0.0:9789"),
    help: "Metrics and health listen address (plain HTTP); `[::]:<port>` as for --listen",
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
    help: "How often the certificate files (and --sidecar-ca-bundle) are checked for changes (at least 1s)",
};
pub const ON_LOOKUP_ERROR: Setting = Setting {
    flag: "on-lookup-error",
    env: &["BEDROCK_BROKER_WEBHOOK_ON_LOOKUP_ERROR"],
    default: Value("deny"),
    help: "What to do with an opted-in pod when its namespace, ServiceAccount or LimitRanges cannot be read: deny or skip",
};
/// Well inside the API server's webhook timeout (10 s by default), so a
/// slow read ends in our own clear answer, not the API server's timeout.
pub const LOOKUP_TIMEOUT: Setting = Setting {
    flag: "lookup-timeout",
    env: &["BEDROCK_BROKER_WEBHOOK_LOOKUP_TIMEOUT"],
    default: Value("3s"),
    help: "Timeout of a direct API read of a namespace, a ServiceAccount, or a namespace's LimitRanges (all pages)",
};
/// Admission requests take milliseconds; 10 s covers a slow API read.
pub const SHUTDOWN_GRACE_PERIOD: Setting = Setting {
    flag: "shutdown-grace-period",
    env: &["BEDROCK_BROKER_WEBHOOK_SHUTDOWN_GRACE_PERIOD"],
    default: Value("10s"),
    help: "How long open requests may finish after SIGTERM or SIGINT; a second signal ends the process at once",
};

/// Kubernetes takes a terminating pod out of its Service's endpoints at the
/// same time as it sends SIGTERM, and the API server may still connect to
/// the pod for a few seconds: a webhook that stopped accepting at once
/// failed the reviews sent in that window (with `failurePolicy: Fail`, the
/// pods too) on every rollout and drain.
pub const SHUTDOWN_DELAY: Setting = Setting {
    flag: "shutdown-delay",
    env: &["BEDROCK_BROKER_WEBHOOK_SHUTDOWN_DELAY"],
    default: Value("5s"),
    help: "After SIGTERM or SIGINT, keep accepting reviews for this long (while the pod leaves its Service's endpoints), then stop accepting and drain for the grace period; 0s stops at once",
};

/// The API server sends a review at once; a body that stalls holds memory.
pub const BODY_READ_TIMEOUT: Setting = Setting {
    flag: "body-read-timeout",
    env: &["BEDROCK_BROKER_WEBHOOK_BODY_READ_TIMEOUT"],
    default: Value("5s"),
    help: "Longest silence while an AdmissionReview body is being received",
};
/// The API server sends a review at once and gives up on the webhook after
/// its `timeoutSeconds` (10 s in the chart, 30 s at most): a body still
/// arriving after that is useless, and a client that drips one forever
/// must not hold its share of the review budget.
pub const BODY_READ_DEADLINE: Setting = Setting {
    flag: "body-read-deadline",
    env: &["BEDROCK_BROKER_WEBHOOK_BODY_READ_DEADLINE"],
    default: Value("10s"),
    help: "Longest time to receive a whole AdmissionReview body, however steadily it arrives",
};
/// Reviews are kilobytes; the 8 MiB limit per review exists for the
/// largest pods. A few of those at once fit; a flood waits or is refused.
pub const REVIEW_BUDGET: Setting = Setting {
    flag: "review-budget",
    env: &["BEDROCK_BROKER_WEBHOOK_REVIEW_BUDGET"],
    default: Value("33554432"),
    help: "Bytes of AdmissionReview text held in memory at once, at least 8388608 (one review of the largest size); parsed pods get 4 times as much room beside it (estimated before parsing, handed out to peers in turn). When it is full, a review takes room from peers holding more than it would (closing their connections whose body or answer has waited on them half a second or more); a review that still does not fit within a second gets 503; one whose pod would not fit in all that room, 413",
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
    SHUTDOWN_DELAY,
    BODY_READ_TIMEOUT,
    BODY_READ_DEADLINE,
    REVIEW_BUDGET,
];
