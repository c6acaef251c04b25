//! Lifecycle: dropping the last handle stops every thread hitless started, and nothing in the
//! library needs an async runtime.
//!
//! Alone in its test binary because it counts the threads of the process (`/proc/self/task`).
//! The two tests take turns (a lock), and the count leaves out the test harness's own threads.

mod common;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hitless::{
    Detection, IdentitySource, MemberOptions, ReloadingClientConfig, ReloadingIdentity,
    ReloadingServerConfig, ReloadingTrust, ServerIdentities, TrustSource,
};
use hitless_test_pki::{sha256_hex, write_atomic, Ca, KeyFormat, KeyType, LeafSpec};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

/// The tests of this file, whose harness threads are not counted.
const TESTS: [&str; 2] = [
    "dropped_handles_leave_no_thread_behind",
    "works_without_an_async_runtime",
];

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// The names of the process's threads, less the harness's test threads.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| {
            let comm = std::fs::read_to_string(task.ok()?.path().join("comm")).ok()?;
            let comm = comm.trim_end().to_string();
            // The kernel keeps the first 15 bytes of a thread's name.
            let is_test = !comm.is_empty() && TESTS.iter().any(|t| t.starts_with(&comm));
            (!is_test).then_some(comm)
        })
        .collect()
}

/// The thread count once it has not changed for a while (a thread of an earlier test may be
/// finishing).
fn settled_thread_count() -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut count = threads().len();
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = threads().len();
        if now == count || Instant::now() > deadline {
            return now;
        }
        count = now;
    }
}

/// A CA, a server identity bundle for `localhost` and a client identity bundle in a directory.
struct Files {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Files {
    fn new() -> Files {
        let files = Files {
            dir: tempfile::tempdir().unwrap(),
            ca: Ca::new_root("drop test CA", KeyType::EcP256),
        };
        write_atomic(&files.path("ca.pem"), files.ca.cert_pem().as_bytes());
        files.issue_server();
        let client = files.ca.issue(&LeafSpec::client("client"));
        write_atomic(
            &files.path("client.pem"),
            client.bundle_pem(KeyFormat::Pkcs8).as_bytes(),
        );
        files
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Writes a new server identity (atomic rename); returns its fingerprint.
    fn issue_server(&self) -> String {
        let leaf = self.ca.issue(&LeafSpec::server("localhost"));
        write_atomic(
            &self.path("server.pem"),
            leaf.bundle_pem(KeyFormat::Pkcs8).as_bytes(),
        );
        leaf.fingerprint_sha256_hex()
    }
}

/// A full handshake in memory; the fingerprints of the server's and the client's leaf.
fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> Result<(String, Option<String>), rustls::Error> {
    let mut server = ServerConnection::new(server)?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut client = ClientConnection::new(client, name)?;
    for _ in 0..20 {
        let mut flight = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut flight).unwrap();
        }
        let mut rest = &flight[..];
        while !rest.is_empty() {
            server.read_tls(&mut rest).unwrap();
            server.process_new_packets()?;
        }
        let mut flight = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut flight).unwrap();
        }
        let mut rest = &flight[..];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking() && !server.is_handshaking() {
            let leaf = |c: Option<&[rustls::pki_types::CertificateDer<'_>]>| {
                c.and_then(|c| c.first()).map(|c| sha256_hex(c))
            };
            let server_leaf = leaf(client.peer_certificates()).expect("server certificate");
            return Ok((server_leaf, leaf(server.peer_certificates())));
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn dropped_handles_leave_no_thread_behind() {
    let _turn = one_at_a_time();
    let files = Files::new();
    let baseline = settled_thread_count();
    {
        let bundle = || IdentitySource::bundle(files.path("server.pem"));
        let watched = ReloadingIdentity::builder(bundle()).build().unwrap();
        let polled = ReloadingIdentity::builder(bundle())
            .detection(Detection::Poll {
                interval: Duration::from_millis(50),
            })
            .build()
            .unwrap();
        let set = ServerIdentities::builder()
            .identity(bundle(), MemberOptions::named("one").default_identity(true))
            .identity(bundle(), MemberOptions::named("two"))
            .build()
            .unwrap();
        let trust = ReloadingTrust::builder(TrustSource::cas([files.path("ca.pem")]))
            .build()
            .unwrap();
        let client_identity =
            ReloadingIdentity::builder(IdentitySource::bundle(files.path("client.pem")))
                .detection(Detection::Manual)
                .build()
                .unwrap();
        let server_configs = ReloadingServerConfig::builder(&watched)
            .client_trust(&trust)
            .build()
            .unwrap();
        let client_configs = ReloadingClientConfig::builder(&trust)
            .identities(vec![client_identity])
            .build()
            .unwrap();
        // Resolvers and configurations hold the handles too: make some and use them.
        let by_sni = Arc::new(
            common::server_builder()
                .with_no_client_auth()
                .with_cert_resolver(set.resolver()),
        );
        let polled_config = Arc::new(
            common::server_builder()
                .with_no_client_auth()
                .with_cert_resolver(polled.resolver()),
        );
        let client = client_configs.current();
        handshake(server_configs.current(), client.clone()).unwrap();
        handshake(by_sni.clone(), client.clone()).unwrap();
        handshake(polled_config.clone(), client.clone()).unwrap();

        // At least: the watched identity, the set and the trust (a detector thread and an
        // inotify thread each) and the polled identity (a detector thread). A new thread
        // carries its creator's name until it sets its own: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while threads().len() < baseline + 7 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let running = threads();
        assert!(
            running.len() >= baseline + 7,
            "expected the detector threads to run, baseline {baseline}: {running:?}"
        );
        drop((watched, polled, set, trust, server_configs, client_configs));
        drop((by_sni, polled_config, client));
    }
    // Detector threads are joined on drop; notify's inotify thread ends shortly after its
    // watcher is dropped.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = threads();
        if now.len() <= baseline {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "threads left behind (baseline {baseline}): {now:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn works_without_an_async_runtime() {
    let _turn = one_at_a_time();
    // Plain std threads: no tokio (or other) runtime exists in this process's tests.
    assert!(tokio::runtime::Handle::try_current().is_err());
    let files = Files::new();
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(files.path("server.pem")))
        .build()
        .unwrap();
    let trust = ReloadingTrust::builder(TrustSource::cas([files.path("ca.pem")]))
        .build()
        .unwrap();
    let client_identity =
        ReloadingIdentity::builder(IdentitySource::bundle(files.path("client.pem")))
            .build()
            .unwrap();
    let server = ReloadingServerConfig::builder(&identity)
        .client_trust(&trust)
        .build()
        .unwrap();
    let client = ReloadingClientConfig::builder(&trust)
        .identities(vec![client_identity.clone()])
        .configure(|c| c.resumption = rustls::client::Resumption::disabled())
        .build()
        .unwrap();
    let first = identity.current().unwrap().value.leaf().fingerprint.clone();
    let (seen, client_seen) = handshake(server.current(), client.current()).unwrap();
    assert_eq!(seen, first);
    assert_eq!(
        client_seen.as_deref(),
        Some(
            client_identity
                .current()
                .unwrap()
                .value
                .leaf()
                .fingerprint
                .as_str()
        )
    );

    // A rotation is picked up by the detector thread and served by the next handshake.
    let rotated = files.issue_server();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (seen, _) = handshake(server.current(), client.current()).unwrap();
        if seen == rotated {
            break;
        }
        assert!(Instant::now() < deadline, "rotation not served in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(identity.status().generation, 2);
}
