//! Hostile input that broke the sidecar: grant text nested deep enough to overflow a thread's
//! stack — Cedar's parser (`cst_to_ast` recurses once per level of parentheses, brackets, braces
//! or `if`), and deputy's prover and Cedar's printer on long arithmetic or attribute chains —
//! sent by an agent in a spawn or a permission request. The overflow aborts the whole
//! process — every decision for every agent of the pod — so it is run against the real binary:
//! the process must still be serving after each attempt.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{repo_root, Resp};
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-hostile-input-0123";
const DEPUTY: &str = env!("CARGO_BIN_EXE_deputy");

struct Sidecar {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn start(state: &std::path::Path) -> Sidecar {
        Sidecar::start_on(state, &repo_root(), &["--no-watch"])
    }

    /// `deputy serve` on `bundle` with `args` added.
    fn start_on(state: &std::path::Path, bundle: &std::path::Path, args: &[&str]) -> Sidecar {
        let mut child = Command::new(DEPUTY)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .arg("--state")
            .arg(state)
            .arg("--bundle")
            .arg(bundle)
            .env("DEPUTY_ADMIN_TOKEN", ADMIN)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let addr = common::listening_addr(&mut child);
        Sidecar { child, addr }
    }

    /// A POST with a bearer token; `None` when the connection closed without an answer.
    fn post(&self, token: &str, path: &str, body: &Value) -> Option<Resp> {
        let bytes = serde_json::to_vec(body).unwrap();
        let auth = format!("Bearer {token}");
        let addr = self.addr;
        let path = path.to_owned();
        std::thread::spawn(move || {
            common::send(
                addr,
                "POST",
                &path,
                &[("Content-Type", "application/json"), ("Authorization", &auth)],
                Some(&bytes),
            )
        })
        .join()
        .ok()
    }

    /// The process has not exited and answers `/healthz`.
    fn alive(&mut self) -> bool {
        if self.child.try_wait().unwrap().is_some() {
            return false;
        }
        let addr = self.addr;
        std::thread::spawn(move || common::send(addr, "GET", "/healthz", &[], None).status == 200)
            .join()
            .unwrap_or(false)
    }
}

fn agent(r: &Resp) -> (String, String) {
    assert_eq!(r.status, 201, "{}", r.text());
    let b = r.json();
    (
        b["delegation_id"].as_str().unwrap().to_owned(),
        b["credential"].as_str().unwrap().to_owned(),
    )
}

/// A grant for `read` in the repo whose condition is `cond`.
fn grant(cond: &str) -> String {
    format!(
        r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo") when {{ {cond} }};"#
    )
}

/// Conditions nested `n` deep in each of the ways Cedar's parser recurses (brackets, `if`), and
/// chains `n` long that parse flat but make an expression tree `n` deep, which deputy's prover
/// and Cedar's printer walk recursively (arithmetic, attribute access).
fn nested(n: usize) -> Vec<(&'static str, String)> {
    vec![
        ("parentheses", format!("{}true{}", "(".repeat(n), ")".repeat(n))),
        ("sets", format!("{}{} == []", "[".repeat(n), "]".repeat(n))),
        ("records", format!("{}1{} == {{}}", "{a: ".repeat(n), "}".repeat(n))),
        (
            "if",
            format!("{}true{}", "if true then ".repeat(n), " else false".repeat(n)),
        ),
        (
            "calls",
            format!("{}context{}", "[".repeat(n), "].contains(1)".repeat(n)),
        ),
        ("sums", format!("resource.classification{} > 0", " + 1".repeat(n))),
        ("products", format!("resource.classification{} > 0", " * 1".repeat(n))),
        ("attributes", format!("context{} == 1", ".a".repeat(n))),
    ]
}

/// No grant text, however deeply nested, takes the sidecar down: a spawn or a permission
/// request nested a few hundred deep is refused as `400 grant_invalid` and the process keeps
/// serving; a grant nested as deep as real grants are (a few levels) is still applied.
#[test]
fn deeply_nested_grant_text_is_refused_and_never_crashes_the_sidecar() {
    let state = tempfile::tempdir().unwrap();
    let mut s = Sidecar::start(state.path());
    let root = s
        .post(
            ADMIN,
            "/v1/delegations",
            &json!({"grant": grant("true"), "ttl_seconds": 3600, "ceiling": 2, "can_delegate": true, "task": "t"}),
        )
        .unwrap();
    let (_, root_token) = agent(&root);
    let kid = s
        .post(
            &root_token,
            "/v1/delegations",
            &json!({"grant": grant("true"), "ttl_seconds": 600, "ceiling": 1, "can_delegate": false, "task": "t"}),
        )
        .unwrap();
    let (_, kid_token) = agent(&kid);

    for (how, cond) in nested(4) {
        let r = s
            .post(
                &root_token,
                "/v1/delegations",
                &json!({"grant": grant(&cond), "ttl_seconds": 60, "ceiling": 1, "task": how}),
            )
            .unwrap();
        assert!(
            r.status == 201 || r.json()["code"] == "grant_invalid",
            "{how}, nested 4 deep: {}",
            r.text()
        );
    }
    let shallow = s
        .post(
            &root_token,
            "/v1/delegations",
            &json!({"grant": grant("((((true))))"), "ttl_seconds": 60, "ceiling": 1, "task": "shallow"}),
        )
        .unwrap();
    assert_eq!(shallow.status, 201, "{}", shallow.text());

    for depth in [300, 7000] {
        for (how, cond) in nested(depth) {
            let text = grant(&cond);
            let attempts = [
                (
                    root_token.as_str(),
                    "/v1/delegations",
                    json!({"grant": text, "ttl_seconds": 60, "ceiling": 1, "task": how}),
                ),
                (
                    kid_token.as_str(),
                    "/v1/permission-requests",
                    json!({"grant": text, "reason": how}),
                ),
            ];
            for (token, path, body) in attempts {
                let r = s.post(token, path, &body);
                assert!(
                    s.alive(),
                    "{how} nested {depth} deep, sent to {path}, took the sidecar down"
                );
                let r = r.expect("the sidecar answered nothing");
                // Refused: as too deep, or (the longest texts) as larger than a grant may be.
                let code = r.json()["code"].clone();
                assert!(
                    (r.status == 400 && code == "grant_invalid") || (r.status == 413 && code == "grant_too_large"),
                    "{how} {depth} {path}: {}",
                    r.text()
                );
            }
        }
    }
    // Still serving decisions after all of it.
    let mut d = Value::Null;
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            let addr = s.addr;
            d = common::send(
                addr,
                "POST",
                "/v1/authorize",
                &[("Content-Type", "application/json")],
                Some(
                    json!({"principal": {"type": "Human", "id": "alice"}, "action": {"type": "Action", "id": "read"},
                       "resource": {"type": "File", "id": "repo/README.md"}})
                    .to_string()
                    .as_bytes(),
                ),
            )
            .json();
            d["decision"] == "Allow"
        }),
        "{d}"
    );
}

/// A bundle policy or schema nested a few hundred deep (a careless or generated bundle) is a
/// failed reload like any other: the sidecar keeps serving the last good bundle, and says why.
#[test]
fn a_bundle_policy_nested_too_deep_fails_its_reload_and_the_last_good_bundle_serves() {
    let state = tempfile::tempdir().unwrap();
    let bundle = common::copy_bundle(&repo_root());
    let mut s = Sidecar::start_on(state.path(), bundle.path(), &["--poll-interval-secs", "1"]);
    let get = |addr: SocketAddr, path: &str| {
        let path = path.to_owned();
        std::thread::spawn(move || common::send(addr, "GET", &path, &[], None).json())
            .join()
            .ok()
    };
    let before = get(s.addr, "/v1/status").unwrap()["bundle"]["policy_version"].clone();
    let policy = |cond: String| format!("permit(principal is Human, action, resource) when {{ {cond} }};\n");
    for (dir, name, text) in [
        (
            "policies",
            "deep.cedar",
            policy(format!("{}true{}", "(".repeat(300), ")".repeat(300))),
        ),
        (
            "policies",
            "long.cedar",
            policy(format!("1{} > 0", " + 1".repeat(30_000))),
        ),
        (
            "schema",
            "deep.cedarschema",
            format!("type Deep = {}Long{};\n", "{a: ".repeat(2000), "}".repeat(2000)),
        ),
    ] {
        std::fs::write(bundle.path().join(dir).join(name), text).unwrap();
        let mut status = None;
        let failed = common::wait_until(Duration::from_secs(20), || {
            if !s.alive() {
                return true;
            }
            status = get(s.addr, "/v1/status");
            status.as_ref().is_some_and(|v| {
                v["last_reload"]["outcome"] == "failed" && v["last_reload"]["problems"].to_string().contains(name)
            })
        });
        assert!(s.alive(), "reloading {name} took the sidecar down");
        assert!(failed, "{name}: the reload did not fail: {status:?}");
        let status = status.unwrap();
        assert_eq!(status["bundle"]["policy_version"], before, "{status}");
        std::fs::remove_file(bundle.path().join(dir).join(name)).unwrap();
    }
}
