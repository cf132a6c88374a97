//! Wiring only: parse the command line, snapshot the environment, run.

use std::process::ExitCode;

use bedrock_broker::cli::Cli;
use bedrock_broker::cmd;
use bedrock_broker::config::Env;
use clap::Parser;

fn main() -> ExitCode {
    cmd::run(Cli::parse().command, Env::from_process())
}
