//! deputy's own tools (`/mcp/deputy`): the agent's capabilities, asking for more permission, and
//! delegating to a child. Each is the delegation service's own operation, exactly as the HTTP
//! API runs it (`GET /v1/agents/{id}/capabilities`, `POST /v1/permission-requests`,
//! `POST /v1/delegations`), for the authenticated agent: its checks (the prover, the Cedar
//! `delegate` rules, `can_delegate`, limits) decide, not a second implementation.

use std::sync::Arc;

use rmcp::model::{CallToolRequestParams, CallToolResult, ContentBlock, ErrorCode as RpcCode, Tool};
use serde_json::{json, Map, Value};

use super::gateway::{own_error, Call, Failure};
use crate::authorize::Capabilities;
use crate::clock::now;
use crate::delegation::{DelegationError, SpawnRequest};
use crate::error::McpCode;

const CAPABILITIES: &str = "capabilities";
const REQUEST_PERMISSION: &str = "request_permission";
const DELEGATE: &str = "delegate";

fn schema(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The tools the agent sees: `delegate` only when it may delegate at all (its `can_delegate`,
/// and nothing above it revoked or expired); for a session (which may neither spawn nor file
/// permission requests: `session_restricted`), `capabilities` alone.
pub fn tools(caps: &Capabilities, session: bool) -> Vec<Tool> {
    let mut tools = vec![Tool::new(
        CAPABILITIES,
        "What you may do: per action, the resources allowed, and those allowed under a condition on the context (Cedar).",
        schema(json!({"type": "object", "properties": {}})),
    )];
    if session {
        return tools;
    }
    tools.push(
        Tool::new(
            REQUEST_PERMISSION,
            "Ask your grantor (or a human) for more permission: `grant` is Cedar policy templates over ?principal. Answers with the request to poll.",
            schema(json!({"type": "object", "required": ["grant"], "properties": {
                "grant": {"type": "string", "description": "Cedar templates, e.g. permit(principal == ?principal, action == Action::\"read\", resource == File::\"a\");"},
                "reason": {"type": "string"},
                "ttl_seconds": {"type": "integer"},
            }})),
        ),
    );
    if caps.can_delegate {
        tools.push(Tool::new(
            DELEGATE,
            "Spawn a child agent with a narrower grant (proved within yours before it is applied). Answers with its id and credential, or the pending request.",
            schema(json!({"type": "object", "required": ["grant", "ttl_seconds", "task"], "properties": {
                "grant": {"type": "string"},
                "ttl_seconds": {"type": "integer"},
                "task": {"type": "string"},
                "ceiling": {"type": "integer"},
                "can_delegate": {"type": "boolean"},
                "reason": {"type": "string"},
                "agent_id": {"type": "string"},
                "approved_request": {"type": "string"},
            }})),
        ));
    }
    tools
}

/// Calls one of deputy's tools for the agent.
pub async fn call(call: &Call, params: &CallToolRequestParams) -> Result<CallToolResult, Failure> {
    let args = Value::Object(params.arguments.clone().unwrap_or_default());
    let (snap, svc, caller) = (Arc::clone(&call.snap), Arc::clone(&call.svc), call.caller.clone());
    let agent = Arc::clone(&call.agent);
    let name = params.name.to_string();
    let done = tokio::task::spawn_blocking(crate::telemetry::carry(move || -> Result<Value, Refused> {
        match name.as_str() {
            CAPABILITIES => {
                let caps = crate::authorize::capabilities(&snap, &agent, now());
                serde_json::to_value(&*caps).map_err(|e| Refused::Internal(e.to_string()))
            }
            REQUEST_PERMISSION => {
                let f = crate::authorize::Fields::of(&args, "params.arguments")?;
                let grant = f.require_string("grant")?.to_owned();
                let reason = f.string("reason")?.unwrap_or_default().to_owned();
                let ttl = f.i64("ttl_seconds")?;
                let (view, extra) = svc.request_permission(&snap, &caller, &grant, &reason, ttl, now())?;
                let mut body = serde_json::to_value(&view).map_err(|e| Refused::Internal(e.to_string()))?;
                if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
                    b.extend(e);
                }
                Ok(body)
            }
            DELEGATE => {
                // INVARIANT: hidden is not enough; a caller that may not delegate is refused by
                // the spawn itself (`can_delegate`, the Cedar rules), whatever it calls.
                let req = SpawnRequest::from_json(&args, "params.arguments")?;
                let outcome = svc.spawn(&snap, &caller, req, now())?;
                serde_json::to_value(&outcome).map_err(|e| Refused::Internal(e.to_string()))
            }
            other => Err(Refused::UnknownTool(other.to_owned())),
        }
    }))
    .await
    .map_err(|e| Failure::new(RpcCode::INTERNAL_ERROR, McpCode::Internal, e.to_string()))?;
    match done {
        Ok(body) => {
            let mut r = CallToolResult::success(vec![ContentBlock::text(body.to_string())]);
            r.structured_content = Some(body);
            Ok(r)
        }
        Err(Refused::UnknownTool(t)) => Err(Failure::new(
            RpcCode::INVALID_PARAMS,
            McpCode::UnknownTool,
            format!("deputy has no tool `{t}` (`params.name`)"),
        )),
        Err(Refused::Request(e)) => Ok(own_error(json!({"code": e.code, "message": e.message, "help": e.help}))),
        Err(Refused::Delegation(e)) => Ok(own_error(serde_json::to_value(&e).unwrap_or(Value::Null))),
        Err(Refused::Internal(e)) => Err(Failure::new(RpcCode::INTERNAL_ERROR, McpCode::Internal, e)),
    }
}

enum Refused {
    UnknownTool(String),
    Request(crate::authorize::RequestError),
    Delegation(DelegationError),
    Internal(String),
}

impl From<crate::authorize::RequestError> for Refused {
    fn from(e: crate::authorize::RequestError) -> Refused {
        Refused::Request(e)
    }
}

impl From<DelegationError> for Refused {
    fn from(e: DelegationError) -> Refused {
        Refused::Delegation(e)
    }
}
