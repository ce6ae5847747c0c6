//! The live agents, in memory: each agent's chain and, for every hop of it, that hop's grant
//! already linked to the agent, so a decision links nothing at request time.
//!
//! INVARIANT: an agent's `hops` are its ancestors' grants and its own, root first, each linked
//! to the agent itself. Run-time authority is admin AND every hop: it only narrows down a chain.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use cedar_policy::{
    Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, RestrictedExpression, SlotId,
};

use super::store::AgentRow;

/// The entity type deputy's agents have in the schema.
pub const AGENT_TYPE: &str = "Agent";

/// True for deputy's `Agent` type (unqualified, as the schema must declare it), without
/// formatting the name.
pub fn is_agent_type(t: &EntityTypeName) -> bool {
    t.basename() == AGENT_TYPE && t.namespace_components().next().is_none()
}

/// One hop of a chain: an agent's grant linked to the acting agent.
pub struct Hop {
    pub agent: String,
    pub policies: PolicySet,
}

/// A live (or revoked, kept for the record) agent.
pub struct LiveAgent {
    pub row: AgentRow,
    pub uid: EntityUid,
    /// Root first, this agent last.
    pub chain: Vec<String>,
    pub hops: Vec<Hop>,
    revoked: AtomicBool,
    taint: AtomicI64,
}

impl LiveAgent {
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }

    pub fn mark_revoked(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    pub fn taint(&self) -> i64 {
        self.taint.load(Ordering::Acquire)
    }

    /// Raises the session taint; returns true when it went up.
    pub fn raise_taint(&self, level: i64) -> bool {
        self.taint.fetch_max(level, Ordering::AcqRel) < level
    }

    pub fn is_expired(&self, now: i64) -> bool {
        now >= self.row.expires_at
    }

    /// Live: neither revoked nor expired.
    pub fn is_live(&self, now: i64) -> bool {
        !self.is_revoked() && !self.is_expired(now)
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

/// All agents by id. Cheap to extend: agents are shared `Arc`s.
#[derive(Clone, Default)]
pub struct Registry {
    agents: HashMap<String, Arc<LiveAgent>>,
}

impl Registry {
    /// Builds the registry from stored rows (parents before children).
    pub fn from_rows(rows: Vec<AgentRow>) -> Result<Registry, RegistryError> {
        let mut reg = Registry::default();
        for row in rows {
            reg = reg.with(row)?;
        }
        Ok(reg)
    }

    /// A registry that also holds `row`.
    pub fn with(&self, row: AgentRow) -> Result<Registry, RegistryError> {
        let agent = build(&self.agents, row)?;
        let mut agents = self.agents.clone();
        agents.insert(agent.row.id.clone(), Arc::new(agent));
        Ok(Registry { agents })
    }

    /// A registry in which `id`'s grant is `grant`: the agent and every descendant are rebuilt,
    /// since each descendant holds this grant linked to itself as one of its hops.
    pub fn with_grant(&self, id: &str, grant: &str, digest: &str) -> Result<Registry, RegistryError> {
        let mut affected: Vec<Arc<LiveAgent>> = self
            .agents
            .values()
            .filter(|a| a.chain.iter().any(|c| c == id))
            .cloned()
            .collect();
        affected.sort_by_key(|a| a.row.depth);
        let mut agents = self.agents.clone();
        for a in affected {
            let mut row = a.row.clone();
            if row.id == id {
                row.grant = grant.to_owned();
                row.grant_digest = digest.to_owned();
            }
            row.taint = a.taint();
            let rebuilt = build(&agents, row)?;
            if a.is_revoked() {
                rebuilt.mark_revoked();
            }
            agents.insert(rebuilt.row.id.clone(), Arc::new(rebuilt));
        }
        Ok(Registry { agents })
    }

    pub fn get(&self, id: &str) -> Option<&Arc<LiveAgent>> {
        self.agents.get(id)
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<LiveAgent>> {
        self.agents.values()
    }

    /// `id` and all its descendants.
    pub fn subtree(&self, id: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .agents
            .values()
            .filter(|a| a.chain.iter().any(|c| c == id))
            .map(|a| a.row.id.clone())
            .collect();
        // Deepest first does not matter for revocation, but a stable order helps the audit.
        out.sort_by_key(|id| self.agents.get(id).map_or(0, |a| a.row.depth));
        out
    }

    /// The Cedar entities of all agents, to add to the bundle's store.
    pub fn entities(&self) -> Vec<Entity> {
        self.agents
            .values()
            .filter_map(|a| agent_entity(&a.row, &a.uid).ok())
            .collect()
    }

    /// The bundle's entities plus every agent's. Built when either changes, never per request.
    pub fn combined_entities(&self, bundle: &Entities, schema: &cedar_policy::Schema) -> Result<Entities, String> {
        let ids: HashSet<EntityUid> = self.agents.values().map(|a| a.uid.clone()).collect();
        // An agent deputy created wins over a bundle entity of the same uid (ids are random,
        // so this only happens when a bundle names one on purpose).
        let base: Vec<Entity> = bundle.iter().filter(|e| !ids.contains(&e.uid())).cloned().collect();
        Entities::from_entities(base.into_iter().chain(self.entities()), Some(schema)).map_err(|e| e.to_string())
    }
}

pub fn agent_uid(id: &str) -> Result<EntityUid, String> {
    let ty = EntityTypeName::from_str(AGENT_TYPE).map_err(|e| e.to_string())?;
    Ok(EntityUid::from_type_name_and_id(ty, EntityId::new(id)))
}

fn agent_entity(row: &AgentRow, uid: &EntityUid) -> Result<Entity, String> {
    let attrs = HashMap::from([
        (
            "can_delegate".to_owned(),
            RestrictedExpression::new_bool(row.can_delegate),
        ),
        ("ceiling".to_owned(), RestrictedExpression::new_long(row.ceiling)),
        ("depth".to_owned(), RestrictedExpression::new_long(row.depth)),
    ]);
    Entity::new(uid.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())
}

fn build(agents: &HashMap<String, Arc<LiveAgent>>, row: AgentRow) -> Result<LiveAgent, RegistryError> {
    let uid = agent_uid(&row.id).map_err(|message| RegistryError::Entity {
        agent: row.id.clone(),
        message,
    })?;
    let mut chain = match &row.parent {
        None => Vec::new(),
        Some(parent) => agents
            .get(parent)
            .map(|p| p.chain.clone())
            .ok_or_else(|| RegistryError::UnknownParent {
                agent: row.id.clone(),
                parent: parent.clone(),
            })?,
    };
    chain.push(row.id.clone());
    let mut hops = Vec::with_capacity(chain.len());
    for hop in &chain {
        let grant = if *hop == row.id {
            row.grant.as_str()
        } else {
            agents.get(hop).map_or("", |a| a.row.grant.as_str())
        };
        hops.push(Hop {
            agent: hop.clone(),
            policies: link(hop, grant, &uid)?,
        });
    }
    let revoked = row.revoked_at.is_some();
    let taint = row.taint;
    Ok(LiveAgent {
        row,
        uid,
        chain,
        hops,
        revoked: AtomicBool::new(revoked),
        taint: AtomicI64::new(taint),
    })
}

/// Links every template of `grant` (held by `holder`) to `principal`; ids are
/// `<holder>/<policy id>` so a reason says whose grant it came from.
pub fn link(holder: &str, grant: &str, principal: &EntityUid) -> Result<PolicySet, RegistryError> {
    let err = |message: String| RegistryError::Grant {
        agent: holder.to_owned(),
        message,
    };
    let parsed = PolicySet::from_str(grant).map_err(|e| err(e.to_string()))?;
    let mut out = PolicySet::new();
    for p in parsed.policies() {
        let id = PolicyId::new(format!("{holder}/{}", p.id()));
        out.add(p.new_id(id)).map_err(|e| err(e.to_string()))?;
    }
    for t in parsed.templates() {
        let tid = PolicyId::new(format!("{holder}/template/{}", t.id()));
        out.add_template(t.clone().new_id(tid.clone()))
            .map_err(|e| err(e.to_string()))?;
        let id = PolicyId::new(format!("{holder}/{}", t.id()));
        out.link(tid, id, HashMap::from([(SlotId::principal(), principal.clone())]))
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(out)
}
