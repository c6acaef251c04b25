//! Files as an operator leaves them: secrets readable by others and trust files writable by
//! others get a warning naming the file and its mode; a configuration path that is a named
//! pipe or a device is refused at once with the reason, instead of hanging or eating memory.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// `openssl pkcs12 -export` of the server leaf of `pki`, protected by the password in
/// `password_file`.
fn export_pkcs12(pki: &Pki, password_file: &Path) -> PathBuf {
    let out = pki.path("server.p12");
    let status = Command::new("openssl")
        .args(["pkcs12", "-export", "-in"])
        .arg(&pki.server_crt)
        .arg("-inkey")
        .arg(&pki.server_key)
        .arg("-out")
        .arg(&out)
        .arg("-passout")
        .arg(format!("file:{}", password_file.display()))
        .status()
        .expect("run openssl pkcs12");
    assert!(status.success(), "openssl pkcs12 -export failed");
    out
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// The log line that warns about `path`, if any.
fn warning_about<'a>(log: &'a str, path: &Path, words: &str) -> Option<&'a str> {
    let name = path.display().to_string();
    log.lines()
        .find(|l| l.contains("WARN") && l.contains(&name) && l.contains(words))
}

#[test]
fn serve_warns_about_loose_permissions_of_secrets_and_trust_files() {
    let pki = Pki::new();
    let password = pki.path("p12.password");
    std::fs::write(&password, "correct horse\n").expect("write the password");
    let p12 = export_pkcs12(&pki, &password);
    let crl = pki.path("crl.pem");
    std::fs::write(&crl, pki.ca.crl(&[], time::Duration::hours(1)).pem).expect("write the CRL");
    // What a careless deployment leaves: keystore and password readable by all, the client CA
    // bundle writable by all, the CRL writable by the group.
    chmod(&p12, 0o644);
    chmod(&password, 0o640);
    chmod(&pki.ca_pem, 0o666);
    chmod(&crl, 0o620);

    let mut server = start_server(
        pki.dir.path(),
        &[
            "--pkcs12".into(),
            p12.clone().into(),
            "--password-file".into(),
            password.clone().into(),
            "--client-ca".into(),
            pki.ca_pem.clone().into(),
            "--crl".into(),
            crl.clone().into(),
        ],
    );
    server.wait_ready();
    let log = server.log();
    let expected: [(&Path, &str, &str); 4] = [
        (&p12, "PKCS#12 file", "0644"),
        (
            &password,
            "password file is readable by group or others",
            "0640",
        ),
        (&pki.ca_pem, "writable by group or others", "0666"),
        (&crl, "writable by group or others", "0620"),
    ];
    for (path, words, mode) in expected {
        let line = warning_about(&log, path, words).unwrap_or_else(|| {
            panic!(
                "no warning about {} ({words})\n--- server log ---\n{log}",
                path.display()
            )
        });
        assert!(
            line.contains(mode),
            "the warning must give the mode: {line}"
        );
    }
    // A trust bundle is no secret: readable by all is fine, only writable is warned about.
    assert!(
        warning_about(&log, &pki.ca_pem, "readable by").is_none(),
        "{log}"
    );
}

#[test]
fn serve_still_warns_about_a_readable_private_key() {
    let pki = Pki::new();
    chmod(&pki.server_key, 0o644);
    let mut server = start_server(
        pki.dir.path(),
        &[
            "--cert".into(),
            pki.server_crt.clone().into(),
            "--key".into(),
            pki.server_key.clone().into(),
        ],
    );
    server.wait_ready();
    let log = server.log();
    let line = warning_about(&log, &pki.server_key, "private key file is readable")
        .unwrap_or_else(|| panic!("no warning about the key\n{log}"));
    assert!(line.contains("0644"), "{line}");
}

/// `serve --config PATH` must refuse at once, naming the file and what it is.
fn assert_config_refused(path: &Path, what: &str) {
    let mut cmd = Command::new(hitless_bin());
    cmd.arg("serve").arg("--config").arg(path);
    cmd.env("NO_COLOR", "1");
    let ran = run_bounded(cmd, b"", Duration::from_secs(60));
    let status = ran.status.unwrap_or_else(|| {
        panic!(
            "serve --config {} did not end (killed after 60 s)\n{}",
            path.display(),
            ran.stderr
        )
    });
    assert!(!status.success(), "{}", ran.stderr);
    assert!(
        ran.stderr.contains(&path.display().to_string()) && ran.stderr.contains(what),
        "the error must name {} and say it is {what}: {}",
        path.display(),
        ran.stderr
    );
}

#[test]
fn a_configuration_that_is_a_pipe_or_a_device_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("config.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    assert_config_refused(&fifo, "a named pipe");
    assert_config_refused(Path::new("/dev/zero"), "a device");
}
