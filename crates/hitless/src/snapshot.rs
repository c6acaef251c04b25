//! Last known good: the value being served, its generation, and what happened since.
//!
//! A [`Snapshot`] is immutable; replacing it is one atomic pointer swap, and reading it (what a
//! handshake does) is one atomic load. Bad input never reaches this module: only a value that
//! has been fully read and validated becomes a snapshot. Failures are recorded beside it, in
//! [`Status`], and announced as [`Event`]s.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One validated value with the facts of when and from where it was loaded.
#[derive(Debug)]
#[non_exhaustive]
pub struct Snapshot<T> {
    /// The validated value ([`crate::Identity`], ...).
    pub value: T,
    /// 1 for the first value loaded, +1 for every swap to different content.
    pub generation: u64,
    /// When this value was loaded.
    pub loaded_at: SystemTime,
    /// The files it was read from (none for a value pushed by a provider).
    pub sources: Vec<PathBuf>,
    /// SHA-256 over the files' paths and contents: identical content is never swapped in again.
    pub(crate) digest: [u8; 32],
}

/// The last failure to load a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastError {
    /// The file the failure is about, when there is one.
    pub path: Option<PathBuf>,
    /// The whole message, naming the file and the reason.
    pub message: String,
    /// When it was reported.
    pub at: SystemTime,
}

/// A pushed credential's provider cannot deliver updates (see
/// [`ReloadingIdentity::pushed`](crate::ReloadingIdentity::pushed)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Outage {
    /// What the provider said (e.g. "Workload API stream broken, reconnecting in 4 s").
    pub reason: String,
    /// When the outage began.
    pub since: SystemTime,
}

/// How a credential has been doing: what a status page shows.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// The credential's name (as given to the builder, else derived from its files).
    pub name: String,
    /// How changes are noticed (its [`Display`](std::fmt::Display) is the mode's name:
    /// `watch`, `poll`, `on-handshake`, `manual`, `pushed`).
    pub detection: crate::Detection,
    /// Generation being served (0 when nothing has loaded yet).
    pub generation: u64,
    /// When the value being served was loaded.
    pub loaded_at: Option<SystemTime>,
    /// When the files were last looked at.
    pub last_check: Option<SystemTime>,
    /// The last reported failure, cleared when the files are good again.
    pub last_error: Option<LastError>,
    /// Successful swaps (the initial load included).
    pub reloads_ok: u64,
    /// Reported failures.
    pub reloads_failed: u64,
    /// Start of the validity of what is served (identities).
    pub not_before: Option<SystemTime>,
    /// End of the validity of what is served (identities).
    pub not_after: Option<SystemTime>,
    /// From when it counts as expiring soon (identities).
    pub expiring_soon_at: Option<SystemTime>,
    /// A pushed credential whose provider reported that it cannot deliver updates (a stream
    /// broken, reconnecting); cleared when it delivers again. The last good value keeps
    /// serving meanwhile. Always `None` for files.
    pub outage: Option<Outage>,
}

/// The overall state of a credential, for status pages and health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Health {
    /// Serving a valid credential; the last reload (if any) succeeded.
    Ok,
    /// Serving, but a reload is failing, the source is unavailable, or expiry is near.
    Degraded,
    /// Serving an expired credential (no valid replacement was written), or nothing at all.
    Expired,
}

impl Health {
    /// `ok`, `degraded` or `expired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Expired => "expired",
        }
    }
}

impl Status {
    /// Default fraction of the lifetime left below which a credential is "expiring soon": a
    /// third, what agents renew at (set another with the builders' `expiring_soon`).
    pub const DEFAULT_EXPIRING_SOON: f64 = 1.0 / 3.0;

    /// The state at `now`.
    pub fn health(&self, now: SystemTime) -> Health {
        if self.generation == 0 || self.not_after.is_some_and(|t| now > t) {
            return Health::Expired;
        }
        if self.last_error.is_some()
            || self.outage.is_some()
            || self.expiring_soon_at.is_some_and(|t| now >= t)
        {
            return Health::Degraded;
        }
        Health::Ok
    }
}

/// Something that happened to a credential, for applications that want to act on it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A new value is being served.
    Reloaded {
        /// Which credential.
        name: String,
        /// Its new generation.
        generation: u64,
        /// SHA-256 fingerprint of the new leaf (or of the first CA of a trust bundle).
        fingerprint: String,
    },
    /// New input was refused; the previous value keeps being served.
    ReloadFailed {
        /// Which credential.
        name: String,
        /// What went wrong (names the file and the reason).
        error: LastError,
    },
    /// Less than the configured fraction of the served certificate's lifetime is left and no
    /// renewal has arrived.
    ExpiringSoon {
        /// Which credential.
        name: String,
        /// When it expires.
        not_after: SystemTime,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// The served certificate has expired and no valid replacement has arrived; it keeps
    /// being served (peers will refuse it) so that a late renewal still lands on a running
    /// process.
    Expired {
        /// Which credential.
        name: String,
        /// When it expired.
        not_after: SystemTime,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// A pushed credential's provider cannot deliver updates (a stream broke, it is
    /// reconnecting); the last good value keeps being served. Announced once per outage.
    SourceOutage {
        /// Which credential.
        name: String,
        /// What the provider said.
        reason: String,
    },
    /// The provider of a pushed credential delivers again after a [`Event::SourceOutage`].
    SourceRestored {
        /// Which credential.
        name: String,
    },
}

/// A callback that receives every [`Event`] of a credential.
pub(crate) type EventCallback = Arc<dyn Fn(&Event) + Send + Sync>;

/// The subscribers of one credential.
#[derive(Default, Clone)]
pub(crate) struct Events {
    subscribers: Arc<Mutex<Vec<EventCallback>>>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Events")
    }
}

impl Events {
    pub(crate) fn subscribe(&self, callback: EventCallback) {
        lock(&self.subscribers).push(callback);
    }

    pub(crate) fn emit(&self, event: &Event) {
        // Clone the list so a callback may subscribe without dead-locking.
        let subscribers = lock(&self.subscribers).clone();
        for s in subscribers {
            s(event);
        }
    }
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the data here is
/// always left consistent: plain counters and replaced values).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
