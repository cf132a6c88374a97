//! Logging, for the long-running subcommands.

use crate::config::setting::{Setting, WhenUnset::*};

pub const FORMAT: Setting = Setting {
    flag: "log-format",
    env: &["BEDROCK_BROKER_LOG_FORMAT"],
    default: Value("text"),
    help: "Log format: text or json",
};
