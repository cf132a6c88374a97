//! `BEDROCK_BROKER_*` variables that nothing reads: a misspelt name would
//! otherwise leave its setting at the default without a word.

use super::setting::Setting;
use super::settings::{self, limits};
use super::Env;

const PREFIX: &str = "BEDROCK_BROKER_";

/// Read by the apps' clients, not by this binary, but ours: a pod (or a
/// compose file) may well give them to the sidecar too.
const CLIENT_VARIABLES: [&str; 1] = ["BEDROCK_BROKER_URL"];

/// A variable with our prefix that no setting reads, and the known name
/// closest to it if it looks like a misspelling of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub name: String,
    pub did_you_mean: Option<&'static str>,
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is set but nothing reads it", self.name)?;
        match self.did_you_mean {
            Some(meant) => write!(f, ": did you mean {meant}?"),
            None => f.write_str(" (no setting of this version has that name)"),
        }
    }
}

/// Every `BEDROCK_BROKER_*` variable some subcommand reads.
pub fn known() -> Vec<&'static str> {
    let mut names = read();
    names.retain(|name| name.starts_with(PREFIX));
    names
}

/// Read by the libraries underneath (see the configuration reference).
const LIBRARY_VARIABLES: [&str; 2] = ["TOKIO_WORKER_THREADS", "KUBECONFIG"];

/// Every variable some subcommand reads, by its settings or directly.
fn read() -> Vec<&'static str> {
    let lists: [&[Setting]; 13] = [
        settings::sidecar::ALL,
        settings::aws::ALL,
        settings::webhook::ALL,
        settings::injected::ALL,
        settings::policy::ALL,
        settings::inject::ALL,
        &[settings::log::FORMAT],
        &limits::PROXY.all(),
        &limits::ADMIN.all(),
        &limits::CREDENTIALS.all(),
        &limits::WEBHOOK.all(),
        &limits::WEBHOOK_ADMIN.all(),
        &[
            limits::ADMIN_PER_PEER,
            limits::WEBHOOK_PER_PEER,
            limits::WEBHOOK_ADMIN_PER_PEER,
            limits::WEBHOOK_TLS_HANDSHAKE_TIMEOUT,
        ],
    ];
    let mut names: Vec<&'static str> = lists
        .iter()
        .flat_map(|list| list.iter())
        .flat_map(|setting| setting.env.iter().copied())
        .chain(settings::vars::ALL.iter().map(|v| v.name))
        .chain(CLIENT_VARIABLES)
        .chain(LIBRARY_VARIABLES)
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The variables of `env` that a subcommand reads (or, for `AWS_*`, that
/// the AWS libraries may) whose value is not UTF-8 text: each is a
/// configuration error, since read as unset its setting would silently
/// take its default. Sorted.
pub fn not_text(env: &Env) -> Vec<&str> {
    let read = read();
    let mut found: Vec<&str> = env
        .not_text()
        .filter(|name| {
            name.starts_with(PREFIX)
                || name.starts_with("AWS_")
                || read.binary_search(name).is_ok()
                || read
                    .binary_search(&name.to_ascii_uppercase().as_str())
                    .is_ok()
        })
        .collect();
    found.sort_unstable();
    found
}

/// The variables of `env` with our prefix that nothing reads, by name.
pub fn unknown(env: &Env) -> Vec<Unknown> {
    let known = known();
    let mut found: Vec<Unknown> = env
        .names()
        .filter(|name| {
            name.starts_with(PREFIX)
                && known.binary_search(name).is_err()
                && !is_service_link(name, env.get(name).unwrap_or(""))
        })
        .map(|name| Unknown {
            name: name.to_owned(),
            did_you_mean: closest(name, &known),
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// What a Service variable of this shape holds, when the kubelet sets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkValue {
    Address,
    Port,
    Url,
    Protocol,
}

/// The kubelet sets variables for every Service of the namespace (unless
/// the pod says `enableServiceLinks: false`): a Service `bedrock-broker-x`
/// gives `BEDROCK_BROKER_X_SERVICE_HOST`, `..._SERVICE_PORT[_NAME]`,
/// `..._PORT` and `..._PORT_<n>_<PROTOCOL>[_PROTO|_PORT|_ADDR]`. What a
/// name of such a shape holds, if it has one.
fn service_link_name(name: &str) -> Option<LinkValue> {
    if name.ends_with("_SERVICE_HOST") {
        return Some(LinkValue::Address);
    }
    if let Some((_, rest)) = name.split_once("_SERVICE_PORT") {
        return (rest.is_empty() || rest.starts_with('_')).then_some(LinkValue::Port);
    }
    if name.ends_with("_PORT") && !name.contains("_PORT_") {
        return Some(LinkValue::Url);
    }
    let rest = name.rsplit_once("_PORT_")?.1;
    let mut parts = rest.split('_');
    let number = parts.next()?;
    let protocol = parts.next()?;
    if number.is_empty()
        || !number.bytes().all(|b| b.is_ascii_digit())
        || !matches!(protocol, "TCP" | "UDP" | "SCTP")
    {
        return None;
    }
    match (parts.next(), parts.next()) {
        (None, _) => Some(LinkValue::Url),
        (Some("PROTO"), None) => Some(LinkValue::Protocol),
        (Some("PORT"), None) => Some(LinkValue::Port),
        (Some("ADDR"), None) => Some(LinkValue::Address),
        _ => None,
    }
}

/// Whether `name=value` is what the kubelet would have set: the shape and
/// the value both. `BEDROCK_BROKER_PORT=9000`, someone's guess at a
/// setting, has the shape but not the kubelet's `tcp://ADDR:PORT`.
fn is_service_link(name: &str, value: &str) -> bool {
    let number = || !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match service_link_name(name) {
        None => false,
        Some(LinkValue::Address) => value.parse::<std::net::IpAddr>().is_ok(),
        Some(LinkValue::Port) => number(),
        Some(LinkValue::Url) => ["tcp://", "udp://", "sctp://"]
            .iter()
            .any(|p| value.starts_with(p)),
        Some(LinkValue::Protocol) => ["tcp", "udp", "sctp"]
            .iter()
            .any(|p| value.eq_ignore_ascii_case(p)),
    }
}

/// The known name a few edits from `name` (a typo, a dropped or swapped
/// letter), if one is clearly the closest. Compared without the common
/// prefix, and allowing an edit per four letters: a fixed allowance
/// matched short names to anything (`..._PORT` to `..._URL`).
fn closest(name: &str, known: &[&'static str]) -> Option<&'static str> {
    let suffix = |n: &str| n.strip_prefix(PREFIX).unwrap_or(n).to_owned();
    let wanted = suffix(name);
    let allowed = (wanted.len() / 4).max(1);
    let mut by_distance: Vec<(usize, &'static str)> = known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&wanted, &suffix(k)), *k))
        .collect();
    by_distance.sort_unstable();
    match by_distance.as_slice() {
        [(d, best), rest @ ..]
            if *d <= allowed && rest.first().is_none_or(|(next, _)| next > d) =>
        {
            Some(best)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_variable_is_named_with_the_one_meant() {
        let env = Env::from_pairs([
            ("BEDROCK_BROKER_STS_TIMOUT", "3s"),
            ("BEDROCK_BROKER_LOGFORMAT", "json"),
            ("BEDROCK_BROKER_SOMETHING_ELSE_ENTIRELY", "x"),
            ("BEDROCK_BROKER_STS_TIMEOUT", "3s"),
            ("BEDROCK_BROKER_URL", "http://127.0.0.1:9787"),
            ("AWS_WHATEVER", "x"),
            // What the kubelet sets for the chart's webhook Service.
            ("BEDROCK_BROKER_WEBHOOK_SERVICE_HOST", "10.0.0.1"),
            ("BEDROCK_BROKER_WEBHOOK_SERVICE_PORT", "443"),
            ("BEDROCK_BROKER_WEBHOOK_SERVICE_PORT_HTTPS", "443"),
            ("BEDROCK_BROKER_WEBHOOK_PORT", "tcp://10.0.0.1:443"),
            ("BEDROCK_BROKER_WEBHOOK_PORT_443_TCP", "tcp://10.0.0.1:443"),
            ("BEDROCK_BROKER_WEBHOOK_PORT_443_TCP_PROTO", "tcp"),
            ("BEDROCK_BROKER_WEBHOOK_PORT_443_TCP_ADDR", "fd00::1"),
            ("BEDROCK_BROKER_WEBHOOK_PORT_9789_TCP_PORT", "9789"),
            // The same shape, a user's guess at a setting.
            ("BEDROCK_BROKER_PORT", "9000"),
            ("BEDROCK_BROKER_ADMIN_SERVICE_HOST", "localhost"),
            // Short, and nothing like any setting.
            ("BEDROCK_BROKER_PATH", "x"),
        ]);
        assert_eq!(
            unknown(&env),
            [
                Unknown {
                    name: "BEDROCK_BROKER_ADMIN_SERVICE_HOST".into(),
                    did_you_mean: None,
                },
                Unknown {
                    name: "BEDROCK_BROKER_LOGFORMAT".into(),
                    did_you_mean: Some("BEDROCK_BROKER_LOG_FORMAT"),
                },
                Unknown {
                    name: "BEDROCK_BROKER_PATH".into(),
                    did_you_mean: None,
                },
                Unknown {
                    name: "BEDROCK_BROKER_PORT".into(),
                    did_you_mean: None,
                },
                Unknown {
                    name: "BEDROCK_BROKER_SOMETHING_ELSE_ENTIRELY".into(),
                    did_you_mean: None,
                },
                Unknown {
                    name: "BEDROCK_BROKER_STS_TIMOUT".into(),
                    did_you_mean: Some("BEDROCK_BROKER_STS_TIMEOUT"),
                },
            ]
        );
    }

    #[test]
    fn every_variable_the_code_charts_and_docs_name_is_known() {
        // A setting missing from `known` would be warned about while it
        // works: every name written anywhere in the project must be in it.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let known = known();
        let mut seen = 0;
        let mut stack = vec![
            root.join("src"),
            root.join("charts"),
            root.join("deploy"),
            root.join("docs"),
            root.join("README.md"),
        ];
        while let Some(path) = stack.pop() {
            if path.is_dir() {
                for entry in std::fs::read_dir(&path).unwrap() {
                    stack.push(entry.unwrap().path());
                }
                continue;
            }
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            for (at, _) in text.match_indices(PREFIX) {
                let name: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                // Prefixes the limits' names are built from, this module's
                // own examples, the kubelet's Service variables, and
                // build.rs's variables (read when the binary is built, not
                // when it runs).
                if name.ends_with('_')
                    || path.ends_with("unknown.rs")
                    || service_link_name(&name).is_some()
                    || ["BEDROCK_BROKER_REVISION", "BEDROCK_BROKER_HOT_CODE"]
                        .contains(&name.as_str())
                {
                    continue;
                }
                seen += 1;
                assert!(
                    known.binary_search(&name.as_str()).is_ok(),
                    "{name} (in {}) is not a known variable",
                    path.display()
                );
            }
        }
        assert!(seen > 100, "scanned {seen} names");
    }
}
