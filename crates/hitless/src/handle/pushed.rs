//! Sources that are not files: a provider pushes values into an ordinary handle.
//!
//! Files are one way credentials arrive; a stream is the other (the SPIFFE Workload API sends
//! X.509-SVIDs and trust bundles as they rotate; an ACME client obtains a certificate). Such a
//! source does not need a detector: it knows when it has something new. So it gets the other
//! half of the handle: [`ReloadingIdentity::pushed`] (or [`ReloadingTrust::pushed`]) returns
//! an ordinary [`ReloadingIdentity`] (or [`ReloadingTrust`]) together with a publisher, a
//! sending end like `tokio::sync::watch::Sender`, which the source keeps and feeds.
//!
//! Every value published goes through what a file's contents go through: a content hash
//! (identical content changes nothing), the same validation (chain, key match, validity period,
//! the [`Role`]'s extendedKeyUsage; for a trust bundle, CA parsing, CRL signatures and no CRL
//! rollback), then one atomic swap to a new generation, the `Reloaded` event and the status. A
//! refused value is recorded in [`Status::last_error`](crate::Status::last_error), counted, logged and announced as
//! `ReloadFailed` while the last good value keeps serving. A source that cannot deliver (a
//! broken stream, a reconnection) says so with `report_outage`: [`Status::outage`](crate::Status::outage) and
//! [`Event::SourceOutage`], nothing replaced; the next value published ends the outage.
//!
//! Because the handle is the ordinary one, everything built on handles works unchanged:
//! [`ReloadingServerConfig::builder`](crate::ReloadingServerConfig::builder),
//! [`ServerConfigBuilder::client_trust`](crate::ServerConfigBuilder::client_trust),
//! [`ReloadingClientConfig`](crate::ReloadingClientConfig), the resolvers. A pushed trust
//! change is a trust change with every guarantee: new configurations, the verdict taken from
//! the new trust at verification, earlier sessions no longer resumed. The handshake path is the
//! same one atomic load: publishing happens on the provider's thread.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use super::{Options, Reload, Shared};
use crate::detect::Detection;
use crate::identity::{default_provider, Identity, IdentityLoader, Role, Validation};
use crate::reload::{Attempt, Load, Reloading};
use crate::snapshot::Event;
use crate::trust::TrustLoader;
use crate::{Error, ReloadingIdentity, ReloadingTrust};

/// A provider's own rule for the identities it pushes.
type Rule = Arc<dyn Fn(&Identity) -> Result<(), String> + Send + Sync>;

/// Builds a pushed [`ReloadingIdentity`] and its [`IdentityPublisher`]; see
/// [`ReloadingIdentity::pushed`].
#[must_use]
pub struct PushedIdentityBuilder {
    options: Options,
    origin: Option<PathBuf>,
    accept_expired: bool,
    role: Role,
    provider: Option<Arc<CryptoProvider>>,
    rules: Vec<Rule>,
}

impl ReloadingIdentity {
    /// Starts building an identity whose values a provider pushes (a Workload API stream, an
    /// ACME client) instead of files: [`build`](PushedIdentityBuilder::build) returns the
    /// ordinary handle and the publisher the provider keeps. `name` names it in logs, status
    /// and events.
    ///
    /// ```
    /// use hitless::{ReloadingIdentity, ReloadingServerConfig, Reload, Role};
    /// # use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # // What a provider receives: a chain and its key (here: a fresh self-signed one).
    /// # let issue = || -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
    /// #     let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    /// #     let key = PrivateKeyDer::Pkcs8(issued.signing_key.serialize_der().into());
    /// #     Ok((vec![issued.cert.der().clone()], key))
    /// # };
    /// let (chain, key) = issue()?; // e.g. the first X.509-SVID of the stream
    /// let (identity, publisher) = ReloadingIdentity::pushed("workload")
    ///     .role(Role::Server)
    ///     .build(chain, key)?;
    /// // An ordinary handle: serve it as any other.
    /// let server = ReloadingServerConfig::builder(&identity).build()?;
    ///
    /// // The provider, on every update of its stream (validated like a file, swapped if new):
    /// let (chain, key) = issue()?;
    /// assert_eq!(publisher.publish(chain, key)?, Reload::Reloaded { generation: 2 });
    /// // ... and when the stream breaks (the last good identity keeps serving):
    /// publisher.report_outage("Workload API stream broken, reconnecting");
    /// assert!(identity.status().outage.is_some());
    /// # let _ = server; Ok(()) }
    /// ```
    pub fn pushed(name: impl Into<String>) -> PushedIdentityBuilder {
        let mut options = Options::default();
        options.set_name(name.into());
        options.detection = Detection::Pushed;
        PushedIdentityBuilder {
            options,
            origin: None,
            accept_expired: false,
            role: Role::Any,
            provider: None,
            rules: Vec::new(),
        }
    }
}

impl PushedIdentityBuilder {
    /// A rule of the provider's own, checked after the library's (chain, key, validity,
    /// role) on every value published: `Err(reason)` refuses the value like any invalid one
    /// ([`Error::Refused`], recorded, announced, the last good value kept). E.g. the SPIFFE
    /// rules: exactly one `spiffe://` URI SAN, a leaf that is not a CA.
    pub fn require(
        mut self,
        rule: impl Fn(&Identity) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.rules.push(Arc::new(rule));
        self
    }

    /// What an error about a refused value names where a file's path would stand, e.g. the
    /// Workload API socket (default: the name).
    pub fn origin(mut self, origin: impl Into<PathBuf>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Calls `callback` on every [`Event`] (from the provider's thread: keep it short).
    pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.options.add_callback(Arc::new(callback));
        self
    }

    /// Announce "expiring soon" when less than this fraction of the certificate's lifetime is
    /// left (default [`Status::DEFAULT_EXPIRING_SOON`](crate::Status::DEFAULT_EXPIRING_SOON)).
    pub fn expiring_soon(mut self, fraction: f64) -> Self {
        self.options.set_expiring_soon(fraction);
        self
    }

    /// Accept a leaf (and intermediates) expired or not yet valid (default: refuse them).
    pub fn accept_expired(mut self, accept: bool) -> Self {
        self.accept_expired = accept;
        self
    }

    /// What the identity is presented for (default [`Role::Any`]); see
    /// [`IdentityBuilder::role`](crate::IdentityBuilder::role).
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// The rustls crypto provider used to load keys and verify chains (default: as
    /// [`IdentityBuilder::crypto_provider`](crate::IdentityBuilder::crypto_provider)).
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Validates the first value (a chain in any order, the leaf's key) and returns the handle
    /// serving it with the publisher of the next ones; fails with the reason if it is not good,
    /// as a file builder does.
    pub fn build(
        self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(ReloadingIdentity, IdentityPublisher), Error> {
        let loader = IdentityLoader::pushed(Validation {
            accept_expired: self.accept_expired,
            role: self.role,
            provider: self.provider.map_or_else(default_provider, Ok)?,
        });
        let name = self.options.name_or(String::new());
        let reloading = self.options.reloading(name.clone(), loader);
        let publisher = IdentityPublisher {
            reloading: reloading.clone(),
            origin: self.origin.unwrap_or_else(|| PathBuf::from(name)),
            rules: self.rules.into(),
        };
        publisher.publish(chain, key)?;
        let identity = ReloadingIdentity::from_shared(Shared::pushed(reloading));
        Ok((identity, publisher))
    }
}

/// The sending end of a pushed [`ReloadingIdentity`]: what a provider feeds. Cheap to clone;
/// values published from several clones are applied one at a time.
#[derive(Clone)]
pub struct IdentityPublisher {
    reloading: Arc<Reloading<IdentityLoader>>,
    origin: PathBuf,
    rules: Arc<[Rule]>,
}

impl std::fmt::Debug for IdentityPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityPublisher")
            .field("name", &self.reloading.name)
            .finish_non_exhaustive()
    }
}

impl IdentityPublisher {
    /// Offers a new value: a certificate chain (leaf and intermediates, any order) and the
    /// leaf's private key. Identical to what is served: `Ok(Reload::Unchanged)`. Valid and
    /// different: served from the next handshake on, `Ok(Reload::Reloaded { generation })`.
    /// Refused (malformed, key mismatch, expired, a chain or role a peer would refuse, a
    /// [`require`](PushedIdentityBuilder::require) rule): `Err`
    /// with the reason, recorded in the status and announced, the last good value still
    /// served. Either way the source is delivering: an outage it reported ends. Validation
    /// runs on the caller's thread (milliseconds: parse, signatures, key check).
    pub fn publish(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Reload, Error> {
        let mut digest = Sha256::new();
        digest.update(b"hitless pushed identity");
        for cert in &chain {
            add(&mut digest, cert.as_ref());
        }
        add(&mut digest, key.secret_der());
        let attempt = self.reloading.offer(digest.finalize().into(), |loader| {
            let identity = loader.load_der(&self.origin, &chain, key)?;
            for rule in self.rules.iter() {
                rule(&identity).map_err(|reason| Error::Refused {
                    origin: self.origin.clone(),
                    reason,
                })?;
            }
            Ok(identity)
        });
        settled(&self.reloading, attempt)
    }

    /// The source cannot deliver updates (a stream broken, reconnecting, an authority
    /// unreachable): shown in [`Status::outage`](crate::Status::outage) (health `degraded`) and announced once as
    /// [`Event::SourceOutage`]; what is served does not change. Called again during the same
    /// outage, it updates the reason. Ends with the next value published (or
    /// [`outage_over`](Self::outage_over)).
    pub fn report_outage(&self, reason: impl Into<String>) {
        self.reloading.report_outage(reason.into());
    }

    /// The source is delivering again although nothing new was published (e.g. a stream
    /// reconnected and has nothing to send yet): ends the outage, announced as
    /// [`Event::SourceRestored`].
    pub fn outage_over(&self) {
        self.reloading.end_outage();
    }

    /// Records a value the provider itself refused (an X.509-SVID breaking a SPIFFE rule) as a
    /// refused publish is recorded: status, counter, log, `ReloadFailed`; the last good value
    /// keeps serving, and the source counts as delivering (an outage ends).
    #[cfg(feature = "spiffe")]
    pub(crate) fn refuse(&self, error: Error) {
        // A digest no content has: the offer is never "unchanged".
        let mut digest = Sha256::new();
        digest.update(b"hitless refused by the provider");
        let _ = self
            .reloading
            .offer(digest.finalize().into(), |_| Err(error));
    }
}

/// Builds a pushed [`ReloadingTrust`] and its [`TrustPublisher`]; see
/// [`ReloadingTrust::pushed`].
#[must_use]
pub struct PushedTrustBuilder {
    options: Options,
    origin: Option<PathBuf>,
    provider: Option<Arc<CryptoProvider>>,
}

impl ReloadingTrust {
    /// Starts building a trust bundle whose values a provider pushes (the trust bundles of a
    /// Workload API stream) instead of files: [`build`](PushedTrustBuilder::build) returns the
    /// ordinary handle and the publisher the provider keeps. Every value published that
    /// differs from the one served is a trust change: new configurations, verdicts from the
    /// new trust, no resumption of earlier sessions.
    ///
    /// ```
    /// use hitless::{Reload, ReloadingClientConfig, ReloadingTrust};
    /// # use rustls::pki_types::CertificateDer;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let ca = || -> Result<CertificateDer<'static>, rcgen::Error> {
    /// #     let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    /// #     params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    /// #     Ok(params.self_signed(&rcgen::KeyPair::generate()?)?.der().clone())
    /// # };
    /// let (trust, publisher) = ReloadingTrust::pushed("bundle").build(vec![ca()?], vec![])?;
    /// let client = ReloadingClientConfig::builder(&trust).build()?;
    /// assert_eq!(client.trust_generation(), 1);
    /// // The bundle rotates (e.g. a new trust-domain CA):
    /// assert_eq!(publisher.publish(vec![ca()?], vec![])?, Reload::Reloaded { generation: 2 });
    /// assert_eq!(client.trust_generation(), 2); // a new ClientConfig, new sessions
    /// # Ok(()) }
    /// ```
    pub fn pushed(name: impl Into<String>) -> PushedTrustBuilder {
        let mut options = Options::default();
        options.set_name(name.into());
        options.detection = Detection::Pushed;
        PushedTrustBuilder {
            options,
            origin: None,
            provider: None,
        }
    }
}

impl PushedTrustBuilder {
    /// What an error about a refused value names where a file's path would stand (default: the
    /// name).
    pub fn origin(mut self, origin: impl Into<PathBuf>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Calls `callback` on every [`Event`] (from the provider's thread: keep it short).
    pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.options.add_callback(Arc::new(callback));
        self
    }

    /// The rustls crypto provider of the verifiers and CRL checks (default: as
    /// [`TrustBuilder::crypto_provider`](crate::TrustBuilder::crypto_provider)).
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Validates the first value (CA certificates, CRLs) and returns the handle serving it with
    /// the publisher of the next ones; fails with the reason if it is not good.
    pub fn build(
        self,
        cas: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(ReloadingTrust, TrustPublisher), Error> {
        let loader = TrustLoader::new(Default::default(), self.provider)?;
        let name = self.options.name_or(String::new());
        let reloading = self.options.reloading(name.clone(), loader);
        let publisher = TrustPublisher {
            reloading: reloading.clone(),
            origin: self.origin.unwrap_or_else(|| PathBuf::from(name)),
        };
        publisher.publish(cas, crls)?;
        let trust = ReloadingTrust::from_shared(Shared::pushed(reloading));
        Ok((trust, publisher))
    }
}

/// The sending end of a pushed [`ReloadingTrust`]: what a provider feeds. Cheap to clone.
#[derive(Clone)]
pub struct TrustPublisher {
    reloading: Arc<Reloading<TrustLoader>>,
    origin: PathBuf,
}

impl std::fmt::Debug for TrustPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustPublisher")
            .field("name", &self.reloading.name)
            .finish_non_exhaustive()
    }
}

impl TrustPublisher {
    /// Offers a new trust bundle: the CA certificates to trust (at least one) and the CRLs to
    /// apply (PEM-decoded DER). The same outcomes and rules as
    /// [`IdentityPublisher::publish`]; a CRL older than the one in force for its issuer is
    /// refused as from a file.
    pub fn publish(
        &self,
        cas: Vec<CertificateDer<'static>>,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<Reload, Error> {
        let mut digest = Sha256::new();
        digest.update(b"hitless pushed trust");
        for ca in &cas {
            add(&mut digest, ca.as_ref());
        }
        digest.update(b"crls");
        for crl in &crls {
            add(&mut digest, crl.as_ref());
        }
        let attempt = self.reloading.offer(digest.finalize().into(), |loader| {
            loader.load_der(&self.origin, cas, crls)
        });
        settled(&self.reloading, attempt)
    }

    /// The source cannot deliver updates; see [`IdentityPublisher::report_outage`].
    pub fn report_outage(&self, reason: impl Into<String>) {
        self.reloading.report_outage(reason.into());
    }

    /// The source delivers again; see [`IdentityPublisher::outage_over`].
    pub fn outage_over(&self) {
        self.reloading.end_outage();
    }
}

/// One length-prefixed item of a content hash (so that moving bytes between items changes it).
fn add(digest: &mut Sha256, item: &[u8]) {
    digest.update((item.len() as u64).to_be_bytes());
    digest.update(item);
}

/// The result of an offer; announces expiry now if due (no detector timer does it for a
/// pushed credential).
fn settled<L: Load>(reloading: &Reloading<L>, attempt: Attempt) -> Result<Reload, Error> {
    let _ = reloading.check_expiry();
    Reload::from_attempt(attempt)
}
