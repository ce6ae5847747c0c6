//! Delegation endpoints: create, revoke, complete, audit. Proofs and SQLite writes are
//! blocking, so each runs under `spawn_blocking`; the snapshot is loaded once per request.

use crate::error::ErrorCode;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::routes::{json_bytes_response, json_response, read_json};
use super::{ApiError, AppState, DelegationState};
use crate::authorize::{Fields, RequestError};
use crate::clock::now;
use std::time::Duration;

use crate::delegation::{Caller, Delegation, InvokeRequest, PermissionDecision, RequestStatus, SpawnOutcome, SpawnRequest};
use crate::snapshot::Snapshot;

type Body = Full<Bytes>;

/// Most audit records one call returns.
const AUDIT_PAGE: usize = 1000;

pub(super) fn service(state: &AppState) -> Result<Arc<Delegation>, ApiError> {
    match &state.delegation {
        DelegationState::Open(d) => Ok(Arc::clone(d)),
        DelegationState::Unavailable(e) => Err(ApiError::new(
            ErrorCode::StateUnavailable,
            format!("the delegation state cannot be opened: {e}"),
        )),
        DelegationState::Off => Err(ApiError::new(
            ErrorCode::DelegationDisabled,
            "delegation is not enabled on this sidecar (it serves with --authorize-only)",
        )),
    }
}

pub(super) fn bearer(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// Runs blocking delegation work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(crate::telemetry::carry(f))
        .await
        .map_err(ApiError::internal)?
}

/// The caller of a request, authenticated against the snapshot serving, with the service.
pub(super) struct Ctx {
    pub(super) svc: Arc<Delegation>,
    pub(super) snap: Arc<Snapshot>,
    pub(super) caller: Caller,
}

pub(super) fn context(state: &AppState, token: Option<&str>) -> Result<Ctx, ApiError> {
    let svc = service(state)?;
    let snap = state.live.current().ok_or_else(ApiError::no_bundle)?;
    let caller = svc.authenticate(&snap, token, now())?;
    Ok(Ctx { svc, snap, caller })
}

/// Only the admin, the agent itself and its ancestors (and a session's caller) may see an agent.
fn check_visible(caller: &Caller, agent: &crate::delegation::LiveAgent, to: &str) -> Result<(), ApiError> {
    let visible = match caller {
        Caller::Admin => true,
        Caller::Agent(a) => {
            agent.chain.contains(&a.row.id) || agent.session.as_ref().is_some_and(|s| takes_part(a, s))
        }
    };
    if visible {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::NotYourDelegation,
        format!("only the admin, `{}` itself or its ancestors may {to}", agent.row.id),
    ))
}

/// `a` started session `s`, or is (itself, not a session of it) the agent `s` serves.
fn takes_part(a: &crate::delegation::LiveAgent, s: &crate::agents::SessionRow) -> bool {
    s.caller == a.row.id || (a.session.is_none() && s.callee == a.row.id)
}

/// `POST /v1/delegations`
pub async fn create(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let token = bearer(&req);
    let ctx = context(state, token.as_deref())?;
    let body = read_json(req, &state.config).await?;
    let spawn = SpawnRequest::from_json(&body, "")?;
    let span = crate::telemetry::delegation_span();
    let inner = span.clone();
    let outcome = blocking(move || {
        let _entered = inner.enter();
        Ok(ctx.svc.spawn(&ctx.snap, &ctx.caller, spawn, now())?)
    })
    .await;
    let (what, proof, error) = match &outcome {
        Ok(SpawnOutcome::Applied { proof, .. }) => ("applied", Some(proof), None),
        Ok(SpawnOutcome::Pending { proof, .. }) => ("pending", Some(proof), None),
        Err(e) if matches!(e.code, ErrorCode::DelegationForbidden | ErrorCode::GrantExceedsParent) => {
            ("rejected", e.details.get("proof"), Some(e.code))
        }
        Err(e) => ("error", None, Some(e.code)),
    };
    let verdict = proof.and_then(|p| p.get("verdict")).and_then(Value::as_str);
    crate::telemetry::delegation_done(&state.obs, &span, what, verdict, error);
    let outcome = outcome?;
    let status = match outcome {
        SpawnOutcome::Applied { .. } => StatusCode::CREATED,
        SpawnOutcome::Pending { .. } => StatusCode::ACCEPTED,
    };
    Ok(json_response(status, &outcome))
}

/// `POST /v1/invocations`: the calling agent (or session) invokes an existing agent.
pub async fn invoke(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let token = bearer(&req);
    let ctx = context(state, token.as_deref())?;
    let body = read_json(req, &state.config).await?;
    let invoke = invoke_request(&body)?;
    let invoked = blocking(move || Ok(ctx.svc.invoke(&ctx.snap, &ctx.caller, invoke, now())?)).await;
    state.obs.metrics.invoked(match &invoked {
        Ok(_) => "started",
        Err(e) if e.status.is_client_error() => "rejected",
        Err(_) => "error",
    });
    Ok(json_response(StatusCode::CREATED, &invoked?))
}

/// `POST /v1/invocations/{id}/accept`: the callee, with its own credential (or the admin),
/// takes the session's credential, once.
pub async fn accept(state: &AppState, req: Request<Incoming>, id: String) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(&req).as_deref())?;
    let accepted = blocking(move || Ok(ctx.svc.accept(&ctx.snap, &ctx.caller, &id, now())?)).await?;
    state.obs.metrics.invoked("accepted");
    Ok(json_response(StatusCode::OK, &accepted))
}

/// Which agents a path names: `/v1/delegations/{id}` any, `/v1/invocations/{id}` sessions only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Named {
    Any,
    Sessions,
}

impl Named {
    /// Fails with `404` when `id` is not an agent this path names (after authentication).
    fn check(self, snap: &Snapshot, id: &str) -> Result<(), ApiError> {
        match snap.agents.get(id) {
            Some(a) if self == Named::Any || a.session.is_some() => Ok(()),
            _ if self == Named::Sessions => Err(ApiError::new(ErrorCode::DelegationNotFound, format!("no session `{id}`"))),
            _ => Err(ApiError::new(ErrorCode::DelegationNotFound, format!("no delegation `{id}`"))),
        }
    }
}

/// `GET /v1/invocations`: the live sessions the caller started or serves (the admin: all), so
/// a callee's runtime finds the sessions waiting for it.
pub fn list_sessions(state: &AppState, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(req).as_deref())?;
    let now = now();
    let mut visible: Vec<(&crate::delegation::LiveAgent, &crate::agents::SessionRow)> = ctx
        .snap
        .agents
        .iter()
        .filter(|a| a.is_live(now))
        .filter_map(|a| Some((a.as_ref(), a.session.as_deref()?)))
        .filter(|(_, s)| match &ctx.caller {
            Caller::Admin => true,
            Caller::Agent(me) => takes_part(me, s),
        })
        .collect();
    visible.sort_by(|(a, _), (b, _)| (a.row.created_at, &a.row.id).cmp(&(b.row.created_at, &b.row.id)));
    let sessions: Vec<Value> = visible
        .into_iter()
        .map(|(a, s)| {
            json!({
                "session_id": a.row.id, "caller": s.caller, "callee": s.callee, "chain": s.chain,
                "depth": s.depth, "taint": a.taint(), "task": a.row.task, "created_at": a.row.created_at,
                "expires_at": a.row.expires_at, "accepted": !a.credential_hash().is_empty(),
            })
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "sessions": sessions })))
}

fn invoke_request(body: &Value) -> Result<InvokeRequest, RequestError> {
    let f = Fields::of(body, "")?;
    let c = f.require_object("callee")?;
    let ty = c.require_string("type")?;
    if ty != crate::delegation::AGENT_TYPE {
        return Err(RequestError::new(
            ErrorCode::InvalidField,
            format!("`callee.type` is `{ty}`; only an `Agent` is invoked"),
        ));
    }
    Ok(InvokeRequest {
        callee: c.require_string("id")?.to_owned(),
        task: f.require_string("task")?.to_owned(),
        reason: f.string("reason")?.unwrap_or_default().to_owned(),
        ttl_seconds: f
            .i64("ttl_seconds")?
            .ok_or_else(|| RequestError::missing("ttl_seconds"))?,
    })
}

/// `DELETE /v1/delegations/{id}` and `POST /v1/delegations/{id}/complete`
pub async fn revoke(
    state: &AppState,
    req: Request<Incoming>,
    id: String,
    completed: bool,
    named: Named,
) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(&req).as_deref())?;
    named.check(&ctx.snap, &id)?;
    let ids = blocking(move || Ok(ctx.svc.revoke(&ctx.snap, &ctx.caller, &id, completed, now())?)).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "outcome": if completed { "completed" } else { "revoked" }, "revoked": ids }),
    ))
}

/// `GET /v1/delegations/{id}`: the agent's record (its own credential, an ancestor's, or admin).
pub fn show(state: &AppState, req: &Request<Incoming>, id: &str, named: Named) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(req).as_deref())?;
    named.check(&ctx.snap, id)?;
    let agent = ctx
        .snap
        .agents
        .get(id)
        .ok_or_else(|| ApiError::new(ErrorCode::DelegationNotFound, format!("no delegation `{id}`")))?;
    check_visible(&ctx.caller, agent, "read it")?;
    let now = now();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "delegation_id": agent.row.id,
            "agent": {"type": crate::delegation::AGENT_TYPE, "id": agent.row.id},
            "parent": agent.row.parent,
            "chain": agent.chain,
            "depth": agent.row.depth,
            "can_delegate": agent.row.can_delegate,
            "ceiling": agent.row.ceiling,
            "taint": agent.taint(),
            "grant": agent.row.grant,
            "grant_digest": agent.row.grant_digest,
            "task": agent.row.task,
            "expires_at": agent.row.expires_at,
            "status": if agent.is_revoked() { "revoked" } else if agent.is_expired(now) { "expired" } else { "live" },
            "proof": agent.row.proof,
            "bundle_version": agent.row.bundle_version,
            "session": agent.session.as_ref().map(|s| json!({
                "caller": s.caller, "callee": s.callee, "chain": s.chain, "depth": s.depth,
                "caller_taint": s.caller_taint, "accepted": !agent.credential_hash().is_empty(),
            })),
        }),
    ))
}

/// `GET /v1/audit?agent=&since=&limit=` (admin)
pub async fn audit(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(&req).as_deref())?;
    let mut agent = None;
    let mut since = None;
    let mut limit = AUDIT_PAGE;
    for (k, v) in query_pairs(&req) {
        let v = v.as_str();
        match k.as_str() {
            "agent" => agent = Some(v.to_owned()),
            "since" => {
                since = Some(v.parse::<i64>().map_err(|_| {
                    RequestError::new(
                        ErrorCode::InvalidField,
                        format!("query `since` must be Unix seconds, got `{v}`"),
                    )
                })?)
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .map_err(|_| {
                        RequestError::new(
                            ErrorCode::InvalidField,
                            format!("query `limit` must be a count, got `{v}`"),
                        )
                    })?
                    .min(AUDIT_PAGE)
            }
            other => {
                return Err(
                    RequestError::new(ErrorCode::InvalidField, format!("unknown query parameter `{other}`")).into(),
                )
            }
        }
    }
    let records = blocking(move || Ok(ctx.svc.audit(&ctx.caller, agent.as_deref(), since, limit)?)).await?;
    Ok(json_response(StatusCode::OK, &json!({ "records": records })))
}

/// Longest long-poll wait.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// The query string's pairs, percent-decoded (`+` is a space).
fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Reads `wait=30s` / `wait=30` from a query.
fn wait_param(pairs: &[(String, String)]) -> Result<Option<Duration>, RequestError> {
    let Some(v) = query_value(pairs, "wait") else {
        return Ok(None);
    };
    let secs: u64 = v.trim_end_matches('s').parse().map_err(|_| {
        RequestError::new(
            ErrorCode::InvalidField,
            format!("query `wait` must be seconds like `30s`, got `{v}`"),
        )
    })?;
    Ok(Some(Duration::from_secs(secs).min(MAX_WAIT)))
}

fn status_param(pairs: &[(String, String)]) -> Result<Option<RequestStatus>, RequestError> {
    let Some(v) = query_value(pairs, "status") else {
        return Ok(None);
    };
    RequestStatus::parse(v).map(Some).ok_or_else(|| {
        let known: Vec<&str> = RequestStatus::ALL.iter().map(|s| s.as_str()).collect();
        RequestError::new(
            ErrorCode::InvalidField,
            format!("query `status` must be one of {}, got `{v}`", known.join(", ")),
        )
    })
}

/// `POST /v1/permission-requests` (the grantee's credential): `{grant, reason, ttl_seconds?}`.
pub async fn request_permission(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(&req).as_deref())?;
    let body = read_json(req, &state.config).await?;
    let f = Fields::of(&body, "")?;
    let grant = f.require_string("grant")?.to_owned();
    let reason = f.string("reason")?.unwrap_or_default().to_owned();
    let ttl = f.i64("ttl_seconds")?;
    let (view, extra) = blocking(move || {
        Ok(ctx
            .svc
            .request_permission(&ctx.snap, &ctx.caller, &grant, &reason, ttl, now())?)
    })
    .await?;
    state.obs.metrics.permission_request("opened");
    let mut body = serde_json::to_value(&view).map_err(ApiError::internal)?;
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    Ok(json_response(StatusCode::ACCEPTED, &body))
}

/// `GET /v1/permission-requests?status=pending&mine=true&wait=30s`: requests waiting on the
/// caller (or the caller's own with `mine=true`). With `wait`, an empty answer waits for a change.
pub async fn list_requests(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(&req).as_deref())?;
    let query = query_pairs(&req);
    let wait = wait_param(&query)?;
    let status = status_param(&query)?;
    let mine = query_value(&query, "mine") == Some("true");
    let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
    loop {
        let (svc, caller) = (Arc::clone(&ctx.svc), ctx.caller.clone());
        let snap = Arc::clone(&ctx.snap);
        let notified = ctx.svc.requests_changed();
        tokio::pin!(notified);
        // Register interest before reading, so a change between the read and the wait is seen.
        notified.as_mut().enable();
        let list = blocking(move || Ok(svc.list_requests(&snap, &caller, status, mine)?)).await?;
        if !list.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(json_response(StatusCode::OK, &json!({ "requests": list })));
        }
        let _waiting = state.obs.metrics.long_poll_waiting();
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

/// `GET /v1/permission-requests/{id}?wait=30s`: with `wait`, a pending request is answered when
/// it changes (approved, denied, escalated, …) or the wait ends.
pub async fn get_request(state: &AppState, req: Request<Incoming>, id: String) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(&req).as_deref())?;
    let wait = wait_param(&query_pairs(&req))?;
    let deadline = tokio::time::Instant::now() + wait.unwrap_or_default();
    let mut first: Option<(RequestStatus, String)> = None;
    loop {
        let notified = ctx.svc.requests_changed();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let (svc, snap, caller, rid) = (
            Arc::clone(&ctx.svc),
            Arc::clone(&ctx.snap),
            ctx.caller.clone(),
            id.clone(),
        );
        let view = blocking(move || Ok(svc.get_request(&snap, &caller, &rid)?)).await?;
        let now_state = (view.status, view.approver.clone());
        let changed = first.as_ref().is_some_and(|f| *f != now_state);
        if view.status != RequestStatus::Pending || changed || tokio::time::Instant::now() >= deadline {
            return Ok(json_response(StatusCode::OK, &view));
        }
        first.get_or_insert(now_state);
        let _waiting = state.obs.metrics.long_poll_waiting();
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

/// `POST /v1/permission-requests/{id}`: `{decision: "approve"|"deny"|"escalate", reason}`.
pub async fn decide_request(state: &AppState, req: Request<Incoming>, id: String) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(&req).as_deref())?;
    let body = read_json(req, &state.config).await?;
    let f = Fields::of(&body, "")?;
    let decision = match f.require_string("decision")? {
        "approve" => PermissionDecision::Approve,
        "deny" => PermissionDecision::Deny,
        "escalate" => PermissionDecision::Escalate,
        other => {
            return Err(RequestError::new(
                ErrorCode::InvalidField,
                format!("field `decision` is `{other}`; expected `approve`, `deny` or `escalate`"),
            )
            .into())
        }
    };
    let reason = f.string("reason")?.unwrap_or_default().to_owned();
    let event = match decision {
        PermissionDecision::Approve => "approved",
        PermissionDecision::Deny => "denied",
        PermissionDecision::Escalate => "escalated",
    };
    let view = blocking(move || {
        Ok(ctx
            .svc
            .decide_request(&ctx.snap, &ctx.caller, &id, decision, &reason, now())?)
    })
    .await?;
    state.obs.metrics.permission_request(event);
    Ok(json_response(StatusCode::OK, &view))
}

/// `DELETE /v1/permission-requests/{id}`: the requester withdraws it.
pub async fn withdraw_request(
    state: &AppState,
    req: Request<Incoming>,
    id: String,
) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(&req).as_deref())?;
    let view = blocking(move || Ok(ctx.svc.withdraw_request(&ctx.caller, &id, now())?)).await?;
    state.obs.metrics.permission_request("withdrawn");
    Ok(json_response(StatusCode::OK, &view))
}

/// `GET /v1/agents/{id}/capabilities` (the agent's own credential, an ancestor's, or admin).
pub async fn capabilities(state: &AppState, req: &Request<Incoming>, id: &str) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(req).as_deref())?;
    let agent = ctx
        .snap
        .agents
        .get(id)
        .ok_or_else(|| ApiError::new(ErrorCode::AgentNotFound, format!("no agent `{id}`")))?;
    check_visible(&ctx.caller, agent, "list its capabilities")?;
    // Partial evaluation over every resource: blocking work (a cache hit is not, but is cheap).
    let (snap, agent) = (Arc::clone(&ctx.snap), Arc::clone(agent));
    let caps = blocking(move || Ok(crate::authorize::capabilities(&snap, &agent, now()))).await?;
    // The cached answer's JSON, serialized once per answer.
    let body = caps.json().map_err(ApiError::internal)?;
    Ok(json_bytes_response(StatusCode::OK, body))
}
