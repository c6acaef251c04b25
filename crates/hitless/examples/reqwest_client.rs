//! A reqwest client whose client certificate and trusted CAs reload, without rebuilding the
//! client.
//!
//! reqwest takes one fixed `rustls::ClientConfig` (`tls_backend_preconfigured`). The reloading
//! goes *inside* it: a [`ClientIdentityResolver`] presents the current client certificate at
//! each handshake and a [`ReloadingServerCertVerifier`] checks servers against the current CA
//! bundle and CRLs. Both cost one atomic load per handshake.
//!
//! ```sh
//! cargo run -p hitless --example reqwest_client -- https://localhost:8443/ client.pem ca.pem
//! ```
//!
//! Arguments (or environment): the URL (`HITLESS_URL`), the client identity bundle
//! (`HITLESS_IDENTITY`: certificate chain + key in one PEM file), the CA bundle servers must
//! chain to (`HITLESS_CA`). It makes one request a second; replace either file while it runs.
//!
//! What a fixed configuration cannot do: connections reqwest keeps in its pool keep the
//! certificates they were made with (a new connection gets the new ones), and the
//! configuration's session cache outlives a trust change, so resumption is switched off below:
//! a resumed session skips certificate verification, which would let a server the new CAs
//! refuse back in. Where you own the connector, prefer [`hitless::ReloadingClientConfig`]
//! (see `hyper_client.rs`), which starts a new session cache at each trust change instead.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hitless::{
    ClientIdentityResolver, IdentitySource, ReloadingIdentity, ReloadingServerCertVerifier,
    ReloadingTrust, TrustSource,
};

/// A fixed rustls configuration whose client identity and server trust reload by themselves.
pub fn tls_config(identity: &Path, ca: &Path) -> Result<rustls::ClientConfig, hitless::Error> {
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(identity))
        .on_event(|event| eprintln!("client identity: {event:?}"))
        .build()?;
    let trust = ReloadingTrust::builder(TrustSource::cas([ca]))
        .on_event(|event| eprintln!("server CAs: {event:?}"))
        .build()?;
    // The provider the verifier uses (never `ClientConfig::builder()`, which panics when
    // rustls has two providers compiled in and none is installed process-wide).
    let mut config = rustls::ClientConfig::builder_with_provider(trust.crypto_provider().clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| hitless::Error::CryptoProvider { source })?
        // `dangerous` only because the verifier is not rustls' own: it runs rustls' WebPKI
        // verifier, built from the current CA bundle and CRLs, with full name checks.
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ReloadingServerCertVerifier::new(trust)))
        .with_client_cert_resolver(Arc::new(ClientIdentityResolver::new(vec![identity])));
    // reqwest sets ALPN only on configurations it builds itself.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// A reqwest client using [`tls_config`].
pub fn client(identity: &Path, ca: &Path) -> Result<reqwest::Client, Box<dyn std::error::Error>> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(identity, ca)?)
        .build()?)
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
    let url = arg(1, "HITLESS_URL")?;
    let identity = arg(2, "HITLESS_IDENTITY")?;
    let ca = arg(3, "HITLESS_CA")?;
    let client = client(Path::new(&identity), Path::new(&ca))?;
    loop {
        match client.get(&url).send().await {
            Ok(response) => println!("{} {}", response.status(), response.text().await?.trim()),
            Err(e) => println!("failed: {e}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
