//! `on-handshake` mode: no background thread at all.
//!
//! The handshake path calls [`OnHandshake::maybe_check`], which costs one clock read (vDSO, no
//! system call) and one atomic load while the TTL has not run out. Once it has, the first
//! handshake to notice takes a `try_lock` (never waits: a handshake that finds a check running
//! simply serves the current snapshot) and, inline, compares the files' identities (one `stat`
//! per file); only if they changed does it read and validate them, and a good result is what
//! this very handshake serves. So at most one handshake per TTL pays for a few `stat` calls,
//! and no handshake ever waits for another.
//!
//! Choose it where a background thread is unwelcome (some sandboxes, tiny embedded services,
//! processes that fork). Otherwise prefer `watch` (instant, nothing on the handshake path) or
//! `poll` (predictable, nothing on the handshake path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use super::Target;
use crate::reload::Attempt;
use crate::source::files::{stamps, FileStamp};

pub(crate) struct OnHandshake {
    ttl: Duration,
    base: Instant,
    next_due_nanos: AtomicU64,
    state: Mutex<State>,
}

struct State {
    targets: Vec<Tracked>,
}

struct Tracked {
    target: Weak<dyn Target>,
    stamps: Vec<Option<FileStamp>>,
    /// A read failed silently last time (a writer may have been busy): report if it fails again.
    pending: bool,
}

impl OnHandshake {
    pub(crate) fn new(ttl: Duration, targets: Vec<Weak<dyn Target>>) -> Self {
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
            state: Mutex::new(State { targets }),
        }
    }

    /// Called on every handshake; looks at the files at most once per TTL, never waits.
    pub(crate) fn maybe_check(&self) {
        let now = nanos(self.base.elapsed());
        if now < self.next_due_nanos.load(Ordering::Relaxed) {
            return;
        }
        let Ok(mut state) = self.state.try_lock() else {
            return;
        };
        self.next_due_nanos
            .store(now.saturating_add(nanos(self.ttl)), Ordering::Relaxed);
        for t in &mut state.targets {
            let Some(target) = t.target.upgrade() else {
                continue;
            };
            let now_stamps = stamps(&target.paths());
            if now_stamps == t.stamps && !t.pending && !target.is_failing() {
                continue;
            }
            let report = t.pending;
            let outcome = target.attempt(report);
            t.pending = matches!(
                outcome,
                Attempt::Failed {
                    reported: false,
                    ..
                }
            );
            t.stamps = stamps(&target.paths());
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
