//! Part 4: rotation latency, from the moment a writer makes the new identity visible to the
//! moment it is served.
//!
//! t0 is taken immediately before the `rename(2)` that publishes the new content: the bundle
//! replaced by rename (what `write_atomic`, editors and most agents do) or the `..data`
//! symlink swap of a Kubernetes Secret volume. Two end points are reported:
//!
//! - **event**: when the identity's `Reloaded` event fires (the new snapshot is stored just
//!   before it), timestamped inside the subscriber callback on the detector thread;
//! - **handshake given**: when the server's certificate lookup, inside an in-process
//!   mutual-TLS handshake, first returns the new leaf (the identity resolver is wrapped to
//!   timestamp it). The measuring thread runs handshakes back to back from t0, so a handshake
//!   in flight at the swap delays this by up to one handshake duration (reported beside it);
//! - **handshake done**: when that handshake completes and the client has seen the new leaf.
//!
//! Series: {rename, k8s `..data` swap} × {watch, poll every `poll_interval`}. Between two
//! rotations the writer pauses for a random time (watch: 20-40 ms; poll: 0-1 interval, so
//! rotations land at every phase of the poll cycle).

use std::fmt::Write as _;
use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use hitless::{Detection, Event, IdentitySource};
use hitless_test_pki::{k8s_swap, write_atomic, KeyFormat, KeyType};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde_json::json;

use crate::common::{init_provider, median, percentile, Pipe, Pki, Rng, LEAVES};
use crate::{Outcome, Settings, Target};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `write_atomic`'s steps (temp file in the same directory, write, fsync, rename over
/// `path`); returns the instant taken just before `rename(2)`.
pub fn rename_timed(path: &Path, contents: &[u8]) -> Instant {
    let name = path
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{name}.bench.{n}"));
    {
        let mut f = fs::File::create(&tmp).expect("create temp file");
        f.write_all(contents).expect("write temp file");
        f.sync_all().expect("fsync temp file");
    }
    let t0 = Instant::now();
    fs::rename(&tmp, path).expect("rename over identity");
    t0
}

/// The kubelet AtomicWriter's steps, as `hitless_test_pki::k8s_swap` does them (new
/// timestamped directory with the files, `..data_tmp` symlink, rename over `..data`, user
/// symlinks, old directory removed); returns the instant taken just before the `..data`
/// rename.
pub fn k8s_swap_timed(dir: &Path, files: &[(&str, &[u8])]) -> Instant {
    let data = dir.join("..data");
    let old = fs::read_link(&data).ok();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let ts_name = format!("..bench_{n:012}");
    let ts_dir = dir.join(&ts_name);
    fs::create_dir(&ts_dir).expect("create timestamped dir");
    for (name, contents) in files {
        fs::write(ts_dir.join(name), contents).expect("write secret file");
    }
    let data_tmp = dir.join("..data_tmp");
    match fs::remove_file(&data_tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => panic!("remove ..data_tmp: {e}"),
    }
    symlink(&ts_name, &data_tmp).expect("symlink ..data_tmp");
    let t0 = Instant::now();
    fs::rename(&data_tmp, &data).expect("rename ..data_tmp -> ..data");
    for (name, _) in files {
        let link = dir.join(name);
        if fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(name), &link).expect("user symlink");
        }
    }
    if let Some(old) = old {
        let old_dir = dir.join(old);
        if old_dir != ts_dir {
            let _ = fs::remove_dir_all(old_dir);
        }
    }
    t0
}

/// Wraps the identity's resolver and timestamps the first lookup that returns the leaf
/// being waited for: the moment a handshake was given the new identity. (A lock per lookup:
/// fine for this measurement, not for a server.)
#[derive(Default, Debug)]
struct Probe {
    inner: Mutex<Option<Arc<dyn ResolvesServerCert>>>,
    /// The leaf DER waited for, and when it was first handed out.
    waiting: Mutex<(Vec<u8>, Option<Instant>)>,
}

impl Probe {
    fn expect(&self, der: &[u8]) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = (der.to_vec(), None);
    }

    fn first(&self) -> Option<Instant> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

impl ResolvesServerCert for Probe {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let key = inner.resolve(hello)?;
        let at = Instant::now();
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if w.1.is_none() && key.cert.first().is_some_and(|c| c.as_ref() == w.0) {
            w.1 = Some(at);
        }
        Some(key)
    }
}

/// How the new identity is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One bundle file replaced by rename.
    Rename,
    /// A Kubernetes Secret volume (`tls.crt`, `tls.key`) updated by a `..data` swap.
    K8s,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Rename => "rename",
            Layout::K8s => "k8s ..data",
        }
    }
}

/// Latencies of one series, in milliseconds.
#[derive(Debug, Clone)]
pub struct Series {
    pub layout: &'static str,
    pub mode: String,
    pub rotations: usize,
    pub event_ms: Vec<f64>,
    /// To the first certificate lookup (inside a handshake) that returned the new leaf.
    pub resolve_ms: Vec<f64>,
    /// To the completion of the first handshake whose client saw the new leaf.
    pub handshake_ms: Vec<f64>,
    /// Duration of the in-process handshakes run while waiting (ms).
    pub handshake_duration_ms: Vec<f64>,
    pub missed_events: usize,
    pub missed_resolves: usize,
    pub missed_handshakes: usize,
    pub failed_handshakes: u64,
    /// Handshakes that started after the Reloaded event yet presented the old leaf.
    pub stale_handshakes: u64,
    pub errors: Vec<String>,
}

fn secret_files(pki: &Pki, i: usize) -> [(&'static str, Vec<u8>); 2] {
    let leaf = &pki.leaves[i];
    [
        ("tls.crt", leaf.chain_pem.clone().into_bytes()),
        ("tls.key", leaf.key_pem(KeyFormat::Pkcs8).into_bytes()),
    ]
}

/// Runs one series of `n` rotations.
pub fn series(pki: &Pki, layout: Layout, detection: Detection, n: usize) -> Series {
    let mode = match detection {
        Detection::Poll { interval } => format!("poll {} ms", interval.as_millis()),
        d => d.name().to_string(),
    };
    let dir = pki.dir.path().join(format!(
        "{}-{}",
        layout.name().replace([' ', '.'], ""),
        detection.name()
    ));
    fs::create_dir_all(&dir).expect("series dir");
    let source = match layout {
        Layout::Rename => {
            let path = dir.join("identity.pem");
            write_atomic(&path, &pki.bundles[0]);
            IdentitySource::bundle(path)
        }
        Layout::K8s => {
            let files = secret_files(pki, 0);
            let refs: Vec<(&str, &[u8])> = files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
            k8s_swap(&dir, &refs);
            IdentitySource::pair(dir.join("tls.crt"), dir.join("tls.key"))
        }
    };
    let probe = Arc::new(Probe::default());
    let probe2 = probe.clone();
    let hl = pki.hitless_server_wrapped(source, detection, move |inner| {
        *probe2.inner.lock().unwrap_or_else(|e| e.into_inner()) = Some(inner);
        probe2
    });
    let events: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let sink = events.clone();
    hl.identity.subscribe(move |e| {
        if let Event::Reloaded { generation, .. } = e {
            let at = Instant::now();
            sink.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((*generation, at));
        }
    });
    let client = pki.client_config();
    let mut pipe = Pipe::default();
    for _ in 0..10 {
        pipe.handshake(&client, hl.configs.current(), pki)
            .expect("warm-up handshake");
    }
    let timeout = match detection {
        Detection::Poll { interval } => interval * 3 + Duration::from_secs(2),
        _ => Duration::from_secs(3),
    };
    let mut s = Series {
        layout: layout.name(),
        mode,
        rotations: n,
        event_ms: Vec::with_capacity(n),
        resolve_ms: Vec::with_capacity(n),
        handshake_ms: Vec::with_capacity(n),
        handshake_duration_ms: Vec::new(),
        missed_events: 0,
        missed_resolves: 0,
        missed_handshakes: 0,
        failed_handshakes: 0,
        stale_handshakes: 0,
        errors: Vec::new(),
    };
    // The writer runs on its own thread, as an agent would, while this thread runs handshakes
    // back to back: nothing the writer does after its rename delays the measuring loop.
    let (cmd_tx, cmd_rx) = mpsc::channel::<usize>();
    let (t0_tx, t0_rx) = mpsc::channel::<Instant>();
    let writer_dir = dir.clone();
    std::thread::scope(|scope| {
        let writer = std::thread::Builder::new().name("bench-writer".into());
        writer
            .spawn_scoped(scope, move || {
                for next in cmd_rx {
                    let t0 = match layout {
                        Layout::Rename => {
                            rename_timed(&writer_dir.join("identity.pem"), &pki.bundles[next])
                        }
                        Layout::K8s => {
                            let files = secret_files(pki, next);
                            let refs: Vec<(&str, &[u8])> =
                                files.iter().map(|(n, c)| (*n, c.as_slice())).collect();
                            k8s_swap_timed(&writer_dir, &refs)
                        }
                    };
                    if t0_tx.send(t0).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn writer");
        rotate_all(
            &mut s, pki, &hl, &probe, &events, &client, detection, n, timeout, &cmd_tx, &t0_rx,
        );
        drop(cmd_tx);
    });
    s
}

/// The measuring loop of one series (see [`series`]).
#[allow(clippy::too_many_arguments)]
fn rotate_all(
    s: &mut Series,
    pki: &Pki,
    hl: &crate::common::Hitless,
    probe: &Probe,
    events: &Mutex<Vec<(u64, Instant)>>,
    client: &Arc<rustls::ClientConfig>,
    detection: Detection,
    n: usize,
    timeout: Duration,
    cmd_tx: &mpsc::Sender<usize>,
    t0_rx: &mpsc::Receiver<Instant>,
) {
    let mut pipe = Pipe::default();
    let mut rng = Rng::seeded();
    let mut current = 0;
    for _ in 0..n {
        let next = (current + 1) % LEAVES;
        let gen_before = hl.identity.status().generation;
        probe.expect(&pki.leaves[next].cert_der);
        let sent = Instant::now();
        cmd_tx.send(next).expect("writer thread alive");
        let mut seen = None;
        while sent.elapsed() < timeout {
            let start = Instant::now();
            match pipe.handshake(client, hl.configs.current(), pki) {
                Ok(shook) => {
                    let end = Instant::now();
                    if s.handshake_duration_ms.len() < 10_000 {
                        s.handshake_duration_ms
                            .push((end - start).as_secs_f64() * 1e3);
                    }
                    if shook.leaf == Some(next) {
                        seen = Some(end);
                        break;
                    }
                    // An old leaf from a handshake that started after the new one was stored
                    // (the event fires just after the store) breaks the contract.
                    let stored = events
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                        .any(|(g, at)| *g > gen_before && *at < start);
                    if stored {
                        s.stale_handshakes += 1;
                    }
                }
                Err(e) => {
                    s.failed_handshakes += 1;
                    if s.errors.len() < 5 {
                        s.errors.push(e);
                    }
                }
            }
        }
        let t0 = t0_rx
            .recv_timeout(timeout)
            .expect("the writer reports its rename");
        match seen {
            Some(at) => s
                .handshake_ms
                .push(at.saturating_duration_since(t0).as_secs_f64() * 1e3),
            None => s.missed_handshakes += 1,
        }
        match (seen, probe.first()) {
            (Some(_), Some(at)) => s
                .resolve_ms
                .push(at.saturating_duration_since(t0).as_secs_f64() * 1e3),
            _ => s.missed_resolves += 1,
        }
        let find = || {
            events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(g, _)| *g > gen_before)
                .map(|(_, at)| *at)
        };
        crate::common::wait_until(timeout.saturating_sub(t0.elapsed()), || find().is_some());
        match find() {
            Some(at) => s
                .event_ms
                .push(at.saturating_duration_since(t0).as_secs_f64() * 1e3),
            None => s.missed_events += 1,
        }
        events.lock().unwrap_or_else(|e| e.into_inner()).clear();
        current = next;
        let pause = match detection {
            Detection::Poll { interval } => rng.below(interval),
            _ => Duration::from_millis(20) + rng.below(Duration::from_millis(20)),
        };
        std::thread::sleep(pause);
    }
}

/// Runs part 4: rename and k8s layouts, watch and poll.
pub fn measure(settings: &Settings) -> Vec<Series> {
    init_provider();
    let pki = Pki::new(KeyType::EcP256);
    let mut out = Vec::new();
    for layout in [Layout::Rename, Layout::K8s] {
        for detection in [
            Detection::Watch,
            Detection::Poll {
                interval: settings.poll_interval,
            },
        ] {
            out.push(series(&pki, layout, detection, settings.rotations));
        }
    }
    out
}

/// Runs part 4 and formats it.
pub fn run(settings: &Settings) -> Outcome {
    let all = measure(settings);
    let mut out = Outcome::default();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "4. Rotation latency: from the rename / ..data swap to the Reloaded event and to the first handshake\n   \
         presenting the new leaf ({} rotations per series; ms)",
        settings.rotations
    );
    let _ = writeln!(
        t,
        "   {:<11} {:<12} {:<16} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "layout", "detection", "end point", "p50", "p99", "max", "missed", "failed"
    );
    let mut js = Vec::new();
    for s in &all {
        for (label, v, missed) in [
            ("event", &s.event_ms, s.missed_events),
            ("handshake given", &s.resolve_ms, s.missed_resolves),
            ("handshake done", &s.handshake_ms, s.missed_handshakes),
        ] {
            let (p50, p99) = (percentile(v, 50.0), percentile(v, 99.0));
            let max = percentile(v, 100.0);
            let _ = writeln!(
                t,
                "   {:<11} {:<12} {:<16} {:>8.3} {:>8.3} {:>8.3} {:>7} {:>7}",
                s.layout,
                s.mode,
                label,
                p50,
                p99,
                max,
                missed,
                if label == "handshake done" {
                    s.failed_handshakes.to_string()
                } else {
                    String::new()
                }
            );
            if s.mode == "watch" && label != "handshake done" {
                out.targets.push(Target::at_most(
                    format!("rotation {} watch {label} p50", s.layout),
                    p50,
                    1.0,
                    "ms",
                ));
                out.targets.push(Target::at_most(
                    format!("rotation {} watch {label} p99", s.layout),
                    p99,
                    10.0,
                    "ms",
                ));
            }
        }
        if s.missed_events + s.missed_resolves + s.missed_handshakes > 0 {
            out.problems.push(format!(
                "rotation {} {}: {} events, {} lookups and {} handshakes missed the new leaf \
                 within the timeout",
                s.layout, s.mode, s.missed_events, s.missed_resolves, s.missed_handshakes
            ));
        }
        if s.stale_handshakes > 0 {
            out.problems.push(format!(
                "rotation {} {}: {} handshakes started after the Reloaded event but got the old leaf",
                s.layout, s.mode, s.stale_handshakes
            ));
        }
        if s.failed_handshakes > 0 {
            out.problems.push(format!(
                "rotation {} {}: {} failed handshakes ({:?})",
                s.layout, s.mode, s.failed_handshakes, s.errors
            ));
        }
        js.push(json!({
            "layout": s.layout,
            "detection": s.mode,
            "rotations": s.rotations,
            "event_ms": summary(&s.event_ms),
            "handshake_given_new_leaf_ms": summary(&s.resolve_ms),
            "handshake_done_with_new_leaf_ms": summary(&s.handshake_ms),
            "handshake_duration_ms_median": median(&s.handshake_duration_ms),
            "missed_events": s.missed_events,
            "missed_resolves": s.missed_resolves,
            "missed_handshakes": s.missed_handshakes,
            "failed_handshakes": s.failed_handshakes,
            "stale_handshakes": s.stale_handshakes,
        }));
    }
    let hs: Vec<f64> = all
        .iter()
        .flat_map(|s| s.handshake_duration_ms.iter().copied())
        .collect();
    let _ = writeln!(
        t,
        "   event: Reloaded callback; handshake given: the first certificate lookup inside a handshake that\n   \
         returned the new leaf; handshake done: that handshake completed (client saw the new leaf).\n   \
         Handshakes run back to back on one thread, {:.3} ms each (median): a handshake in flight at\n   \
         the swap delays the next lookup by up to that much.",
        median(&hs)
    );
    let stale: u64 = all.iter().map(|s| s.stale_handshakes).sum();
    let _ = writeln!(
        t,
        "   Handshakes that started after a Reloaded event yet got the old leaf: {stale} (must be 0)."
    );
    out.text = t;
    out.json =
        json!({ "poll_interval_ms": settings.poll_interval.as_millis() as u64, "series": js });
    out
}

fn summary(v: &[f64]) -> serde_json::Value {
    json!({
        "count": v.len(),
        "p50": percentile(v, 50.0),
        "p90": percentile(v, 90.0),
        "p99": percentile(v, 99.0),
        "max": percentile(v, 100.0),
        "min": percentile(v, 0.0),
    })
}
