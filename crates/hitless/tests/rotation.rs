//! Rotation under load: clients open new connections in a loop while the identity is replaced
//! 50 times, for each way agents write files. Zero handshakes may fail; every new connection
//! sees the new certificate soon after the write; connections opened before a swap keep working.
//!
//! "Every presented leaf matches the key that signed the handshake" is checked by the rustls
//! client itself: it verifies the server's CertificateVerify signature with the presented leaf,
//! so a completed handshake proves the pair was consistent. The test additionally checks that
//! every presented leaf is one of the good generations written.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use common::{client_config, connect, wait_for, Server};
use hitless::{Detection, IdentitySource, ReloadingIdentity};
use hitless_test_pki::{k8s_swap, write_atomic, Ca, KeyFormat, KeyType, Leaf, LeafSpec};

const ROTATIONS: usize = 50;
const QUIET: Duration = Duration::from_millis(200);
/// Margin on top of the quiet period for a new certificate to be seen (shared, noisy machines).
const MARGIN: Duration = Duration::from_secs(10);

fn rotate_under_load(
    layout: &str,
    detection: Detection,
    write: impl Fn(&Path, &Leaf),
    source: impl Fn(&Path) -> IdentitySource,
) {
    let root = Ca::new_root("Rotation Root", KeyType::EcP256);
    let inter = root.new_intermediate("Rotation Intermediate", KeyType::EcP256);
    let leaves: Vec<Leaf> = (0..=ROTATIONS)
        .map(|_| inter.issue(&LeafSpec::server("localhost")))
        .collect();
    let good: HashSet<String> = leaves.iter().map(Leaf::fingerprint_sha256_hex).collect();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), &leaves[0]);

    let identity = ReloadingIdentity::builder(source(dir.path()))
        .detection(detection)
        .quiet_period(QUIET)
        .build()
        .unwrap();
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    let server = Server::start(Arc::new(config));
    let client = client_config(&root, None);

    // Load: two clients making a new full handshake per request until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen = Arc::new(Mutex::new(HashSet::<String>::new()));
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failures, seen, client) = (
                stop.clone(),
                ok.clone(),
                failures.clone(),
                seen.clone(),
                client.clone(),
            );
            let addr = server.addr;
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match connect(addr, &client, "localhost") {
                        Ok(c) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            seen.lock().unwrap().insert(c.fingerprint);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();

    let mut long_lived = connect(server.addr, &client, "localhost").expect("first connection");
    assert_eq!(long_lived.fingerprint, leaves[0].fingerprint_sha256_hex());
    for (i, leaf) in leaves.iter().enumerate().skip(1) {
        let mut before_swap =
            connect(server.addr, &client, "localhost").expect("pre-swap connection");
        write(dir.path(), leaf);
        let want = leaf.fingerprint_sha256_hex();
        wait_for(
            &format!("{layout}: rotation {i} to be served"),
            QUIET + MARGIN,
            || {
                let c = connect(server.addr, &client, "localhost").ok()?;
                (c.fingerprint == want).then_some(())
            },
        );
        before_swap
            .ping()
            .unwrap_or_else(|e| panic!("{layout}: connection opened before swap {i} broke: {e}"));
        long_lived
            .ping()
            .unwrap_or_else(|e| panic!("{layout}: long-lived connection broke at swap {i}: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{layout}: {} failed handshakes, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(
        ok.load(Ordering::Relaxed) > ROTATIONS,
        "{layout}: the load loop barely ran"
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.is_subset(&good),
        "{layout}: a leaf that was never written good was served"
    );
    let status = identity.status();
    assert!(
        status.generation > ROTATIONS as u64 / 2,
        "{layout}: generation {}",
        status.generation
    );
    assert_eq!(
        identity.current().unwrap().value.leaf().fingerprint,
        leaves[ROTATIONS].fingerprint_sha256_hex()
    );
    assert!(
        status.last_error.is_none(),
        "{layout}: {:?}",
        status.last_error
    );
}

#[test]
fn rename_of_a_bundle() {
    rotate_under_load(
        "rename bundle",
        Detection::Watch,
        |dir, leaf| {
            write_atomic(
                &dir.join("identity.pem"),
                leaf.bundle_pem(KeyFormat::Pkcs8).as_bytes(),
            )
        },
        |dir| IdentitySource::bundle(dir.join("identity.pem")),
    );
}

#[test]
fn in_place_rewrite_of_cert_then_key() {
    rotate_under_load(
        "in-place pair",
        Detection::Watch,
        |dir, leaf| {
            // A naive agent: truncate and write the certificate, pause, then the key.
            fs::write(dir.join("tls.crt"), &leaf.chain_pem).unwrap();
            thread::sleep(Duration::from_millis(30));
            fs::write(dir.join("tls.key"), leaf.key_pem(KeyFormat::Sec1)).unwrap();
        },
        |dir| IdentitySource::pair(dir.join("tls.crt"), dir.join("tls.key")),
    );
}

#[test]
fn kubernetes_data_symlink_swap() {
    rotate_under_load(
        "k8s ..data",
        Detection::Watch,
        |dir, leaf| {
            let key = leaf.key_pem(KeyFormat::Pkcs8);
            k8s_swap(
                dir,
                &[
                    ("tls.crt", leaf.chain_pem.as_bytes()),
                    ("tls.key", key.as_bytes()),
                ],
            );
        },
        |dir| IdentitySource::pair(dir.join("tls.crt"), dir.join("tls.key")),
    );
}

#[test]
fn certbot_live_symlinks_into_archive() {
    rotate_under_load(
        "certbot",
        Detection::Watch,
        |dir, leaf| {
            let key = leaf.key_pem(KeyFormat::Pkcs8);
            hitless_test_pki::certbot_renew(
                dir,
                "example",
                leaf.chain_pem.as_bytes(),
                key.as_bytes(),
            );
        },
        |dir| {
            IdentitySource::pair(
                dir.join("live/example/fullchain.pem"),
                dir.join("live/example/privkey.pem"),
            )
        },
    );
}

#[test]
fn poll_mode_picks_up_a_rename() {
    rotate_under_load(
        "poll rename",
        Detection::Poll {
            interval: Duration::from_millis(100),
        },
        |dir, leaf| {
            write_atomic(
                &dir.join("identity.pem"),
                leaf.bundle_pem(KeyFormat::Pkcs8).as_bytes(),
            )
        },
        |dir| IdentitySource::bundle(dir.join("identity.pem")),
    );
}

#[test]
fn watch_mode_follows_a_relative_path() {
    let root = Ca::new_root("Relative Root", KeyType::EcP256);
    let first = root.issue(&LeafSpec::server("localhost"));
    let second = root.issue(&LeafSpec::server("localhost"));
    // A directory under the current one, named relatively.
    let dir = tempfile::tempdir_in(".").unwrap();
    let relative = dir
        .path()
        .strip_prefix(std::env::current_dir().unwrap())
        .unwrap()
        .join("identity.pem");
    assert!(relative.is_relative());
    write_atomic(&relative, first.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&relative))
        .build()
        .unwrap();
    write_atomic(&relative, second.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    wait_for("the relative path to be reloaded", QUIET + MARGIN, || {
        (identity.status().generation == 2).then_some(())
    });
}

#[test]
fn watch_survives_its_directory_being_replaced() {
    let root = Ca::new_root("Dir Root", KeyType::EcP256);
    let first = root.issue(&LeafSpec::server("localhost"));
    let second = root.issue(&LeafSpec::server("localhost"));
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("secrets");
    fs::create_dir(&dir).unwrap();
    let path = dir.join("identity.pem");
    write_atomic(&path, first.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .quiet_period(Duration::from_millis(50))
        .build()
        .unwrap();
    // The whole directory is replaced (a volume remounted, a deploy tool's rename).
    let staging = base.path().join("staging");
    fs::create_dir(&staging).unwrap();
    write_atomic(
        &staging.join("identity.pem"),
        second.bundle_pem(KeyFormat::Pkcs8).as_bytes(),
    );
    fs::remove_dir_all(&dir).unwrap();
    fs::rename(&staging, &dir).unwrap();
    wait_for("the replaced directory to be read", QUIET + MARGIN, || {
        (identity.current().unwrap().value.leaf().fingerprint == second.fingerprint_sha256_hex())
            .then_some(())
    });
    // And the new directory is watched: a later rotation is seen too.
    let third = root.issue(&LeafSpec::server("localhost"));
    write_atomic(&path, third.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    wait_for("a rotation in the new directory", QUIET + MARGIN, || {
        (identity.current().unwrap().value.leaf().fingerprint == third.fingerprint_sha256_hex())
            .then_some(())
    });
}

#[test]
fn resumption_does_not_outlive_a_rotation() {
    let root = Ca::new_root("Resume Root", KeyType::EcP256);
    let first = root.issue(&LeafSpec::server("localhost"));
    let second = root.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    write_atomic(&path, first.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .build()
        .unwrap();
    // Built from the identity: its rotations start a new session binding by themselves.
    let configs = hitless::ReloadingServerConfig::builder(&identity)
        .build()
        .unwrap();
    let c = configs.clone();
    let server = Server::start_with(move || c.current());
    // A client that resumes whenever it can.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.rustls_cert()).unwrap();
    let client = Arc::new(
        common::client_builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    connect(server.addr, &client, "localhost").unwrap();
    let control = connect(server.addr, &client, "localhost").unwrap();
    assert!(
        control.resumed,
        "control: the client resumes before a rotation"
    );

    write_atomic(&path, second.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    wait_for("the rotation", QUIET + MARGIN, || {
        (identity.status().generation == 2).then_some(())
    });
    // The session cache was replaced with the rotation: the next handshake is full and shows
    // the new certificate.
    wait_for(
        "a full handshake with the new certificate",
        QUIET + MARGIN,
        || {
            let c = connect(server.addr, &client, "localhost").ok()?;
            (!c.resumed && c.fingerprint == second.fingerprint_sha256_hex()).then_some(())
        },
    );
}
