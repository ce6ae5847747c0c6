//! Turning a satisfying assignment into a concrete request and entities, and replaying it
//! through Cedar's own `Authorizer`.
//!
//! Only a replayed request is ever reported as a counterexample: whatever the encoding
//! abstracted away, Cedar has the last word.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, PolicyId, PolicySet, Request, Schema, SlotId};
use cedar_policy_core::ast::{Eid, EntityReference, EntityType, EntityUID, PrincipalOrResourceConstraint};
use cedar_policy_core::entities::{Dereference, Entities as CoreEntities};
use serde_json::{json, Value as Json};

use super::encode::{Atom, Encoding, Lit, Ty, CONTEXT, PRINCIPAL, RESOURCE};
use super::error::GrantError;
use super::grant::GrantPolicy;
use super::solve::{Known, Theory};
use super::verdict::Counterexample;

mod reach;

/// A concrete request built from a model.
pub(crate) struct Candidate {
    pub(crate) principal: EntityUID,
    pub(crate) action: EntityUID,
    pub(crate) resource: EntityUID,
    pub(crate) context: Json,
    pub(crate) entities: Vec<Json>,
}

struct Builder<'a, 'e, 'w> {
    enc: &'e Encoding<'w>,
    theory: Theory<'e, 'w>,
    a: &'a [Option<bool>],
    known: Vec<Known<'w>>,
    /// Values of the terms related to one another (`a <= b`), solved jointly.
    joint: HashMap<usize, i64>,
    uids: HashMap<usize, EntityUID>,
    taken: HashSet<EntityUID>,
    pending: Vec<usize>,
    emitted: BTreeMap<String, Json>,
}

pub(crate) fn concretize(enc: &Encoding<'_>, a: &[Option<bool>]) -> Option<Candidate> {
    let theory = Theory::new(enc);
    let known = theory.known(a);
    let joint = theory
        .relations(a, &known, true)
        .or_else(|| theory.relations(a, &known, false))?
        .into_iter()
        .collect();
    let mut b = Builder {
        enc,
        theory,
        a,
        known,
        joint,
        uids: HashMap::new(),
        taken: HashSet::new(),
        pending: Vec::new(),
        emitted: BTreeMap::new(),
    };
    let principal = b.uid_of(PRINCIPAL)?;
    let resource = b.uid_of(RESOURCE)?;
    let context = b.value(Some(CONTEXT), &enc.env.context.clone())?;
    while let Some(t) = b.pending.pop() {
        b.emit(t)?;
    }
    Some(Candidate {
        principal,
        action: enc.env.action.clone(),
        resource,
        context,
        entities: b.emitted.into_values().collect(),
    })
}

fn uid_json(u: &EntityUID) -> Json {
    json!({"type": u.entity_type().to_string(), "id": AsRef::<str>::as_ref(u.eid())})
}

fn lit_json(l: &Lit) -> Json {
    match l {
        Lit::Bool(b) => json!(b),
        Lit::Long(k) => json!(k),
        Lit::Str(s) => json!(s),
        Lit::Entity(u) => json!({ "__entity": uid_json(u) }),
    }
}

fn ext_default(name: &str) -> Option<Json> {
    let (f, arg) = match name {
        "decimal" => ("decimal", "0.0"),
        "ipaddr" => ("ip", "127.0.0.1"),
        "datetime" => ("datetime", "1970-01-01"),
        "duration" => ("duration", "0ms"),
        _ => return None,
    };
    Some(json!({"__extn": {"fn": f, "arg": arg}}))
}

impl Builder<'_, '_, '_> {
    fn assigned(&self, atom: &Atom) -> Option<bool> {
        let id = self.enc.atom_id(atom)?;
        self.a.get(id).copied().flatten()
    }

    /// An enumerated entity the term may denote (one its `==` atoms do not exclude).
    fn enum_member(&self, t: Option<usize>, et: &EntityType) -> Option<Option<EntityUID>> {
        let members = self.enc.world.enum_members(et)?;
        Some(members.into_iter().find_map(|eid| {
            let uid = EntityUID::from_components(et.clone(), eid, None);
            let excluded = t.is_some_and(|t| self.assigned(&Atom::EntEq(t, uid.clone())) == Some(false));
            (!excluded).then_some(uid)
        }))
    }

    fn fresh_uid(&mut self, et: &EntityType, hint: &str) -> EntityUID {
        let world = self.enc.world;
        let mut n = 0usize;
        loop {
            let eid = if n == 0 { hint.to_owned() } else { format!("{hint}-{n}") };
            let uid = EntityUID::from_components(et.clone(), Eid::new(eid), None);
            if world.stored(&uid).is_none() && !self.taken.contains(&uid) {
                self.taken.insert(uid.clone());
                return uid;
            }
            n += 1;
        }
    }

    fn uid_of(&mut self, t: usize) -> Option<EntityUID> {
        if let Some(u) = self.uids.get(&t) {
            return Some(u.clone());
        }
        let Ty::Entity(et) = self.enc.ty(t).clone() else {
            return None;
        };
        if let Some(member) = self.enum_member(Some(t), &et) {
            // Enumerated entities exist implicitly and carry nothing: never emitted.
            let uid = match self.known.get(t) {
                Some(Known::Entity(uid)) => uid.clone(),
                _ => member?,
            };
            self.uids.insert(t, uid.clone());
            return Some(uid);
        }
        let uid = match self.known.get(t).cloned().unwrap_or(Known::Free) {
            Known::Entity(uid) => {
                if self.enc.world.stored(&uid).is_none() {
                    self.taken.insert(uid.clone());
                    self.pending.push(t);
                }
                uid
            }
            Known::Free => {
                let hint = match t {
                    PRINCIPAL => "cx-principal".to_owned(),
                    RESOURCE => "cx-resource".to_owned(),
                    n => format!("cx-{n}"),
                };
                let uid = self.fresh_uid(&et, &hint);
                self.pending.push(t);
                uid
            }
            Known::Absent | Known::Value(_) => return None,
        };
        self.uids.insert(t, uid.clone());
        Some(uid)
    }

    /// Adds the entity a fresh term denotes, unless the model says it must not exist.
    fn emit(&mut self, t: usize) -> Option<()> {
        let uid = self.uid_of(t)?;
        let key = uid.to_string();
        if self.emitted.contains_key(&key) {
            return Some(());
        }
        if self.assigned(&Atom::Exists(t)) == Some(false) {
            return Some(());
        }
        let Ty::Entity(et) = self.enc.ty(t).clone() else {
            return None;
        };
        let fields = self.enc.world.entity_fields(&et);
        if fields
            .iter()
            .any(|f| f.required && self.assigned(&Atom::Has(t, f.name.clone())) == Some(false))
        {
            return Some(());
        }
        let mut attrs = serde_json::Map::new();
        for f in fields.iter() {
            let present = f.required || self.assigned(&Atom::Has(t, f.name.clone())) == Some(true);
            if present {
                let child = self.enc.child_term(t, &f.name);
                attrs.insert(f.name.clone(), self.value(child, &f.ty)?);
            }
        }
        let parents: Vec<Json> = self
            .theory
            .atoms_of(t, self.a)
            .filter_map(|(atom, v)| match atom {
                Atom::EntIn(_, e) if v && *e != uid => Some(uid_json(e)),
                _ => None,
            })
            .collect();
        self.emitted
            .insert(key, json!({"uid": uid_json(&uid), "attrs": attrs, "parents": parents}));
        Some(())
    }

    fn long(&self, t: usize) -> Option<i64> {
        match self.joint.get(&t) {
            Some(v) => self.theory.long_allows(t, self.a, *v).then_some(*v),
            None => self.theory.long_for(t, self.a),
        }
    }

    fn value(&mut self, t: Option<usize>, ty: &Ty) -> Option<Json> {
        Some(match ty {
            Ty::Long => json!(match t {
                Some(t) => self.long(t)?,
                None => 0,
            }),
            Ty::Str => json!(match t {
                Some(t) => self.theory.string_for(t, self.a)?,
                None => "x".to_owned(),
            }),
            Ty::Bool => json!(t.and_then(|t| self.assigned(&Atom::BoolVal(t))).unwrap_or(false)),
            Ty::Entity(et) => {
                let uid = match (t, self.enum_member(None, et)) {
                    (Some(t), _) => self.uid_of(t)?,
                    (None, Some(member)) => member?,
                    (None, None) => self.fresh_uid(et, "cx-filler"),
                };
                json!({ "__entity": uid_json(&uid) })
            }
            Ty::Set(_) => {
                let items: Vec<Json> = match t {
                    Some(t) => self
                        .theory
                        .atoms_of(t, self.a)
                        .filter_map(|(atom, v)| match atom {
                            Atom::Contains(_, lit) if v => Some(lit_json(lit)),
                            _ => None,
                        })
                        .collect(),
                    None => Vec::new(),
                };
                Json::Array(items)
            }
            Ty::Record(fields) => {
                let mut obj = serde_json::Map::new();
                for f in fields {
                    let present =
                        f.required || t.is_some_and(|t| self.assigned(&Atom::Has(t, f.name.clone())) == Some(true));
                    if present {
                        let child = t.and_then(|t| self.enc.child_term(t, &f.name));
                        obj.insert(f.name.clone(), self.value(child, &f.ty)?);
                    }
                }
                Json::Object(obj)
            }
            Ty::Ext(name) => match ty.scalar() {
                Some(kind) => {
                    let v = match t {
                        Some(t) => self.long(t)?,
                        None => 0,
                    };
                    kind.render(v)?
                }
                None => ext_default(name)?,
            },
            Ty::Unknown => return None,
        })
    }
}

/// The policies a candidate is replayed against, linked to one child principal.
pub(crate) struct Replayer<'p> {
    child_principal: EntityUid,
    /// Child permits and forbids.
    child: Vec<&'p GrantPolicy>,
    /// The parent's forbids (inherited by the child).
    parent_forbids: Vec<&'p GrantPolicy>,
    /// The parent's delegable view (its permits and forbids).
    parent_view: Vec<&'p GrantPolicy>,
}

/// The ancestors (and itself) of the candidate's resource, in the store extended with the
/// candidate's entities.
fn resource_ancestors(cand: &Candidate, store: &CoreEntities) -> HashSet<EntityUID> {
    let fresh: HashMap<String, Vec<EntityUID>> = cand
        .entities
        .iter()
        .filter_map(|e| {
            let uid = json_uid(e.get("uid")?)?;
            let parents = e.get("parents")?.as_array()?.iter().filter_map(json_uid).collect();
            Some((uid.to_string(), parents))
        })
        .collect();
    let mut out = HashSet::new();
    let mut stack = vec![cand.resource.clone()];
    while let Some(u) = stack.pop() {
        if !out.insert(u.clone()) {
            continue;
        }
        if let Some(parents) = fresh.get(&u.to_string()) {
            stack.extend(parents.iter().cloned());
        } else if let Dereference::Data(e) = store.entity(&u) {
            // A stored ancestor may be a dangling parent the candidate adds with parents of
            // its own, so every ancestor is walked, not just recorded.
            stack.extend(e.ancestors().cloned());
        }
    }
    out
}

fn json_uid(v: &Json) -> Option<EntityUID> {
    let ty = v.get("type")?.as_str()?;
    let id = v.get("id")?.as_str()?;
    let ty = cedar_policy::EntityTypeName::from_str(ty).ok()?;
    Some(EntityUid::from_type_name_and_id(ty, cedar_policy::EntityId::new(id)).into())
}

impl<'p> Replayer<'p> {
    pub(crate) fn new(
        child: Vec<&'p GrantPolicy>,
        parent_forbids: Vec<&'p GrantPolicy>,
        parent_view: Vec<&'p GrantPolicy>,
        child_principal: EntityUid,
    ) -> Replayer<'p> {
        Replayer {
            child_principal,
            child,
            parent_forbids,
            parent_view,
        }
    }

    /// The two policy sets for one candidate. Policies whose resource scope cannot match the
    /// candidate's resource are left out: their scope is false, so they cannot change a
    /// decision, and linking them is the bulk of a replay's cost on large grants.
    fn sets(&self, cand: &Candidate, store: &CoreEntities) -> Option<Sets> {
        let ancestors = resource_ancestors(cand, store);
        let may_match = |p: &&GrantPolicy| match p.core().resource_constraint().as_inner() {
            PrincipalOrResourceConstraint::Eq(EntityReference::EUID(u)) => u.as_ref() == &cand.resource,
            PrincipalOrResourceConstraint::In(EntityReference::EUID(u))
            | PrincipalOrResourceConstraint::IsIn(_, EntityReference::EUID(u)) => ancestors.contains(u.as_ref()),
            _ => true,
        };
        let mut names = HashMap::new();
        let mut literals: Vec<EntityUID> = Vec::new();
        let mut child_side = PolicySet::new();
        let mut parent_side = PolicySet::new();
        let groups: [(&[&GrantPolicy], &str, bool); 3] = [
            (&self.child, "child", true),
            (&self.parent_forbids, "parent-forbid", true),
            (&self.parent_view, "parent", false),
        ];
        for (policies, prefix, child_side_set) in groups {
            let set = if child_side_set {
                &mut child_side
            } else {
                &mut parent_side
            };
            for (i, p) in policies.iter().enumerate().filter(|(_, p)| may_match(p)) {
                link_one(set, p, &format!("{prefix}.{i}"), &self.child_principal).ok()?;
                literals.extend_from_slice(p.entity_literals());
                names.insert(
                    PolicyId::new(format!("{prefix}.{i}")),
                    format!("{prefix} {}", p.label()),
                );
            }
        }
        Some(Sets {
            child_side,
            parent_side,
            names,
            literals,
        })
    }

    /// The store a candidate is replayed against: the part of `store` Cedar can reach from this
    /// request and these policies, plus the candidate's entities (see [`reach`] for why that
    /// decides exactly as the whole store would). `None` sends the caller to the whole store.
    fn observable(
        &self,
        cand: &Candidate,
        request: &Request,
        sets: &Sets,
        schema: &Schema,
        store: &Entities,
        extra: &Json,
    ) -> Option<Entities> {
        let context = request.as_ref().context()?;
        let mut roots = vec![
            cand.principal.clone(),
            cand.action.clone(),
            cand.resource.clone(),
            EntityUID::from(self.child_principal.clone()),
        ];
        roots.extend(sets.literals.iter().cloned());
        let small = reach::restrict(store.as_ref(), &roots, context, &cand.entities)?;
        let small = Entities::from(small)
            .add_entities_from_json_value(extra.clone(), Some(schema))
            .ok()?;
        reach::closed(small.as_ref(), store.as_ref(), &roots, context).then_some(small)
    }

    /// Replays a candidate; `Some` only when the child side allows and the parent denies.
    pub(crate) fn replay(&self, cand: &Candidate, schema: &Schema, store: &Entities) -> Option<Counterexample> {
        let action = EntityUid::from(cand.action.clone());
        let context = Context::from_json_value(cand.context.clone(), Some((schema, &action))).ok()?;
        let request = Request::new(
            EntityUid::from(cand.principal.clone()),
            action,
            EntityUid::from(cand.resource.clone()),
            context,
            Some(schema),
        )
        .ok()?;
        let sets = self.sets(cand, store.as_ref())?;
        let extra = Json::Array(cand.entities.clone());
        let entities = match self.observable(cand, &request, &sets, schema, store, &extra) {
            Some(small) => small,
            None => store
                .clone()
                .add_entities_from_json_value(extra.clone(), Some(schema))
                .ok()?,
        };
        let authorizer = Authorizer::new();
        let child = authorizer.is_authorized(&request, &sets.child_side, &entities);
        if child.decision() != Decision::Allow {
            return None;
        }
        let parent = authorizer.is_authorized(&request, &sets.parent_side, &entities);
        if parent.decision() != Decision::Deny {
            return None;
        }
        Some(Counterexample {
            principal: cand.principal.to_string(),
            action: cand.action.to_string(),
            resource: cand.resource.to_string(),
            context: cand.context.clone(),
            entities: extra,
            child_principal: self.child_principal.to_string(),
            backend: super::verdict::BACKEND_DEPUTY,
            allowed_by: child.diagnostics().reason().map(|id| sets.name(id)).collect(),
            denied_by: parent.diagnostics().reason().map(|id| sets.name(id)).collect(),
            parent_errors: parent
                .diagnostics()
                .errors()
                .map(|e| {
                    let cedar_policy::AuthorizationError::PolicyEvaluationError(pe) = e;
                    match sets.names.get(pe.policy_id()) {
                        Some(n) => format!("{n}: {}", pe.inner()),
                        None => e.to_string(),
                    }
                })
                .collect(),
        })
    }
}

struct Sets {
    child_side: PolicySet,
    parent_side: PolicySet,
    names: HashMap<PolicyId, String>,
    /// The entity literals of the policies in either set.
    literals: Vec<EntityUID>,
}

impl Sets {
    fn name(&self, id: &PolicyId) -> String {
        self.names.get(id).cloned().unwrap_or_else(|| format!("`{id}`"))
    }
}

pub(crate) fn link_one(set: &mut PolicySet, p: &GrantPolicy, id: &str, child: &EntityUid) -> Result<(), GrantError> {
    let fail = |e: &dyn std::fmt::Display| GrantError::internal(format!("cannot link grant: {e}"));
    let pid = PolicyId::new(id);
    match &p.static_policy {
        Some(policy) => set.add(policy.new_id(pid)).map_err(|e| fail(&e)),
        None => {
            let tid = PolicyId::new(format!("{id}.template"));
            set.add_template(p.template.new_id(tid.clone())).map_err(|e| fail(&e))?;
            let vals = HashMap::from([(SlotId::principal(), child.clone())]);
            set.link(tid, pid, vals).map_err(|e| fail(&e))
        }
    }
}
