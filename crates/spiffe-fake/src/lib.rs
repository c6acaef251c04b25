//! A fake SPIFFE Workload API for tests: the `SpiffeWorkloadAPI` gRPC service (tonic) on a unix
//! socket, serving X.509-SVIDs and trust bundles that a test sets and rotates at will.
//!
//! It behaves as a SPIRE agent does where the tests need it to:
//!
//! * `FetchX509SVID` and `FetchX509Bundles` are server streams: the current contents first,
//!   then one message per change, on every open stream;
//! * a request without the `workload.spiffe.io: true` metadata header is refused with
//!   `InvalidArgument` ("security header missing from request"), as real agents do;
//! * no SVID for the caller: `PermissionDenied` ("no identity issued");
//! * the JWT calls answer `Unimplemented`.
//!
//! And it can misbehave on demand: send any bytes as an SVID ([`Svid::garbage`], or a chain and
//! key that do not match), stop as an agent restart does (open streams end with `Unavailable`,
//! the socket disappears, connecting fails) and come back, and delay every message.
//!
//! ```no_run
//! # async fn demo(chain: Vec<Vec<u8>>, key: Vec<u8>, ca: Vec<u8>) -> std::io::Result<()> {
//! use hitless_spiffe_fake::{FakeWorkloadApi, Svid};
//!
//! let agent = FakeWorkloadApi::start("/tmp/test/agent.sock").await?;
//! agent.update(|c| {
//!     c.svids = vec![Svid::new("spiffe://example.org/web", chain, key)];
//!     c.bundles.insert("example.org".into(), vec![ca]);
//! });
//! // SPIFFE_ENDPOINT_SOCKET=unix:///tmp/test/agent.sock
//! println!("{}", agent.endpoint());
//! # Ok(()) }
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The code generated from `proto/workload.proto` (no protobuf package: the service is
/// `/SpiffeWorkloadAPI/...`, as real agents serve it).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

use proto::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use proto::{X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest, X509svidResponse};

/// The metadata header every Workload API client must send (SPIFFE Workload API spec §6.2).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// One X.509-SVID as the agent hands it out. Nothing is checked: a test may send anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svid {
    /// The SPIFFE ID field of the message (`spiffe://trust-domain/path`). Its trust domain
    /// selects the bundle sent with the SVID.
    pub spiffe_id: String,
    /// The certificate chain, leaf first, DER (sent concatenated, as the protocol says).
    pub chain_der: Vec<Vec<u8>>,
    /// The private key, PKCS#8 DER.
    pub key_pkcs8_der: Vec<u8>,
    /// The operator's hint (empty: none).
    pub hint: String,
}

impl Svid {
    /// An SVID for `spiffe_id` with this chain (leaf first) and PKCS#8 key.
    pub fn new(spiffe_id: &str, chain_der: Vec<Vec<u8>>, key_pkcs8_der: Vec<u8>) -> Svid {
        Svid {
            spiffe_id: spiffe_id.to_string(),
            chain_der,
            key_pkcs8_der,
            hint: String::new(),
        }
    }

    /// A malformed SVID: bytes that are not a certificate and not a key.
    pub fn garbage(spiffe_id: &str) -> Svid {
        Svid::new(
            spiffe_id,
            vec![b"not a certificate".to_vec()],
            b"not a key".to_vec(),
        )
    }

    /// The trust domain of the SPIFFE ID (`example.org` for `spiffe://example.org/x`).
    pub fn trust_domain(&self) -> &str {
        let rest = self
            .spiffe_id
            .strip_prefix("spiffe://")
            .unwrap_or(&self.spiffe_id);
        rest.split('/').next().unwrap_or(rest)
    }
}

/// What the agent currently hands out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contents {
    /// The workload's SVIDs, the default one first. Empty: "no identity issued".
    pub svids: Vec<Svid>,
    /// Trust bundles: trust domain name (`example.org`) → its CA certificates, DER. The bundle
    /// of an SVID's trust domain goes with the SVID; the others are sent as federated bundles.
    pub bundles: BTreeMap<String, Vec<Vec<u8>>>,
}

/// What every stream reads: the contents and the agent's behaviour.
#[derive(Debug, Clone)]
struct Published {
    contents: Contents,
    /// False while the agent is "restarting": open streams end, new calls are refused.
    serving: bool,
    /// Waited before each message is sent.
    delay: Duration,
}

/// Counters a test reads to observe the clients.
#[derive(Debug, Default)]
struct Counters {
    x509_svid_calls: AtomicU64,
    x509_bundles_calls: AtomicU64,
    refused_without_header: AtomicU64,
    messages_sent: AtomicU64,
    open_streams: AtomicUsize,
}

#[derive(Clone)]
struct Service {
    published: watch::Receiver<Published>,
    counters: Arc<Counters>,
}

/// A running server task and how to stop it.
struct Running {
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// A fake Workload API listening on a unix socket. Stopped (socket removed) when dropped.
pub struct FakeWorkloadApi {
    path: PathBuf,
    published: watch::Sender<Published>,
    counters: Arc<Counters>,
    running: Mutex<Option<Running>>,
    /// The runtime it was started on: [`FakeWorkloadApi::restart`] serves there again, from
    /// any thread.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for FakeWorkloadApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeWorkloadApi")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl FakeWorkloadApi {
    /// Binds `path` (a stale socket file there is removed) and serves, with nothing to hand
    /// out yet. Must be called inside a tokio runtime.
    pub async fn start(path: impl AsRef<Path>) -> io::Result<FakeWorkloadApi> {
        let (published, _) = watch::channel(Published {
            contents: Contents::default(),
            serving: true,
            delay: Duration::ZERO,
        });
        let api = FakeWorkloadApi {
            path: path.as_ref().to_path_buf(),
            published,
            counters: Arc::default(),
            running: Mutex::new(None),
            runtime: tokio::runtime::Handle::current(),
        };
        api.serve()?;
        Ok(api)
    }

    fn serve(&self) -> io::Result<()> {
        let _runtime = self.runtime.enter();
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = tokio::net::UnixListener::bind(&self.path)?;
        let service = Service {
            published: self.published.subscribe(),
            counters: self.counters.clone(),
        };
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(SpiffeWorkloadApiServer::new(service))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = signal.await;
                }),
        );
        *lock(&self.running) = Some(Running { shutdown, task });
        Ok(())
    }

    /// The socket path.
    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// The endpoint as `SPIFFE_ENDPOINT_SOCKET` spells it: `unix:///path/to/socket`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Changes what the agent hands out; every open stream receives the new contents.
    pub fn update(&self, change: impl FnOnce(&mut Contents)) {
        self.published.send_modify(|p| change(&mut p.contents));
    }

    /// Replaces the SVIDs (one message on every open stream).
    pub fn set_svids(&self, svids: Vec<Svid>) {
        self.update(|c| c.svids = svids);
    }

    /// Replaces the bundle of `trust_domain` (one message on every open stream).
    pub fn set_bundle(&self, trust_domain: &str, cas_der: Vec<Vec<u8>>) {
        self.update(|c| {
            c.bundles.insert(trust_domain.to_string(), cas_der);
        });
    }

    /// What the agent currently hands out.
    pub fn contents(&self) -> Contents {
        self.published.borrow().contents.clone()
    }

    /// Waits `delay` before sending each message from now on (zero: no delay).
    pub fn set_delay(&self, delay: Duration) {
        // A delay alone is not news for the streams: do not wake them (that would resend).
        self.published.send_if_modified(|p| {
            p.delay = delay;
            false
        });
    }

    /// Stops as an agent restart does: every open stream ends with `Unavailable`, the server
    /// closes its connections, the socket file is removed (connecting fails until
    /// [`FakeWorkloadApi::restart`]).
    pub async fn stop(&self) {
        self.published.send_modify(|p| p.serving = false);
        let running = lock(&self.running).take();
        if let Some(Running { shutdown, mut task }) = running {
            let _ = shutdown.send(());
            // Graceful: waits for the connections to close, which they do once their streams
            // have ended (above) and the clients have read the GOAWAY. Bounded all the same.
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }

    /// Serves again on the same socket path after [`FakeWorkloadApi::stop`]; new streams get
    /// the current contents. May be called from any thread.
    pub fn restart(&self) -> io::Result<()> {
        self.published.send_if_modified(|p| {
            p.serving = true;
            // Nobody listens to the old streams any more; new ones read the value anyway.
            false
        });
        self.serve()
    }

    /// `FetchX509SVID` calls accepted so far (a reconnecting client makes a new one).
    pub fn x509_svid_calls(&self) -> u64 {
        self.counters.x509_svid_calls.load(Ordering::SeqCst)
    }

    /// `FetchX509Bundles` calls accepted so far.
    pub fn x509_bundles_calls(&self) -> u64 {
        self.counters.x509_bundles_calls.load(Ordering::SeqCst)
    }

    /// Calls refused because the security header was missing.
    pub fn refused_without_header(&self) -> u64 {
        self.counters.refused_without_header.load(Ordering::SeqCst)
    }

    /// Stream messages sent so far, on all streams.
    pub fn messages_sent(&self) -> u64 {
        self.counters.messages_sent.load(Ordering::SeqCst)
    }

    /// Streams currently open.
    pub fn open_streams(&self) -> usize {
        self.counters.open_streams.load(Ordering::SeqCst)
    }
}

impl Drop for FakeWorkloadApi {
    fn drop(&mut self) {
        self.published.send_modify(|p| p.serving = false);
        if let Some(Running { shutdown, task }) = lock(&self.running).take() {
            let _ = shutdown.send(());
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `spiffe://td`, the key of a bundle in the protocol's maps.
fn trust_domain_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

fn concat(certs: &[Vec<u8>]) -> Vec<u8> {
    certs.concat()
}

fn x509_svid_response(contents: &Contents) -> Result<X509svidResponse, Status> {
    if contents.svids.is_empty() {
        return Err(Status::permission_denied("no identity issued"));
    }
    let own: Vec<&str> = contents.svids.iter().map(Svid::trust_domain).collect();
    Ok(X509svidResponse {
        svids: contents
            .svids
            .iter()
            .map(|s| X509svid {
                spiffe_id: s.spiffe_id.clone(),
                x509_svid: concat(&s.chain_der),
                x509_svid_key: s.key_pkcs8_der.clone(),
                bundle: contents
                    .bundles
                    .get(s.trust_domain())
                    .map(|b| concat(b))
                    .unwrap_or_default(),
                hint: s.hint.clone(),
            })
            .collect(),
        crl: Vec::new(),
        federated_bundles: contents
            .bundles
            .iter()
            .filter(|(td, _)| !own.contains(&td.as_str()))
            .map(|(td, cas)| (trust_domain_id(td), concat(cas)))
            .collect::<HashMap<_, _>>(),
    })
}

fn x509_bundles_response(contents: &Contents) -> Result<X509BundlesResponse, Status> {
    if contents.bundles.is_empty() {
        return Err(Status::permission_denied("no identity issued"));
    }
    Ok(X509BundlesResponse {
        crl: Vec::new(),
        bundles: contents
            .bundles
            .iter()
            .map(|(td, cas)| (trust_domain_id(td), concat(cas)))
            .collect(),
    })
}

type MessageStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Service {
    fn check_header<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let ok = request
            .metadata()
            .get(SECURITY_HEADER)
            .is_some_and(|v| v.as_bytes() == b"true");
        if ok {
            Ok(())
        } else {
            self.counters
                .refused_without_header
                .fetch_add(1, Ordering::SeqCst);
            Err(Status::invalid_argument(
                "security header missing from request",
            ))
        }
    }

    /// A stream that sends `message(contents)` now and on every change, until the agent stops
    /// or the client goes away.
    fn stream<T: Send + 'static>(
        &self,
        message: fn(&Contents) -> Result<T, Status>,
    ) -> Result<MessageStream<T>, Status> {
        let mut published = self.published.clone();
        if !published.borrow().serving {
            return Err(Status::unavailable("agent is restarting"));
        }
        let (tx, rx) = mpsc::channel::<Result<T, Status>>(4);
        let counters = self.counters.clone();
        counters.open_streams.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            loop {
                let (reply, delay) = {
                    let p = published.borrow_and_update();
                    if !p.serving {
                        (
                            Err(Status::unavailable("agent is restarting")),
                            Duration::ZERO,
                        )
                    } else {
                        (message(&p.contents), p.delay)
                    }
                };
                let last = reply.is_err();
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if tx.send(reply).await.is_err() || last {
                    break;
                }
                counters.messages_sent.fetch_add(1, Ordering::SeqCst);
                tokio::select! {
                    changed = published.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                }
            }
            counters.open_streams.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<MessageStream<X509svidResponse>>, Status> {
        self.check_header(&request)?;
        let stream = self.stream(x509_svid_response)?;
        self.counters.x509_svid_calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<MessageStream<X509BundlesResponse>>, Status> {
        self.check_header(&request)?;
        let stream = self.stream(x509_bundles_response)?;
        self.counters
            .x509_bundles_calls
            .fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(stream))
    }
}
