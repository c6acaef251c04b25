//! One reloading credential: read → validate → swap, with the last-known-good rule.
//!
//! [`Reloading`] owns the current [`Snapshot`] (in an `ArcSwapOption`, so readers pay one
//! atomic load) and the [`Status`]. An attempt reads every file of the credential as one unit,
//! compares a content hash with what is serving (equal content changes nothing), validates, and
//! swaps. A failed attempt is either silent (a writer may still be busy: the detector retries
//! after the quiet period) or reported (recorded in the status, logged, announced).
//!
//! A pushed credential (`ReloadingIdentity::pushed`, `ReloadingTrust::pushed`) goes through
//! the same steps with what its provider offers instead of what was read from files
//! ([`Reloading::offer`]): content hash, validation by the same loader, swap, status, events.
//!
//! This module decides *what* happens on a reload; `detect` (or a provider) decides *when*.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwapOption;

use crate::detect::Detection;
use crate::snapshot::{lock, Event, Events, LastError, Outage, Snapshot, Status};
use crate::source::files::{self, read_stable};
use crate::Error;

/// How to turn a credential's files into a validated value.
pub(crate) trait Load: Send + Sync + 'static {
    /// The validated value.
    type Value: Send + Sync + 'static;
    /// The files to read, in order.
    fn paths(&self) -> Vec<PathBuf>;
    /// Parses and validates what was read.
    fn load(&self, files: &files::Snapshot) -> Result<Self::Value, Error>;
    /// A fingerprint for logs and events.
    fn fingerprint(value: &Self::Value) -> String;
    /// A one-line description for logs.
    fn describe(value: &Self::Value) -> String;
    /// The validity period of the value, if it has one (an identity's leaf).
    fn validity(_value: &Self::Value) -> Option<(SystemTime, SystemTime)> {
        None
    }
    /// The files holding a secret (a private key, a keystore holding one, a password), each
    /// with what it is called in the warning given when group or others may read it.
    fn secret_files(&self) -> Vec<(PathBuf, &'static str)> {
        Vec::new()
    }
    /// What whoever can write these files decides, for the warning given when group or others
    /// may write them (this default is a trust bundle's; identities say theirs).
    fn writers_decide(&self) -> &'static str {
        "who is trusted"
    }
}

/// A value read or pushed that differs from the one served, with the hash of its content.
type New<V> = (V, [u8; 32]);

/// The result of one reload attempt.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// The files hold what is already served.
    Unchanged,
    /// A new value is served, with this generation.
    Reloaded(u64),
    /// The input was refused; nothing changed. `reported` says whether it was recorded.
    Failed { error: Error, reported: bool },
}

/// A credential that reloads: current snapshot, status, subscribers.
pub(crate) struct Reloading<L: Load> {
    pub(crate) name: String,
    loader: L,
    pub(crate) current: ArcSwapOption<Snapshot<L::Value>>,
    state: Mutex<State>,
    /// Serialises attempts (detector thread, manual reload, on-handshake check); held while
    /// files are read and parsed, so `state` (what status pages read) is held only briefly.
    attempt_lock: Mutex<()>,
    pub(crate) events: Events,
    /// Fraction of the lifetime left below which the credential is "expiring soon".
    pub(crate) expiring_soon: f64,
    expiry: Mutex<ExpiryNotes>,
    /// (path, mode) pairs already warned about, so each is logged once.
    warned_modes: Mutex<HashSet<(PathBuf, u32)>>,
}

/// Which expiry events were already announced, per generation.
#[derive(Debug, Default)]
struct ExpiryNotes {
    generation: u64,
    soon: bool,
    expired: bool,
}

#[derive(Debug, Default)]
struct State {
    detection: Detection,
    last_check: Option<SystemTime>,
    last_error: Option<LastError>,
    reloads_ok: u64,
    reloads_failed: u64,
    /// A pushed credential's provider says it cannot deliver updates.
    outage: Option<Outage>,
}

impl<L: Load> Reloading<L> {
    /// What reads and validates the value.
    pub(crate) fn loader(&self) -> &L {
        &self.loader
    }

    pub(crate) fn new(name: String, loader: L, detection: Detection, events: Events) -> Self {
        Reloading {
            name,
            loader,
            current: ArcSwapOption::empty(),
            state: Mutex::new(State {
                detection,
                ..State::default()
            }),
            attempt_lock: Mutex::new(()),
            events,
            expiring_soon: Status::DEFAULT_EXPIRING_SOON,
            expiry: Mutex::default(),
            warned_modes: Mutex::default(),
        }
    }

    /// Warns (once per file and mode) about a secret file that group or others may read, and
    /// about any file of the credential that group or others may write: whoever can write an
    /// identity's files chooses what the service presents, and whoever can write a trust bundle
    /// or CRL chooses who gets in. The mode is the one of the descriptor the bytes were read
    /// through.
    fn note_modes(&self, files: &files::Snapshot) {
        let secrets = self.loader.secret_files();
        for (path, _) in &files.files {
            let Some(mode) = files.mode(path) else {
                continue;
            };
            let secret = secrets
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, what)| *what);
            let readable = secret.is_some() && mode & files::READABLE_BY_OTHERS != 0;
            let writable = mode & files::WRITABLE_BY_OTHERS != 0;
            if !(readable || writable) || !lock(&self.warned_modes).insert((path.clone(), mode)) {
                continue;
            }
            let mode_text = format!("{mode:04o}");
            if readable {
                tracing::warn!(
                    credential = %self.name,
                    file = %path.display(),
                    mode = %mode_text,
                    "{} is readable by group or others (mode {mode_text}); make it 0600 (an \
                     agent template can set perms = \"0600\")",
                    secret.unwrap_or("secret file")
                );
            }
            if writable {
                tracing::warn!(
                    credential = %self.name,
                    file = %path.display(),
                    mode = %mode_text,
                    "file is writable by group or others (mode {mode_text}): whoever can write \
                     it decides {}; make it writable by its owner only (e.g. 0644)",
                    self.loader.writers_decide()
                );
            }
        }
    }

    /// The files of this credential.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        self.loader.paths()
    }

    /// Reads, validates and, when the content is new and good, swaps. With `report`, a failure
    /// is recorded in the status, logged and announced; without, it is only logged at debug
    /// level (the caller will retry).
    pub(crate) fn attempt(&self, report: bool) -> Attempt {
        // Handshakes never wait for this lock (see `try_attempt`).
        let serialise = lock(&self.attempt_lock);
        self.attempt_locked(report, serialise)
    }

    /// [`attempt`](Self::attempt), unless another attempt is running (a manual reload, a
    /// detector): then `None` at once, without waiting. What the handshake path uses.
    pub(crate) fn try_attempt(&self, report: bool) -> Option<Attempt> {
        let serialise = match self.attempt_lock.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(self.attempt_locked(report, serialise))
    }

    /// One attempt, with the attempt lock held by the caller (released on return).
    fn attempt_locked(&self, report: bool, _serialise: std::sync::MutexGuard<'_, ()>) -> Attempt {
        if lock(&self.state).detection == Detection::Pushed {
            // No files: only the provider brings new values (`offer`).
            return Attempt::Unchanged;
        }
        lock(&self.state).last_check = Some(SystemTime::now());
        let paths = self.loader.paths();
        let refs: Vec<&std::path::Path> = paths.iter().map(PathBuf::as_path).collect();
        let outcome = read_stable(&refs).and_then(|files| {
            self.note_modes(&files);
            if self.is_serving(&files.digest) {
                return Ok(None);
            }
            let value = self.loader.load(&files)?;
            Ok(Some((value, files.digest)))
        });
        self.settle(report, paths, outcome)
    }

    /// Whether the value being served was made from content with this hash.
    fn is_serving(&self, digest: &[u8; 32]) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|cur| cur.digest == *digest)
    }

    /// A value offered by a provider (a pushed credential): `digest` is the hash of what was
    /// offered, `load` validates it with this credential's loader. The same rules as a file
    /// reload: identical content changes nothing, a refused value is recorded, logged and
    /// announced while the last good one keeps serving. A value that arrives (good or not)
    /// also ends an outage the provider reported: the provider is delivering again.
    pub(crate) fn offer(
        &self,
        digest: [u8; 32],
        load: impl FnOnce(&L) -> Result<L::Value, Error>,
    ) -> Attempt {
        let _serialise = lock(&self.attempt_lock);
        lock(&self.state).last_check = Some(SystemTime::now());
        self.end_outage();
        let outcome = if self.is_serving(&digest) {
            Ok(None)
        } else {
            load(&self.loader).map(|value| Some((value, digest)))
        };
        self.settle(true, Vec::new(), outcome)
    }

    /// Records the outcome of one attempt: swaps a new value in, or records a failure.
    fn settle(
        &self,
        report: bool,
        sources: Vec<PathBuf>,
        outcome: Result<Option<New<L::Value>>, Error>,
    ) -> Attempt {
        let mut state = lock(&self.state);
        match outcome {
            Ok(None) => {
                if state.last_error.take().is_some() {
                    tracing::info!(credential = %self.name, "back to the content being served");
                }
                Attempt::Unchanged
            }
            Ok(Some((value, digest))) => {
                let generation = self.current.load().as_ref().map_or(0, |c| c.generation) + 1;
                let fingerprint = L::fingerprint(&value);
                let description = L::describe(&value);
                self.current.store(Some(Arc::new(Snapshot {
                    value,
                    generation,
                    loaded_at: SystemTime::now(),
                    sources,
                    digest,
                })));
                state.last_error = None;
                state.reloads_ok += 1;
                drop(state);
                tracing::info!(
                    credential = %self.name,
                    generation,
                    fingerprint = %fingerprint,
                    "loaded {description}"
                );
                self.events.emit(&Event::Reloaded {
                    name: self.name.clone(),
                    generation,
                    fingerprint,
                });
                Attempt::Reloaded(generation)
            }
            Err(error) => {
                if !report {
                    tracing::debug!(credential = %self.name, "not ready yet, will retry: {error}");
                    return Attempt::Failed {
                        error,
                        reported: false,
                    };
                }
                let last = LastError {
                    path: error.path().map(|p| p.to_path_buf()),
                    message: error.to_string(),
                    at: SystemTime::now(),
                };
                state.reloads_failed += 1;
                state.last_error = Some(last.clone());
                let serving = self.current.load().as_ref().map(|c| c.generation);
                drop(state);
                match serving {
                    Some(generation) => tracing::warn!(
                        credential = %self.name,
                        serving_generation = generation,
                        "reload failed, keeping the last good credential: {error}"
                    ),
                    None => {
                        tracing::warn!(credential = %self.name, "no credential loaded: {error}")
                    }
                }
                self.events.emit(&Event::ReloadFailed {
                    name: self.name.clone(),
                    error: last,
                });
                Attempt::Failed {
                    error,
                    reported: true,
                }
            }
        }
    }

    /// A pushed credential's provider cannot deliver updates (a stream broke, it is
    /// reconnecting): recorded in the status and announced once per outage; what is served
    /// does not change.
    pub(crate) fn report_outage(&self, reason: String) {
        let mut state = lock(&self.state);
        if let Some(outage) = &mut state.outage {
            // Still out: the newest reason (e.g. the latest reconnection error), same start.
            outage.reason = reason;
            return;
        }
        state.outage = Some(Outage {
            reason: reason.clone(),
            since: SystemTime::now(),
        });
        let serving = self.current.load().as_ref().map(|c| c.generation);
        drop(state);
        tracing::warn!(
            credential = %self.name,
            serving_generation = serving,
            "source unavailable, keeping the last good credential: {reason}"
        );
        self.events.emit(&Event::SourceOutage {
            name: self.name.clone(),
            reason,
        });
    }

    /// The provider delivers again: ends the outage, if any, and announces it.
    pub(crate) fn end_outage(&self) {
        let Some(outage) = lock(&self.state).outage.take() else {
            return;
        };
        let lasted = outage.since.elapsed().unwrap_or_default();
        tracing::info!(
            credential = %self.name,
            "source available again after {}",
            humantime::format_duration(std::time::Duration::from_secs(lasted.as_secs()))
        );
        self.events.emit(&Event::SourceRestored {
            name: self.name.clone(),
        });
    }

    /// Whether the last reported attempt failed and has not been followed by a good one.
    pub(crate) fn is_failing(&self) -> bool {
        lock(&self.state).last_error.is_some() || self.current.load().is_none()
    }

    /// Announces "expiring soon" and "expired" (once per generation) when due; returns when
    /// the next announcement is due, for the detector's timer.
    pub(crate) fn check_expiry(&self) -> Option<SystemTime> {
        let current = self.current.load_full()?;
        let (not_before, not_after) = L::validity(&current.value)?;
        let lifetime = not_after.duration_since(not_before).unwrap_or_default();
        let soon_at = not_after
            .checked_sub(lifetime.mul_f64(self.expiring_soon.clamp(0.0, 1.0)))
            .unwrap_or(not_before);
        let now = SystemTime::now();
        let mut notes = lock(&self.expiry);
        if notes.generation != current.generation {
            *notes = ExpiryNotes {
                generation: current.generation,
                ..ExpiryNotes::default()
            };
        }
        let fingerprint = L::fingerprint(&current.value);
        if now >= not_after && !notes.expired {
            notes.expired = true;
            notes.soon = true;
            drop(notes);
            tracing::error!(
                credential = %self.name,
                generation = current.generation,
                not_after = %crate::identity::rfc3339(not_after),
                "credential EXPIRED and no valid replacement was loaded: peers will refuse it"
            );
            self.events.emit(&Event::Expired {
                name: self.name.clone(),
                not_after,
                fingerprint,
            });
            return None;
        }
        if now >= soon_at && !notes.soon {
            notes.soon = true;
            drop(notes);
            tracing::warn!(
                credential = %self.name,
                generation = current.generation,
                not_after = %crate::identity::rfc3339(not_after),
                "credential expiring soon and not renewed yet"
            );
            self.events.emit(&Event::ExpiringSoon {
                name: self.name.clone(),
                not_after,
                fingerprint,
            });
            return Some(not_after);
        }
        if notes.expired {
            None
        } else if notes.soon {
            Some(not_after)
        } else {
            Some(soon_at)
        }
    }

    pub(crate) fn status(&self) -> Status {
        let state = lock(&self.state);
        let current = self.current.load();
        let validity = current.as_ref().and_then(|c| L::validity(&c.value));
        let expiring_soon_at = validity.map(|(nb, na)| {
            let lifetime = na.duration_since(nb).unwrap_or_default();
            na.checked_sub(lifetime.mul_f64(self.expiring_soon.clamp(0.0, 1.0)))
                .unwrap_or(nb)
        });
        Status {
            not_before: validity.map(|v| v.0),
            not_after: validity.map(|v| v.1),
            expiring_soon_at,
            name: self.name.clone(),
            detection: state.detection,
            generation: current.as_ref().map_or(0, |c| c.generation),
            loaded_at: current.as_ref().map(|c| c.loaded_at),
            last_check: state.last_check,
            last_error: state.last_error.clone(),
            reloads_ok: state.reloads_ok,
            reloads_failed: state.reloads_failed,
            outage: state.outage.clone(),
        }
    }
}
