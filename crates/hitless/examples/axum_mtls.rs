//! An axum server with mutual TLS whose certificate *and* client CAs reload without a restart.
//!
//! `axum-server`'s `reload_from_pem_file` reloads a certificate but has no client
//! authentication, and a TLS handshake inside `axum::serve`'s `Listener::accept` makes every
//! connection wait behind the slowest handshake. The recipe instead:
//!
//! 1. accept TCP yourself (and set `TCP_NODELAY`);
//! 2. in the connection's own task, handshake with [`hitless::TlsAcceptor`], which takes the
//!    TLS configuration current when the ClientHello arrives (one atomic load), under a
//!    timeout;
//! 3. (client certificates are verified against the client CAs current at that moment);
//! 4. hand the TLS stream to hyper, with the axum `Router` as its service.
//!
//! ```sh
//! cargo run -p hitless --example axum_mtls -- identity.pem clients-ca.pem 127.0.0.1:8443
//! curl --cacert ca.pem --cert client.crt --key client.key https://localhost:8443/
//! ```
//!
//! Arguments (or environment): the server identity bundle (`HITLESS_IDENTITY`: certificate
//! chain + key in one PEM file), the CA bundle client certificates must chain to
//! (`HITLESS_CLIENT_CA`), the address to listen on (`HITLESS_LISTEN`, default 127.0.0.1:8443).
//! Replace either file (rename, in place, Kubernetes `..data` swap): the next connection gets
//! the new certificate, or is checked against the new CAs with a fresh session cache.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::routing::get;
use axum::{Extension, Router};
use hitless::TlsAcceptor;
use hitless::{
    CertInfo, IdentitySource, ReloadingIdentity, ReloadingServerConfig, ReloadingTrust, TrustSource,
};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// The client certificate of the connection a request came on.
#[derive(Clone, Debug)]
pub struct Caller(pub Arc<CertInfo>);

/// The TLS side: a server identity and a client CA bundle, both reloading (watch mode).
pub fn tls(identity: &Path, client_ca: &Path) -> Result<ReloadingServerConfig, hitless::Error> {
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(identity))
        .on_event(|event| eprintln!("server identity: {event:?}"))
        .build()?;
    let client_cas = ReloadingTrust::builder(TrustSource::cas([client_ca]))
        .on_event(|event| eprintln!("client CAs: {event:?}"))
        .build()?;
    // The handles above may be dropped: the resolver and the configuration keep them alive.
    ReloadingServerConfig::builder(&identity)
        .client_trust(&client_cas)
        .configure(|c| c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()])
        .build()
}

/// The application: plain axum, nothing TLS-specific but the [`Caller`] extension.
pub fn app() -> Router {
    Router::new().route("/", get(hello))
}

async fn hello(Extension(caller): Extension<Caller>) -> String {
    format!("hello {} serial {}\n", caller.0.subject, caller.0.serial)
}

/// Serves `app` over mutual TLS on `listener`, forever.
pub async fn serve(listener: TcpListener, tls: ReloadingServerConfig, app: Router) {
    // Takes the configuration current when each ClientHello arrives.
    let acceptor = TlsAcceptor::new(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // E.g. out of file descriptors: wait instead of spinning.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The configuration for this connection: new identity and new client CAs apply here.
        // No Nagle stall between the handshake and the response.
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return eprintln!("{peer}: handshake failed: {e}"),
                    Err(_) => return eprintln!("{peer}: handshake timed out"),
                };
            // rustls checked the chain against the client CAs; read who it is for the handlers.
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first());
            let Some(Ok(info)) = leaf.map(|der| CertInfo::parse(Path::new("peer"), 1, der)) else {
                return eprintln!("{peer}: no readable client certificate");
            };
            let caller = Caller(Arc::new(info));
            let service = app.map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(caller.clone());
                request
            });
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                .await;
            if let Err(e) = served {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

/// Argument `n`, else environment variable `env`, else `default`.
fn arg(n: usize, env: &str, default: Option<&str>) -> Result<String, String> {
    std::env::args()
        .nth(n)
        .or_else(|| std::env::var(env).ok())
        .or_else(|| default.map(String::from))
        .ok_or_else(|| format!("missing argument {n} (or {env})"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let identity = arg(1, "HITLESS_IDENTITY", None)?;
    let client_ca = arg(2, "HITLESS_CLIENT_CA", None)?;
    let listen = arg(3, "HITLESS_LISTEN", Some("127.0.0.1:8443"))?;
    let tls = tls(Path::new(&identity), Path::new(&client_ca))?;
    let listener = TcpListener::bind(&listen).await?;
    eprintln!("listening on https://{}", listener.local_addr()?);
    serve(listener, tls, app()).await;
    Ok(())
}
