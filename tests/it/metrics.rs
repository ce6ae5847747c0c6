//! `GET /metrics` after real traffic, parsed with a Prometheus text-format parser.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::{delete_as, post_as, repo_root, Options, TestServer};
use prometheus_parse::{Sample, Scrape, Value as PromValue};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-metrics-0123456789";
const ROOT_GRANT: &str = r#"
permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");
permit(principal == ?principal, action == Action::"write", resource in Folder::"repo/src");
"#;
const READ_SRC: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo/src");"#;
const WRITE_ALL: &str = r#"permit(principal == ?principal, action == Action::"write", resource in Folder::"repo");"#;

fn authz(p: &str, a: &str, r: (&str, &str)) -> Value {
    json!({
        "principal": {"type": "Agent", "id": p},
        "action": {"type": "Action", "id": a},
        "resource": {"type": r.0, "id": r.1},
    })
}

fn scrape(s: &TestServer) -> Vec<Sample> {
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        r.header("content-type")
    );
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap().samples
}

/// The value of the sample `name` whose labels include all of `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect();
    assert_eq!(found.len(), 1, "one `{name}` {labels:?} among {samples:#?}");
    match &found[0].value {
        PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => *v,
        other => panic!("`{name}` is not a number: {other:?}"),
    }
}

#[test]
fn metrics_count_decisions_delegations_proofs_and_reloads() {
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(&repo_root(), Options::with_state(state.path(), ADMIN));
    let version = s.version().unwrap();

    // Before any traffic: the bundle is serving, nothing is counted yet; every decision series
    // exists from the start (at zero), so rate() sees its first increase.
    let before = scrape(&s);
    assert_eq!(value(&before, "deputy_bundle_ready", &[]), 1.0);
    assert_eq!(value(&before, "deputy_agents_live", &[]), 0.0);
    for api in ["authorize", "authzen", "mcp"] {
        for outcome in ["allow", "deny", "error"] {
            let labels = [("api", api), ("outcome", outcome)];
            assert_eq!(
                value(&before, "deputy_decisions_total", &labels),
                0.0,
                "{api} {outcome}"
            );
        }
    }

    // Decisions: 2 allows, 1 deny, 1 error on /v1/authorize; 1 allow through AuthZEN.
    for (req, want) in [
        (authz("coder-1", "read", ("File", "repo/src/main.rs")), "Allow"),
        (authz("coder-1", "read", ("File", "repo/README.md")), "Allow"),
        (authz("coder-1", "read", ("File", "repo/src/payroll.rs")), "Deny"),
    ] {
        let r = s.post("/v1/authorize", &req);
        assert_eq!(r.json()["decision"], want, "{}", r.text());
    }
    let mut bad = authz("coder-1", "read", ("File", "repo/src/main.rs"));
    bad["context"] = json!({"taint": "high"});
    assert_eq!(s.post("/v1/authorize", &bad).status, 400);
    let r = s.post(
        "/access/v1/evaluation",
        &json!({
            "subject": {"type": "Agent", "id": "coder-1"},
            "action": {"name": "read"},
            "resource": {"type": "File", "id": "repo/src/main.rs"},
        }),
    );
    assert_eq!(r.json()["decision"], true, "{}", r.text());

    // Delegations: a root and a child applied, one child rejected by the proof, one pending.
    let spawn = |token: &str, grant: &str, ttl: i64| {
        post_as(
            &s,
            token,
            "/v1/delegations",
            &json!({"grant": grant, "ttl_seconds": ttl, "ceiling": 1, "can_delegate": true, "task": "t", "reason": "r"}),
        )
    };
    let r = spawn(ADMIN, ROOT_GRANT, 3 * 86400);
    assert_eq!(r.status, 201, "{}", r.text());
    let root_token = r.json()["credential"].as_str().unwrap().to_owned();
    let r = spawn(&root_token, READ_SRC, 600);
    assert_eq!(r.status, 201, "{}", r.text());
    let child = r.json()["delegation_id"].as_str().unwrap().to_owned();
    assert_eq!(spawn(&root_token, WRITE_ALL, 600).status, 403);
    assert_eq!(spawn(&root_token, READ_SRC, 2 * 86400).status, 202);
    // And revoked: the child (no descendants).
    let r = delete_as(&s, &root_token, &format!("/v1/delegations/{child}"));
    assert_eq!(r.status, 200, "{}", r.text());

    let m = scrape(&s);
    let decisions = "deputy_decisions_total";
    assert_eq!(value(&m, decisions, &[("api", "authorize"), ("outcome", "allow")]), 2.0);
    assert_eq!(value(&m, decisions, &[("api", "authorize"), ("outcome", "deny")]), 1.0);
    assert_eq!(value(&m, decisions, &[("api", "authorize"), ("outcome", "error")]), 1.0);
    assert_eq!(value(&m, decisions, &[("api", "authzen"), ("outcome", "allow")]), 1.0);
    let latency = "deputy_decision_duration_seconds_count";
    assert_eq!(value(&m, latency, &[("api", "authorize")]), 4.0);
    assert_eq!(value(&m, latency, &[("api", "authzen")]), 1.0);
    let buckets = m
        .iter()
        .find(|x| x.metric == "deputy_decision_duration_seconds" && x.labels.get("api") == Some("authorize"))
        .unwrap();
    match &buckets.value {
        PromValue::Histogram(b) => assert_eq!(b.last().unwrap().count, 4.0, "+Inf holds every decision"),
        other => panic!("not a histogram: {other:?}"),
    }

    assert_eq!(value(&m, "deputy_delegations_total", &[("outcome", "applied")]), 2.0);
    assert_eq!(value(&m, "deputy_delegations_total", &[("outcome", "rejected")]), 1.0);
    assert_eq!(value(&m, "deputy_delegations_total", &[("outcome", "pending")]), 1.0);
    // The root needs no proof; the other three children were proved.
    assert_eq!(value(&m, "deputy_proofs_total", &[("verdict", "within")]), 2.0);
    assert_eq!(value(&m, "deputy_proofs_total", &[("verdict", "exceeds")]), 1.0);
    assert_eq!(value(&m, "deputy_proof_duration_seconds_count", &[]), 3.0);
    assert_eq!(value(&m, "deputy_revocations_total", &[("reason", "revoked")]), 1.0);
    assert_eq!(value(&m, "deputy_agents_live", &[]), 1.0);

    assert_eq!(value(&m, "deputy_bundle_reloads_total", &[("outcome", "ok")]), 1.0);
    assert_eq!(value(&m, "deputy_bundle_reloads_total", &[("outcome", "failed")]), 0.0);
    assert_eq!(value(&m, "deputy_bundle_info", &[("version", &version)]), 1.0);
    assert_eq!(value(&m, "deputy_decision_log_dropped_total", &[]), 0.0);
}

#[test]
fn a_failed_reload_is_counted_and_the_old_version_keeps_serving() {
    let bundle = common::copy_bundle(&repo_root());
    let s = TestServer::start(
        bundle.path(),
        Options {
            watch: true,
            poll_interval: std::time::Duration::from_millis(200),
            ..Options::authorize_only()
        },
    );
    let version = s.version().unwrap();
    std::fs::write(bundle.path().join("policies/broken.cedar"), "permit(principal, action,").unwrap();
    assert!(common::wait_until(std::time::Duration::from_secs(10), || {
        value(&scrape(&s), "deputy_bundle_reloads_total", &[("outcome", "failed")]) == 1.0
    }));
    let m = scrape(&s);
    assert_eq!(value(&m, "deputy_bundle_info", &[("version", &version)]), 1.0);
    assert_eq!(s.request("POST", "/metrics", &[], None).status, 405);
}

#[test]
fn permission_requests_are_counted_by_event() {
    let state = tempfile::tempdir().unwrap();
    let s = TestServer::start(&repo_root(), Options::with_state(state.path(), ADMIN));
    let create = |token: &str, grant: &str, can_delegate: bool| {
        let r = post_as(
            &s,
            token,
            "/v1/delegations",
            &json!({"grant": grant, "ttl_seconds": 600, "ceiling": 1, "can_delegate": can_delegate, "task": "t"}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["credential"].as_str().unwrap().to_owned()
    };
    let root = create(ADMIN, ROOT_GRANT, true);
    let child = create(&root, READ_SRC, false);
    let readme = r#"permit(principal == ?principal, action == Action::"read", resource == File::"repo/README.md");"#;
    let ask = |token: &str| {
        let r = post_as(
            &s,
            token,
            "/v1/permission-requests",
            &json!({"grant": readme, "reason": "docs"}),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["request_id"].as_str().unwrap().to_owned()
    };
    let first = ask(&child);
    let r = post_as(
        &s,
        &root,
        &format!("/v1/permission-requests/{first}"),
        &json!({"decision": "approve", "reason": "fine"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let second = ask(&child);
    let r = delete_as(&s, &child, &format!("/v1/permission-requests/{second}"));
    assert_eq!(r.status, 200, "{}", r.text());

    let m = scrape(&s);
    let events = "deputy_permission_requests_total";
    assert_eq!(value(&m, events, &[("event", "opened")]), 2.0);
    assert_eq!(value(&m, events, &[("event", "approved")]), 1.0);
    assert_eq!(value(&m, events, &[("event", "withdrawn")]), 1.0);
    assert!(value(&m, "deputy_proof_duration_seconds_count", &[]) >= 2.0);
}
