//! Change detection: *when* to look at the files again. Nothing more.
//!
//! Every strategy ends in the same call, "attempt a reload of this credential"; whether anything
//! changed is decided there, by a content hash. None of this runs on the handshake path: `watch`
//! and `poll` run on one background thread per handle, `manual` runs nothing.
//!
//! - [`Detection::Watch`] (default): operating-system notifications (inotify through `notify`)
//!   on the parent directory of every file and of every symlink hop, so renames, Kubernetes
//!   `..data` swaps and certbot relinks are seen. A rename or create is acted on at once (an
//!   atomic writer is picked up in well under a millisecond of work). A file being written in
//!   place (modify events) is read when its writer closes it, or after the quiet period if it
//!   never does. A read that is not consistent (unparsable, key/leaf mismatch: a writer between
//!   two files) is retried after the quiet period and reported only if it still fails then.
//!   Every new event triggers a new attempt at once, so a writer that never pauses cannot starve
//!   the reload the way a debounce would.
//! - [`Detection::Poll`]: every interval (±10% jitter, so a fleet does not poll in step), compare
//!   each file's (device, inode, size, mtime) through its symlinks; attempt when one changed.
//! - [`Detection::OnHandshake`]: no long-lived thread; a handshake looks at most once per TTL,
//!   inline, and never waits; a trust change found is loaded on a thread that ends with the
//!   reload, so an accept loop never waits for it (see `on_handshake`).
//! - [`Detection::Manual`]: no thread; call `reload()`.
//!
//! Failures that persist are retried with backoff (1 s doubling to 30 s): a certificate that is
//! not valid yet becomes good by itself.

mod on_handshake;
mod watch;

pub(crate) use on_handshake::{LoadOn, OnHandshake};

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Weak;
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crate::reload::{Attempt, Load, Reloading};
use crate::source::files::{stamps, FileStamp};

/// How a credential notices that its files changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Detection {
    /// File-system notifications on the parent directories (default).
    #[default]
    Watch,
    /// Compare file identities every `interval` (±10% jitter).
    Poll {
        /// Time between two checks.
        interval: Duration,
    },
    /// No background thread: a handshake looks at the files (one `stat` each) at most once per
    /// `ttl`, inline, and never waits for a check another handshake is running. A changed
    /// identity is loaded by that handshake; a changed trust bundle on a thread started for
    /// that one reload (the trust is checked on accept loops, which must not wait).
    OnHandshake {
        /// Minimum time between two checks.
        ttl: Duration,
    },
    /// Never look by itself: call `reload()` (or send `SIGHUP` to the command).
    Manual,
    /// No files: a provider pushes each new value
    /// ([`ReloadingIdentity::pushed`](crate::ReloadingIdentity::pushed),
    /// [`ReloadingTrust::pushed`](crate::ReloadingTrust::pushed)). What the status of a pushed
    /// credential shows; given to a file builder, it means [`Detection::Manual`].
    Pushed,
}

impl std::fmt::Display for Detection {
    /// The mode's name, as in status pages and logs ([`Detection::name`]).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Detection {
    /// Default time a failing read waits before it is retried and, if it still fails, reported
    /// (the builders' `quiet_period`).
    pub const DEFAULT_QUIET_PERIOD: Duration = Duration::from_millis(200);
    /// The longest quiet period taken (a longer one is capped).
    pub const MAX_QUIET_PERIOD: Duration = Duration::from_secs(3600);
    /// The longest poll interval or on-handshake TTL taken (a longer one is capped).
    pub const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Default TTL of [`Detection::OnHandshake`] checks.
    pub const DEFAULT_ON_HANDSHAKE_TTL: Duration = Duration::from_secs(1);
    /// Default interval of [`Detection::Poll`].
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);

    /// The same mode with its interval capped at [`MAX_INTERVAL`].
    pub(crate) fn capped(self) -> Detection {
        match self {
            Detection::Poll { interval } => Detection::Poll {
                interval: interval.min(MAX_INTERVAL),
            },
            Detection::OnHandshake { ttl } => Detection::OnHandshake {
                ttl: ttl.min(MAX_INTERVAL),
            },
            // Files are only read when asked: nothing pushes to a file credential.
            Detection::Pushed => Detection::Manual,
            other => other,
        }
    }

    /// The mode's name as shown in status and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Detection::Watch => "watch",
            Detection::Poll { .. } => "poll",
            Detection::OnHandshake { .. } => "on-handshake",
            Detection::Manual => "manual",
            Detection::Pushed => "pushed",
        }
    }
}

pub(crate) const MAX_INTERVAL: Duration = Detection::MAX_INTERVAL;

/// `now + d`, saturating far in the future instead of overflowing.
pub(crate) fn later(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(MAX_INTERVAL))
        .unwrap_or(now)
}

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the detector thread needs from a credential.
pub(crate) trait Target: Send + Sync {
    fn paths(&self) -> Vec<PathBuf>;
    /// Announces expiry events when due; when the next one is due.
    fn check_expiry(&self) -> Option<std::time::SystemTime>;
    fn attempt(&self, report: bool) -> Attempt;
    /// An attempt unless another one is running (then `None`, without waiting).
    fn try_attempt(&self, report: bool) -> Option<Attempt>;
    /// The credential's name, for thread names and logs.
    fn name(&self) -> String;
    fn is_failing(&self) -> bool;
}

impl<L: Load> Target for Reloading<L> {
    fn paths(&self) -> Vec<PathBuf> {
        Reloading::paths(self)
    }
    fn attempt(&self, report: bool) -> Attempt {
        Reloading::attempt(self, report)
    }
    fn try_attempt(&self, report: bool) -> Option<Attempt> {
        Reloading::try_attempt(self, report)
    }
    fn name(&self) -> String {
        self.name.clone()
    }
    fn is_failing(&self) -> bool {
        Reloading::is_failing(self)
    }
    fn check_expiry(&self) -> Option<std::time::SystemTime> {
        Reloading::check_expiry(self)
    }
}

pub(crate) enum Msg {
    Fs(notify::Result<notify::Event>),
    Stop,
}

/// The background thread of one handle; stops (and is joined) when dropped.
pub(crate) struct Detector {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector").finish_non_exhaustive()
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if thread::current().id() != self.thread_id {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// Per-credential bookkeeping of the detector thread.
pub(crate) struct Tracked {
    pub(crate) target: Weak<dyn Target>,
    /// When to attempt again, and whether that attempt reports its failure.
    pub(crate) retry_at: Option<(Instant, bool)>,
    pub(crate) backoff: Duration,
    pub(crate) stamps: Vec<Option<FileStamp>>,
    /// When the next expiry announcement is due (`None`: to be computed).
    pub(crate) expiry_due: Option<Instant>,
}

impl Tracked {
    /// Attempts a reload now; schedules what follows.
    pub(crate) fn attempt(&mut self, report: bool, quiet: Duration) -> Option<Attempt> {
        let target = self.target.upgrade()?;
        // Stamps taken before reading: a file replaced while the attempt runs then differs
        // from them, and the next poll looks again (taken after, it would be lost).
        let before = stamps(&target.paths());
        let result = target.attempt(report);
        self.stamps = before;
        self.expiry_due = None;
        match &result {
            Attempt::Unchanged | Attempt::Reloaded(_) => {
                self.retry_at = None;
                self.backoff = Duration::from_secs(1);
            }
            Attempt::Failed {
                reported: false, ..
            } => {
                self.retry_at = Some((later(quiet), true));
            }
            Attempt::Failed { reported: true, .. } => {
                self.retry_at = Some((later(self.backoff), true));
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
        Some(result)
    }

    /// A writer is busy on one of the files: look once it has been quiet.
    pub(crate) fn defer(&mut self, quiet: Duration) {
        let at = later(quiet);
        match self.retry_at {
            Some((t, _)) if t <= at => {}
            _ => self.retry_at = Some((at, true)),
        }
    }
}

/// Starts the detector thread for `targets`, or nothing for [`Detection::Manual`].
pub(crate) fn spawn(
    detection: Detection,
    quiet: Duration,
    targets: Vec<Weak<dyn Target>>,
    thread_name: String,
) -> Result<Option<Detector>, crate::Error> {
    if matches!(
        detection,
        Detection::Manual | Detection::OnHandshake { .. } | Detection::Pushed
    ) {
        return Ok(None);
    }
    let (tx, rx) = mpsc::channel();
    let tracked: Vec<Tracked> = targets
        .into_iter()
        .map(|target| {
            let stamps = target
                .upgrade()
                .map(|t| stamps(&t.paths()))
                .unwrap_or_default();
            Tracked {
                target,
                retry_at: None,
                backoff: Duration::from_secs(1),
                stamps,
                expiry_due: None,
            }
        })
        .collect();
    let thread = match detection {
        Detection::Watch => {
            let mut state = watch::WatchState::new(tx.clone(), tracked, quiet)?;
            thread::Builder::new()
                .name(thread_name)
                .spawn(move || state.run(rx))
        }
        Detection::Poll { interval } => thread::Builder::new()
            .name(thread_name)
            .spawn(move || poll_loop(rx, tracked, interval, quiet)),
        Detection::Manual | Detection::OnHandshake { .. } | Detection::Pushed => return Ok(None),
    }
    .map_err(|source| crate::Error::DetectorThread { source })?;
    let thread_id = thread.thread().id();
    Ok(Some(Detector {
        tx,
        thread: Some(thread),
        thread_id,
    }))
}

/// The earliest retry or expiry announcement among `tracked`, capped at `cap`; announces
/// the expiry events that are due now (each credential's next one is cached, so an idle
/// credential costs a comparison).
pub(crate) fn next_deadline(tracked: &mut [Tracked], cap: Instant) -> Instant {
    let now = Instant::now();
    let mut deadline = cap;
    for t in tracked.iter_mut() {
        if t.expiry_due.is_none_or(|due| due <= now) {
            let next = t.target.upgrade().and_then(|target| target.check_expiry());
            // A little after the moment, so that it is due when we wake; far away if none.
            t.expiry_due = Some(match next {
                Some(at) => {
                    let wait = at
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default();
                    later(wait.saturating_add(Duration::from_millis(5)))
                }
                None => later(Duration::from_secs(3600)),
            });
        }
        if let Some(due) = t.expiry_due {
            deadline = deadline.min(due);
        }
        if let Some((at, _)) = t.retry_at {
            deadline = deadline.min(at);
        }
    }
    deadline
}

/// Runs every retry that is due; returns the indices of the credentials reloaded.
pub(crate) fn run_due(tracked: &mut [Tracked], quiet: Duration) -> Vec<usize> {
    let now = Instant::now();
    let mut reloaded = Vec::new();
    for (i, t) in tracked.iter_mut().enumerate() {
        if let Some((at, report)) = t.retry_at {
            if at <= now {
                t.retry_at = None;
                if let Some(Attempt::Reloaded(_)) = t.attempt(report, quiet) {
                    reloaded.push(i);
                }
            }
        }
    }
    reloaded
}

/// Waits for `deadline` or a message; `false` when the thread must stop.
pub(crate) fn wait(rx: &Receiver<Msg>, deadline: Instant) -> Result<Option<Msg>, ()> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(timeout) {
        Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => Err(()),
        Ok(msg) => Ok(Some(msg)),
        Err(RecvTimeoutError::Timeout) => Ok(None),
    }
}

fn poll_loop(rx: Receiver<Msg>, mut tracked: Vec<Tracked>, interval: Duration, quiet: Duration) {
    let mut next_poll = later(jittered(interval));
    loop {
        let deadline = next_deadline(&mut tracked, next_poll);
        match wait(&rx, deadline) {
            Err(()) => return,
            Ok(Some(_)) => continue,
            Ok(None) => {}
        }
        run_due(&mut tracked, quiet);
        if Instant::now() >= next_poll {
            next_poll = later(jittered(interval));
            for t in tracked.iter_mut() {
                let Some(target) = t.target.upgrade() else {
                    continue;
                };
                let now_stamps = stamps(&target.paths());
                if now_stamps != t.stamps || target.is_failing() {
                    t.attempt(false, quiet);
                }
            }
        }
        tracked.retain(|t| t.target.strong_count() > 0);
        if tracked.is_empty() {
            return;
        }
    }
}

/// `interval` ±10%, random per call so that a fleet started together drifts apart.
pub(crate) fn jittered(interval: Duration) -> Duration {
    let interval = interval.min(MAX_INTERVAL);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    let r = (h.finish() % 2001) as f64 / 1000.0 - 1.0; // -1.0 ..= 1.0
    interval.mul_f64(1.0 + 0.1 * r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushed_means_manual_for_files_and_names_show_in_status() {
        // A file credential has nothing that pushes: given `Pushed`, it waits for `reload()`.
        assert_eq!(Detection::Pushed.capped(), Detection::Manual);
        assert_eq!(Detection::Pushed.to_string(), "pushed");
        assert_eq!(
            Detection::OnHandshake {
                ttl: Detection::DEFAULT_ON_HANDSHAKE_TTL
            }
            .to_string(),
            "on-handshake"
        );
        assert_eq!(
            Detection::Poll {
                interval: Duration::MAX
            }
            .capped(),
            Detection::Poll {
                interval: Detection::MAX_INTERVAL
            }
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_varies() {
        let base = Duration::from_secs(10);
        let samples: Vec<Duration> = (0..200).map(|_| jittered(base)).collect();
        assert!(samples
            .iter()
            .all(|d| *d >= Duration::from_secs(9) && *d <= Duration::from_secs(11)));
        let first = samples[0];
        assert!(samples.iter().any(|d| *d != first), "jitter never varied");
    }
}
