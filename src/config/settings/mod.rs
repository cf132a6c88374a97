//! Every flag and variable the binary reads, each defined once: the CLI's
//! help, the parsers and `docs/configuration.md` all come from here.
//!
//! A default's doc comment says why it is what it is.

/// An environment variable with no flag: standard AWS and Kubernetes
/// variables keep the meaning they have everywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variable {
    pub name: &'static str,
    pub help: &'static str,
}

pub mod aws;
pub mod inject;
pub mod injected;
pub mod limits;
pub mod log;
pub mod policy;
pub mod sidecar;
pub mod vars;
pub mod webhook;
