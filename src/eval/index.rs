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
//! every policy whose scope can match it; `eval::evaluate_indexed` combines their answers
//! exactly as Cedar combines policies (any satisfied forbid denies and is the reason; else any
//! satisfied permit allows and the permits are the reasons; errors are the union).
//!
//! The action buckets are built from the hierarchy of the entity store given to `build`; a
//! request is checked against the hierarchy of its own store, and if the action's named
//! ancestors differ, the lookup declines and the caller evaluates the full set. So every action
//! in a bucket satisfies the action scope of every policy in it, and every request visiting a
//! slice satisfies the constraint the slice is keyed by. So a policy's condition is compiled for
//! deputy's evaluator (`fast`) without those constraints, and a static policy scoped
//! `action in [..]` left to Cedar's evaluator is stored in its buckets with the action
//! unconstrained (same id, annotations and conditions): its decision, reason and errors are
//! unchanged, and Cedar no longer builds the action list as a set on every request.

use std::collections::hash_map::Entry;

use cedar_policy::{ActionConstraint, Entities, Policy, PolicySet};
use cedar_policy_core::ast::{Entity, EntityReference, EntityType, EntityUID, PrincipalOrResourceConstraint};
use cedar_policy_core::entities::Dereference;

use smallvec::SmallVec;

use super::fast::{AttrIds, Cond, Ctx, Implied};

/// The index's maps: keys come from the bundle, lookups from requests; foldhash is seeded per
/// process and several times faster than SipHash on entity uids.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// What [`PolicyIndex::prepare`] found for a request's action and resource in one index.
pub(crate) struct Prepared<'a, 'c> {
    index: &'a PolicyIndex,
    /// The looked-up uids it was prepared for.
    action: &'c EntityUID,
    resource: &'c EntityUID,
    /// The action's bucket (if any) and the any-action slices.
    buckets: SmallVec<[&'a Slices; 2]>,
    /// The resource's slices in those, and their remainders.
    resource_side: SmallVec<[&'a Slice; 8]>,
}

/// A policy set cut into slices by scope. Built once per bundle load; immutable after.
#[derive(Debug, Default)]
pub struct PolicyIndex {
    /// Every action uid named in some policy's action scope.
    named_actions: HashSet<EntityUID>,
    /// Buckets for actions that some action-constrained policy matches.
    by_action: HashMap<EntityUID, ActionBucket>,
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
    /// Entries whose condition deputy evaluates itself (`fast`); the rest go to Cedar's evaluator.
    pub compiled: usize,
}

#[derive(Debug, Default)]
struct ActionBucket {
    /// The named actions this action is or descends from, in the store the index was built from.
    named: Vec<EntityUID>,
    slices: Slices,
}

#[derive(Debug, Default)]
struct Slices {
    principal_eq: HashMap<EntityUID, Slice>,
    resource_eq: HashMap<EntityUID, Slice>,
    principal_in: HashMap<EntityUID, Slice>,
    resource_in: HashMap<EntityUID, Slice>,
    principal_is: HashMap<EntityType, Slice>,
    resource_is: HashMap<EntityType, Slice>,
    rest: Slice,
}

/// The policies of one slice, ready for evaluation.
pub type Slice = Vec<Ready>;

/// A policy as the index evaluates it: its effect and its condition compiled for deputy's
/// evaluator (`fast`), small and inline so that a slice's policies sit side by side in memory;
/// its name and its condition as Cedar evaluates it, needed only for reasons, errors and the
/// policies deputy's evaluator declines, behind one pointer.
#[derive(Debug, Clone)]
pub struct Ready {
    pub effect: cedar_policy_core::ast::Effect,
    /// `None` when the condition is outside deputy's fragment.
    pub fast: Option<Cond>,
    pub rest: Box<Rest>,
}

#[derive(Debug, Clone)]
pub struct Rest {
    /// The policy's id as Cedar prints it, rendered once (reasons and errors name policies so).
    pub name: String,
    pub cedar: CedarForm,
}

/// A policy's condition for Cedar's evaluator.
#[derive(Debug, Clone)]
pub enum CedarForm {
    /// The policy as written; its condition is built when deputy's evaluator declines (rarely:
    /// only where Cedar could err).
    Policy(cedar_policy_core::ast::Policy),
    /// The condition (scope constraints and `when`/`unless`) as Cedar's authorizer builds it,
    /// built once at load instead of on every request.
    Condition {
        condition: cedar_policy_core::ast::Expr,
        env: cedar_policy_core::ast::SlotEnv,
    },
}

impl Ready {
    /// `p` as evaluated in the slice keyed by `key`.
    fn new(p: &Policy, key: &Key, ids: &mut AttrIds) -> Ready {
        let core: &cedar_policy_core::ast::Policy = p.as_ref();
        let fast = Cond::compile(core, key.implied(), ids);
        let cedar = if fast.is_some() {
            CedarForm::Policy(core.clone())
        } else {
            // INVARIANT: `without_action_scope` is exact inside an action bucket (see there).
            let q = match p.action_constraint() {
                ActionConstraint::In(_) => without_action_scope(p),
                _ => None,
            };
            let core: &cedar_policy_core::ast::Policy = q.as_ref().unwrap_or(p).as_ref();
            CedarForm::Condition {
                condition: core.condition(),
                env: core.env().clone(),
            }
        };
        Ready {
            effect: core.effect(),
            fast,
            rest: Box::new(Rest {
                name: core.id().to_string(),
                cedar,
            }),
        }
    }
}

/// Where in a bucket a policy goes.
#[derive(Clone)]
enum Key {
    PrincipalEq(EntityUID),
    ResourceEq(EntityUID),
    PrincipalIn(EntityUID),
    ResourceIn(EntityUID),
    PrincipalIs(EntityType),
    ResourceIs(EntityType),
    Rest,
}

impl Key {
    /// The scope constraint a request visiting this slice satisfies (see `Slices::visit`).
    fn implied(&self) -> Implied {
        match self {
            Key::PrincipalEq(_) | Key::PrincipalIn(_) => Implied::PrincipalEntity,
            Key::ResourceEq(_) | Key::ResourceIn(_) => Implied::ResourceEntity,
            Key::PrincipalIs(_) => Implied::PrincipalType,
            Key::ResourceIs(_) => Implied::ResourceType,
            Key::Rest => Implied::Nothing,
        }
    }
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
                    index.named_actions.insert(a.as_ref().clone());
                }
                ActionConstraint::In(list) => index.named_actions.extend(list.iter().map(|a| a.as_ref().clone())),
            }
        }
        let entities: &cedar_policy_core::entities::Entities = entities.as_ref();
        let descendants = index.descendants_of_named(entities);
        index.fill(policies, entities, &descendants, &mut AttrIds::default());
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
        principal: &cedar_policy::EntityUid,
        action: &cedar_policy::EntityUid,
        resource: &cedar_policy::EntityUid,
    ) -> Option<Vec<&'a Slice>> {
        let store: &cedar_policy_core::entities::Entities = entities.as_ref();
        let found = |uid: &cedar_policy::EntityUid| match store.entity(uid.as_ref()) {
            Dereference::Data(e) => Some(e),
            _ => None,
        };
        let mut out = Vec::new();
        self.visit(
            (principal.as_ref(), found(principal)),
            (action.as_ref(), found(action)),
            (resource.as_ref(), found(resource)),
            &mut out,
        )
        .then_some(out)
    }

    /// The ids (as Cedar prints them) of the policies whose scope can match a request, or `None`
    /// as for `slices`: what discovery partially evaluates for one resource.
    pub fn policy_names<'a>(
        &'a self,
        entities: &Entities,
        principal: &cedar_policy::EntityUid,
        action: &cedar_policy::EntityUid,
        resource: &cedar_policy::EntityUid,
    ) -> Option<impl Iterator<Item = &'a str>> {
        let slices = self.slices(entities, principal, action, resource)?;
        Some(slices.into_iter().flat_map(|s| s.iter().map(|r| r.rest.name.as_str())))
    }

    /// `slices` for a request whose entities `ctx` has looked up.
    pub(crate) fn slices_for<'a>(&'a self, ctx: &Ctx<'_>, out: &mut impl Extend<&'a Slice>) -> bool {
        let (Some(principal), Some(action), Some(resource)) = (ctx.uid(0), ctx.uid(1), ctx.uid(2)) else {
            return false;
        };
        // A store that answers with residuals (partial evaluation) is Cedar's alone.
        if ctx.store_unsure() {
            return false;
        }
        self.visit(
            (principal, ctx.entity_of(0)),
            (action, ctx.entity_of(1)),
            (resource, ctx.entity_of(2)),
            out,
        )
    }

    /// The action's and the resource's part of `slices_for`, for asking this index about
    /// several principals with the same action, resource and store (an agent and each of its
    /// ancestors): `None` when the index cannot answer (as `slices_for` declines).
    pub(crate) fn prepare<'a, 'c>(&'a self, ctx: &Ctx<'c>) -> Option<Prepared<'a, 'c>> {
        let (Some(action), Some(resource)) = (ctx.uid(1), ctx.uid(2)) else {
            return None;
        };
        if ctx.unsure(1) || ctx.unsure(2) {
            return None;
        }
        let bucket = self.by_action.get(action);
        if !self.same_named_ancestry((action, ctx.entity_of(1)), bucket) {
            return None;
        }
        let mut prepared = Prepared {
            index: self,
            action,
            resource,
            buckets: SmallVec::new(),
            resource_side: SmallVec::new(),
        };
        for slices in bucket.map(|b| &b.slices).into_iter().chain([&self.any_action]) {
            prepared.buckets.push(slices);
            slices.visit_resource((resource, ctx.entity_of(2)), &mut prepared.resource_side);
        }
        Some(prepared)
    }

    /// `slices_for` through `prepared`, when it was prepared by this index for the same action
    /// and resource (the same looked-up uids: `ctx` made from the preparing one by
    /// `with_principal`); else `slices_for`. The same slices either way.
    pub(crate) fn slices_prepared<'a>(
        &'a self,
        prepared: &Prepared<'a, '_>,
        ctx: &Ctx<'_>,
        out: &mut impl Extend<&'a Slice>,
    ) -> bool {
        let same = std::ptr::eq(prepared.index, self)
            && ctx.uid(1).is_some_and(|a| std::ptr::eq(a, prepared.action))
            && ctx.uid(2).is_some_and(|r| std::ptr::eq(r, prepared.resource));
        if !same {
            return self.slices_for(ctx, out);
        }
        let Some(principal) = ctx.uid(0) else {
            return false;
        };
        if ctx.unsure(0) {
            return false;
        }
        out.extend(prepared.resource_side.iter().copied());
        for slices in &prepared.buckets {
            slices.visit_principal((principal, ctx.entity_of(0)), out);
        }
        true
    }

    /// Each of the request's entities comes with its stored entity, if any.
    fn visit<'a>(
        &'a self,
        principal: (&EntityUID, Option<&Entity>),
        action: (&EntityUID, Option<&Entity>),
        resource: (&EntityUID, Option<&Entity>),
        out: &mut impl Extend<&'a Slice>,
    ) -> bool {
        let bucket = self.by_action.get(action.0);
        if !self.same_named_ancestry(action, bucket) {
            return false;
        }
        for slices in bucket.map(|b| &b.slices).into_iter().chain([&self.any_action]) {
            slices.visit(principal, resource, out);
        }
        true
    }

    /// Whether `action`'s named ancestry in the request's store is the one its bucket was built
    /// for (none, when it has no bucket).
    fn same_named_ancestry(
        &self,
        (action, stored): (&EntityUID, Option<&Entity>),
        bucket: Option<&ActionBucket>,
    ) -> bool {
        let built: &[EntityUID] = bucket.map(|b| b.named.as_slice()).unwrap_or_default();
        // Cedar: an entity missing from the store is `in` only itself.
        let in_request = |x: &EntityUID| x == action || stored.is_some_and(|e| e.is_descendant_of(x));
        // Every named action the request's action is `in` was in the bucket's ancestry (a named
        // action's own bucket lists it: no hash of the action then)...
        let self_ok = built.contains(action) || !self.named_actions.contains(action);
        let ancestors_ok = stored
            .into_iter()
            .flat_map(|e| e.ancestors())
            .filter(|x| self.named_actions.contains(*x))
            .all(|x| built.contains(x));
        // ...and every one the bucket was built for still is.
        self_ok && ancestors_ok && built.iter().all(in_request)
    }

    /// For each named action, the entities in the store below it.
    fn descendants_of_named(
        &self,
        entities: &cedar_policy_core::entities::Entities,
    ) -> HashMap<EntityUID, Vec<EntityUID>> {
        let mut below: HashMap<EntityUID, Vec<EntityUID>> = HashMap::default();
        if self.named_actions.is_empty() {
            return below;
        }
        for e in entities.iter() {
            for a in e.ancestors() {
                if self.named_actions.contains(a) {
                    below.entry(a.clone()).or_default().push(e.uid().clone());
                }
            }
        }
        below
    }

    fn fill(
        &mut self,
        policies: &PolicySet,
        entities: &cedar_policy_core::entities::Entities,
        descendants: &HashMap<EntityUID, Vec<EntityUID>>,
        ids: &mut AttrIds,
    ) {
        for p in policies.policies() {
            let key = key_of(p);
            let actions: Vec<EntityUID> = match p.action_constraint() {
                ActionConstraint::Any => {
                    self.any_action.insert(key.clone(), Ready::new(p, &key, ids));
                    continue;
                }
                ActionConstraint::Eq(a) => vec![a.as_ref().clone()],
                ActionConstraint::In(list) => {
                    let mut all: Vec<EntityUID> = list
                        .iter()
                        .map(|a| a.as_ref())
                        .flat_map(|a| std::iter::once(a).chain(descendants.get(a).into_iter().flatten()))
                        .cloned()
                        .collect();
                    all.sort();
                    all.dedup();
                    all
                }
            };
            let ready = Ready::new(p, &key, ids);
            for a in actions {
                let bucket = match self.by_action.entry(a) {
                    Entry::Occupied(o) => o.into_mut(),
                    Entry::Vacant(v) => {
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
                    stats.compiled += set.iter().filter(|r| r.fast.is_some()).count();
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
    use PrincipalOrResourceConstraint as C;
    let core: &cedar_policy_core::ast::Policy = p.as_ref();
    let principal = core.principal_constraint();
    let resource = core.resource_constraint();
    let entity = |r: &EntityReference| match r {
        EntityReference::EUID(u) => Some(u.as_ref().clone()),
        // A linked policy's constraints have their slots filled: never here.
        EntityReference::Slot(_) => None,
    };
    let (p, r) = (principal.as_inner(), resource.as_inner());
    let key = match (p, r) {
        (C::Eq(u), _) => entity(u).map(Key::PrincipalEq),
        (_, C::Eq(u)) => entity(u).map(Key::ResourceEq),
        (C::In(u) | C::IsIn(_, u), _) => entity(u).map(Key::PrincipalIn),
        (_, C::In(u) | C::IsIn(_, u)) => entity(u).map(Key::ResourceIn),
        (C::Is(t), _) => Some(Key::PrincipalIs(t.as_ref().clone())),
        (_, C::Is(t)) => Some(Key::ResourceIs(t.as_ref().clone())),
        (C::Any, C::Any) => Some(Key::Rest),
    };
    key.unwrap_or(Key::Rest)
}

/// `({action} ∪ ancestors(action)) ∩ named`, in `entities`.
fn named_ancestry(
    named: &HashSet<EntityUID>,
    entities: &cedar_policy_core::entities::Entities,
    action: &EntityUID,
) -> Vec<EntityUID> {
    let stored = match entities.entity(action) {
        Dereference::Data(e) => Some(e),
        _ => None,
    };
    let mut out: Vec<EntityUID> = std::iter::once(action)
        .chain(stored.into_iter().flat_map(|e| e.ancestors()))
        .filter(|x| named.contains(*x))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
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

    /// The slices whose key the request satisfies.
    ///
    /// INVARIANT: Cedar keeps an entity's parents and indirect ancestors disjoint and rejects an
    /// entity among its own ancestors, so the entity and its ancestors list each uid once and
    /// no slice is visited twice. An entity missing from the store is `in` only itself.
    fn visit<'a>(
        &'a self,
        principal: (&EntityUID, Option<&Entity>),
        resource: (&EntityUID, Option<&Entity>),
        out: &mut impl Extend<&'a Slice>,
    ) {
        self.visit_principal(principal, out);
        self.visit_resource(resource, out);
    }

    /// The slices of `visit` keyed by the principal.
    fn visit_principal<'a>(
        &'a self,
        (principal, p_stored): (&EntityUID, Option<&Entity>),
        out: &mut impl Extend<&'a Slice>,
    ) {
        out.extend(self.principal_eq.get(principal));
        if !self.principal_in.is_empty() {
            out.extend(self.principal_in.get(principal));
            out.extend(
                p_stored
                    .into_iter()
                    .flat_map(|e| e.ancestors())
                    .filter_map(|u| self.principal_in.get(u)),
            );
        }
        out.extend(self.principal_is.get(principal.entity_type()));
    }

    /// The slices of `visit` keyed by the resource, and the remainder.
    fn visit_resource<'a>(
        &'a self,
        (resource, r_stored): (&EntityUID, Option<&Entity>),
        out: &mut impl Extend<&'a Slice>,
    ) {
        out.extend(self.resource_eq.get(resource));
        if !self.resource_in.is_empty() {
            out.extend(self.resource_in.get(resource));
            out.extend(
                r_stored
                    .into_iter()
                    .flat_map(|e| e.ancestors())
                    .filter_map(|u| self.resource_in.get(u)),
            );
        }
        out.extend(self.resource_is.get(resource.entity_type()));
        if !self.rest.is_empty() {
            out.extend([&self.rest]);
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

    fn uid(s: &str) -> cedar_policy::EntityUid {
        cedar_policy::EntityUid::from_str(s).unwrap()
    }

    fn ids(slices: &[&Slice]) -> Vec<String> {
        let mut v: Vec<String> = slices
            .iter()
            .flat_map(|s| s.iter().map(|p| p.rest.name.clone()))
            .collect();
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
