//! Files that fight back, and checks that must not stall anyone: a named pipe swapped in for a
//! credential (the detector must neither hang nor stop), an update landing while an
//! `on-handshake` attempt runs (it must not be lost), and a slow trust reload in
//! `on-handshake` mode (the accept loop must not wait for it). Real handshakes over loopback.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client_config, connect, wait_for, Server, PATIENCE};
use hitless::{
    Detection, Event, IdentitySource, ReloadingIdentity, ReloadingServerConfig, ReloadingTrust,
    TrustSource,
};
use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, LeafSpec};

/// Makes a named pipe at `path` (with the system's `mkfifo`: the tests use no unsafe code).
fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("run mkfifo");
    assert!(status.success(), "mkfifo {} failed", path.display());
}

/// Unblocks whoever is stuck opening the pipe for reading (the old reader blocked in `open`
/// until a writer came): opens it for writing without blocking, and closes it at once. Used on
/// the way out, so a regression fails the test instead of hanging it.
struct UnblockFifo(PathBuf);

impl Drop for UnblockFifo {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        for _ in 0..50 {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc_o_nonblock())
                .open(&self.0);
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `O_NONBLOCK` on Linux (the tests do not depend on libc for one constant).
fn libc_o_nonblock() -> i32 {
    0o4000
}

#[test]
fn a_named_pipe_swapped_in_for_the_certificate_does_not_stop_the_watch_detector() {
    let ca = Ca::new_root("CA", KeyType::EcP256);
    let first = ca.issue(&LeafSpec::server("localhost"));
    let second = ca.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    write_atomic(&path, first.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    // The sources of the swaps live elsewhere (same file system: hard links), so the watched
    // directory only sees the renames over the identity file.
    let stage = tempfile::tempdir_in(dir.path().parent().unwrap()).unwrap();
    let fifo = stage.path().join("pipe");
    mkfifo(&fifo);
    let good = stage.path().join("good.pem");
    std::fs::write(&good, first.bundle_pem(KeyFormat::Pkcs8)).unwrap();

    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .detection(Detection::Watch)
        .quiet_period(Duration::from_millis(50))
        .build()
        .unwrap();
    let _unblock = UnblockFifo(fifo.clone());
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    let server = Server::start(Arc::new(config));
    let client = client_config(&ca, None);

    // Swap a pipe and a regular file in turn, many times: whenever the detector checks the
    // type by path and then opens, the pipe can be the one it opens (the race of the report).
    let tmp = dir.path().join(".swap");
    let storm_end = Instant::now() + Duration::from_secs(3);
    let mut swaps = 0;
    while Instant::now() < storm_end && swaps < 200_000 {
        for source in [&fifo, &good] {
            let _ = std::fs::remove_file(&tmp);
            std::fs::hard_link(source, &tmp).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        swaps += 1;
    }
    // Leave the pipe in place: the failure is reported, naming the file and what it is.
    std::fs::hard_link(&fifo, &tmp).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let error = wait_for("the pipe to be reported", PATIENCE, || {
        identity
            .status()
            .last_error
            .filter(|e| e.path.as_deref() == Some(path.as_path()))
    });
    assert!(
        error.message.contains(&path.display().to_string()),
        "the error must name the file: {error:?}"
    );
    // The last good identity kept serving.
    assert_eq!(
        connect(server.addr, &client, "localhost")
            .unwrap()
            .fingerprint,
        first.fingerprint_sha256_hex()
    );

    // A later, valid rotation is still picked up: the detector did not hang on the pipe.
    write_atomic(&path, second.bundle_pem(KeyFormat::Pkcs8).as_bytes());
    wait_for(
        &format!("the rotation after {swaps} pipe swaps to be served"),
        PATIENCE,
        || {
            let c = connect(server.addr, &client, "localhost").ok()?;
            (c.fingerprint == second.fingerprint_sha256_hex()).then_some(())
        },
    );
    assert!(identity.status().last_error.is_none());
    assert!(
        error.message.contains("named pipe"),
        "the error must say what the file is: {error:?}"
    );
}

#[test]
fn on_handshake_keeps_an_update_that_lands_during_an_attempt() {
    let ca = Ca::new_root("CA", KeyType::EcP256);
    let leaves: Vec<_> = (0..3)
        .map(|_| ca.issue(&LeafSpec::server("localhost")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    write_atomic(&path, leaves[0].bundle_pem(KeyFormat::Pkcs8).as_bytes());
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .detection(Detection::OnHandshake {
            ttl: Duration::from_millis(100),
        })
        .build()
        .unwrap();
    // The agent writes the third identity while the attempt that loads the second is still
    // running (its "reloaded" event is announced from inside the attempt).
    {
        let (path, third) = (path.clone(), leaves[2].bundle_pem(KeyFormat::Pkcs8));
        identity.subscribe(move |event| {
            if let Event::Reloaded { generation: 2, .. } = event {
                write_atomic(&path, third.as_bytes());
            }
        });
    }
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    let server = Server::start(Arc::new(config));
    let client = client_config(&ca, None);

    write_atomic(&path, leaves[1].bundle_pem(KeyFormat::Pkcs8).as_bytes());
    wait_for(
        "the identity written during the attempt to be served",
        PATIENCE,
        || {
            let c = connect(server.addr, &client, "localhost").ok()?;
            std::thread::sleep(Duration::from_millis(20));
            (c.fingerprint == leaves[2].fingerprint_sha256_hex()).then_some(())
        },
    );
    assert_eq!(identity.status().generation, 3);
}

#[test]
fn on_handshake_trust_reload_never_blocks_the_accept_loop() {
    let ca = Ca::new_root("CA", KeyType::EcP256);
    let server_leaf = ca.issue(&LeafSpec::server("localhost"));
    let client_leaf = ca.issue(&LeafSpec::client("client"));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = server_leaf.write_pair(dir.path(), "server.crt", "server.key");
    let ca_pem = dir.path().join("ca.pem");
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
    let crl = dir.path().join("crl.pem");
    write_atomic(&crl, ca.crl(&[], time::Duration::hours(1)).pem.as_bytes());

    let identity = ReloadingIdentity::builder(IdentitySource::pair(&cert, &key))
        .detection(Detection::Manual)
        .build()
        .unwrap();
    let trust = ReloadingTrust::builder(TrustSource::cas([&ca_pem]).with_crls([&crl]))
        .detection(Detection::OnHandshake {
            ttl: Duration::from_millis(100),
        })
        .build()
        .unwrap();
    let configs = ReloadingServerConfig::builder(&identity)
        .client_trust(&trust)
        .build()
        .unwrap();
    let generation = configs.trust_generation();
    // Every connection is accepted with `configs.current()`, on the accept loop, as the
    // crate teaches.
    let server = {
        let configs = configs.clone();
        Server::start_with(move || configs.current())
    };
    // A slow trust reload: held in its "reloaded" announcement until released.
    let (release, held) = mpsc::channel::<()>();
    let held = std::sync::Mutex::new(held);
    let holding = Arc::new(AtomicBool::new(false));
    {
        let holding = holding.clone();
        trust.subscribe(move |event| {
            if let Event::Reloaded { .. } = event {
                holding.store(true, Ordering::SeqCst);
                let _ = held.lock().unwrap().recv_timeout(Duration::from_secs(120));
                holding.store(false, Ordering::SeqCst);
            }
        });
    }
    let client = client_config(
        &ca,
        Some((client_leaf.rustls_chain(), client_leaf.rustls_key())),
    );
    connect(server.addr, &client, "localhost").expect("a first handshake");

    write_atomic(&crl, ca.crl(&[], time::Duration::hours(1)).pem.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    // This connection's accept finds the TTL run out and the CRL changed: the reload starts
    // and is held. The handshake must not wait for it.
    let first = connect(server.addr, &client, "localhost");
    wait_for("the trust reload to start", PATIENCE, || {
        holding.load(Ordering::SeqCst).then_some(())
    });
    first.expect("a handshake accepted while the trust reload ran");
    // And while it is still held, more connections are accepted.
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(150));
        connect(server.addr, &client, "localhost")
            .expect("a handshake accepted while the trust reload is held");
    }
    assert!(holding.load(Ordering::SeqCst), "the reload is still held");
    drop(release);
    wait_for("the new trust to be applied", PATIENCE, || {
        (configs.trust_generation() > generation && !holding.load(Ordering::SeqCst)).then_some(())
    });
    connect(server.addr, &client, "localhost").expect("a handshake under the new trust");
    drop(server);
}
