//! `deputy plan`: what changing one bundle into another does, before it ships.
//!
//! Authority is compared by deputy's prover, not by sampling: "widens" asks whether some
//! request is allowed by the new admin policies and denied by the old ones (the new set proved
//! within the old one, for any principal, under the new schema and entity store). A `yes` comes
//! with that request, replayed through Cedar's own authorizer; a `no` is a proof; anything the
//! prover cannot settle is `unknown`, never `no`. "narrows" is the same question the other way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use cedar_policy::{EntityUid, Policy};
use serde::Serialize;
use serde_json::Value;

use super::cases::{self, Answer, Located};
use crate::bundle::Bundle;
use crate::decider::Decider;
use crate::prover::{self, Grant, ProveOptions, SolverConfig, Verdict};

/// What changed in one part of the bundle, by name (policy id, entity uid, agent id).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Changes {
    /// Present only in the new bundle.
    pub added: Vec<String>,
    /// Present only in the old bundle.
    pub removed: Vec<String>,
    /// In both, different.
    pub changed: Vec<String>,
}

impl Changes {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    fn of<T: PartialEq>(old: &BTreeMap<String, T>, new: &BTreeMap<String, T>) -> Changes {
        let mut c = Changes::default();
        for (k, v) in new {
            match old.get(k) {
                None => c.added.push(k.clone()),
                Some(o) if o != v => c.changed.push(k.clone()),
                Some(_) => {}
            }
        }
        c.removed = old.keys().filter(|k| !new.contains_key(*k)).cloned().collect();
        c
    }
}

/// The answer to "does the change widen (or narrow) authority?".
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum Comparison {
    /// Proved: no such request exists.
    No,
    /// Such a request, replayed through Cedar's authorizer.
    Yes {
        /// The request (and the policies that allowed and denied it).
        request: Box<prover::Counterexample>,
    },
    /// Not settled either way (the prover's reason, or why the sets could not be compared).
    Unknown {
        /// Why.
        why: String,
    },
}

impl Comparison {
    /// The answer when `moved` (the schema or the entities) changed too: unknown, saying what
    /// the policies alone do over the new bundle's.
    fn over(self, moved: Option<&str>) -> Comparison {
        let Some(moved) = moved else { return self };
        let alone = match &self {
            Comparison::No => "they do not (proved)".to_owned(),
            Comparison::Yes { request: r } => format!(
                "they do ({} may {} {}, allowed by [{}])",
                r.principal,
                r.action,
                r.resource,
                r.allowed_by.join(", ")
            ),
            Comparison::Unknown { why } => format!("unknown ({why})"),
        };
        Comparison::Unknown {
            why: format!(
                "{moved} changed, and a proof holds over one schema and entity store; over the new bundle's, the policies alone: {alone}"
            ),
        }
    }

    /// Names each policy of a found request by its bundle file and line (the prover numbers the
    /// lines of the text it was given): `allowing` holds the policies that allowed it,
    /// `denying` those that denied it.
    fn located(mut self, allowing: &Bundle, denying: &Bundle) -> Comparison {
        if let Comparison::Yes { request } = &mut self {
            for p in &mut request.allowed_by {
                *p = locate(p, allowing);
            }
            for p in &mut request.denied_by {
                *p = locate(p, denying);
            }
        }
        self
    }

    fn of(result: Result<Verdict, String>) -> Comparison {
        match result {
            Ok(Verdict::Within(_)) => Comparison::No,
            Ok(Verdict::Exceeds(cx)) => Comparison::Yes { request: cx },
            Ok(Verdict::Inconclusive(i)) => Comparison::Unknown {
                why: format!("{}: {}", i.code, i.message),
            },
            Err(why) => Comparison::Unknown { why },
        }
    }
}

/// The admin policies compared both ways.
#[derive(Debug, Clone, Serialize)]
pub struct Authority {
    /// Does the new bundle allow a request the old one denies?
    pub widens: Comparison,
    /// Does the old bundle allow a request the new one denies?
    pub narrows: Comparison,
}

/// A grant the bundle ships for one of its agents (`grants/<id>.cedar`), changed.
#[derive(Debug, Clone, Serialize)]
pub struct GrantChange {
    /// The agent.
    pub agent: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// For a changed grant: does the new grant allow the agent something the old one did not?
    #[serde(skip_serializing_if = "Option::is_none")]
    pub widens: Option<Comparison>,
}

/// One case run against both bundles.
#[derive(Debug, Clone, Serialize)]
pub struct CaseChange {
    /// `file#index (name)`.
    pub case: String,
    /// What the case expects.
    pub expected: String,
    /// The old bundle's answer.
    pub before: Answer,
    /// The new bundle's answer.
    pub after: Answer,
    /// Whether the new answer is what the case expects.
    pub passes: bool,
}

/// What installing the new bundle does to a pod's live agents (`--state DIR`): a consistent copy
/// of the pod's state (`VACUUM INTO`, the original is only read), opened by the sidecar's own
/// code, with the new bundle installed on it as a reload would install it, then re-proved.
#[derive(Debug, Clone, Serialize)]
pub struct LiveChange {
    /// Agents live in the state before the install.
    pub live_agents: usize,
    /// Why the sidecar would refuse the new bundle (keeping the old one serving); empty when it
    /// installs.
    pub refused: Vec<crate::bundle::Problem>,
    /// What the install writes to the audit trail (grants and attributes of bundle agents
    /// replaced, agents revoked because the bundle no longer ships their grant, with their
    /// subtrees).
    pub events: Vec<Value>,
    /// Live grants that no longer prove within their parent's delegable view under the new
    /// bundle (the run-time intersection still bounds them).
    pub drift: Vec<Value>,
}

/// Installs `new` on a copy of the state in `state_dir`, as a sidecar's reload would.
pub fn live_change(new: Bundle, state_dir: &Path, now: i64) -> Result<LiveChange, String> {
    use crate::delegation::{Caller, Delegation, Limits, STATE_FILE};
    let source = state_dir.join(STATE_FILE);
    if !source.is_file() {
        return Err(format!("no state database at `{}`", source.display()));
    }
    let copy = TempDir::new()?;
    {
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(&source, flags)
            .map_err(|e| format!("cannot open `{}`: {e}", source.display()))?;
        let target = copy.0.join(STATE_FILE);
        conn.execute("VACUUM INTO ?1", [target.to_string_lossy()])
            .map_err(|e| format!("cannot copy `{}`: {e}", source.display()))?;
    }
    let live = std::sync::Arc::new(crate::snapshot::Live::default());
    let d = Delegation::open(
        &copy.0,
        std::sync::Arc::clone(&live),
        None,
        &std::collections::HashMap::new(),
        Limits::default(),
    )?;
    let live_agents = live.write()?.registry().iter().filter(|a| a.is_live(now)).count();
    let trail = |d: &Delegation| d.audit(&Caller::Admin, None, None, usize::MAX).map_err(|e| e.message);
    let before = trail(&d)?.len();
    let refused = match d.install_bundle(std::sync::Arc::new(new), now) {
        Ok(()) => Vec::new(),
        Err(problems) => problems,
    };
    let (events, drift) = if refused.is_empty() {
        d.reprove_all(now);
        let events = trail(&d)?
            .into_iter()
            .skip(before)
            .filter_map(|r| serde_json::to_value(r).ok())
            .filter(|r| r["event"] != "drift")
            .collect();
        let drift = d.drift().agents.iter().filter_map(|a| serde_json::to_value(a).ok()).collect();
        (events, drift)
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(LiveChange {
        live_agents,
        refused,
        events,
        drift,
    })
}

/// A directory of its own under the system's temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, String> {
        let dir = std::env::temp_dir().join(format!("deputy-plan-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything `deputy plan` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The old bundle's policy version.
    pub from_version: String,
    /// The new bundle's policy version.
    pub to_version: String,
    /// Whether any schema file's text changed.
    pub schema_changed: bool,
    /// Admin policies, by id (compared as Cedar parsed them: comments and layout do not count).
    pub policies: Changes,
    /// Entities, by uid (attributes and parents compared as values).
    pub entities: Changes,
    /// The grants the bundle ships for its agents.
    pub grants: Vec<GrantChange>,
    /// The admin policies' authority, compared both ways.
    pub authority: Authority,
    /// Cases run against both bundles.
    pub cases_run: usize,
    /// The cases whose answer changed, or that the new bundle fails.
    pub cases: Vec<CaseChange>,
    /// With `--state`: what installing the new bundle does to that pod's live agents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveChange>,
}

impl Plan {
    /// Cases the new bundle fails.
    pub fn failing(&self) -> usize {
        self.cases.iter().filter(|c| !c.passes).count()
    }
}

/// Compares `old` (loaded from `old_dir`) with `new` (from `new_dir`) and runs `cases` on both.
pub fn plan(
    (old_dir, old): (&Path, Bundle),
    (new_dir, new): (&Path, Bundle),
    cases: &[Located],
    solver: Option<SolverConfig>,
) -> Plan {
    let opts = ProveOptions {
        any_principal: true,
        solver,
        ..ProveOptions::default()
    };
    let (policies, entities) = (
        Changes::of(&policy_map(&old), &policy_map(&new)),
        Changes::of(&entity_map(&old), &entity_map(&new)),
    );
    let schema_changed = schema_texts(old_dir, &old) != schema_texts(new_dir, &new);
    // A proof compares two policy sets over one schema and one entity store. When either
    // changed, the same policy text can allow more (an action joins a group, an agent's
    // ceiling rises): the answer is then unknown, with what the policies alone do.
    let moved = match (schema_changed, entities.is_empty()) {
        (false, true) => None,
        (true, true) => Some("the schema"),
        (false, false) => Some("the entities"),
        (true, false) => Some("the schema and the entities"),
    };
    let authority = Authority {
        widens: admin_within(&new, &old, &new, &opts).located(&new, &old).over(moved),
        narrows: admin_within(&old, &new, &new, &opts).located(&old, &new).over(moved),
    };
    let grants = grant_changes(&old, &new, &opts)
        .into_iter()
        .map(|mut g| {
            g.widens = g.widens.map(|w| w.over(moved));
            g
        })
        .collect();
    let (from_version, to_version) = (old.version.clone(), new.version.clone());
    let (before, after) = (super::decider(old), super::decider(new));
    let changed = cases
        .iter()
        .filter_map(|c| {
            let ask = |d: &Result<Decider, String>| match d {
                Ok(d) => cases::answer(d, &c.case),
                Err(e) => Answer::Error {
                    code: "bundle_agents".to_owned(),
                    message: format!("cannot install the bundle's agents: {e}"),
                },
            };
            let (b, a) = (ask(&before), ask(&after));
            let passes = cases::passes(&c.case, &a);
            (b != a || !passes).then(|| CaseChange {
                case: c.label(),
                expected: cases::expected(&c.case),
                before: b,
                after: a,
                passes,
            })
        })
        .collect();
    Plan {
        from_version,
        to_version,
        schema_changed,
        policies,
        entities,
        grants,
        authority,
        cases_run: cases.len(),
        cases: changed,
        live: None,
    }
}

/// `` `id` (file:line) `` for a prover's `` role `id` (line n) ``, when the bundle has that policy.
fn locate(named: &str, b: &Bundle) -> String {
    let Some(id) = named.split('`').nth(1) else {
        return named.to_owned();
    };
    match b.sources.get(&cedar_policy::PolicyId::new(id)) {
        Some(s) => format!("`{id}` ({}:{})", s.file, s.line),
        None => named.to_owned(),
    }
}

/// Does `child`'s admin policy set, replacing `parent`'s, allow only what `parent`'s allowed?
/// Both are read over `world`'s schema and entities.
///
/// The prover answers a delegation's question, in which the parent's forbids bound the child
/// too. Split the parent's forbids into those the child keeps (word for word) and those it
/// dropped: a request the child allows passes every kept one, so the child exceeds the parent
/// exactly when it allows (a) a request no parent permit allows, or (b) one a dropped forbid
/// denied. (a) is the prover's question against the parent without the dropped forbids; (b) is,
/// for each dropped forbid, the prover's question against `permit (principal, action, resource)
/// unless { <the forbid's whole condition> }`. A request either finds is reported only after
/// Cedar's authorizer, on the two real sets, allows it on the child's side and denies it on the
/// parent's (a forbid whose condition errs denies nothing, which the rewritten permit gets
/// wrong the other way: such a request is not reported, and the answer is unknown).
fn admin_within(child: &Bundle, parent: &Bundle, world: &Bundle, opts: &ProveOptions) -> Comparison {
    let (asked, dropped) = dropped_forbids(&child.policies, &parent.policies);
    if let Some(id) = asked {
        return Comparison::Unknown {
            why: format!(
                "the forbid {} is `@ask` on one side only: what the stricter side rejects, the other may approve",
                locate(&format!("`{id}`"), parent)
            ),
        };
    }
    let whole = admin_grant(child, &BTreeSet::new(), None);
    let mut questions = vec![(
        "the old permits".to_owned(),
        whole.clone(),
        admin_grant(parent, &dropped.iter().cloned().collect(), None),
    )];
    for id in &dropped {
        let question = format!("what the forbid {} denied", locate(&format!("`{id}`"), parent));
        let within = forbid_condition(parent, id).and_then(|c| admin_grant(child, &BTreeSet::new(), Some(&c)));
        questions.push((question, within, Grant::parse("").map_err(|e| e.to_string())));
    }
    let mut unknown = Vec::new();
    for (i, (question, narrowed, bound)) in questions.into_iter().enumerate() {
        let verdict = narrowed.and_then(|c| {
            let b = bound?;
            prover::prove(&c, &b, &world.schema, &world.entities, opts).map_err(|e| e.to_string())
        });
        match verdict {
            Ok(Verdict::Within(_)) => {}
            Ok(Verdict::Exceeds(mut cx)) => match replayed(&cx, child, parent, world) {
                Ok(true) => {
                    if let Some(id) = i.checked_sub(1).and_then(|d| dropped.get(d)) {
                        // The forbid the request was searched under is what denied it.
                        cx.denied_by = vec![locate(&format!("`{id}`"), parent)];
                    }
                    return Comparison::Yes { request: cx };
                }
                Ok(false) => unknown.push(format!(
                    "{question}: the request found ({} may {} {}) is not denied by the real old set (a condition that errs)",
                    cx.principal, cx.action, cx.resource
                )),
                Err(e) => unknown.push(format!("{question}: the request found cannot be replayed: {e}")),
            },
            Ok(Verdict::Inconclusive(i)) => unknown.push(format!("{question}: {}: {}", i.code, i.message)),
            Err(e) => unknown.push(format!("{question}: {e}")),
        }
    }
    if unknown.is_empty() {
        Comparison::No
    } else {
        Comparison::Unknown { why: unknown.join("; ") }
    }
}

/// The whole condition of the policy `id` of `b` (its scope constraints and its `when` and
/// `unless` clauses as one expression), as Cedar text.
fn forbid_condition(b: &Bundle, id: &str) -> Result<String, String> {
    let policy = b
        .policies
        .policy(&cedar_policy::PolicyId::new(id))
        .ok_or_else(|| format!("no policy `{id}`"))?;
    let core: &cedar_policy_core::ast::Policy = policy.as_ref();
    Ok(core.condition().to_string())
}

/// Whether Cedar's authorizer, over `world`'s entities plus the request's own, allows `cx` with
/// `child`'s admin policies and denies it with `parent`'s.
fn replayed(cx: &prover::Counterexample, child: &Bundle, parent: &Bundle, world: &Bundle) -> Result<bool, String> {
    use cedar_policy::{Authorizer, Context, Decision, Entities, Request};
    let schema = &world.schema;
    let added = Entities::from_json_value(cx.entities.clone(), Some(schema)).map_err(|e| e.to_string())?;
    let entities = world
        .entities
        .clone()
        .add_entities(added, Some(schema))
        .map_err(|e| e.to_string())?;
    let uid = |s: &str| s.parse::<EntityUid>().map_err(|e| e.to_string());
    let action = uid(&cx.action)?;
    let context = Context::from_json_value(cx.context.clone(), Some((schema, &action))).map_err(|e| e.to_string())?;
    let request = Request::new(uid(&cx.principal)?, action, uid(&cx.resource)?, context, Some(schema)).map_err(|e| e.to_string())?;
    let decide = |b: &Bundle| Authorizer::new().is_authorized(&request, &b.policies, &entities).decision();
    Ok(decide(child) == Decision::Allow && decide(parent) == Decision::Deny)
}

/// The bundle's static admin policies but `skip` as one grant for the prover, each under its
/// bundle id. Annotations are dropped (an admin policy's `@ask` or a stray `@delegable` is not
/// part of what it allows; the prover's delegable view would otherwise leave a permit out).
/// With `only_when`, every permit gets that condition as one more `when` clause: the grant then
/// allows exactly what the bundle allows where the condition is true (where it errs, the
/// permit errs and does not apply, as Cedar has it).
fn admin_grant(b: &Bundle, skip: &BTreeSet<String>, only_when: Option<&str>) -> Result<Grant, String> {
    let mut text = String::new();
    for p in b.policies.policies().filter(|p| !skip.contains(&p.id().to_string())) {
        let json = p
            .to_json()
            .map_err(|e| format!("policy `{}` cannot be compared: {e}", p.id()))?;
        let bare = Policy::from_json(None, unannotated(json)).map_err(|e| format!("policy `{}` cannot be compared: {e}", p.id()))?;
        let mut policy = bare.to_string();
        if let (Some(condition), cedar_policy::Effect::Permit) = (only_when, p.effect()) {
            let body = policy.trim_end().strip_suffix(';').unwrap_or(&policy).to_owned();
            policy = format!("{body} when {{ {condition} }};");
        }
        text.push_str(&format!("@id({:?})\n{policy}\n", p.id().to_string()));
    }
    Grant::parse(&text).map_err(|e| format!("the admin policies cannot be compared: {e}"))
}

fn grant_changes(old: &Bundle, new: &Bundle, opts: &ProveOptions) -> Vec<GrantChange> {
    let changes = Changes::of(&old.grants, &new.grants);
    let mut out = Vec::new();
    for agent in changes.added {
        out.push(GrantChange {
            agent,
            change: "added",
            widens: None,
        });
    }
    for agent in changes.removed {
        out.push(GrantChange {
            agent,
            change: "removed",
            widens: None,
        });
    }
    for agent in changes.changed {
        let sets = (new.grants[&agent].parse(), old.grants[&agent].parse());
        if let (Ok(child), Ok(parent)) = &sets {
            if let Some(id) = dropped_forbid(child, parent) {
                out.push(GrantChange {
                    agent,
                    change: "changed",
                    widens: Some(Comparison::Unknown {
                        why: dropped_forbid_why(&format!("`{id}`")),
                    }),
                });
                continue;
            }
        }
        let widens = Comparison::of((|| {
            let child = Grant::parse(&new.grants[&agent]).map_err(|e| e.to_string())?;
            // The whole old grant is the bound, not its delegable view: annotations go.
            let parent = Grant::parse(&without_annotations(&old.grants[&agent])?).map_err(|e| e.to_string())?;
            let uid: EntityUid = format!("Agent::{:?}", agent)
                .parse()
                .map_err(|e| format!("agent `{agent}`: {e}"))?;
            let opts = ProveOptions {
                child_principal: Some(uid),
                any_principal: false,
                ..opts.clone()
            };
            prover::prove(&child, &parent, &new.schema, &new.entities, &opts).map_err(|e| e.to_string())
        })());
        out.push(GrantChange {
            agent,
            change: "changed",
            widens: Some(widens),
        });
    }
    out
}

/// The first forbid of `parent` that `child` does not hold word for word (annotations aside).
///
/// The prover answers a delegation's question: is every request the child allows, and the
/// parent's forbids let through, allowed by the parent? A plan asks it without the parent's
/// forbids (the new bundle replaces the old one). The two agree exactly when every forbid of the
/// parent is also the child's: a request the child allows then passes every parent forbid. When
/// one was removed or changed, the proof would miss what that forbid used to deny.
///
/// `@ask` counts: a forbid that gains `@ask("…")` turns a delegation's reject into "ask a human",
/// so it is not the same forbid; one that loses it (a hard forbid where there was an ask) keeps
/// everything the old one denied.
fn dropped_forbid(child: &cedar_policy::PolicySet, parent: &cedar_policy::PolicySet) -> Option<String> {
    let (asked, dropped) = dropped_forbids(child, parent);
    asked.or_else(|| dropped.into_iter().next())
}

/// The forbids of `parent` that `child` does not keep: the first that is kept only with an
/// `@ask` it did not have, and the others (removed or changed).
fn dropped_forbids(child: &cedar_policy::PolicySet, parent: &cedar_policy::PolicySet) -> (Option<String>, Vec<String>) {
    let kept: BTreeSet<(String, Option<String>)> = forbids(child).map(|(_, bare, ask)| (bare, ask)).collect();
    let asked_for: BTreeSet<String> = kept.iter().filter(|(_, a)| a.is_some()).map(|(b, _)| b.clone()).collect();
    let (mut asked, mut dropped) = (None, Vec::new());
    for (id, bare, ask) in forbids(parent) {
        if kept.contains(&(bare.clone(), None)) || kept.contains(&(bare.clone(), ask)) {
            continue;
        }
        if asked_for.contains(&bare) {
            asked.get_or_insert(id);
        } else {
            dropped.push(id);
        }
    }
    (asked, dropped)
}

/// Each forbid (policy or template) of `set`: its name, its JSON form without annotations, and
/// its `@ask` approver.
fn forbids(set: &cedar_policy::PolicySet) -> impl Iterator<Item = (String, String, Option<String>)> + '_ {
    let bare = |json: Result<Value, _>| unannotated(json.unwrap_or(Value::Null)).to_string();
    let ask = |a: Option<&str>| a.map(str::to_owned);
    let name = |id: &cedar_policy::PolicyId, annotation: Option<&str>| annotation.map_or_else(|| id.to_string(), str::to_owned);
    let policies = set
        .policies()
        .filter(|p| p.effect() == cedar_policy::Effect::Forbid && p.template_id().is_none())
        .map(move |p| {
            let a = ask(p.annotation(crate::bundle::ASK_ANNOTATION));
            (name(p.id(), p.annotation("id")), bare(p.to_json().map_err(|_| ())), a)
        });
    let templates = set
        .templates()
        .filter(|t| t.effect() == cedar_policy::Effect::Forbid)
        .map(move |t| {
            let a = ask(t.annotation(crate::bundle::ASK_ANNOTATION));
            (name(t.id(), t.annotation("id")), bare(t.to_json().map_err(|_| ())), a)
        });
    policies.chain(templates)
}

fn dropped_forbid_why(forbid: &str) -> String {
    format!(
        "the forbid {forbid} was removed or changed; a proof bounds one side by the other's forbids, so it \
         cannot show what that forbid no longer denies (the cases are the check)"
    )
}

/// A grant's text with every policy's annotations but `@id` dropped.
fn without_annotations(grant: &str) -> Result<String, String> {
    let set: cedar_policy::PolicySet = grant.parse().map_err(|e| format!("{e}"))?;
    let mut text = String::new();
    for t in set.templates() {
        let json = t.to_json().map_err(|e| e.to_string())?;
        let id = t.annotation("id").map(str::to_owned);
        let bare = cedar_policy::Template::from_json(None, unannotated(json)).map_err(|e| e.to_string())?;
        push_with_id(&mut text, id.as_deref(), &bare.to_string());
    }
    for p in set.policies() {
        let json = p.to_json().map_err(|e| e.to_string())?;
        let id = p.annotation("id").map(str::to_owned);
        let bare = Policy::from_json(None, unannotated(json)).map_err(|e| e.to_string())?;
        push_with_id(&mut text, id.as_deref(), &bare.to_string());
    }
    Ok(text)
}

/// A policy's Cedar JSON without its annotations.
fn unannotated(mut json: Value) -> Value {
    if let Some(o) = json.as_object_mut() {
        o.remove("annotations");
    }
    json
}

fn push_with_id(text: &mut String, id: Option<&str>, policy: &str) {
    if let Some(id) = id {
        text.push_str(&format!("@id({id:?})\n"));
    }
    text.push_str(policy);
    text.push('\n');
}

/// Admin policies by id, as Cedar's JSON form (layout and comments do not count).
fn policy_map(b: &Bundle) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for p in b.policies.policies() {
        out.insert(p.id().to_string(), p.to_json().unwrap_or(Value::Null));
    }
    for t in b.policies.templates() {
        out.insert(t.id().to_string(), t.to_json().unwrap_or(Value::Null));
    }
    out
}

/// Entities by uid, as normalised JSON (sets sorted).
fn entity_map(b: &Bundle) -> BTreeMap<String, Value> {
    b.entities
        .iter()
        .map(|e| (e.uid().to_string(), normalise(e.to_json_value().unwrap_or(Value::Null))))
        .collect()
}

/// Sorts every array (Cedar has sets, not lists, so the order carries nothing).
fn normalise(v: Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.into_iter().map(normalise).collect();
            items.sort_by_cached_key(Value::to_string);
            Value::Array(items)
        }
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, normalise(v))).collect()),
        other => other,
    }
}

/// The schema files' texts, by path.
fn schema_texts(dir: &Path, b: &Bundle) -> BTreeSet<(String, String)> {
    b.files
        .iter()
        .filter(|f| f.starts_with("schema/"))
        .map(|f| (f.clone(), std::fs::read_to_string(dir.join(f)).unwrap_or_default()))
        .collect()
}
