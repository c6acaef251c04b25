//! The request path of `hitless serve` as a user feels it (issue 14, item 1): one request after
//! another, each on a new connection with a full mutual-TLS handshake, must be answered
//! without a delayed-ACK stall. Before `TCP_NODELAY` on accepted sockets, the response sat
//! behind Nagle's algorithm after the TLS session tickets until the client's delayed ACK
//! (~40 ms on Linux): 15–23 of 30 curl requests per round waited 40–60 ms between handshake
//! done and the response's first byte, where a normal request takes about 1 ms.
//!
//! This is the one place where the tests assert that something is fast, because the issue is
//! about exactly that. The bound (30 ms) sits well below the stall (≥ 40 ms, the kernel's
//! minimum delayed-ACK time) and far above a normal answer (~1 ms, debug build). On a loaded
//! 2-core machine the scheduler alone sometimes holds a process for 40–200 ms, so: the server
//! and the clients run at a high scheduling priority (`nice -n -15`; the stall is a kernel
//! timer and shows at any priority), the tests of this file run one at a time, and one
//! unlucky request proves nothing: a *round* of 30 requests passes when none waited longer
//! than the bound, and the test passes when one of up to [`ROUNDS`] rounds does. The stall is
//! a property of the server, not luck: with it, every round had a third to nine tenths of its
//! requests over the bound (and `call`'s slowest at 45–60 ms in every round). Measured with
//! four CPU-bound processes beside the other work of this machine: at most one retried round
//! in nine runs.

mod common;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Requests per round.
const REQUESTS: usize = 30;
/// Rounds before giving up.
const ROUNDS: usize = 5;
/// The longest acceptable wait between handshake done and the response's first byte.
const BOUND: Duration = Duration::from_millis(30);

/// The tests of this file run one at a time: each measures latency, and the others' curl
/// processes would be noise.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// `program` run at a high scheduling priority (`nice -n -15`): the measured wait is the
/// server's, not the time a busy machine takes to schedule the server or the client again. The
/// delayed-ACK stall is a kernel timer and shows at any priority. Without the privilege to
/// raise priority, `nice` says so and runs the program as it is.
fn prioritised(program: &str) -> Command {
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "-15", program]);
    cmd
}

/// Starts `serve` with mutual TLS on the pair from `pki` and waits until it listens.
fn start_mtls_server(pki: &Pki) -> ServerGuard {
    let port = free_port();
    let mut cmd = prioritised(hitless_bin());
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

/// Runs `round` up to [`ROUNDS`] times; returns once a round had no wait over [`BOUND`],
/// panics with every round's slow requests otherwise. A round returns `None` if no wait was
/// over the bound, else a description of those that were.
fn some_round_without_a_stall(
    what: &str,
    server: &ServerGuard,
    mut round: impl FnMut() -> Option<String>,
) {
    let mut report = Vec::new();
    for r in 1..=ROUNDS {
        match round() {
            None => return,
            Some(slow) => {
                eprintln!("{what}: round {r} had a slow request, trying again: {slow}");
                report.push(format!("round {r}: {slow}"));
            }
        }
    }
    panic!(
        "{what}: in every round some request waited more than {BOUND:?} between the handshake \
         and the response (a delayed-ACK stall: is TCP_NODELAY set on accepted sockets?)\n{}\n\
         --- server log ---\n{}",
        report.join("\n"),
        server.log()
    );
}

/// `None` if no wait is over [`BOUND`], else how many are and which (`#index: N ms`).
fn over_bound(waits: &[Duration]) -> Option<String> {
    let slow: Vec<String> = waits
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > BOUND)
        .map(|(i, w)| format!("#{i}: {:.1} ms", w.as_secs_f64() * 1e3))
        .collect();
    (!slow.is_empty()).then(|| {
        format!(
            "{} of {} requests waited more than {BOUND:?}: {}",
            slow.len(),
            waits.len(),
            slow.join(", ")
        )
    })
}

/// One curl request on a new connection with the client certificate; the time between
/// `time_appconnect` (TLS handshake done) and `time_starttransfer` (first response byte).
fn curl_wait(pki: &Pki, port: u16, version: HttpVersion) -> Duration {
    let mut cmd = prioritised("curl");
    cmd.args(["-sS", "--fail", "--max-time", "20", "-o", "/dev/null"])
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(&pki.ca_pem)
        .arg("--cert")
        .arg(&pki.client_crt)
        .arg("--key")
        .arg(&pki.client_key)
        .arg(match version {
            HttpVersion::Http11 => "--http1.1",
            HttpVersion::Http2 => "--http2",
        })
        .args(["--write-out", "%{time_appconnect} %{time_starttransfer}"])
        .arg(format!("https://localhost:{port}/"));
    let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
    assert!(ran.success(), "curl failed: {ran:?}");
    let times: Vec<f64> = ran
        .stdout
        .split_whitespace()
        .map(|t| t.parse().unwrap_or_else(|e| panic!("curl time {t:?}: {e}")))
        .collect();
    let [handshake_done, first_byte] = times[..] else {
        panic!("unexpected curl --write-out output: {ran:?}")
    };
    assert!(
        handshake_done > 0.0 && first_byte >= handshake_done,
        "curl times make no sense: {ran:?}"
    );
    Duration::from_secs_f64(first_byte - handshake_done)
}

fn curl_rounds(version: HttpVersion) {
    let _alone = one_at_a_time();
    let pki = Pki::new();
    let server = start_mtls_server(&pki);
    some_round_without_a_stall(&format!("curl {version:?}"), &server, || {
        let waits: Vec<Duration> = (0..REQUESTS)
            .map(|_| curl_wait(&pki, server.port, version))
            .collect();
        over_bound(&waits)
    });
}

#[test]
fn curl_http11_requests_on_new_connections_get_their_answer_without_a_stall() {
    curl_rounds(HttpVersion::Http11);
}

#[test]
fn curl_http2_requests_on_new_connections_get_their_answer_without_a_stall() {
    if !curl_has_http2() {
        eprintln!("note: this curl has no HTTP2 feature; the HTTP/1.1 test covers the listener");
        return;
    }
    curl_rounds(HttpVersion::Http2);
}

/// `hitless call --concurrency 1` (a new connection and full handshake per request) reports
/// each request's wait from sending to the response head (`response_ms`); its maximum over a
/// round must stay under the bound.
#[test]
fn call_concurrency_1_gets_every_answer_without_a_stall() {
    let _alone = one_at_a_time();
    let pki = Pki::new();
    let server = start_mtls_server(&pki);
    some_round_without_a_stall("hitless call --concurrency 1", &server, || {
        let mut cmd = prioritised(hitless_bin());
        cmd.arg("call")
            .arg(format!("https://127.0.0.1:{}/", server.port))
            .args(["--server-name", "localhost", "--ca"])
            .arg(&pki.ca_pem)
            .arg("--cert")
            .arg(&pki.client_crt)
            .arg("--key")
            .arg(&pki.client_key)
            .args([
                "--count",
                &REQUESTS.to_string(),
                "--concurrency",
                "1",
                "--json",
            ])
            .env("NO_COLOR", "1");
        let ran = run_bounded(cmd, b"", Duration::from_secs(120));
        assert!(ran.success(), "hitless call failed: {ran:?}");
        let summary: Value = serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|e| panic!("call --json is not JSON ({e}): {ran:?}"));
        assert_eq!(summary["ok"], REQUESTS, "{summary}");
        assert_eq!(
            summary["handshakes"], REQUESTS,
            "a new connection per request: {summary}"
        );
        let response = &summary["response_ms"];
        assert_eq!(response["count"], REQUESTS, "{summary}");
        let max = response["max"]
            .as_f64()
            .unwrap_or_else(|| panic!("no response_ms.max: {summary}"));
        (Duration::from_secs_f64(max / 1e3) > BOUND)
            .then(|| format!("the slowest of {REQUESTS} waited {max:.1} ms ({response})"))
    });
}
