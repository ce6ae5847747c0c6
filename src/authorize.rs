//! The decision path: turn a request into a Cedar `Request` checked against the bundle's schema,
//! and decide it against one immutable bundle. Pure and synchronous; the HTTP layer calls it.

mod capabilities;
mod chain;
mod observed;
mod request;

use cedar_policy::{Entities, Request};
use serde::Serialize;

use std::sync::Arc;

use crate::agents::{is_agent_type, LiveAgent, ADMIN_APPROVER};
use crate::bundle::Bundle;
use crate::bundle::TaintRole;
use crate::snapshot::Snapshot;

pub use crate::eval::{Decision, PolicyError};
pub use capabilities::capabilities;
pub use chain::{DeniedBy, Guard};
pub use observed::decide_observed;
pub use request::{
    entity_ref, parse_context, parse_json, parse_uid, parts_of, read_parts, EntityRef, Fields, RequestError,
};

/// The parts of one request, as read from the wire.
pub struct Parts {
    pub principal: EntityRef,
    pub action: EntityRef,
    pub resource: EntityRef,
    pub context: Option<serde_json::Value>,
    pub context_field: String,
}

/// A decision with what deputy knows about the acting agent.
pub struct Outcome {
    pub decision: Decision,
    /// Which bound denied (agents managed by deputy only).
    pub denied_by: Option<DeniedBy>,
    /// The managed agent that acted, if the principal is one.
    pub agent: Option<Arc<LiveAgent>>,
    /// The agent's session taint after this decision, when it went up.
    pub taint_raised_to: Option<i64>,
    /// For a deny of a managed agent: the permission that would allow it.
    pub needed: Option<Needed>,
}

impl Outcome {
    /// The taint this decision raised, as (agent id, level), to be made durable before the
    /// decision is answered.
    pub fn raise(&self) -> Option<(String, i64)> {
        Some((self.agent.as_ref()?.row.id.clone(), self.taint_raised_to?))
    }
}

/// What a denied agent would need, as a grant it could request.
#[derive(Debug, Clone, Serialize)]
pub struct Needed {
    /// A Cedar template over `?principal` allowing exactly the denied request.
    pub template: String,
    /// False when the admin maximum denies it: no grant can give it.
    pub requestable: bool,
    /// Where to send `POST /v1/permission-requests` (the agent's grantor, or a human).
    pub approver: String,
}

pub use crate::bundle::{CLASSIFICATION_ATTR, TAINT_FIELD};

/// Decides one request against a snapshot. A principal that is a deputy-managed agent is
/// decided against the admin policies AND its whole chain, with `context.taint` supplied by
/// deputy; anyone else against the admin policies alone.
pub fn decide(snap: &Snapshot, parts: Parts, now: i64) -> Result<Outcome, RequestError> {
    decide_with(snap, parts, now, true)
}

/// `decide`, optionally without raising the agent's taint (for "what could I do" questions).
///
/// Fails closed: should deciding panic (a bug), the answer is a deny with an `internal` error,
/// never an allow and never a dropped connection.
pub fn decide_with(snap: &Snapshot, parts: Parts, now: i64, raise_taint: bool) -> Result<Outcome, RequestError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decide_inner(snap, parts, now, raise_taint)
    }))
    .unwrap_or_else(|_| {
        let request_id = crate::telemetry::request_id();
        tracing::error!(
            request_id = request_id.as_deref(),
            "deciding a request panicked; answering deny"
        );
        Ok(Outcome {
            decision: Decision {
                allow: false,
                reasons: Vec::new(),
                errors: vec![PolicyError {
                    policy: String::new(),
                    message: "internal error while deciding; denied".to_owned(),
                }],
            },
            denied_by: None,
            agent: None,
            taint_raised_to: None,
            needed: None,
        })
    })
}

fn decide_inner(snap: &Snapshot, parts: Parts, now: i64, raise_taint: bool) -> Result<Outcome, RequestError> {
    let bundle = &snap.bundle;
    let is_agent = is_agent_type(parts.principal.uid.type_name());
    if is_agent && snap.agents_unknown {
        // INVARIANT: without the state, a revoked or narrowed agent would look like a plain
        // principal bounded only by the admin policies: fail closed instead.
        return Ok(Outcome {
            decision: Decision {
                allow: false,
                reasons: Vec::new(),
                errors: Vec::new(),
            },
            denied_by: Some(DeniedBy::StateUnavailable),
            agent: None,
            taint_raised_to: None,
            needed: None,
        });
    }
    let agent = is_agent
        .then(|| snap.agents.get(parts.principal.uid.id().unescaped()))
        .flatten()
        .cloned();
    let Some(agent) = agent else {
        let unknown =
            is_agent && bundle.agent_model && !bundle.agent_names.declares(parts.principal.uid.id().unescaped());
        let request = build_request(
            bundle,
            parts.principal,
            parts.action,
            parts.resource,
            parts.context,
            &parts.context_field,
        )?;
        // INVARIANT (one identity namespace): an `Agent` is declared by the bundle, managed by
        // deputy, or unknown; an unknown one has no authority at all, not the admin maximum.
        if unknown {
            return Ok(Outcome {
                decision: Decision {
                    allow: false,
                    reasons: Vec::new(),
                    errors: Vec::new(),
                },
                denied_by: Some(DeniedBy::UnknownAgent),
                agent: None,
                taint_raised_to: None,
                needed: None,
            });
        }
        return Ok(Outcome {
            decision: bundle.admin().evaluate(snap.entities(), &request),
            denied_by: None,
            agent: None,
            taint_raised_to: None,
            needed: None,
        });
    };
    let mut context = match parts.context {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err(RequestError::wrong_type(&parts.context_field, "a JSON object")),
    };
    // deputy supplies the taint for its agents, where the action's context declares it;
    // whatever a caller sent is replaced (or dropped).
    context.remove(TAINT_FIELD);
    if bundle.taint_in_context.contains(&parts.action.uid) {
        context.insert(TAINT_FIELD.to_owned(), serde_json::Value::from(agent.taint()));
    }
    let resource_uid = parts.resource.uid.clone();
    let action_uid = parts.action.uid.clone();
    let request = build_request(
        bundle,
        parts.principal,
        parts.action,
        parts.resource,
        Some(serde_json::Value::Object(context)),
        &parts.context_field,
    )?;
    let guard = Guard {
        role: bundle.taint_roles.get(&action_uid).copied(),
        classification: classification(snap.entities(), &resource_uid),
    };
    let chain = chain::decide(bundle.admin(), snap.entities(), &agent, &request, guard, now);
    let mut taint_raised_to = None;
    if raise_taint && chain.decision.allow && guard.role == Some(TaintRole::Source) {
        if let Some(level) = guard.classification {
            if agent.raise_taint(level) {
                taint_raised_to = Some(level);
            }
        }
    }
    let needed = match &chain.denied_by {
        Some(DeniedBy::Admin { .. }) | Some(DeniedBy::Grant { .. }) => Some(Needed {
            template: format!("permit(principal == ?principal, action == {action_uid}, resource == {resource_uid});"),
            requestable: matches!(chain.denied_by, Some(DeniedBy::Grant { .. })),
            approver: agent.row.parent.clone().unwrap_or_else(|| ADMIN_APPROVER.to_owned()),
        }),
        _ => None,
    };
    Ok(Outcome {
        decision: chain.decision,
        denied_by: chain.denied_by,
        agent: Some(agent),
        taint_raised_to,
        needed,
    })
}

fn classification(entities: &Entities, uid: &cedar_policy::EntityUid) -> Option<i64> {
    match entities.get(uid)?.attr(CLASSIFICATION_ATTR)? {
        Ok(cedar_policy::EvalResult::Long(l)) => Some(l),
        _ => None,
    }
}

/// Builds a Cedar request from its parts, checked against the bundle's schema.
pub fn build_request(
    bundle: &Bundle,
    principal: EntityRef,
    action: EntityRef,
    resource: EntityRef,
    context: Option<serde_json::Value>,
    context_field: &str,
) -> Result<Request, RequestError> {
    let context = parse_context(bundle, &action.uid, context, context_field)?;
    Request::new(principal.uid, action.uid, resource.uid, context, Some(&bundle.schema))
        .map_err(|e| RequestError::from_validation(&e, &principal.field, &action.field, &resource.field))
}
