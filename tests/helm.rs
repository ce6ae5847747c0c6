//! The Helm chart in `helm/deputy`, tested by `helm/tests/test_chart.py` with the real Helm
//! engine (PyPI `helm-python-sdk`) and the Kubernetes schemas (PyPI `kubernetes-validate`).
//! This runs that suite so that `cargo test` covers the chart, and hands it the deputy binary
//! so that the rendered container is started for real.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

const DEPUTY: &str = env!("CARGO_BIN_EXE_deputy");
const INSTALL_HINT: &str = "pip install -r helm/tests/requirements.txt";

#[test]
fn helm_chart_renders_lints_and_validates() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let probe = Command::new("python3")
        .args(["-c", "import helm_python, kubernetes_validate, pytest, yaml"])
        .current_dir(root)
        .output();
    match probe {
        Err(e) => panic!("cannot run python3 ({e}): the Helm chart tests need Python 3 and `{INSTALL_HINT}`"),
        Ok(out) if !out.status.success() => panic!(
            "the Helm chart tests need their Python packages: run `{INSTALL_HINT}`\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Ok(_) => {}
    }

    let out = Command::new("python3")
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "helm/tests"])
        .current_dir(root)
        .env("DEPUTY_BIN", DEPUTY)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python3 -m pytest");
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
