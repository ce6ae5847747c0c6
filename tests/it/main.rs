//! deputy's integration tests, one binary: each module talks to a real server (or the real
//! binary, Helm engine, OTLP receiver, solver) the way its users do. Shared helpers live in
//! `common`. Run one module with `cargo test --test it <module>::`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod adversary;
mod attack;
mod attack_discovery;
mod attack_held;
mod attack_input;
mod attack_invocation;
mod attack_mcp;
mod attack_regrant;
mod authzen_conformance;
mod bad_input;
mod capabilities;
mod cedar_conformance;
mod common;
mod decision_log;
mod delegation;
mod discovery;
mod faults;
mod fuzz_regressions;
mod gitops;
mod helm;
mod image;
mod index_differential;
mod invocation;
mod layering;
mod mcp;
mod metrics;
mod model;
mod otel;
mod permission_flow;
mod process;
mod prover_cli;
mod prover_namespaces;
mod prover_pairs;
mod prover_soundness;
mod prover_symcc;
mod quickstart;
mod readme;
mod reload;
mod shadow;
mod sidecar;
mod state_upgrade;
