//! `hitless demo`: the whole system runs and its summary proves every claim; the live view
//! renders in a real terminal (tmux).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{hitless_bin, run_bounded};

/// The number after `label` on its summary line (`  label: N...`).
fn summary_number(summary: &str, label: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no `{label}` line in the summary:\n{summary}"));
    let value = line.split_once(':').unwrap().1.trim();
    value
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{label}` is not a number: {line}"))
}

#[test]
fn demo_without_tui_passes_every_check() {
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["demo", "--duration", "30s", "--no-tui"]);
    cmd.env("NO_COLOR", "1");
    let ran = run_bounded(cmd, b"", Duration::from_secs(180));
    let out = &ran.stdout;
    assert!(ran.success(), "demo failed:\n{out}\n{}", ran.stderr);
    let summary = &out[out.find("hitless demo summary").expect("no summary")..];
    assert!(
        summary_number(summary, "server rotations") >= 5,
        "{summary}"
    );
    assert!(
        summary_number(summary, "client rotations") >= 5,
        "{summary}"
    );
    assert_eq!(summary_number(summary, "CA rotations"), 1, "{summary}");
    assert_eq!(
        summary_number(summary, "revocations refused"),
        1,
        "{summary}"
    );
    assert!(summary.contains("bad writes refused: 2/2"), "{summary}");
    assert_eq!(summary_number(summary, "failed handshakes"), 0, "{summary}");
    assert_eq!(summary_number(summary, "failed requests"), 0, "{summary}");
    assert!(summary_number(summary, "requests ok") > 0, "{summary}");
    assert!(summary.contains(", 0 lost,"), "{summary}");
    assert!(summary.contains("result: PASS"), "{summary}");
    // Every probe run passed: "probes: N run, N passed, M attacks refused".
    let probes = summary
        .lines()
        .find(|l| l.contains("probes:") && l.contains("run,"))
        .unwrap();
    let numbers: Vec<u64> = probes
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(numbers[0] >= 1 && numbers[0] == numbers[1], "{probes}");
}

/// Runs tmux on a private socket, so only our own server is touched.
fn tmux(socket: &str, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .arg("-L")
        .arg(socket)
        .args(args)
        .output()
        .expect("tmux must be installed for this test (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct TmuxGuard(String);

impl Drop for TmuxGuard {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .arg("kill-server")
            .output();
    }
}

#[test]
fn live_view_renders_in_a_terminal() {
    let socket = format!("hitless-demo-test-{}", std::process::id());
    let _guard = TmuxGuard(socket.clone());
    let command = format!("{} demo --duration 40s", hitless_bin());
    tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "demo",
            "-x",
            "140",
            "-y",
            "45",
            &command,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut screen = String::new();
    let rate_ok = |screen: &str| {
        screen.lines().any(|l| {
            l.split("handshakes/s").nth(1).is_some_and(|rest| {
                rest.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(|n| n > 0.0)
            })
        })
    };
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        screen = tmux(&socket, &["capture-pane", "-p", "-t", "demo"]);
        if rate_ok(&screen) {
            break;
        }
    }
    for heading in [
        "hitless demo",
        "Identities",
        "Trust bundle",
        "Traffic",
        "Probes",
        "Events",
    ] {
        assert!(
            screen.contains(heading),
            "no `{heading}` on the screen:\n{screen}"
        );
    }
    assert!(
        rate_ok(&screen),
        "no non-zero handshake rate on the screen:\n{screen}"
    );
    assert!(screen.contains("failed handshakes 0"), "{screen}");
    // q ends it cleanly.
    tmux(&socket, &["send-keys", "-t", "demo", "q"]);
}
