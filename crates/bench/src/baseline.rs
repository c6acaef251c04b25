//! The static baseline of the requests part (`hitless-bench serve-baseline`): the smallest
//! honest HTTPS server with mutual TLS, run as its own process so that it is measured exactly
//! like `hitless serve`.
//!
//! What it shares with `hitless serve`: tokio's multi-threaded runtime (one worker per core),
//! tokio-rustls, hyper-util's HTTP/1.1 + HTTP/2 connection builder, `TCP_NODELAY` on accepted
//! sockets, a 10 s handshake timeout, ALPN `h2` and `http/1.1`, the aws-lc-rs provider, the
//! same server and client certificates, and rustls' default session handling (an in-memory
//! cache of 256 sessions, two TLS 1.3 tickets per handshake, no TLS 1.2 ticketer). What it
//! leaves out is everything hitless adds: one `ServerConfig` built once
//! (`with_single_cert` + `WebPkiClientVerifier`), never reloaded.
//!
//! It answers `200 ok\n` to every request and exits when its standard input closes, so it
//! never outlives the benchmark that started it.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Where the baseline listens and what it serves.
#[derive(Debug, Clone)]
pub struct Args {
    /// Listen address (loopback).
    pub listen: SocketAddr,
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
    /// Client CA certificates, PEM.
    pub client_ca: PathBuf,
}

impl Args {
    /// Parses `--listen ADDR --cert FILE --key FILE --client-ca FILE`.
    pub fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let (mut listen, mut cert, mut key, mut client_ca) = (None, None, None, None);
        while let Some(a) = args.next() {
            let value = args.next().ok_or_else(|| format!("{a} needs a value"))?;
            match a.as_str() {
                "--listen" => {
                    listen = Some(
                        value
                            .parse()
                            .map_err(|e| format!("--listen {value}: {e}"))?,
                    )
                }
                "--cert" => cert = Some(PathBuf::from(value)),
                "--key" => key = Some(PathBuf::from(value)),
                "--client-ca" => client_ca = Some(PathBuf::from(value)),
                _ => return Err(format!("serve-baseline: unknown argument {a:?}")),
            }
        }
        Ok(Args {
            listen: listen.ok_or("serve-baseline needs --listen")?,
            cert: cert.ok_or("serve-baseline needs --cert")?,
            key: key.ok_or("serve-baseline needs --key")?,
            client_ca: client_ca.ok_or("serve-baseline needs --client-ca")?,
        })
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", path.display()));
    }
    Ok(certs)
}

/// The static configuration: built once, never changed.
pub fn server_config(args: &Args) -> Result<Arc<ServerConfig>, String> {
    crate::common::init_provider();
    let chain = read_certs(&args.cert)?;
    let key = PrivateKeyDer::from_pem_file(&args.key)
        .map_err(|e| format!("{}: {e}", args.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&args.client_ca)? {
        roots
            .add(ca)
            .map_err(|e| format!("{}: {e}", args.client_ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider())
        .build()
        .map_err(|e| format!("client verifier: {e}"))?;
    let mut config = ServerConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server config: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("server config: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves until standard input closes (or the process is killed).
pub fn run(args: &Args) -> Result<(), String> {
    let config = server_config(args)?;
    std::thread::Builder::new()
        .name("stdin-watch".into())
        .spawn(|| {
            let mut sink = [0u8; 64];
            while let Ok(n) = std::io::stdin().read(&mut sink) {
                if n == 0 {
                    break;
                }
            }
            std::process::exit(0);
        })
        .map_err(|e| format!("spawn: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    runtime.block_on(serve(args.listen, config))
}

async fn serve(listen: SocketAddr, config: Arc<ServerConfig>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("bind {listen}: {e}"))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper::service::service_fn(|_req| async {
                let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                *r.status_mut() = StatusCode::OK;
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                Ok::<_, std::convert::Infallible>(r)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
