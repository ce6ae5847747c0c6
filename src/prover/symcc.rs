//! The second opinion: cedar-policy-symcc driving cvc5, asked only to settle what deputy's own
//! search left `Inconclusive`, and only when a solver is configured.
//!
//! SymCC decides `implies(child side, parent side)` for every request environment of the
//! schema over *every* entity store the schema allows. The bundle's store is one of those, so
//! "implies holds everywhere" confirms `Within` for deputy's store-relative question — provided
//! no policy reads attributes of an entity that may be missing, since SymCC assumes every
//! entity exists ([`existence_hazard`]). The converse does not hold: a SymCC counterexample may
//! rely on a hierarchy the store contradicts, so it becomes `Exceeds` only after it replays
//! through Cedar's `Authorizer` against the store (store facts win) plus the counterexample's
//! other entities.
//!
//! SymCC is async (tokio). The prover is synchronous and runs on blocking threads, so each
//! second opinion runs on its own thread with its own current-thread runtime: it can never
//! nest inside a caller's runtime, and never occupies an async worker.

use std::path::PathBuf;
use std::time::Duration;

use cedar_policy::{Effect, Entities, EntityUid, Policy, PolicyId, PolicySet, RequestEnv, Schema};
use cedar_policy_core::ast::{EntityType, EntityUID};
use cedar_policy_symcc::err::Error as SymccError;
use cedar_policy_symcc::solver::LocalSolver;
use cedar_policy_symcc::{CedarSymCompiler, CompiledPolicySet, Env as SymEnvCx};

use super::grant::{Grant, GrantPolicy};
use super::model::{link_one, Candidate, Replayer};
use super::run::synthetic_child;
use super::verdict::{Counterexample, SolverNote, BACKEND_SYMCC};
use super::world::World;
use super::ProveOptions;

/// Default per-query limit handed to cvc5 (`--tlimit-per`), in milliseconds.
pub const DEFAULT_SOLVER_QUERY_TIMEOUT_MS: u64 = 10_000;
/// Default limit on the whole solver process (`--tlimit`), in milliseconds.
pub const DEFAULT_SOLVER_TOTAL_TIMEOUT_MS: u64 = 60_000;
/// Extra wall-clock time granted beyond `--tlimit` before deputy stops waiting for the solver.
const WALL_CLOCK_SLACK: Duration = Duration::from_secs(2);

/// Which solver settles inconclusive proofs, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SolverConfig {
    /// The cvc5 executable: a path, or a name looked up on `PATH` (`cvc5`).
    pub program: PathBuf,
    /// Limit per satisfiability query (cvc5 `--tlimit-per`), in milliseconds.
    pub query_timeout_ms: u64,
    /// Limit on the whole solver process, all queries of one proof (cvc5 `--tlimit`), in
    /// milliseconds.
    pub total_timeout_ms: u64,
}

impl SolverConfig {
    /// cvc5 at `program`, with the default limits.
    pub fn cvc5(program: impl Into<PathBuf>) -> Self {
        SolverConfig {
            program: program.into(),
            query_timeout_ms: DEFAULT_SOLVER_QUERY_TIMEOUT_MS,
            total_timeout_ms: DEFAULT_SOLVER_TOTAL_TIMEOUT_MS,
        }
    }
}

/// What the second opinion concluded.
#[derive(Debug, Clone)]
pub enum SecondOpinion {
    /// SymCC proved implies in every request environment, for every entity store.
    Within,
    /// A SymCC counterexample that replayed through Cedar against the bundle's store.
    Exceeds(Box<Counterexample>),
    /// No conclusion: why, naming the solver.
    Unsettled(SolverNote),
}

/// One request environment, with the policy sets SymCC compares in it.
struct Query {
    env: RequestEnv,
    child_side: PolicySet,
    parent_side: PolicySet,
    child: EntityUid,
    /// Why a SymCC proof would not cover every world here (see [`existence_hazard`]).
    hazard: Option<String>,
}

/// Asks SymCC + cvc5 whether `child` is within the delegable view of `parent`.
///
/// Blocking: it spawns the solver and waits for it (at most `total_timeout_ms` plus a little).
/// Call it from a blocking context; it is safe to call from inside a tokio runtime's blocking
/// thread, since the solver's runtime lives on a thread of its own.
pub fn second_opinion(
    child: &Grant,
    parent: &Grant,
    schema: &Schema,
    entities: &Entities,
    opts: &ProveOptions,
    solver: &SolverConfig,
) -> SecondOpinion {
    let queries = match queries(child, parent, schema, entities, opts) {
        Ok(q) => q,
        Err(note) => return SecondOpinion::Unsettled(note),
    };
    let grants = Grants { child, parent };
    let joined = std::thread::scope(|s| {
        s.spawn(|| run_on_own_runtime(&queries, schema, entities, &grants, solver))
            .join()
    });
    match joined {
        Ok(answer) => answer,
        Err(_) => SecondOpinion::Unsettled(note(
            "solver_error",
            format!("the SymCC thread for solver `{}` panicked", solver.program.display()),
        )),
    }
}

/// The two grants, for replaying counterexamples.
struct Grants<'g> {
    child: &'g Grant,
    parent: &'g Grant,
}

impl<'g> Grants<'g> {
    fn replayer(&self, child_principal: EntityUid) -> Replayer<'g> {
        Replayer::new(
            self.child.policies().iter().collect(),
            self.parent
                .policies()
                .iter()
                .filter(|p| p.effect() == Effect::Forbid)
                .collect(),
            parent_view(self.parent).collect(),
            child_principal,
        )
    }
}

fn parent_view(parent: &Grant) -> impl Iterator<Item = &GrantPolicy> {
    // INVARIANT: the same filter as `Grant::delegable_view`.
    parent
        .policies()
        .iter()
        .filter(|p| p.effect() == Effect::Forbid || p.delegable())
}

fn note(code: &'static str, message: String) -> SolverNote {
    SolverNote { code, message }
}

/// The request environments to check, each with both sides linked to the child there.
fn queries(
    child: &Grant,
    parent: &Grant,
    schema: &Schema,
    entities: &Entities,
    opts: &ProveOptions,
) -> Result<Vec<Query>, SolverNote> {
    let world = World::new(schema.as_ref(), entities.as_ref());
    let mut out = Vec::new();
    let mut linked: Vec<(EntityUid, PolicySet, PolicySet, Option<String>)> = Vec::new();
    for env in schema.request_envs() {
        let principal_type: &EntityType = env.principal().as_ref();
        let child_uid: EntityUid = match &opts.child_principal {
            Some(u) => {
                let given: &EntityUID = u.as_ref();
                if !opts.any_principal && given.entity_type() != principal_type {
                    // The child cannot be the principal here: no request of its to check.
                    continue;
                }
                u.clone()
            }
            None => synthetic_child(&world, principal_type).into(),
        };
        // The sets depend only on the child, so environments of one principal type share them.
        let (child_side, parent_side, hazard) = match linked.iter().find(|(u, ..)| *u == child_uid) {
            Some((_, c, p, h)) => (c.clone(), p.clone(), h.clone()),
            None => {
                let sets = link_sides(child, parent, entities, opts, &child_uid)?;
                linked.push((child_uid.clone(), sets.0.clone(), sets.1.clone(), sets.2.clone()));
                sets
            }
        };
        out.push(Query {
            env,
            child_side,
            parent_side,
            child: child_uid,
            hazard,
        });
    }
    Ok(out)
}

/// The child side (child policies, parent forbids, only the child's requests) and the parent
/// side (the delegable view), linked to `child_uid`, with the existence hazard of the pair.
fn link_sides(
    child: &Grant,
    parent: &Grant,
    entities: &Entities,
    opts: &ProveOptions,
    child_uid: &EntityUid,
) -> Result<(PolicySet, PolicySet, Option<String>), SolverNote> {
    let mut child_side = PolicySet::new();
    for (i, p) in child.policies().iter().enumerate() {
        add_instance(&mut child_side, p, &format!("child.{i}"), child_uid)?;
    }
    let mut parent_side = PolicySet::new();
    for (i, p) in parent.policies().iter().enumerate() {
        if p.effect() == Effect::Forbid {
            add_instance(&mut child_side, p, &format!("parent-forbid.{i}"), child_uid)?;
        }
    }
    for (i, p) in parent_view(parent).enumerate() {
        add_instance(&mut parent_side, p, &format!("parent.{i}"), child_uid)?;
    }
    if !opts.any_principal {
        // A grant is evaluated on its holder's requests only (as deputy's own search does).
        let text = format!("forbid(principal, action, resource) unless {{ principal == {child_uid} }};");
        let only_child = Policy::parse(Some(PolicyId::new("deputy.only-the-child")), text).map_err(|e| {
            note(
                "solver_unsupported",
                format!("cannot restrict requests to the child: {e}"),
            )
        })?;
        child_side.add(only_child).map_err(|e| {
            note(
                "solver_unsupported",
                format!("cannot restrict requests to the child: {e}"),
            )
        })?;
    }
    let principal_exists = !opts.any_principal && entities.get(child_uid).is_some();
    let hazard = child
        .policies()
        .iter()
        .chain(parent.policies())
        .find_map(|p| existence_hazard(p, principal_exists, entities));
    Ok((child_side, parent_side, hazard))
}

/// SymCC has no notion of a missing entity: every entity it considers exists, with every
/// required attribute. deputy's question also covers requests that name entities absent from
/// the store (or attribute values pointing at them), where Cedar errs on an attribute access
/// and `has` is false. A missing entity behaves like an existing one without parents, except
/// for attributes, `has` and tags read from it; so a SymCC proof covers deputy's question when
/// no policy reads those from an entity that may be missing. Returns the first such read.
fn existence_hazard(p: &GrantPolicy, principal_exists: bool, store: &Entities) -> Option<String> {
    use cedar_policy_core::ast::{BinaryOp, Expr, ExprKind, Literal, Var};
    let exists = |e: &Expr| match e.expr_kind() {
        // The context is a record, never an entity.
        ExprKind::Var(Var::Context) | ExprKind::Record(_) => true,
        ExprKind::Var(Var::Principal) => principal_exists,
        ExprKind::Lit(Literal::EntityUID(u)) => store.get(&EntityUid::from(u.as_ref().clone())).is_some(),
        _ => false,
    };
    let condition = p.core().condition();
    let hazard = condition.subexpressions().find(|e| match e.expr_kind() {
        ExprKind::GetAttr { expr, .. } | ExprKind::HasAttr { expr, .. } => !exists(expr),
        ExprKind::ExtHasAttr { expr, attrs } => !exists(expr) || attrs.len() > 1,
        ExprKind::BinaryApp {
            op: BinaryOp::GetTag | BinaryOp::HasTag,
            arg1,
            ..
        } => !exists(arg1),
        _ => false,
    })?;
    Some(format!("`{hazard}` in {}", p.label()))
}

/// Adds `p` linked to `child` as a *static* policy: SymCC does not accept template-linked
/// policies, so the link is made in Cedar's JSON form (which substitutes the slot) and read back.
fn add_instance(set: &mut PolicySet, p: &GrantPolicy, id: &str, child: &EntityUid) -> Result<(), SolverNote> {
    let fail = |e: &dyn std::fmt::Display| {
        note(
            "solver_unsupported",
            format!("cannot instantiate {} for the solver: {e}", p.label()),
        )
    };
    let pid = PolicyId::new(id);
    let policy = match &p.static_policy {
        Some(policy) => policy.new_id(pid),
        None => {
            let mut linked = PolicySet::new();
            link_one(&mut linked, p, id, child).map_err(|e| fail(&e))?;
            let json = linked
                .policy(&pid)
                .ok_or_else(|| fail(&"the linked policy is missing"))?
                .to_json()
                .map_err(|e| fail(&e))?;
            Policy::from_json(Some(pid), json).map_err(|e| fail(&e))?
        }
    };
    set.add(policy).map_err(|e| fail(&e))
}

fn run_on_own_runtime(
    queries: &[Query],
    schema: &Schema,
    entities: &Entities,
    grants: &Grants<'_>,
    solver: &SolverConfig,
) -> SecondOpinion {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return SecondOpinion::Unsettled(note(
                "solver_error",
                format!("cannot start a runtime for the solver: {e}"),
            ))
        }
    };
    let wall = Duration::from_millis(solver.total_timeout_ms).saturating_add(WALL_CLOCK_SLACK);
    runtime.block_on(async {
        match tokio::time::timeout(wall, check(queries, schema, entities, grants, solver)).await {
            Ok(answer) => answer,
            Err(_) => SecondOpinion::Unsettled(note(
                "solver_unknown",
                format!(
                    "solver `{}` gave no answer within {} ms",
                    solver.program.display(),
                    wall.as_millis()
                ),
            )),
        }
    })
}

async fn check(
    queries: &[Query],
    schema: &Schema,
    entities: &Entities,
    grants: &Grants<'_>,
    solver: &SolverConfig,
) -> SecondOpinion {
    let program = solver.program.display();
    let mut command = tokio::process::Command::new(&solver.program);
    command
        .arg("--lang")
        .arg("smt")
        .arg(format!("--tlimit-per={}", solver.query_timeout_ms))
        .arg(format!("--tlimit={}", solver.total_timeout_ms))
        // INVARIANT: a solver abandoned on timeout must not outlive the proof.
        .kill_on_drop(true);
    let process = match LocalSolver::from_command(&mut command) {
        Ok(p) => p,
        Err(e) => {
            return SecondOpinion::Unsettled(note(
                "solver_unavailable",
                format!("cannot start solver `{program}`: {}", chain(&e)),
            ))
        }
    };
    let mut symcc = match CedarSymCompiler::new(process) {
        Ok(c) => c,
        Err(e) => return SecondOpinion::Unsettled(note("solver_error", format!("SymCC: {}", chain(&e)))),
    };
    let mut unreplayed: Option<SolverNote> = None;
    for q in queries {
        let where_ = format!(
            "action {}, principal type {}, resource type {}",
            q.env.action(),
            q.env.principal(),
            q.env.resource()
        );
        let compile = |set: &PolicySet| {
            CompiledPolicySet::compile(set, &q.env, schema).map_err(|e| {
                note(
                    "solver_unsupported",
                    format!("SymCC cannot compile the grants ({where_}): {}", chain(&e)),
                )
            })
        };
        let (child_side, parent_side) = match (compile(&q.child_side), compile(&q.parent_side)) {
            (Ok(c), Ok(p)) => (c, p),
            (Err(n), _) | (_, Err(n)) => return SecondOpinion::Unsettled(n),
        };
        match symcc
            .check_implies_with_counterexample_opt(&child_side, &parent_side)
            .await
        {
            Ok(None) => {}
            Ok(Some(cx)) => match replay(&cx, q, schema, entities, grants) {
                Ok(found) => return SecondOpinion::Exceeds(found),
                Err(why) => {
                    // Another environment may still yield one that replays.
                    unreplayed.get_or_insert(note(
                        "solver_replay_failed",
                        format!("the solver's counterexample ({where_}) did not replay through Cedar: {why}"),
                    ));
                }
            },
            Err(SymccError::SolverUnknown) => {
                return SecondOpinion::Unsettled(note(
                    "solver_unknown",
                    format!(
                        "solver `{program}` answered `unknown` ({where_}); the per-query limit is {} ms",
                        solver.query_timeout_ms
                    ),
                ))
            }
            Err(e) => {
                return SecondOpinion::Unsettled(note(
                    "solver_error",
                    format!("solver `{program}` failed ({where_}): {}", chain(&e)),
                ))
            }
        }
    }
    if let Some(n) = unreplayed {
        return SecondOpinion::Unsettled(n);
    }
    match queries.iter().find_map(|q| q.hazard.as_ref()) {
        Some(read) => SecondOpinion::Unsettled(note(
            "solver_existence",
            format!(
                "SymCC proved it only for requests whose entities all exist, and {read} reads an \
                 entity that may be missing from the store (where Cedar errs instead)"
            ),
        )),
        None => SecondOpinion::Within,
    }
}

/// Replays SymCC's counterexample against the bundle's store: store entities keep their facts,
/// the counterexample contributes only entities the store does not hold.
fn replay(
    cx: &SymEnvCx,
    q: &Query,
    schema: &Schema,
    entities: &Entities,
    grants: &Grants<'_>,
) -> Result<Box<Counterexample>, String> {
    let request = &cx.request;
    let (Some(principal), Some(action), Some(resource), Some(context)) = (
        request.principal(),
        request.action(),
        request.resource(),
        request.context(),
    ) else {
        return Err("the request is not concrete".to_owned());
    };
    let context = context
        .to_json_value()
        .map_err(|e| format!("cannot write its context as JSON: {e}"))?;
    let mut extra = Vec::new();
    let mut overridden = Vec::new();
    for e in cx.entities.iter() {
        let uid = e.uid();
        let core: &EntityUID = uid.as_ref();
        if core.is_action() {
            continue;
        }
        if let Some(stored) = entities.get(&uid) {
            if stored != e {
                overridden.push(uid.to_string());
            }
            continue;
        }
        extra.push(
            e.to_json_value()
                .map_err(|err| format!("cannot write entity `{uid}` as JSON: {err}"))?,
        );
    }
    let candidate = Candidate {
        principal: principal.clone().into(),
        action: action.clone().into(),
        resource: resource.clone().into(),
        context,
        entities: extra,
    };
    match grants.replayer(q.child.clone()).replay(&candidate, schema, entities) {
        Some(mut found) => {
            found.backend = BACKEND_SYMCC;
            Ok(Box::new(found))
        }
        None if overridden.is_empty() => {
            Err("Cedar does not allow it under the child, or allows it under the parent".to_owned())
        }
        None => Err(format!(
            "it assumes facts the bundle's entity store contradicts, about {}",
            overridden.join(", ")
        )),
    }
}

/// An error with its causes, joined by `: `.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // Transparent wrappers repeat their cause's message.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_name_the_documented_limits() {
        let c = SolverConfig::cvc5("cvc5");
        assert_eq!(c.query_timeout_ms, 10_000);
        assert_eq!(c.total_timeout_ms, 60_000);
    }

    #[test]
    fn errors_chain_their_causes() {
        let e = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(chain(&e), "no such file");
    }
}
