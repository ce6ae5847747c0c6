//! Test support: a real deputy server on `127.0.0.1:0` and a plain HTTP/1.1 client over a TCP
//! socket (so tests can send any bytes, headers and bodies they like).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
pub mod mcp;
pub mod prover;
pub mod prover_gen;
pub mod venv;

use std::path::{Path, PathBuf};
use std::time::Duration;

use deputy::bundle::{LoadOptions, WatchOptions};
use deputy::http::HttpConfig;
use deputy::server::{self, Running, ServeConfig};
use serde_json::{json, Value};

/// The repository root, which holds the example bundle.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/conformance` beside the repository (CI lays `shared/` next to the clone).
pub fn conformance_dir() -> PathBuf {
    repo_root().join("../shared/conformance")
}

#[derive(Clone)]
pub struct Options {
    pub authorize_only: bool,
    pub skip_validation: bool,
    pub watch: bool,
    pub poll_interval: Duration,
    pub max_body_bytes: usize,
    pub max_batch: usize,
    /// Delegation state directory; `None` disables delegation.
    pub state: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub agent_tokens: std::collections::HashMap<String, String>,
    pub listen_unix: Option<PathBuf>,
    pub max_connections: usize,
    pub limits: deputy::delegation::Limits,
    pub decision_log: Option<deputy::telemetry::DecisionLogConfig>,
    pub shadow: Option<PathBuf>,
    /// Upstream MCP servers (`--mcp-server`).
    pub mcp_servers: Vec<deputy::mcp::ServerConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            authorize_only: false,
            skip_validation: false,
            watch: false,
            poll_interval: Duration::from_secs(60),
            max_body_bytes: 1024 * 1024,
            max_batch: 1000,
            state: None,
            admin_token: None,
            agent_tokens: std::collections::HashMap::new(),
            listen_unix: None,
            max_connections: 1024,
            limits: deputy::delegation::Limits::default(),
            decision_log: None,
            shadow: None,
            mcp_servers: Vec::new(),
        }
    }
}

impl Options {
    /// Delegation on, with its state in `dir` and `admin` as the admin credential.
    pub fn with_state(dir: &Path, admin: &str) -> Self {
        Self {
            state: Some(dir.to_path_buf()),
            admin_token: Some(admin.to_owned()),
            ..Self::default()
        }
    }

    pub fn authorize_only() -> Self {
        Self {
            authorize_only: true,
            ..Self::default()
        }
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    running: Option<Running>,
    rt: tokio::runtime::Runtime,
}

impl TestServer {
    pub fn start(bundle: &Path, opts: Options) -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = ServeConfig {
            bundle: bundle.to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            load: LoadOptions {
                validate: !opts.skip_validation,
                require_agent_model: !opts.authorize_only,
            },
            http: HttpConfig {
                max_body_bytes: opts.max_body_bytes,
                max_batch: opts.max_batch,
                max_json_depth: 32,
                header_read_timeout: Duration::from_secs(2),
                max_connections: opts.max_connections,
            },
            watch: opts.watch.then(|| WatchOptions {
                debounce: Duration::from_millis(100),
                poll_interval: opts.poll_interval,
            }),
            drain: Duration::from_secs(1),
            state: opts.state.clone(),
            admin_token: opts.admin_token.clone(),
            agent_tokens: opts.agent_tokens.clone(),
            listen_unix: opts.listen_unix.clone(),
            limits: opts.limits.clone(),
            observe: deputy::telemetry::ObserveConfig {
                decision_log: opts.decision_log.clone(),
            },
            shadow: opts.shadow.clone(),
            mcp_servers: opts.mcp_servers.clone(),
        };
        let running = rt.block_on(server::start(config)).unwrap();
        // A shadow bundle loads beside the start; tests compare against it once it has.
        assert!(
            wait_until(Duration::from_secs(60), || running.shadow_attempted()),
            "the shadow bundle's first load never finished"
        );
        TestServer {
            addr: running.addr(),
            running: Some(running),
            rt,
        }
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
        send(self.addr, method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Resp {
        let bytes = serde_json::to_vec(body).unwrap();
        self.request("POST", path, &[("Content-Type", "application/json")], Some(&bytes))
    }

    pub fn post_raw(&self, path: &str, content_type: Option<&str>, body: &[u8]) -> Resp {
        let headers: Vec<(&str, &str)> = content_type.map(|c| ("Content-Type", c)).into_iter().collect();
        self.request("POST", path, &headers, Some(body))
    }

    /// Reloads the bundle now (as the watcher would), on the calling thread.
    pub fn reload(&self) -> Result<deputy::bundle::ReloadOutcome, deputy::bundle::BundleError> {
        self.running.as_ref().expect("server running").reload()
    }

    /// The policy version now serving, from /v1/status.
    pub fn version(&self) -> Option<String> {
        self.get("/v1/status").json()["bundle"]["policy_version"]
            .as_str()
            .map(str::to_owned)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            self.rt.block_on(r.stop());
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 exchange on a fresh connection.
pub fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        stream.write_all(b).unwrap();
    }
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in response: {}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Resp {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// Copies a bundle directory (schema/, policies/, entities/) into a fresh temp dir.
pub fn copy_bundle(from: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["schema", "policies", "entities"] {
        let src = from.join(sub);
        if src.exists() {
            copy_dir(&src, &dir.path().join(sub));
        }
    }
    dir
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// `/v1/status` once the live grants were re-proved against the serving bundle (re-proofs run
/// on a worker after each install; this waits for the one of the version serving).
pub fn status_reproved(addr: SocketAddr) -> Value {
    let mut status = Value::Null;
    let done = wait_until(Duration::from_secs(30), || {
        status = send(addr, "GET", "/v1/status", &[], None).json();
        status["delegation"]["reproved_version"] == status["bundle"]["policy_version"]
    });
    assert!(done, "the live grants were not re-proved: {status}");
    status
}

/// A request with `Authorization: Bearer <token>`.
pub fn get_as(s: &TestServer, token: &str, path: &str) -> Resp {
    let auth = format!("Bearer {token}");
    s.request("GET", path, &[("Authorization", &auth)], None)
}

pub fn delete_as(s: &TestServer, token: &str, path: &str) -> Resp {
    let auth = format!("Bearer {token}");
    s.request("DELETE", path, &[("Authorization", &auth)], None)
}

/// A JSON POST with `Authorization: Bearer <token>`.
pub fn post_as(s: &TestServer, token: &str, path: &str, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap();
    let auth = format!("Bearer {token}");
    s.request(
        "POST",
        path,
        &[("Content-Type", "application/json"), ("Authorization", &auth)],
        Some(&bytes),
    )
}

/// Waits for a `deputy serve` child started with `--log-format json` and a piped stderr to log
/// its listening address, and returns it. The child's stderr keeps being drained afterwards.
pub fn listening_addr(child: &mut std::process::Child) -> SocketAddr {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("start deputy with a piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v["message"] == "deputy listening" {
                    let _ = tx.send(v["addr"].as_str().unwrap().parse::<SocketAddr>().unwrap());
                }
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("deputy did not start")
}

/// An agent deputy created: its id and credential.
pub struct Agent {
    pub id: String,
    pub token: String,
}

/// `POST /v1/delegations` with `token`.
pub fn spawn(s: &TestServer, token: &str, body: Value) -> Resp {
    post_as(s, token, "/v1/delegations", &body)
}

/// The agent a spawn applied; fails unless it was applied (201, `outcome: applied`).
pub fn applied(r: &Resp) -> Agent {
    assert_eq!(r.status, 201, "expected applied: {}", r.text());
    let b = r.json();
    assert_eq!(b["outcome"], "applied", "{b}");
    Agent {
        id: b["delegation_id"].as_str().unwrap().to_owned(),
        token: b["credential"].as_str().unwrap().to_owned(),
    }
}

/// `POST /v1/authorize` for agent `agent` (200 expected): the decision's JSON.
pub fn decide(s: &TestServer, agent: &str, action: &str, resource: (&str, &str)) -> Value {
    let r = s.post(
        "/v1/authorize",
        &json!({
            "principal": {"type": "Agent", "id": agent},
            "action": {"type": "Action", "id": action},
            "resource": {"type": resource.0, "id": resource.1},
        }),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}
