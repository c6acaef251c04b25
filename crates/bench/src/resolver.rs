//! Part 3: the cost of the lookups hitless adds to the handshake path, alone.
//!
//! rustls's `ClientHello` cannot be built outside rustls, so `IdentityResolver::resolve` is
//! measured through the same load path: `ReloadingIdentity::certified_key()` (what `resolve`
//! does: one arc-swap load, one `Arc` clone), against `Arc::clone` of a static
//! `Arc<CertifiedKey>` (what rustls's `with_single_cert` resolver does). Likewise the per-
//! connection `ReloadingServerConfig::current()` against `Arc::clone` of a static
//! `Arc<ServerConfig>` (what a `TlsAcceptor` does). Each lookup's result is dropped, as a
//! connection eventually does. Measured on one thread and on two threads at once (the same
//! objects from both cores: the refcount's cache line bounces, as on a busy server).

use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use hitless::Detection;
use hitless_test_pki::KeyType;
use rustls::sign::CertifiedKey;
use serde_json::json;

use crate::common::{init_provider, interleave, median, min_max, ratios, Hitless, Pki};
use crate::{Outcome, Settings};

/// The lookups measured, in pairs (baseline, candidate).
pub const OPS: [&str; 4] = [
    "Arc::clone(static CertifiedKey)",
    "ReloadingIdentity::certified_key()",
    "Arc::clone(static ServerConfig)",
    "ReloadingServerConfig::current()",
];

/// What the lookups run against.
pub struct Subjects {
    static_key: Arc<CertifiedKey>,
    static_config: Arc<rustls::ServerConfig>,
    hitless: Hitless,
    _pki: Pki,
}

impl Subjects {
    /// A P-256 identity, static and reloading (watched, never rotated here).
    pub fn new() -> Subjects {
        init_provider();
        let pki = Pki::with_leaves(KeyType::EcP256, 1);
        let hitless = pki.hitless_server(Detection::Watch);
        let static_key = hitless.identity.certified_key().expect("identity loaded");
        // A CertifiedKey of its own, not shared with the identity's snapshot.
        let static_key = Arc::new(CertifiedKey::new(
            static_key.cert.clone(),
            static_key.key.clone(),
        ));
        let static_config = pki.static_server_config();
        Subjects {
            static_key,
            static_config,
            hitless,
            _pki: pki,
        }
    }

    /// Runs lookup `op` `iters` times.
    #[inline(never)]
    pub fn run_op(&self, op: usize, iters: u64) {
        match op {
            0 => {
                for _ in 0..iters {
                    black_box(Arc::clone(black_box(&self.static_key)));
                }
            }
            1 => {
                let identity = &self.hitless.identity;
                for _ in 0..iters {
                    black_box(black_box(identity).certified_key());
                }
            }
            2 => {
                for _ in 0..iters {
                    black_box(Arc::clone(black_box(&self.static_config)));
                }
            }
            _ => {
                let configs = &self.hitless.configs;
                for _ in 0..iters {
                    black_box(black_box(configs).current());
                }
            }
        }
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new()
    }
}

/// ns/op per round for each op, on `threads` threads at once.
fn measure(subjects: &Subjects, settings: &Settings, threads: usize) -> Vec<Vec<f64>> {
    let iters = settings.resolver_iters;
    // Warm up.
    for op in 0..OPS.len() {
        subjects.run_op(op, iters / 10 + 1);
    }
    interleave(OPS.len(), settings.rounds, |op| {
        let start = Instant::now();
        if threads == 1 {
            subjects.run_op(op, iters);
        } else {
            std::thread::scope(|s| {
                for _ in 0..threads {
                    s.spawn(|| subjects.run_op(op, iters));
                }
            });
        }
        start.elapsed().as_nanos() as f64 / iters as f64
    })
}

/// Runs part 3 and formats it.
pub fn run(settings: &Settings) -> Outcome {
    let subjects = Subjects::new();
    let mut out = Outcome::default();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "3. Lookup cost on the handshake path ({} lookups per round, {} rounds; ns/op = median [min-max])",
        settings.resolver_iters, settings.rounds
    );
    let _ = writeln!(
        t,
        "   {:<8} {:<36} {:>8} {:>19} {:>10}",
        "threads", "lookup (+ drop)", "ns/op", "[min - max]", "extra ns"
    );
    let mut js = Vec::new();
    for threads in [1usize, 2] {
        let per_op = measure(&subjects, settings, threads);
        for (op, name) in OPS.iter().enumerate() {
            let med = median(&per_op[op]);
            let (lo, hi) = min_max(&per_op[op]);
            let extra = if op % 2 == 1 {
                // Median of the per-round differences to the baseline of the pair.
                let diffs: Vec<f64> = per_op[op]
                    .iter()
                    .zip(&per_op[op - 1])
                    .map(|(c, b)| c - b)
                    .collect();
                Some(median(&diffs))
            } else {
                None
            };
            let _ = writeln!(
                t,
                "   {:<8} {:<36} {:>8.2} {:>19} {:>10}",
                threads,
                name,
                med,
                format!("[{lo:.2} - {hi:.2}]"),
                extra.map_or(String::new(), |e| format!("{e:+.2}")),
            );
            js.push(json!({
                "threads": threads,
                "lookup": name,
                "ns_per_op_median": med,
                "ns_per_op_rounds": per_op[op],
                "extra_ns_vs_baseline_median": extra,
                "ratio_vs_baseline_median": (op % 2 == 1)
                    .then(|| median(&ratios(&per_op[op], &per_op[op - 1]))),
            }));
        }
    }
    let _ = writeln!(
        t,
        "   A handshake takes hundreds of microseconds (part 1), so a few ns per lookup is < 0.01 %."
    );
    let _ = writeln!(
        t,
        "   The SNI resolver (ServerIdentities with 1, 100 and 10,000 identities) is part 7 (`sni`)."
    );
    out.text = t;
    out.json = json!({
        "iterations_per_round": settings.resolver_iters,
        "rounds": settings.rounds,
        "lookups": js,
        "sni": "see part \"sni\"",
    });
    out
}
