//! A state directory written by the deputy released before versioned migrations
//! (`tests/fixtures/state-v0`, made by `make.sh` there with that release's binary) opens under
//! this one: it is migrated to the current schema version, its agents, grants, approvals,
//! revocations and taint are all there, its audit trail still verifies, and new records chain on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::process::{Command, Stdio};

use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-the-state-fixture";

fn user_version(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
}

fn audit_verify(state: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args(["audit", "verify", "--state"])
        .arg(state)
        .output()
        .unwrap()
}

#[test]
fn a_state_directory_written_before_migrations_opens_and_keeps_everything() {
    let fixture = common::repo_root().join("tests/fixtures/state-v0/deputy.sqlite3");
    let state = tempfile::tempdir().unwrap();
    let db = state.path().join("deputy.sqlite3");
    std::fs::copy(&fixture, &db).unwrap();
    assert_eq!(user_version(&db), 0, "the fixture predates versioned migrations");
    // The agents expire some weeks after the fixture was made: decide at the time it was made.
    let made_at: i64 = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT max(created_at) FROM agents", [], |r| r.get(0))
            .unwrap()
    };
    let clock = state.path().join("clock");
    std::fs::write(&clock, (made_at + 60).to_string()).unwrap();
    let out = audit_verify(state.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let mut child = Command::new(env!("CARGO_BIN_EXE_deputy"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--no-watch",
            "--bundle",
        ])
        .arg(common::repo_root())
        .arg("--state")
        .arg(state.path())
        .env("DEPUTY_ADMIN_TOKEN", ADMIN)
        .env("DEPUTY_TEST_CLOCK", &clock)
        .env("DEPUTY_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = common::listening_addr(&mut child);
    let get = |path: &str| {
        let auth = format!("Bearer {ADMIN}");
        common::send(addr, "GET", path, &[("Authorization", &auth)], None).json()
    };
    let decide = |agent: &str, action: &str, file: &str| -> Value {
        let body = serde_json::to_vec(&json!({
            "principal": {"type": "Agent", "id": agent}, "action": {"type": "Action", "id": action},
            "resource": {"type": "File", "id": file}}))
        .unwrap();
        common::send(
            addr,
            "POST",
            "/v1/authorize",
            &[("Content-Type", "application/json")],
            Some(&body),
        )
        .json()
    };

    // Everything the old deputy recorded is there.
    let root = get("/v1/delegations/fixture-root");
    assert_eq!(
        (root["status"].clone(), root["taint"].clone()),
        (json!("live"), json!(2)),
        "{root}"
    );
    let kid = get("/v1/delegations/fixture-child");
    assert_eq!(kid["status"], "live", "{kid}");
    assert!(
        kid["grant"].as_str().unwrap().contains("repo/README.md"),
        "the approval's extension: {kid}"
    );
    assert_eq!(get("/v1/delegations/fixture-gone")["status"], "revoked");
    assert_eq!(decide("fixture-child", "read", "repo/src/main.rs")["decision"], "Allow");
    assert_eq!(decide("fixture-child", "read", "repo/README.md")["decision"], "Allow");
    let d = decide("fixture-root", "write", "repo/src/main.rs");
    assert_eq!(d["denied_by"]["bound"], "taint", "the root read CONFIDENTIAL: {d}");
    assert_eq!(
        decide("fixture-gone", "read", "repo/docs/x")["denied_by"]["bound"],
        "revoked"
    );

    // New changes chain on to the old trail.
    let body = serde_json::to_vec(&json!({
        "grant": "permit(principal == ?principal, action == Action::\"read\", resource in Folder::\"repo\");",
        "ttl_seconds": 600, "ceiling": 1, "task": "after the upgrade"}))
    .unwrap();
    let auth = format!("Bearer {ADMIN}");
    let r = common::send(
        addr,
        "POST",
        "/v1/delegations",
        &[("Content-Type", "application/json"), ("Authorization", &auth)],
        Some(&body),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(user_version(&db), 3, "migrated to the current schema");
    let out = audit_verify(state.path());
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_state_directory_from_a_newer_deputy_is_refused_not_misread() {
    let state = tempfile::tempdir().unwrap();
    let db = state.path().join("deputy.sqlite3");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let out = audit_verify(state.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schema"), "{err}");
}
