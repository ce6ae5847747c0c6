//! Deciding a permission request: approve (re-proving every grant the approval extends, each
//! within its parent's delegable view, and writing them all in the transaction that closes the
//! request), deny, or escalate to the next approver up the chain.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{bundle_grant, closed, not_found, remaining, save, Decision, RequestView};
use crate::agents::LiveAgent;
use crate::delegation::approval::is_delegation;
use crate::delegation::audit::{AuditEvent, AuditKind};
use crate::delegation::identity::{may_approve, ADMIN_APPROVER};
use crate::delegation::service::{accept_grant, grant_error, Attempt, Caller, Delegation, DelegationError};
use crate::delegation::store::{PermissionRow, RequestStatus};
use crate::error::ErrorCode;
use crate::prover::{self, Grant, ProveOptions, Verdict};
use crate::snapshot::Snapshot;

/// The grants an approval extends: (agent, the digest proved against, the new grant, its digest).
struct Extension {
    updates: Vec<(String, String, String, String)>,
    steps: Vec<Value>,
}

impl Delegation {
    /// Approves, denies or escalates a pending request. The caller must be its current
    /// approver, or a human with the admin credential.
    pub fn decide_request(
        &self,
        snap: &Arc<Snapshot>,
        caller: &Caller,
        id: &str,
        decision: Decision,
        reason: &str,
        now: i64,
    ) -> Result<RequestView, DelegationError> {
        let view = self.retrying(
            snap,
            caller,
            "the request or the grants it extends kept changing",
            |snap, caller| self.decide_once(snap, caller, id, decision, reason, now),
        )?;
        self.requests_changed.notify_waiters();
        Ok(view)
    }

    fn decide_once(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        id: &str,
        decision: Decision,
        reason: &str,
        now: i64,
    ) -> Result<Attempt<RequestView>, DelegationError> {
        let row = self
            .store
            .request(id)
            .map_err(DelegationError::state)?
            .ok_or_else(|| not_found(id))?;
        let requester = snap.agents.get(&row.requester).cloned();
        if !may_approve(caller.agent_id(), &row.approver, requester.as_deref()) {
            return Err(DelegationError::new(
                ErrorCode::NotTheApprover,
                format!("request `{id}` waits on `{}`, not on you", row.approver),
            ));
        }
        if row.status != RequestStatus::Pending {
            return Err(closed(id, row.status));
        }
        let requester = requester
            .filter(|r| r.is_live(now))
            .ok_or_else(|| DelegationError::new(ErrorCode::RequestClosed, "the requester is no longer live"))?;
        // The proofs of an approval run here, before the writer lock is taken.
        let extension = match decision {
            Decision::Approve if !is_delegation(&row) => Some(self.extension(snap, caller, &row, &requester)?),
            _ => None,
        };
        let by = caller.name();
        self.commit(|w, tx| {
            let Some(current) = tx.request(id)? else {
                return Err(not_found(id));
            };
            // Decided on what was read, against the bundle its proofs were made under.
            let bundle_moved = extension.is_some() && w.bundle().is_none_or(|b| b.version != snap.bundle.version);
            if bundle_moved
                || current.status != row.status
                || current.approver != row.approver
                || current.history.len() != row.history.len()
            {
                return Ok((Attempt::Stale, None));
            }
            let latest_requester = w
                .registry()
                .get(&row.requester)
                .cloned()
                .unwrap_or_else(|| Arc::clone(&requester));
            Self::check_live(tx, Some(&latest_requester), now)
                .map_err(|_| DelegationError::new(ErrorCode::RequestClosed, "the requester is no longer live"))?;
            Self::check_live(tx, caller.agent().map(Arc::as_ref), now)?;
            let mut next = row.clone();
            next.updated_at = now;
            let cas = Some((row.status, row.approver.as_str()));
            let mut registry = None;
            match decision {
                Decision::Deny => {
                    next.status = RequestStatus::Denied;
                    next.history
                        .push(json!({"at": now, "event": "denied", "by": by, "reason": reason}));
                    save(
                        tx,
                        &next,
                        cas,
                        now,
                        AuditKind::PermissionDenied,
                        &caller.name(),
                        json!({"reason": reason}),
                    )?;
                }
                Decision::Escalate => {
                    let to = caller
                        .agent()
                        .map(|a| a.row.parent.clone().unwrap_or_else(|| ADMIN_APPROVER.to_owned()));
                    let Some(to) = to.filter(|n| *n != row.approver) else {
                        return Err(DelegationError::new(
                            ErrorCode::CannotEscalate,
                            "a human is the last approver; approve or deny",
                        ));
                    };
                    let rest: Vec<String> = remaining(&row).into_iter().filter(|r| *r != to).collect();
                    next.history.push(
                        json!({"at": now, "event": "escalated", "by": by, "to": to, "reason": reason,
                                             "remaining": rest}),
                    );
                    next.approver = to.clone();
                    save(
                        tx,
                        &next,
                        cas,
                        now,
                        AuditKind::PermissionEscalated,
                        &caller.name(),
                        json!({"to": to, "reason": reason}),
                    )?;
                }
                Decision::Approve if is_delegation(&row) => {
                    // A pending delegation: once every approver said yes, the parent may carry out
                    // exactly this delegation once (`approved_request`).
                    let mut rest = remaining(&row);
                    if rest.is_empty() {
                        next.status = RequestStatus::Approved;
                        next.history
                            .push(json!({"at": now, "event": "approved", "by": by, "as": row.approver,
                                                 "reason": reason}));
                        save(
                            tx,
                            &next,
                            cas,
                            now,
                            AuditKind::DelegationApproved,
                            &caller.name(),
                            json!({"reason": reason}),
                        )?;
                    } else {
                        next.approver = rest.remove(0);
                        next.history
                            .push(json!({"at": now, "event": "approved", "by": by, "as": row.approver,
                                                 "reason": reason, "remaining": rest}));
                        save(
                            tx,
                            &next,
                            cas,
                            now,
                            AuditKind::DelegationApprovalStep,
                            &caller.name(),
                            json!({"reason": reason, "next": next.approver}),
                        )?;
                    }
                }
                Decision::Approve => {
                    let Some(ext) = &extension else {
                        return Err(DelegationError::internal("an approval without its extension"));
                    };
                    // Each extended grant must still be the one its proof was made against.
                    let moved = ext.updates.iter().any(|(agent, proved, _, _)| {
                        w.registry().get(agent).is_none_or(|a| a.row.grant_digest != *proved)
                    });
                    if moved {
                        return Ok((Attempt::Stale, None));
                    }
                    let mut rows = Vec::new();
                    for (agent, proved, grant, digest) in &ext.updates {
                        if !tx.swap_grant(agent, proved, grant, digest)? {
                            return Err(DelegationError::internal(format!(
                                "the stored grant of `{agent}` moved under the writer lock"
                            )));
                        }
                        tx.audit(
                            now,
                            AuditEvent {
                                kind: AuditKind::GrantExtended,
                                actor: by.clone(),
                                agent: Some(agent.clone()),
                                details: json!({"request_id": row.id, "grant_digest": digest, "reason": reason,
                                                "policy_version": snap.bundle.version}),
                            },
                        )?;
                        if let Some(a) = w.registry().get(agent) {
                            let mut r = a.row.clone();
                            r.grant = grant.clone();
                            r.grant_digest = digest.clone();
                            rows.push(r);
                        }
                    }
                    next.status = RequestStatus::Approved;
                    next.history.push(
                        json!({"at": now, "event": "approved", "by": by, "reason": reason, "extended": ext.steps}),
                    );
                    save(
                        tx,
                        &next,
                        cas,
                        now,
                        AuditKind::PermissionApproved,
                        &caller.name(),
                        json!({"reason": reason, "extended": ext.steps}),
                    )?;
                    registry = Some(w.registry().with_rows(rows).map_err(DelegationError::internal)?);
                }
            }
            Ok((Attempt::Done(next.into()), registry))
        })
    }

    /// The grants an approval extends: below the approving agent (or from the root, for a
    /// human) down to the requester, each proved within its parent's grant as extended.
    fn extension(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        row: &PermissionRow,
        requester: &Arc<LiveAgent>,
    ) -> Result<Extension, DelegationError> {
        // A bundle agent's grant comes from the bundle alone: a human's extension starts below
        // the deepest one on the chain, proved against its grant as if it had approved.
        let bundle_top = requester
            .chain
            .iter()
            .rposition(|id| snap.agents.get(id).is_some_and(|a| a.is_bundle_agent()));
        let (start, approver) = match caller.agent() {
            None => match bundle_top {
                Some(at) => (
                    at + 1,
                    requester.chain.get(at).and_then(|id| snap.agents.get(id)).cloned(),
                ),
                None => (0, None),
            },
            Some(a) => {
                let at = requester
                    .ancestors()
                    .iter()
                    .position(|c| *c == a.row.id)
                    .ok_or_else(|| {
                        DelegationError::new(
                            ErrorCode::NotTheApprover,
                            "only an ancestor of the requester can approve",
                        )
                    })?;
                (at + 1, Some(Arc::clone(a)))
            }
        };
        if start >= requester.chain.len() {
            return Err(bundle_grant(&requester.row.id));
        }
        let path: Vec<Arc<LiveAgent>> = requester
            .chain
            .get(start..)
            .unwrap_or_default()
            .iter()
            .filter_map(|id| snap.agents.get(id).cloned())
            .collect();
        let mut parent_grant: Option<String> = approver.map(|a| a.row.grant.clone());
        let mut updates = Vec::new();
        let mut steps = Vec::new();
        for agent in &path {
            let extended = format!("{}\n{}", agent.row.grant.trim_end(), row.grant);
            let grant = accept_grant(&extended, &snap.bundle)?;
            let verdict = match &parent_grant {
                None => None,
                Some(p) => Some(self.prove_against(snap, &grant, p, agent)?),
            };
            match &verdict {
                Some(Verdict::Within(_)) | None => {}
                Some(v) => {
                    let proof = serde_json::to_value(v).unwrap_or(Value::Null);
                    let help = match (
                        caller.agent(),
                        agent.row.parent.as_ref().and_then(|p| snap.agents.get(p)),
                    ) {
                        (None, Some(top)) if top.is_bundle_agent() => format!(
                            "`{}`'s grant comes from the bundle: extend `grants/{}.cedar` first, then approve",
                            top.row.id, top.row.id
                        ),
                        _ => "escalate it to your own grantor or a human".to_owned(),
                    };
                    return Err(DelegationError::new(
                        ErrorCode::ExceedsApprover,
                        format!(
                            "the request is not within the delegable view of `{}` ({}); it can only be escalated",
                            agent.row.parent.as_deref().unwrap_or(ADMIN_APPROVER),
                            v.name()
                        ),
                    )
                    .help(help)
                    .detail("proof", proof));
                }
            }
            steps.push(json!({"agent": agent.row.id, "grant_digest": grant.digest(),
                              "proof": verdict.as_ref().map_or("not_required", Verdict::name)}));
            updates.push((
                agent.row.id.clone(),
                agent.row.grant_digest.clone(),
                extended.clone(),
                grant.digest(),
            ));
            parent_grant = Some(extended);
        }
        Ok(Extension { updates, steps })
    }


    pub(super) fn prove_against(
        &self,
        snap: &Snapshot,
        child: &Grant,
        parent_src: &str,
        principal: &LiveAgent,
    ) -> Result<Verdict, DelegationError> {
        let parent = Grant::parse(parent_src)
            .map_err(|e| DelegationError::internal(format!("a stored grant no longer parses: {e}")))?;
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
}
