//! Invoking an agent that already exists: the caller asks, deputy and the admin's Cedar rules
//! decide, and the callee gets a *session* — a fresh agent deputy mints, with its own id, that
//! is decided as the callee under the session's own taint and lifetime (see
//! `authorize::decide_session`). Planned against one snapshot, carried out under the writer
//! lock with everything the plan relied on checked again in the transaction.
//!
//! INVARIANT (a caller never holds its callee's authority): the caller gets the session's id,
//! never its credential. The callee claims the session with its *own* credential (or the admin,
//! for an agent that has none) and gets the session's credential, once: the claim is a
//! compare-and-set on the stored (empty) credential digest, and an empty digest matches no
//! token. What a caller can reach through an invocation is what the callee chooses to do for it.
//!
//! INVARIANT (deputy's own invocation rules, whatever the bundle says): a caller whose taint is
//! above the callee's ceiling is refused (`taint_above_ceiling`); a callee already on the
//! caller's invocation chain (the caller itself included) is refused (`invocation_cycle`); a
//! chain deeper than `Limits::max_invocation_depth` is refused (`invocation_too_deep`); a
//! session is never a callee and never spawns, so a session's authority is never more than its
//! callee's.
//!
//! INVARIANT (no laundering back): a live invocation is a channel both ways, so the caller (and
//! everyone live links join to it) is raised to the session's starting taint in the
//! transaction that inserts it, and every later raise flows along the links (`taint`), durable
//! before the decision that raised it is answered.
//!
//! INVARIANT: a session starts with taint max(caller's, callee's), expires no later than the
//! caller, the callee or the requested lifetime, and — in the transaction that inserts it —
//! the caller, every caller up its invocation chain, their ancestors and the callee's chain are
//! live. A revocation commits either before (the invocation is refused) or after (the
//! revocation's subtree, which follows sessions, ends the new session).

use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use super::audit::{AuditEvent, AuditKind};
use super::credential;
use super::gate::{invoke_configured, invoke_decision, Gate};
use super::identity::mint_id;
use super::service::{Attempt, Caller, Delegation, DelegationError, MAX_TTL_SECONDS};
use super::store::{AgentRow, SessionRow};
use crate::agents::{LiveAgent, AGENT_TYPE};
use crate::authorize::{session_standing, standing, Callee};
use crate::error::ErrorCode;
use crate::snapshot::Snapshot;

/// What a caller asks for when invoking an agent.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    /// The id of the `Agent` to invoke.
    pub callee: String,
    pub task: String,
    pub reason: String,
    pub ttl_seconds: i64,
}

/// A session started, waiting for its callee to accept it.
#[derive(Debug, Clone, Serialize)]
pub struct Invoked {
    pub session_id: String,
    pub session: Value,
    /// Always false here: the callee accepts with its own credential at `accept`.
    pub accepted: bool,
    /// Where the callee accepts the session (`POST`, with its own credential).
    pub accept: String,
    pub caller: String,
    pub callee: Value,
    /// The invocation chain, first caller first, the callee last.
    pub chain: Vec<String>,
    pub depth: i64,
    pub taint: i64,
    pub ceiling: i64,
    pub expires_at: i64,
    pub ttl_seconds: i64,
    pub ttl_capped: bool,
    pub policy_version: String,
}

/// A session accepted: its credential, handed to the callee once.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    pub session_id: String,
    pub session: Value,
    /// The session's own credential: whoever holds it acts as the callee's session.
    pub credential: String,
    pub caller: String,
    pub callee: Value,
    pub chain: Vec<String>,
    pub depth: i64,
    pub taint: i64,
    pub expires_at: i64,
    pub policy_version: String,
}

/// Who acts when `caller` invokes: an agent for itself, or a session for its callee.
struct Acting {
    /// The identities the admin's `invoke_agent` rules are asked about: the acting identity
    /// (a session's callee) and every agent above it.
    principals: Vec<cedar_policy::EntityUid>,
    /// The invocation chain so far (`[caller]` for an agent).
    chain: Vec<String>,
    depth: i64,
    taint: i64,
    expires_at: i64,
    /// Every stored agent that must be live when the session is written: the caller, the
    /// callers up its chain, and their ancestors.
    upstream: Vec<String>,
}

/// Everything decided about a session before it is written.
struct Plan {
    caller: Arc<LiveAgent>,
    /// The managed callee as planned against (`None`: an agent only the bundle declares).
    callee_agent: Option<Arc<LiveAgent>>,
    callee: String,
    acting: Acting,
    depth: i64,
    taint: i64,
    ceiling: i64,
    ttl: i64,
    ttl_capped: bool,
}

impl Delegation {
    /// Starts a session of `req.callee` for the calling agent (or session).
    pub fn invoke(
        &self,
        snap: &Arc<Snapshot>,
        caller: &Caller,
        req: InvokeRequest,
        now: i64,
    ) -> Result<Invoked, DelegationError> {
        self.retrying(
            snap,
            caller,
            "the delegation state kept changing while this invocation was checked",
            |snap, caller| {
                let plan = self.plan_invocation(snap, caller, &req, now)?;
                self.carry_out_invocation(snap, caller, &req, plan, now)
            },
        )
    }

    fn plan_invocation(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        req: &InvokeRequest,
        now: i64,
    ) -> Result<Plan, DelegationError> {
        let agent = caller.agent().cloned().ok_or_else(|| {
            DelegationError::new(
                ErrorCode::NotAnAgent,
                "invocations come from agents; the admin creates agents directly",
            )
        })?;
        if req.ttl_seconds <= 0 {
            return Err(DelegationError::new(
                ErrorCode::InvalidField,
                "`ttl_seconds` must be positive",
            ));
        }
        invoke_configured(snap)?;
        let acting = acting(snap, &agent, now)?;
        let mut audit = json!({
            "caller": agent.row.id, "callee": req.callee, "chain": acting.chain, "caller_taint": acting.taint,
            "task": req.task, "reason": req.reason, "policy_version": snap.bundle.version,
        });
        let reject = |audit: &mut Value, err: DelegationError| self.reject_invocation(caller, audit, err, now);

        let callee = Callee::resolve(snap, &req.callee).ok_or_else(|| {
            DelegationError::new(
                ErrorCode::AgentNotFound,
                format!("`callee`: no agent `{}`", req.callee),
            )
        })?;
        let callee_agent = match &callee {
            Callee::Managed(c) => {
                if let Some(s) = &c.session {
                    return Err(DelegationError::new(
                        ErrorCode::SessionRestricted,
                        format!("`callee`: `{}` is a session of `{}`; sessions are not invoked", c.row.id, s.callee),
                    )
                    .help(format!("invoke `{}` itself", s.callee)));
                }
                if standing(c, now).is_some() {
                    return Err(DelegationError::new(
                        ErrorCode::AgentNotFound,
                        format!("`callee`: agent `{}` was revoked or has expired", c.row.id),
                    ));
                }
                Some(Arc::clone(c))
            }
            Callee::Declared { .. } => None,
        };
        // INVARIANT: no cycle on the invocation chain (the caller itself included: A → A).
        if acting.chain.contains(&req.callee) {
            return Err(reject(
                &mut audit,
                DelegationError::new(
                    ErrorCode::InvocationCycle,
                    format!(
                        "`{}` is already on this invocation chain ({})",
                        req.callee,
                        acting.chain.join(" → ")
                    ),
                )
                .help("an agent cannot invoke itself or an agent that (directly or not) invoked it")
                .detail("chain", json!(acting.chain)),
            ));
        }
        let depth = acting.depth + 1;
        if depth > self.limits.max_invocation_depth {
            return Err(reject(
                &mut audit,
                DelegationError::new(
                    ErrorCode::InvocationTooDeep,
                    format!(
                        "the session would be at depth {depth} of its invocation chain; the limit is {}",
                        self.limits.max_invocation_depth
                    ),
                )
                .detail("chain", json!(acting.chain)),
            ));
        }
        // INVARIANT: no laundering through an invocation: what the caller has read never
        // reaches an agent that may not hold it.
        let ceiling = callee.ceiling();
        if acting.taint > ceiling {
            return Err(reject(
                &mut audit,
                DelegationError::new(
                    ErrorCode::TaintAboveCeiling,
                    format!(
                        "the caller's taint {} is above the ceiling {ceiling} of `{}`",
                        acting.taint, req.callee
                    ),
                )
                .help("a session starts with its caller's taint; invoke an agent cleared for what you have read"),
            ));
        }
        let context = json!({"caller_taint": acting.taint, "depth": depth, "task": req.task});
        if let Gate::Deny(policies) | Gate::Ask(_, policies) =
            invoke_decision(snap, &acting.principals, callee.uid(), &context)?
        {
            let message = if policies.is_empty() {
                format!("no admin policy permits invoking `{}`", req.callee)
            } else {
                format!("the admin's invocation rules forbid it: {}", policies.join(", "))
            };
            return Err(reject(
                &mut audit,
                DelegationError::new(ErrorCode::InvocationForbidden, message).detail("policies", json!(policies)),
            ));
        }
        self.check_sessions(&snap.agents, &agent, now)?;
        let mut ttl = req.ttl_seconds.min(MAX_TTL_SECONDS);
        ttl = ttl.min(acting.expires_at.saturating_sub(now));
        ttl = ttl.min(callee.expires_at().saturating_sub(now));
        if ttl <= 0 {
            return Err(DelegationError::unauthenticated("the caller's lifetime ended"));
        }
        let taint = acting.taint.max(callee.taint());
        Ok(Plan {
            caller: agent,
            callee_agent,
            callee: req.callee.clone(),
            depth,
            taint,
            ceiling,
            ttl,
            ttl_capped: ttl < req.ttl_seconds,
            acting,
        })
    }

    /// Writes the session, after checking under the writer lock that nothing the plan relied
    /// on moved.
    fn carry_out_invocation(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        req: &InvokeRequest,
        plan: Plan,
        now: i64,
    ) -> Result<Attempt<Invoked>, DelegationError> {
        self.commit(|w, tx| {
            let same = |planned: &Arc<LiveAgent>| {
                w.registry()
                    .get(&planned.row.id)
                    .is_some_and(|latest| Arc::ptr_eq(latest, planned))
            };
            let moved = w.bundle().is_none_or(|b| b.version != snap.bundle.version)
                || !same(&plan.caller)
                || plan.callee_agent.as_ref().is_some_and(|c| !same(c))
                || acting_taint(&plan.caller, snap) != plan.acting.taint
                || plan.callee_agent.as_ref().is_some_and(|c| c.taint() > plan.taint);
            if moved {
                return Ok((Attempt::Stale, None));
            }
            if let Some((id, why)) = tx.not_live(plan.acting.upstream.iter(), now)? {
                return Err(DelegationError::not_live(&id, why, &plan.caller.row.id));
            }
            if let Some(callee) = &plan.callee_agent {
                if let Some((id, _)) = tx.not_live(callee.chain.iter(), now)? {
                    return Err(DelegationError::new(
                        ErrorCode::AgentNotFound,
                        format!("`callee`: `{id}` was revoked or has expired; nothing was changed"),
                    ));
                }
            }
            self.check_sessions(w.registry(), &plan.caller, now)?;
            let id = mint_id();
            if tx.agent_exists(&id)? {
                return Ok((Attempt::Stale, None));
            }
            let mut chain = plan.acting.chain.clone();
            chain.push(plan.callee.clone());
            let row = AgentRow {
                id: id.clone(),
                parent: None,
                depth: plan.depth,
                can_delegate: false,
                ceiling: plan.ceiling,
                taint: plan.taint,
                grant: String::new(),
                grant_digest: String::new(),
                // No credential until the callee accepts (an empty digest matches no token).
                credential_hash: String::new(),
                task: req.task.clone(),
                reason: req.reason.clone(),
                created_by: caller.name(),
                created_at: now,
                expires_at: now + plan.ttl,
                revoked_at: None,
                revoked_reason: None,
                bundle_version: snap.bundle.version.clone(),
                proof: json!({"verdict": "not_required", "reason": "a session is decided as its callee"}),
            };
            let session = SessionRow {
                id: id.clone(),
                caller: plan.caller.row.id.clone(),
                callee: plan.callee.clone(),
                depth: plan.depth,
                chain: chain.clone(),
                caller_taint: plan.acting.taint,
                created_at: now,
            };
            let next = w
                .registry()
                .with_session(row.clone(), Some(session.clone()))
                .map_err(DelegationError::internal)?;
            tx.insert_agent(&row)?;
            tx.insert_session(&session)?;
            // The session joins its caller's taint (see `taint`): the caller, and everyone live
            // links join to it, hold at least the session's taint from now on (raised
            // in memory here; a failed commit leaves them over-tainted, never under).
            for (up, level) in crate::agents::taint::propagate(&next, &[(id.clone(), plan.taint)], now) {
                tx.raise_taint(&up.row.id, level)?;
            }
            tx.audit(
                now,
                AuditEvent {
                    kind: AuditKind::Invoked,
                    actor: caller.name(),
                    agent: Some(id.clone()),
                    details: json!({
                        "caller": session.caller, "callee": session.callee, "session": id, "chain": chain,
                        "depth": plan.depth, "caller_taint": plan.acting.taint, "taint": plan.taint,
                        "ceiling": plan.ceiling, "ttl_seconds": plan.ttl, "ttl_capped": plan.ttl_capped,
                        "task": req.task, "reason": req.reason, "policy_version": snap.bundle.version,
                    }),
                },
            )?;
            let invoked = Invoked {
                session_id: id.clone(),
                session: json!({"type": AGENT_TYPE, "id": id}),
                accepted: false,
                accept: format!("/v1/invocations/{id}/accept"),
                caller: plan.caller.row.id.clone(),
                callee: json!({"type": AGENT_TYPE, "id": plan.callee}),
                chain,
                depth: plan.depth,
                taint: plan.taint,
                ceiling: plan.ceiling,
                expires_at: now + plan.ttl,
                ttl_seconds: plan.ttl,
                ttl_capped: plan.ttl_capped,
                policy_version: snap.bundle.version.clone(),
            };
            Ok((Attempt::Done(invoked), Some(next)))
        })
    }

    /// The callee (with its own credential) or the admin accepts session `id`: the session's
    /// credential is issued and handed out, once.
    pub fn accept(&self, snap: &Arc<Snapshot>, caller: &Caller, id: &str, now: i64) -> Result<Accepted, DelegationError> {
        let not_found = || DelegationError::new(ErrorCode::DelegationNotFound, format!("no session `{id}`"));
        let target = snap.agents.get(id).ok_or_else(not_found)?;
        let session = target.session.clone().ok_or_else(|| {
            DelegationError::new(
                ErrorCode::DelegationNotFound,
                format!("`{id}` is not a session: only a session is accepted"),
            )
        })?;
        // INVARIANT: only the callee itself (never one of its sessions) or the admin.
        let is_callee = caller
            .agent()
            .is_some_and(|a| a.session.is_none() && a.row.id == session.callee);
        if !is_callee && caller.agent().is_some() {
            return Err(DelegationError::new(
                ErrorCode::NotYourDelegation,
                format!(
                    "only `{}`, with its own credential, or the admin may accept session `{id}`",
                    session.callee
                ),
            ));
        }
        if !target.credential_hash().is_empty() {
            return Err(already_accepted(id));
        }
        if !target.is_live(now) || session_standing(snap, target, now).is_err() {
            return Err(session_ended(id));
        }
        let issued = credential::issue(id)
            .map_err(|e| DelegationError::internal(format!("no randomness for a credential: {e}")))?;
        let (accepted, session_agent) = self.commit(|w, tx| {
            let latest = w.registry().get(id).ok_or_else(not_found)?;
            if !latest.credential_hash().is_empty() {
                return Err(already_accepted(id));
            }
            if !tx.claim_credential(id, &issued.hash, now)? {
                return Err(match tx.not_live(std::iter::once(&target.row.id), now)? {
                    Some(_) => session_ended(id),
                    None => already_accepted(id),
                });
            }
            tx.audit(
                now,
                AuditEvent {
                    kind: AuditKind::SessionAccepted,
                    actor: caller.name(),
                    agent: Some(id.to_owned()),
                    details: json!({
                        "caller": session.caller, "callee": session.callee, "session": id,
                        "chain": session.chain, "depth": session.depth, "taint": latest.taint(),
                        "policy_version": snap.bundle.version,
                    }),
                },
            )?;
            let accepted = Accepted {
                session_id: id.to_owned(),
                session: json!({"type": AGENT_TYPE, "id": id}),
                credential: issued.token.clone(),
                caller: session.caller.clone(),
                callee: json!({"type": AGENT_TYPE, "id": session.callee}),
                chain: session.chain.clone(),
                depth: session.depth,
                taint: latest.taint(),
                expires_at: latest.row.expires_at,
                policy_version: snap.bundle.version.clone(),
            };
            // What is served does not change (no entity, no grant): the claim is recorded on the
            // session's shared state once it committed, below.
            Ok(((accepted, Arc::clone(latest)), None))
        })?;
        // Committed. Until this line the new credential authenticates nobody, and it has been
        // shown to nobody yet; a claim racing this one finds the stored digest taken (409).
        session_agent.set_claimed(issued.hash);
        Ok(accepted)
    }

    /// Refuses an invocation that would give the caller more live sessions than
    /// `--max-children` (sessions count like children).
    fn check_sessions(&self, agents: &super::Registry, caller: &LiveAgent, now: i64) -> Result<(), DelegationError> {
        let sessions = agents.live_sessions(&caller.row.id, now);
        if sessions < self.limits.max_children {
            return Ok(());
        }
        Err(DelegationError::new(
            ErrorCode::TooManyAgents,
            format!(
                "`{}` already has {sessions} live sessions; the limit is {}",
                caller.row.id, self.limits.max_children
            ),
        )
        .help("complete sessions whose tasks are done"))
    }

    /// Records a refused invocation and returns its error.
    fn reject_invocation(&self, caller: &Caller, audit: &mut Value, err: DelegationError, now: i64) -> DelegationError {
        audit["code"] = json!(err.code);
        audit["message"] = json!(err.message);
        if let Err(e) = self.store.audit(
            now,
            AuditEvent {
                kind: AuditKind::InvocationRejected,
                actor: caller.name(),
                agent: caller.agent_id().map(str::to_owned),
                details: audit.clone(),
            },
        ) {
            return DelegationError::state(e);
        }
        err
    }
}

fn already_accepted(id: &str) -> DelegationError {
    DelegationError::new(
        ErrorCode::SessionAlreadyAccepted,
        format!("session `{id}` was already accepted: its credential is handed out once"),
    )
    .help("if the credential was lost, cancel the session and invoke again")
}

fn session_ended(id: &str) -> DelegationError {
    DelegationError::new(
        ErrorCode::DelegationNotFound,
        format!("session `{id}` ended (completed, cancelled, revoked or expired) before it was accepted"),
    )
}

/// The taint an invocation by `agent` carries: a session's own, or its callee's if higher.
fn acting_taint(agent: &Arc<LiveAgent>, snap: &Snapshot) -> i64 {
    match &agent.session {
        None => agent.taint(),
        Some(s) => {
            let callee = Callee::resolve(snap, &s.callee).map_or(0, |c| c.taint());
            agent.taint().max(callee)
        }
    }
}

/// Who acts when `agent` invokes, checked live in `snap`.
fn acting(snap: &Snapshot, agent: &Arc<LiveAgent>, now: i64) -> Result<Acting, DelegationError> {
    let gone = || DelegationError::unauthenticated("this session's invocation chain ended (its caller or callee was revoked or expired)");
    let Some(session) = &agent.session else {
        if standing(agent, now).is_some() {
            return Err(DelegationError::unauthenticated("this agent, or an ancestor, was revoked or expired"));
        }
        return Ok(Acting {
            principals: agent.hops.iter().map(|h| h.uid.clone()).collect(),
            chain: vec![agent.row.id.clone()],
            depth: 0,
            taint: agent.taint(),
            expires_at: agent.row.expires_at,
            upstream: agent.chain.clone(),
        });
    };
    let callee = session_standing(snap, agent, now).map_err(|_| gone())?;
    let principals = match &callee {
        Callee::Managed(c) => c.hops.iter().map(|h| h.uid.clone()).collect(),
        Callee::Declared { uid, .. } => vec![uid.clone()],
    };
    // The session and every caller above it, each with its ancestors.
    let mut upstream = Vec::new();
    let mut current = Arc::clone(agent);
    loop {
        upstream.extend(current.chain.iter().cloned());
        let Some(s) = &current.session else { break };
        if upstream.len() > 1024 {
            return Err(gone());
        }
        current = Arc::clone(snap.agents.get(&s.caller).ok_or_else(gone)?);
    }
    Ok(Acting {
        principals,
        chain: session.chain.clone(),
        depth: session.depth,
        taint: acting_taint(agent, snap),
        expires_at: agent.row.expires_at,
        upstream,
    })
}
