//! Fills each listener's [`Limits`] from its four flags (and, where the
//! port is reachable from other pods, its per-peer connection limit).

use super::parse::{self, ParseError};
use super::setting::{Errors, Setting};
use super::settings::limits::ServerLimits;
use super::Env;
use crate::server::limits::MIN_HEADER_BYTES;
use crate::server::Limits;

/// How a listener is reached, which decides what it serves.
pub struct Listener<'a> {
    pub settings: &'a ServerLimits,
    /// The flag values, in the order of [`ServerLimits::all`].
    pub flags: [Option<&'a str>; 4],
    /// The per-peer limit and its flag, for listeners other pods reach.
    pub per_peer: Option<(&'a Setting, Option<&'a str>)>,
    pub http2: bool,
}

fn header_bytes(raw: &str) -> Result<usize, ParseError> {
    match parse::count(raw) {
        Ok(n) if n >= MIN_HEADER_BYTES => Ok(n),
        Err(too_large @ ParseError::Refused(_)) => Err(too_large),
        _ => Err(ParseError::not_a(
            raw,
            "a head size",
            format!("a whole number of bytes, at least {MIN_HEADER_BYTES}"),
        )),
    }
}

/// The limits of one listener; `None` when a value is invalid (recorded).
pub fn limits(listener: Listener<'_>, env: &Env, e: &mut Errors) -> Option<Limits> {
    let s = listener.settings;
    let [header, idle, connections, bytes] = listener.flags;
    let header_read_timeout = e.read(
        &s.header_read_timeout,
        header,
        env,
        parse::positive_duration,
    );
    let idle_timeout = e.read(&s.idle_timeout, idle, env, parse::positive_duration);
    let max_connections = e.read(&s.max_connections, connections, env, parse::positive_count);
    let max_header_bytes = e.read(&s.max_header_bytes, bytes, env, header_bytes);
    let per_peer = match listener.per_peer {
        None => Some(None),
        Some((setting, flag)) => e.read(setting, flag, env, parse::positive_count).map(Some),
    };
    Some(Limits {
        header_read_timeout: header_read_timeout?,
        idle_timeout: idle_timeout?,
        max_connections: max_connections?,
        max_connections_per_peer: per_peer?,
        max_header_bytes: max_header_bytes?,
        http2: listener.http2,
    })
}
