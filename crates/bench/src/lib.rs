//! Benchmarks for `hitless`: the proof behind "hot reloading costs nothing on the handshake
//! path". Run everything with
//!
//! ```text
//! cargo run --release -p hitless-bench -- all
//! ```
//!
//! Eight parts, each also a subcommand (see `docs/PERFORMANCE.md` for what every figure means):
//!
//! 1. [`handshake`]: in-process mutual-TLS 1.3 handshakes over memory buffers, static rustls
//!    against hitless, and hitless while the identity file is replaced every 100 ms;
//! 2. [`tcp`]: the same three variants over loopback TCP with a small blocking server;
//! 3. [`resolver`]: nanoseconds per certificate lookup and per configuration lookup;
//! 4. [`rotation`]: time from a rename / Kubernetes `..data` swap to the Reloaded event and
//!    to the first handshake that presents the new leaf, in watch and poll modes;
//! 5. [`memory`]: RSS and open descriptors before and after thousands of rotations;
//! 6. [`instructions`]: instruction counts per handshake and per lookup under callgrind
//!    (noise-free; skipped when valgrind is not installed);
//! 7. [`sni`]: the SNI resolver (`ServerIdentities::resolve`) with 1, 100 and 10,000
//!    identities against a static `HashMap` lookup;
//! 8. [`scale`]: 10,000 identities in watch mode: load time, RSS, threads, and the time to
//!    pick up one changed file among them (only that identity re-read);
//! 9. [`requests`]: HTTPS requests with mutual TLS through the `hitless serve` process against
//!    a static hyper + tokio-rustls server, the Go server design hitless replaces, and nginx,
//!    driven by a Go `net/http` load generator; resumption's gain and safety under load.
//!
//! Baseline and candidate are always measured in the same run, interleaved in rounds (the
//! order rotates every round), and the median of the per-round figures is reported: the
//! machine is shared and noisy, and a ratio taken within one round cancels most of the drift.

pub mod baseline;
pub mod common;
pub mod handshake;
pub mod instructions;
pub mod many;
pub mod memory;
pub mod procs;
pub mod requests;
pub mod resolver;
pub mod rotation;
pub mod rustclient;
pub mod scale;
pub mod sni;
pub mod tcp;

use std::path::PathBuf;
use std::time::Duration;

use hitless_test_pki::KeyType;

/// How much work each part does.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Interleaved rounds for the throughput and resolver parts.
    pub rounds: usize,
    /// Time each variant runs per round, in-process handshakes.
    pub slot: Duration,
    /// Interleaved rounds for loopback TCP.
    pub tcp_rounds: usize,
    /// Time each variant runs per round, loopback TCP.
    pub tcp_slot: Duration,
    /// Client threads for loopback TCP.
    pub tcp_clients: usize,
    /// Server worker threads (each accepts and serves one connection at a time).
    pub tcp_workers: usize,
    /// Lookups per variant per round in the resolver part.
    pub resolver_iters: u64,
    /// Rotations per series (layout × detection mode) in the latency part.
    pub rotations: usize,
    /// Rotations in the memory part (after `memory_warmup` that are not counted).
    pub memory_rotations: usize,
    /// Rotations done before the memory baseline is taken.
    pub memory_warmup: usize,
    /// Poll interval for the poll-mode latency series.
    pub poll_interval: Duration,
    /// How often the background writer replaces the identity during "rotating" variants.
    pub rotate_every: Duration,
    /// Server key types for the throughput parts.
    pub key_types: Vec<KeyType>,
    /// Handshakes counted per variant under callgrind.
    pub instr_handshakes: u64,
    /// Lookups counted per kind under callgrind.
    pub instr_lookups: u64,
    /// Lookups per case per round in the SNI part.
    pub sni_iters: u64,
    /// Set sizes measured in the SNI part.
    pub sni_counts: Vec<usize>,
    /// Lookups counted per case under callgrind in the SNI part (0: no counts).
    pub sni_instr_iters: u64,
    /// Set sizes counted under callgrind (each child run issues and loads its own set).
    pub sni_instr_counts: Vec<usize>,
    /// Identities in the scale part's large set.
    pub scale_identities: usize,
    /// Identities in the scale part's small reference set.
    pub scale_small: usize,
    /// Single-file changes per set in the scale part.
    pub scale_changes: usize,
    /// Interleaved rounds in the requests part.
    pub req_rounds: usize,
    /// Time each server runs per round and mode in the requests part.
    pub req_slot: Duration,
    /// Load-generator workers (each one request at a time).
    pub req_concurrency: usize,
    /// Server key types in the requests part.
    pub req_key_types: Vec<KeyType>,
    /// Use the Go load generator and the Go server design (when Go is installed).
    pub req_go: bool,
    /// Measure nginx (when installed).
    pub req_nginx: bool,
    /// Duration of each resumption safety run.
    pub req_safety: Duration,
    /// Time between two credential changes in the safety runs.
    pub req_change_every: Duration,
    /// Target for resumed / full handshakes per second through `hitless serve`.
    pub req_resume_goal: f64,
    /// Count instructions per request under callgrind (when valgrind is installed).
    pub req_instr: bool,
    /// Durations of the short and the long run under callgrind.
    pub req_instr_runs: (Duration, Duration),
    /// Where to keep the callgrind output files (default: the run's temporary directory).
    pub req_callgrind_dir: Option<PathBuf>,
    /// A missing `hitless` binary is a problem (the part was asked for by name), not a skip.
    pub req_required: bool,
    /// The `hitless` binary (default: next to this executable).
    pub hitless_exe: Option<PathBuf>,
    /// The `hitless-bench` binary that serves the baseline (default: this executable).
    pub bench_exe: Option<PathBuf>,
}

impl Settings {
    /// The documented full run.
    pub fn full() -> Settings {
        Settings {
            rounds: 30,
            slot: Duration::from_millis(300),
            tcp_rounds: 15,
            tcp_slot: Duration::from_millis(800),
            tcp_clients: 2,
            tcp_workers: 4,
            resolver_iters: 5_000_000,
            rotations: 100,
            memory_rotations: 10_000,
            memory_warmup: 200,
            poll_interval: Duration::from_millis(100),
            rotate_every: Duration::from_millis(100),
            key_types: vec![KeyType::EcP256, KeyType::Rsa2048],
            instr_handshakes: 100,
            instr_lookups: 100_000,
            sni_iters: 200_000,
            sni_counts: vec![1, 100, 10_000],
            sni_instr_iters: 100_000,
            sni_instr_counts: vec![1, 100],
            scale_identities: 10_000,
            scale_small: 100,
            scale_changes: 50,
            req_rounds: 10,
            req_slot: Duration::from_millis(500),
            req_concurrency: 8,
            req_key_types: vec![KeyType::EcP256, KeyType::Rsa2048],
            req_go: true,
            req_nginx: true,
            req_safety: Duration::from_secs(3),
            req_change_every: Duration::from_millis(150),
            req_resume_goal: 2.0,
            req_instr: true,
            req_instr_runs: (Duration::from_secs(2), Duration::from_secs(6)),
            req_callgrind_dir: None,
            req_required: false,
            hitless_exe: None,
            bench_exe: None,
        }
    }

    /// `--quick`: a CI-sized run (about two minutes, most of it in part 6); figures are indicative only.
    pub fn quick() -> Settings {
        Settings {
            rounds: 6,
            slot: Duration::from_millis(200),
            tcp_rounds: 4,
            tcp_slot: Duration::from_millis(400),
            resolver_iters: 1_000_000,
            rotations: 20,
            memory_rotations: 1_000,
            memory_warmup: 50,
            instr_handshakes: 20,
            instr_lookups: 10_000,
            sni_iters: 50_000,
            sni_instr_counts: vec![1, 100],
            sni_instr_iters: 10_000,
            scale_changes: 20,
            req_rounds: 3,
            req_slot: Duration::from_millis(400),
            req_instr: false,
            req_key_types: vec![KeyType::EcP256],
            req_safety: Duration::from_millis(1500),
            ..Settings::full()
        }
    }

    /// Tiny counts for the smoke test (debug build): correctness only, never speed.
    pub fn smoke() -> Settings {
        Settings {
            rounds: 2,
            slot: Duration::from_millis(150),
            tcp_rounds: 2,
            tcp_slot: Duration::from_millis(300),
            resolver_iters: 10_000,
            rotations: 3,
            memory_rotations: 20,
            memory_warmup: 5,
            instr_handshakes: 2,
            instr_lookups: 100,
            sni_iters: 1_000,
            sni_counts: vec![1, 50],
            sni_instr_iters: 0,
            sni_instr_counts: vec![],
            scale_identities: 50,
            scale_small: 10,
            scale_changes: 5,
            req_rounds: 2,
            req_slot: Duration::from_millis(300),
            req_concurrency: 2,
            req_key_types: vec![KeyType::EcP256],
            req_go: false,
            req_nginx: false,
            req_instr: false,
            req_safety: Duration::from_millis(1500),
            req_required: true,
            ..Settings::full()
        }
    }
}

/// What a part returns: human-readable text, a JSON value, and correctness problems (failed
/// handshakes, missed rotations). Speed never makes a problem; see [`Target`]s for that.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Text for the terminal.
    pub text: String,
    /// The same figures as JSON.
    pub json: serde_json::Value,
    /// Correctness failures: must be empty.
    pub problems: Vec<String>,
    /// Speed and resource targets with their measured figure.
    pub targets: Vec<Target>,
}

/// One documented target and whether this run met it.
#[derive(Debug, Clone)]
pub struct Target {
    /// What is measured, e.g. "in-process ecdsa-p256 hitless/static".
    pub what: String,
    /// The target, e.g. ">= 0.98".
    pub goal: String,
    /// The measured figure, formatted.
    pub measured: String,
    /// Whether the target was met.
    pub met: bool,
}

impl Target {
    /// A ratio that must be at least `min`.
    pub fn at_least(what: impl Into<String>, value: f64, min: f64) -> Target {
        Target {
            what: what.into(),
            goal: format!(">= {min}"),
            measured: format!("{value:.3}"),
            met: value >= min,
        }
    }

    /// A figure that must be at most `max` (`unit` printed after both).
    pub fn at_most(what: impl Into<String>, value: f64, max: f64, unit: &str) -> Target {
        Target {
            what: what.into(),
            goal: format!("<= {max} {unit}"),
            measured: format!("{value:.3} {unit}"),
            met: value <= max,
        }
    }

    /// A count that must be zero.
    pub fn zero(what: impl Into<String>, count: i64) -> Target {
        Target {
            what: what.into(),
            goal: "0".into(),
            measured: count.to_string(),
            met: count <= 0,
        }
    }

    /// JSON form.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "what": self.what, "goal": self.goal, "measured": self.measured, "met": self.met,
        })
    }
}

/// The benchmark's crypto provider (aws-lc-rs), named explicitly: a workspace test build
/// compiles ring into rustls too, and rustls' provider-less builders then cannot choose.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
