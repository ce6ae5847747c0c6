//! Delegation endpoints: create, revoke, complete, audit. Proofs and SQLite writes are
//! blocking, so each runs under `spawn_blocking`; the snapshot is loaded once per request.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::routes::{json_response, now, read_json};
use super::{ApiError, AppState};
use crate::authorize::{Fields, RequestError};
use crate::delegation::{Caller, Delegation, SpawnOutcome, SpawnRequest};
use crate::snapshot::Snapshot;

type Body = Full<Bytes>;

/// Most audit records one call returns.
const AUDIT_PAGE: usize = 1000;

fn service(state: &AppState) -> Result<Arc<Delegation>, ApiError> {
    state.delegation.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "delegation_disabled",
            "delegation is not enabled on this sidecar (it serves with --authorize-only)",
        )
    })
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
}

/// Runs blocking delegation work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(ApiError::internal)?
}

struct Ctx {
    svc: Arc<Delegation>,
    snap: Arc<Snapshot>,
    caller: Caller,
}

fn context(state: &AppState, token: Option<&str>) -> Result<Ctx, ApiError> {
    let svc = service(state)?;
    let snap = state.live.current().ok_or_else(ApiError::no_bundle)?;
    let caller = svc.authenticate(&snap, token, now())?;
    Ok(Ctx { svc, snap, caller })
}

/// `POST /v1/delegations`
pub async fn create(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let token = bearer(&req);
    let ctx = context(state, token.as_deref())?;
    let body = read_json(req, state.config.max_body_bytes).await?;
    let spawn = spawn_request(&body)?;
    let span = crate::telemetry::delegation_span();
    let inner = span.clone();
    let outcome = blocking(move || {
        let _entered = inner.enter();
        Ok(ctx.svc.spawn(&ctx.snap, &ctx.caller, spawn, now())?)
    })
    .await;
    crate::telemetry::delegation_done(&state.obs, &span, &outcome);
    let outcome = outcome?;
    let status = match outcome {
        SpawnOutcome::Applied { .. } => StatusCode::CREATED,
        SpawnOutcome::Pending { .. } => StatusCode::ACCEPTED,
    };
    Ok(json_response(status, &outcome))
}

fn spawn_request(body: &Value) -> Result<SpawnRequest, RequestError> {
    let f = Fields::of(body, "")?;
    Ok(SpawnRequest {
        grant: f.require_string("grant")?.to_owned(),
        ttl_seconds: f
            .i64("ttl_seconds")?
            .ok_or_else(|| RequestError::missing("ttl_seconds"))?,
        ceiling: f.i64("ceiling")?,
        can_delegate: f.bool("can_delegate")?.unwrap_or(false),
        task: f.require_string("task")?.to_owned(),
        reason: f.string("reason")?.unwrap_or_default().to_owned(),
        agent_id: f.string("agent_id")?.map(str::to_owned),
    })
}

/// `DELETE /v1/delegations/{id}` and `POST /v1/delegations/{id}/complete`
pub async fn revoke(
    state: &AppState,
    req: Request<Incoming>,
    id: String,
    completed: bool,
) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(&req).as_deref())?;
    let ids = blocking(move || Ok(ctx.svc.revoke(&ctx.snap, &ctx.caller, &id, completed, now())?)).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "outcome": if completed { "completed" } else { "revoked" }, "revoked": ids }),
    ))
}

/// `GET /v1/delegations/{id}`: the agent's record (its own credential, an ancestor's, or admin).
pub fn show(state: &AppState, req: &Request<Incoming>, id: &str) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(req).as_deref())?;
    let agent = ctx.snap.agents.get(id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "delegation_not_found",
            format!("no delegation `{id}`"),
        )
    })?;
    let visible = match &ctx.caller {
        Caller::Admin => true,
        Caller::Agent(a) => agent.chain.contains(&a.row.id),
    };
    if !visible {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_your_delegation",
            format!("only the admin, `{id}` itself or its ancestors may read it"),
        ));
    }
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
        }),
    ))
}

/// `GET /v1/audit?agent=&since=&limit=` (admin)
pub async fn audit(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let ctx = context(state, bearer(&req).as_deref())?;
    let query = req.uri().query().unwrap_or("").to_owned();
    let mut agent = None;
    let mut since = None;
    let mut limit = AUDIT_PAGE;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "agent" => agent = Some(v.to_owned()),
            "since" => {
                since = Some(v.parse::<i64>().map_err(|_| {
                    RequestError::new(
                        "invalid_field",
                        format!("query `since` must be Unix seconds, got `{v}`"),
                    )
                })?)
            }
            "limit" => {
                limit = v
                    .parse::<usize>()
                    .map_err(|_| {
                        RequestError::new("invalid_field", format!("query `limit` must be a count, got `{v}`"))
                    })?
                    .min(AUDIT_PAGE)
            }
            other => {
                return Err(RequestError::new("invalid_field", format!("unknown query parameter `{other}`")).into())
            }
        }
    }
    let records = blocking(move || Ok(ctx.svc.audit(&ctx.caller, agent.as_deref(), since, limit)?)).await?;
    Ok(json_response(StatusCode::OK, &json!({ "records": records })))
}
