//! The delegation service: who is calling, the one way every change is written, and the
//! read-only views (audit, drift, live count). The operations themselves live beside it:
//! `spawn` (creating agents), `lifecycle` (revoke, complete, expire, taint), `bundle_agents`
//! (agents the bundle declares, re-proof on reload) and `permission` (asking for more).
//! Synchronous and blocking (proofs and SQLite): the HTTP layer calls these under
//! `spawn_blocking`.
//!
//! INVARIANT (linearizable writes): every change goes through [`Delegation::commit`]: under the
//! one writer lock, it re-checks what it relies on (the acting identity and every ancestor are
//! live, a request is still in the state it was read in, a grant is still the one proved
//! against) inside the same SQLite transaction that writes the change, builds the snapshot that
//! will serve it before committing, and installs that snapshot before the lock is released.

use std::collections::HashMap;
use std::path::Path;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde::Serialize;
use serde_json::Value;

use super::audit::AuditRecord;
use super::credential;
use super::store::{NotLive, StateError, Store, Tx};
use crate::agents::{LiveAgent, Registry};
use crate::error::ErrorCode;
use crate::snapshot::{Live, Snapshot, WriteGuard};

/// The file name of the state database inside `--state DIR`.
pub const STATE_FILE: &str = "deputy.sqlite3";
/// Longest lifetime deputy grants an agent, whatever is asked.
pub const MAX_TTL_SECONDS: i64 = 30 * 24 * 3600;
pub use crate::bundle::DELEGATE_ACTION;

/// Bounds on what callers can make deputy hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest grant text accepted (bytes), for delegations and permission requests.
    pub max_grant_bytes: usize,
    /// Most live children one agent (or the admin, for roots) may have at once.
    pub max_children: usize,
    /// Most pending permission requests one agent may have open.
    pub max_pending_requests: usize,
    /// Largest the state database may grow, in MiB; past it, changes fail (503) and decisions go on.
    pub max_state_mib: u64,
    /// The SMT second opinion (SymCC + cvc5) that settles inconclusive delegation and
    /// permission proofs, bounded by its time limits. `None`: deputy proves alone.
    pub solver: Option<crate::prover::SolverConfig>,
    /// Deepest an invocation chain may go: a session at this depth cannot invoke (3; a bundle
    /// lowers it in Cedar with `context.depth` on `invoke_agent`).
    pub max_invocation_depth: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_grant_bytes: 64 * 1024,
            max_children: 256,
            max_pending_requests: 32,
            max_state_mib: 1024,
            solver: None,
            max_invocation_depth: 3,
        }
    }
}

/// Who is calling, proven by the credential presented.
#[derive(Clone)]
pub enum Caller {
    Admin,
    Agent(Arc<LiveAgent>),
}

impl Caller {
    pub fn name(&self) -> String {
        match self {
            Caller::Admin => super::ADMIN_APPROVER.to_owned(),
            Caller::Agent(a) => format!("Agent::\"{}\"", a.row.id),
        }
    }

    /// The calling agent, or `None` for the admin.
    pub fn agent(&self) -> Option<&Arc<LiveAgent>> {
        match self {
            Caller::Admin => None,
            Caller::Agent(a) => Some(a),
        }
    }

    /// The calling agent's id, or `None` for the admin.
    pub fn agent_id(&self) -> Option<&str> {
        self.agent().map(|a| a.row.id.as_str())
    }
}

/// Refuses what a session may not do: it acts for its callee and nothing more.
pub(super) fn not_for_sessions(caller: &Caller, what: &str) -> Result<(), DelegationError> {
    match caller.agent().and_then(|a| a.session.as_ref()) {
        None => Ok(()),
        Some(s) => Err(DelegationError::new(
            ErrorCode::SessionRestricted,
            format!("a session cannot {what}: it acts for `{}` on one task, with `{}`'s authority and no more", s.callee, s.callee),
        )
        .help("ask the agent that invoked you, or complete the session and let it act")),
    }
}

/// A delegation error: a stable code (its HTTP status is the HTTP layer's choice), a message,
/// maybe a hint and details (a counterexample, the policies that denied).
#[derive(Debug, Clone, Serialize)]
pub struct DelegationError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
    #[serde(flatten)]
    pub details: Box<serde_json::Map<String, Value>>,
}

impl DelegationError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            help: None,
            details: Box::default(),
        }
    }

    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn detail(mut self, key: &str, value: Value) -> Self {
        self.details.insert(key.to_owned(), value);
        self
    }

    pub(super) fn state(e: StateError) -> Self {
        tracing::error!(error = %e, "delegation state failed; nothing was applied");
        Self::new(
            ErrorCode::StateUnavailable,
            "the delegation state store failed; nothing was changed",
        )
    }

    pub(super) fn internal(message: impl std::fmt::Display) -> Self {
        tracing::error!(error = %message, "internal delegation error; nothing was applied");
        Self::new(ErrorCode::Internal, "internal error; nothing was changed")
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message).help("send `Authorization: Bearer <credential>`")
    }

    /// The acting agent, or one of its ancestors, is no longer live (checked at commit).
    pub(super) fn not_live(id: &str, why: NotLive, acting: &str) -> Self {
        let what = match why {
            NotLive::Missing => "is unknown",
            NotLive::Revoked => "was revoked",
            NotLive::Expired => "has expired",
        };
        if id == acting {
            Self::unauthenticated(format!("agent `{id}` {what}; nothing was changed"))
        } else {
            Self::unauthenticated(format!("`{acting}`'s ancestor `{id}` {what}; nothing was changed"))
        }
    }
}

impl From<StateError> for DelegationError {
    fn from(e: StateError) -> Self {
        DelegationError::state(e)
    }
}

/// A write found that what it was planned against changed before it could commit (another
/// write landed, or a bundle loaded): it is planned again against the new state.
pub(super) enum Attempt<T> {
    Done(T),
    Stale,
}

/// How many times a write is planned again when the state moves under it.
pub(super) const ATTEMPTS: usize = 4;

impl Delegation {
    /// Runs `attempt` (plan against a snapshot, carry out under the writer) until it is done,
    /// on a fresh snapshot and a fresh copy of the calling agent each time it finds what it
    /// planned against changed; after [`ATTEMPTS`] it gives up with `409 state_changed`.
    pub(super) fn retrying<T>(
        &self,
        snap: &Arc<Snapshot>,
        caller: &Caller,
        gave_up: &str,
        mut attempt: impl FnMut(&Arc<Snapshot>, &Caller) -> Result<Attempt<T>, DelegationError>,
    ) -> Result<T, DelegationError> {
        let mut snap = Arc::clone(snap);
        let mut caller = caller.clone();
        for _ in 0..ATTEMPTS {
            match attempt(&snap, &caller)? {
                Attempt::Done(done) => return Ok(done),
                Attempt::Stale => {
                    snap = self
                        .live
                        .current()
                        .ok_or_else(|| DelegationError::internal("no snapshot"))?;
                    if let Caller::Agent(a) = &caller {
                        caller = Caller::Agent(self.latest(a));
                    }
                }
            }
        }
        Err(DelegationError::new(ErrorCode::StateChanged, format!("{gave_up}; nothing was changed"))
            .help("send the request again"))
    }
}

pub struct Delegation {
    pub(super) store: Store,
    pub(super) live: Arc<Live>,
    admin_token: Option<String>,
    pub(super) metrics: Option<Arc<crate::telemetry::Metrics>>,
    /// Woken whenever a permission request changes, for long polls.
    pub(super) requests_changed: tokio::sync::Notify,
    /// Live grants that no longer prove within their parent's under the serving bundle.
    pub(super) drift: std::sync::Mutex<super::bundle_agents::DriftReport>,
    /// Credential hashes of agents the bundle declares (`--agent-credential-file ID=FILE`).
    bundle_tokens: HashMap<String, String>,
    pub(super) limits: Limits,
    /// Writes waiting to join a group commit, and how groups ended (see [`Delegation::commit`]).
    groups: Groups,
}

/// Group commit: writes queued behind the writer lock join the open group transaction; the last
/// in line commits it for all (one sync), and each write is answered only once its group has
/// committed.
#[derive(Default)]
struct Groups {
    /// Writes waiting for the writer lock.
    queued: AtomicUsize,
    ended: Mutex<Ended>,
    changed: Condvar,
}

/// Groups end in order: every group up to `upto` has ended; those in `failed` rolled back.
///
/// INVARIANT: a rolled-back group is remembered as long as a writer of it has not read its
/// outcome (each registers, under the writer lock, before its group can end), and no longer:
/// `failed` holds only groups in `waiting`, so it stays as small as the writers waiting.
#[derive(Default)]
struct Ended {
    upto: u64,
    failed: BTreeSet<u64>,
    /// Writers that will read a group's outcome, by group.
    waiting: BTreeMap<u64, usize>,
}

impl Groups {
    fn end(&self, group: u64, committed: bool) {
        if let Ok(mut e) = self.ended.lock() {
            e.upto = e.upto.max(group);
            if committed {
                e.failed.remove(&group);
            } else if e.waiting.contains_key(&group) {
                e.failed.insert(group);
            }
        }
        self.changed.notify_all();
    }

    /// Registers a writer that will wait for `group`'s outcome. Called holding the writer
    /// lock, so before the group can end.
    fn will_wait(&self, group: u64) -> Result<(), DelegationError> {
        let mut e = self.ended.lock().map_err(|_| DelegationError::internal("poisoned"))?;
        *e.waiting.entry(group).or_default() += 1;
        Ok(())
    }

    /// A writer of `group` read its outcome.
    fn done_waiting(&self, group: u64) {
        if let Ok(mut e) = self.ended.lock() {
            let left = e.waiting.get_mut(&group).map(|n| {
                *n -= 1;
                *n
            });
            if left == Some(0) {
                e.waiting.remove(&group);
                e.failed.remove(&group);
            }
        }
    }
}

impl Delegation {
    /// Opens the state in `dir` and loads every stored agent into the live registry.
    pub fn open(
        dir: &Path,
        live: Arc<Live>,
        admin_token: Option<String>,
        agent_tokens: &HashMap<String, String>,
        limits: Limits,
    ) -> Result<Delegation, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create state directory `{}`: {e}", dir.display()))?;
        let store = Store::open(&dir.join(STATE_FILE)).map_err(|e| e.to_string())?;
        store.limit_size(limits.max_state_mib).map_err(|e| e.to_string())?;
        let rows = store.agents().map_err(|e| e.to_string())?;
        let sessions = store.sessions().map_err(|e| e.to_string())?;
        let registry = Registry::from_rows_with_sessions(rows, sessions).map_err(|e| e.to_string())?;
        live.write()?.publish(registry)?;
        Ok(Delegation {
            store,
            live,
            admin_token,
            metrics: None,
            requests_changed: tokio::sync::Notify::new(),
            drift: std::sync::Mutex::new(Default::default()),
            groups: Groups::default(),
            bundle_tokens: agent_tokens
                .iter()
                .map(|(id, t)| (id.clone(), credential::hash(t)))
                .collect(),
            limits,
        })
    }

    /// Counts proofs and revocations in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::telemetry::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Identifies the caller from a bearer credential. Never from a name the caller states.
    pub fn authenticate(&self, snap: &Snapshot, bearer: Option<&str>, now: i64) -> Result<Caller, DelegationError> {
        let token = bearer.ok_or_else(|| DelegationError::unauthenticated("no credential was presented"))?;
        if let Some(admin) = &self.admin_token {
            if credential::verify_admin(token, admin) {
                return Ok(Caller::Admin);
            }
        }
        let bad = || DelegationError::unauthenticated("the credential is not valid");
        // An agent the bundle declares presents the credential it was given from a Secret;
        // anyone else a `dpt.<id>.<secret>` credential deputy issued.
        let bundle_agent = self
            .bundle_tokens
            .iter()
            .find(|(_, hash)| credential::verify(token, hash))
            .map(|(id, _)| id.as_str());
        let agent = match bundle_agent {
            Some(id) => snap.agents.get(id).filter(|a| a.is_bundle_agent()).ok_or_else(bad)?,
            None => {
                let id = credential::claimed_agent(token).ok_or_else(bad)?;
                let agent = snap.agents.get(id).ok_or_else(bad)?;
                if agent.is_bundle_agent() || !credential::verify(token, agent.credential_hash()) {
                    return Err(bad());
                }
                agent
            }
        };
        if agent.is_revoked() {
            return Err(DelegationError::unauthenticated("this agent was revoked"));
        }
        if agent.is_expired(now) {
            return Err(DelegationError::unauthenticated("this agent's lifetime ended"));
        }
        if agent.session.is_some() && crate::authorize::session_standing(snap, agent, now).is_err() {
            return Err(DelegationError::unauthenticated(
                "this session ended: its caller or its callee was revoked or expired",
            ));
        }
        Ok(Caller::Agent(Arc::clone(agent)))
    }

    /// Runs one change: under the writer lock, `f` re-checks and writes (in its own savepoint
    /// of the group transaction) and says what to serve next (`None`: what is served does not
    /// change). The next snapshot is built before the commit (a change that cannot be served is
    /// rolled back) and staged, so the writes after it check against it.
    ///
    /// Group commit: when other writes are waiting for the writer lock, this one leaves the
    /// group open for them and waits; the last in line commits the group (one sync for all),
    /// serves what it staged, and wakes the others. Every write is answered only after its group
    /// committed and what it changed is served: acknowledged means durable and visible.
    pub(super) fn commit<T>(
        &self,
        f: impl FnOnce(&WriteGuard<'_>, &Tx<'_>) -> Result<(T, Option<Registry>), DelegationError>,
    ) -> Result<T, DelegationError> {
        let _writing = self.metrics.as_ref().map(|m| m.state_writing());
        self.groups.queued.fetch_add(1, Ordering::SeqCst);
        let w = self.live.write();
        self.groups.queued.fetch_sub(1, Ordering::SeqCst);
        let mut w = w.map_err(DelegationError::internal)?;
        let (ran, group) = self.store.write_in_group(|tx| f(&w, tx));
        let out = match ran {
            Ok((out, next)) => {
                if let Some(registry) = next {
                    w.stage(registry);
                }
                Ok(out)
            }
            Err(e) => {
                if self.store.open_group() != Some(group) {
                    // The group rolled back with this write: so did the writes staged before it.
                    w.discard_staged();
                    self.groups.end(group, false);
                }
                Err(e)
            }
        };
        // (Should registering fail, this write commits the group itself instead of waiting.)
        if out.is_ok() && self.groups.queued.load(Ordering::SeqCst) > 0 && self.groups.will_wait(group).is_ok() {
            drop(w);
            let ended = self.wait_for(group);
            self.groups.done_waiting(group);
            return ended.and(out);
        }
        let flushed = self.flush(&mut w);
        drop(w);
        let out = out?;
        flushed.map(|()| out)
    }

    /// Takes the writer lock with no group left open: for writes outside [`Delegation::commit`]
    /// (a bundle install), which must not build on writes that are not yet durable.
    pub(super) fn writer(&self) -> Result<WriteGuard<'_>, DelegationError> {
        let mut w = self.live.write().map_err(DelegationError::internal)?;
        self.flush(&mut w)?;
        Ok(w)
    }

    /// Commits the open group, if any: builds what it will serve first (a group whose agents
    /// cannot be served rolls back), commits, serves it — or forgets it when it rolled back;
    /// then wakes its writers.
    fn flush(&self, w: &mut WriteGuard<'_>) -> Result<(), DelegationError> {
        let Some(group) = self.store.open_group() else {
            return Ok(());
        };
        let prepared = match w.prepare_staged() {
            Ok(p) => p,
            Err(e) => {
                self.store.rollback_group();
                w.discard_staged();
                self.groups.end(group, false);
                return Err(DelegationError::internal(e));
            }
        };
        match self.store.commit_group() {
            Some((_, Ok(()))) => {
                w.publish_staged(prepared);
                self.groups.end(group, true);
                Ok(())
            }
            Some((_, Err(e))) => {
                w.discard_staged();
                self.groups.end(group, false);
                Err(DelegationError::state(e))
            }
            None => {
                w.discard_staged();
                self.groups.end(group, false);
                Err(DelegationError::internal("the group transaction ended unseen"))
            }
        }
    }

    /// Waits until `group` has ended; an error when it rolled back. Should the writes queued
    /// behind it never end it (they failed before joining), this ends it itself: any holder of
    /// the writer lock may commit the open group.
    fn wait_for(&self, group: u64) -> Result<(), DelegationError> {
        loop {
            {
                let ended = self.groups.ended.lock().map_err(|_| DelegationError::internal("poisoned"))?;
                let (ended, _) = self
                    .groups
                    .changed
                    .wait_timeout_while(ended, std::time::Duration::from_millis(20), |e| e.upto < group)
                    .map_err(|_| DelegationError::internal("poisoned"))?;
                if ended.upto >= group {
                    return if ended.failed.contains(&group) {
                        Err(DelegationError::new(
                            ErrorCode::StateUnavailable,
                            "the delegation state store failed; nothing was changed",
                        ))
                    } else {
                        Ok(())
                    };
                }
            }
            let mut w = self.live.write().map_err(DelegationError::internal)?;
            // The outcome is read above on the next turn, whoever ended the group.
            let _ = self.flush(&mut w);
        }
    }

    /// Checks, inside a write's transaction, that `requester` may file one more pending request
    /// (a permission request or a delegation waiting on an approver): both count.
    pub(super) fn check_pending_limit(&self, tx: &Tx<'_>, requester: &str) -> Result<(), DelegationError> {
        let open = tx.pending_of(requester)?.len();
        if open >= self.limits.max_pending_requests {
            return Err(DelegationError::new(
                ErrorCode::TooManyRequests,
                format!(
                    "{open} requests are already pending; the limit is {}",
                    self.limits.max_pending_requests
                ),
            )
            .help("withdraw requests you no longer need, or wait for answers"));
        }
        Ok(())
    }

    /// Checks, inside a write's transaction, that the acting agent (if any) and every ancestor
    /// are still live.
    pub(super) fn check_live(tx: &Tx<'_>, agent: Option<&LiveAgent>, now: i64) -> Result<(), DelegationError> {
        let Some(agent) = agent else { return Ok(()) };
        match tx.not_live(agent.chain.iter(), now)? {
            None => Ok(()),
            Some((id, why)) => Err(DelegationError::not_live(&id, why, &agent.row.id)),
        }
    }

    /// The names of the bundle agents the sidecar holds credentials for.
    pub(super) fn configured_names(&self) -> impl Iterator<Item = &String> {
        self.bundle_tokens.keys()
    }

    /// The latest version of `agent` (it may have been re-granted since a snapshot was taken).
    pub(super) fn latest(&self, agent: &Arc<LiveAgent>) -> Arc<LiveAgent> {
        self.live
            .current()
            .and_then(|s| s.agents.get(&agent.row.id).cloned())
            .unwrap_or_else(|| Arc::clone(agent))
    }

    /// The drift found at the last re-proof.
    pub fn drift(&self) -> super::bundle_agents::DriftReport {
        self.drift.lock().map(|d| d.clone()).unwrap_or_default()
    }

    /// How many agents are live now.
    pub fn live_agents(&self, now: i64) -> usize {
        self.live
            .current()
            .map_or(0, |s| s.agents.iter().filter(|a| a.is_live(now)).count())
    }

    /// The audit trail (admin only).
    pub fn audit(
        &self,
        caller: &Caller,
        agent: Option<&str>,
        since: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditRecord>, DelegationError> {
        if !matches!(caller, Caller::Admin) {
            return Err(DelegationError::new(
                ErrorCode::AdminOnly,
                "the audit trail needs the admin credential",
            ));
        }
        self.store
            .audit_records(agent, since, limit)
            .map_err(DelegationError::state)
    }

    /// Checks the audit hash chain; `Some(problem)` names the first broken record.
    #[cfg(test)]
    pub fn verify_audit(&self) -> Result<Option<String>, DelegationError> {
        self.store.verify_audit().map_err(DelegationError::state)
    }

    pub(super) fn check_grant_size(&self, grant: &str) -> Result<(), DelegationError> {
        if grant.len() > self.limits.max_grant_bytes {
            return Err(DelegationError::new(
                ErrorCode::GrantTooLarge,
                format!(
                    "`grant` is {} bytes; the limit is {}",
                    grant.len(),
                    self.limits.max_grant_bytes
                ),
            ));
        }
        Ok(())
    }
}

/// A grant that does not parse, is not about its holder, or fails validation: `400` with the
/// prover's code (`grant_invalid`, `grant_foreign_principal`, …) kept where it is a user's fault.
pub(super) fn grant_error(e: &crate::prover::GrantError) -> DelegationError {
    use crate::prover::GrantError;
    match e {
        GrantError::Internal(_) => DelegationError::internal(e),
        GrantError::ForeignPrincipal(_) => {
            let mut err = DelegationError::new(ErrorCode::GrantForeignPrincipal, format!("`grant`: {e}"));
            if let Some(help) = e.help() {
                err = err.help(help);
            }
            err
        }
        _ => DelegationError::new(ErrorCode::GrantInvalid, format!("`grant`: {e}")),
    }
}

/// Parses a grant an agent or the admin sent: Cedar syntax, about its holder only, strictly
/// valid against the bundle's schema.
pub(super) fn accept_grant(src: &str, bundle: &crate::bundle::Bundle) -> Result<crate::prover::Grant, DelegationError> {
    let grant = crate::prover::Grant::parse(src).map_err(|e| grant_error(&e))?;
    grant.check_holder_only().map_err(|e| grant_error(&e))?;
    grant.check_annotations().map_err(|e| grant_error(&e))?;
    crate::prover::validate_grant(&grant, &bundle.schema).map_err(|e| grant_error(&e))?;
    Ok(grant)
}
