//! Many identities, fast: one CA and ONE P-256 key pair shared by every leaf, so that 10,000
//! certificates cost 10,000 ECDSA signatures (well under a second) instead of 10,000 key
//! generations. The library does not care that the keys are equal: every identity is still
//! its own file, parsed, checked and loaded on its own, with its own `CertifiedKey`.
//!
//! Leaf `i` is issued for `h<i>.example.test` and `*.w<i>.example.test`, and lives in its own
//! directory: `<root>/id<i>/identity.pem` (a bundle: leaf, CA, PKCS#8 key), the layout of
//! one Kubernetes Secret or one certbot lineage per site.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hitless::{Detection, IdentitySource, MemberOptions, ServerIdentities};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::SignatureScheme;

/// The exact name served by identity `i`.
pub fn exact_name(i: usize) -> String {
    format!("h{i}.example.test")
}

/// A host matched by identity `i`'s wildcard `*.w<i>.example.test`.
pub fn wildcard_host(i: usize) -> String {
    format!("x.w{i}.example.test")
}

/// A name no identity serves (selects the default identity, member 0).
pub fn unknown_name(i: usize) -> String {
    format!("unknown{i}.example.org")
}

/// The signature schemes a typical browser offers, in its order (Chrome's): what `resolve`
/// checks each candidate's key against.
pub const CLIENT_SCHEMES: [SignatureScheme; 8] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// A CA and the one leaf key pair every certificate it issues here certifies.
pub struct ManyPki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    leaf_key: KeyPair,
    leaf_key_pem: String,
    serial: AtomicU64,
}

impl ManyPki {
    /// A fresh P-256 CA and leaf key.
    pub fn new() -> ManyPki {
        let now = time::OffsetDateTime::now_utc();
        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("CA key");
        let mut params = CertificateParams::default();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "hitless-bench many-identities CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = params.self_signed(&ca_key).expect("self-sign CA");
        let leaf_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let leaf_key_pem = leaf_key.serialize_pem();
        ManyPki {
            issuer: Issuer::new(params, ca_key),
            ca_pem: ca.pem(),
            leaf_key,
            leaf_key_pem,
            serial: AtomicU64::new(1),
        }
    }

    /// A new certificate for identity `i` (a new serial every call, so every call gives
    /// different content): `(bundle PEM, leaf DER)`.
    pub fn bundle(&self, i: usize) -> (Vec<u8>, Vec<u8>) {
        let now = time::OffsetDateTime::now_utc();
        let mut params =
            CertificateParams::new(vec![exact_name(i), format!("*.w{i}.example.test")])
                .expect("leaf names");
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(2);
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let mut sn = vec![0x01];
        sn.extend_from_slice(&serial.to_be_bytes());
        params.serial_number = Some(SerialNumber::from_slice(&sn));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, exact_name(i));
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&self.leaf_key, &self.issuer)
            .expect("sign leaf");
        let pem = format!(
            "{}\n{}\n{}\n",
            cert.pem().trim_end(),
            self.ca_pem.trim_end(),
            self.leaf_key_pem.trim_end()
        );
        (pem.into_bytes(), cert.der().to_vec())
    }
}

impl Default for ManyPki {
    fn default() -> Self {
        Self::new()
    }
}

/// `n` identities on disk, one directory each.
pub struct Tree {
    pub pki: ManyPki,
    pub dir: tempfile::TempDir,
    /// `<dir>/id<i>/identity.pem`.
    pub paths: Vec<PathBuf>,
    /// The leaf DER currently in each file.
    pub ders: Vec<Vec<u8>>,
    /// Seconds spent issuing the certificates (signatures, PEM).
    pub issue_s: f64,
    /// Seconds spent creating the directories and writing the files.
    pub write_s: f64,
}

impl Tree {
    /// Issues `n` certificates and writes `<tmp>/id<i>/identity.pem` for each.
    pub fn generate(n: usize) -> Tree {
        let pki = ManyPki::new();
        let t = Instant::now();
        let (bundles, ders): (Vec<Vec<u8>>, Vec<Vec<u8>>) = (0..n).map(|i| pki.bundle(i)).unzip();
        let issue_s = t.elapsed().as_secs_f64();
        let dir = tempfile::Builder::new()
            .prefix("hitless-bench-many-")
            .tempdir()
            .expect("create temp dir");
        let t = Instant::now();
        let paths = bundles
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let d = dir.path().join(format!("id{i:05}"));
                fs::create_dir(&d).expect("create identity dir");
                let p = d.join("identity.pem");
                fs::write(&p, b).expect("write identity");
                p
            })
            .collect();
        let write_s = t.elapsed().as_secs_f64();
        Tree {
            pki,
            dir,
            paths,
            ders,
            issue_s,
            write_s,
        }
    }

    /// A `ServerIdentities` over the first `n` identities (member 0 is the default), with
    /// one member per file named `id<i>`.
    pub fn identities(
        &self,
        n: usize,
        detection: Detection,
    ) -> Result<ServerIdentities, hitless::Error> {
        let mut b = ServerIdentities::builder().detection(detection);
        for (i, p) in self.paths.iter().take(n).enumerate() {
            b = b.identity(
                IdentitySource::bundle(p),
                MemberOptions::named(format!("id{i:05}")).default_identity(i == 0),
            );
        }
        b.build()
    }
}
