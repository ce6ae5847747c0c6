//! One bound of the decision path, partially evaluated with Cedar's type-aware partial evaluator
//! (`tpe`): the principal and action known, the context unknown, the resource first unknown (of a
//! type: what holds for every resource of it), then each resource of the store in turn.
//!
//! A bound is a policy set decided for one principal: the admin policies for the agent, the
//! admin policies for each ancestor, each hop's grant. A bound's answer for a resource is
//! Allow, Deny, or a condition on the context: Cedar's residual permits and forbids, rendered
//! as Cedar (`(p1) || (p2)` for the permits, `!((f1) || (f2))` for the forbids). The taint
//! deputy supplies for its agents (`context.taint`) is put in before the per-resource step, so
//! no condition asks the agent for what deputy decides.

use std::collections::BTreeSet;

use cedar_policy::{
    Decision as CedarDecision, EntityTypeName, EntityUid, PartialEntities, PartialEntityUid, PartialRequest, Policy,
    PolicySet, Schema, TpeResponse,
};
use serde_json::Value;

use crate::eval::PolicyIndex;

/// One bound of the chain: a policy set asked about `principal`.
pub struct Bound<'a> {
    pub policies: &'a PolicySet,
    /// The admin set's index: which policies' scopes can match a resource.
    pub index: Option<&'a PolicyIndex>,
    pub principal: &'a EntityUid,
    /// Whether its satisfied permits are reasons of the decision (the agent's own admin
    /// decision and every hop's grant; an ancestor's admin decision is a bound, not a reason).
    pub reasons: bool,
}

/// A bound's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Allow(Vec<String>),
    Deny,
    /// Allowed exactly when this Cedar condition on the context holds (satisfied permits, when
    /// it holds, are the reasons).
    When(String),
}

/// A bound, partially evaluated for every resource of one type.
pub struct TypeLevel {
    /// The answer for a resource of the type whatever it is (one outside the store included).
    pub answer: Answer,
    /// Permits satisfied whatever the resource and context.
    true_permits: Vec<String>,
    /// The policies left to decide, the taint put in: what the per-resource step evaluates.
    residuals: Vec<Policy>,
    /// No residual names `resource`: every resource of the type gets `answer`.
    resource_free: bool,
}

/// What the partial evaluator needs besides the bound.
pub struct Env<'a> {
    pub schema: &'a Schema,
    pub entities: &'a PartialEntities,
    pub concrete: &'a cedar_policy::Entities,
    pub action: &'a EntityUid,
    /// `context.taint` as deputy supplies it, when the action's context declares it.
    pub taint: Option<i64>,
}

/// Partially evaluates `bound` for a resource of type `ty`, context unknown.
pub fn type_level(bound: &Bound<'_>, ty: &EntityTypeName, env: &Env<'_>) -> Result<TypeLevel, String> {
    let request = PartialRequest::new(
        PartialEntityUid::from_concrete(bound.principal.clone()),
        env.action.clone(),
        PartialEntityUid::new(ty.clone(), None),
        None,
        env.schema,
    )
    .map_err(|e| e.to_string())?;
    let first = bound
        .policies
        .tpe(&request, env.entities, env.schema)
        .map_err(|e| e.to_string())?;
    let true_permits = ids(first.true_permits());
    let residuals: Vec<Policy> = first.residual_policies().collect();
    let residuals = match env.taint {
        Some(taint) if !residuals.is_empty() => residuals
            .iter()
            .map(|p| with_taint(p, taint))
            .collect::<Result<Vec<_>, _>>()?,
        _ => residuals,
    };
    let answer = match first.decision() {
        Some(CedarDecision::Allow) => Answer::Allow(true_permits.clone()),
        Some(CedarDecision::Deny) => Answer::Deny,
        // The taint now put in may settle what was left: ask again over what was left.
        None => {
            let set = PolicySet::from_policies(residuals.iter().cloned()).map_err(|e| e.to_string())?;
            let again = set.tpe(&request, env.entities, env.schema).map_err(|e| e.to_string())?;
            answer_of(&again, &true_permits)
        }
    };
    // A text search: a condition naming `resource` always contains the word (a string literal
    // that does only costs the per-resource step it could have saved).
    let resource_free = residuals.iter().all(|p| !condition(p).contains("resource"));
    Ok(TypeLevel {
        answer,
        true_permits,
        residuals,
        resource_free,
    })
}

/// `bound`'s answer for `resource` (of the type `level` was computed for), context unknown.
pub fn at(bound: &Bound<'_>, level: &TypeLevel, resource: &EntityUid, env: &Env<'_>) -> Result<Answer, String> {
    if !matches!(level.answer, Answer::When(_)) || level.resource_free {
        return Ok(level.answer.clone());
    }
    // The index names the policies whose scope can match this resource; the others are false.
    let relevant: Option<BTreeSet<&str>> = bound.index.and_then(|index| {
        Some(
            index
                .policy_names(env.concrete, bound.principal, env.action, resource)?
                .collect(),
        )
    });
    let residuals: Vec<Policy> = level
        .residuals
        .iter()
        .filter(|p| relevant.as_ref().is_none_or(|r| r.contains(p.id().to_string().as_str())))
        .cloned()
        .collect();
    if residuals.is_empty() {
        return Ok(if level.true_permits.is_empty() {
            Answer::Deny
        } else {
            Answer::Allow(level.true_permits.clone())
        });
    }
    let request = PartialRequest::new(
        PartialEntityUid::from_concrete(bound.principal.clone()),
        env.action.clone(),
        PartialEntityUid::from_concrete(resource.clone()),
        None,
        env.schema,
    )
    .map_err(|e| e.to_string())?;
    let set = PolicySet::from_policies(residuals).map_err(|e| e.to_string())?;
    let response = set.tpe(&request, env.entities, env.schema).map_err(|e| e.to_string())?;
    Ok(answer_of(&response, &level.true_permits))
}

/// A partial response as an answer, decided as Cedar's authorizer decides (a satisfied forbid
/// denies; else a satisfied permit allows; erring policies are skipped); `true_permits` were
/// satisfied before it (the response is over what was left).
fn answer_of(response: &TpeResponse<'_>, true_permits: &[String]) -> Answer {
    if response.true_forbids().next().is_some() {
        return Answer::Deny;
    }
    let mut satisfied: Vec<String> = true_permits.to_vec();
    satisfied.extend(ids(response.true_permits()));
    let forbids: BTreeSet<String> = ids(response.residual_forbids()).into_iter().collect();
    let (mut permits, mut blocks) = (Vec::new(), Vec::new());
    for p in response.residual_policies() {
        let text = condition(&p);
        if forbids.contains(&p.id().to_string()) {
            blocks.push(text);
        } else {
            permits.push(text);
        }
    }
    let mut parts = Vec::new();
    if satisfied.is_empty() {
        if permits.is_empty() {
            return Answer::Deny;
        }
        parts.push(any_of(&permits));
    }
    if !blocks.is_empty() {
        parts.push(format!("!({})", any_of(&blocks)));
    }
    if parts.is_empty() {
        Answer::Allow(satisfied)
    } else {
        Answer::When(all_of(&parts))
    }
}

/// The answers of every bound, combined: any deny denies; all allow allows (with the reasons of
/// the bounds that give them); else the conjunction of the conditions.
pub fn combine(answers: impl IntoIterator<Item = (Answer, bool)>) -> Answer {
    let mut reasons = Vec::new();
    let mut conditions = Vec::new();
    for (answer, gives_reasons) in answers {
        match answer {
            Answer::Deny => return Answer::Deny,
            Answer::Allow(r) if gives_reasons => reasons.extend(r),
            Answer::Allow(_) => {}
            // The same admin condition comes back for every ancestor: say it once.
            Answer::When(c) if !conditions.contains(&c) => conditions.push(c),
            Answer::When(_) => {}
        }
    }
    if conditions.is_empty() {
        Answer::Allow(reasons)
    } else {
        Answer::When(all_of(&conditions))
    }
}

fn ids<'a>(it: impl Iterator<Item = &'a cedar_policy::PolicyId>) -> Vec<String> {
    it.map(ToString::to_string).collect()
}

fn any_of(parts: &[String]) -> String {
    join(parts, " || ")
}

fn all_of(parts: &[String]) -> String {
    join(parts, " && ")
}

fn join(parts: &[String], op: &str) -> String {
    match parts {
        [one] => one.clone(),
        _ => parts
            .iter()
            .map(|p| format!("({p})"))
            .collect::<Vec<_>>()
            .join(op),
    }
}

/// A residual policy's condition as Cedar text. A residual's scope is unconstrained and its
/// condition one `when` clause (Cedar's `TpeResponse::residual_policies`).
fn condition(p: &Policy) -> String {
    let text = p.to_string();
    let body = text
        .find("when {")
        .map(|i| &text[i + "when {".len()..])
        .and_then(|rest| rest.rfind('}').map(|j| &rest[..j]))
        .unwrap_or(&text);
    body.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `p` with `context.taint` replaced by deputy's value (and `context has taint` by `true`), by a
/// rewrite of Cedar's JSON form of the policy.
fn with_taint(p: &Policy, taint: i64) -> Result<Policy, String> {
    let mut json = p.to_json().map_err(|e| format!("policy `{}`: {e}", p.id()))?;
    let mut changed = false;
    rewrite(&mut json, taint, &mut changed);
    if !changed {
        return Ok(p.clone());
    }
    Policy::from_json(Some(p.id().clone()), json).map_err(|e| format!("policy `{}`: {e}", p.id()))
}

fn rewrite(v: &mut Value, taint: i64, changed: &mut bool) {
    let is_context_taint = |op: &str, v: &Value| {
        v.get(op).is_some_and(|inner| {
            inner["left"] == serde_json::json!({"Var": "context"})
                && inner["attr"] == crate::bundle::TAINT_FIELD
        })
    };
    if is_context_taint(".", v) {
        *v = serde_json::json!({"Value": taint});
        *changed = true;
        return;
    }
    if is_context_taint("has", v) {
        *v = serde_json::json!({"Value": true});
        *changed = true;
        return;
    }
    match v {
        Value::Object(m) => m.values_mut().for_each(|x| rewrite(x, taint, changed)),
        Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, taint, changed)),
        _ => {}
    }
}
