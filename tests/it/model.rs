//! Model-based adversarial test of the delegation promise (issue 14).
//!
//! Random sequences of operations — spawns with grants from a grammar that includes foreign
//! principals, `@delegable("false")` permits and forbids, names equal to bundle ids and approver
//! names; approve, deny and escalate by random identities; revoke and complete; permission
//! requests; decisions through every endpoint; time moving on; bundle reloads that move entities,
//! change a bundle agent, break the schema or take a managed agent's name; graceful restarts and
//! `kill -9`; a spawn racing a revocation; approvals raced by concurrent carry-outs — run against
//! the real `deputy` binary on the adversary bundle. After every step, for every agent the model
//! knows, what deputy allows is compared with the oracle (`model/oracle.rs`, Cedar's own
//! `Authorizer` over the model's own record), both ways: no allow beyond admin AND each
//! ancestor's delegable view AND the agent's own grant (and deputy's bounds), and nothing
//! missing either (so an always-deny deputy fails too). Every change deputy acknowledges is
//! checked against what it may only do for an entitled, live caller; each approval creates at
//! most one child; a restart keeps everything, taint included.
//!
//! Invocations (issue 19) are operations too: the model predicts deputy's answer exactly (the
//! bundle permits every `invoke_agent`, so deputy's own rules decide: liveness, sessions are
//! not callees, cycles, depth, taint above the callee's ceiling), and a session's authority is
//! the oracle's for its callee under the session's own taint and liveness; revocations end the
//! sessions of either side.
//!
//! `DEPUTY_MODEL_CASES` (default 64) sets how many sequences run, `DEPUTY_MODEL_SEED` which.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
mod deputy;
mod oracle;
mod run;

use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};

use run::{Op, Ops, World};

impl StateMachineTest for World {
    type SystemUnderTest = World;
    type Reference = Ops;

    fn init_test(_: &()) -> World {
        World::start()
    }

    fn apply(mut world: World, _: &(), op: Op) -> World {
        world.apply(&op);
        world
    }

    fn check_invariants(world: &World, _: &()) {
        world.check();
    }
}

fn cases() -> u32 {
    std::env::var("DEPUTY_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// The sequences come from a seeded generator, so a run (and its coverage) is reproducible;
/// `DEPUTY_MODEL_SEED=<u64>` explores others.
fn seed() -> u64 {
    std::env::var("DEPUTY_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x0DE9_07A1)
}

#[test]
fn the_delegation_promise_holds_against_random_adversaries() {
    let config = ProptestConfig {
        cases: cases(),
        max_shrink_iters: std::env::var("DEPUTY_MODEL_SHRINK")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed().to_le_bytes());
    let rng = proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed_bytes);
    eprintln!("model seed {} ({} cases)", seed(), cases());
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(config.clone(), rng);
    let result = runner.run(&Ops::sequential_strategy(10..50), |(init, transitions, seen)| {
        World::test_sequential(config.clone(), init, transitions, seen);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // A run that never reached the interesting states proves nothing: require that it did.
    let seen = run::coverage();
    eprintln!("model coverage: {seen:?}");
    for what in [
        "spawn applied",
        "spawn pending",
        "spawn refused",
        "approval carried out",
        "permission extended",
        "decision refused",
        "revoked",
        "allowed",
        "denied",
        "reload installed",
        "reload refused",
        "restart",
        "kill -9",
        "race against revocation",
        "race for one approval",
        "drift",
        "invoked",
        "invocation refused",
    ] {
        assert!(
            seen.get(what).copied().unwrap_or(0) > 0,
            "no case reached `{what}`: {seen:?}"
        );
    }
}
