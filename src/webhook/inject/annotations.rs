//! The `bedrock-broker.io/*` annotations: their names (part of the
//! product's interface), and how a pod's annotations are read so that every
//! bad one is reported at once, naming the annotation and what it accepts.

use std::collections::BTreeMap;

use crate::config::parse::ParseError;

/// Label and annotation names: part of the product's interface.
pub mod names {
    /// Every annotation of ours starts with this.
    pub const PREFIX: &str = "bedrock-broker.io/";
    /// Opt-in label on a pod or its namespace: `"true"` or `"false"`.
    pub const INJECT_LABEL: &str = "bedrock-broker.io/inject";
    /// Set on injected pods (value: the injector's version); an injected pod
    /// is never changed again.
    pub const INJECTED: &str = "bedrock-broker.io/injected";

    pub const ROLE_ARN: &str = "bedrock-broker.io/role-arn";
    pub const REGION: &str = "bedrock-broker.io/region";
    pub const PORT: &str = "bedrock-broker.io/port";
    pub const ADMIN_PORT: &str = "bedrock-broker.io/admin-port";
    pub const AUDIENCE: &str = "bedrock-broker.io/audience";
    pub const TOKEN_EXPIRATION: &str = "bedrock-broker.io/token-expiration";
    pub const SESSION_NAME: &str = "bedrock-broker.io/session-name";
    pub const CPU_REQUEST: &str = "bedrock-broker.io/cpu-request";
    pub const MEMORY_REQUEST: &str = "bedrock-broker.io/memory-request";
    pub const CPU_LIMIT: &str = "bedrock-broker.io/cpu-limit";
    pub const MEMORY_LIMIT: &str = "bedrock-broker.io/memory-limit";
    pub const IMAGE: &str = "bedrock-broker.io/image";
    pub const LOG_LEVEL: &str = "bedrock-broker.io/log-level";
    pub const SIDECAR_MODE: &str = "bedrock-broker.io/sidecar-mode";
    pub const API_KEY_SECRET: &str = "bedrock-broker.io/api-key-secret";
    /// `"false"` leaves out every client variable (`BEDROCK_BROKER_URL`
    /// stays, and `BEDROCK_BROKER_PROXY_TOKEN` with a proxy token).
    pub const CLIENT_ENV: &str = "bedrock-broker.io/client-env";
    /// `<secret>/<key>`: the proxy requires this token, and the app
    /// containers get it (`BEDROCK_BROKER_PROXY_TOKEN`, `OPENAI_API_KEY`).
    pub const PROXY_TOKEN_SECRET: &str = "bedrock-broker.io/proxy-token-secret";
    /// `<secret>/<key>`: the sidecar's `HTTPS_PROXY` (a forward proxy URL
    /// that carries credentials, which the webhook's own setting refuses).
    pub const HTTPS_PROXY_SECRET: &str = "bedrock-broker.io/https-proxy-secret";

    /// Every annotation we read (anything else under our prefix is a typo).
    pub const KNOWN: [&str; 19] = [
        INJECTED,
        ROLE_ARN,
        REGION,
        PORT,
        ADMIN_PORT,
        AUDIENCE,
        TOKEN_EXPIRATION,
        SESSION_NAME,
        CPU_REQUEST,
        MEMORY_REQUEST,
        CPU_LIMIT,
        MEMORY_LIMIT,
        IMAGE,
        LOG_LEVEL,
        SIDECAR_MODE,
        API_KEY_SECRET,
        CLIENT_ENV,
        PROXY_TOKEN_SECRET,
        HTTPS_PROXY_SECRET,
    ];

    /// The IRSA role annotation of a ServiceAccount (EKS Pod Identity Webhook).
    pub const EKS_ROLE_ARN: &str = "eks.amazonaws.com/role-arn";
    /// The token audience a ServiceAccount asks the EKS Pod Identity
    /// Webhook for (its default is `sts.amazonaws.com`).
    pub const EKS_AUDIENCE: &str = "eks.amazonaws.com/audience";
}

/// Every annotation under our prefix that we do not read: a typo would
/// otherwise silently leave a default in place. Names are case-sensitive,
/// so a prefix differing in case only counts as ours too. The opt-in label
/// written as an annotation is judged with the opt-in (`decide`).
fn unknown(annotations: &BTreeMap<String, String>) -> Vec<String> {
    let ours = |key: &str| {
        key.get(..names::PREFIX.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(names::PREFIX))
    };
    annotations
        .keys()
        .filter(|key| {
            ours(key) && !names::KNOWN.contains(&key.as_str()) && *key != names::INJECT_LABEL
        })
        .map(|key| {
            let lower = key.to_ascii_lowercase();
            if names::KNOWN.contains(&lower.as_str()) || lower == names::INJECT_LABEL {
                format!("{key} is not an annotation bedrock-broker knows: names are case-sensitive, write {lower}")
            } else {
                format!(
                    "{key} is not an annotation bedrock-broker knows; known annotations: {}",
                    names::KNOWN[1..].join(", ")
                )
            }
        })
        .collect()
}

/// Reads a pod's annotations, collecting one problem per bad value (unknown
/// annotations first) so the pod is refused once with all of them.
pub struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
    problems: Vec<String>,
}

impl<'a> Reader<'a> {
    pub fn new(annotations: &'a BTreeMap<String, String>) -> Self {
        Self {
            annotations,
            problems: unknown(annotations),
        }
    }

    /// Whether the pod sets `name`, whatever its value.
    pub fn has(&self, name: &str) -> bool {
        self.annotations.contains_key(name)
    }

    /// Absent gives `current`; a bad value records a problem naming the
    /// annotation (and keeps `current`, so reading can go on).
    pub fn read<T>(
        &mut self,
        name: &str,
        current: T,
        parse: impl FnOnce(&str) -> Result<T, ParseError>,
    ) -> T {
        match self.annotations.get(name) {
            None => current,
            Some(raw) => match parse(raw.trim()) {
                Ok(v) => v,
                Err(message) => {
                    self.problems.push(format!("{name}: {message}"));
                    current
                }
            },
        }
    }

    /// A problem that involves more than one annotation.
    pub fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// `value`, unless a problem was found.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<String>> {
        if self.problems.is_empty() {
            Ok(value)
        } else {
            Err(self.problems)
        }
    }
}
