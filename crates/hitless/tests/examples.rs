//! The examples, run as tests: each example's server and client over loopback, with the server
//! and client identities rotated mid-run (atomic rename). Every request must succeed, and the
//! client must end up seeing the new server certificate and the server the new client one.

#[path = "../examples/axum_mtls.rs"]
#[allow(dead_code)]
mod axum_mtls;
#[path = "../examples/axum_server_mtls.rs"]
#[allow(dead_code)]
mod axum_server_mtls;
#[path = "../examples/hyper_client.rs"]
#[allow(dead_code)]
mod hyper_client;
#[path = "../examples/reqwest_client.rs"]
#[allow(dead_code)]
mod reqwest_client;
#[path = "../examples/tokio_rustls_server.rs"]
#[allow(dead_code)]
mod tokio_rustls_server;
#[path = "../examples/tonic_mtls.rs"]
#[allow(dead_code)]
mod tonic_mtls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hitless_test_pki::{write_atomic, Ca, KeyFormat, KeyType, Leaf, LeafSpec};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long a rotation may take to be seen (watch mode sees it in milliseconds).
const ROTATION_DEADLINE: Duration = Duration::from_secs(15);

/// One CA, and files for a server identity, a client identity and the CA bundle.
struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    server_pem: PathBuf,
    client_pem: PathBuf,
    ca_pem: PathBuf,
}

impl Pki {
    fn new() -> (Pki, Leaf, Leaf) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new_root("examples CA", KeyType::EcP256);
        let server = ca.issue(&LeafSpec::server("localhost"));
        let client = ca.issue(&LeafSpec::client("client-1"));
        let pki = Pki {
            server_pem: dir.path().join("server.pem"),
            client_pem: dir.path().join("client.pem"),
            ca_pem: dir.path().join("ca.pem"),
            _dir: dir,
            ca,
        };
        write_atomic(
            &pki.server_pem,
            server.bundle_pem(KeyFormat::Pkcs8).as_bytes(),
        );
        write_atomic(
            &pki.client_pem,
            client.bundle_pem(KeyFormat::Pkcs8).as_bytes(),
        );
        write_atomic(&pki.ca_pem, pki.ca.cert_pem().as_bytes());
        (pki, server, client)
    }

    /// Issues new server and client identities and writes them over the old ones.
    fn rotate(&self) -> (Leaf, Leaf) {
        let server = self.ca.issue(&LeafSpec::server("localhost"));
        let client = self.ca.issue(&LeafSpec::client("client-2"));
        write_atomic(
            &self.server_pem,
            server.bundle_pem(KeyFormat::Pkcs8).as_bytes(),
        );
        write_atomic(
            &self.client_pem,
            client.bundle_pem(KeyFormat::Pkcs8).as_bytes(),
        );
        (server, client)
    }
}

/// A serial number as `CertInfo` prints it.
fn serial(leaf: &Leaf) -> String {
    leaf.serial
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What one request saw: the server certificate's fingerprint and the answer.
#[derive(Debug, Default)]
struct Seen {
    server_fingerprints: Vec<String>,
    answers: Vec<String>,
    failures: Vec<String>,
}

/// Calls `request` over and over until `done(seen)` (after the rotation) or the deadline;
/// rotates once `warmup` requests have succeeded.
async fn run_through_rotation<F, Fut>(
    pki: &Pki,
    warmup: usize,
    mut request: F,
    done: impl Fn(&Seen, &Leaf, &Leaf) -> bool,
) -> (Seen, Leaf, Leaf)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(String, String), String>>,
{
    let mut seen = Seen::default();
    let mut rotated: Option<(Leaf, Leaf)> = None;
    let start = Instant::now();
    loop {
        match request().await {
            Ok((fingerprint, answer)) => {
                seen.server_fingerprints.push(fingerprint);
                seen.answers.push(answer);
            }
            Err(e) => seen.failures.push(e),
        }
        match &rotated {
            None if seen.answers.len() >= warmup => rotated = Some(pki.rotate()),
            Some((server, client)) if done(&seen, server, client) => break,
            _ => {}
        }
        assert!(
            start.elapsed() < ROTATION_DEADLINE,
            "rotation not seen in time: {} requests, last server {:?}, last answer {:?}, \
             failures {:?}",
            seen.answers.len(),
            seen.server_fingerprints.last(),
            seen.answers.last(),
            seen.failures
        );
    }
    let (server, client) = rotated.unwrap();
    (seen, server, client)
}

/// The rotation was seen on both sides: new server certificate, new client serial.
fn saw_rotation(seen: &Seen, server: &Leaf, client: &Leaf) -> bool {
    let (Some(fingerprint), Some(answer)) = (seen.server_fingerprints.last(), seen.answers.last())
    else {
        return false;
    };
    *fingerprint == server.fingerprint_sha256_hex() && answer.contains(&serial(client))
}

/// The examples' client configuration, but without resumption: a resumed TLS session keeps
/// the certificates of the session it resumes (on both sides), so only a full handshake per
/// request shows a rotation at once. Resumption itself is what the examples keep.
fn client_tls_full_handshakes(pki: &Pki) -> hitless::ReloadingClientConfig {
    let identity =
        hitless::ReloadingIdentity::builder(hitless::IdentitySource::bundle(&pki.client_pem))
            .build()
            .unwrap();
    let trust = hitless::ReloadingTrust::builder(hitless::TrustSource::cas([&pki.ca_pem]))
        .build()
        .unwrap();
    hitless::ReloadingClientConfig::builder(&trust)
        .identities(vec![identity])
        .configure(|c| {
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            c.resumption = rustls::client::Resumption::disabled();
        })
        .build()
        .unwrap()
}

async fn axum_server(pki: &Pki) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let tls = axum_mtls::tls(&pki.server_pem, &pki.ca_pem).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(axum_mtls::serve(listener, tls, axum_mtls::app()));
    (addr, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_server_and_reqwest_client_through_a_rotation() {
    let (pki, first_server, first_client) = Pki::new();
    let (addr, server) = axum_server(&pki).await;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(
            reqwest_client::tls_config(&pki.client_pem, &pki.ca_pem).unwrap(),
        )
        .tls_info(true)
        // A new connection (and handshake) per request, to see rotations at once.
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let request = || async {
        let response = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        let fingerprint = response
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate())
            .map(hitless_test_pki::sha256_hex)
            .ok_or("no TLS info")?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response.text().await.map_err(|e| e.to_string())?;
        Ok((fingerprint, body))
    };
    let (seen, _, _) = run_through_rotation(&pki, 5, request, saw_rotation).await;
    server.abort();
    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        seen.failures
    );
    assert_eq!(
        seen.server_fingerprints[0],
        first_server.fingerprint_sha256_hex()
    );
    assert!(
        seen.answers[0].contains(&serial(&first_client)),
        "{}",
        seen.answers[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_server_and_hyper_client_through_a_rotation() {
    let (pki, first_server, first_client) = Pki::new();
    let (addr, server) = axum_server(&pki).await;
    let tls = client_tls_full_handshakes(&pki);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build::<_, http_body_util::Empty<hyper::body::Bytes>>(hyper_client::Connector::new(tls));
    let url: hyper::Uri = format!("https://127.0.0.1:{}/", addr.port())
        .parse()
        .unwrap();
    let request = || async {
        let response = client
            .get(url.clone())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let fingerprint = response
            .extensions()
            .get::<hyper_client::ServerCertificate>()
            .map(|c| hitless_test_pki::sha256_hex(&c.0))
            .ok_or("no server certificate")?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            fingerprint,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    };
    let (seen, _, _) = run_through_rotation(&pki, 5, request, saw_rotation).await;
    // The example's own client (resumption on) works against the rotated server too.
    let own = hyper_client::client(hyper_client::tls(&pki.client_pem, &pki.ca_pem).unwrap());
    let response = own.get(url.clone()).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    server.abort();
    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        seen.failures
    );
    assert_eq!(
        seen.server_fingerprints[0],
        first_server.fingerprint_sha256_hex()
    );
    assert!(
        seen.answers[0].contains(&serial(&first_client)),
        "{}",
        seen.answers[0]
    );
}

/// axum-server owns its accept loop: `RustlsConfig::reload_from_config` is driven by
/// `ReloadingServerConfig::subscribe`. Its handler cannot see the client certificate, so the
/// rotation is judged by the server certificate; the rotated client identity must get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_server_crate_and_hyper_client_through_a_rotation() {
    let (pki, first_server, _) = Pki::new();
    let tls = axum_server_mtls::tls(&pki.server_pem, &pki.ca_pem).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rustls_config = axum_server_mtls::follow(&tls);
    let first_config = rustls_config.get_inner();
    assert!(std::sync::Arc::ptr_eq(&first_config, &tls.current()));
    let server = tokio::spawn(axum_server_mtls::serve(
        listener,
        rustls_config.clone(),
        axum_server_mtls::app(),
    ));
    let client_tls = client_tls_full_handshakes(&pki);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build::<_, http_body_util::Empty<hyper::body::Bytes>>(hyper_client::Connector::new(
            client_tls,
        ));
    let url: hyper::Uri = format!("https://127.0.0.1:{}/", addr.port())
        .parse()
        .unwrap();
    let request = || async {
        let response = client
            .get(url.clone())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let fingerprint = response
            .extensions()
            .get::<hyper_client::ServerCertificate>()
            .map(|c| hitless_test_pki::sha256_hex(&c.0))
            .ok_or("no server certificate")?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok((
            fingerprint,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        ))
    };
    let saw_new_server = |seen: &Seen, server: &Leaf, _: &Leaf| {
        seen.server_fingerprints.last() == Some(&server.fingerprint_sha256_hex())
    };
    let (seen, _, _) = run_through_rotation(&pki, 5, request, saw_new_server).await;
    // A few more requests after the rotation, with the rotated client identity.
    for _ in 0..5 {
        if let Err(e) = request().await {
            panic!("request after the rotation failed: {e}");
        }
    }
    server.abort();
    // axum-server was handed the configuration built for the rotation (new session binding).
    assert!(
        !std::sync::Arc::ptr_eq(&rustls_config.get_inner(), &first_config),
        "reload_from_config was not called on the rotation"
    );
    assert!(std::sync::Arc::ptr_eq(
        &rustls_config.get_inner(),
        &tls.current()
    ));
    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        seen.failures
    );
    assert_eq!(
        seen.server_fingerprints[0],
        first_server.fingerprint_sha256_hex()
    );
    assert!(seen.answers.iter().all(|a| a == "hello\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tonic_server_and_client_through_a_rotation() {
    let (pki, first_server, first_client) = Pki::new();
    let callers: Arc<Mutex<Vec<String>>> = Arc::default();
    let servers: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tonic_mtls::server_tls(&pki.server_pem, &pki.ca_pem).unwrap();
    let on_call = {
        let callers = callers.clone();
        move |caller: &hitless::CertInfo| callers.lock().unwrap().push(caller.serial.clone())
    };
    let server = tokio::spawn(tonic_mtls::serve(listener, tls, on_call));
    let tls = client_tls_full_handshakes(&pki);
    let on_connect = {
        let servers = servers.clone();
        move |server: &hitless::CertInfo| servers.lock().unwrap().push(server.fingerprint.clone())
    };
    let request = || async {
        // A new channel (connection) per call, to see rotations at once.
        let status = tonic_mtls::check(addr, "localhost", tls.clone(), on_connect.clone())
            .await
            .map_err(|e| format!("{e:?}"))?;
        if status != 1 {
            return Err(format!("health status {status}"));
        }
        let fingerprint = servers.lock().unwrap().last().cloned().ok_or("no server")?;
        let caller = callers.lock().unwrap().last().cloned().ok_or("no caller")?;
        Ok((fingerprint, caller))
    };
    let (seen, _, _) = run_through_rotation(&pki, 5, request, saw_rotation).await;
    // The example's own client configuration (resumption on) works too.
    let own = tonic_mtls::client_tls(&pki.client_pem, &pki.ca_pem).unwrap();
    let status = tonic_mtls::check(addr, "localhost", own, |_: &hitless::CertInfo| {}).await;
    assert_eq!(status.unwrap(), 1);
    server.abort();
    assert!(
        seen.failures.is_empty(),
        "failed calls: {:?}",
        seen.failures
    );
    assert_eq!(
        seen.server_fingerprints[0],
        first_server.fingerprint_sha256_hex()
    );
    assert_eq!(seen.answers[0], serial(&first_client));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_rustls_echo_server_through_a_rotation() {
    let (pki, first_server, _) = Pki::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = tokio_rustls_server::tls(&pki.server_pem, None).unwrap();
    let server = tokio::spawn(tokio_rustls_server::serve(listener, tls));
    let client = client_tls_full_handshakes(&pki);
    let request = || async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client.current())
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let fingerprint = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        tls.write_all(b"ping\n").await.map_err(|e| e.to_string())?;
        let mut echo = [0u8; 5];
        tls.read_exact(&mut echo).await.map_err(|e| e.to_string())?;
        Ok((
            hitless_test_pki::sha256_hex(&fingerprint),
            String::from_utf8_lossy(&echo).into_owned(),
        ))
    };
    let only_server = |seen: &Seen, server: &Leaf, _: &Leaf| {
        seen.server_fingerprints.last() == Some(&server.fingerprint_sha256_hex())
    };
    let (seen, _, _) = run_through_rotation(&pki, 5, request, only_server).await;
    server.abort();
    assert!(
        seen.failures.is_empty(),
        "failed connections: {:?}",
        seen.failures
    );
    assert_eq!(
        seen.server_fingerprints[0],
        first_server.fingerprint_sha256_hex()
    );
    assert!(seen.answers.iter().all(|a| a == "ping\n"));
}
