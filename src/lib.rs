//! deputy: a Cedar policy decision point that runs as a sidecar next to an AI-agent runtime.
//!
//! See `ARCHITECTURE.md` for how the modules fit together.

pub mod agents;
pub mod authorize;
pub mod authzen;
pub mod bundle;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delegation;
pub mod error;
pub mod eval;
pub mod http;
pub mod probe;
pub mod prover;
pub mod server;
pub mod snapshot;
pub mod telemetry;
