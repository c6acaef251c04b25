//! Tests for the test-PKI helpers themselves.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use hitless_test_pki::{
    certbot_renew, k8s_swap, sha256_hex, write_atomic, Ca, KeyFormat, KeyType, LeafSpec,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateRevocationListDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    store.add(ca.rustls_cert()).expect("add root");
    Arc::new(store)
}

/// Verify a server leaf against `root` with rustls' WebPKI verifier.
fn verify_server(
    root: &Ca,
    leaf: &hitless_test_pki::Leaf,
    name: &str,
) -> Result<(), rustls::Error> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots(root), provider())
        .build()
        .expect("build verifier");
    let chain = leaf.rustls_chain();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
}

fn pem_labels(pem_text: &str) -> Vec<String> {
    pem::parse_many(pem_text)
        .expect("parse PEM")
        .iter()
        .map(|p| p.tag().to_string())
        .collect()
}

#[test]
fn every_key_type_issues_a_valid_leaf() {
    let root = Ca::new_root("Every Key Root", KeyType::EcP256);
    for kt in KeyType::ALL {
        let leaf = root.issue(&LeafSpec::server("svc.example.test").key_type(kt));
        assert_eq!(leaf.key_type, kt);

        let (rest, cert) = x509_parser::parse_x509_certificate(&leaf.cert_der).expect("parse leaf");
        assert!(rest.is_empty());
        assert_eq!(cert.raw_serial(), &leaf.serial[..]);
        assert_eq!(leaf.serial.len(), 16, "{kt:?}: random serial is 16 bytes");
        assert!(leaf.serial[0] & 0x80 == 0 && leaf.serial[0] != 0);
        assert!(!cert.is_ca());
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "svc.example.test");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);

        // Signed by the root, and the key matches the certificate.
        let root_der = root.cert_der();
        let (_, root_cert) = x509_parser::parse_x509_certificate(&root_der).unwrap();
        cert.verify_signature(Some(root_cert.public_key()))
            .unwrap_or_else(|e| panic!("{kt:?}: signature: {e}"));
        let kp = rcgen::KeyPair::from_pem(&leaf.key_pem(KeyFormat::Pkcs8)).expect("parse key");
        assert_eq!(
            rcgen::PublicKeyData::subject_public_key_info(&kp),
            cert.public_key().raw,
            "{kt:?}: key matches cert"
        );

        // rustls accepts it for the right name only.
        verify_server(&root, &leaf, "svc.example.test")
            .unwrap_or_else(|e| panic!("{kt:?}: rustls verify: {e}"));
        assert!(verify_server(&root, &leaf, "other.example.test").is_err());

        // rustls can load the key too.
        provider()
            .key_provider
            .load_private_key(leaf.rustls_key())
            .unwrap_or_else(|e| panic!("{kt:?}: rustls key: {e}"));
    }
}

#[test]
fn validity_is_explicit_not_year_4096() {
    let root = Ca::new_root("Validity Root", KeyType::EcP256);
    let now = OffsetDateTime::now_utc();
    let root_der = root.cert_der();
    let (_, ca) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    let ca_na = ca.validity().not_after.to_datetime();
    assert!(ca_na > now + Duration::days(3600) && ca_na < now + Duration::days(3700));

    let leaf = root.issue(&LeafSpec::client("alice"));
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert_der).unwrap();
    let nb = cert.validity().not_before.to_datetime();
    let na = cert.validity().not_after.to_datetime();
    assert!((nb - (now - Duration::hours(1))).abs() < Duration::minutes(1));
    assert!((na - (now + Duration::hours(1))).abs() < Duration::minutes(1));
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);

    // An expired leaf is rejected by rustls.
    let expired = root.issue(
        &LeafSpec::server("localhost").valid(now - Duration::days(2), now - Duration::days(1)),
    );
    assert!(matches!(
        verify_server(&root, &expired, "localhost"),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
        ))
    ));
}

#[test]
fn localhost_and_ip_and_wildcard_sans() {
    let root = Ca::new_root("SAN Root", KeyType::EcP384);
    let leaf = root.issue(&LeafSpec::server("localhost"));
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert_der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    assert!(san
        .general_names
        .contains(&GeneralName::DNSName("localhost")));
    assert!(san
        .general_names
        .contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    verify_server(&root, &leaf, "localhost").unwrap();
    verify_server(&root, &leaf, "127.0.0.1").unwrap();

    let ip_leaf = root.issue(&LeafSpec::server("127.0.0.2"));
    assert!(ip_leaf_has_no_dns(&ip_leaf));
    verify_server(&root, &ip_leaf, "127.0.0.2").unwrap();

    let wild = root.issue(
        &LeafSpec::server("wild")
            .dns(vec!["*.example.test"])
            .ips(vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))]),
    );
    verify_server(&root, &wild, "a.example.test").unwrap();
    assert!(verify_server(&root, &wild, "example.test").is_err());
}

fn ip_leaf_has_no_dns(leaf: &hitless_test_pki::Leaf) -> bool {
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert_der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    !san.general_names
        .iter()
        .any(|g| matches!(g, GeneralName::DNSName(_)))
}

#[test]
fn key_formats_have_the_right_labels_and_parse() {
    let root = Ca::new_root("Key Format Root", KeyType::EcP256);
    let rsa = root.issue(&LeafSpec::server("rsa.test").key_type(KeyType::Rsa2048));
    let p256 = root.issue(&LeafSpec::server("p256.test"));
    let p384 = root.issue(&LeafSpec::server("p384.test").key_type(KeyType::EcP384));
    let ed = root.issue(&LeafSpec::server("ed.test").key_type(KeyType::Ed25519));

    let cases = [
        (&rsa, KeyFormat::Pkcs8, "PRIVATE KEY"),
        (&rsa, KeyFormat::Pkcs1, "RSA PRIVATE KEY"),
        (&p256, KeyFormat::Pkcs8, "PRIVATE KEY"),
        (&p256, KeyFormat::Sec1, "EC PRIVATE KEY"),
        (&p384, KeyFormat::Sec1, "EC PRIVATE KEY"),
        (&ed, KeyFormat::Pkcs8, "PRIVATE KEY"),
    ];
    for (leaf, format, label) in cases {
        let pem_text = leaf.key_pem(format);
        assert!(pem_text.starts_with(&format!("-----BEGIN {label}-----\n")));
        assert_eq!(pem_labels(&pem_text), vec![label.to_string()]);
        // The converted key is the same key: aws-lc (via rcgen) parses all three
        // encodings, and rustls' PEM parser classifies it by label.
        let kp = rcgen::KeyPair::from_pem(&pem_text)
            .unwrap_or_else(|e| panic!("{:?} {format:?}: {e}", leaf.key_type));
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert_der).unwrap();
        assert_eq!(
            rcgen::PublicKeyData::subject_public_key_info(&kp),
            cert.public_key().raw
        );
        use rustls::pki_types::pem::PemObject;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pem_text.as_bytes()).unwrap();
        let expected = match format {
            KeyFormat::Pkcs8 => "Pkcs8",
            KeyFormat::Pkcs1 => "Pkcs1",
            KeyFormat::Sec1 => "Sec1",
        };
        assert!(format!("{key:?}").starts_with(expected), "{key:?}");
        provider().key_provider.load_private_key(key).unwrap();

        // Byte-identical to `openssl pkey -traditional`, where OpenSSL is installed.
        if format != KeyFormat::Pkcs8 {
            if let Some(expected) = openssl_traditional(&leaf.key_pem(KeyFormat::Pkcs8)) {
                assert_eq!(pem_text, expected, "{format:?} differs from openssl");
            }
        }
    }
}

/// `openssl pkey -traditional` of `pkcs8_pem`, or None if openssl is unavailable.
fn openssl_traditional(pkcs8_pem: &str) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("k.pem");
    fs::write(&input, pkcs8_pem).unwrap();
    let out = Command::new("openssl")
        .args(["pkey", "-traditional", "-in"])
        .arg(&input)
        .output()
        .ok()?;
    assert!(out.status.success(), "openssl failed: {out:?}");
    Some(String::from_utf8(out.stdout).unwrap())
}

#[test]
#[should_panic(expected = "requires an ECDSA key")]
fn sec1_for_ed25519_panics() {
    let root = Ca::new_root("Panic Root", KeyType::EcP256);
    let ed = root.issue(&LeafSpec::client("ed").key_type(KeyType::Ed25519));
    let _ = ed.key_pem(KeyFormat::Sec1);
}

#[test]
#[should_panic(expected = "requires an RSA key")]
fn pkcs1_for_ec_panics() {
    let root = Ca::new_root("Panic Root", KeyType::EcP256);
    let ec = root.issue(&LeafSpec::client("ec"));
    let _ = ec.key_pem(KeyFormat::Pkcs1);
}

#[test]
fn crl_lists_serials_and_rustls_honours_it() {
    let root = Ca::new_root("CRL Root", KeyType::EcP256);
    let revoked = root.issue(&LeafSpec::client("mallory"));
    let good = root.issue(&LeafSpec::client("alice"));
    // A serial with the high bit set gets a leading 0x00 in the encoding.
    let high = root.issue(&LeafSpec::client("high").serial(vec![0x80, 0x01]));
    assert_eq!(high.serial, vec![0x00, 0x80, 0x01]);

    let crl = root.crl(
        &[revoked.serial.clone(), high.serial.clone()],
        Duration::hours(1),
    );
    assert_eq!(pem_labels(&crl.pem), vec!["X509 CRL".to_string()]);
    assert_eq!(pem::parse(&crl.pem).unwrap().contents(), &crl.der[..]);

    let (rest, parsed) = x509_parser::parse_x509_crl(&crl.der).expect("parse CRL");
    assert!(rest.is_empty());
    let serials: Vec<Vec<u8>> = parsed
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect();
    assert_eq!(serials, vec![revoked.serial.clone(), high.serial.clone()]);
    assert_eq!(parsed.issuer().as_raw(), &root.subject_der()[..]);
    let root_der = root.cert_der();
    let (_, root_cert) = x509_parser::parse_x509_certificate(&root_der).unwrap();
    parsed.verify_signature(root_cert.public_key()).unwrap();
    let now = OffsetDateTime::now_utc();
    let this_update = parsed.last_update().to_datetime();
    let next_update = parsed.next_update().unwrap().to_datetime();
    assert!((this_update - (now - Duration::minutes(1))).abs() < Duration::seconds(10));
    assert!((next_update - (now + Duration::hours(1))).abs() < Duration::seconds(10));

    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&root), provider())
        .with_crls(vec![CertificateRevocationListDer::from(crl.der.clone())])
        .build()
        .unwrap();
    let check = |leaf: &hitless_test_pki::Leaf| {
        verifier
            .verify_client_cert(&leaf.rustls_chain()[0], &[], UnixTime::now())
            .map(|_| ())
    };
    check(&good).unwrap();
    assert_eq!(
        check(&revoked),
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Revoked
        ))
    );
    assert!(check(&high).is_err());

    // Expired CRL: nextUpdate in the past, still after thisUpdate.
    let expired = root.crl(&[], -Duration::hours(2));
    let (_, parsed) = x509_parser::parse_x509_crl(&expired.der).unwrap();
    let next_update = parsed.next_update().unwrap().to_datetime();
    assert!(next_update < now - Duration::minutes(110));
    assert!(parsed.last_update().to_datetime() < next_update);
    assert_eq!(parsed.iter_revoked_certificates().count(), 0);
}

#[test]
fn intermediate_chain_and_bundle() {
    let root = Ca::new_root("Chain Root", KeyType::EcP384);
    let inter = root.new_intermediate("Chain Intermediate", KeyType::EcP256);
    assert!(root.is_root() && !inter.is_root());
    let leaf = inter.issue(&LeafSpec::server("chain.test"));

    // chain_pem = leaf + intermediate, no root.
    let chain = pem::parse_many(&leaf.chain_pem).unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0].contents(), &leaf.cert_der[..]);
    assert_eq!(chain[1].contents(), &inter.cert_der()[..]);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert_der).unwrap();
    assert_eq!(cert.issuer().as_raw(), &inter.subject_der()[..]);
    assert_ne!(inter.subject_der(), root.subject_der());
    verify_server(&root, &leaf, "chain.test").unwrap();

    // Only the root is trusted: the leaf alone does not verify.
    let mut alone = leaf.clone();
    alone.chain_pem = alone.cert_pem.clone();
    assert!(verify_server(&root, &alone, "chain.test").is_err());

    // OpenBao/Vault bundle: leaf, issuing CA, key.
    let bundle = leaf.bundle_pem(KeyFormat::Sec1);
    assert_eq!(
        pem_labels(&bundle),
        vec!["CERTIFICATE", "CERTIFICATE", "EC PRIVATE KEY"]
    );
    assert!(!bundle.contains("\n\n"));
    assert!(bundle.ends_with("-----END EC PRIVATE KEY-----\n"));
    let blocks = pem::parse_many(&bundle).unwrap();
    assert_eq!(blocks[1].contents(), &inter.cert_der()[..]);

    // Issued directly by a root, the bundle's issuing CA is the root itself,
    // while the chain is just the leaf.
    let direct = root.issue(&LeafSpec::server("direct.test"));
    assert_eq!(pem_labels(&direct.chain_pem), vec!["CERTIFICATE"]);
    let blocks = pem::parse_many(direct.bundle_pem(KeyFormat::Pkcs8)).unwrap();
    assert_eq!(blocks.len(), 3);
    assert_eq!(blocks[1].contents(), &root.cert_der()[..]);

    // CA key PEM is PKCS#8 and parses.
    assert_eq!(pem_labels(&inter.key_pem()), vec!["PRIVATE KEY"]);
    rcgen::KeyPair::from_pem(&inter.key_pem()).unwrap();
}

#[test]
fn fingerprint_is_lowercase_sha256_hex() {
    assert_eq!(
        sha256_hex(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let root = Ca::new_root("FP Root", KeyType::Ed25519);
    let leaf = root.issue(&LeafSpec::server("fp.test"));
    let fp = leaf.fingerprint_sha256_hex();
    assert_eq!(fp.len(), 64);
    assert!(fp
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    assert_eq!(fp, sha256_hex(&leaf.cert_der));
    let other = root.issue(&LeafSpec::server("fp.test"));
    assert_ne!(fp, other.fingerprint_sha256_hex());
}

#[test]
fn write_pair_and_write_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::new_root("Files Root", KeyType::EcP256);
    let leaf = root.issue(&LeafSpec::server("files.test"));
    let (cert, key) = leaf.write_pair(dir.path(), "tls.crt", "tls.key");
    assert_eq!(cert, dir.path().join("tls.crt"));
    assert_eq!(fs::read_to_string(&cert).unwrap(), leaf.chain_pem);
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        leaf.key_pem(KeyFormat::Pkcs8)
    );

    write_atomic(&cert, b"new contents");
    write_atomic(&cert, b"newer contents");
    assert_eq!(fs::read(&cert).unwrap(), b"newer contents");
    let names = dir_names(dir.path());
    assert_eq!(names, vec!["tls.crt", "tls.key"], "no temp files left");
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn k8s_swap_rotates_via_data_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    k8s_swap(
        d,
        &[
            ("tls.crt", b"cert-1"),
            ("tls.key", b"key-1"),
            ("ca.crt", b"ca-1"),
        ],
    );
    assert_eq!(fs::read(d.join("tls.crt")).unwrap(), b"cert-1");
    let first_ts = fs::read_link(d.join("..data")).unwrap();

    k8s_swap(d, &[("tls.crt", b"cert-2"), ("tls.key", b"key-2")]);
    assert_eq!(fs::read(d.join("tls.crt")).unwrap(), b"cert-2");
    assert_eq!(fs::read(d.join("tls.key")).unwrap(), b"key-2");

    let ts_dirs: Vec<String> = dir_names(d)
        .into_iter()
        .filter(|n| n.starts_with("..") && n != "..data")
        .collect();
    assert_eq!(ts_dirs.len(), 1, "exactly one timestamped dir: {ts_dirs:?}");
    let ts = &ts_dirs[0];
    // ..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN
    assert_eq!(ts.len(), 2 + 19 + 1 + 9, "{ts}");
    assert_eq!(&ts[6..7], "_");
    assert_eq!(&ts[21..22], ".");
    assert_ne!(Path::new(ts), first_ts);
    assert_eq!(fs::read_link(d.join("..data")).unwrap(), Path::new(ts));
    assert_eq!(
        fs::read_link(d.join("tls.crt")).unwrap(),
        Path::new("..data/tls.crt")
    );
    // ca.crt was dropped from the secret: its symlink is gone; no ..data_tmp left.
    let mut expected = vec!["..data", ts.as_str(), "tls.crt", "tls.key"];
    expected.sort();
    assert_eq!(dir_names(d), expected);
}

#[test]
fn certbot_renew_repoints_live_links() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (fc, pk) = certbot_renew(root, "example.test", b"chain-1", b"key-1");
    assert_eq!(fc, root.join("live/example.test/fullchain.pem"));
    assert_eq!(pk, root.join("live/example.test/privkey.pem"));
    assert_eq!(fs::read(&fc).unwrap(), b"chain-1");

    let (fc2, pk2) = certbot_renew(root, "example.test", b"chain-2", b"key-2");
    assert_eq!((&fc2, &pk2), (&fc, &pk));
    assert_eq!(
        fs::read_link(&fc).unwrap(),
        Path::new("../../archive/example.test/fullchain2.pem")
    );
    assert_eq!(
        fs::read_link(&pk).unwrap(),
        Path::new("../../archive/example.test/privkey2.pem")
    );
    assert_eq!(fs::read(&fc).unwrap(), b"chain-2");
    assert_eq!(fs::read(&pk).unwrap(), b"key-2");
    assert_eq!(
        dir_names(&root.join("archive/example.test")),
        vec![
            "fullchain1.pem",
            "fullchain2.pem",
            "privkey1.pem",
            "privkey2.pem"
        ]
    );
    assert_eq!(
        dir_names(&root.join("live/example.test")),
        vec!["fullchain.pem", "privkey.pem"],
        "no temp symlinks left"
    );
}
