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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::identity::{default_provider, hex, unix_to_system, CertInfo};
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
}

/// A validated set of trusted CAs and CRLs, with the rustls verifiers built from them.
#[derive(Clone)]
pub struct Trust {
    roots: Arc<RootCertStore>,
    cas: Vec<CertInfo>,
    crls: Vec<CrlInfo>,
    crl_ders: Vec<CertificateRevocationListDer<'static>>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
    fingerprint: String,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("cas", &self.cas)
            .field("crls", &self.crls)
            .finish_non_exhaustive()
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

    /// Facts about each CRL.
    pub fn crls(&self) -> &[CrlInfo] {
        &self.crls
    }

    /// The CRLs, DER.
    pub fn crl_ders(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.crl_ders
    }

    /// A verifier of client certificates (mutual TLS required) for this trust.
    pub fn client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }

    /// A verifier of server certificates for this trust.
    pub fn server_verifier(&self) -> &Arc<WebPkiServerVerifier> {
        &self.server_verifier
    }

    /// SHA-256 over the CA certificates and CRLs, lowercase hex: changes when trust changes.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
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
        for (i, (path, der)) in ca_certs.iter().enumerate() {
            let info = CertInfo::parse(path, i + 1, der)?;
            roots.add(der.clone()).map_err(|e| Error::Trust {
                path: path.clone(),
                reason: format!("certificate {} ({}): {e}", i + 1, info.subject),
            })?;
            hasher.update(der.as_ref());
            cas.push(info);
        }
        let mut crl_infos = Vec::new();
        for (path, der) in &crls {
            let (_, crl) =
                CertificateRevocationList::from_der(der.as_ref()).map_err(|e| Error::Crl {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let info = CrlInfo {
                path: path.clone(),
                issuer: crl.issuer().to_string(),
                this_update: unix_to_system(crl.last_update().timestamp()),
                next_update: crl.next_update().map(|t| unix_to_system(t.timestamp())),
                revoked: crl.iter_revoked_certificates().count(),
            };
            if let Some(next) = info.next_update {
                if next < SystemTime::now() {
                    tracing::warn!(
                        file = %path.display(),
                        issuer = %info.issuer,
                        "CRL is past its next update ({}); its revocations still apply",
                        crate::identity::rfc3339(next)
                    );
                }
            }
            hasher.update(der.as_ref());
            crl_infos.push(info);
        }
        let roots = Arc::new(roots);
        let crl_ders: Vec<_> = crls.into_iter().map(|(_, d)| d).collect();
        let first_path = ca_certs.first().map(|(p, _)| p.clone()).unwrap_or_default();
        let crl_error = |e: rustls::server::VerifierBuilderError| {
            let path = crl_infos
                .first()
                .map(|c| c.path.clone())
                .unwrap_or_else(|| first_path.clone());
            Error::Crl {
                path,
                reason: e.to_string(),
            }
        };
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls(crl_ders.iter().cloned())
                .allow_unknown_revocation_status()
                .build()
                .map_err(crl_error)?;
        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
                .with_crls(crl_ders.iter().cloned())
                .allow_unknown_revocation_status()
                .build()
                .map_err(crl_error)?;
        Ok(Trust {
            roots,
            cas,
            crls: crl_infos,
            crl_ders,
            client_verifier,
            server_verifier,
            fingerprint: hex(&hasher.finalize()),
        })
    }
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
    pub(crate) warned_run_together: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
}

impl TrustLoader {
    pub(crate) fn new(source: TrustSource, provider: Option<Arc<CryptoProvider>>) -> Self {
        TrustLoader {
            source,
            provider: provider.unwrap_or_else(default_provider),
            warned_run_together: Default::default(),
        }
    }

    fn note(&self, path: &Path, run_together: bool) {
        if run_together && lock(&self.warned_run_together).insert(path.to_owned()) {
            tracing::warn!(file = %path.display(), "PEM blocks are run together on one line; read correctly, but other tools will refuse this file");
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
            self.note(path, sections.run_together);
            if sections.certs.is_empty() {
                return Err(Error::Trust {
                    path: path.clone(),
                    reason: "no CA certificate found".into(),
                });
            }
            cas.extend(sections.certs.into_iter().map(|c| (path.clone(), c)));
        }
        for (path, password) in &self.source.pkcs12_files {
            let password = password.resolve(path, files)?;
            let certs = crate::source::pkcs12::certificates(path, files.contents(path), &password)?;
            if certs.is_empty() {
                return Err(Error::Trust {
                    path: path.clone(),
                    reason: "no certificate in the PKCS#12 trust store".into(),
                });
            }
            cas.extend(certs.into_iter().map(|c| (path.clone(), c)));
        }
        if cas.is_empty() {
            return Err(Error::Trust {
                path: self.paths().first().cloned().unwrap_or_default(),
                reason: "no CA file given".into(),
            });
        }
        let mut crls = Vec::new();
        for path in &self.source.crl_files {
            let bytes = files.contents(path);
            if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                let sections = pem::parse(path, bytes)?;
                if sections.crls.is_empty() {
                    return Err(Error::Crl {
                        path: path.clone(),
                        reason: "no X509 CRL block found".into(),
                    });
                }
                crls.extend(sections.crls.into_iter().map(|c| (path.clone(), c)));
            } else if bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(Error::Empty { path: path.clone() });
            } else {
                crls.push((
                    path.clone(),
                    CertificateRevocationListDer::from(bytes.to_vec()),
                ));
            }
        }
        Trust::build(cas, crls, &self.provider)
    }

    fn fingerprint(value: &Trust) -> String {
        value.fingerprint.clone()
    }

    fn describe(value: &Trust) -> String {
        let subjects: Vec<&str> = value.cas.iter().map(|c| c.subject.as_str()).collect();
        format!(
            "trust bundle cas=[{}] crls={} revoked={}",
            subjects.join("; "),
            value.crls.len(),
            value.crls.iter().map(|c| c.revoked).sum::<usize>()
        )
    }
}
