//! Delegation end to end: a real server, a real state directory, the example bundle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::time::Duration;

use common::{applied, decide, post_as, repo_root, spawn, Agent, Options, TestServer};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-tests-0123456789";

struct Env {
    server: TestServer,
    _state: tempfile::TempDir,
}

fn start() -> Env {
    let state = tempfile::tempdir().unwrap();
    let server = start_on(state.path());
    Env { server, _state: state }
}

fn start_on(state: &std::path::Path) -> TestServer {
    TestServer::start(
        &repo_root(),
        Options {
            state: Some(state.to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            ..Options::default()
        },
    )
}

/// A root agent the admin creates: reads the repo, writes src, may push (not delegable).
const ROOT_GRANT: &str = r#"
permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");
@delegable("false")
permit(principal == ?principal, action == Action::"invoke", resource == Tool::"git_push");
permit(principal == ?principal, action == Action::"invoke", resource == Tool::"pytest");
"#;

fn root(s: &TestServer, can_delegate: bool, ttl: i64) -> Agent {
    applied(&spawn(
        s,
        ADMIN,
        json!({"grant": ROOT_GRANT, "ttl_seconds": ttl, "ceiling": 2, "can_delegate": can_delegate, "task": "orchestrate", "reason": "test"}),
    ))
}

fn child_body(grant: &str) -> Value {
    json!({"grant": grant, "ttl_seconds": 600, "ceiling": 1, "can_delegate": true, "task": "subtask", "reason": "because"})
}

const READ_SRC: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#;

#[test]
fn a_contained_child_is_applied_and_limited_to_its_grant() {
    let env = start();
    let s = &env.server;
    let root = root(s, true, 3600);
    let r = spawn(s, &root.token, child_body(READ_SRC));
    let child = applied(&r);
    assert_eq!(r.json()["proof"]["verdict"], "within");
    assert_eq!(r.json()["depth"], 1);

    let allow = decide(s, &child.id, "read", ("File", "repo/src/main.rs"));
    assert_eq!(allow["decision"], "Allow");
    let reasons: Vec<&str> = allow["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"agents-read-repo"), "{allow}");
    assert!(
        reasons.iter().any(|r| r.starts_with(&format!("{}/", root.id))),
        "{allow}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with(&format!("{}/", child.id))),
        "{allow}"
    );

    // The root may read the README; the child's own grant does not reach it.
    assert_eq!(
        decide(s, &root.id, "read", ("File", "repo/README.md"))["decision"],
        "Allow"
    );
    let deny = decide(s, &child.id, "read", ("File", "repo/README.md"));
    assert_eq!(deny["decision"], "Deny");
    assert_eq!(
        deny["denied_by"],
        json!({"bound": "grant", "agent": child.id, "own": true, "policies": []})
    );

    // The ceiling bounds everyone: payroll.rs (2) is above the child's ceiling (1).
    let deny = decide(s, &child.id, "read", ("File", "repo/src/payroll.rs"));
    assert_eq!(
        deny["denied_by"],
        json!({"bound": "ceiling", "classification": 2, "ceiling": 1}),
        "{deny}"
    );
    // And the admin maximum: only the bundle's orchestrator may use the credential.
    let deny = decide(s, &root.id, "use_credential", ("Credential", "github-token"));
    assert_eq!(deny["denied_by"]["bound"], "admin", "{deny}");
}

#[test]
fn an_exceeding_child_is_rejected_with_a_replayed_counterexample() {
    let env = start();
    let s = &env.server;
    let root = root(s, true, 3600);
    let r = spawn(
        s,
        &root.token,
        child_body(r#"permit(principal == ?principal, action == Action::"write", resource in Folder::"repo");"#),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let b = r.json();
    assert_eq!(b["code"], "grant_exceeds_parent");
    let cx = &b["proof"]["counterexample"];
    assert_eq!(cx["action"], "Action::\"write\"");
    // The counterexample is a write outside repo/src, which the root's grant does not allow.
    assert!(cx["resource"].as_str().unwrap().starts_with("F"), "{cx}");
}

#[test]
fn a_non_delegable_permit_is_withheld() {
    let env = start();
    let s = &env.server;
    let root = root(s, true, 3600);
    // The root itself may push...
    assert_eq!(decide(s, &root.id, "invoke", ("Tool", "git_push"))["decision"], "Allow");
    // ...but cannot hand that on, while pytest (delegable) it can.
    let r = spawn(
        s,
        &root.token,
        child_body(r#"permit(principal == ?principal, action == Action::"invoke", resource == Tool::"git_push");"#),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "grant_exceeds_parent");
    let r = spawn(
        s,
        &root.token,
        child_body(r#"permit(principal == ?principal, action == Action::"invoke", resource == Tool::"pytest");"#),
    );
    applied(&r);
}

#[test]
fn can_delegate_false_is_forbidden_whatever_it_asks_but_authorize_works() {
    let env = start();
    let s = &env.server;
    let root = root(s, true, 3600);
    let mut body = child_body(READ_SRC);
    body["can_delegate"] = json!(false);
    let executor = applied(&spawn(s, &root.token, body));
    for grant in [READ_SRC, "", r#"forbid(principal == ?principal, action, resource);"#] {
        let r = spawn(s, &executor.token, child_body(grant));
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["code"], "delegation_forbidden");
    }
    assert_eq!(
        decide(s, &executor.id, "read", ("File", "repo/src/main.rs"))["decision"],
        "Allow"
    );
}

#[test]
fn an_ask_rule_makes_the_delegation_pending() {
    let env = start();
    let s = &env.server;
    let root = root(s, true, 3 * 86400);
    let mut body = child_body(READ_SRC);
    body["ttl_seconds"] = json!(2 * 86400);
    let r = spawn(s, &root.token, body);
    assert_eq!(r.status, 202, "{}", r.text());
    let b = r.json();
    assert_eq!(b["outcome"], "pending");
    assert_eq!(b["approver"], "human");
    assert!(b["request_id"].as_str().unwrap().starts_with("req-"));
    assert!(b["why"].as_str().unwrap().contains("long-lived-needs-approval"), "{b}");
    let rid = b["request_id"].as_str().unwrap().to_owned();

    // Carrying it out before approval is refused.
    let mut body = child_body(READ_SRC);
    body["ttl_seconds"] = json!(2 * 86400);
    body["approved_request"] = json!(rid);
    assert_eq!(
        spawn(s, &root.token, body.clone()).json()["code"],
        "request_not_approved"
    );

    // A human sees it among the requests waiting on a human, and approves it.
    let waiting = common::get_as(s, ADMIN, "/v1/permission-requests?status=pending").json();
    assert_eq!(waiting["requests"][0]["request_id"], rid.as_str(), "{waiting}");
    let r = post_as(
        s,
        ADMIN,
        &format!("/v1/permission-requests/{rid}"),
        &json!({"decision": "approve", "reason": "ok"}),
    );
    assert_eq!(r.json()["status"], "approved", "{}", r.text());

    // The approval is bound to exactly that delegation...
    let mut other = body.clone();
    other["ttl_seconds"] = json!(3 * 86400 - 100);
    assert_eq!(spawn(s, &root.token, other).json()["code"], "request_mismatch");
    // ...which the parent now carries out, once.
    let child = applied(&spawn(s, &root.token, body.clone()));
    assert_eq!(
        decide(s, &child.id, "read", ("File", "repo/src/main.rs"))["decision"],
        "Allow"
    );
    assert_eq!(spawn(s, &root.token, body).json()["code"], "request_not_approved");
}

#[test]
fn depth_beyond_three_is_rejected() {
    let env = start();
    let s = &env.server;
    let mut parent = root(s, true, 3600);
    for depth in 1..=3 {
        let r = spawn(s, &parent.token, child_body(READ_SRC));
        assert_eq!(r.json()["depth"], depth, "{}", r.text());
        parent = applied(&r);
    }
    let r = spawn(s, &parent.token, child_body(READ_SRC));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "delegation_forbidden");
    assert_eq!(r.json()["policies"], json!(["max-depth"]));
}

#[test]
fn cycles_and_reused_identities_are_rejected() {
    let env = start();
    let s = &env.server;
    let a = applied(&spawn(
        s,
        ADMIN,
        json!({"grant": ROOT_GRANT, "ttl_seconds": 3600, "ceiling": 2, "can_delegate": true, "task": "a", "agent_id": "agent-a"}),
    ));
    let mut body = child_body(READ_SRC);
    body["agent_id"] = json!("agent-b");
    let b = applied(&spawn(s, &a.token, body));
    let mut body = child_body(READ_SRC);
    body["agent_id"] = json!("agent-a");
    let r = spawn(s, &b.token, body);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "delegation_cycle");
    let mut body = child_body(READ_SRC);
    body["agent_id"] = json!("agent-b");
    let r = spawn(s, &a.token, body);
    assert_eq!(r.json()["code"], "agent_exists");
}

#[test]
fn missing_or_forged_credentials_are_401() {
    let env = start();
    let s = &env.server;
    let a = root(s, true, 3600);
    let r = s.post("/v1/delegations", &child_body(READ_SRC));
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "unauthenticated");
    let forged = format!("dpt.{}.{}", a.id, "0".repeat(64));
    assert_eq!(spawn(s, &forged, child_body(READ_SRC)).status, 401);
    assert_eq!(
        spawn(s, "admin-token-for-tests-012345678X", child_body(READ_SRC)).status,
        401
    );
    // Naming another agent in the body does not make you that agent.
    let mut body = child_body(READ_SRC);
    body["principal"] = json!({"type": "Agent", "id": a.id});
    assert_eq!(spawn(s, "nonsense", body).status, 401);
}

#[test]
fn child_ttl_is_capped_at_the_parents_remaining_lifetime() {
    let env = start();
    let s = &env.server;
    let a = root(s, true, 300);
    let mut body = child_body(READ_SRC);
    body["ttl_seconds"] = json!(100_000);
    let r = spawn(s, &a.token, body);
    applied(&r);
    let b = r.json();
    assert_eq!(b["ttl_capped"], true);
    assert!(b["ttl_seconds"].as_i64().unwrap() <= 300, "{b}");
}

#[test]
fn expiry_and_completion_revoke() {
    let env = start();
    let s = &env.server;
    let a = root(s, true, 3600);
    let mut body = child_body(READ_SRC);
    // Two seconds: lifetimes end on whole seconds, so a one-second one can end at once.
    body["ttl_seconds"] = json!(2);
    let short = applied(&spawn(s, &a.token, body));
    assert_eq!(
        decide(s, &short.id, "read", ("File", "repo/src/main.rs"))["decision"],
        "Allow"
    );
    // Waits for the clock to pass its lifetime (and no longer).
    let mut d = Value::Null;
    assert!(common::wait_until(Duration::from_secs(10), || {
        d = decide(s, &short.id, "read", ("File", "repo/src/main.rs"));
        d["decision"] == "Deny"
    }));
    assert_eq!(d["decision"], "Deny");
    assert!(
        d["denied_by"]["bound"] == "expired" || d["denied_by"]["bound"] == "revoked",
        "{d}"
    );
    let audit = common::get_as(s, ADMIN, &format!("/v1/audit?agent={}", short.id)).json();
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            common::get_as(s, ADMIN, &format!("/v1/audit?agent={}", short.id)).json()["records"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["event"] == "expired")
        }),
        "no expiry record: {audit}"
    );

    let worker = applied(&spawn(s, &a.token, child_body(READ_SRC)));
    let r = post_as(
        s,
        &worker.token,
        &format!("/v1/delegations/{}/complete", worker.id),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        decide(s, &worker.id, "read", ("File", "repo/src/main.rs"))["denied_by"]["bound"],
        "revoked"
    );
    assert_eq!(spawn(s, &worker.token, child_body(READ_SRC)).status, 401);
}

#[test]
fn revocation_cascades_and_only_ancestors_may_revoke() {
    let env = start();
    let s = &env.server;
    let a = root(s, true, 3600);
    let b = applied(&spawn(s, &a.token, child_body(READ_SRC)));
    let c = applied(&spawn(s, &b.token, child_body(READ_SRC)));
    let sibling = applied(&spawn(s, &a.token, child_body(READ_SRC)));
    // A sibling is not an ancestor.
    let r = common::delete_as(s, &sibling.token, &format!("/v1/delegations/{}", b.id));
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "not_your_delegation");
    let r = common::delete_as(s, &a.token, &format!("/v1/delegations/{}", b.id));
    assert_eq!(r.status, 200, "{}", r.text());
    let revoked = r.json()["revoked"].clone();
    assert!(revoked.as_array().unwrap().contains(&json!(c.id)), "{revoked}");
    for id in [&b.id, &c.id] {
        assert_eq!(
            decide(s, id, "read", ("File", "repo/src/main.rs"))["denied_by"]["bound"],
            "revoked"
        );
    }
    assert_eq!(
        decide(s, &sibling.id, "read", ("File", "repo/src/main.rs"))["decision"],
        "Allow"
    );
}

#[test]
fn taint_cannot_be_laundered_or_written_down() {
    let env = start();
    let s = &env.server;
    let a = root(s, true, 3600);
    // The root reads a CONFIDENTIAL file: its session taint becomes 2.
    assert_eq!(
        decide(s, &a.id, "read", ("File", "repo/src/payroll.rs"))["decision"],
        "Allow"
    );
    // A child with ceiling 1 would inherit taint 2: laundering, rejected by deputy itself.
    let r = spawn(s, &a.token, child_body(READ_SRC));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "taint_above_ceiling", "{}", r.text());
    // A child with ceiling 2 starts tainted and cannot write down to an INTERNAL file.
    let mut body =
        child_body(r#"permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");"#);
    body["ceiling"] = json!(2);
    let r = spawn(s, &a.token, body);
    let child = applied(&r);
    assert_eq!(r.json()["taint"], 2);
    let d = decide(s, &child.id, "write", ("File", "repo/src/main.rs"));
    assert_eq!(d["decision"], "Deny", "{d}");
    assert_eq!(
        d["denied_by"],
        json!({"bound": "taint", "classification": 1, "taint": 2})
    );
    // Writing at its own level is fine.
    assert_eq!(
        decide(s, &child.id, "write", ("File", "repo/src/payroll.rs"))["decision"],
        "Allow"
    );
    // Callers cannot lower the taint: what they send is replaced by deputy's.
    let r = s.post(
        "/v1/authorize",
        &json!({"principal": {"type": "Agent", "id": child.id}, "action": {"type": "Action", "id": "write"},
                "resource": {"type": "File", "id": "repo/src/main.rs"}, "context": {"taint": 0}}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["denied_by"]["bound"], "taint", "{}", r.text());
}

/// What a child reads reaches its parent (the child hands its results back through the runtime)
/// and, through the parent, every live child it spawned: a parent cannot have a child read a
/// CONFIDENTIAL file and then write what it learned to an INTERNAL one, nor pass it to a child
/// it spawned before.
#[test]
fn what_a_child_reads_reaches_its_parent_and_siblings() {
    let state = tempfile::tempdir().unwrap();
    let write_src = r#"permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");"#;
    let (a, b, c, d) = {
        let s = start_on(state.path());
        let a = root(&s, true, 3600);
        let mut body = child_body(READ_SRC);
        body["ceiling"] = json!(2);
        let b = applied(&spawn(&s, &a.token, body));
        // c writes src; d (ceiling 1) only reads it.
        let mut body = child_body(write_src);
        body["ceiling"] = json!(2);
        let c = applied(&spawn(&s, &a.token, body));
        let d = applied(&spawn(&s, &a.token, child_body(READ_SRC)));
        // Before b reads anything, both a and c may write an INTERNAL file.
        for agent in [&a, &c] {
            assert_eq!(
                decide(&s, &agent.id, "write", ("File", "repo/src/main.rs"))["decision"],
                "Allow"
            );
        }
        assert_eq!(
            decide(&s, &b.id, "read", ("File", "repo/src/payroll.rs"))["decision"],
            "Allow"
        );
        // Raised before b's read was answered: no waiting.
        for agent in [&a, &c] {
            let d = decide(&s, &agent.id, "write", ("File", "repo/src/main.rs"));
            assert_eq!(d["decision"], "Deny", "{} after b's read: {d}", agent.id);
            assert_eq!(
                d["denied_by"],
                json!({"bound": "taint", "classification": 1, "taint": 2})
            );
        }
        (a, b, c, d)
    };
    // Durable: a restart keeps every raise, including d's (above its ceiling: it may read what
    // it could before, and write nothing below 2, which its ceiling forbids anyway).
    let s = start_on(state.path());
    for agent in [&a, &b, &c, &d] {
        let r = common::get_as(&s, ADMIN, &format!("/v1/delegations/{}", agent.id));
        assert_eq!(r.json()["taint"], 2, "{}", r.text());
    }
    assert_eq!(
        decide(&s, &c.id, "write", ("File", "repo/src/main.rs"))["denied_by"]["bound"],
        "taint"
    );
    assert_eq!(
        decide(&s, &d.id, "read", ("File", "repo/src/main.rs"))["decision"],
        "Allow"
    );
}

#[test]
fn a_restart_keeps_agents_revocations_taint_and_audit() {
    let state = tempfile::tempdir().unwrap();
    let (a, b, c) = {
        let s = start_on(state.path());
        let a = root(&s, true, 3600);
        let b = applied(&spawn(&s, &a.token, child_body(READ_SRC)));
        let c = applied(&spawn(&s, &a.token, child_body(READ_SRC)));
        assert_eq!(
            common::delete_as(&s, &a.token, &format!("/v1/delegations/{}", c.id)).status,
            200
        );
        assert_eq!(
            decide(&s, &a.id, "read", ("File", "repo/src/payroll.rs"))["decision"],
            "Allow"
        );
        (a, b, c)
    };
    // No waiting: a raised taint is durable before the decision that raised it is answered.
    let s = start_on(state.path());
    assert_eq!(
        decide(&s, &b.id, "read", ("File", "repo/src/main.rs"))["decision"],
        "Allow"
    );
    assert_eq!(
        decide(&s, &c.id, "read", ("File", "repo/src/main.rs"))["denied_by"]["bound"],
        "revoked"
    );
    // b's credential still works after the restart; a's taint (2) survived, and so did the
    // raise it made of its live child b (what a's read may reach b through the runtime): neither
    // can start a child at ceiling 1 now.
    for parent in [&a, &b] {
        let r = spawn(&s, &parent.token, child_body(READ_SRC));
        assert_eq!(r.json()["code"], "taint_above_ceiling", "{}", r.text());
    }
    let records = common::get_as(&s, ADMIN, "/v1/audit").json()["records"]
        .as_array()
        .unwrap()
        .clone();
    let events: Vec<&str> = records.iter().map(|r| r["event"].as_str().unwrap()).collect();
    assert!(
        events.starts_with(&["applied", "applied", "applied", "revoked"])
            && events[4..].iter().all(|e| *e != "applied"),
        "{events:?}"
    );
}

#[test]
fn the_audit_needs_the_admin_credential() {
    let env = start();
    let s = &env.server;
    let a = root(s, true, 3600);
    assert_eq!(common::get_as(s, &a.token, "/v1/audit").status, 403);
    assert_eq!(s.get("/v1/audit").status, 401);
    let r = common::get_as(s, ADMIN, "/v1/audit?since=0&limit=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["records"].as_array().unwrap().len(), 1);
}

#[test]
fn a_bundle_change_re_proves_live_grants_and_reports_drift() {
    let bundle = common::copy_bundle(&repo_root());
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(
        bundle.path(),
        Options {
            state: Some(state.path().to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            watch: true,
            poll_interval: Duration::from_millis(500),
            ..Options::default()
        },
    );
    let root = root(&s, true, 3600);
    let child = applied(&spawn(&s, &root.token, child_body(READ_SRC)));
    assert_eq!(s.get("/v1/status").json()["delegation"]["drift"], json!([]));

    // The admin moves repo/src out of repo: the child's grant no longer fits inside its parent's.
    let path = bundle.path().join("entities/resources.json");
    let moved = std::fs::read_to_string(&path).unwrap().replace(
        r#""id": "repo/src" }, "attrs": { "classification": 1 }, "parents": [{ "type": "Folder", "id": "repo" }]"#,
        r#""id": "repo/src" }, "attrs": { "classification": 1 }, "parents": []"#,
    );
    std::fs::write(&path, moved).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            s.get("/v1/status").json()["delegation"]["drift"]
                .as_array()
                .is_some_and(|d| !d.is_empty())
        }),
        "no drift reported: {}",
        s.get("/v1/status").json()
    );
    let drift = s.get("/v1/status").json()["delegation"]["drift"][0].clone();
    assert_eq!(drift["agent"], child.id.as_str());
    assert_eq!(drift["verdict"], "exceeds");
    // Run time never exceeds anyway: the admin maximum (and the root's grant) no longer reach
    // repo/src, so the child is denied.
    let d = decide(&s, &child.id, "read", ("File", "repo/src/main.rs"));
    assert_eq!(d["decision"], "Deny", "{d}");
    let audit = common::get_as(&s, ADMIN, &format!("/v1/audit?agent={}", child.id)).json();
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["event"] == "drift"),
        "{audit}"
    );
}

const ORCHESTRATOR_GRANT: &str = r#"
permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");
"#;

#[test]
fn agents_declared_in_the_bundle_get_their_shipped_grants() {
    let bundle = common::copy_bundle(&repo_root());
    let grants = bundle.path().join("grants");
    std::fs::create_dir_all(&grants).unwrap();
    std::fs::write(grants.join("orchestrator.cedar"), ORCHESTRATOR_GRANT).unwrap();
    let state = tempfile::tempdir().unwrap();
    let token = "orchestrator-credential-from-a-secret";
    let s = TestServer::start(
        bundle.path(),
        Options {
            state: Some(state.path().to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            agent_tokens: [("orchestrator".to_owned(), token.to_owned())].into(),
            watch: true,
            poll_interval: Duration::from_millis(500),
            ..Options::default()
        },
    );
    // The admin maximum lets agents invoke tools; the shipped grant does not.
    assert_eq!(
        decide(&s, "orchestrator", "read", ("File", "repo/README.md"))["decision"],
        "Allow"
    );
    let d = decide(&s, "orchestrator", "invoke", ("Tool", "pytest"));
    assert_eq!(
        d["denied_by"],
        json!({"bound": "grant", "agent": "orchestrator", "own": true, "policies": []})
    );

    // With its credential (from a Secret) it delegates like any agent, with a proof.
    let child = applied(&spawn(&s, token, child_body(READ_SRC)));
    assert_eq!(
        spawn(&s, "not-the-orchestrator-credential", child_body(READ_SRC)).status,
        401
    );

    // GitOps narrows the shipped grant: the change applies on reload.
    std::fs::write(
        grants.join("orchestrator.cedar"),
        r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#,
    )
    .unwrap();
    assert!(common::wait_until(Duration::from_secs(10), || {
        decide(&s, "orchestrator", "write", ("File", "repo/src/main.rs"))["decision"] == "Deny"
    }));
    assert_eq!(
        decide(&s, &child.id, "read", ("File", "repo/src/main.rs"))["decision"],
        "Allow"
    );

    // Removing the grant revokes the agent and everything it spawned.
    std::fs::remove_file(grants.join("orchestrator.cedar")).unwrap();
    assert!(common::wait_until(Duration::from_secs(10), || {
        decide(&s, &child.id, "read", ("File", "repo/src/main.rs"))["denied_by"]["bound"] == "revoked"
    }));
    let audit = common::get_as(&s, ADMIN, "/v1/audit?agent=orchestrator").json();
    let events: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["applied", "grant_replaced", "revoked"], "{audit}");
}

#[test]
fn a_shipped_grant_for_an_undeclared_agent_is_a_bundle_error() {
    let bundle = common::copy_bundle(&repo_root());
    std::fs::create_dir_all(bundle.path().join("grants")).unwrap();
    std::fs::write(bundle.path().join("grants/ghost.cedar"), ORCHESTRATOR_GRANT).unwrap();
    let err = deputy::bundle::Bundle::load(bundle.path(), &deputy::bundle::LoadOptions::default()).unwrap_err();
    assert_eq!(err.problems[0].code.as_str(), "grant_invalid");
    assert_eq!(err.problems[0].file.as_deref(), Some("grants/ghost.cedar"));
}

#[test]
fn a_request_status_filter_must_name_a_status() {
    let env = start();
    let s = &env.server;
    let root = root(s, true, 3600);
    let bad = common::get_as(s, &root.token, "/v1/permission-requests?status=bogus");
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert_eq!(bad.json()["code"], "invalid_field");
    assert!(
        bad.json()["message"].as_str().unwrap().contains("`status`"),
        "{}",
        bad.text()
    );
    for status in [
        "pending",
        "approved",
        "denied",
        "withdrawn",
        "expired",
        "closed",
        "used",
    ] {
        let ok = common::get_as(s, &root.token, &format!("/v1/permission-requests?status={status}"));
        assert_eq!(ok.status, 200, "{status}: {}", ok.text());
    }
}

/// Group commit: concurrent spawns from many parents share commits, yet each child is served
/// the moment its 201 arrives and is there after a restart.
#[test]
fn concurrent_spawns_are_served_and_durable_when_acknowledged() {
    let state = tempfile::tempdir().unwrap();
    let s = start_on(state.path());
    let roots: Vec<Agent> = (0..8).map(|_| root(&s, true, 3600)).collect();
    let children: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = roots
            .iter()
            .map(|r| {
                let s = &s;
                scope.spawn(move || {
                    (0..12)
                        .map(|_| {
                            let child = applied(&spawn(s, &r.token, child_body(READ_SRC)));
                            let d = decide(s, &child.id, "read", ("File", "repo/src/main.rs"));
                            assert_eq!(d["decision"], "Allow", "acknowledged but not served: {d}");
                            child.id
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    assert_eq!(children.len(), 96);
    drop(s);
    let s = start_on(state.path());
    for id in &children {
        let d = decide(&s, id, "read", ("File", "repo/src/main.rs"));
        assert_eq!(d["decision"], "Allow", "{id} lost in the restart: {d}");
    }
}

/// A managed agent's request with only deputy's taint as context has its scope checked as any
/// request's is: the same error, word for word, as a principal deputy does not manage gets
/// (whose request goes through Cedar's whole `Request::new` check).
#[test]
fn a_managed_agents_request_outside_the_schema_is_refused_as_cedar_refuses_it() {
    let env = start();
    let s = &env.server;
    let root = root(s, true, 3600);
    let ask = |agent: &str, resource: (&str, &str), context: Value| {
        s.post(
            "/v1/authorize",
            &json!({
                "principal": {"type": "Agent", "id": agent},
                "action": {"type": "Action", "id": "read"},
                "resource": {"type": resource.0, "id": resource.1},
                "context": context,
            }),
        )
    };
    for resource in [("Tool", "pytest"), ("Robot", "r2")] {
        let managed = ask(&root.id, resource, json!({}));
        let unmanaged = ask("coder-1", resource, json!({}));
        assert_eq!(managed.status, 400, "{}", managed.text());
        assert_eq!(managed.json(), unmanaged.json(), "{resource:?}");
    }
    assert_eq!(
        ask(&root.id, ("Tool", "pytest"), json!({})).json()["code"],
        "action_not_applicable"
    );
    assert_eq!(
        ask(&root.id, ("File", "repo/src/main.rs"), json!({"taint": 3})).json()["decision"],
        "Allow",
        "the caller's taint is deputy's to supply"
    );
}
