//! Every key type and input form loads and completes a real handshake on loopback; every kind
//! of bad input is refused with the file and the reason, and as a rotation leaves the previous
//! identity serving.

mod common;

use std::fs;
use std::sync::Arc;

use common::{client_config, connect, Server};
use hitless::{Detection, Error, IdentitySource, ReloadingIdentity};
use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use time::{Duration as TimeDuration, OffsetDateTime};

fn server_for(identity: &ReloadingIdentity) -> Server {
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    Server::start(Arc::new(config))
}

fn handshake_fingerprint(server: &Server, root: &Ca) -> String {
    let client = client_config(root, None);
    connect(server.addr, &client, "localhost")
        .expect("handshake")
        .fingerprint
}

/// Root → intermediate → leaf, so the chain order matters.
fn pki(key_type: KeyType) -> (Ca, Ca, Leaf) {
    let root = Ca::new_root("Test Root", KeyType::EcP256);
    let inter = root.new_intermediate("Test Intermediate", KeyType::EcP256);
    let leaf = inter.issue(&LeafSpec::server("localhost").key_type(key_type));
    (root, inter, leaf)
}

#[test]
fn each_key_type_and_format_serves_a_handshake() {
    let cases = [
        (KeyType::EcP256, KeyFormat::Pkcs8),
        (KeyType::EcP256, KeyFormat::Sec1),
        (KeyType::EcP384, KeyFormat::Pkcs8),
        (KeyType::EcP384, KeyFormat::Sec1),
        (KeyType::Ed25519, KeyFormat::Pkcs8),
        (KeyType::Rsa2048, KeyFormat::Pkcs8),
        (KeyType::Rsa2048, KeyFormat::Pkcs1),
        (KeyType::Rsa4096, KeyFormat::Pkcs1),
    ];
    for (key_type, format) in cases {
        let (root, _inter, leaf) = pki(key_type);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        fs::write(&cert, &leaf.chain_pem).unwrap();
        fs::write(&key, leaf.key_pem(format)).unwrap();
        let identity = ReloadingIdentity::builder(IdentitySource::pair(&cert, &key))
            .build()
            .unwrap_or_else(|e| panic!("{key_type:?}/{format:?}: {e}"));
        let server = server_for(&identity);
        assert_eq!(
            handshake_fingerprint(&server, &root),
            leaf.fingerprint_sha256_hex(),
            "{key_type:?}/{format:?}"
        );
        let snap = identity.current().unwrap();
        assert_eq!(snap.generation, 1);
        assert_eq!(
            snap.value.chain().len(),
            2,
            "leaf + intermediate, root not sent"
        );
    }
}

#[test]
fn bundles_in_any_order_run_together_and_crlf() {
    let (root, inter, leaf) = pki(KeyType::EcP256);
    let key = leaf.key_pem(KeyFormat::Pkcs8);
    let with_nl = |s: &str| format!("{}\n", s.trim_end());
    let forms: Vec<(&str, String)> = vec![
        // What the classic OpenBao/Vault Agent template renders: leaf, issuing CA, key.
        (
            "agent",
            format!(
                "{}{}{}",
                with_nl(&leaf.cert_pem),
                with_nl(&inter.cert_pem()),
                with_nl(&key)
            ),
        ),
        // Key first, root included, intermediate last: the leaf is found by its key.
        (
            "shuffled",
            format!(
                "{}{}{}{}",
                with_nl(&key),
                with_nl(&root.cert_pem()),
                with_nl(&leaf.cert_pem),
                with_nl(&inter.cert_pem())
            ),
        ),
        // A one-line template: blocks run together with no newline between them.
        (
            "run-together",
            format!(
                "{}{}{}",
                leaf.cert_pem.trim_end(),
                inter.cert_pem().trim_end(),
                key.trim_end()
            ),
        ),
        (
            "crlf",
            format!(
                "{}{}{}",
                with_nl(&leaf.cert_pem),
                with_nl(&inter.cert_pem()),
                with_nl(&key)
            )
            .replace('\n', "\r\n"),
        ),
    ];
    for (what, contents) in forms {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.pem");
        fs::write(&path, &contents).unwrap();
        let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
            .build()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let server = server_for(&identity);
        assert_eq!(
            handshake_fingerprint(&server, &root),
            leaf.fingerprint_sha256_hex(),
            "{what}"
        );
        let chain = identity.current().unwrap().value.chain().to_vec();
        assert_eq!(
            chain.len(),
            2,
            "{what}: leaf then intermediate, self-signed root dropped"
        );
        assert_eq!(
            chain[0].fingerprint,
            leaf.fingerprint_sha256_hex(),
            "{what}"
        );
        assert!(chain[1].subject.contains("Test Intermediate"), "{what}");
    }
}

/// Each bad input, as (name, files to write) for a pair layout, and the error it must give.
/// (what, certificate file contents or `None` for missing, key file contents, expected error).
type BadInput = (
    &'static str,
    Option<String>,
    Option<String>,
    fn(&Error) -> bool,
);

fn bad_inputs(good: &Leaf, other: &Leaf, ca: &Ca) -> Vec<BadInput> {
    let expired = ca.issue(&LeafSpec::server("localhost").valid(
        OffsetDateTime::now_utc() - TimeDuration::hours(2),
        OffsetDateTime::now_utc() - TimeDuration::hours(1),
    ));
    let future = ca.issue(&LeafSpec::server("localhost").valid(
        OffsetDateTime::now_utc() + TimeDuration::hours(1),
        OffsetDateTime::now_utc() + TimeDuration::hours(2),
    ));
    let key = good.key_pem(KeyFormat::Pkcs8);
    let truncated = good.chain_pem[..good.chain_pem.len() / 2].to_string();
    vec![
        (
            "mismatched key",
            Some(good.chain_pem.clone()),
            Some(other.key_pem(KeyFormat::Pkcs8)),
            |e| matches!(e, Error::KeyMismatch { .. }),
        ),
        (
            "garbage",
            Some("this is not a certificate\n".into()),
            Some(key.clone()),
            |e| matches!(e, Error::Pem { .. }),
        ),
        ("empty", Some(String::new()), Some(key.clone()), |e| {
            matches!(e, Error::Empty { .. })
        }),
        ("truncated", Some(truncated), Some(key.clone()), |e| {
            matches!(e, Error::Pem { .. })
        }),
        ("missing", None, Some(key.clone()), |e| {
            matches!(e, Error::Read { .. })
        }),
        (
            "expired",
            Some(expired.chain_pem.clone()),
            Some(expired.key_pem(KeyFormat::Pkcs8)),
            |e| matches!(e, Error::Expired { .. }),
        ),
        (
            "not yet valid",
            Some(future.chain_pem.clone()),
            Some(future.key_pem(KeyFormat::Pkcs8)),
            |e| matches!(e, Error::NotYetValid { .. }),
        ),
        (
            "no key",
            Some(good.chain_pem.clone()),
            Some(good.chain_pem.clone()),
            |e| matches!(e, Error::NoPrivateKey { .. }),
        ),
    ]
}

fn write_or_remove(path: &std::path::Path, contents: &Option<String>) {
    match contents {
        Some(c) => fs::write(path, c).unwrap(),
        None => {
            let _ = fs::remove_file(path);
        }
    }
}

#[test]
fn bad_input_at_start_names_the_file_and_the_reason() {
    let (_root, inter, good) = pki(KeyType::EcP256);
    let other = inter.issue(&LeafSpec::server("localhost"));
    for (what, cert, key, check) in bad_inputs(&good, &other, &inter) {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        write_or_remove(&cert_path, &cert);
        write_or_remove(&key_path, &key);
        let err = ReloadingIdentity::builder(IdentitySource::pair(&cert_path, &key_path))
            .detection(Detection::Manual)
            .build()
            .expect_err(what);
        assert!(check(&err), "{what}: unexpected error kind {err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(dir.path().to_str().unwrap()),
            "{what}: message does not name the file: {msg}"
        );
    }
}

#[test]
fn bad_rotation_keeps_the_last_good_identity_serving() {
    let (root, inter, good) = pki(KeyType::EcP256);
    let other = inter.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    fs::write(&cert_path, &good.chain_pem).unwrap();
    fs::write(&key_path, good.key_pem(KeyFormat::Pkcs8)).unwrap();
    let identity = ReloadingIdentity::builder(IdentitySource::pair(&cert_path, &key_path))
        .detection(Detection::Manual)
        .quiet_period(std::time::Duration::from_millis(10))
        .build()
        .unwrap();
    let server = server_for(&identity);
    for (what, cert, key, check) in bad_inputs(&good, &other, &inter) {
        write_or_remove(&cert_path, &cert);
        write_or_remove(&key_path, &key);
        let err = identity.reload().expect_err(what);
        assert!(check(&err), "{what}: unexpected error kind {err:?}");
        assert_eq!(
            handshake_fingerprint(&server, &root),
            good.fingerprint_sha256_hex(),
            "{what}: the previous identity must keep serving"
        );
        let status = identity.status();
        assert_eq!(status.generation, 1, "{what}");
        let last = status.last_error.expect(what);
        assert!(last.path.is_some(), "{what}: recorded error names no file");
        assert!(
            last.message.contains(dir.path().to_str().unwrap()),
            "{what}: {}",
            last.message
        );
    }
    // Back to the good files: the error clears and the generation does not move (same content).
    fs::write(&cert_path, &good.chain_pem).unwrap();
    fs::write(&key_path, good.key_pem(KeyFormat::Pkcs8)).unwrap();
    assert_eq!(identity.reload().unwrap(), hitless::Reload::Unchanged);
    let status = identity.status();
    assert!(status.last_error.is_none());
    assert_eq!(status.generation, 1);
    assert_eq!(status.reloads_failed, 8);
    // A genuinely new identity bumps the generation.
    let next = inter.issue(&LeafSpec::server("localhost"));
    write_atomic(&cert_path, next.chain_pem.as_bytes());
    write_atomic(&key_path, next.key_pem(KeyFormat::Pkcs8).as_bytes());
    assert_eq!(
        identity.reload().unwrap(),
        hitless::Reload::Reloaded { generation: 2 }
    );
    assert_eq!(
        handshake_fingerprint(&server, &root),
        next.fingerprint_sha256_hex()
    );
}

#[test]
fn accept_expired_serves_an_expired_leaf_when_asked() {
    let (_root, inter, _) = pki(KeyType::EcP256);
    let expired = inter.issue(&LeafSpec::server("localhost").valid(
        OffsetDateTime::now_utc() - TimeDuration::hours(2),
        OffsetDateTime::now_utc() - TimeDuration::hours(1),
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    fs::write(&path, expired.bundle_pem(KeyFormat::Pkcs8)).unwrap();
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .accept_expired(true)
        .detection(Detection::Manual)
        .build()
        .unwrap();
    assert_eq!(
        identity.current().unwrap().value.leaf().fingerprint,
        expired.fingerprint_sha256_hex()
    );
}
