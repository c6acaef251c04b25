//! `watch` mode: inotify (through `notify`) on the directories that hold a credential's files
//! and symlink hops.
//!
//! Directories, not files, are watched: an atomic writer replaces the file (new inode), and a
//! watch on the old inode would never fire again. Which events matter:
//! - rename, create, delete of a watched path, a `close` after writing, attribute changes:
//!   attempt at once;
//! - data written to a watched path (a writer busy in place): attempt after the quiet period,
//!   unless its `close` comes first;
//! - our own reads (open/close without write) and anything on unrelated files: ignored;
//! - a queue overflow (rescan): attempt every credential.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::{next_deadline, run_due, wait, Msg, Tracked};
use crate::reload::Attempt;
use crate::source::files::symlink_chain;
use crate::Error;

/// How often to try again to watch a directory that does not exist yet.
const REWATCH_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct WatchState {
    watcher: RecommendedWatcher,
    /// The credentials, by stable index (a dropped one stays, dead, until all are dropped).
    tracked: Vec<Tracked>,
    /// For each tracked credential, every path whose change matters (files and symlink hops).
    related: Vec<HashSet<PathBuf>>,
    /// Path → the credentials it matters to: an event costs one lookup per path it names,
    /// whatever the number of credentials.
    by_path: HashMap<PathBuf, Vec<usize>>,
    /// Watched directory → how many related paths live in it.
    dirs: HashMap<PathBuf, usize>,
    /// Directories actually watched (a wanted one may not exist yet).
    watched: HashSet<PathBuf>,
    /// Directories newly wanted since the last `watch_missing`.
    pending: Vec<PathBuf>,
    quiet: Duration,
    rewatch_at: Option<Instant>,
}

impl WatchState {
    pub(crate) fn new(
        tx: Sender<Msg>,
        tracked: Vec<Tracked>,
        quiet: Duration,
    ) -> Result<WatchState, Error> {
        let watcher = notify::recommended_watcher(move |ev| {
            let _ = tx.send(Msg::Fs(ev));
        })
        .map_err(|e| Error::Watch {
            source: Box::new(e),
        })?;
        let mut state = WatchState {
            watcher,
            related: vec![HashSet::new(); tracked.len()],
            tracked,
            by_path: HashMap::new(),
            dirs: HashMap::new(),
            watched: HashSet::new(),
            pending: Vec::new(),
            quiet,
            rewatch_at: None,
        };
        state.refresh_all();
        Ok(state)
    }

    /// The paths that matter to credential `i` now: each file, made absolute (event paths are
    /// absolute, as the watched directory is), and each hop of its symlink chain.
    fn related_now(&self, i: usize) -> HashSet<PathBuf> {
        let Some(target) = self.tracked[i].target.upgrade() else {
            return HashSet::new();
        };
        target
            .paths()
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            .flat_map(|p| symlink_chain(&p))
            .collect()
    }

    /// Recomputes what credential `i` depends on (its symlinks may have moved) and adjusts the
    /// index and the watches for it alone.
    fn refresh(&mut self, i: usize) {
        let new = self.related_now(i);
        if new == self.related[i] {
            return;
        }
        let old = std::mem::replace(&mut self.related[i], new.clone());
        for p in old.difference(&new) {
            if let Some(list) = self.by_path.get_mut(p) {
                list.retain(|&j| j != i);
                if list.is_empty() {
                    self.by_path.remove(p);
                }
            }
            let dir = parent_dir(p);
            if let Some(n) = self.dirs.get_mut(&dir) {
                *n -= 1;
                if *n == 0 {
                    self.dirs.remove(&dir);
                    if self.watched.remove(&dir) {
                        let _ = self.watcher.unwatch(&dir);
                    }
                }
            }
        }
        for p in new.difference(&old) {
            self.by_path.entry(p.clone()).or_default().push(i);
            let count = self.dirs.entry(parent_dir(p)).or_default();
            *count += 1;
            if *count == 1 {
                self.pending.push(parent_dir(p));
            }
        }
    }

    fn refresh_all(&mut self) {
        for i in 0..self.tracked.len() {
            self.refresh(i);
        }
        // Every wanted directory, not only the new ones: some may have been lost.
        self.pending = self
            .dirs
            .keys()
            .filter(|d| !self.watched.contains(*d))
            .cloned()
            .collect();
        self.watch_missing();
    }

    /// Watches the wanted directories not watched yet; retries later those that do not exist.
    fn watch_missing(&mut self) {
        let mut missing = false;
        let wanted: Vec<PathBuf> = std::mem::take(&mut self.pending)
            .into_iter()
            .filter(|d| self.dirs.contains_key(d) && !self.watched.contains(d))
            .collect();
        for dir in wanted {
            match self.watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir);
                }
                Err(e) => {
                    missing = true;
                    tracing::debug!(dir = %dir.display(), "cannot watch yet: {e}");
                    self.pending.push(dir);
                }
            }
        }
        self.rewatch_at = missing.then(|| Instant::now() + REWATCH_EVERY);
    }

    pub(crate) fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let cap = self
                .rewatch_at
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let deadline = next_deadline(&mut self.tracked, cap);
            let msg = match wait(&rx, deadline) {
                Err(()) => return,
                Ok(m) => m,
            };
            let mut reloaded = Vec::new();
            if let Some(Msg::Fs(ev)) = msg {
                self.on_event(ev, &mut reloaded);
                // Drain what is already queued before doing the slower work of refreshing.
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Msg::Stop => return,
                        Msg::Fs(ev) => self.on_event(ev, &mut reloaded),
                    }
                }
            }
            reloaded.extend(run_due(&mut self.tracked, self.quiet));
            if self.rewatch_at.is_some_and(|t| t <= Instant::now()) {
                // A directory appeared or came back, perhaps: watch it and look at the files
                // (what changed while it was not watched went unseen).
                self.refresh_all();
                for t in &mut self.tracked {
                    t.attempt(false, self.quiet);
                }
            } else {
                reloaded.sort_unstable();
                reloaded.dedup();
                for i in reloaded {
                    self.refresh(i);
                }
                if !self.pending.is_empty() {
                    self.watch_missing();
                }
            }
            if self.tracked.iter().all(|t| t.target.strong_count() == 0) {
                return;
            }
        }
    }

    /// Handles one notification; records which credentials were reloaded (their symlinks may
    /// have moved, so what they depend on is recomputed).
    fn on_event(&mut self, ev: notify::Result<notify::Event>, reloaded: &mut Vec<usize>) {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("file watcher error, re-reading everything: {e}");
                self.attempt_all(reloaded);
                return;
            }
        };
        if ev.need_rescan() {
            self.attempt_all(reloaded);
            return;
        }
        // A watched directory itself went away (deleted, renamed, unmounted): its watch is
        // gone with it. Watch again (or its replacement) as soon as it exists.
        if matches!(
            ev.kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        ) {
            for p in &ev.paths {
                if self.watched.remove(p) {
                    self.rewatch_at = Some(Instant::now());
                }
            }
        }
        enum Action {
            Now,
            Later,
        }
        let action = match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Action::Now,
            EventKind::Access(_) => return,
            EventKind::Modify(ModifyKind::Data(_)) => Action::Later,
            EventKind::Modify(_) | EventKind::Create(_) | EventKind::Remove(_) => Action::Now,
            EventKind::Any | EventKind::Other => Action::Now,
        };
        let mut hit: Vec<usize> = ev
            .paths
            .iter()
            .filter_map(|p| self.by_path.get(p))
            .flatten()
            .copied()
            .collect();
        hit.sort_unstable();
        hit.dedup();
        for i in hit {
            let t = &mut self.tracked[i];
            match action {
                Action::Later => t.defer(self.quiet),
                Action::Now => {
                    if let Some(Attempt::Reloaded(_)) = t.attempt(false, self.quiet) {
                        reloaded.push(i);
                    }
                }
            }
        }
    }

    fn attempt_all(&mut self, reloaded: &mut Vec<usize>) {
        for (i, t) in self.tracked.iter_mut().enumerate() {
            if let Some(Attempt::Reloaded(_)) = t.attempt(false, self.quiet) {
                reloaded.push(i);
            }
        }
    }
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
