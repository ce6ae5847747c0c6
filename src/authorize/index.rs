//! The policy index: a bundle's policy set cut, once per load, into small disjoint slices keyed by
//! scope, so that a request is evaluated against only the slices whose policies could apply.
//!
//! Two levels. First the action: one bucket per action uid that some action-constrained policy
//! can match (`action == A`, or `action in [..]` through the schema's action hierarchy), and one
//! bucket for the policies with an unconstrained action. Then, inside a bucket, each policy goes
//! to exactly one slice, keyed by its most selective principal or resource constraint:
//! `principal ==`, else `resource ==`, else `principal in`/`is in`, else `resource in`/`is in`,
//! else `principal is`, else `resource is`, else the bucket's remainder.
//!
//! A request visits, in its action's bucket and in the any-action bucket: the `==` slices of its
//! principal and resource, the `in` slices of the principal and resource and of each of their
//! ancestors in the request's entity store, the `is` slices of their types, and the remainder.
//!
//! INVARIANT (exactness): Cedar evaluates a policy as the conjunction `principal scope && action
//! scope && resource scope && when && !unless`, left to right with short-circuiting, and a scope
//! constraint on a concrete request never errs (`==`, `in`, `is` on entity literals are total;
//! an entity missing from the store is `in` only itself). So a policy whose scope does not match
//! the request is neither satisfied nor erring: leaving it out changes neither the decision, nor
//! the determining policies, nor the errors. The slices a request visits are disjoint and hold
//! every policy whose scope can match it; `authorize::evaluate_indexed` combines their answers
//! exactly as Cedar combines policies (any satisfied forbid denies and is the reason; else any
//! satisfied permit allows and the permits are the reasons; errors are the union).
//!
//! The action buckets are built from the hierarchy of the entity store given to `build`; a
//! request is checked against the hierarchy of its own store, and if the action's named
//! ancestors differ, the lookup declines and the caller evaluates the full set. So every action
//! in a bucket satisfies the action scope of every policy in it, and a static policy scoped
//! `action in [..]` is stored in its buckets with the action unconstrained (same id, annotations
//! and conditions): its decision, reason and errors are unchanged, and Cedar no longer builds
//! the action list as a set on every request.

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    ActionConstraint, Entities, EntityTypeName, EntityUid, Policy, PolicySet, PrincipalConstraint, ResourceConstraint,
};

/// A policy set cut into slices by scope. Built once per bundle load; immutable after.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    /// Every action uid named in some policy's action scope.
    named_actions: HashSet<EntityUid>,
    /// Buckets for actions that some action-constrained policy matches.
    by_action: HashMap<EntityUid, ActionBucket>,
    /// Policies with an unconstrained action.
    any_action: Slices,
    stats: IndexStats,
}

/// Sizes of an index, for benchmarks and logs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// Policies (static and linked) in the indexed set.
    pub policies: usize,
    /// Non-empty slices over all buckets.
    pub slices: usize,
    /// Policy entries over all slices: `policies` plus the copies of policies whose action
    /// scope names a group, one per member action.
    pub entries: usize,
    /// Entries in the largest slice.
    pub largest_slice: usize,
}

#[derive(Debug, Default)]
struct ActionBucket {
    /// The named actions this action is or descends from, in the store the index was built from.
    named: Vec<EntityUid>,
    slices: Slices,
}

#[derive(Debug, Default)]
struct Slices {
    principal_eq: HashMap<EntityUid, Slice>,
    resource_eq: HashMap<EntityUid, Slice>,
    principal_in: HashMap<EntityUid, Slice>,
    resource_in: HashMap<EntityUid, Slice>,
    principal_is: HashMap<EntityTypeName, Slice>,
    resource_is: HashMap<EntityTypeName, Slice>,
    rest: Slice,
}

/// The policies of one slice, ready for Cedar's evaluator.
pub type Slice = Vec<Ready>;

/// A policy as Cedar's authorizer evaluates it: its id, effect, and the condition Cedar builds
/// for it (scope constraints and `when`/`unless`, `Policy::condition`) with its slot values,
/// built once at load instead of on every request.
#[derive(Debug, Clone)]
pub struct Ready {
    pub id: cedar_policy_core::ast::PolicyID,
    pub effect: cedar_policy_core::ast::Effect,
    pub condition: cedar_policy_core::ast::Expr,
    pub env: cedar_policy_core::ast::SlotEnv,
}

impl Ready {
    pub fn of(p: &Policy) -> Ready {
        let core: &cedar_policy_core::ast::Policy = p.as_ref();
        Ready {
            id: core.id().clone(),
            effect: core.effect(),
            condition: core.condition(),
            env: core.env().clone(),
        }
    }
}

/// Where in a bucket a policy goes.
#[derive(Clone)]
enum Key {
    PrincipalEq(EntityUid),
    ResourceEq(EntityUid),
    PrincipalIn(EntityUid),
    ResourceIn(EntityUid),
    PrincipalIs(EntityTypeName),
    ResourceIs(EntityTypeName),
    Rest,
}

impl PolicyIndex {
    /// Indexes `policies`, reading the action hierarchy from `entities`. Unlinked templates are
    /// left out: Cedar never evaluates them.
    pub fn build(policies: &PolicySet, entities: &Entities) -> PolicyIndex {
        let mut index = PolicyIndex::default();
        for p in policies.policies() {
            match p.action_constraint() {
                ActionConstraint::Any => {}
                ActionConstraint::Eq(a) => {
                    index.named_actions.insert(a);
                }
                ActionConstraint::In(list) => index.named_actions.extend(list),
            }
        }
        let descendants = index.descendants_of_named(entities);
        index.fill(policies, entities, &descendants);
        index.stats = index.count(policies.num_of_policies());
        index
    }

    pub fn stats(&self) -> IndexStats {
        self.stats
    }

    /// The slices to evaluate for a request, or `None` when the index cannot answer for it
    /// (the request's store disagrees with the index's action hierarchy):
    /// then the full set must be evaluated. The slices are disjoint and, together, hold every
    /// policy whose scope matches the request.
    pub fn slices<'a>(
        &'a self,
        entities: &Entities,
        principal: &EntityUid,
        action: &EntityUid,
        resource: &EntityUid,
    ) -> Option<Vec<&'a Slice>> {
        let bucket = self.by_action.get(action);
        if !self.same_named_ancestry(entities, action, bucket) {
            return None;
        }
        let mut out = Vec::new();
        let principals = self_and_ancestors(entities, principal);
        let resources = self_and_ancestors(entities, resource);
        for slices in bucket.map(|b| &b.slices).into_iter().chain([&self.any_action]) {
            slices.visit(principal, resource, &principals, &resources, &mut out);
        }
        Some(out)
    }

    /// Whether `action`'s named ancestry in the request's store is the one its bucket was built
    /// for (none, when it has no bucket).
    fn same_named_ancestry(&self, entities: &Entities, action: &EntityUid, bucket: Option<&ActionBucket>) -> bool {
        let built: &[EntityUid] = bucket.map(|b| b.named.as_slice()).unwrap_or_default();
        let in_request = |x: &EntityUid| x == action || entities.is_ancestor_of(x, action);
        // Every named action the request's action is `in` was in the bucket's ancestry...
        let self_ok = !self.named_actions.contains(action) || built.contains(action);
        let ancestors_ok = entities
            .ancestors(action)
            .into_iter()
            .flatten()
            .filter(|x| self.named_actions.contains(*x))
            .all(|x| built.contains(x));
        // ...and every one the bucket was built for still is.
        self_ok && ancestors_ok && built.iter().all(in_request)
    }

    /// For each named action, the entities in the store below it.
    fn descendants_of_named(&self, entities: &Entities) -> HashMap<EntityUid, Vec<EntityUid>> {
        let mut below: HashMap<EntityUid, Vec<EntityUid>> = HashMap::new();
        if self.named_actions.is_empty() {
            return below;
        }
        for e in entities.iter() {
            let uid = e.uid();
            for a in entities.ancestors(&uid).into_iter().flatten() {
                if self.named_actions.contains(a) {
                    below.entry(a.clone()).or_default().push(uid.clone());
                }
            }
        }
        below
    }

    fn fill(&mut self, policies: &PolicySet, entities: &Entities, descendants: &HashMap<EntityUid, Vec<EntityUid>>) {
        for p in policies.policies() {
            let key = key_of(p);
            let mut ready = None;
            let actions: Vec<EntityUid> = match p.action_constraint() {
                ActionConstraint::Any => {
                    self.any_action.insert(key, Ready::of(p));
                    continue;
                }
                ActionConstraint::Eq(a) => vec![a],
                ActionConstraint::In(list) => {
                    ready = without_action_scope(p).map(|q| Ready::of(&q));
                    let mut all: Vec<EntityUid> = list
                        .iter()
                        .flat_map(|a| std::iter::once(a).chain(descendants.get(a).into_iter().flatten()))
                        .cloned()
                        .collect();
                    all.sort();
                    all.dedup();
                    all
                }
            };
            let ready = ready.unwrap_or_else(|| Ready::of(p));
            for a in actions {
                let bucket = match self.by_action.entry(a) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let named = named_ancestry(&self.named_actions, entities, v.key());
                        v.insert(ActionBucket {
                            named,
                            slices: Slices::default(),
                        })
                    }
                };
                bucket.slices.insert(key.clone(), ready.clone());
            }
        }
    }

    fn count(&self, policies: usize) -> IndexStats {
        let mut stats = IndexStats {
            policies,
            ..IndexStats::default()
        };
        for slices in self.by_action.values().map(|b| &b.slices).chain([&self.any_action]) {
            for set in slices.all() {
                let n = set.len();
                if n > 0 {
                    stats.slices += 1;
                    stats.entries += n;
                    stats.largest_slice = stats.largest_slice.max(n);
                }
            }
        }
        stats
    }
}

/// A static policy with an `action in [..]` scope, as it is evaluated inside an action bucket:
/// the same policy (id, annotations, principal and resource scope, conditions) with the action
/// unconstrained. Cedar would otherwise build the action list as a set value on every request.
/// Exact only inside a bucket whose actions all satisfy the original constraint (see
/// `PolicyIndex`). `None` for a linked policy (its template is shared) or if the rewrite fails;
/// the policy is then evaluated as written.
fn without_action_scope(p: &Policy) -> Option<Policy> {
    if p.template_id().is_some() {
        return None;
    }
    let mut json = p.to_json().ok()?;
    *json.get_mut("action")? = serde_json::json!({ "op": "All" });
    Policy::from_json(Some(p.id().clone()), json).ok()
}

/// The slice a policy goes to: its most selective principal or resource constraint. For a
/// linked policy the constraints are the template's with the link's values.
fn key_of(p: &Policy) -> Key {
    let principal = p.principal_constraint();
    let resource = p.resource_constraint();
    match (principal, resource) {
        (PrincipalConstraint::Eq(u), _) => Key::PrincipalEq(u),
        (_, ResourceConstraint::Eq(u)) => Key::ResourceEq(u),
        (PrincipalConstraint::In(u) | PrincipalConstraint::IsIn(_, u), _) => Key::PrincipalIn(u),
        (_, ResourceConstraint::In(u) | ResourceConstraint::IsIn(_, u)) => Key::ResourceIn(u),
        (PrincipalConstraint::Is(t), _) => Key::PrincipalIs(t),
        (_, ResourceConstraint::Is(t)) => Key::ResourceIs(t),
        (PrincipalConstraint::Any, ResourceConstraint::Any) => Key::Rest,
    }
}

/// `({action} ∪ ancestors(action)) ∩ named`, in `entities`.
fn named_ancestry(named: &HashSet<EntityUid>, entities: &Entities, action: &EntityUid) -> Vec<EntityUid> {
    let mut out: Vec<EntityUid> = std::iter::once(action)
        .chain(entities.ancestors(action).into_iter().flatten())
        .filter(|x| named.contains(*x))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The entity followed by its ancestors in `entities` (none when it is not in the store).
fn self_and_ancestors<'e>(entities: &'e Entities, uid: &'e EntityUid) -> Vec<&'e EntityUid> {
    // INVARIANT: Cedar keeps an entity's parents and indirect ancestors disjoint and rejects
    // an entity among its own ancestors, so this lists each uid once and no slice is visited
    // twice.
    std::iter::once(uid)
        .chain(entities.ancestors(uid).into_iter().flatten())
        .collect()
}

impl Slices {
    fn insert(&mut self, key: Key, p: Ready) {
        let set = match key {
            Key::PrincipalEq(u) => self.principal_eq.entry(u).or_default(),
            Key::ResourceEq(u) => self.resource_eq.entry(u).or_default(),
            Key::PrincipalIn(u) => self.principal_in.entry(u).or_default(),
            Key::ResourceIn(u) => self.resource_in.entry(u).or_default(),
            Key::PrincipalIs(t) => self.principal_is.entry(t).or_default(),
            Key::ResourceIs(t) => self.resource_is.entry(t).or_default(),
            Key::Rest => &mut self.rest,
        };
        set.push(p);
    }

    fn visit<'a>(
        &'a self,
        principal: &EntityUid,
        resource: &EntityUid,
        principals: &[&EntityUid],
        resources: &[&EntityUid],
        out: &mut Vec<&'a Slice>,
    ) {
        out.extend(self.principal_eq.get(principal));
        out.extend(self.resource_eq.get(resource));
        if !self.principal_in.is_empty() {
            out.extend(principals.iter().filter_map(|u| self.principal_in.get(*u)));
        }
        if !self.resource_in.is_empty() {
            out.extend(resources.iter().filter_map(|u| self.resource_in.get(*u)));
        }
        out.extend(self.principal_is.get(principal.type_name()));
        out.extend(self.resource_is.get(resource.type_name()));
        if !self.rest.is_empty() {
            out.push(&self.rest);
        }
    }

    fn all(&self) -> impl Iterator<Item = &Slice> {
        self.principal_eq
            .values()
            .chain(self.resource_eq.values())
            .chain(self.principal_in.values())
            .chain(self.resource_in.values())
            .chain(self.principal_is.values())
            .chain(self.resource_is.values())
            .chain([&self.rest])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::str::FromStr;

    fn uid(s: &str) -> EntityUid {
        EntityUid::from_str(s).unwrap()
    }

    fn ids(slices: &[&Slice]) -> Vec<String> {
        let mut v: Vec<String> = slices.iter().flat_map(|s| s.iter().map(|p| p.id.to_string())).collect();
        v.sort();
        v
    }

    #[test]
    fn slices_by_scope() {
        let policies = PolicySet::from_str(
            r#"
            permit(principal == User::"a", action == Action::"read", resource);
            permit(principal == User::"b", action == Action::"read", resource);
            permit(principal in Group::"g", action == Action::"read", resource);
            permit(principal == User::"a", action == Action::"write", resource);
            forbid(principal, action, resource == Doc::"secret");
            permit(principal, action in [Action::"rw"], resource is Doc);
            permit(principal == ?principal, action == Action::"read", resource);
            "#,
        )
        .unwrap();
        let mut policies = policies;
        policies
            .link(
                cedar_policy::PolicyId::new("policy6"),
                cedar_policy::PolicyId::new("t-a"),
                [(cedar_policy::SlotId::principal(), uid(r#"User::"a""#))].into(),
            )
            .unwrap();
        let entities = Entities::from_json_str(
            r#"[
              {"uid": {"type": "User", "id": "a"}, "attrs": {}, "parents": [{"type": "Group", "id": "g"}]},
              {"uid": {"type": "Action", "id": "read"}, "attrs": {}, "parents": [{"type": "Action", "id": "rw"}]},
              {"uid": {"type": "Action", "id": "rw"}, "attrs": {}, "parents": []}
            ]"#,
            None,
        )
        .unwrap();
        let index = PolicyIndex::build(&policies, &entities);
        let got = index
            .slices(
                &entities,
                &uid(r#"User::"a""#),
                &uid(r#"Action::"read""#),
                &uid(r#"Doc::"secret""#),
            )
            .unwrap_or_default();
        // Parsed ids are `policyN` in order; the template is `policy6`.
        assert_eq!(ids(&got), ["policy0", "policy2", "policy4", "policy5", "t-a"]);
        let got = index
            .slices(
                &entities,
                &uid(r#"User::"c""#),
                &uid(r#"Action::"write""#),
                &uid(r#"Doc::"secret""#),
            )
            .unwrap_or_default();
        assert_eq!(ids(&got), ["policy4"]);
        assert_eq!(index.stats().policies, 7);
    }

    #[test]
    fn declines_when_the_action_hierarchy_differs() {
        let policies = PolicySet::from_str(r#"permit(principal, action in [Action::"rw"], resource);"#).unwrap();
        let flat = Entities::empty();
        let index = PolicyIndex::build(&policies, &flat);
        let nested = Entities::from_json_str(
            r#"[{"uid": {"type": "Action", "id": "read"}, "attrs": {}, "parents": [{"type": "Action", "id": "rw"}]}]"#,
            None,
        )
        .unwrap();
        let (p, a, r) = (uid(r#"User::"a""#), uid(r#"Action::"read""#), uid(r#"Doc::"x""#));
        assert!(index.slices(&flat, &p, &a, &r).is_some_and(|s| s.is_empty()));
        assert!(index.slices(&nested, &p, &a, &r).is_none());
    }
}
