//! Attacks on the delegation promise that held: each test asserts deputy's answer to one
//! attempt (over HTTP, against a real server, on `tests/fixtures/attack`). See tests/it/attack.rs
//! for the ones that did not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::{spawn, Options, TestServer};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-attack-tests";
const LEAD: &str = "lead-credential-from-a-secret-0123";

fn start() -> (TestServer, tempfile::TempDir, tempfile::TempDir) {
    let bundle = tempfile::tempdir().unwrap();
    common::copy_dir(&common::repo_root().join("tests/fixtures/attack"), bundle.path());
    let state = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        bundle.path(),
        Options {
            state: Some(state.path().to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            agent_tokens: [("lead".to_owned(), LEAD.to_owned())].into(),
            ..Options::default()
        },
    );
    (server, bundle, state)
}

const READ_A: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"proj/a");"#;

/// Reloads the bundle at `bundle` with a schema whose action context requires `hour`; returns
/// the schema as it was.
fn require_hour(s: &TestServer, bundle: &std::path::Path) -> String {
    let schema_path = bundle.join("schema/deputy.cedarschema");
    let schema = std::fs::read_to_string(&schema_path).unwrap();
    let stricter = schema.replace(
        "type ActionContext = {\n  taint?: Long,\n};",
        "type ActionContext = {\n  taint?: Long,\n  hour: Long,\n};",
    );
    assert_ne!(stricter, schema, "the example schema changed");
    std::fs::write(&schema_path, &stricter).unwrap();
    s.reload().unwrap();
    schema
}

fn body(grant: &str) -> Value {
    json!({"grant": grant, "ttl_seconds": 600, "ceiling": 2, "can_delegate": true, "task": "subtask"})
}

/// Foreign principals hidden in other syntax are all refused.
#[test]
fn foreign_principals_in_other_syntax_are_refused() {
    let (s, _b, _st) = start();
    for grant in [
        r#"permit(principal == ?principal, action, resource) when { if true then principal == Agent::"x" else false };"#,
        r#"permit(principal == ?principal, action, resource) when { [principal].contains(Agent::"x") };"#,
        r#"permit(principal == ?principal, action, resource) when { {p: principal}.p == Agent::"x" };"#,
        r#"permit(principal == ?principal, action, resource) when { principal has team };"#,
        r#"permit(principal == ?principal, action, resource) when { principal is Agent && principal in Team::"contractors" };"#,
        r#"permit(principal is Agent in Team::"contractors", action, resource);"#,
        r#"forbid(principal, action, resource) unless { principal.ceiling > 0 };"#,
        r#"permit(principal == ?principal, action, resource) when { resource == principal };"#,
    ] {
        let r = spawn(&s, LEAD, body(grant));
        assert!(
            r.status == 400
                && ["grant_foreign_principal", "grant_invalid"].contains(&r.json()["code"].as_str().unwrap()),
            "{grant}: {} {}",
            r.status,
            r.text()
        );
    }
}

/// Names: deputy's own names in any case, minted-looking ids in any case, `Agent` ids the
/// bundle owns; a revoked agent's id is never given out again.
#[test]
fn names_held() {
    let (s, _b, _st) = start();
    for id in [
        "Admin",
        "HUMAN",
        "Bundle",
        "AGT-0",
        "agt-x",
        "lead",
        "vendor",
        "worker",
        "auditor",
        "contractors",
    ] {
        let mut b = body(READ_A);
        b["agent_id"] = json!(id);
        let r = spawn(&s, LEAD, b);
        // `contractors` is a Team, not an Agent: free (Cedar tells types apart).
        if id == "contractors" {
            assert_eq!(r.status, 201, "{id}: {}", r.text());
        } else {
            assert_eq!(r.status, 409, "{id}: {}", r.text());
        }
    }
    let mut b = body(READ_A);
    b["agent_id"] = json!("kid");
    assert_eq!(spawn(&s, LEAD, b.clone()).status, 201);
    let rev = common::delete_as(&s, ADMIN, "/v1/delegations/kid");
    assert_eq!(rev.status, 200, "{}", rev.text());
    let again = spawn(&s, LEAD, b);
    assert_eq!(again.json()["code"], "agent_exists", "{}", again.text());
}

/// Within one batch, a read that raises the taint denies a later write-down in the same batch,
/// and a caller-sent taint is replaced.
#[test]
fn taint_within_one_batch() {
    let (s, _b, _st) = start();
    let kid = spawn(
        &s,
        LEAD,
        body(
            r#"permit(principal == ?principal, action in [Action::"read", Action::"write"], resource in Folder::"proj/a");"#,
        ),
    );
    let id = kid.json()["delegation_id"].as_str().unwrap().to_owned();
    let item = |action: &str, doc: &str| {
        json!({"principal": {"type": "Agent", "id": id}, "action": {"type": "Action", "id": action},
               "resource": {"type": "Doc", "id": doc}, "context": {"taint": 0}})
    };
    let r = s.post(
        "/v1/authorize/batch",
        &json!({"requests": [item("read", "secret"), item("write", "public")]}),
    );
    let v = r.json();
    assert_eq!(v["responses"][0]["decision"], "Allow", "{v}");
    assert_eq!(v["responses"][1]["decision"], "Deny", "{v}");
    assert_eq!(v["responses"][1]["denied_by"]["bound"], "taint", "{v}");
}

/// A reload that gives the actions' context a required attribute besides `taint`: a managed
/// agent's request carrying no context is refused from then on, as Cedar's whole request check
/// refuses it (whether deputy's taint alone is a valid context is known per bundle, never
/// carried over from the bundle the agent was served under first); reloaded back, it is allowed
/// again.
#[test]
fn a_reload_requiring_more_context_refuses_the_taint_only_request() {
    let bundle = common::copy_bundle(&common::repo_root());
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(bundle.path(), Options::with_state(state.path(), ADMIN));
    let root = common::applied(&spawn(
        &s,
        ADMIN,
        json!({"grant": r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#,
               "ttl_seconds": 600, "ceiling": 2, "can_delegate": false, "task": "t"}),
    ));
    let ask = |context: Option<Value>| {
        let mut req = json!({"principal": {"type": "Agent", "id": root.id}, "action": {"type": "Action", "id": "read"},
                             "resource": {"type": "File", "id": "repo/src/main.rs"}});
        if let Some(c) = context {
            req["context"] = c;
        }
        s.post("/v1/authorize", &req)
    };
    assert_eq!(ask(None).json()["decision"], "Allow");
    let schema = require_hour(&s, bundle.path());
    for context in [None, Some(json!({})), Some(json!({"taint": 0}))] {
        let r = ask(context.clone());
        assert_eq!(r.status, 400, "{context:?} after the reload: {}", r.text());
    }
    assert_eq!(ask(Some(json!({"hour": 9}))).json()["decision"], "Allow");
    std::fs::write(bundle.path().join("schema/deputy.cedarschema"), &schema).unwrap();
    s.reload().unwrap();
    assert_eq!(ask(None).json()["decision"], "Allow");
}

/// Held: a request that carries no context (absent, `null` or `{}`) skips Cedar's context check
/// only where the action's context type accepts the empty record in the bundle being served. A
/// reload that makes the context require an attribute refuses such requests on every decision
/// endpoint (single, batch, AuthZEN single and batch), for a human and an agent the bundle
/// declares alike — never an allow decided on the old bundle's answer — and a reload back allows
/// them again.
#[test]
fn a_reload_requiring_context_refuses_contextless_requests_on_every_endpoint() {
    let bundle = common::copy_bundle(&common::repo_root());
    let s = TestServer::start(bundle.path(), Options::default());
    let principals = [("Human", "alice"), ("Agent", "coder-1")];
    let request = |p: (&str, &str), context: Option<Value>| {
        let mut req = json!({"principal": {"type": p.0, "id": p.1}, "action": {"type": "Action", "id": "read"},
                             "resource": {"type": "File", "id": "repo/src/main.rs"}});
        if let Some(c) = context {
            req["context"] = c;
        }
        req
    };
    let authzen = |req: &Value| {
        let mut e = json!({"subject": req["principal"], "action": {"name": "read"}, "resource": req["resource"]});
        if let Some(c) = req.get("context") {
            e["context"] = c.clone();
        }
        e
    };
    // Every endpoint's answers for one request: (allowed, refused) per endpoint.
    let answers = |req: &Value| -> Vec<(String, bool, bool)> {
        let single = s.post("/v1/authorize", req);
        let batch = s.post("/v1/authorize/batch", &json!({"requests": [req]}));
        let item = &batch.json()["responses"][0];
        let eval = s.post("/access/v1/evaluation", &authzen(req));
        let evals = s.post("/access/v1/evaluations", &json!({"evaluations": [authzen(req)]}));
        let e = &evals.json()["evaluations"][0];
        vec![
            (
                "authorize".into(),
                single.status == 200 && single.json()["decision"] == "Allow",
                single.status == 400,
            ),
            ("batch".into(), item["decision"] == "Allow", item.get("error").is_some()),
            (
                "evaluation".into(),
                eval.status == 200 && eval.json()["decision"] == true,
                eval.status == 400,
            ),
            (
                "evaluations".into(),
                e["decision"] == true,
                e["context"].get("error").is_some(),
            ),
        ]
    };
    let contexts = [None, Some(Value::Null), Some(json!({}))];
    for p in principals {
        for c in &contexts {
            for (endpoint, allowed, _) in answers(&request(p, c.clone())) {
                assert!(allowed, "{p:?} {c:?} on {endpoint} before the reload");
            }
        }
    }
    let schema = require_hour(&s, bundle.path());
    for p in principals {
        for c in &contexts {
            for (endpoint, allowed, refused) in answers(&request(p, c.clone())) {
                assert!(!allowed && refused, "{p:?} {c:?} on {endpoint} after the reload");
            }
        }
        for (endpoint, allowed, _) in answers(&request(p, Some(json!({"hour": 9})))) {
            assert!(allowed, "{p:?} with the context now required, on {endpoint}");
        }
    }
    std::fs::write(bundle.path().join("schema/deputy.cedarschema"), &schema).unwrap();
    s.reload().unwrap();
    for p in principals {
        for (endpoint, allowed, _) in answers(&request(p, None)) {
            assert!(allowed, "{p:?} without a context on {endpoint}, reloaded back");
        }
    }
}
