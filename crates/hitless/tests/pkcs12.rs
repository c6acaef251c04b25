//! PKCS#12 identities as OpenSSL 3 (default and `-legacy`) and Java `keytool` write them,
//! made at test time by those tools; wrong passwords keep the last good identity.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{client_config, connect, Server};
use hitless::{Detection, Error, IdentitySource, Password, ReloadingIdentity};
use hitless_test_pki::{sha256_hex, Ca, KeyType, Leaf, LeafSpec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl_p12(dir: &Path, leaf: &Leaf, legacy: bool, password: &str) -> std::path::PathBuf {
    let (cert, key) = leaf.write_pair(dir, "leaf.crt", "leaf.key");
    let out = dir.join(if legacy { "legacy.p12" } else { "modern.p12" });
    let mut cmd = Command::new("openssl");
    cmd.args(["pkcs12", "-export", "-in"])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&out)
        .arg("-passout")
        .arg(format!("pass:{password}"));
    if legacy {
        cmd.arg("-legacy");
    }
    run(&mut cmd);
    out
}

fn serve_and_fingerprint(
    identity: &ReloadingIdentity,
    client: &Arc<ClientConfig>,
    name: &str,
) -> String {
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    let server = Server::start(Arc::new(config));
    connect(server.addr, client, name)
        .expect("handshake")
        .fingerprint
}

#[test]
fn openssl_default_and_legacy_pkcs12_serve_handshakes() {
    let ca = Ca::new_root("P12 CA", KeyType::EcP256);
    for (legacy, key_type) in [
        (false, KeyType::EcP256),
        (true, KeyType::EcP256),
        (false, KeyType::Rsa2048),
        (true, KeyType::Rsa2048),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let leaf = ca.issue(&LeafSpec::server("localhost").key_type(key_type));
        let p12 = openssl_p12(dir.path(), &leaf, legacy, "s3cret");
        let pw = dir.path().join("password");
        fs::write(&pw, "s3cret\n").unwrap();
        let identity = ReloadingIdentity::builder(IdentitySource::pkcs12(&p12, Password::File(pw)))
            .build()
            .unwrap_or_else(|e| panic!("legacy={legacy} {key_type:?}: {e}"));
        assert_eq!(
            serve_and_fingerprint(&identity, &client_config(&ca, None), "localhost"),
            leaf.fingerprint_sha256_hex(),
            "legacy={legacy} {key_type:?}"
        );
    }
}

#[test]
fn keytool_pkcs12_serves_handshakes() {
    for (alg, extra) in [
        ("EC", ["-groupname", "secp256r1"]),
        ("RSA", ["-keysize", "2048"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("keystore.p12");
        run(Command::new("keytool")
            .args([
                "-genkeypair",
                "-storetype",
                "PKCS12",
                "-alias",
                "server",
                "-keyalg",
                alg,
            ])
            .args(extra)
            .args([
                "-dname",
                "CN=localhost",
                "-ext",
                "SAN=dns:localhost",
                "-validity",
                "2",
            ])
            .arg("-keystore")
            .arg(&store)
            .args(["-storepass", "changeit", "-keypass", "changeit"]));
        let exported = dir.path().join("server.pem");
        run(Command::new("keytool")
            .args([
                "-exportcert",
                "-rfc",
                "-alias",
                "server",
                "-storetype",
                "PKCS12",
            ])
            .arg("-keystore")
            .arg(&store)
            .args(["-storepass", "changeit", "-file"])
            .arg(&exported));
        let cert = CertificateDer::from_pem_file(&exported).unwrap();
        std::env::set_var("HITLESS_TEST_P12_PASSWORD", "changeit");
        let identity = ReloadingIdentity::builder(IdentitySource::pkcs12(
            &store,
            Password::Env("HITLESS_TEST_P12_PASSWORD".into()),
        ))
        .build()
        .unwrap_or_else(|e| panic!("keytool {alg}: {e}"));
        // The keytool certificate is self-signed: the client trusts it directly.
        let mut roots = RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let mut client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = rustls::client::Resumption::disabled();
        assert_eq!(
            serve_and_fingerprint(&identity, &Arc::new(client), "localhost"),
            sha256_hex(cert.as_ref()),
            "keytool {alg}"
        );
    }
}

#[test]
fn wrong_password_keeps_the_last_good_identity() {
    let ca = Ca::new_root("P12 CA", KeyType::EcP256);
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue(&LeafSpec::server("localhost"));
    let p12 = openssl_p12(dir.path(), &first, false, "right");
    let pw = dir.path().join("password");
    fs::write(&pw, "right").unwrap();
    let identity =
        ReloadingIdentity::builder(IdentitySource::pkcs12(&p12, Password::File(pw.clone())))
            .detection(Detection::Manual)
            .quiet_period(std::time::Duration::from_millis(10))
            .build()
            .unwrap();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    let server = Server::start(Arc::new(config));
    let client = client_config(&ca, None);

    fs::write(&pw, "wrong").unwrap();
    let err = identity.reload().unwrap_err();
    assert!(matches!(err, Error::WrongPassword { .. }), "{err:?}");
    assert!(err.to_string().contains("modern.p12"), "{err}");
    assert_eq!(
        connect(server.addr, &client, "localhost")
            .unwrap()
            .fingerprint,
        first.fingerprint_sha256_hex()
    );
    assert!(identity
        .status()
        .last_error
        .unwrap()
        .message
        .contains("wrong password"));

    // Garbage in the keystore: refused too.
    fs::write(&p12, b"\x30\x82garbage").unwrap();
    fs::write(&pw, "right").unwrap();
    assert!(matches!(
        identity.reload().unwrap_err(),
        Error::Pkcs12 { .. }
    ));

    // A new keystore with the right password is picked up.
    let second = ca.issue(&LeafSpec::server("localhost"));
    let _ = fs::remove_file(&p12);
    openssl_p12(dir.path(), &second, false, "right");
    identity.reload().unwrap();
    assert_eq!(
        connect(server.addr, &client, "localhost")
            .unwrap()
            .fingerprint,
        second.fingerprint_sha256_hex()
    );
}
