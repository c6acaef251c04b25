//! Part 8: scale. Many identities in one directory tree, `ServerIdentities` in watch mode:
//!
//! - load time, RSS, threads and descriptors after loading (one detector thread for all);
//! - the time to pick up ONE changed file among them: t0 just before the `rename(2)` of a new
//!   bundle for one member (`write_atomic`'s steps), until `resolve(that member's name)`
//!   returns the new leaf (the index is rebuilt by then: what the next handshake gets);
//! - that only that identity was re-read: every member's `Status::reloads_ok` and
//!   `last_check` are compared before and after each change; only the changed member's may
//!   move.
//!
//! Layout: `<root>/id<i>/identity.pem`, one directory per identity (one inotify watch each),
//! as with one Kubernetes Secret or one certbot lineage per site. Measured for a small set and
//! for the full count, so that what grows with the set size shows.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime};

use hitless::{Detection, ServerIdentities};
use serde_json::json;

use crate::common::{init_provider, median, open_fds, percentile, rss_kib, threads, Rng};
use crate::many::{exact_name, Tree, CLIENT_SCHEMES};
use crate::rotation::rename_timed;
use crate::{Outcome, Settings, Target};

/// What one set size gave.
#[derive(Debug, Clone, Default)]
pub struct Scale {
    pub identities: usize,
    pub issue_s: f64,
    pub write_s: f64,
    pub load_s: f64,
    /// The same load with `Detection::Manual` (no watches, no detector thread).
    pub load_manual_s: f64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub threads_before: usize,
    pub threads_after: usize,
    /// Names of the threads that appeared with the set.
    pub new_threads: Vec<String>,
    pub fds_before: usize,
    pub fds_after: usize,
    /// ms from the rename to `resolve` returning the new leaf, per change seen.
    pub pickup_ms: Vec<f64>,
    /// Changes not seen within the timeout.
    pub missed: usize,
    /// Per change: members whose `last_check` moved.
    pub last_check_moved: Vec<usize>,
    /// Per change: members whose `reloads_ok` moved.
    pub reloads_moved: Vec<usize>,
    /// Changes where a member other than the changed one moved, or the changed one did not
    /// get exactly one more successful reload.
    pub wrong: Vec<String>,
}

fn thread_names() -> HashMap<String, String> {
    std::fs::read_dir("/proc/self/task")
        .map(|d| {
            d.flatten()
                .filter_map(|t| {
                    let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
                    Some((
                        t.file_name().to_string_lossy().into_owned(),
                        comm.trim_end().to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

type Marks = Vec<(u64, Option<SystemTime>, u64)>;

fn marks(ids: &ServerIdentities) -> Marks {
    ids.members()
        .into_iter()
        .map(|(s, _)| (s.reloads_ok, s.last_check, s.generation))
        .collect()
}

fn leaf_of(ids: &ServerIdentities, name: &str) -> Option<Vec<u8>> {
    let k = ids.resolve(Some(name), &CLIENT_SCHEMES)?;
    k.end_entity_cert().ok().map(|c| c.to_vec())
}

/// Generates `n` identities, loads them, then makes `changes` single-file changes.
pub fn measure(n: usize, changes: usize) -> Scale {
    init_provider();
    let n = n.max(2);
    let mut tree = Tree::generate(n);
    let mut s = Scale {
        identities: n,
        issue_s: tree.issue_s,
        write_s: tree.write_s,
        ..Scale::default()
    };
    let threads_before = thread_names();
    s.rss_before_kib = rss_kib();
    s.threads_before = threads();
    s.fds_before = open_fds();
    let t = Instant::now();
    let ids = tree
        .identities(n, Detection::Watch)
        .expect("load identities");
    s.load_s = t.elapsed().as_secs_f64();
    s.rss_after_kib = rss_kib();
    s.fds_after = open_fds();
    // A new thread names itself once it runs: give it the time to, then list them.
    std::thread::sleep(Duration::from_millis(50));
    s.threads_after = threads();
    s.new_threads = thread_names()
        .into_iter()
        .filter(|(tid, _)| !threads_before.contains_key(tid))
        .map(|(_, name)| name)
        .collect();
    s.new_threads.sort();

    let mut rng = Rng::seeded();
    for k in 0..changes {
        let m = 1 + (rng.next_u64() as usize) % (n - 1);
        let (bundle, der) = tree.pki.bundle(m);
        let name = exact_name(m);
        let before = marks(&ids);
        let t0 = rename_timed(&tree.paths[m], &bundle);
        let deadline = t0 + Duration::from_secs(5);
        let mut seen = None;
        while Instant::now() < deadline {
            if leaf_of(&ids, &name).as_deref() == Some(der.as_slice()) {
                seen = Some(t0.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        match seen {
            Some(d) => s.pickup_ms.push(d.as_secs_f64() * 1e3),
            None => s.missed += 1,
        }
        tree.ders[m] = der;
        // Let anything else this change triggers land before comparing.
        std::thread::sleep(Duration::from_millis(20) + rng.below(Duration::from_millis(10)));
        let after = marks(&ids);
        let checked: Vec<usize> = (0..n).filter(|&i| before[i].1 != after[i].1).collect();
        let reloaded: Vec<usize> = (0..n).filter(|&i| before[i].0 != after[i].0).collect();
        if checked.iter().any(|&i| i != m) || reloaded != [m] || after[m].0 != before[m].0 + 1 {
            s.wrong.push(format!(
                "change {k} of member {m}: last_check moved for {} members (first {:?}), \
                 reloads_ok for {:?}",
                checked.len(),
                checked.iter().take(5).collect::<Vec<_>>(),
                reloaded.iter().take(5).collect::<Vec<_>>()
            ));
        }
        s.last_check_moved.push(checked.len());
        s.reloads_moved.push(reloaded.len());
    }
    // Every member still serves what its file holds.
    for (i, want) in tree.ders.iter().enumerate() {
        if leaf_of(&ids, &exact_name(i)).as_deref() != Some(want.as_slice()) {
            s.wrong
                .push(format!("member {i} does not serve its file's leaf"));
            break;
        }
    }
    drop(ids);
    // The same set loaded without watching (Detection::Manual): what the watches cost at load.
    let t = Instant::now();
    let manual = tree
        .identities(n, Detection::Manual)
        .expect("load identities");
    s.load_manual_s = t.elapsed().as_secs_f64();
    drop(manual);
    s
}

/// Runs part 8 and formats it.
pub fn run(settings: &Settings) -> Outcome {
    let mut out = Outcome::default();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "8. Scale: N identities in one tree (<root>/id<i>/identity.pem: one directory per identity),\n   \
         ServerIdentities in watch mode; {} single-file changes per set (rename of a new bundle for\n   \
         one random member, then until resolve(its name) returns the new leaf)",
        settings.scale_changes
    );
    let _ = writeln!(
        t,
        "   {:>10} {:>8} {:>9} {:>9} {:>10} {:>8} {:>6} {:>9} {:>9} {:>9} {:>7} {:>12}",
        "identities",
        "issue s",
        "load s",
        "manual s",
        "RSS +MiB",
        "threads",
        "fds",
        "p50 ms",
        "p99 ms",
        "max ms",
        "missed",
        "last_check"
    );
    let mut js = Vec::new();
    let mut sizes = vec![settings.scale_small, settings.scale_identities];
    sizes.dedup();
    for n in sizes {
        eprintln!("[hitless-bench] scale: {n} identities...");
        let s = measure(n, settings.scale_changes);
        let growth = s.rss_after_kib.saturating_sub(s.rss_before_kib) as f64 / 1024.0;
        let p50 = median(&s.pickup_ms);
        let p99 = percentile(&s.pickup_ms, 99.0);
        let max = s.pickup_ms.iter().copied().fold(0.0, f64::max);
        let only_one = s.last_check_moved.iter().filter(|&&c| c == 1).count();
        let _ = writeln!(
            t,
            "   {:>10} {:>8.2} {:>9.2} {:>9.2} {:>10.1} {:>8} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>7} {:>12}",
            n,
            s.issue_s,
            s.load_s,
            s.load_manual_s,
            growth,
            format!("{}->{}", s.threads_before, s.threads_after),
            format!("+{}", s.fds_after as i64 - s.fds_before as i64),
            p50,
            p99,
            max,
            s.missed,
            format!("1 in {}/{}", only_one, s.last_check_moved.len()),
        );
        let _ = writeln!(
            t,
            "   {:>10} RSS {} -> {} KiB ({:.1} KiB per identity); new threads: {}",
            "",
            s.rss_before_kib,
            s.rss_after_kib,
            growth * 1024.0 / n as f64,
            if s.new_threads.is_empty() {
                "none".into()
            } else {
                s.new_threads.join(", ")
            }
        );
        let _ = writeln!(
            t,
            "   {:>10} members whose last_check moved per change: max {}; whose reloads_ok moved: max {}",
            "",
            s.last_check_moved.iter().max().copied().unwrap_or(0),
            s.reloads_moved.iter().max().copied().unwrap_or(0),
        );
        if s.missed > 0 {
            out.problems.push(format!(
                "scale {n}: {} changes not picked up in 5 s",
                s.missed
            ));
        }
        out.problems
            .extend(s.wrong.iter().take(5).map(|w| format!("scale {n}: {w}")));
        if n == settings.scale_identities {
            out.targets.push(Target::at_most(
                format!("scale {n} identities: pick up one change p50"),
                p50,
                1.0,
                "ms",
            ));
            out.targets.push(Target::at_most(
                format!("scale {n} identities: pick up one change p99"),
                p99,
                10.0,
                "ms",
            ));
        }
        js.push(json!({
            "identities": n,
            "layout": "one directory per identity: <root>/id<i>/identity.pem",
            "issue_s": s.issue_s, "write_s": s.write_s, "load_s": s.load_s, "load_manual_s": s.load_manual_s,
            "rss_before_kib": s.rss_before_kib, "rss_after_kib": s.rss_after_kib,
            "threads_before": s.threads_before, "threads_after": s.threads_after,
            "new_threads": s.new_threads,
            "fds_before": s.fds_before, "fds_after": s.fds_after,
            "pickup_ms": s.pickup_ms, "pickup_p50_ms": p50, "pickup_p99_ms": p99, "pickup_max_ms": max,
            "missed": s.missed,
            "last_check_moved_per_change": s.last_check_moved,
            "reloads_ok_moved_per_change": s.reloads_moved,
            "problems": s.wrong,
        }));
    }
    let _ = writeln!(
        t,
        "   issue s: signing the certificates (benchmark set-up, not hitless); load s: builder().build()\n   \
         in watch mode (read, parse, load every key, build the index, watch every directory); manual s:\n   \
         the same build with Detection::Manual (no watches), after the watched set was dropped;\n   \
         RSS +MiB: RSS after the watched build minus before; threads/fds: process totals before -> after\n   \
         the build; new threads: their names (15 characters, as the kernel keeps them);\n   \
         p50/p99/max: from the rename to resolve(name) returning the new leaf; last_check: changes\n   \
         after which exactly one member's last_check had moved (the changed one)"
    );
    out.text = t;
    out.json = json!({ "changes": settings.scale_changes, "sets": js });
    out
}
