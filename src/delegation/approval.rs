//! Pending delegations carried out: an approved request is checked against exactly what is
//! asked, and consumed once, in the transaction that creates the child.

use serde_json::{json, Value};

use super::audit::{AuditEvent, AuditKind};
use super::service::{Delegation, DelegationError};
use super::spawn::SpawnRequest;
use super::store::{PermissionRow, RequestStatus};
use super::ADMIN_APPROVER;
use crate::error::ErrorCode;

/// The kind of a pending request that is a whole delegation (rather than more permission).
pub(super) const DELEGATION_KIND: &str = "delegation";

impl Delegation {
    /// Checks that `rid` is an approved pending delegation of `parent` for exactly `req`, and
    /// returns it with the approvers who approved it (`admin` when a human did any step).
    pub(super) fn approved_delegation(
        &self,
        rid: &str,
        parent: &str,
        req: &SpawnRequest,
        now: i64,
    ) -> Result<(String, Vec<String>), DelegationError> {
        let row = self
            .store
            .request(rid)
            .map_err(DelegationError::state)?
            .filter(|r| r.requester == parent && is_delegation(r))
            .ok_or_else(|| {
                DelegationError::new(
                    ErrorCode::PermissionRequestNotFound,
                    format!("no pending delegation `{rid}` of yours"),
                )
            })?;
        if row.status != RequestStatus::Approved || row.expires_at <= now {
            return Err(DelegationError::new(
                ErrorCode::RequestNotApproved,
                format!("delegation request `{rid}` is {}, not approved", row.status),
            ));
        }
        let same = row.grant == req.grant && row.history.first().is_some_and(|h| h["spawn"] == spawn_params(req));
        if !same {
            return Err(DelegationError::new(
                ErrorCode::RequestMismatch,
                format!("the approval of `{rid}` was for a different grant or different parameters"),
            )
            .help("send exactly the delegation that was approved"));
        }
        let mut approved: Vec<String> = Vec::new();
        for h in row.history.iter().filter(|h| h["event"] == "approved") {
            if let Some(slot) = h["as"].as_str() {
                approved.push(slot.to_owned());
            }
            if h["by"] == ADMIN_APPROVER {
                approved.push(ADMIN_APPROVER.to_owned());
            }
        }
        Ok((row.id, approved))
    }

}

/// Consumes an approval inside the transaction that creates the child: compare-and-set from
/// `approved` to `used`, so one approval creates exactly one child however many requests race.
pub(super) fn take_approval(
    tx: &super::store::Tx<'_>,
    rid: &str,
    parent: &str,
    child: &str,
    now: i64,
) -> Result<(), DelegationError> {
    let not_approved = || {
        DelegationError::new(
            ErrorCode::RequestNotApproved,
            format!("delegation request `{rid}` is no longer approved (it was used or closed)"),
        )
    };
    let mut row = tx.request(rid)?.ok_or_else(not_approved)?;
    if row.status != RequestStatus::Approved || row.requester != parent || row.expires_at <= now {
        return Err(not_approved());
    }
    let approver = row.approver.clone();
    row.status = RequestStatus::Used;
    row.updated_at = now;
    row.history.push(json!({"at": now, "event": "used", "child": child}));
    if !tx.save_request(&row, Some((RequestStatus::Approved, &approver)))? {
        return Err(not_approved());
    }
    tx.audit(
        now,
        AuditEvent {
            kind: AuditKind::ApprovalUsed,
            actor: format!("Agent::\"{parent}\""),
            agent: Some(child.to_owned()),
            details: json!({"request_id": rid}),
        },
    )?;
    Ok(())
}

/// Whether a request is a whole pending delegation.
pub(super) fn is_delegation(row: &PermissionRow) -> bool {
    row.history.first().is_some_and(|h| h["kind"] == DELEGATION_KIND)
}

/// The parameters an approval of a pending delegation is bound to.
pub(super) fn spawn_params(req: &SpawnRequest) -> Value {
    json!({"ttl_seconds": req.ttl_seconds, "ceiling": req.ceiling, "can_delegate": req.can_delegate,
           "task": req.task, "agent_id": req.agent_id})
}

