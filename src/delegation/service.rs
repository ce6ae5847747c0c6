//! The delegation operations: create an agent (a root by the admin, a child by its parent, with
//! a proof), revoke or complete a subtree, read the audit trail. Synchronous and blocking
//! (proofs and SQLite): the HTTP layer calls these under `spawn_blocking`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use cedar_policy::{Context, EntityUid, Request};
use serde::Serialize;
use serde_json::{json, Value};

use super::credential;
use super::registry::{agent_uid, LiveAgent, Registry};
use super::store::{AgentRow, AuditEvent, AuditRecord, StateError, Store};
use crate::prover::{self, Grant, ProveOptions, Verdict};
use crate::snapshot::{Live, Snapshot};

/// The file name of the state database inside `--state DIR`.
pub const STATE_FILE: &str = "deputy.sqlite3";
/// The annotation that turns a forbid into "not without approval".
pub const ASK_ANNOTATION: &str = "ask";
/// Longest lifetime deputy grants an agent, whatever is asked.
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 3600;
/// The action a parent is authorized for when it spawns a child.
pub const DELEGATE_ACTION: &str = "delegate";

/// Bounds on what callers can make deputy hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest grant text accepted (bytes), for delegations and permission requests.
    pub max_grant_bytes: usize,
    /// Most live children one agent (or the admin, for roots) may have at once.
    pub max_children: usize,
    /// Most pending permission requests one agent may have open.
    pub max_pending_requests: usize,
    /// Largest the state database may grow, in MiB; past it, changes fail (503) and decisions go on.
    pub max_state_mib: u64,
    /// The SMT second opinion (SymCC + cvc5) that settles inconclusive delegation and
    /// permission proofs, bounded by its time limits. `None`: deputy proves alone.
    pub solver: Option<crate::prover::SolverConfig>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_grant_bytes: 64 * 1024,
            max_children: 256,
            max_pending_requests: 32,
            max_state_mib: 1024,
            solver: None,
        }
    }
}

/// Who is calling, proven by the credential presented.
#[derive(Clone)]
pub enum Caller {
    Admin,
    Agent(Arc<LiveAgent>),
}

impl Caller {
    pub fn name(&self) -> String {
        match self {
            Caller::Admin => "admin".to_owned(),
            Caller::Agent(a) => format!("Agent::\"{}\"", a.row.id),
        }
    }
}

/// A delegation error: an HTTP status, a stable code, a message, maybe a hint and details
/// (a counterexample, the policies that denied).
#[derive(Debug, Clone, Serialize)]
pub struct DelegationError {
    #[serde(skip)]
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[serde(flatten)]
    pub details: Box<serde_json::Map<String, Value>>,
}

impl DelegationError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            help: None,
            details: Box::default(),
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn detail(mut self, key: &str, value: Value) -> Self {
        self.details.insert(key.to_owned(), value);
        self
    }

    pub(super) fn state(e: StateError) -> Self {
        tracing::error!(error = %e, "delegation state failed; nothing was applied");
        Self::new(
            503,
            "state_unavailable",
            "the delegation state store failed; nothing was changed",
        )
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(401, "unauthenticated", message).help("send `Authorization: Bearer <credential>`")
    }
}

/// What a caller asks for when creating an agent.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    pub grant: String,
    pub ttl_seconds: i64,
    pub ceiling: Option<i64>,
    pub can_delegate: bool,
    pub task: String,
    pub reason: String,
    /// A name for the new agent; generated when absent.
    pub agent_id: Option<String>,
    /// The id of an approved pending delegation this request carries out (same parameters).
    pub approved_request: Option<String>,
}

/// The outcome of a spawn that was not an error.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SpawnOutcome {
    Applied {
        delegation_id: String,
        agent: Value,
        credential: String,
        expires_at: i64,
        ttl_seconds: i64,
        ttl_capped: bool,
        depth: i64,
        taint: i64,
        proof: Value,
        policy_version: String,
    },
    Pending {
        request_id: String,
        approver: Option<String>,
        why: String,
        proof: Value,
        policy_version: String,
    },
}

pub struct Delegation {
    pub(super) store: Store,
    pub(super) live: Arc<Live>,
    admin_token: Option<String>,
    pub(super) metrics: Option<Arc<crate::telemetry::Metrics>>,
    /// Woken whenever a permission request changes, for long polls.
    pub(super) requests_changed: tokio::sync::Notify,
    /// Live grants that no longer prove within their parent's under the serving bundle.
    drift: std::sync::Mutex<Vec<Drift>>,
    /// Credential hashes of agents the bundle declares (`--agent-credential-file ID=FILE`).
    bundle_tokens: HashMap<String, String>,
    pub(super) limits: Limits,
}

/// Who created an agent that the bundle declares (with a grant in `grants/`).
pub const BUNDLE_CREATOR: &str = "bundle";
/// Bundle-declared agents live as long as the bundle declares them.
const BUNDLE_AGENT_EXPIRY: i64 = i64::MAX / 2;

/// A live grant the current bundle no longer proves within its parent's delegable view. The
/// run-time chain intersection still keeps it from exceeding; this is a report.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub agent: String,
    pub parent: String,
    pub policy_version: String,
    /// `exceeds`, `inconclusive` or `invalid` (the grant no longer validates).
    pub verdict: String,
    pub detail: Value,
}

impl Delegation {
    /// Opens the state in `dir` and loads every stored agent into the live registry.
    pub fn open(
        dir: &Path,
        live: Arc<Live>,
        admin_token: Option<String>,
        agent_tokens: &HashMap<String, String>,
        limits: Limits,
    ) -> Result<Delegation, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create state directory `{}`: {e}", dir.display()))?;
        let store = Store::open(&dir.join(STATE_FILE)).map_err(|e| e.to_string())?;
        store.limit_size(limits.max_state_mib).map_err(|e| e.to_string())?;
        let rows = store.agents().map_err(|e| e.to_string())?;
        let registry = Registry::from_rows(rows).map_err(|e| e.to_string())?;
        live.update_registry(|_| Ok(registry))?;
        Ok(Delegation {
            store,
            live,
            admin_token,
            metrics: None,
            requests_changed: tokio::sync::Notify::new(),
            drift: std::sync::Mutex::new(Vec::new()),
            bundle_tokens: agent_tokens
                .iter()
                .map(|(id, t)| (id.clone(), credential::hash(t)))
                .collect(),
            limits,
        })
    }

    /// Counts proofs and revocations in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Identifies the caller from a bearer credential. Never from a name the caller states.
    pub fn authenticate(&self, snap: &Snapshot, bearer: Option<&str>, now: i64) -> Result<Caller, DelegationError> {
        let token = bearer.ok_or_else(|| DelegationError::unauthenticated("no credential was presented"))?;
        if let Some(admin) = &self.admin_token {
            if credential::verify_admin(token, admin) {
                return Ok(Caller::Admin);
            }
        }
        let bad = || DelegationError::unauthenticated("the credential is not valid");
        // An agent the bundle declares presents the credential it was given from a Secret;
        // anyone else a `dpt.<id>.<secret>` credential deputy issued.
        let bundle_agent = self
            .bundle_tokens
            .iter()
            .find(|(_, hash)| credential::verify(token, hash))
            .map(|(id, _)| id.as_str());
        let agent = match bundle_agent {
            Some(id) => snap
                .agents
                .get(id)
                .filter(|a| a.row.created_by == BUNDLE_CREATOR)
                .ok_or_else(bad)?,
            None => {
                let id = credential::claimed_agent(token).ok_or_else(bad)?;
                let agent = snap.agents.get(id).ok_or_else(bad)?;
                if agent.row.created_by == BUNDLE_CREATOR || !credential::verify(token, &agent.row.credential_hash) {
                    return Err(bad());
                }
                agent
            }
        };
        if agent.is_revoked() {
            return Err(DelegationError::unauthenticated("this agent was revoked"));
        }
        if agent.is_expired(now) {
            return Err(DelegationError::unauthenticated("this agent's lifetime ended"));
        }
        Ok(Caller::Agent(Arc::clone(agent)))
    }

    /// Creates an agent: a root one for the admin, a child for an agent.
    pub fn spawn(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        req: SpawnRequest,
        now: i64,
    ) -> Result<SpawnOutcome, DelegationError> {
        let parent = match caller {
            Caller::Admin => None,
            Caller::Agent(a) => Some(Arc::clone(a)),
        };
        self.check_grant_size(&req.grant)?;
        let parent_id = parent.as_ref().map(|p| p.row.id.clone());
        let children = snap
            .agents
            .iter()
            .filter(|a| a.row.parent == parent_id && a.row.created_by != BUNDLE_CREATOR && a.is_live(now))
            .count();
        if children >= self.limits.max_children {
            return Err(DelegationError::new(
                429,
                "too_many_agents",
                format!(
                    "{} already has {children} live children; the limit is {}",
                    caller.name(),
                    self.limits.max_children
                ),
            )
            .help("complete or revoke children whose tasks are done"));
        }
        let id = match &req.agent_id {
            Some(id) => check_new_id(&snap.agents, parent.as_deref(), id)?,
            None => format!("agt-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        };
        let child_uid =
            agent_uid(&id).map_err(|e| DelegationError::new(400, "invalid_field", format!("`agent_id`: {e}")))?;
        if req.ttl_seconds <= 0 {
            return Err(DelegationError::new(
                400,
                "invalid_field",
                "`ttl_seconds` must be positive",
            ));
        }
        let depth = parent.as_ref().map_or(0, |p| p.row.depth + 1);
        let taint = parent.as_ref().map_or(0, |p| p.taint());
        let ceiling = req.ceiling.or(parent.as_ref().map(|p| p.row.ceiling)).ok_or_else(|| {
            DelegationError::new(
                400,
                "missing_field",
                "missing required field `ceiling` (a root agent has no parent to inherit it from)",
            )
        })?;
        let mut ttl = req.ttl_seconds.min(MAX_TTL_SECONDS);
        if let Some(p) = &parent {
            ttl = ttl.min(p.row.expires_at - now);
        }
        let ttl_capped = ttl < req.ttl_seconds;

        let grant = Grant::parse(&req.grant).map_err(|e| grant_error(&e))?;
        prover::validate_grant(&grant, &snap.bundle.schema).map_err(|e| grant_error(&e))?;

        let Some(parent) = parent else {
            // The admin is the grantor of a root agent: nothing to prove against; the admin
            // maximum bounds it at run time like every other agent.
            let proof = json!({"verdict": "not_required", "reason": "a root agent is granted by the admin"});
            return self.apply(
                snap, caller, &id, None, depth, ceiling, taint, &grant, &req, ttl, ttl_capped, proof, now,
            );
        };

        let mut audit_base = json!({
            "parent": parent.row.id, "child": id, "grant_digest": grant.digest(), "task": req.task,
            "reason": req.reason, "ttl_seconds": ttl, "ceiling": ceiling, "depth": depth,
            "policy_version": snap.bundle.version,
        });

        // INVARIANT: deputy enforces can_delegate itself too; an admin rule can only add to it.
        if !parent.row.can_delegate {
            return Err(self.reject(
                caller,
                &mut audit_base,
                DelegationError::new(
                    403,
                    "delegation_forbidden",
                    format!("agent `{}` may not delegate (can_delegate is false)", parent.row.id),
                )
                .help("ask your own grantor to do this, or to give the permission to you directly"),
                now,
            ));
        }

        let approval = match &req.approved_request {
            Some(rid) => Some(self.approved_delegation(rid, &parent.row.id, &req, now)?),
            None => None,
        };

        // 1. May the parent delegate this at all? Ordinary Cedar, in the admin's policies.
        let context = json!({"depth": depth, "ttl_seconds": ttl, "ceiling": ceiling, "taint": taint, "task": req.task});
        let cedar = delegate_decision(snap, &parent.uid, &child_uid, context)?;
        let ask = match cedar {
            Gate::Allow => None,
            // The approver already said yes to exactly this delegation.
            Gate::Ask(..) if approval.is_some() => None,
            Gate::Ask(approver, policies) => Some((approver, policies)),
            Gate::Deny(policies) => {
                let message = if policies.is_empty() {
                    "no admin policy permits this delegation".to_owned()
                } else {
                    format!("the admin's delegation rules forbid it: {}", policies.join(", "))
                };
                return Err(self.reject(
                    caller,
                    &mut audit_base,
                    DelegationError::new(403, "delegation_forbidden", message).detail("policies", json!(policies)),
                    now,
                ));
            }
        };

        // 2. Is the child's grant within the parent's delegable view?
        let parent_grant = Grant::parse(&parent.row.grant).map_err(|e| {
            DelegationError::new(
                500,
                "internal",
                format!("the parent's stored grant no longer parses: {e}"),
            )
        })?;
        let opts = ProveOptions {
            child_principal: Some(child_uid.clone()),
            solver: self.limits.solver.clone(),
            ..ProveOptions::default()
        };
        let verdict = crate::telemetry::prove_observed(self.metrics.as_deref(), || {
            prover::prove(&grant, &parent_grant, &snap.bundle.schema, snap.entities(), &opts)
        })
        .map_err(|e| grant_error(&e))?;
        let proof = serde_json::to_value(&verdict).unwrap_or(Value::Null);
        audit_base["proof"] = json!(verdict.name());
        match (&verdict, ask) {
            (Verdict::Exceeds(_), _) => Err(self.reject(
                caller,
                &mut audit_base,
                DelegationError::new(
                    403,
                    "grant_exceeds_parent",
                    "the child's grant allows a request the parent's delegable view denies",
                )
                .help("narrow the grant, or request the permission from your own grantor first")
                .detail("proof", proof),
                now,
            )),
            // Within, or Inconclusive that a human approved: apply. The run-time chain
            // intersection bounds the child whatever the proof could not settle.
            (Verdict::Within(_), None) | (Verdict::Inconclusive(_), None)
                if verdict.is_within() || approval.is_some() =>
            {
                let applied = self.apply(
                    snap,
                    caller,
                    &id,
                    Some(&parent),
                    depth,
                    ceiling,
                    taint,
                    &grant,
                    &req,
                    ttl,
                    ttl_capped,
                    proof,
                    now,
                )?;
                if let Some(rid) = &approval {
                    self.mark_used(rid, &id, now);
                }
                Ok(applied)
            }
            (_, ask) => {
                let (approver, why) = match ask {
                    Some((approver, policies)) => (approver, format!("approval required by {}", policies.join(", "))),
                    None => (None, "the proof was inconclusive; a human must decide".to_owned()),
                };
                let request_id = format!("req-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
                // The named approver when it is an agent on the parent's chain; else a human.
                let decider = approver
                    .clone()
                    .filter(|a| parent.chain.contains(a))
                    .unwrap_or_else(|| super::ADMIN_APPROVER.to_owned());
                audit_base["request_id"] = json!(request_id);
                audit_base["approver"] = json!(decider);
                audit_base["why"] = json!(why);
                let row = super::store::PermissionRow {
                    id: request_id.clone(),
                    requester: parent.row.id.clone(),
                    approver: decider,
                    grant: req.grant.clone(),
                    reason: req.reason.clone(),
                    status: "pending".to_owned(),
                    created_at: now,
                    expires_at: now + super::permission::DEFAULT_REQUEST_TTL,
                    updated_at: now,
                    history: vec![json!({
                        "at": now, "event": "requested", "kind": DELEGATION_KIND, "by": parent.row.id, "why": why,
                        "spawn": spawn_params(&req),
                    })],
                };
                self.store
                    .save_request(
                        &row,
                        now,
                        AuditEvent {
                            event: "pending",
                            actor: caller.name(),
                            agent: Some(parent.row.id.clone()),
                            details: audit_base,
                        },
                    )
                    .map_err(DelegationError::state)?;
                self.requests_changed.notify_waiters();
                Ok(SpawnOutcome::Pending {
                    request_id,
                    approver,
                    why,
                    proof,
                    policy_version: snap.bundle.version.clone(),
                })
            }
        }
    }

    fn reject(&self, caller: &Caller, audit: &mut Value, err: DelegationError, now: i64) -> DelegationError {
        audit["code"] = json!(err.code);
        audit["message"] = json!(err.message);
        let agent = audit["parent"].as_str().map(str::to_owned);
        if let Err(e) = self.store.audit(
            now,
            AuditEvent {
                event: "rejected",
                actor: caller.name(),
                agent,
                details: audit.clone(),
            },
        ) {
            return DelegationError::state(e);
        }
        err
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per kind of grantor; a struct would only rename them"
    )]
    fn apply(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        id: &str,
        parent: Option<&Arc<LiveAgent>>,
        depth: i64,
        ceiling: i64,
        taint: i64,
        grant: &Grant,
        req: &SpawnRequest,
        ttl: i64,
        ttl_capped: bool,
        proof: Value,
        now: i64,
    ) -> Result<SpawnOutcome, DelegationError> {
        let issued = credential::issue(id)
            .map_err(|e| DelegationError::new(500, "internal", format!("no randomness for a credential: {e}")))?;
        let row = AgentRow {
            id: id.to_owned(),
            parent: parent.map(|p| p.row.id.clone()),
            depth,
            can_delegate: req.can_delegate,
            ceiling,
            taint,
            grant: req.grant.clone(),
            grant_digest: grant.digest(),
            credential_hash: issued.hash,
            task: req.task.clone(),
            reason: req.reason.clone(),
            created_by: caller.name(),
            created_at: now,
            expires_at: now + ttl,
            revoked_at: None,
            revoked_reason: None,
            bundle_version: snap.bundle.version.clone(),
            proof: proof.clone(),
        };
        // Check the registry accepts it (the grant links) before anything is written.
        self.live
            .registry()
            .with(row.clone())
            .map_err(|e| DelegationError::new(400, "grant_invalid", e.to_string()))?;
        let audit = AuditEvent {
            event: "applied",
            actor: caller.name(),
            agent: Some(id.to_owned()),
            details: json!({
                "parent": row.parent, "grant_digest": row.grant_digest, "task": row.task, "reason": row.reason,
                "ttl_seconds": ttl, "ttl_capped": ttl_capped, "ceiling": ceiling, "depth": depth, "taint": taint,
                "can_delegate": row.can_delegate, "proof": proof.get("verdict").cloned().unwrap_or(Value::Null),
                "policy_version": snap.bundle.version,
            }),
        };
        self.store
            .insert_agent(&row, now, audit)
            .map_err(DelegationError::state)?;
        self.live
            // Extend what is current now: another spawn or a grant change may have landed since
            // the check above, and a registry built before it would undo that change.
            .update_registry(|current| current.with(row.clone()).map_err(|e| e.to_string()))
            .map_err(|e| DelegationError::new(500, "internal", e))?;
        Ok(SpawnOutcome::Applied {
            delegation_id: id.to_owned(),
            agent: json!({"type": super::AGENT_TYPE, "id": id}),
            credential: issued.token,
            expires_at: now + ttl,
            ttl_seconds: ttl,
            ttl_capped,
            depth,
            taint,
            proof,
            policy_version: snap.bundle.version.clone(),
        })
    }

    /// Revokes `id` and all its descendants. The caller must be the admin, the agent itself
    /// (for `complete` only) or one of its ancestors.
    pub fn revoke(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        id: &str,
        completed: bool,
        now: i64,
    ) -> Result<Vec<String>, DelegationError> {
        let target = snap
            .agents
            .get(id)
            .ok_or_else(|| DelegationError::new(404, "delegation_not_found", format!("no delegation `{id}`")))?;
        let allowed = match caller {
            Caller::Admin => true,
            Caller::Agent(a) => {
                let ancestor = a.row.id != target.row.id && target.chain.contains(&a.row.id);
                ancestor || (completed && a.row.id == target.row.id)
            }
        };
        if !allowed {
            return Err(DelegationError::new(
                403,
                "not_your_delegation",
                format!(
                    "only the admin or an ancestor of `{id}` may {}",
                    if completed { "complete it" } else { "revoke it" }
                ),
            ));
        }
        let ids = snap.agents.subtree(id);
        let (event, reason) = if completed {
            ("completed", "task completed")
        } else {
            ("revoked", "revoked")
        };
        let details = json!({"root": id, "by": caller.name(), "cascade": ids, "policy_version": snap.bundle.version});
        self.store
            .revoke(&ids, now, reason, event, &caller.name(), &details)
            .map_err(DelegationError::state)?;
        if let Some(m) = &self.metrics {
            m.revoked(event, ids.len());
        }
        self.mark_revoked(&ids);
        self.close_requests_of(&ids, now, event);
        Ok(ids)
    }

    /// Records and revokes agents whose lifetime ended (with their subtrees).
    pub fn sweep_expired(&self, snap: &Snapshot, now: i64) {
        let expired: Vec<String> = snap
            .agents
            .iter()
            .filter(|a| !a.is_revoked() && a.is_expired(now))
            .map(|a| a.row.id.clone())
            .collect();
        for id in expired {
            let ids = snap.agents.subtree(&id);
            let details = json!({"root": id, "cascade": ids});
            match self.store.revoke(&ids, now, "expired", "expired", "deputy", &details) {
                Ok(_) => {
                    if let Some(m) = &self.metrics {
                        m.revoked("expired", ids.len());
                    }
                    self.mark_revoked(&ids);
                    self.close_requests_of(&ids, now, "expired");
                }
                Err(e) => tracing::error!(error = %e, "cannot record an expiry"),
            }
        }
        self.expire_requests(now);
    }

    /// Marks agents revoked in the live registry (whose agents every snapshot shares).
    fn mark_revoked(&self, ids: &[String]) {
        let registry = self.live.registry();
        for id in ids {
            if let Some(a) = registry.get(id) {
                a.mark_revoked();
            }
        }
    }

    /// Makes the agents the bundle declares with a grant (`grants/<id>.cedar`) root agents:
    /// new ones are recorded, changed grants replace the stored ones (descendants re-linked),
    /// and agents the bundle no longer declares are revoked with their subtrees. Blocking; runs
    /// when a bundle loads, before the re-proof.
    pub fn sync_bundle_agents(&self, bundle: &crate::bundle::Bundle, now: i64) {
        let registry = self.live.registry();
        for (id, grant) in &bundle.grants {
            let digest = Grant::parse(grant).map(|g| g.digest()).unwrap_or_default();
            match registry.get(id) {
                Some(a) if a.row.created_by != BUNDLE_CREATOR => {
                    tracing::error!(agent = %id, "the bundle ships a grant for an agent deputy created; ignoring it");
                }
                Some(a) if a.row.grant == *grant && !a.is_revoked() => {}
                Some(a) if !a.is_revoked() => {
                    let audit = vec![AuditEvent {
                        event: "grant_replaced",
                        actor: BUNDLE_CREATOR.to_owned(),
                        agent: Some(id.clone()),
                        details: json!({"grant_digest": digest, "policy_version": bundle.version}),
                    }];
                    let updates = [(id.clone(), grant.clone(), digest.clone())];
                    if let Err(e) = self.store.update_grants(&updates, now, audit, None) {
                        tracing::error!(agent = %id, error = %e, "cannot record a bundle grant change");
                        continue;
                    }
                    if let Err(e) = self
                        .live
                        .update_registry(|r| r.with_grant(id, grant, &digest).map_err(|e| e.to_string()))
                    {
                        tracing::error!(agent = %id, error = %e, "cannot apply a bundle grant change");
                    }
                }
                // Revoked earlier (removed from a previous bundle): it stays revoked.
                Some(_) => {}
                None => self.insert_bundle_agent(bundle, id, grant, &digest, now),
            }
        }
        let removed: Vec<String> = registry
            .iter()
            .filter(|a| a.row.created_by == BUNDLE_CREATOR && !a.is_revoked() && !bundle.grants.contains_key(&a.row.id))
            .map(|a| a.row.id.clone())
            .collect();
        for id in removed {
            let ids = registry.subtree(&id);
            let details = json!({"root": id, "cascade": ids, "policy_version": bundle.version});
            match self.store.revoke(
                &ids,
                now,
                "removed from the bundle",
                "revoked",
                BUNDLE_CREATOR,
                &details,
            ) {
                Ok(_) => {
                    self.mark_revoked(&ids);
                    self.close_requests_of(&ids, now, "revoked");
                }
                Err(e) => tracing::error!(agent = %id, error = %e, "cannot revoke an agent the bundle dropped"),
            }
        }
    }

    fn insert_bundle_agent(&self, bundle: &crate::bundle::Bundle, id: &str, grant: &str, digest: &str, now: i64) {
        let attr = |name: &str| -> Option<cedar_policy::EvalResult> {
            let uid = agent_uid(id).ok()?;
            bundle.entities.get(&uid)?.attr(name)?.ok()
        };
        let long = |name: &str| match attr(name) {
            Some(cedar_policy::EvalResult::Long(l)) => l,
            _ => 0,
        };
        let row = AgentRow {
            id: id.to_owned(),
            parent: None,
            depth: long("depth"),
            can_delegate: matches!(attr("can_delegate"), Some(cedar_policy::EvalResult::Bool(true))),
            ceiling: long("ceiling"),
            taint: 0,
            grant: grant.to_owned(),
            grant_digest: digest.to_owned(),
            credential_hash: String::new(),
            task: "declared in the bundle".to_owned(),
            reason: String::new(),
            created_by: BUNDLE_CREATOR.to_owned(),
            created_at: now,
            expires_at: BUNDLE_AGENT_EXPIRY,
            revoked_at: None,
            revoked_reason: None,
            bundle_version: bundle.version.clone(),
            proof: json!({"verdict": "not_required", "reason": "shipped in the bundle by the admin"}),
        };
        let audit = AuditEvent {
            event: "applied",
            actor: BUNDLE_CREATOR.to_owned(),
            agent: Some(id.to_owned()),
            details: json!({"grant_digest": digest, "policy_version": bundle.version, "source": "grants/"}),
        };
        if let Err(e) = self.store.insert_agent(&row, now, audit) {
            tracing::error!(agent = %id, error = %e, "cannot record an agent the bundle declares");
            return;
        }
        if let Err(e) = self
            .live
            .update_registry(|r| r.with(row.clone()).map_err(|e| e.to_string()))
        {
            tracing::error!(agent = %id, error = %e, "cannot load an agent the bundle declares");
        }
    }

    /// Re-proves every live child's grant against its parent's under the serving bundle and
    /// reports the ones that no longer fit (log, audit, `/v1/status`). Blocking; runs when a
    /// bundle loads.
    pub fn reprove_all(&self, now: i64) {
        let Some(snap) = self.live.current() else { return };
        let mut found = Vec::new();
        for agent in snap.agents.iter().filter(|a| a.is_live(now)) {
            let Some(parent) = agent.row.parent.as_ref().and_then(|p| snap.agents.get(p)) else {
                continue;
            };
            let result = Grant::parse(&agent.row.grant).and_then(|child| {
                let parent_grant = Grant::parse(&parent.row.grant)?;
                let opts = ProveOptions {
                    child_principal: Some(agent.uid.clone()),
                    ..ProveOptions::default()
                };
                prover::prove(&child, &parent_grant, &snap.bundle.schema, snap.entities(), &opts)
            });
            let (verdict, detail) = match result {
                Ok(Verdict::Within(_)) => continue,
                Ok(v) => (v.name().to_owned(), serde_json::to_value(&v).unwrap_or(Value::Null)),
                Err(e) => ("invalid".to_owned(), json!(e.to_string())),
            };
            found.push(Drift {
                agent: agent.row.id.clone(),
                parent: parent.row.id.clone(),
                policy_version: snap.bundle.version.clone(),
                verdict,
                detail,
            });
        }
        for d in &found {
            tracing::warn!(agent = %d.agent, parent = %d.parent, verdict = %d.verdict, version = %d.policy_version,
                "a live grant no longer proves within its parent's under the new bundle; the chain intersection still bounds it");
            let audit = AuditEvent {
                event: "drift",
                actor: "deputy".to_owned(),
                agent: Some(d.agent.clone()),
                details: json!({"parent": d.parent, "verdict": d.verdict, "policy_version": d.policy_version}),
            };
            if let Err(e) = self.store.audit(now, audit) {
                tracing::error!(error = %e, "cannot record drift");
            }
        }
        if let Ok(mut drift) = self.drift.lock() {
            *drift = found;
        }
    }

    /// The drift found at the last re-proof.
    pub fn drift(&self) -> Vec<Drift> {
        self.drift.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// How many agents are live now.
    pub fn live_agents(&self, now: i64) -> usize {
        self.live
            .current()
            .map_or(0, |s| s.agents.iter().filter(|a| a.is_live(now)).count())
    }

    /// Persists a raised taint (best effort: the in-memory taint already holds).
    pub fn persist_taint(&self, id: &str, taint: i64) {
        if let Err(e) = self.store.raise_taint(id, taint) {
            tracing::warn!(agent = id, error = %e, "cannot persist an agent's taint");
        }
    }

    /// The audit trail (admin only).
    pub fn audit(
        &self,
        caller: &Caller,
        agent: Option<&str>,
        since: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, DelegationError> {
        if !matches!(caller, Caller::Admin) {
            return Err(DelegationError::new(
                403,
                "admin_only",
                "the audit trail needs the admin credential",
            ));
        }
        self.store
            .audit_records(agent, since, limit)
            .map_err(DelegationError::state)
    }

    /// Checks the audit hash chain; `Some(problem)` names the first broken record.
    pub fn verify_audit(&self) -> Result<Option<String>, DelegationError> {
        self.store.verify_audit().map_err(DelegationError::state)
    }
}

impl Delegation {
    pub(super) fn check_grant_size(&self, grant: &str) -> Result<(), DelegationError> {
        if grant.len() > self.limits.max_grant_bytes {
            return Err(DelegationError::new(
                413,
                "grant_too_large",
                format!(
                    "`grant` is {} bytes; the limit is {}",
                    grant.len(),
                    self.limits.max_grant_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// The kind of a pending request that is a whole delegation (rather than more permission).
pub(super) const DELEGATION_KIND: &str = "delegation";

/// The parameters an approval of a pending delegation is bound to.
fn spawn_params(req: &SpawnRequest) -> Value {
    json!({"ttl_seconds": req.ttl_seconds, "ceiling": req.ceiling, "can_delegate": req.can_delegate,
           "task": req.task, "agent_id": req.agent_id})
}

impl Delegation {
    /// Checks that `rid` is an approved pending delegation of `parent` for exactly `req`.
    fn approved_delegation(
        &self,
        rid: &str,
        parent: &str,
        req: &SpawnRequest,
        now: i64,
    ) -> Result<String, DelegationError> {
        let row = self
            .store
            .request(rid)
            .map_err(DelegationError::state)?
            .filter(|r| r.requester == parent && r.history.first().is_some_and(|h| h["kind"] == DELEGATION_KIND))
            .ok_or_else(|| {
                DelegationError::new(
                    404,
                    "permission_request_not_found",
                    format!("no pending delegation `{rid}` of yours"),
                )
            })?;
        if row.status != "approved" || row.expires_at <= now {
            return Err(DelegationError::new(
                409,
                "request_not_approved",
                format!("delegation request `{rid}` is {}, not approved", row.status),
            ));
        }
        let same = row.grant == req.grant && row.history.first().is_some_and(|h| h["spawn"] == spawn_params(req));
        if !same {
            return Err(DelegationError::new(
                409,
                "request_mismatch",
                format!("the approval of `{rid}` was for a different grant or different parameters"),
            )
            .help("send exactly the delegation that was approved"));
        }
        Ok(row.id)
    }

    /// An approval is good for one delegation.
    fn mark_used(&self, rid: &str, child: &str, now: i64) {
        let Ok(Some(mut row)) = self.store.request(rid) else {
            return;
        };
        row.status = "used".to_owned();
        row.updated_at = now;
        row.history.push(json!({"at": now, "event": "used", "child": child}));
        let audit = AuditEvent {
            event: "approval_used",
            actor: row.requester.clone(),
            agent: Some(child.to_owned()),
            details: json!({"request_id": rid}),
        };
        if let Err(e) = self.store.save_request(&row, now, audit) {
            tracing::error!(request = rid, error = %e, "cannot mark an approval used");
        }
    }
}

pub(super) fn check_new_id(agents: &Registry, parent: Option<&LiveAgent>, id: &str) -> Result<String, DelegationError> {
    let valid = !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return Err(DelegationError::new(
            400,
            "invalid_field",
            format!("`agent_id` `{id}` must be 1-64 characters of letters, digits, `-`, `_` or `.`"),
        ));
    }
    if parent.is_some_and(|p| p.chain.iter().any(|c| c == id)) {
        return Err(DelegationError::new(
            409,
            "delegation_cycle",
            format!("`{id}` is already in this delegation chain"),
        )
        .help("every child is a fresh identity; an agent cannot delegate to itself or an ancestor"));
    }
    if agents.get(id).is_some() {
        return Err(DelegationError::new(
            409,
            "agent_exists",
            format!("an agent `{id}` already exists"),
        ));
    }
    Ok(id.to_owned())
}

pub(super) fn grant_error(e: &prover::GrantError) -> DelegationError {
    DelegationError::new(400, "grant_invalid", format!("`grant`: {e}"))
}

enum Gate {
    Allow,
    /// Denied only by `@ask` forbids: pending, with the approver they name.
    Ask(Option<String>, Vec<String>),
    Deny(Vec<String>),
}

fn delegate_decision(
    snap: &Snapshot,
    parent: &EntityUid,
    child: &EntityUid,
    context: Value,
) -> Result<Gate, DelegationError> {
    let bundle = &snap.bundle;
    let action = bundle
        .actions_by_name
        .get(DELEGATE_ACTION)
        .cloned()
        .flatten()
        .ok_or_else(|| DelegationError::new(503, "delegation_disabled", "the bundle declares no `delegate` action"))?;
    let context = Context::from_json_value(context, Some((&bundle.schema, &action)))
        .map_err(|e| DelegationError::new(400, "invalid_field", format!("delegation context: {e}")))?;
    let request = Request::new(parent.clone(), action, child.clone(), context, Some(&bundle.schema)).map_err(|e| {
        DelegationError::new(
            503,
            "delegation_disabled",
            format!("the bundle's schema rejects a delegation request: {e}"),
        )
    })?;
    let d = bundle.admin().evaluate(snap.entities(), &request);
    if d.allow {
        return Ok(Gate::Allow);
    }
    let asks: HashMap<&String, Option<&str>> = d
        .reasons
        .iter()
        .map(|id| {
            (
                id,
                bundle
                    .policies
                    .annotation(&cedar_policy::PolicyId::new(id), ASK_ANNOTATION),
            )
        })
        .collect();
    if !d.reasons.is_empty() && asks.values().all(Option::is_some) {
        let approver = asks.values().flatten().next().map(|s| (*s).to_owned());
        return Ok(Gate::Ask(approver, d.reasons));
    }
    Ok(Gate::Deny(d.reasons))
}
