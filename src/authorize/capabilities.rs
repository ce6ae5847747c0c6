//! What an agent may do: for every action that applies to agents, the resources of the store it
//! may act on unconditionally, those it may act on under a condition on the context (Cedar's
//! residual, rendered as Cedar), and which types admit resources outside the store. Computed by
//! Cedar's type-aware partial evaluation of every bound `/v1/authorize` checks — the admin
//! policies for the agent and for each ancestor, each hop's grant — with the ceiling, taint and
//! liveness checks deputy makes itself, so an entry never claims more than `/v1/authorize` allows
//! for some context (tests/it/capabilities.rs checks it on random bundles).
//!
//! Cached per snapshot (a reload or any agent change builds a new one) and per agent, taint and
//! liveness: the answer depends on nothing else.

mod residual;

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy::{EntityTypeName, EntityUid, PartialEntities, PolicySet};
use ref_cast::RefCast;
use serde::Serialize;
use serde_json::json;

use super::chain::DeniedBy;
use crate::agents::{is_agent_type, LiveAgent};
use crate::bundle::TaintRole;
use crate::snapshot::Snapshot;
use residual::{Answer, Bound, Env};

/// The resource type listed first: tools are what a harness shows or hides.
const TOOL_TYPE: &str = "Tool";

/// A resource the agent may act on whatever the context.
#[derive(Debug, Clone, Serialize)]
pub struct Capability {
    pub action: String,
    pub resource: serde_json::Value,
    pub reasons: Vec<String>,
}

/// A resource the agent may act on when `condition` (Cedar, over `context`) holds.
#[derive(Debug, Clone, Serialize)]
pub struct Conditional {
    pub action: String,
    pub resource: serde_json::Value,
    pub condition: String,
}

/// Resources of `type` outside the store the action admits: always (no `condition`), or when
/// `condition` holds (it may name `resource`).
#[derive(Debug, Clone, Serialize)]
pub struct OtherResources {
    pub action: String,
    #[serde(rename = "type")]
    pub resource_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// An action deputy could not answer for, and why.
#[derive(Debug, Clone, Serialize)]
pub struct NotEnumerated {
    pub action: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    pub agent: String,
    /// Allowed (action, resource) pairs whatever the context, tools first.
    pub allowed: Vec<Capability>,
    /// Pairs allowed under a condition on the context, tools first.
    pub conditional: Vec<Conditional>,
    /// Per action and resource type, whether resources the store does not hold may be allowed.
    pub other_resources: Vec<OtherResources>,
    /// Actions deputy could not answer for, each with the reason.
    pub not_enumerated: Vec<NotEnumerated>,
    /// Whether the agent may spawn children at all (its `can_delegate`).
    pub can_delegate: bool,
    /// The taint deputy supplies as `context.taint` (already put into every condition).
    pub taint: i64,
    /// Set when the agent or an ancestor is revoked or expired: it may do nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<DeniedBy>,
    pub policy_version: String,
    /// This answer as JSON, serialized on first use and kept with it (a cached answer is
    /// served over HTTP as these bytes, not serialized per request).
    #[serde(skip)]
    body: Body,
}

/// A serialized answer, built once. A clone starts empty: a cloned answer may be changed, and
/// must not keep its original's bytes.
#[derive(Debug, Default)]
struct Body(std::sync::OnceLock<Result<bytes::Bytes, String>>);

impl Clone for Body {
    fn clone(&self) -> Body {
        Body::default()
    }
}

impl Capabilities {
    /// This answer as JSON (what `serde_json` writes for it), serialized once per answer.
    pub fn json(&self) -> Result<bytes::Bytes, String> {
        self.body
            .0
            .get_or_init(|| {
                serde_json::to_vec(self)
                    .map(bytes::Bytes::from)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }
}

/// The agent's capabilities now, from the snapshot's cache when it holds them. A session's are
/// its callee's, under the session's taint and standing (as `/v1/authorize` decides it).
pub fn capabilities(snap: &Snapshot, agent: &Arc<LiveAgent>, now: i64) -> Arc<Capabilities> {
    if agent.session.is_some() {
        return session_capabilities(snap, agent, now);
    }
    let inactive = inactive(agent, now);
    let taint = agent.taint();
    let key = format!(
        "capabilities\u{0}{}\u{0}{taint}\u{0}{}",
        agent.row.id,
        inactive.as_ref().map_or_else(String::new, |d| format!("{d:?}"))
    );
    let subject = Subject {
        id: &agent.row.id,
        uid: &agent.uid,
        hops: &agent.hops,
        ceiling: agent.chain_ceiling,
        taint,
        can_delegate: agent.row.can_delegate,
    };
    snap.memo.get_or_insert(&key, || compute(snap, &subject, inactive))
}

fn session_capabilities(snap: &Snapshot, session: &Arc<LiveAgent>, now: i64) -> Arc<Capabilities> {
    let standing = super::session_standing(snap, session, now);
    let taint = match &standing {
        Ok(callee) => session.taint().max(callee.taint()),
        Err(_) => session.taint(),
    };
    let key = format!(
        "session capabilities\u{0}{}\u{0}{taint}\u{0}{}",
        session.row.id,
        standing.as_ref().err().map_or_else(String::new, |d| format!("{d:?}"))
    );
    snap.memo.get_or_insert(&key, || {
        let (uid, hops, ceiling, inactive) = match &standing {
            Ok(callee) => (
                callee.uid(),
                match callee {
                    super::Callee::Managed(c) => c.hops.as_slice(),
                    super::Callee::Declared { .. } => &[],
                },
                session.row.ceiling.min(callee.ceiling()),
                None,
            ),
            Err(by) => (&session.uid, &[][..], session.row.ceiling, Some(by.clone())),
        };
        let subject = Subject {
            id: &session.row.id,
            uid,
            hops,
            ceiling,
            taint,
            can_delegate: false,
        };
        compute(snap, &subject, inactive)
    })
}

/// Whom capabilities are computed for: an agent, or a session as its callee (the callee's uid
/// and chain under the session's ceiling and taint), exactly as `/v1/authorize` decides each.
struct Subject<'a> {
    id: &'a str,
    uid: &'a EntityUid,
    hops: &'a [crate::agents::Hop],
    ceiling: i64,
    taint: i64,
    can_delegate: bool,
}

/// Why the agent may do nothing at all now: it or an ancestor was revoked or expired.
fn inactive(agent: &LiveAgent, now: i64) -> Option<DeniedBy> {
    if agent.is_revoked() || agent.hops.iter().any(|h| h.is_revoked()) {
        return Some(DeniedBy::Revoked);
    }
    if agent.is_expired(now) || agent.hops.iter().any(|h| !h.is_live(now)) {
        return Some(DeniedBy::Expired);
    }
    None
}

fn compute(snap: &Snapshot, agent: &Subject<'_>, inactive: Option<DeniedBy>) -> Capabilities {
    let taint = agent.taint;
    let mut caps = Capabilities {
        agent: agent.id.to_owned(),
        allowed: Vec::new(),
        conditional: Vec::new(),
        other_resources: Vec::new(),
        not_enumerated: Vec::new(),
        can_delegate: agent.can_delegate && inactive.is_none(),
        taint,
        denied_by: inactive,
        policy_version: snap.bundle.version.clone(),
        body: Body::default(),
    };
    if caps.denied_by.is_some() {
        return caps;
    }
    let bundle = &snap.bundle;
    let partial = match snap.partial_entities() {
        Ok(p) => p,
        Err(e) => {
            for action in agent_actions(snap) {
                caps.not_enumerated.push(NotEnumerated {
                    action: action.id().unescaped().to_owned(),
                    reason: format!("the entity store cannot be partially evaluated: {e}"),
                });
            }
            return caps;
        }
    };
    // Admin for the agent, admin for each ancestor (root first), then each hop's grant.
    let ancestors = agent.hops.split_last().map_or(&[][..], |(_, rest)| rest);
    let mut bounds = vec![Bound {
        policies: &bundle.policies,
        index: Some(&bundle.index),
        principal: agent.uid,
        reasons: true,
    }];
    bounds.extend(ancestors.iter().map(|hop| Bound {
        policies: &bundle.policies,
        index: Some(&bundle.index),
        principal: &hop.uid,
        reasons: false,
    }));
    bounds.extend(agent.hops.iter().map(|hop| Bound {
        policies: &hop.policies,
        index: None,
        principal: agent.uid,
        reasons: true,
    }));
    for action in agent_actions(snap) {
        let env = Env {
            schema: &bundle.schema,
            entities: PartialEntities::ref_cast(&partial),
            concrete: snap.entities(),
            action,
            taint: bundle.taint_in_context.contains(action).then_some(taint),
        };
        if let Err(reason) = for_action(snap, agent, &bounds, &env, &mut caps) {
            caps.not_enumerated.push(NotEnumerated {
                action: action.id().unescaped().to_owned(),
                reason,
            });
        }
    }
    let order = |action: &str, resource: &serde_json::Value| {
        (
            resource["type"] != TOOL_TYPE,
            action.to_owned(),
            resource["type"].as_str().map(str::to_owned),
            resource["id"].as_str().map(str::to_owned),
        )
    };
    // Each entry's key built once (thousands of entries); no two entries have the same key.
    caps.allowed.sort_by_cached_key(|c| order(&c.action, &c.resource));
    caps.conditional.sort_by_cached_key(|c| order(&c.action, &c.resource));
    caps
}

/// The actions that apply to agents, by id; delegating is reported as `can_delegate` (its
/// context describes a child to be).
fn agent_actions(snap: &Snapshot) -> Vec<&EntityUid> {
    let schema = &snap.bundle.schema;
    let mut actions: Vec<&EntityUid> = schema
        .actions()
        .filter(|a| {
            schema
                .principals_for_action(a)
                .is_some_and(|mut p| p.any(is_agent_type))
        })
        // Delegating is reported as `can_delegate`; invoking is asked of `POST /v1/invocations`,
        // with a context deputy builds.
        .filter(|a| {
            let name = a.id().unescaped();
            name != crate::bundle::DELEGATE_ACTION && name != crate::bundle::INVOKE_ACTION
        })
        .collect();
    actions.sort_by_key(|a| a.to_string());
    actions
}

/// Fills `caps` for one action; an error (Cedar's partial evaluator refused) is the action's
/// reason in `not_enumerated`, with nothing listed for it.
fn for_action(
    snap: &Snapshot,
    agent: &Subject<'_>,
    bounds: &[Bound<'_>],
    env: &Env<'_>,
    caps: &mut Capabilities,
) -> Result<(), String> {
    let name = env.action.id().unescaped().to_owned();
    let mut types: Vec<&EntityTypeName> = snap
        .bundle
        .schema
        .resources_for_action(env.action)
        .map(Iterator::collect)
        .unwrap_or_default();
    types.sort_by_key(|t| t.to_string());
    let role = snap.bundle.taint_roles.get(env.action).copied();
    // Each bound's policies that can apply to its principal and this action, partially
    // evaluated per type instead of the whole set.
    let scoped: Vec<Option<PolicySet>> = bounds
        .iter()
        .map(|b| residual::scoped(b.policies, b.principal, env.action, env.entities))
        .collect();
    let bounds: Vec<Bound<'_>> = bounds
        .iter()
        .zip(&scoped)
        .map(|(b, scoped)| match scoped {
            Some(policies) => Bound { policies, ..*b },
            None => *b,
        })
        .collect();
    let bounds = bounds.as_slice();
    let listed = listed(snap);
    let (mut allowed, mut conditional, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for ty in types {
        let mut levels = bounds
            .iter()
            .map(|b| residual::type_level(b, ty, env))
            .collect::<Result<Vec<_>, _>>()?;
        let whole = residual::combine(
            levels
                .iter()
                .zip(bounds)
                .map(|(l, b)| (l.answer.clone(), b.reasons)),
        );
        match &whole {
            Answer::Deny => continue,
            Answer::Allow(_) => other.push(OtherResources {
                action: name.clone(),
                resource_type: ty.to_string(),
                condition: None,
            }),
            Answer::When(c) => other.push(OtherResources {
                action: name.clone(),
                resource_type: ty.to_string(),
                condition: Some(c.clone()),
            }),
        }
        let type_name = ty.to_string();
        let resources = listed.get(ty).map_or(&[][..], |r| r.as_slice());
        // Resources the residuals cannot tell apart share one answer (`residual::Classes`).
        let classes = residual::Classes::new(&levels);
        let mut by_class = residual::ByClass::default();
        for (uid, classification) in resources {
            if guard_denies(agent, role, *classification) {
                continue;
            }
            let class = classes.as_ref().and_then(|c| c.of(uid.as_ref(), env.entities));
            let answer = match class.as_ref().and_then(|k| by_class.get(k)) {
                Some(found) => found.clone(),
                None => {
                    let answer = per_resource(bounds, &mut levels, uid, env)?;
                    if let Some(k) = class {
                        by_class.insert(k, answer.clone());
                    }
                    answer
                }
            };
            match answer {
                Answer::Deny => {}
                Answer::Allow(reasons) => allowed.push(Capability {
                    action: name.clone(),
                    resource: json!({"type": type_name, "id": uid.id().unescaped()}),
                    reasons,
                }),
                Answer::When(condition) => conditional.push(Conditional {
                    action: name.clone(),
                    resource: json!({"type": type_name, "id": uid.id().unescaped()}),
                    condition,
                }),
            }
        }
    }
    caps.allowed.extend(allowed);
    caps.conditional.extend(conditional);
    caps.other_resources.extend(other);
    Ok(())
}

/// Every bound's answer for `resource`, combined (a deny stops it).
fn per_resource(
    bounds: &[Bound<'_>],
    levels: &mut [residual::TypeLevel],
    resource: &EntityUid,
    env: &Env<'_>,
) -> Result<Answer, String> {
    let mut answers = Vec::with_capacity(bounds.len());
    for (bound, level) in bounds.iter().zip(levels.iter_mut()) {
        let a = residual::at(bound, level, resource, env)?;
        let deny = a == Answer::Deny;
        answers.push((a, bound.reasons));
        if deny {
            break;
        }
    }
    Ok(residual::combine(answers))
}

/// The snapshot's resources by type, each sorted by id with its classification (deputy's
/// guard reads it): listed once per entity store.
type Listed = HashMap<EntityTypeName, Arc<Vec<(EntityUid, Option<i64>)>>>;

fn listed(snap: &Snapshot) -> Arc<Listed> {
    snap.memo.get_or_insert_for_store("capabilities resources", || {
        // The bundle's own store, listed once per bundle.
        let bundle = &snap.bundle;
        let base = bundle
            .memo
            .get_or_insert("capabilities resources", || list(bundle.entities.iter()));
        let Some(combined) = snap.combined() else {
            return (*base).clone();
        };
        // A combined store is the bundle's plus the managed agents' entities (none of which
        // the bundle holds): theirs are merged into the bundle's lists. Any other store is
        // listed whole.
        let managed: Vec<cedar_policy::Entity> = snap
            .agents
            .iter()
            .filter(|a| !a.is_bundle_agent())
            .filter_map(|a| combined.get(&a.uid).cloned())
            .collect();
        if bundle.entities.len() + managed.len() != combined.len()
            || managed.iter().any(|e| bundle.entities.get(&e.uid()).is_some())
        {
            return list(combined.iter());
        }
        let mut by_type = (*base).clone();
        let added = list(managed.iter());
        for (ty, resources) in added {
            let into = Arc::make_mut(by_type.entry(ty).or_default());
            into.extend(resources.iter().cloned());
            into.sort_unstable_by(|(a, _), (b, _)| a.id().unescaped().cmp(b.id().unescaped()));
        }
        by_type
    })
}

/// `entities` by type, each sorted by id, with their classifications.
fn list<'a>(entities: impl Iterator<Item = &'a cedar_policy::Entity>) -> Listed {
    let mut by_type: HashMap<EntityTypeName, Vec<(EntityUid, Option<i64>)>> = HashMap::new();
    for e in entities {
        let uid = e.uid();
        let classification = match e.attr(super::CLASSIFICATION_ATTR) {
            Some(Ok(cedar_policy::EvalResult::Long(l))) => Some(l),
            _ => None,
        };
        by_type
            .entry(uid.type_name().clone())
            .or_default()
            .push((uid, classification));
    }
    by_type
        .into_iter()
        .map(|(ty, mut resources)| {
            // Ids are unique within a type: an unstable sort gives the one order.
            resources.sort_unstable_by(|(a, _), (b, _)| a.id().unescaped().cmp(b.id().unescaped()));
            (ty, Arc::new(resources))
        })
        .collect()
}

/// deputy's own checks for a taint source or sink: the resource above the chain's ceiling, or
/// a sink below the agent's taint (context-free, as `chain::decide` makes them).
fn guard_denies(agent: &Subject<'_>, role: Option<TaintRole>, classification: Option<i64>) -> bool {
    let (Some(role), Some(classification)) = (role, classification) else {
        return false;
    };
    classification > agent.ceiling || (role == TaintRole::Sink && classification < agent.taint)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::agents::{AgentRow, Registry};
    use crate::bundle::{Bundle, LoadOptions};
    use crate::snapshot::Live;

    fn row(id: &str, parent: Option<&str>) -> AgentRow {
        let grant = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;
        AgentRow::sketch(id, parent, i64::from(parent.is_some()), 2, grant)
    }

    /// A store with managed agents is listed as the bundle's lists with the agents merged in:
    /// what listing the whole store gives.
    #[test]
    fn a_combined_store_lists_as_the_whole_store() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bundle = Arc::new(Bundle::load(dir, &LoadOptions::default()).unwrap());
        let live = Live::default();
        live.install_bundle(Arc::clone(&bundle)).unwrap();
        let registry =
            Registry::from_rows_with_sessions(vec![row("m0", None), row("m1", Some("m0"))], Vec::new()).unwrap();
        live.write().unwrap().publish(registry).unwrap();
        let snap = live.current().unwrap();
        assert!(snap.combined().is_some());
        let whole = list(snap.entities().iter());
        assert_eq!(*listed(&snap), whole);
        let agents = whole.iter().find(|(ty, _)| is_agent_type(ty)).unwrap().1;
        assert!(agents.iter().any(|(uid, _)| uid.id().unescaped() == "m1"));
    }

    /// The JSON kept with an answer is what serializing it gives, built once; a clone does not
    /// keep it (it may be changed).
    #[test]
    fn an_answer_is_serialized_once_and_a_clone_afresh() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let bundle = Arc::new(Bundle::load(dir, &LoadOptions::default()).unwrap());
        let live = Live::default();
        live.install_bundle(Arc::clone(&bundle)).unwrap();
        let registry = Registry::from_rows_with_sessions(vec![row("m0", None)], Vec::new()).unwrap();
        live.write().unwrap().publish(registry).unwrap();
        let snap = live.current().unwrap();
        let agent = Arc::clone(snap.agents.get("m0").unwrap());
        let caps = capabilities(&snap, &agent, 1);
        let body = caps.json().unwrap();
        assert_eq!(body, serde_json::to_vec(&*caps).unwrap());
        let again = capabilities(&snap, &agent, 1).json().unwrap();
        assert_eq!(body.as_ptr(), again.as_ptr(), "served from the cache, not serialized again");
        let mut changed = (*caps).clone();
        changed.allowed.clear();
        changed.conditional.clear();
        assert_eq!(changed.json().unwrap(), serde_json::to_vec(&changed).unwrap());
    }
}
