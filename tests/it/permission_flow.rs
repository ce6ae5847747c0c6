//! The grantor/grantee loop end to end against a real server: discover capabilities, get a
//! denial that says what is needed, request it, have it approved (or denied, escalated,
//! expired, withdrawn, closed), and act under the extended grant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{decide, get_as, repo_root, Agent, Options, Resp, TestServer};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-permission-tests";

fn start() -> (TestServer, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(&repo_root(), Options::with_state(state.path(), ADMIN));
    (s, state)
}

fn call(s: &TestServer, method: &str, token: &str, path: &str, body: Option<&Value>) -> Resp {
    let auth = format!("Bearer {token}");
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    s.request(
        method,
        path,
        &[("Content-Type", "application/json"), ("Authorization", &auth)],
        bytes.as_deref(),
    )
}

fn create(s: &TestServer, token: &str, body: Value) -> Agent {
    let r = call(s, "POST", token, "/v1/delegations", Some(&body));
    assert_eq!(r.status, 201, "{}", r.text());
    let b = r.json();
    Agent {
        id: b["delegation_id"].as_str().unwrap().to_owned(),
        token: b["credential"].as_str().unwrap().to_owned(),
    }
}

const ROOT_GRANT: &str = r#"
permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");
permit(principal == ?principal, action == Action::"invoke", resource == Tool::"pytest");
"#;
const CHILD_GRANT: &str = r#"
permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");
permit(principal == ?principal, action == Action::"invoke", resource == Tool::"pytest");
"#;

/// A root orchestrator and a role-locked coder under it.
fn family(s: &TestServer) -> (Agent, Agent) {
    let root = create(
        s,
        ADMIN,
        json!({"grant": ROOT_GRANT, "ttl_seconds": 3600, "ceiling": 2, "can_delegate": true, "task": "orchestrate"}),
    );
    let child = create(
        s,
        &root.token,
        json!({"grant": CHILD_GRANT, "ttl_seconds": 600, "ceiling": 1, "can_delegate": false, "task": "code"}),
    );
    (root, child)
}

fn request(s: &TestServer, agent: &Agent, grant: &str, extra: Value) -> Value {
    let mut body = json!({"grant": grant, "reason": "need it for the task"});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let r = call(s, "POST", &agent.token, "/v1/permission-requests", Some(&body));
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()
}

fn decide_request(s: &TestServer, token: &str, id: &str, decision: &str) -> Resp {
    call(
        s,
        "POST",
        token,
        &format!("/v1/permission-requests/{id}"),
        Some(&json!({"decision": decision, "reason": format!("{decision} in test")})),
    )
}

/// The `wait` of the long polls below (under `common::send`'s 30 s read timeout).
const LONG_POLL: Duration = Duration::from_secs(20);

/// `deputy_long_polls_waiting`: long polls whose read found nothing to answer and that now wait
/// for a change.
fn long_polls_waiting(s: &TestServer) -> u64 {
    let metrics = s.get("/metrics").text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("deputy_long_polls_waiting "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no deputy_long_polls_waiting in {metrics}"))
}

/// Waits until deputy counts the long poll `poll` sent as waiting (it is the only one).
fn wait_for_long_poll(s: &TestServer, poll: &std::thread::JoinHandle<Resp>) {
    assert!(
        common::wait_until(Duration::from_secs(10), || long_polls_waiting(s) == 1),
        "the long poll never waited (answered already: {})",
        poll.is_finished()
    );
    assert!(!poll.is_finished(), "a waiting long poll answered with nothing changed");
}

/// A long poll that waited answered because of the change made at `changed_at`, not because
/// its wait ran out (it then re-reads and would find the change all the same).
fn woken(changed_at: Instant) {
    let took = changed_at.elapsed();
    assert!(
        took < LONG_POLL / 2,
        "the long poll answered {took:?} after the change: it was not woken, its wait ran out"
    );
}

#[test]
fn the_whole_loop_from_denial_to_acting_under_the_extended_grant() {
    let (s, _state) = start();
    let (root, child) = family(&s);

    // 2. The grantee discovers what it may do: tools first, no README, no delegating.
    let caps = get_as(&s, &child.token, &format!("/v1/agents/{}/capabilities", child.id)).json();
    assert_eq!(caps["can_delegate"], false);
    let allowed = caps["allowed"].as_array().unwrap();
    assert_eq!(allowed[0]["resource"]["type"], "Tool", "{caps}");
    assert!(allowed
        .iter()
        .any(|c| c["action"] == "read" && c["resource"]["id"] == "repo/src/main.rs"));
    assert!(!allowed.iter().any(|c| c["resource"]["id"] == "repo/README.md"));

    // 3. A denied call says which bound denied it and what would be needed.
    let denied = decide(&s, &child.id, "read", ("File", "repo/README.md"));
    assert_eq!(denied["decision"], "Deny");
    assert_eq!(denied["denied_by"]["bound"], "grant");
    assert_eq!(denied["needed"]["requestable"], true);
    assert_eq!(denied["needed"]["approver"], root.id.as_str());
    let template = denied["needed"]["template"].as_str().unwrap().to_owned();

    // 5. The grantor long-polls for pending requests before any exists. Once deputy counts the
    //    poll as waiting, its read found nothing: only the filing below can answer it before
    //    its deadline.
    let (addr, root_token) = (s.addr, root.token.clone());
    let poll = std::thread::spawn(move || {
        let auth = format!("Bearer {root_token}");
        let path = format!("/v1/permission-requests?status=pending&wait={}s", LONG_POLL.as_secs());
        common::send(addr, "GET", &path, &[("Authorization", &auth)], None)
    });
    wait_for_long_poll(&s, &poll);

    // 4. The grantee asks; the grantor can approve it alone.
    let filed = request(&s, &child, &template, json!({}));
    let filed_at = Instant::now();
    assert_eq!(filed["status"], "pending");
    assert_eq!(filed["approver"], root.id.as_str());
    assert_eq!(filed["can_approve_alone"], true);
    let id = filed["request_id"].as_str().unwrap().to_owned();
    let polled = poll.join().unwrap().json();
    woken(filed_at);
    assert_eq!(polled["requests"][0]["request_id"], id.as_str(), "{polled}");

    // 7. The grantee long-polls its request while the grantor decides.
    let (addr, child_token, rid) = (s.addr, child.token.clone(), id.clone());
    let waiter = std::thread::spawn(move || {
        let auth = format!("Bearer {child_token}");
        let path = format!("/v1/permission-requests/{rid}?wait={}s", LONG_POLL.as_secs());
        common::send(addr, "GET", &path, &[("Authorization", &auth)], None)
    });
    wait_for_long_poll(&s, &waiter);
    // 6. Approve: re-proved against the grantor's delegable view.
    let r = decide_request(&s, &root.token, &id, "approve");
    let approved_at = Instant::now();
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = waiter.join().unwrap().json();
    woken(approved_at);
    assert_eq!(answer["status"], "approved", "{answer}");

    // 8. The grantee acts under the updated grant.
    assert_eq!(
        decide(&s, &child.id, "read", ("File", "repo/README.md"))["decision"],
        "Allow"
    );
    let audit = get_as(&s, ADMIN, &format!("/v1/audit?agent={}", child.id)).json();
    let events: Vec<&str> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    for e in [
        "applied",
        "permission_requested",
        "grant_extended",
        "permission_approved",
    ] {
        assert!(events.contains(&e), "missing `{e}` in {events:?}");
    }
    let record = call(&s, "GET", &child.token, &format!("/v1/delegations/{}", child.id), None).json();
    assert!(record["grant"].as_str().unwrap().contains("repo/README.md"), "{record}");
}

#[test]
fn a_denied_request_changes_nothing() {
    let (s, _state) = start();
    let (root, child) = family(&s);
    let filed = request(
        &s,
        &child,
        r#"permit(principal == ?principal, action == Action::"read", resource == File::"repo/README.md");"#,
        json!({}),
    );
    let id = filed["request_id"].as_str().unwrap();
    let r = decide_request(&s, &root.token, id, "deny");
    assert_eq!(r.json()["status"], "denied");
    assert_eq!(
        decide(&s, &child.id, "read", ("File", "repo/README.md"))["decision"],
        "Deny"
    );
    // A decided request cannot be decided again.
    assert_eq!(
        decide_request(&s, &root.token, id, "approve").json()["code"],
        "request_closed"
    );
}

#[test]
fn a_request_beyond_the_grantor_can_only_be_escalated_and_a_human_approves_it() {
    let (s, _state) = start();
    let (root, child) = family(&s);
    // The root itself cannot push: asking for it exceeds the grantor.
    let push = r#"permit(principal == ?principal, action == Action::"invoke", resource == Tool::"git_push");"#;
    let filed = request(&s, &child, push, json!({}));
    assert_eq!(filed["can_approve_alone"], false, "{filed}");
    let id = filed["request_id"].as_str().unwrap();
    let r = decide_request(&s, &root.token, id, "approve");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "exceeds_approver");
    let r = decide_request(&s, &root.token, id, "escalate");
    assert_eq!(r.json()["approver"], "admin", "{}", r.text());
    // The child is not the approver; the root no longer is either.
    assert_eq!(decide_request(&s, &child.token, id, "approve").status, 403);
    assert_eq!(decide_request(&s, &root.token, id, "approve").status, 403);
    // A human sees it and approves: the root's grant and the child's both grow.
    let pending = get_as(&s, ADMIN, "/v1/permission-requests?status=pending").json();
    assert_eq!(pending["requests"][0]["request_id"], id);
    let r = decide_request(&s, ADMIN, id, "approve");
    assert_eq!(r.json()["status"], "approved", "{}", r.text());
    assert_eq!(
        decide(&s, &child.id, "invoke", ("Tool", "git_push"))["decision"],
        "Allow"
    );
    assert_eq!(
        decide(&s, &root.id, "invoke", ("Tool", "git_push"))["decision"],
        "Allow"
    );
    let history = r.json()["history"].clone();
    let extended = history.as_array().unwrap().last().unwrap()["extended"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(extended.len(), 2, "{history}");
    assert_eq!(extended[1]["proof"], "within");
}

#[test]
fn requests_expire_can_be_withdrawn_and_close_when_the_grantee_is_revoked() {
    let (s, _state) = start();
    let (root, child) = family(&s);
    let g = r#"permit(principal == ?principal, action == Action::"read", resource == File::"repo/README.md");"#;

    let short = request(&s, &child, g, json!({"ttl_seconds": 1}));
    let short_id = short["request_id"].as_str().unwrap().to_owned();
    assert!(common::wait_until(Duration::from_secs(5), || {
        call(
            &s,
            "GET",
            &child.token,
            &format!("/v1/permission-requests/{short_id}"),
            None,
        )
        .json()["status"]
            == "expired"
    }));

    let w = request(&s, &child, g, json!({}));
    let wid = w["request_id"].as_str().unwrap();
    let r = call(
        &s,
        "DELETE",
        &child.token,
        &format!("/v1/permission-requests/{wid}"),
        None,
    );
    assert_eq!(r.json()["status"], "withdrawn", "{}", r.text());
    assert_eq!(decide_request(&s, &root.token, wid, "approve").status, 409);

    let open = request(&s, &child, g, json!({}));
    let oid = open["request_id"].as_str().unwrap();
    assert_eq!(
        call(
            &s,
            "DELETE",
            &root.token,
            &format!("/v1/delegations/{}", child.id),
            None
        )
        .status,
        200
    );
    let r = call(&s, "GET", &root.token, &format!("/v1/permission-requests/{oid}"), None);
    assert_eq!(r.json()["status"], "closed", "{}", r.text());
}

/// The capabilities list is exactly what authorize says, for every (action, resource) pair of
/// the example bundle.
#[test]
fn capabilities_match_authorize_for_every_pair() {
    let (s, _state) = start();
    let (root, child) = family(&s);
    let entities: Vec<Value> = ["entities/resources.json"]
        .iter()
        .flat_map(|f| {
            serde_json::from_str::<Vec<Value>>(&std::fs::read_to_string(repo_root().join(f)).unwrap()).unwrap()
        })
        .collect();
    let actions = [
        ("write", vec!["Folder", "File"]),
        ("invoke", vec!["Tool"]),
        ("use_credential", vec!["Credential"]),
        ("send_message", vec!["Channel"]),
        // Reads last: an allowed read raises the taint, which changes later writes.
        ("read", vec!["Folder", "File"]),
    ];
    for agent in [&child, &root] {
        let caps = get_as(&s, ADMIN, &format!("/v1/agents/{}/capabilities", agent.id)).json();
        let listed: BTreeSet<(String, String, String)> = caps["allowed"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["action"].as_str().unwrap().to_owned(),
                    c["resource"]["type"].as_str().unwrap().to_owned(),
                    c["resource"]["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut decided = BTreeSet::new();
        let mut pairs = 0;
        for (action, types) in &actions {
            for e in &entities {
                let (ty, id) = (e["uid"]["type"].as_str().unwrap(), e["uid"]["id"].as_str().unwrap());
                if !types.contains(&ty) {
                    continue;
                }
                pairs += 1;
                if decide(&s, &agent.id, action, (ty, id))["decision"] == "Allow" {
                    decided.insert(((*action).to_owned(), ty.to_owned(), id.to_owned()));
                }
            }
        }
        assert!(pairs >= 15, "too few pairs: {pairs}");
        assert!(!decided.is_empty());
        assert_eq!(listed, decided, "capabilities of {} differ from authorize", agent.id);
    }
}
