//! Where a request goes: the upstream of its prefix, and how to sign for
//! it. The prefix is removed before forwarding and signing.

use std::borrow::Cow;

use http::uri::PathAndQuery;
use http::{Uri, Version};

use super::classify::Prefix;
use super::config::{RouteTable, Upstream};
use super::error::ProxyError;
use super::headers;
use super::signer::{query, RequestSigner};
use super::sigv4::Signer;

/// One upstream and how to sign for it.
#[derive(Debug)]
pub struct Route {
    prefix: Prefix,
    upstream: Upstream,
    /// `None` without a region (API-key mode): SigV4 is then impossible.
    signer: Option<Signer>,
    /// The same, for buffered requests (everything but event streams).
    request_signer: Option<RequestSigner>,
}

impl Route {
    fn new(prefix: Prefix, upstream: Upstream, region: Option<&str>) -> Self {
        let signer = region.map(|r| Signer::new(r, upstream.signing_name.clone()));
        let request_signer = region.map(|r| RequestSigner::new(r, upstream.signing_name.clone()));
        Self {
            prefix,
            upstream,
            signer,
            request_signer,
        }
    }

    /// The event-stream signer (aws-sigv4).
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// The buffered-request signer.
    pub fn request_signer(&self) -> Option<&RequestSigner> {
        self.request_signer.as_ref()
    }

    /// The upstream URI for a client path-and-query (prefix removed), its
    /// query in the encoding it is signed in ([`query::normalised`]).
    pub fn uri(&self, original: Option<&PathAndQuery>) -> Result<Uri, ProxyError> {
        let normalised = original.and_then(|pq| {
            let q = pq.query()?;
            match query::normalised(q) {
                Cow::Borrowed(_) => None,
                Cow::Owned(n) if n.is_empty() => Some(pq.path().to_owned()),
                Cow::Owned(n) => Some(format!("{}?{n}", pq.path())),
            }
        });
        let pq = normalised
            .as_deref()
            .unwrap_or_else(|| original.map_or("/", PathAndQuery::as_str));
        // Keep the slash that ends the prefix: "/mantle/v1/x" -> "/v1/x".
        let pq = match self.prefix.path() {
            "" => pq,
            prefix => &pq[prefix.len() - 1..],
        };
        let invalid =
            |e: http::Error| ProxyError::InvalidPath(format!("invalid request path: {e}").into());
        let pq: PathAndQuery = match (original, self.upstream.base_path.is_empty()) {
            // Most requests go out with the path and query they came with:
            // keep the parsed value (a reference count) instead of copying
            // and parsing it again.
            (Some(original), true) if original.as_str() == pq => Ok(original.clone()),
            (_, true) => PathAndQuery::try_from(pq),
            (_, false) => PathAndQuery::try_from(format!("{}{pq}", self.upstream.base_path)),
        }
        .map_err(|e| invalid(e.into()))?;
        Uri::builder()
            .scheme(self.upstream.scheme.clone())
            .authority(self.upstream.authority.clone())
            .path_and_query(pq)
            .build()
            .map_err(invalid)
    }

    /// Points a client request at this upstream: its URI, HTTP/1.1 as the
    /// request version (ALPN may still pick HTTP/2), headers prepared.
    pub fn retarget(&self, parts: &mut http::request::Parts) -> Result<(), ProxyError> {
        parts.uri = self.uri(parts.uri.path_and_query())?;
        parts.version = Version::HTTP_11;
        headers::prepare_request_headers(&mut parts.headers);
        Ok(())
    }
}

/// All routes of one proxy.
#[derive(Debug)]
pub struct Routes {
    runtime: Route,
    agent_runtime: Option<Route>,
    mantle: Option<Route>,
}

impl Routes {
    pub fn new(table: RouteTable, region: Option<&str>) -> Self {
        Self {
            runtime: Route::new(Prefix::Runtime, table.runtime, region),
            agent_runtime: table
                .agent_runtime
                .map(|u| Route::new(Prefix::AgentRuntime, u, region)),
            mantle: table.mantle.map(|u| Route::new(Prefix::Mantle, u, region)),
        }
    }

    /// The route of a prefix, if it has an upstream.
    pub fn get(&self, prefix: Prefix) -> Result<&Route, ProxyError> {
        let route = match prefix {
            Prefix::Runtime => return Ok(&self.runtime),
            Prefix::AgentRuntime => self.agent_runtime.as_ref(),
            Prefix::Mantle => self.mantle.as_ref(),
        };
        route.ok_or(ProxyError::RouteNotConfigured {
            prefix: prefix.path(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::classify::classify;

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
                .get(classify(pq.path()).prefix)
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
        assert_eq!(
            uri("/mantle"),
            "https://bedrock-runtime.us-east-1.amazonaws.com/mantle"
        );
        assert_eq!(
            uri("/openai/v1/models?next=http://x:1/&&b"),
            "https://bedrock-runtime.us-east-1.amazonaws.com/openai/v1/models?next=http%3A%2F%2Fx%3A1%2F&b="
        );
        assert_eq!(
            uri("/openai/v1/models?"),
            "https://bedrock-runtime.us-east-1.amazonaws.com/openai/v1/models?"
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
        let err = routes.get(Prefix::Mantle).unwrap_err();
        assert_eq!(
            (err.status().as_u16(), err.code().name),
            (404, "route_not_configured")
        );
    }
}
