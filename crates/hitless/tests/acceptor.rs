//! `hitless::TlsAcceptor` (feature `tokio`): the configuration is taken when the ClientHello
//! arrives, so even on a TCP connection accepted before a trust change the CertificateRequest
//! names the CAs trusted now; and `subscribe` hands every new configuration to frameworks that
//! hold one (axum-server's `reload_from_config`). Real handshakes on loopback.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hitless::{
    Detection, IdentitySource, ReloadingIdentity, ReloadingServerConfig, ReloadingTrust,
    TlsAcceptor, TrustSource,
};
use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use rustls::{ClientConnection, RootCertStore, SignatureScheme, StreamOwned};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Presents `key` and records the CA names of the CertificateRequest.
#[derive(Debug)]
struct Recorder {
    key: Arc<CertifiedKey>,
    hints: Mutex<Vec<Vec<u8>>>,
}

impl ResolvesClientCert for Recorder {
    fn resolve(&self, hints: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        *self.hints.lock().unwrap() = hints.iter().map(|h| h.to_vec()).collect();
        Some(self.key.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

fn recorder(leaf: &Leaf) -> Arc<Recorder> {
    let key = common::provider()
        .key_provider
        .load_private_key(leaf.rustls_key())
        .unwrap();
    Arc::new(Recorder {
        key: Arc::new(CertifiedKey::new(leaf.rustls_chain(), key)),
        hints: Mutex::default(),
    })
}

/// Handshake and one request on an open socket; `Ok` if the server answered.
fn handshake_on(tcp: TcpStream, server_ca: &Ca, client: &Arc<Recorder>) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    roots.add(server_ca.rustls_cert()).unwrap();
    let config = Arc::new(
        common::client_builder()
            .with_root_certificates(roots)
            .with_client_cert_resolver(client.clone()),
    );
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = StreamOwned::new(ClientConnection::new(config, name).unwrap(), tcp);
    tls.write_all(b"ping\n").map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&mut tls)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    (line == "ok\n")
        .then_some(())
        .ok_or_else(|| format!("answer {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptor_takes_the_configuration_when_the_client_hello_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new_root("Server CA", KeyType::EcP256);
    let bundle = dir.path().join("server.pem");
    let leaf = server_ca.issue(&LeafSpec::server("localhost"));
    fs::write(&bundle, leaf.bundle_pem(KeyFormat::Pkcs8)).unwrap();
    let ca1 = Ca::new_root("Client CA 1", KeyType::EcP256);
    let ca2 = Ca::new_root("Client CA 2", KeyType::EcP256);
    let ca_file = dir.path().join("clients-ca.pem");
    fs::write(&ca_file, ca1.cert_pem()).unwrap();

    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&bundle))
        .build()
        .unwrap();
    let trust = ReloadingTrust::builder(TrustSource::cas([&ca_file]))
        .detection(Detection::Watch)
        .build()
        .unwrap();
    let configs = ReloadingServerConfig::builder(&identity)
        .client_trust(&trust)
        .build()
        .unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    configs.subscribe(move |change| s.lock().unwrap().push(change.config.clone()));

    let acceptor = TlsAcceptor::new(configs.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let (read, mut write) = tokio::io::split(tls);
                let mut lines = tokio::io::BufReader::new(read).lines();
                while let Ok(Some(_)) = lines.next_line().await {
                    if write.write_all(b"ok\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });

    let client1 = recorder(&ca1.issue(&LeafSpec::client("client-of-ca1")));
    let client2 = recorder(&ca2.issue(&LeafSpec::client("client-of-ca2")));
    // Both sockets are accepted (TCP) under CA 1; the trust then moves to CA 2.
    let old1 = TcpStream::connect(addr).unwrap();
    let old2 = TcpStream::connect(addr).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = configs.trust_generation();
    write_atomic(&ca_file, ca2.cert_pem().as_bytes());
    let start = std::time::Instant::now();
    while configs.trust_generation() == before {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "trust change not applied"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "subscribe is called once with the new configuration"
    );
    assert!(Arc::ptr_eq(&seen.lock().unwrap()[0], &configs.current()));

    let (c1, c2) = (client1.clone(), client2.clone());
    let (r1, r2) = tokio::task::spawn_blocking(move || {
        (
            handshake_on(old1, &server_ca, &c1),
            handshake_on(old2, &server_ca, &c2),
        )
    })
    .await
    .unwrap();
    assert!(
        r1.is_err(),
        "a client of the removed CA got in on a socket accepted before the change"
    );
    r2.expect("a client of the CA trusted now gets in on a socket accepted before the change");
    assert_eq!(
        *client2.hints.lock().unwrap(),
        vec![ca2.subject_der()],
        "the CertificateRequest on a socket accepted before the change names the CAs trusted now"
    );
}
