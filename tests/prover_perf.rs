//! Rough timing of `prove` on realistic pairs (not a timed test: it only prints figures).
//! Run: `cargo test --release --test prover_perf -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use cedar_policy::{Entities, Schema};
use deputy::prover::{Grant, ProveOptions, Prover, Verdict};
use serde_json::json;

const SCHEMA: &str = include_str!("fixtures/prover/schema.cedarschema");

/// 10 top folders x 10 x 10 below them, plus files: about 1100 entities, 3 levels deep.
fn store(schema: &Schema) -> Entities {
    let mut v = Vec::new();
    for a in 0..10 {
        v.push(json!({"uid": {"type": "Folder", "id": format!("f{a}")}, "attrs": {}, "parents": []}));
        for b in 0..10 {
            v.push(
                json!({"uid": {"type": "Folder", "id": format!("f{a}/{b}")}, "attrs": {},
                "parents": [{"type": "Folder", "id": format!("f{a}")}]}),
            );
            for c in 0..10 {
                v.push(
                    json!({"uid": {"type": "Folder", "id": format!("f{a}/{b}/{c}")}, "attrs": {},
                    "parents": [{"type": "Folder", "id": format!("f{a}/{b}")}]}),
                );
            }
        }
    }
    v.push(json!({"uid": {"type": "Team", "id": "eng"}, "attrs": {}, "parents": []}));
    Entities::from_json_value(serde_json::Value::Array(v), Some(schema)).unwrap()
}

fn parent(n: usize) -> String {
    (0..n)
        .map(|i| {
            let (a, b) = (i % 10, (i / 10) % 10);
            let action = ["read", "write", "list"][i % 3];
            let resource = if action == "write" { format!("resource is File in Folder::\"f{a}/{b}\"") } else { format!("resource in Folder::\"f{a}/{b}\"") };
            match i % 4 {
                0 => format!("permit(principal == ?principal, action == Action::\"{action}\", {resource});"),
                1 => format!("permit(principal == ?principal, action == Action::\"{action}\", {resource}) when {{ context.taint <= {} }};", i % 4),
                2 => format!("@delegable(\"false\")\npermit(principal == ?principal, action == Action::\"{action}\", {resource});"),
                _ => format!("forbid(principal, action == Action::\"{action}\", resource in Folder::\"f{a}/{b}/9\") when {{ context.mfa == false }};"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn child(n: usize, within: bool) -> String {
    (0..n)
        .map(|i| {
            // permits with no condition in the parent, or withheld ones
            let i = if within { i * 4 } else { i * 4 + 2 };
            let (a, b) = (i % 10, (i / 10) % 10);
            let action = ["read", "write", "list"][i % 3];
            let c = i % 10;
            let resource = if action == "write" {
                format!("resource is File in Folder::\"f{a}/{b}/{}\"", c % 10)
            } else {
                format!("resource in Folder::\"f{a}/{b}/{}\"", c % 10)
            };
            let cond = "";
            format!("permit(principal == ?principal, action == Action::\"{action}\", {resource}){cond};")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "prints timings; run in release with --ignored --nocapture"]
fn timings() {
    let schema: Schema = SCHEMA.parse().unwrap();
    let entities = store(&schema);
    let prover = Prover::new(&schema, &entities);
    for (pn, cn) in [(20, 5), (100, 10), (300, 20)] {
        let p = Grant::parse(&parent(pn)).unwrap();
        for within in [true, false] {
            let c = Grant::parse(&child(cn, within)).unwrap();
            let mut times = Vec::new();
            let mut verdict = String::new();
            for _ in 0..50 {
                let t = Instant::now();
                let v = prover.prove(&c, &p, &ProveOptions::default()).unwrap();
                times.push(t.elapsed());
                verdict = v.name().to_owned();
                if let Verdict::Inconclusive(i) = &v {
                    println!("{i:?}");
                }
            }
            times.sort();
            let t = Instant::now();
            for _ in 0..50 {
                deputy::prover::validate_grant(&p, &schema).unwrap();
            }
            let validation = t.elapsed() / 50;
            println!(
                "parent {pn:>3} / child {cn:>2} / {verdict:<12}: p50 {:?}  p95 {:?} (parent validation alone {validation:?})",
                times[times.len() / 2],
                times[times.len() * 95 / 100]
            );
        }
    }
}

/// Hierarchy-heavy: permits at every level of the same branches (all related in the store).
fn nested_parent() -> String {
    let mut out = Vec::new();
    for a in 0..10 {
        out.push(format!("permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"f{a}\") when {{ context.taint <= 0 }};"));
        for b in 0..10 {
            out.push(format!("permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"f{a}/{b}\") when {{ context.taint <= 1 }};"));
            for c in 0..2 {
                out.push(format!("permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"f{a}/{b}/{c}\") when {{ context.taint <= 2 }};"));
            }
        }
    }
    out.join("\n")
}

#[test]
#[ignore = "prints timings; run in release with --ignored --nocapture"]
fn timings_nested() {
    let schema: Schema = SCHEMA.parse().unwrap();
    let entities = store(&schema);
    let prover = Prover::new(&schema, &entities);
    let p = Grant::parse(&nested_parent()).unwrap();
    for (taint, expect) in [(2, "within"), (3, "exceeds")] {
        let c = (0..20)
            .map(|i| format!("permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"f{}/{}/{}\") when {{ context.taint <= {taint} }};", i % 10, i % 7, i % 2))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Grant::parse(&c).unwrap();
        let mut times = Vec::new();
        for _ in 0..50 {
            let t = Instant::now();
            let v = prover.prove(&c, &p, &ProveOptions::default()).unwrap();
            times.push(t.elapsed());
            assert_eq!(v.name(), expect, "{}", v.render());
        }
        times.sort();
        println!(
            "nested parent 310 / child 20 / {expect:<8}: p50 {:?}  p95 {:?}",
            times[times.len() / 2],
            times[times.len() * 95 / 100]
        );
    }
}

#[test]
#[ignore = "profiling loop; run in release with --ignored"]
fn profile_large_within() {
    let schema: Schema = SCHEMA.parse().unwrap();
    let entities = store(&schema);
    let prover = Prover::new(&schema, &entities);
    let p = Grant::parse(&parent(300)).unwrap();
    let c = Grant::parse(&child(20, true)).unwrap();
    for _ in 0..300 {
        assert!(prover.prove(&c, &p, &ProveOptions::default()).unwrap().is_within());
    }
}
