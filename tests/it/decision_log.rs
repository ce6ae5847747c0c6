//! The decision log: one JSON line per decision with its fields; masking of context fields;
//! leaving allows out; and, for deputy's agents, the chain with each hop's grant digest.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{repo_root, Options, TestServer};
use deputy::telemetry::{DecisionLogConfig, DecisionLogTarget};
use serde_json::{json, Value};

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const ADMIN: &str = "admin-token-for-decision-log-0123";

/// A bundle whose context carries personal data.
fn bundle() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |rel: &str, text: &str| {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write(
        "schema/app.cedarschema",
        r#"entity User; entity Doc;
action view appliesTo { principal: [User], resource: [Doc],
  context: { purpose: String, ssn?: String, patient?: { name: String, email: String } } };"#,
    );
    write(
        "policies/app.cedar",
        r#"@id("alice-views") permit(principal == User::"alice", action == Action::"view", resource);"#,
    );
    write(
        "entities/app.json",
        r#"[{"uid": {"type": "User", "id": "alice"}, "attrs": {}, "parents": []},
            {"uid": {"type": "User", "id": "bob"}, "attrs": {}, "parents": []},
            {"uid": {"type": "Doc", "id": "chart"}, "attrs": {}, "parents": []}]"#,
    );
    dir
}

fn start(bundle: &Path, log: &Path, mask: &[&str], drop_allows: bool) -> TestServer {
    TestServer::start(
        bundle,
        Options {
            decision_log: Some(DecisionLogConfig {
                mask: mask.iter().map(|m| (*m).to_owned()).collect(),
                drop_allows,
                ..DecisionLogConfig::new(DecisionLogTarget::File(log.to_path_buf()))
            }),
            ..Options::authorize_only()
        },
    )
}

fn view(who: &str) -> Value {
    json!({
        "principal": {"type": "User", "id": who},
        "action": {"type": "Action", "id": "view"},
        "resource": {"type": "Doc", "id": "chart"},
        "context": {"purpose": "care", "ssn": "123-45-6789", "patient": {"name": "Pat", "email": "pat@example.com"}},
    })
}

fn post_traced(s: &TestServer, path: &str, body: &Value) -> Value {
    let traceparent = format!("00-{TRACE_ID}-b7ad6b7169203331-01");
    let bytes = serde_json::to_vec(body).unwrap();
    let r = s.request(
        "POST",
        path,
        &[("Content-Type", "application/json"), ("traceparent", &traceparent)],
        Some(&bytes),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// The log's lines once every decision answered so far is written: a line is queued before its
/// decision is answered, and leaves `deputy_decision_log_queued` only once it is flushed.
fn lines(s: &TestServer, path: &PathBuf) -> Vec<Value> {
    let drained = || {
        s.get("/metrics")
            .text()
            .lines()
            .any(|l| l == "deputy_decision_log_queued 0")
    };
    assert!(
        common::wait_until(Duration::from_secs(10), drained),
        "the decision log never drained"
    );
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_decision_is_a_line_with_its_fields_and_masked_context() {
    let b = bundle();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("decisions.jsonl");
    let s = start(b.path(), &log, &["ssn", "patient.email"], false);
    let version = s.version().unwrap();

    assert_eq!(post_traced(&s, "/v1/authorize", &view("alice"))["decision"], "Allow");
    assert_eq!(post_traced(&s, "/v1/authorize", &view("bob"))["decision"], "Deny");
    let batch = post_traced(
        &s,
        "/v1/authorize/batch",
        &json!({"requests": [view("alice"), view("bob")]}),
    );
    assert_eq!(batch["responses"].as_array().unwrap().len(), 2);
    let eval = post_traced(
        &s,
        "/access/v1/evaluation",
        &json!({
            "subject": {"type": "User", "id": "alice"},
            "action": {"name": "view"},
            "resource": {"type": "Doc", "id": "chart"},
            "context": {"purpose": "care", "ssn": "ssn-987-65-4321"},
        }),
    );
    assert_eq!(eval["decision"], true);

    let got = lines(&s, &log);
    assert_eq!(got.len(), 5, "{got:#?}");
    let first = &got[0];
    assert_eq!(first["decision"], "allow");
    assert_eq!(first["api"], "authorize");
    assert_eq!(first["principal"], r#"User::"alice""#);
    assert_eq!(first["action"], r#"Action::"view""#);
    assert_eq!(first["resource"], r#"Doc::"chart""#);
    assert_eq!(first["reasons"], json!(["alice-views"]));
    assert_eq!(first["policy_version"], version.as_str());
    assert_eq!(first["trace_id"], TRACE_ID);
    assert!(!first["request_id"].as_str().unwrap().is_empty());
    assert!(
        first.get("chain").is_none(),
        "no chain for a principal that is not an agent"
    );
    let time = first["time"].as_str().unwrap();
    let b = time.as_bytes();
    assert!(
        time.len() >= 20 && b[4] == b'-' && b[10] == b'T' && b[13] == b':' && time.ends_with('Z'),
        "RFC 3339 in UTC: {time}"
    );
    assert_eq!(
        first["context"],
        json!({"purpose": "care", "ssn": "***", "patient": {"name": "Pat", "email": "***"}})
    );

    let deny = &got[1];
    assert_eq!(deny["decision"], "deny");
    assert_eq!(deny["reasons"], json!([]));
    assert_eq!(deny["principal"], r#"User::"bob""#);

    assert_eq!(got[2]["decision"], "allow");
    assert_eq!(got[3]["decision"], "deny");
    assert_eq!(got[4]["api"], "authzen");
    assert_eq!(got[4]["context"]["ssn"], "***");

    let mut ids: Vec<&str> = got.iter().map(|l| l["decision_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "decision ids are unique");
    let raw = std::fs::read_to_string(&log).unwrap();
    assert!(!raw.contains("123-45-6789") && !raw.contains("pat@example.com") && !raw.contains("ssn-987-65-4321"));
}

#[test]
fn allows_can_be_left_out() {
    let b = bundle();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("denies.jsonl");
    let s = start(b.path(), &log, &[], true);
    post_traced(&s, "/v1/authorize", &view("alice"));
    post_traced(&s, "/v1/authorize", &view("bob"));
    post_traced(&s, "/v1/authorize", &view("alice"));
    let got = lines(&s, &log);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["decision"], "deny");
    assert_eq!(got[0]["context"]["ssn"], "123-45-6789", "unmasked unless asked");
}

#[test]
fn an_agents_line_carries_its_chain_with_grant_digests() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agents.jsonl");
    let s = TestServer::start(
        &repo_root(),
        Options {
            state: Some(state.path().to_path_buf()),
            admin_token: Some(ADMIN.to_owned()),
            decision_log: Some(DecisionLogConfig::new(DecisionLogTarget::File(log.clone()))),
            ..Options::default()
        },
    );
    let spawn = |token: &str, grant: &str| {
        let bytes = serde_json::to_vec(
            &json!({"grant": grant, "ttl_seconds": 600, "ceiling": 1, "can_delegate": true, "task": "t"}),
        )
        .unwrap();
        let auth = format!("Bearer {token}");
        let r = s.request(
            "POST",
            "/v1/delegations",
            &[("Content-Type", "application/json"), ("Authorization", &auth)],
            Some(&bytes),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    };
    let root = spawn(
        ADMIN,
        r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#,
    );
    let child = spawn(
        root["credential"].as_str().unwrap(),
        r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#,
    );
    let (root_id, child_id) = (
        root["delegation_id"].as_str().unwrap(),
        child["delegation_id"].as_str().unwrap(),
    );
    let agent = |resource: &str| {
        json!({
            "principal": {"type": "Agent", "id": child_id},
            "action": {"type": "Action", "id": "read"},
            "resource": {"type": "File", "id": resource},
        })
    };
    assert_eq!(
        post_traced(&s, "/v1/authorize", &agent("repo/src/main.rs"))["decision"],
        "Allow"
    );
    assert_eq!(
        post_traced(&s, "/v1/authorize", &agent("repo/README.md"))["decision"],
        "Deny"
    );

    let got = lines(&s, &log);
    let chain = got[0]["chain"].as_array().unwrap();
    assert_eq!(chain.len(), 2, "{chain:?}");
    assert_eq!(chain[0]["agent"], root_id);
    assert_eq!(chain[1]["agent"], child_id);
    for hop in chain {
        let digest = hop["grant_digest"].as_str().unwrap();
        assert!(digest.len() >= 32, "{digest}");
    }
    assert_ne!(chain[0]["grant_digest"], chain[1]["grant_digest"]);
    assert_eq!(got[1]["decision"], "deny");
    assert_eq!(got[1]["denied_by"]["bound"], "grant", "{}", got[1]);
    assert_eq!(got[1]["denied_by"]["agent"], child_id);
}

/// `deputy serve --decision-log -` writes the lines to stdout (logs stay on stderr), with the
/// mask and drop flags from the command line.
#[test]
fn the_binary_logs_decisions_to_stdout() {
    use std::process::{Command, Stdio};

    let b = bundle();
    let state = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--no-watch",
            "--authorize-only",
        ])
        .args([
            "--decision-log",
            "-",
            "--decision-log-mask",
            "patient.name",
            "--decision-log-drop-allows",
        ])
        .arg("--state")
        .arg(state.path())
        .arg("--bundle")
        .arg(b.path())
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = common::listening_addr(&mut child);
    for who in ["alice", "bob"] {
        let body = serde_json::to_vec(&view(who)).unwrap();
        let r = common::send(
            addr,
            "POST",
            "/v1/authorize",
            &[("Content-Type", "application/json")],
            Some(&body),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {out}");
    let got: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), 1, "only the deny: {out}");
    assert_eq!(got[0]["principal"], r#"User::"bob""#);
    assert_eq!(
        got[0]["trace_id"],
        Value::Null,
        "no traceparent, no exporter: no trace id"
    );
    assert_eq!(got[0]["context"]["patient"]["name"], "***");
    assert_eq!(got[0]["context"]["ssn"], "123-45-6789");
}

/// A large batch is decided on the blocking pool; its decisions are logged and counted with
/// the request's trace id all the same.
#[test]
fn a_large_batch_off_the_async_workers_is_logged_and_counted() {
    let b = bundle();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("batch.jsonl");
    let s = start(b.path(), &log, &[], false);
    let requests: Vec<Value> = (0..40)
        .map(|i| view(if i % 2 == 0 { "alice" } else { "bob" }))
        .collect();
    let r = post_traced(&s, "/v1/authorize/batch", &json!({ "requests": requests }));
    assert_eq!(r["responses"].as_array().unwrap().len(), 40);
    let got = lines(&s, &log);
    assert_eq!(got.len(), 40);
    assert!(got.iter().all(|l| l["trace_id"] == TRACE_ID));
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains(r#"deputy_decisions_total{api="authorize",outcome="allow"} 20"#),
        "{metrics}"
    );
}

/// A policy change shows in the decision log and the metrics: after the bundle reloads, the
/// same request is decided by the new policies under the new version.
#[test]
fn a_reload_shows_as_a_new_policy_version_in_the_log_and_metrics() {
    let b = bundle();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("reload.jsonl");
    let s = TestServer::start(
        b.path(),
        Options {
            watch: true,
            poll_interval: Duration::from_millis(200),
            decision_log: Some(DecisionLogConfig::new(DecisionLogTarget::File(log.clone()))),
            ..Options::authorize_only()
        },
    );
    let before = s.version().unwrap();
    assert_eq!(post_traced(&s, "/v1/authorize", &view("bob"))["decision"], "Deny");
    std::fs::write(
        b.path().join("policies/bob.cedar"),
        r#"@id("bob-views") permit(principal == User::"bob", action == Action::"view", resource);"#,
    )
    .unwrap();
    assert!(common::wait_until(Duration::from_secs(10), || s.version().as_deref() != Some(&before)));
    let after = s.version().unwrap();
    assert_eq!(post_traced(&s, "/v1/authorize", &view("bob"))["decision"], "Allow");

    let got = lines(&s, &log);
    assert_eq!(
        (got[0]["decision"].as_str(), got[0]["policy_version"].as_str()),
        (Some("deny"), Some(before.as_str()))
    );
    assert_eq!(
        (got[1]["decision"].as_str(), got[1]["policy_version"].as_str()),
        (Some("allow"), Some(after.as_str()))
    );
    assert_eq!(got[1]["reasons"], json!(["bob-views"]));
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains(&format!(r#"deputy_bundle_info{{version="{after}"}} 1"#)),
        "{metrics}"
    );
    assert!(!metrics.contains(&format!(r#"version="{before}""#)), "{metrics}");
    let ok: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"deputy_bundle_reloads_total{outcome="ok"} "#))
        .unwrap()
        .parse()
        .unwrap();
    assert!(ok >= 2.0, "{metrics}");
}
