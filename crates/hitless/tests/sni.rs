//! Several identities chosen by SNI: exact, wildcard, unknown and absent names, key type by the
//! client's signature schemes, IP SANs, and one broken identity leaving the others serving.

mod common;

use std::fs;
use std::sync::Arc;

use common::{connect, Server};
use hitless::{Detection, IdentitySource, MemberOptions, ServerIdentities};
use hitless_test_pki::{sha256_hex, write_atomic, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Accepts any server certificate (signatures are still checked) offering only `schemes`:
/// lets the test see which identity was chosen whatever its names.
#[derive(Debug)]
struct SeeAll {
    inner: Arc<WebPkiServerVerifier>,
    schemes: Vec<SignatureScheme>,
}

impl ServerCertVerifier for SeeAll {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(m, c, d)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(m, c, d)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes.clone()
    }
}

fn client(ca: &Ca, only: Option<&[SignatureScheme]>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.rustls_cert()).unwrap();
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), common::provider())
        .build()
        .unwrap();
    let schemes = only.map_or_else(|| inner.supported_verify_schemes(), <[_]>::to_vec);
    let mut config = common::client_builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SeeAll { inner, schemes }))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

struct Fixture {
    ca: Ca,
    dir: tempfile::TempDir,
    api_ec: Leaf,
    api_rsa: Leaf,
    wild: Leaf,
    fallback: Leaf,
    identities: ServerIdentities,
}

fn fixture() -> Fixture {
    let ca = Ca::new_root("SNI CA", KeyType::EcP256);
    let dir = tempfile::tempdir().unwrap();
    let api_ec = ca.issue(&LeafSpec::server("api.example.test").dns(vec!["api.example.test"]));
    let api_rsa = ca.issue(
        &LeafSpec::server("api.example.test")
            .dns(vec!["api.example.test"])
            .key_type(KeyType::Rsa2048),
    );
    let wild = ca.issue(&LeafSpec::server("wild").dns(vec!["*.example.test"]));
    let fallback = ca.issue(
        &LeafSpec::server("fallback.test")
            .dns(vec!["fallback.test"])
            .ips(vec![]),
    );
    let with_ip = ca.issue(&LeafSpec::server("localhost"));
    let mut builder = ServerIdentities::builder()
        .detection(Detection::Watch)
        .quiet_period(std::time::Duration::from_millis(20));
    for (name, leaf, default) in [
        ("api-ec", &api_ec, false),
        ("api-rsa", &api_rsa, false),
        ("wild", &wild, false),
        ("localhost", &with_ip, false),
        ("fallback", &fallback, true),
    ] {
        let path = dir.path().join(format!("{name}.pem"));
        fs::write(&path, leaf.bundle_pem(KeyFormat::Pkcs8)).unwrap();
        builder = builder.identity(
            IdentitySource::bundle(path),
            MemberOptions::named(name).default_identity(default),
        );
    }
    Fixture {
        identities: builder.build().unwrap(),
        ca,
        dir,
        api_ec,
        api_rsa,
        wild,
        fallback,
    }
}

fn served(server: &Server, config: &Arc<ClientConfig>, name: &str) -> String {
    connect(server.addr, config, name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .fingerprint
}

#[test]
fn selection_by_name_key_type_and_default() {
    let f = fixture();
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(f.identities.resolver());
    let server = Server::start(Arc::new(config));
    let any = client(&f.ca, None);
    let ecdsa_only = client(
        &f.ca,
        Some(&[
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
        ]),
    );
    let rsa_only = client(
        &f.ca,
        Some(&[
            SignatureScheme::RSA_PSS_SHA256,
            SignatureScheme::RSA_PKCS1_SHA256,
        ]),
    );
    let fp = Leaf::fingerprint_sha256_hex;
    assert_eq!(
        served(&server, &any, "api.example.test"),
        fp(&f.api_ec),
        "first in order"
    );
    assert_eq!(
        served(&server, &any, "API.Example.Test"),
        fp(&f.api_ec),
        "case-insensitive"
    );
    assert_eq!(
        served(&server, &ecdsa_only, "api.example.test"),
        fp(&f.api_ec)
    );
    assert_eq!(
        served(&server, &rsa_only, "api.example.test"),
        fp(&f.api_rsa),
        "RSA-only client"
    );
    assert_eq!(
        served(&server, &any, "www.example.test"),
        fp(&f.wild),
        "wildcard"
    );
    assert_eq!(
        served(&server, &any, "a.b.example.test"),
        fp(&f.fallback),
        "one label only"
    );
    assert_eq!(
        served(&server, &any, "example.test"),
        fp(&f.fallback),
        "not the bare domain"
    );
    assert_eq!(
        served(&server, &any, "unknown.test"),
        fp(&f.fallback),
        "unknown name"
    );
    assert_eq!(
        served(&server, &any, "127.0.0.1"),
        fp(&f.fallback),
        "no SNI, no local IP"
    );
}

#[test]
fn no_sni_uses_the_identity_with_the_listeners_ip() {
    let f = fixture();
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(f.identities.resolver_for_ip("127.0.0.1".parse().unwrap()));
    let server = Server::start(Arc::new(config));
    let fingerprint = served(&server, &client(&f.ca, None), "127.0.0.1");
    let (_, localhost) = &f.identities.members()[3];
    assert_eq!(
        fingerprint,
        localhost.as_ref().unwrap().value.leaf().fingerprint
    );
}

#[test]
fn openssl_servername_gets_the_right_certificate() {
    let f = fixture();
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(f.identities.resolver());
    let server = Server::start(Arc::new(config));
    for (sni, want) in [
        (Some("api.example.test"), &f.api_ec),
        (Some("x.example.test"), &f.wild),
        (Some("nothing.test"), &f.fallback),
        (None, &f.fallback),
    ] {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["s_client", "-connect", &server.addr.to_string()]);
        match sni {
            Some(name) => cmd.args(["-servername", name]),
            None => cmd.arg("-noservername"),
        };
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl must be installed for this test");
        let text = String::from_utf8_lossy(&out.stdout);
        let pem_start = text
            .find("-----BEGIN CERTIFICATE-----")
            .expect("no certificate shown");
        let pem_end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(text[pem_start..pem_end].as_bytes()).unwrap();
        assert_eq!(sha256_hex(&der), want.fingerprint_sha256_hex(), "{sni:?}");
    }
}

#[test]
fn one_broken_identity_leaves_the_others_serving() {
    let f = fixture();
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(f.identities.resolver());
    let server = Server::start(Arc::new(config));
    let any = client(&f.ca, None);
    write_atomic(&f.dir.path().join("wild.pem"), b"garbage");
    let results = f.identities.reload();
    assert!(results[2].is_err(), "the broken identity reports");
    assert!(results.iter().enumerate().all(|(i, r)| i == 2 || r.is_ok()));
    assert_eq!(
        served(&server, &any, "www.example.test"),
        f.wild.fingerprint_sha256_hex(),
        "last good wildcard"
    );
    assert_eq!(
        served(&server, &any, "api.example.test"),
        f.api_ec.fingerprint_sha256_hex()
    );
    // Rotating another identity works while one is broken.
    let new_api =
        f.ca.issue(&LeafSpec::server("api.example.test").dns(vec!["api.example.test"]));
    write_atomic(
        &f.dir.path().join("api-ec.pem"),
        new_api.bundle_pem(KeyFormat::Pkcs8).as_bytes(),
    );
    common::wait_for("the new api identity", common::PATIENCE, || {
        (served(&server, &any, "api.example.test") == new_api.fingerprint_sha256_hex())
            .then_some(())
    });
    let (status, _) = &f.identities.members()[2];
    assert!(status
        .last_error
        .as_ref()
        .unwrap()
        .message
        .contains("wild.pem"));
}
