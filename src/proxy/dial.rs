//! Connecting to an upstream: TCP, direct or in the egress proxy's
//! CONNECT tunnel, then TLS, the whole within the connect timeout.
//!
//! The tunnel is hyper-util's and TLS hyper-rustls's (ALPN unchanged
//! inside a tunnel). The timeout is over all of it, name resolution too,
//! as Go's dialer and the AWS SDK for Rust count theirs: a handshake that
//! never ends (a stuck middlebox, a proxy that stops relaying) would
//! otherwise hold a request until its response-header timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::BoxError;
use crate::egress::EgressProxy;

/// TLS over [`Dial`], within the dial's timeout: what the pool and the
/// streams client connect with. Cheap to clone (hyper-util's client, the
/// streams', clones its connector for every request).
#[derive(Clone)]
pub struct Connector {
    tls: HttpsConnector<Dial>,
    /// The dial's proxy, to name it when the timeout strikes.
    via: Option<Arc<EgressProxy>>,
    timeout: Duration,
}

/// TCP to an upstream, or to the egress proxy and a tunnel on from it.
#[derive(Clone)]
pub struct Dial {
    /// Owns TCP options, and the timeout of each TCP connect.
    tcp: HttpConnector,
    via: Option<Arc<EgressProxy>>,
    /// Of the whole connect, TLS included (see [`Connector`]).
    timeout: Duration,
}

/// Why a connection was not opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("could not connect to the egress proxy {proxy} (for a tunnel to {to})")]
    ProxyUnreachable {
        proxy: String,
        to: String,
        #[source]
        source: BoxError,
    },
    /// `origin`: where the proxy's URL came from (`HTTPS_PROXY`, ...).
    #[error("the egress proxy {proxy} wants credentials for a tunnel to {to} (407): give them in {origin}, http://user:password@host:port")]
    CredentialsWanted {
        proxy: String,
        to: String,
        origin: String,
    },
    #[error(
        "the egress proxy {proxy} refused the credentials in {origin} (407) for a tunnel to {to}"
    )]
    CredentialsRefused {
        proxy: String,
        to: String,
        origin: String,
    },
    #[error("the egress proxy {proxy} refused a tunnel to {to} (an answer other than 200): its allow list may lack the host, or the host belongs in NO_PROXY")]
    TunnelRefused { proxy: String, to: String },
    #[error("the egress proxy {proxy} broke off while opening a tunnel to {to}")]
    TunnelBroken {
        proxy: String,
        to: String,
        #[source]
        source: BoxError,
    },
    #[error("connecting to {to} timed out after {after:?} (DNS, TCP and TLS)")]
    TimedOut { to: String, after: Duration },
    #[error("connecting through the egress proxy {proxy} to {to} timed out after {after:?} (DNS, TCP, CONNECT and TLS)")]
    TunnelTimedOut {
        proxy: String,
        to: String,
        after: Duration,
    },
}

type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl Connector {
    /// TLS with `tls` over `dial`, offering HTTP/2 and HTTP/1.1 by ALPN, or
    /// HTTP/2 alone; the whole connect within the dial's timeout.
    pub fn new(tls: rustls::ClientConfig, dial: Dial, h2_only: bool) -> Self {
        let via = dial.via.clone();
        let timeout = dial.timeout;
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let tls = if h2_only {
            https.enable_http2().wrap_connector(dial)
        } else {
            https.enable_http1().enable_http2().wrap_connector(dial)
        };
        Self { tls, via, timeout }
    }
}

impl Service<Uri> for Connector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tls.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let to = host_port(&dst);
        let proxy = self.via.as_ref().and_then(|p| {
            p.intercept(&dst)?;
            Some(p.address().to_owned())
        });
        let after = self.timeout;
        let connecting = self.tls.call(dst);
        Box::pin(async move {
            match tokio::time::timeout(after, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(match proxy {
                    Some(proxy) => DialError::TunnelTimedOut { proxy, to, after },
                    None => DialError::TimedOut { to, after },
                }
                .into()),
            }
        })
    }
}

impl Dial {
    /// TCP to an upstream, directly or through `via`; a connect (TLS
    /// included, by the [`Connector`] over it) gives up after `timeout`.
    pub fn new(timeout: Duration, via: Option<EgressProxy>) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        tcp.set_keepalive(Some(Duration::from_secs(30)));
        Self {
            tcp,
            via: via.map(Arc::new),
            timeout,
        }
    }
}

impl Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let intercept = self
            .via
            .as_ref()
            .and_then(|p| Some((p, p.intercept(&dst)?)));
        let Some((proxy, intercept)) = intercept else {
            let connecting = self.tcp.call(dst);
            return Box::pin(async move { connecting.await.map_err(Into::into) });
        };
        let mut tunnel = Tunnel::new(intercept.uri().clone(), self.tcp.clone());
        if let Some(auth) = intercept.basic_auth() {
            tunnel = tunnel.with_auth(auth.clone());
        }
        let credentials = intercept.basic_auth().is_some();
        let (origin, proxy) = (proxy.origin().to_owned(), proxy.address().to_owned());
        let to = host_port(&dst);
        let tunnelled = tunnel.call(dst);
        Box::pin(async move {
            tunnelled
                .await
                .map_err(|e| refused(e.into(), credentials, (proxy, origin), to).into())
        })
    }
}

/// `host:port` of a destination, as a CONNECT names it.
fn host_port(dst: &Uri) -> String {
    let default = if dst.scheme() == Some(&http::uri::Scheme::HTTPS) {
        443
    } else {
        80
    };
    let port = dst.port_u16().unwrap_or(default);
    format!("{}:{port}", dst.host().unwrap_or_default())
}

/// What a failed tunnel means for the operator. hyper-util's error type is
/// not public, only its text (hyper-util 0.1, pinned by the lock file;
/// the tests name every case).
fn refused(
    e: BoxError,
    credentials: bool,
    (proxy, origin): (String, String),
    to: String,
) -> DialError {
    let text = e.to_string();
    if text.ends_with("failed to create underlying connection") {
        DialError::ProxyUnreachable {
            proxy,
            to,
            source: e,
        }
    } else if text.ends_with("proxy authorization required") && credentials {
        DialError::CredentialsRefused { proxy, to, origin }
    } else if text.ends_with("proxy authorization required") {
        DialError::CredentialsWanted { proxy, to, origin }
    } else if text.ends_with("unsuccessful") {
        DialError::TunnelRefused { proxy, to }
    } else {
        DialError::TunnelBroken {
            proxy,
            to,
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_407_names_where_the_proxy_was_given() {
        let wanted = || -> BoxError { "proxy authorization required".into() };
        let to = "bedrock.example:443".to_owned();
        let at = || ("proxy.corp:3128".to_owned(), "https_proxy".to_owned());
        let message = refused(wanted(), false, at(), to.clone()).to_string();
        assert!(message.contains("give them in https_proxy,"), "{message}");
        let message = refused(wanted(), true, at(), to).to_string();
        assert!(
            message.contains("refused the credentials in https_proxy (407)"),
            "{message}"
        );
    }
}
