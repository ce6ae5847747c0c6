//! The sidecar core end to end: the example bundle over real HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use common::{repo_root, Options, TestServer};
use serde_json::json;

fn example() -> TestServer {
    TestServer::start(&repo_root(), Options::default())
}

fn authz(p: (&str, &str), a: &str, r: (&str, &str)) -> serde_json::Value {
    json!({
        "principal": {"type": p.0, "id": p.1},
        "action": {"type": "Action", "id": a},
        "resource": {"type": r.0, "id": r.1},
    })
}

#[test]
fn example_bundle_allows_and_denies_with_reasons() {
    let s = example();
    let r = s.post(
        "/v1/authorize",
        &authz(("Agent", "coder-1"), "read", ("File", "repo/src/main.rs")),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["decision"], "Allow");
    assert_eq!(body["reasons"], json!(["agents-read-repo"]));
    assert_eq!(body["policy_version"].as_str(), s.version().as_deref());

    // coder-1's ceiling is 1; payroll.rs is CONFIDENTIAL (2).
    let r = s.post(
        "/v1/authorize",
        &authz(("Agent", "coder-1"), "read", ("File", "repo/src/payroll.rs")),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["decision"], "Deny");
    assert_eq!(r.json()["reasons"], json!(["ceiling"]));

    // Nothing permits an agent to write outside repo/src: deny with no reasons.
    let r = s.post(
        "/v1/authorize",
        &authz(("Agent", "orchestrator"), "write", ("Folder", "repo/docs")),
    );
    assert_eq!(r.json()["decision"], "Deny");
    assert_eq!(r.json()["reasons"], json!([]));
}

#[test]
fn context_is_checked_against_the_schema() {
    let s = example();
    let mut req = authz(("Agent", "orchestrator"), "write", ("File", "repo/src/main.rs"));
    req["context"] = json!({"taint": 2});
    let r = s.post("/v1/authorize", &req);
    assert_eq!(r.json()["decision"], "Allow", "{}", r.text());

    req["context"] = json!({"taint": "high"});
    let r = s.post("/v1/authorize", &req);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "invalid_context");

    req["context"] = json!({"surprise": 1});
    let r = s.post("/v1/authorize", &req);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "invalid_context");
    assert!(
        r.json()["message"].as_str().unwrap().contains("surprise"),
        "{}",
        r.text()
    );
}

#[test]
fn delegation_rules_are_plain_cedar() {
    let s = example();
    let ctx = |depth: i64, ttl: i64, ceiling: i64, taint: i64| json!({"depth": depth, "ttl_seconds": ttl, "ceiling": ceiling, "taint": taint, "task": "run tests"});
    let mut req = authz(("Agent", "orchestrator"), "delegate", ("Agent", "child"));
    req["context"] = ctx(1, 3600, 1, 0);
    assert_eq!(s.post("/v1/authorize", &req).json()["decision"], "Allow");

    req["principal"]["id"] = json!("coder-1");
    let r = s.post("/v1/authorize", &req).json();
    assert_eq!(r["decision"], "Deny");
    assert_eq!(r["reasons"], json!(["role-locked"]));

    req["principal"]["id"] = json!("orchestrator");
    req["context"] = ctx(4, 3600, 1, 0);
    assert_eq!(s.post("/v1/authorize", &req).json()["reasons"], json!(["max-depth"]));
    req["context"] = ctx(1, 3600, 1, 2);
    assert_eq!(
        s.post("/v1/authorize", &req).json()["reasons"],
        json!(["taint-within-ceiling"])
    );
}

#[test]
fn batch_answers_each_item_and_reports_bad_items_in_place() {
    let s = example();
    let body = json!({"requests": [
        authz(("Agent", "coder-1"), "read", ("File", "repo/README.md")),
        authz(("Agent", "coder-1"), "frobnicate", ("File", "repo/README.md")),
        authz(("Agent", "coder-1"), "write", ("File", "repo/README.md")),
    ]});
    let r = s.post("/v1/authorize/batch", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let responses = r.json()["responses"].as_array().unwrap().clone();
    assert_eq!(responses.len(), 3);
    assert_eq!(responses[0]["decision"], "Allow");
    assert_eq!(responses[1]["decision"], "Deny");
    assert_eq!(responses[1]["error"]["code"], "unknown_action");
    assert_eq!(responses[2]["decision"], "Deny");
}

#[test]
fn health_readiness_and_status() {
    let s = example();
    assert_eq!(s.get("/healthz").status, 200);
    let r = s.get("/readyz");
    assert_eq!(r.status, 200);
    let status = s.get("/v1/status").json();
    assert_eq!(status["ready"], true);
    assert_eq!(status["last_reload"]["outcome"], "loaded");
    assert!(status["bundle"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "policies/agents.cedar"));
}

#[test]
fn request_id_is_echoed_or_generated() {
    let s = example();
    let body = serde_json::to_vec(&authz(("Agent", "coder-1"), "read", ("File", "repo/README.md"))).unwrap();
    let r = s.request(
        "POST",
        "/v1/authorize",
        &[("Content-Type", "application/json"), ("X-Request-ID", "abc-123")],
        Some(&body),
    );
    assert_eq!(r.header("x-request-id"), Some("abc-123"));
    let r = s.post_raw("/v1/authorize", Some("application/json"), &body);
    assert!(r.header("x-request-id").is_some_and(|v| v.len() >= 16));
}

#[test]
fn an_invalid_bundle_at_start_serves_not_ready_and_denies() {
    let dir = common::copy_bundle(&repo_root());
    std::fs::write(
        dir.path().join("policies/broken.cedar"),
        "permit(principal, action, resource) when {",
    )
    .unwrap();
    let s = TestServer::start(dir.path(), Options::default());
    assert_eq!(s.get("/healthz").status, 200);
    let r = s.get("/readyz");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "no_bundle");
    let r = s.post(
        "/v1/authorize",
        &authz(("Agent", "coder-1"), "read", ("File", "repo/README.md")),
    );
    assert_eq!(r.status, 503);
    let status = s.get("/v1/status").json();
    assert_eq!(status["ready"], false);
    assert_eq!(status["last_reload"]["outcome"], "failed");
    assert_eq!(status["last_reload"]["problems"][0]["file"], "policies/broken.cedar");
    assert_eq!(status["last_reload"]["problems"][0]["line"], 1);
}

/// The public embedding API: `Sidecar` serves what `deputy serve` serves, and `Decider` decides
/// exactly as the sidecar does, on the same bundle.
#[test]
fn the_embedding_api_serves_and_decides_like_the_sidecar() {
    let state = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let running = rt
        .block_on(
            deputy::Sidecar::new(repo_root())
                .listen("127.0.0.1:0".parse().unwrap())
                .state_dir(state.path())
                .admin_token("embedded-admin-token-0123456789")
                .no_watch()
                .start(),
        )
        .unwrap();
    let addr = running.addr();
    let bundle = deputy::Bundle::load(&repo_root(), &deputy::LoadOptions::default()).unwrap();
    let decider = deputy::Decider::new(bundle);
    for (p, a, r) in [
        (("Agent", "coder-1"), "read", ("File", "repo/src/main.rs")),
        (("Agent", "coder-1"), "read", ("File", "repo/src/payroll.rs")),
        (("Agent", "nobody"), "read", ("File", "repo/src/main.rs")),
        (
            ("Agent", "orchestrator"),
            "use_credential",
            ("Credential", "github-token"),
        ),
    ] {
        let body = authz(p, a, r);
        let served = common::send(
            addr,
            "POST",
            "/v1/authorize",
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
        .json();
        let decided = decider.decide(&body).unwrap();
        assert_eq!(served["decision"] == "Allow", decided.allow, "{body}: {served}");
        assert_eq!(served["reasons"], json!(decided.reasons), "{body}");
    }
    // A request the schema refuses is the same error both ways.
    let bad = authz(("Agent", "coder-1"), "fly", ("File", "x"));
    let served = common::send(
        addr,
        "POST",
        "/v1/authorize",
        &[("Content-Type", "application/json")],
        Some(bad.to_string().as_bytes()),
    )
    .json();
    let err = decider.decide(&bad).unwrap_err();
    assert_eq!(served["code"], err.code.as_str(), "{served}");
    // The admin credential given to the builder is the one the API takes.
    let audit = common::send(
        addr,
        "GET",
        "/v1/audit",
        &[("Authorization", "Bearer embedded-admin-token-0123456789")],
        None,
    );
    assert_eq!(audit.status, 200, "{}", audit.text());
    let outcome = rt.block_on(async {
        tokio::task::spawn_blocking(move || {
            let r = running.reload();
            (r.map_err(|e| e.to_string()), running)
        })
        .await
        .unwrap()
    });
    assert_eq!(outcome.0.unwrap(), deputy::ReloadOutcome::Unchanged);
    rt.block_on(outcome.1.stop());
    assert!(!still_serves_audit(addr), "still serving after stop");
}

/// Whether something on `addr` answers the embedded sidecar's audit call with 200. A refused
/// connection alone is not the test: on a busy machine the freed port may be taken by another
/// test's listener, or a connect may meet itself (a TCP self-connect on a port nobody holds),
/// and neither of those knows the embedded admin token.
fn still_serves_audit(addr: std::net::SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let request = "GET /v1/audit HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer embedded-admin-token-0123456789\r\nConnection: close\r\n\r\n";
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}
