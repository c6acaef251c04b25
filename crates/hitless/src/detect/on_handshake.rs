//! `on-handshake` mode: no detector thread.
//!
//! The handshake path calls [`OnHandshake::maybe_check`], which costs one clock read (vDSO, no
//! system call) and one atomic load while the TTL has not run out. Once it has, the first
//! caller to notice claims the check (an atomic flag: a caller that finds a check running
//! simply goes on with the current snapshot, it never waits) and compares the files'
//! identities (one `stat` per file). Only if they changed is anything read:
//!
//! - for an identity ([`LoadOn::Caller`]), inline: the check runs in the certificate
//!   resolver, on the handshake's own task, and a good result is what this very handshake
//!   serves;
//! - for a trust bundle ([`LoadOn::OneShotThread`]), on a short-lived thread that ends with
//!   the reload: the trust is checked from `ReloadingServerConfig::current()`, which servers
//!   call on their accept loop, and a slow read or parse (a large CRL, a slow disk) must not
//!   stop the accept loop. The handshakes that follow use the new trust once it is loaded.
//!
//! A reload already running elsewhere (a manual `reload()`, `SIGHUP`) is never waited for: the
//! check is skipped and made again after the next TTL. The files' identities are taken
//! *before* the attempt reads them, so a file replaced while an attempt runs differs from what
//! was recorded and is looked at again (taken after, that update would be lost).
//!
//! Choose it where a long-lived background thread is unwelcome (some sandboxes, tiny embedded
//! services, processes that fork). Otherwise prefer `watch` (instant, nothing on the handshake
//! path) or `poll` (predictable, nothing on the handshake path).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::Target;
use crate::reload::Attempt;
use crate::snapshot::lock;
use crate::source::files::{stamps, FileStamp};

/// Where the reload of a change found by a check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadOn {
    /// On the caller's thread (the handshake that noticed serves the result).
    Caller,
    /// On a thread started for this one reload, so the caller never waits for it.
    OneShotThread,
}

pub(crate) struct OnHandshake {
    ttl: Duration,
    base: Instant,
    next_due_nanos: AtomicU64,
    load_on: LoadOn,
    checks: Arc<Checks>,
}

/// The state a check works on, shared with a one-shot reload thread.
struct Checks {
    /// Set while a check (or the reload it started) runs.
    busy: AtomicBool,
    /// Only touched by whoever set `busy`, so never contended.
    targets: Mutex<Vec<Tracked>>,
}

struct Tracked {
    target: Weak<dyn Target>,
    stamps: Vec<Option<FileStamp>>,
    /// A read failed silently last time (a writer may have been busy): report if it fails again.
    pending: bool,
}

/// Clears `busy` when the check (or its reload thread) is done, whatever happened.
struct Claim(Arc<Checks>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

impl Checks {
    /// Claims the right to check, or `None` if a check is running.
    fn claim(self: &Arc<Self>) -> Option<Claim> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| Claim(self.clone()))
    }

    /// Whether any credential needs an attempt: a file changed, or the last read failed.
    fn due(&self) -> bool {
        lock(&self.targets).iter().any(|t| {
            t.target.upgrade().is_some_and(|target| {
                t.pending || target.is_failing() || stamps(&target.paths()) != t.stamps
            })
        })
    }

    /// Attempts a reload of each credential that needs one.
    fn reload(&self) {
        for t in lock(&self.targets).iter_mut() {
            let Some(target) = t.target.upgrade() else {
                continue;
            };
            // Before the read: an update landing during the attempt then still differs.
            let before = stamps(&target.paths());
            if before == t.stamps && !t.pending && !target.is_failing() {
                continue;
            }
            let report = t.pending;
            // Another reload is running (manual, SIGHUP): do not wait for it; the stamps are
            // left as they were, so the next check looks again.
            let Some(outcome) = target.try_attempt(report) else {
                continue;
            };
            t.pending = matches!(
                outcome,
                Attempt::Failed {
                    reported: false,
                    ..
                }
            );
            t.stamps = before;
        }
    }
}

impl OnHandshake {
    pub(crate) fn new(ttl: Duration, load_on: LoadOn, targets: Vec<Weak<dyn Target>>) -> Self {
        let base = Instant::now();
        let targets = targets
            .into_iter()
            .map(|target| {
                let stamps = target
                    .upgrade()
                    .map(|t| stamps(&t.paths()))
                    .unwrap_or_default();
                Tracked {
                    target,
                    stamps,
                    pending: false,
                }
            })
            .collect();
        OnHandshake {
            ttl,
            base,
            next_due_nanos: AtomicU64::new(nanos(ttl)),
            load_on,
            checks: Arc::new(Checks {
                busy: AtomicBool::new(false),
                targets: Mutex::new(targets),
            }),
        }
    }

    /// Called on every handshake; looks at the files at most once per TTL, never waits.
    pub(crate) fn maybe_check(&self) {
        let now = nanos(self.base.elapsed());
        if now < self.next_due_nanos.load(Ordering::Relaxed) {
            return;
        }
        let Some(claim) = self.checks.claim() else {
            return;
        };
        self.next_due_nanos
            .store(now.saturating_add(nanos(self.ttl)), Ordering::Relaxed);
        if !self.checks.due() {
            return;
        }
        if self.load_on == LoadOn::OneShotThread {
            let checks = self.checks.clone();
            let name = format!("hitless-reload {}", self.name());
            let spawned = std::thread::Builder::new().name(name).spawn(move || {
                let _claim = claim;
                checks.reload();
            });
            match spawned {
                Ok(_) => return,
                // No thread to be had: the claim was dropped with the closure; load here
                // rather than not at all.
                Err(e) => tracing::debug!("cannot start a reload thread, reloading inline: {e}"),
            }
            let Some(_claim) = self.checks.claim() else {
                return;
            };
            self.checks.reload();
            return;
        }
        self.checks.reload();
        drop(claim);
    }

    /// The first credential's name, for the reload thread's name.
    fn name(&self) -> String {
        lock(&self.checks.targets)
            .first()
            .and_then(|t| t.target.upgrade())
            .map(|t| t.name())
            .unwrap_or_default()
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
