//! Attacks on the discovery surface: `GET /v1/agents/{id}/capabilities` and the AuthZEN search
//! endpoints. An agent learns the capabilities of itself and the agents below it only (and of
//! the sessions it takes part in); no discovery answer claims more than `/v1/authorize` allows —
//! for a tainted agent, a revoked or expired one, a session, right after a reload, and while the
//! delegation state cannot be read (before, during and after). Over HTTP against a real server on
//! the example bundle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{applied, decide, delete_as, get_as, post_as, repo_root, spawn, Agent, Options, TestServer};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-discovery-attacks";

const ROOT_GRANT: &str = r#"
permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");
permit(principal == ?principal, action == Action::"invoke", resource == Tool::"pytest");
permit(principal == ?principal, action == Action::"send_message", resource is Channel);
"#;
const CODER_GRANT: &str = r#"
permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");
permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");
permit(principal == ?principal, action == Action::"send_message", resource is Channel);
"#;
const READER_GRANT: &str = r#"
permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
permit(principal == ?principal, action == Action::"send_message", resource is Channel);
"#;

fn root(s: &TestServer, ttl: i64) -> Agent {
    applied(&spawn(
        s,
        ADMIN,
        json!({"grant": ROOT_GRANT, "ttl_seconds": ttl, "ceiling": 2, "can_delegate": true, "task": "orchestrate"}),
    ))
}

fn child(s: &TestServer, parent: &Agent, grant: &str, ttl: i64) -> Agent {
    applied(&spawn(
        s,
        &parent.token,
        json!({"grant": grant, "ttl_seconds": ttl, "ceiling": 2, "can_delegate": true, "task": "subtask"}),
    ))
}

fn capabilities(s: &TestServer, token: &str, of: &str) -> common::Resp {
    get_as(s, token, &format!("/v1/agents/{of}/capabilities"))
}

/// Every resource of the example bundle an agent action applies to, with its classification.
const RESOURCES: &[(&str, &str, i64)] = &[
    ("Folder", "repo", 1),
    ("Folder", "repo/src", 1),
    ("Folder", "repo/docs", 0),
    ("File", "repo/README.md", 0),
    ("File", "repo/src/main.rs", 1),
    ("File", "repo/src/payroll.rs", 2),
    ("Folder", "secrets", 3),
    ("Tool", "pytest", 0),
    ("Tool", "git_push", 1),
    ("Credential", "github-token", 2),
    ("Channel", "slack-public", 0),
    ("Channel", "slack-eng", 1),
];

fn post(s: &TestServer, path: &str, body: &Value) -> Value {
    let r = s.post(path, body);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

/// What the AuthZEN action search finds for `agent`, per resource: (action, type, id).
fn searched(s: &TestServer, agent: &str) -> BTreeSet<(String, String, String)> {
    let mut found = BTreeSet::new();
    for (ty, id, _) in RESOURCES {
        let r = post(
            s,
            "/access/v1/search/action",
            &json!({"subject": {"type": "Agent", "id": agent}, "resource": {"type": ty, "id": id}}),
        );
        for a in r["results"].as_array().unwrap() {
            let name = a["name"].as_str().unwrap().to_owned();
            // `delegate` and `invoke_agent` take an Agent resource: none here.
            found.insert((name, (*ty).to_owned(), (*id).to_owned()));
        }
    }
    found
}

/// What the AuthZEN resource search finds for `agent`, per action and type.
fn searched_resources(s: &TestServer, agent: &str) -> BTreeSet<(String, String, String)> {
    let mut found = BTreeSet::new();
    for (action, types) in [
        ("read", &["Folder", "File"][..]),
        ("write", &["Folder", "File"][..]),
        ("invoke", &["Tool"][..]),
        ("use_credential", &["Credential"][..]),
        ("send_message", &["Channel"][..]),
    ] {
        for ty in types {
            let r = post(
                s,
                "/access/v1/search/resource",
                &json!({"subject": {"type": "Agent", "id": agent}, "action": {"name": action}, "resource": {"type": ty}}),
            );
            for e in r["results"].as_array().unwrap() {
                found.insert((
                    action.to_owned(),
                    e["type"].as_str().unwrap().to_owned(),
                    e["id"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    found
}

/// The capabilities' unconditional `allowed` entries, and whether any entry is conditional.
fn listed(caps: &Value) -> BTreeSet<(String, String, String)> {
    assert!(
        caps["conditional"].as_array().is_none_or(Vec::is_empty),
        "the example bundle has no context conditions: {caps}"
    );
    caps["allowed"]
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
        .collect()
}

/// Capabilities (asked with `token`), both searches, and `/v1/authorize` agree on what `agent`
/// may do now: the same set of (action, resource) pairs. Discovery never raises a taint; nor
/// does this: `/v1/authorize` is asked about every pair but reads above the agent's taint (an
/// allowed one would raise it), which only the two searches are compared on. Returns the pairs.
fn agree(s: &TestServer, token: &str, agent: &str) -> BTreeSet<(String, String, String)> {
    let caps = capabilities(s, token, agent);
    assert_eq!(caps.status, 200, "{}", caps.text());
    let caps = caps.json();
    let taint = caps["taint"].as_i64().unwrap();
    let listed = listed(&caps);
    let by_action = searched(s, agent);
    let by_resource = searched_resources(s, agent);
    assert_eq!(
        listed, by_action,
        "capabilities and the action search differ for {agent}"
    );
    assert_eq!(
        listed, by_resource,
        "capabilities and the resource search differ for {agent}"
    );
    for action in ["write", "invoke", "use_credential", "send_message", "read"] {
        for (ty, id, class) in RESOURCES {
            let applies = match action {
                "read" => (*ty == "Folder" || *ty == "File") && *class <= taint,
                "write" => *ty == "Folder" || *ty == "File",
                "invoke" => *ty == "Tool",
                "use_credential" => *ty == "Credential",
                _ => *ty == "Channel",
            };
            if !applies {
                continue;
            }
            let d = decide(s, agent, action, (ty, id));
            let key = (action.to_owned(), (*ty).to_owned(), (*id).to_owned());
            assert_eq!(
                d["decision"] == "Allow",
                listed.contains(&key),
                "{agent}: /v1/authorize says {d} for {key:?}, discovery listed {listed:?}"
            );
        }
    }
    assert_eq!(
        capabilities(s, token, agent).json()["taint"],
        taint,
        "asking raised the taint"
    );
    listed
}

/// Has `agent` read `file` (allowed), raising its taint to the file's classification.
fn read(s: &TestServer, agent: &str, file: &str) {
    let d = decide(s, agent, "read", ("File", file));
    assert_eq!(d["decision"], "Allow", "{d}");
}

/// Only the admin, the agent itself and its ancestors see an agent's capabilities (and its
/// record); a sibling, a descendant, an unrelated agent, no credential and a forged one do not.
/// A session is shown to its caller and its callee, not to an unrelated agent nor to the
/// callee's own child.
#[test]
fn an_agent_sees_the_capabilities_of_itself_and_its_descendants_only() {
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(&repo_root(), Options::with_state(state.path(), ADMIN));
    let r = root(&s, 3600);
    let c1 = child(&s, &r, CODER_GRANT, 1800);
    let c2 = child(&s, &r, READER_GRANT, 1800);
    let g = child(&s, &c1, CODER_GRANT, 600);
    let u = root(&s, 3600);
    let all = [&r, &c1, &c2, &g, &u];
    let sees = |viewer: &Agent, of: &Agent| -> bool {
        match viewer.id.as_str() {
            v if v == r.id => [&r.id, &c1.id, &c2.id, &g.id].contains(&&of.id),
            v if v == c1.id => [&c1.id, &g.id].contains(&&of.id),
            _ => viewer.id == of.id,
        }
    };
    for viewer in all {
        for of in all {
            for path in [
                format!("/v1/agents/{}/capabilities", of.id),
                format!("/v1/delegations/{}", of.id),
            ] {
                let resp = get_as(&s, &viewer.token, &path);
                if sees(viewer, of) {
                    assert_eq!(resp.status, 200, "{} on {path}: {}", viewer.id, resp.text());
                } else {
                    assert_eq!(resp.status, 403, "{} on {path}: {}", viewer.id, resp.text());
                    assert_eq!(resp.json()["code"], "not_your_delegation");
                }
            }
        }
        assert_eq!(capabilities(&s, ADMIN, &viewer.id).status, 200);
    }
    // No credential, a forged one for a real id, the admin's id as a name.
    assert_eq!(s.get(&format!("/v1/agents/{}/capabilities", c1.id)).status, 401);
    let forged = format!("dpt.{}.{}", c1.id, "A".repeat(43));
    assert_eq!(capabilities(&s, &forged, &c1.id).status, 401);
    // A session of c1 started by c2: its caller and its callee see it; g and u do not.
    let inv = post_as(
        &s,
        &c2.token,
        "/v1/invocations",
        &json!({"callee": {"type": "Agent", "id": c1.id}, "task": "t", "reason": "r", "ttl_seconds": 600}),
    );
    assert_eq!(inv.status, 201, "{}", inv.text());
    let session = inv.json()["session_id"].as_str().unwrap().to_owned();
    for (viewer, ok) in [(&c2, true), (&c1, true), (&g, false), (&u, false)] {
        let resp = capabilities(&s, &viewer.token, &session);
        assert_eq!(resp.status == 200, ok, "{} on the session: {}", viewer.id, resp.text());
    }
    // A revoked agent's credential sees nothing, not even itself.
    assert_eq!(
        delete_as(&s, &r.token, &format!("/v1/delegations/{}", c2.id)).status,
        200
    );
    assert_eq!(capabilities(&s, &c2.token, &c2.id).status, 401);
}

/// Discovery never claims more than `/v1/authorize`: capabilities, the action search and the
/// resource search list exactly what `/v1/authorize` allows, for a fresh family, after a read
/// taints it (no send to the public channel any more), right after a reload that withdraws an
/// admin permit and one that restores it, for a session (as its callee, under its taint), and
/// once the agent, an ancestor or the session is revoked or has expired.
#[test]
fn discovery_and_authorize_agree_through_taint_reload_revocation_and_expiry() {
    let bundle = common::copy_bundle(&repo_root());
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(bundle.path(), Options::with_state(state.path(), ADMIN));
    let r = root(&s, 3600);
    let c1 = child(&s, &r, CODER_GRANT, 1800);
    let c2 = child(&s, &r, READER_GRANT, 1800);
    let public = (
        "send_message".to_owned(),
        "Channel".to_owned(),
        "slack-public".to_owned(),
    );
    let eng = ("send_message".to_owned(), "Channel".to_owned(), "slack-eng".to_owned());
    for a in [&c1, &c2, &r] {
        let got = agree(&s, ADMIN, &a.id);
        assert!(got.contains(&public) && got.contains(&eng), "{}: {got:?}", a.id);
    }

    // A reload withdraws the admin's channel permit: no agent is shown any send.
    let policy = bundle.path().join("policies/agents.cedar");
    let original = std::fs::read_to_string(&policy).unwrap();
    let without = original.replace(
        "@id(\"agents-message-channels\")\npermit (principal is Agent, action == Action::\"send_message\", resource is Channel);",
        "",
    );
    assert_ne!(without, original, "the example policies changed");
    std::fs::write(&policy, &without).unwrap();
    s.reload().unwrap();
    for a in [&c1, &c2, &r] {
        let got = agree(&s, &a.token, &a.id);
        assert!(!got.iter().any(|(action, _, _)| action == "send_message"), "{got:?}");
    }
    // And right after the reload back, they are shown again.
    std::fs::write(&policy, &original).unwrap();
    s.reload().unwrap();
    assert!(agree(&s, &c2.token, &c2.id).contains(&public));

    // c1 reads an INTERNAL file: the family is tainted INTERNAL (1), nothing goes to the public
    // channel any more, the engineering channel still takes it.
    read(&s, &c1.id, "repo/src/main.rs");
    for a in [&c1, &c2, &r] {
        let got = agree(&s, &a.token, &a.id);
        assert!(!got.contains(&public) && got.contains(&eng), "{}: {got:?}", a.id);
    }

    // Sessions of c1 started by c2: decided as c1 under the session's taint. One lives on, one
    // lasts a second.
    let invoke = |ttl: i64| {
        let inv = post_as(
            &s,
            &c2.token,
            "/v1/invocations",
            &json!({"callee": {"type": "Agent", "id": c1.id}, "task": "t", "reason": "r", "ttl_seconds": ttl}),
        );
        assert_eq!(inv.status, 201, "{}", inv.text());
        inv.json()["session_id"].as_str().unwrap().to_owned()
    };
    let short = invoke(1);
    let session = invoke(600);
    let live = agree(&s, &c2.token, &session);
    assert!(live.contains(&eng), "{live:?}");
    // The session reads a CONFIDENTIAL file: it and its caller are shown no send any more.
    read(&s, &session, "repo/src/payroll.rs");
    for id in [&session, &c2.id] {
        let got = agree(&s, &c2.token, id);
        assert!(
            !got.iter().any(|(action, _, _)| action == "send_message"),
            "{id}: {got:?}"
        );
    }
    // The short one has expired: it is shown nothing, and found nowhere.
    assert!(common::wait_until(Duration::from_secs(10), || {
        let d = decide(&s, &short, "write", ("File", "repo/src/main.rs"));
        d["decision"] == "Deny" && ["expired", "revoked"].contains(&d["denied_by"]["bound"].as_str().unwrap_or(""))
    }));
    assert!(
        agree(&s, &c2.token, &short).is_empty(),
        "an expired session is shown capabilities"
    );

    // Revocation of the parent ends both children: nothing is shown, nothing found.
    assert_eq!(delete_as(&s, ADMIN, &format!("/v1/delegations/{}", r.id)).status, 200);
    for a in [&c1, &c2, &r] {
        assert!(
            agree(&s, ADMIN, &a.id).is_empty(),
            "{} revoked but shown capabilities",
            a.id
        );
        let caps = capabilities(&s, ADMIN, &a.id).json();
        assert_eq!(caps["denied_by"]["bound"], "revoked", "{caps}");
    }
    // A subject search finds none of them any more (it finds no managed agent at all).
    let subjects = post(
        &s,
        "/access/v1/search/subject",
        &json!({"subject": {"type": "Agent"}, "action": {"name": "read"}, "resource": {"type": "File", "id": "repo/src/main.rs"}}),
    );
    for a in [&c1, &c2, &r] {
        assert!(
            !subjects["results"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["id"] == a.id.as_str()),
            "{subjects}"
        );
    }
}

/// While the delegation state cannot be read, every agent is denied (`state_unavailable`), and
/// discovery claims nothing either: capabilities answer `503 state_unavailable`, and the
/// searches find no agent and nothing for one — also after a reload republishes the snapshot.
/// Once the state is readable again, capabilities, searches and `/v1/authorize` agree again, as
/// they did before.
#[test]
fn discovery_claims_nothing_while_the_agent_state_is_unknown_and_agrees_after() {
    let bundle = common::copy_bundle(&repo_root());
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(bundle.path(), Options::with_state(state.path(), ADMIN));
    let r = root(&s, 3600);
    let c = child(&s, &r, CODER_GRANT, 1800);
    // Twice: the first pass's reads taint the family, the second sees the settled taint.
    for _ in 0..2 {
        agree(&s, ADMIN, &r.id);
        agree(&s, ADMIN, &c.id);
    }
    let before_root = agree(&s, ADMIN, &r.id);
    let before_child = agree(&s, ADMIN, &c.id);
    assert!(!before_child.is_empty());
    drop(s);

    // Keep the good state, and put garbage in its place.
    let saved = tempfile::tempdir().unwrap();
    common::copy_dir(state.path(), saved.path());
    clear(state.path());
    std::fs::write(
        state.path().join(deputy::delegation::STATE_FILE),
        b"this is not a sqlite database".repeat(100),
    )
    .unwrap();
    let s = TestServer::start(bundle.path(), Options::with_state(state.path(), ADMIN));
    let unknown = |s: &TestServer| {
        for agent in [r.id.as_str(), c.id.as_str(), "orchestrator", "coder-1"] {
            let d = decide(s, agent, "read", ("File", "repo/src/main.rs"));
            assert_eq!(d["denied_by"]["bound"], "state_unavailable", "{d}");
            assert!(
                searched(s, agent).is_empty(),
                "an action search found something for {agent}"
            );
            assert!(
                searched_resources(s, agent).is_empty(),
                "a resource search found something for {agent}"
            );
        }
        let caps = capabilities(s, ADMIN, &c.id);
        assert_eq!(caps.status, 503, "{}", caps.text());
        assert_eq!(caps.json()["code"], "state_unavailable");
        let subjects = post(
            s,
            "/access/v1/search/subject",
            &json!({"subject": {"type": "Agent"}, "action": {"name": "read"}, "resource": {"type": "File", "id": "repo/src/main.rs"}}),
        );
        assert_eq!(subjects["results"], json!([]), "{subjects}");
        // Humans are still decided, and found.
        let humans = post(
            s,
            "/access/v1/search/subject",
            &json!({"subject": {"type": "Human"}, "action": {"name": "read"}, "resource": {"type": "File", "id": "repo/src/main.rs"}}),
        );
        assert!(!humans["results"].as_array().unwrap().is_empty(), "{humans}");
    };
    unknown(&s);
    // A reload republishes the snapshot: still nothing.
    let policy = bundle.path().join("policies/humans.cedar");
    let humans = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(&policy, format!("{humans}\n// touched\n")).unwrap();
    s.reload().unwrap();
    unknown(&s);
    drop(s);

    // The state is back: the agents are decided again, and discovery agrees with them.
    clear(state.path());
    common::copy_dir(saved.path(), state.path());
    let s = TestServer::start(bundle.path(), Options::with_state(state.path(), ADMIN));
    assert_eq!(agree(&s, ADMIN, &r.id), before_root);
    assert_eq!(agree(&s, &c.token, &c.id), before_child);
}

/// Empties `dir`.
fn clear(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            std::fs::remove_dir_all(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
}

/// A page token is not signed: its first part is the hex of the key to resume after, and an
/// agent may rewrite it (and the limit) while keeping the fingerprint of its own search. Any
/// such token either is refused (`invalid_page_token`) or answers a page of candidates that the
/// whole search (what evaluation allows) holds, each after the chosen key — never a candidate
/// the search would not answer, never a 5xx.
#[test]
fn a_rewritten_page_token_answers_nothing_the_search_would_not() {
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(&repo_root(), Options::with_state(state.path(), ADMIN));
    let agent = root(&s, 3600);
    let body =
        json!({"subject": {"type": "Agent", "id": agent.id}, "action": {"name": "read"}, "resource": {"type": "File"}});
    let whole: Vec<Value> = post(&s, "/access/v1/search/resource", &body)["results"]
        .as_array()
        .unwrap()
        .clone();
    let mut b = body.clone();
    b["page"] = json!({"limit": 1});
    let t = post(&s, "/access/v1/search/resource", &b)["page"]["next_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let fp = t.splitn(3, '.').nth(2).unwrap().to_owned();
    let hex = |s: &[u8]| s.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let long = "a".repeat(20_000);
    let keys: Vec<Vec<u8>> = vec![
        vec![],
        b"repo/src/payroll.rs".to_vec(),
        b"repo/src/main.rs".to_vec(),
        b"repo/README.md".to_vec(),
        b"\0".to_vec(),
        b"\xff\xfe".to_vec(),
        "\u{10ffff}".as_bytes().to_vec(),
        long.into_bytes(),
    ];
    for key in &keys {
        for limit in ["0", "1", "2", "18446744073709551615", "18446744073709551616", "-1", ""] {
            for token in [
                format!("{}.{limit}.{fp}", hex(key)),
                format!("{}.{limit}.{fp}.x", hex(key)),
            ] {
                let mut b = body.clone();
                b["page"] = json!({"token": token});
                let r = s.post("/access/v1/search/resource", &b);
                match r.status {
                    200 => {
                        let got = r.json();
                        for e in got["results"].as_array().unwrap() {
                            assert!(whole.contains(e), "token {token} answered {e}, not in {whole:?}");
                            let id = e["id"].as_str().unwrap().as_bytes();
                            assert!(id > key.as_slice(), "token {token} answered {e}, not after its key");
                        }
                    }
                    400 => assert_eq!(r.json()["code"], "invalid_page_token", "{}", r.text()),
                    other => panic!("token {token}: {other} {}", r.text()),
                }
            }
        }
    }
}
