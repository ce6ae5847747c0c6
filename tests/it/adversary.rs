//! The delegation promise against an agent that holds its own credential and tries to escalate:
//! one regression test per attack that once worked (issue 14), each over HTTP against a real
//! server on `127.0.0.1:0`, on a bundle of its own (`tests/fixtures/adversary`). The invariants
//! they guard are listed in docs/SECURITY.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::{applied, decide, get_as, post_as, spawn, Agent, Options, TestServer};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-adversary-tests";
/// The bundle agent `lead`'s credential (as if mounted from a Secret).
const LEAD: &str = "lead-credential-from-a-secret-0123";

/// A copy of the adversary bundle (so a test may edit it) and a state directory.
struct Env {
    server: TestServer,
    bundle: tempfile::TempDir,
    state: tempfile::TempDir,
}

fn fixture() -> std::path::PathBuf {
    common::repo_root().join("tests/fixtures/adversary")
}

fn options(state: &Path) -> Options {
    Options {
        state: Some(state.to_path_buf()),
        admin_token: Some(ADMIN.to_owned()),
        agent_tokens: [("lead".to_owned(), LEAD.to_owned())].into(),
        ..Options::default()
    }
}

fn start() -> Env {
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&fixture(), bundle.path());
    let state = tempfile::tempdir().unwrap();
    let server = TestServer::start(bundle.path(), options(state.path()));
    Env { server, bundle, state }
}

impl Env {
    /// Stops the server and starts another on the same bundle and state.
    fn restart(self) -> Env {
        let Env { server, bundle, state } = self;
        drop(server);
        let server = TestServer::start(bundle.path(), options(state.path()));
        Env { server, bundle, state }
    }

    fn edit(&self, file: &str, f: impl FnOnce(String) -> String) {
        let path = self.bundle.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, f(text)).unwrap();
    }
}

const READ_A: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/a");"#;

fn body(grant: &str) -> Value {
    json!({"grant": grant, "ttl_seconds": 600, "ceiling": 2, "can_delegate": true, "task": "subtask"})
}

fn named(grant: &str, id: &str) -> Value {
    let mut b = body(grant);
    b["agent_id"] = json!(id);
    b
}

/// A root agent the admin creates, reading and writing the project.
fn root(s: &TestServer) -> Agent {
    applied(&spawn(
        s,
        ADMIN,
        json!({"grant": r#"permit(principal == ?principal, action in [Action::"read", Action::"write"], resource in Folder::"proj");"#,
               "ttl_seconds": 3600, "ceiling": 3, "can_delegate": true, "task": "orchestrate"}),
    ))
}

fn reloaded(s: &TestServer) -> Value {
    let _ = s.reload();
    s.get("/v1/status").json()["last_reload"].clone()
}

/// Attack 1: a child named after an agent the bundle declares (or names) took over its entity.
#[test]
fn names_the_bundle_owns_cannot_be_taken_and_a_bundle_cannot_take_a_managed_name() {
    let env = start();
    let s = &env.server;
    let before = decide(s, "worker", "read", ("Doc", "internal"));
    assert_eq!(before["decision"], "Allow", "{before}");
    let r = root(s);
    // Declared (worker, lead), named by a policy (auditor), named by @ask (lead, human), or
    // deputy's own (admin, bundle, a minted-looking id): all refused, whoever asks.
    for id in [
        "worker",
        "lead",
        "auditor",
        "human",
        "admin",
        "ADMIN",
        "bundle",
        "deputy",
        "agt-000000000000",
    ] {
        for token in [ADMIN, r.token.as_str()] {
            let resp = spawn(s, token, named(READ_A, id));
            assert_eq!(resp.status, 409, "`{id}`: {}", resp.text());
            assert_eq!(resp.json()["code"], "agent_id_reserved", "`{id}`: {}", resp.text());
        }
    }
    // The bundle agent is untouched: same attributes, same answer.
    assert_eq!(decide(s, "worker", "read", ("Doc", "internal")), before);
    assert_eq!(decide(s, "worker", "read", ("Doc", "secret"))["decision"], "Deny");

    // A free name works; then a bundle that declares that name is refused whole.
    let kid = applied(&spawn(s, &r.token, named(READ_A, "kid")));
    let version = s.version();
    env.edit("entities/agents.json", |t| {
        t.replacen(
            "[",
            r#"[ { "uid": { "type": "Agent", "id": "kid" }, "attrs": { "can_delegate": true, "ceiling": 3, "depth": 0 }, "parents": [] },"#,
            1,
        )
    });
    let last = reloaded(s);
    assert_eq!(last["outcome"], "failed", "{last}");
    assert_eq!(last["problems"][0]["code"], "agent_id_conflict", "{last}");
    assert_eq!(last["problems"][0]["file"], "entities/agents.json", "{last}");
    assert_eq!(s.version(), version, "the last good bundle keeps serving");
    let d = decide(s, &kid.id, "read", ("Doc", "secret"));
    assert_eq!(d["decision"], "Allow", "the managed agent keeps its own identity: {d}");
}

/// Attack 2: a child named `admin` (or like an `@ask` approver) acted as the human approver.
#[test]
fn no_agent_acts_as_a_human_or_approves_its_own_delegation() {
    let env = start();
    let s = &env.server;
    let r = root(s);
    // A production task needs a human: pending, approver `admin`.
    let mut prod = body(READ_A);
    prod["task"] = json!("deploy to prod");
    let p = spawn(s, &r.token, prod.clone());
    assert_eq!(p.status, 202, "{}", p.text());
    assert_eq!(p.json()["approvers"], json!(["admin"]));
    let rid = p.json()["request_id"].as_str().unwrap().to_owned();
    // The root's child cannot see or decide it, whatever it is called.
    let child = applied(&spawn(s, &r.token, body(READ_A)));
    for token in [&child.token, &r.token] {
        let inbox = get_as(s, token, "/v1/permission-requests?status=pending").json();
        assert_eq!(inbox["requests"], json!([]), "{inbox}");
        let d = post_as(
            s,
            token,
            &format!("/v1/permission-requests/{rid}"),
            &json!({"decision": "approve"}),
        );
        assert_eq!(d.status, 403, "{}", d.text());
        assert_eq!(d.json()["code"], "not_the_approver");
    }
    // Carrying it out unapproved is refused.
    let mut carry = prod.clone();
    carry["approved_request"] = json!(rid);
    assert_eq!(spawn(s, &r.token, carry.clone()).json()["code"], "request_not_approved");

    // The lead asks for a long-lived child: `@ask("lead")` names the lead itself, which is not
    // above itself, so the human decides; it can neither see nor approve its own request.
    let mut long = body(READ_A);
    long["ttl_seconds"] = json!(7200);
    let p = spawn(s, LEAD, long.clone());
    assert_eq!(p.status, 202, "{}", p.text());
    assert_eq!(p.json()["approvers"], json!(["admin"]), "{}", p.text());
    let lrid = p.json()["request_id"].as_str().unwrap().to_owned();
    let d = post_as(
        s,
        LEAD,
        &format!("/v1/permission-requests/{lrid}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(d.json()["code"], "not_the_approver", "{}", d.text());

    // The human approves with the admin credential; the parent carries it out, once.
    let a = post_as(
        s,
        ADMIN,
        &format!("/v1/permission-requests/{rid}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(a.json()["status"], "approved", "{}", a.text());
    applied(&spawn(s, &r.token, carry.clone()));
    assert_eq!(spawn(s, &r.token, carry).json()["code"], "request_not_approved");
}

/// Several `@ask` rules: every approver they name approves, in a fixed order.
#[test]
fn every_approver_of_every_ask_rule_approves_in_turn() {
    let env = start();
    let s = &env.server;
    // A grandchild of the lead (`deep`: the lead approves) for production (a human approves).
    let helper = applied(&spawn(s, LEAD, body(READ_A)));
    let mut both = body(READ_A);
    both["task"] = json!("prod rollout");
    let p = spawn(s, &helper.token, both.clone());
    assert_eq!(p.status, 202, "{}", p.text());
    assert_eq!(p.json()["approvers"], json!(["lead", "admin"]), "{}", p.text());
    let rid = p.json()["request_id"].as_str().unwrap().to_owned();
    // The human's inbox does not hold it until the lead has approved...
    let inbox = get_as(s, ADMIN, "/v1/permission-requests?status=pending").json();
    assert!(
        !inbox["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["request_id"] == rid.as_str()),
        "{inbox}"
    );
    // ...and the helper (the requester) cannot approve the lead's step.
    let d = post_as(
        s,
        &helper.token,
        &format!("/v1/permission-requests/{rid}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(d.json()["code"], "not_the_approver", "{}", d.text());
    let a = post_as(
        s,
        LEAD,
        &format!("/v1/permission-requests/{rid}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["status"], "pending", "{}", a.text());
    assert_eq!(a.json()["approver"], "admin", "{}", a.text());
    let mut carry = both.clone();
    carry["approved_request"] = json!(rid);
    assert_eq!(
        spawn(s, &helper.token, carry.clone()).json()["code"],
        "request_not_approved"
    );
    let inbox = get_as(s, ADMIN, "/v1/permission-requests?status=pending").json();
    assert!(
        inbox["requests"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["request_id"] == rid.as_str()),
        "{inbox}"
    );
    let a = post_as(
        s,
        ADMIN,
        &format!("/v1/permission-requests/{rid}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(a.json()["status"], "approved", "{}", a.text());
    applied(&spawn(s, &helper.token, carry.clone()));
    assert_eq!(spawn(s, &helper.token, carry).json()["code"], "request_not_approved");

    // A grandchild of an admin-created root: `@ask("lead")` names an agent that is not above
    // the requester, so the human decides alone.
    let r = root(s);
    let mid = applied(&spawn(s, &r.token, body(READ_A)));
    let p = spawn(s, &mid.token, body(READ_A));
    assert_eq!(p.json()["approvers"], json!(["admin"]), "{}", p.text());
}

/// Attack 3: a grant with a policy about another principal authorized a child it named.
#[test]
fn a_grant_is_about_its_holder_only() {
    let env = start();
    let s = &env.server;
    let r = root(s);
    for grant in [
        r#"permit(principal == Agent::"kid", action, resource);"#,
        r#"permit(principal == ?principal, action, resource) when { principal == Agent::"kid" };"#,
        r#"permit(principal in Agent::"lead", action == Action::"read", resource);"#,
        r#"permit(principal == ?principal, action == Action::"read", resource) when { principal.depth > 1 };"#,
        r#"forbid(principal, action, resource) unless { principal.depth == 1 };"#,
    ] {
        for token in [ADMIN, r.token.as_str()] {
            let mut b = body(grant);
            b["ceiling"] = json!(2);
            let resp = spawn(s, token, b);
            assert_eq!(resp.status, 400, "{grant}: {}", resp.text());
            assert_eq!(
                resp.json()["code"],
                "grant_foreign_principal",
                "{grant}: {}",
                resp.text()
            );
        }
        let child = applied(&spawn(s, &r.token, body(READ_A)));
        let resp = post_as(s, &child.token, "/v1/permission-requests", &json!({"grant": grant}));
        assert_eq!(
            resp.json()["code"],
            "grant_foreign_principal",
            "{grant}: {}",
            resp.text()
        );
    }
    // A shipped grant is held to the same rule: the bundle is refused.
    env.edit("grants/lead.cedar", |t| {
        format!("{t}\npermit(principal == Agent::\"worker\", action == Action::\"send\", resource);\n")
    });
    let last = reloaded(s);
    assert_eq!(last["outcome"], "failed", "{last}");
    assert_eq!(last["problems"][0]["code"], "grant_foreign_principal", "{last}");
}

/// Attack 4: at run time an ancestor's whole grant bounded a child, `@delegable("false")`
/// permits included, so a drifted child read through what its parent could not pass on.
#[test]
fn run_time_bounds_a_child_by_each_ancestors_delegable_view() {
    let env = start();
    let s = &env.server;
    // The lead may read proj/a (delegable) and proj/b (not delegable). Its child may read
    // proj/a/c, proved within proj/a.
    let c_grant = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/a/c");"#;
    let child = applied(&spawn(s, LEAD, body(c_grant)));
    assert_eq!(decide(s, &child.id, "read", ("Doc", "in-c"))["decision"], "Allow");
    // The lead can send; the child may not even ask for it: it is not delegable.
    let send = r#"permit(principal == ?principal, action == Action::"send", resource);"#;
    assert_eq!(spawn(s, LEAD, body(send)).json()["code"], "grant_exceeds_parent");

    // GitOps moves proj/a/c under proj/b: the child's grant now reaches only what the lead
    // holds as not delegable. Drift is reported, and run time denies it.
    env.edit("entities/things.json", |t| {
        t.replace(
            r#""id": "proj/a/c" }, "attrs": { "classification": 0 }, "parents": [{ "type": "Folder", "id": "proj/a" }]"#,
            r#""id": "proj/a/c" }, "attrs": { "classification": 0 }, "parents": [{ "type": "Folder", "id": "proj/b" }]"#,
        )
    });
    let last = reloaded(s);
    assert_eq!(last["outcome"], "loaded", "{last}");
    let drift = common::status_reproved(s.addr)["delegation"]["drift"].clone();
    assert_eq!(drift[0]["agent"], child.id.as_str(), "{drift}");
    let d = decide(s, &child.id, "read", ("Doc", "in-c"));
    assert_eq!(d["decision"], "Deny", "{d}");
    assert_eq!(d["denied_by"]["bound"], "grant", "{d}");
    assert_eq!(d["denied_by"]["agent"], "lead", "{d}");
    // The lead itself still reads it (its own hop is its whole grant).
    assert_eq!(decide(s, "lead", "read", ("Doc", "in-c"))["decision"], "Allow");
}

/// Attack 5a: a spawn authenticated before its body arrived was applied after the admin
/// revoked the parent.
#[test]
fn a_revocation_that_answered_wins_over_a_spawn_in_flight() {
    let env = start();
    let s = &env.server;
    let r = root(s);
    let payload = serde_json::to_vec(&named(READ_A, "late-child")).unwrap();
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/delegations HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        r.token,
        payload.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    // `100 Continue` comes when the handler starts reading the body: it has authenticated.
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert!(
        String::from_utf8_lossy(&interim).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&interim)
    );
    let revoked = common::delete_as(s, ADMIN, &format!("/v1/delegations/{}", r.id));
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    stream.write_all(&payload).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    let final_status = text
        .split("\r\n\r\n")
        .find(|p| p.starts_with("HTTP/1.1 ") && !p.starts_with("HTTP/1.1 100"));
    assert!(final_status.is_some_and(|h| h.starts_with("HTTP/1.1 401")), "{text}");
    assert_eq!(get_as(s, ADMIN, "/v1/delegations/late-child").status, 404);
    let env = env.restart();
    assert_eq!(get_as(&env.server, ADMIN, "/v1/delegations/late-child").status, 404);
    assert_eq!(
        decide(&env.server, "late-child", "read", ("Doc", "public"))["denied_by"]["bound"],
        "unknown_agent"
    );
}

/// Attack 5b: one approval used by concurrent requests created several children.
#[test]
fn one_approval_creates_exactly_one_child_however_many_race() {
    let env = start();
    let s = &env.server;
    let r = root(s);
    let mut prod = body(READ_A);
    prod["task"] = json!("prod fix");
    let p = spawn(s, &r.token, prod.clone());
    let rid = p.json()["request_id"].as_str().unwrap().to_owned();
    let a = post_as(
        s,
        ADMIN,
        &format!("/v1/permission-requests/{rid}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(a.json()["status"], "approved");
    prod["approved_request"] = json!(rid);
    let barrier = std::sync::Barrier::new(6);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    spawn(s, &r.token, prod.clone()).status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 201 || *s == 409), "{statuses:?}");
    let audit = get_as(s, ADMIN, "/v1/audit").json();
    let used = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "approval_used")
        .count();
    assert_eq!(used, 1, "{audit}");
}

/// Attack 6: taint raised through the AuthZEN endpoints (or a batch) was never persisted.
#[test]
fn taint_raised_through_any_endpoint_survives_a_restart() {
    let env = start();
    let s = &env.server;
    let r = root(s);
    let agents: Vec<Agent> = (0..3).map(|_| applied(&spawn(s, &r.token, body(READ_A)))).collect();
    let read_secret = |id: &str| json!({"subject": {"type": "Agent", "id": id}, "action": {"name": "read"}, "resource": {"type": "Doc", "id": "secret"}});
    let e = s.post("/access/v1/evaluation", &read_secret(&agents[0].id));
    assert_eq!(e.json()["decision"], true, "{}", e.text());
    let e = s.post(
        "/access/v1/evaluations",
        &json!({"evaluations": [read_secret(&agents[1].id)]}),
    );
    assert_eq!(e.json()["evaluations"][0]["decision"], true, "{}", e.text());
    let b = s.post(
        "/v1/authorize/batch",
        &json!({"requests": [{"principal": {"type": "Agent", "id": agents[2].id}, "action": {"type": "Action", "id": "read"},
                              "resource": {"type": "Doc", "id": "secret"}}]}),
    );
    assert_eq!(b.json()["responses"][0]["decision"], "Allow", "{}", b.text());
    let env = env.restart();
    for a in &agents {
        let d = decide(&env.server, &a.id, "write", ("Doc", "public"));
        assert_eq!(
            d["denied_by"],
            json!({"bound": "taint", "classification": 0, "taint": 2}),
            "{d}"
        );
    }
}

/// Attack 7: lowering a bundle agent's ceiling or turning off its `can_delegate` reloaded but
/// never reached the agent (nor its children).
#[test]
fn a_bundle_agents_attributes_follow_the_bundle() {
    let env = start();
    let s = &env.server;
    let child = applied(&spawn(s, LEAD, body(READ_A)));
    assert_eq!(decide(s, "lead", "read", ("Doc", "top"))["decision"], "Allow");
    assert_eq!(decide(s, &child.id, "read", ("Doc", "secret"))["decision"], "Allow");
    env.edit("entities/agents.json", |t| {
        t.replace(
            r#""id": "lead" }, "attrs": { "can_delegate": true, "ceiling": 3"#,
            r#""id": "lead" }, "attrs": { "can_delegate": false, "ceiling": 1"#,
        )
    });
    assert_eq!(reloaded(s)["outcome"], "loaded");
    let d = decide(s, "lead", "read", ("Doc", "secret"));
    assert_eq!(d["decision"], "Deny", "{d}");
    // Its child is bounded by the lowest ceiling on its chain.
    let d = decide(s, &child.id, "read", ("Doc", "secret"));
    assert_eq!(
        d["denied_by"],
        json!({"bound": "ceiling", "classification": 2, "ceiling": 1}),
        "{d}"
    );
    let resp = spawn(s, LEAD, body(READ_A));
    assert_eq!(resp.json()["code"], "delegation_forbidden", "{}", resp.text());
    let shown = get_as(s, ADMIN, "/v1/delegations/lead").json();
    assert_eq!(
        (shown["ceiling"].clone(), shown["can_delegate"].clone()),
        (json!(1), json!(false)),
        "{shown}"
    );
}

/// Attack 8: a schema requiring a new `Agent` attribute dropped deputy's agents from the store,
/// so forbids reading `principal.*` erred and were skipped.
#[test]
fn a_schema_that_cannot_hold_deputys_agents_is_refused() {
    let env = start();
    let s = &env.server;
    let r = root(s);
    let low = applied(&spawn(
        s,
        &r.token,
        json!({"grant": READ_A, "ttl_seconds": 600, "ceiling": 0, "task": "low"}),
    ));
    assert_eq!(decide(s, &low.id, "read", ("Doc", "internal"))["decision"], "Deny");
    let version = s.version();
    env.edit("schema/adversary.cedarschema", |t| {
        t.replace("team?: String", "team: String")
    });
    env.edit("entities/agents.json", |t| {
        t.replace(r#""depth": 0 }"#, r#""depth": 0, "team": "core" }"#)
    });
    let last = reloaded(s);
    assert_eq!(last["outcome"], "failed", "{last}");
    assert_eq!(last["problems"][0]["code"], "schema_lacks_agent_model", "{last}");
    assert!(
        last["problems"][0]["message"].as_str().unwrap().contains("team"),
        "{last}"
    );
    assert_eq!(s.version(), version);
    let d = decide(s, &low.id, "read", ("Doc", "internal"));
    assert_eq!(d["decision"], "Deny", "{d}");
    assert_eq!(d["denied_by"]["bound"], "ceiling", "{d}");
}

/// Attack 9: an `Agent` deputy never created (or lost with its state) got the admin maximum.
#[test]
fn unknown_agents_are_denied_everywhere() {
    let env = start();
    let s = &env.server;
    for id in ["agt-000000000000", "nobody"] {
        let d = decide(s, id, "read", ("Doc", "public"));
        assert_eq!(d["decision"], "Deny", "{d}");
        assert_eq!(d["denied_by"]["bound"], "unknown_agent", "{d}");
        let e = s.post(
            "/access/v1/evaluation",
            &json!({"subject": {"type": "Agent", "id": id}, "action": {"name": "read"}, "resource": {"type": "Doc", "id": "public"}}),
        );
        assert_eq!(e.json()["decision"], false, "{}", e.text());
    }
    // A name the bundle only references (`auditor`) is not an identity: unknown too.
    assert_eq!(
        decide(s, "auditor", "read", ("Doc", "public"))["denied_by"]["bound"],
        "unknown_agent"
    );
    // Declared agents are decided by the admin maximum, as before.
    assert_eq!(decide(s, "worker", "read", ("Doc", "public"))["decision"], "Allow");

    // A wiped state directory forgets agents: they become unknown, never admin-bounded.
    let r = root(s);
    assert_eq!(decide(s, &r.id, "read", ("Doc", "public"))["decision"], "Allow");
    let Env { server, bundle, state } = env;
    drop(server);
    drop(state);
    let wiped = tempfile::tempdir().unwrap();
    let s = TestServer::start(bundle.path(), options(wiped.path()));
    assert_eq!(
        decide(&s, &r.id, "read", ("Doc", "public"))["denied_by"]["bound"],
        "unknown_agent"
    );
}

/// Attack 10: a child inheriting a taint above its ceiling was applied unless the bundle had a
/// rule against it; this bundle has none.
#[test]
fn a_child_never_starts_above_its_ceiling_whatever_the_bundle_says() {
    let env = start();
    let s = &env.server;
    let r = root(s);
    assert_eq!(decide(s, &r.id, "read", ("Doc", "secret"))["decision"], "Allow");
    let mut b = body(READ_A);
    b["ceiling"] = json!(1);
    let resp = spawn(s, &r.token, b.clone());
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.json()["code"], "taint_above_ceiling", "{}", resp.text());
    b["ceiling"] = json!(2);
    let ok = spawn(s, &r.token, b);
    assert_eq!(ok.json()["taint"], 2, "{}", ok.text());
}

/// Found by the model: a human's approval extended a bundle agent's grant, which the next
/// reload then silently replaced. A bundle agent's grant changes only through the bundle.
#[test]
fn a_human_approval_never_changes_a_bundle_agents_grant() {
    let env = start();
    let s = &env.server;
    let child = applied(&spawn(s, LEAD, body(READ_A)));
    // The lead holds proj/b as not delegable: its child asks for it, and the human approves.
    let b_grant = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/b");"#;
    let r = post_as(s, &child.token, "/v1/permission-requests", &json!({"grant": b_grant}));
    assert_eq!(r.json()["can_approve_alone"], false, "{}", r.text());
    let rid = r.json()["request_id"].as_str().unwrap().to_owned();
    let a = post_as(
        s,
        ADMIN,
        &format!("/v1/permission-requests/{rid}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(a.status, 409, "{}", a.text());
    assert_eq!(a.json()["code"], "exceeds_approver", "{}", a.text());
    assert!(
        a.json()["help"].as_str().unwrap().contains("grants/lead.cedar"),
        "{}",
        a.text()
    );
    assert_eq!(decide(s, &child.id, "read", ("Doc", "in-b"))["decision"], "Deny");
    let shown = get_as(s, ADMIN, "/v1/delegations/lead").json();
    assert_eq!(
        shown["grant"],
        std::fs::read_to_string(fixture().join("grants/lead.cedar")).unwrap()
    );
    // Within what the lead may pass on, the human's approval extends the child alone.
    let c_grant = r#"permit(principal == ?principal, action == Action::"write", resource in Folder::"proj/a/c");"#;
    let r = post_as(s, &child.token, "/v1/permission-requests", &json!({"grant": c_grant}));
    let rid = r.json()["request_id"].as_str().unwrap().to_owned();
    let a = post_as(
        s,
        ADMIN,
        &format!("/v1/permission-requests/{rid}"),
        &json!({"decision": "approve"}),
    );
    assert_eq!(a.json()["status"], "approved", "{}", a.text());
    let extended = a.json()["history"][1]["extended"].clone();
    assert_eq!(extended.as_array().unwrap().len(), 1, "{extended}");
    assert_eq!(extended[0]["agent"], child.id.as_str(), "{extended}");
    assert_eq!(decide(s, &child.id, "write", ("Doc", "in-c"))["decision"], "Allow");
    // The lead itself cannot ask the API for more: its grant is in git.
    let r = post_as(s, LEAD, "/v1/permission-requests", &json!({"grant": c_grant}));
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "grant_from_bundle", "{}", r.text());
}
