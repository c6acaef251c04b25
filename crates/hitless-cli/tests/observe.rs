//! Integration tests of what an operator observes of `hitless serve`: the `/status` JSON, the
//! Prometheus `/metrics` and `/healthz` on the plain-HTTP `--admin-listen` listener, SIGHUP in
//! `--reload manual`, `--wait-for-credentials`, and the expiry events of a short-lived identity.
//!
//! Real `hitless serve` processes on 127.0.0.1, real `curl`/`openssl` peers, PKI generated at
//! test time. Every wait is bounded (and generous) and polls an observable fact; nothing
//! asserts that something was fast.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use hitless_test_pki::{sha256_hex, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use serde_json::Value;
use time::Duration as TimeDuration;
use time::OffsetDateTime;

/// How long a change on disk (or a signal, or the clock) may take to show in `/status` or
/// `/metrics`. Generous: debug build, busy CI.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Plain HTTP to the admin listener.

/// Marker before curl's `--write-out`, to split it from the body.
const MARKER: &str = "\n@@hitless-observe@@ ";

/// `curl -sS http://127.0.0.1:PORT{path}` (plain HTTP, no TLS, no `--fail`): the status code
/// (0 when nothing answered) and the body.
fn admin_get(port: u16, path: &str) -> (u16, String, Ran) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--write-out"])
        .arg(format!("{MARKER}%{{http_code}}"))
        .arg(format!("http://127.0.0.1:{port}{path}"));
    let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
    let (body, code) = match ran.stdout.rsplit_once(MARKER) {
        Some((body, code)) => (body.to_string(), code.trim().parse().unwrap_or(0)),
        None => (ran.stdout.clone(), 0),
    };
    (code, body, ran)
}

/// The `/status` document, or why it could not be had.
fn get_status(admin: u16) -> Result<Value, String> {
    let (code, body, ran) = admin_get(admin, "/status");
    if code != 200 {
        return Err(format!("GET /status answered {code}: {ran:?}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("/status is not JSON ({e}): {body}"))
}

/// The `/metrics` text, or why it could not be had.
fn get_metrics(admin: u16) -> Result<Metrics, String> {
    let (code, body, ran) = admin_get(admin, "/metrics");
    if code != 200 {
        return Err(format!("GET /metrics answered {code}: {ran:?}"));
    }
    Ok(Metrics::parse(&body))
}

/// The one credential of `kind` (`identity`, `trust`) in a `/status` document.
fn credential<'a>(status: &'a Value, kind: &str) -> &'a Value {
    let all: Vec<&Value> = status["credentials"]
        .as_array()
        .unwrap_or_else(|| panic!("/status has no credentials array: {status:#}"))
        .iter()
        .filter(|c| c["kind"] == kind)
        .collect();
    assert_eq!(
        all.len(),
        1,
        "expected exactly one credential of kind {kind:?}: {status:#}"
    );
    all[0]
}

/// Unix time of an RFC 3339 timestamp in a JSON field, panicking with the document if the field
/// is missing or malformed.
fn rfc3339_unix(doc: &Value, field: &str) -> i64 {
    let s = doc[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string: {doc:#}"));
    let t = humantime::parse_rfc3339(s)
        .unwrap_or_else(|e| panic!("{field} = {s:?} is not RFC 3339 ({e}): {doc:#}"));
    unix(t)
}

fn unix(t: SystemTime) -> i64 {
    i64::try_from(
        t.duration_since(UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs(),
    )
    .expect("fits i64")
}

// ---------------------------------------------------------------------------------------------
// The Prometheus text format.

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` scrape.
#[derive(Debug)]
struct Metrics {
    text: String,
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text exposition format (Prometheus or OpenMetrics): comments and blank lines
    /// are skipped; labels may come in any order.
    fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_sample(l).unwrap_or_else(|e| panic!("bad metrics line {l:?}: {e}")))
            .collect();
        Metrics {
            text: text.to_string(),
            samples,
        }
    }

    /// The value of the series `name` whose labels are exactly `labels` (any order), if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == wanted)
            .collect();
        assert!(
            found.len() <= 1,
            "series {name}{wanted:?} appears {} times:\n{}",
            found.len(),
            self.text
        );
        found.first().map(|s| s.value)
    }

    /// Like [`Metrics::get`], 0 when the series is absent (a counter not incremented yet).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Like [`Metrics::get`], panicking with the scrape when the series is absent.
    fn require(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in /metrics:\n{}", self.text))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            // Skip separators; `}` ends the label set.
            match chars.peek() {
                Some((_, ',')) | Some((_, ' ')) => {
                    chars.next();
                    continue;
                }
                Some((i, '}')) => {
                    rest = &after[i + 1..];
                    break;
                }
                Some(_) => {}
                None => return Err("unterminated label set".into()),
            }
            let mut key = String::new();
            loop {
                match chars.next() {
                    Some((_, '=')) => break,
                    Some((_, c)) => key.push(c),
                    None => return Err("label without '='".into()),
                }
            }
            if !matches!(chars.next(), Some((_, '"'))) {
                return Err(format!("label {key} has no quoted value"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => return Err("dangling escape".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err(format!("label {key} value not terminated")),
                }
            }
            labels.insert(key.trim().to_string(), value);
        }
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .ok_or("no value after the name")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|e| format!("value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

// ---------------------------------------------------------------------------------------------
// Servers, PKI, waits.

/// A server leaf for `localhost` valid exactly from `not_before` to `not_after`.
fn server_leaf(ca: &Ca, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Leaf {
    ca.issue(&LeafSpec::server("localhost").valid(not_before, not_after))
}

/// Now, truncated to the second (certificates and `/status` carry whole seconds).
fn now_s() -> OffsetDateTime {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("zero nanoseconds")
}

/// A leaf for `localhost` valid from an hour ago to an hour from now, in whole seconds.
fn hour_leaf(ca: &Ca) -> Leaf {
    let now = now_s();
    server_leaf(
        ca,
        now - time::Duration::hours(1),
        now + time::Duration::hours(1),
    )
}

/// Atomically replaces `path` with `leaf`'s bundle.
fn write_leaf(path: &Path, leaf: &Leaf) {
    hitless_test_pki::write_atomic(path, leaf.bundle_pem(KeyFormat::Pkcs8).as_bytes());
}

/// Two distinct loopback ports that were free a moment ago (both bound at once, then released),
/// for the TLS listener and the admin listener.
fn two_free_ports() -> (u16, u16) {
    let bind = || {
        std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .expect("bind 127.0.0.1:0")
    };
    let (a, b) = (bind(), bind());
    let port = |l: &std::net::TcpListener| l.local_addr().expect("local address").port();
    (port(&a), port(&b))
}

/// Spawns `hitless serve --listen 127.0.0.1:PORT --admin-listen 127.0.0.1:ADMIN <args>`,
/// logging to the PKI directory (does not wait for anything); returns the server and the admin
/// port.
fn spawn_with_admin(pki: &Pki, args: &[OsString]) -> (ServerGuard, u16) {
    let (port, admin) = two_free_ports();
    let mut cmd = Command::new(hitless_bin());
    cmd.args(serve_args(port))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .args(args);
    let log = pki.path(&format!("server-{port}.log"));
    (ServerGuard::spawn(cmd, port, log), admin)
}

/// Spawns like [`spawn_with_admin`] and polls until `ready` holds. A server that exits because
/// one of its ports was taken in the meantime (the free-port race with other tests) is started
/// again on new ports, a few times; any other exit panics with the log.
fn start_until(
    pki: &Pki,
    args: &[OsString],
    mut ready: impl FnMut(&ServerGuard, u16) -> bool,
) -> (ServerGuard, u16) {
    const ATTEMPTS: usize = 5;
    for attempt in 1..=ATTEMPTS {
        let (mut server, admin) = spawn_with_admin(pki, args);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = server.try_wait() {
                let log = server.log();
                if log.contains("Address already in use") && attempt < ATTEMPTS {
                    break;
                }
                panic!("the server exited at start: {status}\n--- server log ---\n{log}");
            }
            if ready(&server, admin) {
                return (server, admin);
            }
            assert!(
                Instant::now() < deadline,
                "the server is not ready after {READY_TIMEOUT:?}\n--- server log ---\n{}",
                server.log()
            );
            thread::sleep(POLL * 2);
        }
    }
    unreachable!("the last attempt returns or panics")
}

/// Does something accept TCP connections on 127.0.0.1:port?
fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddrV4::new(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// Starts `hitless serve --identity BUNDLE --client-ca CA --admin-listen 127.0.0.1:ADMIN
/// <extra>`, waits until the TLS port listens and `/status` answers; returns the server and
/// the admin port.
fn start_observed(pki: &Pki, bundle: &Path, extra: &[&str]) -> (ServerGuard, u16) {
    let mut args: Vec<OsString> = vec![
        "--identity".into(),
        bundle.into(),
        "--client-ca".into(),
        pki.ca_pem.clone().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    start_until(pki, &args, |server, admin| {
        listening(server.port) && get_status(admin).is_ok()
    })
}

/// Polls `probe` until it returns `Ok`, for at most `timeout`; panics with the last `Err` and
/// the server log if time runs out or the server exits.
fn wait_for<T>(
    server: &mut ServerGuard,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = server.try_wait() {
            panic!(
                "the server exited ({status}) while waiting for {what}\n--- server log ---\n{}",
                server.log()
            );
        }
        let last = match probe() {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "after {timeout:?}, still not {what}; last observation: {last}\n--- server log \
             ---\n{}",
            server.log()
        );
        thread::sleep(POLL * 2);
    }
}

/// `/status` once its identity satisfies `ok` (given the identity and the whole document).
fn wait_status(
    server: &mut ServerGuard,
    admin: u16,
    what: &str,
    ok: impl Fn(&Value, &Value) -> bool,
) -> Value {
    wait_for(server, what, CHANGE_TIMEOUT, || {
        let status = get_status(admin)?;
        if ok(credential(&status, "identity"), &status) {
            Ok(status)
        } else {
            Err(format!("{status:#}"))
        }
    })
}

/// A scrape once `ok` holds for it.
fn wait_metrics(
    server: &mut ServerGuard,
    admin: u16,
    what: &str,
    ok: impl Fn(&Metrics) -> bool,
) -> Metrics {
    wait_for(server, what, CHANGE_TIMEOUT, || {
        let metrics = get_metrics(admin)?;
        if ok(&metrics) {
            Ok(metrics)
        } else {
            Err(metrics.text)
        }
    })
}

/// A successful mTLS `GET /` on the TLS port; returns its JSON body.
fn tls_root(pki: &Pki, server: &ServerGuard) -> Value {
    let reply = curl(pki, server.port, "/", HttpVersion::Http11, true);
    assert!(
        reply.ran.success() && reply.code == 200,
        "mTLS curl of / failed: {reply:?}\n--- server log ---\n{}",
        server.log()
    );
    serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("body of / is not JSON ({e}): {reply:?}"))
}

/// `curl https://localhost:PORT/` presenting `crt`/`key` (e.g. from another CA).
fn curl_with_pair(pki: &Pki, port: u16, crt: &Path, key: &Path) -> Ran {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "20", "--http1.1"])
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(&pki.ca_pem)
        .arg("--cert")
        .arg(crt)
        .arg("--key")
        .arg(key)
        .arg(format!("https://localhost:{port}/"));
    run_bounded(cmd, b"", PEER_TIMEOUT)
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("UTF-8 temp path").to_string()
}

// ---------------------------------------------------------------------------------------------
// /status

#[test]
fn status_reports_identity_before_and_after_rotation_and_bad_write() {
    let pki = Pki::new();
    let now = now_s();
    let (nb, na) = (
        now - time::Duration::hours(1),
        now + time::Duration::hours(1),
    );
    let first = server_leaf(&pki.ca, nb, na);
    let bundle = pki.path("bundle.pem");
    write_leaf(&bundle, &first);
    let bundle_s = path_str(&bundle);
    let (mut server, admin) = start_observed(&pki, &bundle, &[]);

    // --- Before any change.
    let status = get_status(admin).expect("/status");
    assert_eq!(status["state"], "ok", "overall state: {status:#}");
    assert_eq!(status["ready"], true, "ready: {status:#}");
    rfc3339_unix(&status, "now");
    let id = credential(&status, "identity");
    assert_eq!(id["name"], "server", "{id:#}");
    assert_eq!(id["generation"], 1, "{id:#}");
    assert_eq!(id["state"], "ok", "{id:#}");
    assert_eq!(
        id["fingerprint"],
        first.fingerprint_sha256_hex(),
        "fingerprint: {id:#}"
    );
    let serial = id["serial"]
        .as_str()
        .unwrap_or_else(|| panic!("no serial: {id:#}"));
    assert_eq!(
        normalise_serial_hex(serial),
        leaf_serial_hex(&first),
        "serial: {id:#}"
    );
    assert!(
        id["subject"]
            .as_str()
            .is_some_and(|s| s.contains("CN=localhost")),
        "subject: {id:#}"
    );
    assert!(
        id["issuer"]
            .as_str()
            .is_some_and(|s| s.contains("hitless serve test CA")),
        "issuer: {id:#}"
    );
    assert!(
        id["dns_names"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == "localhost")),
        "dns_names: {id:#}"
    );
    assert!(
        id["ip_addresses"]
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n == "127.0.0.1")),
        "ip_addresses: {id:#}"
    );
    assert_eq!(
        rfc3339_unix(id, "not_before"),
        nb.unix_timestamp(),
        "not_before: {id:#}"
    );
    assert_eq!(
        rfc3339_unix(id, "not_after"),
        na.unix_timestamp(),
        "not_after: {id:#}"
    );
    let to_expiry = id["seconds_to_expiry"]
        .as_i64()
        .unwrap_or_else(|| panic!("seconds_to_expiry: {id:#}"));
    assert!(
        to_expiry > 0 && to_expiry <= 3600,
        "seconds_to_expiry: {id:#}"
    );
    // The default expiring-soon threshold is a third of the lifetime: 40 min before not_after.
    let soon = rfc3339_unix(id, "expiring_soon_at");
    assert!(
        (soon - (na.unix_timestamp() - 40 * 60)).abs() <= 1,
        "expiring_soon_at: {id:#}"
    );
    let loaded_at = rfc3339_unix(id, "loaded_at");
    assert!(
        loaded_at >= now.unix_timestamp() - 1,
        "loaded_at before the test started: {id:#}"
    );
    assert_eq!(id["detection"], "watch", "{id:#}");
    assert_eq!(id["sources"], serde_json::json!([bundle_s]), "{id:#}");
    assert!(id["last_error"].is_null(), "last_error: {id:#}");
    assert_eq!(id["reloads_ok"], 1, "{id:#}");
    assert_eq!(id["reloads_failed"], 0, "{id:#}");

    let trust = credential(&status, "trust");
    assert_eq!(trust["state"], "ok", "{trust:#}");
    assert_eq!(trust["generation"], 1, "{trust:#}");
    assert_eq!(
        trust["sources"],
        serde_json::json!([path_str(&pki.ca_pem)]),
        "{trust:#}"
    );
    let ca_fingerprint = hitless_test_pki::sha256_hex(&pki.ca.cert_der());
    let cas = trust["cas"]
        .as_array()
        .unwrap_or_else(|| panic!("no cas: {trust:#}"));
    assert_eq!(cas.len(), 1, "cas: {trust:#}");
    assert_eq!(cas[0]["fingerprint"], ca_fingerprint, "{trust:#}");
    assert!(
        cas[0]["subject"]
            .as_str()
            .is_some_and(|s| s.contains("hitless serve test CA")),
        "CA subject: {trust:#}"
    );
    rfc3339_unix(&cas[0], "not_after");
    assert!(trust["last_error"].is_null(), "{trust:#}");

    // --- Rotation: generation 2, the new leaf.
    let second = hour_leaf(&pki.ca);
    let second_fp = second.fingerprint_sha256_hex();
    write_leaf(&bundle, &second);
    let status = wait_status(
        &mut server,
        admin,
        "generation 2 with the new fingerprint",
        |id, _| id["generation"] == 2 && id["fingerprint"] == second_fp,
    );
    let id = credential(&status, "identity");
    assert_eq!(status["state"], "ok", "{status:#}");
    assert_eq!(id["state"], "ok", "{id:#}");
    assert!(id["last_error"].is_null(), "{id:#}");
    assert_eq!(id["reloads_ok"], 2, "{id:#}");
    assert_eq!(
        normalise_serial_hex(id["serial"].as_str().expect("serial")),
        leaf_serial_hex(&second),
        "{id:#}"
    );
    assert!(rfc3339_unix(id, "loaded_at") >= loaded_at, "{id:#}");

    // --- A bad write: reported, generation 2 kept and served.
    hitless_test_pki::write_atomic(&bundle, b"this is not a PEM bundle\n");
    let status = wait_status(
        &mut server,
        admin,
        "last_error after a bad write",
        |id, _| !id["last_error"].is_null(),
    );
    let id = credential(&status, "identity");
    let error = &id["last_error"];
    assert_eq!(error["file"], bundle_s.as_str(), "last_error.file: {id:#}");
    assert!(
        error["reason"]
            .as_str()
            .is_some_and(|r| !r.trim().is_empty()),
        "last_error.reason: {id:#}"
    );
    rfc3339_unix(error, "at");
    assert_eq!(status["state"], "degraded", "{status:#}");
    assert_eq!(status["ready"], true, "{status:#}");
    assert_eq!(id["state"], "degraded", "{id:#}");
    assert_eq!(id["generation"], 2, "{id:#}");
    assert_eq!(id["fingerprint"], second_fp, "{id:#}");
    assert!(
        id["reloads_failed"].as_u64().is_some_and(|n| n >= 1),
        "reloads_failed: {id:#}"
    );
    let root = tls_root(&pki, &server);
    assert_eq!(
        root["server"]["fingerprint"], second_fp,
        "the last good identity is not served after a bad write: {root:#}"
    );
    assert_eq!(root["server"]["generation"], 2, "{root:#}");

    // --- A good write again: the error clears.
    let third = hour_leaf(&pki.ca);
    let third_fp = third.fingerprint_sha256_hex();
    write_leaf(&bundle, &third);
    let status = wait_status(&mut server, admin, "recovery to generation 3", |id, _| {
        id["generation"] == 3 && id["fingerprint"] == third_fp && id["last_error"].is_null()
    });
    assert_eq!(status["state"], "ok", "{status:#}");
    assert_eq!(credential(&status, "identity")["state"], "ok", "{status:#}");
}

// ---------------------------------------------------------------------------------------------
// /metrics

#[test]
fn metrics_series_move_with_rotations_failures_and_refusals() {
    const RELOADS: &str = "hitless_reloads_total";
    const GENERATION: &str = "hitless_credential_generation";
    const NOT_AFTER: &str = "hitless_credential_not_after_timestamp_seconds";
    const HANDSHAKES: &str = "hitless_handshakes_total";
    const OPEN: &str = "hitless_open_connections";
    let server_ok = [("credential", "server"), ("result", "ok")];
    let server_error = [("credential", "server"), ("result", "error")];
    let server_cred = [("credential", "server")];

    let pki = Pki::new();
    let first = hour_leaf(&pki.ca);
    let bundle = pki.path("bundle.pem");
    write_leaf(&bundle, &first);
    let (mut server, admin) = start_observed(&pki, &bundle, &[]);

    // One accepted handshake, so that the series exists.
    tls_root(&pki, &server);
    let port = server.port;
    let accepted = [("result", "accepted"), ("reason", "")];
    let m = wait_metrics(&mut server, admin, "an accepted handshake counted", |m| {
        m.count(HANDSHAKES, &accepted) >= 1.0
    });
    assert!(
        m.text.trim_end().ends_with("# EOF"),
        "not OpenMetrics text:\n{}",
        m.text
    );
    // Whether the initial load is counted is pinned by `initial_load_is_counted_in_metrics`;
    // here only the increments matter (absent = 0).
    let reloads_ok_start = m.count(RELOADS, &server_ok);
    assert_eq!(m.require(GENERATION, &server_cred), 1.0, "{}", m.text);
    let na = first_not_after(&first);
    let reported = m.require(NOT_AFTER, &server_cred);
    assert!(
        (reported - na as f64).abs() <= 1.0,
        "not_after gauge {reported} vs the leaf's {na}:\n{}",
        m.text
    );
    assert!(m.require(OPEN, &[]) >= 0.0, "{}", m.text);
    assert_eq!(m.count(RELOADS, &server_error), 0.0, "{}", m.text);
    // The client trust has its series too.
    assert_eq!(
        m.require(GENERATION, &[("credential", "client-trust")]),
        1.0,
        "{}",
        m.text
    );

    // Rotation: generation 2, one more successful reload.
    let second = hour_leaf(&pki.ca);
    write_leaf(&bundle, &second);
    let m = wait_metrics(&mut server, admin, "generation gauge 2", |m| {
        m.get(GENERATION, &server_cred) == Some(2.0)
    });
    assert_eq!(
        m.require(RELOADS, &server_ok),
        reloads_ok_start + 1.0,
        "{}",
        m.text
    );
    let na2 = first_not_after(&second);
    assert!(
        (m.require(NOT_AFTER, &server_cred) - na2 as f64).abs() <= 1.0,
        "{}",
        m.text
    );

    // A bad write: an error counted, the generation kept.
    hitless_test_pki::write_atomic(&bundle, b"-----BEGIN CERTIFICATE-----\ngarbage\n");
    let m = wait_metrics(&mut server, admin, "a failed reload counted", |m| {
        m.count(RELOADS, &server_error) >= 1.0
    });
    assert_eq!(m.require(GENERATION, &server_cred), 2.0, "{}", m.text);
    assert_eq!(
        m.require(RELOADS, &server_ok),
        reloads_ok_start + 1.0,
        "{}",
        m.text
    );

    // A client without a certificate.
    let no_cert = curl(&pki, port, "/", HttpVersion::Http11, false);
    assert!(
        no_cert.ran.status.is_some() && !no_cert.ran.success(),
        "curl without a client certificate was not refused: {no_cert:?}"
    );
    let refused_no_cert = [("result", "refused"), ("reason", "no_client_certificate")];
    wait_metrics(&mut server, admin, "a no_client_certificate refusal", |m| {
        m.count(HANDSHAKES, &refused_no_cert) >= 1.0
    });

    // A client certificate from a CA the server does not trust.
    let stranger_ca = Ca::new_root("some other CA", KeyType::EcP256);
    let stranger = stranger_ca.issue(&LeafSpec::client(CLIENT_CN));
    let (crt, key) = stranger.write_pair(pki.dir.path(), "stranger.crt", "stranger.key");
    let ran = curl_with_pair(&pki, port, &crt, &key);
    assert!(
        ran.status.is_some() && !ran.success(),
        "curl with a certificate from an unknown CA was not refused: {ran:?}"
    );
    let refused_unknown = [("result", "refused"), ("reason", "unknown_ca")];
    let m = wait_metrics(&mut server, admin, "an unknown_ca refusal", |m| {
        m.count(HANDSHAKES, &refused_unknown) >= 1.0
    });
    // Refusals are not counted as acceptances, and vice versa.
    assert!(m.count(HANDSHAKES, &refused_no_cert) >= 1.0, "{}", m.text);
    assert!(m.count(HANDSHAKES, &accepted) >= 1.0, "{}", m.text);
}

/// The leaf's notAfter as Unix time, read back from the certificate itself.
fn first_not_after(leaf: &Leaf) -> i64 {
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf.cert_der).expect("parse leaf");
    cert.validity().not_after.timestamp()
}

// ---------------------------------------------------------------------------------------------
// SIGHUP

#[test]
fn sighup_with_manual_reload_picks_up_new_identity() {
    let pki = Pki::new();
    let first = hour_leaf(&pki.ca);
    let bundle = pki.path("bundle.pem");
    write_leaf(&bundle, &first);
    let (mut server, admin) = start_observed(&pki, &bundle, &["--reload", "manual"]);
    let port = server.port;

    let status = get_status(admin).expect("/status");
    let id = credential(&status, "identity");
    assert_eq!(id["detection"], "manual", "{id:#}");
    assert_eq!(id["generation"], 1, "{id:#}");
    let before = served_serial(&pki, port)
        .unwrap_or_else(|e| panic!("{e}\n--- server log ---\n{}", server.log()));
    assert_eq!(before, leaf_serial_hex(&first));

    let second = hour_leaf(&pki.ca);
    let expected = leaf_serial_hex(&second);
    assert_ne!(
        expected, before,
        "the test PKI issued the same serial twice"
    );
    write_leaf(&bundle, &second);

    // Manual mode: nothing looks at the files by itself.
    thread::sleep(Duration::from_secs(1));
    let still = served_serial(&pki, port)
        .unwrap_or_else(|e| panic!("{e}\n--- server log ---\n{}", server.log()));
    assert_eq!(
        still,
        before,
        "--reload manual picked up the new file without SIGHUP\n--- server log ---\n{}",
        server.log()
    );
    let status = get_status(admin).expect("/status");
    assert_eq!(
        credential(&status, "identity")["generation"],
        1,
        "{status:#}"
    );

    send_signal(server.pid(), "HUP");
    wait_for(
        &mut server,
        "the new serial after SIGHUP",
        CHANGE_TIMEOUT,
        || match served_serial(&pki, port) {
            Ok(s) if s == expected => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let status = get_status(admin).expect("/status");
    let id = credential(&status, "identity");
    assert_eq!(id["generation"], 2, "{id:#}");
    assert_eq!(id["fingerprint"], second.fingerprint_sha256_hex(), "{id:#}");
    assert!(
        server.try_wait().is_none(),
        "SIGHUP stopped the server\n--- server log ---\n{}",
        server.log()
    );
}

// ---------------------------------------------------------------------------------------------
// --wait-for-credentials

#[test]
fn wait_for_credentials_then_serve() {
    let pki = Pki::new();
    let dir = pki.path("later");
    std::fs::create_dir(&dir).expect("create dir");
    let identity = dir.join("identity.pem");
    let ca = dir.join("ca.pem");
    let args: Vec<OsString> = vec![
        "--identity".into(),
        identity.clone().into(),
        "--client-ca".into(),
        ca.clone().into(),
        "--wait-for-credentials".into(),
        "60s".into(),
    ];
    // The admin listener answers while the credentials are missing.
    let (mut server, admin) =
        start_until(&pki, &args, |_, admin| admin_get(admin, "/healthz").0 != 0);
    let port = server.port;
    let (code, body, _) = admin_get(admin, "/healthz");
    assert_eq!(code, 503, "/healthz before the credentials exist: {body:?}");
    assert_eq!(body.trim(), "waiting for credentials");
    let status = get_status(admin).expect("/status");
    assert_eq!(status["ready"], false, "{status:#}");
    assert_ne!(status["state"], "ok", "{status:#}");
    assert_eq!(
        credential(&status, "identity")["generation"],
        0,
        "{status:#}"
    );
    assert!(
        !listening(port),
        "the TLS port listens before the credentials exist"
    );

    // Still waiting a while later; then the files arrive.
    thread::sleep(Duration::from_secs(2));
    let (code, _, ran) = admin_get(admin, "/healthz");
    assert_eq!(code, 503, "{ran:?}\n--- server log ---\n{}", server.log());
    assert!(server.try_wait().is_none(), "{}", server.log());
    hitless_test_pki::write_atomic(&ca, pki.ca.cert_pem().as_bytes());
    write_leaf(&identity, &pki.server);

    wait_for(
        &mut server,
        "/healthz 200",
        CHANGE_TIMEOUT,
        || match admin_get(admin, "/healthz") {
            (200, body, _) if body.trim() == "ok" => Ok(()),
            (code, body, _) => Err(format!("{code} {body:?}")),
        },
    );
    server.wait_ready();
    let root = tls_root(&pki, &server);
    assert_eq!(
        root["server"]["fingerprint"],
        pki.server.fingerprint_sha256_hex(),
        "{root:#}"
    );
    assert_eq!(
        root["client"]["subject"],
        format!("CN={CLIENT_CN}"),
        "{root:#}"
    );
    let status = get_status(admin).expect("/status");
    assert_eq!(status["ready"], true, "{status:#}");
    assert_eq!(status["state"], "ok", "{status:#}");
}

#[test]
fn wait_for_credentials_gives_up_naming_the_missing_file() {
    let pki = Pki::new();
    let dir = pki.path("never");
    std::fs::create_dir(&dir).expect("create dir");
    let identity = dir.join("identity.pem");
    let ca = dir.join("ca.pem");
    let args: Vec<OsString> = vec![
        "--identity".into(),
        identity.clone().into(),
        "--client-ca".into(),
        ca.clone().into(),
        "--wait-for-credentials".into(),
        "2s".into(),
    ];
    let started = Instant::now();
    let mut server = start_server(pki.dir.path(), &args);
    let timeout = Duration::from_secs(60);
    let status = server
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("still running {timeout:?} after --wait-for-credentials 2s"));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "gave up before --wait-for-credentials 2s: {status}\n{}",
        server.log()
    );
    assert!(!status.success(), "exited with {status}\n{}", server.log());
    let log = server.log();
    assert!(
        log.contains(&path_str(&identity)),
        "stderr does not name the missing identity file: {log}"
    );
    assert!(
        log.contains(&path_str(&ca)),
        "stderr does not name the missing CA file: {log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Expiry events

#[test]
fn short_lived_identity_goes_expiring_soon_then_expired() {
    const EVENTS: &str = "hitless_credential_events_total";
    let soon_event = [("credential", "server"), ("event", "expiring_soon")];
    let expired_event = [("credential", "server"), ("event", "expired")];

    // Lifetime 30 s, of which the last third (10 s) is "expiring soon": soon at start + 10 s,
    // expired at start + 20 s. "Soon" is a little in the future at start so that it happens
    // while the server runs; the case of a start already inside the window is pinned by
    // `identity_already_expiring_at_start_is_counted`.
    let start = now_s();
    let (nb, na) = (
        start - time::Duration::seconds(10),
        start + time::Duration::seconds(20),
    );
    let pki = Pki::new();
    let leaf = server_leaf(&pki.ca, nb, na);
    let bundle = pki.path("bundle.pem");
    write_leaf(&bundle, &leaf);
    let (mut server, admin) = start_observed(&pki, &bundle, &[]);

    let status = get_status(admin).expect("/status");
    let id = credential(&status, "identity");
    let soon_at = rfc3339_unix(id, "expiring_soon_at");
    assert!(
        (soon_at - (na.unix_timestamp() - 10)).abs() <= 1,
        "expiring_soon_at: {id:#}"
    );

    let status = wait_status(&mut server, admin, "the identity expiring soon", |id, _| {
        id["state"] == "degraded"
    });
    assert_eq!(status["state"], "degraded", "{status:#}");
    let id = credential(&status, "identity");
    assert!(id["last_error"].is_null(), "{id:#}");
    assert_eq!(id["generation"], 1, "{id:#}");
    wait_metrics(&mut server, admin, "one expiring_soon event", |m| {
        m.count(EVENTS, &soon_event) == 1.0
    });

    let status = wait_status(&mut server, admin, "the identity expired", |id, _| {
        id["state"] == "expired"
    });
    assert_eq!(status["state"], "expired", "{status:#}");
    let id = credential(&status, "identity");
    assert_eq!(id["generation"], 1, "{id:#}");
    assert_eq!(id["fingerprint"], leaf.fingerprint_sha256_hex(), "{id:#}");
    assert!(
        id["seconds_to_expiry"].as_i64().is_some_and(|s| s <= 0),
        "{id:#}"
    );
    let m = wait_metrics(&mut server, admin, "one expired event", |m| {
        m.count(EVENTS, &expired_event) == 1.0
    });
    assert_eq!(m.count(EVENTS, &soon_event), 1.0, "{}", m.text);

    // Still running and reporting; each event counted once, however long it stays expired.
    thread::sleep(Duration::from_secs(1));
    let m = get_metrics(admin).expect("/metrics");
    assert_eq!(m.count(EVENTS, &soon_event), 1.0, "{}", m.text);
    assert_eq!(m.count(EVENTS, &expired_event), 1.0, "{}", m.text);
    let status = get_status(admin).expect("/status");
    assert_eq!(status["state"], "expired", "{status:#}");
    assert_eq!(
        credential(&status, "identity")["generation"],
        1,
        "{status:#}"
    );
}

// ---------------------------------------------------------------------------------------------
// Regressions of bugs found while writing these tests (metrics subscribed late, expiry not
// announced without a detector thread).

#[test]
fn initial_load_is_counted_in_metrics() {
    let pki = Pki::new();
    let bundle = pki.write_bundle("bundle.pem", &pki.server);
    let (mut server, admin) = start_observed(&pki, &bundle, &[]);
    // The initial load is a successful reload (`/status` says reloads_ok 1): the counter says so
    // from the start, for the identity and for the client trust.
    let m = wait_metrics(&mut server, admin, "the initial loads counted", |m| {
        m.get(
            "hitless_reloads_total",
            &[("credential", "server"), ("result", "ok")],
        ) == Some(1.0)
            && m.get(
                "hitless_reloads_total",
                &[("credential", "client-trust"), ("result", "ok")],
            ) == Some(1.0)
    });
    let status = get_status(admin).expect("/status");
    assert_eq!(
        credential(&status, "identity")["reloads_ok"],
        1,
        "{status:#}\n{}",
        m.text
    );
}

#[test]
fn identity_already_expiring_at_start_is_counted() {
    // Lifetime 2 h 30 min; the last third (50 min) began 20 min ago: expiring soon at start,
    // as for a server restarted late in its certificate's life.
    let start = now_s();
    let pki = Pki::new();
    let leaf = server_leaf(
        &pki.ca,
        start - time::Duration::hours(2),
        start + time::Duration::minutes(30),
    );
    let bundle = pki.path("bundle.pem");
    write_leaf(&bundle, &leaf);
    let (mut server, admin) = start_observed(&pki, &bundle, &[]);
    let status = get_status(admin).expect("/status");
    assert_eq!(
        credential(&status, "identity")["state"],
        "degraded",
        "{status:#}"
    );
    wait_metrics(&mut server, admin, "one expiring_soon event", |m| {
        m.count(
            "hitless_credential_events_total",
            &[("credential", "server"), ("event", "expiring_soon")],
        ) == 1.0
    });
}

#[test]
fn expiry_is_announced_in_every_reload_mode() {
    const EVENTS: &str = "hitless_credential_events_total";
    let soon_event = [("credential", "server"), ("event", "expiring_soon")];
    let expired_event = [("credential", "server"), ("event", "expired")];
    // As in `short_lived_identity_goes_expiring_soon_then_expired`: soon at start + 10 s,
    // expired at start + 20 s; one server per mode, run side by side.
    let start = now_s();
    let pki = Pki::new();
    let leaf = server_leaf(
        &pki.ca,
        start - time::Duration::seconds(10),
        start + time::Duration::seconds(20),
    );
    let mut servers = Vec::new();
    for mode in ["manual", "on-handshake"] {
        let bundle = pki.path(&format!("bundle-{mode}.pem"));
        write_leaf(&bundle, &leaf);
        let (server, admin) = start_observed(&pki, &bundle, &["--reload", mode]);
        servers.push((mode, server, admin));
    }
    for (mode, server, admin) in &mut servers {
        let admin = *admin;
        wait_status(server, admin, "the identity expired", |id, _| {
            id["state"] == "expired"
        });
        let m = wait_metrics(server, admin, "one expired event", |m| {
            m.count(EVENTS, &expired_event) == 1.0
        });
        assert_eq!(
            m.count(EVENTS, &soon_event),
            1.0,
            "--reload {mode}:\n{}",
            m.text
        );
        let log = server.log();
        assert!(
            log.contains("EXPIRED"),
            "--reload {mode}: the expiry is not logged:\n{log}"
        );
    }
}

/// `/status` of the trust shows the CRL in force with its number and the CA that verified it,
/// the older CRL of the same issuer as superseded, and a trust anchor that is not a CA.
#[test]
fn status_shows_crls_in_force_superseded_and_non_ca_anchors() {
    let pki = Pki::new();
    let bundle = pki.write_bundle("identity.pem", &pki.server);
    let older = pki.ca.crl(&[], TimeDuration::hours(1));
    let newer = pki.ca.crl(&[], TimeDuration::hours(1));
    let (older_file, newer_file) = (pki.path("older.crl"), pki.path("newer.crl"));
    std::fs::write(&older_file, older.pem).unwrap();
    std::fs::write(&newer_file, newer.pem).unwrap();
    // A leaf used as an extra anchor: trusted (pinning), but flagged.
    let pinned = pki.ca.issue(&LeafSpec::client("pinned-leaf"));
    let anchors = pki.path("anchors.pem");
    std::fs::write(
        &anchors,
        format!("{}{}", pki.ca.cert_pem(), pinned.cert_pem),
    )
    .unwrap();
    let args: Vec<OsString> = vec![
        "--identity".into(),
        bundle.into(),
        "--client-ca".into(),
        anchors.into(),
        "--crl".into(),
        older_file.clone().into(),
        "--crl".into(),
        newer_file.clone().into(),
    ];
    let (_server, admin) = start_until(&pki, &args, |server, admin| {
        listening(server.port) && get_status(admin).is_ok()
    });
    let status = get_status(admin).unwrap();
    let trust = credential(&status, "trust");
    let crls = trust["crls"].as_array().expect("crls array");
    assert_eq!(crls.len(), 1, "only the newest CRL is in force: {trust:#}");
    assert_eq!(crls[0]["file"], path_str(&newer_file), "{trust:#}");
    assert!(crls[0]["number"].is_string(), "{trust:#}");
    assert_eq!(
        crls[0]["verified_by"],
        sha256_hex(&pki.ca.cert_der()),
        "{trust:#}"
    );
    let superseded = trust["superseded_crls"]
        .as_array()
        .expect("superseded array");
    assert_eq!(superseded.len(), 1, "{trust:#}");
    assert_eq!(superseded[0]["file"], path_str(&older_file), "{trust:#}");
    let non_ca = trust["non_ca_anchors"].as_array().expect("non_ca_anchors");
    assert_eq!(non_ca.len(), 1, "{trust:#}");
    assert!(
        non_ca[0]["subject"]
            .as_str()
            .is_some_and(|s| s.contains("pinned-leaf")),
        "{trust:#}"
    );
}
