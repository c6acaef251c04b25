//! `hitless ca`: a development CA kept in a directory (a root and an intermediate) that issues
//! server and client certificates, records revocations and signs CRLs.
//!
//! The CA itself (files, serials, validity) is [`crate::pki`]; this module only maps flags to it
//! and reports what was written. The serial of an issued leaf is the one line on stdout, so a
//! script can revoke it later; everything else goes to the log on stderr.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use crate::pki::layout::{check_file_name, write_atomic, CERT_MODE, KEY_MODE};
use crate::pki::{self, DevCa, KeyType, Kind, LeafSpec};

/// Flags of `hitless ca`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  hitless ca init --dir ./pki
  hitless ca issue --dir ./pki --name localhost --kind server --ttl 1h --out ./certs
  hitless ca issue --dir ./pki --name billing --kind client --ttl 10m --out ./certs
  hitless ca revoke --dir ./pki --cert ./certs/billing.crt
  hitless ca crl --dir ./pki --out ./pki/crl.pem --next-update 1h")]
pub struct Args {
    #[command(subcommand)]
    pub command: CaCommand,
}

/// What to do with the CA.
#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a root and an intermediate CA in --dir.
    Init(InitArgs),
    /// Issue a server or client certificate from the intermediate.
    Issue(IssueArgs),
    /// Record a certificate as revoked (listed by the next `ca crl`).
    Revoke(RevokeArgs),
    /// Write a CRL, signed by the intermediate, listing every revoked serial.
    Crl(CrlArgs),
}

/// Flags of `hitless ca init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Directory of the CA (created if missing).
    #[arg(long, default_value = "pki")]
    pub dir: PathBuf,
    /// Key algorithm of the root and the intermediate.
    #[arg(long, value_enum, default_value_t = KeyType::EcP256)]
    pub key_type: KeyType,
    /// Replace an existing CA in --dir (everything it issued stops being trusted).
    #[arg(long)]
    pub force: bool,
}

/// Flags of `hitless ca issue`.
#[derive(clap::Args, Debug)]
pub struct IssueArgs {
    /// Directory of the CA.
    #[arg(long, default_value = "pki")]
    pub dir: PathBuf,
    /// Subject common name; for a server also a DNS SAN (an IP SAN if it is an address), and
    /// `localhost` also gets 127.0.0.1 and ::1. Also names the files NAME.crt, NAME.key, NAME.pem.
    #[arg(long)]
    pub name: String,
    /// Server (serverAuth) or client (clientAuth) certificate.
    #[arg(long, value_enum, default_value_t = Kind::Server)]
    pub kind: Kind,
    /// Lifetime, e.g. 90s, 1h, 30d.
    #[arg(long, value_parser = crate::value::positive_duration, default_value = "24h")]
    pub ttl: Duration,
    /// Output directory (created if missing).
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Key algorithm of the leaf.
    #[arg(long, value_enum, default_value_t = KeyType::EcP256)]
    pub key_type: KeyType,
    /// A further IP SAN. Repeatable.
    #[arg(long)]
    pub ip: Vec<IpAddr>,
    /// A further DNS SAN. Repeatable.
    #[arg(long)]
    pub dns: Vec<String>,
}

/// Flags of `hitless ca revoke`.
#[derive(clap::Args, Debug)]
pub struct RevokeArgs {
    /// Directory of the CA.
    #[arg(long, default_value = "pki")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub which: WhichCert,
}

/// The certificate to revoke: exactly one of these.
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct WhichCert {
    /// Serial number in hex, as `ca issue` prints it (colons allowed: 3f:a2:...).
    #[arg(long)]
    pub serial: Option<String>,
    /// A PEM certificate file: revoke its (first) certificate.
    #[arg(long)]
    pub cert: Option<PathBuf>,
}

/// Flags of `hitless ca crl`.
#[derive(clap::Args, Debug)]
pub struct CrlArgs {
    /// Directory of the CA.
    #[arg(long, default_value = "pki")]
    pub dir: PathBuf,
    /// Where to write the PEM CRL (replaced atomically).
    #[arg(long)]
    pub out: PathBuf,
    /// How long the CRL is valid (its nextUpdate), e.g. 1h.
    #[arg(long, value_parser = crate::value::positive_duration, default_value = "1h")]
    pub next_update: Duration,
}

/// Runs one `ca` subcommand.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        CaCommand::Init(a) => init(a),
        CaCommand::Issue(a) => issue(a),
        CaCommand::Revoke(a) => revoke(a),
        CaCommand::Crl(a) => crl(a),
    }
}

fn init(args: InitArgs) -> anyhow::Result<ExitCode> {
    DevCa::init(&args.dir, args.key_type, args.force)?;
    tracing::info!(
        dir = %args.dir.display(),
        key_type = ?args.key_type,
        "created a root and an intermediate CA: trust {}, send {} after leaves",
        args.dir.join(pki::CA_BUNDLE_FILE).display(),
        args.dir.join(pki::CHAIN_FILE).display(),
    );
    Ok(ExitCode::SUCCESS)
}

fn issue(args: IssueArgs) -> anyhow::Result<ExitCode> {
    check_file_name(&args.name).context("--name also names the output files")?;
    let ca = DevCa::load(&args.dir)?;
    let issued = ca.issue(&LeafSpec {
        name: args.name.clone(),
        kind: args.kind,
        key_type: args.key_type,
        ttl: args.ttl,
        dns: args.dns,
        ips: args.ip,
    })?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create the output directory {}", args.out.display()))?;
    let crt = args.out.join(format!("{}.crt", args.name));
    let key = args.out.join(format!("{}.key", args.name));
    let bundle = args.out.join(format!("{}.pem", args.name));
    write_atomic(&crt, issued.fullchain_pem().as_bytes(), CERT_MODE)?;
    write_atomic(&key, issued.key_pem.as_bytes(), KEY_MODE)?;
    write_atomic(&bundle, issued.bundle_pem().as_bytes(), KEY_MODE)?;
    tracing::info!(
        serial = %issued.serial_hex(),
        not_after = %issued.not_after_rfc3339(),
        kind = ?args.kind,
        "issued {}, {}, {}",
        crt.display(),
        key.display(),
        bundle.display()
    );
    println!("{}", issued.serial_hex());
    Ok(ExitCode::SUCCESS)
}

fn revoke(args: RevokeArgs) -> anyhow::Result<ExitCode> {
    let ca = DevCa::load(&args.dir)?;
    let serial = match (&args.which.serial, &args.which.cert) {
        (Some(serial), _) => serial.clone(),
        (None, Some(cert)) => pki::serial_of_cert_file(cert)?,
        (None, None) => anyhow::bail!("give --serial HEX or --cert FILE"),
    };
    let (serial, new) = ca.revoke(&serial)?;
    if new {
        tracing::info!(%serial, "revoked; run `hitless ca crl` to publish it");
    } else {
        tracing::info!(%serial, "already revoked");
    }
    println!("{serial}");
    Ok(ExitCode::SUCCESS)
}

fn crl(args: CrlArgs) -> anyhow::Result<ExitCode> {
    let ca = DevCa::load(&args.dir)?;
    let (pem, count) = ca.crl(args.next_update)?;
    write_atomic(&args.out, pem.as_bytes(), CERT_MODE)?;
    tracing::info!(
        path = %args.out.display(),
        revoked = count,
        "wrote a CRL"
    );
    Ok(ExitCode::SUCCESS)
}
