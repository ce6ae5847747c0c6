//! deputy's own evaluator for the common fragment of policy conditions, used by the index.
//!
//! Cedar's interpreter costs about a microsecond per policy (every sub-expression clones source
//! locations and values); a decision at 100k policies visits a dozen or more. Conditions made
//! only of scope constraints, `&&`, `||`, `!`, `if-then-else`, `==`, `<`, `<=` (and so `!=`,
//! `>`, `>=`), `in` against entity literals, `is`, `has`, attribute reads and literals are
//! compiled here once per load into a [`Cond`] and evaluated straight over the request and the
//! entity store.
//!
//! INVARIANT (exactness): [`Cond::eval`] answers `Some(b)` only when Cedar's evaluator, on the
//! same request and store, answers `Ok(b)` for the policy's condition. Every step mirrors Cedar's
//! (the same operands evaluated in the same order, the same short-circuits, the same equality),
//! and wherever Cedar could err, or does something this module does not model (unknowns,
//! extension values under `<`), it answers `None` instead: the caller then runs Cedar's own
//! evaluator on the policy, which produces the decision and the exact error. So an erring policy
//! costs one Cedar evaluation more, and no answer is ever guessed.
//!
//! Scope constraints the index already guarantees for the slice a policy sits in (the action
//! scope, and the `==`, `in` or `is` the slice is keyed by) are left out: on a concrete request
//! a scope constraint never errs, so a conjunct known to be true changes nothing.

use std::cell::Cell;
use std::collections::BTreeMap;

use cedar_policy_core::ast::{
    BinaryOp, Entity, EntityReference, EntityType, EntityUID, Expr, ExprKind, Literal, PartialValue, Policy,
    PrincipalOrResourceConstraint, Request, SlotEnv, UnaryOp, Value, ValueKind, Var,
};
use cedar_policy_core::entities::{Dereference, Entities};
use smol_str::SmolStr;

/// Deeper conditions are left to Cedar (its evaluator guards its own stack).
const MAX_DEPTH: usize = 48;

/// The request's entity variables, as indices into `Ctx`.
const PRINCIPAL: usize = 0;
const ACTION: usize = 1;
const RESOURCE: usize = 2;

fn slot_of(v: Var) -> Option<usize> {
    match v {
        Var::Principal => Some(PRINCIPAL),
        Var::Action => Some(ACTION),
        Var::Resource => Some(RESOURCE),
        Var::Context => None,
    }
}

/// The request variable `e` is, if it is one of its entities.
fn var_slot(e: &Expr) -> Option<usize> {
    match e.expr_kind() {
        ExprKind::Var(v) => slot_of(*v),
        _ => None,
    }
}

/// Which scope constraint of a policy the slice it sits in guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Implied {
    /// Nothing beyond the action scope.
    Nothing,
    /// The principal's `==` or `in` entity (`is ... in`: the `in` part only).
    PrincipalEntity,
    /// The principal's `is` type.
    PrincipalType,
    ResourceEntity,
    ResourceType,
}

/// A policy's condition compiled for [`Cond::eval`]: conjuncts, each of which must be `true`.
#[derive(Debug, Clone)]
pub struct Cond {
    conjuncts: Vec<Op>,
}

#[derive(Debug, Clone)]
enum Op {
    Bool(bool),
    Long(i64),
    Entity(Box<EntityUID>),
    /// Any other literal (strings).
    Value(Box<Value>),
    Var(Var),
    /// The shapes most conditions are made of, on the request's principal (0), action (1) or
    /// resource (2): `var == E`, `var is T`, `var in E|[..]`, `var.attr`.
    VarEq(usize, Box<EntityUID>),
    VarIs(usize, Box<EntityType>),
    VarIn(usize, Box<[EntityUID]>),
    /// `var.attr`, with the attribute's number in the index (`AttrIds`), if it has one.
    VarAttr(usize, SmolStr, Option<u32>),
    /// `context.attr`.
    ContextAttr(SmolStr),
    Attr(Box<Op>, SmolStr),
    Has(Box<Op>, SmolStr),
    Is(Box<Op>, Box<EntityType>),
    /// `lhs in E` or `lhs in [E1, E2, ..]` with entity literals.
    In(Box<Op>, Box<[EntityUID]>),
    And(Box<Op>, Box<Op>),
    Or(Box<Op>, Box<Op>),
    Not(Box<Op>),
    If(Box<Op>, Box<Op>, Box<Op>),
    Eq(Box<Op>, Box<Op>),
    Less(Box<Op>, Box<Op>),
    LessEq(Box<Op>, Box<Op>),
    /// `a < k`, `a <= k`, `a > k` (Cedar: `!(a <= k)`), `a >= k` (`!(a < k)`) with a Long
    /// literal `k`: the most common condition, in one step.
    CmpLong(Box<Op>, Cmp, i64),
    /// `CmpLong` on `VarAttr` (`resource.level > 3`), in one step.
    CmpVarAttr {
        var: u8,
        cmp: Cmp,
        id: Option<u32>,
        k: i64,
        attr: Box<SmolStr>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    fn holds(self, a: i64, k: i64) -> bool {
        match self {
            Cmp::Lt => a < k,
            Cmp::Le => a <= k,
            Cmp::Gt => a > k,
            Cmp::Ge => a >= k,
        }
    }
}

impl Cond {
    /// Compiles `policy`'s condition without the scope constraints the index guarantees, or
    /// `None` when it uses anything outside the fragment.
    /// `ids` numbers the attributes conditions read; one per index (see `Ctx::memo`).
    pub(crate) fn compile(policy: &Policy, implied: Implied, ids: &mut AttrIds) -> Option<Cond> {
        let mut conjuncts = Vec::new();
        let principal = policy.principal_constraint();
        let resource = policy.resource_constraint();
        scope(
            principal.as_inner(),
            PRINCIPAL,
            match implied {
                Implied::PrincipalEntity => Skip::Entity,
                Implied::PrincipalType => Skip::Type,
                _ => Skip::Nothing,
            },
            &mut conjuncts,
        )?;
        // The action scope: every action in an index bucket satisfies it (see `index`).
        scope(
            resource.as_inner(),
            RESOURCE,
            match implied {
                Implied::ResourceEntity => Skip::Entity,
                Implied::ResourceType => Skip::Type,
                _ => Skip::Nothing,
            },
            &mut conjuncts,
        )?;
        if let Some(body) = policy.non_scope_constraints() {
            conjuncts.push(op(body, policy.env(), ids, 0)?);
        }
        Some(Cond { conjuncts })
    }

    /// The condition's value, or `None` when Cedar's evaluator must decide (see the module's
    /// invariant).
    pub(crate) fn eval(&self, ctx: &Ctx<'_>) -> Option<bool> {
        for c in &self.conjuncts {
            match eval(c, ctx)? {
                Val::Bool(true) => {}
                Val::Bool(false) => return Some(false),
                _ => return None,
            }
        }
        Some(true)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Skip {
    Nothing,
    Entity,
    Type,
}

/// The conjuncts of a principal or resource scope constraint, in Cedar's order.
fn scope(c: &PrincipalOrResourceConstraint, var: usize, skip: Skip, out: &mut Vec<Op>) -> Option<()> {
    let entity = |r: &EntityReference| match r {
        EntityReference::EUID(u) => Some(u.as_ref().clone()),
        EntityReference::Slot(_) => None,
    };
    match c {
        PrincipalOrResourceConstraint::Any => {}
        PrincipalOrResourceConstraint::Eq(r) => {
            if skip != Skip::Entity {
                out.push(Op::VarEq(var, Box::new(entity(r)?)));
            }
        }
        PrincipalOrResourceConstraint::In(r) => {
            if skip != Skip::Entity {
                out.push(Op::VarIn(var, Box::new([entity(r)?])));
            }
        }
        PrincipalOrResourceConstraint::Is(t) => {
            if skip != Skip::Type {
                out.push(Op::VarIs(var, Box::new(t.as_ref().clone())));
            }
        }
        PrincipalOrResourceConstraint::IsIn(t, r) => {
            if skip != Skip::Type {
                out.push(Op::VarIs(var, Box::new(t.as_ref().clone())));
            }
            if skip != Skip::Entity {
                out.push(Op::VarIn(var, Box::new([entity(r)?])));
            }
        }
    }
    Some(())
}

fn op(e: &Expr, slots: &SlotEnv, ids: &mut AttrIds, depth: usize) -> Option<Op> {
    if depth > MAX_DEPTH {
        return None;
    }
    let mut sub = |e: &Expr| op(e, slots, ids, depth + 1).map(Box::new);
    Some(match e.expr_kind() {
        ExprKind::Lit(lit) => literal(lit),
        ExprKind::Var(v) => Op::Var(*v),
        ExprKind::Slot(id) => Op::Entity(Box::new(slots.get(id)?.clone())),
        ExprKind::If {
            test_expr,
            then_expr,
            else_expr,
        } => Op::If(sub(test_expr)?, sub(then_expr)?, sub(else_expr)?),
        ExprKind::And { left, right } => Op::And(sub(left)?, sub(right)?),
        ExprKind::Or { left, right } => Op::Or(sub(left)?, sub(right)?),
        ExprKind::UnaryApp { op: UnaryOp::Not, arg } => match cmp_long(arg) {
            // `>` and `>=` are Cedar's `!(<=)` and `!(<)`.
            Some((a, Cmp::Le, k)) => compare(*sub(a)?, Cmp::Gt, k),
            Some((a, Cmp::Lt, k)) => compare(*sub(a)?, Cmp::Ge, k),
            _ => Op::Not(sub(arg)?),
        },
        ExprKind::BinaryApp { op: bin, arg1, arg2 } => match bin {
            BinaryOp::Eq => Op::Eq(sub(arg1)?, sub(arg2)?),
            BinaryOp::Less | BinaryOp::LessEq => match cmp_long(e) {
                Some((a, cmp, k)) => compare(*sub(a)?, cmp, k),
                None if *bin == BinaryOp::Less => Op::Less(sub(arg1)?, sub(arg2)?),
                None => Op::LessEq(sub(arg1)?, sub(arg2)?),
            },
            BinaryOp::In => match var_slot(arg1) {
                Some(v) => Op::VarIn(v, entity_literals(arg2, slots)?.into()),
                None => Op::In(sub(arg1)?, entity_literals(arg2, slots)?.into()),
            },
            _ => return None,
        },
        ExprKind::GetAttr { expr, attr } => match (var_slot(expr), expr.expr_kind()) {
            (Some(v), _) => Op::VarAttr(v, attr.clone(), ids.id(v, attr)),
            (None, ExprKind::Var(Var::Context)) => Op::ContextAttr(attr.clone()),
            (None, _) => Op::Attr(sub(expr)?, attr.clone()),
        },
        ExprKind::HasAttr { expr, attr } => Op::Has(sub(expr)?, attr.clone()),
        ExprKind::Is { expr, entity_type } => Op::Is(sub(expr)?, Box::new(entity_type.clone())),
        _ => return None,
    })
}

/// `a cmp k`, fused with `a` when it reads an attribute of a request entity.
fn compare(a: Op, cmp: Cmp, k: i64) -> Op {
    match a {
        // The variable is 0, 1 or 2; a `u8` keeps `Op` at 40 bytes.
        Op::VarAttr(v, attr, id) => match u8::try_from(v) {
            Ok(var) => Op::CmpVarAttr {
                var,
                cmp,
                id,
                k,
                attr: Box::new(attr),
            },
            Err(_) => Op::CmpLong(Box::new(Op::VarAttr(v, attr, id)), cmp, k),
        },
        a => Op::CmpLong(Box::new(a), cmp, k),
    }
}

/// `a < k` or `a <= k` with a Long literal `k` (which never errs: only `a` is evaluated).
fn cmp_long(e: &Expr) -> Option<(&Expr, Cmp, i64)> {
    let ExprKind::BinaryApp { op, arg1, arg2 } = e.expr_kind() else {
        return None;
    };
    let ExprKind::Lit(Literal::Long(k)) = arg2.expr_kind() else {
        return None;
    };
    match op {
        BinaryOp::Less => Some((arg1, Cmp::Lt, *k)),
        BinaryOp::LessEq => Some((arg1, Cmp::Le, *k)),
        _ => None,
    }
}

fn literal(lit: &Literal) -> Op {
    match lit {
        Literal::Bool(b) => Op::Bool(*b),
        Literal::Long(l) => Op::Long(*l),
        Literal::EntityUID(u) => Op::Entity(Box::new(u.as_ref().clone())),
        other => Op::Value(Box::new(Value::from(other.clone()))),
    }
}

/// The right of an `in` when it is an entity literal or a set of them (it then never errs).
fn entity_literals(e: &Expr, slots: &SlotEnv) -> Option<Vec<EntityUID>> {
    let one = |e: &Expr| match e.expr_kind() {
        ExprKind::Lit(Literal::EntityUID(u)) => Some(u.as_ref().clone()),
        ExprKind::Slot(id) => slots.get(id).cloned(),
        _ => None,
    };
    match e.expr_kind() {
        ExprKind::Set(items) => items.iter().map(one).collect(),
        _ => one(e).map(|u| vec![u]),
    }
}

/// Numbers for the attributes of the request's entities that conditions read (`resource.level`),
/// one per attribute and variable over all the conditions of an index, so that a request reads
/// each from the store once however many policies test it (see `Ctx::memo`).
#[derive(Debug, Default)]
pub(crate) struct AttrIds(std::collections::HashMap<(usize, SmolStr), u32, foldhash::fast::RandomState>);

impl AttrIds {
    fn id(&mut self, var: usize, attr: &SmolStr) -> Option<u32> {
        let next = u32::try_from(self.0.len()).ok()?;
        Some(*self.0.entry((var, attr.clone())).or_insert(next))
    }
}

/// Attribute reads a request remembers: the first this many distinct ones.
const MEMO: usize = 8;

/// An attribute read a request remembers: its `AttrIds` number and the value.
type Remembered<'a> = Option<(u32, Option<&'a PartialValue>)>;

/// The request and the store, with the request's entities looked up once (the index needs
/// them all anyway).
pub(crate) struct Ctx<'a> {
    entities: &'a Entities,
    /// Principal, action, resource.
    vars: [Option<&'a EntityUID>; 3],
    found: [Lookup<'a>; 3],
    context: Option<&'a BTreeMap<SmolStr, Value>>,
    /// Attributes of the request's entities already read, by their `AttrIds` number: the value
    /// (`None` when the entity lacks the attribute). Filled in order; the first empty cell ends it.
    /// INVARIANT: a `Ctx` evaluates the conditions of one index (one `AttrIds`; `forget`
    /// clears it before another index's), and the
    /// request's entities and the store do not change while it lives, so a number names one
    /// attribute of one entity and its value stays what the store holds.
    memo: [Cell<Remembered<'a>>; MEMO],
}

#[derive(Clone, Copy)]
enum Lookup<'a> {
    Found(&'a Entity),
    Missing,
    /// The store answered with a residual: only Cedar can go on.
    Unknown,
}

impl<'a> Lookup<'a> {
    fn of(entities: &'a Entities, uid: &EntityUID) -> Lookup<'a> {
        match entities.entity(uid) {
            Dereference::Data(e) => Lookup::Found(e),
            Dereference::NoSuchEntity => Lookup::Missing,
            Dereference::Residual(_) => Lookup::Unknown,
        }
    }
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(entities: &'a Entities, request: &'a Request) -> Ctx<'a> {
        let context = match request.context() {
            Some(cedar_policy_core::ast::Context::Value(map)) => Some(map.as_ref()),
            _ => None,
        };
        let vars = [
            request.principal().uid(),
            request.action().uid(),
            request.resource().uid(),
        ];
        Ctx {
            entities,
            found: vars.map(|uid| uid.map_or(Lookup::Unknown, |u| Lookup::of(entities, u))),
            vars,
            context,
            memo: Default::default(),
        }
    }

    /// This request asked on behalf of `principal` (same action, resource, context and store):
    /// only the principal is looked up again. Nothing is remembered yet.
    pub(crate) fn with_principal(&self, principal: &'a EntityUID) -> Ctx<'a> {
        let [_, action, resource] = self.vars;
        let [_, found_action, found_resource] = self.found;
        Ctx {
            entities: self.entities,
            vars: [Some(principal), action, resource],
            found: [Lookup::of(self.entities, principal), found_action, found_resource],
            context: self.context,
            memo: Default::default(),
        }
    }

    /// `attr` of `e`, the stored entity of one of the request's variables, read from the store
    /// once per request when `id` numbers it.
    fn read_attr(&self, e: &'a Entity, attr: &SmolStr, id: Option<u32>) -> Option<&'a PartialValue> {
        let Some(id) = id else {
            return e.get(attr);
        };
        for cell in &self.memo {
            match cell.get() {
                Some((k, v)) if k == id => return v,
                Some(_) => {}
                None => {
                    let v = e.get(attr);
                    cell.set(Some((id, v)));
                    return v;
                }
            }
        }
        e.get(attr)
    }

    /// Forgets the remembered attribute reads, before conditions of another index (whose
    /// `AttrIds` number attributes differently) are evaluated.
    pub(crate) fn forget(&self) {
        for cell in &self.memo {
            cell.set(None);
        }
    }

    /// Whether the store could not say whether one of the request's entities exists.
    pub(crate) fn store_unsure(&self) -> bool {
        self.found.iter().any(|f| matches!(f, Lookup::Unknown))
    }

    /// Whether the store could not say whether the principal (0), action (1) or resource (2)
    /// exists.
    pub(crate) fn unsure(&self, slot: usize) -> bool {
        self.found.get(slot).is_none_or(|f| matches!(f, Lookup::Unknown))
    }

    /// The request's principal (0), action (1) or resource (2), when known.
    pub(crate) fn uid(&self, slot: usize) -> Option<&'a EntityUID> {
        *self.vars.get(slot)?
    }

    /// The stored principal (0), action (1) or resource (2), if any: looked up once for both
    /// the index and the conditions.
    pub(crate) fn entity_of(&self, slot: usize) -> Option<&'a Entity> {
        match self.found.get(slot)? {
            Lookup::Found(e) => Some(e),
            Lookup::Missing | Lookup::Unknown => None,
        }
    }

    /// The stored entity `uid`; `var` says it is the request's principal, action or resource.
    fn lookup(&self, uid: &EntityUID, var: Option<usize>) -> Lookup<'a> {
        match var.and_then(|i| self.found.get(i)) {
            Some(found) => *found,
            None => Lookup::of(self.entities, uid),
        }
    }
}

/// A value during evaluation, borrowed from the policy, the request or the store.
#[derive(Clone, Copy)]
enum Val<'a> {
    Bool(bool),
    Long(i64),
    /// An entity, with the request variable it came from (for the memoised lookup).
    Entity(&'a EntityUID, Option<usize>),
    Record(&'a BTreeMap<SmolStr, Value>),
    /// Any other value (strings, sets, extension values): compared with Cedar's own equality.
    Other(&'a Value),
}

impl<'a> Val<'a> {
    fn of(v: &'a Value) -> Val<'a> {
        match v.value_kind() {
            ValueKind::Lit(Literal::Bool(b)) => Val::Bool(*b),
            ValueKind::Lit(Literal::Long(l)) => Val::Long(*l),
            ValueKind::Lit(Literal::EntityUID(u)) => Val::Entity(u.as_ref(), None),
            ValueKind::Record(r) => Val::Record(r.as_ref()),
            _ => Val::Other(v),
        }
    }

    /// Cedar's `==`: structural equality, never an error. Values of different kinds differ;
    /// `Other` never holds a boolean, a long, an entity or a record.
    fn equals(self, other: Val<'_>) -> bool {
        match (self, other) {
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Long(a), Val::Long(b)) => a == b,
            (Val::Entity(a, _), Val::Entity(b, _)) => same(a, b),
            (Val::Record(a), Val::Record(b)) => a == b,
            (Val::Other(a), Val::Other(b)) => a == b,
            _ => false,
        }
    }
}

/// `a == b` for entity uids (type and id), comparing the ids first: they usually differ, and
/// early.
#[inline]
fn same(a: &EntityUID, b: &EntityUID) -> bool {
    let (x, y): (&str, &str) = (a.eid().as_ref(), b.eid().as_ref());
    // Ids that differ mostly differ in length or in their last byte: settle those without a
    // call to `memcmp`.
    x.len() == y.len() && x.as_bytes().last() == y.as_bytes().last() && x == y && a.entity_type() == b.entity_type()
}

/// `e.is_descendant_of(t)`: for the few ancestors most entities have, comparing them one by
/// one is cheaper than hashing `t` twice (once per set Cedar keeps).
fn descends(e: &Entity, t: &EntityUID) -> bool {
    let mut ancestors = e.ancestors();
    if ancestors.size_hint().0 <= 8 {
        ancestors.any(|a| same(a, t))
    } else {
        e.is_descendant_of(t)
    }
}

fn boolean(v: Val<'_>) -> Option<bool> {
    match v {
        Val::Bool(b) => Some(b),
        _ => None,
    }
}

fn long(v: Val<'_>) -> Option<i64> {
    match v {
        Val::Long(l) => Some(l),
        _ => None,
    }
}

/// `var.attr` for the request's entity in `var`: Cedar errs when the entity is missing from the
/// store or lacks the attribute.
fn var_attr<'a, 'c: 'a>(ctx: &Ctx<'c>, var: usize, attr: &SmolStr, id: Option<u32>) -> Option<Val<'a>> {
    match ctx.found.get(var)? {
        Lookup::Found(e) => match ctx.read_attr(e, attr, id)? {
            PartialValue::Value(v) => Some(Val::of(v)),
            PartialValue::Residual(_) => None,
        },
        Lookup::Missing | Lookup::Unknown => None,
    }
}

fn eval<'a, 'c: 'a>(o: &'a Op, ctx: &Ctx<'c>) -> Option<Val<'a>> {
    Some(match o {
        Op::Bool(b) => Val::Bool(*b),
        Op::Long(l) => Val::Long(*l),
        Op::Entity(u) => Val::Entity(u, None),
        Op::Value(v) => Val::of(v),
        Op::Var(var) => match slot_of(*var) {
            Some(v) => Val::Entity(ctx.uid(v)?, Some(v)),
            None => Val::Record(ctx.context?),
        },
        Op::VarEq(v, uid) => Val::Bool(same(ctx.uid(*v)?, uid)),
        Op::VarIs(v, ty) => Val::Bool(ctx.uid(*v)?.entity_type() == &**ty),
        Op::VarIn(v, targets) => {
            let uid = ctx.uid(*v)?;
            let entity = match ctx.found.get(*v)? {
                Lookup::Found(e) => Some(*e),
                Lookup::Missing => None,
                Lookup::Unknown => return None,
            };
            Val::Bool(
                targets
                    .iter()
                    .any(|t| same(t, uid) || entity.is_some_and(|e| descends(e, t))),
            )
        }
        Op::ContextAttr(attr) => Val::of(ctx.context?.get(attr)?),
        Op::VarAttr(v, attr, id) => var_attr(ctx, *v, attr, *id)?,
        // Cedar: both operands must be booleans; the right is evaluated only when needed.
        Op::And(l, r) => {
            if boolean(eval(l, ctx)?)? {
                Val::Bool(boolean(eval(r, ctx)?)?)
            } else {
                Val::Bool(false)
            }
        }
        Op::Or(l, r) => {
            if boolean(eval(l, ctx)?)? {
                Val::Bool(true)
            } else {
                Val::Bool(boolean(eval(r, ctx)?)?)
            }
        }
        Op::Not(x) => Val::Bool(!boolean(eval(x, ctx)?)?),
        Op::If(c, t, e) => {
            if boolean(eval(c, ctx)?)? {
                eval(t, ctx)?
            } else {
                eval(e, ctx)?
            }
        }
        // Binary operators evaluate both operands first, as Cedar does.
        Op::Eq(a, b) => {
            let (a, b) = (eval(a, ctx)?, eval(b, ctx)?);
            Val::Bool(a.equals(b))
        }
        // Longs only: extension values (datetime, decimal ...) are left to Cedar.
        Op::Less(a, b) => {
            let (a, b) = (eval(a, ctx)?, eval(b, ctx)?);
            Val::Bool(long(a)? < long(b)?)
        }
        Op::CmpLong(a, cmp, k) => Val::Bool(cmp.holds(long(eval(a, ctx)?)?, *k)),
        Op::CmpVarAttr { var, cmp, id, k, attr } => {
            Val::Bool(cmp.holds(long(var_attr(ctx, usize::from(*var), attr, *id)?)?, *k))
        }
        Op::LessEq(a, b) => {
            let (a, b) = (eval(a, ctx)?, eval(b, ctx)?);
            Val::Bool(long(a)? <= long(b)?)
        }
        // Cedar: `a in B` holds when `a` is some `b` in B or has it among its ancestors; an
        // entity missing from the store has none.
        Op::In(a, targets) => {
            let Val::Entity(uid, var) = eval(a, ctx)? else {
                return None;
            };
            let entity = match ctx.lookup(uid, var) {
                Lookup::Found(e) => Some(e),
                Lookup::Missing => None,
                Lookup::Unknown => return None,
            };
            Val::Bool(
                targets
                    .iter()
                    .any(|t| t == uid || entity.is_some_and(|e| descends(e, t))),
            )
        }
        Op::Is(a, ty) => match eval(a, ctx)? {
            Val::Entity(uid, _) => Val::Bool(uid.entity_type() == &**ty),
            _ => return None,
        },
        Op::Attr(a, attr) => match eval(a, ctx)? {
            Val::Record(r) => Val::of(r.get(attr)?),
            Val::Entity(uid, var) => match ctx.lookup(uid, var) {
                Lookup::Found(e) => match e.get(attr)? {
                    PartialValue::Value(v) => Val::of(v),
                    PartialValue::Residual(_) => return None,
                },
                Lookup::Missing | Lookup::Unknown => return None,
            },
            _ => return None,
        },
        Op::Has(a, attr) => match eval(a, ctx)? {
            Val::Record(r) => Val::Bool(r.contains_key(attr)),
            Val::Entity(uid, var) => match ctx.lookup(uid, var) {
                Lookup::Found(e) => Val::Bool(e.get(attr).is_some()),
                Lookup::Missing => Val::Bool(false),
                Lookup::Unknown => return None,
            },
            _ => return None,
        },
    })
}

#[cfg(test)]
mod tests;
