//! Torture: clients make new full handshakes in a loop against a watched, reloading identity
//! while a writer rotates it as fast as it can, mixing good rotations with every kind of bad
//! write (truncated, garbage, empty, deleted, mismatched key, expired, not yet valid, wrong
//! PKCS#12 password, ...), for each way agents write files: rename of a bundle, in-place
//! rewrite of a certificate then its key, the Kubernetes `..data` swap, and a PKCS#12 keystore
//! with a password file.
//!
//! What must hold (checked at the end of each layout):
//! - no handshake fails: the last good identity keeps serving through every bad write;
//! - every leaf a client is shown is one of the GOOD generations written (never an expired, not
//!   yet valid, mismatched or half-written one);
//! - per client, generations only go forward (the snapshot only moves forward, and each client
//!   makes its handshakes one after the other);
//! - every bad write is refused (what is served does not change) and reported: the status'
//!   `reloads_failed` goes up and `last_error` names the file (and, where it is unambiguous, the
//!   reason) within the quiet period plus a generous margin; a `ReloadFailed` event is sent;
//! - every good write is served, and the final generation is exactly the number of distinct
//!   good writes (each good write is a new leaf).
//!
//! Nothing here asserts speed: every wait is bounded and polls an observable state.
//!
//! Length: `HITLESS_TORTURE_SECS` (default 80) is the total time across the four layouts, run
//! one after the other. `HITLESS_TORTURE_LONG=1` runs until 10,000 good rotations per layout
//! (or `HITLESS_TORTURE_ROTATIONS`), capped at `HITLESS_TORTURE_SECS` (default 4 h then).
//! `HITLESS_TORTURE_SEED` replays a run's random choices (the seed is printed).

mod common;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{client_config, connect, Server};
use hitless::{Detection, Event, IdentitySource, Password, ReloadingIdentity};
use hitless_test_pki::{k8s_swap, write_atomic, Ca, KeyFormat, KeyType, Leaf, LeafSpec};

/// Quiet period of the identity under test.
const QUIET: Duration = Duration::from_millis(100);
/// Bound on top of the quiet period for a write to be served or reported (shared, noisy
/// machines; a reported failure is retried with a 1 s, 2 s, 4 s... backoff).
const PATIENCE: Duration = Duration::from_secs(15);
/// Client threads making handshakes.
const CLIENTS: usize = 3;
/// Layouts sharing `HITLESS_TORTURE_SECS`.
const LAYOUTS: u32 = 4;

/// The layouts run one at a time, so that they do not starve each other of the two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

struct Settings {
    per_layout: Duration,
    max_good: Option<u64>,
    seed: u64,
}

fn settings() -> Settings {
    let env_u64 = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let long = std::env::var("HITLESS_TORTURE_LONG").is_ok_and(|v| v == "1");
    let total = env_u64("HITLESS_TORTURE_SECS").unwrap_or(if long { 4 * 3600 } else { 80 });
    let max_good = env_u64("HITLESS_TORTURE_ROTATIONS").or(long.then_some(10_000));
    let seed = env_u64("HITLESS_TORTURE_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    Settings {
        per_layout: Duration::from_secs(total.max(LAYOUTS as u64 * 5)) / LAYOUTS,
        max_good,
        seed,
    }
}

/// xorshift64*: reproducible from the printed seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in `lo..hi` (lo < hi).
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Every kind of bad write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Bad {
    /// A fresh, otherwise good credential cut short (a writer that died half-way).
    Truncated,
    /// Random bytes, sometimes dressed as a PEM block.
    Garbage,
    /// An empty file.
    Empty,
    /// The file is gone.
    Deleted,
    /// A certificate with a key that is not its own.
    Mismatched,
    /// A leaf whose validity ended yesterday.
    Expired,
    /// A leaf valid from tomorrow.
    NotYetValid,
    /// PKCS#12: the password file now holds a wrong password.
    WrongPasswordFile,
    /// PKCS#12: a new keystore encrypted with another password than the password file's.
    OtherPassword,
    /// PKCS#12: the password file is not UTF-8.
    PasswordNotUtf8,
}

const PEM_BADS: &[Bad] = &[
    Bad::Truncated,
    Bad::Garbage,
    Bad::Empty,
    Bad::Deleted,
    Bad::Mismatched,
    Bad::Expired,
    Bad::NotYetValid,
];

const P12_BADS: &[Bad] = &[
    Bad::Truncated,
    Bad::Garbage,
    Bad::Empty,
    Bad::Deleted,
    Bad::Mismatched,
    Bad::Expired,
    Bad::NotYetValid,
    Bad::WrongPasswordFile,
    Bad::OtherPassword,
    Bad::PasswordNotUtf8,
];

/// What the report of a bad write must say.
struct Expect {
    /// The file name the error message must contain.
    file: &'static str,
    /// A fragment of the reason, when only one reason is right.
    reason: Option<&'static str>,
    /// The fingerprint of a leaf that must never be served, if the write held one.
    never_served: Option<String>,
}

impl Expect {
    fn file(file: &'static str) -> Expect {
        Expect {
            file,
            reason: None,
            never_served: None,
        }
    }
    fn because(mut self, reason: &'static str) -> Expect {
        self.reason = Some(reason);
        self
    }
    fn leaf(mut self, leaf: &Leaf) -> Expect {
        self.never_served = Some(leaf.fingerprint_sha256_hex());
        self
    }
}

/// The test CA: a root (trusted by the clients) and an intermediate that issues every leaf.
struct Pki {
    root: Ca,
    inter: Ca,
    /// Whether leaves may have Ed25519 keys (OpenSSL 3.0 cannot read the PKCS#8 v2 Ed25519
    /// keys rcgen writes, so the PKCS#12 layout, made by `openssl pkcs12`, goes without).
    ed25519: bool,
}

impl Pki {
    fn new(ed25519: bool) -> Pki {
        let root = Ca::new_root("Torture Root", KeyType::EcP256);
        let inter = root.new_intermediate("Torture Intermediate", KeyType::EcP256);
        Pki {
            root,
            inter,
            ed25519,
        }
    }

    /// A good leaf; key types vary (RSA now and then: slow to generate).
    fn good(&self, n: u64) -> Leaf {
        let key_type = if n % 37 == 36 {
            KeyType::Rsa2048
        } else {
            let third = if self.ed25519 {
                KeyType::Ed25519
            } else {
                KeyType::EcP256
            };
            [KeyType::EcP256, KeyType::EcP384, third][(n % 3) as usize]
        };
        self.inter
            .issue(&LeafSpec::server("localhost").key_type(key_type))
    }

    fn valid_between(&self, from_now: time::Duration, until_now: time::Duration) -> Leaf {
        let now = time::OffsetDateTime::now_utc();
        self.inter
            .issue(&LeafSpec::server("localhost").valid(now + from_now, now + until_now))
    }

    fn expired(&self) -> Leaf {
        self.valid_between(time::Duration::days(-2), time::Duration::days(-1))
    }

    fn not_yet_valid(&self) -> Leaf {
        self.valid_between(time::Duration::days(1), time::Duration::days(2))
    }
}

/// The key PEM formats a leaf can be written in, varied per write.
fn key_pem(leaf: &Leaf, n: u64) -> String {
    if leaf.key_type.is_ec() && n % 2 == 1 {
        leaf.key_pem(KeyFormat::Sec1)
    } else if leaf.key_type.is_rsa() && n % 2 == 1 {
        leaf.key_pem(KeyFormat::Pkcs1)
    } else {
        leaf.key_pem(KeyFormat::Pkcs8)
    }
}

/// A good bundle in one of the forms agents write: plain, CRLF, blocks run together on one
/// line (a one-line template), key first.
fn bundle_variant(leaf: &Leaf, n: u64) -> String {
    let key = key_pem(leaf, n / 4);
    let plain = format!("{}{}", leaf.chain_pem, key);
    match n % 4 {
        0 => plain,
        1 => plain.replace('\n', "\r\n"),
        2 => plain.replace("-----\n-----", "----------"),
        _ => format!("{key}{}", leaf.chain_pem),
    }
}

/// Random bytes; every other time inside PEM armour so that the PEM parser gets past "no
/// block".
fn garbage(rng: &mut Rng) -> Vec<u8> {
    let len = rng.range(1, 2048);
    let body = rng.bytes(len);
    if rng.below(2) == 0 {
        body
    } else {
        let mut out = b"-----BEGIN CERTIFICATE-----\n".to_vec();
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ+/=\n\x00-";
        out.extend(body.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()]));
        out.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
        out
    }
}

/// PEM `text` cut before the END line of its last block. With `anywhere` (the last block is
/// the only private key, so any prefix lacks a whole key) the cut may fall anywhere; otherwise
/// it falls after the start of the last block's BEGIN line: a cut exactly between two blocks
/// leaves a shorter file that is complete and well-formed, which no reader can tell from a
/// file written that way (the fuzz tests cover those cuts).
fn truncated_pem(text: &[u8], rng: &mut Rng, anywhere: bool) -> Vec<u8> {
    let last_begin = text
        .windows(11)
        .rposition(|w| w == b"-----BEGIN ")
        .expect("a PEM block");
    let lo = if anywhere { 1 } else { last_begin + 12 };
    let cut = rng.range(lo, text.len() - 30);
    text[..cut].to_vec()
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The ways the credential is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// One bundle file replaced by rename.
    Rename,
    /// `tls.crt` then `tls.key` truncated and rewritten in place.
    InPlace,
    /// The kubelet's `..data` symlink swap of `tls.crt` + `tls.key`.
    K8s,
    /// `identity.p12` (rename) with its password in `identity.pass`.
    Pkcs12,
}

/// One layout's files and the writer's state.
struct Layout {
    kind: Kind,
    dir: PathBuf,
    /// Where `openssl` writes keystores before they are put in place (not watched).
    scratch: PathBuf,
    /// PKCS#12: the password the good keystores are encrypted with, and whether the password
    /// file holds it.
    password: String,
    password_file_ok: bool,
    /// Alternates which file of a pair a bad write damages.
    flip: bool,
}

impl Layout {
    fn new(kind: Kind) -> (Layout, tempfile::TempDir, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let layout = Layout {
            kind,
            dir: dir.path().to_path_buf(),
            scratch: scratch.path().to_path_buf(),
            password: "first password".into(),
            password_file_ok: false,
            flip: false,
        };
        (layout, dir, scratch)
    }

    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Rename => "rename bundle",
            Kind::InPlace => "in-place pair",
            Kind::K8s => "k8s ..data",
            Kind::Pkcs12 => "pkcs12 + password file",
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn source(&self) -> IdentitySource {
        match self.kind {
            Kind::Rename => IdentitySource::bundle(self.path("identity.pem")),
            Kind::InPlace | Kind::K8s => {
                IdentitySource::pair(self.path("tls.crt"), self.path("tls.key"))
            }
            Kind::Pkcs12 => IdentitySource::pkcs12(
                self.path("identity.p12"),
                Password::File(self.path("identity.pass")),
            ),
        }
    }

    fn bads(&self) -> &'static [Bad] {
        match self.kind {
            Kind::Pkcs12 => P12_BADS,
            _ => PEM_BADS,
        }
    }

    /// A PKCS#12 keystore of `leaf` made by `openssl pkcs12 -export`.
    fn p12(&self, leaf: &Leaf, password: &str) -> Vec<u8> {
        let (cert, key) = leaf.write_pair(&self.scratch, "leaf.crt", "leaf.key");
        let out = self.scratch.join("out.p12");
        run(Command::new("openssl")
            .args(["pkcs12", "-export", "-in"])
            .arg(&cert)
            .arg("-inkey")
            .arg(&key)
            .arg("-out")
            .arg(&out)
            .arg("-passout")
            .arg(format!("pass:{password}")));
        fs::read(&out).unwrap()
    }

    /// A PKCS#12 keystore holding `key_of`'s key and `cert_of`'s certificate (openssl refuses
    /// to pair them, so the certificate goes in as an extra one).
    fn p12_mismatched(&self, cert_of: &Leaf, key_of: &Leaf, password: &str) -> Vec<u8> {
        let (_, key) = key_of.write_pair(&self.scratch, "other.crt", "other.key");
        let (cert, _) = cert_of.write_pair(&self.scratch, "leaf.crt", "leaf.key");
        let out = self.scratch.join("mismatched.p12");
        run(Command::new("openssl")
            .args(["pkcs12", "-export", "-nocerts", "-inkey"])
            .arg(&key)
            .arg("-certfile")
            .arg(&cert)
            .arg("-out")
            .arg(&out)
            .arg("-passout")
            .arg(format!("pass:{password}")));
        fs::read(&out).unwrap()
    }

    fn write_pair_in_place(&self, cert: &[u8], key: &[u8]) {
        fs::write(self.path("tls.crt"), cert).unwrap();
        fs::write(self.path("tls.key"), key).unwrap();
    }

    /// Writes good leaf number `n`.
    fn write_good(&mut self, leaf: &Leaf, n: u64, rng: &mut Rng) {
        match self.kind {
            Kind::Rename => write_atomic(
                &self.path("identity.pem"),
                bundle_variant(leaf, n).as_bytes(),
            ),
            Kind::InPlace => {
                fs::write(self.path("tls.crt"), &leaf.chain_pem).unwrap();
                // Sometimes a writer that pauses between the two files (less than the quiet
                // period: a pause longer than that is reported, correctly, as a mismatch).
                if rng.below(4) == 0 {
                    thread::sleep(QUIET / 4);
                }
                fs::write(self.path("tls.key"), key_pem(leaf, n)).unwrap();
            }
            Kind::K8s => {
                let key = key_pem(leaf, n);
                k8s_swap(
                    &self.dir,
                    &[
                        ("tls.crt", leaf.chain_pem.as_bytes()),
                        ("tls.key", key.as_bytes()),
                    ],
                );
            }
            Kind::Pkcs12 => {
                // Every fifth rotation also changes the password: keystore first, then the
                // password file (a moment where the two disagree, which must not be served).
                let rotate_password = n % 5 == 4;
                if !self.password_file_ok && !rotate_password {
                    write_atomic(
                        &self.path("identity.pass"),
                        format!("{}\n", self.password).as_bytes(),
                    );
                    self.password_file_ok = true;
                }
                if rotate_password {
                    self.password = format!("password {n} {:x}", rng.next());
                }
                let p12 = self.p12(leaf, &self.password);
                write_atomic(&self.path("identity.p12"), &p12);
                if rotate_password {
                    write_atomic(
                        &self.path("identity.pass"),
                        format!("{}\n", self.password).as_bytes(),
                    );
                    self.password_file_ok = true;
                }
            }
        }
    }

    /// Writes a bad credential of kind `bad`; says what its report must name.
    fn write_bad(&mut self, bad: Bad, pki: &Pki, rng: &mut Rng) -> Expect {
        self.flip = !self.flip;
        match self.kind {
            Kind::Rename => self.bad_bundle(bad, pki, rng),
            Kind::InPlace | Kind::K8s => self.bad_pair(bad, pki, rng),
            Kind::Pkcs12 => self.bad_p12(bad, pki, rng),
        }
    }

    fn bad_bundle(&mut self, bad: Bad, pki: &Pki, rng: &mut Rng) -> Expect {
        let path = self.path("identity.pem");
        const F: &str = "identity.pem";
        let (bytes, expect) = match bad {
            Bad::Truncated => {
                let leaf = pki.good(rng.next());
                let variant = rng.next();
                let b = bundle_variant(&leaf, variant);
                // Variant 3 puts the key first: the last block is a certificate.
                let anywhere = variant % 4 != 3;
                (
                    truncated_pem(b.as_bytes(), rng, anywhere),
                    Expect::file(F).leaf(&leaf),
                )
            }
            Bad::Garbage => (garbage(rng), Expect::file(F)),
            Bad::Empty => (Vec::new(), Expect::file(F).because("empty")),
            Bad::Deleted => {
                fs::remove_file(&path).unwrap();
                return Expect::file(F).because("cannot read");
            }
            Bad::Mismatched => {
                let (cert, key) = (pki.good(rng.next()), pki.good(rng.next()));
                let b = format!("{}{}", cert.chain_pem, key_pem(&key, rng.next()));
                (
                    b.into_bytes(),
                    Expect::file(F)
                        .because("matches no certificate")
                        .leaf(&cert),
                )
            }
            Bad::Expired => {
                let leaf = pki.expired();
                (
                    bundle_variant(&leaf, rng.next()).into_bytes(),
                    Expect::file(F).because("expired").leaf(&leaf),
                )
            }
            Bad::NotYetValid => {
                let leaf = pki.not_yet_valid();
                (
                    bundle_variant(&leaf, rng.next()).into_bytes(),
                    Expect::file(F).because("not valid before").leaf(&leaf),
                )
            }
            other => unreachable!("{other:?} is not a PEM bad write"),
        };
        write_atomic(&path, &bytes);
        expect
    }

    /// A bad pair: in place (certificate then key) or as one `..data` swap.
    fn bad_pair(&mut self, bad: Bad, pki: &Pki, rng: &mut Rng) -> Expect {
        let in_place = self.kind == Kind::InPlace;
        // Which file a one-file fault hits: the certificate or the key, in turn.
        let (target, target_name) = if self.flip {
            ("tls.crt", "tls.crt")
        } else {
            ("tls.key", "tls.key")
        };
        let current = |name: &str| fs::read(self.path(name)).ok();
        let one_file = |this: &Layout, bytes: Vec<u8>| {
            if in_place {
                fs::write(this.path(target), bytes).unwrap();
            } else {
                // The other file of the swap keeps its current content.
                let other = if target == "tls.crt" {
                    "tls.key"
                } else {
                    "tls.crt"
                };
                let other_bytes = current(other).unwrap_or_default();
                k8s_swap(&this.dir, &[(target, &bytes), (other, &other_bytes)]);
            }
        };
        let both = |this: &Layout, cert: &[u8], key: &[u8]| {
            if in_place {
                this.write_pair_in_place(cert, key);
            } else {
                k8s_swap(&this.dir, &[("tls.crt", cert), ("tls.key", key)]);
            }
        };
        match bad {
            Bad::Truncated => {
                let leaf = pki.good(rng.next());
                let bytes = if target == "tls.crt" {
                    truncated_pem(leaf.chain_pem.as_bytes(), rng, false)
                } else {
                    truncated_pem(key_pem(&leaf, rng.next()).as_bytes(), rng, true)
                };
                one_file(self, bytes);
                Expect::file(target_name).leaf(&leaf)
            }
            Bad::Garbage => {
                one_file(self, garbage(rng));
                Expect::file(target_name)
            }
            Bad::Empty => {
                one_file(self, Vec::new());
                Expect::file(target_name).because("empty")
            }
            Bad::Deleted => {
                if in_place {
                    fs::remove_file(self.path(target)).unwrap();
                } else {
                    // The Secret lost a key: the swap removes its `tls.*` symlink.
                    let other = if target == "tls.crt" {
                        "tls.key"
                    } else {
                        "tls.crt"
                    };
                    let other_bytes = current(other).unwrap_or_default();
                    k8s_swap(&self.dir, &[(other, &other_bytes)]);
                }
                Expect::file(target_name).because("cannot read")
            }
            Bad::Mismatched => {
                let (cert, key) = (pki.good(rng.next()), pki.good(rng.next()));
                both(
                    self,
                    cert.chain_pem.as_bytes(),
                    key_pem(&key, rng.next()).as_bytes(),
                );
                Expect::file("tls.key")
                    .because("matches no certificate")
                    .leaf(&cert)
            }
            Bad::Expired | Bad::NotYetValid => {
                let (leaf, reason) = if bad == Bad::Expired {
                    (pki.expired(), "expired")
                } else {
                    (pki.not_yet_valid(), "not valid before")
                };
                both(
                    self,
                    leaf.chain_pem.as_bytes(),
                    key_pem(&leaf, rng.next()).as_bytes(),
                );
                Expect::file("tls.crt").because(reason).leaf(&leaf)
            }
            other => unreachable!("{other:?} is not a PEM bad write"),
        }
    }

    fn bad_p12(&mut self, bad: Bad, pki: &Pki, rng: &mut Rng) -> Expect {
        let path = self.path("identity.p12");
        const F: &str = "identity.p12";
        let password = self.password.clone();
        let (bytes, expect) = match bad {
            Bad::Truncated => {
                let leaf = pki.good(rng.next());
                let p12 = self.p12(&leaf, &password);
                let cut = rng.range(1, p12.len());
                (p12[..cut].to_vec(), Expect::file(F).leaf(&leaf))
            }
            Bad::Garbage => (garbage(rng), Expect::file(F)),
            Bad::Empty => (Vec::new(), Expect::file(F).because("empty")),
            Bad::Deleted => {
                fs::remove_file(&path).unwrap();
                return Expect::file(F).because("cannot read");
            }
            Bad::Mismatched => {
                let (cert, key) = (pki.good(rng.next()), pki.good(rng.next()));
                (
                    self.p12_mismatched(&cert, &key, &password),
                    Expect::file(F).leaf(&cert),
                )
            }
            Bad::Expired | Bad::NotYetValid => {
                let (leaf, reason) = if bad == Bad::Expired {
                    (pki.expired(), "expired")
                } else {
                    (pki.not_yet_valid(), "not valid before")
                };
                (
                    self.p12(&leaf, &password),
                    Expect::file(F).because(reason).leaf(&leaf),
                )
            }
            Bad::OtherPassword => {
                let leaf = pki.good(rng.next());
                (
                    self.p12(&leaf, &format!("not {password}")),
                    Expect::file(F).because("wrong password").leaf(&leaf),
                )
            }
            Bad::WrongPasswordFile => {
                write_atomic(
                    &self.path("identity.pass"),
                    format!("wrong {:x}\n", rng.next()).as_bytes(),
                );
                self.password_file_ok = false;
                return Expect::file(F).because("wrong password");
            }
            Bad::PasswordNotUtf8 => {
                write_atomic(&self.path("identity.pass"), b"\xff\xfe\xc3(\n");
                self.password_file_ok = false;
                return Expect::file("identity.pass").because("UTF-8");
            }
        };
        write_atomic(&path, &bytes);
        expect
    }
}

/// What one client thread saw.
#[derive(Default)]
struct Seen {
    handshakes: u64,
    /// Each leaf fingerprint when it changed from the previous handshake's.
    transitions: Vec<String>,
    failures: Vec<String>,
}

/// What the writer did.
#[derive(Default)]
struct Written {
    /// Good writes after the first one (each a new leaf).
    good: u64,
    bad: HashMap<Bad, u64>,
    /// One report message per bad kind, for the log.
    sample: HashMap<Bad, String>,
    /// Fingerprints of leaves held by bad writes.
    never_served: HashSet<String>,
}

/// Polls `f` every millisecond until it returns `Some`, for at most `timeout`.
fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn torture(kind: Kind) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let settings = settings();
    let (mut layout, _dir, _scratch) = Layout::new(kind);
    let name = layout.name();
    let seed = settings.seed ^ (kind as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut rng = Rng::new(seed);
    let started = Instant::now();

    let pki = Pki::new(kind != Kind::Pkcs12);
    let first = pki.good(0);
    // fingerprint -> index of the good write (0 = the first).
    let good_index: Arc<Mutex<HashMap<String, u64>>> = Arc::new(Mutex::new(HashMap::new()));
    good_index
        .lock()
        .unwrap()
        .insert(first.fingerprint_sha256_hex(), 0);
    layout.write_good(&first, 0, &mut rng);

    let failed_events = Arc::new(AtomicU64::new(0));
    let counter = failed_events.clone();
    let identity = ReloadingIdentity::builder(layout.source())
        .detection(Detection::Watch)
        .quiet_period(QUIET)
        .on_event(move |e| {
            if let Event::ReloadFailed { .. } = e {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
        .build()
        .unwrap_or_else(|e| panic!("{name}: first load: {e}"));
    let config = common::server_builder()
        .with_no_client_auth()
        .with_cert_resolver(identity.resolver());
    let server = Server::start(Arc::new(config));
    let client = client_config(&pki.root, None);
    let mut long_lived = connect(server.addr, &client, "localhost")
        .unwrap_or_else(|e| panic!("{name}: first connection: {e}"));

    // What the writer is doing, for the message of a failed handshake.
    let doing = Arc::new(Mutex::new(String::from("start")));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (stop, doing, client, addr) =
                (stop.clone(), doing.clone(), client.clone(), server.addr);
            thread::spawn(move || {
                let mut seen = Seen::default();
                while !stop.load(Ordering::Relaxed) {
                    match connect(addr, &client, "localhost") {
                        Ok(c) => {
                            seen.handshakes += 1;
                            if seen.transitions.last() != Some(&c.fingerprint) {
                                seen.transitions.push(c.fingerprint);
                            }
                        }
                        Err(e) => {
                            let during = doing.lock().unwrap().clone();
                            seen.failures.push(format!("{e} (during {during})"));
                        }
                    }
                }
                seen
            })
        })
        .collect();

    // The writer (this thread): 1 to 3 good rotations, then one bad write of the next kind, until
    // the time is up and every kind was written at least once; then one last good rotation.
    let mut written = Written::default();
    let mut last_good = first.fingerprint_sha256_hex();
    let mut problems: Vec<String> = Vec::new();
    let bads = layout.bads();
    let mut next_bad = 0usize;
    let out_of_time = |written: &Written, next_bad: usize| {
        next_bad >= bads.len()
            && (started.elapsed() >= settings.per_layout
                || settings.max_good.is_some_and(|m| written.good >= m))
    };
    let good_write = |layout: &mut Layout,
                      written: &mut Written,
                      last_good: &mut String,
                      rng: &mut Rng|
     -> Result<(), String> {
        let n = written.good + 1;
        let leaf = pki.good(n);
        let fp = leaf.fingerprint_sha256_hex();
        good_index.lock().unwrap().insert(fp.clone(), n);
        *doing.lock().unwrap() = format!("good write {n}");
        layout.write_good(&leaf, n, rng);
        written.good = n;
        let served = poll(QUIET + PATIENCE, || {
            identity
                .current()
                .filter(|c| c.value.leaf().fingerprint == fp)
        })
        .ok_or_else(|| {
            format!(
                "good write {n} not served within {:?}; status {:?}",
                QUIET + PATIENCE,
                identity.status()
            )
        })?;
        if served.generation != n + 1 {
            return Err(format!(
                "good write {n} served as generation {} (expected {})",
                served.generation,
                n + 1
            ));
        }
        *last_good = fp;
        Ok(())
    };
    while problems.is_empty() && !out_of_time(&written, next_bad) {
        for _ in 0..rng.range(1, 4) {
            if let Err(e) = good_write(&mut layout, &mut written, &mut last_good, &mut rng) {
                problems.push(e);
                break;
            }
        }
        if !problems.is_empty() {
            break;
        }
        let bad = bads[next_bad % bads.len()];
        next_bad += 1;
        let before = identity.status();
        *doing.lock().unwrap() = format!("bad write {bad:?}");
        let expect = layout.write_bad(bad, &pki, &mut rng);
        *written.bad.entry(bad).or_default() += 1;
        written.never_served.extend(expect.never_served.clone());
        let reported = poll(QUIET + PATIENCE, || {
            let s = identity.status();
            let e = s.last_error.as_ref()?;
            (s.reloads_failed > before.reloads_failed
                && e.message.contains(expect.file)
                && expect.reason.is_none_or(|r| e.message.contains(r)))
            .then_some(s)
        });
        let Some(status) = reported else {
            problems.push(format!(
                "bad write {bad:?} not reported naming {} (reason {:?}) within {:?}: {:?}",
                expect.file,
                expect.reason,
                QUIET + PATIENCE,
                identity.status()
            ));
            break;
        };
        let e = status.last_error.as_ref().unwrap();
        if e.path.is_none() {
            problems.push(format!("{bad:?}: last_error has no path: {e:?}"));
        }
        written
            .sample
            .entry(bad)
            .or_insert_with(|| e.message.clone());
        // Refused: still serving the last good write, same generation.
        let current = identity.current().unwrap();
        if current.value.leaf().fingerprint != last_good || current.generation != written.good + 1 {
            problems.push(format!(
                "bad write {bad:?} replaced what was served: generation {} leaf {}",
                current.generation,
                current.value.leaf().fingerprint
            ));
        }
        if let Err(e) = long_lived.ping() {
            problems.push(format!(
                "the long-lived connection broke after {bad:?}: {e}"
            ));
        }
    }
    if problems.is_empty() {
        if let Err(e) = good_write(&mut layout, &mut written, &mut last_good, &mut rng) {
            problems.push(e);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let status = identity.status();
    let elapsed = started.elapsed();

    // Report.
    let handshakes: u64 = seen.iter().map(|s| s.handshakes).sum();
    let bad_total: u64 = written.bad.values().sum();
    let generations_seen: HashSet<&String> = seen.iter().flat_map(|s| &s.transitions).collect();
    println!(
        "{name}: {elapsed:.1?}, seed {seed}: {} good rotations, {bad_total} bad writes {:?}, \
         {handshakes} handshakes by {CLIENTS} clients ({} generations seen), generation {}, \
         reloads_ok {}, reloads_failed {}, ReloadFailed events {}",
        written.good,
        written.bad,
        generations_seen.len(),
        status.generation,
        status.reloads_ok,
        status.reloads_failed,
        failed_events.load(Ordering::Relaxed),
    );
    let mut samples: Vec<_> = written.sample.iter().collect();
    samples.sort_by_key(|(k, _)| format!("{k:?}"));
    for (bad, message) in samples {
        println!("  {name}: {bad:?} reported as: {message}");
    }

    // Checks.
    assert!(problems.is_empty(), "{name} (seed {seed}): {problems:#?}");
    let failures: Vec<&String> = seen.iter().flat_map(|s| &s.failures).collect();
    assert!(
        failures.is_empty(),
        "{name} (seed {seed}): {} of {} handshakes failed, first ones: {:#?}",
        failures.len(),
        handshakes + failures.len() as u64,
        &failures[..failures.len().min(5)]
    );
    let good_index = good_index.lock().unwrap();
    for (client, s) in seen.iter().enumerate() {
        assert!(
            s.handshakes > 0,
            "{name}: client {client} made no handshake"
        );
        let mut previous = 0u64;
        for fp in &s.transitions {
            let Some(&index) = good_index.get(fp) else {
                panic!(
                    "{name} (seed {seed}): client {client} was served leaf {fp}, which was {}",
                    if written.never_served.contains(fp) {
                        "written by a BAD write"
                    } else {
                        "never written"
                    }
                );
            };
            assert!(
                index >= previous,
                "{name} (seed {seed}): client {client} saw good write {index} after {previous}"
            );
            previous = index;
        }
    }
    assert_eq!(
        status.generation,
        written.good + 1,
        "{name}: generation vs distinct good writes"
    );
    assert_eq!(status.reloads_ok, status.generation, "{name}: reloads_ok");
    assert_eq!(
        identity.current().unwrap().value.leaf().fingerprint,
        last_good
    );
    assert!(
        status.last_error.is_none(),
        "{name}: error left after the last good write: {:?}",
        status.last_error
    );
    assert!(
        status.reloads_failed >= bad_total,
        "{name}: {} failures reported for {bad_total} bad writes",
        status.reloads_failed
    );
    assert!(
        failed_events.load(Ordering::Relaxed) >= bad_total,
        "{name}: fewer ReloadFailed events than bad writes"
    );
    for bad in bads {
        assert!(
            written.bad.contains_key(bad),
            "{name}: {bad:?} never written"
        );
    }
    long_lived
        .ping()
        .unwrap_or_else(|e| panic!("{name}: the long-lived connection broke: {e}"));
    drop(server);
}

#[test]
fn torture_rename_of_a_bundle() {
    torture(Kind::Rename);
}

#[test]
fn torture_in_place_rewrite_of_cert_then_key() {
    torture(Kind::InPlace);
}

#[test]
fn torture_kubernetes_data_swap() {
    torture(Kind::K8s);
}

#[test]
fn torture_pkcs12_with_password_file() {
    torture(Kind::Pkcs12);
}
