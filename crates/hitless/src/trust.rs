//! A validated trust bundle: the CA certificates a peer must chain to, and the CRLs that
//! revoke some of what they issued.
//!
//! Loading builds the rustls verifiers for both directions right away, so a bundle or CRL that
//! rustls would refuse is refused here, while the last good trust keeps serving.
//!
//! Policy, decided here and documented for users:
//! - **Revocation is checked for the whole chain**, and a certificate whose issuer has no CRL
//!   is *not* refused for that (`allow_unknown_revocation_status`): CRLs cover what they cover.
//! - **An expired CRL** (its nextUpdate has passed) is still loaded and its revocations still
//!   apply, but it is not treated as a reason to refuse every certificate of its issuer: a late
//!   CRL publisher would otherwise turn into an outage. Status shows the CRL's next update, and
//!   a warning is logged when it is loaded stale.
//! - **A CRL file that disappears** is a failed reload like any other missing file: the last
//!   good trust, with its CRL, stays in force and the error is reported. Revocations never
//!   vanish because a file did.
//! - **CRL integrity** (signature checked at load, newest CRL per issuer, no rollback): see
//!   the `crl` module; superseded CRLs are listed by [`Trust::superseded_crls`].
//! - **Trust anchors that are not CAs** (no basicConstraints CA:TRUE, and not a self-signed v1
//!   root), such as a server's or a client's own certificate, are accepted (rustls trusts
//!   whatever key an anchor holds) with a warning naming the file and the subject, and are
//!   listed by [`Trust::non_ca_anchors`]: whoever holds such a certificate's key can mint
//!   certificates this trust accepts.
//! - **A PKCS#12 trust store** contributes its trusted-certificate entries and its certificate
//!   bags that belong to no private key; the certificates of a private-key entry (its leaf and
//!   the chain under it) are never trust anchors (see `source::pkcs12`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Version;

use crate::crl::{self, Anchor, Crl};
use crate::identity::{default_provider, hex, CertInfo};
use crate::reload::Load;
use crate::snapshot::lock;
use crate::source::{files, pem};
use crate::Error;

/// Facts about one CRL, for status pages and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CrlInfo {
    /// The file it was read from.
    pub path: PathBuf,
    /// The issuing CA's distinguished name.
    pub issuer: String,
    /// When it was issued.
    pub this_update: SystemTime,
    /// When the next one is due (absent in some CRLs).
    pub next_update: Option<SystemTime>,
    /// How many certificates it revokes.
    pub revoked: usize,
    /// Its CRL number (the crlNumber extension), in decimal; absent in some CRLs.
    pub number: Option<String>,
    /// SHA-256 fingerprint (lowercase hex) of the trusted CA whose key verified the CRL's
    /// signature at load. `None` when the issuer is not a CA of the bundle (typically an
    /// intermediate): its signature is then checked during handshakes, against the
    /// intermediate the peer presents.
    pub verified_by: Option<String>,
}

/// A validated set of trusted CAs and CRLs, with the rustls verifiers built from them.
#[derive(Clone)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    cas: Vec<CertInfo>,
    non_ca: Vec<CertInfo>,
    crls: Vec<CrlInfo>,
    superseded: Vec<CrlInfo>,
    crl_ders: Vec<CertificateRevocationListDer<'static>>,
    /// The CRLs in force, as the rollback check of the next reload compares them.
    applied: Vec<Crl>,
    /// The CAs, as the CRL checks need them.
    anchors: Vec<Anchor>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
    fingerprint: String,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("cas", &self.cas)
            .field("crls", &self.crls)
            .field("superseded_crls", &self.superseded)
            .finish_non_exhaustive()
    }
}

impl CrlInfo {
    /// The facts of a DER CRL read from `path` (named in errors: [`Error::CrlUnreadable`]),
    /// as [`Trust::crls`] reports them, except that no signature is checked (`verified_by` is
    /// `None`): that takes the trust bundle, see [`Trust::load`].
    pub fn from_der(path: &Path, der: &[u8]) -> Result<CrlInfo, Error> {
        Ok(crl::facts(path, &crl::parse(path, der)?))
    }
}

impl Trust {
    /// The trusted CAs.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// Facts about each trusted CA.
    pub fn cas(&self) -> &[CertInfo] {
        &self.cas
    }

    /// The trust anchors that are not CAs: neither basicConstraints CA:TRUE nor a self-signed
    /// v1 root (for instance a server's or a client's own certificate). They are trusted, and
    /// a warning naming the file and the subject is logged at each load; whoever holds one's
    /// private key can mint certificates this trust accepts.
    pub fn non_ca_anchors(&self) -> &[CertInfo] {
        &self.non_ca
    }

    /// Facts about each CRL in force: the newest of each issuer (and scope), the ones the
    /// verifiers use.
    pub fn crls(&self) -> &[CrlInfo] {
        &self.crls
    }

    /// The CRLs that were read but are not in force because a newer CRL of the same issuer
    /// (and scope) was read too: a higher CRL number, or without numbers a later thisUpdate.
    /// A warning naming both files and numbers is logged at each load.
    pub fn superseded_crls(&self) -> &[CrlInfo] {
        &self.superseded
    }

    /// The CRLs in force, DER (the ones [`Trust::crls`] describes, in the same order).
    pub fn crl_ders(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.crl_ders
    }

    /// A verifier of client certificates (mutual TLS required) for *this generation* of the
    /// trust: fixed, it does not follow reloads. A `ServerConfig` built with it keeps this
    /// verdict for good; use [`ReloadingServerConfig`](crate::ReloadingServerConfig) to follow
    /// the trust.
    pub fn fixed_client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }

    /// A verifier of server certificates for *this generation* of the trust: fixed, it does not
    /// follow reloads; use [`ReloadingServerCertVerifier`](crate::ReloadingServerCertVerifier) or
    /// [`ReloadingClientConfig`](crate::ReloadingClientConfig) to follow the trust.
    pub fn fixed_server_verifier(&self) -> &Arc<WebPkiServerVerifier> {
        &self.server_verifier
    }

    /// SHA-256 over the CA certificates and the CRLs in force, lowercase hex: changes when
    /// trust changes.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Reads `source` once and validates it exactly as a
    /// [`ReloadingTrust`](crate::ReloadingTrust) does on its first load, with the default crypto
    /// provider (the process default, else the one compiled in): the same bounded reader, the
    /// same PEM, PKCS#12 and CRL rules, the verifiers built. For tools that must give the verdict
    /// a server would; nothing is watched (and there is no CRL in force to compare with, so no
    /// rollback can be refused).
    pub fn load(source: &TrustSource) -> Result<Trust, Error> {
        TrustLoader::new(source.clone(), None)?.load_once()
    }

    /// [`Trust::load`] with this crypto provider (as
    /// [`TrustBuilder::crypto_provider`](crate::TrustBuilder::crypto_provider)).
    pub fn load_with_provider(
        source: &TrustSource,
        provider: Arc<CryptoProvider>,
    ) -> Result<Trust, Error> {
        TrustLoader::new(source.clone(), Some(provider))?.load_once()
    }

    pub(crate) fn build(
        ca_certs: Vec<(PathBuf, CertificateDer<'static>)>,
        crls: Vec<(PathBuf, CertificateRevocationListDer<'static>)>,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Trust, Error> {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        let mut roots = RootCertStore::empty();
        let mut cas = Vec::new();
        let mut non_ca = Vec::new();
        let mut anchors = Vec::new();
        for (i, (path, der)) in ca_certs.iter().enumerate() {
            let info = CertInfo::parse(path, i + 1, der)?;
            roots
                .add(der.clone())
                .map_err(|source| Error::TrustAnchor {
                    path: path.clone(),
                    index: i + 1,
                    subject: info.subject.clone(),
                    source,
                })?;
            // CertInfo::parse succeeded, so this parse does too; stay total all the same.
            if let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) {
                if !is_ca(&cert) {
                    tracing::warn!(
                        file = %path.display(),
                        subject = %info.subject,
                        "trust anchor is not a CA (no basicConstraints CA:TRUE, not a self-signed \
                         v1 root): whoever holds its private key can mint certificates this \
                         trust accepts; trust the CA that issued it instead"
                    );
                    non_ca.push(info.clone());
                }
                anchors.push(Anchor::new(&cert, &info.fingerprint));
            }
            hasher.update(der.as_ref());
            cas.push(info);
        }
        let roots = Arc::new(roots);

        let mut read = Vec::new();
        for (path, der) in crls {
            // What rustls-webpki refuses (no nextUpdate, a delta CRL, ...) is refused here,
            // naming the file, before any policy looks at it.
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls([der.clone()])
                .build()
                .map_err(|source| Error::CrlRefused {
                    path: path.clone(),
                    source,
                })?;
            read.push(Crl::read(&path, der, &anchors, provider)?);
        }
        let (applied, superseded) = crl::newest_per_scope(read);
        for crl in &applied {
            if let Some(next) = crl.info.next_update {
                if next < SystemTime::now() {
                    tracing::warn!(
                        file = %crl.info.path.display(),
                        issuer = %crl.info.issuer,
                        "CRL is past its next update ({}); its revocations still apply",
                        crate::identity::rfc3339(next)
                    );
                }
            }
            hasher.update(crl.der.as_ref());
        }
        let crl_ders: Vec<_> = applied.iter().map(|c| c.der.clone()).collect();
        // Each CA and CRL passed on its own above; what is left is about the bundle as a whole.
        let build_error = |source| Error::Verifier { source };
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls(crl_ders.iter().cloned())
                .allow_unknown_revocation_status()
                .build()
                .map_err(build_error)?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls(crl_ders.iter().cloned())
                .allow_unknown_revocation_status()
                .build()
                .map_err(build_error)?;
        Ok(Trust {
            roots,
            cas,
            non_ca,
            crls: applied.iter().map(|c| c.info.clone()).collect(),
            superseded,
            crl_ders,
            applied,
            anchors,
            client_verifier,
            server_verifier,
            fingerprint: hex(&hasher.finalize()),
        })
    }
}

/// A CA in the sense of the warning: basicConstraints CA:TRUE, or a self-signed v1 root (v1
/// has no extensions, and old roots are v1).
fn is_ca(cert: &X509Certificate<'_>) -> bool {
    cert.is_ca()
        || (cert.version() == X509Version::V1 && cert.subject().as_raw() == cert.issuer().as_raw())
}

/// Where a trust bundle is read from: CA files and CRL files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TrustSource {
    /// PEM files of CA certificates (at least one).
    pub ca_files: Vec<PathBuf>,
    /// CRL files, PEM or DER.
    pub crl_files: Vec<PathBuf>,
    /// PKCS#12 trust stores (e.g. a Java `truststore.p12`), with their passwords.
    pub pkcs12_files: Vec<(PathBuf, crate::Password)>,
}

impl TrustSource {
    /// Trust the CAs in these PEM files.
    pub fn cas<P: Into<PathBuf>>(files: impl IntoIterator<Item = P>) -> Self {
        TrustSource {
            ca_files: files.into_iter().map(Into::into).collect(),
            ..TrustSource::default()
        }
    }

    /// And trust every certificate of this PKCS#12 trust store.
    pub fn with_pkcs12(mut self, path: impl Into<PathBuf>, password: crate::Password) -> Self {
        self.pkcs12_files.push((path.into(), password));
        self
    }

    /// And apply these CRLs (PEM or DER).
    pub fn with_crls<P: Into<PathBuf>>(mut self, files: impl IntoIterator<Item = P>) -> Self {
        self.crl_files.extend(files.into_iter().map(Into::into));
        self
    }
}

pub(crate) struct TrustLoader {
    pub(crate) source: TrustSource,
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) warned_run_together: Mutex<HashSet<PathBuf>>,
    /// The CRLs of the trust being served, which the next load must not roll back. Updated
    /// only when a load succeeds: a good value is always the one served (`reload` swaps every
    /// value `load` returns), and attempts are serialised there.
    in_force: Mutex<Vec<Crl>>,
    /// (file, issuer) of CRLs whose signature is left to the handshake, already warned about.
    warned_unverified: Mutex<HashSet<(PathBuf, String)>>,
}

impl TrustLoader {
    pub(crate) fn new(
        source: TrustSource,
        provider: Option<Arc<CryptoProvider>>,
    ) -> Result<Self, Error> {
        Ok(TrustLoader {
            source,
            provider: provider.map_or_else(default_provider, Ok)?,
            warned_run_together: Default::default(),
            in_force: Mutex::default(),
            warned_unverified: Mutex::default(),
        })
    }

    /// One read and validation, as a reload does it (for [`Trust::load`]).
    pub(crate) fn load_once(&self) -> Result<Trust, Error> {
        let paths = self.paths();
        let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let files = files::read_stable(&paths)?;
        self.load(&files)
    }

    fn note(&self, path: &Path, run_together: bool) {
        if run_together && lock(&self.warned_run_together).insert(path.to_owned()) {
            tracing::warn!(file = %path.display(), "PEM blocks are run together on one line; read correctly, but other tools will refuse this file");
        }
    }

    /// Validates pushed CAs and CRLs by the rules a file's are (`origin` stands where errors
    /// name a file).
    pub(crate) fn load_der(
        &self,
        origin: &Path,
        cas: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Trust, Error> {
        if cas.is_empty() {
            return Err(Error::Trust {
                path: origin.to_owned(),
                reason: "no CA certificate".into(),
            });
        }
        let cas = cas.into_iter().map(|c| (origin.to_owned(), c)).collect();
        let crls = crls.into_iter().map(|c| (origin.to_owned(), c)).collect();
        let trust = Trust::build(cas, crls, &self.provider)?;
        self.admit(trust)
    }

    /// The last step of every load: no CRL of `trust` may roll back one in force.
    fn admit(&self, trust: Trust) -> Result<Trust, Error> {
        let mut in_force = lock(&self.in_force);
        crl::check_successors(&in_force, &trust.applied, &trust.anchors)?;
        in_force.clone_from(&trust.applied);
        drop(in_force);
        self.note_unverified(&trust);
        Ok(trust)
    }

    /// Warns, once per file and issuer, about CRLs whose signature cannot be checked at load.
    fn note_unverified(&self, trust: &Trust) {
        for crl in trust.applied.iter().filter(|c| c.unverified()) {
            let key = (crl.info.path.clone(), crl.info.issuer.clone());
            if lock(&self.warned_unverified).insert(key) {
                tracing::warn!(
                    file = %crl.info.path.display(),
                    issuer = %crl.info.issuer,
                    "the CRL's issuer is not a CA of the trust bundle (an intermediate?): its \
                     signature is checked during handshakes only, against the issuer the peer \
                     presents; if it was signed by another key, every certificate of that \
                     issuer is refused"
                );
            }
        }
    }
}

impl Load for TrustLoader {
    type Value = Trust;

    fn paths(&self) -> Vec<PathBuf> {
        let mut p = self.source.ca_files.clone();
        for (store, password) in &self.source.pkcs12_files {
            p.push(store.clone());
            p.extend(password.path().map(Path::to_path_buf));
        }
        p.extend(self.source.crl_files.iter().cloned());
        p
    }

    fn load(&self, files: &files::Snapshot) -> Result<Trust, Error> {
        let mut cas = Vec::new();
        for path in &self.source.ca_files {
            let sections = pem::parse(path, files.contents(path))?;
            self.note(path, sections.run_together());
            if sections.certificates().next().is_none() {
                return Err(Error::Trust {
                    path: path.clone(),
                    reason: "no CA certificate found".into(),
                });
            }
            cas.extend(sections.certificates().map(|c| (path.clone(), c.clone())));
        }
        for (path, password) in &self.source.pkcs12_files {
            let password = password.resolve(path, files)?;
            let certs = crate::source::pkcs12::trust_anchors(
                path,
                files.contents(path),
                &password,
                &self.provider,
            )?;
            cas.extend(certs.into_iter().map(|c| (path.clone(), c)));
        }
        if self.source.ca_files.is_empty() && self.source.pkcs12_files.is_empty() {
            return Err(Error::NothingToLoad {
                what: "trust source",
                missing: "CA file or PKCS#12 trust store",
            });
        }
        let mut crls = Vec::new();
        for path in &self.source.crl_files {
            let bytes = files.contents(path);
            if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                let sections = pem::parse(path, bytes)?;
                if sections.crls().next().is_none() {
                    return Err(Error::Crl {
                        path: path.clone(),
                        reason: "no X509 CRL block found".into(),
                    });
                }
                crls.extend(sections.crls().map(|c| (path.clone(), c.clone())));
            } else if bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(Error::Empty { path: path.clone() });
            } else {
                crls.push((
                    path.clone(),
                    CertificateRevocationListDer::from(bytes.to_vec()),
                ));
            }
        }
        let trust = Trust::build(cas, crls, &self.provider)?;
        self.admit(trust)
    }

    fn fingerprint(value: &Trust) -> String {
        value.fingerprint.clone()
    }

    fn describe(value: &Trust) -> String {
        let subjects: Vec<&str> = value.cas.iter().map(|c| c.subject.as_str()).collect();
        format!(
            "trust bundle cas=[{}] crls={} revoked={} superseded_crls={}",
            subjects.join("; "),
            value.crls.len(),
            value.crls.iter().map(|c| c.revoked).sum::<usize>(),
            value.superseded.len()
        )
    }
}
