//! `hitless agent`: issues short-lived identities from the development CA again and again and
//! writes each one the way a real agent does (see [`crate::pki::layout`]), so a reloading service
//! can be watched rotating on one machine.
//!
//! The schedule is an agent's: a new identity once `--renew-at` × `--ttl` has passed since the
//! last one (TTL 60 s, 0.66 → every ~40 s), until `--count` identities are written, `--duration`
//! has passed, or SIGINT/SIGTERM. [`Agent`] is the same loop for in-process use.

use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::pki::layout::{write_atomic, Layout, Output, WriteMode, CERT_MODE};
use crate::pki::{DevCa, Issued, KeyType, Kind, LeafSpec};

/// Flags of `hitless agent`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  hitless agent --dir ./pki --name localhost --out ./run/server --layout k8s --ttl 60s
  hitless agent --dir ./pki --name billing --kind client --out ./run/client --layout pair \\
      --write in-place --ttl 20s --renew-at 0.5 --ca-out ./run/ca.pem")]
pub struct Args {
    /// Directory of the CA (made by `hitless ca init`).
    #[arg(long, default_value = "pki")]
    pub dir: PathBuf,
    /// Subject common name; for a server also a DNS SAN (an IP SAN if it is an address), and
    /// `localhost` also gets 127.0.0.1 and ::1. Also the certbot lineage name.
    #[arg(long)]
    pub name: String,
    /// Server (serverAuth) or client (clientAuth) identities.
    #[arg(long, value_enum, default_value_t = Kind::Server)]
    pub kind: Kind,
    /// Key algorithm of each leaf.
    #[arg(long, value_enum, default_value_t = KeyType::EcP256)]
    pub key_type: KeyType,
    /// A further IP SAN. Repeatable.
    #[arg(long)]
    pub ip: Vec<IpAddr>,
    /// A further DNS SAN. Repeatable.
    #[arg(long)]
    pub dns: Vec<String>,
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Which files: bundle (identity.pem), pair (tls.crt + tls.key), k8s (..data symlink swap),
    /// certbot (live/NAME → archive/NAME).
    #[arg(long, value_enum, default_value_t = Layout::Bundle)]
    pub layout: Layout,
    /// How bundle and pair files are replaced: rename (temp file + fsync + rename) or in-place
    /// (truncate and rewrite, certificate then key, like a naive agent).
    #[arg(long, value_enum, default_value_t = WriteMode::Rename)]
    pub write: WriteMode,
    /// With --write in-place: the pause between writing the certificate and the key.
    #[arg(long, value_parser = crate::value::duration, default_value = "50ms")]
    pub in_place_pause: Duration,
    /// Lifetime of each identity.
    #[arg(long, value_parser = crate::value::positive_duration, default_value = "60s")]
    pub ttl: Duration,
    /// Renew when this fraction of the lifetime has passed (0 < f ≤ 1).
    #[arg(long, value_parser = parse_fraction, default_value = "0.66")]
    pub renew_at: f64,
    /// Stop after writing this many identities (the first included).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop after this long, e.g. 30s.
    #[arg(long, value_parser = crate::value::positive_duration)]
    pub duration: Option<Duration>,
    /// Also write the CA bundle (the root) here, once, before the first identity.
    #[arg(long)]
    pub ca_out: Option<PathBuf>,
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s
        .parse()
        .map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if f > 0.0 && f <= 1.0 {
        Ok(f)
    } else {
        Err(format!("{f} is not in (0, 1]"))
    }
}

/// When the loop of [`Agent::run`] stops by itself (besides the shutdown future).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Stop after writing this many identities.
    pub count: Option<u64>,
    /// Stop this long after the start.
    pub duration: Option<Duration>,
}

/// One identity written by [`Agent::rotate`].
#[derive(Debug, Clone)]
pub struct Rotation {
    /// 1 for the first identity this agent wrote, then 2, 3, …
    pub generation: u64,
    /// What was issued.
    pub issued: Issued,
    /// The files a consumer reads.
    pub paths: Vec<PathBuf>,
}

impl Rotation {
    /// Logs the rotation (info): generation, serial, notAfter and the paths written.
    pub fn log(&self) {
        let shown: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        tracing::info!(
            generation = self.generation,
            serial = %self.issued.serial_hex(),
            not_after = %self.issued.not_after_rfc3339(),
            path = %shown.join(","),
            "wrote identity"
        );
    }
}

/// An agent: issues [`LeafSpec`] from a [`DevCa`] and writes it to an [`Output`], on a schedule.
#[derive(Debug)]
pub struct Agent {
    ca: DevCa,
    spec: LeafSpec,
    output: Output,
    renew_after: Duration,
    generation: u64,
}

impl Agent {
    /// An agent renewing once `renew_at` (0 < f ≤ 1) of `spec.ttl` has passed.
    pub fn new(ca: DevCa, spec: LeafSpec, output: Output, renew_at: f64) -> anyhow::Result<Agent> {
        if !(renew_at > 0.0 && renew_at <= 1.0) {
            bail!("renew-at {renew_at} is not in (0, 1]");
        }
        output.check()?;
        let renew_after = spec.ttl.mul_f64(renew_at);
        if renew_after.is_zero() {
            bail!("a TTL of {:?} leaves no time between renewals", spec.ttl);
        }
        Ok(Agent {
            ca,
            spec,
            output,
            renew_after,
            generation: 0,
        })
    }

    /// The time between two renewals.
    pub fn renew_after(&self) -> Duration {
        self.renew_after
    }

    /// Issues one identity now and writes it.
    pub fn rotate(&mut self) -> anyhow::Result<Rotation> {
        let issued = self.ca.issue(&self.spec)?;
        let paths = self.output.write(&issued)?;
        self.generation += 1;
        Ok(Rotation {
            generation: self.generation,
            issued,
            paths,
        })
    }

    /// Rotates (and logs) now and then every [`Agent::renew_after`], until a limit is reached or
    /// `shutdown` completes (checked between rotations: a rotation is never cut short). Returns
    /// how many identities were written. Issuing and writing run on the blocking pool.
    pub async fn run(
        self,
        limits: Limits,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<u64> {
        let start = Instant::now();
        let deadline = limits.duration.map(|d| start + d);
        let mut agent = self;
        let mut written = 0u64;
        tokio::pin!(shutdown);
        loop {
            let started = Instant::now();
            let (returned, result) = tokio::task::spawn_blocking(move || {
                let result = agent.rotate();
                (agent, result)
            })
            .await
            .context("the rotation task failed")?;
            agent = returned;
            result?.log();
            written += 1;
            if limits.count.is_some_and(|c| written >= c) {
                break;
            }
            let next = started + agent.renew_after;
            let wake = deadline.map_or(next, |d| d.min(next));
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                }
                () = &mut shutdown => break,
            }
        }
        Ok(written)
    }
}

/// Runs the agent until a limit or SIGINT/SIGTERM.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let ca = DevCa::load(&args.dir)?;
    let spec = LeafSpec {
        name: args.name.clone(),
        kind: args.kind,
        key_type: args.key_type,
        ttl: args.ttl,
        dns: args.dns,
        ips: args.ip,
    };
    let output = Output {
        dir: args.out,
        name: args.name,
        layout: args.layout,
        write: args.write,
        in_place_pause: args.in_place_pause,
    };
    let agent = Agent::new(ca, spec, output, args.renew_at)?;
    let limits = Limits {
        count: args.count,
        duration: args.duration,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let written = runtime.block_on(async move {
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        if let Some(ca_out) = &args.ca_out {
            write_atomic(ca_out, agent.ca.root_pem().as_bytes(), CERT_MODE)?;
            tracing::info!(path = %ca_out.display(), "wrote the CA bundle");
        }
        tracing::info!(
            renew_every = %humantime::format_duration(agent.renew_after()),
            ttl = %humantime::format_duration(args.ttl),
            "agent started"
        );
        let shutdown = async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("SIGINT: stopping"),
                _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            }
        };
        agent.run(limits, shutdown).await
    })?;
    tracing::info!(identities = written, "agent stopped");
    Ok(ExitCode::SUCCESS)
}
