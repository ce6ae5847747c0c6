//! Discovery on a generated bundle of 1,000 policies over 10,000 entities
//! (`bundle_gen::generate_discovery`): capabilities of a managed child (a two-hop chain) on a
//! cache miss (a fresh snapshot, as after a reload or an agent change) and on a hit, and each
//! AuthZEN search, in process. Prints p50/p99 per operation; a baseline, the evaluation of one
//! request through the same path, is measured in the same run.
//!
//! `cargo bench --bench discovery` (`DEPUTY_BENCH_ROUNDS=N` changes the rounds of the slow
//! operations, 20 by default; `DEPUTY_BENCH_DUMP=FILE` writes the capabilities answer there).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/bundle_gen.rs"]
#[allow(
    dead_code,
    reason = "the generator serves several benchmarks; each uses its own bundles"
)]
mod bundle_gen;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deputy::agents::{AgentRow, Registry};
use deputy::authzen::{self, Kind};
use deputy::bundle::{Bundle, LoadOptions};
use deputy::snapshot::{Live, Snapshot};
use serde_json::json;

const POLICIES: usize = 1_000;
const ENTITIES: usize = 10_000;

fn row(id: &str, parent: Option<&str>, grant: &str) -> AgentRow {
    AgentRow::sketch(id, parent, i64::from(parent.is_some()), 2, grant)
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn time<T>(rounds: usize, mut f: impl FnMut() -> T) -> (Duration, Duration) {
    let samples = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            black_box(f());
            started.elapsed()
        })
        .collect();
    percentiles(samples)
}

fn report(name: &str, (p50, p99): (Duration, Duration)) {
    println!("{name:<44} p50 {:>12.3?}  p99 {:>12.3?}", p50, p99);
}

/// The CPU time this thread has run so far (`CLOCK_THREAD_CPUTIME_ID`). On a shared machine
/// the wall time of a miss swings with the load; its CPU time much less.
fn thread_cpu() -> Option<Duration> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(Duration::new(
        u64::try_from(t.tv_sec).ok()?,
        u32::try_from(t.tv_nsec).ok()?,
    ))
}

/// As `time`, reported with the CPU time's p50/p99 too (when it can be read).
fn time_cpu<T>(name: &str, rounds: usize, mut f: impl FnMut() -> T) {
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let (c0, started) = (thread_cpu(), Instant::now());
        black_box(f());
        wall.push(started.elapsed());
        if let (Some(c0), Some(c1)) = (c0, thread_cpu()) {
            cpu.push(c1.saturating_sub(c0));
        }
    }
    report(name, percentiles(wall));
    if cpu.len() == rounds {
        report("  (CPU time, this thread)", percentiles(cpu));
    }
}

fn main() {
    let rounds: usize = std::env::var("DEPUTY_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    bundle_gen::write_discovery(POLICIES, ENTITIES, dir.path()).unwrap();
    let opts = LoadOptions {
        validate: true,
        require_agent_model: true,
    };
    let bundle = Arc::new(Bundle::load(dir.path(), &opts).unwrap());
    println!(
        "bundle: {} policies, {} entities",
        bundle.policies.policies().count(),
        bundle.entities.iter().count()
    );
    let rows = vec![
        row(
            "a0",
            None,
            r#"permit(principal == ?principal, action == Action::"read", resource);
               permit(principal == ?principal, action == Action::"write", resource in Folder::"f0");"#,
        ),
        row(
            "a1",
            Some("a0"),
            r#"permit(principal == ?principal, action == Action::"read", resource) when { context.hour >= 9 };
               permit(principal == ?principal, action == Action::"write", resource in Folder::"f0");"#,
        ),
    ];
    let registry = Registry::from_rows_with_sessions(rows.clone(), Vec::new()).unwrap();
    let live = Live::default();
    live.install_bundle(Arc::clone(&bundle)).unwrap();
    let fresh = || -> Arc<Snapshot> {
        live.write().unwrap().publish(registry.clone()).unwrap();
        live.current().unwrap()
    };
    let snap = fresh();
    let agent = Arc::clone(snap.agents.get("a1").unwrap());
    let now = 1;

    let evaluation = json!({"subject": {"type": "Agent", "id": "a1"}, "action": {"name": "read"},
                            "resource": {"type": "File", "id": "x1"}, "context": {"hour": 10}});
    report(
        "baseline: one evaluation (a1 read File::x1)",
        time(rounds * 100, || {
            let mut raised = Vec::new();
            authzen::evaluate(&snap, &evaluation, now, &mut raised)
                .unwrap()
                .decision
        }),
    );

    let caps = deputy::authorize::capabilities(&snap, &agent, now);
    println!(
        "capabilities of a1: {} allowed, {} conditional, {} other, {} not enumerated",
        caps.allowed.len(),
        caps.conditional.len(),
        caps.other_resources.len(),
        caps.not_enumerated.len()
    );
    // The whole answer, to compare two builds' (`DEPUTY_BENCH_DUMP=FILE`).
    if let Ok(path) = std::env::var("DEPUTY_BENCH_DUMP") {
        std::fs::write(path, serde_json::to_string_pretty(&*caps).unwrap()).unwrap();
    }
    let mut snapshots: Vec<Arc<Snapshot>> = (0..rounds).map(|_| fresh()).collect();
    time_cpu("capabilities, cache miss (fresh snapshot)", rounds, || {
        let s = snapshots.pop().unwrap();
        let a = Arc::clone(s.agents.get("a1").unwrap());
        deputy::authorize::capabilities(&s, &a, now).allowed.len()
    });
    // A miss after an agent change that changes the entity store (here: one more agent): the
    // new store is converted for partial evaluation (a fresh snapshot of the same store keeps
    // the previous one's conversion).
    let mut changed: Vec<Arc<Snapshot>> = (0..rounds)
        .map(|i| {
            let mut more = rows.clone();
            more.push(row(
                &format!("extra{i}"),
                None,
                "permit(principal == ?principal, action, resource);",
            ));
            let registry = Registry::from_rows_with_sessions(more, Vec::new()).unwrap();
            live.write().unwrap().publish(registry).unwrap();
            live.current().unwrap()
        })
        .collect();
    time_cpu("capabilities, cache miss (store changed)", rounds, || {
        let s = changed.pop().unwrap();
        let a = Arc::clone(s.agents.get("a1").unwrap());
        deputy::authorize::capabilities(&s, &a, now).allowed.len()
    });
    report(
        "capabilities, cache hit",
        time(rounds * 100, || {
            deputy::authorize::capabilities(&snap, &agent, now).allowed.len()
        }),
    );
    // What a hit costs the HTTP handler besides: the answer's JSON, kept with the cached answer,
    // against serializing it per request (what the handler did before).
    report(
        "capabilities, cache hit, its JSON body (kept)",
        time(rounds * 100, || {
            deputy::authorize::capabilities(&snap, &agent, now)
                .json()
                .unwrap()
                .len()
        }),
    );
    report(
        "the answer serialized afresh (per request before)",
        time(rounds, || serde_json::to_vec(&*caps).unwrap().len()),
    );

    let searches = [
        (
            "search/subject (Agent, read, File::x1)",
            Kind::Subject,
            json!({"subject": {"type": "Agent"}, "action": {"name": "read"},
                   "resource": {"type": "File", "id": "x1"}, "context": {"hour": 10}}),
        ),
        (
            "search/resource (a1, read, File)",
            Kind::Resource,
            json!({"subject": {"type": "Agent", "id": "a1"}, "action": {"name": "read"},
                   "resource": {"type": "File"}, "context": {"hour": 10}}),
        ),
        (
            "search/resource (a1, read, File), limit 10",
            Kind::Resource,
            json!({"subject": {"type": "Agent", "id": "a1"}, "action": {"name": "read"},
                   "resource": {"type": "File"}, "context": {"hour": 10}, "page": {"limit": 10}}),
        ),
        (
            "search/action (a1, File::x1)",
            Kind::Action,
            json!({"subject": {"type": "Agent", "id": "a1"},
                   "resource": {"type": "File", "id": "x1"}, "context": {"hour": 10}}),
        ),
    ];
    for (name, kind, body) in searches {
        let found = authzen::search(&snap, kind, &body, now).unwrap();
        let n = found.results.len();
        report(
            &format!("{name} [{n} results]"),
            time(rounds, || {
                authzen::search(&snap, kind, &body, now).unwrap().results.len()
            }),
        );
    }
}
