//! TLS material: PEM files ([`pem`]), the client side of outbound TLS
//! to STS and Bedrock ([`client`]) and the crypto provider both sides use
//! ([`provider`]). The webhook's serving side is in `server::tls`.

pub mod client;
pub mod pem;
pub mod provider;

pub use client::{client_config, root_store, CaBundle};
pub use pem::PemError;
pub use provider::provider;
