//! README.md's first two commands are the ones a newcomer runs: the first serves the example
//! bundle, the second runs the whole suite on a fresh machine, and CI (`.ci/run`) runs exactly
//! that second command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// The commands of a shell snippet, comments and blank lines dropped.
fn commands(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split(" #").next().unwrap().trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_starts_with_serve_then_the_suite_and_ci_runs_that_suite() {
    let readme = read("README.md");
    let block = readme
        .split("```sh\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has no ```sh block");
    let first = commands(block);
    assert_eq!(
        first.len(),
        2,
        "README's first block should hold exactly two commands: {first:?}"
    );
    assert_eq!(first[0], "cargo run --release -- serve");
    let suite = &first[1];

    let ci = commands(&read(".ci/run"));
    let run: Vec<&String> = ci
        .iter()
        .filter(|l| !l.starts_with("set ") && !l.starts_with("cd ") && !l.starts_with("export "))
        .collect();
    assert_eq!(run, [suite], ".ci/run must run exactly README's test command `{suite}`");
}
