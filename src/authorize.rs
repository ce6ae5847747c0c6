//! The decision path: turn a request into a Cedar `Request` checked against the bundle's schema,
//! and decide it against one immutable bundle. Pure and synchronous; the HTTP layer calls it.

mod capabilities;
mod chain;
mod observed;
mod request;
pub mod shadow;

use cedar_policy::{Entities, Request};
use serde::Serialize;

use std::sync::Arc;

use crate::agents::{is_agent_type, LiveAgent, SessionRow, ADMIN_APPROVER};
use cedar_policy::EntityUid;
use crate::bundle::Bundle;
use crate::bundle::TaintRole;
use crate::snapshot::Snapshot;

pub use crate::eval::{Decision, PolicyError};
pub use capabilities::{capabilities, Capabilities};
pub use chain::{Bounds, DeniedBy, Guard};
pub use observed::decide_observed;
pub use request::{
    entity_ref, parse_context, parse_json, parse_uid, parts_of, read_parts, EntityRef, Fields, RequestError,
};

/// The parts of one request, as read from the wire.
#[derive(Clone)]
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
    /// The level this decision read at, when it is above the agent's durable taint (raised in
    /// memory now, or by an earlier decision not yet durable): to be made durable, with
    /// everything it flows to, before the answer.
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
    if let Some(session) = agent.session.clone() {
        return decide_session(snap, parts, agent, &session, now, raise_taint);
    }
    let guard = Guard {
        role: bundle.taint_roles.get(&parts.action.uid).copied(),
        classification: classification(snap.entities(), &parts.resource.uid),
    };
    let request = agent_request(bundle, parts, agent.taint())?;
    let chain = chain::decide(bundle.admin(), snap.entities(), &agent, &request, guard, now);
    let taint_raised_to = (raise_taint && chain.decision.allow).then(|| raise_on_read(&agent, guard)).flatten();
    let needed = match (&chain.denied_by, request.action(), request.resource()) {
        (Some(DeniedBy::Admin { .. } | DeniedBy::Grant { .. }), Some(action_uid), Some(resource_uid)) => Some(Needed {
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

/// The Cedar request of a managed agent (or a session, whose principal is its callee) with
/// deputy's `taint` in the context. When that taint is the whole context (an agent's usual
/// request) it is built directly rather than through the JSON parser.
fn agent_request(bundle: &Bundle, parts: Parts, taint: i64) -> Result<Request, RequestError> {
    Ok(match taint_only_context(bundle, &parts, taint) {
        // Only the taint deputy supplies (an agent's usual request): built directly rather than
        // through the JSON parser. Its context was checked against the schema for this action
        // at load: only the scope is checked here, as `Request::new` checks it (scope first).
        Some(context) if bundle.taint_context_valid.contains(&parts.action.uid) => {
            scope_checked(bundle, parts.principal, parts.action, parts.resource, context)?
        }
        // Checked whole: `Request::new` gives Cedar's error.
        Some(context) => Request::new(
            parts.principal.uid,
            parts.action.uid,
            parts.resource.uid,
            context.into(),
            Some(&bundle.schema),
        )
        .map_err(|e| RequestError::from_validation(&e, &parts.principal.field, &parts.action.field, &parts.resource.field))?,
        None => {
            let mut parts = parts;
            let context = with_taint(bundle, &mut parts, taint)?;
            build_request(
                bundle,
                parts.principal,
                parts.action,
                parts.resource,
                Some(serde_json::Value::Object(context)),
                &parts.context_field,
            )?
        }
    })
}

/// The context `{taint}` alone, when that is what [`with_taint`] would make of the request's
/// (the action's context declares `taint` and the caller sent nothing else), built without a
/// JSON map; `None` otherwise.
fn taint_only_context(bundle: &Bundle, parts: &Parts, taint: i64) -> Option<cedar_policy_core::ast::Context> {
    let nothing_else = match &parts.context {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Object(m)) => m.keys().all(|k| k == TAINT_FIELD),
        Some(_) => false,
    };
    if !nothing_else || !bundle.taint_in_context.contains(&parts.action.uid) {
        return None;
    }
    Some(crate::bundle::taint_context(taint))
}

/// The request's context with deputy's `taint` in place of whatever the caller sent (where the
/// action's context declares one).
fn with_taint(
    bundle: &Bundle,
    parts: &mut Parts,
    taint: i64,
) -> Result<serde_json::Map<String, serde_json::Value>, RequestError> {
    let mut context = match parts.context.take() {
        None | Some(serde_json::Value::Null) => serde_json::Map::new(),
        Some(serde_json::Value::Object(m)) => m,
        Some(_) => return Err(RequestError::wrong_type(&parts.context_field, "a JSON object")),
    };
    context.remove(TAINT_FIELD);
    if bundle.taint_in_context.contains(&parts.action.uid) {
        context.insert(TAINT_FIELD.to_owned(), serde_json::Value::from(taint));
    }
    Ok(context)
}

/// Decides a request of a session: as its callee (the admin policies, the callee's chain and
/// grant, all asked about the callee), under the session's own bounds — its lifetime and every
/// caller's up its invocation chain, the callee's ceiling, and the session's taint (at least
/// its caller's when it was invoked, and the callee's). A session's taint rises on its own.
///
/// INVARIANT (a session never exceeds its callee): every allow for a session is an allow for
/// its callee on the same action, resource and context (with the session's taint, never lower
/// than the callee's); the session's own entity, id and (empty) grant play no part.
fn decide_session(
    snap: &Snapshot,
    parts: Parts,
    agent: Arc<LiveAgent>,
    session: &SessionRow,
    now: i64,
    raise_taint: bool,
) -> Result<Outcome, RequestError> {
    let bundle = &snap.bundle;
    let denied = |by: DeniedBy, agent: Arc<LiveAgent>| Outcome {
        decision: Decision {
            allow: false,
            reasons: Vec::new(),
            errors: Vec::new(),
        },
        denied_by: Some(by),
        agent: Some(agent),
        taint_raised_to: None,
        needed: None,
    };
    let callee = match session_standing(snap, &agent, now) {
        Ok(c) => c,
        Err(by) => return Ok(denied(by, agent)),
    };
    let bounds = Bounds {
        ceiling: agent.row.ceiling.min(callee.ceiling()),
        taint: agent.taint().max(callee.taint()),
        inherited: Some((session.caller_taint, session.caller.clone())),
    };
    let mut parts = parts;
    let resource_uid = parts.resource.uid.clone();
    let action_uid = parts.action.uid.clone();
    parts.principal.uid = callee.uid().clone();
    let request = agent_request(bundle, parts, bounds.taint)?;
    let guard = Guard {
        role: bundle.taint_roles.get(&action_uid).copied(),
        classification: classification(snap.entities(), &resource_uid),
    };
    let chain = match &callee {
        Callee::Managed(c) => chain::decide_bounded(bundle.admin(), snap.entities(), c, &request, guard, now, &bounds),
        Callee::Declared { .. } => chain::decide_admin_only(bundle.admin(), snap.entities(), &request, guard, &bounds),
    };
    let taint_raised_to = (raise_taint && chain.decision.allow).then(|| raise_on_read(&agent, guard)).flatten();
    Ok(Outcome {
        decision: chain.decision,
        denied_by: chain.denied_by,
        agent: Some(agent),
        taint_raised_to,
        needed: None,
    })
}

/// The agent a session serves, as the serving snapshot has it.
pub enum Callee {
    /// An agent deputy manages (created through the API, or a bundle agent with a grant).
    Managed(Arc<LiveAgent>),
    /// An agent only the bundle declares: the admin policies alone bound it.
    Declared { uid: EntityUid, ceiling: i64 },
}

impl Callee {
    /// `id` as a callee in `snap`, if it is an agent at all (live or not, session or not: the
    /// caller checks).
    pub fn resolve(snap: &Snapshot, id: &str) -> Option<Callee> {
        if let Some(a) = snap.agents.get(id) {
            return Some(Callee::Managed(Arc::clone(a)));
        }
        if !snap.bundle.agent_names.declares(id) {
            return None;
        }
        let uid = crate::agents::agent_uid(id).ok()?;
        // Fail closed: a declared agent without a Long `ceiling` may touch nothing classified,
        // and no tainted caller may invoke it.
        let ceiling = match snap.entities().get(&uid)?.attr("ceiling") {
            Some(Ok(cedar_policy::EvalResult::Long(l))) => l,
            _ => i64::MIN,
        };
        Some(Callee::Declared { uid, ceiling })
    }

    pub fn uid(&self) -> &EntityUid {
        match self {
            Callee::Managed(a) => &a.uid,
            Callee::Declared { uid, .. } => uid,
        }
    }

    /// The ceiling deputy enforces for it: the lowest on its chain.
    pub fn ceiling(&self) -> i64 {
        match self {
            Callee::Managed(a) => a.chain_ceiling,
            Callee::Declared { ceiling, .. } => *ceiling,
        }
    }

    /// Its own taint (an agent only the bundle declares reads nothing through deputy).
    pub fn taint(&self) -> i64 {
        match self {
            Callee::Managed(a) => a.taint(),
            Callee::Declared { .. } => 0,
        }
    }

    /// When it stops being able to act (an agent the bundle declares: while declared).
    pub fn expires_at(&self) -> i64 {
        match self {
            Callee::Managed(a) => a.row.expires_at,
            Callee::Declared { .. } => i64::MAX,
        }
    }
}

/// The bound that stops `agent` acting: it, or an ancestor, was revoked or expired.
pub fn standing(agent: &LiveAgent, now: i64) -> Option<DeniedBy> {
    if agent.is_revoked() {
        return Some(DeniedBy::Revoked);
    }
    if agent.is_expired(now) {
        return Some(DeniedBy::Expired);
    }
    let hop = agent.hops.iter().find(|h| !h.is_live(now))?;
    Some(if hop.is_revoked() {
        DeniedBy::Revoked
    } else {
        DeniedBy::Expired
    })
}

/// Longest invocation chain walked; a longer one (never written) fails closed.
const MAX_CHAIN_WALK: usize = 64;

/// Whether a session can act now, and as whom: the session, every caller up its invocation
/// chain (with their ancestors) and its callee must be live, and the callee an agent the
/// snapshot still knows. Revocations cascade to sessions when recorded; this holds in between.
pub fn session_standing(snap: &Snapshot, agent: &Arc<LiveAgent>, now: i64) -> Result<Callee, DeniedBy> {
    let session = agent.session.as_ref().ok_or(DeniedBy::Revoked)?;
    let mut current = Arc::clone(agent);
    for _ in 0..MAX_CHAIN_WALK {
        if let Some(by) = standing(&current, now) {
            return Err(by);
        }
        let Some(s) = &current.session else {
            let callee = Callee::resolve(snap, &session.callee).ok_or(DeniedBy::Revoked)?;
            if let Callee::Managed(c) = &callee {
                if c.session.is_some() {
                    return Err(DeniedBy::Revoked);
                }
                if let Some(by) = standing(c, now) {
                    return Err(by);
                }
            }
            return Ok(callee);
        };
        current = Arc::clone(snap.agents.get(&s.caller).ok_or(DeniedBy::Revoked)?);
    }
    Err(DeniedBy::Revoked)
}

fn classification(entities: &Entities, uid: &cedar_policy::EntityUid) -> Option<i64> {
    match entities.get(uid)?.attr(CLASSIFICATION_ATTR)? {
        Ok(cedar_policy::EvalResult::Long(l)) => Some(l),
        _ => None,
    }
}

/// The request `principal, action, resource, context` as `Request::new` with the bundle's schema
/// builds it, for a `context` already known to pass the schema's check for `action` (checked at
/// load: it depends on the action alone). Only the scope is checked here, as `Request::new`
/// checks it (first, so its error is the one `Request::new` would give).
fn scope_checked(
    bundle: &Bundle,
    principal: EntityRef,
    action: EntityRef,
    resource: EntityRef,
    context: cedar_policy_core::ast::Context,
) -> Result<Request, RequestError> {
    use cedar_policy_core::ast::{EntityUIDEntry, RequestSchema};
    let core: &cedar_policy_core::validator::ValidatorSchema = bundle.schema.as_ref();
    let (p, a, r) = (principal.uid.as_ref(), action.uid.as_ref(), resource.uid.as_ref());
    // Scopes of ordinary types the schema allows were checked at load (`ScopeTypes`).
    if !bundle.scope_types.accepts(p, a, r) {
        core.validate_scope_variables(Some(p), Some(a), Some(r))
            .map_err(|e| RequestError::from_validation(&e.into(), &principal.field, &action.field, &resource.field))?;
    }
    Ok(Request::from(cedar_policy_core::ast::Request::new_unchecked(
        EntityUIDEntry::known(principal.uid.into(), None),
        EntityUIDEntry::known(action.uid.into(), None),
        EntityUIDEntry::known(resource.uid.into(), None),
        Some(context),
    )))
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
    // No context (what `parse_context` reads as the empty one), for an action whose context type
    // accepts the empty record (checked at load): only the scope is checked.
    let empty = match &context {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::Object(m)) => m.is_empty(),
        Some(_) => false,
    };
    if empty && bundle.empty_context_valid.contains(&action.uid) {
        return scope_checked(bundle, principal, action, resource, cedar_policy_core::ast::Context::empty());
    }
    let context = parse_context(bundle, &action.uid, context, context_field)?;
    Request::new(principal.uid, action.uid, resource.uid, context, Some(&bundle.schema))
        .map_err(|e| RequestError::from_validation(&e, &principal.field, &action.field, &resource.field))
}

/// An allowed read of a taint source raises `agent`'s taint (in memory) to the resource's
/// classification; returns the level to make durable before the answer.
///
/// INVARIANT: answered only once that level is durable and propagated, whether this decision
/// raised it in memory or an earlier one did whose write failed or is still waiting for the
/// writer: any level above the durable one is returned.
fn raise_on_read(agent: &LiveAgent, guard: Guard) -> Option<i64> {
    let level = guard.classification.filter(|_| guard.role == Some(TaintRole::Source))?;
    agent.raise_taint(level);
    (level > agent.durable_taint()).then_some(level)
}
