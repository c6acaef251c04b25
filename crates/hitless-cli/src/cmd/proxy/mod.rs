//! `hitless proxy`: a TLS sidecar on the hitless core, so that a service in any language gets
//! reloading mutual TLS by talking plaintext to localhost.
//!
//! - `proxy server` terminates mutual TLS and forwards each admitted client's bytes to a
//!   plaintext target (TCP or unix socket). A client is admitted when the current trust
//!   accepts its chain (the verdict is taken when its certificate is verified) *and* an
//!   `--allow-*` rule names it ([`crate::allow`]); there is no silent default.
//! - `proxy client` accepts plaintext and opens one mutual-TLS connection to the target per
//!   local connection, presenting the reloading client identity, resuming TLS 1.3 sessions
//!   between rotations and trust changes, and checking `--verify-*` pins on the server's
//!   certificate.
//!
//! Both forward half-closes ([`tunnel`]), count everything ([`observe`]), reload on SIGHUP,
//! and on SIGINT/SIGTERM stop accepting and let open tunnels finish for up to
//! `--shutdown-timeout`.

mod client;
mod config;
mod endpoint;
mod observe;
mod pp2;
mod server;
mod tunnel;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hitless::Detection;

use crate::admin::Metrics;
use crate::listen::{self, Limits, Listener};
use crate::value;
use observe::{Credential, Families, Report};

/// Flags of `hitless proxy`.
#[derive(clap::Args, Debug)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:
  hitless proxy server --listen 0.0.0.0:8443 --target 127.0.0.1:8080 \\
      --identity identity.pem --client-ca ca.pem --allow-cn billing
  hitless proxy client --listen 127.0.0.1:8080 --target api.internal:8443 \\
      --identity client.pem --ca ca.pem
  hitless proxy --config proxies.toml      (several [[proxy]] tables in one process)"
)]
pub struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// A TOML file of `[[proxy]]` tables (servers and clients, run in one process), with
    /// optional `[admin]` and `[reload]` tables (see docs/proxy.md).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// Terminate mutual TLS and forward admitted clients to a plaintext target.
    Server(server::Args),
    /// Accept plaintext and forward it over mutual TLS to a `proxy server` (or any TLS server).
    Client(client::Args),
}

/// Limits, timeouts and the admin listener, the same for both modes.
#[derive(clap::Args, Debug, Clone)]
pub struct Common {
    /// Tunnels (and handshakes in progress) open at once [default: 10000, lowered to what the
    /// descriptor limit allows]. At the limit, new connections wait in the kernel's backlog.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Time to connect to the target (TCP or unix socket, name resolution included).
    #[arg(long, value_parser = value::positive_duration, default_value = "5s")]
    pub connect_timeout: Duration,
    /// Time a TLS handshake may take.
    #[arg(long, value_parser = value::positive_duration, default_value = "10s")]
    pub handshake_timeout: Duration,
    /// A tunnel through which no byte moved either way for this long is closed.
    #[arg(long, value_parser = value::positive_duration, default_value = "1h")]
    pub idle_timeout: Duration,
    /// On SIGINT/SIGTERM, how long open tunnels may go on before they are closed.
    #[arg(long, value_parser = value::duration, default_value = "10s")]
    pub shutdown_timeout: Duration,
    /// Plain-HTTP admin listener for /healthz, /status and /metrics (keep it on loopback).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Connections open at once on the admin listener [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub admin_max_connections: Option<u32>,
}

impl Default for Common {
    fn default() -> Self {
        Common {
            max_connections: None,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(3600),
            shutdown_timeout: Duration::from_secs(10),
            admin_listen: None,
            admin_max_connections: None,
        }
    }
}

impl Common {
    fn limits(&self) -> Limits {
        let base = Limits::default();
        Limits {
            max_connections: self.max_connections.unwrap_or(base.max_connections),
            admin_max_connections: self
                .admin_max_connections
                .unwrap_or(base.admin_max_connections),
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            ..base
        }
    }
}

/// One proxy to run: its flags (from the command line or a `[[proxy]]` table) and name.
#[derive(Debug)]
pub enum Plan {
    /// A `proxy server`.
    Server(server::Args, Option<String>),
    /// A `proxy client`.
    Client(client::Args, Option<String>),
}

impl Plan {
    fn common(&self) -> &Common {
        match self {
            Plan::Server(a, _) => &a.common,
            Plan::Client(a, _) => &a.common,
        }
    }

    fn reload(&self) -> &crate::flags::ReloadFlags {
        match self {
            Plan::Server(a, _) => &a.reload,
            Plan::Client(a, _) => &a.reload,
        }
    }
}

/// What the whole process runs: proxies and the process-wide settings.
#[derive(Debug)]
pub struct Process {
    /// The proxies, each with its own listener.
    pub proxies: Vec<Plan>,
    /// The admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// Its connection limit.
    pub admin_max_connections: Option<u32>,
    /// How long open tunnels may go on after SIGINT/SIGTERM.
    pub shutdown_timeout: Duration,
}

/// Runs the proxy (or the proxies of `--config`) until SIGINT or SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let process = match (args.mode, &args.config) {
        (Some(Mode::Server(a)), _) => Process {
            admin_listen: a.common.admin_listen,
            admin_max_connections: a.common.admin_max_connections,
            shutdown_timeout: a.common.shutdown_timeout,
            proxies: vec![Plan::Server(a, None)],
        },
        (Some(Mode::Client(a)), _) => Process {
            admin_listen: a.common.admin_listen,
            admin_max_connections: a.common.admin_max_connections,
            shutdown_timeout: a.common.shutdown_timeout,
            proxies: vec![Plan::Client(a, None)],
        },
        (None, Some(path)) => config::load(path)?,
        (None, None) => {
            bail!("give `proxy server ...`, `proxy client ...` or `proxy --config FILE`")
        }
    };
    run_process(process)
}

fn run_process(process: Process) -> anyhow::Result<ExitCode> {
    let families = Families::default();
    let metrics = Metrics::with(|registry| families.register(registry));
    // aws-lc checks once per process, on first use of its random generator, whether it runs in
    // a VM snapshot: do it now, not during the first handshake.
    let mut warm = [0u8; 16];
    let _ = rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut warm);
    let mut prepared = Vec::new();
    for plan in &process.proxies {
        let p = match plan {
            Plan::Server(a, name) => {
                Prepared::Server(server::prepare(a, name.as_deref(), &metrics, &families)?)
            }
            Plan::Client(a, name) => {
                Prepared::Client(client::prepare(a, name.as_deref(), &metrics, &families)?)
            }
        };
        prepared.push((p, plan.common().clone()));
    }
    let report = Arc::new(Report {
        metrics,
        credentials: prepared.iter().flat_map(|(p, _)| p.credentials()).collect(),
        proxies: prepared.iter().map(|(p, _)| p.stats()).collect(),
        ready: Default::default(),
    });
    let manual = process.proxies.iter().any(|p| {
        matches!(
            p.reload().detection(),
            Detection::Manual | Detection::OnHandshake { .. }
        )
    });
    let wait = process
        .proxies
        .iter()
        .map(|p| p.reload().wait_for_credentials)
        .max()
        .unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(
        &process,
        manual,
        wait,
        report,
        prepared,
        shutdown_signal(),
    ));
    // Tunnels still open after the shutdown timeout are cut here.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// A proxy with its credentials loaded, ready to listen.
enum Prepared {
    Server(server::Proxy),
    Client(client::Proxy),
}

impl Prepared {
    fn credentials(&self) -> Vec<Credential> {
        match self {
            Prepared::Server(p) => p.credentials(),
            Prepared::Client(p) => p.credentials(),
        }
    }

    fn stats(&self) -> Arc<observe::ProxyStats> {
        match self {
            Prepared::Server(p) => p.stats.clone(),
            Prepared::Client(p) => p.stats.clone(),
        }
    }
}

async fn serve(
    process: &Process,
    manual: bool,
    wait: Duration,
    report: Arc<Report>,
    prepared: Vec<(Prepared, Common)>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<ExitCode> {
    let with_admin = process.admin_listen.is_some();
    let admin_limits = Common {
        admin_max_connections: process.admin_max_connections,
        ..Common::default()
    }
    .limits()
    .fitted(listen::descriptor_limit(), with_admin);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = process.admin_listen {
        let admin = Listener::bind(
            "admin",
            addr,
            admin_limits.admin_max_connections,
            report.metrics.listener("admin"),
        )
        .with_context(|| format!("cannot listen on {addr} (--admin-listen)"))?;
        if !addr.ip().is_loopback() {
            tracing::warn!(admin = %addr, "admin listener is not on loopback: /status and /metrics are readable from the network");
        }
        tracing::info!(admin = %addr, "admin listener: /healthz /status /metrics");
        tokio::spawn(crate::admin::serve_admin(
            admin,
            report.clone(),
            admin_limits,
            stop_rx.clone(),
        ));
    }
    spawn_sighup_reload(report.credentials.clone());
    if manual {
        // Without a detector thread nothing else announces expiry.
        let credentials = report.credentials.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                for c in &credentials {
                    match c {
                        Credential::Identity(i) => i.check_expiry(),
                        Credential::Trust(t) => t.check_expiry(),
                    }
                }
            }
        });
    }
    tokio::pin!(shutdown);
    if !report.all_loaded() {
        tracing::info!(timeout = ?wait, "waiting for credentials to be written");
        let give_up = Instant::now().checked_add(wait);
        while !report.all_loaded() {
            if give_up.is_some_and(|g| Instant::now() >= g) {
                let missing: Vec<String> = report
                    .credentials
                    .iter()
                    .filter(|c| !c.loaded())
                    .map(|c| {
                        let s = c.status();
                        match s.last_error {
                            Some(e) => format!("{}: {}", s.name, e.message),
                            None => format!("{}: not loaded", s.name),
                        }
                    })
                    .collect();
                bail!(
                    "gave up after --wait-for-credentials {}: {}",
                    humantime::format_duration(wait),
                    missing.join("; ")
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = &mut shutdown => return Ok(ExitCode::SUCCESS),
            }
        }
        tracing::info!("credentials loaded");
    }
    let mut running = Vec::new();
    for (p, common) in prepared {
        // Each proxy's listener gets its own limit; the admin listener's share is kept.
        let limits = common
            .limits()
            .fitted(listen::descriptor_limit(), with_admin);
        running.push(match p {
            Prepared::Server(p) => p.start(limits, &common, stop_rx.clone())?,
            Prepared::Client(p) => p.start(limits, &common, stop_rx.clone())?,
        });
    }
    report.ready.store(true, Ordering::SeqCst);
    shutdown.await;
    stop_tx.send_replace(true);
    tracing::info!(
        timeout = ?process.shutdown_timeout,
        "shutting down: no new connections, letting open tunnels finish"
    );
    let drained = async {
        for r in running {
            r.drained().await;
        }
    };
    tokio::select! {
        () = drained => tracing::info!("all tunnels closed"),
        () = tokio::time::sleep(process.shutdown_timeout) => {
            tracing::warn!("shutdown timeout reached, closing the tunnels still open");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A listening proxy: resolves [`Running::drained`] once it stopped and every tunnel closed.
pub struct Running {
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Running {
    async fn drained(self) {
        let _ = self.done.await;
    }
}

/// Waits for `stop`, then closes `listener`'s accept loop and waits for its connections.
fn spawn_accept_loop<F, Fut>(
    mut listener: Listener,
    mut stop: tokio::sync::watch::Receiver<bool>,
    handle: F,
) -> Running
where
    F: Fn(listen::Accepted) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (done_tx, done) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = listen::stopped(&mut stop) => break,
            };
            tokio::spawn(handle(accepted));
        }
        listener.close().wait().await;
        let _ = done_tx.send(());
    });
    Running { done }
}

/// Reloads every credential on each SIGHUP, whatever the detection mode.
fn spawn_sighup_reload(credentials: Vec<Credential>) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot listen for SIGHUP: {e}");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading every credential");
            let credentials = credentials.clone();
            // reload() may sleep for the quiet period: keep it off the async workers.
            let done = tokio::task::spawn_blocking(move || {
                for c in &credentials {
                    match c.reload() {
                        Ok(outcome) => tracing::info!("SIGHUP reload: {outcome:?}"),
                        Err(e) => tracing::warn!(
                            "SIGHUP reload failed, keeping the last good credential: {e}"
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
