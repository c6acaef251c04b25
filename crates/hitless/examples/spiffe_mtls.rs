//! Mutual TLS between two workloads of a SPIFFE trust domain, with identity and trust from the
//! Workload API (a SPIRE agent, or any implementation): the server presents its X.509-SVID
//! and requires one from the trust domain's bundle; the client presents the same SVID. Both
//! follow the agent's rotations without a restart.
//!
//! It serves on loopback and calls itself every 200 ms for the given number of seconds, then
//! prints how many handshakes failed (it exits with status 1 if any did, or if no SVID rotation
//! was seen when `--expect-rotation` is given). `tests/spire/run.sh` runs it against real SPIRE.
//!
//! ```text
//! SPIFFE_ENDPOINT_SOCKET=unix:///tmp/spire-agent/public/api.sock \
//!     cargo run -p hitless --features spiffe,tokio --example spiffe_mtls -- 60 --expect-rotation
//! ```
//!
//! The client checks the server's name (`localhost`): register the workload with a DNS name
//! (`spire-server entry create ... -dns localhost`).

use std::collections::BTreeSet;
use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hitless::{ReloadingClientConfig, ReloadingServerConfig, SpiffeSource, TlsAcceptor};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(Ok(30), |s| s.parse())?;
    let expect_rotation = args.any(|a| a == "--expect-rotation");

    // The endpoint from SPIFFE_ENDPOINT_SOCKET; waits for the first valid SVID.
    let spiffe = SpiffeSource::builder().connect().await?;
    println!(
        "SVID {} from {}",
        spiffe.status().spiffe_id.unwrap_or_default(),
        spiffe.endpoint()
    );
    let report = exercise(&spiffe, Duration::from_secs(seconds)).await?;
    println!(
        "{} handshakes, {} failed, {} SVIDs served; stream: {}",
        report.ok,
        report.failed,
        report.svids_served,
        spiffe.status()
    );
    if report.failed > 0 || (expect_rotation && report.svids_served < 2) {
        std::process::exit(1);
    }
    Ok(())
}

/// What [`exercise`] saw.
#[derive(Debug)]
pub struct Report {
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Distinct server SVIDs seen.
    pub svids_served: usize,
}

/// Serves mutual TLS on loopback with the source's identity and trust, and calls itself every
/// 200 ms for `duration` with the same identity.
pub async fn exercise(spiffe: &SpiffeSource, duration: Duration) -> Result<Report, Box<dyn Error>> {
    let server = ReloadingServerConfig::builder(spiffe.identity())
        .client_trust(spiffe.trust())
        .build()?;
    let client = ReloadingClientConfig::builder(spiffe.trust())
        .identities(vec![spiffe.identity().clone()])
        .build()?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(server);
    let accepting = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let accepted =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                if let Ok(Ok(mut tls)) = accepted {
                    let _ = tls.write_all(b"hello\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });

    let mut report = Report {
        ok: 0,
        failed: 0,
        svids_served: 0,
    };
    let mut served = BTreeSet::new();
    let end = Instant::now() + duration;
    while Instant::now() < end {
        match call(addr, client.current()).await {
            Ok(leaf) => {
                report.ok += 1;
                if served.insert(leaf) {
                    println!(
                        "serving SVID #{} (identity generation {}, trust generation {})",
                        served.len(),
                        spiffe.identity().status().generation,
                        spiffe.trust().status().generation
                    );
                }
            }
            Err(e) => {
                report.failed += 1;
                eprintln!("handshake failed: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    accepting.abort();
    report.svids_served = served.len();
    Ok(report)
}

/// One mutual-TLS call; returns the server's leaf certificate (DER).
async fn call(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<Vec<u8>, Box<dyn Error>> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = tokio::time::timeout(
        Duration::from_secs(10),
        connector.connect(ServerName::try_from("localhost")?, tcp),
    )
    .await??;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    if answer != "hello\n" {
        return Err(format!("unexpected answer {answer:?}").into());
    }
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no server certificate")?;
    Ok(leaf.to_vec())
}
