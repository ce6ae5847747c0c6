//! Pairs of policies that cannot both be satisfied by one request, read off their text.
//!
//! Only top-level conjuncts of a condition are used: when `when { a && b }` is satisfied, `a`
//! and `b` both evaluated to `true`. From them a policy yields string facts about the
//! resource's attributes (`resource.attr like "p"`, `resource.attr == "s"`), and its resource
//! scope may pin the resource to a stored entity (`resource == E`), whose attributes are store
//! facts. Two policies are disjoint when one's string fact is refuted by the other's (the
//! patterns' literal prefixes or suffixes disagree, or a literal does not match a pattern) or
//! by the stored value of the entity the other pins.
//!
//! Used one way only: a parent permit disjoint from a child permit cannot cover any request of
//! that child permit, so leaving it out of the child permit's problem changes nothing a proof
//! relies on. Leaving a constraint out is sound in any case (every candidate is replayed), and
//! a problem that does not end in a proof or a counterexample is redone without this pruning.

use cedar_policy_core::ast::{
    BinaryOp, EntityReference, EntityUID, Expr, ExprKind, Literal, PartialValue, PatternElem,
    PrincipalOrResourceConstraint, ValueKind, Var,
};

use super::super::encode::Pat;
use super::super::grant::GrantPolicy;
use super::super::solve::strings::matches;
use super::super::world::World;

/// What a satisfied policy says about its request's resource.
#[derive(Debug, Default)]
pub(crate) struct Facts {
    /// `resource.attr` matches the pattern (a literal is a pattern without `*`).
    strings: Vec<(String, Vec<Pat>)>,
    /// The string attributes of the stored entity `resource ==` pins, if any.
    pinned: Option<EntityUID>,
}

impl Facts {
    pub(crate) fn of(p: &GrantPolicy) -> Facts {
        let t = p.core();
        let pinned = match t.resource_constraint().as_inner() {
            PrincipalOrResourceConstraint::Eq(EntityReference::EUID(u)) => Some(u.as_ref().clone()),
            _ => None,
        };
        let mut strings = Vec::new();
        if let Some(cond) = t.non_scope_constraints() {
            conjuncts(cond, &mut strings);
        }
        Facts { strings, pinned }
    }

    /// No request satisfies both policies (with the store's facts).
    pub(crate) fn disjoint(&self, other: &Facts, world: &World<'_>) -> bool {
        let pairwise = self
            .strings
            .iter()
            .any(|(a, p)| other.strings.iter().any(|(b, q)| a == b && patterns_disjoint(p, q)));
        pairwise || refuted_by_store(self, other, world) || refuted_by_store(other, self, world)
    }
}

/// `pinned`'s stored entity contradicts one of `facts`' string facts.
fn refuted_by_store(facts: &Facts, pinned: &Facts, world: &World<'_>) -> bool {
    // Most policies have no string fact: skip the store lookup for them.
    if facts.strings.is_empty() {
        return false;
    }
    let Some(entity) = pinned.pinned.as_ref().and_then(|u| world.stored(u)) else {
        return false;
    };
    facts.strings.iter().any(|(attr, pat)| match entity.get(attr) {
        Some(PartialValue::Value(v)) => match v.value_kind() {
            ValueKind::Lit(Literal::String(s)) => !matches(pat, s),
            // Another type: `like` or `==` with a string is not `true` on it, but leave
            // that to the search.
            _ => false,
        },
        _ => false,
    })
}

/// No string matches both patterns, by a sound test: the literal prefixes (or suffixes)
/// must agree up to the shorter one, and a pattern without `*` must match the other.
fn patterns_disjoint(p: &[Pat], q: &[Pat]) -> bool {
    let literal = |x: &[Pat]| -> Option<String> {
        x.iter()
            .map(|e| match e {
                Pat::Char(c) => Some(*c),
                Pat::Star => None,
            })
            .collect()
    };
    if let Some(s) = literal(p) {
        return !matches(q, &s);
    }
    if let Some(s) = literal(q) {
        return !matches(p, &s);
    }
    let chars = |x: &[Pat], rev: bool| -> Vec<char> {
        let it: Box<dyn Iterator<Item = &Pat>> = if rev {
            Box::new(x.iter().rev())
        } else {
            Box::new(x.iter())
        };
        it.map_while(|e| match e {
            Pat::Char(c) => Some(*c),
            Pat::Star => None,
        })
        .collect()
    };
    let clash = |a: Vec<char>, b: Vec<char>| a.iter().zip(&b).any(|(x, y)| x != y);
    clash(chars(p, false), chars(q, false)) || clash(chars(p, true), chars(q, true))
}

/// Collects the string facts among the top-level conjuncts of a condition.
fn conjuncts(e: &Expr, out: &mut Vec<(String, Vec<Pat>)>) {
    match e.expr_kind() {
        ExprKind::And { left, right } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        ExprKind::Like { expr, pattern } => {
            if let Some(attr) = resource_attr(expr) {
                let pat = pattern
                    .iter()
                    .map(|p| match p {
                        PatternElem::Char(c) => Pat::Char(*c),
                        PatternElem::Wildcard => Pat::Star,
                    })
                    .collect();
                out.push((attr, pat));
            }
        }
        ExprKind::BinaryApp {
            op: BinaryOp::Eq,
            arg1,
            arg2,
        } => {
            let fact = match (resource_attr(arg1), string_lit(arg2)) {
                (Some(attr), Some(s)) => Some((attr, s)),
                _ => resource_attr(arg2).zip(string_lit(arg1)),
            };
            if let Some((attr, s)) = fact {
                out.push((attr, s.chars().map(Pat::Char).collect()));
            }
        }
        _ => {}
    }
}

/// `resource.attr` → `attr`.
fn resource_attr(e: &Expr) -> Option<String> {
    match e.expr_kind() {
        ExprKind::GetAttr { expr, attr } if matches!(expr.expr_kind(), ExprKind::Var(Var::Resource)) => {
            Some(attr.to_string())
        }
        _ => None,
    }
}

fn string_lit(e: &Expr) -> Option<&str> {
    match e.expr_kind() {
        ExprKind::Lit(Literal::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::solve::strings::tests::pat;
    use super::*;

    #[test]
    fn pattern_disjointness_is_sound() {
        // Disjoint.
        assert!(patterns_disjoint(&pat("f1/2/src/lib/*"), &pat("f3/4/src/*")));
        assert!(patterns_disjoint(&pat("*.rs"), &pat("*.md")));
        assert!(patterns_disjoint(&pat("abc"), &pat("x*")));
        // Overlapping.
        assert!(!patterns_disjoint(&pat("f1/2/src/lib/*"), &pat("f1/2/src/*")));
        assert!(!patterns_disjoint(&pat("a*"), &pat("*b")));
        assert!(!patterns_disjoint(&pat("abc"), &pat("a*c")));
        assert!(!patterns_disjoint(&pat("*"), &pat("anything*")));
        assert!(!patterns_disjoint(&pat("a*b*c"), &pat("ab*bc")));
    }

    #[test]
    fn pattern_disjointness_agrees_with_matching() {
        let pats = ["a*", "*a", "ab*", "*b", "a*b", "ba*", "b", "ab", "*", "a*a", "**b"];
        let words = [
            "", "a", "b", "aa", "ab", "ba", "bb", "aab", "aba", "abb", "baa", "bab", "abab",
        ];
        for p in pats {
            for q in pats {
                if patterns_disjoint(&pat(p), &pat(q)) {
                    for w in words {
                        assert!(!(matches(&pat(p), w) && matches(&pat(q), w)), "{p} {q} {w}");
                    }
                }
            }
        }
    }
}
