//! `deputy serve --shadow DIR` (docs/GITOPS.md): a candidate bundle decided beside the serving
//! one. It is compared and reported, and never changes an answer, a taint or the state.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, applied, get_as, repo_root, spawn, Options, TestServer};

const ADMIN: &str = "shadow-admin-token-0123456789";

/// The example bundle with agents reading only `repo/docs` (the shadow is the example itself,
/// where agents read the whole repo).
fn narrowed_serving() -> tempfile::TempDir {
    let dir = common::copy_bundle(&repo_root());
    let path = dir.path().join("policies/agents.cedar");
    let text = std::fs::read_to_string(&path).unwrap();
    let narrowed = text.replace(
        "action == Action::\"read\", resource in Folder::\"repo\");",
        "action == Action::\"read\", resource in Folder::\"repo/docs\");",
    );
    assert_ne!(text, narrowed);
    std::fs::write(&path, narrowed).unwrap();
    dir
}

fn start(serving: &Path, shadow: &Path, state: &Path) -> TestServer {
    TestServer::start(
        serving,
        Options {
            shadow: Some(shadow.to_path_buf()),
            watch: true,
            ..Options::with_state(state, ADMIN)
        },
    )
}

fn report(s: &TestServer) -> Value {
    let r = get_as(s, ADMIN, "/v1/shadow");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Waits until the shadow has compared `n` decisions in all.
fn compared(s: &TestServer, n: u64) -> Value {
    let mut last = Value::Null;
    let done = common::wait_until(Duration::from_secs(20), || {
        last = report(s);
        ["same", "differs", "error", "dropped"]
            .iter()
            .map(|k| last[k].as_u64().unwrap())
            .sum::<u64>()
            >= n
    });
    assert!(done, "the shadow did not compare {n} decisions: {last}");
    last
}

fn decide_as(s: &TestServer, agent: &str, action: &str, resource: (&str, &str)) -> String {
    common::decide(s, agent, action, resource)["decision"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_shadow_reports_what_it_would_decide_otherwise_and_changes_nothing() {
    let serving = narrowed_serving();
    let state = tempfile::tempdir().unwrap();
    let s = start(serving.path(), &repo_root(), state.path());
    let root = applied(&spawn(
        &s,
        ADMIN,
        json!({"grant": r#"permit(principal == ?principal, action in [Action::"read", Action::"write"], resource in Folder::"repo");"#,
               "ttl_seconds": 3600, "ceiling": 3, "can_delegate": true, "task": "orchestrate"}),
    ));
    // Served: the serving admin policies let agents read only repo/docs.
    assert_eq!(decide_as(&s, &root.id, "read", ("File", "repo/src/payroll.rs")), "Deny");
    assert_eq!(decide_as(&s, &root.id, "read", ("File", "repo/README.md")), "Deny");
    let r = compared(&s, 2);
    assert_eq!(r["differs"], 2, "{r}");
    let d = &r["differences"][0];
    assert_eq!(d["principal"], format!("Agent::\"{}\"", root.id));
    assert_eq!(d["resource"], "File::\"repo/src/payroll.rs\"");
    assert_eq!(d["served"]["decision"], "Deny");
    assert_eq!(d["shadow"]["decision"], "Allow");
    assert_eq!(
        d["shadow"]["reasons"],
        json!(["agents-read-repo", format!("{}/policy0", root.id)])
    );
    assert_eq!(d["shadow"]["policy_version"], r["policy_version"]);
    assert_ne!(d["served"]["policy_version"], d["shadow"]["policy_version"]);
    // The shadow's Allow of a CONFIDENTIAL read raised no taint: writing INTERNAL is allowed.
    assert_eq!(decide_as(&s, &root.id, "write", ("File", "repo/src/main.rs")), "Allow");
    let r = compared(&s, 3);
    assert_eq!(r["same"], 1, "{r}");
    // A child spawned since is decided by the shadow with its whole chain: its own grant
    // (reading repo/src) still bounds it there.
    let child = applied(&spawn(
        &s,
        &root.token,
        json!({"grant": r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#,
               "ttl_seconds": 600, "ceiling": 2, "can_delegate": false, "task": "read the sources"}),
    ));
    assert_eq!(decide_as(&s, &child.id, "read", ("File", "repo/src/main.rs")), "Deny");
    assert_eq!(decide_as(&s, &child.id, "read", ("File", "repo/README.md")), "Deny");
    let r = compared(&s, 5);
    assert_eq!((r["differs"].as_u64(), r["same"].as_u64()), (Some(3), Some(2)), "{r}");
    let last = r["differences"].as_array().unwrap().last().unwrap();
    assert_eq!(last["principal"], format!("Agent::\"{}\"", child.id), "{r}");
    assert_eq!(last["resource"], "File::\"repo/src/main.rs\"", "{r}");
    // AuthZEN decisions are compared too.
    let e = s.post(
        "/access/v1/evaluation",
        &json!({"subject": {"type": "Agent", "id": root.id}, "action": {"name": "read"},
                "resource": {"type": "File", "id": "repo/src/main.rs"}}),
    );
    assert_eq!(e.json()["decision"], false, "{}", e.text());
    assert_eq!(compared(&s, 6)["differs"], 4);
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains("deputy_shadow_decisions_total{outcome=\"differs\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("deputy_shadow_decisions_total{outcome=\"same\"} 2"),
        "{metrics}"
    );
    // Nothing the shadow decided reached the audit trail.
    let audit = get_as(&s, ADMIN, "/v1/audit").json();
    assert!(
        audit["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["event"] != "taint_raised"),
        "{audit}"
    );
}

#[test]
fn the_shadow_report_is_the_admins() {
    let serving = narrowed_serving();
    let state = tempfile::tempdir().unwrap();
    let s = start(serving.path(), &repo_root(), state.path());
    assert_eq!(s.get("/v1/shadow").status, 401);
    let root = applied(&spawn(
        &s,
        ADMIN,
        json!({"grant": r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#,
               "ttl_seconds": 3600, "ceiling": 1, "can_delegate": false, "task": "read"}),
    ));
    let r = get_as(&s, &root.token, "/v1/shadow");
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "admin_only");
    // A sidecar without a shadow says so.
    let plain = TestServer::start(
        &repo_root(),
        Options::with_state(tempfile::tempdir().unwrap().path(), ADMIN),
    );
    let r = get_as(&plain, ADMIN, "/v1/shadow");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["code"], "shadow_off");
}

#[test]
fn a_broken_shadow_is_reported_and_compared_once_fixed() {
    let serving = common::copy_bundle(&repo_root());
    let shadow = common::copy_bundle(&repo_root());
    let policy = shadow.path().join("policies/agents.cedar");
    let good = std::fs::read_to_string(&policy).unwrap();
    std::fs::write(
        &policy,
        format!("{good}\npermit (principal, action == Action::\"fly\", resource);\n"),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let s = start(serving.path(), shadow.path(), state.path());
    let r = report(&s);
    assert!(r["policy_version"].is_null(), "{r}");
    assert_eq!(r["last_reload"]["outcome"], "failed", "{r}");
    assert!(
        r["last_reload"]["problems"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with("agents.cedar"),
        "{r}"
    );
    // Serving is untouched; the comparison counts what it could not do.
    assert_eq!(decide_as(&s, "coder-1", "read", ("File", "repo/src/main.rs")), "Allow");
    let r = compared(&s, 1);
    assert_eq!(r["error"], 1, "{r}");
    assert!(
        r["last_error"].as_str().unwrap().contains("no valid shadow bundle"),
        "{r}"
    );
    // Fixed (written whole and renamed into place, as git-sync and ConfigMaps do: a watcher
    // may otherwise load the file half-written): the watcher reloads it, and decisions are
    // compared again. Both copies hold the same files, so the fixed shadow has the serving
    // bundle's version.
    let staged = shadow.path().join("policies/.agents.cedar.tmp");
    std::fs::write(&staged, &good).unwrap();
    std::fs::rename(&staged, &policy).unwrap();
    let serving_version = s.version().unwrap();
    assert!(
        common::wait_until(Duration::from_secs(20), || report(&s)["policy_version"]
            == serving_version.as_str()),
        "{}",
        report(&s)
    );
    assert_eq!(decide_as(&s, "coder-1", "read", ("File", "repo/src/main.rs")), "Allow");
    let r = compared(&s, 2);
    assert_eq!(r["same"], 1, "{r}");
}

/// Attack: slow the serving bundle's reload down with the candidate. A reload through the
/// embedding API (`Running::reload`, "what SIGHUP does") loaded the shadow bundle first and the
/// serving one after it: a large candidate (here 100,000 policies) held an emergency forbid in
/// the serving bundle back for as long as the candidate took to load. The serving bundle is
/// loaded first; the shadow's load happens after it serves.
#[test]
fn a_slow_shadow_never_holds_back_the_serving_reload() {
    let serving = common::copy_bundle(&repo_root());
    let shadow = common::copy_bundle(&repo_root());
    let many: String = (0..100_000)
        .map(|i| {
            format!("@id(\"p{i}\")\npermit (principal == Human::\"h{i}\", action == Action::\"read\", resource);\n")
        })
        .collect();
    std::fs::write(shadow.path().join("policies/many.cedar"), &many).unwrap();
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(
        serving.path(),
        Options {
            shadow: Some(shadow.path().to_path_buf()),
            ..Options::with_state(state.path(), ADMIN)
        },
    );
    let before = s.version().unwrap();
    // Both change: the serving bundle gains an emergency forbid, the candidate one policy.
    let admin = serving.path().join("policies/agents.cedar");
    let mut text = std::fs::read_to_string(&admin).unwrap();
    text.push_str("\n@id(\"stop\")\nforbid (principal, action, resource);\n");
    std::fs::write(&admin, text).unwrap();
    std::fs::write(
        shadow.path().join("policies/many.cedar"),
        format!("{many}@id(\"one-more\")\npermit (principal == Human::\"x\", action == Action::\"read\", resource);\n"),
    )
    .unwrap();
    std::thread::scope(|scope| {
        let reload = scope.spawn(|| s.reload());
        let served = common::wait_until(Duration::from_secs(120), || s.version().is_some_and(|v| v != before));
        assert!(served, "the serving bundle was not reloaded");
        assert!(
            !reload.is_finished(),
            "the serving bundle served only once the candidate had loaded"
        );
        assert!(reload.join().unwrap().is_ok());
    });
    let r = report(&s);
    assert!(r["policy_version"].is_string(), "{r}");
}
