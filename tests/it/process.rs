//! The real binary as a process: tamper detection by `deputy audit verify`, and crash safety
//! under `kill -9` during bursts of delegations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::repo_root;
use serde_json::{json, Value};

const ADMIN: &str = "admin-token-for-process-tests-0123";
const DEPUTY: &str = env!("CARGO_BIN_EXE_deputy");

struct Sidecar {
    child: Child,
    addr: SocketAddr,
}

/// Starts `deputy serve` on an ephemeral port and reads the address from its JSON log.
fn serve(state: &Path) -> Sidecar {
    let mut child = Command::new(DEPUTY)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--no-watch",
            "--state",
        ])
        .arg(state)
        .arg("--bundle")
        .arg(repo_root())
        .env("DEPUTY_ADMIN_TOKEN", ADMIN)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr = common::listening_addr(&mut child);
    Sidecar { child, addr }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(addr: SocketAddr, token: &str, path: &str, body: &Value) -> common::Resp {
    let bytes = serde_json::to_vec(body).unwrap();
    let auth = format!("Bearer {token}");
    common::send(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json"), ("Authorization", &auth)],
        Some(&bytes),
    )
}

const GRANT: &str = r#"permit(principal == ?principal, action == Action::"read", resource in Folder::"repo");"#;

fn verify(state: &Path) -> (bool, String) {
    let out = Command::new(DEPUTY)
        .args(["audit", "verify", "--state"])
        .arg(state)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn make_history(state: &Path) {
    let s = serve(state);
    for i in 0..4 {
        let r = post(
            s.addr,
            ADMIN,
            "/v1/delegations",
            &json!({"grant": GRANT, "ttl_seconds": 600, "ceiling": 1, "task": format!("t{i}")}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
}

fn sql(state: &Path, statement: &str) {
    let conn = rusqlite::Connection::open(state.join(deputy::delegation::STATE_FILE)).unwrap();
    conn.execute_batch(statement).unwrap();
}

#[test]
fn audit_verify_detects_edits_insertions_and_deletions() {
    for (tamper, expect) in [
        (
            "UPDATE audit SET details = replace(details, 't1', 'tX') WHERE seq = 2",
            "record 2 was altered",
        ),
        (
            "INSERT INTO audit SELECT 99, at, event, actor, agent, details, prev_hash, hash FROM audit WHERE seq = 4; \
             UPDATE audit SET seq = 5 WHERE seq = 99;",
            "record 5 does not link",
        ),
        ("DELETE FROM audit WHERE seq = 3", "record 3 is missing"),
    ] {
        let state = tempfile::tempdir().unwrap();
        make_history(state.path());
        let (ok, out) = verify(state.path());
        assert!(ok, "an untouched trail must verify: {out}");
        sql(state.path(), tamper);
        let (ok, out) = verify(state.path());
        assert!(!ok, "tampering `{tamper}` went unnoticed: {out}");
        assert!(out.contains(expect), "`{tamper}`: expected `{expect}` in: {out}");
    }
}

/// `kill -9` in the middle of bursts of delegations: every acknowledged agent is there after a
/// restart, and the store and its audit chain are intact.
#[test]
fn kill_9_during_a_burst_loses_nothing_acknowledged() {
    let state = tempfile::tempdir().unwrap();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    for round in 0..3u64 {
        let mut s = serve(state.path());
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (stop, acked, addr) = (Arc::clone(&stop), Arc::clone(&acknowledged), s.addr);
                std::thread::spawn(move || {
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let body = json!({"grant": GRANT, "ttl_seconds": 600, "ceiling": 1, "can_delegate": true,
                                          "task": format!("round {round} worker {w} #{i}")});
                        // A killed server answers nothing: the request was not acknowledged.
                        let Ok(r) = std::panic::catch_unwind(|| post(addr, ADMIN, "/v1/delegations", &body)) else {
                            break;
                        };
                        if r.status == 201 {
                            acked
                                .lock()
                                .unwrap()
                                .push(r.json()["delegation_id"].as_str().unwrap().to_owned());
                        }
                    }
                })
            })
            .collect();
        // Killed mid-burst, once this round has had some delegations acknowledged (the workers
        // keep sending, so others are in flight when it dies).
        let target = acknowledged.lock().unwrap().len() + 5 + 5 * usize::try_from(round).unwrap();
        assert!(
            common::wait_until(Duration::from_secs(60), || acknowledged.lock().unwrap().len() >= target),
            "the burst never got going"
        );
        s.child.kill().unwrap(); // SIGKILL
        let _ = s.child.wait();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            let _ = w.join();
        }
    }
    let acked = acknowledged.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "too few delegations were acknowledged to test anything: {}",
        acked.len()
    );
    let s = serve(state.path());
    for id in &acked {
        let auth = format!("Bearer {ADMIN}");
        let r = common::send(
            s.addr,
            "GET",
            &format!("/v1/delegations/{id}"),
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(r.status, 200, "acknowledged delegation {id} was lost: {}", r.text());
    }
    drop(s);
    let (ok, out) = verify(state.path());
    assert!(ok, "the audit chain broke under kill -9: {out}");
    let conn = rusqlite::Connection::open(state.path().join(deputy::delegation::STATE_FILE)).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok");
    let applied: i64 = conn
        .query_row("SELECT count(*) FROM audit WHERE event = 'applied'", [], |r| r.get(0))
        .unwrap();
    let agents: i64 = conn.query_row("SELECT count(*) FROM agents", [], |r| r.get(0)).unwrap();
    assert_eq!(
        applied, agents,
        "every agent has exactly its audit record, and no record lacks its agent"
    );
}

#[test]
fn deputy_probe_exits_zero_only_on_2xx() {
    let state = tempfile::tempdir().unwrap();
    let s = serve(state.path());
    let probe = |path: &str| {
        Command::new(DEPUTY)
            .args(["probe", "--url", &format!("http://{}{path}", s.addr)])
            .output()
            .unwrap()
    };
    assert!(probe("/readyz").status.success());
    assert!(probe("/healthz").status.success());
    let missing = probe("/nope");
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));
    drop(s);
    let closed = Command::new(DEPUTY)
        .args(["probe", "--url", "http://127.0.0.1:9/readyz", "--timeout-ms", "500"])
        .output()
        .unwrap();
    assert_eq!(closed.status.code(), Some(1));
}

/// git-sync checks each revision out as a worktree, whose `.git` is a file naming the git dir:
/// the revision still reaches the policy version.
#[test]
fn a_git_worktree_bundle_reports_its_revision() {
    let root = tempfile::tempdir().unwrap();
    let repo = root.path().join("repo");
    let git = |args: &[&str], dir: &Path| {
        let out = Command::new("git")
            .args(["-c", "user.email=ci@example.com", "-c", "user.name=ci"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    std::fs::create_dir_all(&repo).unwrap();
    git(&["init", "-q"], &repo);
    for sub in ["schema", "policies", "entities"] {
        common::copy_dir(&repo_root().join(sub), &repo.join(sub));
    }
    git(&["add", "-A"], &repo);
    git(&["commit", "-qm", "bundle"], &repo);
    let head = git(&["rev-parse", "HEAD"], &repo);
    git(&["worktree", "add", "-q", "--detach", "../checkout", "HEAD"], &repo);
    let out = Command::new(DEPUTY)
        .args(["validate", "--json", "--bundle"])
        .arg(root.path().join("checkout"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["revision"], head.as_str(), "{v}");
}

/// The API is for the pod's own agent: listening beyond loopback needs an explicit flag.
#[test]
fn a_non_loopback_listener_needs_allow_remote() {
    let out = Command::new(DEPUTY)
        .args([
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--no-watch",
            "--authorize-only",
            "--bundle",
        ])
        .arg(repo_root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--allow-remote"));
}

/// `--max-invocation-depth` is checked before anything is served: 1 to 16.
#[test]
fn the_invocation_depth_flag_is_bounded() {
    for bad in ["0", "17", "deep"] {
        let out = Command::new(DEPUTY)
            .args(["serve", "--no-watch", "--max-invocation-depth", bad, "--bundle"])
            .arg(repo_root())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("--max-invocation-depth"),
            "{bad}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
