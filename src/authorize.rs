//! The decision path: turn a request into a Cedar `Request` checked against the bundle's schema,
//! and decide it against one immutable bundle. Pure and synchronous; the HTTP layer calls it.

mod capabilities;
mod fast;
mod index;
mod request;

use std::sync::LazyLock;

use cedar_policy::{Authorizer, Decision as CedarDecision, Entities, PolicyId, PolicySet, Request};
use serde::Serialize;

use std::sync::Arc;

use crate::bundle::Bundle;
use crate::bundle::TaintRole;
use crate::delegation::{is_agent_type, DeniedBy, Guard, LiveAgent};
use crate::snapshot::Snapshot;

pub use capabilities::{capabilities, Capabilities};
pub use index::{IndexStats, PolicyIndex};
pub use request::{
    entity_ref, parse_context, parse_json, parse_uid, parts_of, read_parts, EntityRef, Fields, RequestError,
};

static AUTHORIZER: LazyLock<Authorizer> = LazyLock::new(Authorizer::new);

/// A decision, with Cedar's diagnostics: the determining policies and the policies that erred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allow: bool,
    /// Policies that determined the decision (the satisfied permits on Allow, forbids on Deny).
    pub reasons: Vec<String>,
    pub errors: Vec<PolicyError>,
}

impl Decision {
    /// A decision with its reasons and errors in a stable order (by policy id).
    fn sorted(allow: bool, mut reasons: Vec<String>, mut errors: Vec<PolicyError>) -> Decision {
        reasons.sort();
        errors.sort_by(|a, b| a.policy.cmp(&b.policy));
        Decision { allow, reasons, errors }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyError {
    pub policy: String,
    pub message: String,
}

/// Decides `request` against the bundle's policies and entities. Never fails: evaluation
/// errors are reported in `errors` and, as in Cedar, an erring policy does not apply.
pub fn authorize(bundle: &Bundle, request: &Request) -> Decision {
    bundle.admin().evaluate(&bundle.entities, request)
}

/// A policy set with its index: evaluates only the slices that can apply to a request.
#[derive(Debug, Clone, Copy)]
pub struct Indexed<'a> {
    pub policies: &'a PolicySet,
    pub index: &'a PolicyIndex,
}

impl Indexed<'_> {
    /// Decides `request` exactly as [`evaluate`] over the whole set would.
    pub fn evaluate(&self, entities: &Entities, request: &Request) -> Decision {
        evaluate_indexed(self.policies, self.index, entities, request)
    }
}

/// Decides `request` against any policy set and entity store, evaluating every policy.
pub fn evaluate(policies: &PolicySet, entities: &Entities, request: &Request) -> Decision {
    let all = policies.policies().map(|p| Candidate::Policy(p.as_ref()));
    evaluate_candidates(all, None, entities, request)
        .unwrap_or_else(|| authorizer_decision(policies, entities, request))
}

/// Decides `request` against the slices of `index` that can apply to it, combined as Cedar
/// combines policies; `policies` (the set `index` was built from) when the index declines.
///
/// INVARIANT: the slices are disjoint and hold every policy whose scope matches (see
/// `index`), so evaluating their policies is evaluating every policy that can be satisfied or
/// err; policies whose scope does not match are neither.
pub fn evaluate_indexed(policies: &PolicySet, index: &PolicyIndex, entities: &Entities, request: &Request) -> Decision {
    let core_request: &cedar_policy_core::ast::Request = request.as_ref();
    let ctx = fast::Ctx::new(entities.as_ref(), core_request);
    let mut slices = Vec::new();
    if !index.slices_for(&ctx, &mut slices) {
        return evaluate(policies, entities, request);
    }
    let ready = slices.iter().flat_map(|s| s.iter()).map(Candidate::Ready);
    evaluate_candidates(ready, Some(&ctx), entities, request)
        .unwrap_or_else(|| authorizer_decision(policies, entities, request))
}

/// A policy to evaluate: from an index slice (condition built at load) or straight from a set.
enum Candidate<'a> {
    Ready(&'a index::Ready),
    Policy(&'a cedar_policy_core::ast::Policy),
}

/// Decides `request` against `candidates` (distinct policies) the way Cedar's `Authorizer`
/// does: each policy's condition is interpreted by Cedar's own evaluator, exactly as the
/// authorizer does (`Evaluator::partial_evaluate` is `partial_interpret(&policy.condition(),
/// policy.env())`; a `Ready` holds that condition), or by deputy's evaluator for the fragment it
/// covers, which answers only where Cedar's would answer the same without error (`fast`); any
/// satisfied forbid denies, with every satisfied forbid as a reason; else any satisfied permit
/// allows, with every satisfied permit as a reason; else deny. A policy that errs is skipped and
/// reported. `None` on a residual (possible only with unknowns, which deputy's requests never
/// carry): the caller then asks Cedar's `Authorizer`.
fn evaluate_candidates<'a>(
    candidates: impl Iterator<Item = Candidate<'a>>,
    ctx: Option<&fast::Ctx<'_>>,
    entities: &Entities,
    request: &Request,
) -> Option<Decision> {
    use cedar_policy_core::ast::Effect;
    use cedar_policy_core::evaluator::Evaluator;
    let core_request: &cedar_policy_core::ast::Request = request.as_ref();
    // Built on first use: most indexed decisions never need it.
    let cedar = std::cell::OnceCell::new();
    let cedar = || {
        cedar.get_or_init(|| {
            Evaluator::new(
                core_request.clone(),
                entities.as_ref(),
                cedar_policy_core::extensions::Extensions::all_available(),
            )
        })
    };
    let (mut permits, mut forbids, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for candidate in candidates {
        let (name, effect, satisfied) = match candidate {
            Candidate::Ready(p) => {
                let satisfied = match p.fast.as_ref().zip(ctx).and_then(|(cond, ctx)| cond.eval(ctx)) {
                    Some(b) => Ok(b),
                    None => match &p.rest.cedar {
                        index::CedarForm::Policy(policy) => {
                            boolean(cedar().partial_interpret(&policy.condition(), policy.env()))?
                        }
                        index::CedarForm::Condition { condition, env } => {
                            boolean(cedar().partial_interpret(condition, env))?
                        }
                    },
                };
                (Name::Ready(&p.rest.name), p.effect, satisfied)
            }
            Candidate::Policy(p) => (
                Name::Id(p.id()),
                p.effect(),
                boolean(cedar().partial_interpret(&p.condition(), p.env()))?,
            ),
        };
        match satisfied {
            Ok(true) => match effect {
                Effect::Permit => permits.push(name),
                Effect::Forbid => forbids.push(name),
            },
            Ok(false) => {}
            Err(e) => errors.push(PolicyError {
                policy: name.render(),
                message: e.to_string(),
            }),
        }
    }
    let allow = forbids.is_empty() && !permits.is_empty();
    let reasons = if allow { permits } else { forbids };
    Some(Decision::sorted(
        allow,
        reasons.iter().map(Name::render).collect(),
        errors,
    ))
}

/// A condition's value as the authorizer reads it: `None` for anything but a boolean or an error
/// (a condition is a conjunction, which Cedar only lets be a boolean; a residual needs
/// unknowns): the caller then asks Cedar's `Authorizer` rather than guess.
fn boolean(
    interpreted: Result<cedar_policy_core::ast::PartialValue, cedar_policy_core::evaluator::EvaluationError>,
) -> Option<Result<bool, cedar_policy_core::evaluator::EvaluationError>> {
    use cedar_policy_core::ast::{Literal, PartialValue, ValueKind};
    match interpreted {
        Ok(PartialValue::Value(v)) => match v.value_kind() {
            ValueKind::Lit(Literal::Bool(b)) => Some(Ok(*b)),
            _ => None,
        },
        Ok(PartialValue::Residual(_)) => None,
        Err(e) => Some(Err(e)),
    }
}

/// A policy's id, already rendered (index slices) or not.
enum Name<'a> {
    Ready(&'a str),
    Id(&'a cedar_policy_core::ast::PolicyID),
}

impl Name<'_> {
    fn render(&self) -> String {
        match self {
            Name::Ready(s) => (*s).to_owned(),
            Name::Id(id) => id.to_string(),
        }
    }
}

/// Cedar's `Authorizer` over the whole set (used only for residuals).
fn authorizer_decision(policies: &PolicySet, entities: &Entities, request: &Request) -> Decision {
    let response = AUTHORIZER.is_authorized(request, policies, entities);
    Decision::sorted(
        response.decision() == CedarDecision::Allow,
        response.diagnostics().reason().map(PolicyId::to_string).collect(),
        policy_errors(&response),
    )
}

fn policy_errors(response: &cedar_policy::Response) -> Vec<PolicyError> {
    response
        .diagnostics()
        .errors()
        .map(|e| {
            let cedar_policy::AuthorizationError::PolicyEvaluationError(e) = e;
            PolicyError {
                policy: e.policy_id().to_string(),
                message: e.inner().to_string(),
            }
        })
        .collect()
}

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

/// The context attribute deputy supplies for managed agents: the session's taint.
pub const TAINT_FIELD: &str = "taint";
/// The resource attribute holding its classification level.
pub const CLASSIFICATION_ATTR: &str = "classification";

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
    let chain = crate::delegation::decide(bundle.admin(), snap.entities(), &agent, &request, guard, now);
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
            approver: agent
                .row
                .parent
                .clone()
                .unwrap_or_else(|| crate::delegation::ADMIN_APPROVER.to_owned()),
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
