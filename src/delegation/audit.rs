//! The hash-chained audit trail: what kinds of record there are (docs/AUDIT.md lists them, and
//! a test compares), how one is appended, and how the chain is verified.
//!
//! INVARIANT: a record's hash covers exactly the bytes stored (its details as written), chained
//! to the record before, so verifying never depends on how a JSON library would serialise the
//! details again, and an edited, inserted or deleted record breaks the chain where it happened.

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::store::StateError;

/// The hash before the first audit record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an audit record says happened; its snake_case name is the record's `event`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// An agent was created (a root by the admin, a child proved within, or one approved).
    Applied,
    /// A spawn waits for approval (its proof was inconclusive or a rule asked for approval).
    Pending,
    /// A spawn was refused.
    Rejected,
    /// An approved delegation request was used to create the child it approved.
    ApprovalUsed,
    /// An agent and its descendants were revoked (by an ancestor, the admin or the bundle).
    Revoked,
    /// An agent finished its task: it and its descendants were revoked.
    Completed,
    /// An agent's lifetime ended: it and its descendants were revoked.
    Expired,
    /// A bundle agent's grant changed with the bundle.
    GrantReplaced,
    /// A bundle agent's `can_delegate`, ceiling or depth changed with the bundle.
    AttributesReplaced,
    /// An approved permission request widened an agent's grant.
    GrantExtended,
    /// A live grant no longer proves within its parent's under a new bundle.
    Drift,
    /// An agent asked for more permission.
    PermissionRequested,
    /// A permission request was approved and applied.
    PermissionApproved,
    /// A permission request was denied.
    PermissionDenied,
    /// A permission request was passed up to the next approver.
    PermissionEscalated,
    /// Its requester withdrew a permission request.
    PermissionWithdrawn,
    /// A permission request was closed because its requester is gone.
    PermissionClosed,
    /// A permission request passed its deadline undecided.
    PermissionExpired,
    /// A pending delegation was approved by its last approver (the parent may now spawn it).
    DelegationApproved,
    /// One approver of a pending delegation approved; the next is asked.
    DelegationApprovalStep,
    /// An agent (or a session) invoked an agent: a session of the callee started.
    Invoked,
    /// An invocation was refused.
    InvocationRejected,
    /// The callee accepted a session with its own credential (or the admin did): the session's
    /// credential was handed out, once.
    SessionAccepted,
    /// A session ended: completed, revoked (itself, its caller or its callee) or expired.
    SessionEnded,
}

impl AuditKind {
    /// Every kind, in the order docs/AUDIT.md lists them.
    #[cfg(test)]
    pub const ALL: &'static [AuditKind] = &[
        AuditKind::Applied,
        AuditKind::Pending,
        AuditKind::Rejected,
        AuditKind::ApprovalUsed,
        AuditKind::Revoked,
        AuditKind::Completed,
        AuditKind::Expired,
        AuditKind::GrantReplaced,
        AuditKind::AttributesReplaced,
        AuditKind::GrantExtended,
        AuditKind::Drift,
        AuditKind::PermissionRequested,
        AuditKind::PermissionApproved,
        AuditKind::PermissionDenied,
        AuditKind::PermissionEscalated,
        AuditKind::PermissionWithdrawn,
        AuditKind::PermissionClosed,
        AuditKind::PermissionExpired,
        AuditKind::DelegationApproved,
        AuditKind::DelegationApprovalStep,
        AuditKind::Invoked,
        AuditKind::InvocationRejected,
        AuditKind::SessionAccepted,
        AuditKind::SessionEnded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Applied => "applied",
            AuditKind::Pending => "pending",
            AuditKind::Rejected => "rejected",
            AuditKind::ApprovalUsed => "approval_used",
            AuditKind::Revoked => "revoked",
            AuditKind::Completed => "completed",
            AuditKind::Expired => "expired",
            AuditKind::GrantReplaced => "grant_replaced",
            AuditKind::AttributesReplaced => "attributes_replaced",
            AuditKind::GrantExtended => "grant_extended",
            AuditKind::Drift => "drift",
            AuditKind::PermissionRequested => "permission_requested",
            AuditKind::PermissionApproved => "permission_approved",
            AuditKind::PermissionDenied => "permission_denied",
            AuditKind::PermissionEscalated => "permission_escalated",
            AuditKind::PermissionWithdrawn => "permission_withdrawn",
            AuditKind::PermissionClosed => "permission_closed",
            AuditKind::PermissionExpired => "permission_expired",
            AuditKind::DelegationApproved => "delegation_approved",
            AuditKind::DelegationApprovalStep => "delegation_approval_step",
            AuditKind::Invoked => "invoked",
            AuditKind::InvocationRejected => "invocation_rejected",
            AuditKind::SessionAccepted => "session_accepted",
            AuditKind::SessionEnded => "session_ended",
        }
    }
}

/// An audit event before it is chained.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub kind: AuditKind,
    /// Who did it: `admin`, `Agent::"<id>"`, `bundle` or `deputy`.
    pub actor: String,
    /// The agent it is about.
    pub agent: Option<String>,
    /// What docs/AUDIT.md lists for its kind.
    pub details: serde_json::Value,
}

/// An audit record as stored: chained to the one before by `prev_hash`. Its `event` stays a
/// string: a trail may hold kinds a later deputy wrote.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: i64,
    pub event: String,
    pub actor: String,
    pub agent: Option<String>,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The columns an audit record is read from, by name.
pub(super) const COLUMNS: &str = "seq, at, event, actor, agent, details, prev_hash, hash";

/// Appends one record in `tx`, chained to the last.
pub(super) fn append(tx: &rusqlite::Connection, now: i64, ev: AuditEvent) -> Result<AuditRecord, StateError> {
    let last: Option<(i64, String)> = tx
        .query_row("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", [], |r| {
            Ok((r.get("seq")?, r.get("hash")?))
        })
        .optional()?;
    let (seq, prev) = last.map_or((1, GENESIS.to_owned()), |(s, h)| (s + 1, h));
    let event = ev.kind.as_str();
    let stored = ev.details.to_string();
    let hash = chain_hash(&prev, seq, now, event, &ev.actor, ev.agent.as_deref(), &stored);
    tx.execute(
        "INSERT INTO audit (seq, at, event, actor, agent, details, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![seq, now, event, ev.actor, ev.agent, stored, prev, hash],
    )?;
    Ok(AuditRecord {
        seq,
        at: now,
        event: event.to_owned(),
        actor: ev.actor,
        agent: ev.agent,
        details: ev.details,
        prev_hash: prev,
        hash,
    })
}

/// Walks the whole chain in `conn`; returns the first broken link, if any.
pub(super) fn verify(conn: &rusqlite::Connection) -> Result<Option<String>, StateError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
    let mut rows = stmt.query([])?;
    let mut prev = GENESIS.to_owned();
    let mut expected_seq = 1;
    while let Some(r) = rows.next()? {
        let seq: i64 = r.get("seq")?;
        if seq != expected_seq {
            return Ok(Some(format!(
                "audit record {expected_seq} is missing (found {seq} next)"
            )));
        }
        let prev_hash: String = r.get("prev_hash")?;
        if prev_hash != prev {
            return Ok(Some(format!("audit record {seq} does not link to record {}", seq - 1)));
        }
        let (at, event, actor): (i64, String, String) = (r.get("at")?, r.get("event")?, r.get("actor")?);
        let (agent, stored, hash): (Option<String>, String, String) =
            (r.get("agent")?, r.get("details")?, r.get("hash")?);
        let h = chain_hash(&prev, seq, at, &event, &actor, agent.as_deref(), &stored);
        if h != hash {
            return Ok(Some(format!(
                "audit record {seq} was altered (its hash does not match its content)"
            )));
        }
        prev = h;
        expected_seq += 1;
    }
    Ok(None)
}

/// Reads a record selected with [`COLUMNS`].
pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let details: String = r.get("details")?;
    Ok(AuditRecord {
        seq: r.get("seq")?,
        at: r.get("at")?,
        event: r.get("event")?,
        actor: r.get("actor")?,
        agent: r.get("agent")?,
        details: serde_json::from_str(&details).unwrap_or(serde_json::Value::String(details)),
        prev_hash: r.get("prev_hash")?,
        hash: r.get("hash")?,
    })
}

fn chain_hash(prev: &str, seq: i64, at: i64, event: &str, actor: &str, agent: Option<&str>, details: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        prev,
        &seq.to_string(),
        &at.to_string(),
        event,
        actor,
        agent.unwrap_or(""),
        details,
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::AuditKind;

    /// The `| `kind` | … |` rows of docs/AUDIT.md, in order.
    fn documented() -> Vec<String> {
        let doc = include_str!("../../docs/AUDIT.md");
        doc.lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(k, _)| k.to_owned()))
            .filter(|k| k != "event")
            .collect()
    }

    #[test]
    fn docs_audit_md_lists_every_kind_in_order() {
        let kinds: Vec<String> = AuditKind::ALL.iter().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(documented(), kinds, "docs/AUDIT.md and AuditKind::ALL disagree");
    }

    #[test]
    fn names_are_the_serde_names() {
        for k in AuditKind::ALL {
            assert_eq!(serde_json::to_value(k).ok(), Some(serde_json::json!(k.as_str())));
        }
    }
}
