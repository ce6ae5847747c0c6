//! Cedar conformance: every test in `../shared/conformance/cedar` (Cedar's integration tests,
//! hand-written and a fuzzer corpus sample) is loaded as a deputy bundle from files and each of
//! its requests is decided through `POST /v1/authorize` on a real server. The decision, the
//! determining policies (`reason`) and the erring policies (`errors`) must match the file, and
//! strict validation must agree with `shouldValidate`.
//!
//! The expectations come only from the shared files, which are read in place and never edited.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::{Options, TestServer};
use deputy::bundle::{Bundle, LoadOptions};
use serde_json::{json, Value};

fn cedar_dir() -> PathBuf {
    common::conformance_dir().join("cedar")
}

/// Test JSON files: `tests/**/*.json` and `corpus-tests/*.json`, without the corpus's
/// `*.entities.json`, which are entity files named by the tests.
fn test_files(root: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if recursive {
                    walk(&path, recursive, out);
                }
            } else if name.ends_with(".json") && !name.ends_with(".entities.json") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root.join("tests"), true, &mut out);
    walk(&root.join("corpus-tests"), false, &mut out);
    out.sort();
    out
}

/// Lays out a deputy bundle in a temp dir from the files a test names (paths relative to the
/// shared cedar folder). One policy file, so deputy's `policyN` ids are the ones Cedar's
/// parser assigns.
fn build_bundle(root: &Path, test: &Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (key, sub, name) in [
        ("policies", "policies", "policies.cedar"),
        ("schema", "schema", "schema.cedarschema"),
        ("entities", "entities", "entities.json"),
    ] {
        let rel = test[key].as_str().unwrap_or_else(|| panic!("test has no `{key}` path"));
        fs::create_dir_all(dir.path().join(sub)).unwrap();
        fs::copy(root.join(rel), dir.path().join(sub).join(name))
            .unwrap_or_else(|e| panic!("cannot copy `{rel}`: {e}"));
    }
    dir
}

/// `{"__entity": {type, id}}` -> `{type, id}`; deputy's API takes the plain form.
fn unwrap_entity(v: &Value) -> Value {
    v.get("__entity").unwrap_or(v).clone()
}

fn string_set(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn problems(e: &deputy::bundle::BundleError) -> String {
    e.problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

#[derive(Default)]
struct Tally {
    tests: usize,
    /// Tests whose policies must fail strict validation (served with `skip_validation`).
    invalid_tests: usize,
    requests: usize,
    /// Requests expecting at least one erring policy.
    erring_requests: usize,
    passed: usize,
    skipped: Vec<String>,
    failures: Vec<String>,
}

#[test]
fn cedar_integration_tests_pass_through_http() {
    let root = cedar_dir();
    let files = test_files(&root);
    assert!(!files.is_empty(), "no Cedar conformance tests under {}", root.display());
    let mut tally = Tally::default();
    for file in &files {
        run_test(&root, file, &mut tally);
    }

    println!(
        "cedar conformance: {} tests ({} with `shouldValidate: false`), {} requests ({} expecting \
         errors): {} passed, {} skipped, {} failed",
        tally.tests,
        tally.invalid_tests,
        tally.requests,
        tally.erring_requests,
        tally.passed,
        tally.skipped.len(),
        tally.failures.len()
    );
    for s in &tally.skipped {
        println!("  skipped: {s}");
    }
    assert!(
        tally.failures.is_empty(),
        "{} Cedar conformance mismatches:\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
    assert_eq!(tally.passed + tally.skipped.len(), tally.requests);
}

fn run_test(root: &Path, file: &Path, tally: &mut Tally) {
    let rel = file.strip_prefix(root).unwrap_or(file).display().to_string();
    let test: Value =
        serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap_or_else(|e| panic!("{rel}: not JSON: {e}"));
    let requests = test["requests"].as_array().cloned().unwrap_or_default();
    tally.tests += 1;
    tally.requests += requests.len();
    tally.erring_requests += requests.iter().filter(|r| !string_set(&r["errors"]).is_empty()).count();
    let should_validate = test["shouldValidate"]
        .as_bool()
        .unwrap_or_else(|| panic!("{rel}: no `shouldValidate`"));
    tally.invalid_tests += usize::from(!should_validate);
    let bundle = build_bundle(root, &test);

    let strict = Bundle::load(
        bundle.path(),
        &LoadOptions {
            validate: true,
            require_agent_model: false,
        },
    );
    match (&strict, should_validate) {
        (Ok(_), false) => tally
            .failures
            .push(format!("{rel}: strict validation passed but `shouldValidate` is false")),
        (Err(e), true) => tally.failures.push(format!(
            "{rel}: strict validation failed but `shouldValidate` is true: {}",
            problems(e)
        )),
        _ => {}
    }
    // The rest of the bundle (schema, policy syntax, entities) must load either way; otherwise
    // the server would start not-ready and every request would fail for an unrelated reason.
    if let Err(e) = Bundle::load(
        bundle.path(),
        &LoadOptions {
            validate: false,
            require_agent_model: false,
        },
    ) {
        tally.failures.push(format!(
            "{rel}: bundle does not load even without validation: {}",
            problems(&e)
        ));
        return;
    }

    // deputy never serves a bundle whose policies fail strict validation, except with
    // --skip-validation, which exists for exactly this: Cedar's `shouldValidate: false` tests
    // still define the decisions an unvalidated policy set gives.
    let server = TestServer::start(
        bundle.path(),
        Options {
            skip_validation: !should_validate,
            ..Options::authorize_only()
        },
    );
    for (i, req) in requests.iter().enumerate() {
        let description = req["description"]
            .as_str()
            .map_or_else(|| format!("request {i}"), str::to_owned);
        let at = format!("{rel}: {description:?}");
        match check_request(&server, req) {
            Outcome::Passed => tally.passed += 1,
            Outcome::Skipped(why) => tally.skipped.push(format!("{at}: {why}")),
            Outcome::Failed(why) => tally.failures.push(format!("{at}: {why}")),
        }
    }
}

enum Outcome {
    Passed,
    Skipped(String),
    Failed(String),
}

fn check_request(server: &TestServer, req: &Value) -> Outcome {
    let mut body = json!({
        "principal": unwrap_entity(&req["principal"]),
        "action": unwrap_entity(&req["action"]),
        "resource": unwrap_entity(&req["resource"]),
    });
    if let Some(context) = req.get("context") {
        body["context"] = context.clone();
    }
    let resp = server.post("/v1/authorize", &body);
    let validate_request = req["validateRequest"].as_bool().unwrap_or(true);
    if resp.status == 400 && !validate_request {
        // deputy always validates requests against the schema; Cedar's runner skips that here.
        return Outcome::Skipped(format!(
            "`validateRequest: false` and deputy validates every request against the schema: {}",
            resp.text()
        ));
    }
    if resp.status != 200 {
        return Outcome::Failed(format!("status {}: {}", resp.status, resp.text()));
    }
    let got = resp.json();
    let mut problems = Vec::new();

    let want_decision = match req["decision"].as_str() {
        Some("allow") => "Allow",
        Some("deny") => "Deny",
        other => return Outcome::Failed(format!("unknown expected decision {other:?}")),
    };
    if got["decision"] != want_decision {
        problems.push(format!("decision {} (want {want_decision})", got["decision"]));
    }
    let want_reasons = string_set(&req["reason"]);
    let got_reasons = string_set(&got["reasons"]);
    if got_reasons != want_reasons {
        problems.push(format!("reasons {got_reasons:?} (want {want_reasons:?})"));
    }
    let want_errors = string_set(&req["errors"]);
    let got_errors: BTreeSet<String> = got["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["policy"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if got_errors != want_errors {
        problems.push(format!("errors {got_errors:?} (want {want_errors:?}); response {got}"));
    }

    if problems.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Failed(problems.join("; "))
    }
}
