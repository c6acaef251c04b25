//! The development PKI behind `hitless ca` and `hitless agent`: a root and an intermediate CA kept
//! in one directory, the short-lived leaves they issue, revocations and CRLs.
//!
//! It exists so the whole system runs on one machine with nothing installed. It is not a CA for
//! anything real: keys are plain PEM files (mode 0600), and the state file (CRL number and
//! revoked serials) has no locking, so run one `ca revoke`/`ca crl` at a time. What it gets right
//! is what verifiers check: explicit validity windows, random positive 16-byte serials, key
//! identifiers, basic constraints, key usages and EKUs, CRLs signed by the issuing intermediate.
//!
//! Directory contents (file names are the `*_FILE` constants):
//!
//! ```text
//! root.pem          root CA certificate             ca-bundle.pem  the root again, to trust
//! root.key          root CA key (0600)              chain.pem      the intermediate, to send
//! intermediate.pem  intermediate CA certificate     state.json     CRL number, revoked serials
//! intermediate.key  intermediate CA key (0600)
//! ```
//!
//! Leaves are always issued by the intermediate. How an [`Issued`] identity is written to disk the
//! way real agents write it (rename, in place, Kubernetes `..data`, certbot) is in [`layout`].

pub mod layout;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, RsaKeySize, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use layout::{write_atomic, CERT_MODE, KEY_MODE};

/// Root CA certificate.
pub const ROOT_CERT_FILE: &str = "root.pem";
/// Root CA private key.
pub const ROOT_KEY_FILE: &str = "root.key";
/// Intermediate CA certificate (the issuer of every leaf).
pub const INTERMEDIATE_CERT_FILE: &str = "intermediate.pem";
/// Intermediate CA private key.
pub const INTERMEDIATE_KEY_FILE: &str = "intermediate.key";
/// The trust bundle to give peers: the root certificate.
pub const CA_BUNDLE_FILE: &str = "ca-bundle.pem";
/// The chain to send after a leaf: the intermediate certificate.
pub const CHAIN_FILE: &str = "chain.pem";
/// CRL number and revoked serials (JSON).
pub const STATE_FILE: &str = "state.json";

/// Every file `ca init` writes, in the order it writes them.
const CA_FILES: [&str; 7] = [
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    INTERMEDIATE_CERT_FILE,
    INTERMEDIATE_KEY_FILE,
    CA_BUNDLE_FILE,
    CHAIN_FILE,
    STATE_FILE,
];

/// Validity of the root CA from its creation.
const ROOT_VALIDITY: time::Duration = time::Duration::days(3650);
/// Validity of the intermediate CA from its creation.
const INTERMEDIATE_VALIDITY: time::Duration = time::Duration::days(1825);
/// How far every `notBefore` (and a CRL's `thisUpdate`) is put in the past, so a peer whose clock
/// is a little behind does not see a certificate that is "not yet valid" (OpenBao backdates 30 s).
const BACKDATE: time::Duration = time::Duration::minutes(1);

/// Private-key algorithm of a CA or leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256.
    #[value(name = "ec-p256")]
    EcP256,
    /// ECDSA on P-384 with SHA-384.
    #[value(name = "ec-p384")]
    EcP384,
    /// RSA 2048-bit, PKCS#1 v1.5 with SHA-256.
    #[value(name = "rsa2048")]
    Rsa2048,
    /// Ed25519.
    #[value(name = "ed25519")]
    Ed25519,
}

impl KeyType {
    /// Generates a fresh key pair of this type.
    fn generate(self) -> anyhow::Result<KeyPair> {
        let key = match self {
            KeyType::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::EcP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519).and_then(ed25519_v1),
            KeyType::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
            }
        };
        key.with_context(|| format!("cannot generate a {self:?} key"))
    }
}

/// The Ed25519 PKCS#8 DER aws-lc generates is version 2 (RFC 5958: seed plus public key), which
/// OpenSSL 3.0 refuses to read ("unsupported"); the same key as version 1 (RFC 8410: the seed
/// only) is read by everything. Any other encoding is returned as it is.
fn ed25519_v1(key: KeyPair) -> Result<KeyPair, rcgen::Error> {
    // SEQUENCE(81) { INTEGER 1, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING(32) } ...
    const V2_PREFIX: [u8; 16] = [
        0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    // ... [1] IMPLICIT BIT STRING(33) { 0 unused bits, public key } }
    const V2_PUBLIC_KEY_TAG: [u8; 3] = [0x81, 0x21, 0x00];
    let der = key.serialized_der();
    if der.len() != 83 || der[..16] != V2_PREFIX || der[48..51] != V2_PUBLIC_KEY_TAG {
        return Ok(key);
    }
    let mut v1 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    v1.extend_from_slice(&der[16..48]);
    KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(v1), &rcgen::PKCS_ED25519)
}

/// What a leaf is for: which extended key usage it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// serverAuth; the name becomes a DNS SAN (IP SAN if it is an address).
    Server,
    /// clientAuth; the name is the subject common name.
    Client,
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    /// Subject common name; for a server also a DNS SAN (or an IP SAN if it parses as one), and
    /// `localhost` also gets the IP SANs 127.0.0.1 and ::1.
    pub name: String,
    /// Server or client certificate.
    pub kind: Kind,
    /// Key algorithm of the leaf.
    pub key_type: KeyType,
    /// Lifetime from now (`notBefore` is backdated a minute on top of it).
    pub ttl: std::time::Duration,
    /// Further DNS SANs.
    pub dns: Vec<String>,
    /// Further IP SANs.
    pub ips: Vec<IpAddr>,
}

impl LeafSpec {
    /// The subjectAltNames of this leaf, without duplicates, in a stable order.
    fn subject_alt_names(&self) -> anyhow::Result<Vec<SanType>> {
        let mut dns: Vec<&str> = Vec::new();
        let mut ips: Vec<IpAddr> = Vec::new();
        if self.kind == Kind::Server {
            match self.name.parse::<IpAddr>() {
                Ok(ip) => ips.push(ip),
                Err(_) => dns.push(&self.name),
            }
            if self.name == "localhost" {
                ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
                ips.push(IpAddr::V6(Ipv6Addr::LOCALHOST));
            }
        }
        dns.extend(self.dns.iter().map(String::as_str));
        ips.extend(self.ips.iter().copied());
        let mut sans = Vec::new();
        for (i, name) in dns.iter().enumerate() {
            if dns[..i].contains(name) {
                continue;
            }
            let ia5 = Ia5String::try_from(*name)
                .with_context(|| format!("{name:?} cannot be a DNS name (ASCII only)"))?;
            sans.push(SanType::DnsName(ia5));
        }
        for (i, ip) in ips.iter().enumerate() {
            if !ips[..i].contains(ip) {
                sans.push(SanType::IpAddress(*ip));
            }
        }
        Ok(sans)
    }
}

/// A leaf just issued by the [`DevCa`], with everything an agent writes.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Serial number content bytes as encoded (positive, 16 bytes).
    pub serial: Vec<u8>,
    /// The leaf certificate, PEM.
    pub cert_pem: String,
    /// The issuing CA (the intermediate), PEM: what goes after the leaf in a chain.
    pub chain_pem: String,
    /// The leaf's private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The root certificate, PEM: the trust anchor for peers.
    pub ca_pem: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Issued {
    /// The serial number as lowercase hex, as `ca revoke --serial` takes it.
    pub fn serial_hex(&self) -> String {
        hex(&self.serial)
    }

    /// Leaf then intermediate: a `tls.crt`, certbot's `fullchain.pem`.
    pub fn fullchain_pem(&self) -> String {
        format!(
            "{}{}",
            with_newline(&self.cert_pem),
            with_newline(&self.chain_pem)
        )
    }

    /// Leaf, issuing CA, key: one bundle as an OpenBao/Vault Agent template renders it.
    pub fn bundle_pem(&self) -> String {
        format!("{}{}", self.fullchain_pem(), with_newline(&self.key_pem))
    }

    /// `notAfter` in RFC 3339, for logs.
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }
}

/// One revoked serial in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Revoked {
    /// Lowercase hex, no leading zero bytes.
    serial: String,
    /// Unix time of the `ca revoke`.
    revoked_at: i64,
}

/// The mutable part of a CA directory (`state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    /// The number the next CRL gets.
    next_crl_number: u64,
    /// Every revoked serial, oldest first.
    revoked: Vec<Revoked>,
}

impl Default for State {
    fn default() -> Self {
        State {
            next_crl_number: 1,
            revoked: Vec::new(),
        }
    }
}

/// A development CA loaded from (or created in) a directory: the intermediate that signs leaves
/// and CRLs, and the root that peers trust.
pub struct DevCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    intermediate_pem: String,
    intermediate_not_after: OffsetDateTime,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("dir", &self.dir)
            .field("intermediate_not_after", &self.intermediate_not_after)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// Creates a root and an intermediate of `key_type` in `dir` (created if missing).
    ///
    /// Refuses if any CA file already exists there, unless `force`, which replaces the CA and
    /// so invalidates everything the old one issued.
    pub fn init(dir: &Path, key_type: KeyType, force: bool) -> anyhow::Result<DevCa> {
        if !force {
            if let Some(existing) = CA_FILES.iter().map(|f| dir.join(f)).find(|p| p.exists()) {
                bail!(
                    "{} exists: refusing to overwrite a CA (--force replaces it, and everything \
                     it issued stops being trusted)",
                    existing.display()
                );
            }
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the CA directory {}", dir.display()))?;
        let now = now();

        // Every CA gets its own names: two CAs with the same name (a CA rotation) would make
        // verifiers match one CA's CRL against the other's certificates.
        let id = hex(&random_serial()?[..4]);
        let root_key = key_type.generate()?;
        let mut root_params = ca_params(
            &format!("hitless development root CA {id}"),
            now,
            ROOT_VALIDITY,
        )?;
        root_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        let root_cert = root_params
            .self_signed(&root_key)
            .context("cannot self-sign the root CA")?;
        let root = Issuer::new(root_params, root_key);

        let int_key = key_type.generate()?;
        let mut int_params = ca_params(
            &format!("hitless development intermediate CA {id}"),
            now,
            INTERMEDIATE_VALIDITY,
        )?;
        int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        int_params.use_authority_key_identifier_extension = true;
        let intermediate_not_after = int_params.not_after;
        let int_cert = int_params
            .signed_by(&int_key, &root)
            .context("cannot sign the intermediate CA")?;

        let root_pem = root_cert.pem();
        let intermediate_pem = int_cert.pem();
        let files: [(&str, &str, u32); 6] = [
            (ROOT_CERT_FILE, &root_pem, CERT_MODE),
            (ROOT_KEY_FILE, &root.key().serialize_pem(), KEY_MODE),
            (INTERMEDIATE_CERT_FILE, &intermediate_pem, CERT_MODE),
            (INTERMEDIATE_KEY_FILE, &int_key.serialize_pem(), KEY_MODE),
            (CA_BUNDLE_FILE, &root_pem, CERT_MODE),
            (CHAIN_FILE, &intermediate_pem, CERT_MODE),
        ];
        for (name, contents, mode) in files {
            write_atomic(&dir.join(name), contents.as_bytes(), mode)?;
        }
        let ca = DevCa {
            dir: dir.to_path_buf(),
            issuer: Issuer::new(int_params, int_key),
            root_pem,
            intermediate_pem,
            intermediate_not_after,
        };
        ca.save_state(&State::default())?;
        Ok(ca)
    }

    /// Loads the CA in `dir` (made by [`DevCa::init`]), checking that the intermediate's key
    /// matches its certificate.
    pub fn load(dir: &Path) -> anyhow::Result<DevCa> {
        let root_path = dir.join(ROOT_CERT_FILE);
        if !root_path.exists() {
            bail!(
                "{} not found: no CA in {} (create one with `hitless ca init --dir {}`)",
                root_path.display(),
                dir.display(),
                dir.display()
            );
        }
        let root_pem = read_to_string(&root_path)?;
        let int_path = dir.join(INTERMEDIATE_CERT_FILE);
        let intermediate_pem = read_to_string(&int_path)?;
        let key_path = dir.join(INTERMEDIATE_KEY_FILE);
        let int_key = KeyPair::from_pem(&read_to_string(&key_path)?)
            .with_context(|| format!("{}: not a usable private key", key_path.display()))?;

        let int_der = CertificateDer::from_pem_slice(intermediate_pem.as_bytes())
            .with_context(|| format!("{}: no PEM certificate", int_path.display()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&int_der)
            .map_err(|e| anyhow::anyhow!("{}: not a valid certificate: {e}", int_path.display()))?;
        if parsed.public_key().raw != int_key.subject_public_key_info().as_slice() {
            bail!(
                "{} does not match the certificate in {}",
                key_path.display(),
                int_path.display()
            );
        }
        let intermediate_not_after =
            OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp())
                .with_context(|| format!("{}: notAfter out of range", int_path.display()))?;
        let issuer = Issuer::from_ca_cert_der(&int_der, int_key)
            .with_context(|| format!("{}: not usable as an issuer", int_path.display()))?;
        Ok(DevCa {
            dir: dir.to_path_buf(),
            issuer,
            root_pem,
            intermediate_pem,
            intermediate_not_after,
        })
    }

    /// The root certificate, PEM (the trust bundle for peers).
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Issues a leaf signed by the intermediate, valid from a minute ago to `spec.ttl` from now.
    ///
    /// Fails if that would outlive the intermediate. Issued serials are not recorded: revoking
    /// needs the serial that was printed or logged (or the certificate file).
    pub fn issue(&self, spec: &LeafSpec) -> anyhow::Result<Issued> {
        let exact_now = OffsetDateTime::now_utc();
        let now = whole_seconds(exact_now);
        // Rounded up to a whole second: the leaf is valid for at least the TTL.
        let not_after = time::Duration::try_from(spec.ttl)
            .ok()
            .filter(|ttl| ttl.is_positive())
            .and_then(|ttl| exact_now.checked_add(ttl))
            .and_then(|t| match t.nanosecond() {
                0 => Some(t),
                _ => whole_seconds(t).checked_add(time::Duration::SECOND),
            })
            .with_context(|| format!("TTL {:?} is out of range", spec.ttl))?;
        if not_after > self.intermediate_not_after {
            bail!(
                "a leaf valid until {} would outlive the intermediate CA in {} (valid until {})",
                rfc3339(not_after),
                self.dir.display(),
                rfc3339(self.intermediate_not_after)
            );
        }
        let key = spec.key_type.generate()?;
        let serial = random_serial()?;

        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, spec.name.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names = spec.subject_alt_names()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.key_type == KeyType::Rsa2048 && spec.kind == Kind::Server {
            // TLS 1.2 RSA key exchange needs it; harmless otherwise.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = vec![match spec.kind {
            Kind::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Kind::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .signed_by(&key, &self.issuer)
            .with_context(|| format!("cannot sign a leaf for {:?}", spec.name))?;
        Ok(Issued {
            serial,
            cert_pem: cert.pem(),
            chain_pem: self.intermediate_pem.clone(),
            key_pem: key.serialize_pem(),
            ca_pem: self.root_pem.clone(),
            not_after,
        })
    }

    /// Records `serial` (hex, colons and a leading `0x` allowed) as revoked; the next
    /// [`DevCa::crl`] lists it. Returns the normalized serial and whether it was new.
    pub fn revoke(&self, serial: &str) -> anyhow::Result<(String, bool)> {
        let serial = normalize_serial(serial)?;
        let mut state = self.load_state()?;
        if state.revoked.iter().any(|r| r.serial == serial) {
            return Ok((serial, false));
        }
        state.revoked.push(Revoked {
            serial: serial.clone(),
            revoked_at: now().unix_timestamp(),
        });
        self.save_state(&state)?;
        Ok((serial, true))
    }

    /// A PEM CRL signed by the intermediate listing every revoked serial, valid from a minute ago
    /// until `next_update` from now. Each call uses (and records) the next CRL number. Returns
    /// the PEM and how many serials it lists.
    pub fn crl(&self, next_update: std::time::Duration) -> anyhow::Result<(String, usize)> {
        let mut state = self.load_state()?;
        let now = now();
        let next_update = time::Duration::try_from(next_update)
            .ok()
            .filter(|d| d.is_positive())
            .and_then(|d| now.checked_add(d))
            .with_context(|| format!("next update {next_update:?} is out of range"))?;
        let this_update = now - BACKDATE;
        let mut revoked_certs = Vec::with_capacity(state.revoked.len());
        for r in &state.revoked {
            let bytes = parse_hex(&r.serial).with_context(|| {
                format!(
                    "{}: bad revoked serial {:?}",
                    self.dir.join(STATE_FILE).display(),
                    r.serial
                )
            })?;
            let revocation_time =
                OffsetDateTime::from_unix_timestamp(r.revoked_at).with_context(|| {
                    format!(
                        "{}: bad revocation time {}",
                        self.dir.join(STATE_FILE).display(),
                        r.revoked_at
                    )
                })?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&bytes),
                // Never after thisUpdate, which is backdated.
                revocation_time: revocation_time.min(this_update),
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&state.next_crl_number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .context("cannot sign the CRL")?;
        let pem = crl.pem().context("cannot encode the CRL")?;
        state.next_crl_number += 1;
        self.save_state(&state)?;
        Ok((pem, state.revoked.len()))
    }

    fn load_state(&self) -> anyhow::Result<State> {
        let path = self.dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a valid CA state file", path.display())),
            // A CA directory put together by hand: nothing revoked yet.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    fn save_state(&self, state: &State) -> anyhow::Result<()> {
        let mut json = serde_json::to_vec_pretty(state).context("cannot encode the CA state")?;
        json.push(b'\n');
        write_atomic(&self.dir.join(STATE_FILE), &json, CERT_MODE)
    }
}

/// The serial of the first certificate in the PEM file `path`, normalized like
/// [`DevCa::revoke`] does.
pub fn serial_of_cert_file(path: &Path) -> anyhow::Result<String> {
    let der = CertificateDer::from_pem_file(path)
        .with_context(|| format!("{}: no PEM certificate", path.display()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow::anyhow!("{}: not a valid certificate: {e}", path.display()))?;
    normalize_serial(&hex(cert.raw_serial()))
}

/// Parameters shared by the root and the intermediate.
fn ca_params(
    cn: &str,
    now: OffsetDateTime,
    validity: time::Duration,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "hitless development PKI");
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

/// Now, in whole seconds (what a certificate can encode).
fn now() -> OffsetDateTime {
    whole_seconds(OffsetDateTime::now_utc())
}

/// `t` without its fraction of a second.
fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

/// A random positive serial of exactly 16 content bytes (high bit clear, first byte non-zero, so
/// its DER encoding is these bytes as they are).
fn random_serial() -> anyhow::Result<Vec<u8>> {
    let mut serial = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut serial)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    serial[0] &= 0x7f;
    if serial[0] == 0 {
        serial[0] = 1;
    }
    Ok(serial.to_vec())
}

/// Lowercase hex, no separators, no leading zero bytes (at least one byte).
fn normalize_serial(input: &str) -> anyhow::Result<String> {
    let bytes = parse_hex(input)?;
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len().saturating_sub(1));
    Ok(hex(&bytes[first..]))
}

/// Parses hex with optional `0x` prefix and `:` separators; an odd digit count gets a leading 0.
fn parse_hex(input: &str) -> anyhow::Result<Vec<u8>> {
    let trimmed = input.trim();
    let digits: String = trimmed
        .strip_prefix("0x")
        .or_else(|| trimmed.strip_prefix("0X"))
        .unwrap_or(trimmed)
        .chars()
        .filter(|c| *c != ':')
        .collect();
    if digits.is_empty() || digits.len() > 42 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "{input:?} is not a serial number (up to 20 bytes of hex, e.g. 3f:a2:... or 3fa2...)"
        );
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    (0..padded.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&padded[i..i + 2], 16)
                .with_context(|| format!("{input:?} is not a serial number"))
        })
        .collect()
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3339 in UTC, whole seconds.
pub fn rfc3339(t: OffsetDateTime) -> String {
    humantime::format_rfc3339_seconds(SystemTime::from(t)).to_string()
}

fn with_newline(pem: &str) -> String {
    if pem.ends_with('\n') {
        pem.to_string()
    } else {
        format!("{pem}\n")
    }
}

fn read_to_string(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_normalize() {
        assert_eq!(normalize_serial("00:3F:a2").unwrap(), "3fa2");
        assert_eq!(normalize_serial("0x3fa2").unwrap(), "3fa2");
        assert_eq!(normalize_serial("abc").unwrap(), "0abc");
        assert_eq!(normalize_serial("00").unwrap(), "00");
        assert!(normalize_serial("").is_err());
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial(&"ab".repeat(22)).is_err());
    }

    #[test]
    fn random_serials_are_positive_16_bytes() {
        for _ in 0..64 {
            let s = random_serial().unwrap();
            assert_eq!(s.len(), 16);
            assert!(s[0] != 0 && s[0] & 0x80 == 0);
        }
    }

    #[test]
    fn ed25519_keys_are_written_as_pkcs8_v1() {
        let key = KeyType::Ed25519.generate().unwrap();
        let der = key.serialized_der();
        assert_eq!(der.len(), 48, "{der:02x?}");
        assert_eq!(&der[2..5], &[0x02, 0x01, 0x00], "version 0 (v1)");
        let reread = KeyPair::from_pem(&key.serialize_pem()).unwrap();
        assert_eq!(reread.public_key_raw(), key.public_key_raw());
    }

    #[test]
    fn localhost_server_gets_loopback_ip_sans() {
        let spec = LeafSpec {
            name: "localhost".into(),
            kind: Kind::Server,
            key_type: KeyType::EcP256,
            ttl: std::time::Duration::from_secs(60),
            dns: vec!["localhost".into(), "example.test".into()],
            ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        };
        let sans = spec.subject_alt_names().unwrap();
        assert_eq!(sans.len(), 4, "{sans:?}");
    }
}
