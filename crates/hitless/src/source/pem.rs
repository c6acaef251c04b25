//! PEM as agents really write it.
//!
//! Blocks may come in any order, with CRLF line ends, and run together on one line: a one-line
//! OpenBao/Vault Agent template (`{{ .Data.certificate }}{{ .Data.issuing_ca }}...`) renders
//! `-----END CERTIFICATE----------BEGIN CERTIFICATE-----`, which OpenSSL and Python refuse. That
//! form is unambiguous, so it is split back into lines before parsing and reported to the
//! caller (who logs it once). Parsing itself is `rustls-pki-types`' `PemObject`.

use std::borrow::Cow;
use std::path::Path;

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, PrivatePkcs1KeyDer,
    PrivatePkcs8KeyDer, PrivateSec1KeyDer,
};

use crate::Error;

/// The sections of one PEM file that hitless uses.
#[derive(Debug, Default)]
pub(crate) struct Sections {
    pub(crate) certs: Vec<CertificateDer<'static>>,
    pub(crate) keys: Vec<PrivateKeyDer<'static>>,
    pub(crate) crls: Vec<CertificateRevocationListDer<'static>>,
    /// PEM blocks were run together on one line (a template without newlines).
    pub(crate) run_together: bool,
}

const BEGIN: &[u8] = b"-----BEGIN ";
const END: &[u8] = b"-----END ";

/// Parses every PEM block of `bytes` (read from `path`, named in errors).
pub(crate) fn parse(path: &Path, bytes: &[u8]) -> Result<Sections, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Empty {
            path: path.to_owned(),
        });
    }
    if !contains(bytes, BEGIN) {
        return Err(Error::Pem {
            path: path.to_owned(),
            reason: "no PEM block found (no \"-----BEGIN\" line)".into(),
        });
    }
    if contains(bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(Error::EncryptedKey {
            path: path.to_owned(),
        });
    }
    let (text, run_together) = split_run_together(bytes);
    let mut out = Sections {
        run_together,
        ..Sections::default()
    };
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(&text) {
        let (kind, der) = item.map_err(|e| Error::Pem {
            path: path.to_owned(),
            reason: readable(&e),
        })?;
        match kind {
            SectionKind::Certificate => out.certs.push(CertificateDer::from(der)),
            SectionKind::PrivateKey => out
                .keys
                .push(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der))),
            SectionKind::RsaPrivateKey => out
                .keys
                .push(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der))),
            SectionKind::EcPrivateKey => out
                .keys
                .push(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der))),
            SectionKind::Crl => out.crls.push(CertificateRevocationListDer::from(der)),
            _ => {}
        }
    }
    if ends_inside_a_marker(&text) {
        return Err(Error::Pem {
            path: path.to_owned(),
            reason: "the file ends inside a \"-----BEGIN\" line (truncated?)".into(),
        });
    }
    Ok(out)
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

    #[test]
    fn run_together_blocks_are_split() {
        let joined = format!("{CERT_A}{CERT_A}{KEY}");
        let s = parse(Path::new("x.pem"), joined.as_bytes()).unwrap();
        assert!(s.run_together);
        assert_eq!(s.certs.len(), 2);
        assert_eq!(s.keys.len(), 1);
    }

    #[test]
    fn crlf_and_order_do_not_matter() {
        let text = format!("{KEY}\r\n{CERT_A}\r\n").replace('\n', "\r\n");
        let s = parse(Path::new("x.pem"), text.as_bytes()).unwrap();
        assert!(!s.run_together);
        assert_eq!((s.certs.len(), s.keys.len()), (1, 1));
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
