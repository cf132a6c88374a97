//! What injection allows, for `webhook` and `inject` alike (so `inject`
//! answers as the webhook would). Pods cannot override these.

use crate::config::setting::{Setting, WhenUnset::*};

/// The safer choice: a pod gets the role its ServiceAccount carries, so
/// who may create pods with a ServiceAccount decides who gets its role,
/// and a pod cannot name another role that only its trust policy guards.
pub const ROLE_POLICY: Setting = Setting {
    flag: "role-policy",
    env: &["BEDROCK_BROKER_WEBHOOK_ROLE_POLICY"],
    default: Value("service-account"),
    help: "Which IAM roles a pod may get: service-account (only its ServiceAccount's eks.amazonaws.com/role-arn; a pod annotation or container AWS_ROLE_ARN naming another role is refused) or any (the pod annotation, then the ServiceAccount, then a container's AWS_ROLE_ARN; only the role's trust policy stands in the way)",
};

pub const ALL: &[Setting] = &[ROLE_POLICY];
