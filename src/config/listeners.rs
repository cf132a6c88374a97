//! Where the sidecar's servers listen (the proxy only on loopback unless
//! told otherwise), their connection limits, and that no two of them share
//! a port.

use std::net::SocketAddr;

use super::parse::{self, ParseError};
use super::setting::{Errors, Setting};
use super::settings::{self, sidecar as s};
use super::{limits, Env};
use crate::cli::{AdminLimitArgs, ProxyLimitArgs, SidecarArgs};
use crate::server::Limits;

/// The proxy's and the admin server's addresses and limits.
pub(super) struct Listeners {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub proxy_limits: Limits,
    pub admin_limits: Limits,
}

/// Two servers on one port of overlapping addresses: found here rather
/// than as "Address already in use" at the second bind.
pub(super) fn shared_ports(e: &mut Errors, servers: &[(&Setting, Option<SocketAddr>)]) {
    // A wildcard covers its own family; `[::]` is dual-stack on Linux.
    let covers = |wild: std::net::IpAddr, other: std::net::IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || wild.is_ipv4() == other.is_ipv4())
    };
    for (i, (first, a)) in servers.iter().enumerate() {
        for (second, b) in &servers[i + 1..] {
            let (Some(a), Some(b)) = (a, b) else {
                continue;
            };
            let overlap = a.ip() == b.ip() || covers(a.ip(), b.ip()) || covers(b.ip(), a.ip());
            if a.port() != 0 && a.port() == b.port() && overlap {
                e.push(
                    format!("{} / {}", first.origin(), second.origin()),
                    format!("both use port {}; each server needs its own", a.port()),
                );
            }
        }
    }
}

pub(super) fn listeners(args: &SidecarArgs, env: &Env, e: &mut Errors) -> Option<Listeners> {
    let anywhere = e.read(
        &s::ALLOW_NON_LOOPBACK_LISTEN,
        args.allow_non_loopback_listen.as_deref(),
        env,
        parse::bool,
    );
    let proxy = e.read(&s::LISTEN, args.listen.as_deref(), env, |raw| {
        let addr = parse::addr(raw)?;
        if addr.ip().is_loopback() || anywhere == Some(true) {
            Ok(addr)
        } else {
            Err(ParseError::refused(format!(
                "{raw:?} is not a loopback address: the proxy signs whatever reaches it, so only its own pod may; set --allow-non-loopback-listen to permit it"
            )))
        }
    });
    let admin = e.read(
        &s::ADMIN_LISTEN,
        args.admin_listen.as_deref(),
        env,
        parse::addr,
    );
    let proxy_limits = limits::limits(
        limits::Listener {
            settings: &ProxyLimitArgs::SETTINGS,
            flags: args.proxy_limits.values(),
            per_peer: None,
            http2: true,
        },
        env,
        e,
    );
    let admin_limits = limits::limits(
        limits::Listener {
            settings: &AdminLimitArgs::SETTINGS,
            flags: args.admin_limits.values(),
            per_peer: Some((
                &settings::limits::ADMIN_PER_PEER,
                args.admin_max_connections_per_peer.as_deref(),
            )),
            http2: false,
        },
        env,
        e,
    );
    Some(Listeners {
        proxy: proxy?,
        admin: admin?,
        proxy_limits: proxy_limits?,
        admin_limits: admin_limits?,
    })
}
