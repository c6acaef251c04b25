//! PKCS#12 (`.p12`/`.pfx`) identities, as OpenSSL 3 (AES-256-CBC + PBKDF2, or `-legacy`
//! RC2/3DES) and Java's `keytool -storetype PKCS12` write them, through the pure-Rust
//! `p12-keystore` crate.
//!
//! The password comes from a file or an environment variable, never only from a command line
//! (where every user of the machine can read it in the process list). A password file is read
//! again on every reload, so a rotated password that arrives with its keystore is picked up;
//! one trailing newline is ignored.
//!
//! As a **trust store**, a PKCS#12 file contributes its trusted-certificate entries (Java's
//! `trustedCertEntry`, marked with Oracle's trusted-key-usage attribute) and its certificate bags
//! that belong to no private key, such as what `openssl pkcs12 -export -nokeys` writes. The
//! certificates of a private-key entry are never trust anchors: its leaf (a bag with a
//! localKeyId, or whose public key is that of a private key in the file) and the chain from that
//! leaf up to its root (its issuers, found by name among the bags not marked trusted, as
//! `p12-keystore` links a private-key entry). Trusting a client's own `.p12` would otherwise let
//! whoever holds that client's key mint accepted certificates; to trust a CA, export it alone.
//!
//! JKS (Java's old proprietary format) is not read: no well-kept Rust crate reads it. Convert it
//! once with `keytool -importkeystore -srckeystore app.jks -srcstoretype JKS -destkeystore
//! app.p12 -deststoretype PKCS12`.

use std::path::{Path, PathBuf};

use p12_keystore::{KeyStore, Pkcs12Archive, Pkcs12ImportPolicy};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

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
            Password::File(p) => decode_password_file(p, files.contents(p)),
            Password::Env(name) => env_password(keystore, name),
        }
    }
}

/// Everything a PKCS#12 file holds, for tools that list it (`hitless inspect`): what a
/// loader uses is decided by [`Identity::load`](crate::Identity::load) (the first key entry
/// with its chain) and [`Trust::load`](crate::Trust::load) (the trusted certificates).
#[derive(Debug)]
#[non_exhaustive]
pub struct Contents {
    /// Every certificate bag, in file order.
    pub certificates: Vec<CertificateDer<'static>>,
    /// Every private key (PKCS#8), in file order.
    pub private_keys: Vec<PrivateKeyDer<'static>>,
}

/// Opens the PKCS#12 file `path` (its `bytes` already read) with the password of `password`,
/// read as the loaders read it (a password file through the same bounded reader, one trailing
/// newline ignored). Errors: [`Error::Empty`], [`Error::WrongPassword`] (the integrity check
/// failed), [`Error::Pkcs12`] (with the reader's error as source), [`Error::PasswordNotUtf8`],
/// [`Error::PasswordEnv`], [`Error::Read`] (the password file).
pub fn contents(path: &Path, bytes: &[u8], password: &Password) -> Result<Contents, Error> {
    let password = match password {
        Password::None => String::new(),
        Password::File(file) => decode_password_file(file, &crate::read_credential_file(file)?)?,
        Password::Env(name) => env_password(path, name)?,
    };
    if bytes.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }
    let archive =
        Pkcs12Archive::from_pkcs12(bytes, &password).map_err(|e| pkcs12_error(path, e))?;
    Ok(Contents {
        certificates: archive
            .certs
            .iter()
            .map(|bag| CertificateDer::from(bag.cert.as_der().to_vec()))
            .collect(),
        private_keys: archive
            .keys
            .iter()
            .map(|bag| PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(bag.key.as_der().to_vec())))
            .collect(),
    })
}

/// The password in the environment variable `name`, for `keystore`.
fn env_password(keystore: &Path, name: &str) -> Result<String, Error> {
    std::env::var(name).map_err(|source| Error::PasswordEnv {
        path: keystore.to_owned(),
        name: name.to_owned(),
        source,
    })
}

/// The password in a password file: UTF-8, one trailing newline (LF or CRLF) ignored.
fn decode_password_file(path: &Path, bytes: &[u8]) -> Result<String, Error> {
    let text = std::str::from_utf8(bytes).map_err(|source| Error::PasswordNotUtf8 {
        path: path.to_owned(),
        source,
    })?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

fn pkcs12_error(path: &Path, e: p12_keystore::error::Error) -> Error {
    match e {
        p12_keystore::error::Error::MacError(_) => Error::WrongPassword {
            path: path.to_owned(),
        },
        other => Error::Pkcs12 {
            path: path.to_owned(),
            source: Box::new(other),
        },
    }
}

fn open(path: &Path, data: &[u8], password: &str) -> Result<KeyStore, Error> {
    if data.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }
    KeyStore::from_pkcs12(data, password, Pkcs12ImportPolicy::Strict)
        .map_err(|e| pkcs12_error(path, e))
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

/// The trust anchors of a PKCS#12 trust store (see the module documentation): trusted-certificate
/// entries and certificate bags that belong to no private key. `provider` derives the public
/// keys of the file's private keys, to recognise their certificates even without localKeyId.
pub(crate) fn trust_anchors(
    path: &Path,
    data: &[u8],
    password: &str,
    provider: &CryptoProvider,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    if data.is_empty() {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }
    let archive = Pkcs12Archive::from_pkcs12(data, password).map_err(|e| pkcs12_error(path, e))?;
    let key_ids: Vec<&[u8]> = archive
        .keys
        .iter()
        .filter_map(|k| k.local_key_id.as_ref().map(|id| id.as_ref()))
        .collect();
    // A key the provider cannot load (an algorithm rustls does not know) is matched by
    // localKeyId only.
    let public_keys: Vec<Vec<u8>> = archive
        .keys
        .iter()
        .filter_map(|k| {
            let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(k.key.as_der().to_vec()));
            let key = provider.key_provider.load_private_key(der).ok()?;
            key.public_key().map(|spki| spki.as_ref().to_vec())
        })
        .collect();

    struct Bag<'a> {
        der: &'a [u8],
        subject: Vec<u8>,
        issuer: Vec<u8>,
        subject_text: String,
        trusted: bool,
        /// Part of a private-key entry: its leaf or a certificate of the chain under it.
        keyed: bool,
    }
    let mut bags = Vec::with_capacity(archive.certs.len());
    for (i, bag) in archive.certs.iter().enumerate() {
        let der = bag.cert.as_der();
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| crate::identity::certificate_error(path, i + 1, e))?;
        let spki = cert.public_key().raw;
        let leaf_of_a_key = bag
            .local_key_id
            .as_deref()
            .is_some_and(|id| key_ids.contains(&id))
            || public_keys.iter().any(|k| k.as_slice() == spki);
        bags.push(Bag {
            der,
            subject: cert.subject().as_raw().to_vec(),
            issuer: cert.issuer().as_raw().to_vec(),
            subject_text: cert.subject().to_string(),
            trusted: bag.trusted,
            // A bag with a localKeyId was attached to a key, even if the key is not here.
            keyed: leaf_of_a_key || (bag.local_key_id.is_some() && !bag.trusted),
        });
    }
    // The chain under each leaf of a key: issuers by name among the untrusted bags, as
    // p12-keystore links a private-key entry's chain. Bounded by the number of bags.
    let leaves: Vec<usize> = (0..bags.len()).filter(|&i| bags[i].keyed).collect();
    for leaf in leaves {
        let mut current = leaf;
        for _ in 0..bags.len() {
            if bags[current].subject == bags[current].issuer {
                break;
            }
            let issuer = (0..bags.len()).find(|&j| {
                j != current && !bags[j].trusted && bags[j].subject == bags[current].issuer
            });
            match issuer {
                Some(j) if !bags[j].keyed => {
                    bags[j].keyed = true;
                    current = j;
                }
                _ => break,
            }
        }
    }
    let mut anchors = Vec::new();
    let mut skipped = Vec::new();
    for bag in &bags {
        if bag.keyed {
            skipped.push(bag.subject_text.as_str());
        } else {
            anchors.push(CertificateDer::from(bag.der.to_vec()));
        }
    }
    if anchors.is_empty() {
        return Err(Error::Trust {
            path: path.to_owned(),
            reason: if skipped.is_empty() {
                "no certificate in the PKCS#12 trust store".into()
            } else {
                format!(
                    "no trust anchor in the PKCS#12 file: it holds a private key and its \
                     certificates ({}), an identity rather than a trust store, and the \
                     certificates of a private-key entry are never trusted; export the CA \
                     certificates alone (`openssl pkcs12 -export -nokeys`, or `keytool \
                     -importcert` into a trust store)",
                    skipped.join("; ")
                )
            },
        });
    }
    for subject in skipped {
        tracing::warn!(
            file = %path.display(),
            subject,
            "certificate of a private-key entry in a PKCS#12 trust store: not a trust anchor"
        );
    }
    Ok(anchors)
}
