//! How agents end — revoked by an ancestor or the admin, completed, expired — and what the
//! decision path learns about them (taint) made durable.
//!
//! INVARIANT: a revocation takes the subtree from the durable state inside its own transaction,
//! so a child committed a moment before is revoked with its parent, and a child whose spawn
//! commits after finds its parent revoked and is refused. The revoked agents are marked in
//! memory before the answer is sent.
//!
//! INVARIANT: a raised taint is durable before the decision that raised it is answered.

use crate::error::ErrorCode;
use serde_json::json;

use super::audit::{AuditEvent, AuditKind};
use super::service::{Caller, Delegation, DelegationError};
use super::store::{StateError, Tx};

impl Delegation {
    /// Revokes `id` and all its descendants. The caller must be the admin, the agent itself
    /// (for `complete` only) or one of its ancestors.
    pub fn revoke(
        &self,
        snap: &crate::snapshot::Snapshot,
        caller: &Caller,
        id: &str,
        completed: bool,
        now: i64,
    ) -> Result<Vec<String>, DelegationError> {
        let target = snap
            .agents
            .get(id)
            .ok_or_else(|| DelegationError::new(ErrorCode::DelegationNotFound, format!("no delegation `{id}`")))?;
        // A session may also be ended by the caller that started it (cancelling the task).
        let allowed = match caller.agent() {
            None => true,
            Some(a) => {
                target.has_ancestor(&a.row.id)
                    || (completed && a.row.id == target.row.id)
                    || target.session.as_ref().is_some_and(|s| s.caller == a.row.id)
            }
        };
        if completed && target.is_bundle_agent() {
            return Err(DelegationError::new(
                ErrorCode::DeclaredInBundle,
                format!("`{id}` is declared by the bundle: it lives as long as the bundle declares it"),
            )
            .help("remove its grant from the bundle to end it; the admin may also revoke it (for good)"));
        }
        if !allowed {
            return Err(DelegationError::new(
                ErrorCode::NotYourDelegation,
                format!(
                    "only the admin or an ancestor of `{id}` may {}",
                    if completed { "complete it" } else { "revoke it" }
                ),
            ));
        }
        let (event, reason) = if completed {
            (AuditKind::Completed, "task completed")
        } else {
            (AuditKind::Revoked, "revoked")
        };
        // A session's result needs no hand-back here: its caller already holds every taint the
        // session's reads raised, from the decision that raised it on (see `taint`).
        let ids = self.commit(|_, tx| {
            Self::check_live(tx, caller.agent().map(AsRef::as_ref), now)?;
            let ids = self.end_subtree(tx, id, now, event, reason, &caller.name())?;
            Ok((ids, None))
        })?;
        // Committed: now (before answering) no snapshot shows them live.
        self.live.mark_revoked(&ids);
        if let Some(m) = &self.metrics {
            m.revoked(event.as_str(), ids.len());
        }
        self.requests_changed.notify_waiters();
        Ok(ids)
    }

    /// Revokes `root` and its stored, not yet revoked descendants in `tx` (one audit record
    /// each, their pending requests closed) and returns them. The caller marks them in memory
    /// once the transaction commits.
    pub(super) fn end_subtree(
        &self,
        tx: &Tx<'_>,
        root: &str,
        now: i64,
        kind: AuditKind,
        reason: &str,
        actor: &str,
    ) -> Result<Vec<String>, StateError> {
        let ids = tx.unrevoked_subtree(root)?;
        let changed = tx.revoke(&ids, now, reason)?;
        let version = self.live.current().map(|s| s.bundle.version.clone());
        let details = json!({"root": root, "by": actor, "cascade": changed, "policy_version": version});
        for id in &changed {
            let (kind, details) = match tx.session(id)? {
                None => (kind, details.clone()),
                Some(session) => {
                    let mut d = details.clone();
                    d["how"] = json!(kind.as_str());
                    d["caller"] = json!(session.caller);
                    d["callee"] = json!(session.callee);
                    d["depth"] = json!(session.depth);
                    d["taint"] = json!(tx.taint(id)?);
                    (AuditKind::SessionEnded, d)
                }
            };
            tx.audit(
                now,
                AuditEvent {
                    kind,
                    actor: actor.to_owned(),
                    agent: Some(id.clone()),
                    details,
                },
            )?;
        }
        self.close_requests_in(tx, &changed, now, kind.as_str())?;
        Ok(changed)
    }

    /// Records and revokes agents whose lifetime ended (with their subtrees), and expires
    /// pending requests past their deadline.
    pub fn sweep_expired(&self, snap: &crate::snapshot::Snapshot, now: i64) {
        let expired: Vec<String> = snap
            .agents
            .iter()
            .filter(|a| !a.is_revoked() && a.is_expired(now))
            .map(|a| a.row.id.clone())
            .collect();
        for id in expired {
            let ended = self.commit(|_, tx| {
                Ok((
                    self.end_subtree(tx, &id, now, AuditKind::Expired, "expired", "deputy")?,
                    None,
                ))
            });
            match ended {
                Ok(ids) => {
                    self.live.mark_revoked(&ids);
                    if let Some(m) = &self.metrics {
                        m.revoked("expired", ids.len());
                    }
                    self.requests_changed.notify_waiters();
                }
                Err(e) => tracing::error!(code = e.code.as_str(), message = %e.message, "cannot record an expiry"),
            }
        }
        self.expire_requests(now);
    }

    /// Makes raised taints durable (the in-memory taint already holds for every later
    /// decision), with everything they flow to along live invocation and delegation links (see
    /// `taint`).
    /// Called before the decision that raised them is answered.
    pub fn persist_taints(&self, raises: &[(String, i64)]) -> Result<(), DelegationError> {
        if raises.is_empty() {
            return Ok(());
        }
        let now = crate::clock::now();
        let written = self.commit(|w, tx| {
            let mut written: Vec<_> = raises
                .iter()
                .filter_map(|(id, level)| Some((std::sync::Arc::clone(w.registry().get(id)?), *level)))
                .collect();
            for (id, level) in raises {
                tx.raise_taint(id, *level)?;
            }
            let flowed = crate::agents::taint::propagate(w.registry(), raises, now);
            for (agent, level) in &flowed {
                tx.raise_taint(&agent.row.id, *level)?;
            }
            written.extend(flowed);
            Ok((written, None))
        })?;
        // Committed: later decisions at these levels need no write of their own.
        for (agent, level) in written {
            agent.mark_durable(level);
        }
        Ok(())
    }
}
