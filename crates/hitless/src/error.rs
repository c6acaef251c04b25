//! The one error type of the library.
//!
//! Every variant names the file it is about and the reason, so that the message alone tells an
//! operator what to fix. Errors are values, never panics: any input, however broken, ends here.

use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

/// Everything that can go wrong while loading, validating or watching a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read (missing, permission denied, ...).
    #[error("{path}: cannot read: {error}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        error: io::Error,
    },

    /// The file exists but holds nothing (or only white space).
    #[error("{path}: file is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },

    /// The file is not valid PEM (truncated block, bad base64, ...).
    #[error("{path}: invalid PEM: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate could not be parsed as X.509.
    #[error("{path}: certificate #{index} is not valid X.509: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Position of the certificate in the file, from 1.
        index: usize,
        /// What the parser said.
        reason: String,
    },

    /// No certificate was found where one was needed.
    #[error("{path}: no certificate found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },

    /// No private key was found where one was needed.
    #[error("{path}: no private key found")]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },

    /// More than one private key was found; which one to use would be a guess.
    #[error("{path}: {count} private keys found, expected exactly one")]
    MultipleKeys {
        /// The file.
        path: PathBuf,
        /// How many keys were found.
        count: usize,
    },

    /// The private key is encrypted; hitless reads unencrypted PEM keys and
    /// password-protected PKCS#12 files.
    #[error("{path}: the private key is encrypted (ENCRYPTED PRIVATE KEY); decrypt it or use PKCS#12 with a password")]
    EncryptedKey {
        /// The file.
        path: PathBuf,
    },

    /// The private key could not be used (unsupported algorithm or curve, malformed).
    #[error("{path}: unusable private key: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        reason: String,
    },

    /// No certificate in the chain matches the private key.
    #[error("{key_path}: private key matches no certificate in {cert_path}")]
    KeyMismatch {
        /// The certificate (or bundle) file.
        cert_path: PathBuf,
        /// The key (or bundle) file.
        key_path: PathBuf,
    },

    /// The leaf certificate has expired.
    #[error("{path}: certificate expired at {}", fmt_time(*not_after))]
    Expired {
        /// The file.
        path: PathBuf,
        /// When the certificate stopped being valid.
        not_after: SystemTime,
    },

    /// The leaf certificate is not valid yet.
    #[error("{path}: certificate not valid before {}", fmt_time(*not_before))]
    NotYetValid {
        /// The file.
        path: PathBuf,
        /// When the certificate becomes valid.
        not_before: SystemTime,
    },

    /// A file changed while it was being read; it is read again after the quiet period.
    #[error("{path}: changed while being read")]
    Unstable {
        /// The file.
        path: PathBuf,
    },

    /// A PKCS#12 file could not be read (corrupt, unsupported algorithm, ...).
    #[error("{path}: invalid PKCS#12: {reason}")]
    Pkcs12 {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The PKCS#12 integrity check failed: the password is wrong (or the file is damaged).
    #[error("{path}: PKCS#12 integrity check failed: wrong password, or a damaged file")]
    WrongPassword {
        /// The file.
        path: PathBuf,
    },

    /// The file-system watcher could not be set up.
    #[error("{path}: cannot watch for changes: {reason}")]
    Watch {
        /// The directory that could not be watched.
        path: PathBuf,
        /// What the watcher said.
        reason: String,
    },

    /// A trust bundle holds no usable CA certificate.
    #[error("{path}: no usable CA certificate: {reason}")]
    Trust {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A certificate revocation list could not be used.
    #[error("{path}: invalid CRL: {reason}")]
    Crl {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The credential has no good value yet (nothing has loaded successfully).
    #[error("{name}: no credential loaded yet")]
    NotLoaded {
        /// The credential's name.
        name: String,
    },

    /// The certificate chain of an identity is not one a peer accepts: a certificate not signed
    /// by the next one, an intermediate that is not a CA or is out of its validity period, an
    /// extendedKeyUsage that does not allow the identity's role.
    #[error("{path}: invalid certificate chain: {reason}")]
    Chain {
        /// The certificate (or bundle, or keystore) file.
        path: PathBuf,
        /// Which certificate breaks which rule.
        reason: String,
    },

    /// No rustls crypto provider to use: none was given to the builder
    /// (`crypto_provider(..)`), none is installed process-wide
    /// (`rustls::crypto::CryptoProvider::install_default`), and the crate was built with
    /// neither of its `aws-lc-rs` and `ring` features.
    #[error(
        "no rustls crypto provider: give one to the builder (crypto_provider), install a \
         process default (CryptoProvider::install_default), or enable the feature `aws-lc-rs` \
         or `ring` of hitless"
    )]
    NoCryptoProvider,

    /// The crypto provider cannot make a TLS configuration with the protocol versions asked
    /// for (no cipher suite or key exchange group of the provider fits them).
    #[error("the crypto provider cannot make a TLS configuration: {source}")]
    CryptoProvider {
        /// What rustls found wrong.
        #[source]
        source: rustls::Error,
    },

    /// The SPIFFE Workload API (feature `spiffe`): an update refused by the X.509-SVID rules,
    /// no endpoint configured, or no valid SVID received in time.
    #[cfg(feature = "spiffe")]
    #[error("{}: {source}", endpoint.display())]
    Spiffe {
        /// The Workload API endpoint (`unix:///path/to/agent.sock`).
        endpoint: PathBuf,
        /// What went wrong.
        #[source]
        source: crate::SpiffeError,
    },
}

impl Error {
    /// The file this error is about.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Read { path, .. }
            | Error::Empty { path }
            | Error::Pem { path, .. }
            | Error::Certificate { path, .. }
            | Error::NoCertificate { path }
            | Error::NoPrivateKey { path }
            | Error::MultipleKeys { path, .. }
            | Error::EncryptedKey { path }
            | Error::Key { path, .. }
            | Error::Expired { path, .. }
            | Error::NotYetValid { path, .. }
            | Error::Unstable { path }
            | Error::Pkcs12 { path, .. }
            | Error::WrongPassword { path }
            | Error::Watch { path, .. }
            | Error::Trust { path, .. }
            | Error::Crl { path, .. }
            | Error::Chain { path, .. } => Some(path),
            Error::KeyMismatch { key_path, .. } => Some(key_path),
            Error::NotLoaded { .. } => None,
            Error::NoCryptoProvider | Error::CryptoProvider { .. } => None,
            #[cfg(feature = "spiffe")]
            Error::Spiffe { endpoint, .. } => Some(endpoint),
        }
    }
}

/// RFC 3339 rendering of a time, UTC, second precision.
pub(crate) fn fmt_time(t: SystemTime) -> String {
    crate::identity::rfc3339(t)
}
