//! The SPIFFE Workload API as a source of identities and trust (feature `spiffe`).
//!
//! A SPIFFE agent (SPIRE, or any implementation of the Workload API) streams the workload's
//! X.509-SVIDs and the trust bundles of its trust domain over a unix socket, as they rotate.
//! This module reads that stream ([`feed`]: connect, reconnect with backoff, apply the
//! X.509-SVID rules) and publishes each update into ordinary pushed handles
//! ([`ReloadingIdentity::pushed`], [`ReloadingTrust::pushed`]), so that an SVID goes through
//! what a file goes through (the same validation, last known good, generation, events and
//! status) and a bundle change is a trust change with every guarantee of one.
//!
//! The handshake path never waits on the agent: updates are applied on the stream's task, and
//! a handshake reads the current snapshot as for files.

pub(crate) mod feed;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;

use crate::identity::default_provider;
use crate::snapshot::lock;
use crate::spiffe_id::{InvalidSpiffeId, SpiffeId};
use crate::{Error, ReloadingIdentity, ReloadingTrust, Role};
use crate::{IdentityPublisher, TrustPublisher};

use feed::{Backoff, Feed, FeedEvent, Selection, Update};

/// The environment variable naming the Workload API endpoint (SPIFFE Workload Endpoint
/// specification).
pub const SPIFFE_ENDPOINT_SOCKET: &str = "SPIFFE_ENDPOINT_SOCKET";

/// An identity and a trust bundle fed by the SPIFFE Workload API.
///
/// [`SpiffeSource::builder`] connects, waits for the first valid X.509-SVID and returns the
/// source; its [`identity`](SpiffeSource::identity) and [`trust`](SpiffeSource::trust) are
/// ordinary handles (build server and client configurations from them as from files). From
/// then on every update of the stream is published: a new SVID is served from the next
/// handshake; a bundle change is a trust change (new configurations, verdicts from the new
/// bundle, earlier sessions not resumed); an update that breaks a rule is refused (the last
/// good values keep serving, the identity's status shows why); a broken stream is an outage
/// in both statuses while the last good values keep serving and the stream reconnects with
/// backoff.
///
/// The stream runs on a task of the tokio runtime that called `connect`, until the source is
/// dropped: keep it as long as its handles are used (after it is dropped they keep serving
/// the last values, without updates).
///
/// ```no_run
/// # async fn demo() -> Result<(), hitless::Error> {
/// use hitless::{ReloadingServerConfig, SpiffeSource};
///
/// // The endpoint from SPIFFE_ENDPOINT_SOCKET, or .endpoint("unix:///run/spire/agent.sock").
/// let spiffe = SpiffeSource::builder().connect().await?;
/// let server = ReloadingServerConfig::builder(spiffe.identity())
///     .client_trust(spiffe.trust())
///     .build()?;
/// # let _ = server; Ok(()) }
/// ```
pub struct SpiffeSource {
    identity: ReloadingIdentity,
    trust: ReloadingTrust,
    endpoint: String,
    state: Arc<FeedState>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for SpiffeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SpiffeSource")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Drop for SpiffeSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SpiffeSource {
    /// Starts configuring a source; [`SpiffeSourceBuilder::connect`] connects.
    pub fn builder() -> SpiffeSourceBuilder {
        SpiffeSourceBuilder {
            endpoint: None,
            name: "spiffe".to_string(),
            spiffe_id: None,
            federated: false,
            role: Role::Any,
            provider: None,
            first_update: Duration::from_secs(30),
            backoff: (Duration::from_millis(200), Duration::from_secs(10)),
        }
    }

    /// The identity: the X.509-SVID being served, its chain and key.
    pub fn identity(&self) -> &ReloadingIdentity {
        &self.identity
    }

    /// The trust: the bundle of the SVID's trust domain (and the federated ones when asked).
    pub fn trust(&self) -> &ReloadingTrust {
        &self.trust
    }

    /// The endpoint the stream is read from.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// What the stream has been doing (the handles' own statuses say what is served).
    pub fn status(&self) -> WorkloadApiStatus {
        self.state.status(&self.endpoint)
    }
}

/// Configures a [`SpiffeSource`].
#[must_use]
#[derive(Debug)]
pub struct SpiffeSourceBuilder {
    endpoint: Option<String>,
    name: String,
    spiffe_id: Option<SpiffeId>,
    federated: bool,
    role: Role,
    provider: Option<Arc<CryptoProvider>>,
    first_update: Duration,
    backoff: (Duration, Duration),
}

impl SpiffeSourceBuilder {
    /// The Workload API endpoint: `unix:///path/to/agent.sock` (or `unix:/path`, or a plain
    /// absolute path), `tcp://127.0.0.1:8081`. Default: the `SPIFFE_ENDPOINT_SOCKET`
    /// environment variable.
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Names the handles in logs, status and events: `NAME` for the identity, `NAME bundle`
    /// for the trust (default `spiffe`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Serve the SVID with this SPIFFE ID when the agent hands out several (default: the
    /// first, the agent's default).
    pub fn spiffe_id(mut self, id: SpiffeId) -> Self {
        self.spiffe_id = Some(id);
        self
    }

    /// Also trust the bundles of federated trust domains (default: only the SVID's own trust
    /// domain).
    pub fn federated(mut self, federated: bool) -> Self {
        self.federated = federated;
        self
    }

    /// What the identity is presented for (default [`Role::Any`]: SVIDs are usually both
    /// client and server identities).
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// The rustls crypto provider (key loading, chain checks, verifiers); default as
    /// [`IdentityBuilder::crypto_provider`](crate::IdentityBuilder::crypto_provider).
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// How long [`connect`](Self::connect) waits for the first valid SVID, reconnecting as
    /// needed (default 30 s).
    pub fn first_update_timeout(mut self, timeout: Duration) -> Self {
        self.first_update = timeout;
        self
    }

    /// Waits between reconnection attempts: from `min`, doubling up to `max` (default 200 ms
    /// to 10 s); back to `min` once a stream delivers.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// Connects, waits for the first update that passes every rule (SPIFFE rules, then the
    /// identity's and the trust's validation), builds the handles from it and starts
    /// following the stream. Must run inside a tokio runtime (the stream's task is spawned on
    /// it).
    pub async fn connect(self) -> Result<SpiffeSource, Error> {
        let endpoint = match self.endpoint {
            Some(e) => e,
            None => std::env::var(SPIFFE_ENDPOINT_SOCKET).map_err(|_| Error::Spiffe {
                endpoint: PathBuf::from(format!("${SPIFFE_ENDPOINT_SOCKET}")),
                source: SpiffeError::NoEndpoint,
            })?,
        };
        let endpoint = normalise_endpoint(&endpoint);
        let origin = PathBuf::from(&endpoint);
        let fail = |source| Error::Spiffe {
            endpoint: origin.clone(),
            source,
        };
        ::spiffe::transport::Endpoint::parse(&endpoint)
            .map_err(|e| fail(SpiffeError::Endpoint(e.to_string())))?;
        let provider = self.provider.map_or_else(default_provider, Ok)?;
        let selection = Selection {
            spiffe_id: self.spiffe_id,
            federated: self.federated,
            provider: provider.clone(),
        };
        let mut feed = Feed::new(
            endpoint.clone(),
            selection,
            Backoff::new(self.backoff.0, self.backoff.1),
        );
        let state = Arc::new(FeedState::default());

        let deadline = tokio::time::Instant::now() + self.first_update;
        let mut last = String::from("nothing received");
        let (identity, trust, publishers) = loop {
            let Ok(event) = tokio::time::timeout_at(deadline, feed.next()).await else {
                return Err(fail(SpiffeError::NoValidSvid {
                    waited: self.first_update,
                    last,
                }));
            };
            state.record(&event);
            match event {
                FeedEvent::Update(update) => {
                    match first_handles(&self.name, &origin, self.role, &provider, &update) {
                        Ok(built) => break built,
                        Err(e) => last = e.to_string(),
                    }
                }
                FeedEvent::Refused(e) => last = e.to_string(),
                FeedEvent::Broken(reason) => last = reason,
            }
        };
        let sink = Publishers {
            identity: publishers.0,
            served: identity.clone(),
            trust: publishers.1,
            origin,
        };
        let task = tokio::spawn(run(feed, sink, state.clone()));
        Ok(SpiffeSource {
            identity,
            trust,
            endpoint,
            state,
            task,
        })
    }
}

/// `unix:///path` for a plain absolute path; anything else as given.
fn normalise_endpoint(endpoint: &str) -> String {
    if endpoint.starts_with('/') {
        format!("unix://{endpoint}")
    } else {
        endpoint.to_string()
    }
}

/// The handles, built from the first update (validated as every later one will be).
#[allow(clippy::type_complexity)]
fn first_handles(
    name: &str,
    origin: &std::path::Path,
    role: Role,
    provider: &Arc<CryptoProvider>,
    update: &Update,
) -> Result<
    (
        ReloadingIdentity,
        ReloadingTrust,
        (IdentityPublisher, TrustPublisher),
    ),
    Error,
> {
    let (trust, trust_publisher) = ReloadingTrust::pushed(format!("{name} bundle"))
        .origin(origin)
        .crypto_provider(provider.clone())
        .build(update.cas.clone(), Vec::new())?;
    let (identity, identity_publisher) = ReloadingIdentity::pushed(name)
        .origin(origin)
        .role(role)
        .crypto_provider(provider.clone())
        .build(update.chain.clone(), update.key())?;
    Ok((identity, trust, (identity_publisher, trust_publisher)))
}

/// The library's sink: the publishers of the pushed handles.
struct Publishers {
    identity: IdentityPublisher,
    /// The identity handle itself, for expiry checks.
    served: ReloadingIdentity,
    trust: TrustPublisher,
    origin: PathBuf,
}

impl Sink for Publishers {
    fn update(&self, update: &Update) {
        // Trust first: an SVID from a new CA arrives with (or after) the bundle holding it, so
        // peers holding the new SVID are accepted no later than it is presented. Refusals are
        // recorded in the handles' statuses by `publish` itself.
        if let Err(e) = self.trust.publish(update.cas.clone(), Vec::new()) {
            tracing::debug!("Workload API bundle refused: {e}");
        }
        if let Err(e) = self.identity.publish(update.chain.clone(), update.key()) {
            tracing::debug!("Workload API SVID refused: {e}");
        }
    }

    fn refused(&self, error: &SpiffeError) {
        self.identity.refuse(Error::Spiffe {
            endpoint: self.origin.clone(),
            source: error.clone(),
        });
    }

    fn outage(&self, reason: &str) {
        self.identity.report_outage(reason);
        self.trust.report_outage(reason);
    }

    fn tick(&self) {
        self.served.check_expiry();
    }
}

/// What went wrong with the SPIFFE Workload API: an update refused (the last good values keep
/// serving), or no source to start from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeError {
    /// No endpoint given and `SPIFFE_ENDPOINT_SOCKET` is not set.
    #[error("no Workload API endpoint: give one or set SPIFFE_ENDPOINT_SOCKET")]
    NoEndpoint,
    /// The endpoint is not a Workload API address (`unix:///path`, `tcp://ip:port`).
    #[error("invalid Workload API endpoint: {0}")]
    Endpoint(String),
    /// No valid X.509-SVID arrived in time.
    #[error("no valid X.509-SVID within {}: {last}", humantime::format_duration(*.waited))]
    NoValidSvid {
        /// How long it waited.
        waited: Duration,
        /// The last reason (a connection error, a refused update).
        last: String,
    },
    /// The message could not be parsed as X.509-SVIDs and bundles (malformed DER, a leaf with
    /// a CA flag or without digitalSignature, an invalid SPIFFE ID, a missing field...).
    #[error("malformed update: {0}")]
    Message(String),
    /// The update has no SVID with the SPIFFE ID asked for (empty: no SVID at all).
    #[error("no X.509-SVID {0:?} in the update")]
    NoSvid(String),
    /// The SVID has no certificate.
    #[error("the X.509-SVID has no certificate")]
    EmptyChain,
    /// The leaf does not carry exactly one URI SAN that is a valid SPIFFE ID.
    #[error("the X.509-SVID's SPIFFE ID: {0}")]
    SpiffeId(#[from] InvalidSpiffeId),
    /// The leaf is a CA certificate.
    #[error("the X.509-SVID's leaf is a CA certificate (basicConstraints cA=true)")]
    LeafIsCa,
    /// The update has no (or an empty) bundle for the SVID's trust domain.
    #[error("no bundle for trust domain {0:?}")]
    NoBundle(String),
    /// The SVID's chain does not verify to its trust domain's bundle.
    #[error("the chain does not verify to the bundle of trust domain {trust_domain:?}: {reason}")]
    Chain {
        /// The SVID's trust domain.
        trust_domain: String,
        /// What the verifier said.
        reason: String,
    },
}

/// Where a feed's events go: the pushed handles in the library, a recorder in tests.
pub(crate) trait Sink: Send + Sync + 'static {
    /// An update that passed the SPIFFE rules: publish it.
    fn update(&self, update: &Update);
    /// An update that did not: report it (the last good keeps serving).
    fn refused(&self, error: &SpiffeError);
    /// The stream is broken: report the outage (the last good keeps serving).
    fn outage(&self, reason: &str);
    /// Called every [`EXPIRY_CHECK`] whatever the stream does: announce expiry if due (an SVID
    /// may expire during a long outage, when nothing is published).
    fn tick(&self);
}

/// How often a source checks whether what it serves expires (a status computation: cheap).
const EXPIRY_CHECK: Duration = Duration::from_secs(1);

/// What the stream has been doing, for status pages.
#[derive(Debug, Default)]
pub(crate) struct FeedState {
    connected: AtomicBool,
    updates: AtomicU64,
    refused: AtomicU64,
    outages: AtomicU64,
    reconnects: AtomicU64,
    last: Mutex<Option<Served>>,
}

/// The facts of the last update applied.
#[derive(Debug, Clone)]
struct Served {
    spiffe_id: SpiffeId,
    trust_domains: Vec<String>,
    at: SystemTime,
}

/// The Workload API stream as a status page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkloadApiStatus {
    /// The endpoint (`unix:///path/to/agent.sock`).
    pub endpoint: String,
    /// A stream is open and has delivered since it was (re)opened.
    pub connected: bool,
    /// Updates received that passed the SPIFFE rules (one per message of the stream).
    pub updates: u64,
    /// Updates refused.
    pub refused: u64,
    /// Times the stream broke or could not be opened.
    pub outages: u64,
    /// Times a stream delivered again after a break.
    pub reconnects: u64,
    /// The SPIFFE ID of the SVID being served.
    pub spiffe_id: Option<String>,
    /// The trust domains whose bundles are trusted (the SVID's first).
    pub trust_domains: Vec<String>,
    /// When the last update was received.
    pub last_update: Option<SystemTime>,
}

impl FeedState {
    pub(crate) fn status(&self, endpoint: &str) -> WorkloadApiStatus {
        let last = lock(&self.last).clone();
        WorkloadApiStatus {
            endpoint: endpoint.to_string(),
            connected: self.connected.load(Ordering::SeqCst),
            updates: self.updates.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::SeqCst),
            outages: self.outages.load(Ordering::SeqCst),
            reconnects: self.reconnects.load(Ordering::SeqCst),
            spiffe_id: last.as_ref().map(|l| l.spiffe_id.to_string()),
            trust_domains: last
                .as_ref()
                .map(|l| l.trust_domains.clone())
                .unwrap_or_default(),
            last_update: last.map(|l| l.at),
        }
    }

    /// Records one event of the feed; says whether it ended an outage.
    fn record(&self, event: &FeedEvent) -> bool {
        match event {
            FeedEvent::Update(u) => {
                self.updates.fetch_add(1, Ordering::SeqCst);
                *lock(&self.last) = Some(Served {
                    spiffe_id: u.spiffe_id.clone(),
                    trust_domains: u.trust_domains.clone(),
                    at: SystemTime::now(),
                });
                self.delivered()
            }
            FeedEvent::Refused(_) => {
                self.refused.fetch_add(1, Ordering::SeqCst);
                self.delivered()
            }
            FeedEvent::Broken(_) => {
                self.outages.fetch_add(1, Ordering::SeqCst);
                self.connected.store(false, Ordering::SeqCst);
                false
            }
        }
    }

    fn delivered(&self) -> bool {
        let was = self.connected.swap(true, Ordering::SeqCst);
        let reconnected = !was && self.outages.load(Ordering::SeqCst) > 0;
        if reconnected {
            self.reconnects.fetch_add(1, Ordering::SeqCst);
        }
        reconnected
    }
}

/// Reads `feed` forever, applying each event to `sink` and recording it in `state`.
pub(crate) async fn run(mut feed: Feed, sink: impl Sink, state: Arc<FeedState>) {
    let mut expiry = tokio::time::interval(EXPIRY_CHECK);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let event = tokio::select! {
            event = feed.next() => event,
            _ = expiry.tick() => {
                sink.tick();
                continue;
            }
        };
        if state.record(&event) {
            tracing::info!("Workload API stream delivering again");
        }
        match &event {
            FeedEvent::Update(update) => sink.update(update),
            FeedEvent::Refused(error) => {
                tracing::warn!("Workload API update refused, keeping the last good: {error}");
                sink.refused(error);
            }
            FeedEvent::Broken(reason) => {
                tracing::warn!("Workload API: {reason}; reconnecting, the last good keeps serving");
                sink.outage(reason);
            }
        }
    }
}

impl fmt::Display for WorkloadApiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {} updates, {} refused, {} outages",
            self.endpoint,
            if self.connected {
                "connected"
            } else {
                "disconnected"
            },
            self.updates,
            self.refused,
            self.outages
        )
    }
}
