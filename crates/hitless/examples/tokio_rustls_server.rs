//! The plain tokio-rustls accept loop: a TLS echo server whose certificate reloads.
//!
//! Everything else (hyper, axum, tonic) is built on this loop: accept TCP (with
//! `TCP_NODELAY`), hand the handshake to the connection's own task, where
//! [`hitless::TlsAcceptor`] takes the configuration current when the ClientHello arrives.
//!
//! ```sh
//! cargo run -p hitless --example tokio_rustls_server -- identity.pem 127.0.0.1:8443
//! openssl s_client -connect 127.0.0.1:8443 -CAfile ca.pem    # type a line, get it back
//! ```
//!
//! Arguments (or environment): the identity bundle (`HITLESS_IDENTITY`), the address
//! (`HITLESS_LISTEN`, default 127.0.0.1:8443), and optionally a poll interval in seconds
//! (`HITLESS_POLL`) to look at the file every so often instead of watching it.

use std::path::Path;
use std::time::Duration;

use hitless::TlsAcceptor;
use hitless::{Detection, IdentitySource, ReloadingIdentity, ReloadingServerConfig};
use tokio::net::TcpListener;

/// A server configuration serving `identity`, watched (or polled every `poll`).
pub fn tls(
    identity: &Path,
    poll: Option<Duration>,
) -> Result<ReloadingServerConfig, hitless::Error> {
    let detection = match poll {
        Some(interval) => Detection::Poll { interval },
        None => Detection::Watch,
    };
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(identity))
        .detection(detection)
        .on_event(|event| eprintln!("{event:?}"))
        .build()?;
    // Without client trust this is one fixed configuration; `current()` is still the call to
    // make per connection, so that adding client trust later changes nothing here.
    ReloadingServerConfig::builder(&identity).build()
}

/// Echoes every TLS connection on `listener`, forever.
pub async fn serve(listener: TcpListener, tls: ReloadingServerConfig) {
    // Takes the configuration current when each ClientHello arrives.
    let acceptor = TlsAcceptor::new(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
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
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => return eprintln!("{peer}: handshake failed: {e}"),
                    Err(_) => return eprintln!("{peer}: handshake timed out"),
                };
            let (mut from, mut to) = tokio::io::split(stream);
            if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
                eprintln!("{peer}: {e}");
            }
        });
    }
}

/// Argument `n`, else environment variable `env`.
fn arg(n: usize, env: &str) -> Option<String> {
    std::env::args().nth(n).or_else(|| std::env::var(env).ok())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let identity = arg(1, "HITLESS_IDENTITY").ok_or("missing argument 1 (or HITLESS_IDENTITY)")?;
    let listen = arg(2, "HITLESS_LISTEN").unwrap_or_else(|| "127.0.0.1:8443".into());
    let poll = match arg(3, "HITLESS_POLL") {
        Some(seconds) => Some(Duration::from_secs(seconds.parse()?)),
        None => None,
    };
    let listener = TcpListener::bind(&listen).await?;
    eprintln!("echo over TLS on {}", listener.local_addr()?);
    serve(listener, tls(Path::new(&identity), poll)?).await;
    Ok(())
}
