//! axum-server, which owns its accept loop, with mutual TLS whose certificate *and* client CAs
//! reload without a restart.
//!
//! axum-server keeps one `Arc<ServerConfig>` in its `RustlsConfig` and takes it for each
//! accepted connection; `RustlsConfig::reload_from_config` swaps it. So the recipe is one
//! subscription: every configuration a [`ReloadingServerConfig`] builds (after a rotation of
//! the identity or a change of the client CAs) is handed to `reload_from_config`, and the next
//! accepted connection uses it. Client certificates are verified by hitless' verifier against
//! the client CAs current *when the certificate is verified*, whatever configuration the
//! connection was accepted with, and sessions made under the previous trust no longer resume.
//!
//! When you own the accept loop, [`hitless::TlsAcceptor`] (see `axum_mtls.rs`) is still the
//! better accept step: it takes the configuration when the ClientHello arrives rather than
//! when the TCP connection was accepted, so the CA names of the CertificateRequest are those
//! trusted at that moment even for a connection that sat idle across a trust change, and
//! nothing depends on a callback having run. With axum-server the verdict is current all the
//! same (it is taken at verification); only those CA names, which guide the client's choice of
//! certificate, may be the previous ones on such a connection.
//!
//! ```sh
//! cargo run -p hitless --example axum_server_mtls -- identity.pem clients-ca.pem 127.0.0.1:8443
//! curl --cacert ca.pem --cert client.crt --key client.key https://localhost:8443/
//! ```
//!
//! Arguments (or environment): the server identity bundle (`HITLESS_IDENTITY`), the CA bundle
//! client certificates must chain to (`HITLESS_CLIENT_CA`), the address to listen on
//! (`HITLESS_LISTEN`, default 127.0.0.1:8443).

use std::path::Path;

use axum::routing::get;
use axum::Router;
use axum_server::tls_rustls::RustlsConfig;
use hitless::{
    IdentitySource, ReloadingIdentity, ReloadingServerConfig, ReloadingTrust, TrustSource,
};

/// The TLS side: a server identity and a client CA bundle, both reloading (watch mode), with
/// the aws-lc-rs provider (axum-server is built here without a provider of its own).
pub fn tls(identity: &Path, client_ca: &Path) -> Result<ReloadingServerConfig, hitless::Error> {
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(identity))
        .crypto_provider(provider.clone())
        .on_event(|event| eprintln!("server identity: {event:?}"))
        .build()?;
    let client_cas = ReloadingTrust::builder(TrustSource::cas([client_ca]))
        .crypto_provider(provider)
        .on_event(|event| eprintln!("client CAs: {event:?}"))
        .build()?;
    ReloadingServerConfig::builder(&identity)
        .client_trust(&client_cas)
        .configure(|c| c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()])
        .build()
}

/// An axum-server configuration that follows `tls`: every new configuration is handed to
/// `reload_from_config` as soon as it is in use.
pub fn follow(tls: &ReloadingServerConfig) -> RustlsConfig {
    let config = RustlsConfig::from_config(tls.current());
    let follower = config.clone();
    tls.subscribe(move |change| follower.reload_from_config(change.config.clone()));
    // A change between `current()` and `subscribe` was announced to nobody: take it now.
    config.reload_from_config(tls.current());
    config
}

/// The application: plain axum.
pub fn app() -> Router {
    Router::new().route("/", get(|| async { "hello\n" }))
}

/// Serves `app` over mutual TLS on `listener`, until an error stops axum-server.
pub async fn serve(
    listener: std::net::TcpListener,
    config: RustlsConfig,
    app: Router,
) -> std::io::Result<()> {
    // tokio takes the socket as it is: it must be non-blocking.
    listener.set_nonblocking(true)?;
    axum_server::from_tcp_rustls(listener, config)?
        .serve(app.into_make_service())
        .await
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
    let listener = std::net::TcpListener::bind(&listen)?;
    eprintln!("listening on https://{}", listener.local_addr()?);
    serve(listener, follow(&tls), app()).await?;
    Ok(())
}
