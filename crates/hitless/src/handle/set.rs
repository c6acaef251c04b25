//! [`ServerIdentities`]: several server identities, each reloading on its own, served by SNI
//! (the name index itself belongs to `rustls::sni`).

use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;

use super::{reload_now, Options, Reload};
use crate::detect::{self, Detection, Detector, Target};
use crate::identity::{default_provider, Identity, IdentityLoader, Role, Validation};
use crate::reload::{Attempt, Reloading};
use crate::rustls::{MemberSnapshots, NameIndex};
use crate::snapshot::{Event, EventCallback, Snapshot, Status};
use crate::source::IdentitySource;
use crate::Error;

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

struct Member {
    reloading: Arc<Reloading<IdentityLoader>>,
    names: Option<Vec<String>>,
    is_default: bool,
}

struct SetInner {
    members: Vec<Member>,
    index: NameIndex,
    quiet: Duration,
    /// `on-handshake` mode: the inline check the resolver calls.
    on_handshake: Option<detect::OnHandshake>,
    /// Set once, right after the set exists (the detector needs the members' weak handles).
    detector: std::sync::OnceLock<Option<Detector>>,
}

impl MemberSnapshots for Vec<Member> {
    fn len(&self) -> usize {
        <[Member]>::len(self)
    }
    fn get(&self, i: usize) -> Option<&arc_swap::ArcSwapOption<Snapshot<Identity>>> {
        <[Member]>::get(self, i).map(|m| &m.reloading.current)
    }
    fn names(&self, i: usize) -> Option<&[String]> {
        <[Member]>::get(self, i).and_then(|m| m.names.as_deref())
    }
    fn is_default(&self, i: usize) -> bool {
        <[Member]>::get(self, i).is_some_and(|m| m.is_default)
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
    inner: Arc<SetInner>,
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
    /// A name for logs (default: `identities`); each identity has its own
    /// ([`MemberOptions::named`], default: its certificate file's path).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.set_name(name.into());
        self
    }

    /// How changes are noticed, for every identity (default [`Detection::Watch`]; intervals
    /// are capped at [`Detection::MAX_INTERVAL`]).
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

    /// Calls `callback` on every [`Event`] of every identity (from the thread that did the
    /// reload: keep it short).
    pub fn on_event(mut self, callback: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        self.options.add_callback(Arc::new(callback));
        self
    }

    /// Announce "expiring soon" when less than this fraction of a certificate's lifetime is
    /// left (default [`Status::DEFAULT_EXPIRING_SOON`], a third, what agents renew at).
    pub fn expiring_soon(mut self, fraction: f64) -> Self {
        self.options.set_expiring_soon(fraction);
        self
    }

    /// Start even if a first load fails (a sidecar agent has not written yet): that identity
    /// is not served until its first good write (default: `build` fails with the file and the
    /// reason).
    pub fn allow_empty_start(mut self, allow: bool) -> Self {
        self.options.set_allow_empty(allow);
        self
    }

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
    /// (default: as [`IdentityBuilder::crypto_provider`](crate::IdentityBuilder::crypto_provider)).
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
            let reloading = self.options.reloading(name, loader);
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
            index: NameIndex::default(),
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
                        inner.index.rebuild(&inner.members);
                    }
                }
            }));
        }
        inner.index.rebuild(&inner.members);
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
    pub fn resolver(&self) -> Arc<crate::SniResolver> {
        Arc::new(crate::SniResolver::new(self.clone(), None))
    }

    /// A resolver for a listener bound to `ip`: clients without SNI get an identity with that
    /// IP address in its subjectAltName, else the default one.
    pub fn resolver_for_ip(&self, ip: std::net::IpAddr) -> Arc<crate::SniResolver> {
        Arc::new(crate::SniResolver::new(self.clone(), Some(ip)))
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
            .choose(&self.inner.members, server_name, local_ip, schemes)
    }

    /// In `on-handshake` mode, the at-most-once-per-TTL look at the files (never waits).
    pub(crate) fn check_on_handshake(&self) {
        if let Some(check) = &self.inner.on_handshake {
            check.maybe_check();
        }
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

    /// Reloads every identity now (see [`ReloadingIdentity::reload`](crate::ReloadingIdentity::reload)); one result each.
    pub fn reload(&self) -> Vec<Result<Reload, Error>> {
        self.inner
            .members
            .iter()
            .map(|m| reload_now(&m.reloading, self.inner.quiet))
            .collect()
    }
}
