//! Theory checks: can some world realise the atoms assigned so far?
//!
//! Terms rooted at an entity pinned to a stored entity (`resource == File::"a"`) take
//! their values from the store. Other entity terms are "fresh": a new entity may sit
//! anywhere below stored entities its type allows and carry any attribute values, which
//! also covers every stored entity the policies do not name. So for fresh terms only
//! internal consistency is checked (hierarchy closure, Long intervals, string patterns).

use std::collections::BTreeSet;

use cedar_policy_core::ast::{EntityUID, Literal, PartialValue, Value, ValueKind};

use super::super::encode::{Atom, Cmp, Encoding, Lit, Ty};
use super::super::formula::AtomId;
use super::strings::{matches, StrConstraints};

/// What the store fixes about a term under the current assignment.
#[derive(Debug, Clone)]
pub(crate) enum Known<'w> {
    /// Not determined by the store.
    Free,
    /// The attribute is absent (the term cannot be evaluated).
    Absent,
    /// An entity, stored or named by a literal.
    Entity(EntityUID),
    /// A non-entity value read from the store.
    Value(&'w Value),
}

/// Why an assignment is unrealisable: the atoms involved and the store facts used.
#[derive(Debug, Default)]
pub(crate) struct TheoryConflict {
    pub(crate) atoms: Vec<AtomId>,
    pub(crate) facts: Vec<(EntityUID, EntityUID)>,
}

pub(crate) struct Theory<'e, 'w> {
    enc: &'e Encoding<'w>,
    /// Atoms about each term.
    by_term: Vec<Vec<AtomId>>,
}

fn term_of(atom: &Atom) -> Option<usize> {
    match atom {
        Atom::Has(t, _)
        | Atom::Exists(t)
        | Atom::EntEq(t, _)
        | Atom::EntIn(t, _)
        | Atom::Long(t, _, _)
        | Atom::StrEq(t, _)
        | Atom::Like(t, _)
        | Atom::BoolVal(t)
        | Atom::Contains(t, _) => Some(*t),
        // Relations between two terms are checked jointly (see `relations`).
        Atom::Opaque(..) | Atom::LongRel(..) => None,
    }
}

fn value_known(v: &Value) -> Known<'_> {
    match &v.value {
        ValueKind::Lit(Literal::EntityUID(u)) => Known::Entity(u.as_ref().clone()),
        _ => Known::Value(v),
    }
}

pub(crate) fn lit_matches_value(lit: &Lit, v: &Value) -> bool {
    match (lit, &v.value) {
        (Lit::Bool(a), ValueKind::Lit(Literal::Bool(b))) => a == b,
        (Lit::Long(a), ValueKind::Lit(Literal::Long(b))) => a == b,
        (Lit::Str(a), ValueKind::Lit(Literal::String(b))) => a.as_str() == b.as_str(),
        (Lit::Entity(a), ValueKind::Lit(Literal::EntityUID(b))) => a == b.as_ref(),
        _ => false,
    }
}

impl<'e, 'w> Theory<'e, 'w> {
    pub(crate) fn new(enc: &'e Encoding<'w>) -> Self {
        let mut by_term = vec![Vec::new(); enc.terms.len()];
        for (id, atom) in enc.atoms.iter().enumerate() {
            if let Some(list) = term_of(atom).and_then(|t| by_term.get_mut(t)) {
                list.push(id);
            }
        }
        Theory { enc, by_term }
    }

    fn assigned<'a>(&'a self, t: usize, a: &'a [Option<bool>]) -> impl Iterator<Item = (&'a Atom, bool)> + 'a {
        self.assigned_ids(t, a).map(|(_, atom, v)| (atom, v))
    }

    fn assigned_ids<'a>(
        &'a self,
        t: usize,
        a: &'a [Option<bool>],
    ) -> impl Iterator<Item = (AtomId, &'a Atom, bool)> + 'a {
        self.by_term.get(t).into_iter().flatten().filter_map(move |id| {
            let v = a.get(*id).copied().flatten()?;
            Some((*id, self.enc.atoms.get(*id)?, v))
        })
    }

    /// Every assigned atom about the term and the terms it hangs from.
    fn lineage(&self, t: usize, a: &[Option<bool>]) -> Vec<AtomId> {
        let mut out = Vec::new();
        let mut cur = Some(t);
        while let Some(c) = cur {
            out.extend(self.assigned_ids(c, a).map(|(id, _, _)| id));
            cur = self
                .enc
                .terms
                .get(c)
                .and_then(|term| term.parent.as_ref().map(|(p, _)| *p));
        }
        out
    }

    /// What the store fixes about each term (indexed by term id).
    pub(crate) fn known(&self, a: &[Option<bool>]) -> Vec<Known<'w>> {
        let world = self.enc.world;
        let mut out: Vec<Known<'w>> = Vec::with_capacity(self.enc.terms.len());
        for (t, term) in self.enc.terms.iter().enumerate() {
            let inherited = match &term.parent {
                None => Known::Free,
                Some((p, attr)) => match out.get(*p) {
                    Some(Known::Entity(uid)) => match world.stored(uid) {
                        Some(e) => match e.get(attr) {
                            Some(PartialValue::Value(v)) => value_known(v),
                            Some(PartialValue::Residual(_)) => Known::Free,
                            None => Known::Absent,
                        },
                        None => Known::Free,
                    },
                    Some(Known::Value(v)) => match &v.value {
                        ValueKind::Record(map) => map.get(attr.as_str()).map_or(Known::Absent, value_known),
                        _ => Known::Free,
                    },
                    Some(Known::Absent) => Known::Absent,
                    _ => Known::Free,
                },
            };
            let k = match inherited {
                Known::Free if matches!(term.ty, Ty::Entity(_)) => self
                    .assigned(t, a)
                    .find_map(|(atom, v)| match atom {
                        Atom::EntEq(_, e) if v => Some(Known::Entity(e.clone())),
                        _ => None,
                    })
                    .unwrap_or(Known::Free),
                other => other,
            };
            out.push(k);
        }
        out
    }

    fn eval_known(&self, atom: &Atom, k: &Known<'w>) -> Option<bool> {
        let world = self.enc.world;
        match k {
            Known::Entity(uid) => match atom {
                Atom::EntEq(_, e) => Some(uid == e),
                Atom::EntIn(_, e) if uid == e => Some(true),
                Atom::EntIn(_, e) => world.stored(uid).map(|_| world.store_in(uid, e)),
                Atom::Exists(_) => world.stored(uid).map(|_| true),
                Atom::Has(_, attr) => world.stored(uid).map(|ent| ent.get(attr).is_some()),
                _ => None,
            },
            Known::Value(v) => match (atom, &v.value) {
                (Atom::Long(_, cmp, k), ValueKind::Lit(Literal::Long(x))) => Some(match cmp {
                    Cmp::Lt => x < k,
                    Cmp::Le => x <= k,
                    Cmp::Eq => x == k,
                }),
                (Atom::StrEq(_, s), ValueKind::Lit(Literal::String(x))) => Some(x.as_str() == s),
                (Atom::Like(_, p), ValueKind::Lit(Literal::String(x))) => Some(matches(p, x)),
                (Atom::BoolVal(_), ValueKind::Lit(Literal::Bool(b))) => Some(*b),
                (Atom::Contains(_, lit), ValueKind::Set(set)) => {
                    Some(set.authoritative.iter().any(|e| lit_matches_value(lit, e)))
                }
                (Atom::Has(_, attr), ValueKind::Record(map)) => Some(map.contains_key(attr.as_str())),
                _ => None,
            },
            Known::Free | Known::Absent => None,
        }
    }

    /// `Err(facts)` when no world realises the assignment; `facts` are the store facts
    /// `a in b` the refutation used.
    pub(crate) fn check(&self, a: &[Option<bool>]) -> Result<(), TheoryConflict> {
        let known = self.known(a);
        let world = self.enc.world;
        for (t, term) in self.enc.terms.iter().enumerate() {
            let k = known.get(t).cloned().unwrap_or(Known::Free);
            if !matches!(k, Known::Free | Known::Absent) {
                for (id, atom, v) in self.assigned_ids(t, a) {
                    if let Some(actual) = self.eval_known(atom, &k) {
                        if actual != v {
                            let mut facts = Vec::new();
                            if let (Known::Entity(uid), Atom::EntIn(_, e)) = (&k, atom) {
                                if actual && uid != e {
                                    facts.push((uid.clone(), e.clone()));
                                }
                            }
                            let mut atoms = self.lineage(t, a);
                            atoms.push(id);
                            return Err(TheoryConflict { atoms, facts });
                        }
                    }
                }
            }
            let free = match &k {
                Known::Free => true,
                // A literal the store does not hold: identity fixed, hierarchy free.
                Known::Entity(uid) => world.stored(uid).is_none(),
                _ => false,
            };
            if !free {
                continue;
            }
            match &term.ty {
                Ty::Entity(_) => {
                    let mut eq: Option<(AtomId, &EntityUID)> = None;
                    let mut pos: Vec<(AtomId, &EntityUID)> = Vec::new();
                    let mut neg: Vec<(AtomId, &EntityUID)> = Vec::new();
                    for (id, atom, v) in self.assigned_ids(t, a) {
                        match atom {
                            Atom::EntEq(_, e) if v => {
                                if let Some((other, x)) = eq {
                                    if x != e {
                                        return Err(TheoryConflict {
                                            atoms: vec![other, id],
                                            facts: Vec::new(),
                                        });
                                    }
                                }
                                eq = Some((id, e));
                            }
                            Atom::EntIn(_, e) if v => pos.push((id, e)),
                            Atom::EntIn(_, e) => neg.push((id, e)),
                            _ => {}
                        }
                    }
                    if let Some((eq_id, e)) = eq {
                        if let Some((n, _)) = neg.iter().find(|(_, g)| *g == e) {
                            return Err(TheoryConflict {
                                atoms: vec![eq_id, *n],
                                facts: Vec::new(),
                            });
                        }
                    }
                    for (fid, f) in &pos {
                        for (gid, g) in &neg {
                            if world.store_in(f, g) {
                                let facts = if f == g {
                                    Vec::new()
                                } else {
                                    vec![((*f).clone(), (*g).clone())]
                                };
                                let mut atoms = self.lineage(t, a);
                                atoms.extend([*fid, *gid]);
                                return Err(TheoryConflict { atoms, facts });
                            }
                        }
                    }
                }
                ty if ty.is_ordered() && long_interval(self.assigned(t, a)).is_none() => {
                    return Err(TheoryConflict {
                        atoms: self.lineage(t, a),
                        facts: Vec::new(),
                    });
                }
                Ty::Str if !str_constraints(self.assigned(t, a)).consistent() => {
                    return Err(TheoryConflict {
                        atoms: self.lineage(t, a),
                        facts: Vec::new(),
                    });
                }
                _ => {}
            }
        }
        if self.relations(a, &known, false).is_none() {
            let atoms = self
                .enc
                .atoms
                .iter()
                .enumerate()
                .filter(|(id, atom)| {
                    matches!(atom, Atom::LongRel(..) | Atom::Long(..)) && a.get(*id).copied().flatten().is_some()
                })
                .map(|(id, _)| id)
                .collect();
            return Err(TheoryConflict {
                atoms,
                facts: Vec::new(),
            });
        }
        Ok(())
    }

    /// Joint feasibility of the assigned relations between ordered terms (difference
    /// constraints, solved with Bellman-Ford) together with each term's bounds. Disequalities
    /// are ignored here, so `None` means certainly infeasible. With `prefer_small`, terms
    /// without bounds are first confined near zero, which gives readable counterexamples.
    /// Returns a value for every term that takes part in a relation.
    pub(crate) fn relations(
        &self,
        a: &[Option<bool>],
        known: &[Known<'w>],
        prefer_small: bool,
    ) -> Option<Vec<(usize, i64)>> {
        let mut edges: Vec<(usize, usize, i128)> = Vec::new();
        let mut nodes: Vec<usize> = Vec::new();
        let node = |t: usize, nodes: &mut Vec<usize>| -> usize {
            match nodes.iter().position(|x| *x == t) {
                Some(i) => i + 1,
                None => {
                    nodes.push(t);
                    nodes.len()
                }
            }
        };
        for (id, atom) in self.enc.atoms.iter().enumerate() {
            let (Atom::LongRel(t, cmp, u), Some(v)) = (atom, a.get(id).copied().flatten()) else {
                continue;
            };
            let (x, y) = (node(*t, &mut nodes), node(*u, &mut nodes));
            // edge (from, to, w) encodes  to - from <= w
            match (cmp, v) {
                (Cmp::Lt, true) => edges.push((y, x, -1)),
                (Cmp::Lt, false) => edges.push((x, y, 0)),
                (Cmp::Le, true) => edges.push((y, x, 0)),
                (Cmp::Le, false) => edges.push((x, y, -1)),
                (Cmp::Eq, true) => edges.extend([(y, x, 0), (x, y, 0)]),
                (Cmp::Eq, false) => {}
            }
        }
        if nodes.is_empty() {
            return Some(Vec::new());
        }
        for (i, t) in nodes.iter().enumerate() {
            let (lo, hi) = match known.get(*t) {
                Some(Known::Value(v)) => match &v.value {
                    ValueKind::Lit(Literal::Long(x)) => (i128::from(*x), i128::from(*x)),
                    _ => (i128::from(i64::MIN), i128::from(i64::MAX)),
                },
                _ => match long_interval(self.assigned(*t, a)) {
                    Some((lo, hi, _)) => (lo, hi),
                    None => return None,
                },
            };
            let (lo, hi) = if prefer_small {
                (lo.max(-1000.min(hi)), hi.min(1000.max(lo)))
            } else {
                (lo, hi)
            };
            edges.push((0, i + 1, hi));
            edges.push((i + 1, 0, -lo));
        }
        let n = nodes.len() + 1;
        let mut dist = vec![0i128; n];
        for round in 0..=n {
            let mut changed = false;
            for (from, to, w) in &edges {
                let (Some(df), Some(dt)) = (dist.get(*from).copied(), dist.get(*to).copied()) else {
                    continue;
                };
                if df + w < dt {
                    if let Some(slot) = dist.get_mut(*to) {
                        *slot = df + w;
                    }
                    changed = true;
                }
            }
            if !changed {
                break;
            }
            if round == n {
                return None;
            }
        }
        let base = dist.first().copied().unwrap_or(0);
        nodes
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let v = dist.get(i + 1).copied().unwrap_or(0) - base;
                i64::try_from(v).ok().map(|v| (*t, v))
            })
            .collect()
    }

    /// Long value for a fresh term, honouring its assigned bounds.
    pub(crate) fn long_for(&self, t: usize, a: &[Option<bool>]) -> Option<i64> {
        long_value(self.assigned(t, a))
    }

    /// Assigned bounds of a term, for checking a jointly solved value.
    pub(crate) fn long_allows(&self, t: usize, a: &[Option<bool>], v: i64) -> bool {
        long_interval(self.assigned(t, a)).is_some_and(|(lo, hi, excluded)| {
            let v = i128::from(v);
            lo <= v && v <= hi && !excluded.contains(&v)
        })
    }

    pub(crate) fn string_for(&self, t: usize, a: &[Option<bool>]) -> Option<String> {
        super::strings::string_witness(&str_constraints(self.assigned(t, a)))
    }

    /// Assigned atoms about a term (for the model builder).
    pub(crate) fn atoms_of<'a>(
        &'a self,
        t: usize,
        a: &'a [Option<bool>],
    ) -> impl Iterator<Item = (&'a Atom, bool)> + 'a {
        self.assigned(t, a)
    }
}

fn str_constraints<'a>(atoms: impl Iterator<Item = (&'a Atom, bool)>) -> StrConstraints<'a> {
    let mut c = StrConstraints::default();
    for (atom, v) in atoms {
        match (atom, v) {
            (Atom::StrEq(_, s), true) => c.eq.push(s.as_str()),
            (Atom::StrEq(_, s), false) => c.ne.push(s.as_str()),
            (Atom::Like(_, p), true) => c.like.push(p.as_slice()),
            (Atom::Like(_, p), false) => c.unlike.push(p.as_slice()),
            _ => {}
        }
    }
    c
}

/// The interval and excluded points of a Long term; `None` when empty.
fn long_interval<'a>(atoms: impl Iterator<Item = (&'a Atom, bool)>) -> Option<(i128, i128, BTreeSet<i128>)> {
    let mut lo = i128::from(i64::MIN);
    let mut hi = i128::from(i64::MAX);
    let mut excluded = BTreeSet::new();
    for (atom, v) in atoms {
        if let Atom::Long(_, cmp, k) = atom {
            let k = i128::from(*k);
            match (cmp, v) {
                (Cmp::Lt, true) => hi = hi.min(k - 1),
                (Cmp::Lt, false) => lo = lo.max(k),
                (Cmp::Le, true) => hi = hi.min(k),
                (Cmp::Le, false) => lo = lo.max(k + 1),
                (Cmp::Eq, true) => {
                    lo = lo.max(k);
                    hi = hi.min(k);
                }
                (Cmp::Eq, false) => {
                    excluded.insert(k);
                }
            }
        }
    }
    if lo > hi {
        return None;
    }
    let inside = excluded.range(lo..=hi).count();
    if i128::try_from(inside).ok()? > hi - lo {
        return None;
    }
    Some((lo, hi, excluded))
}

/// A value in the term's interval, as close to zero as possible, avoiding excluded points.
pub(crate) fn long_value<'a>(atoms: impl Iterator<Item = (&'a Atom, bool)>) -> Option<i64> {
    let (lo, hi, excluded) = long_interval(atoms)?;
    let start = 0i128.clamp(lo, hi);
    let mut up = start;
    while up <= hi {
        if !excluded.contains(&up) {
            return i64::try_from(up).ok();
        }
        up += 1;
    }
    let mut down = start;
    while down >= lo {
        if !excluded.contains(&down) {
            return i64::try_from(down).ok();
        }
        down -= 1;
    }
    None
}
