//! No value of a flag or a configuration key makes `hitless` panic (issue 13, item 10).
//!
//! `call --rate 1e-20`, `call --duration 500000000000y` and
//! `serve --wait-for-credentials 500000000000y` panicked (a float too big for a `Duration`,
//! `Instant + Duration` overflowing), and `--poll-interval 0s` was accepted on the command
//! line although the configuration file refuses it. Every duration, rate and fraction is now
//! parsed by one bounded parser per kind; each case here must exit non-zero with a message
//! that names the flag (or key) and the reason, and never with a panic.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const HUGE: &str = "500000000000y";

/// Runs `hitless ARGS` (bounded) and asserts a refusal naming `flag`, without a panic.
fn assert_refused(args: &[&str], flag: &str) {
    let mut cmd = Command::new(hitless_bin());
    cmd.args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_BACKTRACE");
    let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
    let shown = format!("hitless {}\n{ran:?}", args.join(" "));
    assert!(ran.status.is_some(), "did not exit by itself: {shown}");
    assert!(!ran.success(), "accepted: {shown}");
    assert!(!ran.stderr.contains("panicked"), "panicked: {shown}");
    assert!(
        ran.stderr.contains(flag),
        "the message does not name {flag}: {shown}"
    );
    assert!(
        ran.stderr.contains("invalid value"),
        "no reason given: {shown}"
    );
}

#[test]
fn call_refuses_absurd_rates_durations_and_timeouts() {
    let call = |flag: &str, value: &str| {
        // FLAG=VALUE: a negative number as a separate word would read as a flag.
        let arg = format!("{flag}={value}");
        assert_refused(
            &["call", "https://127.0.0.1:1/", "--ca", "ca.pem", &arg],
            flag,
        );
    };
    for rate in ["1e-20", "0", "-1", "NaN", "inf", "-inf", "x"] {
        call("--rate", rate);
    }
    for duration in [HUGE, "0s", "-1s", "NaN", "inf"] {
        call("--duration", duration);
    }
    for timeout in [HUGE, "0s", "-5s"] {
        call("--timeout", timeout);
    }
    call("--concurrency", "0");
}

#[test]
fn serve_refuses_absurd_durations_fractions_and_limits() {
    let serve = |flag: &str, value: &str| {
        // FLAG=VALUE: a negative number as a separate word would read as a flag.
        let arg = format!("{flag}={value}");
        assert_refused(&["serve", "--identity", "id.pem", &arg], flag);
    };
    for value in [HUGE, "-1s", "NaN", "inf"] {
        serve("--wait-for-credentials", value);
        serve("--shutdown-timeout", value);
        serve("--on-handshake-ttl", value);
        serve("--quiet-period", value);
    }
    // Zero would poll without pause or close every connection at once.
    for flag in [
        "--poll-interval",
        "--handshake-timeout",
        "--header-read-timeout",
        "--idle-timeout",
    ] {
        serve(flag, "0s");
        serve(flag, HUGE);
    }
    for fraction in ["NaN", "inf", "-1", "33"] {
        serve("--expiring-soon", fraction);
    }
    for flag in ["--max-connections", "--admin-max-connections"] {
        for count in ["0", "-1", "99999999999", "many"] {
            serve(flag, count);
        }
    }

    // The largest wait accepted, on the path that crashed at once: serve waits.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = start_server(
        dir.path(),
        &[
            "--identity".into(),
            dir.path().join("not-yet.pem").into(),
            "--wait-for-credentials".into(),
            "100y".into(),
        ],
    );
    let deadline = Instant::now() + READY_TIMEOUT;
    while !server.log().contains("waiting for credentials") {
        if let Some(status) = server.try_wait() {
            panic!("serve exited: {status}\n{}", server.log());
        }
        assert!(
            Instant::now() < deadline,
            "no wait logged:\n{}",
            server.log()
        );
        std::thread::sleep(POLL);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.try_wait().is_none(),
        "serve stopped waiting:\n{}",
        server.log()
    );
}

#[test]
fn the_other_commands_refuse_absurd_durations() {
    for (args, flag) in [
        (
            vec![
                "probe",
                "https://127.0.0.1:1/",
                "--ca",
                "ca.pem",
                "--timeout",
                "0s",
            ],
            "--timeout",
        ),
        (
            vec![
                "probe",
                "https://127.0.0.1:1/",
                "--ca",
                "ca.pem",
                "--crl-reload-wait",
                HUGE,
            ],
            "--crl-reload-wait",
        ),
        (vec!["inspect", "x.pem", "--warn", HUGE], "--warn"),
        (vec!["demo", "--no-tui", "--duration", HUGE], "--duration"),
        (
            vec!["demo", "--no-tui", "--rotate-every", HUGE],
            "--rotate-every",
        ),
        (
            vec!["demo", "--no-tui", "--probe-every", HUGE],
            "--probe-every",
        ),
        (vec!["agent", "--ttl", HUGE], "--ttl"),
        (vec!["agent", "--duration", HUGE], "--duration"),
        (vec!["agent", "--in-place-pause", HUGE], "--in-place-pause"),
        (vec!["agent", "--renew-at", "NaN"], "--renew-at"),
        (vec!["ca", "issue", "--ttl", HUGE], "--ttl"),
        (vec!["ca", "crl", "--next-update", HUGE], "--next-update"),
    ] {
        assert_refused(&args, flag);
    }
}

/// The configuration file accepts exactly what the flags accept, and names the key.
#[test]
fn the_configuration_file_refuses_the_same_values_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = "[[identity]]\nbundle = \"id.pem\"\n";
    for (text, key) in [
        (
            format!("{identity}[reload]\nwait_for_credentials = \"{HUGE}\"\n"),
            "reload.wait_for_credentials",
        ),
        (
            format!("{identity}[reload]\nmode = \"poll\"\npoll_interval = \"0s\"\n"),
            "reload.poll_interval",
        ),
        (
            format!("{identity}[reload]\nexpiring_soon = nan\n"),
            "reload.expiring_soon",
        ),
        (
            format!(
                "[[listener]]\nlisten = \"127.0.0.1:8443\"\nheader_read_timeout = \"0s\"\n{identity}"
            ),
            "listener[0].header_read_timeout",
        ),
        (
            format!("[[listener]]\nlisten = \"127.0.0.1:8443\"\nidle_timeout = \"{HUGE}\"\n{identity}"),
            "listener[0].idle_timeout",
        ),
        (
            format!("[[listener]]\nlisten = \"127.0.0.1:8443\"\nmax_connections = 0\n{identity}"),
            "listener[0].max_connections",
        ),
    ] {
        let file = dir.path().join("hitless.toml");
        std::fs::write(&file, &text).expect("write config");
        let mut cmd = Command::new(hitless_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&file)
            .arg("--check")
            .env_remove("RUST_BACKTRACE");
        let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
        let shown = format!("{text}\n{ran:?}");
        assert!(ran.status.is_some() && !ran.success(), "accepted: {shown}");
        assert!(!ran.stderr.contains("panicked"), "panicked: {shown}");
        assert!(ran.stderr.contains(key), "the message does not name {key}: {shown}");
    }
}
