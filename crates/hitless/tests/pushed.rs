//! Sources that are not files: an in-memory provider pushes identities and trust bundles
//! through `ReloadingIdentity::pushed` / `ReloadingTrust::pushed` into the ordinary handles,
//! which serve real TLS handshakes on loopback through `ReloadingServerConfig`. What a pushed
//! value must get is what a file gets: validation, last known good, generation, events,
//! status, and for trust every guarantee of a trust change.

mod common;

use std::sync::{Arc, Mutex};

use common::{connect, provider, Server};
use hitless::{
    Detection, Event, Health, IdentityPublisher, Reload, ReloadingIdentity, ReloadingServerConfig,
    ReloadingTrust, Role,
};
use hitless_test_pki::{Ca, KeyType, Leaf, LeafSpec};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// What an in-memory provider (a stand-in for a Workload API stream) hands out.
fn svid(leaf: &Leaf) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    (leaf.rustls_chain(), leaf.rustls_key())
}

/// The provider: an in-memory queue of values, each pushed when asked.
struct InMemoryProvider {
    publisher: IdentityPublisher,
}

impl InMemoryProvider {
    fn push(&self, leaf: &Leaf) -> Result<Reload, hitless::Error> {
        let (chain, key) = svid(leaf);
        self.publisher.publish(chain, key)
    }
}

fn events() -> (
    Arc<Mutex<Vec<Event>>>,
    impl Fn(&Event) + Send + Sync + 'static,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (seen, move |e: &Event| s.lock().unwrap().push(e.clone()))
}

/// A client trusting `ca`, presenting `client` if given; resumption as rustls does it by
/// default (on), so that a resumed session would show.
fn client(ca: &Ca, client: Option<&Leaf>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.rustls_cert()).unwrap();
    let builder = common::client_builder().with_root_certificates(roots);
    Arc::new(match client {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.rustls_chain(), leaf.rustls_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    })
}

#[test]
fn pushed_identity_is_served_validated_and_reports_outages() {
    let ca = Ca::new_root("Workload CA", KeyType::EcP256);
    let a = ca.issue(&LeafSpec::server("localhost"));
    let b = ca.issue(&LeafSpec::server("localhost"));
    let c = ca.issue(&LeafSpec::server("localhost"));
    let (seen, record) = events();
    let (chain, key) = svid(&a);
    let (identity, publisher) = ReloadingIdentity::pushed("workload")
        .role(Role::Server)
        .crypto_provider(provider())
        .on_event(record)
        // A provider's own rule (as a SPIFFE source checks its IDs): only "localhost" leaves.
        .require(|id| {
            if id.leaf().dns_names == ["localhost"] {
                Ok(())
            } else {
                Err(format!("unexpected names {:?}", id.leaf().dns_names))
            }
        })
        .build(chain, key)
        .expect("the first value is good");
    let source = InMemoryProvider { publisher };
    let configs = ReloadingServerConfig::builder(&identity)
        .crypto_provider(provider())
        .build()
        .unwrap();
    let c2 = configs.clone();
    let server = Server::start_with(move || c2.current());
    let config = client(&ca, None);
    let status = identity.status();
    assert_eq!(status.detection, Detection::Pushed);
    assert_eq!(status.generation, 1);
    assert!(status.outage.is_none());

    // Push A (at build): served.
    let mut open_a = connect(server.addr, &config, "localhost").expect("A served");
    assert_eq!(open_a.fingerprint, a.fingerprint_sha256_hex());

    // Push B: the next handshake sees B, the open connection keeps A.
    assert_eq!(source.push(&b).unwrap(), Reload::Reloaded { generation: 2 });
    let conn = connect(server.addr, &config, "localhost").expect("B served");
    assert_eq!(conn.fingerprint, b.fingerprint_sha256_hex());
    assert!(
        !conn.resumed,
        "a rotation must not resume into the old identity"
    );
    open_a
        .ping()
        .expect("a connection made with A keeps working after B is pushed");
    assert_eq!(open_a.fingerprint, a.fingerprint_sha256_hex());
    // The same value again (a stream re-sends what it has): nothing changes.
    assert_eq!(source.push(&b).unwrap(), Reload::Unchanged);
    assert_eq!(identity.status().generation, 2);

    // Refused values: malformed, a key that matches no certificate, a role the chain does not
    // allow. Each is reported; B keeps serving.
    let malformed = source.publisher.publish(
        vec![CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])],
        b.rustls_key(),
    );
    assert!(
        matches!(malformed, Err(hitless::Error::Certificate { .. })),
        "{malformed:?}"
    );
    let status = identity.status();
    let last = status
        .last_error
        .clone()
        .expect("the refusal is in the status");
    assert!(last.message.contains("workload"), "{}", last.message);
    assert_eq!(status.generation, 2);
    assert_eq!(status.reloads_failed, 1);
    assert_eq!(
        status.health(std::time::SystemTime::now()),
        Health::Degraded
    );

    let mismatched = source.publisher.publish(c.rustls_chain(), b.rustls_key());
    assert!(
        matches!(mismatched, Err(hitless::Error::KeyMismatch { .. })),
        "{mismatched:?}"
    );
    let client_only = ca.issue(&LeafSpec::client("not-a-server"));
    let wrong_role = source.push(&client_only);
    assert!(
        matches!(wrong_role, Err(hitless::Error::Chain { .. })),
        "a clientAuth-only chain must be refused for Role::Server: {wrong_role:?}"
    );
    let other_name = ca.issue(&LeafSpec::server("elsewhere.test"));
    let by_rule = source.push(&other_name);
    assert!(
        matches!(&by_rule, Err(hitless::Error::Refused { reason, .. }) if reason.contains("elsewhere.test")),
        "the provider's rule must refuse it: {by_rule:?}"
    );
    assert_eq!(identity.status().reloads_failed, 4);
    let conn = connect(server.addr, &config, "localhost").expect("still served after refusals");
    assert_eq!(
        conn.fingerprint,
        b.fingerprint_sha256_hex(),
        "a refused value is never served"
    );
    let failures = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::ReloadFailed { name, .. } if name == "workload"))
        .count();
    assert_eq!(failures, 4, "each refusal is announced");

    // An outage: visible, announced once, nothing replaced.
    source
        .publisher
        .report_outage("stream broken, reconnecting");
    source
        .publisher
        .report_outage("stream broken, reconnect failed, retrying in 2s");
    let status = identity.status();
    let outage = status.outage.clone().expect("the outage is in the status");
    assert_eq!(
        outage.reason,
        "stream broken, reconnect failed, retrying in 2s"
    );
    assert_eq!(status.generation, 2);
    assert_eq!(
        status.health(std::time::SystemTime::now()),
        Health::Degraded
    );
    let conn = connect(server.addr, &config, "localhost").expect("served during the outage");
    assert_eq!(conn.fingerprint, b.fingerprint_sha256_hex());
    assert_eq!(
        seen.lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::SourceOutage { .. }))
            .count(),
        1,
        "an outage is announced once"
    );
    // `reload()` has no files to read: the provider decides.
    assert_eq!(identity.reload().unwrap(), Reload::Unchanged);

    // The stream is back with a new value: served, outage and error cleared.
    assert_eq!(source.push(&c).unwrap(), Reload::Reloaded { generation: 3 });
    let status = identity.status();
    assert!(status.outage.is_none());
    assert!(status.last_error.is_none());
    assert_eq!(status.health(std::time::SystemTime::now()), Health::Ok);
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, Event::SourceRestored { .. })));
    let conn = connect(server.addr, &config, "localhost").expect("C served");
    assert_eq!(conn.fingerprint, c.fingerprint_sha256_hex());
}

#[test]
fn pushed_trust_change_refuses_old_clients_and_old_sessions() {
    let server_ca = Ca::new_root("Server CA", KeyType::EcP256);
    let server_leaf = server_ca.issue(&LeafSpec::server("localhost"));
    let ca1 = Ca::new_root("Client CA 1", KeyType::EcP256);
    let ca2 = Ca::new_root("Client CA 2", KeyType::EcP256);
    let client1 = ca1.issue(&LeafSpec::client("client-of-ca1"));
    let client2 = ca2.issue(&LeafSpec::client("client-of-ca2"));

    let (chain, key) = svid(&server_leaf);
    let (identity, _identity_publisher) = ReloadingIdentity::pushed("server")
        .crypto_provider(provider())
        .build(chain, key)
        .unwrap();
    let (trust, bundle) = ReloadingTrust::pushed("bundle")
        .crypto_provider(provider())
        .build(vec![ca1.rustls_cert()], vec![])
        .unwrap();
    let configs = ReloadingServerConfig::builder(&identity)
        .client_trust(&trust)
        .build()
        .unwrap();
    let c2 = configs.clone();
    let server = Server::start_with(move || c2.current());
    let config1 = client(&server_ca, Some(&client1));
    let config2 = client(&server_ca, Some(&client2));

    let mut open1 = connect(server.addr, &config1, "localhost").expect("CA1 client accepted");
    // Control: without a trust change this client resumes.
    let again = connect(server.addr, &config1, "localhost").expect("CA1 client accepted again");
    assert!(again.resumed, "control failed: the client did not resume");
    assert!(
        connect(server.addr, &config2, "localhost").is_err(),
        "CA2 client accepted under CA1"
    );

    // A bundle that still trusts CA1 (CA1 + CA2): the client gets in, but with a full
    // handshake: no session made under the previous trust resumes.
    assert_eq!(
        bundle
            .publish(vec![ca1.rustls_cert(), ca2.rustls_cert()], vec![])
            .unwrap(),
        Reload::Reloaded { generation: 2 }
    );
    assert_eq!(configs.trust_generation(), 2, "a push is a trust change");
    let after = connect(server.addr, &config1, "localhost").expect("CA1 still trusted");
    assert!(
        !after.resumed,
        "a session made before the trust change resumed"
    );
    connect(server.addr, &config2, "localhost").expect("CA2 client accepted under CA1 + CA2");

    // CA2 only: a CA1 client is refused on a new handshake (resumption included); the
    // connection opened before keeps working.
    bundle.publish(vec![ca2.rustls_cert()], vec![]).unwrap();
    assert_eq!(configs.trust_generation(), 3);
    for attempt in 0..3 {
        let r = connect(server.addr, &config1, "localhost");
        assert!(
            r.is_err(),
            "CA1 client got in after CA1 was removed (attempt {attempt}, resumed: {:?})",
            r.as_ref().map(|c| c.resumed)
        );
    }
    connect(server.addr, &config2, "localhost").expect("CA2 client accepted");
    open1
        .ping()
        .expect("a connection opened before the change keeps working");

    // A refused bundle (no CA) keeps CA2 in force.
    let refused = bundle.publish(vec![], vec![]);
    assert!(refused.is_err());
    assert_eq!(trust.status().generation, 3);
    assert!(trust.status().last_error.is_some());
    connect(server.addr, &config2, "localhost").expect("CA2 still trusted");
}
