//! The MCP gateway end to end: a real deputy on 127.0.0.1:0 in front of a real MCP server
//! written by others (the reference filesystem server, `@modelcontextprotocol/server-filesystem`,
//! installed by scripts/setup into tests/mcp-servers/), called by a real MCP client written by
//! others (rmcp's streamable HTTP client), plus raw HTTP for what a client library would not
//! send. Bundle: tests/fixtures/mcp (its `fs.cedarschema` is the schema generator's output).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::common::mcp::{self, LEAD};

use std::path::Path;
use std::time::Duration;

use common::{delete_as, get_as, post_as, Options, TestServer};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceError, ServiceExt};
use serde_json::{json, Value};

const ADMIN: &str = "admin-credential-for-the-mcp-tests";
const INTERN: &str = "intern-credential-from-a-secret-0123";

struct Env {
    server: TestServer,
    bundle: tempfile::TempDir,
    _state: tempfile::TempDir,
    /// The directory the filesystem server may touch.
    root: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
}

impl Env {
    fn start() -> Env {
        let bundle = tempfile::tempdir().unwrap();
        common::copy_dir(&common::repo_root().join("tests/fixtures/mcp"), bundle.path());
        let state = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        // The server resolves symlinks (macOS /tmp, …): name the root as it does.
        std::fs::create_dir(root.path().join("drafts")).unwrap();
        std::fs::write(root.path().join("notes.txt"), "hello from the notes").unwrap();
        let root_arg = root.path().canonicalize().unwrap().display().to_string();
        let options = Options {
            state: Some(state.path().to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            agent_tokens: [("lead", LEAD), ("intern", INTERN)]
                .into_iter()
                .map(|(a, t)| (a.to_owned(), t.to_owned()))
                .collect(),
            mcp_servers: vec![deputy::mcp::ServerConfig::new(
                "fs",
                vec![mcp::server_bin("mcp-server-filesystem").display().to_string(), root_arg],
            )
            .unwrap()],
            ..Options::default()
        };
        let server = TestServer::start(bundle.path(), options);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Env {
            server,
            bundle,
            _state: state,
            root,
            rt,
        }
    }

    /// A path under the server's root, as the server names it.
    fn path(&self, rel: &str) -> String {
        self.root.path().canonicalize().unwrap().join(rel).display().to_string()
    }

    /// An MCP client session with `/mcp/<server>` as the holder of `token`.
    fn client(&self, server: &str, token: &str) -> Client<'_> {
        let uri = format!("http://{}/mcp/{server}", self.server.addr);
        let config = StreamableHttpClientTransportConfig::with_uri(uri).auth_header(token);
        let service = self
            .rt
            .block_on(async { ().serve(StreamableHttpClientTransport::from_config(config)).await })
            .unwrap_or_else(|e| panic!("the MCP client could not start a session with `{server}`: {e}"));
        Client { env: self, service }
    }

    /// `POST /mcp/<server>` with raw bytes (what a client library would not send).
    fn raw(&self, server: &str, token: Option<&str>, body: &[u8]) -> common::Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        self.server
            .request("POST", &format!("/mcp/{server}"), &headers, Some(body))
    }

    /// A child of the lead with `grant`, spawned over the HTTP API.
    fn spawn_child(&self, grant: &str) -> common::Agent {
        common::applied(&common::spawn(
            &self.server,
            LEAD,
            json!({"grant": grant, "ttl_seconds": 600, "task": "read what the lead points at"}),
        ))
    }

    /// Rewrites the admin policies and reloads now.
    fn reload_with_admin_policies(&self, text: &str) {
        std::fs::write(self.bundle.path().join("policies/admin.cedar"), text).unwrap();
        let reloaded = self.server.reload();
        assert!(reloaded.is_ok(), "{reloaded:?}");
    }
}

struct Client<'a> {
    env: &'a Env,
    service: RunningService<RoleClient, ()>,
}

impl Client<'_> {
    fn tool_names(&self) -> Vec<String> {
        let tools = self.env.rt.block_on(self.service.peer().list_all_tools()).unwrap();
        let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
        names.sort();
        names
    }

    fn call(&self, tool: &str, args: Value) -> Result<CallToolResult, ServiceError> {
        let Value::Object(args) = args else {
            panic!("arguments must be an object")
        };
        self.env.rt.block_on(
            self.service
                .peer()
                .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args)),
        )
    }

    /// A call that must answer a result (allowed or denied), not a protocol error.
    fn result(&self, tool: &str, args: Value) -> CallToolResult {
        self.call(tool, args.clone())
            .unwrap_or_else(|e| panic!("`{tool}` {args} failed: {e:?}"))
    }

    /// A call that must fail with a JSON-RPC error: its `data`.
    fn rpc_error(&self, tool: &str, args: Value) -> Value {
        match self.call(tool, args.clone()) {
            Err(ServiceError::McpError(e)) => e.data.unwrap_or(Value::Null),
            other => panic!("`{tool}` {args}: expected a JSON-RPC error, got {other:?}"),
        }
    }
}

/// The text of a result's content.
fn text(r: &CallToolResult) -> String {
    serde_json::to_value(&r.content).unwrap().to_string()
}

/// The denial a denied call carries, or `None` for a call that reached the server.
fn denial(r: &CallToolResult) -> Option<Value> {
    let s = r.structured_content.clone()?;
    (s["code"] == "mcp_denied").then_some(s)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn tools_list_shows_what_each_agent_could_call() {
    let env = Env::start();
    // The lead's grant names move_file too, but an admin forbid denies it in every context;
    // write_file is allowed only for some paths: shown.
    assert_eq!(
        env.client("fs", LEAD).tool_names(),
        names(&["get_file_info", "list_directory", "read_text_file", "write_file"])
    );
    assert_eq!(env.client("fs", INTERN).tool_names(), names(&["list_directory"]));
    // A managed child of the lead, with a narrower grant than the lead's.
    let child = env.spawn_child(
        r#"permit (principal == ?principal, action == Action::"fs/read_text_file", resource == McpServer::"fs");"#,
    );
    assert_eq!(env.client("fs", &child.token).tool_names(), names(&["read_text_file"]));
    // What tools/list shows agrees with the capabilities endpoint the agent reads.
    let caps = get_as(&env.server, LEAD, "/v1/agents/lead/capabilities").json();
    let conditional: Vec<&str> = caps["conditional"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["action"].as_str())
        .collect();
    assert!(conditional.contains(&"fs/write_file"), "{caps}");
}

#[test]
fn an_allowed_call_reaches_the_server_and_a_denied_one_does_not() {
    let env = Env::start();
    let lead = env.client("fs", LEAD);
    // Allowed: the server answers with the file's content.
    let read = lead.result("read_text_file", json!({"path": env.path("notes.txt")}));
    assert!(denial(&read).is_none() && read.is_error != Some(true), "{read:?}");
    assert!(text(&read).contains("hello from the notes"), "{read:?}");

    // A condition on an argument: writing inside drafts/ is allowed and happens...
    let drafted = env.path("drafts/plan.md");
    let wrote = lead.result("write_file", json!({"path": drafted, "content": "step 1"}));
    assert!(denial(&wrote).is_none() && wrote.is_error != Some(true), "{wrote:?}");
    assert_eq!(std::fs::read_to_string(&drafted).unwrap(), "step 1");

    // ...outside it, or climbing out of it, the call is denied and never reaches the server:
    // no file appears.
    for path in [env.path("secret.txt"), env.path("drafts/../secret.txt")] {
        let denied = lead.result("write_file", json!({"path": path, "content": "leak"}));
        assert_eq!(denied.is_error, Some(true), "{denied:?}");
        let why = denial(&denied).unwrap_or_else(|| panic!("no denial in {denied:?}"));
        assert_eq!(why["decision"], "Deny");
        assert_eq!(why["denied_by"]["bound"], "admin", "{why}");
        assert_eq!(why["policy_version"], env.server.version().unwrap().as_str());
        assert!(text(&denied).contains("denied by deputy"), "{denied:?}");
        assert!(
            !env.root.path().join("secret.txt").exists(),
            "a denied write reached the server"
        );
    }

    // An admin forbid names its policy; the file is not moved.
    let moved = lead.result(
        "move_file",
        json!({"source": env.path("notes.txt"), "destination": env.path("drafts/notes.txt")}),
    );
    let why = denial(&moved).unwrap_or_else(|| panic!("move_file was not denied: {moved:?}"));
    assert_eq!(why["reasons"], json!(["fs-no-move"]), "{why}");
    assert!(env.root.path().join("notes.txt").exists() && !env.root.path().join("drafts/notes.txt").exists());

    // The intern's grant does not name write_file: denied by its grant, with what it would need.
    let intern = env.client("fs", INTERN);
    let denied = intern.result(
        "write_file",
        json!({"path": env.path("drafts/intern.md"), "content": "x"}),
    );
    let why = denial(&denied).unwrap();
    assert_eq!(why["denied_by"]["bound"], "grant", "{why}");
    assert_eq!(why["needed"]["requestable"], true, "{why}");
    assert!(!env.root.path().join("drafts/intern.md").exists());
}

#[test]
fn the_gateway_decides_exactly_as_v1_authorize() {
    let env = Env::start();
    let child = env.spawn_child(
        r#"permit (principal == ?principal, action in [Action::"fs/read_text_file", Action::"fs/write_file"], resource == McpServer::"fs");"#,
    );
    let cases = [
        ("read_text_file", json!({"path": env.path("notes.txt")})),
        ("write_file", json!({"path": env.path("drafts/a.md"), "content": "a"})),
        ("write_file", json!({"path": env.path("b.md"), "content": "b"})),
        (
            "write_file",
            json!({"path": env.path("drafts/../c.md"), "content": "c"}),
        ),
        (
            "move_file",
            json!({"source": env.path("notes.txt"), "destination": env.path("n2.txt")}),
        ),
        ("list_directory", json!({"path": env.path("")})),
    ];
    let (mut allows, mut denies) = (0u32, 0u32);
    for (agent, token) in [
        ("lead", LEAD),
        ("intern", INTERN),
        (child.id.as_str(), child.token.as_str()),
    ] {
        let client = env.client("fs", token);
        for (tool, args) in &cases {
            let via_http = post_as(
                &env.server,
                token,
                "/v1/authorize",
                &json!({
                    "principal": {"type": "Agent", "id": agent},
                    "action": {"type": "Action", "id": format!("fs/{tool}")},
                    "resource": {"type": "McpServer", "id": "fs"},
                    "context": args,
                }),
            )
            .json();
            let got = client.result(tool, args.clone());
            match denial(&got) {
                None => {
                    assert_eq!(
                        via_http["decision"], "Allow",
                        "{agent} {tool} {args}: the gateway allowed, /v1/authorize: {via_http}"
                    );
                    allows += 1;
                }
                Some(why) => {
                    assert_eq!(via_http["decision"], "Deny", "{agent} {tool} {args}");
                    assert!(
                        why["policy_version"].is_string() && why["denied_by"]["bound"].is_string(),
                        "{why}"
                    );
                    for field in ["reasons", "errors", "denied_by", "needed", "policy_version"] {
                        assert_eq!(why[field], via_http[field], "{agent} {tool} {args}: `{field}`");
                    }
                    denies += 1;
                }
            }
        }
    }
    // Paths built from pieces a condition on `context.path` could trip over: every one decided
    // alike both ways.
    let lead = env.client("fs", LEAD);
    let pieces = [
        "drafts",
        "..",
        "notes.txt",
        "Drafts",
        "drafts..",
        "a b",
        "é",
        "*",
        "",
        "drafts/",
    ];
    for first in pieces {
        for second in pieces {
            let args = json!({"path": format!("{}/{first}/{second}", env.path("")), "content": "p"});
            let via_http = post_as(
                &env.server,
                LEAD,
                "/v1/authorize",
                &json!({
                    "principal": {"type": "Agent", "id": "lead"},
                    "action": {"type": "Action", "id": "fs/write_file"},
                    "resource": {"type": "McpServer", "id": "fs"},
                    "context": args,
                }),
            )
            .json();
            let allowed = denial(&lead.result("write_file", args.clone())).is_none();
            assert_eq!(allowed, via_http["decision"] == "Allow", "{args}: {via_http}");
            if allowed {
                allows += 1;
            } else {
                denies += 1;
            }
        }
    }
    assert!(
        allows >= 5 && denies >= 5,
        "{allows} allows, {denies} denies: the cases do not cover both"
    );
    // Observed as decisions of their own (`api="mcp"`), beside /v1/authorize's: one each per case.
    let metrics = env.server.get("/metrics").text();
    for (outcome, want) in [("allow", allows), ("deny", denies)] {
        assert_eq!(
            decisions(&metrics, "mcp", outcome),
            f64::from(want),
            "{outcome}\n{metrics}"
        );
        assert_eq!(
            decisions(&metrics, "authorize", outcome),
            f64::from(want),
            "{outcome}\n{metrics}"
        );
    }
}

/// `deputy_decisions_total{api, outcome}` in a scrape.
fn decisions(metrics: &str, api: &str, outcome: &str) -> f64 {
    let (api, outcome) = (format!("api=\"{api}\""), format!("outcome=\"{outcome}\""));
    metrics
        .lines()
        .find(|l| l.starts_with("deputy_decisions_total{") && l.contains(&api) && l.contains(&outcome))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no deputy_decisions_total{{{api},{outcome}}} in\n{metrics}"))
}

#[test]
fn identity_comes_only_from_the_credential() {
    let env = Env::start();
    let init = serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}},
    }))
    .unwrap();
    for token in [None, Some("not-a-credential"), Some("dpt.lead.forged")] {
        let r = env.raw("fs", token, &init);
        assert_eq!(r.status, 401, "{token:?}: {}", r.text());
        assert_eq!(r.json()["code"], "unauthenticated");
    }
    let r = env.raw("fs", Some(ADMIN), &init);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("not_an_agent")),
        "{}",
        r.text()
    );
    // An rmcp client without a credential cannot even start a session.
    let config = StreamableHttpClientTransportConfig::with_uri(format!("http://{}/mcp/fs", env.server.addr));
    let started = env
        .rt
        .block_on(async { ().serve(StreamableHttpClientTransport::from_config(config)).await });
    assert!(started.is_err(), "a session started without a credential");

    // Nothing in a message names the principal: a `principal` or `_meta` naming the lead,
    // sent with the intern's credential, is the intern's call (denied by its grant).
    let call = serde_json::to_vec(&json!({
        "jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "principal": {"type": "Agent", "id": "lead"},
        "params": {"name": "read_text_file", "arguments": {"path": env.path("notes.txt")},
                   "_meta": {"principal": "lead", "agent": "lead"}},
    }))
    .unwrap();
    let raw = env.raw("fs", Some(INTERN), &call);
    assert_eq!(raw.header("x-deputy-policy-version"), env.server.version().as_deref());
    let r = raw.json();
    assert_eq!(r["result"]["structuredContent"]["denied_by"]["bound"], "grant", "{r}");

    // A revoked child's credential stops working at once, for listing and calling.
    let child = env.spawn_child(
        r#"permit (principal == ?principal, action == Action::"fs/read_text_file", resource == McpServer::"fs");"#,
    );
    let client = env.client("fs", &child.token);
    assert_eq!(client.tool_names(), names(&["read_text_file"]));
    let revoked = delete_as(&env.server, LEAD, &format!("/v1/delegations/{}", child.id));
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let list = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})).unwrap();
    let r = env.raw("fs", Some(&child.token), &list);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (401, json!("unauthenticated")),
        "{}",
        r.text()
    );
    assert!(client
        .call("read_text_file", json!({"path": env.path("notes.txt")}))
        .is_err());
}

#[test]
fn bad_calls_fail_closed_naming_what_is_wrong() {
    let env = Env::start();
    let lead = env.client("fs", LEAD);
    // Tools the server does not have, including names that try to reach another server's or
    // another tool's action.
    for tool in [
        "nope",
        "write_file\"",
        "../write_file",
        "deputy/delegate",
        "fs/write_file",
        "WRITE_FILE",
        "",
    ] {
        let data = lead.rpc_error(tool, json!({}));
        assert_eq!(data["code"], "mcp_unknown_tool", "{tool}: {data}");
    }
    // An argument the tool's action does not declare: refused (Cedar's strict validation),
    // never passed on unseen; the file is not written.
    let path = env.path("drafts/extra.md");
    let data = lead.rpc_error("write_file", json!({"path": path, "content": "x", "mode": "0777"}));
    assert_eq!(data["code"], "invalid_context", "{data}");
    assert!(data["message"].as_str().unwrap().contains("params.arguments"), "{data}");
    // A mistyped or missing argument, likewise.
    let data = lead.rpc_error("write_file", json!({"path": 7, "content": "x"}));
    assert_eq!(data["code"], "invalid_context", "{data}");
    let data = lead.rpc_error("write_file", json!({"content": "x"}));
    assert_eq!(data["code"], "invalid_context", "{data}");
    // `read_text_file`'s `head` is a JSON number, which has no Cedar type: left out of the
    // schema, so a call that passes it is refused.
    let data = lead.rpc_error("read_text_file", json!({"path": env.path("notes.txt"), "head": 1}));
    assert_eq!(data["code"], "invalid_context", "{data}");
    // deputy supplies `taint` itself: an argument of that name is refused.
    let data = lead.rpc_error("write_file", json!({"path": path, "content": "x", "taint": 0}));
    assert_eq!(data["code"], "mcp_reserved_argument", "{data}");
    assert!(!Path::new(&path).exists());

    // Server names are one path segment of known names.
    for (path, status, code) in [
        ("/mcp/FS", 404, "mcp_server_not_found"),
        ("/mcp/fs%2F..%2Fdeputy", 404, "mcp_server_not_found"),
        ("/mcp/nope", 404, "mcp_server_not_found"),
        ("/mcp/fs/..", 404, "not_found"),
        ("/mcp/", 404, "not_found"),
    ] {
        let r = post_as(
            &env.server,
            LEAD,
            path,
            &json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
        );
        assert_eq!((r.status, r.json()["code"].as_str().unwrap()), (status, code), "{path}");
    }
    // A body over the limit is refused before it is read whole; so is a foreign Origin.
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"write_file","arguments":{{"path":"{}","content":"{}"}}}}}}"#,
        env.path("drafts/huge.md"),
        "x".repeat(2 << 20)
    );
    let r = env.raw("fs", Some(LEAD), huge.as_bytes());
    assert_eq!((r.status, r.json()["code"].clone()), (413, json!("body_too_large")));
    assert!(!env.root.path().join("drafts/huge.md").exists());
    let r = env.server.request(
        "POST",
        "/mcp/fs",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {LEAD}")),
            ("Origin", "http://evil.example"),
        ],
        Some(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (403, json!("mcp_origin_forbidden"))
    );
    // Not JSON-RPC, a batch, an unknown method: JSON-RPC errors with deputy's code.
    for (body, code) in [
        (
            json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]),
            "mcp_invalid_message",
        ),
        (
            json!({"jsonrpc": "1.0", "id": 1, "method": "ping"}),
            "mcp_invalid_message",
        ),
        (
            json!({"jsonrpc": "2.0", "id": null, "method": "tools/list"}),
            "mcp_invalid_message",
        ),
        (
            json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "tools/list"}),
            "mcp_invalid_message",
        ),
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": "resources/list"}),
            "mcp_method_not_found",
        ),
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}}),
            "mcp_invalid_message",
        ),
    ] {
        let r = env.raw("fs", Some(LEAD), &serde_json::to_vec(&body).unwrap());
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        assert_eq!(r.json()["error"]["data"]["code"], code, "{body}: {}", r.text());
    }
    // Duplicate keys: the server gets the arguments deputy decided on (re-sent as parsed), so
    // no parser difference lets a checked path stand in for another.
    let dup = |first: &str, last: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{{"name":"write_file","arguments":{{"path":"{first}","content":"dup","path":"{last}"}}}}}}"#
        )
    };
    let r = env
        .raw(
            "fs",
            Some(LEAD),
            dup(&env.path("drafts/dup.md"), &env.path("dup.md")).as_bytes(),
        )
        .json();
    assert_eq!(r["result"]["structuredContent"]["code"], "mcp_denied", "{r}");
    assert!(!env.root.path().join("dup.md").exists() && !env.root.path().join("drafts/dup.md").exists());
    let r = env
        .raw(
            "fs",
            Some(LEAD),
            dup(&env.path("dup.md"), &env.path("drafts/dup.md")).as_bytes(),
        )
        .json();
    assert!(r["result"]["content"].to_string().contains("Successfully wrote"), "{r}");
    assert!(!env.root.path().join("dup.md").exists() && env.root.path().join("drafts/dup.md").exists());
    // A notification is accepted with no answer.
    let r = env.raw(
        "fs",
        Some(LEAD),
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!((r.status, r.body.len()), (202, 0), "{}", r.text());
    // GET (a server stream) is not offered.
    let r = get_as(&env.server, LEAD, "/mcp/fs");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
}

#[test]
fn a_reload_changes_what_tools_list_shows_on_the_next_call() {
    let env = Env::start();
    let lead = env.client("fs", LEAD);
    assert!(lead.tool_names().contains(&"read_text_file".to_owned()));
    let admin = std::fs::read_to_string(env.bundle.path().join("policies/admin.cedar")).unwrap();
    env.reload_with_admin_policies(&format!(
        "{admin}\n@id(\"no-reading-today\")\nforbid (principal, action == Action::\"fs/read_text_file\", resource);\n"
    ));
    // The same session, the next request: the tool is gone and a call of it is denied.
    assert_eq!(
        lead.tool_names(),
        names(&["get_file_info", "list_directory", "write_file"])
    );
    let denied = lead.result("read_text_file", json!({"path": env.path("notes.txt")}));
    assert_eq!(denial(&denied).unwrap()["reasons"], json!(["no-reading-today"]));
    env.reload_with_admin_policies(&admin);
    assert!(lead.tool_names().contains(&"read_text_file".to_owned()));
}

#[test]
fn deputys_own_tools_hide_delegate_from_who_may_not_delegate() {
    let env = Env::start();
    let lead = env.client("deputy", LEAD);
    assert_eq!(
        lead.tool_names(),
        names(&["capabilities", "delegate", "request_permission"])
    );
    let intern = env.client("deputy", INTERN);
    assert_eq!(intern.tool_names(), names(&["capabilities", "request_permission"]));
    // Hidden is not the only guard: the spawn itself refuses the intern.
    let refused = intern.result(
        "delegate",
        json!({"grant": "permit (principal == ?principal, action == Action::\"fs/list_directory\", resource == McpServer::\"fs\");",
               "ttl_seconds": 60, "task": "look"}),
    );
    assert_eq!(refused.is_error, Some(true));
    assert_eq!(refused.structured_content.unwrap()["code"], "delegation_forbidden");

    // The capabilities tool is the agent's own capabilities.
    let caps = intern.result("capabilities", json!({})).structured_content.unwrap();
    assert_eq!(caps["agent"], "intern");
    assert_eq!(caps["can_delegate"], false);

    // The lead delegates through the tool; the child's credential works on the gateway.
    let spawned = lead
        .result(
            "delegate",
            json!({"grant": "permit (principal == ?principal, action == Action::\"fs/list_directory\", resource == McpServer::\"fs\");",
                   "ttl_seconds": 600, "task": "list the drafts"}),
        )
        .structured_content
        .unwrap();
    assert_eq!(spawned["outcome"], "applied", "{spawned}");
    let token = spawned["credential"].as_str().unwrap();
    assert_eq!(env.client("fs", token).tool_names(), names(&["list_directory"]));
    // The child asks for more through request_permission; its grantor sees the request.
    let child = env.client("deputy", token);
    assert_eq!(child.tool_names(), names(&["capabilities", "request_permission"]));
    let asked = child
        .result(
            "request_permission",
            json!({"grant": "permit (principal == ?principal, action == Action::\"fs/read_text_file\", resource == McpServer::\"fs\");",
                   "reason": "read the plan"}),
        )
        .structured_content
        .unwrap();
    assert_eq!(asked["status"], "pending", "{asked}");
    assert!(asked["request_id"].is_string(), "{asked}");
    let pending = get_as(&env.server, LEAD, "/v1/permission-requests").json();
    assert!(
        pending["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["request_id"] == asked["request_id"]),
        "{pending}"
    );
}

#[test]
fn an_upstream_crash_is_a_clean_error_and_the_server_is_started_again() {
    let env = Env::start();
    let lead = env.client("fs", LEAD);
    let read = |c: &Client<'_>| c.call("read_text_file", json!({"path": env.path("notes.txt")}));
    assert!(text(&read(&lead).unwrap()).contains("hello"));
    let root = env.root.path().canonicalize().unwrap().display().to_string();
    let pids = upstream_pids(&root);
    assert_eq!(pids.len(), 1, "expected one filesystem server for {root}: {pids:?}");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Every answer after the crash is either a clean upstream error or (once deputy saw the
    // exit and started the server again) the file: never a hang, a dropped connection or a
    // crashed sidecar.
    let recovered = common::wait_until(Duration::from_secs(30), || match read(&lead) {
        Ok(r) => text(&r).contains("hello"),
        Err(ServiceError::McpError(e)) => {
            assert_eq!(e.data.unwrap()["code"], "mcp_upstream_unavailable");
            false
        }
        Err(e) => panic!("not a clean error: {e:?}"),
    });
    assert!(recovered, "the filesystem server was not started again");
    let after = upstream_pids(&root);
    assert!(after.len() == 1 && after[0] != pids[0], "{pids:?} -> {after:?}");
    assert_eq!(env.server.get("/healthz").status, 200);
}

/// The processes whose command line names `root` (the filesystem server of one test).
fn upstream_pids(root: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.contains(&root.as_bytes()) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn the_committed_schema_fragment_is_what_the_generator_prints() {
    let root = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args(["mcp", "schema", "fs", "--"])
        .arg(mcp::server_bin("mcp-server-filesystem"))
        .arg(root.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed =
        std::fs::read_to_string(common::repo_root().join("tests/fixtures/mcp/schema/fs.cedarschema")).unwrap();
    assert_eq!(
        printed, committed,
        "tests/fixtures/mcp/schema/fs.cedarschema is not what `deputy mcp schema` prints now"
    );
    // The numbers it cannot type are named, on stderr and in the fragment.
    assert!(stderr.contains("`fs/read_text_file`: `head` left out"), "{stderr}");
    assert!(printed.contains("// Left out: `head`"), "{printed}");
    // A bad name is refused before anything starts.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args(["mcp", "schema", "deputy", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
}

#[test]
fn the_python_sdk_client_sees_the_same_gateway() {
    let env = Env::start();
    let python = common::venv::tool("python3");
    let script = common::repo_root().join("tests/fixtures/mcp_client.py");
    let run = |token: &str, calls: &[(&str, Value)]| -> Value {
        let mut cmd = std::process::Command::new(&python);
        cmd.arg(&script)
            .arg(format!("http://{}/mcp/fs", env.server.addr))
            .arg(token);
        for (tool, args) in calls {
            cmd.arg(tool).arg(args.to_string());
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "the Python MCP client failed (is `mcp` installed? {}): {stderr}",
            common::venv::SETUP_HINT
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    };
    let lead = run(
        LEAD,
        &[
            ("read_text_file", json!({"path": env.path("notes.txt")})),
            ("write_file", json!({"path": env.path("loose.txt"), "content": "x"})),
            (
                "write_file",
                json!({"path": env.path("drafts/py.md"), "content": "from python"}),
            ),
            ("nope", json!({})),
        ],
    );
    assert_eq!(lead["protocol"], "2025-11-25", "{lead}");
    assert_eq!(
        lead["tools"],
        json!(["get_file_info", "list_directory", "read_text_file", "write_file"])
    );
    let calls = &lead["calls"];
    assert_eq!(calls[0]["is_error"], false, "{lead}");
    assert!(
        calls[0]["text"].as_str().unwrap().contains("hello from the notes"),
        "{lead}"
    );
    assert_eq!(
        (calls[1]["is_error"].clone(), calls[1]["structured"]["code"].clone()),
        (json!(true), json!("mcp_denied")),
        "{lead}"
    );
    assert!(!env.root.path().join("loose.txt").exists());
    assert_eq!(calls[2]["is_error"], false, "{lead}");
    assert_eq!(
        std::fs::read_to_string(env.root.path().join("drafts/py.md")).unwrap(),
        "from python"
    );
    assert_eq!(calls[3]["error"]["data"]["code"], "mcp_unknown_tool", "{lead}");
    let intern = run(INTERN, &[]);
    assert_eq!(intern["tools"], json!(["list_directory"]));
}

/// `deputy serve --mcp-server` end to end (the binary, its flag, a credential file), and the
/// embedding builder's `mcp_server`; bad server specs are refused before anything is served,
/// each named.
#[test]
fn the_serve_flag_and_the_embedding_builder_configure_servers() {
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo_root().join("tests/fixtures/mcp"), bundle.path());
    let (state, root, secrets) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    std::fs::write(secrets.path().join("intern"), INTERN).unwrap();
    let spec = format!(
        "fs={}",
        serde_json::to_string(&[
            mcp::server_bin("mcp-server-filesystem").display().to_string(),
            root.path().display().to_string()
        ])
        .unwrap()
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--no-watch",
            "--state",
        ])
        .arg(state.path())
        .arg("--bundle")
        .arg(bundle.path())
        .arg("--agent-credential-file")
        .arg(format!("intern={}", secrets.path().join("intern").display()))
        .args(["--mcp-server", &spec])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = common::listening_addr(&mut child);
    let list = common::send(
        addr,
        "POST",
        "/mcp/fs",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {INTERN}")),
        ],
        Some(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
    )
    .json();
    let _ = child.kill();
    let _ = child.wait();
    let tools: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(tools, ["list_directory"], "{list}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args([
            "serve",
            "--no-watch",
            "--mcp-server",
            "FS=x",
            "--mcp-server",
            "deputy=x",
            "--mcp-server",
            "fs",
            "--bundle",
        ])
        .arg(bundle.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for named in ["`FS`", "`deputy`", "`fs`"] {
        assert!(stderr.contains(named), "{named} not named: {stderr}");
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = rt.block_on(
        deputy::Sidecar::new(bundle.path())
            .listen("127.0.0.1:0".parse().unwrap())
            .state_dir(state.path())
            .no_watch()
            .mcp_server("fs", ["a"])
            .mcp_server("fs", ["b"])
            .start(),
    );
    assert!(started.is_err_and(|e| e.to_string().contains("configured twice")));
}

/// `deputy mcp schema --numbers-as-long`: the admin regenerates the fragment so that `head`
/// (a JSON number) is a `Long`; after the reload an integral `head` reaches the server and a
/// fractional one is refused before it.
#[test]
fn numbers_typed_long_pass_when_integral_and_are_refused_when_fractional() {
    let env = Env::start();
    std::fs::write(env.root.path().join("lines.txt"), "first\nsecond\nthird\n").unwrap();
    let lead = env.client("fs", LEAD);
    let data = lead.rpc_error("read_text_file", json!({"path": env.path("lines.txt"), "head": 1}));
    assert_eq!(data["code"], "invalid_context", "{data}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args(["mcp", "schema", "--numbers-as-long", "fs", "--"])
        .arg(mcp::server_bin("mcp-server-filesystem"))
        .arg(env.root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(env.bundle.path().join("schema/fs.cedarschema"), &out.stdout).unwrap();
    let reloaded = env.server.reload();
    assert!(reloaded.is_ok(), "{reloaded:?}");
    let read = lead.result("read_text_file", json!({"path": env.path("lines.txt"), "head": 1}));
    assert!(denial(&read).is_none(), "{read:?}");
    let got = text(&read);
    assert!(got.contains("first") && !got.contains("second"), "{got}");
    let data = lead.rpc_error("read_text_file", json!({"path": env.path("lines.txt"), "head": 1.5}));
    assert_eq!(data["code"], "invalid_context", "{data}");
}

/// A server that cannot be started, or exits at once, answers a clean JSON-RPC error on every
/// call; the sidecar keeps serving.
#[test]
fn a_server_that_cannot_start_is_a_clean_error() {
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo_root().join("tests/fixtures/mcp"), bundle.path());
    let state = tempfile::tempdir().unwrap();
    let server = |name: &str, command: &[&str]| {
        deputy::mcp::ServerConfig::new(name, command.iter().map(|s| (*s).to_owned()).collect()).unwrap()
    };
    let s = TestServer::start(
        bundle.path(),
        Options {
            state: Some(state.path().to_path_buf()),
            agent_tokens: [("intern".to_owned(), INTERN.to_owned())].into(),
            mcp_servers: vec![
                server("missing", &["/nonexistent/mcp-server"]),
                server("quits", &["false"]),
            ],
            ..Options::default()
        },
    );
    for name in ["missing", "quits"] {
        for method in ["tools/list", "tools/call"] {
            let r = post_as(
                &s,
                INTERN,
                &format!("/mcp/{name}"),
                &json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": "x", "arguments": {}}}),
            );
            assert_eq!(r.status, 200, "{name} {method}: {}", r.text());
            let body = r.json();
            assert_eq!(
                body["error"]["data"]["code"], "mcp_upstream_unavailable",
                "{name} {method}: {body}"
            );
            assert!(body["error"]["message"].as_str().unwrap().contains(name), "{body}");
        }
    }
    assert_eq!(s.get("/healthz").status, 200);
}

/// DESIGN §2 through MCP alone on the agent's side: a child is denied a tool with what it would
/// need, asks for exactly that with `request_permission`, its grantor approves over HTTP, and
/// the child's next `tools/list` and call have it.
#[test]
fn a_denied_child_asks_for_what_it_needs_and_acts_once_approved() {
    let env = Env::start();
    let child = env.spawn_child(
        r#"permit (principal == ?principal, action == Action::"fs/list_directory", resource == McpServer::"fs");"#,
    );
    let fs = env.client("fs", &child.token);
    assert_eq!(fs.tool_names(), names(&["list_directory"]));
    let args = json!({"path": env.path("notes.txt")});
    let why = denial(&fs.result("read_text_file", args.clone())).unwrap();
    assert_eq!(
        (why["denied_by"]["bound"].clone(), why["needed"]["approver"].clone()),
        (json!("grant"), json!("lead")),
        "{why}"
    );
    let asked = env
        .client("deputy", &child.token)
        .result(
            "request_permission",
            json!({"grant": why["needed"]["template"], "reason": "read the notes"}),
        )
        .structured_content
        .unwrap();
    assert_eq!(asked["status"], "pending", "{asked}");
    let approved = post_as(
        &env.server,
        LEAD,
        &format!("/v1/permission-requests/{}", asked["request_id"].as_str().unwrap()),
        &json!({"decision": "approve", "reason": "fine"}),
    );
    assert_eq!(approved.status, 200, "{}", approved.text());
    assert_eq!(fs.tool_names(), names(&["list_directory", "read_text_file"]));
    let read = fs.result("read_text_file", args);
    assert!(
        denial(&read).is_none() && text(&read).contains("hello from the notes"),
        "{read:?}"
    );
}

/// A server started through a wrapper (a shell, `npx`) runs as a grandchild of deputy, and may
/// start helpers of its own that do not read stdin; when deputy stops, its whole process group
/// goes, not only the process deputy started.
#[test]
fn stopping_deputy_stops_the_servers_it_started_and_their_children() {
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo_root().join("tests/fixtures/mcp"), bundle.path());
    let (state, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let root_arg = root.path().canonicalize().unwrap().display().to_string();
    let wrapped = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        // Not `exec`: the shell stays the server's parent; the helper ignores stdin.
        "python3 -c 'import time; time.sleep(300)' \"$1\" & \"$0\" \"$1\"".to_owned(),
        mcp::server_bin("mcp-server-filesystem").display().to_string(),
        root_arg.clone(),
    ];
    let s = TestServer::start(
        bundle.path(),
        Options {
            state: Some(state.path().to_path_buf()),
            agent_tokens: [("intern".to_owned(), INTERN.to_owned())].into(),
            mcp_servers: vec![deputy::mcp::ServerConfig::new("fs", wrapped).unwrap()],
            ..Options::default()
        },
    );
    let r = post_as(
        &s,
        INTERN,
        "/mcp/fs",
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )
    .json();
    assert_eq!(r["result"]["tools"][0]["name"], "list_directory", "{r}");
    assert_eq!(
        upstream_pids(&root_arg).len(),
        3,
        "the shell, the helper and the server"
    );
    drop(s);
    assert!(
        common::wait_until(Duration::from_secs(10), || upstream_pids(&root_arg).is_empty()),
        "left running after deputy stopped: {:?}",
        upstream_pids(&root_arg)
    );
}

/// An invocation session's credential is an identity of the gateway too: the session is the
/// callee, never more (its tools and decisions are the callee's), and it ends with the session.
#[test]
fn an_invocation_session_calls_tools_as_its_callee() {
    let env = Env::start();
    let invoked = post_as(
        &env.server,
        LEAD,
        "/v1/invocations",
        &json!({"callee": {"type": "Agent", "id": "intern"}, "task": "list the drafts", "ttl_seconds": 600}),
    );
    assert_eq!(invoked.status, 201, "{}", invoked.text());
    let id = invoked.json()["session_id"].as_str().unwrap().to_owned();
    let accepted = post_as(&env.server, INTERN, &format!("/v1/invocations/{id}/accept"), &json!({}));
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let token = accepted.json()["credential"].as_str().unwrap().to_owned();

    let session = env.client("fs", &token);
    assert_eq!(session.tool_names(), names(&["list_directory"]));
    let listed = session.result("list_directory", json!({"path": env.path("")}));
    assert!(
        denial(&listed).is_none() && text(&listed).contains("notes.txt"),
        "{listed:?}"
    );
    let denied = session.result("write_file", json!({"path": env.path("drafts/s.md"), "content": "x"}));
    assert_eq!(denial(&denied).unwrap()["denied_by"]["bound"], "grant");
    assert!(!env.root.path().join("drafts/s.md").exists());
    // A session may neither spawn nor file permission requests: it is shown `capabilities` only.
    let own = env.client("deputy", &token);
    assert_eq!(own.tool_names(), names(&["capabilities"]));

    let ended = delete_as(&env.server, LEAD, &format!("/v1/invocations/{id}"));
    assert_eq!(ended.status, 200, "{}", ended.text());
    let r = env.raw("fs", Some(&token), br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (401, json!("unauthenticated")),
        "{}",
        r.text()
    );
}

/// Calls made at once, the first calls included, share one upstream server (started once);
/// each gets its own answer.
#[test]
fn concurrent_calls_each_get_their_own_answer() {
    let env = Env::start();
    for i in 0..16 {
        std::fs::write(
            env.root.path().join(format!("drafts/{i}.md")),
            format!("file number {i}"),
        )
        .unwrap();
    }
    let answers: Vec<(usize, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let env = &env;
                scope.spawn(move || {
                    let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
                        "params": {"name": "read_text_file", "arguments": {"path": env.path(&format!("drafts/{i}.md"))}}});
                    (i, env.raw("fs", Some(LEAD), &serde_json::to_vec(&body).unwrap()).json())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, answer) in answers {
        assert_eq!(answer["id"], i, "{answer}");
        let got = answer["result"]["content"][0]["text"].as_str().unwrap_or_default();
        assert_eq!(got, format!("file number {i}"), "{answer}");
    }
    let root = env.root.path().canonicalize().unwrap().display().to_string();
    assert_eq!(
        upstream_pids(&root).len(),
        1,
        "the first calls started more than one server"
    );
}

/// A second server written by others, its fragment generated at test time: a tool whose
/// required arguments have no Cedar type (`get-sum`'s numbers) gets no action, so it is not
/// listed and a call of it is refused; generated with `--numbers-as-long` (and reloaded) it is
/// listed and callable with integers only.
#[test]
fn a_second_server_with_untyped_required_arguments() {
    let bundle = mcp::everything_bundle(
        "",
        "permit (principal is Agent, action, resource == McpServer::\"everything\");\n",
    );
    let generate = |numbers_as_long: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_deputy"));
        cmd.args(["mcp", "schema"]);
        if numbers_as_long {
            cmd.arg("--numbers-as-long");
        }
        let out = cmd
            .args(["everything", "--"])
            .arg(mcp::server_bin("mcp-server-everything"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(bundle.path().join("schema/everything.cedarschema"), &out.stdout).unwrap();
        String::from_utf8(out.stderr).unwrap()
    };
    let notes = generate(false);
    assert!(notes.contains("`everything/get-sum`: not generated"), "{notes}");
    let (s, _state) = mcp::serve_everything(bundle.path());
    assert!(
        s.version().is_some(),
        "the bundle did not load: {}",
        s.get("/v1/status").text()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let uri = format!("http://{}/mcp/everything", s.addr);
    let client = rt
        .block_on(async {
            ().serve(StreamableHttpClientTransport::from_config(
                StreamableHttpClientTransportConfig::with_uri(uri).auth_header(LEAD),
            ))
            .await
        })
        .unwrap();
    let tools = || -> Vec<String> {
        let listed = rt.block_on(client.peer().list_all_tools()).unwrap();
        listed.iter().map(|t| t.name.to_string()).collect()
    };
    let call = |tool: &str, args: Value| {
        let Value::Object(args) = args else { panic!() };
        rt.block_on(
            client
                .peer()
                .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args)),
        )
    };
    assert!(
        tools().contains(&"echo".to_owned()) && !tools().contains(&"get-sum".to_owned()),
        "{:?}",
        tools()
    );
    let echoed = call("echo", json!({"message": "through deputy"})).unwrap();
    assert!(text(&echoed).contains("through deputy"), "{echoed:?}");
    match call("get-sum", json!({"a": 2, "b": 3})) {
        Err(ServiceError::McpError(e)) => assert_eq!(e.data.unwrap()["code"], "unknown_action"),
        other => panic!("get-sum without an action was not refused: {other:?}"),
    }

    generate(true);
    assert!(s.reload().is_ok());
    assert!(tools().contains(&"get-sum".to_owned()), "{:?}", tools());
    let sum = call("get-sum", json!({"a": 2, "b": 3})).unwrap();
    assert!(text(&sum).contains('5'), "{sum:?}");
    match call("get-sum", json!({"a": 2.5, "b": 3})) {
        Err(ServiceError::McpError(e)) => assert_eq!(e.data.unwrap()["code"], "invalid_context"),
        other => panic!("a fractional argument was not refused: {other:?}"),
    }
}
