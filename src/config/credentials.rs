//! Fills [`CredentialsConfig`] from the AWS flags and the standard AWS
//! variables: what is set is gathered into [`Found`], and
//! [`credentials::select`] (domain logic, next to the sources) chooses.

use std::path::PathBuf;

use super::aws::{ExternalId, Region, RoleArn, SessionName};
use super::parse::{self, ParseError};
use super::setting::Errors;
use super::settings::{aws as s, vars, Variable};
use super::{endpoints, session, Env};
use crate::cli::AwsArgs;
use crate::credentials::select::{self, Found, SelectError, SourceChoice};
use crate::credentials::{
    ApiKey, ChainConfig, ContainerToken, CredentialMode, CredentialsConfig, StaticKeys, StsConfig,
    WebIdentityConfig,
};
use crate::egress::{self, EgressProxy};
use crate::secret::Secret;
use crate::tls::CaBundle;

/// A variable's value; empty counts as unset.
fn var<'a>(env: &'a Env, v: &Variable) -> Option<&'a str> {
    env.get(v.name)
}

/// Parses the credential settings, recording every problem in `errors`.
/// The region is returned even when the rest is invalid: the endpoints
/// depend on it.
///
/// `plaintext_allowed` (`--allow-plaintext-upstream`) lets the STS endpoint
/// be plain `http://` to a host that is not loopback: the web-identity
/// token and the credentials STS returns would cross the network in clear.
pub fn parse(
    args: &AwsArgs,
    env: &Env,
    plaintext_allowed: bool,
    errors: &mut Errors,
) -> (Option<Region>, Option<CredentialsConfig>) {
    let region = errors.read(&s::REGION, args.region.as_deref(), env, Region::parse);
    let sts_endpoint = var(env, &vars::AWS_ENDPOINT_URL_STS).and_then(|raw| {
        endpoints::sts_endpoint(raw.trim(), plaintext_allowed)
            .map_err(|e| errors.push(vars::AWS_ENDPOINT_URL_STS.name, e))
            .ok()
    });
    let sts_timeout = errors.read(
        &s::STS_TIMEOUT,
        args.sts_timeout.as_deref(),
        env,
        parse::positive_duration,
    );
    let ca_bundle = ca_bundle(env, errors);

    let mut warnings = Vec::new();
    let egress_proxy = egress_proxy(args, env, errors, &mut warnings);

    let region_given = s::REGION.find(args.region.as_deref(), env);
    if let (Some(region), Some(raw)) = (&region, &region_given) {
        if !region.is_aws_shaped() {
            warnings.push(format!(
                "{}: {:?} is not shaped like an AWS region (such as us-east-1 or us-gov-west-1): AWS's STS and Bedrock hosts for it will not resolve, and requests are signed for it",
                raw.origin,
                region.as_str()
            ));
        }
    }
    let mode = mode(args, env, errors, &mut warnings);
    // aws-config quotes a URL it refuses, and these endpoints take no
    // user information: refused here, without repeating the value.
    for name in [
        vars::AWS_CONTAINER_CREDENTIALS_FULL_URI.name,
        "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    ] {
        if env.get(name).is_some_and(|v| v.contains('@')) {
            errors.push(
                name,
                "must not contain user information (user:password@); the value is not repeated, as it may hold a password",
            );
        }
    }
    if matches!(mode, Some(CredentialMode::SigV4(_))) && region_given.is_none() {
        errors.push(
            s::REGION.origin(),
            "a region is required for SigV4 signing (for example us-east-1)",
        );
    }

    let chain = chain(args, env, errors);
    if chain.is_some() && matches!(mode, Some(CredentialMode::ApiKey(_))) {
        warnings.push(format!(
            "{} is ignored: API-key mode does not use SigV4 credentials",
            s::CHAIN_ROLE_ARN.var()
        ));
    }
    let session = session::options(args, env, chain.is_some(), errors);
    if let Some(mode) = &mode {
        session::unused(mode, chain.is_some(), &session, errors);
    }
    let config = match (mode, sts_timeout) {
        (Some(mode), Some(timeout)) => Some(CredentialsConfig {
            region: region.clone(),
            mode,
            sts: StsConfig {
                endpoint: sts_endpoint,
                timeout,
                // The sidecar's --use-fips and --use-dualstack set them
                // (see config::sidecar).
                use_fips: false,
                use_dualstack: false,
            },
            ca_bundle,
            egress_proxy,
            session,
            chain,
            warnings,
            // aws-config's own variables, read by it: known here only to be
            // blanked from the endpoint's errors. Any aws-config source may
            // call the endpoint (a profile's `credential_source =
            // EcsContainer`), not only the container source.
            container_token: ContainerToken {
                inline: env
                    .get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
                    .map(Secret::new),
                file: env
                    .get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
                    .map(PathBuf::from),
            },
        }),
        _ => None,
    };
    (region, config)
}

/// `AWS_CA_BUNDLE` (a file) and `BEDROCK_BROKER_CA_BUNDLE_PEM` (text),
/// either or both.
fn ca_bundle(env: &Env, errors: &mut Errors) -> Option<CaBundle> {
    // A path with a newline (a ConfigMap's `|` block) named a file that
    // looked right in every message and did not exist.
    let file = var(env, &vars::AWS_CA_BUNDLE).and_then(|path| {
        CaBundle::read(PathBuf::from(path.trim()))
            .map_err(|e| errors.push(vars::AWS_CA_BUNDLE.name, e))
            .ok()
    });
    let name = vars::CA_BUNDLE_PEM.name;
    let text = var(env, &vars::CA_BUNDLE_PEM).and_then(|pem| {
        CaBundle::from_pem(name, pem.as_bytes().to_vec())
            .map_err(|e| errors.push(name, e))
            .ok()
    });
    match (file, text) {
        (Some(file), Some(text)) => Some(file.and(&text)),
        (file, text) => file.or(text),
    }
}

/// `--https-proxy` with its `--no-proxy` list; the URL is never repeated
/// in errors (it may carry a password).
fn egress_proxy(
    args: &AwsArgs,
    env: &Env,
    errors: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<EgressProxy> {
    let no_proxy = s::NO_PROXY.find(args.no_proxy.as_deref(), env);
    let url = s::HTTPS_PROXY.find(args.https_proxy.as_deref(), env)?;
    let proxy = errors
        .parse(url, |raw| {
            EgressProxy::parse(raw, no_proxy.map(|n| n.value))
                .map_err(|e| ParseError::Refused(e.to_string().into()))
        })?
        .from_origin(url.origin.to_string());
    // Warned about, not refused: NO_PROXY is often set pod-wide for every
    // program in it, and those read such an entry as matching nothing too.
    if let Some(no_proxy) = no_proxy {
        for entry in proxy.unmatchable_entries() {
            warnings.push(format!(
                "{}: {}",
                no_proxy.origin,
                egress::unmatchable_entry_message(entry)
            ));
        }
    }
    // NO_PROXY=*: as if there were none (the start-up line says `none`).
    (!proxy.bypasses_all()).then_some(proxy)
}

/// API key or SigV4 source; records why there is neither.
fn mode(
    args: &AwsArgs,
    env: &Env,
    errors: &mut Errors,
    warnings: &mut Vec<String>,
) -> Option<CredentialMode> {
    let problems_before = errors.count();
    let found = Found {
        web_identity: web_identity(env, errors),
        static_keys: static_keys(env, errors),
        container_env: var(env, &vars::AWS_CONTAINER_CREDENTIALS_FULL_URI).is_some()
            || var(env, &vars::AWS_CONTAINER_CREDENTIALS_RELATIVE_URI).is_some(),
        profile: var(env, &vars::AWS_PROFILE).map(str::to_owned),
    };
    let api_key = var(env, &vars::AWS_BEARER_TOKEN_BEDROCK).and_then(|raw| {
        ApiKey::parse(raw)
            .map_err(|e| errors.push(vars::AWS_BEARER_TOKEN_BEDROCK.name, e))
            .ok()
    });
    let choice_raw = args.credential_source.as_deref();
    let choice = errors.read(&s::CREDENTIAL_SOURCE, choice_raw, env, SourceChoice::parse)?;
    let sigv4 = match select::select(found, choice) {
        Ok(source) => source,
        Err(e @ SelectError::Ambiguous) => {
            errors.push(
                format!(
                    "{} / {} and {} / {}",
                    vars::AWS_ROLE_ARN.name,
                    vars::AWS_WEB_IDENTITY_TOKEN_FILE.name,
                    vars::AWS_ACCESS_KEY_ID.name,
                    vars::AWS_SECRET_ACCESS_KEY.name
                ),
                e,
            );
            None
        }
        Err(e @ SelectError::NotConfigured(_)) => {
            let origin = s::CREDENTIAL_SOURCE
                .find(choice_raw, env)
                .map_or_else(|| s::CREDENTIAL_SOURCE.origin(), |r| r.origin.to_string());
            errors.push(origin, e);
            None
        }
    };
    match (api_key, sigv4) {
        (Some(key), Some(source)) => {
            warnings.push(format!(
                "{} is set, so every request uses that API key; the {} credentials are not used",
                vars::AWS_BEARER_TOKEN_BEDROCK.name,
                source.kind()
            ));
            Some(CredentialMode::ApiKey(key))
        }
        (Some(key), None) => Some(CredentialMode::ApiKey(key)),
        (None, Some(source)) => Some(CredentialMode::SigV4(source)),
        (None, None) => {
            // A half-configured source already said what is missing.
            if errors.count() == problems_before {
                errors.push(
                    format!(
                        "{} / {}, {} / {}, {}",
                        vars::AWS_ROLE_ARN.name,
                        vars::AWS_WEB_IDENTITY_TOKEN_FILE.name,
                        vars::AWS_ACCESS_KEY_ID.name,
                        vars::AWS_SECRET_ACCESS_KEY.name,
                        vars::AWS_BEARER_TOKEN_BEDROCK.name
                    ),
                    "no credentials configured: set the IRSA pair (role ARN and token file), or static keys for local development, or a Bedrock API key, or choose --credential-source profile, container or imds",
                );
            }
            None
        }
    }
}

/// The session name used when none is configured: namespace and pod name
/// from the downward API, else the host name.
fn default_session_name(env: &Env) -> SessionName {
    SessionName::for_pod(
        var(env, &vars::POD_NAMESPACE),
        var(env, &vars::POD_NAME).or(var(env, &vars::HOSTNAME)),
    )
}

/// `AWS_ROLE_SESSION_NAME`, else the default; `None` when it is invalid.
fn session_name(env: &Env, errors: &mut Errors) -> Option<SessionName> {
    match var(env, &vars::AWS_ROLE_SESSION_NAME) {
        Some(raw) => SessionName::parse(raw.trim())
            .map_err(|e| errors.push(vars::AWS_ROLE_SESSION_NAME.name, e))
            .ok(),
        None => Some(default_session_name(env)),
    }
}

fn web_identity(env: &Env, errors: &mut Errors) -> Option<WebIdentityConfig> {
    let (role, token) = (vars::AWS_ROLE_ARN, vars::AWS_WEB_IDENTITY_TOKEN_FILE);
    match (var(env, &role), var(env, &token)) {
        (None, None) => None,
        (Some(_), None) => {
            errors.push(
                token.name,
                format!(
                    "is not set but {} is; web identity needs both (the path of the projected service account token)",
                    role.name
                ),
            );
            None
        }
        (None, Some(_)) => {
            errors.push(
                role.name,
                format!(
                    "is not set but {} is; web identity needs both (the IAM role to assume)",
                    token.name
                ),
            );
            None
        }
        (Some(raw_role), Some(token_file)) => {
            let role_arn = RoleArn::parse(raw_role.trim())
                .map_err(|e| errors.push(role.name, e))
                .ok();
            let session_name = session_name(env, errors);
            Some(WebIdentityConfig {
                role_arn: role_arn?,
                token_file: PathBuf::from(token_file.trim()),
                session_name: session_name?,
            })
        }
    }
}

fn static_keys(env: &Env, errors: &mut Errors) -> Option<StaticKeys> {
    let (id_var, secret_var, token_var) = (
        vars::AWS_ACCESS_KEY_ID,
        vars::AWS_SECRET_ACCESS_KEY,
        vars::AWS_SESSION_TOKEN,
    );
    match (var(env, &id_var), var(env, &secret_var)) {
        (None, None) => {
            if var(env, &token_var).is_some() {
                errors.push(
                    token_var.name,
                    format!("is set without {} and {}", id_var.name, secret_var.name),
                );
            }
            None
        }
        (Some(_), None) => {
            errors.push(
                secret_var.name,
                format!("is not set but {} is", id_var.name),
            );
            None
        }
        (None, Some(_)) => {
            errors.push(
                id_var.name,
                format!("is not set but {} is", secret_var.name),
            );
            None
        }
        (Some(id), Some(secret)) => {
            // Trimmed (a Secret written with `echo` ends with a newline),
            // then checked: each goes into a header or the signature, and
            // a key with a space in it would only show as a 500 per request.
            let mut valid = |name: &str, value: &str| {
                if value.is_empty() {
                    errors.push(name, "is blank (only whitespace)");
                    return false;
                }
                let ok = value.bytes().all(|b| b.is_ascii_graphic());
                if !ok {
                    errors.push(
                        name,
                        "contains a space, a control character or a character outside ASCII, which no AWS key or token has (the value is not shown)",
                    );
                }
                ok
            };
            let (id, secret) = (id.trim(), secret.trim());
            let token = var(env, &token_var).map(str::trim);
            let ok = [
                valid(id_var.name, id),
                valid(secret_var.name, secret),
                token.is_none_or(|t| valid(token_var.name, t)),
            ];
            ok.iter().all(|ok| *ok).then(|| StaticKeys {
                access_key_id: id.to_owned(),
                secret_access_key: Secret::new(secret),
                session_token: token.map(Secret::new),
            })
        }
    }
}

fn chain(args: &AwsArgs, env: &Env, errors: &mut Errors) -> Option<ChainConfig> {
    let external_id = errors.read(
        &s::CHAIN_EXTERNAL_ID,
        args.chain_external_id.as_deref(),
        env,
        ExternalId::parse,
    );
    let Some(role_raw) = s::CHAIN_ROLE_ARN.find(args.chain_role_arn.as_deref(), env) else {
        if let Some(raw) = s::CHAIN_EXTERNAL_ID.find(args.chain_external_id.as_deref(), env) {
            errors.push(
                raw.origin,
                format!("is set without {}", s::CHAIN_ROLE_ARN.origin()),
            );
        }
        return None;
    };
    let role_arn = errors.parse(role_raw, RoleArn::parse)?;
    let session_name = match var(env, &vars::AWS_ROLE_SESSION_NAME) {
        // An invalid name is reported with the web identity source.
        Some(raw) => SessionName::parse(raw.trim()).ok()?,
        None => default_session_name(env),
    };
    Some(ChainConfig {
        role_arn,
        external_id,
        session_name,
    })
}
