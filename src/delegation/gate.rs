//! The admin's Cedar rules about agents acting on agents (`Action::"delegate"`): allowed,
//! denied, or denied only by `@ask` rules that name who may approve.

use std::collections::BTreeSet;

use cedar_policy::{Context, EntityUid, Request};
use serde_json::Value;

use super::service::DelegationError;
use super::DELEGATE_ACTION;
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
        match delegate_decision_for(snap, &hop.uid, child, context.clone())? {
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

fn delegate_decision_for(
    snap: &Snapshot,
    parent: &EntityUid,
    child: &EntityUid,
    context: Value,
) -> Result<Gate, DelegationError> {
    let bundle = &snap.bundle;
    let action = bundle
        .actions_by_name
        .get(DELEGATE_ACTION)
        .cloned()
        .flatten()
        .ok_or_else(|| {
            DelegationError::new(
                ErrorCode::DelegationDisabled,
                "the bundle declares no `delegate` action",
            )
        })?;
    let context = Context::from_json_value(context, Some((&bundle.schema, &action)))
        .map_err(|e| DelegationError::new(ErrorCode::InvalidField, format!("delegation context: {e}")))?;
    let request = Request::new(parent.clone(), action, child.clone(), context, Some(&bundle.schema)).map_err(|e| {
        DelegationError::new(
            ErrorCode::DelegationDisabled,
            format!("the bundle's schema rejects a delegation request: {e}"),
        )
    })?;
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

