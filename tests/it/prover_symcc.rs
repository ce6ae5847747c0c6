//! deputy's prover against cedar-policy-symcc driving a real cvc5.
//!
//! - The differential laws, on pairs where the hierarchy does not matter (an empty entity
//!   store, so every entity is arbitrary for both): deputy never says Within where SymCC finds
//!   a counterexample that replays, and never says Exceeds where SymCC proves implies. The
//!   SymCC side here is built independently of deputy's adapter (`fx::child_side` /
//!   `fx::parent_side`), and the adapter is checked to agree with it.
//! - The settling path: a pair deputy alone leaves Inconclusive settled Within by the solver,
//!   one settled Exceeds with a counterexample Cedar replays, one whose solver counterexample
//!   contradicts the store (stays Inconclusive), a missing solver, and the CLI flags.
//!
//! cvc5 is required (CI installs Debian's `cvc5`); without it these tests fail, by design.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::prover as fx;
use crate::common::prover_gen as gen;

use std::cell::Cell;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;

use cedar_policy::{Authorizer, Decision, Entities, EntityUid, Policy, PolicyId, PolicySet, Request, Schema};
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicySet};
use deputy::prover::{
    prove, second_opinion, Counterexample, Grant, ProveOptions, SecondOpinion, SolverConfig, Verdict, BACKEND_SYMCC,
};
use proptest::test_runner::{TestCaseError, TestRunner};

/// The cvc5 executable: `$CVC5`, else `cvc5` on `PATH`. Fails the test when there is none.
fn cvc5() -> PathBuf {
    let program = std::env::var_os("CVC5").map_or_else(|| PathBuf::from("cvc5"), PathBuf::from);
    let ok = Command::new(&program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "cvc5 is required by tests/it/prover_symcc.rs but `{}` cannot be run; install it \
         (`apt-get install cvc5` on Debian/Ubuntu) or point $CVC5 at the executable",
        program.display()
    );
    program
}

fn solver() -> SolverConfig {
    SolverConfig::cvc5(cvc5())
}

fn with_solver() -> ProveOptions {
    ProveOptions {
        solver: Some(solver()),
        ..ProveOptions::default()
    }
}

fn child_uid() -> EntityUid {
    EntityUid::from_str("Agent::\"child\"").unwrap()
}

/// `set` with every (possibly template-linked) policy turned into a static one: SymCC accepts
/// only static policies, and Cedar's JSON form substitutes the slots.
fn statics(set: &PolicySet) -> PolicySet {
    let mut out = PolicySet::new();
    for p in set.policies() {
        let json = p.to_json().unwrap();
        out.add(Policy::from_json(Some(p.id().clone()), json).unwrap()).unwrap();
    }
    out
}

/// What SymCC says about one pair, asked directly (not through deputy).
enum Raw {
    Implies,
    Counterexample { replays: bool, shown: String },
    Unknown(String),
}

/// SymCC's implies check for the pair, in every request environment: the child side (with
/// the parent's forbids, restricted to the child's requests) against the parent's delegable
/// view. A counterexample is replayed through Cedar against `store` plus its entities.
fn raw_symcc(child: &str, parent: &str, schema: &Schema, store: &Entities) -> Raw {
    let principal = child_uid();
    let mut child_side = statics(&fx::child_side(child, parent, &principal));
    child_side
        .add(
            Policy::parse(
                Some(PolicyId::new("only-child")),
                format!("forbid(principal, action, resource) unless {{ principal == {principal} }};"),
            )
            .unwrap(),
        )
        .unwrap();
    let parent_side = statics(&fx::parent_side(parent, &principal));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let process = LocalSolver::from_command(
            tokio::process::Command::new(cvc5())
                .args(["--lang", "smt", "--tlimit=60000"])
                .kill_on_drop(true),
        )
        .unwrap();
        let mut symcc = CedarSymCompiler::new(process).unwrap();
        for env in schema.request_envs() {
            let c = CompiledPolicySet::compile(&child_side, &env, schema).unwrap();
            let p = CompiledPolicySet::compile(&parent_side, &env, schema).unwrap();
            match symcc.check_implies_with_counterexample_opt(&c, &p).await {
                Ok(None) => {}
                Ok(Some(cx)) => {
                    let replays = replays_raw(&cx.request, &cx.entities, child, parent, schema, store);
                    return Raw::Counterexample {
                        replays,
                        shown: format!("{}\n{:?}", cx.request, cx.entities),
                    };
                }
                Err(e) => return Raw::Unknown(e.to_string()),
            }
        }
        Raw::Implies
    })
}

fn replays_raw(
    request: &Request,
    cx_entities: &Entities,
    child: &str,
    parent: &str,
    schema: &Schema,
    store: &Entities,
) -> bool {
    let extra: Vec<_> = cx_entities
        .iter()
        .filter(|e| store.get(&e.uid()).is_none() && !e.uid().type_name().to_string().ends_with("Action"))
        .cloned()
        .collect();
    let Ok(entities) = store.clone().add_entities(extra, Some(schema)) else {
        return false;
    };
    let principal = child_uid();
    let auth = Authorizer::new();
    let c = auth.is_authorized(request, &fx::child_side(child, parent, &principal), &entities);
    let p = auth.is_authorized(request, &fx::parent_side(parent, &principal), &entities);
    c.decision() == Decision::Allow && p.decision() == Decision::Deny
}

/// Checks both laws, and the adapter against the raw check, for one pair over `store`.
/// Returns what deputy alone answered (`None` for invalid grants, which the laws skip): the
/// laws hold vacuously for a prover that always answers Inconclusive, so callers tally it.
fn check_pair(
    name: &str,
    parent_src: &str,
    child_src: &str,
    schema: &Schema,
    store: &Entities,
) -> Result<Option<&'static str>, String> {
    let (Ok(parent), Ok(child)) = (Grant::parse(parent_src), Grant::parse(child_src)) else {
        return Ok(None);
    };
    let Ok(alone) = prove(&child, &parent, schema, store, &ProveOptions::default()) else {
        // Invalid grants are not these laws' business.
        return Ok(None);
    };
    let raw = raw_symcc(child_src, parent_src, schema, store);
    let context = || format!("{name}\nparent:\n{parent_src}\nchild:\n{child_src}");
    let opinion = second_opinion(&child, &parent, schema, store, &ProveOptions::default(), &solver());
    match (&alone, &raw) {
        (Verdict::Within(_), Raw::Counterexample { replays: true, shown }) => {
            return Err(format!(
                "deputy said within, SymCC found a counterexample that replays:\n{shown}\n{}",
                context()
            ))
        }
        // SymCC assumes every entity exists; a deputy counterexample on a missing entity is
        // outside what it sees. Then the adapter must not call the pair within.
        (Verdict::Exceeds(cx), Raw::Implies) => {
            if !relies_on_a_missing_entity(cx, store) {
                return Err(format!(
                    "deputy said exceeds ({cx:?}) with every entity present, SymCC proved implies\n{}",
                    context()
                ));
            }
            if matches!(opinion, SecondOpinion::Within) {
                return Err(format!(
                    "deputy's counterexample ({cx:?}) replays, yet the adapter would settle the pair within\n{}",
                    context()
                ));
            }
        }
        (_, Raw::Counterexample { replays: false, shown }) if only_actions(store) => {
            return Err(format!(
                "over an empty store every SymCC counterexample should replay; this one does not:\n{shown}\n{}",
                context()
            ))
        }
        (_, Raw::Unknown(e)) => return Err(format!("SymCC failed: {e}\n{}", context())),
        _ => {}
    }
    if let Verdict::Exceeds(cx) = &alone {
        if !fx::replays(cx, child_src, parent_src, schema, store) {
            return Err(format!(
                "deputy's counterexample does not replay: {cx:?}\n{}",
                context()
            ));
        }
    }
    // deputy's adapter (used to settle Inconclusive) must agree with the raw check, and its
    // Within must never meet a deputy Exceeds.
    match (&opinion, &raw) {
        (SecondOpinion::Within, Raw::Implies) => {
            if let Verdict::Exceeds(cx) = &alone {
                return Err(format!("the adapter says within, deputy found {cx:?}\n{}", context()));
            }
        }
        (SecondOpinion::Unsettled(n), Raw::Implies) if n.code == "solver_existence" => {}
        (SecondOpinion::Exceeds(cx), Raw::Counterexample { replays: true, .. }) => {
            if !fx::replays(cx, child_src, parent_src, schema, store) {
                return Err(format!(
                    "the adapter's counterexample does not replay: {cx:?}\n{}",
                    context()
                ));
            }
        }
        (SecondOpinion::Unsettled(n), Raw::Counterexample { replays: false, .. })
            if n.code == "solver_replay_failed" => {}
        (other, _) => {
            let raw_name = match raw {
                Raw::Implies => "implies",
                Raw::Counterexample { .. } => "counterexample",
                Raw::Unknown(_) => "unknown",
            };
            return Err(format!(
                "the adapter answered {other:?}, the raw SymCC check {raw_name}\n{}",
                context()
            ));
        }
    }
    Ok(Some(alone.name()))
}

fn only_actions(store: &Entities) -> bool {
    store
        .iter()
        .all(|e| e.uid().type_name().to_string().ends_with("Action"))
}

/// Whether the request names an entity that neither the store nor the counterexample holds.
fn relies_on_a_missing_entity(cx: &Counterexample, store: &Entities) -> bool {
    fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(e) = m.get("__entity") {
                    out.push(format!("{}::{}", e["type"].as_str().unwrap_or(""), e["id"]));
                }
                m.values().for_each(|x| refs(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let held: Vec<String> = cx
        .entities
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}::{}", e["uid"]["type"].as_str().unwrap(), e["uid"]["id"]))
        .collect();
    let mut named = vec![cx.principal.clone(), cx.resource.clone()];
    refs(&cx.entities, &mut named);
    refs(&cx.context, &mut named);
    named.iter().any(|n| {
        let in_store = EntityUid::from_str(n).is_ok_and(|u| store.get(&u).is_some());
        !in_store && !held.contains(n)
    })
}

/// No entities but the schema's actions (so action groups hold, as in a loaded bundle).
fn empty_store(schema: &Schema) -> Entities {
    Entities::from_json_str("[]", Some(schema)).unwrap()
}

/// How often deputy alone was decisive (Within or Exceeds) on pairs with valid grants.
#[derive(Default)]
struct Decisive {
    valid: Cell<u32>,
    decisive: Cell<u32>,
}

impl Decisive {
    fn record(&self, alone: Option<&str>) {
        if let Some(name) = alone {
            self.valid.set(self.valid.get() + 1);
            if name != "inconclusive" {
                self.decisive.set(self.decisive.get() + 1);
            }
        }
    }

    /// Fails unless at least `floor` of the valid pairs were decided by deputy alone.
    fn floor(&self, what: &str, floor: f64) {
        let (valid, decisive) = (self.valid.get(), self.decisive.get());
        eprintln!("{what}: deputy alone decided {decisive} of {valid} valid pairs");
        assert!(
            valid > 0 && f64::from(decisive) / f64::from(valid) >= floor,
            "{what}: deputy alone decided only {decisive} of {valid} valid pairs (the floor is {:.0}%)",
            floor * 100.0
        );
    }
}

#[test]
fn deputy_and_symcc_agree_on_random_pairs() {
    let schema = fx::schema();
    let store = empty_store(&schema);
    let tally = Decisive::default();
    let mut runner = TestRunner::new(gen::config(96));
    let run = runner.run(&gen::pair(), |(parent_src, child_src)| {
        let alone = check_pair("random pair", &parent_src, &child_src, &schema, &store).map_err(TestCaseError::fail)?;
        tally.record(alone);
        Ok(())
    });
    if let Err(e) = run {
        panic!("{e}");
    }
    // Measured: deputy alone decides 97–100% of these.
    tally.floor("random pairs", 0.9);
}

/// The curated pairs, each over an empty store (where the hierarchy cannot matter).
#[test]
fn deputy_and_symcc_agree_on_the_curated_pairs() {
    let schema = fx::schema();
    let store = empty_store(&schema);
    let mut dir: Vec<_> = std::fs::read_dir(fx::fixtures().join("pairs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dir.sort();
    let mut failures = Vec::new();
    let mut checked = 0;
    let tally = Decisive::default();
    for path in dir {
        let text = std::fs::read_to_string(&path).unwrap();
        let (Some((_, rest)), name) = (text.split_once("--- parent\n"), path.display().to_string()) else {
            continue;
        };
        let Some((parent, child)) = rest.split_once("--- child\n") else {
            continue;
        };
        checked += 1;
        match check_pair(&name, parent, child, &schema, &store) {
            Ok(alone) => tally.record(alone),
            Err(e) => failures.push(e),
        }
    }
    assert!(checked >= 40, "only {checked} curated pairs were checked");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Measured: deputy alone decides 75 of the 76 valid ones over an empty store.
    tally.floor("curated pairs", 0.9);
}

// ---- the settling path, against the fixture store ----

/// Child arithmetic deputy cannot interpret; within the parent (an overflow errs the child's
/// permit, which then does not permit).
const ARITH_PARENT: &str =
    r#"permit(principal == ?principal, action == Action::"read", resource is File) when { context.taint <= 1 };"#;
const ARITH_CHILD: &str =
    r#"permit(principal == ?principal, action == Action::"read", resource is File) when { context.taint + 1 <= 2 };"#;

/// An entity-to-entity comparison deputy cannot interpret; the child exceeds.
const OWNER_PARENT: &str = r#"permit(principal == ?principal, action == Action::"read", resource is File) when { resource has owner && resource.owner == principal && resource.public };"#;
const OWNER_CHILD: &str = r#"permit(principal == ?principal, action == Action::"read", resource is File) when { resource has owner && principal == resource.owner };"#;

fn alone_and_settled(parent: &str, child: &str) -> (Verdict, Verdict) {
    let schema = fx::schema();
    let store = fx::entities(&schema);
    let parent = Grant::parse(parent).unwrap();
    let child = Grant::parse(child).unwrap();
    let alone = prove(&child, &parent, &schema, &store, &ProveOptions::default()).unwrap();
    let settled = prove(&child, &parent, &schema, &store, &with_solver()).unwrap();
    (alone, settled)
}

#[test]
fn arithmetic_deputy_cannot_read_is_settled_within() {
    let (alone, settled) = alone_and_settled(ARITH_PARENT, ARITH_CHILD);
    let Verdict::Inconclusive(reason) = &alone else {
        panic!("deputy alone should be inconclusive here, got {alone:?}");
    };
    assert_eq!(reason.code, "unsupported_construct");
    let Verdict::Within(e) = &settled else {
        panic!("the solver should settle it within, got {settled:?}");
    };
    assert_eq!(e.backend, BACKEND_SYMCC);
    assert_eq!(e.settled.as_ref().map(|i| i.code), Some("unsupported_construct"));
    let json = serde_json::to_value(&settled).unwrap();
    assert_eq!(json["verdict"], "within");
    assert_eq!(json["evidence"]["backend"], "symcc-cvc5");
    assert!(settled.render().contains("symcc-cvc5"), "{}", settled.render());
}

#[test]
fn entity_comparison_deputy_cannot_read_is_settled_exceeds_with_a_replayed_counterexample() {
    let (alone, settled) = alone_and_settled(OWNER_PARENT, OWNER_CHILD);
    assert!(
        matches!(alone, Verdict::Inconclusive(_)),
        "deputy alone should be inconclusive here, got {alone:?}"
    );
    let Verdict::Exceeds(cx) = &settled else {
        panic!("the solver should settle it exceeds, got {settled:?}");
    };
    assert_eq!(cx.backend, BACKEND_SYMCC);
    let schema = fx::schema();
    let store = fx::entities(&schema);
    assert!(
        fx::replays(cx, OWNER_CHILD, OWNER_PARENT, &schema, &store),
        "the counterexample must replay through Cedar: {cx:?}"
    );
}

#[test]
fn a_solver_counterexample_the_store_contradicts_stays_inconclusive() {
    // In the store `repo/src` is inside `repo`; SymCC, blind to the store, finds a file under
    // `repo/src` but outside `repo`. Replayed against the store, the parent allows it.
    let parent = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo") when { context.taint <= 1 };"#;
    let child = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src") when { context.taint + 1 <= 2 };"#;
    let (alone, settled) = alone_and_settled(parent, child);
    assert!(matches!(alone, Verdict::Inconclusive(_)), "{alone:?}");
    let Verdict::Inconclusive(reason) = &settled else {
        panic!("a counterexample the store contradicts must not become exceeds: {settled:?}");
    };
    let note = reason.solver.as_ref().expect("the solver's note");
    assert_eq!(note.code, "solver_replay_failed", "{note:?}");
    assert!(note.message.contains("did not replay"), "{}", note.message);
}

#[test]
fn a_solver_proof_that_assumes_entities_exist_does_not_settle() {
    // SymCC proves this for every store in which the file exists; deputy's question also
    // covers files missing from the store, where `resource.classification` errs.
    let parent = r#"permit(principal == ?principal, action == Action::"read", resource is File) when { resource.classification <= 1 };"#;
    let child = r#"permit(principal == ?principal, action == Action::"read", resource is File) when { resource.classification + 1 <= 2 };"#;
    let (alone, settled) = alone_and_settled(parent, child);
    assert!(matches!(alone, Verdict::Inconclusive(_)), "{alone:?}");
    let Verdict::Inconclusive(reason) = &settled else {
        panic!("{settled:?}");
    };
    let note = reason.solver.as_ref().expect("the solver's note");
    assert_eq!(note.code, "solver_existence", "{note:?}");
    assert!(note.message.contains("resource.classification"), "{}", note.message);
}

#[test]
fn a_missing_solver_leaves_the_verdict_inconclusive_and_says_so() {
    let schema = fx::schema();
    let store = fx::entities(&schema);
    let opts = ProveOptions {
        solver: Some(SolverConfig::cvc5("/nonexistent/cvc5")),
        ..ProveOptions::default()
    };
    let verdict = prove(
        &Grant::parse(ARITH_CHILD).unwrap(),
        &Grant::parse(ARITH_PARENT).unwrap(),
        &schema,
        &store,
        &opts,
    )
    .unwrap();
    let Verdict::Inconclusive(reason) = &verdict else {
        panic!("{verdict:?}");
    };
    assert_eq!(reason.code, "unsupported_construct");
    let note = reason.solver.as_ref().expect("the solver's note");
    assert_eq!(note.code, "solver_unavailable");
    assert!(note.message.contains("/nonexistent/cvc5"), "{}", note.message);
}

#[test]
fn a_tiny_time_limit_never_yields_an_unreplayed_answer() {
    let schema = fx::schema();
    let store = fx::entities(&schema);
    let opts = ProveOptions {
        solver: Some(SolverConfig {
            query_timeout_ms: 1,
            total_timeout_ms: 1,
            ..solver()
        }),
        ..ProveOptions::default()
    };
    let verdict = prove(
        &Grant::parse(OWNER_CHILD).unwrap(),
        &Grant::parse(OWNER_PARENT).unwrap(),
        &schema,
        &store,
        &opts,
    )
    .unwrap();
    match &verdict {
        Verdict::Inconclusive(r) => assert!(r.solver.is_some(), "{r:?}"),
        Verdict::Exceeds(cx) => assert!(fx::replays(cx, OWNER_CHILD, OWNER_PARENT, &schema, &store)),
        Verdict::Within(_) => panic!("this pair exceeds; a timeout cannot make it within"),
    }
}

/// Proving on an async worker thread is not what the server does (it uses `spawn_blocking`),
/// but the solver's own runtime must not collide with the caller's either way.
#[test]
fn the_second_opinion_runs_inside_and_outside_a_tokio_runtime() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let on_worker = runtime.block_on(async {
        let (_, settled) = alone_and_settled(ARITH_PARENT, ARITH_CHILD);
        settled
    });
    assert!(on_worker.is_within(), "{on_worker:?}");
    let blocking = runtime
        .block_on(async { tokio::task::spawn_blocking(|| alone_and_settled(ARITH_PARENT, ARITH_CHILD).1).await })
        .unwrap();
    assert!(blocking.is_within(), "{blocking:?}");
}

// ---- the CLI ----

fn cli(parent: &str, child: &str, extra: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("parent.cedar"), parent).unwrap();
    std::fs::write(dir.path().join("child.cedar"), child).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_deputy"))
        .arg("prove")
        .arg("--bundle")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("--parent")
        .arg(dir.path().join("parent.cedar"))
        .arg("--child")
        .arg(dir.path().join("child.cedar"))
        .arg("--json")
        .args(extra)
        .env_remove("DEPUTY_SOLVER")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8(out.stdout).unwrap())
}

/// Over the example bundle at the repository root, whose context has an optional `taint`.
const BUNDLE_PARENT: &str = r#"permit(principal == ?principal, action == Action::"read", resource is File) when { context has taint && context.taint <= 1 };"#;
const BUNDLE_CHILD: &str = r#"permit(principal == ?principal, action == Action::"read", resource is File) when { context has taint && context.taint + 1 <= 2 };"#;

#[test]
fn cli_solver_flag_settles_and_exits_zero() {
    let cvc5 = cvc5();
    let (code, out) = cli(BUNDLE_PARENT, BUNDLE_CHILD, &[]);
    assert_eq!(code, 2, "deputy alone: {out}");
    let (code, out) = cli(BUNDLE_PARENT, BUNDLE_CHILD, &["--solver", cvc5.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "within");
    assert_eq!(v["evidence"]["backend"], "symcc-cvc5");
    assert_eq!(v["evidence"]["settled"]["code"], "unsupported_construct");
    let (code, out) = cli(
        BUNDLE_PARENT,
        BUNDLE_CHILD,
        &["--solver", "cvc5", "--solver-timeout-ms", "20000"],
    );
    assert_eq!(code, 0, "`cvc5` on PATH: {out}");
}

#[test]
fn cli_with_a_bogus_solver_path_is_inconclusive_and_names_it() {
    let (code, out) = cli(BUNDLE_PARENT, BUNDLE_CHILD, &["--solver", "/no/such/cvc5"]);
    assert_eq!(code, 2, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "inconclusive");
    assert_eq!(v["reason"]["solver"]["code"], "solver_unavailable");
    assert!(v["reason"]["solver"]["message"]
        .as_str()
        .unwrap()
        .contains("/no/such/cvc5"));
}

// ---- the server ----

const ADMIN: &str = "admin-token-for-symcc-tests-0123";

fn server(solver: Option<SolverConfig>) -> (common::TestServer, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let s = common::TestServer::start(
        &common::repo_root(),
        common::Options {
            state: Some(state.path().to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            limits: deputy::delegation::Limits {
                solver,
                ..deputy::delegation::Limits::default()
            },
            ..common::Options::default()
        },
    );
    (s, state)
}

/// A spawn whose proof deputy alone leaves Inconclusive: pending without a solver, applied
/// with the solver's proof when `serve` has one.
#[test]
fn serve_with_a_solver_applies_a_delegation_deputy_alone_would_leave_pending() {
    let body = |grant: &str| serde_json::json!({"grant": grant, "ttl_seconds": 600, "ceiling": 1, "can_delegate": true, "task": "t", "reason": "r"});
    for (solver, status, verdict) in [(None, 202, "inconclusive"), (Some(solver()), 201, "within")] {
        let with = solver.is_some();
        let (s, _state) = server(solver);
        let root = common::post_as(&s, ADMIN, "/v1/delegations", &body(BUNDLE_PARENT));
        assert_eq!(root.status, 201, "{}", root.text());
        let token = root.json()["credential"].as_str().unwrap().to_owned();
        let child = common::post_as(&s, &token, "/v1/delegations", &body(BUNDLE_CHILD));
        assert_eq!(child.status, status, "solver {with}: {}", child.text());
        let proof = &child.json()["proof"];
        assert_eq!(proof["verdict"], verdict, "{proof}");
        if with {
            assert_eq!(proof["evidence"]["backend"], "symcc-cvc5", "{proof}");
        } else {
            assert!(proof["reason"]["solver"].is_null(), "{proof}");
        }
    }
}
