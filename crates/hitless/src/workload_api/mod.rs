//! The SPIFFE Workload API as a source of identities and trust (feature `spiffe`).
//!
//! A SPIFFE agent (SPIRE, or any implementation of the Workload API) streams the workload's
//! X.509-SVIDs and the trust bundles of its trust domain over a unix socket, as they rotate.
//! This module reads that stream ([`feed`]: connect, reconnect with backoff, apply the
//! X.509-SVID rules) and feeds each update into ordinary reloading handles, so that an SVID
//! goes through what a file goes through (the same validation, last known good, generation,
//! events and status) and a bundle change is a trust change with every guarantee of one.
//!
//! The handshake path never waits on the agent: updates are applied on the stream's task, and
//! a handshake reads the current snapshot as for files.

pub(crate) mod feed;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::snapshot::lock;
use crate::spiffe_id::{InvalidSpiffeId, SpiffeId};

use feed::{Feed, FeedEvent, Update};

/// Why an update from the Workload API was refused (the last good values keep serving).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SvidError {
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
    fn refused(&self, error: &SvidError);
    /// The stream is broken: report the outage (the last good keeps serving).
    fn outage(&self, reason: &str);
}

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
pub(crate) async fn run(mut feed: Feed, sink: impl Sink, state: std::sync::Arc<FeedState>) {
    loop {
        let event = feed.next().await;
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
