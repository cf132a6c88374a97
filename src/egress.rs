//! The forward proxy outbound HTTPS goes through (`HTTPS_PROXY`).
//!
//! For clusters whose egress to AWS must pass one: STS and Bedrock alike.
//! Only `https://` destinations go through it, in a CONNECT tunnel: TLS
//! stays end to end, so the proxy sees host names, never a request, a
//! signature or a credential. Plain-HTTP destinations (IMDS, the Pod
//! Identity agent, a local fake) and loopback hosts always go direct, as
//! Go's `net/http` does: a sidecar's loopback is its own pod.
//!
//! Matching is hyper-util's (the same rules as reqwest and curl: `NO_PROXY`
//! entries are host suffixes, IP addresses or CIDR ranges, `*` is every
//! host), so the data plane and the AWS SDK's client agree on every host.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use aws_smithy_http_client::proxy::ProxyConfig;
use http::Uri;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use ipnet::IpNet;

use crate::secret::Secret;

/// Hosts that never go through the proxy, whatever `NO_PROXY` says.
const ALWAYS_DIRECT: &str = "localhost,127.0.0.0/8,::1";

/// Why a proxy URL was refused. The URL is never repeated: it may carry a
/// password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EgressError {
    #[error("not a URL ({0}); expected http://[user:password@]host[:port]")]
    NotAUrl(String),
    #[error("{0}:// proxies are not supported; give the proxy's http:// address (the tunnel through it is TLS end to end)")]
    Scheme(String),
    #[error("names no host; expected http://[user:password@]host[:port]")]
    NoHost,
    #[error("has a path or query; expected http://[user:password@]host[:port]")]
    Path,
    #[error(
        "has a #, which would end the URL there; percent-encode it (%23) in a user or password"
    )]
    Fragment,
    #[error("has more than one @; percent-encode @ (%40) in a user or password")]
    TwoAts,
    #[error("has a port that is not one (1 to 65535)")]
    Port,
    #[error("carries credentials, which would be written into every injected pod's spec in plain text; give a proxy that admits the pods without them, or put the URL in a Secret in each namespace and name it with the pod annotation bedrock-broker.io/https-proxy-secret")]
    InjectedCredentials,
}

/// A parsed, checked egress proxy and its bypass list.
#[derive(Clone)]
pub struct EgressProxy {
    /// `http://[user:password@]host[:port]`, as the matchers read it.
    url: Secret,
    /// `host:port`, safe to show.
    address: String,
    has_credentials: bool,
    /// Where the URL came from (`HTTPS_PROXY`, `https_proxy`, a flag), for
    /// messages that send the reader there.
    origin: String,
    /// `NO_PROXY` as given (trimmed), without [`ALWAYS_DIRECT`].
    no_proxy: String,
    /// `NO_PROXY` holds `*`: every host direct, IP addresses too (which
    /// hyper-util's `*`, a host-name rule, leaves out).
    all_direct: bool,
    matcher: Arc<Matcher>,
    /// The same for the AWS SDK (its `Debug` shows the password: never
    /// printed).
    sdk: ProxyConfig,
}

impl EgressProxy {
    /// Checks `url` (`HTTPS_PROXY`; `http://` is assumed when it names no
    /// scheme, port 80 when it names no port) and takes `no_proxy`
    /// (`NO_PROXY`) as is.
    pub fn parse(url: &str, no_proxy: Option<&str>) -> Result<Self, EgressError> {
        let url = url.trim();
        let url = if url.contains("://") {
            url.to_owned()
        } else {
            format!("http://{url}")
        };
        // A URL parser ends the authority at `#` (the rest, a password
        // perhaps, would be dropped and the start taken for a host), and
        // hyper-util splits user and host at the first `@` where Go and
        // Python take the last: both refused rather than read differently.
        if url.contains('#') {
            return Err(EgressError::Fragment);
        }
        let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        let authority_text = after_scheme.split(['/', '?']).next().unwrap_or("");
        if authority_text.matches('@').count() > 1 {
            return Err(EgressError::TwoAts);
        }
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| EgressError::NotAUrl(e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(EgressError::Scheme(other.to_ascii_lowercase())),
            None => return Err(EgressError::NoHost),
        }
        let authority = uri.authority().ok_or(EgressError::NoHost)?;
        if authority.host().is_empty() {
            return Err(EgressError::NoHost);
        }
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
            return Err(EgressError::Path);
        }
        // `http` reads a port it cannot hold as none, and none means 80.
        let host_port = authority_text.rsplit('@').next().unwrap_or("");
        let after_host = host_port
            .rsplit_once(']')
            .map_or(host_port, |(_, rest)| rest);
        let port = match after_host.rsplit_once(':') {
            Some((_, digits)) if !digits.is_empty() => digits
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or(EgressError::Port)?,
            _ => 80,
        };
        let no_proxy = no_proxy.unwrap_or("").trim().to_owned();
        let all_direct = no_proxy.split(',').any(|entry| entry.trim() == "*");
        let bypass = bypass_list(&no_proxy);
        let sdk = ProxyConfig::https(url.as_str())
            .map_err(|e| EgressError::NotAUrl(e.to_string()))?
            .no_proxy(&bypass);
        let sdk = if all_direct {
            ProxyConfig::disabled()
        } else {
            sdk
        };
        let matcher = Matcher::builder().https(url.clone()).no(bypass).build();
        Ok(Self {
            address: format!("{}:{port}", authority.host()),
            has_credentials: authority_text.contains('@'),
            url: Secret::new(url),
            origin: "HTTPS_PROXY".to_owned(),
            no_proxy,
            all_direct,
            matcher: Arc::new(matcher),
            sdk,
        })
    }

    /// The same proxy, named as coming from `origin`.
    pub fn from_origin(self, origin: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            ..self
        }
    }

    /// Where the URL came from: `HTTPS_PROXY` unless told otherwise.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The proxy to tunnel to `dst` through, with its credentials; `None`:
    /// connect directly.
    pub fn intercept(&self, dst: &Uri) -> Option<Intercept> {
        if self.all_direct {
            return None;
        }
        // A host written with its root dot (`...amazonaws.com.`, to skip
        // a pod's DNS search list) matches as the same name without it,
        // as NO_PROXY's entries do.
        if let Some(host) = dst.host().and_then(|h| h.strip_suffix('.')) {
            let mut parts = dst.clone().into_parts();
            let authority = match dst.port_u16() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            parts.authority = authority.parse().ok();
            if let Ok(bare) = Uri::from_parts(parts) {
                return self.matcher.intercept(&bare);
            }
        }
        self.matcher.intercept(dst)
    }

    /// The same proxy and bypass list for the AWS SDK's HTTP client (STS).
    pub fn sdk_config(&self) -> ProxyConfig {
        self.sdk.clone()
    }

    /// `host:port` of the proxy, for logs.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `NO_PROXY` as given.
    pub fn no_proxy(&self) -> &str {
        &self.no_proxy
    }

    /// `NO_PROXY` entries that match no host however they are read (a
    /// scheme, a path, a range that is not one): Go, curl and Python match
    /// nothing with them either, so they are kept as given and named for
    /// the reader rather than guessed at.
    pub fn unmatchable_entries(&self) -> Vec<&str> {
        self.no_proxy
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty() && !matches_a_host(entry))
            .collect()
    }

    /// Whether `NO_PROXY` is `*`: nothing goes through the proxy.
    pub fn bypasses_all(&self) -> bool {
        self.all_direct
    }

    /// A proxy the webhook gives every injected sidecar (`HTTPS_PROXY` in
    /// the pod spec): [`parse`](Self::parse), refusing credentials.
    pub fn parse_injected(url: &str, no_proxy: Option<&str>) -> Result<Self, EgressError> {
        let proxy = Self::parse(url, no_proxy)?;
        if proxy.has_credentials {
            return Err(EgressError::InjectedCredentials);
        }
        Ok(proxy)
    }

    /// The URL for an injected sidecar's `HTTPS_PROXY`, if it carries no
    /// credentials (as [`parse_injected`](Self::parse_injected) ensures).
    pub fn injectable_url(&self) -> Option<&str> {
        (!self.has_credentials).then(|| self.url.expose())
    }
}

impl PartialEq for EgressProxy {
    fn eq(&self, other: &Self) -> bool {
        self.url.expose() == other.url.expose() && self.no_proxy == other.no_proxy
    }
}

/// `NO_PROXY` as hyper-util matches it, read as Go and curl read it too:
/// `*.x` means `.x` (subdomains), a port is dropped (the destinations here
/// are HTTPS on 443), brackets around an IPv6 address too, and a name's
/// trailing dot (the DNS root); then [`ALWAYS_DIRECT`].
fn bypass_list(no_proxy: &str) -> String {
    let mut entries: Vec<Cow<'_, str>> = no_proxy
        .split(',')
        .map(bypass_entry)
        .filter(|entry| !entry.is_empty())
        .collect();
    entries.push(Cow::Borrowed(ALWAYS_DIRECT));
    entries.join(",")
}

fn bypass_entry(entry: &str) -> Cow<'_, str> {
    let entry = entry.trim();
    let entry = entry
        .strip_prefix('*')
        .filter(|e| e.starts_with('.'))
        .unwrap_or(entry);
    // An IPv6 address has colons of its own: a port follows it only in
    // brackets (`[fd00::1]:443`).
    if let Some(bracketed) = entry.strip_prefix('[') {
        return match bracketed.split_once(']') {
            // A range: `[fd00::]/8`.
            Some((address, rest)) if rest.starts_with('/') => {
                Cow::Owned(format!("{address}{rest}"))
            }
            Some((address, _)) => Cow::Borrowed(address),
            None => Cow::Borrowed(entry),
        };
    }
    let host = match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host
        }
        _ => entry,
    };
    Cow::Borrowed(host.strip_suffix('.').unwrap_or(host))
}

/// Whether `entry`, read as [`bypass_list`] reads it, can match a host:
/// `*`, an address, a range or a host name (hyper-util takes anything else
/// for a name no host has).
fn matches_a_host(entry: &str) -> bool {
    let entry = bypass_entry(entry);
    entry == "*"
        || entry.parse::<IpNet>().is_ok()
        || entry.parse::<IpAddr>().is_ok()
        || entry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Says what is wrong with an entry [`EgressProxy::unmatchable_entries`]
/// names.
pub fn unmatchable_entry_message(entry: &str) -> String {
    format!("{entry:?} matches no host (entries are host names, .example.com for a domain's subdomains, IP addresses or CIDR ranges such as 10.0.0.0/8; no scheme, path or wildcard but a leading *.)")
}

impl fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressProxy")
            .field("address", &self.address)
            .field("credentials", &self.has_credentials)
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(url: &str, no_proxy: &str) -> EgressProxy {
        EgressProxy::parse(url, Some(no_proxy)).expect("a valid proxy")
    }

    fn via(p: &EgressProxy, dst: &str) -> Option<String> {
        p.intercept(&dst.parse().expect("a URI"))
            .map(|i| i.uri().to_string())
    }

    #[test]
    fn https_destinations_go_through_the_proxy_but_loopback_and_http_do_not() {
        let p = proxy("http://proxy.corp:3128", "");
        let bedrock = "https://bedrock-runtime.us-east-1.amazonaws.com/model/m/converse";
        assert_eq!(via(&p, bedrock).as_deref(), Some("http://proxy.corp:3128/"));
        assert_eq!(
            via(&p, "https://sts.us-east-1.amazonaws.com/"),
            via(&p, bedrock)
        );
        for direct in [
            "http://169.254.169.254/latest/api/token",
            "http://169.254.170.23/v1/credentials",
            "https://127.0.0.1:8443/",
            "https://127.9.9.9/",
            "https://[::1]:8443/",
            "https://localhost:8443/",
        ] {
            assert_eq!(via(&p, direct), None, "{direct}");
        }
    }

    #[test]
    fn no_proxy_names_suffixes_addresses_and_ranges() {
        let p = proxy(
            "proxy.corp:3128",
            " .vpce.amazonaws.com, bedrock.internal ,10.0.0.0/8",
        );
        for direct in [
            "https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com/",
            "https://bedrock.internal/",
            "https://eu.bedrock.internal/",
            "https://10.1.2.3/",
        ] {
            assert_eq!(via(&p, direct), None, "{direct}");
        }
        for proxied in [
            "https://bedrock-runtime.us-east-1.amazonaws.com/",
            "https://11.0.0.1/",
        ] {
            assert_eq!(
                via(&p, proxied).as_deref(),
                Some("http://proxy.corp:3128/"),
                "{proxied}"
            );
        }
        // Every host, IP addresses too (hyper-util's `*` names host names).
        let all = proxy("proxy.corp:3128", "a.internal, *");
        for direct in [
            "https://a.example/",
            "https://10.1.2.3/",
            "https://[fd00::1]/",
        ] {
            assert_eq!(via(&all, direct), None, "{direct}");
        }
        assert!(all.sdk_config().is_disabled());
    }

    #[test]
    fn credentials_in_the_url_become_basic_auth_and_stay_out_of_debug() {
        let p = proxy("http://svc%40corp:p%3Ass@proxy.corp:3128/", "");
        let intercept = p
            .intercept(&"https://a.example/".parse().expect("a URI"))
            .expect("proxied");
        // base64("svc@corp:p:ss")
        assert_eq!(
            intercept.basic_auth().map(|v| v.to_str().ok()),
            Some(Some("Basic c3ZjQGNvcnA6cDpzcw=="))
        );
        let shown = format!("{p:?} {}", p.address());
        assert!(
            !shown.contains("p%3Ass") && !shown.contains("svc"),
            "{shown}"
        );
        assert!(
            shown.contains("proxy.corp:3128") && shown.contains("credentials: true"),
            "{shown}"
        );
    }

    #[test]
    fn an_injected_proxy_carries_no_credentials() {
        let refused = EgressProxy::parse_injected("http://u:hunter2@proxy.corp:3128", None);
        let error = refused.expect_err("credentials").to_string();
        assert!(
            error.contains("plain text") && !error.contains("hunter2"),
            "{error}"
        );
        let p = EgressProxy::parse_injected("proxy.corp:3128", Some("a.internal")).expect("valid");
        assert_eq!(p.injectable_url(), Some("http://proxy.corp:3128"));
        assert_eq!(
            proxy("http://u:p@proxy.corp:3128", "").injectable_url(),
            None
        );
    }

    #[test]
    fn what_a_url_parser_would_cut_short_is_refused_not_misread() {
        // A `#` ends the authority for a URL parser: the password after it
        // was taken for a host, and the credentials went unnoticed.
        let cases = [
            ("http://u:p#hunter2@proxy.corp:3128", "#"),
            ("http://u:p@hunter2@proxy.corp:3128", "more than one @"),
            ("http://proxy.corp:65616", "port"),
        ];
        for (url, expected) in cases {
            let error = EgressProxy::parse(url, None).expect_err(url).to_string();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
            let injected = EgressProxy::parse_injected(url, None);
            assert!(injected.is_err(), "{url}");
        }
    }

    #[test]
    fn no_proxy_takes_go_style_wildcards_and_ports() {
        let p = proxy(
            "proxy.corp:3128",
            "*.vpce.amazonaws.com, bedrock.internal:443",
        );
        for direct in [
            "https://vpce-1.bedrock-runtime.us-east-1.vpce.amazonaws.com/",
            "https://bedrock.internal/",
        ] {
            assert_eq!(via(&p, direct), None, "{direct}");
        }
        let proxied = "https://bedrock-runtime.us-east-1.amazonaws.com/";
        assert!(via(&p, proxied).is_some());
        // Brackets and a port around an IPv6 address, a name's root dot.
        let p = proxy(
            "proxy.corp:3128",
            "[fd00::1]:443, [fd00::2], amazonaws.com., .",
        );
        for direct in [
            "https://[fd00::1]/",
            "https://[fd00::2]:8443/",
            "https://bedrock-runtime.us-east-1.amazonaws.com/",
        ] {
            assert_eq!(via(&p, direct), None, "{direct}");
        }
        assert!(via(&p, "https://[fd00::3]/").is_some());
        // The destination's root dot too: a name written to skip the DNS
        // search list; and a bracketed range stays a range.
        let p = proxy("proxy.corp:3128", "amazonaws.com, [fd00::]/16");
        for direct in [
            "https://bedrock-runtime.us-east-1.amazonaws.com./",
            "https://bedrock-runtime.us-east-1.amazonaws.com.:443/",
            "https://[fd00::9]/",
        ] {
            assert_eq!(via(&p, direct), None, "{direct}");
        }
        assert!(via(&p, "https://[fd01::9]/").is_some());
        assert!(via(&p, "https://bedrock.internal/").is_some());
        let p = proxy(
            "proxy.corp:3128",
            "*.vpce.amazonaws.com, bedrock.internal:443",
        );
        // As given, for the sidecar to read the same way.
        assert_eq!(p.no_proxy(), "*.vpce.amazonaws.com, bedrock.internal:443");
    }

    #[test]
    fn no_proxy_entries_that_match_no_host_are_named() {
        let p = proxy(
            "proxy.corp:3128",
            "https://sts.amazonaws.com, .internal, 10.0.0.0/33, a.example/path, , *.vpce.amazonaws.com, host:443, 10.0.0.0/8, [fd00::1]:443, *, my_host",
        );
        assert_eq!(
            p.unmatchable_entries(),
            ["https://sts.amazonaws.com", "10.0.0.0/33", "a.example/path"]
        );
        // Nothing is guessed: such an entry still bypasses nothing.
        assert!(via(
            &proxy("proxy.corp:3128", "https://a.example"),
            "https://a.example/"
        )
        .is_some());
        assert!(proxy("proxy.corp:3128", "")
            .unmatchable_entries()
            .is_empty());
    }

    #[test]
    fn a_url_without_port_means_80() {
        assert_eq!(proxy("http://proxy.corp", "").address(), "proxy.corp:80");
    }

    #[test]
    fn unsupported_or_malformed_urls_are_refused_without_repeating_them() {
        let cases = [
            ("https://user:hunter2@proxy.corp:3128", "https:// proxies"),
            ("socks5://user:hunter2@proxy.corp:1080", "socks5:// proxies"),
            ("http://user:hunter2@proxy.corp:3128/path", "has a path"),
            ("http://user:hunter2@proxy corp:3128", "not a URL"),
            (
                "http://user:hunter2@proxy.corp:0",
                "has a port that is not one (1 to 65535)",
            ),
            ("http://", "not a URL"),
        ];
        for (url, expected) in cases {
            let error = EgressProxy::parse(url, None).expect_err(url).to_string();
            assert!(error.contains(expected), "{url}: {error}");
            assert!(!error.contains("hunter2"), "{url}: {error}");
        }
    }
}
