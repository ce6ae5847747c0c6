//! Who is who: the names deputy gives agents and the approvers a pending change waits on.
//!
//! INVARIANT (one identity namespace): every `Agent` principal is exactly one of: declared by
//! the bundle, managed by deputy (live, revoked or expired: its id stays taken), or unknown. A
//! name an agent asks for is refused when the bundle owns it (`bundle::AgentNames`), when it is
//! one of deputy's own actor names, when it has the shape of a minted id, or when any agent ever
//! held it. So a name never comes to mean a second identity.
//!
//! INVARIANT (approvers are identities): an approver is either the human (the admin credential)
//! or an agent the *bundle* declares that is a strict ancestor of the one asking. Agents can
//! choose their children's names, never the bundle's, so no agent can name itself (or a child)
//! into an approver.

use crate::bundle::Bundle;
use crate::error::ErrorCode;

use super::service::DelegationError;
use crate::agents::{LiveAgent, Registry};

pub use crate::agents::ADMIN_APPROVER;
/// Names deputy itself uses for actors in the audit trail and in approvals.
pub const RESERVED_NAMES: [&str; 4] = [ADMIN_APPROVER, "human", "bundle", "deputy"];
/// The prefix of ids deputy mints; no requested name may start with it.
pub const MINTED_PREFIX: &str = "agt-";

/// A fresh id for an agent that asked for none.
pub fn mint_id() -> String {
    format!("{MINTED_PREFIX}{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Checks a requested agent name against the identity namespace: the latest bundle, every agent
/// deputy ever created, and the creator's chain (for a clearer error on cycles).
pub fn check_new_id(
    bundle: &Bundle,
    agents: &Registry,
    parent: Option<&LiveAgent>,
    id: &str,
) -> Result<(), DelegationError> {
    let valid = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return Err(DelegationError::new(
            ErrorCode::InvalidField,
            format!("`agent_id` `{id}` must be 1-64 characters of letters, digits, `-`, `_` or `.`"),
        ));
    }
    if parent.is_some_and(|p| p.chain.iter().any(|c| c == id)) {
        return Err(DelegationError::new(
            ErrorCode::DelegationCycle,
            format!("`{id}` is already in this delegation chain"),
        )
        .help("every child is a fresh identity; an agent cannot delegate to itself or an ancestor"));
    }
    let reserved = RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(id))
        || id.to_ascii_lowercase().starts_with(MINTED_PREFIX)
        || bundle.agent_names.owns(id);
    if reserved {
        return Err(DelegationError::new(
            ErrorCode::AgentIdReserved,
            format!(
                "`agent_id` `{id}` is reserved: the bundle names an agent `{id}`, or it is one of deputy's own \
                 names (`admin`, `human`, `bundle`, `deputy`, `agt-…`)"
            ),
        )
        .help("leave `agent_id` out and deputy mints a fresh id, or choose a name the bundle does not use"));
    }
    if agents.contains(id) {
        return Err(DelegationError::new(
            ErrorCode::AgentExists,
            format!("an agent `{id}` already exists"),
        ));
    }
    Ok(())
}

/// The identities that must approve a change `requester` asked for, in the order they decide:
/// each name an `@ask` rule gives that is a bundle-declared agent strictly above the requester,
/// nearest first, then the human if any rule names anyone else. Sorted and deduplicated, so the
/// outcome never depends on the order the rules were evaluated in.
pub fn resolve_approvers<'a>(
    bundle: &Bundle,
    requester: &LiveAgent,
    named: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut agents: Vec<(usize, String)> = Vec::new();
    let mut human = false;
    for name in named {
        let position = requester.ancestors().iter().position(|a| a == name);
        match position {
            Some(at) if bundle.agent_names.declares(name) => agents.push((at, name.to_owned())),
            _ => human = true,
        }
    }
    // Nearest ancestor first.
    agents.sort_by_key(|a| std::cmp::Reverse(a.0));
    agents.dedup();
    let mut out: Vec<String> = agents.into_iter().map(|(_, n)| n).collect();
    if human {
        out.push(ADMIN_APPROVER.to_owned());
    }
    out
}

/// Whether `caller` (an agent id, or `None` for the admin) may act as `approver` on a request
/// `requester` filed: the human approver needs the admin credential; an agent approver must be
/// the agent named and a strict ancestor of the requester (never the requester or below it).
pub fn may_approve(caller: Option<&str>, approver: &str, requester: Option<&LiveAgent>) -> bool {
    match caller {
        None => true,
        Some(_) if approver == ADMIN_APPROVER => false,
        Some(id) => id == approver && requester.is_some_and(|r| r.has_ancestor(id)),
    }
}
