//! The system under test: the real `deputy` binary, started as a process on `127.0.0.1:0` with
//! its own bundle copy, state directory and test clock (`DEPUTY_TEST_CLOCK`, honoured by debug
//! builds only), reloaded by SIGHUP, stopped by SIGTERM or killed by SIGKILL.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN: &str = "admin-token-for-the-model-test";
pub const LEAD: &str = "lead-credential-for-the-model-test";

pub struct Deputy {
    child: Child,
    pub addr: SocketAddr,
    pub bundle: tempfile::TempDir,
    state: tempfile::TempDir,
    secrets: tempfile::TempDir,
    clock: PathBuf,
    pub now: i64,
}

/// When the model's clock starts (a fixed time: runs are reproducible).
pub const EPOCH: i64 = 1_800_000_000;

impl Deputy {
    pub fn start(fixture: &Path) -> Deputy {
        let bundle = tempfile::tempdir().unwrap();
        super::common::copy_dir(fixture, bundle.path());
        let state = tempfile::tempdir().unwrap();
        let secrets = tempfile::tempdir().unwrap();
        std::fs::write(secrets.path().join("lead"), LEAD).unwrap();
        let clock = secrets.path().join("clock");
        std::fs::write(&clock, EPOCH.to_string()).unwrap();
        let (child, addr) = launch(bundle.path(), state.path(), secrets.path(), &clock);
        Deputy {
            child,
            addr,
            bundle,
            state,
            secrets,
            clock,
            now: EPOCH,
        }
    }

    /// Stops the process (SIGKILL when `kill`, else SIGTERM and a drain) and starts another on
    /// the same bundle, state and clock.
    pub fn restart(&mut self, kill: bool) {
        if kill {
            self.child.kill().unwrap();
        } else {
            signal(&self.child, "TERM");
        }
        let status = self.child.wait().unwrap();
        assert!(kill || status.success(), "deputy did not stop cleanly: {status}");
        let (child, addr) = launch(self.bundle.path(), self.state.path(), self.secrets.path(), &self.clock);
        self.child = child;
        self.addr = addr;
    }

    pub fn advance(&mut self, secs: i64) {
        self.now += secs;
        std::fs::write(&self.clock, self.now.to_string()).unwrap();
    }

    /// Reloads on SIGHUP and waits for the reload to be counted; returns `last_reload`.
    pub fn reload(&self) -> Value {
        let count = |s: &Value| s["reloads"]["ok"].as_u64().unwrap() + s["reloads"]["failed"].as_u64().unwrap();
        let before = count(&self.get("/v1/status").json());
        signal(&self.child, "HUP");
        let start = Instant::now();
        loop {
            let status = self.get("/v1/status").json();
            if count(&status) > before {
                return status["last_reload"].clone();
            }
            assert!(start.elapsed() < Duration::from_secs(30), "the reload never happened");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn get(&self, path: &str) -> super::common::Resp {
        super::common::send(self.addr, "GET", path, &[], None)
    }

    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> super::common::Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(a) = &auth {
            headers.push(("Authorization", a));
        }
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
        if bytes.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        super::common::send(self.addr, method, path, &headers, bytes.as_deref())
    }
}

impl Drop for Deputy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} failed");
}

/// The `deputy` binary: cargo's for an integration test, `DEPUTY_BIN` for the fuzz target. It must
/// be a debug build (only those honour the test clock).
fn deputy_bin() -> PathBuf {
    match option_env!("CARGO_BIN_EXE_deputy") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("DEPUTY_BIN")
            .map(PathBuf::from)
            .expect("set DEPUTY_BIN to a debug build of deputy (fuzz/run.sh does)"),
    }
}

fn launch(bundle: &Path, state: &Path, secrets: &Path, clock: &Path) -> (Child, SocketAddr) {
    let mut child = Command::new(deputy_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json", "--no-watch"])
        .arg("--bundle")
        .arg(bundle)
        .arg("--state")
        .arg(state)
        .arg("--agent-credential-file")
        .arg(format!("lead={}", secrets.join("lead").display()))
        .env("DEPUTY_ADMIN_TOKEN", ADMIN)
        .env("DEPUTY_TEST_CLOCK", clock)
        .env("DEPUTY_LOG", "warn,deputy=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = super::common::listening_addr(&mut child);
    (child, addr)
}
