//! Part 9: HTTPS requests with mutual TLS through `hitless serve`, what users feel.
//!
//! Every server is a separate process on loopback, measured the same way: the requests a load
//! generator completed in a slot, their latency (connect + handshake + request + whole
//! answer), and the CPU time the server process (and its children: nginx workers) used in the
//! slot, from `/proc`. Servers:
//!
//! - **static**: the baseline, `hitless-bench serve-baseline` (see [`crate::baseline`]): hyper
//!   and tokio-rustls with one `ServerConfig` built once;
//! - **hitless**: the release `hitless serve` binary with `--identity` (one bundle file, watched)
//!   and `--client-ca` (watched);
//! - **hitless+rotate**: the same process while the bundle is replaced every 100 ms;
//! - **go-stat**: the design hitless replaces, as the Go seed server had it (`go/seedserver`:
//!   `GetCertificate` stats the certificate file on every handshake, reloads on a new mtime);
//! - **nginx**: nginx from apt with `ssl_verify_client on` (config: [`procs::nginx_config`]).
//!
//! The load generator is Go's `net/http` client (`go/loadgen`): it does mutual TLS, sets
//! `TCP_NODELAY`, speaks HTTP/1.1 and HTTP/2, resumes TLS 1.3 (tickets) and TLS 1.2 (tickets
//! only), and shares no code with rustls or hitless. (`h2load` has no client-certificate
//! option.) TLS 1.2 session IDs are resumed by a small rustls client ([`crate::rustclient`]).
//!
//! Variants run interleaved in rounds (the order rotates each round) and each ratio is the
//! median of the per-round ratios, as in the other parts. On a shared machine requests/s and
//! even CPU per request move by several percent between slots, so when valgrind is installed
//! the static baseline and hitless serve are also run under callgrind: instructions per
//! request, noise-free ([`measure_instr`]). The last step checks resumption safety under load:
//! while clients resume, the identity rotates and the client trust changes, and no connection
//! may resume a session from before a change once the server has it ([`check_sessions`]).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hitless_test_pki::{Ca, KeyFormat, KeyType};
use serde_json::{json, Value};

use crate::common::{init_provider, interleave, key_type_name, median, percentile, Pki, Rotator};
use crate::procs::{self, guarded_command, Proc};
use crate::rustclient::{self, Event, Resume, Run};
use crate::{Outcome, Settings, Target};

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new connection and a full TLS 1.3 handshake per request.
    New,
    /// Keep-alive HTTP/1.1: one connection per worker.
    H1,
    /// Keep-alive HTTP/2.
    H2,
    /// A new connection per request, resuming with TLS 1.3 tickets (Go).
    Resume13,
    /// A new connection per request, TLS 1.2, Go's client (resumes with tickets only).
    Go12,
    /// A new connection per request, resuming TLS 1.2 session IDs (rustls client).
    Resume12Ids,
}

/// Every mode, in report order.
pub const MODES: [Mode; 6] = [
    Mode::New,
    Mode::H1,
    Mode::H2,
    Mode::Resume13,
    Mode::Go12,
    Mode::Resume12Ids,
];

impl Mode {
    /// Short name (JSON, target names).
    pub fn name(self) -> &'static str {
        match self {
            Mode::New => "new-connection",
            Mode::H1 => "keep-alive-h1",
            Mode::H2 => "keep-alive-h2",
            Mode::Resume13 => "resumed-tls13-tickets",
            Mode::Go12 => "tls12-go-client",
            Mode::Resume12Ids => "resumed-tls12-session-ids",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Mode::New => "new connection + full TLS 1.3 handshake per request (Go)",
            Mode::H1 => "keep-alive HTTP/1.1, one connection per worker (Go)",
            Mode::H2 => "keep-alive HTTP/2, 2 connections shared by the workers (Go)",
            Mode::Resume13 => "new connection per request, TLS 1.3 resumed with tickets (Go)",
            Mode::Go12 => {
                "new connection per request, TLS 1.2, Go client (resumes only with tickets)"
            }
            Mode::Resume12Ids => {
                "new connection per request, TLS 1.2 resumed with session IDs (rustls client)"
            }
        }
    }

    /// The Go load generator's mode, or `None` for the rustls client.
    fn go(self) -> Option<&'static str> {
        match self {
            Mode::New => Some("new"),
            Mode::H1 => Some("h1"),
            Mode::H2 => Some("h2"),
            Mode::Resume13 => Some("resume13"),
            Mode::Go12 => Some("resume12"),
            Mode::Resume12Ids => None,
        }
    }

    fn version(self) -> &'static str {
        match self {
            Mode::Go12 | Mode::Resume12Ids => "TLSv1.2",
            _ => "TLSv1.3",
        }
    }

    fn protocol(self) -> &'static str {
        match self {
            Mode::H2 => "HTTP/2.0",
            _ => "HTTP/1.1",
        }
    }

    /// Whether the Go server design and nginx are measured in this mode (item 3).
    fn compared(self) -> bool {
        matches!(self, Mode::New | Mode::H1 | Mode::H2)
    }
}

/// A server under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// The static baseline.
    Static,
    /// `hitless serve`.
    Hitless,
    /// `hitless serve` while its identity rotates every 100 ms.
    Rotating,
    /// The Go seed server's design.
    GoStat,
    /// nginx.
    Nginx,
}

impl Server {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Server::Static => "static",
            Server::Hitless => "hitless",
            Server::Rotating => "hitless+rotate",
            Server::GoStat => "go-stat",
            Server::Nginx => "nginx",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Server::Static => "static baseline (hyper + tokio-rustls)",
            Server::Hitless => "hitless serve",
            Server::Rotating => "hitless serve, rotating every 100 ms",
            Server::GoStat => "Go net/http, stat per handshake",
            Server::Nginx => "nginx, ssl_verify_client on",
        }
    }
}

/// The programs the part runs.
struct Tools {
    hitless: PathBuf,
    bench: PathBuf,
    loadgen: Option<PathBuf>,
    seed: Option<PathBuf>,
    nginx: Option<PathBuf>,
    notes: Vec<String>,
}

fn tool_version(program: &Path, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let text = [o.stdout, o.stderr].concat();
            String::from_utf8_lossy(&text).trim().to_string()
        })
        .unwrap_or_default()
}

impl Tools {
    fn find(settings: &Settings) -> Result<Tools, String> {
        let hitless = procs::find_hitless(settings.hitless_exe.as_deref())?;
        let bench = match &settings.bench_exe {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(|e| format!("current executable: {e}"))?,
        };
        let mut notes = Vec::new();
        let age = fs::metadata(&hitless)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok())
            .map_or("?".to_string(), |d| {
                format!("{:.0} min", d.as_secs_f64() / 60.0)
            });
        notes.push(format!(
            "hitless binary: {} (built {age} ago)",
            hitless.display()
        ));
        let (mut loadgen, mut seed) = (None, None);
        if settings.req_go {
            match procs::build_go(&procs::go_out_dir()) {
                Ok((l, s)) => {
                    let go = procs::which("go").unwrap_or_default();
                    notes.push(format!("load generator: {}", tool_version(&go, "version")));
                    loadgen = Some(l);
                    seed = Some(s);
                }
                Err(e) => notes.push(format!(
                    "SKIPPED the Go load generator and the Go server design: {e}"
                )),
            }
        } else {
            notes.push("Go not used in this run (Rust pieces only)".into());
        }
        let mut nginx = None;
        if settings.req_nginx {
            match procs::which("nginx") {
                Some(n) => {
                    notes.push(format!("nginx: {}", tool_version(&n, "-v")));
                    nginx = Some(n);
                }
                None => {
                    notes.push("SKIPPED nginx: not installed (apt-get install nginx)".to_string())
                }
            }
        }
        Ok(Tools {
            hitless,
            bench,
            loadgen,
            seed,
            nginx,
            notes,
        })
    }
}

/// The files every server and client reads, for one server key type.
struct Files {
    chain: PathBuf,
    key: PathBuf,
    /// Client CA for the servers that read it once (baseline, Go, nginx).
    client_ca_static: PathBuf,
    server_ca: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// `[client CA]` and `[client CA, extra CA]`: the two trust bundles the safety check
    /// alternates (the client is trusted by both).
    trusts: [Vec<u8>; 2],
}

/// A program and its arguments.
type Argv = (PathBuf, Vec<std::ffi::OsString>);

/// The static baseline's command line.
fn baseline_argv(tools: &Tools, files: &Files, addr: SocketAddr) -> Argv {
    let args = [
        "serve-baseline".as_ref(),
        "--listen".as_ref(),
        addr.to_string().as_ref(),
        "--cert".as_ref(),
        files.chain.as_os_str(),
        "--key".as_ref(),
        files.key.as_os_str(),
        "--client-ca".as_ref(),
        files.client_ca_static.as_os_str(),
    ]
    .map(|a: &std::ffi::OsStr| a.to_os_string());
    (tools.bench.clone(), args.to_vec())
}

/// `hitless serve`'s command line: one watched bundle, one watched client CA file.
fn hitless_argv(tools: &Tools, pki: &Pki, addr: SocketAddr, admin: SocketAddr) -> Argv {
    let args = [
        "serve".as_ref(),
        "--listen".as_ref(),
        addr.to_string().as_ref(),
        "--identity".as_ref(),
        pki.bundle_path.as_os_str(),
        "--client-ca".as_ref(),
        pki.client_ca_path.as_os_str(),
        "--admin-listen".as_ref(),
        admin.to_string().as_ref(),
        "--shutdown-timeout".as_ref(),
        "1s".as_ref(),
    ]
    .map(|a: &std::ffi::OsStr| a.to_os_string());
    (tools.hitless.clone(), args.to_vec())
}

/// The command for `argv`, under `valgrind --tool=callgrind` writing to `callgrind.1` when
/// given `(valgrind, output file)`.
fn command(callgrind: Option<(&Path, &Path)>, (program, args): Argv) -> Command {
    let mut c = match callgrind {
        None => guarded_command(&program),
        Some((valgrind, out)) => {
            let mut c = guarded_command(valgrind);
            c.arg("--tool=callgrind")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(&program);
            c
        }
    };
    c.args(args).env_remove("RUST_LOG");
    c
}

/// One server key type's servers, running for the whole of its measurements.
struct Bed {
    /// Where the run's files and logs are.
    dir: PathBuf,
    rotator: Rotator,
    baseline: Proc,
    hitless: Proc,
    admin: SocketAddr,
    go: Option<Proc>,
    nginx: Option<Proc>,
    files: Files,
    pki: Pki,
}

impl Bed {
    fn start(tools: &Tools, settings: &Settings, kt: KeyType) -> Result<Bed, String> {
        let pki = Pki::new(kt);
        // Not beside the watched identity and trust files: writes here (logs) would wake
        // hitless's watcher.
        let dir = pki.dir.path().join("run");
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let w = |name: &str, data: &[u8]| -> Result<PathBuf, String> {
            let p = dir.join(name);
            fs::write(&p, data).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(p)
        };
        let client_ca_pem = pki.client_ca.cert_pem();
        let extra = Ca::new_root("hitless-bench extra client CA", KeyType::EcP256);
        let files = Files {
            chain: w("chain.pem", pki.leaves[0].chain_pem.as_bytes())?,
            key: w(
                "key.pem",
                pki.leaves[0].key_pem(KeyFormat::Pkcs8).as_bytes(),
            )?,
            client_ca_static: w("clients-ca-static.pem", client_ca_pem.as_bytes())?,
            server_ca: w("server-ca.pem", pki.server_ca.cert_pem().as_bytes())?,
            client_cert: w("client.pem", pki.client_leaf.chain_pem.as_bytes())?,
            client_key: w(
                "client.key",
                pki.client_leaf.key_pem(KeyFormat::Pkcs8).as_bytes(),
            )?,
            trusts: [
                client_ca_pem.clone().into_bytes(),
                format!("{}\n{}", client_ca_pem.trim_end(), extra.cert_pem()).into_bytes(),
            ],
        };
        // Before hitless starts, so that the decoy directory exists before it watches.
        let rotator = Rotator::start(&pki.bundle_path, pki.bundles.clone(), settings.rotate_every);
        let log = |n: &str| dir.join(format!("{n}.log"));

        let baseline = procs::start_on_free_port("static baseline", log("baseline"), |addr| {
            Ok(command(None, baseline_argv(tools, &files, addr)))
        })?;
        let mut admin = None;
        let hitless = procs::start_on_free_port("hitless serve", log("hitless"), |addr| {
            let a = procs::free_port()?;
            admin = Some(a);
            Ok(command(None, hitless_argv(tools, &pki, addr, a)))
        })?;
        let admin = admin.ok_or("no admin address")?;
        let go = match &tools.seed {
            None => None,
            Some(seed) => Some(procs::start_on_free_port(
                "Go server",
                log("go-seed"),
                |addr| {
                    let mut c = guarded_command(seed);
                    c.arg("-listen")
                        .arg(addr.to_string())
                        .arg("-cert")
                        .arg(&files.chain)
                        .arg("-key")
                        .arg(&files.key)
                        .arg("-client-ca")
                        .arg(&files.client_ca_static);
                    Ok(c)
                },
            )?),
        };
        let nginx = match &tools.nginx {
            None => None,
            Some(nginx) => {
                let ndir = dir.join("nginx");
                fs::create_dir_all(&ndir).map_err(|e| format!("{}: {e}", ndir.display()))?;
                Some(procs::start_on_free_port("nginx", log("nginx"), |addr| {
                    let conf = ndir.join("nginx.conf");
                    let text = procs::nginx_config(
                        &ndir,
                        addr,
                        &files.chain,
                        &files.key,
                        &files.client_ca_static,
                    );
                    fs::write(&conf, text).map_err(|e| format!("{}: {e}", conf.display()))?;
                    let mut c = guarded_command(nginx);
                    c.arg("-p")
                        .arg(&ndir)
                        .arg("-c")
                        .arg(&conf)
                        .arg("-e")
                        .arg(ndir.join("error.log"));
                    Ok(c)
                })?)
            }
        };
        Ok(Bed {
            dir,
            rotator,
            baseline,
            hitless,
            admin,
            go,
            nginx,
            files,
            pki,
        })
    }

    fn server(&self, s: Server) -> Option<&Proc> {
        match s {
            Server::Static => Some(&self.baseline),
            Server::Hitless | Server::Rotating => Some(&self.hitless),
            Server::GoStat => self.go.as_ref(),
            Server::Nginx => self.nginx.as_ref(),
        }
    }

    /// Runs the load generator of `mode` against `addr` for `duration`.
    fn load(
        &self,
        tools: &Tools,
        concurrency: usize,
        mode: Mode,
        addr: SocketAddr,
        duration: Duration,
        events: bool,
    ) -> Result<Run, String> {
        match (mode.go(), &tools.loadgen) {
            (Some(go_mode), Some(loadgen)) => run_go(
                loadgen,
                &self.files,
                go_mode,
                addr,
                &GoLoad {
                    concurrency,
                    duration,
                    pace: Duration::ZERO,
                    events,
                },
            ),
            (Some(_), None) => Err("the Go load generator is not available".into()),
            (None, _) => rustclient::run(
                addr,
                &self.pki,
                Resume::Tls12SessionIds,
                concurrency,
                duration,
                Duration::ZERO,
                events,
            ),
        }
    }

    /// One measured slot: the load generator's run and the server's CPU time meanwhile.
    fn slot(
        &self,
        tools: &Tools,
        settings: &Settings,
        mode: Mode,
        server: Server,
    ) -> Result<(Run, u64), String> {
        let proc = self
            .server(server)
            .ok_or_else(|| format!("{} is not running", server.name()))?;
        self.rotator.set_active(server == Server::Rotating);
        let cpu = proc.cpu_ns();
        let run = self.load(
            tools,
            settings.req_concurrency,
            mode,
            proc.addr,
            settings.req_slot,
            false,
        );
        let cpu = proc.cpu_ns().saturating_sub(cpu);
        self.rotator.set_active(false);
        Ok((run?, cpu))
    }

    fn alive(&mut self) -> Vec<String> {
        let mut dead = Vec::new();
        for p in [
            Some(&mut self.baseline),
            Some(&mut self.hitless),
            self.go.as_mut(),
            self.nginx.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if !p.alive() {
                dead.push(format!(
                    "{} exited during the run: {}",
                    p.name,
                    p.log_tail()
                ));
            }
        }
        dead
    }
}

/// Runs the Go load generator once and parses its report; the process is killed if it has
/// not finished 30 s after its duration.
/// How the Go load generator runs.
#[derive(Clone, Copy)]
struct GoLoad {
    concurrency: usize,
    duration: Duration,
    /// Minimum time between the starts of two requests of a worker (0: back to back).
    pace: Duration,
    /// Report every request.
    events: bool,
}

fn run_go(
    loadgen: &Path,
    files: &Files,
    mode: &str,
    addr: SocketAddr,
    load: &GoLoad,
) -> Result<Run, String> {
    let GoLoad {
        concurrency,
        duration,
        pace,
        events,
    } = *load;
    let mut c = Command::new(loadgen);
    c.arg("-url")
        .arg(format!("https://{addr}/healthz"))
        .arg("-mode")
        .arg(mode)
        .arg("-cert")
        .arg(&files.client_cert)
        .arg("-key")
        .arg(&files.client_key)
        .arg("-ca")
        .arg(&files.server_ca)
        .arg("-duration")
        .arg(format!("{}ms", duration.as_millis()))
        .arg("-concurrency")
        .arg(concurrency.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if events {
        c.arg("-events");
    }
    if !pace.is_zero() {
        c.arg("-pace").arg(format!("{}us", pace.as_micros()));
    }
    let mut child = c
        .spawn()
        .map_err(|e| format!("start {}: {e}", loadgen.display()))?;
    let mut out = child.stdout.take().ok_or("no stdout")?;
    let mut err = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + duration + Duration::from_secs(30);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the load generator did not finish in time (killed)".into());
            }
        }
    };
    let out = reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "load generator failed ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        ));
    }
    let doc: Value = serde_json::from_slice(&out)
        .map_err(|e| format!("load generator output is not JSON: {e}"))?;
    rustclient::parse_go(&doc)
}

/// One server's figures in one mode.
#[derive(Debug, Clone, Default)]
pub struct VariantResult {
    /// Requests per second, per round.
    pub rps: Vec<f64>,
    /// Ratio to the static baseline's requests/s in the same round.
    pub ratio: Vec<f64>,
    /// Latency percentiles over every request of every round, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Server CPU microseconds per request (all rounds).
    pub cpu_us: f64,
    /// Requests, failed requests, resumed handshakes, distinct leaves seen (max per round).
    pub requests: u64,
    /// Failed requests.
    pub errors: u64,
    /// Resumed handshakes.
    pub resumed: u64,
    /// Most distinct server leaves seen in one round.
    pub leaves: u64,
    /// Whether it was measured.
    pub measured: bool,
}

impl VariantResult {
    fn rps_median(&self) -> f64 {
        median(&self.rps)
    }
    fn ratio_median(&self) -> f64 {
        median(&self.ratio)
    }
    fn resumed_frac(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.resumed as f64 / self.requests as f64
        }
    }
}

/// One mode's figures for one key type.
#[derive(Debug, Clone)]
pub struct ModeResult {
    /// The mode.
    pub mode: Mode,
    /// Servers measured, in order.
    pub servers: Vec<Server>,
    /// Their figures.
    pub results: Vec<VariantResult>,
    /// Per server and round: its requests/s divided by hitless's in the same round (for the
    /// comparison with Go and nginx, hitless / other).
    pub vs_hitless: Vec<Vec<f64>>,
}

impl ModeResult {
    fn get(&self, s: Server) -> Option<&VariantResult> {
        self.servers
            .iter()
            .position(|x| *x == s)
            .map(|i| &self.results[i])
            .filter(|r| r.measured)
    }

    /// hitless / `s`, median of per-round ratios.
    fn hitless_over(&self, s: Server) -> Option<f64> {
        let i = self.servers.iter().position(|x| *x == s)?;
        self.results[i]
            .measured
            .then(|| median(&self.vs_hitless[i]))
    }
}

fn measure_mode(
    bed: &Bed,
    tools: &Tools,
    settings: &Settings,
    mode: Mode,
    problems: &mut Vec<String>,
) -> ModeResult {
    let kt = key_type_name(bed.pki.key_type);
    let mut servers = vec![Server::Static, Server::Hitless, Server::Rotating];
    if mode.compared() {
        if bed.go.is_some() {
            servers.push(Server::GoStat);
        }
        if bed.nginx.is_some() {
            servers.push(Server::Nginx);
        }
    }
    let written_before = bed
        .rotator
        .written
        .load(std::sync::atomic::Ordering::Relaxed);
    let slots = interleave(servers.len(), settings.req_rounds, |v| {
        bed.slot(tools, settings, mode, servers[v])
    });
    let written = bed
        .rotator
        .written
        .load(std::sync::atomic::Ordering::Relaxed)
        - written_before;
    let rps_of = |r: &Result<(Run, u64), String>| match r {
        Ok((run, _)) if run.elapsed_s > 0.0 => run.requests as f64 / run.elapsed_s,
        _ => 0.0,
    };
    let mut results = Vec::new();
    let mut vs_hitless: Vec<Vec<f64>> = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let what = format!("requests {kt} {} {}", mode.name(), server.name());
        let mut r = VariantResult {
            measured: true,
            ..VariantResult::default()
        };
        let mut lat = Vec::new();
        let mut cpu_ns = 0u64;
        let mut over = Vec::new();
        for (round, slot) in slots[i].iter().enumerate() {
            let rps = rps_of(slot);
            r.rps.push(rps);
            let base = rps_of(&slots[0][round]);
            r.ratio.push(if base > 0.0 { rps / base } else { 0.0 });
            let hl = rps_of(&slots[1][round]);
            match slot {
                Ok((run, cpu)) => {
                    r.requests += run.requests;
                    r.errors += run.errors;
                    r.resumed += run.resumed;
                    r.leaves = r.leaves.max(run.leaves);
                    cpu_ns += cpu;
                    lat.extend(run.lat_us.iter().map(|u| *u as f64 / 1000.0));
                    if run.errors > 0 {
                        problems.push(format!(
                            "{what}: {} failed requests, e.g. {:?}",
                            run.errors, run.first_errors
                        ));
                    }
                    for (v, n) in &run.versions {
                        if v != mode.version() {
                            problems.push(format!(
                                "{what}: {n} requests over {v}, expected {}",
                                mode.version()
                            ));
                        }
                    }
                    for (p, n) in &run.protocols {
                        if p != mode.protocol() {
                            problems.push(format!(
                                "{what}: {n} requests over {p}, expected {}",
                                mode.protocol()
                            ));
                        }
                    }
                    if run.requests == 0 {
                        problems.push(format!("{what}: no request completed in a slot"));
                    }
                }
                Err(e) => problems.push(format!("{what}: {e}")),
            }
            over.push(if rps > 0.0 { hl / rps } else { 0.0 });
        }
        r.p50_ms = percentile(&lat, 50.0);
        r.p99_ms = percentile(&lat, 99.0);
        r.max_ms = lat.iter().copied().fold(0.0, f64::max);
        r.cpu_us = if r.requests > 0 {
            cpu_ns as f64 / 1000.0 / r.requests as f64
        } else {
            0.0
        };
        results.push(r);
        vs_hitless.push(over);
    }
    // Rotations really happened under load, and clients saw new leaves (a full handshake per
    // request shows the leaf of the moment).
    if written == 0 {
        problems.push(format!(
            "requests {kt} {}: no rotation written",
            mode.name()
        ));
    } else if mode == Mode::New && settings.req_slot >= Duration::from_millis(250) {
        let rot = &results[2];
        if rot.leaves < 2 {
            problems.push(format!(
                "requests {kt} {}: clients saw {} server leaf while the identity rotated every {} ms",
                mode.name(),
                rot.leaves,
                settings.rotate_every.as_millis()
            ));
        }
    }
    // hitless must resume wherever the static baseline does.
    let (base, hl) = (&results[0], &results[1]);
    if base.resumed_frac() > 0.5 && hl.resumed_frac() < 0.5 {
        problems.push(format!(
            "requests {kt} {}: the static baseline resumed {:.0} % of handshakes, hitless {:.0} %",
            mode.name(),
            100.0 * base.resumed_frac(),
            100.0 * hl.resumed_frac()
        ));
    }
    ModeResult {
        mode,
        servers,
        results,
        vs_hitless,
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// `GET /status` on hitless's admin listener: `(identity generation, trust generation)`.
fn generations(admin: SocketAddr) -> Result<(u64, u64), String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))
        .map_err(|e| format!("admin {admin}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("admin: {e}"))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got).map_err(|e| format!("admin: {e}"))?;
    let at = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("admin: no HTTP header end")?;
    let v: Value =
        serde_json::from_slice(&got[at + 4..]).map_err(|e| format!("admin /status: {e}"))?;
    let gen = |kind: &str| {
        v["credentials"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["kind"] == kind))
            .and_then(|c| c["generation"].as_u64())
            .ok_or_else(|| format!("admin /status: no {kind} generation"))
    };
    Ok((gen("identity")?, gen("trust")?))
}

/// A credential change made during the safety check.
#[derive(Debug, Clone)]
struct Change {
    trust: bool,
    /// Unix ns just before the new file was written.
    written_ns: i64,
    /// Unix ns when the admin listener first showed the new generation.
    seen_ns: i64,
}

/// What the resumption safety check found for one client.
#[derive(Debug, Clone, Default)]
pub struct Safety {
    /// Which client and resumption.
    pub client: String,
    /// Requests sent and resumed.
    pub requests: u64,
    /// Resumed handshakes.
    pub resumed: u64,
    /// Failed requests.
    pub errors: u64,
    /// Identity rotations and trust changes made.
    pub rotations: usize,
    /// Trust changes made.
    pub trust_changes: usize,
    /// Median ms from writing a change to the admin listener showing it.
    pub pickup_ms: f64,
    /// First connections of a worker after a change whose previous connection (the source of
    /// the session it can offer) ended before the change was written: must all be full.
    pub checked: u64,
    /// Of those, how many resumed a session from before the change (must be 0).
    pub violations: u64,
    /// Descriptions of the first violations.
    pub details: Vec<String>,
}

/// The pause between two requests of a worker of the safety check's probe: long enough that
/// a change (written, then picked up by the server in a few milliseconds) often falls between
/// two of its connections, which is what makes a connection checkable.
const PROBE_PACE: Duration = Duration::from_millis(25);

/// Writes `contents` to a temporary file beside `path`, fsyncs it, and renames it over `path`
/// (what `write_atomic` does); returns the Unix time in ns taken just before the rename, the
/// moment the new content becomes visible.
fn publish(path: &Path, contents: &[u8]) -> Result<i64, String> {
    let tmp = path.with_extension("bench-tmp");
    let mut f = fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(contents)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    drop(f);
    let at = now_ns();
    fs::rename(&tmp, path).map_err(|e| format!("rename over {}: {e}", path.display()))?;
    Ok(at)
}

/// One client of the safety check, with resumption, against hitless.
fn safety_client(
    bed: &Bed,
    tools: &Tools,
    settings: &Settings,
    client: &str,
    pace: Duration,
    events: bool,
) -> Result<Run, String> {
    let addr = bed.hitless.addr;
    let (n, duration) = (settings.req_concurrency, settings.req_safety);
    match client {
        "go-tls13-tickets" => match &tools.loadgen {
            Some(l) => run_go(
                l,
                &bed.files,
                "resume13",
                addr,
                &GoLoad {
                    concurrency: n,
                    duration,
                    pace,
                    events,
                },
            ),
            None => Err("Go load generator not available".into()),
        },
        "rustls-tls13-tickets" => rustclient::run(
            addr,
            &bed.pki,
            Resume::Tls13Tickets,
            n,
            duration,
            pace,
            events,
        ),
        _ => rustclient::run(
            addr,
            &bed.pki,
            Resume::Tls12SessionIds,
            n,
            duration,
            pace,
            events,
        ),
    }
}

/// Makes one change (an identity rotation or a trust change, always to content different from
/// the current file) and waits until hitless's admin listener shows its new generation.
fn make_change(bed: &Bed, trust: bool) -> Result<Change, String> {
    let before = generations(bed.admin)?;
    let (path, choices): (&Path, &[Vec<u8>]) = if trust {
        (&bed.pki.client_ca_path, &bed.files.trusts)
    } else {
        (&bed.pki.bundle_path, &bed.pki.bundles)
    };
    let current = fs::read(path).unwrap_or_default();
    let next = choices
        .iter()
        .find(|c| **c != current)
        .ok_or("no different content to write")?;
    let written_ns = publish(path, next)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok((id, tr)) = generations(bed.admin) {
            if (trust && tr > before.1) || (!trust && id > before.0) {
                return Ok(Change {
                    trust,
                    written_ns,
                    seen_ns: now_ns(),
                });
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "a {} change was not shown by the admin listener within 5 s",
                if trust { "trust" } else { "identity" }
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Resumption safety under load. Two instances of one client resume sessions against hitless
/// for `req_safety`: the load (workers back to back) and the probe (the same number of
/// workers, each starting a request every [`PROBE_PACE`], recording every request). Meanwhile
/// the identity rotates and the client trust changes, alternately, every `req_change_every`.
/// Every probe worker's first connection after a change is checked (see [`check_sessions`]).
fn safety(
    bed: &Bed,
    tools: &Tools,
    settings: &Settings,
    client: &str,
    problems: &mut Vec<String>,
) -> Safety {
    let duration = settings.req_safety;
    let mut changes = Vec::new();
    let mut change_errors = Vec::new();
    let (load, probe) = std::thread::scope(|s| {
        let load = s.spawn(|| safety_client(bed, tools, settings, client, Duration::ZERO, false));
        let probe = s.spawn(|| safety_client(bed, tools, settings, client, PROBE_PACE, true));
        let started = Instant::now();
        // Let sessions exist before the first change; stop changing before the end.
        let margin = Duration::from_millis(300).min(duration / 4);
        std::thread::sleep(margin);
        let mut k = 0usize;
        while started.elapsed() + margin < duration && k < 1000 {
            match make_change(bed, k % 2 == 1) {
                Ok(c) => changes.push(c),
                Err(e) => {
                    change_errors.push(e);
                    break;
                }
            }
            k += 1;
            std::thread::sleep(settings.req_change_every);
        }
        let join = |h: std::thread::ScopedJoinHandle<'_, Result<Run, String>>| {
            h.join()
                .unwrap_or_else(|_| Err("load thread panicked".into()))
        };
        (join(load), join(probe))
    });
    let what = format!(
        "resumption safety {} {client}",
        key_type_name(bed.pki.key_type)
    );
    for e in change_errors {
        problems.push(format!("{what}: {e}"));
    }
    let (load, probe) = match (load, probe) {
        (Ok(l), Ok(p)) => (l, p),
        (Err(e), _) | (_, Err(e)) => {
            problems.push(format!("{what}: {e}"));
            return Safety {
                client: client.into(),
                ..Safety::default()
            };
        }
    };
    let (checked, violations, details) = check_sessions(&probe.events, &changes);
    let out = Safety {
        client: client.into(),
        requests: load.requests + probe.requests,
        resumed: load.resumed + probe.resumed,
        errors: load.errors + probe.errors,
        rotations: changes.iter().filter(|c| !c.trust).count(),
        trust_changes: changes.iter().filter(|c| c.trust).count(),
        pickup_ms: median(
            &changes
                .iter()
                .map(|c| (c.seen_ns - c.written_ns) as f64 / 1e6)
                .collect::<Vec<_>>(),
        ),
        checked,
        violations,
        details,
    };
    if out.errors > 0 {
        let mut first = load.first_errors;
        first.extend(probe.first_errors);
        problems.push(format!(
            "{what}: {} failed requests, e.g. {first:?}",
            out.errors
        ));
    }
    if out.violations > 0 {
        problems.push(format!(
            "{what}: {} connections resumed a session from before a rotation or trust change after the server had it: {:?}",
            out.violations, out.details
        ));
    }
    if out.resumed == 0 {
        problems.push(format!("{what}: no handshake resumed, nothing was checked"));
    }
    if out.checked == 0 {
        problems.push(format!(
            "{what}: no connection after a change could be checked ({} changes)",
            changes.len()
        ));
    }
    out
}

/// For every change and every worker: the worker's first connection started after the server
/// showed the change, if the connection before it (the newest source of the session it can
/// offer: each worker has its own session store) ended before the change was written. Such a
/// connection must not resume. Returns `(checked, resumed anyway, descriptions)`.
fn check_sessions(events: &[Event], changes: &[Change]) -> (u64, u64, Vec<String>) {
    let mut by_worker: BTreeMap<usize, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_worker.entry(e.worker).or_default().push(e);
    }
    for evs in by_worker.values_mut() {
        evs.sort_by_key(|e| e.start_ns);
    }
    let (mut checked, mut violations, mut details) = (0, 0, Vec::new());
    for c in changes {
        for evs in by_worker.values() {
            let Some(i) = evs.iter().position(|e| e.start_ns > c.seen_ns) else {
                continue;
            };
            if i == 0 || evs[i - 1].end_ns >= c.written_ns || !evs[i].ok {
                continue;
            }
            checked += 1;
            if evs[i].resumed {
                violations += 1;
                if details.len() < 5 {
                    details.push(format!(
                        "worker {} resumed {:.3} ms after the server showed a {} change (its previous connection ended {:.3} ms before the change was written)",
                        evs[i].worker,
                        (evs[i].start_ns - c.seen_ns) as f64 / 1e6,
                        if c.trust { "trust" } else { "identity" },
                        (c.written_ns - evs[i - 1].end_ns) as f64 / 1e6
                    ));
                }
            }
        }
    }
    (checked, violations, details)
}

/// Instructions per request under callgrind, the static baseline against hitless serve.
#[derive(Debug, Clone)]
pub struct InstrResult {
    /// The mode.
    pub mode: Mode,
    /// Instructions the static baseline executed per request.
    pub static_per_request: f64,
    /// Instructions hitless serve executed per request.
    pub hitless_per_request: f64,
}

/// The modes counted under callgrind.
const INSTR_MODES: [Mode; 5] = [
    Mode::New,
    Mode::H1,
    Mode::H2,
    Mode::Resume13,
    Mode::Resume12Ids,
];

/// The total instruction count of a callgrind output file.
fn callgrind_totals(path: &Path) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    let line = text
        .lines()
        .find(|l| l.starts_with("totals:"))
        .or_else(|| text.lines().find(|l| l.starts_with("summary:")))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Starts `server` under callgrind, sends it requests of `mode` from one worker for
/// `duration`, stops it; returns (instructions of the whole process life, requests).
fn instr_run(
    bed: &Bed,
    tools: &Tools,
    valgrind: &Path,
    out_dir: &Path,
    server: Server,
    mode: Mode,
    duration: Duration,
) -> Result<(u64, u64), String> {
    let tag = format!(
        "{}-{}-{}-{}",
        key_type_name(bed.pki.key_type),
        server.name(),
        mode.name(),
        duration.as_millis()
    );
    let out = out_dir.join(format!("callgrind-{tag}.out"));
    let addr = procs::free_port()?;
    let argv = match server {
        Server::Static => baseline_argv(tools, &bed.files, addr),
        _ => hitless_argv(tools, &bed.pki, addr, procs::free_port()?),
    };
    let p = Proc::start_within(
        &format!("{} under callgrind", server.label()),
        command(Some((valgrind, &out)), argv),
        addr,
        bed.dir.join(format!("callgrind-{tag}.log")),
        Duration::from_secs(120),
    )?;
    let run = bed.load(tools, 1, mode, addr, duration, false);
    p.stop();
    let run = run?;
    if run.errors > 0 {
        return Err(format!(
            "{} failed requests under callgrind, e.g. {:?}",
            run.errors, run.first_errors
        ));
    }
    let total =
        callgrind_totals(&out).ok_or_else(|| format!("{}: no instruction total", out.display()))?;
    Ok((total, run.requests))
}

/// Instructions per request of the static baseline and of hitless serve, for each mode of
/// [`INSTR_MODES`]: each server runs twice under callgrind (`req_instr_runs`: a short and a
/// long load), and the difference of the totals divided by the difference of the requests is
/// the cost of one request, start-up and warm-up cancelled out. One worker, so requests do not
/// queue behind valgrind's serialised threads.
fn measure_instr(
    bed: &Bed,
    tools: &Tools,
    settings: &Settings,
    problems: &mut Vec<String>,
) -> Vec<InstrResult> {
    let Some(valgrind) = procs::which("valgrind") else {
        return Vec::new();
    };
    let (short, long) = settings.req_instr_runs;
    let out_dir = settings.req_callgrind_dir.as_deref().unwrap_or(&bed.dir);
    if let Err(e) = fs::create_dir_all(out_dir) {
        problems.push(format!("{}: {e}", out_dir.display()));
        return Vec::new();
    }
    let mut out = Vec::new();
    for mode in INSTR_MODES {
        if mode.go().is_some() && tools.loadgen.is_none() {
            continue;
        }
        eprintln!(
            "[hitless-bench] requests: {} {} under callgrind",
            key_type_name(bed.pki.key_type),
            mode.name()
        );
        let mut per = Vec::new();
        for server in [Server::Static, Server::Hitless] {
            let a = instr_run(bed, tools, &valgrind, out_dir, server, mode, short);
            let b = instr_run(bed, tools, &valgrind, out_dir, server, mode, long);
            match (a, b) {
                (Ok((ia, na)), Ok((ib, nb))) if nb > na && ib > ia => {
                    per.push((ib - ia) as f64 / (nb - na) as f64);
                }
                (Err(e), _) | (_, Err(e)) => problems.push(format!(
                    "requests {} {} {} under callgrind: {e}",
                    key_type_name(bed.pki.key_type),
                    mode.name(),
                    server.name()
                )),
                (Ok(a), Ok(b)) => problems.push(format!(
                    "requests {} {} {} under callgrind: the longer run did not count more ({a:?} then {b:?})",
                    key_type_name(bed.pki.key_type),
                    mode.name(),
                    server.name()
                )),
            }
        }
        if let [s, h] = per[..] {
            out.push(InstrResult {
                mode,
                static_per_request: s,
                hitless_per_request: h,
            });
        }
    }
    out
}

/// All figures for one key type.
pub struct KeyRun {
    /// Key type name.
    pub key_type: &'static str,
    /// Per mode.
    pub modes: Vec<ModeResult>,
    /// The safety check (first key type only).
    pub safety: Vec<Safety>,
    /// Instructions per request (first key type only, when valgrind is installed).
    pub instr: Vec<InstrResult>,
}

/// Runs part 9.
pub fn run(settings: &Settings) -> Outcome {
    init_provider();
    let mut problems = Vec::new();
    let tools = match Tools::find(settings) {
        Ok(t) => t,
        Err(e) => {
            let text = format!("9. HTTPS requests through hitless serve: SKIPPED: {e}\n");
            if settings.req_required {
                problems.push(e.clone());
            }
            return Outcome {
                text,
                json: json!({ "skipped": e }),
                problems,
                targets: Vec::new(),
            };
        }
    };
    let mut runs = Vec::new();
    for (k, &kt) in settings.req_key_types.iter().enumerate() {
        eprintln!("[hitless-bench] requests: {} ...", key_type_name(kt));
        let mut bed = match Bed::start(&tools, settings, kt) {
            Ok(b) => b,
            Err(e) => {
                problems.push(format!("requests {}: {e}", key_type_name(kt)));
                continue;
            }
        };
        // Warm every server (first connections, lazy initialisation), not measured.
        for s in [
            Server::Static,
            Server::Hitless,
            Server::GoStat,
            Server::Nginx,
        ] {
            if let Some(p) = bed.server(s) {
                let mode = if tools.loadgen.is_some() {
                    Mode::New
                } else {
                    Mode::Resume12Ids
                };
                let _ = bed.load(
                    &tools,
                    settings.req_concurrency,
                    mode,
                    p.addr,
                    Duration::from_millis(200),
                    false,
                );
            }
        }
        let mut modes = Vec::new();
        for mode in MODES {
            if mode.go().is_some() && tools.loadgen.is_none() {
                continue;
            }
            eprintln!(
                "[hitless-bench] requests: {} {}",
                key_type_name(kt),
                mode.name()
            );
            modes.push(measure_mode(&bed, &tools, settings, mode, &mut problems));
        }
        let mut safeties = Vec::new();
        let mut instr = Vec::new();
        if k == 0 && settings.req_instr {
            instr = measure_instr(&bed, &tools, settings, &mut problems);
        }
        if k == 0 {
            let mut clients = vec!["rustls-tls12-session-ids", "rustls-tls13-tickets"];
            if tools.loadgen.is_some() {
                clients.insert(0, "go-tls13-tickets");
            }
            for client in clients {
                eprintln!("[hitless-bench] requests: resumption safety, {client}");
                safeties.push(safety(&bed, &tools, settings, client, &mut problems));
            }
        }
        problems.extend(bed.alive());
        runs.push(KeyRun {
            key_type: key_type_name(kt),
            modes,
            safety: safeties,
            instr,
        });
    }
    report(settings, &tools, &runs, problems)
}

fn fmt_rps(x: f64) -> String {
    format!("{x:.0}")
}

fn report(settings: &Settings, tools: &Tools, runs: &[KeyRun], problems: Vec<String>) -> Outcome {
    let mut t = String::new();
    let mut targets = Vec::new();
    let _ = writeln!(
        t,
        "9. HTTPS requests with mutual TLS over loopback: GET /healthz -> 200 \"ok\\n\"\n   \
         {} workers, {} interleaved rounds x {:.1} s per server and mode; ratios are medians of \
         per-round ratios; latency is connect + handshake + request + whole answer, over every \
         request; CPU is the server process's (nginx: master + workers) per request",
        settings.req_concurrency,
        settings.req_rounds,
        settings.req_slot.as_secs_f64()
    );
    for n in &tools.notes {
        let _ = writeln!(t, "   {n}");
    }
    let mut json_keys = Vec::new();
    for kr in runs {
        let kt = kr.key_type;
        let _ = writeln!(t, "\n   server key {kt}");
        let _ = writeln!(
            t,
            "   {:<40} {:>8} {:>17} {:>8} {:>7} {:>7} {:>8} {:>9} {:>8} {:>8}",
            "mode / server",
            "req/s",
            "[min - max]",
            "x static",
            "p50 ms",
            "p99 ms",
            "max ms",
            "CPU us/rq",
            "CPU x st",
            "resumed"
        );
        let mut json_modes = Vec::new();
        for m in &kr.modes {
            let _ = writeln!(t, "   {}", m.mode.label());
            let base_cpu = m.results[0].cpu_us;
            let mut json_servers = Vec::new();
            for (s, r) in m.servers.iter().zip(&m.results) {
                let (lo, hi) = crate::common::min_max(&r.rps);
                let cpu_ratio = if base_cpu > 0.0 {
                    r.cpu_us / base_cpu
                } else {
                    0.0
                };
                let _ = writeln!(
                    t,
                    "     {:<38} {:>8} {:>17} {:>8.3} {:>7.2} {:>7.2} {:>8.1} {:>9.0} {:>8.3} {:>7.0}%",
                    s.label(),
                    fmt_rps(r.rps_median()),
                    format!("[{} - {}]", fmt_rps(lo), fmt_rps(hi)),
                    r.ratio_median(),
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms,
                    r.cpu_us,
                    cpu_ratio,
                    100.0 * r.resumed_frac()
                );
                json_servers.push(json!({
                    "server": s.name(),
                    "rps_rounds": r.rps,
                    "rps_median": r.rps_median(),
                    "ratio_to_static_rounds": r.ratio,
                    "ratio_to_static": r.ratio_median(),
                    "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "max_ms": r.max_ms,
                    "cpu_us_per_request": r.cpu_us,
                    "cpu_ratio_to_static": cpu_ratio,
                    "requests": r.requests, "errors": r.errors, "resumed": r.resumed,
                    "leaves_seen": r.leaves,
                }));
                if matches!(s, Server::Hitless | Server::Rotating) {
                    targets.push(Target::at_least(
                        format!("requests {kt} {} {}/static req/s", m.mode.name(), s.name()),
                        r.ratio_median(),
                        0.98,
                    ));
                    // The same target on the server's CPU per request (1 / 0.98): steadier
                    // than requests/s on a shared machine, where the share of CPU a slot gets
                    // varies.
                    targets.push(Target::at_most(
                        format!(
                            "requests {kt} {} {}/static server CPU per request",
                            m.mode.name(),
                            s.name()
                        ),
                        cpu_ratio,
                        1.02,
                        "x",
                    ));
                }
            }
            json_modes.push(json!({ "mode": m.mode.name(), "servers": json_servers }));
        }

        // Side by side (item 3).
        let compared: Vec<&ModeResult> = kr.modes.iter().filter(|m| m.mode.compared()).collect();
        let has = |s: Server| compared.iter().any(|m| m.get(s).is_some());
        let mut json_cmp = Vec::new();
        if has(Server::GoStat) || has(Server::Nginx) {
            let _ = writeln!(
                t,
                "\n   side by side, {kt} (req/s; hitless/other: median of per-round ratios)"
            );
            let _ = writeln!(
                t,
                "   {:<16} {:>9} {:>9} {:>9} {:>9} {:>22} {:>22}   server CPU us/req: hitless static go-stat nginx",
                "mode",
                "hitless",
                "static",
                "go-stat",
                "nginx",
                "hitless/go-stat (goal)",
                "hitless/nginx (goal)",
            );
            for m in &compared {
                let (go_goal, nginx_goal) = if m.mode == Mode::New {
                    (1.3, 1.2)
                } else {
                    (1.2, 1.0)
                };
                let cell = |s: Server| {
                    m.get(s)
                        .map_or("-".to_string(), |r| fmt_rps(r.rps_median()))
                };
                let ratio = |s: Server, goal: f64| {
                    m.hitless_over(s)
                        .map_or("-".to_string(), |x| format!("{x:.2} (>= {goal})"))
                };
                let cpu = |s: Server| {
                    m.get(s)
                        .map_or("-".to_string(), |r| format!("{:.0}", r.cpu_us))
                };
                let _ = writeln!(
                    t,
                    "   {:<16} {:>9} {:>9} {:>9} {:>9} {:>22} {:>22}   {:>26} {:>6} {:>7} {:>5}",
                    m.mode.name(),
                    cell(Server::Hitless),
                    cell(Server::Static),
                    cell(Server::GoStat),
                    cell(Server::Nginx),
                    ratio(Server::GoStat, go_goal),
                    ratio(Server::Nginx, nginx_goal),
                    cpu(Server::Hitless),
                    cpu(Server::Static),
                    cpu(Server::GoStat),
                    cpu(Server::Nginx)
                );
                for (s, goal) in [(Server::GoStat, go_goal), (Server::Nginx, nginx_goal)] {
                    if let Some(x) = m.hitless_over(s) {
                        targets.push(Target::at_least(
                            format!("requests {kt} {} hitless/{} req/s", m.mode.name(), s.name()),
                            x,
                            goal,
                        ));
                        // The same goal on requests per server CPU-second: the load generator
                        // shares the 2 cores, so req/s ratios understate server differences.
                        let cpu = match (m.get(Server::Hitless), m.get(s)) {
                            (Some(h), Some(o)) if h.cpu_us > 0.0 => o.cpu_us / h.cpu_us,
                            _ => 0.0,
                        };
                        targets.push(Target::at_least(
                            format!(
                                "requests {kt} {} hitless/{} req per server CPU-s",
                                m.mode.name(),
                                s.name()
                            ),
                            cpu,
                            goal,
                        ));
                        json_cmp.push(json!({
                            "mode": m.mode.name(), "other": s.name(),
                            "hitless_over_other": x,
                            "hitless_over_other_per_server_cpu": cpu,
                            "goal": goal,
                        }));
                    }
                }
            }
        }

        // Resumption through serve (item 4).
        let find = |mode: Mode| {
            kr.modes
                .iter()
                .find(|m| m.mode == mode)
                .and_then(|m| m.get(Server::Hitless))
        };
        let mut json_resume = Value::Null;
        if let (Some(full), Some(resumed)) = (find(Mode::New), find(Mode::Resume13)) {
            let speedup = if full.rps_median() > 0.0 {
                resumed.rps_median() / full.rps_median()
            } else {
                0.0
            };
            let cpu = if resumed.cpu_us > 0.0 {
                full.cpu_us / resumed.cpu_us
            } else {
                0.0
            };
            let _ = writeln!(
                t,
                "\n   resumption through hitless serve, {kt}: full handshakes {} req/s ({:.0} us CPU each), \
                 resumed TLS 1.3 {} req/s ({:.0} us CPU each, {:.0} % resumed): {speedup:.2}x the requests/s, \
                 {cpu:.2}x less server CPU",
                fmt_rps(full.rps_median()),
                full.cpu_us,
                fmt_rps(resumed.rps_median()),
                resumed.cpu_us,
                100.0 * resumed.resumed_frac()
            );
            targets.push(Target::at_least(
                format!("requests {kt} resumed/full handshakes req/s through serve"),
                speedup,
                settings.req_resume_goal,
            ));
            targets.push(Target::at_least(
                format!("requests {kt} full/resumed server CPU per handshake through serve"),
                cpu,
                settings.req_resume_goal,
            ));
            if let (Some(full12), Some(ids)) = (find(Mode::Go12), find(Mode::Resume12Ids)) {
                let _ = writeln!(
                    t,
                    "   TLS 1.2 through hitless serve, {kt}: full handshakes (Go client) {:.0} us server CPU each, \
                     resumed with session IDs (rustls client, {:.0} % resumed) {:.0} us each: {:.2}x less server CPU \
                     (different clients: requests/s not compared)",
                    full12.cpu_us,
                    100.0 * ids.resumed_frac(),
                    ids.cpu_us,
                    if ids.cpu_us > 0.0 { full12.cpu_us / ids.cpu_us } else { 0.0 }
                );
            }
            json_resume = json!({
                "full_rps": full.rps_median(), "full_cpu_us": full.cpu_us,
                "resumed_rps": resumed.rps_median(), "resumed_cpu_us": resumed.cpu_us,
                "resumed_fraction": resumed.resumed_frac(),
                "rps_ratio": speedup, "cpu_ratio": cpu,
            });
        }

        // Instructions per request (item 2, noise-free).
        let mut json_instr = Vec::new();
        if !kr.instr.is_empty() {
            let (short, long) = settings.req_instr_runs;
            let _ = writeln!(
                t,
                "\n   instructions per request under callgrind, {kt} (server process only; 1 worker; \
                 difference between a {:.0} s and a {:.0} s run, so start-up cancels out; noise-free)",
                short.as_secs_f64(),
                long.as_secs_f64()
            );
            let _ = writeln!(
                t,
                "   {:<28} {:>12} {:>12} {:>15}",
                "mode", "static", "hitless", "hitless/static"
            );
        }
        for i in &kr.instr {
            let ratio = if i.static_per_request > 0.0 {
                i.hitless_per_request / i.static_per_request
            } else {
                0.0
            };
            let _ = writeln!(
                t,
                "   {:<28} {:>12.0} {:>12.0} {:>15.3}",
                i.mode.name(),
                i.static_per_request,
                i.hitless_per_request,
                ratio
            );
            targets.push(Target::at_most(
                format!(
                    "requests {kt} {} hitless/static instructions per request",
                    i.mode.name()
                ),
                ratio,
                1.02,
                "x",
            ));
            json_instr.push(json!({
                "mode": i.mode.name(),
                "static_per_request": i.static_per_request,
                "hitless_per_request": i.hitless_per_request,
                "ratio": ratio,
            }));
        }

        // Safety under load (item 4).
        let mut json_safety = Vec::new();
        if !kr.safety.is_empty() {
            let _ = writeln!(
                t,
                "\n   resumption safety under load, {kt}: identity rotations and client-trust changes alternate every {} ms",
                settings.req_change_every.as_millis()
            );
        }
        for s in &kr.safety {
            let _ = writeln!(
                t,
                "     {:<26} {} requests, {:.0} % resumed, {} rotations + {} trust changes (server showed each {:.1} ms after the write, median); \
                 {} first connections after a change checked: {} full handshakes, {} resumed a session from before it",
                s.client,
                s.requests,
                if s.requests > 0 { 100.0 * s.resumed as f64 / s.requests as f64 } else { 0.0 },
                s.rotations,
                s.trust_changes,
                s.pickup_ms,
                s.checked,
                s.checked - s.violations,
                s.violations
            );
            targets.push(Target::zero(
                format!(
                    "requests {kt} {}: sessions resumed across a change",
                    s.client
                ),
                s.violations as i64,
            ));
            json_safety.push(json!({
                "client": s.client, "requests": s.requests, "resumed": s.resumed,
                "errors": s.errors, "rotations": s.rotations, "trust_changes": s.trust_changes,
                "pickup_ms_median": s.pickup_ms, "checked": s.checked,
                "violations": s.violations, "details": s.details,
            }));
        }
        json_keys.push(json!({
            "key_type": kt,
            "modes": json_modes,
            "comparison": json_cmp,
            "resumption": json_resume,
            "safety": json_safety,
            "instructions": json_instr,
        }));
    }
    Outcome {
        text: t,
        json: json!({
            "concurrency": settings.req_concurrency,
            "rounds": settings.req_rounds,
            "slot_s": settings.req_slot.as_secs_f64(),
            "notes": tools.notes,
            "keys": json_keys,
        }),
        problems,
        targets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(worker: usize, start_ms: i64, end_ms: i64, resumed: bool) -> Event {
        Event {
            worker,
            start_ns: start_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
            resumed,
            ok: true,
            leaf: String::new(),
        }
    }

    fn change(written_ms: i64, seen_ms: i64) -> Change {
        Change {
            trust: false,
            written_ns: written_ms * 1_000_000,
            seen_ns: seen_ms * 1_000_000,
        }
    }

    #[test]
    fn a_session_from_before_a_change_resumed_after_it_is_a_violation() {
        // Worker 0: connection ended at 9 ms, change written at 10 ms, shown at 12 ms, next
        // connection at 13 ms resumed: the session can only come from before the change.
        let events = [ev(0, 0, 9, false), ev(0, 13, 14, true), ev(0, 15, 16, true)];
        let (checked, violations, details) = check_sessions(&events, &[change(10, 12)]);
        assert_eq!((checked, violations), (1, 1));
        assert_eq!(details.len(), 1);
    }

    #[test]
    fn a_full_handshake_after_a_change_passes_and_later_resumptions_are_not_counted() {
        let events = [
            ev(0, 0, 9, true),
            ev(0, 13, 14, false),
            ev(0, 15, 16, true),
            ev(1, 1, 8, false),
            ev(1, 20, 21, false),
        ];
        let (checked, violations, _) = check_sessions(&events, &[change(10, 12)]);
        assert_eq!((checked, violations), (2, 0));
    }

    #[test]
    fn a_connection_that_straddles_the_change_is_not_checked() {
        // The previous connection ended after the write: its session may be from after the
        // change, so the next resumption proves nothing either way.
        let events = [ev(0, 0, 11, false), ev(0, 13, 14, true)];
        assert_eq!(check_sessions(&events, &[change(10, 12)]).0, 0);
        // Started before the server showed the change: not checked either.
        let events = [ev(0, 0, 9, false), ev(0, 11, 14, true)];
        assert_eq!(check_sessions(&events, &[change(10, 12)]).0, 0);
    }
}
