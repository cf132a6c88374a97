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
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::BoxError;
use crate::egress::EgressProxy;

/// TLS over [`Dial`], within a timeout: what the pool and the streams
/// client connect with.
#[derive(Clone)]
pub struct Connector {
    tls: HttpsConnector<Dial>,
    /// The dial's proxy, to name it when the timeout strikes.
    via: Option<EgressProxy>,
    timeout: Duration,
}

/// TCP to an upstream, or to the egress proxy and a tunnel on from it.
#[derive(Clone)]
pub struct Dial {
    /// Owns TCP options, and the timeout of each TCP connect.
    tcp: HttpConnector,
    via: Option<EgressProxy>,
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
    #[error("the egress proxy {proxy} wants credentials for a tunnel to {to} (407): give them in HTTPS_PROXY, http://user:password@host:port")]
    CredentialsWanted { proxy: String, to: String },
    #[error("the egress proxy {proxy} refused the credentials in HTTPS_PROXY (407) for a tunnel to {to}")]
    CredentialsRefused { proxy: String, to: String },
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
    /// Connects through `tls` over `dial`, giving up after `timeout`.
    pub fn new(
        dial: Dial,
        tls: impl FnOnce(Dial) -> HttpsConnector<Dial>,
        timeout: Duration,
    ) -> Self {
        let via = dial.via.clone();
        Self {
            tls: tls(dial),
            via,
            timeout,
        }
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
    /// `tcp` connects (and times out each TCP connect) on its own.
    pub fn new(tcp: HttpConnector, via: Option<EgressProxy>) -> Self {
        Self { tcp, via }
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
        let proxy = proxy.address().to_owned();
        let to = host_port(&dst);
        let tunnelled = tunnel.call(dst);
        Box::pin(async move {
            tunnelled
                .await
                .map_err(|e| refused(e.into(), credentials, proxy, to).into())
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
fn refused(e: BoxError, credentials: bool, proxy: String, to: String) -> DialError {
    let text = e.to_string();
    if text.ends_with("failed to create underlying connection") {
        DialError::ProxyUnreachable {
            proxy,
            to,
            source: e,
        }
    } else if text.ends_with("proxy authorization required") && credentials {
        DialError::CredentialsRefused { proxy, to }
    } else if text.ends_with("proxy authorization required") {
        DialError::CredentialsWanted { proxy, to }
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
