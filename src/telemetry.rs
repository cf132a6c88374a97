//! Logging setup.

use tracing_subscriber::filter::{Directive, EnvFilter};
use tracing_subscriber::fmt;

use crate::config::LogFormat;

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
