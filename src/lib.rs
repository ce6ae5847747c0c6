//! deputy: a Cedar policy decision point that runs as a sidecar next to an AI-agent runtime,
//! and lets an agent hand a child agent a provably narrower slice of its own authority.
//!
//! Most users run the `deputy` binary (see README.md). This crate's public surface is for
//! embedding the same pieces in a Rust program:
//!
//! - [`Bundle`]: load and validate a policy bundle directory (schema, policies, entities,
//!   grants), every problem reported with its file and line.
//! - [`Decider`]: decide requests against a bundle with deputy's decision path.
//! - [`prover`]: prove that a child grant is within its parent's delegable view, or find a
//!   request (replayed through Cedar) that shows it is not.
//! - [`Sidecar`]: run the whole sidecar (HTTP API, delegation, hot reload) in-process.
//!
//! Everything else is internal; deputy's own tests, benchmarks and fuzz targets see it through
//! the `test-support` feature, which is not an API. ARCHITECTURE.md maps the modules.
//!
//! ```
//! use deputy::{Bundle, Decider, LoadOptions};
//! use serde_json::json;
//!
//! // The example bundle at the repository's root.
//! let bundle = Bundle::load(env!("CARGO_MANIFEST_DIR").as_ref(), &LoadOptions::default())?;
//! let decider = Decider::new(bundle);
//! let decision = decider.decide(&json!({
//!     "principal": {"type": "Agent", "id": "orchestrator"},
//!     "action": {"type": "Action", "id": "read"},
//!     "resource": {"type": "File", "id": "repo/src/main.rs"},
//! }))?;
//! assert!(decision.allow);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![cfg_attr(not(feature = "test-support"), warn(missing_docs))]

macro_rules! internal {
    ($($name:ident),* $(,)?) => {$(
        #[cfg(feature = "test-support")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "test-support"))]
        mod $name;
    )*};
}

internal!(
    agents, authorize, authzen, bundle, clock, config, decider, delegation, error, eval, gitops, http, mcp, probe,
    server, snapshot, telemetry,
);
/// The `deputy` command line (the binary's entry point; its flags are documented by `--help`).
#[doc(hidden)]
#[allow(missing_docs)]
pub mod cli;
pub mod prover;

/// README.md's Rust examples run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use authorize::{Decision, PolicyError, RequestError};
pub use bundle::{Bundle, BundleError, LoadOptions, Problem, ReloadOutcome};
pub use decider::Decider;
pub use error::{ErrorCode, ProblemCode};
pub use server::{Running, Sidecar};
