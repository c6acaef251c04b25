//! `hitless probe`: proves that a server refuses whoever it must.
//!
//! The probe makes its attacking credentials at run time (rcgen) and tries each against the
//! server on a fresh connection with no session resumption: no client certificate, a
//! self-signed one, one from an unknown CA; with `--cert/--key`, the real certificate with a
//! wrong key; and with the CA's own certificate and key (`--ca-cert/--ca-key`, test set-ups),
//! a certificate signed by an impostor CA of the same name, an expired one, a not-yet-valid
//! one, one without the clientAuth extended key usage, and a revoked one (the probe writes a
//! CRL revoking it to `--crl-out` and waits for the server to reload it).
//!
//! Controls prove that a refusal means something: the given good identity (`--cert/--key`)
//! and a fresh certificate from the CA must be accepted, and the revoked certificate is the
//! same fresh certificate, accepted just before its revocation.
//!
//! "Accepted" means an HTTP response arrived (any status). "Refused" means the server sent an
//! alert or closed the connection during the handshake or before the first response (with TLS
//! 1.3 the verdict on a client certificate arrives after the client's side of the handshake,
//! at the first read). Anything else (no TCP connection, the server's own certificate not
//! trusted by `--ca`, a timeout) is "inconclusive" and fails the probe too.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hitless::{
    ClientIdentityResolver, Detection, IdentitySource, ReloadingIdentity, ReloadingTrust,
    TrustSource,
};
use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use serde_json::json;
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;

use crate::client::{self, Target};

/// Flags of `hitless probe`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  hitless probe https://localhost:8443/ --ca ca.pem
  hitless probe https://localhost:8443/ --ca ca.pem --cert good.crt --key good.key \\
      --ca-cert ca.pem --ca-key ca.key --crl-out /etc/server/crl.pem --json

Exit status: 0 if every attack was refused and every control accepted; 1 otherwise (the
attacks that got in are named on stderr).")]
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
    /// Where the server reads its CRL: the probe writes (atomically) a CRL revoking its own
    /// certificate there, keeping the revocations already in it. Enables the "revoked" attack.
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
    /// The server turned the client away.
    Refused,
    /// The server answered a request.
    Accepted,
    /// The attempt proves nothing either way (no connection, server not trusted, timeout).
    Inconclusive,
    /// Not tried: a flag it needs was not given.
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
        Row {
            attack,
            expected,
            result: Verdict::Skipped,
            detail: why.to_string(),
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
}

impl TrustedCa {
    /// A credential of a leaf issued by this CA (or by an impostor of it), with the CA chain.
    fn leaf(&self, cert: &CertificateDer<'static>, key: &KeyPair) -> Credential {
        let mut chain = vec![cert.clone()];
        chain.extend(self.chain.iter().cloned());
        Credential::Leaf(chain, PrivateKeyDer::Pkcs8(key.serialize_der().into()))
    }
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
        .map(|t| t.value.server_verifier().clone())
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
    if !other.is_empty() {
        eprintln!("hitless probe: not as expected: {}", other.join("; "));
    }
    Ok(if got_in.is_empty() && other.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the attempts in order; the revoked attack last, since it waits for a CRL reload.
fn attack(
    args: &Args,
    probe: &Probe,
    control: Option<&ReloadingIdentity>,
    ca: Option<&TrustedCa>,
) -> anyhow::Result<Vec<Row>> {
    let now = OffsetDateTime::now_utc();
    let hour = time::Duration::hours(1);
    let day = time::Duration::days(1);
    let needs_ca = "needs --ca-cert and --ca-key";
    let needs_cert = "needs a good identity (--cert/--key or --identity)";
    let mut rows = Vec::new();

    let first = probe.try_as("no client certificate", Expect::Refused, Credential::None);
    if first.result == Verdict::Inconclusive {
        // Every other attempt would end the same way: say it once.
        bail!("cannot probe {}: {}", args.url, first.detail);
    }
    rows.push(first);

    let key = new_key()?;
    let cert = leaf_params("hitless-probe self-signed", now - hour, now + hour)?
        .self_signed(&key)
        .context("cannot make a self-signed certificate")?;
    rows.push(probe.try_as("self-signed", Expect::Refused, leaf(cert.der(), &key)));

    let unknown = new_ca("hitless-probe unknown CA")?;
    let (cert, key) = issue(
        &unknown,
        "hitless-probe unknown CA client",
        now - hour,
        now + hour,
        true,
    )?;
    rows.push(probe.try_as("unknown CA", Expect::Refused, leaf(&cert, &key)));

    match ca {
        Some(ca) => {
            // Same name (and key identifier) as the trusted CA, another key: only the
            // signature tells them apart.
            let impostor = Issuer::from_ca_cert_der(&ca.chain[0], new_key()?)
                .context("cannot read --ca-cert to make an impostor of it")?;
            let (cert, key) = issue(
                &impostor,
                "hitless-probe impostor",
                now - hour,
                now + hour,
                true,
            )?;
            rows.push(probe.try_as("impostor CA", Expect::Refused, ca.leaf(&cert, &key)));
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

    let defective: [(&'static str, OffsetDateTime, OffsetDateTime, bool); 3] = [
        ("expired", now - 2 * day, now - day, true),
        ("not yet valid", now + day, now + 2 * day, true),
        ("no clientAuth EKU", now - hour, now + hour, false),
    ];
    for (name, not_before, not_after, client_auth) in defective {
        match ca {
            Some(ca) => {
                let cn = format!("hitless-probe {name}");
                let (cert, key) = issue(&ca.issuer, &cn, not_before, not_after, client_auth)?;
                rows.push(probe.try_as(name, Expect::Refused, ca.leaf(&cert, &key)));
            }
            None => rows.push(Row::skipped(name, Expect::Refused, needs_ca)),
        }
    }

    match control {
        Some(identity) => rows.push(probe.try_as(
            "control",
            Expect::Accepted,
            Credential::Resolver(Arc::new(ClientIdentityResolver::new(vec![
                identity.clone(),
            ]))),
        )),
        None => rows.push(Row::skipped("control", Expect::Accepted, needs_cert)),
    }

    let Some(ca) = ca else {
        rows.push(Row::skipped("fresh from CA", Expect::Accepted, needs_ca));
        rows.push(Row::skipped("revoked", Expect::Refused, needs_ca));
        return Ok(rows);
    };
    let serial = random_serial()?;
    let (cert, key) = issue_with_serial(
        &ca.issuer,
        "hitless-probe fresh",
        now - hour,
        now + hour,
        true,
        &serial,
    )?;
    let fresh = probe.try_as("fresh from CA", Expect::Accepted, ca.leaf(&cert, &key));
    let fresh_accepted = fresh.result == Verdict::Accepted;
    rows.push(fresh);

    let Some(crl_out) = &args.crl_out else {
        rows.push(Row::skipped("revoked", Expect::Refused, "needs --crl-out"));
        return Ok(rows);
    };
    if !fresh_accepted {
        rows.push(Row {
            attack: "revoked",
            expected: Expect::Refused,
            result: Verdict::Inconclusive,
            detail: "the fresh certificate was refused before its revocation, so a refusal \
                     after it would prove nothing"
                .into(),
        });
        return Ok(rows);
    }
    write_crl(crl_out, ca, &serial)?;
    tracing::info!(
        crl = %crl_out.display(),
        wait = %humantime::format_duration(args.crl_reload_wait),
        "wrote a CRL revoking the fresh certificate; waiting for the server to reload it"
    );
    std::thread::sleep(args.crl_reload_wait);
    let mut revoked = probe.try_as("revoked", Expect::Refused, ca.leaf(&cert, &key));
    if revoked.result == Verdict::Accepted {
        let _ = write!(
            revoked.detail,
            " (after revocation in {} and {} of waiting)",
            crl_out.display(),
            humantime::format_duration(args.crl_reload_wait)
        );
    }
    rows.push(revoked);
    Ok(rows)
}

impl Probe {
    /// One attempt on a new connection: handshake, then `GET`.
    fn try_as(&self, attack: &'static str, expected: Expect, credential: Credential) -> Row {
        let (result, detail) = match self.client_config(credential) {
            Err(e) => (Verdict::Inconclusive, format!("{e:#}")),
            Ok(config) => self.runtime.block_on(async {
                let attempt = async {
                    let mut conn = client::connect(&self.target, config).await?;
                    let reply = conn.get(&self.target).await;
                    conn.close().await;
                    reply
                };
                match tokio::time::timeout(self.timeout, attempt).await {
                    Ok(Ok(reply)) => (Verdict::Accepted, format!("HTTP {}", reply.status)),
                    Ok(Err(f)) if f.refused_by_server() => (Verdict::Refused, f.reason()),
                    Ok(Err(f)) => (Verdict::Inconclusive, f.detail()),
                    Err(_) => (
                        Verdict::Inconclusive,
                        format!(
                            "no outcome within {}",
                            humantime::format_duration(self.timeout)
                        ),
                    ),
                }
            }),
        };
        tracing::debug!(attack, result = result.as_str(), "{detail}");
        Row {
            attack,
            expected,
            result,
            detail,
        }
    }

    /// A client configuration presenting `credential`, without resumption (each attempt is a
    /// full handshake the server must judge).
    fn client_config(&self, credential: Credential) -> anyhow::Result<Arc<ClientConfig>> {
        let builder = ClientConfig::builder().with_webpki_verifier(self.verifier.clone());
        let mut config = match credential {
            Credential::None => builder.with_no_client_auth(),
            Credential::Leaf(chain, key) => builder
                .with_client_auth_cert(chain, key)
                .context("rustls refused the probe's own certificate")?,
            Credential::Resolver(r) => builder.with_client_cert_resolver(r),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Arc::new(config))
    }
}

/// The good identity of `--cert/--key` or `--identity`, loaded once.
fn control_identity(args: &Args) -> anyhow::Result<Option<ReloadingIdentity>> {
    let source = match (&args.identity, &args.cert, &args.key) {
        (None, None, None) => return Ok(None),
        (Some(bundle), None, None) => IdentitySource::bundle(bundle),
        (None, Some(cert), Some(key)) => IdentitySource::pair(cert, key),
        _ => bail!("give either --identity BUNDLE or --cert CERT --key KEY (or neither)"),
    };
    ReloadingIdentity::builder(source)
        .name("control")
        .detection(Detection::Manual)
        .build()
        .map(Some)
        .context("the control identity is not valid")
}

/// Reads `--ca-cert` (the CA first, then optionally its issuers) and `--ca-key`, and checks
/// they belong together.
fn load_ca(cert_path: &Path, key_path: &Path) -> anyhow::Result<TrustedCa> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("{}: cannot read", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: invalid PEM", cert_path.display()))?;
    let cert_der = chain
        .first()
        .ok_or_else(|| anyhow!("{}: no certificate found", cert_path.display()))?;
    let key_pem = std::fs::read_to_string(key_path)
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
    let issuer = Issuer::from_ca_cert_der(cert_der, key)
        .map_err(|e| anyhow!("{}: cannot sign with this CA: {e}", cert_path.display()))?;
    Ok(TrustedCa {
        issuer,
        chain,
        subject_der,
        key_id,
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
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.extended_key_usages = Vec::new();
    params.use_authority_key_identifier_extension = false;
    Ok(Issuer::new(params, new_key()?))
}

/// A client leaf signed by `issuer` (with the clientAuth EKU, or serverAuth only).
fn issue(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    client_auth: bool,
) -> anyhow::Result<(CertificateDer<'static>, KeyPair)> {
    issue_with_serial(
        issuer,
        cn,
        not_before,
        not_after,
        client_auth,
        &random_serial()?,
    )
}

/// [`issue`] with a given serial.
fn issue_with_serial(
    issuer: &Issuer<'_, KeyPair>,
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    client_auth: bool,
    serial: &[u8],
) -> anyhow::Result<(CertificateDer<'static>, KeyPair)> {
    let key = new_key()?;
    let mut params = leaf_params(cn, not_before, not_after)?;
    params.serial_number = Some(SerialNumber::from_slice(serial));
    if !client_auth {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    }
    let cert = params
        .signed_by(&key, issuer)
        .with_context(|| format!("cannot sign the certificate {cn:?}"))?;
    Ok((cert.der().clone(), key))
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

/// The control's real certificate chain with a key that is not its own: the server must check
/// the CertificateVerify signature, not only the chain.
fn stolen(identity: &ReloadingIdentity) -> anyhow::Result<Arc<dyn ResolvesClientCert>> {
    let real = identity
        .certified_key()
        .ok_or_else(|| anyhow!("the control identity is not loaded"))?;
    let key = new_key()?;
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let signing_key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .context("cannot load the probe's own key")?;
    // Deliberately not `CertifiedKey::from_der`, which would refuse the mismatch.
    Ok(Arc::new(Always(Arc::new(CertifiedKey::new(
        real.cert.clone(),
        signing_key,
    )))))
}

/// Writes to `path`, atomically, a CRL signed by the CA revoking `serial` and everything the
/// CRL already there (from the same CA) revoked.
fn write_crl(path: &Path, ca: &TrustedCa, serial: &[u8]) -> anyhow::Result<()> {
    let now = OffsetDateTime::now_utc();
    let mut revoked = existing_revocations(path, ca)?;
    revoked.push(RevokedCertParams {
        serial_number: SerialNumber::from_slice(serial),
        revocation_time: now - time::Duration::seconds(1),
        reason_code: None,
        invalidity_date: None,
    });
    // CRL numbers must grow: seconds since the epoch do, across runs.
    let number = u64::try_from(now.unix_timestamp()).unwrap_or(1);
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
    write_atomic(path, pem.as_bytes())
}

/// The revocations in the CRL at `path` (none if there is no file). Refuses a file that is not
/// a CRL of this CA, rather than replace something the probe does not understand.
fn existing_revocations(path: &Path, ca: &TrustedCa) -> anyhow::Result<Vec<RevokedCertParams>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
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
        for entry in crl.iter_revoked_certificates() {
            revoked.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(entry.raw_serial()),
                revocation_time: entry.revocation_date.to_datetime(),
                reason_code: None,
                invalidity_date: None,
            });
        }
    }
    Ok(revoked)
}

/// Writes a temporary file beside `path`, syncs it, and renames it over `path`.
fn write_atomic(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{}: not a file name", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.hitless-probe.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("{}: cannot write the CRL: {e}", path.display())
    })
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
        write_crl(&crl, &ca, &first).unwrap();
        write_crl(&crl, &ca, &second).unwrap();
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
            &[0x41; 16],
        )
        .unwrap();
        let before = std::fs::read(&crl).unwrap();
        let err = write_crl(&crl, &load_ca(&cert, &key).unwrap(), &[0x42; 16]).unwrap_err();
        assert!(format!("{err:#}").contains("another issuer"), "{err:#}");
        assert_eq!(std::fs::read(&crl).unwrap(), before);

        std::fs::write(&crl, "garbage").unwrap();
        let err = write_crl(&crl, &load_ca(&cert, &key).unwrap(), &[0x42; 16]).unwrap_err();
        assert!(format!("{err:#}").contains("crl.pem"), "{err:#}");
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
