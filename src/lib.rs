//! bedrock-broker: holds a pod's AWS credentials and SigV4-signs its Amazon
//! Bedrock calls, so the app never sees an AWS secret.
//!
//! Layout: [`config`] parses flags and environment once; [`credentials`]
//! obtains and refreshes credentials into a lock-free cell; [`proxy`] is the
//! data plane that signs and streams; [`admin`] serves metrics and health;
//! [`sidecar`] wires them together with an explicit shutdown.

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod container_credentials;
pub mod credentials;
pub mod egress;
pub mod error_text;
pub mod files;
#[cfg(any(test, feature = "test-util"))]
pub mod fleet;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod metrics;
pub mod proxy;
pub mod secret;
pub mod server;
pub mod sidecar;
pub mod telemetry;
pub mod tls;
pub mod webhook;
