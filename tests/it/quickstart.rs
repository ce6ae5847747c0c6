//! examples/quickstart.sh, run against the real `deputy serve` on the example bundle (as
//! README's first command starts it), so that the newcomer's story never rots; and against a
//! server that cannot tell it, so that the script is known to fail when an answer is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common;

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::{listening_addr, repo_root, send, wait_until};

const ADMIN: &str = "quickstart-admin-token-0123456789";

/// `deputy serve` on the example bundle, on a port of its choosing, with its state in a temp dir.
struct Server {
    child: Child,
    addr: SocketAddr,
    _state: tempfile::TempDir,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let state = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_deputy"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("DEPUTY_") || key.to_string_lossy().starts_with("OTEL_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--state"])
            .arg(state.path())
            .args(extra)
            .env("DEPUTY_ADMIN_TOKEN", ADMIN)
            .current_dir(repo_root())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start deputy");
        let addr = listening_addr(&mut child);
        let ready = wait_until(Duration::from_secs(30), || {
            send(addr, "GET", "/readyz", &[], None).status == 200
        });
        assert!(ready, "deputy on {addr} never became ready");
        Server {
            child,
            addr,
            _state: state,
        }
    }

    fn quickstart(&self) -> Output {
        Command::new("bash")
            .arg(repo_root().join("examples/quickstart.sh"))
            .env("DEPUTY_URL", format!("http://{}", self.addr))
            .env("DEPUTY_ADMIN_TOKEN", ADMIN)
            .output()
            .expect("run bash examples/quickstart.sh")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_quickstart_tells_the_whole_story() {
    let server = Server::start(&[]);
    let out = server.quickstart();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    let missing_curl = stderr.contains("curl is required");
    assert!(
        !missing_curl,
        "examples/quickstart.sh needs curl: run `scripts/setup` (or apt-get install curl)"
    );
    assert!(out.status.success(), "examples/quickstart.sh failed ({})", out.status);
    // Every beat of the story was told, not just an exit code.
    for beat in [
        "-> Allow (policies [\"agents-read-repo\"])",
        "proof: within",
        "403 grant_exceeds_parent",
        "denied_by: {\"bound\": \"grant\"",
        "needed: permit(principal == ?principal, action == Action::\"read\", resource == File::\"repo/README.md\");",
        "202 pending",
        "200 approved",
        "denied_by: {\"bound\": \"revoked\"}",
        "quickstart: all 7 steps answered as expected.",
    ] {
        assert!(
            stdout.contains(beat),
            "the quickstart's output lacks `{beat}`:\n{stdout}"
        );
    }
}

#[test]
fn the_quickstart_fails_on_an_unexpected_answer() {
    // Without the agent model there is no delegation: the first agent the admin creates fails.
    let server = Server::start(&["--authorize-only"]);
    let out = server.quickstart();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the quickstart passed without delegation:\n{stdout}"
    );
    assert!(
        stderr.contains("FAILED: POST /v1/delegations (admin): expected 201"),
        "the failure does not name the step:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains("all 7 steps"), "{stdout}");
}
