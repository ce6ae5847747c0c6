//! `deputy test` and `deputy plan` (docs/GITOPS.md), run as the binary a CI job would run, on
//! copies of the example bundle changed the way a pull request would change them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cedar_policy::{Authorizer, Context, Entities, EntityUid, PolicySet, Request};
use serde_json::{json, Value};

use crate::common::{self, repo_root};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

fn deputy(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of the example bundle (schema, policies, entities and its cases) under `dir/name`.
fn bundle_copy(dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    for sub in ["schema", "policies", "entities", "policy-tests"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for f in std::fs::read_dir(repo_root().join(sub)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, to.join(sub).join(f.file_name().unwrap())).unwrap();
        }
    }
    to
}

/// coder-1's grant in the cases below: reading its sources only.
const READ_SRC: &str =
    "permit (principal == ?principal, action == Action::\"read\", resource in Folder::\"repo/src\");\n";

/// Ships `grant` for `agent` in bundle `b` (`grants/<agent>.cedar`).
fn ship_grant(b: &Path, agent: &str, grant: &str) {
    std::fs::create_dir_all(b.join("grants")).unwrap();
    std::fs::write(b.join(format!("grants/{agent}.cedar")), grant).unwrap();
}

fn append(path: &Path, text: &str) {
    let mut s = std::fs::read_to_string(path).unwrap();
    s.push_str(text);
    std::fs::write(path, s).unwrap();
}

#[test]
fn the_example_bundle_passes_its_own_cases() {
    let r = deputy(&["test", "--bundle", s(&repo_root())]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let cases = std::fs::read_to_string(repo_root().join("policy-tests/agents.json")).unwrap();
    let n = serde_json::from_str::<Value>(&cases).unwrap()["cases"]
        .as_array()
        .unwrap()
        .len();
    assert!(r.stdout.contains(&format!("{n} passed, 0 failed")), "{}", r.stdout);
    let j = deputy(&["test", "--bundle", s(&repo_root()), "--json"]).json();
    assert_eq!(j["passed"], n);
    assert_eq!(
        j["cases"][1]["answer"],
        json!({"decision": "Deny", "reasons": ["ceiling"], "errors": []})
    );
}

#[test]
fn a_failing_case_names_its_file_index_and_both_answers() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payroll.json");
    let case = |expect: Value, reasons: Option<Value>| {
        let mut c = json!({"name": "payroll", "principal": {"type": "Agent", "id": "coder-1"},
            "action": {"type": "Action", "id": "read"}, "resource": {"type": "File", "id": "repo/src/payroll.rs"},
            "expect": expect});
        if let Some(r) = reasons {
            c["reasons"] = r;
        }
        c
    };
    let write = |cases: Vec<Value>| std::fs::write(&file, json!({"cases": cases}).to_string()).unwrap();
    write(vec![case(json!("Deny"), None), case(json!("Allow"), None)]);
    let r = deputy(&["test", "--bundle", s(&repo_root()), s(&file)]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let line = format!(
        "FAIL {}#1 (payroll): expected Allow, got Deny by [ceiling]",
        file.display()
    );
    assert!(r.stdout.contains(&line), "{}", r.stdout);
    assert!(r.stdout.contains("1 passed, 1 failed"), "{}", r.stdout);
    // The right decision for the wrong reason fails too; reasons compare as a set.
    write(vec![case(json!("Deny"), Some(json!(["agents-read-repo"])))]);
    assert_eq!(deputy(&["test", "--bundle", s(&repo_root()), s(&file)]).code, 1);
    write(vec![case(json!("Deny"), Some(json!(["ceiling", "ceiling"])))]);
    assert_eq!(deputy(&["test", "--bundle", s(&repo_root()), s(&file)]).code, 0);
    // An expected error is a code; a decision where an error was expected fails.
    write(vec![case(json!({"error": "unknown_action"}), None)]);
    let r = deputy(&["test", "--bundle", s(&repo_root()), s(&file)]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("expected error `unknown_action`, got Deny"),
        "{}",
        r.stdout
    );
}

#[test]
fn bad_case_files_and_bundles_are_bad_input_naming_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("typo.json");
    // A misspelt `expect` must not make a case that checks nothing.
    std::fs::write(
        &file,
        r#"{"cases": [{"principal": {"type": "Agent", "id": "coder-1"}, "action": {"type": "Action", "id": "read"},
        "resource": {"type": "File", "id": "repo/src/main.rs"}, "expected": "Allow"}]}"#,
    )
    .unwrap();
    let r = deputy(&["test", "--bundle", s(&repo_root()), s(&file)]);
    assert_eq!(r.code, 64, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("typo.json") && r.stderr.contains("`expected`"),
        "{}",
        r.stderr
    );
    std::fs::write(&file, r#"{"cases": [{"principal": 1, "#).unwrap();
    let r = deputy(&["test", "--bundle", s(&repo_root()), s(&file)]);
    assert_eq!(r.code, 64);
    assert!(
        r.stderr.contains("typo.json") && r.stderr.contains("line 1"),
        "{}",
        r.stderr
    );
    // No cases at all is an error, not a pass.
    let empty = tempfile::tempdir().unwrap();
    let r = deputy(&["test", "--bundle", s(&repo_root()), s(empty.path())]);
    assert_eq!(r.code, 64, "{}", r.stdout);
    // An invalid bundle: every problem with its file and line.
    let b = bundle_copy(dir.path(), "broken");
    append(
        &b.join("policies/agents.cedar"),
        "\npermit (principal, action == Action::\"fly\", resource);\n",
    );
    let r = deputy(&["test", "--bundle", s(&b)]);
    assert_eq!(r.code, 64);
    assert!(r.stderr.contains("policies/agents.cedar:"), "{}", r.stderr);
}

/// Decides `request` (a counterexample's principal, action, resource, context and added
/// entities) with Cedar's own authorizer over `bundle`'s policies and entities.
fn cedar_allows(bundle: &Path, cx: &Value) -> bool {
    // The agent model only adds checks at load: the policies and entities are the same.
    let opts = deputy::LoadOptions {
        require_agent_model: false,
        ..deputy::LoadOptions::default()
    };
    let b = deputy::Bundle::load(bundle, &opts).unwrap();
    let extra = Entities::from_json_value(cx["entities"].clone(), Some(&b.schema)).unwrap();
    let entities: Entities =
        Entities::from_entities(b.entities.iter().cloned().chain(extra.iter().cloned()), None).unwrap();
    let uid = |f: &str| cx[f].as_str().unwrap().parse::<EntityUid>().unwrap();
    let action = uid("action");
    let context = Context::from_json_value(cx["context"].clone(), Some((&b.schema, &action))).unwrap();
    let request = Request::new(uid("principal"), action, uid("resource"), context, Some(&b.schema)).unwrap();
    let policies: PolicySet = b.policies.clone();
    Authorizer::new()
        .is_authorized(&request, &policies, &entities)
        .decision()
        == cedar_policy::Decision::Allow
}

#[test]
fn a_plan_proves_what_a_change_widens_and_shows_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let old = bundle_copy(dir.path(), "old");
    let new = bundle_copy(dir.path(), "new");
    append(
        &new.join("policies/agents.cedar"),
        "\n@id(\"agents-write-repo\")\npermit (principal is Agent, action == Action::\"write\", resource in Folder::\"repo\");\n",
    );
    let r = deputy(&["plan", "--from", s(&old), "--to", s(&new)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("policies: added [agents-write-repo]"), "{}", r.stdout);
    assert!(r.stdout.contains("authority widens: YES"), "{}", r.stdout);
    assert!(
        r.stdout.contains("`agents-write-repo` (policies/agents.cedar:"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("authority narrows: no (proved)"), "{}", r.stdout);
    // The request shown is real: Cedar allows it on the new bundle and denies it on the old.
    let j = deputy(&["plan", "--from", s(&old), "--to", s(&new), "--json"]).json();
    assert_eq!(j["authority"]["widens"]["answer"], "yes", "{j}");
    let cx = &j["authority"]["widens"]["request"];
    assert_eq!(cx["action"], "Action::\"write\"");
    assert!(cedar_allows(&new, cx), "{cx}");
    assert!(!cedar_allows(&old, cx), "{cx}");
    // A CI gate fails on it, and passes the reverse change, which only narrows.
    assert_eq!(
        deputy(&["plan", "--from", s(&old), "--to", s(&new), "--deny-widening"]).code,
        1
    );
    let back = deputy(&["plan", "--from", s(&new), "--to", s(&old), "--deny-widening", "--json"]);
    assert_eq!(back.code, 0, "{}{}", back.stdout, back.stderr);
    let j = back.json();
    assert_eq!(j["authority"]["widens"]["answer"], "no");
    assert_eq!(j["authority"]["narrows"]["answer"], "yes");
    assert_eq!(j["policies"]["removed"], json!(["agents-write-repo"]));
}

#[test]
fn a_rewritten_policy_that_allows_the_same_is_proved_not_to_widen() {
    let dir = tempfile::tempdir().unwrap();
    let old = bundle_copy(dir.path(), "old");
    let new = bundle_copy(dir.path(), "new");
    // The same authority in another shape: one permit split in two, and a comment.
    let path = new.join("policies/agents.cedar");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "@id(\"agents-read-repo\")\npermit (principal is Agent, action == Action::\"read\", resource in Folder::\"repo\");",
        "// split for review\n@id(\"agents-read-repo\")\npermit (principal is Agent, action == Action::\"read\", resource in Folder::\"repo\")\n  when { resource.classification <= 1 };\n@id(\"agents-read-repo-high\")\npermit (principal is Agent, action == Action::\"read\", resource in Folder::\"repo\")\n  when { resource.classification > 1 };",
    );
    std::fs::write(&path, text).unwrap();
    let r = deputy(&["plan", "--from", s(&old), "--to", s(&new), "--deny-widening", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["policies"]["changed"], json!(["agents-read-repo"]), "{j}");
    assert_eq!(j["policies"]["added"], json!(["agents-read-repo-high"]), "{j}");
    assert_eq!(j["authority"]["widens"]["answer"], "no", "{j}");
    assert_eq!(j["authority"]["narrows"]["answer"], "no", "{j}");
    assert_eq!(j["cases"], json!([]), "{j}");
}

#[test]
fn when_the_entities_or_schema_change_a_plan_does_not_claim_a_proof() {
    let dir = tempfile::tempdir().unwrap();
    let old = bundle_copy(dir.path(), "old");
    let new = bundle_copy(dir.path(), "new");
    // No policy changes, but an agent's ceiling rises: the same text now allows more.
    let path = new.join("entities/agents.json");
    let mut agents: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let coder = agents
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|e| e["uid"]["id"] == "coder-1")
        .unwrap();
    coder["attrs"]["ceiling"] = json!(3);
    std::fs::write(&path, agents.to_string()).unwrap();
    let r = deputy(&["plan", "--from", s(&old), "--to", s(&new), "--json"]);
    // The example's cases catch it: the ceiling case now answers Allow.
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["entities"]["changed"], json!(["Agent::\"coder-1\""]), "{j}");
    assert_eq!(j["policies"], json!({"added": [], "removed": [], "changed": []}));
    assert_eq!(j["authority"]["widens"]["answer"], "unknown", "{j}");
    assert!(
        j["authority"]["widens"]["why"]
            .as_str()
            .unwrap()
            .starts_with("the entities changed"),
        "{j}"
    );
    let flipped = j["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| !c["passes"].as_bool().unwrap())
        .unwrap();
    assert_eq!(flipped["before"]["decision"], "Deny");
    assert_eq!(flipped["after"]["decision"], "Allow");
    // A schema edit alone is not proved either (an action group could have grown).
    let new2 = bundle_copy(dir.path(), "new2");
    append(&new2.join("schema/deputy.cedarschema"), "\n// reviewed\n");
    let r = deputy(&["plan", "--from", s(&old), "--to", s(&new2), "--deny-widening", "--json"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.json()["schema_changed"], true);
    assert_eq!(r.json()["authority"]["widens"]["answer"], "unknown");
}

#[test]
fn a_shipped_grant_that_grows_is_shown_per_agent() {
    let dir = tempfile::tempdir().unwrap();
    let old = bundle_copy(dir.path(), "old");
    let new = bundle_copy(dir.path(), "new");
    let read = "permit (principal == ?principal, action == Action::\"read\", resource in Folder::\"repo/src\");\n";
    let write = "permit (principal == ?principal, action == Action::\"write\", resource in Folder::\"repo/src\");\n";
    for (b, text) in [(&old, read.to_owned()), (&new, format!("{read}{write}"))] {
        // The example's cases are about coder-1 under the admin policies alone.
        std::fs::remove_dir_all(b.join("policy-tests")).unwrap();
        ship_grant(b, "coder-1", &text);
    }
    let r = deputy(&["plan", "--from", s(&old), "--to", s(&new), "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["authority"]["widens"]["answer"], "no", "{j}");
    assert_eq!(j["grants"][0]["agent"], "coder-1", "{j}");
    assert_eq!(j["grants"][0]["change"], "changed");
    assert_eq!(j["grants"][0]["widens"]["answer"], "yes", "{j}");
    assert_eq!(j["grants"][0]["widens"]["request"]["action"], "Action::\"write\"");
    assert_eq!(
        deputy(&["plan", "--from", s(&old), "--to", s(&new), "--deny-widening"]).code,
        1
    );
    // The reverse only narrows the grant.
    let r = deputy(&["plan", "--from", s(&new), "--to", s(&old), "--deny-widening", "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.json()["grants"][0]["widens"]["answer"], "no");
}

#[test]
fn cases_decide_a_bundle_agent_under_its_shipped_grant_as_the_sidecar_does() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle_copy(dir.path(), "b");
    ship_grant(&b, "coder-1", READ_SRC);
    // The admin maximum lets every agent read the whole repo; coder-1's grant only its sources.
    let requests = [
        ("read", ("File", "repo/src/main.rs")),
        ("read", ("File", "repo/README.md")),
        ("write", ("File", "repo/src/main.rs")),
    ];
    let state = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(
        &b,
        common::Options::with_state(state.path(), "gitops-admin-token-0123456789"),
    );
    let mut cases = Vec::new();
    for (action, resource) in requests {
        let served = common::decide(&server, "coder-1", action, resource);
        cases.push(json!({
            "principal": {"type": "Agent", "id": "coder-1"}, "action": {"type": "Action", "id": action},
            "resource": {"type": resource.0, "id": resource.1}, "expect": served["decision"], "reasons": served["reasons"],
        }));
    }
    let decisions: Vec<&Value> = cases.iter().map(|c| &c["expect"]).collect();
    assert_eq!(
        decisions,
        [&json!("Allow"), &json!("Deny"), &json!("Deny")],
        "{cases:?}"
    );
    let file = dir.path().join("served.json");
    std::fs::write(&file, json!({"cases": cases}).to_string()).unwrap();
    let r = deputy(&["test", "--bundle", s(&b), s(&file)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Without the grant the same cases fail: the admin policies alone allow the README.
    std::fs::remove_file(b.join("grants/coder-1.cedar")).unwrap();
    let r = deputy(&["test", "--bundle", s(&b), s(&file)]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("#1: expected Deny by [], got Allow by [agents-read-repo]"),
        "{}",
        r.stdout
    );
}

/// The prover bounds a child by its parent's forbids (a delegation's semantics); a plan compares
/// bundles that replace each other. A removed or weakened forbid must show the request it used to
/// deny; a forbid rewritten to deny the same must be proved harmless.
#[test]
fn a_removed_or_weakened_forbid_shows_what_it_denied_and_a_rewritten_one_is_proved() {
    let dir = tempfile::tempdir().unwrap();
    let old = bundle_copy(dir.path(), "old");
    let cut = |name: &str, replace: &str| {
        let b = bundle_copy(dir.path(), name);
        std::fs::remove_dir_all(b.join("policy-tests")).unwrap();
        let path = b.join("policies/agents.cedar");
        let text = std::fs::read_to_string(&path).unwrap();
        let (from, to) = (
            text.find("@id(\"ceiling\")").unwrap(),
            text.find("// No data laundering").unwrap(),
        );
        std::fs::write(&path, format!("{}{replace}{}", &text[..from], &text[to..])).unwrap();
        b
    };
    let removed = cut("removed", "");
    // Denies less: only CONFIDENTIAL and above, above the ceiling.
    let weakened = cut(
        "weakened",
        "@id(\"ceiling\")\nforbid (principal is Agent, action, resource is File)\n  when { resource.classification > principal.ceiling && resource.classification >= 2 };\n\n",
    );
    for new in [&removed, &weakened] {
        let r = deputy(&["plan", "--from", s(&old), "--to", s(new), "--deny-widening", "--json"]);
        assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
        let j = r.json();
        assert_eq!(j["authority"]["widens"]["answer"], "yes", "{j}");
        let cx = &j["authority"]["widens"]["request"];
        assert!(
            cx["denied_by"][0]
                .as_str()
                .unwrap()
                .starts_with("`ceiling` (policies/agents.cedar:"),
            "{cx}"
        );
        assert!(cedar_allows(new, cx), "{cx}");
        assert!(!cedar_allows(&old, cx), "{cx}");
        // The other way it only narrows, and that is proved.
        let r = deputy(&["plan", "--from", s(new), "--to", s(&old), "--deny-widening", "--json"]);
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert_eq!(r.json()["authority"]["widens"]["answer"], "no", "{}", r.stdout);
        assert_eq!(r.json()["authority"]["narrows"]["answer"], "yes", "{}", r.stdout);
    }
    // The same forbid cut in two halves denies the same: proved both ways.
    let split = cut(
        "split",
        "@id(\"ceiling-low\")\nforbid (principal is Agent, action in [Action::\"read\", Action::\"write\", Action::\"invoke\", Action::\"use_credential\", Action::\"send_message\"], resource)\n  when { resource.classification > principal.ceiling && resource.classification < 2 };\n\
@id(\"ceiling-high\")\nforbid (principal is Agent, action in [Action::\"read\", Action::\"write\", Action::\"invoke\", Action::\"use_credential\", Action::\"send_message\"], resource)\n  when { resource.classification > principal.ceiling && resource.classification >= 2 };\n\n",
    );
    let r = deputy(&[
        "plan",
        "--from",
        s(&old),
        "--to",
        s(&split),
        "--deny-widening",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["policies"]["removed"], json!(["ceiling"]), "{j}");
    assert_eq!(j["authority"]["widens"]["answer"], "no", "{j}");
    assert_eq!(j["authority"]["narrows"]["answer"], "no", "{j}");
    // A shipped grant's dropped forbid is not restated: unknown, naming it.
    let g_old = bundle_copy(dir.path(), "g_old");
    let g_new = bundle_copy(dir.path(), "g_new");
    let permit = "permit (principal == ?principal, action == Action::\"read\", resource in Folder::\"repo\");\n";
    let forbid = "@id(\"no-secrets\")\nforbid (principal == ?principal, action == Action::\"read\", resource in Folder::\"repo/secrets\");\n";
    for (b, text) in [(&g_old, format!("{permit}{forbid}")), (&g_new, permit.to_owned())] {
        std::fs::remove_dir_all(b.join("policy-tests")).unwrap();
        ship_grant(b, "coder-1", &text);
    }
    let r = deputy(&[
        "plan",
        "--from",
        s(&g_old),
        "--to",
        s(&g_new),
        "--deny-widening",
        "--json",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let w = &r.json()["grants"][0]["widens"];
    assert_eq!(w["answer"], "unknown", "{w}");
    assert!(w["why"].as_str().unwrap().contains("`no-secrets`"), "{w}");
}

/// `@ask("…")` on a forbid is the difference between reject and "ask a human": adding it may
/// widen what a delegation can reach; removing it only narrows.
#[test]
fn a_forbid_that_gains_an_ask_is_not_proved_harmless_and_one_that_loses_it_narrows() {
    let dir = tempfile::tempdir().unwrap();
    let asked = bundle_copy(dir.path(), "asked");
    let hard = bundle_copy(dir.path(), "hard");
    let path = hard.join("policies/delegation.cedar");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("@ask(\"human\")\n"));
    std::fs::write(&path, text.replace("@ask(\"human\")\n", "")).unwrap();
    // asked -> hard: the long-lived spawn that asked is now rejected. Only narrows.
    let r = deputy(&[
        "plan",
        "--from",
        s(&asked),
        "--to",
        s(&hard),
        "--deny-widening",
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let j = r.json();
    assert_eq!(j["policies"]["changed"], json!(["long-lived-needs-approval"]), "{j}");
    assert_eq!(j["authority"]["widens"]["answer"], "no", "{j}");
    assert_eq!(j["authority"]["narrows"]["answer"], "unknown", "{j}");
    // hard -> asked: what was rejected may now be approved. Not proved harmless.
    let r = deputy(&[
        "plan",
        "--from",
        s(&hard),
        "--to",
        s(&asked),
        "--deny-widening",
        "--json",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let why = r.json()["authority"]["widens"]["why"].as_str().unwrap().to_owned();
    assert!(
        why.contains("`long-lived-needs-approval` (policies/delegation.cedar:"),
        "{why}"
    );
}

/// `serve --authorize-only` opens no delegation state, so it installs no bundle agents: a shipped
/// grant does not bound its agent there, the admin policies alone decide. `deputy test
/// --authorize-only` must decide the same way.
#[test]
fn cases_under_authorize_only_ignore_shipped_grants_as_the_sidecar_does() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle_copy(dir.path(), "b");
    ship_grant(&b, "coder-1", READ_SRC);
    let server = common::TestServer::start(&b, common::Options::authorize_only());
    let served = common::decide(&server, "coder-1", "read", ("File", "repo/README.md"));
    // The admin maximum lets every agent read the whole repo; the grant is not installed.
    assert_eq!(served["decision"], "Allow", "{served}");
    let case = json!({
        "principal": {"type": "Agent", "id": "coder-1"}, "action": {"type": "Action", "id": "read"},
        "resource": {"type": "File", "id": "repo/README.md"}, "expect": served["decision"], "reasons": served["reasons"],
    });
    let file = dir.path().join("served.json");
    std::fs::write(&file, json!({"cases": [case]}).to_string()).unwrap();
    let r = deputy(&["test", "--authorize-only", "--bundle", s(&b), s(&file)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
}

/// A bundle change that drops an agent's shipped grant revokes that agent in every sidecar that
/// served the old bundle, while a fresh sidecar (a new pod, empty state) decides the agent by
/// the admin policies alone: it may widen. `deputy plan` answers cases as a fresh sidecar, says
/// both, and `--deny-widening` fails the change.
#[test]
fn a_removed_shipped_grant_may_widen_and_fails_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let old = bundle_copy(dir.path(), "old");
    let new = bundle_copy(dir.path(), "new");
    for b in [&old, &new] {
        std::fs::remove_dir_all(b.join("policy-tests")).unwrap();
    }
    ship_grant(&old, "coder-1", READ_SRC);
    // A sidecar serves the old bundle, then the change lands (the grant file goes): revoked.
    let served = bundle_copy(dir.path(), "served");
    std::fs::remove_dir_all(served.join("policy-tests")).unwrap();
    common::copy_dir(&old.join("grants"), &served.join("grants"));
    let state = tempfile::tempdir().unwrap();
    let server = common::TestServer::start(
        &served,
        common::Options::with_state(state.path(), "gitops-admin-token-0123456789"),
    );
    let readme = ("File", "repo/README.md");
    assert_eq!(common::decide(&server, "coder-1", "read", readme)["decision"], "Deny");
    std::fs::remove_dir_all(served.join("grants")).unwrap();
    server.reload().unwrap();
    let running = common::decide(&server, "coder-1", "read", readme);
    assert_eq!(running["decision"], "Deny", "{running}");
    // A fresh sidecar on the new bundle: the admin maximum.
    let fresh_state = tempfile::tempdir().unwrap();
    let fresh = common::TestServer::start(
        &new,
        common::Options::with_state(fresh_state.path(), "gitops-admin-token-0123456789"),
    );
    let fresh = common::decide(&fresh, "coder-1", "read", readme);
    assert_eq!(fresh["decision"], "Allow", "{fresh}");
    let case = json!({
        "principal": {"type": "Agent", "id": "coder-1"}, "action": {"type": "Action", "id": "read"},
        "resource": {"type": "File", "id": "repo/README.md"}, "expect": fresh["decision"], "reasons": fresh["reasons"],
    });
    let file = dir.path().join("fresh.json");
    std::fs::write(&file, json!({"cases": [case]}).to_string()).unwrap();
    let r = deputy(&["plan", "--from", s(&old), "--to", s(&new), s(&file)]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("grant of `coder-1`: removed, may widen: a running sidecar revokes the agent"),
        "{}",
        r.stdout
    );
    let r = deputy(&[
        "plan",
        "--from",
        s(&old),
        "--to",
        s(&new),
        s(&file),
        "--deny-widening",
        "--json",
    ]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.json()["grants"][0]["change"], "removed");
}

/// The sidecar refuses a body nested deeper than `--max-json-depth` (32 by default) with
/// `json_too_deep` before reading it; a case whose context nests that deep must get the same
/// answer from `deputy test`.
#[test]
fn a_case_nested_deeper_than_the_sidecar_reads_is_refused_as_the_sidecar_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle_copy(dir.path(), "b");
    let mut context = json!({"taint": 0});
    for _ in 0..40 {
        context = json!({"x": context});
    }
    let request = json!({
        "principal": {"type": "Human", "id": "alice"}, "action": {"type": "Action", "id": "read"},
        "resource": {"type": "File", "id": "repo/README.md"}, "context": context,
    });
    refused_alike(dir.path(), &b, request, "json_too_deep");
}

/// `request` is refused by a sidecar on bundle `b` with `code`, and a case expecting that error
/// passes `deputy test`.
fn refused_alike(dir: &Path, b: &Path, request: Value, code: &str) {
    let server = common::TestServer::start(b, common::Options::default());
    let body = server.post("/v1/authorize", &request).json();
    assert_eq!(
        body["code"],
        code,
        "{}",
        &body.to_string()[..body.to_string().len().min(2000)]
    );
    let mut case = request;
    case["expect"] = json!({"error": code});
    let file = dir.join("served.json");
    std::fs::write(&file, json!({"cases": [case]}).to_string()).unwrap();
    let r = deputy(&["test", "--bundle", s(b), s(&file)]);
    assert_eq!(r.code, 0, "{}{}", &r.stdout[..r.stdout.len().min(2000)], r.stderr);
}

/// A differential check of `plan`'s proofs: random admin policy sets over a small schema and
/// store, each compared with a mutation of itself; whenever `plan` answers `no` (proved), no
/// request of a small enumerated world (stored and new principals and resources, a missing one,
/// each context) may be allowed by Cedar on one side and denied on the other.
#[test]
fn a_proved_plan_agrees_with_cedar_on_an_enumerated_world() {
    const SCHEMA: &str = "entity G;\nentity U in [G] = { lvl: Long };\nentity R = { c: Long };\n\
        type Ctx = { flag?: Bool };\naction act appliesTo { principal: [U], resource: [R], context: Ctx };\n";
    const STORE: &str = r#"[{"uid":{"type":"G","id":"g"},"attrs":{},"parents":[]},
        {"uid":{"type":"U","id":"a"},"attrs":{"lvl":1},"parents":[{"type":"G","id":"g"}]},
        {"uid":{"type":"R","id":"r"},"attrs":{"c":2},"parents":[]}]"#;
    let atoms = [
        "resource.c > 0",
        "resource.c > 1",
        "resource.c > 2",
        "resource.c == 2",
        "principal.lvl <= resource.c",
        "principal.lvl < resource.c",
        "principal.lvl == 1",
        "principal.lvl > 2",
        "principal in G::\"g\"",
        "principal == U::\"a\"",
        "resource == R::\"r\"",
        "context has flag && context.flag",
        "context has flag",
    ];
    let mut seed: u64 = 0x5eed_1234_abcd;
    let mut next = move |n: usize| {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((seed >> 33) as usize) % n
    };
    let cond = |next: &mut dyn FnMut(usize) -> usize| {
        let a = atoms[next(atoms.len())];
        match next(5) {
            0 => format!("!({a})"),
            1 => format!("({a}) && ({})", atoms[next(atoms.len())]),
            2 => format!("({a}) || ({})", atoms[next(atoms.len())]),
            _ => a.to_owned(),
        }
    };
    let policy = |next: &mut dyn FnMut(usize) -> usize, forbid: bool| {
        let effect = if forbid { "forbid" } else { "permit" };
        let clause = if next(4) == 0 { "unless" } else { "when" };
        format!("{effect}(principal, action, resource) {clause} {{ {} }};", cond(next))
    };
    // The world: principals and resources stored, new (with attributes) or missing.
    let mut principals: Vec<(String, Value)> = vec![("U::\"a\"".into(), json!([])), ("U::\"z\"".into(), json!([]))];
    for lvl in 0..4 {
        for parents in [json!([]), json!([{"type": "G", "id": "g"}])] {
            let e = json!([{"uid": {"type": "U", "id": "n"}, "attrs": {"lvl": lvl}, "parents": parents}]);
            principals.push(("U::\"n\"".into(), e));
        }
    }
    let mut resources: Vec<(String, Value)> = vec![("R::\"r\"".into(), json!([])), ("R::\"y\"".into(), json!([]))];
    for c in 0..4 {
        resources.push((
            "R::\"m\"".into(),
            json!([{"uid": {"type": "R", "id": "m"}, "attrs": {"c": c}, "parents": []}]),
        ));
    }
    let contexts = [json!({}), json!({"flag": true}), json!({"flag": false})];
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, policies: &[String]| {
        let b = dir.path().join(name);
        for sub in ["schema", "policies", "entities"] {
            std::fs::create_dir_all(b.join(sub)).unwrap();
        }
        std::fs::write(b.join("schema/s.cedarschema"), SCHEMA).unwrap();
        std::fs::write(b.join("entities/e.json"), STORE).unwrap();
        std::fs::write(b.join("policies/p.cedar"), policies.join("\n")).unwrap();
        b
    };
    let mut proved = 0;
    for round in 0..60 {
        let mut old: Vec<String> = (0..1 + next(3)).map(|_| policy(&mut next, false)).collect();
        old.extend((0..next(3)).map(|_| policy(&mut next, true)));
        let mut new = old.clone();
        match next(3) {
            0 if new.len() > 1 => {
                new.remove(next(new.len()));
            }
            1 => {
                let i = next(new.len());
                new[i] = policy(&mut next, new[i].starts_with("forbid"));
            }
            _ => {
                let forbid = next(2) == 0;
                new.push(policy(&mut next, forbid));
            }
        }
        let (o, n) = (write(&format!("o{round}"), &old), write(&format!("n{round}"), &new));
        let r = deputy(&["plan", "--authorize-only", "--from", s(&o), "--to", s(&n), "--json"]);
        assert!(r.code == 0, "{}{}", r.stdout, r.stderr);
        let j = r.json();
        for (dir_name, allowing, denying) in [("widens", &n, &o), ("narrows", &o, &n)] {
            if j["authority"][dir_name]["answer"] != "no" {
                continue;
            }
            proved += 1;
            for (p, pe) in &principals {
                for (res, re) in &resources {
                    for ctx in &contexts {
                        let mut entities = pe.as_array().unwrap().clone();
                        entities.extend(re.as_array().unwrap().iter().cloned());
                        let cx = json!({"principal": p, "action": "Action::\"act\"", "resource": res,
                            "context": ctx, "entities": entities});
                        assert!(
                            !cedar_allows(allowing, &cx) || cedar_allows(denying, &cx),
                            "plan proved `{dir_name}: no`, but Cedar allows {cx} on one side only\nold:\n{}\nnew:\n{}",
                            old.join("\n"),
                            new.join("\n")
                        );
                    }
                }
            }
        }
    }
    assert!(proved >= 20, "only {proved} proofs: the check is too weak");
}

/// The sidecar refuses a body larger than `--max-body-bytes` (1 MiB by default) with
/// `body_too_large` before reading it; a case whose request is larger even written compactly
/// must get the same answer from `deputy test`.
#[test]
fn a_case_larger_than_the_sidecar_reads_is_refused_as_the_sidecar_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = bundle_copy(dir.path(), "b");
    let request = json!({
        "principal": {"type": "Human", "id": "alice"}, "action": {"type": "Action", "id": "read"},
        "resource": {"type": "File", "id": "repo/README.md"}, "context": {"note": "x".repeat(2 * 1024 * 1024)},
    });
    refused_alike(dir.path(), &b, request, "body_too_large");
}

/// `plan --state DIR` installs the new bundle on a copy of a pod's state with the sidecar's own
/// code: a live grant that no longer proves within its parent's is drift, an identity the new
/// bundle takes from a managed agent refuses the install (exit 1), a removed shipped grant
/// revokes its agent. The pod's state itself is only read, while its sidecar runs.
#[test]
fn a_plan_with_a_pods_state_shows_drift_refusals_and_revocations() {
    let dir = tempfile::tempdir().unwrap();
    let old = bundle_copy(dir.path(), "old");
    std::fs::remove_dir_all(old.join("policy-tests")).unwrap();
    ship_grant(&old, "coder-1", READ_SRC);
    let state = tempfile::tempdir().unwrap();
    const ADMIN: &str = "gitops-admin-token-0123456789";
    let server = common::TestServer::start(&old, common::Options::with_state(state.path(), ADMIN));
    let root = common::applied(&common::spawn(
        &server,
        ADMIN,
        json!({"grant": r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#,
               "ttl_seconds": 3600, "ceiling": 2, "can_delegate": true, "task": "orchestrate"}),
    ));
    let child = common::applied(&common::spawn(
        &server,
        &root.token,
        json!({"grant": r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#,
               "ttl_seconds": 600, "ceiling": 1, "can_delegate": false, "task": "read the sources"}),
    ));
    let audit = || {
        common::get_as(&server, ADMIN, "/v1/audit").json()["records"]
            .as_array()
            .unwrap()
            .len()
    };
    let audit_before = audit();

    // 1. repo/src leaves repo: the child's grant no longer proves within its parent's.
    let moved = bundle_copy(dir.path(), "moved");
    std::fs::remove_dir_all(moved.join("policy-tests")).unwrap();
    common::copy_dir(&old.join("grants"), &moved.join("grants"));
    let path = moved.join("entities/resources.json");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        r#""id": "repo/src" }, "attrs": { "classification": 1 }, "parents": [{ "type": "Folder", "id": "repo" }]"#,
        r#""id": "repo/src" }, "attrs": { "classification": 1 }, "parents": []"#,
    );
    std::fs::write(&path, text).unwrap();
    let st = state.path().to_str().unwrap();
    let r = deputy(&["plan", "--from", s(&old), "--to", s(&moved), "--state", st, "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let live = &r.json()["live"];
    assert_eq!(live["live_agents"], 3, "{live}");
    assert_eq!(live["refused"], json!([]), "{live}");
    assert_eq!(live["drift"][0]["agent"], child.id.as_str(), "{live}");
    assert_eq!(live["drift"][0]["parent"], root.id.as_str(), "{live}");
    assert_eq!(live["drift"][0]["verdict"], "exceeds", "{live}");
    let text = deputy(&["plan", "--from", s(&old), "--to", s(&moved), "--state", st]).stdout;
    assert!(
        text.contains(&format!(
            "drift: `{}` no longer proves within `{}` (exceeds)",
            child.id, root.id
        )),
        "{text}"
    );

    // 2. The new bundle declares an agent with the root's id: the sidecar would refuse it.
    let taken = bundle_copy(dir.path(), "taken");
    std::fs::remove_dir_all(taken.join("policy-tests")).unwrap();
    common::copy_dir(&old.join("grants"), &taken.join("grants"));
    let path = taken.join("entities/agents.json");
    let mut agents: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    agents.as_array_mut().unwrap().push(
        json!({"uid": {"type": "Agent", "id": root.id}, "attrs": {"can_delegate": true, "ceiling": 3, "depth": 0}, "parents": []}),
    );
    std::fs::write(&path, agents.to_string()).unwrap();
    let r = deputy(&["plan", "--from", s(&old), "--to", s(&taken), "--state", st, "--json"]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        r.json()["live"]["refused"][0]["code"],
        "agent_id_conflict",
        "{}",
        r.stdout
    );

    // 3. The shipped grant goes: coder-1 is revoked.
    let dropped = bundle_copy(dir.path(), "dropped");
    std::fs::remove_dir_all(dropped.join("policy-tests")).unwrap();
    let r = deputy(&["plan", "--from", s(&old), "--to", s(&dropped), "--state", st, "--json"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let events = r.json()["live"]["events"].clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "revoked" && e["agent"] == "coder-1"),
        "{events}"
    );

    // The pod's state was only read: nothing reached its audit trail (the plans revoked coder-1
    // and replaced grants in their copies), and the running sidecar serves its agents as before.
    assert_eq!(audit(), audit_before);
    assert_eq!(
        common::decide(&server, &child.id, "read", ("File", "repo/src/main.rs"))["decision"],
        "Allow"
    );
    assert_eq!(
        common::decide(&server, "coder-1", "read", ("File", "repo/src/main.rs"))["decision"],
        "Allow"
    );
    // No state there: bad input.
    let empty = tempfile::tempdir().unwrap();
    let r = deputy(&[
        "plan",
        "--from",
        s(&old),
        "--to",
        s(&old),
        "--state",
        empty.path().to_str().unwrap(),
    ]);
    assert_eq!(r.code, 64, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("no state database"), "{}", r.stderr);
}
