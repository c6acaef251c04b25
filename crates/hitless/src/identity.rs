//! A validated identity: the certificate chain a server (or client) presents, its private key,
//! and what we know about them.
//!
//! Building an [`Identity`] is where every rule about *what may be served* lives: the key must
//! match a certificate in the input (that certificate is the leaf, wherever it sits in the file),
//! the chain is ordered leaf → issuers, and the whole chain must be one a peer accepts: each
//! certificate signed by the next one's key, each within its validity period, every
//! intermediate a CA, and the extended key usage of each certificate allowing the identity's
//! [`Role`]. A file that breaks a rule is refused with the rule it breaks, like an expired leaf,
//! so a reloader keeps serving its last good identity. Nothing here touches the disk (except
//! [`Identity::load`], a one-shot read for tools) or knows about reloading.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::SignatureVerificationAlgorithm;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{SignatureAlgorithm, SignatureScheme};
use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::Any;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::source::pem::Sections;
use crate::{Error, IdentitySource};

mod loader;
pub(crate) use loader::IdentityLoader;

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
    /// The purposes of the extendedKeyUsage extension (`serverAuth`, `clientAuth`,
    /// `codeSigning`, ... or a dotted OID), `None` without the extension (any purpose).
    pub extended_key_usage: Option<Vec<String>>,
    /// SHA-256 of the DER SubjectPublicKeyInfo, lowercase hex: equal for certificates of one
    /// key (a renewal that kept its key), and equal to [`KeyInfo::public_key_fingerprint`] of
    /// the certificate's private key.
    pub public_key_fingerprint: String,
}

impl CertInfo {
    /// Parses a DER certificate (number `index` of `path`, for errors).
    pub fn parse(path: &Path, index: usize, der: &[u8]) -> Result<CertInfo, Error> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| certificate_error(path, index, e))?;
        Ok(Self::from_parsed(der, &cert))
    }

    /// The facts of a DER certificate, as hitless reports them for the certificates it loads.
    /// For tools that find certificates elsewhere than in a file hitless reads (a TLS
    /// handshake, a PKCS#12 bag). The error is the X.509 parser's, boxed (as the source of
    /// [`Error::Certificate`]): an `x509_parser::error::X509Error`.
    ///
    /// ```
    /// let error = hitless::CertInfo::from_der(b"not a certificate").unwrap_err();
    /// assert!(!error.to_string().is_empty());
    /// ```
    pub fn from_der(
        der: &[u8],
    ) -> Result<CertInfo, Box<dyn std::error::Error + Send + Sync + 'static>> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(x509_parser::error::X509Error::from)?;
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
            extended_key_usage: extended_key_usage(cert),
            public_key_fingerprint: hex(&Sha256::digest(cert.public_key().raw)),
        }
    }

    /// Whether `now` lies within the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// Facts about a private key, as the crypto provider loads it: its algorithm, and which
/// certificate it belongs to. The same loading and matching an [`Identity`] does, for tools
/// that list what a file holds (`hitless inspect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    algorithm: SignatureAlgorithm,
    public_key_fingerprint: String,
}

impl KeyInfo {
    /// Loads `key` (read from `path`, named in errors) with the default crypto provider (the
    /// process default, else the one compiled in). Errors: [`Error::Key`] (the provider
    /// refuses it: malformed, an unsupported algorithm or curve), [`Error::NoPublicKey`],
    /// [`Error::NoCryptoProvider`].
    pub fn from_der(path: &Path, key: &PrivateKeyDer<'_>) -> Result<KeyInfo, Error> {
        Self::from_der_with_provider(path, key, &*default_provider()?)
    }

    /// [`KeyInfo::from_der`] with this crypto provider.
    pub fn from_der_with_provider(
        path: &Path,
        key: &PrivateKeyDer<'_>,
        provider: &CryptoProvider,
    ) -> Result<KeyInfo, Error> {
        let (signing_key, spki) = load_key(path, key.clone_key(), provider)?;
        Ok(KeyInfo {
            algorithm: signing_key.algorithm(),
            public_key_fingerprint: hex(&Sha256::digest(&spki)),
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> SignatureAlgorithm {
        self.algorithm
    }

    /// SHA-256 of the key's DER SubjectPublicKeyInfo, lowercase hex.
    pub fn public_key_fingerprint(&self) -> &str {
        &self.public_key_fingerprint
    }

    /// Whether `cert` is a certificate for this key (same public key).
    pub fn matches(&self, cert: &CertInfo) -> bool {
        cert.public_key_fingerprint == self.public_key_fingerprint
    }
}

/// Loads a private key with `provider`: the signing key and its DER SubjectPublicKeyInfo.
fn load_key(
    path: &Path,
    key: PrivateKeyDer<'static>,
    provider: &CryptoProvider,
) -> Result<(Arc<dyn rustls::sign::SigningKey>, Vec<u8>), Error> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| Error::Key {
            path: path.to_owned(),
            source,
        })?;
    let Some(spki) = signing_key.public_key().map(|s| s.as_ref().to_vec()) else {
        return Err(Error::NoPublicKey {
            path: path.to_owned(),
        });
    };
    Ok((signing_key, spki))
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

/// What an identity is presented for: it decides which extended key usage its chain needs.
///
/// Peers check the extendedKeyUsage extension of every certificate they are sent (rustls,
/// OpenSSL and Go alike): a server certificate whose chain does not allow `serverAuth`, or a
/// client certificate whose chain does not allow `clientAuth`, fails every handshake. A
/// certificate without the extension allows every purpose; `anyExtendedKeyUsage` alone does
/// not count, because rustls and OpenSSL refuse it for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Role {
    /// Presented by a TLS server: the chain must allow `serverAuth`.
    Server,
    /// Presented by a TLS client (mutual TLS): the chain must allow `clientAuth`.
    Client,
    /// Not known (the default of [`IdentityBuilder`](crate::IdentityBuilder)): the chain must
    /// allow `serverAuth` or `clientAuth`.
    #[default]
    Any,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Any => "any",
        })
    }
}

/// The rules of a one-shot [`Identity::load`]: the same choices an
/// [`IdentityBuilder`](crate::IdentityBuilder) offers for a reloading identity.
///
/// ```
/// use hitless::{IdentityRules, Role};
/// let rules = IdentityRules::new(Role::Server).accept_expired(true);
/// assert_eq!(rules.role(), Role::Server);
/// // A role alone is rules too: `Identity::load(&source, Role::Client)`.
/// let _: IdentityRules = Role::Client.into();
/// ```
#[derive(Debug, Clone, Default)]
pub struct IdentityRules {
    role: Role,
    accept_expired: bool,
    provider: Option<Arc<CryptoProvider>>,
}

impl IdentityRules {
    /// The rules for an identity presented as `role`: a valid leaf and chain, the default crypto
    /// provider.
    pub fn new(role: Role) -> Self {
        IdentityRules {
            role,
            ..IdentityRules::default()
        }
    }

    /// Accept certificates outside their validity period (as
    /// [`IdentityBuilder::accept_expired`](crate::IdentityBuilder::accept_expired)).
    pub fn accept_expired(mut self, accept: bool) -> Self {
        self.accept_expired = accept;
        self
    }

    /// Load the key and check the chain's signatures with this provider instead of the default
    /// one (the process default if installed, else the one of the crate's features).
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// What the identity is presented for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The internal rules, with the provider chosen.
    fn resolve(&self) -> Result<Validation, Error> {
        Ok(Validation {
            accept_expired: self.accept_expired,
            role: self.role,
            provider: self.provider.clone().map_or_else(default_provider, Ok)?,
        })
    }
}

impl From<Role> for IdentityRules {
    fn from(role: Role) -> Self {
        IdentityRules::new(role)
    }
}

/// Rules applied when validating an identity.
#[derive(Debug, Clone)]
pub(crate) struct Validation {
    /// Accept certificates outside their validity period (leaf and intermediates).
    pub(crate) accept_expired: bool,
    /// What the identity is presented for (which extended key usage it needs).
    pub(crate) role: Role,
    /// The crypto provider that loads private keys and verifies the chain's signatures.
    pub(crate) provider: Arc<CryptoProvider>,
}

impl Validation {
    /// Rules for `role` with the [default provider](default_provider).
    pub(crate) fn with_default_provider(role: Role) -> Result<Self, Error> {
        Ok(Validation {
            accept_expired: false,
            role,
            provider: default_provider()?,
        })
    }
}

/// The crypto provider used where none is given: the process default if one is installed
/// (`CryptoProvider::install_default`), else the one compiled in by feature (aws-lc-rs if
/// the `aws-lc-rs` feature is on, even with `ring` on too; else ring). Never rustls's own
/// `get_default_or_install_from_crate_features`, which gives up when both are compiled in; and
/// never a silent fallback: with no feature and no process default, [`Error::NoCryptoProvider`].
pub(crate) fn default_provider() -> Result<Arc<CryptoProvider>, Error> {
    if let Some(installed) = CryptoProvider::get_default() {
        return Ok(installed.clone());
    }
    compiled_in_provider()
        .map(Arc::new)
        .ok_or(Error::NoCryptoProvider)
}

/// The provider the crate's features choose.
#[cfg(feature = "aws-lc-rs")]
fn compiled_in_provider() -> Option<CryptoProvider> {
    Some(rustls::crypto::aws_lc_rs::default_provider())
}

/// The provider the crate's features choose.
#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
fn compiled_in_provider() -> Option<CryptoProvider> {
    Some(rustls::crypto::ring::default_provider())
}

/// The provider the crate's features choose: none.
#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
fn compiled_in_provider() -> Option<CryptoProvider> {
    None
}

impl Identity {
    /// Reads `source` once and validates it exactly as a
    /// [`ReloadingIdentity`](crate::ReloadingIdentity) built with the same
    /// [`role`](crate::IdentityBuilder::role), [`accept_expired`](crate::IdentityBuilder::accept_expired)
    /// and [`crypto_provider`](crate::IdentityBuilder::crypto_provider) does on each reload: the
    /// same bounded reader (regular files only, size-limited), the same rules. `rules` is an
    /// [`IdentityRules`] or just a [`Role`] (default crypto provider: the process default, else
    /// the one compiled in). For tools that must give the verdict a server would
    /// (`hitless inspect`, `hitless serve --check`); nothing is watched.
    pub fn load(
        source: &IdentitySource,
        rules: impl Into<IdentityRules>,
    ) -> Result<Identity, Error> {
        let rules = rules.into().resolve()?;
        IdentityLoader::new(source.clone(), rules).load_once()
    }

    /// Validates PEM certificates and a key: `cert_pem` read from `cert_path`, `key_pem` from
    /// `key_path` (for a bundle, the same bytes and path twice), for [`Role::Any`].
    ///
    /// Rules, in order: exactly one private key; the leaf is the certificate whose public key
    /// matches it, wherever it is in the file (several such certificates, as when a renewal is
    /// appended to the old one: the newest whose chain passes); the leaf must be valid now;
    /// the chain sent is the leaf followed by its issuers, found by
    /// name and checked by signature, in order; self-signed roots are not sent (a peer must
    /// already trust its root, and sending it only costs bytes), but a root in the file must
    /// have signed the last certificate sent; every intermediate must be a CA (basicConstraints
    /// CA:TRUE, keyCertSign if keyUsage is present, pathLenConstraint respected) within its
    /// validity period; every certificate's extendedKeyUsage, if present, must allow the role;
    /// certificates that are not issuers of the leaf are ignored.
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
            &Validation::with_default_provider(Role::Any)?,
        )
    }

    pub(crate) fn from_sections(
        cert_path: &Path,
        certs: &Sections,
        key_path: &Path,
        keys: &Sections,
        rules: &Validation,
    ) -> Result<Identity, Error> {
        let key = match keys.private_keys().collect::<Vec<_>>().as_slice() {
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
        let certs: Vec<CertificateDer<'static>> = certs.certificates().cloned().collect();
        Self::from_der(cert_path, &certs, key_path, key, rules)
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
        let (signing_key, key_spki) = load_key(key_path, key, &rules.provider)?;

        let mut parsed = Vec::with_capacity(certs.len());
        for (i, der) in certs.iter().enumerate() {
            let (_, cert) = X509Certificate::from_der(der.as_ref())
                .map_err(|e| certificate_error(cert_path, i + 1, e))?;
            parsed.push(cert);
        }

        // Every certificate of the key is a candidate leaf: a bundle may hold a renewed leaf
        // next to the one it replaces. The newest whose chain passes wins (ties: the first in
        // the file); if none passes, the newest one's reason is the one worth reading.
        let now = SystemTime::now();
        let mut chosen: Option<Vec<usize>> = None;
        let mut refusal: Option<((SystemTime, SystemTime), Error)> = None;
        for leaf in (0..parsed.len()).filter(|&i| parsed[i].public_key().raw == key_spki.as_slice())
        {
            let age = validity(&parsed[leaf]);
            match validate_chain(cert_path, &parsed, leaf, rules, now) {
                Ok(order) => {
                    if chosen
                        .as_ref()
                        .is_none_or(|best| age > validity(&parsed[best[0]]))
                    {
                        chosen = Some(order);
                    }
                }
                Err(e) => {
                    if refusal.as_ref().is_none_or(|(newest, _)| age > *newest) {
                        refusal = Some((age, e));
                    }
                }
            }
        }
        let order = match (chosen, refusal) {
            (Some(order), _) => order,
            (None, Some((_, error))) => return Err(error),
            (None, None) => {
                return Err(Error::KeyMismatch {
                    cert_path: cert_path.to_owned(),
                    key_path: key_path.to_owned(),
                })
            }
        };

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

    /// Whether the extendedKeyUsage of every certificate sent allows `role` (an identity loaded
    /// for [`Role::Any`] may be usable as a server identity, a client identity, or both).
    pub fn allows(&self, role: Role) -> bool {
        let allows = |purpose: &str| {
            self.chain.iter().all(|c| {
                c.extended_key_usage
                    .as_ref()
                    .is_none_or(|usage| usage.iter().any(|u| u == purpose))
            })
        };
        match role {
            Role::Server => allows("serverAuth"),
            Role::Client => allows("clientAuth"),
            Role::Any => allows("serverAuth") || allows("clientAuth"),
        }
    }
}

/// Orders the chain sent for `leaf` (the leaf, then its issuers) and checks it as a peer would,
/// short of the trust anchor, which only the peer has: returns the indices into `certs`, or the
/// first rule broken.
///
/// Order of the checks, so that the reason given is the most useful one: the leaf's validity
/// period (its own errors, as before chains were checked); each signature, found by name then
/// verified with the provider's algorithms (among several issuers of the same name, the ones
/// whose key verifies are kept, and of those the one valid now and newest); each
/// intermediate's CA flag, key usage, path length and validity period; the extended key usage
/// of every certificate against the role.
fn validate_chain(
    path: &Path,
    certs: &[X509Certificate<'_>],
    leaf: usize,
    rules: &Validation,
    now: SystemTime,
) -> Result<Vec<usize>, Error> {
    let refuse = |reason: String| Error::Chain {
        path: path.to_owned(),
        reason,
    };
    let name = |i: usize| format!("certificate {} ({})", i + 1, certs[i].subject());

    let (not_before, not_after) = validity(&certs[leaf]);
    if !rules.accept_expired {
        if now < not_before {
            return Err(Error::NotYetValid {
                path: path.to_owned(),
                not_before,
            });
        }
        if now > not_after {
            return Err(Error::Expired {
                path: path.to_owned(),
                not_after,
            });
        }
    }

    let algorithms = rules.provider.signature_verification_algorithms.all;
    let mut order = vec![leaf];
    let mut child = leaf;
    // Each turn adds an unused certificate, so this ends within `certs.len()` turns.
    loop {
        let issuer = certs[child].issuer().as_raw();
        if certs[child].subject().as_raw() == issuer {
            // Self-issued: a self-signed leaf has nothing above it.
            break;
        }
        let named: Vec<usize> = (0..certs.len())
            .filter(|i| !order.contains(i) && certs[*i].subject().as_raw() == issuer)
            .collect();
        let (roots, intermediates): (Vec<usize>, Vec<usize>) = named
            .into_iter()
            .partition(|&i| certs[i].subject().as_raw() == certs[i].issuer().as_raw());
        if intermediates.is_empty() {
            // The chain sent ends here. A root in the file is not sent, but it must be the
            // one that signed the chain (a stale root left in a bundle after a CA rotation
            // means the chain is not the one the peers trust).
            if let Some(&first) = roots.first() {
                if !roots
                    .iter()
                    .any(|&r| check_signature(algorithms, &certs[child], &certs[r]).is_ok())
                {
                    let why = check_signature(algorithms, &certs[child], &certs[first]);
                    return Err(refuse(not_signed(&name(first), &name(child), why)));
                }
            }
            break;
        }
        let next = intermediates
            .iter()
            .copied()
            .filter(|&i| check_signature(algorithms, &certs[child], &certs[i]).is_ok())
            .min_by_key(|&i| {
                let (from, to) = validity(&certs[i]);
                std::cmp::Reverse((from <= now && now <= to, from, to))
            });
        let Some(next) = next else {
            let first = intermediates[0];
            let why = check_signature(algorithms, &certs[child], &certs[first]);
            return Err(refuse(not_signed(&name(first), &name(child), why)));
        };
        order.push(next);
        child = next;
    }

    for (depth, &i) in order.iter().enumerate().skip(1) {
        let cert = &certs[i];
        match cert.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {
                // Intermediates between this one and the leaf.
                let below = depth - 1;
                if let Some(limit) = bc.value.path_len_constraint {
                    if u32::try_from(below).map_or(true, |b| b > limit) {
                        return Err(refuse(format!(
                            "intermediate {} allows {limit} intermediate(s) below it \
                             (pathLenConstraint), and the chain has {below}",
                            name(i)
                        )));
                    }
                }
            }
            Ok(_) => {
                return Err(refuse(format!(
                    "intermediate {} is not a CA (no basicConstraints CA:TRUE): peers refuse a \
                     chain through it",
                    name(i)
                )))
            }
            Err(e) => {
                return Err(refuse(format!(
                    "intermediate {} has an unreadable basicConstraints extension: {e}",
                    name(i)
                )))
            }
        }
        if let Ok(Some(usage)) = cert.key_usage() {
            if !usage.value.key_cert_sign() {
                return Err(refuse(format!(
                    "intermediate {} may not sign certificates (keyUsage without keyCertSign)",
                    name(i)
                )));
            }
        }
        if !rules.accept_expired {
            let (from, to) = validity(cert);
            if now < from {
                return Err(refuse(format!(
                    "intermediate {} is not valid before {}",
                    name(i),
                    rfc3339(from)
                )));
            }
            if now > to {
                return Err(refuse(format!(
                    "intermediate {} expired at {}",
                    name(i),
                    rfc3339(to)
                )));
            }
        }
    }

    check_purposes(&order, certs, rules.role, &name).map_err(refuse)?;
    Ok(order)
}

/// Checks the extendedKeyUsage of every certificate of `order` against `role`.
fn check_purposes(
    order: &[usize],
    certs: &[X509Certificate<'_>],
    role: Role,
    name: &dyn Fn(usize) -> String,
) -> Result<(), String> {
    let describe = |depth: usize, i: usize| {
        if depth == 0 {
            format!("the leaf, {},", name(i))
        } else {
            format!("intermediate {}", name(i))
        }
    };
    // For `Role::Any`: the first certificate without serverAuth and the first without
    // clientAuth, if any (each alone may be fine, together they allow neither).
    let mut no_server = None;
    let mut no_client = None;
    for (depth, &i) in order.iter().enumerate() {
        let usage = match certs[i].extended_key_usage() {
            Ok(None) => continue,
            Ok(Some(usage)) => usage.value,
            Err(e) => {
                return Err(format!(
                    "{} has an unreadable extendedKeyUsage extension: {e}",
                    describe(depth, i)
                ))
            }
        };
        let listed = eku_names(usage).join(", ");
        let listed = if listed.is_empty() {
            "none".to_string()
        } else {
            listed
        };
        let lacks = |purpose: &str, what: &str| {
            format!(
                "{} has extendedKeyUsage without {purpose} ({listed}): it cannot be used in a \
                 {what} identity",
                describe(depth, i)
            )
        };
        match role {
            Role::Server if !usage.server_auth => return Err(lacks("serverAuth", "server")),
            Role::Client if !usage.client_auth => return Err(lacks("clientAuth", "client")),
            Role::Any if !usage.server_auth && !usage.client_auth => {
                return Err(lacks("serverAuth or clientAuth", "TLS"))
            }
            _ => {}
        }
        if !usage.server_auth && no_server.is_none() {
            no_server = Some(format!("{} lists {listed}", name(i)));
        }
        if !usage.client_auth && no_client.is_none() {
            no_client = Some(format!("{} lists {listed}", name(i)));
        }
    }
    if let (Some(a), Some(b)) = (no_server, no_client) {
        return Err(format!(
            "the chain allows neither serverAuth nor clientAuth ({a} without serverAuth; {b} \
             without clientAuth): it cannot be used in a TLS identity"
        ));
    }
    Ok(())
}

/// Why `issuer` is not accepted as the signer of `child`.
fn not_signed(issuer: &str, child: &str, why: Result<(), SignatureProblem>) -> String {
    match why {
        Err(SignatureProblem::Unsupported(algorithm)) => format!(
            "cannot check that {issuer} signs {child}: the crypto provider does not support \
             {algorithm}"
        ),
        Err(SignatureProblem::Malformed) => {
            format!("cannot check that {issuer} signs {child}: malformed signature or public key")
        }
        // `Ok` cannot happen here (the caller found no valid signature); say the plain fact.
        Err(SignatureProblem::Invalid) | Ok(()) => format!(
            "{issuer} does not sign {child} (same name, other key: not the issuer of this chain)"
        ),
    }
}

/// Why a signature was not accepted.
#[derive(Debug)]
enum SignatureProblem {
    /// It does not verify with the issuer's key.
    Invalid,
    /// No algorithm of the provider fits the signature and key types (named here).
    Unsupported(String),
    /// The certificate or the key could not be taken apart.
    Malformed,
}

/// Verifies that `issuer`'s key signed `child`, with the crypto provider's algorithms, as
/// webpki does during a handshake: the algorithm is the one whose signature identifier equals
/// the certificate's and whose public key identifier equals the issuer key's.
fn check_signature(
    algorithms: &[&dyn SignatureVerificationAlgorithm],
    child: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), SignatureProblem> {
    let signed = signed_parts(child.as_raw()).ok_or(SignatureProblem::Malformed)?;
    let (key_algorithm, key) =
        spki_parts(issuer.public_key().raw).ok_or(SignatureProblem::Malformed)?;
    let algorithm = algorithms
        .iter()
        .find(|a| {
            a.signature_alg_id().as_ref() == signed.algorithm
                && a.public_key_alg_id().as_ref() == key_algorithm
        })
        .ok_or_else(|| {
            SignatureProblem::Unsupported(format!(
                "signature algorithm {} with a {} key",
                child.signature_algorithm.algorithm.to_id_string(),
                key_type(issuer)
            ))
        })?;
    algorithm
        .verify_signature(key, signed.message, signed.signature)
        .map_err(|_| SignatureProblem::Invalid)
}

/// The parts of a signed X.509 structure that a signature check needs, as webpki takes them.
struct SignedParts<'a> {
    /// The complete DER of the signed part (`tbsCertificate`, with its header).
    message: &'a [u8],
    /// The contents of the `signatureAlgorithm` AlgorithmIdentifier.
    algorithm: &'a [u8],
    /// The signature bits.
    signature: &'a [u8],
}

/// `SEQUENCE { tbs, signatureAlgorithm, signature BIT STRING }`.
fn signed_parts(der: &[u8]) -> Option<SignedParts<'_>> {
    let (_, outer) = Any::from_der(der).ok()?;
    let body = outer.data;
    let (rest, _) = Any::from_der(body).ok()?;
    let message = body.get(..body.len() - rest.len())?;
    let (rest, algorithm) = Any::from_der(rest).ok()?;
    let (_, signature) = Any::from_der(rest).ok()?;
    match signature.data.split_first()? {
        (0, bits) => Some(SignedParts {
            message,
            algorithm: algorithm.data,
            signature: bits,
        }),
        _ => None,
    }
}

/// `SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, key BIT STRING }`: the
/// contents of the algorithm identifier and the key bits.
fn spki_parts(der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, outer) = Any::from_der(der).ok()?;
    let (rest, algorithm) = Any::from_der(outer.data).ok()?;
    let (_, key) = Any::from_der(rest).ok()?;
    match key.data.split_first()? {
        (0, bits) => Some((algorithm.data, bits)),
        _ => None,
    }
}

/// The validity period of a certificate.
fn validity(cert: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let v = cert.validity();
    (
        unix_to_system(v.not_before.timestamp()),
        unix_to_system(v.not_after.timestamp()),
    )
}

/// The purposes of an extendedKeyUsage extension, by their usual names.
fn eku_names(usage: &x509_parser::extensions::ExtendedKeyUsage<'_>) -> Vec<String> {
    let mut names: Vec<String> = [
        (usage.server_auth, "serverAuth"),
        (usage.client_auth, "clientAuth"),
        (usage.code_signing, "codeSigning"),
        (usage.email_protection, "emailProtection"),
        (usage.time_stamping, "timeStamping"),
        (usage.ocsp_signing, "OCSPSigning"),
        (usage.any, "anyExtendedKeyUsage"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| n.to_string())
    .collect();
    names.extend(usage.other.iter().map(|oid| oid.to_id_string()));
    names
}

/// The extendedKeyUsage of a certificate, `None` without the extension (or unreadable).
fn extended_key_usage(cert: &X509Certificate<'_>) -> Option<Vec<String>> {
    match cert.extended_key_usage() {
        Ok(Some(usage)) => Some(eku_names(usage.value)),
        _ => None,
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

/// [`Error::Certificate`] for certificate `index` of `path`, keeping the parser's error.
pub(crate) fn certificate_error(
    path: &Path,
    index: usize,
    error: x509_parser::nom::Err<x509_parser::error::X509Error>,
) -> Error {
    Error::Certificate {
        path: path.to_owned(),
        index,
        source: Box::new(x509_parser::error::X509Error::from(error)),
    }
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
