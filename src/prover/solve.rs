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

/// A constraint borrows its formula: the same parent permit, forbid or axiom is shared by
/// the problems of every child permit of an environment.
#[derive(Clone, Copy)]
pub(crate) struct Constraint<'f> {
    pub(crate) formula: &'f Formula,
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

pub(crate) struct Search<'e, 'w, 'f> {
    enc: &'e Encoding<'w>,
    theory: Theory<'e, 'w>,
    constraints: Vec<Constraint<'f>>,
    /// The constraints that mention each atom: `occurs[occurs_start[a]..occurs_start[a + 1]]`.
    occurs_start: Vec<usize>,
    occurs: Vec<usize>,
    /// Each constraint's value under the assignment as of its last evaluation.
    // INVARIANT: outside `propagate`, every constraint not marked dirty has the value its
    // status says (a constraint's value only changes when one of its atoms is assigned,
    // which marks it dirty, or unassigned, which the trail undoes).
    status: Vec<Option<bool>>,
    dirty: Vec<bool>,
    /// Dirty constraints, in no particular order (sorted before each round).
    queue: Vec<usize>,
    pub(crate) assignment: Vec<Option<bool>>,
    /// The constraint that forced each assigned atom (`None` for decisions).
    reasons: Vec<Option<Origin>>,
    trail: Vec<Undo>,
    /// Literals forced in the current round (kept to reuse the allocation).
    forced: Vec<(AtomId, bool, Origin)>,
    lits: Vec<(AtomId, bool)>,
    steps: usize,
    budget: usize,
    models_left: usize,
    rejected: usize,
    /// Constraints that were falsified somewhere in the search (the proof's ingredients).
    pub(crate) conflicts: BTreeSet<Origin>,
    /// Store facts `a in b` a theory conflict relied on.
    pub(crate) facts: BTreeSet<(EntityUID, EntityUID)>,
}

/// What backtracking has to restore.
enum Undo {
    Atom(AtomId),
    /// A constraint's previous status.
    Status(usize, Option<bool>),
}

enum Step {
    Conflict,
    Open,
    Done,
}

impl<'e, 'w, 'f> Search<'e, 'w, 'f> {
    pub(crate) fn new(
        enc: &'e Encoding<'w>,
        constraints: Vec<Constraint<'f>>,
        budget: usize,
        max_models: usize,
    ) -> Self {
        let atom_count = enc.atoms.len();
        // Occurrence lists in one flat array: count, then fill. An atom mentioned twice by
        // one constraint is listed once.
        let mut atoms = Vec::new();
        let mut last_seen = vec![usize::MAX; atom_count];
        let mut per_constraint: Vec<(usize, usize)> = Vec::with_capacity(constraints.len());
        let mut flat: Vec<AtomId> = Vec::new();
        for (i, c) in constraints.iter().enumerate() {
            atoms.clear();
            c.formula.atom_list(&mut atoms);
            let start = flat.len();
            for &a in &atoms {
                if let Some(seen) = last_seen.get_mut(a) {
                    if *seen != i {
                        *seen = i;
                        flat.push(a);
                    }
                }
            }
            per_constraint.push((start, flat.len()));
        }
        let mut occurs_start = vec![0usize; atom_count + 1];
        for &a in &flat {
            if let Some(n) = occurs_start.get_mut(a + 1) {
                *n += 1;
            }
        }
        for a in 0..atom_count {
            let before = occurs_start.get(a).copied().unwrap_or(0);
            if let Some(n) = occurs_start.get_mut(a + 1) {
                *n += before;
            }
        }
        let mut fill = occurs_start.clone();
        let mut occurs = vec![0usize; flat.len()];
        for (i, (start, end)) in per_constraint.iter().enumerate() {
            for &a in flat.get(*start..*end).unwrap_or(&[]) {
                if let Some(pos) = fill.get_mut(a) {
                    if let Some(slot) = occurs.get_mut(*pos) {
                        *slot = i;
                    }
                    *pos += 1;
                }
            }
        }
        let n = constraints.len();
        Search {
            enc,
            theory: Theory::new(enc),
            constraints,
            occurs_start,
            occurs,
            status: vec![None; n],
            // Every constraint is evaluated in the first round.
            dirty: vec![true; n],
            queue: (0..n).collect(),
            assignment: vec![None; atom_count],
            reasons: vec![None; atom_count],
            trail: Vec::new(),
            forced: Vec::new(),
            lits: Vec::new(),
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
            self.trail.push(Undo::Atom(a));
        }
        if let Some(r) = self.reasons.get_mut(a) {
            *r = reason;
        }
        let (start, end) = (
            self.occurs_start.get(a).copied().unwrap_or(0),
            self.occurs_start.get(a + 1).copied().unwrap_or(0),
        );
        for &c in self.occurs.get(start..end).unwrap_or(&[]) {
            if let Some(d) = self.dirty.get_mut(c) {
                if !*d {
                    *d = true;
                    self.queue.push(c);
                }
            }
        }
    }

    fn set_status(&mut self, c: usize, v: Option<bool>) {
        if let Some(s) = self.status.get_mut(c) {
            if *s != v {
                self.trail.push(Undo::Status(c, *s));
                *s = v;
            }
        }
    }

    fn undo_to(&mut self, len: usize) {
        while self.trail.len() > len {
            match self.trail.pop() {
                Some(Undo::Atom(a)) => {
                    if let Some(slot) = self.assignment.get_mut(a) {
                        *slot = None;
                    }
                }
                Some(Undo::Status(c, old)) => {
                    if let Some(s) = self.status.get_mut(c) {
                        *s = old;
                    }
                }
                None => {}
            }
        }
    }

    /// Forgets the dirty constraints (after a conflict, whose assignments the caller undoes).
    fn clear_queue(&mut self) {
        for &c in &self.queue {
            if let Some(d) = self.dirty.get_mut(c) {
                *d = false;
            }
        }
        self.queue.clear();
    }

    /// Unit propagation to a fixpoint, then the theory check. Each round re-evaluates only
    /// the constraints that mention an atom assigned since they were last evaluated, in
    /// constraint order, so it forces and blames exactly what evaluating them all would.
    fn propagate(&mut self) -> Step {
        loop {
            let mut forced = std::mem::take(&mut self.forced);
            forced.clear();
            let mut queue = std::mem::take(&mut self.queue);
            queue.sort_unstable();
            let mut conflict = None;
            for &i in &queue {
                if let Some(d) = self.dirty.get_mut(i) {
                    *d = false;
                }
                let Some(&c) = self.constraints.get(i) else { continue };
                let value = c.formula.eval(&self.assignment);
                self.set_status(i, value);
                match value {
                    Some(true) => {}
                    Some(false) => {
                        conflict = Some(c.origin);
                        break;
                    }
                    None => {
                        self.lits.clear();
                        unit(c.formula, &self.assignment, &mut self.lits);
                        forced.extend(self.lits.iter().map(|&(a, v)| (a, v, c.origin)));
                    }
                }
            }
            if conflict.is_some() {
                // The rest of this round stays dirty; the caller undoes the assignments.
                for &i in &queue {
                    if let Some(d) = self.dirty.get_mut(i) {
                        *d = false;
                    }
                }
            }
            queue.clear();
            self.queue = queue;
            if let Some(origin) = conflict {
                self.forced = forced;
                self.conflicts.insert(origin);
                return Step::Conflict;
            }
            if forced.is_empty() {
                self.forced = forced;
                if let Err(conflict) = self.theory.check(&self.assignment) {
                    self.facts.extend(conflict.facts);
                    for atom in conflict.atoms {
                        if let Some(Some(origin)) = self.reasons.get(atom) {
                            self.conflicts.insert(*origin);
                        }
                    }
                    return Step::Conflict;
                }
                return if self.status.iter().all(|s| *s == Some(true)) {
                    Step::Done
                } else {
                    Step::Open
                };
            }
            for &(a, v, origin) in &forced {
                match self.assignment.get(a).copied().flatten() {
                    None => self.assign(a, v, Some(origin)),
                    Some(old) if old != v => {
                        self.conflicts.insert(origin);
                        if let Some(Some(other)) = self.reasons.get(a) {
                            self.conflicts.insert(*other);
                        }
                        self.forced = forced;
                        self.clear_queue();
                        return Step::Conflict;
                    }
                    Some(_) => {}
                }
            }
            self.forced = forced;
        }
    }

    fn dpll(&mut self, on_model: &mut dyn FnMut(&Encoding<'w>, &[Option<bool>]) -> ModelVerdict) -> Result<bool, ()> {
        self.steps += 1;
        if self.steps > self.budget {
            self.clear_queue();
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
            // Open means some constraint is undecided, and an undecided formula always has an
            // unassigned atom to pick. Should the kept statuses ever disagree, give up
            // (inconclusive) rather than call the region empty.
            debug_assert!(false, "an open problem without a decision");
            self.undo_to(mark);
            return Err(());
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

    /// The first constraint (in order) not yet true picks the next decision.
    fn decision(&self) -> Option<(AtomId, bool)> {
        self.constraints
            .iter()
            .zip(&self.status)
            .filter(|(_, s)| s.is_none())
            .find_map(|(c, _)| pick(c.formula, &self.assignment))
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use std::str::FromStr;

    use cedar_policy::{Entities, Schema};

    use super::super::encode::{Atom, Env, Ty};
    use super::super::world::World;
    use super::*;

    /// A small deterministic generator (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            usize::try_from(self.0 % n as u64).unwrap()
        }

        fn formula(&mut self, atoms: usize, depth: usize) -> Formula {
            match if depth == 0 { 0 } else { self.below(4) } {
                0 | 1 => Formula::Lit(self.below(atoms), self.below(2) == 0),
                2 => Formula::all((0..1 + self.below(3)).map(|_| self.formula(atoms, depth - 1))),
                _ => Formula::any((0..1 + self.below(3)).map(|_| self.formula(atoms, depth - 1))),
            }
        }
    }

    /// Opaque atoms carry no theory, so the search is plain propositional search: the
    /// models it reports must be disjoint cubes of satisfying assignments that together
    /// cover every satisfying total assignment.
    #[test]
    fn incremental_propagation_finds_exactly_the_models() {
        let schema = Schema::from_str("entity A; action act appliesTo { principal: [A], resource: [A] };").unwrap();
        let entities = Entities::empty();
        let world = World::new(schema.as_ref(), entities.as_ref());
        let child = EntityUID::from_str(r#"A::"child""#).unwrap();
        let env = Env {
            principal_type: child.entity_type().clone(),
            action: EntityUID::from_str(r#"Action::"act""#).unwrap(),
            resource_type: child.entity_type().clone(),
            child,
            context: Ty::Record(Vec::new()),
        };
        let n = 7;
        let mut enc = Encoding::new(&world, env);
        enc.atoms = (0..n).map(|i| Atom::Opaque(i, true)).collect();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..400 {
            let formulas: Vec<Formula> = (0..1 + rng.below(6)).map(|_| rng.formula(n, 3)).collect();
            let constraints = formulas
                .iter()
                .enumerate()
                .map(|(i, formula)| Constraint {
                    formula,
                    origin: Origin::ChildForbid(i),
                })
                .collect();
            let mut covered = 0usize;
            let mut search = Search::new(&enc, constraints, usize::MAX, usize::MAX);
            let outcome = search.run(&mut |_, a| {
                for f in &formulas {
                    assert_eq!(f.eval(a), Some(true), "round {round}: a model falsifies a constraint");
                }
                covered += 1 << a.iter().filter(|v| v.is_none()).count();
                ModelVerdict::Reject
            });
            let expected = (0..1usize << n)
                .filter(|bits| {
                    let a: Vec<Option<bool>> = (0..n).map(|i| Some(bits & (1 << i) != 0)).collect();
                    formulas.iter().all(|f| f.eval(&a) == Some(true))
                })
                .count();
            assert_eq!(covered, expected, "round {round}: {formulas:?}");
            let unsat = expected == 0;
            assert_eq!(outcome == Outcome::Unsat, unsat, "round {round}");
        }
    }
}
