//! Routing and handlers. Each request loads the serving bundle once and decides against it.

use crate::error::ErrorCode;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};
use tracing::Instrument;

use super::delegations::Named;
use super::{delegations, ApiError, AppState, DelegationState};
use crate::authorize::{self, Decision, Fields, Outcome, RequestError};
use crate::authzen;
use crate::clock::now;
use crate::snapshot::Snapshot;
use crate::telemetry::{self, Api};

const REQUEST_ID: &str = "x-request-id";
/// Batches up to this many items are decided inline; larger ones on the blocking pool.
const INLINE_BATCH: usize = 32;
pub(super) const POLICY_VERSION_HEADER: &str = "x-deputy-policy-version";
/// How long a client may take to send its whole body once headers are in.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

pub async fn handle(state: Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map_or_else(new_request_id, str::to_owned);
    let found = lookup(req.uri().path());
    let hot = found.as_ref().is_some_and(|(e, _)| e.is_decision());
    let (span, trace_id) = telemetry::http_span(req.method(), req.uri().path(), &request_id, req.headers(), hot);
    let routed = telemetry::scoped(&state.obs, trace_id, &request_id, route(&state, req, found));
    let mut response = match routed.instrument(span.clone()).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID, v);
    }
    telemetry::http_done(&span, response.status());
    Ok(response)
}

/// Every endpoint deputy serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Healthz,
    Readyz,
    Metrics,
    Status,
    AuthzenConfiguration,
    Authorize,
    AuthorizeBatch,
    Evaluation,
    Evaluations,
    SearchSubject,
    SearchResource,
    SearchAction,
    Delegations,
    Delegation,
    DelegationComplete,
    Audit,
    PermissionRequests,
    PermissionRequest,
    Capabilities,
    Invocations,
    Invocation,
    InvocationAccept,
    InvocationComplete,
    Shadow,
    Mcp,
}

impl Endpoint {
    /// The decision endpoints: called before every tool call, so kept lean (see `http_span`).
    fn is_decision(self) -> bool {
        matches!(
            self,
            Endpoint::Authorize | Endpoint::AuthorizeBatch | Endpoint::Evaluation | Endpoint::Evaluations
        )
    }
}

/// The one list of routes (matchit syntax: `{id}` is one path segment).
const ROUTES: &[(&str, Endpoint)] = &[
    ("/healthz", Endpoint::Healthz),
    ("/readyz", Endpoint::Readyz),
    ("/metrics", Endpoint::Metrics),
    ("/v1/status", Endpoint::Status),
    ("/.well-known/authzen-configuration", Endpoint::AuthzenConfiguration),
    ("/v1/authorize", Endpoint::Authorize),
    ("/v1/authorize/batch", Endpoint::AuthorizeBatch),
    ("/access/v1/evaluation", Endpoint::Evaluation),
    ("/access/v1/evaluations", Endpoint::Evaluations),
    ("/access/v1/search/subject", Endpoint::SearchSubject),
    ("/access/v1/search/resource", Endpoint::SearchResource),
    ("/access/v1/search/action", Endpoint::SearchAction),
    ("/v1/delegations", Endpoint::Delegations),
    ("/v1/delegations/{id}", Endpoint::Delegation),
    ("/v1/delegations/{id}/complete", Endpoint::DelegationComplete),
    ("/v1/audit", Endpoint::Audit),
    ("/v1/permission-requests", Endpoint::PermissionRequests),
    ("/v1/permission-requests/{id}", Endpoint::PermissionRequest),
    ("/v1/agents/{id}/capabilities", Endpoint::Capabilities),
    ("/v1/invocations", Endpoint::Invocations),
    ("/v1/invocations/{id}", Endpoint::Invocation),
    ("/v1/invocations/{id}/accept", Endpoint::InvocationAccept),
    ("/v1/invocations/{id}/complete", Endpoint::InvocationComplete),
    ("/v1/shadow", Endpoint::Shadow),
    ("/mcp/{id}", Endpoint::Mcp),
];

static ROUTER: std::sync::LazyLock<matchit::Router<Endpoint>> = std::sync::LazyLock::new(|| {
    let mut router = matchit::Router::new();
    for (path, endpoint) in ROUTES {
        if let Err(e) = router.insert(*path, *endpoint) {
            // A conflict between two literal routes: a bug the unit test below catches.
            tracing::error!(path, error = %e, "route not served");
        }
    }
    router
});

/// The endpoint a path names and its `{id}`, percent-decoded.
fn lookup(path: &str) -> Option<(Endpoint, Option<String>)> {
    let matched = ROUTER.at(path).ok()?;
    let id = matched.params.get("id").map(|raw| {
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned()
    });
    Some((*matched.value, id))
}

async fn route(
    state: &AppState,
    req: Request<Incoming>,
    found: Option<(Endpoint, Option<String>)>,
) -> Result<Response<Body>, ApiError> {
    // `/v1/authorize` in a small future of its own; every other endpoint behind one pointer, so
    // that the future each request moves around (hyper's dispatcher, the request scope, the
    // span) is the size of the hot path's, not of the largest handler's.
    if matches!(found, Some((Endpoint::Authorize, _))) && req.method() == Method::POST {
        return authorize(state, req).await;
    }
    Box::pin(route_other(state, req, found)).await
}

/// `POST /v1/authorize`.
async fn authorize(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let bytes = read_body(req, &state.config).await?;
    let snap = state.live.current().ok_or_else(ApiError::no_bundle)?;
    let outcome = authorize_body(&snap, &bytes)?;
    if let Some(raise) = outcome.raise() {
        persist_taints(state, vec![raise]).await?;
    }
    Ok(with_version(
        json_response(StatusCode::OK, &decision_body(&snap, &outcome)),
        &snap,
    ))
}

async fn route_other(
    state: &AppState,
    req: Request<Incoming>,
    found: Option<(Endpoint, Option<String>)>,
) -> Result<Response<Body>, ApiError> {
    use Endpoint as E;
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let Some((endpoint, id)) = found else {
        return Err(ApiError::not_found(&path));
    };
    let id = id.unwrap_or_default();
    match (endpoint, &method) {
        (E::Healthz, &Method::GET) => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
        (E::Readyz, &Method::GET) => readyz(state),
        (E::Metrics, &Method::GET) => Ok(metrics(state)),
        (E::Status, &Method::GET) => Ok(status(state)),
        (E::Shadow, &Method::GET) => shadow(state, &req),
        (E::AuthzenConfiguration, &Method::GET) => Ok(authzen_configuration(&req)),
        (E::Authorize, &Method::POST) => authorize(state, req).await,
        (E::AuthorizeBatch, &Method::POST) => {
            let (snap, body) = decision_input(state, req).await?;
            let max = state.config.max_batch;
            // A large batch is many decisions in a row: keep it off the async workers.
            let (response, raised) = if body
                .get("requests")
                .and_then(Value::as_array)
                .is_some_and(|r| r.len() > INLINE_BATCH)
            {
                tokio::task::spawn_blocking(telemetry::carry(move || authorize_batch(&snap, &body, max)))
                    .await
                    .map_err(ApiError::internal)??
            } else {
                authorize_batch(&snap, &body, max)?
            };
            persist_taints(state, raised).await?;
            Ok(response)
        }
        (E::Evaluation, &Method::POST) => {
            let (snap, body) = decision_input(state, req).await?;
            let mut raised = Vec::new();
            let eval = authzen::evaluate(&snap, &body, now(), &mut raised)?;
            persist_taints(state, raised).await?;
            Ok(with_version(
                json_response(StatusCode::OK, &evaluation_body(&eval)),
                &snap,
            ))
        }
        (E::Evaluations, &Method::POST) => {
            let (snap, body) = decision_input(state, req).await?;
            let max = state.config.max_batch;
            let large = body
                .get("evaluations")
                .and_then(Value::as_array)
                .is_some_and(|e| e.len() > INLINE_BATCH);
            let (batch, raised) = if large {
                let s = Arc::clone(&snap);
                tokio::task::spawn_blocking(telemetry::carry(move || {
                    let mut raised = Vec::new();
                    authzen::evaluate_batch(&s, &body, max, now(), &mut raised).map(|b| (b, raised))
                }))
                .await
                .map_err(ApiError::internal)??
            } else {
                let mut raised = Vec::new();
                let batch = authzen::evaluate_batch(&snap, &body, max, now(), &mut raised)?;
                (batch, raised)
            };
            persist_taints(state, raised).await?;
            let response = match batch {
                authzen::Batch::Single(eval) => json_response(StatusCode::OK, &evaluation_body(&eval)),
                authzen::Batch::Many(evals) => {
                    let evals: Vec<Value> = evals.iter().map(evaluation_body).collect();
                    json_response(StatusCode::OK, &json!({ "evaluations": evals }))
                }
            };
            Ok(with_version(response, &snap))
        }
        (E::SearchSubject, &Method::POST) => search(state, req, authzen::Kind::Subject).await,
        (E::SearchResource, &Method::POST) => search(state, req, authzen::Kind::Resource).await,
        (E::SearchAction, &Method::POST) => search(state, req, authzen::Kind::Action).await,
        (E::Delegations, &Method::POST) => delegations::create(state, req).await,
        (E::Delegation, &Method::GET) => delegations::show(state, &req, &id, Named::Any),
        (E::Delegation, &Method::DELETE) => delegations::revoke(state, req, id, false, Named::Any).await,
        (E::DelegationComplete, &Method::POST) => delegations::revoke(state, req, id, true, Named::Any).await,
        (E::Audit, &Method::GET) => delegations::audit(state, req).await,
        (E::PermissionRequests, &Method::POST) => delegations::request_permission(state, req).await,
        (E::PermissionRequests, &Method::GET) => delegations::list_requests(state, req).await,
        (E::PermissionRequest, &Method::GET) => delegations::get_request(state, req, id).await,
        (E::PermissionRequest, &Method::POST) => delegations::decide_request(state, req, id).await,
        (E::PermissionRequest, &Method::DELETE) => delegations::withdraw_request(state, req, id).await,
        (E::Capabilities, &Method::GET) => delegations::capabilities(state, &req, &id).await,
        (E::Invocations, &Method::POST) => delegations::invoke(state, req).await,
        (E::Invocations, &Method::GET) => delegations::list_sessions(state, &req),
        (E::Invocation, &Method::GET) => delegations::show(state, &req, &id, Named::Sessions),
        (E::Invocation, &Method::DELETE) => delegations::revoke(state, req, id, false, Named::Sessions).await,
        (E::InvocationAccept, &Method::POST) => delegations::accept(state, req, id).await,
        (E::InvocationComplete, &Method::POST) => delegations::revoke(state, req, id, true, Named::Sessions).await,
        (E::Mcp, &Method::POST) => super::mcp::serve(state, req, &id).await,
        (E::Mcp, _) => Ok(super::mcp::not_post(&method, &path)),
        _ => Err(ApiError::method_not_allowed(&method, &path)),
    }
}

/// An AuthZEN search: one decision per candidate, so on the blocking pool.
async fn search(state: &AppState, req: Request<Incoming>, kind: authzen::Kind) -> Result<Response<Body>, ApiError> {
    let (snap, body) = decision_input(state, req).await?;
    let s = Arc::clone(&snap);
    let found = tokio::task::spawn_blocking(telemetry::carry(move || authzen::search(&s, kind, &body, now())))
        .await
        .map_err(ApiError::internal)??;
    Ok(with_version(json_response(StatusCode::OK, &found.body()), &snap))
}

/// Reads a JSON body and the serving bundle. The bundle is loaded once, here, and the request
/// is decided against that one `Arc` whatever reloads happen meanwhile.
async fn decision_input(state: &AppState, req: Request<Incoming>) -> Result<(Arc<Snapshot>, Value), ApiError> {
    let body = read_json(req, &state.config).await?;
    let snap = state.live.current().ok_or_else(ApiError::no_bundle)?;
    Ok((snap, body))
}

/// A request id unique to this process run: a random prefix drawn once, and a counter (no
/// system call per request).
fn new_request_id() -> String {
    static PREFIX: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| uuid::Uuid::new_v4().simple().to_string()[..16].to_owned());
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // `format!("{prefix}-{n:016x}")`, written out: the formatter cost ~2% of a decision's CPU.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(PREFIX.len() + 17);
    id.push_str(&PREFIX);
    id.push('-');
    for shift in (0..16).rev() {
        id.push(char::from(HEX[((n >> (shift * 4)) & 0xf) as usize]));
    }
    id
}

/// Makes the taint a request's decisions raised durable before it is answered (the in-memory
/// taint already holds for every later decision). If it cannot be, the request fails closed
/// (`503 state_unavailable`): after a restart the agent must not have forgotten what it read.
async fn persist_taints(state: &AppState, raised: authzen::Raised) -> Result<(), ApiError> {
    if raised.is_empty() {
        return Ok(());
    }
    let Some(svc) = state.delegation.open().cloned() else {
        return Ok(());
    };
    tokio::task::spawn_blocking(move || svc.persist_taints(&raised))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

pub(super) async fn read_json(req: Request<Incoming>, config: &super::HttpConfig) -> Result<Value, ApiError> {
    let bytes = read_body(req, config).await?;
    parse_json(&bytes)
}

fn parse_json(bytes: &[u8]) -> Result<Value, ApiError> {
    Ok(authorize::parse_json(bytes)?)
}

/// Reads a JSON request body: the content type, size and nesting are checked, not the syntax.
async fn read_body(req: Request<Incoming>, config: &super::HttpConfig) -> Result<Bytes, ApiError> {
    let limit = config.max_body_bytes;
    if let Some(ct) = req.headers().get(CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !is_json_media(essence) {
            return Err(RequestError::new(
                ErrorCode::UnsupportedMediaType,
                format!(
                    "`Content-Type` is `{}`; send `application/json`",
                    essence.to_ascii_lowercase()
                ),
            )
            .into());
        }
    }
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(req.into_body(), limit).collect()).await;
    let bytes = match collected {
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::BodyTimeout,
                format!(
                    "the request body did not arrive within {}s",
                    BODY_READ_TIMEOUT.as_secs()
                ),
            ))
        }
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                return Err(ApiError::body_too_large(limit));
            }
            return Err(ApiError::new(
                ErrorCode::BodyUnreadable,
                format!("cannot read the request body: {e}"),
            ));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(RequestError::new(
            ErrorCode::MalformedJson,
            "the request body is empty; send a JSON object",
        )
        .into());
    }
    if let Some(depth) = too_deep(&bytes, config.max_json_depth) {
        return Err(RequestError::new(
            ErrorCode::JsonTooDeep,
            format!(
                "the request body nests deeper than {} levels (at byte {depth})",
                config.max_json_depth
            ),
        )
        .into());
    }
    Ok(bytes)
}

/// `application/json` or `…+json`, in any case: compared without a lowercased copy (one
/// allocation per request otherwise).
fn is_json_media(essence: &str) -> bool {
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .len()
            .checked_sub(5)
            .and_then(|at| essence.as_bytes().get(at..))
            .is_some_and(|tail| tail.eq_ignore_ascii_case(b"+json"))
}

/// The offset at which `bytes` (as JSON) nests deeper than `max` arrays/objects, if it does.
/// Checked before parsing, so a hostile body costs one linear scan.
fn too_deep(bytes: &[u8], max: usize) -> Option<usize> {
    // Nesting never exceeds the number of opening brackets (in strings or not): a body with no
    // more than `max` of them (every decision body) needs no scan of its strings. The count
    // stops at the first bracket beyond `max`.
    bytes.iter().filter(|&&b| b == b'[' || b == b'{').nth(max)?;
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(i);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Decides a `/v1/authorize` body.
fn authorize_body(snap: &Snapshot, bytes: &[u8]) -> Result<Outcome, RequestError> {
    let parts = authorize::read_parts(&snap.bundle, bytes)?;
    authorize::decide_observed(snap, parts, now(), Api::Authorize)
}

/// Reads a Cedar-shaped request `{principal, action, resource, context}` at `path`.
fn authorize_one(snap: &Snapshot, body: &Value, path: &str) -> Result<Outcome, RequestError> {
    let parts = authorize::parts_of(&snap.bundle, body, path)?;
    authorize::decide_observed(snap, parts, now(), Api::Authorize)
}

#[derive(Serialize)]
struct DecisionBody<'a> {
    decision: &'static str,
    reasons: &'a [String],
    errors: &'a [authorize::PolicyError],
    #[serde(skip_serializing_if = "Option::is_none")]
    denied_by: Option<&'a authorize::DeniedBy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    needed: Option<&'a authorize::Needed>,
    policy_version: &'a str,
}

fn decision_body<'a>(snap: &'a Snapshot, o: &'a Outcome) -> DecisionBody<'a> {
    let d: &Decision = &o.decision;
    DecisionBody {
        decision: if d.allow { "Allow" } else { "Deny" },
        reasons: &d.reasons,
        errors: &d.errors,
        denied_by: o.denied_by.as_ref(),
        needed: o.needed.as_ref(),
        policy_version: &snap.bundle.version,
    }
}

/// An AuthZEN evaluation as answered: `{decision}`, or for an item that could not be evaluated
/// `{decision: false, context: {error: {status, code, message}}}`.
fn evaluation_body(e: &authzen::Evaluation) -> Value {
    match &e.error {
        None => json!({ "decision": e.decision }),
        Some(err) => json!({
            "decision": false,
            "context": { "error": {
                "status": super::error::status(err.code).as_u16(), "code": err.code, "message": err.message,
            }},
        }),
    }
}

fn authorize_batch(snap: &Snapshot, body: &Value, max: usize) -> Result<(Response<Body>, authzen::Raised), ApiError> {
    let top = Fields::of(body, "")?;
    let items = top
        .array("requests")?
        .ok_or_else(|| RequestError::missing("requests"))?;
    if items.len() > max {
        return Err(RequestError::new(
            ErrorCode::BatchTooLarge,
            format!("`requests` has {} items; the limit is {max}", items.len()),
        )
        .into());
    }
    let mut decisions = Vec::with_capacity(items.len());
    let mut join = crate::agents::taint::BatchJoin::new(&snap.agents, now());
    for (i, item) in items.iter().enumerate() {
        let path = format!("requests[{i}]");
        let decided = authorize_one(snap, item, &path);
        // A read reaches everyone joined to the reader before the next item is decided.
        if let Some(raise) = decided.as_ref().ok().and_then(Outcome::raise) {
            if i + 1 < items.len() {
                join.join(&[raise]);
            }
        }
        decisions.push(decided);
    }
    let raised: authzen::Raised = decisions.iter().flatten().filter_map(Outcome::raise).collect();
    let responses: Vec<Value> = decisions
        .iter()
        .map(|d| match d {
            Ok(d) => serde_json::to_value(decision_body(snap, d)).unwrap_or(Value::Null),
            Err(e) => json!({
                "decision": "Deny",
                "error": { "code": e.code, "message": e.message, "help": e.help },
                "policy_version": snap.bundle.version,
            }),
        })
        .collect();
    let response = with_version(
        json_response(
            StatusCode::OK,
            &json!({ "responses": responses, "policy_version": snap.bundle.version }),
        ),
        snap,
    );
    Ok((response, raised))
}

fn readyz(state: &AppState) -> Result<Response<Body>, ApiError> {
    if let DelegationState::Unavailable(e) = &state.delegation {
        return Err(ApiError::new(
            ErrorCode::StateUnavailable,
            format!("the delegation state cannot be opened: {e}"),
        ));
    }
    match state.live.current() {
        Some(s) => Ok(json_response(
            StatusCode::OK,
            &json!({"status": "ready", "policy_version": s.bundle.version}),
        )),
        None => Err(ApiError::no_bundle()),
    }
}

/// `GET /v1/shadow`: how the shadow bundle's decisions compare (docs/GITOPS.md). The requests
/// it shows are other agents': the admin's only, unless the sidecar has no credentials at all
/// (`--authorize-only`, where any local caller may already ask anything of anyone).
fn shadow(state: &AppState, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let Some(shadow) = &state.shadow else {
        return Err(ApiError::new(
            ErrorCode::ShadowOff,
            "this sidecar compares no shadow bundle; start it with --shadow DIR",
        ));
    };
    if !matches!(state.delegation, DelegationState::Off) {
        let ctx = delegations::context(state, delegations::bearer(req).as_deref())?;
        if !matches!(ctx.caller, crate::delegation::Caller::Admin) {
            return Err(ApiError::new(
                ErrorCode::AdminOnly,
                "the shadow report shows other agents' requests; it needs the admin credential",
            ));
        }
    }
    Ok(json_response(StatusCode::OK, &shadow.report()))
}

fn status(state: &AppState) -> Response<Body> {
    let current = state.live.current();
    let (ok, failed) = state.store.reload_counts();
    let state_error = match &state.delegation {
        DelegationState::Unavailable(e) => Some(e),
        _ => None,
    };
    let body = json!({
        "ready": current.is_some() && state_error.is_none(),
        "bundle": current.as_ref().map(|s| &s.bundle).map(|b| json!({
            "dir": state.store.dir().display().to_string(),
            "policy_version": b.version,
            "revision": b.revision,
            "loaded_at": b.loaded_at,
            "validated": b.validated,
            "policies": b.policies.policies().count(),
            "templates": b.policies.templates().count(),
            "files": b.files,
        })),
        "last_reload": state.store.last_reload(),
        "state_error": state_error,
        "delegation": state.delegation.open().map(|d| {
            let drift = d.drift();
            json!({
                "live_agents": d.live_agents(now()),
                "drift": drift.agents,
                "reproved_version": drift.policy_version,
            })
        }),
        "reloads": { "ok": ok, "failed": failed },
    });
    json_response(StatusCode::OK, &body)
}

fn metrics(state: &AppState) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(state.obs.metrics.render())));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(telemetry::METRICS_CONTENT_TYPE));
    r
}

fn authzen_configuration(req: &Request<Incoming>) -> Response<Body> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let base = format!("http://{host}");
    json_response(
        StatusCode::OK,
        &json!({
            "policy_decision_point": base,
            "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
            "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
            "search_subject_endpoint": format!("{base}/access/v1/search/subject"),
            "search_resource_endpoint": format!("{base}/access/v1/search/resource"),
            "search_action_endpoint": format!("{base}/access/v1/search/action"),
        }),
    )
}

fn with_version(mut r: Response<Body>, snap: &Snapshot) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&snap.bundle.version) {
        r.headers_mut().insert(POLICY_VERSION_HEADER, v);
    }
    r
}

pub(super) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    // A decision is ~100 bytes: one allocation instead of a series of doublings.
    let mut bytes = Vec::with_capacity(256);
    if let Err(e) = serde_json::to_writer(&mut bytes, body) {
        return error_response(&ApiError::internal(e));
    }
    json_bytes_response(status, Bytes::from(bytes))
}

/// A response of JSON already serialized (`body`).
pub(super) fn json_bytes_response(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

pub(super) fn error_response(e: &ApiError) -> Response<Body> {
    let bytes = serde_json::to_vec(e).unwrap_or_else(|_| br#"{"code":"internal","message":"internal error"}"#.to_vec());
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    *r.status_mut() = e.status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn every_route_is_served_and_ids_are_decoded() {
        for (path, endpoint) in ROUTES {
            let concrete = path.replace("{id}", "x");
            assert_eq!(lookup(&concrete).map(|(e, _)| e), Some(*endpoint), "{path}");
        }
        let (e, id) = lookup("/v1/delegations/agt%2D1%20x").unwrap();
        assert_eq!((e, id.as_deref()), (Endpoint::Delegation, Some("agt-1 x")));
        assert!(lookup("/v1/delegations/a/b").is_none());
        assert!(lookup("/nope").is_none());
    }

    #[test]
    fn nesting_is_found_past_the_bracket_count() {
        let cases: &[(&[u8], usize, Option<usize>)] = &[
            (b"{}", 1, None),
            (b"[[]]", 1, Some(1)),
            (b"{\"a\":[{}]}", 2, Some(6)),
            (b"{\"a\":\"[[[[\"}", 2, None),
            (b"{\"a\":\"\\\"[[\",\"b\":[[]]}", 2, Some(17)),
            (b"[{},{},{}]", 2, None),
        ];
        for (body, max, want) in cases {
            assert_eq!(too_deep(body, *max), *want, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn json_media_types_in_any_case() {
        for yes in ["application/json", "Application/JSON", "application/merge-patch+json", "x+JSON", "+json"] {
            assert!(is_json_media(yes), "{yes}");
        }
        for no in ["", "json", "text/plain", "application/jsonx", "application/json5", "é+jsoń", "+jso"] {
            assert!(!is_json_media(no), "{no}");
        }
    }

    #[test]
    fn request_ids_are_prefix_dash_sixteen_hex_digits() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        let (prefix, n) = a.split_once('-').unwrap();
        assert_eq!(prefix.len(), 16);
        assert_eq!(n.len(), 16);
        assert!(n.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        let m = u64::from_str_radix(b.split_once('-').unwrap().1, 16).unwrap();
        assert!(m > u64::from_str_radix(n, 16).unwrap());
    }
}
