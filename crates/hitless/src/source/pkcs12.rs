//! PKCS#12 (`.p12`/`.pfx`) identities, as OpenSSL 3 (AES-256-CBC + PBKDF2, or `-legacy`
//! RC2/3DES) and Java's `keytool -storetype PKCS12` write them, through the pure-Rust
//! `p12-keystore` crate.
//!
//! The password comes from a file or an environment variable, never only from a command line
//! (where every user of the machine can read it in the process list). A password file is read
//! again on every reload, so a rotated password that arrives with its keystore is picked up;
//! one trailing newline is ignored.
//!
//! JKS (Java's old proprietary format) is not read: no well-kept Rust crate reads it. Convert it
//! once with `keytool -importkeystore -srckeystore app.jks -srcstoretype JKS -destkeystore
//! app.p12 -deststoretype PKCS12`.

use std::path::{Path, PathBuf};

use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12ImportPolicy};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::source::files;
use crate::Error;

/// Where the password of a PKCS#12 file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Password {
    /// No password (an empty one).
    None,
    /// The contents of this file (one trailing newline ignored).
    File(PathBuf),
    /// The value of this environment variable.
    Env(String),
}

impl Password {
    /// The file to watch along with the keystore, if any.
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Password::File(p) => Some(p),
            _ => None,
        }
    }

    pub(crate) fn resolve(
        &self,
        keystore: &Path,
        files: &files::Snapshot,
    ) -> Result<String, Error> {
        match self {
            Password::None => Ok(String::new()),
            Password::File(p) => {
                let bytes = files.contents(p);
                let text = std::str::from_utf8(bytes).map_err(|_| Error::Pkcs12 {
                    path: p.clone(),
                    reason: "password file is not UTF-8".into(),
                })?;
                let text = text.strip_suffix('\n').unwrap_or(text);
                Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
            }
            Password::Env(name) => std::env::var(name).map_err(|_| Error::Pkcs12 {
                path: keystore.to_owned(),
                reason: format!("password environment variable {name} is not set"),
            }),
        }
    }
}

fn open(path: &Path, data: &[u8], password: &str) -> Result<KeyStore, Error> {
    if data.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }
    KeyStore::from_pkcs12(data, password, Pkcs12ImportPolicy::Strict).map_err(|e| match e {
        p12_keystore::error::Error::MacError(_) => Error::WrongPassword {
            path: path.to_owned(),
        },
        other => Error::Pkcs12 {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    })
}

/// The key and certificates of the first key entry of a PKCS#12 file.
pub(crate) fn identity(
    path: &Path,
    data: &[u8],
    password: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let store = open(path, data, password)?;
    let (_, chain) = store
        .private_key_chain()
        .ok_or_else(|| Error::NoPrivateKey {
            path: path.to_owned(),
        })?;
    let certs = chain
        .certs()
        .iter()
        .map(|c| CertificateDer::from(c.as_der().to_vec()))
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec()));
    Ok((certs, key))
}

/// Every certificate of a PKCS#12 trust store (trusted-certificate entries and chains).
pub(crate) fn certificates(
    path: &Path,
    data: &[u8],
    password: &str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let store = open(path, data, password)?;
    let mut out = Vec::new();
    for (_, entry) in store.entries() {
        match entry {
            KeyStoreEntry::Certificate(c) => out.push(CertificateDer::from(c.as_der().to_vec())),
            KeyStoreEntry::PrivateKeyChain(chain) => out.extend(
                chain
                    .certs()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_der().to_vec())),
            ),
            _ => {}
        }
    }
    Ok(out)
}
