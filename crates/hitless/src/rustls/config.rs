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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use rustls::client::{ClientSessionMemoryCache, Resumption};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, ServerConfig};

use crate::credential::{ReloadingIdentity, ReloadingTrust};
use crate::rustls::client::{ClientIdentityResolver, ReloadingServerVerifier};
use crate::rustls::sessions::{Binding, BoundClientSessions, BoundServerSessions, BoundTickets};
use crate::rustls::verify::ClientVerifierAtHandshake;
use crate::snapshot::{lock, Event, Snapshot};
use crate::trust::Trust;
use crate::Error;

type Configure<C> = Arc<dyn Fn(&mut C) + Send + Sync>;
type TrustCallback = Arc<dyn Fn(u64) + Send + Sync>;
type ConfigCallback<C> = Arc<dyn Fn(&Arc<C>) + Send + Sync>;
/// Builds a configuration for the current trust.
type Build<C> = Box<dyn Fn(&BuildContext<'_>) -> Result<C, Error> + Send + Sync>;

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

struct Inner<C> {
    current: ArcSwap<C>,
    trust: Option<ReloadingTrust>,
    /// The trust generation `current` was built from.
    trust_generation: AtomicU64,
    /// Bumped by every rotation of an identity whose sessions must not resume.
    epoch: Arc<AtomicU64>,
    build: Build<C>,
    on_trust_change: std::sync::Mutex<Vec<TrustCallback>>,
    on_config: std::sync::Mutex<Vec<ConfigCallback<C>>>,
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
            on_trust_change: std::sync::Mutex::default(),
            on_config: std::sync::Mutex::default(),
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
    fn renew_sessions_on(self: &Arc<Self>, subscribe: impl FnOnce(crate::EventCallback)) {
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
                let callbacks = lock(&self.on_config).clone();
                for c in callbacks {
                    c(&config);
                }
                let previous = self.trust_generation.swap(generation, Ordering::SeqCst);
                if previous != generation {
                    tracing::info!(
                        trust_generation = generation,
                        "trust changed: new TLS configuration in use; earlier sessions no \
                         longer resume"
                    );
                    let callbacks = lock(&self.on_trust_change).clone();
                    for c in callbacks {
                        c(generation);
                    }
                }
            }
            // The configuration in use stays; its verifier already takes the verdict from the
            // current trust, and its sessions no longer resume (their binding is stale).
            Err(e) => tracing::error!("cannot rebuild the TLS configuration: {e}"),
        }
    }
}

/// A `ServerConfig` that is rebuilt (new client verifier, new session cache) whenever the
/// client trust bundle or its CRLs change.
///
/// ```no_run
/// use hitless::{IdentitySource, ReloadingIdentity, ReloadingServerConfig, ReloadingTrust, TrustSource};
/// # fn main() -> Result<(), hitless::Error> {
/// let identity = ReloadingIdentity::builder(IdentitySource::bundle("identity.pem")).build()?;
/// let trust = ReloadingTrust::builder(TrustSource::cas(["clients-ca.pem"])).build()?;
/// let configs = ReloadingServerConfig::builder(identity.resolver())
///     .client_trust(trust)
///     .configure(|c| c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()])
///     .build()?;
/// // per accepted connection:
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

/// Builds a [`ReloadingServerConfig`].
#[must_use]
pub struct ServerConfigBuilder {
    resolver: Arc<dyn ResolvesServerCert>,
    trust: Option<ReloadingTrust>,
    configure: Option<Configure<ServerConfig>>,
    renew_on: Vec<Box<dyn FnOnce(crate::EventCallback) + Send>>,
}

impl ServerConfigBuilder {
    /// Require client certificates chaining to this trust (mutual TLS). Without it, clients
    /// are not authenticated.
    pub fn client_trust(mut self, trust: ReloadingTrust) -> Self {
        self.trust = Some(trust);
        self
    }

    /// Adjusts every built configuration (ALPN, protocol versions, ticketer, ...).
    pub fn configure(mut self, f: impl Fn(&mut ServerConfig) + Send + Sync + 'static) -> Self {
        self.configure = Some(Arc::new(f));
        self
    }

    /// Start a new session cache whenever this identity rotates, so that no client resumes
    /// (TLS 1.3 PSK, TLS 1.2 session) into a session made with the old certificate, and every
    /// handshake after a rotation presents the new one. Costs one full handshake per client
    /// per rotation. Without it, a client that keeps resuming keeps the session (and the view
    /// of the certificate) it started with, which TLS allows.
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
        let build: Build<ServerConfig> = Box::new(move |context: &BuildContext<'_>| {
            let builder = ServerConfig::builder();
            let mut config = match context.trust {
                // The verdict is taken from the trust current when the certificate is
                // verified, not from `snapshot` (see `verify.rs`).
                Some((handle, snapshot)) => builder
                    .with_client_cert_verifier(Arc::new(ClientVerifierAtHandshake::new(
                        handle.clone(),
                        snapshot,
                    )))
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
    /// Starts building a configuration serving certificates from `resolver` (e.g.
    /// [`ReloadingIdentity::resolver`]).
    pub fn builder(resolver: Arc<dyn ResolvesServerCert>) -> ServerConfigBuilder {
        ServerConfigBuilder {
            resolver,
            trust: None,
            configure: None,
            renew_on: Vec::new(),
        }
    }

    /// The configuration to accept a new connection with: one atomic load (plus, in
    /// `on-handshake` mode, the trust's at-most-once-per-TTL check).
    pub fn current(&self) -> Arc<ServerConfig> {
        if let Some(check) = self
            .inner
            .trust
            .as_ref()
            .and_then(|t| t.shared.on_handshake.as_ref())
        {
            check.maybe_check();
        }
        self.inner.current.load_full()
    }

    /// The generation of the client trust the current configuration was built from (0 without
    /// client trust).
    pub fn trust_generation(&self) -> u64 {
        self.inner.trust_generation.load(Ordering::SeqCst)
    }

    /// Calls `callback(trust_generation)` after every trust change has been applied.
    pub fn on_trust_change(&self, callback: impl Fn(u64) + Send + Sync + 'static) {
        lock(&self.inner.on_trust_change).push(Arc::new(callback));
    }

    /// Calls `callback` with every new configuration, after it is in use (a trust change, or a
    /// rotation followed with [`new_sessions_on_rotation`](ServerConfigBuilder::new_sessions_on_rotation)).
    /// For frameworks that hold one `Arc<ServerConfig>` and can swap it, e.g. axum-server's
    /// `RustlsConfig::reload_from_config`. The callback runs on the thread that applied the
    /// change: keep it short.
    pub fn on_config(&self, callback: impl Fn(&Arc<ServerConfig>) + Send + Sync + 'static) {
        lock(&self.inner.on_config).push(Arc::new(callback));
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
            .client_verifier()
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

    /// Builds the first configuration and follows trust changes.
    pub fn build(self) -> Result<ReloadingClientConfig, Error> {
        let identities = self.identities.clone();
        let resolver = (!self.identities.is_empty())
            .then(|| Arc::new(ClientIdentityResolver::new(self.identities)));
        let configure = self.configure;
        let build: Build<ClientConfig> = Box::new(move |context: &BuildContext<'_>| {
            let Some((handle, _)) = context.trust else {
                return Err(Error::NotLoaded {
                    name: "trust".into(),
                });
            };
            // The verdict on the server's certificate is taken from the trust current when it
            // is verified.
            let builder = ClientConfig::builder()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ReloadingServerVerifier::new(
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
    pub fn builder(trust: ReloadingTrust) -> ClientConfigBuilder {
        ClientConfigBuilder {
            trust,
            identities: Vec::new(),
            configure: None,
        }
    }

    /// The configuration for a new connection: one atomic load (plus, in `on-handshake` mode,
    /// the trust's at-most-once-per-TTL check).
    pub fn current(&self) -> Arc<ClientConfig> {
        if let Some(check) = self
            .inner
            .trust
            .as_ref()
            .and_then(|t| t.shared.on_handshake.as_ref())
        {
            check.maybe_check();
        }
        self.inner.current.load_full()
    }
}
