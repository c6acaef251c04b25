//! Part 5: resident memory, open descriptors and threads across many rotations of one watched
//! identity.
//!
//! Each rotation is an atomic replace (`write_atomic`: temp file, fsync, rename) of the bundle
//! with the next of the pre-generated bundles, then a wait until `status().generation`
//! moves. A warm-up (not counted) lets the allocator and the watcher reach their steady state;
//! then RSS (VmRSS), descriptors (/proc/self/fd) and threads (/proc/self/task) are sampled
//! before, during (every tenth) and after.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use hitless::{Detection, IdentitySource, ReloadingIdentity};
use hitless_test_pki::{write_atomic, KeyType};
use serde_json::json;

use crate::common::{
    hwm_kib, init_provider, is_detector_thread, open_fds, rss_kib, threads, threads_cpu_ns,
    wait_until, Pki,
};
use crate::{Outcome, Settings, Target};

/// One sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rotations: usize,
    pub rss_kib: u64,
    pub fds: usize,
    pub threads: usize,
}

fn sample(rotations: usize) -> Sample {
    Sample {
        rotations,
        rss_kib: rss_kib(),
        fds: open_fds(),
        threads: threads(),
    }
}

/// What part 5 measured.
#[derive(Debug, Clone)]
pub struct Memory {
    pub at_start: Sample,
    pub samples: Vec<Sample>,
    pub rotations: usize,
    pub warmup: usize,
    pub missed: usize,
    pub final_generation: u64,
    pub mean_rotation_ms: f64,
    pub peak_rss_kib: u64,
    /// CPU time of the detector and inotify threads per rotation (ms): one reload.
    pub detector_cpu_ms_per_rotation: f64,
}

impl Memory {
    /// Baseline (after warm-up) and last sample.
    pub fn first_last(&self) -> (Sample, Sample) {
        (self.samples[0], *self.samples.last().expect("samples"))
    }
}

/// Runs part 5.
pub fn measure(settings: &Settings) -> Memory {
    init_provider();
    let pki = Pki::new(KeyType::EcP256);
    let path = pki.dir.path().join("memory.pem");
    write_atomic(&path, &pki.bundles[0]);
    let at_start = sample(0);
    let identity = ReloadingIdentity::builder(IdentitySource::bundle(&path))
        .detection(Detection::Watch)
        .build()
        .expect("identity");
    let mut next = 1;
    let mut missed = 0;
    let mut rotate = |missed: &mut usize| {
        let before = identity.status().generation;
        write_atomic(&path, &pki.bundles[next % pki.bundles.len()]);
        next += 1;
        if !wait_until(Duration::from_secs(5), || {
            identity.status().generation > before
        }) {
            *missed += 1;
        }
    };
    for _ in 0..settings.memory_warmup {
        rotate(&mut missed);
    }
    let detector_before = threads_cpu_ns(is_detector_thread);
    let mut samples = vec![sample(0)];
    let every = (settings.memory_rotations / 10).max(1);
    let start = Instant::now();
    for i in 1..=settings.memory_rotations {
        rotate(&mut missed);
        if i % every == 0 || i == settings.memory_rotations {
            samples.push(sample(i));
        }
    }
    let elapsed = start.elapsed();
    let detector_ns = threads_cpu_ns(is_detector_thread).saturating_sub(detector_before);
    Memory {
        at_start,
        samples,
        rotations: settings.memory_rotations,
        warmup: settings.memory_warmup,
        missed,
        final_generation: identity.status().generation,
        mean_rotation_ms: elapsed.as_secs_f64() * 1e3 / settings.memory_rotations.max(1) as f64,
        peak_rss_kib: hwm_kib(),
        detector_cpu_ms_per_rotation: detector_ns as f64
            / 1e6
            / settings.memory_rotations.max(1) as f64,
    }
}

/// Runs part 5 and formats it.
pub fn run(settings: &Settings) -> Outcome {
    let m = measure(settings);
    let (first, last) = m.first_last();
    let rss_growth = last.rss_kib as i64 - first.rss_kib as i64;
    let fd_growth = last.fds as i64 - first.fds as i64;
    let thread_growth = last.threads as i64 - first.threads as i64;
    let mut out = Outcome::default();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "5. Memory and descriptors: {} rotations of one watched identity (after {} warm-up rotations)",
        m.rotations, m.warmup
    );
    let _ = writeln!(
        t,
        "   {:>10} {:>10} {:>6} {:>8}",
        "rotations", "RSS KiB", "fds", "threads"
    );
    for s in &m.samples {
        let _ = writeln!(
            t,
            "   {:>10} {:>10} {:>6} {:>8}",
            s.rotations, s.rss_kib, s.fds, s.threads
        );
    }
    let _ = writeln!(
        t,
        "   growth: RSS {rss_growth:+} KiB, fds {fd_growth:+}, threads {thread_growth:+}; \
         {:.2} ms per rotation (write + fsync + rename + reload, wall);\n   \
         {:.3} ms of detector CPU per reload; {} missed; peak RSS {} KiB",
        m.mean_rotation_ms, m.detector_cpu_ms_per_rotation, m.missed, m.peak_rss_kib
    );
    out.targets.push(Target::at_most(
        format!("memory: RSS growth over {} rotations", m.rotations),
        rss_growth as f64 / 1024.0,
        2.0,
        "MiB",
    ));
    out.targets.push(Target::zero(
        format!("memory: fd growth over {} rotations", m.rotations),
        fd_growth,
    ));
    if m.missed > 0 {
        out.problems.push(format!(
            "memory: {} of {} rotations were not picked up within 5 s",
            m.missed,
            m.rotations + m.warmup
        ));
    }
    let expected = (m.rotations + m.warmup) as u64 + 1;
    if m.final_generation != expected {
        out.problems.push(format!(
            "memory: generation is {} after {} rotations (expected {expected})",
            m.final_generation,
            m.rotations + m.warmup
        ));
    }
    if thread_growth > 0 {
        out.problems
            .push(format!("memory: {thread_growth} threads leaked"));
    }
    out.text = t;
    out.json = json!({
        "rotations": m.rotations,
        "warmup_rotations": m.warmup,
        "before_identity": { "rss_kib": m.at_start.rss_kib, "fds": m.at_start.fds, "threads": m.at_start.threads },
        "samples": m.samples.iter().map(|s| json!({
            "rotations": s.rotations, "rss_kib": s.rss_kib, "fds": s.fds, "threads": s.threads,
        })).collect::<Vec<_>>(),
        "rss_growth_kib": rss_growth,
        "fd_growth": fd_growth,
        "thread_growth": thread_growth,
        "missed": m.missed,
        "mean_rotation_ms": m.mean_rotation_ms,
        "detector_cpu_ms_per_rotation": m.detector_cpu_ms_per_rotation,
        "peak_rss_kib": m.peak_rss_kib,
    });
    out
}
