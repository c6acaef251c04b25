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

use std::collections::HashSet;
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
    tracked: Vec<Tracked>,
    /// For each tracked credential, every path whose change matters (files and symlink hops).
    related: Vec<HashSet<PathBuf>>,
    watched: HashSet<PathBuf>,
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
            path: PathBuf::from("."),
            reason: e.to_string(),
        })?;
        let mut state = WatchState {
            watcher,
            related: Vec::new(),
            tracked,
            watched: HashSet::new(),
            quiet,
            rewatch_at: None,
        };
        state.rewatch();
        Ok(state)
    }

    /// Recomputes what to watch from the current symlink chains; adds and removes watches.
    fn rewatch(&mut self) {
        self.related = self
            .tracked
            .iter()
            .map(|t| {
                t.target
                    .upgrade()
                    .map(|target| {
                        target
                            .paths()
                            .iter()
                            // Absolute, so that event paths (absolute, as the watched
                            // directory is) compare equal to a relative path given by the user.
                            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
                            .flat_map(|p| symlink_chain(&p))
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        let wanted: HashSet<PathBuf> = self
            .related
            .iter()
            .flatten()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d
                }
            })
            .collect();
        let mut missing = false;
        for dir in wanted.difference(&self.watched.clone()) {
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                }
                Err(e) => {
                    missing = true;
                    tracing::debug!(dir = %dir.display(), "cannot watch yet: {e}");
                }
            }
        }
        for dir in self.watched.clone().difference(&wanted) {
            let _ = self.watcher.unwatch(dir);
            self.watched.remove(dir);
        }
        self.rewatch_at = missing.then(|| Instant::now() + REWATCH_EVERY);
    }

    pub(crate) fn run(&mut self, rx: Receiver<Msg>) {
        loop {
            let cap = self
                .rewatch_at
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let deadline = next_deadline(&self.tracked, cap);
            let msg = match wait(&rx, deadline) {
                Err(()) => return,
                Ok(m) => m,
            };
            let mut changed = false;
            if let Some(Msg::Fs(ev)) = msg {
                changed |= self.on_event(ev);
                // Drain what is already queued before doing the slow work of rewatching.
                while let Ok(m) = rx.try_recv() {
                    match m {
                        Msg::Stop => return,
                        Msg::Fs(ev) => changed |= self.on_event(ev),
                    }
                }
            }
            changed |= run_due(&mut self.tracked, self.quiet);
            if self.rewatch_at.is_some_and(|t| t <= Instant::now()) {
                // A directory appeared or came back, perhaps: watch it and look at the files
                // (what changed while it was not watched went unseen).
                self.rewatch();
                for t in &mut self.tracked {
                    t.attempt(false, self.quiet);
                }
            } else if changed {
                self.rewatch();
            }
            self.tracked.retain(|t| t.target.strong_count() > 0);
            if self.tracked.is_empty() {
                return;
            }
        }
    }

    /// Handles one notification; `true` when some credential was reloaded (symlinks may have
    /// moved, so the watch set is recomputed).
    fn on_event(&mut self, ev: notify::Result<notify::Event>) -> bool {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("file watcher error, re-reading everything: {e}");
                return self.attempt_all();
            }
        };
        if ev.need_rescan() {
            return self.attempt_all();
        }
        // A watched directory itself went away (deleted, renamed, unmounted): its watch is
        // gone with it. Watch again (or its parent's replacement) as soon as it exists.
        if matches!(
            ev.kind,
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
        ) {
            let lost: Vec<PathBuf> = ev
                .paths
                .iter()
                .filter(|p| self.watched.contains(*p))
                .cloned()
                .collect();
            for dir in lost {
                self.watched.remove(&dir);
                self.rewatch_at = Some(Instant::now());
            }
        }
        enum Action {
            Now,
            Later,
        }
        let action = match ev.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Action::Now,
            EventKind::Access(_) => return false,
            EventKind::Modify(ModifyKind::Data(_)) => Action::Later,
            EventKind::Modify(_) | EventKind::Create(_) | EventKind::Remove(_) => Action::Now,
            EventKind::Any | EventKind::Other => Action::Now,
        };
        let mut reloaded = false;
        for (i, t) in self.tracked.iter_mut().enumerate() {
            let related = &self.related[i];
            if !ev.paths.iter().any(|p| related.contains(p)) {
                continue;
            }
            match action {
                Action::Later => t.defer(self.quiet),
                Action::Now => {
                    if let Some(Attempt::Reloaded(_)) = t.attempt(false, self.quiet) {
                        reloaded = true;
                    }
                }
            }
        }
        reloaded
    }

    fn attempt_all(&mut self) -> bool {
        let mut reloaded = false;
        for t in &mut self.tracked {
            if let Some(Attempt::Reloaded(_)) = t.attempt(false, self.quiet) {
                reloaded = true;
            }
        }
        reloaded
    }
}
