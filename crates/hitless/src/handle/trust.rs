//! [`ReloadingTrust`]: a trust bundle (CAs and CRLs), reloaded from its files or pushed by a
//! provider.

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;

use super::{Options, Reload, Shared};
use crate::detect::{self, Detection};
use crate::snapshot::{Event, Snapshot, Status};
use crate::trust::{Trust, TrustLoader, TrustSource};
use crate::Error;

/// A trust bundle (CA certificates and CRLs) that reloads itself from disk, or that a provider
/// pushes ([`ReloadingTrust::pushed`]).
///
/// Give it to [`ServerConfigBuilder::client_trust`](crate::ServerConfigBuilder::client_trust)
/// or [`ReloadingClientConfig::builder`](crate::ReloadingClientConfig::builder): every change
/// then builds new configurations, and no session made under the previous trust resumes.
///
/// ```no_run
/// use hitless::{ReloadingTrust, TrustSource};
/// # fn main() -> Result<(), hitless::Error> {
/// let trust = ReloadingTrust::builder(TrustSource::cas(["ca.pem"]).with_crls(["crl.pem"])).build()?;
/// println!("{} CAs", trust.current().map_or(0, |t| t.value.cas().len()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReloadingTrust {
    shared: Arc<Shared<TrustLoader>>,
}

impl std::fmt::Debug for ReloadingTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTrust")
            .field("name", &self.shared.reloading.name)
            .field("generation", &self.status().generation)
            .finish()
    }
}

/// Builds a [`ReloadingTrust`]; see each method for its default.
#[must_use]
pub struct TrustBuilder {
    source: TrustSource,
    options: Options,
    provider: Option<Arc<CryptoProvider>>,
}

impl TrustBuilder {
    /// A name for logs, status and events (default: the first CA file's path).
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
    /// short). The same as [`ReloadingTrust::subscribe`], from the first load on.
    pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.options.add_callback(Arc::new(callback));
        self
    }

    /// Announce "expiring soon" when less than this fraction of a lifetime is left (default
    /// [`Status::DEFAULT_EXPIRING_SOON`]; a trust bundle has no validity of its own, so this
    /// only matters for identities).
    pub fn expiring_soon(mut self, fraction: f64) -> Self {
        self.options.set_expiring_soon(fraction);
        self
    }

    /// Start even if the first load fails (a sidecar agent has not written yet): nothing is
    /// trusted until the first good write (default: `build` fails with the file and the
    /// reason).
    pub fn allow_empty_start(mut self, allow: bool) -> Self {
        self.options.set_allow_empty(allow);
        self
    }

    /// The rustls crypto provider of the verifiers and of the CRL signature checks (default:
    /// the process default if one is installed, else the one compiled in by the crate's
    /// features: aws-lc-rs, else ring). A [`ReloadingServerConfig`](crate::ReloadingServerConfig)
    /// or [`ReloadingClientConfig`](crate::ReloadingClientConfig) following this trust uses
    /// this provider unless given its own.
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Loads the trust once (failing with the file and the reason if it is not good, unless
    /// `allow_empty_start`), then starts change detection.
    pub fn build(self) -> Result<ReloadingTrust, Error> {
        let default_name = self
            .source
            .ca_files
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "trust".into());
        let loader = TrustLoader::new(self.source, self.provider)?;
        Ok(ReloadingTrust {
            // The trust is checked from `ReloadingServerConfig::current()`, on accept loops: a
            // slow reload must not stop them.
            shared: Shared::start(
                loader,
                default_name,
                self.options,
                detect::LoadOn::OneShotThread,
            )?,
        })
    }
}

impl ReloadingTrust {
    /// Starts building a trust bundle read from `source`.
    pub fn builder(source: TrustSource) -> TrustBuilder {
        TrustBuilder {
            source,
            options: Options::default(),
            provider: None,
        }
    }

    pub(super) fn from_shared(shared: Arc<Shared<TrustLoader>>) -> Self {
        ReloadingTrust { shared }
    }

    /// The value being served now, with its generation and load time (`None` only when
    /// started with `allow_empty_start` and nothing good was written yet).
    pub fn current(&self) -> Option<Arc<Snapshot<Trust>>> {
        self.shared.current()
    }

    /// Generation, load time, last check, last error and counters.
    pub fn status(&self) -> Status {
        self.shared.status()
    }

    /// Reads the files now. A read that fails is retried once after the quiet period (a
    /// writer may be between two files) before the error is recorded and returned; the last
    /// good value keeps being served either way. A pushed trust has no files:
    /// `Ok(Reload::Unchanged)`.
    pub fn reload(&self) -> Result<Reload, Error> {
        self.shared.reload()
    }

    /// Announces "expiring soon"/"expired" now if due (a trust bundle has no validity of its
    /// own: nothing to announce today; kept for symmetry with identities).
    pub fn check_expiry(&self) {
        self.shared.check_expiry();
    }

    /// Calls `callback` on every later [`Event`] (on the thread that did the reload: keep it
    /// short).
    pub fn subscribe(&self, callback: impl Fn(&Event) + Send + Sync + 'static) {
        self.shared.subscribe(Arc::new(callback));
    }

    /// The crypto provider the trust's verifiers are built with (the one given to
    /// [`TrustBuilder::crypto_provider`], else the default one). For a rustls configuration
    /// built by hand around
    /// [`ReloadingServerCertVerifier`](crate::ReloadingServerCertVerifier), so that the
    /// configuration and its verifier agree.
    pub fn crypto_provider(&self) -> &Arc<CryptoProvider> {
        &self.shared.reloading.loader().provider
    }

    /// The current snapshot, without an `Arc` clone (the handshake path: one atomic load).
    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Option<Arc<Snapshot<Trust>>>> {
        self.shared.load()
    }

    /// In `on-handshake` mode, the at-most-once-per-TTL look at the files (never waits).
    pub(crate) fn check_on_handshake(&self) {
        self.shared.check_on_handshake();
    }
}
