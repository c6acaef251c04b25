//! Integration tests of `hitless inspect`: the real binary on credential files made at test
//! time (the PKCS#12 keystores by `openssl pkcs12 -export`, as operators make them), one test
//! per exit code and failure class, plus the shape of `--json`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use hitless::{Identity, IdentitySource, Role};
use hitless_test_pki::rcgen::IsCa;
use hitless_test_pki::{Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use serde_json::Value;
use time::{Duration, OffsetDateTime};

/// Runs `hitless inspect ARGS...`.
fn inspect(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hitless"));
    cmd.arg("inspect");
    for a in args {
        cmd.arg(a);
    }
    cmd.output().expect("run hitless inspect")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code (not a signal)")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn root() -> Ca {
    Ca::new_root("Inspect Test Root", KeyType::EcP256)
}

/// A server leaf for `localhost` valid from `from` to `to` (relative to now).
fn leaf(ca: &Ca, from: Duration, to: Duration) -> Leaf {
    let now = OffsetDateTime::now_utc();
    ca.issue(&LeafSpec::server("localhost").valid(now + from, now + to))
}

/// A leaf valid for 30 more days: nothing to warn about with the default `--warn 7d`.
fn healthy_leaf(ca: &Ca) -> Leaf {
    leaf(ca, Duration::hours(-1), Duration::days(30))
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path
}

fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `openssl pkcs12 -export` of `leaf` (key, leaf, issuing CA) protected by `password`.
fn export_pkcs12(dir: &Path, leaf: &Leaf, password: &str) -> PathBuf {
    let (cert, key) = leaf.write_pair(dir, "p12-in.crt", "p12-in.key");
    let ca = write(dir, "p12-ca.crt", &leaf.issuing_ca_pem);
    let out = dir.join("identity.p12");
    let status = Command::new("openssl")
        .args(["pkcs12", "-export", "-in"])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-certfile")
        .arg(&ca)
        .arg("-out")
        .arg(&out)
        .arg("-passout")
        .arg(format!("pass:{password}"))
        .status()
        .expect("run openssl pkcs12");
    assert!(status.success(), "openssl pkcs12 -export failed");
    out
}

#[test]
fn valid_pair_exits_0_and_shows_the_facts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let leaf = healthy_leaf(&ca);
    let (cert, key) = leaf.write_pair(dir.path(), "a.crt", "a.key");

    let out = inspect(&[&cert, &"--key", &key]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{}", show(&out));
    for fact in [
        "certificate 1 (leaf)",
        "CN=localhost",
        "CN=Inspect Test Root",
        "DNS:localhost, IP:127.0.0.1",
        "ECDSA P-256",
        "matches certificate 1",
        "=> valid, expires in",
    ] {
        assert!(text.contains(fact), "missing {fact:?}:\n{}", show(&out));
    }
    assert!(
        text.contains(&leaf.fingerprint_sha256_hex()),
        "{}",
        show(&out)
    );
}

#[test]
fn valid_bundle_exits_0_and_notes_the_included_root() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let leaf = healthy_leaf(&ca);
    // Leaf, then the root that issued it (an agent's issuing_ca), then the key.
    let bundle = write(dir.path(), "identity.pem", leaf.bundle_pem(KeyFormat::Sec1));

    let out = inspect(&[&bundle]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        text.contains("2 certificates, 1 private key"),
        "{}",
        show(&out)
    );
    assert!(text.contains("matches certificate 1"), "{}", show(&out));
    assert!(
        text.contains(
            "certificate 2 (O=hitless test PKI, CN=Inspect Test Root) is a self-signed root"
        ),
        "{}",
        show(&out)
    );
}

#[test]
fn chain_order_problems_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let intermediate = ca.new_intermediate("Inspect Intermediate", KeyType::EcP256);
    let leaf = healthy_leaf(&intermediate);
    // Intermediate first, then the leaf: the leaf is not first and nothing issues certificate 1
    // from where it stands.
    let file = write(
        dir.path(),
        "reversed.pem",
        format!("{}{}", intermediate.cert_pem(), leaf.cert_pem),
    );
    let key = write(dir.path(), "reversed.key", leaf.key_pem(KeyFormat::Pkcs8));

    let out = inspect(&[&file, &"--key", &key]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "order problems are warnings: {}", show(&out));
    assert!(text.contains("matches certificate 2"), "{}", show(&out));
    assert!(
        text.contains("the leaf (certificate 2, CN=localhost) is not first"),
        "{}",
        show(&out)
    );
    assert!(
        text.contains("certificate 2 (CN=localhost) does not issue certificate 1"),
        "{}",
        show(&out)
    );
}

#[test]
fn garbage_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = write(
        dir.path(),
        "garbage.pem",
        b"\x00\x01this is not a certificate",
    );
    let out = inspect(&[&file]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stdout(&out).contains("not a credential file"),
        "{}",
        show(&out)
    );

    let truncated = write(
        dir.path(),
        "truncated.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    );
    let out = inspect(&[&truncated]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(stdout(&out).contains("invalid PEM"), "{}", show(&out));
}

#[test]
fn mismatched_key_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let (cert, _) = healthy_leaf(&ca).write_pair(dir.path(), "a.crt", "a.key");
    let (_, other_key) = healthy_leaf(&ca).write_pair(dir.path(), "b.crt", "b.key");

    let out = inspect(&[&cert, &"--key", &other_key]);
    let text = stdout(&out);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(text.contains("matches NO certificate"), "{}", show(&out));
    assert!(
        text.contains(&format!(
            "b.key: private key matches no certificate in {}",
            cert.display()
        )),
        "{}",
        show(&out)
    );
}

#[test]
fn expired_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let leaf = leaf(&root(), Duration::days(-2), Duration::days(-1));
    let (cert, key) = leaf.write_pair(dir.path(), "old.crt", "old.key");
    let out = inspect(&[&cert, &"--key", &key]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stdout(&out).contains("certificate 1 (CN=localhost) expired at"),
        "{}",
        show(&out)
    );
}

#[test]
fn not_yet_valid_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let leaf = leaf(&root(), Duration::days(1), Duration::days(30));
    let bundle = write(dir.path(), "future.pem", leaf.bundle_pem(KeyFormat::Pkcs8));
    let out = inspect(&[&bundle]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(stdout(&out).contains("is not valid yet"), "{}", show(&out));
}

#[test]
fn missing_file_exits_1() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("nowhere.pem");
    let out = inspect(&[&missing]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&missing.display().to_string()),
        "{}",
        show(&out)
    );
    assert!(text.contains("cannot read"), "{}", show(&out));
}

#[test]
fn expiring_within_warn_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let leaf = leaf(&root(), Duration::hours(-1), Duration::days(1));
    let (cert, key) = leaf.write_pair(dir.path(), "soon.crt", "soon.key");

    let out = inspect(&[&cert, &"--key", &key, &"--warn", &"7d"]);
    assert_eq!(code(&out), 2, "{}", show(&out));
    assert!(stdout(&out).contains("EXPIRES SOON"), "{}", show(&out));

    // The same certificate is fine when the threshold is shorter than what is left.
    let out = inspect(&[&cert, &"--key", &key, &"--warn", &"12h"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
}

#[test]
fn worst_file_decides_the_exit_code() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let soon = write(
        dir.path(),
        "soon.pem",
        leaf(&ca, Duration::hours(-1), Duration::days(1)).cert_pem,
    );
    let fine = write(dir.path(), "fine.pem", healthy_leaf(&ca).cert_pem);
    let missing = dir.path().join("missing.pem");
    assert_eq!(code(&inspect(&[&fine, &soon])), 2);
    assert_eq!(code(&inspect(&[&soon, &missing, &fine])), 1);
}

#[test]
fn crls_in_pem_and_der() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let revoked = healthy_leaf(&ca);
    let crl = ca.crl(std::slice::from_ref(&revoked.serial), Duration::days(30));
    let pem = write(dir.path(), "ca.crl.pem", &crl.pem);
    let der = write(dir.path(), "ca.crl", &crl.der);
    let out = inspect(&[&pem, &der]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    assert!(text.contains("DER CRL"), "{}", show(&out));
    assert!(text.contains("revoked      1"), "{}", show(&out));

    let stale = ca.crl(&[], Duration::hours(-1));
    let stale = write(dir.path(), "stale.crl", &stale.der);
    let out = inspect(&[&stale]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stdout(&out).contains("past its next update"),
        "{}",
        show(&out)
    );
}

#[test]
fn pkcs12_with_password_file_and_env() {
    if !openssl_available() {
        eprintln!("skipped: no openssl to make a PKCS#12 file");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let leaf = healthy_leaf(&root());
    let p12 = export_pkcs12(dir.path(), &leaf, "s3cret");
    let pass = write(dir.path(), "p12.pass", "s3cret\n");

    let out = inspect(&[&p12, &"--password-file", &pass]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(
        text.contains("PKCS#12, 2 certificates, 1 private key"),
        "{}",
        show(&out)
    );
    assert!(text.contains("matches certificate 1"), "{}", show(&out));
    assert!(
        text.contains(&leaf.fingerprint_sha256_hex()),
        "{}",
        show(&out)
    );

    let out = Command::new(env!("CARGO_BIN_EXE_hitless"))
        .args(["inspect", "--password-env", "HITLESS_INSPECT_TEST_PASSWORD"])
        .arg(&p12)
        .env("HITLESS_INSPECT_TEST_PASSWORD", "s3cret")
        .output()
        .expect("run hitless inspect");
    assert_eq!(code(&out), 0, "{}", show(&out));

    // Recognised by content, whatever its name.
    let renamed = dir.path().join("identity.bin");
    std::fs::copy(&p12, &renamed).expect("copy");
    let out = inspect(&[&renamed, &"--password-file", &pass]);
    assert_eq!(code(&out), 0, "{}", show(&out));

    let wrong = write(dir.path(), "wrong.pass", "guess");
    let out = inspect(&[&p12, &"--password-file", &wrong]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stdout(&out).contains("wrong PKCS#12 password"),
        "{}",
        show(&out)
    );
}

#[test]
fn json_is_an_array_of_one_object_per_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let leaf = healthy_leaf(&ca);
    let bundle = write(
        dir.path(),
        "identity.pem",
        leaf.bundle_pem(KeyFormat::Pkcs8),
    );
    let missing = dir.path().join("missing.pem");

    let out = inspect(&[&"--json", &bundle, &missing]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let files = json.as_array().expect("an array");
    assert_eq!(files.len(), 2);

    let first = &files[0];
    assert_eq!(first["file"], bundle.display().to_string());
    assert_eq!(first["kind"], "pem");
    assert_eq!(first["status"], "valid");
    assert_eq!(first["key_matches"], true);
    assert_eq!(first["errors"], Value::Array(vec![]));
    assert!(first["warnings"].is_array());
    assert!(first["seconds_left"]
        .as_i64()
        .is_some_and(|s| s > 29 * 86400));
    assert!(first["expires"].is_string());
    let certs = first["certificates"].as_array().expect("certificates");
    assert_eq!(certs.len(), 2);
    let c = &certs[0];
    assert_eq!(c["index"], 1);
    assert_eq!(c["role"], "leaf");
    assert_eq!(c["subject"], "CN=localhost");
    assert_eq!(c["dns_names"], serde_json::json!(["localhost"]));
    assert_eq!(c["ip_addresses"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(c["key_type"], "ECDSA P-256");
    assert_eq!(c["is_ca"], false);
    assert_eq!(c["self_signed"], false);
    assert_eq!(c["fingerprint_sha256"], leaf.fingerprint_sha256_hex());
    for field in ["issuer", "serial", "not_before", "not_after"] {
        assert!(c[field].is_string(), "{field} missing: {c}");
    }
    assert!(c["seconds_left"].is_i64());
    assert_eq!(certs[1]["role"], "ca");
    assert_eq!(certs[1]["self_signed"], true);
    let keys = first["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["matches_certificate"], 1);
    assert_eq!(keys[0]["algorithm"], "ECDSA");

    let second = &files[1];
    assert_eq!(second["status"], "invalid");
    assert_eq!(second["kind"], Value::Null);
    assert!(second["errors"][0]
        .as_str()
        .is_some_and(|e| e.contains("cannot read")));
}

#[test]
fn key_with_several_files_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = healthy_leaf(&root()).write_pair(dir.path(), "a.crt", "a.key");
    let out = inspect(&[&cert, &cert, &"--key", &key]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--key"),
        "{}",
        show(&out)
    );
}

#[test]
fn help_documents_the_exit_codes() {
    let out = inspect(&[&"--help"]);
    assert_eq!(code(&out), 0, "{}", show(&out));
    let text = stdout(&out);
    assert!(text.contains("Exit codes:"), "{text}");
    for line in ["  0  ", "  1  ", "  2  "] {
        assert!(text.contains(line), "{line:?} not documented: {text}");
    }
}

/// A bundle file: `certs` (PEM, in this order), then the key of `key_of`.
fn bundle_of(dir: &Path, name: &str, certs: &[&str], key_of: &Leaf) -> PathBuf {
    let mut text = String::new();
    for c in certs {
        text.push_str(c.trim_end());
        text.push('\n');
    }
    text.push_str(&key_of.key_pem(KeyFormat::Pkcs8));
    write(dir, name, text)
}

/// What the library (and so `serve`, or `call` for a client) says of the bundle `path`.
fn library_verdict(path: &Path, role: Role) -> Result<(), String> {
    Identity::load(&IdentitySource::bundle(path), role)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Asserts that `inspect --role ROLE path` refuses the file with the library's reason.
fn assert_same_refusal(path: &Path, role: &str, library: Role, reason: &str) {
    let expected = library_verdict(path, library).expect_err("the library refuses it");
    assert!(expected.contains(reason), "library: {expected}");
    let out = inspect(&[&path, &"--role", &role]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stdout(&out).contains(&format!("error: hitless would refuse it: {expected}")),
        "inspect must give the library's reason {expected:?}:\n{}",
        show(&out)
    );
    let out = inspect(&[&"--json", &path, &"--role", &role]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    let json: Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(json[0]["status"], "invalid");
    assert!(
        json[0]["errors"].as_array().is_some_and(|e| e
            .iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains(&expected)))),
        "{json}"
    );
}

#[test]
fn refused_chains_get_the_library_verdict_and_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let now = OffsetDateTime::now_utc();

    // The intermediate in the file did not sign the leaf (same name, other key).
    let signer = ca.new_intermediate("Inspect Intermediate", KeyType::EcP256);
    let impostor = ca.new_intermediate("Inspect Intermediate", KeyType::EcP256);
    let leaf = healthy_leaf(&signer);
    let wrong = bundle_of(
        dir.path(),
        "wrong-intermediate.pem",
        &[&leaf.cert_pem, &impostor.cert_pem()],
        &leaf,
    );
    for role in [("any", Role::Any), ("server", Role::Server)] {
        assert_same_refusal(
            &wrong,
            role.0,
            role.1,
            "certificate 2 (O=hitless test PKI, CN=Inspect Intermediate) does not sign \
             certificate 1 (CN=localhost)",
        );
    }
    // The same leaf with its real intermediate is fine for both.
    let right = bundle_of(
        dir.path(),
        "right-intermediate.pem",
        &[&leaf.cert_pem, &signer.cert_pem()],
        &leaf,
    );
    library_verdict(&right, Role::Server).expect("the library accepts it");
    let out = inspect(&[&right, &"--role", &"server"]);
    assert_eq!(code(&out), 0, "{}", show(&out));

    // An intermediate that is not a CA.
    let not_ca = ca.new_intermediate_with("Inspect Not A CA", KeyType::EcP256, |p| {
        p.is_ca = IsCa::ExplicitNoCa;
    });
    let leaf = healthy_leaf(&not_ca);
    let path = bundle_of(
        dir.path(),
        "not-ca.pem",
        &[&leaf.cert_pem, &not_ca.cert_pem()],
        &leaf,
    );
    assert_same_refusal(
        &path,
        "server",
        Role::Server,
        "intermediate certificate 2 (O=hitless test PKI, CN=Inspect Not A CA) is not a CA",
    );

    // An expired intermediate (the leaf itself is valid).
    let expired = ca.new_intermediate_with("Inspect Expired", KeyType::EcP256, |p| {
        p.not_before = now - Duration::days(30);
        p.not_after = now - Duration::days(1);
    });
    let leaf = healthy_leaf(&expired);
    let path = bundle_of(
        dir.path(),
        "expired-intermediate.pem",
        &[&leaf.cert_pem, &expired.cert_pem()],
        &leaf,
    );
    assert_same_refusal(
        &path,
        "server",
        Role::Server,
        "intermediate certificate 2 (O=hitless test PKI, CN=Inspect Expired) expired at",
    );
}

#[test]
fn role_decides_for_a_client_only_leaf() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let now = OffsetDateTime::now_utc();
    let leaf = ca.issue(
        &LeafSpec::client("localhost").valid(now - Duration::hours(1), now + Duration::days(30)),
    );
    let path = bundle_of(dir.path(), "client.pem", &[&leaf.cert_pem], &leaf);

    // As `serve` loads it: refused, with the library's reason.
    assert_same_refusal(
        &path,
        "server",
        Role::Server,
        "the leaf, certificate 1 (CN=localhost), has extendedKeyUsage without serverAuth \
         (clientAuth)",
    );
    // As a client identity, or when the use is not said: fine, and it says what it is for.
    for role in [("client", Role::Client), ("any", Role::Any)] {
        library_verdict(&path, role.1).expect("the library accepts it");
        let out = inspect(&[&path, &"--role", &role.0]);
        assert_eq!(code(&out), 0, "{}", show(&out));
        let text = stdout(&out);
        assert!(
            text.contains("usable as    client identity\n"),
            "{}",
            show(&out)
        );
        assert!(text.contains("ext. usage   clientAuth\n"), "{}", show(&out));
    }
    let out = inspect(&[&path]);
    assert_eq!(code(&out), 0, "the default role is any: {}", show(&out));
}

#[test]
fn of_two_leaves_for_one_key_the_newer_is_the_leaf() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let now = OffsetDateTime::now_utc();
    // The old leaf (expired) first, then its renewal for the same key.
    let old = ca.issue(
        &LeafSpec::server("localhost").valid(now - Duration::days(30), now - Duration::days(1)),
    );
    let renewed = ca.issue_for_key_of(
        &LeafSpec::server("localhost").valid(now - Duration::hours(1), now + Duration::days(30)),
        &old,
    );
    let path = bundle_of(
        dir.path(),
        "renewed.pem",
        &[&old.cert_pem, &renewed.cert_pem],
        &old,
    );
    let served = Identity::load(&IdentitySource::bundle(&path), Role::Server)
        .expect("the library serves the renewal");
    assert_eq!(served.leaf().fingerprint, renewed.fingerprint_sha256_hex());

    let out = inspect(&[&path, &"--role", &"server"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{}", show(&out));
    assert!(text.contains("certificate 2 (leaf)"), "{}", show(&out));
    assert!(text.contains("matches certificate 2"), "{}", show(&out));
    assert!(
        text.contains(
            "certificate 1 (CN=localhost) is another certificate for the same key: hitless \
             serves certificate 2"
        ),
        "{}",
        show(&out)
    );
    assert!(
        text.contains("usable as    server identity"),
        "{}",
        show(&out)
    );
}

/// Runs `hitless inspect ARGS...` with at most 1 GiB of address space, killing it and failing
/// if it has not ended within a minute. It should end at once; the bounds only keep a
/// regression (reading `/dev/zero` to the end, waiting on a pipe) from eating the machine's
/// memory or hanging the suite.
fn inspect_bounded(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ulimit -v 1048576 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_hitless"))
        .arg("inspect")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for a in args {
        cmd.arg(a);
    }
    let mut child = cmd.spawn().expect("run hitless inspect");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if child
            .try_wait()
            .expect("wait for hitless inspect")
            .is_some()
        {
            return child.wait_with_output().expect("collect the output");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "hitless inspect {:?} did not end",
                cmd.get_args().collect::<Vec<_>>()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn devices_and_pipes_are_refused_not_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let zero = Path::new("/dev/zero");
    let out = inspect_bounded(&[&zero]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stdout(&out).contains("/dev/zero: cannot read: a device instead of a regular file"),
        "{}",
        show(&out)
    );

    // A named pipe nobody writes to: opening it would block forever.
    let fifo = dir.path().join("identity.pem");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let out = inspect_bounded(&[&fifo]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stdout(&out).contains(&format!(
            "{}: cannot read: a named pipe instead of a regular file",
            fifo.display()
        )),
        "{}",
        show(&out)
    );

    // The same for a key file and a PKCS#12 password file.
    let (cert, _) = healthy_leaf(&root()).write_pair(dir.path(), "a.crt", "a.key");
    let out = inspect_bounded(&[&cert, &"--key", &zero]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stdout(&out).contains("instead of a regular file"),
        "{}",
        show(&out)
    );
    let p12 = write(dir.path(), "x.p12", b"\x30\x03\x02\x01\x03");
    let out = inspect_bounded(&[&p12, &"--password-file", &fifo]);
    assert_eq!(code(&out), 1, "{}", show(&out));
    assert!(
        stdout(&out).contains("instead of a regular file"),
        "{}",
        show(&out)
    );
}

/// Runs `hitless serve --config CONFIG --check`, failing if it has not ended within a minute
/// (it only loads the files and prints its verdict).
fn serve_check(config: &Path) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hitless"))
        .args(["serve", "--check", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run hitless serve --check");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait for hitless serve").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hitless serve --check did not end");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("collect the output")
}

#[test]
fn inspect_and_serve_check_refuse_an_identity_with_the_same_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = root();
    let now = OffsetDateTime::now_utc();
    // Refusals of every kind: a chain rule (a client-only leaf served as a server), the
    // validity of the leaf, and the PEM reader's (a file cut inside a BEGIN line, which
    // `inspect`'s own PEM reading used to accept, and an encrypted key, which it used to
    // describe in other words).
    let client_only = ca.issue(
        &LeafSpec::client("localhost").valid(now - Duration::hours(1), now + Duration::days(30)),
    );
    let expired = leaf(&ca, Duration::days(-30), Duration::days(-1));
    let cases = [
        (
            bundle_of(
                dir.path(),
                "client.pem",
                &[&client_only.cert_pem],
                &client_only,
            ),
            "has extendedKeyUsage without serverAuth",
        ),
        (
            bundle_of(dir.path(), "expired.pem", &[&expired.cert_pem], &expired),
            "certificate expired at",
        ),
        (
            write(
                dir.path(),
                "cut.pem",
                format!("{}-----BEG", client_only.bundle_pem(KeyFormat::Pkcs8)),
            ),
            "the file ends inside a \"-----BEGIN\" line",
        ),
        (
            write(
                dir.path(),
                "encrypted.pem",
                format!(
                    "{}-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAMCAQE=\n-----END ENCRYPTED \
                     PRIVATE KEY-----\n",
                    client_only.cert_pem
                ),
            ),
            "the private key is encrypted",
        ),
    ];
    for (bundle, reason) in cases {
        let config = write(
            dir.path(),
            "hitless.toml",
            format!(
                "[[listener]]\nlisten = \"127.0.0.1:0\"\n[[identity]]\nname = \"api\"\nbundle = {:?}\n",
                bundle.display().to_string()
            ),
        );
        let served = serve_check(&config);
        let served_text = stdout(&served);
        assert_ne!(code(&served), 0, "{}", show(&served));
        let serve_reason = served_text
            .lines()
            .find_map(|l| l.strip_prefix("identity api: ERROR "))
            .unwrap_or_else(|| panic!("no identity error from serve --check:\n{}", show(&served)))
            .to_string();
        assert!(serve_reason.contains(reason), "{serve_reason}");

        let out = inspect(&[&bundle, &"--role", &"server"]);
        assert_eq!(code(&out), 1, "{}", show(&out));
        assert!(
            stdout(&out).lines().any(|l| {
                let l = l.trim();
                l == format!("error: {serve_reason}")
                    || l == format!("error: hitless would refuse it: {serve_reason}")
            }),
            "inspect must refuse with serve's reason {serve_reason:?}:\n{}",
            show(&out)
        );
    }
}
