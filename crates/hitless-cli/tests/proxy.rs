//! Integration tests of `hitless proxy server` and `hitless proxy client`: real processes on
//! 127.0.0.1, a tiny plaintext backend in the test (HTTP, an echo stream, a PROXY v2 parser),
//! real plaintext clients (curl, Python urllib, std sockets), PKI generated at test time and
//! identities rotated by `hitless agent`.
//!
//! Every wait is bounded and polls an observable fact (a port, `/status`, a counter); nothing
//! asserts that something was fast.

mod common;

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use hitless_test_pki::LeafSpec;
use serde_json::Value;

/// How long a change (a reload, a counter) may take to show. Generous: debug build, busy CI.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read timeout of a test socket: a hang fails the test instead of blocking it.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// The plaintext backend.

/// What the backend saw in one PROXY v2 header.
#[derive(Debug, Clone, Default)]
struct ProxyHeader {
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    cn: Option<String>,
    version: Option<String>,
    client_bits: u8,
    verify: u32,
}

/// A plaintext backend on 127.0.0.1: each connection is either an HTTP/1.1 request (answered
/// `200 ok cn=<CN from the PROXY header or ->` and closed) or, if it starts with `ECHO\n`, an
/// echo stream: everything is sent back, and on end of data `BYE <bytes>\n` follows and the
/// connection closes (which needs the half-close forwarded).
struct Backend {
    port: u16,
    connections: Arc<AtomicU64>,
    headers: Arc<Mutex<Vec<ProxyHeader>>>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start(expect_proxy: bool) -> Backend {
        Self::on(
            TcpListener::bind("127.0.0.1:0").expect("bind backend"),
            expect_proxy,
        )
    }

    fn on(listener: TcpListener, expect_proxy: bool) -> Backend {
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicU64::new(0));
        let headers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        listener.set_nonblocking(true).unwrap();
        {
            let (connections, headers, stop) = (connections.clone(), headers.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            connections.fetch_add(1, Ordering::SeqCst);
                            let headers = headers.clone();
                            thread::spawn(move || {
                                let _ = serve_backend(stream, expect_proxy, &headers);
                            });
                        }
                        Err(_) => thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        Backend {
            port,
            connections,
            headers,
            stop,
        }
    }

    fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve_backend(
    mut stream: TcpStream,
    expect_proxy: bool,
    headers: &Mutex<Vec<ProxyHeader>>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut cn = None;
    if expect_proxy {
        let header = read_proxy_header(&mut stream)?;
        cn = header.cn.clone();
        headers.lock().unwrap().push(header);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if buf.starts_with(b"ECHO\n") {
            let mut total = (buf.len() - 5) as u64;
            stream.write_all(&buf[5..])?;
            loop {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                stream.write_all(&chunk[..n])?;
            }
            stream.write_all(format!("BYE {total}\n").as_bytes())?;
            return Ok(());
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let body = format!("ok cn={}\n", cn.as_deref().unwrap_or("-"));
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(response.as_bytes())?;
            return Ok(());
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Parses a PROXY protocol v2 header as a backend does (HAProxy's spec, independent of the
/// proxy's writer).
fn read_proxy_header(stream: &mut TcpStream) -> std::io::Result<ProxyHeader> {
    let mut fixed = [0u8; 16];
    stream.read_exact(&mut fixed)?;
    assert_eq!(
        &fixed[..12],
        b"\r\n\r\n\0\r\nQUIT\n",
        "no PROXY v2 signature: {fixed:02x?}"
    );
    assert_eq!(fixed[12], 0x21, "version 2, command PROXY");
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    let mut header = ProxyHeader::default();
    let rest = match fixed[13] {
        0x11 => {
            let ip = |b: &[u8]| std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
            header.source = Some(SocketAddr::from((ip(&body[0..4]), port(&body[8..10]))));
            header.destination = Some(SocketAddr::from((ip(&body[4..8]), port(&body[10..12]))));
            &body[12..]
        }
        other => panic!("unexpected address family {other:#x}"),
    };
    for (kind, value) in tlvs(rest) {
        if kind == 0x20 {
            header.client_bits = value[0];
            header.verify = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
            for (sub, v) in tlvs(&value[5..]) {
                let text = String::from_utf8(v).expect("UTF-8 sub-TLV");
                match sub {
                    0x21 => header.version = Some(text),
                    0x22 => header.cn = Some(text),
                    _ => {}
                }
            }
        }
    }
    Ok(header)
}

fn tlvs(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !b.is_empty() {
        assert!(b.len() >= 3, "truncated TLV");
        let len = usize::from(u16::from_be_bytes([b[1], b[2]]));
        out.push((b[0], b[3..3 + len].to_vec()));
        b = &b[3 + len..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The proxies.

/// A running `hitless proxy` with its admin port.
struct Proxy {
    guard: ServerGuard,
    /// Its `--listen` port.
    port: u16,
    admin: u16,
}

impl Proxy {
    /// Starts `hitless proxy MODE --listen 127.0.0.1:PORT --admin-listen 127.0.0.1:ADMIN ARGS`
    /// and waits for `/healthz` to answer 200.
    fn start(dir: &Path, mode: &str, args: &[OsString]) -> Proxy {
        let mut proxy = Self::spawn(dir, mode, args);
        proxy.wait_healthy();
        proxy
    }

    fn spawn(dir: &Path, mode: &str, args: &[OsString]) -> Proxy {
        let port = free_port();
        let admin = free_port();
        let mut cmd = Command::new(hitless_bin());
        cmd.args(["proxy", mode, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-listen")
            .arg(format!("127.0.0.1:{admin}"))
            .args(args);
        let guard = ServerGuard::spawn(cmd, admin, dir.join(format!("proxy-{mode}-{port}.log")));
        Proxy { guard, port, admin }
    }

    fn wait_healthy(&mut self) {
        self.guard.wait_ready();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((200, _)) = http_get(self.admin, "/healthz") {
                return;
            }
            assert!(
                self.guard.try_wait().is_none(),
                "proxy exited\n{}",
                self.guard.log()
            );
            assert!(
                Instant::now() < deadline,
                "proxy never healthy\n{}",
                self.guard.log()
            );
            thread::sleep(POLL);
        }
    }

    fn status(&self) -> Value {
        let (code, body) = http_get(self.admin, "/status").expect("GET /status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("/status is JSON")
    }

    /// `proxies[0]` of `/status`.
    fn stats(&self) -> Value {
        self.status()["proxies"][0].clone()
    }

    /// A counter of `proxies[0].<map>.<key>` (0 if absent).
    fn count(&self, map: &str, key: &str) -> u64 {
        self.stats()[map][key].as_u64().unwrap_or(0)
    }

    /// Polls until `f(stats)` holds; panics with the log after [`CHANGE_TIMEOUT`].
    fn wait_until(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + CHANGE_TIMEOUT;
        loop {
            let status = self.status();
            if f(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not seen after {CHANGE_TIMEOUT:?}\n{status:#}\n{}",
                self.guard.log()
            );
            thread::sleep(POLL);
        }
    }

    fn log(&self) -> String {
        self.guard.log()
    }
}

/// A plain HTTP GET over a std socket: (status code, body).
fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no response head: {text:?}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {head:?}"))?;
    Ok((code, body.to_string()))
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn p(path: &Path) -> OsString {
    path.as_os_str().to_owned()
}

/// `proxy server` flags: the PKI's server identity and client CA, forwarding to `target`.
fn server_args(pki: &Pki, target: &str, extra: &[&str]) -> Vec<OsString> {
    let mut args = vec![
        "--target".into(),
        target.into(),
        "--cert".into(),
        p(&pki.server_crt),
        "--key".into(),
        p(&pki.server_key),
        "--client-ca".into(),
        p(&pki.ca_pem),
    ];
    args.extend(os(extra));
    args
}

/// `proxy client` flags: the PKI's client identity and CA, forwarding to `server_port`.
fn client_args(pki: &Pki, server_port: u16, extra: &[&str]) -> Vec<OsString> {
    let mut args = vec![
        "--target".into(),
        format!("127.0.0.1:{server_port}").into(),
        "--server-name".into(),
        "localhost".into(),
        "--cert".into(),
        p(&pki.client_crt),
        "--key".into(),
        p(&pki.client_key),
        "--ca".into(),
        p(&pki.ca_pem),
    ];
    args.extend(os(extra));
    args
}

/// A backend, a `proxy server` in front of it and a `proxy client` in front of that.
struct Chain {
    pki: Pki,
    backend: Backend,
    server: Proxy,
    client: Proxy,
}

fn chain(server_extra: &[&str], expect_proxy: bool) -> Chain {
    let pki = Pki::new();
    let backend = Backend::start(expect_proxy);
    let server = Proxy::start(
        pki.dir.path(),
        "server",
        &server_args(&pki, &format!("127.0.0.1:{}", backend.port), server_extra),
    );
    let client = Proxy::start(
        pki.dir.path(),
        "client",
        &client_args(&pki, server.port, &[]),
    );
    Chain {
        pki,
        backend,
        server,
        client,
    }
}

/// Opens an echo stream through `port`; returns the socket (after checking one round trip).
fn open_echo(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the proxy client");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"ECHO\n").unwrap();
    echo_round(&mut s, b"hello\n").expect("first echo through the tunnel");
    s
}

/// Sends `line` and reads it back.
fn echo_round(s: &mut TcpStream, line: &[u8]) -> Result<(), String> {
    s.write_all(line).map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; line.len()];
    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    if back != line {
        return Err(format!("echoed {back:?} for {line:?}"));
    }
    Ok(())
}

/// Does a connection through `port` get closed without a response (EOF or reset) in time?
fn closed_without_response(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return true;
    };
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Ok(_) => raw.is_empty(),
        Err(e) => {
            e.kind() != std::io::ErrorKind::WouldBlock && e.kind() != std::io::ErrorKind::TimedOut
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn curl_and_urllib_reach_the_backend_through_a_proxy_pair_and_sessions_resume() {
    let c = chain(&["--allow-cn", CLIENT_CN], false);
    let url = format!("http://127.0.0.1:{}/", c.client.port);
    for _ in 0..3 {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--max-time", "20", &url]);
        let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
        assert!(ran.success(), "{ran:?}\n{}", c.server.log());
        assert_eq!(ran.stdout, "ok cn=-\n");
    }
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sys, urllib.request\n\
         for _ in range(3):\n\
         \x20   r = urllib.request.urlopen(sys.argv[1], timeout=20)\n\
         \x20   assert r.status == 200, r.status\n\
         \x20   sys.stdout.write(r.read().decode())\n",
        &url,
    ]);
    let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
    assert!(ran.success(), "{ran:?}");
    assert_eq!(ran.stdout, "ok cn=-\n".repeat(3));
    assert_eq!(c.backend.connections(), 6);

    // Six upstream handshakes: the first full, the later ones resumed (TLS 1.3 tickets).
    let client = c.client.stats();
    let full = client["upstream_handshakes"]["full"].as_u64().unwrap_or(0);
    let resumed = client["upstream_handshakes"]["resumed"]
        .as_u64()
        .unwrap_or(0);
    assert_eq!(full + resumed, 6, "{client:#}");
    assert!(resumed >= 4, "sessions were not resumed: {client:#}");
    assert_eq!(client["tunnels_opened"], 6);
    let server = c.server.stats();
    assert_eq!(server["tunnels_opened"], 6, "{server:#}");
    assert!(server["bytes_client_to_target"].as_u64().unwrap() > 0);
    assert!(server["bytes_target_to_client"].as_u64().unwrap() > 0);
    // The server saw the client's certificate, the client the server's.
    assert_eq!(server["last_peer"]["subject"], format!("CN={CLIENT_CN}"));
    assert_eq!(client["last_peer"]["subject"], "CN=localhost");
    let (code, metrics) = http_get(c.server.admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("hitless_proxy_tunnels_total{proxy=\"server\"} 6"),
        "{metrics}"
    );
}

#[test]
fn half_close_is_forwarded_and_the_reply_still_arrives() {
    let c = chain(&["--allow-all"], false);
    let mut s = open_echo(c.client.port);
    s.write_all(b"last words\n").unwrap();
    // The client is done sending; the backend's answer must still come back.
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest)
        .unwrap_or_else(|e| panic!("reading after half-close: {e}\n{}", c.server.log()));
    assert_eq!(rest, "last words\nBYE 17\n");
    c.client.wait_until("tunnel closed as done", |s| {
        s["proxies"][0]["closed"]["done"] == 1
    });
    c.server.wait_until("tunnel closed as done", |s| {
        s["proxies"][0]["closed"]["done"] == 1
    });
}

#[test]
fn a_trusted_client_matching_no_allow_rule_is_refused() {
    let c = chain(
        &[
            "--allow-cn",
            "someone-else",
            "--allow-dns",
            "billing.internal",
            "--allow-uri",
            "spiffe://example.org/*",
        ],
        false,
    );
    assert!(
        closed_without_response(c.client.port),
        "a client matching no rule got an answer"
    );
    c.server.wait_until("refusal counted", |s| {
        s["proxies"][0]["refused"]["not_allowed"] == 1
    });
    assert_eq!(c.backend.connections(), 0, "the backend was reached");
    assert!(
        c.server.log().contains("matches no --allow-* rule"),
        "{}",
        c.server.log()
    );

    // The same CA's client with the DNS name a rule allows gets in.
    let allowed = c
        .pki
        .ca
        .issue(&LeafSpec::client("billing").dns(vec!["billing.internal"]));
    let (crt, key) = allowed.write_pair(c.pki.dir.path(), "billing.crt", "billing.key");
    let mut args = client_args(&c.pki, c.server.port, &[]);
    for (i, a) in args.clone().iter().enumerate() {
        if a == "--cert" {
            args[i + 1] = p(&crt);
        }
        if a == "--key" {
            args[i + 1] = p(&key);
        }
    }
    let billing = Proxy::start(c.pki.dir.path(), "client", &args);
    assert_eq!(
        http_get(billing.port, "/").unwrap(),
        (200, "ok cn=-\n".to_string())
    );
    assert_eq!(c.backend.connections(), 1);
}

#[test]
fn without_an_allow_rule_the_server_refuses_to_start() {
    let pki = Pki::new();
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["proxy", "server", "--listen", "127.0.0.1:0"])
        .args(server_args(&pki, "127.0.0.1:1", &[]));
    let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
    assert_eq!(ran.status.and_then(|s| s.code()), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("--allow-all"), "{}", ran.stderr);
}

#[test]
fn the_backend_reads_the_proxy_v2_header_with_the_client_cn() {
    let c = chain(&["--allow-all", "--proxy-protocol"], true);
    assert_eq!(
        http_get(c.client.port, "/").unwrap(),
        (200, format!("ok cn={CLIENT_CN}\n"))
    );
    let headers = c.backend.headers.lock().unwrap().clone();
    assert_eq!(headers.len(), 1, "{headers:?}");
    let h = &headers[0];
    assert_eq!(h.cn.as_deref(), Some(CLIENT_CN));
    assert_eq!(h.version.as_deref(), Some("TLSv1.3"));
    assert_eq!(h.verify, 0, "verified");
    assert_eq!(h.client_bits & 0x01, 0x01, "PP2_CLIENT_SSL");
    assert_eq!(h.client_bits & 0x04, 0x04, "PP2_CLIENT_CERT_SESS");
    let source = h.source.expect("source address");
    assert_eq!(source.ip().to_string(), "127.0.0.1");
    assert_ne!(source.port(), 0);
    assert_eq!(
        h.destination.expect("destination"),
        SocketAddr::from(([127, 0, 0, 1], c.server.port))
    );
}

#[test]
fn target_down_closes_the_connection_promptly_counts_it_and_keeps_serving() {
    let pki = Pki::new();
    // A port nothing listens on (yet).
    let target_port = free_port();
    let server = Proxy::start(
        pki.dir.path(),
        "server",
        &server_args(&pki, &format!("127.0.0.1:{target_port}"), &["--allow-all"]),
    );
    let client = Proxy::start(
        pki.dir.path(),
        "client",
        &client_args(&pki, server.port, &[]),
    );
    assert!(closed_without_response(client.port));
    server.wait_until("connect failure counted", |s| {
        s["proxies"][0]["connect_failures"] == 1
            && s["proxies"][0]["refused"]["target_unreachable"] == 1
    });
    assert!(
        server.log().contains("cannot connect to the target"),
        "{}",
        server.log()
    );
    // The target comes up: the same proxies serve it.
    let backend = Backend::on(
        TcpListener::bind(("127.0.0.1", target_port)).expect("bind the target port"),
        false,
    );
    assert_eq!(
        http_get(client.port, "/").unwrap(),
        (200, "ok cn=-\n".into())
    );
    assert_eq!(backend.connections(), 1);
    assert_eq!(server.count("refused", "target_unreachable"), 1);

    // The proxy client's own target down: counted there.
    let lonely = Proxy::start(
        pki.dir.path(),
        "client",
        &client_args(&pki, free_port(), &[]),
    );
    assert!(closed_without_response(lonely.port));
    lonely.wait_until("client connect failure counted", |s| {
        s["proxies"][0]["connect_failures"] == 1
    });
}

#[test]
fn a_revoked_client_is_refused_after_one_reload_and_its_open_tunnel_is_dropped() {
    let pki = Pki::new();
    let crl = pki.path("crl.pem");
    std::fs::write(&crl, pki.ca.crl(&[], time::Duration::days(1)).pem).unwrap();
    let backend = Backend::start(false);
    let server = Proxy::start(pki.dir.path(), "server", &{
        let mut a = server_args(
            &pki,
            &format!("127.0.0.1:{}", backend.port),
            &["--allow-all", "--drop-untrusted"],
        );
        a.extend(["--crl".into(), p(&crl)]);
        a
    });
    let client = Proxy::start(
        pki.dir.path(),
        "client",
        &client_args(&pki, server.port, &[]),
    );
    // Two requests: the second resumes, so the client holds a ticket when the CRL changes.
    for _ in 0..2 {
        assert_eq!(http_get(client.port, "/").unwrap().0, 200);
    }
    let mut open = open_echo(client.port);
    let generation = |s: &Value| {
        s["credentials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["kind"] == "trust")
            .unwrap()["generation"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(generation(&server.status()), 1);

    // The CA revokes the client certificate.
    hitless_test_pki::write_atomic(
        &crl,
        pki.ca
            .crl(
                std::slice::from_ref(&pki.client.serial),
                time::Duration::days(1),
            )
            .pem
            .as_bytes(),
    );
    server.wait_until("trust reloaded", |s| generation(s) == 2);
    // The very next connection is refused (no resumption into the old verdict).
    assert!(
        closed_without_response(client.port),
        "a revoked client got through\n{}",
        server.log()
    );
    server.wait_until("revocation refusal counted", |s| {
        s["proxies"][0]["refused"]["revoked"] == 1
    });
    // The open tunnel is closed: its next read ends.
    let mut buf = [0u8; 64];
    let _ = open.write_all(b"still there?\n");
    match open.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => {
            // The echo may have crossed the drop; the one after it must not come back.
            let _ = n;
            let _ = open.write_all(b"and now?\n");
            let after = open.read(&mut buf);
            assert!(
                matches!(after, Ok(0) | Err(_)),
                "the revoked client's tunnel stays open: {after:?}\n{}",
                server.log()
            );
        }
    }
    server.wait_until("dropped tunnel counted", |s| {
        s["proxies"][0]["closed"]["dropped_untrusted"] == 1
    });
    assert_eq!(backend.connections(), 3, "only the three admitted tunnels");
}

#[test]
fn unix_sockets_on_both_plaintext_sides() {
    let pki = Pki::new();
    let backend_path = pki.path("backend.sock");
    let listener = std::os::unix::net::UnixListener::bind(&backend_path).unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten().take(1) {
            let mut stream = stream;
            let mut line = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            reader.read_line(&mut line).unwrap();
            stream
                .write_all(format!("unix saw {line}").as_bytes())
                .unwrap();
        }
    });
    let server = Proxy::start(
        pki.dir.path(),
        "server",
        &server_args(
            &pki,
            &format!("unix:{}", backend_path.display()),
            &["--allow-cn", CLIENT_CN],
        ),
    );
    let local = pki.path("local.sock");
    let admin = free_port();
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["proxy", "client", "--listen"])
        .arg(format!("unix:{}", local.display()))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .args(client_args(&pki, server.port, &[]));
    let mut client = Proxy {
        guard: ServerGuard::spawn(cmd, admin, pki.path("client-unix.log")),
        port: 0,
        admin,
    };
    client.wait_healthy();
    let mut s = std::os::unix::net::UnixStream::connect(&local).expect("connect unix:");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "unix saw hello\n", "{}", server.log());
}

#[test]
fn an_idle_tunnel_is_closed_after_the_idle_timeout() {
    let c = chain(&["--allow-all", "--idle-timeout", "1s"], false);
    let mut s = open_echo(c.client.port);
    // Nothing moves: the server closes the tunnel; the read ends (EOF) rather than timing out.
    let mut buf = [0u8; 16];
    let started = Instant::now();
    let read = s.read(&mut buf);
    assert!(
        matches!(read, Ok(0)),
        "{read:?} after {:?}\n{}",
        started.elapsed(),
        c.server.log()
    );
    c.server.wait_until("idle close counted", |s| {
        s["proxies"][0]["closed"]["idle"] == 1
    });
}

#[test]
fn sigterm_lets_open_tunnels_finish_and_refuses_new_ones() {
    let c = chain(&["--allow-all", "--shutdown-timeout", "60s"], false);
    let mut s = open_echo(c.client.port);
    let mut server = c.server;
    send_signal(server.guard.pid(), "TERM");
    // The listener closes; the open tunnel keeps working.
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    while TcpStream::connect(("127.0.0.1", server.port)).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        thread::sleep(POLL);
    }
    echo_round(&mut s, b"during shutdown\n").expect("the open tunnel works while draining");
    assert!(
        server.guard.try_wait().is_none(),
        "exited with a tunnel open"
    );
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    let _ = s.read_to_string(&mut rest);
    // Closed: the process ends well before the 60 s shutdown timeout, with status 0.
    let status = server
        .guard
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("did not exit once drained\n{}", server.log()));
    assert!(status.success(), "{status}");
    server.port = 0;
}

// ---------------------------------------------------------------------------------------------
// Rotation under load.

/// One running `hitless agent`, killed on drop.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(
    pki: &Path,
    name: &str,
    kind: &str,
    out: &Path,
    layout: &str,
    write: &str,
    log: PathBuf,
) -> Agent {
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["agent", "--dir"])
        .arg(pki)
        .args(["--name", name, "--kind", kind, "--out"])
        .arg(out)
        .args(["--layout", layout, "--write", write])
        .args(["--ttl", "4s", "--renew-at", "0.5", "--duration", "40s"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    Agent(cmd.spawn().expect("spawn hitless agent"))
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        thread::sleep(POLL);
    }
}

/// The serial of the served identity in a `/status`.
fn own_serial(status: &Value) -> Option<String> {
    status["credentials"]
        .as_array()?
        .iter()
        .find(|c| c["kind"] == "identity")?["serial"]
        .as_str()
        .map(str::to_owned)
}

#[test]
fn rotating_both_identities_under_load_fails_no_request_and_keeps_a_long_tunnel() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = dir.join("pki");
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["ca", "init", "--dir"]).arg(&pki);
    assert!(run_bounded(cmd, b"", PEER_TIMEOUT).success());
    let ca = pki.join("ca-bundle.pem");
    // Server: one bundle rewritten in place; client: a Kubernetes ..data swap. Every 2 s.
    let srv = dir.join("srv");
    let cli = dir.join("cli");
    let _server_agent = agent(
        &pki,
        "localhost",
        "server",
        &srv,
        "bundle",
        "in-place",
        dir.join("agent-srv.log"),
    );
    let _client_agent = agent(
        &pki,
        CLIENT_CN,
        "client",
        &cli,
        "k8s",
        "rename",
        dir.join("agent-cli.log"),
    );
    wait_for_file(&srv.join("identity.pem"));
    wait_for_file(&cli.join("tls.key"));

    let backend = Backend::start(false);
    let server = Proxy::start(
        dir,
        "server",
        &[
            os(&["--target", &format!("127.0.0.1:{}", backend.port)]),
            vec!["--identity".into(), p(&srv.join("identity.pem"))],
            vec!["--client-ca".into(), p(&ca)],
            os(&["--allow-cn", CLIENT_CN, "--wait-for-credentials", "20s"]),
        ]
        .concat(),
    );
    let client = Proxy::start(
        dir,
        "client",
        &[
            os(&["--target", &format!("127.0.0.1:{}", server.port)]),
            os(&["--server-name", "localhost"]),
            vec!["--cert".into(), p(&cli.join("tls.crt"))],
            vec!["--key".into(), p(&cli.join("tls.key"))],
            vec!["--ca".into(), p(&ca)],
        ]
        .concat(),
    );

    let run_for = Duration::from_secs(30);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
        let port = client.port;
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match http_get(port, "/") {
                    Ok((200, body)) if body == "ok cn=-\n" => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    other => failures.lock().unwrap().push(format!("{other:?}")),
                }
                thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    // The long-lived tunnel: one line every 100 ms, for the whole run.
    let streamer = {
        let (stop, port) = (stop.clone(), client.port);
        thread::spawn(move || -> Result<u64, String> {
            let mut s = open_echo(port);
            let mut lines = 0u64;
            while !stop.load(Ordering::SeqCst) {
                echo_round(&mut s, format!("line {lines}\n").as_bytes())
                    .map_err(|e| format!("after {lines} lines: {e}"))?;
                lines += 1;
                thread::sleep(Duration::from_millis(100));
            }
            Ok(lines)
        })
    };
    let mut server_serials = std::collections::BTreeSet::new();
    let mut client_serials = std::collections::BTreeSet::new();
    let mut seen_by_server = std::collections::BTreeSet::new();
    let mut seen_by_client = std::collections::BTreeSet::new();
    let start = Instant::now();
    while start.elapsed() < run_for {
        let (s, c) = (server.status(), client.status());
        server_serials.extend(own_serial(&s));
        client_serials.extend(own_serial(&c));
        seen_by_server.extend(
            s["proxies"][0]["last_peer"]["serial"]
                .as_str()
                .map(str::to_owned),
        );
        seen_by_client.extend(
            c["proxies"][0]["last_peer"]["serial"]
                .as_str()
                .map(str::to_owned),
        );
        thread::sleep(Duration::from_millis(250));
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    let lines = streamer.join().unwrap();
    let failures = failures.lock().unwrap().clone();
    let ok = ok.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\n--- server ---\n{}\n--- client ---\n{}",
        failures.len(),
        ok + failures.len() as u64,
        &failures[..failures.len().min(5)],
        server.log(),
        client.log()
    );
    eprintln!(
        "rotation under load: {ok} requests, 0 failed; {} server and {} client serials; \
         the server saw {} client certificates, the client {} server certificates",
        server_serials.len(),
        client_serials.len(),
        seen_by_server.len(),
        seen_by_client.len()
    );
    assert!(ok >= 200, "only {ok} requests");
    let lines = lines.unwrap_or_else(|e| panic!("the long tunnel broke: {e}\n{}", server.log()));
    assert!(lines >= 100, "only {lines} lines through the long tunnel");
    // About 15 rotations each in 30 s; the peers saw the new certificates.
    for (what, set) in [
        ("server identity", &server_serials),
        ("client identity", &client_serials),
        ("client certificates seen by the server", &seen_by_server),
        ("server certificates seen by the client", &seen_by_client),
    ] {
        assert!(
            set.len() >= 8,
            "{what}: only {} serials: {set:?}",
            set.len()
        );
    }
    // Resumption worked between rotations.
    let resumed = client.count("upstream_handshakes", "resumed");
    assert!(resumed > 0, "{:#}", client.stats());
}

#[test]
fn verify_pins_close_connections_to_a_server_naming_none_of_them() {
    let pki = Pki::new();
    let backend = Backend::start(false);
    let server = Proxy::start(
        pki.dir.path(),
        "server",
        &server_args(
            &pki,
            &format!("127.0.0.1:{}", backend.port),
            &["--allow-all"],
        ),
    );
    let pinned = Proxy::start(
        pki.dir.path(),
        "client",
        &client_args(
            &pki,
            server.port,
            &[
                "--verify-dns",
                "api.internal",
                "--verify-uri",
                "spiffe://example.org/api",
            ],
        ),
    );
    assert!(
        closed_without_response(pinned.port),
        "a server matching no pin was used"
    );
    pinned.wait_until("pin refusal counted", |s| {
        s["proxies"][0]["refused"]["server_not_allowed"] == 1
    });
    assert_eq!(pinned.stats()["tunnels_opened"], 0);
    assert!(
        pinned.log().contains("matches no --verify-* pin"),
        "{}",
        pinned.log()
    );
    // A pin the server's certificate does carry.
    let matching = Proxy::start(
        pki.dir.path(),
        "client",
        &client_args(&pki, server.port, &["--verify-dns", "LOCALHOST"]),
    );
    assert_eq!(
        http_get(matching.port, "/").unwrap(),
        (200, "ok cn=-\n".into())
    );
}

#[test]
fn sighup_reloads_in_manual_mode() {
    let pki = Pki::new();
    let backend = Backend::start(false);
    let bundle = pki.write_bundle("server.pem", &pki.server);
    let server = Proxy::start(
        pki.dir.path(),
        "server",
        &[
            os(&["--target", &format!("127.0.0.1:{}", backend.port)]),
            vec!["--identity".into(), p(&bundle)],
            vec!["--client-ca".into(), p(&pki.ca_pem)],
            os(&["--allow-all", "--reload", "manual"]),
        ]
        .concat(),
    );
    let client = Proxy::start(
        pki.dir.path(),
        "client",
        &client_args(&pki, server.port, &[]),
    );
    assert_eq!(http_get(client.port, "/").unwrap().0, 200);
    let first = own_serial(&server.status()).expect("serial");
    let renewed = pki.ca.issue(&LeafSpec::server("localhost"));
    pki.write_bundle("server.pem", &renewed);
    // Manual: nothing changes by itself...
    thread::sleep(Duration::from_millis(500));
    assert_eq!(
        own_serial(&server.status()).as_deref(),
        Some(first.as_str())
    );
    // ...until SIGHUP.
    send_signal(server.guard.pid(), "HUP");
    let status = server.wait_until("new serial after SIGHUP", |s| {
        own_serial(s).is_some_and(|serial| serial != first)
    });
    let now = own_serial(&status).unwrap();
    assert_eq!(normalise_serial_hex(&now), leaf_serial_hex(&renewed));
    // The client's next tunnel sees the new certificate (a rotation ends resumption).
    assert_eq!(http_get(client.port, "/").unwrap().0, 200);
    let seen = client.stats()["last_peer"]["serial"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(seen, now);
}

#[test]
fn one_config_file_runs_a_server_and_a_client_in_one_process() {
    let pki = Pki::new();
    let backend = Backend::start(true);
    let (server_port, client_port, admin) = (free_port(), free_port(), free_port());
    let config = pki.path("proxies.toml");
    // Relative paths: resolved against the file's directory.
    std::fs::write(
        &config,
        format!(
            r#"
shutdown_timeout = "5s"
[admin]
listen = "127.0.0.1:{admin}"
[[proxy]]
name = "api-in"
mode = "server"
listen = "127.0.0.1:{server_port}"
target = "127.0.0.1:{backend}"
cert = "server.crt"
key = "server.key"
client_ca = ["ca.pem"]
allow_cn = ["{CLIENT_CN}"]
proxy_protocol = true
[[proxy]]
name = "api-out"
mode = "client"
listen = "127.0.0.1:{client_port}"
target = "127.0.0.1:{server_port}"
server_name = "localhost"
cert = "client.crt"
key = "client.key"
ca = ["ca.pem"]
verify_dns = ["localhost"]
"#,
            backend = backend.port
        ),
    )
    .unwrap();
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["proxy", "--config"]).arg(&config);
    let mut proxies = Proxy {
        guard: ServerGuard::spawn(cmd, admin, pki.path("config.log")),
        port: client_port,
        admin,
    };
    proxies.wait_healthy();
    assert_eq!(
        http_get(client_port, "/").unwrap(),
        (200, format!("ok cn={CLIENT_CN}\n"))
    );
    let status = proxies.status();
    let names: Vec<&str> = status["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api-in", "api-out"]);
    for p in status["proxies"].as_array().unwrap() {
        assert_eq!(p["tunnels_opened"], 1, "{p:#}");
    }
    // Four credentials, each named after its proxy.
    let credentials: Vec<&str> = status["credentials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        credentials,
        [
            "api-in",
            "api-in/client-trust",
            "api-out",
            "api-out/server-trust"
        ]
    );

    // A misspelt key is refused before anything listens.
    let bad = pki.path("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("allow_cn", "allow_common_name"),
    )
    .unwrap();
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["proxy", "--config"]).arg(&bad);
    let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
    assert_eq!(ran.status.and_then(|s| s.code()), Some(1), "{ran:?}");
    assert!(ran.stderr.contains("allow_common_name"), "{}", ran.stderr);
}

#[test]
fn max_connections_holds_new_tunnels_back_until_one_closes() {
    let c = chain(&["--allow-all", "--max-connections", "1"], false);
    let mut first = open_echo(c.client.port);
    // A second tunnel: the server does not accept it while the first is open.
    let port = c.client.port;
    let second = thread::spawn(move || http_get(port, "/"));
    let deadline = Instant::now() + CHANGE_TIMEOUT;
    loop {
        let (_, metrics) = http_get(c.server.admin, "/metrics").unwrap();
        if metrics.contains("hitless_listener_limit_reached_total{listener=\"server\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the limit was never reached\n{metrics}"
        );
        thread::sleep(POLL);
    }
    assert!(!second.is_finished(), "a second tunnel got through at once");
    assert_eq!(c.server.stats()["tunnels_open"], 1);
    // The first closes: the second goes through.
    first.shutdown(Shutdown::Write).unwrap();
    let mut rest = String::new();
    let _ = first.read_to_string(&mut rest);
    drop(first);
    assert_eq!(
        second.join().unwrap().unwrap(),
        (200, "ok cn=-\n".to_string())
    );
}
