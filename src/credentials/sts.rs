//! The STS client and the classification of its errors.

use std::fmt::Debug;

use aws_credential_types::Credentials;
use aws_sdk_sts::config::{BehaviorVersion, Region as SdkRegion};
use aws_sdk_sts::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_http_client::Connector;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;

use super::error::UNKNOWN_CODE;
use super::CredentialsConfig;
use super::{ErrorClass, SourceError};
use crate::config::aws::{PolicyArn, Region};
use crate::error_text::one_line;
use crate::secret::redact_token_text;

/// An STS client for `region`, honouring `AWS_ENDPOINT_URL_STS` and
/// `AWS_CA_BUNDLE`. SDK retries are off: the refresher owns retrying, so each
/// attempt is seen (and counted) once.
pub fn client(
    config: &CredentialsConfig,
    region: &Region,
    credentials: Option<Credentials>,
) -> aws_sdk_sts::Client {
    client_over(config, region, credentials, http_client(config))
}

/// [`client`] over another HTTP client: the fleet simulation's in-process
/// STS answers here, so everything above HTTP is the production code.
pub fn client_over(
    config: &CredentialsConfig,
    region: &Region,
    credentials: Option<Credentials>,
    http: SharedHttpClient,
) -> aws_sdk_sts::Client {
    let mut builder = aws_sdk_sts::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(SdkRegion::new(region.as_str().to_owned()))
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(timeouts(config));
    if let Some(endpoint) = &config.sts.endpoint {
        builder = builder.endpoint_url(endpoint.to_string().trim_end_matches('/'));
    }
    // STS's endpoint rules refuse FIPS and dual-stack beside a custom
    // endpoint, which names the host itself (such a one if wanted).
    if config.sts.endpoint.is_none() {
        builder = builder
            .use_fips(config.sts.use_fips)
            .use_dual_stack(config.sts.use_dualstack);
    }
    if let Some(credentials) = credentials {
        builder = builder.credentials_provider(credentials);
    }
    aws_sdk_sts::Client::from_conf(builder.build())
}

/// One STS call's timeouts (`--sts-timeout`), for every STS client the
/// sidecar makes, a profile's included.
pub fn timeouts(config: &CredentialsConfig) -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_timeout(config.sts.timeout)
        .connect_timeout(config.sts.timeout)
        .build()
}

/// Where STS calls go, as the SDK's own endpoint rules resolve these
/// settings (an explicit endpoint as given): for the start-up line and
/// `credentials`, so a FIPS or dual-stack host that does not resolve is
/// named before its DNS error is read.
pub fn endpoint(config: &CredentialsConfig, region: &Region) -> String {
    use aws_sdk_sts::config::endpoint::{DefaultResolver, Params, ResolveEndpoint};
    use futures::FutureExt;
    if let Some(endpoint) = &config.sts.endpoint {
        return endpoint.to_string().trim_end_matches('/').to_owned();
    }
    let params = Params::builder()
        .region(region.as_str())
        .use_fips(config.sts.use_fips)
        .use_dual_stack(config.sts.use_dualstack)
        .build();
    let resolved = match params {
        // The rules are evaluated in place: the future is ready at once.
        Ok(params) => DefaultResolver::new()
            .resolve_endpoint(&params)
            .now_or_never()
            .map(|r| r.map(|e| e.url().to_owned()).map_err(|e| e.to_string())),
        Err(e) => Some(Err(e.to_string())),
    };
    match resolved {
        Some(Ok(url)) => url,
        Some(Err(e)) => format!("none ({e})"),
        None => "unknown".to_owned(),
    }
}

/// The HTTPS client the AWS SDK parts use (STS, and the aws-config
/// providers): rustls with aws-lc-rs, system roots plus `AWS_CA_BUNDLE`, HTTPS
/// through the egress proxy if there is one, answers bounded in size.
pub fn http_client(config: &CredentialsConfig) -> SharedHttpClient {
    super::bounded_answers::bounded(unbounded_http_client(config))
}

fn unbounded_http_client(config: &CredentialsConfig) -> SharedHttpClient {
    let mut trust = TrustStore::default();
    if let Some(bundle) = &config.ca_bundle {
        trust = trust.with_pem_certificate(bundle.pem.clone());
    }
    let tls_context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .unwrap_or_default();
    let Some(proxy) = &config.egress_proxy else {
        return aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(tls_context)
            .build_https();
    };
    // The SDK's client takes a proxy only through a connector of our own,
    // set up as `build_https` sets up its own (timeouts and their sleep), and
    // cached per connector settings by the same builder. That builder call
    // is `doc(hidden)` in aws-smithy-http-client 1.x: the lock file pins
    // it, and tests/e2e/test_egress_proxy.py fails if STS stops going
    // through the proxy.
    let proxy = proxy.sdk_config();
    aws_smithy_http_client::Builder::new().build_with_connector_fn(move |settings, components| {
        let mut connector = Connector::builder();
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector
            .proxy_config(proxy.clone())
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(tls_context.clone())
            .build()
    })
}

/// `PolicyArns` parameter value, `None` when empty.
pub fn policy_descriptors(
    arns: &[PolicyArn],
) -> Option<Vec<aws_sdk_sts::types::PolicyDescriptorType>> {
    (!arns.is_empty()).then(|| {
        arns.iter()
            .map(|a| {
                aws_sdk_sts::types::PolicyDescriptorType::builder()
                    .arn(a.as_str())
                    .build()
            })
            .collect()
    })
}

/// Turns the credentials of an STS answer into a [`Fetched`]; `provider`
/// names the source in the credentials (shown in logs and diagnosis).
pub fn fetched(
    operation: &'static str,
    provider: &'static str,
    credentials: Option<aws_sdk_sts::types::Credentials>,
    principal: Option<String>,
    token_expiry: super::TokenExpiry,
) -> Result<super::Fetched, SourceError> {
    let c = credentials.ok_or(SourceError::MissingCredentials { operation })?;
    // The SDK fills required fields an answer left out with defaults (an
    // empty key, the epoch): that is not credentials, whoever sent it.
    if c.access_key_id.is_empty()
        || c.secret_access_key.is_empty()
        || c.session_token.is_empty()
        || c.expiration.secs() == 0
    {
        return Err(SourceError::MissingCredentials { operation });
    }
    let expiry =
        std::time::SystemTime::try_from(c.expiration).map_err(|_| SourceError::Transport {
            operation,
            detail: "credential expiration is out of range".to_owned(),
        })?;
    Ok(super::Fetched {
        credentials: Credentials::new(
            c.access_key_id,
            c.secret_access_key,
            Some(c.session_token),
            Some(expiry),
            provider,
        ),
        principal,
        token_expiry,
        server_time: None,
    })
}

/// Maps an STS error code and HTTP status to what the refresher should do.
pub fn classify_code(code: &str, status: u16) -> ErrorClass {
    match code {
        "IDPCommunicationError"
        | "Throttling"
        | "ThrottlingException"
        | "RequestLimitExceeded"
        | "ServiceUnavailable"
        | "InternalFailure"
        | "InternalError" => ErrorClass::Transient,
        "InvalidIdentityToken" | "ExpiredTokenException" | "ExpiredToken" | "IDPRejectedClaim" => {
            ErrorClass::Token
        }
        // 408: a proxy or load balancer timed the request out on its way.
        _ if status >= 500 || status == 429 || status == 408 => ErrorClass::Transient,
        // A success the SDK could not read (a proxy's page, a cut or
        // garbled answer) is no IAM problem: like an answer without
        // credentials, it is retried soon, not minutes apart.
        _ if (200..300).contains(&status) => ErrorClass::Transient,
        _ => ErrorClass::Fatal,
    }
}

/// Text from an AWS answer made fit for logs, `/readyz` and `credentials`:
/// security tokens it quotes blanked, and on one line.
pub(super) fn loggable(text: &str) -> String {
    one_line(&redact_token_text(text))
}

/// Turns an SDK error into a [`SourceError`] without losing the STS code.
pub fn source_error<E>(operation: &'static str, err: SdkError<E, HttpResponse>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + Debug + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(context) => {
            let status = context.raw().status().as_u16();
            let e = context.err();
            // Text from elsewhere, the code too: on one line.
            let code = one_line(e.code().unwrap_or(UNKNOWN_CODE));
            // An answer without an STS error document (a proxy's page)
            // has neither code nor message: its status is all there is.
            let message = match e.message() {
                Some(message) => message,
                // A success not understood: what the SDK failed to read
                // in it (a bad `Expiration`, HTML) is the clue.
                // The parser may quote a piece of a credential field it
                // could not read (`invalid XML escape ... got: ...`).
                None if (200..300).contains(&status) => &crate::secret::without_fragments_of(
                    &format!(
                        "HTTP {status} answer not understood: {}",
                        crate::error_text::with_causes(e)
                    ),
                    &crate::secret::xml_texts(
                        context.raw().body().bytes().unwrap_or_default(),
                        &["SecretAccessKey", "SessionToken"],
                    ),
                ),
                None => &format!("HTTP {status} without an STS error message"),
            };
            SourceError::Service {
                operation,
                class: classify_code(&code, status),
                // A signature error quotes the canonical request STS
                // expected, session token included (role chaining and
                // GetCallerIdentity sign with one).
                message: loggable(message),
                code,
                status,
            }
        }
        other => SourceError::Transport {
            operation,
            detail: loggable(&crate::error_text::with_causes(&other)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fips_and_dualstack_reach_sts_as_they_reach_bedrock() {
        // The AWS SDKs send STS calls to its FIPS endpoint under
        // AWS_USE_FIPS_ENDPOINT; the sidecar sent only Bedrock's there.
        use aws_smithy_runtime_api::client::http::{
            http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpConnector,
        };
        use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
        use aws_smithy_runtime_api::client::result::ConnectorError;
        use std::sync::{Arc, Mutex};

        #[derive(Debug, Clone, Default)]
        struct Seen(Arc<Mutex<Vec<String>>>);
        impl HttpConnector for Seen {
            fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
                if let Ok(mut seen) = self.0.lock() {
                    seen.push(request.uri().to_owned());
                }
                HttpConnectorFuture::ready(Err(ConnectorError::other("seen".into(), None)))
            }
        }
        // So under AWS_USE_DUALSTACK_ENDPOINT: an IPv6-only pod reaches
        // STS only at its dual-stack host (sts.amazonaws.com is IPv4-only).
        // An explicit endpoint wins: STS's rules refuse FIPS or dual-stack
        // beside one ("... and custom endpoint are not supported"), for ever.
        let vpce = "https://vpce-1.sts.us-east-1.vpce.amazonaws.com";
        for (fips, dualstack, endpoint, host) in [
            (
                "false",
                "false",
                None,
                "https://sts.us-east-1.amazonaws.com",
            ),
            (
                "true",
                "false",
                None,
                "https://sts-fips.us-east-1.amazonaws.com",
            ),
            ("false", "true", None, "https://sts.us-east-1.api.aws"),
            ("true", "true", None, "https://sts-fips.us-east-1.api.aws"),
            ("true", "true", Some(vpce), "https://vpce-1.sts"),
        ] {
            let mut pairs = vec![
                ("AWS_REGION", "us-east-1"),
                ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
                ("AWS_WEB_IDENTITY_TOKEN_FILE", "/token"),
                ("AWS_USE_FIPS_ENDPOINT", fips),
                ("AWS_USE_DUALSTACK_ENDPOINT", dualstack),
            ];
            pairs.extend(endpoint.map(|e| ("AWS_ENDPOINT_URL_STS", e)));
            let env = crate::config::Env::from_pairs(pairs);
            let config =
                crate::sidecar::SidecarConfig::from_args(&Default::default(), &env).expect("valid");
            // `credentials` resolves them as the sidecar does.
            let alone = crate::credentials::CredentialsConfig::from_args(&Default::default(), &env)
                .expect("valid");
            assert_eq!(alone.sts, config.credentials.sts, "{fips} {dualstack}");
            let seen = Seen::default();
            let connector = SharedHttpConnector::new(seen.clone());
            let region = config.credentials.region.clone().expect("a region");
            let client = client_over(
                &config.credentials,
                &region,
                None,
                http_client_fn(move |_, _| connector.clone()),
            );
            let _ = client
                .assume_role_with_web_identity()
                .role_arn("arn:aws:iam::123456789012:role/app")
                .role_session_name("s")
                .web_identity_token("t")
                .send()
                .await;
            let seen = seen.0.lock().expect("lock").clone();
            assert!(
                seen.first().is_some_and(|u| u.starts_with(host)),
                "{fips} {dualstack}: {seen:?}"
            );
            // What the start-up line and `credentials` name is where the
            // call went.
            let named = super::endpoint(&config.credentials, &region);
            assert!(
                seen.first().is_some_and(|u| u.starts_with(&named)) && named.starts_with(host),
                "{named} {seen:?}"
            );
        }
    }

    #[test]
    fn an_answer_without_complete_credentials_is_no_credentials() {
        let complete = || {
            aws_sdk_sts::types::Credentials::builder()
                .access_key_id("ASIAEXAMPLE")
                .secret_access_key("secret")
                .session_token("token")
                .expiration(aws_smithy_types::DateTime::from_secs(1_800_000_000))
        };
        let fetch = |c: aws_sdk_sts::types::builders::CredentialsBuilder| {
            fetched(
                "AssumeRoleWithWebIdentity",
                "web-identity",
                c.build().ok(),
                None,
                super::super::TokenExpiry::NoToken,
            )
        };
        assert!(fetch(complete()).is_ok());
        // What the SDK fills in for fields an answer left out.
        for partial in [
            complete().access_key_id(""),
            complete().secret_access_key(""),
            complete().session_token(""),
            complete().expiration(aws_smithy_types::DateTime::from_secs(0)),
        ] {
            assert!(
                matches!(fetch(partial), Err(SourceError::MissingCredentials { .. })),
                "accepted"
            );
        }
    }

    #[test]
    fn sts_errors_are_classified_by_what_fixes_them() {
        use ErrorClass::*;
        for (code, status, class) in [
            ("IDPCommunicationError", 400, Transient),
            ("Throttling", 400, Transient),
            ("InternalFailure", 500, Transient),
            ("Whatever", 503, Transient),
            ("Whatever", 429, Transient),
            ("Unknown", 408, Transient),
            ("InvalidIdentityToken", 400, Token),
            ("ExpiredTokenException", 400, Token),
            ("AccessDenied", 403, Fatal),
            ("MalformedPolicyDocument", 400, Fatal),
            ("ValidationError", 400, Fatal),
            // A 200 the SDK could not read (an audit: 5 minutes apart
            // where a cut answer was retried within seconds).
            ("Unknown", 200, Transient),
        ] {
            assert_eq!(classify_code(code, status), class, "{code} {status}");
        }
    }

    #[tokio::test]
    async fn sts_gets_a_post_quantum_key_exchange_when_it_offers_one() {
        // A TLS server that agrees to the hybrid group only: the call
        // succeeds only if the STS client offers it.
        use http_body_util::Full;
        use hyper::body::Bytes;
        use hyper_util::rt::TokioIo;
        use std::sync::{Arc, Mutex};

        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(signing_key.serialize_der().into());
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        provider
            .kx_groups
            .retain(|g| g.name() == rustls::NamedGroup::X25519MLKEM768);
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let agreed = Arc::new(Mutex::new(None));
        let seen = agreed.clone();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            *seen.lock().expect("lock") = tls
                .get_ref()
                .1
                .negotiated_key_exchange_group()
                .map(|g| g.name());
            let answer = hyper::service::service_fn(|_| async {
                let xml = "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
                    <AssumeRoleWithWebIdentityResult><Credentials>\
                    <AccessKeyId>ASIAEXAMPLE</AccessKeyId><SecretAccessKey>secret</SecretAccessKey>\
                    <SessionToken>token</SessionToken><Expiration>2030-01-01T00:00:00Z</Expiration>\
                    </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
                Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(xml))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), answer)
                .await;
        });

        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = dir.path().join("ca.pem");
        std::fs::write(&bundle, cert.pem()).expect("write the CA bundle");
        let endpoint = format!("https://127.0.0.1:{}", addr.port());
        let env = crate::config::Env::from_pairs([
            ("AWS_REGION", "us-east-1"),
            ("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/app"),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/token"),
            ("AWS_ENDPOINT_URL_STS", endpoint.as_str()),
            ("AWS_CA_BUNDLE", bundle.to_str().expect("utf-8 path")),
        ]);
        let config = crate::credentials::CredentialsConfig::from_args(&Default::default(), &env)
            .expect("valid");
        let region = config.region.clone().expect("a region");
        let answer = client(&config, &region, None)
            .assume_role_with_web_identity()
            .role_arn("arn:aws:iam::123456789012:role/app")
            .role_session_name("s")
            .web_identity_token("t")
            .send()
            .await
            .expect("STS answered over the hybrid key exchange");
        assert!(answer.credentials().is_some());
        assert_eq!(
            *agreed.lock().expect("lock"),
            Some(rustls::NamedGroup::X25519MLKEM768)
        );
    }
}
