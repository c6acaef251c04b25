//! What every part shares: the test PKI, the three server configurations, in-memory
//! handshakes, a rotating writer, statistics, and the interleaved-rounds scheduler.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hitless::{
    Detection, IdentitySource, ReloadingIdentity, ReloadingServerConfig, ReloadingTrust,
    TrustSource,
};
use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use rustls::server::{ResolvesServerCert, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// How many distinct server leaves are pre-generated and cycled through by rotations.
pub const LEAVES: usize = 8;

/// Installs aws-lc-rs as the process-wide rustls provider (idempotent), so every config in
/// the run (static and hitless) uses the same provider.
pub fn init_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The server key types measured.
pub fn key_type_name(k: KeyType) -> &'static str {
    match k {
        KeyType::EcP256 => "ecdsa-p256",
        KeyType::Rsa2048 => "rsa-2048",
        KeyType::EcP384 => "ecdsa-p384",
        KeyType::Ed25519 => "ed25519",
        KeyType::Rsa3072 => "rsa-3072",
        KeyType::Rsa4096 => "rsa-4096",
    }
}

/// A server CA (of the server key type), `LEAVES` server leaves, a P-256 client CA and a
/// client leaf, written to a temporary directory.
pub struct Pki {
    pub key_type: KeyType,
    pub server_ca: Ca,
    pub leaves: Vec<Leaf>,
    /// `leaves[i].bundle_pem(Pkcs8)`, what a rotation writes.
    pub bundles: Vec<Vec<u8>>,
    pub client_ca: Ca,
    pub client_leaf: Leaf,
    pub dir: tempfile::TempDir,
    /// The bundle file the reloading identity reads (holds `bundles[0]` at start).
    pub bundle_path: PathBuf,
    /// The client CA file the reloading trust reads.
    pub client_ca_path: PathBuf,
}

fn validity() -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::hours(1),
        now + time::Duration::days(2),
    )
}

impl Pki {
    /// A PKI with [`LEAVES`] server leaves.
    pub fn new(key_type: KeyType) -> Pki {
        Self::with_leaves(key_type, LEAVES)
    }

    /// A PKI with `n` server leaves (at least one).
    pub fn with_leaves(key_type: KeyType, n: usize) -> Pki {
        let (nb, na) = validity();
        let server_ca = Ca::new_root("hitless-bench server CA", key_type);
        let leaves: Vec<Leaf> = (0..n.max(1))
            .map(|_| {
                server_ca.issue(
                    &LeafSpec::server("localhost")
                        .key_type(key_type)
                        .valid(nb, na),
                )
            })
            .collect();
        let bundles = leaves
            .iter()
            .map(|l| l.bundle_pem(KeyFormat::Pkcs8).into_bytes())
            .collect::<Vec<_>>();
        let client_ca = Ca::new_root("hitless-bench client CA", KeyType::EcP256);
        let client_leaf = client_ca.issue(
            &LeafSpec::client("bench-client")
                .key_type(KeyType::EcP256)
                .valid(nb, na),
        );
        let dir = tempfile::Builder::new()
            .prefix("hitless-bench-")
            .tempdir()
            .expect("create temp dir");
        let bundle_path = dir.path().join("identity.pem");
        write_atomic(&bundle_path, &bundles[0]);
        let client_ca_path = dir.path().join("clients-ca.pem");
        write_atomic(&client_ca_path, client_ca.cert_pem().as_bytes());
        Pki {
            key_type,
            server_ca,
            leaves,
            bundles,
            client_ca,
            client_leaf,
            dir,
            bundle_path,
            client_ca_path,
        }
    }

    /// Which pre-generated leaf `der` is, if any.
    pub fn leaf_index(&self, der: &[u8]) -> Option<usize> {
        self.leaves.iter().position(|l| l.cert_der == der)
    }

    /// The baseline: static rustls, `with_single_cert` + `WebPkiClientVerifier`.
    pub fn static_server_config(&self) -> Arc<ServerConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.client_ca.rustls_cert()).expect("client CA");
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crate::provider())
                .build()
                .expect("client verifier");
        let config = ServerConfig::builder_with_provider(crate::provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.leaves[0].rustls_chain(), self.leaves[0].rustls_key())
            .expect("static server config");
        Arc::new(config)
    }

    /// The candidate: a reloading identity (the bundle file) and a reloading client trust.
    pub fn hitless_server(&self, detection: Detection) -> Hitless {
        self.hitless_server_from(IdentitySource::bundle(&self.bundle_path), detection)
    }

    /// A hitless server whose identity is read from `source`.
    pub fn hitless_server_from(&self, source: IdentitySource, detection: Detection) -> Hitless {
        self.hitless_server_wrapped(source, detection, |r| r)
    }

    /// A hitless server whose identity is read from `source`, its resolver wrapped by `wrap`
    /// (the rotation part wraps it to timestamp the first lookup of a new leaf).
    pub fn hitless_server_wrapped(
        &self,
        source: IdentitySource,
        detection: Detection,
        wrap: impl FnOnce(Arc<dyn ResolvesServerCert>) -> Arc<dyn ResolvesServerCert>,
    ) -> Hitless {
        let identity = ReloadingIdentity::builder(source)
            .detection(detection)
            .build()
            .expect("reloading identity");
        let trust = ReloadingTrust::builder(TrustSource::cas([&self.client_ca_path]))
            .detection(detection)
            .build()
            .expect("reloading trust");
        let configs = ReloadingServerConfig::builder_with_resolver(wrap(identity.resolver()))
            .client_trust(&trust)
            .build()
            .expect("reloading server config");
        Hitless {
            identity,
            _trust: trust,
            configs,
        }
    }

    /// A TLS 1.3-only client presenting the P-256 client leaf, resumption disabled (every
    /// handshake is a full one).
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.server_ca.rustls_cert()).expect("server CA");
        let mut config = ClientConfig::builder_with_provider(crate::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                self.client_leaf.rustls_chain(),
                self.client_leaf.rustls_key(),
            )
            .expect("client config");
        config.resumption = Resumption::disabled();
        Arc::new(config)
    }
}

/// A hitless server setup: identity, trust, and the configuration to accept with.
pub struct Hitless {
    pub identity: ReloadingIdentity,
    _trust: ReloadingTrust,
    pub configs: ReloadingServerConfig,
}

/// The name every client connects to.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("server name")
}

/// What one successful handshake showed.
#[derive(Debug, Clone, Copy)]
pub struct Shook {
    /// Index (in `Pki::leaves`) of the leaf the server presented; `None` if unknown.
    pub leaf: Option<usize>,
}

/// Reusable buffers for in-memory handshakes.
#[derive(Default)]
pub struct Pipe {
    buf: Vec<u8>,
}

fn pump(from: &mut dyn FnMut(&mut Vec<u8>) -> std::io::Result<usize>, buf: &mut Vec<u8>) {
    buf.clear();
    // write_tls appends; each call writes at most what is buffered.
    while let Ok(n) = from(buf) {
        if n == 0 {
            break;
        }
    }
}

impl Pipe {
    /// One full mutual-TLS handshake between a fresh client and a fresh server connection,
    /// over memory. Checks that both sides completed, that TLS 1.3 was used, and that the
    /// server saw the client certificate.
    pub fn handshake(
        &mut self,
        client: &Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        pki: &Pki,
    ) -> Result<Shook, String> {
        let mut c = ClientConnection::new(client.clone(), server_name())
            .map_err(|e| format!("client: {e}"))?;
        let mut s = ServerConnection::new(server).map_err(|e| format!("server: {e}"))?;
        for _ in 0..32 {
            let mut moved = false;
            if c.wants_write() {
                pump(&mut |b| c.write_tls(b), &mut self.buf);
                moved |= !self.buf.is_empty();
                feed_server(&mut s, &self.buf)?;
            }
            if s.wants_write() {
                pump(&mut |b| s.write_tls(b), &mut self.buf);
                moved |= !self.buf.is_empty();
                feed_client(&mut c, &self.buf)?;
            }
            if !moved && !c.is_handshaking() && !s.is_handshaking() {
                if c.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
                    return Err(format!("negotiated {:?}", c.protocol_version()));
                }
                if s.peer_certificates().is_none_or(|p| p.is_empty()) {
                    return Err("server saw no client certificate".into());
                }
                let leaf = c
                    .peer_certificates()
                    .and_then(|p| p.first())
                    .and_then(|d| pki.leaf_index(d.as_ref()));
                return Ok(Shook { leaf });
            }
            if !moved {
                return Err("handshake stalled".into());
            }
        }
        Err("handshake did not finish in 32 flights".into())
    }
}

fn feed_server(s: &mut ServerConnection, mut data: &[u8]) -> Result<(), String> {
    while !data.is_empty() {
        s.read_tls(&mut data)
            .map_err(|e| format!("server read: {e}"))?;
        s.process_new_packets()
            .map_err(|e| format!("server: {e}"))?;
    }
    Ok(())
}

fn feed_client(c: &mut ClientConnection, mut data: &[u8]) -> Result<(), String> {
    while !data.is_empty() {
        c.read_tls(&mut data)
            .map_err(|e| format!("client read: {e}"))?;
        c.process_new_packets()
            .map_err(|e| format!("client: {e}"))?;
    }
    Ok(())
}

/// A background thread standing in for an agent: every `every` it atomically replaces a file
/// (`write_atomic`: temp file, fsync, rename) with the next bundle. While `active` it replaces
/// the watched identity file (a rotation); otherwise a decoy file in a directory nobody
/// watches, so that every variant runs with the same file-system activity beside it and only
/// the reload itself differs.
pub struct Rotator {
    stop: Arc<AtomicBool>,
    pub active: Arc<AtomicBool>,
    /// Rotations of the watched file written so far.
    pub written: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Rotator {
    pub fn start(path: &Path, bundles: Vec<Vec<u8>>, every: Duration) -> Rotator {
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (s, a, w) = (stop.clone(), active.clone(), written.clone());
        let path = path.to_path_buf();
        let decoy_dir = path
            .parent()
            .expect("identity file has a parent")
            .join("unwatched");
        fs::create_dir_all(&decoy_dir).expect("create decoy dir");
        let decoy = decoy_dir.join("decoy.pem");
        let thread = thread::Builder::new()
            .name("bench-rotator".into())
            .spawn(move || {
                let mut next = 1;
                while !s.load(Ordering::Relaxed) {
                    thread::sleep(every);
                    let bundle = &bundles[next % bundles.len()];
                    if a.load(Ordering::Relaxed) {
                        write_atomic(&path, bundle);
                        next += 1;
                        w.fetch_add(1, Ordering::Relaxed);
                    } else {
                        write_atomic(&decoy, bundle);
                    }
                }
            })
            .expect("spawn rotator");
        Rotator {
            stop,
            active,
            written,
            thread: Some(thread),
        }
    }

    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::Relaxed);
    }
}

impl Drop for Rotator {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The median of `v` (mean of the two middle values for an even count); 0 for empty input.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile `p` (0..=100) of `v`; 0 for empty input.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Min and max of `v`.
pub fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// Runs `variants` in `rounds` rounds; in round `r` the order is rotated by `r` (ABC, BCA,
/// CAB, ...), so no variant always runs first or after the same neighbour. Returns, per
/// variant, the value `measure(variant)` gave in each round.
pub fn interleave<T>(
    variants: usize,
    rounds: usize,
    mut measure: impl FnMut(usize) -> T,
) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..variants).map(|_| Vec::with_capacity(rounds)).collect();
    for r in 0..rounds {
        for k in 0..variants {
            let v = (r + k) % variants;
            out[v].push(measure(v));
        }
    }
    out
}

/// Per-round ratios `num[i] / den[i]`.
pub fn ratios(num: &[f64], den: &[f64]) -> Vec<f64> {
    num.iter()
        .zip(den)
        .map(|(n, d)| if *d > 0.0 { n / d } else { 0.0 })
        .collect()
}

/// CPU time used so far by the live threads of this process whose name `want` accepts, in
/// nanoseconds (first field of /proc/self/task/*/schedstat; names from .../comm).
pub fn threads_cpu_ns(want: impl Fn(&str) -> bool) -> u64 {
    let Ok(tasks) = fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|t| {
            fs::read_to_string(t.path().join("comm")).is_ok_and(|name| want(name.trim_end()))
        })
        .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| {
            s.split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// Whether a thread belongs to the benchmark's stand-in for an agent (the writer of new
/// files), whose CPU time is not the library's.
pub fn is_writer_thread(name: &str) -> bool {
    name.starts_with("bench-rotator") || name.starts_with("bench-writer")
}

/// Whether a thread is hitless's change detection: its detector threads and the inotify
/// thread of `notify` (comm names are cut to 15 bytes).
pub fn is_detector_thread(name: &str) -> bool {
    name.starts_with("hitless-detect") || name.starts_with("notify-rs")
}

/// CPU time of the live threads of this process except the benchmark's file writers, in
/// nanoseconds. Differences over a slot during which no thread exits are the process's CPU
/// time in that slot: unlike wall-clock time, it does not count the time other processes of
/// a shared machine held the CPU.
pub fn process_cpu_ns() -> u64 {
    threads_cpu_ns(|n| !is_writer_thread(n))
}

/// Wall-clock and CPU time over a measured slot.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall: Instant,
    cpu: u64,
    detector: u64,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            cpu: process_cpu_ns(),
            detector: threads_cpu_ns(is_detector_thread),
            wall: Instant::now(),
        }
    }

    /// `(events per wall second, events per CPU second of the process)`, see
    /// [`process_cpu_ns`].
    pub fn rates(&self, events: u64) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64();
        let cpu = process_cpu_ns().saturating_sub(self.cpu) as f64 / 1e9;
        let per = |d: f64| if d > 0.0 { events as f64 / d } else { 0.0 };
        (per(wall), per(cpu))
    }

    /// CPU nanoseconds the change-detection threads used since `start`.
    pub fn detector_ns(&self) -> u64 {
        threads_cpu_ns(is_detector_thread).saturating_sub(self.detector)
    }
}

/// The process's resident set size in KiB (VmRSS in /proc/self/status).
pub fn rss_kib() -> u64 {
    status_field("VmRSS:")
}

/// The process's peak resident set size in KiB (VmHWM).
pub fn hwm_kib() -> u64 {
    status_field("VmHWM:")
}

fn status_field(name: &str) -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors (entries of /proc/self/fd, minus the one used to list it).
pub fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}

/// Threads of this process (entries of /proc/self/task).
pub fn threads() -> usize {
    fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A small xorshift generator for jittered pauses (no dependency needed).
pub struct Rng(u64);

impl Rng {
    pub fn seeded() -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Rng(t | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in `[0, d)`.
    pub fn below(&mut self, d: Duration) -> Duration {
        let n = d.as_nanos() as u64;
        if n == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % n)
    }
}

/// Waits until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_micros(200));
    }
    cond()
}
