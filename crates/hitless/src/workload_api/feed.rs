//! The Workload API stream as a sequence of events: connect, read, check each update by the
//! X.509-SVID rules, and on a broken stream say so and reconnect with backoff.
//!
//! This module knows the protocol (through the `spiffe` crate's client) and the SPIFFE rules;
//! it knows nothing about snapshots or rustls: what it yields is turned into published values
//! by the layer above ([`super`]).

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::spiffe::{WorkloadApiClient, WorkloadApiError, X509Context};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tokio_stream::{Stream, StreamExt};
use x509_parser::extensions::ParsedExtension;

use super::SpiffeError;
use crate::spiffe_id::SpiffeId;

/// What the stream of one Workload API connection yields.
type ContextStream = Pin<Box<dyn Stream<Item = Result<X509Context, WorkloadApiError>> + Send>>;

/// Which SVID and bundles of each update become the identity and the trust.
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    /// The SPIFFE ID of the SVID to use; `None`: the default (first) one.
    pub(crate) spiffe_id: Option<SpiffeId>,
    /// Also trust the federated trust domains' bundles.
    pub(crate) federated: bool,
    /// Verifies the SVID's chain to its trust domain's bundle.
    pub(crate) provider: Arc<CryptoProvider>,
}

/// One update that passed the SPIFFE rules: an identity and the bundle to trust.
#[derive(Debug)]
pub(crate) struct Update {
    /// The SVID's SPIFFE ID.
    pub(crate) spiffe_id: SpiffeId,
    /// Its chain, leaf first.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// Its key, PKCS#8.
    pub(crate) key: PrivatePkcs8KeyDer<'static>,
    /// The CA certificates to trust: the SVID's trust domain's, then (when asked) the
    /// federated ones, by trust domain name.
    pub(crate) cas: Vec<CertificateDer<'static>>,
    /// The trust domains whose bundles are in `cas`, the SVID's first.
    pub(crate) trust_domains: Vec<String>,
}

impl Update {
    /// The key as rustls takes it.
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// What happened on the stream.
#[derive(Debug)]
pub(crate) enum FeedEvent {
    /// An update that passed the SPIFFE rules.
    Update(Box<Update>),
    /// An update that did not; the stream goes on.
    Refused(SpiffeError),
    /// The stream broke or could not be opened; the next call waits for the backoff and
    /// reconnects.
    Broken(String),
}

/// Backoff between reconnection attempts: doubles from `min` up to `max`, back to `min` once a
/// stream delivers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        let max = max.max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next attempt; doubles the one after.
    fn step(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// A Workload API connection that reconnects: [`Feed::next`] yields updates, refusals and
/// breaks, forever.
pub(crate) struct Feed {
    endpoint: String,
    selection: Selection,
    stream: Option<ContextStream>,
    backoff: Backoff,
    /// When the next connection attempt may start (set when a stream breaks).
    retry_at: Option<Instant>,
}

impl Feed {
    /// A feed of `endpoint` (`unix:///path` or `tcp://ip:port`); connects on the first
    /// [`Feed::next`].
    pub(crate) fn new(endpoint: String, selection: Selection, backoff: Backoff) -> Feed {
        Feed {
            endpoint,
            selection,
            stream: None,
            backoff,
            retry_at: None,
        }
    }

    /// The next event. Reconnects (after the backoff) when no stream is open. Cancel-safe: a
    /// dropped call loses no message and no backoff.
    pub(crate) async fn next(&mut self) -> FeedEvent {
        if self.stream.is_none() {
            // Cleared only once waited: a caller that drops this future (a `select!`) and
            // calls again still waits the backoff.
            if let Some(at) = self.retry_at {
                tokio::time::sleep_until(at.into()).await;
                self.retry_at = None;
            }
            match open(self.endpoint.clone()).await {
                Ok(stream) => self.stream = Some(stream),
                Err(e) => return self.broken(format!("cannot open the stream: {e}")),
            }
        }
        let Some(stream) = self.stream.as_mut() else {
            return self.broken("no stream".to_string());
        };
        match stream.next().await {
            Some(Ok(context)) => {
                self.backoff.reset();
                match check(&context, &self.selection) {
                    Ok(update) => FeedEvent::Update(Box::new(update)),
                    Err(e) => FeedEvent::Refused(e),
                }
            }
            Some(Err(e)) if is_broken(&e) => self.broken(format!("stream broken: {e}")),
            // The message was received but is not a valid update: the stream goes on (an agent
            // sending a bad SVID once does not make it unreachable).
            Some(Err(e)) => FeedEvent::Refused(SpiffeError::Message(e.to_string())),
            None => self.broken("the agent closed the stream".to_string()),
        }
    }

    fn broken(&mut self, reason: String) -> FeedEvent {
        self.stream = None;
        self.retry_at = Some(Instant::now() + self.backoff.step());
        FeedEvent::Broken(reason)
    }
}

/// Opens a stream. (Takes the endpoint by value: the feed itself is not `Sync`, and the
/// future must be `Send`.)
async fn open(endpoint: String) -> Result<ContextStream, WorkloadApiError> {
    let client = WorkloadApiClient::connect_to(&endpoint).await?;
    let stream = client.stream_x509_contexts().await?;
    Ok(Box::pin(stream))
}

/// Whether an error item means the stream is gone (as opposed to one bad message).
fn is_broken(e: &WorkloadApiError) -> bool {
    matches!(
        e,
        WorkloadApiError::Transport(_)
            | WorkloadApiError::PermissionDenied(_)
            | WorkloadApiError::NoIdentityIssued
            | WorkloadApiError::EmptyResponse
    )
}

/// Applies the X.509-SVID rules to one update (the `spiffe` crate has parsed it and checked
/// the leaf's key usage and the intermediates' CA flags): the chosen SVID's leaf has exactly
/// one URI SAN, a valid SPIFFE ID (the certificate is authoritative, not the message's
/// `spiffe_id` field), is not a CA, and its chain verifies to
/// the bundle of its trust domain. (Key match and validity period are checked where the value
/// is published, as for every identity.)
pub(crate) fn check(context: &X509Context, selection: &Selection) -> Result<Update, SpiffeError> {
    let svid = match &selection.spiffe_id {
        None => context.default_svid(),
        Some(want) => context
            .svids()
            .iter()
            .find(|s| s.spiffe_id().to_string() == want.as_str()),
    }
    .ok_or_else(|| {
        SpiffeError::NoSvid(
            selection
                .spiffe_id
                .as_ref()
                .map_or_else(String::new, |id| id.to_string()),
        )
    })?;
    let chain: Vec<CertificateDer<'static>> = svid
        .cert_chain()
        .iter()
        .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
        .collect();
    let leaf = chain.first().ok_or(SpiffeError::EmptyChain)?;
    let id = SpiffeId::from_certificate(leaf.as_ref())?;
    check_not_ca(leaf.as_ref())?;

    let mut domains: Vec<(String, Vec<CertificateDer<'static>>)> = context
        .bundle_set()
        .iter()
        .map(|(td, bundle)| {
            (
                td.to_string(),
                bundle
                    .authorities()
                    .iter()
                    .map(|c| CertificateDer::from(c.as_bytes().to_vec()))
                    .collect(),
            )
        })
        .collect();
    // A stable order, so that an unchanged bundle set hashes the same.
    domains.sort_by(|a, b| a.0.cmp(&b.0));
    let own = domains
        .iter()
        .position(|(td, _)| td == id.trust_domain())
        .ok_or_else(|| SpiffeError::NoBundle(id.trust_domain().to_string()))?;
    let (own_td, own_cas) = domains.remove(own);
    if own_cas.is_empty() {
        return Err(SpiffeError::NoBundle(own_td));
    }
    verify_chain(&chain, &own_cas, &selection.provider).map_err(|e| SpiffeError::Chain {
        trust_domain: own_td.clone(),
        reason: e,
    })?;

    let mut cas = own_cas;
    let mut trust_domains = vec![own_td];
    if selection.federated {
        for (td, federated) in domains {
            cas.extend(federated);
            trust_domains.push(td);
        }
    }
    Ok(Update {
        spiffe_id: id,
        chain,
        key: PrivatePkcs8KeyDer::from(svid.private_key().as_bytes().to_vec()),
        cas,
        trust_domains,
    })
}

/// An X.509-SVID leaf must not be a CA (basicConstraints cA false or absent).
fn check_not_ca(leaf: &[u8]) -> Result<(), SpiffeError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| SpiffeError::Message(format!("cannot parse the leaf: {e}")))?;
    let is_ca = cert.extensions().iter().any(
        |ext| matches!(ext.parsed_extension(), ParsedExtension::BasicConstraints(bc) if bc.ca),
    );
    if is_ca {
        return Err(SpiffeError::LeafIsCa);
    }
    Ok(())
}

/// Accepts any (well-formed) extendedKeyUsage: which usage an identity is for is the role
/// check of the identity's validation, not the bundle's.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for purpose in iter {
            purpose?;
        }
        Ok(())
    }
}

/// Verifies `chain` (leaf first) to `cas` at the current time.
fn verify_chain(
    chain: &[CertificateDer<'static>],
    cas: &[CertificateDer<'static>],
    provider: &CryptoProvider,
) -> Result<(), String> {
    let anchors = cas
        .iter()
        .map(|ca| {
            webpki::anchor_from_trusted_cert(ca)
                .map(|a| a.to_owned())
                .map_err(|e| format!("a bundle certificate is not a usable CA: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (leaf, intermediates) = chain.split_first().ok_or("empty chain")?;
    let leaf = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("the leaf: {e}"))?;
    leaf.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &anchors,
        intermediates,
        UnixTime::now(),
        AnyUsage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u128> = (0..5).map(|_| b.step().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350, 350]);
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(100));
    }

    use hitless_spiffe_fake::{FakeWorkloadApi, Svid};
    use hitless_test_pki::{Ca, KeyType, LeafSpec};

    const ID: &str = "spiffe://example.org/ns/prod/web";
    const WAIT: Duration = Duration::from_secs(20);

    fn svid(ca: &Ca, spec: &LeafSpec) -> Svid {
        let leaf = ca.issue(spec);
        Svid::new(
            ID,
            leaf.rustls_chain().iter().map(|c| c.to_vec()).collect(),
            leaf.key_pkcs8_der.clone(),
        )
    }

    fn selection() -> Selection {
        Selection {
            spiffe_id: None,
            federated: false,
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        }
    }

    async fn next(feed: &mut Feed) -> FeedEvent {
        tokio::time::timeout(WAIT, feed.next())
            .await
            .expect("the feed yields an event")
    }

    #[tokio::test]
    async fn updates_refusals_breaks_and_reconnection() {
        let dir = tempfile::tempdir().unwrap();
        let agent = FakeWorkloadApi::start(dir.path().join("agent.sock"))
            .await
            .unwrap();
        let ca = Ca::new_root("example.org CA", KeyType::EcP256);
        let intermediate = ca.new_intermediate("example.org intermediate", KeyType::EcP256);
        let stranger = Ca::new_root("not in the bundle", KeyType::EcP256);
        let other_td = Ca::new_root("other.org CA", KeyType::EcP256);
        let first = svid(&ca, &LeafSpec::svid(ID));
        agent.update(|c| {
            c.svids = vec![first.clone()];
            c.bundles.insert("example.org".into(), vec![ca.cert_der()]);
            c.bundles
                .insert("other.org".into(), vec![other_td.cert_der()]);
        });
        let mut feed = Feed::new(
            agent.endpoint(),
            selection(),
            Backoff::new(Duration::from_millis(50), Duration::from_millis(200)),
        );

        let FeedEvent::Update(u) = next(&mut feed).await else {
            panic!("expected the first update")
        };
        assert_eq!(u.spiffe_id.as_str(), ID);
        assert_eq!(u.chain[0].as_ref(), first.chain_der[0].as_slice());
        assert_eq!(u.cas.len(), 1, "federated bundles only when asked");
        assert_eq!(u.trust_domains, ["example.org"]);

        // A rotation through an intermediate: chain of two, verified to the root.
        let rotated = svid(&intermediate, &LeafSpec::svid(ID));
        agent.set_svids(vec![rotated.clone()]);
        let FeedEvent::Update(u) = next(&mut feed).await else {
            panic!("expected the rotation")
        };
        assert_eq!(u.chain.len(), 2);
        assert_eq!(u.chain[0].as_ref(), rotated.chain_der[0].as_slice());

        // Refused, each for its reason, and the stream goes on.
        agent.set_svids(vec![Svid::garbage(ID)]);
        assert!(matches!(
            next(&mut feed).await,
            FeedEvent::Refused(SpiffeError::Message(_))
        ));
        agent.set_svids(vec![svid(&stranger, &LeafSpec::svid(ID))]);
        match next(&mut feed).await {
            FeedEvent::Refused(SpiffeError::Chain { trust_domain, .. }) => {
                assert_eq!(trust_domain, "example.org")
            }
            other => panic!("expected a chain refusal, got {other:?}"),
        }
        let mut mislabelled = svid(&ca, &LeafSpec::svid("spiffe://example.org/other"));
        mislabelled.spiffe_id = ID.into();
        // The certificate is authoritative (the `spiffe` crate reads the ID from it).
        match next_after(&agent, &mut feed, mislabelled).await {
            FeedEvent::Update(u) => assert_eq!(u.spiffe_id.as_str(), "spiffe://example.org/other"),
            other => panic!("expected an update, got {other:?}"),
        }
        let two_uris = svid(
            &ca,
            &LeafSpec::svid(ID).uris(vec![ID, "spiffe://example.org/x"]),
        );
        assert!(matches!(
            next_after(&agent, &mut feed, two_uris).await,
            FeedEvent::Refused(_)
        ));
        agent.update(|c| {
            c.bundles.remove("example.org");
            c.svids = vec![svid(&ca, &LeafSpec::svid(ID))];
        });
        assert!(matches!(next(&mut feed).await, FeedEvent::Refused(_)));
        agent.update(|c| {
            c.bundles.insert("example.org".into(), vec![ca.cert_der()]);
        });
        assert!(matches!(next(&mut feed).await, FeedEvent::Update(_)));

        // The agent restarts: broken, then refused connections (with backoff), then back.
        agent.stop().await;
        assert!(matches!(next(&mut feed).await, FeedEvent::Broken(_)));
        assert!(matches!(next(&mut feed).await, FeedEvent::Broken(_)));
        agent.restart().unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            match next(&mut feed).await {
                FeedEvent::Update(u) => {
                    assert_eq!(u.spiffe_id.as_str(), ID);
                    break;
                }
                FeedEvent::Broken(_) if Instant::now() < deadline => continue,
                other => panic!("expected reconnection, got {other:?}"),
            }
        }
        assert_eq!(agent.x509_svid_calls(), 2);
    }

    async fn next_after(agent: &FakeWorkloadApi, feed: &mut Feed, svid: Svid) -> FeedEvent {
        agent.set_svids(vec![svid]);
        next(feed).await
    }

    #[tokio::test]
    async fn federated_bundles_and_a_chosen_svid() {
        let dir = tempfile::tempdir().unwrap();
        let agent = FakeWorkloadApi::start(dir.path().join("agent.sock"))
            .await
            .unwrap();
        let ca = Ca::new_root("example.org CA", KeyType::EcP256);
        let other_td = Ca::new_root("other.org CA", KeyType::EcP256);
        let admin = "spiffe://example.org/admin";
        let mut second = svid(&ca, &LeafSpec::svid(admin));
        second.spiffe_id = admin.into();
        agent.update(|c| {
            c.svids = vec![svid(&ca, &LeafSpec::svid(ID)), second];
            c.bundles.insert("example.org".into(), vec![ca.cert_der()]);
            c.bundles
                .insert("other.org".into(), vec![other_td.cert_der()]);
        });
        let mut selection = selection();
        selection.federated = true;
        selection.spiffe_id = Some(SpiffeId::parse(admin).unwrap());
        let mut feed = Feed::new(
            agent.endpoint(),
            selection,
            Backoff::new(Duration::from_millis(50), Duration::from_millis(50)),
        );
        let FeedEvent::Update(u) = next(&mut feed).await else {
            panic!("expected an update")
        };
        assert_eq!(u.spiffe_id.as_str(), admin);
        assert_eq!(u.trust_domains, ["example.org", "other.org"]);
        assert_eq!(u.cas[0].as_ref(), ca.cert_der().as_slice());
        assert_eq!(u.cas[1].as_ref(), other_td.cert_der().as_slice());

        let mut selection = feed.selection.clone();
        selection.spiffe_id = Some(SpiffeId::parse("spiffe://example.org/absent").unwrap());
        let mut feed = Feed::new(
            agent.endpoint(),
            selection,
            Backoff::new(Duration::from_millis(50), Duration::from_millis(50)),
        );
        assert!(
            matches!(next(&mut feed).await, FeedEvent::Refused(SpiffeError::NoSvid(id)) if id == "spiffe://example.org/absent")
        );
    }

    #[test]
    fn a_ca_leaf_is_refused() {
        let ca = Ca::new_root("a CA", KeyType::EcP256);
        assert_eq!(check_not_ca(&ca.cert_der()), Err(SpiffeError::LeafIsCa));
        let leaf = ca.issue(&LeafSpec::svid(ID));
        assert_eq!(check_not_ca(&leaf.cert_der), Ok(()));
    }
}
