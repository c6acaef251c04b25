//! `on-handshake` detection: no thread is started, and a rotation is picked up by a handshake
//! once the TTL has passed. (Alone in its test binary so the thread count is not disturbed by
//! other tests.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{client_config, connect, wait_for, Server, PATIENCE};
use hitless::{Detection, IdentitySource, ReloadingIdentity};
use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, LeafSpec};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn rotation_is_picked_up_by_a_handshake_without_any_thread() {
    let ca = Ca::new_root("CA", KeyType::EcP256);
    let first = ca.issue(&LeafSpec::server("localhost"));
    let second = ca.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    write_atomic(&path, first.bundle_pem(KeyFormat::Pkcs8).as_bytes());

    let before = threads();
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .detection(Detection::OnHandshake {
            ttl: Duration::from_millis(300),
        })
        .build()
        .unwrap();
    assert_eq!(
        threads(),
        before,
        "on-handshake mode must not start a thread"
    );
    assert_eq!(identity.status().detection.to_string(), "on-handshake");

    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    let server = Server::start(Arc::new(config));
    let client = client_config(&ca, None);
    assert_eq!(
        connect(server.addr, &client, "localhost")
            .unwrap()
            .fingerprint,
        first.fingerprint_sha256_hex()
    );
    write_atomic(&path, second.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    // Nothing happens without handshakes: no background thread is looking.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(identity.status().generation, 1);
    // The first handshake after the TTL checks inline and serves the new identity.
    wait_for(
        "a handshake to serve the rotated identity",
        PATIENCE,
        || {
            let c = connect(server.addr, &client, "localhost").ok()?;
            (c.fingerprint == second.fingerprint_sha256_hex()).then_some(())
        },
    );
    assert_eq!(identity.status().generation, 2);
}
