//! Durable delegation state in SQLite: agents (with hashed credentials and grants) and the
//! hash-chained audit trail. Every change and its audit record commit in one transaction, with
//! WAL and `synchronous=FULL`, so an acknowledged change survives `kill -9` and a crash never
//! leaves half of one. Blocking: call from `spawn_blocking`.

use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::audit::{self, AuditEvent, AuditRecord};

mod rows;
mod schema;

use rows::{agent_from_row, insert_agent, request_from_row, save_request, session_from_row, AGENT_COLUMNS, REQUEST_COLUMNS, SESSION_COLUMNS};
use schema::migrations;
pub use crate::agents::{AgentRow, SessionRow};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database `{path}`: {source}")]
    Open { path: String, source: rusqlite::Error },
    #[error("state database `{path}` cannot be brought to this deputy's schema: {message}")]
    Migrate { path: String, message: String },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("state database is poisoned by an earlier panic")]
    Poisoned,
}

pub struct Store {
    inner: Mutex<Inner>,
    /// Signalled when a group transaction ends.
    idle: Condvar,
}

struct Inner {
    conn: Connection,
    /// The group transaction open on `conn` (see [`Store::write_in_group`]), by number.
    group: Option<u64>,
    next_group: u64,
}

/// Where a permission request (or a pending delegation) stands. Only `pending` changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    Withdrawn,
    Expired,
    /// Its requester is gone (revoked, completed, expired).
    Closed,
    /// An approved delegation whose child was created (an approval is used once).
    Used,
}

impl std::fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RequestStatus {
    pub const ALL: &'static [RequestStatus] = &[
        RequestStatus::Pending,
        RequestStatus::Approved,
        RequestStatus::Denied,
        RequestStatus::Withdrawn,
        RequestStatus::Expired,
        RequestStatus::Closed,
        RequestStatus::Used,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Withdrawn => "withdrawn",
            RequestStatus::Expired => "expired",
            RequestStatus::Closed => "closed",
            RequestStatus::Used => "used",
        }
    }

    pub fn parse(s: &str) -> Option<RequestStatus> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }
}

impl rusqlite::ToSql for RequestStatus {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for RequestStatus {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        RequestStatus::parse(s)
            .ok_or_else(|| rusqlite::types::FromSqlError::Other(format!("unknown request status `{s}`").into()))
    }
}

/// A request for more permission, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct PermissionRow {
    pub id: String,
    pub requester: String,
    /// The agent id who decides now, or `admin` for a human with the admin credential.
    pub approver: String,
    pub grant: String,
    pub reason: String,
    pub status: RequestStatus,
    pub created_at: i64,
    pub expires_at: i64,
    pub updated_at: i64,
    /// Every step so far: proofs, escalations, the decision.
    pub history: Vec<serde_json::Value>,
}

impl Store {
    /// Opens (creating if needed) the state database at `path`.
    pub fn open(path: &Path) -> Result<Store, StateError> {
        let open_err = |source| StateError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        migrations().to_latest(&mut conn).map_err(|e| StateError::Migrate {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let integrity: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(open_err)?;
        if integrity != "ok" {
            return Err(open_err(rusqlite::Error::InvalidParameterName(format!(
                "integrity check failed: {integrity}"
            ))));
        }
        Ok(Store {
            inner: Mutex::new(Inner {
                conn,
                group: None,
                next_group: 1,
            }),
            idle: Condvar::new(),
        })
    }

    /// Caps the database size; past it, writes fail with "database or disk is full" and the
    /// transaction is rolled back whole.
    pub fn limit_size(&self, mib: u64) -> Result<(), StateError> {
        self.with(|c| {
            let page_size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = i64::try_from(mib.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX) / page_size.max(1);
            let _: i64 = c.query_row(&format!("PRAGMA max_page_count = {}", pages.max(1)), [], |r| r.get(0))?;
            Ok(())
        })
    }

    /// The connection once no group transaction is open: nothing outside a group reads what a
    /// group has written before it commits (it may yet roll back).
    fn idle(&self) -> Result<MutexGuard<'_, Inner>, StateError> {
        let mut inner = self.inner.lock().map_err(|_| StateError::Poisoned)?;
        while inner.group.is_some() {
            inner = self.idle.wait(inner).map_err(|_| StateError::Poisoned)?;
        }
        Ok(inner)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, StateError>) -> Result<T, StateError> {
        let mut inner = self.idle()?;
        f(&mut inner.conn)
    }

    /// Runs `f` in one transaction, committed only when it returns `Ok`: the checks `f` makes
    /// against the stored state and the changes it writes are one atomic step. Waits for an
    /// open group transaction to end first.
    pub fn write<T, E: From<StateError>>(&self, f: impl FnOnce(&Tx<'_>) -> Result<T, E>) -> Result<T, E> {
        let mut inner = self.idle()?;
        let tx = inner.conn.transaction().map_err(StateError::from)?;
        let out = f(&Tx { conn: &tx })?;
        tx.commit().map_err(StateError::from)?;
        Ok(out)
    }

    /// Runs `f` inside the group transaction (opening one if none is open), in a savepoint of
    /// its own: when `f` fails, only its writes are undone. Nothing is durable until
    /// [`Store::commit_group`]; the number of the group is returned either way.
    ///
    /// INVARIANT: the caller holds the one writer lock, so groups and their writes are
    /// serialized, and a group is committed (or rolled back) by whoever holds it next.
    pub fn write_in_group<T, E: From<StateError>>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, E>,
    ) -> (Result<T, E>, u64) {
        let mut inner = match self.inner.lock() {
            Ok(inner) => inner,
            Err(_) => return (Err(StateError::Poisoned.into()), 0),
        };
        let group = match inner.group {
            Some(g) => g,
            None => {
                // The number is used up even when the group fails to open: a number a caller
                // was given for a failed group never names a later one.
                let g = inner.next_group;
                inner.next_group += 1;
                if let Err(e) = inner.conn.execute_batch("BEGIN IMMEDIATE") {
                    return (Err(StateError::from(e).into()), g);
                }
                inner.group = Some(g);
                g
            }
        };
        if let Err(e) = inner.conn.execute_batch("SAVEPOINT one_write") {
            return (Err(StateError::from(e).into()), group);
        }
        let out = f(&Tx { conn: &inner.conn });
        let ended = if out.is_ok() {
            inner.conn.execute_batch("RELEASE one_write")
        } else {
            inner.conn.execute_batch("ROLLBACK TO one_write; RELEASE one_write")
        };
        match ended {
            Ok(()) => (out, group),
            // The savepoint could not be ended: the group cannot be trusted; it rolls back whole.
            Err(e) => {
                let _ = inner.conn.execute_batch("ROLLBACK");
                inner.group = None;
                self.idle.notify_all();
                (Err(StateError::from(e).into()), group)
            }
        }
    }

    /// Rolls the open group transaction back, if any.
    pub fn rollback_group(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.group.take().is_some() {
                let _ = inner.conn.execute_batch("ROLLBACK");
            }
        }
        self.idle.notify_all();
    }

    /// The group transaction open now, if any.
    pub fn open_group(&self) -> Option<u64> {
        self.inner.lock().ok()?.group
    }

    /// Commits the open group transaction, if any, making every write in it durable at once
    /// (one sync); on failure it is rolled back whole. Returns the group's number and whether
    /// it committed; `None` when no group was open.
    pub fn commit_group(&self) -> Option<(u64, Result<(), StateError>)> {
        let mut inner = self.inner.lock().ok()?;
        let group = inner.group.take()?;
        let committed = inner.conn.execute_batch("COMMIT").map_err(StateError::from);
        if committed.is_err() {
            let _ = inner.conn.execute_batch("ROLLBACK");
        }
        self.idle.notify_all();
        Some((group, committed))
    }

    /// Every agent ever created, oldest first (parents before children).
    pub fn agents(&self) -> Result<Vec<AgentRow>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY rowid"))?;
            let rows = stmt.query_map([], agent_from_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Every session ever started, oldest first.
    pub fn sessions(&self) -> Result<Vec<SessionRow>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!("SELECT {SESSION_COLUMNS} FROM sessions ORDER BY rowid"))?;
            let rows = stmt.query_map([], session_from_row)?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    pub fn request(&self, id: &str) -> Result<Option<PermissionRow>, StateError> {
        self.with(|c| {
            Ok(c.query_row(
                &format!("SELECT {REQUEST_COLUMNS} FROM permission_requests WHERE id = ?1"),
                params![id],
                request_from_row,
            )
            .optional()?)
        })
    }

    /// Requests, oldest first, filtered by approver, requester and status.
    pub fn requests(
        &self,
        approver: Option<&str>,
        requester: Option<&str>,
        status: Option<RequestStatus>,
    ) -> Result<Vec<PermissionRow>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {REQUEST_COLUMNS} FROM permission_requests WHERE (?1 IS NULL OR approver = ?1) \
                 AND (?2 IS NULL OR requester = ?2) AND (?3 IS NULL OR status = ?3) ORDER BY created_at, id"
            ))?;
            let rows = stmt
                .query_map(params![approver, requester, status], request_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Appends one audit record on its own.
    pub fn audit(&self, now: i64, event: AuditEvent) -> Result<AuditRecord, StateError> {
        self.write(|tx| tx.audit(now, event))
    }

    /// Audit records, oldest first, optionally for one agent and from a time on.
    pub fn audit_records(
        &self,
        agent: Option<&str>,
        since: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, StateError> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {} FROM audit WHERE (?1 IS NULL OR agent = ?1) AND (?2 IS NULL OR at >= ?2) \
                 ORDER BY seq LIMIT ?3",
                audit::COLUMNS
            ))?;
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = stmt
                .query_map(params![agent, since, limit], audit::from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
    }

    /// Walks the whole audit chain; returns the first broken link, if any.
    pub fn verify_audit(&self) -> Result<Option<String>, StateError> {
        self.with(|c| audit::verify(c))
    }
}

/// Why a stored agent cannot act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotLive {
    Missing,
    Revoked,
    Expired,
}

/// One open transaction (see [`Store::write`]).
pub struct Tx<'c> {
    conn: &'c Connection,
}

impl Tx<'_> {
    /// The first of `ids` that is not live at `now` (missing, revoked or expired), if any.
    pub fn not_live<'i>(
        &self,
        ids: impl IntoIterator<Item = &'i String>,
        now: i64,
    ) -> Result<Option<(String, NotLive)>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT revoked_at, expires_at FROM agents WHERE id = ?1")?;
        for id in ids {
            let row: Option<(Option<i64>, i64)> = stmt
                .query_row(params![id], |r| Ok((r.get("revoked_at")?, r.get("expires_at")?)))
                .optional()?;
            let why = match row {
                None => Some(NotLive::Missing),
                Some((Some(_), _)) => Some(NotLive::Revoked),
                Some((None, expires)) if now >= expires => Some(NotLive::Expired),
                Some(_) => None,
            };
            if let Some(why) = why {
                return Ok(Some((id.clone(), why)));
            }
        }
        Ok(None)
    }

    /// Whether any agent, live or not, was ever stored under `id`.
    pub fn agent_exists(&self, id: &str) -> Result<bool, StateError> {
        Ok(self
            .conn
            .query_row("SELECT 1 FROM agents WHERE id = ?1", params![id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    pub fn insert_agent(&self, row: &AgentRow) -> Result<(), StateError> {
        insert_agent(self.conn, row)
    }

    /// Records what a session (already inserted as an agent) serves.
    pub fn insert_session(&self, row: &SessionRow) -> Result<(), StateError> {
        let chain = serde_json::to_string(&row.chain).map_err(|e| {
            StateError::Sql(rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
        })?;
        self.conn.execute(
            &format!("INSERT INTO sessions ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
            params![row.id, row.caller, row.callee, row.depth, chain, row.caller_taint, row.created_at],
        )?;
        Ok(())
    }

    /// The session stored under `id`, if `id` is one.
    pub fn session(&self, id: &str) -> Result<Option<SessionRow>, StateError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1"),
                params![id],
                session_from_row,
            )
            .optional()?)
    }

    /// `root` and every stored descendant not yet revoked, shallowest first. Descendants are
    /// children (by `parent`) and sessions: those `root` invoked and those started of `root`
    /// (a session ends with either side), followed down.
    pub fn unrevoked_subtree(&self, root: &str) -> Result<Vec<String>, StateError> {
        let mut stmt = self.conn.prepare_cached(
            "WITH RECURSIVE sub(id, d) AS (SELECT id, 0 FROM agents WHERE id = ?1 \
             UNION SELECT a.id, sub.d + 1 FROM agents a JOIN sub ON a.parent = sub.id \
             UNION SELECT s.id, sub.d + 1 FROM sessions s JOIN sub ON s.caller = sub.id OR s.callee = sub.id) \
             SELECT sub.id FROM sub JOIN agents USING (id) WHERE agents.revoked_at IS NULL \
             GROUP BY sub.id ORDER BY min(sub.d), sub.id",
        )?;
        let ids = stmt
            .query_map(params![root], |r| r.get::<_, String>("id"))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ids)
    }

    /// Marks `ids` revoked (those not already) and returns the ones this changed.
    pub fn revoke(&self, ids: &[String], now: i64, reason: &str) -> Result<Vec<String>, StateError> {
        let mut changed = Vec::new();
        for id in ids {
            let n = self.conn.execute(
                "UPDATE agents SET revoked_at = ?1, revoked_reason = ?2 WHERE id = ?3 AND revoked_at IS NULL",
                params![now, reason, id],
            )?;
            if n > 0 {
                changed.push(id.clone());
            }
        }
        Ok(changed)
    }

    /// Replaces `id`'s grant if its stored digest is still `expected` (the grant a proof was
    /// made against); false when it changed meanwhile.
    pub fn swap_grant(&self, id: &str, expected: &str, grant: &str, digest: &str) -> Result<bool, StateError> {
        let n = self.conn.execute(
            "UPDATE agents SET grant_text = ?1, grant_digest = ?2, grant_version = grant_version + 1 \
             WHERE id = ?3 AND grant_digest = ?4",
            params![grant, digest, id, expected],
        )?;
        Ok(n > 0)
    }

    /// Gives the unclaimed, live session `id` the credential whose digest is `hash`; false when
    /// it was claimed, ended or expired meanwhile (a compare-and-set: one claim wins).
    pub fn claim_credential(&self, id: &str, hash: &str, now: i64) -> Result<bool, StateError> {
        let n = self.conn.execute(
            "UPDATE agents SET credential_hash = ?1 \
             WHERE id = ?2 AND credential_hash = '' AND revoked_at IS NULL AND expires_at > ?3 \
             AND id IN (SELECT id FROM sessions)",
            params![hash, id, now],
        )?;
        Ok(n > 0)
    }

    /// Records the attributes a bundle agent now has in the bundle.
    pub fn update_attributes(&self, id: &str, can_delegate: bool, ceiling: i64, depth: i64) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE agents SET can_delegate = ?1, ceiling = ?2, depth = ?3 WHERE id = ?4",
            params![can_delegate, ceiling, depth, id],
        )?;
        Ok(())
    }

    pub fn request(&self, id: &str) -> Result<Option<PermissionRow>, StateError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {REQUEST_COLUMNS} FROM permission_requests WHERE id = ?1"),
                params![id],
                request_from_row,
            )
            .optional()?)
    }

    /// Pending requests filed by `requester`.
    pub fn pending_of(&self, requester: &str) -> Result<Vec<PermissionRow>, StateError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {REQUEST_COLUMNS} FROM permission_requests WHERE requester = ?1 AND status = 'pending' ORDER BY created_at, id"
        ))?;
        let rows = stmt
            .query_map(params![requester], request_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Saves a new request, or a changed one whose stored status and approver are still
    /// `expected` (compare-and-set); false when someone else changed it first.
    pub fn save_request(
        &self,
        row: &PermissionRow,
        expected: Option<(RequestStatus, &str)>,
    ) -> Result<bool, StateError> {
        match expected {
            None => {
                save_request(self.conn, row)?;
                Ok(true)
            }
            Some((status, approver)) => {
                let n = self.conn.execute(
                    "UPDATE permission_requests SET approver = ?1, status = ?2, updated_at = ?3, history = ?4 \
                     WHERE id = ?5 AND status = ?6 AND approver = ?7",
                    params![
                        row.approver,
                        row.status,
                        row.updated_at,
                        serde_json::Value::Array(row.history.clone()).to_string(),
                        row.id,
                        status,
                        approver
                    ],
                )?;
                Ok(n > 0)
            }
        }
    }

    /// An agent's stored taint.
    pub fn taint(&self, id: &str) -> Result<Option<i64>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT taint FROM agents WHERE id = ?1", params![id], |r| r.get(0))
            .optional()?)
    }

    /// Raises an agent's stored taint (never lowers it).
    pub fn raise_taint(&self, id: &str, taint: i64) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE agents SET taint = max(taint, ?1) WHERE id = ?2",
            params![taint, id],
        )?;
        Ok(())
    }

    /// Appends one audit record, chained to the last.
    pub fn audit(&self, now: i64, event: AuditEvent) -> Result<AuditRecord, StateError> {
        audit::append(self.conn, now, event)
    }
}
