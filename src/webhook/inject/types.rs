//! Value types shared by the webhook's flags and the pod annotations.
//!
//! Each type parses from the string a user writes and, on failure, says what
//! is accepted, so a denial or a start-up error can name the value and the
//! rule in one line.

use std::fmt;

use crate::config::parse::ParseError;

pub use super::quantity::{parse_limit, Quantity, Resource};

/// Kubernetes' limit on `expirationSeconds` of a projected token (2^32 s).
const MAX_TOKEN_EXPIRATION_SECONDS: i64 = 1 << 32;
/// Kubernetes' floor on `expirationSeconds` of a projected token.
pub const MIN_TOKEN_EXPIRATION_SECONDS: i64 = 600;

/// How the sidecar is added to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SidecarMode {
    /// An init container with `restartPolicy: Always` (Kubernetes 1.29+):
    /// starts before the app, stops after it, and lets Jobs complete.
    #[default]
    Native,
    /// A regular container, for clusters older than 1.29.
    Classic,
}

impl SidecarMode {
    pub const ACCEPTED: &'static str = "native or classic";

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "native" => Ok(Self::Native),
            "classic" => Ok(Self::Classic),
            other => Err(ParseError::not_a(other, "a sidecar mode", Self::ACCEPTED)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Classic => "classic",
        }
    }
}

/// Which IAM roles a pod may get (`--role-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RolePolicy {
    /// Only the role its ServiceAccount carries (`eks.amazonaws.com/role-arn`):
    /// whoever may use the ServiceAccount decides the role, as with IRSA.
    #[default]
    ServiceAccount,
    /// The pod's annotation, then the ServiceAccount, then a container's
    /// `AWS_ROLE_ARN`: only the role's IAM trust policy stands in the way.
    Any,
}

impl RolePolicy {
    pub const ACCEPTED: &'static str = "service-account or any";

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "service-account" => Ok(Self::ServiceAccount),
            "any" => Ok(Self::Any),
            other => Err(ParseError::not_a(other, "a role policy", Self::ACCEPTED)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::ServiceAccount => "service-account",
            Self::Any => "any",
        }
    }
}

/// The sidecar's log level, passed as `RUST_LOG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub const ACCEPTED: &'static str = "error, warn, info, debug or trace";

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "error" => Ok(Self::Error),
            "warn" => Ok(Self::Warn),
            "info" => Ok(Self::Info),
            "debug" => Ok(Self::Debug),
            "trace" => Ok(Self::Trace),
            other => Err(ParseError::not_a(other, "a log level", Self::ACCEPTED)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// `imagePullPolicy` of the sidecar container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw {
            "Always" => Ok(Self::Always),
            "IfNotPresent" => Ok(Self::IfNotPresent),
            "Never" => Ok(Self::Never),
            other => Err(ParseError::not_a(
                other,
                "an image pull policy",
                "Always, IfNotPresent or Never",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// A container image reference such as `ghcr.io/org/bedrock-broker:0.1.0`.
///
/// Checked loosely (characters and shape only): the container runtime is the
/// authority on references, but a typo with a space or a quote in it should
/// be refused here rather than surface as `ErrImagePull` later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef(String);

impl ImageRef {
    pub const ACCEPTED: &'static str =
        "a container image reference such as ghcr.io/org/bedrock-broker:0.1.0";

    /// The grammar the kubelet and container runtimes hold references to
    /// (the distribution project's): a pod admitted with another image
    /// fails later, `InvalidImageName`, far from the annotation at fault.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if raw.len() <= 1024 && is_image_reference(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::not_a(raw, "an image reference", Self::ACCEPTED))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `[domain/]path[:tag][@digest]`, each part as the distribution
/// project's reference grammar has it.
fn is_image_reference(raw: &str) -> bool {
    let (rest, digest) = match raw.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (raw, None),
    };
    if !digest.is_none_or(is_digest) {
        return false;
    }
    // A tag's colon comes after the last slash; a port's, before it.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if !tag.is_none_or(is_tag) || name.len() > 255 {
        return false;
    }
    let mut parts = name.split('/').peekable();
    let first = parts.next().unwrap_or_default();
    let has_domain = parts.peek().is_some()
        && (first.contains(['.', ':'])
            || first == "localhost"
            || first.bytes().any(|b| b.is_ascii_uppercase()));
    if has_domain {
        is_domain(first) && parts.all(is_path_component)
    } else {
        std::iter::once(first).chain(parts).all(is_path_component)
    }
}

/// Lower-case letters and digits, joined by `.`, `_`, `__` or runs of `-`.
fn is_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let sep = &c[i..];
        let len = if sep.starts_with("__") {
            2
        } else if matches!(bytes[i], b'.' | b'_') {
            1
        } else if bytes[i] == b'-' {
            sep.bytes().take_while(|b| *b == b'-').count()
        } else {
            return false;
        };
        i += len;
        if i >= bytes.len() || !alnum(bytes[i]) {
            return false;
        }
    }
    true
}

/// Host name labels (letters of either case, digits, inner hyphens) or a
/// bracketed IPv6 address, and a port.
fn is_domain(d: &str) -> bool {
    let (host_ok, port) = match d.strip_prefix('[') {
        Some(v6) => {
            let Some((address, rest)) = v6.split_once(']') else {
                return false;
            };
            let address_ok =
                !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
            match rest {
                "" => (address_ok, None),
                _ => (address_ok, Some(rest.strip_prefix(':').unwrap_or(""))),
            }
        }
        None => {
            let (host, port) = match d.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (d, None),
            };
            (host.split('.').all(is_host_label), port)
        }
    };
    host_ok
        && port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn is_host_label(l: &str) -> bool {
    !l.is_empty()
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

fn is_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    (1..=128).contains(&t.len())
        && word(t.as_bytes()[0])
        && t.bytes().all(|b| word(b) || b == b'.' || b == b'-')
}

/// `algorithm:hex` of an algorithm the runtimes verify (SHA-256, -384,
/// -512), in lower-case hex of its length.
fn is_digest(d: &str) -> bool {
    let Some((algorithm, hex)) = d.split_once(':') else {
        return false;
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == length
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The audience of the projected service-account token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audience(String);

impl Audience {
    pub const ACCEPTED: &'static str =
        "a non-empty string of printable characters without spaces, such as sts.amazonaws.com";

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if !raw.is_empty() && raw.len() <= 1024 && raw.chars().all(|c| c.is_ascii_graphic()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::not_a(raw, "a token audience", Self::ACCEPTED))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `expirationSeconds` of the projected token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenExpiration(i64);

impl TokenExpiration {
    /// The kubelet refreshes the token at 80% of this; one day is what the
    /// EKS Pod Identity Webhook uses.
    pub const DEFAULT: Self = Self(86_400);

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw.parse::<i64>() {
            Ok(s) if (MIN_TOKEN_EXPIRATION_SECONDS..=MAX_TOKEN_EXPIRATION_SECONDS).contains(&s) => {
                Ok(Self(s))
            }
            _ => Err(ParseError::not_a(
                raw,
                "a token lifetime",
                format!("a whole number of seconds from {MIN_TOKEN_EXPIRATION_SECONDS} to {MAX_TOKEN_EXPIRATION_SECONDS}"),
            )),
        }
    }

    pub fn seconds(self) -> i64 {
        self.0
    }
}

/// A TCP port the sidecar listens on inside the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(u16);

impl Port {
    /// Ports below 1024 need `CAP_NET_BIND_SERVICE`, which the sidecar drops.
    pub const ACCEPTED: &'static str = "a whole number from 1024 to 65535";

    pub const fn new_unchecked(port: u16) -> Self {
        Self(port)
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match raw.parse::<u16>() {
            Ok(p) if p >= 1024 => Ok(Self(p)),
            _ => Err(ParseError::not_a(raw, "a usable port", Self::ACCEPTED)),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A key of a Secret in the pod's namespace: `<secret-name>/<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

impl SecretKeyRef {
    pub const ACCEPTED: &'static str =
        "<secret-name>/<key> naming a Secret in the pod's namespace, such as bedrock-api-key/token";

    /// A value that is not a reference is not quoted back: it is often the
    /// secret itself, pasted in its place (a key, a token, a proxy URL with
    /// a password), and refusals reach the API server's events.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let bad = || {
            ParseError::refused(format!(
                "not a secret reference (the value is not shown: it may be the secret itself); accepted values: {}",
                Self::ACCEPTED
            ))
        };
        let (name, key) = raw.split_once('/').ok_or_else(bad)?;
        if is_dns_subdomain(name) && is_config_key(key) {
            Ok(Self {
                name: name.to_owned(),
                key: key.to_owned(),
            })
        } else {
            Err(bad())
        }
    }
}

/// RFC 1123 subdomain, the rule for most object names.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// A key of a Secret or ConfigMap.
fn is_config_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_below_1024_are_refused() {
        assert_eq!(Port::parse("9787").map(Port::get), Ok(9787));
        for raw in ["80", "0", "65536", "-1", "x", ""] {
            assert!(Port::parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn token_expiration_has_kubernetes_bounds() {
        assert_eq!(
            TokenExpiration::parse("600").map(TokenExpiration::seconds),
            Ok(600)
        );
        assert!(TokenExpiration::parse("599").is_err());
        assert!(TokenExpiration::parse("4294967296").is_ok());
        assert!(TokenExpiration::parse("4294967297").is_err());
        assert!(TokenExpiration::parse("1h").is_err());
    }

    #[test]
    fn secret_refs_need_a_name_and_a_key() {
        assert_eq!(
            SecretKeyRef::parse("bedrock-api-key/token"),
            Ok(SecretKeyRef {
                name: "bedrock-api-key".into(),
                key: "token".into()
            })
        );
        for raw in ["nokey", "/k", "name/", "Upper/k", "a/b/c", "a/b c"] {
            assert!(SecretKeyRef::parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn image_refs_are_checked_for_shape() {
        let digest = format!("sha256:{}", "a1".repeat(32));
        for ok in [
            "bedrock-broker",
            "bedrock-broker:0.1.0",
            "ghcr.io/org/bedrock-broker:0.1.0",
            &format!("localhost:5000/b@{digest}"),
            &format!("ghcr.io/org/b:0.1.0@{digest}"),
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/bb:v1.2-rc_3",
            "Registry.Corp:443/a_b__c-d.e/x--y:latest",
            "docker.io/library/busybox",
            "[::1]:5000/bb:1",
            "[fd00::1]/bb",
            &format!("bb@sha512:{}", "0f".repeat(64)),
        ] {
            assert!(ImageRef::parse(ok).is_ok(), "{ok}");
        }
        // The kubelet refuses these (`InvalidImageName`): an upper-case
        // path was admitted, and its pod never started (an audit).
        for bad in [
            "",
            "a b",
            ":tag",
            "repo:",
            "a//b",
            "\"x\"",
            "UPPER/Case:1",
            "ghcr.io/Org/b",
            "a/-b",
            "a/b-",
            "a/b:tag:more",
            "a@sha256:abc",
            "a:-tag",
            "ghcr.io:port/b",
            "a/b@",
            "a/b@md5",
            &format!("a@sha256:{}", "a1".repeat(16)),
            &format!("a@sha256:{}", "A1".repeat(32)),
            &format!("a@md5:{}", "a1".repeat(32)),
            "[::1:5000/bb",
            "[zz::1]:5000/bb",
            "[::1]x/bb",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
