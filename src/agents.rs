//! The agents deputy manages, in memory: each agent's record, its chain and, for every hop of
//! it, that hop's grant already linked to the agent, so a decision links nothing at request
//! time. Shared by the decision path (which reads it) and delegation (which changes it).
//!
//! INVARIANT (run time is the proof): an agent's `hops` are, root first, each ancestor's
//! *delegable view* (its grant without the `@delegable("false")` permits) and then the agent's
//! own whole grant, each linked to the agent itself. Run-time authority is admin AND every hop,
//! which is exactly what a spawn proves (`child ≤ delegable_view(parent)`): a drifted or
//! human-approved grant is still bounded by what each ancestor could pass on.
//!
//! INVARIANT: what changes about an agent without rebuilding it (revocation, taint) lives in one
//! `AgentState` shared by every rebuilt copy of the agent, so a raise or a revocation is never
//! lost to a concurrent rebuild.

pub mod taint;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use cedar_policy::{
    Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, RestrictedExpression, SlotId,
};

use serde::Serialize;

use crate::eval::PolicyIndex;

/// The entity type deputy's agents have in the schema.
pub const AGENT_TYPE: &str = "Agent";
/// The approver name of a human holding the admin credential (never an agent's name).
pub const ADMIN_APPROVER: &str = "admin";
/// Who created an agent that the bundle declares (with a grant in `grants/`).
pub const BUNDLE_CREATOR: &str = "bundle";

/// One agent as stored.
#[derive(Debug, Clone, Serialize)]
pub struct AgentRow {
    pub id: String,
    pub parent: Option<String>,
    pub depth: i64,
    pub can_delegate: bool,
    pub ceiling: i64,
    pub taint: i64,
    pub grant: String,
    pub grant_digest: String,
    #[serde(skip)]
    pub credential_hash: String,
    pub task: String,
    pub reason: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub revoked_reason: Option<String>,
    pub bundle_version: String,
    /// The proof that admitted this grant, as JSON.
    pub proof: serde_json::Value,
}

impl AgentRow {
    /// A live agent's row with its place in the tree, ceiling and grant, every other field empty
    /// (no credential, no proof): for deputy's own tests, benchmarks and fuzz targets.
    #[cfg(any(test, feature = "test-support"))]
    pub fn sketch(id: &str, parent: Option<&str>, depth: i64, ceiling: i64, grant: &str) -> AgentRow {
        AgentRow {
            id: id.to_owned(),
            parent: parent.map(str::to_owned),
            depth,
            can_delegate: true,
            ceiling,
            taint: 0,
            grant: grant.to_owned(),
            grant_digest: String::new(),
            credential_hash: String::new(),
            task: "sketch".to_owned(),
            reason: String::new(),
            created_by: ADMIN_APPROVER.to_owned(),
            created_at: 0,
            expires_at: i64::MAX,
            revoked_at: None,
            revoked_reason: None,
            bundle_version: String::new(),
            proof: serde_json::Value::Null,
        }
    }
}

/// A session as stored: an agent deputy minted when `caller` invoked `callee`.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRow {
    /// The session's own agent id (its `agents` row).
    pub id: String,
    /// Who invoked: an agent, or another session.
    pub caller: String,
    /// The agent the session serves: managed by deputy, or declared by the bundle.
    pub callee: String,
    /// 1 when an agent invoked, the caller session's depth + 1 when a session did.
    pub depth: i64,
    /// The identities on the invocation chain, first caller first, `callee` last.
    pub chain: Vec<String>,
    /// The caller's taint when it invoked: the session starts at least this tainted.
    pub caller_taint: i64,
    pub created_at: i64,
}

/// True for deputy's `Agent` type (unqualified, as the schema must declare it), without
/// formatting the name.
pub fn is_agent_type(t: &EntityTypeName) -> bool {
    t.basename() == AGENT_TYPE && t.namespace_components().next().is_none()
}

/// What may change about a live agent between rebuilds: shared by all its copies.
#[derive(Debug, Default)]
pub struct AgentState {
    revoked: AtomicBool,
    taint: AtomicI64,
    /// The taint known to be stored (committed): never above `taint`. A decision that reads
    /// above it is answered only once its level is durable (see `authorize`).
    durable: AtomicI64,
    /// The digest a session's credential was claimed with, once its claim committed (the
    /// stored row says so after a restart; see `LiveAgent::credential_hash`).
    claimed: std::sync::OnceLock<String>,
}

/// One hop of a chain: an agent's grant (an ancestor's delegable view, or the acting agent's
/// whole grant) linked to the acting agent.
pub struct Hop {
    pub agent: String,
    /// The hop's holder as a principal: the admin policies are asked about it too.
    pub uid: EntityUid,
    pub policies: PolicySet,
    /// `policies` indexed and compiled for deputy's evaluator, once, when the agent is built.
    pub index: PolicyIndex,
    /// The hop's holder's shared state: a revoked ancestor denies at once.
    state: Arc<AgentState>,
    /// When the hop's holder expires.
    expires_at: i64,
}

impl Hop {
    /// The hop's holder is neither revoked nor expired.
    pub fn is_live(&self, now: i64) -> bool {
        !self.is_revoked() && now < self.expires_at
    }

    /// The hop's holder was revoked.
    pub fn is_revoked(&self) -> bool {
        self.state.revoked.load(Ordering::Acquire)
    }
}

/// A live (or revoked, kept for the record) agent.
pub struct LiveAgent {
    pub row: AgentRow,
    pub uid: EntityUid,
    /// Root first, this agent last.
    pub chain: Vec<String>,
    pub hops: Vec<Hop>,
    /// The lowest ceiling on the chain, the one deputy enforces: an agent never touches what an
    /// ancestor could not, even if its own ceiling says more (or an ancestor's was lowered).
    pub chain_ceiling: i64,
    /// Set for a session: whom it serves, and on which invocation chain. A session's own grant
    /// is empty; it is decided as its callee (see `authorize`).
    pub session: Option<Arc<SessionRow>>,
    state: Arc<AgentState>,
    /// The agent's grant as parsed, once: its descendants link their hops from it.
    parsed: Arc<PolicySet>,
    /// The agent's grant as the prover takes it, parsed on first use (a spawn under this agent
    /// proves against it) and kept: the text of one built agent never changes (a re-grant
    /// builds a new one).
    proof_grant: std::sync::OnceLock<Result<Arc<crate::prover::Grant>, String>>,
}

impl LiveAgent {
    pub fn is_revoked(&self) -> bool {
        self.state.revoked.load(Ordering::Acquire)
    }

    pub fn mark_revoked(&self) {
        self.state.revoked.store(true, Ordering::Release);
    }

    pub fn taint(&self) -> i64 {
        self.state.taint.load(Ordering::Acquire)
    }

    /// Raises the session taint; returns true when it went up.
    pub fn raise_taint(&self, level: i64) -> bool {
        self.state.taint.fetch_max(level, Ordering::AcqRel) < level
    }

    /// The taint known to be committed to the state store (never above `taint`).
    pub fn durable_taint(&self) -> i64 {
        self.state.durable.load(Ordering::Acquire)
    }

    /// Records that `level` is committed for this agent. Call only after the commit.
    pub fn mark_durable(&self, level: i64) {
        self.state.durable.fetch_max(level, Ordering::AcqRel);
    }

    /// The digest of the agent's credential: the stored row's, or the one its session was
    /// claimed with since it was loaded. Empty: none (no token matches it).
    pub fn credential_hash(&self) -> &str {
        self.state
            .claimed
            .get()
            .map_or(self.row.credential_hash.as_str(), String::as_str)
    }

    /// Records the digest a session's credential was claimed with. Call only after the claim
    /// committed; false when one was recorded already.
    pub fn set_claimed(&self, hash: String) -> bool {
        self.state.claimed.set(hash).is_ok()
    }

    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.row.expires_at
    }

    /// Live: neither revoked nor expired.
    pub fn is_live(&self, now: i64) -> bool {
        !self.is_revoked() && !self.is_expired(now)
    }

    /// The agent's stored grant as [`crate::prover::Grant::parse`] gives it, parsed once per
    /// built agent; an error when it no longer parses.
    pub fn proof_grant(&self) -> Result<Arc<crate::prover::Grant>, String> {
        self.proof_grant
            .get_or_init(|| {
                crate::prover::Grant::parse(&self.row.grant)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// Declared by the bundle (`grants/<id>.cedar`), not created through the API.
    pub fn is_bundle_agent(&self) -> bool {
        self.row.created_by == BUNDLE_CREATOR
    }

    /// The agent's strict ancestors, nearest last.
    pub fn ancestors(&self) -> &[String] {
        self.chain.split_last().map_or(&[], |(_, rest)| rest)
    }

    /// `id` is a strict ancestor of this agent.
    pub fn has_ancestor(&self, id: &str) -> bool {
        self.ancestors().iter().any(|a| a == id)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("grant of agent `{agent}` does not parse: {message}")]
    Grant { agent: String, message: String },
    #[error("agent `{agent}` names parent `{parent}`, which is unknown")]
    UnknownParent { agent: String, parent: String },
    #[error("agent `{agent}`: {message}")]
    Entity { agent: String, message: String },
}

/// All agents by id, in persistent maps: a registry with one more agent shares all but a few
/// nodes with the one it extends, so a spawn copies nothing proportional to the live agents.
///
/// INVARIANT (children index): `children[p]` (`roots` for `p` = none) holds the id of every agent
/// whose row names parent `p`, except bundle agents and sessions, which never count as children;
/// no other id. Liveness is not indexed (revocation and expiry change it without a new
/// registry): [`Registry::live_children`] checks it on each indexed child when asked, so its
/// count equals a scan of every agent with the same filter. Likewise `sessions[c]` holds the id
/// of every session whose caller is `c`, and nothing else ([`Registry::live_sessions`]), and
/// `served[c]` of every session whose callee is `c` (taint's walk along live links).
///
/// INVARIANT (additions log): within one `lineage`, registries differ only by agents appended
/// to `added` (each a new `Arc`, under an id the registry did not hold); anything else (a
/// rebuild, a replaced id, a restart) starts a new lineage. [`Registry::added_to`] relies on it.
#[derive(Clone, Default)]
pub struct Registry {
    /// Keyed by shared ids, so that nodes copied for a new registry copy pointers.
    agents: imbl::HashMap<Arc<str>, Arc<LiveAgent>>,
    /// Managed children (not sessions) by parent id.
    children: imbl::HashMap<Arc<str>, imbl::HashSet<Arc<str>>>,
    /// Managed root agents (the admin's children).
    roots: imbl::HashSet<Arc<str>>,
    /// Sessions by the caller that invoked them.
    sessions: imbl::HashMap<Arc<str>, imbl::HashSet<Arc<str>>>,
    /// Sessions by the agent they serve.
    served: imbl::HashMap<Arc<str>, imbl::HashSet<Arc<str>>>,
    /// Which line of additions this registry belongs to; 0 is the empty registry's.
    lineage: u64,
    /// The agents added in this lineage, in order.
    added: imbl::Vector<Arc<LiveAgent>>,
}

/// Lineages handed out so far (0 is the empty registry's).
static LINEAGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn new_lineage() -> u64 {
    LINEAGES.fetch_add(1, Ordering::Relaxed)
}

impl Registry {
    /// Builds the registry from stored rows (parents before children) and sessions.
    pub fn from_rows_with_sessions(rows: Vec<AgentRow>, sessions: Vec<SessionRow>) -> Result<Registry, RegistryError> {
        let mut sessions: HashMap<String, Arc<SessionRow>> =
            sessions.into_iter().map(|s| (s.id.clone(), Arc::new(s))).collect();
        let mut reg = Registry {
            lineage: new_lineage(),
            ..Registry::default()
        };
        // Many agents hold the same grant text (a fleet spawned from one template): each text is
        // parsed once and the parse shared (it is immutable; linking copies what it keeps).
        let mut parsed = Parsed::default();
        for row in rows {
            let session = sessions.remove(&row.id);
            let agent = build(&reg.agents, row, None, session, Some(&mut parsed))?;
            reg.put(Arc::new(agent));
        }
        Ok(reg)
    }

    /// A registry that also holds `row` (a new agent).
    pub fn with(&self, row: AgentRow) -> Result<Registry, RegistryError> {
        self.with_session(row, None)
    }

    /// A registry that also holds `row` (a new agent), a session when `session` is set.
    pub fn with_session(&self, row: AgentRow, session: Option<SessionRow>) -> Result<Registry, RegistryError> {
        let agent = Arc::new(build(&self.agents, row, None, session.map(Arc::new), None)?);
        Ok(self.added(agent))
    }

    /// [`Registry::with`], reusing `parsed` (`(text, PolicySet::from_str(text))`) as the parse
    /// of the row's grant when `text` is the row's grant: a spawn already parsed it when it
    /// accepted it, outside the writer lock.
    pub fn with_parsed(&self, row: AgentRow, parsed: Option<(&str, &Arc<PolicySet>)>) -> Result<Registry, RegistryError> {
        let mut seen = Parsed::default();
        if let Some((text, set)) = parsed.filter(|(text, _)| *text == row.grant) {
            seen.insert(text.to_owned(), Arc::clone(set));
        }
        let agent = Arc::new(build(&self.agents, row, None, None, Some(&mut seen))?);
        Ok(self.added(agent))
    }

    /// This registry with `agent` added (or replacing the agent of its id).
    fn added(&self, agent: Arc<LiveAgent>) -> Registry {
        let mut next = self.clone();
        if next.put(Arc::clone(&agent)).is_some() {
            // An id replaced, not added: not an addition (see the additions log).
            next.lineage = new_lineage();
            next.added = imbl::Vector::new();
        } else {
            next.added.push_back(agent);
        }
        next
    }

    /// Inserts `agent` (replacing any agent of its id) and keeps the children index; returns
    /// the agent replaced.
    fn put(&mut self, agent: Arc<LiveAgent>) -> Option<Arc<LiveAgent>> {
        let id: Arc<str> = Arc::from(agent.row.id.as_str());
        let old = self.agents.insert(Arc::clone(&id), Arc::clone(&agent));
        if let Some(old) = &old {
            self.unindex(old, &id);
        }
        if let Some(session) = &agent.session {
            for (index, key) in [(&mut self.sessions, &session.caller), (&mut self.served, &session.callee)] {
                index.entry(Arc::from(key.as_str())).or_default().insert(Arc::clone(&id));
            }
        }
        if is_child(&agent) {
            match &agent.row.parent {
                None => {
                    self.roots.insert(id);
                }
                Some(p) => {
                    self.children.entry(Arc::from(p.as_str())).or_default().insert(id);
                }
            }
        }
        old
    }

    /// Removes `old` (the agent formerly under `id`) from the children and sessions indexes.
    fn unindex(&mut self, old: &LiveAgent, id: &str) {
        if let Some(session) = &old.session {
            for (index, key) in [(&mut self.sessions, &session.caller), (&mut self.served, &session.callee)] {
                if let Some(set) = index.get_mut(key.as_str()) {
                    set.remove(id);
                    if set.is_empty() {
                        index.remove(key.as_str());
                    }
                }
            }
        }
        match &old.row.parent {
            None => {
                self.roots.remove(id);
            }
            Some(p) => {
                if let Some(set) = self.children.get_mut(p.as_str()) {
                    set.remove(id);
                    if set.is_empty() {
                        self.children.remove(p.as_str());
                    }
                }
            }
        }
    }

    /// How many live children `parent` (`None`: the admin, whose children are the roots) has:
    /// managed agents naming it as their parent, neither sessions nor bundle agents, neither
    /// revoked nor expired at `now`. Visits `parent`'s children only.
    pub fn live_children(&self, parent: Option<&str>, now: i64) -> usize {
        let ids = match parent {
            None => Some(&self.roots),
            Some(p) => self.children.get(p),
        };
        ids.into_iter()
            .flatten()
            .filter_map(|id| self.agents.get(id.as_ref()))
            .filter(|a| a.row.parent.as_deref() == parent && is_child(a) && a.is_live(now))
            .count()
    }

    /// How many live sessions `caller` has invoked: sessions whose caller it is, neither
    /// revoked nor expired at `now`. Visits `caller`'s sessions only.
    pub fn live_sessions(&self, caller: &str, now: i64) -> usize {
        self.sessions
            .get(caller)
            .into_iter()
            .flatten()
            .filter_map(|id| self.agents.get(id.as_ref()))
            .filter(|a| a.session.as_ref().is_some_and(|s| s.caller == caller) && a.is_live(now))
            .count()
    }

    /// A registry in which the agents in `rows` have those rows (a new grant, new attributes):
    /// each of them and every descendant is rebuilt, since a descendant holds its ancestors'
    /// grants linked to itself and the chain's lowest ceiling. Taint and revocation carry over.
    pub fn with_rows(&self, rows: Vec<AgentRow>) -> Result<Registry, RegistryError> {
        if rows.is_empty() {
            return Ok(self.clone());
        }
        let mut changed: HashMap<String, AgentRow> = rows.into_iter().map(|r| (r.id.clone(), r)).collect();
        let mut affected: Vec<Arc<LiveAgent>> = self
            .agents
            .values()
            .filter(|a| a.chain.iter().any(|c| changed.contains_key(c)))
            .cloned()
            .collect();
        affected.sort_by_key(|a| a.chain.len());
        let mut next = self.clone();
        // Agents replaced: not additions (see the additions log).
        next.lineage = new_lineage();
        next.added = imbl::Vector::new();
        for a in affected {
            let row = changed.remove(&a.row.id).unwrap_or_else(|| a.row.clone());
            let rebuilt = build(&next.agents, row, Some(Arc::clone(&a.state)), a.session.clone(), None)?;
            next.put(Arc::new(rebuilt));
        }
        Ok(next)
    }

    pub fn get(&self, id: &str) -> Option<&Arc<LiveAgent>> {
        self.agents.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.agents.contains_key(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<LiveAgent>> {
        self.agents.values()
    }

    /// Marks `ids` revoked in every snapshot that holds them (their state is shared).
    pub fn mark_revoked(&self, ids: &[String]) {
        for id in ids {
            if let Some(a) = self.agents.get(id.as_str()) {
                a.mark_revoked();
            }
        }
    }

    /// The agents this registry holds beyond `base`, when it holds every agent of `base`
    /// unchanged (the same shared `Arc`); `None` when any was changed or dropped, or when that
    /// cannot be told from the additions log. Proportional to the agents added, not to all.
    pub fn added_to(&self, base: &Registry) -> Option<Vec<Arc<LiveAgent>>> {
        let n = base.added.len();
        if self.lineage != base.lineage || self.added.len() < n {
            return None;
        }
        // Every addition is a new `Arc`: the same one at `base`'s last position means `self`
        // was derived from `base` by additions (see the additions log).
        if n > 0 && !Arc::ptr_eq(self.added.get(n - 1)?, base.added.get(n - 1)?) {
            return None;
        }
        Some(self.added.iter().skip(n).cloned().collect())
    }

    /// `store` (a combined store built for this bundle) plus the entities of `added`, agents
    /// deputy created since. Their entities have no parents, so no entity's ancestors change
    /// and the transitive closure needs no repair; each is checked against the schema.
    pub fn extend_entities(
        store: &Entities,
        added: &[Arc<LiveAgent>],
        schema: &cedar_policy::Schema,
    ) -> Result<Entities, String> {
        let mut new = Vec::new();
        for a in added.iter().filter(|a| !a.is_bundle_agent()) {
            // `store` holds the bundle's entities and every managed agent's so far.
            if store.get(&a.uid).is_some() {
                return Err(format!(
                    "agent `{}` that deputy manages shares its id with an entity already in the store",
                    a.row.id
                ));
            }
            let e = agent_entity(&a.row, &a.uid, a.chain_ceiling)?;
            let core: &cedar_policy_core::ast::Entity = e.as_ref();
            new.push(Arc::new(core.clone()));
        }
        let base: &cedar_policy_core::entities::Entities = store.as_ref();
        let core_schema = cedar_policy_core::validator::CoreSchema::new(schema.as_ref());
        base.clone()
            .add_entities(
                new,
                Some(&core_schema),
                cedar_policy_core::entities::TCComputation::AssumeAlreadyComputed,
                cedar_policy_core::extensions::Extensions::all_available(),
            )
            .map(Entities::from)
            .map_err(|e| e.to_string())
    }

    /// The bundle's entities plus the agents deputy created (a bundle agent's entity is the
    /// bundle's own, attributes and parents included). Built when either changes, never per
    /// request.
    ///
    /// INVARIANT: no managed agent shares a uid with a bundle entity (the identity namespace is
    /// checked when agents are named and when bundles load); should one, this fails rather than
    /// let either replace the other.
    pub fn combined_entities(&self, bundle: &Entities, schema: &cedar_policy::Schema) -> Result<Entities, String> {
        let mut managed = Vec::new();
        for a in self.agents.values().filter(|a| !a.is_bundle_agent()) {
            if bundle.get(&a.uid).is_some() {
                return Err(format!(
                    "agent `{}` that deputy manages shares its id with an entity the bundle declares",
                    a.row.id
                ));
            }
            managed.push(agent_entity(&a.row, &a.uid, a.chain_ceiling)?);
        }
        bundle
            .clone()
            .add_entities(managed, Some(schema))
            .map_err(|e| e.to_string())
    }
}

pub fn agent_uid(id: &str) -> Result<EntityUid, String> {
    let ty = EntityTypeName::from_str(AGENT_TYPE).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

/// The entity deputy gives one of its agents: exactly the attributes its agent model names, with
/// `ceiling` the lowest on its chain (what admin rules reading `principal.ceiling` must see).
pub fn agent_entity(row: &AgentRow, uid: &EntityUid, ceiling: i64) -> Result<Entity, String> {
    let attrs = HashMap::from([
        (
            "can_delegate".to_owned(),
            RestrictedExpression::new_bool(row.can_delegate),
        ),
        ("ceiling".to_owned(), RestrictedExpression::new_long(ceiling)),
        ("depth".to_owned(), RestrictedExpression::new_long(row.depth)),
    ]);
    Entity::new(uid.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())
}

/// Which part of a grant a hop holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The whole grant: the acting agent's own hop.
    Full,
    /// Without the permits annotated `@delegable("false")`: an ancestor's hop.
    Delegable,
}

/// Grants already parsed, by their text.
type Parsed = HashMap<String, Arc<PolicySet>>;

/// Counts toward its parent's children: managed by deputy and not a session.
fn is_child(a: &LiveAgent) -> bool {
    !a.is_bundle_agent() && a.session.is_none()
}

fn build(
    agents: &imbl::HashMap<Arc<str>, Arc<LiveAgent>>,
    row: AgentRow,
    state: Option<Arc<AgentState>>,
    session: Option<Arc<SessionRow>>,
    seen: Option<&mut Parsed>,
) -> Result<LiveAgent, RegistryError> {
    let uid = agent_uid(&row.id).map_err(|message| RegistryError::Entity {
        agent: row.id.clone(),
        message,
    })?;
    let parent = match &row.parent {
        None => None,
        Some(parent) => Some(agents.get(parent.as_str()).ok_or_else(|| RegistryError::UnknownParent {
            agent: row.id.clone(),
            parent: parent.clone(),
        })?),
    };
    let mut chain = parent.map(|p| p.chain.clone()).unwrap_or_default();
    chain.push(row.id.clone());
    let mut hops = Vec::with_capacity(chain.len());
    for ancestor in parent.map(|p| p.chain.as_slice()).unwrap_or_default() {
        let a = agents.get(ancestor.as_str()).ok_or_else(|| RegistryError::UnknownParent {
            agent: row.id.clone(),
            parent: ancestor.clone(),
        })?;
        let policies = link_parsed(ancestor, &a.parsed, &uid, View::Delegable)?;
        hops.push(Hop {
            agent: ancestor.clone(),
            uid: a.uid.clone(),
            index: hop_index(&policies),
            policies,
            state: Arc::clone(&a.state),
            expires_at: a.row.expires_at,
        });
    }
    let state = state.unwrap_or_else(|| {
        Arc::new(AgentState {
            revoked: AtomicBool::new(row.revoked_at.is_some()),
            taint: AtomicI64::new(row.taint),
            // A row is served only once it is stored (a new agent: once its write committed).
            durable: AtomicI64::new(row.taint),
            claimed: std::sync::OnceLock::new(),
        })
    });
    // INVARIANT: parsing is a function of the text alone (policy ids are `policyN` in order),
    // so an agent sharing another's parse holds what parsing its own text would give.
    let parsed = match seen {
        Some(seen) => match seen.get(&row.grant) {
            Some(p) => Arc::clone(p),
            None => {
                let p = Arc::new(parse_grant(&row.id, &row.grant)?);
                seen.insert(row.grant.clone(), Arc::clone(&p));
                p
            }
        },
        None => Arc::new(parse_grant(&row.id, &row.grant)?),
    };
    let policies = link_parsed(&row.id, &parsed, &uid, View::Full)?;
    hops.push(Hop {
        agent: row.id.clone(),
        uid: uid.clone(),
        index: hop_index(&policies),
        policies,
        state: Arc::clone(&state),
        expires_at: row.expires_at,
    });
    let chain_ceiling = parent.map_or(row.ceiling, |p| p.chain_ceiling.min(row.ceiling));
    Ok(LiveAgent {
        row,
        uid,
        chain,
        hops,
        chain_ceiling,
        session,
        state,
        parsed,
        proof_grant: std::sync::OnceLock::new(),
    })
}

/// A hop's linked grant, indexed for deputy's evaluator. Built without the bundle's action
/// hierarchy (an agent outlives bundles): a request whose action sits under an action a grant
/// names finds the hierarchy differs and is evaluated policy by policy instead, as the index
/// does whenever the store disagrees with it.
fn hop_index(policies: &PolicySet) -> PolicyIndex {
    PolicyIndex::build(policies, &Entities::empty())
}

/// Links `view` of the grant text `grant` (see [`link_parsed`]): for the fuzz harness, which
/// feeds it arbitrary grants.
#[cfg(feature = "test-support")]
pub fn link(holder: &str, grant: &str, principal: &EntityUid, view: View) -> Result<PolicySet, RegistryError> {
    link_parsed(holder, &parse_grant(holder, grant)?, principal, view)
}

/// An agent's grant text as Cedar parses it.
fn parse_grant(holder: &str, grant: &str) -> Result<PolicySet, RegistryError> {
    PolicySet::from_str(grant).map_err(|e| RegistryError::Grant {
        agent: holder.to_owned(),
        message: e.to_string(),
    })
}

/// Links `view` of `parsed` (the grant held by `holder`) to `principal`; ids are
/// `<holder>/<policy id>` so a reason says whose grant it came from.
///
/// A policy that is not about its holder (`prover::foreign_principal`) is left out: grants are
/// checked for this when they are accepted, so only a grant stored by an older deputy can hold
/// one, and leaving a policy out of a hop only narrows a forbid-free hop — except a forbid,
/// which is kept (it can only deny).
fn link_parsed(holder: &str, parsed: &PolicySet, principal: &EntityUid, view: View) -> Result<PolicySet, RegistryError> {
    use cedar_policy::Effect;
    let err = |message: String| RegistryError::Grant {
        agent: holder.to_owned(),
        message,
    };
    let keep = |t: &cedar_policy_core::ast::Template, effect: Effect, delegable: bool| -> bool {
        if effect == Effect::Forbid {
            return true;
        }
        if view == View::Delegable && !delegable {
            return false;
        }
        match crate::prover::foreign_principal(t) {
            None => true,
            Some(why) => {
                tracing::warn!(agent = holder, %why, "a stored grant holds a permit about another principal; it is left out");
                false
            }
        }
    };
    // Only an absent annotation or exactly "true" passes a permit on (grants with any other
    // spelling are refused when accepted; one stored by an older deputy fails closed here).
    let delegable = |a: Option<&str>| a.is_none_or(|v| v == "true");
    let mut out = PolicySet::new();
    for p in parsed.policies() {
        let core: &cedar_policy_core::ast::Policy = p.as_ref();
        if !keep(
            core.template(),
            p.effect(),
            delegable(p.annotation(crate::prover::DELEGABLE_ANNOTATION)),
        ) {
            continue;
        }
        let id = PolicyId::new(format!("{holder}/{}", p.id()));
        out.add(p.new_id(id)).map_err(|e| err(e.to_string()))?;
    }
    for t in parsed.templates() {
        if !keep(
            t.as_ref(),
            t.effect(),
            delegable(t.annotation(crate::prover::DELEGABLE_ANNOTATION)),
        ) {
            continue;
        }
        let tid = PolicyId::new(format!("{holder}/template/{}", t.id()));
        out.add_template(t.clone().new_id(tid.clone()))
            .map_err(|e| err(e.to_string()))?;
        let id = PolicyId::new(format!("{holder}/{}", t.id()));
        out.link(tid, id, HashMap::from([(SlotId::principal(), principal.clone())]))
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const GRANT: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;

    fn row(id: &str, parent: Option<&str>, expires_at: i64) -> AgentRow {
        let mut r = AgentRow::sketch(id, parent, parent.map_or(0, |_| 1), 2, GRANT);
        r.expires_at = expires_at;
        r
    }

    /// What `live_children` counted before the index: every agent, filtered.
    fn scan(reg: &Registry, parent: Option<&str>, now: i64) -> usize {
        reg.iter()
            .filter(|a| a.row.parent.as_deref() == parent && !a.is_bundle_agent() && a.session.is_none() && a.is_live(now))
            .count()
    }

    /// What `check_sessions` counted before the index: every agent, filtered.
    fn scan_sessions(reg: &Registry, caller: &str, now: i64) -> usize {
        reg.iter()
            .filter(|a| a.session.as_ref().is_some_and(|s| s.caller == caller) && a.is_live(now))
            .count()
    }

    fn same_counts(reg: &Registry, what: &str) {
        for caller in ["r1", "c1", "s1", "nobody"] {
            for now in [0, 50, 99, 100, 150, 200, 1000, 2000] {
                assert_eq!(
                    reg.live_sessions(caller, now),
                    scan_sessions(reg, caller, now),
                    "{what}: sessions of {caller:?} at {now}"
                );
            }
        }
        for parent in [None, Some("r1"), Some("r2"), Some("c1"), Some("nobody")] {
            for now in [0, 50, 99, 100, 150, 200, 1000] {
                assert_eq!(
                    reg.live_children(parent, now),
                    scan(reg, parent, now),
                    "{what}: parent {parent:?} at {now}"
                );
            }
        }
    }

    #[test]
    fn registry_children_index_counts_as_a_scan_does() {
        let mut reg = Registry::default();
        let mut rows = vec![row("r1", None, 1000), row("r2", None, 100)];
        for (i, exp) in [1000, 1000, 100, 150].into_iter().enumerate() {
            rows.push(row(&format!("c{i}"), Some("r1"), exp));
        }
        rows.push(row("g1", Some("c1"), 200));
        rows.push(row("k2", Some("r2"), 100));
        let mut bundle = row("b1", None, i64::MAX);
        bundle.created_by = BUNDLE_CREATOR.to_owned();
        rows.push(bundle);
        let mut under_bundle = row("u1", Some("b1"), 1000);
        under_bundle.depth = 1;
        rows.push(under_bundle);
        for r in rows.clone() {
            reg = reg.with(r).unwrap();
            same_counts(&reg, "spawned");
        }
        assert_eq!(reg.live_children(Some("r1"), 120), 3);
        assert_eq!(reg.live_children(None, 50), 2, "the bundle agent is no root of the admin's");

        // A session names its callee's... whatever parent its row has: never a child.
        let session = SessionRow {
            id: "s1".to_owned(),
            caller: "c1".to_owned(),
            callee: "r1".to_owned(),
            depth: 1,
            chain: vec!["c1".to_owned(), "r1".to_owned()],
            caller_taint: 0,
            created_at: 0,
        };
        let older = reg.clone();
        reg = reg.with_session(row("s1", Some("r1"), 1000), Some(session.clone())).unwrap();
        same_counts(&reg, "session");
        assert_eq!(reg.live_children(Some("r1"), 0), 4);
        assert_eq!(reg.live_sessions("c1", 0), 1);
        assert_eq!(reg.live_sessions("c1", 1000), 0, "expired");

        // Revocation is seen at once, by every registry sharing the agent.
        reg.mark_revoked(&["c0".to_owned()]);
        same_counts(&reg, "revoked");
        same_counts(&older, "revoked, older registry");
        assert_eq!(reg.live_children(Some("r1"), 0), 3);

        // A re-grant (new rows, rebuilt descendants) keeps the index.
        let mut regranted = row("c1", Some("r1"), 50);
        regranted.grant = GRANT.to_owned();
        reg = reg.with_rows(vec![regranted.clone(), row("r1", None, 900)]).unwrap();
        same_counts(&reg, "re-granted");
        assert_eq!(reg.live_children(Some("r1"), 60), 2);

        // A restart builds the same index from the stored rows.
        let mut stored = rows;
        for r in stored.iter_mut() {
            if r.id == "c0" {
                r.revoked_at = Some(1);
            }
            if r.id == "c1" {
                *r = regranted.clone();
            }
        }
        stored.push(row("s1", Some("r1"), 1000));
        let restarted = Registry::from_rows_with_sessions(stored, vec![session]).unwrap();
        same_counts(&restarted, "restarted");
        for parent in [None, Some("r1"), Some("r2"), Some("c1")] {
            assert_eq!(restarted.live_children(parent, 60), reg.live_children(parent, 60), "{parent:?}");
        }
    }

    /// A spawn links the grant it parsed when accepting it: the agent is the one parsing the
    /// row's text again gives; a parse of another text is not used.
    #[test]
    fn an_agent_linked_from_the_accepted_parse_is_the_one_a_parse_gives() {
        let base = Registry::default().with(row("r1", None, 1000)).unwrap();
        let text = r#"@id("r") permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#;
        let mut child = row("c", Some("r1"), 1000);
        child.grant = text.to_owned();
        let parsed = Arc::new(PolicySet::from_str(text).unwrap());
        let other = Arc::new(PolicySet::from_str(GRANT).unwrap());
        let hops = |reg: &Registry| {
            let a = reg.get("c").unwrap();
            let hops: Vec<String> = a.hops.iter().map(|h| format!("{}: {}", h.agent, h.policies)).collect();
            (a.chain.clone(), a.chain_ceiling, hops)
        };
        let parsed_again = hops(&base.with(child.clone()).unwrap());
        assert_eq!(hops(&base.with_parsed(child.clone(), Some((text, &parsed))).unwrap()), parsed_again);
        assert_eq!(hops(&base.with_parsed(child.clone(), Some((GRANT, &other))).unwrap()), parsed_again);
        assert_eq!(hops(&base.with_parsed(child, None).unwrap()), parsed_again);
    }

    #[test]
    fn additions_are_told_apart_from_changes() {
        let base = Registry::default().with(row("r1", None, 1000)).unwrap();
        let one = base.with(row("a", Some("r1"), 1000)).unwrap();
        let two = one.with(row("b", Some("r1"), 1000)).unwrap();
        let ids = |v: Option<Vec<Arc<LiveAgent>>>| v.map(|v| v.iter().map(|a| a.row.id.clone()).collect::<Vec<_>>());
        assert_eq!(ids(two.added_to(&base)), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(ids(two.added_to(&one)), Some(vec!["b".to_owned()]));
        assert_eq!(ids(two.added_to(&two)), Some(vec![]));
        assert_eq!(ids(one.added_to(&two)), None, "an agent dropped");
        // A sibling line from the same base: not additions to each other.
        let other = base.with(row("c", Some("r1"), 1000)).unwrap();
        let other2 = other.with(row("d", Some("r1"), 1000)).unwrap();
        assert_eq!(ids(other2.added_to(&one)), None);
        assert_eq!(ids(other2.added_to(&base)), Some(vec!["c".to_owned(), "d".to_owned()]));
        // A re-grant or a replaced id changes agents: never additions.
        let regranted = two.with_rows(vec![row("a", Some("r1"), 500)]).unwrap();
        assert_eq!(ids(regranted.added_to(&two)), None);
        assert_eq!(ids(regranted.with(row("e", None, 9)).unwrap().added_to(&two)), None);
        let replaced = two.with(row("a", None, 10)).unwrap();
        assert_eq!(ids(replaced.added_to(&two)), None);
        // ... and moves in the children index with its row.
        assert_eq!(replaced.live_children(Some("r1"), 0), 1);
        assert_eq!(replaced.live_children(None, 0), 2);
        assert_eq!(two.live_children(Some("r1"), 0), 2, "the older registry keeps its own index");
        // A restart starts a new line.
        let loaded = Registry::from_rows_with_sessions(vec![row("r1", None, 1000)], vec![]).unwrap();
        assert_eq!(ids(loaded.added_to(&base)), None);
    }
}
