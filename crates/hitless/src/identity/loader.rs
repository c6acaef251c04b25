//! Reads and validates an identity from its files: the loader a file-backed
//! [`ReloadingIdentity`](crate::ReloadingIdentity) reloads with, and what
//! [`Identity::load`](crate::Identity::load) runs once. A pushed identity is validated by the
//! same rules ([`IdentityLoader::load_der`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::identity::{Identity, Validation};
use crate::reload::Load;
use crate::snapshot::lock;
use crate::source::{files, pem, IdentitySource};
use crate::Error;

/// Reads and validates an identity from its source (none: a pushed identity).
pub(crate) struct IdentityLoader {
    source: Option<IdentitySource>,
    pub(crate) rules: Validation,
    /// Files already reported as having PEM blocks run together.
    warned_run_together: Mutex<HashSet<PathBuf>>,
}

impl IdentityLoader {
    pub(crate) fn new(source: IdentitySource, rules: Validation) -> Self {
        IdentityLoader {
            source: Some(source),
            rules,
            warned_run_together: Mutex::default(),
        }
    }

    /// The loader of a pushed identity: no files, the same rules.
    pub(crate) fn pushed(rules: Validation) -> Self {
        IdentityLoader {
            source: None,
            rules,
            warned_run_together: Mutex::default(),
        }
    }

    /// One read and validation, as a reload does it (for [`Identity::load`]).
    pub(crate) fn load_once(&self) -> Result<Identity, Error> {
        let paths = self.paths();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let files = files::read_stable(&refs)?;
        self.load(&files)
    }

    /// Validates a pushed chain and key by the rules a file's are (`origin` stands where
    /// errors name a file).
    pub(crate) fn load_der(
        &self,
        origin: &Path,
        chain: &[CertificateDer<'static>],
        key: PrivateKeyDer<'static>,
    ) -> Result<Identity, Error> {
        Identity::from_der(origin, chain, origin, key, &self.rules)
    }

    fn note_run_together(&self, path: &std::path::Path, run_together: bool) {
        if run_together && lock(&self.warned_run_together).insert(path.to_owned()) {
            tracing::warn!(
                file = %path.display(),
                "PEM blocks are run together on one line (a template without newlines between \
                 blocks, e.g. {{{{ .Data.certificate }}}}{{{{ .Data.private_key }}}}); read \
                 correctly, but OpenSSL and other tools will refuse this file: put each block on \
                 its own line in the template"
            );
        }
    }
}

impl Load for IdentityLoader {
    type Value = Identity;

    fn paths(&self) -> Vec<PathBuf> {
        self.source.as_ref().map_or_else(Vec::new, |source| {
            source
                .paths()
                .into_iter()
                .map(|p| p.to_path_buf())
                .collect()
        })
    }

    fn load(&self, files: &files::Snapshot) -> Result<Identity, Error> {
        // A pushed identity is never read from files (its attempts stop before reading).
        let Some(source) = &self.source else {
            return Err(Error::NotLoaded {
                name: "pushed identity".into(),
            });
        };
        if let IdentitySource::Pkcs12 { path, password } = source {
            let password = password.resolve(path, files)?;
            let (certs, key) =
                crate::source::pkcs12::identity(path, files.contents(path), &password)?;
            return Identity::from_der(path, &certs, path, key, &self.rules);
        }
        let cert_path = source.cert_path();
        let key_path = source.key_path();
        let certs = pem::parse(cert_path, files.contents(cert_path))?;
        self.note_run_together(cert_path, certs.run_together());
        let identity = if cert_path == key_path {
            Identity::from_sections(cert_path, &certs, key_path, &certs, &self.rules)?
        } else {
            let keys = pem::parse(key_path, files.contents(key_path))?;
            self.note_run_together(key_path, keys.run_together());
            Identity::from_sections(cert_path, &certs, key_path, &keys, &self.rules)?
        };
        Ok(identity)
    }

    fn fingerprint(value: &Identity) -> String {
        value.leaf().fingerprint.clone()
    }

    fn secret_files(&self) -> Vec<(PathBuf, &'static str)> {
        match &self.source {
            None => Vec::new(),
            Some(IdentitySource::Pkcs12 { path, password }) => {
                let mut secrets = vec![(path.clone(), "PKCS#12 file (it holds a private key)")];
                secrets.extend(password.path().map(|p| (p.to_path_buf(), "password file")));
                secrets
            }
            Some(source) => vec![(source.key_path().to_path_buf(), "private key file")],
        }
    }

    fn writers_decide(&self) -> &'static str {
        "what this identity presents"
    }

    fn validity(value: &Identity) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
        Some((value.leaf().not_before, value.leaf().not_after))
    }

    fn describe(value: &Identity) -> String {
        let leaf = value.leaf();
        format!(
            "identity subject={} serial={} not_after={} key={}",
            leaf.subject,
            leaf.serial,
            crate::identity::rfc3339(leaf.not_after),
            leaf.key_type
        )
    }
}
