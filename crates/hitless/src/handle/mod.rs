//! The handles an application holds: built once, cloned freely.
//!
//! A handle ties together where a credential comes from (its files and detector, or a
//! provider that pushes values), its last-known-good snapshot and its status. Cloning a handle
//! is cheap and every clone sees the same snapshot. A detector thread runs as long as any
//! clone (or a resolver or configuration made from it) is alive, and is stopped and joined
//! when the last one is dropped.
//!
//! - `identity.rs`: [`ReloadingIdentity`] and its builder;
//! - `trust.rs`: [`ReloadingTrust`] and its builder;
//! - `set.rs`: [`ServerIdentities`], several server identities served by SNI;
//! - `pushed.rs`: the extension point for sources that are not files (publishers).
//!
//! Every handle is a thin, written-out front of one generic inner type, [`Shared`]; this module
//! owns it and the options every builder shares.

mod identity;
mod pushed;
mod set;
mod trust;

pub use identity::{IdentityBuilder, ReloadingIdentity};
pub use pushed::{IdentityPublisher, PushedIdentityBuilder, PushedTrustBuilder, TrustPublisher};
pub use set::{MemberOptions, ServerIdentities, ServerIdentitiesBuilder};
pub use trust::{ReloadingTrust, TrustBuilder};

use std::sync::Arc;
use std::time::Duration;

use crate::detect::{self, Detection, Detector, Target};
use crate::reload::{Attempt, Load, Reloading};
use crate::snapshot::{EventCallback, Events, Snapshot, Status};
use crate::Error;

/// The outcome of a manual reload or of a pushed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reload {
    /// The files (or the pushed value) hold what is already served.
    Unchanged,
    /// A new value is served, with this generation.
    Reloaded {
        /// The new generation.
        generation: u64,
    },
}

impl Reload {
    fn from_attempt(attempt: Attempt) -> Result<Reload, Error> {
        match attempt {
            Attempt::Unchanged => Ok(Reload::Unchanged),
            Attempt::Reloaded(generation) => Ok(Reload::Reloaded { generation }),
            Attempt::Failed { error, .. } => Err(error),
        }
    }
}

/// What every handle shares: the reloading credential, its quiet period, its detector.
pub(crate) struct Shared<L: Load> {
    pub(crate) reloading: Arc<Reloading<L>>,
    quiet: Duration,
    /// `on-handshake` mode: the inline check the handshake path calls.
    on_handshake: Option<detect::OnHandshake>,
    _detector: Option<Detector>,
}

/// Options common to every credential builder.
pub(crate) struct Options {
    name: Option<String>,
    detection: Detection,
    quiet: Duration,
    callbacks: Vec<EventCallback>,
    allow_empty: bool,
    expiring_soon: f64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            name: None,
            detection: Detection::default(),
            quiet: Detection::DEFAULT_QUIET_PERIOD,
            callbacks: Vec::new(),
            allow_empty: false,
            expiring_soon: Status::DEFAULT_EXPIRING_SOON,
        }
    }
}

impl Options {
    fn set_name(&mut self, name: String) {
        self.name = Some(name);
    }

    fn set_detection(&mut self, detection: Detection) {
        self.detection = detection.capped();
    }

    fn set_quiet(&mut self, quiet: Duration) {
        self.quiet = quiet.min(Detection::MAX_QUIET_PERIOD);
    }

    fn add_callback(&mut self, callback: EventCallback) {
        self.callbacks.push(callback);
    }

    fn set_expiring_soon(&mut self, fraction: f64) {
        self.expiring_soon = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            Status::DEFAULT_EXPIRING_SOON
        };
    }

    fn set_allow_empty(&mut self, allow: bool) {
        self.allow_empty = allow;
    }

    /// The name given, else `default`.
    fn name_or(&self, default: String) -> String {
        self.name.clone().unwrap_or(default)
    }

    /// A reloading credential called `name` with these options' subscribers, detection and
    /// expiry threshold.
    fn reloading<L: Load>(&self, name: String, loader: L) -> Arc<Reloading<L>> {
        let events = Events::default();
        for c in &self.callbacks {
            events.subscribe(c.clone());
        }
        let mut reloading = Reloading::new(name, loader, self.detection, events);
        reloading.expiring_soon = self.expiring_soon;
        Arc::new(reloading)
    }
}

impl<L: Load> Shared<L> {
    /// Loads once (failing unless `allow_empty`), then starts the detector (`load_on`: where
    /// an `on-handshake` check loads a change it finds).
    fn start(
        loader: L,
        default_name: String,
        options: Options,
        load_on: detect::LoadOn,
    ) -> Result<Arc<Self>, Error> {
        let reloading = options.reloading(options.name_or(default_name), loader);
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
            format!("hitless-detect {}", reloading.name),
        )?;
        Ok(Arc::new(Shared {
            reloading,
            quiet: options.quiet,
            on_handshake,
            _detector: detector,
        }))
    }

    /// A credential whose values a provider pushes: no files, no detector.
    fn pushed(reloading: Arc<Reloading<L>>) -> Arc<Self> {
        Arc::new(Shared {
            reloading,
            quiet: Duration::ZERO,
            on_handshake: None,
            _detector: None,
        })
    }

    fn current(&self) -> Option<Arc<Snapshot<L::Value>>> {
        self.reloading.current.load_full()
    }

    /// The current snapshot without an `Arc` clone: what the handshake path reads.
    fn load(&self) -> arc_swap::Guard<Option<Arc<Snapshot<L::Value>>>> {
        self.reloading.current.load()
    }

    /// In `on-handshake` mode, looks at the files if the TTL has run out (never waits).
    fn check_on_handshake(&self) {
        if let Some(check) = &self.on_handshake {
            check.maybe_check();
        }
    }

    fn status(&self) -> Status {
        self.reloading.status()
    }

    fn reload(&self) -> Result<Reload, Error> {
        reload_now(&self.reloading, self.quiet)
    }

    fn check_expiry(&self) {
        let _ = self.reloading.check_expiry();
    }

    fn subscribe(&self, callback: EventCallback) {
        self.reloading.events.subscribe(callback);
    }
}

/// One attempt; if it fails (a writer may be between two files), one more after the quiet
/// period, which reports.
fn reload_now<L: Load>(reloading: &Reloading<L>, quiet: Duration) -> Result<Reload, Error> {
    let mut outcome = reloading.attempt(false);
    if let Attempt::Failed { .. } = outcome {
        std::thread::sleep(quiet);
        outcome = reloading.attempt(true);
    }
    Reload::from_attempt(outcome)
}
