//! Limits and faults: every limit answers with its own code, and faults (an unreadable bundle,
//! a corrupted or full state store, too many connections) deny or serve the last good state
//! while the process keeps running.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{copy_bundle, get_as, post_as, repo_root, wait_until, Options, Resp, TestServer};
use deputy::delegation::Limits;
use serde_json::json;

const ADMIN: &str = "admin-token-for-fault-tests-0123";
const GRANT: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;

fn with_state(limits: Limits) -> (TestServer, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(
        &repo_root(),
        Options {
            state: Some(state.path().to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            limits,
            ..Options::default()
        },
    );
    (s, state)
}

fn root(s: &TestServer, grant: &str) -> Resp {
    post_as(
        s,
        ADMIN,
        "/v1/delegations",
        &json!({"grant": grant, "ttl_seconds": 600, "ceiling": 1, "can_delegate": true, "task": "t"}),
    )
}

fn authorize(s: &TestServer, principal: (&str, &str)) -> Resp {
    s.post(
        "/v1/authorize",
        &json!({"principal": {"type": principal.0, "id": principal.1}, "action": {"type": "Action", "id": "read"},
                "resource": {"type": "File", "id": "repo/README.md"}}),
    )
}

#[test]
fn delegation_limits_answer_with_their_codes() {
    let (s, _state) = with_state(Limits {
        max_grant_bytes: 200,
        max_children: 2,
        max_pending_requests: 1,
        ..Limits::default()
    });
    let big = format!("{GRANT}\n// {}", "x".repeat(300));
    let r = root(&s, &big);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.json()["code"], "grant_too_large");

    let a = root(&s, GRANT).json();
    assert_eq!(root(&s, GRANT).status, 201);
    let r = root(&s, GRANT);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["code"], "too_many_agents");

    let token = a["credential"].as_str().unwrap();
    let child = post_as(
        &s,
        token,
        "/v1/delegations",
        &json!({"grant": GRANT, "ttl_seconds": 60, "task": "c"}),
    )
    .json();
    let child_token = child["credential"].as_str().unwrap();
    let ask = json!({"grant": GRANT, "reason": "r"});
    assert_eq!(post_as(&s, child_token, "/v1/permission-requests", &ask).status, 202);
    let r = post_as(&s, child_token, "/v1/permission-requests", &ask);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["code"], "too_many_requests");
}

#[test]
fn connections_beyond_the_limit_get_503_at_once() {
    let s = TestServer::start(
        &repo_root(),
        Options {
            max_connections: 2,
            ..Options::default()
        },
    );
    // Two idle connections hold both slots (until the header read timeout frees them).
    let _held: Vec<_> = (0..2).map(|_| std::net::TcpStream::connect(s.addr).unwrap()).collect();
    // Once deputy has accepted both (nothing else says so: every other connection is refused).
    let mut r = s.get("/healthz");
    assert!(wait_until(Duration::from_secs(5), || {
        r = s.get("/healthz");
        r.status == 503
    }));
    assert_eq!(r.json()["code"], "overloaded");
    drop(_held);
    assert!(wait_until(Duration::from_secs(5), || s.get("/healthz").status == 200));
}

#[test]
fn the_api_is_served_on_a_unix_socket_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deputy.sock");
    let _s = TestServer::start(
        &repo_root(),
        Options {
            listen_unix: Some(path.clone()),
            ..Options::default()
        },
    );
    let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn an_unreadable_bundle_file_keeps_the_last_good_bundle_serving() {
    let dir = copy_bundle(&repo_root());
    let s = TestServer::start(
        dir.path(),
        Options {
            watch: true,
            poll_interval: Duration::from_millis(300),
            ..Options::default()
        },
    );
    let good = s.version();
    std::os::unix::fs::symlink("/nonexistent/policy.cedar", dir.path().join("policies/dangling.cedar")).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        s.get("/v1/status").json()["last_reload"]["outcome"] == "failed"
    }));
    let status = s.get("/v1/status").json();
    assert_eq!(
        status["last_reload"]["problems"][0]["code"], "file_unreadable",
        "{status}"
    );
    assert_eq!(status["last_reload"]["problems"][0]["file"], "policies/dangling.cedar");
    std::fs::remove_file(dir.path().join("policies/dangling.cedar")).unwrap();
    std::fs::write(dir.path().join("policies/binary.cedar"), [0xff, 0xfe, 0x00, 0x80]).unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        s.get("/v1/status").json()["last_reload"]["problems"][0]["file"] == "policies/binary.cedar"
    }));
    assert_eq!(s.version(), good);
    assert_eq!(authorize(&s, ("Agent", "coder-1")).json()["decision"], "Allow");
    assert_eq!(s.get("/readyz").status, 200);
}

#[test]
fn a_corrupted_state_file_fails_agent_decisions_closed_and_keeps_serving() {
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        state.path().join(deputy::delegation::STATE_FILE),
        b"this is not a sqlite database, not at all".repeat(100),
    )
    .unwrap();
    let s = TestServer::start(&repo_root(), Options::with_state(state.path(), ADMIN));
    let r = s.get("/readyz");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "state_unavailable");
    // An agent can no longer be told apart from a revoked one: deny.
    let d = authorize(&s, ("Agent", "coder-1")).json();
    assert_eq!(d["decision"], "Deny");
    assert_eq!(d["denied_by"]["bound"], "state_unavailable");
    // Humans do not depend on the agent state.
    assert_eq!(authorize(&s, ("Human", "alice")).json()["decision"], "Allow");
    let r = root(&s, GRANT);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "state_unavailable");
    assert_eq!(s.get("/healthz").status, 200);
}

#[test]
fn a_full_state_store_refuses_changes_whole_and_decisions_go_on() {
    let (s, state) = with_state(Limits {
        max_state_mib: 1,
        ..Limits::default()
    });
    // Large grants fill a 1 MiB store quickly.
    let padded = format!("{GRANT}\n// {}", "p".repeat(50_000));
    let mut applied = Vec::new();
    let mut refused = None;
    for _ in 0..100 {
        let r = root(&s, &padded);
        if r.status == 201 {
            applied.push(r.json()["delegation_id"].as_str().unwrap().to_owned());
        } else {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the store never filled up");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["code"], "state_unavailable");
    assert!(!applied.is_empty());
    // Decisions go on, for agents that exist and for everyone else.
    let first = applied.first().unwrap();
    assert_eq!(authorize(&s, ("Agent", first)).json()["decision"], "Allow");
    assert_eq!(authorize(&s, ("Human", "alice")).json()["decision"], "Allow");
    assert_eq!(get_as(&s, ADMIN, "/v1/audit").status, 200);
    drop(s);
    // Nothing half-written: every stored agent has its audit record and the chain verifies.
    let conn = rusqlite::Connection::open(state.path().join(deputy::delegation::STATE_FILE)).unwrap();
    let agents: i64 = conn.query_row("SELECT count(*) FROM agents", [], |r| r.get(0)).unwrap();
    let audits: i64 = conn
        .query_row("SELECT count(*) FROM audit WHERE event = 'applied'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(agents as usize, applied.len());
    assert_eq!(audits, agents);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args(["audit", "verify", "--state"])
        .arg(state.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
