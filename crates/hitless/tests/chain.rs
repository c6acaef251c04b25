//! Whole-chain validation at load: an identity whose chain a peer would refuse (an
//! intermediate that did not sign the leaf, an intermediate that is not a CA or has expired, an
//! extendedKeyUsage that does not allow the identity's role, a root in the bundle that did not
//! sign the chain) is refused like an expired leaf, naming the file and the certificate, and a
//! rotation to it keeps the last good identity serving. Each broken chain is also shown to be
//! refused by a real rustls peer, so the rule is the peers' rule, not a stricter one. Of several
//! leaves for one key, the newest valid one is served.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{client_config, connect, Server};
use hitless::{
    Detection, Error, Identity, IdentitySource, MemberOptions, ReloadingClientConfig,
    ReloadingIdentity, ReloadingServerConfig, ReloadingTrust, Role, ServerIdentities, TrustSource,
};
use hitless_test_pki::rcgen::{BasicConstraints, IsCa};
use hitless_test_pki::{Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use time::OffsetDateTime;

const INTERMEDIATE: &str = "Chain Intermediate";

fn root() -> Ca {
    Ca::new_root("Chain Root", KeyType::EcP256)
}

/// A bundle file: `certs` (PEM, in this order), then the key of `key_of`.
fn bundle(dir: &Path, name: &str, certs: &[&str], key_of: &Leaf) -> PathBuf {
    let mut text = String::new();
    for c in certs {
        text.push_str(c.trim_end());
        text.push('\n');
    }
    text.push_str(&key_of.key_pem(KeyFormat::Pkcs8));
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn server_for(identity: &ReloadingIdentity) -> Server {
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    Server::start(Arc::new(config))
}

fn served_fingerprint(server: &Server, root: &Ca) -> String {
    connect(server.addr, &client_config(root, None), "localhost")
        .expect("handshake")
        .fingerprint
}

/// What a rustls client trusting `root` says of a server sending `leaf` with `intermediates`
/// (no hitless involved): the peers' own verdict on the chain.
fn rustls_client_verdict(root: &Ca, leaf: &Leaf, intermediates: &[&Ca]) -> Result<(), String> {
    let mut chain = vec![rustls::pki_types::CertificateDer::from(
        leaf.cert_der.clone(),
    )];
    chain.extend(intermediates.iter().map(|ca| ca.rustls_cert()));
    let config = common::server_builder()
        .with_no_client_auth()
        .with_single_cert(chain, leaf.rustls_key())
        .unwrap();
    let server = Server::start(Arc::new(config));
    connect(server.addr, &client_config(root, None), "localhost").map(|_| ())
}

/// Builds a manual-reload identity for `path` with `role`.
fn build(path: &Path, role: Role) -> Result<ReloadingIdentity, Error> {
    ReloadingIdentity::builder(IdentitySource::bundle(path))
        .detection(Detection::Manual)
        .quiet_period(Duration::from_millis(10))
        .role(role)
        .build()
}

/// The reason of a chain refusal, after checking that the message names the file.
fn chain_reason(err: &Error, path: &Path) -> String {
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{}: invalid certificate chain: ", path.display())),
        "the error must name the file: {message}"
    );
    match err {
        Error::Chain { path: p, reason } => {
            assert_eq!(p, path);
            reason.clone()
        }
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[test]
fn intermediate_that_did_not_sign_the_leaf_is_refused_at_start() {
    let root = root();
    let signer = root.new_intermediate(INTERMEDIATE, KeyType::EcP256);
    // Same name, other key: what a CA rotation that keeps its name leaves behind.
    let impostor = root.new_intermediate(INTERMEDIATE, KeyType::EcP256);
    let leaf = signer.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(
        dir.path(),
        "wrong.pem",
        &[&leaf.cert_pem, &impostor.cert_pem()],
        &leaf,
    );

    let err = build(&path, Role::Server).expect_err("a chain the intermediate did not sign");
    let reason = chain_reason(&err, &path);
    assert!(
        reason.contains(
            "certificate 2 (O=hitless test PKI, CN=Chain Intermediate) does not sign \
             certificate 1 (CN=localhost)"
        ),
        "{reason}"
    );
    // The one-shot check (what `hitless inspect` uses) and `ServerIdentities` agree.
    let once = Identity::load(&IdentitySource::bundle(&path), Role::Server).unwrap_err();
    assert_eq!(once.to_string(), err.to_string());
    let set = ServerIdentities::builder()
        .detection(Detection::Manual)
        .identity(IdentitySource::bundle(&path), MemberOptions::default())
        .build()
        .unwrap_err();
    assert_eq!(set.to_string(), err.to_string());

    // A peer would refuse it too; with the right intermediate the same leaf is fine.
    let refused = rustls_client_verdict(&root, &leaf, &[&impostor]).unwrap_err();
    assert!(refused.contains("BadSignature"), "{refused}");
    rustls_client_verdict(&root, &leaf, &[&signer]).unwrap();
    let good = bundle(
        dir.path(),
        "good.pem",
        &[&leaf.cert_pem, &impostor.cert_pem(), &signer.cert_pem()],
        &leaf,
    );
    // Both intermediates in the file: the one whose key verifies is chosen and sent.
    let identity = build(&good, Role::Server).unwrap();
    let server = server_for(&identity);
    assert_eq!(
        served_fingerprint(&server, &root),
        leaf.fingerprint_sha256_hex()
    );
    let current = identity.current().unwrap();
    assert_eq!(current.value.chain().len(), 2);
    assert_eq!(
        current.value.chain()[1].fingerprint,
        hitless_test_pki::sha256_hex(&signer.cert_der())
    );
}

#[test]
fn rotation_to_a_wrong_intermediate_keeps_the_last_good_identity() {
    let root = root();
    let signer = root.new_intermediate(INTERMEDIATE, KeyType::EcP256);
    let impostor = root.new_intermediate(INTERMEDIATE, KeyType::EcP256);
    let first = signer.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    fs::write(&path, first.bundle_pem(KeyFormat::Pkcs8)).unwrap();
    let identity = build(&path, Role::Server).unwrap();
    let server = server_for(&identity);
    assert_eq!(
        served_fingerprint(&server, &root),
        first.fingerprint_sha256_hex()
    );

    // The renewal arrives with the wrong intermediate.
    let second = signer.issue(&LeafSpec::server("localhost"));
    let written = bundle(
        dir.path(),
        "identity.pem",
        &[&second.cert_pem, &impostor.cert_pem()],
        &second,
    );
    assert_eq!(written, path);
    let err = identity
        .reload()
        .expect_err("the broken chain must be refused");
    let reason = chain_reason(&err, &path);
    assert!(reason.contains("does not sign certificate 1"), "{reason}");
    let status = identity.status();
    assert_eq!(status.generation, 1);
    let last = status.last_error.expect("the refusal is recorded");
    assert_eq!(last.message, err.to_string());
    // Real handshakes still get the first leaf (its serial), and they succeed.
    assert_eq!(
        served_fingerprint(&server, &root),
        first.fingerprint_sha256_hex()
    );
    assert_eq!(
        identity.current().unwrap().value.leaf().serial,
        serial_of(&first)
    );

    // Fixed: the renewal is served.
    bundle(
        dir.path(),
        "identity.pem",
        &[&second.cert_pem, &signer.cert_pem()],
        &second,
    );
    assert_eq!(
        identity.reload().unwrap(),
        hitless::Reload::Reloaded { generation: 2 }
    );
    assert_eq!(
        served_fingerprint(&server, &root),
        second.fingerprint_sha256_hex()
    );
}

/// The serial as [`hitless::CertInfo::serial`] prints it.
fn serial_of(leaf: &Leaf) -> String {
    leaf.serial
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[test]
fn intermediate_that_is_not_a_ca_is_refused() {
    let root = root();
    let not_ca = root.new_intermediate_with("Not A CA", KeyType::EcP256, |p| {
        p.is_ca = IsCa::ExplicitNoCa;
    });
    let leaf = not_ca.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(
        dir.path(),
        "not-ca.pem",
        &[&leaf.cert_pem, &not_ca.cert_pem()],
        &leaf,
    );
    for role in [Role::Server, Role::Any] {
        let err = build(&path, role).expect_err("an intermediate that is not a CA");
        let reason = chain_reason(&err, &path);
        assert!(
            reason.contains(
                "intermediate certificate 2 (O=hitless test PKI, CN=Not A CA) is not a CA"
            ),
            "{reason}"
        );
    }
    let refused = rustls_client_verdict(&root, &leaf, &[&not_ca]).unwrap_err();
    assert!(refused.contains("EndEntityUsedAsCa"), "{refused}");
}

#[test]
fn path_length_constraint_is_respected() {
    let root = root();
    let top = root.new_intermediate_with("No Sub CA", KeyType::EcP256, |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    });
    let below = top.new_intermediate("Sub CA", KeyType::EcP256);
    let leaf = below.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(
        dir.path(),
        "pathlen.pem",
        &[&leaf.cert_pem, &below.cert_pem(), &top.cert_pem()],
        &leaf,
    );
    let err = build(&path, Role::Server).expect_err("pathLenConstraint 0 with a CA below");
    let reason = chain_reason(&err, &path);
    assert!(
        reason.contains("intermediate certificate 3 (O=hitless test PKI, CN=No Sub CA) allows 0"),
        "{reason}"
    );
    let refused = rustls_client_verdict(&root, &leaf, &[&below, &top]).unwrap_err();
    assert!(refused.contains("PathLenConstraintViolated"), "{refused}");
}

#[test]
fn expired_intermediate_is_refused() {
    let root = root();
    let now = OffsetDateTime::now_utc();
    let expired = root.new_intermediate_with(INTERMEDIATE, KeyType::EcP256, |p| {
        p.not_before = now - time::Duration::days(30);
        p.not_after = now - time::Duration::days(1);
    });
    let leaf = expired.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(
        dir.path(),
        "expired-int.pem",
        &[&leaf.cert_pem, &expired.cert_pem()],
        &leaf,
    );
    let err = build(&path, Role::Server).expect_err("an expired intermediate");
    let reason = chain_reason(&err, &path);
    assert!(
        reason.contains(
            "intermediate certificate 2 (O=hitless test PKI, CN=Chain Intermediate) expired at"
        ),
        "{reason}"
    );
    let refused = rustls_client_verdict(&root, &leaf, &[&expired]).unwrap_err();
    assert!(refused.contains("certificate expired"), "{refused}");
    // accept_expired covers the whole chain (tests, odd clocks).
    ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .detection(Detection::Manual)
        .role(Role::Server)
        .accept_expired(true)
        .build()
        .unwrap();
}

#[test]
fn a_root_in_the_bundle_must_have_signed_the_chain() {
    let root = root();
    let stale_root = Ca::new_root("Chain Root", KeyType::EcP256);
    let inter = root.new_intermediate(INTERMEDIATE, KeyType::EcP256);
    let leaf = inter.issue(&LeafSpec::server("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(
        dir.path(),
        "stale-root.pem",
        &[&leaf.cert_pem, &inter.cert_pem(), &stale_root.cert_pem()],
        &leaf,
    );
    let err = build(&path, Role::Server).expect_err("a root that did not sign the chain");
    let reason = chain_reason(&err, &path);
    assert!(
        reason.contains(
            "certificate 3 (O=hitless test PKI, CN=Chain Root) does not sign certificate 2 \
             (O=hitless test PKI, CN=Chain Intermediate)"
        ),
        "{reason}"
    );
    // With the right root the same bundle loads, and the root is not sent.
    let path = bundle(
        dir.path(),
        "root.pem",
        &[&leaf.cert_pem, &inter.cert_pem(), &root.cert_pem()],
        &leaf,
    );
    let identity = build(&path, Role::Server).unwrap();
    assert_eq!(identity.current().unwrap().value.chain().len(), 2);
}

#[test]
fn client_only_leaf_is_refused_as_a_server_and_accepted_as_a_client() {
    let root = root();
    let leaf = root.issue(&LeafSpec::client("localhost"));
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(dir.path(), "client.pem", &[&leaf.cert_pem], &leaf);

    let err = build(&path, Role::Server).expect_err("clientAuth only, as a server identity");
    let reason = chain_reason(&err, &path);
    assert!(
        reason.contains(
            "the leaf, certificate 1 (CN=localhost), has extendedKeyUsage without serverAuth \
             (clientAuth)"
        ),
        "{reason}"
    );
    // Server identity sets are servers by construction.
    let set = ServerIdentities::builder()
        .detection(Detection::Manual)
        .identity(IdentitySource::bundle(&path), MemberOptions::default())
        .build()
        .unwrap_err();
    assert_eq!(set.to_string(), err.to_string());
    // A peer refuses it as a server certificate too.
    let refused = rustls_client_verdict(&root, &leaf, &[]).unwrap_err();
    assert!(
        refused.contains("does not allow extended key usage for server authentication"),
        "{refused}"
    );

    // As a client identity (and when the role is not said) it is fine: real mutual TLS.
    build(&path, Role::Any).unwrap();
    let client_identity = build(&path, Role::Client).unwrap();
    let server_leaf = root.issue(&LeafSpec::server("localhost"));
    let server_path = bundle(
        dir.path(),
        "server.pem",
        &[&server_leaf.cert_pem],
        &server_leaf,
    );
    let server_identity = build(&server_path, Role::Server).unwrap();
    let ca = dir.path().join("ca.pem");
    fs::write(&ca, root.cert_pem()).unwrap();
    let trust = ReloadingTrust::builder(TrustSource::cas([&ca]))
        .detection(Detection::Manual)
        .build()
        .unwrap();
    let servers = ReloadingServerConfig::builder(&server_identity)
        .client_trust(&trust)
        .build()
        .unwrap();
    let server = Server::start_with(move || servers.current());
    let clients = ReloadingClientConfig::builder(&trust)
        .identities(vec![client_identity])
        .build()
        .unwrap();
    connect(server.addr, &clients.current(), "localhost").expect("mutual TLS handshake");
    assert_eq!(
        server.clients.lock().unwrap().clone(),
        vec![leaf.fingerprint_sha256_hex()]
    );

    // And a server-only leaf is refused as a client identity.
    let err = build(&server_path, Role::Client).expect_err("serverAuth only, as a client");
    let reason = chain_reason(&err, &server_path);
    assert!(
        reason.contains("has extendedKeyUsage without clientAuth (serverAuth)"),
        "{reason}"
    );
}

#[test]
fn intermediate_extended_key_usage_must_allow_the_role() {
    let root = root();
    let servers_only = root.new_intermediate_with("Servers Only", KeyType::EcP256, |p| {
        p.extended_key_usages = vec![hitless_test_pki::rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    });
    // The leaf itself has no extendedKeyUsage: only the intermediate restricts it.
    let leaf = servers_only.issue(&LeafSpec::client("localhost").client_auth(false));
    let dir = tempfile::tempdir().unwrap();
    let path = bundle(
        dir.path(),
        "through-servers-only.pem",
        &[&leaf.cert_pem, &servers_only.cert_pem()],
        &leaf,
    );
    build(&path, Role::Server).unwrap();
    build(&path, Role::Any).unwrap();
    let err = build(&path, Role::Client).expect_err("a client chain through a server-only CA");
    let reason = chain_reason(&err, &path);
    assert!(
        reason.contains(
            "intermediate certificate 2 (O=hitless test PKI, CN=Servers Only) has \
             extendedKeyUsage without clientAuth (serverAuth)"
        ),
        "{reason}"
    );
}

#[test]
fn the_newest_leaf_for_the_key_is_served() {
    let root = root();
    let inter = root.new_intermediate(INTERMEDIATE, KeyType::EcP256);
    let now = OffsetDateTime::now_utc();
    let hours = time::Duration::hours;
    let dir = tempfile::tempdir().unwrap();

    // A renewal appended after the leaf it replaces, both valid now.
    let older = inter.issue(&LeafSpec::server("localhost").valid(now - hours(2), now + hours(1)));
    let newer = inter.issue_for_key_of(
        &LeafSpec::server("localhost").valid(now - hours(1), now + hours(3)),
        &older,
    );
    let path = bundle(
        dir.path(),
        "renewed.pem",
        &[&older.cert_pem, &newer.cert_pem, &inter.cert_pem()],
        &older,
    );
    let identity = build(&path, Role::Server).unwrap();
    let server = server_for(&identity);
    assert_eq!(
        served_fingerprint(&server, &root),
        newer.fingerprint_sha256_hex(),
        "the newer leaf must be served"
    );
    drop(server);

    // The older one expired: still the newer one, not a refusal.
    let expired =
        inter.issue(&LeafSpec::server("localhost").valid(now - hours(48), now - hours(24)));
    let renewed = inter.issue_for_key_of(&LeafSpec::server("localhost"), &expired);
    let path = bundle(
        dir.path(),
        "expired-first.pem",
        &[&expired.cert_pem, &inter.cert_pem(), &renewed.cert_pem],
        &expired,
    );
    let identity = build(&path, Role::Server).unwrap();
    let server = server_for(&identity);
    assert_eq!(
        served_fingerprint(&server, &root),
        renewed.fingerprint_sha256_hex()
    );
    assert_eq!(
        Identity::load(&IdentitySource::bundle(&path), Role::Server)
            .unwrap()
            .leaf()
            .fingerprint,
        renewed.fingerprint_sha256_hex()
    );

    // A newer leaf whose chain is broken does not win over a good older one.
    let impostor = root.new_intermediate(INTERMEDIATE, KeyType::EcP256);
    let other_branch = impostor.issue_for_key_of(
        &LeafSpec::server("localhost").valid(now - hours(1), now + hours(5)),
        &older,
    );
    let path = bundle(
        dir.path(),
        "broken-newest.pem",
        &[&other_branch.cert_pem, &older.cert_pem, &inter.cert_pem()],
        &older,
    );
    let identity = build(&path, Role::Server).unwrap();
    assert_eq!(
        identity.current().unwrap().value.leaf().fingerprint,
        older.fingerprint_sha256_hex()
    );
}

#[test]
fn signatures_of_every_key_type_are_checked() {
    for key_type in [
        KeyType::EcP256,
        KeyType::EcP384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
        KeyType::Rsa4096,
    ] {
        let root = Ca::new_root("Chain Root", key_type);
        let signer = root.new_intermediate(INTERMEDIATE, key_type);
        let leaf = signer.issue(&LeafSpec::server("localhost").key_type(key_type));
        let dir = tempfile::tempdir().unwrap();
        // Leaf, intermediate and root: both signatures are checked with the provider.
        let path = bundle(
            dir.path(),
            "good.pem",
            &[&leaf.cert_pem, &signer.cert_pem(), &root.cert_pem()],
            &leaf,
        );
        let identity = build(&path, Role::Server).unwrap_or_else(|e| panic!("{key_type:?}: {e}"));
        let server = server_for(&identity);
        assert_eq!(
            served_fingerprint(&server, &root),
            leaf.fingerprint_sha256_hex(),
            "{key_type:?}"
        );
        // The same names with another key: the signature is checked, not only the names.
        let impostor = root.new_intermediate(INTERMEDIATE, key_type);
        let path = bundle(
            dir.path(),
            "wrong.pem",
            &[&leaf.cert_pem, &impostor.cert_pem()],
            &leaf,
        );
        let err = build(&path, Role::Server).expect_err("a wrong intermediate");
        let reason = chain_reason(&err, &path);
        assert!(
            reason.contains("does not sign certificate 1 (CN=localhost)"),
            "{key_type:?}: {reason}"
        );
    }
}
