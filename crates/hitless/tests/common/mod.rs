//! Test support: a blocking rustls server on loopback and a client that reports what it saw.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hitless_test_pki::{sha256_hex, Ca};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

/// The provider the library is built with: ring in the ring-only build
/// (`--no-default-features --features ring`), else aws-lc-rs. The test builds have both in
/// rustls (the dev-dependencies bring aws-lc-rs), so `ServerConfig::builder()` would panic.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let provider = rustls::crypto::ring::default_provider();
    #[cfg(not(all(feature = "ring", not(feature = "aws-lc-rs"))))]
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    Arc::new(provider)
}

/// A session-ticket encrypter of [`provider`]'s crypto library.
pub fn ticketer() -> Arc<dyn rustls::server::ProducesTickets> {
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    let ticketer = rustls::crypto::ring::Ticketer::new();
    #[cfg(not(all(feature = "ring", not(feature = "aws-lc-rs"))))]
    let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new();
    ticketer.unwrap()
}

/// `ServerConfig::builder()` with [`provider`].
pub fn server_builder() -> rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
}

/// `ClientConfig::builder()` with [`provider`].
pub fn client_builder() -> rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier> {
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
}

/// A loopback TLS server: each connection answers every line with `ok\n`.
pub struct Server {
    pub addr: SocketAddr,
    /// SHA-256 of the client certificate of every accepted connection, in order.
    pub clients: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(config: Arc<ServerConfig>) -> Server {
        Self::start_with(move || config.clone())
    }

    /// Takes the configuration from `config` for every new connection.
    pub fn start_with(config: impl Fn() -> Arc<ServerConfig> + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let clients = Arc::new(Mutex::new(Vec::new()));
        let clients2 = clients.clone();
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let config = config();
                let clients = clients2.clone();
                thread::spawn(move || serve_conn(config, stream, clients));
            }
        });
        Server {
            addr,
            clients,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_conn(config: Arc<ServerConfig>, stream: TcpStream, clients: Arc<Mutex<Vec<String>>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return;
        }
    }
    if let Some(leaf) = tls.conn.peer_certificates().and_then(|c| c.first()) {
        clients.lock().unwrap().push(sha256_hex(leaf.as_ref()));
    }
    let mut line = String::new();
    loop {
        line.clear();
        let mut reader = BufReader::new(&mut tls);
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if tls.write_all(b"ok\n").and_then(|_| tls.flush()).is_err() {
            return;
        }
    }
}

/// A client config trusting `ca` (and sending `client` if given), without resumption.
pub fn client_config(
    ca: &Ca,
    client: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.rustls_cert()).unwrap();
    let builder = client_builder().with_root_certificates(roots);
    let mut config = match client {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    // Every connection is a full handshake: a resumed session shows the old certificate.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// An open client connection.
pub struct Conn {
    tls: StreamOwned<ClientConnection, TcpStream>,
    /// SHA-256 of the leaf the server presented.
    pub fingerprint: String,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}

impl Conn {
    /// Sends a line and expects `ok`.
    pub fn ping(&mut self) -> std::io::Result<()> {
        self.tls.write_all(b"ping\n")?;
        self.tls.flush()?;
        let mut line = String::new();
        BufReader::new(&mut self.tls).read_line(&mut line)?;
        if line == "ok\n" {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("unexpected answer {line:?}")))
        }
    }
}

/// A full handshake plus one request; the error says what failed.
pub fn connect(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str) -> Result<Conn, String> {
    let stream = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    let conn = ClientConnection::new(config.clone(), server_name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, stream);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no server certificate")?;
    let fingerprint = sha256_hex(leaf.as_ref());
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let mut c = Conn {
        tls,
        fingerprint,
        resumed,
    };
    c.ping().map_err(|e| format!("request: {e}"))?;
    Ok(c)
}

/// Polls `f` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Generous bound for anything asynchronous in tests (machines are shared and noisy).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Runs `f` on this thread and returns, with its result, what `tracing` logged meanwhile
/// (warnings and above, plain text).
pub fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
    (out, text)
}
