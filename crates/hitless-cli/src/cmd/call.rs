//! `hitless call`: calls an HTTPS server with a reloading client identity and trust bundle, once
//! or in a loop, and reports what happened: a load generator.
//!
//! Each new connection takes the `ClientConfig` current at that moment (one atomic load): the
//! client identity resolver follows identity rotations by itself and the configuration is
//! rebuilt when the trust bundle or its CRLs change. By default every request opens a new TCP
//! connection and makes a full TLS handshake (resumption is off), so every request exercises
//! the credentials on disk at that moment; `--keep-alive` reuses connections, `--resume` makes
//! new connections resume TLS sessions (the library ties sessions to the trust generation and
//! to identity rotations, so a change still forces a full handshake), `--h2` speaks HTTP/2.
//!
//! Two ways to load a server:
//! - closed loop (no `--rate`): `--concurrency` workers, each sending its next request when the
//!   previous one is answered; latency is measured from sending.
//! - open loop (`--rate R`): request *i* is due at `start + i/R` whatever happened to the others,
//!   at most `--concurrency` in flight (default 1000); latency is measured from the due time, so
//!   a server that stalls shows as latency of every request due during the stall, not as one
//!   slow request and a lower rate (no coordinated omission).
//!
//! The loop always ends: after `--count` requests or when `--duration` has passed (or on
//! Ctrl-C); each request is bounded by `--timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write as _};
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
use tokio::sync::{watch, Semaphore};

use crate::client::{self, Connection, Failure, Protocol, Reply, Target};
use crate::load::{ms, Latencies};
use crate::value;

/// Requests in flight at most in the open loop when `--concurrency` is not given.
const OPEN_LOOP_IN_FLIGHT: u32 = 1000;

/// Flags of `hitless call`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  hitless call https://localhost:8443/ --ca ca.pem --cert client.crt --key client.key
  hitless call https://127.0.0.1:8443/ --server-name localhost --ca ca.pem \\
      --identity client.pem --duration 30s --rate 500 --resume --json
  hitless call https://localhost:8443/ --ca ca.pem --identity client.pem \\
      --duration 1m --concurrency 16 --keep-alive --h2")]
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
    /// Without --rate: requests in flight at once (workers, each sending when its last request
    /// is answered; default 1). With --rate: the most requests in flight at once (default 1000);
    /// requests due while all are busy wait, and that wait counts in their latency.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: Option<u32>,
    /// Open loop: send this many requests per second on a fixed schedule whatever the server
    /// does, and measure each latency from the time the request was due (default: closed loop,
    /// as fast as the workers go).
    #[arg(long, value_parser = value::rate)]
    pub rate: Option<f64>,
    /// Reuse connections (one per worker; in the open loop, idle ones are shared) instead of a
    /// new TCP connection and TLS handshake for every request.
    #[arg(long)]
    pub keep_alive: bool,
    /// Resume TLS sessions on new connections when the server allows (default: every handshake
    /// is a full one); the summary counts resumed and full handshakes.
    #[arg(long)]
    pub resume: bool,
    /// Speak HTTP/2 (ALPN h2) instead of HTTP/1.1.
    #[arg(long)]
    pub h2: bool,
    /// Print one progress line a second on stderr even when it is not a terminal (on a terminal
    /// the line is always shown, updated in place).
    #[arg(long)]
    pub progress: bool,
    /// Print the summary as JSON on stdout, with the whole latency histogram.
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

    /// Workers (closed loop) or the most requests in flight (open loop).
    fn concurrency(&self) -> u32 {
        match (self.concurrency, self.rate) {
            (Some(n), _) => n,
            (None, Some(_)) => OPEN_LOOP_IN_FLIGHT,
            (None, None) => 1,
        }
    }

    fn protocol(&self) -> Protocol {
        if self.h2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        }
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
    let (keep_alive, resume, alpn) = (args.keep_alive, args.resume, args.protocol().alpn());
    let configs = ReloadingClientConfig::builder(&trust)
        .identities(identity.iter().cloned().collect())
        .configure(move |c: &mut rustls::ClientConfig| {
            c.alpn_protocols = vec![alpn.to_vec()];
            if !keep_alive && !resume {
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
    // Held-back warnings are said before the summary, not lost.
    crate::repeat::flush();
    let report = Report {
        summary,
        identity_generation: identity.as_ref().map(|i| i.status().generation),
        trust_generation: trust.status().generation,
    };
    // stdout gone (a closed pipe) is no reason to panic: the exit status still says it all.
    let mut out = std::io::stdout();
    let _ = if args.json {
        writeln!(out, "{}", report.json(&args))
    } else {
        write!(out, "{}", report.human(&args))
    };
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
    /// The time the next request is due, or `None` when the loop is over.
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
    protocol: Protocol,
    keep_alive: bool,
    timeout: Duration,
    schedule: Schedule,
    /// Everything seen so far (one lock per request: cheap next to a TLS handshake).
    tally: Mutex<Tally>,
    /// Open loop with --keep-alive: connections between two requests.
    idle: Mutex<Vec<Connection>>,
}

/// What the requests saw.
#[derive(Default)]
struct Tally {
    ok: u64,
    failures: BTreeMap<String, u64>,
    /// Handshakes the server accepted (a response arrived on the connection).
    handshakes: u64,
    /// Of those, the ones that resumed a TLS session.
    resumed: u64,
    server_fingerprints: BTreeSet<String>,
    /// Client serials `hitless serve` reported in its JSON bodies.
    client_serials: BTreeSet<String>,
    /// Latency of each successful request (open loop: from its due time).
    latencies: Latencies,
    /// TCP connect + TLS handshake of each new connection that got a response.
    handshake_times: Latencies,
    /// Request sent to response head, for each response.
    waits: Latencies,
    /// Since the last progress line: successful latencies, and failures.
    second: Latencies,
    second_failed: u64,
}

/// The outcome of a whole run.
struct Summary {
    tally: Tally,
    elapsed: Duration,
    interrupted: bool,
    /// Open loop: latency counted from the due time.
    open_loop: bool,
    concurrency: u32,
}

impl Summary {
    /// Failed requests, all reasons together.
    fn failed(&self) -> u64 {
        self.tally.failures.values().sum()
    }
}

/// Runs the requests until the schedule ends and returns what they saw.
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
    let concurrency = args.concurrency();
    let open_loop = args.rate.is_some();
    let run = Arc::new(Run {
        target,
        configs,
        protocol: args.protocol(),
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
        tally: Mutex::default(),
        idle: Mutex::default(),
    });
    tracing::info!(
        url = %run.target.url,
        concurrency,
        rate = args.rate,
        keep_alive = args.keep_alive,
        resume = args.resume,
        h2 = args.h2,
        "calling"
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(stop_on_ctrl_c(stop_tx, interrupted.clone()));
    let terminal = std::io::stderr().is_terminal();
    let progress =
        (terminal || args.progress).then(|| tokio::spawn(show_progress(run.clone(), terminal)));

    if open_loop {
        open_loop_run(run.clone(), stop_rx, concurrency).await;
    } else {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| tokio::spawn(worker(run.clone(), stop_rx.clone())))
            .collect();
        for w in workers {
            w.await.context("a worker task failed")?;
        }
    }
    let idle = std::mem::take(&mut *crate::lock(&run.idle));
    for c in idle {
        c.close().await;
    }
    if let Some(p) = progress {
        p.abort();
        if terminal {
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        }
    }
    let tally = std::mem::take(&mut *crate::lock(&run.tally));
    Ok(Summary {
        tally,
        elapsed: start.elapsed(),
        interrupted: interrupted.load(Ordering::Relaxed),
        open_loop,
        concurrency,
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
    let _ = writeln!(
        std::io::stderr(),
        "\nhitless call: stopping, finishing requests in flight (Ctrl-C again to quit now)"
    );
    if tokio::signal::ctrl_c().await.is_ok() {
        std::process::exit(130);
    }
}

/// One line a second on stderr: elapsed, totals, and the last second's requests/s, errors and
/// p99. Updated in place on a terminal, one line each otherwise. Write errors (a closed
/// terminal, a closed pipe) are ignored: progress is no reason to fail or panic.
async fn show_progress(run: Arc<Run>, terminal: bool) {
    let start = run.schedule.start;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let now = Instant::now();
        let (ok, failed, second, second_failed) = {
            let mut t = crate::lock(&run.tally);
            let second = std::mem::take(&mut t.second);
            let failed: u64 = t.failures.values().sum();
            (t.ok, failed, second, std::mem::take(&mut t.second_failed))
        };
        let dt = now.duration_since(last).as_secs_f64().max(1e-9);
        last = now;
        let p99 = second
            .quantile(0.99)
            .map_or("-".to_string(), |d| format!("{:.1} ms", ms(d)));
        let line = format!(
            "[{:5.0}s] ok {ok}  failed {failed}  | last second: {:.0} req/s, {second_failed} errors, p99 {p99}",
            start.elapsed().as_secs_f64(),
            (second.count() + second_failed) as f64 / dt,
        );
        let mut err = std::io::stderr();
        let _ = if terminal {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
    }
}

/// Closed loop: makes requests one after another while the schedule hands out slots.
async fn worker(run: Arc<Run>, mut stop: watch::Receiver<bool>) {
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
        request(&run, &mut conn, started).await;
        if !run.keep_alive {
            if let Some(c) = conn.take() {
                c.close().await;
            }
        }
    }
    if let Some(c) = conn.take() {
        c.close().await;
    }
}

/// Open loop: starts each request at its due time in a task of its own, at most `in_flight`
/// at once; a request that waits for a free place keeps its due time, so the wait is latency.
async fn open_loop_run(run: Arc<Run>, mut stop: watch::Receiver<bool>, in_flight: u32) {
    let places = Arc::new(Semaphore::new(in_flight as usize));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(due) = run.schedule.claim() {
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let place = tokio::select! {
            place = places.clone().acquire_owned() => match place {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        if *stop.borrow() {
            break;
        }
        let run = run.clone();
        tasks.spawn(async move {
            let mut conn = if run.keep_alive {
                crate::lock(&run.idle).pop()
            } else {
                None
            };
            request(&run, &mut conn, due).await;
            if let Some(c) = conn {
                if run.keep_alive && c.is_open() {
                    crate::lock(&run.idle).push(c);
                } else {
                    c.close().await;
                }
            }
            drop(place);
        });
        // Finished tasks are reaped as we go: a long run does not pile up their handles.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// One request within the time limit, recorded; latency counted from `since`.
async fn request(run: &Run, conn: &mut Option<Connection>, since: Instant) {
    let outcome = match tokio::time::timeout(run.timeout, exchange(run, conn)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Failure::Timeout),
    };
    let latency = since.elapsed();
    match outcome {
        Ok(reply) => record_reply(run, reply, latency),
        Err(failure) => {
            *conn = None;
            record_failure(run, &failure);
        }
    }
}

/// One request: on the open connection with --keep-alive, else on a new one.
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
    let new =
        conn.insert(client::connect_as(&run.target, run.configs.current(), run.protocol).await?);
    new.get(&run.target).await
}

/// Counts a response: success for a 2xx status, a failure `http <status>` otherwise.
fn record_reply(run: &Run, reply: Reply, latency: Duration) {
    let serial = client_serial_seen_by_server(&reply.body);
    let mut tally = crate::lock(&run.tally);
    tally.waits.record(reply.wait);
    if let Some(handshake) = reply.handshake {
        tally.handshake_times.record(handshake);
    }
    if reply.first_on_connection {
        tally.handshakes += 1;
        if reply.resumed {
            tally.resumed += 1;
        }
        if let Some(fp) = reply.server_fingerprint {
            tally.server_fingerprints.insert(fp);
        }
    }
    if let Some(serial) = serial {
        tally.client_serials.insert(serial);
    }
    if reply.status.is_success() {
        tally.ok += 1;
        tally.latencies.record(latency);
        tally.second.record(latency);
    } else {
        let reason = format!("http {}", reply.status.as_u16());
        *tally.failures.entry(reason.clone()).or_default() += 1;
        tally.second_failed += 1;
        drop(tally);
        log_failure(&reason, || format!("HTTP status {}", reply.status));
    }
}

/// Counts a failure under its reason.
fn record_failure(run: &Run, failure: &Failure) {
    let reason = failure.reason();
    {
        let mut tally = crate::lock(&run.tally);
        *tally.failures.entry(reason.clone()).or_default() += 1;
        tally.second_failed += 1;
    }
    log_failure(&reason, || failure.detail());
}

/// Logs a failed request. The message is the reason alone (the detail is a field), so that
/// the warning aggregator (`crate::repeat`) groups repeats by reason: the first is logged in
/// full, then one line a second with the count.
fn log_failure(reason: &str, detail: impl FnOnce() -> String) {
    if tracing::enabled!(tracing::Level::WARN) {
        tracing::warn!(detail = %detail(), "request failed: {reason}");
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

/// The summary with the credential generations at the end.
struct Report {
    summary: Summary,
    identity_generation: Option<u64>,
    trust_generation: u64,
}

impl Report {
    /// The machine-readable summary.
    fn json(&self, args: &Args) -> serde_json::Value {
        let s = &self.summary;
        let t = &s.tally;
        let requests = t.ok + s.failed();
        json!({
            "url": args.url,
            "handshake_ms": t.handshake_times.summary_json(),
            "response_ms": t.waits.summary_json(),
            "requests": requests,
            "ok": t.ok,
            "failed": s.failed(),
            "failures": t.failures,
            "handshakes": t.handshakes,
            "resumed_handshakes": t.resumed,
            "full_handshakes": t.handshakes - t.resumed,
            "resume": args.resume,
            "protocol": if args.h2 { "h2" } else { "http/1.1" },
            "keep_alive": args.keep_alive,
            "concurrency": s.concurrency,
            "mode": if s.open_loop { "open-loop" } else { "closed-loop" },
            "rate": args.rate,
            "elapsed_ms": ms(s.elapsed),
            "requests_per_second": requests as f64 / s.elapsed.as_secs_f64().max(1e-9),
            "latency_from": if s.open_loop { "scheduled send time" } else { "send time" },
            "latency_ms": t.latencies.summary_json(),
            "latency_histogram": {
                "unit": "us",
                "significant_digits": 3,
                "buckets": t.latencies.buckets_json(),
            },
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
        let mode = match args.rate {
            Some(rate) => format!("open loop at {rate}/s, at most {} in flight", s.concurrency),
            None => format!("concurrency {}", s.concurrency),
        };
        let connections = match (args.keep_alive, args.resume) {
            (true, _) => "connections reused",
            (false, true) => "a new connection per request, TLS sessions resumed",
            (false, false) => "a new connection and full handshake per request",
        };
        let _ = writeln!(
            out,
            "{}: {requests} requests in {:.1}s ({:.1}/s), {mode}, {connections}, {}{}",
            args.url,
            s.elapsed.as_secs_f64(),
            requests as f64 / s.elapsed.as_secs_f64().max(1e-9),
            if args.h2 { "HTTP/2" } else { "HTTP/1.1" },
            if s.interrupted { " (interrupted)" } else { "" },
        );
        let _ = writeln!(out, "  ok          {}", t.ok);
        let _ = writeln!(out, "  failed      {}", s.failed());
        for (reason, n) in &t.failures {
            let _ = writeln!(out, "    {n:>8}  {reason}");
        }
        let _ = writeln!(
            out,
            "  handshakes  {} accepted by the server ({} resumed, {} full)",
            t.handshakes,
            t.resumed,
            t.handshakes - t.resumed
        );
        if t.latencies.count() > 0 {
            let _ = writeln!(
                out,
                "  latency     {} ({})",
                t.latencies.human(),
                if s.open_loop {
                    "from the time each request was due"
                } else {
                    "from sending"
                }
            );
        }
        if t.waits.count() > 0 {
            let _ = writeln!(
                out,
                "  response    {} (request sent to response head)",
                t.waits.human()
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
