//! The verdict on a peer's certificate is taken with the trust current when the certificate is
//! verified, not when the TCP connection was accepted (behaviour contract item 7).
//!
//! The attack: open a TCP connection and leave it idle, so the server has already picked the
//! configuration of that moment; wait for the revocation (or the CA's removal) to land; then
//! handshake on the old socket. Also: resuming, on such a socket, a session made before the
//! change; and a trust reload that lands while a configuration is being built. Real handshakes
//! on loopback, TLS 1.2 and 1.3.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{connect, wait_for, Server, PATIENCE};
use hitless::{
    Detection, IdentitySource, ReloadingClientConfig, ReloadingIdentity, ReloadingServerConfig,
    ReloadingTrust, TrustSource,
};
use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use rustls::pki_types::ServerName;
use rustls::version::{TLS12, TLS13};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned, SupportedProtocolVersion,
};
use time::Duration as TimeDuration;

struct Setup {
    server_ca: Ca,
    server: Server,
    configs: ReloadingServerConfig,
    _trust: ReloadingTrust,
    _identity: ReloadingIdentity,
}

/// A server (its own CA) whose client trust is `ca_file` + `crls`; the configuration is taken
/// when a TCP connection is accepted, as an accept loop does.
fn setup(dir: &Path, ca_file: &Path, crls: &[&Path]) -> Setup {
    let server_ca = Ca::new_root("Server CA", KeyType::EcP256);
    let leaf = server_ca.issue(&LeafSpec::server("localhost"));
    let bundle = dir.join("server.pem");
    fs::write(&bundle, leaf.bundle_pem(KeyFormat::Pkcs8)).unwrap();
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&bundle))
        .build()
        .unwrap();
    let trust =
        ReloadingTrust::builder(TrustSource::cas([ca_file]).with_crls(crls.iter().copied()))
            .detection(Detection::Watch)
            .build()
            .unwrap();
    let configs = ReloadingServerConfig::builder(&identity)
        .client_trust(&trust)
        .build()
        .unwrap();
    let c = configs.clone();
    let server = Server::start_with(move || c.current());
    Setup {
        server_ca,
        server,
        configs,
        _trust: trust,
        _identity: identity,
    }
}

fn client(
    server_ca: &Ca,
    leaf: &Leaf,
    version: &'static SupportedProtocolVersion,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.rustls_cert()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(common::provider())
            .with_protocol_versions(&[version])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(leaf.rustls_chain(), leaf.rustls_key())
            .unwrap(),
    )
}

/// A TCP connection the server has accepted (and so taken its configuration for), idle.
fn idle_tcp(setup: &Setup) -> TcpStream {
    let tcp = TcpStream::connect(setup.server.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The test server takes the configuration right after accept(); give it the moment.
    std::thread::sleep(Duration::from_millis(200));
    tcp
}

/// Handshakes on an already open socket and sends one request. `Ok(resumed)` if the server
/// let the client in.
fn handshake_on(tcp: TcpStream, config: &Arc<ClientConfig>) -> Result<bool, String> {
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    // In TLS 1.3 the client finishes before the server has verified its certificate: the
    // server's verdict arrives as an alert on the first read.
    tls.write_all(b"ping\n")
        .and_then(|_| tls.flush())
        .map_err(|e| format!("request: {e}"))?;
    let mut line = String::new();
    BufReader::new(&mut tls)
        .read_line(&mut line)
        .map_err(|e| format!("answer: {e}"))?;
    if line == "ok\n" {
        Ok(resumed)
    } else {
        Err(format!("no answer (got {line:?})"))
    }
}

fn wait_for_trust_change(setup: &Setup, before: u64) {
    wait_for("the trust change to be applied", PATIENCE, || {
        (setup.configs.trust_generation() > before).then_some(())
    });
}

/// A client revoked while its idle TCP connection waits is refused on that connection.
fn revocation_on_an_old_socket(version: &'static SupportedProtocolVersion) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    let revoked = ca.issue(&LeafSpec::client("to-be-revoked"));
    let ca_file = dir.path().join("clients-ca.pem");
    let crl_file = dir.path().join("clients.crl");
    fs::write(&ca_file, ca.cert_pem()).unwrap();
    fs::write(&crl_file, ca.crl(&[], TimeDuration::hours(1)).pem).unwrap();
    let s = setup(dir.path(), &ca_file, &[&crl_file]);
    let config = client(&s.server_ca, &revoked, version);

    // Control: the same steps without a change get in.
    let control = idle_tcp(&s);
    handshake_on(control, &config).expect("accepted on an idle socket before revocation");

    let old_socket = idle_tcp(&s);
    let before = s.configs.trust_generation();
    let crl = ca.crl(
        std::slice::from_ref(&revoked.serial),
        TimeDuration::hours(1),
    );
    write_atomic(&crl_file, crl.pem.as_bytes());
    wait_for_trust_change(&s, before);
    let r = handshake_on(old_socket, &config);
    assert!(
        r.is_err(),
        "{version:?}: revoked client got in on a TCP connection accepted before the CRL \
         changed (resumed: {r:?})"
    );
    assert!(
        connect(s.server.addr, &config, "localhost").is_err(),
        "{version:?}: revoked client got in on a new connection"
    );
}

#[test]
fn revoked_client_refused_on_a_socket_opened_before_the_crl_tls13() {
    revocation_on_an_old_socket(&TLS13);
}

#[test]
fn revoked_client_refused_on_a_socket_opened_before_the_crl_tls12() {
    revocation_on_an_old_socket(&TLS12);
}

/// A client of a CA removed from the bundle while its idle TCP connection waits is refused.
fn removed_ca_on_an_old_socket(version: &'static SupportedProtocolVersion) {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new_root("Client CA 1", KeyType::EcP256);
    let ca2 = Ca::new_root("Client CA 2", KeyType::EcP256);
    let client1 = ca1.issue(&LeafSpec::client("client-of-ca1"));
    let client2 = ca2.issue(&LeafSpec::client("client-of-ca2"));
    let ca_file = dir.path().join("clients-ca.pem");
    fs::write(&ca_file, format!("{}{}", ca1.cert_pem(), ca2.cert_pem())).unwrap();
    let s = setup(dir.path(), &ca_file, &[]);
    let c1 = client(&s.server_ca, &client1, version);
    let c2 = client(&s.server_ca, &client2, version);

    let old_socket_1 = idle_tcp(&s);
    let old_socket_2 = idle_tcp(&s);
    let before = s.configs.trust_generation();
    write_atomic(&ca_file, ca2.cert_pem().as_bytes());
    wait_for_trust_change(&s, before);
    let r = handshake_on(old_socket_1, &c1);
    assert!(
        r.is_err(),
        "{version:?}: a client of the removed CA got in on a TCP connection accepted before \
         the change ({r:?})"
    );
    handshake_on(old_socket_2, &c2).expect("a client of the CA still trusted gets in");
}

#[test]
fn client_of_a_removed_ca_refused_on_a_socket_opened_before_the_change_tls13() {
    removed_ca_on_an_old_socket(&TLS13);
}

#[test]
fn client_of_a_removed_ca_refused_on_a_socket_opened_before_the_change_tls12() {
    removed_ca_on_an_old_socket(&TLS12);
}

/// A session made before the revocation is not resumed on a socket accepted before it either:
/// the old configuration's session cache and ticketer no longer hand it out.
fn resumption_on_an_old_socket(version: &'static SupportedProtocolVersion, tickets: bool) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    let revoked = ca.issue(&LeafSpec::client("to-be-revoked"));
    let ca_file = dir.path().join("clients-ca.pem");
    let crl_file = dir.path().join("clients.crl");
    fs::write(&ca_file, ca.cert_pem()).unwrap();
    fs::write(&crl_file, ca.crl(&[], TimeDuration::hours(1)).pem).unwrap();

    let server_ca = Ca::new_root("Server CA", KeyType::EcP256);
    let leaf = server_ca.issue(&LeafSpec::server("localhost"));
    let bundle = dir.path().join("server.pem");
    fs::write(&bundle, leaf.bundle_pem(KeyFormat::Pkcs8)).unwrap();
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&bundle))
        .build()
        .unwrap();
    let trust = ReloadingTrust::builder(TrustSource::cas([&ca_file]).with_crls([&crl_file]))
        .build()
        .unwrap();
    // One ticketer shared by every configuration (the worst case: the same ticket keys before
    // and after the change).
    let ticketer = common::ticketer();
    let configs = ReloadingServerConfig::builder(&identity)
        .client_trust(&trust)
        .configure(move |c| {
            if tickets {
                c.ticketer = ticketer.clone();
            }
        })
        .build()
        .unwrap();
    let c = configs.clone();
    let s = Setup {
        server_ca,
        server: Server::start_with(move || c.current()),
        configs,
        _trust: trust,
        _identity: identity,
    };
    let config = client(&s.server_ca, &revoked, version);

    handshake_on(idle_tcp(&s), &config).expect("full handshake before revocation");
    let resumed = handshake_on(idle_tcp(&s), &config).expect("resumes before revocation");
    assert!(
        resumed,
        "{version:?}: control failed, the client did not resume"
    );

    let old_socket = idle_tcp(&s);
    let before = s.configs.trust_generation();
    let crl = ca.crl(
        std::slice::from_ref(&revoked.serial),
        TimeDuration::hours(1),
    );
    write_atomic(&crl_file, &crl.der);
    wait_for_trust_change(&s, before);
    let r = handshake_on(old_socket, &config);
    assert!(
        r.is_err(),
        "{version:?} (tickets: {tickets}): the revoked client got in on a socket accepted \
         before the revocation (resumed: {r:?})"
    );
}

#[test]
fn no_resumption_after_revocation_on_an_old_socket_tls13() {
    resumption_on_an_old_socket(&TLS13, false);
}

#[test]
fn no_resumption_after_revocation_on_an_old_socket_tls13_tickets() {
    resumption_on_an_old_socket(&TLS13, true);
}

#[test]
fn no_resumption_after_revocation_on_an_old_socket_tls12() {
    resumption_on_an_old_socket(&TLS12, false);
}

#[test]
fn no_resumption_after_revocation_on_an_old_socket_tls12_tickets() {
    resumption_on_an_old_socket(&TLS12, true);
}

/// The client side: a `ClientConfig` taken before the client's trust revoked the server's
/// certificate neither resumes a session to that server nor accepts it on a full handshake.
#[test]
fn client_config_taken_before_a_revocation_neither_resumes_nor_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new_root("Server CA", KeyType::EcP256);
    let server_leaf = server_ca.issue(&LeafSpec::server("localhost"));
    let server_config = Arc::new(
        common::server_builder()
            .with_no_client_auth()
            .with_single_cert(server_leaf.rustls_chain(), server_leaf.rustls_key())
            .unwrap(),
    );
    let server = Server::start(server_config);

    let ca_file = dir.path().join("server-ca.pem");
    let crl_file = dir.path().join("server-ca.crl");
    fs::write(&ca_file, server_ca.cert_pem()).unwrap();
    fs::write(&crl_file, server_ca.crl(&[], TimeDuration::hours(1)).pem).unwrap();
    let trust = ReloadingTrust::builder(TrustSource::cas([&ca_file]).with_crls([&crl_file]))
        .build()
        .unwrap();
    let configs = ReloadingClientConfig::builder(&trust).build().unwrap();
    let old = configs.current();
    connect(server.addr, &old, "localhost").expect("full handshake");
    let again = connect(server.addr, &old, "localhost").expect("resumed handshake");
    assert!(again.resumed, "control failed: the client did not resume");

    let before = trust.status().generation;
    let crl = server_ca.crl(
        std::slice::from_ref(&server_leaf.serial),
        TimeDuration::hours(1),
    );
    write_atomic(&crl_file, crl.pem.as_bytes());
    wait_for("the client trust to change", PATIENCE, || {
        (trust.status().generation > before).then_some(())
    });
    let r = connect(server.addr, &old, "localhost");
    assert!(
        r.is_err(),
        "a revoked server was accepted with a configuration taken before the revocation \
         (resumed: {:?})",
        r.as_ref().map(|c| c.resumed)
    );
    assert!(connect(server.addr, &configs.current(), "localhost").is_err());
}

/// A trust reload that lands while the first configuration is being built (after it read the
/// trust, before it subscribed to trust events) is not missed.
#[test]
fn a_trust_reload_during_the_first_build_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new_root("Client CA 1", KeyType::EcP256);
    let ca2 = Ca::new_root("Client CA 2", KeyType::EcP256);
    let ca_file = dir.path().join("clients-ca.pem");
    fs::write(&ca_file, ca1.cert_pem()).unwrap();
    let trust = ReloadingTrust::builder(TrustSource::cas([&ca_file]))
        .detection(Detection::Manual)
        .build()
        .unwrap();
    let server_ca = Ca::new_root("Server CA", KeyType::EcP256);
    let leaf = server_ca.issue(&LeafSpec::server("localhost"));
    let bundle = dir.path().join("server.pem");
    fs::write(&bundle, leaf.bundle_pem(KeyFormat::Pkcs8)).unwrap();
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&bundle))
        .build()
        .unwrap();

    // `configure` runs inside the first build, after the trust was read: reload it there.
    let reloaded = Arc::new(AtomicBool::new(false));
    let (t, r, f) = (trust.clone(), reloaded.clone(), ca_file.clone());
    let ca2_pem = ca2.cert_pem();
    let configs = ReloadingServerConfig::builder(&identity)
        .client_trust(&trust)
        .configure(move |_| {
            if !r.swap(true, Ordering::SeqCst) {
                write_atomic(&f, ca2_pem.as_bytes());
                t.reload().expect("reload to CA 2");
            }
        })
        .build()
        .unwrap();
    assert!(reloaded.load(Ordering::SeqCst));
    assert_eq!(trust.status().generation, 2);
    assert_eq!(
        configs.trust_generation(),
        2,
        "the configuration still follows the trust it read before the reload"
    );
    let c = configs.clone();
    let server = Server::start_with(move || c.current());
    let client2 = ca2.issue(&LeafSpec::client("client-of-ca2"));
    connect(
        server.addr,
        &client(&server_ca, &client2, &TLS13),
        "localhost",
    )
    .expect("a client of the CA trusted now gets in");
}
