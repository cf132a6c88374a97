//! `bedrock-broker credentials`: a one-shot diagnosis for people, so its
//! report goes to stdout and its failure, with a hint, to stderr.

use std::sync::Arc;

use super::{report, FAILED, OK};
use crate::cli::CredentialsArgs;
use crate::clock::SystemClock;
use crate::config::Env;
use crate::credentials::{diagnose, CredentialsConfig};

pub async fn run(args: &CredentialsArgs, env: &Env) -> u8 {
    let config = match CredentialsConfig::from_args(args, env) {
        Ok(config) => config,
        Err(errors) => return report(&errors),
    };
    for warning in &config.warnings {
        eprintln!("warning: {warning}");
    }
    // A failure below may be the proxy's: say it was on the way.
    if let Some(proxy) = &config.egress_proxy {
        println!(
            "egress:   through the proxy {} (HTTPS_PROXY)",
            proxy.address()
        );
    }
    match diagnose::run(&config, Arc::new(SystemClock)).await {
        Ok(found) => {
            print!("{found}");
            OK
        }
        Err(e) => {
            eprintln!("{e}");
            eprintln!("error: credentials do not work");
            FAILED
        }
    }
}
