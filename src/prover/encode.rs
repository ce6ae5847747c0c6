//! Compiling grant policies into formulas for one request environment.
//!
//! An environment fixes the action and the principal and resource entity types, so scopes
//! and `action` tests become constants. What is left is expressed over *terms* (`principal`,
//! `resource`, `context` and attribute paths below them) and *atoms* about terms (`has`,
//! equality, hierarchy membership, Long bounds, string patterns, set membership). Anything
//! outside that fragment becomes an *opaque* atom pair that may take any value, including
//! "error"; that over-approximates the worlds considered, so it can cost a proof but never
//! make one unsound.

mod scalar;

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy_core::ast::{
    ActionConstraint, BinaryOp, EntityReference, EntityType, EntityUID, Expr, ExprKind, Literal,
    PatternElem, PrincipalOrResourceConstraint, UnaryOp, Var,
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
    term_ix: HashMap<(TermId, String), TermId>,
    pub(crate) atoms: Vec<Atom>,
    atom_ix: HashMap<Atom, AtomId>,
    /// Facts every world satisfies (opaque exclusivity, existence of entities with attributes).
    pub(crate) axioms: Vec<Formula>,
    pub(crate) opaque: Vec<OpaqueExpr>,
    opaque_ix: HashMap<String, usize>,
    current: String,
}

pub(crate) const PRINCIPAL: TermId = 0;
pub(crate) const RESOURCE: TermId = 1;
pub(crate) const CONTEXT: TermId = 2;

enum Operand {
    Lit(Lit),
    /// A `decimal`, `datetime` or `duration` literal, as an integer.
    Scalar(Scalar, i64),
    LitSet(Vec<Lit>),
    Term(TermId, Formula),
    Action,
    Other,
}

type Tf = (Formula, Formula);

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
            current: String::new(),
        }
    }

    pub(crate) fn ty(&self, t: TermId) -> &Ty {
        self.terms.get(t).map(|t| &t.ty).unwrap_or(&Ty::Unknown)
    }

    pub(crate) fn atom_id(&self, atom: &Atom) -> Option<AtomId> {
        self.atom_ix.get(atom).copied()
    }

    pub(crate) fn child_term(&self, t: TermId, attr: &str) -> Option<TermId> {
        self.term_ix.get(&(t, attr.to_owned())).copied()
    }

    fn intern(&mut self, atom: Atom) -> AtomId {
        if let Some(id) = self.atom_ix.get(&atom) {
            return *id;
        }
        let id = self.atoms.len();
        self.atoms.push(atom.clone());
        self.atom_ix.insert(atom, id);
        id
    }

    fn lit(&mut self, atom: Atom) -> Formula {
        Formula::atom(self.intern(atom))
    }

    /// "The policy is satisfied" (its scope holds and its condition evaluates to `true`).
    pub(crate) fn policy(&mut self, p: &GrantPolicy, role: &str) -> Formula {
        self.current = format!("{role} policy {}", p.label());
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
            PrincipalOrResourceConstraint::Is(et) | PrincipalOrResourceConstraint::IsIn(et, _) => {
                et.as_ref() == ty
            }
            PrincipalOrResourceConstraint::Eq(EntityReference::EUID(u)) => u.entity_type() == ty,
            _ => true,
        };
        action_ok
            && type_ok(
                t.principal_constraint().as_inner(),
                &self.env.principal_type,
            )
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
            ActionConstraint::In(list) => list
                .iter()
                .any(|a| self.world.action_in(&self.env.action, a)),
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
        let a = self.lit(Atom::EntIn(t, u.clone()));
        // A missing entity is `in` nothing but itself.
        let exists = self.lit(Atom::Exists(t));
        self.axioms.push(a.not().or(exists).or(eq.clone()));
        // Equality implies membership.
        self.axioms.push(eq.not().or(a.clone()));
        a
    }

    fn has_attr(&mut self, t: TermId, attr: &str) -> Formula {
        match self.ty(t).clone() {
            Ty::Record(fields) => match fields.iter().find(|f| f.name == attr) {
                Some(f) if f.required => Formula::True,
                Some(_) => self.lit(Atom::Has(t, attr.to_owned())),
                None => Formula::False,
            },
            Ty::Entity(et) => {
                let fields = self.world.entity_fields(&et);
                let Some(field) = fields.iter().find(|f| f.name == attr) else {
                    return Formula::False;
                };
                let has = self.lit(Atom::Has(t, attr.to_owned()));
                let exists = self.lit(Atom::Exists(t));
                self.axioms.push(has.not().or(exists.clone()));
                if field.required {
                    self.axioms.push(exists.not().or(has.clone()));
                }
                has
            }
            _ => self.lit(Atom::Has(t, attr.to_owned())),
        }
    }

    fn field_ty(&self, t: TermId, attr: &str) -> Option<Ty> {
        let fields = match self.ty(t) {
            Ty::Record(fields) => fields.clone(),
            Ty::Entity(et) => self.world.entity_fields(et),
            _ => return None,
        };
        fields.into_iter().find(|f| f.name == attr).map(|f| f.ty)
    }

    fn child(&mut self, t: TermId, attr: &str) -> Option<TermId> {
        if let Some(id) = self.term_ix.get(&(t, attr.to_owned())) {
            return Some(*id);
        }
        let ty = self.field_ty(t, attr)?;
        let root = self.terms.get(t)?.root;
        let id = self.terms.len();
        self.terms.push(Term {
            root,
            parent: Some((t, attr.to_owned())),
            ty,
        });
        self.term_ix.insert((t, attr.to_owned()), id);
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

    fn operand(&mut self, e: &Expr) -> Operand {
        match e.expr_kind() {
            ExprKind::Lit(l) => literal(l).map_or(Operand::Other, Operand::Lit),
            ExprKind::UnaryApp {
                op: UnaryOp::Neg,
                arg,
            } => match arg.expr_kind() {
                ExprKind::Lit(Literal::Long(k)) => k
                    .checked_neg()
                    .map_or(Operand::Other, |v| Operand::Lit(Lit::Long(v))),
                _ => Operand::Other,
            },
            ExprKind::Set(elems) => {
                let lits: Option<Vec<Lit>> = elems
                    .iter()
                    .map(|x| match x.expr_kind() {
                        ExprKind::Lit(l) => literal(l),
                        _ => None,
                    })
                    .collect();
                lits.map_or(Operand::Other, Operand::LitSet)
            }
            ExprKind::Var(Var::Action) => Operand::Action,
            ExprKind::ExtensionFunctionApp { fn_name, args } => {
                let value = match (Scalar::from_name(&fn_name.to_string()), args.as_slice()) {
                    (Some(kind), [arg]) => match arg.expr_kind() {
                        ExprKind::Lit(Literal::String(s)) => kind.parse(s).map(|v| (kind, v)),
                        _ => None,
                    },
                    _ => None,
                };
                value.map_or(Operand::Other, |(kind, v)| Operand::Scalar(kind, v))
            }
            _ => match self.path(e) {
                Some((t, d)) => Operand::Term(t, d),
                None => Operand::Other,
            },
        }
    }

    fn opaque(&mut self, e: &Expr) -> Tf {
        let text = e.to_string();
        let idx = match self.opaque_ix.get(&text) {
            Some(i) => *i,
            None => {
                let i = self.opaque.len();
                self.opaque.push(OpaqueExpr {
                    text: text.clone(),
                    policy: self.current.clone(),
                });
                self.opaque_ix.insert(text, i);
                let t = self.lit(Atom::Opaque(i, true));
                let f = self.lit(Atom::Opaque(i, false));
                self.axioms.push(t.not().or(f.not()));
                i
            }
        };
        (
            self.lit(Atom::Opaque(idx, true)),
            self.lit(Atom::Opaque(idx, false)),
        )
    }

    /// Compiles a boolean expression into (evaluates to true, evaluates to false).
    pub(crate) fn bool_expr(&mut self, e: &Expr) -> Tf {
        match e.expr_kind() {
            ExprKind::Lit(Literal::Bool(b)) => (Formula::constant(*b), Formula::constant(!b)),
            ExprKind::And { left, right } => {
                let (lt, lf) = self.bool_expr(left);
                let (rt, rf) = self.bool_expr(right);
                (lt.clone().and(rt), lf.or(lt.and(rf)))
            }
            ExprKind::Or { left, right } => {
                let (lt, lf) = self.bool_expr(left);
                let (rt, rf) = self.bool_expr(right);
                (lt.or(lf.clone().and(rt)), lf.and(rf))
            }
            ExprKind::UnaryApp {
                op: UnaryOp::Not,
                arg,
            } => {
                let (t, f) = self.bool_expr(arg);
                (f, t)
            }
            ExprKind::If {
                test_expr,
                then_expr,
                else_expr,
            } => {
                let (ct, cf) = self.bool_expr(test_expr);
                let (at, af) = self.bool_expr(then_expr);
                let (bt, bf) = self.bool_expr(else_expr);
                (
                    ct.clone().and(at).or(cf.clone().and(bt)),
                    ct.and(af).or(cf.and(bf)),
                )
            }
            ExprKind::BinaryApp { op, arg1, arg2 } => match op {
                BinaryOp::Eq => self.equality(e, arg1, arg2),
                BinaryOp::Less => self.compare(e, Cmp::Lt, arg1, arg2),
                BinaryOp::LessEq => self.compare(e, Cmp::Le, arg1, arg2),
                BinaryOp::In => self.membership(e, arg1, arg2),
                BinaryOp::Contains | BinaryOp::ContainsAll | BinaryOp::ContainsAny => {
                    self.set_op(e, *op, arg1, arg2)
                }
                _ => self.opaque(e),
            },
            ExprKind::ExtensionFunctionApp { fn_name, args } => {
                match (fn_name.to_string().as_str(), args.as_slice()) {
                    ("lessThan", [a, b]) => self.compare(e, Cmp::Lt, a, b),
                    ("lessThanOrEqual", [a, b]) => self.compare(e, Cmp::Le, a, b),
                    ("greaterThan", [a, b]) => self.compare(e, Cmp::Lt, b, a),
                    ("greaterThanOrEqual", [a, b]) => self.compare(e, Cmp::Le, b, a),
                    _ => self.opaque(e),
                }
            }
            ExprKind::HasAttr { expr, attr } => self.has(e, expr, &[attr.to_string()]),
            ExprKind::ExtHasAttr { expr, attrs } => {
                let attrs: Vec<String> = attrs.iter().map(|a| a.to_string()).collect();
                self.has(e, expr, &attrs)
            }
            ExprKind::Like { expr, pattern } => match self.operand(expr) {
                Operand::Term(t, d) if *self.ty(t) == Ty::Str => {
                    let pat: Vec<Pat> = pattern
                        .iter()
                        .map(|p| match p {
                            PatternElem::Char(c) => Pat::Char(*c),
                            PatternElem::Wildcard => Pat::Star,
                        })
                        .collect();
                    let x = if pat.contains(&Pat::Star) {
                        self.lit(Atom::Like(t, pat))
                    } else {
                        let s: String = pat
                            .iter()
                            .filter_map(|p| match p {
                                Pat::Char(c) => Some(*c),
                                Pat::Star => None,
                            })
                            .collect();
                        self.lit(Atom::StrEq(t, s))
                    };
                    guarded(d, x)
                }
                Operand::Lit(Lit::Str(s)) => {
                    let b = pattern.wildcard_match(&s);
                    (Formula::constant(b), Formula::constant(!b))
                }
                _ => self.opaque(e),
            },
            ExprKind::Is { expr, entity_type } => match self.operand(expr) {
                Operand::Term(t, d) => match self.ty(t) {
                    Ty::Entity(ty) => {
                        let x = Formula::constant(ty == entity_type);
                        guarded(d, x)
                    }
                    _ => self.opaque(e),
                },
                Operand::Lit(Lit::Entity(u)) => {
                    let b = u.entity_type() == entity_type;
                    (Formula::constant(b), Formula::constant(!b))
                }
                _ => self.opaque(e),
            },
            ExprKind::GetAttr { .. } => match self.path(e) {
                Some((t, d)) if *self.ty(t) == Ty::Bool => {
                    let x = self.lit(Atom::BoolVal(t));
                    guarded(d, x)
                }
                _ => self.opaque(e),
            },
            _ => self.opaque(e),
        }
    }

    fn has(&mut self, e: &Expr, expr: &Expr, attrs: &[String]) -> Tf {
        let Some((t, d)) = self.path(expr) else {
            return self.opaque(e);
        };
        let mut cur = t;
        let mut parts = Vec::new();
        for (i, attr) in attrs.iter().enumerate() {
            parts.push(self.has_attr(cur, attr));
            if i + 1 < attrs.len() {
                match self.child(cur, attr) {
                    Some(c) => cur = c,
                    None => return self.opaque(e),
                }
            }
        }
        guarded(d, Formula::all(parts))
    }

    /// The atom formula for "term == literal", assuming the term evaluates without error.
    fn eq_lit(&mut self, t: TermId, v: &Lit) -> Option<Formula> {
        Some(match (self.ty(t).clone(), v) {
            (Ty::Long, Lit::Long(k)) => self.lit(Atom::Long(t, Cmp::Eq, *k)),
            (Ty::Str, Lit::Str(s)) => self.lit(Atom::StrEq(t, s.clone())),
            (Ty::Bool, Lit::Bool(b)) => Formula::Lit(self.intern(Atom::BoolVal(t)), *b),
            (Ty::Entity(_), Lit::Entity(u)) => self.ent_eq(t, u),
            (Ty::Long | Ty::Str | Ty::Bool | Ty::Entity(_), _) => Formula::False,
            _ => return None,
        })
    }

    fn equality(&mut self, e: &Expr, a: &Expr, b: &Expr) -> Tf {
        match (self.operand(a), self.operand(b)) {
            (Operand::Lit(x), Operand::Lit(y)) => {
                (Formula::constant(x == y), Formula::constant(x != y))
            }
            (Operand::Term(t, d), Operand::Lit(v)) | (Operand::Lit(v), Operand::Term(t, d)) => {
                match self.eq_lit(t, &v) {
                    Some(x) => guarded(d, x),
                    None => self.opaque(e),
                }
            }
            (Operand::Scalar(x, v), Operand::Scalar(y, w)) if x == y => {
                (Formula::constant(v == w), Formula::constant(v != w))
            }
            (Operand::Term(t, d), Operand::Scalar(k, v))
            | (Operand::Scalar(k, v), Operand::Term(t, d))
                if self.ty(t).scalar() == Some(k) =>
            {
                let x = self.lit(Atom::Long(t, Cmp::Eq, v));
                guarded(d, x)
            }
            (Operand::Action, Operand::Lit(Lit::Entity(u)))
            | (Operand::Lit(Lit::Entity(u)), Operand::Action) => {
                let b = u == self.env.action;
                (Formula::constant(b), Formula::constant(!b))
            }
            _ => self.opaque(e),
        }
    }

    fn compare(&mut self, e: &Expr, cmp: Cmp, a: &Expr, b: &Expr) -> Tf {
        let (a, b) = (self.operand(a), self.operand(b));
        // Scalars (decimal, datetime, duration) are ordered like Longs.
        let (a, b) = match (a, b) {
            (Operand::Scalar(x, v), Operand::Scalar(y, w)) if x == y => {
                (Operand::Lit(Lit::Long(v)), Operand::Lit(Lit::Long(w)))
            }
            (Operand::Term(t, d), Operand::Scalar(k, v)) if self.ty(t).scalar() == Some(k) => {
                (Operand::Term(t, d), Operand::Lit(Lit::Long(v)))
            }
            (Operand::Scalar(k, v), Operand::Term(t, d)) if self.ty(t).scalar() == Some(k) => {
                (Operand::Lit(Lit::Long(v)), Operand::Term(t, d))
            }
            other => other,
        };
        match (a, b) {
            (Operand::Lit(Lit::Long(x)), Operand::Lit(Lit::Long(y))) => {
                let r = if cmp == Cmp::Lt { x < y } else { x <= y };
                (Formula::constant(r), Formula::constant(!r))
            }
            (Operand::Term(t, d), Operand::Lit(Lit::Long(k))) if self.ty(t).is_ordered() => {
                let x = self.lit(Atom::Long(t, cmp, k));
                guarded(d, x)
            }
            (Operand::Lit(Lit::Long(k)), Operand::Term(t, d)) if self.ty(t).is_ordered() => {
                // k < t  <=>  !(t <= k);   k <= t  <=>  !(t < k)
                let flipped = if cmp == Cmp::Lt { Cmp::Le } else { Cmp::Lt };
                let x = self.lit(Atom::Long(t, flipped, k)).not();
                guarded(d, x)
            }
            _ => self.opaque(e),
        }
    }

    fn membership(&mut self, e: &Expr, a: &Expr, b: &Expr) -> Tf {
        let targets = |op: Operand| -> Option<Vec<EntityUID>> {
            match op {
                Operand::Lit(Lit::Entity(u)) => Some(vec![u]),
                Operand::LitSet(items) => items
                    .into_iter()
                    .map(|l| match l {
                        Lit::Entity(u) => Some(u),
                        _ => None,
                    })
                    .collect(),
                _ => None,
            }
        };
        let lhs = self.operand(a);
        let Some(rhs) = targets(self.operand(b)) else {
            return self.opaque(e);
        };
        match lhs {
            Operand::Term(t, d) if matches!(self.ty(t), Ty::Entity(_)) => {
                let parts: Vec<Formula> = rhs.iter().map(|u| self.ent_in(t, u)).collect();
                guarded(d, Formula::any(parts))
            }
            Operand::Action => {
                let b = rhs
                    .iter()
                    .any(|u| self.world.action_in(&self.env.action, u));
                (Formula::constant(b), Formula::constant(!b))
            }
            Operand::Lit(Lit::Entity(x)) => {
                if rhs.contains(&x) {
                    return (Formula::True, Formula::False);
                }
                if self.world.stored(&x).is_none() {
                    return self.opaque(e);
                }
                let b = rhs.iter().any(|u| self.world.store_in(&x, u));
                (Formula::constant(b), Formula::constant(!b))
            }
            _ => self.opaque(e),
        }
    }

    fn set_op(&mut self, e: &Expr, op: BinaryOp, a: &Expr, b: &Expr) -> Tf {
        match (op, self.operand(a), self.operand(b)) {
            (BinaryOp::Contains, Operand::Term(t, d), Operand::Lit(v))
                if matches!(self.ty(t), Ty::Set(_)) =>
            {
                let x = self.lit(Atom::Contains(t, v));
                guarded(d, x)
            }
            (BinaryOp::Contains, Operand::LitSet(vs), Operand::Term(t, d)) => {
                let mut parts = Vec::new();
                for v in &vs {
                    match self.eq_lit(t, v) {
                        Some(x) => parts.push(x),
                        None => return self.opaque(e),
                    }
                }
                guarded(d, Formula::any(parts))
            }
            (BinaryOp::Contains, Operand::LitSet(vs), Operand::Lit(v)) => {
                let r = vs.contains(&v);
                (Formula::constant(r), Formula::constant(!r))
            }
            (
                BinaryOp::ContainsAll | BinaryOp::ContainsAny,
                Operand::Term(t, d),
                Operand::LitSet(vs),
            ) if matches!(self.ty(t), Ty::Set(_)) => {
                let parts: Vec<Formula> = vs
                    .into_iter()
                    .map(|v| self.lit(Atom::Contains(t, v)))
                    .collect();
                let x = if op == BinaryOp::ContainsAll {
                    Formula::all(parts)
                } else {
                    Formula::any(parts)
                };
                guarded(d, x)
            }
            (BinaryOp::ContainsAll, Operand::LitSet(xs), Operand::LitSet(ys)) => {
                let r = ys.iter().all(|y| xs.contains(y));
                (Formula::constant(r), Formula::constant(!r))
            }
            (BinaryOp::ContainsAny, Operand::LitSet(xs), Operand::LitSet(ys)) => {
                let r = ys.iter().any(|y| xs.contains(y));
                (Formula::constant(r), Formula::constant(!r))
            }
            _ => self.opaque(e),
        }
    }
}

/// (defined and x, defined and not x): the value of a test on a term that may fail to
/// evaluate.
fn guarded(defined: Formula, x: Formula) -> Tf {
    let nx = x.not();
    (defined.clone().and(x), defined.and(nx))
}

fn literal(l: &Literal) -> Option<Lit> {
    Some(match l {
        Literal::Bool(b) => Lit::Bool(*b),
        Literal::Long(k) => Lit::Long(*k),
        Literal::String(s) => Lit::Str(s.to_string()),
        Literal::EntityUID(u) => Lit::Entity(Arc::clone(u).as_ref().clone()),
    })
}
