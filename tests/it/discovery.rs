//! Discovery against a real server: every AuthZEN search answer equals evaluating each candidate
//! one by one through `/access/v1/evaluation` (managed agents through their chains), pages walk
//! to the same answer, and bad page tokens are refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::{post_as, repo_root, Options, TestServer};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-discovery-tests";

fn start() -> (TestServer, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(&repo_root(), Options::with_state(state.path(), ADMIN));
    (s, state)
}

/// Creates a delegation; its (id, credential).
fn create(s: &TestServer, token: &str, body: Value) -> (String, String) {
    let r = post_as(s, token, "/v1/delegations", &body);
    assert_eq!(r.status, 201, "{}", r.text());
    let b = r.json();
    (
        b["delegation_id"].as_str().unwrap().to_owned(),
        b["credential"].as_str().unwrap().to_owned(),
    )
}

/// A root agent, a child and a grandchild: a three-hop chain with narrowing grants and ceilings.
fn family(s: &TestServer) -> Vec<String> {
    let (root, root_token) = create(
        s,
        ADMIN,
        json!({"grant": r#"
            permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
            permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");
            permit(principal == ?principal, action == Action::"invoke", resource == Tool::"pytest");
        "#, "ttl_seconds": 3600, "ceiling": 2, "can_delegate": true, "task": "orchestrate"}),
    );
    let (child, child_token) = create(
        s,
        &root_token,
        json!({"grant": r#"
            permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
            permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");
        "#, "ttl_seconds": 600, "ceiling": 1, "can_delegate": true, "task": "code"}),
    );
    let (grandchild, _) = create(
        s,
        &child_token,
        json!({"grant": r#"
            permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");
        "#, "ttl_seconds": 300, "ceiling": 1, "can_delegate": false, "task": "read"}),
    );
    vec![root, child, grandchild]
}

fn bundle_entities() -> Vec<(String, String)> {
    [
        "entities/resources.json",
        "entities/agents.json",
        "entities/people.json",
    ]
    .iter()
    .flat_map(|f| serde_json::from_str::<Vec<Value>>(&std::fs::read_to_string(repo_root().join(f)).unwrap()).unwrap())
    .map(|e| {
        (
            e["uid"]["type"].as_str().unwrap().to_owned(),
            e["uid"]["id"].as_str().unwrap().to_owned(),
        )
    })
    .collect()
}

fn entity(ty: &str, id: &str) -> Value {
    json!({"type": ty, "id": id})
}

/// One evaluation's decision; a pair the schema does not apply the action to (`400
/// action_not_applicable`) is not allowed.
fn evaluate(s: &TestServer, subject: &Value, action: &str, resource: &Value) -> bool {
    let r = s.post(
        "/access/v1/evaluation",
        &json!({"subject": subject, "action": {"name": action}, "resource": resource}),
    );
    if r.status == 400 && r.json()["code"] == "action_not_applicable" {
        return false;
    }
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["decision"].as_bool().unwrap()
}

fn search(s: &TestServer, kind: &str, body: &Value) -> Vec<Value> {
    let r = s.post(&format!("/access/v1/search/{kind}"), body);
    assert_eq!(r.status, 200, "{kind} search {body}: {}", r.text());
    let b = r.json();
    assert!(b.get("page").is_none(), "a search without `page` answered one: {b}");
    b["results"].as_array().unwrap().clone()
}

const ACTIONS: [&str; 5] = ["invoke", "use_credential", "write", "send_message", "read"];

/// The law: a search answers exactly the candidates that evaluation, one by one, allows. All
/// searches run first and reads are evaluated last: searching never raises an agent's taint,
/// evaluating an allowed read does (and that changes later writes).
#[test]
fn every_search_answer_equals_one_by_one_evaluation() {
    let (s, _state) = start();
    let agents = family(&s);
    let mut all = bundle_entities();
    all.extend(agents.iter().map(|a| ("Agent".to_owned(), a.clone())));
    let types: BTreeSet<String> = all.iter().map(|(t, _)| t.clone()).collect();
    let of_type = |ty: &str| -> Vec<Value> {
        all.iter()
            .filter(|(t, _)| t == ty)
            .map(|(t, id)| entity(t, id))
            .collect()
    };
    let mut principals: Vec<Value> = agents.iter().map(|a| entity("Agent", a)).collect();
    principals.extend(of_type("Human"));
    principals.extend(of_type("Agent").into_iter().take(2));

    // What each search answered, keyed by (subject, action, resource) with `*` searched.
    let mut searched: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    let key = |v: &Value| v.to_string();
    for p in &principals {
        for action in ACTIONS {
            for ty in &types {
                let found = search(
                    &s,
                    "resource",
                    &json!({"subject": p, "action": {"name": action}, "resource": {"type": ty}}),
                );
                searched.insert(
                    (key(p), action.to_owned(), format!("*{ty}")),
                    found.iter().map(key).collect(),
                );
            }
        }
    }
    let resources: Vec<Value> = ["Folder", "File", "Tool", "Credential", "Channel"]
        .iter()
        .flat_map(|t| of_type(t))
        .collect();
    for r in &resources {
        for p in &principals {
            let found = search(&s, "action", &json!({"subject": p, "resource": r}));
            searched.insert(
                (key(p), "*".to_owned(), key(r)),
                found.iter().map(|a| a["name"].as_str().unwrap().to_owned()).collect(),
            );
        }
        for action in ACTIONS {
            for ty in ["Agent", "Human"] {
                let found = search(
                    &s,
                    "subject",
                    &json!({"subject": {"type": ty}, "action": {"name": action}, "resource": r}),
                );
                searched.insert(
                    (format!("*{ty}"), action.to_owned(), key(r)),
                    found.iter().map(key).collect(),
                );
            }
        }
    }

    // One by one, sources last.
    let mut allowed: BTreeSet<(String, String, String)> = BTreeSet::new();
    let mut subjects = principals.clone();
    subjects.extend(of_type("Agent"));
    subjects.sort_by_key(key);
    subjects.dedup();
    for action in ACTIONS {
        for p in &subjects {
            for r in &resources {
                if evaluate(&s, p, action, r) {
                    allowed.insert((key(p), action.to_owned(), key(r)));
                }
            }
        }
    }
    let mut checked = 0;
    let mut nonempty = 0;
    for ((p, a, r), found) in &searched {
        let expected: BTreeSet<String> = if let Some(ty) = p.strip_prefix('*') {
            subjects
                .iter()
                .filter(|x| x["type"] == ty)
                .filter(|x| allowed.contains(&(key(x), a.clone(), r.clone())))
                .map(key)
                .collect()
        } else if let Some(ty) = r.strip_prefix('*') {
            resources
                .iter()
                .filter(|x| x["type"] == ty)
                .filter(|x| allowed.contains(&(p.clone(), a.clone(), key(x))))
                .map(key)
                .collect()
        } else {
            ACTIONS
                .iter()
                .filter(|x| allowed.contains(&(p.clone(), (**x).to_owned(), r.clone())))
                .map(|x| (*x).to_owned())
                .collect()
        };
        assert_eq!(
            found, &expected,
            "search ({p}, {a}, {r}) differs from one-by-one evaluation"
        );
        checked += 1;
        nonempty += usize::from(!found.is_empty());
    }
    assert!(
        checked > 100 && nonempty > 20,
        "too little was compared: {checked} searches, {nonempty} non-empty"
    );
}

/// Walking the pages (limit 2) gives the whole answer, in order; the last page's `next_token`
/// is empty; a token for another search, or a made-up one, is refused with its code.
#[test]
fn pages_walk_to_the_whole_answer_and_foreign_tokens_are_refused() {
    let (s, _state) = start();
    let agents = family(&s);
    let body =
        json!({"subject": entity("Agent", &agents[0]), "action": {"name": "read"}, "resource": {"type": "File"}});
    let whole = search(&s, "resource", &body);
    assert!(whole.len() >= 3, "{whole:?}");
    let mut walked = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let mut b = body.clone();
        b["page"] = if token.is_empty() {
            json!({"limit": 2})
        } else {
            json!({"token": token})
        };
        let r = s.post("/access/v1/search/resource", &b).json();
        let results = r["results"].as_array().unwrap();
        assert!(results.len() <= 2, "{r}");
        assert_eq!(r["page"]["count"], results.len(), "{r}");
        walked.extend(results.iter().cloned());
        token = r["page"]["next_token"].as_str().unwrap().to_owned();
        pages += 1;
        if token.is_empty() {
            break;
        }
        assert!(pages < 100);
    }
    assert_eq!(walked, whole);
    assert!(pages >= 2);

    let first = s
        .post("/access/v1/search/resource", &json!({"page": {"limit": 1}, "subject": entity("Agent", &agents[0]), "action": {"name": "read"}, "resource": {"type": "File"}}))
        .json();
    let t = first["page"]["next_token"].as_str().unwrap();
    let other = json!({"subject": entity("Agent", &agents[1]), "action": {"name": "read"}, "resource": {"type": "File"}, "page": {"token": t}});
    for bad in [
        other,
        json!({"subject": entity("Agent", &agents[0]), "action": {"name": "read"}, "resource": {"type": "File"}, "page": {"token": "nonsense"}}),
    ] {
        let r = s.post("/access/v1/search/resource", &bad);
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["code"], "invalid_page_token", "{}", r.text());
    }
    let r = s.post(
        "/access/v1/search/resource",
        &json!({"subject": entity("Agent", &agents[0]), "action": {"name": "read"}, "resource": {"type": "File"}, "page": {"limit": 0}}),
    );
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (400, json!("invalid_field")),
        "{}",
        r.text()
    );
}

/// A page token resumes after the last candidate by key, not by position: agents spawned
/// between two pages (their minted ids sort anywhere) never make a page repeat a subject or
/// skip one that was there throughout.
#[test]
fn pages_neither_repeat_nor_skip_when_agents_change_between_them() {
    let (s, _state) = start();
    let root_body = || {
        json!({"grant": r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#,
               "ttl_seconds": 3600, "ceiling": 2, "can_delegate": false, "task": "read"})
    };
    for _ in 0..6 {
        create(&s, ADMIN, root_body());
    }
    let body =
        json!({"subject": {"type": "Agent"}, "action": {"name": "read"}, "resource": entity("File", "repo/README.md")});
    let before = search(&s, "subject", &body);
    assert!(before.len() >= 6, "{before:?}");
    let mut walked: Vec<Value> = Vec::new();
    let mut token = String::new();
    for page in 0.. {
        let mut b = body.clone();
        b["page"] = if token.is_empty() {
            json!({"limit": 1})
        } else {
            json!({"token": token})
        };
        let r = s.post("/access/v1/search/subject", &b);
        assert_eq!(r.status, 200, "{}", r.text());
        let r = r.json();
        walked.extend(r["results"].as_array().unwrap().iter().cloned());
        token = r["page"]["next_token"].as_str().unwrap().to_owned();
        if token.is_empty() {
            break;
        }
        assert!(page < 100, "the walk does not end");
        // Three new agents between each of the first pages: ids minted at random, sorting
        // before and after the page's last.
        if page < 5 {
            for _ in 0..3 {
                create(&s, ADMIN, root_body());
            }
        }
    }
    let ids: Vec<&str> = walked.iter().map(|v| v["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "a page repeated a subject or went back");
    for v in &before {
        assert!(walked.contains(v), "{v} was there throughout and was skipped");
    }
}
