//! Where requests go: base URLs, the SigV4 signing name of each host, and
//! the default endpoints of each Bedrock service (FIPS and dual-stack as the
//! AWS endpoint rules name them). Fills the proxy's route table.

use http::uri::{Authority, Scheme};
use http::Uri;

use super::aws::Region;
use super::parse::{self, ParseError};
use super::setting::{Errors, Setting};
use super::settings::sidecar as s;
use super::Env;
use crate::cli::SidecarArgs;
use crate::proxy::{is_loopback_host, RouteTable, Upstream};

/// The signing name of everything but Mantle.
const SIGNING_NAME: &str = "bedrock";
/// Mantle's signing name, whatever its (custom) host.
const MANTLE_SIGNING_NAME: &str = "bedrock-mantle";

/// A base URL such as `https://bedrock-runtime.us-east-1.amazonaws.com`,
/// split into scheme, authority (default port dropped, so the signed host
/// matches the `Host` the client sends) and path prefix (no trailing slash).
pub fn base_url(raw: &str) -> Result<(Scheme, Authority, String), ParseError> {
    // Never quoted with user information, which may hold a password (in
    // any form: not percent-encoded, it may hold spaces too).
    let shown = if raw.contains('@') {
        "the value (not repeated: it has an @, maybe a password)".to_owned()
    } else {
        format!("{raw:?}")
    };
    let refused = |why: &str| ParseError::refused(format!("{shown} {why}"));
    let uri: Uri = raw
        .parse()
        .map_err(|e| ParseError::refused(format!("{shown} is not a URL: {e}")))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| refused("has no scheme (expected https://HOST)"))?;
    if scheme != Scheme::HTTPS && scheme != Scheme::HTTP {
        return Err(ParseError::refused(format!(
            "{shown}: scheme must be https or http"
        )));
    }
    let authority = uri.authority().ok_or_else(|| refused("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(ParseError::refused(
            "must not contain user information (user:password@); the value is not repeated, as it may hold a password",
        ));
    }
    if uri.query().is_some() {
        return Err(refused("must not have a query string"));
    }
    // `http` reads a port past 65535 as no port at all, and the
    // connection would go to the scheme's default.
    if let Some((_, port)) = authority.as_str().rsplit_once(':') {
        if !port.contains(']') && !port.parse::<u16>().is_ok_and(|p| p != 0) {
            return Err(refused("has a port that is not one (1 to 65535)"));
        }
    }
    let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
    let authority: Authority = match authority.port_u16() {
        Some(p) if p == default_port => authority
            .host()
            .parse()
            .map_err(|e| ParseError::refused(format!("{shown}: {e}")))?,
        _ => authority.clone(),
    };
    // Requests would be signed for one path and read by the server as
    // another, as client paths with such segments would (those are refused).
    if crate::proxy::has_dot_segment(uri.path()) {
        return Err(refused("has a path with . or .. segments"));
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    Ok((scheme, authority, base_path))
}

/// The SigV4 signing name for an upstream host: `bedrock-mantle` for
/// Bedrock Mantle, `bedrock` for everything else (bedrock-runtime,
/// bedrock-agent-runtime, VPC endpoints of those, custom endpoints).
pub fn signing_name_for_host(host: &str) -> &'static str {
    let mantle = host
        .split('.')
        .any(|label| label == MANTLE_SIGNING_NAME || label.starts_with("bedrock-mantle-"));
    if mantle {
        MANTLE_SIGNING_NAME
    } else {
        SIGNING_NAME
    }
}

/// An upstream from a base URL, signed as its host says. Plain `http://`
/// only to loopback unless `plaintext_allowed`: the session token and every
/// prompt would cross the network in clear.
fn upstream_checked(raw: &str, plaintext_allowed: bool) -> Result<Upstream, ParseError> {
    let upstream = upstream(raw)?;
    if upstream.scheme == Scheme::HTTP
        && !plaintext_allowed
        && !is_loopback_host(upstream.authority.host())
    {
        return Err(ParseError::refused(format!(
            "{raw:?} is plain http to a host that is not loopback: requests (and their session tokens) would cross the network in clear; use https, or set --allow-plaintext-upstream"
        )));
    }
    Ok(upstream)
}

/// The STS endpoint override, held to the same rule as upstreams: STS
/// receives the web-identity token and answers with credentials.
pub fn sts_endpoint(raw: &str, plaintext_allowed: bool) -> Result<http::Uri, ParseError> {
    let (scheme, authority, _) = base_url(raw)?;
    if scheme == Scheme::HTTP && !plaintext_allowed && !is_loopback_host(authority.host()) {
        return Err(ParseError::refused(format!(
            "{raw:?} is plain http to a host that is not loopback: the web-identity token and the credentials STS returns would cross the network in clear; use https, or set --allow-plaintext-upstream"
        )));
    }
    raw.parse::<http::Uri>()
        .map_err(|e| ParseError::refused(e.to_string()))
}

/// An upstream from a base URL, signed as its host says.
fn upstream(raw: &str) -> Result<Upstream, ParseError> {
    let (scheme, authority, base_path) = base_url(raw)?;
    Ok(Upstream {
        signing_name: signing_name_for_host(authority.host()).to_owned(),
        scheme,
        authority,
        base_path,
    })
}

/// The default endpoint of a Bedrock service.
fn default_endpoint(service: &str, region: &Region, fips: bool, dualstack: bool) -> String {
    let host = if fips {
        format!("{service}-fips")
    } else {
        service.to_owned()
    };
    let suffixes = super::partition::suffixes(region.as_str());
    let domain = if dualstack {
        suffixes.dual_stack
    } else {
        suffixes.dns
    };
    format!("https://{host}.{region}.{domain}")
}

fn signing_name(raw: &str) -> Result<String, ParseError> {
    let ok = !raw.is_empty()
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ParseError::not_a(
            raw,
            "a signing name",
            "lowercase letters, digits and -",
        ))
    }
}

/// `--allow-plaintext-upstream`, read once per command and reported when
/// it is no boolean (then counted as no).
pub fn plaintext_allowed(flag: Option<&str>, env: &Env, errors: &mut Errors) -> bool {
    errors
        .read(&s::ALLOW_PLAINTEXT_UPSTREAM, flag, env, parse::bool)
        .unwrap_or(false)
}

/// The route table: the runtime (required: explicit, or from the region),
/// and the Agents runtime and Mantle (explicit, or from the region when
/// there is one). `plaintext`: see [`plaintext_allowed`].
pub fn routes(
    args: &SidecarArgs,
    env: &Env,
    region: Option<&Region>,
    region_reported: bool,
    plaintext: bool,
    errors: &mut Errors,
) -> Option<RouteTable> {
    let fips = errors.read(&s::USE_FIPS, args.use_fips.as_deref(), env, parse::bool);
    let dualstack = errors.read(
        &s::USE_DUALSTACK,
        args.use_dualstack.as_deref(),
        env,
        parse::bool,
    );
    let (fips, dualstack) = (fips.unwrap_or(false), dualstack.unwrap_or(false));
    let explicit = |raw: &str| upstream_checked(raw, plaintext);
    let signing_override = errors.read(
        &s::SIGNING_NAME,
        args.signing_name.as_deref(),
        env,
        signing_name,
    );

    let runtime = runtime_upstream(
        args,
        env,
        region,
        region_reported,
        (fips, dualstack),
        explicit,
        errors,
    )
    .map(|mut u| {
        if let Some(name) = signing_override {
            u.signing_name = name;
        }
        u
    });

    let mut extra = |setting: &Setting, flag: Option<&str>, default: Option<String>| match (
        setting.find(flag, env),
        default,
    ) {
        (Some(raw), _) => errors.parse(raw, explicit),
        (None, Some(url)) => upstream(&url).ok(),
        (None, None) => None,
    };
    let agent_runtime = extra(
        &s::AGENT_RUNTIME_UPSTREAM,
        args.agent_runtime_upstream.as_deref(),
        region.map(|r| default_endpoint("bedrock-agent-runtime", r, fips, dualstack)),
    );
    let mantle = extra(
        &s::MANTLE_UPSTREAM,
        args.mantle_upstream.as_deref(),
        region.map(|r| format!("https://bedrock-mantle.{r}.api.aws")),
    )
    .map(|mut m| {
        m.signing_name = MANTLE_SIGNING_NAME.to_owned();
        m
    });
    Some(RouteTable {
        runtime: runtime?,
        agent_runtime,
        mantle,
    })
}

/// The runtime endpoint every non-prefixed request goes to: the explicit
/// `--upstream`, else the region's (FIPS/dual-stack) default. Without either
/// nothing can be signed, so that is a configuration error, reported once.
fn runtime_upstream(
    args: &SidecarArgs,
    env: &Env,
    region: Option<&Region>,
    region_reported: bool,
    (fips, dualstack): (bool, bool),
    explicit: impl Fn(&str) -> Result<Upstream, ParseError>,
    errors: &mut Errors,
) -> Option<Upstream> {
    match (s::UPSTREAM.find(args.upstream.as_deref(), env), region) {
        (Some(raw), _) => errors.parse(raw, explicit),
        (None, Some(region)) => upstream(&default_endpoint(
            "bedrock-runtime",
            region,
            fips,
            dualstack,
        ))
        .ok(),
        (None, None) => {
            if !region_reported {
                errors.push(
                    super::settings::aws::REGION.origin(),
                    "a region (or an explicit --upstream) is required to know which Bedrock endpoint to call",
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signing_name_follows_the_host() {
        for (host, name) in [
            ("bedrock-runtime.us-east-1.amazonaws.com", "bedrock"),
            ("bedrock-runtime-fips.us-east-1.amazonaws.com", "bedrock"),
            ("bedrock-agent-runtime.us-east-1.amazonaws.com", "bedrock"),
            ("bedrock-mantle.us-east-1.api.aws", "bedrock-mantle"),
            (
                "vpce-0abc-xyz.bedrock-runtime.us-east-1.vpce.amazonaws.com",
                "bedrock",
            ),
            ("127.0.0.1", "bedrock"),
        ] {
            assert_eq!(signing_name_for_host(host), name, "{host}");
        }
    }

    #[test]
    fn plaintext_upstreams_are_loopback_only_unless_allowed() {
        assert!(upstream_checked("http://127.0.0.1:9", false).is_ok());
        assert!(upstream_checked("http://[::1]:9", false).is_ok());
        assert!(upstream_checked("http://localhost:9", false).is_ok());
        assert!(upstream_checked("https://bedrock.example", false).is_ok());
        let refused = upstream_checked("http://bedrock.example", false).unwrap_err();
        assert!(refused.to_string().contains("--allow-plaintext-upstream"));
        assert!(upstream_checked("http://bedrock.example", true).is_ok());
    }

    #[test]
    fn base_urls_drop_default_ports_and_refuse_what_cannot_be_a_base() {
        let (scheme, authority, path) = base_url("https://h.example:443/base/").unwrap();
        assert_eq!(
            (scheme.as_str(), authority.as_str(), path.as_str()),
            ("https", "h.example", "/base")
        );
        for bad in [
            "ftp://x",
            "nope",
            "http://u@h",
            "http://h/?q=1",
            "https://h:99999",
            "https://h:0",
            "https://h:",
            "https://[::1]:70000",
            "https://h/x/..",
            "https://h/./x",
            "https://h/x/%2e%2E/y",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
        for good in [
            "https://[::1]",
            "https://[::1]:8443/x",
            "http://127.0.0.1:9",
            "https://h/x.y/..z/",
        ] {
            assert!(base_url(good).is_ok(), "{good}");
        }
        let e = base_url("https://svc:s3cret@h.example")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("user information") && !e.contains("s3cret"),
            "{e}"
        );
    }
}
