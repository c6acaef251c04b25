//! One-shot loading for tools (`Trust::load`, `CertInfo::from_der`, `KeyInfo`, `CrlInfo::from_der`,
//! `pkcs12::contents`, the PEM reader), and errors that keep their cause: each error names its
//! file and reason in its message and returns the underlying error as its source.

use std::error::Error as _;
use std::fs;
use std::sync::Arc;

use hitless::{
    CertInfo, CrlInfo, Error, Identity, IdentityRules, IdentitySource, KeyInfo, Password, Role,
    ServerIdentities, Trust, TrustSource,
};
use hitless_test_pki::{Ca, KeyType, LeafSpec};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

#[test]
fn trust_load_reads_a_good_bundle_with_its_crl() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::new_root("One Shot Root", KeyType::EcP256);
    let other = Ca::new_root("One Shot Other Root", KeyType::EcP256);
    let bundle = dir.path().join("ca.pem");
    fs::write(&bundle, format!("{}{}", root.cert_pem(), other.cert_pem())).unwrap();
    let crl = root.crl(&[vec![7]], time::Duration::days(1));
    let crl_path = dir.path().join("root.crl");
    fs::write(&crl_path, &crl.pem).unwrap();

    let trust = Trust::load(&TrustSource::cas([&bundle]).with_crls([&crl_path])).unwrap();
    let subjects: Vec<&str> = trust.cas().iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "O=hitless test PKI, CN=One Shot Root",
            "O=hitless test PKI, CN=One Shot Other Root"
        ]
    );
    assert_eq!(trust.crls().len(), 1);
    assert_eq!(trust.crls()[0].revoked, 1);
    assert!(trust.crls()[0].verified_by.is_some());

    // The same with a provider given explicitly.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let again = Trust::load_with_provider(&TrustSource::cas([&bundle]), provider).unwrap();
    assert_eq!(again.cas().len(), 2);
}

#[test]
fn trust_load_names_the_bad_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::new_root("One Shot Root", KeyType::EcP256);
    let good = dir.path().join("good.pem");
    fs::write(&good, root.cert_pem()).unwrap();
    let bad = dir.path().join("bad-ca.pem");
    fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();

    let err = Trust::load(&TrustSource::cas([&good, &bad])).unwrap_err();
    assert!(matches!(err, Error::Pem { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("bad-ca.pem"), "{message}");
    assert!(message.contains("invalid base64"), "{message}");
    assert_eq!(err.path(), Some(bad.as_path()));

    let missing = dir.path().join("missing.pem");
    let err = Trust::load(&TrustSource::cas([&missing])).unwrap_err();
    assert!(
        err.to_string().contains("missing.pem: cannot read"),
        "{err}"
    );
}

#[test]
fn an_empty_source_is_nothing_to_load() {
    let err = Trust::load(&TrustSource::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NothingToLoad {
                what: "trust source",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.path(), None, "no file is at fault, none is named");
    assert!(err.to_string().starts_with("nothing to load"), "{err}");

    let err = ServerIdentities::builder().build().unwrap_err();
    assert!(
        matches!(
            err,
            Error::NothingToLoad {
                what: "server identities",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn cert_info_from_der_reads_a_real_certificate_and_refuses_garbage() {
    let root = Ca::new_root("One Shot Root", KeyType::EcP256);
    let leaf = root.issue(&LeafSpec::server("localhost").key_type(KeyType::EcP384));
    let info = CertInfo::from_der(&leaf.cert_der).unwrap();
    assert_eq!(info.subject, "CN=localhost");
    assert_eq!(info.issuer, "O=hitless test PKI, CN=One Shot Root");
    assert_eq!(info.dns_names, ["localhost"]);
    assert_eq!(info.key_type, "ECDSA P-384");
    assert_eq!(info.fingerprint, leaf.fingerprint_sha256_hex());
    assert!(!info.is_ca);

    let err = CertInfo::from_der(b"\x30\x03garbage").unwrap_err();
    assert!(
        err.downcast_ref::<x509_parser::error::X509Error>()
            .is_some(),
        "the X.509 parser's own error: {err:?}"
    );
    assert!(CertInfo::from_der(&[]).is_err());
}

#[test]
fn key_info_finds_the_certificate_of_a_key() {
    let root = Ca::new_root("One Shot Root", KeyType::EcP256);
    let leaf = root.issue(&LeafSpec::server("localhost"));
    let other = root.issue(&LeafSpec::server("localhost"));
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_pkcs8_der.clone()));
    let info = KeyInfo::from_der("k.pem".as_ref(), &key).unwrap();
    assert_eq!(format!("{:?}", info.algorithm()), "ECDSA");
    assert!(info.matches(&CertInfo::from_der(&leaf.cert_der).unwrap()));
    assert!(!info.matches(&CertInfo::from_der(&other.cert_der).unwrap()));

    let junk = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(vec![0x30, 0x00]));
    let err = KeyInfo::from_der("/keys/junk.pem".as_ref(), &junk).unwrap_err();
    assert!(matches!(err, Error::Key { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("/keys/junk.pem: unusable private key"),
        "{err}"
    );
    assert!(
        err.source()
            .and_then(|s| s.downcast_ref::<rustls::Error>())
            .is_some(),
        "{err:?}"
    );
}

#[test]
fn crl_info_from_der_and_its_errors() {
    let root = Ca::new_root("One Shot Root", KeyType::EcP256);
    let crl = root.crl(&[vec![1], vec![2]], time::Duration::hours(1));
    let info = CrlInfo::from_der("a.crl".as_ref(), &crl.der).unwrap();
    assert_eq!(info.issuer, "O=hitless test PKI, CN=One Shot Root");
    assert_eq!(info.revoked, 2);
    assert!(info.next_update.is_some());
    assert_eq!(info.verified_by, None);

    let err = CrlInfo::from_der("/crl/bad.crl".as_ref(), b"junk").unwrap_err();
    assert!(matches!(err, Error::CrlUnreadable { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with("/crl/bad.crl: invalid CRL"),
        "{err}"
    );
    assert!(err
        .source()
        .and_then(|s| s.downcast_ref::<x509_parser::error::X509Error>())
        .is_some());
}

#[test]
fn sources_are_the_underlying_errors() {
    let dir = tempfile::tempdir().unwrap();

    // I/O: the operating system's error.
    let missing = dir.path().join("missing.pem");
    let err = Identity::load(&IdentitySource::bundle(&missing), Role::Any).unwrap_err();
    let io = err
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("io::Error source: {err:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    assert!(
        err.to_string().contains("missing.pem: cannot read"),
        "{err}"
    );

    // PEM: the PEM parser's error, under the reason.
    let broken = dir.path().join("broken.pem");
    fs::write(&broken, "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n").unwrap();
    let err = Identity::load(&IdentitySource::bundle(&broken), Role::Any).unwrap_err();
    let pem = err
        .source()
        .and_then(|s| s.downcast_ref::<hitless::pem::PemError>())
        .unwrap_or_else(|| panic!("PemError source: {err:?}"));
    assert!(pem
        .source()
        .and_then(|s| s.downcast_ref::<rustls::pki_types::pem::Error>())
        .is_some());

    // X.509: the parser's error, and the certificate's position.
    let root = Ca::new_root("One Shot Root", KeyType::EcP256);
    let leaf = root.issue(&LeafSpec::server("localhost"));
    let mangled = dir.path().join("mangled.pem");
    let not_x509 = format!(
        "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n{}",
        leaf.bundle_pem(hitless_test_pki::KeyFormat::Pkcs8)
    );
    fs::write(&mangled, not_x509).unwrap();
    let err = Identity::load(&IdentitySource::bundle(&mangled), Role::Any).unwrap_err();
    assert!(
        matches!(err, Error::Certificate { index: 1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("mangled.pem: certificate #1"),
        "{err}"
    );
    assert!(err
        .source()
        .and_then(|s| s.downcast_ref::<x509_parser::error::X509Error>())
        .is_some());

    // A password from an unset variable: the environment's error.
    let p12 = dir.path().join("id.p12");
    fs::write(&p12, b"\x30\x03\x02\x01\x03").unwrap();
    let name = "HITLESS_ONE_SHOT_UNSET_PASSWORD";
    let err = Identity::load(
        &IdentitySource::pkcs12(&p12, Password::Env(name.into())),
        Role::Any,
    )
    .unwrap_err();
    assert!(matches!(err, Error::PasswordEnv { .. }), "{err:?}");
    assert!(err.to_string().contains(name), "{err}");
    assert!(err
        .source()
        .and_then(|s| s.downcast_ref::<std::env::VarError>())
        .is_some());
}

#[test]
fn identity_rules_carry_accept_expired_and_the_provider() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::new_root("One Shot Root", KeyType::EcP256);
    let now = OffsetDateTime::now_utc();
    let expired = root.issue(
        &LeafSpec::server("localhost")
            .valid(now - time::Duration::days(2), now - time::Duration::days(1)),
    );
    let path = dir.path().join("expired.pem");
    fs::write(
        &path,
        expired.bundle_pem(hitless_test_pki::KeyFormat::Pkcs8),
    )
    .unwrap();
    let source = IdentitySource::bundle(&path);

    let err = Identity::load(&source, Role::Server).unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err:?}");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let rules = IdentityRules::new(Role::Server)
        .accept_expired(true)
        .crypto_provider(provider);
    let identity = Identity::load(&source, rules).unwrap();
    assert_eq!(
        identity.leaf().fingerprint,
        expired.fingerprint_sha256_hex()
    );
}

#[test]
fn pkcs12_contents_needs_the_right_password() {
    let dir = tempfile::tempdir().unwrap();
    let p12 = dir.path().join("empty.p12");
    fs::write(&p12, b"").unwrap();
    let err = hitless::pkcs12::contents(&p12, b"", &Password::None).unwrap_err();
    assert!(matches!(err, Error::Empty { .. }), "{err:?}");
    let err =
        hitless::pkcs12::contents(&p12, b"\x30\x03\x02\x01\x03", &Password::None).unwrap_err();
    assert!(matches!(err, Error::Pkcs12 { .. }), "{err:?}");
    assert!(err
        .to_string()
        .starts_with(&format!("{}: invalid PKCS#12", p12.display())));
    assert!(err.source().is_some(), "the reader's error is kept");
}

#[test]
fn errors_can_cross_threads() {
    fn send_sync_static<T: Send + Sync + 'static>() {}
    send_sync_static::<Error>();
    send_sync_static::<hitless::pem::PemError>();
}
