//! The subcommands: each turns its configuration into a running process
//! and its outcome into an exit status. Everything below `cmd` returns
//! typed errors; only here do they become log lines and exit codes.

pub mod credentials;
pub mod inject;
pub mod sidecar;
pub mod webhook;

use std::fmt;
use std::future::Future;
use std::io::Write;
use std::process::ExitCode;

use crate::cli::{Command, LogArgs};
use crate::config::{ConfigErrors, Env};
use crate::telemetry::{self, LogFormat};

/// The process ran (or the command succeeded).
pub const OK: u8 = 0;
/// The command failed at run time.
pub const FAILED: u8 = 1;
/// The configuration or the input is invalid; nothing was done.
pub const INVALID: u8 = 2;

/// Writes to stdout. A reader that went away (`credentials | head -1`)
/// is not the command's failure: its exit status still says what it found,
/// where `println!` panicked (exit 101).
pub(crate) fn say(text: fmt::Arguments<'_>) {
    let _ = std::io::stdout().lock().write_fmt(text);
}

/// Writes to stderr, as [`say`] to stdout.
pub(crate) fn complain(text: fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(text);
}

/// Runs one subcommand to completion.
pub fn run(command: Command, env: Env) -> ExitCode {
    // A variable whose value is not UTF-8 text reads as unset until each
    // command's configuration reports it with its other problems.
    let status = match command {
        // Offline and one-shot: it reports on stderr as plain text.
        Command::Inject(args) => inject::run(&args, &env),
        Command::Sidecar(args) => with_runtime(&args.log, &env, || sidecar::run(&args, &env)),
        Command::Credentials(args) => {
            with_runtime(&args.log, &env, || credentials::run(&args, &env))
        }
        Command::Webhook(args) => with_runtime(&args.log, &env, || webhook::run(&args, &env)),
    };
    ExitCode::from(status)
}

/// Sets up logging (its format is read first, so every later problem is
/// logged in it) and a runtime, and runs `command` on it.
fn with_runtime<F: Future<Output = u8>>(
    log: &LogArgs,
    env: &Env,
    command: impl FnOnce() -> F,
) -> u8 {
    let format = match LogFormat::from_args(log, env) {
        Ok(format) => format,
        Err(errors) => {
            complain(format_args!("bedrock-broker: {errors}"));
            return INVALID;
        }
    };
    telemetry::init(
        format,
        env.get(crate::config::settings::vars::RUST_LOG.name),
    );
    for unknown in crate::config::unknown::unknown(env) {
        tracing::warn!(variable = %unknown.name, "{unknown}");
    }
    let workers = match worker_threads(env) {
        Ok(workers) => workers,
        Err(errors) => return report(&errors),
    };
    match runtime_for(workers) {
        Ok(runtime) => runtime.block_on(command()),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            FAILED
        }
    }
}

/// Worker threads: `TOKIO_WORKER_THREADS`, checked here (tokio panics on a
/// bad one, and only with two CPUs or more), else one per core this
/// process may use (`available_parallelism` counts the CPU affinity mask
/// and a cgroup CPU limit, rounded down). On one core a single thread
/// whatever the variable says (see [`runtime_for`]).
fn worker_threads(env: &Env) -> Result<usize, ConfigErrors> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let name = crate::config::settings::vars::TOKIO_WORKER_THREADS.name;
    match env
        .get(name)
        .map(|raw| crate::config::parse::positive_count(raw.trim()))
    {
        None => Ok(cores),
        Some(Err(e)) => Err(ConfigErrors::one(name, e)),
        Some(Ok(_)) if cores <= 1 => Ok(1),
        Some(Ok(n)) => Ok(n),
    }
}

/// On one core, tokio's current-thread scheduler: the multi-thread one
/// would pass every wake-up between the main thread and its single worker,
/// and measured 10 % fewer requests per second at 64 connections
/// (docs/performance-history.md, the run of 9e9a4d5). linkerd2-proxy
/// makes the same choice.
fn runtime_for(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        // Set, so tokio never reads TOKIO_WORKER_THREADS itself.
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// Logs a bad configuration: one structured event per problem, so a JSON
/// log pipeline sees each with its origin.
pub fn report(errors: &ConfigErrors) -> u8 {
    if tracing::enabled!(tracing::Level::ERROR) {
        for e in &errors.0 {
            tracing::error!(origin = %e.origin, problem = %e.message, "invalid configuration");
        }
    } else {
        // Logging turned off (`RUST_LOG=off`): the reason to stop is
        // still said, or the process would exit 2 without a word.
        complain(format_args!("bedrock-broker: {errors}"));
    }
    INVALID
}

#[cfg(test)]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn the_scheduler_follows_the_cores() {
        for (cores, flavor) in [
            (1, RuntimeFlavor::CurrentThread),
            (2, RuntimeFlavor::MultiThread),
        ] {
            let runtime = super::runtime_for(cores).unwrap();
            assert_eq!(runtime.handle().runtime_flavor(), flavor, "{cores} cores");
        }
    }
}
