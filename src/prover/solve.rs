//! A small DPLL-style search over the atoms of one problem, with theory checks.
//!
//! The theory checks only ever reject assignments no world can realise (hierarchy facts of
//! the store, Long bounds, string patterns, values of stored entities). Anything they cannot
//! decide is let through: a model found here is only a *candidate*, which the caller must
//! turn into a concrete request and replay through Cedar before calling it a counterexample.
//! That one-sidedness is what keeps "unsatisfiable" trustworthy.

pub(crate) mod strings;
mod theory;

use std::collections::BTreeSet;

use cedar_policy_core::ast::EntityUID;

use super::encode::Encoding;
use super::formula::{AtomId, Formula};

pub(crate) use theory::{Known, Theory};

/// Which policy (or side condition) a constraint comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Origin {
    ChildPermit(usize),
    ChildForbid(usize),
    ParentForbid(usize),
    ParentPermit(usize),
    Axiom,
}

pub(crate) struct Constraint {
    pub(crate) formula: Formula,
    pub(crate) origin: Origin,
}

/// What the model callback decided.
pub(crate) enum ModelVerdict {
    /// A real counterexample: stop.
    Accept,
    /// Not realisable: keep searching.
    Reject,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// No assignment satisfies the constraints: the region is empty.
    Unsat,
    /// The callback accepted a model.
    Found,
    /// Every model found was rejected (and the search space is exhausted).
    OnlyRejected,
    /// The step budget ran out.
    Budget,
}

pub(crate) struct Search<'e, 'w> {
    enc: &'e Encoding<'w>,
    theory: Theory<'e, 'w>,
    constraints: Vec<Constraint>,
    pub(crate) assignment: Vec<Option<bool>>,
    /// The constraint that forced each assigned atom (`None` for decisions).
    reasons: Vec<Option<Origin>>,
    trail: Vec<AtomId>,
    steps: usize,
    budget: usize,
    models_left: usize,
    rejected: usize,
    /// Constraints that were falsified somewhere in the search (the proof's ingredients).
    pub(crate) conflicts: BTreeSet<Origin>,
    /// Store facts `a in b` a theory conflict relied on.
    pub(crate) facts: BTreeSet<(EntityUID, EntityUID)>,
}

enum Step {
    Conflict,
    Open,
    Done,
}

impl<'e, 'w> Search<'e, 'w> {
    pub(crate) fn new(enc: &'e Encoding<'w>, constraints: Vec<Constraint>, budget: usize, max_models: usize) -> Self {
        Search {
            enc,
            theory: Theory::new(enc),
            constraints,
            assignment: vec![None; enc.atoms.len()],
            reasons: vec![None; enc.atoms.len()],
            trail: Vec::new(),
            steps: 0,
            budget,
            models_left: max_models,
            rejected: 0,
            conflicts: BTreeSet::new(),
            facts: BTreeSet::new(),
        }
    }

    pub(crate) fn run(&mut self, on_model: &mut dyn FnMut(&Encoding<'w>, &[Option<bool>]) -> ModelVerdict) -> Outcome {
        match self.dpll(on_model) {
            Ok(true) => Outcome::Found,
            Ok(false) if self.rejected > 0 => Outcome::OnlyRejected,
            Ok(false) => Outcome::Unsat,
            Err(()) => Outcome::Budget,
        }
    }

    fn assign(&mut self, a: AtomId, v: bool, reason: Option<Origin>) {
        if let Some(slot) = self.assignment.get_mut(a) {
            *slot = Some(v);
            self.trail.push(a);
        }
        if let Some(r) = self.reasons.get_mut(a) {
            *r = reason;
        }
    }

    fn undo_to(&mut self, len: usize) {
        while self.trail.len() > len {
            if let Some(a) = self.trail.pop() {
                if let Some(slot) = self.assignment.get_mut(a) {
                    *slot = None;
                }
            }
        }
    }

    /// Unit propagation to a fixpoint, then the theory check.
    fn propagate(&mut self) -> Step {
        loop {
            let mut forced: Vec<(AtomId, bool, Origin)> = Vec::new();
            let mut all_true = true;
            for c in &self.constraints {
                match c.formula.eval(&self.assignment) {
                    Some(true) => {}
                    Some(false) => {
                        self.conflicts.insert(c.origin);
                        return Step::Conflict;
                    }
                    None => {
                        all_true = false;
                        let mut lits = Vec::new();
                        unit(&c.formula, &self.assignment, &mut lits);
                        forced.extend(lits.into_iter().map(|(a, v)| (a, v, c.origin)));
                    }
                }
            }
            if forced.is_empty() {
                if let Err(conflict) = self.theory.check(&self.assignment) {
                    self.facts.extend(conflict.facts);
                    for atom in conflict.atoms {
                        if let Some(Some(origin)) = self.reasons.get(atom) {
                            self.conflicts.insert(*origin);
                        }
                    }
                    return Step::Conflict;
                }
                return if all_true { Step::Done } else { Step::Open };
            }
            for (a, v, origin) in forced {
                match self.assignment.get(a).copied().flatten() {
                    None => self.assign(a, v, Some(origin)),
                    Some(old) if old != v => {
                        self.conflicts.insert(origin);
                        if let Some(Some(other)) = self.reasons.get(a) {
                            self.conflicts.insert(*other);
                        }
                        return Step::Conflict;
                    }
                    Some(_) => {}
                }
            }
        }
    }

    fn dpll(&mut self, on_model: &mut dyn FnMut(&Encoding<'w>, &[Option<bool>]) -> ModelVerdict) -> Result<bool, ()> {
        self.steps += 1;
        if self.steps > self.budget {
            return Err(());
        }
        let mark = self.trail.len();
        match self.propagate() {
            Step::Conflict => {
                self.undo_to(mark);
                return Ok(false);
            }
            Step::Done => {
                if self.models_left == 0 {
                    self.undo_to(mark);
                    return Err(());
                }
                self.models_left -= 1;
                let verdict = on_model(self.enc, &self.assignment);
                self.undo_to(mark);
                return match verdict {
                    ModelVerdict::Accept => Ok(true),
                    ModelVerdict::Reject => {
                        self.rejected += 1;
                        Ok(false)
                    }
                };
            }
            Step::Open => {}
        }
        let Some((a, v)) = self.decision() else {
            self.undo_to(mark);
            return Ok(false);
        };
        for value in [v, !v] {
            let inner = self.trail.len();
            self.assign(a, value, None);
            let r = self.dpll(on_model);
            self.undo_to(inner);
            match r {
                Ok(true) => {
                    self.undo_to(mark);
                    return Ok(true);
                }
                Ok(false) => {}
                Err(()) => {
                    self.undo_to(mark);
                    return Err(());
                }
            }
        }
        self.undo_to(mark);
        Ok(false)
    }

    fn decision(&self) -> Option<(AtomId, bool)> {
        self.constraints
            .iter()
            .filter(|c| c.formula.eval(&self.assignment).is_none())
            .find_map(|c| pick(&c.formula, &self.assignment))
    }
}

/// Literals a formula forces when it must be true.
fn unit(f: &Formula, a: &[Option<bool>], out: &mut Vec<(AtomId, bool)>) {
    match f {
        Formula::Lit(id, pol) => {
            if a.get(*id).copied().flatten().is_none() {
                out.push((*id, *pol));
            }
        }
        Formula::And(parts) => {
            for p in parts {
                if p.eval(a).is_none() {
                    unit(p, a, out);
                }
            }
        }
        Formula::Or(parts) => {
            let mut open = parts.iter().filter(|p| p.eval(a) != Some(false));
            if let (Some(only), None) = (open.next(), open.next()) {
                unit(only, a, out);
            }
        }
        Formula::True | Formula::False => {}
    }
}

/// An unassigned literal that helps make the formula true.
fn pick(f: &Formula, a: &[Option<bool>]) -> Option<(AtomId, bool)> {
    match f {
        Formula::Lit(id, pol) => match a.get(*id).copied().flatten() {
            None => Some((*id, *pol)),
            Some(_) => None,
        },
        Formula::And(parts) | Formula::Or(parts) => {
            parts.iter().filter(|p| p.eval(a).is_none()).find_map(|p| pick(p, a))
        }
        Formula::True | Formula::False => None,
    }
}
