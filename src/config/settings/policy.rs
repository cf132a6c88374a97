//! What injection allows, for `webhook` and `inject` alike (so `inject`
//! answers as the webhook would). Pods cannot override these.

use crate::config::setting::{Setting, WhenUnset::*};

/// The binary keeps the contract's precedence (the pod's annotation, then
/// its ServiceAccount's), which `inject` users and hand-run webhooks rely
/// on; the chart and `deploy/` install the safer `service-account`, so a
/// cluster gets it without asking (docs/security.md).
pub const ROLE_POLICY: Setting = Setting {
    flag: "role-policy",
    env: &["BEDROCK_BROKER_WEBHOOK_ROLE_POLICY"],
    default: Value("any"),
    help: "Which IAM roles a pod may get: service-account (only its ServiceAccount's eks.amazonaws.com/role-arn; a pod annotation or container AWS_ROLE_ARN naming another role is refused) or any (the pod annotation, then the ServiceAccount, then a container's AWS_ROLE_ARN; only the role's trust policy stands in the way)",
};

pub const ALL: &[Setting] = &[ROLE_POLICY];
