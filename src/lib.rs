//! deputy: a Cedar policy decision point that runs as a sidecar next to an AI-agent runtime.
//!
//! See `ARCHITECTURE.md` for how the modules fit together.
pub mod prover;
