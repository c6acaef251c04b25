//! Test-only PKI for the `hitless` test suites.
//!
//! Everything is generated at test time (nothing secret is checked in):
//!
//! * [`Ca`]: a root or intermediate CA that issues [`Leaf`] certificates and [`Crl`]s;
//! * [`LeafSpec`]: what to put in a leaf (names, key type, EKUs, validity, serial);
//! * [`Leaf`]: the issued certificate, chain and key in the encodings real
//!   deployments use (PKCS#8, PKCS#1, SEC1, OpenBao/Vault bundles);
//! * [`write_atomic`], [`k8s_swap`], [`certbot_renew`]: the on-disk rotation
//!   patterns the library must survive.
//!
//! All functions panic on failure; this crate is only meant for tests.
//!
//! ```
//! use hitless_test_pki::{Ca, KeyType, LeafSpec};
//!
//! let root = Ca::new_root("Test Root", KeyType::EcP256);
//! let leaf = root.issue(&LeafSpec::server("localhost"));
//! assert!(leaf.chain_pem.starts_with("-----BEGIN CERTIFICATE-----"));
//! ```

#![warn(missing_docs)]

mod keyconv;
mod layout;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, RsaKeySize, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

pub use layout::{certbot_renew, k8s_swap, write_atomic};
/// The certificate generator, for tests that customise a certificate beyond [`LeafSpec`]
/// (see [`Ca::new_intermediate_with`]).
pub use rcgen;

/// Private-key algorithm (and size) for a CA or leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA on NIST P-256, signing with SHA-256.
    EcP256,
    /// ECDSA on NIST P-384, signing with SHA-384.
    EcP384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048-bit, PKCS#1 v1.5 with SHA-256.
    Rsa2048,
    /// RSA 3072-bit, PKCS#1 v1.5 with SHA-256.
    Rsa3072,
    /// RSA 4096-bit, PKCS#1 v1.5 with SHA-256 (slow to generate).
    Rsa4096,
}

impl KeyType {
    /// Every key type, in declaration order.
    pub const ALL: [KeyType; 6] = [
        KeyType::EcP256,
        KeyType::EcP384,
        KeyType::Ed25519,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    /// True for the RSA key types.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }

    /// True for the ECDSA key types (not Ed25519).
    pub fn is_ec(self) -> bool {
        matches!(self, KeyType::EcP256 | KeyType::EcP384)
    }

    /// Generate a fresh key pair of this type.
    fn generate(self) -> KeyPair {
        let alg: &'static SignatureAlgorithm = match self {
            KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyType::Ed25519 => &rcgen::PKCS_ED25519,
            KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        };
        let kp = match self {
            KeyType::Rsa2048 => KeyPair::generate_rsa_for(alg, RsaKeySize::_2048),
            KeyType::Rsa3072 => KeyPair::generate_rsa_for(alg, RsaKeySize::_3072),
            KeyType::Rsa4096 => KeyPair::generate_rsa_for(alg, RsaKeySize::_4096),
            _ => KeyPair::generate_for(alg),
        };
        kp.unwrap_or_else(|e| panic!("generate {self:?} key: {e}"))
    }
}

/// PEM encoding of a private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFormat {
    /// PKCS#8 `PRIVATE KEY` (any key type).
    Pkcs8,
    /// PKCS#1 `RSA PRIVATE KEY` (RSA keys only).
    Pkcs1,
    /// SEC1 `EC PRIVATE KEY` with namedCurve parameters (ECDSA keys only).
    Sec1,
}

/// A certificate revocation list, in both encodings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    /// PEM (`X509 CRL`).
    pub pem: String,
    /// DER.
    pub der: Vec<u8>,
}

/// A CA (root, or intermediate signed by another [`Ca`]) that can issue leaves and CRLs.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    key_type: KeyType,
    cert_der: Vec<u8>,
    cert_pem: String,
    key_pkcs8_der: Vec<u8>,
    /// For an intermediate: this CA's cert followed by its non-root ancestors.
    /// Empty for a root (roots are never sent in a chain).
    chain_pem: String,
    /// Next CRL number.
    crl_number: AtomicU64,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("key_type", &self.key_type)
            .field("is_root", &self.is_root())
            .field("cert_der_len", &self.cert_der.len())
            .finish_non_exhaustive()
    }
}

/// Ten years, the CA validity on either side of "now".
const CA_VALIDITY: Duration = Duration::days(3650);

/// Parameters common to roots and intermediates.
fn ca_params(cn: &str) -> CertificateParams {
    let now = OffsetDateTime::now_utc();
    let mut params = CertificateParams::default();
    params.not_before = now - CA_VALIDITY;
    params.not_after = now + CA_VALIDITY;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hitless test PKI");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

impl Ca {
    /// A self-signed root CA valid from 10 years ago to 10 years from now.
    pub fn new_root(cn: &str, key_type: KeyType) -> Ca {
        let key = key_type.generate();
        let params = ca_params(cn);
        let cert = params.self_signed(&key).expect("self-sign root CA");
        Ca::from_parts(params, key, key_type, cert.der().to_vec(), String::new())
    }

    /// An intermediate CA signed by `self`, valid from 10 years ago to 10 years from now.
    pub fn new_intermediate(&self, cn: &str, key_type: KeyType) -> Ca {
        self.new_intermediate_with(cn, key_type, |_| {})
    }

    /// Like [`Ca::new_intermediate`], with `customise` applied to the certificate's parameters
    /// before signing: broken intermediates for negative tests (`is_ca = IsCa::ExplicitNoCa`,
    /// an expired validity, an extendedKeyUsage, ...). The result still issues leaves.
    pub fn new_intermediate_with(
        &self,
        cn: &str,
        key_type: KeyType,
        customise: impl FnOnce(&mut CertificateParams),
    ) -> Ca {
        let key = key_type.generate();
        let mut params = ca_params(cn);
        params.use_authority_key_identifier_extension = true;
        customise(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign intermediate CA");
        let cert_pem = pem_encode("CERTIFICATE", cert.der());
        let chain_pem = format!("{cert_pem}{}", self.chain_pem);
        Ca::from_parts(params, key, key_type, cert.der().to_vec(), chain_pem)
    }

    fn from_parts(
        params: CertificateParams,
        key: KeyPair,
        key_type: KeyType,
        cert_der: Vec<u8>,
        chain_pem: String,
    ) -> Ca {
        let cert_pem = pem_encode("CERTIFICATE", &cert_der);
        let key_pkcs8_der = key.serialize_der();
        Ca {
            issuer: Issuer::new(params, key),
            key_type,
            cert_der,
            cert_pem,
            key_pkcs8_der,
            chain_pem,
            crl_number: AtomicU64::new(1),
        }
    }

    /// True for a self-signed root, false for an intermediate.
    pub fn is_root(&self) -> bool {
        self.chain_pem.is_empty()
    }

    /// The CA's key type.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// The CA certificate as a rustls [`CertificateDer`] (e.g. for a `RootCertStore`).
    pub fn rustls_cert(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert_der.clone())
    }

    /// The CA private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.key_pkcs8_der)
    }

    /// DER of the CA's subject `Name` — what a TLS 1.3 `CertificateRequest`
    /// lists in `certificate_authorities`.
    pub fn subject_der(&self) -> Vec<u8> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(&self.cert_der).expect("parse own CA cert");
        cert.subject().as_raw().to_vec()
    }

    /// Issue a leaf certificate described by `spec`, signed by this CA.
    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        self.issue_with_key(spec, spec.key_type.generate(), spec.key_type)
    }

    /// Issue a leaf for the key of `other` (a renewal that keeps its key), described by `spec`
    /// except for the key type, which is `other`'s.
    pub fn issue_for_key_of(&self, spec: &LeafSpec, other: &Leaf) -> Leaf {
        let key = KeyPair::try_from(other.key_pkcs8_der.as_slice())
            .unwrap_or_else(|e| panic!("reuse the key of a leaf: {e}"));
        self.issue_with_key(spec, key, other.key_type)
    }

    fn issue_with_key(&self, spec: &LeafSpec, key: KeyPair, key_type: KeyType) -> Leaf {
        let serial = match &spec.serial {
            Some(s) => s.clone(),
            None => random_serial(),
        };

        let mut params = CertificateParams::default();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.cn.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = spec
            .dns
            .iter()
            .map(|d| {
                SanType::DnsName(
                    Ia5String::try_from(d.as_str())
                        .unwrap_or_else(|e| panic!("DNS SAN {d:?}: {e}")),
                )
            })
            .chain(spec.ips.iter().map(|ip| SanType::IpAddress(*ip)))
            .chain(spec.uris.iter().map(|u| {
                SanType::URI(
                    Ia5String::try_from(u.as_str())
                        .unwrap_or_else(|e| panic!("URI SAN {u:?}: {e}")),
                )
            }))
            .collect();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if key_type.is_rsa() {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;

        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let cert_der = cert.der().to_vec();
        let cert_pem = pem_encode("CERTIFICATE", &cert_der);
        let serial = {
            let (_, parsed) =
                x509_parser::parse_x509_certificate(&cert_der).expect("parse issued leaf");
            parsed.raw_serial().to_vec()
        };
        let issuing_ca_pem = if self.is_root() {
            self.cert_pem.clone()
        } else {
            self.chain_pem.clone()
        };
        Leaf {
            chain_pem: format!("{cert_pem}{}", self.chain_pem),
            cert_pem,
            cert_der,
            key_pkcs8_der: key.serialize_der(),
            serial,
            key_type,
            issuing_ca_pem,
        }
    }

    /// A CRL signed by this CA revoking `revoked_serials` (as in [`Leaf::serial`]).
    ///
    /// `thisUpdate` is now − 1 minute and `nextUpdate` is now + `next_update_in`.
    /// `next_update_in` may be negative to get an already-expired CRL; if that
    /// would put `nextUpdate` at or before `thisUpdate`, `thisUpdate` becomes
    /// `nextUpdate` − 1 hour instead. Each call uses the next CRL number
    /// (1, 2, …) for this CA.
    pub fn crl(&self, revoked_serials: &[Vec<u8>], next_update_in: Duration) -> Crl {
        let now = OffsetDateTime::now_utc();
        let next_update = now + next_update_in;
        let mut this_update = now - Duration::minutes(1);
        if next_update <= this_update {
            this_update = next_update - Duration::hours(1);
        }
        let number = self.crl_number.fetch_add(1, Ordering::Relaxed);
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).expect("sign CRL");
        let der = crl.der().to_vec();
        Crl {
            pem: pem_encode("X509 CRL", &der),
            der,
        }
    }
}

/// What to put in a leaf certificate. Build with [`LeafSpec::server`] or
/// [`LeafSpec::client`] and adjust with the builder methods or the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    /// Subject common name.
    pub cn: String,
    /// DNS subjectAltNames (wildcards such as `*.example.test` allowed).
    pub dns: Vec<String>,
    /// IP subjectAltNames.
    pub ips: Vec<IpAddr>,
    /// URI subjectAltNames (a SPIFFE ID, for an X.509-SVID).
    pub uris: Vec<String>,
    /// Leaf key type.
    pub key_type: KeyType,
    /// Include the serverAuth extended key usage.
    pub server: bool,
    /// Include the clientAuth extended key usage.
    pub client: bool,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Serial number bytes (big-endian, positive); `None` = random 16-byte positive serial.
    pub serial: Option<Vec<u8>>,
}

impl LeafSpec {
    /// A server leaf for `name`: serverAuth EKU, EC P-256, valid from 1 hour
    /// ago to 1 hour from now.
    ///
    /// If `name` parses as an IP address it becomes an IP SAN (no DNS SAN);
    /// otherwise it is a DNS SAN, and `"localhost"` also gets IP SAN 127.0.0.1.
    pub fn server(name: &str) -> LeafSpec {
        let (dns, ips) = match name.parse::<IpAddr>() {
            Ok(ip) => (vec![], vec![ip]),
            Err(_) if name == "localhost" => (
                vec![name.to_string()],
                vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            ),
            Err(_) => (vec![name.to_string()], vec![]),
        };
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            cn: name.to_string(),
            dns,
            ips,
            uris: vec![],
            key_type: KeyType::EcP256,
            server: true,
            client: false,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::hours(1),
            serial: None,
        }
    }

    /// A client leaf with common name `cn` (no SANs): clientAuth EKU, EC P-256,
    /// valid from 1 hour ago to 1 hour from now.
    pub fn client(cn: &str) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            cn: cn.to_string(),
            dns: vec![],
            ips: vec![],
            uris: vec![],
            key_type: KeyType::EcP256,
            server: false,
            client: true,
            not_before: now - Duration::hours(1),
            not_after: now + Duration::hours(1),
            serial: None,
        }
    }

    /// An X.509-SVID for `spiffe_id` (as SPIFFE requires: the ID as the only URI SAN, no DNS
    /// or IP SANs, not a CA, digitalSignature): serverAuth and clientAuth EKUs, EC P-256, valid
    /// from 1 hour ago to 1 hour from now. The subject CN is the ID's path, for logs.
    pub fn svid(spiffe_id: &str) -> LeafSpec {
        let cn = spiffe_id
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split_once('/'))
            .map_or(spiffe_id, |(_, path)| path);
        LeafSpec::client(cn).server_auth(true).uris(vec![spiffe_id])
    }

    /// Replace the URI SANs.
    pub fn uris(mut self, uris: Vec<&str>) -> Self {
        self.uris = uris.into_iter().map(str::to_string).collect();
        self
    }

    /// Set the key type.
    pub fn key_type(mut self, key_type: KeyType) -> Self {
        self.key_type = key_type;
        self
    }

    /// Set the validity window.
    pub fn valid(mut self, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        self.not_before = not_before;
        self.not_after = not_after;
        self
    }

    /// Replace the DNS SANs.
    pub fn dns(mut self, names: Vec<&str>) -> Self {
        self.dns = names.into_iter().map(str::to_string).collect();
        self
    }

    /// Replace the IP SANs.
    pub fn ips(mut self, ips: Vec<IpAddr>) -> Self {
        self.ips = ips;
        self
    }

    /// Set the subject common name.
    pub fn cn(mut self, cn: &str) -> Self {
        self.cn = cn.to_string();
        self
    }

    /// Set a fixed serial number (big-endian bytes).
    pub fn serial(mut self, serial: Vec<u8>) -> Self {
        self.serial = Some(serial);
        self
    }

    /// Set whether the serverAuth EKU is present.
    pub fn server_auth(mut self, on: bool) -> Self {
        self.server = on;
        self
    }

    /// Set whether the clientAuth EKU is present.
    pub fn client_auth(mut self, on: bool) -> Self {
        self.client = on;
        self
    }
}

/// An issued leaf certificate with its key and chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leaf {
    /// The leaf certificate alone, PEM.
    pub cert_pem: String,
    /// The leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8_der: Vec<u8>,
    /// Serial number content bytes exactly as encoded in the certificate
    /// (big-endian; includes a leading 0x00 if the high bit would otherwise be set).
    pub serial: Vec<u8>,
    /// The key type.
    pub key_type: KeyType,
    /// The leaf followed by the issuer chain up to but excluding the root
    /// (issued by a root: just the leaf; by an intermediate: leaf + intermediate(s)).
    pub chain_pem: String,
    /// The issuing CA certificate(s) as an OpenBao/Vault `issuing_ca` field
    /// renders: the issuer's cert (the root itself if issued by a root), then
    /// any further intermediates above it, never a root above an intermediate.
    pub issuing_ca_pem: String,
}

impl Leaf {
    /// The private key as PEM in `format`.
    ///
    /// Panics if the format does not fit the key type (PKCS#1 needs RSA,
    /// SEC1 needs ECDSA; Ed25519 only has PKCS#8).
    pub fn key_pem(&self, format: KeyFormat) -> String {
        match format {
            KeyFormat::Pkcs8 => pem_encode("PRIVATE KEY", &self.key_pkcs8_der),
            KeyFormat::Pkcs1 => {
                assert!(
                    self.key_type.is_rsa(),
                    "KeyFormat::Pkcs1 requires an RSA key, not {:?}",
                    self.key_type
                );
                pem_encode(
                    "RSA PRIVATE KEY",
                    &keyconv::pkcs8_to_pkcs1(&self.key_pkcs8_der),
                )
            }
            KeyFormat::Sec1 => {
                assert!(
                    self.key_type.is_ec(),
                    "KeyFormat::Sec1 requires an ECDSA key, not {:?}",
                    self.key_type
                );
                pem_encode(
                    "EC PRIVATE KEY",
                    &keyconv::pkcs8_to_sec1(&self.key_pkcs8_der),
                )
            }
        }
    }

    /// Lowercase hex SHA-256 of the leaf certificate DER.
    pub fn fingerprint_sha256_hex(&self) -> String {
        sha256_hex(&self.cert_der)
    }

    /// A single PEM bundle as an OpenBao/Vault agent template renders it:
    /// the leaf certificate, the issuing CA certificate(s), then the private key in
    /// `format`, each block separated by one newline.
    pub fn bundle_pem(&self, format: KeyFormat) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.cert_pem.trim_end(),
            self.issuing_ca_pem.trim_end(),
            self.key_pem(format).trim_end()
        )
    }

    /// Write [`Leaf::chain_pem`] to `dir/cert_name` and the PKCS#8 key PEM to
    /// `dir/key_name` (plain in-place writes, cert first). Returns both paths.
    pub fn write_pair(&self, dir: &Path, cert_name: &str, key_name: &str) -> (PathBuf, PathBuf) {
        let cert_path = dir.join(cert_name);
        let key_path = dir.join(key_name);
        std::fs::write(&cert_path, &self.chain_pem)
            .unwrap_or_else(|e| panic!("write {}: {e}", cert_path.display()));
        std::fs::write(&key_path, self.key_pem(KeyFormat::Pkcs8))
            .unwrap_or_else(|e| panic!("write {}: {e}", key_path.display()));
        (cert_path, key_path)
    }

    /// The chain (leaf first, no root) as rustls certificates.
    pub fn rustls_chain(&self) -> Vec<CertificateDer<'static>> {
        pem::parse_many(&self.chain_pem)
            .expect("parse own chain PEM")
            .into_iter()
            .map(|p| CertificateDer::from(p.into_contents()))
            .collect()
    }

    /// The private key as a rustls [`PrivateKeyDer`] (PKCS#8).
    pub fn rustls_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8_der.clone()))
    }
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// PEM-encode with LF line endings and 64-column lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A random positive 16-byte serial whose encoding is exactly 16 bytes
/// (high bit clear, first byte non-zero).
fn random_serial() -> Vec<u8> {
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).expect("random serial");
    serial[0] &= 0x7f;
    if serial[0] == 0 {
        serial[0] = 0x01;
    }
    serial.to_vec()
}
