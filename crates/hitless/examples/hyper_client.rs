//! A hyper client (hyper-util's pooled `Client`) whose TLS follows a
//! [`ReloadingClientConfig`]: the client certificate and the trusted CAs reload by themselves.
//!
//! The connector below takes the client configuration current at each new connection (one
//! atomic load): a rotated client certificate is presented from the next connection on, and a
//! trust change starts a new session cache, so no session resumed from before it skips the new
//! verdict. Pooled connections keep the credentials they were made with.
//!
//! ```sh
//! cargo run -p hitless --example hyper_client -- https://localhost:8443/ client.pem ca.pem
//! ```
//!
//! Arguments (or environment): the URL (`HITLESS_URL`), the client identity bundle
//! (`HITLESS_IDENTITY`), the CA bundle servers must chain to (`HITLESS_CA`). It makes one
//! request a second and prints the server certificate each response came with.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hitless::{
    CertInfo, IdentitySource, ReloadingClientConfig, ReloadingIdentity, ReloadingTrust, TrustSource,
};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The client side: a client identity and a CA bundle, both reloading (watch mode).
pub fn tls(identity: &Path, ca: &Path) -> Result<ReloadingClientConfig, hitless::Error> {
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(identity)).build()?;
    let trust = ReloadingTrust::builder(TrustSource::cas([ca])).build()?;
    ReloadingClientConfig::builder(&trust)
        .identities(vec![identity])
        .configure(|c| c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()])
        .build()
}

/// Opens `https` connections with the client configuration current at that moment.
#[derive(Clone, Debug)]
pub struct Connector {
    tls: ReloadingClientConfig,
}

impl Connector {
    /// A connector following `tls`.
    pub fn new(tls: ReloadingClientConfig) -> Self {
        Connector { tls }
    }
}

impl tower::Service<Uri> for Connector {
    type Response = Tls;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Tls>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.current();
        Box::pin(async move {
            let invalid =
                |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: {what}"));
            if uri.scheme_str() != Some("https") {
                return Err(invalid("only https is supported"));
            }
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']'); // IPv6 literal
            let name = ServerName::try_from(host.to_owned()).map_err(|_| invalid("bad host"))?;
            let tcp = TcpStream::connect((host, uri.port_u16().unwrap_or(443))).await?;
            let stream = TlsConnector::from(config).connect(name, tcp).await?;
            Ok(Tls(TokioIo::new(stream)))
        })
    }
}

/// The leaf certificate the server presented, attached to every response on its connection.
#[derive(Clone, Debug)]
pub struct ServerCertificate(pub CertificateDer<'static>);

/// A client TLS connection, as hyper needs it.
#[derive(Debug)]
pub struct Tls(TokioIo<TlsStream<TcpStream>>);

impl Connection for Tls {
    fn connected(&self) -> Connected {
        let (_, session) = self.0.inner().get_ref();
        let mut connected = Connected::new();
        if session.alpn_protocol() == Some(b"h2") {
            connected = connected.negotiated_h2();
        }
        match session.peer_certificates().and_then(|c| c.first()) {
            Some(leaf) => connected.extra(ServerCertificate(leaf.clone().into_owned())),
            None => connected,
        }
    }
}

impl hyper::rt::Read for Tls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Tls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A pooled hyper client over [`Connector`].
pub fn client(tls: ReloadingClientConfig) -> Client<Connector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(Connector::new(tls))
}

/// Argument `n`, else environment variable `env`.
fn arg(n: usize, env: &str) -> Result<String, String> {
    std::env::args()
        .nth(n)
        .or_else(|| std::env::var(env).ok())
        .ok_or_else(|| format!("missing argument {n} (or {env})"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url: Uri = arg(1, "HITLESS_URL")?.parse()?;
    let identity = arg(2, "HITLESS_IDENTITY")?;
    let ca = arg(3, "HITLESS_CA")?;
    let client = client(tls(Path::new(&identity), Path::new(&ca))?);
    loop {
        match client.get(url.clone()).await {
            Ok(response) => {
                let server = response
                    .extensions()
                    .get::<ServerCertificate>()
                    .and_then(|c| CertInfo::parse(Path::new("server"), 1, &c.0).ok())
                    .map_or_else(
                        || "?".into(),
                        |c| format!("{} serial {}", c.subject, c.serial),
                    );
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                println!(
                    "{status} from {server}: {}",
                    String::from_utf8_lossy(&body).trim()
                );
            }
            Err(e) => println!("failed: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
