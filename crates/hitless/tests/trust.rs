//! Mutual TLS with reloading trust: CA rotation, CRLs, resumption after a trust change, the
//! CertificateRequest's CA names, and client-certificate selection. Real handshakes on loopback.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{connect, wait_for, Server, PATIENCE};
use hitless::{
    ClientIdentityResolver, Detection, IdentitySource, ReloadingIdentity, ReloadingServerConfig,
    ReloadingTrust, TrustSource,
};
use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use time::Duration as TimeDuration;

struct Setup {
    server_ca: Ca,
    server: Server,
    configs: ReloadingServerConfig,
    trust: ReloadingTrust,
    _identity: ReloadingIdentity,
}

/// A server whose identity comes from its own CA and whose client trust is `ca_file` (+ CRLs).
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
        trust,
        _identity: identity,
    }
}

fn client(
    server_ca: &Ca,
    leaf: &Leaf,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.rustls_cert()).unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(common::provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(leaf.rustls_chain(), leaf.rustls_key())
            .unwrap(),
    )
}

fn tls13(server_ca: &Ca, leaf: &Leaf) -> Arc<ClientConfig> {
    client(server_ca, leaf, &[&rustls::version::TLS13])
}

/// A client resolver that records the CA names of the CertificateRequest.
#[derive(Debug)]
struct Recorder {
    key: Arc<CertifiedKey>,
    hints: Mutex<Vec<Vec<u8>>>,
}

impl ResolvesClientCert for Recorder {
    fn resolve(&self, hints: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        *self.hints.lock().unwrap() = hints.iter().map(|h| h.to_vec()).collect();
        Some(self.key.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn requested_cas(setup: &Setup, leaf: &Leaf) -> HashSet<Vec<u8>> {
    let key = common::provider()
        .key_provider
        .load_private_key(leaf.rustls_key())
        .unwrap();
    let recorder = Arc::new(Recorder {
        key: Arc::new(CertifiedKey::new(leaf.rustls_chain(), key)),
        hints: Mutex::default(),
    });
    let mut roots = RootCertStore::empty();
    roots.add(setup.server_ca.rustls_cert()).unwrap();
    let config = Arc::new(
        common::client_builder()
            .with_root_certificates(roots)
            .with_client_cert_resolver(recorder.clone()),
    );
    let _ = connect(setup.server.addr, &config, "localhost");
    let hints = recorder.hints.lock().unwrap().clone();
    hints.into_iter().collect()
}

#[test]
fn client_ca_rotation_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new_root("Client CA 1", KeyType::EcP256);
    let ca2 = Ca::new_root("Client CA 2", KeyType::EcP384);
    let client1 = ca1.issue(&LeafSpec::client("client-1"));
    let client2 = ca2.issue(&LeafSpec::client("client-2"));
    let ca_file = dir.path().join("clients-ca.pem");
    fs::write(&ca_file, ca1.cert_pem()).unwrap();
    let s = setup(dir.path(), &ca_file, &[]);
    let c1 = tls13(&s.server_ca, &client1);
    let c2 = tls13(&s.server_ca, &client2);

    connect(s.server.addr, &c1, "localhost").expect("CA1 client accepted");
    assert!(
        connect(s.server.addr, &c2, "localhost").is_err(),
        "CA2 client must be refused"
    );
    assert_eq!(
        requested_cas(&s, &client1),
        HashSet::from([ca1.subject_der()])
    );
    let mut open_ca1 = connect(s.server.addr, &c1, "localhost").unwrap();

    // CA1 + CA2: the CA2 client gets in, with no restart.
    write_atomic(
        &ca_file,
        format!("{}{}", ca1.cert_pem(), ca2.cert_pem()).as_bytes(),
    );
    wait_for("CA2 client accepted", PATIENCE, || {
        connect(s.server.addr, &c2, "localhost").ok()
    });
    connect(s.server.addr, &c1, "localhost").expect("CA1 client still accepted");
    assert_eq!(
        requested_cas(&s, &client1),
        HashSet::from([ca1.subject_der(), ca2.subject_der()]),
        "the CertificateRequest must name the CAs trusted now"
    );

    // CA2 only: CA1 clients refused on new handshakes; the open CA1 connection keeps working.
    write_atomic(&ca_file, ca2.cert_pem().as_bytes());
    wait_for("CA1 client refused", PATIENCE, || {
        connect(s.server.addr, &c1, "localhost")
            .is_err()
            .then_some(())
    });
    connect(s.server.addr, &c2, "localhost").expect("CA2 client accepted");
    assert_eq!(
        requested_cas(&s, &client2),
        HashSet::from([ca2.subject_der()])
    );
    open_ca1
        .ping()
        .expect("a connection opened before the change keeps working");
    assert_eq!(s.trust.status().generation, 3);
}

fn revocation_cannot_be_bypassed(versions: &[&'static rustls::SupportedProtocolVersion]) {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    let revoked = ca.issue(&LeafSpec::client("to-be-revoked"));
    let other = ca.issue(&LeafSpec::client("stays-good"));
    let ca_file = dir.path().join("clients-ca.pem");
    let crl_file = dir.path().join("clients.crl");
    fs::write(&ca_file, ca.cert_pem()).unwrap();
    fs::write(&crl_file, ca.crl(&[], TimeDuration::hours(1)).pem).unwrap();
    let s = setup(dir.path(), &ca_file, &[&crl_file]);
    let config = client(&s.server_ca, &revoked, versions);

    let first = connect(s.server.addr, &config, "localhost").expect("accepted before revocation");
    assert!(!first.resumed);
    // Control: without a trust change this client does resume.
    let second = connect(s.server.addr, &config, "localhost").expect("resumes before revocation");
    assert!(
        second.resumed,
        "{versions:?}: control failed, the client did not resume"
    );

    let generation = s.configs.trust_generation();
    // DER this time: CRLs are read in either form.
    write_atomic(
        &crl_file,
        &ca.crl(
            std::slice::from_ref(&revoked.serial),
            TimeDuration::hours(1),
        )
        .der,
    );
    wait_for("the CRL to be applied", PATIENCE, || {
        (s.configs.trust_generation() > generation).then_some(())
    });
    for attempt in 0..3 {
        let r = connect(s.server.addr, &config, "localhost");
        assert!(
            r.is_err(),
            "{versions:?}: revoked client got in (attempt {attempt}, resumed: {:?})",
            r.as_ref().map(|c| c.resumed)
        );
    }
    connect(
        s.server.addr,
        &client(&s.server_ca, &other, versions),
        "localhost",
    )
    .expect("a client that is not revoked still gets in");
    assert_eq!(s.trust.current().unwrap().value.crls()[0].revoked, 1);
}

#[test]
fn revoked_client_is_refused_and_cannot_resume_tls13() {
    revocation_cannot_be_bypassed(&[&rustls::version::TLS13]);
}

#[test]
fn revoked_client_is_refused_and_cannot_resume_tls12() {
    revocation_cannot_be_bypassed(&[&rustls::version::TLS12]);
}

#[test]
fn bad_trust_input_keeps_the_last_good_trust() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    let revoked = ca.issue(&LeafSpec::client("revoked"));
    let good = ca.issue(&LeafSpec::client("good"));
    let ca_file = dir.path().join("clients-ca.pem");
    let crl_file = dir.path().join("clients.crl");
    fs::write(&ca_file, ca.cert_pem()).unwrap();
    fs::write(
        &crl_file,
        ca.crl(
            std::slice::from_ref(&revoked.serial),
            TimeDuration::hours(1),
        )
        .pem,
    )
    .unwrap();
    let s = setup(dir.path(), &ca_file, &[&crl_file]);
    let good_client = tls13(&s.server_ca, &good);
    let revoked_client = tls13(&s.server_ca, &revoked);

    let key_pem = good.key_pem(KeyFormat::Pkcs8);
    let cases: [(&str, &Path, Option<&[u8]>); 5] = [
        ("garbage CA file", &ca_file, Some(b"garbage\n")),
        ("empty CA file", &ca_file, Some(b"")),
        ("key instead of CA", &ca_file, Some(key_pem.as_bytes())),
        ("garbage CRL", &crl_file, Some(b"\x30\x03\x02\x01\x01")),
        ("CRL file removed", &crl_file, None),
    ];
    for (what, path, contents) in cases {
        let saved = fs::read(path).unwrap();
        match contents {
            Some(c) => fs::write(path, c).unwrap(),
            None => fs::remove_file(path).unwrap(),
        }
        let err = s.trust.reload().expect_err(what);
        assert!(
            err.to_string().contains(path.to_str().unwrap()),
            "{what}: {err}"
        );
        connect(s.server.addr, &good_client, "localhost")
            .unwrap_or_else(|e| panic!("{what}: good client refused: {e}"));
        assert!(
            connect(s.server.addr, &revoked_client, "localhost").is_err(),
            "{what}: the revocation must stay in force"
        );
        assert!(s.trust.status().last_error.is_some(), "{what}");
        write_atomic(path, &saved);
        s.trust.reload().unwrap();
    }
    assert_eq!(
        s.trust.status().generation,
        1,
        "identical content never bumps the generation"
    );
}

#[test]
fn client_identity_is_chosen_by_the_cas_the_server_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = Ca::new_root("Client CA 1", KeyType::EcP256);
    let ca2 = Ca::new_root("Client CA 2", KeyType::EcP256);
    let ca3 = Ca::new_root("Client CA 3", KeyType::EcP256);
    let leaf1 = ca1.issue(&LeafSpec::client("from-ca1"));
    let leaf2 = ca2.issue(&LeafSpec::client("from-ca2"));
    let mut identities = Vec::new();
    for (name, leaf) in [("one", &leaf1), ("two", &leaf2)] {
        let path = dir.path().join(format!("{name}.pem"));
        fs::write(&path, leaf.bundle_pem(KeyFormat::Pkcs8)).unwrap();
        identities.push(
            ReloadingIdentity::builder(IdentitySource::bundle(path))
                .build()
                .unwrap(),
        );
    }
    let resolver = Arc::new(ClientIdentityResolver::new(identities));

    for (trusted, expected) in [(&ca2, Some(&leaf2)), (&ca1, Some(&leaf1)), (&ca3, None)] {
        let sub = tempfile::tempdir().unwrap();
        let ca_file = sub.path().join("ca.pem");
        fs::write(&ca_file, trusted.cert_pem()).unwrap();
        let s = setup(sub.path(), &ca_file, &[]);
        let mut roots = RootCertStore::empty();
        roots.add(s.server_ca.rustls_cert()).unwrap();
        let config = Arc::new(
            common::client_builder()
                .with_root_certificates(roots)
                .with_client_cert_resolver(resolver.clone()),
        );
        let result = connect(s.server.addr, &config, "localhost");
        let seen = s.server.clients.lock().unwrap().clone();
        match expected {
            Some(leaf) => {
                result.expect("accepted");
                assert_eq!(seen, vec![leaf.fingerprint_sha256_hex()]);
            }
            None => {
                assert!(
                    result.is_err(),
                    "no identity fits, none is sent, the server refuses"
                );
                assert!(
                    seen.is_empty(),
                    "no certificate must have been sent: {seen:?}"
                );
            }
        }
    }
}
