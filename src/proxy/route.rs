//! Which upstream a request goes to: the Bedrock runtime by default, the
//! Agents runtime under `/agent-runtime/`, Bedrock Mantle under `/mantle/`.
//! The prefix is removed before forwarding and signing.

use http::uri::PathAndQuery;
use http::{StatusCode, Uri};

use super::config::{RouteTable, Upstream};
use super::error::BrokerError;
use super::signing::Signer;

/// One upstream and how to sign for it.
#[derive(Debug)]
pub struct Route {
    /// Client path prefix, with its trailing slash (`/mantle/`); empty for the default.
    prefix: &'static str,
    upstream: Upstream,
    /// `None` without a region (API-key mode): SigV4 is then impossible.
    signer: Option<Signer>,
}

impl Route {
    pub fn new(prefix: &'static str, upstream: Upstream, region: Option<&str>) -> Self {
        let signer = region.map(|r| Signer::new(r, upstream.signing_name.clone()));
        Self {
            prefix,
            upstream,
            signer,
        }
    }

    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// Bedrock API keys are limited to the Bedrock and Bedrock runtime
    /// APIs; the Agents runtime accepts SigV4 only.
    pub fn accepts_api_keys(&self) -> bool {
        self.prefix != AGENT_RUNTIME_PREFIX
    }

    /// The upstream URI for a client path-and-query (prefix removed).
    pub fn uri(&self, pq: Option<&PathAndQuery>) -> Result<Uri, BrokerError> {
        let pq = pq.map_or("/", PathAndQuery::as_str);
        // Keep the slash that ends the prefix: "/mantle/v1/x" -> "/v1/x".
        let pq = match self.prefix {
            "" => pq,
            prefix => &pq[prefix.len() - 1..],
        };
        let invalid = |e: http::Error| {
            BrokerError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                format!("invalid request path: {e}"),
            )
        };
        let pq: PathAndQuery = if self.upstream.base_path.is_empty() {
            PathAndQuery::try_from(pq)
        } else {
            PathAndQuery::try_from(format!("{}{pq}", self.upstream.base_path))
        }
        .map_err(|e| invalid(e.into()))?;
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(invalid)
    }
}

/// Prefix of the Agents runtime routes.
pub const AGENT_RUNTIME_PREFIX: &str = "/agent-runtime/";
/// Prefix of the Mantle routes.
pub const MANTLE_PREFIX: &str = "/mantle/";

/// All routes of one proxy.
#[derive(Debug)]
pub struct Routes {
    runtime: Route,
    /// (prefix, route if configured)
    extra: Vec<(&'static str, Option<Route>)>,
}

impl Routes {
    pub fn new(table: RouteTable, region: Option<&str>) -> Self {
        Self {
            runtime: Route::new("", table.runtime, region),
            extra: vec![
                (
                    AGENT_RUNTIME_PREFIX,
                    table
                        .agent_runtime
                        .map(|u| Route::new(AGENT_RUNTIME_PREFIX, u, region)),
                ),
                (
                    MANTLE_PREFIX,
                    table.mantle.map(|u| Route::new(MANTLE_PREFIX, u, region)),
                ),
            ],
        }
    }

    /// The route for a client path.
    pub fn for_path(&self, path: &str) -> Result<&Route, BrokerError> {
        for (prefix, route) in &self.extra {
            if path.starts_with(prefix) {
                return route.as_ref().ok_or_else(|| {
                    BrokerError::new(
                        StatusCode::NOT_FOUND,
                        "route_not_configured",
                        format!(
                            "{prefix} needs an endpoint: set a region or --agent-runtime-upstream / --mantle-upstream"
                        ),
                    )
                });
            }
        }
        Ok(&self.runtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str, name: &str) -> Upstream {
        let (scheme, authority, base_path) = crate::config::endpoints::base_url(url).unwrap();
        Upstream {
            scheme,
            authority,
            base_path,
            signing_name: name.to_owned(),
        }
    }

    #[test]
    fn prefixes_choose_the_upstream_and_are_stripped() {
        let routes = Routes::new(
            RouteTable {
                runtime: upstream("https://bedrock-runtime.us-east-1.amazonaws.com", "bedrock"),
                agent_runtime: Some(upstream(
                    "https://bedrock-agent-runtime.us-east-1.amazonaws.com",
                    "bedrock",
                )),
                mantle: Some(upstream(
                    "https://bedrock-mantle.us-east-1.api.aws/base",
                    "bedrock-mantle",
                )),
            },
            Some("us-east-1"),
        );
        let uri = |path: &str| {
            let pq: PathAndQuery = path.parse().unwrap();
            routes
                .for_path(pq.path())
                .unwrap()
                .uri(Some(&pq))
                .unwrap()
                .to_string()
        };
        assert_eq!(
            uri("/model/a:0/converse"),
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/a:0/converse"
        );
        assert_eq!(
            uri("/agent-runtime/knowledgebases/KB1/retrieve?x=1"),
            "https://bedrock-agent-runtime.us-east-1.amazonaws.com/knowledgebases/KB1/retrieve?x=1"
        );
        assert_eq!(
            uri("/mantle/v1/chat/completions"),
            "https://bedrock-mantle.us-east-1.api.aws/base/v1/chat/completions"
        );
        // Not a prefix match: stays on the runtime.
        assert_eq!(
            uri("/mantle"),
            "https://bedrock-runtime.us-east-1.amazonaws.com/mantle"
        );
    }

    #[test]
    fn unconfigured_routes_are_a_clear_404() {
        let routes = Routes::new(
            RouteTable {
                runtime: upstream("http://127.0.0.1:1", "bedrock"),
                agent_runtime: None,
                mantle: None,
            },
            None,
        );
        let err = routes.for_path("/mantle/v1/models").unwrap_err();
        assert_eq!(
            (err.status.as_u16(), err.code),
            (404, "route_not_configured")
        );
    }
}
