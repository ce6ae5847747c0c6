//! `/mcp/<server>`: MCP streamable HTTP (POST only: deputy opens no server-to-client stream).
//! The caller is authenticated from its bearer credential exactly as the delegation endpoints
//! authenticate it, before the body is read; the message is answered by `crate::mcp`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, ORIGIN};
use hyper::{Method, Request, Response, StatusCode};

use super::delegations::{bearer, context, Ctx};
use super::routes::{error_response, json_response, read_json, POLICY_VERSION_HEADER};
use super::{ApiError, AppState};
use crate::clock::now;
use crate::delegation::Caller;
use crate::error::ErrorCode;
use crate::mcp::{Call, Reply};

type Body = Full<Bytes>;

pub async fn serve(state: &AppState, req: Request<Incoming>, server: &str) -> Result<Response<Body>, ApiError> {
    check_origin(&req)?;
    let served = state.mcp.served(server).ok_or_else(|| {
        ApiError::new(
            ErrorCode::McpServerNotFound,
            format!("this sidecar serves no MCP server `{server}`"),
        )
        .with_help("servers are configured with `deputy serve --mcp-server NAME=COMMAND…`; deputy's own tools are at /mcp/deputy")
    })?;
    let token = bearer(&req);
    // INVARIANT: the principal is the agent the credential names, never anything the message says.
    let Ctx { svc, snap, caller } = context(state, token.as_deref())?;
    not_admin(&caller)?;
    let body = read_json(req, &state.config).await?;
    // INVARIANT: the message is answered against the snapshot serving once its body is in, as
    // `/v1/authorize` decides: a reload or revocation acknowledged while the body was arriving
    // binds this call (the caller authenticated against it again).
    let current = state.live.current().ok_or_else(ApiError::no_bundle)?;
    let (snap, caller) = if std::sync::Arc::ptr_eq(&current, &snap) {
        (snap, caller)
    } else {
        let caller = svc.authenticate(&current, token.as_deref(), now())?;
        (current, caller)
    };
    let agent = not_admin(&caller)?;
    let call = Call {
        snap,
        agent,
        caller,
        svc,
    };
    let mut response = match crate::mcp::handle(&state.mcp, &served, &call, body).await {
        Reply::Message(m) => json_response(StatusCode::OK, &m),
        Reply::Accepted => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::ACCEPTED;
            r
        }
    };
    // The bundle every decision of this message was made against, as decision answers carry it.
    if let Ok(v) = HeaderValue::from_str(&call.snap.bundle.version) {
        response.headers_mut().insert(POLICY_VERSION_HEADER, v);
    }
    Ok(response)
}

/// The agent a caller is: the admin credential names none.
fn not_admin(caller: &Caller) -> Result<std::sync::Arc<crate::delegation::LiveAgent>, ApiError> {
    match caller {
        Caller::Agent(agent) => Ok(std::sync::Arc::clone(agent)),
        Caller::Admin => Err(ApiError::new(
            ErrorCode::NotAnAgent,
            "the admin credential names no agent; call MCP tools with an agent's credential",
        )),
    }
}

/// GET (a server-to-client stream) and DELETE (ending a session) are not offered: 405, as the
/// transport allows.
pub fn not_post(method: &Method, path: &str) -> Response<Body> {
    let mut r = error_response(&ApiError::method_not_allowed(method, path));
    r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
    r
}

/// The transport asks servers to refuse a foreign `Origin` (DNS rebinding): a browser page may
/// reach loopback. A request without one (any non-browser client) passes.
fn check_origin(req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(origin) = req.headers().get(ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .map(|rest| {
            if rest.starts_with('[') {
                rest.split_inclusive(']').next().unwrap_or_default()
            } else {
                rest.split(':').next().unwrap_or_default()
            }
        });
    match host {
        Some("localhost" | "127.0.0.1" | "[::1]") => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::McpOriginForbidden,
            format!("`Origin: {origin}` is not a loopback origin"),
        )),
    }
}
