//! Part 1: full mutual-TLS 1.3 handshakes in process, over memory buffers.
//!
//! One thread plays client and server in turn, so the figure is the CPU cost of a handshake
//! (both sides) with nothing else in the way. Variants, interleaved in rounds:
//!
//! - `static`: `ServerConfig` built once with `with_single_cert` + `WebPkiClientVerifier`;
//! - `hitless`: `ReloadingServerConfig::current()` per handshake (what a server does per
//!   accepted connection), its `IdentityResolver` over a watched `ReloadingIdentity`, client
//!   trust from a `ReloadingTrust`;
//! - `hitless+rotate`: the same while a background thread replaces the identity bundle every
//!   100 ms (atomic rename of pre-generated bundles) and the watcher reloads it.
//!
//! The background writer runs in every variant: in `static` and `hitless` it replaces a file
//! in a directory nobody watches, so all three variants share the same file-system activity
//! (fsync, interrupts) and the rotate variant differs only by the reloads themselves.

use std::fmt::Write as _;
use std::time::Instant;

use hitless::Detection;
use serde_json::json;

use crate::common::{
    init_provider, interleave, key_type_name, median, min_max, ratios, Clock, Pipe, Pki, Rotator,
};

/// Per-variant series of one component of `(wall, cpu)` rates.
pub fn split(rates: &[Vec<(f64, f64)>], f: impl Fn(&(f64, f64)) -> f64) -> [Vec<f64>; 3] {
    [0, 1, 2].map(|v| rates[v].iter().map(&f).collect())
}
use crate::{Outcome, Settings, Target};

/// Variant names, in measurement order.
pub const VARIANTS: [&str; 3] = ["static", "hitless", "hitless+rotate"];

/// Figures for one server key type.
#[derive(Debug, Clone)]
pub struct KeyResult {
    /// e.g. `ecdsa-p256`.
    pub key_type: &'static str,
    /// Handshakes per wall-clock second, per round, per variant.
    pub rates: [Vec<f64>; 3],
    /// Handshakes per CPU second of the whole process, per round, per variant.
    pub cpu_rates: [Vec<f64>; 3],
    /// Successful handshakes per variant.
    pub ok: [u64; 3],
    /// Failed handshakes per variant.
    pub failed: [u64; 3],
    /// The first few failure messages.
    pub errors: Vec<String>,
    /// Rotations written during the rotate variant.
    pub rotations_written: u64,
    /// Times the leaf presented changed between two consecutive rotate-variant handshakes.
    pub leaf_changes_seen: u64,
    /// Handshakes that presented a leaf that is none of the pre-generated ones.
    pub unknown_leaf: u64,
    /// CPU time of hitless's change detection (detector + inotify threads) per rotation
    /// written, in milliseconds: the cost of one reload (read, hash, parse, check, swap).
    pub detector_cpu_ms_per_rotation: f64,
}

impl KeyResult {
    /// Median of the per-round ratios `variant / static`, wall clock.
    pub fn ratio(&self, variant: usize) -> f64 {
        median(&ratios(&self.rates[variant], &self.rates[0]))
    }

    /// Median of the per-round ratios `variant / static`, per CPU second.
    pub fn cpu_ratio(&self, variant: usize) -> f64 {
        median(&ratios(&self.cpu_rates[variant], &self.cpu_rates[0]))
    }
}

/// Runs part 1 for every key type of `settings`.
pub fn measure(settings: &Settings) -> Vec<KeyResult> {
    init_provider();
    settings
        .key_types
        .iter()
        .map(|&kt| measure_key(settings, kt))
        .collect()
}

fn measure_key(settings: &Settings, kt: hitless_test_pki::KeyType) -> KeyResult {
    let pki = Pki::new(kt);
    let client = pki.client_config();
    let static_cfg = pki.static_server_config();
    let hl = pki.hitless_server(Detection::Watch);
    let rotator = Rotator::start(&pki.bundle_path, pki.bundles.clone(), settings.rotate_every);
    let mut pipe = Pipe::default();

    // Warm up both paths (first handshakes touch cold code and allocate caches).
    for _ in 0..20 {
        pipe.handshake(&client, static_cfg.clone(), &pki)
            .expect("warm-up handshake (static)");
        pipe.handshake(&client, hl.configs.current(), &pki)
            .expect("warm-up handshake (hitless)");
    }

    let mut ok = [0u64; 3];
    let mut failed = [0u64; 3];
    let mut errors = Vec::new();
    let mut last_leaf = None;
    let mut leaf_changes_seen = 0;
    let mut unknown_leaf = 0;
    let mut detector_ns = 0u64;
    let rates = interleave(3, settings.rounds, |v| {
        rotator.set_active(v == 2);
        let clock = Clock::start();
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < settings.slot {
            let config = if v == 0 {
                static_cfg.clone()
            } else {
                hl.configs.current()
            };
            match pipe.handshake(&client, config, &pki) {
                Ok(shook) => {
                    n += 1;
                    match shook.leaf {
                        None => unknown_leaf += 1,
                        Some(leaf) if v == 2 => {
                            if last_leaf.is_some_and(|l| l != leaf) {
                                leaf_changes_seen += 1;
                            }
                            last_leaf = Some(leaf);
                        }
                        Some(_) => {}
                    }
                }
                Err(e) => {
                    failed[v] += 1;
                    if errors.len() < 5 {
                        errors.push(format!("{}: {e}", VARIANTS[v]));
                    }
                }
            }
        }
        let rates = clock.rates(n);
        if v == 2 {
            detector_ns += clock.detector_ns();
        }
        rotator.set_active(false);
        ok[v] += n;
        rates
    });
    let rotations_written = rotator.written.load(std::sync::atomic::Ordering::Relaxed);
    drop(rotator);
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

/// Runs `n` handshakes of variant `v` (0 static, 1 hitless) for instruction counting:
/// `valgrind --tool=callgrind --toggle-collect='*counted_handshakes*'` counts only the loop.
pub fn counted(kt: hitless_test_pki::KeyType, v: usize, n: u64) {
    init_provider();
    let pki = Pki::with_leaves(kt, 1);
    let client = pki.client_config();
    let static_cfg = pki.static_server_config();
    let hl = pki.hitless_server(Detection::Watch);
    let get = || {
        if v == 0 {
            static_cfg.clone()
        } else {
            hl.configs.current()
        }
    };
    let mut pipe = Pipe::default();
    for _ in 0..5 {
        pipe.handshake(&client, get(), &pki).expect("warm-up");
    }
    counted_handshakes(&mut pipe, &client, &get, &pki, n);
}

#[inline(never)]
fn counted_handshakes(
    pipe: &mut Pipe,
    client: &std::sync::Arc<rustls::ClientConfig>,
    get: &dyn Fn() -> std::sync::Arc<rustls::ServerConfig>,
    pki: &Pki,
    n: u64,
) {
    for _ in 0..n {
        pipe.handshake(client, get(), pki).expect("handshake");
    }
}

/// Runs part 1 and formats it.
pub fn run(settings: &Settings) -> Outcome {
    let results = measure(settings);
    outcome(
        &results,
        "1. Handshakes in process (memory buffers, 1 thread, mutual TLS 1.3, no resumption)",
        "in-process",
        settings,
    )
}

/// Formats throughput results (shared with the TCP part).
pub fn outcome(results: &[KeyResult], title: &str, tag: &str, settings: &Settings) -> Outcome {
    let mut out = Outcome::default();
    let mut t = String::new();
    let _ = writeln!(t, "{title}");
    let _ = writeln!(
        t,
        "   {} rounds of {} ms per variant, order rotated each round; figures are medians of rounds,\n   \
         ratios are medians of per-round ratios; hs/CPU-s counts the CPU time of every thread of the\n   \
         process (client, server, hitless's detector) except the writer standing in for the agent",
        settings.rounds,
        settings.slot.as_millis()
    );
    let _ = writeln!(
        t,
        "   {:<11} {:<15} {:>8} {:>17} {:>9} {:>10} {:>9} {:>7} {:>6}",
        "server key",
        "variant",
        "hs/s",
        "[min - max]",
        "/static",
        "hs/CPU-s",
        "/static",
        "ok",
        "failed"
    );
    let mut keys = Vec::new();
    for r in results {
        let mut variants = Vec::new();
        for (v, name) in VARIANTS.iter().enumerate() {
            let med = median(&r.rates[v]);
            let (lo, hi) = min_max(&r.rates[v]);
            let cpu_med = median(&r.cpu_rates[v]);
            let (ratio, cpu_ratio) = if v == 0 {
                (1.0, 1.0)
            } else {
                (r.ratio(v), r.cpu_ratio(v))
            };
            let _ = writeln!(
                t,
                "   {:<11} {:<15} {:>8.0} {:>17} {:>9.3} {:>10.0} {:>9.3} {:>7} {:>6}",
                r.key_type,
                name,
                med,
                format!("[{lo:.0} - {hi:.0}]"),
                ratio,
                cpu_med,
                cpu_ratio,
                r.ok[v],
                r.failed[v]
            );
            variants.push(json!({
                "variant": name,
                "handshakes_per_s_median": med,
                "handshakes_per_s_rounds": r.rates[v],
                "ratio_vs_static_median_of_rounds": ratio,
                "handshakes_per_cpu_s_median": cpu_med,
                "handshakes_per_cpu_s_rounds": r.cpu_rates[v],
                "cpu_ratio_vs_static_median_of_rounds": cpu_ratio,
                "ok": r.ok[v],
                "failed": r.failed[v],
            }));
            if v > 0 {
                out.targets.push(Target::at_least(
                    format!("{tag} {} {name}/static (wall)", r.key_type),
                    ratio,
                    0.98,
                ));
                out.targets.push(Target::at_least(
                    format!("{tag} {} {name}/static (CPU)", r.key_type),
                    cpu_ratio,
                    0.98,
                ));
            }
        }
        let _ = writeln!(
            t,
            "   {:<11} hitless+rotate: {} rotations written, {} leaf changes seen by clients;\n   \
             {:<11} {:.2} ms of detector CPU per reload ({:.2} % of one core at one reload per {} ms)",
            r.key_type,
            r.rotations_written,
            r.leaf_changes_seen,
            "",
            r.detector_cpu_ms_per_rotation,
            r.detector_cpu_ms_per_rotation / settings.rotate_every.as_secs_f64() / 10.0,
            settings.rotate_every.as_millis()
        );
        let failed_rotating = r.failed[2];
        out.targets.push(Target::zero(
            format!("{tag} {} failed handshakes while rotating", r.key_type),
            failed_rotating as i64,
        ));
        for (v, f) in r.failed.iter().enumerate() {
            if *f > 0 {
                out.problems.push(format!(
                    "{tag} {} {}: {f} failed handshakes ({:?})",
                    r.key_type, VARIANTS[v], r.errors
                ));
            }
        }
        if r.unknown_leaf > 0 {
            out.problems.push(format!(
                "{tag} {}: {} handshakes presented an unknown leaf",
                r.key_type, r.unknown_leaf
            ));
        }
        if r.rotations_written > 0 && r.leaf_changes_seen == 0 {
            out.problems.push(format!(
                "{tag} {}: {} rotations written but clients never saw the leaf change",
                r.key_type, r.rotations_written
            ));
        }
        if r.rotations_written == 0 {
            out.problems.push(format!(
                "{tag} {}: no rotation was written during hitless+rotate (slot too short?)",
                r.key_type
            ));
        }
        keys.push(json!({
            "server_key": r.key_type,
            "variants": variants,
            "rotations_written": r.rotations_written,
            "leaf_changes_seen": r.leaf_changes_seen,
            "detector_cpu_ms_per_rotation": r.detector_cpu_ms_per_rotation,
            "errors": r.errors,
        }));
    }
    out.text = t;
    out.json = json!({
        "rounds": settings.rounds,
        "keys": keys,
    });
    out
}
