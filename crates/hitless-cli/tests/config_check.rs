//! `hitless serve --config F --check`: the example configuration (with its paths pointed at
//! files made here) passes; a bad one is refused naming the key; a config file really serves.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{hitless_bin, run_bounded, Pki};

/// The repository's example configuration with its file paths replaced by test files.
fn example_with_paths(pki: &Pki) -> String {
    let example = include_str!("../../../examples/hitless.toml");
    let legacy = pki.write_bundle("legacy.pem", &pki.server);
    let crl = pki.path("clients.crl");
    std::fs::write(&crl, pki.ca.crl(&[], time::Duration::hours(1)).pem).unwrap();
    example
        .replace("/etc/tls/api.crt", pki.server_crt.to_str().unwrap())
        .replace("/etc/tls/api.key", pki.server_key.to_str().unwrap())
        .replace("/run/secrets/legacy.pem", legacy.to_str().unwrap())
        .replace("/etc/tls/clients-ca.pem", pki.ca_pem.to_str().unwrap())
        .replace("/etc/tls/clients.crl", crl.to_str().unwrap())
}

#[test]
fn example_config_passes_check() {
    let pki = Pki::new();
    let config = pki.path("hitless.toml");
    std::fs::write(&config, example_with_paths(&pki)).unwrap();
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["serve", "--config"]).arg(&config).arg("--check");
    let ran = run_bounded(cmd, b"", Duration::from_secs(60));
    assert!(ran.success(), "{ran:?}");
    assert!(ran.stdout.contains("configuration OK"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains("identity api (default)"),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains(&pki.server.fingerprint_sha256_hex()),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("client CA:"), "{}", ran.stdout);
}

#[test]
fn bad_config_is_refused_naming_the_key() {
    let pki = Pki::new();
    let cases = [
        (
            "unknown key",
            "[[listener]]\nlistne = \"127.0.0.1:1\"\n",
            "listne",
        ),
        (
            "bad duration",
            "[[identity]]\nbundle = \"x.pem\"\n[reload]\npoll_interval = \"10 parsecs\"\n",
            "reload.poll_interval",
        ),
        (
            "missing file",
            "[[identity]]\nbundle = \"/nonexistent/id.pem\"\n",
            "identity[0].bundle",
        ),
        ("no identity", "[reload]\nmode = \"poll\"\n", "identity"),
    ];
    for (what, text, key) in cases {
        let config = pki.path("bad.toml");
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(hitless_bin());
        cmd.args(["serve", "--config"]).arg(&config).arg("--check");
        let ran = run_bounded(cmd, b"", Duration::from_secs(60));
        assert!(!ran.success(), "{what}: accepted");
        assert!(
            ran.stderr.contains(key),
            "{what}: message does not name {key}: {}",
            ran.stderr
        );
        assert!(ran.stderr.contains("bad.toml"), "{what}: {}", ran.stderr);
    }
}

#[test]
fn config_file_serves() {
    let pki = Pki::new();
    let port = common::free_port();
    let text = example_with_paths(&pki).replace("127.0.0.1:8443", &format!("127.0.0.1:{port}"));
    let config = pki.path("hitless.toml");
    std::fs::write(&config, text).unwrap();
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["serve", "--config"]).arg(&config);
    let mut server = common::ServerGuard::spawn(cmd, port, pki.path("server.log"));
    server.wait_ready();
    let reply = common::curl(&pki, port, "/", common::HttpVersion::Http11, true);
    assert_eq!(reply.code, 200, "{reply:?}");
}
