//! Wiring only: parse, configure logging, run the chosen subcommand.

use std::process::ExitCode;
use std::sync::Arc;

use bedrock_broker::cli::{Cli, Command};
use bedrock_broker::clock::SystemClock;
use bedrock_broker::config::{CredentialsConfig, Env, LogFormat, SidecarConfig};
use bedrock_broker::{diagnose, serve, sidecar, telemetry};
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    let aws_args = match &cli.command {
        Command::Sidecar(a) => &a.aws,
        Command::Credentials(a) => &a.aws,
    };
    let log_format = match LogFormat::from_args(aws_args, &env) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("bedrock-broker: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bedrock-broker: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Sidecar(args) => run_sidecar(SidecarConfig::from_args(&args, &env)).await,
            Command::Credentials(args) => {
                run_credentials(CredentialsConfig::from_args(&args.aws, &env)).await
            }
        }
    })
}

async fn run_sidecar(
    config: Result<SidecarConfig, bedrock_broker::config::ConfigErrors>,
) -> ExitCode {
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let sidecar = match sidecar::Sidecar::bind(config, Arc::new(SystemClock)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let signal = serve::shutdown_signal().await;
        tracing::info!(signal, "shutting down");
        trigger.cancel();
    });
    match sidecar.run(shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "sidecar failed");
            ExitCode::FAILURE
        }
    }
}

async fn run_credentials(
    config: Result<CredentialsConfig, bedrock_broker::config::ConfigErrors>,
) -> ExitCode {
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprint!("bedrock-broker: {e}");
            return ExitCode::from(2);
        }
    };
    match diagnose::run(&config, Arc::new(SystemClock)).await {
        Ok(report) => {
            print!("{report}");
            println!("ok: credentials work");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("error: credentials do not work");
            ExitCode::FAILURE
        }
    }
}
