//! Logging setup.

use tracing_subscriber::filter::{Directive, EnvFilter};
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
/// details; capped so no `RUST_LOG` setting can put secrets in our logs.
const CAPPED: [&str; 6] = [
    "aws_sigv4=info",
    "aws_smithy_runtime=info",
    "aws_smithy_http_client=info",
    "aws_sdk_sts=info",
    "hyper=info",
    "h2=info",
];

/// Installs the global subscriber: levels from `RUST_LOG` (default `info`),
/// output to stderr as text or JSON.
pub fn init(format: LogFormat) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    for d in CAPPED {
        if let Ok(d) = d.parse::<Directive>() {
            filter = filter.add_directive(d);
        }
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
