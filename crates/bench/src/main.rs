//! `hitless-bench`: one command that measures hitless against static rustls and prints ratios.
//!
//! ```text
//! cargo run --release -p hitless-bench -- all            # everything (~6 minutes)
//! cargo run --release -p hitless-bench -- all --quick    # CI-sized (~2 minutes)
//! cargo run --release -p hitless-bench -- handshake --json
//! cargo build --release -p hitless-cli && cargo run --release -p hitless-bench -- requests
//! ```

use std::process::ExitCode;
use std::time::Instant;

use hitless_bench::{
    baseline, handshake, instructions, memory, requests, resolver, rotation, scale, sni, tcp,
    Outcome, Settings, Target,
};

const USAGE: &str = "\
usage: hitless-bench [PART...] [--quick] [--json] [--rounds N] [--hitless PATH] [--concurrency N]

parts (default: all):
  all        every part below, in order
  handshake  1. in-process mutual-TLS handshakes/s: static rustls vs hitless vs hitless rotating
  tcp        2. the same over loopback TCP
  resolver   3. ns per certificate / configuration lookup (hitless vs a static Arc)
  rotation   4. rotation latency (rename, k8s ..data swap; watch, poll 100 ms): event, first handshake
  memory     5. RSS and open descriptors over 10,000 rotations
  instructions
             6. instructions per handshake and per lookup under valgrind callgrind
                (noise-free; skipped if valgrind is not installed)
  sni        7. ns per SNI resolve() with 1, 100, 10,000 identities vs a static HashMap
                (+ instructions per resolve under callgrind when valgrind is installed)
  scale      8. 10,000 identities in watch mode: load time, RSS, threads; time to pick up one
                changed file among them; only that identity re-read
  requests   9. HTTPS GETs with mutual TLS through the `hitless serve` process vs a static
                hyper + tokio-rustls server (new connection, keep-alive HTTP/1.1 and h2,
                resumed TLS 1.3 / TLS 1.2), side by side with the Go stat-per-handshake design
                and nginx; resumption safety under load. Needs the release hitless binary
                (cargo build --release -p hitless-cli); Go (golang-go) and nginx are used when
                installed, skipped otherwise. In `all`, skipped if the binary is missing.

options:
  --quick     CI-sized run (fewer rounds and rotations; indicative figures only)
  --json      print one JSON document on stdout instead of the text report
  --rounds N  interleaved rounds for parts 1 and 3 (default 30), N/2 for part 2 (default 15)
  --hitless PATH
              the hitless binary for part 9 (default: `hitless` next to this executable)
  --concurrency N
              load-generator workers in part 9 (default 8)
  --callgrind-out DIR
              part 9: keep the callgrind profiles of the instructions-per-request runs in DIR
              (for callgrind_annotate); also counts instructions in a --quick run
  --op NAME [--iters N] [--key p256|rsa2048]
              run one operation N times, for instruction counts under
              valgrind --tool=callgrind (see docs/PERFORMANCE.md): NAME is static-key,
              hitless-key, static-config, hitless-config (part 3 lookups; counted function
              *run_op*) or handshake-static, handshake-hitless (part 1 handshakes; counted
              function *counted_handshakes*), or sni-map, sni-exact, sni-wildcard, sni-miss,
              sni-none [--identities N] (part 7 lookups; counted function *run_sni_op*)

Exit status: 0 if every correctness check passed (no failed handshake, every rotation
observed), 1 otherwise; 2 on a usage error. Missed speed targets are reported, not fatal.";

const PARTS: [&str; 9] = [
    "handshake",
    "tcp",
    "resolver",
    "rotation",
    "memory",
    "instructions",
    "sni",
    "scale",
    "requests",
];

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("serve-baseline") {
        argv.next();
        let result = baseline::Args::parse(argv).and_then(|a| baseline::run(&a));
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hitless-bench serve-baseline: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut parts: Vec<&'static str> = Vec::new();
    let mut quick = false;
    let mut json = false;
    let mut rounds = None;
    let mut op = None;
    let mut iters = None;
    let mut identities = 1usize;
    let mut key = hitless_test_pki::KeyType::EcP256;
    let mut hitless_exe = None;
    let mut concurrency = None;
    let mut callgrind_dir = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "all" => parts.extend(PARTS),
            "--quick" => quick = true,
            "--json" => json = true,
            "--rounds" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => rounds = Some(n),
                _ => return usage("--rounds needs a positive number"),
            },
            "--op" => op = args.next(),
            "--hitless" => match args.next() {
                Some(p) => hitless_exe = Some(std::path::PathBuf::from(p)),
                None => return usage("--hitless needs a path"),
            },
            "--callgrind-out" => match args.next() {
                Some(p) => callgrind_dir = Some(std::path::PathBuf::from(p)),
                None => return usage("--callgrind-out needs a directory"),
            },
            "--concurrency" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if (1..=256).contains(&n) => concurrency = Some(n),
                _ => return usage("--concurrency needs a number from 1 to 256"),
            },
            "--key" => match args.next().as_deref() {
                Some("p256") => key = hitless_test_pki::KeyType::EcP256,
                Some("rsa2048") => key = hitless_test_pki::KeyType::Rsa2048,
                _ => return usage("--key needs p256 or rsa2048"),
            },
            "--identities" => match args.next().and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n > 0 => identities = n,
                _ => return usage("--identities needs a positive number"),
            },
            "--iters" => match args.next().and_then(|n| n.parse::<u64>().ok()) {
                Some(n) => iters = Some(n),
                None => return usage("--iters needs a number"),
            },
            "-h" | "--help" | "help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => match PARTS.iter().find(|p| **p == other) {
                Some(p) => parts.push(p),
                None => return usage(&format!("unknown argument {other:?}")),
            },
        }
    }
    if let Some(op) = op {
        if op.starts_with("sni-") {
            return match sni::run_one_op(&op, identities, iters.unwrap_or(1_000_000)) {
                Ok(msg) => {
                    println!("{msg}");
                    ExitCode::SUCCESS
                }
                Err(e) => usage(&e),
            };
        }
        return run_one_op(&op, iters, key);
    }
    if parts.is_empty() {
        parts.extend(PARTS);
    }
    let mut seen = std::collections::HashSet::new();
    parts.retain(|p| seen.insert(*p));
    let mut settings = if quick {
        Settings::quick()
    } else {
        Settings::full()
    };
    if let Some(r) = rounds {
        settings.rounds = r;
        settings.tcp_rounds = r.div_ceil(2);
    }
    settings.hitless_exe = hitless_exe;
    if callgrind_dir.is_some() {
        settings.req_instr = true;
        settings.req_callgrind_dir = callgrind_dir;
    }
    if let Some(c) = concurrency {
        settings.req_concurrency = c;
    }
    // Asked for by name (not only through `all`): a missing hitless binary is an error.
    settings.req_required = std::env::args().skip(1).any(|a| a == "requests");

    let started = Instant::now();
    let header = machine(quick, &settings);
    if !json {
        println!("{header}");
    }
    let mut results: Vec<(&str, Outcome)> = Vec::new();
    for part in &parts {
        eprintln!("[hitless-bench] running {part}...");
        let t = Instant::now();
        let outcome = match *part {
            "handshake" => handshake::run(&settings),
            "tcp" => tcp::run(&settings),
            "resolver" => resolver::run(&settings),
            "rotation" => rotation::run(&settings),
            "memory" => memory::run(&settings),
            "sni" => sni::run(&settings),
            "scale" => scale::run(&settings),
            "requests" => requests::run(&settings),
            _ => instructions::run(&settings),
        };
        eprintln!(
            "[hitless-bench] {part} done in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        if !json {
            println!("{}", outcome.text);
        }
        results.push((part, outcome));
    }

    let targets: Vec<&Target> = results.iter().flat_map(|(_, o)| &o.targets).collect();
    let problems: Vec<&String> = results.iter().flat_map(|(_, o)| &o.problems).collect();
    if json {
        let doc = serde_json::json!({
            "machine": header,
            "quick": quick,
            "elapsed_s": started.elapsed().as_secs_f64(),
            "parts": results.iter().map(|(p, o)| (p.to_string(), o.json.clone())).collect::<serde_json::Map<_, _>>(),
            "targets": targets.iter().map(|t| t.json()).collect::<Vec<_>>(),
            "problems": problems,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&doc).expect("serialize report")
        );
    } else {
        println!("Targets");
        if targets.is_empty() {
            println!("   (none for the parts run)");
        }
        for t in &targets {
            println!(
                "   {:<4} {:<58} {:>14}  (target {})",
                if t.met { "ok" } else { "MISS" },
                t.what,
                t.measured,
                t.goal
            );
        }
        println!();
        if problems.is_empty() {
            println!("Correctness: no failed handshake, every rotation observed.");
        } else {
            println!("Correctness PROBLEMS:");
            for p in &problems {
                println!("   {p}");
            }
        }
        println!("Total time {:.1} s", started.elapsed().as_secs_f64());
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("hitless-bench: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}

fn run_one_op(name: &str, iters: Option<u64>, key: hitless_test_pki::KeyType) -> ExitCode {
    let (op, handshake) = match name {
        "static-key" => (0, false),
        "hitless-key" => (1, false),
        "static-config" => (2, false),
        "hitless-config" => (3, false),
        "handshake-static" => (0, true),
        "handshake-hitless" => (1, true),
        _ => return usage(&format!("unknown --op {name:?}")),
    };
    if handshake {
        let n = iters.unwrap_or(200);
        handshake::counted(key, op, n);
        println!("{n} in-process handshakes ({name})");
    } else {
        let n = iters.unwrap_or(10_000_000);
        let subjects = resolver::Subjects::new();
        subjects.run_op(op, n);
        println!("{} x {n}", resolver::OPS[op]);
    }
    ExitCode::SUCCESS
}

/// A description of where the figures come from.
fn machine(quick: bool, settings: &Settings) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .map(|l| format!("load average {l} at start"))
        })
        .unwrap_or_default();
    let profile = if cfg!(debug_assertions) {
        "DEBUG build (figures meaningless)"
    } else {
        "release build"
    };
    format!(
        "hitless-bench {}: {cpus} CPUs ({model}), {load}; {profile}; {} run, {} rounds per figure\n",
        env!("CARGO_PKG_VERSION"),
        if quick { "quick" } else { "full" },
        settings.rounds
    )
}
