//! Compiling grant policies into formulas for one request environment.
//!
//! An environment fixes the action and the principal and resource entity types, so scopes
//! and `action` tests become constants. What is left is expressed over *terms* (`principal`,
//! `resource`, `context` and attribute paths below them) and *atoms* about terms (`has`,
//! equality, hierarchy membership, Long bounds, string patterns, set membership). Anything
//! outside that fragment becomes an *opaque* atom pair that may take any value, including
//! "error"; that over-approximates the worlds considered, so it can cost a proof but never
//! make one unsound.

mod expr;
mod scalar;

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use cedar_policy_core::ast::{
    ActionConstraint, EntityReference, EntityType, EntityUID, Expr, ExprKind, PrincipalOrResourceConstraint, Var,
};
use cedar_policy_core::validator::types::{EntityKind, Type};

use super::formula::{AtomId, Formula};
use super::grant::GrantPolicy;
use super::world::World;

pub(crate) use scalar::Scalar;

pub(crate) type TermId = usize;

/// Where a term starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Root {
    Principal,
    Resource,
    Context,
}

/// The schema type of a term, as far as the prover cares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ty {
    Entity(EntityType),
    Long,
    Str,
    Bool,
    Set(Box<Ty>),
    Record(Vec<Field>),
    /// An extension type (`decimal`, `datetime`, `ipaddr`, `duration`), by name.
    Ext(String),
    Unknown,
}

impl Ty {
    /// Extension types ordered as integers (`decimal`, `datetime`, `duration`).
    pub(crate) fn scalar(&self) -> Option<Scalar> {
        match self {
            Ty::Ext(name) => Scalar::from_name(name),
            _ => None,
        }
    }

    /// Types whose atoms are integer bounds.
    pub(crate) fn is_ordered(&self) -> bool {
        *self == Ty::Long || self.scalar().is_some()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Field {
    pub(crate) name: String,
    pub(crate) required: bool,
    pub(crate) ty: Ty,
}

impl Ty {
    pub(crate) fn from_schema(ty: &Type) -> Ty {
        match ty {
            Type::Bool(_) => Ty::Bool,
            Type::Long => Ty::Long,
            Type::String => Ty::Str,
            Type::Entity(EntityKind::Entity(lub)) => match lub.get_single_entity() {
                Some(t) => Ty::Entity(t.clone()),
                None => Ty::Unknown,
            },
            Type::Set {
                element_type: Some(elem),
            } => Ty::Set(Box::new(Ty::from_schema(elem))),
            Type::Record { attrs, .. } => Ty::Record(
                attrs
                    .iter()
                    .map(|(name, at)| Field {
                        name: name.to_string(),
                        required: at.is_required,
                        ty: Ty::from_schema(&at.attr_type),
                    })
                    .collect(),
            ),
            Type::ExtensionType { name } => Ty::Ext(name.to_string()),
            _ => Ty::Unknown,
        }
    }
}

/// A path: a root variable followed by attribute accesses.
#[derive(Debug, Clone)]
pub(crate) struct Term {
    pub(crate) root: Root,
    pub(crate) parent: Option<(TermId, String)>,
    pub(crate) ty: Ty,
}

/// A literal value as it appears in a policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Lit {
    Bool(bool),
    Long(i64),
    Str(String),
    Entity(EntityUID),
}

/// One element of a `like` pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Pat {
    Char(char),
    Star,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Cmp {
    Lt,
    Le,
    Eq,
}

/// A theory atom.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Atom {
    /// The term (entity or record) has the attribute; for an entity, it also exists.
    Has(TermId, String),
    /// The entity term exists in the entity store.
    Exists(TermId),
    EntEq(TermId, EntityUID),
    /// `term in uid` (reflexive, transitive).
    EntIn(TermId, EntityUID),
    Long(TermId, Cmp, i64),
    /// `left cmp right` between two ordered terms of the same type.
    LongRel(TermId, Cmp, TermId),
    StrEq(TermId, String),
    Like(TermId, Vec<Pat>),
    BoolVal(TermId),
    Contains(TermId, Lit),
    /// An expression outside the fragment: `(index, true)` holds when it evaluates to
    /// `true`, `(index, false)` when it evaluates to `false`; neither means an error.
    Opaque(usize, bool),
}

/// An expression the prover does not interpret, with where it came from.
#[derive(Debug, Clone)]
pub(crate) struct OpaqueExpr {
    pub(crate) text: String,
    pub(crate) policy: String,
}

/// The concrete request environment: one action, one principal type, one resource type.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub(crate) principal_type: EntityType,
    pub(crate) action: EntityUID,
    pub(crate) resource_type: EntityType,
    /// The entity `?principal` is linked to.
    pub(crate) child: EntityUID,
    pub(crate) context: Ty,
}

/// Terms, atoms and side conditions built up while compiling policies for one environment.
pub(crate) struct Encoding<'w> {
    pub(crate) world: &'w World<'w>,
    pub(crate) env: Env,
    pub(crate) terms: Vec<Term>,
    /// Attribute name to (parent term, child term).
    term_ix: HashMap<String, Vec<(TermId, TermId)>>,
    pub(crate) atoms: Vec<Atom>,
    atom_ix: HashMap<Atom, AtomId>,
    /// Facts every world satisfies (opaque exclusivity, existence of entities with attributes).
    pub(crate) axioms: Vec<Formula>,
    pub(crate) opaque: Vec<OpaqueExpr>,
    opaque_ix: HashMap<String, usize>,
    /// The policy being encoded, with its role (named by opaque expressions).
    current: Option<(&'static str, &'w GrantPolicy)>,
}

pub(crate) const PRINCIPAL: TermId = 0;
pub(crate) const RESOURCE: TermId = 1;
pub(crate) const CONTEXT: TermId = 2;

impl<'w> Encoding<'w> {
    pub(crate) fn new(world: &'w World<'w>, env: Env) -> Self {
        let terms = vec![
            Term {
                root: Root::Principal,
                parent: None,
                ty: Ty::Entity(env.principal_type.clone()),
            },
            Term {
                root: Root::Resource,
                parent: None,
                ty: Ty::Entity(env.resource_type.clone()),
            },
            Term {
                root: Root::Context,
                parent: None,
                ty: env.context.clone(),
            },
        ];
        Encoding {
            world,
            env,
            terms,
            term_ix: HashMap::new(),
            atoms: Vec::new(),
            atom_ix: HashMap::new(),
            axioms: Vec::new(),
            opaque: Vec::new(),
            opaque_ix: HashMap::new(),
            current: None,
        }
    }

    pub(crate) fn ty(&self, t: TermId) -> &Ty {
        self.terms.get(t).map(|t| &t.ty).unwrap_or(&Ty::Unknown)
    }

    pub(crate) fn atom_id(&self, atom: &Atom) -> Option<AtomId> {
        self.atom_ix.get(atom).copied()
    }

    pub(crate) fn child_term(&self, t: TermId, attr: &str) -> Option<TermId> {
        self.term_ix
            .get(attr)
            .and_then(|kids| kids.iter().find(|(p, _)| *p == t))
            .map(|(_, c)| *c)
    }

    fn intern(&mut self, atom: Atom) -> AtomId {
        self.intern_fresh(atom).0
    }

    /// The atom's id, and whether it was made by this call.
    fn intern_fresh(&mut self, atom: Atom) -> (AtomId, bool) {
        match self.atom_ix.entry(atom) {
            Entry::Occupied(e) => (*e.get(), false),
            Entry::Vacant(e) => {
                let id = self.atoms.len();
                self.atoms.push(e.key().clone());
                e.insert(id);
                (id, true)
            }
        }
    }

    /// The policy being encoded, as opaque expressions name it.
    pub(crate) fn current_policy(&self) -> String {
        match self.current {
            Some((role, p)) => format!("{role} policy {}", p.label()),
            None => String::new(),
        }
    }

    fn lit(&mut self, atom: Atom) -> Formula {
        Formula::atom(self.intern(atom))
    }

    /// "The policy is satisfied" (its scope holds and its condition evaluates to `true`).
    pub(crate) fn policy(&mut self, p: &'w GrantPolicy, role: &'static str) -> Formula {
        self.current = Some((role, p));
        let t = p.core();
        let principal = self.scope(PRINCIPAL, t.principal_constraint().as_inner());
        let action = self.action_scope(t.action_constraint());
        let resource = self.scope(RESOURCE, t.resource_constraint().as_inner());
        let scope = Formula::all([principal, action, resource]);
        if scope == Formula::False {
            return scope;
        }
        match t.non_scope_constraints() {
            None => scope,
            Some(cond) => {
                let (holds, _) = self.bool_expr(cond);
                scope.and(holds)
            }
        }
    }

    /// Whether the policy's action scope and entity types can match this environment at all.
    pub(crate) fn scope_applies(&self, p: &GrantPolicy) -> bool {
        let t = p.core();
        let action_ok = self.action_matches(t.action_constraint());
        let type_ok = |c: &PrincipalOrResourceConstraint, ty: &EntityType| match c {
            PrincipalOrResourceConstraint::Is(et) | PrincipalOrResourceConstraint::IsIn(et, _) => et.as_ref() == ty,
            PrincipalOrResourceConstraint::Eq(EntityReference::EUID(u)) => u.entity_type() == ty,
            _ => true,
        };
        action_ok
            && type_ok(t.principal_constraint().as_inner(), &self.env.principal_type)
            && type_ok(t.resource_constraint().as_inner(), &self.env.resource_type)
    }

    fn slot_uid(&self, r: &EntityReference) -> EntityUID {
        match r {
            EntityReference::EUID(u) => u.as_ref().clone(),
            EntityReference::Slot(_) => self.env.child.clone(),
        }
    }

    fn scope(&mut self, t: TermId, c: &PrincipalOrResourceConstraint) -> Formula {
        let ty = match self.ty(t) {
            Ty::Entity(e) => e.clone(),
            _ => return Formula::False,
        };
        match c {
            PrincipalOrResourceConstraint::Any => Formula::True,
            PrincipalOrResourceConstraint::Eq(r) => {
                let u = self.slot_uid(r);
                self.ent_eq(t, &u)
            }
            PrincipalOrResourceConstraint::In(r) => {
                let u = self.slot_uid(r);
                self.ent_in(t, &u)
            }
            PrincipalOrResourceConstraint::Is(et) => Formula::constant(et.as_ref() == &ty),
            PrincipalOrResourceConstraint::IsIn(et, r) => {
                if et.as_ref() != &ty {
                    return Formula::False;
                }
                let u = self.slot_uid(r);
                self.ent_in(t, &u)
            }
        }
    }

    fn action_matches(&self, c: &ActionConstraint) -> bool {
        match c {
            ActionConstraint::Any => true,
            ActionConstraint::Eq(a) => a.as_ref() == &self.env.action,
            ActionConstraint::In(list) => list.iter().any(|a| self.world.action_in(&self.env.action, a)),
        }
    }

    fn action_scope(&mut self, c: &ActionConstraint) -> Formula {
        Formula::constant(self.action_matches(c))
    }

    pub(crate) fn ent_eq(&mut self, t: TermId, u: &EntityUID) -> Formula {
        match self.ty(t) {
            Ty::Entity(ty) if ty == u.entity_type() => self.lit(Atom::EntEq(t, u.clone())),
            Ty::Entity(_) => Formula::False,
            _ => self.lit(Atom::EntEq(t, u.clone())),
        }
    }

    pub(crate) fn ent_in(&mut self, t: TermId, u: &EntityUID) -> Formula {
        let ty = match self.ty(t) {
            Ty::Entity(ty) => ty.clone(),
            _ => return self.lit(Atom::EntIn(t, u.clone())),
        };
        let target = u.entity_type();
        let reachable = self.world.type_reachable(&ty, target);
        if &ty == target && !reachable {
            return self.ent_eq(t, u);
        }
        if &ty != target && !reachable {
            return Formula::False;
        }
        let eq = self.ent_eq(t, u);
        let (id, fresh) = self.intern_fresh(Atom::EntIn(t, u.clone()));
        let a = Formula::atom(id);
        // INVARIANT: an entity term's `EntIn` atoms are only made here, so an atom made
        // before already has its axioms (repeating them would only slow the search).
        if fresh {
            // A missing entity is `in` nothing but itself.
            let exists = self.lit(Atom::Exists(t));
            self.axioms.push(a.not().or(exists).or(eq.clone()));
            // Equality implies membership.
            self.axioms.push(eq.not().or(a.clone()));
        }
        a
    }

    fn has_attr(&mut self, t: TermId, attr: &str) -> Formula {
        // Whether the attribute is declared, and if so whether it is required.
        let (declared, entity) = match self.ty(t) {
            Ty::Record(fields) => (fields.iter().find(|f| f.name == attr).map(|f| f.required), false),
            Ty::Entity(et) => (
                self.world
                    .entity_fields(et)
                    .iter()
                    .find(|f| f.name == attr)
                    .map(|f| f.required),
                true,
            ),
            _ => return self.lit(Atom::Has(t, attr.to_owned())),
        };
        match (declared, entity) {
            (None, _) => Formula::False,
            (Some(true), false) => Formula::True,
            (Some(false), false) => self.lit(Atom::Has(t, attr.to_owned())),
            (Some(required), true) => {
                let (id, fresh) = self.intern_fresh(Atom::Has(t, attr.to_owned()));
                let has = Formula::atom(id);
                // INVARIANT: an entity term's `Has` atoms are only made here (as for `EntIn`).
                if fresh {
                    let exists = self.lit(Atom::Exists(t));
                    self.axioms.push(has.not().or(exists.clone()));
                    if required {
                        self.axioms.push(exists.not().or(has.clone()));
                    }
                }
                has
            }
        }
    }

    fn field_ty(&self, t: TermId, attr: &str) -> Option<Ty> {
        match self.ty(t) {
            Ty::Record(fields) => fields.iter().find(|f| f.name == attr).map(|f| f.ty.clone()),
            Ty::Entity(et) => self
                .world
                .entity_fields(et)
                .iter()
                .find(|f| f.name == attr)
                .map(|f| f.ty.clone()),
            _ => None,
        }
    }

    fn child(&mut self, t: TermId, attr: &str) -> Option<TermId> {
        if let Some(id) = self.child_term(t, attr) {
            return Some(id);
        }
        let ty = self.field_ty(t, attr)?;
        let root = self.terms.get(t)?.root;
        let id = self.terms.len();
        self.terms.push(Term {
            root,
            parent: Some((t, attr.to_owned())),
            ty,
        });
        self.term_ix.entry(attr.to_owned()).or_default().push((t, id));
        Some(id)
    }

    /// The term an expression denotes and the condition under which evaluating it does
    /// not error.
    fn path(&mut self, e: &Expr) -> Option<(TermId, Formula)> {
        match e.expr_kind() {
            ExprKind::Var(Var::Principal) => Some((PRINCIPAL, Formula::True)),
            ExprKind::Var(Var::Resource) => Some((RESOURCE, Formula::True)),
            ExprKind::Var(Var::Context) => Some((CONTEXT, Formula::True)),
            ExprKind::GetAttr { expr, attr } => {
                let (parent, defined) = self.path(expr)?;
                let child = self.child(parent, attr)?;
                let has = self.has_attr(parent, attr);
                Some((child, defined.and(has)))
            }
            _ => None,
        }
    }
}
