//! What a request to the proxy must pass, read from the sidecar's flags:
//! the Host names and token it answers, and the limits on bodies and
//! requests in flight.

use std::num::NonZeroU64;
use std::time::Duration;

use super::parse::{self, ParseError};
use super::setting::Errors;
use super::settings::sidecar as s;
use super::Env;
use crate::cli::SidecarArgs;
use crate::proxy::{Gate, MinRate};
use crate::secret::Secret;

/// What a request must pass: its Host, the optional token, the budgets.
pub(super) fn gate(
    args: &SidecarArgs,
    env: &Env,
    e: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<Gate> {
    let allowed_hosts = e.read_optional(
        &s::ALLOWED_HOSTS,
        args.allowed_hosts.as_deref(),
        env,
        allowed_hosts,
    );
    let token = e.read_optional(
        &s::PROXY_TOKEN,
        args.proxy_token.as_deref(),
        env,
        proxy_token,
    );
    if args
        .proxy_token
        .as_ref()
        .is_some_and(|raw| !raw.trim_start().starts_with('@'))
    {
        // As `docker login --password` warns: a command line is readable by
        // every process that can list processes (`ps`, /proc/PID/cmdline),
        // in the pod with a shared process namespace and on the node.
        warnings.push(format!(
            "--{} was given on the command line, where any process that can list \
             processes can read it; give it as --{} @FILE or in {} instead",
            s::PROXY_TOKEN.flag,
            s::PROXY_TOKEN.flag,
            s::PROXY_TOKEN.env[0],
        ));
    }
    let body_read_timeout = e.read(
        &s::BODY_READ_TIMEOUT,
        args.body_read_timeout.as_deref(),
        env,
        parse::positive_duration,
    );
    let body_min_rate = e.read(
        &s::BODY_MIN_RATE,
        args.body_min_rate.as_deref(),
        env,
        parse::count,
    );
    let body_min_rate_grace = e.read(
        &s::BODY_MIN_RATE_GRACE,
        args.body_min_rate_grace.as_deref(),
        env,
        parse::duration,
    );
    let body_budget = e.read(
        &s::REQUEST_BODY_BUDGET,
        args.request_body_budget.as_deref(),
        env,
        parse::positive_count,
    );
    let body_budget_wait = e.read(
        &s::BODY_BUDGET_WAIT,
        args.body_budget_wait.as_deref(),
        env,
        parse::duration,
    );
    let max_requests = e.read(
        &s::MAX_REQUESTS,
        args.max_requests.as_deref(),
        env,
        parse::positive_count,
    );
    Some(Gate {
        allowed_hosts: allowed_hosts?.unwrap_or_default(),
        token: token?,
        body_read_timeout: body_read_timeout?,
        body_min_rate: min_rate(body_min_rate?, body_min_rate_grace?),
        body_budget: body_budget?,
        body_budget_wait: body_budget_wait?,
        max_requests: max_requests?,
    })
}

/// `--body-min-rate` 0 turns the rule off.
fn min_rate(bytes_per_second: usize, grace: Duration) -> Option<MinRate> {
    let bytes_per_second = NonZeroU64::new(u64::try_from(bytes_per_second).ok()?)?;
    Some(MinRate {
        bytes_per_second,
        grace,
    })
}

/// Host names (or IP addresses) as the `Host` header gives them, compared
/// without the port: an entry with a port, a scheme or a wildcard would
/// never match, and the requests it was meant for would get 403.
fn allowed_hosts(raw: &str) -> Result<Vec<String>, ParseError> {
    let mut hosts = parse::list(raw);
    for host in &mut hosts {
        let why = if let Some(addr) = crate::proxy::bracketed_ipv6(host) {
            // As the proxy compares a `Host` with an IPv6 address: in its
            // one written form.
            *host = format!("[{addr}]");
            continue;
        } else if host.contains("://") {
            "is a URL; give the host name alone"
        } else if host.contains('*') {
            "has a wildcard, which is not supported; name each host"
        } else if host.parse::<std::net::Ipv6Addr>().is_ok() {
            "is an IPv6 address: write it in brackets, as the Host header has it ([fd00::1])"
        } else if host.contains(':') {
            "has a port; give the host name alone (the Host header is compared without its port)"
        } else if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        {
            "is not a host name or IP address"
        } else {
            continue;
        };
        return Err(ParseError::refused(format!("{host:?} {why}")));
    }
    Ok(hosts)
}

/// The token itself, or `@FILE` to read it from a file (a mounted Secret).
fn proxy_token(raw: &str) -> Result<Secret, ParseError> {
    let token = match raw.strip_prefix('@') {
        Some(path) => crate::files::read_small_text(std::path::Path::new(path), 64 * 1024)
            .map_err(|e| ParseError::refused(format!("cannot read {path}: {e}")))?,
        None => raw.to_owned(),
    };
    let token = token.trim();
    if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ParseError::refused(
            "a proxy token is at least 16 printable characters without spaces",
        ));
    }
    Ok(Secret::new(token))
}
