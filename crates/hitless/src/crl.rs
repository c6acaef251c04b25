//! Which CRLs apply: each CRL's signature is checked against the trust bundle when it is
//! loaded, only the newest CRL of each issuer (and scope) reaches the verifiers, and a reload
//! never rolls an issuer's CRL back to an older one.
//!
//! Why this is decided here rather than left to the handshake: rustls-webpki checks a CRL's
//! signature only while verifying a peer, against the key of the CA that issued the peer's
//! certificate, and it uses the *first* CRL whose issuer (and scope) matches. So a CRL signed
//! by another key (a CA re-keyed under the same name) refuses every certificate of that CA
//! with `BadSignature`, and an older CRL listed before a newer one hides the newer
//! revocations. Both failures are found once, at load, where the last good trust can keep
//! serving instead.
//!
//! The policy, as implemented:
//! - **Signature.** A CRL whose issuer is a CA of the bundle must verify with the key of every
//!   bundle CA of that name (rustls may check it against any of them), with the crypto
//!   provider's own signature algorithms, and that CA's keyUsage (when present) must allow
//!   cRLSign. Otherwise the load fails, naming the file and the reason. A CRL whose issuer is
//!   not a CA of the bundle, typically an intermediate's, is kept: it applies to the
//!   certificates that intermediate issued, and its signature is checked during handshakes
//!   against the intermediate the peer presents (a warning says so once per file and issuer).
//! - **Newest per issuer.** CRLs are grouped by issuer name and issuing distribution point
//!   (the CRL's scope, RFC 5280 §5.2.5). In each group the CRL with the highest CRL number
//!   applies (equal numbers: the latest thisUpdate; a CRL without a number is compared by
//!   thisUpdate). The others are reported as superseded and not given to the verifiers.
//! - **No rollback.** A reload whose CRL for a scope is older than the one in force (lower CRL
//!   number, or without numbers an earlier thisUpdate) fails; an equal one is fine. CRLs
//!   verified by different keys of one name are not compared: a re-keyed CA may start its
//!   numbering again. A scope whose CRL is missing from a reload while its CA is still trusted
//!   fails the same way (revocations never vanish); when the signing CA itself left the bundle
//!   its CRL may go too. The first load has nothing to compare with.
//!
//! This module knows CRLs and CA certificates as DER and the provider's signature algorithms;
//! it reads no files and builds no verifiers.

use std::cmp::Ordering;
use std::path::Path;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateRevocationListDer;
use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::{Any, FromDer, Tag};
use x509_parser::certificate::X509Certificate;
use x509_parser::num_bigint::BigUint;
use x509_parser::oid_registry::OID_X509_EXT_ISSUER_DISTRIBUTION_POINT;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::identity::{rfc3339, unix_to_system};
use crate::trust::CrlInfo;
use crate::Error;

/// A trusted CA, as the CRL checks need it.
#[derive(Debug, Clone)]
pub(crate) struct Anchor {
    /// DER of the subject Name (what a CRL's issuer is compared with, as rustls does).
    subject: Vec<u8>,
    /// DER of the SubjectPublicKeyInfo.
    spki: Vec<u8>,
    /// SHA-256 of `spki`: which key this is.
    key_id: [u8; 32],
    /// SHA-256 of the certificate, for messages.
    fingerprint: String,
    /// The keyUsage extension is absent or allows cRLSign (rustls requires it of a CRL signer).
    crl_sign: bool,
}

impl Anchor {
    /// The facts of a parsed CA certificate whose SHA-256 fingerprint is `fingerprint`.
    pub(crate) fn new(cert: &X509Certificate<'_>, fingerprint: &str) -> Anchor {
        let spki = cert.public_key().raw.to_vec();
        let crl_sign = match cert.key_usage() {
            Ok(Some(ku)) => ku.value.crl_sign(),
            // Absent: any usage, as rustls-webpki reads it. Unparsable: rustls refuses such a
            // certificate anyway; let the signature check be the judge.
            Ok(None) | Err(_) => true,
        };
        Anchor {
            subject: cert.subject().as_raw().to_vec(),
            key_id: Sha256::digest(&spki).into(),
            spki,
            fingerprint: fingerprint.to_string(),
            crl_sign,
        }
    }
}

/// One CRL as read, with what the selection and the rollback check compare.
#[derive(Debug, Clone)]
pub(crate) struct Crl {
    /// Facts for status pages.
    pub(crate) info: CrlInfo,
    /// The CRL itself.
    pub(crate) der: CertificateRevocationListDer<'static>,
    /// DER of the issuer Name.
    issuer: Vec<u8>,
    /// DER of the issuingDistributionPoint extension's value, if any: the CRL's scope.
    scope: Option<Vec<u8>>,
    number: Option<BigUint>,
    /// thisUpdate, seconds since the Unix epoch.
    this_update: i64,
    /// Which bundle key verified the signature (`None`: the issuer is not a CA of the bundle).
    signer: Option<[u8; 32]>,
}

impl Crl {
    /// Parses a CRL read from `path` and checks its signature against the CAs of the bundle.
    pub(crate) fn read(
        path: &Path,
        der: CertificateRevocationListDer<'static>,
        anchors: &[Anchor],
        provider: &CryptoProvider,
    ) -> Result<Crl, Error> {
        let fail = |reason: String| Error::Crl {
            path: path.to_owned(),
            reason,
        };
        let crl = parse(path, der.as_ref())?;
        let issuer = crl.issuer().as_raw().to_vec();
        let mut info = facts(path, &crl);
        let signer = check_signature(der.as_ref(), &issuer, &info.issuer, anchors, provider)
            .map_err(fail)?;
        info.verified_by = signer.map(|(_, fingerprint)| fingerprint.to_string());
        let number = crl.crl_number().cloned();
        let this_update = crl.last_update().timestamp();
        let scope = crl
            .extensions()
            .iter()
            .find(|e| e.oid == OID_X509_EXT_ISSUER_DISTRIBUTION_POINT)
            .map(|e| e.value.to_vec());
        Ok(Crl {
            info,
            issuer,
            scope,
            number,
            this_update,
            signer: signer.map(|(key, _)| key),
            der,
        })
    }

    /// Whether the signature could only be left to the handshake (issuer not in the bundle).
    pub(crate) fn unverified(&self) -> bool {
        self.signer.is_none()
    }

    /// Whether rustls would consider `self` and `other` for the same certificates.
    fn same_scope(&self, other: &Crl) -> bool {
        self.issuer == other.issuer && self.scope == other.scope
    }

    /// "number 5 (thisUpdate …)" or "no CRL number, thisUpdate …", for messages.
    fn version(&self) -> String {
        let this_update = rfc3339(self.info.this_update);
        match &self.number {
            Some(n) => format!("number {n} (thisUpdate {this_update})"),
            None => format!("no CRL number, thisUpdate {this_update}"),
        }
    }

    /// Which of two CRLs of one scope is newer: the higher CRL number, then the later
    /// thisUpdate; by thisUpdate alone when either has no number.
    fn newness(&self, other: &Crl) -> Ordering {
        match (&self.number, &other.number) {
            (Some(a), Some(b)) => a.cmp(b).then(self.this_update.cmp(&other.this_update)),
            _ => self.this_update.cmp(&other.this_update),
        }
    }

    /// Whether `self` is older than `in_force`, i.e. replacing it would be a rollback. Equal
    /// numbers are not (the same CRL read again, or a reissue with the same number).
    fn rolls_back(&self, in_force: &Crl) -> bool {
        match (&self.number, &in_force.number) {
            (Some(new), Some(old)) => new < old,
            _ => self.this_update < in_force.this_update,
        }
    }
}

/// Parses a DER CRL read from `path` ([`Error::CrlUnreadable`] with the parser's error).
pub(crate) fn parse<'a>(
    path: &Path,
    der: &'a [u8],
) -> Result<CertificateRevocationList<'a>, Error> {
    CertificateRevocationList::from_der(der)
        .map(|(_, crl)| crl)
        .map_err(|e| Error::CrlUnreadable {
            path: path.to_owned(),
            source: Box::new(x509_parser::error::X509Error::from(e)),
        })
}

/// The facts of a parsed CRL, its signer not checked (`verified_by` is `None`).
pub(crate) fn facts(path: &Path, crl: &CertificateRevocationList<'_>) -> CrlInfo {
    CrlInfo {
        path: path.to_owned(),
        issuer: crl.issuer().to_string(),
        this_update: unix_to_system(crl.last_update().timestamp()),
        next_update: crl.next_update().map(|t| unix_to_system(t.timestamp())),
        revoked: crl.iter_revoked_certificates().count(),
        number: crl.crl_number().map(BigUint::to_string),
        verified_by: None,
    }
}

/// Splits `crls` into the newest CRL of each scope (in the order first seen) and the
/// superseded rest, logging a warning for each superseded one.
pub(crate) fn newest_per_scope(crls: Vec<Crl>) -> (Vec<Crl>, Vec<CrlInfo>) {
    let mut applied: Vec<Crl> = Vec::new();
    let mut superseded: Vec<Crl> = Vec::new();
    for crl in crls {
        match applied.iter_mut().find(|kept| kept.same_scope(&crl)) {
            None => applied.push(crl),
            Some(kept) => {
                if crl.newness(kept) == Ordering::Greater {
                    superseded.push(std::mem::replace(kept, crl));
                } else {
                    superseded.push(crl);
                }
            }
        }
    }
    for old in &superseded {
        if let Some(kept) = applied.iter().find(|kept| kept.same_scope(old)) {
            tracing::warn!(
                file = %old.info.path.display(),
                issuer = %old.info.issuer,
                "CRL {} is superseded by the CRL in {} ({}): only the newest CRL of an issuer applies",
                old.version(),
                kept.info.path.display(),
                kept.version()
            );
        }
    }
    (applied, superseded.into_iter().map(|c| c.info).collect())
}

/// Checks that `applied` (what a reload would put in force) neither rolls back nor drops a CRL
/// of `in_force` (what is in force now); `anchors` are the CAs of the reload.
pub(crate) fn check_successors(
    in_force: &[Crl],
    applied: &[Crl],
    anchors: &[Anchor],
) -> Result<(), Error> {
    for old in in_force {
        match applied.iter().find(|new| new.same_scope(old)) {
            Some(new) => {
                if matches!((new.signer, old.signer), (Some(a), Some(b)) if a != b) {
                    // Another key of the same name (the old one left the bundle, or the new
                    // CRL would not have verified): a new CA, with its own numbering.
                    continue;
                }
                if new.rolls_back(old) {
                    return Err(Error::Crl {
                        path: new.info.path.clone(),
                        reason: format!(
                            "rollback refused: this CRL of {} has {}, older than the one in \
                             force, which has {} (read from {}); the CRL in force stays",
                            new.info.issuer,
                            new.version(),
                            old.version(),
                            old.info.path.display()
                        ),
                    });
                }
            }
            None => {
                let ca_still_trusted = match old.signer {
                    Some(key) => anchors
                        .iter()
                        .any(|a| a.subject == old.issuer && a.key_id == key),
                    // An issuer outside the bundle (an intermediate): nothing says it is gone.
                    None => true,
                };
                if ca_still_trusted {
                    let retire = if old.signer.is_some() {
                        "to retire it, remove its CA from the trust bundle in the same change, \
                         or restart"
                    } else {
                        "its issuer is not in the trust bundle (an intermediate?), so to retire \
                         it, restart"
                    };
                    return Err(Error::Crl {
                        path: old.info.path.clone(),
                        reason: format!(
                            "no CRL of {} any more (the one in force has {}), while its CA is \
                             still trusted: refusing to drop its revocations; the CRL in force \
                             stays ({retire})",
                            old.info.issuer,
                            old.version()
                        ),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Verifies the CRL's signature with every bundle CA named like its issuer. Returns which key
/// verified it (and that CA's fingerprint), `None` when no bundle CA has the issuer's name.
fn check_signature<'a>(
    der: &[u8],
    issuer: &[u8],
    issuer_text: &str,
    anchors: &'a [Anchor],
    provider: &CryptoProvider,
) -> Result<Option<([u8; 32], &'a str)>, String> {
    let mut verified: Option<&Anchor> = None;
    let mut refused: Option<(&Anchor, String)> = None;
    for ca in anchors.iter().filter(|a| a.subject == issuer) {
        if !ca.crl_sign {
            return Err(format!(
                "the trusted CA {issuer_text} (fingerprint {}) may not sign CRLs (its keyUsage \
                 lacks cRLSign): rustls would refuse every certificate it issued",
                ca.fingerprint
            ));
        }
        match verify(der, &ca.spki, provider) {
            Ok(()) => verified = verified.or(Some(ca)),
            Err(reason) => refused = refused.or(Some((ca, reason))),
        }
    }
    match (verified, refused) {
        (None, None) => Ok(None),
        (Some(ca), None) => Ok(Some((ca.key_id, ca.fingerprint.as_str()))),
        (None, Some((ca, reason))) => Err(format!(
            "signature does not verify with the key of the trusted CA {issuer_text} \
             (fingerprint {}): {reason}; a CRL signed by another key (a CA re-keyed under the \
             same name?) would make rustls refuse every certificate of that CA",
            ca.fingerprint
        )),
        (Some(good), Some((bad, _))) => Err(format!(
            "signature verifies with the trusted CA {issuer_text} (fingerprint {}) but not with \
             the other trusted CA of that name (fingerprint {}): rustls checks a CRL against \
             the CA that issued the certificate at hand, so every certificate of the second \
             would be refused; two CAs with one name cannot share revocation: give the new CA \
             its own name, or trust only one of them",
            good.fingerprint, bad.fingerprint
        )),
    }
}

/// Verifies a signed X.509 structure (`der`: SEQUENCE { tbs, algorithm, BIT STRING }) with
/// the key of `spki`, choosing the algorithm as rustls-webpki does: among the provider's
/// algorithms, the one whose signature and public-key algorithm identifiers match exactly.
fn verify(der: &[u8], spki: &[u8], provider: &CryptoProvider) -> Result<(), String> {
    let signed = SignedParts::parse(der).ok_or("malformed signature fields")?;
    let (key_algorithm, key) = spki_parts(spki).ok_or("the CA's public key is malformed")?;
    let mut wrong_key_type = false;
    for alg in provider
        .signature_verification_algorithms
        .all
        .iter()
        .filter(|alg| alg.signature_alg_id().as_ref() == signed.algorithm)
    {
        if alg.public_key_alg_id().as_ref() != key_algorithm {
            wrong_key_type = true;
            continue;
        }
        return alg
            .verify_signature(key, signed.message, signed.signature)
            .map_err(|_| "bad signature".to_string());
    }
    Err(if wrong_key_type {
        "the CRL's signature algorithm does not fit the CA's key type".into()
    } else {
        "signature algorithm not supported by the crypto provider".into()
    })
}

/// The parts of a signed structure that a signature check needs.
struct SignedParts<'a> {
    /// The whole DER of the signed part (tag and length included).
    message: &'a [u8],
    /// The contents of the signature AlgorithmIdentifier (without its SEQUENCE header).
    algorithm: &'a [u8],
    /// The signature bits.
    signature: &'a [u8],
}

impl<'a> SignedParts<'a> {
    fn parse(der: &'a [u8]) -> Option<SignedParts<'a>> {
        let (_, outer) = Any::from_der(der).ok()?;
        let body = outer.data;
        let (rest, tbs) = Any::from_der(body).ok()?;
        let message = &body[..body.len() - rest.len()];
        let (rest, algorithm) = Any::from_der(rest).ok()?;
        let (_, signature) = Any::from_der(rest).ok()?;
        let (&unused_bits, bits) = signature.data.split_first()?;
        let well_formed = outer.header.tag() == Tag::Sequence
            && tbs.header.tag() == Tag::Sequence
            && algorithm.header.tag() == Tag::Sequence
            && signature.header.tag() == Tag::BitString
            && unused_bits == 0;
        well_formed.then_some(SignedParts {
            message,
            algorithm: algorithm.data,
            signature: bits,
        })
    }
}

/// The contents of a SubjectPublicKeyInfo's AlgorithmIdentifier and its key bits, the two
/// things a provider's verification algorithm takes.
fn spki_parts(spki: &[u8]) -> Option<(&[u8], &[u8])> {
    let (_, outer) = Any::from_der(spki).ok()?;
    let (rest, algorithm) = Any::from_der(outer.data).ok()?;
    let (_, key) = Any::from_der(rest).ok()?;
    let (&unused_bits, bits) = key.data.split_first()?;
    let well_formed = outer.header.tag() == Tag::Sequence
        && algorithm.header.tag() == Tag::Sequence
        && key.header.tag() == Tag::BitString
        && unused_bits == 0;
    well_formed.then_some((algorithm.data, bits))
}
