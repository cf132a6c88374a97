//! TCP to an upstream: direct, or in the egress proxy's CONNECT tunnel.
//!
//! The tunnel is hyper-util's; one connect timeout bounds both ways. TLS
//! and ALPN happen above, in hyper-rustls, unchanged inside a tunnel.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::BoxError;
use crate::egress::EgressProxy;

/// TCP to an upstream, or to the egress proxy and a tunnel on from it.
#[derive(Clone)]
pub struct Dial {
    /// Owns TCP options and the connect timeout of direct connections.
    tcp: HttpConnector,
    via: Option<EgressProxy>,
    timeout: Duration,
}

/// Why a tunnel through the egress proxy was not opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("the egress proxy {proxy} did not open a tunnel to {to}; a 407 means it wants credentials in HTTPS_PROXY, another refusal usually that its allow list lacks the host")]
    Tunnel {
        proxy: String,
        to: String,
        #[source]
        source: BoxError,
    },
    #[error("connecting through the egress proxy {proxy} to {to} timed out after {after:?}")]
    TimedOut {
        proxy: String,
        to: String,
        after: Duration,
    },
}

impl Dial {
    /// `tcp` connects (and times out) on its own; `timeout` bounds a
    /// tunnel's TCP connect and CONNECT exchange together.
    pub fn new(tcp: HttpConnector, via: Option<EgressProxy>, timeout: Duration) -> Self {
        Self { tcp, via, timeout }
    }
}

type Dialing = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl Service<Uri> for Dial {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Dialing;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Dialing {
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
        let after = self.timeout;
        let tunnelled = tunnel.call(dst);
        Box::pin(async move {
            match tokio::time::timeout(after, tunnelled).await {
                Ok(Ok(io)) => Ok(io),
                Ok(Err(e)) => Err(DialError::Tunnel {
                    proxy,
                    to,
                    source: e.into(),
                }
                .into()),
                Err(_) => Err(DialError::TimedOut { proxy, to, after }.into()),
            }
        })
    }
}
