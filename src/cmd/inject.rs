//! `bedrock-broker inject`: YAML on stdin, mutated YAML on stdout, one
//! line per object and every problem on stderr.

use std::io::Write;

use super::{FAILED, INVALID, OK};
use crate::cli::InjectArgs;
use crate::config::Env;
use crate::webhook::{self, InjectConfig, InjectStatus};

pub fn run(args: &InjectArgs, env: &Env) -> u8 {
    for unknown in crate::config::unknown::unknown(env) {
        let _ = writeln!(
            std::io::stderr(),
            "bedrock-broker inject: warning: {unknown}"
        );
    }
    let config = match InjectConfig::from_args(args, env) {
        Ok(config) => config,
        Err(errors) => {
            let _ = write!(std::io::stderr(), "bedrock-broker inject: {errors}");
            return INVALID;
        }
    };
    let status = webhook::run_inject(
        &config,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        std::io::stderr().lock(),
    );
    match status {
        InjectStatus::Ok => OK,
        InjectStatus::Denied => FAILED,
        InjectStatus::BadInput => INVALID,
    }
}
