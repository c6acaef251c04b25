//! `hitless ca` and `hitless agent`, run as the real binary, checked with OpenSSL as the
//! independent peer: what `ca init`/`issue` write verifies, `revoke` + `crl` make OpenSSL refuse
//! the revoked leaf, and `agent` writes distinct, consistent identities in every layout.
//!
//! Every run is bounded ([`common::run_bounded`]); timing only decides how long a test takes,
//! never whether it passes.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{hitless_bin, run_bounded, send_signal, Ran};
use serde_json::Value;
use tempfile::TempDir;

/// Bound of one `hitless` or `openssl` run.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn hitless(args: &[&str]) -> Ran {
    let mut cmd = Command::new(hitless_bin());
    cmd.args(args);
    run_bounded(cmd, b"", RUN_TIMEOUT)
}

fn hitless_ok(args: &[&str]) -> Ran {
    let ran = hitless(args);
    assert!(ran.success(), "hitless {args:?} failed: {ran:?}");
    ran
}

fn openssl(args: &[&str]) -> Ran {
    let mut cmd = Command::new("openssl");
    cmd.args(args);
    run_bounded(cmd, b"", RUN_TIMEOUT)
}

fn openssl_ok(args: &[&str]) -> String {
    let ran = openssl(args);
    assert!(ran.success(), "openssl {args:?} failed: {ran:?}");
    ran.stdout
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temp path")
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// A fresh temp dir with a CA made by `ca init` in `DIR/pki`.
fn new_ca(key_type: &str) -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let pki = tmp.path().join("pki");
    hitless_ok(&["ca", "init", "--dir", s(&pki), "--key-type", key_type]);
    (tmp, pki)
}

/// `openssl verify` of the first certificate in `chain_file` (leaf + intermediate) against the
/// CA's root, with extra flags.
fn verify(pki: &Path, chain_file: &Path, extra: &[&str]) -> Ran {
    let root = pki.join("root.pem");
    let mut args = vec!["verify", "-CAfile", s(&root), "-untrusted", s(chain_file)];
    args.extend_from_slice(extra);
    args.push(s(chain_file));
    openssl(&args)
}

/// Uppercase hex serial of the first certificate in `file`, as OpenSSL prints it.
fn serial_of(file: &Path) -> String {
    let out = openssl_ok(&["x509", "-in", s(file), "-noout", "-serial"]);
    out.trim()
        .strip_prefix("serial=")
        .unwrap_or_else(|| panic!("unexpected `openssl x509 -serial` output {out:?}"))
        .to_string()
}

/// Asserts the first certificate in `cert_file` and the key in `key_file` share a public key.
fn assert_key_matches(cert_file: &Path, key_file: &Path) {
    let from_cert = openssl_ok(&["x509", "-in", s(cert_file), "-noout", "-pubkey"]);
    let from_key = openssl_ok(&["pkey", "-in", s(key_file), "-pubout"]);
    assert!(from_cert.contains("BEGIN PUBLIC KEY"), "{from_cert}");
    assert_eq!(
        from_cert,
        from_key,
        "{} does not match {}",
        cert_file.display(),
        key_file.display()
    );
}

fn count_blocks(file: &Path, label: &str) -> usize {
    let text = fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    text.matches(&format!("-----BEGIN {label}-----")).count()
}

#[test]
fn ca_init_writes_private_keys_0600_and_a_valid_root_and_intermediate() {
    let (tmp, pki) = new_ca("ec-p256");
    for f in [
        "root.pem",
        "root.key",
        "intermediate.pem",
        "intermediate.key",
        "ca-bundle.pem",
        "chain.pem",
        "state.json",
    ] {
        assert!(pki.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&pki.join("root.key")), 0o600);
    assert_eq!(mode(&pki.join("intermediate.key")), 0o600);
    assert_eq!(
        fs::read(pki.join("ca-bundle.pem")).unwrap(),
        fs::read(pki.join("root.pem")).unwrap()
    );
    assert_eq!(
        fs::read(pki.join("chain.pem")).unwrap(),
        fs::read(pki.join("intermediate.pem")).unwrap()
    );
    assert_key_matches(&pki.join("root.pem"), &pki.join("root.key"));
    assert_key_matches(&pki.join("intermediate.pem"), &pki.join("intermediate.key"));

    // The intermediate chains to the root, both are CAs, and the dates are real ones (rcgen's
    // default would be the year 4096).
    let ran = verify(&pki, &pki.join("intermediate.pem"), &[]);
    assert!(ran.success(), "{ran:?}");
    for f in ["root.pem", "intermediate.pem"] {
        let text = openssl_ok(&["x509", "-in", s(&pki.join(f)), "-noout", "-text"]);
        assert!(text.contains("CA:TRUE"), "{f}: {text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{f}: {text}");
        assert!(!text.contains("4096 GMT"), "{f}: {text}");
    }
    // Serials are random 16-byte positive numbers.
    let root_serial = serial_of(&pki.join("root.pem"));
    let int_serial = serial_of(&pki.join("intermediate.pem"));
    assert_eq!(root_serial.len(), 32, "{root_serial}");
    assert_ne!(root_serial, int_serial);

    // No silent overwrite; --force replaces.
    let before = fs::read(pki.join("root.pem")).unwrap();
    let again = hitless(&["ca", "init", "--dir", s(&pki)]);
    assert_eq!(again.status.and_then(|s| s.code()), Some(1), "{again:?}");
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    assert_eq!(fs::read(pki.join("root.pem")).unwrap(), before);
    hitless_ok(&["ca", "init", "--dir", s(&pki), "--force"]);
    assert_ne!(fs::read(pki.join("root.pem")).unwrap(), before);
    assert_eq!(mode(&pki.join("root.key")), 0o600);
    drop(tmp);
}

#[test]
fn ca_issue_server_and_client_leaves_verify_with_the_right_usage() {
    let (tmp, pki) = new_ca("ec-p256");
    let out = tmp.path().join("certs");

    let ran = hitless_ok(&[
        "ca",
        "issue",
        "--dir",
        s(&pki),
        "--name",
        "localhost",
        "--kind",
        "server",
        "--ttl",
        "1h",
        "--out",
        s(&out),
        "--dns",
        "api.example.test",
        "--ip",
        "10.0.0.7",
    ]);
    let crt = out.join("localhost.crt");
    let key = out.join("localhost.key");
    let bundle = out.join("localhost.pem");
    assert_eq!(ran.stdout.trim().to_uppercase(), serial_of(&crt));
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&bundle), 0o600);
    assert_eq!(count_blocks(&crt, "CERTIFICATE"), 2, "leaf + intermediate");
    assert_eq!(count_blocks(&bundle, "CERTIFICATE"), 2);
    assert_eq!(count_blocks(&bundle, "PRIVATE KEY"), 1);
    assert_key_matches(&crt, &key);
    assert_key_matches(&bundle, &bundle);

    let ok = verify(&pki, &crt, &["-purpose", "sslserver"]);
    assert!(ok.success(), "{ok:?}");
    let wrong = verify(&pki, &crt, &["-purpose", "sslclient"]);
    assert!(
        !wrong.success(),
        "a server leaf passed as a client: {wrong:?}"
    );
    let ext = openssl_ok(&[
        "x509",
        "-in",
        s(&crt),
        "-noout",
        "-ext",
        "subjectAltName,extendedKeyUsage",
    ]);
    for want in [
        "DNS:localhost",
        "DNS:api.example.test",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
        "IP Address:10.0.0.7",
        "TLS Web Server Authentication",
    ] {
        assert!(ext.contains(want), "{want} missing in {ext}");
    }
    assert!(!ext.contains("Client Authentication"), "{ext}");
    // --ttl 1h: notAfter is about an hour from now, not rcgen's default.
    let in_59m = openssl(&["x509", "-in", s(&crt), "-noout", "-checkend", "3540"]);
    assert!(in_59m.success(), "expires before 59 minutes: {in_59m:?}");
    let in_62m = openssl(&["x509", "-in", s(&crt), "-noout", "-checkend", "3720"]);
    assert!(!in_62m.success(), "still valid in 62 minutes: {in_62m:?}");

    hitless_ok(&[
        "ca",
        "issue",
        "--dir",
        s(&pki),
        "--name",
        "billing",
        "--kind",
        "client",
        "--ttl",
        "10m",
        "--out",
        s(&out),
    ]);
    let client = out.join("billing.crt");
    assert!(verify(&pki, &client, &["-purpose", "sslclient"]).success());
    assert!(!verify(&pki, &client, &["-purpose", "sslserver"]).success());
    let subject = openssl_ok(&["x509", "-in", s(&client), "-noout", "-subject"]);
    assert!(subject.contains("CN = billing"), "{subject}");
    assert_key_matches(&client, &out.join("billing.key"));

    // Bad input is refused with a message, not a panic.
    let missing = hitless(&[
        "ca",
        "issue",
        "--dir",
        s(&tmp.path().join("nope")),
        "--name",
        "x",
        "--out",
        s(&out),
    ]);
    assert_eq!(missing.status.and_then(|s| s.code()), Some(1));
    assert!(missing.stderr.contains("ca init"), "{}", missing.stderr);
}

#[test]
fn every_key_type_makes_a_ca_and_leaves_openssl_accepts() {
    for key_type in ["ec-p256", "ec-p384", "rsa2048", "ed25519"] {
        let (tmp, pki) = new_ca(key_type);
        let out = tmp.path().join("certs");
        hitless_ok(&[
            "ca",
            "issue",
            "--dir",
            s(&pki),
            "--name",
            "localhost",
            "--out",
            s(&out),
            "--key-type",
            key_type,
        ]);
        let crt = out.join("localhost.crt");
        let ran = verify(&pki, &crt, &["-purpose", "sslserver"]);
        assert!(ran.success(), "{key_type}: {ran:?}");
        assert_key_matches(&crt, &out.join("localhost.key"));
    }
}

#[test]
fn revoked_serial_is_listed_in_the_crl_and_openssl_refuses_it() {
    let (tmp, pki) = new_ca("ec-p256");
    let out = tmp.path().join("certs");
    let revoked = hitless_ok(&[
        "ca",
        "issue",
        "--dir",
        s(&pki),
        "--name",
        "mallory",
        "--kind",
        "client",
        "--out",
        s(&out),
    ])
    .stdout
    .trim()
    .to_string();
    hitless_ok(&[
        "ca",
        "issue",
        "--dir",
        s(&pki),
        "--name",
        "alice",
        "--kind",
        "client",
        "--out",
        s(&out),
    ]);
    let kept = serial_of(&out.join("alice.crt"));

    // OpenSSL's colon form, upper case, is accepted as well.
    let colons: Vec<String> = revoked
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    let ran = hitless_ok(&[
        "ca",
        "revoke",
        "--dir",
        s(&pki),
        "--serial",
        &colons.join(":"),
    ]);
    assert_eq!(ran.stdout.trim(), revoked);
    // Revoking it again (by file) is not an error.
    let ran = hitless_ok(&[
        "ca",
        "revoke",
        "--dir",
        s(&pki),
        "--cert",
        s(&out.join("mallory.crt")),
    ]);
    assert_eq!(ran.stdout.trim(), revoked);
    assert!(ran.stderr.contains("already revoked"), "{}", ran.stderr);

    let crl = tmp.path().join("crl.pem");
    hitless_ok(&[
        "ca",
        "crl",
        "--dir",
        s(&pki),
        "--out",
        s(&crl),
        "--next-update",
        "1h",
    ]);
    let text = openssl_ok(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert!(text.contains(&revoked.to_uppercase()), "{text}");
    assert!(!text.contains(&kept), "{text}");
    assert!(
        text.contains("hitless development intermediate CA"),
        "{text}"
    );
    // Signed by the intermediate.
    let checked = openssl(&[
        "crl",
        "-in",
        s(&crl),
        "-noout",
        "-CAfile",
        s(&pki.join("intermediate.pem")),
    ]);
    assert!(checked.success(), "{checked:?}");
    assert!(
        checked.stderr.contains("verify OK") || checked.stdout.contains("verify OK"),
        "{checked:?}"
    );

    let refused = verify(
        &pki,
        &out.join("mallory.crt"),
        &["-crl_check", "-CRLfile", s(&crl)],
    );
    assert!(!refused.success(), "revoked leaf accepted: {refused:?}");
    assert!(
        format!("{}{}", refused.stdout, refused.stderr).contains("certificate revoked"),
        "{refused:?}"
    );
    let accepted = verify(
        &pki,
        &out.join("alice.crt"),
        &["-crl_check", "-CRLfile", s(&crl)],
    );
    assert!(accepted.success(), "{accepted:?}");

    // Each CRL gets the next number.
    hitless_ok(&["ca", "crl", "--dir", s(&pki), "--out", s(&crl)]);
    let text = openssl_ok(&["crl", "-in", s(&crl), "-noout", "-text"]);
    assert!(
        text.contains("X509v3 CRL Number: \n                2"),
        "{text}"
    );

    let bad = hitless(&["ca", "revoke", "--dir", s(&pki), "--serial", "not-hex"]);
    assert_eq!(bad.status.and_then(|s| s.code()), Some(1), "{bad:?}");
}

/// The `wrote identity` events of a `--log-format json` agent run: (generation, serial).
fn rotations(log: &str) -> Vec<(u64, String)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "wrote identity")
        .map(|v| {
            let fields = &v["fields"];
            (
                fields["generation"].as_u64().expect("generation"),
                fields["serial"].as_str().expect("serial").to_uppercase(),
            )
        })
        .collect()
}

/// Runs `hitless agent` for 3 identities with a short TTL; returns (temp dir, pki, out dir,
/// CA-out path, serials in order).
fn run_agent(
    layout: &str,
    write: &str,
    kind: &str,
) -> (TempDir, PathBuf, PathBuf, PathBuf, Vec<String>) {
    let (tmp, pki) = new_ca("ec-p256");
    let out = tmp.path().join("out");
    let ca_out = tmp.path().join("ca.pem");
    let ran = hitless_ok(&[
        "--log-format",
        "json",
        "agent",
        "--dir",
        s(&pki),
        "--name",
        "localhost",
        "--kind",
        kind,
        "--out",
        s(&out),
        "--layout",
        layout,
        "--write",
        write,
        "--ttl",
        "3s",
        "--renew-at",
        "0.3",
        "--count",
        "3",
        "--ca-out",
        s(&ca_out),
    ]);
    let events = rotations(&ran.stderr);
    let generations: Vec<u64> = events.iter().map(|(g, _)| *g).collect();
    assert_eq!(generations, [1, 2, 3], "{}", ran.stderr);
    let serials: Vec<String> = events.into_iter().map(|(_, s)| s).collect();
    assert!(
        serials[0] != serials[1] && serials[1] != serials[2] && serials[0] != serials[2],
        "{serials:?}"
    );
    assert_eq!(
        fs::read(&ca_out).unwrap(),
        fs::read(pki.join("root.pem")).unwrap()
    );
    (tmp, pki, out, ca_out, serials)
}

/// The final files hold generation 3, chain to the root, and the key matches.
fn assert_final_identity(pki: &Path, chain: &Path, key: &Path, serials: &[String], purpose: &str) {
    assert_eq!(serial_of(chain), serials[2], "{}", chain.display());
    assert_eq!(count_blocks(chain, "CERTIFICATE"), 2);
    assert_key_matches(chain, key);
    let ran = verify(pki, chain, &["-purpose", purpose]);
    assert!(ran.success(), "{ran:?}");
    assert_eq!(mode(key), 0o600, "{}", key.display());
}

#[test]
fn agent_bundle_rename() {
    let (_tmp, pki, out, _, serials) = run_agent("bundle", "rename", "server");
    let bundle = out.join("identity.pem");
    assert_final_identity(&pki, &bundle, &bundle, &serials, "sslserver");
    assert_eq!(count_blocks(&bundle, "PRIVATE KEY"), 1);
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        1,
        "temp files left behind"
    );
}

#[test]
fn agent_bundle_in_place() {
    let (_tmp, pki, out, _, serials) = run_agent("bundle", "in-place", "client");
    let bundle = out.join("identity.pem");
    assert_final_identity(&pki, &bundle, &bundle, &serials, "sslclient");
    assert_eq!(count_blocks(&bundle, "PRIVATE KEY"), 1);
}

#[test]
fn agent_pair_rename() {
    let (_tmp, pki, out, _, serials) = run_agent("pair", "rename", "server");
    assert_final_identity(
        &pki,
        &out.join("tls.crt"),
        &out.join("tls.key"),
        &serials,
        "sslserver",
    );
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        2,
        "temp files left behind"
    );
}

#[test]
fn agent_pair_in_place() {
    let (_tmp, pki, out, _, serials) = run_agent("pair", "in-place", "client");
    assert_final_identity(
        &pki,
        &out.join("tls.crt"),
        &out.join("tls.key"),
        &serials,
        "sslclient",
    );
}

#[test]
fn agent_k8s_swaps_the_data_symlink() {
    let (_tmp, pki, out, _, serials) = run_agent("k8s", "rename", "server");
    let ts_dirs: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != "..data")
        .collect();
    assert_eq!(ts_dirs.len(), 1, "{ts_dirs:?}");
    let ts = &ts_dirs[0];
    // ..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN
    assert_eq!(ts.len(), 31, "{ts}");
    assert!(out.join(ts).is_dir());
    assert_eq!(fs::read_link(out.join("..data")).unwrap(), Path::new(ts));
    for name in ["tls.crt", "tls.key", "ca.crt"] {
        let link = out.join(name);
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{name}"
        );
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("..data").join(name)
        );
    }
    assert!(!out.join("..data_tmp").exists());
    assert_final_identity(
        &pki,
        &out.join("tls.crt"),
        &out.join("tls.key"),
        &serials,
        "sslserver",
    );
    assert_eq!(
        fs::read(out.join("ca.crt")).unwrap(),
        fs::read(pki.join("root.pem")).unwrap()
    );
}

#[test]
fn agent_certbot_links_live_into_archive() {
    let (_tmp, pki, out, _, serials) = run_agent("certbot", "rename", "server");
    let archive = out.join("archive/localhost");
    let live = out.join("live/localhost");
    for (i, serial) in serials.iter().enumerate() {
        let n = i + 1;
        let fullchain = archive.join(format!("fullchain{n}.pem"));
        let privkey = archive.join(format!("privkey{n}.pem"));
        assert_eq!(&serial_of(&fullchain), serial, "generation {n}");
        assert_key_matches(&fullchain, &privkey);
        assert_eq!(mode(&privkey), 0o600);
    }
    assert!(!archive.join("fullchain4.pem").exists());
    for kind in ["cert", "chain", "fullchain", "privkey"] {
        let link = live.join(format!("{kind}.pem"));
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{kind}"
        );
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new(&format!("../../archive/localhost/{kind}3.pem"))
        );
    }
    assert_final_identity(
        &pki,
        &live.join("fullchain.pem"),
        &live.join("privkey.pem"),
        &serials,
        "sslserver",
    );
}

#[test]
fn agent_refuses_in_place_for_symlink_layouts() {
    let (tmp, pki) = new_ca("ec-p256");
    for layout in ["k8s", "certbot"] {
        let out = tmp.path().join(layout);
        let ran = hitless(&[
            "agent",
            "--dir",
            s(&pki),
            "--name",
            "localhost",
            "--out",
            s(&out),
            "--layout",
            layout,
            "--write",
            "in-place",
            "--count",
            "1",
        ]);
        assert_eq!(ran.status.and_then(|s| s.code()), Some(1), "{ran:?}");
        assert!(ran.stderr.contains("in-place"), "{}", ran.stderr);
        assert!(!out.exists(), "{layout}: wrote something anyway");
    }
}

#[test]
fn agent_stops_after_duration() {
    let (tmp, pki) = new_ca("ec-p256");
    let out = tmp.path().join("out");
    let started = Instant::now();
    let ran = hitless_ok(&[
        "--log-format",
        "json",
        "agent",
        "--dir",
        s(&pki),
        "--name",
        "localhost",
        "--out",
        s(&out),
        "--ttl",
        "1h",
        "--duration",
        "1s",
    ]);
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(rotations(&ran.stderr).len(), 1, "{}", ran.stderr);
    assert!(out.join("identity.pem").is_file());
}

/// Kills and reaps the child on drop, so a failed assertion never leaks an agent.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn agent_without_limits_stops_cleanly_on_sigterm() {
    let (tmp, pki) = new_ca("ec-p256");
    let out = tmp.path().join("out");
    let child = Command::new(hitless_bin())
        .args([
            "agent",
            "--dir",
            s(&pki),
            "--name",
            "localhost",
            "--out",
            s(&out),
            "--layout",
            "pair",
            "--ttl",
            "1h",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hitless agent");
    let mut guard = ChildGuard(child);
    let deadline = Instant::now() + RUN_TIMEOUT;
    while !out.join("tls.key").exists() {
        assert!(Instant::now() < deadline, "no identity written");
        assert!(guard.0.try_wait().unwrap().is_none(), "agent exited early");
        thread::sleep(common::POLL);
    }
    send_signal(guard.0.id(), "TERM");
    let status = loop {
        if let Some(status) = guard.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "agent ignored SIGTERM");
        thread::sleep(common::POLL);
    };
    assert!(status.success(), "{status}");
    assert_key_matches(&out.join("tls.crt"), &out.join("tls.key"));
}
