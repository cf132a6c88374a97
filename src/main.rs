//! Wiring only: parse, configure logging, run the chosen subcommand.

use std::process::ExitCode;
use std::sync::Arc;

use bedrock_broker::cli::{Cli, Command, InjectArgs};
use bedrock_broker::clock::SystemClock;
use bedrock_broker::config::Env;
use bedrock_broker::credentials::CredentialsConfig;
use bedrock_broker::sidecar::SidecarConfig;
use bedrock_broker::telemetry::LogFormat;
use bedrock_broker::webhook::server::WebhookConfig;
use bedrock_broker::webhook::{self, InjectConfig, InjectStatus};
use bedrock_broker::{diagnose, serve, sidecar, telemetry};
use clap::Parser;
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = Env::from_process();
    let log_args = match (&cli.command, cli.command.log_args()) {
        // Offline and one-shot: messages go to stderr as plain text.
        (Command::Inject(a), _) => return run_inject(a, &env),
        (_, Some(log)) => log,
        (_, None) => return ExitCode::FAILURE,
    };
    let log_format = match LogFormat::from_args(log_args, &env) {
        Ok(f) => f,
        Err(e) => {
            eprint!("bedrock-broker: {e}");
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
            Command::Webhook(args) => run_webhook(WebhookConfig::from_args(&args, &env)).await,
            Command::Inject(_) => ExitCode::FAILURE,
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
    let shutdown = cancel_on_signal();
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

async fn run_webhook(
    config: Result<WebhookConfig, bedrock_broker::config::ConfigErrors>,
) -> ExitCode {
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = cancel_on_signal();
    match webhook::run_webhook(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "webhook failed");
            ExitCode::FAILURE
        }
    }
}

/// A token cancelled by the first SIGTERM or SIGINT.
fn cancel_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let signal = serve::shutdown_signal().await;
        tracing::info!(signal, "shutting down");
        trigger.cancel();
    });
    shutdown
}

fn run_inject(args: &InjectArgs, env: &Env) -> ExitCode {
    let config = match InjectConfig::from_args(args, env) {
        Ok(c) => c,
        Err(e) => {
            eprint!("bedrock-broker inject: {e}");
            return ExitCode::from(2);
        }
    };
    let status = webhook::run_inject(
        &config,
        std::io::stdin().lock(),
        std::io::stdout().lock(),
        std::io::stderr().lock(),
    );
    match status {
        InjectStatus::Ok => ExitCode::SUCCESS,
        InjectStatus::Denied => ExitCode::FAILURE,
        InjectStatus::BadInput => ExitCode::from(2),
    }
}
