//! One proof: request environments, problems per child permit, search, evidence.
//!
//! The pruning here is one-sided on purpose: leaving a constraint out only admits more
//! candidates, so an unsatisfiable problem is still a proof, and every candidate is replayed
//! through Cedar against every policy that could apply before it is called a counterexample.

use std::collections::{BTreeSet, HashMap};

use cedar_policy::{Effect, Entities, EntityUid, Schema};
use cedar_policy_core::ast::{Eid, EntityReference, EntityType, EntityUID, PrincipalOrResourceConstraint};

use super::encode::{self, Atom, Encoding, Env, Ty};
use super::error::GrantError;
use super::formula::Formula;
use super::grant::{Grant, GrantPolicy};
use super::index::{AxiomIndex, Facts, Related};
use super::model::{concretize, Replayer};
use super::solve::{Constraint, ModelVerdict, Origin, Outcome, Search};
use super::verdict::{Counterexample, Coverage, Evidence, Inconclusive, Verdict};
use super::world::World;
use super::ProveOptions;

pub(crate) struct Run<'a> {
    schema: &'a Schema,
    entities: &'a Entities,
    opts: &'a ProveOptions,
    world: World<'a>,
    child_permits: Vec<&'a GrantPolicy>,
    child_forbids: Vec<&'a GrantPolicy>,
    parent_forbids: Vec<&'a GrantPolicy>,
    parent_permits: Vec<&'a GrantPolicy>,
    child_all: Vec<&'a GrantPolicy>,
    parent_view: Vec<&'a GrantPolicy>,
}

#[derive(Default)]
struct Acc {
    applies: bool,
    covered_by: BTreeSet<usize>,
    child_forbids: BTreeSet<usize>,
    parent_forbids: BTreeSet<usize>,
    facts: BTreeSet<String>,
}

fn resource_target(p: &GrantPolicy) -> Option<&EntityUID> {
    scope_target(p.core().resource_constraint().as_inner())
}

/// The entity a scope constraint names, if any.
fn scope_target(c: &PrincipalOrResourceConstraint) -> Option<&EntityUID> {
    match c {
        PrincipalOrResourceConstraint::Eq(EntityReference::EUID(u))
        | PrincipalOrResourceConstraint::In(EntityReference::EUID(u))
        | PrincipalOrResourceConstraint::IsIn(_, EntityReference::EUID(u)) => Some(u.as_ref()),
        _ => None,
    }
}

impl<'a> Run<'a> {
    pub(crate) fn new(
        child: &'a Grant,
        parent: &'a Grant,
        schema: &'a Schema,
        entities: &'a Entities,
        opts: &'a ProveOptions,
    ) -> Self {
        let split = |g: &'a Grant, effect: Effect| -> Vec<&'a GrantPolicy> {
            g.policies().iter().filter(|p| p.effect() == effect).collect()
        };
        // INVARIANT: the same filter as `Grant::delegable_view`, without cloning policies.
        let parent_view: Vec<&GrantPolicy> = parent
            .policies()
            .iter()
            .filter(|p| p.effect() == Effect::Forbid || p.delegable())
            .collect();
        Run {
            schema,
            entities,
            opts,
            world: World::new(schema.as_ref(), entities.as_ref()),
            child_permits: split(child, Effect::Permit),
            child_forbids: split(child, Effect::Forbid),
            parent_forbids: split(parent, Effect::Forbid),
            parent_permits: parent_view
                .iter()
                .copied()
                .filter(|p| p.effect() == Effect::Permit)
                .collect(),
            child_all: child.policies().iter().collect(),
            parent_view,
        }
    }

    fn envs(&self, child: &Option<EntityUID>) -> Vec<Env> {
        let schema = self.world.schema;
        let mut actions: Vec<_> = schema
            .action_ids()
            .filter_map(|a| a.context_type().map(|ctx| (a, ctx)))
            .collect();
        actions.sort_by_key(|(a, _)| a.name().to_string());
        let mut out = Vec::new();
        for (action, ctx) in actions {
            let mut principals: Vec<&EntityType> = action.applies_to_principals().collect();
            principals.sort_by_key(|t| t.to_string());
            let mut resources: Vec<&EntityType> = action.applies_to_resources().collect();
            resources.sort_by_key(|t| t.to_string());
            for p in &principals {
                for r in &resources {
                    let child = child.clone().unwrap_or_else(|| self.synthetic_child(p));
                    out.push(Env {
                        principal_type: (*p).clone(),
                        action: action.name().clone(),
                        resource_type: (*r).clone(),
                        child,
                        context: Ty::from_schema(ctx),
                    });
                }
            }
        }
        out
    }

    fn synthetic_child(&self, ty: &EntityType) -> EntityUID {
        synthetic_child(&self.world, ty)
    }

    pub(crate) fn run(self) -> Result<Verdict, GrantError> {
        let child_uid: Option<EntityUID> = self.opts.child_principal.clone().map(EntityUID::from);
        let envs = self.envs(&child_uid);
        let mut acc: Vec<Acc> = self.child_permits.iter().map(|_| Acc::default()).collect();
        let mut inconclusive: Option<Inconclusive> = None;
        let mut replayers: HashMap<String, Replayer<'a>> = HashMap::new();
        let world = &self.world;
        // A policy whose resource scope names a stored entity unrelated (in the store) to the
        // one the child permit names is irrelevant to it. Dropping a constraint only admits
        // more candidates, so a proof without it is still a proof, and every candidate is
        // replayed against all policies anyway.
        let related = Related::new(
            world,
            self.child_all
                .iter()
                .chain(&self.parent_view)
                .chain(&self.parent_forbids)
                .filter_map(|p| resource_target(p)),
        );
        let target = |p: &GrantPolicy| resource_target(p).and_then(|u| related.id(u));
        let parent_targets: Vec<Option<usize>> = self.parent_permits.iter().map(|p| target(p)).collect();
        // Likewise a parent permit that no request of the child permit can satisfy (string
        // facts on the resource's attributes, or the stored resource the child permit pins).
        let child_facts: Vec<Facts> = self.child_permits.iter().map(|p| Facts::of(p)).collect();
        let parent_facts: Vec<Facts> = self.parent_permits.iter().map(|p| Facts::of(p)).collect();
        for env in envs {
            let child = env.child.clone();
            let mut enc = Encoding::new(world, env);
            // The grant is the authority of the child: its requests are the child's.
            let who = if self.opts.any_principal {
                Formula::True
            } else {
                enc.ent_eq(encode::PRINCIPAL, &child)
            };
            if who == Formula::False {
                continue;
            }
            let mut permits: Vec<(usize, Formula)> = Vec::new();
            for (j, p) in self.child_permits.iter().enumerate() {
                if enc.scope_applies(p) {
                    let f = enc.policy(p, "child");
                    if f != Formula::False {
                        permits.push((j, f));
                    }
                }
            }
            if permits.is_empty() {
                continue;
            }
            // Each constraint with the entity its resource scope names (for pruning). Owned
            // here and borrowed by the problem of every child permit of the environment.
            let mut base: Vec<(Formula, Origin, Option<usize>)> = vec![(who, Origin::Axiom, None)];
            for (i, p) in self.child_forbids.iter().enumerate() {
                if enc.scope_applies(p) {
                    let f = enc.policy(p, "child");
                    base.push((f.not(), Origin::ChildForbid(i), target(p)));
                }
            }
            for (i, p) in self.parent_forbids.iter().enumerate() {
                if enc.scope_applies(p) {
                    let f = enc.policy(p, "parent");
                    base.push((f.not(), Origin::ParentForbid(i), target(p)));
                }
            }
            let mut parent_formulas: Vec<Option<Formula>> = vec![None; self.parent_permits.len()];
            let mut axiom_index = AxiomIndex::default();
            let mut chosen: Vec<usize> = Vec::new();
            let mut seed = Vec::new();
            for (j, cp) in permits {
                let Some(slot) = acc.get_mut(j) else { continue };
                slot.applies = true;
                let child_target = self.child_permits.get(j).and_then(|p| target(p));
                let mut result = None;
                for pruned in [true, false] {
                    chosen.clear();
                    for (l, p) in self.parent_permits.iter().enumerate() {
                        if !enc.scope_applies(p) {
                            continue;
                        }
                        if pruned
                            && (related.unrelated(child_target, parent_targets.get(l).copied().flatten())
                                || child_facts
                                    .get(j)
                                    .zip(parent_facts.get(l))
                                    .is_some_and(|(c, p)| c.disjoint(p, world)))
                        {
                            continue;
                        }
                        // Encoded and negated once per environment, shared by its child permits.
                        if let Some(f @ None) = parent_formulas.get_mut(l) {
                            *f = Some(enc.policy(p, "parent").not());
                        }
                        chosen.push(l);
                    }
                    axiom_index.update(&enc.axioms, enc.atoms.len());
                    let mut constraints = vec![Constraint {
                        formula: &cp,
                        origin: Origin::ChildPermit(j),
                    }];
                    constraints.extend(chosen.iter().filter_map(|&l| {
                        parent_formulas
                            .get(l)
                            .and_then(Option::as_ref)
                            .map(|formula| Constraint {
                                formula,
                                origin: Origin::ParentPermit(l),
                            })
                    }));
                    constraints.extend(
                        base.iter()
                            .filter(|(_, _, target)| !pruned || !related.unrelated(child_target, *target))
                            .map(|(formula, origin, _)| Constraint {
                                formula,
                                origin: *origin,
                            }),
                    );
                    seed.clear();
                    for c in &constraints {
                        c.formula.atom_list(&mut seed);
                    }
                    constraints.extend(axiom_index.relevant(seed.iter().copied()).into_iter().filter_map(|i| {
                        enc.axioms.get(i).map(|formula| Constraint {
                            formula,
                            origin: Origin::Axiom,
                        })
                    }));
                    let outcome = self.solve(&enc, constraints, slot, &mut replayers)?;
                    let done = !matches!(outcome, Solved::Unsure(_)) || !pruned;
                    result = Some(outcome);
                    if done {
                        break;
                    }
                }
                match result {
                    Some(Solved::Exceeds(cx)) => return Ok(Verdict::Exceeds(cx)),
                    Some(Solved::Unsure(i)) => {
                        inconclusive.get_or_insert(i);
                    }
                    Some(Solved::Within) | None => {}
                }
            }
        }
        if let Some(i) = inconclusive {
            return Ok(Verdict::Inconclusive(i));
        }
        Ok(Verdict::Within(self.evidence(acc)))
    }

    /// The policy sets a candidate of this environment is replayed against. Policies whose
    /// scope cannot match the environment are left out: they could not change a decision.
    fn replayer<'r>(
        &self,
        replayers: &'r mut HashMap<String, Replayer<'a>>,
        enc: &Encoding<'_>,
    ) -> Result<&'r Replayer<'a>, GrantError> {
        let env = &enc.env;
        let key = format!(
            "{} {} {} {}",
            env.child, env.action, env.principal_type, env.resource_type
        );
        if !replayers.contains_key(&key) {
            let keep = |ps: &[&'a GrantPolicy]| -> Vec<&'a GrantPolicy> {
                ps.iter().copied().filter(|p| enc.scope_applies(p)).collect()
            };
            let r = Replayer::new(
                keep(&self.child_all),
                keep(&self.parent_forbids),
                keep(&self.parent_view),
                EntityUid::from(env.child.clone()),
            );
            replayers.insert(key.clone(), r);
        }
        replayers
            .get(&key)
            .ok_or_else(|| GrantError::internal("replayer cache".to_owned()))
    }

    fn solve(
        &self,
        enc: &Encoding<'_>,
        constraints: Vec<Constraint<'_>>,
        acc: &mut Acc,
        replayers: &mut HashMap<String, Replayer<'a>>,
    ) -> Result<Solved, GrantError> {
        let (schema, entities) = (self.schema, self.entities);
        let (max_steps, max_candidates) = (self.opts.max_steps, self.opts.max_candidates);
        let mut found = None;
        let mut failure: Option<GrantError> = None;
        let mut blamed: BTreeSet<usize> = BTreeSet::new();
        let mut search = Search::new(enc, constraints, max_steps, max_candidates);
        let outcome = search.run(&mut |enc, assignment| {
            // Built on the first candidate only: most proofs never need it.
            let replayer = match self.replayer(replayers, enc) {
                Ok(r) => r,
                Err(e) => {
                    failure = Some(e);
                    return ModelVerdict::Reject;
                }
            };
            let replayed = concretize(enc, assignment).and_then(|cand| replayer.replay(&cand, schema, entities));
            match replayed {
                Some(cx) => {
                    found = Some(cx);
                    ModelVerdict::Accept
                }
                None => {
                    // The opaque expressions this candidate leaned on are the likely culprits.
                    for (id, atom) in enc.atoms.iter().enumerate() {
                        if let (Atom::Opaque(i, _), Some(Some(_))) = (atom, assignment.get(id)) {
                            blamed.insert(*i);
                        }
                    }
                    ModelVerdict::Reject
                }
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(match outcome {
            Outcome::Unsat => {
                for o in &search.conflicts {
                    match o {
                        Origin::ParentPermit(l) => {
                            acc.covered_by.insert(*l);
                        }
                        Origin::ChildForbid(i) => {
                            acc.child_forbids.insert(*i);
                        }
                        Origin::ParentForbid(i) => {
                            acc.parent_forbids.insert(*i);
                        }
                        Origin::ChildPermit(_) | Origin::Axiom => {}
                    }
                }
                for (a, b) in &search.facts {
                    acc.facts.insert(format!("{a} in {b}"));
                }
                Solved::Within
            }
            Outcome::Found => match found {
                Some(cx) => Solved::Exceeds(Box::new(cx)),
                None => Solved::Unsure(unsure(
                    enc,
                    &blamed,
                    "replay_failed",
                    "internal: lost the counterexample",
                )),
            },
            Outcome::OnlyRejected if blamed.is_empty() => Solved::Unsure(unsure(
                enc,
                &blamed,
                "replay_failed",
                "a candidate counterexample did not replay through Cedar",
            )),
            Outcome::OnlyRejected => Solved::Unsure(unsure(
                enc,
                &blamed,
                "unsupported_construct",
                "could not decide: the grants use expressions outside the prover's fragment",
            )),
            Outcome::Budget => Solved::Unsure(unsure(
                enc,
                &blamed,
                "budget_exhausted",
                "the search budget was exhausted before a proof or a replayable counterexample was found",
            )),
        })
    }

    fn evidence(&self, acc: Vec<Acc>) -> Evidence {
        let label = |ps: &[&GrantPolicy], i: usize, role: &str| {
            ps.get(i).map(|p| format!("{role} {}", p.label())).unwrap_or_default()
        };
        Evidence {
            backend: super::verdict::BACKEND_DEPUTY,
            settled: None,
            permits: self
                .child_permits
                .iter()
                .zip(acc)
                .map(|(p, a)| Coverage {
                    child_policy: p.name.clone(),
                    line: p.line,
                    applies: a.applies,
                    covered_by: a
                        .covered_by
                        .iter()
                        .map(|l| label(&self.parent_permits, *l, "parent permit"))
                        .collect(),
                    narrowed_by: a
                        .child_forbids
                        .iter()
                        .map(|i| label(&self.child_forbids, *i, "child forbid"))
                        .chain(
                            a.parent_forbids
                                .iter()
                                .map(|i| label(&self.parent_forbids, *i, "parent forbid")),
                        )
                        .collect(),
                    hierarchy_facts: a.facts.into_iter().collect(),
                })
                .collect(),
        }
    }
}

/// The new agent `?principal` stands for when no child principal is given: an entity of type
/// `ty` whose id (`child`, else `child-N`) is not in the store.
pub(crate) fn synthetic_child(world: &World<'_>, ty: &EntityType) -> EntityUID {
    let mut n = 0usize;
    loop {
        let eid = if n == 0 {
            "child".to_owned()
        } else {
            format!("child-{n}")
        };
        let uid = EntityUID::from_components(ty.clone(), Eid::new(eid), None);
        if world.stored(&uid).is_none() {
            return uid;
        }
        n += 1;
    }
}

enum Solved {
    Within,
    Exceeds(Box<Counterexample>),
    Unsure(Inconclusive),
}

fn unsure(enc: &Encoding<'_>, blamed: &BTreeSet<usize>, code: &'static str, message: &str) -> Inconclusive {
    let opaque: Vec<&encode::OpaqueExpr> = if blamed.is_empty() {
        enc.opaque.iter().collect()
    } else {
        blamed.iter().filter_map(|i| enc.opaque.get(*i)).collect()
    };
    Inconclusive {
        code,
        message: format!(
            "{message} (action {}, principal type {}, resource type {})",
            enc.env.action, enc.env.principal_type, enc.env.resource_type
        ),
        policy: opaque.first().map(|o| o.policy.clone()),
        constructs: opaque.iter().map(|o| format!("`{}` in {}", o.text, o.policy)).collect(),
        solver: None,
    }
}
