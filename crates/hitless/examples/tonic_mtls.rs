//! A tonic gRPC server and client with mutual TLS, both reloading their certificates and CAs.
//!
//! tonic's own `ServerTlsConfig`/`ClientTlsConfig` take fixed PEM. The recipe instead:
//!
//! - server: your own accept loop does the TLS handshake with [`hitless::TlsAcceptor`] (the
//!   configuration current when the ClientHello arrives: one atomic load) and feeds finished TLS
//!   streams to `Server::serve_with_incoming`; the client certificate reaches the handlers
//!   through `Request::peer_certs()`;
//! - client: `Endpoint::connect_with_connector` with a connector that does the handshake with
//!   `ReloadingClientConfig::current()`, at every (re)connection.
//!
//! The service is the standard gRPC health service (`tonic-health`), so no protoc is needed.
//!
//! ```sh
//! cargo run -p hitless --example tonic_mtls -- server server.pem ca.pem 127.0.0.1:50051
//! cargo run -p hitless --example tonic_mtls -- client client.pem ca.pem 127.0.0.1:50051 localhost
//! ```
//!
//! Arguments (or environment): `server` or `client` (`HITLESS_ROLE`), the identity bundle
//! (`HITLESS_IDENTITY`), the CA bundle the peer must chain to (`HITLESS_CA`), the address
//! (`HITLESS_ADDR`), and for the client the server's name (`HITLESS_SERVER_NAME`, default
//! `localhost`). An HTTP/2 connection lives long: a rotated certificate is used from the next
//! connection on; the client below connects anew for every call to show it.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use hitless::TlsAcceptor;
use hitless::{
    CertInfo, IdentitySource, ReloadingClientConfig, ReloadingIdentity, ReloadingServerConfig,
    ReloadingTrust, TrustSource,
};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic::{Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// An identity and the CAs the peer must chain to, both reloading (watch mode).
fn credentials(
    identity: &Path,
    ca: &Path,
) -> Result<(ReloadingIdentity, ReloadingTrust), hitless::Error> {
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(identity)).build()?;
    let trust = ReloadingTrust::builder(TrustSource::cas([ca])).build()?;
    Ok((identity, trust))
}

/// The server's TLS: its identity, and the CAs client certificates must chain to.
pub fn server_tls(
    identity: &Path,
    client_ca: &Path,
) -> Result<ReloadingServerConfig, hitless::Error> {
    let (identity, client_cas) = credentials(identity, client_ca)?;
    ReloadingServerConfig::builder(&identity)
        .client_trust(&client_cas)
        .configure(|c| c.alpn_protocols = vec![b"h2".to_vec()])
        .build()
}

/// The client's TLS: its identity, and the CAs the server must chain to.
pub fn client_tls(identity: &Path, ca: &Path) -> Result<ReloadingClientConfig, hitless::Error> {
    let (identity, trust) = credentials(identity, ca)?;
    ReloadingClientConfig::builder(&trust)
        .identities(vec![identity])
        .configure(|c| c.alpn_protocols = vec![b"h2".to_vec()])
        .build()
}

/// Finished TLS connections on `listener`, each handshake in its own task (a slow client
/// never holds up the others). Stops accepting when the server is dropped.
fn tls_incoming(
    listener: TcpListener,
    tls: ReloadingServerConfig,
) -> ReceiverStream<Result<TlsStream<TcpStream>, Infallible>> {
    let (ready, incoming) = mpsc::channel(64);
    // Takes the configuration current when each ClientHello arrives.
    let acceptor = TlsAcceptor::new(tls);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = ready.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // No Nagle stall between the handshake and the response.
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let ready = ready.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => eprintln!("{peer}: handshake failed: {e}"),
                    Err(_) => eprintln!("{peer}: handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// Serves the gRPC health service over mutual TLS; `on_call` sees each caller's certificate.
pub async fn serve(
    listener: TcpListener,
    tls: ReloadingServerConfig,
    on_call: impl Fn(&CertInfo) + Clone + Send + Sync + 'static,
) -> Result<(), tonic::transport::Error> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    // Who is calling: the client certificate rustls verified on this request's connection.
    let caller = move |request: Request<()>| {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let info = CertInfo::parse(Path::new("peer"), 1, leaf)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        on_call(&info);
        Ok(request)
    };
    Server::builder()
        .add_service(InterceptedService::new(health, caller))
        .serve_with_incoming(tls_incoming(listener, tls))
        .await
}

/// A channel to `addr`; every (re)connection handshakes with the client configuration current
/// at that moment. `on_connect` sees the server certificate of each new connection.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    tls: ReloadingClientConfig,
    on_connect: impl Fn(&CertInfo) + Clone + Send + Sync + 'static,
) -> Result<Channel, Box<dyn std::error::Error + Send + Sync>> {
    let name = ServerName::try_from(server_name.to_owned())?;
    let connector = tower::service_fn(move |_: Uri| {
        let (config, name, on_connect) = (tls.current(), name.clone(), on_connect.clone());
        async move {
            let tcp = TcpStream::connect(addr).await?;
            let stream = TlsConnector::from(config).connect(name, tcp).await?;
            if let Some(leaf) = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
            {
                on_connect(
                    &CertInfo::parse(Path::new("server"), 1, leaf).map_err(io::Error::other)?,
                );
            }
            Ok::<_, io::Error>(TokioIo::new(stream))
        }
    });
    // The connector does TLS itself: the URI is `http` so that tonic does not try to, and
    // serves only as the `:authority` of requests.
    let endpoint = Endpoint::from_shared(format!("http://{server_name}:{}", addr.port()))?;
    Ok(endpoint.connect_with_connector(connector).await?)
}

/// One health check over a new connection.
pub async fn check(
    addr: SocketAddr,
    server_name: &str,
    tls: ReloadingClientConfig,
    on_connect: impl Fn(&CertInfo) + Clone + Send + Sync + 'static,
) -> Result<i32, Box<dyn std::error::Error + Send + Sync>> {
    let channel = connect(addr, server_name, tls, on_connect).await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(response.into_inner().status)
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
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let role = arg(1, "HITLESS_ROLE", None)?;
    let identity = arg(2, "HITLESS_IDENTITY", None)?;
    let ca = arg(3, "HITLESS_CA", None)?;
    let addr = arg(4, "HITLESS_ADDR", Some("127.0.0.1:50051"))?;
    let (identity, ca) = (Path::new(&identity), Path::new(&ca));
    if role == "server" {
        let listener = TcpListener::bind(&addr).await?;
        eprintln!("gRPC over mutual TLS on {}", listener.local_addr()?);
        let on_call =
            |caller: &CertInfo| eprintln!("call from {} serial {}", caller.subject, caller.serial);
        serve(listener, server_tls(identity, ca)?, on_call).await?;
        return Ok(());
    }
    let name = arg(5, "HITLESS_SERVER_NAME", Some("localhost"))?;
    let tls = client_tls(identity, ca)?;
    let on_connect =
        |server: &CertInfo| eprintln!("connected to {} serial {}", server.subject, server.serial);
    loop {
        match check(addr.parse()?, &name, tls.clone(), on_connect).await {
            Ok(status) => println!("health status {status} (1 = serving)"),
            Err(e) => println!("failed: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
