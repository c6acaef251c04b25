//! Whole rustls configurations that follow a reloading trust bundle and reloading identities.
//!
//! Three rules make a trust change mean what it says, whatever configuration a connection
//! started with (a connection accepted just before a change holds the previous one):
//!
//! 1. **The verdict is taken at verification.** The client-certificate verifier of every
//!    configuration (and the server-certificate verifier of every client configuration) loads
//!    the trust snapshot current when the peer's certificate is verified (`verify.rs`).
//! 2. **Sessions are bound** to the trust generation and identity epoch of the configuration
//!    that made them (`sessions.rs`): rustls skips verification on resumption (TLS 1.2 session
//!    ids and tickets, TLS 1.3 PSK), so after a trust change or a rotation no earlier session is
//!    stored, handed out or decrypted, by any configuration; the peer falls back to a full
//!    handshake, verified under rule 1.
//! 3. **A new configuration per change.** A server's CertificateRequest names its CAs through
//!    `ClientCertVerifier::root_hint_subjects`, a slice borrowed from the verifier, so the names
//!    cannot follow the trust inside one verifier: every trust change (and every rotation, for
//!    rule 2) builds a new configuration, swapped in with one atomic store; each new connection
//!    takes the configuration current at that moment with one atomic load.
//!
//! The configuration follows the trust from the moment it is built: it subscribes to trust
//! events and then checks once more for a reload that landed in between.
//!
//! Every configuration is built with `builder_with_provider`, never with rustls's process-wide
//! lookup (which panics when both of rustls's providers are compiled in and none is
//! installed). The provider: the one given to the builder's `crypto_provider`, else the one the
//! trust was built with, else the default (the process default if installed, else the one
//! compiled in by feature).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};

use crate::identity::default_provider;
use crate::rustls::client::{ClientIdentityResolver, ReloadingServerCertVerifier};
use crate::rustls::sessions::{Binding, BoundClientSessions, BoundServerSessions, BoundTickets};
use crate::rustls::verify::ReloadingClientCertVerifier;
use crate::snapshot::{lock, Event, EventCallback, Snapshot};
use crate::trust::Trust;
use crate::Error;
use crate::{ReloadingIdentity, ReloadingTrust};

type Configure<C> = Arc<dyn Fn(&mut C) + Send + Sync>;
type ChangeCallback<C> = Arc<dyn Fn(&ConfigChange<C>) + Send + Sync>;
/// Builds a configuration for the current trust.
type Build<C> = Box<dyn Fn(&BuildContext<'_>) -> Result<C, Error> + Send + Sync>;
type Versions = &'static [&'static SupportedProtocolVersion];

/// The provider a configuration is built with: the one given to its builder, else the trust's,
/// else the default one.
fn choose_provider(
    given: Option<Arc<CryptoProvider>>,
    trust: Option<&ReloadingTrust>,
) -> Result<Arc<CryptoProvider>, Error> {
    match (given, trust) {
        (Some(p), _) => Ok(p),
        (None, Some(t)) => Ok(t.crypto_provider().clone()),
        (None, None) => default_provider(),
    }
}

/// What one configuration is built from.
struct BuildContext<'a> {
    /// The trust handle and the snapshot of it current when building.
    trust: Option<(&'a ReloadingTrust, &'a Snapshot<Trust>)>,
    /// What its sessions are bound to.
    binding: Binding,
}

impl BuildContext<'_> {
    /// Binds the server's session cache and ticketer (as `configure` left them) to this
    /// configuration's trust generation and identity epoch.
    fn bind_server_sessions(&self, config: &mut ServerConfig) {
        config.session_storage = Arc::new(BoundServerSessions {
            inner: config.session_storage.clone(),
            binding: self.binding.clone(),
        });
        config.ticketer = Arc::new(BoundTickets {
            inner: config.ticketer.clone(),
            binding: self.binding.clone(),
        });
    }
}

/// A new configuration in use, as handed to [`ReloadingServerConfig::subscribe`] and
/// [`ReloadingClientConfig::subscribe`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ConfigChange<C> {
    /// The configuration new connections now get (what `current()` returns).
    pub config: Arc<C>,
    /// The generation of the trust it was built from (0 without trust).
    pub trust_generation: u64,
    /// Whether the trust changed (else an identity rotated): sessions made under the previous
    /// trust no longer resume, and open connections were verified under the previous trust.
    pub trust_changed: bool,
}

struct Inner<C> {
    current: ArcSwap<C>,
    trust: Option<ReloadingTrust>,
    /// The trust generation `current` was built from.
    trust_generation: AtomicU64,
    /// Bumped by every rotation of an identity whose sessions must not resume.
    epoch: Arc<AtomicU64>,
    build: Build<C>,
    subscribers: std::sync::Mutex<Vec<ChangeCallback<C>>>,
    /// Serialises rebuilds (trust and identity detectors run on different threads).
    rebuild_lock: std::sync::Mutex<()>,
}

/// Builds one configuration from the trust current now; returns it with that trust's
/// generation (0 without trust).
fn make<C>(
    trust: Option<&ReloadingTrust>,
    epoch: &Arc<AtomicU64>,
    build: &Build<C>,
) -> Result<(C, u64), Error> {
    let snapshot = match trust {
        None => None,
        Some(t) => Some(t.current().ok_or_else(|| Error::NotLoaded {
            name: t.status().name,
        })?),
    };
    let generation = snapshot.as_ref().map_or(0, |s| s.generation);
    let binding = Binding::new(
        trust.cloned(),
        generation,
        epoch.clone(),
        epoch.load(Ordering::SeqCst),
    );
    let context = BuildContext {
        trust: trust.zip(snapshot.as_deref()),
        binding,
    };
    Ok((build(&context)?, generation))
}

impl<C: Send + Sync + 'static> Inner<C> {
    fn start(trust: Option<ReloadingTrust>, build: Build<C>) -> Result<Arc<Self>, Error> {
        let epoch = Arc::new(AtomicU64::new(0));
        let (first, generation) = make(trust.as_ref(), &epoch, &build)?;
        let inner = Arc::new(Inner {
            current: ArcSwap::from_pointee(first),
            trust: trust.clone(),
            trust_generation: AtomicU64::new(generation),
            epoch,
            build,
            subscribers: std::sync::Mutex::default(),
            rebuild_lock: std::sync::Mutex::default(),
        });
        if let Some(trust) = trust {
            let weak: Weak<Inner<C>> = Arc::downgrade(&inner);
            trust.subscribe(move |event| {
                if let Event::Reloaded { .. } = event {
                    if let Some(inner) = weak.upgrade() {
                        inner.follow_trust();
                    }
                }
            });
            // A reload between the first build and the subscription announced itself to
            // nobody: look once more now that every later one will be heard.
            inner.follow_trust();
        }
        Ok(inner)
    }

    /// Subscribes `subscribe` (an identity's event source): every rotation moves the epoch,
    /// so that no peer resumes into a session made with the old certificate, and builds a
    /// configuration whose sessions belong to the new epoch.
    fn renew_sessions_on(self: &Arc<Self>, subscribe: impl FnOnce(EventCallback)) {
        let weak: Weak<Inner<C>> = Arc::downgrade(self);
        subscribe(Arc::new(move |event| {
            if let Event::Reloaded { generation, .. } = event {
                if *generation > 1 {
                    if let Some(inner) = weak.upgrade() {
                        inner.epoch.fetch_add(1, Ordering::SeqCst);
                        inner.rebuild();
                        tracing::debug!("identity rotated: earlier sessions no longer resume");
                    }
                }
            }
        }));
    }

    /// Rebuilds if the trust has moved past the generation the current configuration was
    /// built from.
    fn follow_trust(&self) {
        let Some(trust) = &self.trust else { return };
        let now = trust.current().map_or(0, |t| t.generation);
        if now != self.trust_generation.load(Ordering::SeqCst) {
            self.rebuild();
        }
    }

    /// Builds a configuration from the trust and epoch current now and swaps it in.
    fn rebuild(&self) {
        let _serialise = lock(&self.rebuild_lock);
        match make(self.trust.as_ref(), &self.epoch, &self.build) {
            Ok((config, generation)) => {
                let config = Arc::new(config);
                self.current.store(config.clone());
                let previous = self.trust_generation.swap(generation, Ordering::SeqCst);
                let trust_changed = previous != generation;
                if trust_changed {
                    tracing::info!(
                        trust_generation = generation,
                        "trust changed: new TLS configuration in use; earlier sessions no \
                         longer resume"
                    );
                }
                let change = ConfigChange {
                    config,
                    trust_generation: generation,
                    trust_changed,
                };
                let subscribers = lock(&self.subscribers).clone();
                for s in subscribers {
                    s(&change);
                }
            }
            // The configuration in use stays; its verifier already takes the verdict from the
            // current trust, and its sessions no longer resume (their binding is stale).
            Err(e) => tracing::error!("cannot rebuild the TLS configuration: {e}"),
        }
    }
}

/// A `ServerConfig` that follows reloading identities and a reloading client trust: the one
/// recommended way to serve (mutual) TLS with hitless.
///
/// Built *from the credentials*: every rotation of a served identity and every trust change
/// builds a new configuration (new session binding, current CA names) with no further set-up,
/// and client certificates are verified against the trust current when they are verified.
///
/// ```no_run
/// use hitless::{IdentitySource, ReloadingIdentity, ReloadingServerConfig, ReloadingTrust, TrustSource};
/// # fn main() -> Result<(), hitless::Error> {
/// let identity = ReloadingIdentity::builder(IdentitySource::bundle("identity.pem")).build()?;
/// let trust = ReloadingTrust::builder(TrustSource::cas(["clients-ca.pem"])).build()?;
/// let configs = ReloadingServerConfig::builder(&identity)
///     .client_trust(&trust)
///     .configure(|c| c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()])
///     .build()?;
/// // per accepted connection (or `hitless::TlsAcceptor`, feature `tokio`):
/// let acceptor = tokio_rustls::TlsAcceptor::from(configs.current());
/// # let _ = acceptor; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReloadingServerConfig {
    inner: Arc<Inner<ServerConfig>>,
}

impl std::fmt::Debug for ReloadingServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingServerConfig")
            .field("trust_generation", &self.trust_generation())
            .finish_non_exhaustive()
    }
}

/// What a [`ReloadingServerConfig`] serves: one reloading identity, or a set chosen by SNI.
/// Made from `&ReloadingIdentity` or `&ServerIdentities` (`From`), so that the configuration
/// knows both how to resolve certificates and when they rotate.
#[derive(Clone)]
pub struct ServedIdentities {
    served: Served,
}

#[derive(Clone)]
enum Served {
    One(ReloadingIdentity),
    Set(crate::ServerIdentities),
}

impl std::fmt::Debug for ServedIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.served {
            Served::One(identity) => f.debug_tuple("ServedIdentities").field(identity).finish(),
            Served::Set(_) => f.write_str("ServedIdentities(ServerIdentities)"),
        }
    }
}

impl From<&ReloadingIdentity> for ServedIdentities {
    fn from(identity: &ReloadingIdentity) -> Self {
        ServedIdentities {
            served: Served::One(identity.clone()),
        }
    }
}

impl From<&crate::ServerIdentities> for ServedIdentities {
    fn from(identities: &crate::ServerIdentities) -> Self {
        ServedIdentities {
            served: Served::Set(identities.clone()),
        }
    }
}

/// Builds a [`ReloadingServerConfig`].
#[must_use]
pub struct ServerConfigBuilder {
    resolver: Arc<dyn ResolvesServerCert>,
    served: Option<ServedIdentities>,
    trust: Option<ReloadingTrust>,
    /// Only clients with these SPIFFE IDs (set with the trust, by `client_trust_spiffe`).
    allowed: Option<crate::SpiffeIdMatcher>,
    provider: Option<Arc<CryptoProvider>>,
    versions: Versions,
    configure: Option<Configure<ServerConfig>>,
    renew_on: Vec<Box<dyn FnOnce(EventCallback) + Send>>,
}

impl ServerConfigBuilder {
    /// Require client certificates chaining to this trust (mutual TLS). Without it, clients
    /// are not authenticated. Replaces an earlier
    /// [`client_trust_spiffe`](Self::client_trust_spiffe) (the last call decides).
    pub fn client_trust(mut self, trust: &ReloadingTrust) -> Self {
        self.trust = Some(trust.clone());
        self.allowed = None;
        self
    }

    /// Require client certificates chaining to this trust (mutual TLS) **and** carrying a
    /// SPIFFE ID that `allowed` matches (an X.509-SVID: exactly one URI SAN). Both are checked
    /// when the certificate is verified, the chain against the trust current at that moment.
    /// A client refused by the matcher fails its handshake as one the CAs do not trust.
    pub fn client_trust_spiffe(
        mut self,
        trust: &ReloadingTrust,
        allowed: crate::SpiffeIdMatcher,
    ) -> Self {
        self.trust = Some(trust.clone());
        self.allowed = Some(allowed);
        self
    }

    /// For a listener bound to one IP address: a set of identities then answers a client that
    /// sends no SNI with the identity naming that address, if any (see
    /// [`ServerIdentities::resolver_for_ip`](crate::ServerIdentities::resolver_for_ip)).
    /// Unspecified addresses (`0.0.0.0`, `::`) change nothing.
    pub fn local_ip(mut self, ip: std::net::IpAddr) -> Self {
        if let Some(ServedIdentities {
            served: Served::Set(set),
        }) = &self.served
        {
            if !ip.is_unspecified() {
                self.resolver = set.resolver_for_ip(ip);
            }
        }
        self
    }

    /// Adjusts every built configuration (ALPN, ticketer, session cache, ...).
    pub fn configure(mut self, f: impl Fn(&mut ServerConfig) + Send + Sync + 'static) -> Self {
        self.configure = Some(Arc::new(f));
        self
    }

    /// The rustls crypto provider of every built configuration: cipher suites, key exchange
    /// groups, signature verification. Default: the provider of the
    /// [`client_trust`](Self::client_trust) (see
    /// [`TrustBuilder::crypto_provider`](crate::TrustBuilder::crypto_provider)); without client
    /// trust, the process default if one is installed, else the one compiled in by the crate's
    /// features (aws-lc-rs, else ring), else [`Error::NoCryptoProvider`]. Give the identity
    /// ([`IdentityBuilder::crypto_provider`](crate::IdentityBuilder::crypto_provider)) the same
    /// provider, so that its key is loaded by it too.
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// The TLS versions offered (default: [`rustls::DEFAULT_VERSIONS`], TLS 1.3 and 1.2).
    pub fn protocol_versions(
        mut self,
        versions: &'static [&'static SupportedProtocolVersion],
    ) -> Self {
        self.versions = versions;
        self
    }

    /// With [`builder_with_resolver`](ReloadingServerConfig::builder_with_resolver): start a
    /// new session binding whenever this identity rotates, so that no client resumes (TLS 1.3
    /// PSK, TLS 1.2 session) into a session made with the old certificate, and every handshake
    /// after a rotation presents the new one. Costs one full handshake per client per
    /// rotation. [`builder`](ReloadingServerConfig::builder) does this for what it serves.
    pub fn new_sessions_on_rotation(mut self, identity: &ReloadingIdentity) -> Self {
        let identity = identity.clone();
        self.renew_on
            .push(Box::new(move |cb| identity.subscribe(move |e| cb(e))));
        self
    }

    /// [`new_sessions_on_rotation`](Self::new_sessions_on_rotation) for every identity of a
    /// set.
    pub fn new_sessions_on_rotation_of(mut self, identities: &crate::ServerIdentities) -> Self {
        let identities = identities.clone();
        self.renew_on
            .push(Box::new(move |cb| identities.subscribe(move |e| cb(e))));
        self
    }

    /// Builds the first configuration (the trust must be loaded) and follows trust changes.
    pub fn build(self) -> Result<ReloadingServerConfig, Error> {
        let renew_on = self.renew_on;
        let resolver = self.resolver;
        let configure = self.configure;
        let provider = choose_provider(self.provider, self.trust.as_ref())?;
        let versions = self.versions;
        let allowed = self.allowed;
        let build: Build<ServerConfig> = Box::new(move |context: &BuildContext<'_>| {
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(|source| Error::CryptoProvider { source })?;
            let mut config = match context.trust {
                // The verdict is taken from the trust current when the certificate is
                // verified, not from `snapshot` (see `verify.rs`).
                Some((handle, snapshot)) => builder
                    .with_client_cert_verifier(Arc::new(
                        ReloadingClientCertVerifier::new(handle.clone(), snapshot)
                            .allowing(allowed.clone()),
                    ))
                    .with_cert_resolver(resolver.clone()),
                None => builder
                    .with_no_client_auth()
                    .with_cert_resolver(resolver.clone()),
            };
            if let Some(f) = &configure {
                f(&mut config);
            }
            context.bind_server_sessions(&mut config);
            Ok(config)
        });
        let inner = Inner::start(self.trust, build)?;
        for subscribe in renew_on {
            inner.renew_sessions_on(subscribe);
        }
        Ok(ReloadingServerConfig { inner })
    }
}

impl ReloadingServerConfig {
    /// Starts building a configuration serving `identities` (`&ReloadingIdentity` or
    /// `&ServerIdentities`); every rotation of one of them starts a new session binding.
    pub fn builder(identities: impl Into<ServedIdentities>) -> ServerConfigBuilder {
        let served = identities.into();
        let mut b = match &served.served {
            Served::One(identity) => {
                Self::builder_with_resolver(identity.resolver()).new_sessions_on_rotation(identity)
            }
            Served::Set(set) => {
                Self::builder_with_resolver(set.resolver()).new_sessions_on_rotation_of(set)
            }
        };
        b.served = Some(served);
        b
    }

    /// Starts building a configuration serving certificates from any rustls resolver (e.g. a
    /// resolver of yours wrapping [`ReloadingIdentity::resolver`]). Rotations are then not
    /// known to the configuration: tell it with
    /// [`new_sessions_on_rotation`](ServerConfigBuilder::new_sessions_on_rotation).
    pub fn builder_with_resolver(resolver: Arc<dyn ResolvesServerCert>) -> ServerConfigBuilder {
        ServerConfigBuilder {
            resolver,
            served: None,
            trust: None,
            allowed: None,
            provider: None,
            versions: rustls::DEFAULT_VERSIONS,
            configure: None,
            renew_on: Vec::new(),
        }
    }

    /// The configuration to accept a new connection with: one atomic load (plus, in
    /// `on-handshake` mode, the trust's at-most-once-per-TTL check).
    pub fn current(&self) -> Arc<ServerConfig> {
        if let Some(trust) = &self.inner.trust {
            trust.check_on_handshake();
        }
        self.inner.current.load_full()
    }

    /// The generation of the client trust the current configuration was built from (0 without
    /// client trust).
    pub fn trust_generation(&self) -> u64 {
        self.inner.trust_generation.load(Ordering::SeqCst)
    }

    /// Calls `callback` with every new configuration, once it is in use: after a trust change
    /// ([`ConfigChange::trust_changed`]) or a rotation of a served identity. For frameworks
    /// that hold one `Arc<ServerConfig>` and can swap it (axum-server's
    /// `RustlsConfig::reload_from_config`), and to re-check open connections after a trust
    /// change ([`verify_client`](Self::verify_client)). Like the credentials' `subscribe`, the
    /// callback runs on the thread that applied the change: keep it short.
    pub fn subscribe(
        &self,
        callback: impl Fn(&ConfigChange<ServerConfig>) + Send + Sync + 'static,
    ) {
        lock(&self.inner.subscribers).push(Arc::new(callback));
    }

    /// Checks a client certificate chain (leaf first) against the current trust and CRLs, as a
    /// new handshake would. Used to re-check open connections after a trust change
    /// (`--drop-untrusted`). Without client trust every chain passes.
    pub fn verify_client(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let Some(trust) = &self.inner.trust else {
            return Ok(());
        };
        let Some(current) = trust.current() else {
            return Err(rustls::Error::General("no client trust loaded".into()));
        };
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        current
            .value
            .fixed_client_verifier()
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
    }
}

/// A `ClientConfig` that is rebuilt (new server verifier, new resumption store) whenever the
/// trust bundle or its CRLs change, presenting reloading client identities; a rotation of one
/// of those identities also starts a new resumption store, so the next handshake to each
/// server presents the new certificate.
#[derive(Clone)]
pub struct ReloadingClientConfig {
    inner: Arc<Inner<ClientConfig>>,
}

impl std::fmt::Debug for ReloadingClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingClientConfig")
            .field(
                "trust_generation",
                &self.inner.trust_generation.load(Ordering::SeqCst),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`ReloadingClientConfig`].
#[must_use]
pub struct ClientConfigBuilder {
    trust: ReloadingTrust,
    identities: Vec<ReloadingIdentity>,
    provider: Option<Arc<CryptoProvider>>,
    versions: Versions,
    configure: Option<Configure<ClientConfig>>,
}

impl ClientConfigBuilder {
    /// Present one of these identities when the server asks (see [`ClientIdentityResolver`]
    /// for how one is chosen).
    pub fn identities(mut self, identities: Vec<ReloadingIdentity>) -> Self {
        self.identities = identities;
        self
    }

    /// Adjusts every built configuration (ALPN, resumption, ...).
    pub fn configure(mut self, f: impl Fn(&mut ClientConfig) + Send + Sync + 'static) -> Self {
        self.configure = Some(Arc::new(f));
        self
    }

    /// The rustls crypto provider of every built configuration: cipher suites, key exchange
    /// groups, signature verification. Default: the provider of the trust (see
    /// [`TrustBuilder::crypto_provider`](crate::TrustBuilder::crypto_provider), whose own
    /// default is the process default if one is installed, else the one compiled in by the
    /// crate's features). Give the client identities the same provider.
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// The TLS versions offered (default: [`rustls::DEFAULT_VERSIONS`], TLS 1.3 and 1.2).
    pub fn protocol_versions(
        mut self,
        versions: &'static [&'static SupportedProtocolVersion],
    ) -> Self {
        self.versions = versions;
        self
    }

    /// Builds the first configuration and follows trust changes.
    pub fn build(self) -> Result<ReloadingClientConfig, Error> {
        let identities = self.identities.clone();
        let resolver = (!self.identities.is_empty())
            .then(|| Arc::new(ClientIdentityResolver::new(self.identities)));
        let configure = self.configure;
        let provider = choose_provider(self.provider, Some(&self.trust))?;
        let versions = self.versions;
        let build: Build<ClientConfig> = Box::new(move |context: &BuildContext<'_>| {
            let Some((handle, _)) = context.trust else {
                return Err(Error::NotLoaded {
                    name: "trust".into(),
                });
            };
            // The verdict on the server's certificate is taken from the trust current when it
            // is verified.
            let builder = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)
                .map_err(|source| Error::CryptoProvider { source })?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ReloadingServerCertVerifier::new(
                    handle.clone(),
                )));
            let mut config = match &resolver {
                Some(r) => builder.with_client_cert_resolver(r.clone()),
                None => builder.with_no_client_auth(),
            };
            // Sessions bound to this trust generation and identity epoch; a store installed by
            // `configure` replaces it (and is then the caller's to invalidate).
            config.resumption = Resumption::store(Arc::new(BoundClientSessions {
                inner: Arc::new(ClientSessionMemoryCache::new(256)),
                binding: context.binding.clone(),
            }));
            if let Some(f) = &configure {
                f(&mut config);
            }
            Ok(config)
        });
        let inner = Inner::start(Some(self.trust), build)?;
        // A rotated client identity starts a new resumption store: the next connection to
        // every server is a full handshake presenting the new certificate.
        for identity in identities {
            inner.renew_sessions_on(move |cb| identity.subscribe(move |e| cb(e)));
        }
        Ok(ReloadingClientConfig { inner })
    }
}

impl ReloadingClientConfig {
    /// Starts building a client configuration trusting `trust`.
    pub fn builder(trust: &ReloadingTrust) -> ClientConfigBuilder {
        ClientConfigBuilder {
            trust: trust.clone(),
            identities: Vec::new(),
            provider: None,
            versions: rustls::DEFAULT_VERSIONS,
            configure: None,
        }
    }

    /// The configuration for a new connection: one atomic load (plus, in `on-handshake` mode,
    /// the trust's at-most-once-per-TTL check).
    pub fn current(&self) -> Arc<ClientConfig> {
        if let Some(trust) = &self.inner.trust {
            trust.check_on_handshake();
        }
        self.inner.current.load_full()
    }

    /// The generation of the trust the current configuration was built from.
    pub fn trust_generation(&self) -> u64 {
        self.inner.trust_generation.load(Ordering::SeqCst)
    }

    /// Calls `callback` with every new configuration, once it is in use: after a trust change
    /// ([`ConfigChange::trust_changed`]) or a rotation of a client identity. For clients that
    /// hold one `Arc<ClientConfig>` and can swap it. The callback runs on the thread that
    /// applied the change: keep it short.
    pub fn subscribe(
        &self,
        callback: impl Fn(&ConfigChange<ClientConfig>) + Send + Sync + 'static,
    ) {
        lock(&self.inner.subscribers).push(Arc::new(callback));
    }
}
