//! Part 2: full mutual-TLS 1.3 handshakes over loopback TCP.
//!
//! A small blocking server (a fixed pool of worker threads, each accepting and serving one
//! connection at a time) and `tcp_clients` client threads that connect, handshake, read one
//! application byte (so a handshake counts only once the server has verified the client
//! certificate and answered), read the server's close_notify, and close. The server closes
//! first so TIME_WAIT sockets sit on the server side and client ports are not exhausted.
//! Variants and rounds as in part 1; all threads (clients and server) share the machine.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hitless::Detection;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};

use crate::common::{init_provider, interleave, key_type_name, server_name, Clock, Pki, Rotator};
use crate::handshake::{outcome, split, KeyResult};
use crate::{Outcome, Settings};

/// A persistent client thread: send it `(server, deadline)` to run one slot.
type ClientThread = (mpsc::Sender<(SocketAddr, Instant)>, JoinHandle<()>);

type GetConfig = Arc<dyn Fn() -> Arc<ServerConfig> + Send + Sync>;

/// A loopback server with a fixed pool of workers.
struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    first_errors: Arc<Mutex<Vec<String>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Server {
    fn start(get: GetConfig, workers: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicU64::new(0));
        let first_errors = Arc::new(Mutex::new(Vec::new()));
        let workers = (0..workers)
            .map(|i| {
                let listener = listener.try_clone().expect("clone listener");
                let (get, stop, errors, first) = (
                    get.clone(),
                    stop.clone(),
                    errors.clone(),
                    first_errors.clone(),
                );
                thread::Builder::new()
                    .name(format!("bench-server-{i}"))
                    .spawn(move || loop {
                        let Ok((sock, _)) = listener.accept() else {
                            continue;
                        };
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if let Err(e) = serve(get(), sock) {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut f = first.lock().unwrap_or_else(|e| e.into_inner());
                            if f.len() < 5 {
                                f.push(format!("server: {e}"));
                            }
                        }
                    })
                    .expect("spawn server worker")
            })
            .collect();
        Server {
            addr,
            stop,
            errors,
            first_errors,
            workers,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in 0..self.workers.len() {
            let _ = TcpStream::connect(self.addr);
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

fn serve(config: Arc<ServerConfig>, mut sock: TcpStream) -> Result<(), String> {
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut conn = ServerConnection::new(config).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    conn.writer().write_all(b"k").map_err(|e| e.to_string())?;
    conn.send_close_notify();
    while conn.wants_write() {
        conn.write_tls(&mut sock).map_err(|e| e.to_string())?;
    }
    // Close first (our FIN), then wait for the client's: TIME_WAIT stays on this side.
    let _ = sock.shutdown(Shutdown::Write);
    let mut b = [0u8; 256];
    while let Ok(n) = sock.read(&mut b) {
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// One client connection: handshake, read "k", read close_notify. Returns the presented leaf.
fn connect(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    pki: &Pki,
) -> Result<Option<usize>, String> {
    let sock = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(config.clone(), server_name()).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, sock);
    let mut got = Vec::with_capacity(4);
    let mut b = [0u8; 64];
    loop {
        match tls.read(&mut b) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&b[..n]),
            Err(e) => return Err(format!("client: {e}")),
        }
    }
    if got != b"k" {
        return Err(format!("client: read {got:?} instead of \"k\""));
    }
    if tls.conn.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return Err(format!("negotiated {:?}", tls.conn.protocol_version()));
    }
    Ok(tls
        .conn
        .peer_certificates()
        .and_then(|p| p.first())
        .and_then(|d| pki.leaf_index(d.as_ref())))
}

/// Runs part 2 for every key type of `settings`.
pub fn measure(settings: &Settings) -> Vec<KeyResult> {
    init_provider();
    settings
        .key_types
        .iter()
        .map(|&kt| measure_key(settings, kt))
        .collect()
}

/// One client thread's slot: connect, handshake, read, close, until `deadline`.
fn client_slot(
    addr: SocketAddr,
    deadline: Instant,
    client: &Arc<ClientConfig>,
    pki: &Pki,
) -> Counts {
    let mut c = Counts::default();
    while Instant::now() < deadline {
        match connect(addr, client, pki) {
            Ok(Some(leaf)) => {
                c.ok += 1;
                if c.leaves.last() != Some(&leaf) {
                    c.leaves.push(leaf);
                }
            }
            Ok(None) => {
                c.ok += 1;
                c.unknown_leaf += 1;
            }
            Err(e) => {
                c.failed += 1;
                if c.errors.len() < 5 {
                    c.errors.push(e);
                }
            }
        }
    }
    c
}

#[derive(Default)]
struct Counts {
    ok: u64,
    failed: u64,
    unknown_leaf: u64,
    leaves: Vec<usize>,
    errors: Vec<String>,
}

fn measure_key(settings: &Settings, kt: hitless_test_pki::KeyType) -> KeyResult {
    let pki = Arc::new(Pki::new(kt));
    let client = pki.client_config();
    let static_cfg = pki.static_server_config();
    let hl = Arc::new(pki.hitless_server(Detection::Watch));
    let rotator = Rotator::start(&pki.bundle_path, pki.bundles.clone(), settings.rotate_every);
    let static_server = Server::start(Arc::new(move || static_cfg.clone()), settings.tcp_workers);
    let hl2 = hl.clone();
    let hitless_server = Server::start(
        Arc::new(move || hl2.configs.current()),
        settings.tcp_workers,
    );

    // Warm up.
    for _ in 0..10 {
        connect(static_server.addr, &client, &pki).expect("warm-up (static)");
        connect(hitless_server.addr, &client, &pki).expect("warm-up (hitless)");
    }

    // Persistent client threads (so the process CPU time, summed over live threads, includes
    // theirs): each runs the slot it is sent and answers with its counts.
    let (done_tx, done_rx) = mpsc::channel::<Counts>();
    let clients: Vec<ClientThread> = (0..settings.tcp_clients)
        .map(|i| {
            let (tx, rx) = mpsc::channel::<(SocketAddr, Instant)>();
            let (client, pki, done) = (client.clone(), pki.clone(), done_tx.clone());
            let handle = thread::Builder::new()
                .name(format!("bench-client-{i}"))
                .spawn(move || {
                    for (addr, deadline) in rx {
                        let _ = done.send(client_slot(addr, deadline, &client, &pki));
                    }
                })
                .expect("spawn client thread");
            (tx, handle)
        })
        .collect();

    let mut settings = settings.clone();
    settings.rounds = settings.tcp_rounds;
    let settings = &settings;
    let mut ok = [0u64; 3];
    let mut failed = [0u64; 3];
    let mut errors = Vec::new();
    let mut leaf_changes_seen = 0;
    let mut unknown_leaf = 0;
    let mut detector_ns = 0u64;
    let rates = interleave(3, settings.rounds, |v| {
        let server = if v == 0 {
            &static_server
        } else {
            &hitless_server
        };
        let server_errors_before = server.errors.load(Ordering::Relaxed);
        rotator.set_active(v == 2);
        let clock = Clock::start();
        let deadline = Instant::now() + settings.tcp_slot;
        for (tx, _) in &clients {
            tx.send((server.addr, deadline))
                .expect("client thread alive");
        }
        let counts: Vec<Counts> = clients
            .iter()
            .map(|_| done_rx.recv().expect("client counts"))
            .collect();
        let n: u64 = counts.iter().map(|c| c.ok).sum();
        let rates = clock.rates(n);
        if v == 2 {
            detector_ns += clock.detector_ns();
        }
        rotator.set_active(false);
        ok[v] += n;
        // Server-side failures (e.g. a client certificate refused) count against the variant.
        failed[v] += server.errors.load(Ordering::Relaxed) - server_errors_before;
        for c in counts {
            failed[v] += c.failed;
            unknown_leaf += c.unknown_leaf;
            if v == 2 {
                leaf_changes_seen += c.leaves.len().saturating_sub(1) as u64;
            }
            for e in c.errors {
                if errors.len() < 5 {
                    errors.push(format!("{}: {e}", crate::handshake::VARIANTS[v]));
                }
            }
        }
        rates
    });
    for (tx, handle) in clients {
        drop(tx);
        let _ = handle.join();
    }
    let rotations_written = rotator.written.load(Ordering::Relaxed);
    drop(rotator);
    for s in [&static_server, &hitless_server] {
        errors.extend(
            s.first_errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
    }
    drop(static_server);
    drop(hitless_server);
    KeyResult {
        key_type: key_type_name(kt),
        rates: split(&rates, |r| r.0),
        cpu_rates: split(&rates, |r| r.1),
        ok,
        failed,
        errors,
        rotations_written,
        leaf_changes_seen,
        unknown_leaf,
        detector_cpu_ms_per_rotation: if rotations_written > 0 {
            detector_ns as f64 / 1e6 / rotations_written as f64
        } else {
            0.0
        },
    }
}

/// Runs part 2 and formats it.
pub fn run(settings: &Settings) -> Outcome {
    let results = measure(settings);
    let title = format!(
        "2. Handshakes over loopback TCP ({} client threads, {} server workers, mutual TLS 1.3, no resumption)",
        settings.tcp_clients, settings.tcp_workers
    );
    let mut settings_tcp = settings.clone();
    settings_tcp.slot = settings.tcp_slot;
    settings_tcp.rounds = settings.tcp_rounds;
    outcome(&results, &title, "tcp", &settings_tcp)
}
