//! Part 7: the SNI resolver's cost with 1, 100 and 10,000 identities.
//!
//! `ServerIdentities::resolve(server_name, schemes)` is exactly what the rustls resolver
//! (`identities.resolver()`) does per handshake: one atomic load of the precomputed index, one
//! hash lookup (two for a wildcard), the pick among the candidates for that name. It is
//! measured for an exact hit, a wildcard hit (`x.wN.example.test` ← `*.wN.example.test`), a
//! miss (unknown name → default identity) and no SNI (→ default identity).
//!
//! Baseline: what a static SNI map costs, a `HashMap<String, Arc<CertifiedKey>>` lookup of the
//! exact name plus the `Arc` clone (rustls's `ResolvesServerCertUsingSni` needs a
//! `ClientHello`, which cannot be built outside rustls). Every lookup's result is dropped.
//!
//! The names looked up cycle through 1,024 different identities (all of them when fewer), so
//! the hash tables are not read from one hot cache line. Variants are interleaved in rounds
//! (order rotated each round); figures are medians of rounds, ratios medians of per-round
//! ratios. Identities: one P-256 key shared by all leaves (see [`crate::many`]), loaded with
//! `Detection::Manual` (detection plays no part in `resolve`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use hitless::{Detection, ServerIdentities};
use rustls::sign::CertifiedKey;
use serde_json::json;

use crate::common::{init_provider, interleave, median, min_max, ratios};
use crate::many::{exact_name, unknown_name, wildcard_host, Tree, CLIENT_SCHEMES};
use crate::{instructions, Outcome, Settings, Target};

/// The lookups measured: the baseline first.
pub const CASES: [&str; 5] = [
    "HashMap::get + Arc::clone (static map)",
    "resolve: exact name",
    "resolve: wildcard name",
    "resolve: unknown name -> default",
    "resolve: no SNI -> default",
];

/// `--op` names of the cases, for callgrind.
pub const OP_NAMES: [&str; 5] = [
    "sni-map",
    "sni-exact",
    "sni-wildcard",
    "sni-miss",
    "sni-none",
];

/// Names cycled through per case.
const NAMES: usize = 1024;

/// One set of identities and the names to look up in it.
pub struct SniSubjects {
    pub n: usize,
    pub identities: ServerIdentities,
    map: HashMap<String, Arc<CertifiedKey>>,
    /// Member index of each looked-up name.
    members: Vec<usize>,
    exact: Vec<String>,
    wildcard: Vec<String>,
    unknown: Vec<String>,
}

impl SniSubjects {
    /// Loads the first `n` identities of `tree` and prepares the names.
    pub fn new(tree: &Tree, n: usize) -> SniSubjects {
        init_provider();
        let identities = tree
            .identities(n, Detection::Manual)
            .expect("load identities");
        let mut map = HashMap::with_capacity(n);
        for (i, (_, snap)) in identities.members().into_iter().enumerate() {
            let snap = snap.expect("identity loaded");
            // A CertifiedKey of the map's own, not shared with the identity's snapshot.
            let k = snap.value.certified_key();
            map.insert(
                exact_name(i),
                Arc::new(CertifiedKey::new(k.cert.clone(), k.key.clone())),
            );
        }
        // Spread over the set: a multiplicative walk, deterministic.
        let members: Vec<usize> = (0..NAMES).map(|k| (k * 7919 + 13) % n).collect();
        SniSubjects {
            n,
            identities,
            map,
            exact: members.iter().map(|&i| exact_name(i)).collect(),
            wildcard: members.iter().map(|&i| wildcard_host(i)).collect(),
            unknown: members.iter().map(|&i| unknown_name(i)).collect(),
            members,
        }
    }

    /// Checks every name of every case resolves to the right leaf; a list of problems.
    pub fn check(&self, tree: &Tree) -> Vec<String> {
        let mut problems = Vec::new();
        let leaf =
            |k: Option<Arc<CertifiedKey>>| k.map(|k| k.end_entity_cert().map(|c| c.to_vec()));
        let default = &tree.ders[0];
        for (k, &i) in self.members.iter().enumerate() {
            let want = &tree.ders[i];
            for (case, name, want) in [
                (1, Some(self.exact[k].as_str()), want),
                (2, Some(self.wildcard[k].as_str()), want),
                (3, Some(self.unknown[k].as_str()), default),
                (4, None, default),
            ] {
                match leaf(self.identities.resolve(name, &CLIENT_SCHEMES)) {
                    Some(Ok(der)) if der == *want => {}
                    other => problems.push(format!(
                        "sni {} identities, {} {name:?}: wrong or no identity ({})",
                        self.n,
                        CASES[case],
                        if other.is_none() {
                            "none"
                        } else {
                            "another leaf"
                        }
                    )),
                }
            }
            match self.map.get(&self.exact[k]) {
                Some(c)
                    if c.end_entity_cert()
                        .is_ok_and(|d| d.as_ref() == want.as_slice()) => {}
                _ => problems.push(format!(
                    "sni baseline map: wrong entry for {}",
                    self.exact[k]
                )),
            }
        }
        problems.truncate(5);
        problems
    }

    /// Runs case `op` `iters` times (the function callgrind counts: `*run_sni_op*`).
    #[inline(never)]
    pub fn run_sni_op(&self, op: usize, iters: u64) {
        let ids = &self.identities;
        let s = &CLIENT_SCHEMES[..];
        match op {
            0 => {
                for k in 0..iters as usize {
                    let name = black_box(self.exact[k % NAMES].as_str());
                    black_box(black_box(&self.map).get(name).cloned());
                }
            }
            1 => {
                for k in 0..iters as usize {
                    let name = black_box(self.exact[k % NAMES].as_str());
                    black_box(black_box(ids).resolve(Some(name), s));
                }
            }
            2 => {
                for k in 0..iters as usize {
                    let name = black_box(self.wildcard[k % NAMES].as_str());
                    black_box(black_box(ids).resolve(Some(name), s));
                }
            }
            3 => {
                for k in 0..iters as usize {
                    let name = black_box(self.unknown[k % NAMES].as_str());
                    black_box(black_box(ids).resolve(Some(name), s));
                }
            }
            _ => {
                for _ in 0..iters {
                    black_box(black_box(ids).resolve(None, s));
                }
            }
        }
    }
}

/// ns/op per round for each case.
fn measure(subjects: &SniSubjects, settings: &Settings) -> Vec<Vec<f64>> {
    let iters = settings.sni_iters;
    for op in 0..CASES.len() {
        subjects.run_sni_op(op, iters / 5 + 1);
    }
    interleave(CASES.len(), settings.rounds, |op| {
        let start = Instant::now();
        subjects.run_sni_op(op, iters);
        start.elapsed().as_nanos() as f64 / iters as f64
    })
}

/// For `--op sni-*`: runs case `op` on `n` identities `iters` times.
pub fn run_one_op(op: &str, n: usize, iters: u64) -> Result<String, String> {
    let case = OP_NAMES
        .iter()
        .position(|o| *o == op)
        .ok_or_else(|| format!("unknown --op {op:?}"))?;
    let tree = Tree::generate(n.max(1));
    let subjects = SniSubjects::new(&tree, n.max(1));
    subjects.run_sni_op(case, iters);
    Ok(format!("{} x {iters} on {n} identities", CASES[case]))
}

/// Runs part 7 and formats it.
pub fn run(settings: &Settings) -> Outcome {
    let mut out = Outcome::default();
    let largest = settings.sni_counts.iter().copied().max().unwrap_or(1);
    let tree = Tree::generate(largest);
    let mut t = String::new();
    let _ = writeln!(
        t,
        "7. SNI resolver: ServerIdentities::resolve() (= the rustls resolver's work per handshake)\n   \
         {} lookups per round, {} rounds, names cycling over {} identities; ns/op = median [min-max];\n   \
         /map = median of per-round ratios to a static HashMap<String, Arc<CertifiedKey>> lookup + clone.\n   \
         Set-up: {} certificates issued in {:.2} s (one shared P-256 key), written in {:.2} s",
        settings.sni_iters,
        settings.rounds,
        NAMES.min(largest),
        largest,
        tree.issue_s,
        tree.write_s
    );
    let _ = writeln!(
        t,
        "   {:>10} {:<40} {:>8} {:>19} {:>8} {:>9}",
        "identities", "lookup (+ drop)", "ns/op", "[min - max]", "/map", "load s"
    );
    let mut js = Vec::new();
    for &n in &settings.sni_counts {
        let started = Instant::now();
        let subjects = SniSubjects::new(&tree, n);
        let load_s = started.elapsed().as_secs_f64();
        out.problems.extend(subjects.check(&tree));
        let per = measure(&subjects, settings);
        let mut cases = Vec::new();
        for (op, name) in CASES.iter().enumerate() {
            let med = median(&per[op]);
            let (lo, hi) = min_max(&per[op]);
            let ratio = median(&ratios(&per[op], &per[0]));
            let _ = writeln!(
                t,
                "   {:>10} {:<40} {:>8.2} {:>19} {:>8.2} {:>9}",
                n,
                name,
                med,
                format!("[{lo:.2} - {hi:.2}]"),
                ratio,
                if op == 0 {
                    format!("{load_s:.2}")
                } else {
                    String::new()
                },
            );
            if op > 0 && n == largest {
                out.targets.push(Target::at_most(
                    format!("sni {n} identities, {name}"),
                    med,
                    1000.0,
                    "ns",
                ));
            }
            cases.push(json!({
                "lookup": name, "ns_per_op_median": med, "ns_per_op_rounds": per[op],
                "ratio_to_map_median": ratio,
            }));
        }
        js.push(json!({ "identities": n, "load_s": load_s, "cases": cases }));
    }
    let _ = writeln!(
        t,
        "   load s: ServerIdentities::builder()...build() for that many identities (read, parse, load key, index)."
    );

    // Instruction counts, when valgrind is there (noise-free; set-up is not counted).
    let mut instr = Vec::new();
    if settings.sni_instr_iters > 0 && instructions::available() {
        let _ = writeln!(
            t,
            "   instructions per lookup (callgrind, {} lookups each, *run_sni_op* only):",
            settings.sni_instr_iters
        );
        let _ = write!(t, "   {:>10}", "identities");
        for c in OP_NAMES {
            let _ = write!(t, " {c:>13}");
        }
        let _ = writeln!(t);
        for &n in &settings.sni_instr_counts {
            let _ = write!(t, "   {n:>10}");
            let mut row = Vec::new();
            for op in OP_NAMES {
                let iters = settings.sni_instr_iters.to_string();
                let ns = n.to_string();
                match instructions::count(
                    "*run_sni_op*",
                    &["--op", op, "--identities", &ns, "--iters", &iters],
                ) {
                    Ok(c) => {
                        let per = c as f64 / settings.sni_instr_iters as f64;
                        let _ = write!(t, " {per:>13.1}");
                        row.push(json!({ "op": op, "instructions_per_op": per }));
                    }
                    Err(e) => {
                        let _ = write!(t, " {:>13}", "error");
                        out.problems.push(format!("sni instructions {op} {n}: {e}"));
                    }
                }
            }
            let _ = writeln!(t);
            instr.push(json!({ "identities": n, "ops": row }));
        }
    } else if settings.sni_instr_iters > 0 {
        let _ = writeln!(
            t,
            "   instructions per lookup: skipped (valgrind is not installed)"
        );
    }
    out.text = t;
    out.json = json!({
        "iterations_per_round": settings.sni_iters,
        "rounds": settings.rounds,
        "names_cycled": NAMES.min(largest),
        "issue_s": tree.issue_s,
        "sets": js,
        "instructions": instr,
    });
    out
}
