//! The handles an application holds: a reloading identity, built once, cloned freely.
//!
//! A handle ties together a credential's source, its last-known-good snapshot and its detector
//! thread. Cloning a handle is cheap and every clone sees the same snapshot. The detector
//! thread runs as long as any clone (or a resolver made from it) is alive, and is stopped and
//! joined when the last one is dropped.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use crate::detect::{self, Detection, Detector, Target, DEFAULT_QUIET_PERIOD};
use crate::identity::{default_provider, Identity, Role, Validation};
use crate::reload::{Attempt, Load, Reloading};
use crate::snapshot::{lock, Event, EventCallback, Events, Snapshot, Status};
use crate::source::{files, pem, IdentitySource};
use crate::trust::{Trust, TrustLoader, TrustSource};
use crate::Error;

/// Reads and validates an identity from its source.
pub(crate) struct IdentityLoader {
    source: IdentitySource,
    rules: Validation,
    /// Files already reported as having PEM blocks run together.
    warned_run_together: Mutex<HashSet<PathBuf>>,
}

impl IdentityLoader {
    pub(crate) fn new(source: IdentitySource, rules: Validation) -> Self {
        IdentityLoader {
            source,
            rules,
            warned_run_together: Mutex::default(),
        }
    }

    /// One read and validation, as a reload does it (for [`Identity::load`]).
    pub(crate) fn load_once(&self) -> Result<Identity, Error> {
        let paths = self.source.paths();
        let files = files::read_stable(&paths)?;
        self.load(&files)
    }

    fn note_run_together(&self, path: &std::path::Path, run_together: bool) {
        if run_together && lock(&self.warned_run_together).insert(path.to_owned()) {
            tracing::warn!(
                file = %path.display(),
                "PEM blocks are run together on one line (a template without newlines between \
                 blocks, e.g. {{{{ .Data.certificate }}}}{{{{ .Data.private_key }}}}); read \
                 correctly, but OpenSSL and other tools will refuse this file: put each block on \
                 its own line in the template"
            );
        }
    }
}

impl Load for IdentityLoader {
    type Value = Identity;

    fn paths(&self) -> Vec<PathBuf> {
        self.source
            .paths()
            .into_iter()
            .map(|p| p.to_path_buf())
            .collect()
    }

    fn load(&self, files: &files::Snapshot) -> Result<Identity, Error> {
        if let IdentitySource::Pkcs12 { path, password } = &self.source {
            let password = password.resolve(path, files)?;
            let (certs, key) =
                crate::source::pkcs12::identity(path, files.contents(path), &password)?;
            return Identity::from_der(path, &certs, path, key, &self.rules);
        }
        let cert_path = self.source.cert_path();
        let key_path = self.source.key_path();
        let certs = pem::parse(cert_path, files.contents(cert_path))?;
        self.note_run_together(cert_path, certs.run_together());
        let identity = if cert_path == key_path {
            Identity::from_sections(cert_path, &certs, key_path, &certs, &self.rules)?
        } else {
            let keys = pem::parse(key_path, files.contents(key_path))?;
            self.note_run_together(key_path, keys.run_together());
            Identity::from_sections(cert_path, &certs, key_path, &keys, &self.rules)?
        };
        Ok(identity)
    }

    fn fingerprint(value: &Identity) -> String {
        value.leaf().fingerprint.clone()
    }

    fn secret_files(&self) -> Vec<(PathBuf, &'static str)> {
        match &self.source {
            IdentitySource::Pkcs12 { path, password } => {
                let mut secrets = vec![(path.clone(), "PKCS#12 file (it holds a private key)")];
                secrets.extend(password.path().map(|p| (p.to_path_buf(), "password file")));
                secrets
            }
            source => vec![(source.key_path().to_path_buf(), "private key file")],
        }
    }

    fn writers_decide(&self) -> &'static str {
        "what this identity presents"
    }

    fn validity(value: &Identity) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
        Some((value.leaf().not_before, value.leaf().not_after))
    }

    fn describe(value: &Identity) -> String {
        let leaf = value.leaf();
        format!(
            "identity subject={} serial={} not_after={} key={}",
            leaf.subject,
            leaf.serial,
            crate::identity::rfc3339(leaf.not_after),
            leaf.key_type
        )
    }
}

/// What every handle shares: the reloading credential, its quiet period, its detector.
pub(crate) struct Shared<L: Load> {
    pub(crate) reloading: Arc<Reloading<L>>,
    quiet: Duration,
    /// `on-handshake` mode: the inline check the handshake path calls.
    pub(crate) on_handshake: Option<detect::OnHandshake>,
    _detector: Option<Detector>,
}

/// Options common to every reloading credential.
pub(crate) struct Options {
    pub(crate) name: Option<String>,
    pub(crate) detection: Detection,
    pub(crate) quiet: Duration,
    pub(crate) callbacks: Vec<EventCallback>,
    pub(crate) allow_empty: bool,
    pub(crate) expiring_soon: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: None,
            detection: Detection::default(),
            quiet: DEFAULT_QUIET_PERIOD,
            callbacks: Vec::new(),
            allow_empty: false,
            expiring_soon: crate::reload::DEFAULT_EXPIRING_SOON,
        }
    }
}

impl<L: Load> Shared<L> {
    /// Loads once (failing unless `allow_empty`), then starts the detector (`load_on`: where
    /// an `on-handshake` check loads a change it finds).
    pub(crate) fn start(
        loader: L,
        default_name: String,
        options: Options,
        load_on: detect::LoadOn,
    ) -> Result<Arc<Self>, Error> {
        let name = options.name.clone().unwrap_or(default_name);
        let reloading = new_reloading(name.clone(), loader, &options);
        if let Attempt::Failed { error, .. } = reloading.attempt(true) {
            if !options.allow_empty {
                return Err(error);
            }
        }
        let target: Arc<dyn Target> = reloading.clone();
        let on_handshake = match options.detection {
            Detection::OnHandshake { ttl } => Some(detect::OnHandshake::new(
                ttl,
                load_on,
                vec![Arc::downgrade(&target)],
            )),
            _ => None,
        };
        let detector = detect::spawn(
            options.detection,
            options.quiet,
            vec![Arc::downgrade(&target)],
            format!("hitless-detect {name}"),
        )?;
        Ok(Arc::new(Shared {
            reloading,
            quiet: options.quiet,
            on_handshake,
            _detector: detector,
        }))
    }

    pub(crate) fn current(&self) -> Option<Arc<Snapshot<L::Value>>> {
        self.reloading.current.load_full()
    }

    pub(crate) fn reload(&self) -> Result<Reload, Error> {
        reload_now(&self.reloading, self.quiet)
    }
}

/// A reloading credential with the options' name, subscribers and expiry threshold.
fn new_reloading<L: Load>(name: String, loader: L, options: &Options) -> Arc<Reloading<L>> {
    let events = Events::default();
    for c in &options.callbacks {
        events.subscribe(c.clone());
    }
    let mut reloading = Reloading::new(name, loader, options.detection.name().to_string(), events);
    reloading.expiring_soon = options.expiring_soon;
    Arc::new(reloading)
}

/// One attempt; if it fails (a writer may be between two files), one more after the quiet
/// period, which reports.
fn reload_now<L: Load>(reloading: &Reloading<L>, quiet: Duration) -> Result<Reload, Error> {
    let mut outcome = reloading.attempt(false);
    if let Attempt::Failed { .. } = outcome {
        std::thread::sleep(quiet);
        outcome = reloading.attempt(true);
    }
    match outcome {
        Attempt::Unchanged => Ok(Reload::Unchanged),
        Attempt::Reloaded(generation) => Ok(Reload::Reloaded { generation }),
        Attempt::Failed { error, .. } => Err(error),
    }
}

/// Builder methods shared by every credential kind.
macro_rules! common_builder_methods {
    () => {
        /// A name for logs, status and events (default: the first file's path).
        pub fn name(mut self, name: impl Into<String>) -> Self {
            self.options.name = Some(name.into());
            self
        }

        /// How changes are noticed (default [`Detection::Watch`]; intervals are capped at a
        /// year).
        pub fn detection(mut self, detection: Detection) -> Self {
            self.options.detection = detection.capped();
            self
        }

        /// How long an inconsistent read (a writer still busy) waits before it is retried and,
        /// if it still fails, reported (default 200 ms; at most an hour).
        pub fn quiet_period(mut self, quiet: Duration) -> Self {
            self.options.quiet = quiet.min(detect::MAX_QUIET_PERIOD);
            self
        }

        /// Calls `callback` on every [`Event`] (from the detector thread: keep it short).
        pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
            self.options.callbacks.push(Arc::new(callback));
            self
        }

        /// Announce "expiring soon" when less than this fraction of the certificate's lifetime
        /// is left (default 1/3, what agents renew at).
        pub fn expiring_soon(mut self, fraction: f64) -> Self {
            self.options.expiring_soon = if fraction.is_finite() {
                fraction.clamp(0.0, 1.0)
            } else {
                crate::reload::DEFAULT_EXPIRING_SOON
            };
            self
        }

        /// Start even if the first load fails (a sidecar agent has not written yet): nothing is
        /// served until the first good write (default: `build` fails with the file and the
        /// reason).
        pub fn allow_empty_start(mut self, allow: bool) -> Self {
            self.options.allow_empty = allow;
            self
        }
    };
}

/// Handle methods shared by every credential kind.
macro_rules! common_handle_methods {
    ($value:ty) => {
        /// The value being served now, with its generation and load time (`None` only when
        /// started with `allow_empty_start` and nothing good was written yet).
        pub fn current(&self) -> Option<Arc<Snapshot<$value>>> {
            self.shared.current()
        }

        /// Generation, load time, last check and last error.
        pub fn status(&self) -> Status {
            self.shared.reloading.status()
        }

        /// Reads the files now. A read that fails is retried once after the quiet period (a
        /// writer may be between two files) before the error is recorded and returned; the
        /// last good value keeps being served either way.
        pub fn reload(&self) -> Result<Reload, Error> {
            self.shared.reload()
        }

        /// Announces "expiring soon"/"expired" now if due (the detector thread does this by
        /// itself in `watch` and `poll` modes; call it periodically in the other modes).
        pub fn check_expiry(&self) {
            let _ = self.shared.reloading.check_expiry();
        }

        /// Calls `callback` on every later [`Event`].
        pub fn subscribe(&self, callback: impl Fn(&Event) + Send + Sync + 'static) {
            self.shared.reloading.events.subscribe(Arc::new(callback));
        }
    };
}

/// A server (or client) identity that reloads itself from disk.
///
/// Build it with [`ReloadingIdentity::builder`]; hand [`ReloadingIdentity::resolver`] to rustls.
///
/// ```no_run
/// use std::sync::Arc;
/// use hitless::{IdentitySource, ReloadingIdentity};
///
/// # fn main() -> Result<(), hitless::Error> {
/// let identity = ReloadingIdentity::builder(IdentitySource::pair("server.crt", "server.key")).build()?;
/// let config = rustls::ServerConfig::builder()
///     .with_no_client_auth()
///     .with_cert_resolver(identity.resolver());
/// # let _ = config; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReloadingIdentity {
    pub(crate) shared: Arc<Shared<IdentityLoader>>,
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
    common_builder_methods!();

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

/// The outcome of a manual reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reload {
    /// The files hold what is already served.
    Unchanged,
    /// A new value is served, with this generation.
    Reloaded {
        /// The new generation.
        generation: u64,
    },
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

    common_handle_methods!(Identity);

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
            .reloading
            .current
            .load()
            .as_ref()
            .map(|s| s.value.certified_key().clone())
    }

    /// A rustls server certificate resolver serving this identity.
    pub fn resolver(&self) -> Arc<crate::rustls::IdentityResolver> {
        Arc::new(crate::rustls::IdentityResolver::new(self.clone()))
    }
}

/// A trust bundle (CA certificates and CRLs) that reloads itself from disk.
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
    pub(crate) shared: Arc<Shared<TrustLoader>>,
}

impl std::fmt::Debug for ReloadingTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTrust")
            .field("name", &self.shared.reloading.name)
            .field("generation", &self.status().generation)
            .finish()
    }
}

/// Builds a [`ReloadingTrust`].
#[must_use]
pub struct TrustBuilder {
    source: TrustSource,
    options: Options,
    provider: Option<Arc<CryptoProvider>>,
}

impl TrustBuilder {
    common_builder_methods!();

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

    common_handle_methods!(Trust);

    /// The crypto provider the trust's verifiers are built with (the one given to
    /// [`TrustBuilder::crypto_provider`], else the default one). For a rustls configuration
    /// built by hand around [`ReloadingServerVerifier`](crate::ReloadingServerVerifier), so
    /// that the configuration and its verifier agree.
    pub fn crypto_provider(&self) -> &Arc<CryptoProvider> {
        &self.shared.reloading.loader().provider
    }
}

/// Options of one identity in a [`ServerIdentities`] set.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct MemberOptions {
    /// A name for logs and status (default: the certificate file's path).
    pub name: Option<String>,
    /// Serve this identity for these names instead of its certificate's DNS names.
    pub names: Option<Vec<String>>,
    /// Serve this identity to clients without SNI or with an unknown name.
    pub default: bool,
}

impl MemberOptions {
    /// Options with this name.
    pub fn named(name: impl Into<String>) -> Self {
        MemberOptions {
            name: Some(name.into()),
            ..MemberOptions::default()
        }
    }

    /// Marks the identity as the default one.
    pub fn default_identity(mut self, default: bool) -> Self {
        self.default = default;
        self
    }

    /// Overrides the names the identity is served for.
    pub fn names(mut self, names: Vec<String>) -> Self {
        self.names = Some(names);
        self
    }
}

pub(crate) struct Member {
    reloading: Arc<Reloading<IdentityLoader>>,
    names: Option<Vec<String>>,
    is_default: bool,
}

pub(crate) struct SetInner {
    members: Vec<Member>,
    pub(crate) index: arc_swap::ArcSwap<crate::rustls::SniIndex>,
    rebuild_lock: Mutex<()>,
    quiet: Duration,
    /// `on-handshake` mode: the inline check the resolver calls.
    pub(crate) on_handshake: Option<detect::OnHandshake>,
    /// Set once, right after the set exists (the detector needs the members' weak handles).
    detector: std::sync::OnceLock<Option<Detector>>,
}

impl crate::rustls::MemberSnapshots for Vec<Member> {
    fn len(&self) -> usize {
        <[Member]>::len(self)
    }
    fn get(&self, i: usize) -> Option<&arc_swap::ArcSwapOption<Snapshot<Identity>>> {
        <[Member]>::get(self, i).map(|m| &m.reloading.current)
    }
}

impl SetInner {
    /// Rebuilds the name index if some member's names changed (a rotation that keeps its
    /// names changes nothing here: the resolver reads the member's new snapshot directly).
    fn rebuild(&self) {
        let _serialise = lock(&self.rebuild_lock);
        let names: Vec<(crate::rustls::Names, bool)> = self
            .members
            .iter()
            .map(|m| {
                let current = m.reloading.current.load();
                let names = crate::rustls::Names::of(
                    current.as_ref().map(|s| &s.value),
                    m.names.as_deref(),
                );
                (names, m.is_default)
            })
            .collect();
        let index = self.index.load();
        if index.names.len() == names.len()
            && index.names.iter().zip(&names).all(|(a, b)| *a == b.0)
        {
            return;
        }
        drop(index);
        self.index
            .store(Arc::new(crate::rustls::SniIndex::build(names)));
    }
}

/// Several server identities, each reloading on its own, served by SNI.
///
/// One broken identity never affects the others: each keeps its own last known good value.
/// Every identity is validated for [`Role::Server`](crate::Role::Server): a chain whose
/// extendedKeyUsage does not allow `serverAuth` is refused. All identities share one detector
/// thread. See [`SniResolver`](crate::SniResolver) for the selection rules.
///
/// ```no_run
/// use hitless::{IdentitySource, MemberOptions, ServerIdentities};
/// # fn main() -> Result<(), hitless::Error> {
/// let identities = ServerIdentities::builder()
///     .identity(IdentitySource::bundle("api.pem"), MemberOptions::named("api").default_identity(true))
///     .identity(IdentitySource::bundle("wildcard.pem"), MemberOptions::named("wildcard"))
///     .build()?;
/// let config = rustls::ServerConfig::builder()
///     .with_no_client_auth()
///     .with_cert_resolver(identities.resolver());
/// # let _ = config; Ok(()) }
/// ```
#[derive(Clone)]
pub struct ServerIdentities {
    pub(crate) inner: Arc<SetInner>,
}

impl std::fmt::Debug for ServerIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentities")
            .field("members", &self.inner.members.len())
            .finish()
    }
}

/// Builds [`ServerIdentities`].
#[must_use]
pub struct ServerIdentitiesBuilder {
    members: Vec<(IdentitySource, MemberOptions)>,
    options: Options,
    accept_expired: bool,
    provider: Option<Arc<CryptoProvider>>,
}

impl ServerIdentitiesBuilder {
    common_builder_methods!();

    /// Adds an identity; the order of calls is the selection order.
    pub fn identity(mut self, source: IdentitySource, options: MemberOptions) -> Self {
        self.members.push((source, options));
        self
    }

    /// Accept leaves (and intermediates) that are expired or not yet valid (default: refuse
    /// them).
    pub fn accept_expired(mut self, accept: bool) -> Self {
        self.accept_expired = accept;
        self
    }

    /// The rustls crypto provider used to load keys and verify the chains' signatures
    /// (default: as [`IdentityBuilder::crypto_provider`]).
    pub fn crypto_provider(mut self, provider: Arc<CryptoProvider>) -> Self {
        self.provider = Some(provider);
        self
    }

    /// Loads every identity (failing with the first bad one's file and reason, unless
    /// `allow_empty_start`), builds the index, then starts one detector for all.
    pub fn build(self) -> Result<ServerIdentities, Error> {
        if self.members.is_empty() {
            return Err(Error::NothingToLoad {
                what: "server identities",
                missing: "identity",
            });
        }
        let provider = self.provider.map_or_else(default_provider, Ok)?;
        let mut members = Vec::with_capacity(self.members.len());
        for (source, member) in self.members {
            let name = member
                .name
                .clone()
                .unwrap_or_else(|| source.cert_path().display().to_string());
            // Served by a server resolver: the chains must allow serverAuth.
            let loader = IdentityLoader::new(
                source,
                Validation {
                    accept_expired: self.accept_expired,
                    role: Role::Server,
                    provider: provider.clone(),
                },
            );
            let reloading = new_reloading(name, loader, &self.options);
            if let Attempt::Failed { error, .. } = reloading.attempt(true) {
                if !self.options.allow_empty {
                    return Err(error);
                }
            }
            members.push(Member {
                reloading,
                names: member.names,
                is_default: member.default,
            });
        }
        let targets: Vec<std::sync::Weak<dyn Target>> = members
            .iter()
            .map(|m| {
                let t: Arc<dyn Target> = m.reloading.clone();
                Arc::downgrade(&t)
            })
            .collect();
        let on_handshake = match self.options.detection {
            Detection::OnHandshake { ttl } => Some(detect::OnHandshake::new(
                ttl,
                detect::LoadOn::Caller,
                targets.clone(),
            )),
            _ => None,
        };
        let inner = Arc::new(SetInner {
            on_handshake,
            members,
            index: arc_swap::ArcSwap::from_pointee(crate::rustls::SniIndex::default()),
            rebuild_lock: Mutex::new(()),
            quiet: self.options.quiet,
            detector: std::sync::OnceLock::new(),
        });
        // Any member's reload rebuilds the index (on the detector thread, off the handshake
        // path). Weak: the subscription must not keep the set alive.
        let weak = Arc::downgrade(&inner);
        for m in &inner.members {
            let weak = weak.clone();
            m.reloading.events.subscribe(Arc::new(move |event| {
                if let Event::Reloaded { .. } = event {
                    if let Some(inner) = weak.upgrade() {
                        inner.rebuild();
                    }
                }
            }));
        }
        inner.rebuild();
        let detector = detect::spawn(
            self.options.detection,
            self.options.quiet,
            targets,
            "hitless-detect identities".into(),
        )?;
        let _ = inner.detector.set(detector);
        Ok(ServerIdentities { inner })
    }
}

impl ServerIdentities {
    /// Starts building a set of identities.
    pub fn builder() -> ServerIdentitiesBuilder {
        ServerIdentitiesBuilder {
            members: Vec::new(),
            options: Options::default(),
            accept_expired: false,
            provider: None,
        }
    }

    /// A resolver choosing by SNI (clients without SNI get the default identity).
    pub fn resolver(&self) -> Arc<crate::rustls::SniResolver> {
        Arc::new(crate::rustls::SniResolver::new(self.clone(), None))
    }

    /// A resolver for a listener bound to `ip`: clients without SNI get an identity with that
    /// IP address in its subjectAltName, else the default one.
    pub fn resolver_for_ip(&self, ip: std::net::IpAddr) -> Arc<crate::rustls::SniResolver> {
        Arc::new(crate::rustls::SniResolver::new(self.clone(), Some(ip)))
    }

    /// The identity served to a client asking for `server_name` (no SNI: the default one), as
    /// the resolver would choose it for a client accepting any key type.
    pub fn serving(&self, server_name: Option<&str>) -> Option<Arc<Snapshot<Identity>>> {
        let key = self.choose(server_name, None, &[])?;
        self.inner.members.iter().find_map(|m| {
            let current = m.reloading.current.load_full()?;
            Arc::ptr_eq(current.value.certified_key(), &key).then_some(current)
        })
    }

    /// The certificate a handshake for `server_name` (no SNI: `None`) offering `schemes` would
    /// get: exactly what the resolver does (one atomic load, one or two hash lookups), for
    /// diagnostics and benchmarks (a rustls `ClientHello` cannot be built by hand).
    pub fn resolve(
        &self,
        server_name: Option<&str>,
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.choose(server_name, None, schemes)
    }

    /// What the resolver does: one load of the name index, a lookup, and one load per
    /// candidate's current snapshot.
    pub(crate) fn choose(
        &self,
        server_name: Option<&str>,
        local_ip: Option<std::net::IpAddr>,
        schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.inner
            .index
            .load()
            .choose(&self.inner.members, server_name, local_ip, schemes)
    }

    /// Announces "expiring soon"/"expired" for every identity now if due (the detector thread
    /// does this by itself in `watch` and `poll` modes).
    pub fn check_expiry(&self) {
        for m in &self.inner.members {
            let _ = m.reloading.check_expiry();
        }
    }

    /// Calls `callback` on every later [`Event`] of every identity.
    pub fn subscribe(&self, callback: impl Fn(&Event) + Send + Sync + 'static) {
        let callback: EventCallback = Arc::new(callback);
        for m in &self.inner.members {
            m.reloading.events.subscribe(callback.clone());
        }
    }

    /// Each identity's status and current value, in the order given.
    pub fn members(&self) -> Vec<(Status, Option<Arc<Snapshot<Identity>>>)> {
        self.inner
            .members
            .iter()
            .map(|m| (m.reloading.status(), m.reloading.current.load_full()))
            .collect()
    }

    /// Reloads every identity now (see [`ReloadingIdentity::reload`]); one result each.
    pub fn reload(&self) -> Vec<Result<Reload, Error>> {
        self.inner
            .members
            .iter()
            .map(|m| reload_now(&m.reloading, self.inner.quiet))
            .collect()
    }
}
