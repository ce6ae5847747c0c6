//! The state database's schema, version by version, and the migrations that apply them.

/// The first schema (what every deputy before versioned migrations wrote, at user_version 0;
/// `IF NOT EXISTS` makes it a no-op on such a state directory).
const SCHEMA_V1: &str = r"
CREATE TABLE IF NOT EXISTS agents (
  id TEXT PRIMARY KEY,
  parent TEXT REFERENCES agents(id),
  depth INTEGER NOT NULL,
  can_delegate INTEGER NOT NULL,
  ceiling INTEGER NOT NULL,
  taint INTEGER NOT NULL,
  grant_text TEXT NOT NULL,
  grant_digest TEXT NOT NULL,
  grant_version INTEGER NOT NULL DEFAULT 1,
  credential_hash TEXT NOT NULL,
  task TEXT NOT NULL,
  reason TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  revoked_at INTEGER,
  revoked_reason TEXT,
  bundle_version TEXT NOT NULL,
  proof TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS agents_parent ON agents(parent);
CREATE TABLE IF NOT EXISTS audit (
  seq INTEGER PRIMARY KEY,
  at INTEGER NOT NULL,
  event TEXT NOT NULL,
  actor TEXT NOT NULL,
  agent TEXT,
  details TEXT NOT NULL,
  prev_hash TEXT NOT NULL,
  hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_agent ON audit(agent);
CREATE TABLE IF NOT EXISTS permission_requests (
  id TEXT PRIMARY KEY,
  requester TEXT NOT NULL REFERENCES agents(id),
  approver TEXT NOT NULL,
  grant_text TEXT NOT NULL,
  reason TEXT NOT NULL,
  status TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  history TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_approver ON permission_requests(approver, status);
";

/// Pending requests are counted per requester on every spawn and request.
const SCHEMA_V2: &str = "CREATE INDEX IF NOT EXISTS requests_requester ON permission_requests(requester, status);";

/// Sessions: the agents deputy mints when one agent invokes another (`POST /v1/invocations`).
/// Each is also a row of `agents` (credential, lifetime, revocation, taint); this says whom it
/// serves and on which invocation chain. `callee` may be an agent only the bundle declares (no
/// `agents` row), so it carries no foreign key.
const SCHEMA_V3: &str = r"
CREATE TABLE IF NOT EXISTS sessions (
  id TEXT PRIMARY KEY REFERENCES agents(id),
  caller TEXT NOT NULL REFERENCES agents(id),
  callee TEXT NOT NULL,
  depth INTEGER NOT NULL,
  chain TEXT NOT NULL,
  caller_taint INTEGER NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_caller ON sessions(caller);
CREATE INDEX IF NOT EXISTS sessions_callee ON sessions(callee);
";

/// The schema's versions, applied in order (SQLite's `user_version` says how far a state
/// directory is). Append, never edit: a state directory written by any earlier deputy upgrades,
/// and one written by a later deputy is refused rather than misread.
pub(super) fn migrations() -> rusqlite_migration::Migrations<'static> {
    rusqlite_migration::Migrations::new(vec![
        rusqlite_migration::M::up(SCHEMA_V1),
        rusqlite_migration::M::up(SCHEMA_V2),
        rusqlite_migration::M::up(SCHEMA_V3),
    ])
}
