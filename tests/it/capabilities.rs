//! Capabilities under conditions, against a real server, on bundles whose actions all need
//! context (`context.hour`): the law that an entry never claims more than `/v1/authorize` allows
//! for the contexts tried — every unconditional entry allowed for every context, every
//! conditional entry's condition (evaluated by Cedar with the context) equal to `/v1/authorize`,
//! everything not listed denied — on random admin policies and grants for a managed chain
//! (root, child, grandchild); and one fixed grandchild for the shape of the answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, PolicySet, Request};
use common::{copy_bundle, get_as, post_as, repo_root, Options, TestServer};
use proptest::prelude::*;
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-capability-tests";

/// The example bundle's schema with an action context every action needs (`hour`), an optional
/// flag, and no taint source (a test's own authorize calls must not raise taints; `write` stays
/// a sink, so the ceiling and taint guard is exercised).
fn write_bundle(dir: &Path, admin_policies: &str) {
    let schema_path = dir.join("schema/deputy.cedarschema");
    let schema = std::fs::read_to_string(&schema_path).unwrap();
    let schema = schema
        .replace(
            "type ActionContext = {\n  taint?: Long,\n};",
            "type ActionContext = {\n  taint?: Long,\n  hour: Long,\n  flag?: Bool,\n};",
        )
        .replace("@taint(\"source\")\n", "");
    assert!(schema.contains("hour: Long"), "the example schema changed: {schema}");
    std::fs::write(&schema_path, schema).unwrap();
    std::fs::write(dir.join("policies/agents.cedar"), admin_policies).unwrap();
}

/// Spawns a child of `token`'s holder; `None` when deputy refuses it (say, the prover could
/// not show it within its parent).
fn spawn(s: &TestServer, token: &str, grant: &str, ceiling: i64) -> Option<(String, String)> {
    let r = post_as(
        s,
        token,
        "/v1/delegations",
        &json!({"grant": grant, "ttl_seconds": 3600, "ceiling": ceiling, "can_delegate": true, "task": "t"}),
    );
    if r.status != 201 {
        eprintln!("spawn refused: {}", r.text());
        return None;
    }
    let b = r.json();
    Some((
        b["delegation_id"].as_str().unwrap().to_owned(),
        b["credential"].as_str().unwrap().to_owned(),
    ))
}

/// The resources of the bundle at `bundle` (its `entities/resources.json`).
fn resources(bundle: &Path) -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(bundle.join("entities/resources.json")).unwrap()).unwrap()
}

/// The contexts tried: hours around every bound the generators use, the flag absent, false, true.
fn contexts() -> Vec<Value> {
    let mut out = Vec::new();
    for hour in [0, 5, 7, 8, 12, 19, 20, 23] {
        out.push(json!({"hour": hour}));
        out.push(json!({"hour": hour, "flag": true}));
        out.push(json!({"hour": hour, "flag": false}));
    }
    out
}

const ACTIONS: [(&str, &[&str]); 3] = [
    ("read", &["Folder", "File"]),
    ("write", &["Folder", "File"]),
    ("invoke", &["Tool"]),
];

enum Entry {
    Always,
    When(String),
}

/// Checks the law for one agent over the resources of the bundle at `bundle`; the number of
/// (pair, context) checks made.
fn check_agent(s: &TestServer, bundle: &Path, agent: &str) -> usize {
    let caps = get_as(s, ADMIN, &format!("/v1/agents/{agent}/capabilities")).json();
    assert_eq!(caps["not_enumerated"], json!([]), "{caps}");
    let taint = caps["taint"].as_i64().unwrap();
    let mut entries: BTreeMap<(String, String, String), Entry> = BTreeMap::new();
    let key = |c: &Value| {
        (
            c["action"].as_str().unwrap().to_owned(),
            c["resource"]["type"].as_str().unwrap().to_owned(),
            c["resource"]["id"].as_str().unwrap().to_owned(),
        )
    };
    for c in caps["allowed"].as_array().unwrap() {
        entries.insert(key(c), Entry::Always);
    }
    for c in caps["conditional"].as_array().unwrap() {
        let cond = c["condition"].as_str().unwrap().to_owned();
        assert!(entries.insert(key(c), Entry::When(cond)).is_none(), "listed twice: {c}");
    }
    let store = Entities::from_json_value(Value::Array(resources(bundle)), None).unwrap();
    let principal = EntityUid::from_str(&format!("Agent::\"{agent}\"")).unwrap();
    let mut checks = 0;
    for (action, types) in ACTIONS {
        for r in resources(bundle) {
            let (ty, id) = (r["uid"]["type"].as_str().unwrap(), r["uid"]["id"].as_str().unwrap());
            if !types.contains(&ty) {
                continue;
            }
            let entry = entries.get(&(action.to_owned(), ty.to_owned(), id.to_owned()));
            for context in contexts() {
                let resp = s.post(
                    "/v1/authorize",
                    &json!({"principal": {"type": "Agent", "id": agent}, "action": {"type": "Action", "id": action},
                            "resource": {"type": ty, "id": id}, "context": context}),
                );
                assert_eq!(resp.status, 200, "{}", resp.text());
                let allowed = resp.json()["decision"] == "Allow";
                let claimed = match entry {
                    None => false,
                    Some(Entry::Always) => true,
                    Some(Entry::When(cond)) => {
                        let mut ctx = context.clone();
                        ctx["taint"] = json!(taint);
                        holds(cond, &principal, action, ty, id, &ctx, &store)
                    }
                };
                assert_eq!(
                    claimed,
                    allowed,
                    "{agent} {action} {ty}::{id} with context {context}: capabilities claim {} \
                     (entry {}), /v1/authorize says {}\ncapabilities: {caps}",
                    claimed,
                    match entry {
                        None => "none".to_owned(),
                        Some(Entry::Always) => "allowed".to_owned(),
                        Some(Entry::When(c)) => format!("when `{c}`"),
                    },
                    allowed
                );
                checks += 1;
            }
        }
    }
    checks
}

/// Whether `condition` holds for the request, as Cedar evaluates it (an error: it does not).
fn holds(
    condition: &str,
    principal: &EntityUid,
    action: &str,
    ty: &str,
    id: &str,
    context: &Value,
    store: &Entities,
) -> bool {
    let policies = PolicySet::from_str(&format!("permit(principal, action, resource) when {{ {condition} }};"))
        .unwrap_or_else(|e| panic!("the condition `{condition}` is not Cedar: {e}"));
    let request = Request::new(
        principal.clone(),
        EntityUid::from_str(&format!("Action::\"{action}\"")).unwrap(),
        EntityUid::from_str(&format!("{ty}::\"{id}\"")).unwrap(),
        Context::from_json_value(context.clone(), None).unwrap(),
        None,
    )
    .unwrap();
    Authorizer::new().is_authorized(&request, &policies, store).decision() == Decision::Allow
}

fn start(admin_policies: &str) -> (TestServer, tempfile::TempDir, tempfile::TempDir) {
    start_with(admin_policies, |_| {})
}

/// As `start`, with `edit` making more changes to the bundle before the server starts.
fn start_with(admin_policies: &str, edit: impl FnOnce(&Path)) -> (TestServer, tempfile::TempDir, tempfile::TempDir) {
    let bundle = copy_bundle(&repo_root());
    write_bundle(bundle.path(), admin_policies);
    edit(bundle.path());
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(bundle.path(), Options::with_state(state.path(), ADMIN));
    (s, bundle, state)
}

/// A grandchild allowed to read one section in office hours: its capabilities say so, as a
/// condition on the context, where enumeration could list nothing (every action needs `hour`).
#[test]
fn a_grandchild_on_a_bundle_whose_actions_all_need_context() {
    let (s, bundle, _state) = start(
        r#"
        permit (principal is Agent, action == Action::"read", resource in Folder::"repo")
        when { context.hour >= 8 && context.hour < 20 };
        permit (principal is Agent, action == Action::"invoke", resource is Tool);
        forbid (principal is Agent, action in [Action::"read", Action::"invoke"], resource)
        when { resource.classification > principal.ceiling };
        "#,
    );
    let read_repo = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
        permit(principal == ?principal, action == Action::"invoke", resource == Tool::"pytest");"#;
    let (_root, root_token) = spawn(&s, ADMIN, read_repo, 2).unwrap();
    let (_child, child_token) = spawn(&s, &root_token, read_repo, 1).unwrap();
    let (grandchild, _) = spawn(
        &s,
        &child_token,
        r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");
           permit(principal == ?principal, action == Action::"invoke", resource == Tool::"pytest")
           when { context has flag && context.flag };"#,
        1,
    )
    .unwrap();
    let caps = get_as(&s, ADMIN, &format!("/v1/agents/{grandchild}/capabilities")).json();
    assert_eq!(caps["allowed"], json!([]), "{caps}");
    assert_eq!(caps["not_enumerated"], json!([]), "{caps}");
    let conditional: Vec<(String, String, String)> = caps["conditional"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap().to_owned(),
                c["resource"]["id"].as_str().unwrap().to_owned(),
                c["condition"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let ids: Vec<(&str, &str)> = conditional.iter().map(|(a, r, _)| (a.as_str(), r.as_str())).collect();
    // The tool first; then the readable section by type and id: main.rs (classification 1), not
    // payroll.rs (2, above the chain's ceiling), the section itself, not the folder above it.
    assert_eq!(
        ids,
        [("invoke", "pytest"), ("read", "repo/src/main.rs"), ("read", "repo/src")],
        "{caps}"
    );
    for (action, _, cond) in &conditional {
        let want: &[&str] = if action == "read" {
            &["context.hour < 8", "context.hour < 20"]
        } else {
            &["context.flag"]
        };
        for w in want {
            assert!(cond.contains(w), "the condition `{cond}` does not say `{w}`");
        }
        assert!(
            !cond.contains("taint"),
            "deputy supplies the taint; `{cond}` asks for it"
        );
    }
    assert!(check_agent(&s, bundle.path(), &grandchild) > 100);
}

/// A condition that can never hold is not a capability: Cedar's partial evaluator leaves
/// `context.hour >= 8 && false` for a tool that does not write (its left side could err, so it is
/// not cut to `false`), yet it is never true, so `pytest` is not listed; `git_push` is, under
/// the hour alone.
#[test]
fn a_condition_that_can_never_hold_is_left_out() {
    let (s, bundle, _state) = start(
        r#"
        permit (principal is Agent, action == Action::"invoke", resource is Tool)
        when { context.hour >= 8 && resource.writes };
        forbid (principal is Agent, action == Action::"invoke", resource is Tool)
        when { context.hour >= 22 && resource.classification > 5 };
        "#,
    );
    let tools = r#"permit(principal == ?principal, action == Action::"invoke", resource is Tool);"#;
    let (root, _) = spawn(&s, ADMIN, tools, 2).unwrap();
    let caps = get_as(&s, ADMIN, &format!("/v1/agents/{root}/capabilities")).json();
    let conditional: Vec<(&str, &str)> = caps["conditional"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["resource"]["id"].as_str().unwrap(), c["condition"].as_str().unwrap()))
        .collect();
    assert_eq!(conditional, [("git_push", "!(context.hour < 8)")], "{caps}");
    assert_eq!(caps["allowed"], json!([]), "{caps}");
    assert!(check_agent(&s, bundle.path(), &root) > 10);
}

/// Resources share one per-resource evaluation when the residuals read the same of them: here
/// every read of the resource is in a `when` (the policy index cannot tell the resources apart),
/// through ancestry (`in`, one target or a set), `==`, `is` and attributes whose value lands in
/// the condition. No entry claims more than `/v1/authorize` allows, for the agent and a child.
#[test]
fn resources_read_only_in_conditions_never_share_an_answer_they_differ_on() {
    let (s, bundle, _state) = start(
        r#"
        permit (principal is Agent, action == Action::"read", resource)
        when { context.hour >= 8 && (resource in Folder::"repo/src" || resource == File::"repo/README.md") };
        permit (principal is Agent, action == Action::"read", resource)
        when { context.hour < resource.classification * 6 + 1 && resource in [Folder::"repo/docs", Folder::"repo"] };
        forbid (principal is Agent, action == Action::"read", resource)
        when { context has flag && context.flag && !(resource in Folder::"repo/src") && resource is File };
        permit (principal is Agent, action == Action::"write", resource)
        when { context.hour == resource.classification * 7 + 5 && resource is File };
        permit (principal is Agent, action == Action::"invoke", resource)
        when { (context.hour > 12 && resource.writes) || (context.hour < 6 && !resource.writes) };
        "#,
    );
    let grant = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
        permit(principal == ?principal, action == Action::"write", resource in Folder::"repo");
        permit(principal == ?principal, action == Action::"invoke", resource is Tool);"#;
    let (root, root_token) = spawn(&s, ADMIN, grant, 2).unwrap();
    let (child, _) = spawn(&s, &root_token, grant, 2).unwrap();
    assert!(check_agent(&s, bundle.path(), &root) > 100);
    assert!(check_agent(&s, bundle.path(), &child) > 100);
}

/// Two files with the same attributes that only their ancestry tells apart, read only in a
/// condition (`resource in Folder::"repo/src"`, neither file named): they must not share an
/// answer. (In the bundle above, files of different folders also differ by classification, so
/// a sharing key that dropped the ancestors went unnoticed there.)
#[test]
fn resources_told_apart_only_by_ancestry_never_share_an_answer() {
    // `repo/docs/notes.md`: classification 1 like `repo/src/main.rs`, in `repo/docs` instead.
    let add_notes = |dir: &Path| {
        let mut entities = resources(dir);
        let main = entities
            .iter()
            .find(|e| e["uid"]["id"] == "repo/src/main.rs")
            .unwrap()
            .clone();
        entities.push(json!({
            "uid": {"type": "File", "id": "repo/docs/notes.md"},
            "attrs": main["attrs"].clone(),
            "parents": [{"type": "Folder", "id": "repo/docs"}],
        }));
        std::fs::write(
            dir.join("entities/resources.json"),
            serde_json::to_string(&entities).unwrap(),
        )
        .unwrap();
    };
    let (s, bundle, _state) = start_with(
        r#"
        permit (principal is Agent, action == Action::"read", resource)
        when { context.hour >= 8 && resource in Folder::"repo/src" };
        permit (principal is Agent, action == Action::"write", resource)
        when { context.hour < 12 && !(resource in Folder::"repo/src") };
        "#,
        add_notes,
    );
    let grant = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
        permit(principal == ?principal, action == Action::"write", resource in Folder::"repo");"#;
    let (root, _) = spawn(&s, ADMIN, grant, 2).unwrap();
    let caps = get_as(&s, ADMIN, &format!("/v1/agents/{root}/capabilities")).json();
    // Cedar may leave a condition that cannot hold (`.. && false`) rather than drop the entry:
    // the two files' answers are compared, not their presence.
    let answer = |action: &str, id: &str| {
        let listed = |kind: &str| {
            caps[kind]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["action"] == action && c["resource"]["id"] == id)
                .map(|c| c["condition"].clone())
        };
        (listed("allowed"), listed("conditional"))
    };
    for action in ["read", "write"] {
        assert_ne!(
            answer(action, "repo/src/main.rs"),
            answer(action, "repo/docs/notes.md"),
            "{action}: {caps}"
        );
    }
    assert!(check_agent(&s, bundle.path(), &root) > 50);
}

/// A condition is the residual's `when` clause, not text found in it: an annotation that holds
/// `when { .. }` (Cedar keeps a policy's annotations on its residual) is not read for it.
#[test]
fn an_annotation_holding_when_is_not_read_as_the_condition() {
    let (s, bundle, _state) = start(
        r#"
        @note("when { context.hour > 100 }")
        permit (principal is Agent, action == Action::"read", resource in Folder::"repo")
        when { context.hour >= 8 };
        @note("} when { true")
        forbid (principal is Agent, action == Action::"read", resource)
        when { context has flag && context.flag };
        "#,
    );
    let grant = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;
    let (root, _) = spawn(&s, ADMIN, grant, 2).unwrap();
    let caps = get_as(&s, ADMIN, &format!("/v1/agents/{root}/capabilities")).json();
    let conditional = caps["conditional"].as_array().unwrap();
    assert!(!conditional.is_empty(), "{caps}");
    for c in conditional {
        let cond = c["condition"].as_str().unwrap();
        assert!(cond.contains("8") && cond.contains("flag"), "{cond}");
        assert!(!cond.contains("100") && !cond.contains("note"), "{cond}");
    }
    assert!(check_agent(&s, bundle.path(), &root) > 100);
}

// ---------------------------------------------------------------------------------------------
// The law on random bundles

fn atom() -> impl Strategy<Value = String> {
    prop_oneof![
        (0..24i64).prop_map(|n| format!("context.hour >= {n}")),
        (0..24i64).prop_map(|n| format!("context.hour < {n}")),
        Just("context has flag && context.flag".to_owned()),
        Just("!(context has flag)".to_owned()),
        (0..3i64).prop_map(|n| format!("resource.classification <= {n}")),
        (0..3i64).prop_map(|n| format!("context has taint && context.taint <= {n}")),
        Just("true".to_owned()),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    prop_oneof![
        atom(),
        (atom(), atom()).prop_map(|(a, b)| format!("{a} && {b}")),
        (atom(), atom()).prop_map(|(a, b)| format!("({a}) || ({b})")),
    ]
}

/// (action, resource scope) pairs that type-check.
fn scope() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop_oneof![
        Just(("read", "resource in Folder::\"repo\"")),
        Just(("read", "resource in Folder::\"repo/src\"")),
        Just(("read", "resource")),
        Just(("read", "resource == File::\"repo/README.md\"")),
        Just(("write", "resource in Folder::\"repo\"")),
        Just(("write", "resource")),
        Just(("invoke", "resource is Tool")),
        Just(("invoke", "resource == Tool::\"pytest\"")),
    ]
}

fn admin_policy() -> impl Strategy<Value = String> {
    (prop::bool::weighted(0.25), scope(), condition()).prop_map(|(forbid, (action, resource), cond)| {
        format!(
            "{} (principal is Agent, action == Action::\"{action}\", {resource}) when {{ {cond} }};",
            if forbid { "forbid" } else { "permit" }
        )
    })
}

fn grant_policy() -> impl Strategy<Value = String> {
    (scope(), prop::option::of(condition())).prop_map(|((action, resource), cond)| {
        format!(
            "permit (principal == ?principal, action == Action::\"{action}\", {resource}){};",
            cond.map(|c| format!(" when {{ {c} }}")).unwrap_or_default()
        )
    })
}

/// A narrower grant: every policy of `grant` with one more condition on the hour.
fn narrowed(grant: &[String], hour: i64) -> String {
    grant
        .iter()
        .map(|p| format!("{} when {{ context.hour >= {hour} }};", p.trim_end_matches(';')))
        .collect::<Vec<_>>()
        .join("\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn capabilities_never_claim_more_than_authorize(
        admin in prop::collection::vec(admin_policy(), 1..5),
        grant in prop::collection::vec(grant_policy(), 1..4),
        hour1 in 0..24i64,
        hour2 in 0..24i64,
    ) {
        let (s, bundle, _state) = start(&admin.join("\n"));
        let (root, root_token) = spawn(&s, ADMIN, &grant.join("\n"), 2).expect("the admin spawns the root");
        let mut agents = vec![root];
        if let Some((child, child_token)) = spawn(&s, &root_token, &narrowed(&grant, hour1), 1) {
            agents.push(child);
            let narrower: Vec<String> = narrowed(&grant, hour1).lines().map(str::to_owned).collect();
            if let Some((grandchild, _)) = spawn(&s, &child_token, &narrowed(&narrower, hour2), 1) {
                agents.push(grandchild);
            }
        }
        for agent in &agents {
            prop_assert!(check_agent(&s, bundle.path(), agent) > 0);
        }
    }
}
