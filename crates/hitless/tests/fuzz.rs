//! Property tests ("fuzzing" on stable Rust, with proptest): no input makes the loaders panic,
//! every input ends as either a valid identity (or trust) or a typed `hitless::Error` whose
//! message names the file, and inputs that only change the form of a good file (block order,
//! CRLF, blocks run together, duplicated certificates, text between blocks) keep their meaning.
//!
//! Loaders covered: PEM identities (`Identity::from_pem`, bundle and pair), DER inside PEM
//! armour (X.509 and private-key parsers), PKCS#12 keystores (through a `Manual` handle on a
//! temporary file), CRLs in PEM and DER and CA bundles (through a `Manual` trust handle).
//!
//! Bounded for CI: 512 cases per pure-parsing property and 64 per file-based one, unless
//! `PROPTEST_CASES` says otherwise (e.g. `PROPTEST_CASES=100000` for a long run).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use hitless::{
    Detection, Error, Identity, IdentitySource, Password, ReloadingIdentity, ReloadingTrust,
    TrustSource,
};
use hitless_test_pki::{sha256_hex, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------------------
// Bounds.

/// `PROPTEST_CASES` if set, else `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // Mutations are cheap to generate; most rejections come from `prop_assume!`.
        max_global_rejects: cases.saturating_mul(4).max(1024),
        ..ProptestConfig::default()
    }
}

/// Cases per pure-parsing property.
const PARSE_CASES: u32 = 512;
/// Cases per property that writes files and builds a handle.
const FILE_CASES: u32 = 64;

// ---------------------------------------------------------------------------------------------
// Fixtures: real identities, keystores and CRLs, made once.

/// One PEM block of a fixture.
#[derive(Debug, Clone)]
struct Block {
    label: &'static str,
    der: Vec<u8>,
}

impl Block {
    fn is_key(&self) -> bool {
        self.label.contains("PRIVATE KEY")
    }
    fn pem(&self) -> String {
        armour(self.label, &self.der)
    }
}

/// A good identity as PEM blocks: leaf, intermediate, (root,) key.
#[derive(Debug, Clone)]
struct Fixture {
    name: &'static str,
    blocks: Vec<Block>,
    leaf_fp: String,
    /// What must be sent: leaf then intermediate (never the root).
    chain_fps: Vec<String>,
}

struct Fixtures {
    identities: Vec<Fixture>,
    /// (name, PKCS#12 bytes, password, leaf fingerprint)
    p12s: Vec<(&'static str, Vec<u8>, String, String)>,
    ca_pem: String,
    /// A CRL revoking a few serials, DER.
    crl_der: Vec<u8>,
}

fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let root = Ca::new_root("Fuzz Root", KeyType::EcP256);
        let inter = root.new_intermediate("Fuzz Intermediate", KeyType::EcP256);
        let make = |name: &'static str, key_type: KeyType, format: KeyFormat, with_root: bool| {
            let leaf = inter.issue(&LeafSpec::server("localhost").key_type(key_type));
            let key_label = match format {
                KeyFormat::Pkcs8 => "PRIVATE KEY",
                KeyFormat::Pkcs1 => "RSA PRIVATE KEY",
                KeyFormat::Sec1 => "EC PRIVATE KEY",
            };
            let key_der = pem_body(&leaf.key_pem(format));
            let mut blocks = vec![
                Block {
                    label: "CERTIFICATE",
                    der: leaf.cert_der.clone(),
                },
                Block {
                    label: "CERTIFICATE",
                    der: inter.cert_der(),
                },
            ];
            if with_root {
                blocks.push(Block {
                    label: "CERTIFICATE",
                    der: root.cert_der(),
                });
            }
            blocks.push(Block {
                label: key_label,
                der: key_der,
            });
            Fixture {
                name,
                blocks,
                leaf_fp: leaf.fingerprint_sha256_hex(),
                chain_fps: vec![leaf.fingerprint_sha256_hex(), sha256_hex(&inter.cert_der())],
            }
        };
        let identities = vec![
            make("P-256 PKCS#8", KeyType::EcP256, KeyFormat::Pkcs8, false),
            make("P-384 SEC1 + root", KeyType::EcP384, KeyFormat::Sec1, true),
            make("RSA-2048 PKCS#1", KeyType::Rsa2048, KeyFormat::Pkcs1, false),
            make(
                "Ed25519 PKCS#8 + root",
                KeyType::Ed25519,
                KeyFormat::Pkcs8,
                true,
            ),
        ];

        let dir = tempfile::tempdir().unwrap();
        let p12_leaf = inter.issue(&LeafSpec::server("localhost"));
        let p12s = [("OpenSSL 3 default", false), ("OpenSSL -legacy", true)]
            .into_iter()
            .map(|(name, legacy)| {
                let password = format!("pässword {name}");
                let bytes = openssl_p12(dir.path(), &p12_leaf, legacy, &password);
                (name, bytes, password, p12_leaf.fingerprint_sha256_hex())
            })
            .collect();

        let revoked: Vec<Vec<u8>> = (0..3)
            .map(|_| inter.issue(&LeafSpec::client("revoked")).serial)
            .collect();
        let crl_der = root.crl(&revoked, time::Duration::hours(1)).der;
        Fixtures {
            identities,
            p12s,
            ca_pem: root.cert_pem(),
            crl_der,
        }
    })
}

fn openssl_p12(dir: &Path, leaf: &Leaf, legacy: bool, password: &str) -> Vec<u8> {
    let (cert, key) = leaf.write_pair(dir, "leaf.crt", "leaf.key");
    let out = dir.join("out.p12");
    let mut cmd = Command::new("openssl");
    cmd.args(["pkcs12", "-export", "-in"])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&out)
        .arg("-passout")
        .arg(format!("pass:{password}"));
    if legacy {
        cmd.arg("-legacy");
    }
    let ran = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (is it installed?): {e}"));
    assert!(
        ran.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    std::fs::read(&out).unwrap()
}

// ---------------------------------------------------------------------------------------------
// PEM helpers (own encoder/decoder, so the test does not share the parser under test).

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(text: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes() {
        let Some(v) = B64.iter().position(|&b| b == c) else {
            continue;
        };
        bits = (bits << 6) | v as u32;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
        }
    }
    out
}

/// A PEM block, 64 columns, newline-terminated.
fn armour(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DER of the (first) block of `pem`.
fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    unbase64(&body)
}

// ---------------------------------------------------------------------------------------------
// Mutations.

/// One byte-level change.
#[derive(Debug, Clone)]
enum Op {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    /// Insert a token that parsers care about.
    Token(Index, &'static [u8]),
    /// Copy a slice to another place (repeats structure).
    Repeat(Index, Index, usize),
}

const TOKENS: &[&[u8]] = &[
    b"-----BEGIN CERTIFICATE-----\n",
    b"-----END CERTIFICATE-----\n",
    b"-----BEGIN PRIVATE KEY-----\n",
    b"-----END PRIVATE KEY-----",
    b"-----BEGIN EC PRIVATE KEY-----",
    b"-----BEGIN RSA PRIVATE KEY-----\n",
    b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n",
    b"-----BEGIN X509 CRL-----\n",
    b"-----END X509 CRL-----\n",
    b"-----BEGIN ",
    b"-----END ",
    b"-----",
    b"\r",
    b"\n",
    b"\r\n",
    b"=",
    b"==\n",
    b" ",
    b"\0",
    b"\xef\xbb\xbf",
    b"\xf0\x9f\x98\x80",
    b"\x30\x82\xff\xff",
    b"\x30\x80",
    b"\x02\x84\x7f\xff\xff\xff",
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Op::Flip(i, x)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Op::Set(i, b)),
        2 => any::<Index>().prop_map(Op::Truncate),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..24))
            .prop_map(|(i, b)| Op::Insert(i, b)),
        1 => (any::<Index>(), 1usize..80).prop_map(|(i, n)| Op::Delete(i, n)),
        2 => (any::<Index>(), prop::sample::select(TOKENS)).prop_map(|(i, t)| Op::Token(i, t)),
        1 => (any::<Index>(), any::<Index>(), 1usize..200)
            .prop_map(|(from, to, n)| Op::Repeat(from, to, n)),
    ]
}

fn ops(max: usize) -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(op(), 1..=max)
}

fn apply(data: &mut Vec<u8>, op: &Op) {
    let len = data.len();
    let at = |i: &Index| if len == 0 { 0 } else { i.index(len) };
    let at_or_end = |i: &Index| i.index(len + 1);
    match op {
        Op::Flip(i, x) if len > 0 => data[at(i)] ^= x,
        Op::Set(i, b) if len > 0 => data[at(i)] = *b,
        Op::Truncate(i) => data.truncate(at_or_end(i)),
        Op::Insert(i, bytes) => {
            let p = at_or_end(i);
            data.splice(p..p, bytes.iter().copied());
        }
        Op::Delete(i, n) if len > 0 => {
            let p = at(i);
            data.drain(p..(p + n).min(len));
        }
        Op::Token(i, t) => {
            let p = at_or_end(i);
            data.splice(p..p, t.iter().copied());
        }
        Op::Repeat(from, to, n) if len > 0 => {
            let f = at(from);
            let slice = data[f..(f + n).min(len)].to_vec();
            let p = at_or_end(to);
            data.splice(p..p, slice);
        }
        _ => {}
    }
}

fn mutated(mut data: Vec<u8>, ops: &[Op]) -> Vec<u8> {
    for op in ops {
        apply(&mut data, op);
    }
    data
}

/// How a good identity's blocks are laid out: changes of form only.
#[derive(Debug, Clone)]
struct Shape {
    order: Vec<usize>,
    /// Duplicate this block (index into `order`'s result).
    dup: Option<Index>,
    crlf: bool,
    run_together: bool,
    /// Text before each block and after the last (no '-': it never forms a marker).
    gaps: Vec<String>,
}

fn shape(blocks: usize) -> impl Strategy<Value = Shape> {
    (
        Just((0..blocks).collect::<Vec<usize>>()).prop_shuffle(),
        prop::option::weighted(0.3, any::<Index>()),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec(
            prop::option::weighted(0.3, "[A-Za-z0-9 :=#.\t]{0,24}\n?"),
            blocks + 2,
        ),
    )
        .prop_map(|(order, dup, crlf, run_together, gaps)| Shape {
            order,
            dup,
            crlf,
            run_together,
            gaps: gaps.into_iter().map(Option::unwrap_or_default).collect(),
        })
}

impl Shape {
    /// The blocks in this shape's order, with the duplicate.
    fn blocks<'a>(&self, blocks: &'a [Block]) -> Vec<&'a Block> {
        let mut out: Vec<&Block> = self.order.iter().map(|&i| &blocks[i]).collect();
        if let Some(d) = &self.dup {
            let b = out[d.index(out.len())];
            out.insert(d.index(out.len() + 1), b);
        }
        out
    }

    fn render(&self, blocks: &[&Block]) -> Vec<u8> {
        let mut text = String::new();
        for (i, b) in blocks.iter().enumerate() {
            text.push_str(&self.gaps[i.min(self.gaps.len() - 2)]);
            let pem = b.pem();
            if self.run_together {
                text.push_str(pem.trim_end());
            } else {
                text.push_str(&pem);
            }
        }
        text.push_str(self.gaps.last().unwrap());
        if self.crlf {
            text = text.replace('\n', "\r\n");
        }
        text.into_bytes()
    }
}

// ---------------------------------------------------------------------------------------------
// Verdict checks.

/// The checks every outcome must pass: a valid identity is really valid (its key matches the
/// leaf by rustls' own, independent check; the leaf is valid now; the chain is what rustls
/// sends), and an error is typed, displays without panicking and names one of `paths`.
fn check_identity(result: &Result<Identity, Error>, paths: &[&Path]) -> Result<(), TestCaseError> {
    match result {
        Ok(id) => {
            let ck = id.certified_key();
            if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
                ck.keys_match()
            {
                return Err(TestCaseError::fail(format!(
                    "accepted an identity whose key does not match its leaf: {:?}",
                    id.leaf()
                )));
            }
            prop_assert_eq!(&id.leaf().fingerprint, &sha256_hex(ck.cert[0].as_ref()));
            prop_assert_eq!(id.chain().len(), ck.cert.len());
            prop_assert!(
                id.leaf().is_valid_at(SystemTime::now()),
                "accepted a leaf outside its validity: {:?}",
                id.leaf()
            );
            Ok(())
        }
        Err(e) => check_error(e, paths),
    }
}

fn check_error(e: &Error, paths: &[&Path]) -> Result<(), TestCaseError> {
    let message = e.to_string();
    let _ = format!("{e:?}");
    prop_assert!(
        paths
            .iter()
            .any(|p| message.contains(&p.display().to_string())),
        "error does not name the file ({paths:?}): {message}"
    );
    let named = e.path();
    prop_assert!(
        named.is_some_and(|n| paths.contains(&n)),
        "Error::path() is {named:?}, not one of {paths:?} ({message})"
    );
    Ok(())
}

/// File names as people (and agents) make them.
fn path_name() -> impl Strategy<Value = PathBuf> {
    prop_oneof![
        Just(PathBuf::from("/etc/tls/identity.pem")),
        "[a-zA-Z0-9 ._-]{1,20}".prop_map(|s| PathBuf::from(format!("/run/secrets/{s}.pem"))),
        "\\PC{1,16}".prop_map(|s| PathBuf::from(format!("/tmp/{}", s.replace(['/', '\0'], "_")))),
    ]
}

fn fixture() -> impl Strategy<Value = &'static Fixture> {
    prop::sample::select((0..fixtures().identities.len()).collect::<Vec<_>>())
        .prop_map(|i| &fixtures().identities[i])
}

// ---------------------------------------------------------------------------------------------
// PEM identities.

proptest! {
    #![proptest_config(config(PARSE_CASES))]

    /// Arbitrary bytes as a bundle, as a certificate file and as a key file.
    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        path in path_name(),
        f in fixture(),
    ) {
        let bundle = Identity::from_pem(&path, &bytes, &path, &bytes);
        check_identity(&bundle, &[&path])?;
        prop_assert!(bundle.is_err());

        let key = Path::new("/etc/tls/tls.key");
        let key_pem = f.blocks.last().unwrap().pem();
        let as_cert = Identity::from_pem(&path, &bytes, key, key_pem.as_bytes());
        check_identity(&as_cert, &[&path, key])?;

        let cert = Path::new("/etc/tls/tls.crt");
        let cert_pem = f.blocks[0].pem();
        let as_key = Identity::from_pem(cert, cert_pem.as_bytes(), &path, &bytes);
        check_identity(&as_key, &[cert, &path])?;
    }

    /// Arbitrary bytes inside PEM armour: gets past the PEM layer into the X.509 and key
    /// parsers (with a good certificate or key beside them).
    #[test]
    fn arbitrary_der_in_armour_never_panics(
        der in prop::collection::vec(any::<u8>(), 0..2048),
        label in prop::sample::select(vec![
            "CERTIFICATE", "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "X509 CRL",
            "PUBLIC KEY", "TRUSTED CERTIFICATE",
        ]),
        f in fixture(),
        replace in any::<Index>(),
    ) {
        let path = Path::new("/run/identity.pem");
        let mut blocks: Vec<String> = f.blocks.iter().map(Block::pem).collect();
        let at = replace.index(blocks.len() + 1);
        if at == blocks.len() {
            blocks.push(armour(label, &der));
        } else {
            blocks[at] = armour(label, &der);
        }
        let text = blocks.concat();
        let result = Identity::from_pem(path, text.as_bytes(), path, text.as_bytes());
        check_identity(&result, &[path])?;
    }

    /// Changes of form only (order, CRLF, blocks run together, a duplicated certificate, text
    /// between blocks) keep the identity: same leaf, same chain sent. A duplicated key is
    /// refused as "several keys", naming the file.
    #[test]
    fn changes_of_form_keep_the_identity(f in fixture(), s in shape(4)) {
        let s = Shape { order: s.order.into_iter().filter(|&i| i < f.blocks.len()).collect(), ..s };
        let blocks = s.blocks(&f.blocks);
        let text = s.render(&blocks);
        let path = Path::new("/run/secrets/identity.pem");
        let result = Identity::from_pem(path, &text, path, &text);
        check_identity(&result, &[path])?;
        let keys = blocks.iter().filter(|b| b.is_key()).count();
        if keys > 1 {
            let e = result.expect_err("two keys accepted");
            prop_assert!(matches!(e, Error::MultipleKeys { count: 2, .. }), "{}", e);
        } else {
            let id = result.map_err(|e| TestCaseError::fail(format!(
                "{}: refused a good bundle in another form: {e}\n{}",
                f.name,
                String::from_utf8_lossy(&text)
            )))?;
            prop_assert_eq!(&id.leaf().fingerprint, &f.leaf_fp);
            let chain: Vec<&String> = id.chain().iter().map(|c| &c.fingerprint).collect();
            prop_assert_eq!(chain, f.chain_fps.iter().collect::<Vec<_>>());
        }
    }

    /// Arbitrary bytes (binary, CR, LF, NUL, partial dashes; anything but a 5-dash marker)
    /// before, between and after the blocks are text outside PEM blocks: ignored (except a
    /// last line that is the start of a BEGIN line: a truncated file).
    #[test]
    fn arbitrary_bytes_between_blocks_are_ignored(
        f in fixture(),
        gaps in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..48), 5),
    ) {
        prop_assume!(gaps.iter().all(|g| !g.windows(5).any(|w| w == b"-----")));
        let mut text = Vec::new();
        for (gap, block) in gaps.iter().zip(&f.blocks) {
            text.extend_from_slice(gap);
            text.extend_from_slice(block.pem().as_bytes());
        }
        text.extend_from_slice(gaps.last().unwrap());
        // A file whose last line is the start of a BEGIN line ("-", "--", ..., "-----BEGI")
        // was cut by its writer: refused on purpose (see a_file_cut_inside_a_begin_line_is_refused).
        let last_line = text
            .rsplit(|b| *b == b'\n' || *b == b'\r')
            .next()
            .unwrap_or(&[])
            .trim_ascii();
        prop_assume!(last_line.is_empty() || !b"-----BEGIN ".starts_with(last_line));
        let path = Path::new("/run/secrets/identity.pem");
        let result = Identity::from_pem(path, &text, path, &text);
        check_identity(&result, &[path])?;
        let id = result.map_err(|e| TestCaseError::fail(format!("{}: {e}", f.name)))?;
        prop_assert_eq!(&id.leaf().fingerprint, &f.leaf_fp);
    }

    /// The same, as a certificate file plus a key file.
    #[test]
    fn changes_of_form_keep_a_pair(f in fixture(), s in shape(3), k in shape(1)) {
        let (certs, key): (Vec<Block>, Vec<Block>) =
            f.blocks.iter().cloned().partition(|b| !b.is_key());
        let s = Shape { order: s.order.into_iter().filter(|&i| i < certs.len()).collect(), ..s };
        let k = Shape { dup: None, ..k };
        let cert_text = s.render(&s.blocks(&certs));
        let key_text = k.render(&k.blocks(&key));
        let (cp, kp) = (Path::new("/etc/tls/tls.crt"), Path::new("/etc/tls/tls.key"));
        let result = Identity::from_pem(cp, &cert_text, kp, &key_text);
        check_identity(&result, &[cp, kp])?;
        let id = result.map_err(|e| TestCaseError::fail(format!("{}: {e}", f.name)))?;
        prop_assert_eq!(&id.leaf().fingerprint, &f.leaf_fp);
    }

    /// Any change of form plus byte-level damage (flips, truncation, insertions, deletions,
    /// markers, repeats): never a panic, never a wrong verdict, errors name the file.
    #[test]
    fn damaged_bundles_never_panic(f in fixture(), s in shape(4), damage in ops(6)) {
        let s = Shape { order: s.order.into_iter().filter(|&i| i < f.blocks.len()).collect(), ..s };
        let text = mutated(s.render(&s.blocks(&f.blocks)), &damage);
        let path = Path::new("/run/secrets/identity.pem");
        let result = Identity::from_pem(path, &text, path, &text);
        check_identity(&result, &[path])?;
    }

    /// Damage to one file of a pair: the error names that file or its partner (a key that
    /// matches no certificate names both).
    #[test]
    fn damaged_pairs_never_panic(f in fixture(), damage in ops(6), key_side in any::<bool>()) {
        let (cp, kp) = (Path::new("/etc/tls/tls.crt"), Path::new("/etc/tls/tls.key"));
        let certs: String = f.blocks.iter().filter(|b| !b.is_key()).map(Block::pem).collect();
        let key = f.blocks.last().unwrap().pem();
        let (cert_bytes, key_bytes) = if key_side {
            (certs.into_bytes(), mutated(key.into_bytes(), &damage))
        } else {
            (mutated(certs.into_bytes(), &damage), key.into_bytes())
        };
        let result = Identity::from_pem(cp, &cert_bytes, kp, &key_bytes);
        check_identity(&result, &[cp, kp])?;
    }

    /// Damage to the DER inside one block (the base64 stays well-formed): exercises the X.509
    /// and private-key parsers on near-valid input.
    #[test]
    fn damaged_der_never_panics(f in fixture(), which in any::<Index>(), damage in ops(4)) {
        let i = which.index(f.blocks.len());
        let text: String = f
            .blocks
            .iter()
            .enumerate()
            .map(|(j, b)| if j == i { armour(b.label, &mutated(b.der.clone(), &damage)) } else { b.pem() })
            .collect();
        let path = Path::new("/run/secrets/identity.pem");
        let result = Identity::from_pem(path, text.as_bytes(), path, text.as_bytes());
        check_identity(&result, &[path])?;
    }
}

/// The blocks with the key first, then leaf, intermediate (and root): a template rendering
/// `private_key`, `certificate`, `issuing_ca`.
fn key_first(f: &Fixture) -> String {
    let (key, certs) = f.blocks.split_last().unwrap();
    std::iter::once(key).chain(certs).map(Block::pem).collect()
}

/// Truncation at every byte of every fixture, bundle (key last and key first) and pair: never a
/// panic, errors name the file, and a prefix is accepted only if it holds a whole key and its
/// whole leaf (a cut exactly between two blocks leaves a well-formed shorter file).
#[test]
fn truncation_at_every_point() {
    let path = Path::new("/run/secrets/identity.pem");
    let mut accepted = 0;
    for f in &fixtures().identities {
        let key_last: String = f.blocks.iter().map(Block::pem).collect();
        let key_first = key_first(f);
        for text in [key_last, key_first] {
            let key_pem = f.blocks.last().unwrap().pem();
            let leaf_pem = f.blocks[0].pem();
            for cut in 0..text.len() {
                let prefix = &text.as_bytes()[..cut];
                let result = Identity::from_pem(path, prefix, path, prefix);
                if let Err(e) = check_identity(&result, &[path]) {
                    panic!("{}: cut at {cut}: {e}", f.name);
                }
                if result.is_ok() {
                    accepted += 1;
                    let p = String::from_utf8_lossy(prefix);
                    assert!(
                        p.contains(key_pem.trim_end()) && p.contains(leaf_pem.trim_end()),
                        "{}: cut at {cut} accepted without a whole key and leaf",
                        f.name
                    );
                }
            }
        }
    }
    assert!(accepted > 0, "no complete prefix was ever accepted");
}

/// A truncated file must not be served even when the cut leaves whole blocks before it: a
/// file that ends inside a BEGIN line (`...-----END CERTIFICATE-----\n-----BEGI`) was cut
/// short by its writer. Such a partial line looks like text between blocks, and a
/// key-first bundle cut there would be served without its intermediate (clients would fail with
/// UnknownIssuer): the PEM reader refuses a dangling partial marker.
#[test]
fn a_file_cut_inside_a_begin_line_is_refused() {
    let path = Path::new("/run/secrets/identity.pem");
    let mut wrong = Vec::new();
    for f in &fixtures().identities {
        let text = key_first(f);
        for (at, _) in text.match_indices("-----BEGIN ").skip(1) {
            for len in 1..=10 {
                let prefix = &text.as_bytes()[..at + len];
                if Identity::from_pem(path, prefix, path, prefix).is_ok() {
                    wrong.push(format!(
                        "{}: accepted a file ending in {:?}",
                        f.name,
                        String::from_utf8_lossy(&prefix[prefix.len() - len..])
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// ---------------------------------------------------------------------------------------------
// PKCS#12, through a manual handle on a temporary file.

#[derive(Debug, Clone)]
enum Pw {
    Right,
    Text(String),
    Bytes(Vec<u8>),
}

fn password() -> impl Strategy<Value = Pw> {
    prop_oneof![
        6 => Just(Pw::Right),
        2 => "\\PC{0,24}".prop_map(Pw::Text),
        1 => prop::collection::vec(any::<u8>(), 0..24).prop_map(Pw::Bytes),
    ]
}

fn load_p12(bytes: &[u8], pw: &[u8]) -> (Result<ReloadingIdentity, Error>, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (p12, pass) = (
        dir.path().join("identity.p12"),
        dir.path().join("identity.pass"),
    );
    std::fs::write(&p12, bytes).unwrap();
    std::fs::write(&pass, pw).unwrap();
    let result =
        ReloadingIdentity::builder(IdentitySource::pkcs12(&p12, Password::File(pass.clone())))
            .detection(Detection::Manual)
            .build();
    // The paths outlive the directory only as names in messages.
    (result, p12, pass)
}

proptest! {
    #![proptest_config(config(FILE_CASES))]

    /// A real keystore (OpenSSL 3 default and -legacy) damaged, with the right or a wrong
    /// password: accepted only when it still holds the original leaf and the password is
    /// right; otherwise a typed error naming the keystore or the password file.
    #[test]
    fn damaged_pkcs12_never_panics(
        which in 0usize..2,
        damage in prop::option::weighted(0.9, ops(4)),
        pw in password(),
    ) {
        let (_, original, right, leaf_fp) = &fixtures().p12s[which];
        let bytes = match &damage {
            Some(d) => mutated(original.clone(), d),
            None => original.clone(),
        };
        let pw_bytes = match &pw {
            Pw::Right => format!("{right}\n").into_bytes(),
            Pw::Text(t) => t.clone().into_bytes(),
            Pw::Bytes(b) => b.clone(),
        };
        let (result, p12, pass) = load_p12(&bytes, &pw_bytes);
        match result {
            Ok(identity) => {
                let current = identity.current().expect("a built identity serves");
                prop_assert_eq!(&current.value.leaf().fingerprint, leaf_fp);
                let text = String::from_utf8_lossy(&pw_bytes);
                let text = text.strip_suffix('\n').unwrap_or(&text);
                prop_assert_eq!(text.strip_suffix('\r').unwrap_or(text), right.as_str());
                check_identity(&Ok(current.value.clone()), &[&p12])?;
            }
            Err(e) => {
                check_error(&e, &[&p12, &pass])?;
                if damage.is_none() {
                    prop_assert!(
                        matches!(
                            e,
                            Error::WrongPassword { .. }
                                | Error::Pkcs12 { .. }
                                | Error::PasswordNotUtf8 { .. }
                        ),
                        "a wrong password gave {}", e
                    );
                }
            }
        }
    }

    /// Arbitrary bytes as a keystore.
    #[test]
    fn arbitrary_pkcs12_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let (result, p12, pass) = load_p12(&bytes, b"changeit\n");
        let e = result.expect_err("random bytes accepted as PKCS#12");
        check_error(&e, &[&p12, &pass])?;
    }
}

// ---------------------------------------------------------------------------------------------
// CRLs and CA bundles, through a manual trust handle.

fn load_trust(ca: &[u8], crl: Option<&[u8]>) -> (Result<ReloadingTrust, Error>, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (ca_path, crl_path) = (dir.path().join("ca.pem"), dir.path().join("ca.crl"));
    std::fs::write(&ca_path, ca).unwrap();
    let mut source = TrustSource::cas([&ca_path]);
    if let Some(crl) = crl {
        std::fs::write(&crl_path, crl).unwrap();
        source = source.with_crls([&crl_path]);
    }
    let result = ReloadingTrust::builder(source)
        .detection(Detection::Manual)
        .build();
    (result, ca_path, crl_path)
}

proptest! {
    #![proptest_config(config(FILE_CASES * 4))]

    /// A real CRL damaged, as DER or as PEM (damage to the DER inside the armour, or to the
    /// PEM text): a trust with the CRL, or an error naming the CRL file (the CA file is good).
    #[test]
    fn damaged_crls_never_panic(
        damage in ops(4),
        form in 0u8..3,
        s in shape(1),
    ) {
        let f = fixtures();
        let crl = match form {
            0 => mutated(f.crl_der.clone(), &damage),
            1 => armour("X509 CRL", &mutated(f.crl_der.clone(), &damage)).into_bytes(),
            _ => {
                let block = Block { label: "X509 CRL", der: f.crl_der.clone() };
                let s = Shape { dup: None, ..s };
                mutated(s.render(&[&block]), &damage)
            }
        };
        let (result, _ca, crl_path) = load_trust(f.ca_pem.as_bytes(), Some(&crl));
        match result {
            Ok(trust) => {
                let t = trust.current().expect("a built trust serves");
                prop_assert!(!t.value.crls().is_empty());
                prop_assert!(t.value.crls().iter().all(|c| c.path == crl_path));
            }
            Err(e) => check_error(&e, &[&crl_path])?,
        }
    }

    /// Arbitrary bytes as a CRL file.
    #[test]
    fn arbitrary_crls_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let (result, _ca, crl_path) = load_trust(fixtures().ca_pem.as_bytes(), Some(&bytes));
        if let Err(e) = result {
            check_error(&e, &[&crl_path])?;
        }
    }

    /// A damaged CA bundle: a trust, or an error naming the CA file.
    #[test]
    fn damaged_ca_bundles_never_panic(damage in ops(4), s in shape(1)) {
        let f = fixtures();
        let block = Block { label: "CERTIFICATE", der: pem_body(&f.ca_pem) };
        let ca = mutated(s.render(&s.blocks(&[block])), &damage);
        let (result, ca_path, _crl) = load_trust(&ca, None);
        if let Err(e) = result {
            check_error(&e, &[&ca_path])?;
        }
    }
}

/// Every prefix of the CRL, DER and PEM: never a panic; errors name the CRL file.
#[test]
fn crl_truncation_at_every_point() {
    let f = fixtures();
    let pem = armour("X509 CRL", &f.crl_der);
    for text in [f.crl_der.clone(), pem.into_bytes()] {
        for cut in 0..text.len() {
            let (result, _ca, crl_path) = load_trust(f.ca_pem.as_bytes(), Some(&text[..cut]));
            match result {
                Ok(_) => {
                    // Only the whole CRL (perhaps without its final newline) may load.
                    assert!(
                        cut + 1 >= text.len(),
                        "a CRL cut at {cut}/{} loaded",
                        text.len()
                    );
                }
                Err(e) => {
                    if let Err(fail) = check_error(&e, &[&crl_path]) {
                        panic!("cut at {cut}: {fail}");
                    }
                }
            }
        }
    }
}

/// The fixtures themselves are good (so that a property that passes is not vacuous).
#[test]
fn fixtures_are_good() {
    let f = fixtures();
    let path = Path::new("/x/identity.pem");
    for id in &f.identities {
        let text: String = id.blocks.iter().map(Block::pem).collect();
        let got = Identity::from_pem(path, text.as_bytes(), path, text.as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", id.name));
        assert_eq!(got.leaf().fingerprint, id.leaf_fp);
    }
    for (name, bytes, pw, fp) in &f.p12s {
        let (result, _, _) = load_p12(bytes, format!("{pw}\n").as_bytes());
        let identity = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&identity.current().unwrap().value.leaf().fingerprint, fp);
    }
    let (result, _, _) = load_trust(f.ca_pem.as_bytes(), Some(&f.crl_der));
    let trust = result.unwrap();
    assert_eq!(trust.current().unwrap().value.crls()[0].revoked, 3);
    assert_eq!(unbase64(&base64(b"hitless!?")), b"hitless!?");
}

// ---------------------------------------------------------------------------------------------
// Builder options: extreme values must not panic (a panic on the detector thread would stop
// every later reload without a word).

/// Panics seen on detector threads (named `hitless-detect ...`), by thread name.
fn detector_panics() -> &'static std::sync::Mutex<Vec<String>> {
    static PANICS: OnceLock<std::sync::Mutex<Vec<String>>> = OnceLock::new();
    PANICS.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            if let Some(name) = thread.name().filter(|n| n.starts_with("hitless-detect")) {
                if let Ok(mut p) = detector_panics().lock() {
                    p.push(format!("{name}: {info}"));
                }
            }
            previous(info);
        }));
        std::sync::Mutex::new(Vec::new())
    })
}

/// Builds a watched identity named `name` with `detection` and `quiet`, writes garbage, then a
/// new good identity; returns whether the new one was served within `wait`, and any panic of
/// its detector thread.
fn rotate_with_options(
    name: &str,
    detection: Detection,
    quiet: std::time::Duration,
    wait: std::time::Duration,
) -> (bool, Vec<String>) {
    detector_panics();
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    let first: String = f.identities[0].blocks.iter().map(Block::pem).collect();
    hitless_test_pki::write_atomic(&path, first.as_bytes());
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .name(name)
        .detection(detection)
        .quiet_period(quiet)
        .build()
        .unwrap();
    hitless_test_pki::write_atomic(&path, b"garbage");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let second: String = f.identities[2].blocks.iter().map(Block::pem).collect();
    hitless_test_pki::write_atomic(&path, second.as_bytes());
    let start = std::time::Instant::now();
    let served = loop {
        let fp = identity
            .current()
            .map(|c| c.value.leaf().fingerprint.clone());
        if fp.as_ref() == Some(&f.identities[2].leaf_fp) {
            break true;
        }
        if start.elapsed() > wait {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let panics = detector_panics()
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.contains(&format!("hitless-detect {name}:")))
        .cloned()
        .collect();
    (served, panics)
}

/// Zero and tiny durations work: every mode picks up a rotation after a bad write.
#[test]
fn zero_and_tiny_durations_work() {
    use std::time::Duration;
    let wait = Duration::from_secs(20);
    for (name, detection, quiet) in [
        ("watch-quiet-0", Detection::Watch, Duration::ZERO),
        ("watch-quiet-1ns", Detection::Watch, Duration::from_nanos(1)),
        (
            "poll-1ms",
            Detection::Poll {
                interval: Duration::from_millis(1),
            },
            Duration::ZERO,
        ),
    ] {
        let (served, panics) = rotate_with_options(name, detection, quiet, wait);
        assert!(panics.is_empty(), "{name}: {panics:#?}");
        assert!(served, "{name}: the new identity was never served");
    }
}

/// A quiet period too long to add to `Instant::now()` (e.g. `quiet_period = "500000000000y"`
/// in the command's configuration, which `serve --check` accepts) panics the detector thread
/// at the first failed read (`Instant::now() + quiet` in `detect::Tracked::attempt`/`defer`):
/// from then on nothing is ever reloaded again. (Fixed: additions saturate and intervals are capped.)
#[test]
fn a_huge_quiet_period_does_not_kill_the_detector() {
    use std::time::Duration;
    for (name, quiet) in [
        ("watch-quiet-max", Duration::MAX),
        (
            "watch-quiet-500e9y",
            Duration::from_secs(500_000_000_000 * 31_557_600),
        ),
    ] {
        let (served, panics) =
            rotate_with_options(name, Detection::Watch, quiet, Duration::from_secs(20));
        assert!(panics.is_empty(), "{name}: {panics:#?}");
        assert!(served, "{name}: the new identity was never served");
    }
}

/// Same with a poll interval: `Instant::now() + jittered(interval)` in `detect::poll_loop`
/// (and `Duration::mul_f64` in `jittered`) panic before the first poll.
#[test]
fn a_huge_poll_interval_does_not_kill_the_detector() {
    use std::time::Duration;
    let (_, panics) = rotate_with_options(
        "poll-max",
        Detection::Poll {
            interval: Duration::MAX,
        },
        Duration::from_millis(100),
        Duration::from_millis(500),
    );
    assert!(panics.is_empty(), "{panics:#?}");
}

/// `expiring_soon` accepts any `f64`; `status()` and the expiry check compute
/// `lifetime.mul_f64(fraction.clamp(0.0, 1.0))`, and `NaN.clamp(..)` is NaN, which
/// `Duration::mul_f64` refuses with a panic (in the caller's thread for `status()`).
#[test]
fn any_expiring_soon_fraction_is_safe() {
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.pem");
    let text: String = f.identities[0].blocks.iter().map(Block::pem).collect();
    std::fs::write(&path, text).unwrap();
    for fraction in [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        -1.0,
        2.0,
        0.0,
        1.0,
    ] {
        let outcome = std::panic::catch_unwind(|| {
            let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
                .detection(Detection::Manual)
                .expiring_soon(fraction)
                .build()
                .unwrap();
            identity.check_expiry();
            identity.status()
        });
        assert!(outcome.is_ok(), "expiring_soon({fraction}) panicked");
    }
}
