//! The SPIFFE Workload API as a source (feature `spiffe`): a `SpiffeSource` follows the fake
//! agent (`hitless-spiffe-fake`: the real gRPC service on a real unix socket) and serves real
//! rustls handshakes on loopback. Run with `cargo test -p hitless --features spiffe --test spiffe`.
#![cfg(feature = "spiffe")]

mod common;
#[path = "../examples/spiffe_mtls.rs"]
#[allow(dead_code)]
mod spiffe_mtls;

use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{client_builder, connect, provider, wait_for, Server, PATIENCE};
use hitless::{Event, Health, ReloadingServerConfig, SpiffeSource};
use hitless_spiffe_fake::{FakeWorkloadApi, Svid};
use hitless_test_pki::{Ca, KeyType, Leaf, LeafSpec};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

const TD: &str = "example.org";
const SERVER_ID: &str = "spiffe://example.org/ns/prod/web";
const CLIENT_ID: &str = "spiffe://example.org/ns/prod/client";

/// An X.509-SVID for `id` from `ca`. X.509-SVIDs may carry DNS SANs besides their one URI SAN:
/// `localhost` lets the test clients verify the server by name.
fn issue(ca: &Ca, id: &str) -> Leaf {
    ca.issue(&LeafSpec::svid(id).dns(vec!["localhost"]))
}

fn svid(leaf: &Leaf, id: &str) -> Svid {
    Svid::new(
        id,
        leaf.rustls_chain().iter().map(|c| c.to_vec()).collect(),
        leaf.key_pkcs8_der.clone(),
    )
}

/// A runtime for the fake agent and the source's stream; the test itself runs blocking
/// handshakes on its own thread, as an application's accept threads would.
struct World {
    rt: tokio::runtime::Runtime,
    agent: FakeWorkloadApi,
    _dir: tempfile::TempDir,
}

impl World {
    fn start(ca: &Ca, server: &Leaf) -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let agent = rt
            .block_on(FakeWorkloadApi::start(dir.path().join("agent.sock")))
            .unwrap();
        agent.update(|c| {
            c.svids = vec![svid(server, SERVER_ID)];
            c.bundles.insert(TD.into(), vec![ca.cert_der()]);
        });
        World {
            rt,
            agent,
            _dir: dir,
        }
    }

    fn source(&self) -> SpiffeSource {
        self.rt
            .block_on(
                SpiffeSource::builder()
                    .endpoint(self.agent.endpoint())
                    .crypto_provider(provider())
                    .backoff(Duration::from_millis(100), Duration::from_millis(500))
                    .connect(),
            )
            .expect("the source connects and gets the first SVID")
    }
}

/// A server requiring client certificates from the source's bundle, presenting its SVID.
fn server(source: &SpiffeSource) -> Server {
    let configs = ReloadingServerConfig::builder(source.identity())
        .client_trust(source.trust())
        .crypto_provider(provider())
        .build()
        .unwrap();
    Server::start_with(move || configs.current())
}

/// A client trusting `cas` and presenting `leaf`, no resumption (every connection is a full
/// handshake, so each one shows the current SVID and the current trust's verdict).
fn client(cas: &[&Ca], leaf: &Leaf) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots.add(ca.rustls_cert()).unwrap();
    }
    let mut config = client_builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(leaf.rustls_chain(), leaf.rustls_key())
        .unwrap();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// Handshakes in a loop until stopped (bounded: 60 s and 100 000 attempts), counting failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, config: Arc<ClientConfig>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let thread = thread::spawn(move || {
            let start = Instant::now();
            for _ in 0..100_000 {
                if s.load(Ordering::SeqCst) || start.elapsed() > Duration::from_secs(60) {
                    break;
                }
                match connect(addr, &config, "localhost") {
                    Ok(_) => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => f.lock().unwrap().push(e),
                }
                thread::sleep(Duration::from_millis(2));
            }
        });
        Load {
            stop,
            ok,
            failures,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns (successful handshakes, failures).
    fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::SeqCst),
            self.failures.lock().unwrap().clone(),
        )
    }
}

/// Waits until a new handshake presents `leaf`.
fn wait_served(addr: std::net::SocketAddr, config: &Arc<ClientConfig>, leaf: &Leaf) {
    let want = leaf.fingerprint_sha256_hex();
    wait_for("the new SVID on a new handshake", PATIENCE, || {
        connect(addr, config, "localhost")
            .ok()
            .filter(|c| c.fingerprint == want)
    });
}

#[test]
fn an_svid_rotation_is_served_on_the_next_handshake() {
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    let first = issue(&ca, SERVER_ID);
    let world = World::start(&ca, &first);
    let source = world.source();
    let server = server(&source);
    let me = issue(&ca, CLIENT_ID);
    let config = client(&[&ca], &me);

    let conn = connect(server.addr, &config, "localhost").expect("the first SVID is served");
    assert_eq!(conn.fingerprint, first.fingerprint_sha256_hex());
    let status = source.status();
    assert_eq!(status.spiffe_id.as_deref(), Some(SERVER_ID));
    assert_eq!(status.trust_domains, [TD]);
    assert!(status.connected);
    assert_eq!(source.identity().status().generation, 1);
    assert_eq!(source.trust().status().generation, 1);
    // The server saw our SVID, verified against the bundle from the agent.
    assert_eq!(
        server.clients.lock().unwrap().last().cloned(),
        Some(me.fingerprint_sha256_hex())
    );

    let next = issue(&ca, SERVER_ID);
    world.agent.set_svids(vec![svid(&next, SERVER_ID)]);
    wait_for("generation 2", PATIENCE, || {
        (source.identity().status().generation == 2).then_some(())
    });
    let conn = connect(server.addr, &config, "localhost").expect("the rotated SVID is served");
    assert_eq!(conn.fingerprint, next.fingerprint_sha256_hex());
    // The bundle did not change: the trust is still generation 1 (no needless trust change).
    assert_eq!(source.trust().status().generation, 1);
    assert!(source.status().updates >= 2);
}

#[test]
fn thirty_rotations_under_load_fail_no_handshake() {
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    let first = issue(&ca, SERVER_ID);
    let world = World::start(&ca, &first);
    let source = world.source();
    let server = server(&source);
    let config = client(&[&ca], &issue(&ca, CLIENT_ID));
    let load = Load::start(server.addr, config.clone());

    for i in 0..30 {
        let next = issue(&ca, SERVER_ID);
        world.agent.set_svids(vec![svid(&next, SERVER_ID)]);
        wait_served(server.addr, &config, &next);
        assert_eq!(source.identity().status().generation, i + 2);
    }
    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "failed handshakes: {failures:?}");
    assert!(ok > 0, "the load loop made handshakes");
    assert_eq!(source.identity().status().reloads_failed, 0);
}

#[test]
fn a_malformed_svid_is_never_served_and_is_reported() {
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    let stranger = Ca::new_root("not in the bundle", KeyType::EcP256);
    let good = issue(&ca, SERVER_ID);
    let world = World::start(&ca, &good);
    let source = world.source();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let f = failures.clone();
    source.identity().subscribe(move |e| {
        if let Event::ReloadFailed { error, .. } = e {
            f.lock().unwrap().push(error.message.clone());
        }
    });
    let server = server(&source);
    let config = client(&[&ca, &stranger], &issue(&ca, CLIENT_ID));

    let other = issue(&ca, SERVER_ID);
    let mismatched = Svid::new(
        SERVER_ID,
        vec![other.cert_der.clone()],
        issue(&ca, SERVER_ID).key_pkcs8_der,
    );
    let bad: [(&str, Svid, &str); 4] = [
        ("garbage", Svid::garbage(SERVER_ID), "malformed update"),
        (
            "a leaf with two URI SANs",
            svid(
                &ca.issue(
                    &LeafSpec::svid(SERVER_ID)
                        .dns(vec!["localhost"])
                        .uris(vec![SERVER_ID, "spiffe://example.org/other"]),
                ),
                SERVER_ID,
            ),
            "malformed update",
        ),
        (
            "a chain from a CA outside the bundle",
            svid(&issue(&stranger, SERVER_ID), SERVER_ID),
            "does not verify to the bundle",
        ),
        ("a key that is not the leaf's", mismatched, "key"),
    ];
    for (i, (what, svid, reason)) in bad.into_iter().enumerate() {
        world.agent.set_svids(vec![svid]);
        let status = wait_for(what, PATIENCE, || {
            let s = source.identity().status();
            (s.reloads_failed == i as u64 + 1).then_some(s)
        });
        let last = status
            .last_error
            .clone()
            .expect("the refusal is in the status");
        assert!(
            last.message.contains(reason),
            "{what}: {:?} should say {reason:?}",
            last.message
        );
        assert!(
            last.message.contains(&world.agent.endpoint()),
            "{what}: the message names the endpoint: {}",
            last.message
        );
        assert_eq!(status.generation, 1, "{what}");
        assert_eq!(
            status.health(std::time::SystemTime::now()),
            Health::Degraded
        );
        let conn = connect(server.addr, &config, "localhost").expect("the last good is served");
        assert_eq!(
            conn.fingerprint,
            good.fingerprint_sha256_hex(),
            "{what} must never be served"
        );
    }
    assert_eq!(
        failures.lock().unwrap().len(),
        4,
        "each refusal is announced"
    );
    assert_eq!(
        source.status().refused,
        3,
        "three refused by the SPIFFE rules"
    );

    let fixed = issue(&ca, SERVER_ID);
    world.agent.set_svids(vec![svid(&fixed, SERVER_ID)]);
    wait_served(server.addr, &config, &fixed);
    let status = source.identity().status();
    assert!(status.last_error.is_none());
    assert_eq!(status.health(std::time::SystemTime::now()), Health::Ok);
}

#[test]
fn the_stream_dropped_for_five_seconds_fails_no_handshake_and_reconnects() {
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    let first = issue(&ca, SERVER_ID);
    let world = World::start(&ca, &first);
    let source = world.source();
    let server = server(&source);
    let config = client(&[&ca], &issue(&ca, CLIENT_ID));
    let load = Load::start(server.addr, config.clone());

    world.rt.block_on(world.agent.stop());
    let outage = wait_for("the outage in the status", PATIENCE, || {
        source.identity().status().outage
    });
    assert!(!outage.reason.is_empty());
    assert!(source.trust().status().outage.is_some());
    assert!(!source.status().connected);
    assert_eq!(
        source
            .identity()
            .status()
            .health(std::time::SystemTime::now()),
        Health::Degraded
    );
    let before = source.status().outages;
    thread::sleep(Duration::from_secs(5));
    assert!(
        source.status().outages > before,
        "reconnection attempts continue (with backoff) during the outage"
    );
    let conn = connect(server.addr, &config, "localhost").expect("served during the outage");
    assert_eq!(conn.fingerprint, first.fingerprint_sha256_hex());

    world.agent.restart().unwrap();
    wait_for("the reconnection", PATIENCE, || {
        let s = source.status();
        (s.connected && s.reconnects >= 1).then_some(())
    });
    wait_for("the outage to end", PATIENCE, || {
        source.identity().status().outage.is_none().then_some(())
    });
    assert!(source.trust().status().outage.is_none());
    assert!(world.agent.x509_svid_calls() >= 2);
    // The new stream delivers: a rotation after the restart is served.
    let next = issue(&ca, SERVER_ID);
    world.agent.set_svids(vec![svid(&next, SERVER_ID)]);
    wait_served(server.addr, &config, &next);

    let (ok, failures) = load.finish();
    assert!(failures.is_empty(), "failed handshakes: {failures:?}");
    assert!(ok > 0);
}

/// A handshake with `config` on an already open TCP connection, then one request.
fn handshake_on(tcp: TcpStream, config: &Arc<ClientConfig>) -> Result<(), String> {
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = ClientConnection::new(config.clone(), ServerName::try_from("localhost").unwrap())
        .map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    use std::io::{BufRead, BufReader, Write};
    tls.write_all(b"ping\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&mut tls)
        .read_line(&mut line)
        .map_err(|e| format!("request: {e}"))?;
    (line == "ok\n")
        .then_some(())
        .ok_or(format!("answer {line:?}"))
}

#[test]
fn a_bundle_rotation_ca1_to_ca2_refuses_ca1_clients_even_on_connections_opened_before() {
    let ca1 = Ca::new_root("example.org CA 1", KeyType::EcP256);
    let ca2 = Ca::new_root("example.org CA 2", KeyType::EcP256);
    let server_by_1 = issue(&ca1, SERVER_ID);
    let world = World::start(&ca1, &server_by_1);
    let source = world.source();
    let server = server(&source);
    // The clients trust both CAs for the server; what is tested is the server's verdict.
    let client1 = client(&[&ca1, &ca2], &issue(&ca1, CLIENT_ID));
    let client2 = client(&[&ca1, &ca2], &issue(&ca2, CLIENT_ID));

    connect(server.addr, &client1, "localhost").expect("CA1 client accepted with bundle CA1");
    assert!(
        connect(server.addr, &client2, "localhost").is_err(),
        "CA2 client refused with bundle CA1"
    );

    // CA1 + CA2: both accepted.
    world
        .agent
        .set_bundle(TD, vec![ca1.cert_der(), ca2.cert_der()]);
    wait_for("trust generation 2", PATIENCE, || {
        (source.trust().status().generation == 2).then_some(())
    });
    connect(server.addr, &client1, "localhost").expect("CA1 client accepted with CA1+CA2");
    connect(server.addr, &client2, "localhost").expect("CA2 client accepted with CA1+CA2");

    // A connection opened (and accepted, its configuration taken) before the final update.
    // The server takes its configuration on accept: give it the time to (were it later, the
    // test would only be weaker, never wrong).
    let early = TcpStream::connect(server.addr).unwrap();
    thread::sleep(Duration::from_millis(200));

    // CA2 only, and the server's SVID from CA2: one update.
    let server_by_2 = issue(&ca2, SERVER_ID);
    world.agent.update(|c| {
        c.svids = vec![svid(&server_by_2, SERVER_ID)];
        c.bundles.insert(TD.into(), vec![ca2.cert_der()]);
    });
    wait_for("trust generation 3", PATIENCE, || {
        (source.trust().status().generation == 3).then_some(())
    });
    wait_served(server.addr, &client2, &server_by_2);
    let refused = connect(server.addr, &client1, "localhost");
    assert!(
        refused.is_err(),
        "CA1 client refused after the final update"
    );
    let early_result = handshake_on(early, &client1);
    assert!(
        early_result.is_err(),
        "CA1 client refused on a connection opened before the final update"
    );
    connect(server.addr, &client2, "localhost").expect("CA2 client accepted with bundle CA2");
    assert_eq!(source.identity().status().reloads_failed, 0);
    assert_eq!(source.trust().status().reloads_failed, 0);
}

#[test]
fn the_endpoint_comes_from_spiffe_endpoint_socket_and_a_missing_one_is_a_clear_error() {
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    let first = issue(&ca, SERVER_ID);
    let world = World::start(&ca, &first);
    // Only this test touches the variable in this test binary.
    std::env::set_var(hitless::SPIFFE_ENDPOINT_SOCKET, world.agent.endpoint());
    let source = world
        .rt
        .block_on(
            SpiffeSource::builder()
                .crypto_provider(provider())
                .connect(),
        )
        .expect("connects to the endpoint of SPIFFE_ENDPOINT_SOCKET");
    assert_eq!(source.endpoint(), world.agent.endpoint());
    assert_eq!(source.status().spiffe_id.as_deref(), Some(SERVER_ID));
    std::env::remove_var(hitless::SPIFFE_ENDPOINT_SOCKET);
    let e = world
        .rt
        .block_on(
            SpiffeSource::builder()
                .crypto_provider(provider())
                .connect(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("SPIFFE_ENDPOINT_SOCKET"), "{e}");

    // A socket nobody listens on: a clear error after the wait, naming the endpoint.
    let nowhere = Path::new(world.agent.socket_path()).with_file_name("nobody.sock");
    let e = world
        .rt
        .block_on(
            SpiffeSource::builder()
                .endpoint(nowhere.to_str().unwrap())
                .crypto_provider(provider())
                .backoff(Duration::from_millis(50), Duration::from_millis(100))
                .first_update_timeout(Duration::from_millis(500))
                .connect(),
        )
        .unwrap_err();
    let message = e.to_string();
    assert!(message.contains("nobody.sock"), "{message}");
    assert!(message.contains("no valid X.509-SVID"), "{message}");
}

#[test]
fn the_spiffe_mtls_example_follows_rotations_without_a_failed_call() {
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    let first = issue(&ca, SERVER_ID);
    let world = World::start(&ca, &first);
    let source = world.source();
    let rotated = Arc::new(AtomicU64::new(0));
    let report = thread::scope(|scope| {
        let (agent, rotated) = (&world.agent, rotated.clone());
        scope.spawn(move || {
            for _ in 0..8 {
                thread::sleep(Duration::from_millis(300));
                agent.set_svids(vec![svid(&issue(&ca, SERVER_ID), SERVER_ID)]);
                rotated.fetch_add(1, Ordering::SeqCst);
            }
        });
        world
            .rt
            .block_on(spiffe_mtls::exercise(&source, Duration::from_secs(4)))
            .unwrap()
    });
    assert_eq!(rotated.load(Ordering::SeqCst), 8);
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.ok > 0, "{report:?}");
    assert!(
        report.svids_served >= 2,
        "rotations were served: {report:?}"
    );
}

#[test]
fn an_svid_expiring_during_an_outage_is_announced() {
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    let now = time::OffsetDateTime::now_utc();
    let short = ca.issue(&LeafSpec::svid(SERVER_ID).dns(vec!["localhost"]).valid(
        now - time::Duration::hours(1),
        now + time::Duration::seconds(3),
    ));
    let world = World::start(&ca, &short);
    let source = world.source();
    let expired = Arc::new(AtomicBool::new(false));
    let e = expired.clone();
    source.identity().subscribe(move |event| {
        if matches!(event, Event::Expired { .. }) {
            e.store(true, Ordering::SeqCst);
        }
    });
    world.rt.block_on(world.agent.stop());
    wait_for("the outage", PATIENCE, || source.identity().status().outage);
    // Nothing is published during the outage; the source still notices the expiry.
    wait_for("the Expired event", PATIENCE, || {
        expired.load(Ordering::SeqCst).then_some(())
    });
    let status = source.identity().status();
    assert_eq!(status.health(std::time::SystemTime::now()), Health::Expired);
    assert_eq!(
        status.generation, 1,
        "the expired SVID is still the one served"
    );
}

#[test]
fn a_client_verifies_the_server_by_spiffe_id_not_by_name() {
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    // An SVID as SPIRE issues it by default: the SPIFFE ID only, no DNS name.
    let first = ca.issue(&LeafSpec::svid(SERVER_ID));
    let world = World::start(&ca, &first);
    let source = world.source();
    let server = server(&source);
    let client_allowing = |patterns: &[&str]| {
        let verifier = hitless::SpiffeServerCertVerifier::new(
            source.trust(),
            hitless::SpiffeIdMatcher::new(patterns).unwrap(),
        );
        hitless::ReloadingClientConfig::builder(source.trust())
            .identities(vec![source.identity().clone()])
            .crypto_provider(provider())
            .configure(move |c| {
                c.dangerous().set_certificate_verifier(verifier.clone());
                c.resumption = rustls::client::Resumption::disabled();
            })
            .build()
            .unwrap()
    };

    let exact = client_allowing(&[SERVER_ID]);
    let conn = connect(server.addr, &exact.current(), "any-name")
        .expect("the server's SPIFFE ID is allowed; the name is not checked");
    assert_eq!(conn.fingerprint, first.fingerprint_sha256_hex());
    let under = client_allowing(&["spiffe://example.org/ns/prod/*"]);
    connect(server.addr, &under.current(), "localhost").expect("allowed by prefix");

    let elsewhere = client_allowing(&["spiffe://example.org/ns/dev/*", CLIENT_ID]);
    let e = connect(server.addr, &elsewhere.current(), "localhost")
        .err()
        .expect("a server outside the allowed IDs is refused");
    assert!(e.contains("not allowed"), "{e}");

    // A name-checking client cannot talk to this server at all: why the verifier exists.
    let by_name = hitless::ReloadingClientConfig::builder(source.trust())
        .identities(vec![source.identity().clone()])
        .crypto_provider(provider())
        .build()
        .unwrap();
    assert!(connect(server.addr, &by_name.current(), "localhost").is_err());

    // The chain still counts: after a bundle rotation to another CA (and the server's SVID
    // with it), the verifier takes the new trust, and an SVID of the old CA is refused.
    let ca2 = Ca::new_root("example.org CA 2", KeyType::EcP256);
    let second = ca2.issue(&LeafSpec::svid(SERVER_ID));
    world.agent.update(|c| {
        c.svids = vec![svid(&second, SERVER_ID)];
        c.bundles.insert(TD.into(), vec![ca2.cert_der()]);
    });
    wait_for("the new SVID served", PATIENCE, || {
        connect(server.addr, &exact.current(), "localhost")
            .ok()
            .filter(|c| c.fingerprint == second.fingerprint_sha256_hex())
    });
    let stale = Server::start(Arc::new(
        common::server_builder()
            .with_no_client_auth()
            .with_single_cert(first.rustls_chain(), first.rustls_key())
            .unwrap(),
    ));
    let e = connect(stale.addr, &exact.current(), "localhost")
        .err()
        .expect("an SVID of a CA no longer in the bundle is refused");
    assert!(e.contains("UnknownIssuer") || e.contains("issuer"), "{e}");
}

#[test]
fn a_server_admits_only_clients_with_allowed_spiffe_ids() {
    let ca = Ca::new_root("example.org CA", KeyType::EcP256);
    let first = issue(&ca, SERVER_ID);
    let world = World::start(&ca, &first);
    let source = world.source();
    let configs = ReloadingServerConfig::builder(source.identity())
        .client_trust_spiffe(
            source.trust(),
            hitless::SpiffeIdMatcher::new(["spiffe://example.org/ns/prod/*"]).unwrap(),
        )
        .crypto_provider(provider())
        .build()
        .unwrap();
    let server = Server::start_with(move || configs.current());

    let allowed = issue(&ca, CLIENT_ID);
    connect(server.addr, &client(&[&ca], &allowed), "localhost")
        .expect("a client under spiffe://example.org/ns/prod/ is admitted");
    for (what, leaf) in [
        (
            "another path",
            issue(&ca, "spiffe://example.org/ns/dev/client"),
        ),
        (
            "another trust domain's ID, same CA",
            issue(&ca, "spiffe://other.org/ns/prod/client"),
        ),
        ("no SPIFFE ID", ca.issue(&LeafSpec::client("plain client"))),
        (
            "two URI SANs",
            ca.issue(
                &LeafSpec::svid(CLIENT_ID).uris(vec![CLIENT_ID, "spiffe://example.org/ns/prod/x"]),
            ),
        ),
    ] {
        let e = connect(server.addr, &client(&[&ca], &leaf), "localhost")
            .err()
            .unwrap_or_else(|| panic!("{what}: must be refused"));
        assert!(!e.is_empty(), "{what}");
    }
    // The chain is still required: an allowed ID from a CA outside the bundle is refused.
    let stranger = Ca::new_root("not in the bundle", KeyType::EcP256);
    assert!(connect(
        server.addr,
        &client(&[&ca], &issue(&stranger, CLIENT_ID)),
        "localhost"
    )
    .is_err());
    // Only the allowed client's certificate ever reached the application.
    assert_eq!(
        *server.clients.lock().unwrap(),
        [allowed.fingerprint_sha256_hex()]
    );
}
