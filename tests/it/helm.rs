//! The Helm chart in `helm/deputy`, tested by `helm/tests/test_chart.py` with the real Helm
//! engine (PyPI `helm-python-sdk`) and the Kubernetes schemas (PyPI `kubernetes-validate`).
//! This runs that suite with the project's virtualenv (`scripts/setup` installs the packages
//! there) so that `cargo test` covers the chart, and hands it the deputy binary so that the
//! rendered container is started for real.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::common::venv;

use std::path::Path;
use std::process::Command;

const DEPUTY: &str = env!("CARGO_BIN_EXE_deputy");

#[test]
fn helm_chart_renders_lints_and_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = venv::tool("python3");
    let probe = Command::new(&python)
        .args(["-c", "import helm_python, kubernetes_validate, pytest, yaml"])
        .current_dir(root)
        .output();
    match probe {
        Err(e) => panic!("cannot run {} ({e}): {}", python.display(), venv::SETUP_HINT),
        Ok(out) if !out.status.success() => panic!(
            "the Helm chart tests need their Python packages (helm/tests/requirements.txt): {}\n{}",
            venv::SETUP_HINT,
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(_) => {}
    }

    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "helm/tests"])
        .current_dir(root)
        .env("DEPUTY_BIN", DEPUTY)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect(".venv/bin/python3 -m pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "helm/tests failed ({}); see the pytest output above",
        out.status
    );
    // Never pass on a suite that ran nothing, e.g. if every test were skipped.
    assert!(stdout.contains(" passed"), "pytest ran no test:\n{stdout}");
    assert!(!stdout.contains(" skipped"), "some chart tests were skipped:\n{stdout}");
}
