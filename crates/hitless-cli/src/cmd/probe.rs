//! `hitless probe`: proves that a server refuses whoever it must.
//!
//! The probe makes its attacking credentials at run time (rcgen) and tries each against the
//! server on a fresh connection: no client certificate, a self-signed one, one from an unknown
//! CA; with `--cert/--key`, the real certificate with a wrong key; and with the CA's own
//! certificate and key (`--ca-cert/--ca-key`, test set-ups), a certificate signed by an
//! impostor CA of the same name, an expired one, a not-yet-valid one, one without the
//! clientAuth extended key usage, a client leaf that claims to be a CA (basicConstraints
//! CA:TRUE), and a leaf signed by another client's leaf (a chain through a non-CA
//! intermediate). With `--crl-out` (where the server reads the CA's CRL), the probe also
//! writes a CRL and checks revocation: a revoked leaf, a session made before the leaf was
//! revoked and resumed after (TLS 1.3 ticket and TLS 1.2 session; it must be refused or
//! forced into a full handshake that is refused), and a leaf under an intermediate the CA
//! revoked.
//!
//! **Evidence.** A refusal counts only if the server asked this connection for a client
//! certificate (a CertificateRequest arrived: rustls calls the client-certificate resolver
//! exactly then) and then sent an alert or closed the connection, during the handshake or
//! before the first response (with TLS 1.3 the verdict arrives after the client's side of the
//! handshake, at the first read). A server that never asks for a certificate refuses nobody
//! for a reason the probe can see: every such row is "inconclusive" and the probe fails. A
//! resumed session exchanges no certificates; a refusal right after resuming counts too.
//!
//! Controls prove that a refusal means something: the given good identity (`--cert/--key`),
//! a fresh certificate from the CA and a leaf under a fresh intermediate must be accepted;
//! the revoked certificate and the revoked intermediate are those, accepted just before their
//! revocation. "Accepted" means an HTTP response arrived (any status). Anything else (no TCP
//! connection, the server's own certificate not trusted by `--ca`, a timeout, an answer that
//! is not HTTP) is "inconclusive" and fails the probe too.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hitless::{Detection, Identity, IdentitySource, ReloadingTrust, TrustSource};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert, Resumption,
    Tls12ClientSessionValue, Tls13ClientSessionValue, WebPkiServerVerifier,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, NamedGroup, SignatureScheme, SupportedProtocolVersion};
use serde_json::json;
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;

use crate::client::{self, Failure, Reply, Target};
use crate::pki::layout::{write_atomic, CERT_MODE};

/// The largest `--ca-cert`, `--ca-key` or `--crl-out` file read.
const MAX_INPUT_SIZE: u64 = 64 * 1024 * 1024;

/// Flags of `hitless probe`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  hitless probe https://localhost:8443/ --ca ca.pem
  hitless probe https://localhost:8443/ --ca ca.pem --cert good.crt --key good.key \\
      --ca-cert ca.pem --ca-key ca.key --crl-out /etc/server/crl.pem --json

Exit status: 0 if every attack was refused (by a server that asked for a client certificate)
and every control accepted; 1 otherwise (the attacks that got in, and the rows that prove
nothing, are named on stderr).")]
pub struct Args {
    /// The server to probe: https://HOST[:PORT][/PATH].
    pub url: String,
    /// PEM file of CA certificates trusted for the server's certificate. Repeatable.
    #[arg(long, required = true)]
    pub ca: Vec<PathBuf>,
    /// The name the server certificate must carry, and the SNI sent (default: the URL's host).
    #[arg(long)]
    pub server_name: Option<String>,
    /// A good client certificate chain (with --key): a control that must be accepted, and the
    /// certificate of the "stolen certificate" attack.
    #[arg(long, requires = "key", conflicts_with = "identity")]
    pub cert: Option<PathBuf>,
    /// The private key of --cert.
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// A good client identity as one PEM bundle (instead of --cert/--key).
    #[arg(long)]
    pub identity: Option<PathBuf>,
    /// The certificate of the CA the server trusts for clients (with --ca-key): enables the
    /// attacks that need certificates from that CA. For test set-ups.
    #[arg(long, requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The CA's private key, PEM (PKCS#8).
    #[arg(long, requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Where the server reads the CRL of --ca-cert: the probe writes there (atomically) a CRL
    /// revoking its own certificates, keeping the revocations already in it. Enables the
    /// "revoked", "resumed after revocation" and "revoked intermediate" attacks.
    #[arg(long, requires = "ca_cert")]
    pub crl_out: Option<PathBuf>,
    /// How long to wait after writing --crl-out for the server to reload it.
    #[arg(long, value_parser = crate::value::duration, default_value = "2s")]
    pub crl_reload_wait: Duration,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Time limit of one attempt, connection and handshake included.
    #[arg(long, value_parser = crate::value::positive_duration, default_value = "10s")]
    pub timeout: Duration,
}

/// What a row expects of the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An attack: the server must refuse it.
    Refused,
    /// A control: the server must accept it.
    Accepted,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The server asked for a client certificate and turned the client away.
    Refused,
    /// The server answered a request.
    Accepted,
    /// The attempt proves nothing either way (no connection, server not trusted, timeout, a
    /// refusal without a CertificateRequest, an answer that is not HTTP).
    Inconclusive,
    /// Not tried: a flag it needs was not given, or the server offers nothing to attack.
    Skipped,
}

impl Verdict {
    /// The word used in reports.
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Refused => "refused",
            Verdict::Accepted => "accepted",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Skipped => "skipped",
        }
    }
}

impl Expect {
    /// The word used in reports.
    fn as_str(self) -> &'static str {
        match self {
            Expect::Refused => "refused",
            Expect::Accepted => "accepted",
        }
    }
}

/// One line of the report.
struct Row {
    attack: &'static str,
    expected: Expect,
    result: Verdict,
    detail: String,
    /// Whether the server sent a CertificateRequest on this connection (`None`: not tried).
    certificate_requested: Option<bool>,
    /// Whether the handshake resumed an earlier session.
    resumed: bool,
}

impl Row {
    /// True if the server did what was expected (or the row was skipped).
    fn passed(&self) -> bool {
        match self.result {
            Verdict::Skipped => true,
            Verdict::Refused => self.expected == Expect::Refused,
            Verdict::Accepted => self.expected == Expect::Accepted,
            Verdict::Inconclusive => false,
        }
    }

    /// A row not tried, saying why.
    fn skipped(attack: &'static str, expected: Expect, why: &str) -> Row {
        Row::without_attempt(attack, expected, Verdict::Skipped, why)
    }

    /// A row decided without an attempt of its own.
    fn without_attempt(
        attack: &'static str,
        expected: Expect,
        result: Verdict,
        detail: &str,
    ) -> Row {
        Row {
            attack,
            expected,
            result,
            detail: detail.to_string(),
            certificate_requested: None,
            resumed: false,
        }
    }
}

/// What one attempt showed.
struct Outcome {
    result: Verdict,
    detail: String,
    /// A CertificateRequest arrived.
    asked: bool,
    /// The handshake resumed an earlier session.
    resumed: bool,
    /// Nothing reached the point where the server judges a client (no TCP connection, the
    /// server's certificate not trusted, a timeout): every other attempt would end the same.
    unreachable: bool,
}

impl Outcome {
    fn into_row(self, attack: &'static str, expected: Expect) -> Row {
        Row {
            attack,
            expected,
            result: self.result,
            detail: self.detail,
            certificate_requested: Some(self.asked),
            resumed: self.resumed,
        }
    }
}

/// The client credential an attempt presents.
enum Credential {
    /// No certificate at all.
    None,
    /// A certificate chain and its key (sent whatever CAs the server asks for).
    Leaf(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    /// A resolver choosing what to send.
    Resolver(Arc<dyn ResolvesClientCert>),
}

/// The CA the server trusts, when the probe may sign with it.
struct TrustedCa {
    issuer: Issuer<'static, KeyPair>,
    /// The certificates of `--ca-cert`, the CA's own first: sent after each leaf it issues, so
    /// an intermediate CA's leaves chain to the root the server trusts.
    chain: Vec<CertificateDer<'static>>,
    subject_der: Vec<u8>,
    /// The CA's subject key identifier (or how to compute one), for the CRL's authority key
    /// identifier: verifiers such as OpenSSL match a CRL to its CA by it.
    key_id: KeyIdMethod,
    /// The CA's pathLenConstraint: 0 forbids any CA below it.
    path_len: Option<u32>,
}

impl TrustedCa {
    /// A credential of `certs` (leaf first, then any intermediates the probe made), followed
    /// by the CA chain.
    fn credential(&self, certs: &[&CertificateDer<'static>], key: &KeyPair) -> Credential {
        let mut chain: Vec<CertificateDer<'static>> = certs.iter().map(|c| (*c).clone()).collect();
        chain.extend(self.chain.iter().cloned());
        Credential::Leaf(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))
    }

    /// A credential of a leaf issued by this CA (or by an impostor of it), with the CA chain.
    fn leaf(&self, cert: &CertificateDer<'static>, key: &KeyPair) -> Credential {
        self.credential(&[cert], key)
    }
}

/// Records that the server asked for a client certificate: rustls calls a client's resolver
/// when, and only when, a CertificateRequest arrives.
#[derive(Debug)]
struct Asked {
    inner: Option<Arc<dyn ResolvesClientCert>>,
    asked: Arc<AtomicBool>,
}

impl ResolvesClientCert for Asked {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.asked.store(true, Ordering::SeqCst);
        self.inner
            .as_ref()
            .and_then(|r| r.resolve(root_hint_subjects, sigschemes))
    }

    fn has_certs(&self) -> bool {
        self.inner.as_ref().is_some_and(|r| r.has_certs())
    }
}

/// A session store that remembers whether the server gave anything to resume with.
#[derive(Debug)]
struct Sessions {
    inner: ClientSessionMemoryCache,
    kept: AtomicBool,
}

impl Sessions {
    fn new() -> Sessions {
        Sessions {
            inner: ClientSessionMemoryCache::new(16),
            kept: AtomicBool::new(false),
        }
    }

    /// Whether the server issued a TLS 1.3 ticket or a TLS 1.2 session.
    fn kept(&self) -> bool {
        self.kept.load(Ordering::SeqCst)
    }
}

impl ClientSessionStore for Sessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.kept.store(true, Ordering::SeqCst);
        self.inner.set_tls12_session(server_name, value)
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.inner.tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.inner.remove_tls12_session(server_name)
    }

    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.kept.store(true, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(server_name, value)
    }

    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(server_name)
    }
}

/// A client configuration for attempts, with what it records.
struct Client {
    config: Arc<ClientConfig>,
    asked: Arc<AtomicBool>,
    /// With resumption: the sessions the server gave.
    sessions: Option<Arc<Sessions>>,
}

/// Which protocol versions a client offers.
#[derive(Clone, Copy)]
enum Versions {
    /// Whatever rustls offers by default (TLS 1.3 and 1.2).
    Default,
    /// Only this one.
    Only(&'static SupportedProtocolVersion),
}

/// Everything an attempt needs.
struct Probe {
    target: Target,
    verifier: Arc<WebPkiServerVerifier>,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
}

/// Runs every attack and control, prints the report, and exits 0 only if all passed.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let target = Target::parse(&args.url, args.server_name.as_deref())?;
    let trust = ReloadingTrust::builder(TrustSource::cas(&args.ca))
        .name("server trust")
        .detection(Detection::Manual)
        .build()
        .context("no valid trust bundle for the server's certificate")?;
    let verifier = trust
        .current()
        .map(|t| t.value.fixed_server_verifier().clone())
        .ok_or_else(|| anyhow!("no trust bundle loaded from --ca"))?;
    let control = control_identity(&args)?;
    let ca = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => Some(load_ca(cert, key)?),
        _ => None,
    };
    let probe = Probe {
        target,
        verifier,
        timeout: args.timeout,
        runtime: tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?,
    };
    let rows = attack(&args, &probe, control.as_ref(), ca.as_ref())?;

    if args.json {
        println!("{}", report_json(&args, &rows));
    } else {
        print!("{}", report_table(&args, &rows));
    }
    let _ = std::io::stdout().flush();
    let got_in: Vec<&str> = rows
        .iter()
        .filter(|r| r.expected == Expect::Refused && r.result == Verdict::Accepted)
        .map(|r| r.attack)
        .collect();
    let other: Vec<String> = rows
        .iter()
        .filter(|r| !r.passed() && !got_in.contains(&r.attack))
        .map(|r| format!("{} ({}: {})", r.attack, r.result.as_str(), r.detail))
        .collect();
    if !got_in.is_empty() {
        eprintln!(
            "hitless probe: {} attack(s) got in: {}",
            got_in.len(),
            got_in.join(", ")
        );
    }
    if rows.iter().all(|r| r.certificate_requested != Some(true)) {
        eprintln!(
            "hitless probe: the server never asked for a client certificate (no \
             CertificateRequest on any connection): it does not authenticate clients, so none \
             of its refusals proves anything"
        );
    }
    if !other.is_empty() {
        eprintln!("hitless probe: not as expected: {}", other.join("; "));
    }
    Ok(if got_in.is_empty() && other.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the attempts in order; the revocation attacks last, since they wait for a CRL reload.
fn attack(
    args: &Args,
    probe: &Probe,
    control: Option<&Identity>,
    ca: Option<&TrustedCa>,
) -> anyhow::Result<Vec<Row>> {
    let now = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let day = time::Duration::days(1);
    let needs_ca = "needs --ca-cert and --ca-key";
    let needs_cert = "needs a good identity (--cert/--key or --identity)";
    let mut rows = Vec::new();

    let first = probe.attempt(&probe.client(Credential::None, Versions::Default, false)?);
    if first.unreachable {
        // Every other attempt would end the same way: say it once.
        bail!("cannot probe {}: {}", args.url, first.detail);
    }
    rows.push(first.into_row("no client certificate", Expect::Refused));

    let key = new_key()?;
    let cert = leaf_params("hitless-probe self-signed", now - hour, now + hour)?
        .self_signed(&key)
        .context("cannot make a self-signed certificate")?;
    rows.push(probe.try_as("self-signed", Expect::Refused, leaf(cert.der(), &key)));

    let unknown = new_ca("hitless-probe unknown CA")?;
    let unknown_leaf = issue(
        &unknown,
        "hitless-probe unknown CA client",
        now - hour,
        now + hour,
        Defect::None,
    )?;
    rows.push(probe.try_as(
        "unknown CA",
        Expect::Refused,
        leaf(&unknown_leaf.cert, &unknown_leaf.key),
    ));

    match ca {
        Some(ca) => {
            // Same name (and key identifier) as the trusted CA, another key: only the
            // signature tells them apart.
            let impostor = Issuer::from_ca_cert_der(&ca.chain[0], new_key()?)
                .context("cannot read --ca-cert to make an impostor of it")?;
            let forged = issue(
                &impostor,
                "hitless-probe impostor",
                now - hour,
                now + hour,
                Defect::None,
            )?;
            rows.push(probe.try_as(
                "impostor CA",
                Expect::Refused,
                ca.leaf(&forged.cert, &forged.key),
            ));
        }
        None => rows.push(Row::skipped("impostor CA", Expect::Refused, needs_ca)),
    }

    match control {
        Some(identity) => rows.push(probe.try_as(
            "stolen certificate",
            Expect::Refused,
            Credential::Resolver(stolen(identity)?),
        )),
        None => rows.push(Row::skipped(
            "stolen certificate",
            Expect::Refused,
            needs_cert,
        )),
    }

    let defective: [(&'static str, OffsetDateTime, OffsetDateTime, Defect); 4] = [
        ("expired", now - 2 * day, now - day, Defect::None),
        ("not yet valid", now + day, now + 2 * day, Defect::None),
        (
            "no clientAuth EKU",
            now - hour,
            now + hour,
            Defect::ServerAuthOnly,
        ),
        ("CA:TRUE leaf", now - hour, now + hour, Defect::IsCa),
    ];
    for (name, not_before, not_after, defect) in defective {
        match ca {
            Some(ca) => {
                let cn = format!("hitless-probe {name}");
                let issued = issue(&ca.issuer, &cn, not_before, not_after, defect)?;
                rows.push(probe.try_as(name, Expect::Refused, ca.leaf(&issued.cert, &issued.key)));
            }
            None => rows.push(Row::skipped(name, Expect::Refused, needs_ca)),
        }
    }

    match ca {
        Some(ca) => {
            // A client's own (valid, CA:FALSE) leaf signing another leaf: whoever holds one
            // client key must not be able to mint more clients.
            let minter = issue(
                &ca.issuer,
                "hitless-probe minting client",
                now - hour,
                now + hour,
                Defect::None,
            )?;
            let minted = issue(
                &minter.issuer(),
                "hitless-probe minted by a client",
                now - hour,
                now + hour,
                Defect::None,
            )?;
            rows.push(probe.try_as(
                "non-CA intermediate",
                Expect::Refused,
                ca.credential(&[&minted.cert, &minter.cert], &minted.key),
            ));
        }
        None => rows.push(Row::skipped(
            "non-CA intermediate",
            Expect::Refused,
            needs_ca,
        )),
    }

    match control {
        Some(identity) => rows.push(probe.try_as(
            "control",
            Expect::Accepted,
            Credential::Resolver(Arc::new(AsClient(identity.clone()))),
        )),
        None => rows.push(Row::skipped("control", Expect::Accepted, needs_cert)),
    }

    let Some(ca) = ca else {
        for (attack, expected) in REVOCATION_ROWS {
            rows.push(Row::skipped(attack, expected, needs_ca));
        }
        return Ok(rows);
    };
    revocation(args, probe, ca, &mut rows)?;
    Ok(rows)
}

/// The rows [`revocation`] adds, in order.
const REVOCATION_ROWS: [(&str, Expect); 6] = [
    ("fresh from CA", Expect::Accepted),
    ("fresh intermediate", Expect::Accepted),
    ("revoked", Expect::Refused),
    ("resumed after revocation (TLS 1.3)", Expect::Refused),
    ("resumed after revocation (TLS 1.2)", Expect::Refused),
    ("revoked intermediate", Expect::Refused),
];

/// A session made with the fresh certificate before its revocation, for one TLS version.
struct Session {
    attack: &'static str,
    client: Client,
    /// Why there is nothing to resume, if there is not.
    unusable: Option<String>,
}

/// The controls a revocation refers to (a fresh leaf, a leaf under a fresh intermediate, and
/// sessions made with the fresh leaf), then, with `--crl-out`, the CRL revoking the fresh leaf
/// and the intermediate, and the attacks that must then be refused.
fn revocation(
    args: &Args,
    probe: &Probe,
    ca: &TrustedCa,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let fresh = issue(
        &ca.issuer,
        "hitless-probe fresh",
        now - hour,
        now + hour,
        Defect::None,
    )?;
    let fresh_row = probe.try_as(
        "fresh from CA",
        Expect::Accepted,
        ca.leaf(&fresh.cert, &fresh.key),
    );
    let fresh_accepted = fresh_row.result == Verdict::Accepted;
    rows.push(fresh_row);

    // A leaf under an intermediate made now, accepted before the CA revokes the intermediate.
    let intermediate = if ca.path_len == Some(0) {
        rows.push(Row::skipped(
            "fresh intermediate",
            Expect::Accepted,
            "--ca-cert has pathLenConstraint 0: no CA may be made below it",
        ));
        None
    } else {
        let int = issue(
            &ca.issuer,
            "hitless-probe intermediate",
            now - hour,
            now + hour,
            Defect::IntermediateCa,
        )?;
        let below = issue(
            &int.issuer(),
            "hitless-probe under the intermediate",
            now - hour,
            now + hour,
            Defect::None,
        )?;
        let serial = int.serial.clone();
        let credential = move || ca.credential(&[&below.cert, &int.cert], &below.key);
        let row = probe.try_as("fresh intermediate", Expect::Accepted, credential());
        let accepted = row.result == Verdict::Accepted;
        rows.push(row);
        Some((serial, credential, accepted))
    };

    let Some(crl_out) = &args.crl_out else {
        for (attack, expected) in &REVOCATION_ROWS[2..] {
            rows.push(Row::skipped(attack, *expected, "needs --crl-out"));
        }
        return Ok(());
    };

    // Sessions made with the fresh certificate while it is good, to resume once it is not.
    let mut sessions = Vec::new();
    for (attack, version, name) in [
        (
            "resumed after revocation (TLS 1.3)",
            &rustls::version::TLS13,
            "TLS 1.3",
        ),
        (
            "resumed after revocation (TLS 1.2)",
            &rustls::version::TLS12,
            "TLS 1.2",
        ),
    ] {
        let client = probe.client(
            ca.leaf(&fresh.cert, &fresh.key),
            Versions::Only(version),
            true,
        )?;
        let before = probe.attempt(&client);
        let unusable = if before.result != Verdict::Accepted {
            Some(format!(
                "the fresh certificate got no answer over {name} before its revocation ({}): \
                 no session to resume",
                before.detail
            ))
        } else if !client.sessions.as_ref().is_some_and(|s| s.kept()) {
            Some(format!(
                "the server gave no session ticket or ID over {name}: nothing to resume"
            ))
        } else {
            None
        };
        sessions.push(Session {
            attack,
            client,
            unusable,
        });
    }

    if !fresh_accepted {
        let why = "the fresh certificate was refused before its revocation, so a refusal after \
                   it would prove nothing";
        rows.push(Row::without_attempt(
            "revoked",
            Expect::Refused,
            Verdict::Inconclusive,
            why,
        ));
        for s in &sessions {
            rows.push(Row::without_attempt(
                s.attack,
                Expect::Refused,
                Verdict::Inconclusive,
                why,
            ));
        }
    }

    let mut revoke = vec![fresh.serial.clone()];
    if let Some((serial, _, true)) = &intermediate {
        revoke.push(serial.clone());
    }
    write_crl(crl_out, ca, &revoke)?;
    tracing::info!(
        crl = %crl_out.display(),
        wait = %humantime::format_duration(args.crl_reload_wait),
        "wrote a CRL revoking the fresh certificate and intermediate; waiting for the server to \
         reload it"
    );
    std::thread::sleep(args.crl_reload_wait);
    let after = format!(
        " (after revocation in {} and {} of waiting)",
        crl_out.display(),
        humantime::format_duration(args.crl_reload_wait)
    );

    if fresh_accepted {
        let mut revoked =
            probe.try_as("revoked", Expect::Refused, ca.leaf(&fresh.cert, &fresh.key));
        if revoked.result == Verdict::Accepted {
            revoked.detail.push_str(&after);
        }
        rows.push(revoked);
        for s in &sessions {
            if let Some(why) = &s.unusable {
                rows.push(Row::skipped(s.attack, Expect::Refused, why));
                continue;
            }
            let mut row = probe.attempt(&s.client).into_row(s.attack, Expect::Refused);
            row.detail = match (row.resumed, row.result) {
                (true, _) => format!(
                    "resumed the session made before the revocation: {}",
                    row.detail
                ),
                (false, Verdict::Refused) => format!(
                    "the server refused to resume and refused the full handshake: {}",
                    row.detail
                ),
                (false, _) => format!("not resumed: {}", row.detail),
            };
            if row.result == Verdict::Accepted {
                row.detail.push_str(&after);
            }
            rows.push(row);
        }
    }

    match intermediate {
        None => rows.push(Row::skipped(
            "revoked intermediate",
            Expect::Refused,
            "no intermediate could be made below --ca-cert",
        )),
        Some((_, _, false)) => rows.push(Row::without_attempt(
            "revoked intermediate",
            Expect::Refused,
            Verdict::Inconclusive,
            "the leaf under the fresh intermediate was refused before its revocation, so a \
             refusal after it would prove nothing",
        )),
        Some((_, credential, true)) => {
            let mut row = probe.try_as("revoked intermediate", Expect::Refused, credential());
            if row.result == Verdict::Accepted {
                row.detail.push_str(&after);
            }
            rows.push(row);
        }
    }
    Ok(())
}

impl Probe {
    /// One attempt on a new connection presenting `credential`, without resumption: a full
    /// handshake the server must judge.
    fn try_as(&self, attack: &'static str, expected: Expect, credential: Credential) -> Row {
        let outcome = match self.client(credential, Versions::Default, false) {
            Ok(client) => self.attempt(&client),
            Err(e) => Outcome {
                result: Verdict::Inconclusive,
                detail: format!("{e:#}"),
                asked: false,
                resumed: false,
                unreachable: false,
            },
        };
        let row = outcome.into_row(attack, expected);
        tracing::debug!(attack, result = row.result.as_str(), "{}", row.detail);
        row
    }

    /// One attempt with `client`: handshake, then `GET`.
    fn attempt(&self, client: &Client) -> Outcome {
        client.asked.store(false, Ordering::SeqCst);
        let result = self.runtime.block_on(async {
            let attempt = async {
                let mut conn = client::connect(&self.target, client.config.clone())
                    .await
                    .map_err(|f| (f, false))?;
                let resumed = conn.resumed();
                let reply = conn.get(&self.target).await;
                conn.close().await;
                reply.map(|r| (r, resumed)).map_err(|f| (f, resumed))
            };
            tokio::time::timeout(self.timeout, attempt).await
        });
        judge(result, client.asked.load(Ordering::SeqCst), self.timeout)
    }

    /// A client configuration presenting `credential` (through [`Asked`]), offering
    /// `versions`, with a session store of its own if `resumable`.
    fn client(
        &self,
        credential: Credential,
        versions: Versions,
        resumable: bool,
    ) -> anyhow::Result<Client> {
        let inner: Option<Arc<dyn ResolvesClientCert>> = match credential {
            Credential::None => None,
            Credential::Leaf(chain, key) => Some(Arc::new(Always(Arc::new(
                CertifiedKey::from_der(chain, key, &provider())
                    .context("rustls refused the probe's own certificate")?,
            )))),
            Credential::Resolver(r) => Some(r),
        };
        let asked = Arc::new(AtomicBool::new(false));
        let builder = match versions {
            Versions::Default => ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions(),
            Versions::Only(version) => {
                ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[version])
            }
        }
        .context("no protocol version usable with the crypto provider")?;
        let mut config = builder
            .with_webpki_verifier(self.verifier.clone())
            .with_client_cert_resolver(Arc::new(Asked {
                inner,
                asked: asked.clone(),
            }));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let sessions = resumable.then(|| Arc::new(Sessions::new()));
        config.resumption = match &sessions {
            Some(store) => Resumption::store(store.clone()),
            None => Resumption::disabled(),
        };
        Ok(Client {
            config: Arc::new(config),
            asked,
            sessions,
        })
    }
}

/// How one attempt ended: a reply or a failure (each with whether the handshake resumed a
/// session), or no outcome within the time limit.
type Ending = Result<Result<(Reply, bool), (Failure, bool)>, tokio::time::error::Elapsed>;

/// The verdict on one attempt: what happened, and whether it counts as evidence.
fn judge(result: Ending, asked: bool, timeout: Duration) -> Outcome {
    let outcome = |result, detail, resumed, unreachable| Outcome {
        result,
        detail,
        asked,
        resumed,
        unreachable,
    };
    match result {
        Ok(Ok((reply, resumed))) => outcome(
            Verdict::Accepted,
            format!("HTTP {}", reply.status),
            resumed,
            false,
        ),
        Ok(Err((f, resumed))) if f.refused_by_server() => {
            if asked || resumed {
                outcome(Verdict::Refused, f.reason(), resumed, false)
            } else {
                outcome(
                    Verdict::Inconclusive,
                    format!(
                        "{}, but the server never asked for a client certificate (no \
                         CertificateRequest): this refusal says nothing about client \
                         authentication",
                        f.reason()
                    ),
                    resumed,
                    false,
                )
            }
        }
        Ok(Err((f, resumed))) => {
            let unreachable = matches!(f, Failure::Connect(_))
                || (matches!(f, Failure::Handshake(_)) && f.tls_error().is_some());
            let detail = match &f {
                Failure::Request { error, .. } if error.is_parse() || error.is_parse_status() => {
                    format!(
                        "the server answered something that is not HTTP: {}",
                        f.detail()
                    )
                }
                _ => f.detail(),
            };
            outcome(Verdict::Inconclusive, detail, resumed, unreachable)
        }
        Err(_) => outcome(
            Verdict::Inconclusive,
            format!("no outcome within {}", humantime::format_duration(timeout)),
            false,
            true,
        ),
    }
}

/// The crypto provider of the process (aws-lc-rs unless another was installed).
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// The good identity of `--cert/--key` or `--identity`, loaded once with the library's
/// one-shot load for a client (the verdict `hitless inspect --role client` gives).
fn control_identity(args: &Args) -> anyhow::Result<Option<Identity>> {
    let source = match (&args.identity, &args.cert, &args.key) {
        (None, None, None) => return Ok(None),
        (Some(bundle), None, None) => IdentitySource::bundle(bundle),
        (None, Some(cert), Some(key)) => IdentitySource::pair(cert, key),
        _ => bail!("give either --identity BUNDLE or --cert CERT --key KEY (or neither)"),
    };
    Identity::load(&source, hitless::Role::Client)
        .map(Some)
        .context("the control identity is not valid")
}

/// Reads `--ca-cert` (the CA first, then optionally its issuers) and `--ca-key`, and checks
/// they belong together.
fn load_ca(cert_path: &Path, key_path: &Path) -> anyhow::Result<TrustedCa> {
    let cert_pem = crate::files::read_regular(cert_path, MAX_INPUT_SIZE)
        .with_context(|| format!("{}: cannot read", cert_path.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: invalid PEM", cert_path.display()))?;
    let cert_der = chain
        .first()
        .ok_or_else(|| anyhow!("{}: no certificate found", cert_path.display()))?;
    let key_pem = crate::files::read_text(key_path, MAX_INPUT_SIZE)
        .with_context(|| format!("{}: cannot read", key_path.display()))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| {
        anyhow!(
            "{}: not a usable private key (PEM PKCS#8 expected): {e}",
            key_path.display()
        )
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| anyhow!("{}: not a valid certificate: {e}", cert_path.display()))?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        bail!(
            "{}: this key does not belong to the certificate in {}",
            key_path.display(),
            cert_path.display()
        );
    }
    let subject_der = parsed.subject().as_raw().to_vec();
    let key_id = parsed
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => {
                Some(KeyIdMethod::PreSpecified(id.0.to_vec()))
            }
            _ => None,
        })
        .unwrap_or(KeyIdMethod::Sha256);
    let path_len = parsed
        .basic_constraints()
        .ok()
        .flatten()
        .and_then(|bc| bc.value.path_len_constraint);
    let issuer = Issuer::from_ca_cert_der(cert_der, key)
        .map_err(|e| anyhow!("{}: cannot sign with this CA: {e}", cert_path.display()))?;
    Ok(TrustedCa {
        issuer,
        chain,
        subject_der,
        key_id,
        path_len,
    })
}

/// A new ECDSA P-256 key.
fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate().context("cannot generate a key")
}

/// A positive, non-zero 16-byte serial from the system's secure random source.
fn random_serial() -> anyhow::Result<Vec<u8>> {
    let mut serial = vec![0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| anyhow!("no secure random numbers from the system"))?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    Ok(serial)
}

/// Parameters of a client leaf named `cn`, valid from `not_before` to `not_after`, with a
/// random serial and the clientAuth EKU.
fn leaf_params(
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

/// A self-signed CA named `cn`, valid for a day either side of now.
fn new_ca(cn: &str) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let now = OffsetDateTime::now_utc();
    let mut params = leaf_params(
        cn,
        now - time::Duration::days(1),
        now + time::Duration::days(1),
    )?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = Vec::new();
    params.use_authority_key_identifier_extension = false;
    Ok(Issuer::new(params, new_key()?))
}

/// How a certificate the probe issues differs from a good client leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Defect {
    /// None: a good client leaf.
    None,
    /// The serverAuth extended key usage instead of clientAuth.
    ServerAuthOnly,
    /// basicConstraints CA:TRUE (and keyCertSign) on a client leaf.
    IsCa,
    /// Not a leaf: a good intermediate CA (pathLenConstraint 0), to issue leaves below it.
    IntermediateCa,
}

/// A certificate the probe issued, with its key and parameters (to sign with it).
struct Issued {
    cert: CertificateDer<'static>,
    key: KeyPair,
    params: CertificateParams,
    serial: Vec<u8>,
}

impl Issued {
    /// An issuer signing with this certificate's key and name (whether it may or not).
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

/// A certificate named `cn` signed by `issuer`, with a random serial.
fn issue<S: rcgen::SigningKey>(
    issuer: &Issuer<'_, S>,
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    defect: Defect,
) -> anyhow::Result<Issued> {
    let key = new_key()?;
    let serial = random_serial()?;
    let mut params = leaf_params(cn, not_before, not_after)?;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    match defect {
        Defect::None => {}
        Defect::ServerAuthOnly => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Defect::IsCa => {
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
            ];
        }
        Defect::IntermediateCa => {
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
            params.extended_key_usages = Vec::new();
        }
    }
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("cannot sign the certificate {cn:?}"))?;
    Ok(Issued {
        cert: cert.der().clone(),
        key,
        params,
        serial,
    })
}

/// A leaf credential from rcgen's certificate and key.
fn leaf(cert: &CertificateDer<'static>, key: &KeyPair) -> Credential {
    Credential::Leaf(
        vec![cert.clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// Presents a fixed chain and key, whatever the server asks for.
#[derive(Debug)]
struct Always(Arc<CertifiedKey>);

impl ResolvesClientCert for Always {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The control identity, sent as a client sends it: when it is issued by a CA the server
/// names and its key fits a signature scheme the server accepts (the choice
/// [`hitless::ClientIdentityResolver`] makes for one identity).
#[derive(Debug)]
struct AsClient(Identity);

impl ResolvesClientCert for AsClient {
    fn resolve(&self, hints: &[&[u8]], schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        let key = self.0.certified_key();
        (self.0.issued_by_any(hints) && key.key.choose_scheme(schemes).is_some())
            .then(|| key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The control's real certificate chain with a key that is not its own: the server must check
/// the CertificateVerify signature, not only the chain.
fn stolen(identity: &Identity) -> anyhow::Result<Arc<dyn ResolvesClientCert>> {
    let real = identity.certified_key();
    let key = new_key()?;
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .context("cannot load the probe's own key")?;
    // Deliberately not `CertifiedKey::from_der`, which would refuse the mismatch.
    Ok(Arc::new(Always(Arc::new(CertifiedKey::new(
        real.cert.clone(),
        signing_key,
    )))))
}

/// Writes to `path`, atomically (the exclusive-create writer `agent` uses), a CRL signed by
/// the CA revoking `serials` and everything the CRL already there (from the same CA) revoked.
fn write_crl(path: &Path, ca: &TrustedCa, serials: &[Vec<u8>]) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let (mut revoked, existing_number) = existing_revocations(path, ca)?;
    for serial in serials {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(serial),
            revocation_time: now - time::Duration::seconds(1),
            reason_code: None,
            invalidity_date: None,
        });
    }
    // CRL numbers must grow (a server refuses a CRL older than the one in force): continue
    // the number of the CRL being replaced, so that the CA's own next CRL (`hitless ca crl`)
    // still follows; for a new file, seconds since the epoch outrank any earlier CRL.
    let number = match existing_number {
        Some(n) => n.saturating_add(1),
        None => u64::try_from(now.unix_timestamp()).unwrap_or(1),
    };
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(1),
        next_update: now + time::Duration::days(1),
        crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: ca.key_id.clone(),
    };
    let crl = params
        .signed_by(&ca.issuer)
        .context("cannot sign a CRL with --ca-key")?;
    let pem = crl.pem().context("cannot encode the CRL as PEM")?;
    write_atomic(path, pem.as_bytes(), CERT_MODE)
        .with_context(|| format!("{}: cannot write the CRL", path.display()))
}

/// The revocations in the CRL at `path` (none if there is no file) and its highest CRL number.
/// Refuses a file that is not a CRL of this CA, rather than replace something the probe does
/// not understand.
fn existing_revocations(
    path: &Path,
    ca: &TrustedCa,
) -> anyhow::Result<(Vec<RevokedCertParams>, Option<u64>)> {
    let bytes = match crate::files::read_regular(path, MAX_INPUT_SIZE) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let mut ders: Vec<CertificateRevocationListDer<'static>> =
        CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: invalid PEM", path.display()))?;
    if ders.is_empty() && !bytes.iter().all(u8::is_ascii_whitespace) {
        ders.push(CertificateRevocationListDer::from(bytes)); // DER
    }
    let mut revoked = Vec::new();
    let mut number: Option<u64> = None;
    for der in &ders {
        let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|e| {
            anyhow!(
                "{}: not a CRL ({e}); refusing to replace it with --crl-out",
                path.display()
            )
        })?;
        if crl.issuer().as_raw() != ca.subject_der.as_slice() {
            bail!(
                "{}: holds a CRL of another issuer ({}); give --crl-out a file of --ca-cert's CRL",
                path.display(),
                crl.issuer()
            );
        }
        if let Some(n) = crl.crl_number().and_then(|n| u64::try_from(n).ok()) {
            number = number.max(Some(n));
        }
        for entry in crl.iter_revoked_certificates() {
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(entry.raw_serial()),
                revocation_time: entry.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    Ok((revoked, number))
}

/// The machine-readable report.
fn report_json(args: &Args, rows: &[Row]) -> serde_json::Value {
    let got_in: Vec<&str> = rows
        .iter()
        .filter(|r| r.expected == Expect::Refused && r.result == Verdict::Accepted)
        .map(|r| r.attack)
        .collect();
    json!({
        "url": args.url,
        "passed": rows.iter().all(Row::passed),
        "got_in": got_in,
        "attacks": rows.iter().map(|r| json!({
            "attack": r.attack,
            "expected": r.expected.as_str(),
            "result": r.result.as_str(),
            "passed": r.passed(),
            "detail": r.detail,
            "certificate_requested": r.certificate_requested,
            "resumed": r.resumed,
        })).collect::<Vec<_>>(),
    })
}

/// The report as a table for a person.
fn report_table(args: &Args, rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| r.attack.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!("hitless probe {}\n", args.url);
    let _ = writeln!(
        out,
        "  {:<width$}  {:<8}  {:<12}  detail",
        "attack", "expected", "result"
    );
    for r in rows {
        let mark = match (r.result, r.passed()) {
            (Verdict::Skipped, _) => "-",
            (_, true) => "ok",
            (_, false) => "FAIL",
        };
        let _ = writeln!(
            out,
            "  {:<width$}  {:<8}  {:<12}  {:<4} {}",
            r.attack,
            r.expected.as_str(),
            r.result.as_str(),
            mark,
            r.detail
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed CA written to `dir` as `NAME.pem` and `NAME.key`.
    fn write_ca(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = new_key().unwrap();
        let now = OffsetDateTime::now_utc();
        let mut params = leaf_params(
            name,
            now - time::Duration::days(1),
            now + time::Duration::days(1),
        )
        .unwrap();
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.extended_key_usages = Vec::new();
        let cert = params.self_signed(&key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn revoked_serials(path: &Path) -> Vec<Vec<u8>> {
        let der = CertificateRevocationListDer::from_pem_file(path).unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        crl.iter_revoked_certificates()
            .map(|r| r.raw_serial().to_vec())
            .collect()
    }

    #[test]
    fn crl_keeps_earlier_revocations_and_names_the_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_ca(dir.path(), "ca");
        let ca = load_ca(&cert, &key).unwrap();
        let crl = dir.path().join("crl.pem");
        let (first, second) = (vec![0x41; 16], vec![0x42; 16]);
        write_crl(&crl, &ca, std::slice::from_ref(&first)).unwrap();
        write_crl(&crl, &ca, std::slice::from_ref(&second)).unwrap();
        assert_eq!(revoked_serials(&crl), vec![first, second]);

        let der = CertificateRevocationListDer::from_pem_file(&crl).unwrap();
        let (_, parsed) = x509_parser::parse_x509_crl(&der).unwrap();
        let aki = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.as_ref().map(|k| k.0.to_vec())
                }
                _ => None,
            });
        let KeyIdMethod::PreSpecified(ski) = &ca.key_id else {
            panic!("the CA has a subject key identifier")
        };
        assert_eq!(
            aki.as_ref(),
            Some(ski),
            "the CRL's AKI must be the CA's SKI"
        );
    }

    #[test]
    fn crl_of_another_issuer_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_ca(dir.path(), "ca");
        let (other_cert, other_key) = write_ca(dir.path(), "other");
        let crl = dir.path().join("crl.pem");
        write_crl(
            &crl,
            &load_ca(&other_cert, &other_key).unwrap(),
            &[vec![0x41; 16]],
        )
        .unwrap();
        let before = std::fs::read(&crl).unwrap();
        let err = write_crl(&crl, &load_ca(&cert, &key).unwrap(), &[vec![0x42; 16]]).unwrap_err();
        assert!(format!("{err:#}").contains("another issuer"), "{err:#}");
        assert_eq!(std::fs::read(&crl).unwrap(), before);

        std::fs::write(&crl, "garbage").unwrap();
        let err = write_crl(&crl, &load_ca(&cert, &key).unwrap(), &[vec![0x42; 16]]).unwrap_err();
        assert!(format!("{err:#}").contains("crl.pem"), "{err:#}");
    }

    #[test]
    fn crl_is_written_by_exclusive_create_and_never_through_a_planted_link() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_ca(dir.path(), "ca");
        let ca = load_ca(&cert, &key).unwrap();
        let crl = dir.path().join("crl.pem");
        // Whoever may write the directory plants a symlink where a predictable temporary file
        // would go (the probe's own writer used `.NAME.hitless-probe.PID`, created by
        // following links): the victim must stay untouched and the CRL be a regular file.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let planted = dir
            .path()
            .join(format!(".crl.pem.hitless-probe.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        write_crl(&crl, &ca, &[vec![0x41; 16]]).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let meta = std::fs::symlink_metadata(&crl).unwrap();
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(revoked_serials(&crl), vec![vec![0x41; 16]]);
    }

    #[test]
    fn ca_key_must_match_ca_cert() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_ca(dir.path(), "ca");
        let (_, other_key) = write_ca(dir.path(), "other");
        let err = load_ca(&cert, &other_key)
            .err()
            .expect("a mismatched key is refused");
        assert!(format!("{err:#}").contains("does not belong"), "{err:#}");
    }
}
