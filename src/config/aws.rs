//! AWS value types, checked where they enter: a bad value is refused at
//! start (or at admission) with what is accepted, not by STS later.

use std::fmt;

use super::parse::ParseError;

/// An AWS region name such as `us-east-1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region(String);

impl Region {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = !raw.is_empty()
            && raw.len() <= 32
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !raw.starts_with('-')
            && !raw.ends_with('-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::not_a(
                raw,
                "a region name",
                "an AWS region name such as us-east-1",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Shaped like every AWS region so far: groups of letters, then a
    /// number (`us-east-1`, `us-gov-west-1`, `eusc-de-east-1`). Not a
    /// refusal: a private endpoint may be signed for a name of its own.
    pub fn is_aws_shaped(&self) -> bool {
        let mut parts = self.0.split('-').rev();
        let number = parts.next().unwrap_or_default();
        let letters: Vec<&str> = parts.collect();
        !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && letters.len() >= 2
            && letters
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fields of `arn:<partition>:iam::<account>:<resource>`, when `raw`
/// is an IAM ARN whose account is 12 digits (or `aws` where allowed).
fn iam_resource(raw: &str, aws_owned: bool) -> Option<&str> {
    let mut parts = raw.splitn(6, ':');
    let ok = parts.next() == Some("arn")
        && parts.next().is_some_and(|p| p.starts_with("aws"))
        && parts.next() == Some("iam")
        && parts.next() == Some("")
        && parts.next().is_some_and(|a| {
            (a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit())) || (aws_owned && a == "aws")
        });
    ok.then(|| parts.next()).flatten()
}

/// An IAM role ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleArn(String);

impl RoleArn {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match iam_resource(raw, false).and_then(|r| r.strip_prefix("role/")) {
            Some(name) if !name.is_empty() => Ok(Self(raw.to_owned())),
            _ => Err(ParseError::not_a(
                raw,
                "an IAM role ARN",
                "an IAM role ARN such as arn:aws:iam::123456789012:role/NAME",
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoleArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A managed policy ARN (customer-managed or AWS-managed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyArn(String);

impl PolicyArn {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        match iam_resource(raw, true).and_then(|r| r.strip_prefix("policy/")) {
            Some(name) if !name.is_empty() => Ok(Self(raw.to_owned())),
            _ => Err(ParseError::not_a(
                raw,
                "an IAM policy ARN",
                "arn:aws:iam::123456789012:policy/NAME or arn:aws:iam::aws:policy/NAME",
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At most this many managed policies per session (an STS limit).
pub const MAX_POLICY_ARNS: usize = 10;

/// A comma-separated list of policy ARNs, as STS accepts it.
pub fn policy_arns(raw: &str) -> Result<Vec<PolicyArn>, ParseError> {
    let arns = super::parse::list(raw);
    if arns.len() > MAX_POLICY_ARNS {
        return Err(ParseError::refused(format!(
            "{} policy ARNs given; STS accepts at most {MAX_POLICY_ARNS}",
            arns.len()
        )));
    }
    arns.iter().map(|a| PolicyArn::parse(a)).collect()
}

/// An STS `ExternalId`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalId(String);

impl ExternalId {
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let ok = (2..=1224).contains(&raw.len())
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c));
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::refused(
                "an ExternalId is 2 to 1224 characters of letters, digits and _+=,.@:/-",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An STS role session name: 2 to 64 characters of `[\w+=,.@-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionName(String);

/// Session name prefix, so CloudTrail shows the broker made the call.
const SESSION_NAME_PREFIX: &str = "bedrock-broker";

impl SessionName {
    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        if (2..=64).contains(&raw.len()) && raw.chars().all(Self::allowed) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::not_a(
                raw,
                "a valid role session name",
                "2 to 64 characters of letters, digits and _+=,.@-",
            ))
        }
    }

    /// A valid session name derived from any string (normally the pod name):
    /// invalid characters become `-`, the result is prefixed and cut to 64.
    pub fn derive(from: Option<&str>) -> Self {
        let cleaned = Self::clean(from.unwrap_or(""));
        let mut name = if cleaned.is_empty() {
            SESSION_NAME_PREFIX.to_owned()
        } else {
            format!("{SESSION_NAME_PREFIX}-{cleaned}")
        };
        name.truncate(64);
        Self(name)
    }

    /// `<namespace>.<pod>`, so CloudTrail names the calling pod; falls back
    /// to [`SessionName::derive`] outside Kubernetes. Past 64 characters
    /// the namespace is cut to its first 20 and the pod's name in its
    /// middle (`..`): its end (a ReplicaSet's hash and the pod's own
    /// suffix) is what tells one replica from another.
    pub fn for_pod(namespace: Option<&str>, pod: Option<&str>) -> Self {
        const NAMESPACE_KEPT: usize = 20;
        const POD_END_KEPT: usize = 16;
        match (namespace, pod) {
            (Some(ns), Some(pod)) => {
                // ASCII from here: `clean` turns anything else into `-`.
                let (ns_clean, pod_clean) = (Self::clean(ns), Self::clean(pod));
                let mut name = format!("{ns_clean}.{pod_clean}");
                if name.len() > 64 {
                    let pod_room = 64 - 1 - ns_clean.len().min(NAMESPACE_KEPT);
                    let pod_short = if pod_clean.len() <= pod_room {
                        pod_clean
                    } else {
                        let head = pod_room - 2 - POD_END_KEPT;
                        let tail = pod_clean.len() - POD_END_KEPT;
                        format!("{}..{}", &pod_clean[..head], &pod_clean[tail..])
                    };
                    let ns_room = 64 - 1 - pod_short.len();
                    name = format!("{}.{pod_short}", &ns_clean[..ns_clean.len().min(ns_room)]);
                }
                Self::parse(&name).unwrap_or_else(|_| Self::derive(Some(pod)))
            }
            (_, pod) => Self::derive(pod),
        }
    }

    fn clean(raw: &str) -> String {
        raw.chars()
            .map(|c| if Self::allowed(c) { c } else { '-' })
            .collect()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_arns_are_checked() {
        assert!(RoleArn::parse("arn:aws:iam::123456789012:role/a/b").is_ok());
        assert!(RoleArn::parse("arn:aws-cn:iam::123456789012:role/x").is_ok());
        for bad in [
            "arn:aws:iam::1234:role/x",
            "arn:aws:iam::123456789012:user/x",
            "arn:aws:iam::123456789012:role/",
            "arn:aws:iam::aws:role/x",
            "role",
        ] {
            assert!(RoleArn::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn policy_arns_may_be_aws_managed_and_are_bounded() {
        let arns = policy_arns(
            "arn:aws:iam::aws:policy/AmazonBedrockLimitedAccess, arn:aws:iam::123456789012:policy/x",
        )
        .unwrap();
        assert_eq!(arns.len(), 2);
        assert!(policy_arns("arn:aws:iam::1:role/x").is_err());
        let eleven = ["arn:aws:iam::aws:policy/p"; 11].join(",");
        assert!(policy_arns(&eleven).is_err());
    }

    #[test]
    fn session_names_are_derived_from_pods() {
        assert_eq!(
            SessionName::derive(Some("chat-api-7d9f/x y")).as_str(),
            "bedrock-broker-chat-api-7d9f-x-y"
        );
        let long = SessionName::derive(Some(&"p".repeat(200)));
        assert_eq!(long.as_str().len(), 64);
        assert!(SessionName::parse(long.as_str()).is_ok());
        assert_eq!(
            SessionName::for_pod(Some("team-a"), Some("chat-7d9f-x2")).as_str(),
            "team-a.chat-7d9f-x2"
        );
        let long = SessionName::for_pod(Some(&"n".repeat(40)), Some(&"p".repeat(40)));
        assert_eq!(long.as_str().len(), 64);
        // Two replicas of one Deployment stay apart: the pod's end is kept.
        let ns = "a-very-long-namespace-name-abcdefghij";
        let replica = |suffix: &str| {
            SessionName::for_pod(
                Some(ns),
                Some(&format!(
                    "chat-api-deployment-with-a-long-name-6d8f9c7b5-{suffix}"
                )),
            )
        };
        assert_eq!(
            replica("xk2p1").as_str(),
            "a-very-long-namespac.chat-api-deployment-with-..-6d8f9c7b5-xk2p1"
        );
        assert_ne!(replica("xk2p1"), replica("q8z4m"));
        // A long pod with a short namespace keeps the whole namespace; a
        // long namespace with a short pod keeps the whole pod.
        let short_ns =
            SessionName::for_pod(Some("team-a"), Some(&format!("{}-abcde", "p".repeat(80))));
        assert!(short_ns.as_str().starts_with("team-a.ppp"), "{short_ns:?}");
        assert!(short_ns.as_str().ends_with("ppp-abcde"), "{short_ns:?}");
        let short_pod = SessionName::for_pod(Some(&"n".repeat(63)), Some("chat-7d9f-x2"));
        assert!(
            short_pod.as_str().ends_with(".chat-7d9f-x2"),
            "{short_pod:?}"
        );
        for (ns, pod) in [(63, 253), (1, 253), (63, 1), (21, 63), (64, 0)] {
            let name = SessionName::for_pod(Some(&"n".repeat(ns)), Some(&"p".repeat(pod)));
            assert!(
                SessionName::parse(name.as_str()).is_ok(),
                "{ns} {pod}: {name:?}"
            );
            assert!(name.as_str().len() <= 64);
        }
    }
}
