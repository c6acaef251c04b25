//! Shared helpers for the integration tests of the `hitless` binary: test PKI on disk, free
//! loopback ports, a child-process guard that never leaks a server, and bounded runs of the real
//! peers (`curl`, `openssl`).
//!
//! Every wait here is bounded and polls an observable event (a port accepting, a process exiting);
//! nothing asserts that something was fast.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hitless_test_pki::{Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use tempfile::TempDir;

/// How long a server may take to start listening (generous: debug build, busy CI, strace).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one run of a peer (`curl`, `openssl`) may take before it is killed.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval of every wait loop.
pub const POLL: Duration = Duration::from_millis(50);

/// The path of the `hitless` binary under test.
pub fn hitless_bin() -> &'static str {
    env!("CARGO_BIN_EXE_hitless")
}

/// A CA, a server leaf for `localhost` and a client leaf, written to a fresh temporary directory.
pub struct Pki {
    /// Holds every file; removed on drop.
    pub dir: TempDir,
    /// The CA that issued both leaves; trusted by both sides.
    pub ca: Ca,
    /// `ca.pem`: the CA certificate.
    pub ca_pem: PathBuf,
    /// The server leaf (`localhost`, IP SAN 127.0.0.1).
    pub server: Leaf,
    /// `server.crt`: the server chain.
    pub server_crt: PathBuf,
    /// `server.key`: the server key (PKCS#8).
    pub server_key: PathBuf,
    /// The client leaf.
    pub client: Leaf,
    /// `client.crt`: the client chain.
    pub client_crt: PathBuf,
    /// `client.key`: the client key (PKCS#8).
    pub client_key: PathBuf,
}

/// Common name of the client certificate of [`Pki`].
pub const CLIENT_CN: &str = "hitless-test-client";

impl Pki {
    /// Generates everything in a new temporary directory.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("create temp dir");
        let ca = Ca::new_root("hitless serve test CA", KeyType::EcP256);
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, ca.cert_pem()).expect("write ca.pem");
        let server = ca.issue(&LeafSpec::server("localhost"));
        let (server_crt, server_key) = server.write_pair(dir.path(), "server.crt", "server.key");
        let client = ca.issue(&LeafSpec::client(CLIENT_CN));
        let (client_crt, client_key) = client.write_pair(dir.path(), "client.crt", "client.key");
        Pki {
            dir,
            ca,
            ca_pem,
            server,
            server_crt,
            server_key,
            client,
            client_crt,
            client_key,
        }
    }

    /// A path in the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `leaf` as one bundle (leaf, issuing CA, PKCS#8 key) to `name`, atomically.
    pub fn write_bundle(&self, name: &str, leaf: &Leaf) -> PathBuf {
        let path = self.path(name);
        hitless_test_pki::write_atomic(&path, leaf.bundle_pem(KeyFormat::Pkcs8).as_bytes());
        path
    }
}

/// A loopback port that was free a moment ago: bind 127.0.0.1:0, read the port, release it.
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// Is `pid` still an existing process (not reaped)? Linux only, via /proc.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Sends `signal` (e.g. `"TERM"`) to `pid` with kill(1) (no libc dependency).
pub fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// A running child process (a `hitless serve`, possibly under strace), killed and reaped on drop
/// so that a failing assertion never leaks a process.
pub struct ServerGuard {
    child: Child,
    /// The port given to `--listen`.
    pub port: u16,
    /// Where the child's stderr (the server log) goes.
    pub log_path: PathBuf,
}

impl ServerGuard {
    /// Spawns `cmd` with stdin closed, stdout discarded and stderr to `log_path`.
    pub fn spawn(mut cmd: Command, port: u16, log_path: PathBuf) -> ServerGuard {
        let log = File::create(&log_path).expect("create server log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .env("RUST_LOG", "info")
            // Plain log lines in failure messages (the logger colours even a non-terminal).
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        ServerGuard {
            child,
            port,
            log_path,
        }
    }

    /// The PID of the child this guard owns.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on child")
    }

    /// Polls until something accepts TCP connections on 127.0.0.1:port; panics (with the log)
    /// if the child exits first or [`READY_TIMEOUT`] passes.
    pub fn wait_ready(&mut self) {
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "server exited before listening on {addr}: {status}\n--- server log ---\n{}",
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server not listening on {addr} after {READY_TIMEOUT:?}\n--- server log ---\n{}",
                self.log()
            );
            thread::sleep(POLL);
        }
    }

    /// Polls until the child exits; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(POLL);
        }
    }
}

impl Drop for ServerGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The arguments `serve --listen 127.0.0.1:PORT`, to which a test appends its own.
pub fn serve_args(port: u16) -> Vec<OsString> {
    vec![
        "serve".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}").into(),
    ]
}

/// Starts `hitless serve --listen 127.0.0.1:PORT <args>` on a free port, logging to
/// `dir/server.log` (does not wait for readiness).
pub fn start_server(dir: &Path, args: &[OsString]) -> ServerGuard {
    let port = free_port();
    let mut cmd = Command::new(hitless_bin());
    cmd.args(serve_args(port)).args(args);
    ServerGuard::spawn(cmd, port, dir.join(format!("server-{port}.log")))
}

/// The result of a bounded run of a peer program.
#[derive(Debug)]
pub struct Ran {
    /// `None` if the program was killed because it ran past its timeout.
    pub status: Option<ExitStatus>,
    /// Everything it wrote on stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything it wrote on stderr (lossy UTF-8).
    pub stderr: String,
}

impl Ran {
    /// True if the program exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// Runs `cmd` with `stdin` as its input, killing it after `timeout`.
pub fn run_bounded(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Ran {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut input = child.stdin.take().expect("child stdin");
    let stdin = stdin.to_vec();
    let writer = thread::spawn(move || {
        // The program may exit without reading its input: ignore a broken pipe.
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().expect("child stdout");
    let mut err = child.stderr.take().expect("child stderr");
    let out_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait on peer") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(POLL);
    };
    let _ = writer.join();
    let stdout = out_reader.join().expect("stdout reader");
    let stderr = err_reader.join().expect("stderr reader");
    Ran {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Which HTTP version curl should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVersion {
    /// `--http1.1`.
    Http11,
    /// `--http2` (over TLS: negotiated with ALPN).
    Http2,
}

/// The parsed outcome of [`curl`].
#[derive(Debug)]
pub struct CurlReply {
    /// The run itself (exit status, raw output).
    pub ran: Ran,
    /// `%{http_code}`, 0 if no response.
    pub code: u16,
    /// `%{http_version}` as curl prints it: `1.1`, `2`, or `0` if no response.
    pub http_version: String,
    /// The response body.
    pub body: String,
}

/// Marker before curl's `--write-out` line, so that it can be split from the body.
const WRITE_OUT_MARKER: &str = "\n@@hitless-test@@ ";

/// `curl -sS --fail https://localhost:PORT{path}` trusting `pki`'s CA, resolving localhost to
/// 127.0.0.1, presenting the client certificate if `with_client_cert`.
pub fn curl(
    pki: &Pki,
    port: u16,
    path: &str,
    version: HttpVersion,
    with_client_cert: bool,
) -> CurlReply {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "20"])
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .arg("--cacert")
        .arg(&pki.ca_pem)
        .arg(match version {
            HttpVersion::Http11 => "--http1.1",
            HttpVersion::Http2 => "--http2",
        })
        .arg("--write-out")
        .arg(format!(
            "{WRITE_OUT_MARKER}%{{http_code}} %{{http_version}}"
        ));
    if with_client_cert {
        cmd.arg("--cert")
            .arg(&pki.client_crt)
            .arg("--key")
            .arg(&pki.client_key);
    }
    cmd.arg(format!("https://localhost:{port}{path}"));
    let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
    let (body, write_out) = match ran.stdout.rsplit_once(WRITE_OUT_MARKER) {
        Some((body, w)) => (body.to_string(), w.trim().to_string()),
        None => (ran.stdout.clone(), String::new()),
    };
    let mut fields = write_out.split_whitespace();
    let code = fields.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let http_version = fields.next().unwrap_or("0").to_string();
    CurlReply {
        ran,
        code,
        http_version,
        body,
    }
}

/// Does this curl support HTTP/2 (`HTTP2` among the features of `curl -V`)?
pub fn curl_has_http2() -> bool {
    let mut cmd = Command::new("curl");
    cmd.arg("-V");
    let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
    assert!(ran.success(), "curl -V failed: {ran:?}");
    ran.stdout
        .lines()
        .filter(|l| l.starts_with("Features:"))
        .any(|l| l.split_whitespace().any(|f| f == "HTTP2"))
}

/// `openssl s_client` to 127.0.0.1:PORT with SNI `localhost`, verifying the server against the
/// CA (and its name), presenting the client certificate if `with_client_cert`, sending `input`.
///
/// With `ign_eof`, the client keeps reading after its input ends, until the server closes.
pub fn s_client(pki: &Pki, port: u16, with_client_cert: bool, input: &[u8], ign_eof: bool) -> Ran {
    let mut cmd = Command::new("openssl");
    cmd.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-verify_return_error")
        .arg("-CAfile")
        .arg(&pki.ca_pem);
    if with_client_cert {
        cmd.arg("-cert")
            .arg(&pki.client_crt)
            .arg("-key")
            .arg(&pki.client_key);
    }
    if ign_eof {
        cmd.arg("-ign_eof");
    }
    run_bounded(cmd, input, PEER_TIMEOUT)
}

/// Normalises a serial number written in hex (any case, with or without colons or a `serial=`
/// prefix) to uppercase hex without leading zeros, as OpenSSL prints a serial (which drops the
/// 0x00 byte DER adds in front of a high bit).
pub fn normalise_serial_hex(s: &str) -> String {
    let s = s.trim();
    let s = s.strip_prefix("serial=").unwrap_or(s);
    let hex: String = s
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    assert!(
        !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "not a hex serial: {s:?}"
    );
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

/// The serial of a leaf in the form of [`normalise_serial_hex`].
pub fn leaf_serial_hex(leaf: &Leaf) -> String {
    let hex: String = leaf.serial.iter().map(|b| format!("{b:02X}")).collect();
    normalise_serial_hex(&hex)
}

/// The serial of the certificate the server presents now, as OpenSSL prints it, normalised:
/// `openssl s_client ... </dev/null | openssl x509 -noout -serial`. `None` if the handshake or
/// the parse failed (the reason is in the returned error string).
pub fn served_serial(pki: &Pki, port: u16) -> Result<String, String> {
    let hello = s_client(pki, port, true, b"", false);
    if !hello.success() {
        return Err(format!("s_client failed: {hello:?}"));
    }
    let mut cmd = Command::new("openssl");
    cmd.args(["x509", "-noout", "-serial"]);
    let x509 = run_bounded(cmd, hello.stdout.as_bytes(), PEER_TIMEOUT);
    if !x509.success() {
        return Err(format!(
            "openssl x509 failed: {x509:?}\ns_client: {hello:?}"
        ));
    }
    let line = x509
        .stdout
        .lines()
        .find(|l| l.starts_with("serial="))
        .ok_or_else(|| format!("no serial= line in {:?}", x509.stdout))?;
    Ok(normalise_serial_hex(line))
}
