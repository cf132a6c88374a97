//! Connecting to an upstream: TCP, direct or in the egress proxy's
//! CONNECT tunnel, then TLS, the whole within the connect timeout.
//!
//! The tunnel is hyper-util's and TLS hyper-rustls's (ALPN unchanged
//! inside a tunnel). The timeout is over all of it: a handshake that
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
    #[error("the egress proxy {proxy} did not open a tunnel to {to}; a 407 means it wants credentials in HTTPS_PROXY, another refusal usually that its allow list lacks the host")]
    Tunnel {
        proxy: String,
        to: String,
        #[source]
        source: BoxError,
    },
    #[error("connecting to {to} timed out after {after:?} (TCP and TLS)")]
    TimedOut { to: String, after: Duration },
    #[error("connecting through the egress proxy {proxy} to {to} timed out after {after:?} (TCP, CONNECT and TLS)")]
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
        let to = dst.authority().map(|a| a.to_string()).unwrap_or_default();
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
        let proxy = proxy.address().to_owned();
        let to = dst.authority().map(|a| a.to_string()).unwrap_or_default();
        let tunnelled = tunnel.call(dst);
        Box::pin(async move {
            tunnelled.await.map_err(|e| {
                DialError::Tunnel {
                    proxy,
                    to,
                    source: e.into(),
                }
                .into()
            })
        })
    }
}
