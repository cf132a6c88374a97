//! The leanest reverse proxy this stack allows: tokio's current-thread
//! runtime, hyper's HTTP/1.1 server and client and tokio-rustls (aws-lc-rs), as
//! the sidecar uses them, with nothing of the sidecar's own: no signing,
//! no metrics, no limits or timeouts, no pool (each client connection gets
//! its own upstream connection), bodies streamed through untouched.
//!
//! `bench/run.py` measures it beside nginx's floor row (unless
//! `--no-stack-floor`), so the sidecar's distance to nginx splits into what
//! the stack costs and what the sidecar adds. Not quite the sidecar's
//! stack as configured: hyper's plain HTTP/1.1 server (the sidecar's also
//! detects HTTP/2), no header-read timer, and each client connection paired
//! with one upstream connection instead of a shared pool. A measuring
//! tool, not a product: it trusts its clients and would not survive a
//! hostile one; a reused upstream connection that closed meanwhile fails
//! its request (the benchmark's mock keeps them open).
//!
//! usage: stack_floor LISTEN UPSTREAM_ADDR CA_PEM TLS_NAME

use std::error::Error;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

type BoxError = Box<dyn Error + Send + Sync>;

/// Where requests go, and how to get there.
struct Upstream {
    addr: SocketAddr,
    name: ServerName<'static>,
    host: HeaderValue,
    tls: TlsConnector,
    /// Upstream connections whose client connection has closed, for the
    /// next client: a benchmark's new connections then cost no handshake.
    idle: std::sync::Mutex<Vec<SendRequest<Incoming>>>,
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, addr, ca, name] = args.as_slice() else {
        return Err("usage: stack_floor LISTEN UPSTREAM_ADDR CA_PEM TLS_NAME".into());
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let addr: SocketAddr = addr.parse()?;
    let upstream = Arc::new(Upstream {
        addr,
        name: ServerName::try_from(name.clone())?,
        host: HeaderValue::from_str(&format!("{name}:{}", addr.port()))?,
        tls: TlsConnector::from(Arc::new(config)),
        idle: std::sync::Mutex::new(Vec::new()),
    });
    let listen: SocketAddr = listen.parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream))
}

async fn serve(listen: SocketAddr, upstream: Arc<Upstream>) -> Result<(), BoxError> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        // A failed accept (out of descriptors, say) loses that client, not
        // the run; the pause keeps a lasting failure from spinning.
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        if stream.set_nodelay(true).is_err() {
            continue;
        }
        let upstream = upstream.clone();
        tokio::spawn(async move {
            // HTTP/1.1 serves one request at a time per connection, so the
            // lock is never contended; it only lets the service share it.
            let sender = Arc::new(Mutex::new(None));
            let held = sender.clone();
            let to = upstream.clone();
            let service = service_fn(move |request| forward(to.clone(), held.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
            let open = sender.lock().await.take();
            if let (Some(open), Ok(mut idle)) = (open, upstream.idle.lock()) {
                idle.push(open);
            }
        });
    }
}

async fn forward(
    upstream: Arc<Upstream>,
    sender: Arc<Mutex<Option<SendRequest<Incoming>>>>,
    mut request: Request<Incoming>,
) -> Result<Response<Incoming>, BoxError> {
    let mut slot = sender.lock().await;
    let mut open = match slot.take().or_else(|| upstream.take_idle()) {
        Some(open) if !open.is_closed() => open,
        _ => connect(&upstream).await?,
    };
    open.ready().await?;
    let origin = request.uri().path_and_query().cloned();
    *request.uri_mut() = origin.map_or_else(|| Uri::from_static("/"), Uri::from);
    request.headers_mut().insert(HOST, upstream.host.clone());
    let response = open.send_request(request).await;
    *slot = Some(open);
    Ok(response?)
}

impl Upstream {
    fn take_idle(&self) -> Option<SendRequest<Incoming>> {
        self.idle.lock().ok()?.pop()
    }
}

async fn connect(upstream: &Upstream) -> Result<SendRequest<Incoming>, BoxError> {
    let tcp = TcpStream::connect(upstream.addr).await?;
    tcp.set_nodelay(true)?;
    let tls = upstream.tls.connect(upstream.name.clone(), tcp).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(connection);
    Ok(sender)
}
