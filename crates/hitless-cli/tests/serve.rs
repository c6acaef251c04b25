//! Integration tests of `hitless serve`: the real binary against real peers (`curl`,
//! `openssl s_client`, `strace`) over loopback, with PKI generated at test time.

mod common;

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use hitless_test_pki::{Ca, KeyType, LeafSpec};
use serde_json::Value;
use time::OffsetDateTime;

/// Arguments of an mTLS server with the pair from `pki`.
fn mtls_pair_args(pki: &Pki) -> Vec<OsString> {
    vec![
        "--cert".into(),
        pki.server_crt.clone().into(),
        "--key".into(),
        pki.server_key.clone().into(),
        "--client-ca".into(),
        pki.ca_pem.clone().into(),
    ]
}

/// Starts an mTLS server with the pair from `pki` and waits until it listens.
fn start_mtls_server(pki: &Pki) -> ServerGuard {
    let mut server = start_server(pki.dir.path(), &mtls_pair_args(pki));
    server.wait_ready();
    server
}

/// The HTTP versions to exercise with curl: always HTTP/1.1, HTTP/2 if this curl has it.
fn http_versions() -> Vec<HttpVersion> {
    if curl_has_http2() {
        vec![HttpVersion::Http11, HttpVersion::Http2]
    } else {
        eprintln!("note: this curl has no HTTP2 feature; testing HTTP/1.1 only");
        vec![HttpVersion::Http11]
    }
}

/// Parses the JSON body of `/`, panicking with the reply (and server log) if it is not JSON.
fn json_body(reply: &CurlReply, server: &ServerGuard) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| {
        panic!(
            "body of / is not JSON ({e}): {reply:?}\n--- server log ---\n{}",
            server.log()
        )
    })
}

/// Asserts a successful mTLS `curl` of `/` and returns its JSON body.
fn assert_curl_root_ok(
    pki: &Pki,
    server: &ServerGuard,
    version: HttpVersion,
) -> (CurlReply, Value) {
    let reply = curl(pki, server.port, "/", version, true);
    assert!(
        reply.ran.success() && reply.code == 200,
        "curl {version:?} with a client certificate failed: {reply:?}\n--- server log ---\n{}",
        server.log()
    );
    let expected_version = match version {
        HttpVersion::Http11 => "1.1",
        HttpVersion::Http2 => "2",
    };
    assert_eq!(
        reply.http_version, expected_version,
        "curl {version:?} negotiated another HTTP version: {reply:?}"
    );
    let body = json_body(&reply, server);
    (reply, body)
}

#[test]
fn curl_with_client_cert_succeeds() {
    let pki = Pki::new();
    let server = start_mtls_server(&pki);

    for version in http_versions() {
        let (reply, body) = assert_curl_root_ok(&pki, &server, version);

        let client = &body["client"];
        let subject = client["subject"]
            .as_str()
            .unwrap_or_else(|| panic!("no client.subject in {body} ({reply:?})"));
        assert!(
            subject.contains(&format!("CN={CLIENT_CN}")),
            "client.subject {subject:?} does not name the client certificate (CN={CLIENT_CN})"
        );
        assert_eq!(
            client["fingerprint"].as_str(),
            Some(pki.client.fingerprint_sha256_hex().as_str()),
            "client.fingerprint is not the client certificate's: {body}"
        );
        let client_serial = client["serial"]
            .as_str()
            .unwrap_or_else(|| panic!("no client.serial in {body}"));
        assert_eq!(
            normalise_serial_hex(client_serial),
            leaf_serial_hex(&pki.client),
            "client.serial is not the client certificate's: {body}"
        );

        let served = &body["server"];
        assert_eq!(
            served["fingerprint"].as_str(),
            Some(pki.server.fingerprint_sha256_hex().as_str()),
            "server.fingerprint is not the server certificate's: {body}"
        );
        assert!(
            served["generation"].is_u64(),
            "server.generation is not a number: {body}"
        );
        assert!(
            served["subject"]
                .as_str()
                .is_some_and(|s| s.contains("CN=localhost")),
            "server.subject does not name the server certificate: {body}"
        );

        let health = curl(&pki, server.port, "/healthz", version, true);
        assert!(
            health.ran.success() && health.code == 200,
            "curl {version:?} /healthz failed: {health:?}\n--- server log ---\n{}",
            server.log()
        );
        assert_eq!(
            health.body.trim(),
            "ok",
            "unexpected /healthz body: {health:?}"
        );
    }
}

#[test]
fn client_without_certificate_is_refused() {
    let pki = Pki::new();
    let server = start_mtls_server(&pki);

    // curl without --cert: with TLS 1.3 the server's refusal (certificate_required) arrives after
    // curl's side of the handshake, so what must fail is the request.
    for version in http_versions() {
        let reply = curl(&pki, server.port, "/", version, false);
        assert!(
            reply.ran.status.is_some(),
            "curl {version:?} without a certificate was not answered at all (killed after \
             {PEER_TIMEOUT:?}): {reply:?}"
        );
        assert!(
            !reply.ran.success(),
            "curl {version:?} without a client certificate succeeded: {reply:?}"
        );
        assert_eq!(
            reply.code, 0,
            "curl {version:?} without a certificate got an HTTP response: {reply:?}"
        );
    }

    // openssl s_client without a certificate, sending a request: no HTTP answer, and the server
    // closes the connection (s_client exits by itself even with -ign_eof).
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let refused = s_client(&pki, server.port, false, request, true);
    assert!(
        refused.status.is_some(),
        "s_client without a certificate: the server never closed the connection: {refused:?}"
    );
    assert!(
        !refused.stdout.contains("HTTP/"),
        "s_client without a certificate got an HTTP answer: {refused:?}"
    );

    // Control: the same request with the client certificate is answered, so the refusal above is
    // about the missing certificate, not about the way s_client is driven.
    let accepted = s_client(&pki, server.port, true, request, true);
    assert!(
        accepted.stdout.contains("HTTP/1.1 200"),
        "s_client with the client certificate got no 200: {accepted:?}\n--- server log ---\n{}",
        server.log()
    );
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let server = start_mtls_server(&pki);

    let stranger_ca = Ca::new_root("some other CA", KeyType::EcP256);
    let stranger = stranger_ca.issue(&LeafSpec::client(CLIENT_CN));
    let (crt, key) = stranger.write_pair(pki.dir.path(), "stranger.crt", "stranger.key");

    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "20", "--http1.1"])
        .arg("--resolve")
        .arg(format!("localhost:{}:127.0.0.1", server.port))
        .arg("--cacert")
        .arg(&pki.ca_pem)
        .arg("--cert")
        .arg(&crt)
        .arg("--key")
        .arg(&key)
        .arg(format!("https://localhost:{}/", server.port));
    let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
    assert!(
        ran.status.is_some() && !ran.success(),
        "curl with a certificate from an untrusted CA was not refused: {ran:?}"
    );
    assert!(
        !ran.stdout.contains("client"),
        "curl with an untrusted certificate got a body: {ran:?}"
    );
}

#[test]
fn rotation_seen_by_openssl_without_restart() {
    let pki = Pki::new();
    let first = &pki.server;
    let identity = pki.write_bundle("identity.pem", first);
    let args: Vec<OsString> = vec![
        "--identity".into(),
        identity.clone().into(),
        "--client-ca".into(),
        pki.ca_pem.clone().into(),
    ];
    let mut server = start_server(pki.dir.path(), &args);
    server.wait_ready();
    let pid = server.pid();

    let before = served_serial(&pki, server.port).unwrap_or_else(|e| {
        panic!("{e}\n--- server log ---\n{}", server.log());
    });
    assert_eq!(
        before,
        leaf_serial_hex(first),
        "the server does not present the initial leaf"
    );
    let (_, body) = assert_curl_root_ok(&pki, &server, HttpVersion::Http11);
    let generation_before = body["server"]["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no server.generation in {body}"));

    let second = pki.ca.issue(&LeafSpec::server("localhost"));
    let expected = leaf_serial_hex(&second);
    assert_ne!(
        expected, before,
        "the test PKI issued the same serial twice"
    );
    hitless_test_pki::write_atomic(
        &identity,
        second
            .bundle_pem(hitless_test_pki::KeyFormat::Pkcs8)
            .as_bytes(),
    );

    let timeout = Duration::from_secs(20);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = server.try_wait() {
            panic!(
                "the server exited during the rotation: {status}\n--- server log ---\n{}",
                server.log()
            );
        }
        let last = served_serial(&pki, server.port);
        if last.as_deref() == Ok(expected.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {timeout:?} openssl still does not see the new serial {expected}; last: \
             {last:?}\n--- server log ---\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    assert_eq!(server.pid(), pid, "the server process changed");
    assert!(
        server.try_wait().is_none() && pid_alive(pid),
        "the server is not running after the rotation\n--- server log ---\n{}",
        server.log()
    );
    let (_, body) = assert_curl_root_ok(&pki, &server, HttpVersion::Http11);
    assert_eq!(
        body["server"]["fingerprint"].as_str(),
        Some(second.fingerprint_sha256_hex().as_str()),
        "/ does not report the new leaf: {body}"
    );
    let generation_after = body["server"]["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("no server.generation in {body}"));
    assert!(
        generation_after > generation_before,
        "generation did not grow across the rotation: {generation_before} -> {generation_after}"
    );
}

#[test]
fn missing_identity_at_start_exits_nonzero_naming_the_file() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let args: Vec<OsString> = vec![
        "--cert".into(),
        "/nonexistent/x.crt".into(),
        "--key".into(),
        "/nonexistent/x.key".into(),
    ];
    let mut server = start_server(dir.path(), &args);
    let timeout = Duration::from_secs(30);
    let status = server
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("still running after {timeout:?} with a missing identity"));
    assert!(
        !status.success(),
        "exited with {status} on a missing identity"
    );
    let log = server.log();
    assert!(
        log.contains("/nonexistent/x.crt"),
        "stderr does not name the missing file: {log}"
    );

    // An expired certificate is refused at start too, saying so.
    let pki = Pki::new();
    let now = OffsetDateTime::now_utc();
    let expired = pki.ca.issue(&LeafSpec::server("localhost").valid(
        now - time::Duration::hours(2),
        now - time::Duration::hours(1),
    ));
    let (crt, key) = expired.write_pair(pki.dir.path(), "expired.crt", "expired.key");
    let args: Vec<OsString> = vec![
        "--cert".into(),
        crt.clone().into(),
        "--key".into(),
        key.into(),
        "--client-ca".into(),
        pki.ca_pem.clone().into(),
    ];
    let mut server = start_server(pki.dir.path(), &args);
    let status = server
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("still running after {timeout:?} with an expired certificate"));
    assert!(
        !status.success(),
        "exited with {status} on an expired certificate"
    );
    let log = server.log();
    assert!(
        log.to_lowercase().contains("expired"),
        "stderr does not say the certificate expired: {log}"
    );
    assert!(
        log.contains(&crt.display().to_string()),
        "stderr does not name the expired certificate file: {log}"
    );
}

#[test]
fn sigterm_exits_zero() {
    let pki = Pki::new();
    let mut server = start_mtls_server(&pki);
    // Serve one request first, so shutdown happens after real traffic.
    assert_curl_root_ok(&pki, &server, HttpVersion::Http11);

    send_signal(server.pid(), "TERM");
    let timeout = Duration::from_secs(15);
    let status = server.wait_exit(timeout).unwrap_or_else(|| {
        panic!(
            "still running {timeout:?} after SIGTERM\n--- server log ---\n{}",
            server.log()
        )
    });
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}\n--- server log ---\n{}",
        server.log()
    );
}

/// Microseconds since the Unix epoch, the clock of `strace -ttt`.
fn epoch_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros()
}

/// One line of `strace -f -ttt -o FILE`: `PID SECONDS.MICROS rest`.
struct TraceLine<'a> {
    micros: u128,
    rest: &'a str,
    line: &'a str,
}

fn parse_trace_line(line: &str) -> Option<TraceLine<'_>> {
    // "PID  SECS.MICROS syscall(...)": strace pads the PID column, so split on runs of spaces.
    let (_pid, after) = line.trim_start().split_once(' ')?;
    let (stamp, rest) = after.trim_start().split_once(' ')?;
    let (secs, frac) = stamp.split_once('.')?;
    let secs: u128 = secs.parse().ok()?;
    let frac: u128 = frac.parse().ok()?;
    Some(TraceLine {
        micros: secs * 1_000_000 + frac,
        rest,
        line,
    })
}

/// The parent PID of `pid` from /proc (None if it is gone).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// `hitless serve` running under strace: kills the server (the tracee) first, then strace.
struct Traced {
    strace: ServerGuard,
    server_pid: Option<u32>,
}

impl Drop for Traced {
    fn drop(&mut self) {
        // Kill the server only while it is still strace's child: never a recycled PID.
        if let Some(pid) = self.server_pid {
            if parent_pid(pid) == Some(self.strace.pid()) {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
        // Then `self.strace` drops: strace is killed (if still running) and reaped.
    }
}

#[test]
fn handshake_path_touches_no_file() {
    match Command::new("strace").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            panic!("this test needs a working strace; `strace -V` failed: {out:?} (install strace)")
        }
        Err(e) => panic!("this test needs strace on PATH (apt-get install strace): {e}"),
    }

    let pki = Pki::new();
    let trace_path = pki.path("strace.txt");
    let port = free_port();
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-ttt", "-e", "trace=%file", "-o"])
        .arg(&trace_path)
        .arg(hitless_bin())
        .args(serve_args(port))
        .args(mtls_pair_args(&pki));
    let mut traced = Traced {
        strace: ServerGuard::spawn(cmd, port, pki.path("server.log")),
        server_pid: None,
    };
    traced.strace.wait_ready();

    // The server is strace's only child (its threads are not processes).
    let mut pgrep = Command::new("pgrep");
    pgrep.arg("-P").arg(traced.strace.pid().to_string());
    let children = run_bounded(pgrep, b"", PEER_TIMEOUT);
    let server_pid: u32 = match children
        .stdout
        .split_whitespace()
        .map(|p| p.parse().expect("pgrep prints PIDs"))
        .collect::<Vec<u32>>()[..]
    {
        [pid] => pid,
        ref other => panic!("expected exactly one child of strace, found {other:?}"),
    };
    traced.server_pid = Some(server_pid);
    let exe = std::fs::read_link(format!("/proc/{server_pid}/exe")).expect("read server exe");
    assert_eq!(
        exe,
        Path::new(hitless_bin()),
        "strace's child is not hitless"
    );

    // Window of interest: from here to after the last request. strace timestamps each syscall
    // when it happens, so whatever stdio buffering strace does, lines are placed by time.
    let start = epoch_micros();
    let versions = http_versions();
    for i in 0..20 {
        let version = versions[i % versions.len()];
        let reply = curl(&pki, port, "/", version, true);
        assert!(
            reply.ran.success() && reply.code == 200,
            "request {i} ({version:?}) under strace failed: {reply:?}\n--- server log ---\n{}",
            traced.strace.log()
        );
        assert!(
            reply.body.contains(&pki.client.fingerprint_sha256_hex()),
            "request {i}: the server did not see the client certificate: {reply:?}"
        );
    }
    // Let the server finish tearing down the last connection (curl may exit before the server
    // has seen the close); this only widens the window that must stay free of file syscalls.
    std::thread::sleep(Duration::from_secs(1));
    let end = epoch_micros();

    // Stop the server and let strace write everything out and exit.
    send_signal(server_pid, "TERM");
    let timeout = Duration::from_secs(30);
    let status = traced.strace.wait_exit(timeout).unwrap_or_else(|| {
        panic!(
            "strace/hitless still running {timeout:?} after SIGTERM\n--- server log ---\n{}",
            traced.strace.log()
        )
    });
    assert!(
        status.success(),
        "hitless under strace exited with {status} after SIGTERM\n--- server log ---\n{}",
        traced.strace.log()
    );

    let trace = std::fs::read_to_string(&trace_path).expect("read strace output");
    let all: Vec<TraceLine<'_>> = trace.lines().filter_map(parse_trace_line).collect();
    assert!(
        all.iter().any(|l| l.rest.contains(&*pki.server_key.to_string_lossy())),
        "the trace never shows the key being read at start: is strace tracing file syscalls?\n{trace}"
    );

    // The one expected exception: aws-lc (the crypto provider behind rustls) checks once per
    // process, on the first use of its RNG, whether the VM exposes a generation counter for
    // snapshot/clone detection (crypto/ube/vm_ube_detect.c, `do_sysgenid_init` under
    // `CRYPTO_once`): `stat("/dev/sysgenid")`, plus an `open` if it exists. The first
    // handshake is the first RNG use, so it lands in the window. It is not an identity file and it
    // is not per handshake: allow exactly that path, and at most twice in the whole trace.
    const SYSGENID: &str = "\"/dev/sysgenid\"";
    let sysgenid = all.iter().filter(|l| l.rest.contains(SYSGENID)).count();
    assert!(
        sysgenid <= 2,
        "aws-lc's one-time /dev/sysgenid check ran {sysgenid} times (expected at most stat + \
         open, once per process):\n{trace}"
    );
    let during: Vec<&str> = all
        .iter()
        .filter(|l| l.micros >= start && l.micros <= end)
        // Signal deliveries (`--- SIG... ---`) and exits (`+++ ... +++`) are not syscalls.
        .filter(|l| !l.rest.starts_with("---") && !l.rest.starts_with("+++"))
        .filter(|l| !l.rest.contains(SYSGENID))
        .map(|l| l.line)
        .collect();
    assert!(
        during.is_empty(),
        "{} file-system syscalls while serving 20 mTLS handshakes and requests (expected none):\n{}",
        during.len(),
        during.join("\n")
    );
}
