//! `hitless demo`: the whole system on one machine, live.
//!
//! In a temporary directory: two development CAs; agents rotating the server identity (one
//! bundle file replaced by rename, as an OpenBao/Vault Agent does) and the client identity (a
//! Kubernetes Secret volume, `..data` symlink swap) every few seconds; `hitless serve` (mutual
//! TLS, reloading identity, client CAs and CRL) in process; clients making a new full handshake
//! per request; long-lived keep-alive connections that must survive every rotation; and the
//! prober (`hitless probe`, the real command) every few seconds. On a schedule it injects bad
//! writes (a truncated bundle, a bundle whose key does not match), revokes a client certificate,
//! and rotates the client CA itself (trust CA1+CA2 → issue from CA2 → trust CA2 only).
//!
//! A live terminal view shows it (or periodic lines with `--no-tui` or when stdout is not a
//! terminal); a summary ends it. Exit 0 only if no handshake or request failed, every probe
//! attack was refused, every bad write was refused and reported, the revoked client was
//! refused, no long-lived connection was lost, and every kind of rotation happened.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use hitless::{
    Detection, Event, IdentitySource, MemberOptions, ReloadingClientConfig, ReloadingIdentity,
    ReloadingTrust, TrustSource,
};
use serde_json::Value;

use crate::admin::Observed;
use crate::client::{self, Target};
use crate::cmd::serve::{self, Plan};
use crate::load::{ms, Latencies};
use crate::pki::layout::{self, Layout, Output, WriteMode};
use crate::pki::{DevCa, Issued, Kind, LeafSpec};

/// Flags of `hitless demo`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:
  hitless demo                       # 60 s, live view; q or Ctrl-C ends it early
  hitless demo --duration 30s --no-tui")]
pub struct Args {
    /// How long the demo runs.
    #[arg(long, value_parser = crate::value::duration, default_value = "60s")]
    pub duration: Duration,
    /// How often the agents rotate the server and client identities.
    #[arg(long, value_parser = crate::value::duration, default_value = "3s")]
    pub rotate_every: Duration,
    /// Print periodic lines instead of the live terminal view.
    #[arg(long)]
    pub no_tui: bool,
    /// Clients making a new full handshake per request.
    #[arg(long, default_value_t = 3)]
    pub clients: usize,
    /// Long-lived keep-alive connections that must survive every rotation.
    #[arg(long, default_value_t = 2)]
    pub keep_alive: usize,
    /// Requests per second of each client.
    #[arg(long, default_value_t = 25.0)]
    pub rate: f64,
    /// How often the prober runs.
    #[arg(long, value_parser = crate::value::duration, default_value = "8s")]
    pub probe_every: Duration,
    /// Keep the temporary directory (its path is printed) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

/// Counters and facts shared by every task of the demo and read by the view.
#[derive(Default)]
struct Board {
    requests_ok: AtomicU64,
    requests_failed: AtomicU64,
    keep_alive_requests: AtomicU64,
    keep_alive_alive: AtomicU64,
    keep_alive_lost: AtomicU64,
    server_rotations: AtomicU64,
    client_rotations: AtomicU64,
    ca_rotations: AtomicU64,
    revocations_refused: AtomicU64,
    bad_writes: AtomicU64,
    bad_writes_refused: AtomicU64,
    reload_failures: AtomicU64,
    /// Set while a bad write is on disk: the server's agent waits, so that the bad write is
    /// what the server reads (and refuses) rather than being replaced at once.
    hold_server_agent: AtomicBool,
    /// An agent write is in progress.
    agent_busy: AtomicBool,
    probes_run: AtomicU64,
    probes_passed: AtomicU64,
    probe_attacks_refused: AtomicU64,
    probe_attacks_got_in: AtomicU64,
    failures: Mutex<Vec<String>>,
    events: Mutex<VecDeque<String>>,
    client_generation: AtomicU64,
    client_serial: Mutex<String>,
    client_ca: Mutex<String>,
    stop: AtomicBool,
    /// Latency of every successful request (new-connection and keep-alive), connection and
    /// handshake included for the former.
    latency: Mutex<Latencies>,
    /// The same since the live view last looked.
    latency_window: Mutex<Latencies>,
}

impl Board {
    fn event(&self, started: Instant, text: impl Into<String>) {
        let line = format!("{:>5.1}s  {}", started.elapsed().as_secs_f64(), text.into());
        let mut events = crate::lock(&self.events);
        events.push_back(line);
        while events.len() > 200 {
            events.pop_front();
        }
    }

    fn failure(&self, started: Instant, what: String) {
        self.event(started, format!("FAILURE: {what}"));
        crate::lock(&self.failures).push(what);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn record_latency(&self, d: Duration) {
        crate::lock(&self.latency).record(d);
        crate::lock(&self.latency_window).record(d);
    }
}

/// The files of the sandbox.
struct Sandbox {
    dir: PathBuf,
    ca1: DevCa,
    ca1_dir: PathBuf,
    ca2: DevCa,
    ca2_dir: PathBuf,
    server_out: Output,
    client_out: Output,
    clients_ca: PathBuf,
    crl: PathBuf,
    server_ca: PathBuf,
}

impl Sandbox {
    fn create(dir: &Path) -> anyhow::Result<Sandbox> {
        let ca1_dir = dir.join("ca1");
        let ca2_dir = dir.join("ca2");
        let ca1 = DevCa::init(&ca1_dir, crate::pki::KeyType::EcP256, false)?;
        let ca2 = DevCa::init(&ca2_dir, crate::pki::KeyType::EcP256, false)?;
        let server_out = Output {
            dir: dir.join("server"),
            name: "localhost".into(),
            layout: Layout::Bundle,
            write: WriteMode::Rename,
            in_place_pause: Duration::from_millis(50),
        };
        let client_out = Output {
            dir: dir.join("client"),
            name: "demo-client".into(),
            layout: Layout::K8s,
            write: WriteMode::Rename,
            in_place_pause: Duration::from_millis(50),
        };
        let clients_ca = dir.join("clients-ca.pem");
        let crl = dir.join("clients.crl");
        let server_ca = dir.join("server-ca.pem");
        layout::write_atomic(&clients_ca, ca1.root_pem().as_bytes(), 0o644)?;
        layout::write_atomic(&server_ca, ca1.root_pem().as_bytes(), 0o644)?;
        let (crl_pem, _) = ca1.crl(Duration::from_secs(3600))?;
        layout::write_atomic(&crl, crl_pem.as_bytes(), 0o644)?;
        Ok(Sandbox {
            dir: dir.to_owned(),
            ca1,
            ca1_dir,
            ca2,
            ca2_dir,
            server_out,
            client_out,
            clients_ca,
            crl,
            server_ca,
        })
    }

    fn issue(&self, ca: &DevCa, kind: Kind, name: &str, ttl: Duration) -> anyhow::Result<Issued> {
        ca.issue(&LeafSpec {
            name: name.into(),
            kind,
            key_type: crate::pki::KeyType::EcP256,
            ttl,
            dns: Vec::new(),
            ips: Vec::new(),
        })
    }
}

impl Args {
    /// Whether the live view will be shown (not `--no-tui`, and stdout is a terminal).
    pub fn uses_tui(&self) -> bool {
        !self.no_tui && std::io::stdout().is_terminal()
    }
}

/// Runs the demo.
pub fn run(args: Args, log_format: crate::logging::Format) -> anyhow::Result<ExitCode> {
    if args.duration < Duration::from_secs(10) {
        bail!("--duration must be at least 10s to fit every step of the demo");
    }
    if args.rotate_every < Duration::from_millis(200) {
        bail!("--rotate-every must be at least 200ms");
    }
    let tmp = tempfile::Builder::new()
        .prefix("hitless-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let tui = args.uses_tui();
    let log_path = tmp.path().join("demo.log");
    if tui {
        let file = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        crate::logging::init_to_file(log_format, file);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(demo(&args, tmp.path(), tui));
    runtime.shutdown_timeout(Duration::from_secs(2));
    if args.keep {
        let kept = tmp.keep();
        say(&format!(
            "sandbox kept in {} (log: demo.log)",
            kept.display()
        ));
    } else if tui {
        say(&format!(
            "(the log of this run was in {}; --keep keeps it)",
            log_path.display()
        ));
    }
    result
}

/// Writes a line on stdout, or nothing if stdout is gone (a closed terminal, a closed pipe):
/// `println!` would panic there. Returns whether the line was written.
fn say(line: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
}

async fn demo(args: &Args, dir: &Path, tui: bool) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let board = Arc::new(Board::default());
    let sandbox = Arc::new(Sandbox::create(dir)?);
    // Long enough that "expiring soon" (a third of the lifetime left, the CA backdates a
    // minute) is never reached between two rotations.
    let ttl = (args.rotate_every * 10).max(Duration::from_secs(60));

    // First identities, then the server.
    let first_server = sandbox.issue(&sandbox.ca1, Kind::Server, "localhost", ttl)?;
    sandbox.server_out.write(&first_server)?;
    let first_client = sandbox.issue(&sandbox.ca1, Kind::Client, "demo-client", ttl)?;
    sandbox.client_out.write(&first_client)?;
    *crate::lock(&board.client_serial) = first_client.serial_hex();
    *crate::lock(&board.client_ca) = "CA1".into();

    let plan = Plan {
        listen: "127.0.0.1:0".parse()?,
        admin: None,
        identities: vec![(
            IdentitySource::bundle(sandbox.server_out.dir.join(layout::BUNDLE_FILE)),
            MemberOptions::named("server"),
        )],
        trust: Some(TrustSource::cas([&sandbox.clients_ca]).with_crls([&sandbox.crl])),
        detection: Detection::Watch,
        quiet: Duration::from_millis(200),
        accept_expired: false,
        expiring_soon: hitless::Status::DEFAULT_EXPIRING_SOON,
        wait: Duration::ZERO,
        drop_untrusted: false,
        shutdown_timeout: Duration::from_secs(2),
        limits: crate::listen::Limits::default(),
    };
    let metrics = crate::admin::Metrics::new();
    let (identities, trust) = serve::load_credentials(&plan, &metrics)?;
    let server_trust = trust.clone();
    {
        let (b, s) = (board.clone(), started);
        identities.subscribe(move |e| match e {
            Event::Reloaded { generation, .. } if *generation > 1 => {
                b.server_rotations.fetch_add(1, Ordering::Relaxed);
                b.event(
                    s,
                    format!("server identity reloaded: generation {generation}"),
                );
            }
            Event::ReloadFailed { error, .. } => {
                b.reload_failures.fetch_add(1, Ordering::Relaxed);
                b.event(
                    s,
                    format!("server kept its last good identity: {}", error.message),
                );
            }
            _ => {}
        });
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(serve::serve(
        plan,
        identities,
        trust,
        metrics,
        async move {
            let _ = server_stop.wait_for(|s| *s).await;
        },
        Some(started_tx),
    ));
    let serve::Started { local, observed } = started_rx
        .await
        .context("the server did not start (see the log above)")?;
    let target = Target::parse(&format!("https://localhost:{}/", local.port()), None)?;
    board.event(started, format!("server listening on {local} (mutual TLS)"));

    // The clients' own reloading credentials: the k8s volume and the server CA.
    let client_identity = ReloadingIdentity::builder(IdentitySource::pair(
        sandbox.client_out.dir.join(layout::TLS_CRT_FILE),
        sandbox.client_out.dir.join(layout::TLS_KEY_FILE),
    ))
    .name("client")
    .build()?;
    {
        let b = board.clone();
        client_identity.subscribe(move |e| {
            if let Event::Reloaded { generation, .. } = e {
                b.client_generation.store(*generation, Ordering::Relaxed);
            }
        });
        board.client_generation.store(1, Ordering::Relaxed);
    }
    let client_trust = ReloadingTrust::builder(TrustSource::cas([&sandbox.server_ca]))
        .name("server-trust")
        .build()?;
    let client_config = ReloadingClientConfig::builder(&client_trust)
        .identities(vec![client_identity.clone()])
        .configure(|c| {
            c.resumption = rustls::client::Resumption::disabled();
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
        })
        .build()?;

    let mut tasks = Vec::new();
    for i in 0..args.clients {
        tasks.push(tokio::spawn(client_loop(
            i,
            target.clone(),
            client_config.clone(),
            board.clone(),
            started,
            args.rate,
        )));
    }
    for i in 0..args.keep_alive {
        tasks.push(tokio::spawn(keep_alive_loop(
            i,
            target.clone(),
            client_config.clone(),
            board.clone(),
            started,
        )));
    }
    tasks.push(tokio::spawn(agent_loop(
        sandbox.clone(),
        board.clone(),
        started,
        args.rotate_every,
        ttl,
    )));
    tasks.push(tokio::spawn(probe_loop(
        sandbox.clone(),
        board.clone(),
        started,
        target.clone(),
        args.probe_every,
    )));
    tasks.push(tokio::spawn(script(
        sandbox.clone(),
        board.clone(),
        started,
        args.duration,
        target.clone(),
        client_config.clone(),
        server_trust,
        observed.clone(),
        ttl,
    )));

    let view = View {
        board: board.clone(),
        observed: observed.clone(),
        client_identity: client_identity.clone(),
        started,
        duration: args.duration,
        dir: sandbox.dir.clone(),
    };
    let ended = if tui {
        view.run_tui().await?
    } else {
        view.run_lines().await
    };
    if let Ended::TerminalGone(why) = &ended {
        // Nobody is watching any more: end as soon as the tasks stop, print nothing there.
        tracing::warn!("the terminal is gone ({why}): ending the demo");
    }
    let interrupted = ended != Ended::Duration;

    board.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), t).await;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let summary = view.summary(interrupted);
    tracing::info!("{}", summary.text);
    if !matches!(ended, Ended::TerminalGone(_)) {
        say(&summary.text);
    }
    Ok(if summary.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A client making a new connection (full handshake) per request.
async fn client_loop(
    index: usize,
    target: Target,
    config: ReloadingClientConfig,
    board: Arc<Board>,
    started: Instant,
    rate: f64,
) {
    let pause = Duration::from_secs_f64(1.0 / rate.max(0.1));
    while !board.stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let result = async {
            let mut conn = client::connect(&target, config.current()).await?;
            let reply = conn.get(&target).await;
            conn.close().await;
            reply
        };
        match tokio::time::timeout(Duration::from_secs(10), result).await {
            Ok(Ok(reply)) if reply.status.is_success() => {
                board.record_latency(sent.elapsed());
                board.requests_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(reply)) => {
                board.requests_failed.fetch_add(1, Ordering::Relaxed);
                board.failure(started, format!("client {index}: HTTP {}", reply.status));
            }
            Ok(Err(f)) => {
                board.requests_failed.fetch_add(1, Ordering::Relaxed);
                board.failure(started, format!("client {index}: {}", f.detail()));
            }
            Err(_) => {
                board.requests_failed.fetch_add(1, Ordering::Relaxed);
                board.failure(started, format!("client {index}: request timed out"));
            }
        }
        tokio::time::sleep(pause).await;
    }
}

/// A long-lived connection sending a request every half second; it must never break.
async fn keep_alive_loop(
    index: usize,
    target: Target,
    config: ReloadingClientConfig,
    board: Arc<Board>,
    started: Instant,
) {
    let mut conn = match client::connect(&target, config.current()).await {
        Ok(c) => c,
        Err(f) => {
            board.keep_alive_lost.fetch_add(1, Ordering::Relaxed);
            board.failure(started, format!("keep-alive {index}: {}", f.detail()));
            return;
        }
    };
    board.keep_alive_alive.fetch_add(1, Ordering::Relaxed);
    while !board.stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        match tokio::time::timeout(Duration::from_secs(10), conn.get(&target)).await {
            Ok(Ok(reply)) if reply.status.is_success() => {
                board.record_latency(sent.elapsed());
                board.keep_alive_requests.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                let why = match other {
                    Ok(Ok(reply)) => format!("HTTP {}", reply.status),
                    Ok(Err(f)) => f.detail(),
                    Err(_) => "timed out".into(),
                };
                board.keep_alive_alive.fetch_sub(1, Ordering::Relaxed);
                board.keep_alive_lost.fetch_add(1, Ordering::Relaxed);
                board.failure(started, format!("keep-alive {index} lost: {why}"));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    conn.close().await;
}

/// The agents: rotate the server identity (bundle, rename) and the client identity (k8s
/// `..data` swap), alternately, every `every`; the client CA follows the script's switch.
async fn agent_loop(
    sandbox: Arc<Sandbox>,
    board: Arc<Board>,
    started: Instant,
    every: Duration,
    ttl: Duration,
) {
    let mut tick = tokio::time::interval(every / 2);
    tick.tick().await;
    let mut server_turn = true;
    while !board.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        if board.stop.load(Ordering::Relaxed) {
            break;
        }
        // Busy first, then look at the hold: the script sets the hold, then waits for "not
        // busy", so one of the two always sees the other.
        board.agent_busy.store(true, Ordering::SeqCst);
        if server_turn && board.hold_server_agent.load(Ordering::SeqCst) {
            board.agent_busy.store(false, Ordering::SeqCst);
            continue;
        }
        let sb = sandbox.clone();
        let on_ca2 = crate::lock(&board.client_ca).as_str() == "CA2";
        let result = tokio::task::spawn_blocking(move || -> anyhow::Result<(String, String)> {
            if server_turn {
                let issued = sb.issue(&sb.ca1, Kind::Server, "localhost", ttl)?;
                sb.server_out.write(&issued)?;
                Ok(("server".into(), issued.serial_hex()))
            } else {
                let ca = if on_ca2 { &sb.ca2 } else { &sb.ca1 };
                let issued = sb.issue(ca, Kind::Client, "demo-client", ttl)?;
                sb.client_out.write(&issued)?;
                Ok(("client".into(), issued.serial_hex()))
            }
        })
        .await;
        board.agent_busy.store(false, Ordering::SeqCst);
        match result {
            Ok(Ok((who, serial))) => {
                if who == "client" {
                    board.client_rotations.fetch_add(1, Ordering::Relaxed);
                    *crate::lock(&board.client_serial) = serial.clone();
                    board.event(
                        started,
                        format!(
                            "agent wrote a new client identity ({}), serial {}",
                            if on_ca2 { "CA2" } else { "CA1" },
                            short(&serial)
                        ),
                    );
                } else {
                    board.event(
                        started,
                        format!(
                            "agent wrote a new server identity, serial {}",
                            short(&serial)
                        ),
                    );
                }
            }
            Ok(Err(e)) => board.failure(started, format!("agent: {e:#}")),
            Err(e) => board.failure(started, format!("agent task: {e}")),
        }
        server_turn = !server_turn;
    }
}

/// Runs `hitless probe` (the real command) every `every`.
async fn probe_loop(
    sandbox: Arc<Sandbox>,
    board: Arc<Board>,
    started: Instant,
    target: Target,
    every: Duration,
) {
    tokio::time::sleep(Duration::from_secs(2)).await;
    while !board.stop.load(Ordering::Relaxed) {
        let ca_dir = if crate::lock(&board.client_ca).as_str() == "CA2" {
            sandbox.ca2_dir.clone()
        } else {
            sandbox.ca1_dir.clone()
        };
        match run_probe(&sandbox, &target, &ca_dir).await {
            Ok(report) => {
                board.probes_run.fetch_add(1, Ordering::Relaxed);
                let attacks = report["attacks"].as_array().cloned().unwrap_or_default();
                let mut refused = 0;
                let mut got_in = Vec::new();
                for a in &attacks {
                    if a["expected"] == "refused" {
                        if a["result"] == "refused" {
                            refused += 1;
                        } else if a["result"] != "skipped" {
                            got_in.push(a["attack"].as_str().unwrap_or("?").to_string());
                        }
                    }
                }
                board
                    .probe_attacks_refused
                    .fetch_add(refused, Ordering::Relaxed);
                if report["passed"] == true && got_in.is_empty() {
                    board.probes_passed.fetch_add(1, Ordering::Relaxed);
                    board.event(started, format!("probe: all {refused} attacks refused"));
                } else {
                    board
                        .probe_attacks_got_in
                        .fetch_add(got_in.len() as u64, Ordering::Relaxed);
                    board.failure(
                        started,
                        format!("probe failed: {got_in:?} {}", report["got_in"]),
                    );
                }
            }
            Err(e) => {
                board.probes_run.fetch_add(1, Ordering::Relaxed);
                board.failure(started, format!("probe could not run: {e:#}"));
            }
        }
        let until = Instant::now() + every;
        while Instant::now() < until && !board.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn run_probe(sandbox: &Sandbox, target: &Target, ca_dir: &Path) -> anyhow::Result<Value> {
    let exe = std::env::current_exe().context("cannot find the hitless executable")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("probe")
        .arg(format!("https://localhost:{}/", target.port))
        .arg("--ca")
        .arg(&sandbox.server_ca)
        .arg("--ca-cert")
        .arg(ca_dir.join(crate::pki::INTERMEDIATE_CERT_FILE))
        .arg("--ca-key")
        .arg(ca_dir.join(crate::pki::INTERMEDIATE_KEY_FILE))
        .arg("--json")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .context("probe timed out")?
        .context("cannot run probe")?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "probe printed no JSON (exit {:?}): {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The scripted events: bad writes, a revocation, the client CA rotation.
#[allow(clippy::too_many_arguments)]
async fn script(
    sandbox: Arc<Sandbox>,
    board: Arc<Board>,
    started: Instant,
    duration: Duration,
    target: Target,
    config: ReloadingClientConfig,
    server_trust: Option<ReloadingTrust>,
    observed: Arc<Observed>,
    ttl: Duration,
) {
    let at = |fraction: f64| started + duration.mul_f64(fraction);
    let wait_until = |t: Instant| {
        let board = board.clone();
        async move {
            while Instant::now() < t && !board.stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            !board.stop.load(Ordering::Relaxed)
        }
    };
    let Some(trust) = server_trust else {
        return;
    };

    // 1. A truncated bundle, then one whose key does not match: the last good identity holds.
    if !wait_until(at(0.15)).await {
        return;
    }
    let bundle = sandbox.server_out.dir.join(layout::BUNDLE_FILE);
    let truncated = match std::fs::read(&bundle) {
        Ok(b) => b[..b.len() / 2].to_vec(),
        Err(e) => {
            board.failure(
                started,
                format!("script: cannot read {}: {e}", bundle.display()),
            );
            return;
        }
    };
    bad_write(
        &board,
        started,
        &observed,
        &bundle,
        &truncated,
        "truncated bundle",
    )
    .await;
    if !wait_until(at(0.25)).await {
        return;
    }
    let mismatched = match (
        sandbox.issue(&sandbox.ca1, Kind::Server, "localhost", ttl),
        sandbox.issue(&sandbox.ca1, Kind::Server, "localhost", ttl),
    ) {
        (Ok(a), Ok(b)) => format!("{}{}", a.fullchain_pem(), b.key_pem),
        _ => {
            board.failure(started, "script: cannot issue".into());
            return;
        }
    };
    bad_write(
        &board,
        started,
        &observed,
        &bundle,
        mismatched.as_bytes(),
        "mismatched key",
    )
    .await;

    // 2. Revoke a client certificate: accepted before, refused after the CRL reload.
    if !wait_until(at(0.35)).await {
        return;
    }
    revoke(&sandbox, &board, started, &target, &config, &trust, ttl).await;

    // 3. Rotate the client CA: trust CA1+CA2, issue from CA2, trust CA2 only.
    if !wait_until(at(0.5)).await {
        return;
    }
    rotate_ca(&sandbox, &board, started, &trust).await;
}

async fn bad_write(
    board: &Board,
    started: Instant,
    observed: &Observed,
    bundle: &Path,
    contents: &[u8],
    what: &str,
) {
    board.hold_server_agent.store(true, Ordering::SeqCst);
    while board.agent_busy.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bad_write_held(board, started, observed, bundle, contents, what).await;
    board.hold_server_agent.store(false, Ordering::SeqCst);
}

async fn bad_write_held(
    board: &Board,
    started: Instant,
    observed: &Observed,
    bundle: &Path,
    contents: &[u8],
    what: &str,
) {
    let before = board.reload_failures.load(Ordering::Relaxed);
    let generation = observed.identities.members()[0].0.generation;
    if let Err(e) = layout::write_atomic(bundle, contents, 0o600) {
        board.failure(started, format!("bad write: {e:#}"));
        return;
    }
    board.bad_writes.fetch_add(1, Ordering::Relaxed);
    board.event(started, format!("injected a bad write: {what}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while board.reload_failures.load(Ordering::Relaxed) == before {
        if Instant::now() > deadline {
            board.failure(started, format!("bad write ({what}) was not reported"));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = observed.identities.members()[0].0.generation;
    if now == generation {
        board.bad_writes_refused.fetch_add(1, Ordering::Relaxed);
    } else {
        board.failure(
            started,
            format!("bad write ({what}) changed the generation"),
        );
    }
}

async fn revoke(
    sandbox: &Sandbox,
    board: &Board,
    started: Instant,
    target: &Target,
    config: &ReloadingClientConfig,
    trust: &ReloadingTrust,
    ttl: Duration,
) {
    let result: anyhow::Result<()> = async {
        let doomed = sandbox.issue(&sandbox.ca1, Kind::Client, "doomed-client", ttl)?;
        let doomed_config = single_client_config(sandbox, &doomed)?;
        let mut conn = client::connect(target, doomed_config.clone())
            .await
            .map_err(|f| anyhow::anyhow!(f.detail()))?;
        conn.get(target).await.map_err(|f| {
            anyhow::anyhow!(
                "doomed client refused before its revocation: {}",
                f.detail()
            )
        })?;
        conn.close().await;
        let generation = trust.status().generation;
        sandbox.ca1.revoke(&doomed.serial_hex())?;
        let (crl, _) = sandbox.ca1.crl(Duration::from_secs(3600))?;
        layout::write_atomic(&sandbox.crl, crl.as_bytes(), 0o644)?;
        board.event(
            started,
            format!(
                "revoked client serial {} and wrote the CRL",
                short(&doomed.serial_hex())
            ),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while trust.status().generation == generation {
            if Instant::now() > deadline {
                bail!("the server did not load the new CRL");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let attempt = async {
            let mut conn = client::connect(target, doomed_config).await?;
            conn.get(target).await
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Err(f)) if f.refused_by_server() => {
                board.revocations_refused.fetch_add(1, Ordering::Relaxed);
                board.event(started, "revoked client refused on a new handshake");
                Ok(())
            }
            Ok(Err(f)) => bail!("revoked client: unexpected failure {}", f.detail()),
            Ok(Ok(_)) => bail!("REVOKED CLIENT GOT IN"),
            Err(_) => bail!("revoked client: timed out"),
        }
    }
    .await;
    let _ = config;
    if let Err(e) = result {
        board.failure(started, format!("revocation: {e:#}"));
    }
}

/// A client configuration presenting one fixed certificate (the doomed client's).
fn single_client_config(
    sandbox: &Sandbox,
    issued: &Issued,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(
        sandbox.ca1.root_pem().as_bytes(),
    )?)?;
    let chain = CertificateDer::pem_slice_iter(issued.fullchain_pem().as_bytes())
        .collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())?;
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.resumption = rustls::client::Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn rotate_ca(sandbox: &Sandbox, board: &Board, started: Instant, trust: &ReloadingTrust) {
    let result: anyhow::Result<()> = async {
        let both = format!(
            "{}{}",
            with_newline(sandbox.ca1.root_pem()),
            with_newline(sandbox.ca2.root_pem())
        );
        swap_trust(trust, &sandbox.clients_ca, &both).await?;
        board.event(started, "CA rotation 1/3: the server trusts CA1 + CA2");
        let generation = board.client_generation.load(Ordering::Relaxed);
        *crate::lock(&board.client_ca) = "CA2".into();
        // Wait for the agent's next client rotation, now issued by CA2, to be loaded.
        let deadline = Instant::now() + Duration::from_secs(30);
        while board.client_generation.load(Ordering::Relaxed) <= generation + 1 {
            if Instant::now() > deadline {
                bail!("the client identity was not re-issued by CA2");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        board.event(started, "CA rotation 2/3: clients present CA2 certificates");
        swap_trust(
            trust,
            &sandbox.clients_ca,
            &with_newline(sandbox.ca2.root_pem()),
        )
        .await?;
        board.ca_rotations.fetch_add(1, Ordering::Relaxed);
        board.event(started, "CA rotation 3/3: the server trusts CA2 only");
        Ok(())
    }
    .await;
    if let Err(e) = result {
        board.failure(started, format!("CA rotation: {e:#}"));
    }
}

async fn swap_trust(trust: &ReloadingTrust, path: &Path, contents: &str) -> anyhow::Result<()> {
    let generation = trust.status().generation;
    layout::write_atomic(path, contents.as_bytes(), 0o644)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while trust.status().generation == generation {
        if Instant::now() > deadline {
            bail!("the server did not reload {}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') {
        s.to_string()
    } else {
        format!("{s}\n")
    }
}

/// The CN of a distinguished name as printed by x509-parser (`O=..., CN=...`).
fn common_name(subject: &str) -> String {
    subject
        .split(", ")
        .find_map(|part| part.strip_prefix("CN="))
        .unwrap_or(subject)
        .to_string()
}

fn short(serial: &str) -> String {
    let s: String = serial.chars().filter(|c| *c != ':').collect();
    s.chars().take(12).collect()
}

/// The live view and the summary.
struct View {
    board: Arc<Board>,
    observed: Arc<Observed>,
    client_identity: ReloadingIdentity,
    started: Instant,
    duration: Duration,
    dir: PathBuf,
}

/// One sample of everything the view shows.
struct Sample {
    elapsed: Duration,
    server_generation: u64,
    server_serial: String,
    server_expires_in: i64,
    client_generation: u64,
    client_serial: String,
    client_expires_in: i64,
    trust_generation: u64,
    trust_cas: Vec<String>,
    crl_revoked: usize,
    requests_ok: u64,
    requests_failed: u64,
    rate: f64,
    /// Every successful request, new-connection and keep-alive, per second.
    requests_rate: f64,
    /// Latencies since the previous sample (the live view) ...
    window: Latencies,
    /// ... and since the start (the summary).
    latency: Latencies,
    keep_alive: (u64, u64, u64),
    probes: (u64, u64, u64),
    server_rotations: u64,
    client_rotations: u64,
    ca_rotations: u64,
    revocations_refused: u64,
    bad_writes: (u64, u64),
    handshakes_refused: u64,
}

impl View {
    fn sample(&self, previous: Option<(&Sample, Duration)>) -> Sample {
        let now = SystemTime::now();
        let secs = |t: Option<SystemTime>| {
            t.map_or(0, |t| match t.duration_since(now) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64),
            })
        };
        let (server_status, server) = self
            .observed
            .identities
            .members()
            .into_iter()
            .next()
            .unwrap_or_else(|| (self.client_identity.status(), None));
        let client = self.client_identity.current();
        let trust = self.observed.trust.as_ref().and_then(|t| t.current());
        let b = &self.board;
        let ok = Board::get(&b.requests_ok);
        let all = ok + Board::get(&b.keep_alive_requests);
        let (rate, requests_rate) = match previous {
            Some((p, dt)) if !dt.is_zero() => (
                (ok - p.requests_ok) as f64 / dt.as_secs_f64(),
                (all - p.requests_ok - p.keep_alive.2) as f64 / dt.as_secs_f64(),
            ),
            _ => (0.0, 0.0),
        };
        let window = std::mem::take(&mut *crate::lock(&b.latency_window));
        let latency = crate::lock(&b.latency).clone();
        let refused: u64 = self
            .observed
            .metrics_text()
            .lines()
            .filter(|l| l.starts_with("hitless_handshakes_total{") && l.contains("refused"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        Sample {
            elapsed: self.started.elapsed(),
            server_generation: server_status.generation,
            server_serial: server
                .as_ref()
                .map(|s| short(&s.value.leaf().serial))
                .unwrap_or_default(),
            server_expires_in: secs(server.as_ref().map(|s| s.value.leaf().not_after)),
            client_generation: client.as_ref().map_or(0, |c| c.generation),
            client_serial: client
                .as_ref()
                .map(|s| short(&s.value.leaf().serial))
                .unwrap_or_default(),
            client_expires_in: secs(client.as_ref().map(|s| s.value.leaf().not_after)),
            trust_generation: trust.as_ref().map_or(0, |t| t.generation),
            trust_cas: trust
                .as_ref()
                .map(|t| {
                    t.value
                        .cas()
                        .iter()
                        .map(|c| common_name(&c.subject))
                        .collect()
                })
                .unwrap_or_default(),
            crl_revoked: trust
                .as_ref()
                .map_or(0, |t| t.value.crls().iter().map(|c| c.revoked).sum()),
            requests_ok: ok,
            requests_failed: Board::get(&b.requests_failed),
            rate,
            requests_rate,
            window,
            latency,
            keep_alive: (
                Board::get(&b.keep_alive_alive),
                Board::get(&b.keep_alive_lost),
                Board::get(&b.keep_alive_requests),
            ),
            probes: (
                Board::get(&b.probes_run),
                Board::get(&b.probes_passed),
                Board::get(&b.probe_attacks_refused),
            ),
            server_rotations: Board::get(&b.server_rotations),
            client_rotations: Board::get(&b.client_rotations),
            ca_rotations: Board::get(&b.ca_rotations),
            revocations_refused: Board::get(&b.revocations_refused),
            bad_writes: (Board::get(&b.bad_writes), Board::get(&b.bad_writes_refused)),
            handshakes_refused: refused,
        }
    }

    fn line(&self, s: &Sample) -> String {
        format!(
            "[{:>5.1}s] server gen {} serial {} expires in {}s | client gen {} serial {} | trust gen {} [{}] crl {} revoked | ok {} failed {} ({:.0} handshakes/s, {:.0} requests/s, p99 {}) | keep-alive {} alive {} lost | probes {}/{} passed | rotations: server {} client {} CA {}",
            s.elapsed.as_secs_f64(),
            s.server_generation,
            s.server_serial,
            s.server_expires_in,
            s.client_generation,
            s.client_serial,
            s.trust_generation,
            s.trust_cas.join(", "),
            s.crl_revoked,
            s.requests_ok,
            s.requests_failed,
            s.rate,
            s.requests_rate,
            s.window
                .quantile(0.99)
                .map_or("-".into(), |d| format!("{:.1} ms", ms(d))),
            s.keep_alive.0,
            s.keep_alive.1,
            s.probes.1,
            s.probes.0,
            s.server_rotations,
            s.client_rotations,
            s.ca_rotations,
        )
    }

    fn drain_events(&self, seen: &mut usize) -> Vec<String> {
        let events = crate::lock(&self.board.events);
        let total = events.len();
        let new: Vec<String> = events.iter().skip((*seen).min(total)).cloned().collect();
        *seen = total;
        new
    }

    /// Periodic lines on stdout, until the duration is over, Ctrl-C, a hang-up, or stdout is
    /// gone. (Standard input is not read: without the live view it may well be closed.)
    async fn run_lines(&self) -> Ended {
        if !say(&format!("hitless demo: sandbox in {}", self.dir.display())) {
            return Ended::TerminalGone("cannot write on stdout".into());
        }
        let end = self.started + self.duration;
        let mut previous: Option<(Sample, Instant)> = None;
        let mut seen = 0;
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        let mut hangup = hangup_signal();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = &mut ctrl_c => return Ended::Interrupted,
                _ = recv_signal(&mut hangup) => {
                    return Ended::TerminalGone("hang-up signal".into());
                }
            }
            for e in self.drain_events(&mut seen) {
                if !say(&format!("  event {e}")) {
                    return Ended::TerminalGone("cannot write on stdout".into());
                }
            }
            let now = Instant::now();
            let s = self.sample(previous.as_ref().map(|(p, t)| (p, now - *t)));
            if !say(&self.line(&s)) {
                return Ended::TerminalGone("cannot write on stdout".into());
            }
            previous = Some((s, now));
            if now >= end {
                return Ended::Duration;
            }
        }
    }

    /// The ratatui live view, until the duration is over, q, Esc or Ctrl-C, or the terminal
    /// is gone (end of input, a read or draw error, a hang-up signal). A terminal that is gone
    /// is not restored: there is nothing left to restore, and writing to it only fails.
    async fn run_tui(&self) -> anyhow::Result<Ended> {
        let mut terminal = ratatui::try_init().context("cannot start the terminal view")?;
        let mut keys = Some(spawn_key_reader());
        let mut hangup = hangup_signal();
        let end = self.started + self.duration;
        let mut previous: Option<(Sample, Instant)> = None;
        let mut history: Vec<u64> = Vec::new();
        let mut seen = 0;
        let mut events: Vec<String> = Vec::new();
        let ended = loop {
            let now = Instant::now();
            let s = self.sample(previous.as_ref().map(|(p, t)| (p, now - *t)));
            history.push(s.rate as u64);
            if history.len() > 120 {
                history.remove(0);
            }
            events.extend(self.drain_events(&mut seen));
            let draw = terminal.draw(|f| draw(f, &s, &history, &events, self.duration));
            if let Err(e) = draw {
                break Ended::TerminalGone(format!("cannot draw: {e}"));
            }
            previous = Some((s, now));
            if now >= end {
                break Ended::Duration;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                input = next_key(&mut keys) => match input {
                    Input::Quit => break Ended::Interrupted,
                    Input::Gone(why) => break Ended::TerminalGone(why),
                },
                _ = recv_signal(&mut hangup) => {
                    break Ended::TerminalGone("hang-up signal".into());
                }
            }
        };
        if matches!(ended, Ended::TerminalGone(_)) {
            // Its `Drop` would show the cursor on the gone terminal and, failing, print that
            // on a standard error that is gone too (a panic, then an abort in the panic hook).
            std::mem::forget(terminal);
        } else {
            let _ = ratatui::try_restore();
        }
        Ok(ended)
    }

    fn summary(&self, interrupted: bool) -> Summary {
        let s = self.sample(None);
        let failures = crate::lock(&self.board.failures).clone();
        let checks: Vec<(&str, bool, String)> = vec![
            (
                "server rotations >= 5",
                s.server_rotations >= 5,
                s.server_rotations.to_string(),
            ),
            (
                "client rotations >= 5",
                s.client_rotations >= 5,
                s.client_rotations.to_string(),
            ),
            (
                "CA rotations >= 1",
                s.ca_rotations >= 1,
                s.ca_rotations.to_string(),
            ),
            (
                "revoked client refused",
                s.revocations_refused >= 1,
                s.revocations_refused.to_string(),
            ),
            (
                "bad writes refused",
                s.bad_writes.0 >= 2 && s.bad_writes.1 >= s.bad_writes.0,
                format!("{}/{}", s.bad_writes.1, s.bad_writes.0),
            ),
            (
                "failed requests = 0",
                s.requests_failed == 0,
                s.requests_failed.to_string(),
            ),
            (
                "requests ok > 0",
                s.requests_ok > 0,
                s.requests_ok.to_string(),
            ),
            (
                "long-lived connections lost = 0",
                s.keep_alive.1 == 0,
                s.keep_alive.1.to_string(),
            ),
            (
                "probes: every attack refused",
                s.probes.0 >= 1 && s.probes.0 == s.probes.1,
                format!(
                    "{}/{} runs, {} attacks refused",
                    s.probes.1, s.probes.0, s.probes.2
                ),
            ),
            ("not interrupted", !interrupted, (!interrupted).to_string()),
        ];
        let passed = checks.iter().all(|c| c.1) && failures.is_empty();
        let mut text = String::from("\nhitless demo summary\n");
        text.push_str(&format!("  duration: {:.1}s\n", s.elapsed.as_secs_f64()));
        text.push_str(&format!("  server rotations: {}\n", s.server_rotations));
        text.push_str(&format!("  client rotations: {}\n", s.client_rotations));
        text.push_str(&format!("  CA rotations: {}\n", s.ca_rotations));
        text.push_str(&format!(
            "  revocations refused: {}\n",
            s.revocations_refused
        ));
        text.push_str(&format!(
            "  bad writes refused: {}/{}\n",
            s.bad_writes.1, s.bad_writes.0
        ));
        text.push_str(&format!("  requests ok: {}\n", s.requests_ok));
        let requests = s.requests_ok + s.keep_alive.2;
        text.push_str(&format!(
            "  requests/s: {:.0} ({requests} requests, new-connection and keep-alive)\n",
            requests as f64 / s.elapsed.as_secs_f64().max(1e-9)
        ));
        text.push_str(&format!(
            "  request latency: {}\n",
            if s.latency.count() == 0 {
                "no requests".to_string()
            } else {
                s.latency.human()
            }
        ));
        text.push_str(&format!("  failed requests: {}\n", s.requests_failed));
        text.push_str(&format!("  failed handshakes: {}\n", s.requests_failed));
        text.push_str(&format!(
            "  refused handshakes (attacks): {}\n",
            s.handshakes_refused
        ));
        text.push_str(&format!(
            "  long-lived connections: {} alive, {} lost, {} requests\n",
            s.keep_alive.0, s.keep_alive.1, s.keep_alive.2
        ));
        text.push_str(&format!(
            "  probes: {} run, {} passed, {} attacks refused\n",
            s.probes.0, s.probes.1, s.probes.2
        ));
        for (name, ok, value) in &checks {
            text.push_str(&format!(
                "  [{}] {name}: {value}\n",
                if *ok { "ok" } else { "FAIL" }
            ));
        }
        for f in failures.iter().take(20) {
            text.push_str(&format!("  failure: {f}\n"));
        }
        text.push_str(if passed {
            "  result: PASS\n"
        } else {
            "  result: FAIL\n"
        });
        Summary { text, passed }
    }
}

struct Summary {
    text: String,
    passed: bool,
}

/// Why the view ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    /// The duration was over.
    Duration,
    /// The user asked (q, Esc, Ctrl-C).
    Interrupted,
    /// The terminal went away (a closed SSH session or tmux pane): end of input, an error
    /// reading or writing it, or SIGHUP.
    TerminalGone(String),
}

/// What the keyboard reader reports.
#[derive(Debug)]
enum Input {
    /// q, Esc or Ctrl-C.
    Quit,
    /// The terminal is gone: end of file or an error on its input.
    Gone(String),
}

/// Reads the keyboard on a thread of its own: standard input if it is a terminal, else the
/// process's terminal (`/dev/tty`), as the terminal library does. End of input or an error
/// ends the reader (reported as [`Input::Gone`]); it never retries a read that failed, except
/// after an interruption by a signal, or after a pause when the descriptor is non-blocking.
/// (The terminal library's own reader loops forever on end of input: that is the busy loop
/// that kept a demo whose terminal had closed running, and spinning a core.)
fn spawn_key_reader() -> tokio::sync::mpsc::UnboundedReceiver<Input> {
    use std::io::Read;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut input: Box<dyn Read + Send> = if std::io::stdin().is_terminal() {
        Box::new(std::io::stdin())
    } else {
        match std::fs::File::open("/dev/tty") {
            Ok(tty) => Box::new(tty),
            Err(e) => {
                tracing::info!("no terminal to read keys from ({e}): q will not end the view");
                return rx;
            }
        }
    };
    let reader = move || {
        let mut buf = [0u8; 256];
        loop {
            let input = match input.read(&mut buf) {
                Ok(0) => Input::Gone("end of input".into()),
                Ok(n) if wants_quit(&buf[..n]) => Input::Quit,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Err(e) => Input::Gone(format!("cannot read the terminal: {e}")),
            };
            let _ = tx.send(input);
            return;
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("demo-keys".into())
        .spawn(reader)
    {
        tracing::warn!("cannot start the keyboard reader ({e}): q will not end the view");
    }
    rx
}

/// The next key event; never, once there is no keyboard reader (no terminal to read from).
async fn next_key(keys: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Input>>) -> Input {
    if let Some(rx) = keys {
        if let Some(input) = rx.recv().await {
            return input;
        }
        // The reader ended without a word: the view goes on without a keyboard.
        *keys = None;
    }
    std::future::pending().await
}

/// Whether the bytes read from the terminal (raw mode) hold q, Ctrl-C, or a lone Esc. Escape
/// sequences (arrows, function keys: `ESC [ ...`, `ESC O x`) are skipped, so their letters
/// are not taken for q.
fn wants_quit(bytes: &[u8]) -> bool {
    if bytes == [0x1b] {
        return true;
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'q' | 0x03 => return true,
            0x1b => {
                i += 1;
                match bytes.get(i) {
                    // CSI: parameters up to a final byte in 0x40..=0x7e.
                    Some(b'[') => {
                        i += 1;
                        while i < bytes.len() && !(0x40..=0x7e).contains(&bytes[i]) {
                            i += 1;
                        }
                    }
                    // SS3: one more byte.
                    Some(b'O') => i += 1,
                    _ => {}
                }
            }
            _ => {}
        }
        i += 1;
    }
    false
}

/// A stream of SIGHUP (a lost terminal), if one can be had.
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

/// The next SIGHUP; never, without a stream.
async fn recv_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            if s.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

fn draw(
    f: &mut ratatui::Frame,
    s: &Sample,
    history: &[u64],
    events: &[String],
    duration: Duration,
) {
    use ratatui::layout::{Constraint, Layout as UiLayout};
    use ratatui::style::{Color, Style, Stylize};
    use ratatui::text::Line;
    use ratatui::widgets::{Block, Paragraph, Sparkline};

    let [title, top, middle, spark, bottom] = UiLayout::vertical([
        Constraint::Length(1),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(5),
        Constraint::Min(3),
    ])
    .areas(f.area());
    f.render_widget(
        Paragraph::new(Line::from(format!(
            " hitless demo — {:.0}s of {:.0}s — q to quit",
            s.elapsed.as_secs_f64(),
            duration.as_secs_f64()
        )))
        .bold(),
        title,
    );
    let [identities, trust] =
        UiLayout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(top);
    f.render_widget(
        Paragraph::new(vec![
            Line::from(format!(
                "server  generation {:>3}  serial {}  expires in {}s",
                s.server_generation, s.server_serial, s.server_expires_in
            )),
            Line::from(format!(
                "client  generation {:>3}  serial {}  expires in {}s",
                s.client_generation, s.client_serial, s.client_expires_in
            )),
            Line::from(format!(
                "rotations: server {}  client {}  CA {}",
                s.server_rotations, s.client_rotations, s.ca_rotations
            )),
            Line::from(format!(
                "bad writes refused {}/{}   revoked client refused {}",
                s.bad_writes.1, s.bad_writes.0, s.revocations_refused
            )),
        ])
        .block(Block::bordered().title(" Identities ")),
        identities,
    );
    f.render_widget(
        Paragraph::new(vec![
            Line::from(format!("client trust generation {}", s.trust_generation)),
            Line::from(format!("CAs: {}", s.trust_cas.join(", "))),
            Line::from(format!("CRL: {} revoked", s.crl_revoked)),
        ])
        .block(Block::bordered().title(" Trust bundle ")),
        trust,
    );
    let failed_style = if s.requests_failed == 0 {
        Style::default().fg(Color::Green)
    } else {
        Style::default().fg(Color::Red)
    };
    let [traffic, probes] =
        UiLayout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)])
            .areas(middle);
    f.render_widget(
        Paragraph::new(vec![
            Line::from(format!(
                "handshakes/s {:.0}   requests/s {:.0}",
                s.rate, s.requests_rate
            )),
            Line::from(
                match (
                    s.window.quantile(0.5),
                    s.window.quantile(0.99),
                    s.window.max(),
                ) {
                    (Some(p50), Some(p99), Some(max)) => format!(
                        "latency last second  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                        ms(p50),
                        ms(p99),
                        ms(max)
                    ),
                    _ => "latency last second  -".to_string(),
                },
            ),
            Line::from(format!("requests ok {}", s.requests_ok)),
            Line::styled(
                format!("failed handshakes {}", s.requests_failed),
                failed_style,
            ),
            Line::from(format!(
                "long-lived connections alive {}  lost {}  ({} requests)",
                s.keep_alive.0, s.keep_alive.1, s.keep_alive.2
            )),
        ])
        .block(Block::bordered().title(" Traffic ")),
        traffic,
    );
    f.render_widget(
        Paragraph::new(vec![
            Line::from(format!("probe runs {}  passed {}", s.probes.0, s.probes.1)),
            Line::from(format!("attacks refused {}", s.probes.2)),
            Line::from(format!("handshakes refused {}", s.handshakes_refused)),
        ])
        .block(Block::bordered().title(" Probes ")),
        probes,
    );
    f.render_widget(
        Sparkline::default()
            .block(Block::bordered().title(" Handshakes/s "))
            .data(history),
        spark,
    );
    let visible = bottom.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = events
        .iter()
        .skip(events.len().saturating_sub(visible))
        .map(|e| Line::from(e.as_str()))
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Events ")),
        bottom,
    );
}

#[cfg(test)]
mod tests {
    use super::{short, wants_quit};

    #[test]
    fn quit_keys_but_not_escape_sequences() {
        for quit in [&b"q"[..], b"\x03", b"\x1b", b"abq", b"\x1b[Aq"] {
            assert!(wants_quit(quit), "{quit:?}");
        }
        // Arrows, F2 (`ESC O Q`), a CSI with parameters ending in `q`, other letters.
        for other in [&b"\x1b[A"[..], b"\x1bOQ", b"\x1b[1;5q", b"x", b""] {
            assert!(!wants_quit(other), "{other:?}");
        }
    }

    #[test]
    fn short_serial_drops_colons() {
        assert_eq!(short("aa:bb:cc"), "aabbcc");
    }
}
