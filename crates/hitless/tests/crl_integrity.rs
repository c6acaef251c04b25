//! CRL integrity: the newest CRL of an issuer applies whatever the order they are listed in, a
//! reload never rolls an issuer's CRL back, a CRL must be signed by the key of the CA it names,
//! and trust anchors that are not CAs are flagged. Real handshakes on loopback; CRLs made at
//! test time by rcgen (with CRL numbers) and by `openssl ca -gencrl` (without).

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::{connect, logs_of, Server};
use hitless::{
    Detection, Error, IdentitySource, ReloadingIdentity, ReloadingServerConfig, ReloadingTrust,
    TrustSource,
};
use hitless_test_pki::{sha256_hex, write_atomic, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls::RootCertStore;
use time::{Duration, OffsetDateTime};

/// A server whose client trust is `source` (manual reloads), with its own server CA.
struct Setup {
    server_ca: Ca,
    server: Server,
    trust: ReloadingTrust,
    _configs: ReloadingServerConfig,
    _identity: ReloadingIdentity,
}

fn setup(dir: &Path, source: TrustSource) -> Setup {
    let server_ca = Ca::new_root("Server CA", KeyType::EcP256);
    let leaf = server_ca.issue(&LeafSpec::server("localhost"));
    let bundle = dir.join("server.pem");
    fs::write(&bundle, leaf.bundle_pem(KeyFormat::Pkcs8)).unwrap();
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&bundle))
        .build()
        .unwrap();
    let trust = ReloadingTrust::builder(source)
        .detection(Detection::Manual)
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
        trust,
        _configs: configs,
        _identity: identity,
    }
}

impl Setup {
    /// Whether `leaf` (with its chain) gets in, as a fresh TLS 1.3 client without resumption.
    fn admits(&self, leaf: &Leaf) -> Result<(), String> {
        let mut roots = RootCertStore::empty();
        roots.add(self.server_ca.rustls_cert()).unwrap();
        let mut config = common::client_builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(leaf.rustls_chain(), leaf.rustls_key())
            .unwrap();
        config.resumption = rustls::client::Resumption::disabled();
        connect(self.server.addr, &Arc::new(config), "localhost").map(|_| ())
    }

    fn generation(&self) -> u64 {
        self.trust.status().generation
    }

    fn trust(&self) -> Arc<hitless::Snapshot<hitless::Trust>> {
        self.trust.current().unwrap()
    }
}

/// A PEM CRL of `ca` with this number and thisUpdate (nextUpdate a day later) revoking `revoked`.
fn crl(ca: &Ca, number: u64, this_update: OffsetDateTime, revoked: &[&Leaf]) -> String {
    let key = KeyPair::from_pem(&ca.key_pem()).unwrap();
    let issuer = Issuer::from_ca_cert_der(&ca.rustls_cert(), key).unwrap();
    CertificateRevocationListParams {
        this_update,
        next_update: this_update + Duration::days(1),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|leaf| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&leaf.serial),
                revocation_time: this_update,
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .unwrap()
    .pem()
    .unwrap()
}

/// A PEM CRL of `ca` *without* a CRL number, as `openssl ca -gencrl` writes it when no
/// `crlnumber` file is configured (v2, with an authorityKeyIdentifier).
fn openssl_crl(ca: &Ca, this_update: OffsetDateTime, revoked: &[&Leaf]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("ca.pem"), ca.cert_pem()).unwrap();
    fs::write(d.join("ca.key"), ca.key_pem()).unwrap();
    let stamp = |t: OffsetDateTime| {
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    };
    let mut index = String::new();
    for leaf in revoked {
        let serial: String = leaf.serial.iter().map(|b| format!("{b:02X}")).collect();
        // status, expiry, revocation time, serial, file name, subject (openssl's index.txt).
        let expiry = &stamp(OffsetDateTime::now_utc() + Duration::days(1))[2..];
        let revoked_at = &stamp(this_update)[2..];
        index.push_str(&format!(
            "R\t{expiry}\t{revoked_at}\t{serial}\tunknown\t/CN=revoked\n"
        ));
    }
    fs::write(d.join("index.txt"), index).unwrap();
    fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca = ca_default\n[ca_default]\ndatabase = index.txt\n\
         default_md = sha256\ncrl_extensions = crl_ext\n[crl_ext]\n\
         authorityKeyIdentifier = keyid:always\n",
    )
    .unwrap();
    let out = Command::new("openssl")
        .current_dir(d)
        .args([
            "ca", "-gencrl", "-batch", "-config", "ca.cnf", "-cert", "ca.pem",
        ])
        .args(["-keyfile", "ca.key", "-out", "crl.pem", "-crl_lastupdate"])
        .arg(stamp(this_update))
        .arg("-crl_nextupdate")
        .arg(stamp(this_update + Duration::days(1)))
        .output()
        .expect("run openssl (is it installed?)");
    assert!(
        out.status.success(),
        "openssl ca -gencrl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pem = fs::read_to_string(d.join("crl.pem")).unwrap();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|d: rustls::pki_types::CertificateRevocationListDer| d.to_vec())
        .unwrap();
    let (_, parsed) = x509_parser::parse_x509_crl(&der).unwrap();
    assert!(parsed.crl_number().is_none(), "control: no CRL number");
    pem
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn write(path: &Path, text: &str) {
    write_atomic(path, text.as_bytes());
}

// ---------------------------------------------------------------------------------------------
// Item 3: several CRLs of one issuer.

#[test]
fn an_older_crl_listed_first_does_not_hide_a_newer_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    let revoked = ca.issue(&LeafSpec::client("revoked"));
    let good = ca.issue(&LeafSpec::client("good"));
    let ca_file = dir.path().join("ca.pem");
    fs::write(&ca_file, ca.cert_pem()).unwrap();
    let old_file = dir.path().join("a-old.crl");
    let new_file = dir.path().join("b-new.crl");
    fs::write(&old_file, crl(&ca, 1, now() - Duration::hours(2), &[])).unwrap();
    fs::write(
        &new_file,
        crl(&ca, 2, now() - Duration::hours(1), &[&revoked]),
    )
    .unwrap();

    let (s, logs) = logs_of(|| {
        setup(
            dir.path(),
            TrustSource::cas([&ca_file]).with_crls([&old_file, &new_file]),
        )
    });
    assert!(
        s.admits(&revoked).is_err(),
        "the revocation in the newer CRL must apply, though an older CRL is listed first"
    );
    s.admits(&good)
        .expect("a client that is not revoked gets in");

    let trust = s.trust();
    let applied = trust.value.crls();
    assert_eq!(applied.len(), 1, "{applied:?}");
    assert_eq!(applied[0].path, new_file);
    assert_eq!(applied[0].number.as_deref(), Some("2"));
    let superseded = trust.value.superseded_crls();
    assert_eq!(superseded.len(), 1, "{superseded:?}");
    assert_eq!(superseded[0].path, old_file);
    assert_eq!(superseded[0].number.as_deref(), Some("1"));
    assert!(
        logs.contains("superseded")
            && logs.contains("a-old.crl")
            && logs.contains("b-new.crl")
            && logs.contains("CN=Client CA")
            && logs.contains("number 1")
            && logs.contains("number 2"),
        "the log names both files, the issuer and both numbers: {logs}"
    );

    // Both in one file, older first: the same verdict.
    let both = dir.path().join("both.crl");
    fs::write(
        &both,
        format!(
            "{}{}",
            fs::read_to_string(&old_file).unwrap(),
            fs::read_to_string(&new_file).unwrap()
        ),
    )
    .unwrap();
    let sub = tempfile::tempdir().unwrap();
    let s = setup(sub.path(), TrustSource::cas([&ca_file]).with_crls([&both]));
    assert!(s.admits(&revoked).is_err(), "one file, older CRL first");
    s.admits(&good).expect("good client, one file");
    assert_eq!(s.trust().value.superseded_crls().len(), 1);
}

#[test]
fn without_crl_numbers_the_latest_this_update_applies() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    let revoked = ca.issue(&LeafSpec::client("revoked"));
    let good = ca.issue(&LeafSpec::client("good"));
    let ca_file = dir.path().join("ca.pem");
    fs::write(&ca_file, ca.cert_pem()).unwrap();
    let crl_file = dir.path().join("crls.pem");
    fs::write(
        &crl_file,
        format!(
            "{}{}",
            openssl_crl(&ca, now() - Duration::hours(2), &[]),
            openssl_crl(&ca, now() - Duration::hours(1), &[&revoked])
        ),
    )
    .unwrap();
    let s = setup(
        dir.path(),
        TrustSource::cas([&ca_file]).with_crls([&crl_file]),
    );
    assert!(s.admits(&revoked).is_err(), "the later thisUpdate applies");
    s.admits(&good).expect("good client");
    let trust = s.trust();
    assert_eq!(trust.value.crls()[0].number, None);
    assert_eq!(trust.value.crls()[0].revoked, 1);
    assert_eq!(trust.value.superseded_crls().len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Item 4: rollback.

#[test]
fn a_crl_rollback_is_refused_and_the_crl_in_force_stays() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    let revoked = ca.issue(&LeafSpec::client("revoked"));
    let good = ca.issue(&LeafSpec::client("good"));
    let ca_file = dir.path().join("ca.pem");
    let crl_file = dir.path().join("clients.crl");
    fs::write(&ca_file, ca.cert_pem()).unwrap();
    fs::write(
        &crl_file,
        crl(&ca, 2, now() - Duration::hours(1), &[&revoked]),
    )
    .unwrap();
    let s = setup(
        dir.path(),
        TrustSource::cas([&ca_file]).with_crls([&crl_file]),
    );
    assert!(s.admits(&revoked).is_err(), "control: revoked");
    let generation = s.generation();

    // An older CRL (number 1, issued before the revocation) replaces the file.
    write(&crl_file, &crl(&ca, 1, now() - Duration::hours(2), &[]));
    let err = s.trust.reload().expect_err("a rollback must be refused");
    let message = err.to_string();
    assert!(matches!(err, Error::Crl { .. }), "{err:?}");
    for needle in [
        crl_file.to_str().unwrap(),
        "CN=Client CA",
        "number 1",
        "number 2",
        "rollback",
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
    assert!(
        s.admits(&revoked).is_err(),
        "the revocation of the CRL in force stays"
    );
    s.admits(&good).expect("good client still gets in");
    assert_eq!(s.generation(), generation, "nothing was swapped");
    let status = s.trust.status();
    assert!(status.last_error.is_some(), "reported as a failed reload");
    assert_eq!(status.reloads_failed, 1);

    // The same number again (a reissue) is not a rollback; a higher one goes in.
    write(
        &crl_file,
        &crl(&ca, 2, now() - Duration::minutes(30), &[&revoked]),
    );
    s.trust.reload().expect("an equal CRL number is accepted");
    assert_eq!(s.generation(), generation + 1);
    write(
        &crl_file,
        &crl(&ca, 3, now() - Duration::minutes(10), &[&revoked, &good]),
    );
    s.trust.reload().expect("a newer CRL is accepted");
    assert!(
        s.admits(&good).is_err(),
        "the newer CRL's revocation applies"
    );

    // And the high-water mark moved with it: number 2 is now a rollback too.
    write(
        &crl_file,
        &crl(&ca, 2, now() - Duration::minutes(5), &[&revoked]),
    );
    let err = s.trust.reload().expect_err("number 2 after number 3");
    assert!(err.to_string().contains("number 3"), "{err}");
    assert!(s.admits(&good).is_err(), "number 3 stays in force");
}

#[test]
fn a_rollback_without_crl_numbers_is_judged_by_this_update() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    let revoked = ca.issue(&LeafSpec::client("revoked"));
    let ca_file = dir.path().join("ca.pem");
    let crl_file = dir.path().join("clients.crl");
    fs::write(&ca_file, ca.cert_pem()).unwrap();
    let current = now() - Duration::hours(1);
    fs::write(&crl_file, openssl_crl(&ca, current, &[&revoked])).unwrap();
    let s = setup(
        dir.path(),
        TrustSource::cas([&ca_file]).with_crls([&crl_file]),
    );
    assert!(s.admits(&revoked).is_err(), "control: revoked");
    let generation = s.generation();

    let older = now() - Duration::hours(3);
    write(&crl_file, &openssl_crl(&ca, older, &[]));
    let err = s
        .trust
        .reload()
        .expect_err("an older thisUpdate is a rollback");
    let message = err.to_string();
    for needle in [
        crl_file.to_str().unwrap(),
        "CN=Client CA",
        "no CRL number",
        &format!(
            "{:04}-{:02}-{:02}T{:02}",
            older.year(),
            u8::from(older.month()),
            older.day(),
            older.hour()
        ),
        &format!(
            "{:04}-{:02}-{:02}T{:02}",
            current.year(),
            u8::from(current.month()),
            current.day(),
            current.hour()
        ),
    ] {
        assert!(
            message.contains(needle),
            "{needle:?} missing from: {message}"
        );
    }
    assert!(s.admits(&revoked).is_err(), "the revocation stays");
    assert_eq!(s.generation(), generation);

    write(
        &crl_file,
        &openssl_crl(&ca, now() - Duration::minutes(5), &[&revoked]),
    );
    s.trust.reload().expect("a later thisUpdate is accepted");
    assert_eq!(s.generation(), generation + 1);
}

#[test]
fn a_crl_that_vanishes_while_its_ca_is_trusted_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca_a = Ca::new_root("Client CA A", KeyType::EcP256);
    let ca_b = Ca::new_root("Client CA B", KeyType::EcP256);
    let revoked_b = ca_b.issue(&LeafSpec::client("revoked-b"));
    let good_a = ca_a.issue(&LeafSpec::client("good-a"));
    let ca_file = dir.path().join("ca.pem");
    let crl_file = dir.path().join("clients.crl");
    fs::write(&ca_file, format!("{}{}", ca_a.cert_pem(), ca_b.cert_pem())).unwrap();
    let crl_a = crl(&ca_a, 1, now() - Duration::hours(1), &[]);
    let crl_b = crl(&ca_b, 1, now() - Duration::hours(1), &[&revoked_b]);
    fs::write(&crl_file, format!("{crl_a}{crl_b}")).unwrap();
    let s = setup(
        dir.path(),
        TrustSource::cas([&ca_file]).with_crls([&crl_file]),
    );
    assert!(s.admits(&revoked_b).is_err(), "control: revoked");

    // B's CRL disappears from the file while CA B is still trusted.
    write(&crl_file, &crl_a);
    let err = s
        .trust
        .reload()
        .expect_err("B's revocations must not vanish");
    assert!(
        err.to_string().contains("CN=Client CA B"),
        "names the issuer: {err}"
    );
    assert!(s.admits(&revoked_b).is_err(), "B's revocation stays");

    // CA B leaves the bundle with its CRL: that is a CA removed, and accepted.
    write(&ca_file, &ca_a.cert_pem());
    s.trust.reload().expect("CA and CRL removed together");
    assert_eq!(s.trust().value.crls().len(), 1);
    s.admits(&good_a).expect("CA A's client still gets in");
}

// ---------------------------------------------------------------------------------------------
// Item 5: signature.

#[test]
fn a_crl_signed_by_another_key_of_the_same_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    // Same distinguished name, another key: what re-keying a CA under its name produces.
    let impostor = Ca::new_root("Client CA", KeyType::EcP256);
    assert_eq!(
        ca.subject_der(),
        impostor.subject_der(),
        "control: same name"
    );
    let client = ca.issue(&LeafSpec::client("client"));
    let ca_file = dir.path().join("ca.pem");
    let crl_file = dir.path().join("clients.crl");
    fs::write(&ca_file, ca.cert_pem()).unwrap();

    // At start: the trust is refused, naming the file and the reason.
    fs::write(
        &crl_file,
        crl(&impostor, 5, now() - Duration::hours(1), &[]),
    )
    .unwrap();
    let err = ReloadingTrust::builder(TrustSource::cas([&ca_file]).with_crls([&crl_file]))
        .detection(Detection::Manual)
        .build()
        .expect_err("a CRL signed by another key must be refused at start");
    assert!(matches!(err, Error::Crl { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(crl_file.to_str().unwrap()), "{message}");
    assert!(message.contains("signature"), "{message}");

    // As a reload: refused, and the last good trust keeps admitting the CA's clients.
    write(&crl_file, &crl(&ca, 1, now() - Duration::hours(1), &[]));
    let s = setup(
        dir.path(),
        TrustSource::cas([&ca_file]).with_crls([&crl_file]),
    );
    s.admits(&client).expect("control: accepted");
    assert_eq!(
        s.trust().value.crls()[0].verified_by.as_deref(),
        Some(sha256_hex(&ca.cert_der()).as_str())
    );
    let generation = s.generation();
    write(
        &crl_file,
        &crl(&impostor, 9, now() - Duration::minutes(5), &[]),
    );
    let err = s.trust.reload().expect_err("refused as a reload");
    assert!(err.to_string().contains("signature"), "{err}");
    assert!(
        err.to_string().contains(crl_file.to_str().unwrap()),
        "{err}"
    );
    assert_eq!(s.generation(), generation);
    s.admits(&client)
        .expect("the CA's clients are still admitted under the last good trust");
}

#[test]
fn two_trusted_cas_of_one_name_cannot_share_a_crl() {
    let dir = tempfile::tempdir().unwrap();
    let old = Ca::new_root("Client CA", KeyType::EcP256);
    let new = Ca::new_root("Client CA", KeyType::EcP256);
    let ca_file = dir.path().join("ca.pem");
    let crl_file = dir.path().join("clients.crl");
    fs::write(&ca_file, format!("{}{}", old.cert_pem(), new.cert_pem())).unwrap();
    fs::write(&crl_file, crl(&old, 1, now() - Duration::hours(1), &[])).unwrap();
    // rustls would check this CRL against whichever CA issued the client's certificate: every
    // client of `new` would be refused with BadSignature.
    let err = ReloadingTrust::builder(TrustSource::cas([&ca_file]).with_crls([&crl_file]))
        .detection(Detection::Manual)
        .build()
        .expect_err("refused");
    assert!(
        err.to_string().contains("same name") || err.to_string().contains("of that name"),
        "{err}"
    );
    assert!(
        err.to_string().contains(&sha256_hex(&new.cert_der())),
        "{err}"
    );
}

#[test]
fn crl_signatures_are_checked_for_every_key_type() {
    for key_type in [
        KeyType::EcP256,
        KeyType::EcP384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new_root("Client CA", key_type);
        let impostor = Ca::new_root("Client CA", key_type);
        let revoked = ca.issue(&LeafSpec::client("revoked"));
        let ca_file = dir.path().join("ca.pem");
        let crl_file = dir.path().join("clients.crl");
        fs::write(&ca_file, ca.cert_pem()).unwrap();
        fs::write(
            &crl_file,
            crl(&ca, 1, now() - Duration::hours(1), &[&revoked]),
        )
        .unwrap();
        let s = setup(
            dir.path(),
            TrustSource::cas([&ca_file]).with_crls([&crl_file]),
        );
        assert_eq!(
            s.trust().value.crls()[0].verified_by.as_deref(),
            Some(sha256_hex(&ca.cert_der()).as_str()),
            "{key_type:?}"
        );
        assert!(s.admits(&revoked).is_err(), "{key_type:?}: revoked");
        write(
            &crl_file,
            &crl(&impostor, 2, now() - Duration::minutes(5), &[]),
        );
        let err = s.trust.reload().expect_err("impostor refused");
        assert!(err.to_string().contains("signature"), "{key_type:?}: {err}");
    }
}

#[test]
fn an_intermediate_crl_applies_and_is_checked_at_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let root = Ca::new_root("Client Root", KeyType::EcP256);
    let intermediate = root.new_intermediate("Client Intermediate", KeyType::EcP256);
    let revoked = intermediate.issue(&LeafSpec::client("revoked"));
    let good = intermediate.issue(&LeafSpec::client("good"));
    let ca_file = dir.path().join("root.pem");
    let crl_file = dir.path().join("intermediate.crl");
    fs::write(&ca_file, root.cert_pem()).unwrap();
    fs::write(
        &crl_file,
        crl(&intermediate, 1, now() - Duration::hours(1), &[&revoked]),
    )
    .unwrap();
    // The intermediate is not in the bundle: its CRL cannot be verified at load, yet it is the
    // usual two-tier PKI (OpenBao's pki_int, `hitless ca`), so it is kept, with a warning.
    let (s, logs) = logs_of(|| {
        setup(
            dir.path(),
            TrustSource::cas([&ca_file]).with_crls([&crl_file]),
        )
    });
    assert!(
        logs.contains("intermediate.crl") && logs.contains("not a CA of the trust bundle"),
        "{logs}"
    );
    assert_eq!(s.trust().value.crls()[0].verified_by, None);
    assert!(
        s.admits(&revoked).is_err(),
        "the intermediate's revocation applies"
    );
    s.admits(&good).expect("good client of the intermediate");
}

// ---------------------------------------------------------------------------------------------
// Item 6 (PEM part): trust anchors that are not CAs.

#[test]
fn a_trust_anchor_that_is_not_a_ca_is_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new_root("Client CA", KeyType::EcP256);
    let leaf = ca.issue(&LeafSpec::client("pinned-client"));
    let ca_file = dir.path().join("anchors.pem");
    fs::write(&ca_file, format!("{}{}", ca.cert_pem(), leaf.cert_pem)).unwrap();
    let (trust, logs) = logs_of(|| {
        ReloadingTrust::builder(TrustSource::cas([&ca_file]))
            .detection(Detection::Manual)
            .build()
            .unwrap()
    });
    assert!(
        logs.contains("not a CA")
            && logs.contains("anchors.pem")
            && logs.contains("CN=pinned-client"),
        "a warning names the file and the subject: {logs}"
    );
    assert!(
        !logs.contains("CN=Client CA"),
        "the CA is not flagged: {logs}"
    );
    let current = trust.current().unwrap();
    let flagged: Vec<&str> = current
        .value
        .non_ca_anchors()
        .iter()
        .map(|c| c.subject.as_str())
        .collect();
    assert_eq!(flagged, ["CN=pinned-client"]);
}
