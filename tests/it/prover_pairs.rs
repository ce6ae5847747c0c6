//! The curated suite: parent/child pairs with their expected verdicts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::prover as fx;

use deputy::prover::{prove, run_prove, Grant, GrantError, ProveOptions, Verdict};
use serde_json::Value;

struct Pair {
    name: String,
    expect: String,
    facts: Vec<String>,
    parent: String,
    child: String,
}

fn load_pairs() -> Vec<Pair> {
    let mut paths: Vec<_> = std::fs::read_dir(fx::fixtures().join("pairs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let mut expect = String::new();
            let mut facts = Vec::new();
            let (mut parent, mut child) = (String::new(), String::new());
            let mut section = "";
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("# expect: ") {
                    expect = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("# expect-fact: ") {
                    facts.push(v.trim().to_owned());
                } else if line == "--- parent" {
                    section = "parent";
                } else if line == "--- child" {
                    section = "child";
                } else if section == "parent" {
                    parent.push_str(line);
                    parent.push('\n');
                } else if section == "child" {
                    child.push_str(line);
                    child.push('\n');
                }
            }
            Pair {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                expect,
                facts,
                parent,
                child,
            }
        })
        .collect()
}

#[test]
fn curated_pairs_have_their_expected_verdicts() {
    let schema = fx::schema();
    let store = fx::entities(&schema);
    let pairs = load_pairs();
    assert!(pairs.len() >= 40, "the curated suite needs at least 40 pairs");
    let mut failures = Vec::new();
    for pair in &pairs {
        let parent = Grant::parse(&pair.parent).unwrap();
        let child = Grant::parse(&pair.child).unwrap();
        let verdict = match prove(&child, &parent, &schema, &store, &ProveOptions::default()) {
            Ok(v) => v,
            Err(GrantError::Invalid(inv)) if pair.expect == "invalid" => {
                if inv.issues.is_empty() || inv.issues.iter().any(|i| i.line == 0) {
                    failures.push(format!("{}: issues lack lines: {inv:?}", pair.name));
                }
                continue;
            }
            Err(e) => {
                failures.push(format!("{}: error {e}", pair.name));
                continue;
            }
        };
        if verdict.name() != pair.expect {
            failures.push(format!(
                "{}: expected {}, got {}\n{}",
                pair.name,
                pair.expect,
                verdict.name(),
                verdict.render()
            ));
            continue;
        }
        match &verdict {
            Verdict::Exceeds(cx) => {
                if !fx::replays(cx, &pair.child, &pair.parent, &schema, &store) {
                    failures.push(format!("{}: counterexample does not replay: {cx:?}", pair.name));
                }
            }
            Verdict::Within(ev) => {
                for fact in &pair.facts {
                    if !ev.permits.iter().any(|c| c.hierarchy_facts.contains(fact)) {
                        failures.push(format!("{}: evidence lacks fact {fact}: {ev:?}", pair.name));
                    }
                }
            }
            Verdict::Inconclusive(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// `deputy prove` answers every curated pair as the library does: its exit code and both its
/// output forms name the expected verdict. (The human form of any pair is what `deputy prove
/// --parent P --child C` prints; this replaces an ignored test that only printed them.)
#[test]
fn the_cli_answers_every_curated_pair_with_its_verdict() {
    let schema = fx::schema();
    let store = fx::entities(&schema);
    let pairs = load_pairs();
    assert!(pairs.len() >= 40, "the curated suite needs at least 40 pairs");
    let mut failures = Vec::new();
    for pair in &pairs {
        let run = |json: bool| {
            let mut out = Vec::new();
            let code = run_prove(&schema, &store, &pair.parent, &pair.child, json, &mut out);
            (code, String::from_utf8(out).unwrap())
        };
        let (code, text) = run(false);
        let (json_code, json) = run(true);
        let v: Value = serde_json::from_str(&json).unwrap();
        let (want_code, text_starts, json_ok) = match pair.expect.as_str() {
            "within" => (
                0,
                "within",
                v["verdict"] == "within" && v["evidence"]["permits"].is_array(),
            ),
            "exceeds" => (
                1,
                "error[exceeds]",
                v["verdict"] == "exceeds" && v["counterexample"]["action"].is_string(),
            ),
            "inconclusive" => (
                2,
                "warning[",
                v["verdict"] == "inconclusive" && v["reason"]["code"].is_string(),
            ),
            "invalid" => (64, "error[grant_invalid]", v["error"]["code"] == "grant_invalid"),
            other => panic!("{}: unknown expectation `{other}`", pair.name),
        };
        if code != want_code || json_code != want_code || !text.starts_with(text_starts) || !json_ok {
            failures.push(format!(
                "{}: expected {} (exit {want_code}), got exits {code} and {json_code}:\n{text}\n{json}",
                pair.name, pair.expect
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn any_principal_considers_other_principals() {
    let schema = fx::schema();
    let store = fx::entities(&schema);
    let parent =
        Grant::parse(r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#)
            .unwrap();
    let child =
        Grant::parse(r#"permit(principal, action == Action::"read", resource in Folder::"repo/src");"#).unwrap();
    let opts = ProveOptions {
        any_principal: true,
        ..ProveOptions::default()
    };
    match prove(&child, &parent, &schema, &store, &opts).unwrap() {
        Verdict::Exceeds(cx) => assert_ne!(cx.principal, cx.child_principal),
        other => panic!("expected exceeds, got {}", other.render()),
    }
}

#[test]
fn a_named_child_is_linked_as_given() {
    let schema = fx::schema();
    let store = fx::entities(&schema);
    // alice is in Team::"eng" in the store, so the team permit covers her.
    let parent = Grant::parse(r#"permit(principal in Team::"eng", action == Action::"read", resource);"#).unwrap();
    let child = Grant::parse(r#"permit(principal == ?principal, action == Action::"read", resource);"#).unwrap();
    let alice = ProveOptions {
        child_principal: Some(r#"Agent::"alice""#.parse().unwrap()),
        ..ProveOptions::default()
    };
    let v = prove(&child, &parent, &schema, &store, &alice).unwrap();
    assert!(v.is_within(), "{}", v.render());
    let v = prove(&child, &parent, &schema, &store, &ProveOptions::default()).unwrap();
    assert_eq!(v.name(), "exceeds", "{}", v.render());
}
