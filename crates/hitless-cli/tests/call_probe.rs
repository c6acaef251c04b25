//! Integration tests of `hitless call` and `hitless probe`: the real binary against `hitless
//! serve` and `openssl s_server` over loopback, while the test rotates the client identity on
//! disk. PKI is generated at test time.
//!
//! Every wait is bounded and watches an observable event (a port accepting, a log line, a
//! process exiting); nothing asserts that something was fast.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, LeafSpec};
use serde_json::Value;

/// How long a `call` or `probe` run may take beyond what it was asked to do.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two rotations of the client identity.
const ROTATION_SPACING: Duration = Duration::from_millis(400);

/// A `hitless call`/`probe` child with stdout and stderr in files; killed and reaped on drop.
struct Running {
    child: Child,
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Running {
    /// Starts `hitless <args>`, its output in `dir/<name>.out` and `dir/<name>.err`.
    fn spawn(dir: &Path, name: &str, args: &[OsString]) -> Running {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let child = Command::new(hitless_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout file"))
            .stderr(File::create(&stderr).expect("create stderr file"))
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn hitless {args:?}: {e}"));
        Running {
            child,
            name: name.to_string(),
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls until stderr contains `needle`; panics if the child exits first or after
    /// `timeout`.
    fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "{} exited ({status}) before logging {needle:?}\n--- stderr ---\n{}",
                    self.name,
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {timeout:?}\n--- stderr ---\n{}",
                self.name,
                self.stderr()
            );
            thread::sleep(POLL);
        }
    }

    /// Waits for the child to exit; panics with its output after `timeout`.
    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} still running after {timeout:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.name,
                self.stdout(),
                self.stderr()
            );
            thread::sleep(POLL);
        }
    }

    /// Waits for the exit and parses stdout as JSON.
    fn finish_json(&mut self, timeout: Duration) -> (ExitStatus, Value) {
        let status = self.wait(timeout);
        let out = self.stdout();
        let json = serde_json::from_str(&out).unwrap_or_else(|e| {
            panic!(
                "{} stdout is not JSON ({e}); exit {status}\n--- stdout ---\n{out}\n--- stderr ---\n{}",
                self.name,
                self.stderr()
            )
        });
        (status, json)
    }

    /// Everything it printed, for failure messages.
    fn output(&self) -> String {
        format!(
            "--- {} stdout ---\n{}\n--- {} stderr ---\n{}",
            self.name,
            self.stdout(),
            self.name,
            self.stderr()
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn os(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    args.iter().map(|a| a.as_ref().to_os_string()).collect()
}

fn url(port: u16) -> String {
    format!("https://127.0.0.1:{port}/")
}

/// Starts `hitless serve` with the server pair of `pki`, trusting `pki`'s CA for clients, plus
/// `extra` flags, and waits until it listens.
fn start_mtls_serve(pki: &Pki, extra: &[OsString]) -> ServerGuard {
    let mut args = os(&[
        &"--cert",
        &pki.server_crt,
        &"--key",
        &pki.server_key,
        &"--client-ca",
        &pki.ca_pem,
    ]);
    args.extend_from_slice(extra);
    let mut server = start_server(pki.dir.path(), &args);
    server.wait_ready();
    server
}

/// How `openssl s_server` treats clients in a test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clients {
    /// No client authentication at all: no CertificateRequest.
    Ignored,
    /// `-Verify 1`: a certificate is required, but without `-verify_return_error` OpenSSL's
    /// demo server only prints verification errors and goes on.
    Required,
    /// `-Verify 1 -verify_return_error`: a certificate chaining to the CA is required (no CRL).
    Verified,
}

/// Starts `openssl s_server -www` on 127.0.0.1 with the server pair of `pki`, treating client
/// certificates (from `pki`'s CA) as `clients` says.
fn start_s_server(pki: &Pki, clients: Clients) -> ServerGuard {
    start_s_server_with(pki, clients, &["-www"])
}

/// [`start_s_server`] with other flags (`-rev`: answers each line reversed, not HTTP;
/// `-tls1_2`, ...).
fn start_s_server_with(pki: &Pki, clients: Clients, extra: &[&str]) -> ServerGuard {
    let port = free_port();
    let mut cmd = Command::new("openssl");
    cmd.arg("s_server")
        .arg("-accept")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-cert")
        .arg(&pki.server_crt)
        .arg("-key")
        .arg(&pki.server_key)
        .args(extra);
    match clients {
        Clients::Ignored => {}
        Clients::Required => {
            cmd.arg("-CAfile").arg(&pki.ca_pem).args(["-Verify", "1"]);
        }
        Clients::Verified => {
            cmd.arg("-CAfile")
                .arg(&pki.ca_pem)
                .args(["-Verify", "1", "-verify_return_error"]);
        }
    }
    let log = pki.dir.path().join(format!("s_server-{port}.log"));
    let mut server = ServerGuard::spawn(cmd, port, log);
    server.wait_ready();
    server
}

/// Issues a new client leaf and writes it, key included, to `bundle` by rename; returns the
/// serial in the form of [`normalise_serial_hex`].
fn rotate_bundle(ca: &Ca, bundle: &Path, n: usize) -> String {
    let leaf = ca.issue(&LeafSpec::client(&format!("rotated client {n}")));
    write_atomic(bundle, leaf.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    leaf_serial_hex(&leaf)
}

/// The `client_serials_seen_by_server` of a `call --json` summary, normalised.
fn serials_seen(summary: &Value) -> BTreeSet<String> {
    summary["client_serials_seen_by_server"]
        .as_array()
        .unwrap_or_else(|| panic!("no client_serials_seen_by_server in {summary}"))
        .iter()
        .map(|s| normalise_serial_hex(s.as_str().expect("serial is a string")))
        .collect()
}

/// Asserts a `call --json` run succeeded with no failure, and returns its `ok` count.
fn assert_clean_call(
    status: ExitStatus,
    summary: &Value,
    call: &Running,
    server: &ServerGuard,
) -> u64 {
    let context = || {
        format!(
            "{summary:#}\n{}\n--- server log ---\n{}",
            call.output(),
            server.log()
        )
    };
    assert!(status.success(), "call exited {status}\n{}", context());
    assert_eq!(
        summary["failed"].as_u64(),
        Some(0),
        "failed requests\n{}",
        context()
    );
    let ok = summary["ok"].as_u64().unwrap_or(0);
    assert!(ok > 0, "no request succeeded\n{}", context());
    assert_eq!(
        summary["handshakes"].as_u64(),
        Some(ok),
        "without --keep-alive every request is a new, accepted handshake\n{}",
        context()
    );
    ok
}

#[test]
fn call_survives_client_rotation() {
    let pki = Pki::new();
    let server = start_mtls_serve(&pki, &[]);
    let bundle = pki.dir.path().join("client-bundle.pem");
    write_atomic(&bundle, pki.client.bundle_pem(KeyFormat::Pkcs8).as_bytes());

    let args = os(&[
        &"call",
        &url(server.port),
        &"--duration",
        &"15s",
        &"--concurrency",
        &"2",
        &"--json",
        &"--identity",
        &bundle,
        &"--ca",
        &pki.ca_pem,
    ]);
    let mut call = Running::spawn(pki.dir.path(), "call", &args);
    call.wait_for_stderr("calling", READY_TIMEOUT);

    let rotated: Vec<String> = (0..22)
        .map(|n| {
            thread::sleep(ROTATION_SPACING);
            rotate_bundle(&pki.ca, &bundle, n)
        })
        .collect();

    let (status, summary) = call.finish_json(RUN_TIMEOUT);
    assert_clean_call(status, &summary, &call, &server);
    let seen = serials_seen(&summary);
    let missing: Vec<&String> = rotated.iter().filter(|s| !seen.contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "the server never saw these rotated client serials: {missing:?}\nseen: {seen:?}\n{}",
        call.output()
    );
    assert!(
        seen.len() >= 20,
        "only {} distinct client serials seen: {seen:?}",
        seen.len()
    );
    assert_eq!(
        summary["server_fingerprints"],
        serde_json::json!([pki.server.fingerprint_sha256_hex()]),
        "the server certificate did not change, the call must have seen only it"
    );
}

#[test]
fn call_against_openssl_s_server_while_identity_rotates() {
    let pki = Pki::new();
    let server = start_s_server(&pki, Clients::Required);
    // The separate-files form: each rotation renames the new key, then the new certificate,
    // into place; in between the pair does not match and the last good one must keep serving.
    let args = os(&[
        &"call",
        &url(server.port),
        &"--server-name",
        &"localhost",
        &"--duration",
        &"8s",
        &"--json",
        &"--cert",
        &pki.client_crt,
        &"--key",
        &pki.client_key,
        &"--ca",
        &pki.ca_pem,
    ]);
    let mut call = Running::spawn(pki.dir.path(), "call", &args);
    call.wait_for_stderr("calling", READY_TIMEOUT);

    for n in 0..10 {
        thread::sleep(ROTATION_SPACING);
        let leaf = pki
            .ca
            .issue(&LeafSpec::client(&format!("rotated client {n}")));
        write_atomic(&pki.client_key, leaf.key_pem(KeyFormat::Pkcs8).as_bytes());
        write_atomic(&pki.client_crt, leaf.chain_pem.as_bytes());
    }

    let (status, summary) = call.finish_json(RUN_TIMEOUT);
    assert_clean_call(status, &summary, &call, &server);
    assert!(
        summary["client_identity_generation"].as_u64() > Some(1),
        "the client identity was never reloaded: {summary:#}\n{}",
        call.output()
    );
}

#[test]
fn call_reports_refusals_by_reason() {
    let pki = Pki::new();
    let server = start_mtls_serve(&pki, &[]);
    // No client identity: the server must refuse every request.
    let args = os(&[
        &"call",
        &url(server.port),
        &"--count",
        &"3",
        &"--json",
        &"--ca",
        &pki.ca_pem,
    ]);
    let mut call = Running::spawn(pki.dir.path(), "call", &args);
    let (status, summary) = call.finish_json(RUN_TIMEOUT);
    assert!(
        !status.success(),
        "call exited 0 with every request refused\n{summary:#}"
    );
    assert_eq!(summary["ok"].as_u64(), Some(0), "{summary:#}");
    assert_eq!(summary["failed"].as_u64(), Some(3), "{summary:#}");
    let failures = summary["failures"].as_object().expect("failures object");
    assert!(
        failures.keys().all(|k| k.starts_with("handshake: ")),
        "refusals must be reported as handshake failures: {summary:#}\n{}",
        call.output()
    );
}

/// The attack rows of a probe report, by name: (expected, result).
fn probe_rows(report: &Value) -> Vec<(String, String, String)> {
    report["attacks"]
        .as_array()
        .unwrap_or_else(|| panic!("no attacks in {report}"))
        .iter()
        .map(|r| {
            (
                r["attack"].as_str().unwrap_or_default().to_string(),
                r["expected"].as_str().unwrap_or_default().to_string(),
                r["result"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Asserts every named row is present with the result `result`.
fn assert_rows(report: &Value, names: &[&str], result: &str, context: &str) {
    let rows = probe_rows(report);
    for name in names {
        let row = rows
            .iter()
            .find(|(attack, _, _)| attack == name)
            .unwrap_or_else(|| {
                panic!("no row {name:?} in the probe report\n{report:#}\n{context}")
            });
        assert_eq!(row.2, result, "row {name:?}: {report:#}\n{context}");
    }
}

const ATTACKS_WITHOUT_CA: &[&str] = &["no client certificate", "self-signed", "unknown CA"];
const ATTACKS_WITH_CA: &[&str] = &[
    "impostor CA",
    "expired",
    "not yet valid",
    "no clientAuth EKU",
    "CA:TRUE leaf",
    "non-CA intermediate",
];
/// The attacks that need `--crl-out` (and the CA).
const REVOCATION_ATTACKS: &[&str] = &[
    "revoked",
    "resumed after revocation (TLS 1.3)",
    "resumed after revocation (TLS 1.2)",
    "revoked intermediate",
];

/// Asserts that every row the probe counts as refused carries its evidence: the server asked
/// for a client certificate on that connection (or the session was resumed, where no
/// certificate is exchanged).
fn assert_refusals_have_evidence(report: &Value, context: &str) {
    for row in report["attacks"].as_array().expect("attacks") {
        if row["result"] == "refused" {
            assert!(
                row["certificate_requested"] == Value::Bool(true)
                    || row["resumed"] == Value::Bool(true),
                "a refusal without a CertificateRequest: {row:#}\n{context}"
            );
        }
    }
}

/// Runs `hitless probe <url> --ca CA --json <extra>` to its end.
fn run_probe(pki: &Pki, port: u16, extra: &[OsString]) -> (ExitStatus, Value, Running) {
    let mut args = os(&[&"probe", &url(port), &"--ca", &pki.ca_pem, &"--json"]);
    args.extend_from_slice(extra);
    let mut probe = Running::spawn(pki.dir.path(), "probe", &args);
    let (status, report) = probe.finish_json(RUN_TIMEOUT);
    (status, report, probe)
}

/// The flags giving the probe everything: the CA and its key, the CRL the server reads, and
/// the good client identity.
fn full_probe_flags(pki: &Pki, crl: &Path) -> Vec<OsString> {
    let ca_key = pki.dir.path().join("ca.key");
    std::fs::write(&ca_key, pki.ca.key_pem()).expect("write ca.key");
    os(&[
        &"--ca-cert",
        &pki.ca_pem,
        &"--ca-key",
        &ca_key,
        &"--crl-out",
        &crl,
        &"--crl-reload-wait",
        &"300ms",
        &"--cert",
        &pki.client_crt,
        &"--key",
        &pki.client_key,
    ])
}

#[test]
fn probe_refuses_everything_against_hitless_serve() {
    let pki = Pki::new();
    let crl = pki.dir.path().join("crl.pem");
    write_atomic(
        &crl,
        pki.ca.crl(&[], time::Duration::hours(1)).pem.as_bytes(),
    );
    let server = start_mtls_serve(&pki, &os(&[&"--crl", &crl]));

    let (status, report, probe) = run_probe(&pki, server.port, &full_probe_flags(&pki, &crl));
    let context = format!("{}\n--- server log ---\n{}", probe.output(), server.log());
    assert!(
        status.success(),
        "probe exited {status}: {report:#}\n{context}"
    );
    assert_eq!(report["passed"], Value::Bool(true), "{report:#}\n{context}");
    assert_rows(&report, ATTACKS_WITHOUT_CA, "refused", &context);
    assert_rows(&report, ATTACKS_WITH_CA, "refused", &context);
    assert_rows(&report, REVOCATION_ATTACKS, "refused", &context);
    assert_rows(&report, &["stolen certificate"], "refused", &context);
    assert_rows(
        &report,
        &["control", "fresh from CA", "fresh intermediate"],
        "accepted",
        &context,
    );
    assert_refusals_have_evidence(&report, &context);
    assert!(
        probe_rows(&report)
            .iter()
            .all(|(_, _, result)| result != "skipped"),
        "nothing may be skipped with every flag given: {report:#}"
    );
    // The CRL went through the exclusive-create writer: a regular file, mode 0644, and no
    // temporary file left beside it.
    let meta = std::fs::symlink_metadata(&crl).expect("stat crl.pem");
    assert!(meta.file_type().is_file());
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o644
    );
    let leftovers: Vec<String> = std::fs::read_dir(pki.dir.path())
        .expect("list the directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".crl.pem"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn probe_with_an_intermediate_ca_against_hitless_serve() {
    // The server trusts the root; the probe signs with the intermediate and must send it.
    let pki = Pki::new();
    let dir = pki.dir.path();
    let intermediate = pki
        .ca
        .new_intermediate("hitless probe test intermediate", KeyType::EcP256);
    let int_pem = dir.join("intermediate.pem");
    let int_key = dir.join("intermediate.key");
    std::fs::write(&int_pem, intermediate.cert_pem()).expect("write intermediate.pem");
    std::fs::write(&int_key, intermediate.key_pem()).expect("write intermediate.key");
    let server = start_mtls_serve(&pki, &[]);

    let args = os(&[
        &"probe",
        &url(server.port),
        &"--ca",
        &pki.ca_pem,
        &"--ca-cert",
        &int_pem,
        &"--ca-key",
        &int_key,
        &"--json",
    ]);
    let mut probe = Running::spawn(dir, "probe", &args);
    let (status, report) = probe.finish_json(RUN_TIMEOUT);
    let context = format!("{}\n--- server log ---\n{}", probe.output(), server.log());
    assert!(
        status.success(),
        "probe exited {status}: {report:#}\n{context}"
    );
    assert_rows(&report, ATTACKS_WITHOUT_CA, "refused", &context);
    assert_rows(&report, ATTACKS_WITH_CA, "refused", &context);
    assert_rows(
        &report,
        &["fresh from CA", "fresh intermediate"],
        "accepted",
        &context,
    );
    assert_refusals_have_evidence(&report, &context);
    // Without --crl-out and --cert, those rows say why they were not tried.
    assert_rows(&report, REVOCATION_ATTACKS, "skipped", &context);
    assert_rows(
        &report,
        &["control", "stolen certificate"],
        "skipped",
        &context,
    );
}

#[test]
fn probe_fails_against_a_server_that_does_not_verify_clients() {
    let pki = Pki::new();
    let server = start_s_server(&pki, Clients::Ignored);
    let args = os(&[&"probe", &url(server.port), &"--ca", &pki.ca_pem, &"--json"]);
    let mut probe = Running::spawn(pki.dir.path(), "probe", &args);
    let (status, report) = probe.finish_json(RUN_TIMEOUT);
    let context = format!("{}\n--- server log ---\n{}", probe.output(), server.log());
    assert!(
        !status.success(),
        "probe exited 0 against a server that lets anyone in\n{context}"
    );
    assert_eq!(report["passed"], Value::Bool(false), "{report:#}");
    assert_rows(&report, ATTACKS_WITHOUT_CA, "accepted", &context);
    let stderr = probe.stderr();
    for attack in ATTACKS_WITHOUT_CA {
        assert!(
            stderr.contains(attack),
            "stderr does not name {attack:?} among the attacks that got in\n{context}"
        );
    }
    assert!(stderr.contains("got in"), "{context}");
}

/// A server that never asks for a client certificate and answers every request with something
/// (here `s_server -rev`, which answers lines reversed, not HTTP): each attack ends without an
/// HTTP response, which the probe used to count as "refused", passing a server that
/// authenticates nobody. Without a CertificateRequest, nothing is evidence.
fn probe_is_inconclusive_against_a_server_that_asks_for_no_certificate(version: &str) {
    let pki = Pki::new();
    let server = start_s_server_with(&pki, Clients::Ignored, &["-rev", version]);
    let crl = pki.dir.path().join("crl.pem");
    // With only --ca (the report's case: every attack "refused", exit 0), then with every flag.
    for (flags, attacks) in [
        (Vec::new(), ATTACKS_WITHOUT_CA),
        (full_probe_flags(&pki, &crl), ATTACKS_WITH_CA),
    ] {
        let (status, report, probe) = run_probe(&pki, server.port, &flags);
        let context = format!("{}\n--- server log ---\n{}", probe.output(), server.log());
        assert!(
            !status.success(),
            "probe exited 0 against a server that authenticates nobody ({version})\n{report:#}\n{context}"
        );
        assert_eq!(report["passed"], Value::Bool(false), "{report:#}");
        for row in report["attacks"].as_array().expect("attacks") {
            assert_ne!(row["result"], "refused", "{row:#}\n{context}");
            assert_ne!(
                row["certificate_requested"],
                Value::Bool(true),
                "s_server without -Verify sent a CertificateRequest? {row:#}"
            );
        }
        assert_rows(&report, ATTACKS_WITHOUT_CA, "inconclusive", &context);
        assert_rows(&report, attacks, "inconclusive", &context);
        let stderr = probe.stderr();
        assert!(
            stderr.contains("inconclusive")
                && stderr.contains("never asked for a client certificate"),
            "stderr must say why the probe failed\n{context}"
        );
    }
}

#[test]
fn probe_is_inconclusive_against_a_server_that_asks_for_no_certificate_tls12() {
    probe_is_inconclusive_against_a_server_that_asks_for_no_certificate("-tls1_2");
}

#[test]
fn probe_is_inconclusive_against_a_server_that_asks_for_no_certificate_tls13() {
    probe_is_inconclusive_against_a_server_that_asks_for_no_certificate("-tls1_3");
}

/// `openssl s_server -Verify 1 -verify_return_error`: it verifies the chain, the validity and
/// the extended key usage, but reads no CRL and accepts a client leaf marked CA:TRUE. Plain
/// `-Verify 1` (without `-verify_return_error`) only prints verification errors and lets every
/// certificate in. The probe must say exactly that.
#[test]
fn probe_against_openssl_s_server_verifying_clients() {
    let pki = Pki::new();
    let crl = pki.dir.path().join("crl.pem");
    let server = start_s_server(&pki, Clients::Verified);
    let (status, report, probe) = run_probe(&pki, server.port, &full_probe_flags(&pki, &crl));
    let context = format!("{}\n--- server log ---\n{}", probe.output(), server.log());
    assert!(!status.success(), "{report:#}\n{context}");
    assert_rows(&report, ATTACKS_WITHOUT_CA, "refused", &context);
    assert_rows(
        &report,
        &[
            "impostor CA",
            "expired",
            "not yet valid",
            "no clientAuth EKU",
            "non-CA intermediate",
            "stolen certificate",
        ],
        "refused",
        &context,
    );
    assert_rows(&report, &["CA:TRUE leaf"], "accepted", &context);
    // No CRL: every revocation attack gets in, the resumed sessions by resumption.
    assert_rows(&report, REVOCATION_ATTACKS, "accepted", &context);
    assert_rows(
        &report,
        &["control", "fresh from CA", "fresh intermediate"],
        "accepted",
        &context,
    );
    assert_refusals_have_evidence(&report, &context);
    let stderr = probe.stderr();
    assert!(
        stderr.contains("attack(s) got in") && stderr.contains("resumed after revocation"),
        "{context}"
    );
    drop(server);

    let server = start_s_server(&pki, Clients::Required);
    let crl = pki.dir.path().join("crl-2.pem");
    let (status, report, probe) = run_probe(&pki, server.port, &full_probe_flags(&pki, &crl));
    let context = format!("{}\n--- server log ---\n{}", probe.output(), server.log());
    assert!(!status.success(), "{report:#}\n{context}");
    // A certificate is required and its signature checked, nothing else.
    assert_rows(
        &report,
        &["no client certificate", "stolen certificate"],
        "refused",
        &context,
    );
    assert_rows(
        &report,
        &["self-signed", "unknown CA"],
        "accepted",
        &context,
    );
    assert_rows(&report, ATTACKS_WITH_CA, "accepted", &context);
    assert_refusals_have_evidence(&report, &context);
}
