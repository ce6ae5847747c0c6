//! Conditions: compiling Cedar expressions into "evaluates to true" / "evaluates to false"
//! formulas, with Cedar's error and short-circuit semantics.

use std::sync::Arc;

use cedar_policy_core::ast::{BinaryOp, EntityUID, Expr, ExprKind, Literal, PatternElem, UnaryOp, Var};

use super::{Atom, Cmp, Encoding, Lit, OpaqueExpr, Pat, Scalar, TermId, Ty};
use crate::prover::formula::Formula;

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

impl Encoding<'_> {
    fn operand(&mut self, e: &Expr) -> Operand {
        match e.expr_kind() {
            ExprKind::Lit(l) => literal(l).map_or(Operand::Other, Operand::Lit),
            ExprKind::UnaryApp { op: UnaryOp::Neg, arg } => match arg.expr_kind() {
                ExprKind::Lit(Literal::Long(k)) => {
                    k.checked_neg().map_or(Operand::Other, |v| Operand::Lit(Lit::Long(v)))
                }
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
                    policy: self.current_policy(),
                });
                self.opaque_ix.insert(text, i);
                let t = self.lit(Atom::Opaque(i, true));
                let f = self.lit(Atom::Opaque(i, false));
                self.axioms.push(t.not().or(f.not()));
                i
            }
        };
        (self.lit(Atom::Opaque(idx, true)), self.lit(Atom::Opaque(idx, false)))
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
            ExprKind::UnaryApp { op: UnaryOp::Not, arg } => {
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
                (ct.clone().and(at).or(cf.clone().and(bt)), ct.and(af).or(cf.and(bf)))
            }
            ExprKind::BinaryApp { op, arg1, arg2 } => match op {
                BinaryOp::Eq => self.equality(e, arg1, arg2),
                BinaryOp::Less => self.compare(e, Cmp::Lt, arg1, arg2),
                BinaryOp::LessEq => self.compare(e, Cmp::Le, arg1, arg2),
                BinaryOp::In => self.membership(e, arg1, arg2),
                BinaryOp::Contains | BinaryOp::ContainsAll | BinaryOp::ContainsAny => self.set_op(e, *op, arg1, arg2),
                _ => self.opaque(e),
            },
            ExprKind::ExtensionFunctionApp { fn_name, args } => match (fn_name.to_string().as_str(), args.as_slice()) {
                ("lessThan", [a, b]) => self.compare(e, Cmp::Lt, a, b),
                ("lessThanOrEqual", [a, b]) => self.compare(e, Cmp::Le, a, b),
                ("greaterThan", [a, b]) => self.compare(e, Cmp::Lt, b, a),
                ("greaterThanOrEqual", [a, b]) => self.compare(e, Cmp::Le, b, a),
                _ => self.opaque(e),
            },
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
            (Operand::Lit(x), Operand::Lit(y)) => (Formula::constant(x == y), Formula::constant(x != y)),
            (Operand::Term(t, d), Operand::Lit(v)) | (Operand::Lit(v), Operand::Term(t, d)) => {
                match self.eq_lit(t, &v) {
                    Some(x) => guarded(d, x),
                    None => self.opaque(e),
                }
            }
            (Operand::Scalar(x, v), Operand::Scalar(y, w)) if x == y => {
                (Formula::constant(v == w), Formula::constant(v != w))
            }
            (Operand::Term(t, d), Operand::Scalar(k, v)) | (Operand::Scalar(k, v), Operand::Term(t, d))
                if self.ty(t).scalar() == Some(k) =>
            {
                let x = self.lit(Atom::Long(t, Cmp::Eq, v));
                guarded(d, x)
            }
            (Operand::Action, Operand::Lit(Lit::Entity(u))) | (Operand::Lit(Lit::Entity(u)), Operand::Action) => {
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
            (Operand::Term(t, d), Operand::Term(u, du)) if self.same_order(t, u) => {
                let x = if t == u {
                    Formula::constant(cmp == Cmp::Le)
                } else {
                    self.lit(Atom::LongRel(t, cmp, u))
                };
                guarded(d.and(du), x)
            }
            _ => self.opaque(e),
        }
    }

    /// Two terms of the same ordered type (Long, or the same scalar extension type).
    fn same_order(&self, t: TermId, u: TermId) -> bool {
        let (a, b) = (self.ty(t), self.ty(u));
        a.is_ordered() && a == b
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
                let b = rhs.iter().any(|u| self.world.action_in(&self.env.action, u));
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
            (BinaryOp::Contains, Operand::Term(t, d), Operand::Lit(v)) if matches!(self.ty(t), Ty::Set(_)) => {
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
            (BinaryOp::ContainsAll | BinaryOp::ContainsAny, Operand::Term(t, d), Operand::LitSet(vs))
                if matches!(self.ty(t), Ty::Set(_)) =>
            {
                let parts: Vec<Formula> = vs.into_iter().map(|v| self.lit(Atom::Contains(t, v))).collect();
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
