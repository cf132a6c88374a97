//! `bedrock-broker credentials`: a one-shot diagnosis for people, so its
//! report goes to stdout and its failure, with a hint, to stderr.

use std::sync::Arc;

use super::{complain, report, say, FAILED, OK};
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
        complain(format_args!("warning: {warning}\n"));
    }
    // A failure below may be the proxy's: say it was on the way.
    if let Some(proxy) = &config.egress_proxy {
        say(format_args!(
            "egress:   through the proxy {} ({})\n",
            proxy.address(),
            proxy.origin()
        ));
    }
    match diagnose::run(&config, Arc::new(SystemClock)).await {
        Ok(found) => {
            say(format_args!("{found}"));
            OK
        }
        Err(e) => {
            complain(format_args!("{e}\nerror: credentials do not work\n"));
            FAILED
        }
    }
}
