//! `hitless inspect`: what a credential file holds, and whether hitless would serve it.
//!
//! For each file (PEM chain, PEM bundle with its key, PKCS#12, CRL in PEM or DER, a DER
//! certificate) it lists every certificate in file order with the facts an operator asks for
//! (subject, issuer, serial, names, key type, validity, SHA-256 fingerprint), says which
//! certificate the private key belongs to, points out chain-order mistakes, and ends with a
//! verdict usable in scripts and monitoring: the exit code (see `EXIT_CODES`).
//!
//! It only reads: nothing is written, nothing is watched. Files are read as the library reads
//! them ([`hitless::read_credential_file`]: regular files of bounded size, so a FIFO or
//! `/dev/zero` is refused rather than hanging or eating memory). Facts come from the library
//! ([`CertInfo::parse`]); whether an identity (PEM with its key, or PKCS#12) would be served,
//! and which leaf and chain, is decided by the library too ([`Identity::load`], for `--role`),
//! so `inspect` and `serve` give the same verdict, with the same reason, on the same file.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use hitless::{CertInfo, Identity, IdentitySource, Password, Role};
use p12_keystore::Pkcs12Archive;
use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};
use serde::Serialize;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// What the exit code means; shown by `--help` and documented in docs/inspect.md.
const EXIT_CODES: &str = "Exit codes:
  0  every file is valid and nothing in it expires within --warn
  1  a file is invalid: missing or unreadable (or not a regular file), unparsable, wrong
     PKCS#12 password, a private key that matches no certificate, a certificate expired or not
     yet valid, a CRL past its next update, an identity whose chain hitless refuses for --role
     (a certificate not signed by the next one, an intermediate that is not a CA or out of its
     validity period, an extendedKeyUsage without serverAuth/clientAuth) (also: a command-line
     error detected after parsing, such as --key with several files)
  2  every file is valid, but a certificate or CRL in one expires within --warn (default 7d)
     (clap reports a malformed command line with exit code 2 too, and prints usage on stderr)

Examples:
  hitless inspect /etc/tls/server.crt --key /etc/tls/server.key
  hitless inspect /run/secrets/identity.pem --warn 24h || alert \"renew the identity\"
  hitless inspect /etc/tls/server.pem --role server
  hitless inspect server.p12 --password-file server.pass --json
  hitless inspect /etc/tls/clients.crl /etc/tls/clients-ca.pem";

/// Flags of `hitless inspect`.
#[derive(clap::Args, Debug)]
#[command(after_help = EXIT_CODES)]
pub struct Args {
    /// Files to inspect: PEM certificate chains, PEM bundles (certificates and key in any
    /// order), PKCS#12 keystores (.p12/.pfx, or recognised by content), CRLs (PEM or DER).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) to check against the certificates of FILE
    /// (one FILE only).
    #[arg(long, value_name = "KEY_FILE")]
    pub key: Option<PathBuf>,
    /// File holding the PKCS#12 password (one trailing newline ignored).
    #[arg(long, value_name = "FILE", conflicts_with = "password_env")]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the PKCS#12 password. Without either flag, the PKCS#12
    /// password is empty.
    #[arg(long, value_name = "NAME")]
    pub password_env: Option<String>,
    /// Print a JSON array with one object per file instead of text.
    #[arg(long)]
    pub json: bool,
    /// Exit 2 when a certificate or CRL expires within this long ("7d", "24h", "90m").
    #[arg(long, value_name = "DURATION", value_parser = crate::value::duration, default_value = "7d")]
    pub warn: Duration,
    /// What an identity is for, as `serve` (server) and `call`/`probe` (client) load it: its
    /// chain's extendedKeyUsage must allow serverAuth, clientAuth, or either (any).
    #[arg(long, value_enum, default_value_t = RoleArg::Any)]
    pub role: RoleArg,
}

/// `--role`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleArg {
    /// A server identity (`hitless serve`): serverAuth.
    Server,
    /// A client identity (`hitless call`, `probe`): clientAuth.
    Client,
    /// Either.
    Any,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::Server => Role::Server,
            RoleArg::Client => Role::Client,
            RoleArg::Any => Role::Any,
        }
    }
}

/// Inspects every file, prints the reports, and returns the exit code.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.key.is_some() && args.files.len() > 1 {
        bail!(
            "--key is checked against one certificate file, and {} were given",
            args.files.len()
        );
    }
    let now = SystemTime::now();
    let reports: Vec<Report> = args
        .files
        .iter()
        .map(|file| inspect(file, &args, now))
        .collect();

    let mut out = String::new();
    if args.json {
        out = serde_json::to_string_pretty(&reports).context("cannot render JSON")?;
        out.push('\n');
    } else {
        for (i, report) in reports.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            report.render(&mut out);
        }
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to standard output")?;

    let code = if reports.iter().any(|r| r.status == Status::Invalid) {
        1
    } else if reports.iter().any(|r| r.status == Status::Expiring) {
        2
    } else {
        0
    };
    Ok(ExitCode::from(code))
}

/// The verdict on one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Status {
    /// Usable, and nothing expires within `--warn`.
    Valid,
    /// Usable, but something expires within `--warn`.
    Expiring,
    /// Not usable (see the errors).
    Invalid,
}

/// What a file turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Kind {
    Pem,
    Pkcs12,
    DerCertificate,
    DerCrl,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Pem => "PEM",
            Kind::Pkcs12 => "PKCS#12",
            Kind::DerCertificate => "DER certificate",
            Kind::DerCrl => "DER CRL",
        }
    }
}

/// Everything found in one file; serialized as one element of the `--json` array.
#[derive(Debug, Serialize)]
struct Report {
    file: PathBuf,
    /// `None` when the file could not be read or recognised.
    kind: Option<Kind>,
    status: Status,
    certificates: Vec<CertReport>,
    keys: Vec<KeyReport>,
    /// Whether every private key found matches a certificate (`None` without a key).
    key_matches: Option<bool>,
    /// For an identity hitless would serve: `server`, `client` (what its chain's
    /// extendedKeyUsage allows).
    usable_as: Vec<&'static str>,
    crls: Vec<CrlReport>,
    /// The earliest end of validity of any certificate or CRL next update in the file.
    expires: Option<String>,
    /// Seconds from now to `expires` (negative when past).
    seconds_left: Option<i64>,
    errors: Vec<String>,
    warnings: Vec<String>,
}

/// One certificate, in file order.
#[derive(Debug, Serialize)]
struct CertReport {
    /// Position in the file, from 1.
    index: usize,
    /// `leaf` (the certificate the key belongs to, or the first non-CA one), `ca`, or `other`.
    role: &'static str,
    subject: String,
    issuer: String,
    serial: String,
    dns_names: Vec<String>,
    ip_addresses: Vec<String>,
    key_type: String,
    is_ca: bool,
    /// The extendedKeyUsage purposes (`serverAuth`, `clientAuth`, ...), `null` without the
    /// extension (any purpose).
    extended_key_usage: Option<Vec<String>>,
    self_signed: bool,
    not_before: String,
    not_after: String,
    seconds_left: i64,
    fingerprint_sha256: String,
    #[serde(skip)]
    subject_raw: Vec<u8>,
    #[serde(skip)]
    issuer_raw: Vec<u8>,
    #[serde(skip)]
    spki: Vec<u8>,
    #[serde(skip)]
    info: CertInfo,
}

/// One private key and the certificate it belongs to.
#[derive(Debug, Serialize)]
struct KeyReport {
    /// The file the key was read from.
    file: PathBuf,
    /// `ECDSA`, `RSA`, `ED25519`... (as rustls names the algorithm).
    algorithm: Option<String>,
    /// The index (from 1) of the certificate whose public key is this key's.
    matches_certificate: Option<usize>,
}

/// One CRL.
#[derive(Debug, Serialize)]
struct CrlReport {
    issuer: String,
    this_update: String,
    next_update: Option<String>,
    seconds_left: Option<i64>,
    revoked: usize,
}

/// The raw contents of a file, before analysis.
#[derive(Default)]
struct Contents {
    certs: Vec<Vec<u8>>,
    keys: Vec<(PathBuf, PrivateKeyDer<'static>)>,
    crls: Vec<Vec<u8>>,
    /// For a PEM identity: the file holding the key, for the library's verdict.
    key_file: Option<PathBuf>,
}

fn inspect(file: &Path, args: &Args, now: SystemTime) -> Report {
    let mut report = Report {
        file: file.to_owned(),
        kind: None,
        status: Status::Invalid,
        certificates: Vec::new(),
        keys: Vec::new(),
        key_matches: None,
        usable_as: Vec::new(),
        crls: Vec::new(),
        expires: None,
        seconds_left: None,
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let bytes = match hitless::read_credential_file(file) {
        Ok(b) => b,
        Err(e) => {
            report.errors.push(e.to_string());
            return report;
        }
    };
    let mut contents = match read_contents(file, &bytes, args, &mut report) {
        Some(c) => c,
        None => {
            report.status = Status::Invalid;
            return report;
        }
    };
    if let Some(key_file) = &args.key {
        match read_key_file(key_file) {
            Ok(key) => {
                contents.keys.push((key_file.clone(), key));
                contents.key_file = Some(key_file.clone());
            }
            Err(e) => report.errors.push(e),
        }
    }
    analyse(file, contents, args, now, &mut report);
    report
}

/// Recognises the file and extracts its certificates, keys and CRLs (`None`: unusable, with
/// the reason in `report.errors`).
fn read_contents(file: &Path, bytes: &[u8], args: &Args, report: &mut Report) -> Option<Contents> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        report.errors.push("file is empty".into());
        return None;
    }
    let extension = file
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let is_pem = contains(bytes, b"-----BEGIN ");
    if matches!(extension.as_deref(), Some("p12" | "pfx")) || (!is_pem && looks_like_pfx(bytes)) {
        report.kind = Some(Kind::Pkcs12);
        return read_pkcs12(file, bytes, args, report);
    }
    if is_pem {
        report.kind = Some(Kind::Pem);
        return read_pem(file, bytes, report);
    }
    if X509Certificate::from_der(bytes).is_ok() {
        report.kind = Some(Kind::DerCertificate);
        return Some(Contents {
            certs: vec![bytes.to_vec()],
            ..Contents::default()
        });
    }
    if CertificateRevocationList::from_der(bytes).is_ok() {
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

fn read_pem(file: &Path, bytes: &[u8], report: &mut Report) -> Option<Contents> {
    if contains(bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        report.errors.push(
            "the private key is encrypted (ENCRYPTED PRIVATE KEY): hitless reads unencrypted \
             PEM keys; decrypt it (openssl pkey) or use PKCS#12 with a password"
                .into(),
        );
    }
    let (text, run_together) = split_run_together(bytes);
    if run_together {
        report.warnings.push(
            "PEM blocks are run together on one line (a template without newlines): hitless \
             reads them, but OpenSSL and most other tools refuse this file"
                .into(),
        );
    }
    let mut contents = Contents::default();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(&text) {
        let (kind, der) = match item {
            Ok(section) => section,
            Err(e) => {
                report.errors.push(format!("invalid PEM: {e}"));
                return None;
            }
        };
        let key = match kind {
            SectionKind::Certificate => {
                contents.certs.push(der);
                continue;
            }
            SectionKind::Crl => {
                contents.crls.push(der);
                continue;
            }
            SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
            SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)),
            SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)),
            other => {
                report
                    .warnings
                    .push(format!("ignored a PEM block of another kind ({other:?})"));
                continue;
            }
        };
        contents.keys.push((file.to_owned(), key));
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

fn read_pkcs12(file: &Path, bytes: &[u8], args: &Args, report: &mut Report) -> Option<Contents> {
    let password = match (&args.password_file, &args.password_env) {
        (Some(path), _) => match hitless::read_credential_file(path) {
            Ok(raw) => match String::from_utf8(raw) {
                Ok(text) => {
                    let text = text.strip_suffix('\n').unwrap_or(&text);
                    text.strip_suffix('\r').unwrap_or(text).to_string()
                }
                Err(_) => {
                    report
                        .errors
                        .push(format!("{}: password file is not UTF-8", path.display()));
                    return None;
                }
            },
            Err(e) => {
                report
                    .errors
                    .push(format!("cannot read the password file: {e}"));
                return None;
            }
        },
        (None, Some(name)) => match std::env::var(name) {
            Ok(value) => value,
            Err(_) => {
                report.errors.push(format!(
                    "password environment variable {name} is not set (or not UTF-8)"
                ));
                return None;
            }
        },
        (None, None) => String::new(),
    };
    let archive = match Pkcs12Archive::from_pkcs12(bytes, &password) {
        Ok(a) => a,
        Err(p12_keystore::error::Error::MacError(_)) => {
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
            report.errors.push(format!("invalid PKCS#12: {e}"));
            return None;
        }
    };
    let mut contents = Contents {
        certs: archive
            .certs
            .iter()
            .map(|bag| bag.cert.as_der().to_vec())
            .collect(),
        ..Contents::default()
    };
    for bag in &archive.keys {
        contents.keys.push((
            file.to_owned(),
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(bag.key.as_der().to_vec())),
        ));
    }
    if contents.certs.is_empty() {
        report
            .errors
            .push("no certificate in the PKCS#12 keystore".into());
        return None;
    }
    Some(contents)
}

/// Reads `--key`: exactly one PEM private key.
fn read_key_file(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = hitless::read_credential_file(path).map_err(|e| e.to_string())?;
    if contains(&bytes, b"-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err(format!(
            "{}: the private key is encrypted (ENCRYPTED PRIVATE KEY); decrypt it or use PKCS#12",
            path.display()
        ));
    }
    let (text, _) = split_run_together(&bytes);
    let mut keys = Vec::new();
    for item in <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(&text) {
        let (kind, der) = item.map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
        match kind {
            SectionKind::PrivateKey => {
                keys.push(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)))
            }
            SectionKind::RsaPrivateKey => {
                keys.push(PrivateKeyDer::Pkcs1(PrivatePkcs1KeyDer::from(der)))
            }
            SectionKind::EcPrivateKey => {
                keys.push(PrivateKeyDer::Sec1(PrivateSec1KeyDer::from(der)))
            }
            _ => {}
        }
    }
    match keys.len() {
        1 => Ok(keys.remove(0)),
        0 => Err(format!("{}: no private key found", path.display())),
        n => Err(format!(
            "{}: {n} private keys found, expected exactly one",
            path.display()
        )),
    }
}

/// Turns raw contents into facts, errors and warnings, and decides the status.
fn analyse(file: &Path, contents: Contents, args: &Args, now: SystemTime, report: &mut Report) {
    for (i, der) in contents.certs.iter().enumerate() {
        let index = i + 1;
        let parsed = X509Certificate::from_der(der);
        let info = CertInfo::parse(file, index, der);
        match (parsed, info) {
            (Ok((_, cert)), Ok(info)) => report.certificates.push(CertReport {
                index,
                role: "other",
                subject: info.subject.clone(),
                issuer: info.issuer.clone(),
                serial: info.serial.clone(),
                dns_names: info.dns_names.clone(),
                ip_addresses: info.ip_addresses.iter().map(|ip| ip.to_string()).collect(),
                key_type: info.key_type.clone(),
                is_ca: info.is_ca,
                extended_key_usage: info.extended_key_usage.clone(),
                self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
                not_before: rfc3339(info.not_before),
                not_after: rfc3339(info.not_after),
                seconds_left: seconds_between(now, info.not_after),
                fingerprint_sha256: info.fingerprint.clone(),
                subject_raw: cert.subject().as_raw().to_vec(),
                issuer_raw: cert.issuer().as_raw().to_vec(),
                spki: cert.public_key().raw.to_vec(),
                info,
            }),
            (_, Err(e)) => report.errors.push(e.to_string()),
            (Err(e), Ok(_)) => report
                .errors
                .push(format!("certificate {index} is not valid X.509: {e}")),
        }
    }
    for der in &contents.crls {
        match CertificateRevocationList::from_der(der) {
            Ok((_, crl)) => {
                let this_update = unix(crl.last_update().timestamp());
                let next_update = crl.next_update().map(|t| unix(t.timestamp()));
                report.crls.push(CrlReport {
                    issuer: crl.issuer().to_string(),
                    this_update: rfc3339(this_update),
                    next_update: next_update.map(rfc3339),
                    seconds_left: next_update.map(|t| seconds_between(now, t)),
                    revoked: crl.iter_revoked_certificates().count(),
                })
            }
            Err(e) => report.errors.push(format!("invalid CRL: {e}")),
        }
    }

    let provider = rustls::crypto::aws_lc_rs::default_provider();
    for (key_file, key) in &contents.keys {
        let mut key_report = KeyReport {
            file: key_file.clone(),
            algorithm: None,
            matches_certificate: None,
        };
        match provider.key_provider.load_private_key(key.clone_key()) {
            Ok(signing_key) => {
                key_report.algorithm = Some(format!("{:?}", signing_key.algorithm()));
                match signing_key.public_key() {
                    Some(spki) => {
                        key_report.matches_certificate = report
                            .certificates
                            .iter()
                            .find(|c| c.spki == spki.as_ref())
                            .map(|c| c.index);
                        if key_report.matches_certificate.is_none() {
                            report.errors.push(format!(
                                "{}: private key matches no certificate in {}",
                                key_file.display(),
                                file.display()
                            ));
                        }
                    }
                    None => report.errors.push(format!(
                        "{}: cannot derive the public key of the private key",
                        key_file.display()
                    )),
                }
            }
            Err(e) => report
                .errors
                .push(format!("{}: unusable private key: {e}", key_file.display())),
        }
        warn_if_readable(key_file, &mut report.warnings);
        report.keys.push(key_report);
    }
    if !report.keys.is_empty() {
        report.key_matches = Some(report.keys.iter().all(|k| k.matches_certificate.is_some()));
    }
    let file_keys = contents
        .keys
        .iter()
        .filter(|(path, _)| path == file)
        .count();
    if file_keys > 1 {
        report.errors.push(format!(
            "{file_keys} private keys found, expected exactly one (which one to serve would be \
             a guess)"
        ));
    }

    // The library's own verdict on an identity: what `serve` (or `call`, for --role client)
    // would do with these files, read again the way it reads them.
    let verdict = if report.errors.is_empty() {
        // Quietly: what the library would log while loading (a loose key mode, PEM blocks run
        // together) is in this report already.
        identity_source(file, &contents, args, report.kind).map(|source| {
            tracing::subscriber::with_default(tracing::subscriber::NoSubscriber::default(), || {
                Identity::load(&source, Role::from(args.role))
            })
        })
    } else {
        None
    };
    // The chain hitless would send, by fingerprint.
    let served: Option<Vec<String>> = match &verdict {
        Some(Ok(identity)) => Some(
            identity
                .chain()
                .iter()
                .map(|c| c.fingerprint.clone())
                .collect(),
        ),
        _ => None,
    };
    if let Some(Ok(identity)) = &verdict {
        // Of several certificates for the key, the library serves the newest valid one.
        let leaf = report
            .certificates
            .iter()
            .find(|c| c.fingerprint_sha256 == identity.leaf().fingerprint)
            .map(|c| c.index);
        if leaf.is_some() {
            for key in &mut report.keys {
                key.matches_certificate = leaf;
            }
        }
        report.usable_as = [(Role::Server, "server"), (Role::Client, "client")]
            .into_iter()
            .filter(|(role, _)| identity.allows(*role))
            .map(|(_, name)| name)
            .collect();
    }
    check_chain(report, served.as_deref());
    check_validity(report, args.warn, now, served.as_deref());
    if let Some(Err(e)) = verdict {
        report.errors.push(format!("hitless would refuse it: {e}"));
    }

    // A certificate that is not sent and has already ended is reported (a warning), not counted
    // as the identity's expiry.
    let counts = |c: &CertReport| {
        served
            .as_ref()
            .is_none_or(|s| c.seconds_left >= 0 || s.contains(&c.fingerprint_sha256))
    };
    let earliest = report
        .certificates
        .iter()
        .filter(|c| counts(c))
        .map(|c| (c.seconds_left, c.not_after.clone()))
        .chain(
            report
                .crls
                .iter()
                .filter_map(|c| Some((c.seconds_left?, c.next_update.clone()?))),
        )
        .min_by_key(|(left, _)| *left);
    if let Some((left, at)) = earliest {
        report.seconds_left = Some(left);
        report.expires = Some(at);
    }
    report.status = if !report.errors.is_empty() {
        Status::Invalid
    } else if report
        .seconds_left
        .is_some_and(|left| u64::try_from(left).is_ok_and(|l| l < args.warn.as_secs()))
    {
        Status::Expiring
    } else {
        Status::Valid
    };
}

/// The identity the library would load from this file (with `--key`, the pair), if it holds
/// exactly one key.
fn identity_source(
    file: &Path,
    contents: &Contents,
    args: &Args,
    kind: Option<Kind>,
) -> Option<IdentitySource> {
    if contents.keys.len() != 1 {
        return None;
    }
    match kind? {
        Kind::Pkcs12 => {
            let password = match (&args.password_file, &args.password_env) {
                (Some(path), _) => Password::File(path.clone()),
                (None, Some(name)) => Password::Env(name.clone()),
                (None, None) => Password::None,
            };
            Some(IdentitySource::pkcs12(file, password))
        }
        Kind::Pem => match contents.key_file.as_deref() {
            Some(key) if key == file => Some(IdentitySource::bundle(file)),
            Some(key) => Some(IdentitySource::pair(file, key)),
            None => None,
        },
        Kind::DerCertificate | Kind::DerCrl => None,
    }
}

/// Finds the leaf and reports chain-order problems (warnings: hitless reorders chains itself,
/// but other tools and peers may not). `served`: the chain the library would send (by
/// fingerprint, leaf first), when it accepted the identity.
fn check_chain(report: &mut Report, served: Option<&[String]>) {
    let certs = &report.certificates;
    let position = |fingerprint: &String| {
        certs
            .iter()
            .position(|c| c.fingerprint_sha256 == *fingerprint)
    };
    let by_key = served
        .and_then(|s| s.first())
        .and_then(position)
        .map(|i| i + 1)
        .or_else(|| report.keys.iter().find_map(|k| k.matches_certificate));
    let leaf = by_key
        .map(|index| index - 1)
        .or_else(|| certs.iter().position(|c| !c.is_ca));
    let Some(leaf) = leaf else {
        // Only CA certificates and no key: a trust bundle, whose order means nothing.
        for c in &mut report.certificates {
            c.role = "ca";
        }
        return;
    };
    let mut warnings = Vec::new();
    if leaf != 0 {
        warnings.push(format!(
            "the leaf (certificate {}, {}) is not first: most tools expect leaf first, then \
             its issuers (hitless reorders it)",
            leaf + 1,
            certs[leaf].subject
        ));
    }
    for pair in certs.windows(2) {
        let (child, parent) = (&pair[0], &pair[1]);
        if child.self_signed {
            warnings.push(format!(
                "certificate {} comes after certificate {}, a self-signed root: a root ends \
                 the chain",
                parent.index, child.index
            ));
        } else if parent.subject_raw != child.issuer_raw {
            warnings.push(format!(
                "certificate {} ({}) does not issue certificate {} (issued by {})",
                parent.index, parent.subject, child.index, child.issuer
            ));
        }
    }
    // The chain hitless would send (as the library chose it, else the leaf and its issuers by
    // name), with the root that ends it.
    let mut in_chain: Vec<usize> = match served {
        Some(s) => s.iter().filter_map(position).collect(),
        None => vec![leaf],
    };
    let mut current = in_chain.last().copied().unwrap_or(leaf);
    while !certs[current].self_signed {
        let issuer = &certs[current].issuer_raw;
        match (0..certs.len()).find(|&i| {
            !in_chain.contains(&i)
                && certs[i].subject_raw == *issuer
                && (served.is_none() || certs[i].self_signed)
        }) {
            Some(next) => {
                in_chain.push(next);
                current = next;
            }
            None => break,
        }
    }
    for (i, c) in certs.iter().enumerate() {
        if i == leaf {
            continue;
        }
        if c.self_signed && in_chain.contains(&i) {
            warnings.push(format!(
                "certificate {} ({}) is a self-signed root: peers must already trust it, so \
                 sending it only costs bytes (hitless leaves it out)",
                c.index, c.subject
            ));
        } else if !in_chain.contains(&i) && c.spki == certs[leaf].spki {
            warnings.push(format!(
                "certificate {} ({}) is another certificate for the same key: hitless serves \
                 certificate {}, the newest with a valid chain",
                c.index,
                c.subject,
                leaf + 1
            ));
        } else if !in_chain.contains(&i) {
            warnings.push(format!(
                "certificate {} ({}) does not belong to the leaf's chain (hitless does not send \
                 it)",
                c.index, c.subject
            ));
        }
    }
    report.warnings.extend(warnings);
    for (i, c) in report.certificates.iter_mut().enumerate() {
        c.role = if i == leaf {
            "leaf"
        } else if c.is_ca {
            "ca"
        } else {
            "other"
        };
    }
}

/// Errors for certificates and CRLs out of their validity; warnings for those ending within
/// `warn`. With `served` (the chain the library accepted), a certificate it does not send is
/// only worth a warning: `serve` ignores it.
fn check_validity(report: &mut Report, warn: Duration, now: SystemTime, served: Option<&[String]>) {
    let soon = |left: i64| u64::try_from(left).is_ok_and(|l| l < warn.as_secs());
    for c in &report.certificates {
        let which = format!("certificate {} ({})", c.index, c.subject);
        if served.is_some_and(|s| !s.contains(&c.fingerprint_sha256))
            && (now < c.info.not_before || c.seconds_left < 0)
        {
            report.warnings.push(format!(
                "{which} is outside its validity period ({} to {}); hitless does not send it",
                c.not_before, c.not_after
            ));
        } else if now < c.info.not_before {
            report.errors.push(format!(
                "{which} is not valid yet: not before {} (in {})",
                c.not_before,
                span(seconds_between(now, c.info.not_before))
            ));
        } else if c.seconds_left < 0 {
            report.errors.push(format!(
                "{which} expired at {} ({} ago)",
                c.not_after,
                span(-c.seconds_left)
            ));
        } else if soon(c.seconds_left) {
            report.warnings.push(format!(
                "{which} expires in {}, within --warn {}",
                span(c.seconds_left),
                humantime::format_duration(warn)
            ));
        }
    }
    for crl in &report.crls {
        let (Some(left), Some(next)) = (crl.seconds_left, &crl.next_update) else {
            continue;
        };
        if left < 0 {
            report.errors.push(format!(
                "the CRL of {} is past its next update {} ({} ago): publish a new one (hitless \
                 still applies its revocations)",
                crl.issuer,
                next,
                span(-left)
            ));
        } else if soon(left) {
            report.warnings.push(format!(
                "the CRL of {} is due for renewal in {}, within --warn {}",
                crl.issuer,
                span(left),
                humantime::format_duration(warn)
            ));
        }
    }
}

impl Report {
    /// The human-readable block of this file.
    fn render(&self, out: &mut String) {
        let mut what = Vec::new();
        if !self.certificates.is_empty() {
            what.push(plural(self.certificates.len(), "certificate"));
        }
        if !self.keys.is_empty() {
            what.push(plural(self.keys.len(), "private key"));
        }
        if !self.crls.is_empty() {
            what.push(plural(self.crls.len(), "CRL"));
        }
        let _ = write!(out, "{}", self.file.display());
        if let Some(kind) = self.kind {
            let _ = write!(out, ": {}", kind.describe());
        }
        if !what.is_empty() {
            let _ = write!(out, ", {}", what.join(", "));
        }
        out.push('\n');
        for c in &self.certificates {
            let mut tags = vec![c.role];
            if c.self_signed {
                tags.push("self-signed");
            }
            tags.retain(|t| *t != "other");
            let tags = if tags.is_empty() {
                String::new()
            } else {
                format!(" ({})", tags.join(", "))
            };
            let _ = writeln!(out, "  certificate {}{tags}", c.index);
            field(out, "subject", &c.subject);
            field(out, "issuer", &c.issuer);
            field(out, "serial", &c.serial);
            let names: Vec<String> = c
                .dns_names
                .iter()
                .map(|n| format!("DNS:{n}"))
                .chain(c.ip_addresses.iter().map(|ip| format!("IP:{ip}")))
                .collect();
            field(
                out,
                "names",
                if names.is_empty() {
                    "(none)".to_string()
                } else {
                    names.join(", ")
                }
                .as_str(),
            );
            field(out, "key", &c.key_type);
            if let Some(usage) = &c.extended_key_usage {
                field(out, "ext. usage", &usage.join(", "));
            }
            field(out, "not before", &c.not_before);
            let left = if c.seconds_left >= 0 {
                format!("{} (in {})", c.not_after, span(c.seconds_left))
            } else {
                format!("{} (expired {} ago)", c.not_after, span(-c.seconds_left))
            };
            field(out, "not after", &left);
            field(out, "sha-256", &c.fingerprint_sha256);
        }
        for crl in &self.crls {
            let _ = writeln!(out, "  CRL");
            field(out, "issuer", &crl.issuer);
            field(out, "this update", &crl.this_update);
            let next = match (&crl.next_update, crl.seconds_left) {
                (Some(at), Some(left)) if left >= 0 => format!("{at} (in {})", span(left)),
                (Some(at), Some(left)) => format!("{at} (passed {} ago)", span(-left)),
                _ => "(none)".into(),
            };
            field(out, "next update", &next);
            field(out, "revoked", &crl.revoked.to_string());
        }
        for key in &self.keys {
            let algorithm = key.algorithm.as_deref().unwrap_or("unusable");
            let verdict = match key.matches_certificate {
                Some(i) => format!("matches certificate {i}"),
                None => "matches NO certificate".into(),
            };
            let _ = writeln!(
                out,
                "  private key  {} ({algorithm}): {verdict}",
                key.file.display()
            );
        }
        if !self.usable_as.is_empty() {
            let _ = writeln!(
                out,
                "  usable as    {} identity",
                self.usable_as.join(" and ")
            );
        }
        for w in &self.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
        for e in &self.errors {
            let _ = writeln!(out, "  error: {e}");
        }
        let _ = match self.status {
            Status::Invalid => writeln!(out, "  => INVALID"),
            Status::Expiring => writeln!(
                out,
                "  => valid, but EXPIRES SOON: in {} ({})",
                span(self.seconds_left.unwrap_or(0)),
                self.expires.as_deref().unwrap_or("?")
            ),
            Status::Valid => match (&self.expires, self.seconds_left) {
                (Some(at), Some(left)) => {
                    writeln!(out, "  => valid, expires in {} ({at})", span(left))
                }
                _ => writeln!(out, "  => valid"),
            },
        };
    }
}

fn field(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(out, "    {name:<12} {value}");
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A readable length of time in days, hours, minutes (and seconds under an hour):
/// `1825d 3h 12m`, `6d 23h 59m`, `42m 7s`.
fn span(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h) {
        (0, 0) if m == 0 => format!("{sec}s"),
        (0, 0) => format!("{m}m {sec}s"),
        (0, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// Whole seconds from `from` to `to`, negative when `to` is earlier.
fn seconds_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn unix(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// A private key file readable by every user of the machine is worth a warning.
fn warn_if_readable(path: &Path, warnings: &mut Vec<String>) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o004 != 0 {
                let warning = format!(
                    "{}: the private key file is readable by every user (mode {mode:04o}); \
                     chmod 600 it",
                    path.display()
                );
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, warnings);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
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

/// Puts every `-----BEGIN ` and `-----END ` marker at the start of a line, as the library
/// does for one-line agent templates; says whether anything had to be split.
fn split_run_together(bytes: &[u8]) -> (std::borrow::Cow<'_, [u8]>, bool) {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    let needs_split = |i: usize| {
        i > 0
            && bytes[i - 1] != b'\n'
            && bytes[i - 1] != b'\r'
            && (bytes[i..].starts_with(BEGIN) || bytes[i..].starts_with(END))
    };
    if !(0..bytes.len()).any(needs_split) {
        return (std::borrow::Cow::Borrowed(bytes), false);
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    for (i, b) in bytes.iter().enumerate() {
        if needs_split(i) {
            out.push(b'\n');
        }
        out.push(*b);
    }
    (std::borrow::Cow::Owned(out), true)
}
