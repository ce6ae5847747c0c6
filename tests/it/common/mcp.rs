//! What the MCP gateway tests share: the reference servers scripts/setup installs, and a bundle
//! (tests/fixtures/mcp) extended for the "everything" server, served with `lead`'s credential.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use super::{Options, TestServer};

/// The bundle agent `lead`'s credential in the MCP fixture.
pub const LEAD: &str = "lead-credential-from-a-secret-0123";

/// The reference MCP server `name` (`mcp-server-filesystem`, `mcp-server-everything`), as
/// scripts/setup installs it.
pub fn server_bin(name: &str) -> PathBuf {
    let bin = super::repo_root()
        .join("tests/mcp-servers/node_modules/.bin")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `scripts/setup` (it runs `npm ci` in tests/mcp-servers/)",
        bin.display()
    );
    bin
}

/// The MCP fixture bundle with the "everything" server declared (`McpServer::"everything"`),
/// `schema` as its schema fragment (none when empty), `policies` as its admin policies, and
/// `lead`'s grant extended to every action on it.
pub fn everything_bundle(schema: &str, policies: &str) -> tempfile::TempDir {
    let bundle = tempfile::tempdir().unwrap();
    super::copy_dir(&super::repo_root().join("tests/fixtures/mcp"), bundle.path());
    if !schema.is_empty() {
        std::fs::write(bundle.path().join("schema/everything.cedarschema"), schema).unwrap();
    }
    std::fs::write(
        bundle.path().join("entities/everything.json"),
        r#"[{"uid": {"type": "McpServer", "id": "everything"}, "attrs": {}, "parents": []}]"#,
    )
    .unwrap();
    std::fs::write(bundle.path().join("policies/everything.cedar"), policies).unwrap();
    let grant = bundle.path().join("grants/lead.cedar");
    let mut granted = std::fs::read_to_string(&grant).unwrap();
    granted.push_str("permit (principal == ?principal, action, resource == McpServer::\"everything\");\n");
    std::fs::write(&grant, granted).unwrap();
    bundle
}

/// A sidecar on `bundle` with delegation state, `lead`'s credential and the "everything"
/// server at `/mcp/everything`; the state directory lives as long as the server is used.
pub fn serve_everything(bundle: &Path) -> (TestServer, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let server = TestServer::start(
        bundle,
        Options {
            state: Some(state.path().to_path_buf()),
            agent_tokens: [("lead".to_owned(), LEAD.to_owned())].into(),
            mcp_servers: vec![deputy::mcp::ServerConfig::new(
                "everything",
                vec![server_bin("mcp-server-everything").display().to_string()],
            )
            .unwrap()],
            ..Options::default()
        },
    );
    (server, state)
}
