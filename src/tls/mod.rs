//! TLS material: PEM files ([`pem`]) and the client side of outbound TLS
//! to STS and Bedrock ([`client`]). The webhook's serving side is in
//! `server::tls`.

pub mod client;
pub mod pem;

pub use client::{client_config, root_store, CaBundle};
pub use pem::PemError;
