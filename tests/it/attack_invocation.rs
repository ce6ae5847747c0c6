//! Attacks on agent-to-agent invocation (claiming a session, taint joined along live invocation
//! links) by an agent holding its own credential or a session's. Each runs over HTTP against a
//! real server on `127.0.0.1:0` and a real SQLite state, on the invocation bundle
//! (`tests/fixtures/invocation`). docs/SECURITY.md ("Laundering data through invocations") maps
//! each to its invariant.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;
use crate::invocation::{accept, allowed, record, started, token, Env};

use common::{decide, delete_as, get_as, post_as, Resp, TestServer};
use serde_json::{json, Value};

fn invoke(s: &TestServer, caller_token: &str, callee: &str) -> Resp {
    crate::invocation::invoke(s, caller_token, callee, 600)
}

/// A root agent the admin creates: reads everything under `root`, sends anywhere, ceiling 2.
fn managed_root(s: &TestServer) -> (String, String) {
    crate::invocation::managed_root(s, 3600)
}

/// Invokes `callee` (one of the bundle's agents) and has it accept: (session id, credential).
fn session_of(s: &TestServer, caller_token: &str, callee: &str) -> (String, String) {
    let session = started(s, &invoke(s, caller_token, callee));
    (session.id, session.token)
}

fn taint(s: &TestServer, id: &str) -> i64 {
    record(s, id)["taint"].as_i64().unwrap()
}

/// Break: whether a decision made its taint durable (and propagated it along the invocation
/// links) was decided by the in-memory raise alone. A session's read whose persistence fails
/// (`503`, the state file locked past the busy timeout) leaves the session's in-memory taint
/// raised; the same read sent again raises nothing in memory, so it was answered `Allow` at
/// once — never made durable and never propagated: its caller stayed at taint 0 (free to send
/// on a public channel what the session hands back) and after a restart the session itself
/// had forgotten the read. The same holds for a read racing one still waiting for the writer
/// lock. Invariant: a decision that reads at level L is answered only once L is durable for
/// the reader and everyone joined to it.
#[test]
fn a_read_answered_after_a_failed_persist_still_taints_the_caller_durably() {
    let env = Env::start();
    let s = &env.server;
    let (caller, caller_token) = managed_root(s);
    let (session, _) = session_of(s, &caller_token, "reviewer");
    assert!(allowed(s, &caller, "send", ("Channel", "public")));

    // Another process holds the state's write lock past deputy's busy timeout.
    let blocker = env.state_db();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let read_deals = json!({"principal": {"type": "Agent", "id": session}, "action": {"type": "Action", "id": "read"},
                            "resource": {"type": "Doc", "id": "deals"}});
    let failed = s.post("/v1/authorize", &read_deals);
    assert_eq!(
        failed.status,
        503,
        "an unpersistable read must fail closed: {}",
        failed.text()
    );
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);

    // The same read again (over AuthZEN): answered only with its taint durable and propagated.
    let e = s.post(
        "/access/v1/evaluation",
        &json!({"subject": {"type": "Agent", "id": session}, "action": {"name": "read"},
                "resource": {"type": "Doc", "id": "deals"}}),
    );
    assert_eq!(e.status, 200, "{}", e.text());
    assert_eq!(e.json()["decision"], true, "{}", e.text());
    assert_eq!(taint(s, &caller), 2, "the session's read never reached its caller");
    assert!(
        !allowed(s, &caller, "send", ("Channel", "public")),
        "the caller launders what its session read onto a public channel"
    );
    let env = env.restart();
    let s = &env.server;
    assert_eq!(
        taint(s, &session),
        2,
        "the session forgot, after a restart, a read it was answered"
    );
    assert_eq!(taint(s, &caller), 2);
    assert!(!allowed(s, &caller, "send", ("Channel", "public")));
}

/// Held: a claim racing the caller's cancel never leaves a working session credential for a
/// cancelled session, and nobody but the callee (not the caller, a stranger, the session
/// itself or a sibling session) claims or sees the session.
#[test]
fn a_claim_racing_a_cancel_never_leaves_a_live_credential() {
    let env = Env::start();
    let s = &env.server;
    let (_, caller_token) = managed_root(s);
    let r = invoke(s, &caller_token, "reviewer");
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["session_id"].as_str().unwrap().to_owned();
    let (sibling, sibling_token) = session_of(s, &token("sales"), "reviewer");
    for (who, with) in [
        ("the caller", caller_token.as_str()),
        ("a stranger", &token("outsider")),
        ("a sibling session", &sibling_token),
    ] {
        assert_eq!(accept(s, &id, with).status, 403, "{who} claimed the session");
        assert_eq!(
            get_as(s, with, &format!("/v1/invocations/{id}")).status,
            if who == "the caller" { 200 } else { 403 },
            "{who}"
        );
        let listed = get_as(s, with, "/v1/invocations").json();
        let sees = listed["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["session_id"] == json!(id));
        assert_eq!(sees, who == "the caller", "{who}: {listed}");
    }
    // A session cannot claim itself or its sibling, nor see another session of its callee.
    assert_eq!(accept(s, &sibling, &sibling_token).status, 403);
    assert_eq!(get_as(s, &sibling_token, &format!("/v1/invocations/{id}")).status, 403);

    for _ in 0..4 {
        let r = invoke(s, &caller_token, "reviewer");
        assert_eq!(r.status, 201, "{}", r.text());
        let id = r.json()["session_id"].as_str().unwrap().to_owned();
        let barrier = std::sync::Barrier::new(2);
        let (claimed, cancelled) = std::thread::scope(|sc| {
            let c = sc.spawn(|| {
                barrier.wait();
                accept(s, &id, &token("reviewer"))
            });
            let d = sc.spawn(|| {
                barrier.wait();
                delete_as(s, &caller_token, &format!("/v1/invocations/{id}"))
            });
            (c.join().unwrap(), d.join().unwrap())
        });
        assert_eq!(cancelled.status, 200, "{}", cancelled.text());
        match claimed.status {
            200 => {
                let credential = claimed.json()["credential"].as_str().unwrap().to_owned();
                let r = invoke(s, &credential, "outsider");
                assert_eq!(
                    r.status,
                    401,
                    "a cancelled session's credential still acts: {}",
                    r.text()
                );
                let d: Value = decide(s, &id, "read", ("Doc", "press"));
                assert_eq!(d["decision"], "Deny", "{d}");
            }
            404 => assert_eq!(claimed.json()["code"], "delegation_not_found"),
            other => panic!("claim racing a cancel answered {other}: {}", claimed.text()),
        }
        let again = accept(s, &id, &token("reviewer"));
        assert!(matches!(again.status, 404 | 409), "{}", again.text());
    }
}

/// Break: a session's read decided while the session is live, but whose taint is written after
/// the session ended (cancelled by its caller, or completed by itself, committing first), was
/// propagated along live links only — the ended session had none — so its caller stayed at
/// taint 0 while the session's runtime got the data to hand back. Invariant: a read a session
/// was answered reaches its caller, however the session ends meanwhile.
#[test]
fn a_read_racing_the_end_of_its_session_still_reaches_the_caller() {
    let env = Env::start();
    let s = &env.server;
    let mut missed = Vec::new();
    for round in 0..64 {
        let (caller, caller_token) = managed_root(s);
        let (session, session_token) = session_of(s, &caller_token, "reviewer");
        let barrier = std::sync::Barrier::new(2);
        let (read, ended) = std::thread::scope(|sc| {
            let r = sc.spawn(|| {
                barrier.wait();
                s.post(
                    "/v1/authorize",
                    &json!({"principal": {"type": "Agent", "id": session}, "action": {"type": "Action", "id": "read"},
                            "resource": {"type": "Doc", "id": "deals"}}),
                )
            });
            let e = sc.spawn(|| {
                barrier.wait();
                if round % 2 == 0 {
                    delete_as(s, &caller_token, &format!("/v1/invocations/{session}"))
                } else {
                    post_as(
                        s,
                        &session_token,
                        &format!("/v1/invocations/{session}/complete"),
                        &json!({}),
                    )
                }
            });
            (r.join().unwrap(), e.join().unwrap())
        });
        assert_eq!(ended.status, 200, "{}", ended.text());
        assert_eq!(read.status, 200, "{}", read.text());
        if read.json()["decision"] == "Allow" && taint(s, &caller) != 2 {
            missed.push(format!("round {round}: caller {caller} at taint {}", taint(s, &caller)));
        }
    }
    assert!(
        missed.is_empty(),
        "reads that never reached their caller:\n{}",
        missed.join("\n")
    );
}

/// Held: a caller's read racing its invocation of a PUBLIC-ceiling agent either refuses the
/// invocation (`taint_above_ceiling`) or reaches the new session before the read is answered:
/// never a live session at taint 0 beside a caller that was answered a CONFIDENTIAL read.
#[test]
fn a_read_racing_an_invocation_never_leaves_a_clean_session_beside_a_tainted_caller() {
    let env = Env::start();
    let s = &env.server;
    for _ in 0..16 {
        let (caller, caller_token) = managed_root(s);
        let barrier = std::sync::Barrier::new(2);
        let (read, invoked) = std::thread::scope(|sc| {
            let r = sc.spawn(|| {
                barrier.wait();
                decide(s, &caller, "read", ("Doc", "deals"))
            });
            let i = sc.spawn(|| {
                barrier.wait();
                invoke(s, &caller_token, "publisher")
            });
            (r.join().unwrap(), i.join().unwrap())
        });
        assert_eq!(read["decision"], "Allow", "{read}");
        match invoked.status {
            201 => {
                let session = invoked.json()["session_id"].as_str().unwrap().to_owned();
                assert_eq!(taint(s, &session), 2, "a session left clean beside its tainted caller");
                assert!(!allowed(s, &session, "send", ("Channel", "public")));
            }
            403 => assert_eq!(invoked.json()["code"], "taint_above_ceiling", "{}", invoked.text()),
            other => panic!("invocation racing a read answered {other}: {}", invoked.text()),
        }
    }
}

/// Break: within one batch, a read raised only the reader's in-memory taint before the next
/// item was decided; the agents joined to it (its parent and siblings along the delegation
/// links, its caller along a live invocation link) were raised only after the whole batch,
/// when it was made durable. So one batch answered a child's CONFIDENTIAL read *and* its
/// parent's (or sibling's, or the session's caller's) send on a PUBLIC channel, which a
/// batch for one agent never does (its own read denies its later send) and two requests in
/// that order never do either. Invariant: a read reaches everyone joined to the reader
/// before any later decision — including the next item of the same batch, on every batch
/// endpoint.
#[test]
fn a_batch_never_answers_a_read_and_a_joined_agents_write_down_together() {
    let env = Env::start();
    let s = &env.server;
    let read = |who: &str| {
        json!({"principal": {"type": "Agent", "id": who}, "action": {"type": "Action", "id": "read"},
               "resource": {"type": "Doc", "id": "deals"}})
    };
    let send = |who: &str| {
        json!({"principal": {"type": "Agent", "id": who}, "action": {"type": "Action", "id": "send"},
               "resource": {"type": "Channel", "id": "public"}})
    };
    let authzen = |r: &Value| json!({"subject": r["principal"], "action": {"name": r["action"]["id"]}, "resource": r["resource"]});
    // Three families: a parent and two children, and a caller with a live session.
    let family = || {
        let r = post_as(
            s,
            crate::invocation::ADMIN,
            "/v1/delegations",
            &json!({"grant": "permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"root\");\n\
                              permit(principal == ?principal, action == Action::\"send\", resource);",
                    "ttl_seconds": 3600, "ceiling": 2, "can_delegate": true, "task": "orchestrate"}),
        );
        let root = common::applied(&r);
        let (parent, parent_token) = (root.id, root.token);
        let child = |n: &str| {
            common::applied(&common::spawn(
                s,
                &parent_token,
                json!({"grant": "permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"root\");\n\
                                 permit(principal == ?principal, action == Action::\"send\", resource);",
                       "ttl_seconds": 600, "ceiling": 2, "task": format!("child {n}")}),
            ))
            .id
        };
        let (a, b) = (child("a"), child("b"));
        let (session, _) = session_of(s, &parent_token, "reviewer");
        (parent, a, b, session)
    };
    let mut missed = Vec::new();
    for endpoint in ["/v1/authorize/batch", "/access/v1/evaluations"] {
        // (reader, writer): child -> parent, child -> sibling, parent -> child, session -> caller.
        let (parent, a, _, _) = family();
        let (_, a2, b2, _) = family();
        let (p3, a3, _, _) = family();
        let (p4, _, _, s4) = family();
        let pairs = [
            ("child, then parent", a, parent),
            ("child, then sibling", a2, b2),
            ("parent, then child", p3, a3),
            ("session, then caller", s4, p4),
        ];
        for (kind, reader, writer) in pairs {
            assert!(allowed(s, &writer, "send", ("Channel", "public")));
            let items = [read(&reader), send(&writer)];
            let (status, decisions) = if endpoint == "/v1/authorize/batch" {
                let r = s.post(endpoint, &json!({"requests": items}));
                let d: Vec<bool> = r.json()["responses"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["decision"] == "Allow")
                    .collect();
                (r.status, d)
            } else {
                let r = s.post(
                    endpoint,
                    &json!({"evaluations": items.iter().map(authzen).collect::<Vec<_>>()}),
                );
                let d: Vec<bool> = r.json()["evaluations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["decision"] == true)
                    .collect();
                (r.status, d)
            };
            assert_eq!(status, 200, "{endpoint}");
            assert!(decisions[0], "{endpoint}: the read of {reader} was denied");
            if decisions[1] {
                missed.push(format!("{endpoint}: {kind}"));
            }
            assert_eq!(taint(s, &writer), 2, "{endpoint}");
        }
    }
    assert!(
        missed.is_empty(),
        "one batch answered a CONFIDENTIAL read and a joined agent's PUBLIC send:\n{}",
        missed.join("\n")
    );
}

/// A root the admin creates that may delegate, and one child of it: (root, root's credential,
/// child, child's credential).
fn root_and_child(s: &TestServer) -> (String, String, String, String) {
    const GRANT: &str = "permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"root\");\n\
                         permit(principal == ?principal, action == Action::\"send\", resource);";
    let root = common::applied(&post_as(
        s,
        crate::invocation::ADMIN,
        "/v1/delegations",
        &json!({"grant": GRANT, "ttl_seconds": 3600, "ceiling": 2, "can_delegate": true, "task": "orchestrate"}),
    ));
    let child = common::applied(&common::spawn(
        s,
        &root.token,
        json!({"grant": GRANT, "ttl_seconds": 600, "ceiling": 2, "task": "first child"}),
    ));
    (root.id, root.token, child.id, child.token)
}

/// Held: a child's CONFIDENTIAL read racing its parent's spawn of a second child, or its own
/// revocation by its parent, never leaves the parent or a live sibling below the taint of a
/// read that was answered `Allow` — neither at once nor after a restart (the taint joins along
/// delegation links, durable before the answer; a spawn re-checks its parent's taint in the
/// transaction that commits it).
#[test]
fn a_childs_read_racing_a_sibling_spawn_or_its_revocation_reaches_the_family() {
    let env = Env::start();
    let s = &env.server;
    let mut families = Vec::new();
    for round in 0..24 {
        let (root, root_token, child, _) = root_and_child(s);
        let barrier = std::sync::Barrier::new(2);
        let (read, other) = std::thread::scope(|sc| {
            let r = sc.spawn(|| {
                barrier.wait();
                decide(s, &child, "read", ("Doc", "deals"))
            });
            let o = sc.spawn(|| {
                barrier.wait();
                if round % 2 == 0 {
                    common::spawn(
                        s,
                        &root_token,
                        json!({"grant": "permit(principal == ?principal, action == Action::\"send\", resource);",
                               "ttl_seconds": 600, "ceiling": 2, "task": "second child"}),
                    )
                } else {
                    delete_as(s, &root_token, &format!("/v1/delegations/{child}"))
                }
            });
            (r.join().unwrap(), o.join().unwrap())
        });
        let sibling = if round % 2 == 0 {
            assert_eq!(other.status, 201, "{}", other.text());
            Some(other.json()["delegation_id"].as_str().unwrap().to_owned())
        } else {
            assert_eq!(other.status, 200, "{}", other.text());
            None
        };
        if read["decision"] == "Allow" {
            families.push((round, root, sibling));
        }
    }
    let check = |s: &TestServer, when: &str| {
        let mut missed = Vec::new();
        for (round, root, sibling) in &families {
            for who in std::iter::once(root).chain(sibling) {
                if taint(s, who) != 2 || allowed(s, who, "send", ("Channel", "public")) {
                    missed.push(format!("round {round}: {who} at taint {}", taint(s, who)));
                }
            }
        }
        assert!(
            missed.is_empty(),
            "{when}: a child's answered read did not reach its family:\n{}",
            missed.join("\n")
        );
    };
    assert!(!families.is_empty(), "no read was answered Allow");
    check(s, "at once");
    let env = env.restart();
    check(&env.server, "after a restart");
}

/// Held: `--max-children` counted through the registry's children index stays exact: a parent's
/// live sessions never count as its children, concurrent spawns past the limit are refused
/// (exactly the limit applied, in one group commit or several), a revocation or completion frees
/// a place at once, and a restart rebuilds the same count.
#[test]
fn the_children_limit_is_exact_under_races_revocation_completion_and_restart() {
    const LIMIT: usize = 3;
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo_root().join("tests/fixtures/invocation"), bundle.path());
    let state = tempfile::tempdir().unwrap();
    let start = || {
        TestServer::start(
            bundle.path(),
            common::Options {
                state: Some(state.path().to_path_buf()),
                admin_token: Some(crate::invocation::ADMIN.to_owned()),
                agent_tokens: ["reviewer"].iter().map(|a| ((*a).to_owned(), token(a))).collect(),
                limits: deputy::delegation::Limits {
                    max_children: LIMIT,
                    ..deputy::delegation::Limits::default()
                },
                ..common::Options::default()
            },
        )
    };
    let spawn_child = |s: &TestServer, parent_token: &str| {
        common::spawn(
            s,
            parent_token,
            json!({"grant": "permit(principal == ?principal, action == Action::\"send\", resource);",
                   "ttl_seconds": 600, "ceiling": 2, "task": "a child"}),
        )
    };
    let too_many = |r: &Resp| {
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.json()["code"], "too_many_agents", "{}", r.text());
    };
    let s = start();
    let root = common::applied(&post_as(
        &s,
        crate::invocation::ADMIN,
        "/v1/delegations",
        &json!({"grant": "permit(principal == ?principal, action == Action::\"send\", resource);",
                "ttl_seconds": 3600, "ceiling": 2, "can_delegate": true, "task": "orchestrate"}),
    ));
    // Sessions the parent started are not its children.
    for _ in 0..LIMIT {
        started(&s, &invoke(&s, &root.token, "reviewer"));
    }
    // Concurrent spawns: exactly the limit applied.
    let answers: Vec<Resp> = std::thread::scope(|sc| {
        let spawns: Vec<_> = (0..8).map(|_| sc.spawn(|| spawn_child(&s, &root.token))).collect();
        spawns.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let children: Vec<common::Agent> = answers
        .iter()
        .filter(|r| r.status == 201)
        .map(common::applied)
        .collect();
    assert_eq!(
        children.len(),
        LIMIT,
        "{:?}",
        answers.iter().map(Resp::text).collect::<Vec<_>>()
    );
    answers.iter().filter(|r| r.status != 201).for_each(too_many);
    // A revocation frees a place at once; a completion too.
    assert_eq!(
        delete_as(&s, &root.token, &format!("/v1/delegations/{}", children[0].id)).status,
        200
    );
    common::applied(&spawn_child(&s, &root.token));
    too_many(&spawn_child(&s, &root.token));
    let done = post_as(
        &s,
        &children[1].token,
        &format!("/v1/delegations/{}/complete", children[1].id),
        &json!({}),
    );
    assert_eq!(done.status, 200, "{}", done.text());
    common::applied(&spawn_child(&s, &root.token));
    too_many(&spawn_child(&s, &root.token));
    // A restart counts the same.
    drop(s);
    let s = start();
    too_many(&spawn_child(&s, &root.token));
    assert_eq!(
        delete_as(&s, &root.token, &format!("/v1/delegations/{}", children[2].id)).status,
        200
    );
    common::applied(&spawn_child(&s, &root.token));
    too_many(&spawn_child(&s, &root.token));
}
