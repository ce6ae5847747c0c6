//! The MCP gateway (docs/MCP.md): deputy serves each configured upstream MCP server, and its own
//! tools, at `/mcp/<server>` as MCP streamable HTTP, stateless, answering JSON. The caller is
//! the agent its bearer credential names (authenticated by `delegation`, as every other
//! endpoint); `tools/list` shows a tool only when the capabilities engine finds some context in
//! which the agent may call it; each `tools/call` is one decision of the decision path
//! (`authorize::decide_observed`) with principal the agent, action `Action::"<server>/<tool>"`,
//! resource `McpServer::"<server>"` and context the call's arguments. A call that is not
//! allowed never reaches the upstream server.
//!
//! Upstream servers are child processes spoken to over stdio with rmcp's client
//! (`upstream.rs`); `schema.rs` turns their tools' input schemas into a Cedar schema fragment
//! (`deputy mcp schema`); `own.rs` holds deputy's own tools (`/mcp/deputy`).

mod gateway;
mod own;
mod schema;
mod upstream;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use gateway::{handle, Call, Reply};
pub use schema::{fragment, Options as SchemaOptions};
pub use upstream::{list_tools_of, Upstream};

/// The entity type of the resource of every tool call: one entity per server.
pub const SERVER_TYPE: &str = "McpServer";
/// The name deputy's own tools are served under (`/mcp/deputy`); no upstream may take it.
pub const OWN_SERVER: &str = "deputy";
/// The context attribute deputy supplies itself (`context.taint`): no tool argument may carry it.
pub const RESERVED_ARGUMENT: &str = crate::bundle::TAINT_FIELD;
/// Longest server name accepted.
const MAX_NAME: usize = 64;

/// An upstream MCP server deputy starts and serves at `/mcp/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub name: String,
    /// The program and its arguments (no shell).
    pub command: Vec<String>,
}

impl ServerConfig {
    /// Reads `NAME=COMMAND ARG…` (split on whitespace) or `NAME=["COMMAND", "ARG", …]` (a JSON
    /// array, for arguments with spaces): the value of `--mcp-server`.
    pub fn parse(spec: &str) -> Result<ServerConfig, String> {
        let (name, command) = spec
            .split_once('=')
            .ok_or_else(|| format!("`{spec}` is not `NAME=COMMAND ARG…`"))?;
        check_name(name)?;
        let command = command.trim();
        let command: Vec<String> = if command.starts_with('[') {
            serde_json::from_str(command)
                .map_err(|e| format!("the command of `{name}` is not a JSON array of strings: {e}"))?
        } else {
            command.split_whitespace().map(str::to_owned).collect()
        };
        ServerConfig::new(name, command)
    }

    /// A server named `name` run as `command` (program first).
    pub fn new(name: &str, command: Vec<String>) -> Result<ServerConfig, String> {
        check_name(name)?;
        if command.first().is_none_or(|p| p.is_empty()) {
            return Err(format!("the MCP server `{name}` has no command"));
        }
        Ok(ServerConfig {
            name: name.to_owned(),
            command,
        })
    }
}

/// A server name is a path segment and the first part of every action id of its tools
/// (`<server>/<tool>`): lowercase ASCII letters, digits, `_` and `-`, starting with a letter,
/// so it needs no escaping anywhere and cannot contain the `/` that ends it.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !ok {
        return Err(format!(
            "`{name}` is not a valid MCP server name: use 1 to {MAX_NAME} lowercase letters, digits, `_` or `-`, starting with a letter"
        ));
    }
    if name == OWN_SERVER {
        return Err(format!("`{OWN_SERVER}` is the name of deputy's own tools; name the server otherwise"));
    }
    Ok(())
}

/// The Cedar action id of `tool` on `server`: `<server>/<tool>` (the tool's name as the server
/// gives it; a server name holds no `/`, so the first one ends it).
pub fn action_id(server: &str, tool: &str) -> String {
    format!("{server}/{tool}")
}

/// The upstream servers of one sidecar, by name.
#[derive(Default)]
pub struct Gateway {
    upstreams: BTreeMap<String, Arc<Upstream>>,
    call_timeout: std::time::Duration,
}

/// What `/mcp/<name>` serves.
pub enum Served {
    /// deputy's own tools.
    Own,
    Upstream(Arc<Upstream>),
}

impl Gateway {
    /// The gateway for `servers`: a bad name, an empty command or a repeated name is refused.
    pub fn new(servers: &[ServerConfig], call_timeout: std::time::Duration) -> Result<Gateway, String> {
        let mut upstreams = BTreeMap::new();
        for s in servers {
            let s = &ServerConfig::new(&s.name, s.command.clone())?;
            if upstreams
                .insert(s.name.clone(), Arc::new(Upstream::new(s.clone())))
                .is_some()
            {
                return Err(format!("the MCP server `{}` is configured twice", s.name));
            }
        }
        Ok(Gateway {
            upstreams,
            call_timeout,
        })
    }

    /// What `/mcp/<name>` serves, if anything.
    pub fn served(&self, name: &str) -> Option<Served> {
        if name == OWN_SERVER {
            return Some(Served::Own);
        }
        self.upstreams.get(name).cloned().map(Served::Upstream)
    }

    /// Stops every upstream server (on shutdown).
    pub async fn stop(&self) {
        for u in self.upstreams.values() {
            u.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn server_specs_are_read_with_whitespace_or_as_json() {
        let s = ServerConfig::parse("fs=npx -y server /tmp/x").unwrap();
        assert_eq!((s.name.as_str(), s.command.len()), ("fs", 4));
        let s = ServerConfig::parse(r#"fs=["my server", "a b"]"#).unwrap();
        assert_eq!(s.command, vec!["my server".to_owned(), "a b".to_owned()]);
        for bad in ["fs", "=x", "FS=x", "f/s=x", "a\"b=x", "deputy=x", "fs=", "fs=[]", "../x=y", "1a=x"] {
            assert!(ServerConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn action_ids_split_at_the_first_slash() {
        assert_eq!(action_id("fs", "a/b\"c"), "fs/a/b\"c");
        assert!(check_name("fs-2_x").is_ok());
    }
}
