//! PEM as agents really write it.
//!
//! Blocks may come in any order, with CRLF line ends, and run together on one line: a one-line
//! OpenBao/Vault Agent template (`{{ .Data.certificate }}{{ .Data.issuing_ca }}...`) renders
//! `-----END CERTIFICATE----------BEGIN CERTIFICATE-----`, which OpenSSL and Python refuse. That
//! form is unambiguous, so it is split back into lines before parsing and reported to the
//! caller (who logs it once). Parsing itself is `rustls-pki-types`' `PemObject`.
//!
//! [`sections`] is the reader every loader of hitless uses, public so that tools read files
//! exactly as the reloaders do:
//!
//! ```
//! let text = b"-----BEGIN CERTIFICATE-----\r\nMAMCAQE=\r\n-----END CERTIFICATE-----\r\n";
//! let sections = hitless::pem::sections(text)?;
//! assert_eq!(sections.certificates().count(), 1);
//! assert_eq!(sections.iter().next().map(|s| s.label()), Some("CERTIFICATE"));
//! # Ok::<(), hitless::pem::PemError>(())
//! ```

use std::borrow::Cow;
use std::path::Path;

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs1KeyDer,
    PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

use crate::Error;

/// One PEM block, decoded.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum Section {
    /// `CERTIFICATE`.
    Certificate(CertificateDer<'static>),
    /// `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1).
    PrivateKey(PrivateKeyDer<'static>),
    /// `X509 CRL`.
    Crl(CertificateRevocationListDer<'static>),
    /// Another kind that rustls knows (`PUBLIC KEY`, `CERTIFICATE REQUEST`, ...), which no
    /// loader of hitless uses. Blocks of kinds unknown to rustls are skipped.
    Other(SectionKind, Vec<u8>),
}

impl Section {
    /// The PEM label of the block, as in `-----BEGIN <label>-----`.
    pub fn label(&self) -> &'static str {
        match self {
            Section::Certificate(_) => "CERTIFICATE",
            Section::PrivateKey(PrivateKeyDer::Pkcs1(_)) => "RSA PRIVATE KEY",
            Section::PrivateKey(PrivateKeyDer::Sec1(_)) => "EC PRIVATE KEY",
            Section::PrivateKey(_) => "PRIVATE KEY",
            Section::Crl(_) => "X509 CRL",
            Section::Other(kind, _) => match kind {
                SectionKind::PublicKey => "PUBLIC KEY",
                SectionKind::Csr => "CERTIFICATE REQUEST",
                SectionKind::EchConfigList => "ECHCONFIG",
                // Kinds a newer rustls-pki-types may add.
                _ => "(other)",
            },
        }
    }

    /// The DER contents of the block.
    pub fn der(&self) -> &[u8] {
        match self {
            Section::Certificate(c) => c.as_ref(),
            Section::PrivateKey(k) => k.secret_der(),
            Section::Crl(c) => c.as_ref(),
            Section::Other(_, der) => der,
        }
    }
}

/// Every PEM block of a file, in file order.
#[derive(Debug, Default)]
pub struct Sections {
    sections: Vec<Section>,
    run_together: bool,
}

impl Sections {
    /// Every block, in file order.
    pub fn iter(&self) -> std::slice::Iter<'_, Section> {
        self.sections.iter()
    }

    /// The certificates, in file order.
    pub fn certificates(&self) -> impl Iterator<Item = &CertificateDer<'static>> {
        self.sections.iter().filter_map(|s| match s {
            Section::Certificate(c) => Some(c),
            _ => None,
        })
    }

    /// The private keys, in file order.
    pub fn private_keys(&self) -> impl Iterator<Item = &PrivateKeyDer<'static>> {
        self.sections.iter().filter_map(|s| match s {
            Section::PrivateKey(k) => Some(k),
            _ => None,
        })
    }

    /// The CRLs, in file order.
    pub fn crls(&self) -> impl Iterator<Item = &CertificateRevocationListDer<'static>> {
        self.sections.iter().filter_map(|s| match s {
            Section::Crl(c) => Some(c),
            _ => None,
        })
    }

    /// Whether blocks were run together on one line (`-----END ...----------BEGIN ...`), as
    /// a template without newlines writes them: read correctly here, refused by OpenSSL.
    pub fn run_together(&self) -> bool {
        self.run_together
    }

    /// How many blocks were read.
    pub fn len(&self) -> usize {
        self.sections.len()
    }

    /// Whether no block was read.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }
}

impl IntoIterator for Sections {
    type Item = Section;
    type IntoIter = std::vec::IntoIter<Section>;

    fn into_iter(self) -> Self::IntoIter {
        self.sections.into_iter()
    }
}

impl<'a> IntoIterator for &'a Sections {
    type Item = &'a Section;
    type IntoIter = std::slice::Iter<'a, Section>;

    fn into_iter(self) -> Self::IntoIter {
        self.sections.iter()
    }
}

/// Why bytes are not PEM hitless can use.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// Nothing but white space.
    #[error("file is empty")]
    Empty,
    /// No `-----BEGIN` line at all.
    #[error("no PEM block found (no \"-----BEGIN\" line)")]
    NoBlock,
    /// An `ENCRYPTED PRIVATE KEY` block: hitless reads unencrypted PEM keys and
    /// password-protected PKCS#12 files.
    #[error("the private key is encrypted (ENCRYPTED PRIVATE KEY); decrypt it or use PKCS#12 with a password")]
    EncryptedKey,
    /// The text ends inside a `-----BEGIN` line (a writer that has not finished).
    #[error("the file ends inside a \"-----BEGIN\" line (truncated?)")]
    Truncated,
    /// A block is malformed: no END line, a bad BEGIN line, bad base64.
    #[error("{}", readable(.0))]
    Malformed(#[source] rustls::pki_types::pem::Error),
}

const BEGIN: &[u8] = b"-----BEGIN ";
const END: &[u8] = b"-----END ";

/// Reads every PEM block of `bytes`, in order: any order of kinds, CRLF or LF line ends, blocks
/// run together on one line (see [`Sections::run_together`]), text between blocks. Refuses
/// white space only, text without any block, an encrypted private key, a malformed block, and
/// text that ends inside a `-----BEGIN` line.
pub fn sections(bytes: &[u8]) -> Result<Sections, PemError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(PemError::Empty);
    }
    if !contains(bytes, BEGIN) {
        return Err(PemError::NoBlock);
    }
    if contains(bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(PemError::EncryptedKey);
    }
    let (text, run_together) = split_run_together(bytes);
    let mut out = Sections {
        run_together,
        ..Sections::default()
    };
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(&text) {
        let (kind, der) = item.map_err(PemError::Malformed)?;
        out.sections.push(match kind {
            SectionKind::Certificate => Section::Certificate(CertificateDer::from(der)),
            SectionKind::PrivateKey => {
                Section::PrivateKey(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)))
            }
            SectionKind::RsaPrivateKey => {
                Section::PrivateKey(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)))
            }
            SectionKind::EcPrivateKey => {
                Section::PrivateKey(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)))
            }
            SectionKind::Crl => Section::Crl(CertificateRevocationListDer::from(der)),
            other => Section::Other(other, der),
        });
    }
    if ends_inside_a_marker(&text) {
        return Err(PemError::Truncated);
    }
    Ok(out)
}

/// [`sections`] of `bytes` read from `path`, with the error naming the file:
/// [`Error::Empty`], [`Error::EncryptedKey`], or [`Error::Pem`] with the [`PemError`] as its
/// source.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Sections, Error> {
    sections(bytes).map_err(|e| file_error(path, e))
}

/// The library's error for a PEM problem of `path`: empty and encrypted-key files have their
/// own variants.
fn file_error(path: &Path, error: PemError) -> Error {
    let path = path.to_owned();
    match error {
        PemError::Empty => Error::Empty { path },
        PemError::EncryptedKey => Error::EncryptedKey { path },
        source => Error::Pem { path, source },
    }
}

/// Whether what follows the last complete line is the start of a PEM marker: a file cut by a
/// writer that has not finished (the PEM parser would skip it as text between blocks).
fn ends_inside_a_marker(text: &[u8]) -> bool {
    let last_line = match text.iter().rposition(|b| *b == b'\n' || *b == b'\r') {
        Some(i) => &text[i + 1..],
        None => text,
    };
    let trimmed = last_line.trim_ascii();
    !trimmed.is_empty() && (BEGIN.starts_with(trimmed) || trimmed.starts_with(BEGIN))
}

/// The PEM parser's error in words (its own carry raw bytes).
fn readable(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match error {
        E::MissingSectionEnd { end_marker } => format!(
            "no \"-----END {}-----\" line (file truncated?)",
            String::from_utf8_lossy(end_marker)
        ),
        E::IllegalSectionStart { line } => format!(
            "malformed \"-----BEGIN\" line {:?}",
            String::from_utf8_lossy(line)
        ),
        E::Base64Decode(detail) => format!("invalid base64 inside a block: {detail}"),
        other => other.to_string(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Puts every `-----BEGIN ` and `-----END ` marker at the start of a line.
fn split_run_together(bytes: &[u8]) -> (Cow<'_, [u8]>, bool) {
    let needs_split = |i: usize| {
        i > 0
            && bytes[i - 1] != b'\n'
            && bytes[i - 1] != b'\r'
            && (bytes[i..].starts_with(BEGIN) || bytes[i..].starts_with(END))
    };
    if !(0..bytes.len()).any(needs_split) {
        return (Cow::Borrowed(bytes), false);
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    for (i, b) in bytes.iter().enumerate() {
        if needs_split(i) {
            out.push(b'\n');
        }
        out.push(*b);
    }
    (Cow::Owned(out), true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT_A: &str = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMAMCAQI=\n-----END PRIVATE KEY-----";
    const EC_KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMAMCAQM=\n-----END EC PRIVATE KEY-----";
    const CRL: &str = "-----BEGIN X509 CRL-----\nMAMCAQQ=\n-----END X509 CRL-----";
    const CSR: &str =
        "-----BEGIN CERTIFICATE REQUEST-----\nMAMCAQU=\n-----END CERTIFICATE REQUEST-----";

    #[test]
    fn run_together_blocks_are_split() {
        let joined = format!("{CERT_A}{CERT_A}{KEY}");
        let s = sections(joined.as_bytes()).unwrap();
        assert!(s.run_together());
        assert_eq!(s.certificates().count(), 2);
        assert_eq!(s.private_keys().count(), 1);
        let labels: Vec<&str> = s.iter().map(Section::label).collect();
        assert_eq!(labels, ["CERTIFICATE", "CERTIFICATE", "PRIVATE KEY"]);
    }

    #[test]
    fn crlf_and_order_do_not_matter() {
        let text = format!("{KEY}\r\n{CERT_A}\r\n").replace('\n', "\r\n");
        let s = sections(text.as_bytes()).unwrap();
        assert!(!s.run_together());
        assert_eq!((s.certificates().count(), s.private_keys().count()), (1, 1));
        assert_eq!(
            s.certificates().next().unwrap().as_ref(),
            [0x30, 0x03, 0x02, 0x01, 0x01]
        );
    }

    #[test]
    fn mixed_sections_keep_file_order_labels_and_der() {
        let text = format!("comment line\n{CRL}\n{EC_KEY}\ntext\n{CSR}\n{CERT_A}\n");
        let s = sections(text.as_bytes()).unwrap();
        let found: Vec<(&str, Vec<u8>)> = s.iter().map(|x| (x.label(), x.der().to_vec())).collect();
        assert_eq!(
            found,
            [
                ("X509 CRL", vec![0x30, 3, 2, 1, 4]),
                ("EC PRIVATE KEY", vec![0x30, 3, 2, 1, 3]),
                ("CERTIFICATE REQUEST", vec![0x30, 3, 2, 1, 5]),
                ("CERTIFICATE", vec![0x30, 3, 2, 1, 1]),
            ]
        );
        assert_eq!(s.crls().count(), 1);
        assert!(matches!(
            s.private_keys().next(),
            Some(PrivateKeyDer::Sec1(_))
        ));
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn garbage_is_refused_with_the_reason() {
        assert!(matches!(sections(b" \r\n\t"), Err(PemError::Empty)));
        assert!(matches!(
            sections(b"\x00\x01garbage"),
            Err(PemError::NoBlock)
        ));
        let bad_base64 = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let e = sections(bad_base64.as_bytes()).unwrap_err();
        assert!(matches!(e, PemError::Malformed(_)), "{e:?}");
        assert!(e.to_string().contains("invalid base64"), "{e}");
        let no_end = &CERT_A[..CERT_A.len() - 10];
        let e = sections(no_end.as_bytes()).unwrap_err();
        assert!(
            e.to_string()
                .contains("no \"-----END CERTIFICATE-----\" line"),
            "{e}"
        );
        // The underlying parser error is the source.
        let inner = std::error::Error::source(&e).expect("a source");
        assert!(inner
            .downcast_ref::<rustls::pki_types::pem::Error>()
            .is_some());
        let cut = format!("{CERT_A}\n-----BEG");
        assert!(matches!(sections(cut.as_bytes()), Err(PemError::Truncated)));
    }

    #[test]
    fn errors_name_the_file() {
        let e = parse(Path::new("/a/empty.pem"), b" \n").unwrap_err();
        assert!(matches!(e, Error::Empty { .. }));
        assert!(e.to_string().contains("/a/empty.pem"));
        let e = parse(Path::new("/a/garbage"), b"\x00\x01garbage").unwrap_err();
        assert!(e.to_string().contains("/a/garbage"), "{e}");
        let truncated = &CERT_A[..CERT_A.len() - 10];
        let e = parse(Path::new("/a/trunc"), truncated.as_bytes()).unwrap_err();
        assert!(matches!(e, Error::Pem { .. }), "{e}");
        let enc = "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAMCAQI=\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let e = parse(Path::new("/a/enc"), enc.as_bytes()).unwrap_err();
        assert!(matches!(e, Error::EncryptedKey { .. }));
    }
}
