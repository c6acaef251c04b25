//! [`ReloadingIdentity`]: one identity (chain + key), reloaded from its files or pushed by a
//! provider.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use super::{Options, Reload, Shared};
use crate::detect::{self, Detection};
use crate::identity::{default_provider, Identity, IdentityLoader, Role, Validation};
use crate::snapshot::{Event, Snapshot, Status};
use crate::source::IdentitySource;
use crate::Error;

/// A server (or client) identity that reloads itself from disk, or that a provider pushes
/// ([`ReloadingIdentity::pushed`]).
///
/// Build it with [`ReloadingIdentity::builder`], then serve it with
/// [`ReloadingServerConfig::builder`](crate::ReloadingServerConfig::builder) (or present it
/// with [`ClientConfigBuilder::identities`](crate::ClientConfigBuilder::identities)).
/// [`resolver`](Self::resolver) plugs it into a rustls configuration built by hand, where only
/// the identity reloads.
///
/// ```no_run
/// use hitless::{IdentitySource, ReloadingIdentity, ReloadingServerConfig};
///
/// # fn main() -> Result<(), hitless::Error> {
/// let identity = ReloadingIdentity::builder(IdentitySource::pair("server.crt", "server.key")).build()?;
/// let config = ReloadingServerConfig::builder(&identity).build()?;
/// # let _ = config; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReloadingIdentity {
    shared: Arc<Shared<IdentityLoader>>,
}

impl std::fmt::Debug for ReloadingIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingIdentity")
            .field("name", &self.shared.reloading.name)
            .field("generation", &self.status().generation)
            .finish()
    }
}

/// Builds a [`ReloadingIdentity`]; see each method for its default.
#[must_use]
pub struct IdentityBuilder {
    source: IdentitySource,
    options: Options,
    accept_expired: bool,
    role: Role,
    provider: Option<Arc<CryptoProvider>>,
}

impl IdentityBuilder {
    /// A name for logs, status and events (default: the certificate file's path).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.set_name(name.into());
        self
    }

    /// How changes are noticed (default [`Detection::Watch`]; intervals are capped at
    /// [`Detection::MAX_INTERVAL`]).
    pub fn detection(mut self, detection: Detection) -> Self {
        self.options.set_detection(detection);
        self
    }

    /// How long an inconsistent read (a writer still busy) waits before it is retried and, if
    /// it still fails, reported (default [`Detection::DEFAULT_QUIET_PERIOD`], at most
    /// [`Detection::MAX_QUIET_PERIOD`]).
    pub fn quiet_period(mut self, quiet: Duration) -> Self {
        self.options.set_quiet(quiet);
        self
    }

    /// Calls `callback` on every [`Event`] (from the thread that did the reload: keep it
    /// short). The same as [`ReloadingIdentity::subscribe`], from the first load on.
    pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.options.add_callback(Arc::new(callback));
        self
    }

    /// Announce "expiring soon" when less than this fraction of the certificate's lifetime is
    /// left (default [`Status::DEFAULT_EXPIRING_SOON`], a third, what agents renew at).
    pub fn expiring_soon(mut self, fraction: f64) -> Self {
        self.options.set_expiring_soon(fraction);
        self
    }

    /// Start even if the first load fails (a sidecar agent has not written yet): nothing is
    /// served until the first good write (default: `build` fails with the file and the
    /// reason).
    pub fn allow_empty_start(mut self, allow: bool) -> Self {
        self.options.set_allow_empty(allow);
        self
    }

    /// Accept a leaf (and intermediates) expired or not yet valid (default: refuse them, keep
    /// the last good identity). Peers will refuse such a certificate; this exists for tests and
    /// odd clocks.
    pub fn accept_expired(mut self, accept: bool) -> Self {
        self.accept_expired = accept;
        self
    }

    /// What the identity is presented for, which decides the extendedKeyUsage its chain must
    /// allow: [`Role::Server`] (`serverAuth`) for a server certificate, [`Role::Client`]
    /// (`clientAuth`) for a client certificate in mutual TLS. Default [`Role::Any`]: either.
    /// A file whose chain does not allow the role is refused like an expired one.
    ///
    /// ```no_run
    /// use hitless::{IdentitySource, ReloadingIdentity, Role};
    /// # fn main() -> Result<(), hitless::Error> {
    /// let client = ReloadingIdentity::builder(IdentitySource::bundle("client.pem"))
    ///     .role(Role::Client)
    ///     .build()?;
    /// # let _ = client; Ok(()) }
    /// ```
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// The rustls crypto provider used to load keys and verify the chain's signatures
    /// (default: the process default if one is installed, else the one compiled in by the
    /// crate's features: aws-lc-rs, else ring). Give the same provider to the configuration.
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Loads the identity once (failing with the file and the reason if it is not good, unless
    /// [`allow_empty_start`](Self::allow_empty_start)), then starts change detection.
    pub fn build(self) -> Result<ReloadingIdentity, Error> {
        let default_name = self.source.cert_path().display().to_string();
        let loader = IdentityLoader::new(
            self.source,
            Validation {
                accept_expired: self.accept_expired,
                role: self.role,
                provider: self.provider.map_or_else(default_provider, Ok)?,
            },
        );
        Ok(ReloadingIdentity {
            // The identity is checked by its resolver, on the handshake's own task.
            shared: Shared::start(loader, default_name, self.options, detect::LoadOn::Caller)?,
        })
    }
}

impl ReloadingIdentity {
    /// Starts building an identity read from `source`.
    pub fn builder(source: IdentitySource) -> IdentityBuilder {
        IdentityBuilder {
            source,
            options: Options::default(),
            accept_expired: false,
            role: Role::Any,
            provider: None,
        }
    }

    pub(super) fn from_shared(shared: Arc<Shared<IdentityLoader>>) -> Self {
        ReloadingIdentity { shared }
    }

    /// The value being served now, with its generation and load time (`None` only when
    /// started with `allow_empty_start` and nothing good was written yet).
    pub fn current(&self) -> Option<Arc<Snapshot<Identity>>> {
        self.shared.current()
    }

    /// Generation, load time, last check, last error and counters.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Reads the files now. A read that fails is retried once after the quiet period (a
    /// writer may be between two files) before the error is recorded and returned; the last
    /// good value keeps being served either way. A pushed identity has no files:
    /// `Ok(Reload::Unchanged)`.
    pub fn reload(&self) -> Result<Reload, Error> {
        self.shared.reload()
    }

    /// Announces "expiring soon"/"expired" now if due (the detector thread does this by itself
    /// in `watch` and `poll` modes, a publisher on each value it pushes; call it periodically
    /// otherwise).
    pub fn check_expiry(&self) {
        self.shared.check_expiry();
    }

    /// Calls `callback` on every later [`Event`] (on the thread that did the reload: keep it
    /// short).
    pub fn subscribe(&self, callback: impl Fn(&Event) + Send + Sync + 'static) {
        self.shared.subscribe(Arc::new(callback));
    }

    /// The crypto provider that loads the identity's key and checks its chain (the one given
    /// to [`IdentityBuilder::crypto_provider`], else the default one). For a rustls
    /// configuration built by hand around [`resolver`](Self::resolver), so that the
    /// configuration and the key agree.
    pub fn crypto_provider(&self) -> &Arc<CryptoProvider> {
        &self.shared.reloading.loader().rules.provider
    }

    /// The rustls chain and key being served now: one atomic load and an `Arc` clone.
    pub fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.shared
            .load()
            .as_ref()
            .map(|s| s.value.certified_key().clone())
    }

    /// A rustls server certificate resolver serving this identity, for a rustls configuration
    /// built by hand (only the identity then reloads: prefer
    /// [`ReloadingServerConfig::builder`](crate::ReloadingServerConfig::builder)).
    pub fn resolver(&self) -> Arc<crate::IdentityResolver> {
        Arc::new(crate::IdentityResolver::new(self.clone()))
    }

    /// The current snapshot, without an `Arc` clone (the handshake path: one atomic load).
    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Option<Arc<Snapshot<Identity>>>> {
        self.shared.load()
    }

    /// In `on-handshake` mode, the at-most-once-per-TTL look at the files (never waits).
    pub(crate) fn check_on_handshake(&self) {
        self.shared.check_on_handshake();
    }
}
