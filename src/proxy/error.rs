//! Errors the broker itself answers, in the dialect of the client's SDK.
//!
//! Under `/openai/` (and `/mantle/`) the body is OpenAI-shaped so the
//! OpenAI SDKs raise a proper `APIError`; elsewhere it is AWS-shaped
//! (`{"message"}` plus `x-amzn-ErrorType`) so boto3 and the AWS SDKs surface
//! the code. Every broker error carries `x-bedrock-broker-error: <code>` so
//! it is never mistaken for an answer from Bedrock. Messages never contain a
//! token, key or signature.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use super::headers::{BROKER_ERROR, X_AMZN_ERRORTYPE};

/// Which error shape the client understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Aws,
}

/// One broker error code: its status and when it is answered. The list is
/// the reference table in `docs/proxy.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code {
    pub name: &'static str,
    pub status: u16,
    pub when: &'static str,
}

macro_rules! codes {
    ($($id:ident = $name:literal, $status:literal, $when:literal;)*) => {
        $(pub const $id: Code = Code { name: $name, status: $status, when: $when };)*
        /// Every code the broker answers with.
        pub const CODES: &[Code] = &[$($id),*];
    };
}

codes! {
    NO_CREDENTIALS = "no_credentials", 503, "no credentials obtained yet, with `Retry-After` (or none configured for SigV4, without)";
    CREDENTIALS_EXPIRED = "credentials_expired", 503, "held credentials expired and refreshing keeps failing (comes with `Retry-After`); or the configured short-term API key is past the expiry it carries (without: nothing renews it)";
    INVALID_PROVIDER_DATA = "invalid_provider_data", 400, "malformed `x-llamastack-provider-data`";
    BODY_TOO_LARGE = "body_too_large", 413, "body over `--max-body-bytes`";
    ABSOLUTE_FORM_REFUSED = "absolute_form_refused", 400, "the client used the sidecar as an HTTP proxy (`GET http://host/...`)";
    CONNECT_REFUSED = "connect_refused", 405, "`CONNECT`";
    INVALID_PATH = "invalid_path", 400, "a `.` or `..` path segment (also percent-encoded): it would be signed differently from what it means; or a byte past ASCII in the path (percent-encode it)";
    BODY_READ_FAILED = "body_read_failed", 400, "the request body is malformed (a bad chunk of a chunked body)";
    UPSTREAM_UNREACHABLE = "upstream_unreachable", 502, "connect or TLS failure to Bedrock; or, the message says which, its connection ended before it answered (Bedrock may have processed the request), or it refused the request unprocessed (HTTP/2 REFUSED_STREAM or GOAWAY): a buffered request only the second time (it is sent once more), a bidirectional stream the first";
    ROUTE_NOT_CONFIGURED = "route_not_configured", 404, "`/agent-runtime/` or `/mantle/` without a region or endpoint";
    UPSTREAM_TIMEOUT = "upstream_timeout", 504, "connect timeout, no response headers within `--response-header-timeout`, or an HTTP/2 connection to Bedrock that stopped answering PINGs (its path died; Bedrock may have processed the request)";
    API_KEY_UNSUPPORTED = "api_key_unsupported", 400, "a Bedrock API key used where AWS accepts none: InvokeModelWithBidirectionalStream, `/agent-runtime/`";
    INVALID_EVENT_STREAM = "invalid_event_stream", 400, "a bidirectional stream's client messages are malformed, too large, or continue after the end message (before Bedrock answered)";
    CLIENT_CLOSED = "client_closed", 499, "the client went away in the middle of its request body (its connection closed or reset, or its HTTP/2 stream cancelled), or an HTTP/1.1 client hung up a bidirectional stream before Bedrock answered (recorded in metrics; the client is gone)";
    SIGNING_FAILED = "signing_failed", 500, "aws-sigv4 refused to sign (should not happen)";
    INVALID_HOST = "invalid_host", 400, "a request without a `Host` header (HTTP/1.0 too: nothing then says it is for this pod), an HTTP/1 request with more than one (RFC 9112 §3.2), or a `Host` that names no host (empty, or a list)";
    TRANSFER_CODING_UNSUPPORTED = "transfer_coding_unsupported", 501, "a request `Transfer-Encoding` with a coding other than `chunked` (`gzip, chunked`; `identity` and empty members are fine), or `chunked` twice: its body would go upstream still encoded, as if plain";
    HOST_NOT_ALLOWED = "host_not_allowed", 403, "the `Host` is not a loopback name or address, nor in `--allowed-hosts` (an SSRF or DNS-rebinding attempt, or a missing `--allowed-hosts` entry); or a browser sent the request for a web page (`Origin`) whose host is neither";
    PROXY_TOKEN_REQUIRED = "proxy_token_required", 401, "`--proxy-token` is set and the request carries no (or the wrong) token";
    BODY_READ_TIMEOUT = "body_read_timeout", 408, "the request body stalled for `--body-read-timeout`";
    BODY_TOO_SLOW = "body_too_slow", 408, "the request body arrived slower on average than `--body-min-rate` once `--body-min-rate-grace` had passed";
    OVERLOADED = "overloaded", 503, "`--max-requests` are in flight, or `--request-body-budget` had no room within `--body-budget-wait`; comes with `Retry-After`";
    UPSTREAM_PROTOCOL_ERROR = "upstream_protocol_error", 502, "the upstream answered with something the proxy does not forward (a protocol switch)";
    SIGNATURE_ERROR_WITHHELD = "signature_error_withheld", 403, "Bedrock answered a signature error whose body could not be read whole to blank the session token it quotes (over 64 KiB, stalled, corrupt, or in a coding other than gzip and deflate); Bedrock's status (400 or 403) and `x-amzn-ErrorType` are kept";
    ERROR_BODY_WITHHELD = "error_body_withheld", 502, "the upstream answered an error to a request that carried the session token or the configured API key, and its body could not be read whole to blank them (over 64 KiB or said to be, stalled, corrupt, or in a coding other than gzip and deflate); sent with the upstream's status (not 502) and `x-amzn-ErrorType`";
}

/// Why the broker answers a request itself.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("bedrock-broker cannot sign the request: no credentials have been obtained yet")]
    NotYetObtained,
    #[error("no SigV4 credentials are configured (API-key mode without a region)")]
    NoSigV4,
    #[error("bedrock-broker cannot sign the request: the held credentials have expired and refreshing them keeps failing")]
    CredentialsExpired,
    #[error("bedrock-broker will not send the request: {}", crate::credentials::api_key_expired(*.0))]
    ApiKeyExpired(SystemTime),
    #[error("request body exceeds the proxy's limit of {limit} bytes (--max-body-bytes)")]
    BodyTooLarge { limit: usize },
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("{0}")]
    InvalidPath(Cow<'static, str>),
    #[error("absolute-form request targets are refused: point the client's base URL at bedrock-broker instead of using it as an HTTP proxy")]
    AbsoluteForm,
    #[error("CONNECT is not supported: bedrock-broker is not a forward proxy; send plain HTTP requests to it")]
    Connect,
    #[error("{0}")]
    ProviderData(Cow<'static, str>),
    #[error("Amazon Bedrock API keys cannot be used with {what}; {}", if *.configured {
        "configure SigV4 credentials for bedrock-broker instead (web identity, static keys or the credential chain)"
    } else {
        "send the request without the API key, so bedrock-broker signs it with SigV4"
    })]
    ApiKeyUnsupported {
        what: &'static str,
        configured: bool,
    },
    #[error(
        "{prefix} needs an endpoint: set a region or --agent-runtime-upstream / --mantle-upstream"
    )]
    RouteNotConfigured { prefix: &'static str },
    #[error("Bedrock sent no response headers within {} (--response-header-timeout)", humantime::format_duration(*.0))]
    NoResponseHeaders(Duration),
    #[error("Bedrock did not answer in time: {0}")]
    UpstreamTimeout(String),
    #[error("could not reach Bedrock: {0}")]
    UpstreamUnreachable(String),
    #[error(
        "Bedrock's connection ended before it answered; it may have processed the request: {0}"
    )]
    UpstreamLost(String),
    #[error("Bedrock refused the request before processing it: {0}")]
    UpstreamRefused(String),
    /// Bedrock answered (and may have processed the request), with a head
    /// no Bedrock sends: a proxy's or an endpoint's.
    #[error("Bedrock's answer could not be read: its head is past what bedrock-broker reads (over 16 KiB, or over 100 header lines): {0}")]
    UpstreamHeadTooLarge(String),
    #[error("{0}")]
    InvalidEventStream(String),
    #[error("{0}")]
    ClientClosed(String),
    #[error("{0}")]
    SigningFailed(String),
    #[error("{0}")]
    InvalidHost(&'static str),
    #[error("the request's Transfer-Encoding is not plain chunked (another coding, or chunked twice): bedrock-broker undoes chunked once and no other transfer coding (send the body plain, or with Content-Encoding)")]
    TransferCoding,
    #[error("bedrock-broker answers only requests for its own pod: Host {0:?} is not a loopback name or address; add it to --allowed-hosts if it is yours")]
    HostNotAllowed(String),
    #[error("bedrock-broker answers only requests for its own pod: a web page at Origin {0:?} may not call it; add the page's host to --allowed-hosts if it is yours")]
    OriginNotAllowed(String),
    #[error("this bedrock-broker requires its proxy token (Authorization: Bearer <token>, or x-bedrock-broker-token)")]
    ProxyTokenRequired,
    #[error("the x-bedrock-broker-token this request carries does not match this bedrock-broker's proxy token (--proxy-token)")]
    ProxyTokenMismatch,
    #[error("the request body stalled for {} (--body-read-timeout)", humantime::format_duration(*.0))]
    BodyReadTimeout(Duration),
    #[error("the request body brought {received} bytes in {}: less than {bytes_per_second} bytes a second on average after the grace (--body-min-rate, --body-min-rate-grace)", humantime::format_duration(*within))]
    BodyTooSlow {
        bytes_per_second: u64,
        received: u64,
        within: Duration,
    },
    #[error("bedrock-broker is busy ({0}); retry shortly")]
    Overloaded(&'static str),
    #[error("{0}")]
    UpstreamProtocol(String),
    #[error("Bedrock answered a signature error; bedrock-broker withheld its body because it could not be read whole (too large, too slow, or in an unreadable encoding) to remove the credentials it quotes")]
    SignatureErrorWithheld,
    #[error("the upstream answered an error; bedrock-broker withheld its body because it could not be read whole (too large, too slow, or in an unreadable encoding) to remove the credentials it may quote")]
    ErrorBodyWithheld,
}

impl ProxyError {
    pub fn code(&self) -> &'static Code {
        match self {
            Self::NotYetObtained | Self::NoSigV4 => &NO_CREDENTIALS,
            Self::CredentialsExpired | Self::ApiKeyExpired(_) => &CREDENTIALS_EXPIRED,
            Self::BodyTooLarge { .. } => &BODY_TOO_LARGE,
            Self::BodyRead(_) => &BODY_READ_FAILED,
            Self::InvalidPath(_) => &INVALID_PATH,
            Self::AbsoluteForm => &ABSOLUTE_FORM_REFUSED,
            Self::Connect => &CONNECT_REFUSED,
            Self::ProviderData(_) => &INVALID_PROVIDER_DATA,
            Self::ApiKeyUnsupported { .. } => &API_KEY_UNSUPPORTED,
            Self::RouteNotConfigured { .. } => &ROUTE_NOT_CONFIGURED,
            Self::NoResponseHeaders(_) | Self::UpstreamTimeout(_) => &UPSTREAM_TIMEOUT,
            Self::UpstreamUnreachable(_)
            | Self::UpstreamLost(_)
            | Self::UpstreamRefused(_)
            | Self::UpstreamHeadTooLarge(_) => &UPSTREAM_UNREACHABLE,
            Self::InvalidEventStream(_) => &INVALID_EVENT_STREAM,
            Self::ClientClosed(_) => &CLIENT_CLOSED,
            Self::SigningFailed(_) => &SIGNING_FAILED,
            Self::InvalidHost(_) => &INVALID_HOST,
            Self::TransferCoding => &TRANSFER_CODING_UNSUPPORTED,
            Self::HostNotAllowed(_) | Self::OriginNotAllowed(_) => &HOST_NOT_ALLOWED,
            Self::ProxyTokenRequired | Self::ProxyTokenMismatch => &PROXY_TOKEN_REQUIRED,
            Self::BodyReadTimeout(_) => &BODY_READ_TIMEOUT,
            Self::BodyTooSlow { .. } => &BODY_TOO_SLOW,
            Self::Overloaded(_) => &OVERLOADED,
            Self::UpstreamProtocol(_) => &UPSTREAM_PROTOCOL_ERROR,
            Self::SignatureErrorWithheld => &SIGNATURE_ERROR_WITHHELD,
            Self::ErrorBodyWithheld => &ERROR_BODY_WITHHELD,
        }
    }

    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code().status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// AWS error type for `x-amzn-ErrorType`.
    fn aws_type(&self) -> &'static str {
        match self.status() {
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailableException",
            StatusCode::GATEWAY_TIMEOUT => "ModelTimeoutException",
            s if s.is_server_error() => "InternalServerException",
            _ => "ValidationException",
        }
    }

    /// OpenAI error `type`.
    fn openai_type(&self) -> &'static str {
        if self.status().is_server_error() {
            "api_error"
        } else {
            "invalid_request_error"
        }
    }

    pub fn body(&self, dialect: Dialect) -> Bytes {
        let message = self.to_string();
        let value = match dialect {
            Dialect::OpenAi => serde_json::json!({
                "error": {
                    "message": message,
                    "type": self.openai_type(),
                    "code": self.code().name,
                }
            }),
            Dialect::Aws => serde_json::json!({ "message": message }),
        };
        Bytes::from(value.to_string())
    }

    /// The full HTTP response, for any body type that can hold bytes.
    pub fn into_response<B: From<Bytes>>(self, dialect: Dialect) -> Response<B> {
        let mut response = Response::new(B::from(self.body(dialect)));
        *response.status_mut() = self.status();
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(BROKER_ERROR, HeaderValue::from_static(self.code().name));
        if dialect == Dialect::Aws {
            h.insert(X_AMZN_ERRORTYPE, HeaderValue::from_static(self.aws_type()));
        }
        // Busy for a moment, or credentials still on their way (a cold
        // start, STS failing for now): SDKs that honour it wait and retry
        // instead of giving up on their first quick backoff. Not for a
        // configuration without SigV4, which no retry mends.
        if matches!(
            self,
            Self::Overloaded(_) | Self::NotYetObtained | Self::CredentialsExpired
        ) {
            h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The error-code table of `docs/proxy.md` (generated).
pub fn reference_table() -> String {
    let mut out = String::from("| code | status | when |\n| --- | --: | --- |\n");
    for c in CODES {
        out.push_str(&format!("| `{}` | {} | {} |\n", c.name, c.status, c.when));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_dialect_has_the_openai_error_shape() {
        let r: Response<Bytes> = ProxyError::NotYetObtained.into_response(Dialect::OpenAi);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["x-bedrock-broker-error"], "no_credentials");
        assert!(r.headers().get("x-amzn-errortype").is_none());
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(
            v["error"]["message"],
            "bedrock-broker cannot sign the request: no credentials have been obtained yet"
        );
        assert_eq!(v["error"]["type"], "api_error");
        assert_eq!(v["error"]["code"], "no_credentials");
        assert_eq!(r.headers()["retry-after"], "1");
        let r: Response<Bytes> = ProxyError::NoSigV4.into_response(Dialect::OpenAi);
        assert!(
            r.headers().get("retry-after").is_none(),
            "no retry mends it"
        );
    }

    #[test]
    fn aws_dialect_has_message_and_error_type() {
        let e = ProxyError::BodyTooLarge { limit: 10 };
        let r: Response<Bytes> = e.into_response(Dialect::Aws);
        assert_eq!(r.status(), 413);
        assert_eq!(r.headers()["x-amzn-errortype"], "ValidationException");
        let v: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"message": "request body exceeds the proxy's limit of 10 bytes (--max-body-bytes)"})
        );
    }

    #[test]
    fn every_error_has_a_listed_code_and_a_valid_status() {
        let all = [
            ProxyError::NotYetObtained,
            ProxyError::NoSigV4,
            ProxyError::CredentialsExpired,
            ProxyError::BodyTooLarge { limit: 1 },
            ProxyError::BodyRead("x".into()),
            ProxyError::InvalidPath("x".into()),
            ProxyError::AbsoluteForm,
            ProxyError::Connect,
            ProxyError::ProviderData("x".into()),
            ProxyError::ApiKeyUnsupported {
                what: "x",
                configured: true,
            },
            ProxyError::RouteNotConfigured { prefix: "/x/" },
            ProxyError::NoResponseHeaders(Duration::from_secs(1)),
            ProxyError::UpstreamTimeout("x".into()),
            ProxyError::UpstreamUnreachable("x".into()),
            ProxyError::InvalidEventStream("x".into()),
            ProxyError::ClientClosed("x".into()),
            ProxyError::SigningFailed("x".into()),
            ProxyError::InvalidHost("x"),
            ProxyError::TransferCoding,
            ProxyError::HostNotAllowed("x".into()),
            ProxyError::OriginNotAllowed("x".into()),
            ProxyError::ProxyTokenRequired,
            ProxyError::ProxyTokenMismatch,
            ProxyError::BodyReadTimeout(Duration::from_secs(1)),
            ProxyError::BodyTooSlow {
                bytes_per_second: 1,
                received: 0,
                within: Duration::from_secs(1),
            },
            ProxyError::Overloaded("x"),
            ProxyError::UpstreamProtocol("x".into()),
            ProxyError::SignatureErrorWithheld,
            ProxyError::ErrorBodyWithheld,
        ];
        let mut used: Vec<&str> = all.iter().map(|e| e.code().name).collect();
        used.sort_unstable();
        used.dedup();
        let mut listed: Vec<&str> = CODES.iter().map(|c| c.name).collect();
        listed.sort_unstable();
        assert_eq!(used, listed, "every code is used and listed once");
        for e in &all {
            assert_eq!(e.status().as_u16(), e.code().status);
        }
    }
}
