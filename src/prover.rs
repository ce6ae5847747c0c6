//! The containment prover: is a child grant within its parent's delegable view?
//!
//! For every request environment of the schema (action, principal type, resource type), and
//! for each child permit, the prover searches for a request that the permit allows, that no
//! child or parent forbid denies, and that no permit of the parent's delegable view allows.
//! Conditions are compiled exactly where Cedar's semantics are modelled (including errors
//! and short-circuiting) and abstracted where they are not; the search only rejects what
//! no world can realise. So "no such request" is a proof (`Within`), while a found request
//! is only reported (`Exceeds`) after Cedar's own `Authorizer` agrees on it. Everything else
//! is `Inconclusive`. See `docs/PROVER.md`.
//!
//! When `ProveOptions::solver` names a solver, an `Inconclusive` answer is handed to the
//! second opinion (`symcc`: cedar-policy-symcc driving cvc5), which may settle it as `Within`
//! (proved for every entity store) or `Exceeds` (a replayed counterexample).

mod cli;
mod encode;
mod error;
mod formula;
mod grant;
mod index;
mod model;
mod run;
mod solve;
mod symcc;
mod verdict;
mod world;

use std::collections::HashSet;
use std::sync::Mutex;

use cedar_policy::{Entities, EntityUid, Schema, Validator};

pub use cli::{run_prove, run_prove_with};
pub use error::{
    ForeignPrincipal, GrantError, GrantRole, InternalError, InvalidGrant, ParseGrant, ResourceSlot, ValidationIssue,
};
pub use grant::{
    foreign_principal, shape, validate_grant, Grant, DELEGABLE_ANNOTATION, MAX_GRANT_NESTING, MAX_GRANT_OPERATORS,
};
pub use symcc::{
    second_opinion, SecondOpinion, SolverConfig, DEFAULT_SOLVER_QUERY_TIMEOUT_MS, DEFAULT_SOLVER_TOTAL_TIMEOUT_MS,
};
pub use verdict::{
    Counterexample, Coverage, Evidence, Inconclusive, SolverNote, Verdict, BACKEND_DEPUTY, BACKEND_SYMCC,
};

use grant::validate_with;
use run::Run;

/// Default number of search steps per (environment, child permit) problem.
pub const DEFAULT_MAX_STEPS: usize = 20_000;
/// Default number of candidate counterexamples replayed per problem before giving up.
pub const DEFAULT_MAX_CANDIDATES: usize = 16;

/// Knobs for `prove`.
#[derive(Debug, Clone)]
pub struct ProveOptions {
    /// The entity `?principal` is linked to (the child agent). When `None`, a new entity of
    /// each principal type is assumed, whose id appears neither in the store nor in the
    /// grants.
    pub child_principal: Option<EntityUid>,
    /// Search steps per problem before answering `Inconclusive` (budget exhausted).
    pub max_steps: usize,
    /// Candidate counterexamples replayed per problem before answering `Inconclusive`.
    pub max_candidates: usize,
    /// Consider requests from any principal, not only from the child agent. Grants are
    /// evaluated on the requests of the agent holding them, so the default is `false`.
    pub any_principal: bool,
    /// The SMT second opinion (SymCC + cvc5) asked to settle `Inconclusive` answers. `None`
    /// (the default): deputy answers alone and starts no process.
    pub solver: Option<SolverConfig>,
}

impl Default for ProveOptions {
    fn default() -> Self {
        ProveOptions {
            child_principal: None,
            max_steps: DEFAULT_MAX_STEPS,
            max_candidates: DEFAULT_MAX_CANDIDATES,
            any_principal: false,
            solver: None,
        }
    }
}

/// Decides whether `child` is within the delegable view of `parent`.
///
/// Both grants are first validated strictly against `schema`; an invalid grant is an
/// error, not a verdict. `entities` is the bundle's entity store: the parents and
/// attributes of the entities it holds are facts, any other entity is arbitrary.
pub fn prove(
    child: &Grant,
    parent: &Grant,
    schema: &Schema,
    entities: &Entities,
    opts: &ProveOptions,
) -> Result<Verdict, GrantError> {
    Prover::new(schema, entities).prove(child, parent, opts)
}

/// A prover bound to one schema and entity store (one bundle snapshot), so repeated proofs
/// share the validator instead of rebuilding it.
pub struct Prover<'a> {
    schema: &'a Schema,
    entities: &'a Entities,
    validator: Validator,
    /// Digests of grants that already passed strict validation against this schema (a
    /// parent typically spawns many children).
    validated: Mutex<HashSet<String>>,
}

impl<'a> Prover<'a> {
    /// Prepares proofs against `schema` and the bundle's entity store `entities`.
    pub fn new(schema: &'a Schema, entities: &'a Entities) -> Self {
        Prover {
            schema,
            entities,
            validator: Validator::new(schema.clone()),
            validated: Mutex::new(HashSet::new()),
        }
    }

    fn validate(&self, grant: &Grant, role: GrantRole) -> Result<(), GrantError> {
        let digest = grant.digest();
        if self.validated.lock().is_ok_and(|done| done.contains(&digest)) {
            return Ok(());
        }
        validate_with(grant, &self.validator, role)?;
        if let Ok(mut done) = self.validated.lock() {
            done.insert(digest);
        }
        Ok(())
    }

    /// Same as the free function [`prove`].
    pub fn prove(&self, child: &Grant, parent: &Grant, opts: &ProveOptions) -> Result<Verdict, GrantError> {
        self.validate(child, GrantRole::Child)?;
        self.validate(parent, GrantRole::Parent)?;
        let verdict = Run::new(child, parent, self.schema, self.entities, opts).run()?;
        Ok(match (verdict, &opts.solver) {
            (Verdict::Inconclusive(alone), Some(solver)) => settle(
                alone,
                second_opinion(child, parent, self.schema, self.entities, opts, solver),
            ),
            (verdict, _) => verdict,
        })
    }
}

/// Combines deputy's `Inconclusive` with the second opinion's answer.
fn settle(alone: Inconclusive, second: SecondOpinion) -> Verdict {
    match second {
        SecondOpinion::Within => Verdict::Within(Evidence {
            backend: BACKEND_SYMCC,
            permits: Vec::new(),
            settled: Some(alone),
        }),
        SecondOpinion::Exceeds(cx) => Verdict::Exceeds(cx),
        SecondOpinion::Unsettled(note) => Verdict::Inconclusive(Inconclusive {
            solver: Some(note),
            ..alone
        }),
    }
}
