//! `hitless inspect`: what a credential file holds, and whether hitless would serve it.
//!
//! For each file (PEM chain, PEM bundle with its key, PKCS#12, CRL in PEM or DER, a DER
//! certificate) it lists every certificate in file order with the facts an operator asks for
//! (subject, issuer, serial, names, key type, validity, SHA-256 fingerprint), says which
//! certificate the private key belongs to, points out chain-order mistakes, and ends with a
//! verdict usable in scripts and monitoring: the exit code (see `EXIT_CODES`).
//!
//! It only reads: nothing is written, nothing is watched. Everything is read and judged by the
//! library, as the reloaders do it: files through [`hitless::read_credential_file`] (regular
//! files of bounded size, so a FIFO or `/dev/zero` is refused rather than hanging or eating
//! memory), PEM through [`hitless::pem`], PKCS#12 and its password through
//! [`hitless::pkcs12::contents`], facts through [`CertInfo`], [`hitless::CrlInfo`] and
//! [`hitless::KeyInfo`] (which certificate a key belongs to). Whether an identity (PEM with its
//! key, or PKCS#12) would be served, and which leaf and chain, is [`hitless::Identity::load`]'s
//! verdict (for `--role`), the one `serve --check` gives too: `inspect` and `serve` cannot
//! disagree on a file, nor give different reasons.
//!
//! [`read`] recognises a file and takes it apart, [`analyse`] turns the parts into facts,
//! findings and a verdict, [`render`] prints them.

mod analyse;
mod read;
mod render;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use hitless::{CertInfo, Role};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

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
            render::report(report, &mut out);
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
    certs: Vec<CertificateDer<'static>>,
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
    let mut contents = match read::contents(file, &bytes, args, &mut report) {
        Some(c) => c,
        None => {
            report.status = Status::Invalid;
            return report;
        }
    };
    if let Some(key_file) = &args.key {
        match read::key_file(key_file) {
            Ok(key) => {
                contents.keys.push((key_file.clone(), key));
                contents.key_file = Some(key_file.clone());
            }
            Err(e) => report.errors.push(e),
        }
    }
    analyse::analyse(file, contents, args, now, &mut report);
    report
}
