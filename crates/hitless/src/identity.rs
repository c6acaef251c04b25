//! A validated identity: the certificate chain a server (or client) presents, its private key,
//! and what we know about them.
//!
//! Building an [`Identity`] is where every rule about *what may be served* lives: the key must
//! match a certificate in the input (that certificate is the leaf, wherever it sits in the file),
//! the chain is ordered leaf → issuers, and the leaf must be within its validity period unless
//! the caller accepts expired certificates. Nothing here touches the disk or knows about
//! reloading.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, SignatureScheme};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::source::pem::Sections;
use crate::Error;

/// Facts about one X.509 certificate, for status pages, logs and selection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
    /// Subject distinguished name, as OpenSSL prints it (`CN=...`).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Serial number, lowercase hex bytes separated by colons (as OpenBao prints them).
    pub serial: String,
    /// DNS names of the subjectAltName extension.
    pub dns_names: Vec<String>,
    /// IP addresses of the subjectAltName extension.
    pub ip_addresses: Vec<IpAddr>,
    /// Start of the validity period.
    pub not_before: SystemTime,
    /// End of the validity period.
    pub not_after: SystemTime,
    /// Key type and size, e.g. `ECDSA P-256`, `RSA 2048`, `Ed25519`.
    pub key_type: String,
    /// Whether the certificate is a CA (basicConstraints cA).
    pub is_ca: bool,
}

impl CertInfo {
    /// Parses a DER certificate (number `index` of `path`, for errors).
    pub fn parse(path: &Path, index: usize, der: &[u8]) -> Result<CertInfo, Error> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| Error::Certificate {
            path: path.to_owned(),
            index,
            reason: e.to_string(),
        })?;
        Ok(Self::from_parsed(der, &cert))
    }

    fn from_parsed(der: &[u8], cert: &X509Certificate<'_>) -> CertInfo {
        let mut dns_names = Vec::new();
        let mut ip_addresses = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => dns_names.push(n.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            ip_addresses.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            ip_addresses.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        let validity = cert.validity();
        CertInfo {
            fingerprint: hex(&Sha256::digest(der)),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            dns_names,
            ip_addresses,
            not_before: unix_to_system(validity.not_before.timestamp()),
            not_after: unix_to_system(validity.not_after.timestamp()),
            key_type: key_type(cert),
            is_ca: cert.is_ca(),
        }
    }

    /// Whether `now` lies within the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// A validated identity: an ordered chain, a private key that matches its leaf, and facts.
///
/// Cheap to clone (the rustls [`CertifiedKey`] is shared).
#[derive(Debug, Clone)]
pub struct Identity {
    certified: Arc<CertifiedKey>,
    leaf: CertInfo,
    chain: Vec<CertInfo>,
    algorithm: SignatureAlgorithm,
    /// DER of the issuer name of every certificate sent (what a CertificateRequest names).
    issuer_names: Vec<Vec<u8>>,
    /// The TLS signature schemes the key can sign with (computed once, at load).
    schemes: Vec<SignatureScheme>,
}

/// Every signature scheme rustls knows, to find which ones a key can use.
const ALL_SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::ED25519,
    SignatureScheme::ED448,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// Rules applied when validating an identity.
#[derive(Debug, Clone)]
pub(crate) struct Validation {
    /// Accept a leaf outside its validity period.
    pub(crate) accept_expired: bool,
    /// The crypto provider that loads private keys.
    pub(crate) provider: Arc<CryptoProvider>,
}

impl Default for Validation {
    fn default() -> Self {
        Validation {
            accept_expired: false,
            provider: default_provider(),
        }
    }
}

/// The process-wide rustls provider if one is installed, else aws-lc-rs.
pub(crate) fn default_provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

impl Identity {
    /// Validates PEM certificates and a key: `cert_pem` read from `cert_path`, `key_pem` from
    /// `key_path` (for a bundle, the same bytes and path twice).
    ///
    /// Rules, in order: exactly one private key; the leaf is the certificate whose public key
    /// matches it, wherever it is in the file; the chain sent is the leaf followed by its issuers,
    /// found by name, in order; self-signed roots are not sent (a peer must already trust its
    /// root, and sending it only costs bytes); certificates that are not issuers of the leaf are
    /// ignored; the leaf must be valid now unless `accept_expired`.
    pub fn from_pem(
        cert_path: &Path,
        cert_pem: &[u8],
        key_path: &Path,
        key_pem: &[u8],
    ) -> Result<Identity, Error> {
        let certs = crate::source::pem::parse(cert_path, cert_pem)?;
        let keys = if key_path == cert_path {
            None
        } else {
            Some(crate::source::pem::parse(key_path, key_pem)?)
        };
        Self::from_sections(
            cert_path,
            &certs,
            key_path,
            keys.as_ref().unwrap_or(&certs),
            &Validation::default(),
        )
    }

    pub(crate) fn from_sections(
        cert_path: &Path,
        certs: &Sections,
        key_path: &Path,
        keys: &Sections,
        rules: &Validation,
    ) -> Result<Identity, Error> {
        let key = match keys.keys.as_slice() {
            [] => {
                return Err(Error::NoPrivateKey {
                    path: key_path.to_owned(),
                })
            }
            [one] => one.clone_key(),
            many => {
                return Err(Error::MultipleKeys {
                    path: key_path.to_owned(),
                    count: many.len(),
                })
            }
        };
        Self::from_der(cert_path, &certs.certs, key_path, key, rules)
    }

    /// Validates DER certificates (any order) and a private key.
    pub(crate) fn from_der(
        cert_path: &Path,
        certs: &[CertificateDer<'static>],
        key_path: &Path,
        key: PrivateKeyDer<'static>,
        rules: &Validation,
    ) -> Result<Identity, Error> {
        if certs.is_empty() {
            return Err(Error::NoCertificate {
                path: cert_path.to_owned(),
            });
        }
        let signing_key = rules
            .provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| Error::Key {
                path: key_path.to_owned(),
                reason: e.to_string(),
            })?;
        let Some(key_spki) = signing_key.public_key().map(|s| s.as_ref().to_vec()) else {
            return Err(Error::Key {
                path: key_path.to_owned(),
                reason: "cannot derive the public key".into(),
            });
        };

        let mut parsed = Vec::with_capacity(certs.len());
        for (i, der) in certs.iter().enumerate() {
            let (_, cert) =
                X509Certificate::from_der(der.as_ref()).map_err(|e| Error::Certificate {
                    path: cert_path.to_owned(),
                    index: i + 1,
                    reason: e.to_string(),
                })?;
            parsed.push(cert);
        }

        let leaf_index = parsed
            .iter()
            .position(|c| c.public_key().raw == key_spki.as_slice())
            .ok_or_else(|| Error::KeyMismatch {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
            })?;

        // Order: leaf, then each issuer found by name; stop at a self-signed root (not sent).
        let mut order = vec![leaf_index];
        let mut current = leaf_index;
        loop {
            let issuer = parsed[current].issuer().as_raw();
            if parsed[current].subject().as_raw() == issuer {
                break;
            }
            let next = (0..parsed.len()).find(|&i| {
                !order.contains(&i)
                    && parsed[i].subject().as_raw() == issuer
                    && parsed[i].subject().as_raw() != parsed[i].issuer().as_raw()
            });
            match next {
                Some(i) => {
                    order.push(i);
                    current = i;
                }
                None => break,
            }
        }

        let chain_der: Vec<CertificateDer<'static>> =
            order.iter().map(|&i| certs[i].clone()).collect();
        let chain: Vec<CertInfo> = order
            .iter()
            .map(|&i| CertInfo::from_parsed(certs[i].as_ref(), &parsed[i]))
            .collect();
        let leaf = chain[0].clone();
        let issuer_names = order
            .iter()
            .map(|&i| parsed[i].issuer().as_raw().to_vec())
            .collect();

        if !rules.accept_expired {
            let now = SystemTime::now();
            if now < leaf.not_before {
                return Err(Error::NotYetValid {
                    path: cert_path.to_owned(),
                    not_before: leaf.not_before,
                });
            }
            if now > leaf.not_after {
                return Err(Error::Expired {
                    path: cert_path.to_owned(),
                    not_after: leaf.not_after,
                });
            }
        }

        let algorithm = signing_key.algorithm();
        let schemes = ALL_SCHEMES
            .iter()
            .copied()
            .filter(|s| signing_key.choose_scheme(&[*s]).is_some())
            .collect();
        let certified = Arc::new(CertifiedKey::new(chain_der, signing_key));
        Ok(Identity {
            certified,
            leaf,
            chain,
            algorithm,
            issuer_names,
            schemes,
        })
    }

    /// What rustls serves: the chain and the signing key.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }

    /// Facts about the leaf certificate.
    pub fn leaf(&self) -> &CertInfo {
        &self.leaf
    }

    /// Facts about every certificate sent, leaf first.
    pub fn chain(&self) -> &[CertInfo] {
        &self.chain
    }

    /// Whether this identity chains to a CA named in `hints` (DER distinguished names from a
    /// CertificateRequest); an empty list names no preference and matches.
    pub fn issued_by_any(&self, hints: &[&[u8]]) -> bool {
        hints.is_empty()
            || self.issuer_names.iter().any(|name| {
                hints
                    .iter()
                    .any(|h| *h == name.as_slice() || strip_sequence(name) == Some(h))
            })
    }

    /// The TLS signature schemes the key can sign with.
    pub fn signature_schemes(&self) -> &[SignatureScheme] {
        &self.schemes
    }

    /// The private key's algorithm.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }
}

fn key_type(cert: &X509Certificate<'_>) -> String {
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(PublicKey::EC(ec)) => match ec.key_size() {
            256 => "ECDSA P-256".into(),
            384 => "ECDSA P-384".into(),
            521 => "ECDSA P-521".into(),
            n => format!("ECDSA {n}"),
        },
        Ok(PublicKey::Unknown(_))
            if cert.public_key().algorithm.algorithm.to_id_string() == "1.3.101.112" =>
        {
            "Ed25519".into()
        }
        _ => format!(
            "unknown ({})",
            cert.public_key().algorithm.algorithm.to_id_string()
        ),
    }
}

/// The content of a DER SEQUENCE (a Name without its outer tag and length).
fn strip_sequence(der: &[u8]) -> Option<&[u8]> {
    if der.first() != Some(&0x30) {
        return None;
    }
    let len_byte = *der.get(1)?;
    let header = if len_byte < 0x80 {
        2
    } else {
        2 + usize::from(len_byte & 0x7f)
    };
    der.get(header..)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

pub(crate) fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// RFC 3339 rendering (UTC, seconds) of a time.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
