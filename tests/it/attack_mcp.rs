//! Attacks on the MCP gateway (docs/MCP.md) by an agent holding its own credential, against a
//! real deputy (in-process, or the real binary where its environment matters) in front of the
//! reference MCP servers scripts/setup installs (tests/mcp-servers/), spoken to as an attacker
//! would: raw JSON-RPC over HTTP with the agent's bearer credential.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::mcp::{self, LEAD};
use crate::common::{self, applied, post_as, spawn, Options, TestServer};

const ADMIN: &str = "admin-credential-for-the-mcp-attacks";

/// `tools/call` of `tool` with `arguments` on `/mcp/<server>` as the holder of `token`: the
/// JSON-RPC answer.
fn call(addr: std::net::SocketAddr, server: &str, token: &str, tool: &str, arguments: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": tool, "arguments": arguments}});
    let r = common::send(
        addr,
        "POST",
        &format!("/mcp/{server}"),
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {token}")),
        ],
        Some(&serde_json::to_vec(&body).unwrap()),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The denial of a denied call, or `None` for a call that reached the server.
fn denial(answer: &Value) -> Option<&Value> {
    let s = &answer["result"]["structuredContent"];
    (s["code"] == "mcp_denied").then_some(s)
}

/// The MCP tests' bundle plus the "everything" server's `get-env` tool (a tool that shows the
/// server's environment), allowed to every agent and granted to the lead.
fn bundle_with_get_env() -> tempfile::TempDir {
    mcp::everything_bundle(
        "action \"everything/get-env\" appliesTo {\n  principal: [Agent],\n  resource: [McpServer],\n  context: {},\n};\n",
        "permit (principal is Agent, action == Action::\"everything/get-env\", resource == McpServer::\"everything\");\n",
    )
}

/// A `deputy serve` child process, killed when dropped.
struct Binary {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Attack: the admin credential given as `DEPUTY_ADMIN_TOKEN` (as README and DELEGATION.md show)
/// was inherited by every upstream MCP server deputy starts, so an agent allowed one harmless
/// looking tool that shows its server's environment (here the reference "everything" server's
/// `get-env`; a shell or code tool does the same) read the admin credential and could act as
/// the admin. An upstream server gets none of deputy's own configuration (`DEPUTY_*`).
#[test]
fn an_upstream_server_never_inherits_deputys_admin_credential() {
    let bundle = bundle_with_get_env();
    let (state, secrets) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(secrets.path().join("lead"), LEAD).unwrap();
    let spec = format!(
        "everything={}",
        serde_json::to_string(&[mcp::server_bin("mcp-server-everything").display().to_string()]).unwrap()
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
        .arg(format!("lead={}", secrets.path().join("lead").display()))
        .args(["--mcp-server", &spec])
        .env("DEPUTY_ADMIN_TOKEN", ADMIN)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = common::listening_addr(&mut child);
    let deputy = Binary { child, addr };
    // The admin credential works (the environment reached deputy).
    let audit = common::send(
        deputy.addr,
        "GET",
        "/v1/audit",
        &[("Authorization", &format!("Bearer {ADMIN}"))],
        None,
    );
    assert_eq!(audit.status, 200, "{}", audit.text());

    let answer = call(deputy.addr, "everything", LEAD, "get-env", json!({}));
    assert!(denial(&answer).is_none(), "get-env was denied: {answer}");
    let shown = answer["result"]["content"].to_string();
    // The tool ran and showed its environment...
    assert!(shown.contains("PATH"), "get-env did not show an environment: {answer}");
    // ...without deputy's credential or configuration in it.
    assert!(
        !shown.contains(ADMIN),
        "an agent read deputy's admin credential through an MCP tool: {shown}"
    );
    assert!(
        !shown.contains("DEPUTY_"),
        "deputy's configuration reached the server: {shown}"
    );

    // Nor does the server hold any of deputy's files open (its state, its audit trail).
    let upstreams = children_of(deputy.child.id());
    assert!(!upstreams.is_empty(), "no upstream server runs under deputy");
    let state_dir = state.path().canonicalize().unwrap();
    for pid in upstreams {
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                assert!(
                    !target.starts_with(&state_dir),
                    "the upstream server {pid} holds deputy's {} open",
                    target.display()
                );
            }
        }
    }
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids
}

/// Two filesystem servers behind one deputy: `fs` (classified 2, its `read_text_file` a taint
/// source) over a directory holding a secret, `pub` (classified 0, its `write_file` a sink)
/// over a public one.
struct TaintEnv {
    bundle: tempfile::TempDir,
    state: tempfile::TempDir,
    secret: tempfile::TempDir,
    public: tempfile::TempDir,
}

impl TaintEnv {
    fn new() -> TaintEnv {
        let bundle = tempfile::tempdir().unwrap();
        common::copy_dir(&common::repo_root().join("tests/fixtures/mcp"), bundle.path());
        let b = bundle.path();
        let edit = |rel: &str, f: &dyn Fn(String) -> String| {
            let path = b.join(rel);
            let text = std::fs::read_to_string(&path).unwrap();
            let edited = f(text.clone());
            assert_ne!(text, edited, "{rel} unchanged");
            std::fs::write(path, edited).unwrap();
        };
        edit("schema/agents.cedarschema", &|t| {
            t.replace("entity McpServer;", "entity McpServer = { classification: Long };")
        });
        let fs = std::fs::read_to_string(b.join("schema/fs.cedarschema")).unwrap();
        std::fs::write(
            b.join("schema/pub.cedarschema"),
            fs.replace("action \"fs/", "action \"pub/"),
        )
        .unwrap();
        edit("schema/fs.cedarschema", &|t| {
            t.replace(
                "action \"fs/read_text_file\"",
                "@taint(\"source\")\naction \"fs/read_text_file\"",
            )
        });
        edit("schema/pub.cedarschema", &|t| {
            t.replace(
                "action \"pub/write_file\"",
                "@taint(\"sink\")\naction \"pub/write_file\"",
            )
        });
        std::fs::write(
            b.join("entities/servers.json"),
            r#"[{"uid": {"type": "McpServer", "id": "fs"}, "attrs": {"classification": 2}, "parents": []},
                {"uid": {"type": "McpServer", "id": "pub"}, "attrs": {"classification": 0}, "parents": []}]"#,
        )
        .unwrap();
        std::fs::write(
            b.join("policies/pub.cedar"),
            "@id(\"pub-write\")\npermit (principal is Agent, action == Action::\"pub/write_file\", resource == McpServer::\"pub\");\n",
        )
        .unwrap();
        let grant = b.join("grants/lead.cedar");
        let mut granted = std::fs::read_to_string(&grant).unwrap();
        granted.push_str(
            "permit (principal == ?principal, action == Action::\"pub/write_file\", resource == McpServer::\"pub\");\n",
        );
        std::fs::write(&grant, granted).unwrap();
        let secret = tempfile::tempdir().unwrap();
        std::fs::write(secret.path().join("secret.txt"), "the launch codes").unwrap();
        let public = tempfile::tempdir().unwrap();
        TaintEnv {
            bundle,
            state: tempfile::tempdir().unwrap(),
            secret,
            public,
        }
    }

    fn start(&self) -> TestServer {
        let fs = mcp::server_bin("mcp-server-filesystem").display().to_string();
        let canonical = |d: &Path| d.canonicalize().unwrap().display().to_string();
        let server = TestServer::start(
            self.bundle.path(),
            Options {
                state: Some(self.state.path().to_path_buf()),
                admin_token: Some(ADMIN.to_owned()),
                agent_tokens: [("lead".to_owned(), LEAD.to_owned())].into(),
                mcp_servers: vec![
                    deputy::mcp::ServerConfig::new("fs", vec![fs.clone(), canonical(self.secret.path())]).unwrap(),
                    deputy::mcp::ServerConfig::new("pub", vec![fs, canonical(self.public.path())]).unwrap(),
                ],
                ..Options::default()
            },
        );
        assert!(
            server.version().is_some(),
            "the bundle did not load: {}",
            server.get("/v1/status").text()
        );
        server
    }

    fn secret_path(&self) -> String {
        self.secret
            .path()
            .canonicalize()
            .unwrap()
            .join("secret.txt")
            .display()
            .to_string()
    }

    fn public_path(&self, name: &str) -> String {
        self.public
            .path()
            .canonicalize()
            .unwrap()
            .join(name)
            .display()
            .to_string()
    }
}

/// Attack: launder a secret read through a tool. An allowed `tools/call` of a taint source
/// raises the caller's taint as `/v1/authorize` does, durable before the secret is answered
/// (it survives a restart), and propagated to the parent: a later write-down through another
/// server's sink tool is denied by deputy itself and never reaches that server.
#[test]
fn a_secret_read_through_a_tool_cannot_be_written_down_even_after_a_restart() {
    let env = TaintEnv::new();
    let server = env.start();
    let child = applied(&spawn(
        &server,
        LEAD,
        json!({"grant": "permit (principal == ?principal, action == Action::\"fs/read_text_file\", resource == McpServer::\"fs\");\n\
                         permit (principal == ?principal, action == Action::\"pub/write_file\", resource == McpServer::\"pub\");",
               "ttl_seconds": 600, "task": "summarize the secret"}),
    ));
    // Untainted, the child writes to the public server.
    let before = env.public_path("before.md");
    let wrote = call(
        server.addr,
        "pub",
        &child.token,
        "write_file",
        json!({"path": before, "content": "hello"}),
    );
    assert!(denial(&wrote).is_none(), "{wrote}");
    assert!(Path::new(&before).exists(), "{wrote}");

    // It reads the secret through the classified server.
    let read = call(
        server.addr,
        "fs",
        &child.token,
        "read_text_file",
        json!({"path": env.secret_path()}),
    );
    assert!(read.to_string().contains("the launch codes"), "{read}");

    // Writing it down is denied, by taint, and nothing reaches the public server; the parent,
    // which the child reports to, is tainted too.
    let leak = env.public_path("leak.md");
    for token in [child.token.as_str(), LEAD] {
        let denied = call(
            server.addr,
            "pub",
            token,
            "write_file",
            json!({"path": leak, "content": "the launch codes"}),
        );
        let why = denial(&denied).unwrap_or_else(|| panic!("a write-down reached the server: {denied}"));
        assert_eq!(why["denied_by"]["bound"], "taint", "{why}");
        assert!(!Path::new(&leak).exists());
    }

    // The raise was durable before the secret was answered: after a restart it still holds.
    drop(server);
    let server = env.start();
    for token in [child.token.as_str(), LEAD] {
        let denied = call(
            server.addr,
            "pub",
            token,
            "write_file",
            json!({"path": leak, "content": "the launch codes"}),
        );
        let why =
            denial(&denied).unwrap_or_else(|| panic!("a write-down after a restart reached the server: {denied}"));
        assert_eq!(
            why["denied_by"],
            json!({"bound": "taint", "classification": 0, "taint": 2}),
            "{why}"
        );
    }
    assert!(!Path::new(&leak).exists());
    // And /v1/authorize agrees.
    let d = post_as(
        &server,
        &child.token,
        "/v1/authorize",
        &json!({"principal": {"type": "Agent", "id": child.id}, "action": {"type": "Action", "id": "pub/write_file"},
                "resource": {"type": "McpServer", "id": "pub"}, "context": {"path": leak, "content": "x"}}),
    )
    .json();
    assert_eq!(d["decision"], "Deny", "{d}");
}

/// Attack: make the shadow raise a taint or reach a server. With a shadow bundle that allows
/// everything, tool calls are compared beside the serving answers: the shadow's allow of a
/// denied write never reaches the server, and its allow of a denied read of a taint source
/// raises nothing (the reader still writes down afterwards).
#[test]
fn a_permissive_shadow_changes_no_tool_call_and_raises_no_taint() {
    let env = TaintEnv::new();
    // The serving bundle keeps the secret file from everyone.
    std::fs::write(
        env.bundle.path().join("policies/no-secret.cedar"),
        "@id(\"no-secret\")\nforbid (principal, action == Action::\"fs/read_text_file\", resource) when { context.path like \"*secret*\" };\n",
    )
    .unwrap();
    let shadow = tempfile::tempdir().unwrap();
    common::copy_dir(env.bundle.path(), shadow.path());
    std::fs::remove_file(shadow.path().join("policies/no-secret.cedar")).unwrap();
    std::fs::write(
        shadow.path().join("policies/admin.cedar"),
        "@id(\"shadow-all\")\npermit (principal, action, resource);\n",
    )
    .unwrap();
    let fs = mcp::server_bin("mcp-server-filesystem").display().to_string();
    let canonical = |d: &Path| d.canonicalize().unwrap().display().to_string();
    let server = TestServer::start(
        env.bundle.path(),
        Options {
            state: Some(env.state.path().to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            agent_tokens: [("lead".to_owned(), LEAD.to_owned())].into(),
            shadow: Some(shadow.path().to_path_buf()),
            mcp_servers: vec![
                deputy::mcp::ServerConfig::new("fs", vec![fs.clone(), canonical(env.secret.path())]).unwrap(),
                deputy::mcp::ServerConfig::new("pub", vec![fs, canonical(env.public.path())]).unwrap(),
            ],
            ..Options::default()
        },
    );
    let child = applied(&spawn(
        &server,
        LEAD,
        json!({"grant": "permit (principal == ?principal, action == Action::\"fs/read_text_file\", resource == McpServer::\"fs\");\n\
                         permit (principal == ?principal, action == Action::\"pub/write_file\", resource == McpServer::\"pub\");",
               "ttl_seconds": 600, "task": "summarize"}),
    ));
    // Denied by the serving bundle, allowed by the shadow's: the secret is not answered.
    let denied = call(
        server.addr,
        "fs",
        &child.token,
        "read_text_file",
        json!({"path": env.secret_path()}),
    );
    assert_eq!(
        denial(&denied).map(|d| d["reasons"].clone()),
        Some(json!(["no-secret"])),
        "{denied}"
    );
    assert!(!denied.to_string().contains("the launch codes"), "{denied}");
    // The lead writes over the secret (outside drafts/): denied by the serving admin policy,
    // allowed by the shadow's; the file is not written.
    let denied = call(
        server.addr,
        "fs",
        LEAD,
        "write_file",
        json!({"path": env.secret_path(), "content": "x"}),
    );
    assert!(denial(&denied).is_some(), "{denied}");
    assert_eq!(
        std::fs::read_to_string(env.secret.path().join("secret.txt")).unwrap(),
        "the launch codes"
    );
    // Both were compared, and differ...
    let mut report = Value::Null;
    let compared = common::wait_until(Duration::from_secs(20), || {
        report = common::get_as(&server, ADMIN, "/v1/shadow").json();
        report["differs"].as_u64().unwrap_or(0) >= 2
    });
    assert!(compared, "{report}");
    // ...and the child, whose read of the source the shadow allowed, is not tainted: it still
    // writes to the public server (a taint the shadow raised would deny it).
    let fine = env.public_path("fine.md");
    let wrote = call(
        server.addr,
        "pub",
        &child.token,
        "write_file",
        json!({"path": fine, "content": "fine"}),
    );
    assert!(
        denial(&wrote).is_none(),
        "the shadow's allow raised the reader's taint: {wrote}"
    );
    assert!(Path::new(&fine).exists());
}

/// Attack: race an emergency reload with a slow body. The agent sends a `tools/call`'s headers,
/// holds its body until the admin's reload (a forbid of the tool) is acknowledged, then sends
/// it: the call was decided against the snapshot loaded when the headers arrived (the old
/// bundle), so the tool ran after the forbid was serving, for as long as the body timeout
/// allows. `/v1/authorize` loads the snapshot once the body is in; so must the gateway.
#[test]
fn a_reload_acknowledged_while_a_calls_body_arrives_binds_that_call() {
    use std::io::{Read, Write};
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo_root().join("tests/fixtures/mcp"), bundle.path());
    let (state, root) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::write(root.path().join("notes.txt"), "the launch codes").unwrap();
    let root = root.path().canonicalize().unwrap();
    let server = TestServer::start(
        bundle.path(),
        Options {
            state: Some(state.path().to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            agent_tokens: [("lead".to_owned(), LEAD.to_owned())].into(),
            mcp_servers: vec![deputy::mcp::ServerConfig::new(
                "fs",
                vec![
                    mcp::server_bin("mcp-server-filesystem").display().to_string(),
                    root.display().to_string(),
                ],
            )
            .unwrap()],
            ..Options::default()
        },
    );
    let notes = root.join("notes.txt").display().to_string();
    // Allowed now (and the server is started).
    let read = call(server.addr, "fs", LEAD, "read_text_file", json!({"path": notes}));
    assert!(read.to_string().contains("the launch codes"), "{read}");

    let body = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "read_text_file", "arguments": {"path": notes}}}))
    .unwrap();
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        stream,
        "POST /mcp/fs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {LEAD}\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    // deputy asks for the body once it has authenticated the caller.
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(&got).contains("100 Continue\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(
            n > 0,
            "closed before asking for the body: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    // The admin forbids the tool; the reload is acknowledged...
    let admin = bundle.path().join("policies/admin.cedar");
    let mut text = std::fs::read_to_string(&admin).unwrap();
    text.push_str(
        "\n@id(\"stop-reading-now\")\nforbid (principal, action == Action::\"fs/read_text_file\", resource);\n",
    );
    std::fs::write(&admin, text).unwrap();
    assert!(server.reload().is_ok());
    // ...and only then does the call's body arrive.
    stream.write_all(&body).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let response = String::from_utf8_lossy(&rest).into_owned();
    let json_start = response.find("\r\n\r\n").map(|i| i + 4).unwrap_or(0);
    let answer: Value = serde_json::from_str(&response[json_start..]).unwrap_or_else(|e| panic!("{e}: {response}"));
    assert!(
        !answer.to_string().contains("the launch codes"),
        "a call decided after the forbid was acknowledged read the file: {answer}"
    );
    assert_eq!(
        denial(&answer).map(|d| d["reasons"].clone()),
        Some(json!(["stop-reading-now"])),
        "{answer}"
    );
}

/// Attack: see tools one could never call, among deputy's own. A session may not file
/// permission requests (`session_restricted`, as `POST /v1/permission-requests` refuses it),
/// yet `/mcp/deputy` listed `request_permission` to it. A session is shown only what it may
/// call; the call itself is refused all the same.
#[test]
fn a_session_is_not_shown_deputys_tools_it_may_not_call() {
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo_root().join("tests/fixtures/mcp"), bundle.path());
    let state = tempfile::tempdir().unwrap();
    const INTERN: &str = "intern-credential-from-a-secret-0123";
    let server = TestServer::start(
        bundle.path(),
        Options {
            state: Some(state.path().to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            agent_tokens: [
                ("lead".to_owned(), LEAD.to_owned()),
                ("intern".to_owned(), INTERN.to_owned()),
            ]
            .into(),
            ..Options::default()
        },
    );
    let invoked = post_as(
        &server,
        LEAD,
        "/v1/invocations",
        &json!({"callee": {"type": "Agent", "id": "intern"}, "task": "look", "ttl_seconds": 600}),
    );
    assert_eq!(invoked.status, 201, "{}", invoked.text());
    let id = invoked.json()["session_id"].as_str().unwrap().to_owned();
    let accepted = post_as(&server, INTERN, &format!("/v1/invocations/{id}/accept"), &json!({}));
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    let session = accepted.json()["credential"].as_str().unwrap().to_owned();

    let grant =
        "permit (principal == ?principal, action == Action::\"fs/read_text_file\", resource == McpServer::\"fs\");";
    // Over HTTP, and as a tool, the request is refused.
    let http = post_as(
        &server,
        &session,
        "/v1/permission-requests",
        &json!({"grant": grant, "reason": "r"}),
    );
    assert_eq!(http.json()["code"], "session_restricted", "{}", http.text());
    let asked = call(
        server.addr,
        "deputy",
        &session,
        "request_permission",
        json!({"grant": grant, "reason": "r"}),
    );
    assert_eq!(
        asked["result"]["structuredContent"]["code"], "session_restricted",
        "{asked}"
    );
    // So it is not listed.
    let list = common::send(
        server.addr,
        "POST",
        "/mcp/deputy",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {session}")),
        ],
        Some(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#),
    )
    .json();
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["capabilities"], "{list}");
}

/// Attack: tie the gateway up with a call that never ends. A tool call the server does not
/// answer is answered `mcp_upstream_timeout` after `DEFAULT_MCP_CALL_TIMEOUT`, and meanwhile
/// and afterwards other calls to the same server are answered at once: one hanging call holds
/// no lock and does not break the connection.
#[test]
fn a_call_the_server_never_answers_times_out_and_holds_up_no_other_call() {
    let bundle = mcp::everything_bundle(
        "action \"everything/echo\" appliesTo {\n  principal: [Agent],\n  resource: [McpServer],\n  context: { \"message\": String },\n};\n\
         action \"everything/trigger-long-running-operation\" appliesTo {\n  principal: [Agent],\n  resource: [McpServer],\n  context: { \"duration\"?: Long, \"steps\"?: Long },\n};\n",
        "permit (principal is Agent, action, resource == McpServer::\"everything\");\n",
    );
    let (server, _state) = mcp::serve_everything(bundle.path());
    let echo = |m: &str| call(server.addr, "everything", LEAD, "echo", json!({"message": m}));
    assert!(echo("warm up").to_string().contains("warm up"));
    let allowed = || -> f64 {
        let metrics = server.get("/metrics").text();
        metrics
            .lines()
            .find(|l| {
                l.starts_with("deputy_decisions_total{") && l.contains("api=\"mcp\"") && l.contains("outcome=\"allow\"")
            })
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let before = allowed();
    std::thread::scope(|scope| {
        let hanging = scope.spawn(|| {
            let started = std::time::Instant::now();
            let answer = call_waiting(
                server.addr,
                "everything",
                "trigger-long-running-operation",
                json!({"duration": 3600, "steps": 1}),
            );
            (answer, started.elapsed())
        });
        // Once the hanging call was decided (and so is on its way to the server)...
        assert!(common::wait_until(Duration::from_secs(20), || allowed() > before));
        // ...other calls are answered while it hangs.
        for i in 0..3 {
            let started = std::time::Instant::now();
            assert!(echo(&format!("meanwhile {i}"))
                .to_string()
                .contains(&format!("meanwhile {i}")));
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "a call waited on the hanging one"
            );
        }
        let (answer, took) = hanging.join().unwrap();
        assert_eq!(answer["error"]["data"]["code"], "mcp_upstream_timeout", "{answer}");
        assert!(
            took >= deputy::config::DEFAULT_MCP_CALL_TIMEOUT && took < deputy::config::DEFAULT_MCP_CALL_TIMEOUT * 2,
            "{took:?}"
        );
    });
    // The connection survives the timeout.
    assert!(echo("after").to_string().contains("after"));
}

/// `tools/call` as the lead, waiting for the answer longer than the gateway's call timeout
/// (the common client gives up after 30 s).
fn call_waiting(addr: std::net::SocketAddr, server: &str, tool: &str, arguments: Value) -> Value {
    use std::io::{Read, Write};
    let body = serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                          "params": {"name": tool, "arguments": arguments}}))
    .unwrap();
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(deputy::config::DEFAULT_MCP_CALL_TIMEOUT * 3))
        .unwrap();
    write!(
        stream,
        "POST /mcp/{server} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAuthorization: Bearer {LEAD}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(&body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let response = String::from_utf8_lossy(&raw).into_owned();
    let start = response.find("\r\n\r\n").map(|i| i + 4).unwrap_or(0);
    serde_json::from_str(&response[start..]).unwrap_or_else(|e| panic!("{e}: {response}"))
}

/// Attack: get a number past policy. Cedar's `Long` is exact to 2^63, but the reference servers
/// (and most MCP servers) are JavaScript, whose numbers are doubles exact only to 2^53: an
/// integer beyond that reaches the server as another number than the one policy decided on.
/// With a forbid on `a == 9007199254740992` (2^53), a call with `a: 9007199254740993` was
/// allowed and the server computed with 9007199254740992. An integer outside ±(2^53 − 1)
/// (what I-JSON, RFC 7493, calls interoperable) is refused and never sent.
#[test]
fn an_integer_a_javascript_server_would_round_never_gets_past_policy() {
    let bundle = mcp::everything_bundle(
        "action \"everything/get-sum\" appliesTo {\n  principal: [Agent],\n  resource: [McpServer],\n  context: { \"a\": Long, \"b\": Long },\n};\n",
        "permit (principal is Agent, action, resource == McpServer::\"everything\");\n\
         @id(\"not-that-one\")\nforbid (principal, action == Action::\"everything/get-sum\", resource) when { context.a == 9007199254740992 };\n",
    );
    let (server, _state) = mcp::serve_everything(bundle.path());
    let sum = |a: Value| call(server.addr, "everything", LEAD, "get-sum", json!({"a": a, "b": 0}));
    // Exact integers pass and reach the server.
    let r = sum(json!(41));
    assert!(r.to_string().contains("41"), "{r}");
    let r = sum(json!(9_007_199_254_740_991_i64));
    assert!(r.to_string().contains("9007199254740991"), "{r}");
    // The forbidden value never reaches the server (2^53 is itself beyond the exact range).
    let r = sum(json!(9_007_199_254_740_992_i64));
    assert!(!r.to_string().contains("The sum"), "{r}");
    // Its neighbour, which a JavaScript server reads as the forbidden value, never reaches it.
    for a in [
        json!(9_007_199_254_740_993_i64),
        json!(-9_007_199_254_740_993_i64),
        json!(u64::MAX),
    ] {
        let r = sum(a.clone());
        assert!(
            !r.to_string().contains("9007199254740992"),
            "{a}: the server computed with another number than policy decided on: {r}"
        );
        assert_eq!(r["error"]["data"]["code"], "invalid_context", "{a}: {r}");
        assert!(
            r["error"]["message"].as_str().unwrap().contains("params.arguments.a"),
            "{r}"
        );
    }
}
