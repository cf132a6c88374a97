//! Which credentials a request goes out with.
//!
//! In order of precedence:
//! 1. a bearer token in llama-stack's `x-llamastack-provider-data` header;
//! 2. the client's own `Authorization: Bearer` when it is a Bedrock API key
//!    (or its `x-api-key`, where Anthropic's clients put a key);
//! 3. the configured API key (`AWS_BEARER_TOKEN_BEDROCK`);
//! 4. SigV4 with the credentials in the cell.

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};

use super::classify::{Classified, Prefix};
use super::error::ProxyError;
use super::headers::{PROVIDER_DATA, X_API_KEY};
use super::operation::Operation;
use crate::credentials::{bearer_header, ApiKeyKind};

/// The auth mode, as a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Decided before auth could be looked at (refused request).
    None,
    ProviderData,
    ClientApiKey,
    ConfiguredApiKey,
    SigV4,
}

impl AuthMode {
    /// How many modes there are, for per-mode arrays.
    pub const COUNT: usize = 5;

    /// Position among the modes, for per-mode arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the request goes out with a Bedrock API key (bearer token).
    pub fn is_api_key(self) -> bool {
        matches!(
            self,
            Self::ProviderData | Self::ClientApiKey | Self::ConfiguredApiKey
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ProviderData => "provider_data",
            Self::ClientApiKey => "api_key_passthrough",
            Self::ConfiguredApiKey => "api_key",
            Self::SigV4 => "sigv4",
        }
    }
}

/// How to authenticate one request.
#[derive(Debug)]
pub enum Decision {
    /// Send this `Authorization` value (already marked sensitive).
    Bearer(AuthMode, HeaderValue),
    /// Sign with SigV4.
    SigV4,
}

impl Decision {
    pub fn mode(&self) -> AuthMode {
        match self {
            Self::Bearer(mode, _) => *mode,
            Self::SigV4 => AuthMode::SigV4,
        }
    }
}

const PROVIDER_DATA_KEY: &str = "aws_bearer_token_bedrock";

fn provider_data_error(message: String) -> ProxyError {
    ProxyError::ProviderData(message.into())
}

/// Refuses an API key where Bedrock accepts none (AWS's API keys reference:
/// InvokeModelWithBidirectionalStream and the Agents runtime), so the client
/// gets a clear answer instead of Bedrock's 403.
pub fn refuse_unsupported_api_key(class: &Classified, mode: AuthMode) -> Result<(), ProxyError> {
    if !mode.is_api_key() {
        return Ok(());
    }
    let what = if class.operation == Operation::InvokeBidirectionalStream {
        "InvokeModelWithBidirectionalStream"
    } else if class.prefix == Prefix::AgentRuntime {
        "the Agents runtime (/agent-runtime/)"
    } else {
        return Ok(());
    };
    Err(ProxyError::ApiKeyUnsupported {
        what,
        configured: mode == AuthMode::ConfiguredApiKey,
    })
}

/// Whether an `Authorization` value is a Bedrock API key (`bedrock-api-key-`
/// for short-term keys, `ABSK` for long-term keys).
fn is_bedrock_api_key(value: &HeaderValue) -> bool {
    let Ok(v) = value.to_str() else { return false };
    let Some((scheme, token)) = v.split_once(' ') else {
        return false;
    };
    let token = token.trim();
    scheme.eq_ignore_ascii_case("bearer") && ApiKeyKind::of(token) != ApiKeyKind::Unrecognised
}

/// The token in a provider-data header, if it carries a usable one.
fn provider_data_token(value: &HeaderValue) -> Result<Option<HeaderValue>, ProxyError> {
    // A client that always sends the header, empty or `null` when it has
    // no token, asks for no override.
    if value.as_bytes().trim_ascii().is_empty() {
        return Ok(None);
    }
    let data: serde_json::Value = serde_json::from_slice(value.as_bytes()).map_err(|e| {
        provider_data_error(format!(
            "x-llamastack-provider-data is not valid JSON ({e})"
        ))
    })?;
    if data.is_null() {
        return Ok(None);
    }
    let object = data.as_object().ok_or_else(|| {
        provider_data_error("x-llamastack-provider-data must be a JSON object".to_owned())
    })?;
    match object.get(PROVIDER_DATA_KEY) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => bearer_header(s.trim()).map(Some).ok_or_else(|| {
            provider_data_error(format!(
                "{PROVIDER_DATA_KEY} in x-llamastack-provider-data contains characters not allowed in a header"
            ))
        }),
        Some(_) => Err(provider_data_error(format!(
            "{PROVIDER_DATA_KEY} in x-llamastack-provider-data must be a string or null"
        ))),
    }
}

/// Decides how to authenticate a request from its headers (read before they
/// are stripped) and the configured API key.
pub fn decide(
    headers: &HeaderMap,
    configured: Option<&HeaderValue>,
) -> Result<Decision, ProxyError> {
    if let Some(value) = headers.get(PROVIDER_DATA) {
        if let Some(token) = provider_data_token(value)? {
            return Ok(Decision::Bearer(AuthMode::ProviderData, token));
        }
    }
    if let Some(value) = headers.get(AUTHORIZATION) {
        if is_bedrock_api_key(value) {
            let mut value = value.clone();
            value.set_sensitive(true);
            return Ok(Decision::Bearer(AuthMode::ClientApiKey, value));
        }
    }
    if let Some(key) = headers.get(X_API_KEY).and_then(|v| v.to_str().ok()) {
        let key = key.trim();
        if ApiKeyKind::of(key) != ApiKeyKind::Unrecognised {
            if let Some(value) = bearer_header(key) {
                return Ok(Decision::Bearer(AuthMode::ClientApiKey, value));
            }
        }
    }
    if let Some(value) = configured {
        return Ok(Decision::Bearer(AuthMode::ConfiguredApiKey, value.clone()));
    }
    Ok(Decision::SigV4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderName;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn outcome(pairs: &[(&'static str, &str)], configured: Option<&str>) -> (String, String) {
        let configured = configured.and_then(bearer_header);
        match decide(&headers(pairs), configured.as_ref()) {
            Ok(Decision::Bearer(mode, v)) => {
                (mode.as_str().to_owned(), v.to_str().unwrap().to_owned())
            }
            Ok(Decision::SigV4) => ("sigv4".into(), String::new()),
            Err(e) => (
                format!("error:{}", e.status().as_u16()),
                e.code().name.to_owned(),
            ),
        }
    }

    #[test]
    fn precedence_table() {
        let pd = "x-llamastack-provider-data";
        type Case<'a> = (
            &'a [(&'static str, &'a str)],
            Option<&'a str>,
            (&'a str, &'a str),
        );
        let cases: &[Case] = &[
            (&[], None, ("sigv4", "")),
            (&[], Some("ABSKconf"), ("api_key", "Bearer ABSKconf")),
            (&[("authorization", "Bearer sk-dummy")], None, ("sigv4", "")),
            (
                &[("authorization", "Bearer sk-dummy")],
                Some("ABSKconf"),
                ("api_key", "Bearer ABSKconf"),
            ),
            (
                &[(
                    "authorization",
                    "AWS4-HMAC-SHA256 Credential=AKID/x, SignedHeaders=host, Signature=ab",
                )],
                None,
                ("sigv4", ""),
            ),
            (
                &[("authorization", "Bearer bedrock-api-key-abc")],
                Some("ABSKconf"),
                ("api_key_passthrough", "Bearer bedrock-api-key-abc"),
            ),
            (
                &[("authorization", "bearer ABSKclient")],
                None,
                ("api_key_passthrough", "bearer ABSKclient"),
            ),
            // Anthropic's clients put the key in `x-api-key`.
            (
                &[("x-api-key", " ABSKanthropic ")],
                Some("ABSKconf"),
                ("api_key_passthrough", "Bearer ABSKanthropic"),
            ),
            (&[("x-api-key", "sk-ant-dummy")], None, ("sigv4", "")),
            (
                &[
                    ("authorization", "Bearer bedrock-api-key-abc"),
                    ("x-api-key", "ABSKanthropic"),
                ],
                None,
                ("api_key_passthrough", "Bearer bedrock-api-key-abc"),
            ),
            (
                &[
                    (
                        pd,
                        r#"{"aws_bearer_token_bedrock": " bedrock-api-key-pd "}"#,
                    ),
                    ("authorization", "Bearer ABSKclient"),
                ],
                Some("ABSKconf"),
                ("provider_data", "Bearer bedrock-api-key-pd"),
            ),
            (
                &[(pd, r#"{"aws_bearer_token_bedrock": ""}"#)],
                None,
                ("sigv4", ""),
            ),
            (
                &[(pd, r#"{"aws_bearer_token_bedrock": "   "}"#)],
                Some("ABSKconf"),
                ("api_key", "Bearer ABSKconf"),
            ),
            (
                &[(pd, r#"{"aws_bearer_token_bedrock": null}"#)],
                None,
                ("sigv4", ""),
            ),
            // An empty, blank or null header is no override either.
            (&[(pd, "")], None, ("sigv4", "")),
            (
                &[(pd, "   ")],
                Some("ABSKconf"),
                ("api_key", "Bearer ABSKconf"),
            ),
            (&[(pd, "null")], None, ("sigv4", "")),
            (&[(pd, " null ")], None, ("sigv4", "")),
            (
                &[(pd, r#"{"other_provider_key": "x"}"#)],
                None,
                ("sigv4", ""),
            ),
            (
                &[(pd, r#"{not json"#)],
                None,
                ("error:400", "invalid_provider_data"),
            ),
            (
                &[(pd, r#"["a"]"#)],
                None,
                ("error:400", "invalid_provider_data"),
            ),
            (
                &[(pd, r#"{"aws_bearer_token_bedrock": 42}"#)],
                None,
                ("error:400", "invalid_provider_data"),
            ),
        ];
        for (pairs, configured, (mode, value)) in cases {
            assert_eq!(
                outcome(pairs, *configured),
                (mode.to_string(), value.to_string()),
                "{pairs:?} configured={configured:?}"
            );
        }
    }

    #[test]
    fn provider_data_errors_never_echo_the_token() {
        let h = headers(&[(
            "x-llamastack-provider-data",
            r#"{"aws_bearer_token_bedrock": "ABSKsecret", "broken": }"#,
        )]);
        let err = decide(&h, None).unwrap_err();
        assert!(!err.to_string().contains("ABSKsecret"), "{err}");
    }

    #[test]
    fn bearer_values_are_marked_sensitive() {
        let h = headers(&[("authorization", "Bearer ABSKclient")]);
        let Ok(Decision::Bearer(_, v)) = decide(&h, None) else {
            panic!()
        };
        assert!(v.is_sensitive());
        assert!(bearer_header("x").unwrap().is_sensitive());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::Bool),
                any::<i64>().prop_map(serde_json::Value::from),
                "\\PC{0,24}".prop_map(serde_json::Value::String),
                Just(serde_json::Value::String("  bedrock-api-key-x ".into())),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![Just(PROVIDER_DATA_KEY.to_owned()), "[a-z_]{1,8}"],
                        inner,
                        0..4,
                    )
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// Whatever the header holds, the decision is the token it
            /// carries (trimmed, sensitive), a fall-through, or a 400 that
            /// never quotes it.
            #[test]
            fn provider_data_is_used_exactly_when_it_holds_a_token(value in json_value()) {
                let text = value.to_string();
                let Ok(header) = HeaderValue::from_str(&text) else { return Ok(()); };
                let mut h = HeaderMap::new();
                h.insert(PROVIDER_DATA, header);
                let expected = value
                    .as_object()
                    .and_then(|o| o.get(PROVIDER_DATA_KEY))
                    .and_then(|v| v.as_str())
                    .map(str::trim)
                    .filter(|t| !t.is_empty());
                match decide(&h, None) {
                    Ok(Decision::Bearer(AuthMode::ProviderData, v)) => {
                        prop_assert!(v.is_sensitive());
                        let want = expected.map(|t| format!("Bearer {t}"));
                        prop_assert_eq!(Some(v.as_bytes()), want.as_deref().map(str::as_bytes));
                    }
                    Ok(Decision::SigV4) => prop_assert!(expected.is_none()),
                    Ok(other) => prop_assert!(false, "unexpected {other:?}"),
                    Err(e) => {
                        prop_assert_eq!(e.code().name, "invalid_provider_data");
                        if let Some(t) = expected {
                            prop_assert!(!e.to_string().contains(t));
                        }
                    }
                }
            }

            /// Arbitrary bytes never panic.
            #[test]
            fn arbitrary_header_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..128)) {
                if let Ok(header) = HeaderValue::from_bytes(&bytes) {
                    let mut h = HeaderMap::new();
                    h.insert(PROVIDER_DATA, header);
                    let _ = decide(&h, None);
                }
            }
        }
    }
}
