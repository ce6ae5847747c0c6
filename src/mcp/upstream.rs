//! One upstream MCP server: a child process spoken to over stdio with rmcp's client. Started
//! on first use and kept; when it exits (or its pipe breaks) the call that finds it gone fails
//! with `mcp_upstream_unavailable` and the next one starts it again. Its tool list is read once
//! per start.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{CallToolRequestParams, CallToolResult, ErrorData, Tool};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceError, ServiceExt};

use super::ServerConfig;

use crate::config::DEFAULT_MCP_START_TIMEOUT as START_TIMEOUT;

/// deputy's own environment variables (`DEPUTY_ADMIN_TOKEN`, `DEPUTY_STATE`, …): not passed to
/// an upstream server.
const OWN_ENV_PREFIX: &str = "DEPUTY_";

/// A started server and the tools it listed when it started.
pub struct Connection {
    service: RunningService<RoleClient, ()>,
    pub tools: Vec<Tool>,
    _group: Group,
}

/// The server's process group (it leads one): killed when deputy lets go of the server, whether
/// it stops, restarts the server after it exited, or its runtime shuts down (rmcp kills the
/// process it started from a task, which a runtime shutting down never runs; and only that
/// process, not a wrapper's child or a helper).
struct Group(Option<u32>);

impl Drop for Group {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(pgid) = self.0.and_then(|p| i32::try_from(p).ok()) {
            // ESRCH (every member already gone) is the usual answer after a crash.
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Connection {
    /// The tool named `name`, if the server lists it.
    pub fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }
}

/// Why an upstream server did not answer.
#[derive(Debug)]
pub enum UpstreamError {
    /// It could not be started, or it exited or broke its pipe.
    Unavailable(String),
    /// It did not answer in time.
    Timeout(Duration),
    /// It answered with a JSON-RPC error (passed on to the client as it is).
    Mcp(ErrorData),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Unavailable(e) => write!(f, "{e}"),
            UpstreamError::Timeout(d) => write!(f, "no answer within {}s", d.as_secs()),
            UpstreamError::Mcp(e) => write!(f, "{}", e.message),
        }
    }
}

pub struct Upstream {
    config: ServerConfig,
    // A tokio mutex, held while a server starts, so that concurrent first calls start one
    // process; it guards no snapshot.
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl Upstream {
    pub fn new(config: ServerConfig) -> Upstream {
        Upstream {
            config,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The running server, started now if it is not running.
    pub async fn connection(&self) -> Result<Arc<Connection>, UpstreamError> {
        let mut held = self.conn.lock().await;
        if let Some(c) = held.as_ref().filter(|c| !c.service.is_closed()) {
            return Ok(Arc::clone(c));
        }
        // A server that exited is dropped (its process reaped by rmcp) before a new one starts.
        *held = None;
        let started = tokio::time::timeout(START_TIMEOUT, start(&self.config))
            .await
            .map_err(|_| UpstreamError::Timeout(START_TIMEOUT))??;
        let c = Arc::new(started);
        *held = Some(Arc::clone(&c));
        Ok(c)
    }

    /// Calls a tool on the running server `conn`. A broken connection is forgotten, so that
    /// the next call starts the server again.
    pub async fn call(
        &self,
        conn: &Arc<Connection>,
        params: CallToolRequestParams,
        timeout: Duration,
    ) -> Result<CallToolResult, UpstreamError> {
        let called = tokio::time::timeout(timeout, conn.service.peer().call_tool(params)).await;
        match called {
            Err(_) => Err(UpstreamError::Timeout(timeout)),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(ServiceError::McpError(e))) => Err(UpstreamError::Mcp(e)),
            Ok(Err(e)) => {
                self.forget(conn).await;
                Err(UpstreamError::Unavailable(format!(
                    "the MCP server `{}` stopped answering: {e}",
                    self.config.name
                )))
            }
        }
    }

    async fn forget(&self, conn: &Arc<Connection>) {
        let mut held = self.conn.lock().await;
        if held.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *held = None;
        }
    }

    /// Stops the server if it runs.
    pub async fn stop(&self) {
        let taken = self.conn.lock().await.take();
        if let Some(c) = taken {
            if let Ok(c) = Arc::try_unwrap(c) {
                let _ = c.service.cancel().await;
            }
        }
    }
}

/// Starts `config`'s server and reads its tools.
async fn start(config: &ServerConfig) -> Result<Connection, UpstreamError> {
    let name = &config.name;
    let (program, args) = config
        .command
        .split_first()
        .ok_or_else(|| UpstreamError::Unavailable(format!("the MCP server `{name}` has no command")))?;
    let mut command = tokio::process::Command::new(program);
    command.args(args).kill_on_drop(true);
    // INVARIANT: none of deputy's own configuration reaches the server, its admin credential
    // (`DEPUTY_ADMIN_TOKEN`) above all: a tool that shows its environment (or runs a command)
    // would hand it to every agent allowed that tool.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with(OWN_ENV_PREFIX) {
            command.env_remove(&key);
        }
    }
    // Its own process group: stopping the server (rmcp kills it when the connection is
    // dropped) stops what it started too, a wrapper's child (`npx`, a shell) or a helper.
    let mut command = process_wrap::tokio::CommandWrap::from(command);
    #[cfg(unix)]
    command.wrap(process_wrap::tokio::ProcessGroup::leader());
    let (transport, stderr) = TokioChildProcess::builder(command)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| UpstreamError::Unavailable(format!("cannot start the MCP server `{name}` (`{program}`): {e}")))?;
    let group = Group(transport.id());
    if let Some(stderr) = stderr {
        tokio::spawn(log_stderr(name.clone(), stderr));
    }
    let service = ()
        .serve(transport)
        .await
        .map_err(|e| UpstreamError::Unavailable(format!("the MCP server `{name}` did not start: {e}")))?;
    let tools = service
        .peer()
        .list_all_tools()
        .await
        .map_err(|e| UpstreamError::Unavailable(format!("the MCP server `{name}` did not list its tools: {e}")))?;
    tracing::info!(server = %name, tools = tools.len(), "MCP server started");
    Ok(Connection {
        service,
        tools,
        _group: group,
    })
}

/// The server's stderr, line by line, as debug logs.
async fn log_stderr(server: String, stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!(server = %server, "{line}");
    }
}

/// Starts `config`'s server, reads its tools and stops it (`deputy mcp schema`).
pub async fn list_tools_of(config: &ServerConfig) -> Result<Vec<Tool>, String> {
    let upstream = Upstream::new(config.clone());
    let tools = upstream
        .connection()
        .await
        .map(|c| c.tools.clone())
        .map_err(|e| e.to_string());
    upstream.stop().await;
    tools
}
