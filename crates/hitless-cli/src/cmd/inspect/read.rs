//! Recognising a credential file and taking it apart, with the library's readers: what kind of
//! file it is (PEM, PKCS#12, DER certificate, DER CRL) and the certificates, keys and CRLs it
//! holds, in file order. Nothing is judged here beyond "can it be read at all".

use std::path::Path;

use hitless::pem::Section;
use hitless::{CertInfo, CrlInfo, Password};
use rustls::pki_types::PrivateKeyDer;

use super::{Args, Contents, Kind, Report};

/// Recognises the file and extracts its certificates, keys and CRLs (`None`: unusable, with
/// the reason in `report.errors`).
pub(super) fn contents(
    file: &Path,
    bytes: &[u8],
    args: &Args,
    report: &mut Report,
) -> Option<Contents> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        report.errors.push("file is empty".into());
        return None;
    }
    let extension = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let is_pem = bytes.windows(11).any(|w| w == b"-----BEGIN ");
    if matches!(extension.as_deref(), Some("p12" | "pfx")) || (!is_pem && looks_like_pfx(bytes)) {
        report.kind = Some(Kind::Pkcs12);
        return pkcs12(file, bytes, args, report);
    }
    if is_pem {
        report.kind = Some(Kind::Pem);
        return pem(file, bytes, report);
    }
    if CertInfo::from_der(bytes).is_ok() {
        report.kind = Some(Kind::DerCertificate);
        return Some(Contents {
            certs: vec![bytes.to_vec().into()],
            ..Contents::default()
        });
    }
    if CrlInfo::from_der(file, bytes).is_ok() {
        report.kind = Some(Kind::DerCrl);
        return Some(Contents {
            crls: vec![bytes.to_vec()],
            ..Contents::default()
        });
    }
    report.errors.push(
        "not a credential file: no PEM block (\"-----BEGIN\" line), and not a PKCS#12 \
         keystore, a DER certificate or a DER CRL"
            .into(),
    );
    None
}

/// Every block of a PEM file, read by the library's PEM reader.
fn pem(file: &Path, bytes: &[u8], report: &mut Report) -> Option<Contents> {
    let sections = match hitless::pem::parse(file, bytes) {
        Ok(sections) => sections,
        Err(e) => {
            report.errors.push(e.to_string());
            return None;
        }
    };
    if sections.run_together() {
        report.warnings.push(
            "PEM blocks are run together on one line (a template without newlines): hitless \
             reads them, but OpenSSL and most other tools refuse this file"
                .into(),
        );
    }
    let mut contents = Contents::default();
    for section in sections {
        match section {
            Section::Certificate(der) => contents.certs.push(der),
            Section::Crl(der) => contents.crls.push(der.as_ref().to_vec()),
            Section::PrivateKey(key) => contents.keys.push((file.to_owned(), key)),
            other => report.warnings.push(format!(
                "ignored a PEM block of another kind ({})",
                other.label()
            )),
        }
    }
    if contents.certs.is_empty() && contents.crls.is_empty() {
        let keys = contents.keys.len();
        report.errors.push(if keys > 0 {
            format!(
                "no certificate found, only {keys} private key(s): inspect the certificate \
                 file with --key {}",
                file.display()
            )
        } else {
            "no certificate, private key or CRL found in the PEM blocks".into()
        });
        return None;
    }
    if !contents.keys.is_empty() {
        contents.key_file = Some(file.to_owned());
    }
    Some(contents)
}

/// The password the flags name, as `serve` takes it.
pub(super) fn password(args: &Args) -> Password {
    match (&args.password_file, &args.password_env) {
        (Some(path), _) => Password::File(path.clone()),
        (None, Some(name)) => Password::Env(name.clone()),
        (None, None) => Password::None,
    }
}

/// Every certificate and key of a PKCS#12 file, opened by the library with the password the
/// flags name.
fn pkcs12(file: &Path, bytes: &[u8], args: &Args, report: &mut Report) -> Option<Contents> {
    let opened = match hitless::pkcs12::contents(file, bytes, &password(args)) {
        Ok(opened) => opened,
        Err(hitless::Error::WrongPassword { .. }) => {
            let hint = if args.password_file.is_none() && args.password_env.is_none() {
                " (no password given: use --password-file or --password-env)"
            } else {
                ""
            };
            report.errors.push(format!(
                "wrong PKCS#12 password (integrity check failed){hint}"
            ));
            return None;
        }
        Err(e) => {
            report.errors.push(e.to_string());
            return None;
        }
    };
    if opened.certificates.is_empty() {
        report
            .errors
            .push("no certificate in the PKCS#12 keystore".into());
        return None;
    }
    Some(Contents {
        certs: opened.certificates,
        keys: opened
            .private_keys
            .into_iter()
            .map(|key| (file.to_owned(), key))
            .collect(),
        ..Contents::default()
    })
}

/// Reads `--key`: exactly one PEM private key.
pub(super) fn key_file(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = hitless::read_credential_file(path).map_err(|e| e.to_string())?;
    let sections = hitless::pem::parse(path, &bytes).map_err(|e| e.to_string())?;
    let mut keys: Vec<PrivateKeyDer<'static>> = sections
        .into_iter()
        .filter_map(|section| match section {
            Section::PrivateKey(key) => Some(key),
            _ => None,
        })
        .collect();
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 => Err(format!("{}: no private key found", path.display())),
        n => Err(format!(
            "{}: {n} private keys found, expected exactly one",
            path.display()
        )),
    }
}

/// A DER PFX: SEQUENCE { INTEGER 3, ... }.
fn looks_like_pfx(bytes: &[u8]) -> bool {
    if bytes.first() != Some(&0x30) {
        return false;
    }
    let Some(&len) = bytes.get(1) else {
        return false;
    };
    let header = if len < 0x80 {
        2
    } else {
        2 + usize::from(len & 0x7f)
    };
    bytes.get(header..header + 3) == Some(&[0x02, 0x01, 0x03][..])
}
