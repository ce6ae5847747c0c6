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
use super::service::{accept_grant, grant_error, Attempt, Caller, Delegation, DelegationError, ATTEMPTS};
use super::spawn::is_delegation;
use super::store::{PermissionRow, RequestStatus, StateError, Tx};
use crate::agents::LiveAgent;
use crate::prover::{self, Grant, ProveOptions, Verdict};
use crate::snapshot::Snapshot;

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

/// The grants an approval extends: (agent, the digest proved against, the new grant, its digest).
struct Extension {
    updates: Vec<(String, String, String, String)>,
    steps: Vec<Value>,
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
            let open = tx.pending_of(&requester.row.id)?.len();
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
        let mut snap = Arc::clone(snap);
        let mut caller = caller.clone();
        for _ in 0..ATTEMPTS {
            match self.decide_once(&snap, &caller, id, decision, reason, now)? {
                Attempt::Done(view) => {
                    self.requests_changed.notify_waiters();
                    return Ok(view);
                }
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
        Err(DelegationError::new(
            ErrorCode::StateChanged,
            "the request or the grants it extends kept changing; nothing was changed",
        )
        .help("send the decision again"))
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

    fn prove_against(
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
