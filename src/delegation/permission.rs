//! Asking for more permission without pausing the agent: a grantee files a request, its grantor
//! approves (re-proved), denies or escalates it up the chain to a human, and the grantee polls.
//! An approval extends every grant on the path from the approver down to the requester, each
//! proved within its parent's delegable view first, all in one transaction.
//!
//! INVARIANT (approvers are identities): only the request's current approver decides it — the
//! human with the admin credential, or the agent named, which must be a strict ancestor of the
//! requester. A pending delegation that several `@ask` rules gate waits on each of their
//! approvers in turn.
//!
//! INVARIANT: every decision is a compare-and-set on the request's status and approver inside
//! the transaction that writes its effects, with the deciding agent and the requester's whole
//! chain checked live there too: a request is decided once, by someone entitled to at that
//! moment.

use crate::error::ErrorCode;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Value};

use super::audit::{AuditEvent, AuditKind};
use super::identity::{may_approve, ADMIN_APPROVER};
use super::service::{accept_grant, Caller, Delegation, DelegationError};
use super::store::{PermissionRow, RequestStatus, StateError, Tx};
use crate::snapshot::Snapshot;

mod decide;

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
    pub status: RequestStatus,
    pub requester: String,
    /// Who decides now: an agent id, or `admin` (a human with the admin credential).
    pub approver: String,
    /// For a pending delegation: who still has to approve after the current approver.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub then: Vec<String>,
    pub grant: String,
    pub reason: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub history: Vec<Value>,
}

impl From<PermissionRow> for RequestView {
    fn from(r: PermissionRow) -> Self {
        let then = if r.status == RequestStatus::Pending {
            remaining(&r)
        } else {
            Vec::new()
        };
        Self {
            request_id: r.id,
            status: r.status,
            requester: r.requester,
            approver: r.approver,
            then,
            grant: r.grant,
            reason: r.reason,
            created_at: r.created_at,
            expires_at: r.expires_at,
            history: r.history,
        }
    }
}

/// The approvers a pending delegation still needs after its current one: the `remaining` of
/// the latest step that set it, else the ones after the first of the original list.
fn remaining(row: &PermissionRow) -> Vec<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    if let Some(latest) = row.history.iter().rev().find_map(|h| h.get("remaining")) {
        return strings(latest);
    }
    let all = row
        .history
        .first()
        .map(|h| strings(&h["approvers"]))
        .unwrap_or_default();
    all.into_iter().skip(1).collect()
}

fn not_found(id: &str) -> DelegationError {
    DelegationError::new(
        ErrorCode::PermissionRequestNotFound,
        format!("no permission request `{id}`"),
    )
}

/// A bundle agent's grant is changed through the bundle, never through the API.
fn bundle_grant(id: &str) -> DelegationError {
    DelegationError::new(
        ErrorCode::GrantFromBundle,
        format!("`{id}`'s grant comes from the bundle (`grants/{id}.cedar`); no approval can change it"),
    )
    .help("change the grant in the bundle's git repository; it applies on the next reload")
}

fn closed(id: &str, status: RequestStatus) -> DelegationError {
    DelegationError::new(
        ErrorCode::RequestClosed,
        format!("request `{id}` is already {}", status.as_str()),
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
        let requester = caller.agent().ok_or_else(|| {
            DelegationError::new(
                ErrorCode::NotAnAgent,
                "permission requests come from agents; the admin grants directly",
            )
        })?;
        if requester.is_bundle_agent() {
            return Err(bundle_grant(&requester.row.id));
        }
        super::service::not_for_sessions(caller, "file permission requests")?;
        self.check_grant_size(grant_src)?;
        let grant = accept_grant(grant_src, &snap.bundle)?;
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
            status: RequestStatus::Pending,
            created_at: now,
            expires_at: now + ttl.max(1),
            updated_at: now,
            history: vec![json!({
                "at": now, "event": "requested", "by": requester.row.id, "reason": reason,
                "proof": proof.get("verdict").cloned().unwrap_or(Value::Null), "can_approve_alone": can_approve_alone,
            })],
        };
        self.commit(|_, tx| {
            Self::check_live(tx, Some(requester), now)?;
            self.check_pending_limit(tx, &requester.row.id)?;
            save(
                tx,
                &row,
                None,
                now,
                AuditKind::PermissionRequested,
                &caller.name(),
                json!({"grant_digest": grant.digest()}),
            )?;
            Ok(((), None))
        })?;
        self.requests_changed.notify_waiters();
        let extra = json!({"can_approve_alone": can_approve_alone, "proof": proof});
        Ok((row.into(), extra))
    }

    /// Requests waiting on the caller (an agent: those it must decide; the admin: those
    /// escalated to a human), or the caller's own requests with `mine`.
    pub fn list_requests(
        &self,
        snap: &Snapshot,
        caller: &Caller,
        status: Option<RequestStatus>,
        mine: bool,
    ) -> Result<Vec<RequestView>, DelegationError> {
        let rows = match (caller, mine) {
            (Caller::Agent(a), true) => self.store.requests(None, Some(&a.row.id), status),
            (Caller::Agent(a), false) => self.store.requests(Some(&a.row.id), None, status).map(|rows| {
                // Only requests it is entitled to decide: never the human's, never its own.
                rows.into_iter()
                    .filter(|r| {
                        may_approve(
                            Some(&a.row.id),
                            &r.approver,
                            snap.agents.get(&r.requester).map(Arc::as_ref),
                        )
                    })
                    .collect()
            }),
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

    /// The requester takes its request back.
    pub fn withdraw_request(&self, caller: &Caller, id: &str, now: i64) -> Result<RequestView, DelegationError> {
        let view = self.commit(|_, tx| {
            let mut row = tx.request(id)?.ok_or_else(|| not_found(id))?;
            if caller.agent_id() != Some(row.requester.as_str()) {
                return Err(DelegationError::new(
                    ErrorCode::NotTheRequester,
                    "only the requester may withdraw a request",
                ));
            }
            if row.status != RequestStatus::Pending {
                return Err(closed(id, row.status));
            }
            let cas = (row.status, row.approver.clone());
            row.status = RequestStatus::Withdrawn;
            row.updated_at = now;
            row.history
                .push(json!({"at": now, "event": "withdrawn", "by": row.requester}));
            save(
                tx,
                &row,
                Some((cas.0, &cas.1)),
                now,
                AuditKind::PermissionWithdrawn,
                &caller.name(),
                json!({}),
            )?;
            Ok((RequestView::from(row), None))
        })?;
        self.requests_changed.notify_waiters();
        Ok(view)
    }

    /// Closes, inside a write, the pending requests of agents that were revoked, completed or
    /// expired.
    pub(super) fn close_requests_in(&self, tx: &Tx<'_>, ids: &[String], now: i64, why: &str) -> Result<(), StateError> {
        for id in ids {
            for mut row in tx.pending_of(id)? {
                // Read in this same transaction: nothing can have moved it.
                row.status = RequestStatus::Closed;
                row.updated_at = now;
                row.history.push(json!({"at": now, "event": "closed", "why": why}));
                match save(
                    tx,
                    &row,
                    None,
                    now,
                    AuditKind::PermissionClosed,
                    "deputy",
                    json!({"why": why}),
                ) {
                    Ok(()) | Err(Saved::Moved) => {}
                    Err(Saved::State(e)) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// Expires pending requests past their deadline.
    pub(super) fn expire_requests(&self, now: i64) {
        let Ok(rows) = self.store.requests(None, None, Some(RequestStatus::Pending)) else {
            return;
        };
        let mut changed = false;
        for row in rows.into_iter().filter(|r| r.expires_at <= now) {
            let done = self.commit(|_, tx| {
                let mut row = row.clone();
                let cas = (row.status, row.approver.clone());
                row.status = RequestStatus::Expired;
                row.updated_at = now;
                row.history.push(json!({"at": now, "event": "expired"}));
                match save(
                    tx,
                    &row,
                    Some((cas.0, &cas.1)),
                    now,
                    AuditKind::PermissionExpired,
                    "deputy",
                    json!({}),
                ) {
                    Ok(()) | Err(Saved::Moved) => Ok(((), None)),
                    Err(Saved::State(e)) => Err(DelegationError::state(e)),
                }
            });
            match done {
                Ok(()) => changed = true,
                Err(e) => {
                    tracing::error!(request = %row.id, code = e.code.as_str(), "cannot expire a permission request")
                }
            }
        }
        if changed {
            self.requests_changed.notify_waiters();
        }
    }

    /// Resolves when some permission request changes next (for long polls).
    pub fn requests_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.requests_changed.notified()
    }

}

/// Why a request could not be saved.
enum Saved {
    State(StateError),
    /// Its status or approver changed since it was read.
    Moved,
}

impl From<StateError> for Saved {
    fn from(e: StateError) -> Self {
        Saved::State(e)
    }
}

impl From<Saved> for DelegationError {
    fn from(e: Saved) -> Self {
        match e {
            Saved::State(e) => DelegationError::state(e),
            Saved::Moved => DelegationError::new(
                ErrorCode::StateChanged,
                "the request changed while this was being decided; nothing was changed",
            )
            .help("read it again and decide again"),
        }
    }
}

/// Saves a request (compare-and-set on its stored status and approver when `cas` is given)
/// with its audit record.
fn save(
    tx: &Tx<'_>,
    row: &PermissionRow,
    cas: Option<(RequestStatus, &str)>,
    now: i64,
    kind: AuditKind,
    actor: &str,
    mut details: Value,
) -> Result<(), Saved> {
    if !tx.save_request(row, cas)? {
        return Err(Saved::Moved);
    }
    details["request_id"] = json!(row.id);
    details["status"] = json!(row.status);
    details["approver"] = json!(row.approver);
    tx.audit(
        now,
        AuditEvent {
            kind,
            actor: actor.to_owned(),
            agent: Some(row.requester.clone()),
            details,
        },
    )?;
    Ok(())
}
