//! In-process authorize: full Cedar evaluation against the indexed one at 10, 1k, 10k and 100k
//! generated policies (see `examples/bundle_gen.rs`), and memory: per 1k policies (the set and
//! its index), and the peak while a 100k-policy bundle reloads next to the one serving.
//!
//! `cargo bench --bench authorize` prints a p50/p99 table of single decisions (indexed ones timed
//! in turns that alternate between the sizes), the ratio of the indexed p50 at the largest size
//! to the smallest, and how many policies an indexed decision visits; then criterion's
//! estimates. `-- --quick` (criterion's flag) shortens criterion's part. For profiling:
//! `DEPUTY_BENCH_SIZES=10,100000` picks the sizes, `DEPUTY_BENCH_TABLE_ONLY=1` skips the memory
//! figures and criterion's part, `DEPUTY_BENCH_INDEXED_ONLY=1` the full evaluation's columns,
//! and `DEPUTY_BENCH_PROFILE=SECS` only loops indexed decisions at the first size for that long
//! (for `perf record`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../examples/bundle_gen.rs"]
#[allow(
    dead_code,
    reason = "the generator serves several benchmarks; each uses its own bundles"
)]
mod bundle_gen;

use std::hint::black_box;
use std::str::FromStr;
use std::time::{Duration, Instant};

use cedar_policy::{Context, Entities, EntityUid, PolicySet, Request, Schema};
use criterion::{BenchmarkId, Criterion};
use deputy::bundle::{Bundle, LoadOptions};
use deputy::eval::{evaluate, evaluate_indexed, PolicyIndex};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

/// Counts heap bytes, so memory per 1k policies is what is allocated and kept, not RSS (which
/// the allocator's reuse of freed pages blurs).
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const SIZES: [usize; 4] = [10, 1_000, 10_000, 100_000];

struct Fixture {
    n: usize,
    policies: PolicySet,
    entities: Entities,
    index: PolicyIndex,
    requests: Vec<Request>,
}

fn fixture(n: usize, schema: &Schema) -> Fixture {
    let g = bundle_gen::generate(n);
    let policies = PolicySet::from_str(&g.policies).unwrap();
    let entities = Entities::from_json_str(&g.entities, Some(schema)).unwrap();
    let index = PolicyIndex::build(&policies, &entities);
    Fixture {
        n,
        policies,
        entities,
        index,
        requests: requests(schema),
    }
}

/// Reads of files by every agent in the store, and some writes: what the grants are about.
fn requests(schema: &Schema) -> Vec<Request> {
    (0..bundle_gen::AGENTS)
        .map(|a| {
            let action = if a % 4 == 0 { "write" } else { "read" };
            let context = Context::from_json_value(
                serde_json::json!({ "n": 1 }),
                Some((schema, &uid(&format!(r#"Action::"{action}""#)))),
            )
            .unwrap();
            Request::new(
                uid(&format!(r#"Agent::"a{a}""#)),
                uid(&format!(r#"Action::"{action}""#)),
                uid(&format!(r#"File::"x{}""#, a % bundle_gen::FILES)),
                context,
                Some(schema),
            )
            .unwrap()
        })
        .collect()
}

fn uid(s: &str) -> EntityUid {
    EntityUid::from_str(s).unwrap()
}

/// `VmRSS` and `VmHWM` of this process, in KiB.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// A reload at 100k policies: the serving bundle stays while the next one loads, then goes.
fn reload_peak() {
    let n = 100_000;
    let dir = tempfile::tempdir().unwrap();
    bundle_gen::write(n, dir.path()).unwrap();
    let opts = LoadOptions {
        validate: true,
        require_agent_model: false,
    };
    let (before, _) = memory();
    let started = Instant::now();
    let serving = Bundle::load(dir.path(), &opts).unwrap();
    let first_load = started.elapsed();
    let (one, _) = memory();
    let started = Instant::now();
    let next = Bundle::load(dir.path(), &opts).unwrap();
    let reload = started.elapsed();
    let (two, peak) = memory();
    drop(serving);
    let (after, _) = memory();
    println!("reload of a {n}-policy bundle (validated, indexed):");
    println!(
        "  load {:.2?}, reload {:.2?}; index: {:?}",
        first_load,
        reload,
        next.index.stats()
    );
    println!(
        "  VmRSS before {}, one bundle {} (+{}), two bundles {}, after dropping the old {}; VmHWM {}",
        mib(before),
        mib(one),
        mib(one.saturating_sub(before)),
        mib(two),
        mib(after),
        mib(peak)
    );
    drop(next);
}

/// Heap kept by a 100k-policy set, by its index, and by a whole loaded bundle, per 1k policies.
fn memory_per_1k(schema: &Schema) {
    let n = 100_000;
    let g = bundle_gen::generate(n);
    let entities = Entities::from_json_str(&g.entities, Some(schema)).unwrap();
    let kept = |region: &Region<std::alloc::System>| {
        let c = region.change();
        (c.bytes_allocated as f64 - c.bytes_deallocated as f64) / 1024.0 / (n / 1000) as f64
    };
    let region = Region::new(GLOBAL);
    let policies = PolicySet::from_str(&g.policies).unwrap();
    let set = kept(&region);
    let region = Region::new(GLOBAL);
    let started = Instant::now();
    let index = PolicyIndex::build(&policies, &entities);
    let built = started.elapsed();
    let idx = kept(&region);
    black_box((policies, index));
    let dir = tempfile::tempdir().unwrap();
    bundle_gen::write(n, dir.path()).unwrap();
    let opts = LoadOptions {
        validate: true,
        require_agent_model: false,
    };
    let region = Region::new(GLOBAL);
    let bundle = Bundle::load(dir.path(), &opts).unwrap();
    let whole = kept(&region);
    drop(bundle);
    println!(
        "heap per 1k policies (at {n}): policy set {set:.0} KiB, its index {idx:.0} KiB (built in {built:.2?}); \
         a whole loaded bundle (set, sources, index, schema, 1000 entities) {whole:.0} KiB"
    );
}

/// Policies an indexed decision evaluates, on average over the requests.
fn visited(f: &Fixture) -> f64 {
    let total: usize = f
        .requests
        .iter()
        .map(|r| {
            let slices = f
                .index
                .slices(
                    &f.entities,
                    r.principal().unwrap(),
                    r.action().unwrap(),
                    r.resource().unwrap(),
                )
                .unwrap();
            slices.iter().map(|s| s.len()).sum::<usize>()
        })
        .sum();
    total as f64 / f.requests.len() as f64
}

/// p50, p99 and the share allowed of single decisions, timed one by one.
fn summary(mut samples: Vec<Duration>, allowed: usize) -> (Duration, Duration, usize) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99), allowed * 100 / samples.len())
}

/// Indexed single-decision latencies at every size, timed one by one over rotating requests, in
/// rounds that take turns between the sizes: on a shared machine a slow spell then falls on every
/// size alike instead of on whichever was being timed, so their ratio holds still.
fn indexed_percentiles(fixtures: &[Fixture]) -> Vec<(Duration, Duration, usize)> {
    const SAMPLES: usize = 60_000;
    const TURN: usize = 6_000;
    let budget = Duration::from_secs(3) * fixtures.len() as u32;
    let started = Instant::now();
    let mut samples = vec![Vec::with_capacity(SAMPLES); fixtures.len()];
    let mut allowed = vec![0; fixtures.len()];
    while samples[0].len() < SAMPLES && (started.elapsed() < budget || samples[0].len() < TURN) {
        // Turns of a few milliseconds, each after an untimed pass over the requests: the caches
        // the other sizes filled would otherwise slow the first decisions of a turn.
        for (i, f) in fixtures.iter().enumerate() {
            for r in &f.requests {
                black_box(evaluate_indexed(&f.policies, &f.index, &f.entities, r));
            }
            for r in f.requests.iter().cycle().take(TURN) {
                let t = Instant::now();
                let d = evaluate_indexed(&f.policies, &f.index, &f.entities, r);
                samples[i].push(t.elapsed());
                allowed[i] += usize::from(black_box(d).allow);
            }
        }
    }
    samples.into_iter().zip(allowed).map(|(s, a)| summary(s, a)).collect()
}

/// Full-evaluation single-decision latencies, timed one by one over rotating requests.
fn percentiles(f: &Fixture) -> (Duration, Duration, usize) {
    let budget = Duration::from_secs(3);
    let mut samples = Vec::new();
    let started = Instant::now();
    let mut allowed = 0;
    for r in f.requests.iter().cycle() {
        let t = Instant::now();
        let d = evaluate(&f.policies, &f.entities, r);
        samples.push(t.elapsed());
        allowed += usize::from(black_box(d).allow);
        if (started.elapsed() > budget && samples.len() >= 20) || samples.len() >= 20_000 {
            break;
        }
    }
    summary(samples, allowed)
}

fn main() {
    let schema = Schema::from_str(bundle_gen::SCHEMA).unwrap();
    let table_only = std::env::var_os("DEPUTY_BENCH_TABLE_ONLY").is_some();
    let indexed_only = std::env::var_os("DEPUTY_BENCH_INDEXED_ONLY").is_some();
    let sizes: Vec<usize> = match std::env::var("DEPUTY_BENCH_SIZES") {
        Ok(list) => list.split(',').map(|n| n.trim().parse().unwrap()).collect(),
        Err(_) => SIZES.to_vec(),
    };
    if !table_only {
        // Per-1k first, in a fresh heap: after the reload the allocator reuses freed pages and
        // RSS no longer grows with what is allocated.
        memory_per_1k(&schema);
        reload_peak();
    }

    let fixtures: Vec<Fixture> = sizes.iter().map(|n| fixture(*n, &schema)).collect();
    if let Some(secs) = std::env::var("DEPUTY_BENCH_PROFILE").ok().and_then(|s| s.parse().ok()) {
        let f = &fixtures[0];
        let (started, mut n) = (Instant::now(), 0u64);
        while started.elapsed() < Duration::from_secs(secs) {
            for r in &f.requests {
                black_box(evaluate_indexed(&f.policies, &f.index, &f.entities, r));
            }
            n += f.requests.len() as u64;
        }
        println!("{n} indexed decisions at {} policies in {secs} s", f.n);
        return;
    }
    println!("single decisions, {} rotating requests:", fixtures[0].requests.len());
    println!(
        "  {:>8}  {:>12} {:>12}  {:>12} {:>12}  {:>7}  {:>7}  index",
        "policies", "full p50", "full p99", "indexed p50", "indexed p99", "allowed", "visited"
    );
    let indexed = indexed_percentiles(&fixtures);
    for (f, &(ip50, ip99, ia)) in fixtures.iter().zip(&indexed) {
        // The same decisions (a spot check; tests/it/index_differential.rs is the proof).
        let checked = match (indexed_only, f.n >= 100_000) {
            (true, _) => 0,
            (false, true) => 20,
            (false, false) => f.requests.len(),
        };
        for r in f.requests.iter().take(checked) {
            assert_eq!(
                evaluate(&f.policies, &f.entities, r),
                evaluate_indexed(&f.policies, &f.index, &f.entities, r)
            );
        }
        let (fp50, fp99, _) = if indexed_only {
            (Duration::ZERO, Duration::ZERO, 0)
        } else {
            percentiles(f)
        };
        println!(
            "  {:>8}  {:>12.2?} {:>12.2?}  {:>12.2?} {:>12.2?}  {:>6}%  {:>7.1}  {:?}",
            f.n,
            fp50,
            fp99,
            ip50,
            ip99,
            ia,
            visited(f),
            f.index.stats()
        );
    }
    if let (Some(first), Some(last)) = (indexed.first(), indexed.last()) {
        println!(
            "indexed p50 at {} policies / at {}: {:.2}x",
            fixtures[fixtures.len() - 1].n,
            fixtures[0].n,
            last.0.as_secs_f64() / first.0.as_secs_f64()
        );
    }
    if table_only {
        return;
    }

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("authorize");
    for f in &fixtures {
        if f.n >= 10_000 {
            group.sample_size(10).measurement_time(Duration::from_secs(5));
        } else {
            group.sample_size(50).measurement_time(Duration::from_secs(3));
        }
        let mut i = 0;
        group.bench_function(BenchmarkId::new("full", f.n), |b| {
            b.iter(|| {
                i = (i + 1) % f.requests.len();
                evaluate(&f.policies, &f.entities, &f.requests[i])
            })
        });
        group.sample_size(50).measurement_time(Duration::from_secs(3));
        group.bench_function(BenchmarkId::new("indexed", f.n), |b| {
            b.iter(|| {
                i = (i + 1) % f.requests.len();
                evaluate_indexed(&f.policies, &f.index, &f.entities, &f.requests[i])
            })
        });
    }
    group.finish();
    c.final_summary();
}
