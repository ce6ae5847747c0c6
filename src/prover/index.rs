//! Indexes that keep the per-permit work small on large parents: which resource scopes are
//! related in the store, which policies cannot hold together (`disjoint`), and which axioms
//! touch which atoms.

mod disjoint;

use std::collections::HashMap;

use cedar_policy_core::ast::EntityUID;

pub(crate) use disjoint::Facts;

use super::formula::{AtomId, Formula};
use super::world::World;

/// Relatedness, in the store, of the entities named by resource scopes: `a` and `b` are
/// related when one is (in the store) inside the other. Computed once per proof over the
/// distinct scope targets, so the pairwise test is a table lookup.
pub(crate) struct Related {
    ids: HashMap<EntityUID, usize>,
    stored: Vec<bool>,
    /// related[i][j]
    related: Vec<Vec<bool>>,
}

impl Related {
    pub(crate) fn new<'u>(world: &World<'_>, targets: impl IntoIterator<Item = &'u EntityUID>) -> Self {
        let mut ids: HashMap<EntityUID, usize> = HashMap::new();
        let mut uids: Vec<&EntityUID> = Vec::new();
        for t in targets {
            if !ids.contains_key(t) {
                ids.insert(t.clone(), uids.len());
                uids.push(t);
            }
        }
        let n = uids.len();
        let mut related = vec![vec![false; n]; n];
        let mut stored = vec![false; n];
        for (i, uid) in uids.iter().enumerate() {
            if let Some(row) = related.get_mut(i) {
                if let Some(cell) = row.get_mut(i) {
                    *cell = true;
                }
            }
            let Some(entity) = world.stored(uid) else {
                continue;
            };
            if let Some(s) = stored.get_mut(i) {
                *s = true;
            }
            for anc in entity.ancestors() {
                if let Some(&j) = ids.get(anc) {
                    for (x, y) in [(i, j), (j, i)] {
                        if let Some(cell) = related.get_mut(x).and_then(|r| r.get_mut(y)) {
                            *cell = true;
                        }
                    }
                }
            }
        }
        Related { ids, stored, related }
    }

    /// The index of a scope target given to `new`.
    pub(crate) fn id(&self, uid: &EntityUID) -> Option<usize> {
        self.ids.get(uid).copied()
    }

    /// True when both are stored entities and neither is inside the other.
    pub(crate) fn unrelated(&self, a: Option<usize>, b: Option<usize>) -> bool {
        let (Some(i), Some(j)) = (a, b) else {
            return false;
        };
        let stored = |k: usize| self.stored.get(k).copied().unwrap_or(false);
        stored(i) && stored(j) && !self.related.get(i).and_then(|r| r.get(j)).copied().unwrap_or(true)
    }
}

/// The axioms that share atoms, transitively, with a set of constraints. Kept for a whole
/// environment and brought up to date as its encoding grows.
#[derive(Default)]
pub(crate) struct AxiomIndex {
    by_atom: Vec<Vec<usize>>,
    atoms_of: Vec<Vec<AtomId>>,
}

impl AxiomIndex {
    /// Indexes the axioms added since the last call (`axioms` only ever grows).
    pub(crate) fn update(&mut self, axioms: &[Formula], atom_count: usize) {
        if self.by_atom.len() < atom_count {
            self.by_atom.resize_with(atom_count, Vec::new);
        }
        for (i, ax) in axioms.iter().enumerate().skip(self.atoms_of.len()) {
            let mut atoms = Vec::new();
            ax.atom_list(&mut atoms);
            for a in &atoms {
                if let Some(list) = self.by_atom.get_mut(*a) {
                    list.push(i);
                }
            }
            self.atoms_of.push(atoms);
        }
    }

    /// Indices of the axioms reachable from the given atoms.
    pub(crate) fn relevant(&self, seed: impl IntoIterator<Item = AtomId>) -> Vec<usize> {
        let mut seen_atom = vec![false; self.by_atom.len()];
        let mut seen_axiom = vec![false; self.atoms_of.len()];
        let mut stack: Vec<AtomId> = seed.into_iter().collect();
        let mut out = Vec::new();
        while let Some(a) = stack.pop() {
            match seen_atom.get_mut(a) {
                Some(seen) if !*seen => *seen = true,
                _ => continue,
            }
            for &ax in self.by_atom.get(a).into_iter().flatten() {
                match seen_axiom.get_mut(ax) {
                    Some(seen) if !*seen => *seen = true,
                    _ => continue,
                }
                out.push(ax);
                stack.extend(self.atoms_of.get(ax).into_iter().flatten().copied());
            }
        }
        out.sort_unstable();
        out
    }
}
