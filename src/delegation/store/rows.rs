//! Rows as stored: the columns each reads (by name) and the writes of whole rows.

use rusqlite::{params, Connection, Row};

use super::{AgentRow, PermissionRow, SessionRow, StateError};

/// The columns `agent_from_row` reads, by name.
pub(super) const AGENT_COLUMNS: &str =
    "id, parent, depth, can_delegate, ceiling, taint, grant_text, grant_digest, credential_hash, \
     task, reason, created_by, created_at, expires_at, revoked_at, revoked_reason, bundle_version, proof";
/// The columns `session_from_row` reads, by name.
pub(super) const SESSION_COLUMNS: &str = "id, caller, callee, depth, chain, caller_taint, created_at";
/// The columns `request_from_row` reads, by name.
pub(super) const REQUEST_COLUMNS: &str =
    "id, requester, approver, grant_text, reason, status, created_at, expires_at, updated_at, history";

pub(super) fn insert_agent(tx: &Connection, row: &AgentRow) -> Result<(), StateError> {
    tx.execute(
        &format!(
            "INSERT INTO agents ({AGENT_COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
        ),
        params![
            row.id,
            row.parent,
            row.depth,
            row.can_delegate,
            row.ceiling,
            row.taint,
            row.grant,
            row.grant_digest,
            row.credential_hash,
            row.task,
            row.reason,
            row.created_by,
            row.created_at,
            row.expires_at,
            row.revoked_at,
            row.revoked_reason,
            row.bundle_version,
            row.proof.to_string(),
        ],
    )?;
    Ok(())
}

pub(super) fn save_request(tx: &Connection, r: &PermissionRow) -> Result<(), StateError> {
    tx.execute(
        "INSERT INTO permission_requests (id, requester, approver, grant_text, reason, status, created_at, expires_at, \
         updated_at, history) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(id) DO UPDATE SET \
         approver = excluded.approver, status = excluded.status, updated_at = excluded.updated_at, history = excluded.history",
        params![
            r.id,
            r.requester,
            r.approver,
            r.grant,
            r.reason,
            r.status,
            r.created_at,
            r.expires_at,
            r.updated_at,
            serde_json::Value::Array(r.history.clone()).to_string()
        ],
    )?;
    Ok(())
}

pub(super) fn request_from_row(r: &Row<'_>) -> rusqlite::Result<PermissionRow> {
    let history: String = r.get("history")?;
    let history = match serde_json::from_str(&history) {
        Ok(serde_json::Value::Array(items)) => items,
        _ => Vec::new(),
    };
    Ok(PermissionRow {
        id: r.get("id")?,
        requester: r.get("requester")?,
        approver: r.get("approver")?,
        grant: r.get("grant_text")?,
        reason: r.get("reason")?,
        status: r.get("status")?,
        created_at: r.get("created_at")?,
        expires_at: r.get("expires_at")?,
        updated_at: r.get("updated_at")?,
        history,
    })
}

pub(super) fn session_from_row(r: &Row<'_>) -> rusqlite::Result<SessionRow> {
    let chain: String = r.get("chain")?;
    let chain = serde_json::from_str(&chain).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(SessionRow {
        id: r.get("id")?,
        caller: r.get("caller")?,
        callee: r.get("callee")?,
        depth: r.get("depth")?,
        chain,
        caller_taint: r.get("caller_taint")?,
        created_at: r.get("created_at")?,
    })
}

pub(super) fn agent_from_row(r: &Row<'_>) -> rusqlite::Result<AgentRow> {
    let proof: String = r.get("proof")?;
    Ok(AgentRow {
        id: r.get("id")?,
        parent: r.get("parent")?,
        depth: r.get("depth")?,
        can_delegate: r.get("can_delegate")?,
        ceiling: r.get("ceiling")?,
        taint: r.get("taint")?,
        grant: r.get("grant_text")?,
        grant_digest: r.get("grant_digest")?,
        credential_hash: r.get("credential_hash")?,
        task: r.get("task")?,
        reason: r.get("reason")?,
        created_by: r.get("created_by")?,
        created_at: r.get("created_at")?,
        expires_at: r.get("expires_at")?,
        revoked_at: r.get("revoked_at")?,
        revoked_reason: r.get("revoked_reason")?,
        bundle_version: r.get("bundle_version")?,
        proof: serde_json::from_str(&proof).unwrap_or(serde_json::Value::Null),
    })
}
