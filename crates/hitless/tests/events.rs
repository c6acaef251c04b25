//! Events and health: reloaded, reload failed, expiring soon, expired.

mod common;

use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use common::PATIENCE;
use hitless::{Event, Health, IdentitySource, ReloadingIdentity};
use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, LeafSpec};
use time::{Duration as TimeDuration, OffsetDateTime};

#[test]
fn short_lived_identity_raises_expiring_soon_then_expired() {
    let ca = Ca::new_root("CA", KeyType::EcP256);
    let now = OffsetDateTime::now_utc();
    // 6 s of life, 2 s of it left: "expiring soon" (a third left) is due almost at once.
    let leaf = ca.issue(&LeafSpec::server("localhost").valid(
        now - TimeDuration::seconds(4),
        now + TimeDuration::seconds(3),
    ));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    write_atomic(&path, leaf.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    let (tx, rx) = mpsc::channel();
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .on_event(move |e| {
            let _ = tx.send(e.clone());
        })
        .build()
        .unwrap();
    let mut saw_soon = false;
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Reloaded { generation, .. }) => assert_eq!(generation, 1),
            Ok(Event::ExpiringSoon { .. }) => {
                saw_soon = true;
                assert_eq!(
                    identity.status().health(SystemTime::now()),
                    Health::Degraded
                );
            }
            Ok(Event::Expired { fingerprint, .. }) => {
                assert!(saw_soon, "expiring soon must come first");
                assert_eq!(fingerprint, leaf.fingerprint_sha256_hex());
                break;
            }
            Ok(other) => panic!("unexpected event {other:?}"),
            Err(_) => panic!("no expired event within {PATIENCE:?}"),
        }
    }
    assert_eq!(identity.status().health(SystemTime::now()), Health::Expired);
    // The expired identity keeps being served: a late renewal still lands on a running process.
    assert!(identity.certified_key().is_some());
}

#[test]
fn reload_failed_event_names_the_file() {
    let ca = Ca::new_root("CA", KeyType::EcP256);
    let leaf = ca.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    write_atomic(&path, leaf.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    let (tx, rx) = mpsc::channel();
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .quiet_period(Duration::from_millis(50))
        .build()
        .unwrap();
    identity.subscribe(move |e| {
        let _ = tx.send(e.clone());
    });
    write_atomic(&path, b"-----BEGIN CERTIFICATE-----\ntruncated");
    let event = rx.recv_timeout(PATIENCE).expect("an event");
    match event {
        Event::ReloadFailed { error, .. } => {
            assert!(error.message.contains("identity.pem"), "{}", error.message);
            assert_eq!(error.path.as_deref(), Some(path.as_path()));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        identity.status().health(SystemTime::now()),
        Health::Degraded
    );
}
