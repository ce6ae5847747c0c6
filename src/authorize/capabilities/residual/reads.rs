//! What a residual policy reads of the resource, so that resources the partial evaluator cannot
//! tell apart share one evaluation: every file of a folder, for a set of policies that only ask
//! which folders the resource is in.
//!
//! INVARIANT (exactness): Cedar's partial evaluator (`tpe`) sees the resource only through the
//! expression `resource`. When every occurrence of it in a residual is the operand of one of the
//! reads below — `resource in E` or `in [E, ..]` (entity literals), `resource == E`, `resource is
//! T`, `resource.a`, `resource has a` — the evaluation of that residual depends on the resource
//! only through the value of each read, and those values are computed here as the partial
//! evaluator computes them, from the same store: `in` is true when the resource is a target or
//! has one among its ancestors; `==`, `is`, `has` compare; an attribute is its value (only a
//! literal: a record or extension value is a read deputy does not key on). Two resources of one
//! type with the same values for every read of the same residuals therefore get the same
//! response. Anything else (`resource` compared with another variable, passed to a function,
//! read through a tag, an entity the partial store does not know) is `None`: that resource is
//! evaluated on its own.

use cedar_policy_core::ast::{BinaryOp, EntityType, EntityUID, Expr, ExprKind, Literal, ValueKind, Var};
use cedar_policy_core::tpe::entities::PartialEntities;
use smol_str::SmolStr;

/// One read of the resource by a residual.
#[derive(Debug, Clone)]
pub enum Read {
    /// `resource in E` (one target) or `resource in [E, ..]`.
    In(Vec<EntityUID>),
    /// `resource == E` or `E == resource`.
    Eq(EntityUID),
    /// `resource is T`.
    Is(EntityType),
    /// `resource.a`.
    Attr(SmolStr),
    /// `resource has a`.
    Has(SmolStr),
}

/// The value of a read for one resource.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub enum Seen {
    Bool(bool),
    /// An attribute's value, `None` when the resource lacks it.
    Attr(Option<Literal>),
}

/// Every read of the resource in `condition`, or `None` when some occurrence of `resource` is
/// not one of them (see the module's invariant).
pub fn reads(condition: &Expr) -> Option<Vec<Read>> {
    let mut out = Vec::new();
    let (mut occurrences, mut covered) = (0usize, 0usize);
    for e in condition.subexpressions() {
        let read = match e.expr_kind() {
            ExprKind::Var(Var::Resource) => {
                occurrences += 1;
                None
            }
            ExprKind::BinaryApp {
                op: BinaryOp::In,
                arg1,
                arg2,
            } if is_resource(arg1) => targets(arg2).map(Read::In),
            ExprKind::BinaryApp {
                op: BinaryOp::Eq,
                arg1,
                arg2,
            } => match (is_resource(arg1), is_resource(arg2)) {
                (true, false) => entity(arg2).map(Read::Eq),
                (false, true) => entity(arg1).map(Read::Eq),
                _ => None,
            },
            ExprKind::Is { expr, entity_type } if is_resource(expr) => Some(Read::Is(entity_type.clone())),
            ExprKind::GetAttr { expr, attr } if is_resource(expr) => Some(Read::Attr(attr.clone())),
            ExprKind::HasAttr { expr, attr } if is_resource(expr) => Some(Read::Has(attr.clone())),
            _ => None,
        };
        if let Some(read) = read {
            covered += 1;
            out.push(read);
        }
    }
    (covered == occurrences).then_some(out)
}

/// The value of `read` for `resource`, as the partial evaluator computes it over `entities`;
/// `None` when deputy does not key on it (the entity is unknown, an attribute is not a literal).
pub fn seen(read: &Read, resource: &EntityUID, entities: &PartialEntities) -> Option<Seen> {
    Some(match read {
        Read::In(targets) => Seen::Bool(
            targets.contains(resource) || {
                let ancestors = entities.get_ancestors(resource)?;
                targets.iter().any(|t| ancestors.contains(t))
            },
        ),
        Read::Eq(uid) => Seen::Bool(uid == resource),
        Read::Is(ty) => Seen::Bool(resource.entity_type() == ty),
        Read::Attr(attr) => Seen::Attr(match entities.get_attrs(resource)?.get(attr) {
            None => None,
            Some(v) => match v.value_kind() {
                ValueKind::Lit(l) => Some(l.clone()),
                _ => return None,
            },
        }),
        Read::Has(attr) => Seen::Bool(entities.get_attrs(resource)?.contains_key(attr)),
    })
}

fn is_resource(e: &Expr) -> bool {
    matches!(e.expr_kind(), ExprKind::Var(Var::Resource))
}

fn entity(e: &Expr) -> Option<EntityUID> {
    match e.expr_kind() {
        ExprKind::Lit(Literal::EntityUID(uid)) => Some(uid.as_ref().clone()),
        _ => None,
    }
}

/// The targets of `in`: an entity literal or a set of them.
fn targets(e: &Expr) -> Option<Vec<EntityUID>> {
    match e.expr_kind() {
        ExprKind::Lit(Literal::EntityUID(uid)) => Some(vec![uid.as_ref().clone()]),
        ExprKind::Set(items) => items.iter().map(entity).collect(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::str::FromStr;

    use super::{reads, Read};

    fn reads_of(policy: &str) -> Option<Vec<Read>> {
        let p = cedar_policy::Policy::from_str(policy).unwrap();
        reads(&AsRef::<cedar_policy_core::ast::Policy>::as_ref(&p).condition())
    }

    #[test]
    fn every_read_deputy_keys_on() {
        let found = reads_of(
            r#"permit(principal, action, resource in Folder::"a") when {
                resource.n > 1 && resource has m && resource is File && resource == File::"x"
                && File::"y" == resource && resource in [Folder::"b", Folder::"c"] && resource.o.p
            };"#,
        )
        .unwrap();
        let shown: Vec<String> = found.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(found.len(), 8, "{shown:?}");
        assert!(found.iter().any(|r| matches!(r, Read::In(t) if t.len() == 1)), "{shown:?}");
        assert!(found.iter().any(|r| matches!(r, Read::In(t) if t.len() == 2)), "{shown:?}");
        assert_eq!(found.iter().filter(|r| matches!(r, Read::Eq(_))).count(), 2, "{shown:?}");
    }

    #[test]
    fn a_condition_without_the_resource_reads_nothing() {
        assert_eq!(reads_of(r#"permit(principal, action, resource) when { context.a > 1 };"#).map(|r| r.len()), Some(0));
    }

    #[test]
    fn any_other_use_of_the_resource_is_not_keyed() {
        for policy in [
            r#"permit(principal, action, resource) when { resource == principal };"#,
            r#"permit(principal, action, resource) when { [resource].contains(File::"x") };"#,
            r#"permit(principal, action, resource) when { resource in principal.folders };"#,
            r#"permit(principal, action, resource) when { principal in resource };"#,
            r#"permit(principal, action, resource) when { resource.hasTag("t") };"#,
            r#"permit(principal, action, resource) when { (if context.a then resource else principal) in Folder::"a" };"#,
        ] {
            assert!(reads_of(policy).is_none(), "{policy}");
        }
    }
}
