//! Keeps the benchmark from rotting: every part runs with tiny counts and only correctness is
//! asserted (no failed handshake, rotations observed, no leaked descriptor or thread). Speed
//! is never asserted here: a debug build on a shared CI machine says nothing about speed.

use hitless_bench::{
    handshake, memory, requests, resolver, rotation, scale, sni, tcp, Outcome, Settings,
};

fn assert_correct(part: &str, o: &Outcome) {
    assert!(
        o.problems.is_empty(),
        "{part}: {:#?}\n{}",
        o.problems,
        o.text
    );
    assert!(!o.text.is_empty(), "{part}: no text");
    assert!(!o.json.is_null(), "{part}: no json");
}

#[test]
fn handshake_part_runs_and_never_fails_a_handshake() {
    let mut s = Settings::smoke();
    s.key_types = vec![hitless_test_pki::KeyType::EcP256];
    // Long enough for the 100 ms rotator to write at least once in the rotating slots.
    s.slot = std::time::Duration::from_millis(400);
    let results = handshake::measure(&s);
    for r in &results {
        assert_eq!(r.failed, [0, 0, 0], "{r:?}");
        assert!(r.ok.iter().all(|n| *n > 0), "{r:?}");
        assert!(r.rotations_written > 0, "{r:?}");
        assert!(r.leaf_changes_seen > 0, "{r:?}");
    }
    let o = handshake::outcome(&results, "smoke", "in-process", &s);
    assert_correct("handshake", &o);
}

#[test]
fn tcp_part_runs_and_never_fails_a_handshake() {
    let mut s = Settings::smoke();
    s.key_types = vec![hitless_test_pki::KeyType::EcP256];
    s.tcp_slot = std::time::Duration::from_millis(500);
    let o = tcp::run(&s);
    assert_correct("tcp", &o);
}

#[test]
fn resolver_part_runs_and_points_to_the_sni_part() {
    let o = resolver::run(&Settings::smoke());
    assert_correct("resolver", &o);
    assert!(!o.text.contains("TODO"), "{}", o.text);
    assert!(o.text.contains("part 7"), "{}", o.text);
}

#[test]
fn sni_part_resolves_every_case_to_the_right_identity() {
    // 50 identities: exact, wildcard, unknown and no-SNI names are checked against the leaf
    // each must select before anything is timed (problems otherwise).
    let s = Settings::smoke();
    let o = sni::run(&s);
    assert_correct("sni", &o);
    let sets = o.json["sets"].as_array().expect("sets");
    assert_eq!(sets.len(), s.sni_counts.len());
    for set in sets {
        let cases = set["cases"].as_array().expect("cases");
        assert_eq!(cases.len(), sni::CASES.len(), "{set}");
        for c in cases {
            assert_eq!(
                c["ns_per_op_rounds"].as_array().map(Vec::len),
                Some(s.rounds),
                "{c}"
            );
        }
    }
    // One target per resolve case for the largest set (speed is not asserted).
    assert_eq!(o.targets.len(), sni::CASES.len() - 1);
}

#[test]
fn sni_subjects_check_catches_a_wrong_leaf() {
    let tree = hitless_bench::many::Tree::generate(3);
    let subjects = sni::SniSubjects::new(&tree, 3);
    assert!(subjects.check(&tree).is_empty());
    // A tree whose recorded leaves are not the ones served: every check must fail.
    let mut other = hitless_bench::many::Tree::generate(3);
    other.ders.rotate_left(1);
    assert!(!subjects.check(&other).is_empty());
}

#[test]
fn scale_part_picks_up_each_change_and_rereads_only_that_identity() {
    let s = scale::measure(50, 5);
    assert_eq!(s.identities, 50);
    assert_eq!(s.missed, 0, "{s:?}");
    assert!(s.wrong.is_empty(), "{:#?}", s.wrong);
    assert_eq!(s.pickup_ms.len(), 5);
    // Exactly one member (the changed one) was looked at and reloaded per change.
    assert_eq!(s.last_check_moved, vec![1; 5]);
    assert_eq!(s.reloads_moved, vec![1; 5]);
    // Thread counts are process-wide and other tests run in parallel: checked by the real run.
}

#[test]
fn scale_part_runs() {
    let o = scale::run(&Settings::smoke());
    assert_correct("scale", &o);
    assert_eq!(o.json["sets"].as_array().map(Vec::len), Some(2));
}

#[test]
fn rotation_part_observes_every_rotation() {
    let o = rotation::run(&Settings::smoke());
    assert_correct("rotation", &o);
    let series = o.json["series"].as_array().expect("series");
    assert_eq!(series.len(), 4);
    for s in series {
        assert_eq!(s["event_ms"]["count"], 3, "{s}");
        assert_eq!(s["handshake_given_new_leaf_ms"]["count"], 3, "{s}");
        assert_eq!(s["handshake_done_with_new_leaf_ms"]["count"], 3, "{s}");
    }
}

#[test]
fn memory_part_observes_every_rotation() {
    let s = Settings::smoke();
    let m = memory::measure(&s);
    assert_eq!(m.missed, 0);
    assert_eq!(
        m.final_generation,
        (s.memory_rotations + s.memory_warmup) as u64 + 1
    );
    // Descriptor and thread counts are process-wide and the other tests run in parallel
    // threads of this process, so they are checked by the real run, not here.
    assert!(m.samples.len() >= 2);
}

#[test]
fn single_operation_modes_used_under_callgrind_still_run() {
    let exe = env!("CARGO_BIN_EXE_hitless-bench");
    for args in [
        &["--op", "handshake-static", "--iters", "2"][..],
        &["--op", "handshake-hitless", "--iters", "2"],
        &["--op", "hitless-key", "--iters", "100"],
        &["--op", "hitless-config", "--iters", "100"],
        &["--op", "sni-exact", "--identities", "3", "--iters", "100"],
        &["--op", "sni-none", "--iters", "100"],
    ] {
        let out = std::process::Command::new(exe)
            .args(args)
            .output()
            .expect("run hitless-bench");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bad = std::process::Command::new(exe)
        .arg("--bogus")
        .output()
        .expect("run hitless-bench");
    assert_eq!(bad.status.code(), Some(2));
}

/// The requests part's Rust pieces (no Go, no nginx: CI may not have them): the static
/// baseline process and the `hitless serve` process (`target/debug/hitless`, built by
/// `cargo test --workspace`; with `-p hitless-bench` alone, build it first with
/// `cargo build -p hitless-cli`) under the rustls client resuming TLS 1.2 session IDs; then the
/// resumption safety check (TLS 1.2 session IDs and TLS 1.3 tickets) while the identity
/// rotates and the client trust changes.
#[test]
fn requests_part_serves_resumes_and_never_resumes_across_a_change() {
    let mut s = Settings::smoke();
    s.bench_exe = Some(env!("CARGO_BIN_EXE_hitless-bench").into());
    let o = requests::run(&s);
    assert_correct("requests", &o);
    let key = &o.json["keys"][0];
    let modes = key["modes"].as_array().expect("modes");
    assert_eq!(modes.len(), 1, "{}", o.text);
    assert_eq!(modes[0]["mode"], "resumed-tls12-session-ids");
    let servers = modes[0]["servers"].as_array().expect("servers");
    let names: Vec<&str> = servers
        .iter()
        .filter_map(|v| v["server"].as_str())
        .collect();
    assert_eq!(names, ["static", "hitless", "hitless+rotate"]);
    for v in servers {
        assert!(v["requests"].as_u64() > Some(0), "{v}");
        assert_eq!(v["errors"], 0, "{v}");
    }
    // Session IDs resume through both servers.
    for v in &servers[..2] {
        assert!(v["resumed"].as_u64() > Some(0), "{v}");
    }
    let safety = key["safety"].as_array().expect("safety");
    assert_eq!(safety.len(), 2);
    for c in safety {
        assert!(c["rotations"].as_u64() > Some(0), "{c}");
        assert!(c["trust_changes"].as_u64() > Some(0), "{c}");
        assert!(c["checked"].as_u64() > Some(0), "{c}");
        assert_eq!(c["violations"], 0, "{c}");
    }
}
