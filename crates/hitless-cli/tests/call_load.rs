//! `hitless call` as a load generator against a real `hitless serve` over loopback: the open
//! loop (`--rate`) with its request count and whole histogram in `--json`, latency measured
//! from the due time (a stalled server shows up in the percentiles), TLS session resumption
//! (`--resume`), HTTP/2 (`--h2`), and repeated warnings aggregated on stderr.
//!
//! No assertion here says something was fast: the stall test asserts a lower bound (requests
//! due during a stall waited at least about as long as the stall).

mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::{hitless_bin, run_bounded, send_signal, serve_args, Pki, ServerGuard};
use hitless_test_pki::{Ca, KeyType, LeafSpec};
use serde_json::Value;

/// Upper bound of one `hitless call` run (its own duration is a few seconds).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// `hitless serve` with mutual TLS (the test CA for clients) on a free port, ready.
fn start_mtls_server(pki: &Pki) -> ServerGuard {
    let port = common::free_port();
    let mut cmd = Command::new(hitless_bin());
    cmd.args(serve_args(port))
        .arg("--cert")
        .arg(&pki.server_crt)
        .arg("--key")
        .arg(&pki.server_key)
        .arg("--client-ca")
        .arg(&pki.ca_pem);
    let mut server = ServerGuard::spawn(cmd, port, pki.path(&format!("server-{port}.log")));
    server.wait_ready();
    server
}

/// `hitless call https://127.0.0.1:PORT/ --server-name localhost --ca ca.pem --cert .. --key ..
/// <extra>`.
fn call_cmd(pki: &Pki, port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new(hitless_bin());
    cmd.arg("call")
        .arg(format!("https://127.0.0.1:{port}/"))
        .args(["--server-name", "localhost", "--ca"])
        .arg(&pki.ca_pem)
        .arg("--cert")
        .arg(&pki.client_crt)
        .arg("--key")
        .arg(&pki.client_key)
        .args(extra)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    cmd
}

/// Runs a call with `--json` and returns its summary (panics, with everything, on failure).
fn call_json(cmd: Command, server: &ServerGuard) -> Value {
    let ran = run_bounded(cmd, b"", CALL_TIMEOUT);
    assert!(
        ran.success(),
        "hitless call failed: {ran:?}\nserver log:\n{}",
        server.log()
    );
    serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|e| panic!("call --json is not JSON ({e}): {ran:?}"))
}

fn u64_of(summary: &Value, key: &str) -> u64 {
    summary[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number `{key}`: {summary:#}"))
}

/// A latency percentile of the summary, in milliseconds.
fn latency_ms(summary: &Value, name: &str) -> f64 {
    summary["latency_ms"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no latency_ms.{name}: {summary:#}"))
}

/// `--rate 50 --duration 2s` makes the 100 scheduled requests (a few may be missed if the
/// machine is very slow to start them), every one answered, and `--json` carries the
/// percentiles and the whole histogram, whose counts add up to the successful requests.
#[test]
fn open_loop_rate_reports_the_request_count_and_the_whole_histogram() {
    let pki = Pki::new();
    let server = start_mtls_server(&pki);
    let summary = call_json(
        call_cmd(
            &pki,
            server.port,
            &["--rate", "50", "--duration", "2s", "--json"],
        ),
        &server,
    );
    assert_eq!(summary["mode"], "open-loop", "{summary:#}");
    assert_eq!(
        summary["latency_from"], "scheduled send time",
        "{summary:#}"
    );
    let requests = u64_of(&summary, "requests");
    assert!(
        (90..=100).contains(&requests),
        "50/s for 2 s is 100 requests, got {requests}: {summary:#}"
    );
    assert_eq!(u64_of(&summary, "ok"), requests, "{summary:#}");
    assert_eq!(u64_of(&summary, "failed"), 0, "{summary:#}");
    for name in ["p50", "p90", "p99", "p99.9", "max"] {
        assert!(latency_ms(&summary, name) > 0.0, "{name}: {summary:#}");
    }
    assert!(latency_ms(&summary, "p50") <= latency_ms(&summary, "p99"));
    assert!(latency_ms(&summary, "p99") <= latency_ms(&summary, "max"));
    let histogram = &summary["latency_histogram"];
    assert_eq!(histogram["unit"], "us", "{summary:#}");
    let buckets = histogram["buckets"].as_array().expect("buckets array");
    let total: u64 = buckets
        .iter()
        .map(|b| b[1].as_u64().expect("[value_us, count]"))
        .sum();
    assert_eq!(total, requests, "histogram counts: {histogram}");
    let values: Vec<u64> = buckets.iter().filter_map(|b| b[0].as_u64()).collect();
    assert!(values.windows(2).all(|w| w[0] < w[1]), "{histogram}");
    // The old fields stay.
    assert_eq!(summary["handshake_ms"]["count"], requests, "{summary:#}");
    assert_eq!(summary["response_ms"]["count"], requests, "{summary:#}");
}

/// The server is stopped (SIGSTOP) for 1.5 s in the middle of an open-loop run at 50/s:
/// requests due during the stall wait for it, and since latency is measured from the due time
/// they all show it: with ~150 requests of which ~75 were due during the stall, p99 is at least
/// a second (measured from the actual send, as a closed loop does, only the one request in
/// flight would be slow and p99 would not see it).
#[test]
fn a_stalled_server_shows_in_the_percentiles_measured_from_the_due_time() {
    const STALL: Duration = Duration::from_millis(1500);
    let pki = Pki::new();
    let server = start_mtls_server(&pki);
    let cmd = call_cmd(
        &pki,
        server.port,
        &["--rate", "50", "--duration", "3s", "--json"],
    );
    let pid = server.pid();
    let staller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(1000));
        send_signal(pid, "STOP");
        let stopped = Instant::now();
        thread::sleep(STALL);
        send_signal(pid, "CONT");
        stopped.elapsed()
    });
    let ran = run_bounded(cmd, b"", CALL_TIMEOUT);
    // Whatever happened, the server must run again (it is ours: killed by the guard on drop).
    let stalled = staller.join().expect("staller thread");
    assert!(
        ran.success(),
        "hitless call failed: {ran:?}\n{}",
        server.log()
    );
    let summary: Value = serde_json::from_str(&ran.stdout).expect("JSON summary");
    let requests = u64_of(&summary, "requests");
    assert!(requests >= 100, "{summary:#}");
    assert_eq!(u64_of(&summary, "ok"), requests, "{summary:#}");
    let p99 = latency_ms(&summary, "p99");
    let max = latency_ms(&summary, "max");
    assert!(
        max >= (stalled.as_secs_f64() - 0.1) * 1e3,
        "the request due when the server stopped waited the whole stall ({stalled:?}): {summary:#}"
    );
    assert!(
        p99 >= 1000.0,
        "p99 {p99} ms after a {stalled:?} stall of a 3 s run: {summary:#}"
    );
}

/// `--resume` makes new connections resume the TLS session the server gave: against `serve`
/// most handshakes after the first are resumed, and the summary counts them.
#[test]
fn resume_reports_resumed_handshakes_against_serve() {
    let pki = Pki::new();
    let server = start_mtls_server(&pki);
    let summary = call_json(
        call_cmd(&pki, server.port, &["--count", "20", "--resume", "--json"]),
        &server,
    );
    assert_eq!(u64_of(&summary, "ok"), 20, "{summary:#}");
    assert_eq!(
        u64_of(&summary, "handshakes"),
        20,
        "a new connection per request: {summary:#}"
    );
    let resumed = u64_of(&summary, "resumed_handshakes");
    let full = u64_of(&summary, "full_handshakes");
    assert!(resumed > 0, "no handshake resumed: {summary:#}");
    assert!(full >= 1, "the first handshake is a full one: {summary:#}");
    assert_eq!(resumed + full, 20, "{summary:#}");

    // Without --resume every handshake is a full one.
    let summary = call_json(
        call_cmd(&pki, server.port, &["--count", "5", "--json"]),
        &server,
    );
    assert_eq!(u64_of(&summary, "resumed_handshakes"), 0, "{summary:#}");
    assert_eq!(u64_of(&summary, "full_handshakes"), 5, "{summary:#}");
}

/// `--h2` speaks HTTP/2 (the client refuses a connection on which the server did not choose
/// `h2` by ALPN), with a new connection per request and with connections reused.
#[test]
fn h2_calls_serve_over_http2() {
    let pki = Pki::new();
    let server = start_mtls_server(&pki);
    for extra in [&[][..], &["--keep-alive"][..]] {
        let mut args = vec!["--count", "6", "--concurrency", "2", "--h2", "--json"];
        args.extend_from_slice(extra);
        let summary = call_json(call_cmd(&pki, server.port, &args), &server);
        assert_eq!(summary["protocol"], "h2", "{summary:#}");
        assert_eq!(u64_of(&summary, "ok"), 6, "{args:?}: {summary:#}");
        assert_eq!(u64_of(&summary, "failed"), 0, "{args:?}: {summary:#}");
        // Each serve response carries the client certificate it saw: mTLS over h2 worked.
        assert_eq!(
            summary["client_serials_seen_by_server"]
                .as_array()
                .map(Vec::len),
            Some(1),
            "{summary:#}"
        );
    }
}

/// A 3-second run with a client certificate of another CA: every request fails, and the
/// library warns on every handshake that no client certificate was sent. stderr gets the first
/// of each warning and then one line a second per kind with its count, not one per request.
#[test]
fn repeated_warnings_are_aggregated_per_second_with_counts() {
    let pki = Pki::new();
    let server = start_mtls_server(&pki);
    let other = Ca::new_root("another CA", KeyType::EcP256);
    let stranger = other.issue(&LeafSpec::client("stranger"));
    let (crt, key) = stranger.write_pair(pki.dir.path(), "stranger.crt", "stranger.key");
    let mut cmd = Command::new(hitless_bin());
    cmd.arg("call")
        .arg(format!("https://127.0.0.1:{}/", server.port))
        .args(["--server-name", "localhost", "--ca"])
        .arg(&pki.ca_pem)
        .arg("--cert")
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .args(["--duration", "3s", "--concurrency", "4", "--json"])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "info");
    let ran = run_bounded(cmd, b"", CALL_TIMEOUT);
    assert!(
        ran.status.is_some() && !ran.success(),
        "every request fails, so the call fails: {ran:?}"
    );
    let summary: Value = serde_json::from_str(&ran.stdout).expect("JSON summary");
    let failed = u64_of(&summary, "failed");
    assert_eq!(u64_of(&summary, "ok"), 0, "{summary:#}");
    let warnings: Vec<&str> = ran.stderr.lines().filter(|l| l.contains("WARN")).collect();
    // Two kinds (the library's "no client certificate sent", call's "request failed"), each
    // said once in full and then at most once a second with a count, over 3 s plus the final
    // flush: a handful, whatever the number of requests.
    assert!(
        warnings.len() <= 14,
        "{} warning lines for {failed} failed requests:\n{}",
        warnings.len(),
        ran.stderr
    );
    assert!(
        failed >= 2 * warnings.len() as u64,
        "too few requests to show aggregation ({failed} failed, {} lines)",
        warnings.len()
    );
    let counted: u64 = warnings
        .iter()
        .filter_map(|l| l.split_once("repeated=")?.1.split_whitespace().next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    assert!(
        counted > 0,
        "no line counts the repeats held back:\n{}",
        ran.stderr
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("no client certificate sent")),
        "the library's warning is said (once):\n{}",
        ran.stderr
    );
    // Every failed request is accounted for by call's own lines: one in full, the rest counted.
    let call_counted: u64 = warnings
        .iter()
        .filter(|l| l.contains("request failed"))
        .map(|l| {
            l.split_once("repeated=")
                .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok())
                .unwrap_or(1)
        })
        .sum();
    assert_eq!(call_counted, failed, "{}", ran.stderr);
}
