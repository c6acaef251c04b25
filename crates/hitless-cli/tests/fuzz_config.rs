//! Property test of the configuration parser through the binary: whatever TOML (or not) the
//! file holds, `hitless serve --config F --check` exits by itself with 0 (good) or 1 (refused,
//! saying why), never with a panic (exit 101), a signal or a hang.
//!
//! Inputs: a valid configuration naming real files, damaged line by line (deleted, duplicated,
//! swapped, cut), with values replaced by awkward ones (empty, negative, huge, NaN, wrong
//! type, odd addresses and paths), unknown keys and tables added, and bytes flipped or inserted;
//! plus arbitrary text. Bounded for CI (64 cases, one process each); `PROPTEST_CASES` runs more.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{hitless_bin, run_bounded, Pki, Ran};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestRunner;

fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// A valid configuration using every section, naming `pki`'s files.
fn base_config(pki: &Pki) -> String {
    let legacy = pki.write_bundle("legacy.pem", &pki.server);
    let crl = pki.path("clients.crl");
    std::fs::write(&crl, pki.ca.crl(&[], time::Duration::hours(1)).pem).unwrap();
    format!(
        r#"# fuzzed configuration
[[listener]]
listen = "127.0.0.1:8443"
admin = "127.0.0.1:9090"
drop_untrusted = true

[[identity]]
name = "api"
cert = "{crt}"
key = "{key}"
names = ["api.example.test", "*.example.test"]
default = true

[[identity]]
name = "legacy"
bundle = "{legacy}"

[client_trust]
ca = ["{ca}"]
crl = "{crl}"

[reload]
mode = "watch"
poll_interval = "10s"
quiet_period = "200ms"
on_handshake_ttl = "1s"
accept_expired = false
wait_for_credentials = "0s"
expiring_soon = 0.33
"#,
        crt = pki.server_crt.display(),
        key = pki.server_key.display(),
        legacy = legacy.display(),
        ca = pki.ca_pem.display(),
        crl = crl.display(),
    )
}

const VALUES: &[&str] = &[
    "\"\"",
    "\"0s\"",
    "\"-1s\"",
    "\"1ns\"",
    "\"500000000000years\"",
    "\"18446744073709551615s\"",
    "\"10 parsecs\"",
    "0",
    "-1",
    "9223372036854775807",
    "1e400",
    "nan",
    "-inf",
    "-0.0",
    "true",
    "[]",
    "{}",
    "[[]]",
    "[\"a\", 1]",
    "{ path = \"x\" }",
    "\"\\u0000\"",
    "\"\\uD800\"",
    "'''\nmulti\nline'''",
    "\"127.0.0.1:0\"",
    "\"[::1]:65535\"",
    "\"999.1.1.1:1\"",
    "\"localhost:8443\"",
    "\"127.0.0.1:8443\"",
    "\"/\"",
    "\".\"",
    "\"/nonexistent/file.pem\"",
    "\"relative/path.pem\"",
    "\"poll\"",
    "\"on-handshake\"",
    "\"manual\"",
    "\"WATCH\"",
    "\"\u{1F512}\"",
    "1979-05-27T07:32:00Z",
];

const LINES: &[&str] = &[
    "[[identity]]",
    "[[listener]]",
    "[reload]",
    "[client_trust]",
    "[[client_trust.pkcs12]]",
    "[identity]",
    "[reload.mode]",
    "unknown = 1",
    "pkcs12 = \"/nonexistent.p12\"",
    "password_file = \"/nonexistent.pass\"",
    "password_env = \"HITLESS_FUZZ_UNSET_VARIABLE\"",
    "bundle = \"/nonexistent.pem\"",
    "cert = \"/nonexistent.crt\"",
    "default = true",
    "listen = \"127.0.0.1:8443\"",
    "mode = \"poll\"",
    "poll_interval = \"0s\"",
    "path = \"x.p12\"",
    "ca = []",
    "=",
    "[",
    "\"",
    "'",
    "a.b.c = 1",
    "\u{feff}",
];

const INSERTS: &[&str] = &[
    "[",
    "]",
    "\"",
    "'",
    "'''",
    "=",
    "\n",
    "#",
    ",",
    "{",
    "}",
    ".",
    "\\",
    "\\u",
    "\0",
    "\r",
    "\t",
    " ",
    "\u{1F600}",
    "\u{feff}",
    "-",
    "0x",
];

/// One change to the text.
#[derive(Debug, Clone)]
enum Edit {
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    CutAt(Index),
    ReplaceValue(Index, &'static str),
    AddLine(Index, &'static str),
    Insert(Index, &'static str),
    FlipByte(Index, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        2 => any::<Index>().prop_map(Edit::DeleteLine),
        1 => any::<Index>().prop_map(Edit::DuplicateLine),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Edit::SwapLines(a, b)),
        1 => any::<Index>().prop_map(Edit::CutAt),
        4 => (any::<Index>(), prop::sample::select(VALUES)).prop_map(|(i, v)| Edit::ReplaceValue(i, v)),
        2 => (any::<Index>(), prop::sample::select(LINES)).prop_map(|(i, l)| Edit::AddLine(i, l)),
        2 => (any::<Index>(), prop::sample::select(INSERTS)).prop_map(|(i, s)| Edit::Insert(i, s)),
        1 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Edit::FlipByte(i, x)),
    ]
}

fn apply(text: &str, edit: &Edit) -> Vec<u8> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let n = lines.len();
    match edit {
        Edit::DeleteLine(i) => {
            lines.remove(i.index(n));
        }
        Edit::DuplicateLine(i) => {
            let l = lines[i.index(n)].clone();
            lines.insert(i.index(n), l);
        }
        Edit::SwapLines(a, b) => lines.swap(a.index(n), b.index(n)),
        Edit::CutAt(i) => {
            let mut bytes = text.as_bytes().to_vec();
            bytes.truncate(i.index(bytes.len() + 1));
            return bytes;
        }
        Edit::ReplaceValue(i, v) => {
            // The value of the i-th `key = value` line (or of any line, if none).
            let with_values: Vec<usize> = (0..n).filter(|&j| lines[j].contains(" = ")).collect();
            let j = if with_values.is_empty() {
                i.index(n)
            } else {
                with_values[i.index(with_values.len())]
            };
            let key = lines[j].split(" = ").next().unwrap_or("").to_string();
            lines[j] = format!("{key} = {v}");
        }
        Edit::AddLine(i, l) => lines.insert(i.index(n + 1), l.to_string()),
        Edit::Insert(i, s) => {
            let mut bytes = text.as_bytes().to_vec();
            let p = i.index(bytes.len() + 1);
            bytes.splice(p..p, s.bytes());
            return bytes;
        }
        Edit::FlipByte(i, x) => {
            let mut bytes = text.as_bytes().to_vec();
            if !bytes.is_empty() {
                let p = i.index(bytes.len());
                bytes[p] ^= x;
            }
            return bytes;
        }
    }
    lines.join("\n").into_bytes()
}

/// Runs `serve --config file --check`.
fn check(file: &Path) -> Ran {
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["serve", "--config"]).arg(file).arg("--check");
    cmd.env_remove("HITLESS_FUZZ_UNSET_VARIABLE");
    run_bounded(cmd, b"", Duration::from_secs(60))
}

/// Exit 0, or exit 1 saying what is wrong; never a panic, a signal or a hang.
fn verdict(ran: &Ran, file: &Path, input: &[u8]) -> Result<(), TestCaseError> {
    let shown = String::from_utf8_lossy(input);
    let Some(status) = ran.status else {
        return Err(TestCaseError::fail(format!(
            "--check did not exit within 60 s on:\n{shown}"
        )));
    };
    prop_assert!(
        !ran.stderr.contains("panicked"),
        "--check panicked on:\n{}\n--- stderr:\n{}",
        shown,
        ran.stderr
    );
    match status.code() {
        Some(0) => {
            prop_assert!(ran.stdout.contains("configuration OK"), "{}", ran.stdout);
        }
        Some(1) => {
            let name = file.file_name().unwrap().to_string_lossy().to_string();
            prop_assert!(
                ran.stderr.contains(&name) || ran.stdout.contains("ERROR"),
                "refused without naming the file or the failing credential:\n{}\n--- stdout:\n{}\n--- stderr:\n{}",
                shown,
                ran.stdout,
                ran.stderr
            );
        }
        other => {
            return Err(TestCaseError::fail(format!(
                "--check exited with {other:?} (status {status}) on:\n{shown}\n--- stderr:\n{}",
                ran.stderr
            )))
        }
    }
    Ok(())
}

#[test]
fn check_survives_damaged_configurations() {
    let pki = Pki::new();
    let base = base_config(&pki);
    let file = pki.path("fuzz.toml");
    // The undamaged configuration is good (so the property is not vacuous).
    std::fs::write(&file, &base).unwrap();
    let ran = check(&file);
    assert!(ran.success(), "{ran:?}");

    let mut runner = TestRunner::new(config(64));
    runner
        .run(&prop::collection::vec(edit(), 1..6), |edits| {
            let mut text = base.clone().into_bytes();
            for e in &edits {
                text = apply(&String::from_utf8_lossy(&text), e);
            }
            std::fs::write(&file, &text).unwrap();
            verdict(&check(&file), &file, &text)
        })
        .unwrap();
}

#[test]
fn check_survives_arbitrary_text() {
    let pki = Pki::new();
    let file = pki.path("arbitrary.toml");
    let mut runner = TestRunner::new(config(32));
    let text = prop_oneof![
        // Arbitrary bytes (mostly refused as not UTF-8).
        prop::collection::vec(any::<u8>(), 0..512),
        // Printable text.
        "\\PC{0,400}".prop_map(String::into_bytes),
        // TOML-looking tokens in any order.
        prop::collection::vec(
            prop::sample::select(
                [LINES, VALUES, INSERTS]
                    .concat()
                    .into_iter()
                    .chain([
                        "\n",
                        " = ",
                        "identity",
                        "reload",
                        "listener",
                        "client_trust"
                    ])
                    .collect::<Vec<_>>()
            ),
            0..60
        )
        .prop_map(|t| t.concat().into_bytes()),
    ];
    runner
        .run(&text, |text| {
            std::fs::write(&file, &text).unwrap();
            verdict(&check(&file), &file, &text)
        })
        .unwrap();
}

/// A duration too long to add to `Instant::now()` passes `--check` ("configuration OK"), then
/// `serve` starts and its detector thread panics ("overflow when adding duration to instant" in
/// `hitless::detect::poll_loop` / `Tracked::attempt`): the server goes on serving but never
/// reloads anything again. Either `--check`/start must refuse such a value naming the key, or
/// the library must saturate. (Fixed: durations are capped.)
#[test]
fn a_huge_duration_is_refused_or_harmless() {
    let pki = Pki::new();
    for (key, mode) in [("poll_interval", "poll"), ("quiet_period", "watch")] {
        let port = common::free_port();
        let file = pki.path("huge.toml");
        std::fs::write(
            &file,
            format!(
                "[[listener]]\nlisten = \"127.0.0.1:{port}\"\n[[identity]]\ncert = \"{}\"\nkey = \"{}\"\n\
                 [reload]\nmode = \"{mode}\"\n{key} = \"500000000000years\"\n",
                pki.server_crt.display(),
                pki.server_key.display()
            ),
        )
        .unwrap();
        let checked = check(&file);
        if checked.status.and_then(|s| s.code()) == Some(1) {
            assert!(checked.stderr.contains(key), "{checked:?}");
            continue;
        }
        // Accepted: serving must then not panic, even after a bad write (which schedules a
        // retry after the quiet period).
        let mut cmd = Command::new(hitless_bin());
        cmd.args(["serve", "--config"]).arg(&file);
        let mut server = common::ServerGuard::spawn(cmd, port, pki.path("huge.log"));
        server.wait_ready();
        let key_pem = std::fs::read(&pki.server_key).unwrap();
        hitless_test_pki::write_atomic(&pki.server_key, b"garbage");
        std::thread::sleep(Duration::from_secs(2));
        hitless_test_pki::write_atomic(&pki.server_key, &key_pem);
        std::thread::sleep(Duration::from_secs(1));
        let log = server.log();
        drop(server);
        assert!(!log.contains("panicked"), "{key}: {log}");
    }
}
