//! Connection limits and timeouts of `hitless serve`'s listeners (issue 13, item 8): the real
//! binary, real TLS peers (`curl`, `openssl s_client`) and raw TCP over loopback.
//!
//! - a flood of half-sent requests on the admin port, under a descriptor limit of 128, must
//!   not stop the TLS port (it did: `accept failed: Too many open files` until the flood
//!   ended, 20 log lines a second), and the header-read timeout closes the flood's
//!   connections;
//! - `--max-connections 5`: a sixth connection waits until one of the five closes;
//! - a silent TCP connection, a TLS connection that never sends a request (HTTP/2 by ALPN), an
//!   idle HTTP/1.1 keep-alive connection and a half-sent admin request are all closed by the
//!   default timeouts (10 s), where they were kept forever;
//! - the soft descriptor limit is raised to the hard one at start.
//!
//! Waits poll for an observable event (a socket closed by the server, a process exiting, a
//! metric) with generous bounds; nothing asserts that something was fast.

mod common;

use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How long a connection may take to be closed by a timeout of 10 s (the defaults) or less.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(40);

fn loopback(port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
}

/// `--cert --key --client-ca` of `pki`, plus `extra`.
fn mtls_args(pki: &Pki, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--cert".into(),
        pki.server_crt.clone().into(),
        "--key".into(),
        pki.server_key.clone().into(),
        "--client-ca".into(),
        pki.ca_pem.clone().into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

/// Starts `hitless serve` (under `prlimit NOFILE` if given) with an admin listener; waits
/// until both ports accept. Returns the server and the admin port.
fn start(pki: &Pki, nofile: Option<&str>, extra: &[&str]) -> (ServerGuard, u16) {
    let port = free_port();
    let admin = free_port();
    let mut cmd = match nofile {
        Some(limits) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={limits}")).arg(hitless_bin());
            c
        }
        None => Command::new(hitless_bin()),
    };
    cmd.args(serve_args(port))
        .arg("--admin-listen")
        .arg(format!("127.0.0.1:{admin}"))
        .args(mtls_args(pki, extra));
    let mut server = ServerGuard::spawn(cmd, port, pki.path(&format!("server-{port}.log")));
    server.wait_ready();
    (server, admin)
}

/// The admin listener's `/metrics` (curl, bounded).
fn metrics(admin: u16) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "20"])
        .arg(format!("http://127.0.0.1:{admin}/metrics"));
    let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
    assert!(ran.success(), "GET /metrics failed: {ran:?}");
    ran.stdout
}

/// The value of the sample `name_and_labels` (e.g. `hitless_listener_connections{listener="tls"}`)
/// in an OpenMetrics text, 0 if absent.
fn sample(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(name_and_labels))
        .filter_map(|rest| rest.trim().parse().ok())
        .next()
        .unwrap_or(0.0)
}

/// Polls `/metrics` until `ok` holds for it; panics with the last text after `timeout`.
fn wait_for_metrics(
    admin: u16,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = metrics(admin);
        if ok(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in /metrics after {timeout:?}:\n{text}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Has the server closed this socket (end of file or reset)? Never blocks.
fn closed_by_server(socket: &mut TcpStream) -> bool {
    socket
        .set_nonblocking(true)
        .expect("set a socket non-blocking");
    let mut buf = [0u8; 4096];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return true,
            // A response (a 408, say) before the close: read on.
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Waits until the server has closed `socket`; panics after [`CLOSE_TIMEOUT`].
fn wait_closed(socket: &mut TcpStream, what: &str, server: &ServerGuard) {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    while !closed_by_server(socket) {
        assert!(
            Instant::now() < deadline,
            "{what}: still open after {CLOSE_TIMEOUT:?}\n--- server log ---\n{}",
            server.log()
        );
        thread::sleep(POLL);
    }
}

/// Waits until `child` exits by itself; panics (killing it) after [`CLOSE_TIMEOUT`].
fn wait_exit(child: &mut Child, what: &str, server: &ServerGuard) -> String {
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                let _ = stdout.read_to_string(&mut out);
            }
            return out;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: the server did not close the connection within {CLOSE_TIMEOUT:?}\n\
                 --- server log ---\n{}",
                server.log()
            );
        }
        thread::sleep(POLL);
    }
}

/// `openssl s_client` with the client certificate, ALPN `alpn`, writing `request` and then
/// keeping its input open: it exits only when the server closes the connection.
fn s_client_held_open(pki: &Pki, port: u16, alpn: &str, request: &[u8]) -> Child {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", "localhost", "-alpn", alpn, "-quiet"])
        .arg("-CAfile")
        .arg(&pki.ca_pem)
        .arg("-cert")
        .arg(&pki.client_crt)
        .arg("-key")
        .arg(&pki.client_key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn openssl s_client");
    let stdin = child.stdin.as_mut().expect("s_client stdin");
    stdin.write_all(request).expect("write to s_client");
    stdin.flush().expect("flush s_client stdin");
    child
}

/// Kills a child on drop (a held-open `s_client`).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_admin_flood_of_half_sent_requests_does_not_stop_the_tls_port() {
    let pki = Pki::new();
    // 128 descriptors: 32 kept for the process, the admin listener gets 12, TLS 84.
    let (server, admin) = start(&pki, Some("128:128"), &[]);

    // Up to 200 connections, each sending the start of a request and no more. Once the
    // admin listener holds its 12 and the kernel's backlog is full, connects time out.
    let mut flood = Vec::new();
    for _ in 0..200 {
        let Ok(mut s) = TcpStream::connect_timeout(&loopback(admin).into(), Duration::from_secs(1))
        else {
            break;
        };
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .is_err()
        {
            break;
        }
        flood.push(s);
    }
    assert!(
        flood.len() > 12,
        "the flood could not even fill the admin listener: {} connections",
        flood.len()
    );

    // The TLS port serves during the flood.
    let reply = curl(&pki, server.port, "/", HttpVersion::Http11, true);
    assert_eq!(
        reply.code,
        200,
        "mTLS request during an admin flood of {} connections failed: {reply:?}\n--- server log ---\n{}",
        flood.len(),
        server.log()
    );
    assert!(reply.body.contains(CLIENT_CN), "{reply:?}");

    // The header-read timeout (10 s) closes the connections the admin listener took.
    let deadline = Instant::now() + CLOSE_TIMEOUT;
    loop {
        let closed = flood
            .iter_mut()
            .filter_map(|s| closed_by_server(s).then_some(()))
            .count();
        if closed >= 12 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {closed} of {} half-sent admin requests were closed by the server after \
             {CLOSE_TIMEOUT:?}\n--- server log ---\n{}",
            flood.len(),
            server.log()
        );
        thread::sleep(Duration::from_millis(200));
    }
    drop(flood);

    let log = server.log();
    let accept_errors = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(
        accept_errors <= 3,
        "{accept_errors} accept-error lines in the log:\n{log}"
    );
    assert!(
        log.contains("connection limits lowered to fit the descriptor limit"),
        "the lowered limits were not logged:\n{log}"
    );
    let text = wait_for_metrics(admin, "header-read timeouts on admin", CLOSE_TIMEOUT, |t| {
        sample(
            t,
            r#"hitless_listener_timeouts_total{listener="admin",timeout="header_read"}"#,
        ) >= 12.0
    });
    assert_eq!(
        sample(
            &text,
            r#"hitless_listener_max_connections{listener="admin"}"#
        ),
        12.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, r#"hitless_listener_max_connections{listener="tls"}"#),
        84.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"hitless_listener_accept_errors_total{listener="tls"}"#
        ),
        0.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"hitless_listener_limit_reached_total{listener="admin"}"#
        ) >= 1.0,
        "{text}"
    );
}

#[test]
fn a_connection_over_max_connections_waits_until_one_closes() {
    let pki = Pki::new();
    let (server, admin) = start(
        &pki,
        None,
        &["--max-connections", "5", "--handshake-timeout", "5m"],
    );
    // Five connections that never start their handshake hold the five slots.
    let mut holders: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(loopback(server.port)).expect("connect"))
        .collect();
    wait_for_metrics(admin, "5 open TLS connections", READY_TIMEOUT, |t| {
        sample(t, r#"hitless_listener_connections{listener="tls"}"#) == 5.0
    });

    // The sixth: a full mTLS request, which must wait.
    let sixth = {
        let pki_dir = pki.dir.path().to_path_buf();
        let (ca, crt, key) = (
            pki.ca_pem.clone(),
            pki.client_crt.clone(),
            pki.client_key.clone(),
        );
        let port = server.port;
        thread::spawn(move || {
            let mut cmd = Command::new("curl");
            cmd.current_dir(pki_dir)
                .args(["-sS", "--fail", "--max-time", "60", "--http1.1"])
                .arg("--resolve")
                .arg(format!("localhost:{port}:127.0.0.1"))
                .arg("--cacert")
                .arg(ca)
                .arg("--cert")
                .arg(crt)
                .arg("--key")
                .arg(key)
                .arg(format!("https://localhost:{port}/"));
            run_bounded(cmd, b"", Duration::from_secs(90))
        })
    };
    let text = wait_for_metrics(admin, "the limit reached", READY_TIMEOUT, |t| {
        sample(t, r#"hitless_listener_limit_reached_total{listener="tls"}"#) >= 1.0
    });
    assert_eq!(
        sample(&text, r#"hitless_listener_connections{listener="tls"}"#),
        5.0,
        "{text}"
    );
    // Without the limit curl answers in milliseconds; with it, it is still waiting.
    thread::sleep(Duration::from_millis(1500));
    assert!(
        !sixth.is_finished(),
        "a sixth connection was served while five were open (--max-connections 5)\n\
         --- server log ---\n{}",
        server.log()
    );

    // One closes: the sixth is accepted and answered.
    drop(holders.pop());
    let ran = sixth.join().expect("curl thread");
    assert!(
        ran.success() && ran.stdout.contains(CLIENT_CN),
        "the waiting connection was not served once a slot was free: {ran:?}\n\
         --- server log ---\n{}",
        server.log()
    );
    let log = server.log();
    assert!(
        log.contains("connection limit reached") && log.contains("max_connections=5"),
        "{log}"
    );
}

#[test]
fn stalled_and_idle_connections_are_closed_by_the_default_timeouts() {
    let pki = Pki::new();
    let (server, admin) = start(&pki, None, &[]);

    // All at once, so that the waits overlap: a TCP connection that never starts its TLS
    // handshake (10 s handshake timeout) ...
    let mut silent_tcp = TcpStream::connect(loopback(server.port)).expect("connect");
    // ... a TLS connection that negotiates HTTP/2 and never sends the preface (10 s to the
    // first request head) ...
    let mut silent_h2 = Killed(s_client_held_open(&pki, server.port, "h2", b""));
    // ... an HTTP/1.1 keep-alive connection idle after one response (10 s header-read
    // timeout, which hyper also applies to the wait for the next request) ...
    let mut idle_h1 = Killed(s_client_held_open(
        &pki,
        server.port,
        "http/1.1",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ));
    // ... and a half-sent request on the admin port (10 s header-read timeout).
    let mut half_sent = TcpStream::connect(loopback(admin)).expect("connect admin");
    half_sent
        .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        .expect("write");

    wait_closed(
        &mut silent_tcp,
        "TCP connection without a handshake",
        &server,
    );
    wait_exit(
        &mut silent_h2.0,
        "TLS (h2) connection without a request",
        &server,
    );
    let out = wait_exit(
        &mut idle_h1.0,
        "idle HTTP/1.1 keep-alive connection",
        &server,
    );
    assert!(
        out.contains("HTTP/1.1 200") && out.contains(CLIENT_CN),
        "the keep-alive connection got no answer before going idle: {out:?}"
    );
    wait_closed(&mut half_sent, "half-sent admin request", &server);

    let text = metrics(admin);
    for (sample_name, at_least) in [
        (
            r#"hitless_listener_timeouts_total{listener="tls",timeout="handshake"}"#,
            1.0,
        ),
        (
            r#"hitless_listener_timeouts_total{listener="tls",timeout="header_read"}"#,
            2.0,
        ),
        (
            r#"hitless_listener_timeouts_total{listener="admin",timeout="header_read"}"#,
            1.0,
        ),
    ] {
        assert!(
            sample(&text, sample_name) >= at_least,
            "{sample_name}:\n{text}"
        );
    }
}

#[test]
fn the_soft_descriptor_limit_is_raised_to_the_hard_limit() {
    let pki = Pki::new();
    let (server, admin) = start(&pki, Some("64:4096"), &[]);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.pid()))
        .expect("read /proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no descriptor limit in {limits}"));
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{line}");
    // 4096 - 32 reserved: the admin listener keeps its 100, TLS gets the rest.
    let text = metrics(admin);
    assert_eq!(
        sample(&text, r#"hitless_listener_max_connections{listener="tls"}"#),
        3964.0,
        "{text}"
    );
}

#[test]
fn the_configuration_file_sets_the_limits_and_flags_override_it() {
    let pki = Pki::new();
    let config = pki.path("hitless.toml");
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nlisten = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n\
             max_connections = 7\nadmin_max_connections = 3\nhandshake_timeout = \"4s\"\n\
             header_read_timeout = \"5s\"\nidle_timeout = \"6s\"\n\
             [[identity]]\ncert = {:?}\nkey = {:?}\n",
            free_port(),
            free_port(),
            pki.server_crt,
            pki.server_key
        ),
    )
    .expect("write config");
    let check = |extra: &[&str]| {
        let mut cmd = Command::new(hitless_bin());
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .arg("--check")
            .args(extra);
        let ran = run_bounded(cmd, b"", PEER_TIMEOUT);
        assert!(ran.success(), "serve --check failed: {ran:?}");
        ran.stdout
    };
    let out = check(&[]);
    assert!(
        out.contains(
            "connections: at most 7 open (admin 3); timeouts: handshake 4s, header read 5s, idle 6s"
        ),
        "{out}"
    );
    let out = check(&["--max-connections", "9", "--idle-timeout", "2m"]);
    assert!(
        out.contains("at most 9 open (admin 3)") && out.contains("idle 2m"),
        "{out}"
    );
}
