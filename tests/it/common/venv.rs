//! The project's Python virtualenv, `.venv/` at the repository root, which `scripts/setup`
//! creates and fills from `scripts/requirements.txt`.
#![allow(dead_code, clippy::panic)]

use std::path::PathBuf;

/// What a test says when the virtualenv or a tool in it is missing.
pub const SETUP_HINT: &str = "run `scripts/setup` (it creates .venv/ and installs scripts/requirements.txt into it)";

/// `.venv/bin/<tool>`; fails the test, naming the command that installs it, when it is missing.
pub fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin").join(name);
    assert!(
        path.is_file(),
        "{} is missing: {SETUP_HINT}",
        path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(&path).display()
    );
    path
}
