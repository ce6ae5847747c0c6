//! Attacks on the permission flow followed by a spawn: an agent whose grant was just extended by
//! an approval passes on exactly its new grant — never what the approval did not give, what its
//! parent holds as `@delegable("false")`, or what the admin maximum denies — and a spawn racing
//! the approval, a denial or a withdrawal never yields a child above its parent's grant as it
//! stood when the child was written. Over HTTP against a real server on the example bundle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::{applied, decide, delete_as, get_as, post_as, repo_root, spawn, Agent, Options, Resp, TestServer};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-regrant-attacks";

fn start() -> (TestServer, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(&repo_root(), Options::with_state(state.path(), ADMIN));
    (s, state)
}

/// The root: reads the repo, writes src, runs pytest, and pushes, the last not to be passed on.
const ROOT_GRANT: &str = r#"
permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");
permit(principal == ?principal, action == Action::"invoke", resource == Tool::"pytest");
@delegable("false")
permit(principal == ?principal, action == Action::"invoke", resource == Tool::"git_push");
"#;
/// The middle agent starts with src reads only, and may delegate.
const MID_GRANT: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#;

const READ_README: &str =
    r#"permit(principal == ?principal, action == Action::"read", resource == File::"repo/README.md");"#;
const WRITE_MAIN: &str =
    r#"permit(principal == ?principal, action == Action::"write", resource == File::"repo/src/main.rs");"#;
const READ_REPO: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;
const PUSH: &str = r#"permit(principal == ?principal, action == Action::"invoke", resource == Tool::"git_push");"#;
/// Beyond the admin maximum: agents may write in `repo/src` only.
const WRITE_README: &str =
    r#"permit(principal == ?principal, action == Action::"write", resource == File::"repo/README.md");"#;

fn root(s: &TestServer) -> Agent {
    applied(&spawn(
        s,
        ADMIN,
        json!({"grant": ROOT_GRANT, "ttl_seconds": 3600, "ceiling": 2, "can_delegate": true, "task": "orchestrate"}),
    ))
}

fn mid(s: &TestServer, root: &Agent) -> Agent {
    applied(&spawn(
        s,
        &root.token,
        json!({"grant": MID_GRANT, "ttl_seconds": 1800, "ceiling": 1, "can_delegate": true, "task": "code"}),
    ))
}

fn child_body(grant: &str) -> Value {
    json!({"grant": grant, "ttl_seconds": 600, "ceiling": 1, "can_delegate": false, "task": "subtask"})
}

fn file(s: &TestServer, agent: &Agent, grant: &str) -> String {
    let r = post_as(
        s,
        &agent.token,
        "/v1/permission-requests",
        &json!({"grant": grant, "reason": "need it"}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    r.json()["request_id"].as_str().unwrap().to_owned()
}

fn decide_request(s: &TestServer, token: &str, id: &str, decision: &str) -> Resp {
    post_as(
        s,
        token,
        &format!("/v1/permission-requests/{id}"),
        &json!({"decision": decision, "reason": "test"}),
    )
}

/// Every (action, resource) pair of the example bundle an agent may be asked about.
const PAIRS: &[(&str, (&str, &str))] = &[
    ("write", ("File", "repo/src/main.rs")),
    ("write", ("File", "repo/README.md")),
    ("write", ("Folder", "repo/src")),
    ("invoke", ("Tool", "pytest")),
    ("invoke", ("Tool", "git_push")),
    ("use_credential", ("Credential", "github-token")),
    ("send_message", ("Channel", "slack-eng")),
    // Reads last: an allowed read raises the taint, which changes later writes.
    ("read", ("File", "repo/README.md")),
    ("read", ("File", "repo/src/main.rs")),
    ("read", ("Folder", "repo/docs")),
    ("read", ("Folder", "repo")),
];

/// What `agent` is allowed, pair by pair (decided in `PAIRS` order).
fn allowed(s: &TestServer, agent: &str) -> Vec<bool> {
    PAIRS
        .iter()
        .map(|(action, res)| decide(s, agent, action, *res)["decision"] == "Allow")
        .collect()
}

/// `child` is allowed nothing `parent` is not (asked in the same order, so the taint each read
/// raises is the same on both sides when the child's reads are within the parent's).
fn within(s: &TestServer, child: &str, parent: &str) {
    let (c, p) = (allowed(s, child), allowed(s, parent));
    for (i, (c, p)) in c.iter().zip(&p).enumerate() {
        assert!(
            !c || *p,
            "child {child} is allowed {:?} which its parent {parent} is not",
            PAIRS[i]
        );
    }
}

/// The capabilities' `allowed` list holds only pairs `/v1/authorize` allows.
fn capabilities_claim_no_more(s: &TestServer, agent: &Agent) {
    let caps = get_as(s, &agent.token, &format!("/v1/agents/{}/capabilities", agent.id)).json();
    for c in caps["allowed"].as_array().unwrap() {
        let (action, ty, id) = (
            c["action"].as_str().unwrap(),
            c["resource"]["type"].as_str().unwrap(),
            c["resource"]["id"].as_str().unwrap(),
        );
        let d = common::send(
            s.addr,
            "POST",
            "/access/v1/search/action",
            &[("Content-Type", "application/json")],
            Some(
                json!({"subject": {"type": "Agent", "id": agent.id}, "resource": {"type": ty, "id": id}})
                    .to_string()
                    .as_bytes(),
            ),
        )
        .json();
        assert!(
            d["results"].as_array().unwrap().iter().any(|r| r["name"] == action),
            "capabilities of {} list {action} on {ty}::{id}, which a search does not find: {d}",
            agent.id
        );
    }
}

/// After an approval extends its grant, an agent passes on the new grant and no more: what was
/// approved, yes; what its parent holds as `@delegable("false")`, what the approval did not give,
/// and what the admin maximum denies (even once a human has put it into the grant), no.
#[test]
fn a_regranted_agent_passes_on_its_new_grant_and_nothing_above_it() {
    let (s, _state) = start();
    let root = root(&s);
    let mid = mid(&s, &root);

    // Before: the README is not the middle agent's to pass on.
    let r = spawn(&s, &mid.token, child_body(READ_README));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "grant_exceeds_parent");

    // The root approves the README: the middle agent reads it and passes it on.
    let id = file(&s, &mid, READ_README);
    let r = decide_request(&s, &root.token, &id, "approve");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        decide(&s, &mid.id, "read", ("File", "repo/README.md"))["decision"],
        "Allow"
    );
    let kid = applied(&spawn(&s, &mid.token, child_body(READ_README)));
    assert_eq!(
        decide(&s, &kid.id, "read", ("File", "repo/README.md"))["decision"],
        "Allow"
    );
    // Nothing the approval did not give: the whole repo is still the root's alone.
    let r = spawn(&s, &mid.token, child_body(READ_REPO));
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "grant_exceeds_parent");

    // The root's non-delegable push cannot be approved by it, nor passed on.
    let id = file(&s, &mid, PUSH);
    let r = decide_request(&s, &root.token, &id, "approve");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["code"], "exceeds_approver");
    let r = spawn(&s, &mid.token, child_body(PUSH));
    assert_eq!(r.status, 403, "{}", r.text());

    // A human approves what the admin maximum denies (writing the README): it enters the grants
    // (root's and mid's) and a child may be given it, but no agent on the chain, nor the child,
    // is ever allowed it.
    let id = file(&s, &mid, WRITE_README);
    let r = decide_request(&s, &root.token, &id, "escalate");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = decide_request(&s, ADMIN, &id, "approve");
    assert_eq!(r.status, 200, "{}", r.text());
    let over = applied(&spawn(&s, &mid.token, child_body(WRITE_README)));
    let d = decide(&s, &over.id, "write", ("File", "repo/README.md"));
    assert_eq!(d["decision"], "Deny", "{d}");
    assert_eq!(d["denied_by"]["bound"], "admin", "{d}");
    within(&s, &over.id, &mid.id);
    capabilities_claim_no_more(&s, &over);
    for agent in [&mid, &root] {
        let d = decide(&s, &agent.id, "write", ("File", "repo/README.md"));
        assert_eq!(d["decision"], "Deny", "{d}");
    }

    within(&s, &kid.id, &mid.id);
    within(&s, &mid.id, &root.id);
    capabilities_claim_no_more(&s, &kid);
    capabilities_claim_no_more(&s, &mid);
    // And after a restart nothing moved.
    let state = _state;
    drop(s);
    let s = TestServer::start(&repo_root(), Options::with_state(state.path(), ADMIN));
    within(&s, &kid.id, &mid.id);
    within(&s, &mid.id, &root.id);
    let r = spawn(&s, &mid.token, child_body(READ_REPO));
    assert_eq!(r.status, 403, "{}", r.text());
}

/// What one round of a spawn raced against a decision on its parent's request ended as.
struct Round {
    spawn: Resp,
    decision: Resp,
}

/// Files `WRITE_MAIN` for a fresh middle agent, then has `decider` decide it (`how`) while the
/// middle agent spawns a child with exactly what it asked for; both calls start together.
fn race(s: &TestServer, root: &Agent, how: &str) -> (Agent, Round) {
    let mid = mid(s, root);
    let id = file(s, &mid, WRITE_MAIN);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let (addr, mid_token) = (s.addr, mid.token.clone());
    let b = std::sync::Arc::clone(&barrier);
    let spawner = std::thread::spawn(move || {
        let body = serde_json::to_vec(&child_body(WRITE_MAIN)).unwrap();
        let auth = format!("Bearer {mid_token}");
        b.wait();
        common::send(
            addr,
            "POST",
            "/v1/delegations",
            &[("Content-Type", "application/json"), ("Authorization", &auth)],
            Some(&body),
        )
    });
    barrier.wait();
    let decision = match how {
        "withdraw" => delete_as(s, &mid.token, &format!("/v1/permission-requests/{id}")),
        _ => decide_request(s, &root.token, &id, how),
    };
    let spawn = spawner.join().unwrap();
    (mid, Round { spawn, decision })
}

/// A spawn racing the approval of its parent's request applies only if the approval committed
/// first, and the child is then within the new grant; racing a denial or a withdrawal it never
/// applies. Either way no child is allowed anything its parent is not, and the request's final
/// status agrees with what the parent is allowed.
#[test]
fn a_spawn_racing_an_approval_a_denial_or_a_withdrawal_stays_within_the_parent() {
    let (s, _state) = start();
    let root = root(&s);
    let mut approvals = 0;
    for round in 0..12 {
        let how = ["approve", "deny", "withdraw"][round % 3];
        let (mid, r) = race(&s, &root, how);
        assert!(
            [200, 409].contains(&r.decision.status),
            "{how}: {} {}",
            r.decision.status,
            r.decision.text()
        );
        let write = decide(&s, &mid.id, "write", ("File", "repo/src/main.rs"));
        let extended = write["decision"] == "Allow";
        approvals += usize::from(extended);
        // The decision took effect exactly when it answered 200.
        assert_eq!(
            extended,
            how == "approve" && r.decision.status == 200,
            "{how} answered {} and the parent's write is {write}",
            r.decision.text()
        );
        match r.spawn.status {
            201 => {
                assert!(
                    extended,
                    "{how}: a child was applied with a grant its parent never got: {}",
                    r.spawn.text()
                );
                let kid = applied(&r.spawn);
                let d = decide(&s, &kid.id, "write", ("File", "repo/src/main.rs"));
                assert_eq!(d["decision"], "Allow", "{d}");
                within(&s, &kid.id, &mid.id);
                capabilities_claim_no_more(&s, &kid);
            }
            403 | 409 => {
                let code = r.spawn.json()["code"].clone();
                assert!(
                    code == "grant_exceeds_parent" || code == "state_changed",
                    "{how}: unexpected refusal {}",
                    r.spawn.text()
                );
            }
            other => panic!("{how}: the spawn answered {other}: {}", r.spawn.text()),
        }
        // After the round, the refused grant is refused again, or applied again after an approval.
        let again = spawn(&s, &mid.token, child_body(WRITE_MAIN));
        assert_eq!(again.status == 201, extended, "{how}: {}", again.text());
    }
    // Some approval must have taken effect, or the rounds tested nothing but refusals.
    assert!(approvals > 0, "no approval answered 200");
}
