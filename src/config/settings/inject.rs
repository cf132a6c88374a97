//! `bedrock-broker inject` (flags only: it runs by hand or in CI).

use crate::config::setting::{Setting, WhenUnset::*};

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

/// What the chart's selectors exclude by default: `webhook.excludeNamespaces`
/// (kube-system) and the release namespace the docs and deploy/ use. The
/// webhook never sees pods there, so `inject` leaves them alone too.
pub const EXCLUDE_NAMESPACES: Setting = Setting {
    flag: "exclude-namespaces",
    env: &[],
    default: Value("kube-system,bedrock-broker"),
    help: "Comma-separated namespaces whose pods are left unchanged, as the webhook's selectors exclude them (the chart's webhook.excludeNamespaces plus its release namespace); empty for none",
};

pub const ALL: &[Setting] = &[
    NAMESPACE,
    NAMESPACE_LABEL,
    SERVICE_ACCOUNT_ANNOTATION,
    EXCLUDE_NAMESPACES,
];
