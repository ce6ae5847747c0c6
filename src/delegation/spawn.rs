//! Creating agents: a root by the admin, a child by its parent. A child is planned against one
//! snapshot (deputy's own bounds, the admin's Cedar delegation rules, the proof) and then
//! carried out under the writer lock, where everything the plan relied on is checked again.
//!
//! INVARIANT: a child is applied only when the prover says `Within` (or a human approved an
//! `Inconclusive` one), Cedar allows it (or every denying `@ask` rule's approvers approved), its
//! name is free in the identity namespace, its inherited taint is within its ceiling, and — in
//! the transaction that inserts it — its parent and every ancestor are live and the approval it
//! carries out is consumed (once).

use crate::error::ErrorCode;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use super::audit::{AuditEvent, AuditKind};
use super::credential;
use super::identity::{check_new_id, mint_id, resolve_approvers};
use super::service::{
    accept_grant, grant_error, not_for_sessions, Attempt, Caller, Delegation, DelegationError, MAX_TTL_SECONDS,
};
use super::store::{AgentRow, PermissionRow, RequestStatus};
use super::approval::{spawn_params, take_approval, DELEGATION_KIND};
use super::gate::{delegate_decision, Gate};
use super::ADMIN_APPROVER;
use crate::agents::{agent_uid, LiveAgent};
use crate::prover::{self, Grant, ProveOptions, Verdict};
use crate::snapshot::Snapshot;

/// What a caller asks for when creating an agent.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    pub grant: String,
    pub ttl_seconds: i64,
    pub ceiling: Option<i64>,
    pub can_delegate: bool,
    pub task: String,
    pub reason: String,
    /// A name for the new agent; minted when absent.
    pub agent_id: Option<String>,
    /// The id of an approved pending delegation this request carries out (same parameters).
    pub approved_request: Option<String>,
}

impl SpawnRequest {
    /// Reads a spawn's JSON (`POST /v1/delegations`' body, the `delegate` MCP tool's arguments)
    /// at `path`.
    pub fn from_json(body: &Value, path: &str) -> Result<SpawnRequest, crate::authorize::RequestError> {
        let f = crate::authorize::Fields::of(body, path)?;
        let ttl_field = if path.is_empty() { "ttl_seconds".to_owned() } else { format!("{path}.ttl_seconds") };
        Ok(SpawnRequest {
            grant: f.require_string("grant")?.to_owned(),
            ttl_seconds: f
                .i64("ttl_seconds")?
                .ok_or_else(|| crate::authorize::RequestError::missing(&ttl_field))?,
            ceiling: f.i64("ceiling")?,
            can_delegate: f.bool("can_delegate")?.unwrap_or(false),
            task: f.require_string("task")?.to_owned(),
            reason: f.string("reason")?.unwrap_or_default().to_owned(),
            agent_id: f.string("agent_id")?.map(str::to_owned),
            approved_request: f.string("approved_request")?.map(str::to_owned),
        })
    }
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
        /// The child's ceiling: as asked, or capped at the lowest on the parent's chain.
        ceiling: i64,
        ceiling_capped: bool,
        depth: i64,
        taint: i64,
        proof: Value,
        policy_version: String,
    },
    Pending {
        request_id: String,
        /// The approver the first `@ask` rule names, as written (kept for older clients).
        approver: Option<String>,
        /// Who must approve, in the order they decide: bundle-declared ancestors, then `admin`
        /// (a human with the admin credential).
        approvers: Vec<String>,
        why: String,
        proof: Value,
        policy_version: String,
    },
}

/// Everything decided about a new agent before it is written.
struct Child {
    id: String,
    named: bool,
    depth: i64,
    ceiling: i64,
    taint: i64,
    ttl: i64,
    ttl_capped: bool,
    ceiling_capped: bool,
    grant: Grant,
}

/// What the plan says to do.
enum Plan {
    Apply {
        child: Child,
        proof: Value,
        /// The approval this carries out, consumed when the child is inserted.
        approval: Option<String>,
    },
    Pending {
        child: Child,
        approver: Option<String>,
        approvers: Vec<String>,
        why: String,
        proof: Value,
    },
}

impl Delegation {
    /// Creates an agent: a root one for the admin, a child for an agent.
    pub fn spawn(
        &self,
        snap: &Arc<Snapshot>,
        caller: &Caller,
        req: SpawnRequest,
        now: i64,
    ) -> Result<SpawnOutcome, DelegationError> {
        let outcome = self.retrying(
            snap,
            caller,
            "the delegation state kept changing while this request was checked",
            |snap, caller| {
                let plan = self.plan(snap, caller, &req, now)?;
                self.carry_out(snap, caller, &req, plan, now)
            },
        )?;
        if matches!(outcome, SpawnOutcome::Pending { .. }) {
            // After the commit, so that a woken long poll reads the new request.
            self.requests_changed.notify_waiters();
        }
        Ok(outcome)
    }

    /// Checks a spawn against `snap` and decides what to do with it. Pure apart from writing a
    /// `rejected` audit record.
    fn plan(&self, snap: &Snapshot, caller: &Caller, req: &SpawnRequest, now: i64) -> Result<Plan, DelegationError> {
        let parent = caller.agent().cloned();
        not_for_sessions(caller, "spawn agents")?;
        self.check_grant_size(&req.grant)?;
        self.check_children(&snap.agents, caller, now)?;
        let (id, named) = match &req.agent_id {
            Some(id) => {
                self.check_name(&snap.bundle, &snap.agents, parent.as_deref(), id)?;
                (id.clone(), true)
            }
            None => (mint_id(), false),
        };
        if req.ttl_seconds <= 0 {
            return Err(DelegationError::new(
                ErrorCode::InvalidField,
                "`ttl_seconds` must be positive",
            ));
        }
        let depth = parent.as_ref().map_or(0, |p| p.row.depth + 1);
        let taint = parent.as_ref().map_or(0, |p| p.taint());
        let asked = req
            .ceiling
            .or(parent.as_ref().map(|p| p.chain_ceiling))
            .ok_or_else(|| {
                DelegationError::new(
                    ErrorCode::MissingField,
                    "missing required field `ceiling` (a root agent has no parent to inherit it from)",
                )
            })?;
        // INVARIANT: a child's ceiling is never above the lowest on its parent's chain.
        let ceiling = parent.as_ref().map_or(asked, |p| asked.min(p.chain_ceiling));
        let mut ttl = req.ttl_seconds.min(MAX_TTL_SECONDS);
        if let Some(p) = &parent {
            ttl = ttl.min(p.row.expires_at - now);
        }
        let ttl_capped = ttl < req.ttl_seconds;
        let grant = accept_grant(&req.grant, &snap.bundle)?;
        let child = Child {
            id,
            named,
            depth,
            ceiling,
            ceiling_capped: ceiling < asked,
            taint,
            ttl,
            ttl_capped,
            grant,
        };

        let Some(parent) = parent else {
            if req.approved_request.is_some() {
                return Err(DelegationError::new(ErrorCode::InvalidField,
                    "`approved_request` carries out a child's pending delegation; the admin creates root agents directly",
                ));
            }
            // The admin is the grantor of a root agent: nothing to prove against; the admin
            // maximum bounds it at run time like every other agent.
            let proof = json!({"verdict": "not_required", "reason": "a root agent is granted by the admin"});
            return Ok(Plan::Apply {
                child,
                proof,
                approval: None,
            });
        };

        let mut audit = json!({
            "parent": parent.row.id, "child": child.id, "grant_digest": child.grant.digest(), "task": req.task,
            "reason": req.reason, "ttl_seconds": ttl, "ceiling": ceiling, "depth": depth, "taint": taint,
            "policy_version": snap.bundle.version,
        });
        let reject = |audit: &mut Value, err: DelegationError| self.reject(caller, audit, err, now);

        // INVARIANT: deputy enforces can_delegate itself, for the parent and every agent above
        // it (a bundle agent turned role-locked locks its whole subtree); an admin rule can only
        // add to it.
        let locked = parent
            .chain
            .iter()
            .find(|id| snap.agents.get(id).is_none_or(|a| !a.row.can_delegate));
        if let Some(locked) = locked {
            let message = if *locked == parent.row.id {
                format!("agent `{locked}` may not delegate (can_delegate is false)")
            } else {
                format!(
                    "agent `{}` may not delegate: its ancestor `{locked}` may not (can_delegate is false)",
                    parent.row.id
                )
            };
            return Err(reject(
                &mut audit,
                DelegationError::new(ErrorCode::DelegationForbidden, message)
                    .help("ask your own grantor to do this, or to give the permission to you directly"),
            ));
        }
        // INVARIANT: no laundering through a child, whatever the bundle's rules say: a child
        // starts with its parent's taint, which must be within its own ceiling.
        if taint > ceiling {
            return Err(reject(
                &mut audit,
                DelegationError::new(ErrorCode::TaintAboveCeiling,
                    format!(
                        "the child would start with taint {taint} (its parent's), above its ceiling {ceiling}"
                    ),
                )
                .help("a child inherits its parent's taint; give it a ceiling at least that high, or spawn it from an agent that has read less"),
            ));
        }

        let approval = match &req.approved_request {
            Some(rid) => Some(self.approved_delegation(rid, &parent.row.id, req, now)?),
            None => None,
        };

        // 1. May the parent (and every agent above it) delegate this at all? Ordinary Cedar, in
        // the admin's policies.
        let child_uid = agent_uid(&child.id).map_err(DelegationError::internal)?;
        let context = json!({"depth": depth, "ttl_seconds": ttl, "ceiling": ceiling, "taint": taint, "task": req.task});
        let ask = match delegate_decision(snap, &parent, &child_uid, context)? {
            Gate::Allow => None,
            Gate::Ask(names, policies) => Some((names, policies)),
            Gate::Deny(policies) => {
                let message = if policies.is_empty() {
                    "no admin policy permits this delegation".to_owned()
                } else {
                    format!("the admin's delegation rules forbid it: {}", policies.join(", "))
                };
                return Err(reject(
                    &mut audit,
                    DelegationError::new(ErrorCode::DelegationForbidden, message).detail("policies", json!(policies)),
                ));
            }
        };

        // 2. Is the child's grant within the parent's delegable view?
        let parent_grant = parent
            .proof_grant()
            .map_err(|e| DelegationError::internal(format!("the parent's stored grant no longer parses: {e}")))?;
        let opts = ProveOptions {
            child_principal: Some(child_uid),
            solver: self.limits.solver.clone(),
            ..ProveOptions::default()
        };
        let verdict = crate::telemetry::prove_observed(self.metrics.as_deref(), || {
            prover::prove(&child.grant, &parent_grant, &snap.bundle.schema, snap.entities(), &opts)
        })
        .map_err(|e| grant_error(&e))?;
        let proof = serde_json::to_value(&verdict).unwrap_or(Value::Null);
        audit["proof"] = json!(verdict.name());
        // Who must approve: each bundle-declared ancestor the `@ask` rules name, and a human if
        // any names someone else — or if the proof is inconclusive (only a human stands in for a
        // proof).
        let inconclusive = matches!(verdict, Verdict::Inconclusive(_));
        let names: Vec<String> = ask.as_ref().map(|(n, _)| n.clone()).unwrap_or_default();
        let mut required = resolve_approvers(&snap.bundle, &parent, names.iter().map(String::as_str));
        if inconclusive && !required.iter().any(|a| a == ADMIN_APPROVER) {
            required.push(ADMIN_APPROVER.to_owned());
        }
        if let (Some((rid, approved)), false) = (&approval, matches!(verdict, Verdict::Exceeds(_))) {
            let missing: Vec<&String> = required.iter().filter(|a| !approved.contains(*a)).collect();
            if !missing.is_empty() {
                return Err(DelegationError::new(
                    ErrorCode::RequestNotApproved,
                    format!(
                        "the approval of `{rid}` does not cover {}, whose approval this delegation now needs",
                        missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
                    ),
                )
                .help("send the delegation again without `approved_request` to ask the approvers it needs now"));
            }
        }
        let approval = approval.map(|(rid, _)| rid);
        let ask = if required.is_empty() || approval.is_some() {
            None
        } else {
            ask
        };
        match (&verdict, ask) {
            (Verdict::Exceeds(_), _) => Err(reject(
                &mut audit,
                DelegationError::new(
                    ErrorCode::GrantExceedsParent,
                    "the child's grant allows a request the parent's delegable view denies",
                )
                .help("narrow the grant, or request the permission from your own grantor first")
                .detail("proof", proof),
            )),
            // Within, or Inconclusive that a human approved: apply. The run-time chain bounds
            // the child by each ancestor's delegable view whatever the proof could not settle.
            (Verdict::Within(_), None) => Ok(Plan::Apply { child, proof, approval }),
            (Verdict::Inconclusive(_), None) if approval.is_some() => Ok(Plan::Apply { child, proof, approval }),
            (_, ask) => {
                let mut why = match &ask {
                    Some((_, policies)) => format!("approval required by {}", policies.join(", ")),
                    None => String::new(),
                };
                if inconclusive {
                    if !why.is_empty() {
                        why.push_str("; ");
                    }
                    why.push_str("the proof was inconclusive; a human must decide");
                }
                Ok(Plan::Pending {
                    child,
                    approver: names.first().cloned(),
                    approvers: required,
                    why,
                    proof,
                })
            }
        }
    }

    /// Writes what the plan decided, after checking under the writer lock that nothing it
    /// relied on moved.
    fn carry_out(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        req: &SpawnRequest,
        plan: Plan,
        now: i64,
    ) -> Result<Attempt<SpawnOutcome>, DelegationError> {
        let parent = caller.agent().cloned();
        self.commit(|w, tx| {
            // The plan is good only for the bundle and the parent's grant it was made against.
            let planned_taint = match &plan {
                Plan::Apply { child, .. } | Plan::Pending { child, .. } => child.taint,
            };
            // The plan is good only for the bundle, the parent's grant and the parent's taint
            // it was made against (a read answered while the proof ran raised the taint the
            // child must start with, and the rules that see it).
            let moved = w.bundle().is_none_or(|b| b.version != snap.bundle.version)
                || parent.as_ref().is_some_and(|p| {
                    p.taint() != planned_taint
                        || w.registry()
                            .get(&p.row.id)
                            .is_none_or(|latest| latest.row.grant_digest != p.row.grant_digest)
                });
            if moved {
                return Ok((Attempt::Stale, None));
            }
            Self::check_live(tx, parent.as_deref(), now)?;
            match plan {
                Plan::Apply { child, proof, approval } => {
                    let parent_id = parent.as_ref().map(|p| p.row.id.clone());
                    self.check_children(w.registry(), caller, now)?;
                    if child.named {
                        let bundle = w.bundle().ok_or_else(|| DelegationError::internal("no bundle"))?;
                        self.check_name(bundle, w.registry(), parent.as_deref(), &child.id)?;
                    }
                    if tx.agent_exists(&child.id)? {
                        return Err(DelegationError::new(
                            ErrorCode::AgentExists,
                            format!("an agent `{}` already exists", child.id),
                        ));
                    }
                    if let Some(rid) = &approval {
                        take_approval(tx, rid, parent_id.as_deref().unwrap_or_default(), &child.id, now)?;
                    }
                    let issued = credential::issue(&child.id)
                        .map_err(|e| DelegationError::internal(format!("no randomness for a credential: {e}")))?;
                    let row = AgentRow {
                        id: child.id.clone(),
                        parent: parent_id,
                        depth: child.depth,
                        can_delegate: req.can_delegate,
                        ceiling: child.ceiling,
                        taint: child.taint,
                        grant: req.grant.clone(),
                        grant_digest: child.grant.digest(),
                        credential_hash: issued.hash,
                        task: req.task.clone(),
                        reason: req.reason.clone(),
                        created_by: caller.name(),
                        created_at: now,
                        expires_at: now + child.ttl,
                        revoked_at: None,
                        revoked_reason: None,
                        bundle_version: snap.bundle.version.clone(),
                        proof: proof.clone(),
                    };
                    let next = w
                        .registry()
                        .with_parsed(row.clone(), child.grant.parsed_text())
                        .map_err(|e| DelegationError::new(ErrorCode::GrantInvalid, e.to_string()))?;
                    tx.insert_agent(&row)?;
                    tx.audit(
                        now,
                        AuditEvent {
                            kind: AuditKind::Applied,
                            actor: caller.name(),
                            agent: Some(child.id.clone()),
                            details: json!({
                                "parent": row.parent, "grant_digest": row.grant_digest, "task": row.task,
                                "reason": row.reason, "ttl_seconds": child.ttl, "ttl_capped": child.ttl_capped,
                                "ceiling": child.ceiling, "depth": child.depth, "taint": child.taint,
                                "can_delegate": row.can_delegate, "approved_request": approval,
                                "proof": proof.get("verdict").cloned().unwrap_or(Value::Null),
                                "policy_version": snap.bundle.version,
                            }),
                        },
                    )?;
                    let outcome = SpawnOutcome::Applied {
                        delegation_id: child.id.clone(),
                        agent: json!({"type": super::AGENT_TYPE, "id": child.id}),
                        credential: issued.token,
                        expires_at: now + child.ttl,
                        ttl_seconds: child.ttl,
                        ttl_capped: child.ttl_capped,
                        ceiling: child.ceiling,
                        ceiling_capped: child.ceiling_capped,
                        depth: child.depth,
                        taint: child.taint,
                        proof,
                        policy_version: snap.bundle.version.clone(),
                    };
                    Ok((Attempt::Done(outcome), Some(next)))
                }
                Plan::Pending {
                    child,
                    approver,
                    approvers,
                    why,
                    proof,
                } => {
                    let parent = parent.ok_or_else(|| DelegationError::internal("a pending root"))?;
                    self.check_pending_limit(tx, &parent.row.id)?;
                    let request_id = format!("req-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
                    let first = approvers.first().cloned().unwrap_or_else(|| ADMIN_APPROVER.to_owned());
                    let row = PermissionRow {
                        id: request_id.clone(),
                        requester: parent.row.id.clone(),
                        approver: first.clone(),
                        grant: req.grant.clone(),
                        reason: req.reason.clone(),
                        status: RequestStatus::Pending,
                        created_at: now,
                        expires_at: now + super::permission::DEFAULT_REQUEST_TTL,
                        updated_at: now,
                        history: vec![json!({
                            "at": now, "event": "requested", "kind": DELEGATION_KIND, "by": parent.row.id,
                            "why": why, "spawn": spawn_params(req), "approvers": approvers,
                        })],
                    };
                    tx.save_request(&row, None)?;
                    tx.audit(
                        now,
                        AuditEvent {
                            kind: AuditKind::Pending,
                            actor: caller.name(),
                            agent: Some(parent.row.id.clone()),
                            details: json!({
                                "parent": parent.row.id, "child": child.id, "grant_digest": child.grant.digest(),
                                "task": req.task, "reason": req.reason, "ttl_seconds": child.ttl,
                                "ceiling": child.ceiling, "depth": child.depth, "taint": child.taint,
                                "request_id": request_id, "approvers": approvers, "why": why,
                                "proof": proof.get("verdict").cloned().unwrap_or(Value::Null),
                                "policy_version": snap.bundle.version,
                            }),
                        },
                    )?;
                    let outcome = SpawnOutcome::Pending {
                        request_id,
                        approver,
                        approvers,
                        why,
                        proof,
                        policy_version: snap.bundle.version.clone(),
                    };
                    Ok((Attempt::Done(outcome), None))
                }
            }
        })
    }

    /// Refuses a spawn that would give the caller more live children than the limit.
    fn check_children(&self, agents: &super::Registry, caller: &Caller, now: i64) -> Result<(), DelegationError> {
        let children = live_children(agents, caller.agent().map(Arc::as_ref), now);
        if children < self.limits.max_children {
            return Ok(());
        }
        Err(DelegationError::new(
            ErrorCode::TooManyAgents,
            format!(
                "{} already has {children} live children; the limit is {}",
                caller.name(),
                self.limits.max_children
            ),
        )
        .help("complete or revoke children whose tasks are done"))
    }

    /// Records a rejected delegation and returns its error.
    fn reject(&self, caller: &Caller, audit: &mut Value, err: DelegationError, now: i64) -> DelegationError {
        audit["code"] = json!(err.code);
        audit["message"] = json!(err.message);
        let agent = audit["parent"].as_str().map(str::to_owned);
        if let Err(e) = self.store.audit(
            now,
            AuditEvent {
                kind: AuditKind::Rejected,
                actor: caller.name(),
                agent,
                details: audit.clone(),
            },
        ) {
            return DelegationError::state(e);
        }
        err
    }

    /// Checks a requested name: the identity namespace, and the names of bundle agents the
    /// sidecar holds credentials for (`--agent-credential-file`), which the bundle may not have
    /// declared yet.
    fn check_name(
        &self,
        bundle: &crate::bundle::Bundle,
        agents: &super::Registry,
        parent: Option<&LiveAgent>,
        id: &str,
    ) -> Result<(), DelegationError> {
        if self.configured_names().any(|n| n.eq_ignore_ascii_case(id)) {
            return Err(DelegationError::new(
                ErrorCode::AgentIdReserved,
                format!(
                    "`agent_id` `{id}` is reserved: the sidecar holds a credential for a bundle agent of that name"
                ),
            )
            .help("leave `agent_id` out and deputy mints a fresh id"));
        }
        check_new_id(bundle, agents, parent, id)
    }
}

/// The live children of `parent` (`None`: the admin's roots) in `agents`: through the
/// registry's children index, so a spawn visits its parent's children, not every agent.
fn live_children(agents: &super::Registry, parent: Option<&LiveAgent>, now: i64) -> usize {
    agents.live_children(parent.map(|p| p.row.id.as_str()), now)
}
