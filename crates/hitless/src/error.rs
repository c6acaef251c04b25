//! The one error type of the library.
//!
//! Every variant names the file it is about and the reason, so that the message alone tells an
//! operator what to fix. Errors are values, never panics: any input, however broken, ends here.
//!
//! Where a reason comes from another error (the operating system, the X.509 or PKCS#12 parser,
//! rustls), that error is kept and returned by [`std::error::Error::source`], so a program can
//! look at it; its text is also part of the message (the message alone must say what to fix),
//! so a printer that walks the whole chain repeats it. Errors of crates that are not part of
//! hitless's public API (x509-parser, p12-keystore, notify) are kept boxed: downcast the source
//! to their type to look inside, e.g. `x509_parser::error::X509Error`. `reason` strings remain
//! only where no error lies underneath: a refusal by policy (an expired CRL signer, a rollback,
//! a chain a peer would refuse).

use std::io;
use std::path::PathBuf;
use std::time::SystemTime;

/// Everything that can go wrong while loading, validating or watching a credential.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file could not be read (missing, permission denied, ...).
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },

    /// The file exists but holds nothing (or only white space).
    #[error("{path}: file is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },

    /// The file is not valid PEM (truncated block, bad base64, ...).
    #[error("{path}: invalid PEM: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: crate::pem::PemError,
    },

    /// A certificate could not be parsed as X.509.
    #[error("{path}: certificate #{index} is not valid X.509: {source}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Position of the certificate in the file, from 1.
        index: usize,
        /// What the parser said (an `x509_parser::error::X509Error`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
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
    #[error("{path}: unusable private key: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What the crypto provider said.
        #[source]
        source: rustls::Error,
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
    #[error("{path}: invalid PKCS#12: {source}")]
    Pkcs12 {
        /// The file.
        path: PathBuf,
        /// What the PKCS#12 reader said (a `p12_keystore::error::Error`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// The PKCS#12 integrity check failed: the password is wrong (or the file is damaged).
    #[error("{path}: PKCS#12 integrity check failed: wrong password, or a damaged file")]
    WrongPassword {
        /// The file.
        path: PathBuf,
    },

    /// The file-system watcher could not be set up (no file is at fault: the operating
    /// system refused, e.g. too many inotify instances).
    #[error("cannot watch for changes: {source}")]
    Watch {
        /// What the watcher said (a `notify::Error`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// A trust bundle holds no usable CA certificate (none in the file, or a PKCS#12 file
    /// that holds an identity rather than trusted certificates).
    #[error("{path}: no usable CA certificate: {reason}")]
    Trust {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A certificate revocation list is refused by policy: its signature does not verify with
    /// the trusted CA of its issuer's name, it would roll back or drop the CRL in force, or the
    /// file holds no CRL. (A CRL that cannot be parsed is [`Error::CrlUnreadable`]; one rustls
    /// refuses is [`Error::CrlRefused`].)
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

    /// A pushed identity was refused by a rule of its provider (given to
    /// [`PushedIdentityBuilder::require`](crate::PushedIdentityBuilder::require)), e.g. a
    /// SPIFFE ID rule.
    #[error("{origin}: refused: {reason}")]
    Refused {
        /// Where the value came from (the publisher's origin).
        origin: PathBuf,
        /// The rule's reason.
        reason: String,
    },

    /// The crypto provider loaded the private key but cannot derive its public key, so the key
    /// cannot be matched to a certificate.
    #[error("{path}: unusable private key: the crypto provider cannot derive its public key")]
    NoPublicKey {
        /// The key (or bundle, or keystore) file.
        path: PathBuf,
    },

    /// rustls refuses a certificate of a trust bundle as a trust anchor.
    #[error("{path}: no usable CA certificate: certificate {index} ({subject}): {source}")]
    TrustAnchor {
        /// The file.
        path: PathBuf,
        /// Position of the certificate among the file's certificates, from 1.
        index: usize,
        /// Its subject.
        subject: String,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },

    /// rustls cannot build certificate verifiers from a trust bundle as a whole (each file
    /// passed on its own). No one file is at fault.
    #[error("cannot build certificate verifiers from the trust bundle: {source}")]
    Verifier {
        /// What rustls said.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// A CRL file cannot be parsed (not DER or PEM of a CRL, truncated, ...).
    #[error("{path}: invalid CRL: {source}")]
    CrlUnreadable {
        /// The file.
        path: PathBuf,
        /// What the parser said (an `x509_parser::error::X509Error`).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    /// rustls refuses a CRL (no nextUpdate, a delta CRL, an unsupported critical extension,
    /// ...).
    #[error("{path}: invalid CRL: {source}")]
    CrlRefused {
        /// The file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },

    /// A PKCS#12 password file is not UTF-8 text.
    #[error("{path}: password file is not UTF-8: {source}")]
    PasswordNotUtf8 {
        /// The password file.
        path: PathBuf,
        /// Where the bytes stop being UTF-8.
        #[source]
        source: std::str::Utf8Error,
    },

    /// The environment variable that should hold a PKCS#12 password is not set (or not
    /// UTF-8).
    #[error("{path}: password environment variable {name}: {source}")]
    PasswordEnv {
        /// The keystore the password is for.
        path: PathBuf,
        /// The variable.
        name: String,
        /// What the environment said.
        #[source]
        source: std::env::VarError,
    },

    /// A builder or loader was given nothing to load: a [`TrustSource`](crate::TrustSource)
    /// without any CA or PKCS#12 file, a set of server identities without a member.
    #[error("nothing to load: {what} has no {missing}")]
    NothingToLoad {
        /// What was being built (`trust source`, `server identities`).
        what: &'static str,
        /// What it lacks (`CA file or PKCS#12 trust store`, `identity`).
        missing: &'static str,
    },

    /// The thread that detects changes could not be started.
    #[error("cannot start the change-detection thread: {source}")]
    DetectorThread {
        /// What the operating system said.
        #[source]
        source: io::Error,
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
            | Error::Trust { path, .. }
            | Error::Crl { path, .. }
            | Error::Chain { path, .. }
            | Error::NoPublicKey { path }
            | Error::TrustAnchor { path, .. }
            | Error::CrlUnreadable { path, .. }
            | Error::CrlRefused { path, .. }
            | Error::PasswordNotUtf8 { path, .. }
            | Error::PasswordEnv { path, .. } => Some(path),
            Error::KeyMismatch { key_path, .. } => Some(key_path),
            Error::NotLoaded { .. }
            | Error::Watch { .. }
            | Error::NoCryptoProvider
            | Error::CryptoProvider { .. }
            | Error::Verifier { .. }
            | Error::NothingToLoad { .. }
            | Error::DetectorThread { .. } => None,
            Error::Refused { origin, .. } => Some(origin),
            #[cfg(feature = "spiffe")]
            Error::Spiffe { endpoint, .. } => Some(endpoint),
        }
    }
}

/// RFC 3339 rendering of a time, UTC, second precision.
pub(crate) fn fmt_time(t: SystemTime) -> String {
    crate::identity::rfc3339(t)
}
