//! What an agent may do now: every (action, resource) pair over the bundle's entities, each
//! decided by the same path `/v1/authorize` takes (admin AND the chain, with the agent's taint),
//! without raising the taint.
//!
//! Enumeration rather than Cedar partial evaluation: it gives exactly the authorizer's answer
//! for every entity the bundle knows (partial evaluation would need the experimental feature
//! and still leave residuals to interpret), and a sidecar's bundle holds the resources its
//! agent can name. Resources the bundle does not hold are not listed; authorize still decides
//! them.

use cedar_policy::EntityUid;
use serde::Serialize;
use serde_json::json;

use super::{decide_with, EntityRef, Parts};
use crate::agents::{is_agent_type, LiveAgent};
use crate::snapshot::Snapshot;

/// The resource type listed first: tools are what a harness shows or hides.
const TOOL_TYPE: &str = "Tool";

#[derive(Debug, Clone, Serialize)]
pub struct Capability {
    pub action: String,
    pub resource: serde_json::Value,
    pub reasons: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub agent: String,
    /// Allowed (action, resource) pairs, tools first.
    pub allowed: Vec<Capability>,
    /// Actions whose context needs more than deputy can supply, so they were not enumerated.
    pub not_enumerated: Vec<String>,
    /// Whether the agent may spawn children at all (its `can_delegate`).
    pub can_delegate: bool,
    pub policy_version: String,
}

pub fn capabilities(snap: &Snapshot, agent: &LiveAgent, now: i64) -> Capabilities {
    let mut allowed = Vec::new();
    let mut not_enumerated = Vec::new();
    let principal = EntityRef {
        uid: agent.uid.clone(),
        field: "principal".to_owned(),
    };
    let mut actions: Vec<&EntityUid> = snap.bundle.schema.actions().collect();
    actions.sort_by_key(|a| a.to_string());
    for action in actions {
        let applies_to_agents = snap
            .bundle
            .schema
            .principals_for_action(action)
            .is_some_and(|mut p| p.any(is_agent_type));
        // Delegating is reported as `can_delegate`; its context describes a child to be.
        // Invoking is asked of `POST /v1/invocations`, with a context deputy builds.
        let name = action.id().unescaped();
        if !applies_to_agents || name == crate::bundle::DELEGATE_ACTION || name == crate::bundle::INVOKE_ACTION {
            continue;
        }
        let resource_types: Vec<String> = snap
            .bundle
            .schema
            .resources_for_action(action)
            .map(|r| r.map(ToString::to_string).collect())
            .unwrap_or_default();
        let mut context_ok = true;
        for entity in snap.entities().iter() {
            let uid = entity.uid();
            if !resource_types.contains(&uid.type_name().to_string()) {
                continue;
            }
            let parts = Parts {
                principal: principal.clone(),
                action: EntityRef {
                    uid: action.clone(),
                    field: "action".to_owned(),
                },
                resource: EntityRef {
                    uid: uid.clone(),
                    field: "resource".to_owned(),
                },
                context: None,
                context_field: "context".to_owned(),
            };
            match decide_with(snap, parts, now, false) {
                Ok(o) if o.decision.allow => allowed.push(Capability {
                    action: action.id().unescaped().to_owned(),
                    resource: json!({"type": uid.type_name().to_string(), "id": uid.id().unescaped()}),
                    reasons: o.decision.reasons,
                }),
                Ok(_) => {}
                Err(_) => {
                    context_ok = false;
                    break;
                }
            }
        }
        if !context_ok {
            not_enumerated.push(action.id().unescaped().to_owned());
        }
    }
    allowed.sort_by_key(|c| {
        (
            c.resource["type"] != TOOL_TYPE,
            c.action.clone(),
            c.resource.to_string(),
        )
    });
    Capabilities {
        agent: agent.row.id.clone(),
        allowed,
        not_enumerated,
        can_delegate: agent.row.can_delegate && agent.is_live(now),
        policy_version: snap.bundle.version.clone(),
    }
}
