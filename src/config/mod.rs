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
mod listeners;
pub mod parse;
mod partition;
pub mod reference;
mod session;
pub mod setting;
pub mod settings;
mod sidecar;
pub mod unknown;
mod webhook;

use std::collections::HashMap;

pub use setting::{ConfigError, ConfigErrors};

/// A snapshot of the process environment, so parsing is a pure function.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
    /// Names whose value is not UTF-8: read as unset, a setting would
    /// fall back to its default (a proxy token to none), so ours among
    /// them stop the start ([`unknown::not_text`]).
    not_text: Vec<String>,
}

impl Env {
    /// The current process environment.
    pub fn from_process() -> Self {
        let mut env = Self::default();
        for (name, value) in std::env::vars_os() {
            // A name that is not UTF-8 is none of ours.
            let Ok(name) = name.into_string() else {
                continue;
            };
            match value.into_string() {
                Ok(value) => {
                    env.vars.insert(name, value);
                }
                Err(_) => env.not_text.push(name),
            }
        }
        env
    }

    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            not_text: Vec::new(),
        }
    }

    /// The names of the variables set (with text values).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// The names of the variables whose value is not UTF-8 text.
    pub fn not_text(&self) -> impl Iterator<Item = &str> {
        self.not_text.iter().map(String::as_str)
    }

    /// The variable's value; empty values count as unset, as in the AWS SDKs.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}
