//! Logging setup.

use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt;

use crate::cli::LogArgs;
use crate::config::parse::ParseError;
use crate::config::setting::{ConfigErrors, Errors};
use crate::config::settings::log;
use crate::config::Env;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(ParseError::not_a(other, "a log format", "text or json")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }

    /// Read before the rest of the configuration, so configuration errors
    /// are already logged in the chosen format.
    pub fn from_args(args: &LogArgs, env: &Env) -> Result<Self, ConfigErrors> {
        let mut errors = Errors::default();
        let format = errors.read(&log::FORMAT, args.log_format.as_deref(), env, Self::parse);
        errors.finish(|| format)
    }
}

/// Crates whose debug/trace output could include request or response
/// details (headers with tokens, canonical requests); held at `info`
/// whatever `RUST_LOG` says, so no setting can put a secret in our logs.
/// aws-config is held at `error`, which it never logs at: its warnings
/// quote STS's error bodies whole (an STS, or a relay in its place, may
/// quote the web identity token there), and the sidecar logs each of its
/// failures itself, blanked.
const CAPPED: [(&str, Cap); 12] = [
    ("aws_sigv4", Cap::Info),
    ("aws_smithy_runtime", Cap::Info),
    ("aws_smithy_http_client", Cap::Info),
    ("aws_smithy_http", Cap::Info),
    ("aws_sdk_sts", Cap::Info),
    ("aws_config", Cap::Error),
    ("hyper", Cap::Info),
    ("hyper_util", Cap::Info),
    ("h2", Cap::Info),
    ("rustls", Cap::Info),
    ("kube_client", Cap::Info),
    ("tower", Cap::Info),
];

/// The loudest a capped crate may log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    Info,
    Error,
}

impl Cap {
    fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Error => "error",
        }
    }

    /// Whether a directive's level (none: everything) is louder.
    fn exceeded_by(self, level: Option<&str>) -> bool {
        let quiet: &[&str] = match self {
            Self::Info => &["off", "error", "warn", "info"],
            Self::Error => &["off", "error"],
        };
        level.is_none_or(|l| !quiet.contains(&l.to_ascii_lowercase().as_str()))
    }
}

/// `RUST_LOG` with every directive that would make a capped crate (or one
/// of its modules) more verbose than `info` held at `info`, and span-scoped
/// directives (which apply to every crate inside a span) dropped.
fn capped(rust_log: &str) -> (String, Vec<String>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    let mut global_level = false;
    for directive in rust_log.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if directive.contains('[') {
            dropped.push(directive.to_owned());
            continue;
        }
        let (target, level) = match directive.split_once('=') {
            Some((t, l)) => (t, Some(l)),
            None if directive.parse::<tracing::Level>().is_ok()
                || directive.eq_ignore_ascii_case("off") =>
            {
                global_level = true;
                kept.push(directive.to_owned());
                continue;
            }
            None => (directive, None),
        };
        let cap = CAPPED.iter().find_map(|(c, cap)| {
            (target == *c || target.strip_prefix(c).is_some_and(|r| r.starts_with("::")))
                .then_some(*cap)
        });
        match cap {
            // A bare target means everything it logs.
            Some(cap) if cap.exceeded_by(level) => {
                kept.push(format!("{target}={}", cap.as_str()));
            }
            _ => kept.push(directive.to_owned()),
        }
    }
    // Without a level of its own for everything else, `RUST_LOG` naming
    // only targets (or a typo read as one: `RUST_LOG=lots`) silenced the
    // sidecar's warnings and errors, its start-up line and all. An
    // explicit level (`off` included) is kept as written.
    if !global_level {
        kept.push("warn".to_owned());
    }
    kept.extend(
        CAPPED
            .iter()
            .map(|(c, cap)| format!("{c}={}", cap.as_str())),
    );
    (kept.join(","), dropped)
}

/// The filter for `rust_log`, the directives dropped from it, and why it
/// could not be read, if it could not: then `info`, still capped.
fn log_filter(rust_log: &str) -> (EnvFilter, Vec<String>, Option<String>) {
    let (directives, dropped) = capped(rust_log);
    match EnvFilter::try_new(&directives) {
        Ok(filter) => (filter, dropped, None),
        Err(e) => {
            let (info, _) = capped("info");
            let filter = EnvFilter::try_new(&info).unwrap_or_else(|_| EnvFilter::new("info"));
            (filter, dropped, Some(e.to_string()))
        }
    }
}

/// Installs the global subscriber: levels from `rust_log` (the process's
/// `RUST_LOG`, default `info`), output to stderr as text or JSON.
pub fn init(format: LogFormat, rust_log: Option<&str>) {
    let (filter, dropped, unreadable) = log_filter(rust_log.unwrap_or("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A log reader that went away (`| head`, a dead shipper) must not stop
    // the sidecar: the layer's own write errors would be printed with
    // `eprintln!`, which panics on the closed pipe.
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let Some(problem) = unreadable {
        tracing::warn!(%problem, "RUST_LOG cannot be read: logging at info");
    }
    if !dropped.is_empty() {
        tracing::warn!(
            dropped = dropped.join(","),
            "span-scoped RUST_LOG directives are not supported (they would lift the cap on crates that could log secrets)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_rust_log_is_said_and_still_capped() {
        let (filter, _, unreadable) = log_filter("bedrock_broker=loud");
        let problem = unreadable.expect("a level that is none is unreadable");
        assert!(
            problem.contains("loud") || problem.contains("level"),
            "{problem}"
        );
        let shown = filter.to_string();
        assert!(shown.contains("aws_config=error"), "{shown}");
        assert!(shown.contains("info"), "{shown}");
        let (_, _, unreadable) = log_filter("bedrock_broker=debug,warn");
        assert_eq!(unreadable, None);
    }

    #[test]
    fn no_directive_makes_a_capped_crate_louder_than_info() {
        let (d, dropped) =
            capped("hyper::proto=trace,bedrock_broker=debug,aws_sigv4,h2=warn,trace");
        let parts: Vec<&str> = d.split(',').collect();
        assert!(parts.contains(&"hyper::proto=info"), "{d}");
        assert!(parts.contains(&"aws_sigv4=info"), "{d}");
        assert!(parts.contains(&"bedrock_broker=debug"), "{d}");
        assert!(parts.contains(&"h2=warn"), "quieter is fine: {d}");
        // aws-config's warnings quote STS's error bodies.
        let (d, _) = capped("aws_config=warn,aws_config::web_identity_token=debug,trace");
        let parts: Vec<&str> = d.split(',').collect();
        assert!(parts.contains(&"aws_config=error"), "{d}");
        assert!(
            parts.contains(&"aws_config::web_identity_token=error"),
            "{d}"
        );
        assert!(!parts.contains(&"aws_config=warn"), "{d}");
        assert!(parts.contains(&"trace"), "the global level stays: {d}");
        assert!(dropped.is_empty());
        assert!(!d.contains("hyperx"), "{d}");
        let (d, _) = capped("hyperx=trace");
        assert!(
            d.starts_with("hyperx=trace"),
            "another crate with a similar name: {d}"
        );
        let (_, dropped) = capped("[request]=trace");
        assert_eq!(dropped, ["[request]=trace"]);
        // Targets alone leave the rest at `warn`, not silent; a level
        // given is the level.
        for (rust_log, floor_added) in [
            ("lots", true),
            ("bedrock_broker=debug", true),
            ("error", false),
            ("OFF", false),
            ("bedrock_broker=debug,info", false),
        ] {
            let (d, _) = capped(rust_log);
            assert_eq!(
                d.split(',').any(|p| p == "warn"),
                floor_added,
                "{rust_log}: {d}"
            );
            assert!(EnvFilter::try_new(&d).is_ok(), "{d}");
        }
        assert!(EnvFilter::try_new(capped("info").0).is_ok());
    }
}
