//! Fuzz regressions: every input the fuzzer (`fuzz/run.sh`) ever found a crash with is replayed
//! here through the same harness function the fuzz target runs, as a plain `cargo test`.
//! The seed corpora in `fuzz/seeds/` are replayed too, so the harness itself stays honest.
//!
//! To add a crash: copy the input from `fuzz/artifacts/<target>/` to
//! `fuzz/regressions/<target>/<name>` and add a test calling `replay("<target>", "<name>")`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

// The fuzz crate's harness, compiled into this test: the fuzzer and the regression run the
// same code. Not every item is used from here.
#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod harness;

use std::path::PathBuf;

/// A fuzz target's harness function.
type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("authorize", harness::authorize),
    ("authzen", harness::authzen),
    ("grant", harness::grant),
    ("bundle_load", harness::bundle_load),
    ("prover", harness::prover),
];

fn fuzz_dir() -> PathBuf {
    harness::repo_root().join("fuzz")
}

fn target(name: &str) -> Target {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no fuzz target `{name}`"))
}

/// Replays `fuzz/regressions/<target>/<file>`.
#[allow(dead_code)]
fn replay(target_name: &str, file: &str) {
    let path = fuzz_dir().join("regressions").join(target_name).join(file);
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    target(target_name)(&data);
}

/// Every file of `fuzz/<dir>/<target>/`, replayed; returns how many.
fn replay_dir(dir: &str, target_name: &str) -> usize {
    let dir = fuzz_dir().join(dir).join(target_name);
    let Ok(entries) = std::fs::read_dir(&dir) else { return 0 };
    let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
    paths.sort();
    for path in &paths {
        let data = std::fs::read(path).unwrap();
        let run = std::panic::catch_unwind(|| target(target_name)(&data));
        assert!(run.is_ok(), "fuzz target `{target_name}` panics on {}", path.display());
    }
    paths.len()
}

#[test]
fn seed_corpora_and_regressions_replay_without_a_crash() {
    for (name, _) in TARGETS {
        let seeds = replay_dir("seeds", name);
        assert!(seeds > 0, "no seeds for fuzz target `{name}` in fuzz/seeds/{name}/");
        replay_dir("regressions", name);
    }
}

/// The prover target's soundness check has teeth: it passes a pair the prover proves, and
/// fails on a pair where the child exceeds the parent (were the prover ever to say Within).
#[test]
fn soundness_check_accepts_within_and_catches_an_exceeding_child() {
    let fixture = &harness::FIXTURE;
    let bundle = &fixture.snapshot.bundle;
    let child_uid = deputy::agents::agent_uid("child").unwrap();
    let parent = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;
    let within = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#;
    let exceeds = r#"permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");"#;
    for attrs in [0u8, 0x17, 0xff] {
        harness::check_within(
            within,
            parent,
            &bundle.schema,
            &bundle.entities,
            &child_uid,
            attrs,
            attrs % 2 == 0,
        );
    }
    let caught = std::panic::catch_unwind(|| {
        harness::check_within(exceeds, parent, &bundle.schema, &bundle.entities, &child_uid, 0, false);
    });
    assert!(
        caught.is_err(),
        "the soundness check missed a child that exceeds its parent"
    );
    // And the prover agrees with both.
    let mut raw = b"#".to_vec();
    raw.extend_from_slice(within.as_bytes());
    raw.push(harness::FILE_SEPARATOR);
    raw.extend_from_slice(parent.as_bytes());
    harness::prover(&raw);
}

/// How the prover corpus splits by verdict (how often the soundness law was actually checked):
/// `cargo test --test it fuzz_regressions:: -- --ignored --nocapture` after a fuzz run.
#[test]
#[ignore = "reads the local fuzz/corpus/prover, which is not committed"]
fn prover_corpus_verdicts() {
    let dir = fuzz_dir().join("corpus").join("prover");
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        *counts.entry(harness::prover_verdict(&data)).or_default() += 1;
    }
    println!("prover corpus verdicts: {counts:?}");
}
