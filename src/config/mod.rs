//! Configuration: every flag and environment variable, parsed once at
//! start into the typed configuration of each subsystem.
//!
//! The rules, as in linkerd2-proxy's `env`: a flag wins over its variables;
//! the first variable set wins over later ones; an empty variable counts as
//! unset (as in the AWS SDKs); every problem is collected before failing, so
//! one start reports the whole bad configuration, each problem naming the
//! flag or variable it came from. Parsing is a pure function of the
//! arguments and an [`Env`] snapshot.
//!
//! Each setting is defined once, in [`settings`]; [`setting::Errors::read`]
//! is the one way a value is read. Domain rules live with their domain (the
//! choice of credential source in `credentials::select`), and each
//! subsystem's own config type is filled here.

pub mod aws;
mod credentials;
pub mod endpoints;
mod gate;
mod limits;
pub mod parse;
pub mod reference;
pub mod setting;
pub mod settings;
mod sidecar;
pub mod unknown;
mod webhook;

use std::collections::HashMap;

pub use setting::{ConfigError, ConfigErrors};

/// A snapshot of the process environment, so parsing is a pure function.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// The current process environment (variables that are not UTF-8 are skipped).
    pub fn from_process() -> Self {
        Self(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        )
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// The names of the variables set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The variable's value; empty values count as unset, as in the AWS SDKs.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}
