//! One MCP message from an authenticated agent, answered: JSON-RPC 2.0 over streamable HTTP,
//! stateless (no `Mcp-Session-Id`), protocol revision 2025-11-25 (and the two before it). The
//! agent is already authenticated; nothing in a message names a principal.

use std::sync::Arc;

use rmcp::model::{
    CallToolRequestParams, CallToolResult, ContentBlock, ErrorCode as RpcCode, ErrorData, JsonRpcError,
    JsonRpcResponse, JsonRpcVersion2_0, ListToolsResult, RequestId, Tool,
};
use serde_json::{json, Value};

use super::upstream::{Connection, UpstreamError};
use super::{action_id, own, Gateway, Served, Upstream, RESERVED_ARGUMENT, SERVER_TYPE};
use crate::agents::{agent_uid, LiveAgent};
use crate::authorize::{self, EntityRef, Outcome, Parts};
use crate::clock::now;
use crate::delegation::{Caller, Delegation};
use crate::error::McpCode;
use crate::snapshot::Snapshot;
use crate::telemetry::Api;

/// The protocol revisions deputy speaks, newest first.
const VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26"];

/// An authenticated agent's message to one server.
pub struct Call {
    pub snap: Arc<Snapshot>,
    pub agent: Arc<LiveAgent>,
    pub caller: Caller,
    pub svc: Arc<Delegation>,
}

/// The answer to one message.
pub enum Reply {
    /// A JSON-RPC response or error (HTTP 200, `application/json`).
    Message(Value),
    /// A notification or a response was received (HTTP 202, no body).
    Accepted,
}

/// Answers one JSON-RPC message sent to `served`.
pub async fn handle(gw: &Gateway, served: &Served, call: &Call, message: Value) -> Reply {
    let Value::Object(mut m) = message else {
        return error(None, RpcCode::INVALID_REQUEST, McpCode::InvalidMessage, "a message must be one JSON-RPC object (batches are not part of MCP since 2025-06-18)");
    };
    let id: Option<RequestId> = m.get("id").cloned().and_then(|v| serde_json::from_value(v).ok());
    if id.is_none() && m.contains_key("id") {
        // Not a notification (it has an `id`), but an id MCP does not allow (null, an object).
        return error(None, RpcCode::INVALID_REQUEST, McpCode::InvalidMessage, "`id` must be a string or an integer");
    }
    if m.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return error(id, RpcCode::INVALID_REQUEST, McpCode::InvalidMessage, "`jsonrpc` must be \"2.0\"");
    }
    let Some(method) = m.get("method").and_then(Value::as_str).map(str::to_owned) else {
        // A response to a request deputy never sent (it sends none): nothing to do.
        return Reply::Accepted;
    };
    let Some(id) = id else {
        // A notification (`notifications/initialized`, `notifications/cancelled`, …).
        return Reply::Accepted;
    };
    let params = m.remove("params").unwrap_or(Value::Object(Default::default()));
    let answered = match method.as_str() {
        "initialize" => Ok(initialize(served, &params)),
        "ping" => Ok(json!({})),
        "tools/list" => list(served, call).await,
        "tools/call" => match serde_json::from_value::<CallToolRequestParams>(params) {
            Ok(p) => tool_call(gw, served, call, p).await,
            Err(e) => Err(Failure::new(
                RpcCode::INVALID_PARAMS,
                McpCode::InvalidMessage,
                format!("`params` of `tools/call` is not `{{name, arguments}}`: {e}"),
            )),
        },
        other => Err(Failure::new(
            RpcCode::METHOD_NOT_FOUND,
            McpCode::MethodNotFound,
            format!("deputy's MCP gateway serves `initialize`, `ping`, `tools/list` and `tools/call`, not `{other}`"),
        )),
    };
    match answered {
        Ok(result) => Reply::Message(
            serde_json::to_value(JsonRpcResponse {
                jsonrpc: JsonRpcVersion2_0,
                id,
                result,
            })
            .unwrap_or(Value::Null),
        ),
        Err(f) => Reply::Message(rpc_error(Some(id), f.data)),
    }
}

/// A JSON-RPC error answer: its JSON-RPC code, and in `data` deputy's stable code.
pub struct Failure {
    data: ErrorData,
}

impl Failure {
    pub fn new(rpc: RpcCode, code: McpCode, message: impl Into<String>) -> Failure {
        let message = message.into();
        Failure {
            data: ErrorData::new(rpc, message.clone(), Some(json!({ "code": code, "message": message }))),
        }
    }

    /// A request error of the decision path (the arguments do not fit the tool's action, the
    /// bundle has no such action, …), with its own code.
    fn request(e: &authorize::RequestError) -> Failure {
        let mut data = json!({ "code": e.code, "message": e.message });
        if let Some(h) = &e.help {
            data["help"] = json!(h);
        }
        Failure {
            data: ErrorData::new(RpcCode::INVALID_PARAMS, e.message.clone(), Some(data)),
        }
    }

    fn upstream(e: UpstreamError) -> Failure {
        match e {
            UpstreamError::Mcp(data) => Failure { data },
            UpstreamError::Timeout(_) => Failure::new(RpcCode::INTERNAL_ERROR, McpCode::UpstreamTimeout, e.to_string()),
            UpstreamError::Unavailable(_) => {
                Failure::new(RpcCode::INTERNAL_ERROR, McpCode::UpstreamUnavailable, e.to_string())
            }
        }
    }
}

fn error(id: Option<RequestId>, rpc: RpcCode, code: McpCode, message: &str) -> Reply {
    Reply::Message(rpc_error(id, Failure::new(rpc, code, message).data))
}

fn rpc_error(id: Option<RequestId>, data: ErrorData) -> Value {
    serde_json::to_value(JsonRpcError::new(id, data)).unwrap_or(Value::Null)
}

/// `initialize`: the client's revision when deputy speaks it, else deputy's newest.
fn initialize(served: &Served, params: &Value) -> Value {
    let asked = params.get("protocolVersion").and_then(Value::as_str).unwrap_or_default();
    let version = VERSIONS.iter().find(|v| **v == asked).unwrap_or(&VERSIONS[0]);
    let (name, instructions) = match served {
        Served::Own => (
            "deputy".to_owned(),
            "deputy's own tools: your capabilities, asking for more permission, and (when you may) delegating to a child agent.",
        ),
        Served::Upstream(u) => (
            format!("deputy/{}", u.name()),
            "Tools of an MCP server behind deputy: you see the tools your authority allows, and each call is decided by deputy's policies before it reaches the server; a denied call answers with the reason.",
        ),
    };
    json!({
        "protocolVersion": version,
        "capabilities": { "tools": { "listChanged": false } },
        "serverInfo": { "name": name, "version": env!("CARGO_PKG_VERSION") },
        "instructions": instructions,
    })
}

/// `tools/list`: the tools the agent could call in some context.
async fn list(served: &Served, call: &Call) -> Result<Value, Failure> {
    let caps = capabilities(call).await?;
    let tools: Vec<Tool> = match served {
        Served::Own => own::tools(&caps, call.agent.session.is_some()),
        Served::Upstream(u) => {
            let conn = u.connection().await.map_err(Failure::upstream)?;
            conn.tools
                .iter()
                .filter(|t| visible(&caps, u.name(), &t.name))
                .cloned()
                .collect()
        }
    };
    let mut result = ListToolsResult::with_all_items(tools);
    // Fields of a later revision than the ones deputy speaks.
    result.result_type = None;
    serde_json::to_value(result).map_err(|e| internal(&e))
}

/// The agent's capabilities (cached per snapshot and agent): partial evaluation, so off the
/// async workers.
async fn capabilities(call: &Call) -> Result<Arc<authorize::Capabilities>, Failure> {
    let (snap, agent) = (Arc::clone(&call.snap), Arc::clone(&call.agent));
    tokio::task::spawn_blocking(crate::telemetry::carry(move || authorize::capabilities(&snap, &agent, now())))
        .await
        .map_err(|e| internal(&e))
}

/// Whether some context lets the agent call `tool` on `server`: an allowed or conditional
/// capability on `McpServer::"<server>"`, or one for every `McpServer` unconditionally.
///
/// INVARIANT: never true for a tool no context allows: every entry of the capabilities engine
/// is allowed by `/v1/authorize` for some context (its own invariant); a conditional entry on
/// a resource outside the store, whose condition may name the resource, is not counted.
pub fn visible(caps: &authorize::Capabilities, server: &str, tool: &str) -> bool {
    let action = action_id(server, tool);
    let on_server = |r: &Value| r["type"] == SERVER_TYPE && r["id"] == server;
    caps.allowed.iter().any(|c| c.action == action && on_server(&c.resource))
        || caps.conditional.iter().any(|c| c.action == action && on_server(&c.resource))
        || caps
            .other_resources
            .iter()
            .any(|o| o.action == action && o.resource_type == SERVER_TYPE && o.condition.is_none())
}

/// `tools/call`.
async fn tool_call(gw: &Gateway, served: &Served, call: &Call, params: CallToolRequestParams) -> Result<Value, Failure> {
    let mut result = match served {
        Served::Own => own::call(call, &params).await?,
        Served::Upstream(u) => upstream_call(gw, u, call, params).await?,
    };
    result.result_type = None;
    serde_json::to_value(result).map_err(|e| internal(&e))
}

/// A call of an upstream tool: one decision, and only an allow reaches the server.
async fn upstream_call(
    gw: &Gateway,
    upstream: &Upstream,
    call: &Call,
    params: CallToolRequestParams,
) -> Result<CallToolResult, Failure> {
    let server = upstream.name();
    let conn = upstream.connection().await.map_err(Failure::upstream)?;
    check_tool(&conn, server, &params)?;
    let outcome = decide(call, server, &params)?;
    // INVARIANT: the server is called below this line only, after an allow, with the name and
    // arguments as decided on (parsed, re-serialized: never the bytes received).
    if !outcome.decision.allow {
        return Ok(denied(&call.snap, &outcome));
    }
    // A read the decision raised the agent's taint for is durable before the server is called
    // (and so before anything is answered).
    if let Some(raise) = outcome.raise() {
        let svc = Arc::clone(&call.svc);
        tokio::task::spawn_blocking(move || svc.persist_taints(&[raise]))
            .await
            .map_err(|e| internal(&e))?
            .map_err(|e| Failure::new(RpcCode::INTERNAL_ERROR, McpCode::StateUnavailable, e.message))?;
    }
    // Only what was decided on goes on: the name and the arguments (not the client's `_meta`
    // or later revisions' fields, which no policy saw).
    let mut forwarded = CallToolRequestParams::new(params.name);
    if let Some(arguments) = params.arguments {
        forwarded = forwarded.with_arguments(arguments);
    }
    upstream
        .call(&conn, forwarded, gw.call_timeout)
        .await
        .map_err(Failure::upstream)
}

/// The tool must be one the server lists, and the arguments must not carry what deputy
/// supplies.
fn check_tool(conn: &Connection, server: &str, params: &CallToolRequestParams) -> Result<(), Failure> {
    if conn.tool(&params.name).is_none() {
        return Err(Failure::new(
            RpcCode::INVALID_PARAMS,
            McpCode::UnknownTool,
            format!("the MCP server `{server}` has no tool `{}` (`params.name`)", params.name),
        ));
    }
    if params.arguments.as_ref().is_some_and(|a| a.contains_key(RESERVED_ARGUMENT)) {
        return Err(Failure::new(
            RpcCode::INVALID_PARAMS,
            McpCode::ReservedArgument,
            format!("`params.arguments.{RESERVED_ARGUMENT}` is reserved: deputy supplies `context.{RESERVED_ARGUMENT}` itself, so policy could not see the value sent"),
        ));
    }
    if let Some(arguments) = &params.arguments {
        for (name, value) in arguments {
            exact_integers(value, &format!("params.arguments.{name}"))?;
        }
    }
    Ok(())
}

/// The largest integer every JSON reader holds exactly (2^53 − 1: a double's; I-JSON, RFC 7493).
const MAX_EXACT_INTEGER: u64 = (1 << 53) - 1;

/// INVARIANT: no integer argument is one the server may read as another number. Cedar's `Long`
/// is exact to 2^63, but a JavaScript server (the reference servers, most MCP servers) reads
/// numbers as doubles: beyond ±(2^53 − 1) the value it acts on is not the one policy decided on
/// (`9007199254740993` is read as `9007199254740992`). Such an argument is refused
/// (`invalid_context`, naming it), never sent.
fn exact_integers(value: &Value, at: &str) -> Result<(), Failure> {
    match value {
        Value::Number(n) => {
            let exact = n
                .as_u64()
                .map(|u| u <= MAX_EXACT_INTEGER)
                .or_else(|| n.as_i64().map(|i| i.unsigned_abs() <= MAX_EXACT_INTEGER))
                .unwrap_or(true);
            if exact {
                return Ok(());
            }
            Err(Failure::request(&authorize::RequestError::new(
                crate::error::ErrorCode::InvalidContext,
                format!(
                    "`{at}` is {n}, beyond ±{MAX_EXACT_INTEGER} (2^53 − 1): an MCP server may read it as another number than the one policy decides on"
                ),
            )))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| exact_integers(v, &format!("{at}[{i}]"))),
        Value::Object(fields) => fields
            .iter()
            .try_for_each(|(k, v)| exact_integers(v, &format!("{at}.{k}"))),
        _ => Ok(()),
    }
}

/// The call's one decision, through the decision path `/v1/authorize` takes.
pub fn decide(call: &Call, server: &str, params: &CallToolRequestParams) -> Result<Outcome, Failure> {
    let bundle = &call.snap.bundle;
    let principal = EntityRef {
        uid: agent_uid(&call.agent.row.id).map_err(|e| internal(&e))?,
        field: "principal".to_owned(),
    };
    let action = authorize::entity_ref(bundle, "Action", &action_id(server, &params.name), "params.name".to_owned())
        .map_err(|e| Failure::request(&e))?;
    let resource = authorize::entity_ref(bundle, SERVER_TYPE, server, "resource".to_owned())
        .map_err(|e| Failure::request(&e))?;
    let parts = Parts {
        principal,
        action,
        resource,
        context: Some(Value::Object(params.arguments.clone().unwrap_or_default())),
        context_field: "params.arguments".to_owned(),
    };
    authorize::decide_observed(&call.snap, parts, now(), Api::Mcp).map_err(|e| Failure::request(&e))
}

/// A denied call's answer: a tool error the agent reads, with the explanation `/v1/authorize`
/// gives (reasons, the bound that denied, what would be needed, the policy version).
fn denied(snap: &Snapshot, o: &Outcome) -> CallToolResult {
    let explained = json!({
        "code": McpCode::Denied,
        "decision": "Deny",
        "reasons": o.decision.reasons,
        "errors": o.decision.errors,
        "denied_by": o.denied_by,
        "needed": o.needed,
        "policy_version": snap.bundle.version,
    });
    let mut r = CallToolResult::error(vec![ContentBlock::text(format!(
        "denied by deputy's policies; not sent to the server: {explained}"
    ))]);
    r.structured_content = Some(explained);
    r
}

fn internal(e: &dyn std::fmt::Display) -> Failure {
    tracing::error!(error = %e, "MCP gateway: internal error; the call failed closed");
    Failure::new(RpcCode::INTERNAL_ERROR, McpCode::Internal, "internal error; the call was not made")
}

/// A refusal by one of deputy's own tools (`{code, message, help?, …}`, as the HTTP API
/// answers it) as a tool error.
pub fn own_error(body: Value) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(body.to_string())]);
    r.structured_content = Some(body);
    r
}
