//! Boolean formulas over theory atoms, in negation normal form.
//!
//! Every Cedar condition is compiled into two such formulas: "evaluates to `true`" and
//! "evaluates to `false`" (an error is neither), so the solver never has to reason about
//! errors separately.

pub(crate) type AtomId = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Formula {
    True,
    False,
    /// An atom with its polarity (`false` means the negated atom).
    Lit(AtomId, bool),
    And(Vec<Formula>),
    Or(Vec<Formula>),
}

impl Formula {
    pub(crate) fn atom(id: AtomId) -> Formula {
        Formula::Lit(id, true)
    }

    pub(crate) fn constant(b: bool) -> Formula {
        if b {
            Formula::True
        } else {
            Formula::False
        }
    }

    pub(crate) fn and(self, other: Formula) -> Formula {
        Formula::all([self, other])
    }

    pub(crate) fn or(self, other: Formula) -> Formula {
        Formula::any([self, other])
    }

    pub(crate) fn all(parts: impl IntoIterator<Item = Formula>) -> Formula {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Formula::True => {}
                Formula::False => return Formula::False,
                Formula::And(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        match out.len() {
            0 => Formula::True,
            1 => out.pop().unwrap_or(Formula::True),
            _ => Formula::And(out),
        }
    }

    pub(crate) fn any(parts: impl IntoIterator<Item = Formula>) -> Formula {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Formula::False => {}
                Formula::True => return Formula::True,
                Formula::Or(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        match out.len() {
            0 => Formula::False,
            1 => out.pop().unwrap_or(Formula::False),
            _ => Formula::Or(out),
        }
    }

    /// The negation, pushed down to the atoms.
    pub(crate) fn not(&self) -> Formula {
        match self {
            Formula::True => Formula::False,
            Formula::False => Formula::True,
            Formula::Lit(a, pol) => Formula::Lit(*a, !pol),
            Formula::And(parts) => Formula::any(parts.iter().map(Formula::not)),
            Formula::Or(parts) => Formula::all(parts.iter().map(Formula::not)),
        }
    }

    pub(crate) fn atom_list(&self, out: &mut Vec<AtomId>) {
        match self {
            Formula::True | Formula::False => {}
            Formula::Lit(a, _) => out.push(*a),
            Formula::And(parts) | Formula::Or(parts) => parts.iter().for_each(|p| p.atom_list(out)),
        }
    }

    /// Three-valued evaluation under a partial assignment.
    pub(crate) fn eval(&self, assignment: &[Option<bool>]) -> Option<bool> {
        match self {
            Formula::True => Some(true),
            Formula::False => Some(false),
            Formula::Lit(a, pol) => assignment.get(*a).copied().flatten().map(|v| v == *pol),
            Formula::And(parts) => {
                let mut unknown = false;
                for p in parts {
                    match p.eval(assignment) {
                        Some(false) => return Some(false),
                        None => unknown = true,
                        Some(true) => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(true)
                }
            }
            Formula::Or(parts) => {
                let mut unknown = false;
                for p in parts {
                    match p.eval(assignment) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        Some(false) => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(false)
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn negation_is_de_morgan() {
        let f = Formula::atom(0).and(Formula::Lit(1, false).or(Formula::atom(2)));
        let n = f.not();
        for bits in 0..8u8 {
            let a: Vec<Option<bool>> = (0..3).map(|i| Some(bits & (1 << i) != 0)).collect();
            assert_eq!(f.eval(&a).map(|b| !b), n.eval(&a));
        }
    }

    #[test]
    fn partial_evaluation_is_three_valued() {
        let f = Formula::atom(0).or(Formula::atom(1));
        assert_eq!(f.eval(&[None, Some(true)]), Some(true));
        assert_eq!(f.eval(&[None, Some(false)]), None);
        assert_eq!(Formula::all([]).eval(&[]), Some(true));
    }
}
