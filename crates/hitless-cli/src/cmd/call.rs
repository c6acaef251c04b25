//! `hitless call`: calls an HTTPS server with a reloading client identity and trust bundle, once
//! or in a loop, and reports what happened.
//!
//! Each new connection takes the `ClientConfig` current at that moment (one atomic load): the
//! client identity resolver follows identity rotations by itself and the configuration is
//! rebuilt when the trust bundle or its CRLs change. By default every request opens a new TCP
//! connection and makes a full TLS handshake (resumption is off), so every request exercises
//! the credentials on disk at that moment; `--keep-alive` reuses one connection per worker.
//!
//! The loop always ends: after `--count` requests or when `--duration` has passed (or on
//! Ctrl-C); each request is bounded by `--timeout`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hitless::{
    Detection, IdentitySource, ReloadingClientConfig, ReloadingIdentity, ReloadingTrust,
    TrustSource,
};
use serde_json::json;
use tokio::sync::watch;

use crate::client::{self, Connection, Failure, Reply, Target};
use crate::value;

/// Flags of `hitless call`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  hitless call https://localhost:8443/ --ca ca.pem --cert client.crt --key client.key
  hitless call https://127.0.0.1:8443/ --server-name localhost --ca ca.pem \\
      --identity client.pem --duration 30s --concurrency 4 --rate 100 --json")]
pub struct Args {
    /// The URL to call: https://HOST[:PORT][/PATH].
    pub url: String,
    /// PEM client certificate chain (with --key); reloaded when it changes.
    #[arg(long, requires = "key", conflicts_with = "identity")]
    pub cert: Option<PathBuf>,
    /// PEM client private key (with --cert).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// One PEM bundle holding the client certificates and key in any order; reloaded when it
    /// changes.
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// PEM file of CA certificates trusted for the server's certificate. Repeatable; reloaded
    /// when it changes.
    #[arg(long, required = true)]
    pub ca: Vec<PathBuf>,
    /// CRL file (PEM or DER) applied to the server's chain. Repeatable; reloaded when it changes.
    #[arg(long)]
    pub crl: Vec<PathBuf>,
    /// Number of requests in all (default 1 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    pub count: Option<u64>,
    /// Keep calling for this long (e.g. 30s, 5m) instead of a number of requests.
    #[arg(long, value_parser = value::positive_duration)]
    pub duration: Option<Duration>,
    /// Requests in flight at once (workers).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,
    /// Requests per second, all workers together (default: as fast as they go).
    #[arg(long, value_parser = value::rate)]
    pub rate: Option<f64>,
    /// Reuse one connection per worker (default: a new TCP connection and a full TLS handshake
    /// for every request).
    #[arg(long)]
    pub keep_alive: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The name the server certificate must carry, and the SNI sent (default: the URL's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// Time limit of one request, connection and handshake included.
    #[arg(long, value_parser = value::positive_duration, default_value = "10s")]
    pub timeout: Duration,
}

impl Args {
    /// The client identity source, if one was given.
    fn source(&self) -> anyhow::Result<Option<IdentitySource>> {
        match (&self.identity, &self.cert, &self.key) {
            (None, None, None) => Ok(None),
            (Some(bundle), None, None) => Ok(Some(IdentitySource::bundle(absolute(bundle)))),
            (None, Some(cert), Some(key)) => {
                Ok(Some(IdentitySource::pair(absolute(cert), absolute(key))))
            }
            _ => bail!("give either --identity BUNDLE or --cert CERT --key KEY (or neither)"),
        }
    }

    /// Refuses values that make no sense that the flag parsers let through.
    fn check(&self) -> anyhow::Result<()> {
        if self.count == Some(0) {
            bail!("--count 0: nothing to do");
        }
        if self.duration == Some(Duration::ZERO) || self.timeout == Duration::ZERO {
            bail!("--duration and --timeout must be longer than zero");
        }
        Ok(())
    }
}

/// Runs the calls and prints the summary; exit status 0 only if at least one request was made
/// and none failed.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    args.check()?;
    let target = Target::parse(&args.url, args.server_name.as_deref())?;
    let identity = match args.source()? {
        Some(source) => Some(
            ReloadingIdentity::builder(source)
                .role(hitless::Role::Client)
                .name("client")
                .detection(Detection::Watch)
                .build()
                .context("no valid client identity")?,
        ),
        None => None,
    };
    let trust = ReloadingTrust::builder(
        TrustSource::cas(args.ca.iter().map(|p| absolute(p)))
            .with_crls(args.crl.iter().map(|p| absolute(p))),
    )
    .name("server trust")
    .detection(Detection::Watch)
    .build()
    .context("no valid trust bundle for the server's certificate")?;
    let keep_alive = args.keep_alive;
    let configs = ReloadingClientConfig::builder(trust.clone())
        .identities(identity.iter().cloned().collect())
        .configure(move |c: &mut rustls::ClientConfig| {
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
            if !keep_alive {
                // Every request must be a full handshake that presents the current identity.
                c.resumption = rustls::client::Resumption::disabled();
            }
        })
        .build()
        .context("cannot build the TLS client configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(call(&args, target, configs))?;
    let report = Report {
        summary,
        identity_generation: identity.as_ref().map(|i| i.status().generation),
        trust_generation: trust.status().generation,
    };
    if args.json {
        println!("{}", report.json(&args));
    } else {
        print!("{}", report.human(&args));
    }
    let ok = report.summary.tally.ok > 0 && report.summary.failed() == 0;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `path` made absolute against the current directory (as given if that fails).
///
/// Works around the library's watcher missing changes to files named by a relative path (the
/// notifications name `./file`, the watcher compares with `file`).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Hands out request slots: ends the loop by count, by deadline or when stopped, and spaces
/// slots by the rate.
struct Schedule {
    start: Instant,
    next: AtomicU64,
    count: Option<u64>,
    deadline: Option<Instant>,
    interval: Option<Duration>,
}

impl Schedule {
    /// The time the next request may start, or `None` when the loop is over.
    fn claim(&self) -> Option<Instant> {
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        if self.count.is_some_and(|c| n >= c) {
            return None;
        }
        let at = match self.interval {
            // A slot past what an Instant can hold is past any deadline: the loop is over.
            Some(i) => Duration::try_from_secs_f64(i.as_secs_f64() * n as f64)
                .ok()
                .and_then(|offset| self.start.checked_add(offset))?,
            None => now,
        };
        if self.deadline.is_some_and(|d| at >= d) {
            return None;
        }
        Some(at)
    }
}

/// What one run shares between its workers.
struct Run {
    target: Target,
    configs: ReloadingClientConfig,
    keep_alive: bool,
    timeout: Duration,
    schedule: Schedule,
    live: Live,
    /// Failure reasons already logged once with their detail.
    logged: Mutex<HashSet<String>>,
}

/// Counters read by the progress line.
#[derive(Default)]
struct Live {
    ok: AtomicU64,
    failed: AtomicU64,
}

/// What the workers saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    failures: BTreeMap<String, u64>,
    /// Handshakes the server accepted (a response arrived on the connection).
    handshakes: u64,
    server_fingerprints: BTreeSet<String>,
    /// Client serials `hitless serve` reported in its JSON bodies.
    client_serials: BTreeSet<String>,
    /// Latency of each successful request.
    latencies: Vec<Duration>,
    /// TCP connect + TLS handshake of each new connection that got a response.
    handshake_times: Vec<Duration>,
    /// Request sent to response head, for each response.
    waits: Vec<Duration>,
}

impl Tally {
    /// Adds another worker's tally.
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (reason, n) in other.failures {
            *self.failures.entry(reason).or_default() += n;
        }
        self.handshakes += other.handshakes;
        self.server_fingerprints.extend(other.server_fingerprints);
        self.client_serials.extend(other.client_serials);
        self.latencies.extend(other.latencies);
        self.handshake_times.extend(other.handshake_times);
        self.waits.extend(other.waits);
    }
}

/// The outcome of a whole run.
struct Summary {
    tally: Tally,
    elapsed: Duration,
    interrupted: bool,
}

impl Summary {
    /// Failed requests, all reasons together.
    fn failed(&self) -> u64 {
        self.tally.failures.values().sum()
    }
}

/// Runs the workers until the schedule ends and merges what they saw.
async fn call(
    args: &Args,
    target: Target,
    configs: ReloadingClientConfig,
) -> anyhow::Result<Summary> {
    let start = Instant::now();
    let count = match (args.count, args.duration) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => None,
        (None, None) => Some(1),
    };
    let run = Arc::new(Run {
        target,
        configs,
        keep_alive: args.keep_alive,
        timeout: args.timeout,
        schedule: Schedule {
            start,
            next: AtomicU64::new(0),
            count,
            // The flag parsers bound both: neither overflows (checked all the same).
            deadline: args.duration.and_then(|d| start.checked_add(d)),
            interval: args
                .rate
                .and_then(|r| Duration::try_from_secs_f64(1.0 / r).ok()),
        },
        live: Live::default(),
        logged: Mutex::default(),
    });
    tracing::info!(
        url = %run.target.url,
        concurrency = args.concurrency,
        keep_alive = args.keep_alive,
        "calling"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(stop_on_ctrl_c(stop_tx, interrupted.clone()));
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| tokio::spawn(show_progress(run.clone(), start)));

    let workers: Vec<_> = (0..args.concurrency)
        .map(|_| tokio::spawn(worker(run.clone(), stop_rx.clone())))
        .collect();
    let mut tally = Tally::default();
    for w in workers {
        tally.merge(w.await.context("a worker task failed")?);
    }
    if let Some(p) = progress {
        p.abort();
        eprint!("\r\x1b[2K");
    }
    Ok(Summary {
        tally,
        elapsed: start.elapsed(),
        interrupted: interrupted.load(Ordering::Relaxed),
    })
}

/// First Ctrl-C: start no new request, finish those in flight. Second: quit at once.
async fn stop_on_ctrl_c(
    stop: watch::Sender<bool>,
    interrupted: Arc<std::sync::atomic::AtomicBool>,
) {
    if tokio::signal::ctrl_c().await.is_err() {
        return;
    }
    interrupted.store(true, Ordering::Relaxed);
    let _ = stop.send(true);
    eprintln!("\nhitless call: stopping, finishing requests in flight (Ctrl-C again to quit now)");
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

/// One line a second on stderr (a terminal): elapsed, ok, failed, rate.
async fn show_progress(run: Arc<Run>, start: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let ok = run.live.ok.load(Ordering::Relaxed);
        let failed = run.live.failed.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        eprint!(
            "\r\x1b[2K[{secs:5.0}s] ok {ok}  failed {failed}  {:.1}/s",
            (ok + failed) as f64 / secs.max(1e-9)
        );
    }
}

/// Makes requests while the schedule hands out slots.
async fn worker(run: Arc<Run>, mut stop: watch::Receiver<bool>) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Connection> = None;
    while let Some(at) = run.schedule.claim() {
        tokio::select! {
            _ = tokio::time::sleep_until(at.into()) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if *stop.borrow() {
            break;
        }
        let started = Instant::now();
        let outcome = match tokio::time::timeout(run.timeout, exchange(&run, &mut conn)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure::Timeout),
        };
        let elapsed = started.elapsed();
        match outcome {
            Ok(reply) => record_reply(&run, &mut tally, reply, elapsed),
            Err(failure) => {
                conn = None;
                record_failure(&run, &mut tally, &failure);
            }
        }
        if !run.keep_alive {
            if let Some(c) = conn.take() {
                c.close().await;
            }
        }
    }
    if let Some(c) = conn.take() {
        c.close().await;
    }
    tally
}

/// One request: on the worker's open connection with --keep-alive, else on a new one.
async fn exchange(run: &Run, conn: &mut Option<Connection>) -> Result<Reply, Failure> {
    if let Some(open) = conn.as_mut().filter(|c| c.is_open()) {
        match open.get(&run.target).await {
            // The server closed the idle connection before the request went out: a new
            // connection is the right answer, not a failure.
            Err(f) if f.unsent() => {}
            outcome => return outcome,
        }
    }
    *conn = None;
    let new = conn.insert(client::connect(&run.target, run.configs.current()).await?);
    new.get(&run.target).await
}

/// Counts a response: success for a 2xx status, a failure `http <status>` otherwise.
fn record_reply(run: &Run, tally: &mut Tally, reply: Reply, elapsed: Duration) {
    tally.waits.push(reply.wait);
    if let Some(handshake) = reply.handshake {
        tally.handshake_times.push(handshake);
    }
    if reply.first_on_connection {
        tally.handshakes += 1;
        if let Some(fp) = reply.server_fingerprint {
            tally.server_fingerprints.insert(fp);
        }
    }
    if let Some(serial) = client_serial_seen_by_server(&reply.body) {
        tally.client_serials.insert(serial);
    }
    if reply.status.is_success() {
        tally.ok += 1;
        tally.latencies.push(elapsed);
        run.live.ok.fetch_add(1, Ordering::Relaxed);
    } else {
        let reason = format!("http {}", reply.status.as_u16());
        log_first(run, &reason, || format!("HTTP status {}", reply.status));
        *tally.failures.entry(reason).or_default() += 1;
        run.live.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts a failure under its reason.
fn record_failure(run: &Run, tally: &mut Tally, failure: &Failure) {
    let reason = failure.reason();
    log_first(run, &reason, || failure.detail());
    *tally.failures.entry(reason).or_default() += 1;
    run.live.failed.fetch_add(1, Ordering::Relaxed);
}

/// Logs the first failure of each reason with its detail (later ones only at debug level).
fn log_first(run: &Run, reason: &str, detail: impl FnOnce() -> String) {
    let first = run
        .logged
        .lock()
        .map(|mut l| l.insert(reason.to_string()))
        .unwrap_or(false);
    if first {
        tracing::warn!(reason, "request failed: {}", detail());
    } else {
        tracing::debug!(reason, "request failed: {}", detail());
    }
}

/// The client certificate serial from the JSON body of `hitless serve`
/// (`{"client":{"serial":..}}`), if the body is that.
fn client_serial_seen_by_server(body: &[u8]) -> Option<String> {
    if body.first() != Some(&b'{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .get("client")?
        .get("serial")?
        .as_str()
        .map(str::to_string)
}

/// The nearest-rank percentile `p` (0–100) of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// A sorted copy.
fn sorted_copy(values: &[Duration]) -> Vec<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted
}

/// `{"p50", "p99", "max"}` in milliseconds of sorted values; `null` if there are none.
fn spread(sorted: &[Duration]) -> serde_json::Value {
    match (
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        sorted.last(),
    ) {
        (Some(p50), Some(p99), Some(max)) => json!({
            "count": sorted.len(),
            "p50": ms(p50),
            "p99": ms(p99),
            "max": ms(*max),
        }),
        _ => serde_json::Value::Null,
    }
}

/// Milliseconds with microsecond precision.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The summary with the credential generations at the end.
struct Report {
    summary: Summary,
    identity_generation: Option<u64>,
    trust_generation: u64,
}

impl Report {
    /// The latencies of successful requests, sorted.
    fn latencies(&self) -> Vec<Duration> {
        sorted_copy(&self.summary.tally.latencies)
    }

    /// The machine-readable summary.
    fn json(&self, args: &Args) -> serde_json::Value {
        let s = &self.summary;
        let t = &s.tally;
        let sorted = self.latencies();
        let latency = (!sorted.is_empty()).then(|| {
            json!({
                "p50": percentile(&sorted, 50.0).map(ms),
                "p99": percentile(&sorted, 99.0).map(ms),
                "max": sorted.last().copied().map(ms),
            })
        });
        let requests = t.ok + s.failed();
        json!({
            "url": args.url,
            "handshake_ms": spread(&sorted_copy(&t.handshake_times)),
            "response_ms": spread(&sorted_copy(&t.waits)),
            "requests": requests,
            "ok": t.ok,
            "failed": s.failed(),
            "failures": t.failures,
            "handshakes": t.handshakes,
            "keep_alive": args.keep_alive,
            "concurrency": args.concurrency,
            "elapsed_ms": ms(s.elapsed),
            "requests_per_second": requests as f64 / s.elapsed.as_secs_f64().max(1e-9),
            "latency_ms": latency,
            "server_fingerprints_count": t.server_fingerprints.len(),
            "server_fingerprints": t.server_fingerprints,
            "client_serials_seen_by_server": t.client_serials,
            "client_identity_generation": self.identity_generation,
            "trust_generation": self.trust_generation,
            "interrupted": s.interrupted,
        })
    }

    /// The summary for a person.
    fn human(&self, args: &Args) -> String {
        use std::fmt::Write as _;
        let s = &self.summary;
        let t = &s.tally;
        let requests = t.ok + s.failed();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{}: {requests} requests in {:.1}s ({:.1}/s), concurrency {}, {}{}",
            args.url,
            s.elapsed.as_secs_f64(),
            requests as f64 / s.elapsed.as_secs_f64().max(1e-9),
            args.concurrency,
            if args.keep_alive {
                "one connection per worker"
            } else {
                "a new connection and full handshake per request"
            },
            if s.interrupted { " (interrupted)" } else { "" },
        );
        let _ = writeln!(out, "  ok          {}", t.ok);
        let _ = writeln!(out, "  failed      {}", s.failed());
        for (reason, n) in &t.failures {
            let _ = writeln!(out, "    {n:>8}  {reason}");
        }
        let _ = writeln!(out, "  handshakes  {} accepted by the server", t.handshakes);
        let sorted = self.latencies();
        if let (Some(p50), Some(p99), Some(max)) = (
            percentile(&sorted, 50.0),
            percentile(&sorted, 99.0),
            sorted.last(),
        ) {
            let _ = writeln!(
                out,
                "  latency     p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(p50),
                ms(p99),
                ms(*max)
            );
        }
        let waits = sorted_copy(&t.waits);
        if let (Some(p50), Some(p99), Some(max)) = (
            percentile(&waits, 50.0),
            percentile(&waits, 99.0),
            waits.last(),
        ) {
            let _ = writeln!(
                out,
                "  response    p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (request sent to response head)",
                ms(p50),
                ms(p99),
                ms(*max)
            );
        }
        let _ = writeln!(
            out,
            "  server certificates seen: {}",
            t.server_fingerprints.len()
        );
        for fp in &t.server_fingerprints {
            let _ = writeln!(out, "    {fp}");
        }
        if !t.client_serials.is_empty() {
            let _ = writeln!(
                out,
                "  client certificates the server saw (serials): {}",
                t.client_serials.len()
            );
            for serial in &t.client_serials {
                let _ = writeln!(out, "    {serial}");
            }
        }
        if let Some(g) = self.identity_generation {
            let _ = writeln!(out, "  client identity generation {g}");
        }
        let _ = writeln!(out, "  trust generation {}", self.trust_generation);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&v, 99.0), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&v[..1], 99.0), Some(Duration::from_millis(1)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn schedule_ends_by_count_and_spaces_by_rate() {
        let start = Instant::now();
        let s = Schedule {
            start,
            next: AtomicU64::new(0),
            count: Some(3),
            deadline: None,
            interval: Some(Duration::from_millis(100)),
        };
        let slots: Vec<_> = std::iter::from_fn(|| s.claim()).collect();
        assert_eq!(
            slots,
            vec![
                start,
                start + Duration::from_millis(100),
                start + Duration::from_millis(200)
            ]
        );
    }

    #[test]
    fn schedule_ends_by_deadline() {
        let start = Instant::now();
        let s = Schedule {
            start,
            next: AtomicU64::new(0),
            count: None,
            deadline: Some(start + Duration::from_millis(250)),
            interval: Some(Duration::from_millis(100)),
        };
        assert_eq!(std::iter::from_fn(|| s.claim()).count(), 3);
    }

    #[test]
    fn reads_the_client_serial_of_serve() {
        let body = br#"{"client":{"serial":"0a:1b","fingerprint":"ff"},"server":{}}"#;
        assert_eq!(client_serial_seen_by_server(body).as_deref(), Some("0a:1b"));
        assert_eq!(client_serial_seen_by_server(br#"{"client":null}"#), None);
        assert_eq!(client_serial_seen_by_server(b"<HTML>"), None);
    }
}
