//! Delegation: agents with grants, chains, credentials, durable state and the audit trail.
//!
//! An agent's authority at run time is the admin policies AND every grant along its chain (see
//! `chain`). Creating a child is proved first (see `crate::prover`) and recorded durably with
//! its audit event in one transaction (see `store`).

mod chain;
pub mod credential;
mod permission;
mod registry;
mod service;
mod store;

pub use chain::{decide, ChainDecision, DeniedBy, Guard};
pub use permission::{Decision as PermissionDecision, RequestView, ADMIN_APPROVER};
pub use registry::{agent_uid, is_agent_type, link, LiveAgent, Registry, RegistryError, AGENT_TYPE};
pub use service::{
    Caller, Delegation, DelegationError, Limits, SpawnOutcome, SpawnRequest, DELEGATE_ACTION, STATE_FILE,
};
pub use store::{AgentRow, AuditEvent, AuditRecord, StateError, Store};
