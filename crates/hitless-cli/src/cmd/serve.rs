//! `hitless serve`: an HTTPS server that enforces mutual TLS (with `--client-ca`) and reloads its
//! identity while it runs.
//!
//! Every accepted TCP connection is handshaken with the current configuration; the identity is
//! resolved from the reloading snapshot (one atomic load) so rotations need no restart and open
//! connections keep the certificate they started with.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hitless::{
    CertInfo, Detection, IdentitySource, ReloadingIdentity, ReloadingServerConfig, ReloadingTrust,
    TrustSource,
};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::http::{self, Body};

/// How the identity notices changes on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReloadMode {
    /// File-system notifications (default): picks up an atomic rename in milliseconds.
    Watch,
    /// Compare file identities every --poll-interval (±10% jitter).
    Poll,
    /// Only on SIGHUP.
    Manual,
}

/// Flags of `hitless serve`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  hitless serve --listen 127.0.0.1:8443 --cert server.crt --key server.key --client-ca ca.pem
  hitless serve --identity identity.pem --client-ca ca.pem --reload poll --poll-interval 30s")]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// PEM certificate chain (with --key).
    #[arg(long, requires = "key", conflicts_with = "identity")]
    pub cert: Option<PathBuf>,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (with --cert).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// One PEM bundle holding certificates and key in any order (what an agent template renders).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// PEM file of CA certificates trusted for client certificates; requires every client to
    /// present one (mutual TLS). Repeatable.
    #[arg(long = "client-ca")]
    pub client_ca: Vec<PathBuf>,
    /// CRL file (PEM or DER) applied to client certificates; reloaded like the rest.
    /// Repeatable; requires --client-ca.
    #[arg(long, requires = "client_ca")]
    pub crl: Vec<PathBuf>,
    /// When the client trust or CRLs change, re-check the client certificate of every open
    /// connection and close those the new trust refuses.
    #[arg(long, requires = "client_ca")]
    pub drop_untrusted: bool,
    /// How changes on disk are noticed.
    #[arg(long, value_enum, default_value_t = ReloadMode::Watch)]
    pub reload: ReloadMode,
    /// Interval of --reload poll.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub poll_interval: Duration,
    /// How long an inconsistent read (a writer still busy) waits before a retry.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "200ms")]
    pub quiet_period: Duration,
    /// Serve a leaf that is expired or not yet valid instead of refusing it.
    #[arg(long)]
    pub accept_expired: bool,
    /// On SIGINT/SIGTERM, how long requests in flight may take to finish.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub shutdown_timeout: Duration,
}

impl Args {
    fn source(&self) -> anyhow::Result<IdentitySource> {
        match (&self.identity, &self.cert, &self.key) {
            (Some(bundle), None, None) => Ok(IdentitySource::bundle(bundle)),
            (None, Some(cert), Some(key)) => Ok(IdentitySource::pair(cert, key)),
            _ => bail!("give either --identity BUNDLE or --cert CERT --key KEY"),
        }
    }

    fn detection(&self) -> Detection {
        match self.reload {
            ReloadMode::Watch => Detection::Watch,
            ReloadMode::Poll => Detection::Poll {
                interval: self.poll_interval,
            },
            ReloadMode::Manual => Detection::Manual,
        }
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // aws-lc checks once per process, on first use of its random generator, whether it runs in
    // a VM snapshot (/dev/sysgenid): do it now, not during the first handshake.
    let mut warm = [0u8; 16];
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut warm);
    let identity = ReloadingIdentity::builder(args.source()?)
        .name("server")
        .detection(args.detection())
        .quiet_period(args.quiet_period)
        .accept_expired(args.accept_expired)
        .build()
        .context("no valid server identity")?;
    let trust = if args.client_ca.is_empty() {
        tracing::warn!(
            "no --client-ca given: serving server-authenticated TLS only, clients are not verified"
        );
        None
    } else {
        Some(
            ReloadingTrust::builder(
                TrustSource::cas(args.client_ca.clone()).with_crls(args.crl.clone()),
            )
            .name("client-trust")
            .detection(args.detection())
            .quiet_period(args.quiet_period)
            .build()
            .context("no valid client trust bundle")?,
        )
    };
    let mut builder = ReloadingServerConfig::builder(identity.resolver())
        .configure(|c| c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    if let Some(trust) = &trust {
        builder = builder.client_trust(trust.clone());
    }
    let configs = builder
        .build()
        .context("cannot build the TLS configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, identity, trust, configs))
}

async fn serve(
    args: Args,
    identity: ReloadingIdentity,
    trust: Option<ReloadingTrust>,
    configs: ReloadingServerConfig,
) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr().context("listener has no address")?;
    tracing::info!(
        listen = %local,
        mutual_tls = trust.is_some(),
        drop_untrusted = args.drop_untrusted,
        reload = ?args.reload,
        "serving HTTPS"
    );
    spawn_sighup_reload(identity.clone(), trust.clone());
    let (trust_tx, trust_rx) = tokio::sync::watch::channel(configs.trust_generation());
    configs.on_trust_change(move |generation| {
        trust_tx.send_replace(generation);
    });
    let graceful = GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // The configuration current now: the trust and session cache of this moment.
        let acceptor = TlsAcceptor::from(configs.current());
        let identity = identity.clone();
        let configs = configs.clone();
        let mut trust_changes = trust_rx.clone();
        let drop_untrusted = args.drop_untrusted;
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, "handshake refused: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "handshake timed out");
                        return;
                    }
                };
            let chain: Vec<CertificateDer<'static>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                .unwrap_or_default();
            let client = chain
                .first()
                .and_then(|der| CertInfo::parse(std::path::Path::new("peer"), 1, der).ok());
            let client = Arc::new(client);
            let subject = client.as_ref().as_ref().map(|c| c.subject.clone());
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, &client, &identity);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            let served = watcher.watch(conn.into_owned());
            // With --drop-untrusted, a trust change re-checks this connection's client
            // certificate; if the new trust refuses it, the connection is dropped (closed).
            let untrusted = async {
                if !drop_untrusted || chain.is_empty() {
                    return std::future::pending::<rustls::Error>().await;
                }
                loop {
                    if trust_changes.changed().await.is_err() {
                        return std::future::pending().await;
                    }
                    if let Err(e) = configs.verify_client(&chain) {
                        return e;
                    }
                }
            };
            tokio::select! {
                result = served => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, "connection ended with an error: {e}");
                    }
                }
                reason = untrusted => {
                    tracing::warn!(
                        %peer,
                        client = subject.as_deref().unwrap_or("?"),
                        "closing open connection: the new trust refuses its client certificate: {reason}"
                    );
                }
            }
        });
    }

    drop(listener);
    tracing::info!("shutting down: no new connections, waiting for requests in flight");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(args.shutdown_timeout) => {
            tracing::warn!("shutdown timeout reached, closing remaining connections");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn respond(
    req: &Request<Incoming>,
    client: &Option<CertInfo>,
    identity: &ReloadingIdentity,
) -> Response<Body> {
    match req.uri().path() {
        "/healthz" => http::text(StatusCode::OK, "ok\n"),
        "/" => {
            let serving = identity.current();
            let body = json!({
                "client": client.as_ref().map(|c| json!({
                    "subject": c.subject,
                    "serial": c.serial,
                    "fingerprint": c.fingerprint,
                })),
                "server": serving.as_ref().map(|s| json!({
                    "generation": s.generation,
                    "fingerprint": s.value.leaf().fingerprint,
                    "serial": s.value.leaf().serial,
                    "subject": s.value.leaf().subject,
                })),
            });
            http::json(StatusCode::OK, &body)
        }
        _ => http::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Reloads the identity and trust on every SIGHUP, whatever the detection mode.
fn spawn_sighup_reload(identity: ReloadingIdentity, trust: Option<ReloadingTrust>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            let identity = identity.clone();
            let trust = trust.clone();
            // reload() may sleep for the quiet period: keep it off the async workers.
            let done = tokio::task::spawn_blocking(move || {
                match identity.reload() {
                    Ok(outcome) => tracing::info!("SIGHUP identity reload: {outcome:?}"),
                    Err(e) => tracing::warn!(
                        "SIGHUP identity reload failed, keeping the last good identity: {e}"
                    ),
                }
                if let Some(trust) = trust {
                    match trust.reload() {
                        Ok(outcome) => tracing::info!("SIGHUP trust reload: {outcome:?}"),
                        Err(e) => tracing::warn!(
                            "SIGHUP trust reload failed, keeping the last good trust: {e}"
                        ),
                    }
                }
            })
            .await;
            if let Err(e) = done {
                tracing::warn!("SIGHUP reload task failed: {e}");
            }
        }
    });
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
