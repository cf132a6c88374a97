//! Why a credential fetch failed, grouped by what the operator should do.

use std::path::PathBuf;

/// What a failure means for the refresher and for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Network trouble, throttling, STS or IdP 5xx: retry, it will pass.
    Transient,
    /// STS rejected the web identity token (expired, invalid, rejected
    /// claim): re-read the token file and retry; the kubelet may be rotating it.
    Token,
    /// A configuration problem (trust policy, role, policy document) that
    /// retrying does not fix until someone changes IAM, or a node clock so
    /// far off that credentials arrive expired; retried slowly anyway.
    Fatal,
}

impl ErrorClass {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Token => "token",
            Self::Fatal => "fatal",
        }
    }
}

/// The operation that presents the service account token.
pub const WEB_IDENTITY_OPERATION: &str = "AssumeRoleWithWebIdentity";

/// The code of an error answer that carried none (not an STS error document).
pub const UNKNOWN_CODE: &str = "Unknown";

const CLOCK_HINT: &str = "AWS refused the signature as more than 5 minutes away from its time: this node's clock is off; check its NTP synchronisation (bedrock_broker_clock_skew_seconds shows by how much once STS answers)";

/// A failed attempt to obtain credentials. Never carries a secret: the token
/// and the credentials are not part of any variant.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read the web identity token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the web identity token file {path} is empty")]
    EmptyToken { path: PathBuf },
    #[error("STS {operation} failed: {code}: {message}")]
    Service {
        operation: &'static str,
        code: String,
        message: String,
        status: u16,
        class: ErrorClass,
    },
    #[error("STS {operation} did not complete: {detail}")]
    Transport {
        operation: &'static str,
        detail: String,
    },
    #[error("STS {operation} answered without credentials")]
    MissingCredentials { operation: &'static str },
    #[error("the credentials STS issued had expired {expired_s} s before they arrived, by this node's clock")]
    ExpiredOnArrival { expired_s: u64 },
    /// One of aws-config's providers (`profile`, `container`, `imds`)
    /// failed; a profile's role may have called STS on the way.
    #[error("the {kind} credential source failed: {code}: {message}")]
    Provider {
        kind: &'static str,
        code: String,
        message: String,
        class: ErrorClass,
    },
}

impl SourceError {
    /// This error with the web identity token its call presented blanked
    /// (whole, or anything shaped like a JWT): STS never quotes it, but a
    /// gateway or relay in its place may, and the error is logged, served
    /// on `/readyz` and printed.
    pub fn without_token(self, token: &str) -> Self {
        self.with_texts(|text| crate::secret::without_token(text, token))
    }

    /// This error with any piece of `secrets` (8 characters or more) it
    /// quotes blanked: a session token the call was signed with, which a
    /// relay in STS's place may quote, or the fields of an answer the SDK
    /// could not read, which its parser's message may quote.
    pub fn without_secrets(self, secrets: &[&str]) -> Self {
        self.with_texts(|text| crate::secret::without_fragments_of(text, secrets))
    }

    /// This error with `clean` applied to the text that came from the
    /// other side (an STS code and message, a transport error).
    fn with_texts(mut self, clean: impl Fn(&str) -> String) -> Self {
        match &mut self {
            Self::Service { code, message, .. } => {
                *code = clean(code);
                *message = clean(message);
            }
            Self::Transport { detail, .. } => *detail = clean(detail),
            _ => {}
        }
        self
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            // The kubelet writes the token before the container starts and
            // swaps it atomically; a missing file is usually a mount problem
            // that a retry can still outlive (volume not yet projected).
            Self::TokenFile { .. } | Self::EmptyToken { .. } => ErrorClass::Token,
            Self::Service { class, .. } | Self::Provider { class, .. } => *class,
            Self::Transport { .. } => ErrorClass::Transient,
            Self::MissingCredentials { .. } => ErrorClass::Transient,
            // Only the node's clock can fix it; retrying fast cannot.
            Self::ExpiredOnArrival { .. } => ErrorClass::Fatal,
        }
    }

    /// What usually causes this failure and where to look.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::TokenFile { source, .. } => Some(match source.kind() {
                std::io::ErrorKind::PermissionDenied => {
                    "the token is there but this user cannot read it: the kubelet makes a projected token readable by the containers' common runAsUser, or by root only when they differ; give the pod an fsGroup (the group can then read it)"
                }
                std::io::ErrorKind::IsADirectory
                | std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput => {
                    "AWS_WEB_IDENTITY_TOKEN_FILE must name the token file itself (a JWT as text), not its directory or another file"
                }
                _ => "the projected service account token is not mounted where AWS_WEB_IDENTITY_TOKEN_FILE points; check the pod's volumes (the injector or the EKS Pod Identity Webhook adds them)",
            }),
            Self::EmptyToken { .. } => Some("the kubelet has not written the token yet"),
            Self::Service {
                operation: "AssumeRole",
                code,
                ..
            } if code == "AccessDenied" => Some(
                "the chained role's trust policy must allow the role (or, with static keys, the user) before it in the chain to call sts:AssumeRole (with sts:ExternalId matching --chain-external-id if the policy asks for one), and that role's or user's own policy must allow sts:AssumeRole on the chained role",
            ),
            // AWS words it so for a request signed more than 5 minutes
            // away from its own time; no key or region fixes that.
            Self::Service { code, message, .. }
                if code == "SignatureDoesNotMatch" && message.contains("Signature expired") =>
            {
                Some(CLOCK_HINT)
            }
            // Only the web identity call presents the service account
            // token; other calls are signed with temporary credentials.
            Self::Service {
                operation, code, ..
            } if matches!(code.as_str(), "ExpiredTokenException" | "ExpiredToken")
                && *operation != WEB_IDENTITY_OPERATION =>
            {
                Some(
                    "the temporary credentials this call was signed with expired: with static keys, AWS_SESSION_TOKEN is past its expiry (get new ones); in a role chain, the credentials of the hop before ran out",
                )
            }
            Self::Service { code, status, .. } if code == UNKNOWN_CODE => Some(if *status == 200 {
                "the answer held no credentials STS would send: something other than STS answered (an egress or HTTPS proxy, a captive page) or AWS_ENDPOINT_URL_STS points elsewhere"
            } else {
                "the answer carried no STS error code: something other than STS answered (an egress or HTTPS proxy, a firewall page) or AWS_ENDPOINT_URL_STS points elsewhere"
            }),
            Self::Service { code, status, .. } => match code.as_str() {
                "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => Some(
                    "STS refused the call as over the account's request rate, which every caller in the account shares (this pod's refreshes are few): the refresher waits out its backoff; look for what else calls STS so often",
                ),
                _ if *status >= 500 => Some(
                    "STS failed on its side; usually transient, and the refresher retries with backoff (credentials still held and unexpired stay in use meanwhile)",
                ),
                "InvalidIdentityToken" => Some(
                    "STS could not validate the token: the cluster's OIDC issuer must be registered as an IAM OIDC identity provider in the role's account, with the token's audience (normally sts.amazonaws.com) in its client ID list",
                ),
                "ExpiredTokenException" | "ExpiredToken" => Some(
                    "the service account token expired; the kubelet rotates it at 80% of its lifetime, so check the kubelet and the token volume's expirationSeconds",
                ),
                "IDPRejectedClaim" => Some("the identity provider rejected the token's claims"),
                "AccessDenied" => Some(
                    "the role's trust policy does not allow this service account: its Principal must be the cluster's OIDC provider ARN and its Condition must match <issuer>:sub = system:serviceaccount:<namespace>:<serviceaccount> and <issuer>:aud = sts.amazonaws.com",
                ),
                "IDPCommunicationError" => Some(
                    "STS could not reach the OIDC issuer's discovery document; usually transient",
                ),
                "RegionDisabledException" => Some(
                    "STS is not activated in this region for the account: an administrator activates the region in the IAM console's account settings (Security Token Service), or AWS_ENDPOINT_URL_STS names an activated region's endpoint",
                ),
                "ValidationError" if message_mentions(self, "DurationSeconds") => Some(
                    "--session-duration (BEDROCK_BROKER_SESSION_DURATION) asks for longer than the role's maximum session duration (1 hour unless raised in IAM; a chained role gets 1 hour at most): lower it, or raise the role's MaxSessionDuration",
                ),
                "ValidationError" => Some("STS rejected a parameter; check AWS_ROLE_ARN and AWS_ROLE_SESSION_NAME"),
                "MalformedPolicyDocument" => Some(
                    "STS refused the session policy: --session-policy (BEDROCK_BROKER_SESSION_POLICY) must be an IAM policy document STS accepts (the message says what it found)",
                ),
                "PackedPolicyTooLarge" => Some(
                    "the session policies (--session-policy, --session-policy-arns) are over STS's packed size limit: shorten the inline policy or name fewer managed policies",
                ),
                "InvalidClientTokenId" => Some(
                    "the access key (or, for temporary credentials, its session token) is not valid",
                ),
                "SignatureDoesNotMatch" => Some(
                    "the secret key does not match the access key, or the region signed for (AWS_REGION) is not the STS endpoint's",
                ),
                _ => None,
            },
            // hyper-util's words for a CONNECT that failed.
            Self::Transport { detail, .. } if detail.contains("tunnel error") => Some(
                "the egress proxy (HTTPS_PROXY, https_proxy or --https-proxy) did not open a tunnel to STS: \"proxy authorization required\" is a 407 (credentials in its URL, or the pod's address not admitted), \"unsuccessful\" another refusal (its allow list lacks the STS host, or the host belongs in NO_PROXY), \"failed to create underlying connection\" an unreachable proxy, \"unexpected end of file\" a proxy that closed the connection",
            ),
            // rustls's words for a certificate it does not accept (0.23:
            // "certificate not valid for name ...", "certificate expired:
            // ...", "certificate not valid yet: ...").
            Self::Transport { detail, .. } if detail.contains("not valid for name") => Some(
                "STS's TLS certificate is not for the host asked: AWS_ENDPOINT_URL_STS names a host (or an IP address) the certificate does not list",
            ),
            Self::Transport { detail, .. }
                if detail.contains("certificate expired") || detail.contains("not valid yet") =>
            {
                Some(
                    "STS's TLS certificate is outside its validity dates by this node's clock: check its NTP synchronisation, or the endpoint's certificate",
                )
            }
            Self::Transport { detail, .. } if detail.contains("invalid peer certificate") => Some(
                "STS's TLS certificate is not trusted: behind a TLS-inspecting proxy, or with a private STS endpoint, its CA belongs in AWS_CA_BUNDLE (or BEDROCK_BROKER_CA_BUNDLE_PEM; the webhook's --sidecar-ca-bundle for injected sidecars)",
            ),
            // http-body-util's words for an answer past the 1 MiB read.
            Self::Transport { detail, .. } if detail.contains("length limit exceeded") => Some(
                "the answer was larger than the 1 MiB read of a credential answer, which STS never sends: something other than STS answered (an egress or HTTPS proxy, a captive page) or AWS_ENDPOINT_URL_STS points elsewhere",
            ),
            // The SDK's words when --sts-timeout ran out.
            Self::Transport { detail, .. } if detail.contains("timeout") => Some(
                "STS did not answer within --sts-timeout (BEDROCK_BROKER_STS_TIMEOUT): packets dropped on the way (egress policy, a firewall, a proxy the sidecar is not told of) or a slow endpoint",
            ),
            Self::Transport { .. } => Some(
                "STS could not be reached; check DNS, egress network policy, proxies and AWS_ENDPOINT_URL_STS",
            ),
            Self::MissingCredentials { .. } => Some(
                "the answer held no complete credentials, which STS never sends: something other than STS answered (an egress or HTTPS proxy) or AWS_ENDPOINT_URL_STS points elsewhere",
            ),
            Self::ExpiredOnArrival { .. } => Some(
                "this node's clock is probably ahead of AWS's: check its NTP synchronisation; if bedrock_broker_clock_skew_seconds is near 0 where STS's answers measure it (web identity, a chained role), the clocks agree and the source itself issued credentials already expired",
            ),
            Self::Provider { kind: "imds", .. } => Some(
                "the EC2 instance metadata service did not give the node role's credentials: it may be disabled for the instance, or (from a container) need the instance's metadata hop limit at 2 or more, or be blocked by an egress policy (169.254.169.254); the message says which",
            ),
            Self::Provider {
                kind: "container", ..
            } => Some(
                "the container credentials endpoint (AWS_CONTAINER_CREDENTIALS_FULL_URI: the EKS Pod Identity agent, or ECS) did not give credentials: aws-config takes only loopback, the Pod Identity agent's and ECS's addresses, or https; otherwise check that the agent runs on the node and the pod's association",
            ),
            Self::Provider { .. } => Some(
                "the shared config profile (AWS_PROFILE, AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE) could not give credentials: the message says which step failed",
            ),
        }
    }

    /// STS refused the call because the account is over its request rate.
    pub fn is_throttling(&self) -> bool {
        match self {
            Self::Service { code, status, .. } => {
                matches!(
                    code.as_str(),
                    "Throttling" | "ThrottlingException" | "RequestLimitExceeded"
                ) || *status == 429
            }
            _ => false,
        }
    }

    /// The STS error code, or a short label for failures that have none.
    pub fn code(&self) -> &str {
        match self {
            Self::TokenFile { .. } => "TokenFileUnreadable",
            Self::EmptyToken { .. } => "TokenFileEmpty",
            Self::Service { code, .. } => code,
            Self::Transport { .. } => "TransportError",
            Self::MissingCredentials { .. } => "MissingCredentials",
            Self::ExpiredOnArrival { .. } => "CredentialsExpiredOnArrival",
            Self::Provider { code, .. } => code,
        }
    }
}

/// Whether STS's message says `word`: some codes cover several causes.
fn message_mentions(e: &SourceError, word: &str) -> bool {
    matches!(e, SourceError::Service { message, .. } if message.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_what_the_sidecar_asked_for_name_its_flags() {
        let web = WEB_IDENTITY_OPERATION;
        for (e, says) in [
            (
                service(web, "ValidationError", "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.", 400),
                "--session-duration",
            ),
            (service(web, "ValidationError", "1 validation error detected: roleSessionName", 400), "AWS_ROLE_SESSION_NAME"),
            (service(web, "MalformedPolicyDocument", "Syntax errors in policy.", 400), "--session-policy"),
            (service(web, "PackedPolicyTooLarge", "Packed policy consumes 112% of allotted space", 400), "--session-policy-arns"),
            (service(web, "RegionDisabledException", "STS is not activated in this region", 403), "account settings"),
            (
                SourceError::Transport {
                    operation: web,
                    detail: "response error: length limit exceeded".to_owned(),
                },
                "1 MiB",
            ),
        ] {
            let hint = e.hint().unwrap_or_default();
            assert!(hint.contains(says), "{e}: {hint}");
        }
    }

    fn service(operation: &'static str, code: &str, message: &str, status: u16) -> SourceError {
        SourceError::Service {
            operation,
            code: code.to_owned(),
            message: message.to_owned(),
            status,
            class: crate::credentials::sts::classify_code(code, status),
        }
    }

    #[test]
    fn an_expired_signature_points_at_the_clock_not_the_keys() {
        let expired = service(
            "AssumeRole",
            "SignatureDoesNotMatch",
            "Signature expired: 20261205T080000Z is now earlier than 20261205T080100Z (20261205T080600Z - 5 min.)",
            403,
        );
        assert!(
            expired.hint().is_some_and(|h| h.contains("clock")),
            "{:?}",
            expired.hint()
        );
        let wrong = service(
            "GetCallerIdentity",
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match",
            403,
        );
        assert!(
            wrong.hint().is_some_and(|h| h.contains("secret key")),
            "{:?}",
            wrong.hint()
        );
    }

    #[test]
    fn an_expired_token_is_the_service_accounts_only_on_the_web_identity_call() {
        let web = service(
            WEB_IDENTITY_OPERATION,
            "ExpiredTokenException",
            "Token expired",
            400,
        );
        assert!(web
            .hint()
            .is_some_and(|h| h.contains("service account token")));
        for operation in ["AssumeRole", "GetCallerIdentity"] {
            let signed = service(
                operation,
                "ExpiredToken",
                "The security token included in the request is expired",
                400,
            );
            let hint = signed.hint().unwrap_or_default();
            assert!(
                hint.contains("AWS_SESSION_TOKEN") && !hint.contains("service account"),
                "{operation}: {hint}"
            );
        }
    }

    #[test]
    fn certificate_errors_are_told_apart_in_rustls_words() {
        let hint = |detail: &str| {
            SourceError::Transport {
                operation: WEB_IDENTITY_OPERATION,
                detail: detail.to_owned(),
            }
            .hint()
            .unwrap_or_default()
        };
        // rustls 0.23's Display of each CertificateError, as it reaches us.
        let name = r#"TLS handshake failed: invalid peer certificate: certificate not valid for name "127.0.0.1"; certificate is only valid for DnsName("sts.example.test")"#;
        assert!(hint(name).contains("not for the host"), "{}", hint(name));
        let issuer = "TLS handshake failed: invalid peer certificate: UnknownIssuer";
        assert!(hint(issuer).contains("AWS_CA_BUNDLE"));
        let expired = "TLS handshake failed: invalid peer certificate: certificate expired: verification time 1800000000 (UNIX), but certificate is not valid after 1700000000 (100000000 seconds ago)";
        assert!(hint(expired).contains("NTP"));
    }

    #[test]
    fn throttling_and_server_errors_have_hints_too() {
        for (code, status, says) in [
            ("Throttling", 400, "request rate"),
            ("RequestLimitExceeded", 400, "request rate"),
            ("InternalFailure", 500, "transient"),
            ("ServiceUnavailable", 503, "transient"),
        ] {
            let e = service(WEB_IDENTITY_OPERATION, code, "m", status);
            assert!(
                e.hint().is_some_and(|h| h.contains(says)),
                "{code}: {:?}",
                e.hint()
            );
        }
    }

    #[test]
    fn a_token_file_error_is_explained_by_its_kind() {
        use std::io::{Error, ErrorKind};
        let hint = |kind: ErrorKind| {
            SourceError::TokenFile {
                path: "/var/run/secrets/token".into(),
                source: Error::from(kind),
            }
            .hint()
            .unwrap_or_default()
        };
        // As root the test cannot be refused a file: the kind stands in.
        assert!(hint(ErrorKind::PermissionDenied).contains("fsGroup"));
        assert!(hint(ErrorKind::IsADirectory).contains("token file itself"));
        assert!(hint(ErrorKind::NotFound).contains("not mounted"));
    }

    #[test]
    fn answers_that_are_not_from_sts_say_so() {
        for status in [403, 502, 200] {
            let e = service(WEB_IDENTITY_OPERATION, UNKNOWN_CODE, "no message", status);
            assert!(
                e.hint().is_some_and(|h| h.contains("AWS_ENDPOINT_URL_STS")),
                "{status}"
            );
        }
        let missing = SourceError::MissingCredentials {
            operation: WEB_IDENTITY_OPERATION,
        };
        assert!(missing.hint().is_some_and(|h| h.contains("proxy")));
    }

    #[test]
    fn aws_config_sources_are_named_not_taken_for_sts() {
        for (kind, names) in [
            ("imds", "hop limit"),
            ("container", "Pod Identity agent"),
            ("profile", "AWS_PROFILE"),
        ] {
            let e = SourceError::Provider {
                kind,
                code: "ProviderError".to_owned(),
                message: "request forbidden".to_owned(),
                class: ErrorClass::Transient,
            };
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("the {kind} credential source failed")),
                "{text}"
            );
            assert!(!text.contains("STS"), "{text}");
            assert!(e.hint().is_some_and(|h| h.contains(names)), "{kind}");
            assert_eq!(e.code(), "ProviderError");
            assert_eq!(e.class(), ErrorClass::Transient);
        }
    }
}
