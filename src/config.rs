//! Settings: defaults and environment variable names, in one place.

use std::time::Duration;

/// Where the sidecar listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8180";
/// [`DEFAULT_LISTEN`] as an address.
pub const DEFAULT_LISTEN_ADDR: std::net::SocketAddr =
    std::net::SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8180));
/// The bundle served unless told otherwise: the example bundle at the repository root.
pub const DEFAULT_BUNDLE: &str = ".";
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_BATCH: usize = 1000;
pub const DEFAULT_MAX_JSON_DEPTH: usize = 32;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the bundle must be quiet before a reload.
pub const DEFAULT_RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);
/// How often the bundle's digest is checked even without file events.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(10);
/// How long open connections may finish after a shutdown signal.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(5);

/// How long an upstream MCP server may take to answer one tool call.
pub const DEFAULT_MCP_CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an upstream MCP server may take to start and list its tools.
pub const DEFAULT_MCP_START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where delegation state lives unless told otherwise (relative to the working directory).
pub const DEFAULT_STATE: &str = ".deputy-state";
/// Shortest admin token accepted.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// The solver (cvc5) asked for a second opinion on inconclusive proofs; unset: none.
pub const ENV_SOLVER: &str = "DEPUTY_SOLVER";
pub const ENV_STATE: &str = "DEPUTY_STATE";
pub const ENV_ADMIN_TOKEN: &str = "DEPUTY_ADMIN_TOKEN";
pub const ENV_BUNDLE: &str = "DEPUTY_BUNDLE";
pub const ENV_LISTEN: &str = "DEPUTY_LISTEN";
pub const ENV_LOG_FORMAT: &str = "DEPUTY_LOG_FORMAT";
pub const ENV_LOG: &str = "DEPUTY_LOG";
pub const ENV_DECISION_LOG: &str = "DEPUTY_DECISION_LOG";
pub const ENV_SHADOW: &str = "DEPUTY_SHADOW_BUNDLE";

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_listen_address_is_one() {
        assert_eq!(super::DEFAULT_LISTEN.parse::<std::net::SocketAddr>().ok(), Some(super::DEFAULT_LISTEN_ADDR));
    }
}
