//! The deployment files under `deploy/` checked with the tools that read
//! them: `promtool` runs the alert rules' unit tests, the Kubernetes
//! manifests are rendered and validated against the API's schemas
//! offline, the Grafana dashboard's queries parse (promtool), nginx checks
//! and serves the reverse-proxy configuration (in
//! front of stand-in replicas; `replicas.rs` runs it before real ones), and
//! `systemd-analyze` verifies the units. Each script says what it covers.
//!
//! Needs Debian's prometheus (promtool), nginx and systemd packages;
//! `.ci/run` installs them. The Kubernetes check installs its own pinned
//! validators from PyPI into the build folder.

use std::path::Path;
use std::process::Command;

fn run(script: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(script);
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy-venv");
    let interpreter = if script.ends_with(".py") {
        "python3"
    } else {
        "bash"
    };
    let out = Command::new(interpreter)
        .arg(&path)
        .env("HEARTH_DEPLOY_VENV", venv)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", path.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
}

#[test]
fn the_alert_rules_pass_their_promtool_unit_tests() {
    run("prometheus/test.sh");
}

#[test]
fn the_grafana_dashboard_imports_and_its_queries_parse() {
    run("grafana/check.py");
}

#[test]
fn the_kubernetes_manifests_validate_offline() {
    run("k8s/validate.sh");
}

#[test]
fn nginx_accepts_and_serves_the_reverse_proxy_configuration() {
    run("nginx/test.sh");
}

#[test]
fn the_systemd_units_verify() {
    run("systemd/test.sh");
}
