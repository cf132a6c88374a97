//! The one crypto provider every TLS connection of this binary uses.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

/// aws-lc-rs, the provider AWS's own SDK for Rust defaults to. With
/// rustls' `prefer-post-quantum` it offers the hybrid X25519MLKEM768 key
/// exchange first, and X25519 beside it, so a peer without ML-KEM (an
/// endpoint that has none yet, an older API server, Python's `ssl` in
/// the tests) costs no extra round trip; where the peer has it, prompts
/// travelling to Bedrock today stay unreadable to whoever records them
/// for a quantum computer later. rustls deprecated ring's provider for
/// lacking exactly this.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

#[cfg(test)]
mod tests {
    use rustls::NamedGroup;

    use super::*;

    #[test]
    fn kubes_client_offers_it_too() {
        // kube builds its own rustls configuration, from the process's
        // provider: the webhook's calls to the API server are covered only
        // if that is this one.
        use kube::client::ConfigExt;
        let config = kube::Config::new("https://127.0.0.1:6443".parse().expect("uri"))
            .rustls_client_config()
            .expect("kube's rustls configuration");
        let groups: Vec<NamedGroup> = config
            .crypto_provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(
            groups[..2],
            [NamedGroup::X25519MLKEM768, NamedGroup::X25519]
        );
    }

    #[test]
    fn the_hybrid_post_quantum_group_comes_first_with_x25519_beside_it() {
        let groups: Vec<NamedGroup> = provider().kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            groups[..2],
            [NamedGroup::X25519MLKEM768, NamedGroup::X25519]
        );
    }
}
