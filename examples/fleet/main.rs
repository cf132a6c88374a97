//! Runs the fleet simulation's named scenarios at full size, prints their
//! table and draws one plot per scenario (docs/fleet.md).
//!
//! cargo run --release --example fleet --features test-util -- all --plots docs/fleet

// A command-line tool: printing is its output.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod plot;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bedrock_broker::credentials::RefreshPolicy;
use bedrock_broker::fleet::{markdown, simulate, Scenario, Summary, NAMES};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Simulate a fleet of sidecars refreshing credentials against STS")]
struct Args {
    /// Scenarios to run (`all` for every one): steady, mass-restart, outage,
    /// long-outage, throttling, token-rotation, cold-start-outage, fatal.
    #[arg(default_value = "all")]
    scenarios: Vec<String>,
    /// Number of pods.
    #[arg(long, default_value_t = 10_000)]
    pods: u32,
    /// Write one SVG per scenario into this directory.
    #[arg(long)]
    plots: Option<PathBuf>,
    /// Override the refresh fraction.
    #[arg(long)]
    fraction: Option<f64>,
    /// Override the refresh jitter.
    #[arg(long)]
    jitter: Option<f64>,
    /// Override the backoff cap (humantime, e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration)]
    backoff_cap: Option<Duration>,
    /// Override the cold-start backoff cap.
    #[arg(long, value_parser = humantime::parse_duration)]
    cold_start_backoff_cap: Option<Duration>,
    /// Credential lifetime (`--session-duration`), 15m to 12h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    lifetime: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn policy(args: &Args) -> RefreshPolicy {
    let mut p = RefreshPolicy::default();
    if let Some(f) = args.fraction {
        p.fraction = f;
    }
    if let Some(j) = args.jitter {
        p.jitter = j;
    }
    if let Some(c) = args.backoff_cap {
        p.backoff_cap = c;
    }
    if let Some(c) = args.cold_start_backoff_cap {
        p.cold_start_backoff_cap = c;
    }
    p
}

fn main() -> ExitCode {
    let args = Args::parse();
    let names: Vec<&str> = if args.scenarios.iter().any(|s| s == "all") {
        NAMES.to_vec()
    } else {
        args.scenarios.iter().map(String::as_str).collect()
    };
    let mut rows = Vec::new();
    for name in names {
        let Some(mut scenario) = Scenario::named(name, args.pods, args.lifetime, policy(&args))
        else {
            eprintln!("unknown scenario {name:?}; known: {}", NAMES.join(", "));
            return ExitCode::from(2);
        };
        scenario.seed = args.seed;
        let started = Instant::now();
        let run = match simulate(&scenario) {
            Ok(run) => run,
            Err(e) => {
                eprintln!("{name}: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!(
            "{name}: {} pods, {:.1} h simulated in {:.1} s of real time",
            scenario.pods,
            scenario.run_for.as_secs_f64() / 3600.0,
            started.elapsed().as_secs_f64()
        );
        if let Some(dir) = &args.plots {
            if let Err(e) = std::fs::create_dir_all(dir)
                .map_err(Into::into)
                .and_then(|()| plot::draw(&run, dir))
            {
                eprintln!("{name}: cannot draw the plot: {e}");
                return ExitCode::FAILURE;
            }
        }
        rows.push(Summary::of(&run));
    }
    print!("{}", markdown(&rows));
    ExitCode::SUCCESS
}
