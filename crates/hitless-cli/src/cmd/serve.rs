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
use hitless::{CertInfo, Detection, IdentitySource, ReloadingIdentity};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
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
    let identity = ReloadingIdentity::builder(args.source()?)
        .name("server")
        .detection(args.detection())
        .quiet_period(args.quiet_period)
        .accept_expired(args.accept_expired)
        .build()
        .context("no valid server identity")?;
    let config = Arc::new(server_config(&args, &identity)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args, identity, config))
}

fn load_roots(paths: &[PathBuf]) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for path in paths {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("{}: cannot read client CA bundle", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: invalid PEM", path.display()))?;
        if certs.is_empty() {
            bail!("{}: no CA certificate found", path.display());
        }
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("{}: unusable CA certificate", path.display()))?;
        }
    }
    Ok(roots)
}

fn server_config(args: &Args, identity: &ReloadingIdentity) -> anyhow::Result<ServerConfig> {
    let builder = ServerConfig::builder();
    let mut config = if args.client_ca.is_empty() {
        tracing::warn!(
            "no --client-ca given: serving server-authenticated TLS only, clients are not verified"
        );
        builder
            .with_no_client_auth()
            .with_cert_resolver(identity.resolver())
    } else {
        let roots = load_roots(&args.client_ca)?;
        let verifier = WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .context("cannot build the client certificate verifier")?;
        builder
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(identity.resolver())
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn serve(
    args: Args,
    identity: ReloadingIdentity,
    config: Arc<ServerConfig>,
) -> anyhow::Result<ExitCode> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr().context("listener has no address")?;
    tracing::info!(
        listen = %local,
        mutual_tls = !args.client_ca.is_empty(),
        reload = ?args.reload,
        "serving HTTPS"
    );
    spawn_sighup_reload(identity.clone());
    let acceptor = TlsAcceptor::from(config);
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
        let acceptor = acceptor.clone();
        let identity = identity.clone();
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
            let client = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| CertInfo::parse(std::path::Path::new("peer"), 1, der).ok());
            let client = Arc::new(client);
            let service = hyper::service::service_fn(move |req| {
                let response = respond(&req, &client, &identity);
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, "connection ended with an error: {e}");
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

/// Reloads the identity on every SIGHUP, whatever the detection mode.
fn spawn_sighup_reload(identity: ReloadingIdentity) {
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
            // reload() may sleep for the quiet period: keep it off the async workers.
            match tokio::task::spawn_blocking(move || identity.reload()).await {
                Ok(Ok(outcome)) => tracing::info!("SIGHUP reload: {outcome:?}"),
                Ok(Err(e)) => {
                    tracing::warn!("SIGHUP reload failed, keeping the last good identity: {e}")
                }
                Err(e) => tracing::warn!("SIGHUP reload task failed: {e}"),
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
