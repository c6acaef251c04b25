//! PKCS#12 identities as OpenSSL 3 (default and `-legacy`) and Java `keytool` write them,
//! made at test time by those tools; wrong passwords keep the last good identity. PKCS#12 trust
//! stores: only trusted-certificate entries and certificate bags without a key are anchors.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{client_config, connect, logs_of, Server};
use hitless::{
    Detection, Error, IdentitySource, Password, ReloadingIdentity, ReloadingServerConfig,
    ReloadingTrust, TrustSource,
};
use hitless_test_pki::{sha256_hex, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl_p12(dir: &Path, leaf: &Leaf, legacy: bool, password: &str) -> std::path::PathBuf {
    let (cert, key) = leaf.write_pair(dir, "leaf.crt", "leaf.key");
    let out = dir.join(if legacy { "legacy.p12" } else { "modern.p12" });
    let mut cmd = Command::new("openssl");
    cmd.args(["pkcs12", "-export", "-in"])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&out)
        .arg("-passout")
        .arg(format!("pass:{password}"));
    if legacy {
        cmd.arg("-legacy");
    }
    run(&mut cmd);
    out
}

fn serve_and_fingerprint(
    identity: &ReloadingIdentity,
    client: &Arc<ClientConfig>,
    name: &str,
) -> String {
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    let server = Server::start(Arc::new(config));
    connect(server.addr, client, name)
        .expect("handshake")
        .fingerprint
}

#[test]
fn openssl_default_and_legacy_pkcs12_serve_handshakes() {
    let ca = Ca::new_root("P12 CA", KeyType::EcP256);
    for (legacy, key_type) in [
        (false, KeyType::EcP256),
        (true, KeyType::EcP256),
        (false, KeyType::Rsa2048),
        (true, KeyType::Rsa2048),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let leaf = ca.issue(&LeafSpec::server("localhost").key_type(key_type));
        let p12 = openssl_p12(dir.path(), &leaf, legacy, "s3cret");
        let pw = dir.path().join("password");
        fs::write(&pw, "s3cret\n").unwrap();
        let identity = ReloadingIdentity::builder(IdentitySource::pkcs12(&p12, Password::File(pw)))
            .build()
            .unwrap_or_else(|e| panic!("legacy={legacy} {key_type:?}: {e}"));
        assert_eq!(
            serve_and_fingerprint(&identity, &client_config(&ca, None), "localhost"),
            leaf.fingerprint_sha256_hex(),
            "legacy={legacy} {key_type:?}"
        );
    }
}

#[test]
fn keytool_pkcs12_serves_handshakes() {
    for (alg, extra) in [
        ("EC", ["-groupname", "secp256r1"]),
        ("RSA", ["-keysize", "2048"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("keystore.p12");
        run(Command::new("keytool")
            .args([
                "-genkeypair",
                "-storetype",
                "PKCS12",
                "-alias",
                "server",
                "-keyalg",
                alg,
            ])
            .args(extra)
            .args([
                "-dname",
                "CN=localhost",
                "-ext",
                "SAN=dns:localhost",
                "-validity",
                "2",
            ])
            .arg("-keystore")
            .arg(&store)
            .args(["-storepass", "changeit", "-keypass", "changeit"]));
        let exported = dir.path().join("server.pem");
        run(Command::new("keytool")
            .args([
                "-exportcert",
                "-rfc",
                "-alias",
                "server",
                "-storetype",
                "PKCS12",
            ])
            .arg("-keystore")
            .arg(&store)
            .args(["-storepass", "changeit", "-file"])
            .arg(&exported));
        let cert = CertificateDer::from_pem_file(&exported).unwrap();
        std::env::set_var("HITLESS_TEST_P12_PASSWORD", "changeit");
        let built = ReloadingIdentity::builder(IdentitySource::pkcs12(
            &store,
            Password::Env("HITLESS_TEST_P12_PASSWORD".into()),
        ))
        .build();
        // ring loads no EC PKCS#8 key without its public key, which is how keytool writes
        // them (briansmith/ring#2133): refused with the file and the reason, no panic.
        if cfg!(all(feature = "ring", not(feature = "aws-lc-rs"))) && alg == "EC" {
            let e = built.expect_err("ring refuses keytool's EC key");
            let message = e.to_string();
            assert!(message.contains(&store.display().to_string()), "{message}");
            assert!(message.contains("private key"), "{message}");
            continue;
        }
        let identity = built.unwrap_or_else(|e| panic!("keytool {alg}: {e}"));
        // The keytool certificate is self-signed: the client trusts it directly.
        let mut roots = RootCertStore::empty();
        roots.add(cert.clone()).unwrap();
        let mut client = common::client_builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = rustls::client::Resumption::disabled();
        assert_eq!(
            serve_and_fingerprint(&identity, &Arc::new(client), "localhost"),
            sha256_hex(cert.as_ref()),
            "keytool {alg}"
        );
    }
}

#[test]
fn wrong_password_keeps_the_last_good_identity() {
    let ca = Ca::new_root("P12 CA", KeyType::EcP256);
    let dir = tempfile::tempdir().unwrap();
    let first = ca.issue(&LeafSpec::server("localhost"));
    let p12 = openssl_p12(dir.path(), &first, false, "right");
    let pw = dir.path().join("password");
    fs::write(&pw, "right").unwrap();
    let identity =
        ReloadingIdentity::builder(IdentitySource::pkcs12(&p12, Password::File(pw.clone())))
            .detection(Detection::Manual)
            .quiet_period(std::time::Duration::from_millis(10))
            .build()
            .unwrap();
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    let server = Server::start(Arc::new(config));
    let client = client_config(&ca, None);

    fs::write(&pw, "wrong").unwrap();
    let err = identity.reload().unwrap_err();
    assert!(matches!(err, Error::WrongPassword { .. }), "{err:?}");
    assert!(err.to_string().contains("modern.p12"), "{err}");
    assert_eq!(
        connect(server.addr, &client, "localhost")
            .unwrap()
            .fingerprint,
        first.fingerprint_sha256_hex()
    );
    assert!(identity
        .status()
        .last_error
        .unwrap()
        .message
        .contains("wrong password"));

    // Garbage in the keystore: refused too.
    fs::write(&p12, b"\x30\x82garbage").unwrap();
    fs::write(&pw, "right").unwrap();
    assert!(matches!(
        identity.reload().unwrap_err(),
        Error::Pkcs12 { .. }
    ));

    // A new keystore with the right password is picked up.
    let second = ca.issue(&LeafSpec::server("localhost"));
    let _ = fs::remove_file(&p12);
    openssl_p12(dir.path(), &second, false, "right");
    identity.reload().unwrap();
    assert_eq!(
        connect(server.addr, &client, "localhost")
            .unwrap()
            .fingerprint,
        second.fingerprint_sha256_hex()
    );
}

/// A mutual-TLS server whose client trust is `trust`, with its own server CA.
struct MtlsServer {
    server_ca: Ca,
    server: Server,
    _configs: ReloadingServerConfig,
    _identity: ReloadingIdentity,
}

impl MtlsServer {
    fn start(dir: &Path, trust: &ReloadingTrust) -> MtlsServer {
        let server_ca = Ca::new_root("Server CA", KeyType::EcP256);
        let bundle = dir.join("server.pem");
        fs::write(
            &bundle,
            server_ca
                .issue(&LeafSpec::server("localhost"))
                .bundle_pem(KeyFormat::Pkcs8),
        )
        .unwrap();
        let identity = ReloadingIdentity::builder(IdentitySource::bundle(&bundle))
            .build()
            .unwrap();
        let configs = ReloadingServerConfig::builder(&identity)
            .client_trust(trust)
            .build()
            .unwrap();
        let c = configs.clone();
        MtlsServer {
            server: Server::start_with(move || c.current()),
            server_ca,
            _configs: configs,
            _identity: identity,
        }
    }

    /// Whether a client presenting `chain` (leaf first) with `key` gets in.
    fn admits(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), String> {
        let config = client_config(&self.server_ca, Some((chain, key)));
        connect(self.server.addr, &config, "localhost").map(|_| ())
    }

    fn admits_leaf(&self, leaf: &Leaf) -> Result<(), String> {
        self.admits(leaf.rustls_chain(), leaf.rustls_key())
    }
}

fn p12_trust(store: &Path, password: &str) -> Result<ReloadingTrust, Error> {
    let pw = store.with_extension("password");
    fs::write(&pw, password).unwrap();
    ReloadingTrust::builder(TrustSource::default().with_pkcs12(store, Password::File(pw)))
        .detection(Detection::Manual)
        .build()
}

/// A certificate for `cn` signed by `leaf`'s key in the name of `leaf`: what whoever holds a
/// client's key could mint if that client's certificate were a trust anchor.
fn mint_with_leaf_key(
    leaf: &Leaf,
    cn: &str,
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let leaf_key = rcgen::KeyPair::from_pem(&leaf.key_pem(KeyFormat::Pkcs8)).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_der(&CertificateDer::from(leaf.cert_der.clone()), leaf_key)
            .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::hours(1);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![
            cert.der().clone(),
            CertificateDer::from(leaf.cert_der.clone()),
        ],
        PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
}

#[test]
fn a_private_key_entry_is_never_a_trust_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let client_ca = Ca::new_root("Client CA", KeyType::EcP256);
    let partner_ca = Ca::new_root("Partner CA", KeyType::EcP256);
    let client = client_ca.issue(&LeafSpec::client("client-1"));
    let partner_client = partner_ca.issue(&LeafSpec::client("partner-client"));
    let (cert, key) = client.write_pair(dir.path(), "client.crt", "client.key");
    let export = |out: &Path, extra: &str| {
        let extra_file = dir.path().join("extra.pem");
        fs::write(&extra_file, extra).unwrap();
        run(Command::new("openssl")
            .args(["pkcs12", "-export", "-in"])
            .arg(&cert)
            .arg("-inkey")
            .arg(&key)
            .arg("-certfile")
            .arg(&extra_file)
            .arg("-out")
            .arg(out)
            .args(["-passout", "pass:pw"]));
    };

    // A client's identity (key, leaf, issuing CA) is not a trust store: refused, saying why.
    let identity_p12 = dir.path().join("client.p12");
    export(&identity_p12, &client_ca.cert_pem());
    let err = p12_trust(&identity_p12, "pw").expect_err("an identity is not a trust store");
    assert!(err.to_string().contains("client.p12"), "{err}");
    assert!(err.to_string().contains("private-key entry"), "{err}");

    // The same identity plus an unrelated CA: that CA is the only anchor.
    let mixed_p12 = dir.path().join("mixed.p12");
    export(
        &mixed_p12,
        &format!("{}{}", client_ca.cert_pem(), partner_ca.cert_pem()),
    );
    let (trust, logs) = logs_of(|| p12_trust(&mixed_p12, "pw").unwrap());
    let server = MtlsServer::start(dir.path(), &trust);
    let (minted_chain, minted_key) = mint_with_leaf_key(&client, "minted");
    assert!(
        server.admits(minted_chain, minted_key).is_err(),
        "a certificate minted with the client's key must be refused"
    );
    assert!(
        server.admits_leaf(&client).is_err(),
        "the chain of a private-key entry is not trusted either"
    );
    server
        .admits_leaf(&partner_client)
        .expect("a certificate bag without a key is a trust anchor");
    let current = trust.current().unwrap();
    let anchors: Vec<&str> = current
        .value
        .cas()
        .iter()
        .map(|c| c.subject.as_str())
        .collect();
    assert_eq!(anchors, ["O=hitless test PKI, CN=Partner CA"]);
    assert!(
        logs.contains("mixed.p12") && logs.contains("CN=client-1") && logs.contains("CN=Client CA"),
        "the certificates left out are named in the log: {logs}"
    );
}

#[test]
fn openssl_nokeys_and_keytool_trust_stores_admit_their_cas() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    let client = ca.issue(&LeafSpec::client("client-1"));
    let pinned = ca.issue(&LeafSpec::client("pinned"));
    let ca_pem = dir.path().join("ca.pem");
    fs::write(&ca_pem, ca.cert_pem()).unwrap();

    // `openssl pkcs12 -export -nokeys`: certificate bags without a key (and no Java attribute).
    let nokeys = dir.path().join("nokeys.p12");
    run(Command::new("openssl")
        .args(["pkcs12", "-export", "-nokeys", "-in"])
        .arg(&ca_pem)
        .arg("-out")
        .arg(&nokeys)
        .args(["-passout", "pass:x"]));
    let trust = p12_trust(&nokeys, "x").expect("an openssl -nokeys trust store is accepted");
    let server = MtlsServer::start(dir.path(), &trust);
    server
        .admits_leaf(&client)
        .expect("a client of the CA gets in");
    assert!(trust.current().unwrap().value.non_ca_anchors().is_empty());
    drop(server);

    // keytool's trusted-certificate entry.
    let keytool = dir.path().join("keytool.p12");
    run(Command::new("keytool")
        .args([
            "-importcert",
            "-noprompt",
            "-alias",
            "client-ca",
            "-storetype",
            "PKCS12",
        ])
        .arg("-file")
        .arg(&ca_pem)
        .arg("-keystore")
        .arg(&keytool)
        .args(["-storepass", "changeit"]));
    let trust = p12_trust(&keytool, "changeit").expect("a keytool trust store is accepted");
    let server = MtlsServer::start(dir.path(), &trust);
    server
        .admits_leaf(&client)
        .expect("a client of the CA gets in");
    drop(server);

    // A leaf exported as a trust entry is trusted, and flagged as not a CA.
    let pinned_pem = dir.path().join("pinned.pem");
    fs::write(&pinned_pem, &pinned.cert_pem).unwrap();
    let pinned_p12 = dir.path().join("pinned.p12");
    run(Command::new("openssl")
        .args(["pkcs12", "-export", "-nokeys", "-in"])
        .arg(&pinned_pem)
        .arg("-out")
        .arg(&pinned_p12)
        .args(["-passout", "pass:x"]));
    let (trust, logs) = logs_of(|| p12_trust(&pinned_p12, "x").unwrap());
    assert!(
        logs.contains("not a CA") && logs.contains("pinned.p12") && logs.contains("CN=pinned"),
        "{logs}"
    );
    let current = trust.current().unwrap();
    let flagged: Vec<&str> = current
        .value
        .non_ca_anchors()
        .iter()
        .map(|c| c.subject.as_str())
        .collect();
    assert_eq!(flagged, ["CN=pinned"]);
}
