//! Part 6: instruction counts under valgrind's callgrind, which are free of the noise of a
//! shared machine. Each figure runs this same binary under
//! `valgrind --tool=callgrind --toggle-collect=<fn>` so that only the measured loop is
//! counted (set-up, key generation and the PKI are not):
//!
//! - per in-process handshake (`--op handshake-static|handshake-hitless`, counted function
//!   `counted_handshakes`), both sides of a full mutual-TLS 1.3 handshake, as in part 1;
//! - per lookup (`--op static-key|hitless-key|static-config|hitless-config`, counted function
//!   `run_op`), as in part 3.
//!
//! Skipped (not a failure) when `valgrind` is not installed.

use std::fmt::Write as _;
use std::process::Command;

use serde_json::json;

use crate::{Outcome, Settings, Target};

/// Instructions counted by callgrind for one run of this binary with `args`, collecting only
/// inside functions matching `toggle`.
pub fn count(toggle: &str, args: &[&str]) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let out = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--callgrind-out-file=/dev/null")
        .arg(format!("--toggle-collect={toggle}"))
        .arg(&exe)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run valgrind: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "valgrind {} {args:?} failed: {}",
            exe.display(),
            stderr.lines().last().unwrap_or("")
        ));
    }
    stderr
        .lines()
        .find_map(|l| l.split("Collected :").nth(1))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no 'Collected' line in valgrind's output for {args:?}"))
}

/// Whether valgrind can be run.
pub fn available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs part 6 and formats it.
pub fn run(settings: &Settings) -> Outcome {
    let mut out = Outcome::default();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "6. Instruction counts (valgrind callgrind; deterministic up to random nonces and keys)"
    );
    if !available() {
        let _ = writeln!(t, "   skipped: valgrind is not installed");
        out.text = t;
        out.json = json!({ "skipped": "valgrind not installed" });
        return out;
    }
    let n = settings.instr_handshakes;
    let _ = writeln!(
        t,
        "   {:<11} {:<10} {:>16} {:>16} {:>14}",
        "server key", "", "static", "hitless", "static/hitless"
    );
    let mut js = Vec::new();
    for (key, label) in [("p256", "ecdsa-p256"), ("rsa2048", "rsa-2048")] {
        let n_s = n.to_string();
        let counts: Result<Vec<u64>, String> = ["handshake-static", "handshake-hitless"]
            .iter()
            .map(|op| {
                count(
                    "*counted_handshakes*",
                    &["--op", op, "--key", key, "--iters", &n_s],
                )
            })
            .collect();
        match counts {
            Ok(c) => {
                let (s, h) = (c[0] as f64 / n as f64, c[1] as f64 / n as f64);
                let ratio = s / h;
                let _ = writeln!(
                    t,
                    "   {:<11} {:<10} {:>16.0} {:>16.0} {:>14.5}",
                    label, "instr/hs", s, h, ratio
                );
                out.targets.push(Target::at_least(
                    format!("instructions {label} static/hitless per handshake"),
                    ratio,
                    0.98,
                ));
                js.push(json!({
                    "server_key": label, "handshakes": n,
                    "static_instructions_per_handshake": s,
                    "hitless_instructions_per_handshake": h,
                    "static_over_hitless": ratio,
                }));
            }
            Err(e) => out.problems.push(format!("instructions {label}: {e}")),
        }
    }
    let iters = settings.instr_lookups;
    let iters_s = iters.to_string();
    let mut lookups = Vec::new();
    for (op, name) in [
        ("static-key", "Arc::clone(static CertifiedKey)"),
        ("hitless-key", "ReloadingIdentity::certified_key()"),
        ("static-config", "Arc::clone(static ServerConfig)"),
        ("hitless-config", "ReloadingServerConfig::current()"),
    ] {
        match count("*run_op*", &["--op", op, "--iters", &iters_s]) {
            Ok(c) => {
                let per = c as f64 / iters as f64;
                let _ = writeln!(t, "   lookup  {name:<36} {per:>8.1} instr/op");
                lookups.push(json!({ "lookup": name, "instructions_per_op": per }));
            }
            Err(e) => out.problems.push(format!("instructions {op}: {e}")),
        }
    }
    out.text = t;
    out.json = json!({ "handshakes": js, "lookups": lookups });
    out
}
