//! `hitless serve` with reloading client trust: CRL reload closing open connections with
//! `--drop-untrusted`, and Python's `ssl` module as an independent mTLS client.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{run_bounded, start_server, Pki};
use hitless_test_pki::{write_atomic, Leaf, LeafSpec};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

/// A blocking HTTP/1.1 keep-alive connection over rustls with a client certificate.
struct KeepAlive {
    tls: StreamOwned<ClientConnection, TcpStream>,
}

impl KeepAlive {
    fn open(port: u16, pki: &Pki, client: &Leaf) -> KeepAlive {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.rustls_cert()).unwrap();
        let config = ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(client.rustls_chain(), client.rustls_key())
        .unwrap();
        let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let conn =
            ClientConnection::new(Arc::new(config), ServerName::try_from("localhost").unwrap())
                .unwrap();
        KeepAlive {
            tls: StreamOwned::new(conn, sock),
        }
    }

    /// One request on the open connection; the body on success.
    fn get(&mut self) -> std::io::Result<String> {
        self.tls
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        self.tls.flush()?;
        let mut reader = BufReader::new(&mut self.tls);
        let mut status = String::new();
        if reader.read_line(&mut status)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        if !status.contains(" 200 ") {
            return Err(std::io::Error::other(status));
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// Whether the server has closed the connection (EOF or error on read).
    fn closed_by_server(&mut self) -> bool {
        self.tls
            .sock
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 64];
        let closed = match self.tls.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        self.tls
            .sock
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        closed
    }
}

#[test]
fn drop_untrusted_closes_only_the_revoked_clients_connection() {
    let pki = Pki::new();
    let revoked = pki.ca.issue(&LeafSpec::client("will-be-revoked"));
    let crl = pki.path("clients.crl");
    write_atomic(
        &crl,
        pki.ca.crl(&[], time::Duration::hours(1)).pem.as_bytes(),
    );
    let mut server = start_server(
        pki.dir.path(),
        &[
            "--cert".into(),
            pki.server_crt.clone().into(),
            "--key".into(),
            pki.server_key.clone().into(),
            "--client-ca".into(),
            pki.ca_pem.clone().into(),
            "--crl".into(),
            crl.clone().into(),
            "--drop-untrusted".into(),
        ],
    );
    server.wait_ready();
    let port = server.port;

    let mut doomed = KeepAlive::open(port, &pki, &revoked);
    let mut other = KeepAlive::open(port, &pki, &pki.client);
    assert!(doomed.get().unwrap().contains("will-be-revoked"));
    assert!(other.get().is_ok());

    write_atomic(
        &crl,
        pki.ca
            .crl(
                std::slice::from_ref(&revoked.serial),
                time::Duration::hours(1),
            )
            .pem
            .as_bytes(),
    );
    let start = Instant::now();
    while !doomed.closed_by_server() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the revoked client's open connection was not closed; log:\n{}",
            server.log()
        );
    }
    assert!(
        other.get().is_ok(),
        "another client's keep-alive connection must stay open"
    );
    // The log line is written just after the connection is dropped: wait for it.
    let start = Instant::now();
    while !server.log().contains("closing open connection") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no log line about the closed connection:\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn python_ssl_client_with_certificate() {
    let pki = Pki::new();
    let mut server = start_server(
        pki.dir.path(),
        &[
            "--identity".into(),
            pki.write_bundle("identity.pem", &pki.server).into(),
            "--client-ca".into(),
            pki.ca_pem.clone().into(),
        ],
    );
    server.wait_ready();
    let script = r#"
import json, ssl, sys, http.client
port, ca, cert, key = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
conn = http.client.HTTPSConnection("localhost", int(port), context=ctx, timeout=20)
conn.request("GET", "/")
r = conn.getresponse()
body = json.loads(r.read())
print(r.status, conn.sock.version(), body["client"]["subject"], body["server"]["fingerprint"])
# Without a client certificate the server must refuse.
bare = ssl.create_default_context(cafile=ca)
try:
    c = http.client.HTTPSConnection("localhost", int(port), context=bare, timeout=20)
    c.request("GET", "/")
    print("ACCEPTED-WITHOUT-CERT", c.getresponse().status)
except (ssl.SSLError, OSError) as e:
    print("refused-without-cert", type(e).__name__)
"#;
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .arg(server.port.to_string())
        .arg(&pki.ca_pem)
        .arg(&pki.client_crt)
        .arg(&pki.client_key);
    let ran = run_bounded(cmd, b"", Duration::from_secs(60));
    assert!(ran.success(), "python failed: {ran:?}");
    let out = &ran.stdout;
    assert!(out.starts_with("200 TLSv1.3 "), "{out}");
    assert!(out.contains(common::CLIENT_CN), "{out}");
    assert!(out.contains(&pki.server.fingerprint_sha256_hex()), "{out}");
    assert!(out.contains("refused-without-cert"), "{out}");
}
