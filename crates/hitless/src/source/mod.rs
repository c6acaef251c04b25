//! Where credential bytes come from and how they parse.
//!
//! This module reads files and turns them into DER: it knows file layouts (a certificate file
//! plus a key file, one bundle file, symlinks such as the Kubernetes `..data` swap) and PEM as
//! real agents write it. It knows nothing about rustls configurations, watching or swapping.

pub(crate) mod files;
pub mod pem;
pub mod pkcs12;

pub use pkcs12::Password;

use std::path::{Path, PathBuf};

/// Where an identity (certificate chain + private key) is read from.
///
/// ```
/// use hitless::IdentitySource;
/// // Two files, as most tools write them:
/// let pair = IdentitySource::pair("/etc/tls/server.crt", "/etc/tls/server.key");
/// // One file holding leaf, issuers and key in any order, as an OpenBao/Vault Agent template renders:
/// let bundle = IdentitySource::bundle("/etc/tls/identity.pem");
/// assert_eq!(bundle.paths().len(), 1);
/// assert_eq!(pair.paths().len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentitySource {
    /// A PEM certificate chain file and a PEM private key file (PKCS#8, PKCS#1 or SEC1).
    Pair {
        /// The certificate chain (leaf and intermediates, any order).
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
    /// One PEM file holding the certificates and the private key, in any order.
    Bundle {
        /// The bundle file.
        path: PathBuf,
    },
    /// A PKCS#12 (`.p12`/`.pfx`) keystore; its first key entry with its chain.
    Pkcs12 {
        /// The keystore file.
        path: PathBuf,
        /// Where its password comes from.
        password: Password,
    },
}

impl IdentitySource {
    /// A certificate chain file plus a private key file.
    pub fn pair(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        IdentitySource::Pair {
            cert: cert.into(),
            key: key.into(),
        }
    }

    /// One bundle file holding certificates and key.
    pub fn bundle(path: impl Into<PathBuf>) -> Self {
        IdentitySource::Bundle { path: path.into() }
    }

    /// A PKCS#12 keystore with its password.
    pub fn pkcs12(path: impl Into<PathBuf>, password: Password) -> Self {
        IdentitySource::Pkcs12 {
            path: path.into(),
            password,
        }
    }

    /// The files this source reads, in reading order.
    pub fn paths(&self) -> Vec<&Path> {
        match self {
            IdentitySource::Pair { cert, key } => vec![cert.as_path(), key.as_path()],
            IdentitySource::Bundle { path } => vec![path.as_path()],
            IdentitySource::Pkcs12 { path, password } => {
                let mut p = vec![path.as_path()];
                p.extend(password.path());
                p
            }
        }
    }

    /// The file that holds the private key.
    pub(crate) fn key_path(&self) -> &Path {
        match self {
            IdentitySource::Pair { key, .. } => key,
            IdentitySource::Bundle { path } | IdentitySource::Pkcs12 { path, .. } => path,
        }
    }

    /// The file that holds the certificates.
    pub(crate) fn cert_path(&self) -> &Path {
        match self {
            IdentitySource::Pair { cert, .. } => cert,
            IdentitySource::Bundle { path } | IdentitySource::Pkcs12 { path, .. } => path,
        }
    }
}

/// Reads one credential file the way the reloaders do: a regular file (symlinks followed) of at
/// most 256 MiB, read whole and only if it did not change while being read. A named pipe, a
/// device such as `/dev/zero` or a directory is refused with [`Error::Read`](crate::Error::Read) instead of blocking
/// or reading without end. For tools that look at credential files (`hitless inspect`).
pub fn read_credential_file(path: &Path) -> Result<Vec<u8>, crate::Error> {
    let mut snapshot = files::read_stable(&[path])?;
    Ok(snapshot
        .files
        .pop()
        .map(|(_, contents)| contents)
        .unwrap_or_default())
}
