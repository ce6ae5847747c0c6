//! Asking for more permission without pausing the agent: a grantee files a request, its grantor
//! approves (re-proved), denies or escalates it up the chain to a human, and the grantee polls.
//! An approval extends every grant on the path from the approver down to the requester, each
//! proved within its parent's delegable view first, all in one transaction.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use super::registry::LiveAgent;
use super::service::{grant_error, Caller, Delegation, DelegationError};
use super::store::{AuditEvent, PermissionRow};
use crate::prover::{self, Grant, ProveOptions, Verdict};
use crate::snapshot::Snapshot;

/// The approver name of a human holding the admin credential.
pub const ADMIN_APPROVER: &str = "admin";
/// How long a request stays open unless the requester asks for less.
pub const DEFAULT_REQUEST_TTL: i64 = 3600;
/// The longest a request may stay open.
pub const MAX_REQUEST_TTL: i64 = 24 * 3600;

/// What an approver decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
    Escalate,
}

/// A permission request as shown to its parties.
#[derive(Debug, Clone, Serialize)]
pub struct RequestView {
    pub request_id: String,
    pub status: String,
    pub requester: String,
    pub approver: String,
    pub grant: String,
    pub reason: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub history: Vec<Value>,
}

impl From<PermissionRow> for RequestView {
    fn from(r: PermissionRow) -> Self {
        Self {
            request_id: r.id,
            status: r.status,
            requester: r.requester,
            approver: r.approver,
            grant: r.grant,
            reason: r.reason,
            created_at: r.created_at,
            expires_at: r.expires_at,
            history: r.history,
        }
    }
}

fn is_delegation(row: &PermissionRow) -> bool {
    row.history
        .first()
        .is_some_and(|h| h["kind"] == super::service::DELEGATION_KIND)
}

fn caller_agent(caller: &Caller) -> Option<&Arc<LiveAgent>> {
    match caller {
        Caller::Admin => None,
        Caller::Agent(a) => Some(a),
    }
}

fn not_found(id: &str) -> DelegationError {
    DelegationError::new(
        404,
        "permission_request_not_found",
        format!("no permission request `{id}`"),
    )
}

impl Delegation {
    /// Files a request for `grant` (more templates over `?principal`) from the calling agent.
    /// The request goes to the agent's grantor (or a human, for a root agent), and is proved
    /// against the grantor's delegable view at once to say whether it can approve alone.
    pub fn request_permission(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        grant_src: &str,
        reason: &str,
        ttl: Option<i64>,
        now: i64,
    ) -> Result<(RequestView, Value), DelegationError> {
        let requester = caller_agent(caller).ok_or_else(|| {
            DelegationError::new(
                400,
                "not_an_agent",
                "permission requests come from agents; the admin grants directly",
            )
        })?;
        self.check_grant_size(grant_src)?;
        let open = self
            .store
            .requests(None, Some(&requester.row.id), Some("pending"))
            .map_err(DelegationError::state)?
            .len();
        if open >= self.limits.max_pending_requests {
            return Err(DelegationError::new(
                429,
                "too_many_requests",
                format!(
                    "{open} requests are already pending; the limit is {}",
                    self.limits.max_pending_requests
                ),
            )
            .help("withdraw requests you no longer need, or wait for answers"));
        }
        let grant = Grant::parse(grant_src).map_err(|e| grant_error(&e))?;
        prover::validate_grant(&grant, &snap.bundle.schema).map_err(|e| grant_error(&e))?;
        let grantor = requester.row.parent.clone();
        let (can_approve_alone, proof) = match &grantor {
            Some(g) => {
                let parent = snap.agents.get(g).ok_or_else(|| not_found(g))?;
                let verdict = self.prove_against(snap, &grant, &parent.row.grant, requester)?;
                (
                    verdict.is_within(),
                    serde_json::to_value(&verdict).unwrap_or(Value::Null),
                )
            }
            None => (
                true,
                json!({"verdict": "not_required", "reason": "a human grants root agents"}),
            ),
        };
        let ttl = ttl
            .unwrap_or(DEFAULT_REQUEST_TTL)
            .clamp(1, MAX_REQUEST_TTL)
            .min(requester.row.expires_at - now);
        let row = PermissionRow {
            id: format!("preq-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            requester: requester.row.id.clone(),
            approver: grantor.unwrap_or_else(|| ADMIN_APPROVER.to_owned()),
            grant: grant_src.to_owned(),
            reason: reason.to_owned(),
            status: "pending".to_owned(),
            created_at: now,
            expires_at: now + ttl.max(1),
            updated_at: now,
            history: vec![json!({
                "at": now, "event": "requested", "by": requester.row.id, "reason": reason,
                "proof": proof.get("verdict").cloned().unwrap_or(Value::Null), "can_approve_alone": can_approve_alone,
            })],
        };
        self.save(
            &row,
            now,
            "permission_requested",
            caller,
            json!({"grant_digest": grant.digest()}),
        )?;
        let extra = json!({"can_approve_alone": can_approve_alone, "proof": proof});
        Ok((row.into(), extra))
    }

    /// Requests waiting on the caller (an agent: those it must decide; the admin: those
    /// escalated to a human), or the caller's own requests with `mine`.
    pub fn list_requests(
        &self,
        caller: &Caller,
        status: Option<&str>,
        mine: bool,
    ) -> Result<Vec<RequestView>, DelegationError> {
        let rows = match (caller, mine) {
            (Caller::Agent(a), true) => self.store.requests(None, Some(&a.row.id), status),
            (Caller::Agent(a), false) => self.store.requests(Some(&a.row.id), None, status),
            (Caller::Admin, _) => self.store.requests(Some(ADMIN_APPROVER), None, status),
        }
        .map_err(DelegationError::state)?;
        Ok(rows.into_iter().map(RequestView::from).collect())
    }

    /// One request, for its requester, anyone on the requester's chain, or the admin.
    pub fn get_request(&self, snap: &Snapshot, caller: &Caller, id: &str) -> Result<RequestView, DelegationError> {
        let row = self
            .store
            .request(id)
            .map_err(DelegationError::state)?
            .ok_or_else(|| not_found(id))?;
        let visible = match caller {
            Caller::Admin => true,
            Caller::Agent(a) => snap
                .agents
                .get(&row.requester)
                .is_some_and(|r| r.chain.contains(&a.row.id)),
        };
        if !visible {
            return Err(not_found(id));
        }
        Ok(row.into())
    }

    /// Approves, denies or escalates a pending request. The caller must be its approver, or a
    /// human with the admin credential.
    pub fn decide_request(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        id: &str,
        decision: Decision,
        reason: &str,
        now: i64,
    ) -> Result<RequestView, DelegationError> {
        let mut row = self
            .store
            .request(id)
            .map_err(DelegationError::state)?
            .ok_or_else(|| not_found(id))?;
        let is_approver = match caller {
            Caller::Admin => true,
            Caller::Agent(a) => a.row.id == row.approver,
        };
        if !is_approver {
            return Err(DelegationError::new(
                403,
                "not_the_approver",
                format!("request `{id}` waits on `{}`, not on you", row.approver),
            ));
        }
        if row.status != "pending" {
            return Err(DelegationError::new(
                409,
                "request_closed",
                format!("request `{id}` is already {}", row.status),
            ));
        }
        let requester = snap
            .agents
            .get(&row.requester)
            .filter(|r| r.is_live(now))
            .cloned()
            .ok_or_else(|| DelegationError::new(409, "request_closed", "the requester is no longer live"))?;
        let by = caller.name();
        match decision {
            Decision::Deny => {
                row.status = "denied".to_owned();
                row.updated_at = now;
                row.history
                    .push(json!({"at": now, "event": "denied", "by": by, "reason": reason}));
                self.save(&row, now, "permission_denied", caller, json!({"reason": reason}))?;
            }
            Decision::Escalate => {
                let next = match caller {
                    Caller::Admin => None,
                    Caller::Agent(a) => Some(a.row.parent.clone().unwrap_or_else(|| ADMIN_APPROVER.to_owned())),
                };
                let Some(next) = next.filter(|n| *n != row.approver) else {
                    return Err(DelegationError::new(
                        409,
                        "cannot_escalate",
                        "a human is the last approver; approve or deny",
                    ));
                };
                row.history
                    .push(json!({"at": now, "event": "escalated", "by": by, "to": next, "reason": reason}));
                row.approver = next.clone();
                row.updated_at = now;
                self.save(
                    &row,
                    now,
                    "permission_escalated",
                    caller,
                    json!({"to": next, "reason": reason}),
                )?;
            }
            Decision::Approve if is_delegation(&row) => {
                // A pending delegation: the approval lets the parent carry out exactly this
                // delegation once (`approved_request`); the child is created then, with its own
                // credential returned to the parent.
                row.status = "approved".to_owned();
                row.updated_at = now;
                row.history
                    .push(json!({"at": now, "event": "approved", "by": by, "reason": reason}));
                self.save(&row, now, "delegation_approved", caller, json!({"reason": reason}))?;
            }
            Decision::Approve => self.approve(snap, caller, &mut row, &requester, reason, now)?,
        }
        Ok(row.into())
    }

    fn approve(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        row: &mut PermissionRow,
        requester: &Arc<LiveAgent>,
        reason: &str,
        now: i64,
    ) -> Result<(), DelegationError> {
        // The path of grants to extend: below the approving agent (or from the root, for a
        // human) down to the requester.
        let start = match caller {
            Caller::Admin => 0,
            Caller::Agent(a) => {
                let at = requester.chain.iter().position(|c| *c == a.row.id).ok_or_else(|| {
                    DelegationError::new(403, "not_the_approver", "only an ancestor of the requester can approve")
                })?;
                at + 1
            }
        };
        let path: Vec<Arc<LiveAgent>> = requester.chain[start..]
            .iter()
            .filter_map(|id| snap.agents.get(id).cloned())
            .collect();
        // Prove each extension against its parent's grant as it will be after the approval.
        let mut parent_grant: Option<String> = match caller {
            Caller::Admin => None,
            Caller::Agent(a) => Some(a.row.grant.clone()),
        };
        let mut updates: Vec<(String, String, String)> = Vec::new();
        let mut steps = Vec::new();
        for agent in &path {
            let extended = format!("{}\n{}", agent.row.grant.trim_end(), row.grant);
            let grant = Grant::parse(&extended).map_err(|e| grant_error(&e))?;
            let verdict = match &parent_grant {
                None => None,
                Some(p) => Some(self.prove_against(snap, &grant, p, agent)?),
            };
            match &verdict {
                Some(Verdict::Within(_)) | None => {}
                Some(v) => {
                    let proof = serde_json::to_value(v).unwrap_or(Value::Null);
                    return Err(DelegationError::new(
                        409,
                        "exceeds_approver",
                        format!(
                            "the request is not within the delegable view of `{}` ({}); it can only be escalated",
                            agent.row.parent.as_deref().unwrap_or(ADMIN_APPROVER),
                            v.name()
                        ),
                    )
                    .help("escalate it to your own grantor or a human")
                    .detail("proof", proof));
                }
            }
            steps.push(json!({"agent": agent.row.id, "grant_digest": grant.digest(),
                              "proof": verdict.as_ref().map_or("not_required", Verdict::name)}));
            updates.push((agent.row.id.clone(), extended.clone(), grant.digest()));
            parent_grant = Some(extended);
        }
        row.status = "approved".to_owned();
        row.updated_at = now;
        row.history
            .push(json!({"at": now, "event": "approved", "by": caller.name(), "reason": reason, "extended": steps}));
        let audit: Vec<AuditEvent> = updates
            .iter()
            .map(|(id, _, digest)| AuditEvent {
                event: "grant_extended",
                actor: caller.name(),
                agent: Some(id.clone()),
                details: json!({"request_id": row.id, "grant_digest": digest, "reason": reason,
                                "policy_version": snap.bundle.version}),
            })
            .chain(std::iter::once(AuditEvent {
                event: "permission_approved",
                actor: caller.name(),
                agent: Some(row.requester.clone()),
                details: json!({"request_id": row.id, "reason": reason, "extended": steps}),
            }))
            .collect();
        self.store
            .update_grants(&updates, now, audit, Some(row))
            .map_err(DelegationError::state)?;
        self.live
            .update_registry(|r| {
                let mut next = r.clone();
                for (id, grant, digest) in &updates {
                    next = next.with_grant(id, grant, digest).map_err(|e| e.to_string())?;
                }
                Ok(next)
            })
            .map_err(|e| DelegationError::new(500, "internal", e))?;
        self.requests_changed.notify_waiters();
        Ok(())
    }

    /// The requester takes its request back.
    pub fn withdraw_request(&self, caller: &Caller, id: &str, now: i64) -> Result<RequestView, DelegationError> {
        let mut row = self
            .store
            .request(id)
            .map_err(DelegationError::state)?
            .ok_or_else(|| not_found(id))?;
        if caller_agent(caller).is_none_or(|a| a.row.id != row.requester) {
            return Err(DelegationError::new(
                403,
                "not_the_requester",
                "only the requester may withdraw a request",
            ));
        }
        if row.status != "pending" {
            return Err(DelegationError::new(
                409,
                "request_closed",
                format!("request `{id}` is already {}", row.status),
            ));
        }
        row.status = "withdrawn".to_owned();
        row.updated_at = now;
        row.history
            .push(json!({"at": now, "event": "withdrawn", "by": row.requester}));
        self.save(&row, now, "permission_withdrawn", caller, json!({}))?;
        Ok(row.into())
    }

    /// Closes the pending requests of agents that were revoked, completed or expired.
    pub(super) fn close_requests_of(&self, ids: &[String], now: i64, why: &str) {
        for id in ids {
            let Ok(rows) = self.store.requests(None, Some(id), Some("pending")) else {
                continue;
            };
            for mut row in rows {
                row.status = "closed".to_owned();
                row.updated_at = now;
                row.history.push(json!({"at": now, "event": "closed", "why": why}));
                if let Err(e) = self.save(&row, now, "permission_closed", &Caller::Admin, json!({"why": why})) {
                    tracing::error!(request = %row.id, code = e.code, "cannot close a permission request");
                }
            }
        }
    }

    /// Expires pending requests past their deadline.
    pub(super) fn expire_requests(&self, now: i64) {
        let Ok(rows) = self.store.requests(None, None, Some("pending")) else {
            return;
        };
        for mut row in rows.into_iter().filter(|r| r.expires_at <= now) {
            row.status = "expired".to_owned();
            row.updated_at = now;
            row.history.push(json!({"at": now, "event": "expired"}));
            if let Err(e) = self.save(&row, now, "permission_expired", &Caller::Admin, json!({})) {
                tracing::error!(request = %row.id, code = e.code, "cannot expire a permission request");
            }
        }
    }

    /// Resolves when some permission request changes next (for long polls).
    pub fn requests_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.requests_changed.notified()
    }

    fn prove_against(
        &self,
        snap: &Snapshot,
        child: &Grant,
        parent_src: &str,
        principal: &LiveAgent,
    ) -> Result<Verdict, DelegationError> {
        let parent = Grant::parse(parent_src)
            .map_err(|e| DelegationError::new(500, "internal", format!("a stored grant no longer parses: {e}")))?;
        let opts = ProveOptions {
            child_principal: Some(principal.uid.clone()),
            solver: self.limits.solver.clone(),
            ..ProveOptions::default()
        };
        crate::telemetry::prove_observed(self.metrics.as_deref(), || {
            prover::prove(child, &parent, &snap.bundle.schema, snap.entities(), &opts)
        })
        .map_err(|e| grant_error(&e))
    }

    fn save(
        &self,
        row: &PermissionRow,
        now: i64,
        event: &'static str,
        caller: &Caller,
        mut details: Value,
    ) -> Result<(), DelegationError> {
        details["request_id"] = json!(row.id);
        details["status"] = json!(row.status);
        details["approver"] = json!(row.approver);
        self.store
            .save_request(
                row,
                now,
                AuditEvent {
                    event,
                    actor: caller.name(),
                    agent: Some(row.requester.clone()),
                    details,
                },
            )
            .map_err(DelegationError::state)?;
        self.requests_changed.notify_waiters();
        Ok(())
    }
}
