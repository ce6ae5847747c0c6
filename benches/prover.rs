//! The containment prover against SymCC + cvc5 on the same pairs.
//!
//! Pairs: a child of 5–20 policies against a parent of 20–300 over a store of 1000 entities
//! in a 3-deep hierarchy (top folder > folder > file, plus agents in a team), mixing `in`,
//! `==`, `like` and attribute conditions, each in a Within and an Exceeds variant; and a
//! hierarchy-heavy parent (310 `in` permits at every level of the same branches).
//!
//! deputy's side is `Prover::prove` (validation of both grants is cached by the `Prover`, as
//! in the server). SymCC's side is the whole second opinion a user pays for: linking, symbolic
//! compilation of every request environment, spawning cvc5, one implies query per environment
//! and the replay of a counterexample. SymCC gets few runs and a per-query limit
//! (`--tlimit-per`); a capped run is reported as `> limit`.
//!
//! `cargo bench --bench prover` prints the table (p50 of each side, speedup), then criterion's
//! estimates for deputy at every size and for SymCC at the smallest. `DEPUTY_BENCH_SYMCC_RUNS`
//! (default 5) and `DEPUTY_BENCH_SYMCC_LIMIT_MS` (default 30000, per query) tune SymCC's part.
//! cvc5 is found on `PATH` or through `$CVC5`; without it only deputy's figures are printed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cedar_policy::{Entities, Schema};
use criterion::{BenchmarkId, Criterion};
use deputy::prover::{second_opinion, Grant, ProveOptions, Prover, SecondOpinion, SolverConfig, Verdict};
use serde_json::{json, Value};

const SCHEMA: &str = include_str!("../tests/fixtures/prover/schema.cedarschema");

/// 10 top folders > 10 folders each > 8 files each, and 89 agents in one team: 1000 entities.
fn store(schema: &Schema) -> Entities {
    let mut v = Vec::new();
    for a in 0..10 {
        v.push(json!({"uid": {"type": "Folder", "id": format!("f{a}")}, "attrs": {}, "parents": []}));
        for b in 0..10 {
            v.push(
                json!({"uid": {"type": "Folder", "id": format!("f{a}/{b}")}, "attrs": {},
                "parents": [{"type": "Folder", "id": format!("f{a}")}]}),
            );
            for c in 0..8 {
                let dir = if c % 2 == 0 { "src/lib" } else { "docs" };
                v.push(json!({"uid": {"type": "File", "id": format!("f{a}/{b}/x{c}")},
                    "attrs": {"classification": c % 4, "path": format!("f{a}/{b}/{dir}/x{c}.rs"),
                              "public": c % 3 == 0, "tags": ["rust"]},
                    "parents": [{"type": "Folder", "id": format!("f{a}/{b}")}]}));
            }
        }
    }
    v.push(json!({"uid": {"type": "Team", "id": "eng"}, "attrs": {}, "parents": []}));
    for n in 0..89 {
        v.push(json!({"uid": {"type": "Agent", "id": format!("a{n}")},
            "attrs": {"ceiling": n % 4, "can_delegate": n % 2 == 0},
            "parents": [{"type": "Team", "id": "eng"}]}));
    }
    assert_eq!(v.len(), 1000);
    Entities::from_json_value(Value::Array(v), Some(schema)).unwrap()
}

fn at(i: usize) -> (usize, usize, usize) {
    (i % 10, (i / 10) % 10, i % 8)
}

/// Seven kinds of policy in turn: `in`, `is … in` with a Long bound, `==` with a context flag,
/// `like` on the context, `like` on an attribute, a withheld permit, a forbid.
fn parent(n: usize) -> String {
    (0..n)
        .map(|i| {
            let (a, b, c) = at(i);
            match i % 7 {
                0 => format!(r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"f{a}/{b}");"#),
                1 => format!(r#"permit(principal == ?principal, action == Action::"read", resource is File in Folder::"f{a}") when {{ resource.classification <= 2 }};"#),
                2 => format!(r#"permit(principal == ?principal, action == Action::"write", resource == File::"f{a}/{b}/x{c}") when {{ context.mfa }};"#),
                3 => format!(r#"permit(principal == ?principal, action == Action::"list", resource in Folder::"f{a}") when {{ context has reason && context.reason like "ticket-*" }};"#),
                4 => format!(r#"permit(principal == ?principal, action == Action::"read", resource is File) when {{ resource.path like "f{a}/{b}/src/*" && resource.public }};"#),
                5 => format!("@delegable(\"false\")\npermit(principal == ?principal, action == Action::\"write\", resource in Folder::\"f{a}/{b}\");"),
                _ => format!(r#"forbid(principal, action == Action::"write", resource is File in Folder::"f{a}/{b}") when {{ resource.classification >= 3 }};"#),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each child permit narrows one delegable parent permit (through the hierarchy, a tighter
/// bound or a longer `like` prefix). The Exceeds variant asks for the withheld write instead
/// in its last permit.
fn child(n_parent: usize, m: usize, within: bool) -> String {
    (0..m)
        .map(|j| {
            let kind = j % 5;
            let i = kind + 7 * (j % (n_parent / 7));
            let (a, b, c) = at(i);
            if !within && j + 1 == m {
                return format!(r#"permit(principal == ?principal, action == Action::"write", resource in Folder::"f{a}/{b}");"#);
            }
            match kind {
                0 => format!(r#"permit(principal == ?principal, action == Action::"read", resource == File::"f{a}/{b}/x{c}") when {{ context.taint <= 1 }};"#),
                1 => format!(r#"permit(principal == ?principal, action == Action::"read", resource is File in Folder::"f{a}/{b}") when {{ resource.classification <= 1 }};"#),
                2 => format!(r#"permit(principal == ?principal, action == Action::"write", resource == File::"f{a}/{b}/x{c}") when {{ context.mfa && context.taint <= 2 }};"#),
                3 => format!(r#"permit(principal == ?principal, action == Action::"list", resource in Folder::"f{a}/{b}") when {{ context has reason && context.reason like "ticket-1*" }};"#),
                _ => format!(r#"permit(principal == ?principal, action == Action::"read", resource is File in Folder::"f{a}/{b}") when {{ resource.path like "f{a}/{b}/src/lib/*" && resource.public }};"#),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Hierarchy-heavy: `in` permits at every level of the same branches (310 policies).
fn nested_parent() -> String {
    let mut out = Vec::new();
    for a in 0..10 {
        out.push(format!(r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"f{a}") when {{ context.taint <= 0 }};"#));
        for b in 0..10 {
            out.push(format!(r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"f{a}/{b}") when {{ context.taint <= 1 }};"#));
            for c in 0..2 {
                out.push(format!(r#"permit(principal == ?principal, action == Action::"read", resource == File::"f{a}/{b}/x{c}") when {{ context.taint <= 2 }};"#));
            }
        }
    }
    out.join("\n")
}

fn nested_child(within: bool) -> String {
    let taint = if within { 2 } else { 3 };
    (0..20)
        .map(|i| format!(r#"permit(principal == ?principal, action == Action::"read", resource == File::"f{}/{}/x{}") when {{ context.taint <= {taint} }};"#, i % 10, i % 7, i % 2))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Case {
    name: String,
    parent: Grant,
    child: Grant,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for (pn, cn) in [(20, 5), (100, 10), (300, 20)] {
        for within in [true, false] {
            out.push(Case {
                name: format!(
                    "parent {pn} / child {cn} / {}",
                    if within { "within" } else { "exceeds" }
                ),
                parent: Grant::parse(&parent(pn)).unwrap(),
                child: Grant::parse(&child(pn, cn, within)).unwrap(),
            });
        }
    }
    for within in [true, false] {
        out.push(Case {
            name: format!(
                "nested 310 in / child 20 / {}",
                if within { "within" } else { "exceeds" }
            ),
            parent: Grant::parse(&nested_parent()).unwrap(),
            child: Grant::parse(&nested_child(within)).unwrap(),
        });
    }
    out
}

fn cvc5() -> Option<PathBuf> {
    let program = std::env::var_os("CVC5").map_or_else(|| PathBuf::from("cvc5"), PathBuf::from);
    std::process::Command::new(&program)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| program)
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn p50(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times.get(times.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn describe(o: &SecondOpinion) -> String {
    match o {
        SecondOpinion::Within => "implies".to_owned(),
        SecondOpinion::Exceeds(_) => "counterexample (replayed)".to_owned(),
        SecondOpinion::Unsettled(n) if n.code == "solver_existence" => "implies (entities assumed to exist)".to_owned(),
        SecondOpinion::Unsettled(n) => format!("{}: {}", n.code, n.message),
    }
}

/// The p50/speedup table, printed before criterion's part.
fn table(schema: &Schema, entities: &Entities, cases: &[Case], solver: Option<&SolverConfig>) {
    let prover = Prover::new(schema, entities);
    let runs = env_number("DEPUTY_BENCH_SYMCC_RUNS", 5).max(1);
    println!(
        "\n{:<36} {:>10} {:>12} {:>14} {:>9}   SymCC said",
        "pair", "deputy", "deputy p50", "SymCC p50", "speedup"
    );
    for case in cases {
        let verdict = prover
            .prove(&case.child, &case.parent, &ProveOptions::default())
            .unwrap();
        let mut times = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            black_box(
                prover
                    .prove(&case.child, &case.parent, &ProveOptions::default())
                    .unwrap(),
            );
            times.push(t.elapsed());
        }
        let deputy = p50(times);
        let (symcc, said) = match solver {
            None => ("(no cvc5)".to_owned(), String::new()),
            Some(cfg) => {
                let mut times = Vec::new();
                let mut said = String::new();
                let mut capped = false;
                let started = Instant::now();
                for _ in 0..runs {
                    let t = Instant::now();
                    let o = second_opinion(
                        &case.child,
                        &case.parent,
                        schema,
                        entities,
                        &ProveOptions::default(),
                        cfg,
                    );
                    times.push(t.elapsed());
                    capped = matches!(&o, SecondOpinion::Unsettled(n) if n.code == "solver_unknown");
                    said = describe(&o);
                    // Slow sizes get fewer runs: the figure is seconds either way.
                    if capped || started.elapsed() > Duration::from_secs(60) {
                        break;
                    }
                }
                let p = p50(times);
                let shown = if capped {
                    format!("> {} s", cfg.query_timeout_ms / 1000)
                } else {
                    ms(p)
                };
                let speedup = if capped {
                    format!(">{:.0}x", p.as_secs_f64() / deputy.as_secs_f64())
                } else {
                    format!("{:.0}x", p.as_secs_f64() / deputy.as_secs_f64())
                };
                (format!("{shown:>14} {speedup:>9}"), said)
            }
        };
        println!(
            "{:<36} {:>10} {:>12} {symcc}   {said}",
            case.name,
            verdict.name(),
            ms(deputy)
        );
        if let Verdict::Inconclusive(i) = &verdict {
            println!("    deputy inconclusive: {}", i.message);
        }
    }
    println!();
}

fn main() {
    let schema: Schema = SCHEMA.parse().unwrap();
    let entities = store(&schema);
    let cases = cases();
    let limit = env_number("DEPUTY_BENCH_SYMCC_LIMIT_MS", 30_000);
    let solver = cvc5().map(|program| SolverConfig {
        program,
        query_timeout_ms: limit,
        total_timeout_ms: limit.saturating_mul(6),
    });
    if solver.is_none() {
        eprintln!("cvc5 not found (PATH or $CVC5): SymCC's side is skipped");
    }
    table(&schema, &entities, &cases, solver.as_ref());

    let mut c = Criterion::default().configure_from_args();
    let prover = Prover::new(&schema, &entities);
    let mut group = c.benchmark_group("prove");
    for case in &cases {
        group.bench_with_input(BenchmarkId::new("deputy", &case.name), case, |b, case| {
            b.iter(|| {
                prover
                    .prove(&case.child, &case.parent, &ProveOptions::default())
                    .unwrap()
            })
        });
    }
    group.finish();
    if let Some(cfg) = &solver {
        let mut group = c.benchmark_group("prove");
        group.sample_size(10);
        for case in cases.iter().take(2) {
            group.bench_with_input(BenchmarkId::new("symcc-cvc5", &case.name), case, |b, case| {
                b.iter(|| {
                    second_opinion(
                        &case.child,
                        &case.parent,
                        &schema,
                        &entities,
                        &ProveOptions::default(),
                        cfg,
                    )
                })
            });
        }
        group.finish();
    }
    c.final_summary();
}
