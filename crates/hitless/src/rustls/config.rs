//! Whole rustls configurations that follow a reloading trust bundle.
//!
//! Why swap whole configurations rather than only a verifier: a server's CertificateRequest
//! names the CAs it trusts through `ClientCertVerifier::root_hint_subjects`, which returns a
//! borrowed slice, so a verifier that swaps its inner verifier cannot hand out the new names.
//! And resumption (TLS 1.2 session ids, TLS 1.3 PSK) skips certificate verification entirely,
//! so sessions made under the old trust must not be resumable under the new one.
//!
//! So when the trust changes, a new `ServerConfig`/`ClientConfig` is built with a verifier for
//! the new trust *and a new, empty session cache* (rustls gives each built config its own), and
//! swapped in. Each new connection takes the configuration current at that moment: one atomic
//! load. Identity rotations do not rebuild anything (the certificate resolver follows the
//! identity by itself), so resumption keeps working across them. If `configure` installs a
//! ticketer, build it inside the closure so each trust generation gets fresh ticket keys.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::ResolvesServerCert;
use rustls::{ClientConfig, ServerConfig};

use crate::credential::{ReloadingIdentity, ReloadingTrust};
use crate::rustls::client::ClientIdentityResolver;
use crate::snapshot::{lock, Event};
use crate::Error;

type Configure<C> = Arc<dyn Fn(&mut C) + Send + Sync>;
type TrustCallback = Arc<dyn Fn(u64) + Send + Sync>;
/// Builds a configuration for the current trust.
type Build<C> = Box<dyn Fn(Option<&ReloadingTrust>) -> Result<C, Error> + Send + Sync>;

struct Inner<C> {
    current: ArcSwap<C>,
    trust: Option<ReloadingTrust>,
    trust_generation: AtomicU64,
    build: Build<C>,
    on_trust_change: std::sync::Mutex<Vec<TrustCallback>>,
    /// Serialises rebuilds (trust and identity detectors run on different threads).
    rebuild_lock: std::sync::Mutex<()>,
}

impl<C: Send + Sync + 'static> Inner<C> {
    fn start(trust: Option<ReloadingTrust>, build: Build<C>) -> Result<Arc<Self>, Error> {
        let first = build(trust.as_ref())?;
        let generation = trust.as_ref().map_or(0, |t| t.status().generation);
        let inner = Arc::new(Inner {
            current: ArcSwap::from_pointee(first),
            trust: trust.clone(),
            trust_generation: AtomicU64::new(generation),
            build,
            on_trust_change: std::sync::Mutex::default(),
            rebuild_lock: std::sync::Mutex::default(),
        });
        if let Some(trust) = trust {
            let weak: Weak<Inner<C>> = Arc::downgrade(&inner);
            trust.subscribe(move |event| {
                if let Event::Reloaded { generation, .. } = event {
                    if let Some(inner) = weak.upgrade() {
                        inner.rebuild(*generation);
                    }
                }
            });
        }
        Ok(inner)
    }

    /// Subscribes `subscribe` (an identity's event source): every rotation starts a new
    /// session cache, so that no peer resumes into a session made with the old certificate.
    fn renew_sessions_on(self: &Arc<Self>, subscribe: impl FnOnce(crate::EventCallback)) {
        let weak: Weak<Inner<C>> = Arc::downgrade(self);
        subscribe(Arc::new(move |event| {
            if let Event::Reloaded { generation, .. } = event {
                if *generation > 1 {
                    if let Some(inner) = weak.upgrade() {
                        inner.renew_sessions();
                    }
                }
            }
        }));
    }

    fn renew_sessions(&self) {
        let _serialise = lock(&self.rebuild_lock);
        match (self.build)(self.trust.as_ref()) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                tracing::debug!("identity rotated: new session cache in use");
            }
            Err(e) => tracing::error!("cannot rebuild the TLS configuration: {e}"),
        }
    }

    fn rebuild(&self, generation: u64) {
        let _serialise = lock(&self.rebuild_lock);
        match (self.build)(self.trust.as_ref()) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                self.trust_generation.store(generation, Ordering::SeqCst);
                tracing::info!(
                    trust_generation = generation,
                    "trust changed: new TLS configuration and session cache in use"
                );
                let callbacks = lock(&self.on_trust_change).clone();
                for c in callbacks {
                    c(generation);
                }
            }
            Err(e) => tracing::error!("cannot rebuild the TLS configuration for new trust: {e}"),
        }
    }
}

fn current_trust(
    trust: Option<&ReloadingTrust>,
) -> Result<Option<Arc<crate::Snapshot<crate::Trust>>>, Error> {
    match trust {
        None => Ok(None),
        Some(t) => t.current().map(Some).ok_or_else(|| Error::NotLoaded {
            name: t.status().name,
        }),
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
        let build = Box::new(move |trust: Option<&ReloadingTrust>| {
            let builder = ServerConfig::builder();
            let mut config = match current_trust(trust)? {
                Some(t) => builder
                    .with_client_cert_verifier(t.value.client_verifier().clone())
                    .with_cert_resolver(resolver.clone()),
                None => builder
                    .with_no_client_auth()
                    .with_cert_resolver(resolver.clone()),
            };
            if let Some(f) = &configure {
                f(&mut config);
            }
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
        let build = Box::new(move |trust: Option<&ReloadingTrust>| {
            let Some(t) = current_trust(trust)? else {
                return Err(Error::NotLoaded {
                    name: "trust".into(),
                });
            };
            let builder =
                ClientConfig::builder().with_webpki_verifier(t.value.server_verifier().clone());
            let mut config = match &resolver {
                Some(r) => builder.with_client_cert_resolver(r.clone()),
                None => builder.with_no_client_auth(),
            };
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
