//! Agent-to-agent invocation (`POST /v1/invocations`) over HTTP against a real server and a
//! real SQLite state: the laundering scenario, allowlists in Cedar, cycles, depth, separate
//! sessions of one callee, revocation of either side, restart. Bundle: tests/fixtures/invocation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::Path;

use common::{decide, delete_as, get_as, post_as, Options, Resp, TestServer};
use serde_json::{json, Value};

pub(crate) const ADMIN: &str = "admin-credential-for-invocation-tests";

const AGENTS: [&str; 5] = ["sales", "analyst", "reviewer", "publisher", "outsider"];

pub(crate) fn token(agent: &str) -> String {
    format!("{agent}-credential-from-a-secret-0123")
}

fn options(state: &Path) -> Options {
    Options {
        state: Some(state.to_path_buf()),
        admin_token: Some(ADMIN.to_owned()),
        agent_tokens: AGENTS.iter().map(|a| ((*a).to_owned(), token(a))).collect(),
        ..Options::default()
    }
}

pub(crate) struct Env {
    pub(crate) server: TestServer,
    bundle: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Env {
    pub(crate) fn start() -> Env {
        let bundle = tempfile::tempdir().unwrap();
        common::copy_dir(&common::repo_root().join("tests/fixtures/invocation"), bundle.path());
        let state = tempfile::tempdir().unwrap();
        let server = TestServer::start(bundle.path(), options(state.path()));
        Env { server, bundle, state }
    }

    /// Stops the server and starts a new one on the same bundle and state.
    pub(crate) fn restart(self) -> Env {
        let Env { server, bundle, state } = self;
        drop(server);
        let server = TestServer::start(bundle.path(), options(state.path()));
        Env { server, bundle, state }
    }

    /// Another process's connection to the state file.
    pub(crate) fn state_db(&self) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.state.path().join("deputy.sqlite3")).unwrap();
        c.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
        c
    }
}

pub(crate) struct Session {
    pub(crate) id: String,
    pub(crate) token: String,
    body: Value,
}

pub(crate) fn invoke(s: &TestServer, caller_token: &str, callee: &str, ttl: i64) -> Resp {
    post_as(
        s,
        caller_token,
        "/v1/invocations",
        &json!({
            "callee": {"type": "Agent", "id": callee},
            "task": format!("help with {callee}'s speciality"),
            "reason": "a test",
            "ttl_seconds": ttl,
        }),
    )
}

/// The session an invocation started, accepted by its callee's runtime with `callee_token`.
fn started_for(s: &TestServer, r: &Resp, callee_token: &str) -> Session {
    assert_eq!(r.status, 201, "expected a session: {}", r.text());
    let body = r.json();
    assert!(
        body.get("credential").is_none(),
        "the caller must never get the session's credential: {body}"
    );
    assert_eq!(body["accepted"], false, "{body}");
    let id = body["session_id"].as_str().unwrap().to_owned();
    assert_eq!(body["accept"], format!("/v1/invocations/{id}/accept"));
    let a = accept(s, &id, callee_token);
    assert_eq!(a.status, 200, "the callee could not accept: {}", a.text());
    Session {
        token: a.json()["credential"].as_str().unwrap().to_owned(),
        id,
        body,
    }
}

/// The session an invocation started, accepted with the callee's own credential (the admin's
/// for an agent only the bundle declares, which has none).
pub(crate) fn started(s: &TestServer, r: &Resp) -> Session {
    let callee = r.json()["callee"]["id"].as_str().map(str::to_owned).unwrap_or_default();
    let with = if AGENTS.contains(&callee.as_str()) {
        token(&callee)
    } else {
        ADMIN.to_owned()
    };
    started_for(s, r, &with)
}

pub(crate) fn accept(s: &TestServer, session: &str, with: &str) -> Resp {
    post_as(s, with, &format!("/v1/invocations/{session}/accept"), &json!({}))
}

fn refused(r: &Resp, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "expected {status} {code}: {}", r.text());
    let body = r.json();
    assert_eq!(body["code"], code, "{body}");
    body
}

pub(crate) fn allowed(s: &TestServer, agent: &str, action: &str, resource: (&str, &str)) -> bool {
    decide(s, agent, action, resource)["decision"] == "Allow"
}

/// An agent's record as the admin sees it.
pub(crate) fn record(s: &TestServer, id: &str) -> Value {
    let r = get_as(s, ADMIN, &format!("/v1/delegations/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn audit_events(s: &TestServer, agent: &str) -> Vec<Value> {
    let r = get_as(s, ADMIN, &format!("/v1/audit?agent={agent}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["records"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_confidential_caller_cannot_launder_through_a_public_agent() {
    let env = Env::start();
    let s = &env.server;
    // sales reads the CRM: its taint is CONFIDENTIAL (2).
    assert!(allowed(s, "sales", "read", ("Doc", "deals")));

    // The PUBLIC-ceiling publisher may not receive what sales has read, whatever the bundle says.
    let body = refused(
        &invoke(s, &token("sales"), "publisher", 600),
        403,
        "taint_above_ceiling",
    );
    assert!(body["message"].as_str().unwrap().contains("publisher"), "{body}");

    // A CONFIDENTIAL-ceiling analyst may: its session starts with sales's taint.
    let session = started(s, &invoke(s, &token("sales"), "analyst", 600));
    assert_eq!(session.body["taint"], 2);
    assert_eq!(session.body["depth"], 1);
    assert_eq!(session.body["chain"], json!(["sales", "analyst"]));
    assert_eq!(session.body["callee"], json!({"type": "Agent", "id": "analyst"}));
    assert!(session.id.starts_with("agt-"), "deputy mints the session's id");

    // The session cannot write down: the denial names the caller the taint came from.
    let d = decide(s, &session.id, "send", ("Channel", "public"));
    assert_eq!(d["decision"], "Deny");
    assert_eq!(
        d["denied_by"],
        json!({"bound": "taint", "classification": 0, "taint": 2, "inherited_from": "sales"})
    );
    // It acts with the analyst's authority at its own level.
    assert!(allowed(s, &session.id, "send", ("Channel", "board")));
    assert!(allowed(s, &session.id, "read", ("Doc", "deals")));

    // The analyst itself (and its other sessions) are untouched by sales's taint.
    assert!(allowed(s, "analyst", "send", ("Channel", "public")));
    assert_eq!(record(s, "analyst")["taint"], 0);

    // The audit trail says who invoked whom, with which taint, under which policy version.
    let events = audit_events(s, &session.id);
    let invoked = events
        .iter()
        .find(|e| e["event"] == "invoked")
        .expect("an invoked record");
    assert_eq!(invoked["actor"], "Agent::\"sales\"");
    assert_eq!(invoked["details"]["caller"], "sales");
    assert_eq!(invoked["details"]["callee"], "analyst");
    assert_eq!(invoked["details"]["caller_taint"], 2);
    assert_eq!(invoked["details"]["taint"], 2);
    assert_eq!(invoked["details"]["depth"], 1);
    assert!(invoked["details"]["policy_version"].is_string());
    let rejected = audit_events(s, "sales");
    assert!(
        rejected
            .iter()
            .any(|e| e["event"] == "invocation_rejected" && e["details"]["code"] == "taint_above_ceiling"),
        "{rejected:?}"
    );
    let metrics = s.get("/metrics").text();
    for (outcome, n) in [("started", 1), ("rejected", 1), ("accepted", 1)] {
        let line = format!("deputy_invocations_total{{outcome=\"{outcome}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in:\n{metrics}");
    }
}

#[test]
fn who_may_invoke_whom_is_ordinary_cedar() {
    let env = Env::start();
    let s = &env.server;
    let body = refused(
        &invoke(s, &token("outsider"), "analyst", 600),
        403,
        "invocation_forbidden",
    );
    assert_eq!(body["policies"], json!(["analyst-allowlist"]));
    // The same caller may invoke an agent without an allowlist; a listed caller the analyst.
    started(s, &invoke(s, &token("outsider"), "reviewer", 600));
    started(s, &invoke(s, &token("reviewer"), "analyst", 600));

    // A session is asked about as the agent it serves: the outsider's session of the reviewer
    // is the reviewer invoking, and the allowlist names the reviewer.
    let via = started(s, &invoke(s, &token("outsider"), "reviewer", 600));
    started(s, &invoke(s, &via.token, "analyst", 600));
}

#[test]
fn cycles_on_the_invocation_chain_are_rejected() {
    let env = Env::start();
    let s = &env.server;
    refused(&invoke(s, &token("sales"), "sales", 600), 409, "invocation_cycle");
    let b = started(s, &invoke(s, &token("sales"), "analyst", 600));
    // A → B → A
    let body = refused(&invoke(s, &b.token, "sales", 600), 409, "invocation_cycle");
    assert_eq!(body["chain"], json!(["sales", "analyst"]));
    // B's session invoking B
    refused(&invoke(s, &b.token, "analyst", 600), 409, "invocation_cycle");
    // A → B → C → A
    let c = started(s, &invoke(s, &b.token, "reviewer", 600));
    assert_eq!(c.body["chain"], json!(["sales", "analyst", "reviewer"]));
    refused(&invoke(s, &c.token, "sales", 600), 409, "invocation_cycle");
    refused(&invoke(s, &c.token, "analyst", 600), 409, "invocation_cycle");
}

#[test]
fn the_invocation_chain_is_at_most_three_deep() {
    let env = Env::start();
    let s = &env.server;
    let d1 = started(s, &invoke(s, &token("publisher"), "analyst", 600));
    let d2 = started(s, &invoke(s, &d1.token, "reviewer", 600));
    let d3 = started(s, &invoke(s, &d2.token, "sales", 600));
    assert_eq!(d3.body["depth"], 3);
    assert_eq!(d3.body["chain"], json!(["publisher", "analyst", "reviewer", "sales"]));
    refused(&invoke(s, &d3.token, "outsider", 600), 403, "invocation_too_deep");
}

#[test]
fn the_depth_limit_is_the_operators() {
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo_root().join("tests/fixtures/invocation"), bundle.path());
    let state = tempfile::tempdir().unwrap();
    let mut opts = options(state.path());
    opts.limits.max_invocation_depth = 1;
    let s = &TestServer::start(bundle.path(), opts);
    let d1 = started(s, &invoke(s, &token("publisher"), "analyst", 600));
    let body = refused(&invoke(s, &d1.token, "reviewer", 600), 403, "invocation_too_deep");
    assert!(body["message"].as_str().unwrap().contains("limit is 1"), "{body}");
}

#[test]
fn concurrent_callers_get_separate_sessions_of_one_callee() {
    let env = Env::start();
    let s = &env.server;
    assert!(allowed(s, "sales", "read", ("Doc", "deals")));
    let (tainted, clean) = std::thread::scope(|scope| {
        let a = scope.spawn(|| invoke(s, &token("sales"), "analyst", 600));
        let b = scope.spawn(|| invoke(s, &token("publisher"), "analyst", 600));
        (started(s, &a.join().unwrap()), started(s, &b.join().unwrap()))
    });
    assert_ne!(tainted.id, clean.id);
    assert_eq!(tainted.body["taint"], 2);
    assert_eq!(clean.body["taint"], 0);
    assert_eq!(
        decide(s, &tainted.id, "send", ("Channel", "public"))["denied_by"]["inherited_from"],
        "sales"
    );
    assert!(allowed(s, &clean.id, "send", ("Channel", "public")));
    // What one session reads taints that session only.
    assert!(allowed(s, &clean.id, "read", ("Doc", "deals")));
    assert!(!allowed(s, &clean.id, "send", ("Channel", "public")));
    assert_eq!(record(s, "analyst")["taint"], 0);
    assert!(allowed(s, "analyst", "send", ("Channel", "public")));
    // ... and its caller, whom the session's answers reach.
    assert_eq!(record(s, "publisher")["taint"], 2);
    let fresh = started(s, &invoke(s, &token("reviewer"), "analyst", 600));
    assert!(allowed(s, &fresh.id, "send", ("Channel", "public")));
}

/// A root agent the admin creates (deputy manages it): reads everything, sends anywhere.
pub(crate) fn managed_root(s: &TestServer, ttl: i64) -> (String, String) {
    let r = post_as(
        s,
        ADMIN,
        "/v1/delegations",
        &json!({
            "grant": "permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"root\");\n\
                      permit(principal == ?principal, action == Action::\"send\", resource);",
            "ttl_seconds": ttl,
            "ceiling": 2,
            "task": "invoke others",
        }),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let b = r.json();
    (
        b["delegation_id"].as_str().unwrap().to_owned(),
        b["credential"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn revoking_the_caller_or_the_callee_ends_the_session() {
    let env = Env::start();
    let s = &env.server;
    let (caller, caller_token) = managed_root(s, 3600);
    let session = started(s, &invoke(s, &caller_token, "reviewer", 7 * 24 * 3600));
    // Never longer than the caller lives.
    assert_eq!(session.body["ttl_capped"], true);
    assert!(session.body["ttl_seconds"].as_i64().unwrap() <= 3600);
    let nested = started(s, &invoke(s, &session.token, "analyst", 600));
    assert!(allowed(s, &session.id, "send", ("Channel", "public")));

    let r = delete_as(s, ADMIN, &format!("/v1/delegations/{caller}"));
    assert_eq!(r.status, 200, "{}", r.text());
    let ended = r.json()["revoked"].clone();
    assert!(ended.as_array().unwrap().contains(&json!(session.id)), "{ended}");
    assert!(ended.as_array().unwrap().contains(&json!(nested.id)), "{ended}");

    // Its credential stops working, and its decisions deny.
    refused(&invoke(s, &session.token, "sales", 600), 401, "unauthenticated");
    refused(&invoke(s, &nested.token, "sales", 600), 401, "unauthenticated");
    let d = decide(s, &session.id, "send", ("Channel", "public"));
    assert_eq!(d["decision"], "Deny");
    assert_eq!(d["denied_by"]["bound"], "revoked");
    assert_eq!(
        decide(s, &nested.id, "send", ("Channel", "public"))["denied_by"]["bound"],
        "revoked"
    );
    let events = audit_events(s, &session.id);
    let end = events
        .iter()
        .find(|e| e["event"] == "session_ended")
        .expect("session_ended");
    assert_eq!(end["details"]["how"], "revoked");
    assert_eq!(end["details"]["caller"], caller);
    assert_eq!(end["details"]["callee"], "reviewer");

    // Revoking the callee ends its sessions too (and leaves its callers alone).
    let (other, other_token) = managed_root(s, 3600);
    let (callee, callee_token) = managed_root(s, 3600);
    let of_callee = started_for(s, &invoke(s, &other_token, &callee, 600), &callee_token);
    assert!(allowed(s, &of_callee.id, "send", ("Channel", "public")));
    assert_eq!(delete_as(s, ADMIN, &format!("/v1/delegations/{callee}")).status, 200);
    assert_eq!(
        decide(s, &of_callee.id, "send", ("Channel", "public"))["denied_by"]["bound"],
        "revoked"
    );
    refused(&invoke(s, &of_callee.token, "sales", 600), 401, "unauthenticated");
    assert!(allowed(s, &other, "send", ("Channel", "public")));
}

#[test]
fn what_a_session_reads_reaches_its_caller_at_once() {
    let env = Env::start();
    let s = &env.server;
    let (caller, caller_token) = managed_root(s, 3600);
    let session = started(s, &invoke(s, &caller_token, "reviewer", 600));
    assert!(allowed(s, &caller, "send", ("Channel", "public")));
    // The session's answers may reach its caller at any moment (before `complete`, or with
    // no `complete` at all): the read that taints the session taints the caller with it.
    assert!(allowed(s, &session.id, "read", ("Doc", "deals")));
    assert_eq!(record(s, &caller)["taint"], 2);
    assert!(!allowed(s, &caller, "send", ("Channel", "public")));
    // The session completes (its callee's runtime, with the session's credential).
    let r = post_as(
        s,
        &session.token,
        &format!("/v1/invocations/{}/complete", session.id),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    refused(&invoke(s, &session.token, "sales", 600), 401, "unauthenticated");
    assert_eq!(record(s, &caller)["taint"], 2);
    let events = audit_events(s, &session.id);
    assert!(events
        .iter()
        .any(|e| e["event"] == "session_ended" && e["details"]["how"] == "completed"));

    // Invoking an agent that has read something is reading it: what the callee holds may come
    // back in the session's answers, so the caller starts at the session's taint.
    let (second, second_token) = managed_root(s, 3600);
    assert!(allowed(s, "sales", "read", ("Doc", "deals")));
    let of_sales = started(s, &invoke(s, &second_token, "sales", 600));
    assert_eq!(of_sales.body["taint"], 2);
    assert_eq!(record(s, &second)["taint"], 2);
    // A session of a session: the raise goes all the way up the invocation chain.
    let (third, third_token) = managed_root(s, 3600);
    let first = started(s, &invoke(s, &third_token, "reviewer", 600));
    let nested = started(s, &invoke(s, &first.token, "outsider", 600));
    assert!(allowed(s, &nested.id, "read", ("Doc", "deals")));
    assert_eq!(record(s, &first.id)["taint"], 2);
    assert_eq!(record(s, &third)["taint"], 2);
    // Durable: after a restart the callers still hold what reached them.
    let env = env.restart();
    for id in [&caller, &second, &third] {
        assert_eq!(record(&env.server, id)["taint"], 2, "{id}");
    }
}

/// What the callee reads while a session serves it may come back in the session's answers: it
/// reaches the session and, through it, the caller, before the callee's read is answered.
#[test]
fn what_a_callee_reads_while_serving_reaches_its_callers() {
    let env = Env::start();
    let s = &env.server;
    let (caller, caller_token) = managed_root(s, 3600);
    let session = started(s, &invoke(s, &caller_token, "sales", 600));
    assert_eq!(session.body["taint"], 0);
    assert!(allowed(s, &caller, "send", ("Channel", "public")));
    assert!(allowed(s, "sales", "read", ("Doc", "deals")));
    assert_eq!(record(s, &session.id)["taint"], 2);
    assert_eq!(record(s, &caller)["taint"], 2);
    assert!(!allowed(s, &caller, "send", ("Channel", "public")));
}

#[test]
fn only_the_callee_claims_its_session_and_only_once() {
    let env = Env::start();
    let s = &env.server;
    assert!(allowed(s, "sales", "read", ("Doc", "deals")));
    let r = invoke(s, &token("sales"), "analyst", 600);
    assert_eq!(r.status, 201, "{}", r.text());
    let body = r.json();
    assert!(body.get("credential").is_none(), "{body}");
    let id = body["session_id"].as_str().unwrap().to_owned();
    // Until it is claimed, nothing authenticates as the session.
    let forged = format!("dpt.{id}.{}", "0".repeat(64));
    refused(&invoke(s, &forged, "reviewer", 600), 401, "unauthenticated");
    // Neither the caller, nor another agent, nor a session of the callee claims it.
    for other in [token("sales"), token("reviewer")] {
        refused(&accept(s, &id, &other), 403, "not_your_delegation");
    }
    let of_analyst = started(s, &invoke(s, &token("reviewer"), "analyst", 600));
    refused(&accept(s, &id, &of_analyst.token), 403, "not_your_delegation");
    refused(
        &accept(s, "agt-nothing", &token("analyst")),
        404,
        "delegation_not_found",
    );
    refused(&accept(s, "sales", &token("analyst")), 404, "delegation_not_found");

    // The callee's runtime finds what waits for it; the caller sees what it started.
    let listed = |with: &str| -> Vec<Value> {
        let r = get_as(s, with, "/v1/invocations");
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["sessions"].as_array().unwrap().clone()
    };
    let waiting: Vec<Value> = listed(&token("analyst"))
        .into_iter()
        .filter(|v| v["accepted"] == false)
        .collect();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["session_id"], json!(id));
    assert_eq!(waiting[0]["caller"], "sales");
    assert!(listed(&token("sales")).iter().any(|v| v["session_id"] == json!(id)));
    assert!(listed(&token("outsider")).is_empty());

    // The callee claims it from eight threads at once: exactly one gets the credential.
    let barrier = std::sync::Barrier::new(8);
    let answers: Vec<Resp> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    accept(s, &id, &token("analyst"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won: Vec<&Resp> = answers.iter().filter(|r| r.status == 200).collect();
    assert_eq!(won.len(), 1, "{:?}", answers.iter().map(Resp::text).collect::<Vec<_>>());
    for r in answers.iter().filter(|r| r.status != 200) {
        refused(r, 409, "session_already_accepted");
    }
    let credential = won[0].json()["credential"].as_str().unwrap().to_owned();
    assert_eq!(won[0].json()["taint"], 2);
    let nested = started(s, &invoke(s, &credential, "reviewer", 600));
    assert_eq!(nested.body["chain"], json!(["sales", "analyst", "reviewer"]));
    assert_eq!(record(s, &id)["session"]["accepted"], true);
    let accepted = audit_events(s, &id);
    let claim = accepted
        .iter()
        .find(|e| e["event"] == "session_accepted")
        .expect("a session_accepted record");
    assert_eq!(claim["actor"], "Agent::\"analyst\"");

    // After a restart the claimed credential still works and a second claim still fails.
    let env = env.restart();
    let s = &env.server;
    refused(&accept(s, &id, &token("analyst")), 409, "session_already_accepted");
    refused(&accept(s, &id, ADMIN), 409, "session_already_accepted");
    started(s, &invoke(s, &credential, "outsider", 600));

    // A session cancelled before it was claimed cannot be claimed.
    let r = invoke(s, &token("sales"), "analyst", 600);
    let cancelled = r.json()["session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        delete_as(s, &token("sales"), &format!("/v1/invocations/{cancelled}")).status,
        200
    );
    refused(&accept(s, &cancelled, &token("analyst")), 404, "delegation_not_found");
    // `/v1/invocations/{id}` names sessions only.
    assert_eq!(get_as(s, ADMIN, "/v1/invocations/sales").status, 404);
    assert_eq!(delete_as(s, ADMIN, "/v1/invocations/sales").status, 404);
    assert_eq!(
        get_as(s, &token("sales"), &format!("/v1/invocations/{cancelled}")).status,
        200
    );
}

#[test]
fn a_session_acts_for_its_callee_and_nothing_more() {
    let env = Env::start();
    let s = &env.server;
    let session = started(s, &invoke(s, &token("sales"), "publisher", 600));
    // The publisher's grant reads the news only; neither sales's authority nor more.
    assert!(allowed(s, &session.id, "read", ("Doc", "press")));
    let d = decide(s, &session.id, "read", ("Doc", "deals"));
    assert_eq!(d["decision"], "Deny");
    assert_eq!(d["denied_by"]["bound"], "ceiling");
    // A session cannot spawn, ask for more, or be invoked itself.
    let spawn = post_as(
        s,
        &session.token,
        "/v1/delegations",
        &json!({"grant": "permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"news\");",
                "ttl_seconds": 60, "task": "sub-task"}),
    );
    refused(&spawn, 403, "session_restricted");
    let ask = post_as(
        s,
        &session.token,
        "/v1/permission-requests",
        &json!({"grant": "permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"crm\");",
                "reason": "more"}),
    );
    refused(&ask, 403, "session_restricted");
    refused(
        &invoke(s, &token("outsider"), &session.id, 600),
        403,
        "session_restricted",
    );
    // The admin does not invoke; agents that do not exist are not invoked.
    refused(&invoke(s, ADMIN, "analyst", 600), 400, "not_an_agent");
    refused(&invoke(s, &token("sales"), "nobody", 600), 404, "agent_not_found");
    refused(&invoke(s, &token("sales"), "analyst", 0), 400, "invalid_field");
    let r = post_as(
        s,
        &token("sales"),
        "/v1/invocations",
        &json!({"callee": {"type": "Doc", "id": "x"}, "task": "t", "ttl_seconds": 5}),
    );
    refused(&r, 400, "invalid_field");
    let r = post_as(
        s,
        &token("sales"),
        "/v1/invocations",
        &json!({"callee": {"type": "Agent", "id": "analyst"}, "task": "t"}),
    );
    refused(&r, 400, "missing_field");
    // Only the caller that started it (or the admin) sees or ends someone else's session.
    assert_eq!(
        get_as(s, &token("sales"), &format!("/v1/delegations/{}", session.id)).status,
        200
    );
    assert_eq!(
        get_as(s, &token("outsider"), &format!("/v1/delegations/{}", session.id)).status,
        403
    );
    assert_eq!(
        delete_as(s, &token("outsider"), &format!("/v1/delegations/{}", session.id)).status,
        403
    );
    assert_eq!(
        delete_as(s, &token("sales"), &format!("/v1/delegations/{}", session.id)).status,
        200
    );
}

#[test]
fn an_agent_only_the_bundle_declares_is_invoked_with_the_admin_policies_as_its_authority() {
    let env = Env::start();
    let s = &env.server;
    let session = started(s, &invoke(s, &token("reviewer"), "librarian", 600));
    assert_eq!(session.body["ceiling"], 1);
    // The admin lets only the librarian read the archive: its session may, its caller may not.
    assert!(allowed(s, &session.id, "read", ("Doc", "minutes")));
    assert!(!allowed(s, "reviewer", "read", ("Doc", "minutes")));
    // Bounded by the librarian's ceiling.
    assert_eq!(
        decide(s, &session.id, "read", ("Doc", "deals"))["denied_by"]["bound"],
        "ceiling"
    );
    assert!(allowed(s, "sales", "read", ("Doc", "deals")));
    refused(
        &invoke(s, &token("sales"), "librarian", 600),
        403,
        "taint_above_ceiling",
    );
}

#[test]
fn restart_keeps_sessions_their_taint_and_chains() {
    let env = Env::start();
    let s = &env.server;
    assert!(allowed(s, "sales", "read", ("Doc", "deals")));
    let b = started(s, &invoke(s, &token("sales"), "analyst", 600));
    let c = started(s, &invoke(s, &b.token, "reviewer", 600));
    let clean = started(s, &invoke(s, &token("publisher"), "analyst", 600));
    assert!(allowed(s, &clean.id, "read", ("Doc", "deals")));

    let env = env.restart();
    let s = &env.server;
    assert_eq!(
        decide(s, &b.id, "send", ("Channel", "public"))["denied_by"],
        json!({"bound": "taint", "classification": 0, "taint": 2, "inherited_from": "sales"})
    );
    assert_eq!(
        decide(s, &clean.id, "send", ("Channel", "public"))["denied_by"]["bound"],
        "taint"
    );
    assert_eq!(record(s, "analyst")["taint"], 0);
    let shown = record(s, &c.id);
    assert_eq!(shown["session"]["chain"], json!(["sales", "analyst", "reviewer"]));
    assert_eq!(shown["session"]["depth"], 2);
    refused(&invoke(s, &c.token, "sales", 600), 409, "invocation_cycle");
    let d3 = started(s, &invoke(s, &c.token, "outsider", 600));
    refused(&invoke(s, &d3.token, "publisher", 600), 403, "invocation_too_deep");
    // Cascades still follow the chain after a restart.
    assert_eq!(delete_as(s, ADMIN, "/v1/delegations/sales").status, 200);
    refused(&invoke(s, &c.token, "publisher", 600), 401, "unauthenticated");
    assert_eq!(
        decide(s, &d3.id, "send", ("Channel", "board"))["denied_by"]["bound"],
        "revoked"
    );
    assert!(allowed(s, &clean.id, "send", ("Channel", "board")));
}

#[test]
fn a_bundle_without_invoke_agent_allows_no_invocation() {
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo_root().join("tests/fixtures/invocation"), bundle.path());
    std::fs::remove_file(bundle.path().join("policies/invocation.cedar")).unwrap();
    let schema = bundle.path().join("schema/invocation.cedarschema");
    let text = std::fs::read_to_string(&schema).unwrap();
    let cut = text.find("action invoke_agent").unwrap();
    std::fs::write(&schema, &text[..cut]).unwrap();
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(bundle.path(), options(state.path()));
    refused(
        &invoke(&s, &token("sales"), "analyst", 600),
        403,
        "invocation_not_configured",
    );
}

#[test]
fn a_revocation_racing_invocations_never_leaves_a_live_session_under_a_revoked_caller() {
    let env = Env::start();
    let s = &env.server;
    let (caller, caller_token) = managed_root(s, 3600);
    let barrier = std::sync::Barrier::new(9);
    let (sessions, revoked) = std::thread::scope(|scope| {
        let invokers: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let mut started = Vec::new();
                    for _ in 0..5 {
                        let r = invoke(s, &caller_token, "reviewer", 600);
                        match r.status {
                            201 => started.push(r.json()["session_id"].as_str().unwrap().to_owned()),
                            401 => break,
                            other => panic!("unexpected {other}: {}", r.text()),
                        }
                    }
                    started
                })
            })
            .collect();
        let revoker = scope.spawn(|| {
            barrier.wait();
            let r = delete_as(s, ADMIN, &format!("/v1/delegations/{caller}"));
            assert_eq!(r.status, 200, "{}", r.text());
            r.json()["revoked"].clone()
        });
        let sessions: Vec<String> = invokers.into_iter().flat_map(|h| h.join().unwrap()).collect();
        (sessions, revoker.join().unwrap())
    });
    // Every session that was acknowledged ended with its caller, in memory and on disk.
    for id in &sessions {
        assert!(
            revoked.as_array().unwrap().contains(&json!(id)),
            "{id} survived: {revoked}"
        );
        assert_eq!(
            decide(s, id, "send", ("Channel", "public"))["denied_by"]["bound"],
            "revoked"
        );
        assert_eq!(record(s, id)["status"], "revoked");
    }
    let env = env.restart();
    for id in &sessions {
        assert_eq!(record(&env.server, id)["status"], "revoked");
    }
}

#[test]
fn a_session_ends_when_the_bundle_stops_declaring_its_callee() {
    let env = Env::start();
    let s = &env.server;
    let of_librarian = started(s, &invoke(s, &token("reviewer"), "librarian", 600));
    let of_analyst = started(s, &invoke(s, &token("reviewer"), "analyst", 600));
    assert!(allowed(s, &of_librarian.id, "read", ("Doc", "minutes")));
    // The next bundle declares neither the librarian nor (with a grant) the analyst.
    let agents = env.bundle.path().join("entities/agents.json");
    let text = std::fs::read_to_string(&agents).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("\"librarian\"") && !l.contains("\"analyst\""))
        .collect();
    std::fs::write(&agents, kept.join("\n").replace("},\n]", "}\n]")).unwrap();
    std::fs::remove_file(env.bundle.path().join("grants/analyst.cedar")).unwrap();
    s.reload().unwrap();
    assert_eq!(
        decide(s, &of_librarian.id, "read", ("Doc", "minutes"))["denied_by"]["bound"],
        "revoked"
    );
    refused(&invoke(s, &of_librarian.token, "sales", 600), 401, "unauthenticated");
    assert_eq!(record(s, &of_librarian.id)["status"], "revoked");
    assert_eq!(record(s, &of_analyst.id)["status"], "revoked");
    refused(&invoke(s, &of_analyst.token, "sales", 600), 401, "unauthenticated");
    // What the librarian's session read reached the reviewer, and stays with it.
    assert_eq!(record(s, "reviewer")["taint"], 1);
    assert!(allowed(s, "reviewer", "send", ("Channel", "internal")));
    assert!(!allowed(s, "reviewer", "send", ("Channel", "public")));
}

/// `--max-children` bounds a caller's live sessions (counted through the registry's sessions
/// index): the session beyond the limit is refused, another caller's sessions do not count, and
/// a completed session frees its place.
#[test]
fn live_sessions_per_caller_are_bounded_by_max_children() {
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo_root().join("tests/fixtures/invocation"), bundle.path());
    let state = tempfile::tempdir().unwrap();
    let limits = deputy::delegation::Limits {
        max_children: 2,
        ..deputy::delegation::Limits::default()
    };
    let s = &TestServer::start(
        bundle.path(),
        Options {
            limits,
            ..options(state.path())
        },
    );
    let first = started(s, &invoke(s, &token("sales"), "analyst", 600));
    started(s, &invoke(s, &token("sales"), "analyst", 600));
    refused(&invoke(s, &token("sales"), "analyst", 600), 429, "too_many_agents");
    // Another caller's sessions are its own.
    started(s, &invoke(s, &token("outsider"), "reviewer", 600));
    let r = post_as(
        s,
        &first.token,
        &format!("/v1/invocations/{}/complete", first.id),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    started(s, &invoke(s, &token("sales"), "analyst", 600));
    refused(&invoke(s, &token("sales"), "analyst", 600), 429, "too_many_agents");
}
