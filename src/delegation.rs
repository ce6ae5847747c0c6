//! Delegation: agents with grants, chains, credentials, durable state and the audit trail.
//!
//! An agent's authority at run time is the admin policies AND each ancestor's delegable view
//! AND its own grant (see `chain`). Creating a child is proved first (see `crate::prover`) and
//! recorded durably with its audit event in one transaction (see `store`), under the one
//! writer lock that every change takes (see `service`). docs/SECURITY.md lists the invariants
//! and the tests that guard each.

mod approval;
mod audit;
mod bundle_agents;
pub mod credential;
mod gate;
mod identity;
mod invoke;
mod lifecycle;
mod permission;
mod service;
mod spawn;
mod store;
#[cfg(test)]
mod tests;

pub use crate::agents::{LiveAgent, Registry, ADMIN_APPROVER, AGENT_TYPE};
#[cfg(test)]
use audit::AuditKind;
pub use bundle_agents::shipped_agent;
pub use invoke::InvokeRequest;
pub use permission::Decision as PermissionDecision;
pub use service::{Caller, Delegation, DelegationError, Limits, DELEGATE_ACTION, STATE_FILE};
pub use spawn::{SpawnOutcome, SpawnRequest};
pub use store::{RequestStatus, Store};
