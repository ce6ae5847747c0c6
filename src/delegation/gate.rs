//! The admin's Cedar rules about agents acting on agents (`Action::"delegate"`,
//! `Action::"invoke_agent"`): allowed, denied, or denied only by `@ask` rules that name who may
//! approve.

use std::collections::BTreeSet;

use cedar_policy::{Context, EntityUid, Request};
use serde_json::Value;

use super::service::DelegationError;
use super::DELEGATE_ACTION;
use crate::bundle::INVOKE_ACTION;
use crate::agents::LiveAgent;
use crate::bundle::ASK_ANNOTATION;
use crate::error::ErrorCode;
use crate::snapshot::Snapshot;

pub(super) enum Gate {
    Allow,
    /// Denied only by `@ask` forbids: pending, with every approver they name (sorted, once
    /// each) and the policies.
    Ask(Vec<String>, Vec<String>),
    Deny(Vec<String>),
}

/// Asks the admin's delegation rules about the parent delegating to `child` — and about every
/// agent above the parent doing so, since a rule that stops an agent from delegating (by its
/// groups, attributes or id) must stop its descendants too. Any plain deny denies; `@ask`
/// denies from any of them are collected.
pub(super) fn delegate_decision(
    snap: &Snapshot,
    parent: &LiveAgent,
    child: &EntityUid,
    context: Value,
) -> Result<Gate, DelegationError> {
    let mut names = BTreeSet::new();
    let mut asked_by = Vec::new();
    for hop in parent.hops.iter().rev() {
        match decision_for(snap, &Act::Delegate, &hop.uid, child, context.clone())? {
            Gate::Allow => {}
            Gate::Deny(policies) => return Ok(Gate::Deny(policies)),
            Gate::Ask(n, policies) => {
                names.extend(n);
                asked_by.extend(policies);
            }
        }
    }
    if names.is_empty() {
        return Ok(Gate::Allow);
    }
    asked_by.sort();
    asked_by.dedup();
    Ok(Gate::Ask(names.into_iter().collect(), asked_by))
}

/// Which act of one agent towards another is asked about.
pub(super) enum Act {
    Delegate,
    Invoke,
}

impl Act {
    fn action(&self) -> &'static str {
        match self {
            Act::Delegate => DELEGATE_ACTION,
            Act::Invoke => INVOKE_ACTION,
        }
    }

    /// The bundle cannot ask about this act: it is off.
    fn off(&self, message: String) -> DelegationError {
        match self {
            Act::Delegate => DelegationError::new(ErrorCode::DelegationDisabled, message),
            Act::Invoke => DelegationError::new(ErrorCode::InvocationNotConfigured, message).help(
                "declare `action invoke_agent appliesTo { principal: [Agent], resource: [Agent], context: \
                 { caller_taint: Long, depth: Long, task: String } };` in the schema and permit the invocations you allow",
            ),
        }
    }
}

/// Asks the admin's `invoke_agent` rules about each of `callers` (the acting identity and every
/// agent above it: what an agent may not invoke, its descendants may not either) invoking
/// `callee`. Any deny denies; an `@ask` deny denies too (invocations are not queued).
pub(super) fn invoke_decision(
    snap: &Snapshot,
    callers: &[EntityUid],
    callee: &EntityUid,
    context: &Value,
) -> Result<Gate, DelegationError> {
    for caller in callers.iter().rev() {
        match decision_for(snap, &Act::Invoke, caller, callee, context.clone())? {
            Gate::Allow => {}
            Gate::Deny(policies) | Gate::Ask(_, policies) => return Ok(Gate::Deny(policies)),
        }
    }
    Ok(Gate::Allow)
}

/// Whether the bundle can be asked about invocations at all (its schema declares the action).
pub(super) fn invoke_configured(snap: &Snapshot) -> Result<(), DelegationError> {
    match snap.bundle.actions_by_name.get(INVOKE_ACTION) {
        Some(Some(_)) => Ok(()),
        _ => Err(Act::Invoke.off(format!(
            "the bundle's schema declares no `{INVOKE_ACTION}` action, so no agent may invoke another"
        ))),
    }
}

fn decision_for(
    snap: &Snapshot,
    act: &Act,
    parent: &EntityUid,
    child: &EntityUid,
    context: Value,
) -> Result<Gate, DelegationError> {
    let bundle = &snap.bundle;
    let name = act.action();
    let action = bundle
        .actions_by_name
        .get(name)
        .cloned()
        .flatten()
        .ok_or_else(|| act.off(format!("the bundle declares no `{name}` action")))?;
    let context = Context::from_json_value(context, Some((&bundle.schema, &action))).map_err(|e| match act {
        Act::Delegate => DelegationError::new(ErrorCode::InvalidField, format!("delegation context: {e}")),
        Act::Invoke => act.off(format!(
            "the bundle's `{name}` context is not the one deputy supplies (`caller_taint`, `depth`, `task`): {e}"
        )),
    })?;
    let request = Request::new(parent.clone(), action, child.clone(), context, Some(&bundle.schema))
        .map_err(|e| act.off(format!("the bundle's schema rejects a `{name}` request: {e}")))?;
    let d = bundle.admin().evaluate(snap.entities(), &request);
    if d.allow {
        return Ok(Gate::Allow);
    }
    let mut names = BTreeSet::new();
    for id in &d.reasons {
        match bundle
            .policies
            .annotation(&cedar_policy::PolicyId::new(id), ASK_ANNOTATION)
        {
            Some(name) => names.insert(name.to_owned()),
            None => return Ok(Gate::Deny(d.reasons)),
        };
    }
    if names.is_empty() {
        return Ok(Gate::Deny(d.reasons));
    }
    Ok(Gate::Ask(names.into_iter().collect(), d.reasons))
}

